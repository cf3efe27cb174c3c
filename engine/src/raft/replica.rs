//! One partition's Raft replica: a sans-IO wrapper over raft-rs's `RawNode`.
//!
//! Hot path (propose, step, ready): no I/O and no logging above debug. The
//! replica turns a raft `Ready` into a [`ReadyWork`] (what to write, what to
//! send now, what to send after the write) and, once the caller has made
//! that durable, into an [`AdvanceWork`]. The shard loop does the I/O.
//!
//! The Ready protocol, as raft-rs defines it:
//! 1. `messages` may be sent at once (a leader replicates while it writes);
//! 2. the snapshot, entries and hard state are written, then synced;
//! 3. only then are `persisted_messages` sent (votes, append responses: a
//!    node must not promise what it has not made durable);
//! 4. `advance` returns a `LightReady` whose messages and committed entries
//!    are handled at once, and whose commit index is persisted lazily.
//!
//! Between `ready()` and `advance` nothing may be fed to the `RawNode`: a
//! proposal made meanwhile is queued and proposed right after `advance`.
//!
//! The partition's state machine is its log, so entries are applied as they
//! commit: `applied` follows the commit index, and on open it is the
//! persisted commit.

use std::collections::VecDeque;

use ::raft::eraftpb::{ConfChange, ConfChangeV2, EntryType, Message};
use ::raft::{Config, RawNode, Ready, StateRole};
use shardmq_schema::batch::RecordBatchView;
use shardmq_storage::{EntryKind, HardState, PartitionId, ShardLog};

use super::error::{DropReason, RaftError};
use super::log_backend::RaftLog;
use super::logging::raft_logger;
use super::store::{split_snapshot_data, LogEntry, Store};

/// Raft settings of a replica. Every field has a default, and these
/// defaults are the broker's (`[raft]` in the configuration takes them from
/// here).
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Ticks without hearing from a leader before a follower campaigns
    /// (randomised in `[election_tick, 2 * election_tick)`). Default 10.
    pub election_tick: usize,
    /// Upper bound (exclusive) of the randomised election timeout; 0 means
    /// `2 * election_tick`. `election_tick + 1` fixes the timeout, which
    /// makes a simulated cluster deterministic. Default 0.
    pub election_tick_max: usize,
    /// Ticks between a leader's heartbeats; less than `election_tick`.
    /// Default 2.
    pub heartbeat_tick: usize,
    /// A leader that has not heard from a quorum within an election timeout
    /// steps down (so a partitioned leader stops accepting writes). Default
    /// true.
    pub check_quorum: bool,
    /// A candidate first asks whether it could win before it raises its
    /// term, so a node that was cut off does not disrupt the group when it
    /// returns. Default true.
    pub pre_vote: bool,
    /// Bytes of entries in one append message. Default 1 MiB.
    pub max_size_per_msg: u64,
    /// Append messages in flight to one follower. raft-rs preallocates this
    /// many slots per peer and group, so it is kept small. Default 32.
    pub max_inflight_msgs: usize,
    /// Bytes of uncommitted entries a leader accepts before it drops
    /// proposals. Default 64 MiB.
    pub max_uncommitted_bytes: u64,
    /// Bytes of applied entries kept in memory per partition for followers
    /// that lag a little (entries not yet applied are always kept), at
    /// most: the shard's budget (`ShardLoopConfig::entry_cache_budget`)
    /// shared among its replicas may give less. Default 4 MiB.
    pub entry_cache_bytes_max: usize,
    /// Proposals queued while a Ready is being written. Default 4096.
    pub proposal_queue_max: usize,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            election_tick: 10,
            election_tick_max: 0,
            heartbeat_tick: 2,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 32,
            max_uncommitted_bytes: 64 << 20,
            entry_cache_bytes_max: 4 << 20,
            proposal_queue_max: 4096,
        }
    }
}

/// The Raft settings a replica runs with, read back from raft-rs (what a
/// test checks to know a configured setting took effect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveSettings {
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    pub check_quorum: bool,
    pub pre_vote: bool,
    pub max_inflight_msgs: usize,
    pub max_size_per_msg: u64,
}

/// Where a proposal will land: it is acknowledged once `index` commits with
/// `term` (a different term there means it was lost to a new leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProposalTicket {
    pub index: u64,
    pub term: u64,
}

/// A committed entry. `payload` shares raft's copy of the entry's data
/// (for a data entry, the batch as proposed, before storage stamped its
/// offsets): the controller applies it; partitions need only the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEntry {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    pub payload: bytes::Bytes,
}

/// A snapshot to install: the group's log restarts after `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPoint {
    /// Last index the snapshot covers; the log restarts at `index + 1`.
    pub index: u64,
    pub term: u64,
    /// The leader's log start offset, which the restarted log starts from.
    pub first_offset: u64,
    /// What the group's state machine put in the snapshot beside the log
    /// start (empty for a partition, whose state machine is its log; the
    /// metadata for the controller).
    pub data: bytes::Bytes,
}

/// What one Ready asks of the caller, in this order: send `messages`;
/// install `snapshot`, append `entries`, write `hard_state`; sync; send
/// `persisted_messages`; then call [`PartitionReplica::on_persisted`].
#[derive(Debug, Default)]
pub struct ReadyWork {
    pub messages: Vec<Message>,
    pub snapshot: Option<SnapshotPoint>,
    pub entries: Vec<LogEntry>,
    pub hard_state: Option<HardState>,
    /// Only after the write above is durable.
    pub persisted_messages: Vec<Message>,
    /// Committed entries (already durable locally).
    pub committed: Vec<CommittedEntry>,
    /// Whether a sync is needed before `persisted_messages` and
    /// `on_persisted` (false when only the commit index changed).
    pub must_sync: bool,
}

/// What follows a durable Ready: messages to send now, entries that
/// committed, and a new commit index to persist (lazily: with the next
/// sync round, whenever it comes).
#[derive(Debug, Default)]
pub struct AdvanceWork {
    pub messages: Vec<Message>,
    pub committed: Vec<CommittedEntry>,
    pub hard_state: Option<HardState>,
}

/// One partition's replica. Shard view: lives on the shard owning the
/// partition's storage; `!Send`.
pub struct PartitionReplica<L: RaftLog = ShardLog> {
    partition: PartitionId,
    raw: RawNode<Store<L>>,
    /// The Ready handed out by [`take_ready`](Self::take_ready), until
    /// [`on_persisted`](Self::on_persisted).
    in_flight: Option<Ready>,
    /// Proposals made while a Ready was in flight, with their promised
    /// index.
    queued: VecDeque<(Vec<u8>, ProposalTicket)>,
    proposal_queue_max: usize,
}

impl<L: RaftLog> std::fmt::Debug for PartitionReplica<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionReplica")
            .field("partition", &self.partition)
            .field("id", &self.raw.raft.id)
            .field("term", &self.raw.raft.term)
            .field("role", &self.raw.raft.state)
            .field("commit", &self.raw.raft.raft_log.committed)
            .finish()
    }
}

fn committed_from(entries: &[::raft::eraftpb::Entry]) -> impl Iterator<Item = CommittedEntry> + '_ {
    entries.iter().map(|e| CommittedEntry {
        index: e.index,
        term: e.term,
        kind: entry_kind(e),
        payload: e.data.clone(),
    })
}

/// What storage calls a raft entry (without copying its payload).
fn entry_kind(e: &::raft::eraftpb::Entry) -> EntryKind {
    match e.get_entry_type() {
        EntryType::EntryNormal if e.data.is_empty() => EntryKind::Empty,
        EntryType::EntryNormal => EntryKind::Data,
        EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => EntryKind::ConfChange,
    }
}

fn storage_hard_state(hs: &::raft::eraftpb::HardState) -> HardState {
    HardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
    }
}

impl<L: RaftLog> PartitionReplica<L> {
    /// A replica with raft id `id` over `store` (see [`Store::open`]).
    pub fn new(id: u64, store: Store<L>, cfg: &ReplicaConfig) -> Result<Self, RaftError> {
        let partition = store.partition();
        let applied = Store::applied_on_open(store.log(), partition)?;
        let config = Config {
            id,
            election_tick: cfg.election_tick,
            max_election_tick: cfg.election_tick_max,
            heartbeat_tick: cfg.heartbeat_tick,
            applied,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            max_uncommitted_size: cfg.max_uncommitted_bytes,
            check_quorum: cfg.check_quorum,
            pre_vote: cfg.pre_vote,
            // raft-rs's batch_append merges new entries into an append
            // already queued for the same follower. With it on, the seeded
            // chaos test (engine/tests/raft_chaos.rs, seed 42) drove a
            // follower to a heartbeat whose commit was past its last index
            // (raft-rs panics: "to_commit is out of range"). The transport
            // already sends one frame per destination shard per iteration,
            // so batching in raft buys little: it stays off.
            batch_append: false,
            ..Default::default()
        };
        config.validate()?;
        let logger = raft_logger(partition, id);
        let raw = RawNode::new(&config, store, &logger)?;
        Ok(PartitionReplica {
            partition,
            raw,
            in_flight: None,
            queued: VecDeque::new(),
            proposal_queue_max: cfg.proposal_queue_max,
        })
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// Whether this replica leads and has committed an entry of its own
    /// term: only then is its commit index the group's, so only then may
    /// it serve reads and advance the high watermark.
    pub fn leads_with_commit(&self) -> bool {
        self.is_leader()
            && self
                .raw
                .raft
                .raft_log
                .term(self.commit_index())
                .is_ok_and(|t| t == self.term())
    }

    /// Whether this replica may serve reads up to `index` (the index of
    /// the watermark readers would see): it leads, and that entry is of
    /// its own term, so the watermark covers everything any earlier leader
    /// committed. Stronger than [`leads_with_commit`](Self::leads_with_commit)
    /// while the layer above has not yet caught up with a commit made in
    /// the loop's current iteration (a read running while the iteration
    /// waits on its sync would otherwise serve the watermark this replica
    /// had as a follower).
    pub fn serves_up_to(&self, index: u64) -> bool {
        self.is_leader()
            && self
                .raw
                .raft
                .raft_log
                .term(index)
                .is_ok_and(|t| t == self.term())
    }

    /// The settings raft-rs runs this replica with.
    pub fn settings(&self) -> EffectiveSettings {
        let r = &self.raw.raft;
        EffectiveSettings {
            election_tick: r.election_timeout(),
            heartbeat_tick: r.heartbeat_timeout(),
            check_quorum: r.check_quorum,
            pre_vote: r.pre_vote,
            max_inflight_msgs: r.max_inflight,
            max_size_per_msg: r.max_msg_size,
        }
    }

    /// On a leader: the last index raft knows replica `id` holds.
    pub fn matched(&self, id: u64) -> Option<u64> {
        self.raw.raft.prs().get(id).map(|p| p.matched)
    }

    /// On a leader: every replica's raft id and matched index (its own
    /// included).
    pub fn progress(&self) -> Vec<(u64, u64)> {
        self.raw
            .raft
            .prs()
            .iter()
            .map(|(id, p)| (*id, p.matched))
            .collect()
    }

    /// The raft id of the replica a leader transfer is moving leadership
    /// to, if one is in progress.
    pub fn transferring_to(&self) -> Option<u64> {
        self.raw.raft.lead_transferee
    }

    /// The leader this replica knows of.
    pub fn leader_id(&self) -> Option<u64> {
        match self.raw.raft.leader_id {
            ::raft::INVALID_ID => None,
            id => Some(id),
        }
    }

    /// The commit index (the partition's high watermark, as an index).
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The applied index: entries up to it have been handed to the state
    /// machine (the log itself), so retention may drop them.
    pub fn applied_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    /// The last index raft knows durable in this replica's log (lowered
    /// when a conflicting append replaces entries).
    pub fn persisted_index(&self) -> u64 {
        self.raw.raft.raft_log.persisted
    }

    /// The last index of raft's log (including entries not yet written).
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    pub fn store(&self) -> &Store<L> {
        self.raw.store()
    }

    /// Whether a Ready is handed out and not yet persisted.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    fn not_leader(&self) -> RaftError {
        RaftError::NotLeader {
            partition: self.partition,
            leader: self.leader_id(),
        }
    }

    /// Proposes a record batch (checked here: a batch storage would refuse
    /// must never enter the Raft log). Returns the index and term the entry
    /// will have.
    pub fn propose(&mut self, batch: &[u8]) -> Result<ProposalTicket, RaftError> {
        RecordBatchView::parse_verified(batch).map_err(|source| RaftError::BadBatch {
            partition: self.partition,
            source,
        })?;
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        if self.in_flight.is_some() {
            if self.queued.len() >= self.proposal_queue_max {
                return Err(self.dropped(DropReason::QueueFull));
            }
            let ticket = ProposalTicket {
                index: self.last_index() + self.queued.len() as u64 + 1,
                term: self.term(),
            };
            self.queued.push_back((batch.to_vec(), ticket));
            return Ok(ticket);
        }
        self.propose_now(batch.to_vec())
    }

    fn propose_now(&mut self, data: Vec<u8>) -> Result<ProposalTicket, RaftError> {
        let before = self.last_index();
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {}
            Err(::raft::Error::ProposalDropped) if !self.is_leader() => {
                return Err(self.not_leader())
            }
            Err(::raft::Error::ProposalDropped) => {
                return Err(self.dropped(DropReason::RefusedByRaft))
            }
            Err(e) => return Err(e.into()),
        }
        let index = self.last_index();
        assert_eq!(index, before + 1, "a proposal adds exactly one entry");
        Ok(ProposalTicket {
            index,
            term: self.term(),
        })
    }

    /// Proposes what was queued while a Ready was in flight. Returns the
    /// tickets that could not be honoured (their index will not hold their
    /// entry), with the reason.
    fn flush_queued(&mut self) -> Vec<(ProposalTicket, RaftError)> {
        let mut failed = Vec::new();
        while let Some((data, ticket)) = self.queued.pop_front() {
            if !failed.is_empty() {
                failed.push((ticket, self.dropped(DropReason::LeadershipChanged)));
                continue;
            }
            match self.propose_now(data) {
                Ok(got) if got == ticket => {}
                Ok(_) => failed.push((ticket, self.dropped(DropReason::LeadershipChanged))),
                Err(e) => failed.push((ticket, e)),
            }
        }
        failed
    }

    fn dropped(&self, reason: DropReason) -> RaftError {
        RaftError::ProposalDropped {
            partition: self.partition,
            reason,
        }
    }

    /// Starts an election (a test or an operator's preferred-leader move).
    pub fn campaign(&mut self) -> Result<(), RaftError> {
        assert!(
            self.in_flight.is_none(),
            "campaign while a Ready is in flight"
        );
        Ok(self.raw.campaign()?)
    }

    /// Asks the leader to hand leadership to `to` (a raft id). raft-rs
    /// drops proposals while the transfer is pending (answered
    /// [`DropReason::RefusedByRaft`]); the transfer ends after an election
    /// timeout if `to` does not take over.
    pub fn transfer_leader(&mut self, to: u64) {
        assert!(
            self.in_flight.is_none(),
            "transfer while a Ready is in flight"
        );
        self.raw.transfer_leader(to);
    }

    /// Tells raft a message to `to` could not be delivered, so the leader
    /// probes it again instead of waiting for lost appends.
    pub fn report_unreachable(&mut self, to: u64) {
        assert!(
            self.in_flight.is_none(),
            "report while a Ready is in flight"
        );
        self.raw.report_unreachable(to);
    }

    /// The broker of this follower's leader is gone (its connection
    /// closed). The follower forgets that leader, which ends the lease it
    /// granted it, so it grants votes at once. One follower campaigns at
    /// the next tick: the one of lowest id among the other voters, so the
    /// followers of a group do not all campaign at once and split the vote;
    /// the others keep their election timers (and elect one themselves if
    /// that campaign fails). Raft's safety does not rest on it; a leader
    /// that is in fact alive is followed again at its next message.
    /// Touches no state a Ready in flight depends on.
    pub fn leader_lost(&mut self) {
        let raft = &mut self.raw.raft;
        if raft.state != StateRole::Follower || raft.leader_id == ::raft::INVALID_ID {
            return;
        }
        let lost = raft.leader_id;
        let me = raft.id;
        let first = raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|id| *id != lost)
            .min();
        raft.leader_id = ::raft::INVALID_ID;
        if first == Some(me) {
            raft.election_elapsed = raft.randomized_election_timeout();
        }
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        assert!(self.in_flight.is_none(), "tick while a Ready is in flight");
        self.raw.tick();
    }

    /// Feeds a message from a peer. Messages from unknown peers or for a
    /// stale state are dropped by raft.
    pub fn step(&mut self, msg: Message) -> Result<(), RaftError> {
        assert!(self.in_flight.is_none(), "step while a Ready is in flight");
        Ok(self.raw.step(msg)?)
    }

    pub fn has_ready(&self) -> bool {
        self.in_flight.is_none() && self.raw.has_ready()
    }

    /// Takes the next Ready and says what to do with it. `None` when there
    /// is nothing to do (or a Ready is already in flight).
    pub fn take_ready(&mut self) -> Option<ReadyWork> {
        if !self.has_ready() {
            return None;
        }
        let mut rd = self.raw.ready();
        let mut work = ReadyWork {
            messages: rd.take_messages(),
            must_sync: rd.must_sync(),
            ..Default::default()
        };
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot();
            let meta = snap.get_metadata();
            let (first_offset, data) =
                split_snapshot_data(snap).expect("a shardmq snapshot carries the log start offset");
            work.snapshot = Some(SnapshotPoint {
                index: meta.index,
                term: meta.term,
                first_offset,
                data,
            });
        }
        if let Some(s) = &work.snapshot {
            let cs = rd.snapshot().get_metadata().get_conf_state().clone();
            self.raw.store().on_reset(s.index, cs);
        }
        let entries = rd.take_entries();
        work.entries = entries.iter().map(LogEntry::from_raft).collect();
        // The cache mirrors what the log will hold once the caller appended
        // these; raft reads its own unstable copy until `advance`.
        self.raw.store().on_appended(&entries);
        work.hard_state = rd.hs().map(storage_hard_state);
        work.persisted_messages = rd.take_persisted_messages();
        let committed = rd.take_committed_entries();
        self.apply_conf_changes(&committed);
        work.committed = committed_from(&committed).collect();
        self.in_flight = Some(rd);
        Some(work)
    }

    /// The caller has made the last Ready's writes durable (or they needed
    /// no sync). Advances raft, then proposes what was queued meanwhile.
    /// Returns the follow-up work and the queued proposals that failed.
    pub fn on_persisted(&mut self) -> (AdvanceWork, Vec<(ProposalTicket, RaftError)>) {
        let rd = self
            .in_flight
            .take()
            .expect("on_persisted without a Ready in flight");
        let mut light = self.raw.advance(rd);
        let committed = light.take_committed_entries();
        self.apply_conf_changes(&committed);
        let work = AdvanceWork {
            messages: light.take_messages(),
            committed: committed_from(&committed).collect(),
            hard_state: light
                .commit_index()
                .map(|_| storage_hard_state(&self.raw.raft.hard_state())),
        };
        self.raw.advance_apply();
        self.raw.store().set_applied(self.raw.raft.raft_log.applied);
        let failed = self.flush_queued();
        (work, failed)
    }

    /// Tells raft a snapshot went out to `to`. A shardmq snapshot is
    /// metadata in one message, so it is reported finished once sent: if it
    /// was lost, the leader probes the follower again and sends another.
    pub fn report_snapshot_sent(&mut self, to: u64) {
        assert!(
            self.in_flight.is_none(),
            "report while a Ready is in flight"
        );
        self.raw.report_snapshot(to, ::raft::SnapshotStatus::Finish);
    }

    /// Hands a range read for raft back (see [`Store`]) and lets raft
    /// resend.
    pub fn on_entries_fetched(
        &mut self,
        entries: Vec<::raft::eraftpb::Entry>,
        context: ::raft::GetEntriesContext,
    ) {
        assert!(
            self.in_flight.is_none(),
            "fetch result while a Ready is in flight"
        );
        self.raw.store().set_fetched(entries);
        self.raw.on_entries_fetched(context);
        self.raw.store().clear_fetched();
    }

    fn apply_conf_changes(&mut self, committed: &[::raft::eraftpb::Entry]) {
        for e in committed {
            let cs = match e.get_entry_type() {
                EntryType::EntryNormal => continue,
                EntryType::EntryConfChange => {
                    let cc: ConfChange = ::protobuf::Message::parse_from_bytes(&e.data)
                        .expect("a committed conf change decodes");
                    self.raw.apply_conf_change(&cc)
                }
                EntryType::EntryConfChangeV2 => {
                    let cc: ConfChangeV2 = ::protobuf::Message::parse_from_bytes(&e.data)
                        .expect("a committed conf change decodes");
                    self.raw.apply_conf_change(&cc)
                }
            };
            match cs {
                Ok(cs) => self.raw.store().set_conf_state(cs),
                Err(err) => tracing::warn!(
                    partition = self.partition,
                    index = e.index,
                    error = %err,
                    "conf change not applied"
                ),
            }
        }
    }
}
