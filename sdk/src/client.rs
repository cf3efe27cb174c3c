//! [`Client`]: the connections to a cluster and its cached metadata, shared
//! by the admin client, producers and consumers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use shardmq_net::{Frame, ResponseFrame};
use shardmq_schema::protocol::{BrokerStatus, ErrorCode};

use crate::codec::{self, ClusterMetadata, LeaderHint, ReplicasDescription, TopicInfo};
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
    /// The address that last answered a request any broker answers; tried
    /// first next time, so a dead bootstrap broker costs one failed
    /// connect, not one per request.
    preferred: Mutex<Option<String>>,
}

/// Whether a request sent to one broker by [`Client::request_any`] should
/// go to the next broker instead: the broker is unreachable, or refused the
/// request because it is shutting down. With `idempotent`, also when the
/// request may have been executed (timeout, connection lost after sending).
fn move_on(result: &Result<ResponseFrame>, idempotent: bool) -> bool {
    match result {
        Ok(response) => response.error_code() == ErrorCode::BrokerShuttingDown,
        Err(ClientError::Connect { .. }) => true,
        Err(
            ClientError::ConnectionLost { request_sent, .. }
            | ClientError::Timeout { request_sent, .. },
        ) => idempotent || !request_sent,
        Err(_) => false,
    }
}

/// The connections to a cluster, one per broker shard, and the metadata
/// cache that says which shard owns each partition. Cheap to clone.
///
/// Requests for a partition go to its leader's owning shard
/// ([`ClusterMetadata::leader_addr`]); other requests go to any broker:
/// the one that answered last, then the bootstrap addresses, then every
/// broker the metadata named (active ones first). A broker that cannot be
/// reached is skipped, so a client that knows several brokers keeps
/// working while one is down.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to the first reachable bootstrap address (trying each in
    /// turn) and reads the list of brokers.
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
                preferred: Mutex::new(None),
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

    /// Addresses for requests any broker answers: the one that answered
    /// last, the bootstrap list, then the brokers metadata named, active
    /// ones first.
    fn any_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = lock(&self.inner.preferred).iter().cloned().collect();
        let mut push = |addr: String| {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        };
        for addr in &self.inner.config.bootstrap {
            push(addr.clone());
        }
        let metadata = lock(&self.inner.metadata);
        let (active, failed): (Vec<_>, Vec<_>) = metadata
            .brokers
            .iter()
            .partition(|b| b.status != BrokerStatus::Failed);
        for broker in active.into_iter().chain(failed) {
            push(broker.addr());
        }
        addrs
    }

    /// Sends a request any broker answers, to the first address that takes
    /// it: an unreachable broker, a connection found broken before the
    /// request was sent and a broker answering BrokerShuttingDown move on
    /// to the next address. For requests that change something (create,
    /// delete, transfer), whose outcome is unknown after a timeout.
    pub async fn request_any(&self, build: impl Fn(u64, &str) -> Frame) -> Result<ResponseFrame> {
        self.request_any_with(build, self.inner.config.request_timeout, false)
            .await
    }

    /// [`request_any`](Self::request_any) for requests that change nothing
    /// (metadata, listings, descriptions): a timeout or a connection lost
    /// after sending moves on to the next broker too.
    pub async fn request_any_idempotent(
        &self,
        build: impl Fn(u64, &str) -> Frame,
    ) -> Result<ResponseFrame> {
        self.request_any_with(build, self.inner.config.request_timeout, true)
            .await
    }

    /// [`request_any`](Self::request_any) with its own timeout per broker
    /// tried.
    pub async fn request_any_with(
        &self,
        build: impl Fn(u64, &str) -> Frame,
        timeout: Duration,
        idempotent: bool,
    ) -> Result<ResponseFrame> {
        let mut last = None;
        for addr in self.any_addrs() {
            let result = match self.connection(&addr).await {
                Ok(conn) => conn.request_with_timeout(&build, timeout).await,
                Err(error) => Err(error),
            };
            if move_on(&result, idempotent) {
                tracing::debug!(%addr, "broker unavailable, trying the next one");
                last = Some(result);
                continue;
            }
            if result.is_ok() {
                *lock(&self.inner.preferred) = Some(addr);
            }
            return result;
        }
        match last {
            Some(result) => result,
            None => Err(ClientError::InvalidArgument("no broker address".to_owned())),
        }
    }

    /// Asks for the metadata of `topics` (every topic with `None`, only the
    /// brokers with an empty list) and updates the cache with it.
    pub async fn metadata(&self, topics: Option<&[&str]>) -> Result<ClusterMetadata> {
        let response = self
            .request_any_idempotent(|id, client_id| codec::encode_metadata(id, client_id, topics))
            .await?;
        let metadata = codec::decode_metadata(&response)?;
        let mut cache = lock(&self.inner.metadata);
        cache.brokers.clone_from(&metadata.brokers);
        cache.controller_id = metadata.controller_id;
        cache.cluster_id.clone_from(&metadata.cluster_id);
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

    /// `host:port` of the replica of the partition that `node_id` holds
    /// ([`ClusterMetadata::replica_addr`]), from the cache (filled first if
    /// the topic is not in it).
    pub async fn replica_addr(&self, topic: &str, partition: i32, node_id: i32) -> Result<String> {
        {
            let metadata = lock(&self.inner.metadata);
            if metadata.topic(topic).is_some() {
                return metadata.replica_addr(topic, partition, node_id);
            }
        }
        self.topic(topic).await?;
        lock(&self.inner.metadata).replica_addr(topic, partition, node_id)
    }

    /// `host:port` of the first shard of the broker `node_id`; the brokers
    /// are asked for again when it is not cached. An error
    /// ([`ClientError::InvalidArgument`]) if no broker has that id.
    pub async fn broker_addr(&self, node_id: i32) -> Result<String> {
        if let Some(broker) = lock(&self.inner.metadata).broker(node_id) {
            return Ok(broker.addr());
        }
        self.metadata(Some(&[])).await?;
        lock(&self.inner.metadata)
            .broker(node_id)
            .map(|b| b.addr())
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!("no broker with node id {node_id}"))
            })
    }

    /// The state of the replicas the broker `node_id` holds, of `topics`
    /// (every topic with `None`), as that broker reports it
    /// (DescribeReplicas, sent to its first shard).
    pub async fn describe_replicas(
        &self,
        node_id: i32,
        topics: Option<&[&str]>,
    ) -> Result<ReplicasDescription> {
        let addr = self.broker_addr(node_id).await?;
        let conn = self.connection(&addr).await?;
        let response = conn
            .request(|id, client_id| codec::encode_describe_replicas(id, client_id, topics))
            .await?;
        codec::decode_describe_replicas(&response)
    }

    /// Records a [`LeaderHint`] in the cached metadata
    /// ([`ClusterMetadata::apply_leader_hint`]); true if the cache changed,
    /// so a request sent again goes to the hinted leader.
    pub fn apply_leader_hint(&self, topic: &str, partition: i32, hint: &LeaderHint) -> bool {
        lock(&self.inner.metadata).apply_leader_hint(topic, partition, hint)
    }

    /// A copy of the cached metadata: the brokers and the topics asked
    /// about so far.
    pub fn cached_metadata(&self) -> ClusterMetadata {
        lock(&self.inner.metadata).clone()
    }
}
