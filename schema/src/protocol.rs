//! The client protocol: the flatbuffers messages clients and brokers
//! exchange, defined in `schema/fbs/protocol.fbs`.
//!
//! Every type of the schema ([`Request`], [`Response`], [`ProduceRequest`],
//! [`ErrorCode`], ...) is re-exported here from the code flatc generates into
//! `src/generated/`; the schema file documents each table and field. That
//! code is written by `tools/regen-schema.sh` and never edited by hand; the
//! test `schema/tests/protocol.rs` fails when it is out of date with the
//! schema. This module adds what the schema cannot say: frames, limits,
//! verification and the meaning of some codes.
//!
//! # Frames
//!
//! A frame is a `u32` little-endian length, then that many bytes of
//! flatbuffer, whose root is a [`Request`] (client to broker) or a
//! [`Response`] (broker to client) and whose file identifier is
//! [`FILE_IDENTIFIER`] in both directions:
//!
//! ```text
//! | len: u32 LE | root offset: u32 LE | "SMQ1" | tables, vectors, strings ... |
//! |<-- 4 ----->|<------------------------ len bytes ------------------------->|
//! ```
//!
//! That is the layout `FlatBufferBuilder::finish_size_prefixed` writes;
//! [`finish_request_frame`] and [`finish_response_frame`] call it with the
//! identifier. A reader takes the first 4 bytes, checks them with
//! [`frame_len`] before buffering anything more, reads the rest, and checks
//! the whole frame with [`verify_request`] or [`verify_response`] before
//! reading any field.
//!
//! The length prefix stays in front of the flatbuffer when it is verified:
//! the builder aligns 8-byte fields relative to the start of the frame, and
//! the verifier checks alignment relative to the start of the slice it is
//! given, so the flatbuffer alone, without its prefix, may fail verification
//! as unaligned.
//!
//! # Limits
//!
//! Verification bounds what a frame may make the reader do, whatever its
//! bytes:
//!
//! | limit                  | value                | bounds |
//! |------------------------|----------------------|--------|
//! | [`MAX_FRAME_BYTES`]    | 128 MiB, prefix included | memory buffered per frame |
//! | [`MAX_DEPTH`]          | 16 nested tables     | recursion of the verifier (the schema nests 4 deep) |
//! | [`MAX_TABLES`]         | 2<sup>20</sup> tables | verification time |
//! | [`MAX_APPARENT_BYTES`] | 256 MiB              | bytes visited, counting shared data each time it is reached |
//!
//! Past verification, reading a field is a bounds-checked slice access: a
//! verified frame can be read in any order without panicking.
//!
//! # Record batches
//!
//! Record batches travel as `[ubyte]` vectors holding Kafka RecordBatch v2
//! bytes ([`crate::batch`]). Reading one (for example
//! [`ProducePartition::records`]) returns a slice of the frame itself: the
//! batch is neither copied nor re-encoded between the socket, the log and
//! the consumer.

use flatbuffers::{
    Allocator, FlatBufferBuilder, Follow, InvalidFlatbuffer, Verifiable, VerifierOptions, WIPOffset,
};

use crate::batch::BATCH_BYTES_MAX;

// The generated code is flatc's, as it comes: only lints it trips are
// allowed, on it alone.
#[allow(
    missing_debug_implementations, // builders and `*Args` structs
    rust_2018_idioms,              // elided lifetimes, `extern crate`, inferable outlives
    unused,
    clippy::all
)]
#[path = "generated/protocol_generated.rs"]
mod generated;

pub use generated::shardmq::protocol::*;

/// File identifier of every frame, requests and responses alike: bytes 8 to
/// 12 of a frame (4 to 8 of its flatbuffer).
pub const FILE_IDENTIFIER: &str = REQUEST_IDENTIFIER;

/// Bytes of the length prefix in front of each flatbuffer.
pub const FRAME_PREFIX_BYTES: usize = 4;

/// Smallest frame that can hold a flatbuffer with its file identifier:
/// prefix, root offset and identifier.
pub const FRAME_MIN_BYTES: usize = FRAME_PREFIX_BYTES + 4 + 4;

/// Largest frame accepted, prefix included: two of the largest record
/// batches. A Produce request carrying more must be split.
pub const MAX_FRAME_BYTES: usize = 2 * BATCH_BYTES_MAX;

/// Deepest nesting of tables a frame may have. The schema nests 4 deep
/// (Response, MetadataResponse, TopicMetadata, PartitionMetadata); the rest
/// is room to grow.
pub const MAX_DEPTH: usize = 16;

/// Most tables a frame may have, enough for metadata of a large cluster.
pub const MAX_TABLES: usize = 1 << 20;

/// Most bytes the verifier may visit, counting data reachable from several
/// places once per place, so a frame cannot amplify its size by sharing.
pub const MAX_APPARENT_BYTES: usize = 2 * MAX_FRAME_BYTES;

/// The verifier options of every frame: the limits above, and strings must
/// be null-terminated as every flatbuffers builder writes them.
pub const VERIFIER_OPTIONS: VerifierOptions = VerifierOptions {
    max_depth: MAX_DEPTH,
    max_tables: MAX_TABLES,
    max_apparent_size: MAX_APPARENT_BYTES,
    ignore_missing_null_terminator: false,
};

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than any frame has.
    #[error(
        "frame of {len} bytes is shorter than the {FRAME_MIN_BYTES} bytes of the smallest frame"
    )]
    TooShort {
        /// Length of the frame, prefix included.
        len: usize,
    },
    /// The frame exceeds [`MAX_FRAME_BYTES`].
    #[error("frame of {len} bytes exceeds the bound of {MAX_FRAME_BYTES} bytes")]
    TooLarge {
        /// Length of the frame, prefix included.
        len: usize,
    },
    /// The length prefix disagrees with the number of bytes given.
    #[error("frame length prefix says {declared} bytes follow it, but {actual} do")]
    LengthMismatch {
        /// Bytes after the prefix, as the prefix says.
        declared: usize,
        /// Bytes after the prefix, as given.
        actual: usize,
    },
    /// The file identifier is not the one of the frame's protocol
    /// ([`FILE_IDENTIFIER`] for the client protocol).
    #[error("unexpected frame identifier {0:?}")]
    BadIdentifier([u8; 4]),
    /// The flatbuffer is malformed or exceeds a limit of [`VERIFIER_OPTIONS`].
    #[error("invalid flatbuffer: {0}")]
    Invalid(#[from] InvalidFlatbuffer),
}

/// Length of the whole frame, prefix included, that starts with `prefix`,
/// checked against [`FRAME_MIN_BYTES`] and [`MAX_FRAME_BYTES`] so a reader
/// can refuse a frame before buffering it.
pub fn frame_len(prefix: [u8; FRAME_PREFIX_BYTES]) -> Result<usize, FrameError> {
    // u32 fits in usize on every target the broker supports; saturate if not.
    let declared = usize::try_from(u32::from_le_bytes(prefix)).unwrap_or(usize::MAX);
    let len = declared.saturating_add(FRAME_PREFIX_BYTES);
    if len < FRAME_MIN_BYTES {
        Err(FrameError::TooShort { len })
    } else if len > MAX_FRAME_BYTES {
        Err(FrameError::TooLarge { len })
    } else {
        Ok(len)
    }
}

/// Checks a whole request frame, prefix included: its length, identifier
/// and flatbuffer, within [`VERIFIER_OPTIONS`]. Every field of the returned
/// request can then be read without further checks.
///
/// The request's meaning is not checked: whether `header.api` matches the
/// body's type ([`Api::request_body_type`]), whether values are in range.
pub fn verify_request(frame: &[u8]) -> Result<Request<'_>, FrameError> {
    verify_frame::<Request<'_>>(frame, FILE_IDENTIFIER)
}

/// Checks a whole response frame, prefix included, like
/// [`verify_request`].
pub fn verify_response(frame: &[u8]) -> Result<Response<'_>, FrameError> {
    verify_frame::<Response<'_>>(frame, FILE_IDENTIFIER)
}

/// Checks a whole frame of any root type `T` whose file identifier is
/// `identifier`: its length against the frame limits, its identifier, and
/// its flatbuffer within [`VERIFIER_OPTIONS`].
pub(crate) fn verify_frame<'buf, T>(
    frame: &'buf [u8],
    identifier: &str,
) -> Result<T::Inner, FrameError>
where
    T: 'buf + Follow<'buf> + Verifiable,
{
    let Some(&[a, b, c, d]) = frame.get(..FRAME_PREFIX_BYTES) else {
        return Err(FrameError::TooShort { len: frame.len() });
    };
    let len = frame_len([a, b, c, d])?;
    if len != frame.len() {
        return Err(FrameError::LengthMismatch {
            declared: len - FRAME_PREFIX_BYTES,
            actual: frame.len() - FRAME_PREFIX_BYTES,
        });
    }
    // In bounds: frame_len checked len >= FRAME_MIN_BYTES.
    let got = &frame[FRAME_PREFIX_BYTES + 4..FRAME_MIN_BYTES];
    if got != identifier.as_bytes() {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(got);
        return Err(FrameError::BadIdentifier(bytes));
    }
    Ok(flatbuffers::size_prefixed_root_with_opts::<T>(
        &VERIFIER_OPTIONS,
        frame,
    )?)
}

/// Finishes `builder` as a request frame with `root` and returns the frame:
/// length prefix, flatbuffer and [`FILE_IDENTIFIER`]. The caller keeps it
/// under [`MAX_FRAME_BYTES`], or the broker refuses it.
pub fn finish_request_frame<'b, 'a: 'b, A: Allocator + 'a>(
    builder: &'b mut FlatBufferBuilder<'a, A>,
    root: WIPOffset<Request<'a>>,
) -> &'b [u8] {
    builder.finish_size_prefixed(root, Some(FILE_IDENTIFIER));
    builder.finished_data()
}

/// Finishes `builder` as a response frame with `root` and returns the
/// frame, like [`finish_request_frame`].
pub fn finish_response_frame<'b, 'a: 'b, A: Allocator + 'a>(
    builder: &'b mut FlatBufferBuilder<'a, A>,
    root: WIPOffset<Response<'a>>,
) -> &'b [u8] {
    builder.finish_size_prefixed(root, Some(FILE_IDENTIFIER));
    builder.finished_data()
}

impl ErrorCode {
    /// True if the same request may succeed when sent again, after the
    /// client refreshes its metadata (NotLeader, LeaderNotAvailable: follow
    /// the leader hint or ask Metadata), waits (Throttled: the response
    /// header's `throttle_time_ms`; the others: a backoff) or reconnects
    /// (BrokerShuttingDown).
    ///
    /// Codes this build does not know are not retriable. A retried Produce
    /// that timed out may append its records twice.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            Self::NotLeader
                | Self::LeaderNotAvailable
                | Self::RequestTimedOut
                | Self::NotEnoughReplicas
                | Self::BrokerShuttingDown
                | Self::Throttled
        )
    }
}

impl Api {
    /// The type of [`Request::body`] a request of this api carries; `None`
    /// for an api this build does not know. Always the api's value plus
    /// one, since `RequestBody` lists the apis in order after NONE.
    pub fn request_body_type(self) -> Option<RequestBody> {
        match self {
            Self::ApiVersions => Some(RequestBody::ApiVersionsRequest),
            Self::Metadata => Some(RequestBody::MetadataRequest),
            Self::CreateTopics => Some(RequestBody::CreateTopicsRequest),
            Self::DeleteTopics => Some(RequestBody::DeleteTopicsRequest),
            Self::ListTopics => Some(RequestBody::ListTopicsRequest),
            Self::Produce => Some(RequestBody::ProduceRequest),
            Self::Fetch => Some(RequestBody::FetchRequest),
            Self::ListOffsets => Some(RequestBody::ListOffsetsRequest),
            Self::DescribeCluster => Some(RequestBody::DescribeClusterRequest),
            Self::DescribeReplicas => Some(RequestBody::DescribeReplicasRequest),
            Self::TransferLeader => Some(RequestBody::TransferLeaderRequest),
            _ => None,
        }
    }

    /// The type of [`Response::body`] a response to this api carries;
    /// `None` for an api this build does not know.
    pub fn response_body_type(self) -> Option<ResponseBody> {
        match self {
            Self::ApiVersions => Some(ResponseBody::ApiVersionsResponse),
            Self::Metadata => Some(ResponseBody::MetadataResponse),
            Self::CreateTopics => Some(ResponseBody::CreateTopicsResponse),
            Self::DeleteTopics => Some(ResponseBody::DeleteTopicsResponse),
            Self::ListTopics => Some(ResponseBody::ListTopicsResponse),
            Self::Produce => Some(ResponseBody::ProduceResponse),
            Self::Fetch => Some(ResponseBody::FetchResponse),
            Self::ListOffsets => Some(ResponseBody::ListOffsetsResponse),
            Self::DescribeCluster => Some(ResponseBody::DescribeClusterResponse),
            Self::DescribeReplicas => Some(ResponseBody::DescribeReplicasResponse),
            Self::TransferLeader => Some(ResponseBody::TransferLeaderResponse),
            _ => None,
        }
    }
}
