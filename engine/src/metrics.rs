//! Broker metrics: per-shard counters and histograms, rendered in the
//! Prometheus text format on `/metrics` by a small HTTP server on a plain
//! thread, beside `/health`.
//!
//! Each shard owns one [`ShardMetrics`] (in an `Arc`) and is its only
//! writer; every field is an atomic written with relaxed ordering. The
//! scraper only reads them, so no lock is shared between shards and a
//! scrape never stalls a shard. A scrape may see one counter updated and a
//! related one not yet: each value is exact on its own.
//!
//! Hot path: [`ShardMetrics::request`] and [`LatencyHistogram::observe`]
//! run once per request; they only add to atomics.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use shardmq_storage::PartitionId;

use shardmq_schema::protocol::Api;

/// Apis counted per shard, by their `Api` value.
pub const APIS: [Api; 11] = [
    Api::ApiVersions,
    Api::Metadata,
    Api::CreateTopics,
    Api::DeleteTopics,
    Api::ListTopics,
    Api::Produce,
    Api::Fetch,
    Api::ListOffsets,
    Api::DescribeCluster,
    Api::DescribeReplicas,
    Api::TransferLeader,
];

/// Upper bounds of the latency buckets, in microseconds (`+Inf` is
/// implied).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// A latency histogram with fixed buckets. Shard view; written by its
/// shard only.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations at or below each bound (cumulative, as Prometheus
    /// wants them).
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation of `us` microseconds.
    pub fn observe(&self, us: u64) {
        for (bound, bucket) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            if us <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Replaces the contents with the cumulative counts given by
    /// `count_at_or_below(bound_us)`, the total `count` and the sum (for
    /// a histogram kept elsewhere, like the shard log's fsync latency).
    pub fn set_from(&self, count_at_or_below: impl Fn(u64) -> u64, count: u64, sum_us: u64) {
        for (bound, bucket) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            bucket.store(count_at_or_below(*bound), Ordering::Relaxed);
        }
        self.count.store(count, Ordering::Relaxed);
        self.sum_us.store(sum_us, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        // Seconds, as Prometheus prefers base units.
        for (bound, bucket) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{le}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Counters of one shard. Shard view; written only by the shard that owns
/// it (relaxed atomics), read by the scraper.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Requests handled, per api (index: the api's value).
    pub requests: [AtomicU64; APIS.len()],
    /// Request frame bytes received, per api.
    pub request_bytes: [AtomicU64; APIS.len()],
    /// Response frame bytes sent, per api.
    pub response_bytes: [AtomicU64; APIS.len()],
    /// Partition operations this shard sent to another shard over the
    /// mesh.
    pub forwarded: AtomicU64,
    /// Produce latency per partition item (receive to answer).
    pub produce_latency: LatencyHistogram,
    /// Fetch latency per request, long-poll waits included.
    pub fetch_latency: LatencyHistogram,
    /// Sync-round latency of the shard log (an fdatasync, or a write
    /// through `O_DSYNC`), copied from its stats.
    pub fsync_latency: LatencyHistogram,
    /// Segment write latency of the shard log, copied from its stats.
    pub write_latency: LatencyHistogram,
    /// Partitions (replicas) on this shard.
    pub partitions: AtomicU64,
    /// Partitions this shard leads.
    pub leaders: AtomicU64,
    /// Bytes appended to the shard log, headers included.
    pub storage_append_bytes: AtomicU64,
    /// Group-commit rounds of the shard log.
    pub storage_sync_rounds: AtomicU64,
    /// Segment files of the shard log.
    pub storage_segments: AtomicU64,
    /// Segment files the collector deleted (retention, deleted topics).
    pub storage_segments_deleted: AtomicU64,
    /// Segments the shard log sealed to start a new one.
    pub storage_segments_rolled: AtomicU64,
    /// Bytes of disk the collector gave back.
    pub storage_bytes_freed: AtomicU64,
    /// Raft commit latency: proposal to commit (durable on a majority),
    /// written by the shard loop.
    pub commit_latency: Arc<LatencyHistogram>,
    /// Produce and fetch counters of each partition this shard owns. The
    /// lock is this shard's alone: taken by its partition operations and
    /// by a scrape, never by another shard.
    pub partition_ops: Mutex<BTreeMap<PartitionId, PartitionCounters>>,
    /// Topic names by topic id, refreshed by the shard for the scraper.
    pub topic_names: Mutex<HashMap<u32, String>>,
    /// Elections this shard's replicas started.
    pub raft_elections: AtomicU64,
    /// Leader changes this shard's replicas saw.
    pub raft_leader_changes: AtomicU64,
    /// Raft messages handed to the inter-broker transport.
    pub raft_messages_sent: AtomicU64,
    /// Raft messages dropped: received with a full inbox or for a group not
    /// here, or with no way to their destination.
    pub raft_messages_dropped: AtomicU64,
    /// Partition replicas of this shard asleep (quiesced) now.
    pub raft_quiesced: AtomicU64,
    /// Inter-broker frames written by this shard's links.
    pub peer_frames_sent: AtomicU64,
    /// Inter-broker bytes written by this shard's links.
    pub peer_bytes_sent: AtomicU64,
    /// Inter-broker frames dropped by this shard's links (queue full, link
    /// down).
    pub peer_frames_dropped: AtomicU64,
    /// Inter-broker frames this shard's listener received.
    pub peer_frames_received: AtomicU64,
    /// Inter-broker bytes this shard's listener received.
    pub peer_bytes_received: AtomicU64,
    /// Replication state of each partition replica on this shard, copied
    /// by the shard periodically (its lock is this shard's alone).
    pub replication: Mutex<BTreeMap<PartitionId, ReplicaGauges>>,
}

/// Produce and fetch counts of one partition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PartitionCounters {
    /// Produce items for the partition.
    pub produce_requests: u64,
    /// Record batch bytes produced to it.
    pub produce_bytes: u64,
    /// Fetch items for the partition.
    pub fetch_requests: u64,
    /// Record batch bytes fetched from it.
    pub fetch_bytes: u64,
}

/// One replica's replication state, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaGauges {
    /// 1 when this replica leads.
    pub leader: bool,
    /// Its term.
    pub term: u64,
    /// On a leader: the largest lag of a follower, in entries.
    pub follower_lag_entries: u64,
    /// On a leader: the largest lag of a follower, in bytes of log.
    pub follower_lag_bytes: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ShardMetrics {
    /// Counts one request of `api` with its frame sizes.
    pub fn request(&self, api: Api, request_bytes: usize, response_bytes: usize) {
        let i = usize::from(api.0);
        if let (Some(r), Some(bin), Some(bout)) = (
            self.requests.get(i),
            self.request_bytes.get(i),
            self.response_bytes.get(i),
        ) {
            r.fetch_add(1, Ordering::Relaxed);
            bin.fetch_add(request_bytes as u64, Ordering::Relaxed);
            bout.fetch_add(response_bytes as u64, Ordering::Relaxed);
        }
    }

    /// Counts one produce (`produce`) or fetch item of `partition` moving
    /// `bytes` of record batches.
    pub fn partition_op(&self, partition: PartitionId, produce: bool, bytes: usize) {
        let mut ops = lock(&self.partition_ops);
        let c = ops.entry(partition).or_default();
        if produce {
            c.produce_requests += 1;
            c.produce_bytes += bytes as u64;
        } else {
            c.fetch_requests += 1;
            c.fetch_bytes += bytes as u64;
        }
    }

    /// Forgets the counters of partitions not in `keep` (deleted ones).
    pub fn retain_partitions(&self, keep: &[PartitionId]) {
        lock(&self.partition_ops).retain(|p, _| keep.contains(p));
    }

    /// Replaces the topic names the scraper labels partitions with.
    pub fn set_topic_names(&self, names: HashMap<u32, String>) {
        *lock(&self.topic_names) = names;
    }
}

/// Every shard's metrics and the broker's state. Broker view; shared by
/// the shards (each writes its own entry) and the scraper.
#[derive(Debug)]
pub struct BrokerMetrics {
    /// The broker's node id, a label of every family.
    pub node_id: i32,
    /// One per shard, by shard index.
    pub shards: Vec<Arc<ShardMetrics>>,
    /// Shards that have finished starting (listening).
    pub shards_ready: AtomicU64,
    /// Set when the broker begins to stop.
    pub stopping: AtomicBool,
}

impl BrokerMetrics {
    /// Metrics of a broker with `shards` shards.
    pub fn new(node_id: i32, shards: usize) -> Self {
        Self {
            node_id,
            shards: (0..shards).map(|_| Arc::default()).collect(),
            shards_ready: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    /// True when every shard serves and the broker is not stopping.
    pub fn healthy(&self) -> bool {
        self.shards_ready.load(Ordering::Relaxed) == self.shards.len() as u64
            && !self.stopping.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        let node = self.node_id;
        let per_shard = |out: &mut String,
                         name: &str,
                         kind: &str,
                         help: &str,
                         value: &dyn Fn(&ShardMetrics) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (shard, m) in self.shards.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{node}\",shard=\"{shard}\"}} {}",
                    value(m)
                );
            }
        };
        let per_api = |out: &mut String,
                       name: &str,
                       help: &str,
                       value: &dyn Fn(&ShardMetrics, usize) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (shard, m) in self.shards.iter().enumerate() {
                for (i, api) in APIS.iter().enumerate() {
                    let api = api.variant_name().unwrap_or("Unknown");
                    let _ = writeln!(
                        out,
                        "{name}{{node=\"{node}\",shard=\"{shard}\",api=\"{api}\"}} {}",
                        value(m, i)
                    );
                }
            }
        };
        per_api(
            &mut out,
            "shardmq_requests_total",
            "Requests handled, per api and shard.",
            &|m, i| m.requests[i].load(Ordering::Relaxed),
        );
        per_api(
            &mut out,
            "shardmq_request_bytes_total",
            "Request frame bytes received, per api and shard.",
            &|m, i| m.request_bytes[i].load(Ordering::Relaxed),
        );
        per_api(
            &mut out,
            "shardmq_response_bytes_total",
            "Response frame bytes sent, per api and shard.",
            &|m, i| m.response_bytes[i].load(Ordering::Relaxed),
        );
        per_shard(
            &mut out,
            "shardmq_forwarded_total",
            "counter",
            "Partition operations forwarded to the owning shard.",
            &|m| m.forwarded.load(Ordering::Relaxed),
        );
        for (name, help, pick) in [
            (
                "shardmq_produce_latency_seconds",
                "Produce latency per partition item.",
                (|m: &ShardMetrics| &m.produce_latency) as fn(&ShardMetrics) -> &LatencyHistogram,
            ),
            (
                "shardmq_fetch_latency_seconds",
                "Fetch latency per request, long-poll waits included.",
                |m| &m.fetch_latency,
            ),
            (
                "shardmq_storage_fsync_latency_seconds",
                "Sync-round latency of the shard log: an fdatasync, or a write through O_DSYNC.",
                |m| &m.fsync_latency,
            ),
            (
                "shardmq_storage_write_latency_seconds",
                "Segment write latency of the shard log.",
                |m| &m.write_latency,
            ),
            (
                "shardmq_raft_commit_latency_seconds",
                "Raft commit latency: proposal to commit (durable on a majority).",
                |m| &m.commit_latency,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (shard, m) in self.shards.iter().enumerate() {
                pick(m).render(
                    &mut out,
                    name,
                    &format!("node=\"{node}\",shard=\"{shard}\""),
                );
            }
        }
        per_shard(
            &mut out,
            "shardmq_partitions",
            "gauge",
            "Partition replicas on the shard.",
            &|m| m.partitions.load(Ordering::Relaxed),
        );
        per_shard(
            &mut out,
            "shardmq_partition_leaders",
            "gauge",
            "Partitions the shard leads.",
            &|m| m.leaders.load(Ordering::Relaxed),
        );
        per_shard(
            &mut out,
            "shardmq_partition_followers",
            "gauge",
            "Partition replicas on the shard that follow.",
            &|m| {
                m.partitions
                    .load(Ordering::Relaxed)
                    .saturating_sub(m.leaders.load(Ordering::Relaxed))
            },
        );
        per_shard(
            &mut out,
            "shardmq_raft_quiesced_groups",
            "gauge",
            "Partition replicas asleep: neither ticked nor heartbeating until there is work.",
            &|m| m.raft_quiesced.load(Ordering::Relaxed),
        );
        for (name, help, pick) in [
            (
                "shardmq_raft_elections_total",
                "Elections this shard's replicas started.",
                (|m: &ShardMetrics| &m.raft_elections) as fn(&ShardMetrics) -> &AtomicU64,
            ),
            (
                "shardmq_raft_leader_changes_total",
                "Leader changes this shard's replicas saw.",
                |m| &m.raft_leader_changes,
            ),
            (
                "shardmq_raft_messages_sent_total",
                "Raft messages handed to the inter-broker transport.",
                |m| &m.raft_messages_sent,
            ),
            (
                "shardmq_raft_messages_dropped_total",
                "Raft messages dropped (inbox full, unknown group, no route).",
                |m| &m.raft_messages_dropped,
            ),
            (
                "shardmq_interbroker_frames_sent_total",
                "Inter-broker frames written by this shard.",
                |m| &m.peer_frames_sent,
            ),
            (
                "shardmq_interbroker_bytes_sent_total",
                "Inter-broker bytes written by this shard.",
                |m| &m.peer_bytes_sent,
            ),
            (
                "shardmq_interbroker_frames_dropped_total",
                "Inter-broker frames dropped by this shard's links (queue full, link down).",
                |m| &m.peer_frames_dropped,
            ),
            (
                "shardmq_interbroker_frames_received_total",
                "Inter-broker frames this shard received.",
                |m| &m.peer_frames_received,
            ),
            (
                "shardmq_interbroker_bytes_received_total",
                "Inter-broker bytes this shard received.",
                |m| &m.peer_bytes_received,
            ),
        ] {
            per_shard(&mut out, name, "counter", help, &|m| {
                pick(m).load(Ordering::Relaxed)
            });
        }
        per_shard(
            &mut out,
            "shardmq_storage_append_bytes_total",
            "counter",
            "Bytes appended to the shard log, headers included.",
            &|m| m.storage_append_bytes.load(Ordering::Relaxed),
        );
        per_shard(
            &mut out,
            "shardmq_storage_sync_rounds_total",
            "counter",
            "Group-commit rounds of the shard log.",
            &|m| m.storage_sync_rounds.load(Ordering::Relaxed),
        );
        per_shard(
            &mut out,
            "shardmq_storage_segments",
            "gauge",
            "Segment files of the shard log.",
            &|m| m.storage_segments.load(Ordering::Relaxed),
        );
        per_shard(
            &mut out,
            "shardmq_storage_segments_rolled_total",
            "counter",
            "Segments the shard log sealed to start a new one.",
            &|m| m.storage_segments_rolled.load(Ordering::Relaxed),
        );
        per_shard(
            &mut out,
            "shardmq_storage_segments_deleted_total",
            "counter",
            "Segment files the collector deleted (retention, deleted topics).",
            &|m| m.storage_segments_deleted.load(Ordering::Relaxed),
        );
        per_shard(
            &mut out,
            "shardmq_storage_freed_bytes_total",
            "counter",
            "Bytes of disk the collector gave back.",
            &|m| m.storage_bytes_freed.load(Ordering::Relaxed),
        );
        self.render_partitions(&mut out);
        let _ = writeln!(out, "# HELP shardmq_up 1 while every shard serves.");
        let _ = writeln!(out, "# TYPE shardmq_up gauge");
        let _ = writeln!(
            out,
            "shardmq_up{{node=\"{node}\"}} {}",
            u8::from(self.healthy())
        );
        if let Some(process) = ProcessStats::read() {
            let _ = writeln!(
                out,
                "# HELP process_cpu_seconds_total User and system CPU time."
            );
            let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
            let _ = writeln!(out, "process_cpu_seconds_total {}", process.cpu_seconds);
            let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory.");
            let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
            let _ = writeln!(
                out,
                "process_resident_memory_bytes {}",
                process.resident_bytes
            );
            let _ = writeln!(out, "# HELP process_virtual_memory_bytes Virtual memory.");
            let _ = writeln!(out, "# TYPE process_virtual_memory_bytes gauge");
            let _ = writeln!(
                out,
                "process_virtual_memory_bytes {}",
                process.virtual_bytes
            );
        }
        out
    }
}

impl BrokerMetrics {
    /// Per-partition request and byte counters, labelled with the topic
    /// name and partition index.
    fn render_partitions(&self, out: &mut String) {
        let node = self.node_id;
        let snapshots: Vec<_> = self
            .shards
            .iter()
            .map(|m| {
                let names = lock(&m.topic_names).clone();
                let ops = lock(&m.partition_ops).clone();
                (names, ops)
            })
            .collect();
        for (name, help, pick) in [
            (
                "shardmq_partition_requests_total",
                "Produce and fetch items per partition, counted by the owning shard.",
                (|c: &PartitionCounters| (c.produce_requests, c.fetch_requests))
                    as fn(&PartitionCounters) -> (u64, u64),
            ),
            (
                "shardmq_partition_bytes_total",
                "Record batch bytes produced to and fetched from each partition.",
                |c| (c.produce_bytes, c.fetch_bytes),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (shard, (names, ops)) in snapshots.iter().enumerate() {
                for (id, c) in ops {
                    let topic_id = (id >> 32) as u32;
                    let index = *id as u32;
                    let topic = names
                        .get(&topic_id)
                        .map_or_else(|| format!("#{topic_id}"), |n| escape_label(n));
                    let (produced, fetched) = pick(c);
                    for (api, value) in [("Produce", produced), ("Fetch", fetched)] {
                        let _ = writeln!(
                            out,
                            "{name}{{node=\"{node}\",shard=\"{shard}\",topic=\"{topic}\",partition=\"{index}\",api=\"{api}\"}} {value}"
                        );
                    }
                }
            }
        }
        let replication: Vec<_> = self
            .shards
            .iter()
            .map(|m| lock(&m.replication).clone())
            .collect();
        for (name, help, pick) in [
            (
                "shardmq_partition_leader",
                "1 when this broker's replica of the partition leads.",
                (|g: &ReplicaGauges| u64::from(g.leader)) as fn(&ReplicaGauges) -> u64,
            ),
            (
                "shardmq_partition_term",
                "The Raft term of this broker's replica of the partition.",
                |g| g.term,
            ),
            (
                "shardmq_partition_follower_lag_entries",
                "On the leader: the largest lag of a follower, in log entries.",
                |g| g.follower_lag_entries,
            ),
            (
                "shardmq_partition_follower_lag_bytes",
                "On the leader: the largest lag of a follower, in bytes of log.",
                |g| g.follower_lag_bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (shard, (gauges, (names, _))) in replication.iter().zip(&snapshots).enumerate() {
                for (id, g) in gauges {
                    let topic_id = (id >> 32) as u32;
                    let index = *id as u32;
                    let topic = names
                        .get(&topic_id)
                        .map_or_else(|| format!("#{topic_id}"), |n| escape_label(n));
                    let _ = writeln!(
                        out,
                        "{name}{{node=\"{node}\",shard=\"{shard}\",topic=\"{topic}\",partition=\"{index}\"}} {}",
                        pick(g)
                    );
                }
            }
        }
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format
/// asks.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// CPU and memory of this process, from `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
}

impl ProcessStats {
    /// Reads `/proc/self/stat` and `/proc/self/statm`; `None` where they
    /// do not exist or cannot be parsed.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        Self::parse(&stat, &statm, clock_ticks_per_second(), page_bytes())
    }

    /// Parses the two files' contents.
    pub fn parse(stat: &str, statm: &str, ticks_per_second: u64, page_bytes: u64) -> Option<Self> {
        // The command name (field 2) may hold spaces and parentheses: the
        // fields counted from 3 start after its last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15, here 11 and 12.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let mut statm = statm.split_whitespace();
        let virtual_pages: u64 = statm.next()?.parse().ok()?;
        let resident_pages: u64 = statm.next()?.parse().ok()?;
        Some(Self {
            cpu_seconds: (utime + stime) as f64 / ticks_per_second.max(1) as f64,
            resident_bytes: resident_pages * page_bytes,
            virtual_bytes: virtual_pages * page_bytes,
        })
    }
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(bytes).ok().filter(|b| *b > 0).unwrap_or(4096)
}

/// The HTTP endpoint: `/metrics` and `/health`, on a thread of its own.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    local_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// The endpoint could not bind its address.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {message}")]
pub struct MetricsBindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    pub message: String,
}

impl MetricsServer {
    /// Binds `addr` and serves `metrics` on a new thread until
    /// [`stop`](Self::stop) or drop.
    pub fn start(addr: SocketAddr, metrics: Arc<BrokerMetrics>) -> Result<Self, MetricsBindError> {
        let bind_error = |message: String| MetricsBindError { addr, message };
        let server =
            Arc::new(tiny_http::Server::http(addr).map_err(|e| bind_error(e.to_string()))?);
        let local_addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| bind_error("not an IP listener".into()))?;
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&serving, &metrics))
            .map_err(|e| bind_error(e.to_string()))?;
        Ok(Self {
            server,
            local_addr,
            thread: Some(thread),
        })
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and joins the thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn serve(server: &tiny_http::Server, metrics: &BrokerMetrics) {
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or_default();
        let response = match (request.method(), path) {
            (tiny_http::Method::Get, "/metrics") => {
                let body = metrics.render();
                tiny_http::Response::from_string(body).with_header(
                    tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"text/plain; version=0.0.4"[..],
                    )
                    .expect("static header is valid"),
                )
            }
            (tiny_http::Method::Get, "/health") => {
                if metrics.healthy() {
                    tiny_http::Response::from_string("ok\n")
                } else {
                    tiny_http::Response::from_string("starting or stopping\n").with_status_code(503)
                }
            }
            _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
        };
        if let Err(error) = request.respond(response) {
            tracing::debug!(%error, "metrics response failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = LatencyHistogram::default();
        h.observe(60);
        h.observe(2_000);
        h.observe(u64::MAX / 4);
        let mut out = String::new();
        h.render(&mut out, "x", "shard=\"0\"");
        assert!(
            out.contains("x_bucket{shard=\"0\",le=\"0.00005\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{shard=\"0\",le=\"0.0001\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{shard=\"0\",le=\"0.0025\"} 2"),
            "{out}"
        );
        assert!(out.contains("x_bucket{shard=\"0\",le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count{shard=\"0\"} 3"), "{out}");
    }

    #[test]
    fn proc_stat_parses_with_odd_command_names() {
        let stat = "1234 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 4096 10";
        let stats = ProcessStats::parse(stat, "300 20 5 1 0 10 0\n", 100, 4096).unwrap();
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.resident_bytes, 20 * 4096);
        assert_eq!(stats.virtual_bytes, 300 * 4096);
        assert!(ProcessStats::read().is_some());
    }
}
