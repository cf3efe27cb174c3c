//! The SDK against a mock broker over real TCP round trips.

mod mock;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use mock::MockBroker;
use shardmq_client::partitioner::key_partition;
use shardmq_client::{
    Admin, Client, ClientConfig, ClientError, Connection, Consumer, ConsumerConfig, ErrorCode,
    Producer, ProducerConfig, ProducerRecord, SeekTo,
};
use shardmq_schema::protocol::Api;

/// Runs a test body with a bound on its time.
async fn bounded<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test exceeded its time bound")
}

fn config(mock: &MockBroker) -> ClientConfig {
    ClientConfig::new([mock.addr()])
}

async fn topic(mock: &MockBroker, name: &str, partitions: i32) -> Client {
    let admin = Admin::connect(config(mock)).await.unwrap();
    admin.create_topic(name, partitions, 1).await.unwrap();
    admin.client().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_creates_lists_describes_and_deletes_topics() {
    bounded(async {
        let mock = MockBroker::start().await;
        let admin = Admin::connect(config(&mock)).await.unwrap();
        admin.create_topic("orders", 3, 1).await.unwrap();
        admin.create_topic("audit", 1, 1).await.unwrap();
        let again = admin.create_topic("orders", 3, 1).await.unwrap_err();
        assert_eq!(again.code(), Some(ErrorCode::TopicAlreadyExists));
        assert!(!again.is_retriable());
        let bad = admin.create_topic("empty", 0, 1).await.unwrap_err();
        assert_eq!(bad.code(), Some(ErrorCode::InvalidPartitions));

        let listed = admin.list_topics().await.unwrap();
        let names: Vec<_> = listed.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["audit", "orders"]);
        assert_eq!(listed[1].partitions, 3);

        let orders = admin.describe_topic("orders").await.unwrap();
        assert_eq!(orders.partitions.len(), 3);
        for p in &orders.partitions {
            assert_eq!(p.leader_node_id, 1);
            assert_eq!(p.leader_shard as usize, p.partition as usize % mock::SHARDS);
            assert_eq!(
                p.shard_port,
                mock.state.ports[p.partition as usize % mock::SHARDS]
            );
        }
        let metadata = admin.metadata().await.unwrap();
        assert_eq!(metadata.brokers.len(), 1);
        assert_eq!(metadata.topics.len(), 2);

        admin.delete_topic("orders").await.unwrap();
        let gone = admin.delete_topic("orders").await.unwrap_err();
        assert_eq!(gone.code(), Some(ErrorCode::UnknownTopic));
        let unknown = admin.describe_topic("orders").await.unwrap_err();
        assert_eq!(unknown.code(), Some(ErrorCode::UnknownTopic));
        assert_eq!(admin.list_topics().await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_sends_10000_records_over_4_partitions_with_dense_offsets() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = topic(&mock, "events", 4).await;
        let producer = Producer::new(
            client,
            ProducerConfig {
                linger: Duration::from_millis(20),
                batch_bytes_max: 16 << 10,
                ..ProducerConfig::default()
            },
        );
        let mut deliveries = Vec::new();
        for i in 0..10_000u32 {
            let record = ProducerRecord::new("events", format!("value-{i}"));
            deliveries.push(producer.enqueue(record).await.unwrap());
        }
        producer.flush().await;
        let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for delivery in deliveries {
            let meta = delivery.await.unwrap();
            offsets.entry(meta.partition).or_default().push(meta.offset);
        }
        assert_eq!(offsets.len(), 4);
        for (partition, mut list) in offsets {
            // Round-robin: 2,500 each, dense from 0, in send order.
            assert_eq!(list.len(), 2_500, "partition {partition}");
            let sorted = {
                let mut s = list.clone();
                s.sort_unstable();
                s
            };
            assert_eq!(list, sorted, "offsets follow the send order");
            list.dedup();
            assert_eq!(list, (0..2_500).collect::<Vec<i64>>());
        }
        let requests = mock.state.count(Api::Produce);
        assert!(
            requests < 1_000,
            "records were batched: {requests} requests"
        );
        producer.close().await;
        let closed = producer
            .enqueue(ProducerRecord::new("events", "late"))
            .await;
        assert!(matches!(closed, Err(ClientError::Closed)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_partitioner_sends_a_key_to_one_partition() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = topic(&mock, "keyed", 4).await;
        // With the topic's metadata cached, `send` queues each record at
        // once, so the 200 sends share batches.
        client.topic("keyed").await.unwrap();
        let producer = Producer::new(client, ProducerConfig::default());
        let mut sends = Vec::new();
        for i in 0..200u32 {
            let key = format!("user-{}", i % 7);
            sends.push((
                key.clone(),
                producer.send(ProducerRecord::new("keyed", "v").key(key)),
            ));
        }
        let mut seen: BTreeMap<String, i32> = BTreeMap::new();
        for (key, send) in sends {
            let meta = send.await.unwrap();
            assert_eq!(meta.partition, key_partition(key.as_bytes(), 4));
            let first = *seen.entry(key).or_insert(meta.partition);
            assert_eq!(first, meta.partition);
        }
        assert_eq!(seen.len(), 7);
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_is_retried_after_a_metadata_refresh() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = topic(&mock, "moving", 2).await;
        mock.behaviour()
            .not_leader_once
            .insert(("moving".to_owned(), 1));
        let metadata_before = mock.state.count(Api::Metadata);
        let producer = Producer::new(
            client,
            ProducerConfig {
                retry_backoff: Duration::from_millis(1),
                ..ProducerConfig::default()
            },
        );
        let meta = producer
            .send(ProducerRecord::new("moving", "x").partition(1))
            .await
            .unwrap();
        assert_eq!((meta.partition, meta.offset), (1, 0));
        assert_eq!(mock.state.count(Api::Produce), 2, "one refusal, one retry");
        assert!(mock.state.count(Api::Metadata) > metadata_before);
        producer.close().await;
    })
    .await;
}

/// The partitions of each Produce request the mock executed.
fn produce_partitions(mock: &MockBroker) -> Vec<Vec<i32>> {
    mock.state
        .produce_requests()
        .into_iter()
        .map(|items| items.into_iter().map(|(_, partition)| partition).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_many_partitions_share_produce_requests() {
    bounded(async {
        const PARTITIONS: i32 = 64;
        const PER_PARTITION: i64 = 40;
        let mock = MockBroker::start().await;
        let client = topic(&mock, "wide", PARTITIONS).await;
        client.topic("wide").await.unwrap();
        // A slow broker and one request in flight per shard: the batches
        // that become ready meanwhile wait, and go together.
        mock.behaviour().produce_delay = Duration::from_millis(20);
        let producer = Producer::new(
            client,
            ProducerConfig {
                batch_bytes_max: 1 << 10,
                in_flight_max: 1,
                ..ProducerConfig::default()
            },
        );
        let mut deliveries = Vec::new();
        for i in 0..PER_PARTITION {
            for partition in 0..PARTITIONS {
                let value = format!("{partition}-{i}-{:0>100}", 0);
                let record = ProducerRecord::new("wide", value).partition(partition);
                deliveries.push((partition, i, producer.enqueue(record).await.unwrap()));
            }
        }
        producer.flush().await;
        for (partition, i, delivery) in deliveries {
            let meta = delivery.await.unwrap();
            // Dense and in send order within each partition.
            assert_eq!((meta.partition, meta.offset), (partition, i));
        }

        let requests = produce_partitions(&mock);
        let batches: usize = requests.iter().map(Vec::len).sum();
        // About 7 records per batch, so several batches per partition.
        assert!(batches >= 4 * PARTITIONS as usize, "{batches} batches");
        assert!(
            requests.len() < batches,
            "{} requests for {batches} batches",
            requests.len()
        );
        let widest = requests.iter().map(Vec::len).max().unwrap();
        assert!(widest > 1, "a request carried {widest} partitions at most");
        for partitions in &requests {
            // One request per connection: every item is led by its shard,
            // and no partition has two batches in one request.
            let shard = partitions[0] % mock::SHARDS as i32;
            assert!(partitions.iter().all(|p| p % mock::SHARDS as i32 == shard));
            let mut distinct = partitions.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), partitions.len(), "{partitions:?}");
        }
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_item_of_a_grouped_request_is_retried_alone() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = topic(&mock, "mixed", 8).await;
        client.topic("mixed").await.unwrap();
        mock.behaviour()
            .not_leader_once
            .insert(("mixed".to_owned(), 2));
        mock.behaviour().produce_delay = Duration::from_millis(100);
        let producer = Producer::new(
            client,
            ProducerConfig {
                linger: Duration::ZERO,
                in_flight_max: 1,
                retry_backoff: Duration::from_millis(1),
                ..ProducerConfig::default()
            },
        );
        // Partition 0's batch takes shard 0's only request slot, so the
        // batches of 2, 4 and 6 wait for it and then go together.
        let first = producer
            .enqueue(ProducerRecord::new("mixed", "first").partition(0))
            .await
            .unwrap();
        mock.state.wait_count(Api::Produce, 1).await;
        let metadata_before = mock.state.count(Api::Metadata);
        let mut rest = Vec::new();
        for partition in [2, 4, 6, 1, 3] {
            let record = ProducerRecord::new("mixed", format!("{partition}")).partition(partition);
            rest.push((partition, producer.enqueue(record).await.unwrap()));
        }
        let meta = first.await.unwrap();
        assert_eq!((meta.partition, meta.offset), (0, 0));
        for (partition, delivery) in rest {
            let meta = delivery.await.unwrap();
            assert_eq!((meta.partition, meta.offset), (partition, 0));
        }

        let mut shard_0: Vec<Vec<i32>> = produce_partitions(&mock)
            .into_iter()
            .filter(|partitions| partitions[0] % 2 == 0)
            .collect();
        for partitions in &mut shard_0 {
            partitions.sort_unstable();
        }
        // The refused item alone is sent again; 4 and 6 are not.
        assert_eq!(shard_0, [vec![0], vec![2, 4, 6], vec![2]]);
        assert!(
            mock.state.count(Api::Metadata) > metadata_before,
            "NotLeader refreshes the metadata"
        );
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_of_many_partitions_looks_their_positions_up_concurrently() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = topic(&mock, "wide", 200).await;
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        producer
            .send(ProducerRecord::new("wide", "x").partition(7))
            .await
            .unwrap();
        // No ListOffsets is answered until 16 are asked at once: one
        // lookup at a time would never start.
        mock.behaviour().gate_list_offsets = Some(16);
        let mut consumer = Consumer::new(client, ConsumerConfig::default());
        consumer.assign_all("wide").await.unwrap();
        consumer.seek_all(SeekTo::Latest).await.unwrap();
        for partition in 0..200 {
            let expected = if partition == 7 { 1 } else { 0 };
            assert_eq!(consumer.position(partition), Some(expected), "{partition}");
        }
        let lookups = mock.state.count(Api::ListOffsets);
        assert!(lookups >= 200, "one lookup per partition: {lookups}");
        // A consumer that starts without positions resolves them the same
        // way, and reads.
        let mut fresh = Consumer::new(
            Client::connect(config(&mock)).await.unwrap(),
            ConsumerConfig {
                start: SeekTo::Earliest,
                ..ConsumerConfig::default()
            },
        );
        fresh.assign_all("wide").await.unwrap();
        let records = fresh.poll(Duration::from_secs(5)).await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].partition, records[0].offset), (7, 0));
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_reads_everything_in_order_and_seeks() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = topic(&mock, "log", 2).await;
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                linger: Duration::from_millis(2),
                batch_bytes_max: 2 << 10,
                ..ProducerConfig::default()
            },
        );
        let base = mock::now() - 1_000_000;
        let mut deliveries = Vec::new();
        for i in 0..1_000i64 {
            let record = ProducerRecord::new("log", format!("{i}"))
                .partition((i % 2) as i32)
                .key(format!("k{i}"))
                .timestamp(base + i)
                .header("n", Some(format!("{i}").into()));
            deliveries.push(producer.enqueue(record).await.unwrap());
        }
        for delivery in deliveries {
            delivery.await.unwrap();
        }

        let mut consumer = Consumer::new(
            client,
            ConsumerConfig {
                partition_bytes_max: 4 << 10,
                ..ConsumerConfig::default()
            },
        );
        consumer.assign_all("log").await.unwrap();
        let mut read: BTreeMap<i32, Vec<(i64, i64, String)>> = BTreeMap::new();
        let mut total = 0;
        while total < 1_000 {
            let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
            assert!(!records.is_empty(), "data is there: no empty poll");
            for r in records {
                let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                assert_eq!(r.key.as_deref(), Some(format!("k{value}").as_bytes()));
                assert_eq!(r.headers.len(), 1);
                read.entry(r.partition)
                    .or_default()
                    .push((r.offset, r.timestamp, value));
                total += 1;
            }
        }
        for (partition, records) in &read {
            assert_eq!(records.len(), 500);
            for (n, (offset, timestamp, value)) in records.iter().enumerate() {
                let i = 2 * n as i64 + i64::from(*partition);
                assert_eq!(*offset, n as i64);
                assert_eq!(*timestamp, base + i);
                assert_eq!(*value, i.to_string());
            }
        }
        assert_eq!(consumer.position(0), Some(500));

        // Seek by offset, into the middle of a batch.
        consumer.seek(1, SeekTo::Offset(123)).await.unwrap();
        consumer.seek(0, SeekTo::Latest).await.unwrap();
        let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
        assert_eq!(records[0].partition, 1);
        assert_eq!(records[0].offset, 123);
        assert!(records.iter().all(|r| r.partition == 1));

        // Seek by timestamp: record 601 (partition 1, offset 300).
        consumer
            .seek(1, SeekTo::Timestamp(base + 601))
            .await
            .unwrap();
        assert_eq!(consumer.position(1), Some(300));
        let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
        assert_eq!(records[0].offset, 300);
        assert_eq!(records[0].timestamp, base + 601);

        // Past every timestamp: the end.
        consumer
            .seek(1, SeekTo::Timestamp(base + 10_000))
            .await
            .unwrap();
        assert_eq!(consumer.position(1), Some(500));

        // Out of range: a typed error, position unchanged.
        consumer.seek(0, SeekTo::Offset(9_999)).await.unwrap();
        let error = consumer.poll(Duration::from_millis(10)).await.unwrap_err();
        assert!(
            matches!(
                error,
                ClientError::OffsetOutOfRange {
                    partition: 0,
                    offset: 9_999,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(error.code(), Some(ErrorCode::OffsetOutOfRange));
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_long_poll_follows_the_tail() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = topic(&mock, "tail", 1).await;
        let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
        consumer.assign("tail", &[0]).await.unwrap();
        consumer.seek(0, SeekTo::Latest).await.unwrap();
        // Nothing there: the poll waits on the broker, and returns empty.
        assert!(consumer
            .poll(Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty());

        let poll = tokio::spawn(async move {
            let records = consumer.poll(Duration::from_secs(30)).await.unwrap();
            (consumer, records)
        });
        // The fetch is parked on the broker before the record is produced.
        mock.state.wait_count(Api::Fetch, 2).await;
        let producer = Producer::new(client, ProducerConfig::default());
        producer
            .send(ProducerRecord::new("tail", "hello"))
            .await
            .unwrap();
        let (_consumer, records) = poll.await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].value.as_deref(), Some(&b"hello"[..]));
        producer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_are_in_flight_on_one_connection() {
    bounded(async {
        let mock = MockBroker::start().await;
        // The broker answers only once 32 requests are held, newest first:
        // this completes only if the client pipelines them.
        mock.behaviour().gate_list_topics = Some(32);
        let conn = Connection::connect(&mock.addr(), &config(&mock))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                conn.request(shardmq_client::codec::encode_list_topics)
                    .await
                    .map(|r| r.correlation_id())
            }));
        }
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await.unwrap().unwrap());
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 32, "each got its own response");
        assert_eq!(conn.in_flight(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_bound_applies_backpressure() {
    bounded(async {
        let mock = MockBroker::start().await;
        mock.behaviour().gate_list_topics = Some(4);
        let mut cfg = config(&mock);
        cfg.in_flight_max = 4;
        let conn = Connection::connect(&mock.addr(), &cfg).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                let result = conn
                    .request(shardmq_client::codec::encode_list_topics)
                    .await;
                assert!(conn.in_flight() <= 4);
                result
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        // The broker never held more than the bound: groups of exactly 4.
        assert_eq!(mock.state.count(Api::ListTopics), 16);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_answer_times_out_with_a_typed_error() {
    bounded(async {
        let mock = MockBroker::start().await;
        mock.behaviour().black_hole_list_topics = true;
        let mut cfg = config(&mock);
        cfg.request_timeout = Duration::from_millis(200);
        let admin = Admin::connect(cfg).await.unwrap();
        let error = admin.list_topics().await.unwrap_err();
        assert!(
            matches!(error, ClientError::Timeout { after, request_sent: true } if after == Duration::from_millis(200)),
            "{error:?}"
        );
        assert!(error.is_retriable());
        // The connection is still good for other requests.
        admin.create_topic("still-up", 1, 1).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_loss_fails_every_pending_request() {
    bounded(async {
        let mock = MockBroker::start().await;
        mock.behaviour().black_hole_list_topics = true;
        let admin = Admin::connect(config(&mock)).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let admin = admin.clone();
            tasks.push(tokio::spawn(async move { admin.list_topics().await }));
        }
        mock.state.wait_count(Api::ListTopics, 5).await;
        mock.state.kill_connections();
        for task in tasks {
            let error = task.await.unwrap().unwrap_err();
            assert!(
                matches!(error, ClientError::ConnectionLost { .. }),
                "{error:?}"
            );
            assert!(error.is_retriable());
        }
        // The next request opens a new connection.
        mock.behaviour().black_hole_list_topics = false;
        assert!(admin.list_topics().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_none_resolves_without_offsets() {
    bounded(async {
        let mock = MockBroker::start().await;
        let client = topic(&mock, "fire", 1).await;
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                acks: shardmq_client::Acks::None,
                ..ProducerConfig::default()
            },
        );
        let meta = producer
            .send(ProducerRecord::new("fire", "forget"))
            .await
            .unwrap();
        assert_eq!(meta.offset, -1);
        // The record still arrives.
        let mut consumer = Consumer::new(client, ConsumerConfig::default());
        consumer.assign("fire", &[0]).await.unwrap();
        let records = consumer.poll(Duration::from_secs(10)).await.unwrap();
        assert_eq!(records.len(), 1);
        producer.close().await;
    })
    .await;
}
