//! The messages shards exchange over the channel mesh, and
//! [`ShardRouter`], which runs a partition operation on the shard that owns
//! the partition: here, or on another shard by message.
//!
//! Mesh peer ids follow glommio's executor ids, not shard indexes; each
//! shard announces its index in a [`ShardMsg::Hello`] when the mesh is
//! built, and the router translates.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use shardmq_schema::protocol::{Acks, ErrorCode, OffsetSpec};
use shardmq_storage::PartitionId;

use super::raft_service::{LeadershipReport, RaftService, ReplicaStatus};
use super::service::{FetchArgs, FetchResult, ListOffsetsResult, ProduceResult, ServiceError};
use super::view::ClusterView;
use crate::metrics::ShardMetrics;

/// Messages between the shards of one broker.
#[derive(Debug)]
pub enum ShardMsg {
    /// Sent once to every peer when the mesh is built.
    Hello {
        /// The sender's shard index.
        shard: u16,
        /// The port of the sender's own listener.
        shard_port: u16,
        /// The client port, as bound by shard 0 (0 from other shards).
        client_port: u16,
    },
    /// A partition operation for the receiver, which owns the partition.
    Op {
        /// What to do.
        op: PartitionOp,
        /// Where the outcome goes; dropped by the sender when it no longer
        /// waits (a long-poll that ended early).
        reply: oneshot::Sender<OpReply>,
    },
    /// A metadata change for shard 0, which runs the controller replica.
    Admin {
        /// What to change.
        op: AdminOp,
        /// One outcome per item, in order.
        reply: oneshot::Sender<Vec<Result<(), ServiceError>>>,
    },
    /// A new cluster view from shard 0: reconcile this shard's replicas
    /// with it, then reply.
    View {
        /// The view.
        view: Arc<ClusterView>,
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), ServiceError>>,
    },
    /// Leaderships this shard's replicas took, for shard 0 to record in
    /// the controller.
    Reports {
        /// The leaderships.
        reports: Vec<LeadershipReport>,
    },
    /// The state of the receiver's replicas of `groups` (all with `None`).
    Describe {
        /// The partitions asked about.
        groups: Option<std::collections::HashSet<u64>>,
        /// The replicas.
        reply: oneshot::Sender<Vec<ReplicaStatus>>,
    },
    /// The sender has stopped serving clients and will forward nothing
    /// more.
    Drained,
}

/// An operation on one partition.
#[derive(Debug)]
pub enum PartitionOp {
    /// [`RaftService::produce`].
    Produce {
        /// The partition.
        partition: PartitionId,
        /// Acks asked.
        acks: Acks,
        /// The record batch, a slice of the request frame.
        batch: Bytes,
    },
    /// [`RaftService::fetch`].
    Fetch {
        /// The partition.
        partition: PartitionId,
        /// Where and how much.
        args: FetchArgs,
    },
    /// [`RaftService::list_offsets`].
    ListOffsets {
        /// The partition.
        partition: PartitionId,
        /// What to look up.
        spec: OffsetSpec,
        /// With spec Timestamp.
        timestamp_ms: i64,
    },
}

/// The outcome of a [`PartitionOp`].
#[derive(Debug)]
pub enum OpReply {
    /// Of a produce.
    Produce(Result<ProduceResult, ServiceError>),
    /// Of a fetch.
    Fetch(Result<FetchResult, ServiceError>),
    /// Of a list-offsets.
    ListOffsets(Result<ListOffsetsResult, ServiceError>),
}

/// A topic to create, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopicSpec {
    /// Name.
    pub name: String,
    /// Partitions; -1 for the default.
    pub partitions: i32,
    /// Replication factor; -1 for the default.
    pub replication_factor: i16,
    /// Configuration overrides.
    pub configs: std::collections::BTreeMap<String, String>,
}

/// A metadata change, executed by shard 0 through the controller.
#[derive(Debug)]
pub enum AdminOp {
    /// Create topics.
    Create {
        /// The topics.
        topics: Vec<NewTopicSpec>,
        /// Check only.
        validate_only: bool,
        /// How long to wait for the new partitions' leaders (0: not at all).
        timeout_ms: u32,
    },
    /// Delete topics.
    Delete {
        /// Their names.
        names: Vec<String>,
    },
    /// Move a partition's leadership to the replica on `to`.
    TransferLeader {
        /// The topic.
        topic: String,
        /// The partition index.
        partition: u32,
        /// The node that should lead.
        to: i32,
        /// How long to wait for it to lead (0: not at all).
        timeout_ms: u32,
    },
}

/// Runs a [`PartitionOp`] on `service`, the owning shard's, counting it in
/// that shard's per-partition `metrics`.
pub async fn execute(service: &RaftService, metrics: &ShardMetrics, op: PartitionOp) -> OpReply {
    match op {
        PartitionOp::Produce {
            partition,
            acks,
            batch,
        } => {
            metrics.partition_op(partition, true, batch.len());
            OpReply::Produce(service.produce(partition, acks, batch).await)
        }
        PartitionOp::Fetch { partition, args } => {
            let result = service.fetch(partition, args).await;
            let bytes = result.as_ref().map_or(0, |r| r.records.len());
            metrics.partition_op(partition, false, bytes);
            OpReply::Fetch(result)
        }
        PartitionOp::ListOffsets {
            partition,
            spec,
            timestamp_ms,
        } => OpReply::ListOffsets(service.list_offsets(partition, spec, timestamp_ms).await),
    }
}

fn stopping() -> ServiceError {
    ServiceError::new(
        ErrorCode::BrokerShuttingDown,
        "the owning shard is not reachable (stopping)",
    )
}

/// Sends messages to other shards by shard index. Shard view: one per
/// shard, `!Send`.
#[derive(Debug)]
pub struct ShardRouter {
    shard: u16,
    senders: Senders<ShardMsg>,
    /// Mesh peer id of each shard index (filled by the hellos).
    peer_of_shard: RefCell<Vec<Option<usize>>>,
    hellos: Cell<usize>,
}

impl ShardRouter {
    /// The router of `shard` over the mesh `senders`.
    pub fn new(shard: u16, shards: usize, senders: Senders<ShardMsg>) -> Self {
        let mut peer_of_shard = vec![None; shards];
        peer_of_shard[usize::from(shard)] = Some(senders.peer_id());
        Self {
            shard,
            senders,
            peer_of_shard: RefCell::new(peer_of_shard),
            hellos: Cell::new(0),
        }
    }

    /// This shard's index.
    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.senders.nr_consumers()
    }

    /// Sends the hello to every peer.
    pub async fn say_hello(&self, shard_port: u16, client_port: u16) -> Result<(), ServiceError> {
        for peer in 0..self.senders.nr_consumers() {
            if peer == self.senders.peer_id() {
                continue;
            }
            let hello = ShardMsg::Hello {
                shard: self.shard,
                shard_port,
                client_port,
            };
            self.senders
                .send_to(peer, hello)
                .await
                .map_err(|_| stopping())?;
        }
        Ok(())
    }

    /// Records a peer's hello; true once every peer has said it.
    pub fn hello_from(&self, peer: usize, shard: u16) -> bool {
        if let Some(slot) = self.peer_of_shard.borrow_mut().get_mut(usize::from(shard)) {
            if slot.replace(peer).is_none() {
                self.hellos.set(self.hellos.get() + 1);
            }
        }
        self.hellos.get() + 1 >= self.shards()
    }

    /// Sends `msg` to shard `shard` (not this one).
    pub async fn send(&self, shard: u16, msg: ShardMsg) -> Result<(), ServiceError> {
        let peer = self
            .peer_of_shard
            .borrow()
            .get(usize::from(shard))
            .copied()
            .flatten()
            .ok_or_else(stopping)?;
        self.senders
            .send_to(peer, msg)
            .await
            .map_err(|_| stopping())
    }

    /// Tells every other shard that this one is drained.
    pub async fn broadcast_drained(&self) {
        for shard in 0..self.shards() as u16 {
            if shard != self.shard {
                // A peer already gone does not need to know.
                let _ = self.send(shard, ShardMsg::Drained).await;
            }
        }
    }

    /// Runs `op` on shard `owner`: here with `service`, else by message.
    pub async fn run(
        &self,
        service: &RaftService,
        metrics: &ShardMetrics,
        owner: u16,
        op: PartitionOp,
    ) -> OpReply {
        if owner == self.shard {
            return execute(service, metrics, op).await;
        }
        let (reply, receive) = oneshot::channel();
        let kind = match &op {
            PartitionOp::Produce { .. } => 0,
            PartitionOp::Fetch { .. } => 1,
            PartitionOp::ListOffsets { .. } => 2,
        };
        let failed = |error: ServiceError| match kind {
            0 => OpReply::Produce(Err(error)),
            1 => OpReply::Fetch(Err(error)),
            _ => OpReply::ListOffsets(Err(error)),
        };
        if let Err(error) = self.send(owner, ShardMsg::Op { op, reply }).await {
            return failed(error);
        }
        match receive.await {
            Ok(reply) => reply,
            Err(_) => failed(stopping()),
        }
    }

    /// Asks shard 0 to change the metadata.
    pub async fn admin(&self, op: AdminOp) -> Result<Vec<Result<(), ServiceError>>, ServiceError> {
        let (reply, receive) = oneshot::channel();
        self.send(0, ShardMsg::Admin { op, reply }).await?;
        receive.await.map_err(|_| stopping())
    }

    /// Sends `view` to shard `shard` and waits until it applied it.
    pub async fn push_view(&self, shard: u16, view: Arc<ClusterView>) -> Result<(), ServiceError> {
        let (reply, receive) = oneshot::channel();
        self.send(shard, ShardMsg::View { view, reply }).await?;
        receive.await.map_err(|_| stopping())?
    }

    /// The state of shard `shard`'s replicas of `groups`.
    pub async fn describe(
        &self,
        shard: u16,
        groups: Option<std::collections::HashSet<u64>>,
    ) -> Result<Vec<ReplicaStatus>, ServiceError> {
        let (reply, receive) = oneshot::channel();
        self.send(shard, ShardMsg::Describe { groups, reply })
            .await?;
        receive.await.map_err(|_| stopping())
    }
}
