//! `shardmq-net`: frames, pipelined connections and the broker's TCP
//! server.
//!
//! Every message of the client protocol travels as a frame: a `u32`
//! little-endian length, then a flatbuffer whose schema is
//! `schema/fbs/protocol.fbs` (`shardmq_schema::protocol` has the layout
//! and the verifier). This crate moves frames between sockets and the rest
//! of the system:
//!
//! * [`frame`]: the sans-IO codec. [`FrameDecoder`] cuts a received byte
//!   stream into [`Frame`]s, reading straight into its buffer and handing
//!   frames out without copying them, and refuses an oversized length
//!   prefix before reading the body; [`WriteQueue`] lines frames up for
//!   writing. No runtime: the glommio broker and a tokio client share it.
//! * [`message`]: [`RequestFrame`] and [`ResponseFrame`], frames that passed
//!   verification and whose fields can then be read in place, and the
//!   [`error_response`]s the server sends on its own.
//! * [`inflight`]: [`InFlight`], the requests a client has in flight on a
//!   connection, matched to responses by correlation id, bounded, and all
//!   failed at once when the connection is lost. No runtime either.
//! * [`server`]: the broker's side, on glommio. [`serve_connection`] serves
//!   one connection with a [`Handler`], running its requests concurrently
//!   (pipelining) and writing responses as they complete, with a bound on
//!   requests in flight that stops reading when reached; [`listen`] and
//!   [`Server::serve`] accept connections, bounded in number, until a
//!   [`Shutdown`] and then drain them.
//! * [`peer`]: the inter-broker transport, on glommio, one instance per
//!   shard. [`peer::PeerLinks`] keeps one connection per destination shard,
//!   dialed by the sender, and writes the frames queued for it together;
//!   it drops rather than buffers without bound (Raft resends) and reports
//!   the destinations that lost frames. [`peer::listen_peers`] and
//!   [`peer::PeerServer`] take the connections of other brokers' shards,
//!   check their handshake (with the engine's [`peer::Admission`]) and hand
//!   Raft batches, verified and in place, and controller requests to a
//!   [`peer::PeerHandler`]. It knows no Raft types: the engine builds and
//!   reads the `RaftBatch` envelopes.
//!
//! It depends on `shardmq-schema` for the frame layout and the generated
//! protocol code. It must not depend on `shardmq-storage` nor on raft-rs:
//! bytes move through it, they are never stored by it, and Raft messages
//! are the engine's to build and read. Only
//! [`server`] and [`peer`] know glommio, so the SDK can use the rest from
//! tokio.
//!
//! # Invariants
//!
//! * Only `net` touches sockets and knows the frame layout; the other
//!   crates see [`Frame`]s, [`RequestFrame`]s and [`ResponseFrame`]s.
//! * A frame is verified before any of its fields is read: the only way to
//!   make a [`RequestFrame`] or [`ResponseFrame`] is to verify a frame, and
//!   they alone read fields.
//! * No byte a peer sends makes this crate panic, or buffer more than the
//!   frame limit plus one read per connection; bad input becomes a typed
//!   error, an error response, or a closed connection, never a closed
//!   server.
//! * A frame's bytes stay where the socket read put them: a record batch
//!   in a Produce request reaches the log as a slice of the receive buffer
//!   ([`RequestFrame::share`]).

pub mod frame;
pub mod inflight;
pub mod message;
pub mod peer;
pub mod ports;
pub mod server;
mod shutdown;

pub use frame::{encode_frame, Frame, FrameDecoder, FrameError, WriteQueue};
pub use inflight::{Closed, InFlight, InsertError};
pub use message::{error_response, InvalidRequest, RequestFrame, RequestKey, ResponseFrame};
pub use server::{
    handler_fn, listen, serve_connection, serve_connection_until, ConnEnd, ConnLimits, ConnStats,
    FnHandler, Handler, NetError, Server, ServerStats,
};
pub use shutdown::{Shutdown, ShutdownListener};
