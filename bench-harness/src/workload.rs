//! Workload files: what a benchmark run sends, in the shape of the
//! OpenMessaging Benchmark's workload YAML, written as TOML.
//!
//! ```toml
//! name = "1-topic-16-partitions-1kb"
//! topics = 1
//! partitions_per_topic = 16
//! message_size = 1024
//! random_bytes_ratio = 0.5
//! key_distributor = "none"          # none | round-robin | random
//! producers_per_topic = 2
//! consumers_per_topic = 1
//! producer_rate = 50000             # msg/s over all producers; 0 = search the max
//! acks = "all"                      # all | leader (shardmq, without a peer)
//! warmup_seconds = 10
//! duration_seconds = 60
//!
//! # Optional, with their defaults:
//! kind = "stream"                   # stream | idle | failover
//! replicas = 1                      # 1 | 3 (a 3-broker cluster and a 3-node NATS cluster)
//! sequential = false                # one record in flight per producer
//! peer_max_rate_fraction = 0.5      # (no default) run at this share of the peer's max
//! single_broker_baseline = false    # with replicas = 3, also a single broker
//! nats_partitions = "subjects"      # subjects | streams
//! shardmq_retry_backoff_max_ms = 2000 # (no default: the SDK's) longest retry wait
//!
//! [rate_search]                     # optional; only read when producer_rate = 0
//! start_rate = 5000
//! trial_seconds = 5
//! max_trials = 12
//! tolerance = 0.05
//! ```
//!
//! Three kinds of workload:
//! - `stream` (the default): producers and consumers for the measured
//!   period, at a fixed rate, at the max sustainable rate (searched), or
//!   with `sequential = true` one record at a time per producer.
//! - `idle`: the topics are created and nothing is sent; `warmup_seconds`
//!   lets the servers settle, then each server process's CPU and resident
//!   memory are measured over `duration_seconds`. `message_size`, the
//!   producer, consumer and rate fields are not used and must be left out.
//! - `failover`: producers send at `producer_rate` for `warmup_seconds`,
//!   then the broker (or nats-server) leading the most partitions is killed
//!   with SIGKILL and sending goes on for `duration_seconds`; per partition
//!   it led, the time from the kill to the first acknowledged record. Needs
//!   `replicas = 3` and no consumers.
//!
//! `replicas = 3` runs shardmq as a 3-broker cluster on loopback with
//! topics of replication factor 3, and NATS JetStream (with a peer) as a
//! 3-node cluster with streams of 3 replicas. `peer_max_rate_fraction`
//! (with `producer_rate = 0`) searches the peer's max sustainable rate
//! first, then measures every driver at that share of it, in the same run.
//! `nats_partitions` maps a topic's partitions onto JetStream: `subjects`,
//! one stream per topic with a subject per partition; `streams`, a stream
//! (its own Raft group) per partition. `shardmq_retry_backoff_max_ms`
//! caps the wait of the shardmq producer between two retries of a batch
//! (the SDK's `retry_backoff_max`), which bounds how late a producer
//! notices a new leader after a failover.
//!
//! [`Workload::parse`] rejects unknown fields and out-of-range values with a
//! message naming the field, so a typo never silently runs a different
//! benchmark.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::payload::TIMESTAMP_BYTES;
use crate::search::SearchConfig;

/// Largest message the harness sends: nats-server's default `max_payload`
/// (1 MiB), so every workload runs against every driver.
pub const MESSAGE_SIZE_MAX: u32 = 1 << 20;
/// Most topics one workload may create.
pub const TOPICS_MAX: u32 = 1_000;
/// Most partitions per topic.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;
/// Most producers or consumers per topic.
pub const CLIENTS_PER_TOPIC_MAX: u32 = 256;
/// Longest warm-up or measured period, in seconds (one day).
pub const PERIOD_SECONDS_MAX: f64 = 86_400.0;

/// How records are keyed, OMB's `keyDistributor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyDistribution {
    /// No key: records go round-robin over the partitions.
    None,
    /// Keys cycle through a fixed set, one per partition slot, in order.
    RoundRobin,
    /// A random 64-bit key per record.
    Random,
}

impl fmt::Display for KeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::RoundRobin => "round-robin",
            Self::Random => "random",
        })
    }
}

/// shardmq's acknowledgement level for runs without a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadAcks {
    /// Acknowledged once the batch is committed (after fdatasync).
    All,
    /// Acknowledged once the leader appended the batch (before the sync).
    Leader,
}

/// What a workload measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Producers and consumers: throughput and latency.
    Stream,
    /// Topics and nothing sent: each server's CPU and memory at rest.
    Idle,
    /// Steady producing across a SIGKILL of the busiest leader.
    Failover,
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stream => "stream",
            Self::Idle => "idle",
            Self::Failover => "failover",
        })
    }
}

/// How the partitions of a topic map onto NATS JetStream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatsPartitions {
    /// One stream per topic, one subject per partition (one Raft group
    /// per topic).
    Subjects,
    /// One stream per partition (one Raft group per partition, as
    /// shardmq has).
    Streams,
}

impl fmt::Display for NatsPartitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Subjects => "subjects",
            Self::Streams => "streams",
        })
    }
}

/// Replication factors a workload may ask for: one broker, or a cluster
/// of three with every partition on all three.
pub const REPLICAS_ALLOWED: [u32; 2] = [1, 3];

/// The optional `[rate_search]` table; defaults in [`SearchConfig`].
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateSearchFile {
    start_rate: Option<f64>,
    trial_seconds: Option<f64>,
    max_trials: Option<u32>,
    tolerance: Option<f64>,
    max_rate: Option<f64>,
}

/// The file as written, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadFile {
    name: String,
    #[serde(default = "default_kind")]
    kind: WorkloadKind,
    topics: u32,
    partitions_per_topic: u32,
    message_size: Option<u32>,
    #[serde(default)]
    random_bytes_ratio: f64,
    #[serde(default = "default_keys")]
    key_distributor: KeyDistribution,
    producers_per_topic: Option<u32>,
    consumers_per_topic: Option<u32>,
    producer_rate: Option<f64>,
    #[serde(default = "default_acks")]
    acks: WorkloadAcks,
    warmup_seconds: f64,
    duration_seconds: f64,
    #[serde(default = "default_replicas")]
    replicas: u32,
    #[serde(default)]
    sequential: bool,
    peer_max_rate_fraction: Option<f64>,
    #[serde(default)]
    single_broker_baseline: bool,
    #[serde(default = "default_nats_partitions")]
    nats_partitions: NatsPartitions,
    shardmq_retry_backoff_max_ms: Option<u64>,
    #[serde(default)]
    rate_search: RateSearchFile,
}

fn default_kind() -> WorkloadKind {
    WorkloadKind::Stream
}

fn default_replicas() -> u32 {
    1
}

fn default_nats_partitions() -> NatsPartitions {
    NatsPartitions::Subjects
}

fn default_keys() -> KeyDistribution {
    KeyDistribution::None
}

fn default_acks() -> WorkloadAcks {
    WorkloadAcks::All
}

/// A validated workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Names the report directory; letters, digits, `-`, `_` and `.` only.
    pub name: String,
    /// What the workload measures.
    pub kind: WorkloadKind,
    /// Topics, each with its own producers and consumers.
    pub topics: u32,
    /// Partitions of each topic (subjects of each stream, for NATS).
    pub partitions_per_topic: u32,
    /// Bytes of each record's value (at least the 8-byte timestamp); 0
    /// for an idle workload.
    pub message_size: u32,
    /// Share of each value (after the timestamp) that is random bytes; the
    /// rest is zeros. 0 compresses perfectly, 1 not at all.
    pub random_bytes_ratio: f64,
    /// How records are keyed.
    pub key_distributor: KeyDistribution,
    /// Producers of each topic, each with its own connections (0 for an
    /// idle workload).
    pub producers_per_topic: u32,
    /// Consumers sharing each topic (0: produce only).
    pub consumers_per_topic: u32,
    /// Target msg/s over all producers of all topics; `None` (0 in the
    /// file) asks for a max-rate search, or with `sequential` for sends as
    /// fast as acknowledgements come.
    pub producer_rate: Option<f64>,
    /// shardmq's acknowledgement level when no peer runs.
    pub acks: WorkloadAcks,
    /// Sent but not measured, before the measured period.
    pub warmup: Duration,
    /// The measured period.
    pub duration: Duration,
    /// How the max sustainable rate is searched when `producer_rate` is 0.
    pub rate_search: SearchConfig,
    /// Replicas of every partition: 1 (a single broker) or 3 (a cluster
    /// of three brokers, and of three nats-servers).
    pub replicas: u32,
    /// Each producer sends its next record only once the previous one is
    /// acknowledged: the latency of a lone record.
    pub sequential: bool,
    /// With `producer_rate = 0`: every driver runs at this share of the
    /// peer's max sustainable rate, searched first in the same run.
    pub peer_max_rate_fraction: Option<f64>,
    /// With `replicas = 3`: shardmq on a single broker (acks=all) runs
    /// too, the baseline of the replicated figures.
    pub single_broker_baseline: bool,
    /// How a topic's partitions map onto NATS JetStream.
    pub nats_partitions: NatsPartitions,
    /// The shardmq producer's longest wait between retries of a batch;
    /// `None`: the SDK's default.
    pub shardmq_retry_backoff_max: Option<Duration>,
}

/// A workload file that cannot be run, with the reason.
#[derive(Debug)]
pub enum WorkloadError {
    /// The file could not be read.
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, a field is missing, unknown or mistyped.
    Parse {
        /// The file.
        path: String,
        /// The parser's message, which names the field and line.
        message: String,
    },
    /// A field holds a value the harness cannot run.
    Invalid {
        /// The file.
        path: String,
        /// The field, e.g. `message_size` or `rate_search.tolerance`.
        field: &'static str,
        /// What is wrong with its value.
        message: String,
    },
}

impl fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => write!(f, "cannot read workload {path}: {source}"),
            Self::Parse { path, message } => write!(f, "workload {path}: {}", message.trim_end()),
            Self::Invalid {
                path,
                field,
                message,
            } => write!(f, "workload {path}: field `{field}`: {message}"),
        }
    }
}

impl std::error::Error for WorkloadError {}

impl Workload {
    /// Reads and validates a workload file.
    pub fn load(path: &Path) -> Result<(Self, String), WorkloadError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Read {
            path: shown.clone(),
            source,
        })?;
        let workload = Self::parse(&text, &shown)?;
        Ok((workload, text))
    }

    /// Parses and validates workload TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, WorkloadError> {
        let file: WorkloadFile = toml::from_str(text).map_err(|e| WorkloadError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |field: &'static str, message: String| WorkloadError::Invalid {
            path: origin.to_owned(),
            field,
            message,
        };
        let name_ok = !file.name.is_empty()
            && file.name.len() <= 100
            && file
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !file.name.starts_with('.');
        if !name_ok {
            return Err(invalid(
                "name",
                format!(
                    "{:?} must be 1 to 100 letters, digits, '-', '_' or '.' (it names the report directory)",
                    file.name
                ),
            ));
        }
        in_range(file.topics, 1, TOPICS_MAX).map_err(|m| invalid("topics", m))?;
        in_range(file.partitions_per_topic, 1, PARTITIONS_PER_TOPIC_MAX)
            .map_err(|m| invalid("partitions_per_topic", m))?;
        if !(0.0..=1.0).contains(&file.random_bytes_ratio) {
            return Err(invalid(
                "random_bytes_ratio",
                format!("{} is not between 0 and 1", file.random_bytes_ratio),
            ));
        }
        if !REPLICAS_ALLOWED.contains(&file.replicas) {
            return Err(invalid(
                "replicas",
                format!(
                    "{} must be 1 (one broker) or 3 (a cluster of three)",
                    file.replicas
                ),
            ));
        }
        if file.single_broker_baseline && file.replicas == 1 {
            return Err(invalid(
                "single_broker_baseline",
                "needs replicas = 3 (a single broker is already what runs)".into(),
            ));
        }
        let sending = file.kind != WorkloadKind::Idle;
        let (message_size, producers, consumers, rate) = if sending {
            let required = |field: &'static str| {
                invalid(
                    field,
                    format!("missing (a {} workload sends records)", file.kind),
                )
            };
            let message_size = file.message_size.ok_or_else(|| required("message_size"))?;
            let producers = file
                .producers_per_topic
                .ok_or_else(|| required("producers_per_topic"))?;
            let consumers = file
                .consumers_per_topic
                .ok_or_else(|| required("consumers_per_topic"))?;
            let rate = file
                .producer_rate
                .ok_or_else(|| required("producer_rate"))?;
            in_range(message_size, TIMESTAMP_BYTES as u32, MESSAGE_SIZE_MAX)
                .map_err(|m| invalid("message_size", m))?;
            in_range(producers, 1, CLIENTS_PER_TOPIC_MAX)
                .map_err(|m| invalid("producers_per_topic", m))?;
            in_range(consumers, 0, CLIENTS_PER_TOPIC_MAX)
                .map_err(|m| invalid("consumers_per_topic", m))?;
            if !(rate.is_finite() && rate >= 0.0) {
                return Err(invalid(
                    "producer_rate",
                    format!("{rate} must be 0 (search the max rate) or a positive msg/s"),
                ));
            }
            (message_size, producers, consumers, rate)
        } else {
            let unused = [
                ("message_size", file.message_size.is_some()),
                ("producers_per_topic", file.producers_per_topic.is_some()),
                ("consumers_per_topic", file.consumers_per_topic.is_some()),
                ("producer_rate", file.producer_rate.is_some()),
                ("sequential", file.sequential),
                (
                    "peer_max_rate_fraction",
                    file.peer_max_rate_fraction.is_some(),
                ),
            ];
            if let Some((field, _)) = unused.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    field,
                    "an idle workload sends nothing: leave it out".into(),
                ));
            }
            (0, 0, 0, 0.0)
        };
        if file.sequential && rate > 0.0 {
            return Err(invalid(
                "sequential",
                "needs producer_rate = 0 (each record leaves when the previous one is acknowledged)"
                    .into(),
            ));
        }
        if let Some(fraction) = file.peer_max_rate_fraction {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(invalid(
                    "peer_max_rate_fraction",
                    format!("{fraction} is not in (0, 1]"),
                ));
            }
            if rate > 0.0 || file.sequential {
                return Err(invalid(
                    "peer_max_rate_fraction",
                    "needs producer_rate = 0 and no sequential (the rate comes from the peer's max)"
                        .into(),
                ));
            }
        }
        if let Some(ms) = file.shardmq_retry_backoff_max_ms {
            if !(1..=60_000).contains(&ms) {
                return Err(invalid(
                    "shardmq_retry_backoff_max_ms",
                    format!("{ms} is not between 1 and 60000"),
                ));
            }
        }
        if file.kind == WorkloadKind::Failover {
            if file.replicas < 3 {
                return Err(invalid(
                    "replicas",
                    "a failover workload needs replicas = 3 (a leader to lose and a majority left)"
                        .into(),
                ));
            }
            if consumers > 0 {
                return Err(invalid(
                    "consumers_per_topic",
                    "a failover workload measures acknowledgements only: set it to 0".into(),
                ));
            }
            if rate == 0.0 || file.sequential || file.peer_max_rate_fraction.is_some() {
                return Err(invalid(
                    "producer_rate",
                    "a failover workload sends at a fixed rate: give a positive msg/s".into(),
                ));
            }
        }
        let warmup =
            seconds(file.warmup_seconds, true).map_err(|m| invalid("warmup_seconds", m))?;
        let duration =
            seconds(file.duration_seconds, false).map_err(|m| invalid("duration_seconds", m))?;

        let mut search = SearchConfig::default();
        let rs = file.rate_search;
        if let Some(v) = rs.start_rate {
            positive(v).map_err(|m| invalid("rate_search.start_rate", m))?;
            search.start_rate = v;
        }
        if let Some(v) = rs.trial_seconds {
            search.trial =
                seconds(v, false).map_err(|m| invalid("rate_search.trial_seconds", m))?;
        }
        if let Some(v) = rs.max_trials {
            in_range(v, 1, 100).map_err(|m| invalid("rate_search.max_trials", m))?;
            search.max_trials = v;
        }
        if let Some(v) = rs.tolerance {
            if !(v > 0.0 && v < 1.0) {
                return Err(invalid(
                    "rate_search.tolerance",
                    format!("{v} is not between 0 and 1 (exclusive)"),
                ));
            }
            search.tolerance = v;
        }
        if let Some(v) = rs.max_rate {
            positive(v).map_err(|m| invalid("rate_search.max_rate", m))?;
            search.max_rate = v;
        }
        if search.max_rate < search.start_rate {
            return Err(invalid(
                "rate_search.max_rate",
                format!(
                    "{} is below rate_search.start_rate {}",
                    search.max_rate, search.start_rate
                ),
            ));
        }

        Ok(Self {
            name: file.name,
            kind: file.kind,
            topics: file.topics,
            partitions_per_topic: file.partitions_per_topic,
            message_size,
            random_bytes_ratio: file.random_bytes_ratio,
            key_distributor: file.key_distributor,
            producers_per_topic: producers,
            consumers_per_topic: consumers,
            producer_rate: (rate > 0.0).then_some(rate),
            acks: file.acks,
            warmup,
            duration,
            rate_search: search,
            replicas: file.replicas,
            sequential: file.sequential,
            peer_max_rate_fraction: file.peer_max_rate_fraction,
            single_broker_baseline: file.single_broker_baseline,
            nats_partitions: file.nats_partitions,
            shardmq_retry_backoff_max: file.shardmq_retry_backoff_max_ms.map(Duration::from_millis),
        })
    }

    /// Producers over all topics.
    pub fn producers_total(&self) -> u32 {
        self.topics * self.producers_per_topic
    }

    /// Partitions over all topics.
    pub fn partitions_total(&self) -> u64 {
        u64::from(self.topics) * u64::from(self.partitions_per_topic)
    }

    /// Whether the max sustainable rate is searched (for every driver, or
    /// for the peer alone with `peer_max_rate_fraction`).
    pub fn searches_rate(&self) -> bool {
        self.kind == WorkloadKind::Stream && self.producer_rate.is_none() && !self.sequential
    }
}

fn in_range(v: u32, min: u32, max: u32) -> Result<(), String> {
    if v < min || v > max {
        return Err(format!("{v} is not between {min} and {max}"));
    }
    Ok(())
}

fn positive(v: f64) -> Result<(), String> {
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("{v} must be a positive number"));
    }
    Ok(())
}

fn seconds(v: f64, zero_ok: bool) -> Result<Duration, String> {
    let ok = v.is_finite() && v <= PERIOD_SECONDS_MAX && (v > 0.0 || (zero_ok && v == 0.0));
    if !ok {
        let low = if zero_ok { "0" } else { "more than 0" };
        return Err(format!(
            "{v} must be {low} and at most {PERIOD_SECONDS_MAX} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        name = "t"
        topics = 1
        partitions_per_topic = 16
        message_size = 1024
        random_bytes_ratio = 0.5
        key_distributor = "round-robin"
        producers_per_topic = 2
        consumers_per_topic = 1
        producer_rate = 1000
        acks = "leader"
        warmup_seconds = 1
        duration_seconds = 2.5
    "#;

    #[test]
    fn parses_every_field() {
        let w = Workload::parse(GOOD, "good").unwrap();
        assert_eq!(w.partitions_per_topic, 16);
        assert_eq!(w.key_distributor, KeyDistribution::RoundRobin);
        assert_eq!(w.acks, WorkloadAcks::Leader);
        assert_eq!(w.producer_rate, Some(1000.0));
        assert_eq!(w.duration, Duration::from_millis(2500));
        assert_eq!(w.producers_total(), 2);
    }

    #[test]
    fn zero_rate_means_search() {
        let text = GOOD.replace("producer_rate = 1000", "producer_rate = 0");
        let w = Workload::parse(&text, "x").unwrap();
        assert_eq!(w.producer_rate, None);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("message_size = 1024", "message_size = 4", "message_size"),
            ("topics = 1", "topics = 0", "topics"),
            (
                "random_bytes_ratio = 0.5",
                "random_bytes_ratio = 2",
                "random_bytes_ratio",
            ),
            (
                "producer_rate = 1000",
                "producer_rate = -1",
                "producer_rate",
            ),
            (
                "duration_seconds = 2.5",
                "duration_seconds = 0",
                "duration_seconds",
            ),
            ("name = \"t\"", "name = \"../x\"", "name"),
            (
                "key_distributor = \"round-robin\"",
                "key_distributor = \"zipf\"",
                "key_distributor",
            ),
            ("acks = \"leader\"", "ack = \"leader\"", "ack"),
        ];
        for (from, to, field) in cases {
            let text = GOOD.replace(from, to);
            let err = Workload::parse(&text, "w.toml").unwrap_err().to_string();
            assert!(err.contains(field), "{to}: {err}");
            assert!(err.contains("w.toml"), "{to}: {err}");
        }
    }

    #[test]
    fn missing_field_is_named() {
        let text = GOOD.replace("consumers_per_topic = 1", "");
        let err = Workload::parse(&text, "w").unwrap_err().to_string();
        assert!(err.contains("consumers_per_topic"), "{err}");
    }

    #[test]
    fn rate_search_table_is_read() {
        let text = format!("{GOOD}\n[rate_search]\nstart_rate = 10\nmax_trials = 3\n");
        let w = Workload::parse(&text, "w").unwrap();
        assert_eq!(w.rate_search.start_rate, 10.0);
        assert_eq!(w.rate_search.max_trials, 3);
        let bad = format!("{GOOD}\n[rate_search]\ntolerance = 1.5\n");
        let err = Workload::parse(&bad, "w").unwrap_err().to_string();
        assert!(err.contains("rate_search.tolerance"), "{err}");
    }

    #[test]
    fn replicated_and_sequential_fields_are_read() {
        let text = GOOD.replace("producer_rate = 1000", "producer_rate = 0")
            + "replicas = 3\nsequential = true\n";
        let w = Workload::parse(&text, "w").unwrap();
        assert_eq!(w.replicas, 3);
        assert!(w.sequential);
        assert!(!w.searches_rate());
        assert_eq!(w.kind, WorkloadKind::Stream);
        assert_eq!(w.nats_partitions, NatsPartitions::Subjects);

        let bad = [
            ("replicas = 2\n", "replicas"),
            ("sequential = true\n", "sequential"),
            ("single_broker_baseline = true\n", "single_broker_baseline"),
            ("peer_max_rate_fraction = 0.5\n", "peer_max_rate_fraction"),
        ];
        for (extra, field) in bad {
            // Each is refused with the fixed rate of GOOD and one replica.
            let err = Workload::parse(&format!("{GOOD}{extra}"), "w")
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
        let half = GOOD.replace("producer_rate = 1000", "producer_rate = 0")
            + "peer_max_rate_fraction = 0.5\nreplicas = 3\nsingle_broker_baseline = true\n";
        let w = Workload::parse(&half, "w").unwrap();
        assert_eq!(w.peer_max_rate_fraction, Some(0.5));
        assert!(w.single_broker_baseline);
        let over = half.replace(
            "peer_max_rate_fraction = 0.5",
            "peer_max_rate_fraction = 1.5",
        );
        let err = Workload::parse(&over, "w").unwrap_err().to_string();
        assert!(err.contains("peer_max_rate_fraction"), "{err}");
    }

    #[test]
    fn idle_workloads_send_nothing() {
        let idle = r#"
            name = "i"
            kind = "idle"
            topics = 10
            partitions_per_topic = 1000
            warmup_seconds = 1
            duration_seconds = 2
            replicas = 3
            nats_partitions = "streams"
        "#;
        let w = Workload::parse(idle, "i").unwrap();
        assert_eq!(w.kind, WorkloadKind::Idle);
        assert_eq!(w.partitions_total(), 10_000);
        assert_eq!(w.producers_per_topic, 0);
        assert_eq!(w.nats_partitions, NatsPartitions::Streams);
        let with_rate = format!("{idle}producer_rate = 5\n");
        let err = Workload::parse(&with_rate, "i").unwrap_err().to_string();
        assert!(err.contains("producer_rate"), "{err}");
        // A stream workload needs what an idle one leaves out.
        let stream = idle.replace("kind = \"idle\"", "");
        let err = Workload::parse(&stream, "s").unwrap_err().to_string();
        assert!(err.contains("message_size"), "{err}");
    }

    #[test]
    fn failover_workloads_need_three_replicas_a_rate_and_no_consumers() {
        let text = GOOD.replace("consumers_per_topic = 1", "consumers_per_topic = 0")
            + "kind = \"failover\"\nreplicas = 3\n";
        let w = Workload::parse(&text, "f").unwrap();
        assert_eq!(w.kind, WorkloadKind::Failover);
        let cases = [
            (text.replace("replicas = 3", "replicas = 1"), "replicas"),
            (
                text.replace("consumers_per_topic = 0", "consumers_per_topic = 1"),
                "consumers_per_topic",
            ),
            (
                text.replace("producer_rate = 1000", "producer_rate = 0"),
                "producer_rate",
            ),
        ];
        for (bad, field) in cases {
            let err = Workload::parse(&bad, "f").unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn shipped_workloads_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let (w, _) = Workload::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    path.file_stem().unwrap().to_str().unwrap(),
                    w.name,
                    "file name and name field differ"
                );
                count += 1;
            }
        }
        assert!(count >= 6, "expected the shipped workloads, found {count}");
    }
}
