//! The network commands of `shardmqctl`, over `shardmq-client`. Each
//! writes its results to the given writer, one item per line.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use shardmq_client::{
    Acks, Admin, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, Delivery, Producer,
    ProducerConfig, ProducerRecord, ReadFrom, RecordMetadata, ReplicasDescription, SeekTo,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::compare::{self, Comparison};
use crate::describe;
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

/// A client configuration for these bootstrap addresses (tried in order).
pub fn client_config(bootstrap: &[String]) -> ClientConfig {
    let mut config = ClientConfig::new(bootstrap.iter().cloned());
    config.client_id = "shardmqctl".to_owned();
    config
}

/// `topic create`.
pub async fn topic_create(
    bootstrap: &[String],
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
pub async fn topic_list(bootstrap: &[String], out: &mut impl Write) -> Result<()> {
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

/// `topic describe`: the topic, each partition, and each replica's state
/// as its broker reports it ([`describe::render_topic_text`]), or one JSON
/// object ([`describe::render_topic_json`]).
pub async fn topic_describe(
    bootstrap: &[String],
    name: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let client = Client::connect(client_config(bootstrap)).await?;
    let report = describe::topic_report(&client, name).await?;
    if json {
        emit(
            out,
            format_args!("{}", describe::render_topic_json(&report)),
        )
    } else {
        describe::render_topic_text(&report, out)
    }
}

/// `topic delete`.
pub async fn topic_delete(bootstrap: &[String], name: &str, out: &mut impl Write) -> Result<()> {
    let admin = Admin::connect(client_config(bootstrap)).await?;
    admin.delete_topic(name).await?;
    emit(out, format_args!("deleted topic {name}"))
}

/// `cluster describe`: brokers, the controller, then topics with their
/// partitions ([`describe::render_cluster_text`]), or one JSON object
/// ([`describe::render_cluster_json`]).
pub async fn cluster_describe(
    bootstrap: &[String],
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let admin = Admin::connect(client_config(bootstrap)).await?;
    let report = describe::cluster_report(&admin).await?;
    if json {
        emit(
            out,
            format_args!("{}", describe::render_cluster_json(&report)),
        )
    } else {
        describe::render_cluster_text(&report, out)
    }
}

/// `partition transfer-leader`: moves the partition's leadership to the
/// replica on `to_node` and prints `partition TOPIC/P leader=N`, or, when
/// the broker answered before the move was done (a timeout of 0),
/// `partition TOPIC/P leader=L (transfer to N accepted)`.
pub async fn transfer_leader(
    bootstrap: &[String],
    topic: &str,
    partition: i32,
    to_node: i32,
    timeout: Duration,
    out: &mut impl Write,
) -> Result<()> {
    let admin = Admin::connect(client_config(bootstrap)).await?;
    let leader = admin
        .transfer_leader(topic, partition, to_node, timeout)
        .await
        .map_err(|source| CtlError::Op {
            op: format!("transfer of the leadership of {topic}/{partition} to node {to_node}"),
            source,
        })?;
    if leader == to_node {
        emit(
            out,
            format_args!("partition {topic}/{partition} leader={leader}"),
        )
    } else {
        let shown = if leader < 0 {
            "none".to_owned()
        } else {
            leader.to_string()
        };
        emit(
            out,
            format_args!(
                "partition {topic}/{partition} leader={shown} (transfer to {to_node} accepted)"
            ),
        )
    }
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

/// How the records of a `produce` run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProduceSummary {
    /// Records acknowledged.
    pub acknowledged: u64,
    /// Records whose outcome is unknown (they may or may not be stored).
    pub unknown: u64,
    /// Records refused for sure (not stored).
    pub failed: u64,
}

impl ProduceSummary {
    /// Records read from the input.
    pub fn total(&self) -> u64 {
        self.acknowledged + self.unknown + self.failed
    }
}

/// `produce`: one record per line of `input`.
///
/// Without `report_acks` the first record that fails ends the command
/// with its error. With it, each acknowledged record is printed on `out`
/// as `<partition> <offset> <line>`, each record whose outcome is unknown
/// on `err` as `unknown <partition> <line>: <reason>`, each refused one as
/// `failed <partition> <line>: <reason>`, and producing goes on with the
/// rest; the lines come in input order. Returns the counts.
pub async fn produce(
    bootstrap: &[String],
    options: &ProduceOptions,
    input: impl AsyncRead + Unpin,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<ProduceSummary> {
    let config = ProducerConfig {
        acks: options.acks,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(client_config(bootstrap), config).await?;
    // Fails early, with the broker's word, on an unknown topic.
    producer.client().topic(&options.topic).await?;
    let mut lines = BufReader::new(input).lines();
    let mut pending: VecDeque<(Delivery, String)> = VecDeque::new();
    let mut summary = ProduceSummary::default();
    let mut line_no = 0u64;
    let result = async {
        loop {
            // Records are reported as their outcome arrives, also while
            // standard input is idle, so whoever feeds it sees acks in
            // time.
            let line = tokio::select! {
                biased;
                outcome = async { (&mut pending.front_mut().expect("checked").0).await },
                    if !pending.is_empty() =>
                {
                    let (delivery, line) = pending.pop_front().expect("checked");
                    report_outcome(
                        delivery.partition(),
                        outcome,
                        &line,
                        options.report_acks,
                        out,
                        err,
                        &mut summary,
                    )?;
                    continue;
                }
                line = lines.next_line() => line.map_err(|source| CtlError::Stdio {
                    what: "read stdin",
                    source,
                })?,
            };
            let Some(line) = line else { break };
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
                    report(delivery, &line, options.report_acks, out, err, &mut summary).await?;
                }
            }
        }
        producer.flush().await;
        while let Some((delivery, line)) = pending.pop_front() {
            report(delivery, &line, options.report_acks, out, err, &mut summary).await?;
        }
        flush(out)
    }
    .await;
    producer.close().await;
    result.map(|()| summary)
}

/// How `produce --report-acks` reports one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// Acknowledged: this line goes to stdout.
    Acknowledged(String),
    /// Outcome unknown: this line goes to stderr.
    Unknown(String),
    /// Refused for sure: this line goes to stderr.
    Failed(String),
}

/// The report of one record queued for `partition` from input `line`:
/// `<partition> <offset> <line>`, `unknown <partition> <line>: <reason>`
/// or `failed <partition> <line>: <reason>`.
pub fn report_line(
    partition: i32,
    line: &str,
    outcome: &std::result::Result<RecordMetadata, ClientError>,
) -> Reported {
    match outcome {
        Ok(metadata) => {
            Reported::Acknowledged(format!("{} {} {line}", metadata.partition, metadata.offset))
        }
        Err(error) => {
            let reason = describe::one_line(error);
            if error.is_outcome_unknown() {
                Reported::Unknown(format!("unknown {partition} {line}: {reason}"))
            } else {
                Reported::Failed(format!("failed {partition} {line}: {reason}"))
            }
        }
    }
}

/// Waits for one record's outcome and reports it (see [`produce`]).
async fn report(
    delivery: Delivery,
    line: &str,
    report_acks: bool,
    out: &mut impl Write,
    err: &mut impl Write,
    summary: &mut ProduceSummary,
) -> Result<()> {
    let partition = delivery.partition();
    let outcome = delivery.await;
    report_outcome(partition, outcome, line, report_acks, out, err, summary)
}

/// Reports one record's known outcome (see [`report`]).
fn report_outcome(
    partition: i32,
    outcome: shardmq_client::Result<shardmq_client::RecordMetadata>,
    line: &str,
    report_acks: bool,
    out: &mut impl Write,
    err: &mut impl Write,
    summary: &mut ProduceSummary,
) -> Result<()> {
    if !report_acks {
        // Without reports the first failure ends the command.
        outcome?;
        summary.acknowledged += 1;
        return Ok(());
    }
    let to_stderr = |err: &mut dyn Write, text: &str| {
        writeln!(err, "{text}").map_err(|source| CtlError::Stdio {
            what: "write to stderr",
            source,
        })
    };
    match report_line(partition, line, &outcome) {
        Reported::Acknowledged(text) => {
            summary.acknowledged += 1;
            emit(out, format_args!("{text}"))
        }
        Reported::Unknown(text) => {
            summary.unknown += 1;
            to_stderr(err, &text)
        }
        Reported::Failed(text) => {
            summary.failed += 1;
            to_stderr(err, &text)
        }
    }
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
    /// Read the replicas of this node (follower reads) instead of the
    /// leaders.
    pub from_node: Option<i32>,
}

/// `consume`: writes one value per line. Without `follow` it stops when
/// every consumed partition reached the end it had when the command
/// started (with `from_node`, that node's high watermark). Returns the
/// number of records written.
pub async fn consume(
    bootstrap: &[String],
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
        read_from: options
            .from_node
            .map_or(ReadFrom::Leader, ReadFrom::Replica),
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

/// How `compare-replicas` ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompareSummary {
    /// Partitions compared.
    pub partitions: usize,
    /// Partitions whose replicas differ or could not all be read.
    pub bad: usize,
}

/// `topic compare-replicas`: for each partition (or only `partition`),
/// reads every replica from the highest log start offset among them up to
/// the lowest high watermark among them and compares them batch by batch
/// ([`compare::compare_streams`]); prints one line per partition
/// ([`compare::comparison_line`]).
pub async fn compare_replicas(
    bootstrap: &[String],
    topic: &str,
    partition: Option<i32>,
    out: &mut impl Write,
) -> Result<CompareSummary> {
    let client = Client::connect(client_config(bootstrap)).await?;
    let info = client.refresh_topic(topic).await?;
    let partitions: Vec<_> = match partition {
        None => info.partitions.iter().collect(),
        Some(p) => vec![info
            .partition(p)
            .ok_or_else(|| CtlError::Usage(format!("topic {topic} has no partition {p}")))?],
    };
    let mut nodes: Vec<i32> = partitions
        .iter()
        .flat_map(|p| p.replicas.iter().map(|r| r.node_id))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    let described = describe::describe_nodes(&client, &nodes, topic).await;
    let mut summary = CompareSummary::default();
    for p in partitions {
        summary.partitions += 1;
        let replica_nodes: Vec<i32> = p.replicas.iter().map(|r| r.node_id).collect();
        let line = compare_partition(&client, topic, p.partition, &replica_nodes, &described).await;
        if !line.1 {
            summary.bad += 1;
        }
        emit(out, format_args!("{}", line.0))?;
        flush(out)?;
    }
    Ok(summary)
}

/// One partition of `compare-replicas`: its line, and whether the
/// replicas are identical.
async fn compare_partition(
    client: &Client,
    topic: &str,
    partition: i32,
    nodes: &[i32],
    described: &BTreeMap<i32, std::result::Result<ReplicasDescription, ClientError>>,
) -> (String, bool) {
    let unreadable = |node_id: i32, reason: String| {
        let comparison = Comparison::Unreadable { node_id, reason };
        (
            compare::comparison_line(partition, nodes, -1, &comparison),
            false,
        )
    };
    // The range every replica has committed.
    let mut start = 0i64;
    let mut end = i64::MAX;
    for &node_id in nodes {
        let state = match described.get(&node_id) {
            Some(Ok(d)) => d.replica(topic, partition),
            Some(Err(error)) => return unreadable(node_id, describe::one_line(error)),
            None => None,
        };
        let Some(state) = state else {
            return unreadable(
                node_id,
                format!("it reports no replica of {topic}/{partition}"),
            );
        };
        start = start.max(state.log_start_offset);
        end = end.min(state.high_watermark);
    }
    if nodes.is_empty() {
        end = 0;
    }
    let end = end.max(start);
    let mut sources = Vec::with_capacity(nodes.len());
    for &node_id in nodes {
        let mut consumer = Consumer::new(
            client.clone(),
            ConsumerConfig {
                read_from: ReadFrom::Replica(node_id),
                ..ConsumerConfig::default()
            },
        );
        let ready = async {
            consumer.assign(topic, &[partition]).await?;
            consumer.seek(partition, SeekTo::Offset(start)).await
        }
        .await;
        if let Err(error) = ready {
            return unreadable(node_id, describe::one_line(&error));
        }
        sources.push((node_id, consumer));
    }
    let comparison = compare::compare_streams(&mut sources, start, end).await;
    let identical = matches!(comparison, Comparison::Identical { .. });
    (
        compare::comparison_line(partition, nodes, end, &comparison),
        identical,
    )
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shardmq_client::ErrorCode;

    use super::*;

    #[test]
    fn produce_reports_say_which_records_are_stored_refused_or_unknown() {
        let acked = Ok(RecordMetadata {
            topic: Arc::from("t"),
            partition: 2,
            offset: 17,
            timestamp: 0,
            log_append_time_ms: -1,
        });
        assert_eq!(
            report_line(2, "k:v", &acked),
            Reported::Acknowledged("2 17 k:v".into())
        );
        let unknown = Err(ClientError::OutcomeUnknown {
            cause: Box::new(ClientError::broker(
                ErrorCode::RequestTimedOut,
                Some("replicas\nslow"),
            )),
        });
        assert_eq!(
            report_line(1, "a", &unknown),
            Reported::Unknown(
                "unknown 1 a: outcome unknown, the records may or may not have been appended: \
                 broker error RequestTimedOut: replicas slow"
                    .into()
            )
        );
        let refused = Err(ClientError::broker(ErrorCode::RecordTooLarge, None));
        assert_eq!(
            report_line(0, "b", &refused),
            Reported::Failed("failed 0 b: broker error RecordTooLarge".into())
        );
        let lost = Err(ClientError::ConnectionLost {
            addr: "h:1".into(),
            reason: "reset".into(),
            request_sent: true,
        });
        assert!(matches!(report_line(0, "c", &lost), Reported::Unknown(_)));
    }

    #[test]
    fn a_summary_counts_every_record() {
        let summary = ProduceSummary {
            acknowledged: 7,
            unknown: 2,
            failed: 1,
        };
        assert_eq!(summary.total(), 10);
        let error = CtlError::NotAcknowledged {
            total: summary.total(),
            unknown: summary.unknown,
            failed: summary.failed,
        };
        assert_eq!(
            error.to_string(),
            "3 of 10 records not acknowledged (2 with unknown outcome, 1 failed)"
        );
        assert_eq!(error.exit_code(), 1);
    }
}
