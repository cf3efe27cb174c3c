//! Counters of one shard log. Shard view; owned by the shard's log.

use hdrhistogram::Histogram;

/// Live counters kept by the writer.
#[derive(Debug)]
pub(crate) struct Stats {
    pub appends: u64,
    pub append_bytes: u64,
    pub sync_rounds: u64,
    pub fdatasync_calls: u64,
    pub write_calls: u64,
    pub segments_rolled: u64,
    pub segments_deleted: u64,
    pub segments_recycled: u64,
    pub segments_reused: u64,
    pub entries_rewritten: u64,
    pub corruptions: u64,
    /// Latency of one fdatasync stage, microseconds.
    pub sync_latency_us: Histogram<u64>,
    /// Latency of one segment write, microseconds.
    pub write_latency_us: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            appends: 0,
            append_bytes: 0,
            sync_rounds: 0,
            fdatasync_calls: 0,
            write_calls: 0,
            segments_rolled: 0,
            segments_deleted: 0,
            segments_recycled: 0,
            segments_reused: 0,
            entries_rewritten: 0,
            corruptions: 0,
            // 1 µs to 60 s, 3 significant digits.
            sync_latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("static histogram bounds are valid"),
            write_latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("static histogram bounds are valid"),
        }
    }
}

/// A copy of the counters, for metrics and benchmarks.
#[derive(Debug, Clone)]
pub struct StatsSnapshot {
    /// Records appended (entries and metadata records).
    pub appends: u64,
    /// Bytes appended, headers included.
    pub append_bytes: u64,
    /// Group-commit rounds completed.
    pub sync_rounds: u64,
    /// fdatasync calls issued (data and directory).
    pub fdatasync_calls: u64,
    /// Segment write calls issued.
    pub write_calls: u64,
    pub segments_rolled: u64,
    pub segments_deleted: u64,
    /// Segment files the collector put in the pool of recycled files
    /// instead of deleting them.
    pub segments_recycled: u64,
    /// Segments started in a recycled file.
    pub segments_reused: u64,
    pub entries_rewritten: u64,
    /// Corrupt records found on read or on recovery.
    pub corruptions: u64,
    /// Latency of one fdatasync stage, microseconds.
    pub sync_latency_us: Histogram<u64>,
    /// Latency of one segment write, microseconds.
    pub write_latency_us: Histogram<u64>,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            appends: self.appends,
            append_bytes: self.append_bytes,
            sync_rounds: self.sync_rounds,
            fdatasync_calls: self.fdatasync_calls,
            write_calls: self.write_calls,
            segments_rolled: self.segments_rolled,
            segments_deleted: self.segments_deleted,
            segments_recycled: self.segments_recycled,
            segments_reused: self.segments_reused,
            entries_rewritten: self.entries_rewritten,
            corruptions: self.corruptions,
            sync_latency_us: self.sync_latency_us.clone(),
            write_latency_us: self.write_latency_us.clone(),
        }
    }
}
