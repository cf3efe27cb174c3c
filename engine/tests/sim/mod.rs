//! A deterministic cluster simulator: N brokers' sans-IO cores in one
//! thread under one seed. Each broker is one shard, a `ShardLoop` over
//! [`disk::SimLog`] (an in-memory shard log with crash semantics) and a
//! manual clock, holding its replicas of the workload's partitions (placed
//! by the controller's placement rule) and of the controller group, whose
//! committed commands it applies to its own `ClusterMetadata`. The brokers
//! talk over [`net::SimNet`]. No runtime, no wall clock, no thread: every
//! call into the engine completes when polled once ([`ready`]), so the same
//! seed gives the same run, bit for bit (the trace digest says so).
//!
//! A run: `steps` ticks of workload under faults ([`nemesis`]), then the
//! last heal and the liveness bound ([`settle`]), then the checks over the
//! whole history. Invariants checked as the run goes (`model`): at most one
//! leader per term per group; a committed entry never changes, on any
//! replica, so committed prefixes are equal everywhere; offsets are dense;
//! a value is committed at most once, and an acknowledged one at the
//! index, term and offsets it was acknowledged with; a serving leader's
//! high watermark never goes below one already served, and reads return
//! only committed batches, contiguous from the offset asked for; the
//! controller metadata at each index is the same on every broker.
//!
//! Seeds: the network, the workload and the faults draw from separate
//! streams of the run's seed. `SHARDMQ_SEED` replays one run;
//! `tools/sim.sh` wraps it.

pub mod cluster;
pub mod disk;
pub mod model;
pub mod nemesis;
pub mod net;
pub mod rng;
pub mod settle;
pub mod trace;
pub mod workload;

use std::cell::RefCell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use cluster::{Sim, TICK_MS};
use trace::Trace;

/// Ticks of workload under faults in a run, unless told otherwise.
pub const STEPS_DEFAULT: u64 = 1000;

/// Polls a future once: in a simulation nothing may wait (the simulated
/// disk answers at once, and the loop's lock is never contended).
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a simulated call waited: nothing in a simulation may block"),
    }
}

/// What one run simulates.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub steps: u64,
    pub brokers: usize,
    pub partitions: u32,
    /// The planted bug: every disk's fsync returns without making
    /// anything durable.
    pub fsync_lies: bool,
    /// Print every trace line as it happens.
    pub trace_all: bool,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
    )
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            steps: STEPS_DEFAULT,
            brokers: 3,
            partitions: 8,
            fsync_lies: false,
            trace_all: false,
        }
    }

    /// `new(seed)` with what the environment overrides:
    /// `SHARDMQ_SIM_STEPS`, `SHARDMQ_SIM_BROKERS`, `SHARDMQ_SIM_PARTITIONS`,
    /// `SHARDMQ_SIM_TRACE=1`.
    pub fn from_env(seed: u64) -> SimConfig {
        let mut cfg = SimConfig::new(seed);
        if let Some(v) = env_u64("SHARDMQ_SIM_STEPS") {
            cfg.steps = v;
        }
        if let Some(v) = env_u64("SHARDMQ_SIM_BROKERS") {
            assert!((1..=9).contains(&v), "SHARDMQ_SIM_BROKERS must be 1 to 9");
            cfg.brokers = v as usize;
        }
        if let Some(v) = env_u64("SHARDMQ_SIM_PARTITIONS") {
            assert!(
                (1..=64).contains(&v),
                "SHARDMQ_SIM_PARTITIONS must be 1 to 64"
            );
            cfg.partitions = v as u32;
        }
        cfg.trace_all = std::env::var("SHARDMQ_SIM_TRACE").is_ok_and(|v| v == "1");
        cfg
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "tools/sim.sh --seed {} --steps {} --brokers {} --partitions {}{}",
            self.seed,
            self.steps,
            self.brokers,
            self.partitions,
            if self.fsync_lies { " --fsync-lies" } else { "" }
        )
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub iterations: u64,
    pub fetches: u64,
    pub produced: u64,
    pub acked: u64,
    pub reads: u64,
    /// Produces proposed while the broker's loop waited in its sync.
    pub mid_iteration_produces: u64,
    /// Produces the client gave up waiting for.
    pub timed_out: u64,
    /// Reads served while the broker's loop waited in its sync.
    pub mid_iteration_reads: u64,
    /// Reads a deposed leader served after a newer term had served.
    pub stale_leader_reads: u64,
    pub commands: u64,
    pub controller_applied: u64,
    pub leaderships: u64,
    pub crashes: u64,
    pub sync_crashes: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub transfers: u64,
    pub compactions: u64,
    pub snapshots_installed: u64,
    pub settle_ms: u64,
    pub simulated_ms: u64,
}

/// A run that held every invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub seed: u64,
    /// Digest of the whole trace: equal for two runs of one seed.
    pub digest: u64,
    pub trace_lines: u64,
    pub stats: Stats,
}

/// A run that broke an invariant (or panicked).
#[derive(Debug, Clone)]
pub struct Failure {
    pub cfg: SimConfig,
    pub message: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "the last {} trace lines:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        writeln!(
            f,
            "simulation failed: seed {}: {}",
            self.cfg.seed, self.message
        )?;
        write!(f, "replay: {}", self.cfg.replay_command())
    }
}

fn body(cfg: &SimConfig, trace: Rc<RefCell<Trace>>) -> Result<Outcome, String> {
    let mut sim = Sim::new(cfg.clone(), trace.clone());
    for i in 0..sim.brokers.len() {
        sim.boot(i)?;
    }
    while sim.step < cfg.steps {
        sim.step_once(true)?;
    }
    sim.settle()?;
    sim.final_checks()?;
    sim.stats.simulated_ms = sim.step * TICK_MS;
    let t = trace.borrow();
    Ok(Outcome {
        seed: cfg.seed,
        digest: t.digest(),
        trace_lines: t.lines(),
        stats: sim.stats.clone(),
    })
}

/// Runs one simulation. A panic inside it (the engine's assertions
/// included) is a failure like a broken invariant.
pub fn run(cfg: &SimConfig) -> Result<Outcome, Failure> {
    let trace = Rc::new(RefCell::new(Trace::new(cfg.trace_all)));
    let result = catch_unwind(AssertUnwindSafe(|| body(cfg, trace.clone())));
    let message = match result {
        Ok(Ok(outcome)) => return Ok(outcome),
        Ok(Err(message)) => message,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            format!("panicked: {what}")
        }
    };
    let tail = trace.borrow().tail();
    Err(Failure {
        cfg: cfg.clone(),
        message,
        trace: tail,
    })
}
