//! An idle workload: the servers hold the workload's topics and nothing is
//! sent. What a partition costs at rest (heartbeats, ticks, timers) is
//! what this measures.
//!
//! 1. Create the topics and wait until every partition has a leader (the
//!    time it took is reported).
//! 2. Leave the servers alone for the warm-up.
//! 3. Over the measured period, read each server's CPU time
//!    (`/proc/PID/stat`) at its start and end, and its resident memory
//!    (`/proc/PID/statm`) every second; the harness's own CPU is measured
//!    too, to show it only waited.
//!
//! The topics are not deleted: the servers and their data directories are
//! discarded right after.

use std::time::Duration;

use tokio::time::Instant;

use crate::deploy::Deployment;
use crate::driver::{Driver, DriverError};
use crate::report::model::{IdleProcess, IdleRun};
use crate::stats;
use crate::workload::{NatsPartitions, Workload};

/// How long the topics may take to be created and led.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(900);
/// Interval of the memory samples and progress lines.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Interval of the polls for leaders after creation.
const LEADER_POLL: Duration = Duration::from_secs(1);

/// Runs the idle measurement of `workload` against `driver` on
/// `deployment`'s servers; `prefix` names the topics.
pub async fn measure(
    driver: &dyn Driver,
    deployment: &Deployment,
    workload: &Workload,
    prefix: &str,
) -> Result<IdleRun, DriverError> {
    let label = format!("{} {}", driver.name(), driver.mode());
    let topics: Vec<String> = (0..workload.topics)
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    let partitions = workload.partitions_per_topic;
    let setup_start = Instant::now();
    eprintln!(
        "== {label}: creating {} topic(s) x {partitions} partition(s)",
        topics.len()
    );
    for (i, topic) in topics.iter().enumerate() {
        driver.create_topic(topic, partitions).await?;
        eprintln!(
            "[{label} {:6.1} s] created {} of {} topic(s)",
            setup_start.elapsed().as_secs_f64(),
            i + 1,
            topics.len()
        );
    }
    let live = deployment.node_ids();
    for topic in &topics {
        loop {
            let leaders = driver.leaders(topic, partitions, &live).await?;
            let missing = leaders.iter().filter(|l| l.is_none()).count();
            if missing == 0 {
                break;
            }
            if setup_start.elapsed() >= SETUP_TIMEOUT {
                return Err(DriverError::new(
                    "harness",
                    "idle setup",
                    format!(
                        "{missing} partition(s) of {topic} still without a leader after {} s",
                        SETUP_TIMEOUT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }
    let setup_seconds = setup_start.elapsed().as_secs_f64();
    eprintln!(
        "== {label}: {} partition(s) led after {setup_seconds:.1} s; settling {:.0} s, then measuring {:.0} s",
        workload.partitions_total(),
        workload.warmup.as_secs_f64(),
        workload.duration.as_secs_f64()
    );
    tokio::time::sleep(workload.warmup).await;

    let servers = deployment.processes();
    let cpu_start: Vec<Option<f64>> = servers
        .iter()
        .map(|(_, pid)| stats::process_cpu_seconds(*pid))
        .collect();
    let own_start = stats::own_cpu_seconds();
    let start = Instant::now();
    let end = start + workload.duration;
    let mut rss_max = vec![0u64; servers.len()];
    let mut next = start;
    loop {
        for (i, (_, pid)) in servers.iter().enumerate() {
            if let Some(rss) = stats::process_rss_bytes(*pid) {
                rss_max[i] = rss_max[i].max(rss);
            }
        }
        next += SAMPLE_INTERVAL;
        if next >= end {
            tokio::time::sleep_until(end).await;
            break;
        }
        tokio::time::sleep_until(next).await;
        let elapsed = start.elapsed().as_secs_f64();
        if (elapsed as u64) % 10 == 0 {
            eprintln!("[{label} {elapsed:5.1} s measured] idle");
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let percent = |cpu: f64| 100.0 * cpu / seconds.max(1e-9);
    let mut processes = Vec::new();
    for (i, (name, pid)) in servers.iter().enumerate() {
        let after = stats::process_cpu_seconds(*pid);
        let rss_end = stats::process_rss_bytes(*pid).unwrap_or(0);
        let cpu = match (cpu_start[i], after) {
            (Some(before), Some(after)) => after - before,
            _ => {
                return Err(DriverError::new(
                    "harness",
                    "idle measurement",
                    format!("{name} (pid {pid}) exited during the measurement"),
                ))
            }
        };
        processes.push(IdleProcess {
            name: name.clone(),
            cpu_percent_of_core: percent(cpu),
            cpu_seconds: cpu,
            rss_bytes_end: rss_end,
            rss_bytes_max: rss_max[i].max(rss_end),
        });
    }
    let harness = match (own_start, stats::own_cpu_seconds()) {
        (Some(before), Some(after)) => percent(after - before),
        _ => 0.0,
    };
    for p in &processes {
        eprintln!(
            "{label}: {}: {:.2}% of a core, RSS {:.1} MiB",
            p.name,
            p.cpu_percent_of_core,
            p.rss_bytes_end as f64 / (1 << 20) as f64
        );
    }
    let raft_groups = if driver.name() == "nats-jetstream" {
        match workload.nats_partitions {
            NatsPartitions::Subjects => u64::from(workload.topics),
            NatsPartitions::Streams => workload.partitions_total(),
        }
    } else {
        workload.partitions_total()
    };
    Ok(IdleRun {
        driver: driver.name().to_owned(),
        mode: driver.mode(),
        replication_factor: driver.replication_factor(),
        partitions: workload.partitions_total(),
        raft_groups,
        setup_seconds,
        settle_seconds: workload.warmup.as_secs_f64(),
        seconds,
        processes,
        harness_cpu_percent_of_core: harness,
        config: driver.config(),
    })
}
