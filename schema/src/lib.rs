//! Wire schema of shardmq and the record batch format.
//!
//! This crate defines the bytes that cross process and disk boundaries:
//!
//! * [`batch`]: the record batch, Kafka's RecordBatch v2 (magic 2), byte for
//!   byte. Producers send it, the log stores it, consumers fetch it.
//! * [`varint`]: the zigzag variable-length integers records are made of.
//! * Later, the FlatBuffers `.fbs` schemas of the internal RPCs and the code
//!   generated from them live here too, so every wire format has one home.
//!
//! It depends on nothing else in the project, so any crate (storage, network,
//! engine, client SDK, tools) can use it without pulling in the others, and
//! the formats cannot grow hidden dependencies on their users.
//!
//! # Invariants
//!
//! * Decoders never panic and never read out of bounds, on any input. Every
//!   length read from the input is checked against the bytes actually
//!   present before it is used, and malformed input becomes an error value.
//!   Property tests feed arbitrary and mutated bytes to check this.
//! * A batch's bytes are the same on the wire, on disk and to the consumer.
//!   The leader only rewrites the base offset and partition leader epoch
//!   ([`batch::stamp`]), which the CRC does not cover, so the producer's CRC
//!   stays valid end to end and nothing is re-encoded.
//! * The encoder writes exactly what Kafka clients write and read, which is
//!   cross-checked against an independent implementation in both directions.

pub mod batch;
pub mod varint;
