//! The data of one benchmark report: what `report.json` holds and what
//! `report.md` and the plots are rendered from.
//!
//! Latencies are microseconds, rates are per second, sizes are bytes. A
//! report holds one or more driver runs of the same workload (shardmq and a
//! peer, alternating, possibly repeated) and, when there is a peer, the
//! comparison between them.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Version of this layout; bumped when a field changes meaning. Version 2
/// added each run's replication factor and server count, the idle and
/// failover results and the comparison's CPU, end-to-end and baseline
/// ratios; version 1 reports read as version 2 with one replica, one
/// server and none of those. Each run's `over_time` was added without a
/// bump (older reports read without it).
pub const REPORT_SCHEMA_VERSION: u32 = 2;

/// Quantiles reported in the tables, in order.
pub const TABLE_QUANTILES: [(&str, f64); 6] = [
    ("p50", 0.50),
    ("p75", 0.75),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
];

/// One benchmark report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    /// The workload's name (the file's `name` field).
    pub workload: String,
    /// The workload file's text, as run.
    pub workload_toml: String,
    /// The exact command line that produced the report.
    pub command: String,
    /// `git describe --always --dirty` of the tree that was built, or
    /// "unknown".
    pub commit: String,
    /// Start of the run, RFC 3339 in UTC.
    pub started_at: String,
    /// `/proc/loadavg` when the run started (1, 5 and 15 minute load
    /// averages, runnable/total tasks): how busy the machine was with other
    /// work. Empty when unknown.
    #[serde(default)]
    pub load_at_start: String,
    pub machine: Machine,
    /// Every measured run, in the order they ran.
    pub runs: Vec<DriverRun>,
    /// shardmq against the peer, when a peer ran.
    pub comparison: Option<Comparison>,
    /// Servers at rest, for an idle workload: one entry per driver.
    #[serde(default)]
    pub idle: Vec<IdleRun>,
    /// Leader failovers, for a failover workload: one entry per driver.
    #[serde(default)]
    pub failover: Vec<FailoverRun>,
}

/// The machine the report was measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: u32,
    pub memory_bytes: u64,
    pub kernel: String,
    /// Device and model of the disk holding the data directories.
    pub disk: String,
    /// Filesystem type of the data directories (e.g. ext4).
    pub filesystem: String,
}

/// One run of the workload against one driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverRun {
    /// `shardmq` or `nats-jetstream`.
    pub driver: String,
    /// Which of the driver's modes ran, e.g. "acks=all" or "R1 file".
    pub mode: String,
    /// When the driver acknowledges relative to fsync, in plain words.
    pub durability: String,
    /// Replicas of every partition (stream) in this run.
    #[serde(default = "one")]
    pub replication_factor: u32,
    /// Server processes the run went to (3 for a cluster).
    #[serde(default = "one")]
    pub servers: u32,
    /// 1 for the first run of this driver and mode, 2 for the second, ...
    pub repetition: u32,
    /// Server version, flags and settings that shape the figures.
    pub config: BTreeMap<String, String>,
    /// The producers' target rate in msg/s; `None` for an unthrottled run.
    pub target_rate: Option<f64>,
    /// The trials of the max-rate search, when the workload asked for one.
    pub rate_search: Vec<RateTrial>,
    pub throughput: Throughput,
    /// Intended send time to acknowledgement.
    pub publish_latency: LatencySummary,
    /// Actual send time minus intended send time.
    pub publish_delay: LatencySummary,
    /// Send timestamp carried in the record to consumption.
    pub end_to_end_latency: LatencySummary,
    /// Produced but not yet consumed messages, largest seen and at the end.
    pub backlog_max: u64,
    pub backlog_end: u64,
    /// One point per second of the measured period.
    pub timeline: Vec<TimelinePoint>,
    /// CPU time of each process involved (server, harness).
    pub processes: Vec<ProcessCpu>,
    /// Sends that failed, and the first error seen.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latency and what the processes did over the measured period, to
    /// explain the tails; `None` in reports from before it was recorded.
    #[serde(default)]
    pub over_time: Option<OverTime>,
}

impl DriverRun {
    /// The run's name in tables and legends: driver, mode and repetition,
    /// e.g. "shardmq acks=all #1".
    pub fn label(&self) -> String {
        if self.mode.is_empty() {
            format!("{} #{}", self.driver, self.repetition)
        } else {
            format!("{} {} #{}", self.driver, self.mode, self.repetition)
        }
    }
}

fn one() -> u32 {
    1
}

/// One trial of the max-rate search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateTrial {
    pub target_rate: f64,
    pub achieved_rate: f64,
    /// Whether the driver kept up (achieved within tolerance, no growing
    /// backlog, no errors).
    pub sustained: bool,
}

/// Amounts over the measured period (warm-up excluded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub seconds: f64,
    pub produced_messages: u64,
    pub produced_bytes: u64,
    pub consumed_messages: u64,
    pub consumed_bytes: u64,
    pub produce_msg_per_s: f64,
    pub produce_mb_per_s: f64,
    pub consume_msg_per_s: f64,
    pub consume_mb_per_s: f64,
}

/// A latency distribution in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub mean: f64,
    pub p50: u64,
    pub p75: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    /// (quantile, value) points for the percentile plot, quantile ascending
    /// from 0 towards 1 (0.5, 0.9, 0.99, ... and the max at 1.0).
    pub curve: Vec<(f64, u64)>,
}

impl LatencySummary {
    /// Summarises a histogram of microsecond values. An empty histogram
    /// gives zero samples, zero values and an empty curve.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self {
                samples: 0,
                mean: 0.0,
                p50: 0,
                p75: 0,
                p95: 0,
                p99: 0,
                p999: 0,
                p9999: 0,
                max: 0,
                curve: Vec::new(),
            };
        }
        let mut curve = Vec::new();
        // Ten points per decade of 1 / (1 - q), up to 1 - 1e-6.
        for step in 0..=60 {
            let q = 1.0 - 10f64.powf(-f64::from(step) / 10.0);
            curve.push((q, h.value_at_quantile(q)));
        }
        curve.push((1.0, h.max()));
        Self {
            samples: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p75: h.value_at_quantile(0.75),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            curve,
        }
    }

    /// The values in the order of [`TABLE_QUANTILES`], then the max.
    pub fn table_values(&self) -> [u64; 7] {
        [
            self.p50, self.p75, self.p95, self.p99, self.p999, self.p9999, self.max,
        ]
    }
}

/// Rates over one second of the measured period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the measured period began (end of the interval).
    pub t: f64,
    pub produce_msg_per_s: f64,
    pub consume_msg_per_s: f64,
    pub backlog: u64,
}

/// Latency per short bucket of the measured period beside what each
/// process did per second of it: what a latency spike coincided with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverTime {
    /// Width of the latency buckets, ms.
    pub bucket_ms: u64,
    /// Publish latency per bucket of intended send time; buckets without
    /// an acknowledged send are left out.
    pub publish: Vec<LatencyBucket>,
    /// End-to-end latency per bucket of the send time the message
    /// carries (empty without consumers).
    #[serde(default)]
    pub end_to_end: Vec<LatencyBucket>,
    /// The bound, µs, above which a server's sync round, write or produce
    /// counts as slow in [`HistogramSecond::slow`]: a bucket bound of the
    /// server's histograms.
    pub slow_us: u64,
    /// One entry per second of the measured period.
    pub seconds: Vec<ActivitySecond>,
}

/// Latency of the messages of one bucket of time, µs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyBucket {
    /// Seconds into the measured period at the bucket's start.
    pub t: f64,
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    /// For publish latency: the largest publish delay (actual minus
    /// intended send time) of the bucket's sends, µs; a large one means
    /// the harness, not the server, held the sends back. 0 otherwise.
    #[serde(default)]
    pub send_delay_max: u64,
}

/// What every process did in one second of the measured period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivitySecond {
    /// Seconds into the measured period at the end of the second.
    pub t: f64,
    /// Servers in the order of the run's processes, then the harness
    /// ("shardmq-bench"); a process whose figures could not be read is
    /// left out.
    pub processes: Vec<ProcessActivity>,
}

/// One process in one second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessActivity {
    /// As in [`ProcessCpu::name`].
    pub name: String,
    /// User plus system CPU seconds (`/proc/PID/stat`, in clock ticks of
    /// 10 ms).
    pub cpu_seconds: f64,
    /// Time its threads were runnable but waiting for a CPU, summed over
    /// them (`/proc/PID/task/*/schedstat`), ms; `None` without schedstat.
    #[serde(default)]
    pub runqueue_wait_ms: Option<f64>,
    /// From the server's metrics endpoint, when it has one and answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<ServerSecond>,
}

/// A server's own histograms and counters over one second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerSecond {
    /// Sync rounds of the shard logs (an fdatasync, or a write through
    /// O_DSYNC). The broker refreshes these once a second, so a round can
    /// show in the second after the one it happened in.
    pub fsync: HistogramSecond,
    /// Segment writes of the shard logs (refreshed like `fsync`).
    pub write: HistogramSecond,
    /// Produce latency per partition item, as the broker measures it.
    pub produce: HistogramSecond,
    /// Segment files the collector deleted (retention, deleted topics).
    pub segments_deleted: u64,
    /// Segments the shard logs sealed to start new ones (0 in reports
    /// written before it was recorded).
    #[serde(default)]
    pub segments_rolled: u64,
}

/// The observations one histogram gained in one second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramSecond {
    pub count: u64,
    /// Those above [`OverTime::slow_us`].
    pub slow: u64,
    /// Upper bound, µs, of the highest bucket one of them fell in: the
    /// slowest took at most this long. 0: none; `u64::MAX`: above the
    /// largest bound.
    pub max_le_us: u64,
}

/// CPU time one process spent during the measured period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessCpu {
    /// e.g. "shardmq-broker", "nats-server", "shardmq-bench"; with several
    /// servers "shardmq-broker 2" for one of them and "shardmq-broker
    /// (sum of 3)" for all of them, listed first.
    pub name: String,
    /// User plus system time.
    pub cpu_seconds: f64,
    /// CPU seconds per GB (1e9 bytes) of produced value bytes.
    pub cpu_seconds_per_gb: f64,
}

/// shardmq's figures over the peer's, from the best run of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub peer: String,
    /// shardmq produce msg/s over the peer's (> 1: shardmq faster).
    pub throughput_ratio: f64,
    /// shardmq publish latency over the peer's at p50, p99 and p99.9
    /// (< 1: shardmq lower).
    pub publish_p50_ratio: f64,
    pub publish_p99_ratio: f64,
    pub publish_p999_ratio: f64,
    /// shardmq end-to-end p50 over the peer's (< 1: shardmq lower; 0
    /// without consumers).
    #[serde(default)]
    pub end_to_end_p50_ratio: f64,
    /// shardmq server CPU seconds per GB over the peer's, each summed over
    /// its server processes (< 1: shardmq cheaper; 0 when not measured).
    #[serde(default)]
    pub server_cpu_per_gb_ratio: f64,
    /// With a single-broker baseline: the replicated run's produce msg/s
    /// over a third of the single broker's (a replicated write is stored
    /// three times on the one machine).
    #[serde(default)]
    pub baseline_third_ratio: Option<f64>,
    /// One line for the report index, e.g. "shardmq 1.62x NATS JetStream
    /// throughput, p99 0.41x".
    pub headline: String,
}

/// One server process at rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleProcess {
    /// e.g. "shardmq-broker 1", "nats-server 2".
    pub name: String,
    /// User plus system CPU over the measured period, as a percentage of
    /// one core.
    pub cpu_percent_of_core: f64,
    /// CPU seconds over the measured period.
    pub cpu_seconds: f64,
    /// Resident memory at the end of the measured period, bytes.
    pub rss_bytes_end: u64,
    /// Largest resident memory sampled during it, bytes.
    pub rss_bytes_max: u64,
}

/// One driver's servers holding a workload's topics with nothing sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleRun {
    pub driver: String,
    pub mode: String,
    pub replication_factor: u32,
    /// Partitions over all topics (streams or subjects for NATS, as
    /// `config` says).
    pub partitions: u64,
    /// Raft groups the partitions make (per cluster, not per replica).
    pub raft_groups: u64,
    /// Seconds to create the topics and see every partition led.
    pub setup_seconds: f64,
    /// Seconds the servers were left alone before the measurement.
    pub settle_seconds: f64,
    /// The measured period, seconds.
    pub seconds: f64,
    pub processes: Vec<IdleProcess>,
    /// CPU of the harness itself over the measured period, percent of a
    /// core (it only waits, so this shows the machine was otherwise idle).
    pub harness_cpu_percent_of_core: f64,
    pub config: BTreeMap<String, String>,
}

/// One driver's leader failover: steady producing across a SIGKILL of the
/// server leading the most partitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverRun {
    pub driver: String,
    pub mode: String,
    pub durability: String,
    pub replication_factor: u32,
    pub partitions: u32,
    /// msg/s over all partitions, before and after the kill.
    pub rate: f64,
    /// Time between two sends to one partition, ms: the resolution of
    /// the per-partition figures.
    pub per_partition_interval_ms: f64,
    /// The server killed ("broker 2", "nats-server 3") and how many
    /// partitions it led.
    pub killed: String,
    pub killed_led_partitions: u32,
    /// Leaders per server just before the kill.
    pub leaders_before: BTreeMap<String, u32>,
    /// Per partition the killed server led: ms from the kill to the first
    /// acknowledgement of a record sent after it, ascending; partitions
    /// that saw none are in `unrecovered_partitions`.
    pub first_ack_ms: Vec<f64>,
    pub first_ack_p50_ms: f64,
    pub first_ack_max_ms: f64,
    pub unrecovered_partitions: u32,
    /// Per partition the killed server led: ms from the kill to the first
    /// poll that found a new leader among the survivors (when the driver
    /// can poll leaders cheaply), ascending.
    pub elected_ms: Vec<f64>,
    pub elected_p50_ms: f64,
    pub elected_max_ms: f64,
    /// Interval of that poll, ms (0: not polled).
    pub elected_poll_ms: f64,
    /// The same first-ack figure for partitions the killed server did not
    /// lead (the cost of the kill to the rest).
    pub others_first_ack_p50_ms: f64,
    pub others_first_ack_max_ms: f64,
    /// Records that failed (most were in flight to the killed server) and
    /// the first error.
    pub errors: u64,
    pub first_error: Option<String>,
    /// The Raft election timeout the figures are compared with, in words
    /// (from the server's configuration).
    pub election_timeout: String,
    /// Its lower bound in ms, the unit of the goal (0: not known).
    pub election_timeout_ms: f64,
    /// Acknowledgements per 100 ms, from the start of sending; the kill is
    /// at `kill_at_s`.
    pub timeline: Vec<TimelinePoint>,
    pub kill_at_s: f64,
    pub config: BTreeMap<String, String>,
}
