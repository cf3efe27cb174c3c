//! [`ControllerService`]: the controller's replica on shard 0 of a broker,
//! around the sans-IO state machine of `crate::controller`.
//!
//! - On open, the metadata is rebuilt from the newest snapshot file the log
//!   reaches and the committed entries after it in shard 0's log (the controller's log is
//!   group 0 of that log, so its writes share the shard's group commit).
//! - Every committed command is applied in log order (the shard loop hands
//!   them over as `Applied` events); after each batch of them a new
//!   [`ClusterView`] is published to every shard.
//! - Every `[cluster] controller_snapshot_entries` commands the metadata is
//!   written to a snapshot file (rkyv, checksummed) and the log is compacted
//!   past it; a replica behind the compaction point receives the metadata
//!   in a Raft snapshot.
//! - [`submit`](ControllerService::submit) runs a command: proposed here
//!   when this broker's replica leads, forwarded to the leader's shard 0
//!   otherwise; answered once applied (and, when forwarded, once this
//!   broker applied it too, so its next Metadata answer shows it).
//! - On the leader: the failure detector marks brokers failed and active
//!   again; leadership reports from every broker's shards are recorded.
//!
//! Shard view: lives on shard 0, `!Send`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::Event;
use futures_channel::oneshot;
use shardmq_net::peer::{ControllerReply, PeerAddr, PeerLinks, RequestError};
use shardmq_schema::batch::{BatchBuilder, RecordBatchView};
use shardmq_schema::protocol::ErrorCode;
use shardmq_storage::{EntryKind, StorageError};

use super::raft_service::{node_of, raft_error, LeadershipReport, RaftService};
use super::service::{storage_error, ServiceError};
use super::view::ClusterView;
use crate::controller::{
    decode_snapshot, encode_snapshot, load_latest_snapshot_up_to, remove_snapshots_before,
    write_snapshot_file, write_snapshot_file_keeping_older, Applied, BrokerRegistration,
    ClusterMetadata, Command, LeaderRecord, Liveness, NodeId,
};
use crate::raft::{CommittedEntry, LoopEvent, StateRole, CONTROLLER_GROUP};

const _: () = assert!(CONTROLLER_GROUP == crate::controller::CONTROLLER_GROUP);

/// Longest a command waits for a controller leader and its outcome.
pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Most leadership records one RecordLeaders command carries.
pub const LEADER_RECORDS_MAX: usize = 4096;

/// Most entries read from the log at once while replaying it on open.
const REPLAY_CHUNK_ENTRIES: u64 = 1024;

/// Wraps an encoded command into the record batch the controller log
/// stores (one record whose value is the command).
pub fn command_batch(command: &Command) -> Vec<u8> {
    let bytes = command.encode();
    let mut out = Vec::with_capacity(bytes.len() + 128);
    let mut b = BatchBuilder::new(&mut out, 0, 0);
    b.append(0, None, Some(&bytes), &[]);
    b.finish();
    out
}

/// The command in a controller log entry's payload.
pub fn command_of(payload: &[u8]) -> Result<Command, String> {
    let view = RecordBatchView::parse(payload).map_err(|e| e.to_string())?;
    let record = view
        .records()
        .next()
        .ok_or_else(|| "an empty controller batch".to_owned())?
        .map_err(|e| e.to_string())?;
    let value = record
        .value()
        .ok_or_else(|| "a controller record without a value".to_owned())?;
    Command::decode(value).map_err(|e| e.to_string())
}

/// A command proposed here, waiting to be applied.
#[derive(Debug)]
struct PendingApply {
    term: u64,
    tx: oneshot::Sender<Result<Applied, ServiceError>>,
}

/// How the controller is set up.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub dir: PathBuf,
    pub snapshot_entries: u64,
    pub session_timeout: Duration,
}

/// The controller's replica on this broker. Shard view: shard 0.
pub struct ControllerService {
    settings: ControllerSettings,
    service: Rc<RaftService>,
    links: Option<Rc<PeerLinks>>,
    state: RefCell<ClusterMetadata>,
    /// The last view made, and its version counter.
    view: RefCell<Arc<ClusterView>>,
    /// Notified when `view` changes (the publisher sends it to the shards)
    /// and after every applied batch (waiters for an index).
    changed: Event,
    pending: RefCell<BTreeMap<u64, PendingApply>>,
    leader: Cell<Option<NodeId>>,
    term: Cell<u64>,
    role: Cell<StateRole>,
    liveness: RefCell<Liveness>,
    last_snapshot_index: Cell<u64>,
    /// Set when a snapshot was written and the log should be compacted to
    /// after it (done by the housekeeping task, which may await).
    compact_to: Cell<Option<u64>>,
    /// Leadership reports waiting to be recorded, by group.
    reports: RefCell<BTreeMap<u64, LeaderRecord>>,
    /// A fatal refusal of this broker by the cluster (it exits).
    fatal: RefCell<Option<String>>,
}

impl std::fmt::Debug for ControllerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerService")
            .field("node_id", &self.settings.node_id)
            .field("leader", &self.leader.get())
            .field("term", &self.term.get())
            .finish_non_exhaustive()
    }
}

fn controller_error(code: ErrorCode, message: impl Into<String>) -> ServiceError {
    ServiceError::new(code, message)
}

fn no_leader() -> ServiceError {
    controller_error(
        ErrorCode::LeaderNotAvailable,
        "the controller has no leader right now (an election is in progress, or too few \
         controller voters are up); retry shortly",
    )
}

impl ControllerService {
    /// Opens the controller replica on shard 0's `service`: opens the
    /// replica, loads the newest snapshot file its log reaches, replays the
    /// committed entries after the snapshot.
    pub async fn open(
        settings: ControllerSettings,
        service: Rc<RaftService>,
        links: Option<Rc<PeerLinks>>,
    ) -> Result<Rc<Self>, ServiceError> {
        std::fs::create_dir_all(&settings.dir).map_err(|error| {
            controller_error(
                ErrorCode::StorageError,
                format!("cannot create {}: {error}", settings.dir.display()),
            )
        })?;
        service
            .add_controller(&settings.voters, &settings.learners)
            .await?;
        // A snapshot received from the leader is written before the log
        // restarts from it, so a crash never leaves a log that starts past
        // every snapshot file.
        let dir = settings.dir.clone();
        service
            .shard_loop()
            .set_snapshot_sink(Box::new(move |_group, point| {
                // One that does not decode is reported by `on_snapshot`.
                let Ok(state) = decode_snapshot(&point.data) else {
                    return Ok(());
                };
                write_snapshot_file_keeping_older(&dir, &state)
                    .map(|_| ())
                    .map_err(|error| StorageError::Io {
                        op: "write received controller snapshot",
                        path: dir.clone(),
                        source: std::io::Error::other(error.to_string()),
                    })
            }));
        let log = service.log().clone();
        let g = CONTROLLER_GROUP;
        // The newest snapshot the log reaches: one past the log's end was
        // received, but the log's restart from it did not survive a crash.
        let log_last = log.last_index(g).map_err(storage_error)?;
        let snapshot = load_latest_snapshot_up_to(&settings.dir, log_last)
            .map_err(|error| controller_error(ErrorCode::StorageError, error.to_string()))?;
        let mut state = snapshot.unwrap_or_else(ClusterMetadata::new);
        let first = log.first_index(g).map_err(storage_error)?;
        if first > state.applied_index + 1 {
            return Err(controller_error(
                ErrorCode::StorageError,
                format!(
                    "the controller log starts at index {first} but the newest snapshot in {} \
                     covers only up to {}: a snapshot file is missing; restore it, or wipe this \
                     broker's data directory and give it a new node id",
                    settings.dir.display(),
                    state.applied_index
                ),
            ));
        }
        if state.applied_index >= first {
            // A snapshot was written but the log not yet compacted past it.
            log.compact(g, state.applied_index + 1)
                .await
                .map_err(storage_error)?;
        }
        let last = log.last_index(g).map_err(storage_error)?;
        let commit = log.hard_state(g).map_err(storage_error)?.commit.min(last);
        let mut next = state.applied_index + 1;
        while next <= commit {
            let hi = (next + REPLAY_CHUNK_ENTRIES).min(commit + 1);
            let entries = log
                .entries(g, next, hi, None)
                .await
                .map_err(storage_error)?;
            for e in &entries {
                // Outcomes were answered before the restart.
                let _ = apply_one(&mut state, e.index, e.kind, &e.payload, settings.node_id);
            }
            next = hi;
        }
        let snapshot_index = log.first_index(g).map_err(storage_error)? - 1;
        let at_snapshot = if snapshot_index == 0 {
            ClusterMetadata::new()
        } else {
            load_latest_snapshot_up_to(&settings.dir, log_last)
                .ok()
                .flatten()
                .filter(|s| s.applied_index == snapshot_index)
                .unwrap_or_else(|| state.clone())
        };
        service.shard_loop().with_replica(g, |r| {
            r.store()
                .set_snapshot_data(snapshot_index, Bytes::from(encode_snapshot(&at_snapshot)))
        });
        tracing::info!(
            node_id = settings.node_id,
            applied = state.applied_index,
            version = state.version,
            brokers = state.brokers.len(),
            topics = state.topics.len(),
            "controller metadata recovered"
        );
        let view = Arc::new(ClusterView {
            cluster_id: settings.cluster_id.clone(),
            metadata: state.clone(),
            controller_leader: None,
            controller_term: 0,
            voters: settings.voters.clone(),
        });
        let last_snapshot = state.applied_index;
        let this = Rc::new(Self {
            liveness: RefCell::new(Liveness::new(settings.session_timeout)),
            settings,
            service,
            links,
            state: RefCell::new(state),
            view: RefCell::new(view),
            changed: Event::new(),
            pending: RefCell::new(BTreeMap::new()),
            leader: Cell::new(None),
            term: Cell::new(0),
            role: Cell::new(StateRole::Follower),
            last_snapshot_index: Cell::new(last_snapshot),
            compact_to: Cell::new(None),
            reports: RefCell::new(BTreeMap::new()),
            fatal: RefCell::new(None),
        });
        Ok(this)
    }

    /// The latest view.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// A listener notified at the next view change or applied batch.
    pub fn listen(&self) -> event_listener::EventListener {
        self.changed.listen()
    }

    /// Waits until the view changes or `timeout` passes.
    pub async fn changed(&self, timeout: Duration) {
        let listener = self.changed.listen();
        let timer = async {
            glommio::timer::Timer::new(timeout).await;
        };
        futures_lite::future::or(listener, timer).await;
    }

    /// The controller's leader as this broker knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader.get()
    }

    /// The controller group's term as this broker knows it.
    pub fn term(&self) -> u64 {
        self.term.get()
    }

    /// Why the cluster refused this broker, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.borrow().clone()
    }

    fn is_leader(&self) -> bool {
        self.role.get() == StateRole::Leader
    }

    fn republish(&self) {
        let view = Arc::new(ClusterView {
            cluster_id: self.settings.cluster_id.clone(),
            metadata: self.state.borrow().clone(),
            controller_leader: self.leader.get(),
            controller_term: self.term.get(),
            voters: self.settings.voters.clone(),
        });
        *self.view.borrow_mut() = view;
        self.changed.notify(usize::MAX);
    }

    fn on_applied(&self, entries: Vec<CommittedEntry>) {
        let mut changed = false;
        {
            let mut state = self.state.borrow_mut();
            let mut pending = self.pending.borrow_mut();
            for e in &entries {
                if e.index <= state.applied_index {
                    continue;
                }
                let before = state.version;
                let outcome = apply_one(
                    &mut state,
                    e.index,
                    e.kind,
                    &e.payload,
                    self.settings.node_id,
                );
                changed |= state.version != before;
                if let Some(p) = pending.remove(&e.index) {
                    let result = if p.term == e.term {
                        outcome
                    } else {
                        Err(no_leader())
                    };
                    let _ = p.tx.send(result);
                }
                // Proposals at lower indexes than what is applied now were
                // lost to another leader.
                let lost: Vec<u64> = pending.range(..e.index).map(|(i, _)| *i).collect();
                for i in lost {
                    if let Some(p) = pending.remove(&i) {
                        let _ = p.tx.send(Err(no_leader()));
                    }
                }
            }
        }
        self.maybe_snapshot();
        if changed {
            self.republish();
        } else {
            self.changed.notify(usize::MAX);
        }
    }

    fn maybe_snapshot(&self) {
        let applied = self.state.borrow().applied_index;
        if applied < self.last_snapshot_index.get() + self.settings.snapshot_entries {
            return;
        }
        let state = self.state.borrow().clone();
        // Small and rare: written with blocking i/o on shard 0.
        match write_snapshot_file(&self.settings.dir, &state) {
            Ok(path) => {
                tracing::debug!(path = %path.display(), applied, "controller snapshot written");
                self.service
                    .shard_loop()
                    .with_replica(CONTROLLER_GROUP, |r| {
                        r.store()
                            .set_snapshot_data(applied, Bytes::from(encode_snapshot(&state)))
                    });
                self.last_snapshot_index.set(applied);
                self.compact_to.set(Some(applied + 1));
            }
            Err(error) => tracing::error!(%error, "controller snapshot not written"),
        }
    }

    /// Compacts the controller log past the last snapshot, if one was
    /// written since the last call.
    pub async fn compact(&self) -> Result<(), ServiceError> {
        if let Some(first) = self.compact_to.take() {
            self.service
                .log()
                .compact(CONTROLLER_GROUP, first)
                .await
                .map_err(storage_error)?;
        }
        Ok(())
    }

    fn on_snapshot(&self, data: &[u8], index: u64) {
        match decode_snapshot(data) {
            Ok(state) => {
                // Written before the log restarted from it (the loop's
                // snapshot sink); that restart is durable now.
                if let Err(error) = remove_snapshots_before(&self.settings.dir, index) {
                    tracing::warn!(%error, "older controller snapshots not removed");
                }
                self.service
                    .shard_loop()
                    .with_replica(CONTROLLER_GROUP, |r| {
                        r.store()
                            .set_snapshot_data(index, Bytes::copy_from_slice(data))
                    });
                self.last_snapshot_index.set(index);
                *self.state.borrow_mut() = state;
                tracing::info!(index, "controller metadata installed from a snapshot");
                self.republish();
            }
            // A snapshot that does not decode came from a broker whose
            // build writes another format: nothing applied here can be
            // trusted any more.
            Err(error) => {
                let message = format!("the controller snapshot received does not decode: {error}");
                *self.fatal.borrow_mut() = Some(message);
                self.changed.notify(usize::MAX);
            }
        }
    }

    fn on_leadership(&self, role: StateRole, term: u64, leader: Option<u64>) {
        let was_leader = self.is_leader();
        self.role.set(role);
        self.term.set(term);
        self.leader.set(leader.and_then(node_of));
        if role == StateRole::Leader && !was_leader {
            self.liveness.borrow_mut().reset(Instant::now());
            tracing::info!(term, "this broker leads the controller");
        }
        if !matches!(role, StateRole::Leader) {
            // Proposals of a term we no longer lead may never commit.
            let mut pending = self.pending.borrow_mut();
            pending.retain(|_, p| p.term == term);
        }
        self.republish();
    }

    /// Runs `command`: proposes it when this broker leads the controller,
    /// forwards it to the leader otherwise; answers once applied (here too).
    pub async fn submit(&self, command: Command) -> Result<Applied, ServiceError> {
        let deadline = Instant::now() + SUBMIT_TIMEOUT;
        loop {
            let attempt = if self.is_leader() {
                self.submit_local(&command).await
            } else if let Some(leader) = self.leader.get() {
                self.forward(leader, &command, deadline).await
            } else {
                Err(no_leader())
            };
            match attempt {
                Err(error)
                    if error.code == ErrorCode::LeaderNotAvailable
                        || error.code == ErrorCode::NotLeader =>
                {
                    if Instant::now() >= deadline {
                        return Err(error);
                    }
                    // Wait for a new leader (a view change) or a moment.
                    self.changed(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn submit_local(&self, command: &Command) -> Result<Applied, ServiceError> {
        let batch = command_batch(command);
        let waiter = self
            .service
            .shard_loop()
            .produce(CONTROLLER_GROUP, &batch, false)
            .map_err(raft_error)?;
        let ticket = waiter.ticket();
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(
            ticket.index,
            PendingApply {
                term: ticket.term,
                tx,
            },
        );
        if let Err(error) = waiter.await {
            self.pending.borrow_mut().remove(&ticket.index);
            return Err(match raft_error(error) {
                e if e.code == ErrorCode::RequestTimedOut => e,
                _ => no_leader(),
            });
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(no_leader()),
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        command: &Command,
        deadline: Instant,
    ) -> Result<Applied, ServiceError> {
        let Some(links) = &self.links else {
            return Err(no_leader());
        };
        let timeout = deadline.saturating_duration_since(Instant::now());
        let to = PeerAddr {
            node_id: leader,
            shard: 0,
        };
        let reply = links
            .request(to, &command.encode(), timeout)
            .await
            .map_err(|error| match error {
                RequestError::Timeout | RequestError::ConnectionLost => controller_error(
                    ErrorCode::RequestTimedOut,
                    format!("the controller leader {leader} did not answer: {error}"),
                ),
                other => controller_error(
                    ErrorCode::LeaderNotAvailable,
                    format!("the controller leader {leader} is unreachable: {other}"),
                ),
            })?;
        if reply.error_code != 0 {
            return Err(controller_error(ErrorCode(reply.error_code), reply.message));
        }
        let (index, applied) = decode_reply(&reply.result).ok_or_else(|| {
            controller_error(
                ErrorCode::Unknown,
                "a controller reply that does not decode",
            )
        })?;
        // Answer once this broker applied it too, so what it serves next
        // shows the change.
        while self.state.borrow().applied_index < index {
            if Instant::now() >= deadline {
                break;
            }
            self.changed(Duration::from_millis(200)).await;
        }
        Ok(applied)
    }

    /// Runs a command forwarded by another broker (this one should lead).
    pub async fn handle_forwarded(&self, bytes: Bytes) -> ControllerReply {
        let command = match Command::decode(&bytes) {
            Ok(command) => command,
            Err(error) => {
                return ControllerReply {
                    error_code: error.code().0,
                    message: error.to_string(),
                    result: Bytes::new(),
                }
            }
        };
        if !self.is_leader() {
            let e = no_leader();
            return ControllerReply {
                error_code: e.code.0,
                message: e.message,
                result: Bytes::new(),
            };
        }
        match self.submit_local(&command).await {
            Ok(applied) => ControllerReply {
                error_code: 0,
                message: String::new(),
                result: encode_reply(self.state.borrow().applied_index, &applied),
            },
            Err(error) => ControllerReply {
                error_code: error.code.0,
                message: error.message,
                result: Bytes::new(),
            },
        }
    }

    /// A broker was heard from (inter-broker traffic reached shard 0).
    pub fn heard(&self, node: NodeId) {
        if self.is_leader() {
            self.liveness.borrow_mut().heard(node, Instant::now());
        }
    }

    /// Leaderships taken by this broker's shards, to record.
    pub fn report(&self, reports: Vec<LeadershipReport>) {
        let mut pending = self.reports.borrow_mut();
        for r in reports {
            if pending.len() >= LEADER_RECORDS_MAX && !pending.contains_key(&r.group) {
                break;
            }
            let record = LeaderRecord {
                group: r.group,
                leader: r.leader,
                term: r.term,
            };
            match pending.get(&r.group) {
                Some(old) if old.term > r.term => {}
                _ => {
                    pending.insert(r.group, record);
                }
            }
        }
    }

    /// One round of the controller's periodic work: record pending
    /// leaderships and, on the leader, the failure detector's verdicts.
    pub async fn tick(&self) {
        let reports: Vec<LeaderRecord> = {
            let state = self.state.borrow();
            let mut pending = self.reports.borrow_mut();
            let all = std::mem::take(&mut *pending);
            all.into_values()
                .filter(|r| {
                    // Already recorded: nothing to say.
                    !state.assignment(r.group).is_some_and(|(_, _, a)| {
                        a.leader == Some(r.leader) && a.leader_term >= r.term
                    })
                })
                .collect()
        };
        if !reports.is_empty() {
            let keep = reports.clone();
            if let Err(error) = self
                .submit(Command::RecordLeaders { leaders: reports })
                .await
            {
                tracing::debug!(%error, "leadership records not written; retrying");
                let mut pending = self.reports.borrow_mut();
                for r in keep {
                    pending.entry(r.group).or_insert(r);
                }
            }
        }
        if self.is_leader() {
            let verdicts = {
                let state = self.state.borrow();
                self.liveness
                    .borrow()
                    .verdicts(Instant::now(), &state, self.settings.node_id)
            };
            for command in verdicts {
                tracing::info!(?command, "failure detector");
                if let Err(error) = self.submit(command).await {
                    tracing::debug!(%error, "failure detector verdict not written");
                }
            }
        }
        if let Err(error) = self.compact().await {
            tracing::error!(%error, "controller log not compacted");
        }
    }

    /// Registers this broker with the cluster (retrying while the
    /// controller has no leader). A refusal (another broker, or this one
    /// with its data wiped, registered this node id; an invalid
    /// registration) is returned: the broker must stop.
    pub async fn register(&self, registration: BrokerRegistration) -> Result<(), ServiceError> {
        loop {
            let current = self
                .state
                .borrow()
                .brokers
                .get(&registration.node_id)
                .map(|b| {
                    b.incarnation == registration.incarnation
                        && b.inter_broker_addr == registration.inter_broker_addr
                        && b.client_host == registration.client_host
                        && b.client_port == registration.client_port
                        && b.shard_ports == registration.shard_ports
                        && b.is_active()
                });
            if current == Some(true) {
                return Ok(());
            }
            match self
                .submit(Command::RegisterBroker(registration.clone()))
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        node_id = registration.node_id,
                        "registered with the cluster"
                    );
                    return Ok(());
                }
                // Anything but "no controller leader right now" is a
                // refusal: retrying cannot change it.
                Err(error)
                    if !matches!(
                        error.code,
                        ErrorCode::LeaderNotAvailable
                            | ErrorCode::NotLeader
                            | ErrorCode::RequestTimedOut
                    ) =>
                {
                    return Err(error)
                }
                Err(error) => {
                    tracing::debug!(%error, "registration not done yet; retrying");
                    self.changed(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

impl super::raft_service::ControllerSink for ControllerService {
    fn on_controller_event(&self, event: LoopEvent) {
        match event {
            LoopEvent::Applied { entries, .. } => self.on_applied(entries),
            LoopEvent::SnapshotInstalled { point, .. } => {
                self.on_snapshot(&point.data, point.index)
            }
            LoopEvent::Leadership {
                role, term, leader, ..
            } => self.on_leadership(role, term, leader),
            LoopEvent::Committed { .. } => {}
        }
    }
}

/// Applies one controller log entry to `state`; the outcome for whoever
/// proposed it.
fn apply_one(
    state: &mut ClusterMetadata,
    index: u64,
    kind: EntryKind,
    payload: &[u8],
    self_id: NodeId,
) -> Result<Applied, ServiceError> {
    match kind {
        EntryKind::Data => match command_of(payload) {
            Ok(command) => state.apply(index, &command).map_err(|error| {
                if let crate::controller::ApplyError::IncarnationMismatch { node_id, .. } = &error {
                    if *node_id == self_id {
                        tracing::error!(%error, "this broker was refused by the cluster");
                    }
                }
                ServiceError::new(error.code(), error.to_string())
            }),
            Err(error) => {
                // Written by a newer build, or corrupt past its crc: skip
                // it on every broker alike.
                tracing::error!(index, %error, "controller entry does not decode; skipped");
                state.applied_index = index;
                Err(ServiceError::new(ErrorCode::InvalidRequest, error))
            }
        },
        // A new leader's empty entry, or a configuration change.
        EntryKind::Empty | EntryKind::ConfChange => {
            state.applied_index = index;
            Ok(Applied::Unchanged)
        }
    }
}

/// The result a forwarding broker gets: the index the command was applied
/// at, and what it did.
fn encode_reply(index: u64, applied: &Applied) -> Bytes {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&index.to_le_bytes());
    if let Applied::TopicCreated { id } = applied {
        out.extend_from_slice(&id.to_le_bytes());
    }
    Bytes::from(out)
}

fn decode_reply(bytes: &[u8]) -> Option<(u64, Applied)> {
    let index = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let applied = match bytes.get(8..12) {
        Some(id) => Applied::TopicCreated {
            id: u32::from_le_bytes(id.try_into().ok()?),
        },
        None => Applied::Unchanged,
    };
    Some((index, applied))
}
