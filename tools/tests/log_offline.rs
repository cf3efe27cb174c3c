//! `shardmqctl log dump` and `log verify` on shard logs written by
//! `ShardLog`, clean and with a flipped byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use glommio::{LocalExecutorBuilder, Placement};
use shardmq_schema::batch::BatchBuilder;
use shardmq_storage::{EntryKind, EntryRef, LogConfig, ShardLog};
use shardmq_tools::logfile;

fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardmqctl"))
        .args(args)
        .output()
        .expect("shardmqctl runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn batch(records: usize, timestamp_ms: i64, seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = BatchBuilder::new(&mut out, 0, timestamp_ms);
    let value = vec![seed; 200];
    for r in 0..records {
        b.append(
            timestamp_ms + r as i64,
            Some(&[seed, r as u8]),
            Some(&value),
            &[],
        );
    }
    b.finish();
    out
}

/// Writes `entries` data entries to each of two partitions of a shard log
/// in `dir`, with small segments so several are sealed (and indexed).
fn write_shard(dir: &Path, entries: u64) {
    let dir = dir.to_owned();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor starts")
        .run(async move {
            let mut cfg = LogConfig::new(&dir);
            cfg.segment_bytes = 64 << 10;
            cfg.write_buffer_bytes = 16 << 10;
            cfg.entry_bytes_max = 16 << 10;
            let (log, _) = ShardLog::open(cfg).await.expect("log opens");
            for p in [1u64, 2] {
                log.create_partition(p).await.expect("partition");
            }
            for i in 0..entries {
                for p in [1u64, 2] {
                    let payload = batch(3, 1_000_000 + i as i64 * 10, (i as u8) ^ (p as u8));
                    let index = log.last_index(p).expect("last index") + 1;
                    log.append(
                        p,
                        &[EntryRef {
                            index,
                            term: 1,
                            kind: EntryKind::Data,
                            payload: &payload,
                        }],
                    )
                    .await
                    .expect("append");
                }
                if i % 16 == 0 {
                    log.sync().await.expect("sync");
                }
            }
            log.sync().await.expect("sync");
            log.close().await.expect("close");
        });
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("shard dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

fn data_dir_with_two_shards() -> tempfile::TempDir {
    let data = tempfile::tempdir().expect("tempdir");
    write_shard(&data.path().join("shard-0"), 150);
    write_shard(&data.path().join("shard-1"), 20);
    // Not a shard: ignored.
    std::fs::write(data.path().join("topics.json"), b"{}").expect("write");
    data
}

#[test]
fn dump_decodes_every_record_of_a_segment() {
    let data = data_dir_with_two_shards();
    let segs = segments(&data.path().join("shard-0"));
    assert!(segs.len() >= 3, "several segments: {segs:?}");
    let out = ctl(&["log", "dump", segs[0].to_str().expect("utf-8 path")]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("segment "), "{stdout}");
    assert!(
        lines[1].contains(" checkpoint "),
        "first record is a checkpoint: {stdout}"
    );
    let data_lines: Vec<&&str> = lines.iter().filter(|l| l.contains(" data ")).collect();
    assert!(data_lines.len() > 10, "{stdout}");
    for line in &data_lines {
        assert!(
            line.contains("count=3") && line.contains("crc=valid"),
            "{line}"
        );
        assert!(line.contains("term=1"), "{line}");
    }
    // Partition 1's first batch starts at offset 0, its next at 3.
    let p1: Vec<&&&str> = data_lines
        .iter()
        .filter(|l| l.contains("partition=1 "))
        .collect();
    assert!(
        p1[0].contains("index=1 ") && p1[0].contains("base_offset=0 "),
        "{}",
        p1[0]
    );
    assert!(
        p1[1].contains("index=2 ") && p1[1].contains("base_offset=3 "),
        "{}",
        p1[1]
    );
    assert!(
        lines.last().expect("lines").starts_with("end at byte "),
        "{stdout}"
    );

    // Not a segment name: a usage error.
    let out = ctl(&[
        "log",
        "dump",
        data.path().join("topics.json").to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // Missing file: one line on stderr, exit 1.
    let out = ctl(&[
        "log",
        "dump",
        data.path().join("0000000099.log").to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn verify_passes_clean_data_and_catches_a_flipped_byte() {
    let data = data_dir_with_two_shards();
    let dir = data.path().to_str().expect("utf-8 path");
    let out = ctl(&["log", "verify", dir]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let summary: Vec<&str> = stdout.lines().filter(|l| l.contains("segments=")).collect();
    assert_eq!(summary.len(), 2, "{stdout}");
    assert!(
        summary[0].starts_with("shard-0:") && summary[0].ends_with(" OK"),
        "{stdout}"
    );
    assert!(
        summary[1].starts_with("shard-1:") && summary[1].contains("bad_records=0"),
        "{stdout}"
    );
    // Every data entry, plus checkpoints: at least 300 records in shard-0.
    let report = logfile::verify_shard(&data.path().join("shard-0")).expect("verify");
    assert!(report.records() >= 300 && report.is_clean(), "{report:?}");
    assert!(
        report
            .segments
            .iter()
            .filter(|s| s.index == logfile::IndexStatus::Valid)
            .count()
            >= 2,
        "sealed segments have valid index files: {report:?}"
    );

    // Flip one payload byte of a data record in the first (sealed) segment.
    let seg = segments(&data.path().join("shard-0"))[0].clone();
    let mut bytes = std::fs::read(&seg).expect("read segment");
    let scan = logfile::scan_segment(&bytes, logfile::seq_from_path(&seg).expect("seq"));
    let victim = &scan.records[5];
    assert!(victim.batch.is_some(), "a data record");
    let at = victim.pos as usize + 56 + 40;
    bytes[at] ^= 0x10;
    std::fs::write(&seg, &bytes).expect("write segment");

    let out = ctl(&["log", "verify", dir]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "invalid record at byte {}: payload crc mismatch",
            victim.pos
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("index file invalid"),
        "the index now disagrees: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("shard-0:") && l.ends_with("CORRUPT")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("shard-1:") && l.ends_with(" OK")),
        "{stdout}"
    );
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("1 of 2 shards"), "{stderr}");

    // Dump stops at the flipped record and says why.
    let out = ctl(&["log", "dump", seg.to_str().expect("utf-8")]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with('@')).count(),
        5,
        "the records before it: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .expect("lines")
            .contains("payload crc mismatch"),
        "{stdout}"
    );
}

#[test]
fn verify_catches_a_corrupt_index_file() {
    let data = data_dir_with_two_shards();
    let idx = segments(&data.path().join("shard-0"))[1].with_extension("idx");
    let mut bytes = std::fs::read(&idx).expect("index file");
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    std::fs::write(&idx, &bytes).expect("write");
    let out = ctl(&["log", "verify", data.path().to_str().expect("utf-8")]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("index file invalid: checksum mismatch"),
        "{stdout}"
    );
    assert!(
        stdout.contains("bad_records=0"),
        "the segments are fine: {stdout}"
    );

    let empty = tempfile::tempdir().expect("tempdir");
    let out = ctl(&["log", "verify", empty.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no shard-* directory"));
}
