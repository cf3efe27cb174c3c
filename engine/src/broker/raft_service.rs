//! [`RaftService`]: the replicas of one shard served through Raft. Every
//! partition replica the cluster metadata places on this (broker, shard) is
//! a raft-rs group member driven by the shard's one [`ShardLoop`] (shard 0
//! also drives the controller's replica there); the partition's message log
//! is its Raft log in the shard's `ShardLog`.
//!
//! - produce proposes the batch on the leader; acks All answers once the
//!   entry commits (durable on a majority of the replicas), acks Leader
//!   once the leader appended it, before its own sync, both with the base
//!   offset storage gave the batch; acks None answers as soon as the
//!   proposal is accepted. A replica that does not lead answers NotLeader
//!   with the leader it knows of;
//! - fetch and list-offsets are answered by a leader whose high watermark
//!   covers an entry of its own term (before that it may trail the
//!   group's, and the high watermark must never move back; raft's commit
//!   index alone is not enough, since the watermark follows it only after
//!   the loop's iteration), and, with
//!   `allow_follower`, by a follower up to the commit it knows; nobody sees
//!   past the commit index;
//! - [`apply_view`](RaftService::apply_view) creates, re-addresses and
//!   removes replicas as the cluster metadata says;
//! - the driver task ([`RaftService::run`]) runs the shard loop: ticks every
//!   `[raft] tick_ms`, iterates whenever there is input, and turns the
//!   loop's events into watermarks, leadership reports and, on shard 0,
//!   the controller's applied commands.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardmq_net::Shutdown;
use shardmq_schema::protocol::{Acks, ErrorCode, OffsetSpec};
use shardmq_storage::{PartitionId, ShardLog, StorageError};

use super::service::{
    batch_error, check_batch, now_ms, storage_error, FetchArgs, FetchResult, ListOffsetsResult,
    ProduceLimits, ProduceResult, ServiceError, Visible, Watermark,
};
use super::transport::PeerTransport;
use super::view::ClusterView;
use crate::config::RaftConfig;
use crate::metrics::{LatencyHistogram, ShardMetrics};
use crate::raft::{
    Dest, GroupId, GroupKind, GroupMembers, LoopEvent, NodeId, RaftError, ReplicaConfig, ShardLoop,
    ShardLoopConfig, StateRole, CONTROLLER_GROUP,
};

/// Exit code of a broker whose shard log failed.
pub const EXIT_STORAGE_FAILED: i32 = 4;

/// The raft id of node `node_id`'s replicas. raft-rs reserves 0, which is
/// a valid node id, so ids are shifted by one.
pub fn raft_id(node_id: NodeId) -> u64 {
    u64::from(node_id.unsigned_abs()) + 1
}

/// The node of raft id `id` (the inverse of [`raft_id`]).
pub fn node_of(id: u64) -> Option<NodeId> {
    id.checked_sub(1).and_then(|n| NodeId::try_from(n).ok())
}

/// The shard loop settings `[raft]` asks for.
pub fn loop_config(cfg: &RaftConfig) -> ShardLoopConfig {
    ShardLoopConfig {
        replica: ReplicaConfig {
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            check_quorum: cfg.check_quorum,
            pre_vote: cfg.pre_vote,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            // Each partition keeps at most the replica default (4 MiB) of
            // the shard-wide `[raft] entry_cache_bytes_max`.
            entry_cache_bytes_max: usize::try_from(cfg.entry_cache_bytes_max)
                .unwrap_or(usize::MAX)
                .min(ReplicaConfig::default().entry_cache_bytes_max),
            ..ReplicaConfig::default()
        },
        entry_cache_budget: usize::try_from(cfg.entry_cache_bytes_max).unwrap_or(usize::MAX),
        tick_interval: Duration::from_millis(cfg.tick_ms),
        ..ShardLoopConfig::default()
    }
}

/// The client's error for a Raft refusal. NotLeader and refusals of
/// proposals known not to be committed are retriable without duplicating
/// the batch; an outcome that is unknown is RequestTimedOut, which a
/// producer must not retry blindly.
pub(crate) fn raft_error(error: RaftError) -> ServiceError {
    match error {
        RaftError::NotLeader { leader, .. } => ServiceError::not_leader(
            leader.and_then(node_of),
            "this replica does not lead the partition",
        ),
        RaftError::ProposalDropped { reason, .. } if reason.is_backpressure() => {
            ServiceError::new(ErrorCode::Throttled, error.to_string())
        }
        RaftError::ProposalDropped { reason, .. } if reason.known_not_committed() => {
            ServiceError::new(ErrorCode::NotLeader, error.to_string())
        }
        RaftError::ProposalDropped { .. } => {
            ServiceError::new(ErrorCode::RequestTimedOut, error.to_string())
        }
        RaftError::BadBatch { source, .. } => batch_error(source),
        RaftError::UnknownPartition(_) => ServiceError::new(
            ErrorCode::UnknownPartition,
            "no replica of the partition on this shard",
        ),
        RaftError::Storage(error) => storage_error(error),
        RaftError::Raft(error) => ServiceError::new(ErrorCode::Unknown, format!("raft: {error}")),
    }
}

fn stopping() -> ServiceError {
    ServiceError::new(ErrorCode::BrokerShuttingDown, "the shard is stopping")
}

/// One replica's state as DescribeReplicas reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub group: GroupId,
    pub role: StateRole,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub first_index: u64,
    pub last_index: u64,
    pub commit_index: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub log_end_offset: u64,
}

/// What the layer above wants to hear from the loop's events on shard 0:
/// the controller's applied commands and leadership.
pub trait ControllerSink {
    /// Events of the controller group, in order.
    fn on_controller_event(&self, event: LoopEvent);
}

/// A leadership this shard's replica took (it leads and has committed in
/// its term), to be recorded by the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeadershipReport {
    pub group: GroupId,
    pub leader: NodeId,
    pub term: u64,
}

/// The Raft-backed partition service of one shard. Shard view: owned by
/// one shard, `!Send`; start [`run`](Self::run) beside it.
pub struct RaftService {
    log: ShardLog,
    raft: ShardLoop<PeerTransport>,
    node_id: NodeId,
    shard: u16,
    limits: ProduceLimits,
    /// Committed end per partition: what readers may see.
    visible: Visible,
    /// The view the replicas were last reconciled with.
    view: RefCell<Arc<ClusterView>>,
    /// Leaderships taken since the reporter last looked.
    reports: RefCell<Vec<LeadershipReport>>,
    /// When each partition led here first saw its preferred leader ready
    /// to take over (automatic rebalance waits a while).
    rebalance_since: RefCell<HashMap<GroupId, Instant>>,
    rebalance_delay: Option<Duration>,
    controller: RefCell<Option<Rc<dyn ControllerSink>>>,
    metrics: Arc<ShardMetrics>,
    /// Serialises [`apply_view`](Self::apply_view) calls.
    view_lock: glommio::sync::Semaphore,
    /// Tells the driver to stop.
    stop: Cell<bool>,
    /// Triggered when the driver has stopped (asked to, or failed).
    stopped: Shutdown,
    closing: Shutdown,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService")
            .field("node_id", &self.node_id)
            .field("shard", &self.shard)
            .field("raft", &self.raft)
            .finish_non_exhaustive()
    }
}

/// Watermark of a replica just opened: what its log holds up to the
/// persisted commit (committed, and durable here).
fn open_mark(log: &ShardLog, partition: PartitionId) -> Result<Watermark, StorageError> {
    let first = log.first_index(partition)?;
    let last = log.last_index(partition)?;
    let commit = log.hard_state(partition)?.commit.clamp(first - 1, last);
    Ok(Watermark {
        offset: log.offset_after(partition, commit)?,
        index: commit,
    })
}

impl RaftService {
    /// The service of shard `shard` over `log`, with no replica yet (they
    /// come with the first [`apply_view`](Self::apply_view)).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        log: ShardLog,
        node_id: NodeId,
        shard: u16,
        cfg: &RaftConfig,
        rebalance_delay: Option<Duration>,
        limits: ProduceLimits,
        transport: PeerTransport,
        metrics: Arc<ShardMetrics>,
    ) -> Rc<Self> {
        let commit_latency: Arc<LatencyHistogram> = Arc::clone(&metrics.commit_latency);
        let raft = ShardLoop::new(log.clone(), transport, loop_config(cfg))
            .with_commit_latency(commit_latency);
        Rc::new(Self {
            log,
            raft,
            node_id,
            shard,
            limits,
            visible: Visible::new(HashMap::new()),
            view: RefCell::new(Arc::new(ClusterView::default())),
            reports: RefCell::new(Vec::new()),
            rebalance_since: RefCell::new(HashMap::new()),
            rebalance_delay,
            controller: RefCell::new(None),
            metrics,
            view_lock: glommio::sync::Semaphore::new(1),
            stop: Cell::new(false),
            stopped: Shutdown::new(),
            closing: Shutdown::new(),
        })
    }

    /// The shard loop (the controller proposes through it; status queries).
    pub fn shard_loop(&self) -> &ShardLoop<PeerTransport> {
        &self.raft
    }

    /// The shard log.
    pub fn log(&self) -> &ShardLog {
        &self.log
    }

    /// This shard's index.
    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// Sends the controller group's events to `sink` (shard 0).
    pub fn set_controller(&self, sink: Rc<dyn ControllerSink>) {
        *self.controller.borrow_mut() = Some(sink);
    }

    /// Whether the driver has stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_triggered()
    }

    /// Drives the shard loop until [`close`](Self::close). Runs as a task
    /// of the shard. A storage failure stops the process (exit code
    /// [`EXIT_STORAGE_FAILED`]): the log is poisoned and nothing more can be
    /// made durable.
    pub async fn run(self: Rc<Self>) {
        let mut events = Vec::new();
        let result = self
            .raft
            .run(&self.stop, |report| {
                if report.readies > 0 {
                    self.raft.take_events(&mut events);
                    self.on_events(&mut events);
                }
            })
            .await;
        if let Err(error) = result {
            // The shard log failed (an i/o error poisons it): nothing more
            // can be made durable here, and a replica that cannot persist
            // must not go on answering Raft. The whole broker stops, so its
            // replicas' groups elect leaders elsewhere and the operator sees
            // why.
            tracing::error!(shard = self.shard, %error, "raft shard loop failed; stopping the broker");
            eprintln!(
                "shardmq-broker: shard {}: the shard log failed: {error}; stopping",
                self.shard
            );
            std::process::exit(EXIT_STORAGE_FAILED);
        }
        self.stopped.trigger();
    }

    fn on_events(&self, events: &mut Vec<LoopEvent>) {
        let mut moved = false;
        let mut roles_changed = false;
        for event in events.drain(..) {
            let group = match &event {
                LoopEvent::Leadership { group, .. }
                | LoopEvent::Committed { group, .. }
                | LoopEvent::Applied { group, .. }
                | LoopEvent::SnapshotInstalled { group, .. } => *group,
            };
            if group == CONTROLLER_GROUP {
                if let Some(sink) = self.controller.borrow().clone() {
                    sink.on_controller_event(event);
                }
                continue;
            }
            match event {
                LoopEvent::Committed { group, index } => {
                    if let Ok(offset) = self.log.offset_after(group, index) {
                        moved |= self.visible.raise(group, Watermark { offset, index });
                    }
                }
                LoopEvent::SnapshotInstalled { group, point } => {
                    moved |= self.visible.raise(
                        group,
                        Watermark {
                            offset: point.first_offset,
                            index: point.index,
                        },
                    );
                }
                LoopEvent::Leadership {
                    group,
                    term,
                    serving,
                    ..
                } => {
                    roles_changed = true;
                    if serving {
                        self.reports.borrow_mut().push(LeadershipReport {
                            group,
                            leader: self.node_id,
                            term,
                        });
                    }
                }
                LoopEvent::Applied { .. } => {}
            }
        }
        if moved {
            self.visible.notify();
        }
        // The counts walk every replica: only when a role changed.
        if roles_changed {
            self.update_counts();
        }
    }

    fn update_counts(&self) {
        let mut partitions = 0u64;
        let mut leaders = 0u64;
        self.raft.for_each_replica(|g, r| {
            if g != CONTROLLER_GROUP {
                partitions += 1;
                leaders += u64::from(r.is_leader());
            }
        });
        self.metrics.partitions.store(partitions, Ordering::Relaxed);
        self.metrics.leaders.store(leaders, Ordering::Relaxed);
    }

    /// Takes the leaderships reported since the last call.
    pub fn take_reports(&self) -> Vec<LeadershipReport> {
        std::mem::take(&mut *self.reports.borrow_mut())
    }

    /// Every partition this shard leads with a commit of its term, as the
    /// reports the controller should have: the reporter re-sends those the
    /// metadata does not show (a report lost to a controller failover).
    pub fn leading(&self) -> Vec<LeadershipReport> {
        let mut out = Vec::new();
        self.raft.for_each_replica(|g, r| {
            if g != CONTROLLER_GROUP && r.leads_with_commit() {
                out.push(LeadershipReport {
                    group: g,
                    leader: self.node_id,
                    term: r.term(),
                });
            }
        });
        out
    }

    /// Opens the controller replica (shard 0): `voters` and `learners` are
    /// node ids, each on its shard 0.
    pub async fn add_controller(
        &self,
        voters: &[NodeId],
        learners: &[NodeId],
    ) -> Result<(), ServiceError> {
        let place = |n: &NodeId| (raft_id(*n), Dest { node: *n, shard: 0 });
        let members = GroupMembers {
            voters: voters.iter().map(place).collect(),
            learners: learners.iter().map(place).collect(),
        };
        self.raft
            .add_replica(
                CONTROLLER_GROUP,
                raft_id(self.node_id),
                members,
                GroupKind::StateMachine,
            )
            .await
            .map_err(raft_error)?;
        if voters == [self.node_id] {
            // The only voter: no one to wait for.
            let _ = self.raft.campaign(CONTROLLER_GROUP);
        }
        Ok(())
    }

    /// Reconciles the replicas of this shard with `view`: creates those it
    /// places here (a new partition's preferred leader campaigns at once),
    /// updates where peers live, and removes replicas of deleted topics and
    /// of partitions moved away. Leaders whose preferred leader changed
    /// hand leadership over.
    pub async fn apply_view(&self, view: Arc<ClusterView>) -> Result<(), ServiceError> {
        let Ok(_permit) = self.view_lock.acquire_permit(1).await else {
            return Err(stopping());
        };
        let old = self.view.replace(view.clone());
        if old.metadata.version > view.metadata.version {
            // An older view arrived late: keep the newer one.
            *self.view.borrow_mut() = old;
            return Ok(());
        }
        let me = self.node_id;
        // Brokers the controller marked failed: groups asleep here with
        // their leader there tick again.
        for broker in view.metadata.brokers.values() {
            if !broker.is_active() {
                self.raft.wake_followers_of(broker.node_id);
            }
        }
        let mut wanted: HashSet<GroupId> = HashSet::new();
        for (_topic, _index, assignment) in view.metadata.replicas_on(me, self.shard) {
            wanted.insert(assignment.group);
            let members = GroupMembers {
                voters: assignment
                    .replicas
                    .iter()
                    .map(|r| {
                        (
                            raft_id(r.node_id),
                            Dest {
                                node: r.node_id,
                                shard: r.shard,
                            },
                        )
                    })
                    .collect(),
                learners: Vec::new(),
            };
            let group = assignment.group;
            if self.raft.has_group(group) {
                self.raft.set_members(group, members);
            } else {
                if self.closing.is_triggered() {
                    return Err(stopping());
                }
                let fresh = !self.log.partitions().contains(&group);
                self.raft
                    .add_replica(group, raft_id(me), members, GroupKind::Partition)
                    .await
                    .map_err(raft_error)?;
                self.visible
                    .insert_if_absent(group, open_mark(&self.log, group).map_err(storage_error)?);
                if assignment.replicas.len() == 1 || (fresh && assignment.preferred_leader == me) {
                    // A replica alone in its group, or a new partition's
                    // preferred leader, does not wait out an election
                    // timeout (pre-vote keeps an early campaign from
                    // disturbing a group that has a leader).
                    let _ = self.raft.campaign(group);
                }
            }
        }
        // Replicas the metadata no longer places here. A partition of a
        // topic id the metadata has not reached yet (this broker's view is
        // behind) is kept.
        let next_topic_id = view.metadata.next_topic_id;
        let mut stale = Vec::new();
        for group in self.raft.groups() {
            if group == CONTROLLER_GROUP || wanted.contains(&group) {
                continue;
            }
            if (group >> 32) < u64::from(next_topic_id) {
                stale.push(group);
            }
        }
        for group in self.log.partitions() {
            if group != CONTROLLER_GROUP
                && !wanted.contains(&group)
                && (group >> 32) < u64::from(next_topic_id)
                && !stale.contains(&group)
            {
                stale.push(group);
            }
        }
        for group in stale {
            self.remove_partition(group).await?;
        }
        self.rebalance(&old, &view);
        self.update_counts();
        Ok(())
    }

    async fn remove_partition(&self, group: GroupId) -> Result<(), ServiceError> {
        self.visible.remove(group);
        self.raft.remove_replica(group).await;
        self.rebalance_since.borrow_mut().remove(&group);
        match self.log.remove_partition(group).await {
            Ok(()) | Err(StorageError::UnknownPartition(_)) => {}
            Err(error) => return Err(storage_error(error)),
        }
        self.log.sync().await.map_err(storage_error)?;
        self.visible.notify();
        tracing::info!(shard = self.shard, group, "replica removed");
        Ok(())
    }

    /// Hands leadership of partitions led here to their preferred leader:
    /// at once when the controller's preferred leader changed (an
    /// operator's transfer), after the rebalance delay otherwise (the
    /// preferred broker came back), and only to a replica that has the
    /// whole log and a broker the controller sees active.
    fn rebalance(&self, old: &ClusterView, view: &ClusterView) {
        let me = self.node_id;
        let now = Instant::now();
        let mut since = self.rebalance_since.borrow_mut();
        for (_topic, _index, a) in view.metadata.replicas_on(me, self.shard) {
            let preferred = a.preferred_leader;
            let group = a.group;
            let leading = self
                .raft
                .with_replica(group, |r| r.leads_with_commit())
                .unwrap_or(false);
            if preferred == me || !leading {
                since.remove(&group);
                continue;
            }
            let active = view
                .metadata
                .brokers
                .get(&preferred)
                .is_some_and(|b| matches!(b.status, crate::controller::BrokerStatus::Active));
            let caught_up = self
                .raft
                .with_replica(group, |r| {
                    r.matched(raft_id(preferred)) == Some(r.last_index())
                })
                .unwrap_or(false);
            if !active || !caught_up {
                since.remove(&group);
                continue;
            }
            let changed = old
                .metadata
                .assignment(group)
                .is_some_and(|(_, _, o)| o.preferred_leader != preferred);
            let due = changed
                || match self.rebalance_delay {
                    None => false,
                    Some(delay) => {
                        let first = *since.entry(group).or_insert(now);
                        now.duration_since(first) >= delay
                    }
                };
            if due {
                since.remove(&group);
                tracing::info!(
                    group,
                    to = preferred,
                    "handing leadership to the preferred leader"
                );
                let _ = self.raft.transfer_leader(group, raft_id(preferred));
            }
        }
    }

    /// Re-checks automatic rebalancing (called periodically by the shard).
    pub fn rebalance_tick(&self) {
        let view = self.view.borrow().clone();
        self.rebalance(&view, &view);
    }

    /// Whether this replica may serve leader reads of `partition`; the
    /// client's error otherwise.
    fn check_leader(&self, partition: PartitionId) -> Result<(), ServiceError> {
        let mark = self.visible.get(partition)?;
        let state = self.raft.with_replica(partition, |r| {
            (r.serves_up_to(mark.index), r.is_leader(), r.leader_id())
        });
        match state {
            None => Err(ServiceError::new(
                ErrorCode::UnknownPartition,
                "no replica of the partition on this shard",
            )),
            Some((true, _, _)) => Ok(()),
            Some((false, true, _)) => Err(ServiceError::new(
                ErrorCode::LeaderNotAvailable,
                "the new leader's high watermark does not yet cover an entry of its term",
            )),
            Some((false, false, leader)) => Err(ServiceError::not_leader(
                leader.and_then(node_of),
                "this replica does not lead the partition",
            )),
        }
    }

    /// Appends one record batch, answering once `acks` is met. With acks
    /// None the result is still returned (the handler sends nothing).
    pub async fn produce(
        &self,
        partition: PartitionId,
        acks: Acks,
        batch: Bytes,
    ) -> Result<ProduceResult, ServiceError> {
        if self.closing.is_triggered() || self.stopped.is_triggered() {
            return Err(stopping());
        }
        self.visible.get(partition)?;
        let offsets = check_batch(&self.limits, &batch)?;
        let waiter = self
            .raft
            .produce(partition, &batch, acks == Acks::Leader)
            .map_err(raft_error)?;
        // The leader appends the batch in the shard loop's next iteration.
        let log_append_time_ms = now_ms();
        let log_start_offset = || {
            self.log
                .log_start_offset(partition)
                .map_or(-1, |o| o as i64)
        };
        if acks == Acks::None {
            // Nobody reads the answer; the waiter is dropped and the entry
            // commits all the same.
            return Ok(ProduceResult {
                base_offset: -1,
                log_append_time_ms,
                log_start_offset: log_start_offset(),
            });
        }
        let committed = async { Some(waiter.await) };
        let stopped = async {
            self.stopped.listen().await;
            None
        };
        let ack = match futures_lite::future::or(committed, stopped).await {
            Some(result) => result.map_err(raft_error)?,
            // Proposed, then the shard stopped: the entry may still commit.
            None => return Err(ServiceError::new(
                ErrorCode::RequestTimedOut,
                "the shard stopped while the batch was being replicated; it may still be committed",
            )),
        };
        // What committed is visible now, even before the driver publishes
        // (acks Leader answered at the append: not committed yet).
        if acks == Acks::All
            && self.visible.raise(
                partition,
                Watermark {
                    offset: ack.base_offset + u64::from(offsets),
                    index: ack.index,
                },
            )
        {
            self.visible.notify();
        }
        Ok(ProduceResult {
            base_offset: ack.base_offset as i64,
            log_append_time_ms,
            log_start_offset: log_start_offset(),
        })
    }

    /// Reads from `args.offset`, never past the commit, waiting up to
    /// `args.wait_until` when nothing is there yet.
    pub async fn fetch(
        &self,
        partition: PartitionId,
        args: FetchArgs,
    ) -> Result<FetchResult, ServiceError> {
        if !args.allow_follower {
            self.check_leader(partition)?;
        }
        self.visible.fetch(&self.log, partition, args).await
    }

    /// The leader this shard's replica of `group` follows (or is), with
    /// its term, when it knows one: newer than the controller's record
    /// right after an election, before the new leader is recorded.
    pub fn known_leader(&self, group: GroupId) -> Option<(NodeId, u64)> {
        self.raft
            .with_replica(group, |r| Some((node_of(r.leader_id()?)?, r.term())))
            .flatten()
    }

    /// For a fetch of `partition` from `offset`: the empty answer when
    /// there is nothing new to read now, checked without a read or a task;
    /// `None` when the fetch must run (records, or an error to report).
    pub fn nothing_new(
        &self,
        partition: PartitionId,
        offset: i64,
        allow_follower: bool,
    ) -> Option<FetchResult> {
        if !allow_follower && self.check_leader(partition).is_err() {
            return None;
        }
        self.visible.nothing_new(&self.log, partition, offset)
    }

    /// Waits until `ready` holds, checking it after each move of a
    /// watermark of this shard, until `deadline` or the shard stops;
    /// returns whether it held.
    pub async fn wait_until(&self, deadline: Instant, ready: impl FnMut() -> bool) -> bool {
        self.visible.wait_until(deadline, ready).await
    }

    /// Looks up an offset by position or timestamp (on the leader).
    pub async fn list_offsets(
        &self,
        partition: PartitionId,
        spec: OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<ListOffsetsResult, ServiceError> {
        self.check_leader(partition)?;
        self.visible
            .list_offsets(&self.log, partition, spec, timestamp_ms)
            .await
    }

    /// The state of this shard's replicas of `groups` (all with `None`).
    pub fn describe(&self, groups: Option<&HashSet<GroupId>>) -> Vec<ReplicaStatus> {
        let mut out = Vec::new();
        self.raft.for_each_replica(|g, r| {
            if g == CONTROLLER_GROUP || groups.is_some_and(|want| !want.contains(&g)) {
                return;
            }
            let mark = self.visible.get(g).unwrap_or_default();
            out.push(ReplicaStatus {
                group: g,
                role: r.role(),
                term: r.term(),
                leader: r.leader_id().and_then(node_of),
                first_index: self.log.first_index(g).unwrap_or(0),
                last_index: r.last_index(),
                commit_index: r.commit_index(),
                high_watermark: mark.offset,
                log_start_offset: self.log.log_start_offset(g).unwrap_or(0),
                log_end_offset: self.log.next_offset(g).unwrap_or(0),
            });
        });
        out
    }

    /// Per-partition replication state for the metrics: for every group
    /// led here, each follower's lag in entries.
    pub fn follower_lags(&self) -> BTreeMap<GroupId, Vec<(NodeId, u64)>> {
        let mut out = BTreeMap::new();
        self.raft.for_each_replica(|g, r| {
            if g == CONTROLLER_GROUP || !r.is_leader() {
                return;
            }
            let last = r.last_index();
            let lags: Vec<(NodeId, u64)> = r
                .progress()
                .into_iter()
                .filter(|(id, _)| *id != r.id())
                .filter_map(|(id, matched)| Some((node_of(id)?, last.saturating_sub(matched))))
                .collect();
            out.insert(g, lags);
        });
        out
    }

    /// Partitions this shard holds, and how many of them it leads.
    pub fn counts(&self) -> (u64, u64) {
        let mut n = 0;
        let mut leaders = 0;
        self.raft.for_each_replica(|g, r| {
            if g != CONTROLLER_GROUP {
                n += 1;
                leaders += u64::from(r.is_leader());
            }
        });
        (n, leaders)
    }

    /// The partitions this shard holds a replica of.
    pub fn partitions(&self) -> Vec<PartitionId> {
        self.raft
            .groups()
            .into_iter()
            .filter(|g| *g != CONTROLLER_GROUP)
            .collect()
    }

    /// The first index of `partition` that retention must keep: nothing at
    /// or after it may be dropped. `None` when the partition is not served
    /// here.
    pub fn retain_from(&self, partition: PartitionId) -> Option<u64> {
        // Entries raft has not applied may still be read by it; followers
        // that fall behind the retained prefix restart from the compaction
        // point (the store's snapshot).
        let applied = self.raft.with_replica(partition, |r| r.applied_index())?;
        let visible = self.visible.get(partition).ok()?.index;
        Some(applied.min(visible) + 1)
    }

    /// Ends every fetch waiting for data (each answers with what there
    /// is), now and from now on.
    pub fn end_waits(&self) {
        self.visible.end_waits();
    }

    /// Stops the driver, makes everything durable and refuses further
    /// work.
    pub async fn close(&self) -> Result<(), ServiceError> {
        self.visible.end_waits();
        self.closing.trigger();
        self.stop.set(true);
        self.raft.wake();
        self.stopped.listen().await;
        self.log.sync().await.map_err(storage_error)?;
        self.log.close().await.map_err(storage_error)
    }
}
