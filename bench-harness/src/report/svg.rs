//! The report's plots as hand-written SVG: the latency percentile curves
//! (log-log), the throughput over time (linear) and the latency over time
//! (log latency), every run of the report on one chart with a legend.
//!
//! Each run is one `<g class="series">` element holding its line(s), so the
//! plots can be checked (and restyled) per run. Data are mapped to the plot
//! area by [`Axis`]; points that are not finite are dropped, and a chart
//! with no points at all still draws its axes and says so.

use std::fmt::Write as _;

use super::format;
use super::model::{LatencyBucket, LatencySummary, Report};

/// File name of the publish latency percentile plot.
pub const PUBLISH_LATENCY_SVG: &str = "publish-latency.svg";
/// File name of the end-to-end latency percentile plot.
pub const END_TO_END_LATENCY_SVG: &str = "end-to-end-latency.svg";
/// File name of the throughput-over-time plot.
pub const THROUGHPUT_SVG: &str = "throughput.svg";
/// File name of the publish-latency-over-time plot.
pub const LATENCY_OVER_TIME_SVG: &str = "latency-over-time.svg";
/// File name of the failover's acknowledgements-over-time plot.
pub const FAILOVER_TIMELINE_SVG: &str = "failover-timeline.svg";
/// File name of the failover's per-partition times plot.
pub const FAILOVER_TIMES_SVG: &str = "failover-times.svg";

/// Line colours, one per run, reused in order when there are more runs.
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

const WIDTH: f64 = 960.0;
const HEIGHT_MIN: f64 = 480.0;
const PLOT_LEFT: f64 = 80.0;
const PLOT_TOP: f64 = 50.0;
const PLOT_RIGHT: f64 = 680.0;
/// Distance from the plot area's bottom edge to the image's bottom edge.
const PLOT_BOTTOM_MARGIN: f64 = 70.0;
const LEGEND_LEFT: f64 = 700.0;
const LEGEND_ROW: f64 = 20.0;
/// Bound on the legend's characters per run label; longer labels are cut.
const LEGEND_LABEL_CHARS_MAX: usize = 36;

/// The percentile curve's x axis ends at 1 / (1 - q) = 10^decades; the
/// number of decades shown is at least this...
const DECADES_MIN: u32 = 2;
/// ... and at most this (q = 1 - 10^-9).
const DECADES_MAX: u32 = 9;
/// Decades shown when no run has a point.
const DECADES_EMPTY: u32 = 5;
/// Space on the x axis between the last decade and the max.
const MAX_GAP_DECADES: f64 = 0.75;
/// Bound on the decades of a log latency axis (u64 µs span at most 20).
const LOG_DECADES_MAX: i32 = 20;

/// The publish latency percentile plot of every run in `report`.
pub fn publish_latency_svg(report: &Report) -> String {
    let runs: Vec<(String, &LatencySummary)> = report
        .runs
        .iter()
        .map(|r| (r.label(), &r.publish_latency))
        .collect();
    latency_percentile_svg(
        &format!("Publish latency by percentile — {}", report.workload),
        &runs,
    )
}

/// The end-to-end latency percentile plot of every run in `report`.
pub fn end_to_end_latency_svg(report: &Report) -> String {
    let runs: Vec<(String, &LatencySummary)> = report
        .runs
        .iter()
        .map(|r| (r.label(), &r.end_to_end_latency))
        .collect();
    latency_percentile_svg(
        &format!("End-to-end latency by percentile — {}", report.workload),
        &runs,
    )
}

/// Latency against percentile, both on log scales: x is log10(1 / (1 - q))
/// (50 %, 90 %, 99 %, ...), the curve's point at q = 1 (the max) sits at
/// the right end, y is the latency. Values below 1 µs are drawn at the
/// axis' bottom.
pub fn latency_percentile_svg(title: &str, runs: &[(String, &LatencySummary)]) -> String {
    let mut max_decades: Option<f64> = None;
    let mut value_min = f64::INFINITY;
    let mut value_max = 0.0f64;
    for (_, summary) in runs {
        for &(q, value) in &summary.curve {
            if !(q.is_finite() && (0.0..=1.0).contains(&q)) {
                continue;
            }
            let point_decades = if q < 1.0 { -(1.0 - q).log10() } else { 0.0 };
            max_decades = Some(max_decades.unwrap_or(0.0).max(point_decades));
            let value = value as f64;
            if value > 0.0 {
                value_min = value_min.min(value);
                value_max = value_max.max(value);
            }
        }
    }
    // 1 - (1 - 10^-6) is not exactly 10^-6 in floating point: round first
    // so such a curve ends on the 6th decade rather than just past it.
    let decades = max_decades.map_or(DECADES_EMPTY, |d| {
        (((d * 1e6).round() / 1e6).ceil() as u32).clamp(DECADES_MIN, DECADES_MAX)
    });
    let x_max_point = f64::from(decades) + MAX_GAP_DECADES;

    let mut x_ticks = vec![(2f64.log10(), "50%".to_string())];
    for d in 1..=decades {
        x_ticks.push((f64::from(d), percentile_label(d)));
    }
    x_ticks.push((x_max_point, "max".to_string()));
    let x_axis = Axis {
        min: 0.0,
        max: x_max_point,
        ticks: x_ticks,
        minor: Vec::new(),
        title: "percentile".to_string(),
    };

    let (y_axis, exp_low) = log_latency_axis(value_min, value_max, "latency (log scale)");

    let series = runs
        .iter()
        .map(|(label, summary)| {
            let points = summary
                .curve
                .iter()
                .filter(|(q, _)| q.is_finite() && (0.0..=1.0).contains(q))
                .map(|&(q, value)| {
                    let x = if q >= 1.0 {
                        x_max_point
                    } else {
                        (-(1.0 - q).log10()).min(f64::from(decades))
                    };
                    let y = (value.max(1) as f64).log10().max(f64::from(exp_low));
                    (x, y)
                })
                .collect();
            RunSeries {
                label: label.clone(),
                lines: vec![Line { points, dash: None }],
            }
        })
        .collect::<Vec<_>>();

    Chart {
        title: title.to_string(),
        x_axis,
        y_axis,
        series,
        line_key: Vec::new(),
        empty_text: "no samples",
    }
    .render()
}

/// A log10 axis of microsecond latencies from the decade below
/// `value_min` to the one above `value_max` (1 µs to 1 ms when there are
/// no positive values), and the exponent of its bottom.
fn log_latency_axis(value_min: f64, value_max: f64, title: &str) -> (Axis, i32) {
    let (exp_low, exp_high) = if value_max > 0.0 && value_min.is_finite() {
        let low = (value_min.log10().floor() as i32).max(0);
        let high = (value_max.log10().ceil() as i32).max(low + 1);
        (low, high.min(low + LOG_DECADES_MAX))
    } else {
        // No samples: 1 µs to 1 ms.
        (0, 3)
    };
    let mut ticks = Vec::new();
    let mut minor = Vec::new();
    for e in exp_low..=exp_high {
        ticks.push((f64::from(e), format::duration_label(10f64.powi(e))));
        if e < exp_high {
            minor.push(f64::from(e) + 2f64.log10());
            minor.push(f64::from(e) + 5f64.log10());
        }
    }
    let axis = Axis {
        min: f64::from(exp_low),
        max: f64::from(exp_high),
        ticks,
        minor,
        title: title.to_string(),
    };
    (axis, exp_low)
}

/// Publish latency per bucket of intended send time of every run in
/// `report` that recorded it: p99 (solid), max (dashed) and p50 (dotted)
/// against seconds into the measured period (each point at its bucket's
/// middle), latency on a log scale.
pub fn latency_over_time_svg(report: &Report) -> String {
    let buckets = |run: &super::model::DriverRun| -> (f64, Vec<LatencyBucket>) {
        let Some(o) = &run.over_time else {
            return (0.0, Vec::new());
        };
        let mut points: Vec<LatencyBucket> = o
            .publish
            .iter()
            .filter(|b| b.t.is_finite() && b.count > 0)
            .cloned()
            .collect();
        points.sort_by(|a, b| a.t.total_cmp(&b.t));
        (o.bucket_ms as f64 / 2e3, points)
    };
    let mut t_max = 0.0f64;
    let mut value_min = f64::INFINITY;
    let mut value_max = 0.0f64;
    for run in &report.runs {
        let (half, points) = buckets(run);
        for b in &points {
            t_max = t_max.max(b.t + 2.0 * half);
            for v in [b.p50, b.p99, b.max] {
                if v > 0 {
                    value_min = value_min.min(v as f64);
                    value_max = value_max.max(v as f64);
                }
            }
        }
    }
    let (t_top, t_step) = nice_axis(t_max, 10.0);
    let x_axis = Axis {
        min: 0.0,
        max: t_top,
        ticks: linear_ticks(t_top, t_step, |v| format::fixed(v, decimals_for(t_step))),
        minor: Vec::new(),
        title: "seconds into the measured period (intended send time)".to_string(),
    };
    let (y_axis, exp_low) = log_latency_axis(value_min, value_max, "publish latency (log scale)");
    let series = report
        .runs
        .iter()
        .filter(|run| run.over_time.is_some())
        .map(|run| {
            let (half, points) = buckets(run);
            let line = |value: fn(&LatencyBucket) -> u64, dash: Option<&'static str>| Line {
                points: points
                    .iter()
                    .map(|b| {
                        let y = (value(b).max(1) as f64).log10().max(f64::from(exp_low));
                        (b.t + half, y)
                    })
                    .collect(),
                dash,
            };
            RunSeries {
                label: run.label(),
                lines: vec![
                    line(|b| b.p99, None),
                    line(|b| b.max, Some("6 4")),
                    line(|b| b.p50, Some("2 3")),
                ],
            }
        })
        .collect();
    Chart {
        title: format!("Publish latency over time — {}", report.workload),
        x_axis,
        y_axis,
        series,
        line_key: vec![("p99", None), ("max", Some("6 4")), ("p50", Some("2 3"))],
        empty_text: "no data",
    }
    .render()
}

/// "90%", "99%", "99.9%", ... for 1 / (1 - q) = 10^decades.
fn percentile_label(decades: u32) -> String {
    match decades {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        2 => "99%".to_string(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)),
    }
}

/// Produce (solid) and consume (dashed) msg/s per second of every run in
/// `report`, on linear axes from zero.
pub fn throughput_svg(report: &Report) -> String {
    let finite_points = |run: &super::model::DriverRun| {
        let mut points: Vec<_> = run
            .timeline
            .iter()
            .filter(|p| p.t.is_finite())
            .cloned()
            .collect();
        points.sort_by(|a, b| a.t.total_cmp(&b.t));
        points
    };
    let mut t_max = 0.0f64;
    let mut rate_max = 0.0f64;
    for run in &report.runs {
        for p in finite_points(run) {
            t_max = t_max.max(p.t);
            for rate in [p.produce_msg_per_s, p.consume_msg_per_s] {
                if rate.is_finite() {
                    rate_max = rate_max.max(rate);
                }
            }
        }
    }
    let (t_top, t_step) = nice_axis(t_max, 10.0);
    let (rate_top, rate_step) = nice_axis(rate_max * 1.05, 1000.0);
    let x_axis = Axis {
        min: 0.0,
        max: t_top,
        ticks: linear_ticks(t_top, t_step, |v| format::fixed(v, decimals_for(t_step))),
        minor: Vec::new(),
        title: "seconds into the measured period".to_string(),
    };
    let y_axis = Axis {
        min: 0.0,
        max: rate_top,
        ticks: linear_ticks(rate_top, rate_step, format::rate_label),
        minor: Vec::new(),
        title: "msg/s".to_string(),
    };
    let series = report
        .runs
        .iter()
        .map(|run| {
            let points = finite_points(run);
            let line = |rate: fn(&super::model::TimelinePoint) -> f64| {
                points
                    .iter()
                    .filter(|p| rate(p).is_finite())
                    .map(|p| (p.t, rate(p).max(0.0)))
                    .collect::<Vec<_>>()
            };
            RunSeries {
                label: run.label(),
                lines: vec![
                    Line {
                        points: line(|p| p.produce_msg_per_s),
                        dash: None,
                    },
                    Line {
                        points: line(|p| p.consume_msg_per_s),
                        dash: Some("6 4"),
                    },
                ],
            }
        })
        .collect();
    Chart {
        title: format!("Throughput over time — {}", report.workload),
        x_axis,
        y_axis,
        series,
        line_key: vec![("produce", None), ("consume", Some("6 4"))],
        empty_text: "no data",
    }
    .render()
}

/// Acknowledged msg/s per 100 ms of every failover run in `report`, from
/// the start of sending (the kill after the warm-up), on linear axes.
pub fn failover_timeline_svg(report: &Report) -> String {
    let mut t_max = 0.0f64;
    let mut rate_max = 0.0f64;
    let mut kill_at = Vec::new();
    for f in &report.failover {
        kill_at.push(format::fixed(f.kill_at_s, 1));
        for p in &f.timeline {
            if p.t.is_finite() && p.produce_msg_per_s.is_finite() {
                t_max = t_max.max(p.t);
                rate_max = rate_max.max(p.produce_msg_per_s);
            }
        }
    }
    let (t_top, t_step) = nice_axis(t_max, 10.0);
    let (rate_top, rate_step) = nice_axis(rate_max * 1.05, 1000.0);
    let x_axis = Axis {
        min: 0.0,
        max: t_top,
        ticks: linear_ticks(t_top, t_step, |v| format::fixed(v, decimals_for(t_step))),
        minor: Vec::new(),
        title: format!(
            "seconds since sending began (the kill at {} s)",
            kill_at.join(" / ")
        ),
    };
    let y_axis = Axis {
        min: 0.0,
        max: rate_top,
        ticks: linear_ticks(rate_top, rate_step, format::rate_label),
        minor: Vec::new(),
        title: "acknowledged msg/s (per 100 ms)".to_string(),
    };
    let series = report
        .failover
        .iter()
        .map(|f| RunSeries {
            label: format!("{} {}", f.driver, f.mode),
            lines: vec![Line {
                points: f
                    .timeline
                    .iter()
                    .filter(|p| p.t.is_finite() && p.produce_msg_per_s.is_finite())
                    .map(|p| (p.t, p.produce_msg_per_s.max(0.0)))
                    .collect(),
                dash: None,
            }],
        })
        .collect();
    Chart {
        title: format!("Acknowledgements around the kill — {}", report.workload),
        x_axis,
        y_axis,
        series,
        line_key: Vec::new(),
        empty_text: "no data",
    }
    .render()
}

/// Per failover run, the killed server's partitions sorted by the time from
/// the kill to their first acknowledgement on a new leader: x is the share
/// of those partitions, y the time in ms.
pub fn failover_times_svg(report: &Report) -> String {
    let ms_max = report
        .failover
        .iter()
        .flat_map(|f| f.first_ack_ms.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let (ms_top, ms_step) = nice_axis(ms_max * 1.05, 1000.0);
    let x_axis = Axis {
        min: 0.0,
        max: 100.0,
        ticks: linear_ticks(100.0, 20.0, |v| format!("{}%", format::fixed(v, 0))),
        minor: Vec::new(),
        title: "share of the killed server's partitions".to_string(),
    };
    let y_axis = Axis {
        min: 0.0,
        max: ms_top,
        ticks: linear_ticks(ms_top, ms_step, |v| format::duration_label(v * 1e3)),
        minor: Vec::new(),
        title: "kill to first acknowledgement on the new leader".to_string(),
    };
    let series = report
        .failover
        .iter()
        .map(|f| {
            let n = f.first_ack_ms.len().max(1) as f64;
            RunSeries {
                label: format!("{} {}", f.driver, f.mode),
                lines: vec![Line {
                    points: f
                        .first_ack_ms
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| v.is_finite())
                        .map(|(i, &v)| (100.0 * (i + 1) as f64 / n, v.max(0.0)))
                        .collect(),
                    dash: None,
                }],
            }
        })
        .collect();
    Chart {
        title: format!("Failover time per partition — {}", report.workload),
        x_axis,
        y_axis,
        series,
        line_key: Vec::new(),
        empty_text: "no data",
    }
    .render()
}

/// Decimals that show a tick step exactly enough (steps are 1, 2, 2.5 or
/// 5 times a power of ten).
fn decimals_for(step: f64) -> usize {
    if step >= 1.0 || !step.is_finite() || step <= 0.0 {
        0
    } else {
        ((-step.log10()).ceil() as usize + 1).min(6)
    }
}

/// A round top and step for a linear axis from 0 holding `max`: steps of 1,
/// 2, 2.5 or 5 times a power of ten, about five of them. `default_top` when
/// there is nothing to hold.
fn nice_axis(max: f64, default_top: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        default_top
    };
    let raw_step = max / 5.0;
    let magnitude = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw_step)
        .unwrap_or(10.0 * magnitude);
    let top = (max / step).ceil() * step;
    (top, step)
}

/// Ticks at 0, step, 2 step, ... up to top (at most 50 of them).
fn linear_ticks(top: f64, step: f64, label: impl Fn(f64) -> String) -> Vec<(f64, String)> {
    const TICKS_MAX: usize = 50;
    let mut ticks = Vec::new();
    if !(step.is_finite() && step > 0.0) {
        return ticks;
    }
    for i in 0..=TICKS_MAX {
        let value = step * i as f64;
        if value > top + step * 1e-9 {
            break;
        }
        ticks.push((value, label(value)));
    }
    ticks
}

/// One axis, in the coordinates the points are given in (already log10 for
/// a log axis).
#[derive(Debug)]
struct Axis {
    min: f64,
    max: f64,
    /// Labelled grid lines.
    ticks: Vec<(f64, String)>,
    /// Fainter, unlabelled grid lines.
    minor: Vec<f64>,
    title: String,
}

impl Axis {
    /// Where `value` falls between the axis' ends, 0 to 1 (clamped).
    fn fraction(&self, value: f64) -> f64 {
        let span = self.max - self.min;
        if !(span.is_finite() && span > 0.0) {
            return 0.0;
        }
        ((value - self.min) / span).clamp(0.0, 1.0)
    }
}

#[derive(Debug)]
struct Line {
    points: Vec<(f64, f64)>,
    dash: Option<&'static str>,
}

/// Everything drawn for one run, in one colour.
#[derive(Debug)]
struct RunSeries {
    label: String,
    lines: Vec<Line>,
}

#[derive(Debug)]
struct Chart {
    title: String,
    x_axis: Axis,
    y_axis: Axis,
    series: Vec<RunSeries>,
    /// Legend entries for line styles shared by every run (name, dash).
    line_key: Vec<(&'static str, Option<&'static str>)>,
    /// Said in the middle of the plot when no run has a point.
    empty_text: &'static str,
}

impl Chart {
    fn render(&self) -> String {
        let legend_rows = self.series.len() + self.line_key.len() + 1;
        let height = HEIGHT_MIN.max(PLOT_TOP + LEGEND_ROW * legend_rows as f64 + 20.0);
        let plot_bottom = height - PLOT_BOTTOM_MARGIN;
        let x = |v: f64| PLOT_LEFT + self.x_axis.fraction(v) * (PLOT_RIGHT - PLOT_LEFT);
        let y = |v: f64| plot_bottom - self.y_axis.fraction(v) * (plot_bottom - PLOT_TOP);
        let plot_width = PLOT_RIGHT - PLOT_LEFT;
        let plot_height = plot_bottom - PLOT_TOP;

        let mut svg = String::new();
        let _ = writeln!(svg, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            svg,
            r#"<defs><clipPath id="plot-area"><rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{plot_width}" height="{plot_height}"/></clipPath></defs>"#
        );
        let _ = writeln!(
            svg,
            r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="28" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
            WIDTH / 2.0,
            escape(&self.title)
        );

        let _ = writeln!(svg, r#"<g class="grid" stroke-width="1">"#);
        for &v in &self.y_axis.minor {
            let _ = writeln!(
                svg,
                r##"<line x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{0:.1}" y2="{0:.1}" stroke="#f0f0f0"/>"##,
                y(v)
            );
        }
        for (v, _) in &self.y_axis.ticks {
            let _ = writeln!(
                svg,
                r##"<line x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{0:.1}" y2="{0:.1}" stroke="#d8d8d8"/>"##,
                y(*v)
            );
        }
        for (v, _) in &self.x_axis.ticks {
            let _ = writeln!(
                svg,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{PLOT_TOP}" y2="{plot_bottom}" stroke="#d8d8d8"/>"##,
                x(*v)
            );
        }
        let _ = writeln!(svg, "</g>");

        let _ = writeln!(svg, r#"<g class="axes">"#);
        let _ = writeln!(
            svg,
            r##"<rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{plot_width}" height="{plot_height}" fill="none" stroke="#333"/>"##
        );
        for (v, label) in &self.x_axis.ticks {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x(*v),
                plot_bottom + 18.0,
                escape(label)
            );
        }
        for (v, label) in &self.y_axis.ticks {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                PLOT_LEFT - 6.0,
                y(*v) + 4.0,
                escape(label)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (PLOT_LEFT + PLOT_RIGHT) / 2.0,
            plot_bottom + 44.0,
            escape(&self.x_axis.title)
        );
        let _ = writeln!(
            svg,
            r#"<text x="20" y="{0:.1}" text-anchor="middle" transform="rotate(-90 20 {0:.1})">{1}</text>"#,
            (PLOT_TOP + plot_bottom) / 2.0,
            escape(&self.y_axis.title)
        );
        let _ = writeln!(svg, "</g>");

        let mut any_point = false;
        for (i, run) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let _ = writeln!(
                svg,
                r#"<g class="series" data-run="{}" stroke="{colour}" fill="{colour}" clip-path="url(#plot-area)">"#,
                escape(&run.label)
            );
            let _ = writeln!(svg, "<title>{}</title>", escape(&run.label));
            for line in &run.lines {
                let points: Vec<(f64, f64)> = line
                    .points
                    .iter()
                    .filter(|(px, py)| px.is_finite() && py.is_finite())
                    .map(|&(px, py)| (x(px), y(py)))
                    .collect();
                any_point |= !points.is_empty();
                let dash = line
                    .dash
                    .map(|d| format!(r#" stroke-dasharray="{d}""#))
                    .unwrap_or_default();
                match points.as_slice() {
                    [] => {}
                    [(px, py)] => {
                        // A polyline of one point draws nothing.
                        let _ = writeln!(svg, r#"<circle cx="{px:.1}" cy="{py:.1}" r="3"/>"#);
                    }
                    _ => {
                        let coords: Vec<String> = points
                            .iter()
                            .map(|(px, py)| format!("{px:.1},{py:.1}"))
                            .collect();
                        let _ = writeln!(
                            svg,
                            r#"<polyline fill="none" stroke-width="1.8"{dash} points="{}"/>"#,
                            coords.join(" ")
                        );
                    }
                }
            }
            let _ = writeln!(svg, "</g>");
        }
        if !any_point {
            let _ = writeln!(
                svg,
                r##"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle" font-size="16" fill="#888">{}</text>"##,
                (PLOT_LEFT + PLOT_RIGHT) / 2.0,
                (PLOT_TOP + plot_bottom) / 2.0,
                escape(self.empty_text)
            );
        }

        let _ = writeln!(svg, r#"<g class="legend">"#);
        let mut row_y = PLOT_TOP + 10.0;
        for (i, run) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let _ = writeln!(
                svg,
                r#"<line x1="{LEGEND_LEFT}" x2="{:.1}" y1="{row_y:.1}" y2="{row_y:.1}" stroke="{colour}" stroke-width="3"/>"#,
                LEGEND_LEFT + 24.0
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                LEGEND_LEFT + 30.0,
                row_y + 4.0,
                escape(&shorten(&run.label, LEGEND_LABEL_CHARS_MAX))
            );
            row_y += LEGEND_ROW;
        }
        if !self.line_key.is_empty() {
            row_y += LEGEND_ROW / 2.0;
        }
        for (name, dash) in &self.line_key {
            let dash = dash
                .map(|d| format!(r#" stroke-dasharray="{d}""#))
                .unwrap_or_default();
            let _ = writeln!(
                svg,
                r##"<line x1="{LEGEND_LEFT}" x2="{:.1}" y1="{row_y:.1}" y2="{row_y:.1}" stroke="#555" stroke-width="2"{dash}/>"##,
                LEGEND_LEFT + 24.0
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                LEGEND_LEFT + 30.0,
                row_y + 4.0,
                escape(name)
            );
            row_y += LEGEND_ROW;
        }
        let _ = writeln!(svg, "</g>");
        let _ = writeln!(svg, "</svg>");
        svg
    }
}

/// `text` cut to `chars_max` characters, with an ellipsis when cut.
fn shorten(text: &str, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(chars_max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `text` with the five XML special characters escaped, for element text
/// and attribute values alike. Control characters XML 1.0 forbids are
/// dropped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(3), "99.9%");
        assert_eq!(percentile_label(5), "99.999%");
    }

    #[test]
    fn x_axis_follows_the_curves_depth() {
        let empty = latency_percentile_svg("t", &[]);
        assert!(empty.contains(">99.999%<") && !empty.contains(">99.9999%<"));
        let shallow = LatencySummary {
            samples: 10,
            mean: 1.0,
            p50: 1,
            p75: 1,
            p95: 1,
            p99: 1,
            p999: 1,
            p9999: 1,
            max: 1,
            curve: vec![(0.5, 1), (0.99, 2), (1.0, 3)],
        };
        let svg = latency_percentile_svg("t", &[("run".to_string(), &shallow)]);
        assert!(svg.contains(">99%<") && !svg.contains(">99.9%<"), "{svg}");
        // A curve to 1 - 10^-6, computed in floating point, ends on 99.9999%.
        let deep = LatencySummary {
            curve: vec![(0.5, 1), (1.0 - 10f64.powf(-60.0 / 10.0), 2)],
            ..shallow
        };
        let svg = latency_percentile_svg("t", &[("run".to_string(), &deep)]);
        assert!(svg.contains(">99.9999%<") && !svg.contains(">99.99999%<"));
    }

    #[test]
    fn nice_axes_hold_their_maximum() {
        for max in [0.3, 1.0, 7.0, 12.0, 99.0, 101.0, 123_456.0, 9.9e9] {
            let (top, step) = nice_axis(max, 1.0);
            assert!(top >= max, "{max}: top {top}");
            let steps = top / step;
            assert!((1.0..=10.0).contains(&steps), "{max}: {steps} steps");
        }
        assert_eq!(nice_axis(f64::NAN, 1000.0), (1000.0, 200.0));
        assert_eq!(nice_axis(0.0, 10.0), (10.0, 2.0));
    }

    #[test]
    fn escape_special_characters() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("x\u{1}y\nz"), "xy z");
    }

    #[test]
    fn shorten_cuts_long_labels() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
    }
}
