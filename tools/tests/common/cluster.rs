//! A cluster of real broker processes for the tools' tests: N brokers on
//! 127.0.0.1 with distinct free ports and one shard each, a static peer
//! list, a temporary directory holding every broker's data and log. Brokers
//! can be killed, stopped, paused, resumed and restarted; every wait polls
//! observed state with a deadline. On drop every process is killed (paused
//! ones resumed first), and when the test failed the tail of every broker's
//! log is printed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{broker_binary, free_port};

/// How long a broker may take to become healthy, and a cluster to form.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One broker of the cluster.
#[derive(Debug)]
pub struct Node {
    pub id: i32,
    pub client: u16,
    pub metrics: u16,
    pub peer: u16,
    pub shard_base: u16,
    pub data: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of broker processes.
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub cluster_id: String,
    pub config: PathBuf,
    broker: PathBuf,
}

/// The broker configuration every node shares (ports and ids are flags).
pub const BASE_CONFIG: &str = "\
[broker]
shards = 1
io_memory_bytes = 524288

[storage]
segment_bytes = 8388608
write_buffer_bytes = 1048576
entry_bytes_max = 1048576

[limits]
batch_bytes_max = 1048576
record_bytes_max = 262144

[cluster]
broker_session_timeout_ms = 3000
# Small, so every test exercises controller snapshots and log compaction.
controller_snapshot_entries = 25
";

impl Cluster {
    /// Starts `n` brokers with [`BASE_CONFIG`] and waits until the
    /// cluster formed: every broker healthy, the controller has a leader
    /// and all of them are registered.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, BASE_CONFIG)
    }

    /// [`start`](Self::start) with the configuration file `config`.
    pub fn start_with(n: usize, config_text: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("broker.toml");
        std::fs::write(&config, config_text).expect("config written");
        let nodes = (1..=n as i32)
            .map(|id| Node {
                id,
                client: free_port(),
                metrics: free_port(),
                peer: free_port(),
                shard_base: free_port(),
                data: dir.path().join(format!("broker-{id}")),
                log: dir.path().join(format!("broker-{id}.log")),
                child: None,
                paused: false,
            })
            .collect();
        let mut cluster = Cluster {
            dir,
            nodes,
            cluster_id: "test-cluster".to_owned(),
            config,
            broker: broker_binary(),
        };
        for id in 1..=n as i32 {
            cluster.spawn(id);
        }
        for id in 1..=n as i32 {
            cluster.wait_healthy(id);
        }
        cluster.wait_formed(n);
        cluster
    }

    pub fn node(&self, id: i32) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: i32) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// `--peers` of this cluster.
    pub fn peers(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every broker's client address, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(Node::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client addresses of the running brokers but `except`.
    pub fn bootstrap_without(&self, except: i32) -> String {
        self.nodes
            .iter()
            .filter(|n| n.id != except && n.running())
            .map(Node::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The command line of broker `id`, extra arguments last.
    pub fn broker_command(&self, id: i32, extra: &[&str]) -> Command {
        let node = self.node(id);
        let mut cmd = Command::new(&self.broker);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--peers")
            .arg(self.peers())
            .arg("--cluster-id")
            .arg(&self.cluster_id)
            .arg("--listen")
            .arg(node.addr())
            .arg("--metrics")
            .arg(format!("127.0.0.1:{}", node.metrics))
            .arg("--shard-port-base")
            .arg(node.shard_base.to_string())
            .arg("--data-dir")
            .arg(&node.data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// Starts broker `id` (not waiting for it).
    pub fn spawn(&mut self, id: i32) {
        assert!(!self.node(id).running(), "broker {id} already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.node(id).log)
            .expect("log file");
        let child = self
            .broker_command(id, &[])
            .stderr(log)
            .spawn()
            .expect("broker starts");
        self.node_mut(id).child = Some(child);
    }

    /// Whether broker `id`'s /health answers 200.
    pub fn healthy(&self, id: i32) -> bool {
        matches!(http_get(self.node(id).metrics, "/health"), Some((200, _)))
    }

    /// Waits until broker `id` is healthy (it exiting fails the test).
    pub fn wait_healthy(&mut self, id: i32) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .node_mut(id)
                .child
                .as_mut()
                .expect("broker runs")
                .try_wait()
                .expect("status")
            {
                panic!(
                    "broker {id} exited with {status} while starting:\n{}",
                    self.log_tail(id, 40)
                );
            }
            if self.healthy(id) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker {id} not healthy within {START_TIMEOUT:?}:\n{}",
                self.log_tail(id, 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the controller has a leader and `n` brokers are active.
    pub fn wait_formed(&self, n: usize) {
        wait_for("the cluster to form", START_TIMEOUT, || {
            let d = self.describe_cluster()?;
            let active = d["brokers"]
                .as_array()?
                .iter()
                .filter(|b| b["status"] == "active")
                .count();
            (d["controller_id"].as_i64()? >= 0 && active >= n).then_some(())
        });
    }

    /// `shardmqctl cluster describe --json`, when a broker answers.
    pub fn describe_cluster(&self) -> Option<serde_json::Value> {
        self.describe_cluster_at(&self.bootstrap())
    }

    pub fn describe_cluster_at(&self, bootstrap: &str) -> Option<serde_json::Value> {
        let out = self.ctl_at(bootstrap, &["cluster", "describe", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `shardmqctl topic describe TOPIC --json`, when a broker answers.
    pub fn describe_topic(&self, topic: &str) -> Option<serde_json::Value> {
        self.describe_topic_at(&self.bootstrap(), topic)
    }

    pub fn describe_topic_at(&self, bootstrap: &str, topic: &str) -> Option<serde_json::Value> {
        let out = self.ctl_at(bootstrap, &["topic", "describe", topic, "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The controller's leader, as the running brokers know it.
    pub fn controller_leader(&self) -> Option<i32> {
        let d = self.describe_cluster()?;
        let id = d["controller_id"].as_i64()?;
        (id >= 0).then_some(id as i32)
    }

    /// Runs shardmqctl against every broker.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_at(&self.bootstrap(), args)
    }

    /// Runs shardmqctl with `--bootstrap bootstrap`.
    pub fn ctl_at(&self, bootstrap: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_shardmqctl"))
            .arg("--bootstrap")
            .arg(bootstrap)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("shardmqctl runs")
    }

    /// Runs shardmqctl and asserts it succeeded; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "shardmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn signal(&self, id: i32, signal: &str) {
        let pid = self.node(id).pid().expect("broker runs");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGKILL: the broker dies with whatever it had not made durable.
    pub fn kill(&mut self, id: i32) {
        if self.node(id).paused {
            self.resume(id);
        }
        let node = self.node_mut(id);
        let mut child = node.child.take().expect("broker runs");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub fn terminate(&mut self, id: i32) {
        self.signal(id, "-TERM");
        let node = self.node_mut(id);
        let mut child = node.child.take().expect("broker runs");
        let status = wait_for("the broker to stop", Duration::from_secs(60), || {
            child.try_wait().expect("status")
        });
        assert!(status.success(), "broker {id} exited with {status}");
    }

    /// SIGSTOP: the broker freezes (its sockets stay open).
    pub fn pause(&mut self, id: i32) {
        self.signal(id, "-STOP");
        self.node_mut(id).paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: i32) {
        self.signal(id, "-CONT");
        self.node_mut(id).paused = false;
    }

    /// Starts broker `id` again on its ports and data, and waits until it
    /// is healthy.
    pub fn restart(&mut self, id: i32) {
        self.spawn(id);
        self.wait_healthy(id);
    }

    /// Waits for broker `id` (started with [`spawn`](Self::spawn)) to exit;
    /// its status.
    pub fn wait_exit(&mut self, id: i32, timeout: Duration) -> std::process::ExitStatus {
        let node = self.node_mut(id);
        let mut child = node.child.take().expect("broker runs");
        wait_for("the broker to exit", timeout, || {
            child.try_wait().expect("status")
        })
    }

    pub fn log_text(&self, id: i32) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    pub fn log_tail(&self, id: i32, lines: usize) -> String {
        let text = self.log_text(id);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The partition's leader, as the running brokers' replicas report it
    /// (a replica of the highest term that says it leads).
    pub fn partition_leader(&self, topic: &str, partition: i64) -> Option<i32> {
        let d = self.describe_topic(topic)?;
        leader_in(&d, partition)
    }

    /// Each replica's state of `topic`/`partition` as the JSON of topic
    /// describe has it: (node, state object).
    pub fn replica_states(&self, topic: &str, partition: i64) -> Vec<(i32, serde_json::Value)> {
        let Some(d) = self.describe_topic(topic) else {
            return Vec::new();
        };
        replicas_in(&d, partition)
    }
}

/// The replicas of `partition` in a topic describe JSON: (node, state).
pub fn replicas_in(d: &serde_json::Value, partition: i64) -> Vec<(i32, serde_json::Value)> {
    let Some(parts) = d["partitions"].as_array() else {
        return Vec::new();
    };
    parts
        .iter()
        .filter(|p| p["partition"].as_i64() == Some(partition))
        .flat_map(|p| p["replicas"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| Some((r["node_id"].as_i64()? as i32, r["state"].clone())))
        .filter(|(_, s)| s.is_object())
        .collect()
}

/// The leader of `partition` in a topic describe JSON: the replica of the
/// highest term whose role is leader.
pub fn leader_in(d: &serde_json::Value, partition: i64) -> Option<i32> {
    replicas_in(d, partition)
        .into_iter()
        .filter(|(_, s)| s["role"] == "leader")
        .max_by_key(|(_, s)| s["term"].as_u64().unwrap_or(0))
        .map(|(n, _)| n)
}

/// GET `path` on 127.0.0.1:`port`: the status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                if node.paused {
                    let _ = Command::new("kill")
                        .args(["-CONT", &child.id().to_string()])
                        .status();
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if failed {
            for node in &self.nodes {
                eprintln!(
                    "----- broker {} log (last 60 lines) -----\n{}",
                    node.id,
                    self.log_tail(node.id, 60)
                );
            }
        }
    }
}

/// Tests that start a cluster take this first: one cluster at a time
/// shares the machine's cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Acknowledged records as `shardmqctl produce --report-acks` prints them:
/// line → (partition, offset).
pub fn parse_acks(stdout: &str) -> BTreeMap<String, (i64, i64)> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let p = parts.next()?.parse().ok()?;
            let o = parts.next()?.parse().ok()?;
            Some((parts.next()?.to_owned(), (p, o)))
        })
        .collect()
}

/// Produces `lines` to `topic` with acks=all through shardmqctl; the acks.
pub fn produce(
    cluster: &Cluster,
    topic: &str,
    lines: impl Iterator<Item = String> + Send + 'static,
) -> BTreeMap<String, (i64, i64)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmqctl"))
        .args([
            "--bootstrap",
            &cluster.bootstrap(),
            "produce",
            topic,
            "--report-acks",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shardmqctl produce starts");
    // Written from a thread of its own: the acks come back on stdout while
    // records still go in.
    let stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let mut stdin = std::io::BufWriter::new(stdin);
        for line in lines {
            writeln!(stdin, "{line}").expect("write a record");
        }
    });
    let out = child.wait_with_output().expect("shardmqctl produce ends");
    writer.join().expect("the writer thread");
    assert!(
        out.status.success(),
        "produce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_acks(&String::from_utf8(out.stdout).expect("utf-8"))
}

/// Every record of `topic` as node `node`'s replicas serve it (follower
/// reads), `(partition, offset) → value`.
pub fn read_replica(cluster: &Cluster, topic: &str, node: i32) -> BTreeMap<(i64, i64), String> {
    let out = cluster.ctl(&[
        "consume",
        topic,
        "--from-beginning",
        "--print-offsets",
        "--from-node",
        &node.to_string(),
    ]);
    assert!(
        out.status.success(),
        "consume from node {node} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let p = parts.next().unwrap().parse().unwrap();
            let o = parts.next().unwrap().parse().unwrap();
            ((p, o), parts.next().unwrap_or("").to_owned())
        })
        .collect()
}

/// Every record of `topic` as its leaders serve it, asking the brokers of
/// `bootstrap`: `(partition, offset) → value`.
pub fn read_leaders(
    cluster: &Cluster,
    bootstrap: &str,
    topic: &str,
) -> BTreeMap<(i64, i64), String> {
    let out = cluster.ctl_at(
        bootstrap,
        &["consume", topic, "--from-beginning", "--print-offsets"],
    );
    assert!(
        out.status.success(),
        "consume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let p = parts.next().unwrap().parse().unwrap();
            let o = parts.next().unwrap().parse().unwrap();
            ((p, o), parts.next().unwrap_or("").to_owned())
        })
        .collect()
}

/// Asserts every acknowledged record is at the partition and offset it was
/// acknowledged with, and that within a partition the records of one
/// producer (lines `PREFIX-SEQ` of one prefix, sent in `seq` order) have
/// increasing offsets.
pub fn assert_acked_present(
    read: &BTreeMap<(i64, i64), String>,
    acks: &BTreeMap<String, (i64, i64)>,
    seq: impl Fn(&str) -> u64,
) {
    for (line, at) in acks {
        assert_eq!(
            read.get(at),
            Some(line),
            "acknowledged record {line} at {at:?}"
        );
    }
    let mut by_producer: BTreeMap<(i64, &str), Vec<(u64, i64)>> = BTreeMap::new();
    for (line, (p, o)) in acks {
        let prefix = line.rsplit_once('-').map_or("", |(prefix, _)| prefix);
        by_producer
            .entry((*p, prefix))
            .or_default()
            .push((seq(line), *o));
    }
    for ((p, prefix), mut v) in by_producer {
        v.sort_unstable();
        assert!(
            v.windows(2).all(|w| w[0].1 < w[1].1),
            "partition {p}: acknowledged records of {prefix:?} out of order"
        );
    }
}

/// Waits until every replica of every partition of `topic` has committed
/// everything its leader has.
pub fn wait_replicas_caught_up(cluster: &Cluster, topic: &str, partitions: i64) {
    wait_for("every replica to catch up", Duration::from_secs(60), || {
        let d = cluster.describe_topic(topic)?;
        for p in 0..partitions {
            let replicas = replicas_in(&d, p);
            if replicas.len() != cluster.nodes.iter().filter(|n| n.running()).count() {
                return None;
            }
            let marks: Vec<u64> = replicas
                .iter()
                .map(|(_, s)| s["high_watermark"].as_u64().unwrap_or(0))
                .collect();
            let ends: Vec<u64> = replicas
                .iter()
                .map(|(_, s)| s["log_end_offset"].as_u64().unwrap_or(0))
                .collect();
            if marks.iter().any(|m| *m != marks[0]) || ends.iter().any(|e| *e != marks[0]) {
                return None;
            }
        }
        Some(())
    });
}

/// The path of a file in the cluster's directory.
pub fn path_in(cluster: &Cluster, name: &str) -> PathBuf {
    cluster.dir.path().join(name)
}

/// Whether `path` exists.
pub fn exists(path: &Path) -> bool {
    path.exists()
}
