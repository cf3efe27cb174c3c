//! [`ClusterView`]: what a shard knows of the cluster. Shard 0 makes a new
//! one after every controller change it applies (or a change of the
//! controller's leader) and sends it to every shard; a shard routes,
//! answers Metadata and reconciles its replicas from its latest view.
//!
//! Cluster view, made on shard 0, immutable once made, held in an `Arc`.

use shardmq_schema::protocol::ErrorCode;

use super::service::ServiceError;
use crate::controller::{BrokerInfo, ClusterMetadata, NodeId, PartitionAssignment, TopicInfo};

/// The cluster as a broker last learned it.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// The cluster's id.
    pub cluster_id: String,
    /// The metadata as applied by this broker's controller replica.
    pub metadata: ClusterMetadata,
    /// The controller's leader, as this broker knows it.
    pub controller_leader: Option<NodeId>,
    /// The controller group's term, as this broker knows it.
    pub controller_term: u64,
    /// The controller's voters.
    pub voters: Vec<NodeId>,
}

/// Where a partition's leader is, for a `LeaderHint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderPlace {
    pub node_id: NodeId,
    pub host: String,
    pub shard: u16,
    pub shard_port: u16,
    pub epoch: u64,
}

impl ClusterView {
    /// The topic and partition `p`, or the error a client gets.
    pub fn locate(
        &self,
        topic: &str,
        p: i32,
    ) -> Result<(&TopicInfo, &PartitionAssignment), ServiceError> {
        let meta = self.metadata.topic(topic).ok_or_else(|| {
            ServiceError::new(ErrorCode::UnknownTopic, format!("no topic named {topic:?}"))
        })?;
        let assignment = usize::try_from(p)
            .ok()
            .and_then(|i| meta.partitions.get(i))
            .ok_or_else(|| {
                ServiceError::new(
                    ErrorCode::UnknownPartition,
                    format!(
                        "topic {topic:?} has partitions 0..{}, not {p}",
                        meta.partitions.len()
                    ),
                )
            })?;
        Ok((meta, assignment))
    }

    /// A broker's record.
    pub fn broker(&self, node: NodeId) -> Option<&BrokerInfo> {
        self.metadata.brokers.get(&node)
    }

    /// Where `node`'s replica of `assignment` lives and how to reach it.
    pub fn place_of(&self, assignment: &PartitionAssignment, node: NodeId) -> Option<LeaderPlace> {
        let replica = assignment.replica_on(node)?;
        let broker = self.broker(node)?;
        Some(LeaderPlace {
            node_id: node,
            host: broker.client_host.clone(),
            shard: replica.shard,
            shard_port: broker
                .shard_port(replica.shard)
                .unwrap_or(broker.client_port),
            epoch: assignment.leader_term,
        })
    }

    /// The leader of `assignment` to tell a client about: `known` (what the
    /// replica that answered knows), else the one the controller recorded.
    pub fn leader_place(
        &self,
        assignment: &PartitionAssignment,
        known: Option<NodeId>,
    ) -> Option<LeaderPlace> {
        let node = known.or(assignment.leader)?;
        self.place_of(assignment, node)
    }
}
