//! The controller's state machine: the cluster metadata every broker holds,
//! the commands that change it, and the rules that apply them.
//!
//! The controller is a Raft group of its own, [`CONTROLLER_GROUP`] (group id
//! 0), with a replica on shard 0 of every broker. Other code runs that
//! replica, wraps each [`Command`] (its [`Command::encode`] bytes) into a log
//! entry and, once the entry commits, calls [`ClusterMetadata::apply`] with
//! the entry's index on every broker, in log order, then pushes the new
//! [`ClusterMetadata`] read-only to every shard of the broker.
//!
//! - [`state`]: [`ClusterMetadata`] and its parts, with the lookups shards
//!   route by;
//! - [`command`]: [`Command`] and its byte encoding;
//! - [`apply`]: the rules of every command, [`Applied`] and [`ApplyError`];
//! - [`placement`]: where the replicas of a new topic go;
//! - [`snapshot`]: the metadata as checksummed bytes and as files;
//! - [`liveness`]: the failure detector the controller's leader runs.
//!
//! # Invariants
//!
//! - **Deterministic.** The same commands applied in the same order give
//!   equal metadata on every broker: nothing here reads the clock (time is
//!   an argument of [`Liveness`]), draws random numbers or iterates a hash
//!   map. A refused command is a no-op on every broker alike (it only
//!   advances `applied_index`).
//! - **Every partition's replicas are distinct, registered brokers**, each on
//!   a shard that broker has; the preferred leader and the recorded leader
//!   are among them. [`ClusterMetadata::check_invariants`] states the full
//!   list; the property tests check it after every command.
//! - **Bounded.** Every collection has a limit named in [`limits`], checked
//!   when a command would grow it.
//! - **No panics on bad input.** Bytes from the network or the disk and
//!   commands that break a rule give typed errors.
//!
//! # Must not depend on
//!
//! glommio, networking or raft-rs: this is a sans-IO core, tested in
//! process. Its only I/O is the blocking snapshot file helpers of
//! [`snapshot`], for small files written rarely.

pub mod apply;
pub mod command;
pub mod limits;
pub mod liveness;
pub mod placement;
pub mod snapshot;
pub mod state;

pub use apply::{Applied, ApplyError};
pub use command::{Command, CommandError, LeaderRecord};
pub use liveness::Liveness;
pub use placement::{place, PlacementError};
pub use snapshot::{
    decode_snapshot, encode_snapshot, load_latest_snapshot, load_latest_snapshot_up_to,
    remove_snapshots_before, write_snapshot_file, write_snapshot_file_keeping_older, SnapshotError,
};
pub use state::{
    partition_id, BrokerInfo, BrokerRegistration, BrokerStatus, ClusterMetadata, InvariantError,
    NodeId, PartitionAssignment, ReplicaPlace, TopicInfo,
};

/// Raft group id of the controller. Partition groups are
/// [`partition_id`]`(topic_id, index)` with topic ids from 1, so none of
/// them is 0.
pub const CONTROLLER_GROUP: u64 = 0;
