//! The handshake's rules, without I/O ([`check_hello`], [`check_reply`]:
//! what net itself checks before asking the [`Admission`](super::Admission)),
//! and reading its one frame off a socket ([`read_frame`]).

use std::future::poll_fn;
use std::io;

use glommio::net::TcpStream;
use shardmq_schema::interbroker::{PeerError, PROTOCOL_VERSION};
use shardmq_schema::protocol;

use super::socket::poll_read_into;
use super::{HelloInfo, PeerAddr, PeerIdentity, Refusal, ReplyInfo};
use crate::frame::{Frame, FrameDecoder, FrameError};

/// Bytes asked of each socket read during the handshake.
const HANDSHAKE_READ_BYTES: usize = 1024;

/// Why a handshake did not complete (refusals aside).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("handshake i/o failed: {0}")]
    Io(#[from] io::Error),
    #[error("no handshake within the timeout")]
    Timeout,
    #[error("the peer closed the connection during the handshake")]
    Closed,
    #[error("handshake bytes are not a frame: {0}")]
    Frame(#[from] FrameError),
    #[error("handshake frame is not an inter-broker envelope: {0}")]
    Envelope(#[from] protocol::FrameError),
    #[error("handshake broken: {0}")]
    Protocol(&'static str),
}

/// Listener side: whether net lets the dialer of `hello`, speaking
/// `version`, in, before the Admission is asked.
pub(crate) fn check_hello(
    identity: &PeerIdentity,
    hello: &HelloInfo,
    version: u16,
) -> Result<(), Refusal> {
    if version != PROTOCOL_VERSION {
        return Err(Refusal::new(
            PeerError::UnsupportedVersion,
            format!(
                "dialer speaks inter-broker protocol version {version}, node {} speaks {PROTOCOL_VERSION}",
                identity.node_id
            ),
        ));
    }
    if hello.to_shard != identity.shard {
        return Err(Refusal::new(
            PeerError::WrongShard,
            format!(
                "dialer asked for shard {}, this port is shard {} of node {}: check the \
                 inter-broker port configured for node {}",
                hello.to_shard, identity.shard, identity.node_id, identity.node_id
            ),
        ));
    }
    if hello.cluster_id != identity.cluster_id {
        return Err(Refusal::new(
            PeerError::ClusterMismatch,
            format!(
                "dialer belongs to cluster {:?}, node {} to cluster {:?}",
                hello.cluster_id, identity.node_id, identity.cluster_id
            ),
        ));
    }
    if hello.expected_node_id != identity.node_id {
        return Err(Refusal::new(
            PeerError::WrongNode,
            format!(
                "dialer expected node {} at this address, it is node {}: the dialer's address \
                 of node {} is stale",
                hello.expected_node_id, identity.node_id, hello.expected_node_id
            ),
        ));
    }
    Ok(())
}

/// Dialer side: whether net accepts the listener that answered `reply`
/// when `dialed` was dialed, before the Admission is asked.
pub(crate) fn check_reply(
    identity: &PeerIdentity,
    dialed: PeerAddr,
    reply: &ReplyInfo,
) -> Result<(), Refusal> {
    if reply.cluster_id != identity.cluster_id {
        return Err(Refusal::new(
            PeerError::ClusterMismatch,
            format!(
                "{dialed} answered from cluster {:?}, this broker belongs to cluster {:?}",
                reply.cluster_id, identity.cluster_id
            ),
        ));
    }
    if reply.node_id != dialed.node_id {
        return Err(Refusal::new(
            PeerError::WrongNode,
            format!(
                "node {} answered at the address of {dialed}: the address is stale",
                reply.node_id
            ),
        ));
    }
    Ok(())
}

/// Reads the next frame from `stream` through `decoder`. The decoder's
/// limit bounds what is buffered; the caller bounds the time.
pub(crate) async fn read_frame(
    stream: &mut TcpStream,
    decoder: &mut FrameDecoder,
) -> Result<Frame, HandshakeError> {
    loop {
        if let Some(frame) = decoder.decode()? {
            return Ok(frame);
        }
        let n = poll_fn(|cx| poll_read_into(stream, cx, decoder, HANDSHAKE_READ_BYTES)).await?;
        if n == 0 {
            decoder.decode_eof()?;
            return Err(HandshakeError::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> PeerIdentity {
        PeerIdentity {
            cluster_id: "prod".into(),
            node_id: 2,
            incarnation: 5,
            shard: 1,
        }
    }

    fn hello() -> HelloInfo {
        HelloInfo {
            cluster_id: "prod".into(),
            node_id: 1,
            incarnation: 9,
            from_shard: 0,
            to_shard: 1,
            expected_node_id: 2,
        }
    }

    /// Changes a valid Hello and its version into the case under test.
    type Change = fn(&mut HelloInfo, &mut u16);

    #[test]
    fn hello_checks_in_order() {
        let cases: [(&str, Change, Option<PeerError>); 6] = [
            ("accepted", |_, _| {}, None),
            (
                "version",
                |_, version| *version = 2,
                Some(PeerError::UnsupportedVersion),
            ),
            (
                "shard",
                |hello, _| hello.to_shard = 0,
                Some(PeerError::WrongShard),
            ),
            (
                "cluster",
                |hello, _| hello.cluster_id = "test".into(),
                Some(PeerError::ClusterMismatch),
            ),
            (
                "node",
                |hello, _| hello.expected_node_id = 3,
                Some(PeerError::WrongNode),
            ),
            (
                "version first",
                |hello, version| {
                    *version = 0;
                    hello.cluster_id = "test".into();
                },
                Some(PeerError::UnsupportedVersion),
            ),
        ];
        for (name, change, expected) in cases {
            let mut hello = hello();
            let mut version = PROTOCOL_VERSION;
            change(&mut hello, &mut version);
            let verdict = check_hello(&identity(), &hello, version);
            assert_eq!(verdict.err().map(|r| r.code), expected, "{name}");
        }
    }

    #[test]
    fn refusals_say_what_to_fix() {
        let mut other = hello();
        other.cluster_id = "test".into();
        let refusal = check_hello(&identity(), &other, PROTOCOL_VERSION).unwrap_err();
        assert!(refusal.message.contains("\"test\""), "{}", refusal.message);
        assert!(refusal.message.contains("\"prod\""), "{}", refusal.message);
    }

    #[test]
    fn reply_checks() {
        let dialed = PeerAddr::new(2, 1);
        let reply = ReplyInfo {
            cluster_id: "prod".into(),
            node_id: 2,
            incarnation: 5,
        };
        assert_eq!(check_reply(&identity(), dialed, &reply), Ok(()));
        let other_cluster = ReplyInfo {
            cluster_id: "test".into(),
            ..reply.clone()
        };
        assert_eq!(
            check_reply(&identity(), dialed, &other_cluster).map_err(|r| r.code),
            Err(PeerError::ClusterMismatch)
        );
        let other_node = ReplyInfo {
            node_id: 3,
            ..reply
        };
        assert_eq!(
            check_reply(&identity(), dialed, &other_node).map_err(|r| r.code),
            Err(PeerError::WrongNode)
        );
    }
}
