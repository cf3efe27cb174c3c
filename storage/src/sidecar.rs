//! The segment index file (`<seq>.idx`), written once when a segment is
//! sealed: one fixed-width row per record of the segment, in log order, so
//! recovery rebuilds every partition's entry table without reading the
//! segment's data. It is at once each partition's offset index (rows carry
//! the batch's offset count) and its time index (rows carry the batch's max
//! timestamp).
//!
//! ```text
//! file   := magic "SMQI" u32 | version u32 | segment_seq u32 | row_count u32
//!           | row * row_count | crc32c(all bytes before) u32 | magic u32
//! row    := record header (56 bytes, verbatim, with its own crc)
//!           | position u64 | aux_a u64 | aux_b u64            (80 bytes)
//! ```
//! `aux_a`/`aux_b` hold what replay needs beyond the header: for a data
//! record the offset count and max timestamp, for a hard state the vote, for a
//! compaction the first offset. A checkpoint's rows are read from the segment.
//!
//! Little-endian, validated as a whole on load: any mismatch means the file is
//! ignored and rebuilt by scanning the segment.

use crate::record::{RecordHeader, RECORD_HEADER_BYTES};

const SIDECAR_MAGIC: u32 = u32::from_le_bytes(*b"SMQI");
const SIDECAR_VERSION: u32 = 1;
const FILE_HEADER_BYTES: usize = 16;
const TRAILER_BYTES: usize = 8;
/// Bytes per row.
pub const SIDECAR_ROW_BYTES: usize = RECORD_HEADER_BYTES + 24;

/// One record's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarRow {
    pub header: RecordHeader,
    pub pos: u64,
    pub aux_a: u64,
    pub aux_b: u64,
}

/// Encodes a whole sidecar file.
pub fn encode(segment_seq: u32, rows: &[SidecarRow]) -> Vec<u8> {
    let mut out = vec![0u8; FILE_HEADER_BYTES + rows.len() * SIDECAR_ROW_BYTES + TRAILER_BYTES];
    out[0..4].copy_from_slice(&SIDECAR_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&SIDECAR_VERSION.to_le_bytes());
    out[8..12].copy_from_slice(&segment_seq.to_le_bytes());
    out[12..16].copy_from_slice(&(rows.len() as u32).to_le_bytes());
    for (row, chunk) in rows
        .iter()
        .zip(out[FILE_HEADER_BYTES..].chunks_exact_mut(SIDECAR_ROW_BYTES))
    {
        let crc = row.header.encode(chunk);
        debug_assert_eq!(crc, row.header.header_crc);
        chunk[56..64].copy_from_slice(&row.pos.to_le_bytes());
        chunk[64..72].copy_from_slice(&row.aux_a.to_le_bytes());
        chunk[72..80].copy_from_slice(&row.aux_b.to_le_bytes());
    }
    let body = out.len() - TRAILER_BYTES;
    let crc = crc32c::crc32c(&out[..body]);
    out[body..body + 4].copy_from_slice(&crc.to_le_bytes());
    out[body + 4..].copy_from_slice(&SIDECAR_MAGIC.to_le_bytes());
    out
}

/// Why a sidecar was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidecarError {
    #[error("sidecar is {0} bytes, not a whole file")]
    Length(usize),
    #[error("bad magic or version")]
    Magic,
    #[error("sidecar belongs to segment {found}, expected {expected}")]
    Segment { found: u32, expected: u32 },
    #[error("checksum mismatch")]
    Crc,
    #[error("row {0} is invalid")]
    Row(usize),
}

/// Decodes and validates a sidecar file. Never panics.
pub fn decode(bytes: &[u8], segment_seq: u32) -> Result<Vec<SidecarRow>, SidecarError> {
    if bytes.len() < FILE_HEADER_BYTES + TRAILER_BYTES {
        return Err(SidecarError::Length(bytes.len()));
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if u32_at(0) != SIDECAR_MAGIC || u32_at(4) != SIDECAR_VERSION {
        return Err(SidecarError::Magic);
    }
    let seq = u32_at(8);
    if seq != segment_seq {
        return Err(SidecarError::Segment {
            found: seq,
            expected: segment_seq,
        });
    }
    let count = u32_at(12) as usize;
    let expected_len = count
        .checked_mul(SIDECAR_ROW_BYTES)
        .and_then(|n| n.checked_add(FILE_HEADER_BYTES + TRAILER_BYTES));
    if expected_len != Some(bytes.len()) {
        return Err(SidecarError::Length(bytes.len()));
    }
    let body = bytes.len() - TRAILER_BYTES;
    if u32_at(body + 4) != SIDECAR_MAGIC {
        return Err(SidecarError::Magic);
    }
    if crc32c::crc32c(&bytes[..body]) != u32_at(body) {
        return Err(SidecarError::Crc);
    }
    let mut rows = Vec::with_capacity(count);
    let mut last_pos: Option<u64> = None;
    for (i, chunk) in bytes[FILE_HEADER_BYTES..body]
        .chunks_exact(SIDECAR_ROW_BYTES)
        .enumerate()
    {
        let header = RecordHeader::decode(chunk).map_err(|_| SidecarError::Row(i))?;
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&chunk[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let pos = u64_at(56);
        // Rows are in log order: positions strictly increase.
        if header.segment_seq != segment_seq || last_pos.is_some_and(|p| pos <= p) {
            return Err(SidecarError::Row(i));
        }
        last_pos = Some(pos);
        rows.push(SidecarRow {
            header,
            pos,
            aux_a: u64_at(64),
            aux_b: u64_at(72),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;
    use proptest::prelude::*;

    fn row(pos: u64, index: u64) -> SidecarRow {
        let mut header = RecordHeader {
            header_crc: 0,
            prev_header_crc: 1,
            segment_seq: 4,
            kind: RecordKind::Data,
            flags: 0,
            payload_len: 70,
            payload_crc: 5,
            partition: 8,
            index,
            term: 1,
        };
        let mut scratch = [0u8; RECORD_HEADER_BYTES];
        header.header_crc = header.encode(&mut scratch);
        SidecarRow {
            header,
            pos,
            aux_a: 3,
            aux_b: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let rows = vec![row(0, 1), row(126, 2), row(252, 3)];
        let bytes = encode(4, &rows);
        assert_eq!(decode(&bytes, 4).unwrap(), rows);
        assert_eq!(
            decode(&bytes, 5),
            Err(SidecarError::Segment {
                found: 4,
                expected: 5
            })
        );
        assert!(decode(&bytes[..bytes.len() - 1], 4).is_err());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b, 4).is_err(), "flip at {i} accepted");
        }
        let unordered = encode(4, &[row(10, 1), row(10, 2)]);
        assert_eq!(decode(&unordered, 4), Err(SidecarError::Row(1)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), seq in 0u32..8) {
            let _ = decode(&bytes, seq);
        }

        #[test]
        fn truncated_or_mutated_files_never_panic(cut in 0usize..400, at in 0usize..400, v in any::<u8>()) {
            let rows = vec![row(0, 1), row(126, 2), row(252, 3)];
            let mut bytes = encode(4, &rows);
            let n = bytes.len();
            bytes[at % n] = v;
            bytes.truncate(cut.min(n));
            let _ = decode(&bytes, 4);
        }
    }
}
