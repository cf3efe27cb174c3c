//! Latency histograms, their merging, and process CPU time.
//!
//! Each producer and consumer records into histograms of its own (no lock
//! on the send path); the runner merges them at the end of a run. Merging
//! is exact: hdrhistogram adds bucket counts, so the merged histogram is the
//! one a single recorder of every value would have built.

use std::time::Duration;

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
    /// `publish` per bucket of intended send time.
    pub publish_buckets: LatencyBuckets,
    /// The largest `delay` per bucket of intended send time.
    pub delay_max: MaxBuckets,
}

/// Narrowest latency-over-time bucket: fine enough to separate a 10 ms
/// stall from its neighbours, coarse enough for a p99 of its own at a few
/// thousand msg/s.
pub const LATENCY_BUCKET_WIDTH_MIN: Duration = Duration::from_millis(100);

/// Most latency-over-time buckets of one run: a longer measured period
/// gets wider buckets, so a recorder's memory stays bounded (a bucket's
/// histogram holds about 13 KB).
pub const LATENCY_BUCKETS_MAX: u64 = 1_200;

/// Significant decimal digits of a bucket's histogram: 1 % is plenty for
/// telling spikes apart and keeps each bucket small.
const BUCKET_SIGNIFICANT_DIGITS: u8 = 2;

/// The bucket width for a measured period of `measured`:
/// [`LATENCY_BUCKET_WIDTH_MIN`], or a multiple of it when the period would
/// need more than [`LATENCY_BUCKETS_MAX`] buckets.
pub fn latency_bucket_width(measured: Duration) -> Duration {
    let min_ns = LATENCY_BUCKET_WIDTH_MIN.as_nanos() as u64;
    let needed_ns = (measured.as_nanos() as u64).div_ceil(LATENCY_BUCKETS_MAX);
    Duration::from_nanos(needed_ns.div_ceil(min_ns).max(1) * min_ns)
}

/// One bucket of [`LatencyBuckets`]: its histogram and exact max.
#[derive(Debug, Clone)]
struct Bucket {
    histogram: Histogram<u32>,
    max: u64,
}

impl Bucket {
    fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, LATENCY_MAX_US, BUCKET_SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
            max: 0,
        }
    }
}

/// Latency in µs per bucket of time into the measured period (the time a
/// value is filed under is its intended send time, not when it was
/// measured), for the latency-over-time plot.
///
/// Every recorder (producer, ack collector, consumer) keeps its own and
/// they are merged at the end, like the whole-run histograms. The slots
/// for every bucket are allocated up front; a bucket's histogram is
/// allocated at its first value, so recording allocates at most once per
/// bucket, never per value. Offsets past the last bucket go into it (the
/// measured period ends there; rounding is the only way to get past it).
#[derive(Debug, Clone)]
pub struct LatencyBuckets {
    width_ns: u64,
    buckets: Vec<Option<Bucket>>,
}

impl LatencyBuckets {
    /// Empty buckets of `width` covering `measured`.
    pub fn new(width: Duration, measured: Duration) -> Self {
        let width_ns = (width.as_nanos() as u64).max(1);
        let count = (measured.as_nanos() as u64).div_ceil(width_ns).max(1);
        Self {
            width_ns,
            buckets: vec![None; count as usize],
        }
    }

    /// The bucket width.
    pub fn width(&self) -> Duration {
        Duration::from_nanos(self.width_ns)
    }

    /// Files `us` under the bucket of `offset` into the measured period.
    pub fn record(&mut self, offset: Duration, us: u64) {
        let index = bucket_index(offset, self.width_ns, self.buckets.len());
        let bucket = self.buckets[index].get_or_insert_with(Bucket::new);
        bucket.histogram.saturating_record(us);
        bucket.max = bucket.max.max(us);
    }

    /// Adds `other`'s values (same width; extra buckets of a longer one
    /// are kept).
    pub fn add(&mut self, other: &LatencyBuckets) {
        debug_assert_eq!(self.width_ns, other.width_ns, "buckets of one width");
        if other.buckets.len() > self.buckets.len() {
            self.buckets.resize(other.buckets.len(), None);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            let Some(theirs) = theirs else { continue };
            match mine {
                Some(mine) => {
                    // Same bounds, values clamped when recorded: adding
                    // cannot fail.
                    mine.histogram
                        .add(&theirs.histogram)
                        .expect("bucket histograms with one set of bounds merge");
                    mine.max = mine.max.max(theirs.max);
                }
                None => *mine = Some(theirs.clone()),
            }
        }
    }

    /// The non-empty buckets in time order, latencies in µs.
    pub fn summaries(&self) -> Vec<BucketSummary> {
        self.buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let b = b.as_ref().filter(|b| !b.histogram.is_empty())?;
                Some(BucketSummary {
                    start: Duration::from_nanos(self.width_ns * i as u64),
                    count: b.histogram.len(),
                    p50: b.histogram.value_at_quantile(0.50),
                    p99: b.histogram.value_at_quantile(0.99),
                    max: b.max,
                })
            })
            .collect()
    }
}

/// The figures of one non-empty bucket of [`LatencyBuckets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSummary {
    /// Offset of the bucket's start into the measured period.
    pub start: Duration,
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    /// Exact (not rounded to the histogram's precision).
    pub max: u64,
}

/// The largest value per bucket of time, for figures where only the worst
/// matters (how late the producers sent). A `Vec<u64>` allocated up front.
#[derive(Debug, Clone)]
pub struct MaxBuckets {
    width_ns: u64,
    max: Vec<u64>,
}

impl MaxBuckets {
    /// Zeroed buckets of `width` covering `measured`.
    pub fn new(width: Duration, measured: Duration) -> Self {
        let width_ns = (width.as_nanos() as u64).max(1);
        let count = (measured.as_nanos() as u64).div_ceil(width_ns).max(1);
        Self {
            width_ns,
            max: vec![0; count as usize],
        }
    }

    /// Raises the max of the bucket of `offset` to `value`.
    pub fn record(&mut self, offset: Duration, value: u64) {
        let index = bucket_index(offset, self.width_ns, self.max.len());
        self.max[index] = self.max[index].max(value);
    }

    /// Raises every bucket to `other`'s max.
    pub fn add(&mut self, other: &MaxBuckets) {
        if other.max.len() > self.max.len() {
            self.max.resize(other.max.len(), 0);
        }
        for (mine, theirs) in self.max.iter_mut().zip(&other.max) {
            *mine = (*mine).max(*theirs);
        }
    }

    /// The max of the bucket starting at `start` (0 when none).
    pub fn at(&self, start: Duration) -> u64 {
        let index = (start.as_nanos() as u64 / self.width_ns) as usize;
        self.max.get(index).copied().unwrap_or(0)
    }
}

fn bucket_index(offset: Duration, width_ns: u64, count: usize) -> usize {
    ((offset.as_nanos() as u64 / width_ns) as usize).min(count - 1)
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

/// Nanoseconds the threads of process `pid` have spent runnable but
/// waiting for a CPU, summed over its threads (the second field of each
/// `/proc/<pid>/task/<tid>/schedstat`): the time the scheduler kept it
/// from running. Threads that exited are no longer counted, so the sum
/// can shrink between two readings. `None` when the process is gone or
/// the kernel keeps no schedstat.
pub fn process_runqueue_wait_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    let mut any = false;
    for task in tasks.flatten() {
        let mut path = task.path();
        path.push("schedstat");
        // A thread may exit between the listing and the read.
        if let Some(wait) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|line| runqueue_wait_ns_from_schedstat(&line))
        {
            total += wait;
            any = true;
        }
    }
    any.then_some(total)
}

/// The run-queue wait (second field, ns) of a `schedstat` line: "time on
/// a CPU (ns), time waiting on a run queue (ns), timeslices run".
pub fn runqueue_wait_ns_from_schedstat(line: &str) -> Option<u64> {
    line.split_whitespace().nth(1)?.parse().ok()
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
    fn bucket_width_is_100_ms_until_the_buckets_would_be_too_many() {
        let ms = |ms: u64| Duration::from_millis(ms);
        assert_eq!(latency_bucket_width(Duration::from_secs(3)), ms(100));
        assert_eq!(latency_bucket_width(Duration::from_secs(120)), ms(100));
        assert_eq!(latency_bucket_width(Duration::from_secs(121)), ms(200));
        assert_eq!(latency_bucket_width(Duration::from_secs(600)), ms(500));
        assert_eq!(latency_bucket_width(Duration::ZERO), ms(100));
        for secs in [1, 59, 121, 599, 3_601] {
            let measured = Duration::from_secs(secs);
            let width = latency_bucket_width(measured);
            let count = measured.as_nanos().div_ceil(width.as_nanos());
            assert!(
                count <= u128::from(LATENCY_BUCKETS_MAX),
                "{secs} s: {count}"
            );
        }
    }

    #[test]
    fn merged_buckets_equal_one_recorder_of_every_value() {
        let width = Duration::from_millis(100);
        let measured = Duration::from_secs(2);
        let mut single = LatencyBuckets::new(width, measured);
        let mut parts: Vec<LatencyBuckets> = (0..3)
            .map(|_| LatencyBuckets::new(width, measured))
            .collect();
        for (seed, part) in parts.iter_mut().enumerate() {
            let mut rng = crate::payload::XorShift::new(seed as u64 + 1);
            for v in values(seed as u64 + 10, 5_000) {
                // Offsets over the whole period, a few past its end.
                let offset = Duration::from_micros(rng.next_u64() % 2_100_000);
                part.record(offset, v);
                single.record(offset, v);
            }
        }
        let mut merged = LatencyBuckets::new(width, measured);
        for part in &parts {
            merged.add(part);
        }
        let summaries = merged.summaries();
        assert_eq!(summaries, single.summaries());
        assert_eq!(summaries.len(), 20, "every bucket got values");
        assert_eq!(summaries.iter().map(|b| b.count).sum::<u64>(), 15_000);
        for (i, b) in summaries.iter().enumerate() {
            assert_eq!(b.start, width * i as u32);
            assert!(b.p50 <= b.p99 && b.p99 <= b.max, "{b:?}");
        }
    }

    #[test]
    fn buckets_hold_their_own_values() {
        let width = Duration::from_millis(100);
        let mut b = LatencyBuckets::new(width, Duration::from_secs(1));
        assert!(b.summaries().is_empty());
        // Bucket 2 gets a spike, bucket 5 a steady 250 µs; the others
        // none. (Values below 256 are held exactly at 2 digits.)
        for _ in 0..99 {
            b.record(Duration::from_millis(250), 200);
        }
        b.record(Duration::from_millis(299), 123_456);
        for _ in 0..10 {
            b.record(Duration::from_millis(500), 250);
        }
        let s = b.summaries();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].start, Duration::from_millis(200));
        assert_eq!((s[0].count, s[0].p50, s[0].max), (100, 200, 123_456));
        assert_eq!(s[0].p99, 200, "one value in 100 is above the p99");
        assert_eq!(s[1].start, Duration::from_millis(500));
        assert_eq!(
            (s[1].count, s[1].p50, s[1].p99, s[1].max),
            (10, 250, 250, 250)
        );

        // A merge into an empty set copies; maxima merge by bucket.
        let mut empty = LatencyBuckets::new(width, Duration::from_secs(1));
        empty.add(&b);
        assert_eq!(empty.summaries(), s);
        let mut delay = MaxBuckets::new(width, Duration::from_secs(1));
        let mut other = MaxBuckets::new(width, Duration::from_secs(1));
        delay.record(Duration::from_millis(250), 7);
        other.record(Duration::from_millis(210), 9);
        other.record(Duration::from_millis(5_000), 3);
        delay.add(&other);
        assert_eq!(delay.at(Duration::from_millis(200)), 9);
        assert_eq!(
            delay.at(Duration::from_millis(900)),
            3,
            "past the end: last"
        );
        assert_eq!(delay.at(Duration::ZERO), 0);
        assert_eq!(delay.at(Duration::from_secs(60)), 0);
    }

    #[test]
    fn schedstat_wait_is_the_second_field() {
        assert_eq!(
            runqueue_wait_ns_from_schedstat("104020 1656288 2\n"),
            Some(1_656_288)
        );
        assert_eq!(runqueue_wait_ns_from_schedstat("104020"), None);
        assert_eq!(runqueue_wait_ns_from_schedstat("a b c"), None);
        // This process has threads, each with a schedstat (where the
        // kernel keeps them at all).
        if std::path::Path::new("/proc/self/schedstat").exists() {
            assert!(process_runqueue_wait_ns(std::process::id()).is_some());
        }
        assert_eq!(process_runqueue_wait_ns(u32::MAX), None);
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
