//! Verified frames: [`RequestFrame`] and [`ResponseFrame`] can only be made
//! by verifying a [`Frame`], so reading their fields never meets an
//! unchecked byte. Also the error responses the server sends on its own
//! ([`error_response`]).

use std::fmt;

use bytes::Bytes;
use flatbuffers::{
    FlatBufferBuilder, Follow, ForwardsUOffset, InvalidFlatbuffer, Verifiable, Verifier,
};
use shardmq_schema::protocol::{
    self, Api, ErrorCode, Request, RequestHeader, Response, ResponseArgs, ResponseBody,
    ResponseHeader, ResponseHeaderArgs, VERIFIER_OPTIONS,
};

use crate::frame::{Frame, FrameError};

/// Longest error message [`error_response`] puts in a frame; longer ones
/// are cut at a character boundary.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// What identifies a request: its header's correlation id, api and
/// version, which a response echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestKey {
    /// The client's id for the request, unique among its requests in flight.
    pub correlation_id: u64,
    /// The operation.
    pub api: Api,
    /// The version of the api's schema the client speaks.
    pub version: u16,
}

impl RequestKey {
    /// The key of a response to a request whose header could not be read:
    /// correlation id 0, as the protocol says.
    pub const UNREADABLE: Self = Self {
        correlation_id: 0,
        api: Api::ApiVersions,
        version: 0,
    };
}

/// A request frame that passed [`protocol::verify_request`]: every field
/// can be read without further checks, and the frame can be shared
/// (cheaply cloned, or sliced with [`RequestFrame::share`]) past the
/// socket.
#[derive(Clone)]
pub struct RequestFrame {
    frame: Frame,
    key: RequestKey,
}

/// A frame that failed [`RequestFrame::verify`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid request frame: {error}")]
pub struct InvalidRequest {
    /// Why the frame is not a valid request.
    pub error: protocol::FrameError,
    /// The request's key, when its header alone verifies (the damage is
    /// elsewhere), so an error response can carry its correlation id.
    pub key: Option<RequestKey>,
}

impl RequestFrame {
    /// Verifies `frame` as a request ([`protocol::verify_request`]: length,
    /// identifier, flatbuffer within [`VERIFIER_OPTIONS`]).
    pub fn verify(frame: Frame) -> Result<Self, InvalidRequest> {
        match protocol::verify_request(frame.as_bytes()) {
            Ok(request) => {
                let header = request.header();
                let key = RequestKey {
                    correlation_id: header.correlation_id(),
                    api: header.api(),
                    version: header.version(),
                };
                Ok(Self { frame, key })
            }
            Err(error) => Err(InvalidRequest {
                key: readable_key(frame.as_bytes()),
                error,
            }),
        }
    }

    /// The request, read in place.
    pub fn request(&self) -> Request<'_> {
        // SAFETY: `self.frame` passed `verify_request` when this value was
        // made (the only constructor is `verify`), its bytes are immutable,
        // and `verify_request` checks exactly this root: size-prefixed,
        // `Request`, with `VERIFIER_OPTIONS`. Verification depends on the
        // bytes alone, so they still verify.
        unsafe { flatbuffers::size_prefixed_root_unchecked::<Request<'_>>(self.frame.as_bytes()) }
    }

    /// The header's correlation id, api and version.
    pub fn key(&self) -> RequestKey {
        self.key
    }

    /// The header's correlation id.
    pub fn correlation_id(&self) -> u64 {
        self.key.correlation_id
    }

    /// The header's api.
    pub fn api(&self) -> Api {
        self.key.api
    }

    /// The header's version.
    pub fn version(&self) -> u16 {
        self.key.version
    }

    /// The frame, prefix included.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The frame, prefix included.
    pub fn into_frame(self) -> Frame {
        self.frame
    }

    /// Shares `part` of the frame without copying it, for example the
    /// records of a Produce item on their way to the log; `None` if `part`
    /// is not a slice of this frame.
    pub fn share(&self, part: &[u8]) -> Option<Bytes> {
        self.frame.share(part)
    }
}

impl fmt::Debug for RequestFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestFrame")
            .field("key", &self.key)
            .field("len", &self.frame.len())
            .finish()
    }
}

/// A response frame that passed [`protocol::verify_response`].
#[derive(Clone)]
pub struct ResponseFrame {
    frame: Frame,
    correlation_id: u64,
    error_code: ErrorCode,
}

impl ResponseFrame {
    /// Verifies `frame` as a response ([`protocol::verify_response`]).
    pub fn verify(frame: Frame) -> Result<Self, protocol::FrameError> {
        let response = protocol::verify_response(frame.as_bytes())?;
        let correlation_id = response.header().correlation_id();
        let error_code = response.error_code();
        Ok(Self {
            frame,
            correlation_id,
            error_code,
        })
    }

    /// The response, read in place.
    pub fn response(&self) -> Response<'_> {
        // SAFETY: as in `RequestFrame::request`: the only constructor,
        // `verify`, ran `verify_response` on these immutable bytes, which
        // checks this very root.
        unsafe { flatbuffers::size_prefixed_root_unchecked::<Response<'_>>(self.frame.as_bytes()) }
    }

    /// The header's correlation id: 0 when it answers a frame the broker
    /// could not read.
    pub fn correlation_id(&self) -> u64 {
        self.correlation_id
    }

    /// The error of the request as a whole; `None` when the body says how
    /// it went.
    pub fn error_code(&self) -> ErrorCode {
        self.error_code
    }

    /// The frame, prefix included.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The frame, prefix included.
    pub fn into_frame(self) -> Frame {
        self.frame
    }

    /// Shares `part` of the frame without copying it (for example fetched
    /// records); `None` if `part` is not a slice of this frame.
    pub fn share(&self, part: &[u8]) -> Option<Bytes> {
        self.frame.share(part)
    }
}

impl fmt::Debug for ResponseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFrame")
            .field("correlation_id", &self.correlation_id)
            .field("error_code", &self.error_code)
            .field("len", &self.frame.len())
            .finish()
    }
}

/// A response with no body and `code` as the error of the whole request
/// (CorruptFrame, UnknownApi, InvalidRequest, BrokerShuttingDown, ...),
/// answering the request `key`. `message` is cut to
/// [`ERROR_MESSAGE_BYTES_MAX`] bytes.
pub fn error_response(
    key: RequestKey,
    code: ErrorCode,
    message: &str,
) -> Result<Frame, FrameError> {
    let mut cut = message.len().min(ERROR_MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut builder = FlatBufferBuilder::with_capacity(128 + cut);
    let message = builder.create_string(message.get(..cut).unwrap_or_default());
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
            body_type: ResponseBody::NONE,
            body: None,
            error_code: code,
            error_message: Some(message),
        },
    );
    protocol::finish_response_frame(&mut builder, root);
    Frame::from_builder(builder)
}

/// The key of a request frame that failed verification, if its prefix and
/// identifier are right and its root table and header verify on their
/// own.
fn readable_key(frame: &[u8]) -> Option<RequestKey> {
    let &[a, b, c, d] = frame.get(..protocol::FRAME_PREFIX_BYTES)? else {
        return None;
    };
    if protocol::frame_len([a, b, c, d]).ok()? != frame.len() {
        return None;
    }
    let identifier = frame.get(protocol::FRAME_PREFIX_BYTES + 4..protocol::FRAME_MIN_BYTES)?;
    if identifier != protocol::FILE_IDENTIFIER.as_bytes() {
        return None;
    }
    let request =
        flatbuffers::size_prefixed_root_with_opts::<HeaderOnly>(&VERIFIER_OPTIONS, frame).ok()?;
    // Only the header is read: it is all `HeaderOnly` verified.
    let header = request.header();
    Some(RequestKey {
        correlation_id: header.correlation_id(),
        api: header.api(),
        version: header.version(),
    })
}

/// A `Request` root of which only the table itself and its header are
/// verified, to read the correlation id of a request whose body is
/// damaged.
struct HeaderOnly;

impl<'a> Follow<'a> for HeaderOnly {
    type Inner = Request<'a>;

    unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
        // SAFETY: the caller upholds `Follow::follow`'s contract, which is
        // `Request`'s too; `HeaderOnly` is only followed by
        // `size_prefixed_root_with_opts` after `run_verifier` below passed.
        unsafe { <Request<'a> as Follow<'a>>::follow(buf, loc) }
    }
}

impl Verifiable for HeaderOnly {
    fn run_verifier(verifier: &mut Verifier<'_, '_>, pos: usize) -> Result<(), InvalidFlatbuffer> {
        verifier
            .visit_table(pos)?
            .visit_field::<ForwardsUOffset<RequestHeader<'_>>>("header", Request::VT_HEADER, true)?
            .finish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flatbuffers::WIPOffset;
    use shardmq_schema::protocol::{
        MetadataRequest, MetadataRequestArgs, RequestArgs, RequestBody, RequestHeaderArgs,
    };

    use super::*;

    fn metadata_request(correlation_id: u64, topic: &str) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let name = builder.create_string(topic);
        let topics = builder.create_vector(&[name]);
        let body = MetadataRequest::create(
            &mut builder,
            &MetadataRequestArgs {
                topics: Some(topics),
            },
        );
        let header = RequestHeader::create(
            &mut builder,
            &RequestHeaderArgs {
                correlation_id,
                api: Api::Metadata,
                version: 3,
                client_id: None,
            },
        );
        let root: WIPOffset<Request<'_>> = Request::create(
            &mut builder,
            &RequestArgs {
                header: Some(header),
                body_type: RequestBody::MetadataRequest,
                body: Some(body.as_union_value()),
            },
        );
        protocol::finish_request_frame(&mut builder, root).to_vec()
    }

    #[test]
    fn verified_request_reads_in_place() {
        let bytes = metadata_request(42, "orders");
        let request = RequestFrame::verify(Frame::copy_from_slice(&bytes).unwrap()).unwrap();
        assert_eq!(
            request.key(),
            RequestKey {
                correlation_id: 42,
                api: Api::Metadata,
                version: 3
            }
        );
        let topics = request
            .request()
            .body_as_metadata_request()
            .unwrap()
            .topics()
            .unwrap();
        assert_eq!(topics.get(0), "orders");
        let shared = request.share(topics.get(0).as_bytes()).unwrap();
        assert_eq!(&shared[..], b"orders");
    }

    #[test]
    fn damaged_body_keeps_the_correlation_id() {
        let mut bytes = metadata_request(42, "orders");
        // Drop the string's terminator: the body no longer verifies, the
        // header still does.
        let at = bytes.windows(7).position(|w| w == b"orders\0").unwrap() + 6;
        bytes[at] = b'!';
        let invalid = RequestFrame::verify(Frame::copy_from_slice(&bytes).unwrap()).unwrap_err();
        assert_eq!(invalid.key.map(|key| key.correlation_id), Some(42));
    }

    #[test]
    fn garbage_has_no_key() {
        let mut bytes = vec![12, 0, 0, 0, 4, 0, 0, 0];
        bytes.extend_from_slice(b"SMQ1");
        bytes.extend_from_slice(&[0xff; 4]);
        let invalid = RequestFrame::verify(Frame::copy_from_slice(&bytes).unwrap()).unwrap_err();
        assert_eq!(invalid.key, None);
    }

    #[test]
    fn error_response_verifies() {
        let key = RequestKey {
            correlation_id: 7,
            api: Api::Fetch,
            version: 2,
        };
        let long = "é".repeat(ERROR_MESSAGE_BYTES_MAX);
        let frame = error_response(key, ErrorCode::CorruptFrame, &long).unwrap();
        let response = ResponseFrame::verify(frame).unwrap();
        assert_eq!(response.correlation_id(), 7);
        assert_eq!(response.error_code(), ErrorCode::CorruptFrame);
        let read = response.response();
        assert_eq!(read.header().api(), Api::Fetch);
        assert_eq!(read.header().version(), 2);
        assert!(read.body_type() == ResponseBody::NONE);
        let message = read.error_message().unwrap();
        assert!(message.len() <= ERROR_MESSAGE_BYTES_MAX);
        assert!(message.chars().all(|c| c == 'é'));
    }
}
