//! Helpers shared by the Raft integration tests: an executor, record
//! batches, and shard loops over real shard logs joined by the simulator's
//! network (`engine/tests/sim/net.rs`, seeded and deterministic).
#![allow(dead_code)]

#[path = "../sim/rng.rs"]
pub mod rng;

#[path = "../sim/net.rs"]
pub mod net;

use net::SimNet;

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use shardmq_engine::raft::{
    Dest, GroupKind, GroupMembers, Outbox, ShardLoop, ShardLoopConfig, Transport,
};
use shardmq_schema::batch::BatchBuilder;
use shardmq_storage::{EntryKind, LogConfig, PartitionId, ShardLog};

/// Runs `f` on a fresh glommio executor with a small registered-memory pool
/// (the test machine's memlock limit is small).
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor starts")
        .run(f())
}

/// A record batch of `records` records whose values encode `tag`.
pub fn batch(records: usize, tag: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let ts = 1_700_000_000_000 + tag as i64;
    let mut b = BatchBuilder::new(&mut out, 0, ts);
    for r in 0..records {
        let value = format!("value-{tag}-{r}");
        b.append(
            ts + r as i64,
            Some(&tag.to_le_bytes()),
            Some(value.as_bytes()),
            &[],
        );
    }
    b.finish();
    out
}

/// What storage stores for `payload` at `base_offset` in `term`.
pub fn stamped(payload: &[u8], base_offset: u64, term: u64) -> Vec<u8> {
    let mut v = payload.to_vec();
    shardmq_schema::batch::stamp(&mut v, base_offset as i64, term as i32);
    v
}

/// Small segments and buffers: several logs share one executor's memory.
pub fn log_config(dir: &std::path::Path) -> LogConfig {
    let mut cfg = LogConfig::new(dir);
    cfg.segment_bytes = 1 << 20;
    cfg.write_buffer_bytes = 32 << 10;
    cfg.entry_bytes_max = 64 << 10;
    cfg
}

/// Fails the test once `deadline` has passed (a guard against hangs; the
/// tests count steps, not time).
pub fn check_deadline(deadline: Instant, what: &str) {
    assert!(Instant::now() < deadline, "timed out waiting for {what}");
}

/// A transport that drops everything (single-voter groups send nothing).
#[derive(Debug, Default)]
pub struct NoNetwork;

impl Transport for NoNetwork {
    fn send(&self, outbox: &mut Outbox) {
        outbox.drain_each(|_, msgs| msgs.clear());
    }
}

/// The members of a group whose replicas are raft ids `ids`, node `id` on
/// shard 0 of broker `id`.
pub fn members(ids: &[u64]) -> GroupMembers {
    GroupMembers {
        voters: ids
            .iter()
            .map(|id| {
                (
                    *id,
                    Dest {
                        node: *id as i32,
                        shard: 0,
                    },
                )
            })
            .collect(),
        learners: Vec::new(),
    }
}

/// One node's endpoint on the simulated network.
#[derive(Debug)]
pub struct SimTransport {
    net: Rc<RefCell<SimNet>>,
}

impl Transport for SimTransport {
    fn send(&self, outbox: &mut Outbox) {
        let mut net = self.net.borrow_mut();
        outbox.drain_each(|_, msgs| {
            for (group, m) in msgs.drain(..) {
                // Node ids are raft ids here.
                net.submit(m.from, m.to, group, m);
            }
        });
    }
}

/// A partition replicated on `n` nodes, each a shard loop with its own log
/// directory, all in one executor.
pub struct Cluster {
    pub net: Rc<RefCell<SimNet>>,
    pub nodes: Vec<ShardLoop<SimTransport>>,
    pub partition: PartitionId,
    /// Entry reads raft had to wait for (cache misses), over all nodes.
    pub fetches: std::cell::Cell<usize>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    pub async fn start(n: u64, partition: PartitionId, seed: u64) -> Cluster {
        Self::start_with(n, partition, seed, ShardLoopConfig::default()).await
    }

    pub async fn start_with(
        n: u64,
        partition: PartitionId,
        seed: u64,
        cfg: ShardLoopConfig,
    ) -> Cluster {
        let net = SimNet::new(seed);
        let voters: Vec<u64> = (1..=n).collect();
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for id in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            let (log, _) = ShardLog::open(log_config(dir.path())).await.unwrap();
            // raft draws election timeouts from an unseeded generator; a
            // fixed, distinct timeout per node keeps a run replayable.
            let mut node_cfg = cfg.clone();
            node_cfg.replica.election_tick = 10 + 4 * (id as usize - 1);
            node_cfg.replica.election_tick_max = node_cfg.replica.election_tick + 1;
            let lp = ShardLoop::new(log, SimTransport { net: net.clone() }, node_cfg);
            lp.add_replica(partition, id, members(&voters), GroupKind::Partition)
                .await
                .unwrap();
            nodes.push(lp);
            dirs.push(dir);
        }
        Cluster {
            net,
            nodes,
            partition,
            fetches: std::cell::Cell::new(0),
            _dirs: dirs,
        }
    }

    pub fn node(&self, id: u64) -> &ShardLoop<SimTransport> {
        &self.nodes[(id - 1) as usize]
    }

    /// One tick: every node ticks, then `rounds` rounds of (every node
    /// processes, the network delivers what is due).
    pub async fn step(&self, rounds: u64) {
        for n in &self.nodes {
            n.tick();
        }
        for _ in 0..rounds {
            for n in &self.nodes {
                let report = n.process().await.unwrap();
                self.fetches.set(self.fetches.get() + report.fetches);
            }
            let due = {
                let mut net = self.net.borrow_mut();
                let due = net.take_due();
                net.now += 1;
                due
            };
            for d in due {
                self.node(d.to).deliver(d.group, d.msg);
            }
        }
    }

    /// The leader, if exactly one node leads in the highest term and a
    /// majority knows it.
    pub fn leader(&self) -> Option<u64> {
        let p = self.partition;
        let states: Vec<(bool, u64, Option<u64>)> = self
            .nodes
            .iter()
            .map(|n| {
                n.with_replica(p, |r| (r.is_leader(), r.term(), r.leader_id()))
                    .unwrap()
            })
            .collect();
        let top = states.iter().map(|s| s.1).max()?;
        let leaders: Vec<u64> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| s.0 && s.1 == top)
            .map(|(i, _)| i as u64 + 1)
            .collect();
        let [leader] = leaders[..] else { return None };
        let knowing = states.iter().filter(|s| s.2 == Some(leader)).count();
        (knowing * 2 > self.nodes.len()).then_some(leader)
    }

    pub fn commit(&self, id: u64) -> u64 {
        self.node(id)
            .with_replica(self.partition, |r| r.commit_index())
            .unwrap()
    }

    /// Steps until `cond` holds, at most `steps_max` ticks.
    pub async fn step_until(&self, what: &str, steps_max: u64, cond: impl Fn(&Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        for _ in 0..steps_max {
            if cond(self) {
                return;
            }
            self.step(3).await;
            check_deadline(deadline, what);
        }
        assert!(cond(self), "not reached within {steps_max} ticks: {what}");
    }
}

/// Everything a log holds up to `hi`: (index, term, kind, payload).
pub async fn log_entries(
    log: &ShardLog,
    p: PartitionId,
    hi: u64,
) -> Vec<(u64, u64, EntryKind, Vec<u8>)> {
    let first = log.first_index(p).unwrap();
    if hi < first {
        return Vec::new();
    }
    log.entries(p, first, hi + 1, None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.index, e.term, e.kind, e.payload.to_vec()))
        .collect()
}

/// Base offset and offset count of every data entry up to index `hi`, in
/// order, read by offset from the log start offset.
pub async fn offsets(log: &ShardLog, p: PartitionId, hi: u64) -> Vec<(u64, u64, u32)> {
    let start = log.log_start_offset(p).unwrap();
    log.read_from_offset(p, start, u64::MAX, hi)
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.index, b.base_offset, b.offset_count))
        .collect()
}
