//! The network commands of `shardmqctl`, over `shardmq-client`. Each
//! writes its results to the given writer, one item per line.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use shardmq_client::{
    Acks, Admin, Client, ClientConfig, Consumer, ConsumerConfig, Delivery, ErrorCode, Producer,
    ProducerConfig, ProducerRecord, SeekTo,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::error::{CtlError, Result};

/// Deliveries awaited in input order at most this far behind the input.
const PRODUCE_WINDOW: usize = 4096;
/// Long-poll wait of one consume fetch.
const POLL_WAIT: Duration = Duration::from_millis(500);

fn emit(out: &mut impl Write, line: std::fmt::Arguments<'_>) -> Result<()> {
    out.write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|source| CtlError::Stdio {
            what: "write to stdout",
            source,
        })
}

fn flush(out: &mut impl Write) -> Result<()> {
    out.flush().map_err(|source| CtlError::Stdio {
        what: "write to stdout",
        source,
    })
}

/// A client configuration for one bootstrap address.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new([bootstrap]);
    config.client_id = "shardmqctl".to_owned();
    config
}

/// `topic create`.
pub async fn topic_create(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    replication_factor: i16,
    out: &mut impl Write,
) -> Result<()> {
    let admin = Admin::connect(client_config(bootstrap)).await?;
    admin
        .create_topic(name, partitions, replication_factor)
        .await?;
    emit(
        out,
        format_args!(
            "created topic {name} with {partitions} partitions, replication factor {replication_factor}"
        ),
    )
}

/// `topic list`: `NAME partitions=P replication-factor=R` per topic.
pub async fn topic_list(bootstrap: &str, out: &mut impl Write) -> Result<()> {
    let admin = Admin::connect(client_config(bootstrap)).await?;
    for topic in admin.list_topics().await? {
        emit(
            out,
            format_args!(
                "{} partitions={} replication-factor={}",
                topic.name, topic.partitions, topic.replication_factor
            ),
        )?;
    }
    Ok(())
}

fn describe_partitions(
    out: &mut impl Write,
    topic: &shardmq_client::TopicInfo,
    brokers: &[shardmq_client::BrokerInfo],
) -> Result<()> {
    for p in &topic.partitions {
        let host = brokers
            .iter()
            .find(|b| b.node_id == p.leader_node_id)
            .map_or("?", |b| b.host.as_str());
        let mut line = format!(
            "  partition={} leader={} shard={} port={} host={host} replicas={:?} epoch={}",
            p.partition, p.leader_node_id, p.leader_shard, p.shard_port, p.replicas, p.leader_epoch
        );
        if p.error != ErrorCode::None {
            line.push_str(&format!(" error={:?}", p.error));
        }
        emit(out, format_args!("{line}"))?;
    }
    Ok(())
}

/// `topic describe`: the topic, then one line per partition.
pub async fn topic_describe(bootstrap: &str, name: &str, out: &mut impl Write) -> Result<()> {
    let client = Client::connect(client_config(bootstrap)).await?;
    let admin = Admin::new(client.clone());
    let info = admin.describe_topic(name).await?;
    let metadata = client.metadata(Some(&[])).await?;
    emit(
        out,
        format_args!("topic {} partitions={}", info.name, info.partitions.len()),
    )?;
    describe_partitions(out, &info, &metadata.brokers)
}

/// `topic delete`.
pub async fn topic_delete(bootstrap: &str, name: &str, out: &mut impl Write) -> Result<()> {
    let admin = Admin::connect(client_config(bootstrap)).await?;
    admin.delete_topic(name).await?;
    emit(out, format_args!("deleted topic {name}"))
}

/// `cluster describe`: brokers, then topics with their partitions.
pub async fn cluster_describe(bootstrap: &str, out: &mut impl Write) -> Result<()> {
    let admin = Admin::connect(client_config(bootstrap)).await?;
    let metadata = admin.metadata().await?;
    emit(out, format_args!("brokers={}", metadata.brokers.len()))?;
    for broker in &metadata.brokers {
        emit(
            out,
            format_args!(
                "broker node={} address={}:{}",
                broker.node_id, broker.host, broker.port
            ),
        )?;
    }
    let mut topics = metadata.topics.clone();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    emit(out, format_args!("topics={}", topics.len()))?;
    for topic in &topics {
        let mut line = format!("topic {} partitions={}", topic.name, topic.partitions.len());
        if topic.error != ErrorCode::None {
            line.push_str(&format!(" error={:?}", topic.error));
        }
        emit(out, format_args!("{line}"))?;
        describe_partitions(out, topic, &metadata.brokers)?;
    }
    Ok(())
}

/// Options of `produce`.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Topic to produce to.
    pub topic: String,
    /// Every record to this partition; else the partitioner picks.
    pub partition: Option<i32>,
    /// Splits each line at its first occurrence into key and value.
    pub key_separator: Option<char>,
    /// Acknowledgement level.
    pub acks: Acks,
    /// Print `<partition> <offset> <line>` once each record is acknowledged.
    pub report_acks: bool,
}

/// `produce`: one record per line of `input`. Returns the number of
/// records acknowledged.
pub async fn produce(
    bootstrap: &str,
    options: &ProduceOptions,
    input: impl AsyncRead + Unpin,
    out: &mut impl Write,
) -> Result<u64> {
    let config = ProducerConfig {
        acks: options.acks,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(client_config(bootstrap), config).await?;
    // Fails early, with the broker's word, on an unknown topic.
    producer.client().topic(&options.topic).await?;
    let mut lines = BufReader::new(input).lines();
    let mut pending: VecDeque<(Delivery, String)> = VecDeque::new();
    let mut acked = 0u64;
    let mut line_no = 0u64;
    let result = async {
        while let Some(line) = lines.next_line().await.map_err(|source| CtlError::Stdio {
            what: "read stdin",
            source,
        })? {
            line_no += 1;
            let (key, value) = match options.key_separator {
                None => (None, line.as_str()),
                Some(sep) => match line.split_once(sep) {
                    Some((key, value)) => (Some(key), value),
                    None => {
                        return Err(CtlError::Input {
                            line: line_no,
                            reason: format!("no key separator {sep:?}"),
                        })
                    }
                },
            };
            let mut record = ProducerRecord::new(
                options.topic.clone(),
                Bytes::copy_from_slice(value.as_bytes()),
            );
            if let Some(key) = key {
                record = record.key(Bytes::copy_from_slice(key.as_bytes()));
            }
            if let Some(partition) = options.partition {
                record = record.partition(partition);
            }
            let delivery = producer.enqueue(record).await?;
            pending.push_back((delivery, line));
            if pending.len() >= PRODUCE_WINDOW {
                if let Some((delivery, line)) = pending.pop_front() {
                    acked += report(delivery, &line, options.report_acks, out).await?;
                }
            }
        }
        producer.flush().await;
        while let Some((delivery, line)) = pending.pop_front() {
            acked += report(delivery, &line, options.report_acks, out).await?;
        }
        flush(out)
    }
    .await;
    producer.close().await;
    result.map(|()| acked)
}

async fn report(delivery: Delivery, line: &str, print: bool, out: &mut impl Write) -> Result<u64> {
    let metadata = delivery.await?;
    if print {
        emit(
            out,
            format_args!("{} {} {line}", metadata.partition, metadata.offset),
        )?;
    }
    Ok(1)
}

/// Where `consume` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first stored offset.
    Beginning,
    /// The end of the log: only records produced from now on.
    End,
    /// This offset in every consumed partition.
    Offset(i64),
    /// The first record at or after this timestamp (ms).
    Timestamp(i64),
}

/// Options of `consume`.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Topic to read.
    pub topic: String,
    /// Only this partition; else every partition.
    pub partition: Option<i32>,
    /// Where to start.
    pub start: Start,
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Keep waiting for new records at the end of the log.
    pub follow: bool,
    /// Prefix each value with `<partition> <offset> `.
    pub print_offsets: bool,
}

/// `consume`: writes one value per line. Without `follow` it stops when
/// every consumed partition reached the end it had when the command
/// started. Returns the number of records written.
pub async fn consume(
    bootstrap: &str,
    options: &ConsumeOptions,
    out: &mut impl Write,
) -> Result<u64> {
    let client = Client::connect(client_config(bootstrap)).await?;
    let start = match options.start {
        Start::Beginning => SeekTo::Earliest,
        Start::End => SeekTo::Latest,
        Start::Offset(offset) => SeekTo::Offset(offset),
        Start::Timestamp(ms) => SeekTo::Timestamp(ms),
    };
    let config = ConsumerConfig {
        start,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), config.clone());
    match options.partition {
        Some(partition) => consumer.assign(&options.topic, &[partition]).await?,
        None => consumer.assign_all(&options.topic).await?,
    }
    consumer.seek_all(start).await?;
    let partitions: Vec<i32> = match options.partition {
        Some(partition) => vec![partition],
        None => client
            .topic(&options.topic)
            .await?
            .partitions
            .iter()
            .map(|p| p.partition)
            .collect(),
    };
    // The end of each partition when the command started.
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    if !options.follow {
        let mut probe = Consumer::new(client.clone(), config);
        probe.assign(&options.topic, &partitions).await?;
        probe.seek_all(SeekTo::Latest).await?;
        for &partition in &partitions {
            ends.insert(partition, probe.position(partition).unwrap_or(0));
        }
    }
    let at_end = |consumer: &Consumer| {
        ends.iter()
            .all(|(&p, &end)| consumer.position(p).is_some_and(|pos| pos >= end))
    };
    let mut written = 0u64;
    loop {
        if options.count.is_some_and(|count| written >= count) {
            break;
        }
        if !options.follow && at_end(&consumer) {
            break;
        }
        let records = consumer.poll(POLL_WAIT).await?;
        for record in records {
            if options.count.is_some_and(|count| written >= count) {
                break;
            }
            let value = record.value.as_deref().unwrap_or_default();
            let result = if options.print_offsets {
                write!(out, "{} {} ", record.partition, record.offset)
                    .and_then(|()| out.write_all(value))
            } else {
                out.write_all(value)
            };
            result
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|source| CtlError::Stdio {
                    what: "write to stdout",
                    source,
                })?;
            written += 1;
        }
        flush(out)?;
    }
    Ok(written)
}

/// Parses `all`, `leader` or `none`.
pub fn parse_acks(text: &str) -> std::result::Result<Acks, String> {
    match text {
        "all" => Ok(Acks::All),
        "leader" => Ok(Acks::Leader),
        "none" => Ok(Acks::None),
        other => Err(format!("acks must be all, leader or none, not {other:?}")),
    }
}
