//! The write path: appends and the other log records, the staging buffer,
//! the space queue, and the two stages of a group-commit round (write,
//! fdatasync).
//!
//! Hot path: no allocation and no syscall per record.

use std::time::Instant;

use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile};
use shardmq_schema::batch::{self, RecordBatchView};

use crate::error::{PartitionId, Result, StorageError};
use crate::record::{payload_u64, RecordHeader, RecordKind, RECORD_HEADER_BYTES};
use crate::sidecar::SidecarRow;
use crate::{EntryLoc, HardState};

use super::*;

/// A `reserve` call's place in the queue of calls that had to wait for
/// staging-buffer space. A call takes space only beyond what the calls
/// queued before it want, so space goes to waiters in arrival order.
/// Without this, the writers that run first after a round (the round's own
/// syncers, appending again at once) refill the buffer every round, and a
/// writer that waited can lose every round until a roll reshuffles the
/// order: seconds, with 8 writers of 1 MiB and a 2 or 4 MiB buffer.
struct SpaceWaiter<'a> {
    shared: &'a Shared,
    len: usize,
    ticket: Option<u64>,
}

impl SpaceWaiter<'_> {
    /// Bytes this call must leave free for the calls queued before it.
    fn set_aside(&self, inner: &Inner) -> usize {
        match self.ticket {
            Some(t) => inner.space_queue.range(..t).map(|(_, len)| len).sum(),
            None => inner.space_queue.values().sum(),
        }
    }

    fn enqueue(&mut self, inner: &mut Inner) {
        if self.ticket.is_none() {
            let t = inner.space_tickets;
            inner.space_tickets += 1;
            inner.space_queue.insert(t, self.len);
            self.ticket = Some(t);
        }
    }

    /// Leaves the queue (if in it) and wakes the calls waiting behind it.
    fn leave(&mut self, inner: &mut Inner) {
        if let Some(t) = self.ticket.take() {
            inner.space_queue.remove(&t);
            self.shared.changed.notify(usize::MAX);
        }
    }
}

impl Drop for SpaceWaiter<'_> {
    /// A call that failed or was cancelled while queued leaves the queue.
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let shared = self.shared;
            self.leave(&mut shared.inner.borrow_mut());
        }
    }
}

/// Largest chunk of a staging buffer (smaller when `write_buffer_bytes` is).
/// A round writes each chunk it filled with one O_DIRECT write, all of them
/// in flight at once, and the chunks go back to the log's pool afterwards:
/// the memory of the staging buffers is allocated once and reused. (A fresh
/// buffer per round cost page faults, the kernel's page clearing and an
/// munmap for every byte staged: on the reference machine half of the
/// executor's time at 1 MiB appends, and half of the log's bandwidth.)
const STAGING_CHUNK_BYTES: usize = 256 << 10;
const _: () = assert!(STAGING_CHUNK_BYTES as u64 % BLOCK_BYTES == 0);
/// Zeros that pad a round's last block.
static BLOCK_ZEROS: [u8; BLOCK_BYTES as usize] = [0; BLOCK_BYTES as usize];

/// The staging buffer of the active segment: a run of equal chunks, chunk
/// `i` mirroring the segment from `base + i * chunk_bytes`. Shard view.
pub(super) struct Staging {
    pub(super) chunks: Vec<DmaBuffer>,
    pub(super) chunk_bytes: usize,
    /// Aligned file position of the first chunk's first byte.
    pub(super) base: u64,
    /// Valid bytes from `base`.
    pub(super) fill: usize,
}

impl Staging {
    /// An empty staging buffer at `base` for a log configured by `cfg`.
    pub(super) fn new(cfg: &LogConfig, base: u64) -> Self {
        Staging {
            chunks: Vec::new(),
            chunk_bytes: STAGING_CHUNK_BYTES.min(cfg.write_buffer_bytes),
            base,
            fill: 0,
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.chunks.len() * self.chunk_bytes
    }

    /// Copies `src` into the buffer at `at` (within its capacity).
    fn put(&mut self, mut at: usize, mut src: &[u8]) {
        while !src.is_empty() {
            let (i, off) = (at / self.chunk_bytes, at % self.chunk_bytes);
            let n = (self.chunk_bytes - off).min(src.len());
            self.chunks[i].as_bytes_mut()[off..off + n].copy_from_slice(&src[..n]);
            at += n;
            src = &src[n..];
        }
    }
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("capacity", &self.capacity())
            .field("base", &self.base)
            .field("fill", &self.fill)
            .finish()
    }
}

/// What writing a piece gave: its position, its length, the write's
/// result and the chunk back, for reuse.
type PieceOutcome = (u64, usize, glommio::Result<usize, ()>, Option<DmaBuffer>);

/// One write of a round: a whole chunk, or the copy of the filled part of
/// the last one.
enum Piece {
    Chunk(Rc<DmaBuffer>, u64),
    Copy(DmaBuffer, u64),
}

impl Piece {
    /// Writes the piece; gives back its chunk for reuse.
    async fn write(self, file: Rc<DmaFile>) -> PieceOutcome {
        match self {
            Piece::Chunk(chunk, pos) => {
                let len = chunk.len();
                let result = file.write_rc_at(chunk.clone(), pos).await;
                (pos, len, result, Rc::try_unwrap(chunk).ok())
            }
            Piece::Copy(buf, pos) => {
                let len = buf.len();
                (pos, len, file.write_at(buf, pos).await, None)
            }
        }
    }
}

/// What the writer stamps into a data entry's batch in the staging copy:
/// base offset and leader epoch (the Raft term), and the batch's crc as
/// `check_entry` verified it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stamp {
    base_offset: i64,
    epoch: i32,
    batch_crc: u32,
}

impl ShardLog {
    // ----- writes -----------------------------------------------------------

    /// Appends Raft entries to a partition. The first entry's index may be at
    /// most `last_index + 1`; an index inside the log replaces that entry and
    /// everything after it (Raft's conflict rule). Data payloads must be
    /// valid record batches (crc checked); storage stamps their base offset
    /// and term. Durable after the next [`sync`](Self::sync).
    pub async fn append(&self, id: PartitionId, entries: &[EntryRef<'_>]) -> Result<AppendOutcome> {
        let mut outcome: Option<AppendOutcome> = None;
        for (i, e) in entries.iter().enumerate() {
            if i > 0 && e.index != entries[i - 1].index + 1 {
                return Err(StorageError::InvalidArgument(format!(
                    "partition {id}: entries not consecutive ({} after {})",
                    e.index,
                    entries[i - 1].index
                )));
            }
            let (facts, batch_crc) = self.check_entry(id, e)?;
            self.reserve(RECORD_HEADER_BYTES + e.payload.len()).await?;
            let mut inner = self.shared.inner.borrow_mut();
            let o = inner.append_entry(id, e, facts, batch_crc, 0)?;
            outcome = Some(match outcome {
                None => o,
                Some(prev) => AppendOutcome {
                    base_offset: prev.base_offset,
                    ..o
                },
            });
        }
        match outcome {
            Some(o) => Ok(o),
            None => {
                let inner = self.shared.inner.borrow();
                let p = inner.part(id)?;
                Ok(AppendOutcome {
                    base_offset: p.next_offset,
                    next_offset: p.next_offset,
                    last_index: p.last_index(),
                })
            }
        }
    }

    /// Checks an entry before it is appended: its size, and for a data entry
    /// the record batch, crc included. Returns the batch facts (offset
    /// count, max timestamp) and, for a data entry, the batch's verified crc.
    pub(super) fn check_entry(
        &self,
        id: PartitionId,
        e: &EntryRef<'_>,
    ) -> Result<((u32, i64), Option<u32>)> {
        let max = self.shared.inner.borrow().cfg.entry_bytes_max;
        if e.payload.len() > max {
            return Err(StorageError::InvalidArgument(format!(
                "partition {id}: entry {} is {} bytes, more than entry_bytes_max {max}",
                e.index,
                e.payload.len()
            )));
        }
        match e.kind {
            EntryKind::Data => {
                let view = RecordBatchView::parse_verified(e.payload).map_err(|source| {
                    StorageError::BadBatch {
                        partition: id,
                        index: e.index,
                        source,
                    }
                })?;
                Ok((
                    (view.offset_count(), view.max_timestamp()),
                    Some(view.crc()),
                ))
            }
            EntryKind::Empty if !e.payload.is_empty() => Err(StorageError::InvalidArgument(
                format!("partition {id}: empty entry {} has a payload", e.index),
            )),
            _ => Ok(((0, i64::MIN), None)),
        }
    }

    /// Removes every entry at or after `index` (Raft log repair). Durable
    /// after the next sync.
    pub async fn truncate_suffix(&self, id: PartitionId, index: u64) -> Result<()> {
        self.reserve(RECORD_HEADER_BYTES).await?;
        let mut inner = self.shared.inner.borrow_mut();
        let part = inner.part(id)?;
        if index < part.first_index {
            return Err(StorageError::Compacted {
                partition: id,
                index,
                first: part.first_index,
            });
        }
        if index > part.last_index() {
            return Ok(());
        }
        inner.drop_suffix(id, index);
        inner.encode_record(RecordKind::Truncate, 0, id, index, 0, &[], (0, 0), None);
        Ok(())
    }

    /// Persists Raft's hard state. Durable after the next sync.
    pub async fn set_hard_state(&self, id: PartitionId, hard: HardState) -> Result<()> {
        self.reserve(RECORD_HEADER_BYTES + 8).await?;
        let mut inner = self.shared.inner.borrow_mut();
        inner.part_mut(id)?.hard = hard;
        inner.encode_record(
            RecordKind::HardState,
            0,
            id,
            hard.commit,
            hard.term,
            &[&hard.vote.to_le_bytes()],
            (0, 0),
            None,
        );
        Ok(())
    }

    /// Moves the first index forward to `first_index` (at most
    /// `last_index + 1`), remembering the term before it. Durable after the
    /// next sync; space comes back when the collector runs.
    pub async fn compact(&self, id: PartitionId, first_index: u64) -> Result<()> {
        self.reserve(RECORD_HEADER_BYTES + 8).await?;
        let mut inner = self.shared.inner.borrow_mut();
        let part = inner.part(id)?;
        if first_index <= part.first_index {
            return Ok(());
        }
        if first_index > part.last_index() + 1 {
            return Err(StorageError::Unavailable {
                partition: id,
                index: first_index - 1,
                last: part.last_index(),
            });
        }
        let term_before = part
            .entry(first_index - 1)
            .map(|e| e.term)
            .unwrap_or(part.term_before_first);
        let first_offset = part
            .entry(first_index)
            .map(|e| e.base_offset)
            .unwrap_or(part.next_offset);
        inner.drop_prefix(id, first_index, term_before, first_offset);
        inner.encode_record(
            RecordKind::Compact,
            0,
            id,
            first_index,
            term_before,
            &[&first_offset.to_le_bytes()],
            (0, 0),
            None,
        );
        Ok(())
    }

    /// Drops every entry and restarts the partition at `first_index` with
    /// offsets from `first_offset` (a replica restarting from the leader's
    /// compaction point, i.e. a snapshot). Durable after the next sync.
    pub async fn reset(
        &self,
        id: PartitionId,
        first_index: u64,
        term_before_first: u64,
        first_offset: u64,
    ) -> Result<()> {
        if first_index == 0 {
            return Err(StorageError::InvalidArgument(
                "first_index must be at least 1".into(),
            ));
        }
        self.reserve(2 * RECORD_HEADER_BYTES + 8).await?;
        let mut inner = self.shared.inner.borrow_mut();
        let last = inner.part(id)?.last_index();
        // Everything goes: the suffix from the new first index (or the
        // whole log) first, then the prefix.
        let cut = first_index.min(last + 1).max(inner.part(id)?.first_index);
        inner.drop_suffix(id, cut);
        inner.drop_prefix(id, first_index, term_before_first, first_offset);
        inner.encode_record(RecordKind::Truncate, 0, id, cut, 0, &[], (0, 0), None);
        inner.encode_record(
            RecordKind::Compact,
            0,
            id,
            first_index,
            term_before_first,
            &[&first_offset.to_le_bytes()],
            (0, 0),
            None,
        );
        Ok(())
    }

    /// Makes everything appended before this call durable. Concurrent callers
    /// share rounds: one write and one fdatasync cover all of them.
    ///
    /// A round has two stages, a write and an fdatasync, and consecutive
    /// rounds overlap: the next round's write runs while this round's
    /// fdatasync does. An append is durable once an fdatasync that started
    /// after its write completed has returned.
    pub async fn sync(&self) -> Result<()> {
        let target = self.shared.inner.borrow().appended_lsn;
        loop {
            enum Next {
                Wait(event_listener::EventListener),
                Write,
                Sync,
            }
            let next = {
                let inner = self.shared.inner.borrow();
                if let Some(why) = &inner.poisoned {
                    return Err(StorageError::Poisoned(why.clone()));
                }
                if inner.durable_lsn >= target {
                    return Ok(());
                }
                if inner.written_lsn >= target {
                    if inner.syncing {
                        Next::Wait(self.shared.changed.listen())
                    } else {
                        Next::Sync
                    }
                } else if inner.writing {
                    Next::Wait(self.shared.changed.listen())
                } else {
                    Next::Write
                }
            };
            match next {
                Next::Wait(l) => l.await,
                Next::Write => self.write_stage().await?,
                Next::Sync => self.sync_stage().await?,
            }
        }
    }

    /// Waits until a record of `len` bytes fits in the staging buffer and in
    /// the active segment, flushing or rolling as needed.
    pub(super) async fn reserve(&self, len: usize) -> Result<()> {
        let mut rolled = false;
        let mut waiter = SpaceWaiter {
            shared: &self.shared,
            len,
            ticket: None,
        };
        loop {
            enum Next {
                Wait(event_listener::EventListener),
                Roll,
                Flush,
            }
            let next = {
                let mut inner = self.shared.inner.borrow_mut();
                inner.check_poisoned()?;
                if self.shared.closed.get() {
                    return Err(StorageError::InvalidArgument("the log is closed".into()));
                }
                // Room: what the buffer holds or may grow to.
                let room = inner.staging.capacity().max(inner.cfg.write_buffer_bytes);
                let set_aside = waiter.set_aside(&inner);
                if inner.rolling {
                    Next::Wait(self.shared.changed.listen())
                } else if inner.staging.base + (inner.staging.fill + len) as u64
                    > inner.cfg.segment_bytes
                {
                    Next::Roll
                } else if inner.staging.fill + len + set_aside <= room {
                    inner.grow_staging(len);
                    waiter.leave(&mut inner);
                    return Ok(());
                } else if inner.staging.fill + len <= room {
                    // It fits, but in space set aside for calls queued
                    // before it.
                    waiter.enqueue(&mut inner);
                    Next::Wait(self.shared.changed.listen())
                } else if inner.writing {
                    waiter.enqueue(&mut inner);
                    Next::Wait(self.shared.changed.listen())
                } else if inner.appended_lsn == inner.written_lsn {
                    // The buffer holds only the tail block and the record is
                    // larger than the rest of it: grow once.
                    inner.grow_staging(len);
                    waiter.leave(&mut inner);
                    return Ok(());
                } else {
                    // Queued while it flushes, too: the round frees space
                    // for this call, not for the calls that append while it
                    // runs.
                    waiter.enqueue(&mut inner);
                    Next::Flush
                }
            };
            match next {
                Next::Wait(l) => l.await,
                Next::Roll if rolled => {
                    // A fresh segment holds only its checkpoint: the record
                    // can never fit.
                    return Err(StorageError::InvalidArgument(format!(
                        "a {len}-byte record does not fit in a segment after its checkpoint"
                    )));
                }
                Next::Roll => {
                    self.roll().await?;
                    rolled = true;
                }
                // Taking the buffer for a write is what frees its space; the
                // fdatasync can come later.
                Next::Flush => self.write_stage().await?,
            }
        }
    }

    /// Writes what is staged without fdatasync and without counting it
    /// durable: what a crash can leave half-written. For crash tests only.
    #[doc(hidden)]
    pub async fn write_unsynced_for_crash_test(&self) -> Result<()> {
        self.write_stage().await
    }

    /// The write stage of a round: takes the staging buffer and writes it
    /// at its aligned position, one O_DIRECT write per chunk, all in flight
    /// together.
    pub(super) async fn write_stage(&self) -> Result<()> {
        let (file, path, mut pieces, target, data_end, through) = {
            let mut inner = self.shared.inner.borrow_mut();
            inner.check_poisoned()?;
            if inner.writing || inner.appended_lsn == inner.written_lsn {
                return Ok(());
            }
            inner.writing = true;
            let target = inner.appended_lsn;
            let idle = !inner.syncing
                && inner.durable_lsn == inner.written_lsn
                && !inner.busy_at_last_write;
            let seg = &inner.segments[&inner.active_seq];
            let writer = seg.writer.as_ref().filter(|_| match inner.cfg.sync_mode {
                SyncMode::Pipelined => false,
                SyncMode::WriteThrough => true,
                SyncMode::Adaptive => idle && inner.staging.fill <= super::WRITE_THROUGH_BYTES_MAX,
            });
            let through = writer.is_some();
            let file = writer.unwrap_or(&seg.file).clone();
            let path = seg.path.clone();
            let base = inner.staging.base;
            let fill = inner.staging.fill;
            let end = base + fill as u64;
            let write_len = align_up(fill as u64) as usize;
            // The next buffer starts with the block that holds the current
            // end. Writing that block again while this round's fdatasync
            // runs is safe: the part of it already written is the same.
            let next_base = align_down(end);
            let tail = (end - next_base) as usize;
            let tail_from = (next_base - base) as usize;
            let fresh = Staging::new(&inner.cfg, next_base);
            let mut taken = std::mem::replace(&mut inner.staging, fresh);
            taken.put(fill, &BLOCK_ZEROS[..write_len - fill]);
            inner.grow_staging(tail);
            let cs = taken.chunk_bytes;
            if tail > 0 {
                // A block never straddles two chunks. (With no partial tail
                // block the end may be the end of the last chunk: nothing
                // to carry over.)
                let from = &taken.chunks[tail_from / cs].as_bytes()[tail_from % cs..][..tail];
                inner.staging.put(0, from);
            }
            inner.staging.fill = tail;
            let used = write_len.div_ceil(cs);
            let spare = taken.chunks.split_off(used);
            inner.recycle_chunks(spare);
            let mut pieces = Vec::with_capacity(used);
            for (i, chunk) in taken.chunks.into_iter().enumerate() {
                let at = i * cs;
                let n = (write_len - at).min(cs);
                if n == cs {
                    pieces.push(Piece::Chunk(Rc::new(chunk), base + at as u64));
                } else {
                    let mut copy = file.alloc_dma_buffer(n);
                    copy.as_bytes_mut().copy_from_slice(&chunk.as_bytes()[..n]);
                    inner.recycle_chunks([chunk]);
                    pieces.push(Piece::Copy(copy, base + at as u64));
                }
            }
            (file, path, pieces, target, end, through)
        };
        let started = Instant::now();
        let writes = pieces.len() as u64;
        let outcomes = if pieces.len() == 1 {
            let piece = pieces.pop().expect("one piece");
            vec![piece.write(file).await]
        } else {
            // All pieces in flight at once; they never overlap.
            let tasks: Vec<_> = pieces
                .into_iter()
                .map(|piece| glommio::spawn_local(piece.write(file.clone())))
                .collect();
            let mut outcomes = Vec::with_capacity(tasks.len());
            for task in tasks {
                outcomes.push(task.await);
            }
            outcomes
        };
        let mut result = Ok(());
        let mut chunks_back = Vec::with_capacity(outcomes.len());
        for (pos, len, written, chunk) in outcomes {
            assert!(
                pos % BLOCK_BYTES == 0 && len as u64 % BLOCK_BYTES == 0,
                "a round writes whole blocks at a block boundary ({len} bytes at {pos})"
            );
            chunks_back.extend(chunk);
            let failed = match written {
                Ok(n) if n == len => continue,
                Ok(n) => StorageError::io(
                    "write segment",
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("short write: {n} of {len} bytes at {pos}"),
                    ),
                ),
                Err(e) => StorageError::glommio("write segment", &path, e),
            };
            if result.is_ok() {
                result = Err(failed);
            }
        }
        {
            let mut inner = self.shared.inner.borrow_mut();
            inner.writing = false;
            inner.recycle_chunks(chunks_back);
            inner.stats.write_calls += writes;
            let write_us = started.elapsed().as_micros().max(1) as u64;
            inner.stats.write_latency_us.saturating_record(write_us);
            match &result {
                Ok(()) => {
                    inner.written_lsn = target;
                    inner.written_end = inner.written_end.max(data_end);
                    inner.busy_at_last_write = inner.appended_lsn > target;
                    if through {
                        // Written through: durable now, the round is done.
                        inner.durable_lsn = inner.durable_lsn.max(target);
                        inner.stats.sync_rounds += 1;
                        inner.stats.sync_latency_us.saturating_record(write_us);
                    }
                }
                Err(e) => inner.poisoned = Some(e.to_string()),
            }
            // A failed stage leaves the log poisoned and its positions as
            // they were when the stage began; nothing more is promised.
            if inner.poisoned.is_none() {
                inner.assert_invariants();
            }
        }
        self.shared.changed.notify(usize::MAX);
        result
    }

    /// The fdatasync stage of a round: makes everything written so far
    /// durable.
    pub(super) async fn sync_stage(&self) -> Result<()> {
        let (file, path, target) = {
            let mut inner = self.shared.inner.borrow_mut();
            inner.check_poisoned()?;
            if inner.syncing || inner.written_lsn == inner.durable_lsn {
                return Ok(());
            }
            inner.syncing = true;
            let seg = &inner.segments[&inner.active_seq];
            (seg.file.clone(), seg.path.clone(), inner.written_lsn)
        };
        let started = Instant::now();
        let result = file
            .fdatasync()
            .await
            .map_err(|e| StorageError::glommio("fdatasync segment", &path, e));
        {
            let mut inner = self.shared.inner.borrow_mut();
            inner.syncing = false;
            inner.stats.fdatasync_calls += 1;
            match &result {
                Ok(()) => {
                    inner.durable_lsn = inner.durable_lsn.max(target);
                    inner.stats.sync_rounds += 1;
                    let us = started.elapsed().as_micros() as u64;
                    inner.stats.sync_latency_us.saturating_record(us.max(1));
                }
                Err(e) => inner.poisoned = Some(e.to_string()),
            }
            // A failed stage leaves the log poisoned and its positions as
            // they were when the stage began; nothing more is promised.
            if inner.poisoned.is_none() {
                inner.assert_invariants();
            }
        }
        self.shared.changed.notify(usize::MAX);
        result
    }
}

impl Inner {
    /// The writer's invariants, checked after every stage of a sync round,
    /// in release builds too: a broken one means the durable position the
    /// log reports (and so what `sync` promises) could be wrong.
    /// - `durable_lsn <= written_lsn <= appended_lsn`;
    /// - the staging buffer starts at a block boundary, within the segment,
    ///   and mirrors the active segment's end;
    /// - outside a write stage, the bytes appended but not written are
    ///   exactly those after `written_end` in the staging buffer, and the
    ///   buffer starts in the block holding `written_end`.
    pub(super) fn assert_invariants(&self) {
        assert!(
            self.durable_lsn <= self.written_lsn && self.written_lsn <= self.appended_lsn,
            "durable {} <= written {} <= appended {}",
            self.durable_lsn,
            self.written_lsn,
            self.appended_lsn
        );
        let base = self.staging.base;
        let appended_end = base + self.staging.fill as u64;
        assert!(
            base % BLOCK_BYTES == 0 && self.staging.fill <= self.staging.capacity(),
            "staging at {base} holds {} of {} bytes",
            self.staging.fill,
            self.staging.capacity()
        );
        assert!(
            appended_end <= self.cfg.segment_bytes,
            "appended end {appended_end} within the segment"
        );
        let active_end = self.segments.get(&self.active_seq).map(|s| s.end);
        assert_eq!(active_end, Some(appended_end), "active segment end");
        if !self.writing {
            assert!(
                base <= self.written_end && self.written_end <= appended_end,
                "written end {} within the staging buffer {base}..{appended_end}",
                self.written_end
            );
            assert_eq!(
                self.appended_lsn - self.written_lsn,
                appended_end - self.written_end,
                "unwritten bytes are the staged ones"
            );
        }
    }

    /// Makes room for `len` more bytes in the staging buffer, with chunks
    /// from the pool first.
    pub(super) fn grow_staging(&mut self, len: usize) {
        let need = self.staging.fill + len;
        while self.staging.capacity() < need {
            let chunk = match self.staging_pool.pop() {
                Some(chunk) => chunk,
                None => self.segments[&self.active_seq]
                    .file
                    .alloc_dma_buffer(self.staging.chunk_bytes),
            };
            self.staging.chunks.push(chunk);
        }
    }

    /// Gives staging chunks back to the pool, which keeps at most what one
    /// full staging buffer needs (plus one); the rest are freed.
    pub(super) fn recycle_chunks(&mut self, chunks: impl IntoIterator<Item = DmaBuffer>) {
        let cs = self.staging.chunk_bytes;
        let max = self.cfg.write_buffer_bytes.div_ceil(cs) + 1;
        for chunk in chunks {
            if self.staging_pool.len() < max && chunk.len() == cs {
                self.staging_pool.push(chunk);
            }
        }
    }

    /// Drops a live entry's bytes from its segment's live count.
    pub(super) fn release(&mut self, e: &EntryLoc) {
        if let Some(s) = self.segments.get_mut(&e.segment_seq) {
            s.live_bytes -= e.record_bytes();
        }
    }

    pub(super) fn drop_suffix(&mut self, id: PartitionId, from: u64) {
        let p = self
            .parts
            .get_mut(&id)
            .expect("caller checked the partition");
        let keep = from.saturating_sub(p.first_index) as usize;
        let dropped: Vec<EntryLoc> = p.entries.drain(keep.min(p.entries.len())..).collect();
        for e in &dropped {
            p.bytes -= e.record_bytes();
        }
        p.next_offset = p.entries.back().map_or(p.first_offset, |e| {
            e.base_offset + u64::from(e.offset_count)
        });
        for e in &dropped {
            self.release(e);
        }
    }

    pub(super) fn drop_prefix(
        &mut self,
        id: PartitionId,
        first_index: u64,
        term_before: u64,
        first_offset: u64,
    ) {
        let p = self
            .parts
            .get_mut(&id)
            .expect("caller checked the partition");
        let n = (first_index.saturating_sub(p.first_index) as usize).min(p.entries.len());
        let dropped: Vec<EntryLoc> = p.entries.drain(..n).collect();
        for e in &dropped {
            p.bytes -= e.record_bytes();
        }
        p.first_index = first_index;
        p.term_before_first = term_before;
        p.first_offset = first_offset;
        if p.entries.is_empty() {
            p.next_offset = first_offset;
        }
        for e in &dropped {
            self.release(e);
        }
    }

    /// Appends one Raft entry whose space is reserved. Applies the conflict
    /// rule, stamps the batch, updates the entry table.
    pub(super) fn append_entry(
        &mut self,
        id: PartitionId,
        e: &EntryRef<'_>,
        facts: (u32, i64),
        batch_crc: Option<u32>,
        flags: u8,
    ) -> Result<AppendOutcome> {
        let p = self.serving_part(id)?;
        if e.index < p.first_index || e.index > p.last_index() + 1 {
            return Err(StorageError::IndexGap {
                partition: id,
                index: e.index,
                first: p.first_index,
                last: p.last_index(),
            });
        }
        if e.index <= p.last_index() {
            self.drop_suffix(id, e.index);
        }
        let base_offset = self.parts[&id].next_offset;
        // Data entries are stamped in the staging copy: the producer's crc
        // does not cover base offset and leader epoch, so it stays valid.
        // `check_entry` gives a verified crc for data entries only.
        let stamp = batch_crc.map(|batch_crc| Stamp {
            base_offset: base_offset as i64,
            epoch: e.term as i32,
            batch_crc,
        });
        let pos = self.encode_record(
            e.kind.record_kind(),
            flags,
            id,
            e.index,
            e.term,
            &[e.payload],
            facts,
            stamp,
        );
        let active = self.active_seq;
        let loc_bytes = RECORD_HEADER_BYTES as u64 + e.payload.len() as u64;
        if let Some(s) = self.segments.get_mut(&active) {
            s.live_bytes += loc_bytes;
        }
        let p = self.parts.get_mut(&id).expect("checked above");
        let running = p
            .entries
            .back()
            .map_or(i64::MIN, |l| l.max_timestamp_running);
        p.entries.push_back(EntryLoc {
            segment_seq: active,
            pos,
            payload_len: e.payload.len() as u32,
            kind: e.kind.record_kind(),
            term: e.term,
            base_offset,
            offset_count: facts.0,
            max_timestamp: facts.1,
            max_timestamp_running: if e.kind == EntryKind::Data {
                running.max(facts.1)
            } else {
                running
            },
        });
        p.bytes += loc_bytes;
        p.next_offset = base_offset + u64::from(facts.0);
        Ok(AppendOutcome {
            base_offset,
            next_offset: p.next_offset,
            last_index: e.index,
        })
    }

    /// Encodes one record at the end of the staging buffer (space reserved
    /// by the caller) and returns its position in the segment.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn encode_record(
        &mut self,
        kind: RecordKind,
        flags: u8,
        partition: PartitionId,
        index: u64,
        term: u64,
        payload: &[&[u8]],
        facts: (u32, i64),
        stamp: Option<Stamp>,
    ) -> u32 {
        let payload_len: usize = payload.iter().map(|p| p.len()).sum();
        let len = RECORD_HEADER_BYTES + payload_len;
        assert!(
            self.staging.fill + len <= self.staging.capacity(),
            "record space was reserved"
        );
        let pos = self.staging.base + self.staging.fill as u64;
        assert!(
            pos + len as u64 <= self.cfg.segment_bytes,
            "record fits the segment"
        );
        let at = self.staging.fill;
        let body_at = at + RECORD_HEADER_BYTES;
        let payload_crc = match stamp {
            Some(st) => {
                // The stamp goes into a copy of the batch header; the rest
                // of the batch is copied as it is.
                assert_eq!(payload.len(), 1, "a stamped record has one part");
                let body = payload[0];
                let mut head = [0u8; batch::HEADER_BYTES];
                head.copy_from_slice(&body[..batch::HEADER_BYTES]);
                batch::stamp(&mut head, st.base_offset, st.epoch);
                self.staging.put(body_at, &head);
                self.staging
                    .put(body_at + head.len(), &body[batch::HEADER_BYTES..]);
                // The batch's own crc covers everything from its
                // attributes on and was verified: extend it over the
                // stamped header instead of a second pass over the batch.
                let covered = body.len() - batch::CRC_COVERED_FROM;
                crate::crc::combine(
                    crc32c::crc32c(&head[..batch::CRC_COVERED_FROM]),
                    st.batch_crc,
                    covered,
                )
            }
            None => {
                let mut w = body_at;
                let mut crc = 0;
                for part in payload {
                    self.staging.put(w, part);
                    crc = crc32c::crc32c_append(crc, part);
                    w += part.len();
                }
                crc
            }
        };
        let header = RecordHeader {
            header_crc: 0,
            prev_header_crc: self.prev_crc,
            segment_seq: self.active_seq,
            kind,
            flags,
            payload_len: payload_len as u32,
            payload_crc,
            partition,
            index,
            term,
        };
        let mut header_bytes = [0u8; RECORD_HEADER_BYTES];
        let header_crc = header.encode(&mut header_bytes);
        self.staging.put(at, &header_bytes);
        self.prev_crc = header_crc;
        self.staging.fill += len;
        self.appended_lsn += len as u64;
        self.stats.appends += 1;
        self.stats.append_bytes += len as u64;
        let (aux_a, aux_b) = match kind {
            RecordKind::Data | RecordKind::ConfChange | RecordKind::Empty => {
                (u64::from(facts.0), facts.1 as u64)
            }
            RecordKind::HardState | RecordKind::Compact => (
                payload_u64(payload.first().copied().unwrap_or(&[])).unwrap_or(0),
                0,
            ),
            _ => (0, 0),
        };
        self.active_rows.push(SidecarRow {
            header: RecordHeader {
                header_crc,
                ..header
            },
            pos,
            aux_a,
            aux_b,
        });
        if let Some(s) = self.segments.get_mut(&self.active_seq) {
            s.end = pos + len as u64;
        }
        pos as u32
    }
}
