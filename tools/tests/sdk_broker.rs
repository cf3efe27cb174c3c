//! The SDK (`shardmq_client`) against a real broker process: concurrent
//! producers with many records in flight, read back by one consumer.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Broker;

use shardmq_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, Partitioner, Producer, ProducerConfig,
    ProducerRecord, SeekTo,
};

const TOPIC: &str = "sdk-events";
const PARTITIONS: i32 = 8;
const PRODUCERS: u32 = 4;
const PER_PRODUCER: u32 = 25_000;
const TOTAL: usize = (PRODUCERS * PER_PRODUCER) as usize;

/// The value of record `seq` of producer `producer`: both ids, then a
/// payload derived from them so corruption anywhere is caught.
fn encode(producer: u32, seq: u32) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + 32);
    value.extend_from_slice(&producer.to_be_bytes());
    value.extend_from_slice(&seq.to_be_bytes());
    value.extend((0..32u32).map(|i| (producer.wrapping_mul(31) ^ seq ^ i) as u8));
    value
}

fn decode(value: &[u8]) -> (u32, u32) {
    assert_eq!(value.len(), 40, "value length");
    let producer = u32::from_be_bytes(value[0..4].try_into().expect("4 bytes"));
    let seq = u32::from_be_bytes(value[4..8].try_into().expect("4 bytes"));
    assert_eq!(value, encode(producer, seq).as_slice(), "payload intact");
    (producer, seq)
}

#[tokio::test]
async fn concurrent_producers_and_a_consumer_through_a_broker() {
    let broker = Broker::start();
    let addr = broker.addr.clone();
    tokio::time::timeout(Duration::from_secs(120), run(addr))
        .await
        .expect("the test finished within 120 s");
}

async fn run(addr: String) {
    let client = ClientConfig::new([addr]);
    let admin = Admin::connect(client.clone())
        .await
        .expect("admin connects");
    admin
        .create_topic(TOPIC, PARTITIONS, 1)
        .await
        .expect("topic created");

    // Producers: every record is queued before any delivery is awaited, so
    // many are in flight at once.
    let mut tasks = Vec::new();
    for producer_id in 0..PRODUCERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let config = ProducerConfig {
                acks: Acks::All,
                linger: Duration::from_millis(5),
                partitioner: Partitioner::RoundRobin,
                ..ProducerConfig::default()
            };
            let producer = Producer::connect(client, config)
                .await
                .expect("producer connects");
            let mut deliveries = Vec::with_capacity(PER_PRODUCER as usize);
            for seq in 0..PER_PRODUCER {
                let record = ProducerRecord::new(TOPIC, encode(producer_id, seq));
                deliveries.push(producer.enqueue(record).await.expect("record queued"));
            }
            let mut acked = Vec::with_capacity(deliveries.len());
            for (seq, delivery) in deliveries.into_iter().enumerate() {
                let meta = delivery
                    .await
                    .unwrap_or_else(|e| panic!("producer {producer_id} record {seq}: {e}"));
                assert_eq!(&*meta.topic, TOPIC);
                assert!(
                    meta.log_append_time_ms >= meta.timestamp,
                    "appended at {} before its create time {}",
                    meta.log_append_time_ms,
                    meta.timestamp
                );
                acked.push((meta.partition, meta.offset, producer_id, seq as u32));
            }
            producer.close().await;
            acked
        }));
    }
    // (partition, offset) -> (producer, seq), as acknowledged.
    let mut expected = BTreeMap::new();
    for task in tasks {
        for (partition, offset, producer, seq) in task.await.expect("producer task") {
            assert!(
                (0..PARTITIONS).contains(&partition),
                "partition {partition}"
            );
            assert!(offset >= 0, "offset {offset}");
            let previous = expected.insert((partition, offset), (producer, seq));
            assert!(
                previous.is_none(),
                "two records acked at {partition}/{offset}"
            );
        }
    }
    assert_eq!(expected.len(), TOTAL);

    // Consumer over every partition from the earliest offset.
    let mut consumer = Consumer::connect(
        client,
        ConsumerConfig {
            start: SeekTo::Earliest,
            ..ConsumerConfig::default()
        },
    )
    .await
    .expect("consumer connects");
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    consumer
        .assign(TOPIC, &partitions)
        .await
        .expect("partitions assigned");
    let mut records = Vec::with_capacity(TOTAL);
    let deadline = Instant::now() + Duration::from_secs(60);
    while records.len() < TOTAL && Instant::now() < deadline {
        let batch = consumer
            .poll(Duration::from_millis(500))
            .await
            .expect("poll");
        records.extend(batch);
    }
    assert_eq!(records.len(), TOTAL, "records consumed within 60 s");

    // Per partition: dense offsets from 0; per producer within a partition:
    // sequence numbers strictly increasing.
    let mut next_offset: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_seq: BTreeMap<(i32, u32), u32> = BTreeMap::new();
    for record in &records {
        assert_eq!(record.topic, TOPIC);
        let offset = next_offset.entry(record.partition).or_insert(0);
        assert_eq!(
            record.offset, *offset,
            "partition {} offsets dense and increasing",
            record.partition
        );
        *offset += 1;
        let value = record.value.as_ref().expect("record has a value");
        let (producer, seq) = decode(value);
        assert_eq!(
            expected.get(&(record.partition, record.offset)),
            Some(&(producer, seq)),
            "record at {}/{} is where its metadata said",
            record.partition,
            record.offset
        );
        if let Some(previous) = last_seq.insert((record.partition, producer), seq) {
            assert!(
                seq > previous,
                "producer {producer} order in partition {}: {seq} after {previous}",
                record.partition
            );
        }
    }
    let consumed: usize = next_offset.values().map(|&n| n as usize).sum();
    assert_eq!(consumed, TOTAL);
}
