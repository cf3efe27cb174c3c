//! The glommio server over real sockets on 127.0.0.1: answers, pipelining
//! with out-of-order completion, the in-flight bound, corrupt and oversized
//! frames, the connection bound and shutdown.
//!
//! Each test runs one glommio executor holding both the server and its
//! clients, and fails after `TEST_TIMEOUT` instead of hanging. Tasks wait
//! for each other with wakers, never with sleeps.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use flatbuffers::FlatBufferBuilder;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use shardmq_net::{
    error_response, handler_fn, listen, serve_connection, ConnEnd, ConnLimits, Frame, FrameDecoder,
    FrameError, Handler, NetError, RequestFrame, RequestKey, ResponseFrame, ServerStats,
};
use shardmq_schema::protocol::{
    finish_request_frame, finish_response_frame, Api, ApiVersionRange, ApiVersionsRequest,
    ApiVersionsRequestArgs, ApiVersionsResponse, ApiVersionsResponseArgs, ErrorCode,
    MetadataRequest, MetadataRequestArgs, Request, RequestArgs, RequestHeader, RequestHeaderArgs,
    Response, ResponseArgs, ResponseBody, ResponseHeader, ResponseHeaderArgs,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

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

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

fn request(
    correlation_id: u64,
    api: Api,
    body: impl FnOnce(
        &mut FlatBufferBuilder<'static>,
    ) -> flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let body = body(&mut builder);
    let client_id = builder.create_string("net-test");
    let header = RequestHeader::create(
        &mut builder,
        &RequestHeaderArgs {
            correlation_id,
            api,
            version: 0,
            client_id: Some(client_id),
        },
    );
    let root = Request::create(
        &mut builder,
        &RequestArgs {
            header: Some(header),
            body_type: api.request_body_type().expect("known api"),
            body: Some(body),
        },
    );
    finish_request_frame(&mut builder, root).to_vec()
}

fn api_versions_request(correlation_id: u64) -> Vec<u8> {
    request(correlation_id, Api::ApiVersions, |builder| {
        ApiVersionsRequest::create(builder, &ApiVersionsRequestArgs {}).as_union_value()
    })
}

fn metadata_request(correlation_id: u64, topic: &str) -> Vec<u8> {
    request(correlation_id, Api::Metadata, |builder| {
        let name = builder.create_string(topic);
        let topics = builder.create_vector(&[name]);
        MetadataRequest::create(
            builder,
            &MetadataRequestArgs {
                topics: Some(topics),
            },
        )
        .as_union_value()
    })
}

/// The versions the test broker supports.
const SUPPORTED: [(Api, u16, u16); 2] = [(Api::ApiVersions, 0, 0), (Api::Metadata, 0, 1)];

fn api_versions_response(key: RequestKey) -> Frame {
    let mut builder = FlatBufferBuilder::new();
    let ranges: Vec<_> = SUPPORTED
        .iter()
        .map(|&(api, min, max)| ApiVersionRange::new(api, min, max))
        .collect();
    let apis = builder.create_vector(&ranges);
    let body = ApiVersionsResponse::create(
        &mut builder,
        &ApiVersionsResponseArgs {
            apis: Some(apis),
            ..Default::default()
        },
    );
    let header = ResponseHeader::create(
        &mut builder,
        &ResponseHeaderArgs {
            correlation_id: key.correlation_id,
            api: key.api,
            version: key.version,
            throttle_time_ms: 0,
        },
    );
    let root = Response::create(
        &mut builder,
        &ResponseArgs {
            header: Some(header),
            body_type: ResponseBody::ApiVersionsResponse,
            body: Some(body.as_union_value()),
            ..Default::default()
        },
    );
    finish_response_frame(&mut builder, root);
    Frame::from_builder(builder).expect("response frame")
}

/// What the test broker answers: ApiVersions, and UnknownApi to the rest.
fn answer(request: &RequestFrame) -> Frame {
    if request.request().body_as_api_versions_request().is_some() {
        api_versions_response(request.key())
    } else {
        error_response(
            request.key(),
            ErrorCode::UnknownApi,
            "only ApiVersions here",
        )
        .expect("error frame")
    }
}

fn answering_handler() -> impl Handler {
    handler_fn(|request: RequestFrame| async move { Some(answer(&request)) })
}

fn assert_api_versions(response: &ResponseFrame, correlation_id: u64) {
    assert_eq!(response.correlation_id(), correlation_id);
    assert_eq!(response.error_code(), ErrorCode::None);
    let body = response
        .response()
        .body_as_api_versions_response()
        .expect("ApiVersions body");
    let apis: Vec<_> = body
        .apis()
        .expect("apis")
        .iter()
        .map(|range| (range.api(), range.min_version(), range.max_version()))
        .collect();
    assert_eq!(apis, SUPPORTED);
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// A test client on glommio's TcpStream, reading with the same decoder as
/// the server.
struct Client {
    stream: TcpStream,
    decoder: FrameDecoder,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("connect"),
            decoder: FrameDecoder::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// The next response; `Ok(None)` at a clean end of stream.
    async fn try_recv(&mut self) -> io::Result<Option<ResponseFrame>> {
        loop {
            if let Some(frame) = self.decoder.decode().expect("response framing") {
                return Ok(Some(ResponseFrame::verify(frame).expect("valid response")));
            }
            let buffer = self.decoder.buffer_mut(4096);
            let n = self.stream.read(buffer).await?;
            if n == 0 {
                let rest = self
                    .decoder
                    .decode_eof()
                    .expect("stream ends at a frame boundary");
                return Ok(rest.map(|frame| ResponseFrame::verify(frame).expect("valid response")));
            }
            self.decoder.advance(n);
        }
    }

    async fn recv(&mut self) -> ResponseFrame {
        self.try_recv()
            .await
            .expect("receive")
            .expect("a response, not the end of the stream")
    }

    /// Asserts the server closed the connection (end of stream, or a reset
    /// if it closed with unread bytes).
    async fn assert_closed(&mut self) {
        match self.try_recv().await {
            Ok(None) => {}
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection closed, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Waiting on shared state without sleeping
// ---------------------------------------------------------------------------

/// Wakes the tasks waiting for some shared state to change.
#[derive(Default)]
struct Notify {
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    fn notify(&self) {
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Waits until `condition` holds, checking it again at each notify.
    async fn until(&self, mut condition: impl FnMut() -> bool) {
        poll_fn(|cx| {
            if condition() {
                Poll::Ready(())
            } else {
                self.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Starts `server` in its own task; returns its address, its shutdown
/// handle and the task.
fn start<H: Handler>(
    handler: H,
    limits: ConnLimits,
) -> (
    SocketAddr,
    shardmq_net::Shutdown,
    glommio::Task<ServerStats>,
) {
    let server = listen(localhost(), handler, limits).expect("listen");
    let addr = server.local_addr();
    let shutdown = server.shutdown_handle();
    (addr, shutdown, glommio::spawn_local(server.serve()))
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn api_versions_is_answered() {
    run(|| async {
        let (addr, shutdown, server) = start(answering_handler(), ConnLimits::default());
        let mut client = Client::connect(addr).await;
        client.send(&api_versions_request(1)).await;
        assert_api_versions(&client.recv().await, 1);
        client.send(&metadata_request(2, "orders")).await;
        let response = client.recv().await;
        assert_eq!(response.correlation_id(), 2);
        assert_eq!(response.error_code(), ErrorCode::UnknownApi);
        drop(client);

        shutdown.trigger();
        let stats = server.await;
        assert_eq!(stats.connections, 1);
        assert_eq!(stats.connections_failed, 0);
        assert_eq!(stats.requests, 2);
        assert_eq!(stats.responses, 2);
        assert!(stats.bytes_read > 0 && stats.bytes_written > 0);
    });
}

#[test]
fn hundred_pipelined_requests_complete_out_of_order_matched_by_correlation_id() {
    const REQUESTS: u64 = 100;
    run(|| async {
        // Request i finishes only after request i + 1 has: the handler
        // must run all 100 at once, and they complete last to first.
        let finished = Rc::new(RefCell::new(HashSet::new()));
        let notify = Rc::new(Notify::default());
        let handler = {
            let (finished, notify) = (finished.clone(), notify.clone());
            handler_fn(move |request: RequestFrame| {
                let (finished, notify) = (finished.clone(), notify.clone());
                async move {
                    let id = request.correlation_id();
                    if id < REQUESTS {
                        notify.until(|| finished.borrow().contains(&(id + 1))).await;
                    }
                    finished.borrow_mut().insert(id);
                    notify.notify();
                    Some(answer(&request))
                }
            })
        };
        let (addr, shutdown, server) = start(handler, ConnLimits::default());
        let mut client = Client::connect(addr).await;
        let burst: Vec<u8> = (1..=REQUESTS).flat_map(api_versions_request).collect();
        client.send(&burst).await;

        let mut order = Vec::new();
        for _ in 0..REQUESTS {
            let response = client.recv().await;
            assert_api_versions(&response, response.correlation_id());
            order.push(response.correlation_id());
        }
        let reversed: Vec<u64> = (1..=REQUESTS).rev().collect();
        assert_eq!(order, reversed, "responses in completion order");
        drop(client);

        shutdown.trigger();
        let stats = server.await;
        assert_eq!(stats.requests, REQUESTS);
        assert_eq!(stats.responses, REQUESTS);
    });
}

#[test]
fn in_flight_bound_is_respected() {
    const BOUND: usize = 4;
    const REQUESTS: usize = 20;
    run(|| async {
        // Requests wait in groups of BOUND: each waits until its group has
        // all arrived. With the bound respected no more than BOUND run at
        // once, and every group fills, since the client sent them all.
        #[derive(Default)]
        struct Counts {
            arrived: Cell<usize>,
            running: Cell<usize>,
            peak: Cell<usize>,
        }
        let counts = Rc::new(Counts::default());
        let notify = Rc::new(Notify::default());
        let handler = {
            let (counts, notify) = (counts.clone(), notify.clone());
            handler_fn(move |request: RequestFrame| {
                let (counts, notify) = (counts.clone(), notify.clone());
                async move {
                    let index = counts.arrived.get();
                    counts.arrived.set(index + 1);
                    counts.running.set(counts.running.get() + 1);
                    counts.peak.set(counts.peak.get().max(counts.running.get()));
                    notify.notify();
                    let group_end = (index / BOUND + 1) * BOUND;
                    notify.until(|| counts.arrived.get() >= group_end).await;
                    counts.running.set(counts.running.get() - 1);
                    Some(answer(&request))
                }
            })
        };
        let limits = ConnLimits {
            in_flight_max: BOUND,
            ..ConnLimits::default()
        };
        let (addr, shutdown, server) = start(handler, limits);
        let mut client = Client::connect(addr).await;
        let burst: Vec<u8> = (1..=REQUESTS as u64)
            .flat_map(api_versions_request)
            .collect();
        client.send(&burst).await;
        let mut answered = HashSet::new();
        for _ in 0..REQUESTS {
            answered.insert(client.recv().await.correlation_id());
        }
        assert_eq!(answered, (1..=REQUESTS as u64).collect());
        assert_eq!(counts.peak.get(), BOUND);
        drop(client);
        shutdown.trigger();
        assert_eq!(server.await.responses, REQUESTS as u64);
    });
}

#[test]
fn no_response_releases_the_slot() {
    run(|| async {
        // Odd requests are fire-and-forget (like Produce with acks None).
        // With room for 2 in flight, a slot kept by an unanswered request
        // would stall the connection.
        let handler = handler_fn(|request: RequestFrame| async move {
            (request.correlation_id() % 2 == 0).then(|| answer(&request))
        });
        let limits = ConnLimits {
            in_flight_max: 2,
            ..ConnLimits::default()
        };
        let (addr, shutdown, server) = start(handler, limits);
        let mut client = Client::connect(addr).await;
        let burst: Vec<u8> = (1..=20).flat_map(api_versions_request).collect();
        client.send(&burst).await;
        for id in (2..=20).step_by(2) {
            assert_api_versions(&client.recv().await, id);
        }
        drop(client);
        shutdown.trigger();
        let stats = server.await;
        assert_eq!((stats.requests, stats.responses), (20, 10));
    });
}

#[test]
fn corrupt_frame_is_answered_and_the_connection_kept() {
    run(|| async {
        let (addr, shutdown, server) = start(answering_handler(), ConnLimits::default());
        let mut client = Client::connect(addr).await;

        // Well framed, but not a flatbuffer: no correlation id to be read.
        let mut garbage = 16u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(&[0xab; 16]);
        client.send(&garbage).await;
        let response = client.recv().await;
        assert_eq!(response.correlation_id(), 0);
        assert_eq!(response.error_code(), ErrorCode::CorruptFrame);
        assert!(response.response().body_type() == ResponseBody::NONE);

        // The same connection still serves.
        client.send(&api_versions_request(5)).await;
        assert_api_versions(&client.recv().await, 5);

        // A damaged body under a sound header: the error carries the id.
        let mut damaged = metadata_request(9, "orders");
        let at = damaged
            .windows(7)
            .position(|window| window == b"orders\0")
            .expect("topic string")
            + 6;
        damaged[at] = b'!';
        client.send(&damaged).await;
        let response = client.recv().await;
        assert_eq!(response.correlation_id(), 9);
        assert_eq!(response.error_code(), ErrorCode::CorruptFrame);
        assert_eq!(response.response().header().api(), Api::Metadata);

        client.send(&api_versions_request(10)).await;
        assert_api_versions(&client.recv().await, 10);
        drop(client);

        shutdown.trigger();
        let stats = server.await;
        assert_eq!(stats.corrupt_frames, 2);
        assert_eq!(stats.requests, 2);
        assert_eq!(stats.responses, 4);
        assert_eq!(stats.connections_failed, 0);
    });
}

#[test]
fn oversize_frame_closes_only_that_connection() {
    run(|| async {
        let limits = ConnLimits {
            frame_bytes_max: 64 << 10,
            ..ConnLimits::default()
        };
        let (addr, shutdown, server) = start(answering_handler(), limits);
        let mut good = Client::connect(addr).await;
        good.send(&api_versions_request(1)).await;
        assert_api_versions(&good.recv().await, 1);

        let mut bad = Client::connect(addr).await;
        let mut oversize = (1u32 << 20).to_le_bytes().to_vec();
        oversize.extend_from_slice(&[7; 1000]);
        bad.send(&oversize).await;
        let response = bad.recv().await;
        assert_eq!(response.correlation_id(), 0);
        assert_eq!(response.error_code(), ErrorCode::BatchTooLarge);
        bad.assert_closed().await;
        drop(bad);

        good.send(&api_versions_request(2)).await;
        assert_api_versions(&good.recv().await, 2);
        drop(good);

        shutdown.trigger();
        let stats = server.await;
        assert_eq!(stats.connections, 2);
        assert_eq!(stats.connections_failed, 1);
        assert_eq!(stats.requests, 2);
    });
}

#[test]
fn zero_length_frame_closes_the_connection() {
    run(|| async {
        let (addr, shutdown, server) = start(answering_handler(), ConnLimits::default());
        let mut client = Client::connect(addr).await;
        client.send(&[0, 0, 0, 0]).await;
        let response = client.recv().await;
        assert_eq!(response.correlation_id(), 0);
        assert_eq!(response.error_code(), ErrorCode::CorruptFrame);
        client.assert_closed().await;
        drop(client);
        shutdown.trigger();
        assert_eq!(server.await.connections_failed, 1);
    });
}

#[test]
fn shutdown_stops_reading_and_lets_in_flight_requests_finish() {
    run(|| async {
        let started = Rc::new(Cell::new(false));
        let release = Rc::new(Cell::new(false));
        let notify = Rc::new(Notify::default());
        let handler = {
            let (started, release, notify) = (started.clone(), release.clone(), notify.clone());
            handler_fn(move |request: RequestFrame| {
                let (started, release, notify) = (started.clone(), release.clone(), notify.clone());
                async move {
                    started.set(true);
                    notify.notify();
                    notify.until(|| release.get()).await;
                    Some(answer(&request))
                }
            })
        };
        let (addr, shutdown, server) = start(handler, ConnLimits::default());
        let mut idle = Client::connect(addr).await;
        let mut busy = Client::connect(addr).await;
        busy.send(&api_versions_request(1)).await;
        notify.until(|| started.get()).await;

        shutdown.trigger();
        // Read by no one: the connection stopped reading at the trigger.
        busy.send(&api_versions_request(2)).await;
        idle.assert_closed().await;
        drop(idle);

        release.set(true);
        notify.notify();
        assert_api_versions(&busy.recv().await, 1);
        busy.assert_closed().await;
        drop(busy);

        let stats = server.await;
        assert_eq!(stats.connections, 2);
        assert_eq!((stats.requests, stats.responses), (1, 1));
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listening socket is closed"
        );
    });
}

#[test]
fn connections_beyond_the_bound_wait_for_a_slot() {
    run(|| async {
        let handled = Rc::new(RefCell::new(Vec::new()));
        let handler = {
            let handled = handled.clone();
            handler_fn(move |request: RequestFrame| {
                handled.borrow_mut().push(request.correlation_id());
                let response = answer(&request);
                async move { Some(response) }
            })
        };
        let limits = ConnLimits {
            connections_max: 1,
            ..ConnLimits::default()
        };
        let (addr, shutdown, server) = start(handler, limits);
        let mut first = Client::connect(addr).await;
        first.send(&api_versions_request(1)).await;
        assert_api_versions(&first.recv().await, 1);

        // The kernel completes the second connection, but the server does
        // not accept it while the first is open.
        let mut second = Client::connect(addr).await;
        second.send(&api_versions_request(100)).await;
        first.send(&api_versions_request(2)).await;
        assert_api_versions(&first.recv().await, 2);
        assert_eq!(*handled.borrow(), vec![1, 2]);

        drop(first);
        assert_api_versions(&second.recv().await, 100);
        drop(second);

        shutdown.trigger();
        assert_eq!(server.await.connections, 2);
    });
}

#[test]
fn serve_connection_reports_stats_and_a_truncated_frame() {
    run(|| async {
        let listener = TcpListener::bind(localhost()).expect("bind");
        let addr = listener.local_addr().expect("address");

        // A client that closes cleanly.
        let client = glommio::spawn_local(async move {
            let mut client = Client::connect(addr).await;
            client.send(&api_versions_request(3)).await;
            client.stream.close().await.expect("half close");
            assert_api_versions(&client.recv().await, 3);
            client.assert_closed().await;
        });
        let stream = listener.accept().await.expect("accept");
        let stats = serve_connection(stream, answering_handler(), ConnLimits::default())
            .await
            .expect("clean end");
        client.await;
        assert_eq!(stats.requests, 1);
        assert_eq!(stats.responses, 1);
        assert_eq!(stats.in_flight_peak, 1);
        assert_eq!(stats.end, ConnEnd::PeerClosed);

        // A client that stops in the middle of a frame.
        let client = glommio::spawn_local(async move {
            let mut client = Client::connect(addr).await;
            let frame = api_versions_request(4);
            client.send(&frame[..frame.len() / 2]).await;
            client.stream.close().await.expect("half close");
            client.assert_closed().await;
        });
        let stream = listener.accept().await.expect("accept");
        let result = serve_connection(stream, answering_handler(), ConnLimits::default()).await;
        client.await;
        assert!(
            matches!(result, Err(NetError::Frame(FrameError::Truncated { .. }))),
            "{result:?}"
        );
    });
}
