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
//!   that says which shard of which broker owns each partition and where
//!   each replica lives; requests that any broker answers go to the broker
//!   that answered last, then to each bootstrap address and each known
//!   broker in turn, so one broker down does not stop a client that knows
//!   others. Shared by:
//! * [`Admin`]: create, delete, list and describe topics; cluster metadata,
//!   [`Admin::describe_cluster`], [`Admin::describe_replicas`] (one
//!   broker's view of its own replicas), [`Admin::transfer_leader`].
//! * [`Producer`]: per-partition batching (`linger`, `batch_bytes_max`)
//!   straight into Kafka RecordBatch v2 bytes, key-hash (Kafka's murmur2)
//!   or round-robin partitioning, acks, the ready batches of all
//!   partitions led by one shard grouped into one Produce request (a
//!   bounded number in flight per connection), retries per batch of what
//!   is known not to have been appended (see below); each record resolves
//!   with its partition, offset and timestamp.
//! * [`Consumer`]: assigned partitions, seeks (earliest, latest, offset,
//!   timestamp), long-poll fetches decoded with the schema's batch view,
//!   from the leader or from the replica of a chosen broker
//!   ([`ReadFrom`]).
//! * [`ClientError`]: the wire [`ErrorCode`] of a refusal, or what went
//!   wrong in transport (connect, lost connection, timeout, protocol
//!   violation), with [`ClientError::is_retriable`] and
//!   [`ClientError::is_outcome_unknown`].
//!
//! # Delivery: acknowledged, refused, or unknown
//!
//! Every record a [`Producer`] accepts resolves once, in one of three ways:
//!
//! 1. **Acknowledged** ([`RecordMetadata`]): stored at that offset, with
//!    the durability its [`Acks`] level promises.
//! 2. **Refused** (any [`ClientError`] for which
//!    [`ClientError::is_outcome_unknown`] is false): the record was not
//!    appended. The producer has already retried what can be retried
//!    safely: NotLeader (at once at the leader a `LeaderHint` names, else
//!    after a metadata refresh), LeaderNotAvailable, BrokerShuttingDown,
//!    Throttled, NotEnoughReplicas, and failures to connect, within
//!    `ProducerConfig::retries` and `ProducerConfig::delivery_timeout`.
//! 3. **Outcome unknown** ([`ClientError::OutcomeUnknown`]): the request
//!    reached, or may have reached, the broker, but no answer says what
//!    became of it: the broker's RequestTimedOut (the append goes on and
//!    may still commit), no response within the request timeout, a
//!    connection lost after the request was sent, an unreadable response.
//!    The record may or may not be in the log. The producer never resends
//!    such a batch, since that could store it twice; the caller decides.
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
//!   with a leader hint not older than the cached leadership moves the cached
//!   leader there, and one without, or a lost connection, refreshes the
//!   metadata before a retry.
//! * A produced batch is sent again only when it is known not to have been
//!   appended, so the producer never stores a record twice by itself.
//! * With one request in flight per partition (the default), a producer
//!   keeps each partition's records in the order they entered its queue,
//!   retries included: a batch is sent only once the one before it in its
//!   partition has resolved. A consumer returns each partition's records
//!   in offset order, never one below its position.
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
pub use codec::{
    BrokerDescription, BrokerInfo, ClusterDescription, ClusterMetadata, LeaderHint, PartitionInfo,
    ReplicaInfo, ReplicaState, ReplicasDescription, TopicInfo, TopicListing,
};
pub use config::{
    Acks, ClientConfig, ConsumerConfig, Partitioner, ProducerConfig, ReadFrom, SeekTo,
};
pub use connection::Connection;
pub use consumer::{ConsumedRecord, Consumer, FetchedBatch};
pub use error::{ClientError, Result};
pub use producer::{Delivery, Producer, ProducerRecord, RecordMetadata};
pub use shardmq_schema::protocol::{BrokerStatus, ErrorCode, ReplicaRole};
