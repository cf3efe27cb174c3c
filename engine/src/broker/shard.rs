//! One shard: its shard log and partition service, its inter-broker links
//! and listener, its two client listeners (the shared client port and its
//! own port), its mesh endpoint, and its view of the cluster; shard 0 also
//! runs the controller replica.
//!
//! Start-up, on every shard: join the mesh, open the shard log, open the
//! service (shard 0: and the controller, whose metadata is recovered from
//! its snapshot and log), start the shard loop, bind the inter-broker port
//! (the broker's + shard index) and the client ports, say hello to every
//! peer shard, then apply the first cluster view (shard 0 makes it and
//! sends it to every shard), which creates the replicas placed here, and
//! serve. Shard 0 then registers the broker with the cluster.
//!
//! Stop: stop accepting and finish the requests in flight on both client
//! listeners, tell every peer this shard is drained, wait until every peer
//! is (so no forwarded operation can still arrive), finish the operations
//! peers forwarded, close the inter-broker links, then stop the loop and
//! sync and close the shard log.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::Event;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use shardmq_net::peer::{listen_peers, PeerConfig, PeerIdentity, PeerLinks};
use shardmq_net::{listen, ConnLimits, Shutdown};
use shardmq_schema::protocol::ErrorCode;
use shardmq_storage::{RetentionPolicy, ShardLog};

use super::controller_service::{ControllerService, ControllerSettings};
use super::handler::BrokerHandler;
use super::identity::BrokerIdentity;
use super::raft_service::{LeadershipReport, RaftService, ReplicaStatus};
use super::router::{execute, AdminOp, ShardMsg, ShardRouter};
use super::service::{ProduceLimits, ServiceError};
use super::transport::{ClusterAdmission, PeerTransport, ShardPeerHandler};
use super::view::ClusterView;
use crate::config::Config;
use crate::controller::{BrokerRegistration, Command, NodeId};
use crate::metrics::ShardMetrics;

/// Messages a shard may have queued from each peer.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

/// How often each shard sends the leaderships its replicas took to shard
/// 0, and shard 0 records them and runs the failure detector.
const REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// How often each shard re-sends the leaderships the metadata does not show
/// (a report lost to a controller failover) and re-checks rebalancing.
const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

/// Longest CreateTopics waits for the new partitions' leaders when the
/// request asks to wait.
const CREATE_WAIT_MAX: Duration = Duration::from_secs(30);

/// Longest an admin request waits for this broker's own registration.
const REGISTRATION_WAIT: Duration = Duration::from_secs(10);
/// Longest an admin answer waits for this broker's shards to apply it.
const VIEW_WAIT_MAX: Duration = Duration::from_secs(5);

/// Exit code of a broker the cluster refused (its identity does not match
/// what the cluster recorded).
pub const EXIT_REFUSED: i32 = 3;

/// Stops the process: the cluster refused this broker for who it is.
pub fn exit_refused(message: &str) -> ! {
    tracing::error!(message, "stopping: refused by the cluster");
    eprintln!("shardmq-broker: refused by the cluster: {message}");
    std::process::exit(EXIT_REFUSED);
}

/// Everything one shard's tasks share. Shard view: owned by one shard,
/// `!Send`.
pub struct ShardCtx {
    /// This shard's index.
    pub shard: u16,
    /// The broker configuration.
    pub config: Config,
    /// Who this broker is.
    pub identity: BrokerIdentity,
    /// The replicas this shard owns.
    pub service: Rc<RaftService>,
    /// The controller replica (shard 0 only).
    pub controller: Option<Rc<ControllerService>>,
    /// The way to the other shards.
    pub router: ShardRouter,
    /// This shard's counters.
    pub metrics: Arc<ShardMetrics>,
    /// The cluster as this shard last received it.
    pub view: RefCell<Arc<ClusterView>>,
    /// The inter-broker links of this shard (none for a broker alone).
    pub links: Option<Rc<PeerLinks>>,
    /// Who may connect to this shard's inter-broker listener.
    pub admission: Option<Rc<ClusterAdmission>>,
    /// What this shard's inter-broker listener received.
    pub inbound_stats: RefCell<Option<shardmq_net::peer::InboundStatsHandle>>,
    /// Stats copies made (the per-replica gauges are refreshed on some).
    stats_copies: Cell<u64>,
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
    /// Triggered once the first cluster view is applied.
    view_ready: Shutdown,
    /// Shard 0: the metadata version every shard of this broker has
    /// applied, and its moves.
    published_version: Cell<u64>,
    published: Event,
    /// Operations forwarded by peers still running.
    inbound: Cell<usize>,
    inbound_done: Event,
    /// Peers that said they are drained.
    drained_peers: Cell<usize>,
    all_drained: Shutdown,
}

impl std::fmt::Debug for ShardCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCtx")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

fn service_error(code: ErrorCode, message: impl Into<String>) -> ServiceError {
    ServiceError::new(code, message)
}

impl ShardCtx {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.router.shards()
    }

    /// This broker's node id.
    pub fn node_id(&self) -> NodeId {
        self.config.broker.node_id
    }

    /// The latest view.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// Applies a new cluster view: reconciles this shard's replicas with it
    /// and makes it the view requests are routed by.
    pub async fn apply_view(&self, view: Arc<ClusterView>) -> Result<(), ServiceError> {
        if let Some(admission) = &self.admission {
            admission.set_known(
                view.metadata
                    .brokers
                    .values()
                    .map(|b| (b.node_id, b.incarnation))
                    .collect(),
            );
        }
        self.service.apply_view(view.clone()).await?;
        {
            let mut current = self.view.borrow_mut();
            if view.metadata.version >= current.metadata.version {
                *current = view;
            }
        }
        let snapshot = self.view();
        self.metrics.set_topic_names(
            snapshot
                .metadata
                .topics
                .values()
                .map(|t| (t.id, t.name.clone()))
                .collect(),
        );
        self.metrics.retain_partitions(&self.service.partitions());
        self.view_ready.trigger();
        Ok(())
    }

    /// Sends `view` to every shard, this one included, and waits until all
    /// applied it (shard 0).
    async fn publish_view(&self, view: Arc<ClusterView>) -> Result<(), ServiceError> {
        let version = view.metadata.version;
        self.apply_view(view.clone()).await?;
        for shard in 0..self.shards() as u16 {
            if shard != self.shard {
                self.router.push_view(shard, view.clone()).await?;
            }
        }
        if version > self.published_version.get() {
            self.published_version.set(version);
            self.published.notify(usize::MAX);
        }
        Ok(())
    }

    /// Shard 0: waits until every shard of this broker applied metadata
    /// of `version` or later (at most `VIEW_WAIT_MAX`), so that a client
    /// answered an admin change sees it on whichever shard it asks next.
    async fn until_published(&self, version: u64) {
        let deadline = Instant::now() + VIEW_WAIT_MAX;
        loop {
            let listener = self.published.listen();
            if self.published_version.get() >= version || Instant::now() >= deadline {
                return;
            }
            let timer =
                glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now()));
            futures_lite::future::or(listener, async {
                timer.await;
            })
            .await;
        }
    }

    /// Runs a metadata change on shard 0 (forwarded there from the others).
    pub async fn run_admin(&self, op: AdminOp) -> Vec<Result<(), ServiceError>> {
        let Some(controller) = &self.controller else {
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
                timeout_ms,
            } => {
                for spec in topics {
                    results.push(
                        self.create_topic(controller, spec, validate_only, timeout_ms)
                            .await,
                    );
                }
            }
            AdminOp::Delete { names } => {
                for name in names {
                    let command = Command::DeleteTopic { name };
                    results.push(controller.submit(command).await.map(|_| ()));
                }
            }
            AdminOp::TransferLeader {
                topic,
                partition,
                to,
                timeout_ms,
            } => {
                results.push(
                    self.transfer_leader(controller, topic, partition, to, timeout_ms)
                        .await,
                );
            }
        }
        self.until_published(controller.view().metadata.version)
            .await;
        results
    }

    async fn create_topic(
        &self,
        controller: &ControllerService,
        spec: super::router::NewTopicSpec,
        validate_only: bool,
        timeout_ms: u32,
    ) -> Result<(), ServiceError> {
        let b = &self.config.broker;
        let partitions = match spec.partitions {
            -1 => b.default_partitions,
            n if n >= 1 && n as u32 <= b.partitions_max => n as u32,
            n => {
                return Err(service_error(
                    ErrorCode::InvalidPartitions,
                    format!(
                        "{n} partitions: must be within 1..={} (or -1 for the default)",
                        b.partitions_max
                    ),
                ))
            }
        };
        let replication_factor = match spec.replication_factor {
            -1 => b.default_replication_factor,
            n if n >= 1 => n as u16,
            n => {
                return Err(service_error(
                    ErrorCode::InvalidReplicationFactor,
                    format!("replication factor {n}: must be at least 1 (or -1 for the default)"),
                ))
            }
        };
        // Right after start-up this broker may not be registered yet; the
        // replication factor is checked against the registered brokers.
        let deadline = Instant::now() + REGISTRATION_WAIT;
        while !controller
            .view()
            .metadata
            .brokers
            .contains_key(&self.node_id())
            && Instant::now() < deadline
        {
            controller.changed(Duration::from_millis(100)).await;
        }
        let command = Command::CreateTopic {
            name: spec.name.clone(),
            partitions,
            replication_factor,
            configs: spec.configs,
        };
        if validate_only {
            // Applied to a copy: what the controller would answer now.
            let mut copy = controller.view().metadata.clone();
            let index = copy.applied_index + 1;
            return copy
                .apply(index, &command)
                .map(|_| ())
                .map_err(|e| service_error(e.code(), e.to_string()));
        }
        controller.submit(command).await?;
        if timeout_ms == 0 {
            return Ok(());
        }
        // Wait until every partition has a leader recorded.
        let deadline =
            Instant::now() + Duration::from_millis(u64::from(timeout_ms)).min(CREATE_WAIT_MAX);
        loop {
            let listener = controller.listen();
            let led = controller
                .view()
                .metadata
                .topic(&spec.name)
                .is_some_and(|t| t.partitions.iter().all(|p| p.leader.is_some()));
            if led {
                return Ok(());
            }
            if Instant::now() >= deadline {
                // Created; its leaders are still being elected.
                return Ok(());
            }
            let timer =
                glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now()));
            futures_lite::future::or(listener, async {
                timer.await;
            })
            .await;
        }
    }

    async fn transfer_leader(
        &self,
        controller: &ControllerService,
        topic: String,
        partition: u32,
        to: NodeId,
        timeout_ms: u32,
    ) -> Result<(), ServiceError> {
        controller
            .submit(Command::MigrateLeader {
                topic: topic.clone(),
                partition,
                to,
            })
            .await?;
        if timeout_ms == 0 {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        loop {
            let listener = controller.listen();
            let leader = controller
                .view()
                .metadata
                .topic(&topic)
                .and_then(|t| t.partition(partition))
                .and_then(|a| a.leader);
            if leader == Some(to) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(service_error(
                    ErrorCode::RequestTimedOut,
                    format!(
                        "node {to} does not lead {topic}/{partition} yet (leader: {leader:?}); the \
                         move was recorded and goes on"
                    ),
                ));
            }
            let timer =
                glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now()));
            futures_lite::future::or(listener, async {
                timer.await;
            })
            .await;
        }
    }

    /// The state of every shard's replicas of `groups` on this broker.
    pub async fn describe_all(&self, groups: Option<HashSet<u64>>) -> Vec<ReplicaStatus> {
        let mut out = self.service.describe(groups.as_ref());
        for shard in 0..self.shards() as u16 {
            if shard != self.shard {
                if let Ok(more) = self.router.describe(shard, groups.clone()).await {
                    out.extend(more);
                }
            }
        }
        out
    }

    /// Leaderships to report to the controller: on shard 0 directly, from
    /// the others by message.
    async fn report(&self, reports: Vec<LeadershipReport>) {
        if reports.is_empty() {
            return;
        }
        match &self.controller {
            Some(controller) => controller.report(reports),
            None => {
                let _ = self.router.send(0, ShardMsg::Reports { reports }).await;
            }
        }
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
                    let done = async { Some(execute(&ctx.service, &ctx.metrics, op).await) };
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
            ShardMsg::View { view, reply } => {
                let ctx = self.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(ctx.apply_view(view).await);
                })
                .detach();
            }
            ShardMsg::Reports { reports } => {
                if let Some(controller) = &self.controller {
                    controller.report(reports);
                }
            }
            ShardMsg::Describe { groups, reply } => {
                let _ = reply.send(self.service.describe(groups.as_ref()));
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
    /// Who this broker is.
    pub identity: BrokerIdentity,
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

/// The inter-broker address of `shard` of the broker whose shard 0 is at
/// `base`.
fn shard_addr(base: SocketAddr, shard: u16) -> Option<SocketAddr> {
    Some(SocketAddr::new(base.ip(), base.port().checked_add(shard)?))
}

/// Runs one shard until the stop signal, then stops it cleanly.
pub async fn run_shard(start: ShardStart) -> Result<(), ShardError> {
    let ShardStart {
        shard,
        config,
        identity,
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
    let node_id = config.broker.node_id;

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

    // The inter-broker side: links to every other broker's shards, and who
    // may connect here.
    let cluster = &config.cluster;
    let clustered = !cluster.peers.is_empty();
    let admission = clustered.then(|| {
        Rc::new(ClusterAdmission::new(
            cluster.cluster_id.clone(),
            cluster.members(node_id),
            Box::new(|message: String| exit_refused(&message)),
        ))
    });
    let peer_identity = PeerIdentity {
        cluster_id: cluster.cluster_id.clone(),
        node_id,
        incarnation: identity.incarnation,
        shard,
    };
    let links = admission.as_ref().map(|admission| {
        let links = Rc::new(PeerLinks::new(
            peer_identity.clone(),
            PeerConfig::default(),
            admission.clone(),
            identity.incarnation ^ u64::from(shard),
        ));
        for peer in &cluster.peers {
            if peer.node_id != node_id {
                links.set_address(peer.node_id, peer.addr);
            }
        }
        links
    });
    let service = RaftService::new(
        log,
        node_id,
        shard,
        &config.raft,
        (cluster.leader_rebalance_delay_ms > 0)
            .then(|| Duration::from_millis(cluster.leader_rebalance_delay_ms)),
        limits,
        PeerTransport::new(links.clone()),
        metrics.clone(),
    );
    let peer_handler = ShardPeerHandler::new(&service);
    let controller = if shard == 0 {
        let voters = cluster.voters(node_id);
        let learners: Vec<NodeId> = cluster
            .members(node_id)
            .into_iter()
            .filter(|n| !voters.contains(n))
            .collect();
        let settings = ControllerSettings {
            cluster_id: cluster.cluster_id.clone(),
            node_id,
            voters,
            learners,
            dir: config.broker.data_dir.join("controller"),
            snapshot_entries: cluster.controller_snapshot_entries,
            session_timeout: Duration::from_millis(cluster.broker_session_timeout_ms),
        };
        let controller = ControllerService::open(settings, service.clone(), links.clone())
            .await
            .map_err(|error| fail(format!("cannot open the controller: {error}")))?;
        service.set_controller(controller.clone());
        peer_handler.set_controller(controller.clone());
        Some(controller)
    } else {
        None
    };
    let driver = glommio::spawn_local(service.clone().run());

    let peer_server = match (&admission, cluster.peer_addr(node_id)) {
        (Some(admission), Some(base)) => {
            let addr = shard_addr(base, shard)
                .ok_or_else(|| fail("the inter-broker port + shard exceeds 65535".into()))?;
            let server = listen_peers(
                addr,
                peer_identity,
                PeerConfig::default(),
                admission.clone(),
                peer_handler.clone(),
            )
            .map_err(|error| {
                fail(format!(
                    "cannot listen for other brokers on {addr}: {error} (is another broker \
                     using this node id's address?)"
                ))
            })?;
            Some(server)
        }
        _ => None,
    };

    serve(Serving {
        shard,
        config,
        identity,
        metrics,
        stop,
        ready,
        senders,
        receivers,
        shards,
        service,
        controller,
        links,
        admission,
        peer_server,
        driver,
    })
    .await
}

/// What a shard whose log and service are open needs to serve.
struct Serving {
    shard: u16,
    config: Config,
    identity: BrokerIdentity,
    metrics: Arc<ShardMetrics>,
    stop: oneshot::Receiver<()>,
    ready: Box<dyn FnOnce() + Send>,
    senders: Senders<ShardMsg>,
    receivers: Receivers<ShardMsg>,
    shards: usize,
    service: Rc<RaftService>,
    controller: Option<Rc<ControllerService>>,
    links: Option<Rc<PeerLinks>>,
    admission: Option<Rc<ClusterAdmission>>,
    peer_server: Option<shardmq_net::peer::PeerServer<ShardPeerHandler>>,
    driver: glommio::Task<()>,
}

/// Serves until the stop signal, then stops cleanly.
async fn serve(serving: Serving) -> Result<(), ShardError> {
    let Serving {
        shard,
        config,
        identity,
        metrics,
        stop,
        ready,
        senders,
        mut receivers,
        shards,
        service,
        controller,
        links,
        admission,
        peer_server,
        driver,
    } = serving;
    let fail = |what: String| ShardError { shard, what };
    let ctx = Rc::new(ShardCtx {
        shard,
        advertised_host: config.advertised_host(),
        config: config.clone(),
        identity,
        service,
        controller,
        router: ShardRouter::new(shard, shards, senders),
        metrics: metrics.clone(),
        view: RefCell::new(Arc::new(ClusterView::default())),
        links,
        admission,
        inbound_stats: RefCell::new(peer_server.as_ref().map(|s| s.stats_handle())),
        stats_copies: Cell::new(0),
        admin_lock: glommio::sync::Semaphore::new(1),
        shard_ports: RefCell::new(vec![0; shards]),
        client_port: Cell::new(0),
        hellos_done: Shutdown::new(),
        view_ready: Shutdown::new(),
        published_version: Cell::new(0),
        published: Event::new(),
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

    let peer_stop = peer_server.as_ref().map(|s| s.shutdown_handle());
    let peer_serving = peer_server.map(|server| glommio::spawn_local(server.serve()));

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

    // The cluster view: shard 0 publishes what its controller holds; the
    // others wait for it.
    let mut shard0_tasks = Vec::new();
    if let Some(controller) = ctx.controller.clone() {
        ctx.publish_view(controller.view())
            .await
            .map_err(|error| fail(format!("cannot apply the cluster metadata: {error}")))?;
        shard0_tasks.push(glommio::spawn_local(publisher(
            ctx.clone(),
            controller.clone(),
        )));
        shard0_tasks.push(glommio::spawn_local(controller_ticks(
            ctx.clone(),
            controller.clone(),
        )));
    } else {
        ctx.view_ready.listen().await;
    }
    // Shard 0 is ready once the broker is registered with the cluster (so
    // /health says 200 only for a broker the cluster knows); the other
    // shards once they serve.
    let mut ready = Some(ready);
    if let Some(controller) = ctx.controller.clone() {
        let ready = ready.take();
        shard0_tasks.push(glommio::spawn_local(register(
            ctx.clone(),
            controller,
            ready,
        )));
    }
    let reporter_task = glommio::spawn_local(reporter(ctx.clone()));

    let stats_task = {
        let ctx = ctx.clone();
        let interval = Duration::from_millis(config.monitoring.storage_stats_interval_ms);
        glommio::spawn_local(async move {
            let stop = ctx.all_drained.clone();
            loop {
                copy_stats(&ctx);
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
                if let Err(error) = housekeeping(&ctx.service, policy, &ctx.metrics).await {
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
    if let Some(ready) = ready.take() {
        ready();
    }

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
    for task in shard0_tasks {
        task.cancel().await;
    }
    reporter_task.await;
    stats_task.await;
    housekeeping_task.await;
    if let Some(stop) = peer_stop {
        stop.trigger();
    }
    if let Some(serving) = peer_serving {
        serving.await;
    }
    if let Some(links) = &ctx.links {
        links.close().await;
    }
    ctx.service
        .close()
        .await
        .map_err(|error| fail(format!("cannot sync the shard log on stop: {error}")))?;
    driver.await;
    copy_stats(&ctx);
    tracing::info!(shard, "stopped");
    Ok(())
}

/// Shard 0: sends every new view of the controller to every shard.
async fn publisher(ctx: Rc<ShardCtx>, controller: Rc<ControllerService>) {
    let mut last = (u64::MAX, None, u64::MAX);
    loop {
        let listener = controller.listen();
        if let Some(message) = controller.fatal() {
            exit_refused(&message);
        }
        let view = controller.view();
        let key = (
            view.metadata.version,
            view.controller_leader,
            view.controller_term,
        );
        if key != last {
            last = key;
            if let Err(error) = ctx.publish_view(view).await {
                tracing::error!(%error, "cluster view not applied");
            }
        }
        let timer = glommio::timer::Timer::new(Duration::from_secs(1));
        futures_lite::future::or(listener, async {
            timer.await;
        })
        .await;
    }
}

/// Shard 0: the controller's periodic work.
async fn controller_ticks(ctx: Rc<ShardCtx>, controller: Rc<ControllerService>) {
    let stop = ctx.all_drained.clone();
    loop {
        glommio::timer::sleep(REPORT_INTERVAL).await;
        if stop.is_triggered() {
            return;
        }
        controller.tick().await;
    }
}

/// Shard 0: registers this broker (its addresses, shard ports and
/// incarnation) with the cluster, and again whenever the metadata stops
/// showing it as registered and active.
async fn register(
    ctx: Rc<ShardCtx>,
    controller: Rc<ControllerService>,
    mut ready: Option<Box<dyn FnOnce() + Send>>,
) {
    let config = &ctx.config;
    let registration = BrokerRegistration {
        node_id: ctx.node_id(),
        inter_broker_addr: config
            .cluster
            .peer_addr(ctx.node_id())
            .map(|a| a.to_string())
            .unwrap_or_default(),
        client_host: ctx.advertised_host.clone(),
        client_port: ctx.client_port.get(),
        shard_ports: ctx.shard_ports.borrow().clone(),
        incarnation: ctx.identity.incarnation,
    };
    let stop = ctx.all_drained.clone();
    loop {
        match controller.register(registration.clone()).await {
            Ok(()) => {
                if let Some(ready) = ready.take() {
                    ready();
                }
            }
            Err(error) => exit_refused(&error.message),
        }
        // Re-register if the controller comes to show another record (a
        // failover that lost it, a status change).
        controller.changed(Duration::from_secs(1)).await;
        if stop.is_triggered() {
            return;
        }
    }
}

/// Every shard: sends the leaderships its replicas took to shard 0, and
/// periodically those the metadata does not show; re-checks rebalancing.
async fn reporter(ctx: Rc<ShardCtx>) {
    let stop = ctx.all_drained.clone();
    let mut last_resync = Instant::now();
    loop {
        let tick = glommio::timer::sleep(REPORT_INTERVAL);
        futures_lite::future::or(tick, stop.listen()).await;
        if stop.is_triggered() {
            return;
        }
        let mut reports = ctx.service.take_reports();
        if last_resync.elapsed() >= RESYNC_INTERVAL {
            last_resync = Instant::now();
            let view = ctx.view();
            let recorded: BTreeMap<u64, (Option<NodeId>, u64)> = view
                .metadata
                .replicas_on(ctx.node_id(), ctx.shard)
                .map(|(_, _, a)| (a.group, (a.leader, a.leader_term)))
                .collect();
            for r in ctx.service.leading() {
                let shown = recorded
                    .get(&r.group)
                    .is_some_and(|(leader, term)| *leader == Some(r.leader) && *term >= r.term);
                if !shown {
                    reports.push(r);
                }
            }
            ctx.service.rebalance_tick();
        }
        ctx.report(reports).await;
    }
}

/// One pass of retention over every partition of the shard, then the
/// collector, which deletes segment files left without live entries (by
/// retention or by deleted partitions) and first rewrites the live rest of
/// mostly-dead ones.
async fn housekeeping(
    service: &RaftService,
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

/// Copies the shard log's and the shard loop's counters into the shard's
/// metrics.
fn copy_stats(ctx: &ShardCtx) {
    let service = &ctx.service;
    let metrics = &ctx.metrics;
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
    metrics
        .storage_segments_rolled
        .store(stats.segments_rolled, Ordering::Relaxed);
    copy_replication(ctx);
}

/// The per-replica gauges walk every replica of the shard: they are
/// refreshed every this many stats copies, the shard's counters every copy.
const REPLICA_GAUGES_EVERY: u64 = 10;

/// Most log entries one follower-lag figure counts (the bytes behind are
/// summed entry by entry).
const LAG_ENTRIES_COUNTED_MAX: u64 = 100_000;

/// Copies the shard loop's and the transport's counters and each replica's
/// replication state into the shard's metrics.
fn copy_replication(ctx: &ShardCtx) {
    let m = &ctx.metrics;
    let raft = ctx.service.shard_loop();
    let stats = raft.stats();
    m.raft_elections
        .store(stats.elections.get(), Ordering::Relaxed);
    m.raft_quiesced
        .store(stats.quiesced.get(), Ordering::Relaxed);
    m.raft_leader_changes
        .store(stats.leader_changes.get(), Ordering::Relaxed);
    m.raft_messages_sent
        .store(stats.messages_sent.get(), Ordering::Relaxed);
    m.raft_messages_dropped.store(
        stats.inbound_dropped.get() + stats.undeliverable.get() + raft.transport().dropped(),
        Ordering::Relaxed,
    );
    if let Some(links) = &ctx.links {
        let totals = links.stats().total;
        m.peer_frames_sent
            .store(totals.frames_sent, Ordering::Relaxed);
        m.peer_bytes_sent
            .store(totals.bytes_sent, Ordering::Relaxed);
        m.peer_frames_dropped
            .store(totals.frames_dropped, Ordering::Relaxed);
    }
    if let Some(inbound) = ctx.inbound_stats.borrow().as_ref() {
        let received = inbound.get().received();
        m.peer_frames_received
            .store(received.frames, Ordering::Relaxed);
        m.peer_bytes_received
            .store(received.bytes, Ordering::Relaxed);
    }
    let copies = ctx.stats_copies.get();
    ctx.stats_copies.set(copies + 1);
    if copies % REPLICA_GAUGES_EVERY != 0 {
        return;
    }
    let lags = ctx.service.follower_lags();
    let log = ctx.service.log();
    let mut gauges = BTreeMap::new();
    raft.for_each_replica(|g, r| {
        if g == crate::raft::CONTROLLER_GROUP {
            return;
        }
        let mut gauge = crate::metrics::ReplicaGauges {
            leader: r.is_leader(),
            term: r.term(),
            ..Default::default()
        };
        if let Some(followers) = lags.get(&g) {
            let last = r.last_index();
            for (_, lag) in followers {
                gauge.follower_lag_entries = gauge.follower_lag_entries.max(*lag);
                let behind = log
                    .bytes_after(g, last.saturating_sub(*lag), LAG_ENTRIES_COUNTED_MAX)
                    .unwrap_or(0);
                gauge.follower_lag_bytes = gauge.follower_lag_bytes.max(behind);
            }
        }
        gauges.insert(g, gauge);
    });
    *m.replication
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = gauges;
}
