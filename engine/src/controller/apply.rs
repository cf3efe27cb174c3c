//! The rules of every controller command: [`ClusterMetadata::apply`].
//!
//! A command is checked in full before anything changes, so a refused
//! command leaves the metadata as it was (bar `applied_index`) on every
//! broker alike: refusing is as deterministic as applying.

use std::collections::BTreeMap;

use shardmq_schema::protocol::ErrorCode;

use super::command::{Command, LeaderRecord};
use super::limits::{
    BROKERS_MAX, CLUSTER_PARTITIONS_MAX, CONFIG_KEY_BYTES_MAX, CONFIG_VALUE_BYTES_MAX,
    HOST_BYTES_MAX, LEADER_RECORDS_MAX, PARTITIONS_PER_TOPIC_MAX, REPLICATION_FACTOR_MAX,
    SHARDS_PER_BROKER_MAX, TOPICS_MAX, TOPIC_CONFIGS_MAX, TOPIC_NAME_BYTES_MAX,
};
use super::placement::{place, PlacementError};
use super::state::{
    partition_id, BrokerInfo, BrokerRegistration, BrokerStatus, ClusterMetadata, NodeId,
    PartitionAssignment, ReplicaPlace, TopicInfo,
};

/// What an applied command changed. Anything but [`Applied::Unchanged`]
/// advanced [`ClusterMetadata::version`] by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Applied {
    /// A broker registered for the first time.
    BrokerRegistered {
        /// The broker.
        node_id: NodeId,
    },
    /// A known broker registered again with new addresses or ports, or came
    /// back Active.
    BrokerUpdated {
        /// The broker.
        node_id: NodeId,
    },
    /// A topic was created.
    TopicCreated {
        /// Its id.
        id: u32,
    },
    /// A topic was deleted.
    TopicDeleted {
        /// Its id.
        id: u32,
    },
    /// A partition got new replicas.
    AssignmentUpdated {
        /// The partition's group.
        group: u64,
    },
    /// Some partitions got a newer leader.
    LeadersRecorded {
        /// How many.
        changed: u32,
    },
    /// A partition got a new preferred leader.
    PreferredLeaderSet {
        /// The partition's group.
        group: u64,
        /// The new preferred leader.
        to: NodeId,
    },
    /// A broker was marked Failed.
    BrokerFailed {
        /// The broker.
        node_id: NodeId,
    },
    /// A broker was marked Active again.
    BrokerActive {
        /// The broker.
        node_id: NodeId,
    },
    /// The command was valid and changed nothing (the metadata already said
    /// so).
    Unchanged,
}

/// Why a command was refused. Refusing changes nothing but
/// `applied_index`; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The index is not after the last applied one: the caller applied a
    /// command twice or out of order.
    #[error(
        "controller log index {index} is not after the last applied index {applied_index}: \
         each command is applied once, in log order"
    )]
    StaleIndex {
        /// The index given.
        index: u64,
        /// [`ClusterMetadata::applied_index`].
        applied_index: u64,
    },
    /// The registration itself is not valid.
    #[error("broker {node_id} cannot register: {reason}")]
    InvalidRegistration {
        /// The broker.
        node_id: NodeId,
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// A known broker came back with another incarnation.
    #[error(
        "broker {node_id} was registered with incarnation {registered} but came back with \
         {offered}: its data directory was wiped or replaced, or another broker uses id \
         {node_id}; restore the data directory, or give the new broker an id the cluster has \
         not seen"
    )]
    IncarnationMismatch {
        /// The broker.
        node_id: NodeId,
        /// The incarnation recorded.
        registered: u64,
        /// The incarnation it came back with.
        offered: u64,
    },
    /// A known broker came back with fewer shards than its replicas need.
    #[error(
        "broker {node_id} came back with {shards} shards but holds replicas on shards up to \
         {}: start it with at least {shards_needed} shards, or move those replicas first",
        .shards_needed.saturating_sub(1)
    )]
    ShardsShrunk {
        /// The broker.
        node_id: NodeId,
        /// Its new shard count.
        shards: usize,
        /// The fewest shards that keep every replica it holds.
        shards_needed: u16,
    },
    /// The cluster has as many brokers as it may.
    #[error(
        "broker {node_id} cannot register: the cluster already has {max} brokers, the most it \
         may have"
    )]
    TooManyBrokers {
        /// The broker.
        node_id: NodeId,
        /// [`BROKERS_MAX`].
        max: usize,
    },
    /// The topic name breaks the naming rules.
    #[error(
        "topic name {name:?} is not valid: use 1 to {max} ASCII letters, digits, '.', '_' or \
         '-', other than \".\" and \"..\"",
        max = TOPIC_NAME_BYTES_MAX
    )]
    InvalidTopicName {
        /// The name given.
        name: String,
    },
    /// A topic of that name exists.
    #[error("topic {name:?} already exists: pick another name, or delete it first")]
    TopicExists {
        /// The name.
        name: String,
    },
    /// The partition count is 0 or too large.
    #[error("a topic has 1 to {max} partitions, not {asked}")]
    InvalidPartitions {
        /// Partitions asked for.
        asked: u32,
        /// [`PARTITIONS_PER_TOPIC_MAX`].
        max: u32,
    },
    /// The cluster would hold more partitions than it may.
    #[error(
        "{asked} more partitions would take the cluster past its limit of {max} ({existing} \
         exist): delete topics, or create fewer partitions"
    )]
    ClusterPartitionsFull {
        /// Partitions asked for.
        asked: u32,
        /// Partitions of all topics now.
        existing: u64,
        /// [`CLUSTER_PARTITIONS_MAX`].
        max: u64,
    },
    /// The cluster has as many topics as it may.
    #[error("the cluster already has {max} topics, the most it may have: delete one first")]
    TooManyTopics {
        /// [`TOPICS_MAX`].
        max: usize,
    },
    /// The replication factor is 0, more than there are Active brokers, or
    /// more than [`REPLICATION_FACTOR_MAX`].
    #[error(
        "replication factor {asked} is not possible with {live} active brokers: it must be at \
         least 1, at most the number of active brokers and at most {max}; lower it, or start \
         more brokers",
        max = REPLICATION_FACTOR_MAX
    )]
    InvalidReplicationFactor {
        /// Replication factor asked for.
        asked: u16,
        /// Active brokers.
        live: usize,
    },
    /// A topic configuration entry breaks a limit.
    #[error("topic config {key:?}: {reason}")]
    InvalidConfig {
        /// Its key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// More configuration entries than a topic may have.
    #[error("{count} topic config entries, more than the {max} a topic may have")]
    TooManyConfigs {
        /// Entries given.
        count: usize,
        /// [`TOPIC_CONFIGS_MAX`].
        max: usize,
    },
    /// Every topic id has been handed out.
    #[error("every topic id has been used: this cluster cannot create more topics")]
    TopicIdsExhausted,
    /// No topic of that name.
    #[error("topic {name:?} does not exist")]
    UnknownTopic {
        /// The name.
        name: String,
    },
    /// The topic has no partition of that index.
    #[error("topic {topic:?} has no partition {partition}: it has {partitions}, numbered from 0")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The index asked for.
        partition: u32,
        /// Its partition count.
        partitions: u32,
    },
    /// The replica list is empty, too long or names a broker twice.
    #[error("topic {topic:?} partition {partition}: {reason}")]
    InvalidReplicas {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What is wrong.
        reason: String,
    },
    /// No broker of that id is registered.
    #[error("broker {node_id} is not registered: it must start and register first")]
    UnknownBroker {
        /// The broker.
        node_id: NodeId,
    },
    /// A replica on a shard its broker does not have.
    #[error("broker {node_id} has {shards} shards, so no shard {shard}")]
    ShardOutOfRange {
        /// The broker.
        node_id: NodeId,
        /// The shard asked for.
        shard: u16,
        /// Its shard count.
        shards: u16,
    },
    /// Leadership asked of a broker that holds no replica.
    #[error(
        "broker {node_id} holds no replica of topic {topic:?} partition {partition}: only a \
         replica can lead; add a replica there first"
    )]
    NotAReplica {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The broker.
        node_id: NodeId,
    },
    /// A `RecordLeaders` with more records than one command may carry.
    #[error("{count} leader records in one command, more than the {max} allowed: split them")]
    TooManyLeaderRecords {
        /// Records carried.
        count: usize,
        /// [`LEADER_RECORDS_MAX`].
        max: usize,
    },
    /// Placement failed (the checks before it make this a bug).
    #[error(transparent)]
    Placement(#[from] PlacementError),
}

impl ApplyError {
    /// The wire code a client gets for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TopicExists { .. } => ErrorCode::TopicAlreadyExists,
            Self::UnknownTopic { .. } => ErrorCode::UnknownTopic,
            Self::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            Self::InvalidTopicName { .. } => ErrorCode::InvalidTopicName,
            Self::InvalidPartitions { .. } | Self::ClusterPartitionsFull { .. } => {
                ErrorCode::InvalidPartitions
            }
            Self::InvalidReplicationFactor { .. } => ErrorCode::InvalidReplicationFactor,
            Self::InvalidConfig { .. } | Self::TooManyConfigs { .. } => ErrorCode::InvalidConfig,
            Self::UnknownBroker { .. }
            | Self::NotAReplica { .. }
            | Self::IncarnationMismatch { .. }
            | Self::ShardsShrunk { .. }
            | Self::ShardOutOfRange { .. } => ErrorCode::InvalidBroker,
            Self::StaleIndex { .. }
            | Self::InvalidRegistration { .. }
            | Self::TooManyBrokers { .. }
            | Self::TooManyTopics { .. }
            | Self::TopicIdsExhausted
            | Self::InvalidReplicas { .. }
            | Self::TooManyLeaderRecords { .. }
            | Self::Placement(_) => ErrorCode::InvalidRequest,
        }
    }
}

impl ClusterMetadata {
    /// Applies `cmd`, committed at controller log index `index`.
    ///
    /// `index` must be after [`ClusterMetadata::applied_index`] (else
    /// [`ApplyError::StaleIndex`] and nothing changes). Otherwise
    /// `applied_index` becomes `index` whatever the outcome; a refused
    /// command changes nothing else, and an accepted one that changes
    /// something advances `version` by one. Every broker calls this with the
    /// same commands in the same order and gets the same metadata and the
    /// same results.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Result<Applied, ApplyError> {
        if index <= self.applied_index {
            return Err(ApplyError::StaleIndex {
                index,
                applied_index: self.applied_index,
            });
        }
        self.applied_index = index;
        let applied = match cmd {
            Command::RegisterBroker(registration) => self.register_broker(registration),
            Command::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
            } => self.create_topic(name, *partitions, *replication_factor, configs),
            Command::DeleteTopic { name } => self.delete_topic(name),
            Command::UpdateAssignment {
                topic,
                partition,
                replicas,
            } => self.update_assignment(topic, *partition, replicas),
            Command::RecordLeaders { leaders } => self.record_leaders(leaders),
            Command::MigrateLeader {
                topic,
                partition,
                to,
            } => self.migrate_leader(topic, *partition, *to),
            Command::MarkBrokerFailed { node_id } => {
                self.set_broker_status(*node_id, BrokerStatus::Failed)
            }
            Command::MarkBrokerActive { node_id } => {
                self.set_broker_status(*node_id, BrokerStatus::Active)
            }
        }?;
        if applied != Applied::Unchanged {
            self.version = self.version.saturating_add(1);
        }
        debug_assert_eq!(self.check_invariants(), Ok(()), "after {cmd:?}");
        Ok(applied)
    }

    fn register_broker(&mut self, reg: &BrokerRegistration) -> Result<Applied, ApplyError> {
        validate_registration(reg)?;
        let node_id = reg.node_id;
        let info = BrokerInfo {
            node_id,
            inter_broker_addr: reg.inter_broker_addr.clone(),
            client_host: reg.client_host.clone(),
            client_port: reg.client_port,
            shard_ports: reg.shard_ports.clone(),
            incarnation: reg.incarnation,
            status: BrokerStatus::Active,
        };
        let Some(known) = self.brokers.get(&node_id) else {
            if self.brokers.len() >= BROKERS_MAX {
                return Err(ApplyError::TooManyBrokers {
                    node_id,
                    max: BROKERS_MAX,
                });
            }
            self.brokers.insert(node_id, info);
            return Ok(Applied::BrokerRegistered { node_id });
        };
        if known.incarnation != reg.incarnation {
            return Err(ApplyError::IncarnationMismatch {
                node_id,
                registered: known.incarnation,
                offered: reg.incarnation,
            });
        }
        // Placements name shards by index and never move on their own, so a
        // broker must keep every shard that holds a replica.
        let shards_needed = self
            .partitions()
            .filter_map(|(_, _, a)| a.replica_on(node_id))
            .map(|r| r.shard.saturating_add(1))
            .max()
            .unwrap_or(0);
        if reg.shard_ports.len() < usize::from(shards_needed) {
            return Err(ApplyError::ShardsShrunk {
                node_id,
                shards: reg.shard_ports.len(),
                shards_needed,
            });
        }
        if *known == info {
            return Ok(Applied::Unchanged);
        }
        self.brokers.insert(node_id, info);
        Ok(Applied::BrokerUpdated { node_id })
    }

    fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: &BTreeMap<String, String>,
    ) -> Result<Applied, ApplyError> {
        validate_topic_name(name)?;
        if self.topics.contains_key(name) {
            return Err(ApplyError::TopicExists { name: name.into() });
        }
        if partitions == 0 || partitions > PARTITIONS_PER_TOPIC_MAX {
            return Err(ApplyError::InvalidPartitions {
                asked: partitions,
                max: PARTITIONS_PER_TOPIC_MAX,
            });
        }
        let live: Vec<(NodeId, u16)> = self
            .live_brokers()
            .map(|b| (b.node_id, b.shards()))
            .collect();
        if replication_factor == 0
            || usize::from(replication_factor) > live.len()
            || replication_factor > REPLICATION_FACTOR_MAX
        {
            return Err(ApplyError::InvalidReplicationFactor {
                asked: replication_factor,
                live: live.len(),
            });
        }
        validate_configs(configs)?;
        if self.topics.len() >= TOPICS_MAX {
            return Err(ApplyError::TooManyTopics { max: TOPICS_MAX });
        }
        let existing = self.partition_total();
        if existing + u64::from(partitions) > CLUSTER_PARTITIONS_MAX {
            return Err(ApplyError::ClusterPartitionsFull {
                asked: partitions,
                existing,
                max: CLUSTER_PARTITIONS_MAX,
            });
        }
        let id = self.next_topic_id;
        let next_topic_id = id.checked_add(1).ok_or(ApplyError::TopicIdsExhausted)?;

        let placed = place(&live, partitions, replication_factor, self.placement_cursor)?;
        let partitions_assigned = placed
            .into_iter()
            .enumerate()
            .map(|(index, replicas)| PartitionAssignment {
                group: partition_id(id, index as u32),
                preferred_leader: replicas[0].node_id,
                replicas,
                leader: None,
                leader_term: 0,
            })
            .collect();
        self.next_topic_id = next_topic_id;
        self.placement_cursor = self.placement_cursor.wrapping_add(u64::from(partitions));
        self.topic_names.insert(id, name.into());
        self.topics.insert(
            name.into(),
            TopicInfo {
                name: name.into(),
                id,
                replication_factor,
                partitions: partitions_assigned,
                configs: configs.clone(),
            },
        );
        Ok(Applied::TopicCreated { id })
    }

    fn delete_topic(&mut self, name: &str) -> Result<Applied, ApplyError> {
        let topic = self
            .topics
            .remove(name)
            .ok_or_else(|| ApplyError::UnknownTopic { name: name.into() })?;
        self.topic_names.remove(&topic.id);
        Ok(Applied::TopicDeleted { id: topic.id })
    }

    fn update_assignment(
        &mut self,
        topic: &str,
        partition: u32,
        replicas: &[ReplicaPlace],
    ) -> Result<Applied, ApplyError> {
        let invalid = |reason: String| ApplyError::InvalidReplicas {
            topic: topic.into(),
            partition,
            reason,
        };
        // Checked against the topic first, so an unknown topic or partition
        // is reported as such whatever the replicas.
        self.partition_mut(topic, partition)?;
        let Some(first) = replicas.first() else {
            return Err(invalid("a partition needs at least one replica".into()));
        };
        if replicas.len() > usize::from(REPLICATION_FACTOR_MAX) {
            return Err(invalid(format!(
                "{} replicas is more than the {REPLICATION_FACTOR_MAX} a partition may have",
                replicas.len()
            )));
        }
        for (i, r) in replicas.iter().enumerate() {
            if replicas[..i].iter().any(|o| o.node_id == r.node_id) {
                return Err(invalid(format!(
                    "broker {} is listed twice: each replica must be on another broker",
                    r.node_id
                )));
            }
            let broker = self
                .brokers
                .get(&r.node_id)
                .ok_or(ApplyError::UnknownBroker { node_id: r.node_id })?;
            if r.shard >= broker.shards() {
                return Err(ApplyError::ShardOutOfRange {
                    node_id: r.node_id,
                    shard: r.shard,
                    shards: broker.shards(),
                });
            }
        }
        let preferred_leader = first.node_id;
        let a = self.partition_mut(topic, partition)?;
        if a.replicas == replicas && a.preferred_leader == preferred_leader {
            return Ok(Applied::Unchanged);
        }
        a.replicas = replicas.to_vec();
        a.preferred_leader = preferred_leader;
        if a.leader.is_some_and(|leader| !a.has_replica(leader)) {
            // The term stays, so a late report of the removed leader is still
            // recognised as stale.
            a.leader = None;
        }
        Ok(Applied::AssignmentUpdated { group: a.group })
    }

    fn record_leaders(&mut self, leaders: &[LeaderRecord]) -> Result<Applied, ApplyError> {
        if leaders.len() > LEADER_RECORDS_MAX {
            return Err(ApplyError::TooManyLeaderRecords {
                count: leaders.len(),
                max: LEADER_RECORDS_MAX,
            });
        }
        let mut changed = 0u32;
        for record in leaders {
            let Some(a) = self.assignment_mut(record.group) else {
                continue;
            };
            let newer = record.term > a.leader_term
                || (record.term == a.leader_term && a.leader != Some(record.leader));
            if newer && a.has_replica(record.leader) {
                a.leader = Some(record.leader);
                a.leader_term = record.term;
                changed += 1;
            }
        }
        Ok(if changed == 0 {
            Applied::Unchanged
        } else {
            Applied::LeadersRecorded { changed }
        })
    }

    fn migrate_leader(
        &mut self,
        topic: &str,
        partition: u32,
        to: NodeId,
    ) -> Result<Applied, ApplyError> {
        let a = self.partition_mut(topic, partition)?;
        if !a.has_replica(to) {
            return Err(ApplyError::NotAReplica {
                topic: topic.into(),
                partition,
                node_id: to,
            });
        }
        if a.preferred_leader == to {
            return Ok(Applied::Unchanged);
        }
        a.preferred_leader = to;
        Ok(Applied::PreferredLeaderSet { group: a.group, to })
    }

    fn set_broker_status(
        &mut self,
        node_id: NodeId,
        status: BrokerStatus,
    ) -> Result<Applied, ApplyError> {
        let broker = self
            .brokers
            .get_mut(&node_id)
            .ok_or(ApplyError::UnknownBroker { node_id })?;
        if broker.status == status {
            return Ok(Applied::Unchanged);
        }
        broker.status = status;
        Ok(match status {
            BrokerStatus::Failed => Applied::BrokerFailed { node_id },
            BrokerStatus::Active => Applied::BrokerActive { node_id },
        })
    }

    fn partition_mut(
        &mut self,
        topic: &str,
        partition: u32,
    ) -> Result<&mut PartitionAssignment, ApplyError> {
        let info = self
            .topics
            .get_mut(topic)
            .ok_or_else(|| ApplyError::UnknownTopic { name: topic.into() })?;
        let partitions = info.partition_count();
        info.partitions
            .get_mut(partition as usize)
            .ok_or_else(|| ApplyError::UnknownPartition {
                topic: topic.into(),
                partition,
                partitions,
            })
    }

    fn assignment_mut(&mut self, group: u64) -> Option<&mut PartitionAssignment> {
        let topic_id = u32::try_from(group >> 32).ok()?;
        let index = (group & u64::from(u32::MAX)) as usize;
        let name = self.topic_names.get(&topic_id)?;
        self.topics.get_mut(name)?.partitions.get_mut(index)
    }
}

/// Topic names: 1 to [`TOPIC_NAME_BYTES_MAX`] bytes of ASCII letters,
/// digits, `.`, `_` and `-`, neither `.` nor `..`.
pub fn validate_topic_name(name: &str) -> Result<(), ApplyError> {
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
        Err(ApplyError::InvalidTopicName { name: name.into() })
    }
}

fn validate_configs(configs: &BTreeMap<String, String>) -> Result<(), ApplyError> {
    if configs.len() > TOPIC_CONFIGS_MAX {
        return Err(ApplyError::TooManyConfigs {
            count: configs.len(),
            max: TOPIC_CONFIGS_MAX,
        });
    }
    for (key, value) in configs {
        let reason = if key.is_empty() || key.len() > CONFIG_KEY_BYTES_MAX {
            format!("a key has 1 to {CONFIG_KEY_BYTES_MAX} bytes")
        } else if value.len() > CONFIG_VALUE_BYTES_MAX {
            format!("a value has at most {CONFIG_VALUE_BYTES_MAX} bytes")
        } else {
            continue;
        };
        return Err(ApplyError::InvalidConfig {
            key: key.clone(),
            reason,
        });
    }
    Ok(())
}

fn validate_registration(reg: &BrokerRegistration) -> Result<(), ApplyError> {
    let refuse = |reason: String| {
        Err(ApplyError::InvalidRegistration {
            node_id: reg.node_id,
            reason,
        })
    };
    if reg.node_id < 0 {
        return refuse("node ids start at 0".into());
    }
    let shards = reg.shard_ports.len();
    if shards == 0 || shards > SHARDS_PER_BROKER_MAX {
        return refuse(format!(
            "it lists {shards} shard ports; a broker has 1 to {SHARDS_PER_BROKER_MAX} shards, \
             each with its client port"
        ));
    }
    if reg.client_host.is_empty() || reg.client_host.len() > HOST_BYTES_MAX {
        return refuse(format!(
            "its client host {:?} must have 1 to {HOST_BYTES_MAX} bytes",
            reg.client_host
        ));
    }
    if reg.client_port == 0 || reg.shard_ports.contains(&0) {
        return refuse("its client ports must not be 0".into());
    }
    // A broker alone (no peers) has no inter-broker listener.
    if reg.inter_broker_addr.is_empty() {
        return Ok(());
    }
    let Some((host, port)) = reg.inter_broker_addr.rsplit_once(':') else {
        return refuse(format!(
            "its inter-broker address {:?} is not host:port",
            reg.inter_broker_addr
        ));
    };
    if host.is_empty() || host.len() > HOST_BYTES_MAX {
        return refuse(format!(
            "the host of its inter-broker address {:?} must have 1 to {HOST_BYTES_MAX} bytes",
            reg.inter_broker_addr
        ));
    }
    // Shard s listens on port + s: every one of those must be a port.
    let last_port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .and_then(|p| p.checked_add(u16::try_from(shards - 1).ok()?));
    if last_port.is_none() {
        return refuse(format!(
            "its inter-broker address {:?} needs a port from 1 to {} so that each of its \
             {shards} shards listens on port + shard",
            reg.inter_broker_addr,
            usize::from(u16::MAX) + 1 - shards
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn registration(node_id: NodeId, shards: u16) -> BrokerRegistration {
        BrokerRegistration {
            node_id,
            inter_broker_addr: format!("10.0.0.{node_id}:9100"),
            client_host: format!("10.0.0.{node_id}"),
            client_port: 9092,
            shard_ports: (0..shards).map(|s| 9200 + s).collect(),
            incarnation: (100 + node_id) as u64,
        }
    }

    fn create(name: &str, partitions: u32, replication_factor: u16) -> Command {
        Command::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor,
            configs: BTreeMap::new(),
        }
    }

    fn replicas(places: &[(NodeId, u16)]) -> Vec<ReplicaPlace> {
        places
            .iter()
            .map(|&(node_id, shard)| ReplicaPlace { node_id, shard })
            .collect()
    }

    /// Applies `commands` from index 1, panicking on a refusal.
    fn build(commands: &[Command]) -> ClusterMetadata {
        let mut m = ClusterMetadata::new();
        for (i, c) in commands.iter().enumerate() {
            m.apply(i as u64 + 1, c)
                .unwrap_or_else(|e| panic!("{c:?}: {e}"));
        }
        m
    }

    /// Three brokers of two shards and topic "orders" of 6 partitions,
    /// replication factor 2.
    fn base() -> Vec<Command> {
        vec![
            Command::RegisterBroker(registration(1, 2)),
            Command::RegisterBroker(registration(2, 2)),
            Command::RegisterBroker(registration(3, 2)),
            create("orders", 6, 2),
        ]
    }

    fn orders_group(p: u32) -> u64 {
        partition_id(1, p)
    }

    #[test]
    fn apply_rules() {
        type Expect = Result<Applied, ApplyError>;
        let mut wiped = registration(2, 2);
        wiped.incarnation = 999;
        let mut moved = registration(2, 2);
        moved.client_host = "broker-2.example".into();
        let mut grown = registration(2, 2);
        grown.shard_ports.push(9202);
        let mut no_shards = registration(4, 1);
        no_shards.shard_ports.clear();
        let mut port_overflow = registration(4, 4);
        port_overflow.inter_broker_addr = "h:65534".into();
        let mut no_port = registration(4, 1);
        no_port.inter_broker_addr = "10.0.0.4".into();
        let configs = |n: usize, key: &str, value_len: usize| Command::CreateTopic {
            name: "c".into(),
            partitions: 1,
            replication_factor: 1,
            configs: (0..n)
                .map(|i| (format!("{key}{i}"), "v".repeat(value_len)))
                .collect(),
        };
        let invalid_replicas = |reason: &str| ApplyError::InvalidReplicas {
            topic: "orders".into(),
            partition: 0,
            reason: reason.into(),
        };
        let update =
            |topic: &str, partition: u32, places: &[(NodeId, u16)]| Command::UpdateAssignment {
                topic: topic.into(),
                partition,
                replicas: replicas(places),
            };
        let migrate = |partition: u32, to: NodeId| Command::MigrateLeader {
            topic: "orders".into(),
            partition,
            to,
        };
        let leaders = |records: &[(u64, NodeId, u64)]| Command::RecordLeaders {
            leaders: records
                .iter()
                .map(|&(group, leader, term)| LeaderRecord {
                    group,
                    leader,
                    term,
                })
                .collect(),
        };

        // (name, commands before, the command, its expected outcome)
        let cases: Vec<(&str, Vec<Command>, Command, Expect)> = vec![
            (
                "a new broker registers",
                vec![],
                Command::RegisterBroker(registration(1, 1)),
                Ok(Applied::BrokerRegistered { node_id: 1 }),
            ),
            (
                "the same registration again changes nothing",
                base(),
                Command::RegisterBroker(registration(2, 2)),
                Ok(Applied::Unchanged),
            ),
            (
                "a known broker with new addresses is updated",
                base(),
                Command::RegisterBroker(moved),
                Ok(Applied::BrokerUpdated { node_id: 2 }),
            ),
            (
                "a known broker may grow shards",
                base(),
                Command::RegisterBroker(grown),
                Ok(Applied::BrokerUpdated { node_id: 2 }),
            ),
            (
                "a failed broker that registers again is active",
                [base(), vec![Command::MarkBrokerFailed { node_id: 2 }]].concat(),
                Command::RegisterBroker(registration(2, 2)),
                Ok(Applied::BrokerUpdated { node_id: 2 }),
            ),
            (
                "another incarnation is refused",
                base(),
                Command::RegisterBroker(wiped),
                Err(ApplyError::IncarnationMismatch {
                    node_id: 2,
                    registered: 102,
                    offered: 999,
                }),
            ),
            (
                "fewer shards than its replicas need is refused",
                base(),
                Command::RegisterBroker(registration(2, 1)),
                Err(ApplyError::ShardsShrunk {
                    node_id: 2,
                    shards: 1,
                    shards_needed: 2,
                }),
            ),
            (
                "fewer shards is fine when no replica needs them",
                vec![Command::RegisterBroker(registration(1, 4))],
                Command::RegisterBroker(registration(1, 2)),
                Ok(Applied::BrokerUpdated { node_id: 1 }),
            ),
            (
                "a broker without shards is refused",
                vec![],
                Command::RegisterBroker(no_shards),
                Err(ApplyError::InvalidRegistration {
                    node_id: 4,
                    reason: "it lists 0 shard ports; a broker has 1 to 1024 shards, each with \
                             its client port"
                        .into(),
                }),
            ),
            (
                "inter-broker ports past 65535 are refused",
                vec![],
                Command::RegisterBroker(port_overflow),
                Err(ApplyError::InvalidRegistration {
                    node_id: 4,
                    reason: "its inter-broker address \"h:65534\" needs a port from 1 to 65532 \
                             so that each of its 4 shards listens on port + shard"
                        .into(),
                }),
            ),
            (
                "an inter-broker address without port is refused",
                vec![],
                Command::RegisterBroker(no_port),
                Err(ApplyError::InvalidRegistration {
                    node_id: 4,
                    reason: "its inter-broker address \"10.0.0.4\" is not host:port".into(),
                }),
            ),
            (
                "a negative node id is refused",
                vec![],
                Command::RegisterBroker(registration(-1, 1)),
                Err(ApplyError::InvalidRegistration {
                    node_id: -1,
                    reason: "node ids start at 0".into(),
                }),
            ),
            (
                "the first topic gets id 1",
                base()[..3].to_vec(),
                create("orders", 3, 3),
                Ok(Applied::TopicCreated { id: 1 }),
            ),
            (
                "the next topic gets the next id",
                base(),
                create("payments", 1, 1),
                Ok(Applied::TopicCreated { id: 2 }),
            ),
            (
                "a topic name is unique",
                base(),
                create("orders", 1, 1),
                Err(ApplyError::TopicExists {
                    name: "orders".into(),
                }),
            ),
            (
                "an empty topic name is refused",
                base(),
                create("", 1, 1),
                Err(ApplyError::InvalidTopicName { name: "".into() }),
            ),
            (
                "'..' is not a topic name",
                base(),
                create("..", 1, 1),
                Err(ApplyError::InvalidTopicName { name: "..".into() }),
            ),
            (
                "a '/' is not allowed in a topic name",
                base(),
                create("a/b", 1, 1),
                Err(ApplyError::InvalidTopicName { name: "a/b".into() }),
            ),
            (
                "250 bytes is too long a topic name",
                base(),
                create(&"x".repeat(250), 1, 1),
                Err(ApplyError::InvalidTopicName {
                    name: "x".repeat(250),
                }),
            ),
            (
                "249 bytes is a topic name",
                base(),
                create(&"x".repeat(249), 1, 1),
                Ok(Applied::TopicCreated { id: 2 }),
            ),
            (
                "a topic needs a partition",
                base(),
                create("t", 0, 1),
                Err(ApplyError::InvalidPartitions {
                    asked: 0,
                    max: PARTITIONS_PER_TOPIC_MAX,
                }),
            ),
            (
                "a topic has at most PARTITIONS_PER_TOPIC_MAX partitions",
                base(),
                create("t", PARTITIONS_PER_TOPIC_MAX + 1, 1),
                Err(ApplyError::InvalidPartitions {
                    asked: PARTITIONS_PER_TOPIC_MAX + 1,
                    max: PARTITIONS_PER_TOPIC_MAX,
                }),
            ),
            (
                "replication factor 0 is refused",
                base(),
                create("t", 1, 0),
                Err(ApplyError::InvalidReplicationFactor { asked: 0, live: 3 }),
            ),
            (
                "replication factor above the active brokers is refused",
                [base(), vec![Command::MarkBrokerFailed { node_id: 3 }]].concat(),
                create("t", 1, 3),
                Err(ApplyError::InvalidReplicationFactor { asked: 3, live: 2 }),
            ),
            (
                "a topic cannot be created without brokers",
                vec![],
                create("t", 1, 1),
                Err(ApplyError::InvalidReplicationFactor { asked: 1, live: 0 }),
            ),
            (
                "too many config entries are refused",
                base(),
                configs(TOPIC_CONFIGS_MAX + 1, "k", 1),
                Err(ApplyError::TooManyConfigs {
                    count: TOPIC_CONFIGS_MAX + 1,
                    max: TOPIC_CONFIGS_MAX,
                }),
            ),
            (
                "too long a config value is refused",
                base(),
                configs(1, "k", CONFIG_VALUE_BYTES_MAX + 1),
                Err(ApplyError::InvalidConfig {
                    key: "k0".into(),
                    reason: "a value has at most 4096 bytes".into(),
                }),
            ),
            (
                "configs within the limits are kept",
                base(),
                configs(TOPIC_CONFIGS_MAX, "k", CONFIG_VALUE_BYTES_MAX),
                Ok(Applied::TopicCreated { id: 2 }),
            ),
            (
                "a topic is deleted",
                base(),
                Command::DeleteTopic {
                    name: "orders".into(),
                },
                Ok(Applied::TopicDeleted { id: 1 }),
            ),
            (
                "an unknown topic cannot be deleted",
                base(),
                Command::DeleteTopic {
                    name: "nope".into(),
                },
                Err(ApplyError::UnknownTopic {
                    name: "nope".into(),
                }),
            ),
            (
                "replicas are updated",
                base(),
                update("orders", 0, &[(3, 1), (2, 0), (1, 1)]),
                Ok(Applied::AssignmentUpdated {
                    group: orders_group(0),
                }),
            ),
            (
                "the same replicas change nothing",
                base(),
                update("orders", 0, &[(1, 0), (2, 0)]),
                Ok(Applied::Unchanged),
            ),
            (
                "replicas of an unknown topic",
                base(),
                update("nope", 0, &[(1, 0)]),
                Err(ApplyError::UnknownTopic {
                    name: "nope".into(),
                }),
            ),
            (
                "replicas of an unknown partition",
                base(),
                update("orders", 6, &[(1, 0)]),
                Err(ApplyError::UnknownPartition {
                    topic: "orders".into(),
                    partition: 6,
                    partitions: 6,
                }),
            ),
            (
                "no replicas is refused",
                base(),
                update("orders", 0, &[]),
                Err(invalid_replicas("a partition needs at least one replica")),
            ),
            (
                "two replicas on one broker are refused",
                base(),
                update("orders", 0, &[(1, 0), (1, 1)]),
                Err(invalid_replicas(
                    "broker 1 is listed twice: each replica must be on another broker",
                )),
            ),
            (
                "a replica on an unknown broker is refused",
                base(),
                update("orders", 0, &[(1, 0), (9, 0)]),
                Err(ApplyError::UnknownBroker { node_id: 9 }),
            ),
            (
                "a replica on a shard its broker lacks is refused",
                base(),
                update("orders", 0, &[(1, 2)]),
                Err(ApplyError::ShardOutOfRange {
                    node_id: 1,
                    shard: 2,
                    shards: 2,
                }),
            ),
            (
                "leaders are recorded",
                base(),
                leaders(&[(orders_group(0), 2, 1), (orders_group(1), 2, 1)]),
                Ok(Applied::LeadersRecorded { changed: 2 }),
            ),
            (
                "a leader that is not a replica, an unknown group and a stale term are ignored",
                [base(), vec![leaders(&[(orders_group(1), 2, 5)])]].concat(),
                leaders(&[
                    (orders_group(0), 3, 1),
                    (partition_id(7, 0), 1, 1),
                    (orders_group(1), 3, 4),
                ]),
                Ok(Applied::Unchanged),
            ),
            (
                "the same leader and term again changes nothing",
                [base(), vec![leaders(&[(orders_group(1), 2, 5)])]].concat(),
                leaders(&[(orders_group(1), 2, 5)]),
                Ok(Applied::Unchanged),
            ),
            (
                "too many leader records are refused",
                base(),
                leaders(&vec![(orders_group(0), 1, 1); LEADER_RECORDS_MAX + 1]),
                Err(ApplyError::TooManyLeaderRecords {
                    count: LEADER_RECORDS_MAX + 1,
                    max: LEADER_RECORDS_MAX,
                }),
            ),
            (
                "leadership migrates to a replica",
                base(),
                migrate(0, 2),
                Ok(Applied::PreferredLeaderSet {
                    group: orders_group(0),
                    to: 2,
                }),
            ),
            (
                "migrating to the preferred leader changes nothing",
                base(),
                migrate(0, 1),
                Ok(Applied::Unchanged),
            ),
            (
                "leadership cannot migrate to a non-replica",
                base(),
                migrate(0, 3),
                Err(ApplyError::NotAReplica {
                    topic: "orders".into(),
                    partition: 0,
                    node_id: 3,
                }),
            ),
            (
                "leadership of an unknown partition",
                base(),
                migrate(9, 1),
                Err(ApplyError::UnknownPartition {
                    topic: "orders".into(),
                    partition: 9,
                    partitions: 6,
                }),
            ),
            (
                "a broker is marked failed",
                base(),
                Command::MarkBrokerFailed { node_id: 2 },
                Ok(Applied::BrokerFailed { node_id: 2 }),
            ),
            (
                "an active broker marked active changes nothing",
                base(),
                Command::MarkBrokerActive { node_id: 2 },
                Ok(Applied::Unchanged),
            ),
            (
                "a failed broker is marked active",
                [base(), vec![Command::MarkBrokerFailed { node_id: 2 }]].concat(),
                Command::MarkBrokerActive { node_id: 2 },
                Ok(Applied::BrokerActive { node_id: 2 }),
            ),
            (
                "an unknown broker cannot be marked failed",
                base(),
                Command::MarkBrokerFailed { node_id: 9 },
                Err(ApplyError::UnknownBroker { node_id: 9 }),
            ),
        ];

        for (name, before, command, expected) in cases {
            let start = build(&before);
            let mut m = start.clone();
            let index = start.applied_index + 3;
            let got = m.apply(index, &command);
            assert_eq!(got, expected, "{name}");
            assert_eq!(m.applied_index, index, "{name}: applied_index");
            assert_eq!(m.check_invariants(), Ok(()), "{name}");
            match got {
                Ok(Applied::Unchanged) | Err(_) => {
                    let mut unchanged = start.clone();
                    unchanged.applied_index = index;
                    assert_eq!(m, unchanged, "{name}: changed something");
                }
                Ok(_) => assert_eq!(m.version, start.version + 1, "{name}: version"),
            }
        }
    }

    #[test]
    fn create_topic_places_replicas_and_advances_the_cursor() {
        let mut m = build(&base());
        let orders = m.topic("orders").unwrap();
        assert_eq!(orders.partition_count(), 6);
        let firsts: Vec<NodeId> = orders
            .partitions
            .iter()
            .map(|a| a.preferred_leader)
            .collect();
        assert_eq!(firsts, vec![1, 2, 3, 1, 2, 3]);
        for (p, a) in orders.partitions.iter().enumerate() {
            assert_eq!(a.group, orders_group(p as u32));
            assert_eq!(a.replicas.len(), 2);
            assert_eq!(a.preferred_leader, a.replicas[0].node_id);
            assert_eq!(a.leader, None);
            assert_eq!(a.leader_term, 0);
        }
        assert_eq!(m.placement_cursor, 6);

        let configs = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
        let created = m.apply(
            10,
            &Command::CreateTopic {
                name: "payments".into(),
                partitions: 2,
                replication_factor: 3,
                configs: configs.clone(),
            },
        );
        assert_eq!(created, Ok(Applied::TopicCreated { id: 2 }));
        let payments = m.topic("payments").unwrap();
        assert_eq!(payments.configs, configs);
        assert_eq!(payments.replication_factor, 3);
        // Positions 6 and 7 continue the rotation: brokers 1 then 2 first,
        // on shard (6 / 3) % 2 = 0.
        assert_eq!(
            payments.partitions[0].replicas,
            replicas(&[(1, 0), (2, 0), (3, 0)])
        );
        assert_eq!(
            payments.partitions[1].replicas,
            replicas(&[(2, 0), (3, 0), (1, 0)])
        );
        assert_eq!(m.placement_cursor, 8);
        assert_eq!(m.next_topic_id, 3);
        assert_eq!(m.topic_by_id(2).map(|t| t.name.as_str()), Some("payments"));
    }

    #[test]
    fn failed_brokers_get_no_new_replicas() {
        let mut commands = base();
        commands.push(Command::MarkBrokerFailed { node_id: 2 });
        commands.push(create("t", 4, 2));
        let m = build(&commands);
        for a in &m.topic("t").unwrap().partitions {
            assert!(!a.has_replica(2), "{a:?}");
        }
    }

    #[test]
    fn deleted_topics_free_their_name_but_not_their_id() {
        let mut commands = base();
        commands.push(Command::DeleteTopic {
            name: "orders".into(),
        });
        let mut m = build(&commands);
        assert!(m.topic("orders").is_none());
        assert!(m.topic_by_id(1).is_none());
        assert!(m.assignment(orders_group(0)).is_none());
        assert_eq!(
            m.apply(20, &create("orders", 1, 1)),
            Ok(Applied::TopicCreated { id: 2 })
        );
        assert!(m.assignment(orders_group(0)).is_none());
        assert!(m.assignment(partition_id(2, 0)).is_some());
    }

    #[test]
    fn update_assignment_keeps_the_leader_only_while_it_is_a_replica() {
        let mut commands = base();
        commands.push(Command::RecordLeaders {
            leaders: vec![LeaderRecord {
                group: orders_group(0),
                leader: 2,
                term: 4,
            }],
        });
        let mut m = build(&commands);
        let group = orders_group(0);
        let update = |places: &[(NodeId, u16)]| Command::UpdateAssignment {
            topic: "orders".into(),
            partition: 0,
            replicas: replicas(places),
        };

        m.apply(10, &update(&[(3, 0), (2, 0)])).unwrap();
        let a = m.assignment(group).unwrap().2;
        assert_eq!(
            (a.preferred_leader, a.leader, a.leader_term),
            (3, Some(2), 4)
        );

        m.apply(11, &update(&[(3, 0), (1, 0)])).unwrap();
        let a = m.assignment(group).unwrap().2;
        assert_eq!((a.preferred_leader, a.leader, a.leader_term), (3, None, 4));

        // A late report from the old term stays ignored.
        let late = Command::RecordLeaders {
            leaders: vec![LeaderRecord {
                group,
                leader: 3,
                term: 3,
            }],
        };
        assert_eq!(m.apply(12, &late), Ok(Applied::Unchanged));
    }

    #[test]
    fn record_leaders_follows_terms() {
        let mut m = build(&base());
        let group = orders_group(0);
        let record = |leader, term| Command::RecordLeaders {
            leaders: vec![LeaderRecord {
                group,
                leader,
                term,
            }],
        };
        let leader = |m: &ClusterMetadata| {
            let a = m.assignment(group).unwrap().2;
            (a.leader, a.leader_term)
        };
        m.apply(10, &record(1, 2)).unwrap();
        assert_eq!(leader(&m), (Some(1), 2));
        m.apply(11, &record(2, 1)).unwrap();
        assert_eq!(leader(&m), (Some(1), 2), "an older term is ignored");
        m.apply(12, &record(2, 3)).unwrap();
        assert_eq!(leader(&m), (Some(2), 3));
        m.apply(13, &record(1, 3)).unwrap();
        assert_eq!(
            leader(&m),
            (Some(1), 3),
            "the same term may name another leader"
        );
    }

    #[test]
    fn migrate_leader_sets_the_preferred_leader_only() {
        let mut m = build(&base());
        let before = m.topic("orders").unwrap().partitions[0].clone();
        m.apply(
            10,
            &Command::MigrateLeader {
                topic: "orders".into(),
                partition: 0,
                to: 2,
            },
        )
        .unwrap();
        let after = &m.topic("orders").unwrap().partitions[0];
        assert_eq!(after.preferred_leader, 2);
        assert_eq!(after.replicas, before.replicas);
        assert_eq!(m.leader_counts()[&2], 3);
        assert_eq!(m.leader_counts()[&1], 1);
    }

    #[test]
    fn apply_refuses_an_index_that_is_not_after_the_last() {
        let mut m = build(&base());
        let before = m.clone();
        let again = Command::MarkBrokerFailed { node_id: 1 };
        for index in [0, 3, before.applied_index] {
            assert_eq!(
                m.apply(index, &again),
                Err(ApplyError::StaleIndex {
                    index,
                    applied_index: before.applied_index
                })
            );
            assert_eq!(m, before);
        }
        // Gaps (entries that are not commands) are fine.
        assert!(m.apply(before.applied_index + 10, &again).is_ok());
    }

    #[test]
    fn errors_map_to_wire_codes_and_say_what_to_do() {
        let cases = [
            (
                ApplyError::TopicExists { name: "t".into() },
                ErrorCode::TopicAlreadyExists,
            ),
            (
                ApplyError::UnknownTopic { name: "t".into() },
                ErrorCode::UnknownTopic,
            ),
            (
                ApplyError::UnknownPartition {
                    topic: "t".into(),
                    partition: 1,
                    partitions: 1,
                },
                ErrorCode::UnknownPartition,
            ),
            (
                ApplyError::InvalidTopicName { name: "/".into() },
                ErrorCode::InvalidTopicName,
            ),
            (
                ApplyError::InvalidPartitions { asked: 0, max: 1 },
                ErrorCode::InvalidPartitions,
            ),
            (
                ApplyError::InvalidReplicationFactor { asked: 4, live: 3 },
                ErrorCode::InvalidReplicationFactor,
            ),
            (
                ApplyError::UnknownBroker { node_id: 1 },
                ErrorCode::InvalidBroker,
            ),
            (
                ApplyError::NotAReplica {
                    topic: "t".into(),
                    partition: 0,
                    node_id: 1,
                },
                ErrorCode::InvalidBroker,
            ),
            (
                ApplyError::IncarnationMismatch {
                    node_id: 1,
                    registered: 2,
                    offered: 3,
                },
                ErrorCode::InvalidBroker,
            ),
            (
                ApplyError::StaleIndex {
                    index: 1,
                    applied_index: 1,
                },
                ErrorCode::InvalidRequest,
            ),
            (ApplyError::TopicIdsExhausted, ErrorCode::InvalidRequest),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }

        let wiped = ApplyError::IncarnationMismatch {
            node_id: 4,
            registered: 17,
            offered: 23,
        };
        assert_eq!(
            wiped.to_string(),
            "broker 4 was registered with incarnation 17 but came back with 23: its data \
             directory was wiped or replaced, or another broker uses id 4; restore the data \
             directory, or give the new broker an id the cluster has not seen"
        );
        let rf = ApplyError::InvalidReplicationFactor { asked: 5, live: 3 };
        assert_eq!(
            rf.to_string(),
            "replication factor 5 is not possible with 3 active brokers: it must be at least 1, \
             at most the number of active brokers and at most 16; lower it, or start more brokers"
        );
        let shrunk = ApplyError::ShardsShrunk {
            node_id: 2,
            shards: 1,
            shards_needed: 4,
        };
        assert_eq!(
            shrunk.to_string(),
            "broker 2 came back with 1 shards but holds replicas on shards up to 3: start it \
             with at least 4 shards, or move those replicas first"
        );
    }

    #[test]
    fn topic_ids_run_out_without_wrapping() {
        let mut m = build(&base()[..1]);
        m.next_topic_id = u32::MAX;
        let before = m.clone();
        assert_eq!(
            m.apply(5, &create("t", 1, 1)),
            Err(ApplyError::TopicIdsExhausted)
        );
        assert_eq!(m.topics, before.topics);
        assert_eq!(m.next_topic_id, u32::MAX);
    }

    #[test]
    fn the_same_commands_give_the_same_metadata() {
        let mut commands = base();
        commands.extend([
            Command::RegisterBroker(registration(4, 3)),
            create("payments", 5, 3),
            Command::MarkBrokerFailed { node_id: 1 },
            create("audit", 3, 2),
            Command::RecordLeaders {
                leaders: vec![LeaderRecord {
                    group: partition_id(2, 1),
                    leader: 1,
                    term: 2,
                }],
            },
            Command::MigrateLeader {
                topic: "payments".into(),
                partition: 1,
                to: 2,
            },
            Command::DeleteTopic {
                name: "orders".into(),
            },
            Command::MarkBrokerActive { node_id: 1 },
        ]);
        let a = build(&commands);
        let b = build(&commands);
        assert_eq!(a, b);
        assert_eq!(a.version, commands.len() as u64);
    }

    /// A command from a small universe, weighted so that random sequences
    /// take both the accepted and the refused paths of every rule.
    fn any_command() -> impl Strategy<Value = Command> {
        let node = 0..5i32;
        let new_topic = prop::sample::select(vec!["a", "b", "bad/name"]);
        let topic = prop::sample::select(vec!["a", "a", "b", "b", "c"]);
        // Distinct brokers most of the time, any list sometimes.
        let places = prop_oneof![
            3 => (Just((0..5i32).collect::<Vec<_>>()).prop_shuffle(), 1usize..4, 0u16..2)
                .prop_map(|(nodes, len, shard)| {
                    nodes[..len].iter().map(|&n| (n, shard)).collect::<Vec<_>>()
                }),
            1 => prop::collection::vec((node.clone(), 0u16..4), 0..4),
        ];
        prop_oneof![
            3 => (node.clone(), 0u16..4, any::<bool>(), 9000u16..9003).prop_map(
                |(node_id, shards, same_incarnation, base_port)| {
                    Command::RegisterBroker(BrokerRegistration {
                        node_id,
                        inter_broker_addr: format!("n{node_id}:{base_port}"),
                        client_host: format!("n{node_id}"),
                        client_port: 9092,
                        shard_ports: (0..shards).map(|s| base_port + s).collect(),
                        incarnation: if same_incarnation {
                            registration(node_id, 1).incarnation
                        } else {
                            7
                        },
                    })
                }
            ),
            3 => (new_topic, 0u32..6, 0u16..4).prop_map(|(name, partitions, rf)| {
                Command::CreateTopic {
                    name: name.into(),
                    partitions,
                    replication_factor: rf,
                    configs: BTreeMap::new(),
                }
            }),
            1 => topic.clone().prop_map(|name| Command::DeleteTopic { name: name.into() }),
            3 => (topic.clone(), 0u32..4, places).prop_map(|(topic, partition, places)| {
                Command::UpdateAssignment {
                    topic: topic.into(),
                    partition,
                    replicas: replicas(&places),
                }
            }),
            3 => prop::collection::vec((1u32..6, 0u32..4, node.clone(), 0u64..6), 0..6)
                .prop_map(|records| Command::RecordLeaders {
                    leaders: records
                        .into_iter()
                        .map(|(topic_id, p, leader, term)| LeaderRecord {
                            group: partition_id(topic_id, p),
                            leader,
                            term,
                        })
                        .collect(),
                }),
            2 => (topic, 0u32..4, node.clone()).prop_map(|(topic, partition, to)| {
                Command::MigrateLeader {
                    topic: topic.into(),
                    partition,
                    to,
                }
            }),
            1 => node.clone().prop_map(|node_id| Command::MarkBrokerFailed { node_id }),
            1 => node.prop_map(|node_id| Command::MarkBrokerActive { node_id }),
        ]
    }

    /// Mostly a few brokers and a topic first, so that the commands that
    /// follow find something to change; then anything.
    fn any_sequence() -> impl Strategy<Value = Vec<Command>> {
        let brokers =
            prop::sample::subsequence((0..5i32).collect::<Vec<_>>(), 0..5).prop_map(|nodes| {
                nodes
                    .into_iter()
                    .map(|n| Command::RegisterBroker(registration(n, 2)))
                    .collect::<Vec<_>>()
            });
        (
            brokers,
            1u32..4,
            prop::collection::vec(any_command(), 1..80),
        )
            .prop_map(|(brokers, partitions, rest)| {
                [brokers, vec![create("a", partitions, 1)], rest].concat()
            })
    }

    proptest! {
        #[test]
        fn random_commands_keep_every_invariant(commands in any_sequence()) {
            let mut m = ClusterMetadata::new();
            let mut replay = ClusterMetadata::new();
            for (i, command) in commands.iter().enumerate() {
                let index = i as u64 + 1;
                let version = m.version;
                let result = m.apply(index, command);
                prop_assert_eq!(m.check_invariants(), Ok(()), "after {:?}", command);
                prop_assert_eq!(m.applied_index, index);
                match &result {
                    Ok(Applied::Unchanged) | Err(_) => prop_assert_eq!(m.version, version),
                    Ok(_) => prop_assert_eq!(m.version, version + 1),
                }
                if let Err(error) = &result {
                    prop_assert!(!error.to_string().is_empty());
                }
                // Another broker applying the same command gets the same
                // outcome and the same metadata.
                prop_assert_eq!(replay.apply(index, &Command::decode(&command.encode()).unwrap()), result);
                prop_assert_eq!(&replay, &m);
            }
        }
    }
}
