//! The on-disk record: a fixed 56-byte little-endian header followed by its
//! payload. Records are packed back to back inside a segment file.
//!
//! ```text
//! byte  width  field
//!    0      4  magic            RECORD_MAGIC
//!    4      4  header_crc       crc32c of bytes 8..56
//!    8      4  prev_header_crc  header_crc of the record before it in this
//!                               segment (a hash chain), or the segment's seed
//!   12      4  segment_seq      sequence number of the segment it was written to
//!   16      1  kind             RecordKind
//!   17      1  flags            RECORD_FLAG_REWRITE
//!   18      2  reserved         zero
//!   20      4  payload_len      bytes after the header
//!   24      4  payload_crc      crc32c of the payload
//!   28      4  reserved         zero
//!   32      8  partition
//!   40      8  index            Raft index (Truncate: first removed index;
//!                               Compact: new first index; HardState: commit)
//!   48      8  term             Raft term (Compact: term of the index before
//!                               the first; HardState: current term)
//! ```
//!
//! Why each guard exists: `header_crc` and `payload_crc` catch torn and
//! flipped bytes; `segment_seq` keeps a record left over in a reused file from
//! ever being read as part of another segment; `prev_header_crc` chains every
//! record to the one before it, so after recovery cuts a torn tail and new
//! records are written over it, an old record that happens to line up with the
//! new end can never be resurrected.
//!
//! A data record's payload is the record batch exactly as it came from the
//! wire, with `baseOffset` and `partitionLeaderEpoch` stamped by storage.

use crate::error::PartitionId;

/// Size of every record header.
pub const RECORD_HEADER_BYTES: usize = 56;
/// "SMQR" little-endian.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"SMQR");
/// The record is a copy of a live entry moved out of a segment being
/// reclaimed; on replay it replaces the entry at its index without
/// truncating anything after it.
pub const RECORD_FLAG_REWRITE: u8 = 1;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// Raft entry whose payload is a record batch; it consumes message offsets.
    Data = 1,
    /// Raft configuration-change entry; opaque payload, no offsets.
    ConfChange = 2,
    /// Raft entry with an empty payload (a new leader's no-op).
    Empty = 3,
    /// Removes every entry at or after `index`.
    Truncate = 10,
    /// Moves the first index forward; payload: first offset (u64).
    Compact = 11,
    /// Raft hard state; `term`, `index` = commit, payload: vote (u64).
    HardState = 12,
    /// Every partition's bounds and hard state; written first in each segment.
    Checkpoint = 13,
    /// The partition is deleted.
    RemovePartition = 14,
}

impl RecordKind {
    /// Decodes the kind byte; unknown values are corruption.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::ConfChange,
            3 => Self::Empty,
            10 => Self::Truncate,
            11 => Self::Compact,
            12 => Self::HardState,
            13 => Self::Checkpoint,
            14 => Self::RemovePartition,
            _ => return None,
        })
    }

    /// True for the kinds that are Raft log entries (they carry an index and a
    /// term and are returned by `entries`).
    pub fn is_entry(self) -> bool {
        matches!(self, Self::Data | Self::ConfChange | Self::Empty)
    }
}

/// A decoded, checked record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub header_crc: u32,
    pub prev_header_crc: u32,
    pub segment_seq: u32,
    pub kind: RecordKind,
    pub flags: u8,
    pub payload_len: u32,
    pub payload_crc: u32,
    pub partition: PartitionId,
    pub index: u64,
    pub term: u64,
}

/// Why a header was rejected. Recovery treats any of these at the tail of the
/// active segment as the end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    Short,
    Zero,
    BadMagic,
    BadCrc,
    BadKind,
    Reserved,
}

/// The chain seed of a segment: the `prev_header_crc` of its first record.
pub fn chain_seed(segment_seq: u32) -> u32 {
    crc32c::crc32c(&segment_seq.to_le_bytes()) ^ RECORD_MAGIC
}

impl RecordHeader {
    /// Writes the header into `out[..RECORD_HEADER_BYTES]`, computing
    /// `header_crc`, and returns that crc (the next record's chain link).
    pub fn encode(&self, out: &mut [u8]) -> u32 {
        let out = &mut out[..RECORD_HEADER_BYTES];
        out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        out[8..12].copy_from_slice(&self.prev_header_crc.to_le_bytes());
        out[12..16].copy_from_slice(&self.segment_seq.to_le_bytes());
        out[16] = self.kind as u8;
        out[17] = self.flags;
        out[18..20].fill(0);
        out[20..24].copy_from_slice(&self.payload_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.payload_crc.to_le_bytes());
        out[28..32].fill(0);
        out[32..40].copy_from_slice(&self.partition.to_le_bytes());
        out[40..48].copy_from_slice(&self.index.to_le_bytes());
        out[48..56].copy_from_slice(&self.term.to_le_bytes());
        let crc = crc32c::crc32c(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        crc
    }

    /// Decodes and checks a header. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < RECORD_HEADER_BYTES {
            return Err(HeaderError::Short);
        }
        let b = &bytes[..RECORD_HEADER_BYTES];
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let magic = u32_at(0);
        if magic != RECORD_MAGIC {
            if b.iter().all(|&x| x == 0) {
                return Err(HeaderError::Zero);
            }
            return Err(HeaderError::BadMagic);
        }
        let header_crc = u32_at(4);
        if crc32c::crc32c(&b[8..]) != header_crc {
            return Err(HeaderError::BadCrc);
        }
        let kind = RecordKind::from_u8(b[16]).ok_or(HeaderError::BadKind)?;
        if b[18] != 0 || b[19] != 0 || u32_at(28) != 0 {
            return Err(HeaderError::Reserved);
        }
        Ok(RecordHeader {
            header_crc,
            prev_header_crc: u32_at(8),
            segment_seq: u32_at(12),
            kind,
            flags: b[17],
            payload_len: u32_at(20),
            payload_crc: u32_at(24),
            partition: u64_at(32),
            index: u64_at(40),
            term: u64_at(48),
        })
    }
}

/// One partition's row in a checkpoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointRow {
    pub partition: PartitionId,
    pub first_index: u64,
    pub term_before_first: u64,
    pub last_index: u64,
    pub first_offset: u64,
    pub hard_term: u64,
    pub hard_vote: u64,
    pub hard_commit: u64,
}

/// Bytes per checkpoint row.
pub const CHECKPOINT_ROW_BYTES: usize = 64;

impl CheckpointRow {
    /// Appends the row's fixed-width little-endian encoding to `out`.
    pub fn encode_into(&self, out: &mut [u8]) {
        let fields = [
            self.partition,
            self.first_index,
            self.term_before_first,
            self.last_index,
            self.first_offset,
            self.hard_term,
            self.hard_vote,
            self.hard_commit,
        ];
        for (i, f) in fields.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
        }
    }

    /// Decodes every row of a checkpoint payload; `None` when the length is
    /// not a whole number of rows.
    pub fn decode_all(payload: &[u8]) -> Option<Vec<CheckpointRow>> {
        if payload.len() % CHECKPOINT_ROW_BYTES != 0 {
            return None;
        }
        Some(
            payload
                .chunks_exact(CHECKPOINT_ROW_BYTES)
                .map(|c| {
                    let f = |i: usize| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(&c[i * 8..i * 8 + 8]);
                        u64::from_le_bytes(a)
                    };
                    CheckpointRow {
                        partition: f(0),
                        first_index: f(1),
                        term_before_first: f(2),
                        last_index: f(3),
                        first_offset: f(4),
                        hard_term: f(5),
                        hard_vote: f(6),
                        hard_commit: f(7),
                    }
                })
                .collect(),
        )
    }
}

/// Reads a little-endian u64 payload (Compact, HardState); `None` when short.
pub fn payload_u64(payload: &[u8]) -> Option<u64> {
    let a: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> RecordHeader {
        RecordHeader {
            header_crc: 0,
            prev_header_crc: 7,
            segment_seq: 3,
            kind: RecordKind::Data,
            flags: 0,
            payload_len: 100,
            payload_crc: 0xdead_beef,
            partition: 42,
            index: 9,
            term: 2,
        }
    }

    #[test]
    fn header_round_trips_and_every_flipped_bit_is_caught() {
        let mut buf = [0u8; RECORD_HEADER_BYTES];
        let crc = sample().encode(&mut buf);
        let back = RecordHeader::decode(&buf).unwrap();
        assert_eq!(
            back,
            RecordHeader {
                header_crc: crc,
                ..sample()
            }
        );
        for bit in 0..RECORD_HEADER_BYTES * 8 {
            let mut b = buf;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(RecordHeader::decode(&b).is_err(), "bit {bit} not caught");
        }
    }

    #[test]
    fn zeroes_are_recognised_as_the_end() {
        assert_eq!(RecordHeader::decode(&[0u8; 64]), Err(HeaderError::Zero));
        assert_eq!(RecordHeader::decode(&[0u8; 10]), Err(HeaderError::Short));
    }

    #[test]
    fn checkpoint_rows_round_trip() {
        let rows = vec![
            CheckpointRow {
                partition: 1,
                first_index: 5,
                last_index: 9,
                ..Default::default()
            },
            CheckpointRow {
                partition: u64::MAX,
                hard_commit: 3,
                ..Default::default()
            },
        ];
        let mut buf = vec![0u8; rows.len() * CHECKPOINT_ROW_BYTES];
        for (r, c) in rows.iter().zip(buf.chunks_exact_mut(CHECKPOINT_ROW_BYTES)) {
            r.encode_into(c);
        }
        assert_eq!(CheckpointRow::decode_all(&buf).unwrap(), rows);
        assert!(CheckpointRow::decode_all(&buf[1..]).is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RecordHeader::decode(&bytes);
            let _ = CheckpointRow::decode_all(&bytes);
            let _ = payload_u64(&bytes);
        }
    }
}
