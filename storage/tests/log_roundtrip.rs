//! Round trips through the shard log: byte identity after reopen, reads by
//! offset and timestamp across segment boundaries, truncation, compaction,
//! retention and the collector, corruption handling.

mod common;

use common::{batch, run, small_config, stamped};
use shardmq_schema::batch::RecordBatchView;
use shardmq_storage::record::{RecordHeader, RECORD_HEADER_BYTES};
use shardmq_storage::{EntryKind, EntryRef, HardState, RetentionPolicy, ShardLog, StorageError};

/// Appends `n` data entries of 3 records to each of `parts`, interleaved, and
/// returns what each partition must hold: (index, term, stamped bytes).
async fn fill(log: &ShardLog, parts: &[u64], n: u64, ts0: i64) -> Vec<Vec<(u64, u64, Vec<u8>)>> {
    let mut expect = vec![Vec::new(); parts.len()];
    for i in 0..n {
        for (k, &p) in parts.iter().enumerate() {
            let index = log.last_index(p).unwrap() + 1;
            let payload = batch(3, 300, ts0 + (i as i64) * 10, (i as u8) ^ (p as u8));
            let out = log
                .append(
                    p,
                    &[EntryRef {
                        index,
                        term: 2,
                        kind: EntryKind::Data,
                        payload: &payload,
                    }],
                )
                .await
                .unwrap();
            expect[k].push((index, 2, stamped(&payload, out.base_offset, 2)));
        }
    }
    log.sync().await.unwrap();
    expect
}

/// What each partition must hold: (index, term, stamped bytes) per entry.
type Expected = Vec<Vec<(u64, u64, Vec<u8>)>>;

/// A log in `dir` with `parts` created and [`fill`]ed with `n` entries each,
/// then closed: what each partition must hold, and the log's stats at close.
fn filled_and_closed(
    dir: &std::path::Path,
    parts: &[u64],
    n: u64,
) -> (Expected, shardmq_storage::StatsSnapshot) {
    run(|| async {
        let (log, _) = ShardLog::open(small_config(dir)).await.unwrap();
        for &p in parts {
            log.create_partition(p).await.unwrap();
        }
        let expect = fill(&log, parts, n, 0).await;
        let stats = log.stats();
        log.close().await.unwrap();
        (expect, stats)
    })
}

async fn check(log: &ShardLog, parts: &[u64], expect: &[Vec<(u64, u64, Vec<u8>)>]) {
    for (k, &p) in parts.iter().enumerate() {
        let first = log.first_index(p).unwrap();
        let want: Vec<_> = expect[k].iter().filter(|e| e.0 >= first).collect();
        let got = log
            .entries(p, first, log.last_index(p).unwrap() + 1, None)
            .await
            .unwrap();
        assert_eq!(got.len(), want.len(), "partition {p}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.index, g.term), (w.0, w.1));
            assert_eq!(&g.payload[..], &w.2[..], "partition {p} index {}", w.0);
        }
    }
}

#[test]
fn batches_survive_reopen_byte_identical_and_reads_cross_segments() {
    let dir = tempfile::tempdir().unwrap();
    let parts = [1u64, 2];
    let expect = run(|| async {
        let (log, _) = ShardLog::open(small_config(dir.path())).await.unwrap();
        for &p in &parts {
            log.create_partition(p).await.unwrap();
        }
        let expect = fill(&log, &parts, 120, 1_000_000).await;
        assert!(log.segment_count() > 3, "the data spans several segments");
        log.close().await.unwrap();
        expect
    });
    run(|| async {
        let (log, report) = ShardLog::open(small_config(dir.path())).await.unwrap();
        assert_eq!(report.partitions, 2);
        assert_eq!(report.entries, 240);
        assert!(report.corrupt_partitions.is_empty());
        check(&log, &parts, &expect).await;

        // Every offset of partition 1 is found in the batch that holds it.
        let p = 1;
        assert_eq!(log.next_offset(p).unwrap(), 360);
        for offset in [0u64, 1, 2, 3, 100, 200, 358, 359] {
            let got = log.read_from_offset(p, offset, 1, u64::MAX).await.unwrap();
            assert_eq!(got.len(), 1);
            let view = RecordBatchView::parse_verified(&got[0].bytes).unwrap();
            let base = view.base_offset() as u64;
            assert!(
                base <= offset && offset < base + 3,
                "offset {offset} in batch at {base}"
            );
        }
        // A budget spanning many batches returns them in order, densely.
        let all = log
            .read_from_offset(p, 0, u64::MAX, u64::MAX)
            .await
            .unwrap();
        assert_eq!(all.len(), 120);
        for (i, b) in all.iter().enumerate() {
            assert_eq!(b.base_offset, i as u64 * 3);
        }
        // The commit bound is respected.
        let bounded = log.read_from_offset(p, 0, u64::MAX, 10).await.unwrap();
        assert_eq!(bounded.last().unwrap().index, 10);
        // The end of the log reads empty; past it is an error.
        assert!(log
            .read_from_offset(p, 360, 1 << 20, u64::MAX)
            .await
            .unwrap()
            .is_empty());
        assert!(matches!(
            log.read_from_offset(p, 361, 1 << 20, u64::MAX).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));

        // Timestamps: batch i holds records at ts0 + 10 i .. + 2.
        let ts0 = 1_000_000;
        assert_eq!(log.offset_for_timestamp(p, 0).unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(p, ts0 + 55).unwrap(), Some(18));
        assert_eq!(log.offset_for_timestamp(p, ts0 + 52).unwrap(), Some(15));
        assert_eq!(log.offset_for_timestamp(p, ts0 + 1190).unwrap(), Some(357));
        assert_eq!(log.offset_for_timestamp(p, ts0 + 1193).unwrap(), None);
        log.close().await.unwrap();
    });
}

#[test]
fn reopen_without_close_keeps_everything_synced() {
    let dir = tempfile::tempdir().unwrap();
    let parts = [7u64];
    let expect = run(|| async {
        let (log, _) = ShardLog::open(small_config(dir.path())).await.unwrap();
        log.create_partition(7).await.unwrap();
        let expect = fill(&log, &parts, 50, 0).await;
        // Appended but never synced: may or may not survive, never torn.
        let payload = batch(1, 10, 5, 5);
        log.append(
            7,
            &[EntryRef {
                index: 51,
                term: 2,
                kind: EntryKind::Data,
                payload: &payload,
            }],
        )
        .await
        .unwrap();
        drop(log);
        expect
    });
    run(|| async {
        let (log, _) = ShardLog::open(small_config(dir.path())).await.unwrap();
        assert!(log.last_index(7).unwrap() >= 50);
        let mut expect = expect.clone();
        expect[0].truncate(50);
        let first = log.first_index(7).unwrap();
        let got = log.entries(7, first, 51, None).await.unwrap();
        for (g, w) in got.iter().zip(&expect[0]) {
            assert_eq!(&g.payload[..], &w.2[..]);
        }
    });
}

#[test]
fn raft_operations_truncate_compact_reset_and_hard_state() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let (log, _) = ShardLog::open(small_config(dir.path())).await.unwrap();
        log.create_partition(3).await.unwrap();
        let b = batch(2, 20, 100, 1);
        for i in 1..=10 {
            log.append(
                3,
                &[EntryRef {
                    index: i,
                    term: 1,
                    kind: EntryKind::Data,
                    payload: &b,
                }],
            )
            .await
            .unwrap();
        }
        // A conflicting append at 8 replaces 8..=10; offsets follow.
        let out = log
            .append(
                3,
                &[
                    EntryRef {
                        index: 8,
                        term: 2,
                        kind: EntryKind::Empty,
                        payload: &[],
                    },
                    EntryRef {
                        index: 9,
                        term: 2,
                        kind: EntryKind::Data,
                        payload: &b,
                    },
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            out,
            shardmq_storage::AppendOutcome {
                base_offset: 14,
                next_offset: 16,
                last_index: 9
            }
        );
        assert_eq!(log.term(3, 8).unwrap(), 2);
        // Gaps are refused.
        let gap = log
            .append(
                3,
                &[EntryRef {
                    index: 11,
                    term: 2,
                    kind: EntryKind::Data,
                    payload: &b,
                }],
            )
            .await;
        assert!(matches!(gap, Err(StorageError::IndexGap { index: 11, .. })));
        // A bad crc is refused before anything is written.
        let mut bad = b.clone();
        *bad.last_mut().unwrap() ^= 1;
        let refused = log
            .append(
                3,
                &[EntryRef {
                    index: 10,
                    term: 2,
                    kind: EntryKind::Data,
                    payload: &bad,
                }],
            )
            .await;
        assert!(matches!(refused, Err(StorageError::BadBatch { .. })));
        log.truncate_suffix(3, 9).await.unwrap();
        assert_eq!(
            (log.last_index(3).unwrap(), log.next_offset(3).unwrap()),
            (8, 14)
        );
        log.compact(3, 5).await.unwrap();
        assert_eq!(
            (log.first_index(3).unwrap(), log.term(3, 4).unwrap()),
            (5, 1)
        );
        assert!(matches!(
            log.term(3, 3),
            Err(StorageError::Compacted { .. })
        ));
        assert_eq!(log.log_start_offset(3).unwrap(), 8);
        log.set_hard_state(
            3,
            HardState {
                term: 2,
                vote: 4,
                commit: 7,
            },
        )
        .await
        .unwrap();
        log.sync().await.unwrap();
        drop(log);

        let (log, _) = ShardLog::open(small_config(dir.path())).await.unwrap();
        assert_eq!(
            (log.first_index(3).unwrap(), log.last_index(3).unwrap()),
            (5, 8)
        );
        assert_eq!(
            (
                log.log_start_offset(3).unwrap(),
                log.next_offset(3).unwrap()
            ),
            (8, 14)
        );
        assert_eq!(log.term(3, 4).unwrap(), 1);
        assert_eq!(log.term(3, 8).unwrap(), 2);
        assert_eq!(
            log.hard_state(3).unwrap(),
            HardState {
                term: 2,
                vote: 4,
                commit: 7
            }
        );
        // A replica restarting from the leader's compaction point.
        log.reset(3, 101, 5, 900).await.unwrap();
        log.append(
            3,
            &[EntryRef {
                index: 101,
                term: 5,
                kind: EntryKind::Data,
                payload: &b,
            }],
        )
        .await
        .unwrap();
        log.sync().await.unwrap();
        drop(log);

        let (log, _) = ShardLog::open(small_config(dir.path())).await.unwrap();
        assert_eq!(
            (log.first_index(3).unwrap(), log.last_index(3).unwrap()),
            (101, 101)
        );
        assert_eq!(log.term(3, 100).unwrap(), 5);
        let got = log
            .read_from_offset(3, 900, 1 << 20, u64::MAX)
            .await
            .unwrap();
        assert_eq!(
            RecordBatchView::parse_verified(&got[0].bytes)
                .unwrap()
                .base_offset(),
            900
        );
    });
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn retention_and_the_collector_give_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let parts = [1u64, 2];
    run(|| async {
        let (log, _) = ShardLog::open(small_config(dir.path())).await.unwrap();
        for &p in &parts {
            log.create_partition(p).await.unwrap();
        }
        let expect = fill(&log, &parts, 200, 0).await;
        let before_segments = log.segment_count();
        let before_bytes = dir_bytes(dir.path());
        // Partition 1 keeps about 8 KiB by size; partition 2 keeps records
        // newer than 1,000 ms (from index 101), but Raft still needs it from
        // index 80, which wins.
        let p1_first = log
            .apply_retention(
                1,
                RetentionPolicy {
                    bytes_max: Some(8 << 10),
                    age_max_ms: None,
                },
                0,
                u64::MAX,
            )
            .await
            .unwrap();
        assert!(log.partition_bytes(1).unwrap() <= 8 << 10);
        assert!(p1_first > 150);
        let p2_first = log
            .apply_retention(
                2,
                RetentionPolicy {
                    bytes_max: None,
                    age_max_ms: Some(1_000),
                },
                2_000,
                80,
            )
            .await
            .unwrap();
        assert_eq!(p2_first, 80);
        let gc = log.gc().await.unwrap();
        log.sync().await.unwrap();
        assert!(gc.segments_deleted > 0, "{gc:?}");
        assert!(log.segment_count() < before_segments);
        assert!(dir_bytes(dir.path()) < before_bytes);
        check(&log, &parts, &expect).await;
        // A second pass moves the last live entries out of sparse segments.
        log.roll().await.unwrap();
        let gc2 = log.gc().await.unwrap();
        log.sync().await.unwrap();
        check(&log, &parts, &expect).await;
        drop(log);

        let (log, report) = ShardLog::open(small_config(dir.path())).await.unwrap();
        assert!(
            report.corrupt_partitions.is_empty(),
            "{report:?} after {gc2:?}"
        );
        assert_eq!(log.first_index(1).unwrap(), p1_first);
        assert_eq!(log.first_index(2).unwrap(), p2_first);
        check(&log, &parts, &expect).await;
        // Removing a partition frees its segments too.
        log.remove_partition(2).await.unwrap();
        log.compact(1, log.last_index(1).unwrap() + 1)
            .await
            .unwrap();
        log.roll().await.unwrap();
        log.gc().await.unwrap();
        assert_eq!(log.segment_count(), 1, "only the active segment is left");
        drop(log);
        let (log, _) = ShardLog::open(small_config(dir.path())).await.unwrap();
        assert_eq!(log.partitions(), vec![1]);
        assert_eq!(log.next_offset(1).unwrap(), 600);
    });
}

#[test]
fn indexes_written_behind_the_rolls_are_complete_after_close_and_after_gc() {
    let dir = tempfile::tempdir().unwrap();
    let parts = [1u64, 2];
    let (expect, stats) = filled_and_closed(dir.path(), &parts, 200);
    assert!(stats.segments_rolled >= 2, "the fill rolls");
    let logs = |ext: &str| {
        let mut seqs: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().to_string();
                name.strip_suffix(ext).map(str::to_owned)
            })
            .collect();
        seqs.sort();
        seqs
    };
    // Every segment, sealed by a roll or by close, has its index: the
    // writes a roll leaves to the blocking thread are awaited by close.
    assert_eq!(logs(".idx"), logs(".log"));
    assert!(logs(".idx.tmp").is_empty());
    run(|| async {
        let (log, report) = ShardLog::open(small_config(dir.path())).await.unwrap();
        assert_eq!(report.indexes_rebuilt, 0, "every index was valid");
        check(&log, &parts, &expect).await;
        // Retention deletes the sealed segments, each after its index write.
        for &p in &parts {
            log.compact(p, log.last_index(p).unwrap() + 1)
                .await
                .unwrap();
        }
        log.roll().await.unwrap();
        log.gc().await.unwrap();
        assert_eq!(log.segment_count(), 1, "only the active segment is left");
        log.close().await.unwrap();
    });
    assert_eq!(logs(".idx"), logs(".log"), "no index outlives its segment");
}

#[test]
fn corruption_is_an_error_never_data() {
    let dir = tempfile::tempdir().unwrap();
    let parts = [1u64, 2];
    let (expect, _) = filled_and_closed(dir.path(), &parts, 60);
    // Flip a payload byte in the middle of the first segment.
    let first_segment = dir.path().join("0000000001.log");
    let mut bytes = std::fs::read(&first_segment).unwrap();
    bytes[20_000] ^= 0xff;
    std::fs::write(&first_segment, &bytes).unwrap();
    // And damage the index file of the second segment: it is rebuilt.
    let second_index = dir.path().join("0000000002.idx");
    let mut idx = std::fs::read(&second_index).unwrap();
    idx[30] ^= 1;
    std::fs::write(&second_index, &idx).unwrap();
    run(|| async {
        let (log, report) = ShardLog::open(small_config(dir.path())).await.unwrap();
        assert_eq!(report.indexes_rebuilt, 1);
        let mut errors = 0;
        for (k, &p) in parts.iter().enumerate() {
            for (index, _, want) in &expect[k] {
                match log.entries(p, *index, index + 1, None).await {
                    Ok(got) => assert_eq!(&got[0].payload[..], &want[..]),
                    Err(StorageError::Corrupt { .. }) => errors += 1,
                    Err(other) => panic!("unexpected {other}"),
                }
            }
        }
        assert_eq!(errors, 1, "exactly the damaged entry is refused");
        assert_eq!(log.stats().corruptions, 1);
    });
    // Corrupt a record header of a sealed segment whose index is gone: the
    // entries after it are lost, their partitions refuse to serve, and the
    // broker keeps running.
    std::fs::remove_file(dir.path().join("0000000001.idx")).unwrap();
    let mut bytes = std::fs::read(&first_segment).unwrap();
    bytes[10_000..10_100].fill(0xee);
    std::fs::write(&first_segment, &bytes).unwrap();
    run(|| async {
        let (log, report) = ShardLog::open(small_config(dir.path())).await.unwrap();
        assert!(!report.corrupt_partitions.is_empty());
        let (p, _) = report.corrupt_partitions[0];
        assert!(matches!(
            log.entries(p, 1, 2, None).await,
            Err(StorageError::PartitionCorrupt { .. })
        ));
        assert!(log.stats().corruptions >= 1);
    });
}

#[test]
fn garbage_segment_files_never_crash_recovery() {
    for seed in 0..8u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut bytes = vec![0u8; 64 << 10];
        for b in bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(dir.path().join("0000000001.log"), &bytes).unwrap();
        std::fs::write(dir.path().join("0000000001.idx"), &bytes[..999]).unwrap();
        run(|| async {
            let (log, report) = ShardLog::open(small_config(dir.path())).await.unwrap();
            assert_eq!(report.entries, 0);
            assert!(log.partitions().is_empty());
        });
    }
}

#[test]
fn written_through_rounds_are_durable_without_fdatasync() {
    let dir = tempfile::tempdir().unwrap();
    let parts = [3u64, 4];
    let config = || {
        let mut cfg = small_config(dir.path());
        cfg.sync_mode = shardmq_storage::SyncMode::WriteThrough;
        cfg
    };
    let expect = run(|| async {
        let (log, _) = ShardLog::open(config()).await.unwrap();
        for &p in &parts {
            log.create_partition(p).await.unwrap();
        }
        let before = log.stats();
        // Enough to roll several 64 KiB segments.
        let expect = fill(&log, &parts, 120, 0).await;
        let after = log.stats();
        assert!(log.segment_count() > 2, "rolled");
        assert!(after.sync_rounds > before.sync_rounds);
        // Only the directory syncs of the rolls: no fdatasync of data.
        let rolls = after.segments_rolled - before.segments_rolled;
        assert_eq!(after.fdatasync_calls - before.fdatasync_calls, rolls);
        check(&log, &parts, &expect).await;
        // No close: what sync() returned for must be on disk as it is.
        drop(log);
        expect
    });
    run(|| async {
        let (log, _) = ShardLog::open(config()).await.unwrap();
        check(&log, &parts, &expect).await;
    });
}

/// A record batch whose length is exactly `len` bytes.
fn batch_of_len(len: usize) -> Vec<u8> {
    (len.saturating_sub(200)..len)
        .map(|value_bytes| batch(1, value_bytes, 1_000, 7))
        .find(|b| b.len() == len)
        .expect("some value length gives the batch length")
}

#[test]
fn a_recycled_segment_never_serves_its_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut cfg = small_config(dir.path());
        // Without zeroing ahead, every roll takes a recycled file when the
        // pool has one.
        cfg.prezero_bytes_per_sec = 0;
        cfg
    };
    // A one-partition checkpoint (56 + 64 bytes) and one such entry fill
    // exactly one block: the end of the new records is block-aligned, so
    // no padding covers what follows it in the recycled file.
    let payload = batch_of_len(4096 - 120 - RECORD_HEADER_BYTES);
    let append = |log: ShardLog, index: u64| {
        let payload = payload.clone();
        async move {
            log.append(
                1,
                &[EntryRef {
                    index,
                    term: 1,
                    kind: EntryKind::Data,
                    payload: &payload,
                }],
            )
            .await
            .unwrap();
        }
    };
    let (path, end) = run(|| async {
        let (log, _) = ShardLog::open(config()).await.unwrap(); // segment 1
        log.create_partition(1).await.unwrap();
        log.sync().await.unwrap();
        log.roll().await.unwrap(); // segment 2, a new file
        assert_eq!(log.gc().await.unwrap().segments_recycled, 1, "segment 1");
        for index in 1..=3 {
            append(log.clone(), index).await;
        }
        log.sync().await.unwrap();
        log.roll().await.unwrap(); // segment 3, in the file of segment 1
        assert_eq!(log.stats().segments_reused, 1);
        log.compact(1, 4).await.unwrap();
        log.roll().await.unwrap(); // segment 4, a new file
        let gc = log.gc().await.unwrap();
        assert_eq!(gc.segments_recycled, 2, "segments 2 and 3: {gc:?}");
        log.roll().await.unwrap(); // segment 5, in the file of segment 2
        assert_eq!(log.stats().segments_reused, 2);
        append(log.clone(), 4).await;
        log.sync().await.unwrap();
        let (path, durable_end, appended_end) = log.durable_position();
        assert_eq!(durable_end, appended_end);
        // A crash: no close, no index file for segment 5.
        drop(log);
        (path, durable_end)
    });
    assert!(path.ends_with("0000000005.log"), "{path:?}");
    assert_eq!(end, 4096);
    // Right after the new end lies a whole, valid record of the file's life
    // as segment 2: entry 2 of partition 1, at the very position the next
    // record of segment 5 would take.
    let bytes = std::fs::read(&path).unwrap();
    let old = RecordHeader::decode(&bytes[end as usize..]).expect("an old record at the new end");
    assert_eq!((old.segment_seq, old.partition, old.index), (2, 1, 2));
    run(|| async {
        let (log, report) = ShardLog::open(config()).await.unwrap();
        assert!(report.corrupt_partitions.is_empty(), "{report:?}");
        assert_eq!(report.tail_bytes_discarded, 0, "{report:?}");
        assert_eq!(log.stats().corruptions, 0);
        assert_eq!(log.first_index(1).unwrap(), 4);
        assert_eq!(
            log.last_index(1).unwrap(),
            4,
            "old entries 2 and 3 not replayed"
        );
        let got = log.entries(1, 4, 5, None).await.unwrap();
        assert_eq!(&got[0].payload[..], &stamped(&payload, 3, 1)[..]);
        // The new segment (in the file of segment 3) gets a seq above every
        // seq its file or any other recycled file ever held.
        let (active, _, _) = log.durable_position();
        assert!(active.ends_with("0000000006.log"), "{active:?}");
        // Appending goes on from the recovered state.
        append(log.clone(), 5).await;
        log.sync().await.unwrap();
        log.close().await.unwrap();
    });
    run(|| async {
        let (log, _) = ShardLog::open(config()).await.unwrap();
        assert_eq!(log.last_index(1).unwrap(), 5);
        assert_eq!(log.next_offset(1).unwrap(), 5);
    });
}

#[test]
fn a_round_that_ends_exactly_at_a_staging_chunk_boundary_is_written_and_the_next_goes_on() {
    // The staging buffer is a run of 256 KiB chunks; a round whose end is
    // both block-aligned and the end of its last chunk carries no partial
    // tail block into the next buffer.
    const CHUNK: u64 = 256 << 10;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = shardmq_storage::LogConfig::new(dir.path());
    cfg.segment_bytes = 8 << 20;
    cfg.write_buffer_bytes = 1 << 20;
    cfg.entry_bytes_max = 1 << 20;
    run(|| async move {
        let (log, _) = ShardLog::open(cfg).await.unwrap();
        log.create_partition(1).await.unwrap();
        log.sync().await.unwrap();
        let (_, durable, end) = log.durable_position();
        assert_eq!(durable, end);
        // The next buffer starts at the block holding the end; a record
        // that ends exactly one chunk after that block's start.
        let base = end - end % 4096;
        let len = (base + CHUNK - end) as usize - RECORD_HEADER_BYTES;
        let payload = batch_of_len(len);
        log.append(
            1,
            &[EntryRef {
                index: 1,
                term: 1,
                kind: EntryKind::Data,
                payload: &payload,
            }],
        )
        .await
        .unwrap();
        let (_, _, appended) = log.durable_position();
        assert_eq!(
            appended,
            base + CHUNK,
            "the record ends on the chunk boundary"
        );
        log.sync().await.unwrap();
        let small = batch_of_len(1000);
        log.append(
            1,
            &[EntryRef {
                index: 2,
                term: 1,
                kind: EntryKind::Data,
                payload: &small,
            }],
        )
        .await
        .unwrap();
        log.sync().await.unwrap();
        let got = log.entries(1, 1, 3, None).await.unwrap();
        assert_eq!(got.len(), 2);
        log.close().await.unwrap();
    });
}
