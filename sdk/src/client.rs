//! [`Client`]: the connections to a cluster and its cached metadata, shared
//! by the admin client, producers and consumers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use shardmq_net::{Frame, ResponseFrame};
use shardmq_schema::protocol::ErrorCode;

use crate::codec::{self, ClusterMetadata, TopicInfo};
use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::error::{ClientError, Result};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    /// One connection per `host:port` (broker shard); a closed one is
    /// replaced on next use.
    pool: Mutex<HashMap<String, Connection>>,
    /// Brokers and the topics asked about so far.
    metadata: Mutex<ClusterMetadata>,
}

/// The connections to a cluster, one per broker shard, and the metadata
/// cache that says which shard owns each partition. Cheap to clone.
///
/// Requests for a partition go to its leader's owning shard
/// ([`ClusterMetadata::leader_addr`]); other requests go to any broker,
/// the bootstrap addresses first.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to the first reachable bootstrap address and reads the
    /// list of brokers.
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        if config.bootstrap.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no bootstrap address".to_owned(),
            ));
        }
        let client = Self {
            inner: Arc::new(Inner {
                config,
                pool: Mutex::new(HashMap::new()),
                metadata: Mutex::new(ClusterMetadata::default()),
            }),
        };
        client.metadata(Some(&[])).await?;
        Ok(client)
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The connection to `addr`, opened if there is none or the last one
    /// broke.
    pub async fn connection(&self, addr: &str) -> Result<Connection> {
        if let Some(conn) = lock(&self.inner.pool).get(addr) {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
        }
        let conn = Connection::connect(addr, &self.inner.config).await?;
        let mut pool = lock(&self.inner.pool);
        // Another caller may have connected meanwhile: keep one.
        match pool.get(addr) {
            Some(existing) if !existing.is_closed() => Ok(existing.clone()),
            _ => {
                pool.insert(addr.to_owned(), conn.clone());
                Ok(conn)
            }
        }
    }

    /// Addresses for requests any broker answers: the bootstrap list, then
    /// the brokers metadata named.
    fn any_addrs(&self) -> Vec<String> {
        let mut addrs = self.inner.config.bootstrap.clone();
        for broker in &lock(&self.inner.metadata).brokers {
            let addr = format!("{}:{}", broker.host, broker.port);
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        addrs
    }

    /// Sends a request any broker answers, to the first address that
    /// takes a connection; a failed connect moves on to the next address.
    pub async fn request_any(&self, build: impl Fn(u64, &str) -> Frame) -> Result<ResponseFrame> {
        let mut last = None;
        for addr in self.any_addrs() {
            match self.connection(&addr).await {
                Ok(conn) => match conn.request(&build).await {
                    Err(error @ ClientError::ConnectionLost { .. }) => last = Some(error),
                    result => return result,
                },
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::InvalidArgument("no broker address".to_owned())))
    }

    /// Asks for the metadata of `topics` (every topic with `None`, only the
    /// brokers with an empty list) and updates the cache with it.
    pub async fn metadata(&self, topics: Option<&[&str]>) -> Result<ClusterMetadata> {
        let response = self
            .request_any(|id, client_id| codec::encode_metadata(id, client_id, topics))
            .await?;
        let metadata = codec::decode_metadata(&response)?;
        let mut cache = lock(&self.inner.metadata);
        cache.brokers.clone_from(&metadata.brokers);
        for topic in &metadata.topics {
            cache.topics.retain(|t| t.name != topic.name);
            if topic.error == ErrorCode::None {
                cache.topics.push(topic.clone());
            }
        }
        if topics.is_none() {
            // Every topic was listed: forget the ones that are gone.
            cache
                .topics
                .retain(|t| metadata.topics.iter().any(|m| m.name == t.name));
        }
        Ok(metadata)
    }

    /// The cached metadata of `topic`, asked for if not cached. An error if
    /// the topic does not exist.
    pub async fn topic(&self, topic: &str) -> Result<TopicInfo> {
        if let Some(info) = lock(&self.inner.metadata).topic(topic) {
            return Ok(info.clone());
        }
        self.refresh_topic(topic).await
    }

    /// The partition count of `topic` if its metadata is cached; never
    /// asks the broker.
    pub fn cached_partition_count(&self, topic: &str) -> Option<usize> {
        lock(&self.inner.metadata)
            .topic(topic)
            .map(|info| info.partitions.len())
    }

    /// Asks for the metadata of `topic` again, replacing the cached one.
    pub async fn refresh_topic(&self, topic: &str) -> Result<TopicInfo> {
        let metadata = self.metadata(Some(&[topic])).await?;
        let info = metadata
            .topic(topic)
            .ok_or_else(|| ClientError::broker(ErrorCode::UnknownTopic, Some(topic)))?;
        if info.error != ErrorCode::None {
            return Err(ClientError::broker(info.error, Some(topic)));
        }
        Ok(info.clone())
    }

    /// `host:port` of the shard owning the partition, from the cache
    /// (filled first if the topic is not in it).
    pub async fn leader_addr(&self, topic: &str, partition: i32) -> Result<String> {
        {
            // Cached: no copy of the topic's metadata.
            let metadata = lock(&self.inner.metadata);
            if metadata.topic(topic).is_some() {
                return metadata.leader_addr(topic, partition);
            }
        }
        self.topic(topic).await?;
        lock(&self.inner.metadata).leader_addr(topic, partition)
    }

    /// The connection to the shard owning the partition.
    pub async fn leader_connection(&self, topic: &str, partition: i32) -> Result<Connection> {
        let addr = self.leader_addr(topic, partition).await?;
        self.connection(&addr).await
    }
}
