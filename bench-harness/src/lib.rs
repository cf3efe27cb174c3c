//! `shardmq-bench-harness`: benchmark binaries, their library and their
//! workload files.
//!
//! - `shardmq-storage-bench` (src/bin/shardmq-storage-bench.rs): synced
//!   appends against one `shardmq-storage` shard log on one pinned glommio
//!   executor — per partition, append one pre-built record batch, then
//!   `sync()`, in a loop — reporting MB/s, appends/s, append+sync latency
//!   percentiles and the group-commit counters (rounds, fdatasync calls per
//!   round, appends per round). `tools/storage-vs-fio.sh` runs it next to
//!   fio on the same filesystem; reports live in `perf-reports/`.
//! - `shardmq-bench` (src/bin/shardmq-bench.rs): `produce|consume|e2e`
//!   drive a running broker through the SDK; `run` runs an
//!   OpenMessaging-Benchmark-style workload file ([`workload`]) against
//!   shardmq and, with `--peer nats`, against NATS JetStream in the same
//!   run, and writes a report directory ([`report`]). With `replicas = 3`
//!   both run as 3-server clusters on loopback; idle workloads measure the
//!   servers at rest, failover workloads a SIGKILL of the busiest leader.
//!
//! The library: [`workload`] (workload files), [`schedule`] (the rate
//! limiter: open-loop send times), [`payload`] (values carrying their
//! intended send time, keys), [`stats`] (histograms, merging, process CPU
//! and memory), [`search`] (the max-rate search), [`driver`] (the `Driver`
//! trait, shardmq and NATS JetStream), [`measure`] (one measured run),
//! [`activity`] (what the servers and the harness did each second of it,
//! with [`prometheus`] reading a broker's metrics endpoint),
//! [`idle`] (servers at rest), [`failover`] (a leader killed while
//! producing), [`compare`] (best runs, ratios, the summary table),
//! [`procs`] (server processes the harness starts), [`deploy`] (the servers
//! of one side: one or a cluster) and [`runner`] (the `run` command).
//!
//! Invariants: latency is measured from the intended send time, never from
//! the moment a late producer got around to sending (no coordinated
//! omission); warm-up is never measured; every server the harness starts it
//! also stops; the harness depends on the broker only through the SDK, the
//! broker's command line and its HTTP endpoint, never on `engine` or
//! `storage` internals
//! (`shardmq-storage-bench` excepted, which measures storage alone).

pub mod activity;
pub mod compare;
pub mod deploy;
pub mod driver;
pub mod failover;
pub mod idle;
pub mod measure;
pub mod payload;
pub mod procs;
pub mod prometheus;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod search;
pub mod stats;
pub mod workload;
