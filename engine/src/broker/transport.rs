//! The shard loop's [`Transport`] over the inter-broker links of `net`
//! ([`PeerTransport`]), the inbound side that hands received Raft messages
//! to this shard's loop ([`ShardPeerHandler`]), and the rules of who may
//! connect ([`ClusterAdmission`]).
//!
//! Hot path (replicate): each destination shard's messages of one
//! iteration become one frame (more only past
//! [`RAFT_FRAME_BYTES_TARGET`](super::raft_codec::RAFT_FRAME_BYTES_TARGET));
//! received entries stay slices of the received frame.
//!
//! Shard view: one of each per shard, `!Send`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::{Rc, Weak};

use bytes::Bytes;
use shardmq_net::peer::{
    Admission, ControllerReply, EnvelopeFrame, HelloInfo, PeerAddr, PeerHandler, PeerLinks,
    Refusal, ReplyInfo,
};
use shardmq_net::Frame;
use shardmq_schema::interbroker::PeerError;
use shardmq_schema::protocol::ErrorCode;

use super::controller_service::ControllerService;
use super::raft_codec::{decode_raft_batch, encode_raft_frames};
use super::raft_service::RaftService;
use crate::raft::{Dest, Outbox, Transport};

/// Sends a shard loop's outbox over the inter-broker links; with no links
/// (a broker alone) there is no one to send to and messages are dropped.
pub struct PeerTransport {
    links: Option<Rc<PeerLinks>>,
    /// Messages dropped: no links, or the link's queue was full.
    dropped: Cell<u64>,
    frames: Cell<u64>,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport")
            .field("linked", &self.links.is_some())
            .field("dropped", &self.dropped.get())
            .finish_non_exhaustive()
    }
}

impl PeerTransport {
    /// A transport over `links` (none for a broker alone).
    pub fn new(links: Option<Rc<PeerLinks>>) -> Self {
        Self {
            links,
            dropped: Cell::new(0),
            frames: Cell::new(0),
        }
    }

    /// The links, if any.
    pub fn links(&self) -> Option<&Rc<PeerLinks>> {
        self.links.as_ref()
    }

    /// Raft messages dropped before reaching a link.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Frames handed to the links.
    pub fn frames(&self) -> u64 {
        self.frames.get()
    }
}

impl Transport for PeerTransport {
    fn send(&self, outbox: &mut Outbox) {
        let Some(links) = &self.links else {
            let n = outbox.len() as u64;
            outbox.drain_each(|_, msgs| msgs.clear());
            self.dropped.set(self.dropped.get() + n);
            return;
        };
        outbox.drain_each(|dest, msgs| {
            let to = PeerAddr::new(dest.node, dest.shard);
            let count = msgs.len() as u64;
            encode_raft_frames(msgs, |builder| {
                let sent = Frame::from_builder(builder)
                    .ok()
                    .is_some_and(|frame| links.send(to, frame).is_ok());
                if sent {
                    self.frames.set(self.frames.get() + 1);
                } else {
                    // Raft resends; the link reports itself unreachable.
                    self.dropped.set(self.dropped.get() + count);
                }
            });
        });
    }

    fn take_unreachable(&self) -> Vec<Dest> {
        match &self.links {
            None => Vec::new(),
            Some(links) => links
                .take_unreachable()
                .into_iter()
                .map(|a| Dest {
                    node: a.node_id,
                    shard: a.shard,
                })
                .collect(),
        }
    }
}

/// What a shard's inter-broker listener does with what arrives: Raft
/// messages go to this shard's loop (every connection reaches the shard
/// that owns the destination replicas, so nothing crosses a core); on shard
/// 0, controller requests go to the controller, and traffic from a peer's
/// shard 0 tells the failure detector it is alive.
pub struct ShardPeerHandler {
    service: Weak<RaftService>,
    controller: RefCell<Option<Rc<ControllerService>>>,
    /// Messages that did not decode.
    bad: Cell<u64>,
}

impl std::fmt::Debug for ShardPeerHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardPeerHandler")
            .field("bad", &self.bad.get())
            .finish_non_exhaustive()
    }
}

impl ShardPeerHandler {
    pub fn new(service: &Rc<RaftService>) -> Rc<Self> {
        Rc::new(Self {
            service: Rc::downgrade(service),
            controller: RefCell::new(None),
            bad: Cell::new(0),
        })
    }

    /// Sends controller requests and liveness to `controller` (shard 0).
    pub fn set_controller(&self, controller: Rc<ControllerService>) {
        *self.controller.borrow_mut() = Some(controller);
    }
}

impl PeerHandler for ShardPeerHandler {
    fn on_raft_batch(&self, from: PeerAddr, frame: EnvelopeFrame) {
        let Some(service) = self.service.upgrade() else {
            return;
        };
        if from.shard == 0 {
            if let Some(controller) = self.controller.borrow().as_ref() {
                controller.heard(from.node_id);
            }
        }
        let Some(batch) = frame.raft_batch() else {
            return;
        };
        let raft = service.shard_loop();
        let bad = decode_raft_batch(frame.frame().bytes(), batch, |group, msg| {
            raft.deliver(group, msg)
        });
        if bad > 0 {
            self.bad.set(self.bad.get() + bad as u64);
        }
    }

    fn on_disconnect(&self, from: PeerAddr) {
        // The groups led from there may have lost their leader: the ones
        // asleep here tick again (and elect one if it is gone).
        if let Some(service) = self.service.upgrade() {
            let woken = service.shard_loop().wake_followers_of(from.node_id);
            if woken > 0 {
                tracing::debug!(peer = %from, woken, "connection lost: sleeping groups woken");
            }
        }
    }

    async fn on_controller_request(&self, from: PeerAddr, command: Bytes) -> ControllerReply {
        let controller = self.controller.borrow().clone();
        match controller {
            Some(controller) => {
                controller.heard(from.node_id);
                controller.handle_forwarded(command).await
            }
            None => ControllerReply {
                error_code: ErrorCode::InvalidRequest.0,
                message: "controller requests go to shard 0".to_owned(),
                result: Bytes::new(),
            },
        }
    }
}

/// Who may connect: brokers of this cluster named in the static peer list,
/// with the incarnation the controller recorded for them (when it has one).
/// A broker refused for its identity stops: it must not take part in Raft
/// with state that does not match what the cluster knows of it.
pub struct ClusterAdmission {
    cluster_id: String,
    members: BTreeSet<i32>,
    /// Recorded incarnations (from the controller metadata), refreshed by
    /// the shard whenever its view changes.
    known: RefCell<std::collections::BTreeMap<i32, u64>>,
    /// Called when a peer refused this broker for who it is.
    on_refused: Box<dyn Fn(String)>,
}

impl std::fmt::Debug for ClusterAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAdmission")
            .field("cluster_id", &self.cluster_id)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl ClusterAdmission {
    pub fn new(
        cluster_id: String,
        members: impl IntoIterator<Item = i32>,
        on_refused: Box<dyn Fn(String)>,
    ) -> Self {
        Self {
            cluster_id,
            members: members.into_iter().collect(),
            known: RefCell::new(Default::default()),
            on_refused,
        }
    }

    /// The incarnations the controller recorded.
    pub fn set_known(&self, known: std::collections::BTreeMap<i32, u64>) {
        *self.known.borrow_mut() = known;
    }

    fn check(&self, node: i32, incarnation: u64) -> Result<(), Refusal> {
        if !self.members.contains(&node) {
            return Err(Refusal::new(
                PeerError::UnknownNode,
                format!(
                    "node {node} is not one of this cluster's brokers ({:?}); add it to \
                     [cluster] peers on every broker, or fix its --node-id",
                    self.members
                ),
            ));
        }
        if let Some(registered) = self.known.borrow().get(&node) {
            if *registered != incarnation {
                return Err(Refusal::new(
                    PeerError::IncarnationMismatch,
                    format!(
                        "node {node} is registered with incarnation {registered:#x} but this \
                         broker presents {incarnation:#x}: its data directory was wiped or \
                         replaced, or another broker uses id {node}. Restore the data \
                         directory, or start the new broker with an id the cluster has not seen"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Admission for ClusterAdmission {
    fn admit(&self, hello: &HelloInfo) -> Result<(), Refusal> {
        if hello.cluster_id != self.cluster_id {
            return Err(Refusal::new(
                PeerError::ClusterMismatch,
                format!(
                    "this broker belongs to cluster {:?}, the dialer to {:?}",
                    self.cluster_id, hello.cluster_id
                ),
            ));
        }
        self.check(hello.node_id, hello.incarnation)
    }

    fn check_reply(&self, dialed: PeerAddr, reply: &ReplyInfo) -> Result<(), Refusal> {
        self.check(dialed.node_id, reply.incarnation)
    }

    fn refused(&self, by: PeerAddr, refusal: &Refusal) {
        tracing::error!(peer = %by, code = ?refusal.code, message = %refusal.message, "refused by a peer");
        // Only a refusal based on what the cluster recorded about this
        // broker (through the controller, so a majority agreed) stops it; a
        // peer of another cluster, or one whose peer list lacks this broker,
        // is that peer's problem as much as ours, and the link keeps
        // retrying (and logging) with backoff.
        if matches!(
            refusal.code,
            PeerError::IncarnationMismatch | PeerError::DuplicateNode
        ) {
            (self.on_refused)(format!(
                "refused by node {} of the cluster: {}",
                by.node_id, refusal.message
            ));
        }
    }

    fn refused_hello(&self, hello: &HelloInfo, refusal: &Refusal) {
        tracing::warn!(
            node = hello.node_id,
            cluster = %hello.cluster_id,
            code = ?refusal.code,
            message = %refusal.message,
            "refused a broker's connection"
        );
    }

    fn rejected_reply(&self, dialed: PeerAddr, reply: &ReplyInfo, refusal: &Refusal) {
        tracing::warn!(
            peer = %dialed,
            node = reply.node_id,
            code = ?refusal.code,
            message = %refusal.message,
            "the broker at a peer's address is not the one the cluster knows"
        );
    }
}
