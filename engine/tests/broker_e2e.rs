//! The real `shardmq-broker` binary on 127.0.0.1 with two shards, driven
//! over the client protocol by a small blocking client: topics, produce
//! and fetch on every partition, a request sent to a shard that does not
//! own the partition, bad input of every kind, a clean stop on SIGTERM and
//! a restart that serves everything acknowledged, and the metrics
//! endpoint, on a broker alone (a cluster of one: its own controller, every
//! partition a one-replica Raft group). Then a SIGKILL in the middle of an
//! acks=all
//! produce loop, after which every acknowledged batch is at its offset.
//!
//! Every wait polls with a deadline; every broker started is killed when
//! its guard drops, and its directory removed.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use shardmq_net::{Frame, ResponseFrame};
use shardmq_schema::batch::{self, BatchBuilder};
use shardmq_schema::protocol::{self as p, Acks, Api, ErrorCode, OffsetSpec};

const DEADLINE: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The broker process
// ---------------------------------------------------------------------------

/// A running broker; killed (if still running) when dropped.
struct Broker {
    child: Option<Child>,
    client: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

/// A free port for a test broker (`shardmq_net::ports`).
fn free_port() -> u16 {
    shardmq_net::ports::test_port()
}

/// Small segments so opening a shard log is quick.
const TEST_CONFIG: &str = "\
[storage]
segment_bytes = 4194304
write_buffer_bytes = 1048576
entry_bytes_max = 1048576

[limits]
frame_bytes_max = 1048576
batch_bytes_max = 262144
record_bytes_max = 65536
";

impl Broker {
    fn start(dir: &Path, shards: usize) -> Self {
        Self::start_with(dir, shards, "")
    }

    /// Starts with `storage_extra` (lines of TOML) added to `[storage]`.
    fn start_with(dir: &Path, shards: usize, storage_extra: &str) -> Self {
        let config = dir.join("broker.toml");
        let text = TEST_CONFIG.replace("[storage]\n", &format!("[storage]\n{storage_extra}"));
        std::fs::write(&config, text).unwrap();
        let client = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join(format!("broker-{}.log", client.port()));
        let child = Command::new(env!("CARGO_BIN_EXE_shardmq-broker"))
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--listen")
            .arg(client.to_string())
            .arg("--metrics")
            .arg(metrics.to_string())
            .arg("--shards")
            .arg(shards.to_string())
            .arg("--node-id")
            .arg("7")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start shardmq-broker");
        let mut broker = Broker {
            child: Some(child),
            client,
            metrics,
            log,
        };
        broker.wait_healthy();
        broker
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "broker exited with {status} while starting:\n{}",
                    self.log_text()
                );
            }
            if let Ok((200, _)) = http_get(self.metrics, "/health") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker not healthy within {DEADLINE:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "broker did not stop within {DEADLINE:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

// ---------------------------------------------------------------------------
// A blocking client
// ---------------------------------------------------------------------------

struct Client {
    stream: TcpStream,
    next_id: u64,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect to the broker");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream, next_id: 1 }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next response frame, or `None` at end of stream.
    fn recv(&mut self) -> Option<ResponseFrame> {
        let mut prefix = [0u8; 4];
        if let Err(error) = self.stream.read_exact(&mut prefix) {
            assert!(
                matches!(
                    error.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ),
                "{error}"
            );
            return None;
        }
        let len = u32::from_le_bytes(prefix) as usize;
        let mut frame = prefix.to_vec();
        frame.resize(4 + len, 0);
        self.stream.read_exact(&mut frame[4..]).unwrap();
        Some(ResponseFrame::verify(Frame::copy_from_slice(&frame).unwrap()).unwrap())
    }

    fn call(
        &mut self,
        api: Api,
        body: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>,
    ) -> ResponseFrame {
        let id = self.next_id;
        self.next_id += 1;
        self.send_raw(&request(id, api, body));
        let response = self.recv().expect("a response");
        assert_eq!(response.correlation_id(), id);
        response
    }
}

fn request(
    correlation_id: u64,
    api: Api,
    body: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>,
) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let body = body(&mut b);
    let header = p::RequestHeader::create(
        &mut b,
        &p::RequestHeaderArgs {
            correlation_id,
            api,
            version: 0,
            client_id: None,
        },
    );
    let root = p::Request::create(
        &mut b,
        &p::RequestArgs {
            header: Some(header),
            body_type: api.request_body_type().unwrap(),
            body: Some(body),
        },
    );
    p::finish_request_frame(&mut b, root).to_vec()
}

fn create_topic(client: &mut Client, name: &str, partitions: i32) -> (ErrorCode, String) {
    let response = client.call(Api::CreateTopics, |b| {
        let name = b.create_string(name);
        let topic = p::NewTopic::create(
            b,
            &p::NewTopicArgs {
                name: Some(name),
                partitions,
                replication_factor: -1,
                configs: None,
            },
        );
        let topics = b.create_vector(&[topic]);
        p::CreateTopicsRequest::create(
            b,
            &p::CreateTopicsRequestArgs {
                topics: Some(topics),
                timeout_ms: 10_000,
                validate_only: false,
            },
        )
        .as_union_value()
    });
    let body = response
        .response()
        .body_as_create_topics_response()
        .unwrap();
    let result = body.topics().unwrap().get(0);
    (
        result.error_code(),
        result.error_message().unwrap_or("").to_owned(),
    )
}

/// Partition index → (leader shard, shard port) of `topic`.
fn metadata(client: &mut Client, topic: &str) -> Vec<(u16, u16)> {
    let response = client.call(Api::Metadata, |b| {
        let name = b.create_string(topic);
        let topics = b.create_vector(&[name]);
        p::MetadataRequest::create(
            b,
            &p::MetadataRequestArgs {
                topics: Some(topics),
            },
        )
        .as_union_value()
    });
    let body = response.response().body_as_metadata_response().unwrap();
    let brokers = body.brokers().unwrap();
    assert_eq!(brokers.len(), 1);
    assert_eq!(brokers.get(0).node_id(), 7);
    let t = body.topics().unwrap().get(0);
    assert_eq!(t.error_code(), ErrorCode::None);
    t.partitions()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, part)| {
            assert_eq!(part.partition(), i as i32);
            assert_eq!(part.leader_node_id(), 7);
            (part.leader_shard(), part.shard_port())
        })
        .collect()
}

/// One produce item's outcome: (code, base offset).
fn produce(client: &mut Client, topic: &str, partition: i32, batch: &[u8]) -> (ErrorCode, i64) {
    let response = client.call(Api::Produce, |b| {
        let topic = b.create_string(topic);
        let records = b.create_vector(batch);
        let item = p::ProducePartition::create(
            b,
            &p::ProducePartitionArgs {
                topic: Some(topic),
                partition,
                records: Some(records),
            },
        );
        let items = b.create_vector(&[item]);
        p::ProduceRequest::create(
            b,
            &p::ProduceRequestArgs {
                acks: Acks::All,
                timeout_ms: 10_000,
                partitions: Some(items),
            },
        )
        .as_union_value()
    });
    assert_eq!(response.error_code(), ErrorCode::None);
    let body = response.response().body_as_produce_response().unwrap();
    let item = body.partitions().unwrap().get(0);
    if item.error_code() == ErrorCode::None {
        // The broker's clock when it appended the batch.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let appended = item.log_append_time_ms();
        assert!(
            appended > now_ms - 60_000 && appended <= now_ms,
            "log append time {appended}, now {now_ms}"
        );
    }
    (item.error_code(), item.base_offset())
}

/// One fetch item's outcome: (code, high watermark, records).
fn fetch(
    client: &mut Client,
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: u32,
) -> (ErrorCode, i64, Vec<u8>) {
    let response = client.call(Api::Fetch, |b| {
        let topic = b.create_string(topic);
        let item = p::FetchPartition::create(
            b,
            &p::FetchPartitionArgs {
                topic: Some(topic),
                partition,
                offset,
                max_bytes: 0,
            },
        );
        let items = b.create_vector(&[item]);
        p::FetchRequest::create(
            b,
            &p::FetchRequestArgs {
                max_wait_ms,
                min_bytes: 1,
                max_bytes: 0,
                partitions: Some(items),
                allow_follower: false,
            },
        )
        .as_union_value()
    });
    assert_eq!(response.error_code(), ErrorCode::None);
    let body = response.response().body_as_fetch_response().unwrap();
    let item = body.partitions().unwrap().get(0);
    (
        item.error_code(),
        item.high_watermark(),
        item.records()
            .map(|r| r.bytes().to_vec())
            .unwrap_or_default(),
    )
}

fn latest_offset(client: &mut Client, topic: &str, partition: i32) -> (ErrorCode, i64) {
    let (code, offset, _) = list_offsets(client, topic, partition, OffsetSpec::Latest, 0);
    (code, offset)
}

/// One ListOffsets item's outcome: (code, offset, timestamp).
fn list_offsets(
    client: &mut Client,
    topic: &str,
    partition: i32,
    spec: OffsetSpec,
    timestamp_ms: i64,
) -> (ErrorCode, i64, i64) {
    let response = client.call(Api::ListOffsets, |b| {
        let topic = b.create_string(topic);
        let item = p::ListOffsetsPartition::create(
            b,
            &p::ListOffsetsPartitionArgs {
                topic: Some(topic),
                partition,
                spec,
                timestamp_ms,
            },
        );
        let items = b.create_vector(&[item]);
        p::ListOffsetsRequest::create(
            b,
            &p::ListOffsetsRequestArgs {
                partitions: Some(items),
            },
        )
        .as_union_value()
    });
    let body = response.response().body_as_list_offsets_response().unwrap();
    let item = body.partitions().unwrap().get(0);
    (item.error_code(), item.offset(), item.timestamp_ms())
}

/// Create time of a batch's first record; record i is i ms later.
const BATCH_TIMESTAMP_MS: i64 = 1_700_000_000_000;

fn make_batch(records: usize, tag: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut builder = BatchBuilder::new(&mut buf, 0, BATCH_TIMESTAMP_MS);
    for i in 0..records {
        let value = format!("{tag}-{i}");
        builder.append(
            BATCH_TIMESTAMP_MS + i as i64,
            Some(b"k"),
            Some(value.as_bytes()),
            &[],
        );
    }
    let len = builder.finish();
    buf.truncate(len);
    buf
}

/// The batch as the broker stores it: base offset and leader epoch
/// stamped, every other byte as produced.
fn stamped(batch: &[u8], base_offset: i64) -> Vec<u8> {
    let mut copy = batch.to_vec();
    // The single-replica path stamps term 1 as the leader epoch.
    batch::stamp(&mut copy, base_offset, 1);
    copy
}

// ---------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------

/// Parses Prometheus text exposition; returns sample name (with labels) →
/// value. Panics on any line that is not valid.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts
                .next()
                .unwrap_or_else(|| panic!("bad comment {line:?}"));
            assert!(is_name(name), "bad metric name in {line:?}");
            if kind == "TYPE" {
                let t = parts.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "bad type in {line:?}"
                );
                assert!(
                    types.insert(name.to_owned(), t.to_owned()).is_none(),
                    "{line:?}"
                );
            } else {
                assert_eq!(kind, "HELP", "{line:?}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = match series.split_once('{') {
            None => series,
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("{line:?}"));
                for label in split_labels(labels) {
                    let (key, quoted) = label.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                    assert!(is_name(key), "bad label name in {line:?}");
                    assert!(
                        quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'),
                        "bad label value in {line:?}"
                    );
                }
                name
            }
        };
        assert!(is_name(name), "bad sample name in {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE before {line:?}");
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate {line:?}"
        );
    }
    samples
}

/// Splits `a="x",b="y,z"` at the commas outside quotes.
fn split_labels(labels: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        out.push(&labels[start..]);
    }
    out
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Every partition of "orders" serves exactly `expected`, up to `next`.
fn check_all(client: &mut Client, expected: &[Vec<u8>], next: &[i64]) {
    for (partition, (expected, next)) in expected.iter().zip(next).enumerate() {
        let partition = partition as i32;
        let (code, hw, records) = fetch(client, "orders", partition, 0, 0);
        assert_eq!(code, ErrorCode::None);
        assert_eq!(hw, *next, "partition {partition}");
        assert_eq!(&records, expected, "partition {partition}");
        assert_eq!(
            latest_offset(client, "orders", partition),
            (ErrorCode::None, hw)
        );
    }
}

#[test]
fn produce_fetch_across_shards_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), 2);
    let mut client = Client::connect(broker.client);
    const PARTITIONS: i32 = 6;
    assert_eq!(
        create_topic(&mut client, "orders", PARTITIONS).0,
        ErrorCode::None
    );
    assert_eq!(
        create_topic(&mut client, "orders", PARTITIONS).0,
        ErrorCode::TopicAlreadyExists
    );
    let placement = metadata(&mut client, "orders");
    assert_eq!(placement.len(), PARTITIONS as usize);
    let shard_ports: BTreeMap<u16, u16> = placement.iter().copied().collect();
    assert_eq!(
        shard_ports.len(),
        2,
        "partitions on both shards: {placement:?}"
    );
    assert!(shard_ports.values().all(|port| *port != 0));

    // Every partition, two batches each, acks All, on the shared port.
    let mut expected: Vec<Vec<u8>> = vec![Vec::new(); PARTITIONS as usize];
    for round in 0..2 {
        for partition in 0..PARTITIONS {
            let batch = make_batch(3 + partition as usize, &format!("p{partition}r{round}"));
            let (code, base) = produce(&mut client, "orders", partition, &batch);
            assert_eq!(code, ErrorCode::None, "partition {partition}");
            assert_eq!(base, round * (3 + partition as i64));
            expected[partition as usize].extend(stamped(&batch, base));
        }
    }
    let mut next: Vec<i64> = (0..PARTITIONS).map(|p| 2 * (3 + p as i64)).collect();
    check_all(&mut client, &expected, &next);

    // By timestamp: the first record at or after it, exactly, even inside
    // a batch (both rounds carry the same timestamps, so round 0 answers).
    for (partition, ts_delta, offset) in [(5, 4, 4), (5, 7, 7), (0, 2, 2), (0, 0, 0)] {
        let (code, found, ts) = list_offsets(
            &mut client,
            "orders",
            partition,
            OffsetSpec::Timestamp,
            BATCH_TIMESTAMP_MS + ts_delta,
        );
        assert_eq!(code, ErrorCode::None);
        assert_eq!((found, ts), (offset, BATCH_TIMESTAMP_MS + ts_delta));
    }
    let (code, found, ts) = list_offsets(
        &mut client,
        "orders",
        5,
        OffsetSpec::Timestamp,
        BATCH_TIMESTAMP_MS + 8,
    );
    assert_eq!(
        (code, found, ts),
        (ErrorCode::None, -1, -1),
        "none that late"
    );

    // Straight to each shard's own port, asking for a partition the shard
    // does not own: forwarded over the mesh and answered the same.
    for (partition, (owner, _)) in placement.iter().enumerate() {
        let other_port = shard_ports.iter().find(|(s, _)| *s != owner).unwrap().1;
        let mut other = Client::connect(SocketAddr::from(([127, 0, 0, 1], *other_port)));
        let (code, _, records) = fetch(&mut other, "orders", partition as i32, 0, 0);
        assert_eq!(code, ErrorCode::None);
        assert_eq!(records, expected[partition]);
    }
    {
        let (owner, _) = placement[0];
        let other_port = shard_ports.iter().find(|(s, _)| **s != owner).unwrap().1;
        let mut other = Client::connect(SocketAddr::from(([127, 0, 0, 1], *other_port)));
        let batch = make_batch(2, "forwarded");
        let (code, base) = produce(&mut other, "orders", 0, &batch);
        assert_eq!((code, base), (ErrorCode::None, 6));
        expected[0].extend(stamped(&batch, base));
        next[0] += 2;
    }

    // A long-poll at the end is woken by a produce from another client.
    let waiter = {
        let addr = broker.client;
        std::thread::spawn(move || {
            let mut waiting = Client::connect(addr);
            let started = Instant::now();
            let (code, _, records) = fetch(&mut waiting, "orders", 1, 8, 20_000);
            (code, records, started.elapsed())
        })
    };
    let late = make_batch(1, "late");
    // The waiter may not be waiting yet; the fetch answers either way.
    let (code, base) = produce(&mut client, "orders", 1, &late);
    assert_eq!((code, base), (ErrorCode::None, 8));
    expected[1].extend(stamped(&late, base));
    next[1] += 1;
    let (code, records, waited) = waiter.join().unwrap();
    assert_eq!(code, ErrorCode::None);
    assert_eq!(records, stamped(&late, 8));
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    check_all(&mut client, &expected, &next);

    // Metrics parse and count what happened.
    let (status, text) = http_get(broker.metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    let samples = parse_prometheus(&text);
    let produced: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("shardmq_requests_total{") && k.contains("api=\"Produce\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(produced, (2 * PARTITIONS + 2) as f64);
    let partitions: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("shardmq_partitions{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(partitions, PARTITIONS as f64);
    assert!(samples.contains_key("process_cpu_seconds_total"));
    assert!(samples
        .keys()
        .any(|k| k.starts_with("shardmq_produce_latency_seconds_bucket{")));
    assert!(samples
        .keys()
        .any(|k| k.starts_with("shardmq_storage_fsync_latency_seconds_count{")));
    // Storage counters are copied into the metrics every second: poll.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, text) = http_get(broker.metrics, "/metrics").unwrap();
        assert_eq!(status, 200);
        let writes: f64 = parse_prometheus(&text)
            .iter()
            .filter(|(k, _)| k.starts_with("shardmq_storage_write_latency_seconds_count{"))
            .map(|(_, v)| v)
            .sum();
        if writes >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no segment write counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Per partition, on the owning shard: partition 0 took the two rounds
    // and the forwarded batch.
    let of_partition_0 = |family: &str| -> f64 {
        samples
            .iter()
            .filter(|(k, _)| {
                k.starts_with(&format!("{family}{{"))
                    && k.contains("topic=\"orders\"")
                    && k.contains("partition=\"0\"")
                    && k.contains("api=\"Produce\"")
            })
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(of_partition_0("shardmq_partition_requests_total"), 3.0);
    assert_eq!(
        of_partition_0("shardmq_partition_bytes_total"),
        expected[0].len() as f64
    );
    let commits: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("shardmq_raft_commit_latency_seconds_count{"))
        .map(|(_, v)| v)
        .sum();
    // Every acknowledged produce committed first.
    assert_eq!(commits, (2 * PARTITIONS + 2) as f64);

    // A long-poll in flight does not hold up the stop.
    let mut polling = Client::connect(broker.client);
    let poller = std::thread::spawn(move || {
        let id = polling.next_id;
        polling.send_raw(&request(id, Api::Fetch, |b| {
            let topic = b.create_string("orders");
            let item = p::FetchPartition::create(
                b,
                &p::FetchPartitionArgs {
                    topic: Some(topic),
                    partition: 2,
                    offset: 10,
                    max_bytes: 0,
                },
            );
            let items = b.create_vector(&[item]);
            p::FetchRequest::create(
                b,
                &p::FetchRequestArgs {
                    max_wait_ms: 60_000,
                    min_bytes: 1,
                    max_bytes: 0,
                    partitions: Some(items),
                    allow_follower: false,
                },
            )
            .as_union_value()
        }));
        // Answered (empty) or, if it arrived after the stop began,
        // dropped with the connection.
        polling.recv().map(|r| r.correlation_id())
    });
    drop(client);
    let stopping = Instant::now();
    let status = broker.terminate();
    assert!(status.success(), "{status}:\n{}", broker.log_text());
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "{:?}",
        stopping.elapsed()
    );
    assert!(matches!(poller.join().unwrap(), None | Some(1)));

    // Everything acknowledged is served after a restart.
    let broker = Broker::start(dir.path(), 2);
    let mut client = Client::connect(broker.client);
    let shards_after: Vec<u16> = metadata(&mut client, "orders")
        .iter()
        .map(|(s, _)| *s)
        .collect();
    let shards_before: Vec<u16> = placement.iter().map(|(s, _)| *s).collect();
    assert_eq!(shards_after, shards_before);
    check_all(&mut client, &expected, &next);
}

#[test]
fn bad_input_gets_its_error_and_others_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), 2);
    let mut healthy = Client::connect(broker.client);
    assert_eq!(create_topic(&mut healthy, "t", 2).0, ErrorCode::None);
    let good = make_batch(2, "good");
    assert_eq!(produce(&mut healthy, "t", 0, &good), (ErrorCode::None, 0));
    let still_served = |healthy: &mut Client| {
        let (code, _, records) = fetch(healthy, "t", 0, 0, 0);
        assert_eq!(code, ErrorCode::None);
        assert_eq!(records, stamped(&good, 0));
    };

    // Garbage: a well-delimited frame that is not a flatbuffer.
    let mut bad = Client::connect(broker.client);
    let mut garbage = 60u32.to_le_bytes().to_vec();
    garbage.extend(std::iter::repeat_n(0xa5, 60));
    bad.send_raw(&garbage);
    let response = bad.recv().unwrap();
    assert_eq!(response.error_code(), ErrorCode::CorruptFrame);
    // The framing is intact: the same connection still works.
    assert_eq!(
        create_topic(&mut bad, "t", 1).0,
        ErrorCode::TopicAlreadyExists
    );
    still_served(&mut healthy);

    // An oversize frame: answered, then the connection is closed.
    let mut oversize = Client::connect(broker.client);
    oversize.send_raw(&(64u32 << 20).to_le_bytes());
    let response = oversize.recv().unwrap();
    assert_eq!(response.error_code(), ErrorCode::BatchTooLarge);
    assert!(oversize.recv().is_none());
    still_served(&mut healthy);

    // A batch whose crc does not match.
    let mut corrupt = make_batch(2, "corrupt");
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(
        produce(&mut healthy, "t", 1, &corrupt).0,
        ErrorCode::CorruptBatch
    );
    // A batch too large for the limits, and a record too large.
    let big = make_batch(300, &"x".repeat(1000));
    assert_eq!(
        produce(&mut healthy, "t", 1, &big).0,
        ErrorCode::BatchTooLarge
    );
    let mut buf = Vec::new();
    let mut builder = BatchBuilder::new(&mut buf, 0, 0);
    builder.append(0, None, Some(&vec![7u8; 70_000]), &[]);
    let len = builder.finish();
    assert_eq!(
        produce(&mut healthy, "t", 1, &buf[..len]).0,
        ErrorCode::RecordTooLarge
    );

    // Unknown topic, partition out of range, offset out of range.
    assert_eq!(
        produce(&mut healthy, "nope", 0, &good).0,
        ErrorCode::UnknownTopic
    );
    assert_eq!(
        produce(&mut healthy, "t", 2, &good).0,
        ErrorCode::UnknownPartition
    );
    assert_eq!(
        produce(&mut healthy, "t", -1, &good).0,
        ErrorCode::UnknownPartition
    );
    assert_eq!(
        fetch(&mut healthy, "nope", 0, 0, 0).0,
        ErrorCode::UnknownTopic
    );
    assert_eq!(
        fetch(&mut healthy, "t", 5, 0, 0).0,
        ErrorCode::UnknownPartition
    );
    assert_eq!(
        fetch(&mut healthy, "t", 0, 3, 0).0,
        ErrorCode::OffsetOutOfRange
    );
    assert_eq!(
        fetch(&mut healthy, "t", 0, -1, 0).0,
        ErrorCode::OffsetOutOfRange
    );
    // Invalid topic names and partition counts.
    assert_eq!(
        create_topic(&mut healthy, "a/b", 1).0,
        ErrorCode::InvalidTopicName
    );
    assert_eq!(
        create_topic(&mut healthy, "z", 0).0,
        ErrorCode::InvalidPartitions
    );
    // Nothing invalid was appended.
    assert_eq!(latest_offset(&mut healthy, "t", 1), (ErrorCode::None, 0));
    still_served(&mut healthy);
    let (status, _) = http_get(broker.metrics, "/health").unwrap();
    assert_eq!(status, 200);
}

/// Like [`produce`], acks All, but `None` once the broker is gone (the
/// connection fails) instead of panicking.
fn try_produce(client: &mut Client, topic: &str, partition: i32, batch: &[u8]) -> Option<i64> {
    let id = client.next_id;
    client.next_id += 1;
    let frame = request(id, Api::Produce, |b| {
        let topic = b.create_string(topic);
        let records = b.create_vector(batch);
        let item = p::ProducePartition::create(
            b,
            &p::ProducePartitionArgs {
                topic: Some(topic),
                partition,
                records: Some(records),
            },
        );
        let items = b.create_vector(&[item]);
        p::ProduceRequest::create(
            b,
            &p::ProduceRequestArgs {
                acks: Acks::All,
                timeout_ms: 10_000,
                partitions: Some(items),
            },
        )
        .as_union_value()
    });
    client.stream.write_all(&frame).ok()?;
    let mut prefix = [0u8; 4];
    client.stream.read_exact(&mut prefix).ok()?;
    let mut bytes = prefix.to_vec();
    bytes.resize(4 + u32::from_le_bytes(prefix) as usize, 0);
    client.stream.read_exact(&mut bytes[4..]).ok()?;
    let response = ResponseFrame::verify(Frame::copy_from_slice(&bytes).unwrap()).unwrap();
    assert_eq!(response.correlation_id(), id);
    assert_eq!(response.error_code(), ErrorCode::None);
    let body = response.response().body_as_produce_response().unwrap();
    let item = body.partitions().unwrap().get(0);
    assert_eq!(
        item.error_code(),
        ErrorCode::None,
        "{:?}",
        item.error_message()
    );
    Some(item.base_offset())
}

/// Every batch of `partition` from offset 0, by base offset.
fn fetch_all(client: &mut Client, topic: &str, partition: i32) -> BTreeMap<i64, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut offset = 0;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, hw, records) = fetch(client, topic, partition, offset, 0);
        assert_eq!(code, ErrorCode::None);
        if offset >= hw {
            return out;
        }
        assert!(!records.is_empty(), "no records below the high watermark");
        let mut rest = &records[..];
        while !rest.is_empty() {
            // Base offset (8 bytes), then the length of the rest (i32 BE).
            let len = 12 + i32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
            let view = batch::RecordBatchView::parse(&rest[..len]).unwrap();
            out.insert(view.base_offset(), rest[..len].to_vec());
            offset = view.next_offset();
            rest = &rest[len..];
        }
        assert!(Instant::now() < deadline, "fetching partition {partition}");
    }
}

#[test]
fn acked_records_survive_kill_9_during_a_produce_loop() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    const PARTITIONS: i32 = 4;
    const ACKED_BEFORE_KILL: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), 2);
    let mut client = Client::connect(broker.client);
    assert_eq!(
        create_topic(&mut client, "acked", PARTITIONS).0,
        ErrorCode::None
    );
    drop(client);

    // Producers (one per partition) loop with acks All until the broker
    // is gone, recording what was acknowledged where.
    // (partition, base offset, batch as produced)
    type Acked = Vec<(i32, i64, Vec<u8>)>;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PARTITIONS)
        .map(|partition| {
            let (acked, count, done) = (acked.clone(), count.clone(), done.clone());
            let addr = broker.client;
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                for i in 0usize.. {
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    let batch = make_batch(1 + i % 3, &format!("p{partition}n{i}"));
                    let Some(base) = try_produce(&mut client, "acked", partition, &batch) else {
                        return;
                    };
                    acked.lock().unwrap().push((partition, base, batch));
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + DEADLINE;
    while count.load(Ordering::Relaxed) < ACKED_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "only {} produces acknowledged:\n{}",
            count.load(Ordering::Relaxed),
            broker.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SIGKILL in the middle of the loop.
    let mut child = broker.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    done.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.join().unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= ACKED_BEFORE_KILL);

    let broker = Broker::start(dir.path(), 2);
    let mut client = Client::connect(broker.client);
    let stored: Vec<BTreeMap<i64, Vec<u8>>> = (0..PARTITIONS)
        .map(|partition| fetch_all(&mut client, "acked", partition))
        .collect();
    for (partition, base, batch) in &acked {
        let found = stored[*partition as usize]
            .get(base)
            .unwrap_or_else(|| panic!("acked batch at {partition}/{base} lost"));
        let epoch = batch::RecordBatchView::parse(found)
            .unwrap()
            .partition_leader_epoch();
        let mut expected = batch.clone();
        batch::stamp(&mut expected, *base, epoch);
        assert_eq!(found, &expected, "batch at {partition}/{base}");
    }
    // A produce after the restart lands right after what survived.
    for partition in 0..PARTITIONS {
        let next = stored[partition as usize]
            .iter()
            .next_back()
            .map_or(0, |(base, b)| {
                base + i64::from(batch::RecordBatchView::parse(b).unwrap().offset_count())
            });
        let (code, base) = produce(&mut client, "acked", partition, &make_batch(1, "after"));
        assert_eq!((code, base), (ErrorCode::None, next));
        // Stamped with the leader's term: the restarted replica won a new
        // election.
        let after = fetch_all(&mut client, "acked", partition);
        let epoch = |b: &Vec<u8>| {
            batch::RecordBatchView::parse(b)
                .unwrap()
                .partition_leader_epoch()
        };
        assert!(epoch(&after[&base]) > after.get(&0).map_or(0, epoch));
    }
}

fn delete_topic(client: &mut Client, name: &str) -> ErrorCode {
    let response = client.call(Api::DeleteTopics, |b| {
        let name = b.create_string(name);
        let names = b.create_vector(&[name]);
        p::DeleteTopicsRequest::create(
            b,
            &p::DeleteTopicsRequestArgs {
                names: Some(names),
                timeout_ms: 0,
            },
        )
        .as_union_value()
    });
    let body = response
        .response()
        .body_as_delete_topics_response()
        .unwrap();
    assert_eq!(body.error_code(), ErrorCode::None);
    body.topics().unwrap().get(0).error_code()
}

/// A batch of `records` records of `value_bytes` bytes each, created now.
fn big_batch(records: usize, value_bytes: usize, fill: u8) -> Vec<u8> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let value = vec![fill; value_bytes];
    let mut buf = Vec::new();
    let mut builder = BatchBuilder::new(&mut buf, 0, now_ms);
    for _ in 0..records {
        builder.append(now_ms, None, Some(&value), &[]);
    }
    let len = builder.finish();
    buf.truncate(len);
    buf
}

/// Segment files (`*.log`) of shard 0 and their total size.
fn segment_files(data: &Path) -> (usize, u64) {
    files_with_extension(data, "log")
}

/// Count and bytes of the files of shard 0 whose extension is `ext`.
fn files_with_extension(data: &Path, ext: &str) -> (usize, u64) {
    let mut count = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(data.join("shard-0")).unwrap() {
        let entry = entry.unwrap();
        if entry.path().extension().is_some_and(|e| e == ext) {
            count += 1;
            bytes += entry.metadata().unwrap().len();
        }
    }
    (count, bytes)
}

/// A topic written well past its retention by size keeps only its newest
/// bytes, a topic of records older than the retention by age (7 days, the
/// default) keeps none, a deleted topic's segments are deleted, the space
/// comes back (4 MiB segments, retention 1 MiB per partition, checked every
/// 100 ms; no segment file kept for reuse, which storage's own tests
/// cover), and a restart keeps the new log starts.
#[test]
fn retention_and_deleted_topics_give_back_disk_space() {
    const BATCHES: usize = 48;
    const BATCH_RECORDS: usize = 8;
    const VALUE_BYTES: usize = 24 << 10;
    let dir = tempfile::tempdir().unwrap();
    let extra = "retention_bytes = 1048576\nretention_check_interval_ms = 100\n\
                 recycle_segments_max = 0\n";
    let mut broker = Broker::start_with(dir.path(), 1, extra);
    let mut client = Client::connect(broker.client);
    assert_eq!(create_topic(&mut client, "kept", 1).0, ErrorCode::None);
    assert_eq!(create_topic(&mut client, "gone", 1).0, ErrorCode::None);
    assert_eq!(create_topic(&mut client, "aged", 1).0, ErrorCode::None);
    // Records created in 2023.
    for i in 0..3 {
        let (code, base) = produce(&mut client, "aged", 0, &make_batch(5, "old"));
        assert_eq!((code, base), (ErrorCode::None, i * 5));
    }
    // About 9 MiB into each topic: several 4 MiB segments.
    let mut next_kept = 0;
    for i in 0..BATCHES {
        for (topic, fill) in [("kept", b'k'), ("gone", b'g')] {
            let batch = big_batch(BATCH_RECORDS, VALUE_BYTES, fill + (i % 2) as u8);
            let (code, base) = produce(&mut client, topic, 0, &batch);
            assert_eq!(code, ErrorCode::None, "{topic} batch {i}");
            if topic == "kept" {
                assert_eq!(base, next_kept);
                next_kept += BATCH_RECORDS as i64;
            }
        }
    }
    // Retention may already have run; the log has taken all of it.
    let metric_sum = |prefix: &str| -> f64 {
        let (_, text) = http_get(broker.metrics, "/metrics").unwrap();
        parse_prometheus(&text)
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    // (The counters are copied from the log periodically: poll.)
    let produced_bytes = (2 * BATCHES * BATCH_RECORDS * VALUE_BYTES) as u64;
    let deadline = Instant::now() + DEADLINE;
    let written_bytes = loop {
        let bytes = metric_sum("shardmq_storage_append_bytes_total{") as u64;
        if bytes >= produced_bytes {
            break bytes;
        }
        assert!(Instant::now() < deadline, "{bytes} bytes appended");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(delete_topic(&mut client, "gone"), ErrorCode::None);

    // Poll until the collector has deleted what neither topic holds.
    let deadline = Instant::now() + DEADLINE;
    let (mut earliest, mut files);
    loop {
        (_, earliest, _) = list_offsets(&mut client, "kept", 0, OffsetSpec::Earliest, 0);
        files = segment_files(&dir.path().join("data"));
        // Left: the active segment, the one being prepared and at most one
        // sealed segment holding the kept topic's newest MiB.
        let (_, aged_start, _) = list_offsets(&mut client, "aged", 0, OffsetSpec::Earliest, 0);
        if earliest > 0 && files.0 <= 3 && aged_start == 15 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not give back space: earliest {earliest}, {files:?} (appended \
             {written_bytes} bytes)\n{}",
            broker.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(files.1 < written_bytes, "{files:?} vs {written_bytes}");
    // Retention keeps at most its budget, and drops whole batches: what
    // is left is within one batch of 1 MiB.
    let kept_bytes = (next_kept - earliest) as usize * VALUE_BYTES;
    let batch_bytes = BATCH_RECORDS * VALUE_BYTES;
    assert!(
        kept_bytes <= 1 << 20 && kept_bytes + batch_bytes > (1 << 20) - batch_bytes,
        "{kept_bytes} bytes of values kept"
    );
    // At least the 4 MiB segments beyond the three left were deleted.
    let freed = metric_sum("shardmq_storage_freed_bytes_total{");
    let deleted = metric_sum("shardmq_storage_segments_deleted_total{");
    assert!(deleted >= 2.0, "segments deleted: {deleted}");
    assert!(freed >= (8 << 20) as f64, "bytes freed: {freed}");
    let free_files = files_with_extension(&dir.path().join("data"), "free");
    assert_eq!(free_files.0, 0, "no file is kept for reuse");

    // What is kept reads back from the new start, in order, intact.
    let (code, hw, records) = fetch(&mut client, "kept", 0, earliest, 0);
    assert_eq!(code, ErrorCode::None);
    assert_eq!(hw, next_kept);
    let len = 12 + i32::from_be_bytes(records[8..12].try_into().unwrap()) as usize;
    let view = batch::RecordBatchView::parse(&records[..len]).unwrap();
    assert_eq!(view.base_offset(), earliest);
    // Below the start is gone.
    assert_eq!(
        fetch(&mut client, "kept", 0, 0, 0).0,
        ErrorCode::OffsetOutOfRange
    );
    assert_eq!(
        produce(&mut client, "gone", 0, &big_batch(1, 10, b'x')).0,
        ErrorCode::UnknownTopic
    );

    // The new log start survives a restart.
    drop(client);
    assert!(broker.terminate().success());
    let broker = Broker::start_with(dir.path(), 1, extra);
    let mut client = Client::connect(broker.client);
    let (_, earliest_after, _) = list_offsets(&mut client, "kept", 0, OffsetSpec::Earliest, 0);
    assert!(earliest_after >= earliest, "{earliest_after} < {earliest}");
    assert_eq!(
        latest_offset(&mut client, "kept", 0),
        (ErrorCode::None, next_kept)
    );
    let (_, aged_start, _) = list_offsets(&mut client, "aged", 0, OffsetSpec::Earliest, 0);
    assert_eq!(aged_start, 15);
    assert_eq!(latest_offset(&mut client, "aged", 0), (ErrorCode::None, 15));
    // An emptied partition takes new records at the next offset.
    let (code, base) = produce(&mut client, "aged", 0, &make_batch(2, "new"));
    assert_eq!((code, base), (ErrorCode::None, 15));
}
