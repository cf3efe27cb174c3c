//! `report.md`: the report for people. Every figure of the tables comes
//! from the [`Report`] through [`super::format`], one row per run, runs in
//! the order they ran; the plots are linked as images beside the file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::format;
use super::index;
use super::model::{
    ActivitySecond, DriverRun, FailoverRun, HistogramSecond, IdleRun, LatencyBucket,
    LatencySummary, OverTime, ProcessActivity, Report, TABLE_QUANTILES,
};
use super::svg;

/// Buckets listed per run in the latency-over-time section: those with
/// the highest max.
pub const WORST_BUCKETS: usize = 10;

/// File name of the markdown report.
pub const REPORT_MD: &str = "report.md";

/// Section titles, also used to find the sections again in tests.
pub const THROUGHPUT_SECTION: &str = "## Throughput";
pub const PUBLISH_LATENCY_SECTION: &str = "## Publish latency";
pub const END_TO_END_LATENCY_SECTION: &str = "## End-to-end latency";
pub const PUBLISH_DELAY_SECTION: &str = "## Publish delay";
pub const LATENCY_OVER_TIME_SECTION: &str = "## Latency over time";
pub const CPU_SECTION: &str = "## CPU";
pub const BACKLOG_SECTION: &str = "## Backlog and errors";
pub const RATE_SEARCH_SECTION: &str = "## Max-rate search";
pub const SYSTEMS_SECTION: &str = "## Systems";
pub const IDLE_SECTION: &str = "## Idle partitions";
pub const FAILOVER_SECTION: &str = "## Failover";

/// Whether `report` holds only idle or failover results (no stream runs),
/// which have sections of their own instead of the run tables.
pub fn is_special(report: &Report) -> bool {
    report.runs.is_empty() && !(report.idle.is_empty() && report.failover.is_empty())
}

/// The whole of `report.md` for `report`.
pub fn render_markdown(report: &Report) -> String {
    let mut md = String::new();
    header(&mut md, report);
    machine(&mut md, report);
    if is_special(report) {
        idle(&mut md, report);
        failover(&mut md, report);
        workload(&mut md, report);
        return md;
    }
    systems(&mut md, report);
    comparison(&mut md, report);
    throughput(&mut md, report);
    latency_section(
        &mut md,
        PUBLISH_LATENCY_SECTION,
        "From each message's intended send time to its acknowledgement, so a \
         stalled server is charged for the sends it delayed.",
        report,
        |r| &r.publish_latency,
        Some(("Publish latency by percentile", svg::PUBLISH_LATENCY_SVG)),
    );
    latency_section(
        &mut md,
        END_TO_END_LATENCY_SECTION,
        "From the send time carried in the message to its consumption.",
        report,
        |r| &r.end_to_end_latency,
        Some((
            "End-to-end latency by percentile",
            svg::END_TO_END_LATENCY_SVG,
        )),
    );
    latency_section(
        &mut md,
        PUBLISH_DELAY_SECTION,
        "Actual send time minus intended send time: how far the producers \
         fell behind their schedule.",
        report,
        |r| &r.publish_delay,
        None,
    );
    latency_over_time(&mut md, report);
    cpu(&mut md, report);
    backlog(&mut md, report);
    rate_search(&mut md, report);
    durability(&mut md, report);
    config(&mut md, report);
    workload(&mut md, report);
    md
}

fn header(md: &mut String, report: &Report) {
    let date = report.started_at.get(..10).unwrap_or(&report.started_at);
    let _ = writeln!(md, "# Benchmark: {} — {}\n", inline(&report.workload), date);
    let _ = writeln!(md, "**Headline:** {}\n", inline(&index::headline(report)));
    let labels: Vec<String> = report
        .runs
        .iter()
        .map(DriverRun::label)
        .chain(
            report
                .idle
                .iter()
                .map(|i| format!("{} {}", i.driver, i.mode)),
        )
        .chain(
            report
                .failover
                .iter()
                .map(|f| format!("{} {}", f.driver, f.mode)),
        )
        .collect();
    let runs = if labels.is_empty() {
        "none".to_string()
    } else {
        labels.join("; ")
    };
    let peer = report
        .comparison
        .as_ref()
        .map(|c| c.peer.clone())
        .or_else(|| {
            report
                .idle
                .iter()
                .map(|i| &i.driver)
                .chain(report.failover.iter().map(|f| &f.driver))
                .find(|d| d.as_str() != crate::compare::SHARDMQ)
                .cloned()
        })
        .unwrap_or_else(|| "none".to_string());
    key_value_table(
        md,
        &[
            ("Started", cell(&report.started_at)),
            (
                "Load at start",
                if report.load_at_start.is_empty() {
                    "not recorded".to_string()
                } else {
                    format!("`{}` (/proc/loadavg)", cell(&report.load_at_start))
                },
            ),
            ("Commit", code(&report.commit)),
            ("Command", code(&report.command)),
            ("Workload", cell(&report.workload)),
            ("Peer", cell(&peer)),
            ("Runs", cell(&runs)),
            (
                "Raw results",
                format!("`report.json` (schema version {})", report.schema_version),
            ),
        ],
    );
}

fn machine(md: &mut String, report: &Report) {
    let m = &report.machine;
    let _ = writeln!(md, "## Machine\n");
    key_value_table(
        md,
        &[
            ("CPU", cell(&m.cpu_model)),
            ("Cores", m.cores.to_string()),
            (
                "Memory",
                format!(
                    "{} ({} bytes)",
                    format::binary_bytes(m.memory_bytes),
                    format::count(m.memory_bytes)
                ),
            ),
            ("Kernel", cell(&m.kernel)),
            ("Disk", cell(&m.disk)),
            ("Filesystem", cell(&m.filesystem)),
        ],
    );
}

fn comparison(md: &mut String, report: &Report) {
    let Some(c) = &report.comparison else {
        return;
    };
    let _ = writeln!(md, "## Comparison\n");
    let _ = writeln!(
        md,
        "shardmq against {}, from the best run of each: {}\n",
        inline(&c.peer),
        inline(&c.headline)
    );
    let _ = writeln!(md, "| figure | shardmq / {} | better when |", cell(&c.peer));
    let _ = writeln!(md, "| --- | ---: | --- |");
    for (figure, value, better) in [
        ("produce msg/s", c.throughput_ratio, "> 1"),
        ("publish latency p50", c.publish_p50_ratio, "< 1"),
        ("publish latency p99", c.publish_p99_ratio, "< 1"),
        ("publish latency p99.9", c.publish_p999_ratio, "< 1"),
    ] {
        let _ = writeln!(md, "| {figure} | {} | {better} |", format::ratio(value));
    }
    for (figure, value) in [
        ("end-to-end latency p50", c.end_to_end_p50_ratio),
        (
            "server CPU s/GB (summed over the server processes)",
            c.server_cpu_per_gb_ratio,
        ),
    ] {
        if value > 0.0 {
            let _ = writeln!(md, "| {figure} | {} | < 1 |", format::ratio(value));
        }
    }
    md.push('\n');
    if let Some(b) = c.baseline_third_ratio {
        let _ = writeln!(
            md,
            "Replicated against a single broker of the same run: shardmq's replicated produce \
             msg/s over a third of the single broker's acks=all max (each replicated record is \
             stored three times on this one machine): {}.\n",
            format::ratio(b)
        );
    }
}

/// Replicas and server processes of every run, when any run is
/// replicated or ran on several servers.
fn systems(md: &mut String, report: &Report) {
    if report
        .runs
        .iter()
        .all(|r| r.replication_factor <= 1 && r.servers <= 1)
    {
        return;
    }
    let _ = writeln!(md, "{SYSTEMS_SECTION}\n");
    let _ = writeln!(
        md,
        "Each side of the run on its own servers, started for its runs and stopped after \
         them, all on this machine's loopback.\n"
    );
    let _ = writeln!(
        md,
        "| run | replication factor | server processes | servers |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | --- |");
    for run in &report.runs {
        row(
            md,
            &run.label(),
            &[
                run.replication_factor.to_string(),
                run.servers.to_string(),
                cell(run.config.get("server").map_or("", String::as_str)),
            ],
        );
    }
    md.push('\n');
}

fn idle(md: &mut String, report: &Report) {
    if report.idle.is_empty() {
        return;
    }
    let _ = writeln!(md, "{IDLE_SECTION}\n");
    let _ = writeln!(
        md,
        "The topics were created and nothing was sent. After every partition had a leader \
         and the servers were left alone for the settle time, each server's CPU (user plus \
         system, `/proc/PID/stat`) was measured over the measured period, as a percentage of \
         one core, and its resident memory (`/proc/PID/statm`) sampled every second.\n"
    );
    let _ = writeln!(
        md,
        "| run | replicas | partitions | Raft groups | setup s | settle s | measured s | harness CPU % |"
    );
    let _ = writeln!(md, "| --- |{}", " ---: |".repeat(7));
    for i in &report.idle {
        row(
            md,
            &idle_label(i),
            &[
                i.replication_factor.to_string(),
                format::count(i.partitions),
                format::count(i.raft_groups),
                format::seconds(i.setup_seconds),
                format::seconds(i.settle_seconds),
                format::seconds(i.seconds),
                format::fixed(i.harness_cpu_percent_of_core, 2),
            ],
        );
    }
    md.push('\n');
    let _ = writeln!(
        md,
        "| run | process | CPU % of a core | CPU s | RSS at the end | RSS max |"
    );
    let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: | ---: |");
    for i in &report.idle {
        for p in &i.processes {
            row(
                md,
                &idle_label(i),
                &[
                    cell(&p.name),
                    format::fixed(p.cpu_percent_of_core, 2),
                    format::seconds(p.cpu_seconds),
                    format::binary_bytes(p.rss_bytes_end),
                    format::binary_bytes(p.rss_bytes_max),
                ],
            );
        }
    }
    md.push('\n');
    for i in &report.idle {
        settings_table(md, &idle_label(i), &i.config);
    }
}

fn idle_label(i: &IdleRun) -> String {
    format!("{} {}", i.driver, i.mode)
}

fn failover_label(f: &FailoverRun) -> String {
    format!("{} {}", f.driver, f.mode)
}

fn ms(value: f64) -> String {
    format::fixed(value, 1)
}

fn failover(md: &mut String, report: &Report) {
    if report.failover.is_empty() {
        return;
    }
    let _ = writeln!(md, "{FAILOVER_SECTION}\n");
    let _ = writeln!(
        md,
        "Producers sent at a fixed rate, open loop, send `s` to partition `s mod N`. After the \
         warm-up the server leading the most partitions was killed with SIGKILL. Per partition \
         it led: the time from the kill to the first acknowledgement of a record sent after \
         the kill (which only a new leader can give); its resolution is the interval between \
         two sends to one partition. Where leaders can be polled cheaply (shardmq: one \
         DescribeReplicas per surviving broker), also the time to the first poll that found a \
         new leader among the survivors. Milliseconds.\n"
    );
    let _ = writeln!(
        md,
        "| run | partitions | msg/s | per-partition interval | killed | partitions it led | first ack p50 | first ack max | without one | new leader seen p50 | new leader seen max | poll interval |"
    );
    let _ = writeln!(
        md,
        "| --- | ---: | ---: | ---: | --- |{}",
        " ---: |".repeat(7)
    );
    for f in &report.failover {
        row(
            md,
            &failover_label(f),
            &[
                f.partitions.to_string(),
                format::msg_rate(f.rate),
                ms(f.per_partition_interval_ms),
                cell(&f.killed),
                f.killed_led_partitions.to_string(),
                ms(f.first_ack_p50_ms),
                ms(f.first_ack_max_ms),
                f.unrecovered_partitions.to_string(),
                if f.elected_poll_ms > 0.0 {
                    ms(f.elected_p50_ms)
                } else {
                    "not polled".to_string()
                },
                if f.elected_poll_ms > 0.0 {
                    ms(f.elected_max_ms)
                } else {
                    "not polled".to_string()
                },
                if f.elected_poll_ms > 0.0 {
                    ms(f.elected_poll_ms)
                } else {
                    "—".to_string()
                },
            ],
        );
    }
    md.push('\n');
    let _ = writeln!(
        md,
        "| run | leaders before the kill | other partitions' first ack p50 / max | failed records | first error | election timeout |"
    );
    let _ = writeln!(md, "| --- | --- | ---: | ---: | --- | --- |");
    for f in &report.failover {
        let leaders: Vec<String> = f
            .leaders_before
            .iter()
            .map(|(name, n)| format!("{name}: {n}"))
            .collect();
        row(
            md,
            &failover_label(f),
            &[
                cell(&leaders.join(", ")),
                format!(
                    "{} / {}",
                    ms(f.others_first_ack_p50_ms),
                    ms(f.others_first_ack_max_ms)
                ),
                format::count(f.errors),
                f.first_error
                    .as_deref()
                    .map(cell)
                    .unwrap_or_else(|| "—".to_string()),
                cell(&f.election_timeout),
            ],
        );
    }
    md.push('\n');
    let _ = writeln!(
        md,
        "![Acknowledged msg/s per 100 ms around the kill]({})\n",
        svg::FAILOVER_TIMELINE_SVG
    );
    let _ = writeln!(
        md,
        "![Per partition, time from the kill to the first acknowledgement on the new leader]({})\n",
        svg::FAILOVER_TIMES_SVG
    );
    let _ = writeln!(md, "Durability:\n");
    for f in &report.failover {
        let _ = writeln!(
            md,
            "- **{}**: {}",
            inline(&failover_label(f)),
            inline(&f.durability)
        );
    }
    md.push('\n');
    for f in &report.failover {
        settings_table(md, &failover_label(f), &f.config);
    }
}

fn settings_table(md: &mut String, title: &str, settings: &BTreeMap<String, String>) {
    let _ = writeln!(md, "### Config: {}\n", inline(title));
    if settings.is_empty() {
        let _ = writeln!(md, "No settings recorded.\n");
        return;
    }
    let _ = writeln!(md, "| setting | value |");
    let _ = writeln!(md, "| --- | --- |");
    for (key, value) in settings {
        let _ = writeln!(md, "| {} | {} |", cell(key), code(value));
    }
    md.push('\n');
}

/// The cells of a run's row in the throughput table, after its label.
pub fn throughput_cells(run: &DriverRun) -> Vec<String> {
    let t = &run.throughput;
    vec![
        run.target_rate
            .map(format::msg_rate)
            .unwrap_or_else(|| "unthrottled".to_string()),
        format::seconds(t.seconds),
        format::count(t.produced_messages),
        format::msg_rate(t.produce_msg_per_s),
        format::mb_rate(t.produce_mb_per_s),
        format::count(t.consumed_messages),
        format::msg_rate(t.consume_msg_per_s),
        format::mb_rate(t.consume_mb_per_s),
    ]
}

fn throughput(md: &mut String, report: &Report) {
    let _ = writeln!(md, "{THROUGHPUT_SECTION}\n");
    let _ = writeln!(
        md,
        "Over the measured period, warm-up excluded. MB/s is 10^6 bytes per second.\n"
    );
    let _ = writeln!(
        md,
        "| run | target msg/s | seconds | produced | produce msg/s | produce MB/s | consumed | consume msg/s | consume MB/s |"
    );
    let _ = writeln!(md, "| --- |{}", " ---: |".repeat(8));
    for run in &report.runs {
        row(md, &run.label(), &throughput_cells(run));
    }
    md.push('\n');
    let _ = writeln!(
        md,
        "![Throughput over time: produce (solid) and consume (dashed) msg/s per second]({})\n",
        svg::THROUGHPUT_SVG
    );
}

/// The cells of a run's row in a latency table, after its label: samples,
/// mean, then the [`TABLE_QUANTILES`] and the max, in µs.
pub fn latency_cells(summary: &LatencySummary) -> Vec<String> {
    let mut cells = vec![
        format::count(summary.samples),
        format::micros_mean(summary.mean),
    ];
    cells.extend(summary.table_values().iter().map(|&v| format::micros(v)));
    cells
}

fn latency_section(
    md: &mut String,
    title: &str,
    meaning: &str,
    report: &Report,
    summary: fn(&DriverRun) -> &LatencySummary,
    plot: Option<(&str, &str)>,
) {
    let _ = writeln!(md, "{title}\n");
    let _ = writeln!(md, "{meaning} Microseconds.\n");
    let quantiles: Vec<&str> = TABLE_QUANTILES.iter().map(|(name, _)| *name).collect();
    let _ = writeln!(
        md,
        "| run | samples | mean | {} | max |",
        quantiles.join(" | ")
    );
    let _ = writeln!(md, "| --- |{}", " ---: |".repeat(quantiles.len() + 3));
    for run in &report.runs {
        row(md, &run.label(), &latency_cells(summary(run)));
    }
    md.push('\n');
    if let Some((alt, file)) = plot {
        let _ = writeln!(md, "![{alt}]({file})\n");
    }
}

fn latency_over_time(md: &mut String, report: &Report) {
    let _ = writeln!(md, "{LATENCY_OVER_TIME_SECTION}\n");
    let recorded: Vec<(&DriverRun, &OverTime)> = report
        .runs
        .iter()
        .filter_map(|r| r.over_time.as_ref().map(|o| (r, o)))
        .collect();
    if recorded.is_empty() {
        let _ = writeln!(
            md,
            "Not recorded (the report was written before the harness recorded it).\n"
        );
        return;
    }
    let bucket_ms: Vec<String> = {
        let mut widths: Vec<u64> = recorded.iter().map(|(_, o)| o.bucket_ms).collect();
        widths.sort_unstable();
        widths.dedup();
        widths.iter().map(u64::to_string).collect()
    };
    let slow_us = recorded[0].1.slow_us;
    let _ = writeln!(
        md,
        "Publish latency per {} ms of intended send time. Per run, the {WORST_BUCKETS} \
         buckets with the highest max (slowest first), beside what each process did in the \
         second holding the bucket's start: CPU seconds, run-queue wait (its threads runnable \
         but not running, summed over them) and, from a broker's metrics endpoint, its sync \
         rounds above {} of all rounds and the highest fsync and produce latency bucket reached \
         (\"≤ 25 ms\": the slowest took at most 25 ms), the segments its log rolled into a new \
         one and the segments its collector deleted. \
         Brokers refresh their storage histograms once a second, so a sync round can show in \
         the second after it. Send delay max: the most any of the bucket's messages was sent \
         after its intended time (a large one is a stall of the harness itself). Microseconds unless marked.\n",
        bucket_ms.join(" / "),
        format::duration_label(slow_us as f64),
    );
    let _ = writeln!(
        md,
        "![Publish latency over time: p99 (solid), max (dashed), p50 (dotted)]({})\n",
        svg::LATENCY_OVER_TIME_SVG
    );
    for run in &report.runs {
        let _ = writeln!(md, "### {}\n", inline(&run.label()));
        let Some(over_time) = &run.over_time else {
            let _ = writeln!(md, "Not recorded.\n");
            continue;
        };
        if over_time.publish.is_empty() {
            let _ = writeln!(md, "No acknowledged sends in the measured period.\n");
            continue;
        }
        worst_buckets_table(md, over_time);
    }
}

/// The [`WORST_BUCKETS`] buckets of `over_time` with the highest max and
/// the activity of their seconds, one column per process.
fn worst_buckets_table(md: &mut String, over_time: &OverTime) {
    let mut names: Vec<&str> = Vec::new();
    for second in &over_time.seconds {
        for p in &second.processes {
            if !names.contains(&p.name.as_str()) {
                names.push(&p.name);
            }
        }
    }
    let _ = write!(md, "| t s | sends | p50 | p99 | max | send delay max |");
    for name in &names {
        let _ = write!(md, " {} |", cell(name));
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| ---: |{}",
        " ---: |".repeat(5) + &" --- |".repeat(names.len())
    );
    for bucket in worst_buckets(&over_time.publish) {
        let second = second_of(&over_time.seconds, bucket.t);
        let mut cells = vec![
            format::fixed(bucket.t, 1),
            format::count(bucket.count),
            format::micros(bucket.p50),
            format::micros(bucket.p99),
            format::micros(bucket.max),
            format::micros(bucket.send_delay_max),
        ];
        for name in &names {
            let activity = second.and_then(|s| s.processes.iter().find(|p| p.name == *name));
            cells.push(activity.map_or_else(|| "—".to_string(), |p| activity_cell(p, over_time)));
        }
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    md.push('\n');
}

/// Up to [`WORST_BUCKETS`] buckets, highest max first (earliest first
/// among equals).
pub fn worst_buckets(buckets: &[LatencyBucket]) -> Vec<&LatencyBucket> {
    let mut worst: Vec<&LatencyBucket> = buckets.iter().collect();
    worst.sort_by(|a, b| b.max.cmp(&a.max).then(a.t.total_cmp(&b.t)));
    worst.truncate(WORST_BUCKETS);
    worst
}

/// The second whose interval holds `t` (the first ending after it), or
/// the last one when `t` is past them all.
pub fn second_of(seconds: &[ActivitySecond], t: f64) -> Option<&ActivitySecond> {
    seconds.iter().find(|s| s.t > t).or(seconds.last())
}

/// One process's second in one cell: "CPU 0.93 s, wait 12.0 ms" and, for
/// a broker, "; sync 3 of 118 > 5 ms, fsync ≤ 25 ms, produce ≤ 10 ms" and
/// the segments rolled and deleted when there were any.
fn activity_cell(p: &ProcessActivity, over_time: &OverTime) -> String {
    let mut text = format!("CPU {} s", format::seconds(p.cpu_seconds));
    if let Some(wait) = p.runqueue_wait_ms {
        let _ = write!(text, ", wait {} ms", format::fixed(wait, 1));
    }
    if let Some(m) = &p.metrics {
        let _ = write!(
            text,
            "; sync {} of {} > {}, fsync {}, produce {}",
            format::count(m.fsync.slow),
            format::count(m.fsync.count),
            format::duration_label(over_time.slow_us as f64),
            slowest(&m.fsync),
            slowest(&m.produce)
        );
        if m.segments_rolled > 0 {
            let _ = write!(text, "; {} rolled", format::count(m.segments_rolled));
        }
        if m.segments_deleted > 0 {
            let _ = write!(
                text,
                "; {} segments deleted",
                format::count(m.segments_deleted)
            );
        }
    }
    cell(&text)
}

/// The highest bucket a histogram's second reached: "≤ 25 ms", "none",
/// or "> largest bucket".
fn slowest(h: &HistogramSecond) -> String {
    match h.max_le_us {
        0 => "none".to_string(),
        u64::MAX => "> largest bucket".to_string(),
        bound => format!("≤ {}", format::duration_label(bound as f64)),
    }
}

fn cpu(md: &mut String, report: &Report) {
    let _ = writeln!(md, "{CPU_SECTION}\n");
    let _ = writeln!(
        md,
        "User plus system time of each process over the measured period, and \
         per GB (10^9 bytes) of produced values.\n"
    );
    let _ = writeln!(md, "| run | process | CPU s | CPU s/GB |");
    let _ = writeln!(md, "| --- | --- | ---: | ---: |");
    for run in &report.runs {
        for process in &run.processes {
            row(
                md,
                &run.label(),
                &[
                    cell(&process.name),
                    format::seconds(process.cpu_seconds),
                    format::seconds(process.cpu_seconds_per_gb),
                ],
            );
        }
    }
    md.push('\n');
}

fn backlog(md: &mut String, report: &Report) {
    let _ = writeln!(md, "{BACKLOG_SECTION}\n");
    let _ = writeln!(
        md,
        "Backlog: messages produced and not yet consumed. Errors: sends that failed.\n"
    );
    let _ = writeln!(
        md,
        "| run | backlog max | backlog end | errors | first error |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | --- |");
    for run in &report.runs {
        row(
            md,
            &run.label(),
            &[
                format::count(run.backlog_max),
                format::count(run.backlog_end),
                format::count(run.errors),
                run.first_error
                    .as_deref()
                    .map(cell)
                    .unwrap_or_else(|| "—".to_string()),
            ],
        );
    }
    md.push('\n');
}

fn rate_search(md: &mut String, report: &Report) {
    if report.runs.iter().all(|r| r.rate_search.is_empty()) {
        return;
    }
    let _ = writeln!(md, "{RATE_SEARCH_SECTION}\n");
    let _ = writeln!(
        md,
        "Each trial ran the producers at a target rate; sustained means the \
         achieved rate was within tolerance with no growing backlog and no errors.\n"
    );
    let _ = writeln!(
        md,
        "| run | trial | target msg/s | achieved msg/s | sustained |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | --- |");
    for run in &report.runs {
        for (i, trial) in run.rate_search.iter().enumerate() {
            row(
                md,
                &run.label(),
                &[
                    (i + 1).to_string(),
                    format::msg_rate(trial.target_rate),
                    format::msg_rate(trial.achieved_rate),
                    if trial.sustained { "yes" } else { "no" }.to_string(),
                ],
            );
        }
    }
    md.push('\n');
}

/// The distinct (driver, mode) pairs in the order they first ran, each with
/// its first run.
fn driver_modes(report: &Report) -> Vec<&DriverRun> {
    let mut seen = Vec::new();
    for run in &report.runs {
        if !seen
            .iter()
            .any(|s: &&DriverRun| s.driver == run.driver && s.mode == run.mode)
        {
            seen.push(run);
        }
    }
    seen
}

fn driver_mode_name(run: &DriverRun) -> String {
    if run.mode.is_empty() {
        run.driver.clone()
    } else {
        format!("{} ({})", run.driver, run.mode)
    }
}

fn durability(md: &mut String, report: &Report) {
    let _ = writeln!(md, "## Durability\n");
    let _ = writeln!(
        md,
        "When each driver acknowledges a message, relative to fsync:\n"
    );
    if report.runs.is_empty() {
        let _ = writeln!(md, "No runs.\n");
        return;
    }
    for first in driver_modes(report) {
        // Repetitions of one driver and mode normally say the same; any
        // that differ are listed too.
        let mut texts: Vec<&str> = Vec::new();
        for run in report
            .runs
            .iter()
            .filter(|r| r.driver == first.driver && r.mode == first.mode)
        {
            if !texts.contains(&run.durability.as_str()) {
                texts.push(&run.durability);
            }
        }
        let text = texts
            .iter()
            .map(|t| if t.is_empty() { "not stated" } else { t })
            .map(inline)
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = writeln!(md, "- **{}**: {}", inline(&driver_mode_name(first)), text);
    }
    md.push('\n');
}

fn config(md: &mut String, report: &Report) {
    let _ = writeln!(md, "## Config\n");
    if report.runs.is_empty() {
        let _ = writeln!(md, "No runs.\n");
        return;
    }
    for first in driver_modes(report) {
        let runs: Vec<&DriverRun> = report
            .runs
            .iter()
            .filter(|r| r.driver == first.driver && r.mode == first.mode)
            .collect();
        // One table per distinct config among the repetitions.
        let mut configs: Vec<(&BTreeMap<String, String>, Vec<u32>)> = Vec::new();
        for run in runs {
            match configs.iter_mut().find(|(c, _)| **c == run.config) {
                Some((_, reps)) => reps.push(run.repetition),
                None => configs.push((&run.config, vec![run.repetition])),
            }
        }
        let several = configs.len() > 1;
        for (settings, repetitions) in configs {
            let mut title = driver_mode_name(first);
            if several {
                let reps: Vec<String> = repetitions.iter().map(|r| format!("#{r}")).collect();
                let _ = write!(title, ", runs {}", reps.join(", "));
            }
            let _ = writeln!(md, "### {}\n", inline(&title));
            if settings.is_empty() {
                let _ = writeln!(md, "No settings recorded.\n");
                continue;
            }
            let _ = writeln!(md, "| setting | value |");
            let _ = writeln!(md, "| --- | --- |");
            for (key, value) in settings {
                let _ = writeln!(md, "| {} | {} |", cell(key), code(value));
            }
            md.push('\n');
        }
    }
}

fn workload(md: &mut String, report: &Report) {
    let _ = writeln!(md, "## Workload\n");
    let fence = "`".repeat(longest_backtick_run(&report.workload_toml).max(2) + 1);
    let _ = writeln!(md, "{fence}toml");
    md.push_str(&report.workload_toml);
    if !report.workload_toml.ends_with('\n') {
        md.push('\n');
    }
    let _ = writeln!(md, "{fence}");
}

fn key_value_table(md: &mut String, rows: &[(&str, String)]) {
    let _ = writeln!(md, "| | |");
    let _ = writeln!(md, "| --- | --- |");
    for (key, value) in rows {
        let _ = writeln!(md, "| {key} | {value} |");
    }
    md.push('\n');
}

fn row(md: &mut String, label: &str, cells: &[String]) {
    let _ = writeln!(md, "| {} | {} |", cell(label), cells.join(" | "));
}

/// `text` made safe for one table cell: pipes escaped, line breaks turned
/// into spaces.
pub fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// `text` on one line, for running text and headings.
fn inline(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// `text` as an inline code span (cell-safe), with a fence longer than any
/// run of backticks inside it.
pub fn code(text: &str) -> String {
    let text = cell(text);
    if text.is_empty() {
        return "(none)".to_string();
    }
    let fence = "`".repeat(longest_backtick_run(&text) + 1);
    // A span that starts or ends with a backtick needs a space inside.
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{text}{pad}{fence}")
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_survive_backticks_and_pipes() {
        assert_eq!(code("a b"), "`a b`");
        assert_eq!(code("a `b` c"), "``a `b` c``");
        assert_eq!(code("`x`"), "`` `x` ``");
        assert_eq!(code("a | b"), "`a \\| b`");
        assert_eq!(code(""), "(none)");
    }

    #[test]
    fn cells_stay_on_one_line() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
