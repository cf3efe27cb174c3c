//! `shardmq-bench run`: a workload against shardmq and, with a peer,
//! against the peer in the same run on the same machine.
//!
//! 1. Start what is needed: a local `shardmq-broker` (unless `--bootstrap`
//!    names one), and with `--peer nats` a local `nats-server -js`.
//! 2. Run the drivers in turn, `--repeat` times: shardmq at the workload's
//!    acks (without a peer), or shardmq acks=all, shardmq acks=leader and
//!    the peer (with one), each run on fresh topics. A max-rate workload
//!    searches each driver's rate once, on its first repetition.
//! 3. Print the summary table, the durability of each driver and the
//!    comparison; write the report directory and update the index.
//! 4. Stop every server it started (also on error: the servers are stopped
//!    when dropped).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shardmq_client::Acks;

use crate::compare::{self, BestBy};
use crate::driver::nats::NatsDriver;
use crate::driver::shardmq::ShardmqDriver;
use crate::driver::Driver;
use crate::measure::{run_once, RunOutcome, RunSpec};
use crate::procs::{self, ServerProcess};
use crate::report::model::{DriverRun, LatencySummary, RateTrial, Report, REPORT_SCHEMA_VERSION};
use crate::search::{search_max_rate, RATE_MIN};
use crate::workload::{Workload, WorkloadAcks};

/// Boxed error of the run command: every failure carries its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest warm-up of one max-rate trial.
const TRIAL_WARMUP_MAX: Duration = Duration::from_secs(2);
/// Most repetitions of the whole alternation.
pub const REPEAT_MAX: u32 = 100;

/// A broker to compare shardmq with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// `nats-server -js`, R1 file storage, publish with ack.
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
    /// Shards of the local broker; default: the available cores.
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

/// One driver and mode in the alternation, and the rate it runs at once
/// searched.
struct Contender {
    driver: Box<dyn Driver>,
    /// The server whose CPU is measured (name, pid).
    server: Option<(String, u32)>,
    /// Found by the search, for later repetitions.
    searched_rate: Option<f64>,
}

/// Runs the whole command; returns the report directory.
pub async fn run(opts: RunOptions) -> Result<PathBuf, BoxError> {
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
    let started_at = crate::report::now_rfc3339();
    let data_parent = opts
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("TMPDIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));

    // Servers first: the binaries are checked before anything runs.
    let mut shardmq_server: Option<ServerProcess> = None;
    let mut shardmq_config = BTreeMap::new();
    let bootstrap = match &opts.bootstrap {
        Some(addr) => {
            shardmq_config.insert("server".into(), format!("external broker at {addr}"));
            shardmq_config.insert(
                "server_cpu".into(),
                "not measured (the broker was not started by the harness)".into(),
            );
            addr.clone()
        }
        None => {
            let bin = match &opts.broker_bin {
                Some(bin) => bin.clone(),
                None => beside_self("shardmq-broker")?,
            };
            let shards = opts.shards.unwrap_or_else(available_cores).max(1);
            eprintln!(
                "starting {} ({shards} shards, data under {})",
                bin.display(),
                data_parent.display()
            );
            let server = procs::start_broker(&bin, shards, &data_parent).await?;
            shardmq_config.insert(
                "server".into(),
                format!("shardmq-broker started by the harness, {shards} shards, 127.0.0.1"),
            );
            shardmq_config.insert("shards".into(), shards.to_string());
            let addr = server.addr().to_owned();
            shardmq_server = Some(server);
            addr
        }
    };

    let mut nats_server: Option<ServerProcess> = None;
    let mut nats_config = BTreeMap::new();
    if opts.peer == Some(Peer::Nats) {
        let bin = match &opts.nats_bin {
            Some(bin) => bin.clone(),
            None => procs::find_on_path("nats-server").ok_or(
                "--peer nats: nats-server is not on PATH (apt-get install nats-server, or pass --nats-bin)",
            )?,
        };
        let version = procs::binary_version(&bin, "--version");
        eprintln!("starting {} ({version})", bin.display());
        let server = procs::start_nats(&bin, &data_parent).await?;
        nats_config.insert("server".into(), version);
        nats_config.insert(
            "flags".into(),
            "-js -a 127.0.0.1 -sd <fresh temporary directory>".into(),
        );
        nats_config.insert(
            "sync_interval".into(),
            "default (2 minutes in nats-server 2.9)".into(),
        );
        nats_server = Some(server);
    }

    let mut contenders = Vec::new();
    let shardmq_pid = shardmq_server
        .as_ref()
        .and_then(|s| s.pid())
        .map(|pid| ("shardmq-broker".to_owned(), pid));
    let shardmq_modes: Vec<Acks> = match (opts.peer, workload.acks) {
        (Some(_), _) => vec![Acks::All, Acks::Leader],
        (None, WorkloadAcks::All) => vec![Acks::All],
        (None, WorkloadAcks::Leader) => vec![Acks::Leader],
    };
    for acks in shardmq_modes {
        contenders.push(Contender {
            driver: Box::new(ShardmqDriver::new(&bootstrap, acks, shardmq_config.clone())),
            server: shardmq_pid.clone(),
            searched_rate: None,
        });
    }
    if let Some(server) = &nats_server {
        contenders.push(Contender {
            driver: Box::new(NatsDriver::new(
                &format!("nats://{}", server.addr()),
                nats_config.clone(),
            )),
            server: server.pid().map(|pid| ("nats-server".to_owned(), pid)),
            searched_rate: None,
        });
    }

    let mut runs = Vec::new();
    let mut run_no = 0u32;
    for repetition in 1..=opts.repeat {
        for contender in &mut contenders {
            for server in [shardmq_server.as_mut(), nats_server.as_mut()]
                .into_iter()
                .flatten()
            {
                if !server.is_running() {
                    return Err(format!(
                        "{} is no longer running; its log:\n{}",
                        server.name(),
                        server.log_tail()
                    )
                    .into());
                }
            }
            run_no += 1;
            let run = run_contender(contender, &workload, repetition, run_no).await?;
            runs.push(run);
        }
    }

    let comparison = nats_server
        .as_ref()
        .and_then(|_| compare::compare(&runs, "nats-jetstream", best_by(&workload)));

    // Stop the servers before writing, so nothing runs while the report is
    // read; their exit is part of the result.
    for server in [shardmq_server.as_mut(), nats_server.as_mut()]
        .into_iter()
        .flatten()
    {
        if let Some(status) = server.stop() {
            // nats-server exits with 1 after a SIGTERM it handled cleanly.
            let clean =
                status.success() || (server.name() == "nats-server" && status.code() == Some(1));
            if !clean {
                eprintln!("{} exited with {status}", server.name());
            }
        }
    }

    println!();
    println!(
        "workload {}: {} topic(s) x {} partition(s), {} B messages, {} producer(s) and {} consumer(s) per topic, rate {}, warm-up {:.1} s, measured {:.1} s",
        workload.name,
        workload.topics,
        workload.partitions_per_topic,
        workload.message_size,
        workload.producers_per_topic,
        workload.consumers_per_topic,
        workload
            .producer_rate
            .map_or("max (searched)".to_owned(), |r| format!("{r:.0} msg/s")),
        workload.warmup.as_secs_f64(),
        workload.duration.as_secs_f64(),
    );
    print!("{}", compare::summary_table(&runs));
    let mut seen = Vec::new();
    for run in &runs {
        let key = (run.driver.clone(), run.mode.clone());
        if !seen.contains(&key) {
            println!(
                "durability: {} {}: {}",
                run.driver, run.mode, run.durability
            );
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
        machine: crate::report::detect_machine(&data_parent),
        runs,
        comparison,
    };
    let dir = crate::report::write_report_dir(&report, &opts.out)
        .map_err(|e| format!("cannot write the report under {}: {e}", opts.out.display()))?;
    crate::report::update_index(&opts.out, &dir, &report)
        .map_err(|e| format!("cannot update the index in {}: {e}", opts.out.display()))?;
    println!("report: {}", dir.display());
    Ok(dir)
}

/// How the best run of each driver is chosen for `workload`: by
/// throughput when it searched the max rate, else by publish p99.
fn best_by(workload: &Workload) -> BestBy {
    if workload.producer_rate.is_some() {
        BestBy::PublishP99
    } else {
        BestBy::Throughput
    }
}

/// `shardmq-bench render DIR`: rewrites a report directory from its
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
    let written = crate::report::write_report_dir(&report, reports_dir).map_err(|e| {
        format!(
            "cannot write the report under {}: {e}",
            reports_dir.display()
        )
    })?;
    crate::report::update_index(reports_dir, &written, &report)
        .map_err(|e| format!("cannot update the index in {}: {e}", reports_dir.display()))?;
    Ok(written)
}

/// One driver's run in the alternation, searching its rate first when the
/// workload asks and it has not been searched yet.
async fn run_contender(
    contender: &mut Contender,
    workload: &Workload,
    repetition: u32,
    run_no: u32,
) -> Result<DriverRun, BoxError> {
    let driver = contender.driver.as_ref();
    let label = format!("{} {} #{repetition}", driver.name(), driver.mode());
    let prefix = topic_prefix(&workload.name, run_no);
    let mut rate_search = Vec::new();
    let rate = match (workload.producer_rate, contender.searched_rate) {
        (Some(rate), _) => rate,
        (None, Some(rate)) => rate,
        (None, None) => {
            let (rate, trials) =
                search(driver, contender.server.clone(), workload, &prefix, &label).await?;
            contender.searched_rate = Some(rate);
            rate_search = trials;
            rate
        }
    };
    eprintln!(
        "== {label}: {rate:.0} msg/s, warm-up {:.1} s, measured {:.1} s",
        workload.warmup.as_secs_f64(),
        workload.duration.as_secs_f64()
    );
    let spec = RunSpec {
        rate: Some(rate),
        warmup: workload.warmup,
        duration: workload.duration,
        topic_prefix: prefix,
        server: contender.server.clone(),
        label,
    };
    let outcome = run_once(driver, workload, &spec).await?;
    Ok(driver_run(
        driver,
        repetition,
        Some(rate),
        rate_search,
        outcome,
    ))
}

/// Searches the max sustainable rate of `driver`; returns the rate to run
/// at and the trials.
async fn search(
    driver: &dyn Driver,
    server: Option<(String, u32)>,
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
            server: server.clone(),
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
    repetition: u32,
    target_rate: Option<f64>,
    rate_search: Vec<RateTrial>,
    o: RunOutcome,
) -> DriverRun {
    DriverRun {
        driver: driver.name().to_owned(),
        mode: driver.mode(),
        durability: driver.durability(),
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
