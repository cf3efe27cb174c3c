//! Model-based test of the shard log: random sequences of appends, conflicts,
//! truncations, compactions, retention by size, hard states, syncs, rolls, collector passes,
//! clean reopens and crashes (the unsynced tail written, then cut at a random
//! byte or with a random bit flipped) run against an in-memory model.
//!
//! After every reopen the log must equal the model's durable state or one of
//! the states reached by the operations after it (a crash may keep any
//! prefix of what was not synced, and nothing torn): nothing synced is lost,
//! nothing corrupt is returned, offsets stay dense and increasing.

mod common;

use std::collections::BTreeMap;

use common::{batch, run, small_config, stamped};
use proptest::prelude::*;
use shardmq_storage::record::RECORD_HEADER_BYTES;
use shardmq_storage::{
    EntryKind, EntryRef, HardState, LogConfig, RetentionPolicy, ShardLog, SyncMode,
};

const PARTITIONS: u64 = 3;

#[derive(Debug, Clone, PartialEq)]
struct MEntry {
    term: u64,
    kind: EntryKind,
    payload: Vec<u8>,
    base_offset: u64,
    offset_count: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct MPart {
    first_index: u64,
    term_before_first: u64,
    first_offset: u64,
    entries: Vec<MEntry>,
    hard: HardState,
}

impl MPart {
    fn last_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64 - 1
    }
    fn next_offset(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.first_offset, |e| e.base_offset + e.offset_count)
    }
    fn term_of(&self, index: u64) -> u64 {
        if index + 1 == self.first_index {
            self.term_before_first
        } else {
            self.entries[(index - self.first_index) as usize].term
        }
    }
    /// Drops the entries before `to`, as the log's compaction does.
    fn compact(&mut self, to: u64) {
        let term_before = self.term_of(to - 1);
        let drop = (to - self.first_index) as usize;
        self.first_offset = self
            .entries
            .get(drop)
            .map_or(self.next_offset(), |e| e.base_offset);
        self.entries.drain(..drop);
        self.first_index = to;
        self.term_before_first = term_before;
    }

    fn max_term(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.term_before_first, |e| e.term)
            .max(self.hard.term)
    }
}

type Model = BTreeMap<u64, MPart>;

#[derive(Debug, Clone)]
enum Op {
    Append {
        p: u64,
        n: usize,
        records: usize,
        value_bytes: usize,
        kind_sel: u8,
    },
    Conflict {
        p: u64,
        back: u64,
    },
    Truncate {
        p: u64,
        back: u64,
    },
    Compact {
        p: u64,
        keep: u64,
    },
    Retention {
        p: u64,
        bytes_max: u64,
        keep_from_back: u64,
    },
    Hard {
        p: u64,
    },
    Sync,
    Roll,
    Gc,
    CleanReopen,
    Crash {
        cut: bool,
        at_permille: u16,
        bit: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PARTITIONS;
    prop_oneof![
        8 => (p.clone(), 1usize..4, 1usize..5, 0usize..900, 0u8..10)
            .prop_map(|(p, n, records, value_bytes, kind_sel)| Op::Append { p, n, records, value_bytes, kind_sel }),
        1 => (p.clone(), 1u64..4).prop_map(|(p, back)| Op::Conflict { p, back }),
        1 => (p.clone(), 1u64..4).prop_map(|(p, back)| Op::Truncate { p, back }),
        1 => (p.clone(), 0u64..6).prop_map(|(p, keep)| Op::Compact { p, keep }),
        1 => (p.clone(), 0u64..8000, 0u64..4)
            .prop_map(|(p, bytes_max, keep_from_back)| Op::Retention { p, bytes_max, keep_from_back }),
        1 => p.prop_map(|p| Op::Hard { p }),
        2 => Just(Op::Sync),
        1 => Just(Op::Roll),
        1 => Just(Op::Gc),
        1 => Just(Op::CleanReopen),
        2 => (any::<bool>(), 0u16..1000, 0u8..8).prop_map(|(cut, at_permille, bit)| Op::Crash { cut, at_permille, bit }),
    ]
}

/// Compares the log with a model state; `Err` says where they differ.
async fn matches(log: &ShardLog, model: &Model) -> Result<(), String> {
    let ids = log.partitions();
    if ids != model.keys().copied().collect::<Vec<_>>() {
        return Err(format!("partitions {ids:?}"));
    }
    for (&p, m) in model {
        let got = (
            log.first_index(p).unwrap(),
            log.last_index(p).unwrap(),
            log.log_start_offset(p).unwrap(),
            log.next_offset(p).unwrap(),
            log.hard_state(p).unwrap(),
        );
        let want = (
            m.first_index,
            m.last_index(),
            m.first_offset,
            m.next_offset(),
            m.hard,
        );
        if got != want {
            return Err(format!("partition {p}: {got:?} != {want:?}"));
        }
        if log.term(p, m.first_index - 1).unwrap() != m.term_before_first {
            return Err(format!("partition {p}: term before first"));
        }
        let entries = log
            .entries(p, m.first_index, m.last_index() + 1, None)
            .await
            .map_err(|e| format!("partition {p}: {e}"))?;
        for (i, (g, w)) in entries.iter().zip(&m.entries).enumerate() {
            if (g.term, g.kind) != (w.term, w.kind) || g.payload[..] != w.payload[..] {
                return Err(format!("partition {p}: entry {}", m.first_index + i as u64));
            }
        }
        // Offsets are dense: every data entry is found by its base offset.
        for w in m.entries.iter().filter(|e| e.kind == EntryKind::Data) {
            let got = log
                .read_from_offset(p, w.base_offset, 1, u64::MAX)
                .await
                .map_err(|e| e.to_string())?;
            if got.first().map(|b| b.base_offset) != Some(w.base_offset) {
                return Err(format!("partition {p}: offset {}", w.base_offset));
            }
        }
    }
    Ok(())
}

async fn append_one(
    log: &ShardLog,
    model: &mut Model,
    p: u64,
    index: u64,
    term: u64,
    kind: EntryKind,
    raw: &[u8],
) {
    let out = log
        .append(
            p,
            &[EntryRef {
                index,
                term,
                kind,
                payload: raw,
            }],
        )
        .await
        .unwrap();
    let m = model.get_mut(&p).unwrap();
    m.entries.truncate((index - m.first_index) as usize);
    let base_offset = m.next_offset();
    assert_eq!(out.base_offset, base_offset);
    let (payload, offset_count) = match kind {
        EntryKind::Data => {
            let count = shardmq_schema::batch::RecordBatchView::parse(raw)
                .unwrap()
                .offset_count();
            (stamped(raw, base_offset, term), u64::from(count))
        }
        _ => (raw.to_vec(), 0),
    };
    m.entries.push(MEntry {
        term,
        kind,
        payload,
        base_offset,
        offset_count,
    });
}

/// Runs `ops` against a log configured by `small_config` and then `mode`.
fn check_ops(ops: Vec<Op>, mode: fn(&mut LogConfig)) {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let mut cfg = small_config(dir.path());
        mode(&mut cfg);
        let (mut log, _) = ShardLog::open(cfg.clone()).await.unwrap();
        let mut model: Model = BTreeMap::new();
        for p in 0..PARTITIONS {
            log.create_partition(p).await.unwrap();
            model.insert(
                p,
                MPart {
                    first_index: 1,
                    term_before_first: 0,
                    first_offset: 0,
                    entries: vec![],
                    hard: HardState::default(),
                },
            );
        }
        log.sync().await.unwrap();
        let mut durable = model.clone();
        // States reached since the last sync, one per record written.
        let mut pending: Vec<Model> = Vec::new();
        let mut ts = 1_000i64;
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Append {
                    p,
                    n,
                    records,
                    value_bytes,
                    kind_sel,
                } => {
                    for _ in 0..n {
                        let m = &model[&p];
                        let (index, term) = (m.last_index() + 1, m.max_term().max(1));
                        ts += 7;
                        let (kind, raw) = match kind_sel {
                            0 => (EntryKind::Empty, vec![]),
                            1 => (EntryKind::ConfChange, vec![kind_sel; 13]),
                            _ => (EntryKind::Data, batch(records, value_bytes, ts, step as u8)),
                        };
                        append_one(&log, &mut model, p, index, term, kind, &raw).await;
                        pending.push(model.clone());
                    }
                }
                Op::Conflict { p, back } => {
                    let m = &model[&p];
                    if m.last_index() + 1 < m.first_index + back {
                        continue;
                    }
                    let (index, term) = (m.last_index() + 1 - back, m.max_term() + 1);
                    let raw = batch(2, 50, ts, step as u8);
                    append_one(&log, &mut model, p, index, term, EntryKind::Data, &raw).await;
                    pending.push(model.clone());
                }
                Op::Truncate { p, back } => {
                    let m = model.get_mut(&p).unwrap();
                    if m.last_index() + 1 < m.first_index + back || back == 0 {
                        continue;
                    }
                    let from = m.last_index() + 1 - back;
                    log.truncate_suffix(p, from).await.unwrap();
                    m.entries.truncate((from - m.first_index) as usize);
                    pending.push(model.clone());
                }
                Op::Compact { p, keep } => {
                    let m = model.get_mut(&p).unwrap();
                    let to = (m.last_index() + 1).saturating_sub(keep);
                    if to <= m.first_index {
                        continue;
                    }
                    log.compact(p, to).await.unwrap();
                    m.compact(to);
                    pending.push(model.clone());
                }
                Op::Retention {
                    p,
                    bytes_max,
                    keep_from_back,
                } => {
                    // Drop the oldest entries while the partition holds more
                    // than `bytes_max` (headers included), never at or past
                    // the index Raft still needs.
                    let m = model.get_mut(&p).unwrap();
                    let keep_from = (m.last_index() + 1).saturating_sub(keep_from_back);
                    let record_bytes = |e: &MEntry| (RECORD_HEADER_BYTES + e.payload.len()) as u64;
                    let mut bytes: u64 = m.entries.iter().map(record_bytes).sum();
                    let mut to = m.first_index;
                    for e in &m.entries {
                        if to >= keep_from || bytes <= bytes_max {
                            break;
                        }
                        bytes -= record_bytes(e);
                        to += 1;
                    }
                    let policy = RetentionPolicy {
                        bytes_max: Some(bytes_max),
                        age_max_ms: None,
                    };
                    let got = log.apply_retention(p, policy, 0, keep_from).await.unwrap();
                    assert_eq!(got, to, "step {step}: retention's new first index");
                    if to > m.first_index {
                        m.compact(to);
                        pending.push(model.clone());
                    }
                }
                Op::Hard { p } => {
                    let m = model.get_mut(&p).unwrap();
                    let hard = HardState {
                        term: m.max_term() + 1,
                        vote: p + 1,
                        commit: m.last_index(),
                    };
                    log.set_hard_state(p, hard).await.unwrap();
                    m.hard = hard;
                    pending.push(model.clone());
                }
                Op::Sync | Op::Roll | Op::Gc => {
                    match op {
                        Op::Roll => log.roll().await.unwrap(),
                        Op::Gc => {
                            log.gc().await.unwrap();
                        }
                        _ => {}
                    }
                    log.sync().await.unwrap();
                    durable = model.clone();
                    pending.clear();
                    matches(&log, &model)
                        .await
                        .unwrap_or_else(|e| panic!("step {step} {op:?}: {e}"));
                }
                Op::CleanReopen => {
                    log.close().await.unwrap();
                    drop(log);
                    let (reopened, report) = ShardLog::open(cfg.clone()).await.unwrap();
                    assert!(report.corrupt_partitions.is_empty(), "{report:?}");
                    log = reopened;
                    matches(&log, &model)
                        .await
                        .unwrap_or_else(|e| panic!("step {step} clean reopen: {e}"));
                    durable = model.clone();
                    pending.clear();
                }
                Op::Crash {
                    cut,
                    at_permille,
                    bit,
                } => {
                    let (path, durable_end, appended_end) = log.durable_position();
                    log.write_unsynced_for_crash_test().await.unwrap();
                    drop(log);
                    if appended_end > durable_end {
                        let at = durable_end
                            + (appended_end - durable_end) * u64::from(at_permille) / 1000;
                        if cut {
                            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                            f.set_len(at).unwrap();
                        } else {
                            let mut bytes = std::fs::read(&path).unwrap();
                            bytes[at as usize] ^= 1 << bit;
                            std::fs::write(&path, &bytes).unwrap();
                        }
                    }
                    let (reopened, report) = ShardLog::open(cfg.clone()).await.unwrap();
                    assert!(
                        report.corrupt_partitions.is_empty(),
                        "step {step}: {report:?}"
                    );
                    log = reopened;
                    let mut found = None;
                    let mut last_err = String::new();
                    for (k, candidate) in
                        std::iter::once(&durable).chain(pending.iter()).enumerate()
                    {
                        match matches(&log, candidate).await {
                            Ok(()) => {
                                found = Some(k);
                                break;
                            }
                            Err(e) => last_err = e,
                        }
                    }
                    let k = found.unwrap_or_else(|| {
                        panic!("step {step} {op:?}: recovered log matches no state between the durable one and the last ({} pending); last mismatch: {last_err}", pending.len())
                    });
                    model = if k == 0 {
                        durable.clone()
                    } else {
                        pending[k - 1].clone()
                    };
                    durable = model.clone();
                    pending.clear();
                }
            }
        }
        log.close().await.unwrap();
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_model_across_crashes(ops in proptest::collection::vec(op(), 1..70)) {
        check_ops(ops, |_| {});
    }

    #[test]
    fn log_written_through_matches_model_across_crashes(
        ops in proptest::collection::vec(op(), 1..70),
    ) {
        check_ops(ops, |cfg| cfg.sync_mode = SyncMode::WriteThrough);
    }

    #[test]
    fn log_written_through_when_idle_matches_model_across_crashes(
        ops in proptest::collection::vec(op(), 1..70),
    ) {
        check_ops(ops, |cfg| cfg.sync_mode = SyncMode::Adaptive);
    }
}
