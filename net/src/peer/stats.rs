//! Counters of the transport, as plain values: what one shard's links sent
//! ([`PeerStats`], per destination and in total) and what its listener
//! received ([`InboundStats`], per source node). All counts are since the
//! links or the listener were made, and only grow.

use std::collections::BTreeMap;

use super::PeerAddr;

/// What the link to one destination did (or all links, added up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames written to the socket: Raft batches and controller requests
    /// (handshake frames not included).
    pub frames_sent: u64,
    /// Bytes of those frames.
    pub bytes_sent: u64,
    /// Socket writes that sent them: fewer than frames when frames queued
    /// up while the socket was busy and went out together.
    pub writes: u64,
    /// Frames dropped: refused by a full queue or a link backing off, or
    /// queued on a connection that failed before writing them.
    pub frames_dropped: u64,
    /// Handshakes completed (connections that reached `Connected`).
    pub connects: u64,
    /// Dials that failed before a handshake completed or was refused:
    /// connect errors and timeouts, broken or malformed handshakes.
    pub connect_failures: u64,
    /// Handshakes refused, by the peer or by this side.
    pub refusals: u64,
    /// Connections that ended after their handshake, for any reason
    /// other than closing the links.
    pub disconnects: u64,
    /// Controller requests queued.
    pub requests: u64,
    /// Controller responses received for a request still waiting.
    pub responses: u64,
}

impl LinkStats {
    pub(crate) fn add(&mut self, other: &Self) {
        self.frames_sent += other.frames_sent;
        self.bytes_sent += other.bytes_sent;
        self.writes += other.writes;
        self.frames_dropped += other.frames_dropped;
        self.connects += other.connects;
        self.connect_failures += other.connect_failures;
        self.refusals += other.refusals;
        self.disconnects += other.disconnects;
        self.requests += other.requests;
        self.responses += other.responses;
    }
}

/// What one shard's links did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Every link added up, links removed since included.
    pub total: LinkStats,
    /// Each destination that has a link now.
    pub links: BTreeMap<PeerAddr, LinkStats>,
}

/// What one source node's shards sent a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Frames received after the handshake (Raft batches and controller
    /// requests).
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Raft batches among them.
    pub raft_batches: u64,
    /// Controller requests among them.
    pub controller_requests: u64,
}

/// What one shard's peer listener did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundStats {
    /// Connections accepted.
    pub connections: u64,
    /// Failed accepts.
    pub accept_errors: u64,
    /// Handshakes accepted.
    pub handshakes_accepted: u64,
    /// Handshakes refused (net's checks or the Admission's).
    pub handshakes_refused: u64,
    /// Connections that ended before a handshake: no Hello in time, bytes
    /// that are not one, a closed or broken socket.
    pub handshakes_failed: u64,
    /// Connections closed after their handshake for breaking the protocol:
    /// a frame that is not a valid envelope, an unexpected body, an
    /// oversized or empty frame, a stream cut inside a frame.
    pub protocol_errors: u64,
    /// Everything received from each source node.
    pub sources: BTreeMap<i32, SourceStats>,
}

impl InboundStats {
    /// The sources added up.
    pub fn received(&self) -> SourceStats {
        self.sources
            .values()
            .fold(SourceStats::default(), |mut sum, source| {
                sum.frames += source.frames;
                sum.bytes += source.bytes;
                sum.raft_batches += source.raft_batches;
                sum.controller_requests += source.controller_requests;
                sum
            })
    }
}
