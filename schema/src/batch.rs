//! The record batch: Kafka's RecordBatch v2 (magic 2), byte for byte.
//!
//! A batch is the unit that producers send, the log stores and consumers
//! fetch. Keeping Kafka's exact layout lets the same bytes travel untouched
//! from the producer's socket to disk and back out to a consumer; the broker
//! only ever rewrites the two fields the checksum does not cover
//! ([`stamp`]: base offset and partition leader epoch).
//!
//! # Header (61 bytes, all integers big-endian)
//!
//! | at | width | field                  | meaning |
//! |----|-------|------------------------|---------|
//! |  0 | i64   | `baseOffset`           | offset of the first record; assigned by the leader |
//! |  8 | i32   | `batchLength`          | bytes after this field to the end of the batch (total - 12) |
//! | 12 | i32   | `partitionLeaderEpoch` | leader epoch that appended the batch; for us the Raft term truncated to i32 |
//! | 16 | i8    | `magic`                | format version, always [`MAGIC_V2`] |
//! | 17 | u32   | `crc`                  | CRC-32C of bytes `[21..end)`, attributes to the last record |
//! | 21 | i16   | `attributes`           | bits 0-2 codec, bit 3 timestamp type, bit 4 transactional, bit 5 control |
//! | 23 | i32   | `lastOffsetDelta`      | offset of the last record minus `baseOffset` |
//! | 27 | i64   | `baseTimestamp`        | timestamp of the first record, ms since the epoch |
//! | 35 | i64   | `maxTimestamp`         | largest record timestamp (or the log-append time) |
//! | 43 | i64   | `producerId`           | idempotent/transactional producer id, -1 if none |
//! | 51 | i16   | `producerEpoch`        | epoch of that producer id, -1 if none |
//! | 53 | i32   | `baseSequence`         | sequence number of the first record, -1 if none |
//! | 57 | i32   | `records count`        | number of records that follow |
//!
//! # Record (variable length; "varint" means zigzag, see [`crate::varint`])
//!
//! | field            | encoding | meaning |
//! |------------------|----------|---------|
//! | `length`         | varint   | bytes of the record after this field |
//! | `attributes`     | i8       | unused by Kafka so far, carried as-is |
//! | `timestampDelta` | varlong  | record timestamp minus `baseTimestamp` |
//! | `offsetDelta`    | varint   | record offset minus `baseOffset` |
//! | `keyLength`      | varint   | -1 for a null key |
//! | `key`            | bytes    | |
//! | `valueLength`    | varint   | -1 for a null value |
//! | `value`          | bytes    | |
//! | `headers count`  | varint   | number of headers that follow |
//! | `headerKeyLength`| varint   | per header; never -1: keys are not nullable |
//! | `headerKey`      | bytes    | UTF-8 by convention (not checked) |
//! | `headerValueLength` | varint | per header; -1 for a null value |
//! | `headerValue`    | bytes    | |
//!
//! # Reading and writing
//!
//! [`RecordBatchView`] validates the framing of a complete batch without
//! copying it, and [`RecordIter`] walks its records zero-copy, checking every
//! length against the bounds. [`BatchBuilder`] writes a batch into a
//! caller-owned buffer. No decoder here panics or reads out of bounds,
//! whatever the input.

use std::fmt;
use std::iter::FusedIterator;

use crate::varint::{self, VarintError};

// ---------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------

/// Byte offset of `baseOffset` (i64).
pub const BASE_OFFSET_AT: usize = 0;
/// Byte offset of `batchLength` (i32).
pub const BATCH_LENGTH_AT: usize = 8;
/// Byte offset of `partitionLeaderEpoch` (i32).
pub const LEADER_EPOCH_AT: usize = 12;
/// Byte offset of `magic` (i8).
pub const MAGIC_AT: usize = 16;
/// Byte offset of `crc` (u32).
pub const CRC_AT: usize = 17;
/// Byte offset of `attributes` (i16); the CRC covers from here to the end.
pub const ATTRIBUTES_AT: usize = 21;
/// Byte offset of `lastOffsetDelta` (i32).
pub const LAST_OFFSET_DELTA_AT: usize = 23;
/// Byte offset of `baseTimestamp` (i64).
pub const BASE_TIMESTAMP_AT: usize = 27;
/// Byte offset of `maxTimestamp` (i64).
pub const MAX_TIMESTAMP_AT: usize = 35;
/// Byte offset of `producerId` (i64).
pub const PRODUCER_ID_AT: usize = 43;
/// Byte offset of `producerEpoch` (i16).
pub const PRODUCER_EPOCH_AT: usize = 51;
/// Byte offset of `baseSequence` (i32).
pub const BASE_SEQUENCE_AT: usize = 53;
/// Byte offset of `records count` (i32).
pub const RECORD_COUNT_AT: usize = 57;
/// Size of the fixed header; the first record starts here.
pub const HEADER_BYTES: usize = 61;

/// First byte the CRC covers: everything from the attributes on. The fields
/// before it (base offset, length, leader epoch, magic, crc) are excluded so
/// the leader can assign offsets and epochs without recomputing the CRC.
pub const CRC_COVERED_FROM: usize = ATTRIBUTES_AT;
/// Bytes in front of the part `batchLength` counts: baseOffset + batchLength.
/// Kafka calls this the log overhead.
pub const LENGTH_PREFIX_BYTES: usize = 12;
/// Smallest valid `batchLength`: a batch with a header and no records.
pub const BATCH_LENGTH_MIN: i32 = (HEADER_BYTES - LENGTH_PREFIX_BYTES) as i32;
/// Sanity bound on a whole batch (header included). Decoders reject a batch
/// whose `batchLength + 12` exceeds it, so a corrupt length can never make a
/// reader allocate or wait for gigabytes; the builder refuses to exceed it.
pub const BATCH_BYTES_MAX: usize = 64 << 20;

/// The only batch format version this crate reads or writes.
pub const MAGIC_V2: i8 = 2;

/// Attributes bits 0-2: compression codec (see the `COMPRESSION_*` values).
pub const COMPRESSION_MASK: i16 = 0x07;
/// Attributes bit 3: set when timestamps are the log-append time, clear for
/// create time.
pub const TIMESTAMP_TYPE_FLAG: i16 = 0x08;
/// Attributes bit 4: the batch belongs to a transaction.
pub const TRANSACTIONAL_FLAG: i16 = 0x10;
/// Attributes bit 5: the batch holds control records (commit/abort markers).
pub const CONTROL_FLAG: i16 = 0x20;

/// Codec value for uncompressed records, the only one decoded here.
pub const COMPRESSION_NONE: u8 = 0;
/// Codec value for gzip.
pub const COMPRESSION_GZIP: u8 = 1;
/// Codec value for snappy.
pub const COMPRESSION_SNAPPY: u8 = 2;
/// Codec value for lz4.
pub const COMPRESSION_LZ4: u8 = 3;
/// Codec value for zstd.
pub const COMPRESSION_ZSTD: u8 = 4;

/// `producerId` of a producer that is neither idempotent nor transactional.
pub const NO_PRODUCER_ID: i64 = -1;
/// `producerEpoch` when there is no producer id.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// `baseSequence` when there is no producer id.
pub const NO_SEQUENCE: i32 = -1;
/// `partitionLeaderEpoch` a producer sends before a leader stamps the batch.
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why bytes are not a valid record batch. Record-level variants carry the
/// zero-based record `index` and the `field` that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than the header, or than a declared length, requires.
    #[error("record batch truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// The magic byte is not [`MAGIC_V2`].
    #[error("record batch magic is {0}, only magic 2 (RecordBatch v2) is supported")]
    BadMagic(i8),
    /// `batchLength` is too small to hold even the rest of the header.
    #[error("batchLength {declared} is below the {BATCH_LENGTH_MIN} bytes the header needs")]
    LengthTooSmall { declared: i32 },
    /// `batchLength` disagrees with the number of bytes given.
    #[error("batchLength says {declared} bytes follow it, but {actual} do")]
    LengthMismatch { declared: i32, actual: usize },
    /// The batch would exceed [`BATCH_BYTES_MAX`].
    #[error("record batch of {declared_bytes} bytes exceeds the bound of {max_bytes} bytes")]
    TooLarge {
        declared_bytes: usize,
        max_bytes: usize,
    },
    /// The stored CRC does not match the bytes it covers.
    #[error("record batch crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    /// The header's record count is negative.
    #[error("record count {0} is negative")]
    NegativeCount(i32),
    /// A batch with records has a negative `lastOffsetDelta`.
    #[error(
        "lastOffsetDelta {last_offset_delta} is negative in a batch of {record_count} records"
    )]
    BadLastOffsetDelta {
        last_offset_delta: i32,
        record_count: i32,
    },
    /// The records do not exactly fill the batch: either the body ended after
    /// `decoded` whole records, short of `declared`, or `trailing_bytes` were
    /// left over after all `declared` records.
    #[error(
        "header declares {declared} records, but the body holds {decoded} \
         followed by {trailing_bytes} unparsed bytes"
    )]
    CountMismatch {
        declared: i32,
        decoded: i32,
        trailing_bytes: usize,
    },
    /// A varint is longer than its width allows or carries bits beyond it.
    #[error("record {index}: malformed varint in {field}")]
    BadVarint { index: i32, field: &'static str },
    /// A field (or the record itself) extends past the bytes available to it.
    #[error("record {index}: {field} runs past the end of its record or batch")]
    RecordOutOfBounds { index: i32, field: &'static str },
    /// A length or count is negative where that is not allowed (only -1, for
    /// null, is allowed on nullable fields).
    #[error("record {index}: invalid {field} {value}")]
    BadFieldLength {
        index: i32,
        field: &'static str,
        value: i32,
    },
    /// A record's fields did not use exactly the bytes its length declared.
    #[error("record {index}: length says {declared} bytes, but its fields use {consumed}")]
    RecordLengthMismatch {
        index: i32,
        declared: i32,
        consumed: usize,
    },
    /// Offset deltas must rise strictly and stay within `lastOffsetDelta`;
    /// anything else would give a record an offset outside its batch or a
    /// duplicate offset.
    #[error(
        "record {index}: offset delta {offset_delta} is not above the previous \
         {previous} or exceeds lastOffsetDelta {last_offset_delta}"
    )]
    BadOffsetDelta {
        index: i32,
        offset_delta: i32,
        previous: i64,
        last_offset_delta: i32,
    },
    /// The records are compressed with a codec this crate does not decode.
    #[error("record batch compression codec {0} is not supported; only 0 (none) is")]
    UnsupportedCompression(u8),
}

// ---------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------

/// The decoded fixed header of a batch. Field meanings are in the
/// [module documentation](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

/// Copies `N` bytes at `at` out of the fixed-size header. The offsets are
/// constants inside `HEADER_BYTES`, so the slice cannot go out of range.
#[inline]
fn field<const N: usize>(header: &[u8; HEADER_BYTES], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&header[at..at + N]);
    out
}

impl BatchHeader {
    /// Decodes the header fields from the first [`HEADER_BYTES`] of `bytes`
    /// without judging them. Fails only if `bytes` is shorter than a header.
    pub fn decode(bytes: &[u8]) -> Result<Self, BatchError> {
        let h: &[u8; HEADER_BYTES] = bytes.first_chunk().ok_or(BatchError::Truncated {
            need: HEADER_BYTES,
            have: bytes.len(),
        })?;
        Ok(Self {
            base_offset: i64::from_be_bytes(field(h, BASE_OFFSET_AT)),
            batch_length: i32::from_be_bytes(field(h, BATCH_LENGTH_AT)),
            partition_leader_epoch: i32::from_be_bytes(field(h, LEADER_EPOCH_AT)),
            magic: i8::from_be_bytes(field(h, MAGIC_AT)),
            crc: u32::from_be_bytes(field(h, CRC_AT)),
            attributes: i16::from_be_bytes(field(h, ATTRIBUTES_AT)),
            last_offset_delta: i32::from_be_bytes(field(h, LAST_OFFSET_DELTA_AT)),
            base_timestamp: i64::from_be_bytes(field(h, BASE_TIMESTAMP_AT)),
            max_timestamp: i64::from_be_bytes(field(h, MAX_TIMESTAMP_AT)),
            producer_id: i64::from_be_bytes(field(h, PRODUCER_ID_AT)),
            producer_epoch: i16::from_be_bytes(field(h, PRODUCER_EPOCH_AT)),
            base_sequence: i32::from_be_bytes(field(h, BASE_SEQUENCE_AT)),
            record_count: i32::from_be_bytes(field(h, RECORD_COUNT_AT)),
        })
    }

    /// Decodes and validates a header on its own, for readers that see the
    /// header before the rest of the batch (e.g. scanning a log file). Checks
    /// the magic, that `batchLength` is at least [`BATCH_LENGTH_MIN`] and
    /// the whole batch at most [`BATCH_BYTES_MAX`], that the record count is
    /// not negative, and that `lastOffsetDelta >= 0` when there are records.
    /// [`total_bytes`](Self::total_bytes) then says how many bytes the whole
    /// batch occupies.
    pub fn parse(bytes: &[u8]) -> Result<Self, BatchError> {
        let header = Self::decode(bytes)?;
        header.check_frame()?;
        header.check_counts()?;
        Ok(header)
    }

    /// Size of the whole batch, header included: `batchLength + 12`.
    /// Meaningful once [`parse`](Self::parse) accepted the header (a negative
    /// `batchLength` yields 0 here rather than wrapping).
    pub fn total_bytes(&self) -> usize {
        usize::try_from(self.batch_length)
            .map(|length| length + LENGTH_PREFIX_BYTES)
            .unwrap_or(0)
    }

    /// Compression codec, attributes bits 0-2.
    pub fn compression(&self) -> u8 {
        (self.attributes & COMPRESSION_MASK) as u8
    }

    /// Writes the header into the first [`HEADER_BYTES`] of `out`, field for
    /// field, crc included as given.
    ///
    /// # Panics
    /// If `out` is shorter than [`HEADER_BYTES`].
    pub fn write(&self, out: &mut [u8]) {
        assert!(
            out.len() >= HEADER_BYTES,
            "a batch header needs {HEADER_BYTES} bytes, buffer has {}",
            out.len()
        );
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(BASE_OFFSET_AT, &self.base_offset.to_be_bytes());
        put(BATCH_LENGTH_AT, &self.batch_length.to_be_bytes());
        put(LEADER_EPOCH_AT, &self.partition_leader_epoch.to_be_bytes());
        put(MAGIC_AT, &self.magic.to_be_bytes());
        put(CRC_AT, &self.crc.to_be_bytes());
        put(ATTRIBUTES_AT, &self.attributes.to_be_bytes());
        put(LAST_OFFSET_DELTA_AT, &self.last_offset_delta.to_be_bytes());
        put(BASE_TIMESTAMP_AT, &self.base_timestamp.to_be_bytes());
        put(MAX_TIMESTAMP_AT, &self.max_timestamp.to_be_bytes());
        put(PRODUCER_ID_AT, &self.producer_id.to_be_bytes());
        put(PRODUCER_EPOCH_AT, &self.producer_epoch.to_be_bytes());
        put(BASE_SEQUENCE_AT, &self.base_sequence.to_be_bytes());
        put(RECORD_COUNT_AT, &self.record_count.to_be_bytes());
    }

    /// Magic and `batchLength` bounds: what a reader needs to trust before
    /// using `batchLength` to find the end of the batch.
    fn check_frame(&self) -> Result<(), BatchError> {
        if self.magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(self.magic));
        }
        if self.batch_length < BATCH_LENGTH_MIN {
            return Err(BatchError::LengthTooSmall {
                declared: self.batch_length,
            });
        }
        let declared_bytes = self.total_bytes();
        if declared_bytes > BATCH_BYTES_MAX {
            return Err(BatchError::TooLarge {
                declared_bytes,
                max_bytes: BATCH_BYTES_MAX,
            });
        }
        Ok(())
    }

    fn check_counts(&self) -> Result<(), BatchError> {
        if self.record_count < 0 {
            return Err(BatchError::NegativeCount(self.record_count));
        }
        if self.record_count > 0 && self.last_offset_delta < 0 {
            return Err(BatchError::BadLastOffsetDelta {
                last_offset_delta: self.last_offset_delta,
                record_count: self.record_count,
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Batch view
// ---------------------------------------------------------------------------

/// Borrowed, validated view of exactly one batch.
///
/// [`parse`](Self::parse) checks: `bytes.len() >= HEADER_BYTES`, magic is 2,
/// `batchLength` is at least [`BATCH_LENGTH_MIN`] and the batch at most
/// [`BATCH_BYTES_MAX`], `batchLength + 12 == bytes.len()` exactly, record
/// count >= 0, and `lastOffsetDelta >= 0` when there are records. It is O(1)
/// and does not check the CRC ([`verify_crc`](Self::verify_crc) does) or the
/// records ([`records`](Self::records) does, lazily).
#[derive(Clone, Copy, Debug)]
pub struct RecordBatchView<'a> {
    bytes: &'a [u8],
    header: BatchHeader,
}

impl<'a> RecordBatchView<'a> {
    /// Validates the framing of `bytes` as one complete batch; see the type
    /// documentation for what is and is not checked.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let header = BatchHeader::decode(bytes)?;
        header.check_frame()?;
        let actual = bytes.len() - LENGTH_PREFIX_BYTES;
        if usize::try_from(header.batch_length) != Ok(actual) {
            return Err(BatchError::LengthMismatch {
                declared: header.batch_length,
                actual,
            });
        }
        header.check_counts()?;
        Ok(Self { bytes, header })
    }

    /// [`parse`](Self::parse) followed by [`verify_crc`](Self::verify_crc).
    pub fn parse_verified(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let view = Self::parse(bytes)?;
        view.verify_crc()?;
        Ok(view)
    }

    /// Recomputes the CRC-32C over `[21..end)` and compares it with the
    /// stored one. Costs one pass over the batch.
    pub fn verify_crc(&self) -> Result<(), BatchError> {
        let computed = crc32c::crc32c(&self.bytes[CRC_COVERED_FROM..]);
        if computed == self.header.crc {
            Ok(())
        } else {
            Err(BatchError::BadCrc {
                stored: self.header.crc,
                computed,
            })
        }
    }

    /// The whole batch, exactly as given to `parse`.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// All header fields at once.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The encoded records: everything after the header.
    pub fn records_bytes(&self) -> &'a [u8] {
        &self.bytes[HEADER_BYTES..]
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> i64 {
        self.header.base_offset
    }

    /// Bytes after the `batchLength` field: `as_bytes().len() - 12`.
    pub fn batch_length(&self) -> i32 {
        self.header.batch_length
    }

    /// Leader epoch that appended the batch (our Raft term, truncated).
    pub fn partition_leader_epoch(&self) -> i32 {
        self.header.partition_leader_epoch
    }

    /// Always [`MAGIC_V2`] for a parsed view.
    pub fn magic(&self) -> i8 {
        self.header.magic
    }

    /// The stored CRC-32C (not verified by `parse`).
    pub fn crc(&self) -> u32 {
        self.header.crc
    }

    /// Raw attributes bits.
    pub fn attributes(&self) -> i16 {
        self.header.attributes
    }

    /// Compression codec, attributes bits 0-2 (`COMPRESSION_*`).
    pub fn compression(&self) -> u8 {
        self.header.compression()
    }

    /// Attributes bit 3: record timestamps are the log-append time, which
    /// Kafka stores as `maxTimestamp` (see [`record_timestamp`](Self::record_timestamp)).
    pub fn is_log_append_time(&self) -> bool {
        self.header.attributes & TIMESTAMP_TYPE_FLAG != 0
    }

    /// Attributes bit 4.
    pub fn is_transactional(&self) -> bool {
        self.header.attributes & TRANSACTIONAL_FLAG != 0
    }

    /// Attributes bit 5.
    pub fn is_control(&self) -> bool {
        self.header.attributes & CONTROL_FLAG != 0
    }

    /// Offset of the last record minus the base offset.
    pub fn last_offset_delta(&self) -> i32 {
        self.header.last_offset_delta
    }

    /// Timestamp of the first record, ms.
    pub fn base_timestamp(&self) -> i64 {
        self.header.base_timestamp
    }

    /// Largest record timestamp, or the log-append time, ms.
    pub fn max_timestamp(&self) -> i64 {
        self.header.max_timestamp
    }

    /// Producer id, [`NO_PRODUCER_ID`] if none.
    pub fn producer_id(&self) -> i64 {
        self.header.producer_id
    }

    /// Producer epoch, [`NO_PRODUCER_EPOCH`] if none.
    pub fn producer_epoch(&self) -> i16 {
        self.header.producer_epoch
    }

    /// Sequence number of the first record, [`NO_SEQUENCE`] if none.
    pub fn base_sequence(&self) -> i32 {
        self.header.base_sequence
    }

    /// Number of records declared by the header (>= 0 once parsed).
    pub fn record_count(&self) -> i32 {
        self.header.record_count
    }

    /// Offsets this batch covers: `last_offset_delta + 1`, or 0 when
    /// `lastOffsetDelta` is negative (an empty batch as [`BatchBuilder`]
    /// writes it, with -1). Can exceed `record_count` when records were
    /// removed (compaction) but their offsets stay accounted for.
    pub fn offset_count(&self) -> u32 {
        // `parse` guarantees >= 0 whenever there are records; a negative
        // delta can only belong to an empty batch, which covers nothing.
        u32::try_from(self.header.last_offset_delta).map_or(0, |delta| delta + 1)
    }

    /// `base_offset + last_offset_delta`: the last offset covered. For an
    /// empty batch with `lastOffsetDelta` -1 this is `base_offset - 1`, i.e.
    /// `next_offset() - 1` still holds.
    pub fn last_offset(&self) -> i64 {
        self.header
            .base_offset
            .wrapping_add(i64::from(self.header.last_offset_delta))
    }

    /// The offset right after this batch: `base_offset + offset_count`.
    pub fn next_offset(&self) -> i64 {
        self.header
            .base_offset
            .wrapping_add(i64::from(self.offset_count()))
    }

    /// Absolute offset of a record of this batch.
    pub fn record_offset(&self, record: &RecordView<'_>) -> i64 {
        record.offset(self.header.base_offset)
    }

    /// Timestamp a consumer sees for a record of this batch: the record's
    /// create time, or `maxTimestamp` in a log-append-time batch (Kafka's
    /// rule; the per-record deltas are then meaningless).
    pub fn record_timestamp(&self, record: &RecordView<'_>) -> i64 {
        if self.is_log_append_time() {
            self.header.max_timestamp
        } else {
            record.timestamp(self.header.base_timestamp)
        }
    }

    /// Zero-copy iterator over the records.
    ///
    /// Each item is a record or the first error found; after an error the
    /// iterator is exhausted. A compressed batch yields
    /// [`BatchError::UnsupportedCompression`] first. Every length is checked
    /// against the bounds of its record and of the batch, offset deltas must
    /// rise strictly within `lastOffsetDelta`, and exactly `record_count`
    /// records must fill the batch: too few, or bytes left over, yields
    /// [`BatchError::CountMismatch`] as the last item.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter {
            body: self.records_bytes(),
            pos: 0,
            declared: self.header.record_count,
            decoded: 0,
            last_offset_delta: self.header.last_offset_delta,
            previous_offset_delta: -1,
            compression: self.compression(),
            done: false,
        }
    }
}

/// Overwrites `baseOffset` and `partitionLeaderEpoch` in place — what the
/// leader does on append. The CRC does not cover these fields, so it stays
/// valid and the rest of the batch is untouched.
///
/// # Panics
/// Only if `bytes.len() < HEADER_BYTES`; callers stamp batches they parsed.
pub fn stamp(bytes: &mut [u8], base_offset: i64, partition_leader_epoch: i32) {
    assert!(
        bytes.len() >= HEADER_BYTES,
        "stamp needs a whole batch header ({HEADER_BYTES} bytes), got {}",
        bytes.len()
    );
    bytes[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
    bytes[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4]
        .copy_from_slice(&partition_leader_epoch.to_be_bytes());
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// One record, borrowed from its batch. Obtained from [`RecordBatchView::records`],
/// which has already validated every field including the headers.
///
/// Absolute values need the batch header: the offset is
/// `base_offset + offset_delta` ([`offset`](Self::offset)), the create time
/// `base_timestamp + timestamp_delta` ([`timestamp`](Self::timestamp)); or
/// use [`RecordBatchView::record_offset`] / [`RecordBatchView::record_timestamp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    attributes: i8,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    header_count: i32,
    /// The encoded headers after the count; already validated.
    headers_bytes: &'a [u8],
    /// The record's bytes including its length varint.
    encoded_bytes: usize,
    index: i32,
}

impl<'a> RecordView<'a> {
    /// Record attributes byte (unused by Kafka so far).
    pub fn attributes(&self) -> i8 {
        self.attributes
    }

    /// Record timestamp minus the batch's base timestamp, ms.
    pub fn timestamp_delta(&self) -> i64 {
        self.timestamp_delta
    }

    /// Record offset minus the batch's base offset.
    pub fn offset_delta(&self) -> i32 {
        self.offset_delta
    }

    /// `base_offset + offset_delta`.
    pub fn offset(&self, base_offset: i64) -> i64 {
        base_offset.wrapping_add(i64::from(self.offset_delta))
    }

    /// `base_timestamp + timestamp_delta`: the create time. Wraps like the
    /// encoder's subtraction did, so any i64 timestamp round-trips. In a
    /// log-append-time batch consumers use `maxTimestamp` instead.
    pub fn timestamp(&self, base_timestamp: i64) -> i64 {
        base_timestamp.wrapping_add(self.timestamp_delta)
    }

    /// The key, `None` when null (as distinct from empty).
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    /// The value, `None` when null (a tombstone in a compacted topic).
    pub fn value(&self) -> Option<&'a [u8]> {
        self.value
    }

    /// Number of headers.
    pub fn header_count(&self) -> u32 {
        // Validated non-negative when the record was decoded.
        self.header_count.unsigned_abs()
    }

    /// Iterator over `(key, value)` headers. Header keys are UTF-8 by
    /// convention; they are returned as bytes and not checked, as Kafka does
    /// not check them either.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            cursor: Cursor {
                input: self.headers_bytes,
                pos: 0,
                index: self.index,
            },
            remaining: self.header_count,
            done: false,
        }
    }

    /// Bytes the record occupies in the batch, its length varint included.
    pub fn encoded_bytes(&self) -> usize {
        self.encoded_bytes
    }
}

/// Reads fields of one record, turning every shortfall into an error that
/// names the record and field instead of a panic.
#[derive(Clone, Debug)]
struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
    index: i32,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        self.input.get(self.pos..).unwrap_or_default()
    }

    fn varint_error(&self, error: VarintError, field: &'static str) -> BatchError {
        match error {
            VarintError::Truncated => BatchError::RecordOutOfBounds {
                index: self.index,
                field,
            },
            VarintError::Overflow => BatchError::BadVarint {
                index: self.index,
                field,
            },
        }
    }

    fn varint(&mut self, field: &'static str) -> Result<i32, BatchError> {
        let (value, len) =
            varint::read_varint(self.rest()).map_err(|e| self.varint_error(e, field))?;
        self.pos += len;
        Ok(value)
    }

    fn varlong(&mut self, field: &'static str) -> Result<i64, BatchError> {
        let (value, len) =
            varint::read_varlong(self.rest()).map_err(|e| self.varint_error(e, field))?;
        self.pos += len;
        Ok(value)
    }

    fn byte(&mut self, field: &'static str) -> Result<u8, BatchError> {
        let byte = *self.rest().first().ok_or(BatchError::RecordOutOfBounds {
            index: self.index,
            field,
        })?;
        self.pos += 1;
        Ok(byte)
    }

    fn bytes(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], BatchError> {
        let bytes = self
            .rest()
            .get(..len)
            .ok_or(BatchError::RecordOutOfBounds {
                index: self.index,
                field,
            })?;
        self.pos += len;
        Ok(bytes)
    }

    /// A non-negative length, e.g. a header key length or a count.
    fn length(&mut self, field: &'static str) -> Result<usize, BatchError> {
        let value = self.varint(field)?;
        usize::try_from(value).map_err(|_| BatchError::BadFieldLength {
            index: self.index,
            field,
            value,
        })
    }

    /// Kafka's nullable bytes: a length of -1 means null. Other negative
    /// lengths are rejected rather than read as null: no encoder writes them,
    /// and accepting them would give two encodings for one record.
    fn nullable_bytes(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, BatchError> {
        let value = self.varint(field)?;
        match usize::try_from(value) {
            Ok(len) => self.bytes(len, field).map(Some),
            Err(_) if value == -1 => Ok(None),
            Err(_) => Err(BatchError::BadFieldLength {
                index: self.index,
                field,
                value,
            }),
        }
    }

    /// One header, key then nullable value.
    fn header(&mut self) -> Result<(&'a [u8], Option<&'a [u8]>), BatchError> {
        let key_len = self.length("header key length")?;
        let key = self.bytes(key_len, "header key")?;
        let value = self.nullable_bytes("header value")?;
        Ok((key, value))
    }
}

/// Iterator over the records of a batch; see [`RecordBatchView::records`].
#[derive(Clone, Debug)]
pub struct RecordIter<'a> {
    /// The batch bytes after the header.
    body: &'a [u8],
    pos: usize,
    declared: i32,
    decoded: i32,
    last_offset_delta: i32,
    /// -1 before the first record, so the first delta must be >= 0.
    previous_offset_delta: i64,
    compression: u8,
    done: bool,
}

impl<'a> RecordIter<'a> {
    fn next_record(&mut self) -> Option<Result<RecordView<'a>, BatchError>> {
        if self.compression != COMPRESSION_NONE {
            return Some(Err(BatchError::UnsupportedCompression(self.compression)));
        }
        let rest = self.body.get(self.pos..).unwrap_or_default();
        if self.decoded == self.declared {
            return if rest.is_empty() {
                None
            } else {
                Some(Err(self.count_mismatch(rest.len())))
            };
        }
        if rest.is_empty() {
            return Some(Err(self.count_mismatch(0)));
        }
        Some(self.decode_record(rest))
    }

    fn count_mismatch(&self, trailing_bytes: usize) -> BatchError {
        BatchError::CountMismatch {
            declared: self.declared,
            decoded: self.decoded,
            trailing_bytes,
        }
    }

    /// Decodes the record at the start of `rest` and advances past it.
    fn decode_record(&mut self, rest: &'a [u8]) -> Result<RecordView<'a>, BatchError> {
        let index = self.decoded;
        let mut outer = Cursor {
            input: rest,
            pos: 0,
            index,
        };
        let declared_len = outer.varint("record length")?;
        let body_len = usize::try_from(declared_len).map_err(|_| BatchError::BadFieldLength {
            index,
            field: "record length",
            value: declared_len,
        })?;
        let record = outer.bytes(body_len, "record")?;

        let mut cursor = Cursor {
            input: record,
            pos: 0,
            index,
        };
        let attributes = cursor.byte("attributes")? as i8;
        let timestamp_delta = cursor.varlong("timestamp delta")?;
        let offset_delta = cursor.varint("offset delta")?;
        let key = cursor.nullable_bytes("key")?;
        let value = cursor.nullable_bytes("value")?;
        let header_count = cursor.length("header count")?;
        let headers_start = cursor.pos;
        // Validate every header now so that `records()` alone vouches for
        // the whole record. Each header consumes at least two bytes, so the
        // loop ends after at most record-length / 2 rounds whatever the count.
        for _ in 0..header_count {
            cursor.header()?;
        }
        let headers_bytes = &record[headers_start..cursor.pos];
        if cursor.pos != body_len {
            return Err(BatchError::RecordLengthMismatch {
                index,
                declared: declared_len,
                consumed: cursor.pos,
            });
        }

        let offset_delta_wide = i64::from(offset_delta);
        if offset_delta_wide <= self.previous_offset_delta || offset_delta > self.last_offset_delta
        {
            return Err(BatchError::BadOffsetDelta {
                index,
                offset_delta,
                previous: self.previous_offset_delta,
                last_offset_delta: self.last_offset_delta,
            });
        }

        self.previous_offset_delta = offset_delta_wide;
        self.pos += outer.pos;
        self.decoded += 1;
        Ok(RecordView {
            attributes,
            timestamp_delta,
            offset_delta,
            key,
            value,
            // header_count came from an i32 varint, so it fits.
            header_count: header_count as i32,
            headers_bytes,
            encoded_bytes: outer.pos,
            index,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_record();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        // At most the remaining records plus one trailing error.
        let remaining = usize::try_from(self.declared - self.decoded).unwrap_or(0);
        (0, Some(remaining + 1))
    }
}

impl FusedIterator for RecordIter<'_> {}

/// Iterator over a record's headers as `(key, value)`; see
/// [`RecordView::headers`]. The headers were validated with the record, so
/// errors cannot occur for records from [`RecordIter`]; they are still
/// reported rather than assumed away.
#[derive(Clone, Debug)]
pub struct HeaderIter<'a> {
    cursor: Cursor<'a>,
    remaining: i32,
    done: bool,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<(&'a [u8], Option<&'a [u8]>), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.remaining <= 0 {
            return None;
        }
        let item = self.cursor.header();
        self.remaining -= 1;
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        let remaining = usize::try_from(self.remaining).unwrap_or(0);
        (remaining, Some(remaining))
    }
}

impl FusedIterator for HeaderIter<'_> {}

// ---------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------

/// One header as the builder takes it: key bytes and a nullable value.
pub type HeaderRef<'h> = (&'h [u8], Option<&'h [u8]>);

/// Writes one uncompressed batch into a caller-owned `Vec<u8>`.
///
/// The buffer is cleared and reused, so a caller that keeps one `Vec` across
/// batches (and reserves enough) allocates nothing per record. Each record is
/// written once, directly in place: its size is computed from the field
/// lengths first because the length prefix precedes it.
///
/// Defaults follow Kafka's non-idempotent producer: producer id, epoch and
/// base sequence -1, partition leader epoch -1 (until the leader
/// [`stamp`]s the batch), attributes 0 (create time, not transactional).
///
/// ```
/// use shardmq_schema::batch::{BatchBuilder, RecordBatchView};
///
/// let mut buf = Vec::new();
/// let mut builder = BatchBuilder::new(&mut buf, 100, 1_700_000_000_000);
/// builder.append(1_700_000_000_000, Some(b"k"), Some(b"v"), &[(b"h", None)]);
/// let len = builder.finish();
///
/// let batch = RecordBatchView::parse_verified(&buf[..len]).unwrap();
/// assert_eq!(batch.record_count(), 1);
/// let record = batch.records().next().unwrap().unwrap();
/// assert_eq!(batch.record_offset(&record), 100);
/// assert_eq!(record.value(), Some(&b"v"[..]));
/// ```
pub struct BatchBuilder<'b> {
    out: &'b mut Vec<u8>,
    header: BatchHeader,
    /// Largest record timestamp so far; `None` until the first append.
    max_timestamp: Option<i64>,
}

impl fmt::Debug for BatchBuilder<'_> {
    // Hand-written so debugging a builder does not dump the whole buffer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchBuilder")
            .field("header", &self.header)
            .field("max_timestamp", &self.max_timestamp)
            .field("len_bytes", &self.out.len())
            .finish()
    }
}

impl<'b> BatchBuilder<'b> {
    /// Starts a batch in `out`: clears it and writes a placeholder header.
    /// `base_timestamp` should be the first record's timestamp (deltas are
    /// relative to it; any value works, but this keeps the deltas short).
    pub fn new(out: &'b mut Vec<u8>, base_offset: i64, base_timestamp: i64) -> Self {
        out.clear();
        out.resize(HEADER_BYTES, 0);
        Self {
            out,
            header: BatchHeader {
                base_offset,
                batch_length: 0,
                partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
                magic: MAGIC_V2,
                crc: 0,
                attributes: 0,
                last_offset_delta: -1,
                base_timestamp,
                max_timestamp: base_timestamp,
                producer_id: NO_PRODUCER_ID,
                producer_epoch: NO_PRODUCER_EPOCH,
                base_sequence: NO_SEQUENCE,
                record_count: 0,
            },
            max_timestamp: None,
        }
    }

    /// Sets the idempotent producer's identity and the sequence number of the
    /// first record (defaults: -1, -1, -1).
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.header.producer_id = producer_id;
        self.header.producer_epoch = producer_epoch;
        self.header.base_sequence = base_sequence;
        self
    }

    /// Sets the batch attributes (default 0): timestamp type, transactional
    /// and control flags.
    ///
    /// # Panics
    /// If a compression codec is set (bits 0-2): the builder writes records
    /// uncompressed, so such a flag would make the batch unreadable.
    pub fn attributes(mut self, attributes: i16) -> Self {
        assert!(
            attributes & COMPRESSION_MASK == 0,
            "BatchBuilder writes uncompressed records; attributes {attributes:#x} set a codec"
        );
        self.header.attributes = attributes;
        self
    }

    /// Sets the partition leader epoch (default -1, as a producer sends it;
    /// the leader overwrites it with [`stamp`]).
    pub fn partition_leader_epoch(mut self, epoch: i32) -> Self {
        self.header.partition_leader_epoch = epoch;
        self
    }

    /// Bytes the next [`append`](Self::append) with these arguments would add,
    /// so a caller can check a size limit before appending.
    pub fn next_record_bytes(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[HeaderRef<'_>],
    ) -> usize {
        let timestamp_delta = timestamp.wrapping_sub(self.header.base_timestamp);
        let body_len = record_body_len(
            timestamp_delta,
            self.header.record_count,
            key,
            value,
            headers,
        );
        varint::varint_len(length_to_i32(body_len)) + body_len
    }

    /// Appends a record whose offset delta is the number of records before
    /// it, so offsets are contiguous from the base offset.
    ///
    /// # Panics
    /// If a key, value or header field is longer than `i32::MAX` bytes, or
    /// the batch already holds `i32::MAX` records: the format cannot express
    /// either (and [`finish`](Self::finish) would reject the size anyway).
    pub fn append(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[HeaderRef<'_>],
    ) {
        let offset_delta = self.header.record_count;
        let record_count = offset_delta
            .checked_add(1)
            .expect("a record batch holds at most i32::MAX records");
        // Wrapping, like Kafka's long arithmetic; the decoder wraps back.
        let timestamp_delta = timestamp.wrapping_sub(self.header.base_timestamp);
        let body_len = record_body_len(timestamp_delta, offset_delta, key, value, headers);
        let body_len_field = length_to_i32(body_len);

        let out = &mut *self.out;
        out.reserve(varint::varint_len(body_len_field) + body_len);
        varint::put_varint(out, body_len_field);
        let body_start = out.len();
        out.push(0); // record attributes: unused, always 0
        varint::put_varlong(out, timestamp_delta);
        varint::put_varint(out, offset_delta);
        put_nullable_bytes(out, key);
        put_nullable_bytes(out, value);
        varint::put_varint(out, length_to_i32(headers.len()));
        for (header_key, header_value) in headers {
            varint::put_varint(out, length_to_i32(header_key.len()));
            out.extend_from_slice(header_key);
            put_nullable_bytes(out, *header_value);
        }
        debug_assert_eq!(
            out.len() - body_start,
            body_len,
            "record size precomputation"
        );

        self.header.record_count = record_count;
        self.header.last_offset_delta = offset_delta;
        self.max_timestamp = Some(
            self.max_timestamp
                .map_or(timestamp, |max| max.max(timestamp)),
        );
    }

    /// Records appended so far.
    pub fn record_count(&self) -> usize {
        // Never negative: it only ever counts up from 0.
        self.header.record_count.unsigned_abs() as usize
    }

    /// Size of the batch so far, header included.
    pub fn len_bytes(&self) -> usize {
        self.out.len()
    }

    /// Completes the header (batchLength, lastOffsetDelta, maxTimestamp,
    /// record count, CRC) and returns the batch's length; the batch is
    /// `out[..len]`, which is all of `out`.
    ///
    /// `maxTimestamp` is the largest record timestamp, or `base_timestamp`
    /// for an empty batch, whose `lastOffsetDelta` is -1.
    ///
    /// # Panics
    /// If the batch exceeds [`BATCH_BYTES_MAX`]; use
    /// [`try_finish`](Self::try_finish) to get an error instead. Callers keep
    /// batches under the bound with [`len_bytes`](Self::len_bytes).
    pub fn finish(self) -> usize {
        match self.try_finish() {
            Ok(len) => len,
            Err(error) => panic!("BatchBuilder::finish: {error}"),
        }
    }

    /// Like [`finish`](Self::finish), but returns [`BatchError::TooLarge`]
    /// instead of panicking; the buffer then holds an unfinished batch.
    pub fn try_finish(mut self) -> Result<usize, BatchError> {
        let total_bytes = self.out.len();
        if total_bytes > BATCH_BYTES_MAX {
            return Err(BatchError::TooLarge {
                declared_bytes: total_bytes,
                max_bytes: BATCH_BYTES_MAX,
            });
        }
        // Fits: BATCH_BYTES_MAX is far below i32::MAX.
        self.header.batch_length = (total_bytes - LENGTH_PREFIX_BYTES) as i32;
        self.header.max_timestamp = self.max_timestamp.unwrap_or(self.header.base_timestamp);
        self.header.crc = 0;
        self.header.write(self.out);
        // The CRC field lies before the covered range, so writing the header
        // with a zero CRC first and patching it afterwards is exact.
        let crc = crc32c::crc32c(&self.out[CRC_COVERED_FROM..]);
        self.out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(total_bytes)
    }
}

/// Converts an in-memory length to the format's i32.
///
/// # Panics
/// Above `i32::MAX`, which the format cannot express.
fn length_to_i32(len: usize) -> i32 {
    i32::try_from(len).expect("a record batch field is limited to i32::MAX bytes")
}

fn nullable_bytes_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint::varint_len(-1),
        Some(bytes) => varint::varint_len(length_to_i32(bytes.len())) + bytes.len(),
    }
}

fn put_nullable_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => varint::put_varint(out, -1),
        Some(bytes) => {
            varint::put_varint(out, length_to_i32(bytes.len()));
            out.extend_from_slice(bytes);
        }
    }
}

/// Size of a record after its length varint: what that varint holds.
fn record_body_len(
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[HeaderRef<'_>],
) -> usize {
    let headers_len: usize = headers
        .iter()
        .map(|(header_key, header_value)| {
            varint::varint_len(length_to_i32(header_key.len()))
                + header_key.len()
                + nullable_bytes_len(*header_value)
        })
        .sum();
    1 // attributes
        + varint::varlong_len(timestamp_delta)
        + varint::varint_len(offset_delta)
        + nullable_bytes_len(key)
        + nullable_bytes_len(value)
        + varint::varint_len(length_to_i32(headers.len()))
        + headers_len
}

#[cfg(test)]
mod tests;
