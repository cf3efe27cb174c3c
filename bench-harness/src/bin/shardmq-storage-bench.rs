//! `shardmq-storage-bench`: synced-append throughput and latency of the shard
//! log (`shardmq-storage`), on one glommio executor pinned to one core.
//!
//! Model. One [`ShardLog`] in a fresh subdirectory of `--dir`. For each of
//! `--partitions` partitions, `--concurrency` appender tasks each loop:
//! append one data entry (the same pre-built record batch of about
//! `--batch-bytes` bytes every time, so the run measures storage, not
//! encoding) at the partition's next index, then `sync()`. The latency of one
//! operation runs from just before the append to just after its sync
//! returned; concurrent syncs share group-commit rounds.
//!
//! Indexes with `--concurrency` > 1: the appenders of one partition share a
//! one-permit semaphore held across `append` only (not across `sync`). The
//! index is read as `last_index + 1` after taking the permit, so appends of
//! a partition are ordered even though `append` may yield while it reserves
//! buffer space, and syncs of the same partition still overlap. The wait for
//! the permit is part of the measured latency.
//!
//! Measurement. The first `--warmup-secs` (default 1 s) are excluded: latency
//! samples, counted appends and storage counters all cover only the window
//! after it. The run then lasts `--duration-secs`, or until `--appends`
//! operations were measured. Appends still in flight when the window closes
//! complete but are not counted.

use std::cell::{Cell, RefCell};
use std::error::Error;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use glommio::sync::Semaphore;
use glommio::timer::sleep;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use shardmq_schema::batch::{BatchBuilder, RecordBatchView};
use shardmq_storage::{
    EntryKind, EntryRef, LogConfig, PartitionId, ShardLog, StatsSnapshot, SyncMode,
};

type BoxError = Box<dyn Error>;

/// `--sync-mode` values, one per [`SyncMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SyncModeArg {
    Pipelined,
    WriteThrough,
    Adaptive,
}

impl SyncModeArg {
    fn mode(self) -> SyncMode {
        match self {
            SyncModeArg::Pipelined => SyncMode::Pipelined,
            SyncModeArg::WriteThrough => SyncMode::WriteThrough,
            SyncModeArg::Adaptive => SyncMode::Adaptive,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SyncModeArg::Pipelined => "pipelined",
            SyncModeArg::WriteThrough => "write-through",
            SyncModeArg::Adaptive => "adaptive",
        }
    }
}

/// Synced-append benchmark of the shardmq shard log (append, then sync, in a
/// loop, per appender task).
#[derive(Debug, Parser)]
#[command(name = "shardmq-storage-bench", version)]
struct Args {
    /// Directory to run in (created if missing). The bench works in its own
    /// fresh subdirectory and removes it at the end.
    #[arg(long)]
    dir: PathBuf,

    /// Size in bytes of each appended payload: one record batch holding a
    /// single record whose value fills it. Accepts K/M/G suffixes (binary).
    #[arg(long, default_value = "4096", value_parser = parse_size)]
    batch_bytes: u64,

    /// Number of partitions in the log.
    #[arg(long, default_value_t = 1)]
    partitions: u64,

    /// Measured run time in seconds, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,

    /// Stop after this many measured append+sync operations instead of
    /// after --duration-secs.
    #[arg(long, conflicts_with = "duration_secs")]
    appends: Option<u64>,

    /// In-flight appender tasks per partition.
    #[arg(long, default_value_t = 1)]
    concurrency: u64,

    /// Segment file size in bytes (K/M/G suffixes accepted).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    segment_bytes: u64,

    /// Size in bytes of the staging buffer one sync round writes at most
    /// (K/M/G suffixes accepted).
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    write_buffer_bytes: u64,

    /// Rate at which segments are zeroed before they take records (0: not
    /// at all), see the storage configuration (K/M/G suffixes accepted).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    prezero_bytes_per_sec: u64,

    /// How sync rounds make appends durable: "pipelined" (a write, then an
    /// fdatasync, the next round's write during it), "write-through" (one
    /// O_DSYNC write per round, no fdatasync) or "adaptive" (write-through
    /// when the log is idle, pipelined when it is busy; the broker's
    /// default). See the storage configuration.
    #[arg(long, value_enum, default_value_t = SyncModeArg::Adaptive)]
    sync_mode: SyncModeArg,

    /// Seconds at the start whose operations and counters are excluded.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,

    /// CPU the executor thread is pinned to.
    #[arg(long, default_value_t = 0)]
    cpu: usize,

    /// Registered io_uring buffer memory of the executor, bytes (must fit
    /// the memlock limit; buffers beyond it come from the heap).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    io_memory_bytes: u64,

    /// Microseconds the executor busy-polls for completions before it
    /// sleeps in the kernel. Polling trades a core's idle time for the
    /// wake-up latency of a sleeping thread; 0 sleeps at once.
    #[arg(long, default_value_t = 0)]
    spin_before_park_us: u64,

    /// Print one JSON line with every result at the end (after the text
    /// summary, which goes to stderr in that case).
    #[arg(long)]
    json: bool,
}

/// Parses a byte count: digits with an optional K, M or G suffix (powers of
/// 1024, optional "iB"/"B").
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count"))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size suffix {other:?} in {s:?}")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Builds one valid record batch of exactly `target` bytes when possible
/// (a single record whose value fills it; the value is pseudo-random so no
/// layer below can shortcut runs of equal bytes).
fn build_batch(target: usize) -> Result<Vec<u8>, BoxError> {
    const TS: i64 = 1_700_000_000_000;
    const MIN: usize = 128;
    if target < MIN {
        return Err(format!("--batch-bytes must be at least {MIN}").into());
    }
    let mut value = vec![0u8; target];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in value.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut out = Vec::with_capacity(target + 64);
    let build = |value_len: usize, out: &mut Vec<u8>| {
        let mut builder = BatchBuilder::new(out, 0, TS);
        builder.append(TS, None, Some(&value[..value_len]), &[]);
        builder.finish()
    };
    // The record's varint lengths grow with the value, so step towards the
    // target and settle on the largest batch not above it.
    let mut value_len = target - 80;
    for _ in 0..16 {
        let len = build(value_len, &mut out);
        if len == target {
            break;
        }
        value_len = (value_len + target).saturating_sub(len);
    }
    while build(value_len, &mut out) > target {
        value_len -= 1;
    }
    RecordBatchView::parse_verified(&out)?;
    Ok(out)
}

/// State shared by the tasks of one run (single-threaded).
#[derive(Debug)]
struct Run {
    measuring: Cell<bool>,
    stop: Cell<bool>,
    warm_at: Cell<Option<Instant>>,
    stop_at: Cell<Option<Instant>>,
    target_ops: Option<u64>,
    /// Operations completed since the start (warm-up included).
    total_ops: Cell<u64>,
    /// Operations completed inside the measured window.
    measured_ops: Cell<u64>,
    latency_us: RefCell<Histogram<u64>>,
    /// From just before the append to its return (buffer-space waits
    /// included), for the same operations as `latency_us`.
    append_us: RefCell<Histogram<u64>>,
    stats_at_warm: RefCell<Option<StatsSnapshot>>,
    stats_at_stop: RefCell<Option<StatsSnapshot>>,
}

impl Run {
    fn close_window(&self, log: &ShardLog, at: Instant) {
        if self.stop.replace(true) {
            return;
        }
        self.stop_at.set(Some(at));
        *self.stats_at_stop.borrow_mut() = Some(log.stats());
    }
}

async fn appender(
    log: ShardLog,
    run: Rc<Run>,
    id: PartitionId,
    order: Rc<Semaphore>,
    payload: Rc<Vec<u8>>,
) -> Result<(), BoxError> {
    while !run.stop.get() {
        let started = Instant::now();
        {
            let _permit = order
                .acquire_permit(1)
                .await
                .map_err(|e| format!("partition {id}: ordering permit: {e}"))?;
            let index = log.last_index(id)? + 1;
            log.append(
                id,
                &[EntryRef {
                    index,
                    term: 1,
                    kind: EntryKind::Data,
                    payload: &payload,
                }],
            )
            .await?;
        }
        let appended = Instant::now();
        log.sync().await?;
        let done = Instant::now();
        run.total_ops.set(run.total_ops.get() + 1);
        if run.measuring.get() && !run.stop.get() {
            let us = done.duration_since(started).as_micros() as u64;
            run.latency_us.borrow_mut().saturating_record(us.max(1));
            let us = appended.duration_since(started).as_micros() as u64;
            run.append_us.borrow_mut().saturating_record(us.max(1));
            let n = run.measured_ops.get() + 1;
            run.measured_ops.set(n);
            if run.target_ops.is_some_and(|t| n >= t) {
                run.close_window(&log, done);
            }
        }
    }
    Ok(())
}

/// Everything a run reports.
#[derive(Debug)]
struct Results {
    batch_bytes: usize,
    record_bytes: usize,
    elapsed_s: f64,
    ops: u64,
    latency_us: Histogram<u64>,
    append_us: Histogram<u64>,
    /// Post-warm-up deltas of the storage counters.
    appends: u64,
    append_bytes: u64,
    sync_rounds: u64,
    fdatasync_calls: u64,
    write_calls: u64,
    segments_rolled: u64,
    fdatasync_latency_us: Histogram<u64>,
    write_latency_us: Histogram<u64>,
}

async fn bench(args: &Args, dir: PathBuf, payload: Vec<u8>) -> Result<Results, BoxError> {
    let mut cfg = LogConfig::new(dir);
    cfg.segment_bytes = args.segment_bytes;
    cfg.write_buffer_bytes = usize::try_from(args.write_buffer_bytes)?;
    cfg.prezero_bytes_per_sec = args.prezero_bytes_per_sec;
    cfg.sync_mode = args.sync_mode.mode();
    cfg.entry_bytes_max = cfg
        .entry_bytes_max
        .max(payload.len())
        .min((args.segment_bytes / 2) as usize);
    let (log, _) = ShardLog::open(cfg).await?;
    for id in 1..=args.partitions {
        log.create_partition(id).await?;
    }
    log.sync().await?;

    let run = Rc::new(Run {
        measuring: Cell::new(false),
        stop: Cell::new(false),
        warm_at: Cell::new(None),
        stop_at: Cell::new(None),
        target_ops: args.appends,
        total_ops: Cell::new(0),
        measured_ops: Cell::new(0),
        latency_us: RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        append_us: RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        stats_at_warm: RefCell::new(None),
        stats_at_stop: RefCell::new(None),
    });
    let payload = Rc::new(payload);
    let started = Instant::now();

    let mut tasks = Vec::new();
    for id in 1..=args.partitions {
        let order = Rc::new(Semaphore::new(1));
        for _ in 0..args.concurrency {
            tasks.push(glommio::spawn_local(appender(
                log.clone(),
                run.clone(),
                id,
                order.clone(),
                payload.clone(),
            )));
        }
    }

    // Warm-up end, then (duration mode) the end of the window.
    let timer = {
        let (log, run) = (log.clone(), run.clone());
        let warmup = Duration::from_secs_f64(args.warmup_secs);
        let window = args
            .appends
            .is_none()
            .then(|| Duration::from_secs_f64(args.duration_secs));
        glommio::spawn_local(async move {
            sleep(warmup).await;
            *run.stats_at_warm.borrow_mut() = Some(log.stats());
            run.warm_at.set(Some(Instant::now()));
            run.measuring.set(true);
            if let Some(window) = window {
                sleep(window).await;
                run.close_window(&log, Instant::now());
            }
        })
    };

    // Progress, once per second, on stderr (checked every 100 ms so the
    // run does not wait a second for it at the end).
    let progress = {
        let run = run.clone();
        glommio::spawn_local(async move {
            let mut last = 0u64;
            let mut tick = 0u64;
            let mut next = started + Duration::from_secs(1);
            while !run.stop.get() {
                sleep(Duration::from_millis(100)).await;
                if Instant::now() < next || run.stop.get() {
                    continue;
                }
                next += Duration::from_secs(1);
                tick += 1;
                let total = run.total_ops.get();
                let phase = if run.measuring.get() {
                    "measuring"
                } else {
                    "warm-up"
                };
                eprintln!(
                    "[{tick:>3} s] {:>10} appends/s  total {total:>10}  ({phase})",
                    total - last
                );
                last = total;
            }
        })
    };

    for t in tasks {
        t.await?;
    }
    timer.await;
    progress.await;
    let end = log.stats();
    log.close().await?;

    let warm_at = run.warm_at.get().unwrap_or(started);
    let stop_at = run.stop_at.get().unwrap_or_else(Instant::now);
    let warm = run.stats_at_warm.borrow_mut().take();
    let stop = run.stats_at_stop.borrow_mut().take().unwrap_or(end);
    let delta = |f: fn(&StatsSnapshot) -> u64| f(&stop) - warm.as_ref().map_or(0, f);
    let mut fdatasync_latency_us = stop.sync_latency_us.clone();
    let mut write_latency_us = stop.write_latency_us.clone();
    if let Some(w) = &warm {
        fdatasync_latency_us.subtract(&w.sync_latency_us)?;
        write_latency_us.subtract(&w.write_latency_us)?;
    }
    let latency_us = run.latency_us.borrow().clone();
    let append_us = run.append_us.borrow().clone();
    Ok(Results {
        batch_bytes: payload.len(),
        record_bytes: payload.len() + shardmq_storage::record::RECORD_HEADER_BYTES,
        elapsed_s: stop_at.duration_since(warm_at).as_secs_f64(),
        ops: run.measured_ops.get(),
        latency_us,
        append_us,
        appends: delta(|s| s.appends),
        append_bytes: delta(|s| s.append_bytes),
        sync_rounds: delta(|s| s.sync_rounds),
        fdatasync_calls: delta(|s| s.fdatasync_calls),
        write_calls: delta(|s| s.write_calls),
        segments_rolled: delta(|s| s.segments_rolled),
        fdatasync_latency_us,
        write_latency_us,
    })
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn report(args: &Args, r: &Results) -> Result<(), BoxError> {
    let secs = r.elapsed_s.max(1e-9);
    let mb_s = r.ops as f64 * r.batch_bytes as f64 / secs / 1e6;
    let ops_s = r.ops as f64 / secs;
    let h = &r.latency_us;
    let q = |p: f64| h.value_at_quantile(p);
    let rq = |p: f64| r.fdatasync_latency_us.value_at_quantile(p);
    let aq = |p: f64| r.append_us.value_at_quantile(p);
    let wq = |p: f64| r.write_latency_us.value_at_quantile(p);
    let fsync_per_round = ratio(r.fdatasync_calls, r.sync_rounds);
    let appends_per_round = ratio(r.appends, r.sync_rounds);
    let lines = [
        format!(
            "config: batch {} B (record {} B), partitions {}, concurrency {}, segment {} B, \
             write buffer {} B, sync mode {}, warm-up {} s",
            r.batch_bytes,
            r.record_bytes,
            args.partitions,
            args.concurrency,
            args.segment_bytes,
            args.write_buffer_bytes,
            args.sync_mode.name(),
            args.warmup_secs
        ),
        format!(
            "measured: {} append+sync ops in {:.3} s",
            r.ops, r.elapsed_s
        ),
        format!("throughput: {mb_s:.2} MB/s of payload (10^6 B/s), {ops_s:.0} appends/s"),
        format!(
            "latency (append..sync done, us): p50 {} p99 {} p99.9 {} max {}",
            q(0.50),
            q(0.99),
            q(0.999),
            h.max()
        ),
        format!(
            "append part (until append returned, us): p50 {} p99 {} p99.9 {} max {}",
            aq(0.50),
            aq(0.99),
            aq(0.999),
            r.append_us.max()
        ),
        format!(
            "rounds: {} sync rounds, {} fdatasync calls ({fsync_per_round:.3} per round), \
             {} write calls, {appends_per_round:.2} appends per round, {} segments rolled",
            r.sync_rounds, r.fdatasync_calls, r.write_calls, r.segments_rolled
        ),
        format!(
            "fdatasync latency (us): p50 {} p99 {} p99.9 {} max {}",
            rq(0.50),
            rq(0.99),
            rq(0.999),
            r.fdatasync_latency_us.max()
        ),
        format!(
            "write latency (us): p50 {} p99 {} p99.9 {} max {}",
            wq(0.50),
            wq(0.99),
            wq(0.999),
            r.write_latency_us.max()
        ),
    ];
    for l in &lines {
        if args.json {
            eprintln!("{l}");
        } else {
            println!("{l}");
        }
    }
    if args.json {
        let v = serde_json::json!({
            "batch_bytes": r.batch_bytes,
            "record_bytes": r.record_bytes,
            "partitions": args.partitions,
            "concurrency": args.concurrency,
            "segment_bytes": args.segment_bytes,
            "write_buffer_bytes": args.write_buffer_bytes,
            "prezero_bytes_per_sec": args.prezero_bytes_per_sec,
            "sync_mode": args.sync_mode.name(),
            "warmup_secs": args.warmup_secs,
            "elapsed_secs": r.elapsed_s,
            "ops": r.ops,
            "mb_per_sec": mb_s,
            "appends_per_sec": ops_s,
            "latency_us": {
                "p50": q(0.50),
                "p99": q(0.99),
                "p999": q(0.999),
                "max": h.max(),
                "mean": h.mean(),
            },
            "append_us": {
                "p50": aq(0.50),
                "p99": aq(0.99),
                "p999": aq(0.999),
                "max": r.append_us.max(),
                "mean": r.append_us.mean(),
            },
            "sync_rounds": r.sync_rounds,
            "fdatasync_calls": r.fdatasync_calls,
            "write_calls": r.write_calls,
            "segments_rolled": r.segments_rolled,
            "storage_appends": r.appends,
            "storage_append_bytes": r.append_bytes,
            "fdatasync_per_round": fsync_per_round,
            "appends_per_round": appends_per_round,
            "fdatasync_latency_us": {
                "p50": rq(0.50),
                "p99": rq(0.99),
                "p999": rq(0.999),
                "max": r.fdatasync_latency_us.max(),
                "mean": r.fdatasync_latency_us.mean(),
            },
            "write_latency_us": {
                "p50": wq(0.50),
                "p99": wq(0.99),
                "p999": wq(0.999),
                "max": r.write_latency_us.max(),
                "mean": r.write_latency_us.mean(),
            },
        });
        println!("{v}");
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if args.partitions == 0 || args.concurrency == 0 {
        return Err("--partitions and --concurrency must be at least 1".into());
    }
    if args.appends == Some(0) {
        return Err("--appends must be at least 1".into());
    }
    if !(args.duration_secs > 0.0 && args.warmup_secs >= 0.0) {
        return Err("--duration-secs must be positive and --warmup-secs not negative".into());
    }
    let payload = build_batch(usize::try_from(args.batch_bytes)?)?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("create {}: {e}", args.dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix("shardmq-storage-bench-")
        .tempdir_in(&args.dir)
        .map_err(|e| format!("create a work directory in {}: {e}", args.dir.display()))?;
    let log_dir = work.path().join("log");
    let executor = LocalExecutorBuilder::new(Placement::Fixed(args.cpu))
        .name("storage-bench")
        .io_memory(usize::try_from(args.io_memory_bytes)?)
        .spin_before_park(std::time::Duration::from_micros(args.spin_before_park_us))
        .make()
        .map_err(|e| format!("start the glommio executor: {e}"))?;
    let results = executor.run(bench(&args, log_dir, payload));
    // Remove the work directory whatever happened.
    let removed = work.close();
    let results = results?;
    removed?;
    report(&args, &results)
}
