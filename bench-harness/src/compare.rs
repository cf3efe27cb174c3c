//! shardmq against its peer: the best run of each, the ratios, and the
//! summary table printed at the end of `shardmq-bench run`.
//!
//! The best run of a driver and mode is the one with the highest produce
//! throughput when the workload searched the max rate, the one with the
//! lowest publish p99 when it ran at a fixed rate (every run then has the
//! same throughput, so latency is what differs), and the one with the
//! lowest publish p50 when it sent one record at a time.
//!
//! shardmq is compared with the peer at the peer's replication factor
//! (shardmq RF1 with NATS R1, RF3 with R3). The ratios of [`Comparison`]
//! take shardmq with `acks=leader` when it ran, since that mode
//! acknowledges before fsync as nats-server does: the same durability
//! class. The headline gives `acks=all` (acknowledged after fdatasync)
//! beside it, so neither figure is read alone. With a single-broker
//! baseline in a replicated run, the replicated max is also given against a
//! third of the single broker's acks=all max.

use std::fmt::Write as _;

use crate::report::model::{Comparison, DriverRun};

/// The driver name of shardmq runs.
pub const SHARDMQ: &str = "shardmq";

/// How the best of several runs is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BestBy {
    /// Highest produce msg/s (max-rate workloads).
    Throughput,
    /// Lowest publish p99 (fixed-rate workloads).
    PublishP99,
    /// Lowest publish p50 (one record at a time).
    PublishP50,
}

/// The best of `runs` by `by`.
fn best_of<'a>(runs: impl Iterator<Item = &'a DriverRun>, by: BestBy) -> Option<&'a DriverRun> {
    runs.min_by(|a, b| match by {
        BestBy::Throughput => b
            .throughput
            .produce_msg_per_s
            .total_cmp(&a.throughput.produce_msg_per_s),
        BestBy::PublishP99 => a.publish_latency.p99.cmp(&b.publish_latency.p99),
        BestBy::PublishP50 => a.publish_latency.p50.cmp(&b.publish_latency.p50),
    })
}

/// The best run of `driver` in `mode`, if it ran.
pub fn best_run<'a>(
    runs: &'a [DriverRun],
    driver: &str,
    mode: &str,
    by: BestBy,
) -> Option<&'a DriverRun> {
    best_of(
        runs.iter().filter(|r| r.driver == driver && r.mode == mode),
        by,
    )
}

/// A ratio that stays finite (JSON has no infinity): 0 when the
/// denominator is 0.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 && a.is_finite() {
        a / b
    } else {
        0.0
    }
}

/// A ratio as `1.23x`, with a third decimal below 0.1 so a small ratio
/// does not read as zero, and one decimal from 100 up.
pub fn format_ratio(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.1}x")
    } else if x >= 0.1 || x == 0.0 {
        format!("{x:.2}x")
    } else {
        format!("{x:.3}x")
    }
}

/// What a peer is called in prose.
pub fn display_name(driver: &str) -> &str {
    match driver {
        "nats-jetstream" => "NATS JetStream",
        other => other,
    }
}

/// The server CPU seconds per GB of a run: the servers' sum when there are
/// several (listed first), else the one server (0 when not measured).
pub fn server_cpu_per_gb(run: &DriverRun) -> f64 {
    run.processes
        .iter()
        .find(|p| p.name != "shardmq-bench")
        .map_or(0.0, |p| p.cpu_seconds_per_gb)
}

/// shardmq against `peer` from `runs`, or `None` if either did not run.
pub fn compare(runs: &[DriverRun], peer: &str, by: BestBy) -> Option<Comparison> {
    let peer_run = runs.iter().find(|r| r.driver == peer)?;
    let peer_best = best_run(runs, peer, &peer_run.mode, by)?;
    let rf = peer_best.replication_factor;
    let shardmq_at = |rf: u32, acks: &'static str| {
        best_of(
            runs.iter().filter(move |r| {
                r.driver == SHARDMQ && r.replication_factor == rf && r.mode.ends_with(acks)
            }),
            by,
        )
    };
    let leader = shardmq_at(rf, "acks=leader");
    let all = shardmq_at(rf, "acks=all");
    let main = leader.or(all)?;
    let baseline = if rf > 1 {
        best_of(
            runs.iter().filter(|r| {
                r.driver == SHARDMQ && r.replication_factor == 1 && r.mode.ends_with("acks=all")
            }),
            BestBy::Throughput,
        )
    } else {
        None
    };
    let figures = |run: &DriverRun| {
        (
            ratio(
                run.throughput.produce_msg_per_s,
                peer_best.throughput.produce_msg_per_s,
            ),
            ratio(
                run.publish_latency.p99 as f64,
                peer_best.publish_latency.p99 as f64,
            ),
            ratio(
                run.publish_latency.p999 as f64,
                peer_best.publish_latency.p999 as f64,
            ),
        )
    };
    let (throughput_ratio, p99_ratio, p999_ratio) = figures(main);
    let p50_ratio = ratio(
        main.publish_latency.p50 as f64,
        peer_best.publish_latency.p50 as f64,
    );
    let e2e_p50_ratio = ratio(
        main.end_to_end_latency.p50 as f64,
        peer_best.end_to_end_latency.p50 as f64,
    );
    let cpu_ratio = ratio(server_cpu_per_gb(main), server_cpu_per_gb(peer_best));
    let baseline_third_ratio = baseline.map(|b| {
        ratio(
            main.throughput.produce_msg_per_s,
            b.throughput.produce_msg_per_s / 3.0,
        )
    });
    let peer_name = if rf > 1 {
        format!("{} R{rf}", display_name(peer))
    } else {
        display_name(peer).to_owned()
    };
    let other_all = all.filter(|_| leader.is_some());
    // At max rate each driver runs at its own rate, so latencies are not
    // comparable; at a fixed rate throughput is the same for all.
    let mut headline = match by {
        BestBy::Throughput => format!(
            "shardmq {} {} {peer_name} max throughput",
            main.mode,
            format_ratio(throughput_ratio)
        ),
        BestBy::PublishP99 => format!(
            "at the same rate, shardmq {} publish p99 {}, p99.9 {} of {peer_name}",
            main.mode,
            format_ratio(p99_ratio),
            format_ratio(p999_ratio)
        ),
        BestBy::PublishP50 => format!(
            "one record at a time, shardmq {} publish p50 {} µs, {peer_name} {} µs ({})",
            main.mode,
            main.publish_latency.p50,
            peer_best.publish_latency.p50,
            format_ratio(p50_ratio)
        ),
    };
    if let Some(all) = other_all {
        let (t, p99, p999) = figures(all);
        let _ = match by {
            BestBy::Throughput => {
                write!(headline, "; acks=all (after fdatasync) {}", format_ratio(t))
            }
            BestBy::PublishP99 => write!(
                headline,
                "; acks=all (after fdatasync) p99 {}, p99.9 {}",
                format_ratio(p99),
                format_ratio(p999)
            ),
            BestBy::PublishP50 => write!(
                headline,
                "; acks=all (after fdatasync) p50 {} µs",
                all.publish_latency.p50
            ),
        };
    }
    if let Some(b) = baseline_third_ratio.filter(|_| by == BestBy::Throughput) {
        let _ = write!(
            headline,
            "; {} of a third of the single broker's acks=all max",
            format_ratio(b)
        );
    }
    if rf > 1 && by == BestBy::PublishP99 && cpu_ratio > 0.0 {
        let _ = write!(
            headline,
            "; server CPU-s/GB {}, e2e p50 {} µs ({})",
            format_ratio(cpu_ratio),
            main.end_to_end_latency.p50,
            format_ratio(e2e_p50_ratio)
        );
    }
    Some(Comparison {
        peer: peer.to_owned(),
        throughput_ratio,
        publish_p50_ratio: p50_ratio,
        publish_p99_ratio: p99_ratio,
        publish_p999_ratio: p999_ratio,
        end_to_end_p50_ratio: e2e_p50_ratio,
        server_cpu_per_gb_ratio: cpu_ratio,
        baseline_third_ratio,
        headline,
    })
}

/// The summary table of every run, as printed to stdout.
pub fn summary_table(runs: &[DriverRun]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:<12} {:>3} {:>10} {:>10} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>8} {:>6}",
        "driver", "mode", "#", "target/s", "prod/s", "MB/s", "cons/s", "pub p50", "pub p99",
        "p99.9", "delay p99", "e2e p50", "e2e p99", "backlog", "srv s/GB", "errors"
    );
    for r in runs {
        let cpu = server_cpu_per_gb(r);
        let server_cpu = if cpu > 0.0 {
            format!("{cpu:.1}")
        } else {
            "-".to_owned()
        };
        let target = r
            .target_rate
            .map_or("max".to_owned(), |t| format!("{t:.0}"));
        let _ = writeln!(
            out,
            "{:<15} {:<12} {:>3} {:>10} {:>10.0} {:>8.2} {:>10.0} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>8} {:>6}",
            r.driver,
            r.mode,
            r.repetition,
            target,
            r.throughput.produce_msg_per_s,
            r.throughput.produce_mb_per_s,
            r.throughput.consume_msg_per_s,
            r.publish_latency.p50,
            r.publish_latency.p99,
            r.publish_latency.p999,
            r.publish_delay.p99,
            r.end_to_end_latency.p50,
            r.end_to_end_latency.p99,
            r.backlog_max,
            server_cpu,
            r.errors
        );
    }
    out.push_str("latencies in µs; backlog = most messages sent and not yet consumed\n");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::model::{LatencySummary, Throughput};
    use crate::stats::new_histogram;

    fn run(driver: &str, mode: &str, rep: u32, msg_per_s: f64, p99_us: u64) -> DriverRun {
        let mut h = new_histogram();
        for _ in 0..99 {
            h.record(p99_us / 2).unwrap();
        }
        h.record(p99_us).unwrap();
        let latency = LatencySummary::from_histogram(&h);
        DriverRun {
            driver: driver.into(),
            mode: mode.into(),
            durability: String::new(),
            replication_factor: 1,
            servers: 1,
            repetition: rep,
            config: BTreeMap::new(),
            target_rate: None,
            rate_search: Vec::new(),
            throughput: Throughput {
                seconds: 1.0,
                produced_messages: msg_per_s as u64,
                produced_bytes: 0,
                consumed_messages: 0,
                consumed_bytes: 0,
                produce_msg_per_s: msg_per_s,
                produce_mb_per_s: 0.0,
                consume_msg_per_s: 0.0,
                consume_mb_per_s: 0.0,
            },
            publish_latency: latency.clone(),
            publish_delay: latency.clone(),
            end_to_end_latency: latency,
            backlog_max: 0,
            backlog_end: 0,
            timeline: Vec::new(),
            processes: Vec::new(),
            errors: 0,
            first_error: None,
            over_time: None,
        }
    }

    #[test]
    fn best_runs_and_ratios() {
        let runs = vec![
            run(SHARDMQ, "acks=all", 1, 1000.0, 4000),
            run(SHARDMQ, "acks=leader", 1, 2000.0, 1000),
            run("nats-jetstream", "R1 file", 1, 1000.0, 2000),
            run(SHARDMQ, "acks=all", 2, 1500.0, 3000),
            run(SHARDMQ, "acks=leader", 2, 1800.0, 900),
            run("nats-jetstream", "R1 file", 2, 800.0, 1800),
        ];
        let by_rate = compare(&runs, "nats-jetstream", BestBy::Throughput).unwrap();
        // Leader's best by throughput is rep 1 (2000), nats's is rep 1 (1000).
        assert!((by_rate.throughput_ratio - 2.0).abs() < 1e-9);
        assert!(by_rate
            .headline
            .starts_with("shardmq acks=leader 2.00x NATS JetStream max throughput"));
        assert!(by_rate
            .headline
            .contains("acks=all (after fdatasync) 1.50x"));

        let by_p99 = compare(&runs, "nats-jetstream", BestBy::PublishP99).unwrap();
        // Leader's lowest p99 is rep 2 (900 µs), nats's is rep 2 (1800 µs).
        let expected = 900.0 / 1800.0;
        assert!(
            (by_p99.publish_p99_ratio - expected).abs() < 0.01,
            "{by_p99:?}"
        );
        assert!(by_p99.throughput_ratio > 2.0);
        assert!(
            by_p99
                .headline
                .starts_with("at the same rate, shardmq acks=leader publish p99 0.50x"),
            "{}",
            by_p99.headline
        );
        // acks=all's lowest p99 is rep 2 (3000 µs).
        assert!(by_p99
            .headline
            .contains("acks=all (after fdatasync) p99 1.67x"));
    }

    #[test]
    fn replicated_runs_compare_at_the_peers_replication_factor() {
        let mut rf3 = run(SHARDMQ, "RF3 acks=all", 1, 3000.0, 1000);
        rf3.replication_factor = 3;
        let single = run(SHARDMQ, "RF1 acks=all", 1, 6000.0, 500);
        let mut nats = run("nats-jetstream", "R3 file", 1, 1000.0, 2000);
        nats.replication_factor = 3;
        let runs = vec![rf3, single, nats];
        let c = compare(&runs, "nats-jetstream", BestBy::Throughput).unwrap();
        // Against the R3 peer, the RF3 run is compared, not the faster RF1.
        assert!((c.throughput_ratio - 3.0).abs() < 1e-9, "{c:?}");
        // 3000 over a third of 6000.
        assert!((c.baseline_third_ratio.unwrap() - 1.5).abs() < 1e-9);
        assert!(
            c.headline
                .starts_with("shardmq RF3 acks=all 3.00x NATS JetStream R3 max throughput"),
            "{}",
            c.headline
        );
        assert!(c
            .headline
            .contains("1.50x of a third of the single broker's acks=all max"));

        let p50 = compare(&runs, "nats-jetstream", BestBy::PublishP50).unwrap();
        // p50 of run() is half its p99: 500 µs against 1,000 µs.
        assert!((p50.publish_p50_ratio - 0.5).abs() < 0.01, "{p50:?}");
        assert!(
            p50.headline.starts_with(
                "one record at a time, shardmq RF3 acks=all publish p50 500 µs, NATS JetStream R3 1000 µs"
            ),
            "{}",
            p50.headline
        );
    }

    #[test]
    fn small_ratios_keep_their_digits() {
        assert_eq!(format_ratio(0.0038), "0.004x");
        assert_eq!(format_ratio(0.24), "0.24x");
        assert_eq!(format_ratio(142.53), "142.5x");
        assert_eq!(format_ratio(0.0), "0.00x");
    }

    #[test]
    fn no_peer_no_comparison() {
        let runs = vec![run(SHARDMQ, "acks=all", 1, 1000.0, 4000)];
        assert!(compare(&runs, "nats-jetstream", BestBy::Throughput).is_none());
        let table = summary_table(&runs);
        assert!(table.contains("acks=all"));
    }

    #[test]
    fn ratios_stay_finite() {
        let runs = vec![
            run(SHARDMQ, "acks=all", 1, 1000.0, 0),
            run("nats-jetstream", "R1 file", 1, 0.0, 0),
        ];
        let c = compare(&runs, "nats-jetstream", BestBy::Throughput).unwrap();
        assert_eq!(c.throughput_ratio, 0.0);
        assert!(c.publish_p99_ratio.is_finite());
        assert!(c.headline.starts_with("shardmq acks=all"));
    }
}
