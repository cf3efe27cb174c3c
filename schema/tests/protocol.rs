//! Tests of the client protocol (`schema/fbs/protocol.fbs`):
//!
//! * the generated code is in step with the schema and was not edited by
//!   hand (hashes recorded by `tools/regen-schema.sh`);
//! * every api's request and response round-trip through a frame, and
//!   record batches are read straight out of the frame, byte-identical;
//! * the frame checks and the verifier limits reject what they should;
//! * codes keep their values forever;
//! * no bytes, arbitrary or a damaged valid frame, make verification or the
//!   reading of a verified frame panic.

use std::collections::BTreeSet;
use std::fs;
use std::hint::black_box;
use std::path::PathBuf;

use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer, UnionWIPOffset, WIPOffset};
use proptest::collection::vec;
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use shardmq_schema::batch::{BatchBuilder, BatchHeader, RecordBatchView};
use shardmq_schema::protocol::*;

// ---------------------------------------------------------------------------
// Drift: generated code against schema
// ---------------------------------------------------------------------------

const REGENERATE: &str =
    "run tools/regen-schema.sh and commit schema/fbs/ and schema/src/generated/ together";

/// The hash list regen-schema.sh writes, paths relative to `schema/`.
const HASHES: &str = "src/generated/SHA256SUMS";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `(path, sha256)` of every file the hash list records.
fn recorded_hashes() -> Vec<(String, String)> {
    let path = crate_dir().join(HASHES);
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}; {REGENERATE}", path.display()));
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (hash, file) = line
                .split_once("  ")
                .unwrap_or_else(|| panic!("malformed line {line:?} in {HASHES}; {REGENERATE}"));
            (file.to_owned(), hash.to_owned())
        })
        .collect()
}

/// Files directly in `schema/<dir>` whose name ends with `suffix`, as paths
/// relative to `schema/`.
fn files_in(dir: &str, suffix: &str) -> BTreeSet<String> {
    let full = crate_dir().join(dir);
    fs::read_dir(&full)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", full.display()))
        .map(|entry| entry.expect("directory entry").file_name())
        .filter_map(|name| name.to_str().map(str::to_owned))
        .filter(|name| name.ends_with(suffix))
        .map(|name| format!("{dir}/{name}"))
        .collect()
}

/// Checks the recorded hashes of the files under `prefix` and that the
/// files on disk are exactly the recorded ones; returns what is wrong.
fn check_recorded(prefix: &str, on_disk: &BTreeSet<String>, stale: &str) -> Vec<String> {
    let recorded: Vec<(String, String)> = recorded_hashes()
        .into_iter()
        .filter(|(file, _)| file.starts_with(prefix))
        .collect();
    let mut problems = Vec::new();
    for (file, hash) in &recorded {
        match fs::read(crate_dir().join(file)) {
            Ok(bytes) if sha256_hex(&bytes) == *hash => {}
            Ok(_) => problems.push(format!("schema/{file} {stale}")),
            Err(error) => {
                problems.push(format!("schema/{file} is recorded but unreadable: {error}"))
            }
        }
    }
    let recorded_names: BTreeSet<String> = recorded.into_iter().map(|(file, _)| file).collect();
    for file in on_disk.difference(&recorded_names) {
        problems.push(format!("schema/{file} is not recorded in {HASHES}"));
    }
    problems
}

#[test]
fn schema_is_unchanged_since_code_generation() {
    let problems = check_recorded(
        "fbs/",
        &files_in("fbs", ".fbs"),
        "changed after the code in schema/src/generated/ was generated from it",
    );
    assert!(
        problems.is_empty(),
        "the generated protocol code is out of date:\n  {}\n{REGENERATE}",
        problems.join("\n  ")
    );
}

#[test]
fn generated_code_is_unchanged_since_generation() {
    let problems = check_recorded(
        "src/generated/",
        &files_in("src/generated", ".rs"),
        "differs from what flatc generated: generated code is never edited by hand, \
         change schema/fbs/ instead",
    );
    assert!(
        problems.is_empty(),
        "the generated protocol code was modified:\n  {}\n{REGENERATE}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// Sample frames, one request and one response per api
// ---------------------------------------------------------------------------

const TOPIC: &str = "orders";
const BASE_TIMESTAMP: i64 = 1_700_000_000_000;

/// A record batch of `values.len()` records, as a producer sends it.
fn record_batch(base_offset: i64, values: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut builder = BatchBuilder::new(&mut out, base_offset, BASE_TIMESTAMP);
    for (delta, value) in (0i64..).zip(values) {
        builder.append(
            BASE_TIMESTAMP + delta,
            Some(b"key"),
            Some(value),
            &[(b"trace", Some(b"abc"))],
        );
    }
    let len = builder.finish();
    out.truncate(len);
    out
}

type Fbb = FlatBufferBuilder<'static>;

fn request_frame(
    api: Api,
    correlation_id: u64,
    body: impl FnOnce(&mut Fbb) -> WIPOffset<UnionWIPOffset>,
) -> Vec<u8> {
    let mut fbb = Fbb::new();
    let body = body(&mut fbb);
    let client_id = fbb.create_string("test-client");
    let header = RequestHeader::create(
        &mut fbb,
        &RequestHeaderArgs {
            correlation_id,
            api,
            version: 0,
            client_id: Some(client_id),
        },
    );
    let root = Request::create(
        &mut fbb,
        &RequestArgs {
            header: Some(header),
            body_type: api.request_body_type().expect("known api"),
            body: Some(body),
        },
    );
    finish_request_frame(&mut fbb, root).to_vec()
}

fn response_frame(
    api: Api,
    correlation_id: u64,
    body: impl FnOnce(&mut Fbb) -> WIPOffset<UnionWIPOffset>,
) -> Vec<u8> {
    let mut fbb = Fbb::new();
    let body = body(&mut fbb);
    let header = ResponseHeader::create(
        &mut fbb,
        &ResponseHeaderArgs {
            correlation_id,
            api,
            version: 0,
            throttle_time_ms: 0,
        },
    );
    let root = Response::create(
        &mut fbb,
        &ResponseArgs {
            header: Some(header),
            body_type: api.response_body_type().expect("known api"),
            body: Some(body),
            ..Default::default()
        },
    );
    finish_response_frame(&mut fbb, root).to_vec()
}

fn produce_request(batches: &[(i32, &[u8])]) -> Vec<u8> {
    request_frame(Api::Produce, 6, |fbb| {
        let items: Vec<_> = batches
            .iter()
            .map(|&(partition, batch)| {
                let topic = fbb.create_shared_string(TOPIC);
                let records = fbb.create_vector(batch);
                ProducePartition::create(
                    fbb,
                    &ProducePartitionArgs {
                        topic: Some(topic),
                        partition,
                        records: Some(records),
                    },
                )
            })
            .collect();
        let partitions = fbb.create_vector(&items);
        ProduceRequest::create(
            fbb,
            &ProduceRequestArgs {
                acks: Acks::All,
                timeout_ms: 30_000,
                partitions: Some(partitions),
            },
        )
        .as_union_value()
    })
}

/// One request frame per api, each with its fields filled in.
fn sample_requests() -> Vec<Vec<u8>> {
    let batch = record_batch(0, &[b"one", b"two"]);
    vec![
        request_frame(Api::ApiVersions, 1, |fbb| {
            ApiVersionsRequest::create(fbb, &ApiVersionsRequestArgs {}).as_union_value()
        }),
        request_frame(Api::Metadata, 2, |fbb| {
            let names = [fbb.create_string(TOPIC), fbb.create_string("payments")];
            let topics = fbb.create_vector(&names);
            MetadataRequest::create(
                fbb,
                &MetadataRequestArgs {
                    topics: Some(topics),
                },
            )
            .as_union_value()
        }),
        request_frame(Api::CreateTopics, 3, |fbb| {
            let key = fbb.create_string("retention_ms");
            let value = fbb.create_string("86400000");
            let config = TopicConfig::create(
                fbb,
                &TopicConfigArgs {
                    key: Some(key),
                    value: Some(value),
                },
            );
            let configs = fbb.create_vector(&[config]);
            let name = fbb.create_string(TOPIC);
            let topic = NewTopic::create(
                fbb,
                &NewTopicArgs {
                    name: Some(name),
                    partitions: 12,
                    replication_factor: 3,
                    configs: Some(configs),
                },
            );
            let defaulted_name = fbb.create_string("defaults");
            let defaulted = NewTopic::create(
                fbb,
                &NewTopicArgs {
                    name: Some(defaulted_name),
                    ..Default::default()
                },
            );
            let topics = fbb.create_vector(&[topic, defaulted]);
            CreateTopicsRequest::create(
                fbb,
                &CreateTopicsRequestArgs {
                    topics: Some(topics),
                    timeout_ms: 5_000,
                    validate_only: true,
                },
            )
            .as_union_value()
        }),
        request_frame(Api::DeleteTopics, 4, |fbb| {
            let name = fbb.create_string(TOPIC);
            let names = fbb.create_vector(&[name]);
            DeleteTopicsRequest::create(
                fbb,
                &DeleteTopicsRequestArgs {
                    names: Some(names),
                    timeout_ms: 5_000,
                },
            )
            .as_union_value()
        }),
        request_frame(Api::ListTopics, 5, |fbb| {
            ListTopicsRequest::create(fbb, &ListTopicsRequestArgs {}).as_union_value()
        }),
        produce_request(&[(0, &batch), (1, &batch)]),
        request_frame(Api::Fetch, 7, |fbb| {
            let items: Vec<_> = (0..2)
                .map(|partition| {
                    let topic = fbb.create_shared_string(TOPIC);
                    FetchPartition::create(
                        fbb,
                        &FetchPartitionArgs {
                            topic: Some(topic),
                            partition,
                            offset: 100,
                            max_bytes: 1 << 20,
                        },
                    )
                })
                .collect();
            let partitions = fbb.create_vector(&items);
            FetchRequest::create(
                fbb,
                &FetchRequestArgs {
                    max_wait_ms: 500,
                    min_bytes: 1,
                    max_bytes: 4 << 20,
                    partitions: Some(partitions),
                    allow_follower: false,
                },
            )
            .as_union_value()
        }),
        request_frame(Api::ListOffsets, 8, |fbb| {
            let items: Vec<_> = [
                OffsetSpec::Earliest,
                OffsetSpec::Latest,
                OffsetSpec::Timestamp,
            ]
            .into_iter()
            .map(|spec| {
                let topic = fbb.create_shared_string(TOPIC);
                ListOffsetsPartition::create(
                    fbb,
                    &ListOffsetsPartitionArgs {
                        topic: Some(topic),
                        partition: 0,
                        spec,
                        timestamp_ms: BASE_TIMESTAMP,
                    },
                )
            })
            .collect();
            let partitions = fbb.create_vector(&items);
            ListOffsetsRequest::create(
                fbb,
                &ListOffsetsRequestArgs {
                    partitions: Some(partitions),
                },
            )
            .as_union_value()
        }),
        request_frame(Api::DescribeCluster, 9, |fbb| {
            DescribeClusterRequest::create(fbb, &DescribeClusterRequestArgs {}).as_union_value()
        }),
        request_frame(Api::DescribeReplicas, 10, |fbb| {
            let topic = fbb.create_string(TOPIC);
            let topics = fbb.create_vector(&[topic]);
            DescribeReplicasRequest::create(
                fbb,
                &DescribeReplicasRequestArgs {
                    topics: Some(topics),
                },
            )
            .as_union_value()
        }),
        request_frame(Api::TransferLeader, 11, |fbb| {
            let topic = fbb.create_string(TOPIC);
            TransferLeaderRequest::create(
                fbb,
                &TransferLeaderRequestArgs {
                    topic: Some(topic),
                    partition: 2,
                    to_node_id: 3,
                    timeout_ms: 5000,
                },
            )
            .as_union_value()
        }),
    ]
}

fn leader_hint<'a>(fbb: &mut FlatBufferBuilder<'a>) -> WIPOffset<LeaderHint<'a>> {
    let host = fbb.create_string("broker-2.local");
    LeaderHint::create(
        fbb,
        &LeaderHintArgs {
            node_id: 2,
            host: Some(host),
            shard: 5,
            shard_port: 9105,
            leader_epoch: 7,
        },
    )
}

/// One response frame per api, each with its fields filled in.
fn sample_responses() -> Vec<Vec<u8>> {
    let mut fetched = record_batch(100, &[b"a", b"b"]);
    fetched.extend_from_slice(&record_batch(102, &[b"c"]));
    vec![
        response_frame(Api::ApiVersions, 1, |fbb| {
            let ranges: Vec<_> = Api::ENUM_VALUES
                .iter()
                .map(|&api| ApiVersionRange::new(api, 0, 1))
                .collect();
            let apis = fbb.create_vector(&ranges);
            ApiVersionsResponse::create(
                fbb,
                &ApiVersionsResponseArgs {
                    apis: Some(apis),
                    ..Default::default()
                },
            )
            .as_union_value()
        }),
        response_frame(Api::Metadata, 2, |fbb| {
            let host = fbb.create_string("broker-1.local");
            let broker = BrokerMetadata::create(
                fbb,
                &BrokerMetadataArgs {
                    node_id: 1,
                    host: Some(host),
                    port: 9100,
                    ..Default::default()
                },
            );
            let brokers = fbb.create_vector(&[broker]);
            let replicas = fbb.create_vector(&[1, 2, 3]);
            let partition = PartitionMetadata::create(
                fbb,
                &PartitionMetadataArgs {
                    partition: 0,
                    leader_node_id: 1,
                    leader_shard: 3,
                    shard_port: 9103,
                    replica_node_ids: Some(replicas),
                    leader_epoch: 9,
                    ..Default::default()
                },
            );
            let message = fbb.create_string("election in progress");
            let leaderless = PartitionMetadata::create(
                fbb,
                &PartitionMetadataArgs {
                    error_code: ErrorCode::LeaderNotAvailable,
                    error_message: Some(message),
                    partition: 1,
                    ..Default::default()
                },
            );
            let partitions = fbb.create_vector(&[partition, leaderless]);
            let name = fbb.create_string(TOPIC);
            let topic = TopicMetadata::create(
                fbb,
                &TopicMetadataArgs {
                    name: Some(name),
                    partitions: Some(partitions),
                    ..Default::default()
                },
            );
            let missing_name = fbb.create_string("missing");
            let missing = TopicMetadata::create(
                fbb,
                &TopicMetadataArgs {
                    error_code: ErrorCode::UnknownTopic,
                    name: Some(missing_name),
                    ..Default::default()
                },
            );
            let topics = fbb.create_vector(&[topic, missing]);
            MetadataResponse::create(
                fbb,
                &MetadataResponseArgs {
                    brokers: Some(brokers),
                    topics: Some(topics),
                    ..Default::default()
                },
            )
            .as_union_value()
        }),
        response_frame(Api::CreateTopics, 3, |fbb| {
            let name = fbb.create_string(TOPIC);
            let message = fbb.create_string("topic orders already exists");
            let result = CreateTopicResult::create(
                fbb,
                &CreateTopicResultArgs {
                    name: Some(name),
                    error_code: ErrorCode::TopicAlreadyExists,
                    error_message: Some(message),
                },
            );
            let topics = fbb.create_vector(&[result]);
            CreateTopicsResponse::create(
                fbb,
                &CreateTopicsResponseArgs {
                    topics: Some(topics),
                    ..Default::default()
                },
            )
            .as_union_value()
        }),
        response_frame(Api::DeleteTopics, 4, |fbb| {
            let name = fbb.create_string(TOPIC);
            let result = DeleteTopicResult::create(
                fbb,
                &DeleteTopicResultArgs {
                    name: Some(name),
                    ..Default::default()
                },
            );
            let topics = fbb.create_vector(&[result]);
            DeleteTopicsResponse::create(
                fbb,
                &DeleteTopicsResponseArgs {
                    topics: Some(topics),
                    ..Default::default()
                },
            )
            .as_union_value()
        }),
        response_frame(Api::ListTopics, 5, |fbb| {
            let name = fbb.create_string(TOPIC);
            let listing = TopicListing::create(
                fbb,
                &TopicListingArgs {
                    name: Some(name),
                    partitions: 12,
                    replication_factor: 3,
                },
            );
            let topics = fbb.create_vector(&[listing]);
            ListTopicsResponse::create(
                fbb,
                &ListTopicsResponseArgs {
                    topics: Some(topics),
                    ..Default::default()
                },
            )
            .as_union_value()
        }),
        response_frame(Api::Produce, 6, |fbb| {
            let topic = fbb.create_shared_string(TOPIC);
            let appended = ProducePartitionResponse::create(
                fbb,
                &ProducePartitionResponseArgs {
                    topic: Some(topic),
                    partition: 0,
                    base_offset: 1_000,
                    log_start_offset: 0,
                    ..Default::default()
                },
            );
            let hint = leader_hint(fbb);
            let topic = fbb.create_shared_string(TOPIC);
            let moved = ProducePartitionResponse::create(
                fbb,
                &ProducePartitionResponseArgs {
                    topic: Some(topic),
                    partition: 1,
                    error_code: ErrorCode::NotLeader,
                    leader_hint: Some(hint),
                    ..Default::default()
                },
            );
            let partitions = fbb.create_vector(&[appended, moved]);
            ProduceResponse::create(
                fbb,
                &ProduceResponseArgs {
                    partitions: Some(partitions),
                    ..Default::default()
                },
            )
            .as_union_value()
        }),
        response_frame(Api::Fetch, 7, |fbb| {
            let topic = fbb.create_shared_string(TOPIC);
            let records = fbb.create_vector(&fetched);
            let item = FetchPartitionResponse::create(
                fbb,
                &FetchPartitionResponseArgs {
                    topic: Some(topic),
                    partition: 0,
                    high_watermark: 103,
                    log_start_offset: 0,
                    records: Some(records),
                    ..Default::default()
                },
            );
            let partitions = fbb.create_vector(&[item]);
            FetchResponse::create(
                fbb,
                &FetchResponseArgs {
                    partitions: Some(partitions),
                    ..Default::default()
                },
            )
            .as_union_value()
        }),
        response_frame(Api::ListOffsets, 8, |fbb| {
            let topic = fbb.create_shared_string(TOPIC);
            let hint = leader_hint(fbb);
            let item = ListOffsetsPartitionResponse::create(
                fbb,
                &ListOffsetsPartitionResponseArgs {
                    topic: Some(topic),
                    partition: 0,
                    offset: 100,
                    timestamp_ms: BASE_TIMESTAMP,
                    leader_hint: Some(hint),
                    ..Default::default()
                },
            );
            let partitions = fbb.create_vector(&[item]);
            ListOffsetsResponse::create(
                fbb,
                &ListOffsetsResponseArgs {
                    partitions: Some(partitions),
                    ..Default::default()
                },
            )
            .as_union_value()
        }),
        response_frame(Api::DescribeCluster, 9, |fbb| {
            let host = fbb.create_string("127.0.0.1");
            let inter = fbb.create_string("127.0.0.1:19001");
            let ports = fbb.create_vector(&[9100u16, 9101]);
            let broker = BrokerDescription::create(
                fbb,
                &BrokerDescriptionArgs {
                    node_id: 1,
                    host: Some(host),
                    port: 9100,
                    shard_ports: Some(ports),
                    inter_broker_address: Some(inter),
                    status: BrokerStatus::Failed,
                    incarnation: 0xfeed,
                    controller_voter: true,
                },
            );
            let brokers = fbb.create_vector(&[broker]);
            let cluster = fbb.create_string("cluster-a");
            DescribeClusterResponse::create(
                fbb,
                &DescribeClusterResponseArgs {
                    cluster_id: Some(cluster),
                    controller_id: 1,
                    controller_term: 4,
                    metadata_version: 17,
                    brokers: Some(brokers),
                    answered_by: 2,
                    ..Default::default()
                },
            )
            .as_union_value()
        }),
        response_frame(Api::DescribeReplicas, 10, |fbb| {
            let topic = fbb.create_string(TOPIC);
            let replica = ReplicaDescription::create(
                fbb,
                &ReplicaDescriptionArgs {
                    topic: Some(topic),
                    partition: 1,
                    shard: 1,
                    role: ReplicaRole::Leader,
                    term: 3,
                    leader_node_id: 2,
                    last_index: 40,
                    commit_index: 39,
                    high_watermark: 120,
                    log_start_offset: 0,
                    first_index: 1,
                    log_end_offset: 121,
                },
            );
            let replicas = fbb.create_vector(&[replica]);
            DescribeReplicasResponse::create(
                fbb,
                &DescribeReplicasResponseArgs {
                    node_id: 2,
                    replicas: Some(replicas),
                    ..Default::default()
                },
            )
            .as_union_value()
        }),
        response_frame(Api::TransferLeader, 11, |fbb| {
            TransferLeaderResponse::create(
                fbb,
                &TransferLeaderResponseArgs {
                    leader_node_id: 3,
                    ..Default::default()
                },
            )
            .as_union_value()
        }),
    ]
}

// ---------------------------------------------------------------------------
// Reading every field
// ---------------------------------------------------------------------------

/// Folds every value read into one number, so reading all fields of a frame
/// is one call and nothing read can be optimised away.
#[derive(Default)]
struct Reader(u64);

impl Reader {
    fn int(&mut self, value: impl Into<i64>) {
        self.0 = self.0.wrapping_mul(31).wrapping_add(value.into() as u64);
    }

    fn bytes(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => self.int(-1),
            Some(bytes) => {
                self.int(i64::try_from(bytes.len()).unwrap_or(i64::MAX));
                bytes.iter().for_each(|&byte| self.int(byte));
            }
        }
    }

    fn str(&mut self, text: Option<&str>) {
        self.bytes(text.map(str::as_bytes));
    }

    fn error(&mut self, code: ErrorCode, message: Option<&str>) {
        self.int(code.0);
        self.str(message);
    }

    fn leader_hint(&mut self, hint: Option<LeaderHint<'_>>) {
        if let Some(hint) = hint {
            self.int(hint.node_id());
            self.str(hint.host());
            self.int(hint.shard());
            self.int(hint.shard_port());
            self.int(hint.leader_epoch());
        }
    }

    fn strings(
        &mut self,
        strings: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<&str>>>,
    ) {
        for text in strings.into_iter().flatten() {
            self.str(Some(text));
        }
    }

    fn request(&mut self, request: Request<'_>) {
        let header = request.header();
        self.int(i64::from_ne_bytes(header.correlation_id().to_ne_bytes()));
        self.int(header.api().0);
        self.int(header.version());
        self.str(header.client_id());
        self.int(request.body_type().0);
        if let Some(body) = request.body_as_metadata_request() {
            self.strings(body.topics());
        }
        if let Some(body) = request.body_as_create_topics_request() {
            self.int(body.timeout_ms());
            self.int(body.validate_only());
            for topic in body.topics().into_iter().flatten() {
                self.str(Some(topic.name()));
                self.int(topic.partitions());
                self.int(topic.replication_factor());
                for config in topic.configs().into_iter().flatten() {
                    self.str(Some(config.key()));
                    self.str(config.value());
                }
            }
        }
        if let Some(body) = request.body_as_delete_topics_request() {
            self.strings(body.names());
            self.int(body.timeout_ms());
        }
        if let Some(body) = request.body_as_produce_request() {
            self.int(body.acks().0);
            self.int(body.timeout_ms());
            for item in body.partitions().into_iter().flatten() {
                self.str(Some(item.topic()));
                self.int(item.partition());
                self.bytes(Some(item.records().bytes()));
            }
        }
        if let Some(body) = request.body_as_fetch_request() {
            self.int(body.max_wait_ms());
            self.int(body.min_bytes());
            self.int(body.max_bytes());
            for item in body.partitions().into_iter().flatten() {
                self.str(Some(item.topic()));
                self.int(item.partition());
                self.int(item.offset());
                self.int(item.max_bytes());
            }
        }
        if let Some(body) = request.body_as_list_offsets_request() {
            for item in body.partitions().into_iter().flatten() {
                self.str(Some(item.topic()));
                self.int(item.partition());
                self.int(item.spec().0);
                self.int(item.timestamp_ms());
            }
        }
        if let Some(body) = request.body_as_describe_replicas_request() {
            self.strings(body.topics());
        }
        if let Some(body) = request.body_as_transfer_leader_request() {
            self.str(Some(body.topic()));
            self.int(body.partition());
            self.int(body.to_node_id());
            self.int(body.timeout_ms());
        }
        self.int(request.body_as_describe_cluster_request().is_some());
        // ApiVersions and ListTopics requests have no fields.
        self.int(request.body_as_api_versions_request().is_some());
        self.int(request.body_as_list_topics_request().is_some());
    }

    fn response(&mut self, response: Response<'_>) {
        let header = response.header();
        self.int(i64::from_ne_bytes(header.correlation_id().to_ne_bytes()));
        self.int(header.api().0);
        self.int(header.version());
        self.int(header.throttle_time_ms());
        self.error(response.error_code(), response.error_message());
        self.int(response.body_type().0);
        if let Some(body) = response.body_as_api_versions_response() {
            self.error(body.error_code(), body.error_message());
            for range in body.apis().into_iter().flatten() {
                self.int(range.api().0);
                self.int(range.min_version());
                self.int(range.max_version());
            }
        }
        if let Some(body) = response.body_as_metadata_response() {
            self.error(body.error_code(), body.error_message());
            for broker in body.brokers().into_iter().flatten() {
                self.int(broker.node_id());
                self.str(broker.host());
                self.int(broker.port());
            }
            for topic in body.topics().into_iter().flatten() {
                self.error(topic.error_code(), topic.error_message());
                self.str(Some(topic.name()));
                for partition in topic.partitions().into_iter().flatten() {
                    self.error(partition.error_code(), partition.error_message());
                    self.int(partition.partition());
                    self.int(partition.leader_node_id());
                    self.int(partition.leader_shard());
                    self.int(partition.shard_port());
                    for replica in partition.replica_node_ids().into_iter().flatten() {
                        self.int(replica);
                    }
                    self.int(partition.leader_epoch());
                }
            }
        }
        if let Some(body) = response.body_as_create_topics_response() {
            self.error(body.error_code(), body.error_message());
            for topic in body.topics().into_iter().flatten() {
                self.str(Some(topic.name()));
                self.error(topic.error_code(), topic.error_message());
            }
        }
        if let Some(body) = response.body_as_delete_topics_response() {
            self.error(body.error_code(), body.error_message());
            for topic in body.topics().into_iter().flatten() {
                self.str(Some(topic.name()));
                self.error(topic.error_code(), topic.error_message());
            }
        }
        if let Some(body) = response.body_as_list_topics_response() {
            self.error(body.error_code(), body.error_message());
            for topic in body.topics().into_iter().flatten() {
                self.str(Some(topic.name()));
                self.int(topic.partitions());
                self.int(topic.replication_factor());
            }
        }
        if let Some(body) = response.body_as_produce_response() {
            self.error(body.error_code(), body.error_message());
            for item in body.partitions().into_iter().flatten() {
                self.str(Some(item.topic()));
                self.int(item.partition());
                self.error(item.error_code(), item.error_message());
                self.int(item.base_offset());
                self.int(item.log_append_time_ms());
                self.int(item.log_start_offset());
                self.leader_hint(item.leader_hint());
            }
        }
        if let Some(body) = response.body_as_fetch_response() {
            self.error(body.error_code(), body.error_message());
            for item in body.partitions().into_iter().flatten() {
                self.str(Some(item.topic()));
                self.int(item.partition());
                self.error(item.error_code(), item.error_message());
                self.int(item.high_watermark());
                self.int(item.log_start_offset());
                self.bytes(item.records().map(|records| records.bytes()));
                self.leader_hint(item.leader_hint());
            }
        }
        if let Some(body) = response.body_as_list_offsets_response() {
            self.error(body.error_code(), body.error_message());
            for item in body.partitions().into_iter().flatten() {
                self.str(Some(item.topic()));
                self.int(item.partition());
                self.error(item.error_code(), item.error_message());
                self.int(item.offset());
                self.int(item.timestamp_ms());
                self.leader_hint(item.leader_hint());
            }
        }
        if let Some(body) = response.body_as_describe_cluster_response() {
            self.error(body.error_code(), body.error_message());
            self.str(body.cluster_id());
            self.int(body.controller_id());
            self.int(body.controller_term() as i64);
            self.int(body.metadata_version() as i64);
            self.int(body.answered_by());
            for broker in body.brokers().into_iter().flatten() {
                self.int(broker.node_id());
                self.str(broker.host());
                self.int(broker.port());
                for port in broker.shard_ports().into_iter().flatten() {
                    self.int(port);
                }
                self.str(broker.inter_broker_address());
                self.int(broker.status().0);
                self.int(broker.incarnation() as i64);
                self.int(broker.controller_voter());
            }
        }
        if let Some(body) = response.body_as_describe_replicas_response() {
            self.error(body.error_code(), body.error_message());
            self.int(body.node_id());
            for r in body.replicas().into_iter().flatten() {
                self.str(Some(r.topic()));
                self.int(r.partition());
                self.int(r.shard());
                self.int(r.role().0);
                self.int(r.term() as i64);
                self.int(r.leader_node_id());
                self.int(r.first_index() as i64);
                self.int(r.last_index() as i64);
                self.int(r.commit_index() as i64);
                self.int(r.high_watermark());
                self.int(r.log_start_offset());
                self.int(r.log_end_offset());
            }
        }
        if let Some(body) = response.body_as_transfer_leader_response() {
            self.error(body.error_code(), body.error_message());
            self.int(body.leader_node_id());
        }
    }
}

/// True if `inner` lies entirely inside `outer` (same memory, not a copy).
fn borrowed_from(inner: &[u8], outer: &[u8]) -> bool {
    let outer = outer.as_ptr_range();
    let inner = inner.as_ptr_range();
    outer.start <= inner.start && inner.end <= outer.end
}

/// Splits concatenated record batches by their `batchLength` fields.
fn split_batches(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut batches = Vec::new();
    while !bytes.is_empty() {
        let header = BatchHeader::decode(bytes).expect("batch header");
        let (batch, rest) = bytes.split_at(header.total_bytes());
        batches.push(batch);
        bytes = rest;
    }
    batches
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

#[test]
fn produce_request_round_trips_with_records_borrowed_from_the_frame() {
    let first = record_batch(0, &[b"alpha", b"beta", b"gamma"]);
    let second = record_batch(0, &[&[0xAB; 3000]]);
    let frame = produce_request(&[(3, &first), (7, &second)]);

    // The frame is the length prefix and the flatbuffer, with the identifier.
    let declared = u32::from_le_bytes(frame[..4].try_into().unwrap());
    assert_eq!(declared as usize, frame.len() - FRAME_PREFIX_BYTES);
    assert_eq!(
        frame_len([frame[0], frame[1], frame[2], frame[3]]),
        Ok(frame.len())
    );
    assert_eq!(&frame[8..12], FILE_IDENTIFIER.as_bytes());
    assert!(request_size_prefixed_buffer_has_identifier(&frame));

    // The generic verified getter with the protocol's limits and the helper
    // agree.
    let via_flatbuffers =
        flatbuffers::size_prefixed_root_with_opts::<Request<'_>>(&VERIFIER_OPTIONS, &frame)
            .expect("verifies");
    let request = verify_request(&frame).expect("verifies");
    assert_eq!(via_flatbuffers.header().correlation_id(), 6);

    let header = request.header();
    assert_eq!(header.correlation_id(), 6);
    assert_eq!(header.api(), Api::Produce);
    assert_eq!(header.version(), 0);
    assert_eq!(header.client_id(), Some("test-client"));
    assert_eq!(request.body_type(), RequestBody::ProduceRequest);
    assert_eq!(header.api().request_body_type(), Some(request.body_type()));
    assert!(request.body_as_fetch_request().is_none());

    let produce = request.body_as_produce_request().expect("produce body");
    assert_eq!(produce.acks(), Acks::All);
    assert_eq!(produce.timeout_ms(), 30_000);
    let items = produce.partitions().expect("partitions");
    assert_eq!(items.len(), 2);
    for (item, (partition, sent)) in items.iter().zip([(3, &first), (7, &second)]) {
        assert_eq!(item.topic(), TOPIC);
        assert_eq!(item.partition(), partition);
        let records = item.records().bytes();
        assert_eq!(records, sent.as_slice(), "byte-identical batch");
        assert!(
            borrowed_from(records, &frame),
            "the batch is read in place, not copied"
        );
        let batch = RecordBatchView::parse_verified(records).expect("valid batch, crc included");
        assert_eq!(batch.as_bytes().as_ptr(), records.as_ptr());
        assert_eq!(
            batch.records().count(),
            RecordBatchView::parse(sent).unwrap().records().count()
        );
    }
    // Both items share one copy of the topic name.
    let topics: Vec<*const u8> = items.iter().map(|item| item.topic().as_ptr()).collect();
    assert_eq!(topics[0], topics[1]);
}

#[test]
fn every_api_round_trips_in_both_directions() {
    let requests = sample_requests();
    let responses = sample_responses();
    assert_eq!(requests.len(), Api::ENUM_VALUES.len());
    assert_eq!(responses.len(), Api::ENUM_VALUES.len());
    for ((api, request), response) in Api::ENUM_VALUES.iter().zip(&requests).zip(&responses) {
        let request = verify_request(request)
            .unwrap_or_else(|error| panic!("{api:?} request does not verify: {error}"));
        assert_eq!(request.header().api(), *api);
        assert_eq!(Some(request.body_type()), api.request_body_type());
        assert!(request.body().is_some(), "{api:?} request body");
        Reader::default().request(request);

        let response = verify_response(response)
            .unwrap_or_else(|error| panic!("{api:?} response does not verify: {error}"));
        assert_eq!(response.header().api(), *api);
        assert_eq!(
            response.header().correlation_id(),
            request.header().correlation_id()
        );
        assert_eq!(Some(response.body_type()), api.response_body_type());
        assert_eq!(response.error_code(), ErrorCode::None);
        assert!(response.body().is_some(), "{api:?} response body");
        Reader::default().response(response);
    }
}

#[test]
fn fetch_response_carries_concatenated_batches_in_place() {
    let responses = sample_responses();
    let frame = &responses[Api::Fetch.0 as usize];
    let response = verify_response(frame).expect("verifies");
    let fetch = response.body_as_fetch_response().expect("fetch body");
    let item = fetch.partitions().expect("partitions").get(0);
    assert_eq!(item.error_code(), ErrorCode::None);
    assert_eq!(item.high_watermark(), 103);
    assert_eq!(item.log_start_offset(), 0);
    assert!(item.leader_hint().is_none());
    let records = item.records().expect("records").bytes();
    assert!(borrowed_from(records, frame));

    let batches = split_batches(records);
    assert_eq!(batches.len(), 2);
    let offsets: Vec<i64> = batches
        .iter()
        .flat_map(|bytes| {
            let batch = RecordBatchView::parse_verified(bytes).expect("valid batch");
            batch
                .records()
                .map(|record| batch.record_offset(&record.expect("record")))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(offsets, [100, 101, 102]);
}

#[test]
fn produce_response_carries_offsets_and_a_leader_hint() {
    let responses = sample_responses();
    let response = verify_response(&responses[Api::Produce.0 as usize]).expect("verifies");
    let produce = response.body_as_produce_response().expect("produce body");
    let items = produce.partitions().expect("partitions");

    let appended = items.get(0);
    assert_eq!(appended.error_code(), ErrorCode::None);
    assert_eq!(appended.base_offset(), 1_000);
    assert_eq!(appended.log_append_time_ms(), -1, "absent: the default");
    assert_eq!(appended.log_start_offset(), 0);

    let moved = items.get(1);
    assert_eq!(moved.error_code(), ErrorCode::NotLeader);
    assert!(moved.error_code().is_retriable());
    assert_eq!(moved.base_offset(), -1);
    let hint = moved.leader_hint().expect("leader hint");
    assert_eq!(
        (
            hint.node_id(),
            hint.host(),
            hint.shard(),
            hint.shard_port(),
            hint.leader_epoch()
        ),
        (2, Some("broker-2.local"), 5, 9105, 7)
    );
}

#[test]
fn metadata_response_describes_brokers_partitions_and_leaders() {
    let responses = sample_responses();
    let response = verify_response(&responses[Api::Metadata.0 as usize]).expect("verifies");
    let metadata = response.body_as_metadata_response().expect("metadata body");
    let broker = metadata.brokers().expect("brokers").get(0);
    assert_eq!(
        (broker.node_id(), broker.host(), broker.port()),
        (1, Some("broker-1.local"), 9100)
    );

    let topics = metadata.topics().expect("topics");
    let topic = topics.get(0);
    assert_eq!(topic.name(), TOPIC);
    let partitions = topic.partitions().expect("partitions");
    let led = partitions.get(0);
    assert_eq!(
        (
            led.partition(),
            led.leader_node_id(),
            led.leader_shard(),
            led.shard_port(),
            led.leader_epoch()
        ),
        (0, 1, 3, 9103, 9)
    );
    assert_eq!(
        led.replica_node_ids()
            .expect("replicas")
            .iter()
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let leaderless = partitions.get(1);
    assert_eq!(leaderless.error_code(), ErrorCode::LeaderNotAvailable);
    assert_eq!(leaderless.leader_node_id(), -1, "absent: no leader");

    let missing = topics.get(1);
    assert_eq!(missing.error_code(), ErrorCode::UnknownTopic);
    assert!(missing.partitions().is_none());
}

#[test]
fn absent_fields_read_as_their_documented_defaults() {
    let requests = sample_requests();
    let request = verify_request(&requests[Api::CreateTopics.0 as usize]).expect("verifies");
    let create = request
        .body_as_create_topics_request()
        .expect("create body");
    let topics = create.topics().expect("topics");
    assert_eq!(
        (
            topics.get(0).partitions(),
            topics.get(0).replication_factor()
        ),
        (12, 3)
    );
    let defaulted = topics.get(1);
    assert_eq!(defaulted.name(), "defaults");
    assert_eq!(defaulted.partitions(), -1, "broker default");
    assert_eq!(defaulted.replication_factor(), -1, "broker default");
    assert!(defaulted.configs().is_none());

    // A Produce request that does not say its acks waits for all replicas.
    let frame = request_frame(Api::Produce, 1, |fbb| {
        ProduceRequest::create(fbb, &ProduceRequestArgs::default()).as_union_value()
    });
    let request = verify_request(&frame).expect("verifies");
    assert_eq!(request.body_as_produce_request().unwrap().acks(), Acks::All);
}

#[test]
fn an_envelope_error_response_has_no_body() {
    let mut fbb = FlatBufferBuilder::new();
    let header = ResponseHeader::create(
        &mut fbb,
        &ResponseHeaderArgs {
            correlation_id: 0,
            api: Api(999),
            ..Default::default()
        },
    );
    let message = fbb.create_string("unknown api 999");
    let root = Response::create(
        &mut fbb,
        &ResponseArgs {
            header: Some(header),
            error_code: ErrorCode::UnknownApi,
            error_message: Some(message),
            ..Default::default()
        },
    );
    let frame = finish_response_frame(&mut fbb, root);
    let response = verify_response(frame).expect("verifies");
    assert_eq!(response.error_code(), ErrorCode::UnknownApi);
    assert_eq!(response.error_message(), Some("unknown api 999"));
    assert_eq!(response.body_type(), ResponseBody::NONE);
    assert!(response.body().is_none());
    assert_eq!(response.header().api().request_body_type(), None);
}

// ---------------------------------------------------------------------------
// Frame checks and limits
// ---------------------------------------------------------------------------

#[test]
fn frames_with_a_wrong_length_or_identifier_are_rejected() {
    let frame = &sample_requests()[0];
    assert!(verify_request(frame).is_ok());

    assert!(matches!(
        verify_request(&[]),
        Err(FrameError::TooShort { len: 0 })
    ));
    assert!(matches!(
        verify_request(&frame[..3]),
        Err(FrameError::TooShort { len: 3 })
    ));
    // A prefix too small for any flatbuffer.
    assert!(matches!(
        verify_request(&[4, 0, 0, 0, 4, 0, 0, 0]),
        Err(FrameError::TooShort { len: 8 })
    ));
    assert!(matches!(
        verify_response(&[8, 0, 0, 0, 4, 0, 0, 0]),
        Err(FrameError::LengthMismatch {
            declared: 8,
            actual: 4
        })
    ));

    // Truncated, or followed by bytes the prefix does not count.
    let body = frame.len() - FRAME_PREFIX_BYTES;
    assert!(matches!(
        verify_request(&frame[..frame.len() - 1]),
        Err(FrameError::LengthMismatch { declared, actual }) if declared == body && actual == body - 1
    ));
    let mut longer = frame.clone();
    longer.push(0);
    assert!(matches!(
        verify_request(&longer),
        Err(FrameError::LengthMismatch { declared, actual }) if declared == body && actual == body + 1
    ));

    let mut foreign = frame.clone();
    foreign[8..12].copy_from_slice(b"KAFK");
    assert_eq!(
        verify_request(&foreign).map(|_| ()),
        Err(FrameError::BadIdentifier(*b"KAFK"))
    );
}

#[test]
fn frame_len_bounds_a_frame_before_it_is_read() {
    assert_eq!(frame_len(8u32.to_le_bytes()), Ok(FRAME_MIN_BYTES));
    assert_eq!(
        frame_len(7u32.to_le_bytes()),
        Err(FrameError::TooShort { len: 11 })
    );
    let largest = u32::try_from(MAX_FRAME_BYTES - FRAME_PREFIX_BYTES).unwrap();
    assert_eq!(frame_len(largest.to_le_bytes()), Ok(MAX_FRAME_BYTES));
    assert_eq!(
        frame_len((largest + 1).to_le_bytes()),
        Err(FrameError::TooLarge {
            len: MAX_FRAME_BYTES + 1
        })
    );
    assert!(matches!(
        frame_len(u32::MAX.to_le_bytes()),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn the_flatbuffer_is_verified_with_its_length_prefix_in_front() {
    // The builder aligns 8-byte fields to the start of the frame, so without
    // its prefix the flatbuffer's u64 correlation id sits 4 bytes off.
    let frame = &sample_requests()[Api::Produce.0 as usize];
    let unprefixed =
        flatbuffers::root_with_opts::<Request<'_>>(&VERIFIER_OPTIONS, &frame[FRAME_PREFIX_BYTES..]);
    assert!(
        matches!(unprefixed, Err(InvalidFlatbuffer::Unaligned { .. })),
        "{unprefixed:?}"
    );
}

#[test]
fn a_request_without_its_required_header_is_rejected() {
    // An empty table where a Request should be: the builder of Request
    // refuses to omit the header, so write some other table as the root.
    let mut fbb = FlatBufferBuilder::new();
    let root = ApiVersionsRequest::create(&mut fbb, &ApiVersionsRequestArgs {});
    fbb.finish_size_prefixed(root, Some(FILE_IDENTIFIER));
    let result = verify_request(fbb.finished_data());
    assert!(
        matches!(
            result,
            Err(FrameError::Invalid(
                InvalidFlatbuffer::MissingRequiredField { .. }
            ))
        ),
        "{result:?}"
    );
}

#[test]
fn verification_refuses_more_tables_than_max_tables() {
    let build = |partition_count: usize| {
        response_frame(Api::Metadata, 1, |fbb| {
            let items: Vec<_> = (0..partition_count)
                .map(|partition| {
                    PartitionMetadata::create(
                        fbb,
                        &PartitionMetadataArgs {
                            partition: i32::try_from(partition).unwrap(),
                            ..Default::default()
                        },
                    )
                })
                .collect();
            let partitions = fbb.create_vector(&items);
            let name = fbb.create_string(TOPIC);
            let topic = TopicMetadata::create(
                fbb,
                &TopicMetadataArgs {
                    name: Some(name),
                    partitions: Some(partitions),
                    ..Default::default()
                },
            );
            let topics = fbb.create_vector(&[topic]);
            MetadataResponse::create(
                fbb,
                &MetadataResponseArgs {
                    topics: Some(topics),
                    ..Default::default()
                },
            )
            .as_union_value()
        })
    };
    // Response, its header, MetadataResponse and TopicMetadata come on top
    // of the partitions.
    let fits = build(MAX_TABLES - 4);
    assert!(verify_response(&fits).is_ok());
    let too_many = build(MAX_TABLES - 3);
    assert_eq!(
        verify_response(&too_many).map(|_| ()),
        Err(FrameError::Invalid(InvalidFlatbuffer::TooManyTables))
    );
}

#[test]
fn verification_refuses_a_small_frame_that_expands_past_max_apparent_bytes() {
    // One 1 MiB string referenced many times: small on the wire, large to
    // walk.
    const STRING_BYTES: usize = 1 << 20;
    let build = |references: usize| {
        request_frame(Api::Metadata, 1, |fbb| {
            let name = fbb.create_string(&"t".repeat(STRING_BYTES));
            let topics = fbb.create_vector(&vec![name; references]);
            MetadataRequest::create(
                fbb,
                &MetadataRequestArgs {
                    topics: Some(topics),
                },
            )
            .as_union_value()
        })
    };
    let within = MAX_APPARENT_BYTES / STRING_BYTES - 1;
    let frame = build(within);
    assert!(frame.len() < 2 * STRING_BYTES);
    assert!(verify_request(&frame).is_ok());

    let frame = build(MAX_APPARENT_BYTES / STRING_BYTES + 1);
    assert!(frame.len() < 2 * STRING_BYTES);
    assert_eq!(
        verify_request(&frame).map(|_| ()),
        Err(FrameError::Invalid(InvalidFlatbuffer::ApparentSizeTooLarge))
    );
}

// ---------------------------------------------------------------------------
// Codes
// ---------------------------------------------------------------------------

/// The wire value of every error code. A test of the schema, not of this
/// list: if it fails, the schema renumbered a code, which it must never do.
const ERROR_CODES: &[(&str, i16)] = &[
    ("None", 0),
    ("Unknown", 1),
    ("CorruptFrame", 2),
    ("UnsupportedVersion", 3),
    ("UnknownApi", 4),
    ("InvalidRequest", 5),
    ("UnknownTopic", 6),
    ("UnknownPartition", 7),
    ("TopicAlreadyExists", 8),
    ("InvalidTopicName", 9),
    ("InvalidPartitions", 10),
    ("InvalidReplicationFactor", 11),
    ("NotLeader", 12),
    ("RequestTimedOut", 13),
    ("CorruptBatch", 14),
    ("RecordTooLarge", 15),
    ("BatchTooLarge", 16),
    ("OffsetOutOfRange", 17),
    ("StorageError", 18),
    ("BrokerShuttingDown", 19),
    ("Throttled", 20),
    ("LeaderNotAvailable", 21),
    ("NotEnoughReplicas", 22),
    ("InvalidConfig", 23),
    ("InvalidBroker", 24),
];

#[test]
fn codes_keep_their_wire_values() {
    for &(name, value) in ERROR_CODES {
        assert_eq!(
            ErrorCode(value).variant_name(),
            Some(name),
            "ErrorCode {value}"
        );
    }
    assert_eq!(
        ErrorCode::ENUM_VALUES.len(),
        ERROR_CODES.len(),
        "a new ErrorCode: add it at the end of ERROR_CODES"
    );

    let apis = [
        "ApiVersions",
        "Metadata",
        "CreateTopics",
        "DeleteTopics",
        "ListTopics",
        "Produce",
        "Fetch",
        "ListOffsets",
        "DescribeCluster",
        "DescribeReplicas",
        "TransferLeader",
    ];
    for (value, name) in (0u16..).zip(apis) {
        assert_eq!(Api(value).variant_name(), Some(name), "Api {value}");
    }
    assert_eq!(Api::ENUM_VALUES.len(), apis.len(), "a new Api: add it here");

    assert_eq!((Acks::None.0, Acks::Leader.0, Acks::All.0), (0, 1, -1));
    assert_eq!(
        (
            OffsetSpec::Earliest.0,
            OffsetSpec::Latest.0,
            OffsetSpec::Timestamp.0
        ),
        (0, 1, 2)
    );
    assert_eq!(FILE_IDENTIFIER, "SMQ1");
}

#[test]
fn body_unions_list_the_apis_in_order() {
    for &api in Api::ENUM_VALUES {
        let name = api.variant_name().unwrap();
        let request = api.request_body_type().unwrap();
        let response = api.response_body_type().unwrap();
        assert_eq!(u16::from(request.0), api.0 + 1, "{name}");
        assert_eq!(u16::from(response.0), api.0 + 1, "{name}");
        assert_eq!(request.variant_name().unwrap(), format!("{name}Request"));
        assert_eq!(response.variant_name().unwrap(), format!("{name}Response"));
    }
    assert_eq!(RequestBody::ENUM_VALUES.len(), Api::ENUM_VALUES.len() + 1);
    assert_eq!(ResponseBody::ENUM_VALUES.len(), Api::ENUM_VALUES.len() + 1);
    assert_eq!(Api(Api::ENUM_MAX + 1).request_body_type(), None);
    assert_eq!(Api(Api::ENUM_MAX + 1).response_body_type(), None);
}

#[test]
fn retriable_codes_are_the_transient_ones() {
    let retriable: BTreeSet<&str> = ErrorCode::ENUM_VALUES
        .iter()
        .filter(|code| code.is_retriable())
        .map(|code| code.variant_name().unwrap())
        .collect();
    assert_eq!(
        retriable,
        BTreeSet::from([
            "NotLeader",
            "LeaderNotAvailable",
            "RequestTimedOut",
            "NotEnoughReplicas",
            "BrokerShuttingDown",
            "Throttled",
        ])
    );
    assert!(!ErrorCode(i16::MAX).is_retriable(), "unknown codes are not");
}

// ---------------------------------------------------------------------------
// No bytes make the reader panic
// ---------------------------------------------------------------------------

/// Runs every getter on `bytes`, and reads every field of what verifies.
fn read_untrusted(bytes: &[u8]) {
    let mut reader = Reader::default();
    if let Ok(request) = verify_request(bytes) {
        reader.request(request);
    }
    if let Ok(response) = verify_response(bytes) {
        reader.response(response);
    }
    if let Ok(request) = flatbuffers::root_with_opts::<Request<'_>>(&VERIFIER_OPTIONS, bytes) {
        reader.request(request);
    }
    if let Ok(response) = flatbuffers::root_with_opts::<Response<'_>>(&VERIFIER_OPTIONS, bytes) {
        reader.response(response);
    }
    if let Ok(request) =
        flatbuffers::size_prefixed_root_with_opts::<Request<'_>>(&VERIFIER_OPTIONS, bytes)
    {
        reader.request(request);
    }
    if let Ok(response) =
        flatbuffers::size_prefixed_root_with_opts::<Response<'_>>(&VERIFIER_OPTIONS, bytes)
    {
        reader.response(response);
    }
    if let Ok(&[a, b, c, d]) = <&[u8; 4]>::try_from(bytes.get(..4).unwrap_or_default()) {
        let _ = black_box(frame_len([a, b, c, d]));
    }
    black_box(reader.0);
}

/// Every sample frame, requests and responses.
fn sample_frames() -> Vec<Vec<u8>> {
    let mut frames = sample_requests();
    frames.extend(sample_responses());
    frames
}

#[test]
fn every_sample_frame_reads_cleanly() {
    for frame in sample_frames() {
        read_untrusted(&frame);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
        read_untrusted(&bytes);
    }

    /// Random bytes behind a valid prefix and identifier, so they reach the
    /// flatbuffer verifier instead of failing the frame checks.
    #[test]
    fn arbitrary_flatbuffers_in_a_valid_frame_never_panic(
        root in 0u32..256,
        tail in vec(any::<u8>(), 0..600),
    ) {
        let mut frame = Vec::with_capacity(FRAME_MIN_BYTES + tail.len());
        let body_len = u32::try_from(8 + tail.len()).unwrap();
        frame.extend_from_slice(&body_len.to_le_bytes());
        frame.extend_from_slice(&root.to_le_bytes());
        frame.extend_from_slice(FILE_IDENTIFIER.as_bytes());
        frame.extend_from_slice(&tail);
        read_untrusted(&frame);
    }

    /// A valid frame of any api with bytes overwritten, then possibly cut
    /// short: the damage a verifier meets in practice.
    #[test]
    fn damaged_frames_never_panic(
        which in any::<prop::sample::Index>(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let frames = sample_frames();
        let mut frame = which.get(&frames).clone();
        for (at, byte) in edits {
            let at = at.index(frame.len());
            frame[at] = byte;
        }
        read_untrusted(&frame);
        if truncate {
            frame.truncate(cut.index(frame.len()));
            read_untrusted(&frame);
        }
    }
}
