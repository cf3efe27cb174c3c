//! The bounds of the cluster metadata. [`super::ClusterMetadata::apply`]
//! refuses a command that would exceed one, so the metadata, its snapshots
//! and the work of every lookup stay bounded whatever commands arrive.

/// Longest topic name, as Kafka's.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Most partitions one topic may have (the broker config's
/// `partitions_max` is at most this).
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 1 << 20;

/// Most partitions of all topics together.
pub const CLUSTER_PARTITIONS_MAX: u64 = 1 << 21;

/// Most topics a cluster may have.
pub const TOPICS_MAX: usize = 1 << 20;

/// Most replicas of one partition: a Raft group of more voters commits
/// slower than it gains in safety.
pub const REPLICATION_FACTOR_MAX: u16 = 16;

/// Most brokers a cluster may register.
pub const BROKERS_MAX: usize = 4096;

/// Most shards (cores) one broker may have.
pub const SHARDS_PER_BROKER_MAX: usize = 1024;

/// Longest host name or address in a registration (a DNS name is at most
/// 253 bytes).
pub const HOST_BYTES_MAX: usize = 255;

/// Most configuration entries of one topic.
pub const TOPIC_CONFIGS_MAX: usize = 256;

/// Longest configuration key.
pub const CONFIG_KEY_BYTES_MAX: usize = 255;

/// Longest configuration value.
pub const CONFIG_VALUE_BYTES_MAX: usize = 4096;

/// Most leader records one `RecordLeaders` command may carry; a caller with
/// more splits them over several commands.
pub const LEADER_RECORDS_MAX: usize = 1 << 16;

/// Largest encoded command [`super::Command::decode`] accepts. The largest
/// valid commands (`RecordLeaders` with [`LEADER_RECORDS_MAX`] records, a
/// `CreateTopic` with every config at its limit) stay well below.
pub const COMMAND_BYTES_MAX: usize = 4 << 20;

/// Largest snapshot [`super::decode_snapshot`] and
/// [`super::load_latest_snapshot`] accept: [`CLUSTER_PARTITIONS_MAX`]
/// partitions of three replicas take about a quarter of it.
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 30;

const _: () = assert!(REPLICATION_FACTOR_MAX as usize <= BROKERS_MAX);
const _: () = assert!(SHARDS_PER_BROKER_MAX <= u16::MAX as usize);
const _: () = assert!(PARTITIONS_PER_TOPIC_MAX as u64 <= CLUSTER_PARTITIONS_MAX);
const _: () = assert!(SNAPSHOT_BYTES_MAX <= u32::MAX as usize);
