#!/usr/bin/env python3
"""Read record batches written by shardmq's encoder with kafka-python.

Usage: verify_ours.py DIR

DIR holds NAME.bin / NAME.json pairs as written by
`cargo run -p shardmq-schema --example encode_fixtures -- DIR`. Each .bin is
parsed with kafka-python's DefaultRecordBatch: its crc must validate, every
header field must equal the .json, and iterating it (which also rejects
records whose length disagrees with their fields, and bytes left over after
the last record) must yield exactly the expected records. Then all batches
are laid end to end, as in a log segment, and must frame back one by one
through kafka-python's MemoryRecords.

Exits 0 and prints "kafka-python verified N batches" when everything
matches; otherwise prints each mismatch and exits 1.
"""

import json
import sys
from pathlib import Path

from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords

# JSON field -> DefaultRecordBatch attribute holding the same header value.
HEADER_FIELDS = {
    "base_offset": "base_offset",
    "partition_leader_epoch": "leader_epoch",
    "magic": "magic",
    "crc": "crc",
    "attributes": "attributes",
    "last_offset_delta": "last_offset_delta",
    "base_timestamp": "first_timestamp",
    "max_timestamp": "max_timestamp",
    "producer_id": "producer_id",
    "producer_epoch": "producer_epoch",
    "base_sequence": "base_sequence",
    "record_count": "records_count",
    "size_bytes": "size_in_bytes",
}


def unhex(text):
    return None if text is None else bytes.fromhex(text)


def check_batch(name, data, expected):
    """Returns a list of mismatch descriptions (empty when all agree)."""
    problems = []
    batch = DefaultRecordBatch(data)
    if not batch.validate_crc():
        problems.append("crc does not validate")
    if len(data) != expected["size_bytes"]:
        problems.append("file has %d bytes, expected %d" % (len(data), expected["size_bytes"]))
    for field, attribute in HEADER_FIELDS.items():
        actual = getattr(batch, attribute)
        if actual != expected[field]:
            problems.append("%s: kafka-python reads %r, expected %r"
                            % (field, actual, expected[field]))
    try:
        records = list(batch)
    except Exception as error:  # kafka-python raises CorruptRecordError and others
        return problems + ["records do not decode: %r" % (error,)]
    want = expected["records"]
    if len(records) != len(want):
        problems.append("%d records decoded, expected %d" % (len(records), len(want)))
    for i, (record, exp) in enumerate(zip(records, want)):
        actual = {
            "offset": record.offset,
            "timestamp": record.timestamp,
            "key": record.key,
            "value": record.value,
            "headers": [(k, v) for k, v in record.headers],
        }
        wanted = {
            "offset": exp["offset"],
            "timestamp": exp["timestamp"],
            "key": unhex(exp["key"]),
            "value": unhex(exp["value"]),
            # kafka-python decodes header keys as UTF-8 text.
            "headers": [(unhex(h["key"]).decode("utf-8"), unhex(h["value"]))
                        for h in exp["headers"]],
        }
        for field in actual:
            if actual[field] != wanted[field]:
                problems.append("record %d %s: kafka-python reads %r, expected %r"
                                % (i, field, actual[field], wanted[field]))
    return problems


def check_framing(batches):
    """All batches concatenated must split back into the same batches."""
    log = b"".join(data for _, data, _ in batches)
    records = MemoryRecords(log)
    seen = []
    while records.has_next():
        batch = records.next_batch()
        seen.append((batch.base_offset, batch.size_in_bytes))
    wanted = [(exp["base_offset"], len(data)) for _, data, exp in batches]
    if seen != wanted or records.valid_bytes() != len(log):
        return ["concatenated batches frame as %r, expected %r" % (seen, wanted)]
    return []


def main(argv):
    if len(argv) != 2:
        print("usage: verify_ours.py DIR", file=sys.stderr)
        return 2
    directory = Path(argv[1])
    batches = []
    for json_path in sorted(directory.glob("*.json")):
        expected = json.loads(json_path.read_text())
        data = json_path.with_suffix(".bin").read_bytes()
        batches.append((json_path.stem, data, expected))
    if not batches:
        print("no batches found in %s" % directory, file=sys.stderr)
        return 1

    failures = 0
    for name, data, expected in batches:
        problems = check_batch(name, data, expected)
        for problem in problems:
            print("MISMATCH %s: %s" % (name, problem), file=sys.stderr)
        failures += bool(problems)
    framing = check_framing(batches)
    for problem in framing:
        print("MISMATCH framing: %s" % problem, file=sys.stderr)

    if failures or framing:
        print("kafka-python rejected %d of %d batches%s"
              % (failures, len(batches), ", and the framing" if framing else ""))
        return 1
    print("kafka-python verified %d batches (%d records, %d bytes)"
          % (len(batches), sum(len(e["records"]) for _, _, e in batches),
             sum(len(d) for _, d, _ in batches)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
