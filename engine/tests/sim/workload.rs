//! The workload, drawn from its own seed stream: producers of unique
//! values with acks=all through the shard loop's produce path (retrying,
//! as the SDK does, only what is known not to be stored), readers that
//! fetch through the broker's read rules (a leader serves only once it has
//! committed in its term, never past its high watermark; a follower up to
//! its own), and the controller's clients (registration, topic admin,
//! leadership records, the failure detector's verdicts).

use std::collections::{BTreeMap, VecDeque};

use shardmq_engine::broker::controller_service::command_batch;
use shardmq_engine::broker::raft_service::{node_of, raft_id};
use shardmq_engine::controller::{BrokerRegistration, Command, LeaderRecord};
use shardmq_engine::raft::{ProduceAck, ProduceWaiter, RaftError, RaftLog, CONTROLLER_GROUP};
use shardmq_schema::batch::BatchBuilder;

use super::cluster::{tr, Broker, ClockNow, Sim, Watermark, SIM_TOPIC};
use super::model::{record_values, GroupId, Model, NodeId};
use super::rng::Rng;
use super::trace::Trace;
use super::Stats;

/// Most attempts one produce gets before the client gives up on it.
const PRODUCE_ATTEMPTS_MAX: u32 = 500;
/// Most produces waiting on the brokers at once.
const PRODUCES_IN_FLIGHT_MAX: usize = 64;
/// Steps (ticks) a produce waits for its answer before the client gives
/// up on it (the broker answers RequestTimedOut then, outcome unknown).
const PRODUCE_TIMEOUT_STEPS: u64 = 100;
/// Bytes one fetch asks for.
const FETCH_BYTES_MAX: u64 = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceState {
    /// To be sent (first time, or again after an answer saying the batch
    /// is not stored).
    Queued,
    InFlight,
    Acked(ProduceAck),
    /// The answer does not say whether it is stored: never resent.
    Unknown,
    Abandoned,
}

#[derive(Debug)]
pub struct Produce {
    pub group: GroupId,
    pub batch: Vec<u8>,
    pub values: Vec<Vec<u8>>,
    pub attempts: u32,
    pub state: ProduceState,
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    node: NodeId,
    waiter: ProduceWaiter,
    sent_step: u64,
}

#[derive(Debug)]
struct CommandInFlight {
    what: String,
    node: NodeId,
    waiter: ProduceWaiter,
}

#[derive(Debug, Default)]
pub struct Client {
    pub produces: BTreeMap<u64, Produce>,
    queued: VecDeque<u64>,
    in_flight: Vec<InFlight>,
    /// Where the client last heard each partition is led.
    hints: BTreeMap<GroupId, NodeId>,
    /// The highest watermark leaders served for each partition, by term,
    /// with who served it.
    pub served_hw: BTreeMap<GroupId, BTreeMap<u64, (u64, NodeId)>>,
    commands: Vec<CommandInFlight>,
    /// The step at which each broker last sent its registration.
    registering: BTreeMap<NodeId, u64>,
    topic_proposed_at: Option<u64>,
    next_topic: u32,
}

impl Client {
    pub fn pending(&self) -> usize {
        self.queued.len() + self.in_flight.len()
    }

    /// A new produce of `records` unique values to `group`, not sent yet.
    pub fn create(&mut self, seed: u64, group: GroupId, records: usize) -> u64 {
        let id = self.produces.len() as u64;
        let (batch, values) = make_batch(seed, id, records);
        self.produces.insert(
            id,
            Produce {
                group,
                batch,
                values,
                attempts: 0,
                state: ProduceState::Queued,
            },
        );
        id
    }

    /// Sends it again later.
    pub fn requeue(&mut self, id: u64) {
        self.queued.push_back(id);
    }
}

/// Sends produce `id` to broker `b` (through the shard loop's produce, as
/// acks=all does). Returns whether it was proposed; when not, the answer
/// said it is not stored and the caller sends it again later.
pub fn send_produce(
    b: &Broker,
    id: u64,
    client: &mut Client,
    step: u64,
    trace: &mut Trace,
) -> Result<bool, String> {
    let node = b.node;
    let p = client.produces.get_mut(&id).expect("produce");
    let g = p.group;
    p.attempts += 1;
    let run = b.run.as_ref().expect("active broker");
    match run.lp.produce(g, &p.batch, false) {
        Ok(waiter) => {
            let t = waiter.ticket();
            p.state = ProduceState::InFlight;
            client.in_flight.push(InFlight {
                id,
                node,
                waiter,
                sent_step: step,
            });
            trace.event(format_args!(
                "produce {id} to {g:x} on broker {node}: proposed at index {} term {}{}",
                t.index,
                t.term,
                if run.lp.with_replica(g, |r| r.in_flight()).unwrap_or(false) {
                    " (queued: a write is in flight)"
                } else {
                    ""
                }
            ));
            Ok(true)
        }
        Err(RaftError::NotLeader { leader, .. }) => {
            match leader.and_then(node_of) {
                Some(l) => client.hints.insert(g, l),
                None => client.hints.remove(&g),
            };
            p.state = ProduceState::Queued;
            Ok(false)
        }
        Err(RaftError::ProposalDropped { reason, .. }) if reason.known_not_committed() => {
            p.state = ProduceState::Queued;
            Ok(false)
        }
        Err(e) => Err(format!("produce {id} to {g:x} on broker {node}: {e}")),
    }
}

/// A batch of `records` records with unique values.
fn make_batch(seed: u64, id: u64, records: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut out = Vec::new();
    let ts = 1_700_000_000_000 + id as i64;
    let mut b = BatchBuilder::new(&mut out, 0, ts);
    let mut values = Vec::new();
    for r in 0..records {
        let value = format!("s{seed}-p{id}-r{r}").into_bytes();
        b.append(ts + r as i64, Some(&id.to_le_bytes()), Some(&value), &[]);
        values.push(value);
    }
    b.finish();
    (out, values)
}

impl Sim {
    pub fn registration(&self, node: NodeId) -> BrokerRegistration {
        BrokerRegistration {
            node_id: node,
            inter_broker_addr: format!("broker-{node}:7000"),
            client_host: format!("broker-{node}"),
            client_port: 9092,
            shard_ports: vec![9092],
            incarnation: self.broker(node).incarnation,
        }
    }

    /// Queues a new produce of `records` records to `group`.
    pub fn new_produce(&mut self, group: GroupId, records: usize) {
        let id = self.client.create(self.cfg.seed, group, records);
        self.client.queued.push_back(id);
        self.stats.produced += 1;
    }

    /// The workload's share of one step: new produces and reads while
    /// `faults` (the run proper), and always the sends of what is queued
    /// and the controller's clients.
    pub fn workload(&mut self, faults: bool) -> Result<(), String> {
        if faults && self.client.in_flight.len() < PRODUCES_IN_FLIGHT_MAX {
            for _ in 0..self.work.below(3) {
                let groups = self.groups();
                let g = *self.work.pick(&groups);
                let records = self.work.between(1, 3) as usize;
                self.new_produce(g, records);
            }
        }
        self.send_queued()?;
        for _ in 0..self.work.below(8) {
            self.read()?;
        }
        self.controller_clients(faults)
    }

    /// Picks the broker a produce to `g` goes to: the last hint if that
    /// broker answers, else a random replica that does.
    fn target(&mut self, g: GroupId) -> Option<NodeId> {
        if let Some(&n) = self.client.hints.get(&g) {
            if self.broker(n).is_active() && self.work.chance(900) {
                return Some(n);
            }
        }
        let live: Vec<NodeId> = self.placement[&g]
            .iter()
            .copied()
            .filter(|n| self.broker(*n).is_active())
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(*self.work.pick(&live))
    }

    fn send_queued(&mut self) -> Result<(), String> {
        let mut later = VecDeque::new();
        while let Some(id) = self.client.queued.pop_front() {
            let g = self.client.produces[&id].group;
            let Some(node) = self.target(g) else {
                later.push_back(id);
                continue;
            };
            let p = self.client.produces.get_mut(&id).expect("queued produce");
            if p.attempts >= PRODUCE_ATTEMPTS_MAX {
                p.state = ProduceState::Abandoned;
                continue;
            }
            let Sim {
                brokers,
                client,
                trace,
                step,
                ..
            } = self;
            let b = &brokers[(node - 1) as usize];
            if !send_produce(b, id, client, *step, &mut trace.borrow_mut())? {
                later.push_back(id);
            }
        }
        self.client.queued = later;
        Ok(())
    }

    /// Resolves the produces whose outcome is known, checking every
    /// acknowledgement against what replicas committed.
    pub fn poll_produces(&mut self) -> Result<(), String> {
        let mut i = 0;
        while i < self.client.in_flight.len() {
            let Some(result) = self.client.in_flight[i].waiter.try_result() else {
                if self.step >= self.client.in_flight[i].sent_step + PRODUCE_TIMEOUT_STEPS {
                    let f = self.client.in_flight.swap_remove(i);
                    let p = self
                        .client
                        .produces
                        .get_mut(&f.id)
                        .expect("produce in flight");
                    p.state = ProduceState::Unknown;
                    self.stats.timed_out += 1;
                    tr!(
                        self,
                        "produce {} on broker {}: timed out, outcome unknown",
                        f.id,
                        f.node
                    );
                    continue;
                }
                i += 1;
                continue;
            };
            let f = self.client.in_flight.swap_remove(i);
            let p = self
                .client
                .produces
                .get_mut(&f.id)
                .expect("produce in flight");
            match result {
                Ok(ack) => {
                    p.state = ProduceState::Acked(ack);
                    self.stats.acked += 1;
                    let g = p.group;
                    let values = p.values.clone();
                    tr!(
                        self,
                        "produce {} to {g:x} acked by broker {}: index {} term {} offset {}",
                        f.id,
                        f.node,
                        ack.index,
                        ack.term,
                        ack.base_offset
                    );
                    self.check_ack(g, &values, ack)?;
                    // The broker raises what readers see on an acks=all
                    // answer.
                    let b = &mut self.brokers[(f.node - 1) as usize];
                    if let Some(run) = b.run.as_mut() {
                        if let Some(cur) = run.visible.get_mut(&g) {
                            cur.offset = cur.offset.max(ack.base_offset + values.len() as u64);
                            cur.index = cur.index.max(ack.index);
                        }
                    }
                }
                Err(RaftError::ProposalDropped { reason, .. }) if reason.known_not_committed() => {
                    p.state = ProduceState::Queued;
                    tr!(
                        self,
                        "produce {} on broker {}: {reason}; resent",
                        f.id,
                        f.node
                    );
                    self.client.queued.push_back(f.id);
                }
                Err(e) => {
                    p.state = ProduceState::Unknown;
                    tr!(
                        self,
                        "produce {} on broker {}: outcome unknown: {e}",
                        f.id,
                        f.node
                    );
                }
            }
        }
        Ok(())
    }

    /// An acknowledged batch is committed at the index, term and offsets
    /// it was acknowledged with.
    pub fn check_ack(&self, g: GroupId, values: &[Vec<u8>], ack: ProduceAck) -> Result<(), String> {
        let Some(e) = self.model.entry(g, ack.index) else {
            return Err(format!(
                "group {g:x}: acked index {} (term {}) is not committed on any replica",
                ack.index, ack.term
            ));
        };
        if e.term != ack.term || e.base_offset != ack.base_offset {
            return Err(format!(
                "group {g:x}: acked index {} term {} offset {}, but committed there: term {} \
                 offset {}",
                ack.index, ack.term, ack.base_offset, e.term, e.base_offset
            ));
        }
        let stored = record_values(&e.payload)?;
        for (k, v) in values.iter().enumerate() {
            let want = ack.base_offset + k as u64;
            match stored.get(k) {
                Some((sv, so)) if sv == v && *so == want => {}
                _ => {
                    return Err(format!(
                        "group {g:x}: acked value {} at offset {want} is not what index {} holds",
                        String::from_utf8_lossy(v),
                        ack.index
                    ))
                }
            }
        }
        Ok(())
    }

    /// One fetch from a random replica, through the broker's rules.
    fn read(&mut self) -> Result<(), String> {
        let groups = self.groups();
        let g = *self.work.pick(&groups);
        let replicas = self.placement[&g].clone();
        let node = *self.work.pick(&replicas);
        let Sim {
            brokers,
            work,
            client,
            model,
            stats,
            ..
        } = self;
        let b = &brokers[(node - 1) as usize];
        if !b.is_active() {
            return Ok(());
        }
        fetch(
            b,
            g,
            &mut ReadCtx {
                work,
                served_hw: &mut client.served_hw,
                model,
                stats,
            },
        )
    }

    /// Proposes `command` as broker `from` would: on itself when its
    /// controller replica leads, forwarded to the leader it knows
    /// otherwise. Returns whether it was proposed.
    pub fn submit(&mut self, from: NodeId, command: Command, what: String) -> bool {
        let b = self.broker(from);
        let Some(run) = b.run.as_ref() else {
            return false;
        };
        let at = if run.ctrl.role == shardmq_engine::raft::StateRole::Leader {
            from
        } else {
            match run.ctrl.leader {
                Some(l) if self.broker(l).is_active() && self.reachable(from, l) => l,
                _ => return false,
            }
        };
        let run = self.broker(at).run.as_ref().expect("active broker");
        match run
            .lp
            .produce(CONTROLLER_GROUP, &command_batch(&command), false)
        {
            Ok(waiter) => {
                tr!(
                    self,
                    "controller command from broker {from} proposed on broker {at} at index {}: \
                     {what}",
                    waiter.ticket().index
                );
                self.client.commands.push(CommandInFlight {
                    what,
                    node: at,
                    waiter,
                });
                self.stats.commands += 1;
                true
            }
            Err(_) => false,
        }
    }

    pub fn poll_commands(&mut self) {
        let mut i = 0;
        while i < self.client.commands.len() {
            match self.client.commands[i].waiter.try_result() {
                None => i += 1,
                Some(result) => {
                    let c = self.client.commands.swap_remove(i);
                    match result {
                        Ok(ack) => tr!(
                            self,
                            "controller command committed at index {} (broker {}): {}",
                            ack.index,
                            c.node,
                            c.what
                        ),
                        Err(e) => tr!(
                            self,
                            "controller command on broker {} failed: {e}: {}",
                            c.node,
                            c.what
                        ),
                    }
                }
            }
        }
    }

    /// Registration of every broker, the workload's topic, random topic
    /// admin (while `faults`), leadership records and the failure
    /// detector's verdicts.
    fn controller_clients(&mut self, faults: bool) -> Result<(), String> {
        let nodes = self.nodes();
        for &node in &nodes {
            let b = self.broker(node);
            if !b.is_active() {
                continue;
            }
            let run = b.run.as_ref().expect("active");
            if run.registered {
                continue;
            }
            let done = run
                .ctrl
                .meta
                .brokers
                .get(&node)
                .is_some_and(|i| i.incarnation == b.incarnation && i.is_active());
            if done {
                self.brokers[(node - 1) as usize]
                    .run
                    .as_mut()
                    .expect("active")
                    .registered = true;
                tr!(self, "broker {node} is registered");
                continue;
            }
            let last = self.client.registering.get(&node).copied();
            if last.is_none_or(|s| self.step >= s + 20) {
                let reg = self.registration(node);
                if self.submit(
                    node,
                    Command::RegisterBroker(reg),
                    format!("register {node}"),
                ) {
                    self.client.registering.insert(node, self.step);
                }
            }
        }
        let Some(li) = self.controller_leader() else {
            return Ok(());
        };
        let leader = self.brokers[li].node;
        let (topic_exists, all_registered) = {
            let meta = &self.brokers[li].run.as_ref().expect("leader").ctrl.meta;
            (
                meta.topic(SIM_TOPIC).is_some(),
                nodes
                    .iter()
                    .all(|n| meta.brokers.get(n).is_some_and(|b| b.is_active())),
            )
        };
        if !topic_exists {
            let due = self
                .client
                .topic_proposed_at
                .is_none_or(|s| self.step >= s + 30);
            if all_registered && due {
                let cmd = Command::CreateTopic {
                    name: SIM_TOPIC.into(),
                    partitions: self.cfg.partitions,
                    replication_factor: self.cfg.brokers.min(3) as u16,
                    configs: BTreeMap::new(),
                };
                if self.submit(leader, cmd, format!("create topic {SIM_TOPIC}")) {
                    self.client.topic_proposed_at = Some(self.step);
                }
            }
            return Ok(());
        }
        if faults && self.work.chance(60) {
            self.random_admin(leader);
        }
        if self.step % 10 == 0 {
            self.record_leaders(li);
        }
        if self.step % 5 == 0 {
            let verdicts = {
                let b = &self.brokers[li];
                let run = b.run.as_ref().expect("leader");
                run.ctrl
                    .liveness
                    .verdicts(b.clock.now_instant(), &run.ctrl.meta, leader)
            };
            for v in verdicts {
                let what = format!("{v:?}");
                self.submit(leader, v, what);
            }
        }
        Ok(())
    }

    fn random_admin(&mut self, leader: NodeId) {
        let meta = self.brokers[(leader - 1) as usize]
            .run
            .as_ref()
            .expect("leader")
            .ctrl
            .meta
            .clone();
        let others: Vec<String> = meta
            .topics
            .keys()
            .filter(|t| t.as_str() != SIM_TOPIC)
            .cloned()
            .collect();
        let cmd = match self.work.below(3) {
            0 => {
                self.client.next_topic += 1;
                Command::CreateTopic {
                    name: format!("t{}", self.client.next_topic),
                    partitions: self.work.between(1, 4) as u32,
                    replication_factor: self.work.between(1, self.cfg.brokers as u64 + 1) as u16,
                    configs: BTreeMap::new(),
                }
            }
            1 if !others.is_empty() => Command::DeleteTopic {
                name: self.work.pick(&others).clone(),
            },
            _ => {
                let p = self.work.below(u64::from(self.cfg.partitions)) as u32;
                let g = shardmq_engine::controller::partition_id(1, p);
                let to = *self.work.pick(&self.placement[&g].clone());
                Command::MigrateLeader {
                    topic: SIM_TOPIC.into(),
                    partition: p,
                    to,
                }
            }
        };
        let what = format!("{cmd:?}");
        self.submit(leader, cmd, what);
    }

    /// The controller leader records the leaderships brokers it can reach
    /// report and its metadata does not show yet.
    fn record_leaders(&mut self, li: usize) {
        let leader = self.brokers[li].node;
        let mut records: Vec<LeaderRecord> = Vec::new();
        for i in 0..self.brokers.len() {
            let node = self.brokers[i].node;
            if !self.brokers[i].is_active() || !self.reachable(node, leader) {
                continue;
            }
            let run = self.brokers[i].run.as_mut().expect("active");
            records.append(&mut run.reports);
            // What it leads now, in case a report was lost.
            for g in self.placement.keys() {
                if let Some((true, term)) = run
                    .lp
                    .with_replica(*g, |r| (r.leads_with_commit(), r.term()))
                {
                    records.push(LeaderRecord {
                        group: *g,
                        leader: node,
                        term,
                    });
                }
            }
        }
        let meta = &self.brokers[li].run.as_ref().expect("leader").ctrl.meta;
        records.retain(|r| {
            meta.assignment(r.group)
                .is_some_and(|(_, _, a)| a.leader_term < r.term)
        });
        records.sort_by_key(|r| (r.group, r.term));
        records.dedup_by_key(|r| r.group);
        if !records.is_empty() {
            let what = format!("record {} leaders", records.len());
            self.submit(leader, Command::RecordLeaders { leaders: records }, what);
        }
    }

    /// Every replica's raft id of group `g` (for transfers).
    pub fn raft_ids(&self, g: GroupId) -> Vec<(NodeId, u64)> {
        let nodes = if g == CONTROLLER_GROUP {
            self.nodes()
        } else {
            self.placement[&g].clone()
        };
        nodes.into_iter().map(|n| (n, raft_id(n))).collect()
    }

    /// A full read of `g` from broker `node` up to its watermark, checked
    /// against the committed entries; returns each value read with its
    /// offset.
    pub fn read_all(&self, g: GroupId, node: NodeId) -> Result<BTreeMap<Vec<u8>, u64>, String> {
        let b = self.broker(node);
        let run = b.run.as_ref().expect("running");
        let mark = run.visible[&g];
        let mut offset = b.log.log_start_offset(g).expect("partition");
        let mut out = BTreeMap::new();
        while offset < mark.offset {
            let batches = b
                .log
                .read_from_offset(g, offset, FETCH_BYTES_MAX, mark.index)
                .map_err(|e| format!("group {g:x}: final read at {offset}: {e}"))?;
            if batches.is_empty() {
                return Err(format!(
                    "group {g:x}: broker {node} returns nothing at offset {offset} below its \
                     high watermark {}",
                    mark.offset
                ));
            }
            for f in batches {
                let e = self.model.entry(g, f.index).ok_or_else(|| {
                    format!("group {g:x}: index {} read but never committed", f.index)
                })?;
                if e.payload != f.bytes || f.base_offset != offset {
                    return Err(format!(
                        "group {g:x}: final read of index {} at offset {} (expected offset \
                         {offset}) differs from the committed entry",
                        f.index, f.base_offset
                    ));
                }
                for (v, o) in record_values(&f.bytes)? {
                    if out.insert(v.clone(), o).is_some() {
                        return Err(format!(
                            "group {g:x}: value {} read twice",
                            String::from_utf8_lossy(&v)
                        ));
                    }
                }
                offset = f.base_offset + u64::from(f.offset_count);
            }
        }
        Ok(out)
    }
}

/// What a fetch needs beside the broker it runs on.
pub struct ReadCtx<'a> {
    pub work: &'a mut Rng,
    pub served_hw: &'a mut BTreeMap<GroupId, BTreeMap<u64, (u64, NodeId)>>,
    pub model: &'a Model,
    pub stats: &'a mut Stats,
}

/// One fetch of partition `g` on broker `b` through the broker's rules (a
/// leader serves once it has committed in its term, a follower
/// sometimes), checked against what was committed. It may run while the
/// broker's loop is part-way through an iteration, as another task of the
/// shard would.
pub fn fetch(b: &Broker, g: GroupId, ctx: &mut ReadCtx<'_>) -> Result<(), String> {
    let node = b.node;
    let run = b.run.as_ref().expect("active broker");
    let mark: Watermark = run.visible[&g];
    // The broker's rule (`RaftService::check_leader`).
    let (serving, term) = run
        .lp
        .with_replica(g, |r| (r.serves_up_to(mark.index), r.term()))
        .expect("replica");
    let follower_read = !serving;
    if follower_read && !ctx.work.chance(300) {
        // A leader read refused (NotLeader or LeaderNotAvailable).
        return Ok(());
    }
    let start = b.log.log_start_offset(g).expect("partition");
    if serving {
        // A leader's watermark never goes below one served in its term
        // or an earlier one: a new leader serves only once it has
        // committed in its term. A leader deposed without knowing it
        // (cut off, before check-quorum demotes it) still serves its
        // older watermark; that is counted, not refused.
        let served = ctx.served_hw.entry(g).or_default();
        if let Some((&t, &(best, by))) = served.range(..=term).max_by_key(|(_, (hw, _))| *hw) {
            if mark.offset < best {
                let commit = run.lp.with_replica(g, |r| r.commit_index()).unwrap_or(0);
                let committed_end = ctx
                    .model
                    .groups
                    .get(&g)
                    .and_then(|m| m.values().next_back())
                    .map_or(0, |e| e.base_offset + u64::from(e.offset_count));
                return Err(format!(
                    "group {g:x}: broker {node} (leader, term {term}, commit index {commit}) \
                     serves high watermark {} (index {}) below {best}, served by broker {by} \
                     in term {t}; the committed log ends at offset {committed_end}",
                    mark.offset, mark.index
                ));
            }
        }
        if served.range(term + 1..).next().is_some() {
            ctx.stats.stale_leader_reads += 1;
        }
        let e = served.entry(term).or_insert((0, node));
        if mark.offset >= e.0 {
            *e = (mark.offset, node);
        }
    }
    if mark.offset <= start {
        return Ok(());
    }
    let offset = ctx.work.between(start, mark.offset - 1);
    let batches = b
        .log
        .read_from_offset(g, offset, FETCH_BYTES_MAX, mark.index)
        .map_err(|e| format!("group {g:x}: read at {offset} on broker {node}: {e}"))?;
    ctx.stats.reads += 1;
    let mut expect = None;
    for f in &batches {
        let Some(e) = ctx.model.entry(g, f.index) else {
            return Err(format!(
                "group {g:x}: broker {node} served index {} (offset {}), which no replica \
                 has committed",
                f.index, f.base_offset
            ));
        };
        if e.payload != f.bytes || e.base_offset != f.base_offset {
            return Err(format!(
                "group {g:x}: broker {node} served index {} at offset {} unlike the \
                 committed entry (offset {})",
                f.index, f.base_offset, e.base_offset
            ));
        }
        match expect {
            None if !(f.base_offset <= offset
                && offset < f.base_offset + u64::from(f.offset_count)) =>
            {
                return Err(format!(
                    "group {g:x}: a read at offset {offset} on broker {node} began with \
                     offsets {}+{}",
                    f.base_offset, f.offset_count
                ))
            }
            Some(next) if next != f.base_offset => {
                return Err(format!(
                    "group {g:x}: a read on broker {node} skipped from offset {next} to {}",
                    f.base_offset
                ))
            }
            _ => {}
        }
        expect = Some(f.base_offset + u64::from(f.offset_count));
        if f.base_offset + u64::from(f.offset_count) > mark.offset {
            return Err(format!(
                "group {g:x}: broker {node} served offsets up to {} past its high \
                 watermark {}",
                f.base_offset + u64::from(f.offset_count),
                mark.offset
            ));
        }
    }
    Ok(())
}
