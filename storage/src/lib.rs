//! `shardmq-storage`: the shard log, which is at once every partition's
//! message log and its Raft log. A produced record batch is written once per
//! replica: the Raft entry *is* the stored batch.
//!
//! One [`ShardLog`] per shard (glommio executor) holds the partitions of that
//! shard in one shared, segmented, append-only log written with O_DIRECT
//! through one group-commit writer: however many partitions were written,
//! one sync round costs one `fdatasync`. Each partition keeps an in-memory
//! entry table (Raft index → segment, position, term, offsets, timestamps),
//! rebuilt on open from each sealed segment's index file and a scan of the
//! newest segment.
//!
//! Must not depend on: the network, the broker, raft-rs. The only format it
//! knows beyond its own is the record batch header (from `shardmq-schema`),
//! to check a batch's crc and to stamp its base offset and term.
//!
//! Invariants:
//! - an append completes durably only after a sync that started after its
//!   bytes were written has finished ([`ShardLog::sync`]);
//! - every record read back is checked (header crc, payload crc, chain) before
//!   it is returned; corrupt bytes are an error, never data;
//! - message offsets are dense and increasing per partition and are consumed
//!   only by data entries;
//! - a [`ShardLog`] is `!Send`: it lives on the shard that opened it.

mod crc;
mod error;
mod log;
pub mod record;
mod replay;
pub mod sidecar;
mod stats;

pub use error::{PartitionId, Result, StorageError};
pub use log::{
    AppendOutcome, EntryKind, EntryRef, FetchedBatch, GcReport, LogConfig, RecoveryReport,
    RetentionPolicy, ShardLog, StoredEntry, SyncMode,
};
pub use stats::StatsSnapshot;

/// Raft's hard state, persisted per partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// Where one Raft entry lives and what it covers. Shard view; owned by the
/// shard's [`ShardLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryLoc {
    pub segment_seq: u32,
    /// Position of the record header in the segment file.
    pub pos: u32,
    pub payload_len: u32,
    pub kind: record::RecordKind,
    pub term: u64,
    /// First message offset of a data entry; for other entries the next
    /// offset (they consume none).
    pub base_offset: u64,
    pub offset_count: u32,
    pub max_timestamp: i64,
    /// Max of `max_timestamp` over this and every earlier data entry of the
    /// partition: monotonic, so a timestamp lookup is a binary search.
    pub max_timestamp_running: i64,
}

impl EntryLoc {
    pub(crate) fn record_bytes(&self) -> u64 {
        record::RECORD_HEADER_BYTES as u64 + u64::from(self.payload_len)
    }
}
