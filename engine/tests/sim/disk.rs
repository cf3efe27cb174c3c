//! The simulated disk: [`SimLog`], an in-memory shard log with the
//! semantics `ShardLog` documents and the crash behaviour of a real disk.
//!
//! Every write (create, append, truncate, hard state, compact, reset) is a
//! record in one stream, as in the shard log. A record is durable once a
//! [`sync`](RaftLog::sync) after it has returned. A crash keeps the durable
//! records and a prefix, possibly empty, of the ones written since the last
//! sync (a disk that got some of them down before the power went; the
//! first record lost is the torn one, which recovery drops), and the log
//! then reads back exactly what survived.
//!
//! A test-only switch, [`Disk::fsync_lies`], makes `sync` return without
//! making anything durable (writes reach the disk only when the simulator
//! says the device flushed): the planted bug the simulator must catch.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;
use shardmq_engine::raft::{LoggedEntry, RaftLog};
use shardmq_schema::batch::RecordBatchView;
use shardmq_storage::{AppendOutcome, EntryKind, EntryRef, HardState, PartitionId, StorageError};

use super::rng::Rng;

/// One stored entry. `payload` is what the shard log would store: a data
/// entry's batch stamped with its base offset and term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    pub payload: Bytes,
    pub base_offset: u64,
    pub offset_count: u32,
}

impl LoggedEntry for Stored {
    fn index(&self) -> u64 {
        self.index
    }

    fn term(&self) -> u64 {
        self.term
    }

    fn kind(&self) -> EntryKind {
        self.kind
    }

    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// A record batch read by offset.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub index: u64,
    pub base_offset: u64,
    pub offset_count: u32,
    pub bytes: Bytes,
}

#[derive(Debug, Clone)]
struct Part {
    first_index: u64,
    term_before_first: u64,
    first_offset: u64,
    next_offset: u64,
    hard: HardState,
    entries: VecDeque<Stored>,
}

impl Part {
    fn empty() -> Part {
        Part {
            first_index: 1,
            term_before_first: 0,
            first_offset: 0,
            next_offset: 0,
            hard: HardState::default(),
            entries: VecDeque::new(),
        }
    }

    fn last_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64 - 1
    }

    fn entry(&self, index: u64) -> Option<&Stored> {
        if index < self.first_index {
            return None;
        }
        self.entries.get((index - self.first_index) as usize)
    }

    fn drop_suffix(&mut self, from: u64) {
        let keep = from.saturating_sub(self.first_index) as usize;
        self.entries.truncate(keep.min(self.entries.len()));
        self.next_offset = self.entries.back().map_or(self.first_offset, |e| {
            e.base_offset + u64::from(e.offset_count)
        });
    }

    fn drop_prefix(&mut self, first_index: u64, term_before: u64, first_offset: u64) {
        let n = (first_index.saturating_sub(self.first_index) as usize).min(self.entries.len());
        self.entries.drain(..n);
        self.first_index = first_index;
        self.term_before_first = term_before;
        self.first_offset = first_offset;
        if self.entries.is_empty() {
            self.next_offset = first_offset;
        }
    }
}

/// One record of the write stream, with everything its replay needs.
#[derive(Debug, Clone)]
enum Op {
    Create(PartitionId),
    Append(PartitionId, Stored),
    Truncate(PartitionId, u64),
    Hard(PartitionId, HardState),
    /// First index, term before it, first offset.
    Compact(PartitionId, u64, u64, u64),
}

#[derive(Debug, Clone, Default)]
struct State {
    parts: BTreeMap<PartitionId, Part>,
}

impl State {
    /// Applies a record already checked when it was written.
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Create(id) => {
                self.parts.entry(*id).or_insert_with(Part::empty);
            }
            Op::Append(id, e) => {
                let p = self
                    .parts
                    .get_mut(id)
                    .expect("replayed append has its partition");
                if e.index <= p.last_index() {
                    p.drop_suffix(e.index);
                }
                p.next_offset = e.base_offset + u64::from(e.offset_count);
                p.entries.push_back(e.clone());
            }
            Op::Truncate(id, index) => {
                if let Some(p) = self.parts.get_mut(id) {
                    p.drop_suffix(*index);
                }
            }
            Op::Hard(id, hard) => {
                if let Some(p) = self.parts.get_mut(id) {
                    p.hard = *hard;
                }
            }
            Op::Compact(id, first, term, offset) => {
                if let Some(p) = self.parts.get_mut(id) {
                    p.drop_prefix(*first, *term, *offset);
                }
            }
        }
    }

    fn part(&self, id: PartitionId) -> Result<&Part, StorageError> {
        self.parts
            .get(&id)
            .ok_or(StorageError::UnknownPartition(id))
    }
}

/// What a crash left of the unsynced writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashReport {
    pub unsynced: usize,
    pub kept: usize,
}

/// The device under one broker's log: durable state, the writes since the
/// last sync, and what the log reads (durable plus unsynced).
#[derive(Debug)]
pub struct Disk {
    durable: State,
    pending: Vec<Op>,
    current: State,
    /// The planted bug: `sync` returns without making anything durable.
    pub fsync_lies: bool,
    /// The next `sync` crashes the broker part-way (returns an error after
    /// the crash): a crash in the middle of a loop iteration.
    pub crash_at_next_sync: Option<Rng>,
    /// Set when a crash happened in `sync`.
    pub crashed_in_sync: Option<CrashReport>,
    /// The next `sync` yields once before it runs, as a real one waits for
    /// the device, so other tasks of the shard run meanwhile.
    pub yield_next_sync: bool,
    pub syncs: u64,
    pub records: u64,
}

/// Pending once, then ready (its waker is woken at once).
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// An in-memory shard log over a [`Disk`]. Clones are the same log.
#[derive(Debug, Clone)]
pub struct SimLog {
    disk: Rc<RefCell<Disk>>,
}

fn batch_facts(id: PartitionId, index: u64, payload: &[u8]) -> Result<u32, StorageError> {
    let view =
        RecordBatchView::parse_verified(payload).map_err(|source| StorageError::BadBatch {
            partition: id,
            index,
            source,
        })?;
    Ok(view.offset_count())
}

impl Default for SimLog {
    fn default() -> Self {
        Self::new()
    }
}

impl SimLog {
    pub fn new() -> SimLog {
        SimLog {
            disk: Rc::new(RefCell::new(Disk {
                durable: State::default(),
                pending: Vec::new(),
                current: State::default(),
                fsync_lies: false,
                crash_at_next_sync: None,
                crashed_in_sync: None,
                yield_next_sync: false,
                syncs: 0,
                records: 0,
            })),
        }
    }

    pub fn disk(&self) -> std::cell::RefMut<'_, Disk> {
        self.disk.borrow_mut()
    }

    fn write(&self, op: Op) {
        let mut d = self.disk.borrow_mut();
        d.current.apply(&op);
        d.pending.push(op);
        d.records += 1;
    }

    /// Power loss: keeps the durable records and a prefix of the unsynced
    /// ones chosen by `rng` (none when `keep_unsynced` is false); the log
    /// then reads what survived, as after recovery.
    pub fn crash(&self, rng: &mut Rng, keep_unsynced: bool) -> CrashReport {
        self.disk.borrow_mut().crash(rng, keep_unsynced)
    }

    /// The device writes its cache back (what a lying fsync skipped).
    pub fn write_back(&self) {
        self.disk.borrow_mut().flush();
    }

    // ----- reads beyond the Raft layer's needs (the broker's read path) ----

    /// The offset after entry `index` (`ShardLog::offset_after`).
    pub fn offset_after(&self, id: PartitionId, index: u64) -> Result<u64, StorageError> {
        let d = self.disk.borrow();
        let p = d.current.part(id)?;
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

    /// Record batches from the one holding `offset`, up to `bytes_max` (at
    /// least one) and never past index `index_max`
    /// (`ShardLog::read_from_offset`).
    pub fn read_from_offset(
        &self,
        id: PartitionId,
        offset: u64,
        bytes_max: u64,
        index_max: u64,
    ) -> Result<Vec<Fetched>, StorageError> {
        let d = self.disk.borrow();
        let p = d.current.part(id)?;
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
        let mut out = Vec::new();
        let mut total = 0u64;
        for e in p.entries.iter().skip(start) {
            if e.index > index_max {
                break;
            }
            if e.kind != EntryKind::Data {
                continue;
            }
            total += e.payload.len() as u64;
            if !out.is_empty() && total > bytes_max {
                break;
            }
            out.push(Fetched {
                index: e.index,
                base_offset: e.base_offset,
                offset_count: e.offset_count,
                bytes: e.payload.clone(),
            });
        }
        Ok(out)
    }

    /// The stored entry at `index`, if the log holds it.
    pub fn entry(&self, id: PartitionId, index: u64) -> Option<Stored> {
        self.disk
            .borrow()
            .current
            .parts
            .get(&id)?
            .entry(index)
            .cloned()
    }

    /// Moves the first index forward (`ShardLog::compact`, what retention
    /// does).
    pub fn compact(&self, id: PartitionId, first_index: u64) -> Result<(), StorageError> {
        let op = {
            let d = self.disk.borrow();
            let p = d.current.part(id)?;
            if first_index <= p.first_index {
                return Ok(());
            }
            if first_index > p.last_index() + 1 {
                return Err(StorageError::Unavailable {
                    partition: id,
                    index: first_index - 1,
                    last: p.last_index(),
                });
            }
            let term_before = p
                .entry(first_index - 1)
                .map(|e| e.term)
                .unwrap_or(p.term_before_first);
            let first_offset = p
                .entry(first_index)
                .map(|e| e.base_offset)
                .unwrap_or(p.next_offset);
            Op::Compact(id, first_index, term_before, first_offset)
        };
        self.write(op);
        Ok(())
    }
}

impl Disk {
    fn flush(&mut self) {
        for op in self.pending.drain(..) {
            self.durable.apply(&op);
        }
    }

    fn crash(&mut self, rng: &mut Rng, keep_unsynced: bool) -> CrashReport {
        let unsynced = self.pending.len();
        let kept = if keep_unsynced && unsynced > 0 {
            rng.below(unsynced as u64 + 1) as usize
        } else {
            0
        };
        for op in self.pending.drain(..kept) {
            self.durable.apply(&op);
        }
        self.pending.clear();
        self.current = self.durable.clone();
        CrashReport { unsynced, kept }
    }
}

impl RaftLog for SimLog {
    type Entry = Stored;

    fn partitions(&self) -> Vec<PartitionId> {
        self.disk.borrow().current.parts.keys().copied().collect()
    }

    async fn create_partition(&self, id: PartitionId) -> Result<(), StorageError> {
        if self.disk.borrow().current.parts.contains_key(&id) {
            return Ok(());
        }
        self.write(Op::Create(id));
        Ok(())
    }

    fn first_index(&self, id: PartitionId) -> Result<u64, StorageError> {
        Ok(self.disk.borrow().current.part(id)?.first_index)
    }

    fn last_index(&self, id: PartitionId) -> Result<u64, StorageError> {
        Ok(self.disk.borrow().current.part(id)?.last_index())
    }

    fn term(&self, id: PartitionId, index: u64) -> Result<u64, StorageError> {
        let d = self.disk.borrow();
        let p = d.current.part(id)?;
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

    fn hard_state(&self, id: PartitionId) -> Result<HardState, StorageError> {
        Ok(self.disk.borrow().current.part(id)?.hard)
    }

    fn log_start_offset(&self, id: PartitionId) -> Result<u64, StorageError> {
        Ok(self.disk.borrow().current.part(id)?.first_offset)
    }

    async fn append(
        &self,
        id: PartitionId,
        entries: &[EntryRef<'_>],
    ) -> Result<AppendOutcome, StorageError> {
        let mut outcome: Option<AppendOutcome> = None;
        for (i, e) in entries.iter().enumerate() {
            if i > 0 && e.index != entries[i - 1].index + 1 {
                return Err(StorageError::InvalidArgument(format!(
                    "partition {id}: entries not consecutive"
                )));
            }
            let offset_count = match e.kind {
                EntryKind::Data => batch_facts(id, e.index, e.payload)?,
                EntryKind::Empty if !e.payload.is_empty() => {
                    return Err(StorageError::InvalidArgument(format!(
                        "partition {id}: empty entry {} has a payload",
                        e.index
                    )))
                }
                _ => 0,
            };
            let stored = {
                let d = self.disk.borrow();
                let p = d.current.part(id)?;
                if e.index < p.first_index || e.index > p.last_index() + 1 {
                    return Err(StorageError::IndexGap {
                        partition: id,
                        index: e.index,
                        first: p.first_index,
                        last: p.last_index(),
                    });
                }
                // The offset the entry gets is the partition's next offset
                // once the conflict rule has cut the suffix.
                let base_offset = if e.index <= p.last_index() {
                    match p.entry(e.index - 1) {
                        Some(prev) => prev.base_offset + u64::from(prev.offset_count),
                        None => p.first_offset,
                    }
                } else {
                    p.next_offset
                };
                let payload = if e.kind == EntryKind::Data {
                    let mut v = e.payload.to_vec();
                    shardmq_schema::batch::stamp(&mut v, base_offset as i64, e.term as i32);
                    Bytes::from(v)
                } else {
                    Bytes::copy_from_slice(e.payload)
                };
                Stored {
                    index: e.index,
                    term: e.term,
                    kind: e.kind,
                    payload,
                    base_offset,
                    offset_count,
                }
            };
            let o = AppendOutcome {
                base_offset: stored.base_offset,
                next_offset: stored.base_offset + u64::from(offset_count),
                last_index: e.index,
            };
            self.write(Op::Append(id, stored));
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
                let d = self.disk.borrow();
                let p = d.current.part(id)?;
                Ok(AppendOutcome {
                    base_offset: p.next_offset,
                    next_offset: p.next_offset,
                    last_index: p.last_index(),
                })
            }
        }
    }

    async fn set_hard_state(&self, id: PartitionId, hard: HardState) -> Result<(), StorageError> {
        self.disk.borrow().current.part(id)?;
        self.write(Op::Hard(id, hard));
        Ok(())
    }

    async fn reset(
        &self,
        id: PartitionId,
        first_index: u64,
        term_before_first: u64,
        first_offset: u64,
    ) -> Result<(), StorageError> {
        if first_index == 0 {
            return Err(StorageError::InvalidArgument(
                "first_index must be at least 1".into(),
            ));
        }
        let cut = {
            let d = self.disk.borrow();
            let p = d.current.part(id)?;
            first_index.min(p.last_index() + 1).max(p.first_index)
        };
        self.write(Op::Truncate(id, cut));
        self.write(Op::Compact(
            id,
            first_index,
            term_before_first,
            first_offset,
        ));
        Ok(())
    }

    async fn sync(&self) -> Result<(), StorageError> {
        let yield_first = std::mem::take(&mut self.disk.borrow_mut().yield_next_sync);
        if yield_first {
            YieldOnce(false).await;
        }
        let mut d = self.disk.borrow_mut();
        d.syncs += 1;
        if let Some(mut rng) = d.crash_at_next_sync.take() {
            let report = d.crash(&mut rng, true);
            d.crashed_in_sync = Some(report);
            return Err(StorageError::Poisoned(
                "simulated power loss during a sync".into(),
            ));
        }
        if !d.fsync_lies {
            d.flush();
        }
        Ok(())
    }

    async fn entries(
        &self,
        id: PartitionId,
        lo: u64,
        hi: u64,
        bytes_max: Option<u64>,
    ) -> Result<Vec<Stored>, StorageError> {
        let d = self.disk.borrow();
        let p = d.current.part(id)?;
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
        let mut out = Vec::new();
        for index in lo..hi {
            let e = p.entry(index).expect("index within bounds");
            total += e.payload.len() as u64;
            if !out.is_empty() && total > budget {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }
}
