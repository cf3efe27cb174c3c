//! Three real brokers on 127.0.0.1 (one shard each, static peers): a
//! replicated topic created through a broker that does not lead the
//! controller, records produced with acks=all read back identically from
//! the leader and from every follower, and a planned leader transfer.
//!
//! The tests of this file run one at a time: each starts three brokers,
//! and the machine's cores are shared by all of them and the client.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{
    leader_in, produce, read_replica, replicas_in, serial, wait_for, wait_replicas_caught_up,
    Cluster,
};

#[test]
fn a_topic_created_through_a_follower_of_the_controller_is_read_identically_from_every_replica() {
    let _serial = serial();
    let cluster = Cluster::start(3);
    let controller = cluster.controller_leader().expect("a controller leader");
    let other = cluster
        .nodes
        .iter()
        .find(|n| n.id != controller)
        .expect("another broker");
    let out = cluster.ctl_at(
        &other.addr(),
        &[
            "topic",
            "create",
            "events",
            "--partitions",
            "16",
            "--replication-factor",
            "3",
        ],
    );
    assert!(
        out.status.success(),
        "create through node {}: {}",
        other.id,
        String::from_utf8_lossy(&out.stderr)
    );
    // Every partition has three replicas, one per broker, and a leader.
    let d = wait_for("every partition to lead", Duration::from_secs(30), || {
        let d = cluster.describe_topic("events")?;
        (0..16)
            .all(|p| replicas_in(&d, p).len() == 3 && leader_in(&d, p).is_some())
            .then_some(d)
    });
    let mut leaders: BTreeMap<i32, usize> = BTreeMap::new();
    for p in 0..16 {
        *leaders.entry(leader_in(&d, p).unwrap()).or_default() += 1;
    }
    assert_eq!(
        leaders.len(),
        3,
        "leaders spread over the brokers: {leaders:?}"
    );

    let acks = produce(
        &cluster,
        "events",
        (0..100_000).map(|i| format!("record-{i}")),
    );
    assert_eq!(acks.len(), 100_000, "every record acknowledged");
    wait_replicas_caught_up(&cluster, "events", 16);

    // The leader's view and every follower's view are the same records at
    // the same offsets, and every acknowledged record is where it was
    // acknowledged.
    let reference = read_replica(&cluster, "events", 1);
    assert_eq!(reference.len(), 100_000);
    for (line, at) in &acks {
        assert_eq!(reference.get(at), Some(line), "record {line} at {at:?}");
    }
    for node in 2..=3 {
        assert_eq!(
            read_replica(&cluster, "events", node),
            reference,
            "node {node} serves other records"
        );
    }
    // And byte for byte, batch by batch.
    let compared = cluster.ctl_ok(&["topic", "compare-replicas", "events"]);
    assert_eq!(
        compared.lines().filter(|l| l.contains("identical")).count(),
        16,
        "{compared}"
    );
}

#[test]
fn a_leader_is_moved_on_request_through_the_controller() {
    let _serial = serial();
    let cluster = Cluster::start(3);
    cluster.ctl_ok(&[
        "topic",
        "create",
        "moves",
        "--partitions",
        "1",
        "--replication-factor",
        "3",
    ]);
    let leader = wait_for("a leader", Duration::from_secs(30), || {
        cluster.partition_leader("moves", 0)
    });
    let to = if leader == 3 { 1 } else { leader + 1 };
    let out = cluster.ctl_ok(&[
        "partition",
        "transfer-leader",
        "moves",
        "0",
        "--to",
        &to.to_string(),
    ]);
    assert!(out.contains(&format!("leader={to}")), "{out}");
    assert_eq!(cluster.partition_leader("moves", 0), Some(to));
    let acks = produce(&cluster, "moves", (0..100).map(|i| format!("m-{i}")));
    assert_eq!(acks.len(), 100);
    // It stayed: the controller's preferred leader is now `to`, so nobody
    // hands leadership back.
    assert_eq!(cluster.partition_leader("moves", 0), Some(to));
}

#[test]
fn a_consumer_of_partitions_led_by_several_brokers_gets_the_first_record_without_waiting_out_its_long_poll(
) {
    use shardmq_client::{
        ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, SeekTo,
    };
    let _serial = serial();
    let cluster = Cluster::start(3);
    cluster.ctl_ok(&[
        "topic",
        "create",
        "spread",
        "--partitions",
        "3",
        "--replication-factor",
        "3",
    ]);
    let d = wait_for("three leaders", Duration::from_secs(30), || {
        let d = cluster.describe_topic("spread")?;
        (0..3).all(|p| leader_in(&d, p).is_some()).then_some(d)
    });
    let leaders: std::collections::BTreeSet<i32> =
        (0..3).map(|p| leader_in(&d, p).unwrap()).collect();
    assert_eq!(leaders.len(), 3, "one leader per broker");
    let bootstrap: Vec<String> = cluster.nodes.iter().map(|n| n.addr()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = ClientConfig::new(bootstrap);
        let mut consumer = Consumer::connect(config.clone(), ConsumerConfig::default())
            .await
            .unwrap();
        consumer.assign_all("spread").await.unwrap();
        consumer.seek_all(SeekTo::Latest).await.unwrap();
        // Nothing yet: every broker holds its fetch as a long poll.
        assert!(consumer
            .poll(Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty());
        let producer = Producer::connect(config, ProducerConfig::default())
            .await
            .unwrap();
        let sent = std::time::Instant::now();
        producer
            .enqueue(
                ProducerRecord::new("spread", bytes::Bytes::from_static(b"first")).partition(1),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let long_poll = Duration::from_secs(30);
        let records = consumer.poll(long_poll).await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].partition, 1);
        // The two brokers with nothing did not hold the answer back until
        // the long poll's end.
        assert!(sent.elapsed() < long_poll / 2, "{:?}", sent.elapsed());
    });
}
