//! Errors of the Raft layer.

use shardmq_storage::{PartitionId, StorageError};

/// What can go wrong proposing to, or driving, a partition's Raft group.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// This replica is not the leader; `leader` is the one it knows of.
    #[error("partition {partition}: not the leader (leader: {leader:?})")]
    NotLeader {
        partition: PartitionId,
        leader: Option<u64>,
    },
    /// The proposal was not (or will not be) committed at its index.
    #[error("partition {partition}: proposal dropped: {why}")]
    ProposalDropped {
        partition: PartitionId,
        why: &'static str,
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
