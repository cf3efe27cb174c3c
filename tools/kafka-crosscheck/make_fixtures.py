#!/usr/bin/env python3
"""Build record batches with kafka-python's encoder, as golden fixtures.

Usage: make_fixtures.py OUTDIR

For each case this writes OUTDIR/NAME.bin (one RecordBatch v2, exactly the
bytes kafka-python produced, then stamped with a base offset and partition
leader epoch the way a broker does) and OUTDIR/NAME.json (the fields and
records a decoder must find in it).

The expected values in the JSON come from the inputs given to the encoder,
not from decoding its output, so a decoder checked against them is checked
against what the producer meant. Only the crc is read back from the bytes.

The output is committed under schema/tests/fixtures/kafka-python/ and read by
schema/tests/kafka_fixtures.rs; rerun this script only to add cases.
"""

import json
import random
import struct
import sys
from pathlib import Path

from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

# Header field offsets of RecordBatch v2 that a broker rewrites; the crc
# (which covers bytes 21..end) does not include them.
BASE_OFFSET_AT = 0
LEADER_EPOCH_AT = 12
CRC_AT = 17
TRANSACTIONAL_FLAG = 0x10


def case(name, records, producer=(-1, -1, -1), transactional=False,
         base_offset=0, leader_epoch=0):
    """records: list of (offset_delta, timestamp, key, value, headers), with
    headers a list of (str key, bytes-or-None value)."""
    return dict(name=name, records=records, producer=producer,
                transactional=transactional, base_offset=base_offset,
                leader_epoch=leader_epoch)


def cases():
    rng = random.Random(20240611)  # fixed seed: fixtures must be reproducible
    ts0 = 1_718_000_000_000

    many = []
    for i in range(300):
        # Lengths on both sides of the 1- to 2-byte varint boundary (64).
        value_len = rng.choice([0, 1, 7, 63, 64, 65, 127, 128, 300])
        key = None if i % 5 == 0 else b"key-%d" % i
        headers = [("n", b"%d" % i)] if i % 7 == 0 else []
        # Timestamps wander both ways around the first one.
        many.append((i, ts0 + rng.randint(-100_000, 100_000) if i else ts0,
                     key, rng.randbytes(value_len), headers))

    return [
        case("basic", [
            (0, ts0, b"k0", b"hello", []),
            (1, ts0 + 1, b"k1", b"world", []),
            (2, ts0 + 2, b"k2", b"!", []),
        ]),
        case("nulls_and_empties", [
            (0, ts0, None, None, []),
            (1, ts0, None, b"", []),
            (2, ts0, b"", None, []),
            (3, ts0, b"", b"", []),
            (4, ts0, b"k", None, []),
        ]),
        case("headers", [
            (0, ts0, b"k", b"v", [("trace-id", b"\x00\x01\x02"), ("empty", b""),
                                  ("null", None), ("", b"no key name")]),
            (1, ts0 + 10, None, b"v2", [("dup", b"1"), ("dup", b"2"),
                                        ("cl\u00e9-\u2713", b"\xff\xfe")]),
            (2, ts0 + 20, b"k3", None, []),
        ]),
        case("idempotent", [
            (i, ts0 + i, b"k", b"v%d" % i, []) for i in range(4)
        ], producer=(123_456_789, 3, 42)),
        case("transactional", [
            (i, ts0, None, b"txn-%d" % i, []) for i in range(3)
        ], producer=(987_654_321_012, 32_767, 2_147_483_000), transactional=True),
        case("many_records", many, producer=(7, 0, 0)),
        case("compacted_offsets", [
            (0, ts0, b"a", b"1", []),
            (3, ts0 + 3, b"b", b"2", []),
            (4, ts0 + 4, b"c", None, []),
            (9, ts0 + 9, b"d", b"4", []),
        ], base_offset=1_000_000, leader_epoch=7),
        case("large_values", [
            # 9000 bytes: a 3-byte length varint (2-byte ones end at 8191).
            (0, ts0, bytes(range(200)), rng.randbytes(9_000), []),
            (1, ts0, None, rng.randbytes(8_191), [("h", rng.randbytes(300))]),
        ]),
        case("negative_timestamps", [
            (0, -5_000, None, b"a", []),
            (1, -6_000, None, b"b", []),
            (2, 0, None, b"c", []),
            (3, 5, None, b"d", []),
        ]),
        case("empty_values", [
            (i, ts0 + i, b"key-%d" % i, b"", []) for i in range(10)
        ]),
        case("stamped_extremes", [
            (0, 253_402_300_799_000, b"far", b"future", []),
            (1, 1, b"near", b"epoch", []),
        ], base_offset=2**62, leader_epoch=2**31 - 1),
        case("single_null_record", [(0, ts0, None, None, [])]),
    ]


def hex_or_none(data):
    return None if data is None else data.hex()


def build(c):
    producer_id, producer_epoch, base_sequence = c["producer"]
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=c["transactional"],
        producer_id=producer_id, producer_epoch=producer_epoch,
        base_sequence=base_sequence, batch_size=1 << 30)
    for offset_delta, timestamp, key, value, headers in c["records"]:
        meta = builder.append(offset_delta, timestamp=timestamp, key=key,
                              value=value, headers=headers)
        assert meta is not None, "batch_size is large enough for every case"
    data = bytearray(builder.build())
    struct.pack_into(">q", data, BASE_OFFSET_AT, c["base_offset"])
    struct.pack_into(">i", data, LEADER_EPOCH_AT, c["leader_epoch"])
    data = bytes(data)

    # The encoder's own reader must accept what it wrote.
    assert DefaultRecordBatch(data).validate_crc(), c["name"]

    records = c["records"]
    timestamps = [r[1] for r in records]
    expected = {
        "name": c["name"],
        "base_offset": c["base_offset"],
        "partition_leader_epoch": c["leader_epoch"],
        "magic": 2,
        "attributes": TRANSACTIONAL_FLAG if c["transactional"] else 0,
        "last_offset_delta": records[-1][0],
        "base_timestamp": timestamps[0],
        "max_timestamp": max(timestamps),
        "producer_id": producer_id,
        "producer_epoch": producer_epoch,
        "base_sequence": base_sequence,
        "record_count": len(records),
        "crc": struct.unpack_from(">I", data, CRC_AT)[0],
        "size_bytes": len(data),
        "records": [
            {
                "offset": c["base_offset"] + offset_delta,
                "timestamp": timestamp,
                "key": hex_or_none(key),
                "value": hex_or_none(value),
                "headers": [{"key": k.encode("utf-8").hex(), "value": hex_or_none(v)}
                            for k, v in headers],
            }
            for offset_delta, timestamp, key, value, headers in records
        ],
    }
    return data, expected


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for c in cases():
        data, expected = build(c)
        (out / (c["name"] + ".bin")).write_bytes(data)
        (out / (c["name"] + ".json")).write_text(json.dumps(expected, indent=1) + "\n")
    print("kafka-python wrote %d fixture batches to %s" % (len(cases()), out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
