//! The Raft loop of one shard, over every partition replica the shard owns.
//!
//! Hot path (produce, replicate): one `fdatasync` per iteration whatever the
//! number of partitions; no allocation per record; no logging above debug.
//!
//! One iteration ([`ShardLoop::process`]):
//! 1. feed the messages received since the last iteration, apply pending
//!    ticks and campaign requests;
//! 2. take every replica's Ready; send its `messages` at once;
//! 3. write every Ready's snapshot point, entries and hard state through the
//!    one [`ShardLog`], recording the offsets storage assigns to proposals
//!    someone waits on;
//! 4. one `sync` for all of them (group commit);
//! 5. send the `persisted_messages`, advance every replica, send what
//!    advancing produced, and resolve the produce waiters whose index
//!    committed (acks=all) with the base offset storage gave their entry;
//! 6. read the entries raft asked for that were not cached, and hand them
//!    back to raft.
//!
//! Message transport is the [`Transport`] trait: the inter-broker transport
//! implements it in the broker, tests plug in a simulated network.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ::raft::eraftpb::{Message, MessageType};
use futures_channel::oneshot;
use std::sync::Arc;

use crate::metrics::LatencyHistogram;
use shardmq_storage::{EntryRef, PartitionId, ShardLog, StorageError};

use super::error::RaftError;
use super::replica::{CommittedEntry, PartitionReplica, ProposalTicket, ReadyWork, ReplicaConfig};
use super::store::{raft_entry_from_stored, Store};

/// Sends Raft messages of one partition's group to other replicas
/// (`msg.to`). Best effort: raft retries what is lost.
pub trait Transport {
    fn send(&self, partition: PartitionId, msgs: Vec<Message>);
}

/// Limits of a shard loop.
#[derive(Debug, Clone)]
pub struct ShardLoopConfig {
    pub replica: ReplicaConfig,
    /// Received messages buffered between two iterations; more are dropped
    /// (raft resends). Default 65,536.
    pub inbox_messages_max: usize,
    /// Wall-clock length of one Raft tick in [`ShardLoop::run`]. Default
    /// 100 ms.
    pub tick_interval: Duration,
}

impl Default for ShardLoopConfig {
    fn default() -> Self {
        ShardLoopConfig {
            replica: ReplicaConfig::default(),
            inbox_messages_max: 65_536,
            tick_interval: Duration::from_millis(100),
        }
    }
}

/// A committed produce: where its batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceAck {
    pub index: u64,
    pub term: u64,
    /// Offset of the batch's first record.
    pub base_offset: u64,
}

/// Resolves once the proposal committed (or is known lost).
#[derive(Debug)]
pub struct ProduceWaiter {
    ticket: ProposalTicket,
    rx: oneshot::Receiver<Result<ProduceAck, RaftError>>,
    partition: PartitionId,
}

impl ProduceWaiter {
    pub fn ticket(&self) -> ProposalTicket {
        self.ticket
    }

    /// The outcome if it is known.
    pub fn try_result(&mut self) -> Option<Result<ProduceAck, RaftError>> {
        match self.rx.try_recv() {
            Ok(v) => v,
            Err(_) => Some(Err(self.closed())),
        }
    }

    fn closed(&self) -> RaftError {
        RaftError::ProposalDropped {
            partition: self.partition,
            why: "the replica was closed",
        }
    }
}

impl Future for ProduceWaiter {
    type Output = Result<ProduceAck, RaftError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(v)) => Poll::Ready(v),
            Poll::Ready(Err(_)) => Poll::Ready(Err(self.closed())),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[derive(Debug)]
struct Waiter {
    term: u64,
    /// Set when the entry is appended (storage assigns offsets then).
    base_offset: Option<u64>,
    /// Taken when the outcome is sent.
    tx: Option<oneshot::Sender<Result<ProduceAck, RaftError>>>,
    /// Resolve once the leader appended the entry (before it is synced
    /// or committed) rather than once it commits.
    on_append: bool,
    /// When it was proposed (commit latency).
    proposed_at: Instant,
}

impl Waiter {
    fn send(&mut self, result: Result<ProduceAck, RaftError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(result);
        }
    }
}

#[derive(Debug)]
struct Slot {
    replica: PartitionReplica,
    /// Produce waiters by index. Bounded by the replica's proposal limits
    /// (raft's uncommitted bytes, the proposal queue).
    waiters: BTreeMap<u64, Waiter>,
    campaign: bool,
}

impl Slot {
    fn fail(&mut self, index: u64, err: RaftError) {
        if let Some(mut w) = self.waiters.remove(&index) {
            w.send(Err(err));
        }
    }

    fn dropped(&self, why: &'static str) -> RaftError {
        RaftError::ProposalDropped {
            partition: self.replica.partition(),
            why,
        }
    }

    /// After appending entries `a..=b` of term `term`: proposals at those
    /// indexes learn their offset (or that they were replaced); proposals
    /// after `b` from an older term were cut off by the conflict rule.
    fn on_appended(&mut self, index: u64, term: u64, base_offset: u64) {
        if let Some(w) = self.waiters.get_mut(&index) {
            if w.term == term {
                w.base_offset = Some(base_offset);
                if w.on_append {
                    w.send(Ok(ProduceAck {
                        index,
                        term,
                        base_offset,
                    }));
                }
            } else {
                let err = self.dropped("overwritten by another leader's entry");
                self.fail(index, err);
            }
        }
    }

    fn cut_after(&mut self, last: u64, term: u64) {
        let stale: Vec<u64> = self
            .waiters
            .range(last + 1..)
            .filter(|(_, w)| w.term < term)
            .map(|(i, _)| *i)
            .collect();
        for i in stale {
            let err = self.dropped("truncated by another leader");
            self.fail(i, err);
        }
    }

    /// Resolves the waiters of committed entries; records each one's
    /// proposal-to-commit time in `latency`.
    fn on_committed(&mut self, committed: &[CommittedEntry], latency: &LatencyHistogram) -> usize {
        let mut resolved = 0;
        for c in committed {
            if let Some(mut w) = self.waiters.remove(&c.index) {
                let result = match w.base_offset {
                    Some(base_offset) if w.term == c.term => {
                        let us = w.proposed_at.elapsed().as_micros();
                        latency.observe(u64::try_from(us).unwrap_or(u64::MAX));
                        Ok(ProduceAck {
                            index: c.index,
                            term: c.term,
                            base_offset,
                        })
                    }
                    _ => Err(self.dropped("another entry committed at its index")),
                };
                w.send(result);
                resolved += 1;
            }
        }
        if let Some(last) = committed.last() {
            // Nothing may wait on an index that is already committed.
            let stale: Vec<u64> = self.waiters.range(..=last.index).map(|(i, _)| *i).collect();
            for i in stale {
                let err = self.dropped("another entry committed at its index");
                self.fail(i, err);
            }
        }
        resolved
    }
}

/// What one iteration did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IterationReport {
    pub readies: usize,
    pub entries_appended: usize,
    pub synced: bool,
    pub produces_resolved: usize,
    pub fetches: usize,
}

impl IterationReport {
    pub fn did_work(&self) -> bool {
        self.readies > 0 || self.fetches > 0
    }
}

/// Wakes the loop when input arrives. Single waiter.
#[derive(Debug, Default)]
struct Wakeup {
    flag: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Wakeup {
    fn notify(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits for a notification or `timeout`.
    async fn wait(&self, timeout: Duration) {
        let mut timer = glommio::timer::Timer::new(timeout);
        std::future::poll_fn(|cx| {
            if self.flag.replace(false) {
                return Poll::Ready(());
            }
            if Pin::new(&mut timer).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// The Raft loop of one shard. Shard view: owns the shard's replicas and
/// shares the shard's [`ShardLog`]; lives on that shard; `!Send`.
pub struct ShardLoop<T: Transport> {
    log: ShardLog,
    transport: T,
    cfg: ShardLoopConfig,
    slots: RefCell<BTreeMap<PartitionId, Slot>>,
    inbox: RefCell<VecDeque<(PartitionId, Message)>>,
    ticks_pending: Cell<u32>,
    wakeup: Wakeup,
    /// Proposal-to-commit latency of this node's proposals.
    commit_latency: Arc<LatencyHistogram>,
}

impl<T: Transport> std::fmt::Debug for ShardLoop<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLoop")
            .field(
                "partitions",
                &self.slots.borrow().keys().collect::<Vec<_>>(),
            )
            .field("inbox", &self.inbox.borrow().len())
            .finish()
    }
}

impl<T: Transport> ShardLoop<T> {
    pub fn new(log: ShardLog, transport: T, cfg: ShardLoopConfig) -> Self {
        ShardLoop {
            log,
            transport,
            cfg,
            slots: RefCell::new(BTreeMap::new()),
            inbox: RefCell::new(VecDeque::new()),
            ticks_pending: Cell::new(0),
            wakeup: Wakeup::default(),
            commit_latency: Arc::default(),
        }
    }

    /// Records proposal-to-commit latency into `histogram` (for example
    /// the shard's metrics) from now on.
    pub fn with_commit_latency(mut self, histogram: Arc<LatencyHistogram>) -> Self {
        self.commit_latency = histogram;
        self
    }

    pub fn log(&self) -> &ShardLog {
        &self.log
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Opens (or creates) this shard's replica `replica_id` of `partition`,
    /// whose group has `voters`.
    pub async fn add_replica(
        &self,
        partition: PartitionId,
        replica_id: u64,
        voters: &[u64],
    ) -> Result<(), RaftError> {
        let store = Store::open(
            &self.log,
            partition,
            voters,
            self.cfg.replica.entry_cache_bytes_max,
        )
        .await?;
        // Creating the partition must be durable before raft state about it
        // is sent anywhere.
        self.log.sync().await?;
        let replica = PartitionReplica::new(replica_id, store, &self.cfg.replica)?;
        self.slots.borrow_mut().insert(
            partition,
            Slot {
                replica,
                waiters: BTreeMap::new(),
                campaign: false,
            },
        );
        Ok(())
    }

    /// Drops `partition`'s replica; its produce waiters resolve with an
    /// error. Call it between iterations, never while
    /// [`process`](Self::process) runs. Returns whether it was there.
    pub fn remove_replica(&self, partition: PartitionId) -> bool {
        let removed = self.slots.borrow_mut().remove(&partition);
        self.inbox.borrow_mut().retain(|(p, _)| *p != partition);
        removed.is_some()
    }

    /// The partitions with a replica here.
    pub fn partitions(&self) -> Vec<PartitionId> {
        self.slots.borrow().keys().copied().collect()
    }

    /// Runs `f` on a replica (status queries).
    pub fn with_replica<R>(
        &self,
        partition: PartitionId,
        f: impl FnOnce(&PartitionReplica) -> R,
    ) -> Option<R> {
        self.slots.borrow().get(&partition).map(|s| f(&s.replica))
    }

    /// A message for `partition`'s replica on this shard, stepped on the
    /// next iteration.
    pub fn deliver(&self, partition: PartitionId, msg: Message) {
        let mut inbox = self.inbox.borrow_mut();
        if inbox.len() < self.cfg.inbox_messages_max {
            inbox.push_back((partition, msg));
        }
        drop(inbox);
        self.wakeup.notify();
    }

    /// One Raft tick for every replica, applied on the next iteration.
    pub fn tick(&self) {
        self.ticks_pending
            .set(self.ticks_pending.get().saturating_add(1));
    }

    /// Asks a replica to start an election on the next iteration.
    pub fn campaign(&self, partition: PartitionId) -> Result<(), RaftError> {
        let mut slots = self.slots.borrow_mut();
        let slot = slots
            .get_mut(&partition)
            .ok_or(RaftError::UnknownPartition(partition))?;
        slot.campaign = true;
        drop(slots);
        self.wakeup.notify();
        Ok(())
    }

    /// Proposes a record batch; the waiter resolves with its base offset
    /// once it commits on a majority, or, with `on_append`, as soon as this
    /// leader appended it to its log (before the sync: the entry may still
    /// be lost to a crash or replaced by another leader's).
    pub fn produce(
        &self,
        partition: PartitionId,
        batch: &[u8],
        on_append: bool,
    ) -> Result<ProduceWaiter, RaftError> {
        let mut slots = self.slots.borrow_mut();
        let slot = slots
            .get_mut(&partition)
            .ok_or(RaftError::UnknownPartition(partition))?;
        let ticket = slot.replica.propose(batch)?;
        let (tx, rx) = oneshot::channel();
        let old = slot.waiters.insert(
            ticket.index,
            Waiter {
                term: ticket.term,
                base_offset: None,
                tx: Some(tx),
                on_append,
                proposed_at: Instant::now(),
            },
        );
        assert!(
            old.is_none(),
            "two proposals promised index {}",
            ticket.index
        );
        drop(slots);
        self.wakeup.notify();
        Ok(ProduceWaiter {
            ticket,
            rx,
            partition,
        })
    }

    /// One iteration (see the module documentation).
    pub async fn process(&self) -> Result<IterationReport, RaftError> {
        let mut report = IterationReport::default();
        let mut works: Vec<(PartitionId, ReadyWork)> = Vec::new();
        {
            let mut slots = self.slots.borrow_mut();
            let inbox = std::mem::take(&mut *self.inbox.borrow_mut());
            for (p, msg) in inbox {
                if let Some(slot) = slots.get_mut(&p) {
                    if let Err(e) = slot.replica.step(msg) {
                        tracing::debug!(partition = p, error = %e, "raft message dropped");
                    }
                }
            }
            let ticks = self.ticks_pending.replace(0);
            for (p, slot) in slots.iter_mut() {
                if std::mem::take(&mut slot.campaign) {
                    if let Err(e) = slot.replica.campaign() {
                        tracing::debug!(partition = p, error = %e, "campaign refused");
                    }
                }
                for _ in 0..ticks {
                    slot.replica.tick();
                }
                if let Some(work) = slot.replica.take_ready() {
                    works.push((*p, work));
                }
            }
        }
        report.readies = works.len();
        // Snapshots sent, reported to raft once no Ready is in flight.
        let mut snapshots_sent: Vec<(PartitionId, u64)> = Vec::new();

        for (p, w) in &mut works {
            if !w.messages.is_empty() {
                self.send(*p, std::mem::take(&mut w.messages), &mut snapshots_sent);
            }
        }

        let mut must_sync = false;
        for (p, w) in &works {
            let p = *p;
            if let Some(s) = w.snapshot {
                self.log
                    .reset(p, s.index + 1, s.term, s.first_offset)
                    .await?;
                let mut slots = self.slots.borrow_mut();
                let slot = slots.get_mut(&p).expect("slot of a ready");
                let stale: Vec<u64> = slot.waiters.keys().copied().collect();
                for i in stale {
                    let err = slot.dropped("replaced by a snapshot");
                    slot.fail(i, err);
                }
            }
            for e in &w.entries {
                let out = self
                    .log
                    .append(
                        p,
                        &[EntryRef {
                            index: e.index,
                            term: e.term,
                            kind: e.kind,
                            payload: &e.payload,
                        }],
                    )
                    .await?;
                let mut slots = self.slots.borrow_mut();
                let slot = slots.get_mut(&p).expect("slot of a ready");
                slot.on_appended(e.index, e.term, out.base_offset);
            }
            if let Some(last) = w.entries.last() {
                let mut slots = self.slots.borrow_mut();
                let slot = slots.get_mut(&p).expect("slot of a ready");
                slot.cut_after(last.index, last.term);
            }
            report.entries_appended += w.entries.len();
            if let Some(hs) = w.hard_state {
                self.log.set_hard_state(p, hs).await?;
            }
            must_sync |= w.must_sync
                || w.snapshot.is_some()
                || !w.entries.is_empty()
                || w.hard_state.is_some();
        }
        if must_sync {
            self.log.sync().await?;
            report.synced = true;
        }

        for (p, w) in &mut works {
            if !w.persisted_messages.is_empty() {
                self.send(
                    *p,
                    std::mem::take(&mut w.persisted_messages),
                    &mut snapshots_sent,
                );
            }
        }

        let mut commit_writes = Vec::new();
        {
            let mut slots = self.slots.borrow_mut();
            for (p, w) in &works {
                let slot = slots.get_mut(p).expect("slot of a ready");
                report.produces_resolved += slot.on_committed(&w.committed, &self.commit_latency);
                let (adv, failed) = slot.replica.on_persisted();
                for (ticket, err) in failed {
                    if slot
                        .waiters
                        .get(&ticket.index)
                        .is_some_and(|w| w.term == ticket.term)
                    {
                        slot.fail(ticket.index, err);
                    }
                }
                if !adv.messages.is_empty() {
                    self.send(*p, adv.messages, &mut snapshots_sent);
                }
                report.produces_resolved += slot.on_committed(&adv.committed, &self.commit_latency);
                if let Some(hs) = adv.hard_state {
                    commit_writes.push((*p, hs));
                }
            }
        }
        {
            let mut slots = self.slots.borrow_mut();
            for (p, to) in snapshots_sent {
                if let Some(slot) = slots.get_mut(&p) {
                    slot.replica.report_snapshot_sent(to);
                }
            }
        }
        // The commit index is persisted lazily: durable with the next sync.
        for (p, hs) in commit_writes {
            self.log.set_hard_state(p, hs).await?;
        }

        let fetches: Vec<_> = self
            .slots
            .borrow()
            .iter()
            .flat_map(|(p, s)| {
                s.replica
                    .store()
                    .take_pending_fetches()
                    .into_iter()
                    .map(move |f| (*p, f))
            })
            .collect();
        for (p, f) in fetches {
            report.fetches += 1;
            match self.log.entries(p, f.lo, f.hi, f.max_size).await {
                Ok(stored) => {
                    let entries = stored.iter().map(raft_entry_from_stored).collect();
                    let mut slots = self.slots.borrow_mut();
                    if let Some(slot) = slots.get_mut(&p) {
                        slot.replica.on_entries_fetched(entries, f.context);
                    }
                }
                // The log moved meanwhile; raft asks again.
                Err(StorageError::Compacted { .. } | StorageError::Unavailable { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(report)
    }

    fn send(&self, p: PartitionId, msgs: Vec<Message>, snapshots: &mut Vec<(PartitionId, u64)>) {
        for m in &msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                snapshots.push((p, m.to));
            }
        }
        self.transport.send(p, msgs);
    }

    /// Whether input is waiting for the next iteration.
    pub fn has_pending_input(&self) -> bool {
        self.ticks_pending.get() > 0
            || !self.inbox.borrow().is_empty()
            || self
                .slots
                .borrow()
                .values()
                .any(|s| s.campaign || s.replica.has_ready())
    }

    /// Wakes a task waiting in [`wait_for_input`](Self::wait_for_input)
    /// (or [`run`](Self::run)).
    pub fn wake(&self) {
        self.wakeup.notify();
    }

    /// Waits until input arrives (a message, a proposal, a campaign, a
    /// [`wake`](Self::wake)) or `timeout` passes. One waiter at a time: the
    /// task driving the loop.
    pub async fn wait_for_input(&self, timeout: Duration) {
        self.wakeup.wait(timeout).await
    }

    /// Runs iterations until `stop` is set, ticking every
    /// `tick_interval` of wall-clock time and sleeping when idle.
    pub async fn run(&self, stop: &Cell<bool>) -> Result<(), RaftError> {
        let interval = self.cfg.tick_interval;
        let mut next_tick = Instant::now() + interval;
        while !stop.get() {
            let now = Instant::now();
            while now >= next_tick {
                self.tick();
                next_tick += interval;
            }
            let report = self.process().await?;
            if !report.did_work() && !self.has_pending_input() {
                self.wakeup
                    .wait(next_tick.saturating_duration_since(Instant::now()))
                    .await;
            }
        }
        Ok(())
    }
}
