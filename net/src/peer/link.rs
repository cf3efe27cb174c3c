//! The outbound side of one shard: [`PeerLinks`], one link per destination
//! shard, each a queue of frames and a task that dials, handshakes, writes
//! the queue and dials again after a backoff when the connection fails.
//!
//! Hot path: [`PeerLinks::send`] and the writer of a connected link. A
//! frame sent costs a map lookup and a queue push (no allocation once the
//! queue has grown), and every frame queued while the socket was busy goes
//! out in the next `sendmsg`.
//!
//! # A link's life
//!
//! The first frame or request for a destination makes its link and spawns
//! its task. The task loops: dial ([`LinkState::Connecting`], frames
//! queue), handshake, then write while connected
//! ([`LinkState::Connected`]) and read controller responses. When a dial,
//! handshake or connection fails, everything queued is dropped, requests
//! waiting fail, the destination is reported unreachable, and the task
//! sleeps a [`Backoff`] delay ([`LinkState::Backoff`] or
//! [`LinkState::Refused`], frames sent meanwhile are dropped at once)
//! before dialing again. A new address for the node interrupts the wait or
//! the connection and dials it at once.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::future::or;
use glommio::net::TcpStream;
use shardmq_schema::interbroker::{Body, PROTOCOL_VERSION};

use super::backoff::{Backoff, SplitMix64};
use super::envelope::{controller_reply, controller_request_frame, hello_frame, reply_info};
use super::handshake::{check_reply, read_frame, HandshakeError};
use super::socket::{configure, poll_read_into, poll_write_queue, shutdown_write, write_all};
use super::stats::{LinkStats, PeerStats};
use super::{
    Admission, ControllerReply, EnvelopeFrame, HelloInfo, LinkState, PeerAddr, PeerConfig,
    PeerIdentity, Refusal, HANDSHAKE_FRAME_BYTES_MAX,
};
use crate::frame::{Frame, FrameDecoder, FrameError, WriteQueue};

/// Bytes asked of each socket read on a link: only controller responses
/// come back, so a small buffer per link (the decoder grows it for a large
/// response).
const LINK_READ_BYTES: usize = 4 << 10;

/// Where a frame's file identifier sits: after the length prefix and the
/// root offset.
const IDENTIFIER_AT: std::ops::Range<usize> = 8..12;

/// Why [`PeerLinks::send`] dropped a frame. The frame is gone either way;
/// Raft resends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The link's queue is at its bound (frames or bytes).
    #[error("queue to {to} is full ({frames} frames, {bytes} bytes not yet written)")]
    QueueFull {
        /// The destination.
        to: PeerAddr,
        /// Frames queued.
        frames: usize,
        /// Bytes queued.
        bytes: usize,
    },
    /// The link is backing off after a failed or refused connection.
    #[error("{to} is unreachable ({state:?})")]
    Unreachable {
        /// The destination.
        to: PeerAddr,
        /// `Backoff` or `Refused`.
        state: LinkState,
    },
    /// No address is known for the destination's node, or its shard's
    /// port would be past 65535.
    #[error("no address known for {to}")]
    NoAddress {
        /// The destination.
        to: PeerAddr,
    },
    /// The frame is larger than [`PeerConfig::frame_bytes_max`]: the peer
    /// would drop the connection.
    #[error("frame of {len} bytes exceeds the inter-broker limit of {max} bytes")]
    TooLarge {
        /// The frame's length, prefix included.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame does not carry the inter-broker file identifier.
    #[error("frame is not an inter-broker envelope")]
    NotEnvelope,
    /// [`PeerConfig::links_max`] destinations have links already.
    #[error("no link to {to}: {links_max} links exist already")]
    TooManyLinks {
        /// The destination.
        to: PeerAddr,
        /// The bound.
        links_max: usize,
    },
    /// The links are closed.
    #[error("the inter-broker links are closed")]
    Closed,
}

/// Why [`PeerLinks::request`] has no reply. Only
/// [`ConnectionLost`](Self::ConnectionLost) and [`Timeout`](Self::Timeout)
/// leave it open whether the command was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No connection to the destination (no address, connect failed, link
    /// backing off); the request was not sent.
    #[error("{0} is unreachable; the request was not sent")]
    Unreachable(PeerAddr),
    /// The destination refused the handshake, or this side refused its
    /// reply; the request was not sent.
    #[error("handshake refused: {0}")]
    Refused(Refusal),
    /// No reply within the timeout; the command may have been applied.
    #[error("no reply within the timeout; the command may have been applied")]
    Timeout,
    /// The connection broke after the request was handed to it; the
    /// command may have been applied.
    #[error("the connection was lost after sending; the command may have been applied")]
    ConnectionLost,
    /// Too many requests wait on the link, or its queue is full; the
    /// request was not sent.
    #[error("the link is overloaded; the request was not sent")]
    Overloaded,
    /// The command does not fit in a frame of
    /// [`PeerConfig::frame_bytes_max`] bytes.
    #[error("the command does not fit in an inter-broker frame of {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The links are closed.
    #[error("the inter-broker links are closed")]
    Closed,
}

/// The outbound side of one shard's inter-broker transport: a link per
/// destination shard, made on first use.
///
/// Owned by one shard and `!Send`; must be used on a glommio executor (the
/// first frame to a destination spawns its task there). Dropping it stops
/// every link as [`close`](Self::close) does, without waiting.
pub struct PeerLinks {
    inner: Rc<Links>,
}

/// State shared by the links of one shard and their tasks.
struct Links {
    identity: PeerIdentity,
    config: PeerConfig,
    admission: Rc<dyn Admission>,
    jitter_seed: u64,
    /// Where each node's shard 0 listens.
    addresses: RefCell<HashMap<i32, SocketAddr>>,
    links: RefCell<BTreeMap<PeerAddr, Rc<Link>>>,
    /// Destinations whose connection failed or that dropped frames since
    /// the last `take_unreachable`.
    unreachable: RefCell<BTreeSet<PeerAddr>>,
    /// Stats of links that ended.
    retired: RefCell<LinkStats>,
    closed: Cell<bool>,
    /// Link tasks running.
    tasks: Cell<usize>,
    /// `close` waiting for the tasks to end.
    tasks_waker: Cell<Option<Waker>>,
}

/// The link to one destination.
struct Link {
    to: PeerAddr,
    state: Cell<LinkState>,
    /// Why the last handshake was refused, while `state` is `Refused`.
    refusal: RefCell<Option<Refusal>>,
    /// Frames sent and not yet taken by the writer.
    queue: RefCell<VecDeque<Queued>>,
    /// Frames and bytes not yet written: in `queue` and in the writer's.
    pending_frames: Cell<usize>,
    pending_bytes: Cell<usize>,
    requests: RefCell<HashMap<u64, RequestSlot>>,
    next_correlation_id: Cell<u64>,
    stats: RefCell<LinkStats>,
    /// The link's task, waiting for frames, for a stop or for a redial.
    waker: Cell<Option<Waker>>,
    /// The node's address changed: dial the new one now.
    redial: Cell<bool>,
    /// The link ends: its node was removed or the links closed.
    stopped: Cell<bool>,
}

/// A frame waiting for the writer; `correlation_id` is a controller
/// request's, 0 for a Raft batch.
struct Queued {
    frame: Frame,
    correlation_id: u64,
}

/// A controller request waiting for its reply.
#[derive(Default)]
struct RequestSlot {
    /// Its frame went to the connection: if that breaks, the outcome is
    /// unknown.
    sent: bool,
    outcome: Option<Result<ControllerReply, RequestError>>,
    waker: Option<Waker>,
}

fn wake(slot: &Cell<Option<Waker>>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}

impl PeerLinks {
    /// The links of the shard `identity` names, with no destination yet.
    /// `jitter_seed` seeds the backoff jitter of every link (mixed with the
    /// destination), so a run with the same seed waits the same delays.
    pub fn new(
        identity: PeerIdentity,
        config: PeerConfig,
        admission: Rc<dyn Admission>,
        jitter_seed: u64,
    ) -> Self {
        Self {
            inner: Rc::new(Links {
                identity,
                config: config.normalized(),
                admission,
                jitter_seed,
                addresses: RefCell::default(),
                links: RefCell::default(),
                unreachable: RefCell::default(),
                retired: RefCell::default(),
                closed: Cell::new(false),
                tasks: Cell::new(0),
                tasks_waker: Cell::new(None),
            }),
        }
    }

    /// The shard these links speak for.
    pub fn identity(&self) -> &PeerIdentity {
        &self.inner.identity
    }

    /// Sets where `node_id`'s shard 0 listens for inter-broker traffic
    /// (shard `s` listens on its port + `s`). A changed address makes the
    /// node's links drop their connection and dial the new one at once.
    pub fn set_address(&self, node_id: i32, shard0: SocketAddr) {
        let old = self.inner.addresses.borrow_mut().insert(node_id, shard0);
        if old.is_some_and(|old| old != shard0) {
            for link in self.inner.links_of(node_id) {
                link.redial.set(true);
                wake(&link.waker);
            }
        }
    }

    /// Forgets `node_id`'s address and ends its links: what is queued
    /// there is dropped, requests waiting fail with `Unreachable`.
    pub fn remove_node(&self, node_id: i32) {
        self.inner.addresses.borrow_mut().remove(&node_id);
        for link in self.inner.links_of(node_id) {
            link.stopped.set(true);
            wake(&link.waker);
        }
    }

    /// Queues `frame` for `to`, never waiting. `frame` must be a whole
    /// inter-broker envelope with a `RaftBatch` body
    /// ([`raft_batch_frame`](super::envelope::raft_batch_frame)); only its
    /// identifier is checked here, and the listener drops the connection of
    /// a dialer that sends anything else.
    ///
    /// An error means the frame was dropped (and counted); a success, that
    /// it is queued, not that it will arrive: a connection that fails drops
    /// what it had queued. Either way, a destination that lost frames is
    /// reported by [`take_unreachable`](Self::take_unreachable).
    pub fn send(&self, to: PeerAddr, frame: Frame) -> Result<(), SendError> {
        let max = self.inner.config.frame_bytes_max;
        if frame.len() > max {
            return Err(SendError::TooLarge {
                len: frame.len(),
                max,
            });
        }
        if frame.as_bytes().get(IDENTIFIER_AT)
            != Some(shardmq_schema::interbroker::FILE_IDENTIFIER.as_bytes())
        {
            return Err(SendError::NotEnvelope);
        }
        let link = self.inner.link(to)?;
        link.enqueue(&self.inner, frame, 0)
    }

    /// Sends the controller command `command` to `to` and waits, at most
    /// `timeout` (connecting included), for its reply.
    pub async fn request(
        &self,
        to: PeerAddr,
        command: &[u8],
        timeout: Duration,
    ) -> Result<ControllerReply, RequestError> {
        let links = &self.inner;
        let link = links.link(to).map_err(|error| match error {
            SendError::Closed => RequestError::Closed,
            _ => RequestError::Unreachable(to),
        })?;
        match link.state.get() {
            LinkState::Refused => {
                let refusal = link.refusal.borrow().clone();
                return Err(refusal.map_or(RequestError::Unreachable(to), RequestError::Refused));
            }
            LinkState::Backoff => return Err(RequestError::Unreachable(to)),
            LinkState::Idle | LinkState::Connecting | LinkState::Connected => {}
        }
        if link.requests.borrow().len() >= links.config.requests_in_flight_max {
            return Err(RequestError::Overloaded);
        }
        let max = links.config.frame_bytes_max;
        let correlation_id = link.next_correlation_id.get();
        link.next_correlation_id.set(correlation_id + 1);
        let frame = controller_request_frame(correlation_id, command)
            .map_err(|_| RequestError::TooLarge { max })?;
        if frame.len() > max {
            return Err(RequestError::TooLarge { max });
        }
        link.requests
            .borrow_mut()
            .insert(correlation_id, RequestSlot::default());
        // Removes the slot however this future ends, timed out or dropped.
        let _slot = SlotGuard {
            link: &link,
            correlation_id,
        };
        link.enqueue(links, frame, correlation_id)
            .map_err(|error| match error {
                SendError::QueueFull { .. } => RequestError::Overloaded,
                _ => RequestError::Unreachable(to),
            })?;
        link.stats.borrow_mut().requests += 1;
        let reply = poll_fn(|cx| link.poll_reply(correlation_id, cx));
        let deadline = async {
            glommio::timer::sleep(timeout).await;
            Err(RequestError::Timeout)
        };
        or(reply, deadline).await
    }

    /// The destinations whose connection failed or that dropped frames
    /// since the last call, in order; for raft-rs's `report_unreachable`.
    pub fn take_unreachable(&self) -> Vec<PeerAddr> {
        std::mem::take(&mut *self.inner.unreachable.borrow_mut())
            .into_iter()
            .collect()
    }

    /// The state of the link to `to` (`Idle` if there is none).
    pub fn link_state(&self, to: PeerAddr) -> LinkState {
        self.inner
            .links
            .borrow()
            .get(&to)
            .map_or(LinkState::Idle, |link| link.state.get())
    }

    /// What the links did, per destination and in total.
    pub fn stats(&self) -> PeerStats {
        let mut stats = PeerStats {
            total: *self.inner.retired.borrow(),
            links: BTreeMap::new(),
        };
        for (&to, link) in self.inner.links.borrow().iter() {
            let link = *link.stats.borrow();
            stats.total.add(&link);
            stats.links.insert(to, link);
        }
        stats
    }

    /// Stops dialing and sending: what is queued is dropped, requests
    /// waiting fail with `Closed`, connections are closed, and this returns
    /// once every link task has ended. Later sends fail with `Closed`.
    pub async fn close(&self) {
        self.inner.close();
        poll_fn(|cx| {
            if self.inner.tasks.get() == 0 {
                return Poll::Ready(());
            }
            self.inner.tasks_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
    }
}

impl Drop for PeerLinks {
    fn drop(&mut self) {
        self.inner.close();
    }
}

impl fmt::Debug for PeerLinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerLinks")
            .field("identity", &self.inner.identity)
            .field("links", &self.inner.links.borrow().len())
            .field("closed", &self.inner.closed.get())
            .finish()
    }
}

/// Removes a request's slot when its future ends.
struct SlotGuard<'a> {
    link: &'a Link,
    correlation_id: u64,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.link.requests.borrow_mut().remove(&self.correlation_id);
    }
}

impl Links {
    /// Where `to` listens: its node's shard 0 port plus its shard.
    fn address_of(&self, to: PeerAddr) -> Option<SocketAddr> {
        let mut addr = *self.addresses.borrow().get(&to.node_id)?;
        addr.set_port(addr.port().checked_add(to.shard)?);
        Some(addr)
    }

    fn links_of(&self, node_id: i32) -> Vec<Rc<Link>> {
        self.links
            .borrow()
            .range(PeerAddr::new(node_id, 0)..=PeerAddr::new(node_id, u16::MAX))
            .map(|(_, link)| link.clone())
            .collect()
    }

    /// The link to `to`, made (and its task spawned) if there is none.
    fn link(self: &Rc<Self>, to: PeerAddr) -> Result<Rc<Link>, SendError> {
        if self.closed.get() {
            return Err(SendError::Closed);
        }
        if let Some(link) = self.links.borrow().get(&to) {
            if !link.stopped.get() {
                return Ok(link.clone());
            }
        }
        if self.address_of(to).is_none() {
            return Err(SendError::NoAddress { to });
        }
        let mut links = self.links.borrow_mut();
        // A stopped link still in the map is replaced: its task is ending.
        if links.len() >= self.config.links_max && !links.contains_key(&to) {
            return Err(SendError::TooManyLinks {
                to,
                links_max: self.config.links_max,
            });
        }
        let link = Rc::new(Link {
            to,
            state: Cell::new(LinkState::Connecting),
            refusal: RefCell::new(None),
            queue: RefCell::default(),
            pending_frames: Cell::new(0),
            pending_bytes: Cell::new(0),
            requests: RefCell::default(),
            next_correlation_id: Cell::new(1),
            stats: RefCell::default(),
            waker: Cell::new(None),
            redial: Cell::new(false),
            stopped: Cell::new(false),
        });
        links.insert(to, link.clone());
        self.tasks.set(self.tasks.get() + 1);
        glommio::spawn_local(run_link(self.clone(), link.clone())).detach();
        Ok(link)
    }

    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        for link in self.links.borrow().values() {
            link.stopped.set(true);
            wake(&link.waker);
        }
    }

    /// A link task ended: its stats retire with it.
    fn retire(&self, link: &Rc<Link>) {
        self.retired.borrow_mut().add(&link.stats.borrow());
        let mut links = self.links.borrow_mut();
        if links.get(&link.to).is_some_and(|l| Rc::ptr_eq(l, link)) {
            links.remove(&link.to);
        }
        drop(links);
        self.tasks.set(self.tasks.get() - 1);
        wake(&self.tasks_waker);
    }
}

impl Link {
    /// Queues `frame` unless the link is backing off or its queue is full.
    fn enqueue(&self, links: &Links, frame: Frame, correlation_id: u64) -> Result<(), SendError> {
        let state = self.state.get();
        if matches!(state, LinkState::Backoff | LinkState::Refused) {
            self.drop_one(links);
            return Err(SendError::Unreachable { to: self.to, state });
        }
        let frames = self.pending_frames.get();
        let bytes = self.pending_bytes.get();
        if frames >= links.config.queue_frames_max
            || (bytes > 0 && bytes + frame.len() > links.config.queue_bytes_max)
        {
            self.drop_one(links);
            return Err(SendError::QueueFull {
                to: self.to,
                frames,
                bytes,
            });
        }
        self.pending_frames.set(frames + 1);
        self.pending_bytes.set(bytes + frame.len());
        self.queue.borrow_mut().push_back(Queued {
            frame,
            correlation_id,
        });
        wake(&self.waker);
        Ok(())
    }

    fn drop_one(&self, links: &Links) {
        self.stats.borrow_mut().frames_dropped += 1;
        links.unreachable.borrow_mut().insert(self.to);
    }

    /// Moves the queued frames into the writer's queue; requests among
    /// them count as sent from now on.
    fn take_queued(&self, into: &mut WriteQueue) {
        let mut queue = self.queue.borrow_mut();
        if queue.is_empty() {
            return;
        }
        let mut requests = self.requests.borrow_mut();
        for queued in queue.drain(..) {
            if queued.correlation_id != 0 {
                if let Some(slot) = requests.get_mut(&queued.correlation_id) {
                    slot.sent = true;
                }
            }
            into.push(queued.frame);
        }
    }

    /// One write took `bytes` bytes, completing `frames` frames.
    fn written(&self, frames: usize, bytes: usize) {
        self.pending_frames
            .set(self.pending_frames.get().saturating_sub(frames));
        self.pending_bytes
            .set(self.pending_bytes.get().saturating_sub(bytes));
        let mut stats = self.stats.borrow_mut();
        stats.frames_sent += frames as u64;
        stats.bytes_sent += bytes as u64;
        stats.writes += 1;
    }

    /// The connection (or the dial) failed or ended: drops everything not
    /// yet written and ends the requests waiting, those not sent with
    /// `unsent`, the others with `ConnectionLost`.
    fn fail_pending(&self, links: &Links, unsent: &RequestError) {
        self.queue.borrow_mut().clear();
        let dropped = self.pending_frames.replace(0);
        self.pending_bytes.set(0);
        self.stats.borrow_mut().frames_dropped += dropped as u64;
        links.unreachable.borrow_mut().insert(self.to);
        for slot in self.requests.borrow_mut().values_mut() {
            if slot.outcome.is_none() {
                slot.outcome = Some(Err(if slot.sent {
                    RequestError::ConnectionLost
                } else {
                    unsent.clone()
                }));
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// A reply arrived for request `correlation_id`; ignored if it timed
    /// out meanwhile.
    fn complete(&self, correlation_id: u64, reply: ControllerReply) {
        let mut requests = self.requests.borrow_mut();
        let Some(slot) = requests.get_mut(&correlation_id) else {
            return;
        };
        if slot.outcome.is_none() {
            slot.outcome = Some(Ok(reply));
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
            drop(requests);
            self.stats.borrow_mut().responses += 1;
        }
    }

    fn poll_reply(
        &self,
        correlation_id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<ControllerReply, RequestError>> {
        let mut requests = self.requests.borrow_mut();
        let Some(slot) = requests.get_mut(&correlation_id) else {
            return Poll::Ready(Err(RequestError::Closed));
        };
        match slot.outcome.take() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Completes when the link must stop or redial.
    async fn interrupted(&self) {
        poll_fn(|cx| {
            if self.stopped.get() || self.redial.get() {
                return Poll::Ready(());
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
    }
}

/// Why a dial did not give a connection.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("handshake refused: {0}")]
    Refused(Refusal),
}

/// Why a connected link's connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnEnd {
    #[error("stopped or redialing")]
    Interrupted,
    #[error("the listener closed the connection")]
    PeerClosed,
    #[error("connection i/o failed: {0}")]
    Io(io::Error),
    #[error("the listener's bytes are not frames: {0}")]
    Frame(FrameError),
    #[error("the listener broke the protocol: {0}")]
    Protocol(&'static str),
}

/// A link's task: dial, serve the connection, back off, until stopped.
async fn run_link(links: Rc<Links>, link: Rc<Link>) {
    let seed = SplitMix64(
        links.jitter_seed ^ ((u64::from(link.to.node_id as u32) << 16) | u64::from(link.to.shard)),
    )
    .next();
    let mut backoff = Backoff::new(links.config.backoff_min, links.config.backoff_max, seed);
    // Bounded by the link's life: each turn dials once and then waits a
    // backoff delay, unless the address changed.
    while !link.stopped.get() {
        link.redial.set(false);
        let Some(addr) = links.address_of(link.to) else {
            break;
        };
        link.state.set(LinkState::Connecting);
        let dialed = or(async { Some(dial(&links, &link, addr).await) }, async {
            link.interrupted().await;
            None
        })
        .await;
        let unsent = match dialed {
            // Stopped, or the address changed: nothing was sent yet, so
            // what is queued waits for the next dial.
            None => continue,
            Some(Ok(stream)) => {
                backoff.reset();
                link.state.set(LinkState::Connected);
                link.refusal.replace(None);
                link.stats.borrow_mut().connects += 1;
                tracing::debug!(to = %link.to, %addr, "inter-broker link connected");
                let end = connected(&links, &link, stream).await;
                if link.stopped.get() {
                    break;
                }
                tracing::debug!(to = %link.to, %end, "inter-broker link disconnected");
                link.stats.borrow_mut().disconnects += 1;
                link.state.set(LinkState::Backoff);
                RequestError::Unreachable(link.to)
            }
            Some(Err(DialError::Refused(refusal))) => {
                tracing::debug!(to = %link.to, %refusal, "inter-broker handshake refused");
                link.stats.borrow_mut().refusals += 1;
                link.state.set(LinkState::Refused);
                link.refusal.replace(Some(refusal.clone()));
                RequestError::Refused(refusal)
            }
            Some(Err(error)) => {
                tracing::debug!(to = %link.to, %addr, %error, "inter-broker dial failed");
                link.stats.borrow_mut().connect_failures += 1;
                link.state.set(LinkState::Backoff);
                RequestError::Unreachable(link.to)
            }
        };
        link.fail_pending(&links, &unsent);
        if link.redial.get() {
            backoff.reset();
            continue;
        }
        let delay = backoff.next_delay();
        or(glommio::timer::sleep(delay), link.interrupted()).await;
    }
    link.fail_pending(&links, &RequestError::Closed);
    links.retire(&link);
}

/// Connects to `addr` and runs the dialer's side of the handshake.
async fn dial(links: &Links, link: &Link, addr: SocketAddr) -> Result<TcpStream, DialError> {
    let config = &links.config;
    let mut stream = TcpStream::connect_timeout(addr, config.connect_timeout)
        .await
        .map_err(|error| DialError::Connect(error.into()))?;
    configure(&stream, config.keepalive_idle, config.keepalive_interval);
    let identity = &links.identity;
    let hello = HelloInfo {
        cluster_id: identity.cluster_id.clone(),
        node_id: identity.node_id,
        incarnation: identity.incarnation,
        from_shard: identity.shard,
        to_shard: link.to.shard,
        expected_node_id: link.to.node_id,
    };
    let handshake = async {
        let mut queue = WriteQueue::with_coalesce_bytes(0);
        queue.push(hello_frame(&hello, PROTOCOL_VERSION)?);
        write_all(&mut stream, &mut queue).await?;
        let mut decoder = FrameDecoder::with_frame_bytes_max(HANDSHAKE_FRAME_BYTES_MAX);
        let frame = read_frame(&mut stream, &mut decoder).await?;
        if decoder.buffered() != 0 {
            return Err(HandshakeError::Protocol(
                "the listener sent more than its HelloReply before the dialer answered",
            ));
        }
        let envelope = EnvelopeFrame::verify(frame)?;
        let reply = envelope
            .envelope()
            .body_as_hello_reply()
            .ok_or(HandshakeError::Protocol(
                "the first frame is not a HelloReply",
            ))?;
        Ok(reply_info(reply))
    };
    let deadline = async {
        glommio::timer::sleep(config.handshake_timeout).await;
        Err(HandshakeError::Timeout)
    };
    let (reply, refusal) = or(handshake, deadline).await?;
    if let Some(refusal) = refusal {
        links.admission.refused(link.to, &refusal);
        return Err(DialError::Refused(refusal));
    }
    let verdict = check_reply(identity, link.to, &reply)
        .and_then(|()| links.admission.check_reply(link.to, &reply));
    if let Err(refusal) = verdict {
        links.admission.rejected_reply(link.to, &reply, &refusal);
        shutdown_write(&mut stream).await;
        return Err(DialError::Refused(refusal));
    }
    Ok(stream)
}

/// Serves a connected link until its connection ends or it is
/// interrupted; then closes the connection.
async fn connected(links: &Links, link: &Link, stream: TcpStream) -> ConnEnd {
    let io = RefCell::new(stream);
    let end = or(
        or(write_side(&io, link), read_side(&io, links, link)),
        async {
            link.interrupted().await;
            ConnEnd::Interrupted
        },
    )
    .await;
    let mut stream = io.into_inner();
    shutdown_write(&mut stream).await;
    end
}

/// Writes queued frames as they come, as many per system call as are
/// queued. Ends only on a write error.
async fn write_side(io: &RefCell<TcpStream>, link: &Link) -> ConnEnd {
    let mut queue = WriteQueue::with_coalesce_bytes(0);
    loop {
        link.take_queued(&mut queue);
        if queue.is_empty() {
            poll_fn(|cx| {
                if !link.queue.borrow().is_empty() {
                    return Poll::Ready(());
                }
                link.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
            continue;
        }
        let written = poll_fn(|cx| poll_write_queue(&mut io.borrow_mut(), cx, &mut queue)).await;
        match written {
            Ok(0) => return ConnEnd::Io(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let frames = queue.advance(n);
                link.written(frames, n);
            }
            Err(error) => return ConnEnd::Io(error),
        }
        // A link kept busy must not keep the shard's other tasks waiting.
        glommio::yield_if_needed().await;
    }
}

/// Reads controller responses. Anything else from the listener breaks the
/// protocol and ends the connection.
async fn read_side(io: &RefCell<TcpStream>, links: &Links, link: &Link) -> ConnEnd {
    let mut decoder = FrameDecoder::with_frame_bytes_max(links.config.frame_bytes_max);
    loop {
        loop {
            let frame = match decoder.decode() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => return ConnEnd::Frame(error),
            };
            let Ok(envelope) = EnvelopeFrame::verify(frame) else {
                return ConnEnd::Protocol("a frame from the listener is not a valid envelope");
            };
            if envelope.body_type() != Body::ControllerResponse {
                return ConnEnd::Protocol("the listener sent something else than a response");
            }
            if let Some(reply) = controller_reply(&envelope) {
                link.complete(envelope.correlation_id(), reply);
            }
        }
        let read =
            poll_fn(|cx| poll_read_into(&mut io.borrow_mut(), cx, &mut decoder, LINK_READ_BYTES))
                .await;
        match read {
            Ok(0) => {
                return match decoder.decode_eof() {
                    Err(error) => ConnEnd::Frame(error),
                    Ok(_) => ConnEnd::PeerClosed,
                }
            }
            Ok(_) => {}
            Err(error) => return ConnEnd::Io(error),
        }
    }
}
