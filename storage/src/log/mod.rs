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
//!
//! Modules: `writer` (appends, the staging buffer, sync rounds), `segments`
//! (rolls, checkpoints, preparing and creating segment files), `reads`,
//! `collector` (retention and space reclaim) and `recovery` (`open`). This
//! file holds the configuration, the public types and the shared state.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;

use event_listener::Event;
use glommio::io::ReadResult;

use crate::error::{PartitionId, Result, StorageError};
use crate::record::{CheckpointRow, RecordKind, RECORD_HEADER_BYTES};
use crate::sidecar::SidecarRow;
use crate::stats::{Stats, StatsSnapshot};
use crate::{EntryLoc, HardState};

mod collector;
mod reads;
mod recovery;
mod segments;
mod writer;

use segments::{
    create_segment, free_path, open_writer, segment_path, sidecar_path, sync_dir, write_sidecar,
    zero_fill_now, Prepared, Segment, FREE_SUFFIX, PREPARE_SUFFIX,
};
use writer::Staging;

/// O_DIRECT alignment used for every write. 4096 covers every device we run
/// on; glommio reports the file's own alignment and we check it is a divisor.
const BLOCK_BYTES: u64 = 4096;
/// Bytes read per call while scanning a segment on recovery.
const SCAN_CHUNK_BYTES: usize = 4 << 20;
/// Segments are addressed with u32 positions.
const SEGMENT_BYTES_LIMIT: u64 = u32::MAX as u64;
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
    /// Write zeros through a new segment file before it takes records, at
    /// most this many bytes per second (0: never). An fdatasync after a
    /// write into blocks written once before has no extent conversion to
    /// journal; on the reference disk it made 4 KiB synced appends several
    /// times faster. A segment started in a recycled file (see
    /// `recycle_segments_max`) needs none. Otherwise the segment opened by
    /// `open` is zeroed at once, and each next one is prepared in the
    /// background while the current one fills, only while the log appends
    /// less than `prezero_pause_above_bytes_per_sec`; a roll that comes
    /// first takes it as far as it got. Default 64 MiB/s.
    pub prezero_bytes_per_sec: u64,
    /// Background zeroing pauses while the log appends faster than this:
    /// a busy log keeps the disk, and its large rounds lose little to the
    /// extent conversion zeroing saves (small records, where it matters,
    /// come at low bandwidth). Default 128 MiB/s.
    pub prezero_pause_above_bytes_per_sec: u64,
    /// Segment files the collector keeps for reuse instead of deleting them
    /// (as databases recycle their WAL files): a later segment starts in
    /// one, whose blocks were all written once, so it needs no zeroing and
    /// no extent conversion. A recycled file still holds its old records;
    /// recovery never reads them (see `record`: each header carries its
    /// segment's seq and the crc of the header before it). Default 4.
    pub recycle_segments_max: usize,
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
    /// A round is written through only when the log is idle (everything
    /// written before is durable, no fdatasync runs, and no append arrived
    /// while the previous round was being written) and the round is small
    /// (at most [`WRITE_THROUGH_BYTES_MAX`]). Other rounds are pipelined. A
    /// lone record then costs one durable write, and a busy log keeps its
    /// overlapping rounds. The size bound matters for a caller that waits
    /// for every round before the next (a Raft loop): its rounds always
    /// look idle, and a multi-megabyte round written through is several
    /// times slower than written and then synced once.
    Adaptive,
}

/// Largest round [`SyncMode::Adaptive`] writes through `O_DSYNC`.
pub const WRITE_THROUGH_BYTES_MAX: usize = 64 << 10;

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
            prezero_pause_above_bytes_per_sec: 128 << 20,
            recycle_segments_max: 4,
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
    /// Segments collected (deleted or recycled).
    pub segments_deleted: u64,
    /// Of those, the files kept in the pool of recycled segment files.
    pub segments_recycled: u64,
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

#[derive(Debug)]
struct Inner {
    cfg: LogConfig,
    parts: HashMap<PartitionId, Partition>,
    segments: BTreeMap<u32, Segment>,
    active_seq: u32,
    staging: Staging,
    /// Staging chunks written and free for reuse (see `Staging`).
    staging_pool: Vec<glommio::io::DmaBuffer>,
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
    /// Recycled segment files (`<seq>.free`, seq the last one each held),
    /// oldest first.
    free_segments: VecDeque<u32>,
    /// The next segment, being zeroed in the background.
    prepared: Option<Prepared>,
    /// Index files of sealed segments being written on the blocking
    /// thread, by segment (see `spawn_sidecar`).
    sidecar_writes: BTreeMap<u32, glommio::Task<()>>,
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

impl ShardLog {
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
        self.sidecars_written().await;
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
        write_sidecar(&sidecar_path(&cfg.dir, seq), seq, &rows, true)?;
        Ok(())
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
}
