//! [`ClientError`]: every way a request of the SDK can fail.
//!
//! Three questions matter to a caller, and each has its method:
//!
//! * did the broker refuse, and with which wire code? [`ClientError::code`];
//! * may the same request succeed if sent again? [`ClientError::is_retriable`];
//! * for a produce: is it known whether the records were stored?
//!   [`ClientError::is_outcome_unknown`]. A record that fails with any
//!   other error was not appended (or was refused outright); one whose
//!   outcome is unknown may or may not be in the log, and may still
//!   become committed after the error was reported.

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
    /// failed). With `request_sent` the request had been handed to the
    /// connection for writing, so the broker may have read and executed
    /// it: its outcome is unknown. Without, the connection was found
    /// broken before any byte of the request was queued: the broker never
    /// saw it.
    #[error("connection to {addr} lost{}: {reason}", if *request_sent { " after the request was sent" } else { " before the request was sent" })]
    ConnectionLost {
        /// The broker's address, `host:port`.
        addr: String,
        /// What ended the connection.
        reason: String,
        /// Whether the request had been queued for writing when the
        /// connection broke.
        request_sent: bool,
    },
    /// The request's timeout expired. With `request_sent` the request had
    /// been handed to the connection and no response came: whether the
    /// broker executed it is unknown. Without, it was still waiting for
    /// room among the requests in flight: the broker never saw it.
    #[error("{} within {after:?}", if *request_sent { "no response" } else { "no room to send the request" })]
    Timeout {
        /// The timeout that expired.
        after: Duration,
        /// Whether the request had been queued for writing.
        request_sent: bool,
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
    /// A Produce request reached (or may have reached) the broker but its
    /// outcome cannot be known: the broker answered RequestTimedOut (the
    /// append goes on and may still commit), no response came within the
    /// request timeout, the connection broke after the request was sent, or
    /// the response could not be read. The records may or may not be in
    /// the log. The producer does not retry such a batch, since a retry
    /// could store the records twice; the caller decides (read the
    /// partition back, or send again accepting a duplicate).
    #[error("outcome unknown, the records may or may not have been appended: {cause}")]
    OutcomeUnknown {
        /// What happened to the request.
        cause: Box<ClientError>,
    },
}

impl ClientError {
    /// A [`ClientError::Broker`] from a code and an optional message.
    pub fn broker(code: ErrorCode, message: Option<&str>) -> Self {
        Self::Broker {
            code,
            message: message.map(str::to_owned),
        }
    }

    /// The wire error code, for errors the broker answered with (also when
    /// wrapped in [`ClientError::OutcomeUnknown`]).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Broker { code, .. } => Some(*code),
            Self::OffsetOutOfRange { .. } => Some(ErrorCode::OffsetOutOfRange),
            Self::OutcomeUnknown { cause } => cause.code(),
            _ => None,
        }
    }

    /// True if the same request may succeed when sent again, after a
    /// metadata refresh, a reconnect or a backoff: retriable wire codes
    /// ([`ErrorCode::is_retriable`]), timeouts, lost connections and failed
    /// connects. For requests that change nothing (metadata, fetch) that is
    /// the whole story; a produce is retried only when it is also known not
    /// to have been appended (see [`is_outcome_unknown`](Self::is_outcome_unknown)).
    /// [`ClientError::OutcomeUnknown`] itself is not retriable: it is what
    /// the producer reports once it decided not to retry.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Broker { code, .. } => code.is_retriable(),
            Self::Timeout { .. } | Self::ConnectionLost { .. } | Self::Connect { .. } => true,
            _ => false,
        }
    }

    /// True if the request may have been executed although it failed, so
    /// whether its records were stored is unknown:
    /// [`ClientError::OutcomeUnknown`], a broker's RequestTimedOut, a
    /// [`ClientError::Timeout`] or a connection lost after the request was
    /// sent, and a response that broke the protocol. False for every
    /// refusal the broker sent about work it did not do and for failures
    /// before anything was sent (a failed connect).
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            Self::OutcomeUnknown { .. } | Self::Protocol(_) => true,
            Self::Broker { code, .. } => *code == ErrorCode::RequestTimedOut,
            Self::ConnectionLost { request_sent, .. } | Self::Timeout { request_sent, .. } => {
                *request_sent
            }
            _ => false,
        }
    }

    /// True if a produce that failed with this error is known not to have
    /// been appended and may be sent again as it is: NotLeader,
    /// LeaderNotAvailable, BrokerShuttingDown, Throttled and
    /// NotEnoughReplicas (the broker sends them only for batches it did not
    /// append), a failed connect and a connection found broken before the
    /// request was sent.
    pub fn is_safe_to_resend(&self) -> bool {
        match self {
            Self::Broker { code, .. } => matches!(
                *code,
                ErrorCode::NotLeader
                    | ErrorCode::LeaderNotAvailable
                    | ErrorCode::BrokerShuttingDown
                    | ErrorCode::Throttled
                    | ErrorCode::NotEnoughReplicas
            ),
            Self::Connect { .. } => true,
            Self::ConnectionLost { request_sent, .. } | Self::Timeout { request_sent, .. } => {
                !*request_sent
            }
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
