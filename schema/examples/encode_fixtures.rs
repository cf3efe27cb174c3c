//! Writes record batches built by our encoder, for another implementation to
//! read back.
//!
//! ```text
//! cargo run -p shardmq-schema --example encode_fixtures -- OUTDIR
//! ```
//!
//! For each case, `OUTDIR/NAME.bin` is one batch and `OUTDIR/NAME.json` the
//! fields and records a reader must find in it, in the same JSON layout as
//! the kafka-python fixtures under `schema/tests/fixtures/kafka-python/`.
//! The expectations come from the inputs, not from decoding the output.
//! tools/kafka-crosscheck/verify_ours.py checks them with kafka-python.

use std::path::Path;
use std::{env, fs, process};

use serde_json::{json, Value};
use shardmq_schema::batch::{
    self, BatchBuilder, HeaderRef, RecordBatchView, CONTROL_FLAG, TIMESTAMP_TYPE_FLAG,
    TRANSACTIONAL_FLAG,
};

struct Rec {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// Header keys are UTF-8 text: Kafka clients decode them as strings.
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn rec(timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> Rec {
    Rec {
        timestamp,
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        headers: Vec::new(),
    }
}

struct Case {
    name: &'static str,
    base_offset: i64,
    leader_epoch: i32,
    attributes: i16,
    producer: (i64, i16, i32),
    records: Vec<Rec>,
    /// Applied after finish, as a leader does on append.
    stamp: Option<(i64, i32)>,
}

impl Case {
    fn new(name: &'static str, records: Vec<Rec>) -> Self {
        Self {
            name,
            base_offset: 0,
            leader_epoch: -1,
            attributes: 0,
            producer: (-1, -1, -1),
            records,
            stamp: None,
        }
    }
}

/// Deterministic filler bytes (xorshift), so runs are reproducible without a
/// random-number dependency.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn cases() -> Vec<Case> {
    let ts0: i64 = 1_718_000_000_000;
    let mut cases = vec![
        Case::new(
            "basic",
            vec![
                rec(ts0, Some(b"k0"), Some(b"hello")),
                rec(ts0 + 1, Some(b"k1"), Some(b"world")),
                rec(ts0 + 2, Some(b"k2"), Some(b"!")),
            ],
        ),
        Case::new(
            "nulls_and_empties",
            vec![
                rec(ts0, None, None),
                rec(ts0, None, Some(b"")),
                rec(ts0, Some(b""), None),
                rec(ts0, Some(b""), Some(b"")),
            ],
        ),
    ];

    let mut with_headers = rec(ts0, Some(b"k"), Some(b"v"));
    with_headers.headers = vec![
        ("trace-id".into(), Some(vec![0, 1, 2])),
        ("empty".into(), Some(Vec::new())),
        ("null".into(), None),
        (String::new(), Some(b"unnamed".to_vec())),
        ("cl\u{e9}-\u{2713}".into(), Some(vec![0xff, 0xfe])),
    ];
    let mut duplicate_headers = rec(ts0 - 10, None, Some(b"v2"));
    duplicate_headers.headers = vec![
        ("dup".into(), Some(b"1".to_vec())),
        ("dup".into(), Some(b"2".to_vec())),
    ];
    cases.push(Case::new("headers", vec![with_headers, duplicate_headers]));

    let mut idempotent = Case::new(
        "idempotent",
        (0..4)
            .map(|i| rec(ts0 + i, Some(b"k"), Some(format!("v{i}").as_bytes())))
            .collect(),
    );
    idempotent.producer = (123_456_789, 3, 42);
    cases.push(idempotent);

    let mut transactional = Case::new(
        "transactional",
        (0..3)
            .map(|i| rec(ts0, None, Some(format!("txn-{i}").as_bytes())))
            .collect(),
    );
    transactional.attributes = TRANSACTIONAL_FLAG;
    transactional.producer = (987_654_321_012, i16::MAX, 2_147_483_000);
    cases.push(transactional);

    // A commit marker: control key = version 0, type 1 (commit); control
    // value = version 0, coordinator epoch 5.
    let mut control = Case::new(
        "control_commit",
        vec![rec(ts0, Some(&[0, 0, 0, 1]), Some(&[0, 0, 0, 0, 0, 5]))],
    );
    control.attributes = TRANSACTIONAL_FLAG | CONTROL_FLAG;
    control.producer = (987_654_321_012, 7, -1);
    cases.push(control);

    let mut log_append = Case::new(
        "log_append_time",
        vec![rec(ts0, None, Some(b"a")), rec(ts0 + 50, None, Some(b"b"))],
    );
    log_append.attributes = TIMESTAMP_TYPE_FLAG;
    cases.push(log_append);

    cases.push(Case::new(
        "many_records",
        (0..1_000i64)
            .map(|i| {
                // Lengths around the 1/2-byte varint boundary, timestamps
                // both sides of the first one, some null keys.
                let value = filler(i as u64, [0, 1, 63, 64, 65, 200][i as usize % 6]);
                let key = format!("key-{i}");
                let timestamp = ts0 + (i % 17 - 8) * 1_000 + i;
                let mut r = rec(
                    timestamp,
                    (i % 4 != 0).then_some(key.as_bytes()),
                    Some(&value),
                );
                if i % 9 == 0 {
                    r.headers
                        .push(("n".into(), Some(i.to_string().into_bytes())));
                }
                r
            })
            .collect(),
    ));

    let mut stamped = Case::new(
        "stamped",
        vec![
            rec(ts0, Some(b"a"), Some(b"1")),
            rec(ts0, Some(b"b"), Some(b"2")),
        ],
    );
    stamped.stamp = Some((1 << 40, 9));
    cases.push(stamped);

    let mut empty = Case::new("empty_batch", Vec::new());
    empty.base_offset = 77;
    cases.push(empty);

    cases.push(Case::new(
        "large_values",
        vec![
            rec(ts0, Some(&filler(1, 200)), Some(&filler(2, 9_000))),
            rec(ts0, None, Some(&filler(3, 100_000))),
        ],
    ));

    let mut pre_epoch = Case::new(
        "negative_timestamps",
        vec![
            rec(-5_000, None, Some(b"a")),
            rec(-6_000, None, Some(b"b")),
            rec(0, None, Some(b"c")),
        ],
    );
    pre_epoch.base_offset = 5;
    pre_epoch.leader_epoch = 3;
    cases.push(pre_epoch);

    cases
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn nullable_hex(bytes: Option<&[u8]>) -> Value {
    bytes.map_or(Value::Null, |b| Value::String(hex(b)))
}

/// Builds the batch and the JSON a reader must agree with.
fn encode(case: &Case, buf: &mut Vec<u8>) -> Value {
    let base_timestamp = case.records.first().map_or(0, |r| r.timestamp);
    let mut builder = BatchBuilder::new(buf, case.base_offset, base_timestamp)
        .partition_leader_epoch(case.leader_epoch)
        .attributes(case.attributes)
        .producer(case.producer.0, case.producer.1, case.producer.2);
    for r in &case.records {
        let headers: Vec<HeaderRef<'_>> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_deref()))
            .collect();
        builder.append(r.timestamp, r.key.as_deref(), r.value.as_deref(), &headers);
    }
    builder.finish();
    let (base_offset, leader_epoch) = match case.stamp {
        Some((offset, epoch)) => {
            batch::stamp(buf, offset, epoch);
            (offset, epoch)
        }
        None => (case.base_offset, case.leader_epoch),
    };

    let max_timestamp = case
        .records
        .iter()
        .map(|r| r.timestamp)
        .max()
        .unwrap_or(base_timestamp);
    let log_append_time = case.attributes & TIMESTAMP_TYPE_FLAG != 0;
    let records: Vec<Value> = case
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "offset": base_offset + i as i64,
                // What a consumer sees: log-append-time batches report
                // maxTimestamp for every record.
                "timestamp": if log_append_time { max_timestamp } else { r.timestamp },
                "key": nullable_hex(r.key.as_deref()),
                "value": nullable_hex(r.value.as_deref()),
                "headers": r.headers.iter().map(|(k, v)| json!({
                    "key": hex(k.as_bytes()),
                    "value": nullable_hex(v.as_deref()),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    // The crc is the one field taken from the output; our own reader must
    // agree before anyone else is asked to.
    let crc = RecordBatchView::parse_verified(buf)
        .unwrap_or_else(|e| panic!("{}: our own batch is invalid: {e}", case.name))
        .crc();

    json!({
        "name": case.name,
        "base_offset": base_offset,
        "partition_leader_epoch": leader_epoch,
        "magic": 2,
        "attributes": case.attributes,
        "last_offset_delta": case.records.len() as i64 - 1,
        "base_timestamp": base_timestamp,
        "max_timestamp": max_timestamp,
        "producer_id": case.producer.0,
        "producer_epoch": case.producer.1,
        "base_sequence": case.producer.2,
        "record_count": case.records.len(),
        "crc": crc,
        "size_bytes": buf.len(),
        "records": records,
    })
}

fn main() {
    let args: Vec<String> = env::args().collect();
    let [_, out_dir] = args.as_slice() else {
        eprintln!("usage: encode_fixtures OUTDIR");
        process::exit(2);
    };
    let out_dir = Path::new(out_dir);
    fs::create_dir_all(out_dir).unwrap_or_else(|e| panic!("creating {}: {e}", out_dir.display()));

    let cases = cases();
    let mut buf = Vec::new();
    for case in &cases {
        let expected = encode(case, &mut buf);
        let json = serde_json::to_string_pretty(&expected).expect("JSON of plain values");
        fs::write(out_dir.join(format!("{}.bin", case.name)), &buf).expect("writing .bin");
        fs::write(out_dir.join(format!("{}.json", case.name)), json + "\n").expect("writing .json");
    }
    println!(
        "encode_fixtures wrote {} batches to {}",
        cases.len(),
        out_dir.display()
    );
}
