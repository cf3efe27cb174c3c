//! [`Connection`]: one pipelined TCP connection to a broker shard, on tokio.
//!
//! A reader task cuts the byte stream into frames ([`FrameDecoder`]),
//! verifies each ([`ResponseFrame::verify`]) and hands it to the request
//! waiting under its correlation id ([`InFlight`]); a writer task writes
//! the frames callers queue ([`WriteQueue`]), coalescing small ones. Any
//! number of callers share the connection; at most `in_flight_max` requests
//! are in flight, and more wait for room. When the connection breaks, every
//! pending request fails with [`ClientError::ConnectionLost`] (or
//! [`ClientError::Protocol`] when the broker broke the protocol) and later
//! requests fail at once: a broken connection is never reused, the
//! [`crate::Client`] opens a new one.
//!
//! Errors say whether the request had been handed to the writer
//! (`request_sent`): from that moment the broker may read and execute it,
//! so a failure after it leaves the outcome unknown, and a failure before
//! it means the broker never saw the request. The boundary is the writer's
//! queue rather than the socket, which errs on the side of "maybe sent".

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use shardmq_net::frame::READ_BUFFER_BYTES_DEFAULT;
use shardmq_net::{Frame, FrameDecoder, InFlight, ResponseFrame, WriteQueue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};

type Reply = oneshot::Sender<Result<ResponseFrame>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the handle and the two tasks.
#[derive(Debug)]
struct Shared {
    addr: String,
    in_flight: Mutex<InFlight<Reply>>,
    /// Why the connection closed, in words; set once, by the first failure.
    closed: Mutex<Option<String>>,
}

impl Shared {
    /// Closes the connection for `reason`: pending requests (all handed to
    /// the writer, or about to be) fail with it, later ones are refused.
    fn close(&self, reason: ClientError) {
        {
            let mut closed = lock(&self.closed);
            if closed.is_none() {
                tracing::debug!(addr = %self.addr, %reason, "connection closed");
                let words = match &reason {
                    ClientError::ConnectionLost { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                *closed = Some(words);
            }
        }
        let failed = lock(&self.in_flight).close();
        for (_, reply) in failed {
            // The caller may have given up (timeout); nothing to tell then.
            let _ = reply.send(Err(reason.clone()));
        }
    }

    /// The error a request meets on a closed connection before anything of
    /// it was queued.
    fn closed_error(&self) -> ClientError {
        let reason = lock(&self.closed)
            .clone()
            .unwrap_or_else(|| "connection closed".to_owned());
        ClientError::ConnectionLost {
            addr: self.addr.clone(),
            reason,
            request_sent: false,
        }
    }

    /// The error of the requests pending when the connection broke.
    fn lost(&self, reason: impl Into<String>) -> ClientError {
        ClientError::ConnectionLost {
            addr: self.addr.clone(),
            reason: reason.into(),
            request_sent: true,
        }
    }

    /// Delivers one received frame; an error closes the connection.
    fn dispatch(&self, frame: Frame) -> Result<()> {
        let response = ResponseFrame::verify(frame)
            .map_err(|e| ClientError::protocol(format!("response frame does not verify: {e}")))?;
        let id = response.correlation_id();
        if id == 0 {
            return Err(ClientError::protocol(format!(
                "the broker could not read a request ({:?})",
                response.error_code()
            )));
        }
        let reply = lock(&self.in_flight).complete(id);
        match reply {
            Some(reply) => {
                let _ = reply.send(Ok(response));
            }
            // A response to a request that timed out or was dropped.
            None => tracing::debug!(addr = %self.addr, id, "response to no pending request"),
        }
        Ok(())
    }
}

/// Removes a request's entry when its caller stops waiting (response,
/// timeout or the future dropped), so an abandoned request frees its slot.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        // Correlation ids are never reused on a connection (a u64 counter),
        // so this can only remove this request's own entry.
        lock(&self.shared.in_flight).complete(self.id);
    }
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    writes: mpsc::UnboundedSender<Frame>,
    next_id: AtomicU64,
    client_id: String,
    request_timeout: Duration,
    reader: AbortHandle,
    writer: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// One pipelined connection to a broker shard. Cheap to clone; the tasks
/// stop when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl Connection {
    /// Connects to `addr` (`host:port`) within `config.connect_timeout` and
    /// starts the reader and writer tasks on the current tokio runtime.
    pub async fn connect(addr: &str, config: &ClientConfig) -> Result<Self> {
        let connect_error = |source: std::io::Error| ClientError::Connect {
            addr: addr.to_owned(),
            source: Arc::new(source),
        };
        let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                connect_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            })?
            .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            addr: addr.to_owned(),
            in_flight: Mutex::new(InFlight::new(config.in_flight_max)),
            closed: Mutex::new(None),
        });
        let (writes, queued) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(shared.clone(), read, config.frame_bytes_max));
        let writer = tokio::spawn(write_loop(shared.clone(), write, queued));
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                writes,
                next_id: AtomicU64::new(1),
                client_id: config.client_id.clone(),
                request_timeout: config.request_timeout,
                reader: reader.abort_handle(),
                writer: writer.abort_handle(),
            }),
        })
    }

    /// The address connected to.
    pub fn addr(&self) -> &str {
        &self.inner.shared.addr
    }

    /// True once the connection broke; it is then useless.
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.shared.closed).is_some()
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        lock(&self.inner.shared.in_flight).len()
    }

    /// Sends the request `build` makes from a fresh correlation id and the
    /// client id, and waits for its response within the configured
    /// request timeout.
    pub async fn request(&self, build: impl FnOnce(u64, &str) -> Frame) -> Result<ResponseFrame> {
        self.request_with_timeout(build, self.inner.request_timeout)
            .await
    }

    /// [`request`](Self::request) with its own timeout, which covers the
    /// wait for room among the requests in flight too.
    pub async fn request_with_timeout(
        &self,
        build: impl FnOnce(u64, &str) -> Frame,
        timeout: Duration,
    ) -> Result<ResponseFrame> {
        let sent = AtomicBool::new(false);
        tokio::time::timeout(timeout, self.send_and_wait(build, &sent))
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Timeout {
                    after: timeout,
                    request_sent: sent.load(Ordering::Relaxed),
                })
            })
    }

    /// Sends a request the broker does not answer (Produce with acks
    /// None). Resolves once the frame is queued for writing.
    pub fn send_oneway(&self, build: impl FnOnce(u64, &str) -> Frame) -> Result<()> {
        let shared = &self.inner.shared;
        if self.is_closed() {
            return Err(shared.closed_error());
        }
        let frame = build(self.next_id(), &self.inner.client_id);
        self.inner
            .writes
            .send(frame)
            .map_err(|_| shared.closed_error())
    }

    fn next_id(&self) -> u64 {
        // 0 is reserved; a u64 does not wrap within any connection's life.
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends the request and waits for its response; sets `sent` once the
    /// frame is handed to the writer.
    async fn send_and_wait(
        &self,
        build: impl FnOnce(u64, &str) -> Frame,
        sent: &AtomicBool,
    ) -> Result<ResponseFrame> {
        let shared = &*self.inner.shared;
        let id = self.next_id();
        let frame = build(id, &self.inner.client_id);
        let (reply, response) = oneshot::channel();
        let mut reply = Some(reply);
        // Wait for room and take it in one step, under one lock.
        poll_fn(|cx| {
            let mut table = lock(&shared.in_flight);
            match table.poll_ready(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(_)) => Poll::Ready(Err(shared.closed_error())),
                Poll::Ready(Ok(())) => {
                    let Some(value) = reply.take() else {
                        return Poll::Ready(Err(ClientError::protocol("request polled twice")));
                    };
                    Poll::Ready(
                        table
                            .try_insert(id, value)
                            .map_err(|_| shared.closed_error()),
                    )
                }
            }
        })
        .await?;
        let _guard = PendingGuard { shared, id };
        // A failed send: the writer has ended, so the frame is not written.
        self.inner
            .writes
            .send(frame)
            .map_err(|_| shared.closed_error())?;
        sent.store(true, Ordering::Relaxed);
        match response.await {
            Ok(result) => result,
            // The entry was dropped without a reply: only when the
            // connection closed after the frame was queued.
            Err(_) => Err(shared.lost("connection closed")),
        }
    }
}

async fn read_loop(shared: Arc<Shared>, mut read: OwnedReadHalf, frame_bytes_max: usize) {
    let mut decoder = FrameDecoder::with_frame_bytes_max(frame_bytes_max);
    let reason = 'conn: loop {
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => {
                    if let Err(error) = shared.dispatch(frame) {
                        break 'conn error;
                    }
                }
                Ok(None) => break,
                Err(error) => break 'conn ClientError::protocol(error.to_string()),
            }
        }
        let buffer = decoder.buffer_mut(READ_BUFFER_BYTES_DEFAULT);
        match read.read(buffer).await {
            Ok(0) => {
                break match decoder.decode_eof() {
                    Err(error) => shared.lost(format!("closed by the broker: {error}")),
                    Ok(Some(frame)) => match shared.dispatch(frame) {
                        Ok(()) => shared.lost("closed by the broker"),
                        Err(error) => error,
                    },
                    Ok(None) => shared.lost("closed by the broker"),
                };
            }
            Ok(n) => decoder.advance(n),
            Err(error) => break shared.lost(error.to_string()),
        }
    };
    shared.close(reason);
}

async fn write_loop(
    shared: Arc<Shared>,
    mut write: OwnedWriteHalf,
    mut queued: mpsc::UnboundedReceiver<Frame>,
) {
    let mut queue = WriteQueue::new();
    while let Some(frame) = queued.recv().await {
        queue.push(frame);
        while let Ok(frame) = queued.try_recv() {
            queue.push(frame);
        }
        while !queue.is_empty() {
            match write.write(queue.chunk()).await {
                Ok(0) => {
                    shared.close(shared.lost("write returned 0"));
                    return;
                }
                Ok(n) => {
                    queue.advance(n);
                }
                Err(error) => {
                    shared.close(shared.lost(error.to_string()));
                    return;
                }
            }
        }
    }
    let _ = write.shutdown().await;
}
