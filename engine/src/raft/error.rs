//! Errors of the Raft layer.

use shardmq_storage::{PartitionId, StorageError};

/// Why a proposal was not, or will not be, committed at its index. Each
/// says whether the batch is known not to be in the log for good (so a
/// client may send it again without duplicating it) or whether that is
/// unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The replica's queue of proposals made during a write is full.
    QueueFull,
    /// raft-rs refused it: a leader transfer is in progress, or the
    /// uncommitted bytes limit is reached.
    RefusedByRaft,
    /// Queued during a write, it could not be proposed at the index it was
    /// promised (leadership changed meanwhile).
    LeadershipChanged,
    /// Appended, then replaced by another leader's entry at its index,
    /// and that entry committed: it never will. (Not answered on the
    /// replacement alone: a replacing entry that is itself uncommitted may
    /// be lost, and the replaced one commit after all.) The shard loop
    /// answers this case as [`CommittedOther`](Self::CommittedOther).
    Overwritten,
    /// Another entry committed at its index.
    CommittedOther,
    /// The replica installed a snapshot: whether the entry committed is
    /// unknown here.
    SnapshotInstalled,
    /// The replica was removed or closed while the proposal waited.
    ReplicaClosed,
}

impl DropReason {
    /// True if the batch is known not to be committed and never will be:
    /// sending it again cannot duplicate it.
    pub fn known_not_committed(self) -> bool {
        !matches!(self, Self::SnapshotInstalled | Self::ReplicaClosed)
    }

    /// True for back-pressure (the client should slow down and retry).
    pub fn is_backpressure(self) -> bool {
        matches!(self, Self::QueueFull)
    }

    fn describe(self) -> &'static str {
        match self {
            Self::QueueFull => "the proposal queue is full",
            Self::RefusedByRaft => {
                "refused by raft (a leader transfer is in progress, or the uncommitted bytes limit is reached)"
            }
            Self::LeadershipChanged => "leadership changed before it could be proposed",
            Self::Overwritten => "replaced by another leader's entry",
            Self::CommittedOther => "another entry committed at its index",
            Self::SnapshotInstalled => "the replica installed a snapshot; the outcome is unknown",
            Self::ReplicaClosed => "the replica was closed; the outcome is unknown",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// What can go wrong proposing to, or driving, a partition's Raft group.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// This replica is not the leader; `leader` is the raft id of the one it
    /// knows of.
    #[error("partition {partition}: not the leader (leader: {leader:?})")]
    NotLeader {
        partition: PartitionId,
        leader: Option<u64>,
    },
    /// The proposal was not (or will not be) committed at its index.
    #[error("partition {partition}: proposal dropped: {reason}")]
    ProposalDropped {
        partition: PartitionId,
        reason: DropReason,
    },
    /// The payload is not a valid record batch.
    #[error("partition {partition}: invalid record batch: {source}")]
    BadBatch {
        partition: PartitionId,
        #[source]
        source: shardmq_schema::batch::BatchError,
    },
    /// The shard does not hold a replica of this partition.
    #[error("partition {0} has no replica on this shard")]
    UnknownPartition(PartitionId),
    /// The shard log failed (environmental; the shard stops).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// raft-rs refused a call.
    #[error("raft: {0}")]
    Raft(#[from] ::raft::Error),
}
