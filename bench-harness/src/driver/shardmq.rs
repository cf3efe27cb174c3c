//! The shardmq driver: the SDK (`shardmq-client`) against a broker.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use shardmq_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, ErrorCode, Partitioner, Producer,
    ProducerConfig, ProducerRecord, ReplicaRole, SeekTo,
};

use super::{AckFuture, BenchConsumer, BenchProducer, Driver, DriverError, DriverResult};

const NAME: &str = "shardmq";

/// How long a batch waits for more records: none. The producer still
/// batches: a partition's next batch takes every record queued while its
/// previous one was in flight, so batches grow with the rate and a lone
/// record is not held back.
pub const LINGER: Duration = Duration::ZERO;

/// What acks=all promises, for the report.
pub const DURABILITY_ACKS_ALL: &str = "Acknowledged after the batch is committed, which \
     on a single broker means after the shard log's fdatasync; an acknowledged record survives a \
     crash of the machine";
/// What acks=leader promises, for the report.
pub const DURABILITY_ACKS_LEADER: &str = "Acknowledged after the leader appended \
     the batch, before the fdatasync; a crash of the machine can lose the last acknowledged \
     records (the same class of guarantee as nats-server's default)";
/// What acks=all promises with three replicas, for the report.
pub const DURABILITY_ACKS_ALL_RF3: &str = "Acknowledged after the batch is committed: \
     made durable (fdatasync of each one's shard log) by a majority of its 3 replicas, each on \
     its own broker; an acknowledged record survives the loss of any one broker and a crash of \
     the machine";
/// What acks=leader promises with three replicas, for the report.
pub const DURABILITY_ACKS_LEADER_RF3: &str = "Acknowledged after the leader appended \
     the batch, before its fdatasync and before any follower has it; a crash of the leader can \
     lose the last acknowledged records";

/// The election timeout of shardmq's Raft groups at the broker's defaults
/// (`[raft] election_ticks = 10`, `tick_ms = 100`; raft-rs randomises each
/// follower's timeout in [election_ticks, 2 x election_ticks) ticks).
pub const ELECTION_TIMEOUT: &str =
    "10 ticks x 100 ms = 1,000 ms, randomised up to 2,000 ms (broker defaults)";
/// Its lower bound, ms.
pub const ELECTION_TIMEOUT_MS: f64 = 1_000.0;

/// How a [`ShardmqDriver`] reaches its brokers and what it creates.
#[derive(Debug, Clone)]
pub struct ShardmqTarget {
    /// Client addresses of the brokers (any one that answers will do).
    pub bootstrap: Vec<String>,
    /// Replicas of each partition of the topics it creates.
    pub replication_factor: u32,
    /// Name the replication factor in the mode ("RF3 acks=all"), for runs
    /// beside a run of another replication factor.
    pub show_replication: bool,
    /// Facts about the servers to disclose (shards, binary, ...).
    pub server_config: BTreeMap<String, String>,
    /// The producer's longest wait between retries of a batch; `None`:
    /// the SDK's default.
    pub retry_backoff_max: Option<Duration>,
}

/// shardmq through the SDK, at one acknowledgement level.
#[derive(Debug)]
pub struct ShardmqDriver {
    client: ClientConfig,
    acks: Acks,
    replication_factor: u32,
    show_replication: bool,
    server_config: BTreeMap<String, String>,
    producer: ProducerConfig,
}

impl ShardmqDriver {
    /// A driver for the broker at `bootstrap`, producing with `acks`, on
    /// topics of one replica. `server_config` is copied into every run's
    /// `config`.
    pub fn new(bootstrap: &str, acks: Acks, server_config: BTreeMap<String, String>) -> Self {
        Self::with_target(
            ShardmqTarget {
                bootstrap: vec![bootstrap.to_owned()],
                replication_factor: 1,
                show_replication: false,
                server_config,
                retry_backoff_max: None,
            },
            acks,
        )
    }

    /// A driver for `target`, producing with `acks`.
    pub fn with_target(target: ShardmqTarget, acks: Acks) -> Self {
        let mut producer = ProducerConfig {
            acks,
            // Keyed records go by key hash; records without a key go
            // round-robin either way.
            partitioner: Partitioner::KeyHash,
            linger: LINGER,
            ..ProducerConfig::default()
        };
        if let Some(max) = target.retry_backoff_max {
            producer.retry_backoff_max = max;
            producer.retry_backoff = producer.retry_backoff.min(max);
        }
        Self {
            client: ClientConfig::new(target.bootstrap),
            acks,
            replication_factor: target.replication_factor.max(1),
            show_replication: target.show_replication,
            server_config: target.server_config,
            producer,
        }
    }

    fn error(op: &'static str) -> impl Fn(shardmq_client::ClientError) -> DriverError {
        move |e| DriverError::new(NAME, op, e)
    }
}

fn acks_name(acks: Acks) -> &'static str {
    match acks {
        Acks::All => "all",
        Acks::Leader => "leader",
        Acks::None => "none",
    }
}

impl Driver for ShardmqDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mode(&self) -> String {
        if self.show_replication {
            format!(
                "RF{} acks={}",
                self.replication_factor,
                acks_name(self.acks)
            )
        } else {
            format!("acks={}", acks_name(self.acks))
        }
    }

    fn durability(&self) -> String {
        let replicated = self.replication_factor > 1;
        match self.acks {
            Acks::All if replicated => DURABILITY_ACKS_ALL_RF3.to_owned(),
            Acks::All => DURABILITY_ACKS_ALL.to_owned(),
            Acks::Leader if replicated => DURABILITY_ACKS_LEADER_RF3.to_owned(),
            Acks::Leader => DURABILITY_ACKS_LEADER.to_owned(),
            Acks::None => "No acknowledgement: a record counts as sent once written \
                           to the socket"
                .to_owned(),
        }
    }

    fn config(&self) -> BTreeMap<String, String> {
        let defaults = &self.producer;
        let mut config = self.server_config.clone();
        config.insert("acks".into(), acks_name(self.acks).into());
        config.insert(
            "replication_factor".into(),
            self.replication_factor.to_string(),
        );
        config.insert("producer.linger_ms".into(), LINGER.as_millis().to_string());
        config.insert(
            "producer.batch_bytes_max".into(),
            defaults.batch_bytes_max.to_string(),
        );
        config.insert(
            "producer.in_flight_per_partition".into(),
            defaults.in_flight_per_partition.to_string(),
        );
        config.insert(
            "producer.retry_backoff_ms".into(),
            defaults.retry_backoff.as_millis().to_string(),
        );
        config.insert(
            "producer.retry_backoff_max_ms".into(),
            defaults.retry_backoff_max.as_millis().to_string(),
        );
        config.insert(
            "producer.delivery_timeout_ms".into(),
            defaults.delivery_timeout.as_millis().to_string(),
        );
        config.insert("client".into(), "shardmq-client (SDK)".into());
        config.insert(
            "client.bootstrap".into(),
            format!("{} broker(s)", self.client.bootstrap.len()),
        );
        config
    }

    fn replication_factor(&self) -> u32 {
        self.replication_factor
    }

    fn election_timeout(&self) -> (String, f64) {
        (ELECTION_TIMEOUT.to_owned(), ELECTION_TIMEOUT_MS)
    }

    fn leaders<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
        live: &'a [String],
    ) -> BoxFuture<'a, DriverResult<Vec<Option<String>>>> {
        async move {
            let admin = Admin::connect(self.client.clone())
                .await
                .map_err(Self::error("connect"))?;
            // Per partition: (term, node id) of the replica that says it
            // leads in the highest term.
            let mut best: Vec<Option<(u64, i32)>> = vec![None; partitions as usize];
            let mut answered = 0;
            let mut last_error = None;
            for id in live {
                let Ok(node_id) = id.parse::<i32>() else {
                    continue;
                };
                let replicas = match admin.describe_replicas(node_id, Some(&[topic])).await {
                    Ok(d) => d.replicas,
                    Err(e) => {
                        last_error = Some(e);
                        continue;
                    }
                };
                answered += 1;
                for r in replicas {
                    let Some(slot) = usize::try_from(r.partition)
                        .ok()
                        .and_then(|p| best.get_mut(p))
                    else {
                        continue;
                    };
                    if r.topic == topic
                        && r.role == ReplicaRole::Leader
                        && slot.is_none_or(|(term, _)| r.term > term)
                    {
                        *slot = Some((r.term, node_id));
                    }
                }
            }
            if answered == 0 {
                if let Some(e) = last_error {
                    return Err(Self::error("describe replicas")(e));
                }
            }
            Ok(best
                .into_iter()
                .map(|b| b.map(|(_, id)| id.to_string()))
                .collect())
        }
        .boxed()
    }

    fn leaders_poll_is_cheap(&self) -> bool {
        true
    }

    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, DriverResult<()>> {
        async move {
            let admin = Admin::connect(self.client.clone())
                .await
                .map_err(Self::error("connect"))?;
            let partitions = i32::try_from(partitions)
                .map_err(|_| DriverError::new(NAME, "create topic", "too many partitions"))?;
            let replication_factor = i16::try_from(self.replication_factor)
                .map_err(|_| DriverError::new(NAME, "create topic", "too many replicas"))?;
            match admin
                .create_topic(topic, partitions, replication_factor)
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => Ok(()),
                Err(e) => Err(Self::error("create topic")(e)),
            }
        }
        .boxed()
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, DriverResult<()>> {
        async move {
            let admin = Admin::connect(self.client.clone())
                .await
                .map_err(Self::error("connect"))?;
            admin
                .delete_topic(topic)
                .await
                .map_err(Self::error("delete topic"))
        }
        .boxed()
    }

    fn create_producer<'a>(
        &'a self,
        topic: &'a str,
        _partitions: u32,
    ) -> BoxFuture<'a, DriverResult<Box<dyn BenchProducer>>> {
        async move {
            let producer = Producer::connect(self.client.clone(), self.producer.clone())
                .await
                .map_err(Self::error("connect producer"))?;
            // Load the topic's metadata before the clock starts.
            producer
                .client()
                .topic(topic)
                .await
                .map_err(Self::error("topic metadata"))?;
            Ok(Box::new(ShardmqProducer {
                producer,
                topic: topic.to_owned(),
            }) as Box<dyn BenchProducer>)
        }
        .boxed()
    }

    fn create_consumer<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
        index: u32,
        count: u32,
    ) -> BoxFuture<'a, DriverResult<Box<dyn BenchConsumer>>> {
        async move {
            let config = ConsumerConfig {
                // The run's topics are fresh, so they begin at offset 0;
                // saying so spares a ListOffsets round trip per partition.
                start: SeekTo::Offset(0),
                ..ConsumerConfig::default()
            };
            let mut consumer = Consumer::connect(self.client.clone(), config)
                .await
                .map_err(Self::error("connect consumer"))?;
            // Consumer i of n reads partitions i, i + n, i + 2n, ...
            let mine: Vec<i32> = (0..partitions)
                .filter(|p| p % count.max(1) == index)
                .map(|p| p as i32)
                .collect();
            consumer
                .assign(topic, &mine)
                .await
                .map_err(Self::error("assign"))?;
            Ok(Box::new(ShardmqConsumer {
                consumer,
                idle: mine.is_empty(),
            }) as Box<dyn BenchConsumer>)
        }
        .boxed()
    }
}

/// One SDK producer of one topic.
#[derive(Debug)]
struct ShardmqProducer {
    producer: Producer,
    topic: String,
}

impl BenchProducer for ShardmqProducer {
    fn send(&mut self, key: Option<Bytes>, value: Bytes) -> BoxFuture<'_, DriverResult<AckFuture>> {
        async move {
            let mut record = ProducerRecord::new(self.topic.clone(), value);
            if let Some(key) = key {
                record = record.key(key);
            }
            let delivery = self
                .producer
                .enqueue(record)
                .await
                .map_err(ShardmqDriver::error("enqueue"))?;
            let ack: AckFuture = delivery
                .map(|r| r.map(|_| ()).map_err(ShardmqDriver::error("produce")))
                .boxed();
            Ok(ack)
        }
        .boxed()
    }

    fn send_to(&mut self, partition: u32, value: Bytes) -> BoxFuture<'_, DriverResult<AckFuture>> {
        async move {
            let partition = i32::try_from(partition)
                .map_err(|_| DriverError::new(NAME, "enqueue", "partition out of range"))?;
            let record = ProducerRecord::new(self.topic.clone(), value).partition(partition);
            let delivery = self
                .producer
                .enqueue(record)
                .await
                .map_err(ShardmqDriver::error("enqueue"))?;
            let ack: AckFuture = delivery
                .map(|r| r.map(|_| ()).map_err(ShardmqDriver::error("produce")))
                .boxed();
            Ok(ack)
        }
        .boxed()
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        async move { self.producer.close().await }.boxed()
    }
}

/// One SDK consumer of some partitions of one topic.
#[derive(Debug)]
struct ShardmqConsumer {
    consumer: Consumer,
    /// More consumers than partitions: this one has none, and its polls
    /// only wait.
    idle: bool,
}

impl BenchConsumer for ShardmqConsumer {
    fn poll(&mut self, max_wait: Duration) -> BoxFuture<'_, DriverResult<Vec<Bytes>>> {
        async move {
            if self.idle {
                tokio::time::sleep(max_wait).await;
                return Ok(Vec::new());
            }
            let records = self
                .consumer
                .poll(max_wait)
                .await
                .map_err(ShardmqDriver::error("poll"))?;
            Ok(records.into_iter().filter_map(|r| r.value).collect())
        }
        .boxed()
    }
}
