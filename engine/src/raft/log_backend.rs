//! [`RaftLog`]: what the Raft layer needs of the log it writes through.
//!
//! The store ([`Store`](super::Store)), the replica
//! ([`PartitionReplica`](super::PartitionReplica)) and the shard loop
//! ([`ShardLoop`](super::ShardLoop)) call exactly these methods, with the
//! semantics [`ShardLog`] documents; `ShardLog` is the implementation a
//! broker runs, and the default type parameter of all three. Another
//! implementation (the cluster simulator's in-memory log with crash
//! semantics) must reproduce them:
//!
//! - an append whose first index is inside the log replaces that entry and
//!   everything after it (Raft's conflict rule); a data entry's base offset
//!   is the partition's next offset, stamped with the entry's term into the
//!   stored batch (`shardmq_schema::batch::stamp`); empty and conf-change
//!   entries take no offsets;
//! - nothing is durable before a [`sync`](RaftLog::sync) that started after
//!   it was written has returned; writes reach the disk in the order they
//!   were made;
//! - [`entries`](RaftLog::entries) stops at a byte budget but always returns
//!   at least one entry;
//! - [`reset`](RaftLog::reset) drops every entry and restarts the partition
//!   at a snapshot point.
//!
//! Shard view: an implementation lives on one shard and is `!Send`, hence
//! `async fn` in the trait without `Send` bounds on its futures.

use shardmq_storage::{
    AppendOutcome, EntryKind, EntryRef, HardState, PartitionId, ShardLog, StorageError, StoredEntry,
};

/// An entry read back from a [`RaftLog`].
pub trait LoggedEntry {
    fn index(&self) -> u64;
    fn term(&self) -> u64;
    fn kind(&self) -> EntryKind;
    /// The stored payload (a data entry's batch as stamped at its append).
    fn payload(&self) -> &[u8];
}

impl LoggedEntry for StoredEntry {
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

/// The log a shard's Raft groups write through; one per shard, shared by
/// every group of the shard (clones are the same log).
#[allow(async_fn_in_trait)] // Shard-local: its futures are never sent.
pub trait RaftLog: Clone {
    /// An entry as [`entries`](Self::entries) returns it.
    type Entry: LoggedEntry;

    /// The partitions in this log, sorted.
    fn partitions(&self) -> Vec<PartitionId>;

    /// Creates an empty partition (first index 1, offset 0); a no-op if it
    /// exists. Durable after the next sync.
    async fn create_partition(&self, id: PartitionId) -> Result<(), StorageError>;

    /// First index (entries before it are compacted).
    fn first_index(&self, id: PartitionId) -> Result<u64, StorageError>;

    /// Last index (`first_index - 1` when empty).
    fn last_index(&self, id: PartitionId) -> Result<u64, StorageError>;

    /// Term of `index`, including the term just before the first index.
    fn term(&self, id: PartitionId, index: u64) -> Result<u64, StorageError>;

    /// The hard state last written (durable after the next sync).
    fn hard_state(&self, id: PartitionId) -> Result<HardState, StorageError>;

    /// The first offset still stored (log start offset).
    fn log_start_offset(&self, id: PartitionId) -> Result<u64, StorageError>;

    /// Appends entries (see the module documentation for the rules).
    async fn append(
        &self,
        id: PartitionId,
        entries: &[EntryRef<'_>],
    ) -> Result<AppendOutcome, StorageError>;

    /// Writes Raft's hard state. Durable after the next sync.
    async fn set_hard_state(&self, id: PartitionId, hard: HardState) -> Result<(), StorageError>;

    /// Drops every entry and restarts the partition at `first_index` with
    /// offsets from `first_offset`. Durable after the next sync.
    async fn reset(
        &self,
        id: PartitionId,
        first_index: u64,
        term_before_first: u64,
        first_offset: u64,
    ) -> Result<(), StorageError>;

    /// Makes everything written before the call durable.
    async fn sync(&self) -> Result<(), StorageError>;

    /// Entries `lo..hi`, stopping once `bytes_max` payload bytes are
    /// reached but always returning at least one.
    async fn entries(
        &self,
        id: PartitionId,
        lo: u64,
        hi: u64,
        bytes_max: Option<u64>,
    ) -> Result<Vec<Self::Entry>, StorageError>;
}

impl RaftLog for ShardLog {
    type Entry = StoredEntry;

    fn partitions(&self) -> Vec<PartitionId> {
        ShardLog::partitions(self)
    }

    async fn create_partition(&self, id: PartitionId) -> Result<(), StorageError> {
        ShardLog::create_partition(self, id).await
    }

    fn first_index(&self, id: PartitionId) -> Result<u64, StorageError> {
        ShardLog::first_index(self, id)
    }

    fn last_index(&self, id: PartitionId) -> Result<u64, StorageError> {
        ShardLog::last_index(self, id)
    }

    fn term(&self, id: PartitionId, index: u64) -> Result<u64, StorageError> {
        ShardLog::term(self, id, index)
    }

    fn hard_state(&self, id: PartitionId) -> Result<HardState, StorageError> {
        ShardLog::hard_state(self, id)
    }

    fn log_start_offset(&self, id: PartitionId) -> Result<u64, StorageError> {
        ShardLog::log_start_offset(self, id)
    }

    async fn append(
        &self,
        id: PartitionId,
        entries: &[EntryRef<'_>],
    ) -> Result<AppendOutcome, StorageError> {
        ShardLog::append(self, id, entries).await
    }

    async fn set_hard_state(&self, id: PartitionId, hard: HardState) -> Result<(), StorageError> {
        ShardLog::set_hard_state(self, id, hard).await
    }

    async fn reset(
        &self,
        id: PartitionId,
        first_index: u64,
        term_before_first: u64,
        first_offset: u64,
    ) -> Result<(), StorageError> {
        ShardLog::reset(self, id, first_index, term_before_first, first_offset).await
    }

    async fn sync(&self) -> Result<(), StorageError> {
        ShardLog::sync(self).await
    }

    async fn entries(
        &self,
        id: PartitionId,
        lo: u64,
        hi: u64,
        bytes_max: Option<u64>,
    ) -> Result<Vec<StoredEntry>, StorageError> {
        ShardLog::entries(self, id, lo, hi, bytes_max).await
    }
}
