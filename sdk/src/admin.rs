//! [`Admin`]: topics, the cluster and its replicas, leader transfers.
//!
//! Topic creation and deletion and leader transfers go through the
//! controller. While the controller group has no leader (a cluster
//! starting, an election) brokers answer LeaderNotAvailable; these calls
//! retry it with a backoff for up to `ClientConfig::controller_wait`.

use std::time::Duration;

use shardmq_schema::protocol::ErrorCode;
use tokio::time::Instant;

use crate::client::Client;
use crate::codec::{
    self, ClusterDescription, ClusterMetadata, NewTopicSpec, ReplicasDescription, TopicInfo,
    TopicListing, TopicResult,
};
use crate::config::ClientConfig;
use crate::error::{ClientError, Result};

/// First wait before a request refused with LeaderNotAvailable is sent
/// again; doubled for each further one, up to [`CONTROLLER_BACKOFF_MAX`].
const CONTROLLER_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two such attempts.
const CONTROLLER_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Creates, deletes and describes topics; describes the cluster and its
/// replicas; moves partition leadership.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

fn timeout_ms(client: &Client) -> u32 {
    u32::try_from(client.config().request_timeout.as_millis()).unwrap_or(u32::MAX)
}

fn one_result(results: Vec<TopicResult>, name: &str) -> Result<()> {
    let result = results
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ClientError::protocol(format!("no result for topic {name}")))?;
    if result.error == ErrorCode::None {
        Ok(())
    } else {
        Err(ClientError::Broker {
            code: result.error,
            message: result.message,
        })
    }
}

impl Admin {
    /// Connects a new [`Client`].
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        Ok(Self::new(Client::connect(config).await?))
    }

    /// An admin client over an existing [`Client`].
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `attempt` until it does not fail with LeaderNotAvailable (no
    /// controller leader yet), waiting a backoff between attempts, for at
    /// most `controller_wait`; then its last result.
    async fn through_controller<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.client.config().controller_wait;
        let mut backoff = CONTROLLER_BACKOFF;
        loop {
            match attempt().await {
                Err(error) if error.code() == Some(ErrorCode::LeaderNotAvailable) => {
                    if Instant::now() + backoff > deadline {
                        return Err(error);
                    }
                    tracing::debug!(%error, "no controller leader yet, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(CONTROLLER_BACKOFF_MAX);
                }
                result => return result,
            }
        }
    }

    /// Creates a topic; the broker waits up to the request timeout for it
    /// to exist on its replicas. TopicAlreadyExists, InvalidPartitions, ...
    /// come back as [`ClientError::Broker`]; LeaderNotAvailable is retried
    /// for up to `controller_wait`.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> Result<()> {
        let timeout = timeout_ms(&self.client);
        let spec = [NewTopicSpec {
            name,
            partitions,
            replication_factor,
        }];
        self.through_controller(|| async {
            let response = self
                .client
                .request_any(|id, client_id| {
                    codec::encode_create_topics(id, client_id, &spec, timeout)
                })
                .await?;
            one_result(codec::decode_create_topics(&response)?, name)
        })
        .await
    }

    /// Deletes a topic and its data; LeaderNotAvailable is retried for up
    /// to `controller_wait`.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let timeout = timeout_ms(&self.client);
        self.through_controller(|| async {
            let response = self
                .client
                .request_any(|id, client_id| {
                    codec::encode_delete_topics(id, client_id, &[name], timeout)
                })
                .await?;
            one_result(codec::decode_delete_topics(&response)?, name)
        })
        .await
    }

    /// Every topic, sorted by name, with partition count and replication.
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>> {
        let response = self
            .client
            .request_any_idempotent(codec::encode_list_topics)
            .await?;
        codec::decode_list_topics(&response)
    }

    /// The partitions of a topic, their leaders, replicas and owning
    /// shards.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        self.client.refresh_topic(name).await
    }

    /// Brokers and every topic with its partitions, leaders, shards and
    /// shard ports.
    pub async fn metadata(&self) -> Result<ClusterMetadata> {
        self.client.metadata(None).await
    }

    /// The cluster's brokers (status, addresses, incarnation, controller
    /// role), its controller leader and term, and the metadata version, as
    /// the broker asked knows them.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription> {
        let response = self
            .client
            .request_any_idempotent(codec::encode_describe_cluster)
            .await?;
        codec::decode_describe_cluster(&response)
    }

    /// The replicas the broker `node_id` holds, of `topics` (every topic
    /// with `None`), with their Raft role, term, log indexes, commit index
    /// and offsets as that broker sees them. Sent to that broker: ask each
    /// to see every replica.
    pub async fn describe_replicas(
        &self,
        node_id: i32,
        topics: Option<&[&str]>,
    ) -> Result<ReplicasDescription> {
        self.client.describe_replicas(node_id, topics).await
    }

    /// Moves the leadership of a partition to the replica on `to_node_id`
    /// and waits up to `timeout` for it to lead (a zero timeout returns
    /// once the controller accepted the move). Returns the partition's
    /// leader when the broker answered: `to_node_id` once the move is done.
    /// InvalidBroker (the node holds no replica of the partition or is not
    /// a broker), RequestTimedOut (no new leader within the timeout) and
    /// the like come back as [`ClientError::Broker`]; LeaderNotAvailable is
    /// retried for up to `controller_wait`. The cached metadata of the
    /// topic is refreshed afterwards.
    pub async fn transfer_leader(
        &self,
        topic: &str,
        partition: i32,
        to_node_id: i32,
        timeout: Duration,
    ) -> Result<i32> {
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let request_timeout = self.client.config().request_timeout + timeout;
        let leader = self
            .through_controller(|| async {
                let response = self
                    .client
                    .request_any_with(
                        |id, client_id| {
                            codec::encode_transfer_leader(
                                id, client_id, topic, partition, to_node_id, timeout_ms,
                            )
                        },
                        request_timeout,
                        false,
                    )
                    .await?;
                let result = codec::decode_transfer_leader(&response)?;
                if result.error != ErrorCode::None {
                    return Err(ClientError::Broker {
                        code: result.error,
                        message: result.message,
                    });
                }
                Ok(result.leader_node_id)
            })
            .await?;
        // The leader changed: later requests should find it.
        let _ = self.client.refresh_topic(topic).await;
        Ok(leader)
    }
}
