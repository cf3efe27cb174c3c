//! The broker's configuration: a TOML file (`configs/single.toml` documents
//! every field with its default), then command-line overrides, then
//! [`Config::validate`].
//!
//! Every field has a default, so an empty file is a valid configuration.
//! Unknown keys are refused: a misspelt key would otherwise silently keep
//! its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shardmq_schema::batch::BATCH_BYTES_MAX;
use shardmq_schema::protocol::MAX_FRAME_BYTES;
use shardmq_storage::{LogConfig, RetentionPolicy, SyncMode};

/// The whole broker configuration. Broker view: one per process, read by
/// the main thread and copied into every shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Identity, addresses, shards and data directory.
    pub broker: BrokerConfig,
    /// The cluster this broker belongs to: its peers and the controller's
    /// voters.
    pub cluster: ClusterConfig,
    /// The shard log of each shard.
    pub storage: StorageConfig,
    /// The Raft groups of the partitions (used by the Raft layer).
    pub raft: RaftConfig,
    /// Bounds on what clients may make the broker hold.
    pub limits: LimitsConfig,
    /// The metrics endpoint.
    pub monitoring: MonitoringConfig,
}

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Node id, unique in the cluster. Default 1.
    pub node_id: i32,
    /// Directory of the broker's data: `topics.json` and one `shard-<n>`
    /// directory per shard. Default `./data`.
    pub data_dir: PathBuf,
    /// Client address every shard listens on (SO_REUSEPORT), HOST:PORT.
    /// Default `0.0.0.0:9092`.
    pub listen: SocketAddr,
    /// Shard `n` also listens on `shard_port_base + n` on the host of
    /// `listen`, so a shard-aware client reaches the owning shard
    /// directly; 0 gives each shard an ephemeral port (published in
    /// Metadata). Default 0.
    pub shard_port_base: u16,
    /// Number of shards (one glommio executor per core); 0 for one per
    /// available core. Default 0.
    pub shards: usize,
    /// Pin shard n's thread to the n-th CPU the broker may run on (thread
    /// per core). Brokers sharing a machine's cores (a loopback cluster)
    /// all pin their shard 0 to the same CPU; they run better unpinned,
    /// moved by the kernel to whichever core is idle. Default true.
    pub pin_shards: bool,
    /// Host name clients are told to connect to (Metadata); empty for the
    /// host of `listen`, or `127.0.0.1` when that is unspecified.
    /// Default empty.
    pub advertised_host: String,
    /// Memory each shard registers for io_uring buffers, in bytes. The
    /// whole process is limited by RLIMIT_MEMLOCK. Default 1 MiB.
    pub io_memory_bytes: usize,
    /// Partitions of a topic created without a partition count. Default 1.
    pub default_partitions: u32,
    /// Replicas of each partition of a topic created without a replication
    /// factor. Default 1.
    pub default_replication_factor: u16,
    /// Most partitions one topic may have. Default 1024.
    pub partitions_max: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([0, 0, 0, 0], 9092)),
            shard_port_base: 0,
            shards: 0,
            pin_shards: true,
            advertised_host: String::new(),
            io_memory_bytes: 1 << 20,
            default_partitions: 1,
            default_replication_factor: 1,
            partitions_max: 1024,
        }
    }
}

/// `[storage] sync_mode` (`shardmq_storage::SyncMode`, spelled in TOML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncModeConfig {
    /// A write, then an fdatasync, the next round's write during it.
    Pipelined,
    /// One `O_DSYNC` write per round.
    WriteThrough,
    /// Written through while the log is idle, pipelined while it is busy.
    Adaptive,
}

/// `[storage]`: the shard log of each shard (`shardmq_storage::LogConfig`)
/// and the default retention of partitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Size of a segment file, a multiple of 4096, at least 64 KiB.
    /// Default 256 MiB.
    pub segment_bytes: u64,
    /// Largest staging buffer one sync round writes, a multiple of 4096.
    /// Default 16 MiB.
    pub write_buffer_bytes: usize,
    /// Largest payload of one log entry (a record batch), at most half of
    /// `segment_bytes`. Default 16 MiB.
    pub entry_bytes_max: usize,
    /// Preallocate segment files. Default true.
    pub preallocate: bool,
    /// The collector rewrites and deletes a sealed segment whose live
    /// fraction is at most this. Default 0.5.
    pub gc_live_ratio_max: f64,
    /// Segment files the collector keeps for reuse instead of deleting
    /// them (a new segment starts in one without zeroing or extent
    /// conversion); files beyond these are deleted. Default 4.
    pub recycle_segments_max: usize,
    /// Default retention by size per partition, in bytes; 0 for none.
    /// Default 0.
    pub retention_bytes: u64,
    /// Default retention by age per partition, in milliseconds; 0 for
    /// none. Default 604800000 (7 days).
    pub retention_ms: u64,
    /// How group-commit rounds make appends durable: "pipelined" (a
    /// write, then an fdatasync, the next round's write during it),
    /// "write-through" (one `O_DSYNC` write per round, rounds not
    /// overlapping) or "adaptive" (written through while the log is idle,
    /// pipelined while it is busy). On the reference disk adaptive and
    /// write-through cut the single-record acks=all p50 by about a quarter;
    /// write-through also lengthened publish tails under load
    /// (`perf-reports/2026-12-01-single-broker/`). Default "adaptive".
    pub sync_mode: SyncModeConfig,
    /// How often each shard applies retention to its partitions and runs
    /// the collector, which also gives back the space of deleted topics,
    /// in milliseconds. Default 5000.
    pub retention_check_interval_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let log = LogConfig::new("");
        Self {
            segment_bytes: log.segment_bytes,
            write_buffer_bytes: log.write_buffer_bytes,
            entry_bytes_max: log.entry_bytes_max,
            preallocate: log.preallocate,
            gc_live_ratio_max: log.gc_live_ratio_max,
            recycle_segments_max: log.recycle_segments_max,
            retention_bytes: 0,
            retention_ms: 7 * 24 * 3600 * 1000,
            sync_mode: SyncModeConfig::Adaptive,
            retention_check_interval_ms: 5_000,
        }
    }
}

impl StorageConfig {
    /// The shard log configuration for a shard whose directory is `dir`.
    pub fn log_config(&self, dir: impl Into<PathBuf>) -> LogConfig {
        let mut log = LogConfig::new(dir);
        log.segment_bytes = self.segment_bytes;
        log.write_buffer_bytes = self.write_buffer_bytes;
        log.entry_bytes_max = self.entry_bytes_max;
        log.preallocate = self.preallocate;
        log.gc_live_ratio_max = self.gc_live_ratio_max;
        log.recycle_segments_max = self.recycle_segments_max;
        log.sync_mode = match self.sync_mode {
            SyncModeConfig::Pipelined => SyncMode::Pipelined,
            SyncModeConfig::WriteThrough => SyncMode::WriteThrough,
            SyncModeConfig::Adaptive => SyncMode::Adaptive,
        };
        log
    }

    /// The default retention of a partition (0 in the file means none).
    pub fn retention_policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            bytes_max: (self.retention_bytes > 0).then_some(self.retention_bytes),
            age_max_ms: (self.retention_ms > 0).then_some(self.retention_ms),
        }
    }
}

/// One broker of a static cluster: `ID@HOST:PORT`, its node id and the
/// inter-broker address of its shard 0 (shard s listens on PORT + s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The broker's node id.
    pub node_id: i32,
    /// Its inter-broker address, HOST:PORT.
    pub addr: SocketAddr,
}

impl std::str::FromStr for PeerSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (id, addr) = text
            .split_once('@')
            .ok_or_else(|| format!("peer {text:?}: expected ID@HOST:PORT"))?;
        let node_id = id
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| format!("peer {text:?}: the node id must be a number >= 0"))?;
        let addr = addr
            .trim()
            .parse::<SocketAddr>()
            .map_err(|error| format!("peer {text:?}: bad address: {error}"))?;
        Ok(Self { node_id, addr })
    }
}

impl std::fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.node_id, self.addr)
    }
}

impl Serialize for PeerSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a comma-separated `ID@HOST:PORT,...` list (`--peers`).
pub fn parse_peers(text: &str) -> Result<Vec<PeerSpec>, String> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// `[cluster]`: a static cluster. With no peers the broker is a cluster of
/// one (its own controller, replication factor 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name; brokers of another cluster are refused.
    /// Default "shardmq".
    pub cluster_id: String,
    /// Every broker of the cluster, this one included, as
    /// `"ID@HOST:PORT"`: its node id and inter-broker address (shard s
    /// listens on PORT + s). Empty: this broker alone. Default empty.
    pub peers: Vec<PeerSpec>,
    /// Node ids that vote in the controller group; the other brokers are
    /// learners there (they hold the metadata but do not vote). Empty: the
    /// first three ids of `peers` (all of them when fewer). Default empty.
    pub controller_voters: Vec<i32>,
    /// The controller marks a broker failed when it has not heard from it
    /// for this long, in milliseconds. Default 6000.
    pub broker_session_timeout_ms: u64,
    /// The controller writes a snapshot of the metadata and compacts its
    /// log every this many applied commands. Default 1000.
    pub controller_snapshot_entries: u64,
    /// A leader hands leadership back to a partition's preferred leader
    /// once that broker has been active and caught up for this long, in
    /// milliseconds; 0 never does. Default 10000.
    pub leader_rebalance_delay_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            cluster_id: "shardmq".to_owned(),
            peers: Vec::new(),
            controller_voters: Vec::new(),
            broker_session_timeout_ms: 6_000,
            controller_snapshot_entries: 1_000,
            leader_rebalance_delay_ms: 10_000,
        }
    }
}

impl ClusterConfig {
    /// The controller's voters: `controller_voters`, or the first three
    /// peer ids by order of appearance (all when fewer); `self_id` alone
    /// without peers.
    pub fn voters(&self, self_id: i32) -> Vec<i32> {
        if self.peers.is_empty() {
            return vec![self_id];
        }
        if !self.controller_voters.is_empty() {
            return self.controller_voters.clone();
        }
        self.peers.iter().take(3).map(|p| p.node_id).collect()
    }

    /// Every broker's node id: the peers, or `self_id` alone.
    pub fn members(&self, self_id: i32) -> Vec<i32> {
        if self.peers.is_empty() {
            return vec![self_id];
        }
        self.peers.iter().map(|p| p.node_id).collect()
    }

    /// The inter-broker address of `node_id`'s shard 0.
    pub fn peer_addr(&self, node_id: i32) -> Option<SocketAddr> {
        self.peers
            .iter()
            .find(|p| p.node_id == node_id)
            .map(|p| p.addr)
    }
}

/// `[raft]`: settings of every Raft group (partitions and controller).
/// Defaults come from the Raft layer's `ReplicaConfig`, so there is one
/// default per setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// Interval of one Raft tick, in milliseconds. Default 100.
    pub tick_ms: u64,
    /// Ticks between a leader's heartbeats. Default 2.
    pub heartbeat_ticks: usize,
    /// Ticks without a leader before a follower campaigns; greater than
    /// `heartbeat_ticks`. Default 10.
    pub election_ticks: usize,
    /// A leader that has not heard from a quorum for an election timeout
    /// steps down. Default true.
    pub check_quorum: bool,
    /// A candidate first asks whether it could win, so a partitioned node
    /// does not disrupt the group when it returns. Default true.
    pub pre_vote: bool,
    /// Most bytes of entries in one append message. Default 1 MiB.
    pub max_size_per_msg: u64,
    /// Most append messages in flight to one follower (raft-rs keeps a
    /// slot per message, per follower, per group). Default 32.
    pub max_inflight_msgs: usize,
    /// Most bytes of recent entries a shard keeps in memory for
    /// replication. Default 64 MiB.
    pub entry_cache_bytes_max: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        let replica = crate::raft::ReplicaConfig::default();
        Self {
            tick_ms: 100,
            heartbeat_ticks: replica.heartbeat_tick,
            election_ticks: replica.election_tick,
            check_quorum: replica.check_quorum,
            pre_vote: replica.pre_vote,
            max_size_per_msg: replica.max_size_per_msg,
            max_inflight_msgs: replica.max_inflight_msgs,
            entry_cache_bytes_max: 64 << 20,
        }
    }
}

/// `[limits]`: what one client may make the broker hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request frame, length prefix included; a larger one closes
    /// the connection. At most 128 MiB. Default 8 MiB.
    pub frame_bytes_max: usize,
    /// Requests of one connection handled at once. Default 128.
    pub in_flight_max: usize,
    /// Connections served at once by each listener of each shard.
    /// Default 4096.
    pub connections_max: usize,
    /// Largest record (key, value and headers, encoded) in a batch.
    /// Default 1 MiB.
    pub record_bytes_max: usize,
    /// Largest record batch; at most `storage.entry_bytes_max`.
    /// Default 4 MiB.
    pub batch_bytes_max: usize,
    /// Longest a Fetch may wait for data (its `max_wait_ms` is capped to
    /// this), in milliseconds. Default 30000.
    pub fetch_wait_max_ms: u64,
    /// Record bytes a Fetch returns when it asks for the default (0).
    /// Default 1 MiB.
    pub fetch_bytes_default: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            frame_bytes_max: 8 << 20,
            in_flight_max: 128,
            connections_max: 4096,
            record_bytes_max: 1 << 20,
            batch_bytes_max: 4 << 20,
            fetch_wait_max_ms: 30_000,
            fetch_bytes_default: 1 << 20,
        }
    }
}

/// `[monitoring]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Address of the HTTP endpoint serving `/metrics` (Prometheus text)
    /// and `/health`. Default `0.0.0.0:9644`.
    pub metrics_listen: SocketAddr,
    /// How often each shard copies its storage counters into its metrics,
    /// in milliseconds. Default 1000.
    pub storage_stats_interval_ms: u64,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            metrics_listen: SocketAddr::from(([0, 0, 0, 0], 9644)),
            storage_stats_interval_ms: 1000,
        }
    }
}

/// Why a configuration cannot be used. Each names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the
    /// key and line).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser says, with the key and position.
        message: String,
    },
    /// A field has a value outside its allowed range.
    #[error("invalid config: {field} = {value}: {rule}")]
    Invalid {
        /// The field, as `section.key`.
        field: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        rule: String,
    },
}

impl Config {
    /// Parses `text` as a TOML configuration (not yet validated).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string(),
        })
    }

    /// Reads and parses the file at `path` (not yet validated).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Checks every field's range and the rules between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, value: impl ToString, rule: &str) -> ConfigError {
            ConfigError::Invalid {
                field,
                value: value.to_string(),
                rule: rule.to_owned(),
            }
        }
        let b = &self.broker;
        if b.node_id < 0 {
            return Err(invalid("broker.node_id", b.node_id, "must be at least 0"));
        }
        if b.data_dir.as_os_str().is_empty() {
            return Err(invalid("broker.data_dir", "\"\"", "must not be empty"));
        }
        if b.shards > usize::from(u16::MAX) {
            return Err(invalid("broker.shards", b.shards, "must be at most 65535"));
        }
        if b.io_memory_bytes < 64 << 10 {
            return Err(invalid(
                "broker.io_memory_bytes",
                b.io_memory_bytes,
                "must be at least 65536",
            ));
        }
        if b.default_partitions == 0 || b.default_partitions > b.partitions_max {
            return Err(invalid(
                "broker.default_partitions",
                b.default_partitions,
                "must be within 1..=broker.partitions_max",
            ));
        }
        if b.default_replication_factor == 0 {
            return Err(invalid(
                "broker.default_replication_factor",
                b.default_replication_factor,
                "must be at least 1",
            ));
        }
        if b.partitions_max == 0 || b.partitions_max > 1 << 20 {
            return Err(invalid(
                "broker.partitions_max",
                b.partitions_max,
                "must be within 1..=1048576",
            ));
        }
        let c = &self.cluster;
        if c.cluster_id.is_empty() || c.cluster_id.len() > 255 {
            return Err(invalid(
                "cluster.cluster_id",
                format!("{:?}", c.cluster_id),
                "must be 1 to 255 bytes",
            ));
        }
        if !c.peers.is_empty() {
            let mut ids: Vec<i32> = c.peers.iter().map(|p| p.node_id).collect();
            ids.sort_unstable();
            if ids.windows(2).any(|w| w[0] == w[1]) {
                return Err(invalid(
                    "cluster.peers",
                    format!(
                        "{:?}",
                        c.peers.iter().map(ToString::to_string).collect::<Vec<_>>()
                    ),
                    "every node id must appear once",
                ));
            }
            if !ids.contains(&b.node_id) {
                return Err(invalid(
                    "cluster.peers",
                    format!(
                        "{:?}",
                        c.peers.iter().map(ToString::to_string).collect::<Vec<_>>()
                    ),
                    &format!("must include this broker (broker.node_id = {})", b.node_id),
                ));
            }
            if c.peers.len() > 255 {
                return Err(invalid(
                    "cluster.peers",
                    c.peers.len(),
                    "at most 255 brokers",
                ));
            }
            for v in &c.controller_voters {
                if !ids.contains(v) {
                    return Err(invalid(
                        "cluster.controller_voters",
                        v,
                        "every voter must be one of cluster.peers",
                    ));
                }
            }
        } else if !c.controller_voters.is_empty() && c.controller_voters != [b.node_id] {
            return Err(invalid(
                "cluster.controller_voters",
                format!("{:?}", c.controller_voters),
                "without cluster.peers the only voter is this broker",
            ));
        }
        if c.broker_session_timeout_ms < 100 {
            return Err(invalid(
                "cluster.broker_session_timeout_ms",
                c.broker_session_timeout_ms,
                "must be at least 100",
            ));
        }
        if c.controller_snapshot_entries == 0 {
            return Err(invalid(
                "cluster.controller_snapshot_entries",
                c.controller_snapshot_entries,
                "must be at least 1",
            ));
        }
        let s = &self.storage;
        if s.segment_bytes % 4096 != 0
            || s.segment_bytes < 64 << 10
            || s.segment_bytes > u32::MAX.into()
        {
            return Err(invalid(
                "storage.segment_bytes",
                s.segment_bytes,
                "must be a multiple of 4096 within 64 KiB..4 GiB",
            ));
        }
        if s.write_buffer_bytes % 4096 != 0 || s.write_buffer_bytes < 8192 {
            return Err(invalid(
                "storage.write_buffer_bytes",
                s.write_buffer_bytes,
                "must be a multiple of 4096, at least 8192",
            ));
        }
        if s.entry_bytes_max == 0 || s.entry_bytes_max as u64 > s.segment_bytes / 2 {
            return Err(invalid(
                "storage.entry_bytes_max",
                s.entry_bytes_max,
                "must be within 1..=storage.segment_bytes / 2",
            ));
        }
        if !(0.0..=1.0).contains(&s.gc_live_ratio_max) {
            return Err(invalid(
                "storage.gc_live_ratio_max",
                s.gc_live_ratio_max,
                "must be within 0..=1",
            ));
        }
        if s.retention_check_interval_ms < 100 {
            return Err(invalid(
                "storage.retention_check_interval_ms",
                s.retention_check_interval_ms,
                "must be at least 100",
            ));
        }
        let r = &self.raft;
        if r.tick_ms == 0 {
            return Err(invalid("raft.tick_ms", r.tick_ms, "must be at least 1"));
        }
        if r.heartbeat_ticks == 0 {
            return Err(invalid(
                "raft.heartbeat_ticks",
                r.heartbeat_ticks,
                "must be at least 1",
            ));
        }
        if r.election_ticks <= r.heartbeat_ticks {
            return Err(invalid(
                "raft.election_ticks",
                r.election_ticks,
                "must be greater than raft.heartbeat_ticks",
            ));
        }
        if r.max_size_per_msg == 0 {
            return Err(invalid(
                "raft.max_size_per_msg",
                r.max_size_per_msg,
                "must be at least 1",
            ));
        }
        if r.max_inflight_msgs == 0 {
            return Err(invalid(
                "raft.max_inflight_msgs",
                r.max_inflight_msgs,
                "must be at least 1",
            ));
        }
        let l = &self.limits;
        if l.frame_bytes_max < 4096 || l.frame_bytes_max > MAX_FRAME_BYTES {
            return Err(invalid(
                "limits.frame_bytes_max",
                l.frame_bytes_max,
                &format!("must be within 4096..={MAX_FRAME_BYTES}"),
            ));
        }
        if l.in_flight_max == 0 {
            return Err(invalid(
                "limits.in_flight_max",
                l.in_flight_max,
                "must be at least 1",
            ));
        }
        if l.connections_max == 0 {
            return Err(invalid(
                "limits.connections_max",
                l.connections_max,
                "must be at least 1",
            ));
        }
        if l.batch_bytes_max == 0
            || l.batch_bytes_max > s.entry_bytes_max
            || l.batch_bytes_max > BATCH_BYTES_MAX
        {
            return Err(invalid(
                "limits.batch_bytes_max",
                l.batch_bytes_max,
                "must be within 1..=storage.entry_bytes_max (and 64 MiB)",
            ));
        }
        if l.record_bytes_max == 0 || l.record_bytes_max > l.batch_bytes_max {
            return Err(invalid(
                "limits.record_bytes_max",
                l.record_bytes_max,
                "must be within 1..=limits.batch_bytes_max",
            ));
        }
        if l.fetch_bytes_default == 0 {
            return Err(invalid(
                "limits.fetch_bytes_default",
                l.fetch_bytes_default,
                "must be at least 1",
            ));
        }
        if self.monitoring.storage_stats_interval_ms == 0 {
            return Err(invalid(
                "monitoring.storage_stats_interval_ms",
                self.monitoring.storage_stats_interval_ms,
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The number of shards to run: `broker.shards`, or one per available
    /// core when 0.
    pub fn shard_count(&self) -> usize {
        if self.broker.shards > 0 {
            return self.broker.shards;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// The host clients are told to connect to.
    pub fn advertised_host(&self) -> String {
        if !self.broker.advertised_host.is_empty() {
            return self.broker.advertised_host.clone();
        }
        let ip = self.broker.listen.ip();
        if ip.is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            ip.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_and_valid() {
        let config = Config::from_toml("", Path::new("empty.toml")).unwrap();
        assert_eq!(config, Config::default());
        config.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let error = Config::from_toml("[broker]\nnode_idd = 3\n", Path::new("x.toml")).unwrap_err();
        assert!(error.to_string().contains("node_idd"), "{error}");
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases: &[(&str, &str)] = &[
            ("[raft]\nelection_ticks = 1\n", "raft.election_ticks"),
            ("[storage]\nsegment_bytes = 1000\n", "storage.segment_bytes"),
            ("[limits]\nbatch_bytes_max = 0\n", "limits.batch_bytes_max"),
            (
                "[limits]\nrecord_bytes_max = 99999999\n",
                "limits.record_bytes_max",
            ),
            ("[limits]\nframe_bytes_max = 12\n", "limits.frame_bytes_max"),
            ("[broker]\nnode_id = -1\n", "broker.node_id"),
            (
                "[broker]\ndefault_partitions = 0\n",
                "broker.default_partitions",
            ),
        ];
        for (text, field) in cases {
            let config = Config::from_toml(text, Path::new("x.toml")).unwrap();
            let error = config.validate().unwrap_err();
            match &error {
                ConfigError::Invalid { field: got, .. } => assert_eq!(got, field, "{text}"),
                other => panic!("{text}: {other}"),
            }
            assert!(error.to_string().contains(field));
        }
    }

    #[test]
    fn storage_maps_to_the_log_config() {
        let storage = StorageConfig {
            segment_bytes: 1 << 20,
            ..StorageConfig::default()
        };
        let log = storage.log_config("/x");
        assert_eq!(log.segment_bytes, 1 << 20);
        assert_eq!(log.dir, PathBuf::from("/x"));
        assert_eq!(log.entry_bytes_max, storage.entry_bytes_max);
    }
}
