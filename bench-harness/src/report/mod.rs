//! Benchmark reports: the data ([`model`]) and its renderings.
//!
//! A report directory `perf-reports/<date>-<workload>/` holds
//! `report.json` (the [`model::Report`], pretty-printed), `report.md`
//! ([`markdown`]) and SVG plots ([`svg`]): publish and end-to-end latency by
//! percentile, throughput over time and publish latency over time for
//! stream runs; acknowledgements around the kill and the per-partition
//! failover times for a failover (an idle report has tables only). `perf-reports/README.md` indexes the
//! reports, newest first ([`index`]).
//!
//! Rendering is pure (a `Report` in, text out) and never fails on odd
//! figures: NaN, empty histograms and zero durations render as "n/a",
//! zeros or empty plots. Only writing the files can fail. [`detect_machine`],
//! [`git_commit`] and [`now_rfc3339`] gather what a report records about
//! where and when it ran.

mod clock;
pub mod format;
pub mod index;
mod machine;
pub mod markdown;
pub mod model;
pub mod svg;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use clock::{now_rfc3339, rfc3339_from_unix_secs};
pub use index::update_index;
pub use machine::{detect_machine, git_commit};

use model::Report;

/// File name of the serialized report.
pub const REPORT_JSON: &str = "report.json";

/// Bound on the characters of the workload part of a report directory's
/// name.
const DIR_WORKLOAD_CHARS_MAX: usize = 64;

/// Writes `<reports_dir>/<YYYY-MM-DD>-<workload>/` with every file of the
/// report (`report.json`, `report.md` and the SVG plots, replacing any
/// previous ones) and returns that directory.
pub fn write_report_dir(report: &Report, reports_dir: &Path) -> io::Result<PathBuf> {
    let dir = reports_dir.join(report_dir_name(report));
    write_report_files(report, &dir)?;
    Ok(dir)
}

/// Writes every file of the report into `dir` itself, whatever its name
/// (a report directory renamed after it was written is rendered in place).
pub fn write_report_files(report: &Report, dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir).map_err(|e| with_path(e, "creating", dir))?;
    let json = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    let mut files = vec![
        (REPORT_JSON, json + "\n"),
        (markdown::REPORT_MD, markdown::render_markdown(report)),
    ];
    if !markdown::is_special(report) {
        files.extend([
            (svg::PUBLISH_LATENCY_SVG, svg::publish_latency_svg(report)),
            (
                svg::END_TO_END_LATENCY_SVG,
                svg::end_to_end_latency_svg(report),
            ),
            (svg::THROUGHPUT_SVG, svg::throughput_svg(report)),
            (
                svg::LATENCY_OVER_TIME_SVG,
                svg::latency_over_time_svg(report),
            ),
        ]);
    }
    if !report.failover.is_empty() {
        files.extend([
            (
                svg::FAILOVER_TIMELINE_SVG,
                svg::failover_timeline_svg(report),
            ),
            (svg::FAILOVER_TIMES_SVG, svg::failover_times_svg(report)),
        ]);
    }
    for (name, text) in files {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|e| with_path(e, "writing", &path))?;
    }
    Ok(())
}

/// `<YYYY-MM-DD>-<workload>`: the date the report started and its workload
/// name, with anything but letters, digits, `-`, `_` and `.` turned into
/// `-` so the name is one path component.
pub fn report_dir_name(report: &Report) -> String {
    let date = report
        .started_at
        .get(..10)
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
        .unwrap_or("undated");
    let workload: String = report
        .workload
        .chars()
        .take(DIR_WORKLOAD_CHARS_MAX)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let workload = workload.trim_matches('.');
    if workload.is_empty() {
        format!("{date}-workload")
    } else {
        format!("{date}-{workload}")
    }
}

fn with_path(e: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}
