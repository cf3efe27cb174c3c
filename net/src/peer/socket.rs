//! Socket plumbing glommio does not offer: a listening socket without
//! SO_REUSEPORT, keepalive options, and vectored writes.
//!
//! Hot path: [`poll_write_queue`] writes every frame of a link.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

use crate::frame::{FrameDecoder, WriteQueue};

/// Pending connections the kernel queues for a peer listener.
const LISTEN_BACKLOG: i32 = 1024;

/// Slices handed to one `sendmsg`, at most: frames beyond wait for the
/// next call. Well under the kernel's `IOV_MAX` (1024).
pub(crate) const IOV_PER_WRITE_MAX: usize = 64;

/// Binds a listening socket on `addr` that no other socket can share.
///
/// glommio's own `TcpListener::bind` sets SO_REUSEPORT, under which a
/// second broker started by mistake on the same port would silently take
/// half the connections. This socket sets only SO_REUSEADDR, which on
/// Linux lets a restarted broker bind over connections of its previous
/// life still in TIME_WAIT but never lets two listeners share the port:
/// the second bind fails with `AddrInUse`. Must run on a glommio executor.
pub(crate) fn bind_exclusive(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: the descriptor is a bound, listening TCP socket that nothing
    // else owns: `into_raw_fd` gave up `socket`'s ownership, which passes
    // to the glommio listener (it closes it when dropped).
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Runs `f` on the socket of `stream`, for a setsockopt or a send.
fn with_socket<R>(stream: &TcpStream, f: impl FnOnce(SockRef<'_>) -> R) -> R {
    // SAFETY: the descriptor is `stream`'s, open for as long as `stream`
    // lives, which is past this call.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    f(SockRef::from(&fd))
}

/// TCP_NODELAY (Raft messages are latency-bound and already batched), and
/// keepalive probes after `idle` every `interval` if `idle` is set.
/// Best effort: a failure is logged, the connection still works.
pub(crate) fn configure(stream: &TcpStream, idle: Option<Duration>, interval: Duration) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    if let Some(idle) = idle {
        let keepalive = TcpKeepalive::new().with_time(idle).with_interval(interval);
        if let Err(error) = with_socket(stream, |socket| socket.set_tcp_keepalive(&keepalive)) {
            tracing::debug!(%error, "cannot set TCP keepalive");
        }
    }
}

/// Writes as much of `queue` as the socket takes now, in one system call
/// for up to [`IOV_PER_WRITE_MAX`] frames; returns the bytes written. When
/// the socket is full, waits for room through glommio.
///
/// `queue` must not coalesce (made with `with_coalesce_bytes(0)`): frames
/// are written from their own memory.
pub(crate) fn poll_write_queue(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    queue: &mut WriteQueue,
) -> Poll<io::Result<usize>> {
    {
        let mut slices = [IoSlice::new(&[]); IOV_PER_WRITE_MAX];
        let filled = queue.io_slices(&mut slices);
        if filled > 1 {
            // glommio writes with a non-blocking send and, on EAGAIN, polls
            // for room; this does the same with sendmsg, so the byte order
            // on the socket is that of the calls.
            let sent = with_socket(stream, |socket| {
                socket.send_vectored_with_flags(
                    &slices[..filled],
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            });
            match sent {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
    // One frame, or no room: glommio writes it or wakes us when it can.
    Pin::new(stream).poll_write(cx, queue.chunk())
}

/// Writes all of `queue`, for the handshake.
pub(crate) async fn write_all(stream: &mut TcpStream, queue: &mut WriteQueue) -> io::Result<()> {
    while !queue.is_empty() {
        let n = poll_fn(|cx| poll_write_queue(stream, cx, queue)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        queue.advance(n);
    }
    Ok(())
}

/// Reads once from `stream` into `decoder`, asking for `min_free` bytes of
/// room; returns the bytes read, 0 at the end of the stream.
pub(crate) fn poll_read_into(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    decoder: &mut FrameDecoder,
    min_free: usize,
) -> Poll<io::Result<usize>> {
    let buffer = decoder.buffer_mut(min_free);
    let read = Pin::new(stream).poll_read(cx, buffer);
    if let Poll::Ready(Ok(n)) = read {
        decoder.advance(n);
    }
    read
}

/// Shuts the write side (the peer reads the end of the stream after the
/// last frame). Best effort: the peer may be gone already.
pub(crate) async fn shutdown_write(stream: &mut TcpStream) {
    if let Err(error) = poll_fn(|cx| Pin::new(&mut *stream).poll_close(cx)).await {
        tracing::debug!(%error, "shutting the write side failed");
    }
}
