//! The inbound side of one shard: [`listen_peers`] binds the shard's
//! inter-broker port, [`PeerServer::serve`] accepts connections and serves
//! each in a task: handshake, then frames to the [`PeerHandler`].
//!
//! Hot path: the read loop of an accepted connection. Each frame is
//! verified once and handed to the handler as the bytes the socket read;
//! nothing per frame is allocated.
//!
//! # A connection
//!
//! | what arrives | what happens |
//! |--------------|--------------|
//! | no Hello within `handshake_timeout`, or bytes that are not one | closed, `handshakes_failed` |
//! | a Hello net or the Admission refuses | HelloReply with the refusal, then closed, `handshakes_refused` |
//! | after the handshake: a `RaftBatch` | [`PeerHandler::on_raft_batch`], in order |
//! | a `ControllerRequest` | [`PeerHandler::on_controller_request`] in a task, the reply written back; at `requests_in_flight_max` in flight, reading pauses |
//! | any other frame, an invalid envelope, an oversized or empty frame, a stream cut inside a frame | closed, `protocol_errors` |
//!
//! When a connection closes, its controller requests still running finish
//! and their replies are written (or dropped, if the socket broke) before
//! its task ends.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_lite::future::or;
use futures_lite::io::AsyncRead;
use glommio::net::{TcpListener, TcpStream};
use shardmq_schema::interbroker::Body;
use shardmq_schema::protocol::ErrorCode;

use super::envelope::{
    controller_command, controller_response_frame, hello_info, hello_reply_frame,
};
use super::handshake::{check_hello, read_frame, HandshakeError};
use super::socket::{
    bind_exclusive, configure, poll_read_into, poll_write_queue, shutdown_write, write_all,
};
use super::stats::InboundStats;
use super::{
    Admission, ControllerReply, EnvelopeFrame, HelloInfo, PeerAddr, PeerConfig, PeerHandler,
    PeerIdentity, Refusal, HANDSHAKE_FRAME_BYTES_MAX,
};
use crate::frame::{Frame, FrameDecoder, WriteQueue};
use crate::server::NetError;
use crate::shutdown::{Shutdown, ShutdownListener};

/// How long a refusing listener waits for the dialer to close after the
/// refusal, so the HelloReply is read rather than lost to a reset.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Most bytes read and discarded while lingering after a refusal.
const REFUSAL_LINGER_BYTES_MAX: usize = 64 << 10;

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Binds `addr` (port 0 for any free port) for the inter-broker traffic of
/// the shard `identity` names, without SO_REUSEPORT: a second listener on
/// the same port, in this process or another, fails with `AddrInUse`.
/// Must be called on a glommio executor; nothing is accepted until
/// [`PeerServer::serve`] runs.
pub fn listen_peers<H: PeerHandler>(
    addr: SocketAddr,
    identity: PeerIdentity,
    config: PeerConfig,
    admission: Rc<dyn Admission>,
    handler: Rc<H>,
) -> Result<PeerServer<H>, NetError> {
    let bind_error = |source: io::Error| NetError::Bind { addr, source };
    let listener = bind_exclusive(addr).map_err(bind_error)?;
    let local_addr = listener
        .local_addr()
        .map_err(|error| bind_error(error.into()))?;
    Ok(PeerServer {
        listener,
        local_addr,
        shared: Rc::new(Shared {
            identity,
            config: config.normalized(),
            admission,
            handler,
            stats: InboundStatsHandle::default(),
            active: Cell::new(0),
            waker: Cell::new(None),
        }),
        shutdown: Shutdown::new(),
    })
}

/// One shard's inter-broker listener, bound and ready to
/// [`serve`](Self::serve). Owned by that shard, `!Send`.
pub struct PeerServer<H> {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Rc<Shared<H>>,
    shutdown: Shutdown,
}

/// What the accept loop and the connection tasks share.
struct Shared<H> {
    identity: PeerIdentity,
    config: PeerConfig,
    admission: Rc<dyn Admission>,
    handler: Rc<H>,
    stats: InboundStatsHandle,
    /// Connections being served.
    active: Cell<usize>,
    /// The accept loop, waiting for a connection slot or for the last
    /// connection to end.
    waker: Cell<Option<Waker>>,
}

/// The live [`InboundStats`] of a [`PeerServer`], readable while it serves.
#[derive(Clone, Default)]
pub struct InboundStatsHandle {
    stats: Rc<RefCell<InboundStats>>,
}

impl InboundStatsHandle {
    /// The counts now.
    pub fn get(&self) -> InboundStats {
        self.stats.borrow().clone()
    }

    fn update(&self, f: impl FnOnce(&mut InboundStats)) {
        f(&mut self.stats.borrow_mut());
    }
}

impl fmt::Debug for InboundStatsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.stats.borrow().fmt(f)
    }
}

fn wake(slot: &Cell<Option<Waker>>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}

impl<H: PeerHandler> PeerServer<H> {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The signal that stops the server: triggering it stops accepting and
    /// tells every connection to stop reading.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The server's counts, readable while it serves.
    pub fn stats_handle(&self) -> InboundStatsHandle {
        self.shared.stats.clone()
    }

    /// The server's counts now.
    pub fn stats(&self) -> InboundStats {
        self.shared.stats.get()
    }

    /// Accepts connections and serves each in a task of its own, at most
    /// `connections_max` at once, until the shutdown is triggered; then
    /// closes the listening socket, lets every connection finish the
    /// controller requests it has read, and returns the counts once all
    /// are closed.
    pub async fn serve(self) -> InboundStats {
        let Self {
            listener,
            local_addr,
            shared,
            shutdown,
        } = self;
        let mut stop = shutdown.listen();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        tracing::debug!(%local_addr, shard = shared.identity.shard, "serving inter-broker connections");
        loop {
            let stopping = poll_fn(|cx| {
                if Pin::new(&mut stop).poll(cx).is_ready() {
                    return Poll::Ready(true);
                }
                if shared.active.get() < shared.config.connections_max {
                    return Poll::Ready(false);
                }
                shared.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
            if stopping {
                break;
            }
            let accepted = or(async { Some(listener.accept().await) }, async {
                (&mut stop).await;
                None
            })
            .await;
            let stream = match accepted {
                None => break,
                Some(Ok(stream)) => stream,
                Some(Err(error)) => {
                    let error = io::Error::from(error);
                    shared.stats.update(|stats| stats.accept_errors += 1);
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                    ) {
                        continue;
                    }
                    // Out of descriptors or memory: wait for connections to
                    // close rather than spin.
                    tracing::warn!(%error, ?backoff, "inter-broker accept failed");
                    or(glommio::timer::sleep(backoff), &mut stop).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            backoff = ACCEPT_BACKOFF_MIN;
            shared.active.set(shared.active.get() + 1);
            shared.stats.update(|stats| stats.connections += 1);
            let (shared, stop) = (shared.clone(), shutdown.listen());
            glommio::spawn_local(async move {
                serve_inbound(stream, &shared, stop).await;
                shared.active.set(shared.active.get() - 1);
                wake(&shared.waker);
            })
            .detach();
        }
        drop(listener);
        poll_fn(|cx| {
            if shared.active.get() == 0 {
                return Poll::Ready(());
            }
            shared.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        tracing::debug!(%local_addr, "inter-broker listener stopped");
        shared.stats.get()
    }
}

impl<H> fmt::Debug for PeerServer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerServer")
            .field("local_addr", &self.local_addr)
            .field("identity", &self.shared.identity)
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

/// How a handshake ended, when the socket held up.
enum Handshake {
    Accepted(HelloInfo),
    Refused(HelloInfo, Refusal),
}

/// Serves one accepted connection to its end.
async fn serve_inbound<H: PeerHandler>(
    mut stream: TcpStream,
    shared: &Rc<Shared<H>>,
    mut stop: ShutdownListener,
) {
    let config = &shared.config;
    configure(&stream, config.keepalive_idle, config.keepalive_interval);
    let deadline = async {
        glommio::timer::sleep(config.handshake_timeout).await;
        Err(HandshakeError::Timeout)
    };
    let stopped = async {
        (&mut stop).await;
        Err(HandshakeError::Closed)
    };
    let handshake = or(or(handshake(&mut stream, shared), deadline), stopped).await;
    let hello = match handshake {
        Ok(Handshake::Accepted(hello)) => hello,
        Ok(Handshake::Refused(hello, refusal)) => {
            tracing::debug!(from = %hello.from(), %refusal, "inter-broker handshake refused");
            shared.stats.update(|stats| stats.handshakes_refused += 1);
            shared.admission.refused_hello(&hello, &refusal);
            shutdown_write(&mut stream).await;
            linger(&mut stream, &mut stop).await;
            return;
        }
        Err(error) => {
            tracing::debug!(%error, "inter-broker handshake failed");
            shared.stats.update(|stats| stats.handshakes_failed += 1);
            return;
        }
    };
    shared.stats.update(|stats| stats.handshakes_accepted += 1);
    let from = hello.from();
    tracing::debug!(%from, "inter-broker connection accepted");
    let io = RefCell::new(stream);
    let conn = Rc::new(Conn::default());
    let reader = async {
        let end = read_side(&io, &conn, shared, from, &mut stop).await;
        conn.reading_done.set(true);
        wake(&conn.writer_waker);
        end
    };
    let (end, written) = futures_lite::future::zip(reader, write_side(&io, &conn)).await;
    shared.handler.on_disconnect(from);
    if let Err(error) = &end {
        tracing::debug!(%from, %error, "closing an inter-broker connection");
        shared.stats.update(|stats| stats.protocol_errors += 1);
    }
    if written.is_ok() {
        shutdown_write(&mut io.into_inner()).await;
    }
}

/// The listener's side of the handshake: read the Hello, check it, answer.
async fn handshake<H: PeerHandler>(
    stream: &mut TcpStream,
    shared: &Shared<H>,
) -> Result<Handshake, HandshakeError> {
    let mut decoder = FrameDecoder::with_frame_bytes_max(HANDSHAKE_FRAME_BYTES_MAX);
    let frame = read_frame(stream, &mut decoder).await?;
    if decoder.buffered() != 0 {
        return Err(HandshakeError::Protocol(
            "the dialer sent more than its Hello before the listener answered",
        ));
    }
    let envelope = EnvelopeFrame::verify(frame)?;
    let hello = envelope
        .envelope()
        .body_as_hello()
        .ok_or(HandshakeError::Protocol("the first frame is not a Hello"))?;
    let version = hello.version();
    let hello = hello_info(hello);
    let verdict = check_hello(&shared.identity, &hello, version)
        .and_then(|()| shared.admission.admit(&hello));
    let mut queue = WriteQueue::with_coalesce_bytes(0);
    queue.push(hello_reply_frame(&shared.identity, verdict.as_ref().err())?);
    write_all(stream, &mut queue).await?;
    Ok(match verdict {
        Ok(()) => Handshake::Accepted(hello),
        Err(refusal) => Handshake::Refused(hello, refusal),
    })
}

/// Reads and discards until the dialer closes, for at most
/// [`REFUSAL_LINGER`] and [`REFUSAL_LINGER_BYTES_MAX`] bytes.
async fn linger(stream: &mut TcpStream, stop: &mut ShutdownListener) {
    let discard = async {
        let mut sink = [0; 4 << 10];
        let mut discarded = 0;
        while discarded < REFUSAL_LINGER_BYTES_MAX {
            match poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut sink)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    };
    or(or(discard, glommio::timer::sleep(REFUSAL_LINGER)), stop).await;
}

/// State shared by an accepted connection's reader, writer and request
/// tasks.
#[derive(Default)]
struct Conn {
    /// Controller requests read whose reply is not yet written (or
    /// dropped).
    in_flight: Cell<usize>,
    /// Replies ready to be written.
    outbox: RefCell<VecDeque<Frame>>,
    reader_waker: Cell<Option<Waker>>,
    writer_waker: Cell<Option<Waker>>,
    /// No more requests will be read.
    reading_done: Cell<bool>,
    /// A write failed: replies are dropped from now on.
    broken: Cell<bool>,
}

impl Conn {
    /// A request is answered: its reply goes to the writer.
    fn finish(&self, reply: Frame) {
        if self.broken.get() {
            self.release(1);
        } else {
            self.outbox.borrow_mut().push_back(reply);
            wake(&self.writer_waker);
        }
    }

    /// `n` requests are done with: room for more.
    fn release(&self, n: usize) {
        self.in_flight.set(self.in_flight.get().saturating_sub(n));
        wake(&self.reader_waker);
        wake(&self.writer_waker);
    }
}

/// Why the reader of an accepted connection closed it.
#[derive(Debug, thiserror::Error)]
enum ProtocolError {
    #[error("connection i/o failed: {0}")]
    Io(#[from] io::Error),
    #[error("the dialer's bytes are not frames: {0}")]
    Frame(#[from] crate::frame::FrameError),
    #[error("a frame is not a valid envelope: {0}")]
    Envelope(#[from] shardmq_schema::protocol::FrameError),
    #[error("unexpected {0:?} frame from the dialer")]
    Unexpected(Body),
}

/// Reads and dispatches frames until the end of the stream, a broken
/// rule, the shutdown or a failed write.
async fn read_side<H: PeerHandler>(
    io: &RefCell<TcpStream>,
    conn: &Rc<Conn>,
    shared: &Rc<Shared<H>>,
    from: PeerAddr,
    stop: &mut ShutdownListener,
) -> Result<(), ProtocolError> {
    let config = &shared.config;
    let mut decoder = FrameDecoder::with_frame_bytes_max(config.frame_bytes_max);
    loop {
        while let Some(frame) = decoder.decode()? {
            let envelope = EnvelopeFrame::verify(frame)?;
            let len = envelope.frame().len() as u64;
            match envelope.body_type() {
                Body::RaftBatch => {
                    count(shared, from, len, false);
                    shared.handler.on_raft_batch(from, envelope);
                }
                Body::ControllerRequest => {
                    let stopping = poll_fn(|cx| {
                        if conn.broken.get() || Pin::new(&mut *stop).poll(cx).is_ready() {
                            return Poll::Ready(true);
                        }
                        if conn.in_flight.get() < config.requests_in_flight_max {
                            return Poll::Ready(false);
                        }
                        conn.reader_waker.set(Some(cx.waker().clone()));
                        Poll::Pending
                    })
                    .await;
                    if stopping {
                        return Ok(());
                    }
                    count(shared, from, len, true);
                    spawn_request(envelope, conn, shared, from);
                }
                other => return Err(ProtocolError::Unexpected(other)),
            }
        }
        let read = poll_fn(|cx| {
            if conn.broken.get() || Pin::new(&mut *stop).poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            // Woken by the writer if it breaks.
            conn.reader_waker.set(Some(cx.waker().clone()));
            poll_read_into(
                &mut io.borrow_mut(),
                cx,
                &mut decoder,
                config.read_buffer_bytes,
            )
            .map(Some)
        })
        .await;
        match read {
            None => return Ok(()),
            Some(Ok(0)) => {
                decoder.decode_eof()?;
                return Ok(());
            }
            Some(Ok(_)) => glommio::yield_if_needed().await,
            Some(Err(error)) => return Err(error.into()),
        }
    }
}

/// Counts a frame of `len` bytes from `from`.
fn count<H>(shared: &Shared<H>, from: PeerAddr, len: u64, request: bool) {
    shared.stats.update(|stats| {
        let source = stats.sources.entry(from.node_id).or_default();
        source.frames += 1;
        source.bytes += len;
        if request {
            source.controller_requests += 1;
        } else {
            source.raft_batches += 1;
        }
    });
}

/// Runs the handler on a controller request in a task of its own; the
/// reply goes to the connection's writer.
fn spawn_request<H: PeerHandler>(
    envelope: EnvelopeFrame,
    conn: &Rc<Conn>,
    shared: &Rc<Shared<H>>,
    from: PeerAddr,
) {
    conn.in_flight.set(conn.in_flight.get() + 1);
    let correlation_id = envelope.correlation_id();
    let command = controller_command(&envelope).unwrap_or_default();
    drop(envelope);
    let (conn, shared) = (conn.clone(), shared.clone());
    glommio::spawn_local(async move {
        let reply = shared.handler.on_controller_request(from, command).await;
        let frame = controller_response_frame(correlation_id, &reply)
            .ok()
            .filter(|frame| frame.len() <= shared.config.frame_bytes_max)
            .or_else(|| {
                let too_large = ControllerReply {
                    error_code: ErrorCode::BatchTooLarge.0,
                    message: format!(
                        "the controller's reply of {} bytes does not fit in an inter-broker frame",
                        reply.result.len()
                    ),
                    result: bytes::Bytes::new(),
                };
                controller_response_frame(correlation_id, &too_large).ok()
            });
        match frame {
            Some(frame) => conn.finish(frame),
            None => conn.release(1),
        }
    })
    .detach();
}

/// Writes replies as they come until the reader is done and every request
/// is answered. On a write error, drops what remains, waits for the
/// requests still running, and returns the error.
async fn write_side(io: &RefCell<TcpStream>, conn: &Conn) -> io::Result<()> {
    let mut queue = WriteQueue::with_coalesce_bytes(0);
    loop {
        let more = poll_fn(|cx| {
            if !conn.outbox.borrow().is_empty() || !queue.is_empty() {
                return Poll::Ready(true);
            }
            if conn.reading_done.get() && conn.in_flight.get() == 0 {
                return Poll::Ready(false);
            }
            conn.writer_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        if !more {
            return Ok(());
        }
        for frame in conn.outbox.borrow_mut().drain(..) {
            queue.push(frame);
        }
        let written = poll_fn(|cx| poll_write_queue(&mut io.borrow_mut(), cx, &mut queue)).await;
        let error = match written {
            Ok(0) => io::Error::from(io::ErrorKind::WriteZero),
            Ok(n) => {
                let done = queue.advance(n);
                conn.release(done);
                continue;
            }
            Err(error) => error,
        };
        conn.broken.set(true);
        let dropped = queue.len() + conn.outbox.borrow().len();
        conn.outbox.borrow_mut().clear();
        conn.release(dropped);
        // Requests still running finish into the void; wait for them so
        // none outlives the connection.
        poll_fn(|cx| {
            if conn.in_flight.get() == 0 && conn.reading_done.get() {
                return Poll::Ready(());
            }
            conn.writer_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        return Err(error);
    }
}
