//! Sans-IO recovery: rebuilds every partition's entry table from the records
//! of all segments, replayed in log order (segment sequence, then position).
//!
//! The rules, applied per record, reproduce the state the log had when each
//! record was written:
//! 1. an entry at index `i` removes every entry at or after `i`, then takes
//!    index `i` (Raft's conflict rule: a new entry replaces the suffix);
//! 2. a rewritten entry (a live entry copied out of a segment being
//!    reclaimed) replaces index `i` and removes nothing;
//! 3. `Truncate(i)` removes every entry at or after `i`;
//! 4. `Compact(first)` removes every entry before `first` and records the
//!    term before it and the first offset;
//! 5. a checkpoint (first record of every segment) sets each partition's
//!    bounds and hard state as they were when the segment was opened, and
//!    drops partitions it does not list.
//!
//! Rule 5 is what lets the collector delete a segment holding no live entry
//! even when it holds the latest truncation, compaction or hard state of a
//! partition: a later segment's checkpoint carries their effect. After the
//! last record every partition must be dense from its first index; a gap
//! means a segment was lost or corrupt and the partition is marked corrupt.

use std::collections::{BTreeMap, HashMap};

use crate::error::PartitionId;
use crate::record::{CheckpointRow, RecordHeader, RecordKind, RECORD_FLAG_REWRITE};
use crate::{EntryLoc, HardState};

/// What replay needs to know about one record beyond its header.
#[derive(Debug, Clone)]
pub enum RecordBody {
    /// A Raft entry; for data entries the batch's offset count and max
    /// timestamp.
    Entry {
        offset_count: u32,
        max_timestamp: i64,
    },
    Truncate,
    Compact {
        first_offset: u64,
    },
    HardState {
        vote: u64,
    },
    Checkpoint(Vec<CheckpointRow>),
    RemovePartition,
}

/// One record found in a segment.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub segment_seq: u32,
    pub pos: u32,
    pub header: RecordHeader,
    pub body: RecordBody,
}

#[derive(Debug)]
struct PartReplay {
    entries: BTreeMap<u64, EntryLoc>,
    first_index: u64,
    term_before_first: u64,
    first_offset: u64,
    hard: HardState,
}

impl Default for PartReplay {
    /// A new partition: empty, first index 1, offsets from 0.
    fn default() -> Self {
        PartReplay {
            entries: BTreeMap::new(),
            first_index: 1,
            term_before_first: 0,
            first_offset: 0,
            hard: HardState::default(),
        }
    }
}

/// The replay state machine.
#[derive(Debug, Default)]
pub struct Replay {
    parts: HashMap<PartitionId, PartReplay>,
}

/// A partition as recovered.
#[derive(Debug)]
pub struct RecoveredPartition {
    pub id: PartitionId,
    pub first_index: u64,
    pub term_before_first: u64,
    pub first_offset: u64,
    pub hard: HardState,
    /// Dense entries from `first_index`, with base offsets filled in.
    pub entries: Vec<EntryLoc>,
    /// Set when the entries are not dense (a segment was lost or corrupt).
    pub corrupt: Option<String>,
}

impl Replay {
    /// Applies one record.
    pub fn apply(&mut self, rec: &Scanned) {
        let h = &rec.header;
        if let RecordBody::Checkpoint(rows) = &rec.body {
            self.apply_checkpoint(rows);
            return;
        }
        if let RecordBody::RemovePartition = rec.body {
            self.parts.remove(&h.partition);
            return;
        }
        let part = self.parts.entry(h.partition).or_default();
        match &rec.body {
            RecordBody::Entry {
                offset_count,
                max_timestamp,
            } => {
                if h.index < part.first_index {
                    // Below the compaction point: superseded, ignore.
                    return;
                }
                if h.flags & RECORD_FLAG_REWRITE == 0 {
                    drop(part.entries.split_off(&h.index));
                }
                part.entries.insert(
                    h.index,
                    EntryLoc {
                        segment_seq: rec.segment_seq,
                        pos: rec.pos,
                        payload_len: h.payload_len,
                        kind: h.kind,
                        term: h.term,
                        base_offset: 0,
                        offset_count: *offset_count,
                        max_timestamp: *max_timestamp,
                        max_timestamp_running: i64::MIN,
                    },
                );
            }
            RecordBody::Truncate => drop(part.entries.split_off(&h.index)),
            RecordBody::Compact { first_offset } => {
                part.entries = part.entries.split_off(&h.index);
                part.first_index = h.index;
                part.term_before_first = h.term;
                part.first_offset = *first_offset;
            }
            RecordBody::HardState { vote } => {
                part.hard = HardState {
                    term: h.term,
                    vote: *vote,
                    commit: h.index,
                };
            }
            RecordBody::Checkpoint(_) | RecordBody::RemovePartition => unreachable!(),
        }
    }

    fn apply_checkpoint(&mut self, rows: &[CheckpointRow]) {
        let mut next: HashMap<PartitionId, PartReplay> = HashMap::with_capacity(rows.len());
        for row in rows {
            let mut part = self.parts.remove(&row.partition).unwrap_or_default();
            part.entries = part.entries.split_off(&row.first_index);
            drop(part.entries.split_off(&(row.last_index.saturating_add(1))));
            part.first_index = row.first_index;
            part.term_before_first = row.term_before_first;
            part.first_offset = row.first_offset;
            part.hard = HardState {
                term: row.hard_term,
                vote: row.hard_vote,
                commit: row.hard_commit,
            };
            next.insert(row.partition, part);
        }
        self.parts = next;
    }

    /// Finishes replay: checks density and assigns base offsets.
    pub fn finish(self) -> Vec<RecoveredPartition> {
        let mut out: Vec<RecoveredPartition> = self
            .parts
            .into_iter()
            .map(|(id, p)| {
                let mut corrupt = None;
                let mut entries = Vec::with_capacity(p.entries.len());
                let mut next_offset = p.first_offset;
                let mut running = i64::MIN;
                for (expect, (index, mut loc)) in (p.first_index..).zip(p.entries) {
                    if index != expect {
                        corrupt = Some(format!(
                            "entries missing from index {expect} to {} (a segment was lost or corrupt)",
                            index - 1
                        ));
                        break;
                    }
                    loc.base_offset = next_offset;
                    next_offset += u64::from(loc.offset_count);
                    if loc.kind == RecordKind::Data {
                        running = running.max(loc.max_timestamp);
                    }
                    loc.max_timestamp_running = running;
                    entries.push(loc);
                }
                RecoveredPartition {
                    id,
                    first_index: p.first_index,
                    term_before_first: p.term_before_first,
                    first_offset: p.first_offset,
                    hard: p.hard,
                    entries,
                    corrupt,
                }
            })
            .collect();
        out.sort_by_key(|p| p.id);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn rec(
        seq: u32,
        pos: u32,
        kind: RecordKind,
        flags: u8,
        p: u64,
        index: u64,
        term: u64,
        body: RecordBody,
    ) -> Scanned {
        Scanned {
            segment_seq: seq,
            pos,
            header: RecordHeader {
                header_crc: 0,
                prev_header_crc: 0,
                segment_seq: seq,
                kind,
                flags,
                payload_len: 10,
                payload_crc: 0,
                partition: p,
                index,
                term,
            },
            body,
        }
    }

    fn data(seq: u32, pos: u32, p: u64, index: u64, term: u64) -> Scanned {
        rec(
            seq,
            pos,
            RecordKind::Data,
            0,
            p,
            index,
            term,
            RecordBody::Entry {
                offset_count: 2,
                max_timestamp: index as i64,
            },
        )
    }

    fn indexes_and_terms(p: &RecoveredPartition) -> Vec<(u64, u64, u64)> {
        p.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (p.first_index + i as u64, e.term, e.base_offset))
            .collect()
    }

    #[test]
    fn conflicting_append_replaces_the_suffix() {
        let mut r = Replay::default();
        for i in 1..=5 {
            r.apply(&data(1, i as u32 * 100, 7, i, 1));
        }
        r.apply(&data(1, 900, 7, 3, 2));
        let parts = r.finish();
        assert_eq!(
            indexes_and_terms(&parts[0]),
            vec![(1, 1, 0), (2, 1, 2), (3, 2, 4)]
        );
        assert!(parts[0].corrupt.is_none());
    }

    #[test]
    fn rewrite_replaces_without_truncating_and_checkpoint_bounds_the_log() {
        let mut r = Replay::default();
        // Segment 1 (since deleted) held indexes 1-2; segment 2 has 3-4 and
        // starts with a checkpoint; segment 3 holds the rewritten 1-2.
        r.apply(&rec(
            2,
            0,
            RecordKind::Checkpoint,
            0,
            0,
            0,
            0,
            RecordBody::Checkpoint(vec![CheckpointRow {
                partition: 7,
                first_index: 1,
                last_index: 2,
                ..Default::default()
            }]),
        ));
        r.apply(&data(2, 100, 7, 3, 1));
        r.apply(&data(2, 200, 7, 4, 1));
        r.apply(&rec(
            3,
            100,
            RecordKind::Data,
            RECORD_FLAG_REWRITE,
            7,
            1,
            1,
            RecordBody::Entry {
                offset_count: 2,
                max_timestamp: 1,
            },
        ));
        r.apply(&rec(
            3,
            200,
            RecordKind::Data,
            RECORD_FLAG_REWRITE,
            7,
            2,
            1,
            RecordBody::Entry {
                offset_count: 2,
                max_timestamp: 2,
            },
        ));
        let parts = r.finish();
        assert_eq!(parts[0].corrupt, None);
        assert_eq!(
            indexes_and_terms(&parts[0]),
            vec![(1, 1, 0), (2, 1, 2), (3, 1, 4), (4, 1, 6)]
        );
        assert_eq!(parts[0].entries[0].segment_seq, 3);
    }

    #[test]
    fn checkpoint_cuts_entries_a_lost_truncation_removed() {
        let mut r = Replay::default();
        for i in 1..=6 {
            r.apply(&data(1, i as u32 * 100, 7, i, 1));
        }
        // Segment 2 (deleted) truncated to 3; segment 3's checkpoint says so.
        r.apply(&rec(
            3,
            0,
            RecordKind::Checkpoint,
            0,
            0,
            0,
            0,
            RecordBody::Checkpoint(vec![CheckpointRow {
                partition: 7,
                first_index: 2,
                term_before_first: 1,
                last_index: 3,
                first_offset: 2,
                hard_term: 4,
                hard_vote: 1,
                hard_commit: 3,
            }]),
        ));
        let parts = r.finish();
        assert_eq!(indexes_and_terms(&parts[0]), vec![(2, 1, 2), (3, 1, 4)]);
        assert_eq!(
            parts[0].hard,
            HardState {
                term: 4,
                vote: 1,
                commit: 3
            }
        );
    }

    #[test]
    fn gaps_mark_the_partition_corrupt_and_removal_drops_it() {
        let mut r = Replay::default();
        r.apply(&data(1, 0, 7, 1, 1));
        r.apply(&data(1, 100, 7, 3, 1));
        r.apply(&data(1, 200, 8, 1, 1));
        r.apply(&rec(
            1,
            300,
            RecordKind::RemovePartition,
            0,
            8,
            0,
            0,
            RecordBody::RemovePartition,
        ));
        let parts = r.finish();
        assert_eq!(parts.len(), 1);
        assert!(parts[0]
            .corrupt
            .as_deref()
            .unwrap()
            .contains("missing from index 2"));
        assert_eq!(parts[0].entries.len(), 1);
    }

    #[test]
    fn compaction_keeps_offsets_dense() {
        let mut r = Replay::default();
        for i in 1..=4 {
            r.apply(&data(1, i as u32 * 100, 7, i, 1));
        }
        r.apply(&rec(
            1,
            900,
            RecordKind::Compact,
            0,
            7,
            3,
            1,
            RecordBody::Compact { first_offset: 4 },
        ));
        r.apply(&rec(
            1,
            1000,
            RecordKind::HardState,
            0,
            7,
            4,
            2,
            RecordBody::HardState { vote: 3 },
        ));
        let parts = r.finish();
        assert_eq!(indexes_and_terms(&parts[0]), vec![(3, 1, 4), (4, 1, 6)]);
        assert_eq!(
            parts[0].hard,
            HardState {
                term: 2,
                vote: 3,
                commit: 4
            }
        );
    }
}
