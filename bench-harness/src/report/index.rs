//! `perf-reports/README.md`, the index of reports: a markdown table
//! `| date | report | headline |`, newest first.
//!
//! The index is also edited by hand, so [`update_index`] touches only one
//! row: it drops any row linking the same report directory and inserts the
//! new one above the first row of the same or an earlier date. Every other
//! byte of the file stays as it was.

use std::fs;
use std::io;
use std::path::Path;

use super::format;
use super::markdown::{self, REPORT_MD};
use super::model::{DriverRun, Report};

/// File name of the index in the reports directory.
pub const INDEX_FILE: &str = "README.md";

/// What a new index starts with, before its first row.
const NEW_INDEX_HEADER: &str = "# Performance reports\n\
\n\
One directory per report, `YYYY-MM-DD-<workload>/`, holding `report.md`\n\
(what was run, on what, the figures and what they mean), `report.json`\n\
(the same figures, machine-readable) and the plots. Newest first.\n\
\n\
| date | report | headline |\n\
| --- | --- | --- |\n";

/// The one-line summary of `report` for the index: for a failover, each
/// driver's time to the first acknowledgement on a new leader; for an idle
/// workload, each server's CPU and memory; else the comparison's headline,
/// or without a peer, the best shardmq run's produce rate and publish p99.
pub fn headline(report: &Report) -> String {
    if !report.failover.is_empty() {
        return report
            .failover
            .iter()
            .map(|f| {
                format!(
                    "{} {}: kill -9 of the leader of {} of {} partitions, first ack on the new leader p50 {} ms, max {} ms",
                    compare_name(&f.driver),
                    f.mode,
                    f.killed_led_partitions,
                    f.partitions,
                    format::fixed(f.first_ack_p50_ms, 0),
                    format::fixed(f.first_ack_max_ms, 0),
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    if !report.idle.is_empty() {
        return report
            .idle
            .iter()
            .map(|i| {
                let cpu: Vec<String> = i
                    .processes
                    .iter()
                    .map(|p| format!("{}%", format::fixed(p.cpu_percent_of_core, 2)))
                    .collect();
                let rss: Vec<String> = i
                    .processes
                    .iter()
                    .map(|p| format::binary_bytes(p.rss_bytes_end))
                    .collect();
                format!(
                    "{} {}: {} idle partitions, CPU {} of a core, RSS {}",
                    compare_name(&i.driver),
                    i.mode,
                    format::count(i.partitions),
                    cpu.join(" / "),
                    rss.join(" / ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    if let Some(comparison) = &report.comparison {
        if !comparison.headline.trim().is_empty() {
            return comparison.headline.clone();
        }
    }
    let best = |runs: &mut dyn Iterator<Item = &DriverRun>| {
        runs.max_by(|a, b| {
            a.throughput
                .produce_msg_per_s
                .total_cmp(&b.throughput.produce_msg_per_s)
        })
        .cloned()
    };
    let run = best(&mut report.runs.iter().filter(|r| r.driver == "shardmq"))
        .or_else(|| best(&mut report.runs.iter()));
    match run {
        Some(run) => format!(
            "{}: {} msg/s produced, publish p99 {} µs",
            run.label(),
            format::msg_rate(run.throughput.produce_msg_per_s),
            format::micros(run.publish_latency.p99)
        ),
        None => "no runs".to_string(),
    }
}

fn compare_name(driver: &str) -> &str {
    crate::compare::display_name(driver)
}

/// The index row for `report` stored in the directory `dir_name` (relative
/// to the index).
pub fn index_row(report: &Report, dir_name: &str) -> String {
    format!(
        "| {} | [{}]({}/{}) | {} |",
        report_date(report),
        link_text(&report.workload),
        dir_name,
        REPORT_MD,
        markdown::cell(&headline(report))
    )
}

/// Adds (or replaces) the row for `report_dir` in
/// `<reports_dir>/README.md`, creating the file when missing.
pub fn update_index(reports_dir: &Path, report_dir: &Path, report: &Report) -> io::Result<()> {
    let dir_name = report_dir
        .strip_prefix(reports_dir)
        .ok()
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| report_dir.file_name().map(Path::new))
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("report directory {} has no name", report_dir.display()),
            )
        })?;
    let index_path = reports_dir.join(INDEX_FILE);
    let existing = match fs::read_to_string(&index_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("reading {}: {e}", index_path.display()),
            ))
        }
    };
    let row = index_row(report, &dir_name);
    let updated = match existing {
        Some(text) => insert_row(&text, &row, &report_date(report), &dir_name),
        None => format!("{NEW_INDEX_HEADER}{row}\n"),
    };
    fs::write(&index_path, updated)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", index_path.display())))
}

/// `index` with `row` (dated `date`, linking `dir_name`) in its table:
/// rows linking `dir_name` removed, `row` placed above the first row dated
/// `date` or earlier, or last. An index without a table gets one at its
/// end.
pub fn insert_row(index: &str, row: &str, date: &str, dir_name: &str) -> String {
    let lines: Vec<&str> = index.split_inclusive('\n').collect();
    let Some(separator) = lines
        .iter()
        .enumerate()
        .position(|(i, line)| i > 0 && is_table_line(lines[i - 1]) && is_separator(line))
    else {
        let mut out = index.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str("| date | report | headline |\n| --- | --- | --- |\n");
        out.push_str(row);
        out.push('\n');
        return out;
    };
    let newline = if lines[separator].ends_with("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let rows_start = separator + 1;
    let rows_end = lines[rows_start..]
        .iter()
        .position(|line| !is_table_line(line))
        .map_or(lines.len(), |n| rows_start + n);

    let mut out = String::with_capacity(index.len() + row.len() + 2);
    for line in &lines[..rows_start] {
        out.push_str(line);
    }
    let mut inserted = false;
    let mut last_kept: Option<&str> = None;
    for line in &lines[rows_start..rows_end] {
        if links_dir(line, dir_name) {
            continue;
        }
        if !inserted && row_date(line).is_some_and(|d| d <= date) {
            out.push_str(row);
            out.push_str(newline);
            inserted = true;
        }
        out.push_str(line);
        last_kept = Some(line);
    }
    if !inserted {
        // The last row of a file may lack its line break.
        if last_kept.is_some_and(|l| !l.ends_with('\n')) {
            out.push_str(newline);
        }
        out.push_str(row);
        let table_is_last = rows_end == lines.len();
        if !table_is_last || index.ends_with('\n') || last_kept.is_none() {
            out.push_str(newline);
        }
    }
    for line in &lines[rows_end..] {
        out.push_str(line);
    }
    out
}

fn is_table_line(line: &str) -> bool {
    line.trim_start().starts_with('|')
}

fn is_separator(line: &str) -> bool {
    let line = line.trim();
    line.starts_with('|')
        && line.contains('-')
        && line
            .chars()
            .all(|c| matches!(c, '|' | '-' | ':' | ' ' | '\t'))
}

/// The first cell of a table row, trimmed.
fn row_date(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('|')?;
    let (first, _) = rest.split_once('|')?;
    Some(first.trim())
}

/// Whether a row links into the directory `dir_name`.
fn links_dir(line: &str, dir_name: &str) -> bool {
    let dir_name = dir_name.trim_end_matches('/');
    [
        format!("]({dir_name}/"),
        format!("]({dir_name})"),
        format!("](./{dir_name}/"),
        format!("](./{dir_name})"),
    ]
    .iter()
    .any(|link| line.contains(link.as_str()))
}

/// YYYY-MM-DD of the report's start, or "undated".
fn report_date(report: &Report) -> String {
    let date = report.started_at.get(..10).unwrap_or("");
    let well_formed = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if well_formed {
        date.to_string()
    } else {
        "undated".to_string()
    }
}

/// The workload name as link text: brackets and pipes would end the link or
/// the cell.
fn link_text(workload: &str) -> String {
    let text: String = workload
        .chars()
        .map(|c| match c {
            '[' | ']' | '|' | '\n' | '\r' => ' ',
            c => c,
        })
        .collect();
    if text.trim().is_empty() {
        "report".to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "# Reports\n\nIntro.\n\n\
| date | report | headline |\n\
| --- | --- | --- |\n\
| 2026-11-25 | [b](2026-11-25-b/report.md) | B |\n\
| 2026-11-20 | [a](2026-11-20-a/report.md) | A |\n\
\nTrailing text.\n";

    #[test]
    fn inserts_above_same_date_and_keeps_the_rest() {
        let row = "| 2026-11-25 | [c](2026-11-25-c/report.md) | C |";
        let out = insert_row(INDEX, row, "2026-11-25", "2026-11-25-c");
        let expected = INDEX.replace(
            "| 2026-11-25 | [b]",
            "| 2026-11-25 | [c](2026-11-25-c/report.md) | C |\n| 2026-11-25 | [b]",
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn oldest_goes_last_and_newest_first() {
        let old = "| 2026-01-01 | [z](2026-01-01-z/report.md) | Z |";
        let out = insert_row(INDEX, old, "2026-01-01", "2026-01-01-z");
        assert_eq!(
            out,
            INDEX.replace(
                "| A |\n",
                "| A |\n| 2026-01-01 | [z](2026-01-01-z/report.md) | Z |\n"
            )
        );
        let new = "| 2027-01-01 | [n](2027-01-01-n/report.md) | N |";
        let out = insert_row(INDEX, new, "2027-01-01", "2027-01-01-n");
        assert_eq!(
            out,
            INDEX.replace(
                "| --- | --- | --- |\n",
                "| --- | --- | --- |\n| 2027-01-01 | [n](2027-01-01-n/report.md) | N |\n"
            )
        );
    }

    #[test]
    fn replaces_the_row_of_the_same_directory() {
        let row = "| 2026-11-20 | [a](2026-11-20-a/report.md) | A2 |";
        let out = insert_row(INDEX, row, "2026-11-20", "2026-11-20-a");
        assert_eq!(out, INDEX.replace("| A |", "| A2 |"));
        // A directory whose name extends another's is a different report.
        let row = "| 2026-11-20 | [a2](2026-11-20-a2/report.md) | X |";
        let out = insert_row(INDEX, row, "2026-11-20", "2026-11-20-a2");
        assert!(out.contains("| A |\n"), "{out}");
        assert!(out.contains("| X |\n"), "{out}");
    }

    #[test]
    fn table_at_end_without_final_newline() {
        let index = "| date | report | headline |\n| --- | --- | --- |\n| 2026-11-20 | [a](a/report.md) | A |";
        let row = "| 2026-10-01 | [o](o/report.md) | O |";
        let out = insert_row(index, row, "2026-10-01", "o");
        assert_eq!(out, format!("{index}\n{row}"));
        let empty_table = "| date | report | headline |\n| --- | --- | --- |\n";
        let out = insert_row(empty_table, row, "2026-10-01", "o");
        assert_eq!(out, format!("{empty_table}{row}\n"));
    }

    #[test]
    fn index_without_table_gets_one() {
        let out = insert_row("# Reports\n", "| d | r | h |", "d", "r");
        assert_eq!(
            out,
            "# Reports\n\n| date | report | headline |\n| --- | --- | --- |\n| d | r | h |\n"
        );
    }

    #[test]
    fn crlf_files_keep_crlf() {
        let index = "| date | report | headline |\r\n| --- | --- | --- |\r\n| 2026-11-20 | [a](a/report.md) | A |\r\n";
        let row = "| 2026-11-21 | [b](b/report.md) | B |";
        let out = insert_row(index, row, "2026-11-21", "b");
        assert_eq!(
            out,
            index.replace("| --- |\r\n", &format!("| --- |\r\n{row}\r\n"))
        );
    }
}
