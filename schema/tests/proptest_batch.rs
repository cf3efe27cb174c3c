//! Property tests of the record batch codec: arbitrary records round-trip,
//! and arbitrary or damaged bytes never make a decoder panic or spin.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use shardmq_schema::batch::{
    self, BatchBuilder, BatchError, BatchHeader, RecordBatchView, COMPRESSION_MASK, CRC_AT,
    CRC_COVERED_FROM, HEADER_BYTES, LENGTH_PREFIX_BYTES, MAGIC_V2,
};

#[derive(Clone, Debug)]
struct Rec {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

#[derive(Clone, Debug)]
struct Batch {
    base_offset: i64,
    base_timestamp: i64,
    leader_epoch: i32,
    attributes: i16,
    producer: (i64, i16, i32),
    records: Vec<Rec>,
}

fn bytes_up_to(len_max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=len_max)
}

fn timestamp() -> impl Strategy<Value = i64> {
    // Mostly realistic values near each other, sometimes the full range so
    // wrapping deltas and 10-byte varlongs are exercised.
    prop_oneof![
        4 => 1_600_000_000_000i64..1_600_000_100_000,
        1 => any::<i64>(),
    ]
}

fn record() -> impl Strategy<Value = Rec> {
    (
        timestamp(),
        option::of(bytes_up_to(40)),
        // Occasionally long enough for a 2-byte length varint.
        option::of(prop_oneof![4 => bytes_up_to(40), 1 => bytes_up_to(300)]),
        vec((bytes_up_to(8), option::of(bytes_up_to(12))), 0..4),
    )
        .prop_map(|(timestamp, key, value, headers)| Rec {
            timestamp,
            key,
            value,
            headers,
        })
}

fn batch_input() -> impl Strategy<Value = Batch> {
    (
        any::<i64>(),
        timestamp(),
        any::<i32>(),
        // Any attributes except a compression codec, which the builder refuses.
        any::<i16>().prop_map(|a| a & !COMPRESSION_MASK),
        (any::<i64>(), any::<i16>(), any::<i32>()),
        vec(record(), 0..40),
    )
        .prop_map(
            |(base_offset, base_timestamp, leader_epoch, attributes, producer, records)| Batch {
                base_offset,
                base_timestamp,
                leader_epoch,
                attributes,
                producer,
                records,
            },
        )
}

fn header_refs(rec: &Rec) -> Vec<batch::HeaderRef<'_>> {
    rec.headers
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_deref()))
        .collect()
}

fn encode(input: &Batch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut builder = BatchBuilder::new(&mut out, input.base_offset, input.base_timestamp)
        .partition_leader_epoch(input.leader_epoch)
        .attributes(input.attributes)
        .producer(input.producer.0, input.producer.1, input.producer.2);
    for rec in &input.records {
        builder.append(
            rec.timestamp,
            rec.key.as_deref(),
            rec.value.as_deref(),
            &header_refs(rec),
        );
    }
    builder.finish();
    out
}

/// Runs every decoder over `bytes` and drains every iterator, asserting
/// each stops within the number of items it can legitimately yield; a
/// decoder that looped or panicked fails the property.
fn exercise_decoders(bytes: &[u8]) {
    let _ = BatchHeader::parse(bytes);
    let _ = RecordBatchView::parse_verified(bytes);
    let Ok(view) = RecordBatchView::parse(bytes) else {
        return;
    };
    let _ = view.verify_crc();
    let _ = (view.offset_count(), view.last_offset(), view.next_offset());
    // At most record_count records plus one trailing error.
    let item_limit = view.record_count() as usize + 1;
    let mut records = view.records();
    for _ in 0..item_limit {
        let Some(Ok(record)) = records.next() else {
            break;
        };
        let _ = (view.record_offset(&record), view.record_timestamp(&record));
        let header_limit = record.header_count() as usize;
        let mut headers = record.headers();
        for _ in 0..header_limit {
            // Headers of a record that decoded are already validated.
            assert!(headers.next().expect("declared header").is_ok());
        }
        assert!(headers.next().is_none(), "headers run past their count");
    }
    assert!(records.next().is_none(), "records run past count + 1 items");
}

/// A correct header (length, magic) around arbitrary record bytes, so the
/// record decoder sees garbage instead of parse rejecting it first.
fn framed(record_count: i32, last_offset_delta: i32, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; HEADER_BYTES];
    bytes.extend_from_slice(body);
    BatchHeader {
        base_offset: 0,
        batch_length: (bytes.len() - LENGTH_PREFIX_BYTES) as i32,
        partition_leader_epoch: 0,
        magic: MAGIC_V2,
        crc: 0,
        attributes: 0,
        last_offset_delta,
        base_timestamp: 0,
        max_timestamp: 0,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        record_count,
    }
    .write(&mut bytes);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_records_round_trip(input in batch_input()) {
        let bytes = encode(&input);
        let view = RecordBatchView::parse_verified(&bytes).unwrap();
        prop_assert_eq!(view.base_offset(), input.base_offset);
        prop_assert_eq!(view.partition_leader_epoch(), input.leader_epoch);
        prop_assert_eq!(view.attributes(), input.attributes);
        prop_assert_eq!(
            (view.producer_id(), view.producer_epoch(), view.base_sequence()),
            input.producer
        );
        prop_assert_eq!(view.base_timestamp(), input.base_timestamp);
        let max_timestamp = input.records.iter().map(|r| r.timestamp).max();
        prop_assert_eq!(view.max_timestamp(), max_timestamp.unwrap_or(input.base_timestamp));
        prop_assert_eq!(view.record_count() as usize, input.records.len());
        prop_assert_eq!(view.offset_count() as usize, input.records.len());

        let mut decoded = 0;
        for (i, (item, rec)) in view.records().zip(&input.records).enumerate() {
            let record = item.unwrap();
            prop_assert_eq!(record.offset_delta() as usize, i);
            prop_assert_eq!(record.offset(input.base_offset), input.base_offset.wrapping_add(i as i64));
            prop_assert_eq!(record.timestamp(input.base_timestamp), rec.timestamp);
            prop_assert_eq!(record.key(), rec.key.as_deref());
            prop_assert_eq!(record.value(), rec.value.as_deref());
            let headers: Vec<_> = record.headers().map(Result::unwrap).collect();
            prop_assert_eq!(headers, header_refs(rec));
            decoded += 1;
        }
        prop_assert_eq!(decoded, input.records.len());
        prop_assert!(view.records().all(|r| r.is_ok()));
    }

    #[test]
    fn stamp_moves_offsets_and_keeps_the_crc(
        input in batch_input(),
        base_offset in any::<i64>(),
        epoch in any::<i32>(),
    ) {
        let mut bytes = encode(&input);
        batch::stamp(&mut bytes, base_offset, epoch);
        let view = RecordBatchView::parse_verified(&bytes).unwrap();
        prop_assert_eq!(view.base_offset(), base_offset);
        prop_assert_eq!(view.partition_leader_epoch(), epoch);
        prop_assert_eq!(bytes[CRC_COVERED_FROM..].to_vec(), encode(&input)[CRC_COVERED_FROM..].to_vec());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in bytes_up_to(512)) {
        exercise_decoders(&bytes);
    }

    #[test]
    fn arbitrary_record_bytes_in_a_valid_frame_never_panic(
        body in prop_oneof![bytes_up_to(256), vec(0x80u8..=0xff, 0..32)],
        record_count in prop_oneof![0i32..8, any::<i32>()],
        last_offset_delta in prop_oneof![0i32..8, any::<i32>()],
    ) {
        exercise_decoders(&framed(record_count, last_offset_delta, &body));
    }

    #[test]
    fn mutated_and_truncated_batches_never_panic(
        input in batch_input(),
        flips in vec((any::<prop::sample::Index>(), 1u8..), 1..6),
        cut in option::of(any::<prop::sample::Index>()),
        fix_length in any::<bool>(),
    ) {
        let mut bytes = encode(&input);
        for (at, mask) in &flips {
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if fix_length && bytes.len() >= HEADER_BYTES {
            // Repair the frame so the damage reaches the record decoder.
            let batch_length = (bytes.len() - LENGTH_PREFIX_BYTES) as i32;
            bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
            bytes[16] = MAGIC_V2 as u8;
        }
        exercise_decoders(&bytes);
    }

    #[test]
    fn any_single_bit_flip_in_the_covered_range_fails_the_crc(
        input in batch_input(),
        bit in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(&input);
        let covered_bits = (bytes.len() - CRC_COVERED_FROM) * 8;
        let bit = bit.index(covered_bits);
        bytes[CRC_COVERED_FROM + bit / 8] ^= 1 << (bit % 8);
        // A flip in a header field may already fail parse (say, a negative
        // count); if parse accepts the batch, the CRC must catch it.
        prop_assert!(RecordBatchView::parse_verified(&bytes).is_err());
        if let Ok(view) = RecordBatchView::parse(&bytes) {
            let caught = matches!(view.verify_crc(), Err(BatchError::BadCrc { .. }));
            prop_assert!(caught);
        }
    }

    #[test]
    fn a_flipped_crc_bit_is_caught(input in batch_input(), bit in 0usize..32) {
        let mut bytes = encode(&input);
        bytes[CRC_AT + bit / 8] ^= 1 << (bit % 8);
        let caught = matches!(
            RecordBatchView::parse_verified(&bytes),
            Err(BatchError::BadCrc { .. })
        );
        prop_assert!(caught);
    }
}
