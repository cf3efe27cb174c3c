//! `shardmq-client`: the native Rust SDK (producer, consumer, admin client).
//!
//! Planned. It will speak the native flatbuffers protocol, batch per
//! partition on the producer side, discover leaders and the owning shard's
//! port from metadata, and retry retriable errors. It depends on `schema` for
//! the record batch format and never on the broker's internals.
