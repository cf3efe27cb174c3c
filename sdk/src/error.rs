//! [`ClientError`]: every way a request of the SDK can fail.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use shardmq_schema::protocol::ErrorCode;

/// Result of the SDK's operations.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Why an operation of the SDK failed: an error code the broker answered
/// with, or a failure of the transport.
///
/// Cloneable, so one failure (a lost connection, a refused batch) can be
/// handed to every request or record it affects.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The broker answered with an error code, for the whole request or for
    /// the item (topic, partition) the operation was about.
    #[error("broker error {code:?}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Broker {
        /// The code, as on the wire.
        code: ErrorCode,
        /// The broker's detail, if it sent one.
        message: Option<String>,
    },
    /// A fetch or seek named an offset outside the partition's log. The
    /// consumer's position is unchanged; seek somewhere valid to go on.
    #[error("offset {offset} is out of range in {topic}/{partition}")]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset asked for.
        offset: i64,
    },
    /// No connection could be opened to `addr`.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried, `host:port`.
        addr: String,
        /// The reason.
        source: Arc<io::Error>,
    },
    /// The connection to `addr` broke (reset, closed by the broker, a write
    /// failed) while the request was pending or before it could be sent.
    /// Whether the broker executed the request is unknown.
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost {
        /// The broker's address, `host:port`.
        addr: String,
        /// What ended the connection.
        reason: String,
    },
    /// No response came within the request's timeout. Whether the broker
    /// executed the request is unknown.
    #[error("no response within {after:?}")]
    Timeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// The broker sent bytes that break the protocol (a frame that does not
    /// verify, a response of the wrong api, a corrupt record batch). The
    /// connection it came on is closed.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The caller asked for something the SDK refuses before sending it
    /// (an unknown partition, a record too large for a batch, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The producer or client was closed.
    #[error("closed")]
    Closed,
}

impl ClientError {
    /// A [`ClientError::Broker`] from a code and an optional message.
    pub fn broker(code: ErrorCode, message: Option<&str>) -> Self {
        Self::Broker {
            code,
            message: message.map(str::to_owned),
        }
    }

    /// The wire error code, for errors the broker answered with.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Broker { code, .. } => Some(*code),
            Self::OffsetOutOfRange { .. } => Some(ErrorCode::OffsetOutOfRange),
            _ => None,
        }
    }

    /// True if the same request may succeed when sent again, after a
    /// metadata refresh, a reconnect or a backoff: retriable wire codes
    /// ([`ErrorCode::is_retriable`]), timeouts, lost connections and failed
    /// connects.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Broker { code, .. } => code.is_retriable(),
            Self::Timeout { .. } | Self::ConnectionLost { .. } | Self::Connect { .. } => true,
            _ => false,
        }
    }

    /// True if the client's view of leaders is likely stale, so metadata
    /// should be refreshed before a retry.
    pub fn needs_metadata_refresh(&self) -> bool {
        match self {
            Self::Broker { code, .. } => matches!(
                *code,
                ErrorCode::NotLeader
                    | ErrorCode::LeaderNotAvailable
                    | ErrorCode::BrokerShuttingDown
                    | ErrorCode::UnknownPartition
            ),
            Self::ConnectionLost { .. } | Self::Connect { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Self::Protocol(message.into())
    }
}
