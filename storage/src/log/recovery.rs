//! `ShardLog::open`: recovery from the index files of sealed segments and a
//! scan of the segments without one.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use event_listener::Event;
use glommio::io::{DmaFile, OpenOptions, ReadResult};
use shardmq_schema::batch::{self, RecordBatchView};

use crate::error::{Result, StorageError};
use crate::record::{
    chain_seed, payload_u64, CheckpointRow, HeaderError, RecordHeader, RecordKind,
    RECORD_HEADER_BYTES,
};
use crate::replay::{RecordBody, Replay, Scanned};
use crate::sidecar::{self, SidecarRow};
use crate::stats::Stats;

use super::segments::reuse_segment_file;
use super::*;

/// Reads the offset count and max timestamp of a data payload (already
/// validated by the caller).
fn batch_facts(payload: &[u8]) -> std::result::Result<(u32, i64), batch::BatchError> {
    let view = RecordBatchView::parse(payload)?;
    Ok((view.offset_count(), view.max_timestamp()))
}

impl ShardLog {
    /// Opens (or creates) the log in `cfg.dir`, recovers every partition and
    /// starts a fresh active segment. Must run on the shard that will own it.
    pub async fn open(cfg: LogConfig) -> Result<(ShardLog, RecoveryReport)> {
        cfg.validate()?;
        let started = Instant::now();
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| StorageError::io("create dir", &cfg.dir, e))?;
        let mut seqs = Vec::new();
        let mut free = Vec::new();
        let listing =
            std::fs::read_dir(&cfg.dir).map_err(|e| StorageError::io("list dir", &cfg.dir, e))?;
        for item in listing {
            let item = item.map_err(|e| StorageError::io("list dir", &cfg.dir, e))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".log") {
                if let Ok(seq) = stem.parse::<u32>() {
                    seqs.push(seq);
                }
            } else if let Some(stem) = name.strip_suffix(FREE_SUFFIX) {
                if let Ok(seq) = stem.parse::<u32>() {
                    free.push(seq);
                }
            } else if name.ends_with(PREPARE_SUFFIX) {
                // A segment that was being prepared when the process
                // stopped: it never held records.
                let path = item.path();
                std::fs::remove_file(&path)
                    .map_err(|e| StorageError::io("remove prepared segment", &path, e))?;
            }
        }
        seqs.sort_unstable();
        free.sort_unstable();
        // Every seq a record ever carried is in a segment's name or a
        // recycled file's: the next segment's seq is above all of them, so
        // no old record in a recycled file can ever claim to belong to it.
        let seq_max = seqs.iter().chain(&free).max().copied();
        while free.len() > cfg.recycle_segments_max {
            let path = free_path(&cfg.dir, free.remove(0));
            std::fs::remove_file(&path)
                .map_err(|e| StorageError::io("delete recycled segment", &path, e))?;
        }
        let mut free_segments: VecDeque<u32> = free.into();
        probe_device(&cfg.dir).await?;

        let mut report = RecoveryReport {
            segments: seqs.len(),
            ..Default::default()
        };
        let mut stats = Stats::default();
        let mut replay = Replay::default();
        let mut segments = BTreeMap::new();
        let last_seq = seqs.last().copied();
        for &seq in &seqs {
            let path = segment_path(&cfg.dir, seq);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(&path)
                .await
                .map_err(|e| StorageError::glommio("open segment", &path, e))?;
            if BLOCK_BYTES % file.alignment() != 0 {
                return Err(StorageError::InvalidArgument(format!(
                    "{} needs {}-byte alignment, more than {BLOCK_BYTES}",
                    path.display(),
                    file.alignment()
                )));
            }
            let file = Rc::new(file);
            let idx_path = sidecar_path(&cfg.dir, seq);
            let sidecar_bytes = std::fs::read(&idx_path).ok();
            let sidecar_existed = sidecar_bytes.is_some();
            let from_sidecar = sidecar_bytes.and_then(|bytes| sidecar::decode(&bytes, seq).ok());
            let (records, end) = match from_sidecar {
                Some(rows) => {
                    let end = rows
                        .last()
                        .map(|r| {
                            r.pos + RECORD_HEADER_BYTES as u64 + u64::from(r.header.payload_len)
                        })
                        .unwrap_or(0);
                    (records_from_rows(&file, &path, seq, &rows).await?, end)
                }
                None => {
                    let scan = scan_segment(&file, &path, seq).await?;
                    if scan.corrupt_at.is_some() {
                        stats.corruptions += 1;
                    }
                    if Some(seq) == last_seq {
                        // Only what looked written counts as cut; the
                        // preallocated zeros after it are not a loss.
                        report.tail_bytes_discarded = scan.nonzero_tail_bytes;
                    }
                    // The newest segment has no index after a crash; any
                    // other missing or invalid index is a rebuild.
                    if sidecar_existed || Some(seq) != last_seq {
                        report.indexes_rebuilt += 1;
                    }
                    // The segment is sealed from here on (this open starts a
                    // new one), so its index is final.
                    write_sidecar(&idx_path, seq, &scan.rows, true)?;
                    (scan.records, scan.end)
                }
            };
            for rec in &records {
                replay.apply(rec);
            }
            segments.insert(
                seq,
                Segment {
                    path,
                    file,
                    writer: None,
                    live_bytes: 0,
                    end,
                    sealed: true,
                },
            );
        }

        let mut parts = HashMap::new();
        for p in replay.finish() {
            let mut part = Partition {
                first_index: p.first_index,
                term_before_first: p.term_before_first,
                first_offset: p.first_offset,
                next_offset: p.first_offset,
                hard: p.hard,
                entries: VecDeque::with_capacity(p.entries.len()),
                bytes: 0,
                corrupt: p.corrupt.clone(),
            };
            for e in p.entries {
                if let Some(seg) = segments.get_mut(&e.segment_seq) {
                    seg.live_bytes += e.record_bytes();
                }
                part.bytes += e.record_bytes();
                part.next_offset = e.base_offset + u64::from(e.offset_count);
                part.entries.push_back(e);
            }
            report.entries += part.entries.len() as u64;
            if let Some(why) = p.corrupt {
                stats.corruptions += 1;
                report.corrupt_partitions.push((p.id, why));
            }
            parts.insert(p.id, part);
        }
        report.partitions = parts.len();

        // Every open starts a new segment: the recovered newest segment is
        // sealed where its valid records end, and the new one begins with a
        // checkpoint, as every segment does.
        let next_seq = seq_max.map_or(1, |s| s + 1);
        let (file, path) = match free_segments.pop_front() {
            Some(old) => {
                stats.segments_reused += 1;
                reuse_segment_file(&cfg, old, next_seq).await?
            }
            None => {
                let (file, path) = create_segment(&cfg, next_seq).await?;
                if cfg.prezero_bytes_per_sec > 0 {
                    // The first segment is zeroed now, unthrottled; later
                    // ones are prepared while the one before fills.
                    zero_fill_now(&file, &path, cfg.segment_bytes).await?;
                }
                (file, path)
            }
        };
        let writer = open_writer(&cfg, &path).await?;
        segments.insert(
            next_seq,
            Segment {
                path,
                file,
                writer,
                live_bytes: 0,
                end: 0,
                sealed: false,
            },
        );
        let staging = Staging::new(&cfg, 0);
        let inner = Inner {
            cfg,
            parts,
            segments,
            active_seq: next_seq,
            staging,
            staging_pool: Vec::new(),
            prev_crc: chain_seed(next_seq),
            active_rows: Vec::new(),
            appended_lsn: 0,
            durable_lsn: 0,
            written_end: 0,
            written_lsn: 0,
            writing: false,
            syncing: false,
            busy_at_last_write: false,
            rolling: false,
            free_segments,
            prepared: None,
            sidecar_writes: BTreeMap::new(),
            space_queue: BTreeMap::new(),
            space_tickets: 0,
            poisoned: None,
            stats,
        };
        let log = ShardLog {
            shared: Rc::new(Shared {
                inner: RefCell::new(inner),
                changed: Event::new(),
                closed: Cell::new(false),
            }),
        };
        log.write_checkpoint()?;
        log.sync().await?;
        log.prepare_next();
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok((log, report))
    }
}

/// glommio decides once per block device, on the first file it opens there,
/// whether reads may go through the polled ring, by reading that file's first
/// block. When that file is empty the read ends at EOF without reaching the
/// device and the device is wrongly taken as pollable; every later read then
/// fails with EOPNOTSUPP on devices without polled I/O (virtio, most cloud
/// disks). Opening a file whose first block is really on disk first makes the
/// probe reach the device and answer right.
async fn probe_device(dir: &Path) -> Result<()> {
    let path = dir.join(".io-probe");
    std::fs::write(&path, [0x5a_u8; BLOCK_BYTES as usize])
        .and_then(|_| std::fs::File::open(&path)?.sync_all())
        .map_err(|e| StorageError::io("write probe file", &path, e))?;
    let file = DmaFile::open(&path)
        .await
        .map_err(|e| StorageError::glommio("open probe file", &path, e))?;
    let _ = file.close().await;
    std::fs::remove_file(&path).map_err(|e| StorageError::io("remove probe file", &path, e))
}

/// Rebuilds replay records from a sidecar; checkpoint payloads are read from
/// the segment.
async fn records_from_rows(
    file: &DmaFile,
    path: &Path,
    seq: u32,
    rows: &[SidecarRow],
) -> Result<Vec<Scanned>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let h = r.header;
        let body = match h.kind {
            RecordKind::Data | RecordKind::ConfChange | RecordKind::Empty => RecordBody::Entry {
                offset_count: r.aux_a as u32,
                max_timestamp: r.aux_b as i64,
            },
            RecordKind::Truncate => RecordBody::Truncate,
            RecordKind::Compact => RecordBody::Compact {
                first_offset: r.aux_a,
            },
            RecordKind::HardState => RecordBody::HardState { vote: r.aux_a },
            RecordKind::RemovePartition => RecordBody::RemovePartition,
            RecordKind::Checkpoint => {
                let at = r.pos + RECORD_HEADER_BYTES as u64;
                let bytes = file
                    .read_at(at, h.payload_len as usize)
                    .await
                    .map_err(|e| StorageError::glommio("read checkpoint", path, e))?;
                if bytes.len() != h.payload_len as usize || crc32c::crc32c(&bytes) != h.payload_crc
                {
                    return Err(StorageError::Corrupt {
                        path: path.to_owned(),
                        pos: r.pos,
                        what: "checkpoint payload".into(),
                    });
                }
                RecordBody::Checkpoint(CheckpointRow::decode_all(&bytes).ok_or_else(|| {
                    StorageError::Corrupt {
                        path: path.to_owned(),
                        pos: r.pos,
                        what: "checkpoint length".into(),
                    }
                })?)
            }
        };
        out.push(Scanned {
            segment_seq: seq,
            pos: r.pos as u32,
            header: h,
            body,
        });
    }
    Ok(out)
}

struct ScanResult {
    records: Vec<Scanned>,
    rows: Vec<SidecarRow>,
    /// End of the last valid record.
    end: u64,
    /// Where the scan stopped on something that was neither valid nor zero.
    corrupt_at: Option<u64>,
    /// Bytes after `end` up to the last nonzero byte of the block that ended
    /// the scan (what a crash left half-written).
    nonzero_tail_bytes: u64,
}

/// Scans a segment from byte 0, stopping at the first record that is torn,
/// zero, corrupt, out of chain or from another segment.
async fn scan_segment(file: &DmaFile, path: &Path, seq: u32) -> Result<ScanResult> {
    let file_len = file
        .file_size()
        .await
        .map_err(|e| StorageError::glommio("stat segment", path, e))?;
    let mut records = Vec::new();
    let mut rows = Vec::new();
    let mut pos = 0u64;
    let mut prev = chain_seed(seq);
    let mut window: ReadResult = ReadResult::default();
    let mut window_start = 0u64;
    let mut corrupt_at = None;
    // The scan stopped at a whole record of an earlier life of a recycled
    // file: the clean end of this segment's records, not damage.
    let mut stale = false;
    let read = |at: u64, len: usize| async move {
        file.read_at(at, len)
            .await
            .map_err(|e| StorageError::glommio("scan segment", path, e))
    };
    loop {
        if pos + RECORD_HEADER_BYTES as u64 > file_len {
            break;
        }
        if pos + RECORD_HEADER_BYTES as u64 > window_start + window.len() as u64 {
            window = read(pos, SCAN_CHUNK_BYTES).await?;
            window_start = pos;
        }
        let off = (pos - window_start) as usize;
        let h = match RecordHeader::decode(&window[off..]) {
            Ok(h) => h,
            Err(HeaderError::Zero) => break,
            Err(_) => {
                corrupt_at = Some(pos);
                break;
            }
        };
        if h.segment_seq < seq {
            stale = true;
            break;
        }
        if h.segment_seq != seq || h.prev_header_crc != prev {
            corrupt_at = Some(pos);
            break;
        }
        let total = RECORD_HEADER_BYTES as u64 + u64::from(h.payload_len);
        if pos + total > file_len {
            corrupt_at = Some(pos);
            break;
        }
        if pos + total > window_start + window.len() as u64 {
            window = read(pos, (total as usize).max(SCAN_CHUNK_BYTES)).await?;
            window_start = pos;
        }
        let off = (pos - window_start) as usize + RECORD_HEADER_BYTES;
        let payload = &window[off..off + h.payload_len as usize];
        if crc32c::crc32c(payload) != h.payload_crc {
            corrupt_at = Some(pos);
            break;
        }
        let (body, aux_a, aux_b) = match h.kind {
            RecordKind::Data => match batch_facts(payload) {
                Ok((count, ts)) => (
                    RecordBody::Entry {
                        offset_count: count,
                        max_timestamp: ts,
                    },
                    u64::from(count),
                    ts as u64,
                ),
                Err(_) => {
                    corrupt_at = Some(pos);
                    break;
                }
            },
            RecordKind::ConfChange | RecordKind::Empty => (
                RecordBody::Entry {
                    offset_count: 0,
                    max_timestamp: i64::MIN,
                },
                0,
                i64::MIN as u64,
            ),
            RecordKind::Truncate => (RecordBody::Truncate, 0, 0),
            RecordKind::Compact => {
                let v = payload_u64(payload).unwrap_or(0);
                (RecordBody::Compact { first_offset: v }, v, 0)
            }
            RecordKind::HardState => {
                let v = payload_u64(payload).unwrap_or(0);
                (RecordBody::HardState { vote: v }, v, 0)
            }
            RecordKind::RemovePartition => (RecordBody::RemovePartition, 0, 0),
            RecordKind::Checkpoint => match CheckpointRow::decode_all(payload) {
                Some(rows) => (RecordBody::Checkpoint(rows), 0, 0),
                None => {
                    corrupt_at = Some(pos);
                    break;
                }
            },
        };
        records.push(Scanned {
            segment_seq: seq,
            pos: pos as u32,
            header: h,
            body,
        });
        rows.push(SidecarRow {
            header: h,
            pos,
            aux_a,
            aux_b,
        });
        prev = h.header_crc;
        pos += total;
    }
    let nonzero_tail_bytes = if pos < file_len && !stale {
        let block_end = align_up(pos + 1).min(file_len);
        let tail = read(pos, (block_end - pos) as usize).await?;
        tail.iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i as u64 + 1)
    } else {
        0
    };
    Ok(ScanResult {
        records,
        rows,
        end: pos,
        corrupt_at,
        nonzero_tail_bytes,
    })
}
