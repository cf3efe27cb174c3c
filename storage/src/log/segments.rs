//! Segment files: rolls, the checkpoint that opens each segment, segment
//! preparation (zeroing ahead), file creation and the index files of sealed
//! segments.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use glommio::io::{DmaFile, OpenOptions};

use crate::error::{Result, StorageError};
use crate::record::{chain_seed, RecordKind, CHECKPOINT_ROW_BYTES, RECORD_HEADER_BYTES};
use crate::sidecar::{self, SidecarRow};

use super::*;

/// A segment file. Shard view.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) file: Rc<DmaFile>,
    /// The `O_DSYNC` handle rounds write through while this is the active
    /// segment of a write-through log.
    pub(super) writer: Option<Rc<DmaFile>>,
    /// Bytes of live Raft entries (headers included) still referenced.
    pub(super) live_bytes: u64,
    /// End of the last record.
    pub(super) end: u64,
    pub(super) sealed: bool,
}

/// A recycled segment file whose last life was segment `seq`.
pub(super) fn free_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}{FREE_SUFFIX}"))
}

pub(super) fn segment_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}.log"))
}

pub(super) fn sidecar_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}.idx"))
}

impl ShardLog {
    /// Seals the active segment and starts a new one.
    pub async fn roll(&self) -> Result<()> {
        loop {
            let listener = {
                let inner = self.shared.inner.borrow();
                inner.check_poisoned()?;
                inner.rolling.then(|| self.shared.changed.listen())
            };
            match listener {
                Some(l) => l.await,
                None => break,
            }
        }
        self.shared.inner.borrow_mut().rolling = true;
        let result = self.roll_locked().await;
        self.shared.inner.borrow_mut().rolling = false;
        self.shared.changed.notify(usize::MAX);
        result
    }

    pub(super) async fn roll_locked(&self) -> Result<()> {
        // Everything in the old segment is durable before the new one
        // exists, so a checkpoint never describes entries that are not.
        self.sync().await?;
        let (cfg, old_seq) = {
            let inner = self.shared.inner.borrow();
            (inner.cfg.clone(), inner.active_seq)
        };
        let rows = std::mem::take(&mut self.shared.inner.borrow_mut().active_rows);
        self.spawn_sidecar(sidecar_path(&cfg.dir, old_seq), old_seq, rows);
        let new_seq = old_seq + 1;
        let prepared = self.shared.inner.borrow_mut().prepared.take();
        let (file, path) = match prepared {
            Some(p) if p.seq == new_seq => {
                // Take it as far as it got: stop the zeroing and wait for
                // its last write, so no zeros land after our records.
                p.stop.set(true);
                match p.task.await {
                    Ok(file) => {
                        let path = segment_path(&cfg.dir, new_seq);
                        std::fs::rename(&p.path, &path)
                            .map_err(|e| StorageError::io("rename prepared segment", &path, e))?;
                        sync_dir(&cfg.dir)?;
                        (file, path)
                    }
                    Err(_) => self.new_segment_file(new_seq).await?,
                }
            }
            _ => self.new_segment_file(new_seq).await?,
        };
        let writer = open_writer(&cfg, &path).await?;
        {
            let mut inner = self.shared.inner.borrow_mut();
            if let Some(seg) = inner.segments.get_mut(&old_seq) {
                seg.sealed = true;
                seg.writer = None;
            }
            inner.segments.insert(
                new_seq,
                Segment {
                    path,
                    file,
                    writer,
                    live_bytes: 0,
                    end: 0,
                    sealed: false,
                },
            );
            inner.active_seq = new_seq;
            let fresh = Staging::new(&inner.cfg, 0);
            let old = std::mem::replace(&mut inner.staging, fresh);
            inner.recycle_chunks(old.chunks);
            inner.prev_crc = chain_seed(new_seq);
            inner.written_end = 0;
            inner.stats.segments_rolled += 1;
            inner.stats.fdatasync_calls += 1; // the directory
        }
        self.write_checkpoint()?;
        // The collector may delete every older segment once this one exists,
        // so its checkpoint must be durable first.
        self.sync().await?;
        self.prepare_next();
        Ok(())
    }

    /// Writes the index file of sealed segment `seq` on the blocking thread,
    /// so the roll does not wait for it: with small entries it holds a
    /// row for each of hundreds of thousands, and written on the shard's
    /// thread it held every partition of the shard for 130–175 ms a roll.
    /// Nothing depends on it being there: an open that finds no valid
    /// index for a sealed segment scans the segment and writes one. A
    /// failure is logged, not returned, for the same reason. The collector
    /// waits for a segment's write before it deletes the segment
    /// ([`sidecar_written`](Self::sidecar_written)), and `close` for all.
    pub(super) fn spawn_sidecar(&self, path: PathBuf, seq: u32, rows: Vec<SidecarRow>) {
        let write = glommio::executor().spawn_blocking(move || {
            if let Err(error) = write_sidecar(&path, seq, &rows, false) {
                tracing::warn!(segment = seq, %error, "segment index not written; the next open rebuilds it");
            }
        });
        let task = glommio::spawn_local(write);
        self.shared
            .inner
            .borrow_mut()
            .sidecar_writes
            .insert(seq, task);
    }

    /// Waits for the index write of segment `seq`, if one is in flight.
    pub(super) async fn sidecar_written(&self, seq: u32) {
        let task = self.shared.inner.borrow_mut().sidecar_writes.remove(&seq);
        if let Some(task) = task {
            task.await;
        }
    }

    /// Waits for every index write in flight.
    pub(super) async fn sidecars_written(&self) {
        let tasks = std::mem::take(&mut self.shared.inner.borrow_mut().sidecar_writes);
        for (_, task) in tasks {
            task.await;
        }
    }

    /// The file of a new segment `seq`: a recycled one if the pool has one,
    /// else a new file. Its name is durable before it is returned.
    pub(super) async fn new_segment_file(&self, seq: u32) -> Result<(Rc<DmaFile>, PathBuf)> {
        let (cfg, free) = {
            let mut inner = self.shared.inner.borrow_mut();
            (inner.cfg.clone(), inner.free_segments.pop_front())
        };
        match free {
            Some(old) => {
                let file = reuse_segment_file(&cfg, old, seq).await?;
                self.shared.inner.borrow_mut().stats.segments_reused += 1;
                Ok(file)
            }
            None => create_segment(&cfg, seq).await,
        }
    }

    /// Starts zeroing the segment after the active one in the background,
    /// unless the next segment will start in a recycled file.
    pub(super) fn prepare_next(&self) {
        let mut inner = self.shared.inner.borrow_mut();
        let rate = inner.cfg.prezero_bytes_per_sec;
        if rate == 0 || inner.prepared.is_some() || !inner.free_segments.is_empty() {
            return;
        }
        let pause_above = inner.cfg.prezero_pause_above_bytes_per_sec;
        let log = Rc::downgrade(&self.shared);
        let seq = inner.active_seq + 1;
        let path = inner.cfg.dir.join(format!("{seq:010}{PREPARE_SUFFIX}"));
        let stop = Rc::new(Cell::new(false));
        let cfg = inner.cfg.clone();
        let task_stop = stop.clone();
        let task_path = path.clone();
        let task = glommio::spawn_local(async move {
            let (file, _) = create_file(&cfg, &task_path).await?;
            let rates = (rate, pause_above);
            zero_fill(
                &file,
                &task_path,
                cfg.segment_bytes,
                rates,
                &task_stop,
                &log,
            )
            .await?;
            Ok(file)
        });
        inner.prepared = Some(Prepared {
            seq,
            path,
            stop,
            task,
        });
    }

    /// Writes the checkpoint that opens the active segment. The caller holds
    /// the roll (or is `open`), so nothing else is appending.
    pub(super) fn write_checkpoint(&self) -> Result<()> {
        let mut inner = self.shared.inner.borrow_mut();
        let mut ids: Vec<_> = inner.parts.keys().copied().collect();
        ids.sort_unstable();
        let len = RECORD_HEADER_BYTES + ids.len() * CHECKPOINT_ROW_BYTES;
        if len as u64 > inner.cfg.segment_bytes {
            return Err(StorageError::InvalidArgument(format!(
                "{} partitions do not fit a checkpoint in a {}-byte segment",
                ids.len(),
                inner.cfg.segment_bytes
            )));
        }
        inner.grow_staging(len);
        let mut payload = vec![0u8; ids.len() * CHECKPOINT_ROW_BYTES];
        for (id, chunk) in ids
            .iter()
            .zip(payload.chunks_exact_mut(CHECKPOINT_ROW_BYTES))
        {
            inner.parts[id].checkpoint_row(*id).encode_into(chunk);
        }
        inner.encode_record(
            RecordKind::Checkpoint,
            0,
            0,
            0,
            0,
            &[&payload],
            (0, 0),
            None,
        );
        Ok(())
    }
}

impl Drop for Inner {
    /// A dropped log stops preparing its next segment.
    fn drop(&mut self) {
        if let Some(p) = &self.prepared {
            p.stop.set(true);
        }
    }
}

/// Suffix of a segment file being prepared (zeroed) before it is needed.
pub(super) const PREPARE_SUFFIX: &str = ".log.prepare";
/// Suffix of a recycled segment file, named after the last segment it held.
pub(super) const FREE_SUFFIX: &str = ".free";
/// Bytes of zeros written per call while preparing a segment.
pub(super) const PREZERO_CHUNK_BYTES: usize = 128 << 10;

/// A segment being prepared in the background. Shard view.
pub(super) struct Prepared {
    pub(super) seq: u32,
    pub(super) path: PathBuf,
    /// Set to stop the zeroing where it is.
    pub(super) stop: Rc<Cell<bool>>,
    pub(super) task: glommio::Task<Result<Rc<DmaFile>>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("seq", &self.seq)
            .field("path", &self.path)
            .finish()
    }
}

/// Writes zeros from the start of `file` up to `len` bytes, at most `rate`
/// bytes per second, pausing while the log appends faster than
/// `pause_above` bytes per second and stopping early when `stop` is set or
/// the log is gone, then fdatasyncs, so the blocks are allocated and their
/// extents converted before records land in them.
pub(super) async fn zero_fill(
    file: &DmaFile,
    path: &Path,
    len: u64,
    (rate, pause_above): (u64, u64),
    stop: &Cell<bool>,
    log: &Weak<Shared>,
) -> Result<()> {
    /// How often the log's append rate is sampled.
    const SAMPLE: Duration = Duration::from_millis(50);
    let appended = || log.upgrade().map(|s| s.inner.borrow().appended_lsn);
    let mut pos = 0u64;
    let mut sampled_at = Instant::now();
    let Some(mut sampled_lsn) = appended() else {
        return Ok(());
    };
    let mut busy = false;
    let mut due = Instant::now();
    while pos < len && !stop.get() {
        if sampled_at.elapsed() >= SAMPLE {
            let Some(lsn) = appended() else {
                return Ok(());
            };
            let per_sec = (lsn - sampled_lsn) as f64 / sampled_at.elapsed().as_secs_f64();
            busy = per_sec > pause_above as f64;
            sampled_at = Instant::now();
            sampled_lsn = lsn;
        }
        if busy {
            // Yield the disk to the log's rounds until the next sample.
            glommio::timer::sleep(SAMPLE).await;
            due = Instant::now();
            continue;
        }
        let n = PREZERO_CHUNK_BYTES.min((len - pos) as usize);
        let mut buf = file.alloc_dma_buffer(n);
        buf.as_bytes_mut().fill(0);
        file.write_at(buf, pos)
            .await
            .map_err(|e| StorageError::glommio("zero segment", path, e))?;
        pos += n as u64;
        let now = Instant::now();
        due = next_zero_due(
            due,
            now,
            Duration::from_micros(n as u64 * 1_000_000 / rate.max(1)),
        );
        if due > now {
            glommio::timer::sleep(due - now).await;
        }
    }
    if stop.get() || pos < len {
        // Taken early by a roll: the next fdatasync of records commits the
        // allocations too.
        return Ok(());
    }
    file.fdatasync()
        .await
        .map_err(|e| StorageError::glommio("fdatasync zeroed segment", path, e))
}

/// When the zero fill's next write is due, after one of `step`'s worth of
/// the rate that was due at `due` and finished at `now`. The schedule is kept
/// from write to write, so the time a write takes counts towards the rate
/// instead of adding to every pause (which slowed the fill so much that a
/// log at half the rate rolled into a segment still partly unzeroed). A fill
/// that fell behind catches up by at most one step, never in a burst that
/// would crowd out the log's own writes.
pub(super) fn next_zero_due(due: Instant, now: Instant, step: Duration) -> Instant {
    let floor = now.checked_sub(step).unwrap_or(now);
    due.max(floor) + step
}

/// Writes zeros through the whole of `file` as fast as the disk takes them
/// (several writes in flight), then fdatasyncs: the segment `open` starts
/// with, which the log waits for.
pub(super) async fn zero_fill_now(file: &Rc<DmaFile>, path: &Path, len: u64) -> Result<()> {
    const WRITERS: u64 = 8;
    const CHUNK: u64 = 1 << 20;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let file = file.clone();
            let path = path.to_path_buf();
            glommio::spawn_local(async move {
                let mut pos = w * CHUNK;
                while pos < len {
                    let n = CHUNK.min(len - pos) as usize;
                    let mut buf = file.alloc_dma_buffer(n);
                    buf.as_bytes_mut().fill(0);
                    file.write_at(buf, pos)
                        .await
                        .map_err(|e| StorageError::glommio("zero segment", &path, e))?;
                    pos += WRITERS * CHUNK;
                }
                Ok::<(), StorageError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    file.fdatasync()
        .await
        .map_err(|e| StorageError::glommio("fdatasync zeroed segment", path, e))
}

/// The write-through handle of a segment about to become active (`None`
/// unless the log writes through).
pub(super) async fn open_writer(cfg: &LogConfig, path: &Path) -> Result<Option<Rc<DmaFile>>> {
    if cfg.sync_mode == SyncMode::Pipelined {
        return Ok(None);
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await
        .map_err(|e| StorageError::glommio("open segment for write-through", path, e))?;
    Ok(Some(Rc::new(file)))
}

/// Renames the recycled file of segment `old` into place as segment `seq`
/// and opens it. The directory is fdatasynced before any record is written
/// to it. Its old records stay where they are until overwritten; each
/// carries `old` (less than `seq`) and its own chain, so recovery stops at
/// the first of them after the new records.
pub(super) async fn reuse_segment_file(
    cfg: &LogConfig,
    old: u32,
    seq: u32,
) -> Result<(Rc<DmaFile>, PathBuf)> {
    assert!(
        old < seq,
        "a recycled file ({old}) only takes a newer segment ({seq})"
    );
    let from = free_path(&cfg.dir, old);
    let path = segment_path(&cfg.dir, seq);
    std::fs::rename(&from, &path)
        .map_err(|e| StorageError::io("rename recycled segment", &path, e))?;
    sync_dir(&cfg.dir)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(&path)
        .await
        .map_err(|e| StorageError::glommio("open recycled segment", &path, e))?;
    Ok((Rc::new(file), path))
}

pub(super) async fn create_segment(cfg: &LogConfig, seq: u32) -> Result<(Rc<DmaFile>, PathBuf)> {
    let path = segment_path(&cfg.dir, seq);
    create_file(cfg, &path).await
}

/// Creates and preallocates a segment-sized file and makes its existence
/// durable.
pub(super) async fn create_file(cfg: &LogConfig, path: &Path) -> Result<(Rc<DmaFile>, PathBuf)> {
    let path = path.to_path_buf();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .map_err(|e| StorageError::glommio("create segment", &path, e))?;
    if cfg.preallocate {
        file.pre_allocate(cfg.segment_bytes, false)
            .await
            .map_err(|e| StorageError::glommio("preallocate segment", &path, e))?;
    }
    // The file's existence must be durable before anything in it is.
    sync_dir(&cfg.dir)?;
    Ok((Rc::new(file), path))
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("sync dir", dir, e))
}

/// Writes the index file of segment `seq` to a temporary file renamed into
/// place; with `durable` false, without syncing it first: an index is
/// validated as a whole when read (length, CRC, row order) and rebuilt from
/// the segment when it is not valid, so one a crash cut short costs a scan,
/// never a record.
pub(super) fn write_sidecar(
    path: &Path,
    seq: u32,
    rows: &[SidecarRow],
    durable: bool,
) -> Result<()> {
    let bytes = sidecar::encode(seq, rows);
    let tmp = path.with_extension("idx.tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|_| {
            if durable {
                std::fs::File::open(&tmp)?.sync_all()
            } else {
                Ok(())
            }
        })
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| StorageError::io("write segment index", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Duration = Duration::from_millis(2);

    #[test]
    fn a_write_faster_than_the_rate_leaves_the_rest_of_its_step_as_pause() {
        let start = Instant::now();
        // The first write took 0.5 ms of its 2 ms step.
        let due = next_zero_due(start, start + Duration::from_micros(500), STEP);
        assert_eq!(due, start + STEP);
        // The next took 1.5 ms: due one step later again, not 2 ms after it
        // finished.
        let due = next_zero_due(due, start + STEP + Duration::from_micros(1500), STEP);
        assert_eq!(due, start + 2 * STEP);
    }

    #[test]
    fn a_fill_behind_schedule_catches_up_by_one_step_at_most() {
        let start = Instant::now();
        // A write that took 10 ms against a 2 ms step: the next is due at
        // once (one step of catching up), not five steps back to back.
        let late = start + Duration::from_millis(10);
        let due = next_zero_due(start, late, STEP);
        assert_eq!(due, late);
        // From there on the pace is the rate's again.
        let due = next_zero_due(due, late + Duration::from_micros(100), STEP);
        assert_eq!(due, late + STEP);
    }
}
