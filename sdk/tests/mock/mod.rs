//! A small in-memory cluster speaking the real protocol over TCP, for the
//! SDK's tests. Each node (broker) has two "shards" (two listeners);
//! partition `p` has one replica on every node, on shard `p % 2`, and is
//! led by node 1 until moved. Produce, fetch and list-offsets requests
//! reaching a shard that does not lead the partition get NotLeader (with a
//! leader hint when `Behaviour::leader_hints` is set), so tests check that
//! the SDK routes by node and shard port. A fetch with `allow_follower` is
//! served by any replica, up to that replica's high watermark.
//!
//! The nodes share one log per partition: the mock checks routing and
//! retries, not replication.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use shardmq_client::producer::now_ms;
use shardmq_net::{Frame, FrameDecoder, RequestFrame, RequestKey};
use shardmq_schema::batch::{stamp, RecordBatchView};
use shardmq_schema::protocol::{
    self as wire, Api, BrokerStatus, ErrorCode, OffsetSpec, ReplicaRole, ResponseBody,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub const SHARDS: usize = 2;
pub const HOST: &str = "127.0.0.1";

#[derive(Debug, Default)]
struct Topic {
    replication_factor: i16,
    /// Stored batches per partition, stamped.
    logs: Vec<Vec<Vec<u8>>>,
    next_offsets: Vec<i64>,
    /// The node leading each partition, and its epoch.
    leaders: Vec<(i32, i64)>,
}

/// What the mock does besides answering correctly.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// The first produce to each of these partitions gets NotLeader
    /// without a hint (and is not appended).
    pub not_leader_once: HashSet<(String, i32)>,
    /// NotLeader answers carry a hint naming the partition's leader.
    pub leader_hints: bool,
    /// Metadata names this leader for the partition instead of the real
    /// one, as a stale metadata cache would.
    pub stale_leader: HashMap<(String, i32), i32>,
    /// The next produce items get these codes, in order. RequestTimedOut
    /// items are appended first (the append goes on, as on a broker);
    /// the others are not.
    pub produce_errors: VecDeque<ErrorCode>,
    /// Every produce item gets this code, not appended.
    pub produce_error_always: Option<ErrorCode>,
    /// This many Produce requests are appended, then their connection is
    /// closed without an answer.
    pub drop_connection_after_produce: usize,
    /// Produce requests are never answered (nor appended).
    pub black_hole_produce: bool,
    /// ListTopics requests are never answered.
    pub black_hole_list_topics: bool,
    /// ListTopics requests are held until this many are held on the
    /// connection, then all answered, newest first.
    pub gate_list_topics: Option<usize>,
    /// ListOffsets requests are held until this many are held at once
    /// (on any connection), then answered; later ones pass. A client that
    /// asks one at a time never gets an answer.
    pub gate_list_offsets: Option<usize>,
    /// Each Produce request is held this long before it is executed and
    /// answered, as a slow broker would.
    pub produce_delay: Duration,
    /// This many CreateTopics, DeleteTopics or TransferLeader requests are
    /// answered LeaderNotAvailable (no controller leader yet).
    pub controller_unavailable: usize,
    /// The high watermark of each node's follower replicas, below the
    /// leader's: a follower serves nothing at or past it.
    pub follower_high_watermark: HashMap<i32, i64>,
    /// These nodes answer follower reads with NotLeader, as a broker that
    /// does not serve them would.
    pub refuse_follower_reads: HashSet<i32>,
}

/// One request as the mock received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The port (node and shard) it arrived on.
    pub port: u16,
    /// Its items (topic, partition).
    pub items: Vec<(String, i32)>,
    /// Fetch only: `allow_follower`.
    pub allow_follower: bool,
}

#[derive(Debug)]
struct Node {
    id: i32,
    ports: Vec<u16>,
    accept: Vec<AbortHandle>,
    kill: broadcast::Sender<()>,
}

#[derive(Debug)]
pub struct State {
    topics: Mutex<BTreeMap<String, Topic>>,
    /// Node 1's shard ports, by shard.
    pub ports: Vec<u16>,
    nodes: Mutex<Vec<Node>>,
    dead: Mutex<HashSet<i32>>,
    pub behaviour: Mutex<Behaviour>,
    counts: Mutex<HashMap<u16, usize>>,
    /// The Produce requests, in the order they were executed.
    produce_log: Mutex<Vec<Seen>>,
    /// The Fetch requests, in the order they were received.
    fetch_log: Mutex<Vec<Seen>>,
    /// Notified on each request received.
    pub received: Notify,
    /// Notified on each append, for long polls.
    appended: Notify,
    /// ListOffsets requests held by `gate_list_offsets`, and whether it
    /// has opened.
    list_offsets_held: Mutex<(usize, bool)>,
    list_offsets_opened: Notify,
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
        lock(&self.produce_log)
            .iter()
            .map(|seen| seen.items.clone())
            .collect()
    }

    /// Each Produce request executed so far, with its port.
    pub fn produces(&self) -> Vec<Seen> {
        lock(&self.produce_log).clone()
    }

    /// Each Fetch request received so far, with its port.
    pub fn fetches(&self) -> Vec<Seen> {
        lock(&self.fetch_log).clone()
    }

    /// Closes every open connection of every node.
    pub fn kill_connections(&self) {
        for node in lock(&self.nodes).iter() {
            let _ = node.kill.send(());
        }
    }

    /// The port of `shard` of node `node_id`.
    pub fn port(&self, node_id: i32, shard: usize) -> u16 {
        lock(&self.nodes)[(node_id - 1) as usize].ports[shard]
    }

    fn node_count(&self) -> i32 {
        lock(&self.nodes).len() as i32
    }

    /// Which node and shard listen on `port`.
    fn node_of_port(&self, port: u16) -> (i32, usize) {
        lock(&self.nodes)
            .iter()
            .find_map(|n| n.ports.iter().position(|&p| p == port).map(|s| (n.id, s)))
            .expect("a port of the mock")
    }

    /// The node leading the partition and its epoch.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<(i32, i64)> {
        lock(&self.topics)
            .get(topic)
            .and_then(|t| t.leaders.get(partition as usize).copied())
    }

    /// Moves the partition's leadership to `node_id`, with a new epoch.
    pub fn move_leader(&self, topic: &str, partition: i32, node_id: i32) {
        let mut topics = lock(&self.topics);
        let leader = &mut topics.get_mut(topic).expect("topic").leaders[partition as usize];
        *leader = (node_id, leader.1 + 1);
    }

    /// The values of the records stored in the partition, in offset order.
    pub fn values(&self, topic: &str, partition: i32) -> Vec<Vec<u8>> {
        let topics = lock(&self.topics);
        let mut out = Vec::new();
        for batch in &topics[topic].logs[partition as usize] {
            let view = RecordBatchView::parse(batch).unwrap();
            for record in view.records() {
                out.push(record.unwrap().value().unwrap_or_default().to_vec());
            }
        }
        out
    }
}

#[derive(Debug)]
pub struct MockBroker {
    pub state: Arc<State>,
}

impl MockBroker {
    /// One node.
    pub async fn start() -> Self {
        Self::cluster(1).await
    }

    /// `nodes` nodes, ids 1 to `nodes`, each with [`SHARDS`] shards.
    pub async fn cluster(nodes: usize) -> Self {
        let mut listeners = Vec::new();
        let mut node_list = Vec::new();
        for id in 1..=nodes {
            let mut ports = Vec::new();
            for _ in 0..SHARDS {
                let listener = TcpListener::bind((HOST, 0)).await.unwrap();
                ports.push(listener.local_addr().unwrap().port());
                listeners.push((id as i32, listener));
            }
            node_list.push(Node {
                id: id as i32,
                ports,
                accept: Vec::new(),
                kill: broadcast::channel(4).0,
            });
        }
        let state = Arc::new(State {
            topics: Mutex::new(BTreeMap::new()),
            ports: node_list[0].ports.clone(),
            nodes: Mutex::new(node_list),
            dead: Mutex::new(HashSet::new()),
            behaviour: Mutex::new(Behaviour::default()),
            counts: Mutex::new(HashMap::new()),
            produce_log: Mutex::new(Vec::new()),
            fetch_log: Mutex::new(Vec::new()),
            received: Notify::new(),
            appended: Notify::new(),
            list_offsets_held: Mutex::default(),
            list_offsets_opened: Notify::new(),
        });
        for (id, listener) in listeners {
            let port = listener.local_addr().unwrap().port();
            let task_state = state.clone();
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(task_state.clone(), port, stream));
                }
            });
            lock(&state.nodes)[(id - 1) as usize]
                .accept
                .push(task.abort_handle());
        }
        Self { state }
    }

    /// The bootstrap address: node 1, shard 0.
    pub fn addr(&self) -> String {
        self.node_addr(1)
    }

    /// The address of shard 0 of node `node_id`.
    pub fn node_addr(&self, node_id: i32) -> String {
        format!("{HOST}:{}", self.state.port(node_id, 0))
    }

    pub fn behaviour(&self) -> MutexGuard<'_, Behaviour> {
        lock(&self.state.behaviour)
    }

    /// Stops node `node_id` as a killed broker stops: its listeners close
    /// (connects are refused) and its connections drop. Metadata reports
    /// it Failed from then on.
    pub fn kill_node(&self, node_id: i32) {
        lock(&self.state.dead).insert(node_id);
        let nodes = lock(&self.state.nodes);
        let node = &nodes[(node_id - 1) as usize];
        for task in &node.accept {
            task.abort();
        }
        let _ = node.kill.send(());
    }
}

async fn serve(state: Arc<State>, port: u16, stream: TcpStream) {
    stream.set_nodelay(true).unwrap();
    let (node_id, shard) = state.node_of_port(port);
    let (mut read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write.write_all(frame.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut kill = lock(&state.nodes)[(node_id - 1) as usize].kill.subscribe();
    let close = Arc::new(Notify::new());
    let held: Arc<Mutex<Vec<RequestKey>>> = Arc::default();
    let mut decoder = FrameDecoder::new();
    let at = At {
        node_id,
        shard,
        port,
    };
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
            let close = close.clone();
            tokio::spawn(async move {
                match handle(&state, at, &request, &held).await {
                    Reply::Frames(frames) => {
                        for frame in frames {
                            let _ = tx.send(frame);
                        }
                    }
                    Reply::Close => close.notify_one(),
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
            () = close.notified() => break,
        }
    }
    writer.abort();
}

/// Where a request arrived.
#[derive(Debug, Clone, Copy)]
struct At {
    node_id: i32,
    shard: usize,
    port: u16,
}

enum Reply {
    Frames(Vec<Frame>),
    /// Close the connection without answering.
    Close,
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

/// Takes one of the `controller_unavailable` refusals, if any are left.
fn controller_refuses(state: &State) -> bool {
    let mut behaviour = lock(&state.behaviour);
    if behaviour.controller_unavailable > 0 {
        behaviour.controller_unavailable -= 1;
        true
    } else {
        false
    }
}

/// A hint for NotLeader, when hints are on and the partition exists.
#[derive(Debug, Clone, Copy)]
struct Hint {
    node_id: i32,
    shard: u16,
    shard_port: u16,
    epoch: i64,
}

fn hint(state: &State, topic: &str, partition: i32) -> Option<Hint> {
    if !lock(&state.behaviour).leader_hints {
        return None;
    }
    let (node_id, epoch) = state.leader(topic, partition)?;
    let shard = partition as usize % SHARDS;
    Some(Hint {
        node_id,
        shard: shard as u16,
        shard_port: state.port(node_id, shard),
        epoch,
    })
}

fn write_hint(
    b: &mut FlatBufferBuilder<'static>,
    hint: Option<Hint>,
) -> Option<WIPOffset<wire::LeaderHint<'static>>> {
    let hint = hint?;
    let host = b.create_string(HOST);
    Some(wire::LeaderHint::create(
        b,
        &wire::LeaderHintArgs {
            node_id: hint.node_id,
            host: Some(host),
            shard: hint.shard,
            shard_port: hint.shard_port,
            leader_epoch: hint.epoch,
        },
    ))
}

async fn handle(
    state: &State,
    at: At,
    request: &RequestFrame,
    held: &Mutex<Vec<RequestKey>>,
) -> Reply {
    let key = request.key();
    let req = request.request();
    let frames = match key.api {
        Api::Metadata => {
            let body = req.body_as_metadata_request().unwrap();
            let asked: Option<Vec<String>> =
                body.topics().map(|v| v.iter().map(str::to_owned).collect());
            vec![metadata(state, key, asked)]
        }
        Api::CreateTopics => {
            let body = req.body_as_create_topics_request().unwrap();
            let refused = controller_refuses(state);
            let nodes = state.node_count();
            let mut results = Vec::new();
            for t in body.topics().unwrap().iter() {
                let mut topics = lock(&state.topics);
                let code = if refused {
                    ErrorCode::LeaderNotAvailable
                } else if topics.contains_key(t.name()) {
                    ErrorCode::TopicAlreadyExists
                } else if t.partitions() <= 0 {
                    ErrorCode::InvalidPartitions
                } else if i32::from(t.replication_factor()) > nodes {
                    ErrorCode::InvalidReplicationFactor
                } else {
                    let n = t.partitions() as usize;
                    topics.insert(
                        t.name().to_owned(),
                        Topic {
                            replication_factor: t.replication_factor(),
                            logs: vec![Vec::new(); n],
                            next_offsets: vec![0; n],
                            leaders: vec![(1, 1); n],
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
            let refused = controller_refuses(state);
            let results: Vec<(String, ErrorCode)> = body
                .names()
                .unwrap()
                .iter()
                .map(|name| {
                    if refused {
                        return (name.to_owned(), ErrorCode::LeaderNotAvailable);
                    }
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
                return Reply::Frames(Vec::new());
            }
            let keys = match gate {
                None => vec![key],
                Some(gate) => {
                    let mut held = lock(held);
                    held.push(key);
                    if held.len() < gate {
                        return Reply::Frames(Vec::new());
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
        Api::Produce => return produce_request(state, at, key, request).await,
        Api::Fetch => {
            let body = req.body_as_fetch_request().unwrap();
            let allow_follower = body.allow_follower();
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
            lock(&state.fetch_log).push(Seen {
                port: at.port,
                items: items.iter().map(|(t, p, _, _)| (t.clone(), *p)).collect(),
                allow_follower,
            });
            let deadline = Instant::now() + Duration::from_millis(u64::from(body.max_wait_ms()));
            let results = loop {
                let notified = state.appended.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let results: Vec<_> = items
                    .iter()
                    .map(|(t, p, o, m)| fetch(state, at, allow_follower, t, *p, *o, *m))
                    .collect();
                let any = results
                    .iter()
                    .any(|r| r.0 != ErrorCode::None || !r.2.is_empty());
                if any || Instant::now() >= deadline {
                    break results;
                }
                let _ = tokio::time::timeout_at(deadline, notified).await;
            };
            let hints: Vec<Option<Hint>> = items
                .iter()
                .zip(&results)
                .map(|((t, p, _, _), r)| {
                    (r.0 == ErrorCode::NotLeader)
                        .then(|| hint(state, t, *p))
                        .flatten()
                })
                .collect();
            vec![respond(key, |b| {
                let parts: Vec<_> = items
                    .iter()
                    .zip(&results)
                    .zip(&hints)
                    .map(|(((topic, partition, _, _), (code, hwm, records)), hint)| {
                        let topic = b.create_string(topic);
                        let records = b.create_vector(records);
                        let leader_hint = write_hint(b, *hint);
                        wire::FetchPartitionResponse::create(
                            b,
                            &wire::FetchPartitionResponseArgs {
                                topic: Some(topic),
                                partition: *partition,
                                error_code: *code,
                                high_watermark: *hwm,
                                log_start_offset: 0,
                                records: Some(records),
                                leader_hint,
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
            let gate = lock(&state.behaviour).gate_list_offsets;
            if let Some(gate) = gate {
                // Listening before counting: the opening wakes it either way.
                let opened = state.list_offsets_opened.notified();
                tokio::pin!(opened);
                opened.as_mut().enable();
                let open = {
                    let mut held = lock(&state.list_offsets_held);
                    held.0 += 1;
                    if held.0 >= gate && !held.1 {
                        held.1 = true;
                        state.list_offsets_opened.notify_waiters();
                    }
                    held.1
                };
                if !open {
                    opened.await;
                }
            }
            let body = req.body_as_list_offsets_request().unwrap();
            let results: Vec<_> = body
                .partitions()
                .unwrap()
                .iter()
                .map(|p| {
                    let found = list_offset(
                        state,
                        at,
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
        Api::DescribeCluster => vec![describe_cluster(state, at, key)],
        Api::DescribeReplicas => {
            let body = req.body_as_describe_replicas_request().unwrap();
            let asked: Option<Vec<String>> =
                body.topics().map(|v| v.iter().map(str::to_owned).collect());
            vec![describe_replicas(state, at, key, asked)]
        }
        Api::TransferLeader => {
            let body = req.body_as_transfer_leader_request().unwrap();
            let (topic, partition, to) = (body.topic(), body.partition(), body.to_node_id());
            let (code, leader) = if controller_refuses(state) {
                (ErrorCode::LeaderNotAvailable, -1)
            } else {
                match state.leader(topic, partition) {
                    None => (ErrorCode::UnknownTopic, -1),
                    Some((leader, _)) if to < 1 || to > state.node_count() => {
                        (ErrorCode::InvalidBroker, leader)
                    }
                    Some(_) => {
                        state.move_leader(topic, partition, to);
                        (ErrorCode::None, to)
                    }
                }
            };
            vec![respond(key, |b| {
                let body = wire::TransferLeaderResponse::create(
                    b,
                    &wire::TransferLeaderResponseArgs {
                        error_code: code,
                        error_message: None,
                        leader_node_id: leader,
                    },
                );
                (ResponseBody::TransferLeaderResponse, body.as_union_value())
            })]
        }
        _ => vec![shardmq_net::error_response(key, ErrorCode::UnknownApi, "").unwrap()],
    };
    Reply::Frames(frames)
}

async fn produce_request(state: &State, at: At, key: RequestKey, request: &RequestFrame) -> Reply {
    let (delay, black_hole) = {
        let behaviour = lock(&state.behaviour);
        (behaviour.produce_delay, behaviour.black_hole_produce)
    };
    if black_hole {
        return Reply::Frames(Vec::new());
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let body = request.request().body_as_produce_request().unwrap();
    lock(&state.produce_log).push(Seen {
        port: at.port,
        items: body
            .partitions()
            .unwrap()
            .iter()
            .map(|item| (item.topic().to_owned(), item.partition()))
            .collect(),
        allow_follower: false,
    });
    let mut results = Vec::new();
    for item in body.partitions().unwrap().iter() {
        let (topic, partition) = (item.topic().to_owned(), item.partition());
        let (code, base) = produce(state, at, &topic, partition, item.records().bytes());
        let hint = (code == ErrorCode::NotLeader)
            .then(|| hint(state, &topic, partition))
            .flatten();
        results.push((topic, partition, code, base, hint));
    }
    {
        let mut behaviour = lock(&state.behaviour);
        if behaviour.drop_connection_after_produce > 0 {
            behaviour.drop_connection_after_produce -= 1;
            return Reply::Close;
        }
    }
    if body.acks() == wire::Acks::None {
        return Reply::Frames(Vec::new());
    }
    Reply::Frames(vec![respond(key, |b| {
        let items: Vec<_> = results
            .iter()
            .map(|(topic, partition, code, base, hint)| {
                let topic = b.create_string(topic);
                let leader_hint = write_hint(b, *hint);
                wire::ProducePartitionResponse::create(
                    b,
                    &wire::ProducePartitionResponseArgs {
                        topic: Some(topic),
                        partition: *partition,
                        error_code: *code,
                        base_offset: *base,
                        leader_hint,
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
    })])
}

fn metadata(state: &State, key: RequestKey, asked: Option<Vec<String>>) -> Frame {
    let topics = lock(&state.topics);
    let names: Vec<String> = asked.unwrap_or_else(|| topics.keys().cloned().collect());
    let stale = lock(&state.behaviour).stale_leader.clone();
    // Per topic: per partition (leader, epoch), or None if unknown.
    type Leaders = Option<Vec<(i32, i64)>>;
    let described: Vec<(String, Leaders)> = names
        .into_iter()
        .map(|name| {
            let leaders = topics.get(&name).map(|t| {
                t.leaders
                    .iter()
                    .enumerate()
                    .map(|(p, &(leader, epoch))| {
                        let shown = stale.get(&(name.clone(), p as i32)).copied();
                        (shown.unwrap_or(leader), epoch)
                    })
                    .collect()
            });
            (name, leaders)
        })
        .collect();
    drop(topics);
    let nodes: Vec<(i32, Vec<u16>)> = lock(&state.nodes)
        .iter()
        .map(|n| (n.id, n.ports.clone()))
        .collect();
    let dead = lock(&state.dead).clone();
    respond(key, |b| {
        let brokers: Vec<_> = nodes
            .iter()
            .map(|(id, ports)| {
                let host = b.create_string(HOST);
                let shard_ports = b.create_vector(ports);
                wire::BrokerMetadata::create(
                    b,
                    &wire::BrokerMetadataArgs {
                        node_id: *id,
                        host: Some(host),
                        port: ports[0],
                        status: if dead.contains(id) {
                            BrokerStatus::Failed
                        } else {
                            BrokerStatus::Active
                        },
                        shard_ports: Some(shard_ports),
                    },
                )
            })
            .collect();
        let brokers = b.create_vector(&brokers);
        let topics: Vec<_> = described
            .iter()
            .map(|(name, leaders)| {
                let partitions = leaders.as_ref().map(|leaders| {
                    let parts: Vec<_> = leaders
                        .iter()
                        .enumerate()
                        .map(|(p, &(leader, epoch))| {
                            let shard = p % SHARDS;
                            let ids: Vec<i32> = nodes.iter().map(|n| n.0).collect();
                            let ids = b.create_vector(&ids);
                            let replicas: Vec<_> = nodes
                                .iter()
                                .map(|(id, ports)| {
                                    wire::ReplicaMetadata::create(
                                        b,
                                        &wire::ReplicaMetadataArgs {
                                            node_id: *id,
                                            shard: shard as u16,
                                            shard_port: ports[shard],
                                        },
                                    )
                                })
                                .collect();
                            let replicas = b.create_vector(&replicas);
                            let leader_port = nodes
                                .iter()
                                .find(|n| n.0 == leader)
                                .map_or(0, |n| n.1[shard]);
                            wire::PartitionMetadata::create(
                                b,
                                &wire::PartitionMetadataArgs {
                                    partition: p as i32,
                                    leader_node_id: leader,
                                    leader_shard: shard as u16,
                                    shard_port: leader_port,
                                    replica_node_ids: Some(ids),
                                    leader_epoch: epoch,
                                    replicas: Some(replicas),
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
                        error_code: if leaders.is_some() {
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
        let cluster_id = b.create_string("mock-cluster");
        let body = wire::MetadataResponse::create(
            b,
            &wire::MetadataResponseArgs {
                brokers: Some(brokers),
                topics: Some(topics),
                controller_id: 1,
                cluster_id: Some(cluster_id),
                ..Default::default()
            },
        );
        (ResponseBody::MetadataResponse, body.as_union_value())
    })
}

fn describe_cluster(state: &State, at: At, key: RequestKey) -> Frame {
    let nodes: Vec<(i32, Vec<u16>)> = lock(&state.nodes)
        .iter()
        .map(|n| (n.id, n.ports.clone()))
        .collect();
    let dead = lock(&state.dead).clone();
    let version = 10 + lock(&state.topics).len() as u64;
    respond(key, |b| {
        let brokers: Vec<_> = nodes
            .iter()
            .map(|(id, ports)| {
                let host = b.create_string(HOST);
                let shard_ports = b.create_vector(ports);
                let inter = b.create_string(&format!("{HOST}:{}", 19_000 + id));
                wire::BrokerDescription::create(
                    b,
                    &wire::BrokerDescriptionArgs {
                        node_id: *id,
                        host: Some(host),
                        port: ports[0],
                        shard_ports: Some(shard_ports),
                        inter_broker_address: Some(inter),
                        status: if dead.contains(id) {
                            BrokerStatus::Failed
                        } else {
                            BrokerStatus::Active
                        },
                        incarnation: 1_000 + *id as u64,
                        controller_voter: *id <= 3,
                    },
                )
            })
            .collect();
        let brokers = b.create_vector(&brokers);
        let cluster_id = b.create_string("mock-cluster");
        let body = wire::DescribeClusterResponse::create(
            b,
            &wire::DescribeClusterResponseArgs {
                cluster_id: Some(cluster_id),
                controller_id: 1,
                controller_term: 2,
                metadata_version: version,
                brokers: Some(brokers),
                answered_by: at.node_id,
                ..Default::default()
            },
        );
        (ResponseBody::DescribeClusterResponse, body.as_union_value())
    })
}

/// The high watermark `node_id`'s replica serves: the log's, or below it
/// for a follower with `follower_high_watermark` set.
fn replica_high_watermark(state: &State, node_id: i32, leader: i32, log_hwm: i64) -> i64 {
    if node_id == leader {
        return log_hwm;
    }
    match lock(&state.behaviour).follower_high_watermark.get(&node_id) {
        Some(&cap) => cap.min(log_hwm),
        None => log_hwm,
    }
}

fn describe_replicas(state: &State, at: At, key: RequestKey, asked: Option<Vec<String>>) -> Frame {
    let topics = lock(&state.topics);
    let mut replicas = Vec::new();
    for (name, topic) in topics.iter() {
        if asked.as_ref().is_some_and(|a| !a.contains(name)) {
            continue;
        }
        for (p, &(leader, epoch)) in topic.leaders.iter().enumerate() {
            let log_hwm = topic.next_offsets[p];
            let hwm = replica_high_watermark(state, at.node_id, leader, log_hwm);
            let batches = topic.logs[p].len() as u64;
            replicas.push((name.clone(), p as i32, leader, epoch, hwm, log_hwm, batches));
        }
    }
    drop(topics);
    respond(key, |b| {
        let items: Vec<_> = replicas
            .iter()
            .map(|(name, p, leader, epoch, hwm, log_end, batches)| {
                let topic = b.create_string(name);
                wire::ReplicaDescription::create(
                    b,
                    &wire::ReplicaDescriptionArgs {
                        topic: Some(topic),
                        partition: *p,
                        shard: (*p as usize % SHARDS) as u16,
                        role: if *leader == at.node_id {
                            ReplicaRole::Leader
                        } else {
                            ReplicaRole::Follower
                        },
                        term: *epoch as u64,
                        leader_node_id: *leader,
                        first_index: 1,
                        last_index: *batches,
                        commit_index: *batches,
                        high_watermark: *hwm,
                        log_start_offset: 0,
                        log_end_offset: *log_end,
                    },
                )
            })
            .collect();
        let replicas = b.create_vector(&items);
        let body = wire::DescribeReplicasResponse::create(
            b,
            &wire::DescribeReplicasResponseArgs {
                node_id: at.node_id,
                replicas: Some(replicas),
                ..Default::default()
            },
        );
        (
            ResponseBody::DescribeReplicasResponse,
            body.as_union_value(),
        )
    })
}

/// Whether the shard a request reached may answer for the partition: its
/// leader, or with `allow_follower` any replica (every node holds one, on
/// shard `p % SHARDS`). Returns the partition's leader.
fn owner_check(
    state: &State,
    at: At,
    topic: &str,
    partition: i32,
    allow_follower: bool,
) -> Result<i32, ErrorCode> {
    if partition < 0 {
        return Err(ErrorCode::UnknownPartition);
    }
    let Some((leader, _)) = state.leader(topic, partition) else {
        return Err(ErrorCode::UnknownTopic);
    };
    if partition as usize % SHARDS != at.shard {
        return Err(ErrorCode::NotLeader);
    }
    let refuses = lock(&state.behaviour)
        .refuse_follower_reads
        .contains(&at.node_id);
    if leader == at.node_id || (allow_follower && !refuses) {
        Ok(leader)
    } else {
        Err(ErrorCode::NotLeader)
    }
}

fn produce(state: &State, at: At, topic: &str, partition: i32, records: &[u8]) -> (ErrorCode, i64) {
    if let Err(code) = owner_check(state, at, topic, partition, false) {
        return (code, -1);
    }
    let scripted = {
        let mut behaviour = lock(&state.behaviour);
        if behaviour
            .not_leader_once
            .remove(&(topic.to_owned(), partition))
        {
            return (ErrorCode::NotLeader, -1);
        }
        behaviour
            .produce_errors
            .pop_front()
            .or(behaviour.produce_error_always)
    };
    if let Some(code) = scripted {
        if code != ErrorCode::RequestTimedOut {
            return (code, -1);
        }
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
    match scripted {
        Some(code) => (code, -1),
        None => (ErrorCode::None, base),
    }
}

fn fetch(
    state: &State,
    at: At,
    allow_follower: bool,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: u32,
) -> (ErrorCode, i64, Vec<u8>) {
    let leader = match owner_check(state, at, topic, partition, allow_follower) {
        Ok(leader) => leader,
        Err(code) => return (code, -1, Vec::new()),
    };
    let topics = lock(&state.topics);
    let Some(t) = topics.get(topic) else {
        return (ErrorCode::UnknownTopic, -1, Vec::new());
    };
    let Some(log) = t.logs.get(partition as usize) else {
        return (ErrorCode::UnknownPartition, -1, Vec::new());
    };
    let hwm = replica_high_watermark(
        state,
        at.node_id,
        leader,
        t.next_offsets[partition as usize],
    );
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
        if view.next_offset() > hwm {
            break;
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
    at: At,
    topic: &str,
    partition: i32,
    spec: OffsetSpec,
    timestamp: i64,
) -> (ErrorCode, i64, i64) {
    if let Err(code) = owner_check(state, at, topic, partition, false) {
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
