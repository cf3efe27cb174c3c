use super::*;

/// A record as the tests describe it: timestamp, key, value, headers.
type Rec<'a> = (i64, Option<&'a [u8]>, Option<&'a [u8]>, Vec<HeaderRef<'a>>);

fn build(base_offset: i64, base_timestamp: i64, records: &[Rec<'_>]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut builder = BatchBuilder::new(&mut buf, base_offset, base_timestamp);
    for (timestamp, key, value, headers) in records {
        builder.append(*timestamp, *key, *value, headers);
    }
    let len = builder.finish();
    assert_eq!(len, buf.len());
    buf
}

/// Three records covering nulls, empties and headers.
fn sample() -> Vec<u8> {
    build(
        100,
        1_000,
        &[
            (1_000, Some(b"k0"), Some(b"v0"), vec![(b"h", Some(b"x"))]),
            (1_005, None, Some(b""), vec![]),
            (999, Some(b""), None, vec![(b"a", None), (b"", Some(b""))]),
        ],
    )
}

/// Decodes every record or panics with the error.
fn decode_all<'a>(view: &RecordBatchView<'a>) -> Vec<RecordView<'a>> {
    view.records()
        .collect::<Result<Vec<_>, _>>()
        .expect("valid batch")
}

fn headers_of<'a>(record: &RecordView<'a>) -> Vec<HeaderRef<'a>> {
    record
        .headers()
        .collect::<Result<Vec<_>, _>>()
        .expect("valid headers")
}

#[test]
fn round_trip_nulls_empties_and_headers() {
    let bytes = sample();
    let view = RecordBatchView::parse_verified(&bytes).unwrap();
    assert_eq!(view.as_bytes(), &bytes[..]);
    assert_eq!(view.base_offset(), 100);
    assert_eq!(view.batch_length() as usize, bytes.len() - 12);
    assert_eq!(view.partition_leader_epoch(), NO_PARTITION_LEADER_EPOCH);
    assert_eq!(view.magic(), MAGIC_V2);
    assert_eq!(view.attributes(), 0);
    assert_eq!(view.compression(), COMPRESSION_NONE);
    assert!(!view.is_log_append_time() && !view.is_transactional() && !view.is_control());
    assert_eq!(view.last_offset_delta(), 2);
    assert_eq!(view.base_timestamp(), 1_000);
    assert_eq!(view.max_timestamp(), 1_005);
    assert_eq!(
        (
            view.producer_id(),
            view.producer_epoch(),
            view.base_sequence()
        ),
        (-1, -1, -1)
    );
    assert_eq!(view.record_count(), 3);
    assert_eq!(view.offset_count(), 3);
    assert_eq!(view.last_offset(), 102);
    assert_eq!(view.next_offset(), 103);

    let records = decode_all(&view);
    assert_eq!(records.len(), 3);
    let offsets: Vec<i64> = records.iter().map(|r| view.record_offset(r)).collect();
    assert_eq!(offsets, [100, 101, 102]);
    let timestamps: Vec<i64> = records.iter().map(|r| view.record_timestamp(r)).collect();
    assert_eq!(timestamps, [1_000, 1_005, 999]);
    assert_eq!(records[2].timestamp_delta(), -1);

    assert_eq!(records[0].key(), Some(&b"k0"[..]));
    assert_eq!(records[0].value(), Some(&b"v0"[..]));
    assert_eq!(headers_of(&records[0]), [(&b"h"[..], Some(&b"x"[..]))]);
    assert_eq!(records[1].key(), None);
    assert_eq!(records[1].value(), Some(&b""[..]));
    assert_eq!(records[1].header_count(), 0);
    assert_eq!(records[2].key(), Some(&b""[..]));
    assert_eq!(records[2].value(), None);
    assert_eq!(
        headers_of(&records[2]),
        [(&b"a"[..], None), (&b""[..], Some(&b""[..]))]
    );
    assert!(records.iter().all(|r| r.attributes() == 0));
    let record_bytes: usize = records.iter().map(RecordView::encoded_bytes).sum();
    assert_eq!(record_bytes + HEADER_BYTES, bytes.len());
}

#[test]
fn header_fields_sit_at_their_documented_offsets() {
    let mut buf = Vec::new();
    let mut builder = BatchBuilder::new(&mut buf, 0x0102_0304_0506_0708, 77)
        .producer(0x1122_3344_5566_7788, 0x99aa_u16 as i16, 0x0bcd_ef01)
        .attributes(TRANSACTIONAL_FLAG)
        .partition_leader_epoch(0x0a0b_0c0d);
    builder.append(80, None, Some(b"v"), &[]);
    builder.append(78, None, Some(b"w"), &[]);
    let len = builder.finish();
    let b = &buf[..len];
    let at = |from: usize, width: usize| &b[from..from + width];
    assert_eq!(at(0, 8), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(at(8, 4), ((len - 12) as i32).to_be_bytes());
    assert_eq!(at(12, 4), [0x0a, 0x0b, 0x0c, 0x0d]);
    assert_eq!(b[16], 2);
    assert_eq!(at(17, 4), crc32c::crc32c(&b[21..]).to_be_bytes());
    assert_eq!(at(21, 2), [0x00, 0x10]);
    assert_eq!(at(23, 4), 1i32.to_be_bytes());
    assert_eq!(at(27, 8), 77i64.to_be_bytes());
    assert_eq!(at(35, 8), 80i64.to_be_bytes());
    assert_eq!(at(43, 8), [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
    assert_eq!(at(51, 2), [0x99, 0xaa]);
    assert_eq!(at(53, 4), [0x0b, 0xcd, 0xef, 0x01]);
    assert_eq!(at(57, 4), 2i32.to_be_bytes());
    // First record, spelled out: length 7 (zigzag 14), attributes 0,
    // timestamp delta 3 (zigzag 6), offset delta 0, key null (-1, zigzag 1),
    // value length 1 (zigzag 2), "v", no headers.
    assert_eq!(at(61, 8), [14, 0, 6, 0, 1, 2, b'v', 0]);
    let view = RecordBatchView::parse_verified(b).unwrap();
    assert_eq!(view.header(), &BatchHeader::decode(b).unwrap());
    assert_eq!(BatchHeader::parse(b).unwrap().total_bytes(), len);
}

#[test]
fn empty_batch_covers_no_offsets() {
    let bytes = build(42, 5, &[]);
    assert_eq!(bytes.len(), HEADER_BYTES);
    let view = RecordBatchView::parse_verified(&bytes).unwrap();
    assert_eq!(view.record_count(), 0);
    assert_eq!(view.last_offset_delta(), -1);
    assert_eq!(view.offset_count(), 0);
    assert_eq!(view.next_offset(), 42);
    assert_eq!(view.max_timestamp(), 5);
    assert!(view.records().next().is_none());
}

#[test]
fn many_records_cross_varint_size_boundaries() {
    let values: Vec<Vec<u8>> = (0..3_000u32)
        .map(|i| vec![(i % 251) as u8; (i as usize * 7) % 10_000])
        .collect();
    let base_timestamp = 1_700_000_000_000;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut builder = BatchBuilder::new(&mut buf, 9_000, base_timestamp);
    for (i, value) in values.iter().enumerate() {
        // Deltas swing both ways and through multi-byte varlongs.
        let timestamp = base_timestamp + (i as i64 - 1_500) * 100_003;
        let key = (i % 3 != 0).then_some(&value[..value.len().min(200)]);
        builder.append(
            timestamp,
            key,
            Some(value),
            &[(b"i", Some(&value[..1.min(value.len())]))],
        );
    }
    assert_eq!(builder.record_count(), values.len());
    let len = builder.finish();
    let view = RecordBatchView::parse_verified(&buf[..len]).unwrap();
    let records = decode_all(&view);
    assert_eq!(records.len(), values.len());
    for (i, (record, value)) in records.iter().zip(&values).enumerate() {
        assert_eq!(view.record_offset(record), 9_000 + i as i64);
        assert_eq!(
            view.record_timestamp(record),
            base_timestamp + (i as i64 - 1_500) * 100_003
        );
        assert_eq!(record.value(), Some(&value[..]));
        assert_eq!(record.key().is_some(), i % 3 != 0);
    }
    assert_eq!(view.max_timestamp(), base_timestamp + 1_499 * 100_003);
}

#[test]
fn extreme_timestamps_wrap_and_round_trip() {
    let bytes = build(
        0,
        i64::MAX,
        &[
            (i64::MIN, None, None, vec![]),
            (i64::MAX, None, None, vec![]),
        ],
    );
    let view = RecordBatchView::parse_verified(&bytes).unwrap();
    let timestamps: Vec<i64> = decode_all(&view)
        .iter()
        .map(|r| view.record_timestamp(r))
        .collect();
    assert_eq!(timestamps, [i64::MIN, i64::MAX]);
}

#[test]
fn log_append_time_batches_report_max_timestamp() {
    let mut buf = Vec::new();
    let mut builder = BatchBuilder::new(&mut buf, 0, 10).attributes(TIMESTAMP_TYPE_FLAG);
    builder.append(10, None, None, &[]);
    builder.append(30, None, None, &[]);
    builder.finish();
    let view = RecordBatchView::parse_verified(&buf).unwrap();
    assert!(view.is_log_append_time());
    for record in decode_all(&view) {
        assert_eq!(view.record_timestamp(&record), 30);
    }
}

#[test]
fn builder_reuses_the_buffer_without_reallocating() {
    let mut buf = Vec::with_capacity(4096);
    let capacity_before = buf.capacity();
    for round in 0..3 {
        let mut builder = BatchBuilder::new(&mut buf, round, 0);
        for i in 0..20 {
            let expected = builder.next_record_bytes(i, Some(b"key"), Some(b"value"), &[]);
            let before = builder.len_bytes();
            builder.append(i, Some(b"key"), Some(b"value"), &[]);
            assert_eq!(builder.len_bytes() - before, expected);
        }
        builder.finish();
        RecordBatchView::parse_verified(&buf).unwrap();
    }
    assert_eq!(buf.capacity(), capacity_before);
}

#[test]
fn stamp_keeps_crc_valid_and_moves_offsets() {
    let mut bytes = sample();
    let crc_before = RecordBatchView::parse(&bytes).unwrap().crc();
    stamp(&mut bytes, 7_000_000_000, 12);
    let view = RecordBatchView::parse_verified(&bytes).unwrap();
    assert_eq!(view.crc(), crc_before);
    assert_eq!(view.base_offset(), 7_000_000_000);
    assert_eq!(view.partition_leader_epoch(), 12);
    let offsets: Vec<i64> = decode_all(&view)
        .iter()
        .map(|r| view.record_offset(r))
        .collect();
    assert_eq!(offsets, [7_000_000_000, 7_000_000_001, 7_000_000_002]);
    // Everything but the stamped fields is unchanged.
    let original = sample();
    assert_eq!(bytes[16..], original[16..]);
    assert_eq!(bytes[8..12], original[8..12]);
}

#[test]
#[should_panic(expected = "stamp needs a whole batch header")]
fn stamp_panics_on_short_input() {
    stamp(&mut [0u8; HEADER_BYTES - 1], 0, 0);
}

#[test]
#[should_panic(expected = "uncompressed")]
fn builder_refuses_compression_attributes() {
    let mut buf = Vec::new();
    let _ = BatchBuilder::new(&mut buf, 0, 0).attributes(COMPRESSION_ZSTD as i16);
}

#[test]
fn try_finish_refuses_oversized_batches() {
    let mut buf = Vec::new();
    let mut builder = BatchBuilder::new(&mut buf, 0, 0);
    let value = vec![0u8; BATCH_BYTES_MAX];
    builder.append(0, None, Some(&value), &[]);
    assert!(matches!(
        builder.try_finish(),
        Err(BatchError::TooLarge {
            max_bytes: BATCH_BYTES_MAX,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------
// Crafted malformed inputs, one per error variant
// ---------------------------------------------------------------------------

fn zigzag(value: i64) -> Vec<u8> {
    let mut out = Vec::new();
    varint::put_varlong(&mut out, value);
    out
}

/// A record from its raw fields (everything after the length varint).
fn raw_record(fields: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = fields.concat();
    let mut out = zigzag(body.len() as i64);
    out.extend_from_slice(&body);
    out
}

/// A well-formed record's fields: attributes, timestamp delta 0, the given
/// offset delta, key and value "k"/"v", no headers.
fn plain_fields(offset_delta: i64) -> Vec<Vec<u8>> {
    vec![
        vec![0],
        zigzag(0),
        zigzag(offset_delta),
        [zigzag(1), b"k".to_vec()].concat(),
        [zigzag(1), b"v".to_vec()].concat(),
        zigzag(0),
    ]
}

fn refs(fields: &[Vec<u8>]) -> Vec<&[u8]> {
    fields.iter().map(Vec::as_slice).collect()
}

/// A batch around hand-written record bytes, with a correct length and CRC.
fn raw_batch(record_count: i32, last_offset_delta: i32, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; HEADER_BYTES];
    bytes.extend_from_slice(body);
    let header = BatchHeader {
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
    };
    header.write(&mut bytes);
    let crc = crc32c::crc32c(&bytes[CRC_COVERED_FROM..]);
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn put_i32(bytes: &mut [u8], at: usize, value: i32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// Runs parse_verified and then the records and their headers; returns the
/// first error.
fn first_error(bytes: &[u8]) -> Option<BatchError> {
    let view = match RecordBatchView::parse_verified(bytes) {
        Ok(view) => view,
        Err(error) => return Some(error),
    };
    for record in view.records() {
        match record {
            Ok(record) => {
                if let Some(Err(error)) = record.headers().find(Result::is_err) {
                    return Some(error);
                }
            }
            Err(error) => return Some(error),
        }
    }
    None
}

#[test]
fn every_error_variant_has_a_crafted_trigger() {
    let valid = sample();
    let third_record_bytes = {
        let view = RecordBatchView::parse(&valid).unwrap();
        decode_all(&view)[2].encoded_bytes()
    };
    let first_record = raw_record(&refs(&plain_fields(0)));

    let cases: Vec<(&str, Vec<u8>, BatchError)> = vec![
        (
            "shorter than a header",
            valid[..HEADER_BYTES - 1].to_vec(),
            BatchError::Truncated {
                need: HEADER_BYTES,
                have: HEADER_BYTES - 1,
            },
        ),
        (
            "magic 1",
            {
                let mut b = valid.clone();
                b[MAGIC_AT] = 1;
                b
            },
            BatchError::BadMagic(1),
        ),
        (
            "batchLength below the header",
            {
                let mut b = valid.clone();
                put_i32(&mut b, BATCH_LENGTH_AT, BATCH_LENGTH_MIN - 1);
                b
            },
            BatchError::LengthTooSmall {
                declared: BATCH_LENGTH_MIN - 1,
            },
        ),
        (
            "negative batchLength",
            {
                let mut b = valid.clone();
                put_i32(&mut b, BATCH_LENGTH_AT, -1);
                b
            },
            BatchError::LengthTooSmall { declared: -1 },
        ),
        (
            "one byte too many",
            {
                let mut b = valid.clone();
                b.push(0);
                b
            },
            BatchError::LengthMismatch {
                declared: (valid.len() - 12) as i32,
                actual: valid.len() - 11,
            },
        ),
        (
            "one byte too few",
            valid[..valid.len() - 1].to_vec(),
            BatchError::LengthMismatch {
                declared: (valid.len() - 12) as i32,
                actual: valid.len() - 13,
            },
        ),
        (
            "batchLength beyond the bound",
            {
                let mut b = valid.clone();
                put_i32(&mut b, BATCH_LENGTH_AT, i32::MAX);
                b
            },
            BatchError::TooLarge {
                declared_bytes: i32::MAX as usize + 12,
                max_bytes: BATCH_BYTES_MAX,
            },
        ),
        (
            "flipped value bit",
            {
                let mut b = valid.clone();
                let last = b.len() - 1;
                b[last] ^= 0x01;
                b
            },
            BatchError::BadCrc {
                stored: RecordBatchView::parse(&valid).unwrap().crc(),
                computed: {
                    let mut b = valid.clone();
                    let last = b.len() - 1;
                    b[last] ^= 0x01;
                    crc32c::crc32c(&b[CRC_COVERED_FROM..])
                },
            },
        ),
        (
            "negative record count",
            raw_batch(-1, 0, &[]),
            BatchError::NegativeCount(-1),
        ),
        (
            "records with lastOffsetDelta -1",
            raw_batch(1, -1, &first_record),
            BatchError::BadLastOffsetDelta {
                last_offset_delta: -1,
                record_count: 1,
            },
        ),
        (
            "count above the records present",
            raw_batch(2, 1, &first_record),
            BatchError::CountMismatch {
                declared: 2,
                decoded: 1,
                trailing_bytes: 0,
            },
        ),
        (
            "bytes after the declared records",
            {
                let view = RecordBatchView::parse(&valid).unwrap();
                raw_batch(2, 2, view.records_bytes())
            },
            BatchError::CountMismatch {
                declared: 2,
                decoded: 2,
                trailing_bytes: third_record_bytes,
            },
        ),
        (
            "six-byte varint as record length",
            raw_batch(1, 0, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            BatchError::BadVarint {
                index: 0,
                field: "record length",
            },
        ),
        (
            "timestamp delta with bits beyond 64",
            raw_batch(
                1,
                0,
                &raw_record(&[&[0], &[0xff; 9], &[0x7f], &[0, 1, 1, 0]]),
            ),
            BatchError::BadVarint {
                index: 0,
                field: "timestamp delta",
            },
        ),
        (
            "record length past the batch",
            raw_batch(1, 0, &[zigzag(100), vec![0; 10]].concat()),
            BatchError::RecordOutOfBounds {
                index: 0,
                field: "record",
            },
        ),
        (
            "record length varint cut off",
            raw_batch(1, 0, &[0x80]),
            BatchError::RecordOutOfBounds {
                index: 0,
                field: "record length",
            },
        ),
        (
            "key past its record",
            {
                let mut fields = plain_fields(0);
                fields[3] = [zigzag(10), b"k".to_vec()].concat();
                raw_batch(1, 0, &raw_record(&refs(&fields)))
            },
            BatchError::RecordOutOfBounds {
                index: 0,
                field: "key",
            },
        ),
        (
            "headers cut off",
            {
                let mut fields = plain_fields(0);
                fields[5] = [zigzag(1), zigzag(3), b"abc".to_vec()].concat();
                raw_batch(1, 0, &raw_record(&refs(&fields)))
            },
            BatchError::RecordOutOfBounds {
                index: 0,
                field: "header value",
            },
        ),
        (
            "empty record",
            raw_batch(1, 0, &raw_record(&[])),
            BatchError::RecordOutOfBounds {
                index: 0,
                field: "attributes",
            },
        ),
        (
            "negative record length",
            raw_batch(1, 0, &zigzag(-1)),
            BatchError::BadFieldLength {
                index: 0,
                field: "record length",
                value: -1,
            },
        ),
        (
            "key length -2",
            {
                let mut fields = plain_fields(0);
                fields[3] = zigzag(-2);
                raw_batch(1, 0, &raw_record(&refs(&fields)))
            },
            BatchError::BadFieldLength {
                index: 0,
                field: "key",
                value: -2,
            },
        ),
        (
            "value length -3",
            {
                let mut fields = plain_fields(0);
                fields[4] = zigzag(-3);
                raw_batch(1, 0, &raw_record(&refs(&fields)))
            },
            BatchError::BadFieldLength {
                index: 0,
                field: "value",
                value: -3,
            },
        ),
        (
            "negative header count",
            {
                let mut fields = plain_fields(0);
                fields[5] = zigzag(-1);
                raw_batch(1, 0, &raw_record(&refs(&fields)))
            },
            BatchError::BadFieldLength {
                index: 0,
                field: "header count",
                value: -1,
            },
        ),
        (
            "null header key",
            {
                let mut fields = plain_fields(0);
                fields[5] = [zigzag(1), zigzag(-1), zigzag(-1)].concat();
                raw_batch(1, 0, &raw_record(&refs(&fields)))
            },
            BatchError::BadFieldLength {
                index: 0,
                field: "header key length",
                value: -1,
            },
        ),
        (
            "record longer than its fields",
            {
                let mut fields = plain_fields(0);
                fields.push(vec![0, 0]);
                raw_batch(1, 0, &raw_record(&refs(&fields)))
            },
            BatchError::RecordLengthMismatch {
                index: 0,
                declared: 10,
                consumed: 8,
            },
        ),
        (
            "repeated offset delta",
            {
                let twice = [first_record.clone(), first_record.clone()].concat();
                raw_batch(2, 1, &twice)
            },
            BatchError::BadOffsetDelta {
                index: 1,
                offset_delta: 0,
                previous: 0,
                last_offset_delta: 1,
            },
        ),
        (
            "offset delta beyond lastOffsetDelta",
            raw_batch(1, 0, &raw_record(&refs(&plain_fields(1)))),
            BatchError::BadOffsetDelta {
                index: 0,
                offset_delta: 1,
                previous: -1,
                last_offset_delta: 0,
            },
        ),
        (
            "negative offset delta",
            raw_batch(1, 0, &raw_record(&refs(&plain_fields(-1)))),
            BatchError::BadOffsetDelta {
                index: 0,
                offset_delta: -1,
                previous: -1,
                last_offset_delta: 0,
            },
        ),
        (
            "gzip codec",
            {
                let mut b = raw_batch(1, 0, &first_record);
                b[ATTRIBUTES_AT + 1] = COMPRESSION_GZIP;
                let crc = crc32c::crc32c(&b[CRC_COVERED_FROM..]);
                b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
                b
            },
            BatchError::UnsupportedCompression(COMPRESSION_GZIP),
        ),
    ];

    let mut variants_seen = std::collections::BTreeSet::new();
    for (name, bytes, expected) in &cases {
        assert_eq!(first_error(bytes).as_ref(), Some(expected), "case: {name}");
        // Display is meant for operators: it must say something specific.
        assert!(expected.to_string().len() > 20, "case: {name}");
        variants_seen.insert(
            format!("{expected:?}")
                .split([' ', '('])
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    // At least one case for each of the 15 variants.
    assert_eq!(variants_seen.len(), 15, "{variants_seen:?}");
}

#[test]
fn crafted_valid_batch_decodes() {
    // The hand-written helpers produce a valid batch when nothing is broken,
    // so the error cases above fail for the reason they name.
    let records = [
        raw_record(&refs(&plain_fields(0))),
        raw_record(&refs(&plain_fields(2))),
    ]
    .concat();
    let bytes = raw_batch(2, 3, &records);
    assert_eq!(first_error(&bytes), None);
    let view = RecordBatchView::parse(&bytes).unwrap();
    assert_eq!(view.offset_count(), 4);
    let deltas: Vec<i32> = decode_all(&view)
        .iter()
        .map(RecordView::offset_delta)
        .collect();
    assert_eq!(deltas, [0, 2]);
}

#[test]
fn records_stop_after_the_first_error() {
    let bytes = raw_batch(3, 2, &raw_record(&refs(&plain_fields(0))));
    let view = RecordBatchView::parse_verified(&bytes).unwrap();
    let mut records = view.records();
    assert!(records.next().unwrap().is_ok());
    assert!(records.next().unwrap().is_err());
    assert!(records.next().is_none());
    assert!(records.next().is_none());
}

#[test]
fn header_parse_frames_a_stream_of_batches() {
    let first = sample();
    let second = build(103, 0, &[(0, None, Some(b"x"), vec![])]);
    let log = [first.clone(), second.clone()].concat();
    let mut at = 0;
    let mut seen = Vec::new();
    while at < log.len() {
        let header = BatchHeader::parse(&log[at..]).unwrap();
        let batch = &log[at..at + header.total_bytes()];
        seen.push(
            RecordBatchView::parse_verified(batch)
                .unwrap()
                .base_offset(),
        );
        at += header.total_bytes();
    }
    assert_eq!(seen, [100, 103]);
}
