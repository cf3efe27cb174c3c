//! [`CtlError`]: every way a `shardmqctl` command fails, with its exit code.

use std::io;
use std::path::PathBuf;

use shardmq_client::ClientError;

/// Result of the tools' operations.
pub type Result<T, E = CtlError> = std::result::Result<T, E>;

/// Why a command failed. Printed as one line on stderr; [`exit_code`]
/// says what the process returns.
///
/// [`exit_code`]: CtlError::exit_code
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The command line is wrong in a way clap cannot see (a value out of
    /// range, flags that do not go together).
    #[error("{0}")]
    Usage(String),
    /// The cluster refused a request or could not be reached.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// An operation named in `op` failed.
    #[error("{op}: {source}")]
    Op {
        /// What was being done.
        op: String,
        /// Why it failed.
        source: ClientError,
    },
    /// `produce --report-acks`: some records were not acknowledged (each
    /// was reported on its own line already).
    #[error("{missing} of {total} records not acknowledged ({unknown} with unknown outcome, {failed} failed)", missing = unknown + failed)]
    NotAcknowledged {
        /// Records read.
        total: u64,
        /// Records whose outcome is unknown.
        unknown: u64,
        /// Records refused for sure.
        failed: u64,
    },
    /// `topic compare-replicas`: replicas differ or could not be read in
    /// some partitions (each was reported on its own line already).
    #[error("replicas differ or could not be read in {bad} of {partitions} partitions")]
    ReplicasDiffer {
        /// Partitions compared.
        partitions: usize,
        /// Partitions that differ or could not be read.
        bad: usize,
    },
    /// A file or directory could not be read.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The reason.
        source: io::Error,
    },
    /// Reading standard input or writing standard output failed.
    #[error("{what}: {source}")]
    Stdio {
        /// Which stream and what for.
        what: &'static str,
        /// The reason.
        source: io::Error,
    },
    /// A line of input cannot become a record.
    #[error("input line {line}: {reason}")]
    Input {
        /// One-based line number.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Offline data is corrupt: a segment or index file failed its checks.
    #[error("{0}")]
    Corrupt(String),
    /// The tokio runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
}

impl CtlError {
    /// The process exit code: 2 for usage errors, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// True for a write into a closed pipe (`shardmqctl consume | head`),
    /// which ends output normally rather than failing.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Stdio { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}
