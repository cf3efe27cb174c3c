//! The report renderer end to end: `report.json` round-trips, `report.md`
//! holds every table figure of the report, the SVG plots are well-formed
//! XML with one series per run, the index keeps its hand-written rows, and
//! `write_report_dir` writes every file.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use shardmq_bench_harness::report::markdown::{self, cell};
use shardmq_bench_harness::report::model::{
    ActivitySecond, Comparison, DriverRun, FailoverRun, HistogramSecond, IdleProcess, IdleRun,
    LatencyBucket, LatencySummary, Machine, OverTime, ProcessActivity, ProcessCpu, RateTrial,
    Report, ServerSecond, Throughput, TimelinePoint, REPORT_SCHEMA_VERSION, TABLE_QUANTILES,
};
use shardmq_bench_harness::report::{self, format, index, svg};

// ---------------------------------------------------------------------------
// Sample data

/// A latency summary whose every figure is distinct and derived from
/// `base`, with a rising percentile curve.
fn latency(base: u64) -> LatencySummary {
    let p = [
        base + 11,
        base * 2 + 13,
        base * 4 + 17,
        base * 8 + 19,
        base * 16 + 23,
        base * 32 + 29,
    ];
    let max = base * 64 + 31;
    let mut curve = Vec::new();
    for step in 0..=60u32 {
        let q = 1.0 - 10f64.powf(-f64::from(step) / 10.0);
        let value = base + (base * 60) * u64::from(step) * u64::from(step) / 3600;
        curve.push((q, value));
    }
    curve.push((1.0, max));
    LatencySummary {
        samples: 1_234_567 + base,
        mean: base as f64 * 1.5 + 0.25,
        p50: p[0],
        p75: p[1],
        p95: p[2],
        p99: p[3],
        p999: p[4],
        p9999: p[5],
        max,
        curve,
    }
}

fn run(driver: &str, mode: &str, repetition: u32, scale: f64) -> DriverRun {
    let base = (1000.0 * scale) as u64;
    let timeline = (1..=30)
        .map(|s| {
            let t = f64::from(s);
            TimelinePoint {
                t,
                produce_msg_per_s: 98_765.4 * scale + 1000.0 * (t * 0.7).sin(),
                consume_msg_per_s: 98_000.1 * scale + 1500.0 * (t * 0.5).cos(),
                backlog: (s * 37) as u64,
            }
        })
        .collect();
    let mut config = BTreeMap::new();
    config.insert("version".to_string(), format!("{driver} 1.2.3"));
    config.insert("partitions".to_string(), "8".to_string());
    config.insert("flags".to_string(), "--a=b | --c".to_string());
    DriverRun {
        driver: driver.to_string(),
        mode: mode.to_string(),
        durability: format!("{driver} acknowledges after fsync of the leader's log"),
        replication_factor: 1,
        servers: 1,
        repetition,
        config,
        target_rate: if repetition == 1 {
            Some(100_000.0)
        } else {
            None
        },
        rate_search: if repetition == 1 {
            vec![
                RateTrial {
                    target_rate: 50_000.0,
                    achieved_rate: 49_987.6 * scale,
                    sustained: true,
                },
                RateTrial {
                    target_rate: 200_000.0,
                    achieved_rate: 151_234.5 * scale,
                    sustained: false,
                },
            ]
        } else {
            Vec::new()
        },
        throughput: Throughput {
            seconds: 30.015 * scale,
            produced_messages: (2_963_012.0 * scale) as u64,
            produced_bytes: (3_034_124_288.0 * scale) as u64,
            consumed_messages: (2_962_999.0 * scale) as u64,
            consumed_bytes: (3_034_111_000.0 * scale) as u64,
            produce_msg_per_s: 98_765.432 * scale,
            produce_mb_per_s: 101.1357 * scale,
            consume_msg_per_s: 98_764.987 * scale,
            consume_mb_per_s: 101.1313 * scale,
        },
        publish_latency: latency(base),
        publish_delay: latency(base / 10 + 3),
        end_to_end_latency: latency(base * 3 + 7),
        backlog_max: (4_321.0 * scale) as u64,
        backlog_end: (12.0 * scale) as u64,
        timeline,
        processes: vec![
            ProcessCpu {
                name: format!("{driver}-server"),
                cpu_seconds: 41.237 * scale,
                cpu_seconds_per_gb: 13.591 * scale,
            },
            ProcessCpu {
                name: "shardmq-bench".to_string(),
                cpu_seconds: 7.777 * scale,
                cpu_seconds_per_gb: 2.563 * scale,
            },
        ],
        errors: (3.0 * scale) as u64,
        first_error: Some(format!("timeout after 5 s on {driver}")),
        over_time: Some(over_time(driver, base)),
    }
}

/// Second (1-based) of [`over_time`] holding its spike.
const SPIKE_SECOND: u32 = 3;
/// Bucket of the spike: 2.3 s into the measured period.
const SPIKE_BUCKET: u32 = 23;

/// Five seconds of 100 ms buckets whose maxima rise slowly, with one spike
/// in bucket [`SPIKE_BUCKET`], and per second the server (with broker
/// metrics for shardmq only) and the harness; the spike's second has a
/// stalled fsync and a long run-queue wait.
fn over_time(driver: &str, base: u64) -> OverTime {
    let publish = (0..50u32)
        .map(|i| LatencyBucket {
            t: f64::from(i) / 10.0,
            count: 200 + u64::from(i),
            p50: base + u64::from(i),
            p99: base * 3 + u64::from(i),
            max: if i == SPIKE_BUCKET {
                base * 250
            } else {
                base * 5 + u64::from(i) * 7
            },
            send_delay_max: 40 + u64::from(i),
        })
        .collect();
    let seconds = (1..=5u32)
        .map(|s| {
            let spike = s == SPIKE_SECOND;
            let histogram = |slow: u64, max_le_us: u64| HistogramSecond {
                count: 100 + u64::from(s),
                slow,
                max_le_us,
            };
            ActivitySecond {
                t: f64::from(s) + 0.0004,
                processes: vec![
                    ProcessActivity {
                        name: format!("{driver}-server"),
                        cpu_seconds: 0.5 + f64::from(s) / 100.0,
                        runqueue_wait_ms: Some(if spike { 42.5 } else { 0.25 }),
                        metrics: (driver == "shardmq").then(|| ServerSecond {
                            fsync: histogram(
                                if spike { 17 } else { 0 },
                                if spike { 250_000 } else { 2_500 },
                            ),
                            write: histogram(0, 500),
                            produce: histogram(0, if spike { u64::MAX } else { 5_000 }),
                            segments_deleted: if spike { 2 } else { 0 },
                            segments_rolled: if spike { 1 } else { 0 },
                        }),
                    },
                    ProcessActivity {
                        name: "shardmq-bench".to_string(),
                        cpu_seconds: 0.25,
                        runqueue_wait_ms: None,
                        metrics: None,
                    },
                ],
            }
        })
        .collect();
    OverTime {
        bucket_ms: 100,
        publish,
        end_to_end: Vec::new(),
        slow_us: 5_000,
        seconds,
    }
}

/// `report` as an older harness wrote it: no run has `over_time`.
fn without_over_time(report: &Report) -> String {
    let mut json = serde_json::to_value(report).expect("serialize");
    for run in json["runs"].as_array_mut().expect("runs") {
        run.as_object_mut().expect("run").remove("over_time");
    }
    serde_json::to_string_pretty(&json).expect("serialize")
}

fn sample_report(with_comparison: bool) -> Report {
    Report {
        schema_version: REPORT_SCHEMA_VERSION,
        workload: "e2e-small".to_string(),
        workload_toml: "name = \"e2e-small\"\nmessage_bytes = 1024\nrate = 100000\n".to_string(),
        command: "shardmq-bench run --workload workloads/e2e-small.toml --peer nats".to_string(),
        commit: "beb8ad1-dirty".to_string(),
        started_at: "2026-12-01T10:11:12Z".to_string(),
        load_at_start: "0.52 0.61 0.70 2/345 6789".to_string(),
        machine: Machine {
            cpu_model: "AMD EPYC 7B13".to_string(),
            cores: 2,
            memory_bytes: 25_276_063_744,
            kernel: "6.18.44".to_string(),
            disk: "/dev/vda (virtio disk, 256.0 GiB, write cache: write back)".to_string(),
            filesystem: "ext4".to_string(),
        },
        runs: vec![
            run("shardmq", "acks=all", 1, 1.0),
            run("nats-jetstream", "R1 file", 1, 0.61),
            run("shardmq", "acks=all", 2, 1.07),
            run("nats-jetstream", "R1 file", 2, 0.59),
        ],
        comparison: with_comparison.then(|| Comparison {
            peer: "nats-jetstream".to_string(),
            throughput_ratio: 1.6234,
            publish_p50_ratio: 0.4117,
            publish_p99_ratio: 0.3871,
            publish_p999_ratio: 0.5123,
            end_to_end_p50_ratio: 0.0,
            server_cpu_per_gb_ratio: 0.0,
            baseline_third_ratio: None,
            headline: "shardmq 1.62x NATS JetStream throughput, p99 0.39x".to_string(),
        }),
        idle: Vec::new(),
        failover: Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// A small XML well-formedness checker

#[derive(Debug, Default)]
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<Element>,
    text: String,
}

impl Element {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every element below this one, depth first.
    fn descendants(&self) -> Vec<&Element> {
        let mut out = Vec::new();
        for child in &self.children {
            out.push(child);
            out.extend(child.descendants());
        }
        out
    }

    /// The text of this element and every element below it.
    fn all_text(&self) -> String {
        let mut out = self.text.clone();
        for child in &self.children {
            out.push_str(&child.all_text());
        }
        out
    }
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | ':' | '.')
}

/// Checks entity references in text or attribute values and decodes them.
fn decode(text: &str) -> Result<String, String> {
    if text.contains('<') {
        return Err(format!("raw '<' in {text:?}"));
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let end = rest[amp..]
            .find(';')
            .ok_or_else(|| format!("unterminated entity in {text:?}"))?;
        let entity = &rest[amp + 1..amp + end];
        out.push(match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => return Err(format!("unknown entity &{entity}; in {text:?}")),
        });
        rest = &rest[amp + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `xml` (an optional declaration, comments, elements with quoted
/// attributes, text) into its root element, or says what is malformed.
fn parse_xml(xml: &str) -> Result<Element, String> {
    let mut rest = xml.trim_start();
    if let Some(after) = rest.strip_prefix("<?xml") {
        let end = after.find("?>").ok_or("unterminated declaration")?;
        rest = &after[end + 2..];
    }
    let mut stack: Vec<Element> = vec![Element::default()];
    loop {
        let Some(lt) = rest.find('<') else {
            if !rest.trim().is_empty() {
                return Err(format!("text after the root: {rest:?}"));
            }
            break;
        };
        let text = decode(&rest[..lt])?;
        if stack.len() == 1 && !text.trim().is_empty() {
            return Err(format!("text outside the root: {text:?}"));
        }
        stack.last_mut().ok_or("empty stack")?.text.push_str(&text);
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            let end = after.find("-->").ok_or("unterminated comment")?;
            rest = &after[end + 3..];
            continue;
        }
        if let Some(after) = rest.strip_prefix("</") {
            let end = after.find('>').ok_or("unterminated end tag")?;
            let name = after[..end].trim();
            let element = stack.pop().ok_or("end tag without start")?;
            if element.name != name || stack.is_empty() {
                return Err(format!("</{name}> closes <{}>", element.name));
            }
            stack
                .last_mut()
                .ok_or("empty stack")?
                .children
                .push(element);
            rest = &after[end + 1..];
            continue;
        }
        // A start tag.
        let mut tag = &rest[1..];
        let name_len = tag.find(|c: char| !is_name_char(c)).unwrap_or(tag.len());
        if name_len == 0 {
            return Err(format!("bad tag at {:?}", &rest[..rest.len().min(30)]));
        }
        let mut element = Element {
            name: tag[..name_len].to_string(),
            ..Element::default()
        };
        tag = &tag[name_len..];
        let self_closing;
        loop {
            tag = tag.trim_start();
            if let Some(after) = tag.strip_prefix("/>") {
                self_closing = true;
                tag = after;
                break;
            }
            if let Some(after) = tag.strip_prefix('>') {
                self_closing = false;
                tag = after;
                break;
            }
            let attr_len = tag.find(|c: char| !is_name_char(c)).unwrap_or(tag.len());
            if attr_len == 0 {
                return Err(format!("bad attribute in <{}>", element.name));
            }
            let attr = tag[..attr_len].to_string();
            let after = tag[attr_len..].trim_start();
            let after = after
                .strip_prefix('=')
                .ok_or_else(|| format!("attribute {attr} without value"))?
                .trim_start();
            let quote = after.chars().next().ok_or("end of input in tag")?;
            if quote != '"' && quote != '\'' {
                return Err(format!("unquoted attribute {attr}"));
            }
            let end = after[1..]
                .find(quote)
                .ok_or_else(|| format!("unterminated attribute {attr}"))?;
            if element.attributes.iter().any(|(n, _)| *n == attr) {
                return Err(format!("duplicate attribute {attr}"));
            }
            element.attributes.push((attr, decode(&after[1..1 + end])?));
            tag = &after[end + 2..];
        }
        rest = tag;
        if self_closing {
            stack
                .last_mut()
                .ok_or("empty stack")?
                .children
                .push(element);
        } else {
            stack.push(element);
        }
    }
    if stack.len() != 1 {
        return Err(format!(
            "unclosed <{}>",
            stack.last().map(|e| e.name.as_str()).unwrap_or("?")
        ));
    }
    let mut document = stack.pop().ok_or("empty stack")?;
    if document.children.len() != 1 {
        return Err(format!("{} root elements", document.children.len()));
    }
    document.children.pop().ok_or_else(|| "no root".to_string())
}

/// The `<g class="series">` elements of a plot, with their run labels.
fn series(root: &Element) -> Vec<&Element> {
    root.descendants()
        .into_iter()
        .filter(|e| e.name == "g" && e.attribute("class") == Some("series"))
        .collect()
}

/// The (x, y) points of a polyline.
fn points(polyline: &Element) -> Vec<(f64, f64)> {
    polyline
        .attribute("points")
        .unwrap_or("")
        .split_whitespace()
        .map(|pair| {
            let (x, y) = pair.split_once(',').expect("x,y");
            (x.parse().expect("x"), y.parse().expect("y"))
        })
        .collect()
}

fn view_box(root: &Element) -> (f64, f64) {
    let values: Vec<f64> = root
        .attribute("viewBox")
        .expect("viewBox")
        .split_whitespace()
        .map(|v| v.parse().expect("number"))
        .collect();
    (values[2], values[3])
}

mod report_xml_checker {
    use super::*;

    #[test]
    fn xml_checker_rejects_malformed_documents() {
        assert!(parse_xml("<a><b/></a>").is_ok());
        assert!(parse_xml("<a x=\"1\">t &amp; u</a>").is_ok());
        for bad in [
            "<a><b></a></b>",
            "<a>",
            "<a></a><b/>",
            "<a x=1/>",
            "<a x=\"1\" x=\"2\"/>",
            "<a>&nbsp;</a>",
            "<a>x & y</a>",
            "<a x=\"<\"/>",
            "text<a/>",
        ] {
            assert!(parse_xml(bad).is_err(), "accepted {bad}");
        }
    }
}

/// report.json
mod report_json {
    use super::*;

    #[test]
    fn json_round_trips_with_and_without_comparison() {
        for with_comparison in [true, false] {
            let report = sample_report(with_comparison);
            let json = serde_json::to_string_pretty(&report).expect("serialize");
            let back: Report = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, report);
            assert_eq!(back.comparison.is_some(), with_comparison);
        }
    }
}

/// report.md
mod report_markdown {
    use super::*;

    /// Picks one of a run's latency summaries.
    type SummaryOf = fn(&DriverRun) -> &LatencySummary;

    /// The text of the section starting with the line `title`, up to the next
    /// `## ` heading.
    fn section<'a>(md: &'a str, title: &str) -> &'a str {
        let start = md
            .find(&format!("\n{title}\n"))
            .unwrap_or_else(|| panic!("no section {title}"))
            + 1;
        let body = &md[start + title.len()..];
        let end = body.find("\n## ").map_or(body.len(), |e| e + 1);
        &body[..end]
    }

    /// The cells of every table row of `section` whose first cell is `label`.
    fn rows(section: &str, label: &str) -> Vec<Vec<String>> {
        let prefix = format!("| {} |", cell(label));
        section
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| {
                l.trim()
                    .trim_matches('|')
                    .split(" | ")
                    .map(|c| c.trim().to_string())
                    .skip(1)
                    .collect()
            })
            .collect()
    }

    fn header_cells(section: &str) -> Vec<String> {
        let line = section
            .lines()
            .find(|l| l.starts_with("| run |"))
            .expect("table header");
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    }

    #[test]
    fn formats_used_by_the_markdown_are_the_documented_ones() {
        // The expected cells below are built with these functions; pin what
        // they produce so the comparison is not circular.
        assert_eq!(format::msg_rate(98_765.432), "98,765");
        assert_eq!(format::mb_rate(101.1357), "101.14");
        assert_eq!(format::micros(12_345), "12,345");
        assert_eq!(format::seconds(13.591), "13.59");
        assert_eq!(format::count(2_963_012), "2,963,012");
        assert_eq!(format::ratio(1.6234), "1.623");
    }

    #[test]
    fn markdown_holds_every_table_figure() {
        let report = sample_report(true);
        let md = markdown::render_markdown(&report);

        // Throughput: one row per run, every figure in its column.
        let throughput = section(&md, markdown::THROUGHPUT_SECTION);
        assert_eq!(
            header_cells(throughput),
            [
                "run",
                "target msg/s",
                "seconds",
                "produced",
                "produce msg/s",
                "produce MB/s",
                "consumed",
                "consume msg/s",
                "consume MB/s"
            ]
        );
        for run in &report.runs {
            let t = &run.throughput;
            let expected = vec![
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
            ];
            assert_eq!(
                rows(throughput, &run.label()),
                vec![expected],
                "{}",
                run.label()
            );
        }

        // Latencies: samples, mean, each table quantile and the max.
        let mut expected_header = vec!["run", "samples", "mean"];
        expected_header.extend(TABLE_QUANTILES.iter().map(|(name, _)| *name));
        expected_header.push("max");
        let latencies: [(&str, SummaryOf); 3] = [
            (markdown::PUBLISH_LATENCY_SECTION, |r| &r.publish_latency),
            (markdown::END_TO_END_LATENCY_SECTION, |r| {
                &r.end_to_end_latency
            }),
            (markdown::PUBLISH_DELAY_SECTION, |r| &r.publish_delay),
        ];
        for (title, summary) in latencies {
            let text = section(&md, title);
            assert_eq!(header_cells(text), expected_header, "{title}");
            for run in &report.runs {
                let s = summary(run);
                let expected = vec![
                    format::count(s.samples),
                    format::micros_mean(s.mean),
                    format::micros(s.p50),
                    format::micros(s.p75),
                    format::micros(s.p95),
                    format::micros(s.p99),
                    format::micros(s.p999),
                    format::micros(s.p9999),
                    format::micros(s.max),
                ];
                assert_eq!(
                    rows(text, &run.label()),
                    vec![expected],
                    "{title} {}",
                    run.label()
                );
            }
        }

        // CPU: one row per process of each run.
        let cpu = section(&md, markdown::CPU_SECTION);
        for run in &report.runs {
            let expected: Vec<Vec<String>> = run
                .processes
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        format::seconds(p.cpu_seconds),
                        format::seconds(p.cpu_seconds_per_gb),
                    ]
                })
                .collect();
            assert_eq!(rows(cpu, &run.label()), expected, "{}", run.label());
        }

        // Backlog and errors.
        let backlog = section(&md, markdown::BACKLOG_SECTION);
        for run in &report.runs {
            let expected = vec![
                format::count(run.backlog_max),
                format::count(run.backlog_end),
                format::count(run.errors),
                cell(run.first_error.as_deref().unwrap_or("")),
            ];
            assert_eq!(rows(backlog, &run.label()), vec![expected]);
        }

        // Max-rate search trials.
        let search = section(&md, markdown::RATE_SEARCH_SECTION);
        for run in &report.runs {
            let expected: Vec<Vec<String>> = run
                .rate_search
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    vec![
                        (i + 1).to_string(),
                        format::msg_rate(t.target_rate),
                        format::msg_rate(t.achieved_rate),
                        if t.sustained { "yes" } else { "no" }.to_string(),
                    ]
                })
                .collect();
            assert_eq!(rows(search, &run.label()), expected);
        }

        // Comparison ratios and the headline.
        let comparison = report.comparison.as_ref().expect("comparison");
        for value in [
            comparison.throughput_ratio,
            comparison.publish_p50_ratio,
            comparison.publish_p99_ratio,
            comparison.publish_p999_ratio,
        ] {
            assert!(
                md.contains(&format!("| {} |", format::ratio(value))),
                "{value}"
            );
        }
        assert!(md.contains(&comparison.headline));

        // Provenance, machine, durability, config, workload, plots.
        for needle in [
            format!("`{}`", report.command),
            format!("`{}`", report.commit),
            report.started_at.clone(),
            report.machine.cpu_model.clone(),
            format!("| Cores | {} |", report.machine.cores),
            format::count(report.machine.memory_bytes),
            report.machine.kernel.clone(),
            report.machine.disk.clone(),
            format!("| Filesystem | {} |", report.machine.filesystem),
            report.workload_toml.clone(),
            format!("]({})", svg::PUBLISH_LATENCY_SVG),
            format!("]({})", svg::END_TO_END_LATENCY_SVG),
            format!("]({})", svg::THROUGHPUT_SVG),
        ] {
            assert!(md.contains(&needle), "report.md lacks {needle:?}");
        }
        for run in &report.runs {
            assert!(md.contains(&run.durability), "{}", run.durability);
            for (key, value) in &run.config {
                assert!(
                    md.contains(&format!("| {} | `{}` |", cell(key), cell(value))),
                    "{key}"
                );
            }
        }
    }

    #[test]
    fn markdown_of_an_empty_report_renders() {
        let mut report = sample_report(false);
        report.runs.clear();
        report.workload_toml = "name = \"x\" # ```".to_string();
        let md = markdown::render_markdown(&report);
        assert!(md.contains("no runs"));
        assert!(!md.contains(markdown::RATE_SEARCH_SECTION));
        // The workload fence is longer than the backticks inside it.
        assert!(md.contains("````toml\nname = \"x\" # ```\n````\n"), "{md}");
    }

    #[test]
    fn odd_figures_render_without_nan() {
        let mut report = sample_report(false);
        let run = &mut report.runs[0];
        run.throughput.produce_msg_per_s = f64::NAN;
        run.throughput.seconds = 0.0;
        run.processes[0].cpu_seconds_per_gb = f64::INFINITY;
        run.publish_latency.curve.push((f64::NAN, 5));
        run.timeline.push(TimelinePoint {
            t: f64::NAN,
            produce_msg_per_s: 1.0,
            consume_msg_per_s: f64::NAN,
            backlog: 0,
        });
        let md = markdown::render_markdown(&report);
        assert!(md.contains(&format!(
            "| {} | {} |",
            format::NOT_A_NUMBER,
            format::mb_rate(report.runs[0].throughput.produce_mb_per_s)
        )));
        for text in [
            md,
            svg::publish_latency_svg(&report),
            svg::throughput_svg(&report),
        ] {
            let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric()).collect();
            assert!(!words.contains(&"NaN") && !words.contains(&"inf"), "{text}");
        }
    }
}

/// SVG plots
mod report_svg {
    use super::*;

    #[test]
    fn latency_plots_have_one_rising_series_per_run() {
        let report = sample_report(true);
        for text in [
            svg::publish_latency_svg(&report),
            svg::end_to_end_latency_svg(&report),
        ] {
            let root = parse_xml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(root.name, "svg");
            let (width, height) = view_box(&root);
            let series = series(&root);
            assert_eq!(series.len(), report.runs.len());
            for (run, group) in report.runs.iter().zip(&series) {
                assert_eq!(group.attribute("data-run"), Some(run.label().as_str()));
                let lines: Vec<&Element> = group
                    .children
                    .iter()
                    .filter(|e| e.name == "polyline")
                    .collect();
                assert_eq!(lines.len(), 1);
                let pts = points(lines[0]);
                assert_eq!(pts.len(), run.publish_latency.curve.len());
                for pair in pts.windows(2) {
                    // Percentiles go right, latencies go up (smaller y).
                    assert!(pair[1].0 >= pair[0].0, "{pair:?}");
                    assert!(pair[1].1 <= pair[0].1, "{pair:?}");
                }
                for (x, y) in pts {
                    assert!((0.0..=width).contains(&x) && (0.0..=height).contains(&y));
                }
            }
            let all_text = root.all_text();
            for label in ["50%", "90%", "99%", "99.9%", "99.99%", "99.999%", "max"] {
                assert!(all_text.contains(label), "no x label {label}");
            }
            for run in &report.runs {
                assert!(
                    all_text.contains(&run.label()),
                    "legend lacks {}",
                    run.label()
                );
            }
        }
    }

    #[test]
    fn latency_axis_is_logarithmic() {
        // Two runs ten times apart: their curves are the same distance apart
        // at every percentile.
        let mut report = sample_report(false);
        report.runs.truncate(2);
        let mut slow = report.runs[0].publish_latency.clone();
        for point in &mut slow.curve {
            point.1 *= 10;
        }
        report.runs[1].publish_latency = slow;
        let root = parse_xml(&svg::publish_latency_svg(&report)).expect("well-formed");
        let curves: Vec<Vec<(f64, f64)>> = series(&root)
            .iter()
            .map(|g| {
                points(
                    g.children
                        .iter()
                        .find(|e| e.name == "polyline")
                        .expect("line"),
                )
            })
            .collect();
        let gaps: Vec<f64> = curves[0]
            .iter()
            .zip(&curves[1])
            .map(|(a, b)| a.1 - b.1)
            .collect();
        assert!(gaps[0] > 10.0, "{gaps:?}");
        for gap in &gaps {
            assert!((gap - gaps[0]).abs() < 0.5, "{gaps:?}");
        }
    }

    #[test]
    fn throughput_plot_has_produce_and_consume_lines_per_run() {
        let report = sample_report(true);
        let text = svg::throughput_svg(&report);
        let root = parse_xml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let series = series(&root);
        assert_eq!(series.len(), report.runs.len());
        for (run, group) in report.runs.iter().zip(&series) {
            assert_eq!(group.attribute("data-run"), Some(run.label().as_str()));
            let lines: Vec<&Element> = group
                .children
                .iter()
                .filter(|e| e.name == "polyline")
                .collect();
            assert_eq!(lines.len(), 2, "produce and consume");
            assert!(lines[0].attribute("stroke-dasharray").is_none());
            assert!(lines[1].attribute("stroke-dasharray").is_some());
            for line in lines {
                let pts = points(line);
                assert_eq!(pts.len(), run.timeline.len());
                assert!(pts.windows(2).all(|p| p[1].0 > p[0].0), "time goes right");
            }
        }
    }

    #[test]
    fn plots_of_no_data_and_of_one_run_render() {
        // No runs at all.
        let mut empty = sample_report(false);
        empty.runs.clear();
        // Runs without samples or timeline.
        let mut hollow = sample_report(false);
        for run in &mut hollow.runs {
            run.publish_latency = LatencySummary::from_histogram(
                &hdrhistogram::Histogram::<u64>::new(3).expect("histogram"),
            );
            run.end_to_end_latency = run.publish_latency.clone();
            run.timeline.clear();
        }
        // One run with one point everywhere.
        let mut single = sample_report(false);
        single.runs.truncate(1);
        single.runs[0].publish_latency.curve = vec![(0.5, 0)];
        single.runs[0].timeline.truncate(1);

        for report in [&empty, &hollow, &single] {
            for text in [
                svg::publish_latency_svg(report),
                svg::end_to_end_latency_svg(report),
                svg::throughput_svg(report),
            ] {
                let root = parse_xml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
                assert_eq!(series(&root).len(), report.runs.len());
                let has_data = !report.runs.is_empty() && !report.runs[0].timeline.is_empty();
                let says_empty = root
                    .descendants()
                    .iter()
                    .any(|e| e.attribute("class") == Some("empty"));
                assert_eq!(says_empty, !has_data, "{text}");
            }
        }
        // A single point is drawn as a dot.
        let root = parse_xml(&svg::publish_latency_svg(&single)).expect("well-formed");
        let group = series(&root)[0];
        assert!(group.children.iter().any(|e| e.name == "circle"));
    }

    #[test]
    fn labels_are_escaped() {
        let mut report = sample_report(false);
        report.runs.truncate(1);
        report.runs[0].mode = "<acks=\"all\" & 'x'>".to_string();
        report.workload = "a&b".to_string();
        for text in [
            svg::publish_latency_svg(&report),
            svg::throughput_svg(&report),
        ] {
            let root = parse_xml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(
                series(&root)[0].attribute("data-run"),
                Some(report.runs[0].label().as_str())
            );
        }
    }
}

/// The index
mod report_index {
    use super::*;

    /// An index in the shape of the repository's, with hand-written rows.
    const INDEX: &str = "# Performance reports

One directory per report, `YYYY-MM-DD-<topic>/`, holding `report.md` (what
was run, on what, the figures and what they mean) and `report.json` (the
same figures, machine-readable). Newest first.

| date | report | headline |
| --- | --- | --- |
| 2026-12-01 | [storage, zeroed segments](2026-12-01-storage-prezero/report.md) | `ratio_p50_4k=1.378` / 1.654 (≤ 1.5, met in one run of two) · `ratio_parts_1000=13.9` (met) |
| 2026-11-25 | [storage, pipelined rounds](2026-11-25-storage-pipelined/report.md) | `ratio_bw_1m=0.747` (≥ 0.8, missed) |
| 2026-11-25 | [storage vs fio](2026-11-25-storage-vs-fio/report.md) | `ratio_bw_1m=0.473` (target ≥ 0.8, missed); `tools/storage-vs-fio.sh` |
";

    fn table_rows(index: &str) -> Vec<&str> {
        index
            .lines()
            .filter(|l| l.starts_with("| 2") || l.starts_with("| undated"))
            .collect()
    }

    #[test]
    fn update_index_inserts_newest_first_and_replaces_its_own_row() {
        let tmp = tempfile::TempDir::new().expect("tempdir");
        let reports = tmp.path();
        let index_path = reports.join(index::INDEX_FILE);
        fs::write(&index_path, INDEX).expect("write index");

        // Same date as the newest hand-written row: goes above it.
        let report = sample_report(true);
        let dir = reports.join(report::report_dir_name(&report));
        report::update_index(reports, &dir, &report).expect("update");
        let text = fs::read_to_string(&index_path).expect("read");
        let rows = table_rows(&text);
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows[0],
            "| 2026-12-01 | [e2e-small](2026-12-01-e2e-small/report.md) | \
             shardmq 1.62x NATS JetStream throughput, p99 0.39x |"
        );
        // Everything else is the original, byte for byte.
        let without_new = text.replacen(&format!("{}\n", rows[0]), "", 1);
        assert_eq!(without_new, INDEX);

        // Running again for the same directory replaces the row.
        let mut again = report.clone();
        if let Some(c) = again.comparison.as_mut() {
            c.headline = "shardmq 1.70x NATS JetStream throughput, p99 0.35x".to_string();
        }
        report::update_index(reports, &dir, &again).expect("update");
        let text = fs::read_to_string(&index_path).expect("read");
        let rows = table_rows(&text);
        assert_eq!(rows.len(), 4);
        assert!(rows[0].ends_with("| shardmq 1.70x NATS JetStream throughput, p99 0.35x |"));
        assert!(!text.contains("1.62x"));
        assert_eq!(text.replacen(&format!("{}\n", rows[0]), "", 1), INDEX);

        // An older report goes below the newer ones, at the end here.
        let mut older = sample_report(false);
        older.started_at = "2026-11-20T08:00:00Z".to_string();
        older.workload = "older".to_string();
        let older_dir = reports.join(report::report_dir_name(&older));
        report::update_index(reports, &older_dir, &older).expect("update");
        let text = fs::read_to_string(&index_path).expect("read");
        let rows = table_rows(&text);
        assert_eq!(rows.len(), 5);
        assert!(rows[4].starts_with("| 2026-11-20 | [older](2026-11-20-older/report.md) | "));
        // Without a comparison the headline is the best shardmq run's figures.
        let best = &older.runs[2];
        assert!(
            rows[4].contains(&format!(
                "{}: {} msg/s produced, publish p99 {} µs",
                best.label(),
                format::msg_rate(best.throughput.produce_msg_per_s),
                format::micros(best.publish_latency.p99)
            )),
            "{}",
            rows[4]
        );
        // Dates descend down the table.
        let dates: Vec<&str> = rows.iter().map(|r| &r[2..12]).collect();
        let mut sorted = dates.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(dates, sorted);
    }

    #[test]
    fn update_index_creates_a_missing_index() {
        let tmp = tempfile::TempDir::new().expect("tempdir");
        let report = sample_report(true);
        let dir = tmp.path().join(report::report_dir_name(&report));
        report::update_index(tmp.path(), &dir, &report).expect("update");
        let text = fs::read_to_string(tmp.path().join(index::INDEX_FILE)).expect("read");
        assert!(text.starts_with("# "));
        assert!(text.contains("| date | report | headline |\n| --- | --- | --- |\n"));
        assert_eq!(
            table_rows(&text),
            vec![index::index_row(&report, "2026-12-01-e2e-small")]
        );
    }
}

/// The report directory
mod report_dir {
    use super::*;

    #[test]
    fn write_report_dir_writes_every_file() {
        let tmp = tempfile::TempDir::new().expect("tempdir");
        let report = sample_report(true);
        let dir = report::write_report_dir(&report, tmp.path()).expect("write");
        assert_eq!(dir, tmp.path().join("2026-12-01-e2e-small"));

        let json = fs::read_to_string(dir.join(report::REPORT_JSON)).expect("report.json");
        let back: Report = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, report);

        let md = fs::read_to_string(dir.join(markdown::REPORT_MD)).expect("report.md");
        assert_eq!(md, markdown::render_markdown(&report));
        for name in [
            svg::PUBLISH_LATENCY_SVG,
            svg::END_TO_END_LATENCY_SVG,
            svg::THROUGHPUT_SVG,
            svg::LATENCY_OVER_TIME_SVG,
        ] {
            let text = fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let root = parse_xml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(series(&root).len(), report.runs.len(), "{name}");
            assert!(md.contains(&format!("]({name})")), "report.md links {name}");
        }

        // Writing again replaces the files in place.
        let mut changed = report.clone();
        changed.commit = "0123abc".to_string();
        let dir_again = report::write_report_dir(&changed, tmp.path()).expect("write");
        assert_eq!(dir_again, dir);
        let md = fs::read_to_string(dir.join(markdown::REPORT_MD)).expect("report.md");
        assert!(md.contains("`0123abc`"));
    }

    fn failover(driver: &str, mode: &str, scale: f64) -> FailoverRun {
        let first_ack_ms: Vec<f64> = (1..=6)
            .map(|i| 1000.0 * scale + 37.5 * f64::from(i))
            .collect();
        FailoverRun {
            driver: driver.to_string(),
            mode: mode.to_string(),
            durability: format!("{driver} acknowledges after a majority has it"),
            replication_factor: 3,
            partitions: 16,
            rate: 4000.0,
            per_partition_interval_ms: 4.0,
            killed: format!("{driver} server 2"),
            killed_led_partitions: 6,
            leaders_before: [
                ("a".to_string(), 5),
                ("b".to_string(), 6),
                ("c".to_string(), 5),
            ]
            .into_iter()
            .collect(),
            first_ack_p50_ms: first_ack_ms[2],
            first_ack_max_ms: first_ack_ms[5],
            first_ack_ms,
            unrecovered_partitions: 0,
            elected_ms: vec![900.0 * scale],
            elected_p50_ms: 900.0 * scale,
            elected_max_ms: 900.0 * scale,
            elected_poll_ms: 100.0,
            others_first_ack_p50_ms: 3.25,
            others_first_ack_max_ms: 9.5,
            errors: 17,
            first_error: Some("connection lost | reset".to_string()),
            election_timeout: "1,000 ms".to_string(),
            election_timeout_ms: 1000.0,
            timeline: (1..=200)
                .map(|i| TimelinePoint {
                    t: f64::from(i) * 0.1,
                    produce_msg_per_s: if (100..120).contains(&i) { 0.0 } else { 4000.0 },
                    consume_msg_per_s: 0.0,
                    backlog: 0,
                })
                .collect(),
            kill_at_s: 10.02,
            config: [("acks".to_string(), "all".to_string())]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn idle_and_failover_reports_have_their_own_sections_and_plots() {
        let tmp = tempfile::TempDir::new().expect("tempdir");
        let mut report = sample_report(false);
        report.runs.clear();
        report.workload = "failover-small".to_string();
        report.failover = vec![
            failover("shardmq", "RF3 acks=all", 1.0),
            failover("nats-jetstream", "R3 file", 2.5),
        ];
        let dir = report::write_report_dir(&report, tmp.path()).expect("write");
        let md = fs::read_to_string(dir.join(markdown::REPORT_MD)).expect("report.md");
        assert!(md.contains(markdown::FAILOVER_SECTION), "{md}");
        assert!(!md.contains(markdown::THROUGHPUT_SECTION));
        assert!(md.contains("| Peer | nats-jetstream |"), "{md}");
        for f in &report.failover {
            assert!(md.contains(&f.durability));
            assert!(md.contains(&format::fixed(f.first_ack_p50_ms, 1)));
            assert!(md.contains(&cell(f.first_error.as_deref().unwrap())));
        }
        for name in [svg::FAILOVER_TIMELINE_SVG, svg::FAILOVER_TIMES_SVG] {
            let text = fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let root = parse_xml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(series(&root).len(), 2, "{name}");
            assert!(md.contains(&format!("]({name})")), "report.md links {name}");
        }
        assert!(!dir.join(svg::THROUGHPUT_SVG).exists());
        let headline = index::headline(&report);
        let expected = format!(
            "first ack on the new leader p50 {} ms",
            format::fixed(report.failover[0].first_ack_p50_ms, 0)
        );
        assert!(headline.contains(&expected), "{headline}");

        let mut idle_report = sample_report(false);
        idle_report.runs.clear();
        idle_report.idle = vec![IdleRun {
            driver: "shardmq".to_string(),
            mode: "RF3 acks=all".to_string(),
            replication_factor: 3,
            partitions: 10_000,
            raft_groups: 10_000,
            setup_seconds: 42.5,
            settle_seconds: 30.0,
            seconds: 60.01,
            processes: (1..=3)
                .map(|i| IdleProcess {
                    name: format!("shardmq-broker {i}"),
                    cpu_percent_of_core: 1.25 * f64::from(i),
                    cpu_seconds: 0.75 * f64::from(i),
                    rss_bytes_end: 100 << 20,
                    rss_bytes_max: 101 << 20,
                })
                .collect(),
            harness_cpu_percent_of_core: 0.02,
            config: BTreeMap::new(),
        }];
        let md = markdown::render_markdown(&idle_report);
        assert!(md.contains(markdown::IDLE_SECTION));
        assert!(
            md.contains(
                "| shardmq RF3 acks=all | shardmq-broker 3 | 3.75 | 2.25 | 100.0 MiB | 101.0 MiB |"
            ),
            "{md}"
        );
        let headline = index::headline(&idle_report);
        assert!(
            headline.contains("10,000 idle partitions, CPU 1.25% / 2.50% / 3.75% of a core"),
            "{headline}"
        );
    }

    #[test]
    fn render_recomputes_the_comparison_and_the_index_row() {
        let tmp = tempfile::TempDir::new().expect("tempdir");
        let mut report = sample_report(true);
        // A fixed-rate workload: the runs are compared by publish latency.
        report.workload_toml = include_str!("../workloads/smoke.toml").to_string();
        let dir = report::write_report_dir(&report, tmp.path()).expect("write");
        report::update_index(tmp.path(), &dir, &report).expect("index");
        let md_path = dir.join(markdown::REPORT_MD);
        fs::write(&md_path, "stale").expect("overwrite report.md");

        let rendered = shardmq_bench_harness::runner::render(&dir).expect("render");
        assert_eq!(rendered, dir);
        let json = fs::read_to_string(dir.join(report::REPORT_JSON)).expect("report.json");
        let back: Report = serde_json::from_str(&json).expect("parse");
        let headline = back
            .comparison
            .as_ref()
            .expect("comparison")
            .headline
            .clone();
        assert!(
            headline.starts_with("at the same rate, shardmq acks=all publish p99 "),
            "{headline}"
        );
        assert_eq!(back.runs, report.runs, "the runs are kept as they were");
        let md = fs::read_to_string(&md_path).expect("report.md");
        assert_eq!(md, markdown::render_markdown(&back));
        let index_text = fs::read_to_string(tmp.path().join("README.md")).expect("index");
        assert!(index_text.contains(&headline), "{index_text}");
        assert!(!index_text.contains("1.62x NATS JetStream throughput, p99 0.39x"));

        // A directory without a report is an error, not a panic.
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        let error = shardmq_bench_harness::runner::render(&empty).unwrap_err();
        assert!(error.to_string().contains("report.json"), "{error}");
    }

    #[test]
    fn a_renamed_report_renders_in_place_and_leaves_its_namesake_alone() {
        let tmp = tempfile::TempDir::new().expect("tempdir");
        let mut first = sample_report(true);
        first.workload_toml = include_str!("../workloads/smoke.toml").to_string();
        // Two reports of one workload on one day: the first is renamed
        // before the second is written under the name both would get.
        let written = report::write_report_dir(&first, tmp.path()).expect("write");
        let renamed = tmp.path().join(format!(
            "{}-before",
            written.file_name().unwrap().to_string_lossy()
        ));
        fs::rename(&written, &renamed).expect("rename");
        let mut second = first.clone();
        second.commit = "second".to_string();
        let second_dir = report::write_report_dir(&second, tmp.path()).expect("write");
        assert_eq!(second_dir, written);

        let rendered = shardmq_bench_harness::runner::render(&renamed).expect("render");
        assert_eq!(rendered, renamed);
        let json_of = |dir: &Path| -> Report {
            let text = fs::read_to_string(dir.join(report::REPORT_JSON)).expect("report.json");
            serde_json::from_str(&text).expect("parse")
        };
        assert_eq!(json_of(&renamed).commit, first.commit);
        assert_eq!(json_of(&second_dir).commit, "second");
        let index = fs::read_to_string(tmp.path().join("README.md")).expect("index");
        let dir_name = renamed.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            index.contains(&format!("({dir_name}/report.md)")),
            "{index}"
        );
    }

    #[test]
    fn report_dir_names_are_one_path_component() {
        let mut report = sample_report(false);
        report.workload = "../a b/c".to_string();
        let name = report::report_dir_name(&report);
        assert_eq!(name, "2026-12-01--a-b-c");
        assert!(!Path::new(&name).components().any(|c| c.as_os_str() == ".."));
        report.started_at = String::new();
        report.workload = String::new();
        assert_eq!(report::report_dir_name(&report), "undated-workload");
    }

    #[test]
    fn timestamps_and_commit() {
        assert_eq!(
            report::rfc3339_from_unix_secs(1_764_583_872),
            "2025-12-01T10:11:12Z"
        );
        let now = report::now_rfc3339();
        assert!(now.ends_with('Z') && now.len() == 20, "{now}");
        // The crate's own tree is a git repository when tests run from a
        // checkout; either way the answer is one line.
        let commit = report::git_commit(Path::new(env!("CARGO_MANIFEST_DIR")));
        assert!(!commit.is_empty() && !commit.contains('\n'));
    }
}

/// Latency over time: the plot, the worst-bucket tables, and reports from
/// before it was recorded.
mod report_over_time {
    use super::*;

    /// The lines of the table under `### label` in the latency-over-time
    /// section, header and separator excluded, split into cells.
    fn worst_rows(md: &str, label: &str) -> Vec<Vec<String>> {
        let section = &md[md
            .find(markdown::LATENCY_OVER_TIME_SECTION)
            .expect("latency over time section")..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
        let heading = format!("### {label}\n");
        let start = section
            .find(&heading)
            .unwrap_or_else(|| panic!("no {heading}"));
        section[start + heading.len()..]
            .lines()
            .skip_while(|l| l.is_empty())
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|l| {
                l.trim_matches('|')
                    .split(" | ")
                    .map(|c| c.trim().to_string())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_worst_buckets_are_listed_with_the_activity_of_their_second() {
        let report = sample_report(false);
        let md = markdown::render_markdown(&report);
        assert!(md.contains(&format!("]({})", svg::LATENCY_OVER_TIME_SVG)));
        for run in &report.runs {
            let rows = worst_rows(&md, &run.label());
            assert_eq!(rows.len(), markdown::WORST_BUCKETS, "{}", run.label());
            let o = run.over_time.as_ref().expect("over_time");
            let spike = &o.publish[SPIKE_BUCKET as usize];
            // Slowest first: the spike, then the latest of the others.
            assert_eq!(rows[0][0], "2.3");
            assert_eq!(rows[0][1], format::count(spike.count));
            assert_eq!(rows[0][2], format::micros(spike.p50));
            assert_eq!(rows[0][3], format::micros(spike.p99));
            assert_eq!(rows[0][4], format::micros(spike.max));
            assert_eq!(rows[0][5], format::micros(spike.send_delay_max));
            assert_eq!(rows[1][0], "4.9");
            let maxima: Vec<u64> = rows
                .iter()
                .map(|r| r[4].replace(',', "").parse().expect("max"))
                .collect();
            assert!(maxima.windows(2).all(|w| w[0] >= w[1]), "{maxima:?}");
            // The spike's row shows the second holding 2.3 s (the third).
            let server = &rows[0][6];
            assert!(server.contains("wait 42.5 ms"), "{server}");
            let harness = &rows[0][7];
            assert_eq!(harness, "CPU 0.25 s");
            if run.driver == "shardmq" {
                assert!(
                    server.contains("sync 17 of 103 > 5 ms, fsync ≤ 250 ms, produce > largest bucket; 1 rolled; 2 segments deleted"),
                    "{server}"
                );
                // Bucket 4.9 s is in the fifth second: a quiet one.
                assert!(
                    rows[1][6].contains("sync 0 of 105 > 5 ms, fsync ≤ 2.5 ms"),
                    "{:?}",
                    rows[1]
                );
                assert!(!rows[1][6].contains("deleted"));
                assert!(!rows[1][6].contains("rolled"));
            } else {
                assert!(!server.contains("sync"), "no broker metrics: {server}");
            }
        }
    }

    #[test]
    fn seconds_are_matched_by_their_end() {
        let o = over_time("shardmq", 1000);
        let end = |t: f64| markdown::second_of(&o.seconds, t).expect("a second").t;
        assert_eq!(end(0.0), 1.0004);
        assert_eq!(end(0.9), 1.0004);
        assert_eq!(end(1.0), 1.0004);
        assert_eq!(end(1.0005), 2.0004);
        assert_eq!(end(4.9), 5.0004);
        assert_eq!(end(7.0), 5.0004, "past the end: the last second");
        assert!(markdown::second_of(&[], 1.0).is_none());
        let worst = markdown::worst_buckets(&o.publish[..3]);
        assert_eq!(
            worst.iter().map(|b| b.t).collect::<Vec<_>>(),
            vec![0.2, 0.1, 0.0]
        );
    }

    #[test]
    fn the_plot_has_p99_max_and_p50_lines_per_run_on_a_log_axis() {
        let report = sample_report(false);
        let text = svg::latency_over_time_svg(&report);
        let root = parse_xml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let series = series(&root);
        assert_eq!(series.len(), report.runs.len());
        for (run, group) in report.runs.iter().zip(&series) {
            assert_eq!(group.attribute("data-run"), Some(run.label().as_str()));
            let lines: Vec<&Element> = group
                .children
                .iter()
                .filter(|e| e.name == "polyline")
                .collect();
            assert_eq!(lines.len(), 3, "p99, max and p50");
            let [p99, max, p50] = [points(lines[0]), points(lines[1]), points(lines[2])];
            let buckets = run.over_time.as_ref().expect("over_time").publish.len();
            for line in [&p99, &max, &p50] {
                assert_eq!(line.len(), buckets);
                assert!(line.windows(2).all(|p| p[1].0 > p[0].0), "time goes right");
            }
            // SVG y grows downwards: max above p99 above p50 everywhere.
            for i in 0..buckets {
                assert!(max[i].1 < p99[i].1 && p99[i].1 < p50[i].1, "bucket {i}");
            }
            // The spike stands out: on a log axis 50x the neighbours' max
            // is well above them, but not off the chart.
            let spike = max[SPIKE_BUCKET as usize].1;
            assert!(spike < max[SPIKE_BUCKET as usize - 1].1 - 50.0, "{spike}");
        }
        let all_text = root.all_text();
        assert!(all_text.contains("log scale"), "{all_text}");
        assert!(all_text.contains("p99") && all_text.contains("max"));
    }

    #[test]
    fn reports_from_before_it_read_and_render() {
        let report = sample_report(true);
        let old_json = without_over_time(&report);
        assert!(!old_json.contains("over_time"));
        let old: Report = serde_json::from_str(&old_json).expect("an old report reads");
        assert!(old.runs.iter().all(|r| r.over_time.is_none()));
        let md = markdown::render_markdown(&old);
        let at = md
            .find(markdown::LATENCY_OVER_TIME_SECTION)
            .expect("the section is there");
        assert!(md[at..].contains("Not recorded"), "{}", &md[at..]);
        assert!(!md.contains(&format!("]({})", svg::LATENCY_OVER_TIME_SVG)));
        let text = svg::latency_over_time_svg(&old);
        let root = parse_xml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(series(&root).is_empty());
        assert!(root
            .descendants()
            .iter()
            .any(|e| e.attribute("class") == Some("empty")));

        // `render` of an old report directory keeps it old and writes
        // the (empty) plot.
        let tmp = tempfile::TempDir::new().expect("tempdir");
        let mut smoke = old.clone();
        smoke.workload_toml = include_str!("../workloads/smoke.toml").to_string();
        let dir = tmp.path().join(report::report_dir_name(&smoke));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(report::REPORT_JSON), without_over_time(&smoke)).expect("write");
        shardmq_bench_harness::runner::render(&dir).expect("render");
        assert!(dir.join(svg::LATENCY_OVER_TIME_SVG).is_file());
        let back: Report = serde_json::from_str(
            &fs::read_to_string(dir.join(report::REPORT_JSON)).expect("report.json"),
        )
        .expect("parse");
        assert!(back.runs.iter().all(|r| r.over_time.is_none()));

        // A mix: one run with it, the others without.
        let mut mixed = old;
        mixed.runs[0].over_time = report.runs[0].over_time.clone();
        let md = markdown::render_markdown(&mixed);
        assert_eq!(
            worst_rows(&md, &mixed.runs[0].label()).len(),
            markdown::WORST_BUCKETS
        );
        let second = &md[md
            .find(&format!("### {}\n", mixed.runs[1].label()))
            .expect("run 2")..];
        assert!(second.lines().nth(2) == Some("Not recorded."), "{second}");
    }

    #[test]
    fn a_run_without_sends_says_so() {
        let mut report = sample_report(false);
        report.runs.truncate(1);
        let o = report.runs[0].over_time.as_mut().expect("over_time");
        o.publish.clear();
        let md = markdown::render_markdown(&report);
        assert!(md.contains("No acknowledged sends in the measured period."));
        let root = parse_xml(&svg::latency_over_time_svg(&report)).expect("well-formed");
        assert_eq!(series(&root).len(), 1);
        assert!(root
            .descendants()
            .iter()
            .any(|e| e.attribute("class") == Some("empty")));
    }
}
