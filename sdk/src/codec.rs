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
    self as wire, Api, ErrorCode, OffsetSpec, Request, RequestArgs, RequestBody, RequestHeader,
    RequestHeaderArgs, Response,
};

use crate::config::Acks;
use crate::error::{ClientError, Result};

/// Version of every api this SDK speaks.
pub const API_VERSION: u16 = 0;

/// A broker of the cluster, as Metadata reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Node id, unique in the cluster.
    pub node_id: i32,
    /// Host name or address clients connect to.
    pub host: String,
    /// Port of the broker's first shard.
    pub port: u16,
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
    /// Node ids of all replicas.
    pub replicas: Vec<i32>,
    /// Leader epoch (Raft term).
    pub leader_epoch: i64,
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

/// A Metadata response: brokers and topics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// Live brokers.
    pub brokers: Vec<BrokerInfo>,
    /// The topics asked for.
    pub topics: Vec<TopicInfo>,
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

    /// `host:port` where requests for the partition go: the leader's host
    /// and the owning shard's port, or the leader's broker port when the
    /// shard port is 0. An error if the partition is unknown or has no
    /// leader now.
    pub fn leader_addr(&self, topic: &str, partition: i32) -> Result<String> {
        let info = self
            .topic(topic)
            .ok_or_else(|| ClientError::broker(ErrorCode::UnknownTopic, Some(topic)))?;
        if info.error != ErrorCode::None {
            return Err(ClientError::broker(info.error, Some(topic)));
        }
        let part = info
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .ok_or_else(|| ClientError::broker(ErrorCode::UnknownPartition, None))?;
        if part.error != ErrorCode::None {
            return Err(ClientError::broker(part.error, None));
        }
        let broker = self
            .broker(part.leader_node_id)
            .ok_or_else(|| ClientError::broker(ErrorCode::LeaderNotAvailable, None))?;
        let port = if part.shard_port != 0 {
            part.shard_port
        } else {
            broker.port
        };
        Ok(format!("{}:{}", broker.host, port))
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

/// Fetch of the items, waiting up to `max_wait_ms` for `min_bytes`.
pub fn encode_fetch(
    correlation_id: u64,
    client_id: &str,
    max_wait_ms: u32,
    min_bytes: u32,
    max_bytes: u32,
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
            allow_follower: false,
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
                                    replicas: p
                                        .replica_node_ids()
                                        .map(|r| r.iter().collect())
                                        .unwrap_or_default(),
                                    leader_epoch: p.leader_epoch(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ClusterMetadata { brokers, topics })
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
                })
                .collect()
        })
        .unwrap_or_default())
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

    #[test]
    fn leader_addr_prefers_the_shard_port() {
        let meta = ClusterMetadata {
            brokers: vec![BrokerInfo {
                node_id: 1,
                host: "h".into(),
                port: 9000,
            }],
            topics: vec![TopicInfo {
                name: "t".into(),
                error: ErrorCode::None,
                partitions: vec![
                    PartitionInfo {
                        partition: 0,
                        error: ErrorCode::None,
                        leader_node_id: 1,
                        leader_shard: 2,
                        shard_port: 9002,
                        replicas: vec![1],
                        leader_epoch: 1,
                    },
                    PartitionInfo {
                        partition: 1,
                        error: ErrorCode::None,
                        leader_node_id: 1,
                        leader_shard: 0,
                        shard_port: 0,
                        replicas: vec![1],
                        leader_epoch: 1,
                    },
                ],
            }],
        };
        assert_eq!(meta.leader_addr("t", 0).unwrap(), "h:9002");
        assert_eq!(meta.leader_addr("t", 1).unwrap(), "h:9000");
        assert_eq!(
            meta.leader_addr("t", 2).unwrap_err().code(),
            Some(ErrorCode::UnknownPartition)
        );
        assert_eq!(
            meta.leader_addr("u", 0).unwrap_err().code(),
            Some(ErrorCode::UnknownTopic)
        );
    }
}
