//! 1,000 partitions on one shard appending concurrently through the
//! group-commit writer: every append is durable and read back after a
//! reopen, and sync rounds are shared across partitions; with rounds
//! pipelined (the default) and with rounds written through when idle.

mod common;

use std::rc::Rc;

use common::{batch, run, stamped};
use shardmq_storage::{EntryKind, EntryRef, LogConfig, ShardLog, StatsSnapshot, SyncMode};

const PARTITIONS: u64 = 1_000;
const APPENDS_PER_PARTITION: u64 = 5;

#[test]
fn a_thousand_partitions_share_sync_rounds() {
    thousand_partitions(|_| {});
}

#[test]
fn a_thousand_partitions_share_sync_rounds_written_through_when_idle() {
    let stats = thousand_partitions(|cfg| cfg.sync_mode = SyncMode::Adaptive);
    // Busy rounds are pipelined (an fdatasync each), idle ones written
    // through (none): both kinds happened.
    assert!(stats.fdatasync_calls > 0, "no pipelined round");
    assert!(
        stats.sync_rounds > stats.fdatasync_calls,
        "no round written through: {} rounds, {} fdatasync calls",
        stats.sync_rounds,
        stats.fdatasync_calls
    );
}

fn thousand_partitions(mode: fn(&mut LogConfig)) -> StatsSnapshot {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LogConfig::new(dir.path());
    mode(&mut cfg);
    cfg.segment_bytes = 8 << 20;
    cfg.write_buffer_bytes = 1 << 20;
    cfg.entry_bytes_max = 1 << 20;
    let payload = Rc::new(batch(4, 950, 1_000, 9));
    let stats = run(|| {
        let cfg = cfg.clone();
        let payload = payload.clone();
        async move {
            let (log, _) = ShardLog::open(cfg).await.unwrap();
            for p in 0..PARTITIONS {
                log.create_partition(p).await.unwrap();
            }
            log.sync().await.unwrap();
            let tasks: Vec<_> = (0..PARTITIONS)
                .map(|p| {
                    let log = log.clone();
                    let payload = payload.clone();
                    glommio::spawn_local(async move {
                        for i in 1..=APPENDS_PER_PARTITION {
                            let e = EntryRef {
                                index: i,
                                term: 1,
                                kind: EntryKind::Data,
                                payload: &payload,
                            };
                            log.append(p, &[e]).await.unwrap();
                            // Acknowledged only after the round that covers it.
                            log.sync().await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            let stats = log.stats();
            drop(log);
            stats
        }
    });
    let appends = PARTITIONS * APPENDS_PER_PARTITION;
    println!(
        "appends {appends}, records appended {} ({} bytes), sync rounds {}, fdatasync calls {}, sync p50 {} us p99 {} us",
        stats.appends,
        stats.append_bytes,
        stats.sync_rounds,
        stats.fdatasync_calls,
        stats.sync_latency_us.value_at_quantile(0.5),
        stats.sync_latency_us.value_at_quantile(0.99),
    );
    // One round covers many partitions' appends.
    assert!(
        stats.sync_rounds * 20 < appends,
        "{} rounds for {appends} appends",
        stats.sync_rounds
    );
    assert!(stats.fdatasync_calls < appends / 10);

    // Reopen (no clean close): everything acknowledged is there.
    run(|| async {
        let (log, report) = ShardLog::open(cfg.clone()).await.unwrap();
        assert_eq!(report.partitions as u64, PARTITIONS);
        assert_eq!(report.entries, appends);
        for p in 0..PARTITIONS {
            assert_eq!(log.next_offset(p).unwrap(), 4 * APPENDS_PER_PARTITION);
            let got = log
                .entries(p, 1, APPENDS_PER_PARTITION + 1, None)
                .await
                .unwrap();
            for (i, e) in got.iter().enumerate() {
                assert_eq!(
                    &e.payload[..],
                    &stamped(&payload, 4 * i as u64, 1)[..],
                    "partition {p} entry {i}"
                );
            }
        }
    });
    stats
}
