//! What the simulator knows must hold, built from what replicas report:
//! every entry any replica has committed, the leader of every term, the
//! offset of every committed value, the metadata at every controller index.
//! Each report is checked against what was recorded before it.

use std::collections::BTreeMap;

use bytes::Bytes;
use shardmq_schema::batch::RecordBatchView;
use shardmq_storage::EntryKind;

use super::disk::Stored;

pub type GroupId = u64;
pub type NodeId = i32;

/// A committed entry as first seen.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub term: u64,
    pub kind: EntryKind,
    pub payload: Bytes,
    pub base_offset: u64,
    pub offset_count: u32,
    pub seen_on: NodeId,
}

/// Where a committed value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueAt {
    pub group: GroupId,
    pub index: u64,
    pub offset: u64,
}

#[derive(Debug, Default)]
pub struct Model {
    /// Committed entries of each group, by index.
    pub groups: BTreeMap<GroupId, BTreeMap<u64, ModelEntry>>,
    /// Every value committed to a partition.
    pub values: BTreeMap<Vec<u8>, ValueAt>,
    /// The leader of each (group, term).
    pub leaders: BTreeMap<(GroupId, u64), NodeId>,
    /// Digest of the controller metadata at each applied index.
    pub metadata: BTreeMap<u64, (u32, NodeId)>,
}

fn describe(e: &ModelEntry) -> String {
    format!(
        "term {} {:?} offsets {}+{} ({} bytes, crc {:08x})",
        e.term,
        e.kind,
        e.base_offset,
        e.offset_count,
        e.payload.len(),
        crc32c::crc32c(&e.payload)
    )
}

/// The values of a data entry's records with their offsets.
pub fn record_values(payload: &[u8]) -> Result<Vec<(Vec<u8>, u64)>, String> {
    let view = RecordBatchView::parse(payload).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for r in view.records() {
        let r = r.map_err(|e| e.to_string())?;
        let value = r.value().ok_or("a record without a value")?.to_vec();
        out.push((value, view.record_offset(&r) as u64));
    }
    Ok(out)
}

impl Model {
    /// `node` leads `group` in `term`.
    pub fn leader(&mut self, group: GroupId, term: u64, node: NodeId) -> Result<(), String> {
        match self.leaders.insert((group, term), node) {
            Some(other) if other != node => Err(format!(
                "two leaders in one term: group {group} term {term} led by brokers {other} and {node}"
            )),
            _ => Ok(()),
        }
    }

    /// `node` holds `e` as committed in `group`. `unique_values`: the
    /// group's record values are unique (the workload's partitions).
    pub fn committed(
        &mut self,
        group: GroupId,
        e: &Stored,
        node: NodeId,
        unique_values: bool,
    ) -> Result<(), String> {
        let entries = self.groups.entry(group).or_default();
        let new = ModelEntry {
            term: e.term,
            kind: e.kind,
            payload: e.payload.clone(),
            base_offset: e.base_offset,
            offset_count: e.offset_count,
            seen_on: node,
        };
        if let Some(old) = entries.get(&e.index) {
            if old.term != new.term
                || old.kind != new.kind
                || old.payload != new.payload
                || old.base_offset != new.base_offset
                || old.offset_count != new.offset_count
            {
                return Err(format!(
                    "committed entry changed: group {group} index {}: {} first seen on broker {}, \
                     now {} on broker {node}",
                    e.index,
                    describe(old),
                    old.seen_on,
                    describe(&new)
                ));
            }
            return Ok(());
        }
        if let Some(prev) = e.index.checked_sub(1).and_then(|i| entries.get(&i)) {
            if prev.base_offset + u64::from(prev.offset_count) != new.base_offset {
                return Err(format!(
                    "offsets not dense: group {group} index {} starts at offset {} but index {} \
                     ends at {}",
                    e.index,
                    new.base_offset,
                    e.index - 1,
                    prev.base_offset + u64::from(prev.offset_count)
                ));
            }
        }
        if let Some(next) = entries.get(&(e.index + 1)) {
            if new.base_offset + u64::from(new.offset_count) != next.base_offset {
                return Err(format!(
                    "offsets not dense: group {group} index {} ends at offset {} but index {} \
                     starts at {}",
                    e.index,
                    new.base_offset + u64::from(new.offset_count),
                    e.index + 1,
                    next.base_offset
                ));
            }
        }
        if e.kind == EntryKind::Data {
            let view = RecordBatchView::parse_verified(&e.payload)
                .map_err(|err| format!("group {group} index {}: stored batch: {err}", e.index))?;
            if view.base_offset() as u64 != e.base_offset
                || view.partition_leader_epoch() as u64 != e.term
                || view.offset_count() != e.offset_count
            {
                return Err(format!(
                    "group {group} index {}: batch stamped with offset {} epoch {} ({} offsets), \
                     stored as offset {} term {} ({} offsets)",
                    e.index,
                    view.base_offset(),
                    view.partition_leader_epoch(),
                    view.offset_count(),
                    e.base_offset,
                    e.term,
                    e.offset_count
                ));
            }
            if unique_values {
                for (value, offset) in record_values(&e.payload)? {
                    let at = ValueAt {
                        group,
                        index: e.index,
                        offset,
                    };
                    if let Some(before) = self.values.insert(value.clone(), at) {
                        return Err(format!(
                            "value {} committed twice: group {} index {} offset {}, and group \
                             {group} index {} offset {offset} (seen on broker {node})",
                            String::from_utf8_lossy(&value),
                            before.group,
                            before.index,
                            before.offset,
                            e.index
                        ));
                    }
                }
            }
        }
        entries.insert(e.index, new);
        Ok(())
    }

    pub fn entry(&self, group: GroupId, index: u64) -> Option<&ModelEntry> {
        self.groups.get(&group)?.get(&index)
    }

    /// The highest committed index of `group` seen so far.
    pub fn last_index(&self, group: GroupId) -> u64 {
        self.groups
            .get(&group)
            .and_then(|m| m.keys().next_back().copied())
            .unwrap_or(0)
    }

    /// `node`'s metadata at `applied` has digest `digest`.
    pub fn metadata(&mut self, applied: u64, digest: u32, node: NodeId) -> Result<(), String> {
        match self.metadata.get(&applied) {
            Some((d, first)) if *d != digest => Err(format!(
                "controller metadata diverged at applied index {applied}: broker {first} had \
                 digest {d:08x}, broker {node} has {digest:08x}"
            )),
            Some(_) => Ok(()),
            None => {
                self.metadata.insert(applied, (digest, node));
                Ok(())
            }
        }
    }
}
