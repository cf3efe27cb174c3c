//! Retention and the collector, which gives back the space of segments
//! without live entries.

use std::path::PathBuf;

use crate::error::{PartitionId, Result, StorageError};
use crate::record::{RECORD_FLAG_REWRITE, RECORD_HEADER_BYTES};
use crate::EntryLoc;

use super::*;

impl ShardLog {
    // ----- retention and collection -----------------------------------------

    /// Applies a retention policy to one partition: drops its oldest entries
    /// while it holds more than `bytes_max` or while their newest record is
    /// older than `age_max_ms` (against `now_ms`), never at or past
    /// `keep_from_index` (what Raft still needs). Returns the new first index.
    pub async fn apply_retention(
        &self,
        id: PartitionId,
        policy: RetentionPolicy,
        now_ms: i64,
        keep_from_index: u64,
    ) -> Result<u64> {
        let new_first = {
            let inner = self.shared.inner.borrow();
            let p = inner.part(id)?;
            let mut first = p.first_index;
            let mut bytes = p.bytes;
            let cutoff = policy
                .age_max_ms
                .map(|age| now_ms.saturating_sub(age as i64));
            for e in &p.entries {
                if first >= keep_from_index {
                    break;
                }
                let too_big = policy.bytes_max.is_some_and(|max| bytes > max);
                let too_old = cutoff.is_some_and(|c| e.max_timestamp_running < c);
                if !(too_big || too_old) {
                    break;
                }
                bytes -= e.record_bytes();
                first += 1;
            }
            first
        };
        self.compact(id, new_first).await?;
        Ok(new_first)
    }

    /// Reclaims disk space: deletes sealed segments that hold no live entry,
    /// and first rewrites the live entries of sealed segments whose live
    /// fraction is at most `gc_live_ratio_max` into the active segment.
    pub async fn gc(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        let to_rewrite: Vec<u32> = {
            let inner = self.shared.inner.borrow();
            inner
                .segments
                .iter()
                .filter(|(_, s)| {
                    s.sealed
                        && s.live_bytes > 0
                        && (s.live_bytes as f64)
                            <= inner.cfg.gc_live_ratio_max * s.end.max(1) as f64
                })
                .map(|(&seq, _)| seq)
                .collect()
        };
        for seq in to_rewrite {
            report.entries_rewritten += self.rewrite_segment(seq).await?;
        }
        if report.entries_rewritten > 0 {
            // Copies are durable before their originals go.
            self.sync().await?;
        }
        let dead: Vec<(u32, PathBuf, u64)> = {
            let inner = self.shared.inner.borrow();
            inner
                .segments
                .iter()
                .filter(|(_, s)| s.sealed && s.live_bytes == 0)
                .map(|(&seq, s)| (seq, s.path.clone(), s.end))
                .collect()
        };
        if dead.is_empty() {
            return Ok(report);
        }
        let dir = self.shared.inner.borrow().cfg.dir.clone();
        for (seq, path, end) in dead {
            // Its index file is written before it goes, never after.
            self.sidecar_written(seq).await;
            let still_dead = self
                .shared
                .inner
                .borrow()
                .segments
                .get(&seq)
                .is_some_and(|s| s.live_bytes == 0);
            if !still_dead {
                continue;
            }
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(end);
            let (recycle, segment_bytes) = {
                let inner = self.shared.inner.borrow();
                (
                    inner.free_segments.len() < inner.cfg.recycle_segments_max,
                    inner.cfg.segment_bytes,
                )
            };
            // Only a file of the full segment size is recycled (one from an
            // earlier configuration is not).
            let recycled = recycle && bytes == segment_bytes;
            if recycled {
                let free = free_path(&dir, seq);
                std::fs::rename(&path, &free)
                    .map_err(|e| StorageError::io("recycle segment", &free, e))?;
            } else {
                std::fs::remove_file(&path)
                    .map_err(|e| StorageError::io("delete segment", &path, e))?;
            }
            let idx = sidecar_path(&dir, seq);
            if let Err(e) = std::fs::remove_file(&idx) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(StorageError::io("delete segment index", &idx, e));
                }
            }
            let mut inner = self.shared.inner.borrow_mut();
            inner.segments.remove(&seq);
            inner.stats.segments_deleted += 1;
            report.segments_deleted += 1;
            if recycled {
                inner.free_segments.push_back(seq);
                inner.stats.segments_recycled += 1;
                report.segments_recycled += 1;
            } else {
                report.bytes_freed += bytes;
            }
        }
        sync_dir(&dir)?;
        self.shared.inner.borrow_mut().stats.fdatasync_calls += 1;
        Ok(report)
    }

    pub(super) async fn rewrite_segment(&self, seq: u32) -> Result<u64> {
        let live: Vec<(PartitionId, u64, EntryLoc)> = {
            let inner = self.shared.inner.borrow();
            let mut live = Vec::new();
            for (&id, p) in &inner.parts {
                for (i, e) in p.entries.iter().enumerate() {
                    if e.segment_seq == seq {
                        live.push((id, p.first_index + i as u64, *e));
                    }
                }
            }
            live.sort_by_key(|&(_, _, e)| e.pos);
            live
        };
        let mut moved = 0;
        for (id, index, loc) in live {
            let payload = self
                .read_payloads(id, &[(index, loc)])
                .await?
                .pop()
                .expect("one payload per location");
            self.reserve(RECORD_HEADER_BYTES + payload.len()).await?;
            let mut inner = self.shared.inner.borrow_mut();
            // The entry may have been truncated, compacted or rewritten while
            // we read it: move it only if it is still the one we read.
            let still = inner
                .parts
                .get(&id)
                .and_then(|p| p.entry(index))
                .is_some_and(|e| *e == loc);
            if !still {
                continue;
            }
            let new_loc = inner.encode_record(
                loc.kind,
                RECORD_FLAG_REWRITE,
                id,
                index,
                loc.term,
                &[&payload[..]],
                (loc.offset_count, loc.max_timestamp),
                None,
            );
            inner.release(&loc);
            let active = inner.active_seq;
            if let Some(s) = inner.segments.get_mut(&active) {
                s.live_bytes += loc.record_bytes();
            }
            let p = inner.parts.get_mut(&id).expect("checked above");
            let slot = (index - p.first_index) as usize;
            p.entries[slot].segment_seq = active;
            p.entries[slot].pos = new_loc;
            inner.stats.entries_rewritten += 1;
            moved += 1;
        }
        Ok(moved)
    }
}
