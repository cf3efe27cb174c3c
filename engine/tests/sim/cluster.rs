//! The simulated cluster: brokers, each one shard (a `ShardLoop` over a
//! [`SimLog`]) holding its replicas of the partitions and of the
//! controller, driven round by round; their events turned into what the
//! broker's services do with them (watermarks, controller metadata,
//! snapshots); and every replica observed after every iteration.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardmq_engine::broker::controller_service::command_of;
use shardmq_engine::broker::raft_service::{node_of, raft_id};
use shardmq_engine::clock::ManualClock;
use shardmq_engine::controller::{
    decode_snapshot, encode_snapshot, place, Applied, ClusterMetadata, LeaderRecord, Liveness,
};
use shardmq_engine::raft::{
    Dest, GroupKind, GroupMembers, LoopEvent, Outbox, RaftLog, ShardLoop, ShardLoopConfig,
    StateRole, Transport, CONTROLLER_GROUP,
};
use shardmq_storage::EntryKind;

use super::disk::{CrashReport, SimLog};
use super::model::{GroupId, Model, NodeId};
use super::net::{LinkConfig, SimNet};
use super::rng::Rng;
use super::trace::Trace;
use super::workload::{fetch, send_produce, Client, ReadCtx};
use super::{ready, SimConfig, Stats};

/// Simulated time of one Raft tick.
pub const TICK_MS: u64 = 100;
/// Delivery rounds per tick: each running broker iterates once per round.
pub const ROUNDS_PER_TICK: u64 = 4;
pub const ROUND_MS: u64 = TICK_MS / ROUNDS_PER_TICK;
/// The controller leader's failure detector's session timeout.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(3);
/// Applied controller commands between two controller snapshots (small, so
/// snapshots, compaction and snapshot catch-up happen in every run).
pub const CONTROLLER_SNAPSHOT_ENTRIES: u64 = 12;
/// The topic whose partitions the workload produces to; created first, so
/// its id is 1 and its partition groups are `partition_id(1, p)`.
pub const SIM_TOPIC: &str = "sim";

/// Seed streams: each kind of decision draws from its own.
pub const STREAM_NET: u64 = 1;
pub const STREAM_WORK: u64 = 2;
pub const STREAM_FAULT: u64 = 3;
pub const STREAM_SETUP: u64 = 4;

/// A broker's endpoint on the simulated network.
#[derive(Debug)]
pub struct SimTransport {
    node: u64,
    net: Rc<RefCell<SimNet>>,
}

impl Transport for SimTransport {
    fn send(&self, outbox: &mut Outbox) {
        let mut net = self.net.borrow_mut();
        outbox.drain_each(|dest, msgs| {
            for (group, m) in msgs.drain(..) {
                net.submit(self.node, dest.node as u64, group, m);
            }
        });
    }

    fn take_unreachable(&self) -> Vec<Dest> {
        self.net
            .borrow_mut()
            .take_unreachable(self.node)
            .into_iter()
            .map(|n| Dest {
                node: n as NodeId,
                shard: 0,
            })
            .collect()
    }
}

pub type SimLoop = ShardLoop<SimTransport, SimLog>;

/// What readers may see of a partition on one broker (the broker's
/// `Visible`): raised by commits, never lowered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermark {
    pub offset: u64,
    pub index: u64,
}

/// The controller replica's view on one broker (the broker's
/// `ControllerService`).
#[derive(Debug)]
pub struct Controller {
    pub meta: ClusterMetadata,
    pub role: StateRole,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_snapshot_index: u64,
    pub compact_to: Option<u64>,
    pub liveness: Liveness,
}

/// A broker that is up.
#[derive(Debug)]
pub struct Running {
    pub lp: SimLoop,
    pub visible: BTreeMap<GroupId, Watermark>,
    /// Committed entries checked against the model, per group, up to.
    pub checked: BTreeMap<GroupId, u64>,
    pub ctrl: Controller,
    /// Leaderships its replicas took, for the controller to record.
    pub reports: Vec<LeaderRecord>,
    pub registered: bool,
}

#[derive(Debug)]
pub struct Broker {
    pub node: NodeId,
    pub log: SimLog,
    /// The controller's snapshot files by index: written at once, so they
    /// survive crashes (the broker writes them with blocking i/o).
    pub snapshot_files: Rc<RefCell<BTreeMap<u64, ClusterMetadata>>>,
    pub clock: Rc<ManualClock>,
    pub election_tick: usize,
    pub incarnation: u64,
    pub run: Option<Running>,
    pub restart_at: Option<u64>,
    pub paused_until: Option<u64>,
    pub boots: u32,
}

impl Broker {
    pub fn is_up(&self) -> bool {
        self.run.is_some()
    }

    /// Up and not paused: it iterates, ticks and answers requests.
    pub fn is_active(&self) -> bool {
        self.run.is_some() && self.paused_until.is_none()
    }
}

pub struct Sim {
    pub cfg: SimConfig,
    pub net: Rc<RefCell<SimNet>>,
    pub work: Rng,
    pub fault: Rng,
    pub brokers: Vec<Broker>,
    /// Partition groups and their replicas (node ids, preferred leader
    /// first), as placement puts them.
    pub placement: BTreeMap<GroupId, Vec<NodeId>>,
    pub model: Model,
    pub trace: Rc<RefCell<Trace>>,
    pub client: Client,
    pub stats: Stats,
    pub step: u64,
    pub now_ms: u64,
    pub base_link: LinkConfig,
    loop_cfg: ShardLoopConfig,
}

macro_rules! tr {
    ($sim:expr, $($arg:tt)*) => {
        $sim.trace.borrow_mut().event(format_args!($($arg)*))
    };
}
pub(crate) use tr;

/// The broker's `open_mark`: what a replica just opened may show.
fn open_mark(log: &SimLog, g: GroupId) -> Watermark {
    let first = log.first_index(g).expect("partition exists");
    let last = log.last_index(g).expect("partition exists");
    let commit = log
        .hard_state(g)
        .expect("partition exists")
        .commit
        .clamp(first - 1, last);
    Watermark {
        offset: log.offset_after(g, commit).expect("within the log"),
        index: commit,
    }
}

fn raise(visible: &mut BTreeMap<GroupId, Watermark>, g: GroupId, mark: Watermark) {
    if let Some(cur) = visible.get_mut(&g) {
        cur.offset = cur.offset.max(mark.offset);
        cur.index = cur.index.max(mark.index);
    }
}

/// Applies one controller entry as the broker does (`apply_one`).
fn apply_entry(meta: &mut ClusterMetadata, index: u64, kind: EntryKind, payload: &[u8]) -> String {
    match kind {
        EntryKind::Data => match command_of(payload) {
            Ok(command) => match meta.apply(index, &command) {
                Ok(Applied::Unchanged) => "unchanged".into(),
                Ok(a) => format!("{a:?}"),
                Err(e) => format!("refused: {e}"),
            },
            Err(e) => {
                meta.applied_index = index;
                format!("undecodable: {e}")
            }
        },
        EntryKind::Empty | EntryKind::ConfChange => {
            meta.applied_index = index;
            "empty".into()
        }
    }
}

pub fn metadata_digest(meta: &ClusterMetadata) -> u32 {
    crc32c::crc32c(&encode_snapshot(meta))
}

impl Sim {
    pub fn new(cfg: SimConfig, trace: Rc<RefCell<Trace>>) -> Sim {
        let seed = cfg.seed;
        let mut setup = Rng::stream(seed, STREAM_SETUP);
        let n = cfg.brokers;
        // raft-rs draws election timeouts from an unseeded generator: each
        // broker gets a fixed timeout of its own, distinct from the others.
        let mut timeouts: Vec<usize> = (0..n).map(|i| 10 + 2 * i).collect();
        setup.shuffle(&mut timeouts);
        let mut loop_cfg = ShardLoopConfig {
            tick_interval: Duration::from_millis(TICK_MS),
            ..ShardLoopConfig::default()
        };
        loop_cfg.replica.entry_cache_bytes_max = *setup.pick(&[256, 2048, 1 << 20]);
        loop_cfg.replica.max_size_per_msg = *setup.pick(&[1024, 16 << 10]);
        loop_cfg.replica.max_inflight_msgs = *setup.pick(&[4, 32]);
        let base_link = LinkConfig {
            delay_min: 0,
            delay_max: setup.between(0, 2),
            drop_per_mille: *setup.pick(&[0, 0, 10, 30]),
            dup_per_mille: *setup.pick(&[0, 10]),
        };
        let mut net = SimNet::with_rng(Rng::stream(seed, STREAM_NET));
        net.default_link = base_link;
        let net = Rc::new(RefCell::new(net));
        let start = Instant::now();
        let brokers = (0..n)
            .map(|i| {
                let log = SimLog::new();
                log.disk().fsync_lies = cfg.fsync_lies;
                Broker {
                    node: i as NodeId + 1,
                    log,
                    snapshot_files: Rc::default(),
                    clock: Rc::new(ManualClock::new(start)),
                    election_tick: timeouts[i],
                    incarnation: setup.next_u64(),
                    run: None,
                    restart_at: None,
                    paused_until: None,
                    boots: 0,
                }
            })
            .collect::<Vec<_>>();
        let nodes: Vec<(NodeId, u16)> = brokers.iter().map(|b| (b.node, 1)).collect();
        let rf = n.min(3) as u16;
        let placed = place(&nodes, cfg.partitions, rf, 0).expect("the simulated topic places");
        let placement = placed
            .into_iter()
            .enumerate()
            .map(|(p, replicas)| {
                (
                    shardmq_engine::controller::partition_id(1, p as u32),
                    replicas.iter().map(|r| r.node_id).collect(),
                )
            })
            .collect();
        trace.borrow_mut().event(format_args!(
            "seed {seed}: {n} brokers, {} partitions (rf {rf}), election ticks {timeouts:?}, \
             cache {} B, msg {} B, inflight {}, links {base_link:?}{}",
            cfg.partitions,
            loop_cfg.replica.entry_cache_bytes_max,
            loop_cfg.replica.max_size_per_msg,
            loop_cfg.replica.max_inflight_msgs,
            if cfg.fsync_lies { ", FSYNC LIES" } else { "" }
        ));
        Sim {
            work: Rng::stream(seed, STREAM_WORK),
            fault: Rng::stream(seed, STREAM_FAULT),
            cfg,
            net,
            brokers,
            placement,
            model: Model::default(),
            trace,
            client: Client::default(),
            stats: Stats::default(),
            step: 0,
            now_ms: 0,
            base_link,
            loop_cfg,
        }
    }

    pub fn nodes(&self) -> Vec<NodeId> {
        self.brokers.iter().map(|b| b.node).collect()
    }

    pub fn broker(&self, node: NodeId) -> &Broker {
        &self.brokers[(node - 1) as usize]
    }

    pub fn groups(&self) -> Vec<GroupId> {
        self.placement.keys().copied().collect()
    }

    /// Every group on broker `node`: the controller, then its partitions.
    pub fn groups_on(&self, node: NodeId) -> Vec<GroupId> {
        let mut out = vec![CONTROLLER_GROUP];
        out.extend(
            self.placement
                .iter()
                .filter(|(_, r)| r.contains(&node))
                .map(|(g, _)| *g),
        );
        out
    }

    fn members(nodes: &[NodeId]) -> GroupMembers {
        GroupMembers {
            voters: nodes
                .iter()
                .map(|n| (raft_id(*n), Dest { node: *n, shard: 0 }))
                .collect(),
            learners: Vec::new(),
        }
    }

    /// Starts broker `i` from what its disk holds, as the broker does: the
    /// controller first (snapshot file, then the committed entries after
    /// it), then every partition replica placed on it.
    pub fn boot(&mut self, i: usize) -> Result<(), String> {
        let node = self.brokers[i].node;
        let mut cfg = self.loop_cfg.clone();
        cfg.replica.election_tick = self.brokers[i].election_tick;
        cfg.replica.election_tick_max = cfg.replica.election_tick + 1;
        let b = &mut self.brokers[i];
        b.boots += 1;
        let log = b.log.clone();
        let lp = ShardLoop::new(
            log.clone(),
            SimTransport {
                node: node as u64,
                net: self.net.clone(),
            },
            cfg,
        )
        .with_clock(b.clock.clone());
        let all: Vec<NodeId> = (1..=self.cfg.brokers as NodeId).collect();
        let g = CONTROLLER_GROUP;
        ready(lp.add_replica(
            g,
            raft_id(node),
            Self::members(&all),
            GroupKind::StateMachine,
        ))
        .map_err(|e| format!("broker {node}: controller replica: {e}"))?;
        // A received snapshot is stored before the log restarts from it.
        let files = b.snapshot_files.clone();
        lp.set_snapshot_sink(Box::new(move |_, point| {
            if let Ok(meta) = decode_snapshot(&point.data) {
                files.borrow_mut().insert(meta.applied_index, meta);
            }
            Ok(())
        }));
        // The newest snapshot the log reaches.
        let log_last = log.last_index(g).expect("controller partition");
        let newest = |files: &BTreeMap<u64, ClusterMetadata>| {
            files.range(..=log_last).next_back().map(|(_, m)| m.clone())
        };
        let mut meta = newest(&b.snapshot_files.borrow()).unwrap_or_default();
        let first = log.first_index(g).expect("controller partition");
        if first > meta.applied_index + 1 {
            return Err(format!(
                "broker {node}: the controller log starts at index {first} but its snapshot \
                 covers only up to {}: the broker cannot recover its metadata",
                meta.applied_index
            ));
        }
        if meta.applied_index >= first {
            log.compact(g, meta.applied_index + 1)
                .map_err(|e| format!("broker {node}: compact on open: {e}"))?;
        }
        let last = log.last_index(g).expect("controller partition");
        let commit = log
            .hard_state(g)
            .expect("controller partition")
            .commit
            .min(last);
        for index in meta.applied_index + 1..=commit {
            let e = log.entry(g, index).expect("committed entry in the log");
            apply_entry(&mut meta, index, e.kind, &e.payload);
        }
        let snapshot_index = log.first_index(g).expect("controller partition") - 1;
        let at_snapshot = if snapshot_index == 0 {
            ClusterMetadata::new()
        } else {
            newest(&b.snapshot_files.borrow())
                .filter(|s| s.applied_index == snapshot_index)
                .unwrap_or_else(|| meta.clone())
        };
        lp.with_replica(g, |r| {
            r.store()
                .set_snapshot_data(snapshot_index, Bytes::from(encode_snapshot(&at_snapshot)))
        });
        let mut visible = BTreeMap::new();
        let mut checked = BTreeMap::new();
        checked.insert(g, log.first_index(g).expect("controller partition") - 1);
        let mine: Vec<(GroupId, Vec<NodeId>)> = self
            .placement
            .iter()
            .filter(|(_, r)| r.contains(&node))
            .map(|(g, r)| (*g, r.clone()))
            .collect();
        for (g, replicas) in mine {
            let fresh = !log.partitions().contains(&g);
            ready(lp.add_replica(
                g,
                raft_id(node),
                Self::members(&replicas),
                GroupKind::Partition,
            ))
            .map_err(|e| format!("broker {node}: replica of {g}: {e}"))?;
            visible.insert(g, open_mark(&log, g));
            checked.insert(g, log.first_index(g).expect("partition") - 1);
            if fresh && replicas[0] == node {
                // A new partition's preferred leader campaigns at once.
                let _ = lp.campaign(g);
            }
        }
        let applied = meta.applied_index;
        let digest = metadata_digest(&meta);
        b.run = Some(Running {
            lp,
            visible,
            checked,
            ctrl: Controller {
                last_snapshot_index: snapshot_index
                    .max(newest(&b.snapshot_files.borrow()).map_or(0, |s| s.applied_index)),
                meta,
                role: StateRole::Follower,
                term: 0,
                leader: None,
                compact_to: None,
                liveness: Liveness::new(SESSION_TIMEOUT),
            },
            reports: Vec::new(),
            registered: false,
        });
        b.restart_at = None;
        b.paused_until = None;
        let boots = b.boots;
        self.net.borrow_mut().down.remove(&(node as u64));
        self.model.metadata(applied, digest, node)?;
        tr!(
            self,
            "broker {node} boots (#{boots}): controller applied {applied}, log first {first}"
        );
        // What recovery read back must agree with what was committed.
        self.observe(i, false)
    }

    /// Takes broker `i` down: its loop and everything in memory are gone,
    /// the disk keeps what a power loss leaves.
    pub fn crash(&mut self, i: usize, keep_unsynced: bool, restart_in: u64) {
        let report = {
            let b = &mut self.brokers[i];
            b.run = None;
            b.paused_until = None;
            b.log.disk().crash_at_next_sync = None;
            b.log.crash(&mut self.fault, keep_unsynced)
        };
        self.went_down(i, report, restart_in, "crashes");
    }

    fn went_down(&mut self, i: usize, report: CrashReport, restart_in: u64, how: &str) {
        let node = self.brokers[i].node;
        self.brokers[i].run = None;
        self.brokers[i].paused_until = None;
        self.brokers[i].restart_at = Some(self.step + restart_in);
        self.net.borrow_mut().down.insert(node as u64);
        self.stats.crashes += 1;
        tr!(
            self,
            "broker {node} {how}: {} of {} unsynced writes survive; restarts at step {}",
            report.kept,
            report.unsynced,
            self.step + restart_in
        );
    }

    /// One iteration of broker `i`'s loop, then what the broker does with
    /// its events, then the checks.
    fn process(&mut self, i: usize) -> Result<(), String> {
        let node = self.brokers[i].node;
        // Now and then the iteration's sync waits, and a fetch of one of
        // the broker's partitions runs meanwhile, as on a real shard.
        let yield_at_sync = self.work.chance(250);
        self.brokers[i].log.disk().yield_next_sync = yield_at_sync;
        let result = {
            let Sim {
                brokers,
                work,
                client,
                model,
                stats,
                placement,
                trace,
                cfg,
                step,
                ..
            } = self;
            let b = &brokers[i];
            let run = b.run.as_ref().expect("running broker");
            let groups: Vec<GroupId> = placement
                .iter()
                .filter(|(_, r)| r.contains(&node))
                .map(|(g, _)| *g)
                .collect();
            let mut iteration = std::pin::pin!(run.lp.process());
            let mut cx = Context::from_waker(Waker::noop());
            let mut yields = 0;
            loop {
                match iteration.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => break r,
                    Poll::Pending => {
                        yields += 1;
                        assert!(yields <= 1, "an iteration waited on something but its sync");
                        if !groups.is_empty() && work.chance(400) {
                            // A produce arrives: proposed while a write is
                            // in flight, it is queued in the replica.
                            let g = *work.pick(&groups);
                            let records = work.between(1, 3) as usize;
                            let id = client.create(cfg.seed, g, records);
                            stats.produced += 1;
                            stats.mid_iteration_produces += 1;
                            if !send_produce(b, id, client, *step, &mut trace.borrow_mut())? {
                                client.requeue(id);
                            }
                        }
                        if !groups.is_empty() {
                            let g = *work.pick(&groups);
                            stats.mid_iteration_reads += 1;
                            fetch(
                                b,
                                g,
                                &mut ReadCtx {
                                    work,
                                    served_hw: &mut client.served_hw,
                                    model,
                                    stats,
                                },
                            )?;
                        }
                    }
                }
            }
        };
        self.brokers[i].log.disk().yield_next_sync = false;
        match result {
            Ok(report) => {
                self.stats.iterations += 1;
                self.stats.fetches += report.fetches as u64;
            }
            Err(e) => {
                let crashed = self.brokers[i].log.disk().crashed_in_sync.take();
                match crashed {
                    Some(report) => {
                        // What the loop knew committed before its sync
                        // (answered early) is durable on a quorum: the
                        // model learns it before the broker's memory goes
                        // (a follower's commit may pass what it had synced).
                        self.observe(i, true)?;
                        self.stats.sync_crashes += 1;
                        let restart_in = self.fault.between(2, 30);
                        self.went_down(i, report, restart_in, "loses power during a sync");
                        return Ok(());
                    }
                    None => return Err(format!("broker {node}: the shard loop failed: {e}")),
                }
            }
        }
        self.handle_events(i)?;
        self.observe(i, false)?;
        // The controller compacts its log past its last snapshot.
        let b = &mut self.brokers[i];
        let run = b.run.as_mut().expect("running broker");
        if let Some(first) = run.ctrl.compact_to.take() {
            b.log
                .compact(CONTROLLER_GROUP, first)
                .map_err(|e| format!("broker {node}: controller compaction: {e}"))?;
        }
        Ok(())
    }

    fn handle_events(&mut self, i: usize) -> Result<(), String> {
        let Sim {
            brokers,
            model,
            trace,
            stats,
            ..
        } = self;
        let b = &mut brokers[i];
        let node = b.node;
        let now = b.clock.now_instant();
        let run = b.run.as_mut().expect("running broker");
        let mut events = Vec::new();
        run.lp.take_events(&mut events);
        for event in events {
            match event {
                LoopEvent::Leadership {
                    group,
                    role,
                    term,
                    leader,
                    serving,
                } => {
                    trace.borrow_mut().event(format_args!(
                        "broker {node} group {group:x}: {role:?} term {term}, leader {:?}{}",
                        leader.and_then(node_of),
                        if serving { ", serving" } else { "" }
                    ));
                    if role == StateRole::Leader {
                        stats.leaderships += 1;
                    }
                    if group == CONTROLLER_GROUP {
                        let was_leader = run.ctrl.role == StateRole::Leader;
                        run.ctrl.role = role;
                        run.ctrl.term = term;
                        run.ctrl.leader = leader.and_then(node_of);
                        if role == StateRole::Leader && !was_leader {
                            run.ctrl.liveness.reset(now);
                        }
                    } else if serving {
                        run.reports.push(LeaderRecord {
                            group,
                            leader: node,
                            term,
                        });
                    }
                }
                LoopEvent::Committed { group, index } => {
                    if let Ok(offset) = b.log.offset_after(group, index) {
                        raise(&mut run.visible, group, Watermark { offset, index });
                    }
                }
                LoopEvent::SnapshotInstalled { group, point } => {
                    stats.snapshots_installed += 1;
                    trace.borrow_mut().event(format_args!(
                        "broker {node} group {group:x}: snapshot installed at index {} (term {}, \
                         offset {})",
                        point.index, point.term, point.first_offset
                    ));
                    if group == CONTROLLER_GROUP {
                        let meta = decode_snapshot(&point.data).map_err(|e| {
                            format!("broker {node}: controller snapshot does not decode: {e}")
                        })?;
                        // Stored by the sink; the log's restart is
                        // durable now, so the older ones go.
                        b.snapshot_files
                            .borrow_mut()
                            .retain(|i, _| *i >= point.index);
                        run.lp.with_replica(group, |r| {
                            r.store().set_snapshot_data(point.index, point.data.clone())
                        });
                        run.ctrl.last_snapshot_index = point.index;
                        model.metadata(meta.applied_index, metadata_digest(&meta), node)?;
                        run.ctrl.meta = meta;
                    } else {
                        raise(
                            &mut run.visible,
                            group,
                            Watermark {
                                offset: point.first_offset,
                                index: point.index,
                            },
                        );
                    }
                }
                LoopEvent::Applied { group, entries } => {
                    debug_assert_eq!(group, CONTROLLER_GROUP);
                    for e in entries {
                        if e.index <= run.ctrl.meta.applied_index {
                            continue;
                        }
                        let outcome = apply_entry(&mut run.ctrl.meta, e.index, e.kind, &e.payload);
                        stats.controller_applied += 1;
                        let meta = &run.ctrl.meta;
                        if e.kind == EntryKind::Data {
                            trace.borrow_mut().event(format_args!(
                                "broker {node} controller applies {}: {outcome} (version {})",
                                e.index, meta.version
                            ));
                        }
                        model.metadata(meta.applied_index, metadata_digest(meta), node)?;
                    }
                    // The controller's snapshot, then compaction past it.
                    let applied = run.ctrl.meta.applied_index;
                    if applied >= run.ctrl.last_snapshot_index + CONTROLLER_SNAPSHOT_ENTRIES {
                        let meta = run.ctrl.meta.clone();
                        let data = Bytes::from(encode_snapshot(&meta));
                        let mut files = b.snapshot_files.borrow_mut();
                        files.insert(applied, meta);
                        files.retain(|i, _| *i >= applied);
                        drop(files);
                        run.lp.with_replica(CONTROLLER_GROUP, |r| {
                            r.store().set_snapshot_data(applied, data)
                        });
                        run.ctrl.last_snapshot_index = applied;
                        run.ctrl.compact_to = Some(applied + 1);
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks broker `i`'s replicas: one leader per term, and every entry
    /// it holds as committed agrees with every other replica's.
    /// After a crash in a sync (`crashed`), only what raft knew durable on
    /// this broker is read.
    pub fn observe(&mut self, i: usize, crashed: bool) -> Result<(), String> {
        let node = self.brokers[i].node;
        let groups = self.groups_on(node);
        let Sim { brokers, model, .. } = self;
        let b = &mut brokers[i];
        let run = b.run.as_mut().expect("running broker");
        for g in groups {
            let Some((leader, term, commit, persisted)) = run.lp.with_replica(g, |r| {
                (
                    r.is_leader(),
                    r.term(),
                    r.commit_index(),
                    r.persisted_index(),
                )
            }) else {
                continue;
            };
            if leader {
                model.leader(g, term, node)?;
            }
            let first = b.log.first_index(g).expect("group in the log");
            let last = b.log.last_index(g).expect("group in the log");
            // After a crash, what survived past raft's persisted index may
            // be an older, replaced suffix.
            let commit = if crashed {
                commit.min(persisted)
            } else {
                commit
            };
            if commit > last {
                return Err(format!(
                    "broker {node} group {g:x}: commit index {commit} past its log's last index \
                     {last}"
                ));
            }
            let checked = run.checked.entry(g).or_insert(0);
            let from = (*checked + 1).max(first);
            for index in from..=commit {
                let e = b.log.entry(g, index).expect("index within the log");
                model.committed(g, &e, node, g != CONTROLLER_GROUP)?;
            }
            *checked = (*checked).max(commit);
        }
        Ok(())
    }

    /// One delivery round: every active broker iterates (in an order drawn
    /// from the network's stream), then the network delivers what is due.
    pub fn round(&mut self) -> Result<(), String> {
        let mut order: Vec<usize> = (0..self.brokers.len())
            .filter(|i| self.brokers[*i].is_active())
            .collect();
        self.net.borrow_mut().rng.shuffle(&mut order);
        for i in order {
            if self.brokers[i].is_active() {
                self.process(i)?;
            }
        }
        let due = {
            let mut net = self.net.borrow_mut();
            let due = net.take_due();
            net.now += 1;
            due
        };
        for d in due {
            let b = &mut self.brokers[(d.to - 1) as usize];
            let now = b.clock.now_instant();
            if let Some(run) = b.run.as_mut() {
                if run.ctrl.role == StateRole::Leader {
                    // Inter-broker traffic is the failure detector's sign
                    // of life.
                    run.ctrl.liveness.heard(d.from as NodeId, now);
                }
                run.lp.deliver(d.group, d.msg);
            }
        }
        self.now_ms += ROUND_MS;
        self.trace.borrow_mut().now_ms = self.now_ms;
        for b in &self.brokers {
            b.clock.advance(Duration::from_millis(ROUND_MS));
        }
        self.poll_produces()?;
        self.poll_commands();
        Ok(())
    }

    /// One tick of simulated time: faults (if `faults`), restarts, the
    /// workload, a Raft tick on every active broker, then the rounds.
    pub fn step_once(&mut self, faults: bool) -> Result<(), String> {
        self.step += 1;
        self.trace.borrow_mut().step = self.step;
        if faults {
            self.nemesis()?;
        }
        for i in 0..self.brokers.len() {
            let b = &self.brokers[i];
            if b.run.is_none() && b.restart_at.is_some_and(|s| s <= self.step) {
                self.boot(i)?;
            } else if b.paused_until.is_some_and(|s| s <= self.step) {
                self.brokers[i].paused_until = None;
                tr!(self, "broker {} resumes", self.brokers[i].node);
            }
        }
        self.workload(faults)?;
        for b in &self.brokers {
            if let (Some(run), None) = (&b.run, b.paused_until) {
                run.lp.tick();
            }
        }
        for _ in 0..ROUNDS_PER_TICK {
            self.round()?;
        }
        if self.cfg.fsync_lies {
            for b in &self.brokers {
                // The device writes its cache back now and then.
                if self.fault.chance(100) {
                    b.log.write_back();
                }
            }
        }
        Ok(())
    }

    /// The broker whose controller replica leads and has committed in its
    /// term, if any.
    pub fn controller_leader(&self) -> Option<usize> {
        (0..self.brokers.len()).find(|&i| {
            self.brokers[i].is_active()
                && self.brokers[i]
                    .run
                    .as_ref()
                    .and_then(|r| {
                        r.lp.with_replica(CONTROLLER_GROUP, |rep| rep.leads_with_commit())
                    })
                    .unwrap_or(false)
        })
    }

    /// Whether `a` and `b` can talk both ways.
    pub fn reachable(&self, a: NodeId, b: NodeId) -> bool {
        let net = self.net.borrow();
        !net.is_cut(a as u64, b as u64) && !net.is_cut(b as u64, a as u64)
    }

    pub fn all_nodes_set(&self) -> BTreeSet<u64> {
        self.brokers.iter().map(|b| b.node as u64).collect()
    }
}

/// Reads the current instant of a [`ManualClock`].
pub trait ClockNow {
    fn now_instant(&self) -> Instant;
}

impl ClockNow for Rc<ManualClock> {
    fn now_instant(&self) -> Instant {
        shardmq_engine::clock::Clock::now(self.as_ref())
    }
}
