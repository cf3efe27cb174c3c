//! Cross-check against batches written by kafka-python, an independent
//! implementation of RecordBatch v2.
//!
//! `tests/fixtures/kafka-python/NAME.bin` is one batch as kafka-python
//! encoded it; `NAME.json` holds the fields and records the producer put in
//! (see tools/kafka-crosscheck/make_fixtures.py, which wrote both). The
//! opposite direction, kafka-python reading our batches, is
//! tools/kafka-crosscheck/run.sh.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use shardmq_schema::batch::{BatchBuilder, BatchHeader, HeaderRef, RecordBatchView};

/// Every case make_fixtures.py writes; the tests fail if any goes missing.
const FIXTURE_COUNT: usize = 12;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kafka-python")
}

struct Fixture {
    name: String,
    bytes: Vec<u8>,
    expected: Value,
}

fn fixtures() -> Vec<Fixture> {
    let dir = fixture_dir();
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "bin"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), FIXTURE_COUNT, "fixtures found: {names:?}");
    names
        .into_iter()
        .map(|name| {
            let bytes = fs::read(dir.join(format!("{name}.bin"))).unwrap();
            let json = fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            let expected = serde_json::from_str(&json).unwrap();
            Fixture {
                name,
                bytes,
                expected,
            }
        })
        .collect()
}

fn int(value: &Value, field: &str) -> i64 {
    value[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} is not an integer in {value}"))
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex length: {text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// A JSON hex string, or null for a null field.
fn nullable_hex(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(unhex(text)),
        other => panic!("expected hex or null, got {other}"),
    }
}

struct ExpectedRecord {
    offset: i64,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn expected_records(expected: &Value) -> Vec<ExpectedRecord> {
    expected["records"]
        .as_array()
        .expect("records array")
        .iter()
        .map(|record| ExpectedRecord {
            offset: int(record, "offset"),
            timestamp: int(record, "timestamp"),
            key: nullable_hex(&record["key"]),
            value: nullable_hex(&record["value"]),
            headers: record["headers"]
                .as_array()
                .expect("headers array")
                .iter()
                .map(|header| {
                    let key = header["key"].as_str().expect("header key is never null");
                    (unhex(key), nullable_hex(&header["value"]))
                })
                .collect(),
        })
        .collect()
}

#[test]
fn kafka_python_batches_decode_to_what_the_producer_wrote() {
    for Fixture {
        name,
        bytes,
        expected,
    } in fixtures()
    {
        let view = RecordBatchView::parse_verified(&bytes)
            .unwrap_or_else(|e| panic!("{name}: kafka-python batch rejected: {e}"));
        let header_fields: [(&str, i64); 13] = [
            ("base_offset", view.base_offset()),
            (
                "partition_leader_epoch",
                view.partition_leader_epoch().into(),
            ),
            ("magic", view.magic().into()),
            ("attributes", view.attributes().into()),
            ("last_offset_delta", view.last_offset_delta().into()),
            ("base_timestamp", view.base_timestamp()),
            ("max_timestamp", view.max_timestamp()),
            ("producer_id", view.producer_id()),
            ("producer_epoch", view.producer_epoch().into()),
            ("base_sequence", view.base_sequence().into()),
            ("record_count", view.record_count().into()),
            ("crc", view.crc().into()),
            ("size_bytes", view.as_bytes().len() as i64),
        ];
        for (field, actual) in header_fields {
            assert_eq!(actual, int(&expected, field), "{name}: {field}");
        }

        let wanted = expected_records(&expected);
        let mut decoded = 0;
        for (i, (item, want)) in view.records().zip(&wanted).enumerate() {
            let record = item.unwrap_or_else(|e| panic!("{name}: record {i}: {e}"));
            assert_eq!(
                view.record_offset(&record),
                want.offset,
                "{name}: record {i} offset"
            );
            assert_eq!(
                view.record_timestamp(&record),
                want.timestamp,
                "{name}: record {i} timestamp"
            );
            assert_eq!(record.key(), want.key.as_deref(), "{name}: record {i} key");
            assert_eq!(
                record.value(),
                want.value.as_deref(),
                "{name}: record {i} value"
            );
            let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = record
                .headers()
                .map(|h| {
                    let (key, value) = h.unwrap();
                    (key.to_vec(), value.map(<[u8]>::to_vec))
                })
                .collect();
            assert_eq!(headers, want.headers, "{name}: record {i} headers");
            decoded += 1;
        }
        assert_eq!(decoded, wanted.len(), "{name}: record count");
        assert!(view.records().all(|r| r.is_ok()), "{name}: trailing error");
    }
}

/// Our encoder, given the same inputs, must write kafka-python's bytes
/// exactly. Only batches with contiguous offsets qualify: the builder
/// numbers records 0, 1, 2, ... as a producer does.
#[test]
fn our_encoder_reproduces_kafka_python_bytes() {
    let mut reproduced = Vec::new();
    let mut buf = Vec::new();
    for Fixture {
        name,
        bytes,
        expected,
    } in fixtures()
    {
        let base_offset = int(&expected, "base_offset");
        let records = expected_records(&expected);
        let contiguous = records
            .iter()
            .enumerate()
            .all(|(i, r)| r.offset == base_offset + i as i64);
        if !contiguous {
            continue;
        }
        let mut builder =
            BatchBuilder::new(&mut buf, base_offset, int(&expected, "base_timestamp"))
                .partition_leader_epoch(int(&expected, "partition_leader_epoch") as i32)
                .attributes(int(&expected, "attributes") as i16)
                .producer(
                    int(&expected, "producer_id"),
                    int(&expected, "producer_epoch") as i16,
                    int(&expected, "base_sequence") as i32,
                );
        for record in &records {
            let headers: Vec<HeaderRef<'_>> = record
                .headers
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            builder.append(
                record.timestamp,
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            );
        }
        builder.finish();
        assert!(
            buf == bytes,
            "{name}: our encoding differs from kafka-python's"
        );
        reproduced.push(name);
    }
    // All but compacted_offsets, whose offsets have gaps.
    assert_eq!(reproduced.len(), FIXTURE_COUNT - 1, "{reproduced:?}");
}

/// Laid end to end as in a log file, the batches frame back by batchLength.
#[test]
fn fixtures_concatenated_frame_back_into_batches() {
    let all = fixtures();
    let log: Vec<u8> = all.iter().flat_map(|f| f.bytes.iter().copied()).collect();
    let mut at = 0;
    for fixture in &all {
        let header = BatchHeader::parse(&log[at..]).unwrap();
        assert_eq!(
            header.total_bytes(),
            fixture.bytes.len(),
            "{}",
            fixture.name
        );
        RecordBatchView::parse_verified(&log[at..at + header.total_bytes()]).unwrap();
        at += header.total_bytes();
    }
    assert_eq!(at, log.len());
}

#[test]
fn damaged_fixtures_are_rejected() {
    for Fixture {
        name, mut bytes, ..
    } in fixtures()
    {
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        assert!(
            RecordBatchView::parse_verified(&bytes).is_err(),
            "{name}: flipped bit not detected"
        );
    }
}
