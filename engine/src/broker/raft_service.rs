//! [`RaftService`]: the partitions of a shard served through Raft. Each
//! partition is a single-voter raft-rs group (its one voter is this node),
//! every group of the shard is driven by the shard's one [`ShardLoop`], and
//! the partition's message log is its Raft log in the shard's `ShardLog`.
//!
//! - produce proposes the batch; acks All answers once the entry commits
//!   (synced on a majority: with one voter, this node's sync), acks Leader
//!   once the leader appended it, before that sync, both with the base
//!   offset storage gave the batch; acks None answers as soon as the
//!   proposal is accepted;
//! - fetch and list-offsets see the committed entries only: the high
//!   watermark is the offset after the last committed entry;
//! - on start every partition the shard log holds gets its replica back
//!   and campaigns; the shard serves once each leads again.
//!
//! The driver task ([`RaftService::run`]) ticks every `[raft] tick_ms`,
//! runs an iteration whenever there is input (a produce wakes it) and
//! sleeps otherwise.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::sync::Semaphore;
use shardmq_net::Shutdown;
use shardmq_schema::protocol::{Acks, ErrorCode, OffsetSpec};
use shardmq_storage::{PartitionId, ShardLog, StorageError};

use super::service::{
    batch_error, check_batch, now_ms, storage_error, FetchArgs, FetchResult, ListOffsetsResult,
    PartitionService, ProduceLimits, ProduceResult, ServiceError, Visible, Watermark,
};
use crate::config::RaftConfig;
use crate::metrics::LatencyHistogram;
use crate::raft::eraftpb::Message;
use crate::raft::{RaftError, ReplicaConfig, ShardLoop, ShardLoopConfig, Transport};

/// How long start-up and partition creation wait for a new replica to
/// lead before giving up.
const LEADERSHIP_WAIT: Duration = Duration::from_secs(30);

/// The transport of groups whose only voter is this node: there is no one
/// to send to, so a message (there should be none) is dropped.
#[derive(Debug, Default)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, partition: PartitionId, msgs: Vec<Message>) {
        for msg in msgs {
            tracing::debug!(partition, to = msg.to, "raft message with no peer dropped");
        }
    }
}

/// The raft id of node `node_id`'s replicas. raft-rs reserves 0, which is
/// a valid node id, so ids are shifted by one.
pub fn raft_id(node_id: i32) -> u64 {
    u64::from(node_id.unsigned_abs()) + 1
}

/// The shard loop settings `[raft]` asks for.
pub fn loop_config(cfg: &RaftConfig) -> ShardLoopConfig {
    ShardLoopConfig {
        replica: ReplicaConfig {
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            // `[raft] entry_cache_bytes_max` is a shard-wide budget, which
            // nothing enforces yet; meanwhile each partition keeps at most
            // the smaller of it and the replica default (4 MiB).
            entry_cache_bytes_max: usize::try_from(cfg.entry_cache_bytes_max)
                .unwrap_or(usize::MAX)
                .min(ReplicaConfig::default().entry_cache_bytes_max),
            ..ReplicaConfig::default()
        },
        tick_interval: Duration::from_millis(cfg.tick_ms),
        ..ShardLoopConfig::default()
    }
}

fn raft_error(error: RaftError) -> ServiceError {
    match error {
        RaftError::NotLeader { leader, .. } => ServiceError::new(
            ErrorCode::NotLeader,
            format!("not the leader (leader: {leader:?})"),
        ),
        RaftError::ProposalDropped {
            why: "proposal queue full",
            ..
        } => ServiceError::new(ErrorCode::Throttled, error.to_string()),
        RaftError::ProposalDropped { .. } => {
            ServiceError::new(ErrorCode::NotLeader, error.to_string())
        }
        RaftError::BadBatch { source, .. } => batch_error(source),
        RaftError::UnknownPartition(_) => {
            ServiceError::new(ErrorCode::UnknownPartition, "partition not on this shard")
        }
        RaftError::Storage(error) => storage_error(error),
        RaftError::Raft(error) => ServiceError::new(ErrorCode::Unknown, format!("raft: {error}")),
    }
}

fn stopping() -> ServiceError {
    ServiceError::new(ErrorCode::BrokerShuttingDown, "the shard is stopping")
}

/// The Raft-backed partition service of one shard. Shard view: owned by
/// one shard, `!Send`; start [`run`](Self::run) beside it.
pub struct RaftService {
    log: ShardLog,
    raft: ShardLoop<NoPeers>,
    raft_id: u64,
    limits: ProduceLimits,
    tick: Duration,
    /// Committed end per partition.
    visible: Visible,
    /// Held by the driver across an iteration, and by whoever adds or
    /// removes a replica (never while an iteration runs).
    loop_lock: Semaphore,
    /// Notified after every iteration (leadership waits).
    iterated: event_listener::Event,
    /// Tells the driver to stop.
    stop: Cell<bool>,
    /// Triggered when the driver has stopped (asked to, or failed).
    stopped: Shutdown,
    closing: Shutdown,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService")
            .field("raft_id", &self.raft_id)
            .field("raft", &self.raft)
            .finish_non_exhaustive()
    }
}

impl RaftService {
    /// The service over `log`: gives every partition the log holds its
    /// replica back and has it campaign. Spawn [`run`](Self::run), then
    /// call [`wait_leading`](Self::wait_leading) before serving.
    pub async fn open(
        log: ShardLog,
        node_id: i32,
        cfg: &RaftConfig,
        limits: ProduceLimits,
        commit_latency: Arc<LatencyHistogram>,
    ) -> Result<Rc<Self>, ServiceError> {
        let raft_id = raft_id(node_id);
        let raft = ShardLoop::new(log.clone(), NoPeers, loop_config(cfg))
            .with_commit_latency(commit_latency);
        let mut marks = HashMap::new();
        for partition in log.partitions() {
            raft.add_replica(partition, raft_id, &[raft_id])
                .await
                .map_err(raft_error)?;
            raft.campaign(partition).map_err(raft_error)?;
            marks.insert(partition, Self::start_mark(&log, partition)?);
        }
        Ok(Rc::new(Self {
            log,
            raft,
            raft_id,
            limits,
            tick: Duration::from_millis(cfg.tick_ms),
            visible: Visible::new(marks),
            loop_lock: Semaphore::new(1),
            iterated: event_listener::Event::new(),
            stop: Cell::new(false),
            stopped: Shutdown::new(),
            closing: Shutdown::new(),
        }))
    }

    /// Visible before the replica leads: nothing past the log start.
    fn start_mark(log: &ShardLog, partition: PartitionId) -> Result<Watermark, ServiceError> {
        Ok(Watermark {
            offset: log.log_start_offset(partition).map_err(storage_error)?,
            index: log.first_index(partition).map_err(storage_error)? - 1,
        })
    }

    /// The shard loop (status queries).
    pub fn shard_loop(&self) -> &ShardLoop<NoPeers> {
        &self.raft
    }

    /// Drives the shard loop until [`close`](PartitionService::close):
    /// ticks every `tick_ms`, iterates while there is input, sleeps
    /// otherwise. Runs as a task of the shard.
    pub async fn run(self: Rc<Self>) {
        let mut next_tick = Instant::now() + self.tick;
        while !self.stop.get() {
            let now = Instant::now();
            while now >= next_tick {
                self.raft.tick();
                next_tick += self.tick;
            }
            let report = {
                let Ok(_permit) = self.loop_lock.acquire_permit(1).await else {
                    break;
                };
                self.raft.process().await
            };
            let report = match report {
                Ok(report) => report,
                Err(error) => {
                    // The log is poisoned: nothing more can be made durable.
                    tracing::error!(%error, "raft shard loop failed");
                    break;
                }
            };
            if report.readies > 0 {
                self.publish();
            }
            self.iterated.notify(usize::MAX);
            if !report.did_work() && !self.raft.has_pending_input() {
                self.raft
                    .wait_for_input(next_tick.saturating_duration_since(Instant::now()))
                    .await;
            }
        }
        self.stopped.trigger();
        self.iterated.notify(usize::MAX);
    }

    /// Moves each partition's watermark to its commit: when every entry
    /// the log holds is committed, the log's end is visible.
    fn publish(&self) {
        let mut moved = false;
        for partition in self.visible.partitions() {
            let Some(commit) = self.raft.with_replica(partition, |r| r.commit_index()) else {
                continue;
            };
            let (Ok(last), Ok(next)) = (
                self.log.last_index(partition),
                self.log.next_offset(partition),
            ) else {
                continue;
            };
            if commit >= last {
                moved |= self.visible.raise(
                    partition,
                    Watermark {
                        offset: next,
                        index: last,
                    },
                );
            }
        }
        if moved {
            self.visible.notify();
        }
    }

    /// Whether `partition`'s replica leads and has committed its log.
    fn leads(&self, partition: PartitionId) -> bool {
        self.raft
            .with_replica(partition, |r| {
                r.is_leader() && r.commit_index() >= r.last_index()
            })
            .unwrap_or(false)
    }

    /// Waits until the replica of each of `partitions` leads, or
    /// [`LEADERSHIP_WAIT`] passes.
    async fn wait_leading_of(&self, partitions: &[PartitionId]) -> Result<(), ServiceError> {
        let deadline = Instant::now() + LEADERSHIP_WAIT;
        loop {
            let listener = self.iterated.listen();
            if partitions.iter().all(|p| self.leads(*p)) {
                self.publish();
                return Ok(());
            }
            if self.stopped.is_triggered() {
                return Err(stopping());
            }
            if Instant::now() >= deadline {
                return Err(ServiceError::new(
                    ErrorCode::LeaderNotAvailable,
                    format!("no leader within {LEADERSHIP_WAIT:?}"),
                ));
            }
            let timer = async {
                glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now()))
                    .await;
            };
            futures_lite::future::or(listener, timer).await;
        }
    }

    /// Waits until every replica leads again (start-up, with
    /// [`run`](Self::run) spawned).
    pub async fn wait_leading(&self) -> Result<(), ServiceError> {
        let partitions = self.raft.partitions();
        self.wait_leading_of(&partitions).await
    }
}

impl PartitionService for RaftService {
    async fn produce(
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
            None => return Err(stopping()),
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

    async fn fetch(
        &self,
        partition: PartitionId,
        args: FetchArgs,
    ) -> Result<FetchResult, ServiceError> {
        self.visible.fetch(&self.log, partition, args).await
    }

    async fn list_offsets(
        &self,
        partition: PartitionId,
        spec: OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<ListOffsetsResult, ServiceError> {
        self.visible
            .list_offsets(&self.log, partition, spec, timestamp_ms)
            .await
    }

    async fn create_partition(&self, partition: PartitionId) -> Result<(), ServiceError> {
        if self.closing.is_triggered() || self.stopped.is_triggered() {
            return Err(stopping());
        }
        if self.raft.with_replica(partition, |_| ()).is_none() {
            let _permit = self
                .loop_lock
                .acquire_permit(1)
                .await
                .map_err(|_| stopping())?;
            if self.raft.with_replica(partition, |_| ()).is_none() {
                self.raft
                    .add_replica(partition, self.raft_id, &[self.raft_id])
                    .await
                    .map_err(raft_error)?;
                self.raft.campaign(partition).map_err(raft_error)?;
                self.visible
                    .insert_if_absent(partition, Self::start_mark(&self.log, partition)?);
            }
        }
        self.wait_leading_of(&[partition]).await
    }

    async fn delete_partition(&self, partition: PartitionId) -> Result<(), ServiceError> {
        self.visible.remove(partition);
        let _permit = self
            .loop_lock
            .acquire_permit(1)
            .await
            .map_err(|_| stopping())?;
        self.raft.remove_replica(partition);
        match self.log.remove_partition(partition).await {
            Ok(()) | Err(StorageError::UnknownPartition(_)) => {}
            Err(error) => return Err(storage_error(error)),
        }
        self.log.sync().await.map_err(storage_error)?;
        self.visible.notify();
        Ok(())
    }

    fn counts(&self) -> (u64, u64) {
        let partitions = self.raft.partitions();
        let leaders = partitions
            .iter()
            .filter(|p| {
                self.raft
                    .with_replica(**p, |r| r.is_leader())
                    .unwrap_or(false)
            })
            .count();
        (partitions.len() as u64, leaders as u64)
    }

    fn partitions(&self) -> Vec<PartitionId> {
        self.log.partitions()
    }

    fn log(&self) -> &ShardLog {
        &self.log
    }

    fn retain_from(&self, partition: PartitionId) -> Option<u64> {
        // Entries raft has not applied may still be read by it; with
        // replication, followers that fall behind the retained prefix
        // restart from the compaction point (the store's snapshot).
        let applied = self.raft.with_replica(partition, |r| r.applied_index())?;
        let visible = self.visible.get(partition).ok()?.index;
        Some(applied.min(visible) + 1)
    }

    fn end_waits(&self) {
        self.visible.end_waits();
    }

    async fn close(&self) -> Result<(), ServiceError> {
        self.visible.end_waits();
        self.closing.trigger();
        self.stop.set(true);
        self.raft.wake();
        self.stopped.listen().await;
        self.log.sync().await.map_err(storage_error)?;
        self.log.close().await.map_err(storage_error)
    }
}
