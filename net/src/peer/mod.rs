//! The inter-broker transport, on glommio: the connections one shard opens
//! to the shards of other brokers ([`PeerLinks`]) and the listener that
//! takes theirs ([`listen_peers`], [`PeerServer`]). Frames are the
//! inter-broker protocol's (`schema/fbs/interbroker.fbs`, an `Envelope` in
//! every frame).
//!
//! # Topology
//!
//! Shard `s` of a broker listens on the broker's inter-broker port + `s`.
//! A connection is dialed by the sending shard to the receiving shard, so
//! each carries one direction of traffic between two shards: Raft batches
//! and controller requests flow dialer → listener, and only the
//! [`ControllerResponse`](shardmq_schema::interbroker::ControllerResponse)
//! to a request comes back, on the same connection, matched by correlation
//! id.
//!
//! # Handshake
//!
//! The dialer's first frame is a `Hello`, the listener's answer a
//! `HelloReply`; neither side reads or sends anything else before both
//! checked the other:
//!
//! 1. The listener checks the protocol version, that the Hello asks for
//!    its own shard, its cluster id and that the dialer expects its node
//!    id, then asks the engine's [`Admission::admit`]. A refusal is sent as
//!    the HelloReply's error and message, and the listener closes.
//! 2. The dialer, on a refusal, tells [`Admission::refused`]. On an
//!    acceptance, it checks the reply's cluster id and that the node it
//!    dialed answered, then asks [`Admission::check_reply`]; if that
//!    refuses, it closes without sending anything more.
//!
//! A refused link backs off as a failed connect does and reports
//! [`LinkState::Refused`]; both sides time the handshake out after
//! [`PeerConfig::handshake_timeout`].
//!
//! # Loss, and why it is fine
//!
//! Raft resends what it does not see acknowledged, so the transport drops
//! rather than buffers without bound: a frame sent to a full queue, to a
//! link backing off, or queued on a connection that breaks is dropped,
//! counted in [`LinkStats::frames_dropped`], and its destination is
//! reported by [`PeerLinks::take_unreachable`] (for raft-rs's
//! `report_unreachable`). Controller requests are not dropped silently:
//! [`PeerLinks::request`] fails with a [`RequestError`] that says whether
//! the command may have been applied.
//!
//! # Threading
//!
//! Everything here lives on one shard: [`PeerLinks`] and [`PeerServer`]
//! are `!Send`, their tasks are spawned on the executor of the shard that
//! made them, and the [`Admission`] and [`PeerHandler`] are called there.

mod backoff;
pub mod envelope;
mod handshake;
mod link;
mod listener;
mod socket;
mod stats;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use shardmq_schema::interbroker::PeerError;
use shardmq_schema::protocol::MAX_FRAME_BYTES;

pub use backoff::Backoff;
pub use envelope::EnvelopeFrame;
pub use link::{PeerLinks, RequestError, SendError};
pub use listener::{listen_peers, InboundStatsHandle, PeerServer};
pub use stats::{InboundStats, LinkStats, PeerStats, SourceStats};

/// Who a shard is, as it tells its peers: the broker's cluster, node id and
/// incarnation, and the shard's index. A broker view, one copy per shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The cluster the broker belongs to. A few hundred bytes at most: the
    /// handshake frames that carry it are bounded by
    /// [`HANDSHAKE_FRAME_BYTES_MAX`].
    pub cluster_id: String,
    /// The broker's node id.
    pub node_id: i32,
    /// A random id made when the broker's data directory was created.
    pub incarnation: u64,
    /// The shard's index on its broker.
    pub shard: u16,
}

/// One shard of one broker: where a frame goes or came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerAddr {
    /// The broker's node id.
    pub node_id: i32,
    /// The shard's index on that broker.
    pub shard: u16,
}

impl PeerAddr {
    /// Shard `shard` of node `node_id`.
    pub const fn new(node_id: i32, shard: u16) -> Self {
        Self { node_id, shard }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} shard {}", self.node_id, self.shard)
    }
}

/// A dialer's `Hello`, as the listener reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    /// The dialer's cluster.
    pub cluster_id: String,
    /// The dialer's node id.
    pub node_id: i32,
    /// The dialer's incarnation.
    pub incarnation: u64,
    /// The dialer's shard.
    pub from_shard: u16,
    /// The shard the dialer wants to reach.
    pub to_shard: u16,
    /// The node the dialer believes listens here.
    pub expected_node_id: i32,
}

impl HelloInfo {
    /// The dialing shard.
    pub fn from(&self) -> PeerAddr {
        PeerAddr::new(self.node_id, self.from_shard)
    }
}

/// A listener's accepting `HelloReply`, as the dialer reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyInfo {
    /// The listener's cluster.
    pub cluster_id: String,
    /// The listener's node id.
    pub node_id: i32,
    /// The listener's incarnation.
    pub incarnation: u64,
}

/// Why a handshake was refused: the wire code and a message for the other
/// side's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct Refusal {
    /// The reason, as sent in `HelloReply.error`; never `PeerError::None`.
    pub code: PeerError,
    /// What went wrong and what to do about it. Cut to
    /// [`crate::message::ERROR_MESSAGE_BYTES_MAX`] bytes on the wire.
    pub message: String,
}

impl Refusal {
    /// A refusal for `code` with `message`.
    pub fn new(code: PeerError, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The engine's rules for who may talk to whom: net knows no cluster
/// metadata. Called on the shard that owns the links or the listener; a
/// method must not block.
///
/// Net checks what it can on its own first (version, shard, cluster id,
/// node ids), so an Admission only adds the engine's knowledge (known
/// nodes, incarnations, duplicates).
pub trait Admission: 'static {
    /// Listener side: may the dialer of `hello` in? Called after net
    /// checked the version, that `hello.to_shard` is this shard, the
    /// cluster id and that the dialer expects this node.
    fn admit(&self, hello: &HelloInfo) -> Result<(), Refusal>;

    /// Dialer side: is the listener that accepted us the one we want?
    /// Called after net checked the reply's cluster id and that its node id
    /// is `dialed.node_id`.
    fn check_reply(&self, dialed: PeerAddr, reply: &ReplyInfo) -> Result<(), Refusal>;

    /// Dialer side: the listener at `by` refused us. Called on every
    /// refused attempt (at most one per backoff delay); the engine decides
    /// whether that is fatal.
    fn refused(&self, by: PeerAddr, refusal: &Refusal);

    /// Listener side: this listener refused the dialer of `hello`, by net's
    /// own check or [`admit`](Self::admit)'s. For logs and metrics.
    fn refused_hello(&self, hello: &HelloInfo, refusal: &Refusal) {
        let _ = (hello, refusal);
    }

    /// Dialer side: this dialer turned down the listener at `dialed`, by
    /// net's own check or [`check_reply`](Self::check_reply)'s. For logs
    /// and metrics.
    fn rejected_reply(&self, dialed: PeerAddr, reply: &ReplyInfo, refusal: &Refusal) {
        let _ = (dialed, reply, refusal);
    }
}

/// The outcome of a controller request: what the controller's leader
/// answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerReply {
    /// A client protocol `ErrorCode` value; 0 when applied.
    pub error_code: i16,
    /// Detail for `error_code`; cut to
    /// [`crate::message::ERROR_MESSAGE_BYTES_MAX`] bytes on the wire.
    pub message: String,
    /// What the command produced, encoded; empty when nothing. On the
    /// dialer side, a slice of the received frame.
    pub result: Bytes,
}

/// Receives what peers send a listener. Called on the listener's shard.
pub trait PeerHandler: 'static {
    /// A verified envelope whose body is a `RaftBatch`
    /// ([`EnvelopeFrame::raft_batch`] is `Some`), from the shard `from`, in
    /// the order that shard sent them. Must not block or await: it runs in
    /// the connection's read loop.
    fn on_raft_batch(&self, from: PeerAddr, frame: EnvelopeFrame);

    /// A controller command forwarded by `from` (a slice of the received
    /// frame). Runs in a task of its own, at most
    /// [`PeerConfig::requests_in_flight_max`] at once per connection; the
    /// reply goes back on the connection.
    fn on_controller_request(
        &self,
        from: PeerAddr,
        command: Bytes,
    ) -> impl Future<Output = ControllerReply>;

    /// The connection from `from` ended (the peer closed it, its process
    /// died, or it broke a rule). Its Raft groups may have lost their
    /// leader: the engine wakes what it let sleep.
    fn on_disconnect(&self, from: PeerAddr) {
        let _ = from;
    }
}

/// The state of the link to one destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LinkState {
    /// Nothing was sent there yet (no link).
    #[default]
    Idle,
    /// Dialing or handshaking; frames queue.
    Connecting,
    /// Handshake done; frames are written as they come.
    Connected,
    /// The last connect or connection failed; waiting before dialing
    /// again. Frames are dropped.
    Backoff,
    /// The last handshake was refused (by either side); waiting before
    /// dialing again. Frames are dropped.
    Refused,
}

/// Bounds and timings of the transport, for the links and the listener of
/// one shard. Every field has a default, given in its documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Frames queued on one link and not yet written, at most (default
    /// 1024, at least 1). A frame sent beyond is dropped.
    pub queue_frames_max: usize,
    /// Bytes queued on one link and not yet written, at most (default 64
    /// MiB). A frame that would exceed it is dropped, unless the queue is
    /// empty: one frame of up to `frame_bytes_max` always fits.
    pub queue_bytes_max: usize,
    /// How long a TCP connect may take (default 1 s, at least 1 ms).
    pub connect_timeout: Duration,
    /// How long the Hello/HelloReply exchange may take, on either side
    /// (default 5 s).
    pub handshake_timeout: Duration,
    /// First delay before dialing again after a failure (default 50 ms, at
    /// least 1 ms); it doubles per failure.
    pub backoff_min: Duration,
    /// Longest delay before dialing again (default 2 s).
    pub backoff_max: Duration,
    /// Largest frame sent or received, prefix included (default and most
    /// [`MAX_FRAME_BYTES`], 128 MiB: a Raft entry holding the largest
    /// record batch, 64 MiB, must fit with its envelope). A peer that sends
    /// a larger one is disconnected; [`PeerLinks::send`] refuses one.
    pub frame_bytes_max: usize,
    /// Controller requests in flight at once: per inbound connection (at
    /// the bound the listener stops reading it) and per outbound link (at
    /// the bound [`PeerLinks::request`] fails with `Overloaded`). Default
    /// 256, at least 1.
    pub requests_in_flight_max: usize,
    /// Destinations one shard's [`PeerLinks`] keeps links to, at most
    /// (default 4096, at least 1).
    pub links_max: usize,
    /// Inbound connections one listener serves at once (default 4096, at
    /// least 1); more wait in the listen backlog.
    pub connections_max: usize,
    /// Bytes asked of each socket read on inbound connections, at least
    /// (default 64 KiB).
    pub read_buffer_bytes: usize,
    /// TCP keepalive on every connection: idle time before the first probe
    /// (default 10 s), so a peer that vanished without a reset is noticed
    /// on an idle connection. `None` leaves the system's setting.
    pub keepalive_idle: Option<Duration>,
    /// Time between keepalive probes (default 2 s).
    pub keepalive_interval: Duration,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            queue_frames_max: 1024,
            queue_bytes_max: 64 << 20,
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            frame_bytes_max: MAX_FRAME_BYTES,
            requests_in_flight_max: 256,
            links_max: 4096,
            connections_max: 4096,
            read_buffer_bytes: crate::frame::READ_BUFFER_BYTES_DEFAULT,
            keepalive_idle: Some(Duration::from_secs(10)),
            keepalive_interval: Duration::from_secs(2),
        }
    }
}

impl PeerConfig {
    /// The config with every bound brought into its allowed range.
    fn normalized(mut self) -> Self {
        const MILLISECOND: Duration = Duration::from_millis(1);
        self.queue_frames_max = self.queue_frames_max.max(1);
        self.connect_timeout = self.connect_timeout.max(MILLISECOND);
        self.handshake_timeout = self.handshake_timeout.max(MILLISECOND);
        self.backoff_min = self.backoff_min.max(MILLISECOND);
        self.backoff_max = self.backoff_max.max(self.backoff_min);
        self.frame_bytes_max = self
            .frame_bytes_max
            .clamp(shardmq_schema::protocol::FRAME_MIN_BYTES, MAX_FRAME_BYTES);
        self.requests_in_flight_max = self.requests_in_flight_max.max(1);
        self.links_max = self.links_max.max(1);
        self.connections_max = self.connections_max.max(1);
        self.read_buffer_bytes = self.read_buffer_bytes.max(1);
        self.keepalive_interval = self.keepalive_interval.max(Duration::from_secs(1));
        self
    }
}

/// Largest handshake frame accepted, prefix included: a Hello or
/// HelloReply is a few hundred bytes, and a peer not yet admitted must not
/// make a shard buffer a whole `frame_bytes_max`.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 16 << 10;
