//! Faults on a three-broker cluster of real processes on 127.0.0.1: a
//! partition leader killed with SIGKILL while records are produced, a
//! leader frozen with SIGSTOP past the election timeout, the controller's
//! leader killed, a follower that comes back behind the leader's retention
//! (and catches up by snapshot), and brokers the cluster must refuse (of
//! another cluster, a second broker with a node id in use, a broker whose
//! data directory was wiped). Nothing acknowledged is lost, and the cluster
//! keeps serving throughout.
//!
//! The tests run one at a time (each starts three brokers on a machine
//! whose cores they share with the client).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{
    assert_acked_present, leader_in, parse_acks, produce, read_leaders, replicas_in, serial,
    wait_for, wait_replicas_caught_up, Cluster, BASE_CONFIG,
};

fn seq_of(line: &str) -> u64 {
    line.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Creates `topic` with `partitions` partitions on all three brokers and
/// waits until each has a leader.
fn create_topic(cluster: &Cluster, topic: &str, partitions: i64) {
    cluster.ctl_ok(&[
        "topic",
        "create",
        topic,
        "--partitions",
        &partitions.to_string(),
        "--replication-factor",
        "3",
    ]);
    wait_for("every partition to lead", Duration::from_secs(30), || {
        let d = cluster.describe_topic(topic)?;
        (0..partitions)
            .all(|p| leader_in(&d, p).is_some())
            .then_some(())
    });
}

#[test]
fn acknowledged_records_survive_kill_9_of_the_busiest_leader() {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
    const PARTITIONS: i64 = 8;
    const TOTAL: usize = 40_000;
    const KILL_AFTER: usize = 8_000;
    const AHEAD_MAX: usize = 2_000;
    create_topic(&cluster, "orders", PARTITIONS);
    let d = cluster.describe_topic("orders").unwrap();
    let mut leads: BTreeMap<i32, usize> = BTreeMap::new();
    for p in 0..PARTITIONS {
        *leads.entry(leader_in(&d, p).unwrap()).or_default() += 1;
    }
    let busiest = *leads.iter().max_by_key(|(_, n)| **n).unwrap().0;

    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmqctl"))
        .args([
            "--bootstrap",
            &cluster.bootstrap(),
            "produce",
            "orders",
            "--report-acks",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shardmqctl produce starts");
    // The writer keeps at most AHEAD_MAX records beyond what was answered,
    // so producing goes on across the kill rather than all up front.
    let answered = Arc::new(AtomicUsize::new(0));
    let writer = {
        let answered = answered.clone();
        let stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let mut stdin = std::io::BufWriter::new(stdin);
            let deadline = Instant::now() + Duration::from_secs(180);
            for i in 0..TOTAL {
                while i >= answered.load(Ordering::Relaxed) + AHEAD_MAX {
                    stdin.flush().unwrap();
                    if Instant::now() >= deadline {
                        // The producer stopped answering: end its input so
                        // the test reports what it got.
                        return i;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                writeln!(stdin, "order-{i}").unwrap();
            }
            TOTAL
        })
    };
    let stderr = {
        let answered = answered.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(err).lines() {
                let line = line.unwrap();
                if line.starts_with("unknown ") || line.starts_with("failed ") {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                lines.push(line);
            }
            lines
        })
    };
    let mut acks = BTreeMap::new();
    let mut killed = false;
    let mut acked_before_kill = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        acks.extend(parse_acks(&line));
        answered.fetch_add(1, Ordering::Relaxed);
        if !killed && acks.len() >= KILL_AFTER {
            cluster.kill(busiest);
            killed = true;
            acked_before_kill = acks.len();
        }
    }
    let written = writer.join().unwrap();
    let _ = child.wait().unwrap();
    let errors = stderr.join().unwrap();
    assert!(killed);
    assert_eq!(
        written,
        TOTAL,
        "the producer stopped answering after {} acks; its last errors: {:?}",
        acks.len(),
        &errors[errors.len().saturating_sub(10)..]
    );
    let not_acked = errors
        .iter()
        .filter(|l| l.starts_with("unknown ") || l.starts_with("failed "))
        .count();
    assert_eq!(
        acks.len() + not_acked,
        TOTAL,
        "every record answered: {errors:?}"
    );
    assert!(
        acks.len() > acked_before_kill + TOTAL / 2,
        "producing went on after the failover: {} acknowledged, {acked_before_kill} before the kill; {:?}",
        acks.len(),
        &errors[..errors.len().min(10)]
    );

    let survivors = cluster.bootstrap_without(busiest);
    let read = read_leaders(&cluster, &survivors, "orders");
    assert_acked_present(&read, &acks, seq_of);

    // The killed broker comes back and catches up: its committed log is
    // the leaders', byte for byte.
    cluster.restart(busiest);
    wait_replicas_caught_up(&cluster, "orders", PARTITIONS);
    let compared = cluster.ctl_ok(&["topic", "compare-replicas", "orders"]);
    assert_eq!(
        compared.lines().filter(|l| l.contains("identical")).count(),
        PARTITIONS as usize,
        "{compared}"
    );
    assert_acked_present(
        &read_leaders(&cluster, &cluster.bootstrap(), "orders"),
        &acks,
        seq_of,
    );
}

#[test]
fn a_frozen_leader_steps_down_and_its_uncommitted_suffix_is_truncated() {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
    create_topic(&cluster, "frozen", 1);
    let mut acks = produce(&cluster, "frozen", (0..200).map(|i| format!("before-{i}")));
    let old = cluster.partition_leader("frozen", 0).unwrap();
    let old_term = replicas_in(&cluster.describe_topic("frozen").unwrap(), 0)
        .iter()
        .find(|(n, _)| *n == old)
        .and_then(|(_, s)| s["term"].as_u64())
        .unwrap();

    cluster.pause(old);
    let others = cluster.bootstrap_without(old);
    let new = wait_for("another leader", Duration::from_secs(30), || {
        let d = cluster.describe_topic_at(&others, "frozen")?;
        replicas_in(&d, 0)
            .into_iter()
            .find(|(n, s)| {
                *n != old && s["role"] == "leader" && s["term"].as_u64().unwrap_or(0) > old_term
            })
            .map(|(n, _)| n)
    });
    // Records sent to the frozen leader: it reads them once it thaws, while
    // it still believes it leads, and appends them in its old term; they
    // can never commit.
    let stale = Command::new(env!("CARGO_BIN_EXE_shardmqctl"))
        .args([
            "--bootstrap",
            &cluster.node(old).addr(),
            "produce",
            "frozen",
            "--partition",
            "0",
            "--report-acks",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stale = stale;
    {
        let mut stdin = stale.stdin.take().unwrap();
        for i in 0..20 {
            writeln!(stdin, "stale-{i}").unwrap();
        }
    }
    let after = cluster_produce_at(&cluster, &others, "frozen", "after", 200);
    acks.extend(after);
    cluster.resume(old);

    wait_for("the old leader to follow", Duration::from_secs(30), || {
        let d = cluster.describe_topic("frozen")?;
        replicas_in(&d, 0)
            .into_iter()
            .find(|(n, s)| *n == old && s["role"] == "follower" && s["leader"] == new)
            .map(|_| ())
    });
    let stale_out = stale.wait_with_output().unwrap();
    acks.extend(parse_acks(&String::from_utf8_lossy(&stale_out.stdout)));
    // Records the old leader's producer was told failed for sure, and those
    // whose outcome it could not know (they may or may not be stored).
    let stale_errors = String::from_utf8_lossy(&stale_out.stderr).into_owned();
    let outcome_of = |kind: &str| -> Vec<String> {
        stale_errors
            .lines()
            .filter_map(|l| l.strip_prefix(kind))
            .filter_map(|rest| rest.split_whitespace().nth(1))
            .map(|line| line.trim_end_matches(':').to_owned())
            .collect()
    };
    let failed = outcome_of("failed ");
    let unknown = outcome_of("unknown ");
    wait_replicas_caught_up(&cluster, "frozen", 1);
    let compared = cluster.ctl_ok(&["topic", "compare-replicas", "frozen"]);
    assert!(compared.contains("identical"), "{compared}");
    let read = read_leaders(&cluster, &cluster.bootstrap(), "frozen");
    assert_acked_present(&read, &acks, seq_of);
    // Beside what was acknowledged, only records whose outcome was unknown
    // may be stored; a record reported failed never is (the old leader's
    // suffix was truncated, not committed).
    for value in read.values() {
        if !acks.contains_key(value) {
            assert!(
                unknown.contains(value),
                "{value} is stored but was not acknowledged ({stale_errors})"
            );
        }
        assert!(
            !failed.contains(value),
            "{value} was reported failed but is stored"
        );
    }
}

/// Produces `n` records `PREFIX-i` through the brokers of `bootstrap`.
fn cluster_produce_at(
    cluster: &Cluster,
    bootstrap: &str,
    topic: &str,
    prefix: &str,
    n: usize,
) -> BTreeMap<String, (i64, i64)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmqctl"))
        .args(["--bootstrap", bootstrap, "produce", topic, "--report-acks"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut stdin = std::io::BufWriter::new(stdin);
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let _ = cluster;
    assert!(
        out.status.success(),
        "produce through {bootstrap}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_acks(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn the_controller_leader_killed_a_new_one_takes_over_and_the_broker_rejoins() {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
    create_topic(&cluster, "before", 3);
    let acks = produce(&cluster, "before", (0..300).map(|i| format!("b-{i}")));
    let old = cluster.controller_leader().unwrap();
    cluster.kill(old);
    let others = cluster.bootstrap_without(old);
    let new = wait_for("a new controller leader", Duration::from_secs(30), || {
        let d = cluster.describe_cluster_at(&others)?;
        let id = d["controller_id"].as_i64()? as i32;
        (id >= 0 && id != old).then_some(id)
    });
    assert_ne!(new, old);
    // The metadata is intact on the survivors.
    let listed = String::from_utf8(cluster.ctl_at(&others, &["topic", "list"]).stdout).unwrap();
    assert!(listed.contains("before"), "{listed}");
    // Topic creation works again.
    let out = cluster.ctl_at(
        &others,
        &[
            "topic",
            "create",
            "after",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = cluster_produce_at(&cluster, &others, "after", "a", 300);
    assert_eq!(after.len(), 300);

    // The old controller leader rejoins with every one of its replicas.
    cluster.restart(old);
    for topic in ["before", "after"] {
        wait_replicas_caught_up(&cluster, topic, 3);
        let d = cluster.describe_topic(topic).unwrap();
        for p in 0..3 {
            assert!(
                replicas_in(&d, p).iter().any(|(n, _)| *n == old),
                "{topic}/{p} has its replica on node {old} back"
            );
        }
    }
    assert_acked_present(
        &read_leaders(&cluster, &cluster.bootstrap(), "before"),
        &acks,
        seq_of,
    );
}

#[test]
fn a_follower_behind_the_leaders_retention_catches_up_by_snapshot() {
    let _serial = serial();
    let config = BASE_CONFIG.replace(
        "[storage]\n",
        "[storage]\nretention_bytes = 262144\nretention_check_interval_ms = 100\n",
    );
    let config = config.replace("segment_bytes = 8388608", "segment_bytes = 2097152");
    let mut cluster = Cluster::start_with(3, &config);
    create_topic(&cluster, "retained", 1);
    let value = "v".repeat(900);
    let mut acks = produce(
        &cluster,
        "retained",
        (0..200).map(move |i| format!("{value}-{i}")),
    );
    wait_replicas_caught_up(&cluster, "retained", 1);
    let leader = cluster.partition_leader("retained", 0).unwrap();
    let follower = if leader == 3 { 1 } else { leader + 1 };
    let stopped_at = replicas_in(&cluster.describe_topic("retained").unwrap(), 0)
        .into_iter()
        .find(|(n, _)| *n == follower)
        .and_then(|(_, s)| s["last_index"].as_u64())
        .unwrap();
    cluster.terminate(follower);

    // Enough records that retention drops, on the leader, entries the
    // stopped follower never got.
    let others = cluster.bootstrap_without(follower);
    let value = "w".repeat(900);
    let mut i = 200;
    wait_for(
        "retention past the follower",
        Duration::from_secs(120),
        || {
            let batch: Vec<String> = (i..i + 200).map(|k| format!("{value}-{k}")).collect();
            i += 200;
            acks.extend(cluster_produce_lines(&others, "retained", batch));
            let d = cluster.describe_topic_at(&others, "retained")?;
            replicas_in(&d, 0)
                .into_iter()
                .find(|(n, _)| *n == leader)
                .and_then(|(_, s)| s["first_index"].as_u64())
                .filter(|first| *first > stopped_at + 1)
        },
    );

    cluster.restart(follower);
    wait_replicas_caught_up(&cluster, "retained", 1);
    let d = cluster.describe_topic("retained").unwrap();
    let state = replicas_in(&d, 0)
        .into_iter()
        .find(|(n, _)| *n == follower)
        .map(|(_, s)| s)
        .unwrap();
    // Its log now starts past where it stopped: it restarted from the
    // leader's snapshot (metadata only) and replicated the rest.
    assert!(
        state["first_index"].as_u64().unwrap() > stopped_at + 1,
        "follower log: {state}"
    );
    let compared = cluster.ctl_ok(&["topic", "compare-replicas", "retained"]);
    assert!(compared.contains("identical"), "{compared}");
    // What the leader still holds is every acknowledged record from its
    // log start on, at its offset.
    let read = read_leaders(&cluster, &cluster.bootstrap(), "retained");
    let start = read.keys().next().map(|(_, o)| *o).unwrap();
    let kept: BTreeMap<String, (i64, i64)> =
        acks.into_iter().filter(|(_, (_, o))| *o >= start).collect();
    assert!(!kept.is_empty());
    assert_acked_present(&read, &kept, seq_of);
}

fn cluster_produce_lines(
    bootstrap: &str,
    topic: &str,
    lines: Vec<String>,
) -> BTreeMap<String, (i64, i64)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmqctl"))
        .args(["--bootstrap", bootstrap, "produce", topic, "--report-acks"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut stdin = std::io::BufWriter::new(stdin);
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_acks(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn brokers_the_cluster_does_not_know_as_they_are_are_refused() {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
    create_topic(&cluster, "served", 1);
    let still_serving = |cluster: &Cluster, tag: &str| {
        let acks = cluster_produce_lines(
            &cluster.bootstrap_without(3),
            "served",
            (0..20).map(|i| format!("{tag}-{i}")).collect(),
        );
        assert_eq!(acks.len(), 20, "the cluster serves ({tag})");
    };

    // A broker of another cluster, in node 3's place with a fresh data
    // directory: refused by the others, with the reason in both logs.
    cluster.terminate(3);
    let fresh = cluster.dir.path().join("other-cluster");
    let log = cluster.dir.path().join("other-cluster.log");
    let mut other = cluster
        .broker_command(3, &["--cluster-id", "another-cluster", "--data-dir"])
        .arg(&fresh)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the refusal in the log", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("ClusterMismatch").then_some(())
    });
    wait_for(
        "the refusal in a member's log",
        Duration::from_secs(30),
        || {
            (cluster.log_text(1) + &cluster.log_text(2))
                .contains("another-cluster")
                .then_some(())
        },
    );
    still_serving(&cluster, "other-cluster");
    let _ = other.kill();
    let _ = other.wait();

    // A second broker with node id 2, which runs: it cannot take node 2's
    // inter-broker address and says so.
    let dup_dir = cluster.dir.path().join("duplicate");
    let dup = cluster
        .broker_command(
            2,
            &[
                "--listen",
                &format!("127.0.0.1:{}", common::free_port()),
                "--metrics",
                &format!("127.0.0.1:{}", common::free_port()),
                "--shard-port-base",
                &common::free_port().to_string(),
                "--data-dir",
            ],
        )
        .arg(&dup_dir)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!dup.status.success());
    let text = String::from_utf8_lossy(&dup.stderr);
    assert!(
        text.contains("another broker using this node id"),
        "duplicate node id: {text}"
    );
    still_serving(&cluster, "duplicate");

    // Node 3 with its data directory wiped: the cluster knows node 3 by
    // another incarnation and refuses it; it stops with exit code 3.
    std::fs::remove_dir_all(&cluster.node(3).data).unwrap();
    cluster.spawn(3);
    let status = cluster.wait_exit(3, Duration::from_secs(60));
    assert_eq!(status.code(), Some(3), "{}", cluster.log_tail(3, 20));
    assert!(
        cluster.log_text(3).contains("data directory was wiped"),
        "{}",
        cluster.log_tail(3, 20)
    );
    still_serving(&cluster, "wiped");
}

/// The quiesced-groups gauge of broker `id`.
fn quiesced(cluster: &Cluster, id: i32) -> Option<u64> {
    let (_, body) = common::cluster::http_get(cluster.node(id).metrics, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with("shardmq_raft_quiesced_groups{"))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn sleeping_groups_whose_leader_is_killed_elect_another_and_take_records() {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
    create_topic(&cluster, "sleepy", 3);
    let acks = produce(&cluster, "sleepy", (0..30).map(|i| format!("s-{i}")));
    // Idle: every replica of the three partitions falls asleep.
    wait_for("the groups to sleep", Duration::from_secs(60), || {
        (1..=3)
            .all(|id| quiesced(&cluster, id) == Some(3))
            .then_some(())
    });
    let leader = cluster.partition_leader("sleepy", 0).unwrap();
    cluster.kill(leader);
    // The followers lose their connection from the dead broker, wake, and
    // elect; records go to the new leaders.
    let others = cluster.bootstrap_without(leader);
    wait_for(
        "a new leader of partition 0",
        Duration::from_secs(30),
        || {
            let d = cluster.describe_topic_at(&others, "sleepy")?;
            leader_in(&d, 0).filter(|l| *l != leader)
        },
    );
    let after = cluster_produce_lines(
        &others,
        "sleepy",
        (0..30).map(|i| format!("t-{i}")).collect(),
    );
    assert_eq!(after.len(), 30);
    let mut all = acks;
    all.extend(after);
    assert_acked_present(&read_leaders(&cluster, &others, "sleepy"), &all, seq_of);
}
