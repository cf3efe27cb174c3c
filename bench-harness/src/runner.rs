//! `shardmq-bench run`: a workload against shardmq and, with a peer,
//! against the peer in the same run on the same machine.
//!
//! 1. Plan the contenders, each a driver and mode on a [`System`]: without
//!    replication, shardmq at the workload's acks on one broker (or, with
//!    a peer, acks=all and acks=leader, then NATS JetStream R1); with
//!    `replicas = 3`, shardmq at the workload's acks on a 3-broker cluster,
//!    shardmq acks=all on a single broker when the workload asks for that
//!    baseline, then NATS JetStream R3 on a 3-node cluster. With
//!    `peer_max_rate_fraction` the peer goes first: its max rate, searched,
//!    sets everyone's rate.
//! 2. Run the contenders in turn, `--repeat` times, each on fresh topics.
//!    The servers of a contender are started when its turn comes and
//!    stopped when the next contender needs other ones, so only the system
//!    measured runs. A max-rate workload searches each driver's rate once,
//!    on its first repetition. Idle and failover workloads run their own
//!    measurement ([`crate::idle`], [`crate::failover`]); a failover kills a
//!    server, so its servers are never reused.
//! 3. Print the summary table, the durability of each driver and the
//!    comparison; write the report directory and update the index.
//! 4. Stop every server it started (also on error: the servers are stopped
//!    when dropped).

use std::path::{Path, PathBuf};
use std::time::Duration;

use shardmq_client::Acks;

use crate::compare::{self, BestBy};
use crate::deploy::{Binaries, Deployment, System};
use crate::driver::nats::{NatsDriver, NatsTarget};
use crate::driver::shardmq::{ShardmqDriver, ShardmqTarget};
use crate::driver::Driver;
use crate::measure::{run_once, RunOutcome, RunSpec};
use crate::procs;
use crate::report::model::{
    DriverRun, FailoverRun, IdleRun, LatencySummary, RateTrial, Report, REPORT_SCHEMA_VERSION,
};
use crate::search::{search_max_rate, RATE_MIN};
use crate::workload::{Workload, WorkloadAcks, WorkloadKind};

/// Boxed error of the run command: every failure carries its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest warm-up of one max-rate trial.
const TRIAL_WARMUP_MAX: Duration = Duration::from_secs(2);
/// Most repetitions of the whole alternation.
pub const REPEAT_MAX: u32 = 100;
/// Brokers (and nats-servers) of a replicated run.
pub const CLUSTER_SIZE: u32 = 3;
/// Shards of each broker of a cluster: three brokers share the machine.
pub const CLUSTER_SHARDS: u32 = 1;

/// A broker to compare shardmq with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// `nats-server -js`, file storage, publish with ack: one server (R1)
    /// or, with `replicas = 3`, a cluster of three (R3).
    Nats,
}

/// Everything `shardmq-bench run` was asked.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The workload file.
    pub workload: PathBuf,
    /// The broker to compare with, started by the harness.
    pub peer: Option<Peer>,
    /// An external shardmq broker; `None` starts a local one.
    pub bootstrap: Option<String>,
    /// The broker binary; default: `shardmq-broker` beside this executable.
    pub broker_bin: Option<PathBuf>,
    /// The nats-server binary; default: `nats-server` on PATH.
    pub nats_bin: Option<PathBuf>,
    /// Parent of the servers' data directories.
    pub data_dir: Option<PathBuf>,
    /// Shards of a single local broker; default: the available cores.
    pub shards: Option<u32>,
    /// Times the whole alternation runs.
    pub repeat: u32,
    /// Reports directory.
    pub out: PathBuf,
    /// Override the workload's warm-up / measured seconds.
    pub warmup: Option<f64>,
    /// See `warmup`.
    pub duration: Option<f64>,
    /// The command line, for the report.
    pub command_line: String,
}

/// Which driver a contender runs, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DriverPlan {
    Shardmq {
        acks: Acks,
        replication_factor: u32,
        show_replication: bool,
    },
    Nats {
        replicas: u32,
    },
}

/// One driver and mode in the alternation, the servers it runs on, and the
/// rate it runs at once searched.
#[derive(Debug)]
struct Contender {
    system: System,
    plan: DriverPlan,
    /// Found by the search, for later repetitions.
    searched_rate: Option<f64>,
}

/// What all runs of one command measured.
#[derive(Debug, Default)]
struct Results {
    runs: Vec<DriverRun>,
    idle: Vec<IdleRun>,
    failover: Vec<FailoverRun>,
}

/// Runs the whole command; returns the report directory.
pub async fn run(opts: RunOptions) -> Result<PathBuf, BoxError> {
    let open_files = procs::raise_open_files_limit();
    eprintln!("open-file limit of the servers started: {open_files}");
    let (mut workload, workload_toml) = Workload::load(&opts.workload)?;
    if let Some(s) = opts.warmup {
        if !(s.is_finite() && s >= 0.0) {
            return Err("--warmup must be 0 or more seconds".into());
        }
        workload.warmup = Duration::from_secs_f64(s);
    }
    if let Some(s) = opts.duration {
        if !(s.is_finite() && s > 0.0) {
            return Err("--duration must be a positive number of seconds".into());
        }
        workload.duration = Duration::from_secs_f64(s);
    }
    if !(1..=REPEAT_MAX).contains(&opts.repeat) {
        return Err(format!("--repeat must be between 1 and {REPEAT_MAX}").into());
    }
    if workload.peer_max_rate_fraction.is_some() && opts.peer.is_none() {
        return Err(
            "the workload runs at a share of the peer's max rate (peer_max_rate_fraction): \
             give it a peer (--peer nats)"
                .into(),
        );
    }
    if workload.kind != WorkloadKind::Stream && opts.bootstrap.is_some() {
        return Err(format!(
            "a {} workload measures servers the harness starts: --bootstrap cannot be used",
            workload.kind
        )
        .into());
    }
    let started_at = crate::report::now_rfc3339();
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();
    let data_parent = opts
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("TMPDIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));

    // The binaries are checked before anything runs.
    let mut bins = Binaries::default();
    if opts.bootstrap.is_none() {
        bins.broker = Some(match &opts.broker_bin {
            Some(bin) => bin.clone(),
            None => beside_self("shardmq-broker")?,
        });
    }
    if opts.peer == Some(Peer::Nats) {
        bins.nats = Some(match &opts.nats_bin {
            Some(bin) => bin.clone(),
            None => procs::find_on_path("nats-server").ok_or(
                "--peer nats: nats-server is not on PATH (apt-get install nats-server, or pass --nats-bin)",
            )?,
        });
    }

    let mut contenders = plan(&opts, &workload);
    let mut results = Results::default();
    let mut run_no = 0u32;
    // With peer_max_rate_fraction: the rate every contender runs at, once
    // the peer's max is known.
    let mut shared_rate: Option<f64> = None;
    for repetition in 1..=opts.repeat {
        let mut deployment: Option<Deployment> = None;
        for contender in &mut contenders {
            if deployment
                .as_ref()
                .is_some_and(|d| *d.system() != contender.system)
            {
                stop(deployment.take());
            }
            let d = match deployment.as_mut() {
                Some(d) => d,
                None => deployment
                    .insert(Deployment::start(&contender.system, &bins, &data_parent).await?),
            };
            d.check_running()?;
            run_no += 1;
            let driver = make_driver(contender.plan, d, &workload);
            let prefix = topic_prefix(&workload.name, run_no);
            match workload.kind {
                WorkloadKind::Stream => {
                    let run = run_contender(
                        contender,
                        driver.as_ref(),
                        d,
                        &workload,
                        repetition,
                        &prefix,
                        &mut shared_rate,
                    )
                    .await?;
                    results.runs.push(run);
                }
                WorkloadKind::Idle => {
                    let idle = crate::idle::measure(driver.as_ref(), d, &workload, &prefix).await?;
                    results.idle.push(idle);
                }
                WorkloadKind::Failover => {
                    let run =
                        crate::failover::measure(driver.as_ref(), d, &workload, &prefix).await?;
                    results.failover.push(run);
                    // A server was killed: the next contender gets fresh ones.
                    stop(deployment.take());
                }
            }
        }
        stop(deployment.take());
    }
    let Results {
        runs,
        idle,
        failover,
    } = results;

    let comparison = opts
        .peer
        .and_then(|_| compare::compare(&runs, "nats-jetstream", best_by(&workload)));

    println!();
    print_workload(&workload);
    if !runs.is_empty() {
        print!("{}", compare::summary_table(&runs));
    }
    for run in &idle {
        println!(
            "idle: {} {}: {} partition(s), {} Raft group(s), set up in {:.1} s, measured {:.1} s",
            run.driver, run.mode, run.partitions, run.raft_groups, run.setup_seconds, run.seconds
        );
        for p in &run.processes {
            println!(
                "idle:   {}: {:.2}% of a core, RSS {:.1} MiB (max {:.1} MiB)",
                p.name,
                p.cpu_percent_of_core,
                p.rss_bytes_end as f64 / (1u64 << 20) as f64,
                p.rss_bytes_max as f64 / (1u64 << 20) as f64
            );
        }
    }
    for run in &failover {
        println!(
            "failover: {} {}: killed {} (leader of {} of {} partitions); first ack on the new leader p50 {:.0} ms, max {:.0} ms ({} without one); new leader seen {}; election timeout {}",
            run.driver,
            run.mode,
            run.killed,
            run.killed_led_partitions,
            run.partitions,
            run.first_ack_p50_ms,
            run.first_ack_max_ms,
            run.unrecovered_partitions,
            if run.elected_poll_ms > 0.0 {
                format!(
                    "p50 {:.0} ms, max {:.0} ms",
                    run.elected_p50_ms, run.elected_max_ms
                )
            } else {
                "not polled".to_owned()
            },
            run.election_timeout
        );
    }
    let mut seen = Vec::new();
    let durabilities = runs
        .iter()
        .map(|r| (&r.driver, &r.mode, &r.durability))
        .chain(failover.iter().map(|r| (&r.driver, &r.mode, &r.durability)));
    for (driver, mode, durability) in durabilities {
        let key = (driver.clone(), mode.clone());
        if !seen.contains(&key) {
            println!("durability: {driver} {mode}: {durability}");
            seen.push(key);
        }
    }
    if opts.bootstrap.is_some() {
        println!("server CPU of shardmq: not measured (external broker)");
    }
    if let Some(c) = &comparison {
        println!(
            "ratio (shardmq over {}): throughput {}, publish p50 {}, p99 {}, p99.9 {}",
            compare::display_name(&c.peer),
            compare::format_ratio(c.throughput_ratio),
            compare::format_ratio(c.publish_p50_ratio),
            compare::format_ratio(c.publish_p99_ratio),
            compare::format_ratio(c.publish_p999_ratio)
        );
        println!("{}", c.headline);
    }

    let report = Report {
        schema_version: REPORT_SCHEMA_VERSION,
        workload: workload.name.clone(),
        workload_toml,
        command: opts.command_line.clone(),
        commit: git_commit(&opts.workload),
        started_at,
        load_at_start,
        machine: crate::report::detect_machine(&data_parent),
        runs,
        comparison,
        idle,
        failover,
    };
    let dir = crate::report::write_report_dir(&report, &opts.out)
        .map_err(|e| format!("cannot write the report under {}: {e}", opts.out.display()))?;
    crate::report::update_index(&opts.out, &dir, &report)
        .map_err(|e| format!("cannot update the index in {}: {e}", opts.out.display()))?;
    println!("{}", crate::report::index::headline(&report));
    println!("report: {}", dir.display());
    Ok(dir)
}

/// The contenders of `workload`, in the order they run.
fn plan(opts: &RunOptions, workload: &Workload) -> Vec<Contender> {
    let replicated = workload.replicas > 1;
    let single_shards = opts.shards.unwrap_or_else(available_cores).max(1);
    let shardmq_system = match &opts.bootstrap {
        Some(bootstrap) => System::ShardmqExternal {
            bootstrap: bootstrap.clone(),
        },
        None if replicated => System::Shardmq {
            brokers: CLUSTER_SIZE,
            shards: CLUSTER_SHARDS,
        },
        None => System::Shardmq {
            brokers: 1,
            shards: single_shards,
        },
    };
    let workload_acks = match workload.acks {
        WorkloadAcks::All => Acks::All,
        WorkloadAcks::Leader => Acks::Leader,
    };
    // Beside a peer, a single broker runs both levels (acks=leader is
    // nats-server's durability class); a cluster runs the workload's.
    let shardmq_modes: Vec<Acks> = match (opts.peer, replicated) {
        (Some(_), false) => vec![Acks::All, Acks::Leader],
        _ => vec![workload_acks],
    };
    let mut contenders: Vec<Contender> = shardmq_modes
        .into_iter()
        .map(|acks| Contender {
            system: shardmq_system.clone(),
            plan: DriverPlan::Shardmq {
                acks,
                replication_factor: workload.replicas,
                show_replication: replicated,
            },
            searched_rate: None,
        })
        .collect();
    if replicated && workload.single_broker_baseline && opts.bootstrap.is_none() {
        contenders.push(Contender {
            system: System::Shardmq {
                brokers: 1,
                shards: single_shards,
            },
            plan: DriverPlan::Shardmq {
                acks: Acks::All,
                replication_factor: 1,
                show_replication: true,
            },
            searched_rate: None,
        });
    }
    if opts.peer == Some(Peer::Nats) {
        let nats = Contender {
            system: System::Nats {
                nodes: if replicated { CLUSTER_SIZE } else { 1 },
            },
            plan: DriverPlan::Nats {
                replicas: workload.replicas,
            },
            searched_rate: None,
        };
        if workload.peer_max_rate_fraction.is_some() {
            contenders.insert(0, nats);
        } else {
            contenders.push(nats);
        }
    }
    contenders
}

fn make_driver(plan: DriverPlan, deployment: &Deployment, workload: &Workload) -> Box<dyn Driver> {
    match plan {
        DriverPlan::Shardmq {
            acks,
            replication_factor,
            show_replication,
        } => Box::new(ShardmqDriver::with_target(
            ShardmqTarget {
                bootstrap: deployment.bootstrap().to_vec(),
                replication_factor,
                show_replication,
                server_config: deployment.config().clone(),
                retry_backoff_max: workload.shardmq_retry_backoff_max,
            },
            acks,
        )),
        DriverPlan::Nats { replicas } => Box::new(NatsDriver::with_target(NatsTarget {
            urls: deployment
                .bootstrap()
                .iter()
                .map(|a| format!("nats://{a}"))
                .collect(),
            replicas,
            partitions: workload.nats_partitions,
            server_config: deployment.config().clone(),
        })),
    }
}

/// Stops a deployment's servers, saying which did not exit cleanly.
fn stop(deployment: Option<Deployment>) {
    if let Some(mut d) = deployment {
        for line in d.stop() {
            eprintln!("{line}");
        }
    }
}

fn print_workload(workload: &Workload) {
    let what = match workload.kind {
        WorkloadKind::Idle => "idle (nothing sent)".to_owned(),
        _ => format!(
            "{} B messages, {} producer(s) and {} consumer(s) per topic, rate {}",
            workload.message_size,
            workload.producers_per_topic,
            workload.consumers_per_topic,
            match (workload.producer_rate, workload.sequential) {
                (Some(r), _) => format!("{r:.0} msg/s"),
                (None, true) => "one record at a time per producer".to_owned(),
                (None, false) => match workload.peer_max_rate_fraction {
                    Some(f) => format!("{f} x the peer's max (searched)"),
                    None => "max (searched)".to_owned(),
                },
            }
        ),
    };
    println!(
        "workload {} ({}): {} topic(s) x {} partition(s), {} replica(s), {what}, warm-up {:.1} s, measured {:.1} s",
        workload.name,
        workload.kind,
        workload.topics,
        workload.partitions_per_topic,
        workload.replicas,
        workload.warmup.as_secs_f64(),
        workload.duration.as_secs_f64(),
    );
}

/// How the best run of each driver is chosen for `workload`: by publish
/// p50 when it sent one record at a time, by throughput when it searched
/// every driver's max rate, else (a fixed rate) by publish p99.
fn best_by(workload: &Workload) -> BestBy {
    if workload.sequential {
        BestBy::PublishP50
    } else if workload.producer_rate.is_some() || workload.peer_max_rate_fraction.is_some() {
        BestBy::PublishP99
    } else {
        BestBy::Throughput
    }
}

/// `shardmq-bench render DIR`: rewrites a report directory in place from its
/// `report.json` (the comparison recomputed from the runs, `report.md` and
/// the plots rendered again) and replaces its row in the index of the
/// directory above it. For reports written by an older harness.
pub fn render(dir: &Path) -> Result<PathBuf, BoxError> {
    let json_path = dir.join(crate::report::REPORT_JSON);
    let text = std::fs::read_to_string(&json_path)
        .map_err(|e| format!("cannot read {}: {e}", json_path.display()))?;
    let mut report: Report = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a report: {e}", json_path.display()))?;
    let workload = Workload::parse(&report.workload_toml, &json_path.display().to_string())?;
    if let Some(old) = &report.comparison {
        report.comparison = compare::compare(&report.runs, &old.peer, best_by(&workload));
    }
    let reports_dir = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // In place: the directory may have been renamed since it was written
    // (two reports of one workload on one day).
    crate::report::write_report_files(&report, dir)
        .map_err(|e| format!("cannot write the report in {}: {e}", dir.display()))?;
    let written = dir.to_path_buf();
    crate::report::update_index(reports_dir, &written, &report)
        .map_err(|e| format!("cannot update the index in {}: {e}", reports_dir.display()))?;
    Ok(written)
}

/// One driver's run in the alternation, searching its rate first when the
/// workload asks and it has not been searched yet. With
/// `peer_max_rate_fraction` only the peer searches (it runs first), and
/// `shared_rate` carries the share of its max to the others.
#[allow(clippy::too_many_arguments)]
async fn run_contender(
    contender: &mut Contender,
    driver: &dyn Driver,
    deployment: &Deployment,
    workload: &Workload,
    repetition: u32,
    prefix: &str,
    shared_rate: &mut Option<f64>,
) -> Result<DriverRun, BoxError> {
    let label = format!("{} {} #{repetition}", driver.name(), driver.mode());
    let servers = deployment.processes();
    let server_metrics = deployment.metrics_ports();
    let is_peer = matches!(contender.plan, DriverPlan::Nats { .. });
    let mut rate_search = Vec::new();
    let rate = if workload.sequential {
        None
    } else if let Some(rate) = workload.producer_rate {
        Some(rate)
    } else if let Some(fraction) = workload.peer_max_rate_fraction {
        if is_peer && contender.searched_rate.is_none() {
            let (max, trials) =
                search(driver, &servers, &server_metrics, workload, prefix, &label).await?;
            contender.searched_rate = Some(max);
            rate_search = trials;
            let rate = (max * fraction).max(RATE_MIN);
            eprintln!(
                "{label}: max {max:.0} msg/s; every driver runs at {fraction} x = {rate:.0} msg/s"
            );
            *shared_rate = Some(rate);
        }
        Some(shared_rate.ok_or("the peer's max rate is not known yet")?)
    } else if let Some(rate) = contender.searched_rate {
        Some(rate)
    } else {
        let (rate, trials) =
            search(driver, &servers, &server_metrics, workload, prefix, &label).await?;
        contender.searched_rate = Some(rate);
        rate_search = trials;
        Some(rate)
    };
    eprintln!(
        "== {label}: {}, warm-up {:.1} s, measured {:.1} s",
        rate.map_or("one record at a time".to_owned(), |r| format!(
            "{r:.0} msg/s"
        )),
        workload.warmup.as_secs_f64(),
        workload.duration.as_secs_f64()
    );
    let spec = RunSpec {
        rate,
        warmup: workload.warmup,
        duration: workload.duration,
        topic_prefix: prefix.to_owned(),
        servers: servers.clone(),
        server_metrics,
        sequential: workload.sequential,
        label,
    };
    let outcome = run_once(driver, workload, &spec).await?;
    Ok(driver_run(
        driver,
        deployment.server_count().max(1),
        repetition,
        rate,
        rate_search,
        outcome,
    ))
}

/// Searches the max sustainable rate of `driver`; returns the rate to run
/// at and the trials.
async fn search(
    driver: &dyn Driver,
    servers: &[(String, u32)],
    server_metrics: &[(String, u16)],
    workload: &Workload,
    prefix: &str,
    label: &str,
) -> Result<(f64, Vec<RateTrial>), BoxError> {
    let config = workload.rate_search;
    let mut trial_no = 0u32;
    let search = search_max_rate(config, |rate| {
        trial_no += 1;
        let spec = RunSpec {
            rate: Some(rate),
            warmup: workload.warmup.min(TRIAL_WARMUP_MAX),
            duration: config.trial,
            topic_prefix: format!("{prefix}-s{trial_no}"),
            servers: servers.to_vec(),
            server_metrics: server_metrics.to_vec(),
            sequential: false,
            label: format!(
                "{label} search {trial_no}/{} @ {rate:.0}/s",
                config.max_trials
            ),
        };
        async move {
            let outcome = run_once(driver, workload, &spec).await?;
            let achieved = outcome.throughput.produce_msg_per_s;
            let sustained =
                config.is_sustained(rate, achieved, outcome.errors, outcome.backlog_end);
            eprintln!(
                "{}: achieved {achieved:.0} msg/s, {}",
                spec.label,
                if sustained {
                    "sustained"
                } else {
                    "not sustained"
                }
            );
            Ok::<_, crate::driver::DriverError>(RateTrial {
                target_rate: rate,
                achieved_rate: achieved,
                sustained,
            })
        }
    })
    .await?;
    let rate = match search.result() {
        Some(rate) => rate,
        None => {
            // Nothing was sustained: run at what the driver delivered.
            let best = search
                .trials()
                .iter()
                .map(|t| t.achieved_rate)
                .fold(RATE_MIN, f64::max);
            eprintln!("{label}: no trial was sustained; measuring at {best:.0} msg/s");
            best
        }
    };
    Ok((rate, search.trials().to_vec()))
}

fn driver_run(
    driver: &dyn Driver,
    servers: u32,
    repetition: u32,
    target_rate: Option<f64>,
    rate_search: Vec<RateTrial>,
    o: RunOutcome,
) -> DriverRun {
    DriverRun {
        driver: driver.name().to_owned(),
        mode: driver.mode(),
        durability: driver.durability(),
        replication_factor: driver.replication_factor(),
        servers,
        repetition,
        config: driver.config(),
        target_rate,
        rate_search,
        throughput: o.throughput,
        publish_latency: LatencySummary::from_histogram(&o.publish),
        publish_delay: LatencySummary::from_histogram(&o.publish_delay),
        end_to_end_latency: LatencySummary::from_histogram(&o.end_to_end),
        backlog_max: o.backlog_max,
        backlog_end: o.backlog_end,
        timeline: o.timeline,
        processes: o.processes,
        errors: o.errors,
        first_error: o.first_error,
        over_time: Some(o.over_time),
    }
}

/// Topic names of one run: unique per harness process and run.
fn topic_prefix(workload: &str, run_no: u32) -> String {
    let name: String = workload
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("bench-{name}-{}-r{run_no}", std::process::id())
}

/// A binary in the same directory as this executable.
fn beside_self(name: &str) -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .map(|dir| dir.join(name))
        .ok_or("cannot locate this executable's directory")?;
    if !path.is_file() {
        return Err(format!(
            "{} not found (build it with `cargo build --release -p shardmq-engine --bin {name}`, \
             or pass --broker-bin, or --bootstrap for a running broker)",
            path.display()
        )
        .into());
    }
    Ok(path)
}

fn available_cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// `git describe --always --dirty` of the current directory's tree, else
/// of the workload file's, else "unknown".
fn git_commit(workload: &Path) -> String {
    let here = crate::report::git_commit(Path::new("."));
    if here != "unknown" {
        return here;
    }
    match workload.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => crate::report::git_commit(dir),
        None => here,
    }
}

/// The command line, each argument quoted for a POSIX shell when needed.
pub fn shell_command_line(args: impl IntoIterator<Item = String>) -> String {
    args.into_iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_quoted_for_the_shell() {
        let line = shell_command_line(
            ["shardmq-bench", "run", "--out", "my dir", "it's"].map(String::from),
        );
        assert_eq!(line, r"shardmq-bench run --out 'my dir' 'it'\''s'");
    }

    #[test]
    fn topic_prefixes_are_safe_and_distinct() {
        let a = topic_prefix("1-topic.1kb", 1);
        let b = topic_prefix("1-topic.1kb", 2);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
