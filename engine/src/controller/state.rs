//! The cluster metadata: brokers, topics and where every partition's
//! replicas live.
//!
//! Every type here is part of a cluster view: shard 0 of each broker (the
//! controller) holds the current [`ClusterMetadata`] and changes it only
//! through [`ClusterMetadata::apply`]; the other shards receive it read-only
//! after every change. All collections are `BTreeMap`s or `Vec`s, so
//! iteration order, and with it everything derived from the metadata, is the
//! same on every broker.

use std::collections::BTreeMap;

use super::limits;

/// A broker's id in the cluster, as in its config (`broker.node_id`, at
/// least 0).
pub type NodeId = i32;

/// The id of partition `partition` of topic `topic_id`: its Raft group id
/// and its shard-log id.
pub fn partition_id(topic_id: u32, partition: u32) -> u64 {
    (u64::from(topic_id) << 32) | u64::from(partition)
}

/// Whether the controller considers a broker alive. Cluster view, held on
/// shard 0 and pushed read-only to the other shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum BrokerStatus {
    /// Heard from within the session timeout; new replicas may be placed on
    /// it.
    Active,
    /// Not heard from within the session timeout; no new replicas are
    /// placed on it, its existing ones stay where they are.
    Failed,
}

/// What a broker tells the controller about itself when it starts.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct BrokerRegistration {
    /// The broker's id.
    pub node_id: NodeId,
    /// `host:port` of the inter-broker listener of its shard 0; shard `s`
    /// listens on `port + s`.
    pub inter_broker_addr: String,
    /// Host name or address clients connect to.
    pub client_host: String,
    /// The client port every shard binds (SO_REUSEPORT).
    pub client_port: u16,
    /// The client port of each shard, by shard index; its length is the
    /// broker's shard count (at least 1).
    pub shard_ports: Vec<u16>,
    /// A random id made when the broker's data directory was created: a
    /// broker that comes back with another one lost its data.
    pub incarnation: u64,
}

/// One registered broker. Cluster view, held on shard 0 (the controller)
/// and pushed read-only to the other shards.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct BrokerInfo {
    /// The broker's id.
    pub node_id: NodeId,
    /// `host:port` of the inter-broker listener of its shard 0; shard `s`
    /// listens on `port + s`.
    pub inter_broker_addr: String,
    /// Host name or address clients connect to.
    pub client_host: String,
    /// The client port every shard binds.
    pub client_port: u16,
    /// The client port of each shard, by shard index.
    pub shard_ports: Vec<u16>,
    /// The incarnation it registered with.
    pub incarnation: u64,
    /// Whether the controller considers it alive.
    pub status: BrokerStatus,
}

impl BrokerInfo {
    /// Its number of shards: the length of `shard_ports`, at most
    /// [`limits::SHARDS_PER_BROKER_MAX`] once registered.
    pub fn shards(&self) -> u16 {
        u16::try_from(self.shard_ports.len()).unwrap_or(u16::MAX)
    }

    /// The client port of `shard`, if the broker has that shard.
    pub fn shard_port(&self, shard: u16) -> Option<u16> {
        self.shard_ports.get(usize::from(shard)).copied()
    }

    /// Whether it is [`BrokerStatus::Active`].
    pub fn is_active(&self) -> bool {
        self.status == BrokerStatus::Active
    }
}

/// One replica of a partition: the broker and the shard of it that holds
/// it. Cluster view, held on shard 0 and pushed read-only to the other
/// shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ReplicaPlace {
    /// The broker.
    pub node_id: NodeId,
    /// The shard (core) of that broker that owns the replica.
    pub shard: u16,
}

/// Where one partition lives and who leads it. Cluster view, held on shard
/// 0 and pushed read-only to the other shards.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct PartitionAssignment {
    /// The partition's Raft group id, [`partition_id`]`(topic id, index)`.
    pub group: u64,
    /// The replicas (the Raft group's voters), on distinct brokers.
    pub replicas: Vec<ReplicaPlace>,
    /// The replica the controller wants to lead: leaders are moved back to
    /// it when its broker returns. One of `replicas`.
    pub preferred_leader: NodeId,
    /// The leader last recorded by `RecordLeaders`; `None` until one is.
    /// One of `replicas` when set. It may lag the Raft group's real leader.
    pub leader: Option<NodeId>,
    /// The Raft term in which `leader` was recorded (0 before any); older
    /// terms are ignored.
    pub leader_term: u64,
}

impl PartitionAssignment {
    /// Whether `node` holds a replica.
    pub fn has_replica(&self, node: NodeId) -> bool {
        self.replicas.iter().any(|r| r.node_id == node)
    }

    /// The replica on `node`, if it holds one.
    pub fn replica_on(&self, node: NodeId) -> Option<&ReplicaPlace> {
        self.replicas.iter().find(|r| r.node_id == node)
    }
}

/// One topic. Cluster view, held on shard 0 and pushed read-only to the
/// other shards.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// Its id, never reused: the high 32 bits of its partitions' ids.
    pub id: u32,
    /// Replicas per partition asked for at creation.
    pub replication_factor: u16,
    /// Its partitions, by index.
    pub partitions: Vec<PartitionAssignment>,
    /// Configuration overrides as given at creation.
    pub configs: BTreeMap<String, String>,
}

impl TopicInfo {
    /// Its number of partitions.
    pub fn partition_count(&self) -> u32 {
        u32::try_from(self.partitions.len()).unwrap_or(u32::MAX)
    }

    /// Partition `index`, if the topic has it.
    pub fn partition(&self, index: u32) -> Option<&PartitionAssignment> {
        self.partitions.get(usize::try_from(index).ok()?)
    }
}

/// The whole cluster's metadata, as of one controller log index. Cluster
/// view: shard 0 of every broker (the controller) holds it and applies the
/// committed commands; the other shards receive each new version read-only.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ClusterMetadata {
    /// Incremented by every applied command that changed something.
    pub version: u64,
    /// Raft index of the last applied command, refused ones included.
    pub applied_index: u64,
    /// The id the next topic gets. Starts at 1: with id 0, partition 0 of
    /// topic 0 would be group 0, the controller's.
    pub next_topic_id: u32,
    /// Advanced by each new topic's partition count, so placements of
    /// successive topics continue one rotation over brokers and shards.
    pub placement_cursor: u64,
    /// Registered brokers by id.
    pub brokers: BTreeMap<NodeId, BrokerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicInfo>,
    /// Topic names by id.
    pub topic_names: BTreeMap<u32, String>,
}

impl Default for ClusterMetadata {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterMetadata {
    /// The metadata of a cluster before its first command: no brokers, no
    /// topics, version 0.
    pub fn new() -> Self {
        Self {
            version: 0,
            applied_index: 0,
            next_topic_id: 1,
            placement_cursor: 0,
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            topic_names: BTreeMap::new(),
        }
    }

    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name)
    }

    /// The topic of id `id`.
    pub fn topic_by_id(&self, id: u32) -> Option<&TopicInfo> {
        self.topics.get(self.topic_names.get(&id)?)
    }

    /// The partition whose Raft group is `group`: its topic, its index and
    /// its assignment. `None` for the controller group and for partitions of
    /// deleted topics.
    pub fn assignment(&self, group: u64) -> Option<(&TopicInfo, u32, &PartitionAssignment)> {
        let topic_id = u32::try_from(group >> 32).ok()?;
        let index = (group & u64::from(u32::MAX)) as u32;
        let topic = self.topic_by_id(topic_id)?;
        let assignment = topic.partition(index)?;
        Some((topic, index, assignment))
    }

    /// Every partition with a replica on shard `shard` of broker `node`, by
    /// topic name then index.
    pub fn replicas_on(
        &self,
        node: NodeId,
        shard: u16,
    ) -> impl Iterator<Item = (&TopicInfo, u32, &PartitionAssignment)> + '_ {
        self.partitions().filter(move |(_, _, a)| {
            a.replicas
                .iter()
                .any(|r| r.node_id == node && r.shard == shard)
        })
    }

    /// Every partition of every topic, by topic name then index.
    pub fn partitions(&self) -> impl Iterator<Item = (&TopicInfo, u32, &PartitionAssignment)> + '_ {
        self.topics.values().flat_map(|topic| {
            topic
                .partitions
                .iter()
                .enumerate()
                .map(move |(index, a)| (topic, index as u32, a))
        })
    }

    /// Registered brokers that are [`BrokerStatus::Active`], by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerInfo> + '_ {
        self.brokers.values().filter(|b| b.is_active())
    }

    /// How many partitions each registered broker is the preferred leader
    /// of, every registered broker included (with 0 when it prefers none).
    pub fn leader_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> =
            self.brokers.keys().map(|&node| (node, 0)).collect();
        for (_, _, a) in self.partitions() {
            *counts.entry(a.preferred_leader).or_insert(0) += 1;
        }
        counts
    }

    /// The number of partitions of all topics.
    pub fn partition_total(&self) -> u64 {
        self.topics
            .values()
            .map(|t| t.partitions.len() as u64)
            .sum()
    }

    /// Checks every invariant [`ClusterMetadata::apply`] maintains: keys
    /// match their values, topic ids are below `next_topic_id` and index
    /// `topic_names` one to one, each partition's group is its id, its
    /// replicas are distinct registered brokers on shards they have, its
    /// preferred and recorded leaders are replicas, and every limit of
    /// [`limits`] holds. Run on every loaded snapshot; O(size of the
    /// metadata).
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let fail = |what: String| Err(InvariantError(what));
        if self.next_topic_id == 0 {
            return fail("next_topic_id is 0".into());
        }
        if self.brokers.len() > limits::BROKERS_MAX {
            return fail(format!("{} brokers", self.brokers.len()));
        }
        for (&node, broker) in &self.brokers {
            if broker.node_id != node || node < 0 {
                return fail(format!("broker key {node} holds node {}", broker.node_id));
            }
            if broker.shard_ports.is_empty()
                || broker.shard_ports.len() > limits::SHARDS_PER_BROKER_MAX
            {
                return fail(format!(
                    "broker {node} has {} shards",
                    broker.shard_ports.len()
                ));
            }
        }
        if self.topics.len() != self.topic_names.len() || self.topics.len() > limits::TOPICS_MAX {
            return fail(format!(
                "{} topics but {} topic ids",
                self.topics.len(),
                self.topic_names.len()
            ));
        }
        let mut partition_total = 0u64;
        for (name, topic) in &self.topics {
            if &topic.name != name {
                return fail(format!("topic key {name:?} holds topic {:?}", topic.name));
            }
            if topic.id == 0 || topic.id >= self.next_topic_id {
                return fail(format!(
                    "topic {name:?} has id {} (next id {})",
                    topic.id, self.next_topic_id
                ));
            }
            if self.topic_names.get(&topic.id) != Some(name) {
                return fail(format!("topic id {} does not name {name:?}", topic.id));
            }
            let count = topic.partitions.len();
            if count == 0 || count > limits::PARTITIONS_PER_TOPIC_MAX as usize {
                return fail(format!("topic {name:?} has {count} partitions"));
            }
            partition_total += count as u64;
            for (index, a) in topic.partitions.iter().enumerate() {
                let index = index as u32;
                let at = || format!("topic {name:?} partition {index}");
                if a.group != partition_id(topic.id, index) {
                    return fail(format!("{} has group {}", at(), a.group));
                }
                if a.replicas.is_empty()
                    || a.replicas.len() > usize::from(limits::REPLICATION_FACTOR_MAX)
                {
                    return fail(format!("{} has {} replicas", at(), a.replicas.len()));
                }
                for (i, r) in a.replicas.iter().enumerate() {
                    if a.replicas[..i].iter().any(|o| o.node_id == r.node_id) {
                        return fail(format!("{} has two replicas on {}", at(), r.node_id));
                    }
                    match self.brokers.get(&r.node_id) {
                        None => {
                            return fail(format!(
                                "{} has a replica on unknown broker {}",
                                at(),
                                r.node_id
                            ))
                        }
                        Some(b) if r.shard >= b.shards() => {
                            return fail(format!(
                                "{} has a replica on shard {} of broker {} ({} shards)",
                                at(),
                                r.shard,
                                r.node_id,
                                b.shards()
                            ))
                        }
                        Some(_) => {}
                    }
                }
                if !a.has_replica(a.preferred_leader) {
                    return fail(format!(
                        "{} prefers {}, not a replica",
                        at(),
                        a.preferred_leader
                    ));
                }
                if let Some(leader) = a.leader {
                    if !a.has_replica(leader) {
                        return fail(format!("{} is led by {leader}, not a replica", at()));
                    }
                }
            }
        }
        if partition_total > limits::CLUSTER_PARTITIONS_MAX {
            return fail(format!("{partition_total} partitions in all"));
        }
        if self
            .topic_names
            .iter()
            .any(|(id, name)| self.topics.get(name).map(|t| t.id) != Some(*id))
        {
            return fail("topic_names disagrees with topics".into());
        }
        Ok(())
    }
}

/// A broken invariant of [`ClusterMetadata`], named by
/// [`ClusterMetadata::check_invariants`]. Metadata built only by `apply`
/// never has one; one in a loaded snapshot means the snapshot was written by
/// a faulty build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster metadata is inconsistent: {0}")]
pub struct InvariantError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(node_id: NodeId, shards: u16) -> BrokerInfo {
        BrokerInfo {
            node_id,
            inter_broker_addr: format!("10.0.0.{node_id}:9100"),
            client_host: format!("10.0.0.{node_id}"),
            client_port: 9092,
            shard_ports: (0..shards).map(|s| 9200 + s).collect(),
            incarnation: 7,
            status: BrokerStatus::Active,
        }
    }

    fn metadata() -> ClusterMetadata {
        let mut m = ClusterMetadata::new();
        m.brokers.insert(1, broker(1, 2));
        m.brokers.insert(2, broker(2, 2));
        let place = |node_id, shard| ReplicaPlace { node_id, shard };
        let topic = TopicInfo {
            name: "orders".into(),
            id: 1,
            replication_factor: 2,
            partitions: vec![
                PartitionAssignment {
                    group: partition_id(1, 0),
                    replicas: vec![place(1, 0), place(2, 0)],
                    preferred_leader: 1,
                    leader: Some(2),
                    leader_term: 3,
                },
                PartitionAssignment {
                    group: partition_id(1, 1),
                    replicas: vec![place(2, 1), place(1, 1)],
                    preferred_leader: 2,
                    leader: None,
                    leader_term: 0,
                },
            ],
            configs: BTreeMap::new(),
        };
        m.topic_names.insert(1, "orders".into());
        m.topics.insert("orders".into(), topic);
        m.next_topic_id = 2;
        m
    }

    #[test]
    fn partition_ids_put_the_topic_in_the_high_bits() {
        assert_eq!(partition_id(1, 0), 1 << 32);
        assert_eq!(partition_id(3, 7), (3 << 32) | 7);
        assert_eq!(partition_id(u32::MAX, u32::MAX), u64::MAX);
        assert_ne!(partition_id(1, 0), super::super::CONTROLLER_GROUP);
    }

    #[test]
    fn new_metadata_is_empty_and_starts_topic_ids_at_one() {
        let m = ClusterMetadata::new();
        assert_eq!(m.version, 0);
        assert_eq!(m.next_topic_id, 1);
        assert_eq!(m, ClusterMetadata::default());
        assert_eq!(m.check_invariants(), Ok(()));
    }

    #[test]
    fn lookups_find_topics_partitions_and_replicas() {
        let m = metadata();
        assert_eq!(m.check_invariants(), Ok(()));
        assert_eq!(m.topic("orders").map(|t| t.id), Some(1));
        assert_eq!(m.topic_by_id(1).map(|t| t.name.as_str()), Some("orders"));
        assert!(m.topic_by_id(2).is_none());

        let (topic, index, a) = m.assignment(partition_id(1, 1)).unwrap();
        assert_eq!(
            (topic.name.as_str(), index, a.preferred_leader),
            ("orders", 1, 2)
        );
        assert!(m.assignment(partition_id(1, 2)).is_none());
        assert!(m.assignment(partition_id(2, 0)).is_none());
        assert!(m.assignment(super::super::CONTROLLER_GROUP).is_none());

        let on =
            |node, shard| -> Vec<u32> { m.replicas_on(node, shard).map(|(_, i, _)| i).collect() };
        assert_eq!(on(1, 0), vec![0]);
        assert_eq!(on(1, 1), vec![1]);
        assert_eq!(on(2, 1), vec![1]);
        assert!(on(3, 0).is_empty());

        assert_eq!(m.leader_counts(), BTreeMap::from([(1, 1), (2, 1)]));
        assert_eq!(m.partition_total(), 2);
    }

    #[test]
    fn live_brokers_skips_failed_ones() {
        let mut m = metadata();
        m.brokers.get_mut(&1).unwrap().status = BrokerStatus::Failed;
        let live: Vec<NodeId> = m.live_brokers().map(|b| b.node_id).collect();
        assert_eq!(live, vec![2]);
        assert_eq!(m.brokers[&2].shards(), 2);
        assert_eq!(m.brokers[&2].shard_port(1), Some(9201));
        assert_eq!(m.brokers[&2].shard_port(2), None);
    }

    #[test]
    fn check_invariants_names_what_is_broken() {
        type Break = fn(&mut ClusterMetadata);
        let cases: &[(&str, Break)] = &[
            ("two replicas on", |m| {
                m.topics.get_mut("orders").unwrap().partitions[0].replicas[1].node_id = 1
            }),
            ("unknown broker", |m| {
                m.brokers.remove(&2);
            }),
            ("shard 2", |m| {
                m.topics.get_mut("orders").unwrap().partitions[0].replicas[0].shard = 2
            }),
            ("prefers", |m| {
                m.topics.get_mut("orders").unwrap().partitions[0].preferred_leader = 5
            }),
            ("led by", |m| {
                m.topics.get_mut("orders").unwrap().partitions[0].leader = Some(5)
            }),
            ("group", |m| {
                m.topics.get_mut("orders").unwrap().partitions[1].group = 0
            }),
            ("next id", |m| m.next_topic_id = 1),
            ("topic ids", |m| {
                m.topic_names.clear();
            }),
            ("0 partitions", |m| {
                m.topics.get_mut("orders").unwrap().partitions.clear()
            }),
        ];
        for (needle, break_it) in cases {
            let mut m = metadata();
            break_it(&mut m);
            let error = m.check_invariants().unwrap_err();
            assert!(error.to_string().contains(needle), "{needle}: {error}");
        }
    }
}
