//! `shardmq-bench-harness`: benchmark binaries and their workload files.
//!
//! - `shardmq-storage-bench` (src/bin/shardmq-storage-bench.rs): synced
//!   appends against one `shardmq-storage` shard log on one pinned glommio
//!   executor — per partition, append one pre-built record batch, then
//!   `sync()`, in a loop — reporting MB/s, appends/s, append+sync latency
//!   percentiles and the group-commit counters (rounds, fdatasync calls per
//!   round, appends per round). `tools/storage-vs-fio.sh` runs it next to
//!   fio on the same filesystem; reports live in `perf-reports/`.
//! - `shardmq-bench` (planned): OpenMessaging-Benchmark-style workloads
//!   against a broker through the SDK, measuring latency without coordinated
//!   omission and writing reports to `perf-reports/`.

pub mod report;
