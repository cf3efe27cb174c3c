//! Configuration of the client, the producer and the consumer.

use std::time::Duration;

/// How a client finds and talks to the cluster; shared by [`crate::Admin`],
/// [`crate::Producer`] and [`crate::Consumer`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of brokers to ask for metadata first; tried in order.
    pub bootstrap: Vec<String>,
    /// Name sent in every request header, for the broker's logs and quotas.
    pub client_id: String,
    /// How long to wait for a TCP connection.
    pub connect_timeout: Duration,
    /// How long to wait for the response to one request (a fetch adds its
    /// `max_wait` to this).
    pub request_timeout: Duration,
    /// Most requests in flight on one connection; more wait for room.
    pub in_flight_max: usize,
    /// Largest frame accepted from a broker, prefix included.
    pub frame_bytes_max: usize,
    /// How long admin operations that go through the controller (create
    /// and delete topics, leader transfers) retry LeaderNotAvailable, the
    /// answer while the controller group has no leader (a cluster
    /// starting, an election), before they fail with it.
    pub controller_wait: Duration,
}

impl ClientConfig {
    /// A configuration with the defaults and these bootstrap addresses.
    pub fn new<I, S>(bootstrap: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            bootstrap: bootstrap.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            bootstrap: Vec::new(),
            client_id: "shardmq-client".to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            in_flight_max: 256,
            frame_bytes_max: shardmq_schema::protocol::MAX_FRAME_BYTES,
            controller_wait: Duration::from_secs(30),
        }
    }
}

/// How many replicas must have a batch before the broker acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// No response at all: records resolve once written to the socket,
    /// with offset -1.
    None,
    /// The leader appended the batch.
    Leader,
    /// A majority of the partition's replicas has the batch (the default).
    #[default]
    All,
}

/// How the producer picks the partition of a record that names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// Records with a key go to `murmur2(key) & 0x7fffffff % partitions`,
    /// Kafka's default partitioner, so the same key always lands in the
    /// same partition (while the partition count does not change); records
    /// without a key go round-robin.
    #[default]
    KeyHash,
    /// Every record goes to the next partition in turn, keys ignored.
    RoundRobin,
}

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Replicas that must have a batch before it is acknowledged.
    pub acks: Acks,
    /// How long a partition's batch may wait for more records after its
    /// first one before it is sent.
    pub linger: Duration,
    /// A batch is sent as soon as it holds this many bytes (header
    /// included); a record that would push it over starts the next batch.
    /// A single larger record is sent alone.
    pub batch_bytes_max: usize,
    /// How the partition of a record without one is chosen.
    pub partitioner: Partitioner,
    /// Most times a batch is sent again after an error that says it was not
    /// appended (NotLeader, LeaderNotAvailable, BrokerShuttingDown,
    /// Throttled, NotEnoughReplicas, a failed connect), before its records
    /// fail with that error. A batch whose outcome is unknown (a broker's
    /// RequestTimedOut, no response in time, a connection lost after the
    /// request was sent) is never sent again: its records fail with
    /// [`crate::ClientError::OutcomeUnknown`]. Default `u32::MAX`: as
    /// Kafka's producer, retries are bounded by `delivery_timeout`, so a
    /// leader failover (an election, the new leader reaching the metadata)
    /// is ridden out whatever the backoff.
    pub retries: u32,
    /// How long the producer keeps retrying a batch, counted from its
    /// first attempt: no retry starts after it, and the records fail with
    /// the last error. An attempt in flight when it passes is waited for
    /// (up to the request timeout plus `ack_timeout`). Default 30 s.
    pub delivery_timeout: Duration,
    /// Wait before the first retry; doubled for each further one. A
    /// NotLeader that names the new leader is retried at once, there.
    /// Default 25 ms.
    pub retry_backoff: Duration,
    /// Longest wait between retries. It bounds how long after a failover's
    /// new leader reaches the metadata a producer still waits to find it.
    /// Default 250 ms (a retry of a batch known not appended costs a
    /// connect attempt and a metadata request).
    pub retry_backoff_max: Duration,
    /// Produce requests in flight per partition. 1 (the default) keeps
    /// each partition's records in the order they were sent, even across
    /// retries; more pipelines a partition but may reorder on retry.
    pub in_flight_per_partition: usize,
    /// Produce requests in flight per connection, that is per broker
    /// shard. Batches that become ready while this many are in flight wait,
    /// and the next request to that shard carries all of them (up to
    /// `request_bytes_max`); a batch ready while fewer are in flight is
    /// sent at once.
    pub in_flight_max: usize,
    /// Most bytes of batches one Produce request carries (each batch plus
    /// a small per-item overhead). A batch is never split: one larger than
    /// this goes alone in its request.
    pub request_bytes_max: usize,
    /// Records queued per partition, not yet in a batch; `send` waits when
    /// the queue is full.
    pub queue_records_max: usize,
    /// Broker-side timeout of a produce request (`ProduceRequest.timeout_ms`).
    pub ack_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes_max: 1 << 20,
            partitioner: Partitioner::KeyHash,
            retries: u32::MAX,
            delivery_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(25),
            retry_backoff_max: Duration::from_millis(250),
            in_flight_per_partition: 1,
            in_flight_max: 64,
            request_bytes_max: 4 << 20,
            queue_records_max: 16 * 1024,
            ack_timeout: Duration::from_secs(10),
        }
    }
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Where an assigned partition without a position starts reading.
    pub start: SeekTo,
    /// Answer a fetch as soon as this many bytes are available
    /// (`FetchRequest.min_bytes`); 1 answers as soon as anything is.
    pub fetch_min_bytes: u32,
    /// Most bytes per partition per fetch (0: the broker's default).
    pub partition_bytes_max: u32,
    /// Most bytes per fetch request (0: the broker's default).
    pub fetch_bytes_max: u32,
    /// Which replica the fetches go to.
    pub read_from: ReadFrom,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            start: SeekTo::Earliest,
            fetch_min_bytes: 1,
            partition_bytes_max: 1 << 20,
            fetch_bytes_max: 16 << 20,
            read_from: ReadFrom::Leader,
        }
    }
}

/// Which replica of each partition a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// The leader's owning shard (the default): every committed record,
    /// as soon as it is committed.
    #[default]
    Leader,
    /// The replica held by the broker of this node id, leader or follower:
    /// fetches go to that replica's shard port with `allow_follower`, and
    /// read up to the commit index that replica knows (its high watermark,
    /// which may trail the leader's). Earliest and Latest seek to that
    /// replica's log start and high watermark. A partition with no replica
    /// on that node fails the poll with [`crate::ClientError::InvalidArgument`],
    /// and a replica that answers NotLeader (it will not serve a follower
    /// read) with that code.
    Replica(i32),
}

/// Where a consumer reads a partition from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeekTo {
    /// The partition's first stored offset.
    #[default]
    Earliest,
    /// The high watermark: only records produced from now on.
    Latest,
    /// This offset.
    Offset(i64),
    /// The first record whose timestamp is at or after this one (ms since
    /// the epoch); the high watermark if there is none.
    Timestamp(i64),
}
