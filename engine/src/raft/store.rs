//! raft-rs [`Storage`] for one partition over the shard's log (a
//! [`RaftLog`]: the [`ShardLog`] in a broker).
//!
//! Hot path (replicate, commit): entries are served from an in-memory cache
//! of the partition's recent entries; payloads are `Bytes` shared with raft's
//! own copies, never copied.
//!
//! raft's `Storage` trait is synchronous and the shard log is async, so the
//! store keeps every entry raft may need *synchronously* in memory: all
//! entries after the applied index (raft reads them to build a Ready's
//! committed entries, and that read cannot be deferred), plus recent applied
//! entries up to the replica's [`CacheShare`] of its shard's cache budget
//! (none at all while its group sleeps). Anything older is read on demand:
//! `entries()` answers `LogTemporarilyUnavailable` after recording a
//! [`PendingFetch`]; the shard loop reads the range from the log and hands it
//! back through [`PartitionReplica::on_entries_fetched`](super::PartitionReplica::on_entries_fetched),
//! which calls raft's `RawNode::on_entries_fetched`. Only raft's
//! send-append path asks with a context that allows this.
//!
//! Entry mapping. Raft `EntryNormal` with data is a record batch
//! ([`EntryKind::Data`]); `EntryNormal` without data is [`EntryKind::Empty`]
//! (a new leader's no-op); `EntryConfChange`/`EntryConfChangeV2` is
//! [`EntryKind::ConfChange`], stored with a one-byte marker in front of the
//! encoded change so the type survives a restart. Entry `context` is not
//! stored: shardmq never proposes with one.
//!
//! Configuration. Storage does not persist a `ConfState` yet: the caller
//! gives the partition's voters when it opens the store. Conf-change entries
//! are applied as they commit; re-applying the committed conf changes found
//! in the log on restart is left to the membership-change work.
//!
//! Snapshots of a partition carry metadata only, since the data is the log
//! itself: index = first index − 1, its term, the conf state and, in
//! `data`, the log start offset (8 bytes, little endian). A follower that
//! receives one restarts its partition at that point with
//! [`ShardLog::reset`]. A group whose state machine is not its log (the
//! controller) adds its state after those 8 bytes
//! ([`Store::set_snapshot_data`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use ::raft::eraftpb::{ConfState, Entry, EntryType, HardState as RaftHardState, Snapshot};
use ::raft::{GetEntriesContext, RaftState, Storage};
use bytes::Bytes;
use shardmq_storage::{EntryKind, HardState, PartitionId, ShardLog, StorageError};

use super::log_backend::{LoggedEntry, RaftLog};

/// Marker byte in front of a stored `EntryConfChange`.
const CONF_CHANGE_V1: u8 = 1;
/// Marker byte in front of a stored `EntryConfChangeV2`.
const CONF_CHANGE_V2: u8 = 2;
/// Bound on the async fetches a store records between two loop iterations;
/// beyond it a miss is simply not recorded (raft asks again on the next
/// heartbeat response).
pub const PENDING_FETCHES_MAX: usize = 64;

/// One entry in the form the shard log stores it. `payload` is shared with
/// raft's copy of the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    /// The record batch for data entries, the marker byte and encoded change
    /// for conf changes, nothing for empty entries.
    pub payload: Bytes,
}

impl LogEntry {
    /// Maps a raft entry to what storage stores.
    pub fn from_raft(e: &Entry) -> LogEntry {
        let (kind, payload) = match e.get_entry_type() {
            EntryType::EntryNormal if e.data.is_empty() => (EntryKind::Empty, Bytes::new()),
            EntryType::EntryNormal => (EntryKind::Data, e.data.clone()),
            EntryType::EntryConfChange => {
                (EntryKind::ConfChange, with_marker(CONF_CHANGE_V1, &e.data))
            }
            EntryType::EntryConfChangeV2 => {
                (EntryKind::ConfChange, with_marker(CONF_CHANGE_V2, &e.data))
            }
        };
        LogEntry {
            index: e.index,
            term: e.term,
            kind,
            payload,
        }
    }
}

fn with_marker(marker: u8, data: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(marker);
    v.extend_from_slice(data);
    Bytes::from(v)
}

/// Maps an entry read back from the log to raft's form. The payload is
/// copied: glommio's read buffers are `!Send` and raft's `Bytes` must be
/// `Send`. Only entries older than the cache are read back.
pub fn raft_entry_from_stored(e: &impl LoggedEntry) -> Entry {
    let mut out = Entry {
        index: e.index(),
        term: e.term(),
        ..Default::default()
    };
    match e.kind() {
        EntryKind::Data => {
            out.set_entry_type(EntryType::EntryNormal);
            out.data = Bytes::copy_from_slice(e.payload());
        }
        EntryKind::Empty => out.set_entry_type(EntryType::EntryNormal),
        EntryKind::ConfChange => {
            let (marker, rest) = e
                .payload()
                .split_first()
                .expect("a stored conf change carries its marker byte");
            out.set_entry_type(match *marker {
                CONF_CHANGE_V1 => EntryType::EntryConfChange,
                CONF_CHANGE_V2 => EntryType::EntryConfChangeV2,
                other => panic!("unknown conf change marker {other} at index {}", e.index()),
            });
            out.data = Bytes::copy_from_slice(rest);
        }
    }
    out
}

/// A read raft asked for that the cache could not answer; the shard loop
/// performs it and calls `on_entries_fetched` with `context`.
#[derive(Debug)]
pub struct PendingFetch {
    pub lo: u64,
    pub hi: u64,
    pub max_size: Option<u64>,
    pub context: GetEntriesContext,
}

/// Contiguous recent entries `first..first + entries.len()`.
#[derive(Debug, Default)]
struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl EntryCache {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    fn get(&self, index: u64) -> Option<&Entry> {
        let first = self.first()?;
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize)
    }

    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.index >= index) {
            let e = self.entries.pop_back().expect("checked");
            self.bytes -= e.data.len();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Appends with raft's conflict rule: an entry at an index already
    /// cached replaces it and everything after it.
    fn append(&mut self, new: &[Entry]) {
        let Some(head) = new.first() else { return };
        self.truncate_from(head.index);
        if self
            .entries
            .back()
            .is_some_and(|last| last.index + 1 != head.index)
        {
            // A gap (only after a reset): the cache restarts at `head`.
            self.clear();
        }
        for e in new {
            self.bytes += e.data.len();
            self.entries.push_back(e.clone());
        }
    }

    /// Drops the oldest entries while over `bytes_max`, but never one after
    /// `applied`: raft may need those synchronously.
    fn evict(&mut self, applied: u64, bytes_max: usize) {
        while self.bytes > bytes_max {
            match self.entries.front() {
                Some(e) if e.index <= applied => {
                    self.bytes -= e.data.len();
                    self.entries.pop_front();
                }
                _ => break,
            }
        }
    }
}

#[derive(Debug)]
struct StoreState {
    conf_state: ConfState,
    cache: EntryCache,
    applied: u64,
    /// Entries just read for an async fetch, served while raft re-runs the
    /// request in `on_entries_fetched`, then dropped.
    fetched: Vec<Entry>,
    pending: Vec<PendingFetch>,
    /// The state machine's snapshot at an index, for a group whose state
    /// is not its log.
    snapshot_data: Option<(u64, Bytes)>,
}

/// Bytes of applied entries each replica of a shard may keep cached: the
/// shard's budget divided among its replicas, shared by all their stores
/// (one cell per shard, updated as replicas come and go).
#[derive(Debug, Clone)]
pub struct CacheShare(Rc<Cell<usize>>);

impl CacheShare {
    /// A share of `bytes` for every replica.
    pub fn fixed(bytes: usize) -> Self {
        CacheShare(Rc::new(Cell::new(bytes)))
    }

    /// The share now.
    pub fn get(&self) -> usize {
        self.0.get()
    }

    /// Sets every replica's share; each store trims to it as it next
    /// caches or applies.
    pub fn set(&self, bytes: usize) {
        self.0.set(bytes);
    }
}

/// raft-rs storage of one partition replica. Shard view: lives on the shard
/// that owns the partition's log; `!Send`.
#[derive(Debug)]
pub struct Store<L: RaftLog = ShardLog> {
    partition: PartitionId,
    log: L,
    cache_share: CacheShare,
    state: RefCell<StoreState>,
}

fn to_raft_error(e: StorageError) -> ::raft::Error {
    match e {
        StorageError::Compacted { .. } => ::raft::Error::Store(::raft::StorageError::Compacted),
        StorageError::Unavailable { .. } => ::raft::Error::Store(::raft::StorageError::Unavailable),
        other => ::raft::Error::Store(::raft::StorageError::Other(Box::new(other))),
    }
}

impl<L: RaftLog> Store<L> {
    /// Opens the store of `partition` (creating the partition if the log
    /// does not have it) with the given voters and learners. Reads every
    /// entry after the persisted commit index into the cache, since raft
    /// may ask for any of them synchronously.
    pub async fn open(
        log: &L,
        partition: PartitionId,
        voters: &[u64],
        learners: &[u64],
        cache_share: CacheShare,
    ) -> Result<Store<L>, StorageError> {
        if !log.partitions().contains(&partition) {
            log.create_partition(partition).await?;
        }
        let applied = Self::applied_on_open(log, partition)?;
        let last = log.last_index(partition)?;
        let mut cache = EntryCache::default();
        if last > applied {
            let stored = log.entries(partition, applied + 1, last + 1, None).await?;
            let entries: Vec<Entry> = stored.iter().map(raft_entry_from_stored).collect();
            cache.append(&entries);
        }
        let conf_state = ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..Default::default()
        };
        Ok(Store {
            partition,
            log: log.clone(),
            cache_share,
            state: RefCell::new(StoreState {
                conf_state,
                cache,
                applied,
                fetched: Vec::new(),
                pending: Vec::new(),
                snapshot_data: None,
            }),
        })
    }

    /// The index raft may treat as applied on open: the persisted commit
    /// (the log is the state machine), never before the compaction point.
    pub(crate) fn applied_on_open(log: &L, partition: PartitionId) -> Result<u64, StorageError> {
        let hard = log.hard_state(partition)?;
        Ok(hard.commit.max(log.first_index(partition)? - 1))
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// The shard log this store reads.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// Records entries raft handed out to be appended. The replica calls it
    /// as it takes a Ready, so the cache already mirrors the log the caller
    /// is about to write (raft reads its own copy until `advance`).
    pub fn on_appended(&self, entries: &[Entry]) {
        let mut st = self.state.borrow_mut();
        st.cache.append(entries);
        let applied = st.applied;
        st.cache.evict(applied, self.cache_share.get());
    }

    /// Records that the log restarted after a snapshot at `index`.
    pub fn on_reset(&self, index: u64, conf_state: ConfState) {
        let mut st = self.state.borrow_mut();
        st.cache.clear();
        st.applied = index;
        st.conf_state = conf_state;
    }

    /// Records the applied index (entries up to it may leave the cache).
    pub fn set_applied(&self, applied: u64) {
        let mut st = self.state.borrow_mut();
        if applied > st.applied {
            st.applied = applied;
            st.cache.evict(applied, self.cache_share.get());
        }
    }

    /// Drops every applied entry from the cache: the group sleeps, so every
    /// follower has the whole log, and cached payloads would only hold on
    /// to the (larger) network or request buffers they are slices of.
    pub fn drop_applied_cache(&self) {
        let mut st = self.state.borrow_mut();
        let applied = st.applied;
        st.cache.evict(applied, 0);
    }

    /// Replaces the conf state (after a conf change applied).
    pub fn set_conf_state(&self, conf_state: ConfState) {
        self.state.borrow_mut().conf_state = conf_state;
    }

    /// Records the state machine's snapshot `data` taken at `index`; raft
    /// sends it with the log start to a follower behind the compaction
    /// point once the log is compacted to `index + 1`.
    pub fn set_snapshot_data(&self, index: u64, data: Bytes) {
        self.state.borrow_mut().snapshot_data = Some((index, data));
    }

    pub fn conf_state(&self) -> ConfState {
        self.state.borrow().conf_state.clone()
    }

    /// Bytes of payload held by the cache.
    pub fn cache_bytes(&self) -> usize {
        self.state.borrow().cache.bytes
    }

    /// The first index the cache holds, if any.
    pub fn cache_first_index(&self) -> Option<u64> {
        self.state.borrow().cache.first()
    }

    /// Takes the reads raft is waiting for.
    pub fn take_pending_fetches(&self) -> Vec<PendingFetch> {
        std::mem::take(&mut self.state.borrow_mut().pending)
    }

    /// Makes `entries` (a fetched range) readable until
    /// [`clear_fetched`](Self::clear_fetched).
    pub(crate) fn set_fetched(&self, entries: Vec<Entry>) {
        self.state.borrow_mut().fetched = entries;
    }

    pub(crate) fn clear_fetched(&self) {
        self.state.borrow_mut().fetched.clear();
    }

    fn lookup(st: &StoreState, index: u64) -> Option<&Entry> {
        st.cache.get(index).or_else(|| {
            let first = st.fetched.first()?.index;
            if index < first {
                return None;
            }
            st.fetched.get((index - first) as usize)
        })
    }
}

impl<L: RaftLog> Storage for Store<L> {
    fn initial_state(&self) -> ::raft::Result<RaftState> {
        let hard: HardState = self.log.hard_state(self.partition).map_err(to_raft_error)?;
        // The commit index is persisted lazily (with the next sync), and a
        // log is compacted up to its applied index, so after a crash the
        // persisted commit may lie before the compaction point. Everything
        // compacted was committed; raft-rs refuses a commit below
        // `first_index - 1` as corrupt state.
        let first = self.first_index()?;
        let hs = RaftHardState {
            term: hard.term,
            vote: hard.vote,
            commit: hard.commit.max(first - 1),
            ..Default::default()
        };
        Ok(RaftState::new(hs, self.state.borrow().conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> ::raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let first = self.first_index()?;
        if low < first {
            return Err(::raft::Error::Store(::raft::StorageError::Compacted));
        }
        let last = self.last_index()?;
        assert!(
            high <= last + 1,
            "partition {}: entries({low}, {high}) past last index {last}",
            self.partition
        );
        let mut st = self.state.borrow_mut();
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let Some(e) = Self::lookup(&st, index) else {
                break;
            };
            size += u64::from(::protobuf::Message::compute_size(e));
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                break;
            }
            out.push(e.clone());
        }
        if !out.is_empty() || low == high {
            return Ok(out);
        }
        // `low` is neither cached nor fetched.
        assert!(
            context.can_async(),
            "partition {}: entry {low} (applied {}) must be cached for a synchronous read",
            self.partition,
            st.applied
        );
        let duplicate = st.pending.iter().any(|f| f.lo == low);
        if !duplicate && st.pending.len() < PENDING_FETCHES_MAX {
            st.pending.push(PendingFetch {
                lo: low,
                hi: high,
                max_size,
                context,
            });
        }
        Err(::raft::Error::Store(
            ::raft::StorageError::LogTemporarilyUnavailable,
        ))
    }

    fn term(&self, idx: u64) -> ::raft::Result<u64> {
        if let Some(e) = self.state.borrow().cache.get(idx) {
            return Ok(e.term);
        }
        self.log.term(self.partition, idx).map_err(to_raft_error)
    }

    fn first_index(&self) -> ::raft::Result<u64> {
        self.log.first_index(self.partition).map_err(to_raft_error)
    }

    fn last_index(&self) -> ::raft::Result<u64> {
        self.log.last_index(self.partition).map_err(to_raft_error)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> ::raft::Result<Snapshot> {
        let first = self.first_index()?;
        let index = first - 1;
        if index < request_index {
            return Err(::raft::Error::Store(
                ::raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = self.term(index)?;
        meta.set_conf_state(self.state.borrow().conf_state.clone());
        let start_offset = self
            .log
            .log_start_offset(self.partition)
            .map_err(to_raft_error)?;
        let st = self.state.borrow();
        let extra = match &st.snapshot_data {
            Some((at, data)) if *at == index => data.clone(),
            // A group with a state machine of its own has no snapshot at
            // this index yet: raft asks again later.
            Some(_) => {
                return Err(::raft::Error::Store(
                    ::raft::StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
            None => Bytes::new(),
        };
        let mut data = Vec::with_capacity(8 + extra.len());
        data.extend_from_slice(&start_offset.to_le_bytes());
        data.extend_from_slice(&extra);
        snap.data = Bytes::from(data);
        Ok(snap)
    }
}

/// Splits a snapshot's data into the log start offset and what the group's
/// state machine added after it.
pub fn split_snapshot_data(snap: &Snapshot) -> Option<(u64, Bytes)> {
    let head: [u8; 8] = snap.data.get(..8)?.try_into().ok()?;
    Some((u64::from_le_bytes(head), snap.data.slice(8..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from_static(data),
            ..Default::default()
        }
    }

    #[test]
    fn cache_applies_the_conflict_rule_and_evicts_only_applied_entries() {
        let mut c = EntryCache::default();
        c.append(&[entry(1, 1, b"aa"), entry(2, 1, b"bb"), entry(3, 1, b"cc")]);
        c.append(&[entry(2, 2, b"x")]);
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.get(2).unwrap().term, 2);
        assert_eq!(c.bytes, 3);
        c.evict(0, 0);
        assert_eq!(c.first(), Some(1), "unapplied entries stay");
        c.evict(1, 0);
        assert_eq!(c.first(), Some(2));
        c.append(&[entry(7, 3, b"z")]);
        assert_eq!(c.first(), Some(7), "a gap restarts the cache");
    }

    #[test]
    fn entry_kinds_round_trip_through_the_stored_form() {
        let mut cc = entry(4, 2, b"change");
        cc.set_entry_type(EntryType::EntryConfChangeV2);
        let stored = LogEntry::from_raft(&cc);
        assert_eq!(stored.kind, EntryKind::ConfChange);
        assert_eq!(stored.payload[0], CONF_CHANGE_V2);
        assert_eq!(
            LogEntry::from_raft(&entry(5, 2, b"")).kind,
            EntryKind::Empty
        );
        assert_eq!(
            LogEntry::from_raft(&entry(6, 2, b"b")).kind,
            EntryKind::Data
        );
    }
}
