//! Inter-broker frames: [`EnvelopeFrame`], a frame that passed
//! [`verify_envelope`] and whose fields are then read in place, and the
//! builders of the frames net sends on its own (handshake, controller
//! requests and responses) or wraps for the engine
//! ([`raft_batch_frame`]).
//!
//! Hot path: [`EnvelopeFrame::verify`] runs once per received frame and
//! allocates nothing.

use std::fmt;

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use shardmq_schema::interbroker::{
    finish_envelope_frame, verify_envelope, Body, ControllerRequest, ControllerRequestArgs,
    ControllerResponse, ControllerResponseArgs, Envelope, EnvelopeArgs, Hello, HelloArgs,
    HelloReply, HelloReplyArgs, PeerError, RaftBatch,
};
use shardmq_schema::protocol;

use super::{ControllerReply, HelloInfo, PeerIdentity, Refusal, ReplyInfo};
use crate::frame::{Frame, FrameError};
use crate::message::ERROR_MESSAGE_BYTES_MAX;

/// An inter-broker frame that passed [`verify_envelope`]: every field can
/// be read without further checks, and parts of it shared past the socket
/// without copying ([`EnvelopeFrame::share`]).
///
/// A received Raft batch reaches the engine as one of these; its entries'
/// `data` are slices of the bytes the socket read.
#[derive(Clone)]
pub struct EnvelopeFrame {
    frame: Frame,
    correlation_id: u64,
    /// `Body::NONE` when the body is absent, whatever its type says.
    body_type: Body,
}

impl EnvelopeFrame {
    /// Verifies `frame` as an inter-broker envelope (length, identifier,
    /// flatbuffer within the protocol's verifier limits).
    pub fn verify(frame: Frame) -> Result<Self, protocol::FrameError> {
        let envelope = verify_envelope(frame.as_bytes())?;
        let correlation_id = envelope.correlation_id();
        let body_type = if envelope.body().is_some() {
            envelope.body_type()
        } else {
            Body::NONE
        };
        Ok(Self {
            frame,
            correlation_id,
            body_type,
        })
    }

    /// The envelope, read in place.
    pub fn envelope(&self) -> Envelope<'_> {
        // SAFETY: `self.frame` passed `verify_envelope` when this value was
        // made (the only constructor is `verify`) and its bytes are
        // immutable. `verify_envelope` checks exactly this root:
        // size-prefixed `Envelope` with the protocol's verifier options.
        // Verification depends on the bytes alone, so they still verify.
        unsafe { flatbuffers::size_prefixed_root_unchecked::<Envelope<'_>>(self.frame.as_bytes()) }
    }

    /// The envelope's correlation id (0 unless a controller request or
    /// response).
    pub fn correlation_id(&self) -> u64 {
        self.correlation_id
    }

    /// The body's type; `Body::NONE` when there is no body.
    pub fn body_type(&self) -> Body {
        self.body_type
    }

    /// The Raft batch, if that is the body.
    pub fn raft_batch(&self) -> Option<RaftBatch<'_>> {
        self.envelope().body_as_raft_batch()
    }

    /// The frame, prefix included.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The frame, prefix included.
    pub fn into_frame(self) -> Frame {
        self.frame
    }

    /// Shares `part` of the frame without copying it, for example an
    /// entry's `data().bytes()`; `None` if `part` is not a slice of this
    /// frame.
    pub fn share(&self, part: &[u8]) -> Option<Bytes> {
        self.frame.share(part)
    }
}

impl fmt::Debug for EnvelopeFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeFrame")
            .field("correlation_id", &self.correlation_id)
            .field("body_type", &self.body_type)
            .field("len", &self.frame.len())
            .finish()
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// Wraps `body` of type `body_type` in an envelope and takes the frame.
fn finish(
    mut builder: FlatBufferBuilder<'_>,
    correlation_id: u64,
    body_type: Body,
    body: WIPOffset<flatbuffers::UnionWIPOffset>,
) -> Result<Frame, FrameError> {
    let root = Envelope::create(
        &mut builder,
        &EnvelopeArgs {
            correlation_id,
            body_type,
            body: Some(body),
        },
    );
    finish_envelope_frame(&mut builder, root);
    Frame::from_builder(builder)
}

/// The frame of a `RaftBatch` the engine built in `builder`: wrapped in an
/// envelope (correlation id 0), finished and taken without copying.
///
/// ```
/// # use flatbuffers::FlatBufferBuilder;
/// # use shardmq_net::peer::envelope::raft_batch_frame;
/// # use shardmq_net::peer::EnvelopeFrame;
/// # use shardmq_schema::interbroker::{RaftBatch, RaftBatchArgs, RaftMessage, RaftMessageArgs};
/// let mut builder = FlatBufferBuilder::new();
/// let message = RaftMessage::create(&mut builder, &RaftMessageArgs { group: 7, ..Default::default() });
/// let messages = builder.create_vector(&[message]);
/// let batch = RaftBatch::create(&mut builder, &RaftBatchArgs { messages: Some(messages) });
/// let frame = raft_batch_frame(builder, batch).unwrap();
/// let received = EnvelopeFrame::verify(frame).unwrap();
/// assert_eq!(received.raft_batch().unwrap().messages().unwrap().get(0).group(), 7);
/// ```
pub fn raft_batch_frame<'fbb>(
    builder: FlatBufferBuilder<'fbb>,
    batch: WIPOffset<RaftBatch<'fbb>>,
) -> Result<Frame, FrameError> {
    finish(builder, 0, Body::RaftBatch, batch.as_union_value())
}

/// The dialer's `Hello` for `hello`, speaking protocol `version`
/// ([`shardmq_schema::interbroker::PROTOCOL_VERSION`] for this build).
pub fn hello_frame(hello: &HelloInfo, version: u16) -> Result<Frame, FrameError> {
    let mut builder = FlatBufferBuilder::with_capacity(64 + hello.cluster_id.len());
    let cluster_id = builder.create_string(&hello.cluster_id);
    let body = Hello::create(
        &mut builder,
        &HelloArgs {
            cluster_id: Some(cluster_id),
            node_id: hello.node_id,
            incarnation: hello.incarnation,
            from_shard: hello.from_shard,
            to_shard: hello.to_shard,
            expected_node_id: hello.expected_node_id,
            version,
        },
    );
    finish(builder, 0, Body::Hello, body.as_union_value())
}

/// The listener's `HelloReply`: accepting when `refusal` is `None`,
/// otherwise carrying its code and message (cut to
/// [`ERROR_MESSAGE_BYTES_MAX`] bytes).
pub fn hello_reply_frame(
    identity: &PeerIdentity,
    refusal: Option<&Refusal>,
) -> Result<Frame, FrameError> {
    let message = refusal.map_or("", |refusal| cut(&refusal.message, ERROR_MESSAGE_BYTES_MAX));
    let mut builder =
        FlatBufferBuilder::with_capacity(64 + identity.cluster_id.len() + message.len());
    let cluster_id = builder.create_string(&identity.cluster_id);
    let message = refusal.map(|_| builder.create_string(message));
    let body = HelloReply::create(
        &mut builder,
        &HelloReplyArgs {
            error: refusal.map_or(PeerError::None, |refusal| refusal.code),
            message,
            cluster_id: Some(cluster_id),
            node_id: identity.node_id,
            incarnation: identity.incarnation,
        },
    );
    finish(builder, 0, Body::HelloReply, body.as_union_value())
}

/// A `ControllerRequest` carrying `command`.
pub fn controller_request_frame(correlation_id: u64, command: &[u8]) -> Result<Frame, FrameError> {
    if command.len() > protocol::MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            declared: command.len(),
            max: protocol::MAX_FRAME_BYTES,
        });
    }
    let mut builder = FlatBufferBuilder::with_capacity(64 + command.len());
    let command = builder.create_vector(command);
    let body = ControllerRequest::create(
        &mut builder,
        &ControllerRequestArgs {
            command: Some(command),
        },
    );
    finish(
        builder,
        correlation_id,
        Body::ControllerRequest,
        body.as_union_value(),
    )
}

/// The `ControllerResponse` answering request `correlation_id` with
/// `reply` (its message cut to [`ERROR_MESSAGE_BYTES_MAX`] bytes; an empty
/// result is left out).
pub fn controller_response_frame(
    correlation_id: u64,
    reply: &ControllerReply,
) -> Result<Frame, FrameError> {
    if reply.result.len() > protocol::MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            declared: reply.result.len(),
            max: protocol::MAX_FRAME_BYTES,
        });
    }
    let message = cut(&reply.message, ERROR_MESSAGE_BYTES_MAX);
    let mut builder = FlatBufferBuilder::with_capacity(64 + message.len() + reply.result.len());
    let message = (!message.is_empty()).then(|| builder.create_string(message));
    let result = (!reply.result.is_empty()).then(|| builder.create_vector(&reply.result));
    let body = ControllerResponse::create(
        &mut builder,
        &ControllerResponseArgs {
            error_code: reply.error_code,
            message,
            result,
        },
    );
    finish(
        builder,
        correlation_id,
        Body::ControllerResponse,
        body.as_union_value(),
    )
}

/// What a verified `Hello` says.
pub(crate) fn hello_info(hello: Hello<'_>) -> HelloInfo {
    HelloInfo {
        cluster_id: hello.cluster_id().to_owned(),
        node_id: hello.node_id(),
        incarnation: hello.incarnation(),
        from_shard: hello.from_shard(),
        to_shard: hello.to_shard(),
        expected_node_id: hello.expected_node_id(),
    }
}

/// What a verified `HelloReply` says: who answered, and the refusal if it
/// refused.
pub(crate) fn reply_info(reply: HelloReply<'_>) -> (ReplyInfo, Option<Refusal>) {
    let info = ReplyInfo {
        cluster_id: reply.cluster_id().unwrap_or_default().to_owned(),
        node_id: reply.node_id(),
        incarnation: reply.incarnation(),
    };
    let refusal = (reply.error() != PeerError::None).then(|| Refusal {
        code: reply.error(),
        message: reply.message().unwrap_or_default().to_owned(),
    });
    (info, refusal)
}

/// The reply carried by a verified `ControllerResponse` envelope, its
/// result shared from the frame.
pub(crate) fn controller_reply(envelope: &EnvelopeFrame) -> Option<ControllerReply> {
    let response = envelope.envelope().body_as_controller_response()?;
    let result = response
        .result()
        .and_then(|result| envelope.share(result.bytes()))
        .unwrap_or_default();
    Some(ControllerReply {
        error_code: response.error_code(),
        message: response.message().unwrap_or_default().to_owned(),
        result,
    })
}

/// The command of a verified `ControllerRequest` envelope, shared from the
/// frame.
pub(crate) fn controller_command(envelope: &EnvelopeFrame) -> Option<Bytes> {
    let request = envelope.envelope().body_as_controller_request()?;
    envelope.share(request.command().bytes())
}

#[cfg(test)]
mod tests {
    use shardmq_schema::interbroker::{
        Entry, EntryArgs, EntryType, RaftBatchArgs, RaftMessage, RaftMessageArgs, PROTOCOL_VERSION,
    };

    use super::*;

    fn identity() -> PeerIdentity {
        PeerIdentity {
            cluster_id: "c-1".into(),
            node_id: 2,
            incarnation: 0xfeed,
            shard: 3,
        }
    }

    #[test]
    fn hello_round_trips() {
        let hello = HelloInfo {
            cluster_id: "c-1".into(),
            node_id: 1,
            incarnation: 99,
            from_shard: 4,
            to_shard: 3,
            expected_node_id: 2,
        };
        let frame = EnvelopeFrame::verify(hello_frame(&hello, PROTOCOL_VERSION).unwrap()).unwrap();
        assert_eq!(frame.body_type(), Body::Hello);
        assert_eq!(frame.correlation_id(), 0);
        let read = frame.envelope().body_as_hello().unwrap();
        assert_eq!(read.version(), PROTOCOL_VERSION);
        assert_eq!(hello_info(read), hello);
    }

    #[test]
    fn hello_reply_carries_identity_and_refusal() {
        let accept = EnvelopeFrame::verify(hello_reply_frame(&identity(), None).unwrap()).unwrap();
        let (info, refusal) = reply_info(accept.envelope().body_as_hello_reply().unwrap());
        assert_eq!(
            info,
            ReplyInfo {
                cluster_id: "c-1".into(),
                node_id: 2,
                incarnation: 0xfeed
            }
        );
        assert_eq!(refusal, None);

        let long = Refusal::new(PeerError::IncarnationMismatch, "ü".repeat(4000));
        let refuse =
            EnvelopeFrame::verify(hello_reply_frame(&identity(), Some(&long)).unwrap()).unwrap();
        let (_, refusal) = reply_info(refuse.envelope().body_as_hello_reply().unwrap());
        let refusal = refusal.unwrap();
        assert_eq!(refusal.code, PeerError::IncarnationMismatch);
        assert!(refusal.message.len() <= ERROR_MESSAGE_BYTES_MAX);
        assert!(refusal.message.chars().all(|c| c == 'ü'));
    }

    #[test]
    fn controller_request_and_response_share_their_bytes() {
        let request =
            EnvelopeFrame::verify(controller_request_frame(17, b"create topic").unwrap()).unwrap();
        assert_eq!(request.correlation_id(), 17);
        assert_eq!(request.body_type(), Body::ControllerRequest);
        let command = controller_command(&request).unwrap();
        assert_eq!(&command[..], b"create topic");
        let within = request.frame().as_bytes().as_ptr_range();
        assert!(within.contains(&command.as_ptr()));

        let reply = ControllerReply {
            error_code: 8,
            message: "exists".into(),
            result: Bytes::from_static(b"r"),
        };
        let response =
            EnvelopeFrame::verify(controller_response_frame(17, &reply).unwrap()).unwrap();
        assert_eq!(response.correlation_id(), 17);
        assert_eq!(controller_reply(&response).unwrap(), reply);
        assert!(controller_command(&response).is_none());

        let empty = EnvelopeFrame::verify(
            controller_response_frame(1, &ControllerReply::default()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            controller_reply(&empty).unwrap(),
            ControllerReply::default()
        );
    }

    #[test]
    fn raft_batch_entries_are_read_in_place() {
        let mut builder = FlatBufferBuilder::new();
        let data = builder.create_vector(&[0xab_u8; 100]);
        let entry = Entry::create(
            &mut builder,
            &EntryArgs {
                entry_type: EntryType::Normal,
                term: 3,
                index: 11,
                data: Some(data),
                context: None,
            },
        );
        let entries = builder.create_vector(&[entry]);
        let message = RaftMessage::create(
            &mut builder,
            &RaftMessageArgs {
                group: 5,
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
        let frame = EnvelopeFrame::verify(raft_batch_frame(builder, batch).unwrap()).unwrap();
        assert_eq!(frame.body_type(), Body::RaftBatch);
        let batch = frame.raft_batch().unwrap();
        let entry = batch.messages().unwrap().get(0).entries().unwrap().get(0);
        let data = entry.data().unwrap().bytes();
        let shared = frame.share(data).unwrap();
        assert_eq!(shared.as_ptr(), data.as_ptr());
        assert_eq!(&shared[..], &[0xab; 100][..]);
    }

    #[test]
    fn bodies_must_match_their_type_and_a_client_frame_is_refused() {
        let envelope = |body_type| {
            let mut builder = FlatBufferBuilder::new();
            let root = Envelope::create(
                &mut builder,
                &EnvelopeArgs {
                    correlation_id: 4,
                    body_type,
                    body: None,
                },
            );
            finish_envelope_frame(&mut builder, root);
            EnvelopeFrame::verify(Frame::from_builder(builder).unwrap())
        };
        let empty = envelope(Body::NONE).unwrap();
        assert_eq!(empty.body_type(), Body::NONE);
        assert!(empty.raft_batch().is_none());
        assert!(matches!(
            envelope(Body::RaftBatch),
            Err(protocol::FrameError::Invalid(_))
        ));

        let mut bytes = hello_reply_frame(&identity(), None)
            .unwrap()
            .as_bytes()
            .to_vec();
        bytes[8..12].copy_from_slice(b"SMQ1");
        assert!(matches!(
            EnvelopeFrame::verify(Frame::copy_from_slice(&bytes).unwrap()),
            Err(protocol::FrameError::BadIdentifier(_))
        ));
    }

    #[test]
    fn oversized_payloads_are_refused_before_building() {
        let reply = ControllerReply {
            result: Bytes::from(vec![0; protocol::MAX_FRAME_BYTES + 1]),
            ..Default::default()
        };
        assert!(matches!(
            controller_response_frame(1, &reply),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
