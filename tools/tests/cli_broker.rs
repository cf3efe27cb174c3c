//! The network commands of `shardmqctl` against a real broker process.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Builds the broker binary next to this crate's binary and returns its
/// path; fails the test if it cannot.
fn broker_binary() -> PathBuf {
    let ctl = Path::new(env!("CARGO_BIN_EXE_shardmqctl"));
    let profile_dir = ctl.parent().expect("binary directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "shardmq-engine", "--bin", "shardmq-broker"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs to build the broker");
    assert!(status.success(), "building shardmq-broker failed: {status}");
    let broker = profile_dir.join("shardmq-broker");
    assert!(
        broker.is_file(),
        "shardmq-broker not found at {} after building it",
        broker.display()
    );
    broker
}

/// A port below the kernel's ephemeral range (32768 and up), free when
/// picked. The broker binds with SO_REUSEPORT, so a port the kernel handed
/// to another broker's shard (bind to port 0) could otherwise be shared
/// silently with it; ports here are never handed out that way. Each test
/// process takes its own block of 20 ports, by pid.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let block = 20_000 + (std::process::id() % 600) as u16 * 20;
    for _ in 0..20 {
        let port = block + NEXT.fetch_add(1, Ordering::Relaxed) % 20;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {block}..{}", block + 20);
}

/// A broker process on free ports in a temporary directory, killed on drop.
struct Broker {
    child: Child,
    addr: String,
    _data: tempfile::TempDir,
}

impl Broker {
    fn start() -> Self {
        let binary = broker_binary();
        let data = tempfile::tempdir().expect("tempdir");
        let addr = format!("127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .args(["--listen", &addr, "--metrics", &metrics, "--shards", "2"])
            .arg("--data-dir")
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("broker starts");
        let mut broker = Broker {
            child,
            addr,
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(&broker.addr).is_ok() {
                break;
            }
            if let Some(status) = broker.child.try_wait().expect("broker status") {
                panic!("broker exited before accepting connections: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "broker did not accept connections on {} within 30 s",
                broker.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    fn ctl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardmqctl"))
            .args(args)
            .args(["--bootstrap", &self.addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("shardmqctl runs");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(input);
        child.wait_with_output().expect("shardmqctl ends")
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.ctl(args, stdin);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "shardmqctl {args:?} failed ({}): {}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn topics_produce_and_consume_through_a_broker() {
    let broker = Broker::start();

    // Topics.
    let out = broker.ok(
        &[
            "topic",
            "create",
            "events",
            "--partitions",
            "3",
            "--replication-factor",
            "1",
        ],
        None,
    );
    assert!(out.contains("created topic events"), "{out}");
    broker.ok(&["topic", "create", "other", "--partitions", "1"], None);
    let list = broker.ok(&["topic", "list"], None);
    assert!(
        list.lines()
            .any(|l| l == "events partitions=3 replication-factor=1"),
        "{list}"
    );
    assert!(list.lines().any(|l| l.starts_with("other ")), "{list}");
    let describe = broker.ok(&["topic", "describe", "events"], None);
    assert!(
        describe.starts_with("topic events partitions=3"),
        "{describe}"
    );
    for p in 0..3 {
        let line = describe
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("partition={p} ")))
            .unwrap_or_else(|| panic!("partition {p} described: {describe}"));
        assert!(
            line.contains(" shard=") && line.contains(" port="),
            "{line}"
        );
    }
    let cluster = broker.ok(&["cluster", "describe"], None);
    assert!(cluster.starts_with("brokers=1"), "{cluster}");
    assert!(cluster.contains("topic events partitions=3"), "{cluster}");

    // A duplicate is refused with one line on stderr and exit 1.
    let dup = broker.ctl(&["topic", "create", "events", "--partitions", "3"], None);
    assert_eq!(dup.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&dup.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // Usage errors exit 2.
    let usage = broker.ctl(&["topic", "create", "x"], None);
    assert_eq!(usage.status.code(), Some(2));

    // Produce 100 lines, keyed so they spread over the partitions.
    let input: String = (0..100).map(|i| format!("k{i}:value-{i}\n")).collect();
    let acks = broker.ok(
        &["produce", "events", "--key-separator", ":", "--report-acks"],
        Some(&input),
    );
    let mut produced: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let acked: Vec<&str> = acks.lines().collect();
    assert_eq!(acked.len(), 100, "{acks}");
    for (i, line) in acked.iter().enumerate() {
        let mut parts = line.splitn(3, ' ');
        let partition: i32 = parts.next().expect("partition").parse().expect("partition");
        let offset: i64 = parts.next().expect("offset").parse().expect("offset");
        let text = parts.next().expect("line");
        assert_eq!(text, format!("k{i}:value-{i}"), "acks in input order");
        produced
            .entry(partition)
            .or_default()
            .push((offset, format!("value-{i}")));
    }
    assert!(
        produced.len() > 1,
        "keys spread over partitions: {produced:?}"
    );
    for records in produced.values() {
        let offsets: Vec<i64> = records.iter().map(|r| r.0).collect();
        let dense: Vec<i64> = (0..records.len() as i64).collect();
        assert_eq!(offsets, dense, "offsets per partition");
    }

    // Consume them back.
    let consumed = broker.ok(
        &[
            "consume",
            "events",
            "--from-beginning",
            "--count",
            "100",
            "--print-offsets",
        ],
        None,
    );
    let mut got: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for line in consumed.lines() {
        let mut parts = line.splitn(3, ' ');
        let partition: i32 = parts.next().expect("partition").parse().expect("partition");
        let offset: i64 = parts.next().expect("offset").parse().expect("offset");
        let value = parts.next().expect("value").to_owned();
        got.entry(partition).or_default().push((offset, value));
    }
    assert_eq!(got, produced, "every record, in order per partition");

    // Without --count the command stops at the end of the log.
    let all = broker.ok(&["consume", "events", "--from-beginning"], None);
    assert_eq!(all.lines().count(), 100, "{all}");
    let (&p, records) = produced.iter().next().expect("a partition");
    let one = broker.ok(
        &[
            "consume",
            "events",
            "--partition",
            &p.to_string(),
            "--offset",
            "1",
        ],
        None,
    );
    let want: Vec<&str> = records[1..].iter().map(|r| r.1.as_str()).collect();
    assert_eq!(one.lines().collect::<Vec<_>>(), want);
    let none = broker.ok(&["consume", "events"], None);
    assert_eq!(none, "", "from the end, nothing");

    // Delete.
    let out = broker.ok(&["topic", "delete", "events"], None);
    assert!(out.contains("deleted topic events"), "{out}");
    let list = broker.ok(&["topic", "list"], None);
    assert!(!list.contains("events"), "{list}");
    let gone = broker.ctl(&["topic", "describe", "events"], None);
    assert_eq!(gone.status.code(), Some(1));
}
