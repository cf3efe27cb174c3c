//! The Raft loop of one shard, over every replica the shard owns: its
//! partitions' groups and, on shard 0, the controller's.
//!
//! Hot path (produce, replicate): one `fdatasync` per iteration whatever the
//! number of groups; no allocation per record; no logging above debug.
//!
//! One iteration ([`ShardLoop::process`]):
//! 1. tell raft which peers the transport could not reach; feed the
//!    messages received since the last iteration; apply pending ticks,
//!    campaign and leader-transfer requests;
//! 2. take every replica's Ready; hand its `messages` to the transport at
//!    once, grouped by destination shard (a leader replicates while it
//!    writes);
//! 3. write every Ready's snapshot point (a state machine group's snapshot
//!    first goes to its [`SnapshotSink`]), entries and hard state through
//!    the one shard log ([`RaftLog`]), recording the offsets storage assigns to proposals
//!    someone waits on;
//! 4. one `sync` for all of them (group commit);
//! 5. hand the `persisted_messages` and what advancing every replica
//!    produced to the transport, again one [`Outbox`] grouped by
//!    destination, and resolve the produce waiters whose index committed
//!    (acks=all) with the base offset storage gave their entry;
//! 6. read the entries raft asked for that were not cached, and hand them
//!    back to raft;
//! 7. record what changed for the layer above ([`LoopEvent`]: leadership,
//!    commits, installed snapshots), taken with
//!    [`take_events`](ShardLoop::take_events).
//!
//! So the transport is called at most twice per iteration, each time with
//! one batch of messages per destination (broker, shard).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ::raft::eraftpb::{Message, MessageType};
use ::raft::StateRole;
use event_listener::Event;
use futures_channel::oneshot;

use crate::clock::{Clock, SystemClock};
use crate::metrics::LatencyHistogram;
use shardmq_storage::{EntryRef, PartitionId, ShardLog, StorageError};

use super::error::{DropReason, RaftError};
use super::log_backend::RaftLog;
use super::replica::{
    CommittedEntry, PartitionReplica, ProposalTicket, ReadyWork, ReplicaConfig, SnapshotPoint,
};
use super::store::{raft_entry_from_stored, CacheShare, Store};

/// A Raft group: a partition id, or [`CONTROLLER_GROUP`].
pub type GroupId = PartitionId;

/// The group of the controller, on shard 0 of every broker. Topic ids start
/// at 1, so no partition id is 0.
pub const CONTROLLER_GROUP: GroupId = 0;

/// A broker's node id.
pub type NodeId = i32;

/// Where a replica lives: a broker and one of its shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dest {
    pub node: NodeId,
    pub shard: u16,
}

/// The replicas of a group: each raft id and where it lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupMembers {
    pub voters: Vec<(u64, Dest)>,
    pub learners: Vec<(u64, Dest)>,
}

impl GroupMembers {
    /// Where raft id `id` lives.
    pub fn dest_of(&self, id: u64) -> Option<Dest> {
        self.voters
            .iter()
            .chain(&self.learners)
            .find(|(r, _)| *r == id)
            .map(|(_, d)| *d)
    }

    fn voter_ids(&self) -> Vec<u64> {
        self.voters.iter().map(|(r, _)| *r).collect()
    }

    fn learner_ids(&self) -> Vec<u64> {
        self.learners.iter().map(|(r, _)| *r).collect()
    }

    fn ids_at(&self, dest: Dest) -> impl Iterator<Item = u64> + '_ {
        self.voters
            .iter()
            .chain(&self.learners)
            .filter(move |(_, d)| *d == dest)
            .map(|(r, _)| *r)
    }
}

/// What a group's committed entries mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// A partition: its log is its state machine, so a commit only moves
    /// its high watermark ([`LoopEvent::Committed`] with the last index).
    Partition,
    /// A group whose entries are applied to a state machine of its own (the
    /// controller): every committed entry is handed over with its payload
    /// ([`LoopEvent::Applied`]).
    StateMachine,
}

/// The Raft messages of one iteration (or half of one), grouped by the
/// shard they go to. Buckets keep their memory between iterations.
#[derive(Debug, Default)]
pub struct Outbox {
    buckets: BTreeMap<Dest, Vec<(GroupId, Message)>>,
    messages: usize,
}

impl Outbox {
    /// Adds a message of `group` for the replica at `dest`.
    pub fn push(&mut self, dest: Dest, group: GroupId, msg: Message) {
        self.buckets.entry(dest).or_default().push((group, msg));
        self.messages += 1;
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Hands each destination's messages to `f`, which takes what it sends
    /// (draining the vector keeps its memory for the next iteration).
    pub fn drain_each(&mut self, mut f: impl FnMut(Dest, &mut Vec<(GroupId, Message)>)) {
        for (dest, msgs) in self.buckets.iter_mut() {
            if !msgs.is_empty() {
                f(*dest, msgs);
                msgs.clear();
            }
        }
        self.messages = 0;
    }
}

/// Sends Raft messages to other brokers' shards. Best effort: raft resends
/// what is lost.
pub trait Transport {
    /// Sends (or drops) every message of `outbox`, leaving it empty. Called
    /// at most twice per iteration.
    fn send(&self, outbox: &mut Outbox);

    /// Destinations that could not be reached since the last call; the loop
    /// tells raft, whose leaders then probe those followers again.
    fn take_unreachable(&self) -> Vec<Dest> {
        Vec::new()
    }
}

/// Limits of a shard loop.
#[derive(Debug, Clone)]
pub struct ShardLoopConfig {
    pub replica: ReplicaConfig,
    /// Received messages buffered between two iterations; more are dropped
    /// (raft resends). Default 65,536.
    pub inbox_messages_max: usize,
    /// Length of one Raft tick in [`ShardLoop::run`]. Default 100 ms.
    pub tick_interval: Duration,
    /// A partition whose leader has had nothing to replicate for this many
    /// ticks (every follower has its whole log and commit) falls asleep:
    /// neither it nor its followers tick or heartbeat until there is work
    /// again. 0 keeps every group awake. Default 20 (2 s at 100 ms).
    pub quiesce_after_ticks: u32,
    /// Bytes of applied entries all replicas of the shard keep cached
    /// together: each gets an even share, at least
    /// [`ENTRY_CACHE_SHARE_MIN`] and at most `replica.entry_cache_bytes_max`
    /// (which wins when it is the smaller). Default 64 MiB.
    pub entry_cache_budget: usize,
}

/// The least cache share of a replica, however many share the budget.
pub const ENTRY_CACHE_SHARE_MIN: usize = 64 << 10;

impl Default for ShardLoopConfig {
    fn default() -> Self {
        ShardLoopConfig {
            replica: ReplicaConfig::default(),
            inbox_messages_max: 65_536,
            tick_interval: Duration::from_millis(100),
            quiesce_after_ticks: 20,
            entry_cache_budget: 64 << 20,
        }
    }
}

/// The context of the heartbeat a leader sends when its group falls
/// asleep, and of its followers' answers. A follower that steps it from its
/// leader stops ticking; the answer does not wake the leader.
pub const QUIESCE_CONTEXT: &[u8] = b"shardmq-quiesce";

/// Most ticks one iteration applies after the loop fell behind (a long
/// sync): time lost beyond that is not made up, so a stall does not turn
/// into a burst of elections.
const TICKS_CATCH_UP_MAX: u32 = 2;

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
            reason: DropReason::ReplicaClosed,
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
    proposed_at: std::time::Instant,
}

impl Waiter {
    fn send(&mut self, result: Result<ProduceAck, RaftError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(result);
        }
    }
}

/// What a replica looked like after the last iteration that touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leadership {
    role: StateRole,
    term: u64,
    leader: Option<u64>,
    serving: bool,
}

#[derive(Debug)]
struct Slot<L: RaftLog> {
    replica: PartitionReplica<L>,
    members: GroupMembers,
    kind: GroupKind,
    /// Produce waiters by (index, term) of their proposal: one index may
    /// hold proposals of several terms of this replica, each waiting until
    /// that index commits. Bounded by the replica's proposal limits (raft's
    /// uncommitted bytes, the proposal queue) and by the commit index
    /// moving past them.
    waiters: BTreeMap<(u64, u64), Waiter>,
    campaign: bool,
    transfer_to: Option<u64>,
    leadership: Leadership,
    /// Asleep: not ticked, sends nothing, until a message, a proposal or
    /// the loss of its leader's broker wakes it (see [`QUIESCE_CONTEXT`]).
    quiesced: bool,
    /// Ticks a leader has spent with nothing to replicate.
    idle_ticks: u32,
    /// Listed in the loop's ready set.
    dirty: bool,
    /// Listed among the replicas ticks visit (awake ones).
    ticked: bool,
}

impl<L: RaftLog> Slot<L> {
    fn fail(&mut self, key: (u64, u64), err: RaftError) {
        if let Some(mut w) = self.waiters.remove(&key) {
            w.send(Err(err));
        }
    }

    /// Fails every waiter with `reason`.
    fn fail_all(&mut self, reason: DropReason) {
        let keys: Vec<(u64, u64)> = self.waiters.keys().copied().collect();
        for k in keys {
            let err = self.dropped(reason);
            self.fail(k, err);
        }
    }

    fn dropped(&self, reason: DropReason) -> RaftError {
        RaftError::ProposalDropped {
            partition: self.replica.partition(),
            reason,
        }
    }

    /// A leader with nothing to do: its whole log committed, every
    /// follower holding all of it, nobody waiting, no transfer.
    fn at_rest(&self) -> bool {
        let r = &self.replica;
        if !r.is_leader()
            || !self.waiters.is_empty()
            || self.transfer_to.is_some()
            || r.transferring_to().is_some()
            || r.commit_index() != r.last_index()
            || !r.leads_with_commit()
        {
            return false;
        }
        let last = r.last_index();
        r.progress().iter().all(|(_, matched)| *matched == last)
    }

    fn leadership(&self) -> Leadership {
        Leadership {
            role: self.replica.role(),
            term: self.replica.term(),
            leader: self.replica.leader_id(),
            serving: self.replica.leads_with_commit(),
        }
    }

    /// After appending entry `index` of `term`: a proposal at that index
    /// of that term learns its offset; one of another term is no longer in
    /// this log. It keeps waiting all the same: the entry that replaced it
    /// may itself be uncommitted and lost, and the proposal come back from
    /// another replica (or survive here, if the replacement was not
    /// durable when a crash came) and commit. Only the commit of another
    /// entry at its index says it never will.
    fn on_appended(&mut self, index: u64, term: u64, base_offset: u64) {
        for ((_, t), w) in self.waiters.range_mut((index, 0)..=(index, u64::MAX)) {
            if *t == term {
                w.base_offset = Some(base_offset);
                if w.on_append {
                    w.send(Ok(ProduceAck {
                        index,
                        term,
                        base_offset,
                    }));
                }
            } else {
                w.base_offset = None;
            }
        }
    }

    /// After appending entries up to `last` of `term`: proposals after it
    /// from an older term were cut off by the conflict rule (and may still
    /// commit, as [`on_appended`](Self::on_appended) explains).
    fn cut_after(&mut self, last: u64, term: u64) {
        for (_, w) in self.waiters.range_mut((last + 1, 0)..) {
            if w.term < term {
                w.base_offset = None;
            }
        }
    }

    /// Resolves the waiters of committed entries; records each one's
    /// proposal-to-commit time in `latency` (partitions only: the
    /// controller's commands are not produces).
    fn on_committed(
        &mut self,
        committed: &[CommittedEntry],
        latency: &LatencyHistogram,
        now: std::time::Instant,
    ) -> usize {
        let mut resolved = 0;
        let record = self.kind == GroupKind::Partition;
        for c in committed {
            let at: Vec<(u64, u64)> = self
                .waiters
                .range((c.index, 0)..=(c.index, u64::MAX))
                .map(|(k, _)| *k)
                .collect();
            for key in at {
                let mut w = self.waiters.remove(&key).expect("listed above");
                let result = match w.base_offset {
                    Some(base_offset) if w.term == c.term => {
                        if record {
                            let us = now.saturating_duration_since(w.proposed_at).as_micros();
                            latency.observe(u64::try_from(us).unwrap_or(u64::MAX));
                        }
                        Ok(ProduceAck {
                            index: c.index,
                            term: c.term,
                            base_offset,
                        })
                    }
                    _ => Err(self.dropped(DropReason::CommittedOther)),
                };
                w.send(result);
                resolved += 1;
            }
        }
        if let Some(last) = committed.last() {
            // Nothing may wait on an index that is already committed.
            let stale: Vec<(u64, u64)> = self
                .waiters
                .range(..=(last.index, u64::MAX))
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                let err = self.dropped(DropReason::CommittedOther);
                self.fail(k, err);
            }
        }
        resolved
    }
}

/// What changed in one iteration, for the layer above the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopEvent {
    /// A replica's role, term, known leader, or whether it leads with a
    /// commit of its own term, changed.
    Leadership {
        group: GroupId,
        role: StateRole,
        term: u64,
        /// The raft id of the leader it knows of.
        leader: Option<u64>,
        /// It leads and has committed an entry of its term: it may serve.
        serving: bool,
    },
    /// A partition's commit moved to `index` (durable here too).
    Committed { group: GroupId, index: u64 },
    /// Entries of a [`GroupKind::StateMachine`] group committed, in order.
    Applied {
        group: GroupId,
        entries: Vec<CommittedEntry>,
    },
    /// The replica restarted its log from a snapshot.
    SnapshotInstalled {
        group: GroupId,
        point: SnapshotPoint,
    },
}

/// What one iteration did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IterationReport {
    pub readies: usize,
    pub entries_appended: usize,
    pub synced: bool,
    pub produces_resolved: usize,
    pub fetches: usize,
    pub messages_sent: usize,
}

impl IterationReport {
    pub fn did_work(&self) -> bool {
        self.readies > 0 || self.fetches > 0
    }
}

/// Counters of one shard loop (shard view; read by the metrics copier).
#[derive(Debug, Default)]
pub struct LoopStats {
    /// Elections this shard's replicas started (became candidates).
    pub elections: Cell<u64>,
    /// Times a replica here saw its group's leader change.
    pub leader_changes: Cell<u64>,
    /// Received messages dropped because the inbox was full or the group
    /// is not here.
    pub inbound_dropped: Cell<u64>,
    /// Messages to a raft id with no known place.
    pub undeliverable: Cell<u64>,
    /// Raft messages handed to the transport.
    pub messages_sent: Cell<u64>,
    /// Groups asleep now (quiesced).
    pub quiesced: Cell<u64>,
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
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

/// Stores a [`GroupKind::StateMachine`] group's snapshot durably (see
/// [`ShardLoop::set_snapshot_sink`]).
pub type SnapshotSink = Box<dyn Fn(GroupId, &SnapshotPoint) -> Result<(), StorageError>>;

/// A lock for one shard's tasks, needing no runtime: held across an
/// iteration and while a replica is added or removed. A release wakes every
/// waiter and the first to run takes it (there are only ever a few: the
/// driver and a view being applied). Shard view.
#[derive(Debug, Default)]
struct LoopLock {
    held: Cell<bool>,
    released: Event,
}

/// Releases the [`LoopLock`] when dropped.
struct LoopGuard<'a> {
    lock: &'a LoopLock,
}

impl LoopLock {
    async fn acquire(&self) -> LoopGuard<'_> {
        loop {
            if !self.held.replace(true) {
                return LoopGuard { lock: self };
            }
            let listener = self.released.listen();
            // Released between the check and the listen: try again.
            if !self.held.get() {
                continue;
            }
            listener.await;
        }
    }
}

impl Drop for LoopGuard<'_> {
    fn drop(&mut self) {
        self.lock.held.set(false);
        self.lock.released.notify(usize::MAX);
    }
}

/// The Raft loop of one shard. Shard view: owns the shard's replicas and
/// shares the shard's log (a [`RaftLog`]: the [`ShardLog`] in a broker);
/// lives on that shard; `!Send`.
pub struct ShardLoop<T: Transport, L: RaftLog = ShardLog> {
    log: L,
    transport: T,
    cfg: ShardLoopConfig,
    clock: Rc<dyn Clock>,
    slots: RefCell<BTreeMap<GroupId, Slot<L>>>,
    inbox: RefCell<VecDeque<(GroupId, Message)>>,
    ticks_pending: Cell<u32>,
    wakeup: Wakeup,
    /// Held across an iteration, and by whoever adds or removes a replica,
    /// so a replica never disappears while its Ready is being written.
    lock: LoopLock,
    outbox: RefCell<Outbox>,
    /// The ready set: groups that may have a Ready (stepped, proposed to,
    /// ticked, asked to campaign). Only these are looked at.
    dirty: RefCell<Vec<GroupId>>,
    /// The replicas ticks visit: every awake one (asleep ones leave it at
    /// the next tick, and come back when woken), so a tick costs nothing
    /// per sleeping group.
    awake: RefCell<Vec<GroupId>>,
    events: RefCell<Vec<LoopEvent>>,
    /// Makes a [`GroupKind::StateMachine`] group's snapshot durable before
    /// its log is reset to it.
    snapshot_sink: RefCell<Option<SnapshotSink>>,
    stats: LoopStats,
    /// Proposal-to-commit latency of this node's proposals.
    commit_latency: Arc<LatencyHistogram>,
    /// Each replica's share of the shard's entry cache budget.
    cache_share: CacheShare,
}

impl<T: Transport, L: RaftLog> std::fmt::Debug for ShardLoop<T, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLoop")
            .field("groups", &self.slots.borrow().len())
            .field("inbox", &self.inbox.borrow().len())
            .finish()
    }
}

/// Raft roles that count as starting an election.
fn campaigning(role: StateRole) -> bool {
    matches!(role, StateRole::Candidate)
}

impl<T: Transport, L: RaftLog> ShardLoop<T, L> {
    pub fn new(log: L, transport: T, cfg: ShardLoopConfig) -> Self {
        ShardLoop {
            log,
            transport,
            clock: Rc::new(SystemClock),
            slots: RefCell::new(BTreeMap::new()),
            inbox: RefCell::new(VecDeque::new()),
            ticks_pending: Cell::new(0),
            wakeup: Wakeup::default(),
            lock: LoopLock::default(),
            outbox: RefCell::new(Outbox::default()),
            dirty: RefCell::new(Vec::new()),
            awake: RefCell::new(Vec::new()),
            events: RefCell::new(Vec::new()),
            snapshot_sink: RefCell::new(None),
            stats: LoopStats::default(),
            commit_latency: Arc::default(),
            cache_share: CacheShare::fixed(cfg.replica.entry_cache_bytes_max),
            cfg,
        }
    }

    /// Divides the shard's cache budget among the `replicas` it has now.
    fn reshare_cache(&self, replicas: usize) {
        // The replica setting caps the share, even below the least one.
        let share = (self.cfg.entry_cache_budget / replicas.max(1))
            .max(ENTRY_CACHE_SHARE_MIN)
            .min(self.cfg.replica.entry_cache_bytes_max);
        self.cache_share.set(share);
    }

    /// Each replica's share of the shard's entry cache now.
    pub fn entry_cache_share(&self) -> usize {
        self.cache_share.get()
    }

    /// Records proposal-to-commit latency into `histogram` (for example
    /// the shard's metrics) from now on.
    pub fn with_commit_latency(mut self, histogram: Arc<LatencyHistogram>) -> Self {
        self.commit_latency = histogram;
        self
    }

    /// Reads time from `clock` (a simulation's) instead of the system's.
    pub fn with_clock(mut self, clock: Rc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn log(&self) -> &L {
        &self.log
    }

    /// Sets what makes a state machine group's snapshot durable: called
    /// with the snapshot before the log restarts from it, in the iteration
    /// that installs it (an error stops the iteration like a log error).
    /// Without it, a crash between the log's reset and the layer above
    /// storing the snapshot (on [`LoopEvent::SnapshotInstalled`]) would
    /// leave a log starting past the state machine's last copy.
    pub fn set_snapshot_sink(&self, sink: SnapshotSink) {
        *self.snapshot_sink.borrow_mut() = Some(sink);
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    pub fn config(&self) -> &ShardLoopConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &LoopStats {
        &self.stats
    }

    /// Opens (or creates) this shard's replica `replica_id` of `group`,
    /// whose replicas are `members`. Waits for a running iteration to end.
    pub async fn add_replica(
        &self,
        group: GroupId,
        replica_id: u64,
        members: GroupMembers,
        kind: GroupKind,
    ) -> Result<(), RaftError> {
        let _held = self.lock.acquire().await;
        if self.slots.borrow().contains_key(&group) {
            return Ok(());
        }
        let store = Store::open(
            &self.log,
            group,
            &members.voter_ids(),
            &members.learner_ids(),
            self.cache_share.clone(),
        )
        .await?;
        // Creating the partition must be durable before raft state about it
        // is sent anywhere.
        self.log.sync().await?;
        let replica = PartitionReplica::new(replica_id, store, &self.cfg.replica)?;
        let mut slot = Slot {
            replica,
            members,
            kind,
            waiters: BTreeMap::new(),
            campaign: false,
            transfer_to: None,
            quiesced: false,
            idle_ticks: 0,
            dirty: false,
            ticked: false,
            leadership: Leadership {
                role: StateRole::Follower,
                term: 0,
                leader: None,
                serving: false,
            },
        };
        slot.leadership = slot.leadership();
        Self::list_awake(&self.awake, group, &mut slot);
        self.slots.borrow_mut().insert(group, slot);
        self.reshare_cache(self.slots.borrow().len());
        self.mark(group);
        Ok(())
    }

    /// Replaces where `group`'s peers live (a peer moved to another shard
    /// or address); raft's membership itself is unchanged.
    pub fn set_members(&self, group: GroupId, members: GroupMembers) -> bool {
        match self.slots.borrow_mut().get_mut(&group) {
            Some(slot) => {
                slot.members = members;
                true
            }
            None => false,
        }
    }

    /// Drops `group`'s replica; its produce waiters resolve with an error.
    /// Waits for a running iteration to end. Returns whether it was there.
    pub async fn remove_replica(&self, group: GroupId) -> bool {
        let _held = self.lock.acquire().await;
        let removed = self.slots.borrow_mut().remove(&group);
        self.reshare_cache(self.slots.borrow().len());
        self.inbox.borrow_mut().retain(|(g, _)| *g != group);
        match removed {
            Some(mut slot) => {
                slot.fail_all(DropReason::ReplicaClosed);
                true
            }
            None => false,
        }
    }

    /// The groups with a replica here.
    pub fn groups(&self) -> Vec<GroupId> {
        self.slots.borrow().keys().copied().collect()
    }

    /// Whether `group` has a replica here.
    pub fn has_group(&self, group: GroupId) -> bool {
        self.slots.borrow().contains_key(&group)
    }

    /// Runs `f` on a replica (status queries).
    pub fn with_replica<R>(
        &self,
        group: GroupId,
        f: impl FnOnce(&PartitionReplica<L>) -> R,
    ) -> Option<R> {
        self.slots.borrow().get(&group).map(|s| f(&s.replica))
    }

    /// Runs `f` on every replica (status queries, metrics).
    pub fn for_each_replica(&self, mut f: impl FnMut(GroupId, &PartitionReplica<L>)) {
        for (g, s) in self.slots.borrow().iter() {
            f(*g, &s.replica);
        }
    }

    /// Where raft id `id` of `group` lives.
    pub fn dest_of(&self, group: GroupId, id: u64) -> Option<Dest> {
        self.slots.borrow().get(&group)?.members.dest_of(id)
    }

    /// A message for `group`'s replica on this shard, stepped on the next
    /// iteration; dropped (raft resends) when the inbox is full.
    pub fn deliver(&self, group: GroupId, msg: Message) {
        let mut inbox = self.inbox.borrow_mut();
        if inbox.len() < self.cfg.inbox_messages_max {
            inbox.push_back((group, msg));
        } else {
            bump(&self.stats.inbound_dropped, 1);
        }
        drop(inbox);
        self.wakeup.notify();
    }

    /// Puts `group` in the ready set (a no-op if it is there or gone).
    fn mark(&self, group: GroupId) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(&group) {
            Self::mark_slot(&self.dirty, group, slot);
        }
    }

    fn mark_slot(dirty: &RefCell<Vec<GroupId>>, group: GroupId, slot: &mut Slot<L>) {
        if !slot.dirty {
            slot.dirty = true;
            dirty.borrow_mut().push(group);
        }
    }

    /// Every replica here whose leader is on broker `node`, which is gone
    /// (its connection dropped, the controller marked it failed), ends its
    /// leader's lease ([`Replica::leader_lost`]) so that it elects another
    /// within one election timeout; the sleeping ones are woken to tick
    /// again. Returns how many were woken. (A walk over the shard's
    /// replicas, once per lost broker, not per iteration.)
    pub fn wake_followers_of(&self, node: NodeId) -> usize {
        let mut woken = 0;
        for (g, slot) in self.slots.borrow_mut().iter_mut() {
            let leader_node = slot
                .replica
                .leader_id()
                .and_then(|id| slot.members.dest_of(id))
                .map(|d| d.node);
            if leader_node != Some(node) || slot.replica.is_leader() {
                continue;
            }
            slot.replica.leader_lost();
            if slot.quiesced {
                slot.quiesced = false;
                slot.idle_ticks = 0;
                woken += 1;
                Self::list_awake(&self.awake, *g, slot);
            }
        }
        if woken > 0 {
            self.stats
                .quiesced
                .set(self.stats.quiesced.get().saturating_sub(woken as u64));
            self.wakeup.notify();
        }
        woken
    }

    /// Replicas asleep here now.
    pub fn quiesced_count(&self) -> u64 {
        self.stats.quiesced.get()
    }

    /// One Raft tick for every replica, applied on the next iteration.
    pub fn tick(&self) {
        self.ticks_pending
            .set(self.ticks_pending.get().saturating_add(1));
    }

    /// Asks a replica to start an election on the next iteration.
    pub fn campaign(&self, group: GroupId) -> Result<(), RaftError> {
        let mut slots = self.slots.borrow_mut();
        let slot = slots
            .get_mut(&group)
            .ok_or(RaftError::UnknownPartition(group))?;
        slot.campaign = true;
        self.wake_slot(group, slot);
        Self::mark_slot(&self.dirty, group, slot);
        drop(slots);
        self.wakeup.notify();
        Ok(())
    }

    /// Wakes a sleeping replica (a no-op for an awake one: its idle count
    /// goes on, since messages such as heartbeat answers are no work).
    fn wake_slot(&self, group: GroupId, slot: &mut Slot<L>) {
        if std::mem::take(&mut slot.quiesced) {
            slot.idle_ticks = 0;
            self.stats
                .quiesced
                .set(self.stats.quiesced.get().saturating_sub(1));
            Self::list_awake(&self.awake, group, slot);
        }
    }

    /// Puts `group` in the list of replicas ticks visit.
    fn list_awake(awake: &RefCell<Vec<GroupId>>, group: GroupId, slot: &mut Slot<L>) {
        if !slot.ticked {
            slot.ticked = true;
            awake.borrow_mut().push(group);
        }
    }

    /// Asks a leading replica to hand leadership to raft id `to` on the
    /// next iteration (ignored by a replica that does not lead).
    pub fn transfer_leader(&self, group: GroupId, to: u64) -> Result<(), RaftError> {
        let mut slots = self.slots.borrow_mut();
        let slot = slots
            .get_mut(&group)
            .ok_or(RaftError::UnknownPartition(group))?;
        slot.transfer_to = Some(to);
        self.wake_slot(group, slot);
        Self::mark_slot(&self.dirty, group, slot);
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
        group: GroupId,
        batch: &[u8],
        on_append: bool,
    ) -> Result<ProduceWaiter, RaftError> {
        let mut slots = self.slots.borrow_mut();
        let slot = slots
            .get_mut(&group)
            .ok_or(RaftError::UnknownPartition(group))?;
        let ticket = slot.replica.propose(batch)?;
        self.wake_slot(group, slot);
        Self::mark_slot(&self.dirty, group, slot);
        let (tx, rx) = oneshot::channel();
        let old = slot.waiters.insert(
            (ticket.index, ticket.term),
            Waiter {
                term: ticket.term,
                base_offset: None,
                tx: Some(tx),
                on_append,
                proposed_at: self.clock.now(),
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
            partition: group,
        })
    }

    /// Moves the events of the iterations so far into `into` (which the
    /// caller empties; its memory is reused).
    pub fn take_events(&self, into: &mut Vec<LoopEvent>) {
        let mut events = self.events.borrow_mut();
        std::mem::swap(&mut *events, into);
    }

    /// One iteration (see the module documentation).
    pub async fn process(&self) -> Result<IterationReport, RaftError> {
        let _held = self.lock.acquire().await;
        let mut report = IterationReport::default();
        let mut works: Vec<(GroupId, ReadyWork)> = Vec::new();
        // The groups looked at in this iteration (the ready set).
        let touched: Vec<GroupId>;
        let unreachable = self.transport.take_unreachable();
        {
            let mut slots = self.slots.borrow_mut();
            let dirty = &self.dirty;
            if !unreachable.is_empty() {
                for (g, slot) in slots.iter_mut() {
                    for dest in &unreachable {
                        let ids: Vec<u64> = slot.members.ids_at(*dest).collect();
                        for id in ids {
                            if slot.replica.is_leader() {
                                slot.replica.report_unreachable(id);
                                Self::mark_slot(dirty, *g, slot);
                            } else if slot.quiesced && slot.replica.leader_id() == Some(id) {
                                // Its leader cannot be reached: tick again.
                                self.wake_slot(*g, slot);
                            }
                        }
                    }
                }
            }
            let inbox = std::mem::take(&mut *self.inbox.borrow_mut());
            for (g, msg) in inbox {
                match slots.get_mut(&g) {
                    Some(slot) => {
                        let quiesce = msg.context.as_ref() == QUIESCE_CONTEXT;
                        let (from, term, kind) = (msg.from, msg.term, msg.get_msg_type());
                        // Heartbeats of the current leadership carry no work
                        // (one sent just before the group fell asleep may
                        // arrive after): they do not wake it.
                        let same_leadership = term == slot.replica.term()
                            && match kind {
                                MessageType::MsgHeartbeat => slot.replica.leader_id() == Some(from),
                                MessageType::MsgHeartbeatResponse => slot.replica.is_leader(),
                                _ => false,
                            };
                        if !quiesce && !same_leadership {
                            self.wake_slot(g, slot);
                        }
                        if let Err(e) = slot.replica.step(msg) {
                            tracing::debug!(group = g, error = %e, "raft message dropped");
                        }
                        if quiesce
                            && kind == MessageType::MsgHeartbeat
                            && slot.replica.role() == StateRole::Follower
                            && slot.replica.leader_id() == Some(from)
                            && slot.replica.term() == term
                            && !slot.quiesced
                        {
                            // The leader has nothing more to send: sleep.
                            slot.quiesced = true;
                            slot.replica.store().drop_applied_cache();
                            bump(&self.stats.quiesced, 1);
                        }
                        Self::mark_slot(dirty, g, slot);
                    }
                    None => bump(&self.stats.inbound_dropped, 1),
                }
            }
            let ticks = self.ticks_pending.replace(0).min(TICKS_CATCH_UP_MAX);
            let quiesce_after = self.cfg.quiesce_after_ticks;
            let mut outbox = self.outbox.borrow_mut();
            // Ticks visit the awake groups only.
            let visit = if ticks > 0 {
                std::mem::take(&mut *self.awake.borrow_mut())
            } else {
                Vec::new()
            };
            let mut still_awake = Vec::with_capacity(visit.len());
            for g in visit {
                let Some(slot) = slots.get_mut(&g) else {
                    continue;
                };
                let g = &g;
                if slot.quiesced {
                    slot.ticked = false;
                    continue;
                }
                still_awake.push(*g);
                if quiesce_after > 0 && slot.kind == GroupKind::Partition {
                    if !slot.at_rest() {
                        slot.idle_ticks = 0;
                    } else if slot.idle_ticks >= quiesce_after {
                        // Every follower has the whole log and the commit:
                        // tell them, and sleep (before this tick, which
                        // would send another heartbeat).
                        for (id, matched) in slot.replica.progress() {
                            if id == slot.replica.id() {
                                continue;
                            }
                            if let Some(dest) = slot.members.dest_of(id) {
                                let mut hb = Message::default();
                                hb.set_msg_type(MessageType::MsgHeartbeat);
                                hb.to = id;
                                hb.from = slot.replica.id();
                                hb.term = slot.replica.term();
                                hb.commit = matched.min(slot.replica.commit_index());
                                hb.context = bytes::Bytes::from_static(QUIESCE_CONTEXT);
                                outbox.push(dest, *g, hb);
                            }
                        }
                        slot.quiesced = true;
                        slot.idle_ticks = 0;
                        slot.replica.store().drop_applied_cache();
                        bump(&self.stats.quiesced, 1);
                        slot.ticked = false;
                        still_awake.pop();
                        continue;
                    } else {
                        slot.idle_ticks = slot.idle_ticks.saturating_add(ticks);
                    }
                }
                for _ in 0..ticks {
                    slot.replica.tick();
                }
                Self::mark_slot(dirty, *g, slot);
            }
            drop(outbox);
            if ticks > 0 {
                // Woken meanwhile ones were pushed onto the (emptied) list.
                let mut awake = self.awake.borrow_mut();
                still_awake.append(&mut awake);
                *awake = still_awake;
            }
            // The ready set: only groups something happened to.
            touched = std::mem::take(&mut *self.dirty.borrow_mut());
            for &g in &touched {
                let Some(slot) = slots.get_mut(&g) else {
                    continue;
                };
                slot.dirty = false;
                if std::mem::take(&mut slot.campaign) {
                    if let Err(e) = slot.replica.campaign() {
                        tracing::debug!(group = g, error = %e, "campaign refused");
                    }
                }
                if let Some(to) = slot.transfer_to.take() {
                    if slot.replica.is_leader() {
                        slot.replica.transfer_leader(to);
                    }
                }
                if let Some(work) = slot.replica.take_ready() {
                    works.push((g, work));
                }
            }
        }
        report.readies = works.len();
        // Entries a Ready hands out as committed are already durable here
        // and on a quorum (raft-rs hands out only persisted ones): their
        // produces are answered now, not after this iteration's sync of
        // newer entries.
        let early_now = self.clock.now();
        let mut resolved_early = Vec::with_capacity(works.len());
        {
            let mut slots = self.slots.borrow_mut();
            for (g, w) in &works {
                let early = w.snapshot.is_none() && !w.committed.is_empty();
                if early {
                    let slot = slots.get_mut(g).expect("slot of a ready");
                    report.produces_resolved +=
                        slot.on_committed(&w.committed, &self.commit_latency, early_now);
                }
                resolved_early.push(early);
            }
        }
        // Snapshots sent, reported to raft once no Ready is in flight.
        let mut snapshots_sent: Vec<(GroupId, u64)> = Vec::new();

        for (g, w) in &mut works {
            if !w.messages.is_empty() {
                let msgs = std::mem::take(&mut w.messages);
                self.queue(*g, msgs, &mut snapshots_sent);
            }
        }
        report.messages_sent += self.flush();

        let mut must_sync = false;
        for (g, w) in &works {
            let g = *g;
            let kind = self.slots.borrow().get(&g).map(|slot| slot.kind);
            if let Some(s) = &w.snapshot {
                if kind == Some(GroupKind::StateMachine) {
                    // The state machine's copy of the snapshot is durable
                    // before the log restarts past what it had applied.
                    if let Some(sink) = &*self.snapshot_sink.borrow() {
                        sink(g, s)?;
                    }
                }
                self.log
                    .reset(g, s.index + 1, s.term, s.first_offset)
                    .await?;
                let mut slots = self.slots.borrow_mut();
                let slot = slots.get_mut(&g).expect("slot of a ready");
                slot.fail_all(DropReason::SnapshotInstalled);
            }
            for e in &w.entries {
                let out = self
                    .log
                    .append(
                        g,
                        &[EntryRef {
                            index: e.index,
                            term: e.term,
                            kind: e.kind,
                            payload: &e.payload,
                        }],
                    )
                    .await?;
                let mut slots = self.slots.borrow_mut();
                let slot = slots.get_mut(&g).expect("slot of a ready");
                slot.on_appended(e.index, e.term, out.base_offset);
            }
            if let Some(last) = w.entries.last() {
                let mut slots = self.slots.borrow_mut();
                let slot = slots.get_mut(&g).expect("slot of a ready");
                slot.cut_after(last.index, last.term);
            }
            report.entries_appended += w.entries.len();
            if let Some(hs) = w.hard_state {
                self.log.set_hard_state(g, hs).await?;
            }
            // A partition's hard state whose term and vote are unchanged
            // (only the commit moved) is written but not synced for:
            // raft-rs says so (`must_sync`), the commit is recovered on
            // open (never below the compaction point), and a lone record
            // would otherwise pay a second fsync on the leader and on each
            // follower. The controller's still syncs: its applied state
            // lives in snapshot files, which its compaction follows.
            must_sync |= w.must_sync
                || w.snapshot.is_some()
                || !w.entries.is_empty()
                || (w.hard_state.is_some() && kind != Some(GroupKind::Partition));
        }
        if must_sync {
            self.log.sync().await?;
            report.synced = true;
        }

        let now = self.clock.now();
        let mut commit_writes = Vec::new();
        {
            let mut slots = self.slots.borrow_mut();
            let mut events = self.events.borrow_mut();
            for ((g, w), early) in works.iter_mut().zip(&resolved_early) {
                let slot = slots.get_mut(g).expect("slot of a ready");
                if !w.persisted_messages.is_empty() {
                    let msgs = std::mem::take(&mut w.persisted_messages);
                    self.queue_for(*g, &slot.members, msgs, &mut snapshots_sent);
                }
                if !early {
                    report.produces_resolved +=
                        slot.on_committed(&w.committed, &self.commit_latency, now);
                }
                let (adv, failed) = slot.replica.on_persisted();
                // Proposals queued during the write were proposed now: the
                // group has work for the next iteration.
                if slot.replica.has_ready() {
                    Self::mark_slot(&self.dirty, *g, slot);
                }
                for (ticket, err) in failed {
                    slot.fail((ticket.index, ticket.term), err);
                }
                if !adv.messages.is_empty() {
                    self.queue_for(*g, &slot.members, adv.messages, &mut snapshots_sent);
                }
                report.produces_resolved +=
                    slot.on_committed(&adv.committed, &self.commit_latency, now);
                if let Some(hs) = adv.hard_state {
                    commit_writes.push((*g, hs));
                }
                // What changed, for the layer above.
                if let Some(point) = w.snapshot.take() {
                    events.push(LoopEvent::SnapshotInstalled { group: *g, point });
                }
                match slot.kind {
                    GroupKind::Partition => {
                        if let Some(last) = adv.committed.last().or(w.committed.last()) {
                            events.push(LoopEvent::Committed {
                                group: *g,
                                index: last.index,
                            });
                        }
                    }
                    GroupKind::StateMachine => {
                        let mut entries = std::mem::take(&mut w.committed);
                        entries.extend(adv.committed);
                        if !entries.is_empty() {
                            events.push(LoopEvent::Applied { group: *g, entries });
                        }
                    }
                }
                let now_leadership = slot.leadership();
                let before = slot.leadership;
                if now_leadership != before {
                    if campaigning(now_leadership.role) && !campaigning(before.role) {
                        bump(&self.stats.elections, 1);
                    }
                    if now_leadership.leader != before.leader && now_leadership.leader.is_some() {
                        bump(&self.stats.leader_changes, 1);
                    }
                    slot.leadership = now_leadership;
                    events.push(LoopEvent::Leadership {
                        group: *g,
                        role: now_leadership.role,
                        term: now_leadership.term,
                        leader: now_leadership.leader,
                        serving: now_leadership.serving,
                    });
                }
            }
        }
        report.messages_sent += self.flush();
        {
            let mut slots = self.slots.borrow_mut();
            for (g, to) in snapshots_sent {
                if let Some(slot) = slots.get_mut(&g) {
                    slot.replica.report_snapshot_sent(to);
                    Self::mark_slot(&self.dirty, g, slot);
                }
            }
        }
        // The commit index is persisted lazily: durable with the next sync.
        for (g, hs) in commit_writes {
            self.log.set_hard_state(g, hs).await?;
        }

        // Reads raft asked for: only groups looked at in this iteration can
        // have asked (raft reads entries when it steps, ticks or proposes).
        let fetches: Vec<_> = {
            let slots = self.slots.borrow();
            touched
                .iter()
                .filter_map(|g| Some((*g, slots.get(g)?)))
                .flat_map(|(g, s)| {
                    s.replica
                        .store()
                        .take_pending_fetches()
                        .into_iter()
                        .map(move |f| (g, f))
                })
                .collect()
        };
        for (g, f) in fetches {
            report.fetches += 1;
            match self.log.entries(g, f.lo, f.hi, f.max_size).await {
                Ok(stored) => {
                    let entries = stored.iter().map(raft_entry_from_stored).collect();
                    let mut slots = self.slots.borrow_mut();
                    if let Some(slot) = slots.get_mut(&g) {
                        slot.replica.on_entries_fetched(entries, f.context);
                        Self::mark_slot(&self.dirty, g, slot);
                    }
                }
                // The log moved meanwhile; raft asks again.
                Err(StorageError::Compacted { .. } | StorageError::Unavailable { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        bump(&self.stats.messages_sent, report.messages_sent as u64);
        Ok(report)
    }

    /// Queues `msgs` of group `g` (looking its members up).
    fn queue(&self, g: GroupId, msgs: Vec<Message>, snapshots: &mut Vec<(GroupId, u64)>) {
        let slots = self.slots.borrow();
        let slot = slots.get(&g).expect("slot of a ready");
        self.queue_for(g, &slot.members, msgs, snapshots);
    }

    fn queue_for(
        &self,
        g: GroupId,
        members: &GroupMembers,
        msgs: Vec<Message>,
        snapshots: &mut Vec<(GroupId, u64)>,
    ) {
        let mut outbox = self.outbox.borrow_mut();
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                snapshots.push((g, m.to));
            }
            match members.dest_of(m.to) {
                Some(dest) => outbox.push(dest, g, m),
                None => bump(&self.stats.undeliverable, 1),
            }
        }
    }

    /// Hands the queued messages to the transport; returns how many.
    fn flush(&self) -> usize {
        let mut outbox = self.outbox.borrow_mut();
        let n = outbox.len();
        if n > 0 {
            self.transport.send(&mut outbox);
        }
        n
    }

    /// Whether input is waiting for the next iteration.
    pub fn has_pending_input(&self) -> bool {
        self.ticks_pending.get() > 0
            || !self.inbox.borrow().is_empty()
            || !self.dirty.borrow().is_empty()
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

    /// Runs iterations until `stop` is set: ticks every `tick_interval`,
    /// iterates while there is input, sleeps otherwise; calls `after` with
    /// each iteration's report (the service takes the events there).
    pub async fn run(
        &self,
        stop: &Cell<bool>,
        mut after: impl FnMut(&IterationReport),
    ) -> Result<(), RaftError> {
        let interval = self.cfg.tick_interval;
        let mut next_tick = self.clock.now() + interval;
        while !stop.get() {
            let now = self.clock.now();
            let mut due = 0u32;
            while now >= next_tick {
                due += 1;
                next_tick += interval;
            }
            for _ in 0..due.min(TICKS_CATCH_UP_MAX) {
                self.tick();
            }
            let report = self.process().await?;
            after(&report);
            if !report.did_work() && !self.has_pending_input() {
                self.wakeup
                    .wait(next_tick.saturating_duration_since(self.clock.now()))
                    .await;
            }
        }
        Ok(())
    }
}
