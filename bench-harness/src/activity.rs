//! What the servers and the harness did in each second of a measured
//! period: the figures a latency spike is set beside to name its cause.
//!
//! Per process, from `/proc`: CPU seconds (a busy or starved server) and
//! run-queue wait summed over its threads (runnable but not running: the
//! machine's cores were taken, "scheduling"). Per server with a metrics
//! endpoint (shardmq brokers), from one scrape a second: its sync rounds,
//! segment writes and produce latency, how many were slow and the highest
//! bucket reached (fsync stalls), the segments its log rolled (sealed to
//! start a new one) and the segments its collector deleted (retention).
//!
//! The sampler is a task of its own: the send and acknowledgement paths
//! never wait for it. A scrape that fails or times out records nothing for
//! that server in that second and the next (each figure is the difference
//! of two consecutive readings); it never fails the run.

use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::prometheus::{self, Scrape};
use crate::report::model::{ActivitySecond, ProcessActivity, ServerSecond};
use crate::stats;

/// Interval of the samples.
pub const ACTIVITY_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for one server's `/metrics`.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);
/// A sync round, write or produce above this many µs counts as slow. A
/// bound of the broker's latency buckets (…, 2.5 ms, 5 ms, 10 ms, …): the
/// largest at or below 8 ms, so every round of 8 ms or more is counted.
pub const SLOW_US: u64 = 5_000;

/// The broker's histogram of its shard logs' sync rounds.
pub const FSYNC_FAMILY: &str = "shardmq_storage_fsync_latency_seconds";
/// The broker's histogram of its shard logs' segment writes.
pub const WRITE_FAMILY: &str = "shardmq_storage_write_latency_seconds";
/// The broker's histogram of produce latency per partition item.
pub const PRODUCE_FAMILY: &str = "shardmq_produce_latency_seconds";
/// The broker's counter of segment files its collector deleted.
pub const SEGMENTS_DELETED: &str = "shardmq_storage_segments_deleted_total";
/// The broker's counter of segments its shard logs sealed to start new ones.
pub const SEGMENTS_ROLLED: &str = "shardmq_storage_segments_rolled_total";

/// Name of the harness in the samples.
pub const HARNESS_NAME: &str = "shardmq-bench";

/// A process to sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its name in reports.
    pub name: String,
    pub pid: u32,
    /// Port of its Prometheus endpoint on 127.0.0.1, when it has one.
    pub metrics_port: Option<u16>,
}

/// The processes of a run: each server (with its metrics port when
/// `metrics` names one for it) and the harness.
pub fn targets(servers: &[(String, u32)], metrics: &[(String, u16)]) -> Vec<Target> {
    let mut targets: Vec<Target> = servers
        .iter()
        .map(|(name, pid)| Target {
            name: name.clone(),
            pid: *pid,
            metrics_port: metrics.iter().find(|(n, _)| n == name).map(|(_, p)| *p),
        })
        .collect();
    targets.push(Target {
        name: HARNESS_NAME.to_owned(),
        pid: std::process::id(),
        metrics_port: None,
    });
    targets
}

/// One process's cumulative figures at one instant.
#[derive(Debug, Clone, Default)]
struct Reading {
    cpu_seconds: Option<f64>,
    runqueue_wait_ns: Option<u64>,
    scrape: Option<Scrape>,
}

/// Samples `targets` every [`ACTIVITY_INTERVAL`] from `from` to `to`;
/// one entry per interval, the last one possibly shorter.
pub async fn sample(targets: Vec<Target>, from: Instant, to: Instant) -> Vec<ActivitySecond> {
    tokio::time::sleep_until(from).await;
    let mut last = read_all(&targets).await;
    let mut seconds = Vec::new();
    let mut next = from;
    while next < to {
        next = (next + ACTIVITY_INTERVAL).min(to);
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        let reading = read_all(&targets).await;
        let processes = targets
            .iter()
            .zip(last.iter().zip(&reading))
            .filter_map(|(target, (before, after))| activity(&target.name, before, after))
            .collect();
        seconds.push(ActivitySecond {
            t: now.saturating_duration_since(from).as_secs_f64(),
            processes,
        });
        last = reading;
    }
    seconds
}

/// Reads every target: `/proc` first, all at about the same instant, then
/// the scrapes, concurrently.
async fn read_all(targets: &[Target]) -> Vec<Reading> {
    let mut readings: Vec<Reading> = targets
        .iter()
        .map(|t| Reading {
            cpu_seconds: stats::process_cpu_seconds(t.pid),
            runqueue_wait_ns: stats::process_runqueue_wait_ns(t.pid),
            scrape: None,
        })
        .collect();
    let scrapes = join_all(targets.iter().map(|t| async move {
        let port = t.metrics_port?;
        let body = prometheus::fetch_metrics(port, SCRAPE_TIMEOUT).await?;
        Some(prometheus::parse(
            &body,
            &[FSYNC_FAMILY, WRITE_FAMILY, PRODUCE_FAMILY],
            &[SEGMENTS_DELETED, SEGMENTS_ROLLED],
        ))
    }))
    .await;
    for (reading, scrape) in readings.iter_mut().zip(scrapes) {
        reading.scrape = scrape;
    }
    readings
}

/// What a process did between two readings; `None` when its CPU time
/// could not be read at both.
fn activity(name: &str, before: &Reading, after: &Reading) -> Option<ProcessActivity> {
    let cpu_seconds = (after.cpu_seconds? - before.cpu_seconds?).max(0.0);
    let runqueue_wait_ms = match (before.runqueue_wait_ns, after.runqueue_wait_ns) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / 1e6),
        _ => None,
    };
    let metrics = match (&before.scrape, &after.scrape) {
        (Some(b), Some(a)) => server_second(b, a),
        _ => None,
    };
    Some(ProcessActivity {
        name: name.to_owned(),
        cpu_seconds,
        runqueue_wait_ms,
        metrics,
    })
}

/// A server's histograms and counters between two scrapes; `None` when
/// either lacks one of the histogram families (not a shardmq broker, or
/// one that renders them differently).
pub fn server_second(before: &Scrape, after: &Scrape) -> Option<ServerSecond> {
    let delta = |family: &str| {
        Some(
            after
                .histograms
                .get(family)?
                .since(before.histograms.get(family)?, SLOW_US),
        )
    };
    let counted = |name: &str| {
        let value = |s: &Scrape| s.values.get(name).copied().unwrap_or(0.0);
        (value(after) - value(before)).max(0.0) as u64
    };
    Some(ServerSecond {
        fsync: delta(FSYNC_FAMILY)?,
        write: delta(WRITE_FAMILY)?,
        produce: delta(PRODUCE_FAMILY)?,
        segments_deleted: counted(SEGMENTS_DELETED),
        segments_rolled: counted(SEGMENTS_ROLLED),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(fsync: [u64; 3], deleted: u64, rolled: u64) -> Scrape {
        let mut text = String::new();
        for family in [FSYNC_FAMILY, WRITE_FAMILY, PRODUCE_FAMILY] {
            for (le, count) in ["0.005", "0.01", "+Inf"].iter().zip(fsync) {
                text += &format!("{family}_bucket{{node=\"1\",shard=\"0\",le=\"{le}\"}} {count}\n");
            }
        }
        text += &format!("{SEGMENTS_DELETED}{{node=\"1\",shard=\"0\"}} {deleted}\n");
        text += &format!("{SEGMENTS_ROLLED}{{node=\"1\",shard=\"0\"}} {rolled}\n");
        prometheus::parse(
            &text,
            &[FSYNC_FAMILY, WRITE_FAMILY, PRODUCE_FAMILY],
            &[SEGMENTS_DELETED, SEGMENTS_ROLLED],
        )
    }

    #[test]
    fn a_second_of_a_server_is_the_difference_of_two_readings() {
        let before = Reading {
            cpu_seconds: Some(10.0),
            runqueue_wait_ns: Some(5_000_000),
            scrape: Some(scrape([100, 100, 100], 2, 7)),
        };
        let after = Reading {
            cpu_seconds: Some(10.75),
            runqueue_wait_ns: Some(17_500_000),
            scrape: Some(scrape([190, 198, 200], 5, 8)),
        };
        let a = activity("shardmq-broker", &before, &after).unwrap();
        assert_eq!(a.name, "shardmq-broker");
        assert!((a.cpu_seconds - 0.75).abs() < 1e-9);
        assert_eq!(a.runqueue_wait_ms, Some(12.5));
        let m = a.metrics.unwrap();
        assert_eq!(m.fsync.count, 100);
        assert_eq!(m.fsync.slow, 10);
        assert_eq!(m.fsync.max_le_us, u64::MAX);
        assert_eq!(m.segments_deleted, 3);
        assert_eq!(m.segments_rolled, 1);
    }

    #[test]
    fn missing_readings_leave_figures_out() {
        let full = Reading {
            cpu_seconds: Some(1.0),
            runqueue_wait_ns: Some(1),
            scrape: Some(scrape([1, 1, 1], 0, 0)),
        };
        let failed_scrape = Reading {
            scrape: None,
            ..full.clone()
        };
        let a = activity("b", &full, &failed_scrape).unwrap();
        assert!(a.metrics.is_none());
        assert_eq!(a.runqueue_wait_ms, Some(0.0));
        let gone = Reading::default();
        assert!(activity("b", &full, &gone).is_none());
        // A scrape without the broker's histograms gives no server figures.
        let other = Reading {
            scrape: Some(Scrape::default()),
            ..full.clone()
        };
        assert!(activity("b", &other, &full).unwrap().metrics.is_none());
    }

    #[test]
    fn targets_are_the_servers_then_the_harness() {
        let servers = vec![
            ("shardmq-broker 1".to_owned(), 11),
            ("shardmq-broker 2".to_owned(), 12),
        ];
        let metrics = vec![("shardmq-broker 2".to_owned(), 9002)];
        let t = targets(&servers, &metrics);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].metrics_port, None);
        assert_eq!(t[1].metrics_port, Some(9002));
        assert_eq!(t[2].name, HARNESS_NAME);
        assert_eq!(t[2].pid, std::process::id());
    }

    #[tokio::test]
    async fn the_harness_samples_itself() {
        let from = Instant::now();
        let seconds = sample(targets(&[], &[]), from, from + Duration::from_millis(50)).await;
        assert_eq!(seconds.len(), 1);
        let harness = &seconds[0].processes[0];
        assert_eq!(harness.name, HARNESS_NAME);
        assert!(harness.cpu_seconds >= 0.0);
        assert!(harness.metrics.is_none());
        assert!(seconds[0].t >= 0.05);
    }
}
