//! `shardmq-net`: framing, connection handling and the inter-broker transport.
//!
//! Planned. This crate will own the size-prefixed flatbuffers frame layout,
//! per-connection pipelining and backpressure, and the batched per-destination
//! Raft transport between brokers. It must not depend on `shardmq-storage`:
//! bytes move through it, they are never stored by it.
//!
//! Architecture invariant: only `net` knows the frame layout.
