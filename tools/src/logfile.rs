//! Offline decoding of a broker's shard logs: `log dump` and `log verify`.
//!
//! Segments (`<seq>.log`) and their index files (`<seq>.idx`) are read
//! whole with `std::fs` and decoded with the storage crate's public
//! decoders ([`RecordHeader::decode`], [`sidecar::decode`]); the checks
//! are the ones recovery makes: header crc, segment sequence, the hash
//! chain of header crcs, payload crc, and for data records the record
//! batch framing and crc. A scan stops at the first record that fails,
//! as recovery does; zeros where a header would start are the end of the
//! written records.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use shardmq_schema::batch::RecordBatchView;
use shardmq_storage::record::{
    chain_seed, payload_u64, CheckpointRow, HeaderError, RecordHeader, RecordKind,
    RECORD_HEADER_BYTES,
};
use shardmq_storage::sidecar::{self, SidecarRow};

use crate::error::{CtlError, Result};

/// The batch header of a data record, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSummary {
    /// Base offset stamped by storage.
    pub base_offset: i64,
    /// Offsets the batch covers (`lastOffsetDelta + 1`).
    pub offset_count: u32,
    /// Records in the batch, as its header says.
    pub record_count: i32,
    /// Timestamp of the first record, ms.
    pub base_timestamp: i64,
    /// Largest timestamp, ms.
    pub max_timestamp: i64,
    /// Leader epoch (the Raft term) stamped by storage.
    pub leader_epoch: i32,
    /// True when the batch's own crc matches its bytes.
    pub crc_valid: bool,
}

/// One valid record of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    /// Byte position of its header in the segment.
    pub pos: u64,
    /// The decoded, checked header.
    pub header: RecordHeader,
    /// For a data record, its batch header.
    pub batch: Option<BatchSummary>,
    /// For a checkpoint, the number of partition rows.
    pub checkpoint_rows: Option<usize>,
}

impl ScannedRecord {
    /// The index row storage writes for this record (the auxiliary values
    /// beside the header: offset count and max timestamp of a data record,
    /// the value of a compaction or hard state).
    fn expected_aux(&self, payload: &[u8]) -> (u64, u64) {
        match self.header.kind {
            RecordKind::Data => self.batch.map_or((0, 0), |b| {
                (u64::from(b.offset_count), b.max_timestamp as u64)
            }),
            RecordKind::ConfChange | RecordKind::Empty => (0, i64::MIN as u64),
            RecordKind::Compact | RecordKind::HardState => (payload_u64(payload).unwrap_or(0), 0),
            _ => (0, 0),
        }
    }
}

/// Where and why a scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord {
    /// Byte position of the record that failed.
    pub pos: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for InvalidRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid record at byte {}: {}", self.pos, self.reason)
    }
}

/// A scanned segment.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// The segment's sequence number (from its file name).
    pub seq: u32,
    /// Size of the file.
    pub file_bytes: u64,
    /// Every valid record, in order.
    pub records: Vec<ScannedRecord>,
    /// The index rows these records call for, in order.
    pub rows: Vec<SidecarRow>,
    /// End of the last valid record.
    pub end: u64,
    /// The record that stopped the scan, if it was not the end.
    pub invalid: Option<InvalidRecord>,
}

/// The sequence number in a segment or index file name (`0000000007.log`).
pub fn seq_from_path(path: &Path) -> Option<u32> {
    path.file_stem()?.to_str()?.parse().ok()
}

fn header_error(error: HeaderError) -> &'static str {
    match error {
        HeaderError::Short => "header cut short by the end of the file",
        HeaderError::Zero => "zero header",
        HeaderError::BadMagic => "bad magic",
        HeaderError::BadCrc => "header crc mismatch",
        HeaderError::BadKind => "unknown record kind",
        HeaderError::Reserved => "reserved header bytes are not zero",
    }
}

/// Scans the bytes of segment `seq` from byte 0.
pub fn scan_segment(bytes: &[u8], seq: u32) -> SegmentScan {
    let mut scan = SegmentScan {
        seq,
        file_bytes: bytes.len() as u64,
        records: Vec::new(),
        rows: Vec::new(),
        end: 0,
        invalid: None,
    };
    let mut pos = 0usize;
    let mut prev = chain_seed(seq);
    let invalid = |pos: usize, reason: String| {
        Some(InvalidRecord {
            pos: pos as u64,
            reason,
        })
    };
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let header = match RecordHeader::decode(rest) {
            Ok(header) => header,
            Err(HeaderError::Zero) => break,
            Err(HeaderError::Short) if rest.iter().all(|&b| b == 0) => break,
            Err(error) => {
                scan.invalid = invalid(pos, header_error(error).to_owned());
                break;
            }
        };
        if header.segment_seq != seq {
            scan.invalid = invalid(
                pos,
                format!(
                    "record belongs to segment {}, not {seq}",
                    header.segment_seq
                ),
            );
            break;
        }
        if header.prev_header_crc != prev {
            scan.invalid = invalid(
                pos,
                format!(
                    "chain broken: previous header crc {:#010x}, record links to {:#010x}",
                    prev, header.prev_header_crc
                ),
            );
            break;
        }
        let payload_len = header.payload_len as usize;
        let Some(payload) = rest
            .get(RECORD_HEADER_BYTES..)
            .and_then(|p| p.get(..payload_len))
        else {
            scan.invalid = invalid(
                pos,
                format!("payload of {payload_len} bytes runs past the end of the file"),
            );
            break;
        };
        let computed = crc32c::crc32c(payload);
        if computed != header.payload_crc {
            scan.invalid = invalid(
                pos,
                format!(
                    "payload crc mismatch: stored {:#010x}, computed {computed:#010x}",
                    header.payload_crc
                ),
            );
            break;
        }
        let mut record = ScannedRecord {
            pos: pos as u64,
            header,
            batch: None,
            checkpoint_rows: None,
        };
        match header.kind {
            RecordKind::Data => match RecordBatchView::parse(payload) {
                Ok(view) => {
                    record.batch = Some(BatchSummary {
                        base_offset: view.base_offset(),
                        offset_count: view.offset_count(),
                        record_count: view.record_count(),
                        base_timestamp: view.base_timestamp(),
                        max_timestamp: view.max_timestamp(),
                        leader_epoch: view.partition_leader_epoch(),
                        crc_valid: view.verify_crc().is_ok(),
                    });
                }
                Err(error) => {
                    scan.invalid = invalid(pos, format!("data payload is not a batch: {error}"));
                    break;
                }
            },
            RecordKind::Checkpoint => match CheckpointRow::decode_all(payload) {
                Some(rows) => record.checkpoint_rows = Some(rows.len()),
                None => {
                    scan.invalid = invalid(
                        pos,
                        format!("checkpoint payload of {payload_len} bytes is not whole rows"),
                    );
                    break;
                }
            },
            _ => {}
        }
        let (aux_a, aux_b) = record.expected_aux(payload);
        let batch_crc_bad = record.batch.is_some_and(|b| !b.crc_valid);
        scan.rows.push(SidecarRow {
            header,
            pos: pos as u64,
            aux_a,
            aux_b,
        });
        scan.records.push(record);
        prev = header.header_crc;
        pos += RECORD_HEADER_BYTES + payload_len;
        scan.end = pos as u64;
        if batch_crc_bad {
            // The record is intact but the batch it holds is not: shown,
            // then the scan stops on it.
            scan.invalid = invalid(
                pos - RECORD_HEADER_BYTES - payload_len,
                "record batch crc mismatch".to_owned(),
            );
            break;
        }
    }
    scan
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| CtlError::io("read", path, e))
}

/// A lower-case name for a record kind.
pub fn kind_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Data => "data",
        RecordKind::ConfChange => "conf-change",
        RecordKind::Empty => "empty",
        RecordKind::Truncate => "truncate",
        RecordKind::Compact => "compact",
        RecordKind::HardState => "hard-state",
        RecordKind::Checkpoint => "checkpoint",
        RecordKind::RemovePartition => "remove-partition",
    }
}

fn write_out(out: &mut impl Write, line: fmt::Arguments<'_>) -> Result<()> {
    out.write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|source| CtlError::Stdio {
            what: "write to stdout",
            source,
        })
}

/// `log dump PATH`: writes one line per record of the segment, then how
/// the scan ended. An invalid record is an error after the lines.
pub fn dump(path: &Path, out: &mut impl Write) -> Result<()> {
    let seq = seq_from_path(path).ok_or_else(|| {
        CtlError::Usage(format!(
            "{} is not a segment file named <seq>.log",
            path.display()
        ))
    })?;
    let bytes = read_file(path)?;
    let scan = scan_segment(&bytes, seq);
    write_out(
        out,
        format_args!(
            "segment {} seq={seq} bytes={}",
            path.display(),
            scan.file_bytes
        ),
    )?;
    for record in &scan.records {
        let h = &record.header;
        let mut line = format!(
            "@{} {} partition={} index={} term={} payload={}",
            record.pos,
            kind_name(h.kind),
            h.partition,
            h.index,
            h.term,
            h.payload_len
        );
        if h.flags != 0 {
            line.push_str(&format!(" flags={:#04x}", h.flags));
        }
        if let Some(b) = record.batch {
            line.push_str(&format!(
                " | batch base_offset={} count={} offsets={} base_ts={} max_ts={} epoch={} crc={}",
                b.base_offset,
                b.record_count,
                b.offset_count,
                b.base_timestamp,
                b.max_timestamp,
                b.leader_epoch,
                if b.crc_valid { "valid" } else { "INVALID" }
            ));
        }
        if let Some(rows) = record.checkpoint_rows {
            line.push_str(&format!(" | partitions={rows}"));
        }
        write_out(out, format_args!("{line}"))?;
    }
    match &scan.invalid {
        None => write_out(
            out,
            format_args!(
                "end at byte {}: {} records, the rest is zero",
                scan.end,
                scan.records.len()
            ),
        ),
        Some(invalid) => {
            write_out(out, format_args!("{invalid}"))?;
            Err(CtlError::Corrupt(format!("{}: {invalid}", path.display())))
        }
    }
}

/// What `log verify` found in one index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexStatus {
    /// It matches its segment row for row.
    Valid,
    /// There is none (normal for the newest segment; recovery rebuilds
    /// the others).
    Missing,
    /// It fails its own checks or disagrees with the segment.
    Invalid(String),
}

/// What `log verify` found in one segment.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    /// The segment file.
    pub path: PathBuf,
    /// Valid records.
    pub records: usize,
    /// The record that stopped the scan, if any.
    pub invalid: Option<InvalidRecord>,
    /// The index file's state.
    pub index: IndexStatus,
}

/// What `log verify` found in one shard directory.
#[derive(Debug, Clone)]
pub struct ShardReport {
    /// The `shard-*` directory.
    pub dir: PathBuf,
    /// Every segment, in sequence order.
    pub segments: Vec<SegmentReport>,
    /// Index files without a segment.
    pub orphan_indexes: Vec<PathBuf>,
}

impl ShardReport {
    /// Valid records over all segments.
    pub fn records(&self) -> usize {
        self.segments.iter().map(|s| s.records).sum()
    }

    /// Records that failed their checks (at most one per segment: a scan
    /// stops there).
    pub fn bad_records(&self) -> usize {
        self.segments.iter().filter(|s| s.invalid.is_some()).count()
    }

    /// Index files that are invalid or disagree with their segment.
    pub fn bad_indexes(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s.index, IndexStatus::Invalid(_)))
            .count()
    }

    /// True if nothing is corrupt.
    pub fn is_clean(&self) -> bool {
        self.bad_records() == 0 && self.bad_indexes() == 0
    }
}

/// Compares an index file's rows with the rows its segment calls for.
fn check_index(rows: &[SidecarRow], scan: &SegmentScan) -> std::result::Result<(), String> {
    if rows.len() != scan.rows.len() {
        return Err(format!(
            "{} rows, the segment has {} valid records",
            rows.len(),
            scan.rows.len()
        ));
    }
    for (i, (row, want)) in rows.iter().zip(&scan.rows).enumerate() {
        if row.header != want.header || row.pos != want.pos {
            return Err(format!(
                "row {i} (position {}) does not match the record at {}",
                row.pos, want.pos
            ));
        }
        if row.header.kind == RecordKind::Data && (row.aux_a, row.aux_b) != (want.aux_a, want.aux_b)
        {
            return Err(format!(
                "row {i}: offset count {} and max timestamp {} differ from the batch's {} and {}",
                row.aux_a, row.aux_b as i64, want.aux_a, want.aux_b as i64
            ));
        }
    }
    Ok(())
}

/// Verifies one shard directory: every segment and its index file.
pub fn verify_shard(dir: &Path) -> Result<ShardReport> {
    let listing = std::fs::read_dir(dir).map_err(|e| CtlError::io("list", dir, e))?;
    let mut logs = Vec::new();
    let mut idxs = Vec::new();
    for item in listing {
        let item = item.map_err(|e| CtlError::io("list", dir, e))?;
        let path = item.path();
        let Some(seq) = seq_from_path(&path) else {
            continue;
        };
        match path.extension().and_then(|e| e.to_str()) {
            Some("log") => logs.push((seq, path)),
            Some("idx") => idxs.push((seq, path)),
            _ => {}
        }
    }
    logs.sort();
    let mut segments = Vec::new();
    for (seq, path) in &logs {
        let bytes = read_file(path)?;
        let scan = scan_segment(&bytes, *seq);
        let idx_path = path.with_extension("idx");
        let index = match std::fs::read(&idx_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => IndexStatus::Missing,
            Err(e) => return Err(CtlError::io("read", idx_path, e)),
            Ok(idx) => match sidecar::decode(&idx, *seq) {
                Err(error) => IndexStatus::Invalid(error.to_string()),
                Ok(rows) => match check_index(&rows, &scan) {
                    Ok(()) => IndexStatus::Valid,
                    Err(why) => IndexStatus::Invalid(why),
                },
            },
        };
        segments.push(SegmentReport {
            path: path.clone(),
            records: scan.records.len(),
            invalid: scan.invalid,
            index,
        });
    }
    let mut orphan_indexes: Vec<PathBuf> = idxs
        .into_iter()
        .filter(|(seq, _)| !logs.iter().any(|(s, _)| s == seq))
        .map(|(_, p)| p)
        .collect();
    orphan_indexes.sort();
    Ok(ShardReport {
        dir: dir.to_owned(),
        segments,
        orphan_indexes,
    })
}

/// Every `shard-*` directory of a data directory, sorted.
pub fn shard_dirs(data_dir: &Path) -> Result<Vec<PathBuf>> {
    let listing = std::fs::read_dir(data_dir).map_err(|e| CtlError::io("list", data_dir, e))?;
    let mut dirs = Vec::new();
    for item in listing {
        let item = item.map_err(|e| CtlError::io("list", data_dir, e))?;
        let name = item.file_name();
        if name.to_string_lossy().starts_with("shard-") && item.path().is_dir() {
            dirs.push(item.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// `log verify DATA_DIR`: verifies every shard, writes a report, and fails
/// if anything is corrupt.
pub fn verify(data_dir: &Path, out: &mut impl Write) -> Result<()> {
    let dirs = shard_dirs(data_dir)?;
    if dirs.is_empty() {
        return Err(CtlError::Corrupt(format!(
            "{} has no shard-* directory",
            data_dir.display()
        )));
    }
    let mut corrupt_shards = 0;
    for dir in &dirs {
        let report = verify_shard(dir)?;
        let name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        for segment in &report.segments {
            let file = segment
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(invalid) = &segment.invalid {
                write_out(out, format_args!("{name}/{file}: {invalid}"))?;
            }
            if let IndexStatus::Invalid(why) = &segment.index {
                write_out(
                    out,
                    format_args!("{name}/{file}: index file invalid: {why}"),
                )?;
            }
        }
        for orphan in &report.orphan_indexes {
            write_out(
                out,
                format_args!("{name}: index file {} has no segment", orphan.display()),
            )?;
        }
        let indexed = report
            .segments
            .iter()
            .filter(|s| s.index == IndexStatus::Valid)
            .count();
        write_out(
            out,
            format_args!(
                "{name}: segments={} records={} bad_records={} indexes_valid={indexed} indexes_bad={} {}",
                report.segments.len(),
                report.records(),
                report.bad_records(),
                report.bad_indexes(),
                if report.is_clean() { "OK" } else { "CORRUPT" }
            ),
        )?;
        if !report.is_clean() {
            corrupt_shards += 1;
        }
    }
    if corrupt_shards > 0 {
        return Err(CtlError::Corrupt(format!(
            "{corrupt_shards} of {} shards in {} are corrupt",
            dirs.len(),
            data_dir.display()
        )));
    }
    Ok(())
}
