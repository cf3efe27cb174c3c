//! One shard: its shard log and partition service, its two listeners (the
//! shared client port and its own port), its mesh endpoint, and its view
//! of the topic metadata; shard 0 also owns the [`TopicStore`].
//!
//! Start-up, on every shard: join the mesh, open the shard log, bind the
//! shard port (shard 0 also binds the client port), say hello to every
//! peer, wait for every peer's hello (shard 0's carries the client port,
//! which the others then bind), receive the topic metadata from shard 0 and
//! create the partitions it places here, then serve.
//!
//! Stop: stop accepting and finish the requests in flight on both
//! listeners, tell every peer this shard is drained, wait until every peer
//! is (so no forwarded operation can still arrive), finish the operations
//! peers forwarded, then sync and close the shard log.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use event_listener::Event;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use shardmq_net::{listen, ConnLimits, Shutdown};
use shardmq_storage::{PartitionId, RetentionPolicy, ShardLog};

use super::handler::BrokerHandler;
use super::raft_service::RaftService;
use super::router::{execute, AdminOp, ShardMsg, ShardRouter};
use super::service::{LocalLogService, PartitionService, ProduceLimits, ServiceError};
use super::topics::{TopicStore, TopicsSnapshot};
use crate::config::Config;
use crate::metrics::ShardMetrics;

/// Messages a shard may have queued from each peer.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

/// Everything one shard's tasks share. Shard view: owned by one shard,
/// `!Send`.
pub struct ShardCtx<S> {
    /// This shard's index.
    pub shard: u16,
    /// The broker configuration.
    pub config: Config,
    /// The partitions this shard owns.
    pub service: Rc<S>,
    /// The way to the other shards.
    pub router: ShardRouter,
    /// This shard's counters.
    pub metrics: Arc<ShardMetrics>,
    /// The topic metadata as this shard last received it.
    pub topics: RefCell<Arc<TopicsSnapshot>>,
    /// The topic store (shard 0 only).
    pub store: Option<RefCell<TopicStore>>,
    /// Serialises metadata changes (shard 0).
    pub admin_lock: glommio::sync::Semaphore,
    /// The port of each shard's own listener, by shard index.
    pub shard_ports: RefCell<Vec<u16>>,
    /// The client port every shard listens on.
    pub client_port: Cell<u16>,
    /// The host clients are told to connect to.
    pub advertised_host: String,
    /// Triggered once every peer said hello.
    hellos_done: Shutdown,
    /// Triggered once the first topic metadata is applied.
    topics_ready: Shutdown,
    /// Operations forwarded by peers still running.
    inbound: Cell<usize>,
    inbound_done: Event,
    /// Peers that said they are drained.
    drained_peers: Cell<usize>,
    all_drained: Shutdown,
}

impl<S> std::fmt::Debug for ShardCtx<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCtx")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl<S: PartitionService> ShardCtx<S> {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.router.shards()
    }

    /// Applies new topic metadata: creates this shard's new partitions,
    /// publishes the view, then deletes the partitions that are gone.
    pub async fn apply_topics(&self, snapshot: Arc<TopicsSnapshot>) -> Result<(), ServiceError> {
        let first = !self.topics_ready.is_triggered();
        let old = self.topics.borrow().clone();
        if !first && snapshot.version <= old.version {
            return Ok(());
        }
        let mine: std::collections::HashSet<PartitionId> =
            snapshot.partitions_of_shard(self.shard).collect();
        let had: std::collections::HashSet<PartitionId> = if first {
            // On start, whatever the log holds that the metadata does not
            // (a deletion cut short) goes too.
            self.service.partitions().into_iter().collect()
        } else {
            old.partitions_of_shard(self.shard).collect()
        };
        for id in mine.difference(&had) {
            self.service.create_partition(*id).await?;
        }
        *self.topics.borrow_mut() = snapshot;
        for id in had.difference(&mine) {
            self.service.delete_partition(*id).await?;
        }
        let (partitions, leaders) = self.service.counts();
        self.metrics.partitions.store(partitions, Ordering::Relaxed);
        self.metrics.leaders.store(leaders, Ordering::Relaxed);
        let snapshot = self.topics.borrow().clone();
        self.metrics.set_topic_names(
            snapshot
                .topics
                .values()
                .map(|t| (t.id, t.name.clone()))
                .collect(),
        );
        self.metrics.retain_partitions(&self.service.partitions());
        self.topics_ready.trigger();
        Ok(())
    }

    /// Sends `snapshot` to every shard, this one included, and waits until
    /// all applied it.
    async fn publish_topics(&self, snapshot: Arc<TopicsSnapshot>) -> Result<(), ServiceError> {
        self.apply_topics(snapshot.clone()).await?;
        for shard in 0..self.shards() as u16 {
            if shard != self.shard {
                self.router.push_topics(shard, snapshot.clone()).await?;
            }
        }
        Ok(())
    }

    /// Runs a metadata change (shard 0 only).
    pub async fn run_admin(&self, op: AdminOp) -> Vec<Result<(), ServiceError>> {
        let Some(store) = &self.store else {
            return match self.router.admin(op).await {
                Ok(results) => results,
                Err(error) => vec![Err(error)],
            };
        };
        let Ok(_permit) = self.admin_lock.acquire_permit(1).await else {
            return Vec::new();
        };
        let mut results = Vec::new();
        match op {
            AdminOp::Create {
                topics,
                validate_only,
            } => {
                for spec in topics {
                    let next = store.borrow().with_created(&spec);
                    results.push(match next {
                        Ok(_) if validate_only => Ok(()),
                        Ok(next) => self.commit(store, next).await,
                        Err(error) => Err(error),
                    });
                }
            }
            AdminOp::Delete { names } => {
                for name in names {
                    let next = store.borrow().with_deleted(&name);
                    results.push(match next {
                        Ok(next) => self.commit(store, next).await,
                        Err(error) => Err(error),
                    });
                }
            }
        }
        results
    }

    async fn commit(
        &self,
        store: &RefCell<TopicStore>,
        next: TopicsSnapshot,
    ) -> Result<(), ServiceError> {
        store.borrow_mut().commit(next).map_err(|error| {
            ServiceError::new(
                shardmq_schema::protocol::ErrorCode::StorageError,
                error.to_string(),
            )
        })?;
        let snapshot = Arc::new(store.borrow().snapshot().clone());
        self.publish_topics(snapshot).await
    }

    /// Handles one message from peer `peer`.
    fn receive(self: &Rc<Self>, peer: usize, msg: ShardMsg) {
        match msg {
            ShardMsg::Hello {
                shard,
                shard_port,
                client_port,
            } => {
                if let Some(port) = self.shard_ports.borrow_mut().get_mut(usize::from(shard)) {
                    *port = shard_port;
                }
                if shard == 0 {
                    self.client_port.set(client_port);
                }
                if self.router.hello_from(peer, shard) {
                    self.hellos_done.trigger();
                }
            }
            ShardMsg::Op { op, mut reply } => {
                self.inbound.set(self.inbound.get() + 1);
                let ctx = self.clone();
                glommio::spawn_local(async move {
                    let done = async { Some(execute(&*ctx.service, &ctx.metrics, op).await) };
                    let cancelled = async {
                        reply.cancellation().await;
                        None
                    };
                    if let Some(result) = futures_lite::future::or(done, cancelled).await {
                        let _ = reply.send(result);
                    }
                    ctx.inbound.set(ctx.inbound.get() - 1);
                    ctx.inbound_done.notify(usize::MAX);
                })
                .detach();
            }
            ShardMsg::Admin { op, reply } => {
                let ctx = self.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(ctx.run_admin(op).await);
                })
                .detach();
            }
            ShardMsg::Topics { snapshot, reply } => {
                let ctx = self.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(ctx.apply_topics(snapshot).await);
                })
                .detach();
            }
            ShardMsg::Drained => {
                self.drained_peers.set(self.drained_peers.get() + 1);
                if self.drained_peers.get() + 1 >= self.shards() {
                    self.all_drained.trigger();
                }
            }
        }
    }

    async fn inbound_finished(&self) {
        loop {
            let listener = self.inbound_done.listen();
            if self.inbound.get() == 0 {
                return;
            }
            listener.await;
        }
    }
}

/// What a shard needs from the process to start.
pub struct ShardStart {
    /// This shard's index.
    pub shard: u16,
    /// The configuration.
    pub config: Config,
    /// The mesh every shard joins.
    pub mesh: MeshBuilder<ShardMsg, Full>,
    /// This shard's counters.
    pub metrics: Arc<ShardMetrics>,
    /// Fires when the broker must stop.
    pub stop: oneshot::Receiver<()>,
    /// Called once the shard serves.
    pub ready: Box<dyn FnOnce() + Send>,
}

impl std::fmt::Debug for ShardStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStart")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

/// Why a shard could not run.
#[derive(Debug, thiserror::Error)]
#[error("shard {shard}: {what}")]
pub struct ShardError {
    /// The shard.
    pub shard: u16,
    /// What failed.
    pub what: String,
}

/// Runs one shard until the stop signal, then stops it cleanly.
pub async fn run_shard(start: ShardStart) -> Result<(), ShardError> {
    let ShardStart {
        shard,
        config,
        mesh,
        metrics,
        stop,
        ready,
    } = start;
    let fail = |what: String| ShardError { shard, what };
    let shards = mesh.nr_peers();
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|error| fail(format!("cannot join the shard mesh: {error}")))?;

    let dir: PathBuf = config.broker.data_dir.join(format!("shard-{shard}"));
    let (log, report) = ShardLog::open(config.storage.log_config(&dir))
        .await
        .map_err(|error| {
            fail(format!(
                "cannot open the shard log in {}: {error}",
                dir.display()
            ))
        })?;
    tracing::info!(
        shard,
        partitions = report.partitions,
        entries = report.entries,
        elapsed_ms = report.elapsed_ms,
        "shard log recovered"
    );
    let limits = ProduceLimits {
        batch_bytes_max: config.limits.batch_bytes_max,
        record_bytes_max: config.limits.record_bytes_max,
    };
    let commit_latency = Arc::clone(&metrics.commit_latency);
    let serving = Serving {
        shard,
        config: config.clone(),
        metrics,
        stop,
        ready,
        senders,
        receivers,
        shards,
    };
    tracing::info!(shard, raft = config.raft.enabled, "partition service");
    if config.raft.enabled {
        let service = RaftService::open(
            log,
            config.broker.node_id,
            &config.raft,
            limits,
            commit_latency,
        )
        .await
        .map_err(|error| fail(format!("cannot open the raft groups: {error}")))?;
        let driver = glommio::spawn_local(service.clone().run());
        service
            .wait_leading()
            .await
            .map_err(|error| fail(format!("the partitions do not lead again: {error}")))?;
        serve(serving, service, driver).await
    } else {
        let service = LocalLogService::new(log, limits);
        let flusher = glommio::spawn_local(service.clone().run_flusher());
        serve(serving, service, flusher).await
    }
}

/// What a shard whose log is open needs to serve.
struct Serving {
    shard: u16,
    config: Config,
    metrics: Arc<ShardMetrics>,
    stop: oneshot::Receiver<()>,
    ready: Box<dyn FnOnce() + Send>,
    senders: Senders<ShardMsg>,
    receivers: Receivers<ShardMsg>,
    shards: usize,
}

/// Serves with `service` (whose background task is `background`) until
/// the stop signal, then stops cleanly.
async fn serve<S: PartitionService>(
    serving: Serving,
    service: Rc<S>,
    background: glommio::Task<()>,
) -> Result<(), ShardError> {
    let Serving {
        shard,
        config,
        metrics,
        stop,
        ready,
        senders,
        mut receivers,
        shards,
    } = serving;
    let fail = |what: String| ShardError { shard, what };
    let store = if shard == 0 {
        Some(RefCell::new(
            TopicStore::open(
                &config.broker.data_dir,
                shards as u16,
                config.broker.default_partitions,
                config.broker.partitions_max,
            )
            .map_err(|error| fail(error.to_string()))?,
        ))
    } else {
        None
    };
    let ctx = Rc::new(ShardCtx {
        shard,
        advertised_host: config.advertised_host(),
        config: config.clone(),
        service,
        router: ShardRouter::new(shard, shards, senders),
        metrics: metrics.clone(),
        topics: RefCell::new(Arc::new(TopicsSnapshot::default())),
        store,
        admin_lock: glommio::sync::Semaphore::new(1),
        shard_ports: RefCell::new(vec![0; shards]),
        client_port: Cell::new(0),
        hellos_done: Shutdown::new(),
        topics_ready: Shutdown::new(),
        inbound: Cell::new(0),
        inbound_done: Event::new(),
        drained_peers: Cell::new(0),
        all_drained: Shutdown::new(),
    });

    // Messages from peers: each stream read by a task of its own.
    for (peer, stream) in receivers.streams() {
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = stream.recv().await {
                ctx.receive(peer, msg);
            }
        })
        .detach();
    }

    let limits = ConnLimits {
        in_flight_max: config.limits.in_flight_max,
        frame_bytes_max: config.limits.frame_bytes_max,
        connections_max: config.limits.connections_max,
        ..ConnLimits::default()
    };
    let host = config.broker.listen.ip();
    let shard_port = match config.broker.shard_port_base {
        0 => 0,
        base => base
            .checked_add(shard)
            .ok_or_else(|| fail("broker.shard_port_base + shard exceeds 65535".into()))?,
    };
    let handler = BrokerHandler::new(ctx.clone());
    let own = listen(
        SocketAddr::new(host, shard_port),
        handler.clone(),
        limits.clone(),
    )
    .map_err(|error| fail(error.to_string()))?;
    ctx.shard_ports.borrow_mut()[usize::from(shard)] = own.local_addr().port();
    let client = if shard == 0 {
        let client = listen(config.broker.listen, handler.clone(), limits.clone())
            .map_err(|error| fail(error.to_string()))?;
        ctx.client_port.set(client.local_addr().port());
        Some(client)
    } else {
        None
    };
    ctx.router
        .say_hello(own.local_addr().port(), ctx.client_port.get())
        .await
        .map_err(|error| fail(error.to_string()))?;
    if shards > 1 {
        ctx.hellos_done.listen().await;
    }
    let client = match client {
        Some(client) => client,
        None => listen(
            SocketAddr::new(host, ctx.client_port.get()),
            handler.clone(),
            limits.clone(),
        )
        .map_err(|error| fail(error.to_string()))?,
    };

    // Topic metadata: shard 0 publishes what its store holds; the others
    // wait for it.
    if let Some(store) = &ctx.store {
        let snapshot = Arc::new(store.borrow().snapshot().clone());
        ctx.publish_topics(snapshot)
            .await
            .map_err(|error| fail(format!("cannot apply topic metadata: {error}")))?;
    } else {
        ctx.topics_ready.listen().await;
    }

    let stats_task = {
        let ctx = ctx.clone();
        let interval = Duration::from_millis(config.monitoring.storage_stats_interval_ms);
        glommio::spawn_local(async move {
            let stop = ctx.all_drained.clone();
            loop {
                copy_storage_stats(&*ctx.service, &ctx.metrics);
                let tick = glommio::timer::sleep(interval);
                futures_lite::future::or(tick, stop.listen()).await;
                if stop.is_triggered() {
                    return;
                }
            }
        })
    };

    let housekeeping_task = {
        let ctx = ctx.clone();
        let interval = Duration::from_millis(config.storage.retention_check_interval_ms);
        let policy = config.storage.retention_policy();
        glommio::spawn_local(async move {
            let stop = ctx.all_drained.clone();
            loop {
                let tick = glommio::timer::sleep(interval);
                futures_lite::future::or(tick, stop.listen()).await;
                if stop.is_triggered() {
                    return;
                }
                if let Err(error) = housekeeping(&*ctx.service, policy, &ctx.metrics).await {
                    // The log is poisoned or a segment unreadable; the
                    // produce path reports the same error to clients.
                    tracing::error!(shard = ctx.shard, %error, "retention and collection failed");
                }
            }
        })
    };

    let own_stop = own.shutdown_handle();
    let client_stop = client.shutdown_handle();
    tracing::info!(
        shard,
        client = %client.local_addr(),
        own = %own.local_addr(),
        "shard serving"
    );
    let serving_own = glommio::spawn_local(own.serve());
    let serving_client = glommio::spawn_local(client.serve());
    ready();

    // Runs until the process is told to stop (or the signal thread is
    // gone, which also means stop).
    let _ = stop.await;
    tracing::info!(shard, "stopping: no new connections, finishing requests");
    client_stop.trigger();
    own_stop.trigger();
    ctx.service.end_waits();
    serving_client.await;
    serving_own.await;
    ctx.router.broadcast_drained().await;
    if shards > 1 {
        ctx.all_drained.listen().await;
    } else {
        ctx.all_drained.trigger();
    }
    ctx.inbound_finished().await;
    stats_task.await;
    housekeeping_task.await;
    ctx.service
        .close()
        .await
        .map_err(|error| fail(format!("cannot sync the shard log on stop: {error}")))?;
    background.await;
    copy_storage_stats(&*ctx.service, &ctx.metrics);
    tracing::info!(shard, "stopped");
    Ok(())
}

/// One pass of retention over every partition of the shard, then the
/// collector, which deletes segment files left without live entries (by
/// retention or by deleted partitions) and first rewrites the live rest of
/// mostly-dead ones.
async fn housekeeping<S: PartitionService>(
    service: &S,
    policy: RetentionPolicy,
    metrics: &ShardMetrics,
) -> Result<(), shardmq_storage::StorageError> {
    let log = service.log();
    if policy.bytes_max.is_some() || policy.age_max_ms.is_some() {
        let now_ms = super::service::now_ms();
        for partition in service.partitions() {
            let Some(keep_from) = service.retain_from(partition) else {
                continue;
            };
            match log
                .apply_retention(partition, policy, now_ms, keep_from)
                .await
            {
                // Deleted meanwhile.
                Ok(_) | Err(shardmq_storage::StorageError::UnknownPartition(_)) => {}
                Err(error) => return Err(error),
            }
        }
    }
    let report = log.gc().await?;
    if report.segments_deleted > 0 || report.entries_rewritten > 0 {
        tracing::info!(
            segments_deleted = report.segments_deleted,
            entries_rewritten = report.entries_rewritten,
            bytes_freed = report.bytes_freed,
            "collector pass"
        );
        metrics
            .storage_segments_deleted
            .fetch_add(report.segments_deleted, Ordering::Relaxed);
        metrics
            .storage_bytes_freed
            .fetch_add(report.bytes_freed, Ordering::Relaxed);
    }
    Ok(())
}

/// Copies the shard log's counters into the shard's metrics.
fn copy_storage_stats<S: PartitionService>(service: &S, metrics: &ShardMetrics) {
    let log = service.log();
    let stats = log.stats();
    for (hist, into) in [
        (&stats.sync_latency_us, &metrics.fsync_latency),
        (&stats.write_latency_us, &metrics.write_latency),
    ] {
        let sum_us = (hist.mean() * hist.len() as f64) as u64;
        into.set_from(|bound| hist.count_between(0, bound), hist.len(), sum_us);
    }
    metrics
        .storage_append_bytes
        .store(stats.append_bytes, Ordering::Relaxed);
    metrics
        .storage_sync_rounds
        .store(stats.sync_rounds, Ordering::Relaxed);
    metrics
        .storage_segments
        .store(log.segment_count() as u64, Ordering::Relaxed);
}
