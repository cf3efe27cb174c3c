//! The inter-broker protocol: the flatbuffers frames the shards of different
//! brokers exchange, defined in `schema/fbs/interbroker.fbs` (Raft messages
//! of every group, the connection handshake, admin commands forwarded to the
//! controller's leader).
//!
//! Frames are laid out as the client protocol's ([`crate::protocol`]): a
//! `u32` little-endian length, then a flatbuffer whose root is an
//! [`Envelope`] with the file identifier [`FILE_IDENTIFIER`]. The same
//! limits bound them; [`verify_envelope`] checks a whole frame before any
//! field is read. The code in `src/generated/` is flatc's, written by
//! `tools/regen-schema.sh`.

use flatbuffers::{Allocator, FlatBufferBuilder, WIPOffset};

use crate::protocol::{verify_frame, FrameError};

#[allow(
    missing_debug_implementations, // builders and `*Args` structs
    rust_2018_idioms,              // elided lifetimes, `extern crate`, inferable outlives
    unused,
    clippy::all
)]
#[path = "generated/interbroker_generated.rs"]
mod generated;

pub use generated::shardmq::interbroker::*;

/// File identifier of every inter-broker frame.
pub const FILE_IDENTIFIER: &str = ENVELOPE_IDENTIFIER;

/// The version of the inter-broker protocol this build speaks
/// (`Hello.version`).
pub const PROTOCOL_VERSION: u16 = 1;

/// Checks a whole inter-broker frame, prefix included: its length, its
/// identifier and its flatbuffer within the client protocol's verifier
/// limits. Every field of the returned envelope can then be read without
/// further checks.
pub fn verify_envelope(frame: &[u8]) -> Result<Envelope<'_>, FrameError> {
    verify_frame::<Envelope<'_>>(frame, FILE_IDENTIFIER)
}

/// Finishes `builder` as an inter-broker frame with `root` and returns the
/// frame: length prefix, flatbuffer and [`FILE_IDENTIFIER`].
pub fn finish_envelope_frame<'b, 'a: 'b, A: Allocator + 'a>(
    builder: &'b mut FlatBufferBuilder<'a, A>,
    root: WIPOffset<Envelope<'a>>,
) -> &'b [u8] {
    builder.finish_size_prefixed(root, Some(FILE_IDENTIFIER));
    builder.finished_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_and_a_client_frame_is_refused() {
        let mut b = FlatBufferBuilder::new();
        let cluster = b.create_string("c1");
        let hello = Hello::create(
            &mut b,
            &HelloArgs {
                cluster_id: Some(cluster),
                node_id: 3,
                incarnation: 77,
                from_shard: 1,
                to_shard: 1,
                expected_node_id: 2,
                version: PROTOCOL_VERSION,
            },
        );
        let root = Envelope::create(
            &mut b,
            &EnvelopeArgs {
                correlation_id: 0,
                body_type: Body::Hello,
                body: Some(hello.as_union_value()),
            },
        );
        let frame = finish_envelope_frame(&mut b, root).to_vec();
        let env = verify_envelope(&frame).unwrap();
        let hello = env.body_as_hello().unwrap();
        assert_eq!(hello.cluster_id(), "c1");
        assert_eq!((hello.node_id(), hello.incarnation()), (3, 77));

        // A client-protocol frame has another identifier.
        let mut client = frame.clone();
        client[8..12].copy_from_slice(b"SMQ1");
        assert!(matches!(
            verify_envelope(&client),
            Err(FrameError::BadIdentifier(id)) if &id == b"SMQ1"
        ));
    }
}
