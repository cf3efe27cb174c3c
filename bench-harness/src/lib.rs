//! `shardmq-bench-harness`: the `shardmq-bench` binary and its workload files.
//!
//! Planned. It will run OpenMessaging-Benchmark-style workloads against a
//! broker through the SDK, measure latency without coordinated omission and
//! write reports to `perf-reports/`. Until the broker exists, the storage
//! benchmark lives in `storage/benches/` (binary `storage-bench`).
