//! The inter-broker transport over real sockets on 127.0.0.1: handshakes
//! accepted and refused (by net's checks and by the Admission, seen from
//! both sides), Raft batches delivered in order without copying, a
//! listener that goes away and comes back, the queue bound, controller
//! requests (answered, timed out, unreachable, lost), garbage on the
//! listener, and an exclusive listening port.
//!
//! Each test runs one glommio executor holding the links, the listeners
//! and any raw sockets as tasks, and fails after `TEST_TIMEOUT` instead of
//! hanging. Waiting is polling with a deadline, never a sleep standing in
//! for an event.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use shardmq_net::peer::envelope::{
    controller_request_frame, hello_frame, hello_reply_frame, raft_batch_frame,
};
use shardmq_net::peer::{
    listen_peers, Admission, ControllerReply, EnvelopeFrame, HelloInfo, InboundStats,
    InboundStatsHandle, LinkState, PeerAddr, PeerConfig, PeerHandler, PeerIdentity, PeerLinks,
    Refusal, ReplyInfo, RequestError, SendError,
};
use shardmq_net::{Frame, FrameDecoder, NetError, Shutdown};
use shardmq_schema::interbroker::{
    Body, Entry, EntryArgs, EntryType, PeerError, RaftBatch, RaftBatchArgs, RaftMessage,
    RaftMessageArgs, PROTOCOL_VERSION,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for one expected state.
const WAIT_MAX: Duration = Duration::from_secs(20);

/// Time between two checks of an expected state.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// Runs `test` on a fresh executor, failing it if it takes longer than
/// `TEST_TIMEOUT`.
fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("glommio executor")
        .run(async move {
            futures_lite::future::or(test(), async {
                glommio::timer::sleep(TEST_TIMEOUT).await;
                panic!("test did not finish within {TEST_TIMEOUT:?}");
            })
            .await
        });
}

/// Waits until `done` holds, checking every `POLL_INTERVAL`, failing after
/// `WAIT_MAX`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        glommio::timer::sleep(POLL_INTERVAL).await;
    }
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An address where nothing listens (as far as this test knows: a port
/// just released by the kernel).
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind(localhost()).expect("bind");
    listener.local_addr().expect("local addr")
}

fn identity(cluster_id: &str, node_id: i32, shard: u16) -> PeerIdentity {
    PeerIdentity {
        cluster_id: cluster_id.into(),
        node_id,
        incarnation: 1000 + node_id as u64,
        shard,
    }
}

/// Quick backoff, so reconnects happen within a test.
fn config() -> PeerConfig {
    PeerConfig {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        handshake_timeout: Duration::from_secs(2),
        ..PeerConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// A Raft batch of one message of group `seq` carrying `payload` as its
/// one entry's data, as the engine would build it.
fn batch(seq: u64, payload: &[u8]) -> Frame {
    let mut builder = FlatBufferBuilder::with_capacity(payload.len() + 256);
    let data = builder.create_vector(payload);
    let entry = Entry::create(
        &mut builder,
        &EntryArgs {
            entry_type: EntryType::Normal,
            term: 1,
            index: seq,
            data: Some(data),
            context: None,
        },
    );
    let entries = builder.create_vector(&[entry]);
    let message = RaftMessage::create(
        &mut builder,
        &RaftMessageArgs {
            group: seq,
            msg_type: 3,
            to: 2,
            from: 1,
            entries: Some(entries),
            ..Default::default()
        },
    );
    let messages = builder.create_vector(&[message]);
    let batch = RaftBatch::create(
        &mut builder,
        &RaftBatchArgs {
            messages: Some(messages),
        },
    );
    raft_batch_frame(builder, batch).expect("raft batch frame")
}

/// The group and entry data of a batch made by [`batch`].
fn read_batch(frame: &EnvelopeFrame) -> (u64, &[u8]) {
    let batch = frame.raft_batch().expect("a RaftBatch body");
    let message = batch.messages().expect("messages").get(0);
    let data = message
        .entries()
        .expect("entries")
        .get(0)
        .data()
        .expect("data");
    (message.group(), data.bytes())
}

fn payload(seq: u64) -> Vec<u8> {
    // Sizes from a few bytes to well past a socket buffer, so writes are
    // partial and vectored over several frames.
    let len = match seq % 4 {
        0 => 3,
        1 => 1000,
        2 => 40_000,
        _ => 300_000,
    };
    (0..len).map(|i| (seq as usize + i) as u8).collect()
}

// ---------------------------------------------------------------------------
// The engine's side: an Admission and a handler that record what they see
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Gate {
    /// The incarnation a dialing node must have, when set.
    incarnations: RefCell<HashMap<i32, u64>>,
    /// Refuse every accepting reply with this, when set.
    refuse_replies: RefCell<Option<Refusal>>,
    refused: RefCell<Vec<(PeerAddr, Refusal)>>,
    refused_hellos: RefCell<Vec<(HelloInfo, Refusal)>>,
    rejected_replies: RefCell<Vec<(PeerAddr, ReplyInfo, Refusal)>>,
}

impl Admission for Gate {
    fn admit(&self, hello: &HelloInfo) -> Result<(), Refusal> {
        match self.incarnations.borrow().get(&hello.node_id) {
            Some(&expected) if expected != hello.incarnation => Err(Refusal::new(
                PeerError::IncarnationMismatch,
                format!(
                    "node {} is registered with incarnation {expected}, not {}",
                    hello.node_id, hello.incarnation
                ),
            )),
            _ => Ok(()),
        }
    }

    fn check_reply(&self, _dialed: PeerAddr, _reply: &ReplyInfo) -> Result<(), Refusal> {
        match &*self.refuse_replies.borrow() {
            Some(refusal) => Err(refusal.clone()),
            None => Ok(()),
        }
    }

    fn refused(&self, by: PeerAddr, refusal: &Refusal) {
        self.refused.borrow_mut().push((by, refusal.clone()));
    }

    fn refused_hello(&self, hello: &HelloInfo, refusal: &Refusal) {
        self.refused_hellos
            .borrow_mut()
            .push((hello.clone(), refusal.clone()));
    }

    fn rejected_reply(&self, dialed: PeerAddr, reply: &ReplyInfo, refusal: &Refusal) {
        self.rejected_replies
            .borrow_mut()
            .push((dialed, reply.clone(), refusal.clone()));
    }
}

#[derive(Default)]
struct Recorder {
    batches: RefCell<Vec<(PeerAddr, EnvelopeFrame)>>,
    requests: Cell<usize>,
    /// Requests whose command is `hang` wait for this.
    release: Shutdown,
}

impl Recorder {
    fn groups(&self) -> Vec<u64> {
        self.batches
            .borrow()
            .iter()
            .map(|(_, frame)| read_batch(frame).0)
            .collect()
    }
}

impl PeerHandler for Recorder {
    fn on_raft_batch(&self, from: PeerAddr, frame: EnvelopeFrame) {
        self.batches.borrow_mut().push((from, frame));
    }

    fn on_controller_request(
        &self,
        from: PeerAddr,
        command: Bytes,
    ) -> impl Future<Output = ControllerReply> {
        self.requests.set(self.requests.get() + 1);
        let release = self.release.clone();
        async move {
            if &command[..] == b"hang" {
                release.listen().await;
            }
            ControllerReply {
                error_code: 0,
                message: format!("applied for {from}"),
                result: command.iter().rev().copied().collect::<Vec<u8>>().into(),
            }
        }
    }
}

/// A listener serving in a task of its own.
struct Listener {
    addr: SocketAddr,
    gate: Rc<Gate>,
    handler: Rc<Recorder>,
    stats: InboundStatsHandle,
    shutdown: Shutdown,
    task: glommio::Task<InboundStats>,
}

impl Listener {
    fn start(addr: SocketAddr, identity: PeerIdentity, config: PeerConfig) -> Self {
        let gate = Rc::new(Gate::default());
        let handler = Rc::new(Recorder::default());
        let server = listen_peers(addr, identity, config, gate.clone(), handler.clone())
            .expect("listen_peers");
        Self {
            addr: server.local_addr(),
            gate,
            handler,
            stats: server.stats_handle(),
            shutdown: server.shutdown_handle(),
            task: glommio::spawn_local(server.serve()),
        }
    }

    async fn stop(self) -> InboundStats {
        self.handler.release.trigger();
        self.shutdown.trigger();
        self.task.await
    }
}

/// Links of node 1 shard 0 in cluster "prod", with their Admission.
fn links(config: PeerConfig) -> (PeerLinks, Rc<Gate>) {
    let gate = Rc::new(Gate::default());
    let links = PeerLinks::new(identity("prod", 1, 0), config, gate.clone(), 7);
    (links, gate)
}

// ---------------------------------------------------------------------------
// Raw sockets, to play a broken or hostile peer
// ---------------------------------------------------------------------------

/// The next frame from `stream`, `None` at the end of the stream or on a
/// reset.
async fn raw_frame(stream: &mut TcpStream, decoder: &mut FrameDecoder) -> Option<Frame> {
    loop {
        if let Some(frame) = decoder.decode().expect("framing") {
            return Some(frame);
        }
        let buffer = decoder.buffer_mut(4096);
        match stream.read(buffer).await {
            Ok(0) => return None,
            Ok(n) => decoder.advance(n),
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => return None,
            Err(error) => panic!("read failed: {error}"),
        }
    }
}

/// Reads until the peer closes; returns how many bytes came first.
async fn read_to_close(stream: &mut TcpStream) -> usize {
    let mut buffer = vec![0; 64 << 10];
    let mut total = 0;
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => return total,
            Err(error) => panic!("read failed: {error}"),
        }
    }
}

fn hello(cluster_id: &str, node_id: i32, to_shard: u16, expected_node_id: i32) -> HelloInfo {
    HelloInfo {
        cluster_id: cluster_id.into(),
        node_id,
        incarnation: 1000 + node_id as u64,
        from_shard: 0,
        to_shard,
        expected_node_id,
    }
}

/// Dials `addr` and completes the handshake as node `node_id` would;
/// panics unless accepted.
async fn raw_dial(addr: SocketAddr, node_id: i32) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let frame = hello_frame(&hello("prod", node_id, 0, 2), PROTOCOL_VERSION).unwrap();
    stream
        .write_all(frame.as_bytes())
        .await
        .expect("send Hello");
    let mut decoder = FrameDecoder::new();
    let reply = raw_frame(&mut stream, &mut decoder).await.expect("a reply");
    let reply = EnvelopeFrame::verify(reply).expect("valid reply");
    let reply = reply.envelope().body_as_hello_reply().expect("HelloReply");
    assert_eq!(reply.error(), PeerError::None, "{:?}", reply.message());
    stream
}

/// Runs `futures` concurrently in this task; their outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("ready"))
        .collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn handshake_accepted_and_batches_delivered_in_order_without_copy() {
    const FRAMES: u64 = 100;
    run(|| async {
        // Node 2's shard 1: its shard 0 would listen one port below.
        let listener = Listener::start(localhost(), identity("prod", 2, 1), config());
        let (links, gate) = links(config());
        let mut shard0 = listener.addr;
        shard0.set_port(listener.addr.port() - 1);
        links.set_address(2, shard0);
        let to = PeerAddr::new(2, 1);
        assert_eq!(links.link_state(to), LinkState::Idle);

        let mut bytes = 0;
        for seq in 0..FRAMES {
            let frame = batch(seq, &payload(seq));
            bytes += frame.len() as u64;
            links.send(to, frame).expect("queued");
            if seq % 10 == 9 {
                // Let the link write between bursts.
                glommio::yield_if_needed().await;
                glommio::executor().yield_task_queue_now().await;
            }
        }
        let handler = listener.handler.clone();
        eventually("every batch", || {
            handler.batches.borrow().len() == FRAMES as usize
        })
        .await;
        assert_eq!(handler.groups(), (0..FRAMES).collect::<Vec<_>>());
        for (from, frame) in handler.batches.borrow().iter() {
            assert_eq!(*from, PeerAddr::new(1, 0));
            let (seq, data) = read_batch(frame);
            assert_eq!(data, &payload(seq)[..]);
            // The entry's data is the received frame's memory.
            let shared = frame.share(data).expect("data is part of the frame");
            assert_eq!(shared.as_ptr(), data.as_ptr());
            assert!(frame
                .frame()
                .as_bytes()
                .as_ptr_range()
                .contains(&data.as_ptr()));
        }

        assert_eq!(links.link_state(to), LinkState::Connected);
        assert!(links.take_unreachable().is_empty());
        let stats = links.stats();
        let link = stats.links[&to];
        assert_eq!(link.frames_sent, FRAMES);
        assert_eq!(link.bytes_sent, bytes);
        assert_eq!((link.frames_dropped, link.connects), (0, 1));
        assert_eq!((link.connect_failures, link.refusals), (0, 0));
        assert_eq!(stats.total, link);
        assert!(gate.refused.borrow().is_empty());

        links.close().await;
        assert_eq!(links.send(to, batch(0, b"late")), Err(SendError::Closed));
        let inbound = listener.stop().await;
        assert_eq!(inbound.handshakes_accepted, 1);
        assert_eq!(inbound.protocol_errors, 0);
        let source = inbound.sources[&1];
        assert_eq!((source.raft_batches, source.frames), (FRAMES, FRAMES));
        assert_eq!(source.bytes, bytes);
    });
}

#[test]
fn frames_queued_together_go_out_in_one_write() {
    run(|| async {
        let listener = Listener::start(localhost(), identity("prod", 2, 0), config());
        let (links, _gate) = links(config());
        links.set_address(2, listener.addr);
        let to = PeerAddr::new(2, 0);
        // Queued while the link dials: 50 frames of about 200 bytes, far
        // below a socket buffer and the slices of one sendmsg.
        for seq in 0..50 {
            links.send(to, batch(seq, &[5; 100])).unwrap();
        }
        let handler = listener.handler.clone();
        eventually("every batch", || handler.batches.borrow().len() == 50).await;
        assert_eq!(handler.groups(), (0..50).collect::<Vec<_>>());
        let link = links.stats().links[&to];
        assert_eq!((link.frames_sent, link.writes), (50, 1));
        links.close().await;
        listener.stop().await;
    });
}

#[test]
fn cluster_mismatch_is_refused_with_the_reason_on_both_sides() {
    run(|| async {
        let listener = Listener::start(localhost(), identity("test", 2, 0), config());
        let (links, gate) = links(config());
        links.set_address(2, listener.addr);
        let to = PeerAddr::new(2, 0);
        links
            .send(to, batch(0, b"x"))
            .expect("queued while connecting");
        eventually("the refusal", || links.link_state(to) == LinkState::Refused).await;

        let (by, refusal) = gate.refused.borrow()[0].clone();
        assert_eq!(by, to);
        assert_eq!(refusal.code, PeerError::ClusterMismatch);
        assert!(refusal.message.contains("\"prod\"") && refusal.message.contains("\"test\""));
        let (hello, seen) = listener.gate.refused_hellos.borrow()[0].clone();
        assert_eq!(seen, refusal, "both sides see the same reason");
        assert_eq!((hello.node_id, hello.cluster_id.as_str()), (1, "prod"));

        // Refused: frames and requests fail at once, nothing reached the
        // handler.
        assert_eq!(
            links.send(to, batch(1, b"y")),
            Err(SendError::Unreachable {
                to,
                state: LinkState::Refused
            })
        );
        let outcome = links.request(to, b"cmd", Duration::from_secs(5)).await;
        assert!(
            matches!(&outcome, Err(RequestError::Refused(r)) if r.code == PeerError::ClusterMismatch),
            "{outcome:?}"
        );
        assert!(listener.handler.batches.borrow().is_empty());
        assert_eq!(links.take_unreachable(), vec![to]);
        let link = links.stats().links[&to];
        assert!(link.refusals >= 1);
        assert_eq!(link.frames_dropped, 2);
        assert_eq!(link.connects, 0);

        links.close().await;
        let inbound = listener.stop().await;
        assert!(inbound.handshakes_refused >= 1);
        assert_eq!(inbound.handshakes_accepted, 0);
    });
}

#[test]
fn admission_refusal_reaches_the_dialer_and_is_retried_with_backoff() {
    run(|| async {
        let listener = Listener::start(localhost(), identity("prod", 2, 0), config());
        // Node 1 is registered with another incarnation.
        listener.gate.incarnations.borrow_mut().insert(1, 77);
        let (links, gate) = links(config());
        links.set_address(2, listener.addr);
        let to = PeerAddr::new(2, 0);
        let started = Instant::now();
        links
            .send(to, batch(0, b"x"))
            .expect("queued while connecting");
        eventually("three refusals", || gate.refused.borrow().len() >= 3).await;
        let elapsed = started.elapsed();

        let (by, refusal) = gate.refused.borrow()[0].clone();
        assert_eq!(by, to);
        assert_eq!(refusal.code, PeerError::IncarnationMismatch);
        assert_eq!(
            refusal.message,
            "node 1 is registered with incarnation 77, not 1001"
        );
        assert_eq!(links.link_state(to), LinkState::Refused);
        // Backing off: no more than one attempt per half the first delay.
        let refusals = links.stats().links[&to].refusals;
        let attempts_max = elapsed.as_millis() / 5 + 1;
        assert!(
            u128::from(refusals) <= attempts_max,
            "{refusals} refusals in {elapsed:?}"
        );

        // Once the engine's rules change, the link recovers by itself.
        listener.gate.incarnations.borrow_mut().insert(1, 1001);
        eventually("the link connected", || {
            links.link_state(to) == LinkState::Connected
        })
        .await;
        links.send(to, batch(1, b"y")).expect("queued");
        let handler = listener.handler.clone();
        eventually("the batch", || handler.batches.borrow().len() == 1).await;
        assert_eq!(handler.groups(), vec![1]);

        links.close().await;
        listener.stop().await;
    });
}

#[test]
fn wrong_shard_and_wrong_node_are_refused_by_net() {
    run(|| async {
        // Node 2 shard 1 listens where the dialer believes shard 0 is.
        let listener = Listener::start(localhost(), identity("prod", 2, 1), config());
        let (links, gate) = links(config());
        links.set_address(2, listener.addr);
        // Node 3's shard 1 would listen there too.
        let mut node3 = listener.addr;
        node3.set_port(listener.addr.port() - 1);
        links.set_address(3, node3);
        links.send(PeerAddr::new(2, 0), batch(0, b"x")).unwrap();
        links.send(PeerAddr::new(3, 1), batch(0, b"x")).unwrap();
        eventually("two refusals", || {
            links.link_state(PeerAddr::new(2, 0)) == LinkState::Refused
                && links.link_state(PeerAddr::new(3, 1)) == LinkState::Refused
        })
        .await;
        let codes: HashMap<PeerAddr, PeerError> = gate
            .refused
            .borrow()
            .iter()
            .map(|(by, refusal)| (*by, refusal.code))
            .collect();
        assert_eq!(codes[&PeerAddr::new(2, 0)], PeerError::WrongShard);
        assert_eq!(codes[&PeerAddr::new(3, 1)], PeerError::WrongNode);
        links.close().await;
        listener.stop().await;
    });
}

#[test]
fn dialer_rejecting_a_reply_closes_without_sending_more() {
    run(|| async {
        // A listener that accepts every Hello, then reports what it got.
        let fake = TcpListener::bind(localhost()).expect("bind");
        let addr = fake.local_addr().expect("addr");
        let (links, gate) = links(config());
        *gate.refuse_replies.borrow_mut() = Some(Refusal::new(
            PeerError::IncarnationMismatch,
            "node 2 was wiped",
        ));
        links.set_address(2, addr);
        let to = PeerAddr::new(2, 0);
        links.send(to, batch(0, b"x")).unwrap();

        let mut stream = fake.accept().await.expect("accept");
        let mut decoder = FrameDecoder::new();
        let hello = raw_frame(&mut stream, &mut decoder).await.expect("Hello");
        let hello = EnvelopeFrame::verify(hello).expect("valid Hello");
        assert_eq!(hello.body_type(), Body::Hello);
        let reply = hello_reply_frame(&identity("prod", 2, 0), None).unwrap();
        stream.write_all(reply.as_bytes()).await.unwrap();
        assert_eq!(
            read_to_close(&mut stream).await,
            0,
            "nothing after the Hello"
        );

        eventually("the rejection", || {
            links.link_state(to) == LinkState::Refused
        })
        .await;
        let (dialed, reply, refusal) = gate.rejected_replies.borrow()[0].clone();
        assert_eq!(dialed, to);
        assert_eq!((reply.node_id, reply.incarnation), (2, 1002));
        assert_eq!(refusal.code, PeerError::IncarnationMismatch);
        assert!(gate.refused.borrow().is_empty(), "nobody refused us");

        // And a reply from another cluster is rejected by net itself.
        *gate.refuse_replies.borrow_mut() = None;
        let mut stream = fake.accept().await.expect("accept the next dial");
        let mut decoder = FrameDecoder::new();
        raw_frame(&mut stream, &mut decoder).await.expect("Hello");
        let reply = hello_reply_frame(&identity("test", 2, 0), None).unwrap();
        stream.write_all(reply.as_bytes()).await.unwrap();
        assert_eq!(read_to_close(&mut stream).await, 0);
        eventually("the second rejection", || {
            gate.rejected_replies.borrow().len() == 2
        })
        .await;
        assert_eq!(
            gate.rejected_replies.borrow()[1].2.code,
            PeerError::ClusterMismatch
        );
        links.close().await;
    });
}

#[test]
fn listener_gone_and_back_drops_meanwhile_then_reconnects() {
    run(|| async {
        let listener = Listener::start(localhost(), identity("prod", 2, 0), config());
        let addr = listener.addr;
        let (links, _gate) = links(config());
        links.set_address(2, addr);
        let to = PeerAddr::new(2, 0);
        for seq in 0..10 {
            links.send(to, batch(seq, b"before")).unwrap();
        }
        let handler = listener.handler.clone();
        eventually("the first batches", || handler.batches.borrow().len() == 10).await;
        assert!(links.take_unreachable().is_empty());

        // The listener goes away: the link notices and backs off.
        listener.stop().await;
        eventually("the link backing off", || {
            links.link_state(to) == LinkState::Backoff
        })
        .await;
        let dropped_before = links.stats().links[&to].frames_dropped;
        for seq in 10..15 {
            assert_eq!(
                links.send(to, batch(seq, b"meanwhile")),
                Err(SendError::Unreachable {
                    to,
                    state: LinkState::Backoff
                })
            );
        }
        assert_eq!(links.stats().links[&to].frames_dropped, dropped_before + 5);
        assert_eq!(links.take_unreachable(), vec![to]);
        eventually("a failed reconnect", || {
            links.stats().links[&to].connect_failures >= 1
        })
        .await;

        // Back on the same port: the link reconnects by itself.
        let listener = Listener::start(addr, identity("prod", 2, 0), config());
        eventually("the reconnect", || links.stats().links[&to].connects == 2).await;
        for seq in 100..110 {
            links.send(to, batch(seq, b"after")).unwrap();
        }
        let handler = listener.handler.clone();
        eventually("the later batches", || handler.batches.borrow().len() == 10).await;
        assert_eq!(handler.groups(), (100..110).collect::<Vec<_>>());
        let link = links.stats().links[&to];
        assert_eq!(link.frames_sent, 20);
        assert!(link.disconnects >= 1);

        links.close().await;
        listener.stop().await;
    });
}

#[test]
fn full_queue_drops_frames_instead_of_growing() {
    run(|| async {
        let listener = Listener::start(localhost(), identity("prod", 2, 0), config());
        let (links, _gate) = links(PeerConfig {
            queue_frames_max: 8,
            queue_bytes_max: 10_000,
            ..config()
        });
        links.set_address(2, listener.addr);
        let to = PeerAddr::new(2, 0);
        // Nothing runs between these sends: the link cannot write yet.
        let outcomes: Vec<_> = (0..20)
            .map(|seq| links.send(to, batch(seq, b"small")))
            .collect();
        assert!(outcomes[..8].iter().all(Result::is_ok));
        assert!(outcomes[8..]
            .iter()
            .all(|outcome| matches!(outcome, Err(SendError::QueueFull { frames: 8, .. }))));
        assert_eq!(links.stats().links[&to].frames_dropped, 12);
        assert_eq!(links.take_unreachable(), vec![to]);

        let handler = listener.handler.clone();
        eventually("the queued batches", || handler.batches.borrow().len() == 8).await;
        assert_eq!(handler.groups(), (0..8).collect::<Vec<_>>());
        eventually("the queue written", || {
            links.stats().links[&to].frames_sent == 8
        })
        .await;

        // The byte bound: one frame larger than it fits an empty queue,
        // nothing after it does.
        links
            .send(to, batch(100, &[1; 20_000]))
            .expect("alone in the queue");
        assert!(matches!(
            links.send(to, batch(101, b"small")),
            Err(SendError::QueueFull { frames: 1, .. })
        ));
        eventually("the large batch", || handler.batches.borrow().len() == 9).await;
        links.send(to, batch(102, &[2; 4000])).unwrap();
        links.send(to, batch(103, &[3; 4000])).unwrap();
        assert!(matches!(
            links.send(to, batch(104, &[4; 4000])),
            Err(SendError::QueueFull { frames: 2, .. })
        ));
        eventually("the last batches", || handler.batches.borrow().len() == 11).await;
        assert_eq!(handler.groups()[8..], [100, 102, 103]);
        assert_eq!(links.stats().links[&to].frames_dropped, 14);

        // Frames too large for any peer, or not envelopes, are refused.
        let client_frame =
            Frame::copy_from_slice(&[8, 0, 0, 0, 4, 0, 0, 0, b'S', b'M', b'Q', b'1']).unwrap();
        assert_eq!(links.send(to, client_frame), Err(SendError::NotEnvelope));
        links.close().await;
        listener.stop().await;
    });
}

#[test]
fn controller_requests_are_answered_on_the_same_connection() {
    run(|| async {
        let listener = Listener::start(localhost(), identity("prod", 2, 0), config());
        let (links, _gate) = links(config());
        links.set_address(2, listener.addr);
        let to = PeerAddr::new(2, 0);
        // Raft traffic and requests share the link.
        links.send(to, batch(0, b"x")).unwrap();
        let reply = links
            .request(to, b"create topic", Duration::from_secs(10))
            .await
            .expect("a reply");
        assert_eq!(reply.error_code, 0);
        assert_eq!(reply.message, "applied for node 1 shard 0");
        assert_eq!(&reply.result[..], b"cipot etaerc");

        // Many at once, answered concurrently and matched by correlation
        // id.
        let commands: Vec<Vec<u8>> = (0..20).map(|i| format!("cmd-{i}").into_bytes()).collect();
        let replies = join_all(
            commands
                .iter()
                .map(|command| links.request(to, command, Duration::from_secs(10)))
                .collect(),
        )
        .await;
        for (command, reply) in commands.iter().zip(replies) {
            let mut expected = command.clone();
            expected.reverse();
            assert_eq!(&reply.expect("a reply").result[..], &expected[..]);
        }
        let link = links.stats().links[&to];
        assert_eq!((link.requests, link.responses), (21, 21));
        links.close().await;
        let inbound = listener.stop().await;
        assert_eq!(inbound.sources[&1].controller_requests, 21);
        assert_eq!(inbound.sources[&1].raft_batches, 1);
    });
}

#[test]
fn controller_request_times_out_and_a_late_reply_is_ignored() {
    run(|| async {
        let listener = Listener::start(localhost(), identity("prod", 2, 0), config());
        let (links, _gate) = links(config());
        links.set_address(2, listener.addr);
        let to = PeerAddr::new(2, 0);
        let handler = listener.handler.clone();
        let outcome = links.request(to, b"hang", Duration::from_millis(200)).await;
        assert_eq!(outcome, Err(RequestError::Timeout));
        assert_eq!(handler.requests.get(), 1, "the request did arrive");

        // The late reply comes back and is dropped; the link goes on.
        handler.release.trigger();
        let reply = links
            .request(to, b"next", Duration::from_secs(10))
            .await
            .expect("a reply");
        assert_eq!(&reply.result[..], b"txen");
        assert_eq!(links.link_state(to), LinkState::Connected);
        let link = links.stats().links[&to];
        assert_eq!((link.requests, link.connects, link.disconnects), (2, 1, 0));
        links.close().await;
        listener.stop().await;
    });
}

#[test]
fn request_to_an_unreachable_peer_fails_without_waiting_out_its_timeout() {
    run(|| async {
        let (links, _gate) = links(config());
        let to = PeerAddr::new(3, 0);
        // No address at all.
        assert_eq!(
            links.request(to, b"cmd", Duration::from_secs(30)).await,
            Err(RequestError::Unreachable(to))
        );
        assert_eq!(
            links.send(to, batch(0, b"x")),
            Err(SendError::NoAddress { to })
        );

        // An address where nothing listens.
        links.set_address(3, closed_port());
        let started = Instant::now();
        assert_eq!(
            links.request(to, b"cmd", Duration::from_secs(30)).await,
            Err(RequestError::Unreachable(to))
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(links.link_state(to), LinkState::Backoff);
        assert_eq!(
            links.request(to, b"cmd", Duration::from_secs(30)).await,
            Err(RequestError::Unreachable(to)),
            "backing off: fails at once"
        );
        let link = links.stats().links[&to];
        assert!(link.connect_failures >= 1);
        assert_eq!(link.connects, 0);
        assert_eq!(links.take_unreachable(), vec![to]);
        links.close().await;
    });
}

#[test]
fn a_connection_lost_after_sending_leaves_the_outcome_unknown() {
    run(|| async {
        // A listener that accepts the handshake, reads the request and
        // hangs up without answering.
        let fake = TcpListener::bind(localhost()).expect("bind");
        let (links, _gate) = links(config());
        links.set_address(2, fake.local_addr().unwrap());
        let to = PeerAddr::new(2, 0);
        let peer = async {
            let mut stream = fake.accept().await.expect("accept");
            let mut decoder = FrameDecoder::new();
            raw_frame(&mut stream, &mut decoder).await.expect("Hello");
            let reply = hello_reply_frame(&identity("prod", 2, 0), None).unwrap();
            stream.write_all(reply.as_bytes()).await.unwrap();
            let request = raw_frame(&mut stream, &mut decoder).await.expect("request");
            let request = EnvelopeFrame::verify(request).expect("valid request");
            assert_eq!(request.body_type(), Body::ControllerRequest);
            drop(stream);
        };
        let (outcome, ()) =
            futures_lite::future::zip(links.request(to, b"cmd", Duration::from_secs(30)), peer)
                .await;
        assert_eq!(outcome, Err(RequestError::ConnectionLost));
        eventually("the link backing off", || {
            links.link_state(to) == LinkState::Backoff
        })
        .await;
        links.close().await;
    });
}

#[test]
fn garbage_does_not_take_the_listener_down() {
    run(|| async {
        let listener = Listener::start(
            localhost(),
            identity("prod", 2, 0),
            PeerConfig {
                handshake_timeout: Duration::from_millis(300),
                ..config()
            },
        );
        let addr = listener.addr;
        let (links, _gate) = links(config());
        links.set_address(2, addr);
        let to = PeerAddr::new(2, 0);
        links.send(to, batch(0, b"before")).unwrap();
        let handler = listener.handler.clone();
        eventually("the first batch", || handler.batches.borrow().len() == 1).await;

        // Before a handshake: each is closed, none is answered.
        let mut client_frame = hello_frame(&hello("prod", 5, 0, 2), PROTOCOL_VERSION)
            .unwrap()
            .as_bytes()
            .to_vec();
        client_frame[8..12].copy_from_slice(b"SMQ1");
        let mut rng = 0x5eed_u64;
        let mut noise = |len: usize| -> Vec<u8> {
            (0..len)
                .map(|_| {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (rng >> 56) as u8
                })
                .collect()
        };
        let mut garbage: Vec<Vec<u8>> = vec![
            u32::MAX.to_le_bytes().to_vec(),
            vec![0, 0, 0, 0],
            [&[200, 0, 0, 0][..], &[0xff; 200]].concat(),
            client_frame,
            controller_request_frame(1, b"before hello")
                .unwrap()
                .as_bytes()
                .to_vec(),
            Vec::new(), // says nothing: the handshake times out
        ];
        for len in [1, 7, 12, 100, 5000] {
            garbage.push(noise(len));
        }
        for bytes in &garbage {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(bytes).await.expect("send garbage");
            assert_eq!(read_to_close(&mut stream).await, 0, "garbage {bytes:?}");
        }

        // A Hello of another version is answered with the reason.
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let frame = hello_frame(&hello("prod", 5, 0, 2), PROTOCOL_VERSION + 1).unwrap();
        stream.write_all(frame.as_bytes()).await.unwrap();
        let mut decoder = FrameDecoder::new();
        let reply = raw_frame(&mut stream, &mut decoder).await.expect("a reply");
        let reply = EnvelopeFrame::verify(reply).expect("valid reply");
        let reply = reply.envelope().body_as_hello_reply().expect("HelloReply");
        assert_eq!(reply.error(), PeerError::UnsupportedVersion);
        assert!(
            raw_frame(&mut stream, &mut decoder).await.is_none(),
            "then closed"
        );

        // After a handshake: an unexpected body, a corrupt envelope, an
        // oversized prefix and a cut frame each close their connection.
        let corrupt = {
            // The root offset points past the end.
            let mut bytes = batch(9, b"z").as_bytes().to_vec();
            bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
            bytes
        };
        let reply_frame = hello_reply_frame(&identity("prod", 5, 0), None).unwrap();
        let cut = batch(9, &[7; 1000]).as_bytes()[..500].to_vec();
        for (index, bytes) in [
            reply_frame.as_bytes().to_vec(),
            corrupt,
            u32::MAX.to_le_bytes().to_vec(),
            cut,
        ]
        .iter()
        .enumerate()
        {
            let mut stream = raw_dial(addr, 10 + index as i32).await;
            stream.write_all(bytes).await.unwrap();
            if index == 3 {
                stream.shutdown(std::net::Shutdown::Write).await.unwrap();
            }
            assert_eq!(read_to_close(&mut stream).await, 0);
        }

        // The established link never noticed.
        links.send(to, batch(1, b"after")).unwrap();
        eventually("the second batch", || handler.batches.borrow().len() == 2).await;
        assert_eq!(handler.groups(), vec![0, 1]);
        assert_eq!(links.stats().links[&to].connects, 1);
        let stats = listener.stats.get();
        assert_eq!(stats.handshakes_failed, garbage.len() as u64);
        assert_eq!(stats.handshakes_refused, 1);
        assert_eq!(stats.protocol_errors, 4);
        assert_eq!(stats.handshakes_accepted, 5);

        links.close().await;
        listener.stop().await;
    });
}

#[test]
fn the_peer_port_is_not_shared() {
    run(|| async {
        let listener = Listener::start(localhost(), identity("prod", 2, 0), config());
        let addr = listener.addr;
        // Not by a plain bind (SO_REUSEADDR, as std does), not by glommio's
        // SO_REUSEPORT bind, not by a second peer listener.
        let error = std::net::TcpListener::bind(addr).expect_err("port taken");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        let error = io::Error::from(TcpListener::bind(addr).expect_err("port taken"));
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        let second = listen_peers(
            addr,
            identity("prod", 2, 0),
            config(),
            Rc::new(Gate::default()),
            Rc::new(Recorder::default()),
        );
        assert!(
            matches!(&second, Err(NetError::Bind { source, .. }) if source.kind() == io::ErrorKind::AddrInUse),
            "{second:?}"
        );
        listener.stop().await;
    });
}

#[test]
fn close_ends_links_and_their_requests() {
    run(|| async {
        let listener = Listener::start(localhost(), identity("prod", 2, 0), config());
        let (links, _gate) = links(config());
        links.set_address(2, listener.addr);
        let to = PeerAddr::new(2, 0);
        let handler = listener.handler.clone();
        let (outcome, ()) =
            futures_lite::future::zip(links.request(to, b"hang", Duration::from_secs(30)), async {
                eventually("the request arriving", || handler.requests.get() == 1).await;
                links.close().await;
            })
            .await;
        // It was sent: whether it was applied is unknown.
        assert_eq!(outcome, Err(RequestError::ConnectionLost));
        assert_eq!(
            links.request(to, b"cmd", Duration::from_secs(1)).await,
            Err(RequestError::Closed)
        );
        assert_eq!(links.stats().total.connects, 1);
        assert!(links.stats().links.is_empty(), "no link is left");
        listener.stop().await;
    });
}

#[test]
fn a_new_address_is_dialed_at_once() {
    run(|| async {
        let (links, _gate) = links(PeerConfig {
            // A failed dial would wait long: the address change must not.
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(30),
            ..config()
        });
        let to = PeerAddr::new(2, 0);
        links.set_address(2, closed_port());
        links.send(to, batch(0, b"lost")).unwrap();
        eventually("the failed dial", || {
            links.link_state(to) == LinkState::Backoff
        })
        .await;

        let listener = Listener::start(localhost(), identity("prod", 2, 0), config());
        links.set_address(2, listener.addr);
        eventually("the new dial", || {
            links.link_state(to) == LinkState::Connected
        })
        .await;
        links.send(to, batch(1, b"found")).unwrap();
        let handler = listener.handler.clone();
        eventually("the batch", || handler.batches.borrow().len() == 1).await;

        links.remove_node(2);
        assert_eq!(
            links.send(to, batch(2, b"gone")),
            Err(SendError::NoAddress { to })
        );
        eventually("the link ended", || links.link_state(to) == LinkState::Idle).await;
        assert_eq!(links.stats().total.connects, 1);
        links.close().await;
        listener.stop().await;
    });
}
