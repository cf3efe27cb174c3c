//! The SDK against a mock cluster of several brokers: leader hints and
//! metadata refreshes, which produce failures are retried and which are
//! reported as outcome unknown, the delivery timeout, follower reads,
//! bootstrap fallback, and the cluster admin apis.

mod mock;

use std::future::Future;
use std::time::Duration;

use mock::{MockBroker, Seen, SHARDS};
use shardmq_client::{
    Admin, BrokerStatus, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, ErrorCode,
    Producer, ProducerConfig, ProducerRecord, ReadFrom, ReplicaRole, SeekTo,
};
use shardmq_schema::protocol::Api;
use tokio::time::Instant;

/// Runs a test body with a bound on its time.
async fn bounded<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test exceeded its time bound")
}

/// A client of the cluster that knows every node, with `name` created.
async fn client_with_topic(mock: &MockBroker, nodes: i32, name: &str, partitions: i32) -> Client {
    let bootstrap: Vec<String> = (1..=nodes).map(|n| mock.node_addr(n)).collect();
    let admin = Admin::connect(ClientConfig::new(bootstrap)).await.unwrap();
    admin.create_topic(name, partitions, 1).await.unwrap();
    // Cache the topic's metadata, as a running producer has it.
    admin.client().topic(name).await.unwrap();
    admin.client().clone()
}

fn fast_retries() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::ZERO,
        retry_backoff: Duration::from_millis(1),
        retry_backoff_max: Duration::from_millis(20),
        ..ProducerConfig::default()
    }
}

/// The ports Produce requests arrived on, in order.
fn produce_ports(mock: &MockBroker) -> Vec<u16> {
    mock.state.produces().iter().map(|seen| seen.port).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_with_a_hint_is_retried_at_once_at_the_hinted_shard() {
    bounded(async {
        let mock = MockBroker::cluster(2).await;
        let client = client_with_topic(&mock, 2, "moved", 2).await;
        // Node 2 leads partition 1 now, but the metadata still names node
        // 1: only the hint can lead the producer there.
        mock.state.move_leader("moved", 1, 2);
        {
            let mut behaviour = mock.behaviour();
            behaviour.leader_hints = true;
            behaviour.stale_leader.insert(("moved".to_owned(), 1), 1);
        }
        let metadata_before = mock.state.count(Api::Metadata);
        let producer = Producer::new(
            client,
            ProducerConfig {
                // A retry after a backoff would take at least this long.
                retry_backoff: Duration::from_secs(30),
                ..fast_retries()
            },
        );
        let started = Instant::now();
        let meta = producer
            .send(ProducerRecord::new("moved", "x").partition(1))
            .await
            .unwrap();
        assert_eq!((meta.partition, meta.offset), (1, 0));
        assert!(started.elapsed() < Duration::from_secs(30), "no backoff");
        assert_eq!(
            produce_ports(&mock),
            [mock.state.port(1, 1), mock.state.port(2, 1)],
            "refused by node 1's shard 1, then sent to node 2's shard 1"
        );
        assert_eq!(
            mock.state.count(Api::Metadata),
            metadata_before,
            "the hint alone moved the cached leader"
        );
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_without_a_hint_refreshes_the_metadata_and_follows_it() {
    bounded(async {
        let mock = MockBroker::cluster(2).await;
        let client = client_with_topic(&mock, 2, "moved", 2).await;
        mock.state.move_leader("moved", 0, 2);
        let metadata_before = mock.state.count(Api::Metadata);
        let producer = Producer::new(client, fast_retries());
        let meta = producer
            .send(ProducerRecord::new("moved", "x").partition(0))
            .await
            .unwrap();
        assert_eq!((meta.partition, meta.offset), (0, 0));
        assert_eq!(
            produce_ports(&mock),
            [mock.state.port(1, 0), mock.state.port(2, 0)]
        );
        assert!(mock.state.count(Api::Metadata) > metadata_before);
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timed_out_is_not_retried_and_is_outcome_unknown() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = client_with_topic(&mock, 1, "slow", 1).await;
        // The broker appends the batch, then answers RequestTimedOut.
        mock.behaviour()
            .produce_errors
            .push_back(ErrorCode::RequestTimedOut);
        let producer = Producer::new(client, fast_retries());
        let error = producer
            .send(ProducerRecord::new("slow", "first"))
            .await
            .unwrap_err();
        assert!(error.is_outcome_unknown(), "{error:?}");
        assert!(
            matches!(error, ClientError::OutcomeUnknown { .. }),
            "{error:?}"
        );
        assert_eq!(error.code(), Some(ErrorCode::RequestTimedOut));
        assert!(!error.is_retriable());
        assert!(error.to_string().contains("outcome unknown"), "{error}");
        assert_eq!(mock.state.count(Api::Produce), 1, "not retried");
        // The producer goes on with the next record.
        let meta = producer
            .send(ProducerRecord::new("slow", "second"))
            .await
            .unwrap();
        assert_eq!(meta.offset, 1);
        assert_eq!(
            mock.state.values("slow", 0),
            [b"first".to_vec(), b"second".to_vec()],
            "stored once each: nothing duplicated"
        );
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_after_the_request_is_not_retried() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = client_with_topic(&mock, 1, "dropped", 1).await;
        // The broker appends the batch, then closes the connection.
        mock.behaviour().drop_connection_after_produce = 1;
        let producer = Producer::new(client, fast_retries());
        let error = producer
            .send(ProducerRecord::new("dropped", "first"))
            .await
            .unwrap_err();
        let ClientError::OutcomeUnknown { cause } = &error else {
            panic!("outcome unknown expected: {error:?}");
        };
        assert!(
            matches!(
                **cause,
                ClientError::ConnectionLost {
                    request_sent: true,
                    ..
                }
            ),
            "{cause:?}"
        );
        assert_eq!(mock.state.count(Api::Produce), 1, "not retried");
        // A new connection carries the next record.
        let meta = producer
            .send(ProducerRecord::new("dropped", "second"))
            .await
            .unwrap();
        assert_eq!(meta.offset, 1);
        assert_eq!(
            mock.state.values("dropped", 0),
            [b"first".to_vec(), b"second".to_vec()]
        );
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_in_time_is_not_retried_and_is_outcome_unknown() {
    bounded(async {
        let mock = MockBroker::start().await;
        mock.behaviour().black_hole_produce = true;
        let mut config = ClientConfig::new([mock.addr()]);
        config.request_timeout = Duration::from_millis(200);
        let admin = Admin::connect(config).await.unwrap();
        admin.create_topic("silent", 1, 1).await.unwrap();
        let producer = Producer::new(
            admin.client().clone(),
            ProducerConfig {
                ack_timeout: Duration::from_millis(100),
                ..fast_retries()
            },
        );
        let error = producer
            .send(ProducerRecord::new("silent", "x"))
            .await
            .unwrap_err();
        let ClientError::OutcomeUnknown { cause } = &error else {
            panic!("outcome unknown expected: {error:?}");
        };
        assert!(
            matches!(
                **cause,
                ClientError::Timeout {
                    request_sent: true,
                    ..
                }
            ),
            "{cause:?}"
        );
        assert_eq!(mock.state.count(Api::Produce), 1, "not retried");
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_unappended_batches_are_retried_until_one_succeeds() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = client_with_topic(&mock, 1, "busy", 1).await;
        mock.behaviour().produce_errors.extend([
            ErrorCode::Throttled,
            ErrorCode::NotEnoughReplicas,
            ErrorCode::BrokerShuttingDown,
            ErrorCode::LeaderNotAvailable,
        ]);
        let producer = Producer::new(client, fast_retries());
        let meta = producer
            .send(ProducerRecord::new("busy", "x"))
            .await
            .unwrap();
        assert_eq!(meta.offset, 0);
        assert_eq!(mock.state.count(Api::Produce), 5);
        assert_eq!(mock.state.values("busy", 0), [b"x".to_vec()]);
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definite_refusal_fails_at_once() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = client_with_topic(&mock, 1, "bad", 1).await;
        mock.behaviour()
            .produce_errors
            .push_back(ErrorCode::CorruptBatch);
        let producer = Producer::new(client, fast_retries());
        let error = producer
            .send(ProducerRecord::new("bad", "x"))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::CorruptBatch));
        assert!(!error.is_outcome_unknown());
        assert_eq!(mock.state.count(Api::Produce), 1);
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_after_the_retry_count() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = client_with_topic(&mock, 1, "leaderless", 1).await;
        mock.behaviour().produce_error_always = Some(ErrorCode::LeaderNotAvailable);
        let producer = Producer::new(
            client,
            ProducerConfig {
                retries: 2,
                ..fast_retries()
            },
        );
        let error = producer
            .send(ProducerRecord::new("leaderless", "x"))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::LeaderNotAvailable));
        assert!(!error.is_outcome_unknown(), "refused for sure");
        assert_eq!(
            mock.state.count(Api::Produce),
            3,
            "the first try and 2 retries"
        );
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_delivery_timeout() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = client_with_topic(&mock, 1, "leaderless", 1).await;
        mock.behaviour().produce_error_always = Some(ErrorCode::LeaderNotAvailable);
        let delivery_timeout = Duration::from_millis(300);
        let backoff_max = Duration::from_millis(40);
        let producer = Producer::new(
            client,
            ProducerConfig {
                retries: u32::MAX,
                delivery_timeout,
                retry_backoff: Duration::from_millis(5),
                retry_backoff_max: backoff_max,
                linger: Duration::ZERO,
                ..ProducerConfig::default()
            },
        );
        let started = Instant::now();
        let error = producer
            .send(ProducerRecord::new("leaderless", "x"))
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(error.code(), Some(ErrorCode::LeaderNotAvailable));
        assert!(!error.is_outcome_unknown());
        // The last retry started within a backoff of the deadline, and no
        // retry started after it.
        assert!(elapsed >= delivery_timeout - backoff_max, "{elapsed:?}");
        assert!(
            elapsed < delivery_timeout + Duration::from_secs(5),
            "{elapsed:?}"
        );
        let attempts = mock.state.count(Api::Produce);
        assert!(attempts >= 3, "{attempts} attempts");
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_reads_go_to_the_replica_port_with_allow_follower() {
    bounded(async {
        let mock = MockBroker::cluster(3).await;
        let client = client_with_topic(&mock, 3, "replicated", 2).await;
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        for i in 0..10 {
            for partition in 0..2 {
                producer
                    .send(ProducerRecord::new("replicated", format!("{i}")).partition(partition))
                    .await
                    .unwrap();
            }
        }
        // Node 2's replicas have committed 6 records of each partition.
        mock.behaviour().follower_high_watermark.insert(2, 6);

        let mut follower = Consumer::new(
            client.clone(),
            ConsumerConfig {
                read_from: ReadFrom::Replica(2),
                ..ConsumerConfig::default()
            },
        );
        follower.assign_all("replicated").await.unwrap();
        let mut read = Vec::new();
        while read.len() < 12 {
            let records = follower.poll(Duration::from_millis(100)).await.unwrap();
            assert!(!records.is_empty(), "data is there: no empty poll");
            read.extend(records.into_iter().map(|r| (r.partition, r.offset)));
        }
        read.sort_unstable();
        let expected: Vec<(i32, i64)> = (0..2).flat_map(|p| (0..6).map(move |o| (p, o))).collect();
        assert_eq!(read, expected, "up to the replica's high watermark");
        assert!(follower
            .poll(Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty());
        let fetches = mock.state.fetches();
        assert!(!fetches.is_empty());
        for Seen {
            port,
            items,
            allow_follower,
        } in &fetches
        {
            assert!(allow_follower, "follower fetches allow a follower");
            for (_, partition) in items {
                let shard = *partition as usize % SHARDS;
                assert_eq!(*port, mock.state.port(2, shard), "node 2's replica shard");
            }
        }
        // Latest is the replica's high watermark, not the leader's.
        follower.seek(0, SeekTo::Latest).await.unwrap();
        assert_eq!(follower.position(0), Some(6));
        follower.seek(1, SeekTo::Earliest).await.unwrap();
        assert_eq!(follower.position(1), Some(0));
        assert!(mock.state.count(Api::DescribeReplicas) >= 2);

        // The leader serves everything, without allow_follower.
        let fetched_before = fetches.len();
        let mut leader = Consumer::new(client, ConsumerConfig::default());
        leader.assign("replicated", &[0]).await.unwrap();
        let mut count = 0;
        while count < 10 {
            count += leader.poll(Duration::from_millis(100)).await.unwrap().len();
        }
        let later = &mock.state.fetches()[fetched_before..];
        assert!(later
            .iter()
            .all(|f| !f.allow_follower && f.port == mock.state.port(1, 0)));

        // A node without a replica of the partition is refused up front.
        let mut nowhere = Consumer::new(
            follower.client().clone(),
            ConsumerConfig {
                read_from: ReadFrom::Replica(7),
                ..ConsumerConfig::default()
            },
        );
        nowhere.assign("replicated", &[0]).await.unwrap();
        nowhere.seek(0, SeekTo::Offset(0)).await.unwrap();
        let error = nowhere.poll(Duration::from_millis(10)).await.unwrap_err();
        assert!(
            matches!(error, ClientError::InvalidArgument(_)),
            "{error:?}"
        );

        // A replica that will not serve a follower read says so: an error,
        // not empty polls.
        mock.behaviour().refuse_follower_reads.insert(3);
        let mut refused = Consumer::new(
            follower.client().clone(),
            ConsumerConfig {
                read_from: ReadFrom::Replica(3),
                ..ConsumerConfig::default()
            },
        );
        refused.assign("replicated", &[0]).await.unwrap();
        refused.seek(0, SeekTo::Offset(0)).await.unwrap();
        let error = refused.poll(Duration::from_millis(10)).await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::NotLeader), "{error:?}");
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_read_refused_with_not_leader_is_retried_within_the_poll() {
    bounded(async {
        let mock = MockBroker::cluster(2).await;
        let client = client_with_topic(&mock, 2, "moving", 1).await;
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        for i in 0..5 {
            producer
                .send(ProducerRecord::new("moving", format!("{i}")))
                .await
                .unwrap();
        }
        let mut consumer = Consumer::new(client, ConsumerConfig::default());
        consumer.assign("moving", &[0]).await.unwrap();
        consumer.seek(0, SeekTo::Offset(0)).await.unwrap();
        // Without a hint: the metadata refresh finds node 2.
        mock.state.move_leader("moving", 0, 2);
        let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
        assert_eq!(records.len(), 5, "one poll: refused, then read at node 2");
        let ports: Vec<u16> = mock.state.fetches().iter().map(|f| f.port).collect();
        assert_eq!(ports, [mock.state.port(1, 0), mock.state.port(2, 0)]);

        // With a hint and stale metadata: the hint alone finds node 1.
        mock.state.move_leader("moving", 0, 1);
        {
            let mut behaviour = mock.behaviour();
            behaviour.leader_hints = true;
            behaviour.stale_leader.insert(("moving".to_owned(), 0), 2);
        }
        let metadata_before = mock.state.count(Api::Metadata);
        producer
            .send(ProducerRecord::new("moving", "5"))
            .await
            .unwrap();
        let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].offset, 5);
        assert_eq!(mock.state.count(Api::Metadata), metadata_before);
        producer.close().await;
    })
    .await;
}

/// An address nothing listens on.
async fn dead_addr() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_falls_back_when_the_first_address_is_dead() {
    bounded(async {
        let mock = MockBroker::start().await;
        let config = ClientConfig::new([dead_addr().await, mock.addr()]);
        let admin = Admin::connect(config).await.unwrap();
        admin.create_topic("reachable", 1, 1).await.unwrap();
        let names: Vec<String> = admin
            .list_topics()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["reachable"]);

        // Every bootstrap address dead: the connect error of the last.
        let error = Client::connect(ClientConfig::new([dead_addr().await, dead_addr().await]))
            .await
            .unwrap_err();
        assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_broker_does_not_stop_a_client_that_knows_others() {
    bounded(async {
        let mock = MockBroker::cluster(2).await;
        let client = client_with_topic(&mock, 2, "survive", 1).await;
        let producer = Producer::new(client.clone(), fast_retries());
        let meta = producer
            .send(ProducerRecord::new("survive", "before"))
            .await
            .unwrap();
        assert_eq!(meta.offset, 0);

        // Node 1 dies and node 2 takes over its partition.
        mock.kill_node(1);
        mock.state.move_leader("survive", 0, 2);
        // Wait (with a deadline) until the client sees node 1 gone, so
        // the next record meets a refused connect rather than a request
        // written into a dying connection (whose outcome is unknown).
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.connection(&mock.node_addr(1)).await.is_ok() {
            assert!(Instant::now() < deadline, "node 1 still reachable");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let meta = producer
            .send(ProducerRecord::new("survive", "after"))
            .await
            .unwrap();
        assert_eq!(meta.offset, 1);
        assert_eq!(produce_ports(&mock).last(), Some(&mock.state.port(2, 0)));
        let metadata = client.metadata(Some(&[])).await.unwrap();
        assert_eq!(metadata.broker(1).unwrap().status, BrokerStatus::Failed);
        let admin = Admin::new(client);
        assert_eq!(admin.list_topics().await.unwrap().len(), 1);
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_waits_for_a_controller_leader_within_a_bound() {
    bounded(async {
        let mock = MockBroker::start().await;
        mock.behaviour().controller_unavailable = 3;
        let admin = Admin::connect(ClientConfig::new([mock.addr()]))
            .await
            .unwrap();
        admin.create_topic("late", 1, 1).await.unwrap();
        assert_eq!(mock.state.count(Api::CreateTopics), 4);
        mock.behaviour().controller_unavailable = 2;
        admin.delete_topic("late").await.unwrap();
        assert_eq!(mock.state.count(Api::DeleteTopics), 3);

        // No controller leader for longer than controller_wait.
        mock.behaviour().controller_unavailable = usize::MAX;
        let mut config = ClientConfig::new([mock.addr()]);
        config.controller_wait = Duration::from_millis(200);
        let impatient = Admin::connect(config).await.unwrap();
        let started = Instant::now();
        let error = impatient.create_topic("never", 1, 1).await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::LeaderNotAvailable));
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_cluster_replicas_and_transfer_leader() {
    bounded(async {
        let mock = MockBroker::cluster(3).await;
        let client = client_with_topic(&mock, 3, "ops", 2).await;
        let admin = Admin::new(client.clone());

        let cluster = admin.describe_cluster().await.unwrap();
        assert_eq!(cluster.cluster_id, "mock-cluster");
        assert_eq!(cluster.controller_id, 1);
        assert_eq!(cluster.controller_term, 2);
        let ids: Vec<i32> = cluster.brokers.iter().map(|b| b.node_id).collect();
        assert_eq!(ids, [1, 2, 3]);
        let second = &cluster.brokers[1];
        assert_eq!(second.addr(), mock.node_addr(2));
        assert_eq!(
            second.shard_ports,
            [mock.state.port(2, 0), mock.state.port(2, 1)]
        );
        assert_eq!(second.inter_broker_address, "127.0.0.1:19002");
        assert_eq!(second.incarnation, 1_002);
        assert!(second.controller_voter);

        // Each broker answers about its own replicas.
        let described = admin.describe_replicas(2, Some(&["ops"])).await.unwrap();
        assert_eq!(described.node_id, 2);
        assert_eq!(described.replicas.len(), 2);
        let replica = described.replica("ops", 1).unwrap();
        assert_eq!(replica.role, ReplicaRole::Follower);
        assert_eq!(replica.leader_node_id, 1);
        assert_eq!(replica.shard, 1);
        let leader_view = admin.describe_replicas(1, None).await.unwrap();
        assert_eq!(leader_view.node_id, 1);
        assert_eq!(
            leader_view.replica("ops", 0).unwrap().role,
            ReplicaRole::Leader
        );
        let unknown = admin.describe_replicas(9, None).await.unwrap_err();
        assert!(
            matches!(unknown, ClientError::InvalidArgument(_)),
            "{unknown:?}"
        );

        // Leader transfer: the answer names the new leader, and the cache
        // follows.
        mock.behaviour().controller_unavailable = 1;
        let leader = admin
            .transfer_leader("ops", 0, 3, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(leader, 3);
        assert_eq!(mock.state.count(Api::TransferLeader), 2, "one retry");
        let part = client.topic("ops").await.unwrap().partitions[0].clone();
        assert_eq!(part.leader_node_id, 3);
        assert_eq!(part.leader_epoch, 2);
        assert_eq!(part.preferred_leader(), Some(1));
        let refused = admin
            .transfer_leader("ops", 0, 9, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::InvalidBroker));
    })
    .await;
}
