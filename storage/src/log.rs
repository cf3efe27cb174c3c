//! The shard log: one shared segmented log per shard, written by one
//! group-commit writer, read per partition through in-memory entry tables.
//!
//! Hot path (append, sync, read): no allocation and no syscall per record;
//! one aligned O_DIRECT write and one fdatasync per sync round.
//!
//! Files in the log directory:
//! - `<seq>.log`: a segment, preallocated to `segment_bytes`, records packed
//!   back to back from byte 0 (see `record`); its first record is a
//!   checkpoint of every partition.
//! - `<seq>.idx`: the index file of a sealed segment (see `sidecar`).
//!
//! Write path. Appends are encoded straight into an aligned staging buffer
//! that mirrors the segment from the block holding its current end. A sync
//! round takes the buffer, writes it at its aligned position (the partial
//! tail block is written again, padded with zeros, each round), then
//! fdatasyncs the segment. Appends made while a round is in flight land in the
//! next buffer, which starts with a copy of the tail block: one round covers
//! every append that came before it started, whatever its partition.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use event_listener::Event;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use shardmq_schema::batch::{self, RecordBatchView};

use crate::error::{PartitionId, Result, StorageError};
use crate::record::{
    chain_seed, payload_u64, CheckpointRow, HeaderError, RecordHeader, RecordKind,
    CHECKPOINT_ROW_BYTES, RECORD_FLAG_REWRITE, RECORD_HEADER_BYTES,
};
use crate::replay::{RecordBody, Replay, Scanned};
use crate::sidecar::{self, SidecarRow};
use crate::stats::{Stats, StatsSnapshot};
use crate::{EntryLoc, HardState};

/// O_DIRECT alignment used for every write. 4096 covers every device we run
/// on; glommio reports the file's own alignment and we check it is a divisor.
const BLOCK_BYTES: u64 = 4096;
/// Bytes read per call while scanning a segment on recovery.
const SCAN_CHUNK_BYTES: usize = 4 << 20;
/// Segments are addressed with u32 positions.
const SEGMENT_BYTES_LIMIT: u64 = u32::MAX as u64;
/// Smallest staging buffer a sync round starts (capped by
/// `write_buffer_bytes`).
const STAGING_MIN_BYTES: usize = 64 << 10;
const _: () = assert!(SCAN_CHUNK_BYTES as u64 % BLOCK_BYTES == 0);

/// Shard log configuration. Every field has a default; see `configs/`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Directory holding this shard's segments (created if missing).
    pub dir: PathBuf,
    /// Size of a segment file; a record that would cross it rolls to a new
    /// segment. Default 256 MiB.
    pub segment_bytes: u64,
    /// Size of the staging buffer a sync round writes at most. Larger rounds
    /// mean fewer fdatasync calls per byte under load; the buffer only grows
    /// to this size when rounds need it. Default 16 MiB.
    pub write_buffer_bytes: usize,
    /// Largest payload of one entry. Default 16 MiB.
    pub entry_bytes_max: usize,
    /// Preallocate segment files with fallocate. Default true.
    pub preallocate: bool,
    /// The collector rewrites the live entries of a sealed segment whose
    /// live bytes are at most this fraction of it, then deletes it.
    /// Default 0.5.
    pub gc_live_ratio_max: f64,
    /// Write zeros through every segment before it takes records, at most
    /// this many bytes per second (0: never). An fdatasync after a write
    /// into blocks written once before has no extent conversion to journal;
    /// on the reference disk it made 4 KiB synced appends several times
    /// faster. The segment opened by `open` is zeroed at once; each next
    /// one is prepared in the background while the current one fills, and
    /// a roll that comes first takes it as far as it got. Default 64 MiB/s.
    pub prezero_bytes_per_sec: u64,
    /// How a sync round makes its appends durable. Default
    /// [`SyncMode::Pipelined`].
    pub sync_mode: SyncMode,
}

/// How the group-commit rounds of a shard log make appends durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// Each round is an O_DIRECT write, then an fdatasync; the next round's
    /// write runs during this round's fdatasync.
    #[default]
    Pipelined,
    /// Each round is one write through a handle opened with `O_DSYNC`:
    /// durable when it completes, with no fdatasync after it (the device
    /// flushes or writes through as part of the write). Rounds do not
    /// overlap (there is no separate sync stage to overlap with). On the
    /// reference disk a durable 4 KiB write this way took about half of a
    /// write followed by an fdatasync.
    WriteThrough,
    /// A round is written through only when the log is idle: everything
    /// written before is durable, no fdatasync runs, and no append arrived
    /// while the previous round was being written. Other rounds are
    /// pipelined. A lone record then costs one durable write, and a busy
    /// log keeps its overlapping rounds.
    Adaptive,
}

impl LogConfig {
    /// Defaults for a log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            dir: dir.into(),
            segment_bytes: 256 << 20,
            write_buffer_bytes: 16 << 20,
            entry_bytes_max: 16 << 20,
            preallocate: true,
            gc_live_ratio_max: 0.5,
            prezero_bytes_per_sec: 64 << 20,
            sync_mode: SyncMode::Pipelined,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(StorageError::InvalidArgument(what));
        if self.segment_bytes % BLOCK_BYTES != 0 || self.segment_bytes < 64 * 1024 {
            return bad(format!(
                "segment_bytes {} must be a multiple of {BLOCK_BYTES} and at least 64 KiB",
                self.segment_bytes
            ));
        }
        if self.segment_bytes > SEGMENT_BYTES_LIMIT {
            return bad(format!(
                "segment_bytes {} exceeds 4 GiB",
                self.segment_bytes
            ));
        }
        if self.write_buffer_bytes % BLOCK_BYTES as usize != 0
            || self.write_buffer_bytes < 2 * BLOCK_BYTES as usize
        {
            return bad(format!(
                "write_buffer_bytes {} must be a multiple of {BLOCK_BYTES} and at least two blocks",
                self.write_buffer_bytes
            ));
        }
        // An entry must fit in a segment next to the segment's checkpoint.
        if self.entry_bytes_max as u64 > self.segment_bytes / 2 {
            return bad(format!(
                "entry_bytes_max {} must be at most half of segment_bytes {}",
                self.entry_bytes_max, self.segment_bytes
            ));
        }
        if !(0.0..=1.0).contains(&self.gc_live_ratio_max) {
            return bad(format!(
                "gc_live_ratio_max {} must be within 0..=1",
                self.gc_live_ratio_max
            ));
        }
        Ok(())
    }
}

/// The kinds of Raft entry the log stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Payload is a record batch; consumes `lastOffsetDelta + 1` offsets.
    Data,
    /// Raft configuration change; opaque payload.
    ConfChange,
    /// Empty entry (a new leader's no-op).
    Empty,
}

impl EntryKind {
    fn record_kind(self) -> RecordKind {
        match self {
            EntryKind::Data => RecordKind::Data,
            EntryKind::ConfChange => RecordKind::ConfChange,
            EntryKind::Empty => RecordKind::Empty,
        }
    }

    fn from_record(kind: RecordKind) -> Self {
        match kind {
            RecordKind::Data => EntryKind::Data,
            RecordKind::ConfChange => EntryKind::ConfChange,
            _ => EntryKind::Empty,
        }
    }
}

/// One entry to append.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    pub payload: &'a [u8],
}

/// What an append assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Base offset given to the first data entry (or the next offset when the
    /// append held none).
    pub base_offset: u64,
    /// The partition's next offset after the append.
    pub next_offset: u64,
    /// Index of the last entry appended.
    pub last_index: u64,
}

/// A Raft entry read back. `payload` borrows the read buffer (zero-copy).
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    pub payload: ReadResult,
}

/// A record batch read by offset. `bytes` borrows the read buffer.
#[derive(Debug, Clone)]
pub struct FetchedBatch {
    pub index: u64,
    pub base_offset: u64,
    /// Offsets covered: `base_offset..base_offset + offset_count`.
    pub offset_count: u32,
    pub bytes: ReadResult,
}

/// Per-partition retention.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetentionPolicy {
    /// Keep at most this many bytes of entries (oldest dropped first).
    pub bytes_max: Option<u64>,
    /// Drop entries whose newest record is older than this.
    pub age_max_ms: Option<u64>,
}

/// What a collector pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub segments_deleted: u64,
    pub entries_rewritten: u64,
    pub bytes_freed: u64,
}

/// What recovery found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub partitions: usize,
    pub entries: u64,
    /// Sealed segments whose index file was missing or invalid and was
    /// rebuilt by scanning.
    pub indexes_rebuilt: usize,
    /// Bytes cut from the tail of the newest segment (torn or unsynced).
    pub tail_bytes_discarded: u64,
    /// Partitions that cannot serve (entries lost to corruption).
    pub corrupt_partitions: Vec<(PartitionId, String)>,
    pub elapsed_ms: u64,
}

/// One partition's entry table. Shard view; owned by the shard's log.
#[derive(Debug)]
struct Partition {
    first_index: u64,
    term_before_first: u64,
    /// Offset of the first entry (log start offset).
    first_offset: u64,
    next_offset: u64,
    hard: HardState,
    entries: VecDeque<EntryLoc>,
    bytes: u64,
    corrupt: Option<String>,
}

impl Partition {
    fn empty() -> Self {
        Partition {
            first_index: 1,
            term_before_first: 0,
            first_offset: 0,
            next_offset: 0,
            hard: HardState::default(),
            entries: VecDeque::new(),
            bytes: 0,
            corrupt: None,
        }
    }

    fn last_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64 - 1
    }

    fn entry(&self, index: u64) -> Option<&EntryLoc> {
        index
            .checked_sub(self.first_index)
            .and_then(|i| self.entries.get(i as usize))
    }

    fn checkpoint_row(&self, id: PartitionId) -> CheckpointRow {
        CheckpointRow {
            partition: id,
            first_index: self.first_index,
            term_before_first: self.term_before_first,
            last_index: self.last_index(),
            first_offset: self.first_offset,
            hard_term: self.hard.term,
            hard_vote: self.hard.vote,
            hard_commit: self.hard.commit,
        }
    }
}

/// A `reserve` call's place in the queue of calls that had to wait for
/// staging-buffer space. A call takes space only beyond what the calls
/// queued before it want, so space goes to waiters in arrival order.
/// Without this, the writers that run first after a round (the round's own
/// syncers, appending again at once) refill the buffer every round, and a
/// writer that waited can lose every round until a roll reshuffles the
/// order: seconds, with 8 writers of 1 MiB and a 2 or 4 MiB buffer.
struct SpaceWaiter<'a> {
    shared: &'a Shared,
    len: usize,
    ticket: Option<u64>,
}

impl SpaceWaiter<'_> {
    /// Bytes this call must leave free for the calls queued before it.
    fn set_aside(&self, inner: &Inner) -> usize {
        match self.ticket {
            Some(t) => inner.space_queue.range(..t).map(|(_, len)| len).sum(),
            None => inner.space_queue.values().sum(),
        }
    }

    fn enqueue(&mut self, inner: &mut Inner) {
        if self.ticket.is_none() {
            let t = inner.space_tickets;
            inner.space_tickets += 1;
            inner.space_queue.insert(t, self.len);
            self.ticket = Some(t);
        }
    }

    /// Leaves the queue (if in it) and wakes the calls waiting behind it.
    fn leave(&mut self, inner: &mut Inner) {
        if let Some(t) = self.ticket.take() {
            inner.space_queue.remove(&t);
            self.shared.changed.notify(usize::MAX);
        }
    }
}

impl Drop for SpaceWaiter<'_> {
    /// A call that failed or was cancelled while queued leaves the queue.
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let shared = self.shared;
            self.leave(&mut shared.inner.borrow_mut());
        }
    }
}

/// A segment file. Shard view.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: Rc<DmaFile>,
    /// The `O_DSYNC` handle rounds write through while this is the active
    /// segment of a write-through log.
    writer: Option<Rc<DmaFile>>,
    /// Bytes of live Raft entries (headers included) still referenced.
    live_bytes: u64,
    /// End of the last record.
    end: u64,
    sealed: bool,
}

/// The staging buffer of the active segment.
struct Staging {
    buf: DmaBuffer,
    /// Aligned file position of `buf[0]`.
    base: u64,
    /// Valid bytes in `buf`.
    fill: usize,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("capacity", &self.buf.len())
            .field("base", &self.base)
            .field("fill", &self.fill)
            .finish()
    }
}

/// What the writer stamps into a data entry's batch in the staging copy:
/// base offset and leader epoch (the Raft term), and the batch's crc as
/// `check_entry` verified it.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    base_offset: i64,
    epoch: i32,
    batch_crc: u32,
}

#[derive(Debug)]
struct Inner {
    cfg: LogConfig,
    parts: HashMap<PartitionId, Partition>,
    segments: BTreeMap<u32, Segment>,
    active_seq: u32,
    staging: Staging,
    /// Chain link for the next record of the active segment.
    prev_crc: u32,
    /// Index rows of the active segment, written out when it is sealed.
    active_rows: Vec<SidecarRow>,
    /// Bytes appended / made durable since open (a logical sequence number).
    appended_lsn: u64,
    durable_lsn: u64,
    /// File position of the active segment up to which bytes are on disk.
    written_end: u64,
    /// Bytes written to the active segment (not yet all durable).
    written_lsn: u64,
    /// A write stage is running (at most one at a time).
    writing: bool,
    /// An fdatasync stage is running (at most one at a time). It may run
    /// while the next round's write does: rounds are pipelined.
    syncing: bool,
    /// Appends arrived while the last write stage ran (the log is busy; see
    /// `SyncMode::Adaptive`).
    busy_at_last_write: bool,
    rolling: bool,
    /// The next segment, being zeroed in the background.
    prepared: Option<Prepared>,
    /// `reserve` calls waiting for staging-buffer space: ticket → bytes
    /// wanted (see `SpaceWaiter`).
    space_queue: BTreeMap<u64, usize>,
    space_tickets: u64,
    poisoned: Option<String>,
    stats: Stats,
}

#[derive(Debug)]
struct Shared {
    inner: RefCell<Inner>,
    /// Signalled when a sync round or a roll ends.
    changed: Event,
    closed: Cell<bool>,
}

/// The log of one shard. Cheap to clone; all clones are the same log.
/// `!Send`: owned by the shard (glommio executor) that opened it.
#[derive(Debug, Clone)]
pub struct ShardLog {
    shared: Rc<Shared>,
}

fn align_down(v: u64) -> u64 {
    v / BLOCK_BYTES * BLOCK_BYTES
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

fn segment_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}.log"))
}

fn sidecar_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}.idx"))
}

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
            } else if name.ends_with(PREPARE_SUFFIX) {
                // A segment that was being prepared when the process
                // stopped: it never held records.
                let path = item.path();
                std::fs::remove_file(&path)
                    .map_err(|e| StorageError::io("remove prepared segment", &path, e))?;
            }
        }
        seqs.sort_unstable();
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
                    write_sidecar(&idx_path, seq, &scan.rows)?;
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
        let next_seq = last_seq.map_or(1, |s| s + 1);
        let (file, path) = create_segment(&cfg, next_seq).await?;
        if cfg.prezero_bytes_per_sec > 0 {
            // The first segment is zeroed now, unthrottled; later ones are
            // prepared while the one before fills.
            zero_fill_now(&file, &path, cfg.segment_bytes).await?;
        }
        let staging_buf = file.alloc_dma_buffer(cfg.write_buffer_bytes);
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
        let inner = Inner {
            cfg,
            parts,
            segments,
            active_seq: next_seq,
            staging: Staging {
                buf: staging_buf,
                base: 0,
                fill: 0,
            },
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
            prepared: None,
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

    // ----- partitions -------------------------------------------------------

    /// Creates an empty partition (first index 1, offset 0). Durable after
    /// the next sync. Creating an existing partition is a no-op.
    pub async fn create_partition(&self, id: PartitionId) -> Result<()> {
        if self.shared.inner.borrow().parts.contains_key(&id) {
            return Ok(());
        }
        self.reserve(RECORD_HEADER_BYTES + 8).await?;
        let mut inner = self.shared.inner.borrow_mut();
        if inner.parts.contains_key(&id) {
            return Ok(());
        }
        inner.parts.insert(id, Partition::empty());
        inner.encode_record(
            RecordKind::Compact,
            0,
            id,
            1,
            0,
            &[&0u64.to_le_bytes()],
            (0, 0),
            None,
        );
        Ok(())
    }

    /// Deletes a partition and all its entries. Durable after the next sync;
    /// the space comes back when the collector deletes the segments.
    pub async fn remove_partition(&self, id: PartitionId) -> Result<()> {
        self.reserve(RECORD_HEADER_BYTES).await?;
        let mut inner = self.shared.inner.borrow_mut();
        let part = inner
            .parts
            .remove(&id)
            .ok_or(StorageError::UnknownPartition(id))?;
        for e in &part.entries {
            inner.release(e);
        }
        inner.encode_record(RecordKind::RemovePartition, 0, id, 0, 0, &[], (0, 0), None);
        Ok(())
    }

    /// The partitions in this log, sorted.
    pub fn partitions(&self) -> Vec<PartitionId> {
        let mut ids: Vec<_> = self.shared.inner.borrow().parts.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    // ----- writes -----------------------------------------------------------

    /// Appends Raft entries to a partition. The first entry's index may be at
    /// most `last_index + 1`; an index inside the log replaces that entry and
    /// everything after it (Raft's conflict rule). Data payloads must be
    /// valid record batches (crc checked); storage stamps their base offset
    /// and term. Durable after the next [`sync`](Self::sync).
    pub async fn append(&self, id: PartitionId, entries: &[EntryRef<'_>]) -> Result<AppendOutcome> {
        let mut outcome: Option<AppendOutcome> = None;
        for (i, e) in entries.iter().enumerate() {
            if i > 0 && e.index != entries[i - 1].index + 1 {
                return Err(StorageError::InvalidArgument(format!(
                    "partition {id}: entries not consecutive ({} after {})",
                    e.index,
                    entries[i - 1].index
                )));
            }
            let (facts, batch_crc) = self.check_entry(id, e)?;
            self.reserve(RECORD_HEADER_BYTES + e.payload.len()).await?;
            let mut inner = self.shared.inner.borrow_mut();
            let o = inner.append_entry(id, e, facts, batch_crc, 0)?;
            outcome = Some(match outcome {
                None => o,
                Some(prev) => AppendOutcome {
                    base_offset: prev.base_offset,
                    ..o
                },
            });
        }
        match outcome {
            Some(o) => Ok(o),
            None => {
                let inner = self.shared.inner.borrow();
                let p = inner.part(id)?;
                Ok(AppendOutcome {
                    base_offset: p.next_offset,
                    next_offset: p.next_offset,
                    last_index: p.last_index(),
                })
            }
        }
    }

    /// Checks an entry before it is appended: its size, and for a data entry
    /// the record batch, crc included. Returns the batch facts (offset
    /// count, max timestamp) and, for a data entry, the batch's verified crc.
    fn check_entry(&self, id: PartitionId, e: &EntryRef<'_>) -> Result<((u32, i64), Option<u32>)> {
        let max = self.shared.inner.borrow().cfg.entry_bytes_max;
        if e.payload.len() > max {
            return Err(StorageError::InvalidArgument(format!(
                "partition {id}: entry {} is {} bytes, more than entry_bytes_max {max}",
                e.index,
                e.payload.len()
            )));
        }
        match e.kind {
            EntryKind::Data => {
                let view = RecordBatchView::parse_verified(e.payload).map_err(|source| {
                    StorageError::BadBatch {
                        partition: id,
                        index: e.index,
                        source,
                    }
                })?;
                Ok((
                    (view.offset_count(), view.max_timestamp()),
                    Some(view.crc()),
                ))
            }
            EntryKind::Empty if !e.payload.is_empty() => Err(StorageError::InvalidArgument(
                format!("partition {id}: empty entry {} has a payload", e.index),
            )),
            _ => Ok(((0, i64::MIN), None)),
        }
    }

    /// Removes every entry at or after `index` (Raft log repair). Durable
    /// after the next sync.
    pub async fn truncate_suffix(&self, id: PartitionId, index: u64) -> Result<()> {
        self.reserve(RECORD_HEADER_BYTES).await?;
        let mut inner = self.shared.inner.borrow_mut();
        let part = inner.part(id)?;
        if index < part.first_index {
            return Err(StorageError::Compacted {
                partition: id,
                index,
                first: part.first_index,
            });
        }
        if index > part.last_index() {
            return Ok(());
        }
        inner.drop_suffix(id, index);
        inner.encode_record(RecordKind::Truncate, 0, id, index, 0, &[], (0, 0), None);
        Ok(())
    }

    /// Persists Raft's hard state. Durable after the next sync.
    pub async fn set_hard_state(&self, id: PartitionId, hard: HardState) -> Result<()> {
        self.reserve(RECORD_HEADER_BYTES + 8).await?;
        let mut inner = self.shared.inner.borrow_mut();
        inner.part_mut(id)?.hard = hard;
        inner.encode_record(
            RecordKind::HardState,
            0,
            id,
            hard.commit,
            hard.term,
            &[&hard.vote.to_le_bytes()],
            (0, 0),
            None,
        );
        Ok(())
    }

    /// Moves the first index forward to `first_index` (at most
    /// `last_index + 1`), remembering the term before it. Durable after the
    /// next sync; space comes back when the collector runs.
    pub async fn compact(&self, id: PartitionId, first_index: u64) -> Result<()> {
        self.reserve(RECORD_HEADER_BYTES + 8).await?;
        let mut inner = self.shared.inner.borrow_mut();
        let part = inner.part(id)?;
        if first_index <= part.first_index {
            return Ok(());
        }
        if first_index > part.last_index() + 1 {
            return Err(StorageError::Unavailable {
                partition: id,
                index: first_index - 1,
                last: part.last_index(),
            });
        }
        let term_before = part
            .entry(first_index - 1)
            .map(|e| e.term)
            .unwrap_or(part.term_before_first);
        let first_offset = part
            .entry(first_index)
            .map(|e| e.base_offset)
            .unwrap_or(part.next_offset);
        inner.drop_prefix(id, first_index, term_before, first_offset);
        inner.encode_record(
            RecordKind::Compact,
            0,
            id,
            first_index,
            term_before,
            &[&first_offset.to_le_bytes()],
            (0, 0),
            None,
        );
        Ok(())
    }

    /// Drops every entry and restarts the partition at `first_index` with
    /// offsets from `first_offset` (a replica restarting from the leader's
    /// compaction point, i.e. a snapshot). Durable after the next sync.
    pub async fn reset(
        &self,
        id: PartitionId,
        first_index: u64,
        term_before_first: u64,
        first_offset: u64,
    ) -> Result<()> {
        if first_index == 0 {
            return Err(StorageError::InvalidArgument(
                "first_index must be at least 1".into(),
            ));
        }
        self.reserve(2 * RECORD_HEADER_BYTES + 8).await?;
        let mut inner = self.shared.inner.borrow_mut();
        let last = inner.part(id)?.last_index();
        // Everything goes: the suffix from the new first index (or the
        // whole log) first, then the prefix.
        let cut = first_index.min(last + 1).max(inner.part(id)?.first_index);
        inner.drop_suffix(id, cut);
        inner.drop_prefix(id, first_index, term_before_first, first_offset);
        inner.encode_record(RecordKind::Truncate, 0, id, cut, 0, &[], (0, 0), None);
        inner.encode_record(
            RecordKind::Compact,
            0,
            id,
            first_index,
            term_before_first,
            &[&first_offset.to_le_bytes()],
            (0, 0),
            None,
        );
        Ok(())
    }

    /// Makes everything appended before this call durable. Concurrent callers
    /// share rounds: one write and one fdatasync cover all of them.
    ///
    /// A round has two stages, a write and an fdatasync, and consecutive
    /// rounds overlap: the next round's write runs while this round's
    /// fdatasync does. An append is durable once an fdatasync that started
    /// after its write completed has returned.
    pub async fn sync(&self) -> Result<()> {
        let target = self.shared.inner.borrow().appended_lsn;
        loop {
            enum Next {
                Wait(event_listener::EventListener),
                Write,
                Sync,
            }
            let next = {
                let inner = self.shared.inner.borrow();
                if let Some(why) = &inner.poisoned {
                    return Err(StorageError::Poisoned(why.clone()));
                }
                if inner.durable_lsn >= target {
                    return Ok(());
                }
                if inner.written_lsn >= target {
                    if inner.syncing {
                        Next::Wait(self.shared.changed.listen())
                    } else {
                        Next::Sync
                    }
                } else if inner.writing {
                    Next::Wait(self.shared.changed.listen())
                } else {
                    Next::Write
                }
            };
            match next {
                Next::Wait(l) => l.await,
                Next::Write => self.write_stage().await?,
                Next::Sync => self.sync_stage().await?,
            }
        }
    }

    /// Seals the active segment and starts a new one.
    pub async fn roll(&self) -> Result<()> {
        loop {
            let listener = {
                let inner = self.shared.inner.borrow();
                inner.check_poisoned()?;
                inner.rolling.then(|| self.shared.changed.listen())
            };
            match listener {
                Some(l) => l.await,
                None => break,
            }
        }
        self.shared.inner.borrow_mut().rolling = true;
        let result = self.roll_locked().await;
        self.shared.inner.borrow_mut().rolling = false;
        self.shared.changed.notify(usize::MAX);
        result
    }

    async fn roll_locked(&self) -> Result<()> {
        // Everything in the old segment is durable before the new one
        // exists, so a checkpoint never describes entries that are not.
        self.sync().await?;
        let (cfg, old_seq) = {
            let inner = self.shared.inner.borrow();
            (inner.cfg.clone(), inner.active_seq)
        };
        let rows = std::mem::take(&mut self.shared.inner.borrow_mut().active_rows);
        write_sidecar(&sidecar_path(&cfg.dir, old_seq), old_seq, &rows)?;
        let new_seq = old_seq + 1;
        let prepared = self.shared.inner.borrow_mut().prepared.take();
        let (file, path) = match prepared {
            Some(p) if p.seq == new_seq => {
                // Take it as far as it got: stop the zeroing and wait for
                // its last write, so no zeros land after our records.
                p.stop.set(true);
                match p.task.await {
                    Ok(file) => {
                        let path = segment_path(&cfg.dir, new_seq);
                        std::fs::rename(&p.path, &path)
                            .map_err(|e| StorageError::io("rename prepared segment", &path, e))?;
                        sync_dir(&cfg.dir)?;
                        (file, path)
                    }
                    Err(_) => create_segment(&cfg, new_seq).await?,
                }
            }
            _ => create_segment(&cfg, new_seq).await?,
        };
        let writer = open_writer(&cfg, &path).await?;
        {
            let mut inner = self.shared.inner.borrow_mut();
            let buf = file.alloc_dma_buffer(inner.cfg.write_buffer_bytes);
            if let Some(seg) = inner.segments.get_mut(&old_seq) {
                seg.sealed = true;
                seg.writer = None;
            }
            inner.segments.insert(
                new_seq,
                Segment {
                    path,
                    file,
                    writer,
                    live_bytes: 0,
                    end: 0,
                    sealed: false,
                },
            );
            inner.active_seq = new_seq;
            inner.staging = Staging {
                buf,
                base: 0,
                fill: 0,
            };
            inner.prev_crc = chain_seed(new_seq);
            inner.written_end = 0;
            inner.stats.segments_rolled += 1;
            inner.stats.fdatasync_calls += 1; // the directory
        }
        self.write_checkpoint()?;
        // The collector may delete every older segment once this one exists,
        // so its checkpoint must be durable first.
        self.sync().await?;
        self.prepare_next();
        Ok(())
    }

    /// Starts zeroing the segment after the active one in the background.
    fn prepare_next(&self) {
        let mut inner = self.shared.inner.borrow_mut();
        let rate = inner.cfg.prezero_bytes_per_sec;
        if rate == 0 || inner.prepared.is_some() {
            return;
        }
        let seq = inner.active_seq + 1;
        let path = inner.cfg.dir.join(format!("{seq:010}{PREPARE_SUFFIX}"));
        let stop = Rc::new(Cell::new(false));
        let cfg = inner.cfg.clone();
        let task_stop = stop.clone();
        let task_path = path.clone();
        let task = glommio::spawn_local(async move {
            let (file, _) = create_file(&cfg, &task_path).await?;
            zero_fill(&file, &task_path, cfg.segment_bytes, rate, &task_stop).await?;
            Ok(file)
        });
        inner.prepared = Some(Prepared {
            seq,
            path,
            stop,
            task,
        });
    }

    /// Writes the checkpoint that opens the active segment. The caller holds
    /// the roll (or is `open`), so nothing else is appending.
    fn write_checkpoint(&self) -> Result<()> {
        let mut inner = self.shared.inner.borrow_mut();
        let mut ids: Vec<_> = inner.parts.keys().copied().collect();
        ids.sort_unstable();
        let len = RECORD_HEADER_BYTES + ids.len() * CHECKPOINT_ROW_BYTES;
        if len as u64 > inner.cfg.segment_bytes {
            return Err(StorageError::InvalidArgument(format!(
                "{} partitions do not fit a checkpoint in a {}-byte segment",
                ids.len(),
                inner.cfg.segment_bytes
            )));
        }
        inner.grow_staging(len);
        let mut payload = vec![0u8; ids.len() * CHECKPOINT_ROW_BYTES];
        for (id, chunk) in ids
            .iter()
            .zip(payload.chunks_exact_mut(CHECKPOINT_ROW_BYTES))
        {
            inner.parts[id].checkpoint_row(*id).encode_into(chunk);
        }
        inner.encode_record(
            RecordKind::Checkpoint,
            0,
            0,
            0,
            0,
            &[&payload],
            (0, 0),
            None,
        );
        Ok(())
    }

    /// Waits until a record of `len` bytes fits in the staging buffer and in
    /// the active segment, flushing or rolling as needed.
    async fn reserve(&self, len: usize) -> Result<()> {
        let mut rolled = false;
        let mut waiter = SpaceWaiter {
            shared: &self.shared,
            len,
            ticket: None,
        };
        loop {
            enum Next {
                Wait(event_listener::EventListener),
                Roll,
                Flush,
            }
            let next = {
                let mut inner = self.shared.inner.borrow_mut();
                inner.check_poisoned()?;
                if self.shared.closed.get() {
                    return Err(StorageError::InvalidArgument("the log is closed".into()));
                }
                // Room: what the buffer holds or may grow to.
                let room = inner.staging.buf.len().max(inner.cfg.write_buffer_bytes);
                let set_aside = waiter.set_aside(&inner);
                if inner.rolling {
                    Next::Wait(self.shared.changed.listen())
                } else if inner.staging.base + (inner.staging.fill + len) as u64
                    > inner.cfg.segment_bytes
                {
                    Next::Roll
                } else if inner.staging.fill + len + set_aside <= room {
                    inner.grow_staging(len);
                    waiter.leave(&mut inner);
                    return Ok(());
                } else if inner.staging.fill + len <= room {
                    // It fits, but in space set aside for calls queued
                    // before it.
                    waiter.enqueue(&mut inner);
                    Next::Wait(self.shared.changed.listen())
                } else if inner.writing {
                    waiter.enqueue(&mut inner);
                    Next::Wait(self.shared.changed.listen())
                } else if inner.appended_lsn == inner.written_lsn {
                    // The buffer holds only the tail block and the record is
                    // larger than the rest of it: grow once.
                    inner.grow_staging(len);
                    waiter.leave(&mut inner);
                    return Ok(());
                } else {
                    // Queued while it flushes, too: the round frees space
                    // for this call, not for the calls that append while it
                    // runs.
                    waiter.enqueue(&mut inner);
                    Next::Flush
                }
            };
            match next {
                Next::Wait(l) => l.await,
                Next::Roll if rolled => {
                    // A fresh segment holds only its checkpoint: the record
                    // can never fit.
                    return Err(StorageError::InvalidArgument(format!(
                        "a {len}-byte record does not fit in a segment after its checkpoint"
                    )));
                }
                Next::Roll => {
                    self.roll().await?;
                    rolled = true;
                }
                // Taking the buffer for a write is what frees its space; the
                // fdatasync can come later.
                Next::Flush => self.write_stage().await?,
            }
        }
    }

    /// Writes what is staged without fdatasync and without counting it
    /// durable: what a crash can leave half-written. For crash tests only.
    #[doc(hidden)]
    pub async fn write_unsynced_for_crash_test(&self) -> Result<()> {
        self.write_stage().await
    }

    /// The write stage of a round: takes the staging buffer and writes it
    /// at its aligned position with one O_DIRECT write.
    async fn write_stage(&self) -> Result<()> {
        let (file, path, buf, pos, target, data_end, through) = {
            let mut inner = self.shared.inner.borrow_mut();
            inner.check_poisoned()?;
            if inner.writing || inner.appended_lsn == inner.written_lsn {
                return Ok(());
            }
            inner.writing = true;
            let target = inner.appended_lsn;
            let idle = !inner.syncing
                && inner.durable_lsn == inner.written_lsn
                && !inner.busy_at_last_write;
            let seg = &inner.segments[&inner.active_seq];
            let writer = seg.writer.as_ref().filter(|_| match inner.cfg.sync_mode {
                SyncMode::Pipelined => false,
                SyncMode::WriteThrough => true,
                SyncMode::Adaptive => idle,
            });
            let through = writer.is_some();
            let file = writer.unwrap_or(&seg.file).clone();
            let path = seg.path.clone();
            // The next buffer gets room for twice this round's bytes, not
            // always `write_buffer_bytes`; reserve() grows it up to that.
            // A full-size (4 MiB) buffer per round costs an mmap, page
            // faults and an munmap, tens of microseconds a round, which
            // small rounds felt in their latency.
            let capacity = align_up((2 * inner.staging.fill).clamp(
                STAGING_MIN_BYTES.min(inner.cfg.write_buffer_bytes),
                inner.cfg.write_buffer_bytes,
            ) as u64) as usize;
            let fresh = file.alloc_dma_buffer(capacity);
            let mut taken = std::mem::replace(&mut inner.staging.buf, fresh);
            let base = inner.staging.base;
            let fill = inner.staging.fill;
            // The next buffer starts with the block that holds the current
            // end. Writing that block again while this round's fdatasync
            // runs is safe: the part of it already written is the same.
            let end = base + fill as u64;
            let next_base = align_down(end);
            let tail = (end - next_base) as usize;
            let tail_from = (next_base - base) as usize;
            inner.staging.buf.as_bytes_mut()[..tail]
                .copy_from_slice(&taken.as_bytes()[tail_from..fill]);
            inner.staging.base = next_base;
            inner.staging.fill = tail;
            let write_len = align_up(fill as u64) as usize;
            taken.as_bytes_mut()[fill..write_len].fill(0);
            taken.trim_to_size(write_len);
            (file, path, taken, base, target, end, through)
        };
        let len = buf.len();
        let started = Instant::now();
        let result = match file.write_at(buf, pos).await {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(StorageError::io(
                "write segment",
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {n} of {len} bytes at {pos}"),
                ),
            )),
            Err(e) => Err(StorageError::glommio("write segment", &path, e)),
        };
        {
            let mut inner = self.shared.inner.borrow_mut();
            inner.writing = false;
            inner.stats.write_calls += 1;
            let write_us = started.elapsed().as_micros().max(1) as u64;
            inner.stats.write_latency_us.saturating_record(write_us);
            match &result {
                Ok(()) => {
                    inner.written_lsn = target;
                    inner.written_end = inner.written_end.max(data_end);
                    inner.busy_at_last_write = inner.appended_lsn > target;
                    if through {
                        // Written through: durable now, the round is done.
                        inner.durable_lsn = inner.durable_lsn.max(target);
                        inner.stats.sync_rounds += 1;
                        inner.stats.sync_latency_us.saturating_record(write_us);
                    }
                }
                Err(e) => inner.poisoned = Some(e.to_string()),
            }
        }
        self.shared.changed.notify(usize::MAX);
        result
    }

    /// The fdatasync stage of a round: makes everything written so far
    /// durable.
    async fn sync_stage(&self) -> Result<()> {
        let (file, path, target) = {
            let mut inner = self.shared.inner.borrow_mut();
            inner.check_poisoned()?;
            if inner.syncing || inner.written_lsn == inner.durable_lsn {
                return Ok(());
            }
            inner.syncing = true;
            let seg = &inner.segments[&inner.active_seq];
            (seg.file.clone(), seg.path.clone(), inner.written_lsn)
        };
        let started = Instant::now();
        let result = file
            .fdatasync()
            .await
            .map_err(|e| StorageError::glommio("fdatasync segment", &path, e));
        {
            let mut inner = self.shared.inner.borrow_mut();
            inner.syncing = false;
            inner.stats.fdatasync_calls += 1;
            match &result {
                Ok(()) => {
                    inner.durable_lsn = inner.durable_lsn.max(target);
                    inner.stats.sync_rounds += 1;
                    let us = started.elapsed().as_micros() as u64;
                    inner.stats.sync_latency_us.saturating_record(us.max(1));
                }
                Err(e) => inner.poisoned = Some(e.to_string()),
            }
        }
        self.shared.changed.notify(usize::MAX);
        result
    }

    // ----- reads ------------------------------------------------------------

    /// First index (entries before it are compacted).
    pub fn first_index(&self, id: PartitionId) -> Result<u64> {
        Ok(self.shared.inner.borrow().part(id)?.first_index)
    }

    /// Last index (`first_index - 1` when empty).
    pub fn last_index(&self, id: PartitionId) -> Result<u64> {
        Ok(self.shared.inner.borrow().part(id)?.last_index())
    }

    /// Term of `index`, including the term just before the first index.
    pub fn term(&self, id: PartitionId, index: u64) -> Result<u64> {
        let inner = self.shared.inner.borrow();
        let p = inner.part(id)?;
        if index + 1 == p.first_index {
            return Ok(p.term_before_first);
        }
        if index < p.first_index {
            return Err(StorageError::Compacted {
                partition: id,
                index,
                first: p.first_index,
            });
        }
        p.entry(index)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable {
                partition: id,
                index,
                last: p.last_index(),
            })
    }

    /// The persisted hard state.
    pub fn hard_state(&self, id: PartitionId) -> Result<HardState> {
        Ok(self.shared.inner.borrow().part(id)?.hard)
    }

    /// The first offset still stored (log start offset).
    pub fn log_start_offset(&self, id: PartitionId) -> Result<u64> {
        Ok(self.shared.inner.borrow().part(id)?.first_offset)
    }

    /// The offset the next record will get.
    pub fn next_offset(&self, id: PartitionId) -> Result<u64> {
        Ok(self.shared.inner.borrow().part(id)?.next_offset)
    }

    /// The offset after entry `index`: the next offset of the partition as
    /// it stood once that entry was appended. For `first_index - 1` it is
    /// the log start offset. Every replica computes the same value for the
    /// same entry, since offsets follow from the log alone.
    pub fn offset_after(&self, id: PartitionId, index: u64) -> Result<u64> {
        let inner = self.shared.inner.borrow();
        let p = inner.part(id)?;
        if index + 1 == p.first_index {
            return Ok(p.first_offset);
        }
        if index < p.first_index {
            return Err(StorageError::Compacted {
                partition: id,
                index,
                first: p.first_index,
            });
        }
        p.entry(index)
            .map(|e| e.base_offset + u64::from(e.offset_count))
            .ok_or(StorageError::Unavailable {
                partition: id,
                index,
                last: p.last_index(),
            })
    }

    /// Bytes of log (headers included) held by the entries after `index`,
    /// counting at most `entries_max` of them: how far behind a replica
    /// that has everything up to `index` is.
    pub fn bytes_after(&self, id: PartitionId, index: u64, entries_max: u64) -> Result<u64> {
        let inner = self.shared.inner.borrow();
        let p = inner.part(id)?;
        let from = index.saturating_add(1).max(p.first_index);
        let to = p
            .last_index()
            .min(from.saturating_add(entries_max).saturating_sub(1));
        Ok((from..=to)
            .filter_map(|i| p.entry(i))
            .map(|e| e.record_bytes())
            .sum())
    }

    /// Bytes of entries the partition holds (headers included).
    pub fn partition_bytes(&self, id: PartitionId) -> Result<u64> {
        Ok(self.shared.inner.borrow().part(id)?.bytes)
    }

    /// Entries `lo..hi` (exclusive), stopping once `bytes_max` payload bytes
    /// are reached but always returning at least one (raft-rs's rule).
    pub async fn entries(
        &self,
        id: PartitionId,
        lo: u64,
        hi: u64,
        bytes_max: Option<u64>,
    ) -> Result<Vec<StoredEntry>> {
        let picked = {
            let inner = self.shared.inner.borrow();
            let p = inner.serving_part(id)?;
            if lo < p.first_index {
                return Err(StorageError::Compacted {
                    partition: id,
                    index: lo,
                    first: p.first_index,
                });
            }
            if hi > p.last_index() + 1 || lo > hi {
                return Err(StorageError::Unavailable {
                    partition: id,
                    index: hi.saturating_sub(1),
                    last: p.last_index(),
                });
            }
            let budget = bytes_max.unwrap_or(u64::MAX);
            let mut total = 0u64;
            let mut picked = Vec::with_capacity((hi - lo) as usize);
            for index in lo..hi {
                let e = *p.entry(index).expect("index within bounds");
                total += u64::from(e.payload_len);
                if !picked.is_empty() && total > budget {
                    break;
                }
                picked.push((index, e));
            }
            picked
        };
        let payloads = self.read_payloads(id, &picked).await?;
        Ok(picked
            .into_iter()
            .zip(payloads)
            .map(|((index, e), payload)| StoredEntry {
                index,
                term: e.term,
                kind: EntryKind::from_record(e.kind),
                payload,
            })
            .collect())
    }

    /// Record batches from the one holding `offset`, in order, up to
    /// `bytes_max` (at least one batch) and never past index `index_max`
    /// (the caller's commit index).
    pub async fn read_from_offset(
        &self,
        id: PartitionId,
        offset: u64,
        bytes_max: u64,
        index_max: u64,
    ) -> Result<Vec<FetchedBatch>> {
        let picked = {
            let inner = self.shared.inner.borrow();
            let p = inner.serving_part(id)?;
            if offset < p.first_offset || offset > p.next_offset {
                return Err(StorageError::OffsetOutOfRange {
                    partition: id,
                    offset,
                    start: p.first_offset,
                    next: p.next_offset,
                });
            }
            let start = p
                .entries
                .partition_point(|e| e.base_offset + u64::from(e.offset_count) <= offset);
            let mut picked = Vec::new();
            let mut total = 0u64;
            for (i, e) in p.entries.iter().enumerate().skip(start) {
                let index = p.first_index + i as u64;
                if index > index_max {
                    break;
                }
                if e.kind != RecordKind::Data {
                    continue;
                }
                total += u64::from(e.payload_len);
                if !picked.is_empty() && total > bytes_max {
                    break;
                }
                picked.push((index, *e));
            }
            picked
        };
        let payloads = self.read_payloads(id, &picked).await?;
        Ok(picked
            .into_iter()
            .zip(payloads)
            .map(|((index, e), bytes)| FetchedBatch {
                index,
                base_offset: e.base_offset,
                offset_count: e.offset_count,
                bytes,
            })
            .collect())
    }

    /// The base offset of the first batch holding a record with timestamp at
    /// or after `timestamp_ms`; `None` when no stored record is that new.
    /// Granularity is the batch: a reader skips the earlier records in it.
    pub fn offset_for_timestamp(&self, id: PartitionId, timestamp_ms: i64) -> Result<Option<u64>> {
        let inner = self.shared.inner.borrow();
        let p = inner.serving_part(id)?;
        let i = p
            .entries
            .partition_point(|e| e.max_timestamp_running < timestamp_ms);
        Ok(p.entries
            .iter()
            .skip(i)
            .find(|e| e.kind == RecordKind::Data)
            .map(|e| e.base_offset))
    }

    /// Reads and checks the records at `locs`. Records that lie next to each
    /// other in a segment are read with one call.
    async fn read_payloads(
        &self,
        id: PartitionId,
        picked: &[(u64, EntryLoc)],
    ) -> Result<Vec<ReadResult>> {
        // Records still in the staging buffer reach the file first.
        let needs_flush = {
            let inner = self.shared.inner.borrow();
            picked.iter().any(|(_, e)| {
                e.segment_seq == inner.active_seq
                    && u64::from(e.pos) + e.record_bytes() > inner.written_end
            })
        };
        if needs_flush {
            self.sync().await?;
        }
        let mut out = Vec::with_capacity(picked.len());
        let mut i = 0;
        while i < picked.len() {
            let first = picked[i].1;
            let mut j = i + 1;
            let mut end = u64::from(first.pos) + first.record_bytes();
            while j < picked.len()
                && picked[j].1.segment_seq == first.segment_seq
                && u64::from(picked[j].1.pos) == end
                && end - u64::from(first.pos) < SCAN_CHUNK_BYTES as u64
            {
                end += picked[j].1.record_bytes();
                j += 1;
            }
            let (file, path) = {
                let inner = self.shared.inner.borrow();
                let seg = inner.segments.get(&first.segment_seq).ok_or_else(|| {
                    StorageError::PartitionCorrupt {
                        partition: id,
                        why: format!("segment {} is gone", first.segment_seq),
                    }
                })?;
                (seg.file.clone(), seg.path.clone())
            };
            let start = u64::from(first.pos);
            let run = file
                .read_at(start, (end - start) as usize)
                .await
                .map_err(|e| StorageError::glommio("read segment", &path, e))?;
            for (index, e) in &picked[i..j] {
                let at = (u64::from(e.pos) - start) as usize;
                match check_record(&run, at, e, id, *index) {
                    Ok(payload) => out.push(payload),
                    Err(what) => {
                        self.shared.inner.borrow_mut().stats.corruptions += 1;
                        return Err(StorageError::Corrupt {
                            path,
                            pos: u64::from(e.pos),
                            what,
                        });
                    }
                }
            }
            i = j;
        }
        Ok(out)
    }

    // ----- retention and collection -----------------------------------------

    /// Applies a retention policy to one partition: drops its oldest entries
    /// while it holds more than `bytes_max` or while their newest record is
    /// older than `age_max_ms` (against `now_ms`), never at or past
    /// `keep_from_index` (what Raft still needs). Returns the new first index.
    pub async fn apply_retention(
        &self,
        id: PartitionId,
        policy: RetentionPolicy,
        now_ms: i64,
        keep_from_index: u64,
    ) -> Result<u64> {
        let new_first = {
            let inner = self.shared.inner.borrow();
            let p = inner.part(id)?;
            let mut first = p.first_index;
            let mut bytes = p.bytes;
            let cutoff = policy
                .age_max_ms
                .map(|age| now_ms.saturating_sub(age as i64));
            for e in &p.entries {
                if first >= keep_from_index {
                    break;
                }
                let too_big = policy.bytes_max.is_some_and(|max| bytes > max);
                let too_old = cutoff.is_some_and(|c| e.max_timestamp_running < c);
                if !(too_big || too_old) {
                    break;
                }
                bytes -= e.record_bytes();
                first += 1;
            }
            first
        };
        self.compact(id, new_first).await?;
        Ok(new_first)
    }

    /// Reclaims disk space: deletes sealed segments that hold no live entry,
    /// and first rewrites the live entries of sealed segments whose live
    /// fraction is at most `gc_live_ratio_max` into the active segment.
    pub async fn gc(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        let to_rewrite: Vec<u32> = {
            let inner = self.shared.inner.borrow();
            inner
                .segments
                .iter()
                .filter(|(_, s)| {
                    s.sealed
                        && s.live_bytes > 0
                        && (s.live_bytes as f64)
                            <= inner.cfg.gc_live_ratio_max * s.end.max(1) as f64
                })
                .map(|(&seq, _)| seq)
                .collect()
        };
        for seq in to_rewrite {
            report.entries_rewritten += self.rewrite_segment(seq).await?;
        }
        if report.entries_rewritten > 0 {
            // Copies are durable before their originals go.
            self.sync().await?;
        }
        let dead: Vec<(u32, PathBuf, u64)> = {
            let inner = self.shared.inner.borrow();
            inner
                .segments
                .iter()
                .filter(|(_, s)| s.sealed && s.live_bytes == 0)
                .map(|(&seq, s)| (seq, s.path.clone(), s.end))
                .collect()
        };
        if dead.is_empty() {
            return Ok(report);
        }
        let dir = self.shared.inner.borrow().cfg.dir.clone();
        for (seq, path, end) in dead {
            let still_dead = self
                .shared
                .inner
                .borrow()
                .segments
                .get(&seq)
                .is_some_and(|s| s.live_bytes == 0);
            if !still_dead {
                continue;
            }
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(end);
            std::fs::remove_file(&path)
                .map_err(|e| StorageError::io("delete segment", &path, e))?;
            let idx = sidecar_path(&dir, seq);
            if let Err(e) = std::fs::remove_file(&idx) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(StorageError::io("delete segment index", &idx, e));
                }
            }
            let mut inner = self.shared.inner.borrow_mut();
            inner.segments.remove(&seq);
            inner.stats.segments_deleted += 1;
            report.segments_deleted += 1;
            report.bytes_freed += bytes;
        }
        sync_dir(&dir)?;
        self.shared.inner.borrow_mut().stats.fdatasync_calls += 1;
        Ok(report)
    }

    async fn rewrite_segment(&self, seq: u32) -> Result<u64> {
        let live: Vec<(PartitionId, u64, EntryLoc)> = {
            let inner = self.shared.inner.borrow();
            let mut live = Vec::new();
            for (&id, p) in &inner.parts {
                for (i, e) in p.entries.iter().enumerate() {
                    if e.segment_seq == seq {
                        live.push((id, p.first_index + i as u64, *e));
                    }
                }
            }
            live.sort_by_key(|&(_, _, e)| e.pos);
            live
        };
        let mut moved = 0;
        for (id, index, loc) in live {
            let payload = self
                .read_payloads(id, &[(index, loc)])
                .await?
                .pop()
                .expect("one payload per location");
            self.reserve(RECORD_HEADER_BYTES + payload.len()).await?;
            let mut inner = self.shared.inner.borrow_mut();
            // The entry may have been truncated, compacted or rewritten while
            // we read it: move it only if it is still the one we read.
            let still = inner
                .parts
                .get(&id)
                .and_then(|p| p.entry(index))
                .is_some_and(|e| *e == loc);
            if !still {
                continue;
            }
            let new_loc = inner.encode_record(
                loc.kind,
                RECORD_FLAG_REWRITE,
                id,
                index,
                loc.term,
                &[&payload[..]],
                (loc.offset_count, loc.max_timestamp),
                None,
            );
            inner.release(&loc);
            let active = inner.active_seq;
            if let Some(s) = inner.segments.get_mut(&active) {
                s.live_bytes += loc.record_bytes();
            }
            let p = inner.parts.get_mut(&id).expect("checked above");
            let slot = (index - p.first_index) as usize;
            p.entries[slot].segment_seq = active;
            p.entries[slot].pos = new_loc;
            inner.stats.entries_rewritten += 1;
            moved += 1;
        }
        Ok(moved)
    }

    // ----- observability ----------------------------------------------------

    /// A copy of the counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.inner.borrow().stats.snapshot()
    }

    /// Number of segment files, the active one included.
    pub fn segment_count(&self) -> usize {
        self.shared.inner.borrow().segments.len()
    }

    /// The active segment's path, the end of its durable bytes and the end
    /// of everything appended to it (for tests that simulate a crash by
    /// damaging what was not yet synced).
    pub fn durable_position(&self) -> (PathBuf, u64, u64) {
        let inner = self.shared.inner.borrow();
        let seg = &inner.segments[&inner.active_seq];
        // Bytes not yet durable are all in the staging buffer (outside a
        // round), at its end.
        let unsynced = inner.appended_lsn - inner.durable_lsn;
        let appended_end = inner.staging.base + inner.staging.fill as u64;
        (seg.path.clone(), appended_end - unsynced, appended_end)
    }

    /// Syncs, then closes every file. Appends after close fail.
    pub async fn close(&self) -> Result<()> {
        self.sync().await?;
        self.shared.closed.set(true);
        let (cfg, seq, rows) = {
            let mut inner = self.shared.inner.borrow_mut();
            (
                inner.cfg.clone(),
                inner.active_seq,
                std::mem::take(&mut inner.active_rows),
            )
        };
        // The active segment's index lets the next open skip its scan only
        // once it is sealed there; write it now so a clean shutdown leaves a
        // complete set of index files.
        write_sidecar(&sidecar_path(&cfg.dir, seq), seq, &rows)?;
        Ok(())
    }
}

impl Drop for Inner {
    /// A dropped log stops preparing its next segment.
    fn drop(&mut self) {
        if let Some(p) = &self.prepared {
            p.stop.set(true);
        }
    }
}

impl Inner {
    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(StorageError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn part(&self, id: PartitionId) -> Result<&Partition> {
        self.parts
            .get(&id)
            .ok_or(StorageError::UnknownPartition(id))
    }

    fn part_mut(&mut self, id: PartitionId) -> Result<&mut Partition> {
        self.parts
            .get_mut(&id)
            .ok_or(StorageError::UnknownPartition(id))
    }

    fn serving_part(&self, id: PartitionId) -> Result<&Partition> {
        let p = self.part(id)?;
        match &p.corrupt {
            Some(why) => Err(StorageError::PartitionCorrupt {
                partition: id,
                why: why.clone(),
            }),
            None => Ok(p),
        }
    }

    fn grow_staging(&mut self, len: usize) {
        let need = self.staging.fill + len;
        if need <= self.staging.buf.len() {
            return;
        }
        // Doubling keeps the copies of a buffer grown record by record
        // linear in its bytes.
        let doubled = (2 * self.staging.buf.len()).min(self.cfg.write_buffer_bytes);
        let cap = align_up(need.max(doubled) as u64) as usize;
        let file = self.segments[&self.active_seq].file.clone();
        let mut buf = file.alloc_dma_buffer(cap);
        let fill = self.staging.fill;
        buf.as_bytes_mut()[..fill].copy_from_slice(&self.staging.buf.as_bytes()[..fill]);
        self.staging.buf = buf;
    }

    /// Drops a live entry's bytes from its segment's live count.
    fn release(&mut self, e: &EntryLoc) {
        if let Some(s) = self.segments.get_mut(&e.segment_seq) {
            s.live_bytes -= e.record_bytes();
        }
    }

    fn drop_suffix(&mut self, id: PartitionId, from: u64) {
        let p = self
            .parts
            .get_mut(&id)
            .expect("caller checked the partition");
        let keep = from.saturating_sub(p.first_index) as usize;
        let dropped: Vec<EntryLoc> = p.entries.drain(keep.min(p.entries.len())..).collect();
        for e in &dropped {
            p.bytes -= e.record_bytes();
        }
        p.next_offset = p.entries.back().map_or(p.first_offset, |e| {
            e.base_offset + u64::from(e.offset_count)
        });
        for e in &dropped {
            self.release(e);
        }
    }

    fn drop_prefix(
        &mut self,
        id: PartitionId,
        first_index: u64,
        term_before: u64,
        first_offset: u64,
    ) {
        let p = self
            .parts
            .get_mut(&id)
            .expect("caller checked the partition");
        let n = (first_index.saturating_sub(p.first_index) as usize).min(p.entries.len());
        let dropped: Vec<EntryLoc> = p.entries.drain(..n).collect();
        for e in &dropped {
            p.bytes -= e.record_bytes();
        }
        p.first_index = first_index;
        p.term_before_first = term_before;
        p.first_offset = first_offset;
        if p.entries.is_empty() {
            p.next_offset = first_offset;
        }
        for e in &dropped {
            self.release(e);
        }
    }

    /// Appends one Raft entry whose space is reserved. Applies the conflict
    /// rule, stamps the batch, updates the entry table.
    fn append_entry(
        &mut self,
        id: PartitionId,
        e: &EntryRef<'_>,
        facts: (u32, i64),
        batch_crc: Option<u32>,
        flags: u8,
    ) -> Result<AppendOutcome> {
        let p = self.serving_part(id)?;
        if e.index < p.first_index || e.index > p.last_index() + 1 {
            return Err(StorageError::IndexGap {
                partition: id,
                index: e.index,
                first: p.first_index,
                last: p.last_index(),
            });
        }
        if e.index <= p.last_index() {
            self.drop_suffix(id, e.index);
        }
        let base_offset = self.parts[&id].next_offset;
        // Data entries are stamped in the staging copy: the producer's crc
        // does not cover base offset and leader epoch, so it stays valid.
        // `check_entry` gives a verified crc for data entries only.
        let stamp = batch_crc.map(|batch_crc| Stamp {
            base_offset: base_offset as i64,
            epoch: e.term as i32,
            batch_crc,
        });
        let pos = self.encode_record(
            e.kind.record_kind(),
            flags,
            id,
            e.index,
            e.term,
            &[e.payload],
            facts,
            stamp,
        );
        let active = self.active_seq;
        let loc_bytes = RECORD_HEADER_BYTES as u64 + e.payload.len() as u64;
        if let Some(s) = self.segments.get_mut(&active) {
            s.live_bytes += loc_bytes;
        }
        let p = self.parts.get_mut(&id).expect("checked above");
        let running = p
            .entries
            .back()
            .map_or(i64::MIN, |l| l.max_timestamp_running);
        p.entries.push_back(EntryLoc {
            segment_seq: active,
            pos,
            payload_len: e.payload.len() as u32,
            kind: e.kind.record_kind(),
            term: e.term,
            base_offset,
            offset_count: facts.0,
            max_timestamp: facts.1,
            max_timestamp_running: if e.kind == EntryKind::Data {
                running.max(facts.1)
            } else {
                running
            },
        });
        p.bytes += loc_bytes;
        p.next_offset = base_offset + u64::from(facts.0);
        Ok(AppendOutcome {
            base_offset,
            next_offset: p.next_offset,
            last_index: e.index,
        })
    }

    /// Encodes one record at the end of the staging buffer (space reserved
    /// by the caller) and returns its position in the segment.
    #[allow(clippy::too_many_arguments)]
    fn encode_record(
        &mut self,
        kind: RecordKind,
        flags: u8,
        partition: PartitionId,
        index: u64,
        term: u64,
        payload: &[&[u8]],
        facts: (u32, i64),
        stamp: Option<Stamp>,
    ) -> u32 {
        let payload_len: usize = payload.iter().map(|p| p.len()).sum();
        let len = RECORD_HEADER_BYTES + payload_len;
        assert!(
            self.staging.fill + len <= self.staging.buf.len(),
            "record space was reserved"
        );
        let pos = self.staging.base + self.staging.fill as u64;
        assert!(
            pos + len as u64 <= self.cfg.segment_bytes,
            "record fits the segment"
        );
        let at = self.staging.fill;
        let buf = self.staging.buf.as_bytes_mut();
        let mut w = at + RECORD_HEADER_BYTES;
        for part in payload {
            buf[w..w + part.len()].copy_from_slice(part);
            w += part.len();
        }
        let body = &mut buf[at + RECORD_HEADER_BYTES..w];
        let payload_crc = match stamp {
            Some(st) => {
                batch::stamp(body, st.base_offset, st.epoch);
                // The batch's own crc covers everything from its
                // attributes on and was verified: extend it over the
                // stamped header instead of a second pass over the batch.
                let (head, covered) = body.split_at(batch::CRC_COVERED_FROM);
                crate::crc::combine(crc32c::crc32c(head), st.batch_crc, covered.len())
            }
            None => crc32c::crc32c(body),
        };
        let header = RecordHeader {
            header_crc: 0,
            prev_header_crc: self.prev_crc,
            segment_seq: self.active_seq,
            kind,
            flags,
            payload_len: payload_len as u32,
            payload_crc,
            partition,
            index,
            term,
        };
        let header_crc = header.encode(&mut buf[at..at + RECORD_HEADER_BYTES]);
        self.prev_crc = header_crc;
        self.staging.fill += len;
        self.appended_lsn += len as u64;
        self.stats.appends += 1;
        self.stats.append_bytes += len as u64;
        let (aux_a, aux_b) = match kind {
            RecordKind::Data | RecordKind::ConfChange | RecordKind::Empty => {
                (u64::from(facts.0), facts.1 as u64)
            }
            RecordKind::HardState | RecordKind::Compact => (
                payload_u64(payload.first().copied().unwrap_or(&[])).unwrap_or(0),
                0,
            ),
            _ => (0, 0),
        };
        self.active_rows.push(SidecarRow {
            header: RecordHeader {
                header_crc,
                ..header
            },
            pos,
            aux_a,
            aux_b,
        });
        if let Some(s) = self.segments.get_mut(&self.active_seq) {
            s.end = pos + len as u64;
        }
        pos as u32
    }
}

/// Checks one record inside a read run and returns its payload.
fn check_record(
    run: &ReadResult,
    at: usize,
    e: &EntryLoc,
    id: PartitionId,
    index: u64,
) -> std::result::Result<ReadResult, String> {
    let header_bytes = run.get(at..at + RECORD_HEADER_BYTES).ok_or("short read")?;
    let h =
        RecordHeader::decode(header_bytes).map_err(|err| format!("bad record header: {err:?}"))?;
    if h.partition != id
        || h.index != index
        || h.term != e.term
        || h.payload_len != e.payload_len
        || h.kind != e.kind
    {
        return Err(format!(
            "record is partition {} index {} term {}, expected partition {id} index {index} term {}",
            h.partition, h.index, h.term, e.term
        ));
    }
    let payload = ReadResult::slice(run, at + RECORD_HEADER_BYTES, e.payload_len as usize)
        .unwrap_or_default();
    if payload.len() != e.payload_len as usize {
        return Err("short read".into());
    }
    if crc32c::crc32c(&payload) != h.payload_crc {
        return Err("payload crc mismatch".into());
    }
    Ok(payload)
}

/// Suffix of a segment file being prepared (zeroed) before it is needed.
const PREPARE_SUFFIX: &str = ".log.prepare";
/// Bytes of zeros written per call while preparing a segment.
const PREZERO_CHUNK_BYTES: usize = 128 << 10;

/// A segment being prepared in the background. Shard view.
struct Prepared {
    seq: u32,
    path: PathBuf,
    /// Set to stop the zeroing where it is.
    stop: Rc<Cell<bool>>,
    task: glommio::Task<Result<Rc<DmaFile>>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("seq", &self.seq)
            .field("path", &self.path)
            .finish()
    }
}

/// Writes zeros from the start of `file` up to `len` bytes, at most `rate`
/// bytes per second, stopping early when `stop` is set, then fdatasyncs, so the blocks are allocated and their extents converted
/// before records land in them.
async fn zero_fill(
    file: &DmaFile,
    path: &Path,
    len: u64,
    rate: u64,
    stop: &Cell<bool>,
) -> Result<()> {
    let mut pos = 0u64;
    while pos < len && !stop.get() {
        let n = PREZERO_CHUNK_BYTES.min((len - pos) as usize);
        let mut buf = file.alloc_dma_buffer(n);
        buf.as_bytes_mut().fill(0);
        file.write_at(buf, pos)
            .await
            .map_err(|e| StorageError::glommio("zero segment", path, e))?;
        pos += n as u64;
        let pause = std::time::Duration::from_micros(n as u64 * 1_000_000 / rate.max(1));
        glommio::timer::sleep(pause).await;
    }
    if stop.get() {
        // Taken early by a roll: the next fdatasync of records commits the
        // allocations too.
        return Ok(());
    }
    file.fdatasync()
        .await
        .map_err(|e| StorageError::glommio("fdatasync zeroed segment", path, e))
}

/// Writes zeros through the whole of `file` as fast as the disk takes them
/// (several writes in flight), then fdatasyncs: the segment `open` starts
/// with, which the log waits for.
async fn zero_fill_now(file: &Rc<DmaFile>, path: &Path, len: u64) -> Result<()> {
    const WRITERS: u64 = 8;
    const CHUNK: u64 = 1 << 20;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let file = file.clone();
            let path = path.to_path_buf();
            glommio::spawn_local(async move {
                let mut pos = w * CHUNK;
                while pos < len {
                    let n = CHUNK.min(len - pos) as usize;
                    let mut buf = file.alloc_dma_buffer(n);
                    buf.as_bytes_mut().fill(0);
                    file.write_at(buf, pos)
                        .await
                        .map_err(|e| StorageError::glommio("zero segment", &path, e))?;
                    pos += WRITERS * CHUNK;
                }
                Ok::<(), StorageError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    file.fdatasync()
        .await
        .map_err(|e| StorageError::glommio("fdatasync zeroed segment", path, e))
}

/// The write-through handle of a segment about to become active (`None`
/// unless the log writes through).
async fn open_writer(cfg: &LogConfig, path: &Path) -> Result<Option<Rc<DmaFile>>> {
    if cfg.sync_mode == SyncMode::Pipelined {
        return Ok(None);
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await
        .map_err(|e| StorageError::glommio("open segment for write-through", path, e))?;
    Ok(Some(Rc::new(file)))
}

async fn create_segment(cfg: &LogConfig, seq: u32) -> Result<(Rc<DmaFile>, PathBuf)> {
    let path = segment_path(&cfg.dir, seq);
    create_file(cfg, &path).await
}

/// Creates and preallocates a segment-sized file and makes its existence
/// durable.
async fn create_file(cfg: &LogConfig, path: &Path) -> Result<(Rc<DmaFile>, PathBuf)> {
    let path = path.to_path_buf();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .map_err(|e| StorageError::glommio("create segment", &path, e))?;
    if cfg.preallocate {
        file.pre_allocate(cfg.segment_bytes, false)
            .await
            .map_err(|e| StorageError::glommio("preallocate segment", &path, e))?;
    }
    // The file's existence must be durable before anything in it is.
    sync_dir(&cfg.dir)?;
    Ok((Rc::new(file), path))
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

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("sync dir", dir, e))
}

fn write_sidecar(path: &Path, seq: u32, rows: &[SidecarRow]) -> Result<()> {
    let bytes = sidecar::encode(seq, rows);
    let tmp = path.with_extension("idx.tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| StorageError::io("write segment index", path, e))
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
    let nonzero_tail_bytes = if pos < file_len {
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
