//! The Raft layer of a shard: one raft-rs group per partition, whose log is
//! the partition's message log in the shard's `ShardLog`.
//!
//! - [`log_backend`]: [`RaftLog`], what the Raft layer needs of the shard
//!   log (implemented by `ShardLog`, and by the simulator's in-memory log);
//! - [`store`]: raft's `Storage` over the shard log, with an entry cache;
//! - [`replica`]: [`PartitionReplica`], a sans-IO wrapper of `RawNode` that
//!   turns each Ready into work for the caller;
//! - [`shard_loop`]: [`ShardLoop`], the loop that drives every replica of a
//!   shard, writes all their Readies with one sync (group commit), hands
//!   messages to a [`Transport`] grouped by destination shard
//!   ([`Outbox`]), acknowledges produces once they commit, and reports what
//!   changed ([`LoopEvent`]);
//! - [`logging`]: raft's `slog` records forwarded to `tracing`.
//!
//! Every group runs with `pre_vote` and `check_quorum` on by default
//! ([`ReplicaConfig`], which `[raft]` in the broker's configuration sets).

mod error;
pub mod log_backend;
pub mod logging;
pub mod replica;
pub mod shard_loop;
pub mod store;

pub use error::{DropReason, RaftError};
pub use log_backend::{LoggedEntry, RaftLog};
pub use replica::{
    AdvanceWork, CommittedEntry, EffectiveSettings, PartitionReplica, ProposalTicket, ReadyWork,
    ReplicaConfig, SnapshotPoint,
};
pub use shard_loop::{
    Dest, GroupId, GroupKind, GroupMembers, IterationReport, LoopEvent, LoopStats, NodeId, Outbox,
    ProduceAck, ProduceWaiter, ShardLoop, ShardLoopConfig, SnapshotSink, Transport,
    CONTROLLER_GROUP,
};
pub use store::{CacheShare, LogEntry, PendingFetch, Store};

/// raft-rs's message and entry types, for transports.
pub use ::raft::eraftpb;
/// raft-rs's role of a replica.
pub use ::raft::StateRole;
