//! [`Admin`]: topics and cluster metadata.

use shardmq_schema::protocol::ErrorCode;

use crate::client::Client;
use crate::codec::{self, ClusterMetadata, NewTopicSpec, TopicInfo, TopicListing, TopicResult};
use crate::config::ClientConfig;
use crate::error::{ClientError, Result};

/// Creates, deletes and describes topics.
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

    /// Creates a topic; the broker waits up to the request timeout for it
    /// to exist on its replicas. TopicAlreadyExists, InvalidPartitions, ...
    /// come back as [`ClientError::Broker`].
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
        let response = self
            .client
            .request_any(|id, client_id| codec::encode_create_topics(id, client_id, &spec, timeout))
            .await?;
        one_result(codec::decode_create_topics(&response)?, name)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let timeout = timeout_ms(&self.client);
        let response = self
            .client
            .request_any(|id, client_id| {
                codec::encode_delete_topics(id, client_id, &[name], timeout)
            })
            .await?;
        one_result(codec::decode_delete_topics(&response)?, name)
    }

    /// Every topic, sorted by name, with partition count and replication.
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>> {
        let response = self.client.request_any(codec::encode_list_topics).await?;
        codec::decode_list_topics(&response)
    }

    /// The partitions of a topic, their leaders and owning shards.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        self.client.refresh_topic(name).await
    }

    /// Brokers and every topic with its partitions, leaders, shards and
    /// shard ports.
    pub async fn metadata(&self) -> Result<ClusterMetadata> {
        self.client.metadata(None).await
    }
}
