//! Topic metadata until the controller Raft group exists: which topics
//! exist, their partitions and the shard that owns each partition.
//!
//! [`TopicStore`] is owned by shard 0: it applies changes (sans-IO: the
//! `create`/`delete` methods only compute the next [`TopicsSnapshot`]) and
//! persists each new snapshot as `topics.json` in the data directory
//! before anyone learns of it. Every shard, shard 0 included, then receives
//! the snapshot by message and keeps it as its read-only view, so any shard
//! can route a request for any partition.
//!
//! Placement: partition `p` of a topic goes to shard
//! `(crc32c(name) + p) % shards`, computed once at creation and recorded in
//! the snapshot, so it never depends on the shard count of a later run.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shardmq_schema::protocol::ErrorCode;
use shardmq_storage::PartitionId;

use super::service::ServiceError;

/// Name of the metadata file in the data directory.
pub const TOPICS_FILE: &str = "topics.json";

/// Longest topic name, as Kafka's.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// One topic. Broker view: part of a [`TopicsSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// The topic's name.
    pub name: String,
    /// Stable id, never reused; the high 32 bits of its partitions' ids.
    pub id: u32,
    /// Replicas of each partition (1 until replication exists).
    pub replication_factor: i16,
    /// The owning shard of each partition, by partition index.
    pub shards: Vec<u16>,
    /// Configuration overrides as given at creation.
    pub configs: BTreeMap<String, String>,
}

impl TopicMeta {
    /// Number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// The shard-log id of partition `p`.
    pub fn partition_id(&self, p: u32) -> PartitionId {
        partition_id(self.id, p)
    }
}

/// The shard-log id of partition `p` of topic `topic_id`.
pub fn partition_id(topic_id: u32, p: u32) -> PartitionId {
    (u64::from(topic_id) << 32) | u64::from(p)
}

/// Every topic, at one version. Broker view: immutable once made; shards
/// hold it in an `Arc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicsSnapshot {
    /// Incremented by every change.
    pub version: u64,
    /// The id the next topic gets.
    pub next_topic_id: u32,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
}

impl TopicsSnapshot {
    /// Every partition owned by `shard`, as (shard-log id, topic, index).
    pub fn partitions_of_shard(&self, shard: u16) -> impl Iterator<Item = PartitionId> + '_ {
        self.topics.values().flat_map(move |topic| {
            topic
                .shards
                .iter()
                .enumerate()
                .filter(move |(_, s)| **s == shard)
                .map(|(p, _)| topic.partition_id(p as u32))
        })
    }

    /// The topic and its partition `p`'s owning shard, or the error a
    /// client gets.
    pub fn locate(&self, topic: &str, p: i32) -> Result<(&TopicMeta, u16), ServiceError> {
        let meta = self.topics.get(topic).ok_or_else(|| {
            ServiceError::new(ErrorCode::UnknownTopic, format!("no topic named {topic:?}"))
        })?;
        let shard = usize::try_from(p)
            .ok()
            .and_then(|i| meta.shards.get(i))
            .ok_or_else(|| {
                ServiceError::new(
                    ErrorCode::UnknownPartition,
                    format!(
                        "topic {topic:?} has partitions 0..{}, not {p}",
                        meta.partition_count()
                    ),
                )
            })?;
        Ok((meta, *shard))
    }
}

/// A topic to create, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopicSpec {
    /// Name.
    pub name: String,
    /// Partitions; -1 for the default.
    pub partitions: i32,
    /// Replication factor; -1 for the default (1).
    pub replication_factor: i16,
    /// Configuration overrides.
    pub configs: BTreeMap<String, String>,
}

/// Why the metadata file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TopicStoreError {
    /// An i/o call failed.
    #[error("topic metadata i/o failed: {op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("topic metadata file {path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// The topic metadata and its file. Owned by shard 0.
#[derive(Debug)]
pub struct TopicStore {
    dir: PathBuf,
    snapshot: TopicsSnapshot,
    shards: u16,
    partitions_default: u32,
    partitions_max: u32,
}

impl TopicStore {
    /// Loads `dir/topics.json` (an empty store when it does not exist).
    /// Fails if a partition names a shard this broker does not run.
    pub fn open(
        dir: &Path,
        shards: u16,
        partitions_default: u32,
        partitions_max: u32,
    ) -> Result<Self, TopicStoreError> {
        let path = dir.join(TOPICS_FILE);
        let snapshot = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<TopicsSnapshot>(&bytes).map_err(|error| {
                TopicStoreError::Invalid {
                    path: path.clone(),
                    message: error.to_string(),
                }
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => TopicsSnapshot::default(),
            Err(source) => {
                return Err(TopicStoreError::Io {
                    op: "read",
                    path,
                    source,
                })
            }
        };
        for topic in snapshot.topics.values() {
            if let Some(shard) = topic.shards.iter().find(|s| **s >= shards) {
                return Err(TopicStoreError::Invalid {
                    path,
                    message: format!(
                        "topic {:?} has a partition on shard {shard}, but the broker runs {shards} shards",
                        topic.name
                    ),
                });
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            snapshot,
            shards,
            partitions_default,
            partitions_max,
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> &TopicsSnapshot {
        &self.snapshot
    }

    /// The snapshot with `spec` created, without changing the store; the
    /// client's error when it cannot be.
    pub fn with_created(&self, spec: &NewTopicSpec) -> Result<TopicsSnapshot, ServiceError> {
        validate_topic_name(&spec.name)?;
        if self.snapshot.topics.contains_key(&spec.name) {
            return Err(ServiceError::new(
                ErrorCode::TopicAlreadyExists,
                format!("topic {:?} already exists", spec.name),
            ));
        }
        let partitions = match spec.partitions {
            -1 => self.partitions_default,
            n if n >= 1 && n as u32 <= self.partitions_max => n as u32,
            n => {
                return Err(ServiceError::new(
                    ErrorCode::InvalidPartitions,
                    format!(
                        "{n} partitions: must be within 1..={} (or -1 for the default)",
                        self.partitions_max
                    ),
                ))
            }
        };
        let replication_factor = match spec.replication_factor {
            -1 | 1 => 1,
            n => {
                return Err(ServiceError::new(
                    ErrorCode::InvalidReplicationFactor,
                    format!("replication factor {n}: this broker is alone, so it must be 1"),
                ))
            }
        };
        let hash = crc32c::crc32c(spec.name.as_bytes());
        let shards = (0..partitions)
            .map(|p| ((u64::from(hash) + u64::from(p)) % u64::from(self.shards)) as u16)
            .collect();
        let mut next = self.snapshot.clone();
        next.version += 1;
        let id = next.next_topic_id;
        next.next_topic_id = id.checked_add(1).ok_or_else(|| {
            ServiceError::new(ErrorCode::InvalidRequest, "topic ids are exhausted")
        })?;
        next.topics.insert(
            spec.name.clone(),
            TopicMeta {
                name: spec.name.clone(),
                id,
                replication_factor,
                shards,
                configs: spec.configs.clone(),
            },
        );
        Ok(next)
    }

    /// The snapshot with topic `name` deleted, without changing the store.
    pub fn with_deleted(&self, name: &str) -> Result<TopicsSnapshot, ServiceError> {
        if !self.snapshot.topics.contains_key(name) {
            return Err(ServiceError::new(
                ErrorCode::UnknownTopic,
                format!("no topic named {name:?}"),
            ));
        }
        let mut next = self.snapshot.clone();
        next.version += 1;
        next.topics.remove(name);
        Ok(next)
    }

    /// Makes `next` durable (temporary file, fsync, rename, directory
    /// fsync), then the store's snapshot. Blocking file i/o on the calling
    /// shard: the file is small and changes only on admin requests.
    pub fn commit(&mut self, next: TopicsSnapshot) -> Result<(), TopicStoreError> {
        let path = self.dir.join(TOPICS_FILE);
        let tmp = self.dir.join(format!("{TOPICS_FILE}.tmp"));
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| TopicStoreError::Io { op, path, source }
        };
        let bytes = serde_json::to_vec_pretty(&next).map_err(|error| TopicStoreError::Invalid {
            path: path.clone(),
            message: error.to_string(),
        })?;
        std::fs::create_dir_all(&self.dir).map_err(io("create dir", &self.dir))?;
        let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
        file.write_all(&bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("fsync", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io("fsync dir", &self.dir))?;
        self.snapshot = next;
        Ok(())
    }
}

/// Topic names: 1 to 249 bytes of ASCII letters, digits, `.`, `_` and `-`,
/// neither `.` nor `..`.
pub fn validate_topic_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= TOPIC_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::new(
            ErrorCode::InvalidTopicName,
            format!(
                "topic name {name:?}: 1 to {TOPIC_NAME_BYTES_MAX} letters, digits, '.', '_' or '-'"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, partitions: i32) -> NewTopicSpec {
        NewTopicSpec {
            name: name.into(),
            partitions,
            replication_factor: -1,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn create_places_delete_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = TopicStore::open(dir.path(), 3, 2, 100).unwrap();
        let next = store.with_created(&spec("orders", 5)).unwrap();
        let topic = &next.topics["orders"];
        let first = crc32c::crc32c(b"orders") as u64 % 3;
        assert_eq!(topic.shards[0] as u64, first);
        assert_eq!(topic.shards[1] as u64, (first + 1) % 3);
        store.commit(next).unwrap();
        let default = store.with_created(&spec("logs", -1)).unwrap();
        assert_eq!(default.topics["logs"].partition_count(), 2);
        assert_eq!(default.topics["logs"].id, 1);
        store.commit(default).unwrap();
        assert_eq!(
            store.with_created(&spec("orders", 1)).unwrap_err().code,
            ErrorCode::TopicAlreadyExists
        );
        let reopened = TopicStore::open(dir.path(), 3, 2, 100).unwrap();
        assert_eq!(reopened.snapshot(), store.snapshot());
        assert_eq!(reopened.snapshot().version, 2);
        let deleted = store.with_deleted("orders").unwrap();
        store.commit(deleted).unwrap();
        assert_eq!(
            store.with_deleted("orders").unwrap_err().code,
            ErrorCode::UnknownTopic
        );
        // Fewer shards than the placement needs: refused.
        assert!(TopicStore::open(dir.path(), 1, 2, 100).is_err());
    }

    #[test]
    fn bad_requests_get_their_codes() {
        let dir = tempfile::tempdir().unwrap();
        let store = TopicStore::open(dir.path(), 2, 1, 10).unwrap();
        for (s, code) in [
            (spec("", 1), ErrorCode::InvalidTopicName),
            (spec("a/b", 1), ErrorCode::InvalidTopicName),
            (spec("..", 1), ErrorCode::InvalidTopicName),
            (spec("ok", 0), ErrorCode::InvalidPartitions),
            (spec("ok", 11), ErrorCode::InvalidPartitions),
            (
                NewTopicSpec {
                    replication_factor: 3,
                    ..spec("ok", 1)
                },
                ErrorCode::InvalidReplicationFactor,
            ),
        ] {
            assert_eq!(store.with_created(&s).unwrap_err().code, code, "{s:?}");
        }
    }

    #[test]
    fn locate_reports_unknown_topic_and_partition() {
        let dir = tempfile::tempdir().unwrap();
        let store = TopicStore::open(dir.path(), 2, 1, 10).unwrap();
        let next = store.with_created(&spec("t", 2)).unwrap();
        assert!(next.locate("t", 1).is_ok());
        assert_eq!(
            next.locate("t", 2).unwrap_err().code,
            ErrorCode::UnknownPartition
        );
        assert_eq!(
            next.locate("t", -1).unwrap_err().code,
            ErrorCode::UnknownPartition
        );
        assert_eq!(
            next.locate("u", 0).unwrap_err().code,
            ErrorCode::UnknownTopic
        );
        let mine: Vec<_> = next
            .partitions_of_shard(next.topics["t"].shards[0])
            .collect();
        assert_eq!(mine, vec![partition_id(0, 0)]);
    }
}
