//! `shardmq-bench`: the whole-system benchmark.
//!
//! * `run`: an OpenMessaging-Benchmark-style workload file against shardmq
//!   (a local broker it starts, a 3-broker cluster with `replicas = 3`, or
//!   `--bootstrap`) and, with `--peer nats`, against a local `nats-server
//!   -js` (a 3-node cluster with `replicas = 3`) in the same run; prints a
//!   summary table and the ratio, and writes
//!   `perf-reports/<date>-<workload>/`. Idle workloads measure the servers
//!   at rest, failover workloads a SIGKILL of the busiest leader.
//! * `produce`: K producers send fixed-size records round-robin over the
//!   topic's partitions and record the publish latency (enqueue to ack).
//! * `consume`: one consumer reads every partition from the earliest offset
//!   and records the end-to-end latency (now minus the timestamp in the
//!   record's value).
//! * `e2e`: both at once.
//!
//! Every record's value starts with its intended send time (u64
//! big-endian, ns since the UNIX epoch), then padding up to the size. At a
//! fixed rate each send is scheduled at its intended time and latencies are
//! measured from that time, so a stalled broker is charged for the sends it
//! delayed (no coordinated omission).

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use shardmq_bench_harness::payload::{epoch_ns, read_timestamp, PayloadMaker};
use shardmq_bench_harness::runner::{self, Peer, RunOptions};
use shardmq_bench_harness::schedule::Schedule;
use shardmq_bench_harness::stats;
use shardmq_bench_harness::stats::new_histogram;
use shardmq_bench_harness::workload::KeyDistribution;
use shardmq_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, ErrorCode, Partitioner, Producer,
    ProducerConfig, ProducerRecord, SeekTo,
};
use tokio::sync::mpsc;

/// mimalloc: the load generator allocates per record (deliveries, futures),
/// and the system allocator's costs there would be charged to the broker
/// under test as lost throughput.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn Error + Send + Sync>;

/// How long the e2e consumer keeps reading after the producers finished.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
struct RenderArgs {
    /// Report directories (each holding a report.json)
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Only produce, measuring publish latency.
    Produce,
    /// Only consume, measuring end-to-end latency from the value's timestamp.
    Consume,
    /// Produce and consume at once.
    E2e,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AcksArg {
    /// A majority of the partition's replicas has the batch.
    All,
    /// The leader appended the batch.
    Leader,
    /// No acknowledgement: a record counts as sent once written to the socket.
    None,
}

impl From<AcksArg> for Acks {
    fn from(acks: AcksArg) -> Self {
        match acks {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
            AcksArg::None => Acks::None,
        }
    }
}

/// The whole-system benchmark of shardmq.
#[derive(Debug, Parser)]
#[command(name = "shardmq-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a workload file against shardmq (and a peer) and write a report.
    ///
    /// By default against a shardmq-broker the harness starts (the binary
    /// beside this one, a temporary data directory, ports on 127.0.0.1);
    /// with --peer nats also against a nats-server -js it starts,
    /// alternating shardmq acks=all, shardmq acks=leader and NATS
    /// JetStream, each on fresh topics. A workload with replicas = 3 runs
    /// shardmq on a 3-broker cluster (one shard each, static peers, topics
    /// of replication factor 3, the workload's acks) and NATS on a 3-node
    /// JetStream cluster (streams of 3 replicas); each side's servers run
    /// only for its own runs. kind = "idle" creates the topics, sends
    /// nothing and measures each server's CPU and memory; kind =
    /// "failover" kills the busiest leader while producing and measures
    /// each of its partitions' time to a new leader's acknowledgement. Fixed-rate producers send each
    /// record at its intended time and latency is measured from that time.
    /// A workload with producer_rate = 0 first searches each driver's max
    /// sustainable rate (short trials, doubling then bisecting). Prints a
    /// stats line every few seconds on stderr, then the summary table, each
    /// driver's durability and the ratio on stdout, and writes
    /// <OUT>/<date>-<workload>/ (report.md, report.json, SVG plots) and
    /// the index <OUT>/README.md. Ctrl-C stops the servers it started.
    Run(RunArgs),
    /// Render report directories again from their report.json.
    ///
    /// Recomputes each comparison from the runs, rewrites report.md and the
    /// SVG plots, and replaces the report's row in the README.md index of
    /// the directory above it. Measures nothing.
    Render(RenderArgs),
    /// Only produce to a running broker, measuring publish latency.
    Produce(LoadArgs),
    /// Only consume from a running broker, measuring end-to-end latency.
    Consume(LoadArgs),
    /// Produce and consume at once against a running broker.
    E2e(LoadArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PeerArg {
    /// NATS JetStream: the harness starts `nats-server -js` itself.
    Nats,
}

/// Options of `run`.
#[derive(Debug, Args)]
struct RunArgs {
    /// Workload file (TOML; see bench-harness/workloads/).
    #[arg(long, value_name = "FILE")]
    workload: PathBuf,
    /// Also run the workload against this peer, started by the harness.
    #[arg(long, value_enum)]
    peer: Option<PeerArg>,
    /// Use this running shardmq broker instead of starting one (its CPU is
    /// then not measured).
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Option<String>,
    /// The shardmq-broker binary [default: beside this executable].
    #[arg(long, value_name = "PATH")]
    broker_bin: Option<PathBuf>,
    /// The nats-server binary [default: nats-server on PATH].
    #[arg(long, value_name = "PATH")]
    nats_bin: Option<PathBuf>,
    /// Directory under which the servers' temporary data directories are
    /// made (put it on the disk to measure) [default: $TMPDIR or /var/tmp].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Shards of the broker the harness starts [default: available cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    shards: Option<u32>,
    /// Run the whole alternation this many times.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// Directory the report directory is written into.
    #[arg(long, value_name = "DIR", default_value = "perf-reports")]
    out: PathBuf,
    /// Override the workload's warm-up, in seconds.
    #[arg(long, value_name = "S")]
    warmup: Option<f64>,
    /// Override the workload's measured duration, in seconds.
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// Keep the servers' log files (beside their data directories, which
    /// are removed) and say where they are.
    #[arg(long)]
    keep_logs: bool,
}

/// Load against a running broker.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("amount").required(true).args(["messages", "duration"])))]
struct LoadArgs {
    /// Brokers to bootstrap from, HOST:PORT, comma-separated (any one
    /// that answers will do).
    #[arg(long, value_name = "HOST:PORT,...")]
    bootstrap: String,
    /// Topic to use; created with `--partitions` and
    /// `--replication-factor` when missing.
    #[arg(long)]
    topic: String,
    /// Replicas of each partition when the topic is created.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i16).range(1..))]
    replication_factor: i16,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,
    /// Size of each record's value in bytes (at least 8, for the timestamp).
    #[arg(long, value_name = "BYTES", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(8..))]
    size: u64,
    /// Total number of messages to produce and/or consume.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    messages: Option<u64>,
    /// Run for this many seconds instead of a fixed number of messages.
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// Target send rate in messages per second over all producers
    /// (open loop; latency measured from each send's intended time).
    /// Without it, producers send as fast as the producer queues accept.
    #[arg(long, value_name = "MSG_PER_S")]
    rate: Option<f64>,
    /// Number of concurrent producers (each with its own connections).
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    producers: u64,
    /// Acknowledgement level of produce requests.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    acks: AcksArg,
    /// How long a producer batch waits for more records, in milliseconds
    /// (the SDK's `linger`).
    #[arg(long, value_name = "MS", default_value_t = 5)]
    linger_ms: u64,
    /// Each producer sends its next record only once the previous one is
    /// acknowledged (one record in flight per producer): the latency of a
    /// lone record, not of a stream.
    #[arg(long)]
    sequential: bool,
    /// Also report the CPU time this process (the broker) spent during the
    /// run, and CPU seconds per GB produced, beside the bench's own.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
}

/// When to stop.
#[derive(Debug, Clone, Copy)]
enum Amount {
    Messages(u64),
    Duration(Duration),
}

#[derive(Debug, Default)]
struct Counters {
    /// Records acknowledged (or written, with acks none).
    acked: AtomicU64,
    /// Records that failed to enqueue or to be acknowledged.
    failed: AtomicU64,
    /// Records consumed.
    consumed: AtomicU64,
    /// Set once every producer finished and every delivery resolved.
    producers_done: AtomicBool,
    /// First error seen by a producer, reported at the end.
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn fail(&self, error: impl std::fmt::Display) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(error.to_string());
        }
    }
}

#[derive(Debug)]
struct Summary {
    messages: u64,
    elapsed: Duration,
    /// Value bytes of those messages.
    bytes: u64,
}

impl Summary {
    fn print(&self, what: &str) {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let rate = self.messages as f64 / secs;
        let mbps = self.bytes as f64 / secs / 1e6;
        println!(
            "{what}: messages {}, elapsed {:.3} s, {:.0} msg/s, {:.2} MB/s",
            self.messages, secs, rate, mbps
        );
    }
}

fn print_latency(what: &str, h: &Histogram<u64>) {
    if h.is_empty() {
        println!("{what} latency (us): no samples");
        return;
    }
    println!(
        "{what} latency (us): p50 {} p99 {} p99.9 {} p99.99 {} max {} (samples {})",
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.value_at_quantile(0.9999),
        h.max(),
        h.len()
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run_workload(args).await,
        Cmd::Render(args) => args.dirs.iter().try_for_each(|dir| {
            let written = runner::render(dir)?;
            println!("rendered {}", written.display());
            Ok(())
        }),
        Cmd::Produce(args) => load(Mode::Produce, args).await,
        Cmd::Consume(args) => load(Mode::Consume, args).await,
        Cmd::E2e(args) => load(Mode::E2e, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardmq-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `run`: the workload against shardmq (and the peer); stops on Ctrl-C or
/// SIGTERM, stopping the servers it started.
async fn run_workload(args: RunArgs) -> Result<(), BoxError> {
    if args.keep_logs {
        shardmq_bench_harness::procs::keep_logs();
    }
    let options = RunOptions {
        workload: args.workload,
        peer: args.peer.map(|PeerArg::Nats| Peer::Nats),
        bootstrap: args.bootstrap,
        broker_bin: args.broker_bin,
        nats_bin: args.nats_bin,
        data_dir: args.data_dir,
        shards: args.shards,
        repeat: args.repeat,
        out: args.out,
        warmup: args.warmup,
        duration: args.duration,
        command_line: runner::shell_command_line(std::env::args()),
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Dropping the run's future on a signal drops its servers, which stops
    // them.
    tokio::select! {
        result = runner::run(options) => result.map(|_| ()),
        _ = tokio::signal::ctrl_c() => Err("interrupted (Ctrl-C); stopped the servers it started".into()),
        _ = terminate.recv() => Err("terminated (SIGTERM); stopped the servers it started".into()),
    }
}

async fn load(mode: Mode, args: LoadArgs) -> Result<(), BoxError> {
    let amount = match (args.messages, args.duration) {
        (Some(n), _) => Amount::Messages(n),
        (None, Some(s)) if s.is_finite() && s > 0.0 => Amount::Duration(Duration::from_secs_f64(s)),
        _ => return Err("--duration must be a positive number of seconds".into()),
    };
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err("--rate must be a positive number".into());
        }
    }
    let client = ClientConfig::new(
        args.bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned),
    );

    let admin = Admin::connect(client.clone()).await?;
    match admin
        .create_topic(&args.topic, args.partitions, args.replication_factor)
        .await
    {
        Ok(()) => eprintln!(
            "created topic {} with {} partitions",
            args.topic, args.partitions
        ),
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {
            eprintln!("topic {} already exists", args.topic)
        }
        Err(e) => return Err(e.into()),
    }

    let counters = Arc::new(Counters::default());
    let run_start = Instant::now();
    let cpu_before = (
        stats::own_cpu_seconds(),
        args.server_pid.and_then(stats::process_cpu_seconds),
    );
    let progress = tokio::spawn(progress(mode, Arc::clone(&counters), run_start));

    let produce = matches!(mode, Mode::Produce | Mode::E2e);
    let consume = matches!(mode, Mode::Consume | Mode::E2e);

    let consumer_task = consume.then(|| {
        tokio::spawn(consume_all(
            client.clone(),
            args.topic.clone(),
            amount,
            mode == Mode::E2e,
            Arc::clone(&counters),
        ))
    });
    let produced = if produce {
        Some(produce_all(&args, client, amount, Arc::clone(&counters)).await?)
    } else {
        None
    };
    counters.producers_done.store(true, Ordering::Release);
    let consumed = match consumer_task {
        Some(task) => Some(task.await??),
        None => None,
    };
    progress.abort();

    if let Some((summary, hist)) = &produced {
        summary.print("produce");
        let failed = counters.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = counters
                .first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            println!("produce: {failed} records failed (first error: {first})");
        }
        print_latency("publish", hist);
    }
    if let Some((summary, hist)) = &consumed {
        summary.print("consume");
        print_latency("e2e", hist);
    }
    // CPU per GB of values produced (or consumed, for consume alone).
    let gb = produced
        .as_ref()
        .or(consumed.as_ref())
        .map_or(0.0, |(summary, _)| summary.bytes as f64 / 1e9);
    let spent = |before: Option<f64>, now: Option<f64>| before.zip(now).map(|(b, n)| n - b);
    let mut line = String::from("cpu");
    if let Some(bench) = spent(cpu_before.0, stats::own_cpu_seconds()) {
        line += &format!(" bench {bench:.2} s ({:.2} s/GB)", bench / gb.max(1e-9));
    }
    if let Some(pid) = args.server_pid {
        match spent(cpu_before.1, stats::process_cpu_seconds(pid)) {
            Some(server) => {
                line += &format!(" server {server:.2} s ({:.2} s/GB)", server / gb.max(1e-9));
            }
            None => line += &format!(" server: pid {pid} not readable"),
        }
    }
    println!("{line}");
    Ok(())
}

/// Prints a progress line on stderr every second.
async fn progress(mode: Mode, counters: Arc<Counters>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_acked, mut last_consumed) = (0u64, 0u64);
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64().max(1e-9);
        let total = now.duration_since(start).as_secs_f64().max(1e-9);
        let acked = counters.acked.load(Ordering::Relaxed);
        let consumed = counters.consumed.load(Ordering::Relaxed);
        let mut line = format!("[{total:6.1} s]");
        if mode != Mode::Consume {
            line += &format!(
                " produced {acked} ({:.0} msg/s now, {:.0} msg/s avg)",
                (acked - last_acked) as f64 / dt,
                acked as f64 / total
            );
            let failed = counters.failed.load(Ordering::Relaxed);
            if failed > 0 {
                line += &format!(" failed {failed}");
            }
        }
        if mode != Mode::Produce {
            line += &format!(
                " consumed {consumed} ({:.0} msg/s now, {:.0} msg/s avg)",
                (consumed - last_consumed) as f64 / dt,
                consumed as f64 / total
            );
        }
        eprintln!("{line}");
        (last_acked, last_consumed, last) = (acked, consumed, now);
    }
}

/// Runs the producers; returns the summary of acknowledged records and the
/// publish latency histogram (µs).
async fn produce_all(
    args: &LoadArgs,
    client: ClientConfig,
    amount: Amount,
    counters: Arc<Counters>,
) -> Result<(Summary, Histogram<u64>), BoxError> {
    let config = ProducerConfig {
        acks: args.acks.into(),
        partitioner: Partitioner::RoundRobin,
        linger: Duration::from_millis(args.linger_ms),
        ..ProducerConfig::default()
    };
    let k = args.producers;
    let mut producers = Vec::with_capacity(k as usize);
    for _ in 0..k {
        let producer = Producer::connect(client.clone(), config.clone()).await?;
        // Load the topic's metadata before the clock starts.
        producer.client().topic(&args.topic).await?;
        producers.push(producer);
    }

    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<u64>();
    let collector = tokio::spawn(async move {
        let mut hist = new_histogram();
        while let Some(us) = lat_rx.recv().await {
            hist.saturating_record(us);
        }
        hist
    });

    // One clock for all producers: `start` and the wall time at `start`.
    let start = Instant::now();
    let start_epoch_ns = epoch_ns();
    let last_ack_ns = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(k as usize);
    for (i, producer) in producers.into_iter().enumerate() {
        let i = i as u64;
        let share = match amount {
            Amount::Messages(n) => Some(n / k + u64::from(i < n % k)),
            Amount::Duration(_) => None,
        };
        let deadline = match amount {
            Amount::Duration(d) => Some(start + d),
            Amount::Messages(_) => None,
        };
        let job = ProducerJob {
            producer,
            topic: args.topic.clone(),
            values: PayloadMaker::new(args.size as usize, 0.0, KeyDistribution::None, i + 1),
            sequential: args.sequential,
            // Producer i sends the global sequence numbers i, i+k, i+2k, ...
            // and sequence number s is due at start + s / rate.
            schedule: args.rate.map(|rate| Schedule::new(rate, i, k)),
            share,
            deadline,
            start,
            start_epoch_ns,
            lat_tx: lat_tx.clone(),
            counters: Arc::clone(&counters),
            last_ack_ns: Arc::clone(&last_ack_ns),
        };
        tasks.push(tokio::spawn(job.run()));
    }
    drop(lat_tx);
    for task in tasks {
        task.await?;
    }
    // Every delivery task holds a sender: this ends once all resolved.
    let hist = collector.await?;
    let elapsed = Duration::from_nanos(last_ack_ns.load(Ordering::Acquire));
    let messages = counters.acked.load(Ordering::Acquire);
    let summary = Summary {
        messages,
        elapsed,
        bytes: messages * args.size,
    };
    Ok((summary, hist))
}

#[derive(Debug)]
struct ProducerJob {
    producer: Producer,
    topic: String,
    values: PayloadMaker,
    sequential: bool,
    /// When each send is due (open loop), or `None` (closed loop).
    schedule: Option<Schedule>,
    share: Option<u64>,
    deadline: Option<Instant>,
    start: Instant,
    start_epoch_ns: u64,
    lat_tx: mpsc::UnboundedSender<u64>,
    counters: Arc<Counters>,
    last_ack_ns: Arc<AtomicU64>,
}

impl ProducerJob {
    async fn run(mut self) {
        let mut sent = 0u64;
        loop {
            if self.share.is_some_and(|n| sent >= n) {
                break;
            }
            // The moment this send is due (open loop) or now (closed loop).
            let intended = match self.schedule {
                Some(schedule) => {
                    let due = self.start + schedule.due_offset(sent);
                    if self.deadline.is_some_and(|d| due >= d) {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    due
                }
                None => {
                    let now = Instant::now();
                    if self.deadline.is_some_and(|d| now >= d) {
                        break;
                    }
                    now
                }
            };
            sent += 1;
            let ts = self.start_epoch_ns + intended.duration_since(self.start).as_nanos() as u64;
            let record = ProducerRecord::new(self.topic.clone(), self.values.value(ts));
            let delivery = match self.producer.enqueue(record).await {
                Ok(delivery) => delivery,
                Err(e) => {
                    self.counters.fail(e);
                    continue;
                }
            };
            let lat_tx = self.lat_tx.clone();
            let counters = Arc::clone(&self.counters);
            let last_ack_ns = Arc::clone(&self.last_ack_ns);
            let start = self.start;
            let acked = async move {
                match delivery.await {
                    Ok(_) => {
                        let acked_at = Instant::now();
                        let us = acked_at.duration_since(intended).as_micros() as u64;
                        let _ = lat_tx.send(us);
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                        let since_start = acked_at.duration_since(start).as_nanos() as u64;
                        last_ack_ns.fetch_max(since_start, Ordering::AcqRel);
                    }
                    Err(e) => counters.fail(e),
                }
            };
            if self.sequential {
                acked.await;
            } else {
                tokio::spawn(acked);
            }
        }
        self.producer.close().await;
    }
}

/// Reads every partition from the earliest offset; returns the summary and
/// the end-to-end latency histogram (µs).
async fn consume_all(
    client: ClientConfig,
    topic: String,
    amount: Amount,
    e2e: bool,
    counters: Arc<Counters>,
) -> Result<(Summary, Histogram<u64>), BoxError> {
    let config = ConsumerConfig {
        start: SeekTo::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::connect(client, config).await?;
    consumer.assign_all(&topic).await?;
    let mut hist = new_histogram();
    let mut bytes = 0u64;
    let start = Instant::now();
    let mut last_at = start;
    let mut done_at: Option<Instant> = None;
    let mut consumed = 0u64;
    loop {
        if let Amount::Messages(n) = amount {
            if consumed >= n {
                break;
            }
        }
        let now = Instant::now();
        if e2e {
            // Stop once everything the producers got acknowledged was read.
            if counters.producers_done.load(Ordering::Acquire) {
                let done = *done_at.get_or_insert(now);
                if consumed >= counters.acked.load(Ordering::Acquire) {
                    break;
                }
                if now.duration_since(done) > DRAIN_GRACE {
                    eprintln!("gave up waiting for the last records");
                    break;
                }
            }
        } else if let Amount::Duration(d) = amount {
            if now >= start + d {
                break;
            }
        }
        let records = match consumer.poll(Duration::from_millis(200)).await {
            Ok(records) => records,
            Err(e) if e.is_retriable() => {
                eprintln!("poll: {e} (retrying)");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if records.is_empty() {
            continue;
        }
        let now_ns = epoch_ns();
        last_at = Instant::now();
        for record in &records {
            let Some(value) = record.value.as_deref() else {
                continue;
            };
            bytes += value.len() as u64;
            if let Some(ts) = read_timestamp(value) {
                hist.saturating_record(now_ns.saturating_sub(ts) / 1_000);
            }
        }
        consumed += records.len() as u64;
        counters
            .consumed
            .fetch_add(records.len() as u64, Ordering::Relaxed);
    }
    let summary = Summary {
        messages: consumed,
        elapsed: last_at.duration_since(start),
        bytes,
    };
    Ok((summary, hist))
}
