//! The shardmq driver: the SDK (`shardmq-client`) against a broker.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use shardmq_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, ErrorCode, Partitioner, Producer,
    ProducerConfig, ProducerRecord, SeekTo,
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

/// shardmq through the SDK, at one acknowledgement level.
#[derive(Debug)]
pub struct ShardmqDriver {
    client: ClientConfig,
    acks: Acks,
    /// Facts about the server to disclose (shards, binary, ...).
    server_config: BTreeMap<String, String>,
}

impl ShardmqDriver {
    /// A driver for the broker at `bootstrap`, producing with `acks`.
    /// `server_config` is copied into every run's `config`.
    pub fn new(bootstrap: &str, acks: Acks, server_config: BTreeMap<String, String>) -> Self {
        Self {
            client: ClientConfig::new([bootstrap.to_owned()]),
            acks,
            server_config,
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
        format!("acks={}", acks_name(self.acks))
    }

    fn durability(&self) -> String {
        match self.acks {
            Acks::All => DURABILITY_ACKS_ALL.to_owned(),
            Acks::Leader => DURABILITY_ACKS_LEADER.to_owned(),
            Acks::None => "No acknowledgement: a record counts as sent once written \
                           to the socket"
                .to_owned(),
        }
    }

    fn config(&self) -> BTreeMap<String, String> {
        let defaults = ProducerConfig::default();
        let mut config = self.server_config.clone();
        config.insert("acks".into(), acks_name(self.acks).into());
        config.insert("replication_factor".into(), "1".into());
        config.insert("producer.linger_ms".into(), LINGER.as_millis().to_string());
        config.insert(
            "producer.batch_bytes_max".into(),
            defaults.batch_bytes_max.to_string(),
        );
        config.insert(
            "producer.in_flight_per_partition".into(),
            defaults.in_flight_per_partition.to_string(),
        );
        config.insert("client".into(), "shardmq-client (SDK)".into());
        config
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
            match admin.create_topic(topic, partitions, 1).await {
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
            let config = ProducerConfig {
                acks: self.acks,
                // Keyed records go by key hash; records without a key go
                // round-robin either way.
                partitioner: Partitioner::KeyHash,
                linger: LINGER,
                ..ProducerConfig::default()
            };
            let producer = Producer::connect(self.client.clone(), config)
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
