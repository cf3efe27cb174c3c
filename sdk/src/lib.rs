//! `shardmq-client`: the native Rust SDK (producer, consumer, admin client)
//! for tokio applications.
//!
//! It speaks the native protocol (size-prefixed flatbuffers frames,
//! `schema/fbs/protocol.fbs`) over TCP:
//!
//! * [`codec`]: the sans-IO half. Request frames are built from plain
//!   values and verified response frames are read into owned values; no
//!   socket, no runtime, testable with bytes alone.
//! * [`Connection`]: one pipelined connection on tokio. A reader task
//!   decodes and verifies frames and completes the request waiting under
//!   each correlation id; a writer task writes queued frames. At most
//!   `in_flight_max` requests are in flight (more wait), each has a
//!   timeout, and a broken connection fails every pending request with a
//!   typed error.
//! * [`Client`]: one connection per broker shard and the metadata cache
//!   that says which shard of which broker owns each partition; shared by:
//! * [`Admin`]: create, delete, list and describe topics; cluster metadata.
//! * [`Producer`]: per-partition batching (`linger`, `batch_bytes_max`)
//!   straight into Kafka RecordBatch v2 bytes, key-hash (Kafka's murmur2)
//!   or round-robin partitioning, acks, the ready batches of all
//!   partitions led by one shard grouped into one Produce request (a
//!   bounded number in flight per connection), retries of retriable errors
//!   per batch after a metadata refresh; each record resolves with its
//!   partition, offset and timestamp.
//! * [`Consumer`]: assigned partitions, seeks (earliest, latest, offset,
//!   timestamp), long-poll fetches decoded with the schema's batch view.
//! * [`ClientError`]: the wire [`ErrorCode`] of a refusal, or what went
//!   wrong in transport (connect, lost connection, timeout, protocol
//!   violation), with [`ClientError::is_retriable`].
//!
//! It depends on `shardmq-schema` (record batches, the generated protocol)
//! and on `shardmq-net`'s runtime-free parts (frame codec, in-flight table,
//! verified frames). It must never depend on `shardmq-engine` or
//! `shardmq-storage`: it sees the broker only through the protocol, so it
//! works against any broker speaking it, and a change inside the broker
//! cannot break it without a change of the protocol.
//!
//! # Invariants
//!
//! * No field of a received frame is read before the frame passed
//!   verification ([`shardmq_net::ResponseFrame::verify`]); a frame that
//!   fails it closes its connection, failing what is pending on it.
//! * A record batch is encoded once, by the producer, and the same bytes
//!   are sent on every retry; fetched batches are decoded in place, the
//!   records' keys, values and headers sharing the response's memory.
//! * A produced record's offset is the base offset the broker acknowledged
//!   for its batch plus the record's index in the batch.
//! * Requests for a partition go to the shard the metadata names as owner
//!   (its shard port, or the broker's port when that is 0); a NotLeader
//!   or a lost connection refreshes the metadata before a retry.
//! * With one request in flight per partition (the default), a producer
//!   keeps each partition's records in the order they entered its queue,
//!   retries included; a consumer returns each partition's records in
//!   offset order, never one below its position.
//! * Every wait is bounded: requests by their timeout, connects by the
//!   connect timeout, long polls by `max_wait` plus the request timeout.

pub mod admin;
pub mod client;
pub mod codec;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod partitioner;
pub mod producer;

pub use admin::Admin;
pub use client::Client;
pub use codec::{BrokerInfo, ClusterMetadata, PartitionInfo, TopicInfo, TopicListing};
pub use config::{Acks, ClientConfig, ConsumerConfig, Partitioner, ProducerConfig, SeekTo};
pub use connection::Connection;
pub use consumer::{ConsumedRecord, Consumer};
pub use error::{ClientError, Result};
pub use producer::{Delivery, Producer, ProducerRecord, RecordMetadata};
pub use shardmq_schema::protocol::ErrorCode;
