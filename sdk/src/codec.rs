//! The sans-IO half of the SDK: request frames built from plain values,
//! and verified response frames read into owned values. No socket and no
//! runtime here; [`crate::Connection`] moves the frames.
//!
//! Every `encode_*` function takes the correlation id and client id of the
//! header and returns one whole frame, length prefix included. Every
//! `decode_*` function takes a [`ResponseFrame`] (already verified), checks
//! that it answers the expected api, turns the response's own
//! `error_code` into [`ClientError::Broker`], and returns the body's items
//! with their per-item error codes for the caller to judge.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use shardmq_net::{Frame, ResponseFrame};
use shardmq_schema::protocol::{
    self as wire, Api, BrokerStatus, ErrorCode, OffsetSpec, ReplicaRole, Request, RequestArgs,
    RequestBody, RequestHeader, RequestHeaderArgs, Response,
};

use crate::config::Acks;
use crate::error::{ClientError, Result};

/// Version of every api this SDK speaks.
pub const API_VERSION: u16 = 0;

/// `host:port` of `host` and `port`.
fn host_port(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// A broker of the cluster, as Metadata reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Node id, unique in the cluster.
    pub node_id: i32,
    /// Host name or address clients connect to.
    pub host: String,
    /// Port of the broker's first shard.
    pub port: u16,
    /// Whether the controller considers the broker alive. A broker that
    /// does not report it reads as [`BrokerStatus::Active`].
    pub status: BrokerStatus,
    /// The client port of each of the broker's shards, by shard index;
    /// empty when the broker does not say.
    pub shard_ports: Vec<u16>,
}

impl BrokerInfo {
    /// A broker with no shard ports known, reported active.
    pub fn new(node_id: i32, host: impl Into<String>, port: u16) -> Self {
        Self {
            node_id,
            host: host.into(),
            port,
            status: BrokerStatus::Active,
            shard_ports: Vec::new(),
        }
    }

    /// `host:port` of the broker's first shard.
    pub fn addr(&self) -> String {
        host_port(&self.host, self.port)
    }

    /// `host:port` of one of the broker's shards: its port from
    /// `shard_ports`, or the broker's port when that is unknown or 0.
    pub fn shard_addr(&self, shard: u16) -> String {
        let port = self
            .shard_ports
            .get(usize::from(shard))
            .copied()
            .filter(|&port| port != 0)
            .unwrap_or(self.port);
        host_port(&self.host, port)
    }
}

/// One replica of a partition: the broker and the shard that hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Node id of the broker.
    pub node_id: i32,
    /// Shard (core) of that broker that owns the replica.
    pub shard: u16,
    /// Client port of that shard; 0 when unknown (use the broker's port).
    pub shard_port: u16,
}

/// One partition of a topic and who leads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: i32,
    /// Error for this partition (LeaderNotAvailable, ...); `None` if fine.
    pub error: ErrorCode,
    /// Node id of the leader, -1 without one.
    pub leader_node_id: i32,
    /// Shard (core) of the leader that owns the partition.
    pub leader_shard: u16,
    /// Port of that shard; 0 if the broker did not say (use the broker's
    /// port then).
    pub shard_port: u16,
    /// Every replica (the Raft group's voters), the leader included; the
    /// first is the preferred leader. From a broker that lists only the
    /// replicas' node ids, the leader's replica has the leader's shard and
    /// port and the others shard 0 and port 0.
    pub replicas: Vec<ReplicaInfo>,
    /// Leader epoch (Raft term) of the current leadership.
    pub leader_epoch: i64,
}

impl PartitionInfo {
    /// The node id of the preferred leader: the first replica.
    pub fn preferred_leader(&self) -> Option<i32> {
        self.replicas.first().map(|r| r.node_id)
    }

    /// The replica held by `node_id`, if that broker holds one.
    pub fn replica(&self, node_id: i32) -> Option<&ReplicaInfo> {
        self.replicas.iter().find(|r| r.node_id == node_id)
    }

    /// The node ids of the replicas, in order.
    pub fn replica_node_ids(&self) -> Vec<i32> {
        self.replicas.iter().map(|r| r.node_id).collect()
    }

    /// Whether the partition has a leader now.
    pub fn has_leader(&self) -> bool {
        self.leader_node_id >= 0
    }
}

/// One topic and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Error for this topic (UnknownTopic, ...); `None` if fine.
    pub error: ErrorCode,
    /// Partitions in index order.
    pub partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    /// The partition of that index.
    pub fn partition(&self, partition: i32) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.partition == partition)
    }
}

/// A Metadata response: brokers and topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// Every registered broker, failed ones included (see
    /// [`BrokerInfo::status`]).
    pub brokers: Vec<BrokerInfo>,
    /// The topics asked for.
    pub topics: Vec<TopicInfo>,
    /// Node id of the controller's leader, -1 when none is known.
    pub controller_id: i32,
    /// The cluster's id; empty when the broker does not say.
    pub cluster_id: String,
}

impl Default for ClusterMetadata {
    fn default() -> Self {
        Self {
            brokers: Vec::new(),
            topics: Vec::new(),
            controller_id: -1,
            cluster_id: String::new(),
        }
    }
}

impl ClusterMetadata {
    /// The topic of that name, if it was in the response.
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.iter().find(|topic| topic.name == name)
    }

    /// The broker with that node id.
    pub fn broker(&self, node_id: i32) -> Option<&BrokerInfo> {
        self.brokers.iter().find(|broker| broker.node_id == node_id)
    }

    /// The partition, checked: an error if the topic or the partition is
    /// unknown or carries an error code.
    pub fn partition(&self, topic: &str, partition: i32) -> Result<&PartitionInfo> {
        let info = self
            .topic(topic)
            .ok_or_else(|| ClientError::broker(ErrorCode::UnknownTopic, Some(topic)))?;
        if info.error != ErrorCode::None {
            return Err(ClientError::broker(info.error, Some(topic)));
        }
        let part = info.partition(partition).ok_or_else(|| {
            ClientError::broker(
                ErrorCode::UnknownPartition,
                Some(&format!("{topic}/{partition}")),
            )
        })?;
        if part.error != ErrorCode::None {
            return Err(ClientError::broker(part.error, None));
        }
        Ok(part)
    }

    /// `host:port` where requests for the partition go: the leader's host
    /// and the owning shard's port, or the leader's broker port when the
    /// shard port is 0. An error if the partition is unknown or has no
    /// leader now (LeaderNotAvailable, retriable).
    pub fn leader_addr(&self, topic: &str, partition: i32) -> Result<String> {
        let part = self.partition(topic, partition)?;
        let broker = self.broker(part.leader_node_id).ok_or_else(|| {
            ClientError::broker(
                ErrorCode::LeaderNotAvailable,
                Some(&format!("{topic}/{partition} has no known leader")),
            )
        })?;
        let port = if part.shard_port != 0 {
            part.shard_port
        } else {
            broker.port
        };
        Ok(host_port(&broker.host, port))
    }

    /// `host:port` of the replica of the partition that `node_id` holds:
    /// that broker's host and the replica's shard port, or the broker's
    /// port when that is 0. An error ([`ClientError::InvalidArgument`]) if
    /// the node holds no replica of the partition or is not a broker of the
    /// cluster.
    pub fn replica_addr(&self, topic: &str, partition: i32, node_id: i32) -> Result<String> {
        let part = self.partition(topic, partition)?;
        let replica = part.replica(node_id).ok_or_else(|| {
            ClientError::InvalidArgument(format!(
                "node {node_id} holds no replica of {topic}/{partition}"
            ))
        })?;
        let broker = self.broker(node_id).ok_or_else(|| {
            ClientError::InvalidArgument(format!("node {node_id} is not a broker of the cluster"))
        })?;
        let port = if replica.shard_port != 0 {
            replica.shard_port
        } else {
            broker.port
        };
        Ok(host_port(&broker.host, port))
    }

    /// Records what a [`LeaderHint`] says about the partition's leader,
    /// unless the cache knows a newer leadership (a higher epoch). Adds the
    /// hinted broker when it is not known yet. Returns whether the cache
    /// changed.
    pub fn apply_leader_hint(&mut self, topic: &str, partition: i32, hint: &LeaderHint) -> bool {
        let Some(part) = self
            .topics
            .iter_mut()
            .find(|t| t.name == topic)
            .and_then(|t| t.partitions.iter_mut().find(|p| p.partition == partition))
        else {
            return false;
        };
        if hint.node_id < 0 || hint.leader_epoch < part.leader_epoch {
            return false;
        }
        let changed = part.leader_node_id != hint.node_id
            || part.leader_shard != hint.shard
            || part.shard_port != hint.shard_port
            || part.leader_epoch != hint.leader_epoch
            || part.error != ErrorCode::None;
        part.leader_node_id = hint.node_id;
        part.leader_shard = hint.shard;
        part.shard_port = hint.shard_port;
        part.leader_epoch = hint.leader_epoch;
        part.error = ErrorCode::None;
        if !self.brokers.iter().any(|b| b.node_id == hint.node_id) {
            // Known only from the hint: its shard 0 port is unknown, and
            // the shard port stands in until the next metadata refresh.
            self.brokers.push(BrokerInfo::new(
                hint.node_id,
                hint.host.clone(),
                hint.shard_port,
            ));
        }
        changed
    }
}

/// Where a partition's leader is, as a broker that does not lead it says
/// with NotLeader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// Node id of the leader.
    pub node_id: i32,
    /// Host of that broker.
    pub host: String,
    /// Shard (core) of that broker that owns the partition.
    pub shard: u16,
    /// Client port of that shard.
    pub shard_port: u16,
    /// Leader epoch (Raft term) of that leadership.
    pub leader_epoch: i64,
}

impl LeaderHint {
    /// `host:port` of the hinted leader's shard (the shard port, which a
    /// hint always carries).
    pub fn addr(&self) -> String {
        host_port(&self.host, self.shard_port)
    }

    fn read(hint: Option<wire::LeaderHint<'_>>) -> Option<Self> {
        let hint = hint?;
        Some(Self {
            node_id: hint.node_id(),
            host: hint.host()?.to_owned(),
            shard: hint.shard(),
            shard_port: hint.shard_port(),
            leader_epoch: hint.leader_epoch(),
        })
        // A hint without a host or a port cannot be followed.
        .filter(|h| !h.host.is_empty() && h.shard_port != 0)
    }
}

/// One topic of a ListTopics response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicListing {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
    /// Replicas per partition.
    pub replication_factor: i16,
}

/// The outcome of one item (topic) of CreateTopics or DeleteTopics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicResult {
    /// Topic name.
    pub name: String,
    /// `None` on success.
    pub error: ErrorCode,
    /// The broker's detail.
    pub message: Option<String>,
}

/// One record batch to produce.
#[derive(Debug, Clone, Copy)]
pub struct ProduceItem<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition index.
    pub partition: i32,
    /// One whole Kafka RecordBatch v2.
    pub records: &'a [u8],
}

/// The outcome of one item of a Produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResult {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// `None` on success.
    pub error: ErrorCode,
    /// The broker's detail.
    pub message: Option<String>,
    /// Offset of the batch's first record; -1 on error.
    pub base_offset: i64,
    /// Append time with log-append-time topics, else -1.
    pub log_append_time_ms: i64,
    /// With NotLeader: where the leader is, if the broker knows.
    pub leader_hint: Option<LeaderHint>,
}

/// Where to read in one partition.
#[derive(Debug, Clone, Copy)]
pub struct FetchItem<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition index.
    pub partition: i32,
    /// First offset wanted.
    pub offset: i64,
    /// Most bytes for this partition (0: the broker's default).
    pub max_bytes: u32,
}

/// The answer for one partition of a Fetch request.
#[derive(Debug, Clone)]
pub struct FetchResult {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// `None` on success.
    pub error: ErrorCode,
    /// The broker's detail.
    pub message: Option<String>,
    /// Offset after the last committed record.
    pub high_watermark: i64,
    /// First offset still stored.
    pub log_start_offset: i64,
    /// Whole record batches, concatenated; shares the response's memory.
    pub records: Bytes,
    /// With NotLeader: where the leader is, if the broker knows.
    pub leader_hint: Option<LeaderHint>,
}

/// What to look up in one partition with ListOffsets.
#[derive(Debug, Clone, Copy)]
pub struct ListOffsetsItem<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition index.
    pub partition: i32,
    /// Earliest, Latest or Timestamp.
    pub spec: OffsetSpec,
    /// With Timestamp: the timestamp to look up, ms since the epoch.
    pub timestamp_ms: i64,
}

/// The answer for one partition of ListOffsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsResult {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// `None` on success.
    pub error: ErrorCode,
    /// The broker's detail.
    pub message: Option<String>,
    /// The offset found; -1 if no record is at or after the timestamp.
    pub offset: i64,
    /// With Timestamp: the found record's timestamp; else -1.
    pub timestamp_ms: i64,
    /// With NotLeader: where the leader is, if the broker knows.
    pub leader_hint: Option<LeaderHint>,
}

/// One broker as the controller records it (DescribeCluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDescription {
    /// Node id.
    pub node_id: i32,
    /// Host clients connect to.
    pub host: String,
    /// Client port of shard 0.
    pub port: u16,
    /// Client port of each shard, by shard index.
    pub shard_ports: Vec<u16>,
    /// Inter-broker address, `HOST:PORT` of shard 0.
    pub inter_broker_address: String,
    /// Active or Failed.
    pub status: BrokerStatus,
    /// Identifies the broker's data directory.
    pub incarnation: u64,
    /// Whether the broker votes in the controller group (else it is a
    /// learner there).
    pub controller_voter: bool,
}

impl BrokerDescription {
    /// `host:port` of the broker's first shard.
    pub fn addr(&self) -> String {
        host_port(&self.host, self.port)
    }
}

/// The cluster's brokers and its controller (DescribeCluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    /// The cluster's id.
    pub cluster_id: String,
    /// Node id of the controller's leader, -1 when none is known.
    pub controller_id: i32,
    /// The controller group's term, as the answering broker knows it.
    pub controller_term: u64,
    /// Version of the cluster metadata the answering broker applied.
    pub metadata_version: u64,
    /// Every registered broker, by node id.
    pub brokers: Vec<BrokerDescription>,
    /// The node id of the broker that answered.
    pub answered_by: i32,
}

/// The state of one replica, as the broker holding it reports it
/// (DescribeReplicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Shard of the broker that holds it.
    pub shard: u16,
    /// Its Raft role.
    pub role: ReplicaRole,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of, -1 for none.
    pub leader_node_id: i32,
    /// First index of its Raft log.
    pub first_index: u64,
    /// Last index of its Raft log.
    pub last_index: u64,
    /// Its commit index.
    pub commit_index: u64,
    /// Offset after the last record it may serve (its high watermark).
    pub high_watermark: i64,
    /// First offset it still stores.
    pub log_start_offset: i64,
    /// Offset after the last record it stores, committed or not.
    pub log_end_offset: i64,
}

/// The replicas one broker holds (DescribeReplicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicasDescription {
    /// The broker that answered.
    pub node_id: i32,
    /// Its replicas of the asked topics.
    pub replicas: Vec<ReplicaState>,
}

impl ReplicasDescription {
    /// The replica of that partition, if the broker holds one.
    pub fn replica(&self, topic: &str, partition: i32) -> Option<&ReplicaState> {
        self.replicas
            .iter()
            .find(|r| r.topic == topic && r.partition == partition)
    }
}

/// The outcome of a TransferLeader request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferLeaderResult {
    /// `None` once the move is done (or accepted, with a timeout of 0).
    pub error: ErrorCode,
    /// The broker's detail.
    pub message: Option<String>,
    /// The partition's leader when the broker answered, -1 for none.
    pub leader_node_id: i32,
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

fn finish(
    mut builder: FlatBufferBuilder<'_>,
    correlation_id: u64,
    client_id: &str,
    api: Api,
    body_type: RequestBody,
    body: WIPOffset<UnionWIPOffset>,
) -> Frame {
    let client_id = builder.create_string(client_id);
    let header = RequestHeader::create(
        &mut builder,
        &RequestHeaderArgs {
            correlation_id,
            api,
            version: API_VERSION,
            client_id: Some(client_id),
        },
    );
    let root: WIPOffset<Request<'_>> = Request::create(
        &mut builder,
        &RequestArgs {
            header: Some(header),
            body_type,
            body: Some(body),
        },
    );
    wire::finish_request_frame(&mut builder, root);
    // Cannot fail: the builder was just finished size-prefixed.
    Frame::from_builder(builder).expect("a finished size-prefixed builder is one frame")
}

/// Metadata of `topics`, or of every topic when `None`.
pub fn encode_metadata(correlation_id: u64, client_id: &str, topics: Option<&[&str]>) -> Frame {
    let mut b = FlatBufferBuilder::with_capacity(256);
    let topics = topics.map(|names| {
        let names: Vec<_> = names.iter().map(|n| b.create_string(n)).collect();
        b.create_vector(&names)
    });
    let body = wire::MetadataRequest::create(&mut b, &wire::MetadataRequestArgs { topics });
    finish(
        b,
        correlation_id,
        client_id,
        Api::Metadata,
        RequestBody::MetadataRequest,
        body.as_union_value(),
    )
}

/// A topic to create.
#[derive(Debug, Clone, Copy)]
pub struct NewTopicSpec<'a> {
    /// Topic name.
    pub name: &'a str,
    /// Partitions; -1 for the broker's default.
    pub partitions: i32,
    /// Replicas per partition; -1 for the broker's default.
    pub replication_factor: i16,
}

/// CreateTopics of `topics`, waiting up to `timeout_ms` on the broker.
pub fn encode_create_topics(
    correlation_id: u64,
    client_id: &str,
    topics: &[NewTopicSpec<'_>],
    timeout_ms: u32,
) -> Frame {
    let mut b = FlatBufferBuilder::with_capacity(256);
    let items: Vec<_> = topics
        .iter()
        .map(|t| {
            let name = b.create_string(t.name);
            wire::NewTopic::create(
                &mut b,
                &wire::NewTopicArgs {
                    name: Some(name),
                    partitions: t.partitions,
                    replication_factor: t.replication_factor,
                    configs: None,
                },
            )
        })
        .collect();
    let items = b.create_vector(&items);
    let body = wire::CreateTopicsRequest::create(
        &mut b,
        &wire::CreateTopicsRequestArgs {
            topics: Some(items),
            timeout_ms,
            validate_only: false,
        },
    );
    finish(
        b,
        correlation_id,
        client_id,
        Api::CreateTopics,
        RequestBody::CreateTopicsRequest,
        body.as_union_value(),
    )
}

/// DeleteTopics of `names`.
pub fn encode_delete_topics(
    correlation_id: u64,
    client_id: &str,
    names: &[&str],
    timeout_ms: u32,
) -> Frame {
    let mut b = FlatBufferBuilder::with_capacity(128);
    let names: Vec<_> = names.iter().map(|n| b.create_string(n)).collect();
    let names = b.create_vector(&names);
    let body = wire::DeleteTopicsRequest::create(
        &mut b,
        &wire::DeleteTopicsRequestArgs {
            names: Some(names),
            timeout_ms,
        },
    );
    finish(
        b,
        correlation_id,
        client_id,
        Api::DeleteTopics,
        RequestBody::DeleteTopicsRequest,
        body.as_union_value(),
    )
}

/// ListTopics.
pub fn encode_list_topics(correlation_id: u64, client_id: &str) -> Frame {
    let mut b = FlatBufferBuilder::with_capacity(64);
    let body = wire::ListTopicsRequest::create(&mut b, &wire::ListTopicsRequestArgs {});
    finish(
        b,
        correlation_id,
        client_id,
        Api::ListTopics,
        RequestBody::ListTopicsRequest,
        body.as_union_value(),
    )
}

fn wire_acks(acks: Acks) -> wire::Acks {
    match acks {
        Acks::None => wire::Acks::None,
        Acks::Leader => wire::Acks::Leader,
        Acks::All => wire::Acks::All,
    }
}

/// Produce of one batch per item.
pub fn encode_produce(
    correlation_id: u64,
    client_id: &str,
    acks: Acks,
    timeout_ms: u32,
    items: &[ProduceItem<'_>],
) -> Frame {
    let bytes: usize = items.iter().map(|i| i.records.len() + 64).sum();
    let mut b = FlatBufferBuilder::with_capacity(bytes + 128);
    let parts: Vec<_> = items
        .iter()
        .map(|item| {
            let records = b.create_vector(item.records);
            let topic = b.create_shared_string(item.topic);
            wire::ProducePartition::create(
                &mut b,
                &wire::ProducePartitionArgs {
                    topic: Some(topic),
                    partition: item.partition,
                    records: Some(records),
                },
            )
        })
        .collect();
    let parts = b.create_vector(&parts);
    let body = wire::ProduceRequest::create(
        &mut b,
        &wire::ProduceRequestArgs {
            acks: wire_acks(acks),
            timeout_ms,
            partitions: Some(parts),
        },
    );
    finish(
        b,
        correlation_id,
        client_id,
        Api::Produce,
        RequestBody::ProduceRequest,
        body.as_union_value(),
    )
}

/// Fetch of the items, waiting up to `max_wait_ms` for `min_bytes`. With
/// `allow_follower` the broker asked serves from its replica even when it
/// is a follower, up to the commit index it knows; without, only a leader
/// answers.
pub fn encode_fetch(
    correlation_id: u64,
    client_id: &str,
    max_wait_ms: u32,
    min_bytes: u32,
    max_bytes: u32,
    allow_follower: bool,
    items: &[FetchItem<'_>],
) -> Frame {
    let mut b = FlatBufferBuilder::with_capacity(128 + items.len() * 64);
    let parts: Vec<_> = items
        .iter()
        .map(|item| {
            let topic = b.create_shared_string(item.topic);
            wire::FetchPartition::create(
                &mut b,
                &wire::FetchPartitionArgs {
                    topic: Some(topic),
                    partition: item.partition,
                    offset: item.offset,
                    max_bytes: item.max_bytes,
                },
            )
        })
        .collect();
    let parts = b.create_vector(&parts);
    let body = wire::FetchRequest::create(
        &mut b,
        &wire::FetchRequestArgs {
            max_wait_ms,
            min_bytes,
            max_bytes,
            partitions: Some(parts),
            allow_follower,
        },
    );
    finish(
        b,
        correlation_id,
        client_id,
        Api::Fetch,
        RequestBody::FetchRequest,
        body.as_union_value(),
    )
}

/// ListOffsets of the items.
pub fn encode_list_offsets(
    correlation_id: u64,
    client_id: &str,
    items: &[ListOffsetsItem<'_>],
) -> Frame {
    let mut b = FlatBufferBuilder::with_capacity(128 + items.len() * 64);
    let parts: Vec<_> = items
        .iter()
        .map(|item| {
            let topic = b.create_shared_string(item.topic);
            wire::ListOffsetsPartition::create(
                &mut b,
                &wire::ListOffsetsPartitionArgs {
                    topic: Some(topic),
                    partition: item.partition,
                    spec: item.spec,
                    timestamp_ms: item.timestamp_ms,
                },
            )
        })
        .collect();
    let parts = b.create_vector(&parts);
    let body = wire::ListOffsetsRequest::create(
        &mut b,
        &wire::ListOffsetsRequestArgs {
            partitions: Some(parts),
        },
    );
    finish(
        b,
        correlation_id,
        client_id,
        Api::ListOffsets,
        RequestBody::ListOffsetsRequest,
        body.as_union_value(),
    )
}

/// DescribeCluster.
pub fn encode_describe_cluster(correlation_id: u64, client_id: &str) -> Frame {
    let mut b = FlatBufferBuilder::with_capacity(64);
    let body = wire::DescribeClusterRequest::create(&mut b, &wire::DescribeClusterRequestArgs {});
    finish(
        b,
        correlation_id,
        client_id,
        Api::DescribeCluster,
        RequestBody::DescribeClusterRequest,
        body.as_union_value(),
    )
}

/// DescribeReplicas of `topics`, or of every topic when `None`.
pub fn encode_describe_replicas(
    correlation_id: u64,
    client_id: &str,
    topics: Option<&[&str]>,
) -> Frame {
    let mut b = FlatBufferBuilder::with_capacity(128);
    let topics = topics.map(|names| {
        let names: Vec<_> = names.iter().map(|n| b.create_string(n)).collect();
        b.create_vector(&names)
    });
    let body = wire::DescribeReplicasRequest::create(
        &mut b,
        &wire::DescribeReplicasRequestArgs { topics },
    );
    finish(
        b,
        correlation_id,
        client_id,
        Api::DescribeReplicas,
        RequestBody::DescribeReplicasRequest,
        body.as_union_value(),
    )
}

/// TransferLeader of the partition to the replica on `to_node_id`,
/// waiting up to `timeout_ms` for the new leader (0: answer once the
/// controller accepted the move).
pub fn encode_transfer_leader(
    correlation_id: u64,
    client_id: &str,
    topic: &str,
    partition: i32,
    to_node_id: i32,
    timeout_ms: u32,
) -> Frame {
    let mut b = FlatBufferBuilder::with_capacity(128);
    let topic = b.create_string(topic);
    let body = wire::TransferLeaderRequest::create(
        &mut b,
        &wire::TransferLeaderRequestArgs {
            topic: Some(topic),
            partition,
            to_node_id,
            timeout_ms,
        },
    );
    finish(
        b,
        correlation_id,
        client_id,
        Api::TransferLeader,
        RequestBody::TransferLeaderRequest,
        body.as_union_value(),
    )
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// The response, after checking that it answers `api` and carries no error
/// of the whole request.
fn checked(frame: &ResponseFrame, api: Api) -> Result<Response<'_>> {
    let response = frame.response();
    if response.error_code() != ErrorCode::None {
        return Err(ClientError::broker(
            response.error_code(),
            response.error_message(),
        ));
    }
    if response.header().api() != api {
        return Err(ClientError::protocol(format!(
            "response of api {:?} to a request of api {api:?}",
            response.header().api()
        )));
    }
    let expected = api.response_body_type();
    if expected != Some(response.body_type()) {
        return Err(ClientError::protocol(format!(
            "response body {:?} does not match api {api:?}",
            response.body_type()
        )));
    }
    Ok(response)
}

fn body_error(code: ErrorCode, message: Option<&str>) -> Result<()> {
    if code == ErrorCode::None {
        Ok(())
    } else {
        Err(ClientError::broker(code, message))
    }
}

fn missing_body(api: Api) -> ClientError {
    ClientError::protocol(format!("response of api {api:?} has no body"))
}

/// The replicas of a partition: its `replicas` table, or, from a broker
/// that sends only `replica_node_ids`, those with the leader's shard and
/// port on the leader's replica.
fn partition_replicas(p: &wire::PartitionMetadata<'_>) -> Vec<ReplicaInfo> {
    if let Some(replicas) = p.replicas() {
        return replicas
            .iter()
            .map(|r| ReplicaInfo {
                node_id: r.node_id(),
                shard: r.shard(),
                shard_port: r.shard_port(),
            })
            .collect();
    }
    p.replica_node_ids()
        .map(|ids| {
            ids.iter()
                .map(|node_id| {
                    if node_id == p.leader_node_id() {
                        ReplicaInfo {
                            node_id,
                            shard: p.leader_shard(),
                            shard_port: p.shard_port(),
                        }
                    } else {
                        ReplicaInfo {
                            node_id,
                            shard: 0,
                            shard_port: 0,
                        }
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a Metadata response.
pub fn decode_metadata(frame: &ResponseFrame) -> Result<ClusterMetadata> {
    let response = checked(frame, Api::Metadata)?;
    let body = response
        .body_as_metadata_response()
        .ok_or_else(|| missing_body(Api::Metadata))?;
    body_error(body.error_code(), body.error_message())?;
    let brokers = body
        .brokers()
        .map(|v| {
            v.iter()
                .map(|b| BrokerInfo {
                    node_id: b.node_id(),
                    host: b.host().unwrap_or_default().to_owned(),
                    port: b.port(),
                    status: b.status(),
                    shard_ports: b
                        .shard_ports()
                        .map(|p| p.iter().collect())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let topics = body
        .topics()
        .map(|v| {
            v.iter()
                .map(|t| TopicInfo {
                    name: t.name().to_owned(),
                    error: t.error_code(),
                    partitions: t
                        .partitions()
                        .map(|ps| {
                            ps.iter()
                                .map(|p| PartitionInfo {
                                    partition: p.partition(),
                                    error: p.error_code(),
                                    leader_node_id: p.leader_node_id(),
                                    leader_shard: p.leader_shard(),
                                    shard_port: p.shard_port(),
                                    replicas: partition_replicas(&p),
                                    leader_epoch: p.leader_epoch(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ClusterMetadata {
        brokers,
        topics,
        controller_id: body.controller_id(),
        cluster_id: body.cluster_id().unwrap_or_default().to_owned(),
    })
}

/// Reads a CreateTopics response.
pub fn decode_create_topics(frame: &ResponseFrame) -> Result<Vec<TopicResult>> {
    let response = checked(frame, Api::CreateTopics)?;
    let body = response
        .body_as_create_topics_response()
        .ok_or_else(|| missing_body(Api::CreateTopics))?;
    body_error(body.error_code(), body.error_message())?;
    Ok(body
        .topics()
        .map(|v| {
            v.iter()
                .map(|t| TopicResult {
                    name: t.name().to_owned(),
                    error: t.error_code(),
                    message: t.error_message().map(str::to_owned),
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Reads a DeleteTopics response.
pub fn decode_delete_topics(frame: &ResponseFrame) -> Result<Vec<TopicResult>> {
    let response = checked(frame, Api::DeleteTopics)?;
    let body = response
        .body_as_delete_topics_response()
        .ok_or_else(|| missing_body(Api::DeleteTopics))?;
    body_error(body.error_code(), body.error_message())?;
    Ok(body
        .topics()
        .map(|v| {
            v.iter()
                .map(|t| TopicResult {
                    name: t.name().to_owned(),
                    error: t.error_code(),
                    message: t.error_message().map(str::to_owned),
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Reads a ListTopics response.
pub fn decode_list_topics(frame: &ResponseFrame) -> Result<Vec<TopicListing>> {
    let response = checked(frame, Api::ListTopics)?;
    let body = response
        .body_as_list_topics_response()
        .ok_or_else(|| missing_body(Api::ListTopics))?;
    body_error(body.error_code(), body.error_message())?;
    Ok(body
        .topics()
        .map(|v| {
            v.iter()
                .map(|t| TopicListing {
                    name: t.name().to_owned(),
                    partitions: t.partitions(),
                    replication_factor: t.replication_factor(),
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Reads a Produce response.
pub fn decode_produce(frame: &ResponseFrame) -> Result<Vec<ProduceResult>> {
    let response = checked(frame, Api::Produce)?;
    let body = response
        .body_as_produce_response()
        .ok_or_else(|| missing_body(Api::Produce))?;
    body_error(body.error_code(), body.error_message())?;
    Ok(body
        .partitions()
        .map(|v| {
            v.iter()
                .map(|p| ProduceResult {
                    topic: p.topic().to_owned(),
                    partition: p.partition(),
                    error: p.error_code(),
                    message: p.error_message().map(str::to_owned),
                    base_offset: p.base_offset(),
                    log_append_time_ms: p.log_append_time_ms(),
                    leader_hint: LeaderHint::read(p.leader_hint()),
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Reads a Fetch response; the records share the frame's memory.
pub fn decode_fetch(frame: &ResponseFrame) -> Result<Vec<FetchResult>> {
    let response = checked(frame, Api::Fetch)?;
    let body = response
        .body_as_fetch_response()
        .ok_or_else(|| missing_body(Api::Fetch))?;
    body_error(body.error_code(), body.error_message())?;
    let Some(parts) = body.partitions() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts.iter() {
        let records = match p.records() {
            Some(v) => frame
                .share(v.bytes())
                .ok_or_else(|| ClientError::protocol("fetched records outside the frame"))?,
            None => Bytes::new(),
        };
        out.push(FetchResult {
            topic: p.topic().to_owned(),
            partition: p.partition(),
            error: p.error_code(),
            message: p.error_message().map(str::to_owned),
            high_watermark: p.high_watermark(),
            log_start_offset: p.log_start_offset(),
            records,
            leader_hint: LeaderHint::read(p.leader_hint()),
        });
    }
    Ok(out)
}

/// Reads a ListOffsets response.
pub fn decode_list_offsets(frame: &ResponseFrame) -> Result<Vec<ListOffsetsResult>> {
    let response = checked(frame, Api::ListOffsets)?;
    let body = response
        .body_as_list_offsets_response()
        .ok_or_else(|| missing_body(Api::ListOffsets))?;
    body_error(body.error_code(), body.error_message())?;
    Ok(body
        .partitions()
        .map(|v| {
            v.iter()
                .map(|p| ListOffsetsResult {
                    topic: p.topic().to_owned(),
                    partition: p.partition(),
                    error: p.error_code(),
                    message: p.error_message().map(str::to_owned),
                    offset: p.offset(),
                    timestamp_ms: p.timestamp_ms(),
                    leader_hint: LeaderHint::read(p.leader_hint()),
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Reads a DescribeCluster response.
pub fn decode_describe_cluster(frame: &ResponseFrame) -> Result<ClusterDescription> {
    let response = checked(frame, Api::DescribeCluster)?;
    let body = response
        .body_as_describe_cluster_response()
        .ok_or_else(|| missing_body(Api::DescribeCluster))?;
    body_error(body.error_code(), body.error_message())?;
    let brokers = body
        .brokers()
        .map(|v| {
            v.iter()
                .map(|b| BrokerDescription {
                    node_id: b.node_id(),
                    host: b.host().unwrap_or_default().to_owned(),
                    port: b.port(),
                    shard_ports: b
                        .shard_ports()
                        .map(|p| p.iter().collect())
                        .unwrap_or_default(),
                    inter_broker_address: b.inter_broker_address().unwrap_or_default().to_owned(),
                    status: b.status(),
                    incarnation: b.incarnation(),
                    controller_voter: b.controller_voter(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ClusterDescription {
        cluster_id: body.cluster_id().unwrap_or_default().to_owned(),
        controller_id: body.controller_id(),
        controller_term: body.controller_term(),
        metadata_version: body.metadata_version(),
        brokers,
        answered_by: body.answered_by(),
    })
}

/// Reads a DescribeReplicas response.
pub fn decode_describe_replicas(frame: &ResponseFrame) -> Result<ReplicasDescription> {
    let response = checked(frame, Api::DescribeReplicas)?;
    let body = response
        .body_as_describe_replicas_response()
        .ok_or_else(|| missing_body(Api::DescribeReplicas))?;
    body_error(body.error_code(), body.error_message())?;
    let replicas = body
        .replicas()
        .map(|v| {
            v.iter()
                .map(|r| ReplicaState {
                    topic: r.topic().to_owned(),
                    partition: r.partition(),
                    shard: r.shard(),
                    role: r.role(),
                    term: r.term(),
                    leader_node_id: r.leader_node_id(),
                    first_index: r.first_index(),
                    last_index: r.last_index(),
                    commit_index: r.commit_index(),
                    high_watermark: r.high_watermark(),
                    log_start_offset: r.log_start_offset(),
                    log_end_offset: r.log_end_offset(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ReplicasDescription {
        node_id: body.node_id(),
        replicas,
    })
}

/// Reads a TransferLeader response. Its own error code is returned in the
/// result, with the leader the broker saw, for the caller to judge.
pub fn decode_transfer_leader(frame: &ResponseFrame) -> Result<TransferLeaderResult> {
    let response = checked(frame, Api::TransferLeader)?;
    let body = response
        .body_as_transfer_leader_response()
        .ok_or_else(|| missing_body(Api::TransferLeader))?;
    Ok(TransferLeaderResult {
        error: body.error_code(),
        message: body.error_message().map(str::to_owned),
        leader_node_id: body.leader_node_id(),
    })
}

#[cfg(test)]
mod tests {
    use shardmq_net::RequestFrame;

    use super::*;

    #[test]
    fn produce_request_round_trips_through_the_verifier() {
        let batch = [1u8, 2, 3, 4];
        let frame = encode_produce(
            7,
            "me",
            Acks::Leader,
            1000,
            &[ProduceItem {
                topic: "t",
                partition: 3,
                records: &batch,
            }],
        );
        let request = RequestFrame::verify(frame).unwrap();
        assert_eq!(request.correlation_id(), 7);
        assert_eq!(request.api(), Api::Produce);
        let body = request.request().body_as_produce_request().unwrap();
        assert_eq!(body.acks(), wire::Acks::Leader);
        let item = body.partitions().unwrap().get(0);
        assert_eq!(item.topic(), "t");
        assert_eq!(item.partition(), 3);
        assert_eq!(item.records().bytes(), &batch);
    }

    #[test]
    fn whole_request_error_becomes_a_broker_error() {
        let key = shardmq_net::RequestKey {
            correlation_id: 9,
            api: Api::Metadata,
            version: 0,
        };
        let frame = shardmq_net::error_response(key, ErrorCode::UnknownApi, "no").unwrap();
        let response = ResponseFrame::verify(frame).unwrap();
        let error = decode_metadata(&response).unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::UnknownApi));
    }

    fn replica(node_id: i32, shard: u16, shard_port: u16) -> ReplicaInfo {
        ReplicaInfo {
            node_id,
            shard,
            shard_port,
        }
    }

    fn partition(partition: i32, leader: i32, shard: u16, port: u16, epoch: i64) -> PartitionInfo {
        PartitionInfo {
            partition,
            error: ErrorCode::None,
            leader_node_id: leader,
            leader_shard: shard,
            shard_port: port,
            replicas: vec![replica(leader, shard, port)],
            leader_epoch: epoch,
        }
    }

    fn two_brokers() -> ClusterMetadata {
        let mut second = BrokerInfo::new(2, "h2", 9100);
        second.shard_ports = vec![9100, 9101];
        ClusterMetadata {
            brokers: vec![BrokerInfo::new(1, "h", 9000), second],
            topics: vec![TopicInfo {
                name: "t".into(),
                error: ErrorCode::None,
                partitions: vec![
                    PartitionInfo {
                        replicas: vec![replica(1, 2, 9002), replica(2, 1, 0)],
                        ..partition(0, 1, 2, 9002, 1)
                    },
                    partition(1, 1, 0, 0, 1),
                    partition(2, -1, 0, 0, 1),
                ],
            }],
            controller_id: 1,
            cluster_id: "c".into(),
        }
    }

    #[test]
    fn leader_addr_prefers_the_shard_port() {
        let meta = two_brokers();
        assert_eq!(meta.leader_addr("t", 0).unwrap(), "h:9002");
        assert_eq!(meta.leader_addr("t", 1).unwrap(), "h:9000");
        let leaderless = meta.leader_addr("t", 2).unwrap_err();
        assert_eq!(leaderless.code(), Some(ErrorCode::LeaderNotAvailable));
        assert!(leaderless.is_retriable());
        assert_eq!(
            meta.leader_addr("t", 3).unwrap_err().code(),
            Some(ErrorCode::UnknownPartition)
        );
        assert_eq!(
            meta.leader_addr("u", 0).unwrap_err().code(),
            Some(ErrorCode::UnknownTopic)
        );
    }

    #[test]
    fn replica_addr_uses_the_replica_shard_port_or_the_broker_port() {
        let meta = two_brokers();
        assert_eq!(meta.replica_addr("t", 0, 1).unwrap(), "h:9002");
        // Port 0: the broker's own port.
        assert_eq!(meta.replica_addr("t", 0, 2).unwrap(), "h2:9100");
        let none = meta.replica_addr("t", 1, 2).unwrap_err();
        assert!(matches!(none, ClientError::InvalidArgument(_)), "{none:?}");
        let part = meta.topic("t").unwrap().partition(0).unwrap();
        assert_eq!(part.preferred_leader(), Some(1));
        assert_eq!(part.replica_node_ids(), [1, 2]);
        let broker = meta.broker(2).unwrap();
        assert_eq!(broker.shard_addr(1), "h2:9101");
        // A shard the broker did not list: its first port.
        assert_eq!(broker.shard_addr(7), "h2:9100");
    }

    #[test]
    fn a_leader_hint_moves_the_cached_leader_unless_it_is_older() {
        let mut meta = two_brokers();
        let hint = |node_id: i32, host: &str, port: u16, epoch: i64| LeaderHint {
            node_id,
            host: host.into(),
            shard: 1,
            shard_port: port,
            leader_epoch: epoch,
        };
        assert!(meta.apply_leader_hint("t", 0, &hint(2, "h2", 9101, 2)));
        assert_eq!(meta.leader_addr("t", 0).unwrap(), "h2:9101");
        // The same again changes nothing; an older epoch is ignored.
        assert!(!meta.apply_leader_hint("t", 0, &hint(2, "h2", 9101, 2)));
        assert!(!meta.apply_leader_hint("t", 0, &hint(1, "h", 9001, 1)));
        assert_eq!(meta.leader_addr("t", 0).unwrap(), "h2:9101");
        // A broker not known yet is added, reachable at the hinted port.
        assert!(meta.apply_leader_hint("t", 1, &hint(3, "h3", 9301, 5)));
        assert_eq!(meta.leader_addr("t", 1).unwrap(), "h3:9301");
        assert_eq!(meta.broker(3).unwrap().host, "h3");
        // A partition not cached is left alone.
        assert!(!meta.apply_leader_hint("u", 0, &hint(2, "h2", 9101, 9)));
    }

    /// A response frame with `body`, as a broker builds one.
    fn response(
        api: Api,
        build: impl FnOnce(
            &mut FlatBufferBuilder<'static>,
        ) -> (wire::ResponseBody, WIPOffset<UnionWIPOffset>),
    ) -> ResponseFrame {
        let mut b = FlatBufferBuilder::new();
        let (body_type, body) = build(&mut b);
        let header = wire::ResponseHeader::create(
            &mut b,
            &wire::ResponseHeaderArgs {
                correlation_id: 5,
                api,
                version: API_VERSION,
                throttle_time_ms: 0,
            },
        );
        let root = wire::Response::create(
            &mut b,
            &wire::ResponseArgs {
                header: Some(header),
                body_type,
                body: Some(body),
                ..Default::default()
            },
        );
        wire::finish_response_frame(&mut b, root);
        ResponseFrame::verify(Frame::from_builder(b).unwrap()).unwrap()
    }

    fn metadata_frame(with_replicas: bool) -> ResponseFrame {
        response(Api::Metadata, |b| {
            let host = b.create_string("10.0.0.2");
            let ports = b.create_vector(&[9200u16, 9201]);
            let broker = wire::BrokerMetadata::create(
                b,
                &wire::BrokerMetadataArgs {
                    node_id: 2,
                    host: Some(host),
                    port: 9200,
                    status: BrokerStatus::Failed,
                    shard_ports: Some(ports),
                },
            );
            let brokers = b.create_vector(&[broker]);
            let replicas = with_replicas.then(|| {
                let items: Vec<_> = [(2, 1, 9201), (1, 0, 9100)]
                    .iter()
                    .map(|&(node_id, shard, shard_port)| {
                        wire::ReplicaMetadata::create(
                            b,
                            &wire::ReplicaMetadataArgs {
                                node_id,
                                shard,
                                shard_port,
                            },
                        )
                    })
                    .collect();
                b.create_vector(&items)
            });
            let ids = b.create_vector(&[2i32, 1]);
            let part = wire::PartitionMetadata::create(
                b,
                &wire::PartitionMetadataArgs {
                    partition: 0,
                    leader_node_id: 2,
                    leader_shard: 1,
                    shard_port: 9201,
                    replica_node_ids: Some(ids),
                    leader_epoch: 7,
                    replicas,
                    ..Default::default()
                },
            );
            let parts = b.create_vector(&[part]);
            let name = b.create_string("t");
            let topic = wire::TopicMetadata::create(
                b,
                &wire::TopicMetadataArgs {
                    name: Some(name),
                    partitions: Some(parts),
                    ..Default::default()
                },
            );
            let topics = b.create_vector(&[topic]);
            let cluster_id = b.create_string("cluster-a");
            let body = wire::MetadataResponse::create(
                b,
                &wire::MetadataResponseArgs {
                    brokers: Some(brokers),
                    topics: Some(topics),
                    controller_id: 3,
                    cluster_id: Some(cluster_id),
                    ..Default::default()
                },
            );
            (wire::ResponseBody::MetadataResponse, body.as_union_value())
        })
    }

    #[test]
    fn metadata_decodes_brokers_replicas_and_the_controller() {
        let meta = decode_metadata(&metadata_frame(true)).unwrap();
        assert_eq!(meta.controller_id, 3);
        assert_eq!(meta.cluster_id, "cluster-a");
        let broker = meta.broker(2).unwrap();
        assert_eq!(broker.status, BrokerStatus::Failed);
        assert_eq!(broker.shard_ports, [9200, 9201]);
        let part = meta.topic("t").unwrap().partition(0).unwrap();
        assert_eq!(part.replicas, [replica(2, 1, 9201), replica(1, 0, 9100)]);
        assert_eq!(part.leader_epoch, 7);
        assert_eq!(part.preferred_leader(), Some(2));
        assert_eq!(meta.leader_addr("t", 0).unwrap(), "10.0.0.2:9201");
    }

    #[test]
    fn metadata_without_replica_tables_falls_back_to_the_node_ids() {
        let meta = decode_metadata(&metadata_frame(false)).unwrap();
        let part = meta.topic("t").unwrap().partition(0).unwrap();
        // The leader's replica takes the leader's shard and port.
        assert_eq!(part.replicas, [replica(2, 1, 9201), replica(1, 0, 0)]);
    }

    #[test]
    fn metadata_of_an_older_broker_reads_defaults() {
        let frame = response(Api::Metadata, |b| {
            let body = wire::MetadataResponse::create(b, &wire::MetadataResponseArgs::default());
            (wire::ResponseBody::MetadataResponse, body.as_union_value())
        });
        let meta = decode_metadata(&frame).unwrap();
        assert_eq!(meta, ClusterMetadata::default());
        assert_eq!(meta.controller_id, -1);
    }

    #[test]
    fn fetch_carries_allow_follower() {
        for allow_follower in [false, true] {
            let items = [FetchItem {
                topic: "t",
                partition: 1,
                offset: 9,
                max_bytes: 100,
            }];
            let frame = encode_fetch(3, "me", 10, 1, 1000, allow_follower, &items);
            let request = RequestFrame::verify(frame).unwrap();
            let body = request.request().body_as_fetch_request().unwrap();
            assert_eq!(body.allow_follower(), allow_follower);
            assert_eq!(body.partitions().unwrap().get(0).offset(), 9);
        }
    }

    #[test]
    fn cluster_apis_encode_their_fields() {
        let request = RequestFrame::verify(encode_describe_cluster(1, "me")).unwrap();
        assert_eq!(request.api(), Api::DescribeCluster);
        assert!(request
            .request()
            .body_as_describe_cluster_request()
            .is_some());

        let request =
            RequestFrame::verify(encode_describe_replicas(2, "me", Some(&["a", "b"]))).unwrap();
        assert_eq!(request.api(), Api::DescribeReplicas);
        let body = request
            .request()
            .body_as_describe_replicas_request()
            .unwrap();
        let topics: Vec<&str> = body.topics().unwrap().iter().collect();
        assert_eq!(topics, ["a", "b"]);
        let all = RequestFrame::verify(encode_describe_replicas(3, "me", None)).unwrap();
        let body = all.request().body_as_describe_replicas_request().unwrap();
        assert!(body.topics().is_none());

        let frame = encode_transfer_leader(4, "me", "t", 5, 3, 2_000);
        let request = RequestFrame::verify(frame).unwrap();
        assert_eq!(request.api(), Api::TransferLeader);
        let body = request.request().body_as_transfer_leader_request().unwrap();
        assert_eq!(
            (
                body.topic(),
                body.partition(),
                body.to_node_id(),
                body.timeout_ms()
            ),
            ("t", 5, 3, 2_000)
        );
    }

    #[test]
    fn describe_cluster_decodes_every_field() {
        let frame = response(Api::DescribeCluster, |b| {
            let host = b.create_string("h1");
            let ports = b.create_vector(&[9000u16, 9001]);
            let inter = b.create_string("h1:19000");
            let broker = wire::BrokerDescription::create(
                b,
                &wire::BrokerDescriptionArgs {
                    node_id: 1,
                    host: Some(host),
                    port: 9000,
                    shard_ports: Some(ports),
                    inter_broker_address: Some(inter),
                    status: BrokerStatus::Active,
                    incarnation: 0xfeed,
                    controller_voter: true,
                },
            );
            let brokers = b.create_vector(&[broker]);
            let cluster_id = b.create_string("c1");
            let body = wire::DescribeClusterResponse::create(
                b,
                &wire::DescribeClusterResponseArgs {
                    cluster_id: Some(cluster_id),
                    controller_id: 1,
                    controller_term: 4,
                    metadata_version: 17,
                    brokers: Some(brokers),
                    answered_by: 1,
                    ..Default::default()
                },
            );
            (
                wire::ResponseBody::DescribeClusterResponse,
                body.as_union_value(),
            )
        });
        let cluster = decode_describe_cluster(&frame).unwrap();
        assert_eq!(
            cluster,
            ClusterDescription {
                cluster_id: "c1".into(),
                controller_id: 1,
                controller_term: 4,
                metadata_version: 17,
                brokers: vec![BrokerDescription {
                    node_id: 1,
                    host: "h1".into(),
                    port: 9000,
                    shard_ports: vec![9000, 9001],
                    inter_broker_address: "h1:19000".into(),
                    status: BrokerStatus::Active,
                    incarnation: 0xfeed,
                    controller_voter: true,
                }],
                answered_by: 1,
            }
        );
        assert_eq!(cluster.brokers[0].addr(), "h1:9000");
    }

    #[test]
    fn describe_replicas_and_transfer_leader_decode() {
        let frame = response(Api::DescribeReplicas, |b| {
            let topic = b.create_string("t");
            let item = wire::ReplicaDescription::create(
                b,
                &wire::ReplicaDescriptionArgs {
                    topic: Some(topic),
                    partition: 2,
                    shard: 1,
                    role: ReplicaRole::Follower,
                    term: 3,
                    leader_node_id: 1,
                    last_index: 40,
                    commit_index: 39,
                    high_watermark: 120,
                    log_start_offset: 10,
                    first_index: 2,
                    log_end_offset: 123,
                },
            );
            let replicas = b.create_vector(&[item]);
            let body = wire::DescribeReplicasResponse::create(
                b,
                &wire::DescribeReplicasResponseArgs {
                    node_id: 2,
                    replicas: Some(replicas),
                    ..Default::default()
                },
            );
            (
                wire::ResponseBody::DescribeReplicasResponse,
                body.as_union_value(),
            )
        });
        let described = decode_describe_replicas(&frame).unwrap();
        assert_eq!(described.node_id, 2);
        assert_eq!(
            described.replica("t", 2),
            Some(&ReplicaState {
                topic: "t".into(),
                partition: 2,
                shard: 1,
                role: ReplicaRole::Follower,
                term: 3,
                leader_node_id: 1,
                first_index: 2,
                last_index: 40,
                commit_index: 39,
                high_watermark: 120,
                log_start_offset: 10,
                log_end_offset: 123,
            })
        );
        assert!(described.replica("t", 0).is_none());

        let frame = response(Api::TransferLeader, |b| {
            let message = b.create_string("no replica on node 9");
            let body = wire::TransferLeaderResponse::create(
                b,
                &wire::TransferLeaderResponseArgs {
                    error_code: ErrorCode::InvalidBroker,
                    error_message: Some(message),
                    leader_node_id: 1,
                },
            );
            (
                wire::ResponseBody::TransferLeaderResponse,
                body.as_union_value(),
            )
        });
        let result = decode_transfer_leader(&frame).unwrap();
        assert_eq!(result.error, ErrorCode::InvalidBroker);
        assert_eq!(result.message.as_deref(), Some("no replica on node 9"));
        assert_eq!(result.leader_node_id, 1);
    }

    #[test]
    fn not_leader_items_carry_their_hint() {
        let frame = response(Api::Produce, |b| {
            let host = b.create_string("h2");
            let hint = wire::LeaderHint::create(
                b,
                &wire::LeaderHintArgs {
                    node_id: 2,
                    host: Some(host),
                    shard: 1,
                    shard_port: 9101,
                    leader_epoch: 6,
                },
            );
            let topic = b.create_string("t");
            let refused = wire::ProducePartitionResponse::create(
                b,
                &wire::ProducePartitionResponseArgs {
                    topic: Some(topic),
                    partition: 0,
                    error_code: ErrorCode::NotLeader,
                    leader_hint: Some(hint),
                    ..Default::default()
                },
            );
            // A hint without a port cannot be followed: dropped.
            let host = b.create_string("h3");
            let portless = wire::LeaderHint::create(
                b,
                &wire::LeaderHintArgs {
                    node_id: 3,
                    host: Some(host),
                    ..Default::default()
                },
            );
            let unusable = wire::ProducePartitionResponse::create(
                b,
                &wire::ProducePartitionResponseArgs {
                    topic: Some(topic),
                    partition: 1,
                    error_code: ErrorCode::NotLeader,
                    leader_hint: Some(portless),
                    ..Default::default()
                },
            );
            let parts = b.create_vector(&[refused, unusable]);
            let body = wire::ProduceResponse::create(
                b,
                &wire::ProduceResponseArgs {
                    partitions: Some(parts),
                    ..Default::default()
                },
            );
            (wire::ResponseBody::ProduceResponse, body.as_union_value())
        });
        let results = decode_produce(&frame).unwrap();
        let hint = results[0].leader_hint.as_ref().unwrap();
        assert_eq!(hint.addr(), "h2:9101");
        assert_eq!((hint.node_id, hint.shard, hint.leader_epoch), (2, 1, 6));
        assert!(results[1].leader_hint.is_none());
    }
}
