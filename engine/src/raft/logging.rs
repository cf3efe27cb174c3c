//! raft-rs logs through `slog`; this forwards its records to `tracing`
//! (target `raft`), with the record's key-values and the logger's own
//! (`partition`, `raft_id`) as one formatted `kv` field. A record is only
//! formatted when its level is enabled, so raft's many debug records cost
//! a level check when debug is off.

use std::fmt::Write as _;

use shardmq_storage::PartitionId;
use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};

/// The `slog` drain that emits `tracing` events.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingDrain;

struct KvText(String);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{key}={val}");
        Ok(())
    }
}

fn enabled(level: Level) -> bool {
    match level {
        Level::Critical | Level::Error => tracing::enabled!(target: "raft", tracing::Level::ERROR),
        Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
        Level::Info => tracing::enabled!(target: "raft", tracing::Level::INFO),
        Level::Debug => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
        Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        if !enabled(record.level()) {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        let kv = kv.0;
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", %kv, "{msg}"),
            Level::Warning => tracing::warn!(target: "raft", %kv, "{msg}"),
            Level::Info => tracing::info!(target: "raft", %kv, "{msg}"),
            Level::Debug => tracing::debug!(target: "raft", %kv, "{msg}"),
            Level::Trace => tracing::trace!(target: "raft", %kv, "{msg}"),
        }
        Ok(())
    }
}

/// The logger given to a partition replica's `RawNode`.
pub fn raft_logger(partition: PartitionId, raft_id: u64) -> slog::Logger {
    slog::Logger::root(
        TracingDrain.fuse(),
        slog::o!("partition" => partition, "raft_id" => raft_id),
    )
}
