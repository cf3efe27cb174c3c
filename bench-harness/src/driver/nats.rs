//! The NATS JetStream driver, through the `async-nats` crate.
//!
//! A topic is one stream with file storage and one replica (R1); its
//! partitions become the subjects `<stream>.0`, `<stream>.1`, ... (JetStream
//! has no partitions; the subject a record goes to follows the workload's
//! key distribution as a partition would). Producers publish with ack
//! (`jetstream.publish`, then the ack future). Consumers share one durable
//! pull consumer per stream with no acknowledgements (`AckPolicy::None`),
//! which is what a log consumer that tracks its own position costs.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::Subject;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use super::{
    key_partition, AckFuture, BenchConsumer, BenchProducer, Driver, DriverError, DriverResult,
};

const NAME: &str = "nats-jetstream";

/// Name of the durable pull consumer every bench consumer of a stream
/// shares.
const CONSUMER_NAME: &str = "bench";

/// Publishes awaiting their ack, per producer; `publish` waits for room
/// beyond it (async-nats's backpressure).
pub const ACKS_IN_FLIGHT_MAX: usize = 16_384;

/// Messages one pull request asks for.
const PULL_BATCH: usize = 1_000;

/// Messages one `poll` returns at most.
const POLL_MESSAGES_MAX: usize = 4_096;

/// What nats-server 2.9 promises, for the report.
pub const DURABILITY: &str = "nats-server acknowledges a publish once the message is written \
     to its file store (R1), before fsync; the store is synced in the background \
     (sync_interval, 2 minutes by default in nats-server 2.9), so a crash of the machine can \
     lose acknowledged messages";

/// NATS JetStream at one server.
#[derive(Debug)]
pub struct NatsDriver {
    url: String,
    server_config: BTreeMap<String, String>,
}

impl NatsDriver {
    /// A driver for the server at `url` (`nats://HOST:PORT`).
    /// `server_config` is copied into every run's `config`.
    pub fn new(url: &str, server_config: BTreeMap<String, String>) -> Self {
        Self {
            url: url.to_owned(),
            server_config,
        }
    }

    async fn connect(&self) -> DriverResult<async_nats::Client> {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(self.url.as_str())
            .await
            .map_err(|e| DriverError::new(NAME, "connect", e))
    }

    async fn context(&self) -> DriverResult<jetstream::Context> {
        let client = self.connect().await?;
        Ok(jetstream::context::ContextBuilder::new()
            .max_ack_inflight(ACKS_IN_FLIGHT_MAX)
            .backpressure_on_inflight(true)
            .build(client))
    }
}

/// A stream name from a topic name: JetStream forbids `.`, `*`, `>` and
/// whitespace in stream names.
pub fn stream_name(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Driver for NatsDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mode(&self) -> String {
        "R1 file".to_owned()
    }

    fn durability(&self) -> String {
        DURABILITY.to_owned()
    }

    fn config(&self) -> BTreeMap<String, String> {
        let mut config = self.server_config.clone();
        config.insert("storage".into(), "file".into());
        config.insert("replicas".into(), "1".into());
        config.insert("publish".into(), "with ack (async)".into());
        config.insert(
            "client.max_ack_inflight".into(),
            ACKS_IN_FLIGHT_MAX.to_string(),
        );
        config.insert(
            "consumer".into(),
            format!("durable pull, ack none, batch {PULL_BATCH}"),
        );
        config.insert("partitions".into(), "one subject per partition".into());
        config.insert("client".into(), "async-nats".into());
        config
    }

    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        _partitions: u32,
    ) -> BoxFuture<'a, DriverResult<()>> {
        async move {
            let context = self.context().await?;
            let name = stream_name(topic);
            let stream = context
                .create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("{name}.*")],
                    storage: stream::StorageType::File,
                    num_replicas: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| DriverError::new(NAME, "create stream", e))?;
            stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(CONSUMER_NAME.to_owned()),
                    ack_policy: consumer::AckPolicy::None,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|e| DriverError::new(NAME, "create consumer", e))?;
            Ok(())
        }
        .boxed()
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, DriverResult<()>> {
        async move {
            let context = self.context().await?;
            context
                .delete_stream(stream_name(topic))
                .await
                .map_err(|e| DriverError::new(NAME, "delete stream", e))?;
            Ok(())
        }
        .boxed()
    }

    fn create_producer<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, DriverResult<Box<dyn BenchProducer>>> {
        async move {
            let context = self.context().await?;
            let name = stream_name(topic);
            let subjects = (0..partitions.max(1))
                .map(|p| Subject::from(format!("{name}.{p}")))
                .collect();
            Ok(Box::new(NatsProducer {
                context,
                subjects,
                next: 0,
            }) as Box<dyn BenchProducer>)
        }
        .boxed()
    }

    fn create_consumer<'a>(
        &'a self,
        topic: &'a str,
        _partitions: u32,
        _index: u32,
        _count: u32,
    ) -> BoxFuture<'a, DriverResult<Box<dyn BenchConsumer>>> {
        async move {
            // Every bench consumer pulls from the one durable consumer, which
            // hands each message to one of them.
            let context = self.context().await?;
            let stream = context
                .get_stream(stream_name(topic))
                .await
                .map_err(|e| DriverError::new(NAME, "get stream", e))?;
            let pull: consumer::PullConsumer = stream
                .get_consumer(CONSUMER_NAME)
                .await
                .map_err(|e| DriverError::new(NAME, "get consumer", e))?;
            let messages = pull
                .stream()
                .max_messages_per_batch(PULL_BATCH)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(10))
                .messages()
                .await
                .map_err(|e| DriverError::new(NAME, "pull", e))?;
            Ok(Box::new(NatsConsumer { messages }) as Box<dyn BenchConsumer>)
        }
        .boxed()
    }
}

/// One connection publishing to one stream.
#[derive(Debug)]
struct NatsProducer {
    context: jetstream::Context,
    /// One per partition.
    subjects: Vec<Subject>,
    /// Next subject for records without a key.
    next: usize,
}

impl BenchProducer for NatsProducer {
    fn send(&mut self, key: Option<Bytes>, value: Bytes) -> BoxFuture<'_, DriverResult<AckFuture>> {
        let index = match &key {
            Some(key) => key_partition(key, self.subjects.len() as u32) as usize,
            None => {
                let i = self.next;
                self.next = (self.next + 1) % self.subjects.len();
                i
            }
        };
        let subject = self.subjects[index].clone();
        async move {
            let ack = self
                .context
                .publish(subject, value)
                .await
                .map_err(|e| DriverError::new(NAME, "publish", e))?;
            let ack: AckFuture = async move {
                ack.await
                    .map(|_| ())
                    .map_err(|e| DriverError::new(NAME, "publish ack", e))
            }
            .boxed();
            Ok(ack)
        }
        .boxed()
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        async move {
            // Pending acks were awaited by the runner; flush what is left.
            let _ = self.context.client().flush().await;
        }
        .boxed()
    }
}

/// One pull subscription on a stream's durable consumer.
struct NatsConsumer {
    messages: consumer::pull::Stream,
}

impl std::fmt::Debug for NatsConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConsumer").finish_non_exhaustive()
    }
}

impl BenchConsumer for NatsConsumer {
    fn poll(&mut self, max_wait: Duration) -> BoxFuture<'_, DriverResult<Vec<Bytes>>> {
        async move {
            let first = match tokio::time::timeout(max_wait, self.messages.next()).await {
                Err(_elapsed) => return Ok(Vec::new()),
                Ok(None) => return Err(DriverError::new(NAME, "pull", "the stream ended")),
                Ok(Some(Err(e))) => return Err(DriverError::new(NAME, "pull", e)),
                Ok(Some(Ok(m))) => m,
            };
            let mut values = vec![first.message.payload.clone()];
            // Take what is already buffered without waiting.
            while values.len() < POLL_MESSAGES_MAX {
                match self.messages.next().now_or_never() {
                    Some(Some(Ok(m))) => values.push(m.message.payload.clone()),
                    Some(Some(Err(e))) => return Err(DriverError::new(NAME, "pull", e)),
                    Some(None) | None => break,
                }
            }
            Ok(values)
        }
        .boxed()
    }
}
