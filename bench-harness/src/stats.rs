//! Latency histograms, their merging, and process CPU time.
//!
//! Each producer and consumer records into histograms of its own (no lock
//! on the send path); the runner merges them at the end of a run. Merging
//! is exact: hdrhistogram adds bucket counts, so the merged histogram is the
//! one a single recorder of every value would have built.

use hdrhistogram::Histogram;

/// Largest latency the histograms hold (1 hour in µs); larger values are
/// clamped to it.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Significant decimal digits the histograms keep.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// An empty microsecond histogram with the harness's bounds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Adds every histogram of `parts` into one.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut merged = new_histogram();
    for part in parts {
        // Same bounds everywhere, and values above the bound were clamped
        // when recorded, so adding cannot fail.
        merged
            .add(part)
            .expect("histograms with the harness's bounds merge");
    }
    merged
}

/// The latency histograms of one producer.
#[derive(Debug, Clone)]
pub struct ProducerHistograms {
    /// Intended send time to acknowledgement, µs.
    pub publish: Histogram<u64>,
    /// Actual send time minus intended send time, µs.
    pub delay: Histogram<u64>,
}

impl Default for ProducerHistograms {
    fn default() -> Self {
        Self {
            publish: new_histogram(),
            delay: new_histogram(),
        }
    }
}

/// User plus system CPU seconds of a process, from `/proc/<pid>/stat`.
/// `None` when the process is gone or the file is unreadable.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_seconds_from_stat(&stat, clock_ticks_per_second())
}

/// Resident memory of a process in bytes, from `/proc/<pid>/statm` (its
/// second field, in pages). `None` when the process is gone.
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    rss_bytes_from_statm(&statm, page_bytes())
}

/// The resident set (field 2, pages) of a `/proc/<pid>/statm` line, in
/// bytes.
pub fn rss_bytes_from_statm(statm: &str, page_bytes: u64) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_bytes)
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// CPU seconds of this process.
pub fn own_cpu_seconds() -> Option<f64> {
    process_cpu_seconds(std::process::id())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Parses utime + stime (fields 14 and 15) from a `/proc/<pid>/stat` line.
/// The command name (field 2) is in parentheses and may hold spaces, so
/// fields are counted after its closing parenthesis.
pub fn cpu_seconds_from_stat(stat: &str, ticks_per_second: f64) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first, so utime (14) is the
    // 12th and stime (15) the 13th.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values spread over several decades, as latencies are.
    fn values(seed: u64, n: usize) -> Vec<u64> {
        let mut rng = crate::payload::XorShift::new(seed);
        (0..n)
            .map(|_| {
                let r = rng.next_u64();
                let decade = 10u64.pow((r % 7) as u32);
                1 + (r >> 8) % (decade * 10)
            })
            .collect()
    }

    #[test]
    fn merged_histogram_equals_one_histogram_of_all_values() {
        let producers: Vec<Vec<u64>> = (1..=5).map(|s| values(s, 10_000 + s as usize)).collect();
        let mut parts = Vec::new();
        let mut single = new_histogram();
        for vals in &producers {
            let mut h = new_histogram();
            for &v in vals {
                h.saturating_record(v);
                single.saturating_record(v);
            }
            parts.push(h);
        }
        // One value beyond the bound, clamped the same way in both.
        parts[0].saturating_record(LATENCY_MAX_US * 10);
        single.saturating_record(LATENCY_MAX_US * 10);

        let merged = merge(&parts);
        assert_eq!(merged, single);
        assert_eq!(merged.len(), single.len());
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(
                merged.value_at_quantile(q),
                single.value_at_quantile(q),
                "q {q}"
            );
        }
        assert_eq!(merged.max(), single.max());
        assert_eq!(merged.min(), single.min());
        assert!((merged.mean() - single.mean()).abs() < 1e-9);
    }

    #[test]
    fn merging_nothing_is_empty() {
        let merged = merge(std::iter::empty());
        assert!(merged.is_empty());
        assert_eq!(merge(&[new_histogram(), new_histogram()]).len(), 0);
    }

    #[test]
    fn statm_resident_pages() {
        assert_eq!(
            rss_bytes_from_statm("12345 678 90 1 0 2 0\n", 4096),
            Some(678 * 4096)
        );
        assert_eq!(rss_bytes_from_statm("12345", 4096), None);
        assert!(process_rss_bytes(std::process::id()).is_some_and(|b| b > 0));
    }

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "1234 (my proc) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0 100 0 0";
        assert_eq!(cpu_seconds_from_stat(line, 100.0), Some(4.0));
        assert_eq!(cpu_seconds_from_stat("garbage", 100.0), None);
        assert!(own_cpu_seconds().is_some());
    }
}
