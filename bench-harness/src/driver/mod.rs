//! Drivers: the systems a workload runs against, behind one trait.
//!
//! As in the OpenMessaging Benchmark, a [`Driver`] creates topics,
//! producers and consumers; the runner does everything else (pacing,
//! timing, counting), so the same workload measures every driver the same
//! way. Two exist: [`shardmq::ShardmqDriver`] (the SDK) and
//! [`nats::NatsDriver`] (NATS JetStream through `async-nats`).
//!
//! Each driver states its durability: when it acknowledges relative to the
//! data reaching the disk. A report never compares figures without it.

pub mod nats;
pub mod shardmq;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

/// A driver operation that failed, with what it was doing.
#[derive(Debug, Clone)]
pub struct DriverError {
    /// The driver (`shardmq`, `nats-jetstream`).
    pub driver: &'static str,
    /// The operation, e.g. "create topic".
    pub op: &'static str,
    /// What the client said.
    pub message: String,
}

impl DriverError {
    /// An error of `driver` during `op`.
    pub fn new(driver: &'static str, op: &'static str, error: impl fmt::Display) -> Self {
        Self {
            driver,
            op,
            message: error.to_string(),
        }
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.driver, self.op, self.message)
    }
}

impl std::error::Error for DriverError {}

/// Result of a driver operation.
pub type DriverResult<T> = Result<T, DriverError>;

/// Resolves when one record is acknowledged (or failed for good).
pub type AckFuture = BoxFuture<'static, DriverResult<()>>;

/// A system under test.
pub trait Driver: Send + Sync + fmt::Debug {
    /// `shardmq` or `nats-jetstream`.
    fn name(&self) -> &'static str;
    /// Which of the driver's modes this is, e.g. "acks=all".
    fn mode(&self) -> String;
    /// When an acknowledgement is sent relative to fsync, in plain words.
    fn durability(&self) -> String;
    /// Server version, flags and settings that shape the figures.
    fn config(&self) -> BTreeMap<String, String>;
    /// Replicas of every partition (stream) it creates.
    fn replication_factor(&self) -> u32;
    /// The Raft election timeout of its servers, in words, and its lower
    /// bound in ms (0 when not known): the reference of a failover.
    fn election_timeout(&self) -> (String, f64);
    /// Creates a topic (and whatever consumers need to share it).
    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, DriverResult<()>>;
    /// Deletes a topic and its data, after a run.
    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, DriverResult<()>>;
    /// The server leading each partition of `topic`, by the id the
    /// servers use for one another (`None`: no leader known), asking only
    /// the servers `live` (ids; the others are down).
    fn leaders<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
        live: &'a [String],
    ) -> BoxFuture<'a, DriverResult<Vec<Option<String>>>>;
    /// Whether [`leaders`](Self::leaders) is cheap enough to poll every
    /// 100 ms during a failover (a request per server, not per partition).
    fn leaders_poll_is_cheap(&self) -> bool {
        false
    }
    /// A producer of `topic`, with its own connections.
    fn create_producer<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, DriverResult<Box<dyn BenchProducer>>>;
    /// Consumer `index` of `count` sharing `topic` (each record goes to
    /// one of them), reading from the topic's beginning.
    fn create_consumer<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
        index: u32,
        count: u32,
    ) -> BoxFuture<'a, DriverResult<Box<dyn BenchConsumer>>>;
}

/// One producer's connection to the system under test.
pub trait BenchProducer: Send {
    /// Hands one record to the client. Resolves once the client took it
    /// (the actual send time), with a future that resolves at its
    /// acknowledgement. Waits when the client's queues are full.
    fn send(&mut self, key: Option<Bytes>, value: Bytes) -> BoxFuture<'_, DriverResult<AckFuture>>;
    /// [`send`](Self::send) to partition `partition` (below the topic's
    /// partition count).
    fn send_to(&mut self, partition: u32, value: Bytes) -> BoxFuture<'_, DriverResult<AckFuture>>;
    /// Sends what is queued and waits for its outcome.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// One consumer's connection to the system under test.
pub trait BenchConsumer: Send {
    /// Waits up to `max_wait` for records and returns their values (empty
    /// when none came).
    fn poll(&mut self, max_wait: Duration) -> BoxFuture<'_, DriverResult<Vec<Bytes>>>;
}

/// At most this many requests of one bulk operation (creating or deleting
/// the streams of many partitions, asking for their leaders) are in flight
/// at once.
pub const BULK_IN_FLIGHT_MAX: usize = 32;

/// Partition of a key, as Kafka's default partitioner picks it.
pub fn key_partition(key: &[u8], partitions: u32) -> u32 {
    shardmq_client::partitioner::key_partition(key, partitions.max(1)) as u32
}
