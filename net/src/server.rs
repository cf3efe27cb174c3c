//! The broker's side of client connections, on glommio: a connection
//! server with pipelining and backpressure ([`serve_connection`]) and an
//! accept loop with a bound on connections and a graceful shutdown
//! ([`listen`], [`Server`]).
//!
//! # A connection
//!
//! One task reads frames into a [`FrameDecoder`], verifies each as a
//! request and spawns the [`Handler`] on it in a task of its own, so the
//! requests of one connection run concurrently; responses are written as
//! they complete, in completion order (the client matches them by
//! correlation id). At most `in_flight_max` requests are between being read
//! and having their response written: at the bound, the connection stops
//! reading, and TCP pushes back on the client.
//!
//! Errors, and what happens to the connection:
//!
//! | input | response | connection |
//! |-------|----------|------------|
//! | a frame that fails verification | CorruptFrame, with the request's correlation id when its header verifies, else 0 | kept: the framing is intact |
//! | a length prefix above `frame_bytes_max` | BatchTooLarge, correlation id 0 | closed |
//! | a length prefix of 0 | CorruptFrame, correlation id 0 | closed |
//! | end of stream inside a frame | none | closed |
//!
//! When the connection closes, requests already read still run to the end
//! and their responses are written (or dropped, if the socket broke):
//! [`serve_connection`] returns only once every handler task it started has
//! finished.

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

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use shardmq_schema::protocol::{ErrorCode, MAX_FRAME_BYTES};

use crate::frame::{
    Frame, FrameDecoder, FrameError, WriteQueue, READ_BUFFER_BYTES_DEFAULT,
    WRITE_COALESCE_BYTES_DEFAULT,
};
use crate::message::{error_response, RequestFrame, RequestKey};
use crate::shutdown::{Shutdown, ShutdownListener};

/// Answers requests. The server calls [`handle`](Self::handle) once per
/// verified request, in a task of its own, so one connection's requests
/// run concurrently (up to `in_flight_max`) and complete in any order.
///
/// Futures need not be `Send`: they run on the shard that read the
/// request.
pub trait Handler: 'static {
    /// Answers `request` with a whole response frame carrying its
    /// correlation id, or with `None` to send nothing (Produce with acks
    /// None).
    fn handle(&self, request: RequestFrame) -> impl Future<Output = Option<Frame>>;
}

impl<H: Handler> Handler for Rc<H> {
    fn handle(&self, request: RequestFrame) -> impl Future<Output = Option<Frame>> {
        (**self).handle(request)
    }
}

/// A [`Handler`] made of a function; see [`handler_fn`].
pub struct FnHandler<F>(F);

/// A [`Handler`] calling `f` on each request.
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(RequestFrame) -> Fut + 'static,
    Fut: Future<Output = Option<Frame>>,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(RequestFrame) -> Fut + 'static,
    Fut: Future<Output = Option<Frame>>,
{
    fn handle(&self, request: RequestFrame) -> impl Future<Output = Option<Frame>> {
        (self.0)(request)
    }
}

impl<F> fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnHandler")
    }
}

/// Bounds of connections and of what one connection may make the server
/// hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Requests of one connection between being read and having their
    /// response written, at most (at least 1). At the bound the connection
    /// is not read. A connection thus holds at most this many request
    /// frames of up to `frame_bytes_max` bytes, plus its receive buffer.
    pub in_flight_max: usize,
    /// Largest request frame, prefix included; a larger one closes the
    /// connection. At most [`MAX_FRAME_BYTES`].
    pub frame_bytes_max: usize,
    /// Connections served at once by [`Server::serve`] (at least 1); more
    /// wait in the listen backlog until one closes.
    pub connections_max: usize,
    /// Bytes asked of each socket read, at least.
    pub read_buffer_bytes: usize,
    /// Responses shorter than this are copied together into one write
    /// ([`WriteQueue`]).
    pub write_coalesce_bytes: usize,
    /// How long a connection the server closes while the client may still
    /// be sending (shutdown, framing error) keeps reading and discarding,
    /// so the client gets the last responses rather than a reset.
    pub linger: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            in_flight_max: 128,
            frame_bytes_max: MAX_FRAME_BYTES,
            connections_max: 4096,
            read_buffer_bytes: READ_BUFFER_BYTES_DEFAULT,
            write_coalesce_bytes: WRITE_COALESCE_BYTES_DEFAULT,
            linger: Duration::from_secs(1),
        }
    }
}

impl ConnLimits {
    fn normalized(mut self) -> Self {
        self.in_flight_max = self.in_flight_max.max(1);
        self.connections_max = self.connections_max.max(1);
        self.frame_bytes_max = self.frame_bytes_max.min(MAX_FRAME_BYTES);
        self.read_buffer_bytes = self.read_buffer_bytes.max(1);
        self
    }
}

/// Most bytes discarded while lingering on a closing connection.
const LINGER_BYTES_MAX: usize = 4 << 20;

/// Why a connection ended without error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConnEnd {
    /// The client closed its side at a frame boundary.
    #[default]
    PeerClosed,
    /// The server's [`Shutdown`] was triggered.
    Shutdown,
}

/// What one connection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Requests that verified and went to the handler.
    pub requests: u64,
    /// Frames that failed verification.
    pub corrupt_frames: u64,
    /// Response frames written, error responses included.
    pub responses: u64,
    /// Bytes read from the socket.
    pub bytes_read: u64,
    /// Bytes written to the socket.
    pub bytes_written: u64,
    /// Most requests in flight at once.
    pub in_flight_peak: usize,
    /// Why the connection ended.
    pub end: ConnEnd,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A read or write on the connection failed.
    #[error("connection i/o failed: {0}")]
    Io(#[from] io::Error),
    /// The client's byte stream is not frames; the connection was closed.
    #[error("connection closed on a framing error: {0}")]
    Frame(#[from] FrameError),
}

/// Serves one client connection with `handler` until the client closes
/// it, then returns what it did. See the [module](self) documentation for
/// pipelining and errors.
///
/// Runs on a glommio executor: each request is handled in a task spawned
/// with `glommio::spawn_local`, in the task queue of the caller.
pub async fn serve_connection<H: Handler>(
    stream: TcpStream,
    handler: H,
    limits: ConnLimits,
) -> Result<ConnStats, NetError> {
    let (stats, result) = run_connection(stream, Rc::new(handler), limits.normalized(), None).await;
    result.map(|()| stats)
}

/// [`serve_connection`], also ending when `shutdown` is triggered: the
/// connection stops reading, the requests already handed to the handler
/// finish and are answered, then it closes. Frames received but not yet
/// handed over (past the in-flight bound) are dropped unanswered; the
/// client sees them fail with the connection.
pub async fn serve_connection_until<H: Handler>(
    stream: TcpStream,
    handler: H,
    limits: ConnLimits,
    shutdown: &Shutdown,
) -> Result<ConnStats, NetError> {
    let (stats, result) = run_connection(
        stream,
        Rc::new(handler),
        limits.normalized(),
        Some(shutdown.listen()),
    )
    .await;
    result.map(|()| stats)
}

/// State shared by a connection's reader, writer and handler tasks.
#[derive(Default)]
struct ConnState {
    /// Requests read whose response is not yet written (or dropped).
    in_flight: Cell<usize>,
    /// Responses ready to be written, in completion order.
    outbox: RefCell<VecDeque<Frame>>,
    reader_waker: Cell<Option<Waker>>,
    writer_waker: Cell<Option<Waker>>,
    /// The reader has stopped: no more requests will be read.
    reading_done: Cell<bool>,
    /// A write failed: responses are dropped from now on.
    broken: Cell<bool>,
    stats: RefCell<ConnStats>,
}

impl ConnState {
    fn start_one(&self) {
        let in_flight = self.in_flight.get() + 1;
        self.in_flight.set(in_flight);
        let mut stats = self.stats.borrow_mut();
        stats.in_flight_peak = stats.in_flight_peak.max(in_flight);
    }

    /// A request is done: its response (if any) goes to the writer.
    fn finish_one(&self, response: Option<Frame>) {
        match response {
            Some(frame) if !self.broken.get() => {
                self.outbox.borrow_mut().push_back(frame);
                wake(&self.writer_waker);
            }
            _ => self.release(1),
        }
    }

    /// `n` requests are fully answered: room for more.
    fn release(&self, n: usize) {
        self.in_flight.set(self.in_flight.get().saturating_sub(n));
        wake(&self.reader_waker);
        wake(&self.writer_waker);
    }
}

fn wake(slot: &Cell<Option<Waker>>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}

/// How the reader stopped without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    Eof,
    Shutdown,
    /// The writer failed.
    Broken,
}

async fn run_connection<H: Handler>(
    stream: TcpStream,
    handler: Rc<H>,
    limits: ConnLimits,
    mut shutdown: Option<ShutdownListener>,
) -> (ConnStats, Result<(), NetError>) {
    let io = RefCell::new(stream);
    let conn = Rc::new(ConnState::default());
    let reader = async {
        let result = read_side(&io, &conn, &handler, &limits, shutdown.as_mut()).await;
        conn.reading_done.set(true);
        wake(&conn.writer_waker);
        result
    };
    let writer = write_side(&io, &conn, &limits);
    let (read_result, write_result) = futures_lite::future::zip(reader, writer).await;

    if write_result.is_ok() {
        let drain = !matches!(read_result, Ok(ReadEnd::Eof));
        // Closing is best effort: the peer may be gone already.
        let _ = close_gracefully(&io, drain, &limits).await;
    }
    let mut stats = conn.stats.take();
    let result = match (read_result, write_result) {
        (Err(error), _) => Err(error),
        (Ok(_), Err(error)) => Err(NetError::Io(error)),
        (Ok(end), Ok(())) => {
            stats.end = if end == ReadEnd::Shutdown {
                ConnEnd::Shutdown
            } else {
                ConnEnd::PeerClosed
            };
            Ok(())
        }
    };
    (stats, result)
}

/// Reads and dispatches frames until the end of the stream, a framing
/// error, the shutdown or a failed write.
async fn read_side<H: Handler>(
    io: &RefCell<TcpStream>,
    conn: &Rc<ConnState>,
    handler: &Rc<H>,
    limits: &ConnLimits,
    mut shutdown: Option<&mut ShutdownListener>,
) -> Result<ReadEnd, NetError> {
    let mut decoder = FrameDecoder::with_frame_bytes_max(limits.frame_bytes_max);
    let mut eof = false;
    loop {
        let next = if eof {
            decoder.decode_eof()
        } else {
            decoder.decode()
        };
        match next {
            Ok(Some(frame)) => {
                // Wait for room before taking on the request.
                let stop = poll_fn(|cx| {
                    if conn.broken.get() {
                        return Poll::Ready(Some(ReadEnd::Broken));
                    }
                    if let Some(shutdown) = shutdown.as_deref_mut() {
                        if Pin::new(shutdown).poll(cx).is_ready() {
                            return Poll::Ready(Some(ReadEnd::Shutdown));
                        }
                    }
                    if conn.in_flight.get() < limits.in_flight_max {
                        return Poll::Ready(None);
                    }
                    conn.reader_waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                })
                .await;
                if let Some(end) = stop {
                    return Ok(end);
                }
                dispatch(frame, conn, handler);
            }
            Ok(None) if eof => return Ok(ReadEnd::Eof),
            Ok(None) => {
                let read = poll_fn(|cx| {
                    if conn.broken.get() {
                        return Poll::Ready(Err(ReadEnd::Broken));
                    }
                    if let Some(shutdown) = shutdown.as_deref_mut() {
                        if Pin::new(shutdown).poll(cx).is_ready() {
                            return Poll::Ready(Err(ReadEnd::Shutdown));
                        }
                    }
                    // Woken by the writer if it breaks.
                    conn.reader_waker.set(Some(cx.waker().clone()));
                    let buffer = decoder.buffer_mut(limits.read_buffer_bytes);
                    Pin::new(&mut *io.borrow_mut())
                        .poll_read(cx, buffer)
                        .map(Ok)
                })
                .await;
                match read {
                    Err(end) => return Ok(end),
                    Ok(Ok(0)) => eof = true,
                    Ok(Ok(n)) => {
                        decoder.advance(n);
                        conn.stats.borrow_mut().bytes_read += n as u64;
                        // A client that keeps the socket full must not keep
                        // the shard's other tasks waiting.
                        glommio::yield_if_needed().await;
                    }
                    Ok(Err(error)) => return Err(NetError::Io(error)),
                }
            }
            Err(error) => {
                // The stream cannot be resynchronised: answer if the error
                // can be told, then close.
                let code = match error {
                    FrameError::TooLarge { .. } => Some(ErrorCode::BatchTooLarge),
                    FrameError::Empty | FrameError::LengthMismatch { .. } => {
                        Some(ErrorCode::CorruptFrame)
                    }
                    FrameError::Truncated { .. } => None,
                };
                if let Some(code) = code {
                    if let Ok(response) =
                        error_response(RequestKey::UNREADABLE, code, &error.to_string())
                    {
                        conn.start_one();
                        conn.finish_one(Some(response));
                    }
                }
                tracing::debug!(%error, "closing connection on a framing error");
                return Err(NetError::Frame(error));
            }
        }
    }
}

/// Verifies `frame` and hands it to a handler task, or answers it with
/// CorruptFrame.
fn dispatch<H: Handler>(frame: Frame, conn: &Rc<ConnState>, handler: &Rc<H>) {
    conn.start_one();
    match RequestFrame::verify(frame) {
        Ok(request) => {
            conn.stats.borrow_mut().requests += 1;
            let handler = handler.clone();
            let conn = conn.clone();
            glommio::spawn_local(async move {
                let response = handler.handle(request).await;
                conn.finish_one(response);
            })
            .detach();
        }
        Err(invalid) => {
            conn.stats.borrow_mut().corrupt_frames += 1;
            tracing::debug!(error = %invalid.error, "request frame fails verification");
            let key = invalid.key.unwrap_or(RequestKey::UNREADABLE);
            let message = invalid.error.to_string();
            conn.finish_one(error_response(key, ErrorCode::CorruptFrame, &message).ok());
        }
    }
}

/// Writes responses as they come until the reader is done and every
/// request is answered. On a write error, drops what remains, waits for
/// the handlers still running, and returns the error.
async fn write_side(
    io: &RefCell<TcpStream>,
    conn: &ConnState,
    limits: &ConnLimits,
) -> io::Result<()> {
    let mut queue = WriteQueue::with_coalesce_bytes(limits.write_coalesce_bytes);
    loop {
        let more = poll_fn(|cx| {
            if !conn.outbox.borrow().is_empty() {
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
        while !queue.is_empty() {
            let written = poll_fn(|cx| {
                let chunk = queue.chunk();
                Pin::new(&mut *io.borrow_mut()).poll_write(cx, chunk)
            })
            .await;
            let error = match written {
                Ok(0) => io::Error::from(io::ErrorKind::WriteZero),
                Ok(n) => {
                    let done = queue.advance(n);
                    {
                        let mut stats = conn.stats.borrow_mut();
                        stats.bytes_written += n as u64;
                        stats.responses += done as u64;
                    }
                    conn.release(done);
                    continue;
                }
                Err(error) => error,
            };
            conn.broken.set(true);
            let dropped = queue.len() + conn.outbox.borrow().len();
            conn.outbox.borrow_mut().clear();
            conn.release(dropped);
            // Handlers still running finish into the void; wait for them
            // so none outlives the connection.
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
}

/// Shuts the write side (the client sees the end of the stream after the
/// last response) and, if the client may still be sending, reads and
/// discards until it closes too, for at most `limits.linger`.
async fn close_gracefully(
    io: &RefCell<TcpStream>,
    drain: bool,
    limits: &ConnLimits,
) -> io::Result<()> {
    poll_fn(|cx| Pin::new(&mut *io.borrow_mut()).poll_close(cx)).await?;
    if !drain {
        return Ok(());
    }
    let discard = async {
        let mut sink = vec![0; 16 << 10];
        let mut discarded = 0;
        while discarded < LINGER_BYTES_MAX {
            let n = poll_fn(|cx| Pin::new(&mut *io.borrow_mut()).poll_read(cx, &mut sink)).await?;
            if n == 0 {
                break;
            }
            discarded += n;
        }
        Ok(())
    };
    let deadline = async {
        glommio::timer::sleep(limits.linger).await;
        Ok(())
    };
    futures_lite::future::or(discard, deadline).await
}

/// A bound listening socket, ready to [`serve`](Server::serve) clients.
/// Made by [`listen`].
pub struct Server<H> {
    listener: TcpListener,
    local_addr: SocketAddr,
    handler: Rc<H>,
    limits: ConnLimits,
    shutdown: Shutdown,
}

/// What a server did over its life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections that ended on an error (i/o, framing).
    pub connections_failed: u64,
    /// Failed accepts.
    pub accept_errors: u64,
    /// Requests that went to the handler, over all connections.
    pub requests: u64,
    /// Frames that failed verification, over all connections.
    pub corrupt_frames: u64,
    /// Responses written, over all connections.
    pub responses: u64,
    /// Bytes read, over all connections.
    pub bytes_read: u64,
    /// Bytes written, over all connections.
    pub bytes_written: u64,
}

impl ServerStats {
    fn add(&mut self, conn: &ConnStats) {
        self.requests += conn.requests;
        self.corrupt_frames += conn.corrupt_frames;
        self.responses += conn.responses;
        self.bytes_read += conn.bytes_read;
        self.bytes_written += conn.bytes_written;
    }
}

/// Binds a listening socket on `addr` (port 0 for any free port) with
/// SO_REUSEPORT, so every shard can listen on the same port; must be called
/// on a glommio executor. Nothing is accepted until [`Server::serve`] runs.
pub fn listen<H: Handler>(
    addr: SocketAddr,
    handler: H,
    limits: ConnLimits,
) -> Result<Server<H>, NetError> {
    let bind_error = |source: io::Error| NetError::Bind { addr, source };
    let listener = TcpListener::bind(addr).map_err(|error| bind_error(error.into()))?;
    let local_addr = listener
        .local_addr()
        .map_err(|error| bind_error(error.into()))?;
    Ok(Server {
        listener,
        local_addr,
        handler: Rc::new(handler),
        limits: limits.normalized(),
        shutdown: Shutdown::new(),
    })
}

/// Shared by the accept loop and its connection tasks.
#[derive(Default)]
struct ServerState {
    active: Cell<usize>,
    waker: Cell<Option<Waker>>,
    stats: RefCell<ServerStats>,
}

impl<H: Handler> Server<H> {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The signal that stops the server: triggering it stops accepting and
    /// tells every connection to stop reading.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Accepts connections and serves each in a task of its own, at most
    /// `connections_max` at once, until the shutdown is triggered; then
    /// closes the listening socket, lets every connection finish the
    /// requests it has read and answer them, and returns once all are
    /// closed.
    pub async fn serve(self) -> ServerStats {
        let Self {
            listener,
            local_addr,
            handler,
            limits,
            shutdown,
        } = self;
        let state = Rc::new(ServerState::default());
        let mut stop = shutdown.listen();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        tracing::debug!(%local_addr, "serving");
        loop {
            // Wait for a connection slot, unless stopping.
            let stopping = poll_fn(|cx| {
                if Pin::new(&mut stop).poll(cx).is_ready() {
                    return Poll::Ready(true);
                }
                if state.active.get() < limits.connections_max {
                    return Poll::Ready(false);
                }
                state.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
            if stopping {
                break;
            }
            let accepted =
                futures_lite::future::or(async { Some(listener.accept().await) }, async {
                    (&mut stop).await;
                    None
                })
                .await;
            let stream = match accepted {
                None => break,
                Some(Ok(stream)) => stream,
                Some(Err(error)) => {
                    let error = io::Error::from(error);
                    state.stats.borrow_mut().accept_errors += 1;
                    if accept_error_is_transient(&error) {
                        continue;
                    }
                    // Out of descriptors or memory: wait a little for
                    // connections to close rather than spin.
                    tracing::warn!(%error, ?backoff, "accept failed");
                    futures_lite::future::or(glommio::timer::sleep(backoff), &mut stop).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            backoff = ACCEPT_BACKOFF_MIN;
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            state.active.set(state.active.get() + 1);
            state.stats.borrow_mut().connections += 1;
            let (handler, limits, state, listener) = (
                handler.clone(),
                limits.clone(),
                state.clone(),
                shutdown.listen(),
            );
            glommio::spawn_local(async move {
                let (stats, result) = run_connection(stream, handler, limits, Some(listener)).await;
                {
                    let mut server_stats = state.stats.borrow_mut();
                    server_stats.add(&stats);
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection failed");
                        server_stats.connections_failed += 1;
                    }
                }
                state.active.set(state.active.get() - 1);
                wake(&state.waker);
            })
            .detach();
        }
        drop(listener);
        tracing::debug!(%local_addr, "stopped accepting, waiting for connections");
        poll_fn(|cx| {
            if state.active.get() == 0 {
                return Poll::Ready(());
            }
            state.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        state.stats.take()
    }
}

impl<H> fmt::Debug for Server<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("limits", &self.limits)
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Errors of one pending connection (it died in the backlog), after which
/// the next accept may well succeed.
fn accept_error_is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
