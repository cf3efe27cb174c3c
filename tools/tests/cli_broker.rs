//! The network commands of `shardmqctl` against a real broker process.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::Broker;

/// Runs `shardmqctl` against the broker.
trait Ctl {
    fn ctl(&self, args: &[&str], stdin: Option<&str>) -> Output;
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String;
}

impl Ctl for Broker {
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
