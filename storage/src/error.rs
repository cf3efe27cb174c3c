//! Typed storage errors. Every environmental failure names the operation and
//! where it happened (path, partition, index or offset), so an operator can act
//! on the message alone.

use std::path::PathBuf;

/// A partition's identity inside one shard log. The engine chooses it (for
/// example the Raft group id); storage only requires it to be stable.
pub type PartitionId = u64;

/// Everything that can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O call failed.
    #[error("storage i/o failed: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record read back from disk failed its checksum or structure check.
    /// The bytes are never returned to the caller.
    #[error("corrupt data in {path} at byte {pos}: {what}")]
    Corrupt {
        path: PathBuf,
        pos: u64,
        what: String,
    },
    /// Recovery found a gap or a corrupt record inside a sealed segment that
    /// held entries of this partition; the partition refuses to serve until an
    /// operator repairs it (for example by restoring it from a replica).
    #[error("partition {partition} is unavailable: {why}")]
    PartitionCorrupt { partition: PartitionId, why: String },
    /// The partition does not exist in this shard log.
    #[error("unknown partition {0}")]
    UnknownPartition(PartitionId),
    /// An append whose first index is not the next index or a conflicting
    /// index inside the log.
    #[error(
        "partition {partition}: append at index {index} leaves a gap (first {first}, last {last})"
    )]
    IndexGap {
        partition: PartitionId,
        index: u64,
        first: u64,
        last: u64,
    },
    /// An index below the compaction point was asked for.
    #[error("partition {partition}: index {index} is compacted (first index {first})")]
    Compacted {
        partition: PartitionId,
        index: u64,
        first: u64,
    },
    /// An index past the last entry was asked for.
    #[error("partition {partition}: index {index} is beyond the last index {last}")]
    Unavailable {
        partition: PartitionId,
        index: u64,
        last: u64,
    },
    /// A message offset outside `[log_start_offset, next_offset]`.
    #[error("partition {partition}: offset {offset} out of range [{start}, {next}]")]
    OffsetOutOfRange {
        partition: PartitionId,
        offset: u64,
        start: u64,
        next: u64,
    },
    /// The payload of a data entry is not a valid record batch.
    #[error("partition {partition}: invalid record batch at index {index}: {source}")]
    BadBatch {
        partition: PartitionId,
        index: u64,
        #[source]
        source: shardmq_schema::batch::BatchError,
    },
    /// A caller-supplied value violates a limit or precondition.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An earlier write or fdatasync failed. After a failed fdatasync the
    /// kernel may have dropped dirty pages, so nothing appended since the last
    /// successful sync can be trusted; the log refuses all further writes.
    #[error("the shard log is poisoned by an earlier i/o failure: {0}")]
    Poisoned(String),
}

/// Shorthand used across the crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// glommio wraps `std::io::Error` in its own error; unwrap it to ours.
    pub(crate) fn glommio(
        op: &'static str,
        path: impl Into<PathBuf>,
        err: glommio::GlommioError<()>,
    ) -> Self {
        StorageError::io(op, path, std::io::Error::from(err))
    }
}
