//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::future::Future;

use glommio::{LocalExecutorBuilder, Placement};
use shardmq_schema::batch::BatchBuilder;
use shardmq_storage::LogConfig;

/// Runs `f` on a fresh glommio executor with a small registered-memory pool
/// (the test machine's memlock limit is small).
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor starts")
        .run(f())
}

/// A record batch of `records` records with `value_bytes`-byte values, the
/// first at `timestamp_ms` and each next one a millisecond later.
pub fn batch(records: usize, value_bytes: usize, timestamp_ms: i64, seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = BatchBuilder::new(&mut out, 0, timestamp_ms);
    let value: Vec<u8> = (0..value_bytes)
        .map(|i| seed.wrapping_add(i as u8))
        .collect();
    for r in 0..records {
        let key = [seed, r as u8];
        b.append(timestamp_ms + r as i64, Some(&key), Some(&value), &[]);
    }
    b.finish();
    out
}

/// What storage stores for `payload` at `base_offset` in `term`.
pub fn stamped(payload: &[u8], base_offset: u64, term: u64) -> Vec<u8> {
    let mut v = payload.to_vec();
    shardmq_schema::batch::stamp(&mut v, base_offset as i64, term as i32);
    v
}

/// A configuration with small segments so tests cross many boundaries.
pub fn small_config(dir: &std::path::Path) -> LogConfig {
    let mut cfg = LogConfig::new(dir);
    cfg.segment_bytes = 64 << 10;
    cfg.write_buffer_bytes = 16 << 10;
    cfg.entry_bytes_max = 16 << 10;
    cfg
}
