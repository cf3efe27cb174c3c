//! Reads: the Raft view (indexes, terms, hard state, entries) and the
//! message view (by offset, by timestamp), every record checked before it is
//! returned.
//!
//! Hot path: no allocation per record.

use glommio::io::ReadResult;

use crate::error::{PartitionId, Result, StorageError};
use crate::record::{RecordHeader, RecordKind, RECORD_HEADER_BYTES};
use crate::{EntryLoc, HardState};

use super::*;

impl ShardLog {
    // ----- reads ------------------------------------------------------------

    /// First index (entries before it are compacted).
    pub fn first_index(&self, id: PartitionId) -> Result<u64> {
        Ok(self.shared.inner.borrow().part(id)?.first_index)
    }

    /// Last index (`first_index - 1` when empty).
    pub fn last_index(&self, id: PartitionId) -> Result<u64> {
        Ok(self.shared.inner.borrow().part(id)?.last_index())
    }

    /// Term of `index`, including the term just before the first index.
    pub fn term(&self, id: PartitionId, index: u64) -> Result<u64> {
        self.at_index(id, index, |p| p.term_before_first, |e| e.term)
    }

    /// `of` the entry at `index` of partition `id`; `before_first` of the
    /// partition for `first_index - 1`; Compacted below, Unavailable past
    /// the last index.
    fn at_index<T>(
        &self,
        id: PartitionId,
        index: u64,
        before_first: impl FnOnce(&Partition) -> T,
        of: impl FnOnce(&EntryLoc) -> T,
    ) -> Result<T> {
        let inner = self.shared.inner.borrow();
        let p = inner.part(id)?;
        if index + 1 == p.first_index {
            return Ok(before_first(p));
        }
        if index < p.first_index {
            return Err(StorageError::Compacted {
                partition: id,
                index,
                first: p.first_index,
            });
        }
        p.entry(index).map(of).ok_or(StorageError::Unavailable {
            partition: id,
            index,
            last: p.last_index(),
        })
    }

    /// The persisted hard state.
    pub fn hard_state(&self, id: PartitionId) -> Result<HardState> {
        Ok(self.shared.inner.borrow().part(id)?.hard)
    }

    /// The first offset still stored (log start offset).
    pub fn log_start_offset(&self, id: PartitionId) -> Result<u64> {
        Ok(self.shared.inner.borrow().part(id)?.first_offset)
    }

    /// The offset the next record will get.
    pub fn next_offset(&self, id: PartitionId) -> Result<u64> {
        Ok(self.shared.inner.borrow().part(id)?.next_offset)
    }

    /// The offset after entry `index`: the next offset of the partition as
    /// it stood once that entry was appended. For `first_index - 1` it is
    /// the log start offset. Every replica computes the same value for the
    /// same entry, since offsets follow from the log alone.
    pub fn offset_after(&self, id: PartitionId, index: u64) -> Result<u64> {
        self.at_index(
            id,
            index,
            |p| p.first_offset,
            |e| e.base_offset + u64::from(e.offset_count),
        )
    }

    /// Bytes of log (headers included) held by the entries after `index`,
    /// counting at most `entries_max` of them: how far behind a replica
    /// that has everything up to `index` is.
    pub fn bytes_after(&self, id: PartitionId, index: u64, entries_max: u64) -> Result<u64> {
        let inner = self.shared.inner.borrow();
        let p = inner.part(id)?;
        let from = index.saturating_add(1).max(p.first_index);
        let to = p
            .last_index()
            .min(from.saturating_add(entries_max).saturating_sub(1));
        Ok((from..=to)
            .filter_map(|i| p.entry(i))
            .map(|e| e.record_bytes())
            .sum())
    }

    /// Bytes of entries the partition holds (headers included).
    pub fn partition_bytes(&self, id: PartitionId) -> Result<u64> {
        Ok(self.shared.inner.borrow().part(id)?.bytes)
    }

    /// Entries `lo..hi` (exclusive), stopping once `bytes_max` payload bytes
    /// are reached but always returning at least one (raft-rs's rule).
    pub async fn entries(
        &self,
        id: PartitionId,
        lo: u64,
        hi: u64,
        bytes_max: Option<u64>,
    ) -> Result<Vec<StoredEntry>> {
        let picked = {
            let inner = self.shared.inner.borrow();
            let p = inner.serving_part(id)?;
            if lo < p.first_index {
                return Err(StorageError::Compacted {
                    partition: id,
                    index: lo,
                    first: p.first_index,
                });
            }
            if hi > p.last_index() + 1 || lo > hi {
                return Err(StorageError::Unavailable {
                    partition: id,
                    index: hi.saturating_sub(1),
                    last: p.last_index(),
                });
            }
            let budget = bytes_max.unwrap_or(u64::MAX);
            let mut total = 0u64;
            let mut picked = Vec::with_capacity((hi - lo) as usize);
            for index in lo..hi {
                let e = *p.entry(index).expect("index within bounds");
                total += u64::from(e.payload_len);
                if !picked.is_empty() && total > budget {
                    break;
                }
                picked.push((index, e));
            }
            picked
        };
        let payloads = self.read_payloads(id, &picked).await?;
        Ok(picked
            .into_iter()
            .zip(payloads)
            .map(|((index, e), payload)| StoredEntry {
                index,
                term: e.term,
                kind: EntryKind::from_record(e.kind),
                payload,
            })
            .collect())
    }

    /// Record batches from the one holding `offset`, in order, up to
    /// `bytes_max` (at least one batch) and never past index `index_max`
    /// (the caller's commit index).
    pub async fn read_from_offset(
        &self,
        id: PartitionId,
        offset: u64,
        bytes_max: u64,
        index_max: u64,
    ) -> Result<Vec<FetchedBatch>> {
        let picked = {
            let inner = self.shared.inner.borrow();
            let p = inner.serving_part(id)?;
            if offset < p.first_offset || offset > p.next_offset {
                return Err(StorageError::OffsetOutOfRange {
                    partition: id,
                    offset,
                    start: p.first_offset,
                    next: p.next_offset,
                });
            }
            let start = p
                .entries
                .partition_point(|e| e.base_offset + u64::from(e.offset_count) <= offset);
            let mut picked = Vec::new();
            let mut total = 0u64;
            for (i, e) in p.entries.iter().enumerate().skip(start) {
                let index = p.first_index + i as u64;
                if index > index_max {
                    break;
                }
                if e.kind != RecordKind::Data {
                    continue;
                }
                total += u64::from(e.payload_len);
                if !picked.is_empty() && total > bytes_max {
                    break;
                }
                picked.push((index, *e));
            }
            picked
        };
        let payloads = self.read_payloads(id, &picked).await?;
        Ok(picked
            .into_iter()
            .zip(payloads)
            .map(|((index, e), bytes)| FetchedBatch {
                index,
                base_offset: e.base_offset,
                offset_count: e.offset_count,
                bytes,
            })
            .collect())
    }

    /// The base offset of the first batch holding a record with timestamp at
    /// or after `timestamp_ms`; `None` when no stored record is that new.
    /// Granularity is the batch: a reader skips the earlier records in it.
    pub fn offset_for_timestamp(&self, id: PartitionId, timestamp_ms: i64) -> Result<Option<u64>> {
        let inner = self.shared.inner.borrow();
        let p = inner.serving_part(id)?;
        let i = p
            .entries
            .partition_point(|e| e.max_timestamp_running < timestamp_ms);
        Ok(p.entries
            .iter()
            .skip(i)
            .find(|e| e.kind == RecordKind::Data)
            .map(|e| e.base_offset))
    }

    /// Reads and checks the records at `locs`. Records that lie next to each
    /// other in a segment are read with one call.
    pub(super) async fn read_payloads(
        &self,
        id: PartitionId,
        picked: &[(u64, EntryLoc)],
    ) -> Result<Vec<ReadResult>> {
        // Records still in the staging buffer reach the file first.
        let needs_flush = {
            let inner = self.shared.inner.borrow();
            picked.iter().any(|(_, e)| {
                e.segment_seq == inner.active_seq
                    && u64::from(e.pos) + e.record_bytes() > inner.written_end
            })
        };
        if needs_flush {
            self.sync().await?;
        }
        let mut out = Vec::with_capacity(picked.len());
        let mut i = 0;
        while i < picked.len() {
            let first = picked[i].1;
            let mut j = i + 1;
            let mut end = u64::from(first.pos) + first.record_bytes();
            while j < picked.len()
                && picked[j].1.segment_seq == first.segment_seq
                && u64::from(picked[j].1.pos) == end
                && end - u64::from(first.pos) < SCAN_CHUNK_BYTES as u64
            {
                end += picked[j].1.record_bytes();
                j += 1;
            }
            let (file, path) = {
                let inner = self.shared.inner.borrow();
                let seg = inner.segments.get(&first.segment_seq).ok_or_else(|| {
                    StorageError::PartitionCorrupt {
                        partition: id,
                        why: format!("segment {} is gone", first.segment_seq),
                    }
                })?;
                (seg.file.clone(), seg.path.clone())
            };
            let start = u64::from(first.pos);
            let run = file
                .read_at(start, (end - start) as usize)
                .await
                .map_err(|e| StorageError::glommio("read segment", &path, e))?;
            for (index, e) in &picked[i..j] {
                let at = (u64::from(e.pos) - start) as usize;
                match check_record(&run, at, e, id, *index) {
                    Ok(payload) => out.push(payload),
                    Err(what) => {
                        self.shared.inner.borrow_mut().stats.corruptions += 1;
                        return Err(StorageError::Corrupt {
                            path,
                            pos: u64::from(e.pos),
                            what,
                        });
                    }
                }
            }
            i = j;
        }
        Ok(out)
    }
}

/// Checks one record inside a read run and returns its payload.
pub(super) fn check_record(
    run: &ReadResult,
    at: usize,
    e: &EntryLoc,
    id: PartitionId,
    index: u64,
) -> std::result::Result<ReadResult, String> {
    let header_bytes = run.get(at..at + RECORD_HEADER_BYTES).ok_or("short read")?;
    let h =
        RecordHeader::decode(header_bytes).map_err(|err| format!("bad record header: {err:?}"))?;
    if h.partition != id
        || h.index != index
        || h.term != e.term
        || h.payload_len != e.payload_len
        || h.kind != e.kind
    {
        return Err(format!(
            "record is partition {} index {} term {}, expected partition {id} index {index} term {}",
            h.partition, h.index, h.term, e.term
        ));
    }
    let payload = ReadResult::slice(run, at + RECORD_HEADER_BYTES, e.payload_len as usize)
        .unwrap_or_default();
    if payload.len() != e.payload_len as usize {
        return Err("short read".into());
    }
    if crc32c::crc32c(&payload) != h.payload_crc {
        return Err("payload crc mismatch".into());
    }
    Ok(payload)
}
