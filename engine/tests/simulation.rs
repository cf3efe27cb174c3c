//! The deterministic cluster simulator over many seeds (see `sim/mod.rs`).
//!
//! - `SHARDMQ_SEED=S` replays seed S alone (with `SHARDMQ_SIM_STEPS`,
//!   `SHARDMQ_SIM_BROKERS`, `SHARDMQ_SIM_PARTITIONS`, and
//!   `SHARDMQ_SIM_TRACE=1` for the whole trace); `tools/sim.sh --seed S`
//!   does that.
//! - Otherwise `SHARDMQ_SIM_SEEDS` seeds (default [`SEEDS_DEFAULT`]) from
//!   `SHARDMQ_SIM_SEED_BASE` (default 1); CI runs a few hundred.
//! - `SHARDMQ_SIM_HOURS=H` runs seeds until H hours have passed, printing
//!   how many ran as it goes (`tools/sim.sh --hours H`).
//!
//! A failing run prints its trace, its seed and the command that replays
//! it.

mod sim;

use std::time::{Duration, Instant};

use sim::{run, Failure, Outcome, SimConfig, Stats};

/// Seeds a plain `cargo test` runs.
const SEEDS_DEFAULT: u64 = 32;

/// Seeds the planted bug must be caught within: the CI budget.
const PLANTED_BUG_SEEDS_MAX: u64 = 200;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

fn fail(f: &Failure) -> ! {
    eprintln!("{f}");
    panic!(
        "simulation seed {} failed: {} (replay: {})",
        f.cfg.seed,
        f.message,
        f.cfg.replay_command()
    );
}

fn add(total: &mut Stats, s: &Stats) {
    total.iterations += s.iterations;
    total.fetches += s.fetches;
    total.produced += s.produced;
    total.acked += s.acked;
    total.reads += s.reads;
    total.stale_leader_reads += s.stale_leader_reads;
    total.mid_iteration_reads += s.mid_iteration_reads;
    total.mid_iteration_produces += s.mid_iteration_produces;
    total.timed_out += s.timed_out;
    total.commands += s.commands;
    total.controller_applied += s.controller_applied;
    total.leaderships += s.leaderships;
    total.crashes += s.crashes;
    total.sync_crashes += s.sync_crashes;
    total.pauses += s.pauses;
    total.partitions += s.partitions;
    total.transfers += s.transfers;
    total.compactions += s.compactions;
    total.snapshots_installed += s.snapshots_installed;
    total.settle_ms = total.settle_ms.max(s.settle_ms);
    total.simulated_ms += s.simulated_ms;
}

fn run_or_fail(cfg: &SimConfig) -> Outcome {
    match run(cfg) {
        Ok(o) => o,
        Err(f) => fail(&f),
    }
}

#[test]
fn seeded_runs_hold_every_invariant() {
    if let Some(seed) = env_u64("SHARDMQ_SEED") {
        let mut cfg = SimConfig::from_env(seed);
        cfg.fsync_lies = std::env::var("SHARDMQ_SIM_FSYNC_LIES").is_ok_and(|v| v == "1");
        let started = Instant::now();
        let o = run_or_fail(&cfg);
        eprintln!(
            "seed {seed}: ok in {:.2?}: trace digest {:016x} ({} lines), {:?}",
            started.elapsed(),
            o.digest,
            o.trace_lines,
            o.stats
        );
        return;
    }
    let base = env_u64("SHARDMQ_SIM_SEED_BASE").unwrap_or(1);
    let started = Instant::now();
    let mut total = Stats::default();
    if let Ok(hours) = std::env::var("SHARDMQ_SIM_HOURS") {
        let hours: f64 = hours
            .parse()
            .unwrap_or_else(|_| panic!("SHARDMQ_SIM_HOURS={hours} is not a number"));
        let budget = Duration::from_secs_f64(hours * 3600.0);
        let mut seed = base;
        let mut ran = 0u64;
        let mut reported = Instant::now();
        while started.elapsed() < budget {
            let o = run_or_fail(&SimConfig::from_env(seed));
            add(&mut total, &o.stats);
            ran += 1;
            seed += 1;
            if reported.elapsed() >= Duration::from_secs(60) {
                reported = Instant::now();
                eprintln!(
                    "{ran} seeds ran ({base}..{seed}) in {:.0?}, all held",
                    started.elapsed()
                );
            }
        }
        eprintln!(
            "{ran} seeds ran ({base}..{seed}) in {:.0?}, all held; {total:?}",
            started.elapsed()
        );
        return;
    }
    let seeds = env_u64("SHARDMQ_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    for seed in base..base + seeds {
        let o = run_or_fail(&SimConfig::from_env(seed));
        add(&mut total, &o.stats);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{seeds} seeds ({base}..{}) held in {secs:.1} s ({:.1} seeds/s); {total:?}",
        base + seeds,
        seeds as f64 / secs
    );
    // The faults the simulator exists for happened.
    assert!(total.acked > 0 && total.reads > 0, "{total:?}");
    if seeds >= SEEDS_DEFAULT {
        assert!(total.crashes > 0, "no broker crashed: {total:?}");
        assert!(total.sync_crashes > 0, "no crash inside a sync: {total:?}");
        assert!(total.pauses > 0 && total.partitions > 0, "{total:?}");
        assert!(total.transfers > 0, "no leader transfer: {total:?}");
        assert!(
            total.snapshots_installed > 0,
            "no snapshot catch-up: {total:?}"
        );
        assert!(
            total.fetches > 0,
            "no entry read back from the log: {total:?}"
        );
    }
}

#[test]
fn the_same_seed_replays_bit_for_bit() {
    let cfg = SimConfig::new(7);
    let a = run_or_fail(&cfg);
    let b = run_or_fail(&cfg);
    assert_eq!(a, b, "two runs of seed 7 differ");
    let c = run_or_fail(&SimConfig::new(8));
    assert_ne!(a.digest, c.digest, "seeds 7 and 8 ran alike");
}

/// The planted bug: disks whose fsync returns before anything is durable.
/// Acknowledgements then rest on writes a power loss takes back, and the
/// simulator must say so within the CI's seed budget: by any failure
/// (raft-rs's own assertions included) and by one of its own invariants.
#[test]
fn a_lying_fsync_is_caught() {
    let started = Instant::now();
    let mut first_failure = None;
    for seed in 1..=PLANTED_BUG_SEEDS_MAX {
        let mut cfg = SimConfig::new(seed);
        cfg.fsync_lies = true;
        let Err(f) = run(&cfg) else { continue };
        first_failure.get_or_insert(seed);
        if !f.message.starts_with("panicked") {
            eprintln!(
                "a lying fsync caught: first failure at seed {}, first broken invariant at seed \
                 {seed} after {:.1?}: {}",
                first_failure.unwrap_or(seed),
                started.elapsed(),
                f.message
            );
            return;
        }
    }
    panic!(
        "{PLANTED_BUG_SEEDS_MAX} seeds ran with lying fsyncs and no invariant broke (first \
         failure of any kind: {first_failure:?})"
    );
}

/// A seed that caught a bug, with the cluster it ran on (steps at
/// [`sim::STEPS_DEFAULT`]).
struct FoundBug {
    seed: u64,
    brokers: usize,
    partitions: u32,
    /// The bug, in one line.
    bug: &'static str,
}

/// The seeds that caught the bugs ARCHITECTURE.md lists under "What it
/// found": each fails with its fix reverted.
const SEEDS_THAT_FOUND_BUGS: &[FoundBug] = &[
    FoundBug {
        seed: 105,
        brokers: 3,
        partitions: 8,
        bug: "a persisted commit index below the compaction point, refused by raft-rs on restart",
    },
    FoundBug {
        seed: 41,
        brokers: 3,
        partitions: 8,
        bug: "a controller snapshot from the leader stored only after the log restarted from it",
    },
    FoundBug {
        seed: 6,
        brokers: 3,
        partitions: 8,
        bug: "a new leader serving the watermark it had as a follower during its iteration",
    },
    FoundBug {
        seed: 9981,
        brokers: 3,
        partitions: 8,
        bug: "a proposal answered as not stored when replaced by an entry itself uncommitted",
    },
    FoundBug {
        seed: 1466,
        brokers: 3,
        partitions: 2,
        bug: "the same bug as seed 9981, on two partitions",
    },
    FoundBug {
        seed: 64,
        brokers: 3,
        partitions: 8,
        bug: "the controller's commit-only hard state left unsynced: a restart behind its compacted log",
    },
];

/// Each seed that once caught a bug runs on the code as it is and holds.
#[test]
fn the_seeds_that_found_bugs_still_hold() {
    for found in SEEDS_THAT_FOUND_BUGS {
        let mut cfg = SimConfig::new(found.seed);
        cfg.brokers = found.brokers;
        cfg.partitions = found.partitions;
        if let Err(f) = run(&cfg) {
            eprintln!("{f}");
            panic!(
                "seed {} broke again ({}): {} (replay: {})",
                found.seed,
                found.bug,
                f.message,
                cfg.replay_command()
            );
        }
    }
}
