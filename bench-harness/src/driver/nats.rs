//! The NATS JetStream driver, through the `async-nats` crate.
//!
//! Streams use file storage and one replica (R1) or, against a cluster,
//! three (R3). JetStream has no partitions; a topic's partitions map onto
//! it one of two ways ([`NatsPartitions`]):
//! - subjects (the default): a topic is one stream and its partitions the
//!   subjects `<stream>.0`, `<stream>.1`, ... (one Raft group per topic);
//! - streams: partition p is the stream `<topic>_p<p>` with the subject
//!   `<topic>_p<p>.0` (one Raft group per partition, as shardmq has).
//!
//! The subject a record goes to follows the workload's key distribution as
//! a partition would. Producers publish with ack (`jetstream.publish`, then
//! the ack future). Consumers share one durable pull consumer per stream
//! with no acknowledgements (`AckPolicy::None`), which is what a log
//! consumer that tracks its own position costs; with a stream per
//! partition there are no consumers (the workloads that use it only
//! produce). Each connection goes to one of the servers given, picked at
//! random by the client.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::Subject;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};

use super::{
    key_partition, AckFuture, BenchConsumer, BenchProducer, Driver, DriverError, DriverResult,
    BULK_IN_FLIGHT_MAX,
};
use crate::workload::NatsPartitions;

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

/// What nats-server 2.9 promises with three replicas, for the report.
pub const DURABILITY_R3: &str = "nats-server acknowledges a publish once the stream's Raft \
     group committed it: written to the file stores of a majority of its 3 replicas (2 of 3 \
     servers), before fsync; the stores are synced in the background (sync_interval, 2 minutes \
     by default in nats-server 2.9), so an acknowledged message survives the loss of any one \
     server, but a crash of the machine can lose acknowledged messages";

/// What the report says of nats-server's election timeout: its Raft
/// layer's own, which the command line does not set.
pub const ELECTION_TIMEOUT: &str =
    "nats-server's built-in Raft election timeout (not set on its command line)";

/// How a [`NatsDriver`] reaches its servers and what it creates.
#[derive(Debug, Clone)]
pub struct NatsTarget {
    /// `nats://HOST:PORT` of every server.
    pub urls: Vec<String>,
    /// Replicas of every stream (1 or 3).
    pub replicas: u32,
    /// How partitions map onto streams.
    pub partitions: NatsPartitions,
    /// Facts about the servers to disclose.
    pub server_config: BTreeMap<String, String>,
}

/// NATS JetStream at one server or a cluster.
#[derive(Debug)]
pub struct NatsDriver {
    urls: Vec<String>,
    replicas: u32,
    partitions: NatsPartitions,
    server_config: BTreeMap<String, String>,
}

impl NatsDriver {
    /// A driver for the server at `url` (`nats://HOST:PORT`), R1 streams,
    /// a subject per partition. `server_config` is copied into every run's
    /// `config`.
    pub fn new(url: &str, server_config: BTreeMap<String, String>) -> Self {
        Self::with_target(NatsTarget {
            urls: vec![url.to_owned()],
            replicas: 1,
            partitions: NatsPartitions::Subjects,
            server_config,
        })
    }

    /// A driver for `target`.
    pub fn with_target(target: NatsTarget) -> Self {
        Self {
            urls: target.urls,
            replicas: target.replicas.max(1),
            partitions: target.partitions,
            server_config: target.server_config,
        }
    }

    async fn connect(&self) -> DriverResult<async_nats::Client> {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(self.urls.as_slice())
            .await
            .map_err(|e| DriverError::new(NAME, "connect", e))
    }

    /// The streams of `topic`: one, or one per partition.
    fn streams(&self, topic: &str, partitions: u32) -> Vec<String> {
        let name = stream_name(topic);
        match self.partitions {
            NatsPartitions::Subjects => vec![name],
            NatsPartitions::Streams => (0..partitions.max(1))
                .map(|p| format!("{name}_p{p}"))
                .collect(),
        }
    }

    /// The subject of each partition of `topic`.
    fn subjects(&self, topic: &str, partitions: u32) -> Vec<Subject> {
        let name = stream_name(topic);
        (0..partitions.max(1))
            .map(|p| match self.partitions {
                NatsPartitions::Subjects => Subject::from(format!("{name}.{p}")),
                NatsPartitions::Streams => Subject::from(format!("{name}_p{p}.0")),
            })
            .collect()
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
        format!("R{} file", self.replicas)
    }

    fn durability(&self) -> String {
        if self.replicas > 1 {
            DURABILITY_R3.to_owned()
        } else {
            DURABILITY.to_owned()
        }
    }

    fn config(&self) -> BTreeMap<String, String> {
        let mut config = self.server_config.clone();
        config.insert("storage".into(), "file".into());
        config.insert("replicas".into(), self.replicas.to_string());
        config.insert("publish".into(), "with ack (async)".into());
        config.insert(
            "client.max_ack_inflight".into(),
            ACKS_IN_FLIGHT_MAX.to_string(),
        );
        config.insert(
            "consumer".into(),
            format!("durable pull, ack none, batch {PULL_BATCH}"),
        );
        config.insert(
            "partitions".into(),
            match self.partitions {
                NatsPartitions::Subjects => "one subject per partition (one stream per topic)",
                NatsPartitions::Streams => "one stream per partition",
            }
            .into(),
        );
        config.insert("client".into(), "async-nats".into());
        config.insert(
            "client.servers".into(),
            format!(
                "{} server(s), one picked at random per connection",
                self.urls.len()
            ),
        );
        config
    }

    fn replication_factor(&self) -> u32 {
        self.replicas
    }

    fn election_timeout(&self) -> (String, f64) {
        (ELECTION_TIMEOUT.to_owned(), 0.0)
    }

    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, DriverResult<()>> {
        async move {
            let context = self.context().await?;
            let with_consumer = self.partitions == NatsPartitions::Subjects;
            let replicas = self.replicas as usize;
            let context = &context;
            futures_util::stream::iter(self.streams(topic, partitions).into_iter().map(Ok))
                .try_for_each_concurrent(BULK_IN_FLIGHT_MAX, |name| async move {
                    let subjects = if with_consumer {
                        vec![format!("{name}.*")]
                    } else {
                        vec![format!("{name}.0")]
                    };
                    let stream = context
                        .create_stream(stream::Config {
                            name: name.clone(),
                            subjects,
                            storage: stream::StorageType::File,
                            num_replicas: replicas,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| DriverError::new(NAME, "create stream", e))?;
                    if with_consumer {
                        stream
                            .create_consumer(consumer::pull::Config {
                                durable_name: Some(CONSUMER_NAME.to_owned()),
                                ack_policy: consumer::AckPolicy::None,
                                deliver_policy: consumer::DeliverPolicy::All,
                                ..Default::default()
                            })
                            .await
                            .map_err(|e| DriverError::new(NAME, "create consumer", e))?;
                    }
                    Ok(())
                })
                .await
        }
        .boxed()
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, DriverResult<()>> {
        async move {
            let context = self.context().await?;
            let context = &context;
            // The partition count is not known here: delete the topic's
            // stream, or every stream named after it.
            let names: Vec<String> = match self.partitions {
                NatsPartitions::Subjects => vec![stream_name(topic)],
                NatsPartitions::Streams => {
                    let prefix = format!("{}_p", stream_name(topic));
                    context
                        .stream_names()
                        .try_filter(|n| std::future::ready(n.starts_with(&prefix)))
                        .try_collect()
                        .await
                        .map_err(|e| DriverError::new(NAME, "list streams", e))?
                }
            };
            futures_util::stream::iter(names.into_iter().map(Ok))
                .try_for_each_concurrent(BULK_IN_FLIGHT_MAX, |name| async move {
                    context
                        .delete_stream(name)
                        .await
                        .map(|_| ())
                        .map_err(|e| DriverError::new(NAME, "delete stream", e))
                })
                .await
        }
        .boxed()
    }

    fn leaders<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
        _live: &'a [String],
    ) -> BoxFuture<'a, DriverResult<Vec<Option<String>>>> {
        async move {
            let context = self.context().await?;
            let context = &context;
            let streams = self.streams(topic, partitions);
            let leaders: Vec<Option<String>> = futures_util::stream::iter(streams)
                .map(|name| async move {
                    let mut stream = context
                        .get_stream(&name)
                        .await
                        .map_err(|e| DriverError::new(NAME, "get stream", e))?;
                    let info = stream
                        .info()
                        .await
                        .map_err(|e| DriverError::new(NAME, "stream info", e))?;
                    Ok::<_, DriverError>(info.cluster.as_ref().and_then(|c| c.leader.clone()))
                })
                .buffered(BULK_IN_FLIGHT_MAX)
                .try_collect()
                .await?;
            Ok(match self.partitions {
                NatsPartitions::Subjects => {
                    vec![leaders.into_iter().next().flatten(); partitions as usize]
                }
                NatsPartitions::Streams => leaders,
            })
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
            let subjects = self.subjects(topic, partitions);
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
            if self.partitions == NatsPartitions::Streams {
                return Err(DriverError::new(
                    NAME,
                    "create consumer",
                    "a stream per partition is for producing only (nats_partitions = \"streams\")",
                ));
            }
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

/// One connection publishing to the stream (or streams) of one topic.
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
        self.publish(index, value)
    }

    fn send_to(&mut self, partition: u32, value: Bytes) -> BoxFuture<'_, DriverResult<AckFuture>> {
        let index = partition as usize % self.subjects.len();
        self.publish(index, value)
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        async move {
            // Pending acks were awaited by the runner; flush what is left.
            let _ = self.context.client().flush().await;
        }
        .boxed()
    }
}

impl NatsProducer {
    /// Publishes `value` to the subject of partition `index`.
    fn publish(&mut self, index: usize, value: Bytes) -> BoxFuture<'_, DriverResult<AckFuture>> {
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
