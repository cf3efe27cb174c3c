//! A small in-memory broker speaking the real protocol over TCP, for the
//! SDK's tests: one node with two "shards" (two listeners); partition `p`
//! belongs to shard `p % 2`, and produce, fetch and list-offsets requests
//! reaching the other shard get NotLeader, so tests also check that the
//! SDK routes by shard port.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use shardmq_client::producer::now_ms;
use shardmq_net::{Frame, FrameDecoder, RequestFrame, RequestKey};
use shardmq_schema::batch::{stamp, RecordBatchView};
use shardmq_schema::protocol::{self as wire, Api, ErrorCode, OffsetSpec, ResponseBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::Instant;

pub const SHARDS: usize = 2;

#[derive(Debug, Default)]
struct Topic {
    replication_factor: i16,
    /// Stored batches per partition, stamped.
    logs: Vec<Vec<Vec<u8>>>,
    next_offsets: Vec<i64>,
}

/// What the mock does besides answering correctly.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// The first produce to each of these partitions gets NotLeader.
    pub not_leader_once: HashSet<(String, i32)>,
    /// ListTopics requests are never answered.
    pub black_hole_list_topics: bool,
    /// ListTopics requests are held until this many are held on the
    /// connection, then all answered, newest first.
    pub gate_list_topics: Option<usize>,
    /// Each Produce request is held this long before it is executed and
    /// answered, as a slow broker would.
    pub produce_delay: Duration,
}

#[derive(Debug)]
pub struct State {
    topics: Mutex<BTreeMap<String, Topic>>,
    pub ports: Vec<u16>,
    pub behaviour: Mutex<Behaviour>,
    counts: Mutex<HashMap<u16, usize>>,
    /// The items (topic, partition) of each Produce request, in the order
    /// the requests were executed.
    produce_log: Mutex<Vec<Vec<(String, i32)>>>,
    /// Notified on each request received.
    pub received: Notify,
    /// Notified on each append, for long polls.
    appended: Notify,
    kill: broadcast::Sender<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Requests of `api` received so far.
    pub fn count(&self, api: Api) -> usize {
        lock(&self.counts).get(&api.0).copied().unwrap_or(0)
    }

    /// Waits until `count(api) >= n` (no sleeping: woken on each request).
    pub async fn wait_count(&self, api: Api, n: usize) {
        loop {
            let notified = self.received.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count(api) >= n {
                return;
            }
            notified.await;
        }
    }

    /// The items (topic, partition) of each Produce request executed so
    /// far, in order.
    pub fn produce_requests(&self) -> Vec<Vec<(String, i32)>> {
        lock(&self.produce_log).clone()
    }

    /// Closes every open connection.
    pub fn kill_connections(&self) {
        let _ = self.kill.send(());
    }
}

#[derive(Debug)]
pub struct MockBroker {
    pub state: Arc<State>,
}

impl MockBroker {
    pub async fn start() -> Self {
        let mut listeners = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..SHARDS {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(listener.local_addr().unwrap().port());
            listeners.push(listener);
        }
        let state = Arc::new(State {
            topics: Mutex::new(BTreeMap::new()),
            ports,
            behaviour: Mutex::new(Behaviour::default()),
            counts: Mutex::new(HashMap::new()),
            produce_log: Mutex::new(Vec::new()),
            received: Notify::new(),
            appended: Notify::new(),
            kill: broadcast::channel(4).0,
        });
        for (shard, listener) in listeners.into_iter().enumerate() {
            let state = state.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(state.clone(), shard, stream));
                }
            });
        }
        Self { state }
    }

    /// The bootstrap address: shard 0.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.state.ports[0])
    }

    pub fn behaviour(&self) -> MutexGuard<'_, Behaviour> {
        lock(&self.state.behaviour)
    }
}

async fn serve(state: Arc<State>, shard: usize, stream: TcpStream) {
    stream.set_nodelay(true).unwrap();
    let (mut read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write.write_all(frame.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut kill = state.kill.subscribe();
    let held: Arc<Mutex<Vec<RequestKey>>> = Arc::default();
    let mut decoder = FrameDecoder::new();
    'conn: loop {
        while let Ok(Some(frame)) = decoder.decode() {
            let Ok(request) = RequestFrame::verify(frame) else {
                break 'conn;
            };
            *lock(&state.counts).entry(request.api().0).or_default() += 1;
            state.received.notify_waiters();
            let state = state.clone();
            let tx = tx.clone();
            let held = held.clone();
            tokio::spawn(async move {
                for frame in handle(&state, shard, &request, &held).await {
                    let _ = tx.send(frame);
                }
            });
        }
        let buf = decoder.buffer_mut(64 << 10);
        tokio::select! {
            n = read.read(buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => decoder.advance(n),
            },
            _ = kill.recv() => break,
        }
    }
    writer.abort();
}

type Body = WIPOffset<UnionWIPOffset>;

fn respond(
    key: RequestKey,
    build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> (ResponseBody, Body),
) -> Frame {
    let mut b = FlatBufferBuilder::new();
    let (body_type, body) = build(&mut b);
    let header = wire::ResponseHeader::create(
        &mut b,
        &wire::ResponseHeaderArgs {
            correlation_id: key.correlation_id,
            api: key.api,
            version: key.version,
            throttle_time_ms: 0,
        },
    );
    let root = wire::Response::create(
        &mut b,
        &wire::ResponseArgs {
            header: Some(header),
            body_type,
            body: Some(body),
            error_code: ErrorCode::None,
            error_message: None,
        },
    );
    wire::finish_response_frame(&mut b, root);
    Frame::from_builder(b).unwrap()
}

async fn handle(
    state: &State,
    shard: usize,
    request: &RequestFrame,
    held: &Mutex<Vec<RequestKey>>,
) -> Vec<Frame> {
    let key = request.key();
    let req = request.request();
    match key.api {
        Api::Metadata => {
            let body = req.body_as_metadata_request().unwrap();
            let asked: Option<Vec<String>> =
                body.topics().map(|v| v.iter().map(str::to_owned).collect());
            vec![metadata(state, key, asked)]
        }
        Api::CreateTopics => {
            let body = req.body_as_create_topics_request().unwrap();
            let mut results = Vec::new();
            for t in body.topics().unwrap().iter() {
                let mut topics = lock(&state.topics);
                let code = if topics.contains_key(t.name()) {
                    ErrorCode::TopicAlreadyExists
                } else if t.partitions() <= 0 {
                    ErrorCode::InvalidPartitions
                } else {
                    let n = t.partitions() as usize;
                    topics.insert(
                        t.name().to_owned(),
                        Topic {
                            replication_factor: t.replication_factor(),
                            logs: vec![Vec::new(); n],
                            next_offsets: vec![0; n],
                        },
                    );
                    ErrorCode::None
                };
                results.push((t.name().to_owned(), code));
            }
            vec![respond(key, |b| {
                let items: Vec<_> = results
                    .iter()
                    .map(|(name, code)| {
                        let name = b.create_string(name);
                        wire::CreateTopicResult::create(
                            b,
                            &wire::CreateTopicResultArgs {
                                name: Some(name),
                                error_code: *code,
                                error_message: None,
                            },
                        )
                    })
                    .collect();
                let topics = b.create_vector(&items);
                let body = wire::CreateTopicsResponse::create(
                    b,
                    &wire::CreateTopicsResponseArgs {
                        topics: Some(topics),
                        ..Default::default()
                    },
                );
                (ResponseBody::CreateTopicsResponse, body.as_union_value())
            })]
        }
        Api::DeleteTopics => {
            let body = req.body_as_delete_topics_request().unwrap();
            let results: Vec<(String, ErrorCode)> = body
                .names()
                .unwrap()
                .iter()
                .map(|name| {
                    let gone = lock(&state.topics).remove(name).is_some();
                    let code = if gone {
                        ErrorCode::None
                    } else {
                        ErrorCode::UnknownTopic
                    };
                    (name.to_owned(), code)
                })
                .collect();
            vec![respond(key, |b| {
                let items: Vec<_> = results
                    .iter()
                    .map(|(name, code)| {
                        let name = b.create_string(name);
                        wire::DeleteTopicResult::create(
                            b,
                            &wire::DeleteTopicResultArgs {
                                name: Some(name),
                                error_code: *code,
                                error_message: None,
                            },
                        )
                    })
                    .collect();
                let topics = b.create_vector(&items);
                let body = wire::DeleteTopicsResponse::create(
                    b,
                    &wire::DeleteTopicsResponseArgs {
                        topics: Some(topics),
                        ..Default::default()
                    },
                );
                (ResponseBody::DeleteTopicsResponse, body.as_union_value())
            })]
        }
        Api::ListTopics => {
            let (black_hole, gate) = {
                let behaviour = lock(&state.behaviour);
                (behaviour.black_hole_list_topics, behaviour.gate_list_topics)
            };
            if black_hole {
                return Vec::new();
            }
            let keys = match gate {
                None => vec![key],
                Some(gate) => {
                    let mut held = lock(held);
                    held.push(key);
                    if held.len() < gate {
                        return Vec::new();
                    }
                    let mut keys: Vec<_> = held.drain(..).collect();
                    keys.reverse();
                    keys
                }
            };
            let listing: Vec<(String, i32, i16)> = lock(&state.topics)
                .iter()
                .map(|(name, t)| (name.clone(), t.logs.len() as i32, t.replication_factor))
                .collect();
            keys.into_iter()
                .map(|key| {
                    respond(key, |b| {
                        let items: Vec<_> = listing
                            .iter()
                            .map(|(name, partitions, rf)| {
                                let name = b.create_string(name);
                                wire::TopicListing::create(
                                    b,
                                    &wire::TopicListingArgs {
                                        name: Some(name),
                                        partitions: *partitions,
                                        replication_factor: *rf,
                                    },
                                )
                            })
                            .collect();
                        let topics = b.create_vector(&items);
                        let body = wire::ListTopicsResponse::create(
                            b,
                            &wire::ListTopicsResponseArgs {
                                topics: Some(topics),
                                ..Default::default()
                            },
                        );
                        (ResponseBody::ListTopicsResponse, body.as_union_value())
                    })
                })
                .collect()
        }
        Api::Produce => {
            let delay = lock(&state.behaviour).produce_delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let body = req.body_as_produce_request().unwrap();
            lock(&state.produce_log).push(
                body.partitions()
                    .unwrap()
                    .iter()
                    .map(|item| (item.topic().to_owned(), item.partition()))
                    .collect(),
            );
            let mut results = Vec::new();
            for item in body.partitions().unwrap().iter() {
                let (topic, partition) = (item.topic().to_owned(), item.partition());
                let code_offset = produce(state, shard, &topic, partition, item.records().bytes());
                results.push((topic, partition, code_offset));
            }
            if body.acks() == wire::Acks::None {
                return Vec::new();
            }
            vec![respond(key, |b| {
                let items: Vec<_> = results
                    .iter()
                    .map(|(topic, partition, (code, base))| {
                        let topic = b.create_string(topic);
                        wire::ProducePartitionResponse::create(
                            b,
                            &wire::ProducePartitionResponseArgs {
                                topic: Some(topic),
                                partition: *partition,
                                error_code: *code,
                                base_offset: *base,
                                ..Default::default()
                            },
                        )
                    })
                    .collect();
                let partitions = b.create_vector(&items);
                let body = wire::ProduceResponse::create(
                    b,
                    &wire::ProduceResponseArgs {
                        partitions: Some(partitions),
                        ..Default::default()
                    },
                );
                (ResponseBody::ProduceResponse, body.as_union_value())
            })]
        }
        Api::Fetch => {
            let body = req.body_as_fetch_request().unwrap();
            let items: Vec<(String, i32, i64, u32)> = body
                .partitions()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p.topic().to_owned(),
                        p.partition(),
                        p.offset(),
                        p.max_bytes(),
                    )
                })
                .collect();
            let deadline = Instant::now() + Duration::from_millis(u64::from(body.max_wait_ms()));
            let results = loop {
                let notified = state.appended.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let results: Vec<_> = items
                    .iter()
                    .map(|(t, p, o, m)| fetch(state, shard, t, *p, *o, *m))
                    .collect();
                let any = results
                    .iter()
                    .any(|r| r.0 != ErrorCode::None || !r.2.is_empty());
                if any || Instant::now() >= deadline {
                    break results;
                }
                let _ = tokio::time::timeout_at(deadline, notified).await;
            };
            vec![respond(key, |b| {
                let parts: Vec<_> = items
                    .iter()
                    .zip(&results)
                    .map(|((topic, partition, _, _), (code, hwm, records))| {
                        let topic = b.create_string(topic);
                        let records = b.create_vector(records);
                        wire::FetchPartitionResponse::create(
                            b,
                            &wire::FetchPartitionResponseArgs {
                                topic: Some(topic),
                                partition: *partition,
                                error_code: *code,
                                high_watermark: *hwm,
                                log_start_offset: 0,
                                records: Some(records),
                                ..Default::default()
                            },
                        )
                    })
                    .collect();
                let partitions = b.create_vector(&parts);
                let body = wire::FetchResponse::create(
                    b,
                    &wire::FetchResponseArgs {
                        partitions: Some(partitions),
                        ..Default::default()
                    },
                );
                (ResponseBody::FetchResponse, body.as_union_value())
            })]
        }
        Api::ListOffsets => {
            let body = req.body_as_list_offsets_request().unwrap();
            let results: Vec<_> = body
                .partitions()
                .unwrap()
                .iter()
                .map(|p| {
                    let found = list_offset(
                        state,
                        shard,
                        p.topic(),
                        p.partition(),
                        p.spec(),
                        p.timestamp_ms(),
                    );
                    (p.topic().to_owned(), p.partition(), found)
                })
                .collect();
            vec![respond(key, |b| {
                let parts: Vec<_> = results
                    .iter()
                    .map(|(topic, partition, (code, offset, ts))| {
                        let topic = b.create_string(topic);
                        wire::ListOffsetsPartitionResponse::create(
                            b,
                            &wire::ListOffsetsPartitionResponseArgs {
                                topic: Some(topic),
                                partition: *partition,
                                error_code: *code,
                                offset: *offset,
                                timestamp_ms: *ts,
                                ..Default::default()
                            },
                        )
                    })
                    .collect();
                let partitions = b.create_vector(&parts);
                let body = wire::ListOffsetsResponse::create(
                    b,
                    &wire::ListOffsetsResponseArgs {
                        partitions: Some(partitions),
                        ..Default::default()
                    },
                );
                (ResponseBody::ListOffsetsResponse, body.as_union_value())
            })]
        }
        _ => vec![shardmq_net::error_response(key, ErrorCode::UnknownApi, "").unwrap()],
    }
}

fn metadata(state: &State, key: RequestKey, asked: Option<Vec<String>>) -> Frame {
    let topics = lock(&state.topics);
    let names: Vec<String> = asked.unwrap_or_else(|| topics.keys().cloned().collect());
    let described: Vec<(String, Option<usize>)> = names
        .into_iter()
        .map(|name| {
            let count = topics.get(&name).map(|t| t.logs.len());
            (name, count)
        })
        .collect();
    drop(topics);
    respond(key, |b| {
        let host = b.create_string("127.0.0.1");
        let broker = wire::BrokerMetadata::create(
            b,
            &wire::BrokerMetadataArgs {
                node_id: 1,
                host: Some(host),
                port: state.ports[0],
                ..Default::default()
            },
        );
        let brokers = b.create_vector(&[broker]);
        let topics: Vec<_> = described
            .iter()
            .map(|(name, count)| {
                let partitions = count.map(|count| {
                    let parts: Vec<_> = (0..count)
                        .map(|p| {
                            let replicas = b.create_vector(&[1i32]);
                            wire::PartitionMetadata::create(
                                b,
                                &wire::PartitionMetadataArgs {
                                    partition: p as i32,
                                    leader_node_id: 1,
                                    leader_shard: (p % SHARDS) as u16,
                                    shard_port: state.ports[p % SHARDS],
                                    replica_node_ids: Some(replicas),
                                    leader_epoch: 1,
                                    ..Default::default()
                                },
                            )
                        })
                        .collect();
                    b.create_vector(&parts)
                });
                let name = b.create_string(name);
                wire::TopicMetadata::create(
                    b,
                    &wire::TopicMetadataArgs {
                        error_code: if count.is_some() {
                            ErrorCode::None
                        } else {
                            ErrorCode::UnknownTopic
                        },
                        name: Some(name),
                        partitions,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let topics = b.create_vector(&topics);
        let body = wire::MetadataResponse::create(
            b,
            &wire::MetadataResponseArgs {
                brokers: Some(brokers),
                topics: Some(topics),
                ..Default::default()
            },
        );
        (ResponseBody::MetadataResponse, body.as_union_value())
    })
}

fn owner_check(shard: usize, partition: i32) -> Result<(), ErrorCode> {
    if partition < 0 {
        Err(ErrorCode::UnknownPartition)
    } else if partition as usize % SHARDS != shard {
        Err(ErrorCode::NotLeader)
    } else {
        Ok(())
    }
}

fn produce(
    state: &State,
    shard: usize,
    topic: &str,
    partition: i32,
    records: &[u8],
) -> (ErrorCode, i64) {
    if let Err(code) = owner_check(shard, partition) {
        return (code, -1);
    }
    if lock(&state.behaviour)
        .not_leader_once
        .remove(&(topic.to_owned(), partition))
    {
        return (ErrorCode::NotLeader, -1);
    }
    let Ok(view) = RecordBatchView::parse_verified(records) else {
        return (ErrorCode::CorruptBatch, -1);
    };
    let count = i64::from(view.offset_count());
    let mut topics = lock(&state.topics);
    let Some(t) = topics.get_mut(topic) else {
        return (ErrorCode::UnknownTopic, -1);
    };
    let Some(next) = t.next_offsets.get_mut(partition as usize) else {
        return (ErrorCode::UnknownPartition, -1);
    };
    let base = *next;
    let mut stored = records.to_vec();
    stamp(&mut stored, base, 1);
    *next += count;
    t.logs[partition as usize].push(stored);
    drop(topics);
    state.appended.notify_waiters();
    (ErrorCode::None, base)
}

fn fetch(
    state: &State,
    shard: usize,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: u32,
) -> (ErrorCode, i64, Vec<u8>) {
    if let Err(code) = owner_check(shard, partition) {
        return (code, -1, Vec::new());
    }
    let topics = lock(&state.topics);
    let Some(t) = topics.get(topic) else {
        return (ErrorCode::UnknownTopic, -1, Vec::new());
    };
    let Some(log) = t.logs.get(partition as usize) else {
        return (ErrorCode::UnknownPartition, -1, Vec::new());
    };
    let hwm = t.next_offsets[partition as usize];
    if offset < 0 || offset > hwm {
        return (ErrorCode::OffsetOutOfRange, -1, Vec::new());
    }
    let max = if max_bytes == 0 {
        usize::MAX
    } else {
        max_bytes as usize
    };
    let mut out = Vec::new();
    for batch in log {
        let view = RecordBatchView::parse(batch).unwrap();
        if view.next_offset() <= offset {
            continue;
        }
        if !out.is_empty() && out.len() + batch.len() > max {
            break;
        }
        out.extend_from_slice(batch);
    }
    (ErrorCode::None, hwm, out)
}

fn list_offset(
    state: &State,
    shard: usize,
    topic: &str,
    partition: i32,
    spec: OffsetSpec,
    timestamp: i64,
) -> (ErrorCode, i64, i64) {
    if let Err(code) = owner_check(shard, partition) {
        return (code, -1, -1);
    }
    let topics = lock(&state.topics);
    let Some(t) = topics.get(topic) else {
        return (ErrorCode::UnknownTopic, -1, -1);
    };
    let Some(log) = t.logs.get(partition as usize) else {
        return (ErrorCode::UnknownPartition, -1, -1);
    };
    match spec {
        OffsetSpec::Earliest => (ErrorCode::None, 0, -1),
        OffsetSpec::Latest => (ErrorCode::None, t.next_offsets[partition as usize], -1),
        _ => {
            for batch in log {
                let view = RecordBatchView::parse(batch).unwrap();
                if view.max_timestamp() < timestamp {
                    continue;
                }
                for record in view.records() {
                    let record = record.unwrap();
                    let ts = view.record_timestamp(&record);
                    if ts >= timestamp {
                        return (ErrorCode::None, view.record_offset(&record), ts);
                    }
                }
            }
            (ErrorCode::None, -1, -1)
        }
    }
}

/// Now, for tests that stamp their own timestamps.
pub fn now() -> i64 {
    now_ms()
}
