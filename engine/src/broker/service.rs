//! What a shard does with a partition it owns: [`PartitionService`], and
//! [`LocalLogService`], the single-replica implementation that appends
//! straight to the shard log.
//!
//! The Raft layer implements [`PartitionService`] too
//! ([`RaftService`](super::raft_service::RaftService): one Raft loop per
//! shard over its partitions' `RawNode`s, writing through the same
//! `ShardLog`), and serves by default; the request handling and routing
//! above it do not depend on which one runs.
//!
//! Hot path (produce, fetch): one append or one read per item, no
//! allocation per record.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use event_listener::Event;
use shardmq_net::Shutdown;
use shardmq_schema::batch::{BatchError, RecordBatchView};
use shardmq_schema::protocol::{Acks, ErrorCode, OffsetSpec};
use shardmq_storage::{EntryKind, EntryRef, PartitionId, ShardLog, StorageError};

/// An error a client gets for one partition item: a stable code and a
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ServiceError {
    /// The wire code.
    pub code: ErrorCode,
    /// Detail for people.
    pub message: String,
}

impl ServiceError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What a produce assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceResult {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// Append time when the topic uses log-append time, else -1.
    pub log_append_time_ms: i64,
    /// The partition's log start offset after the append.
    pub log_start_offset: i64,
}

/// Where and how much to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchArgs {
    /// First offset wanted.
    pub offset: i64,
    /// Record bytes at most (whole batches; the first batch is whole even
    /// when larger).
    pub max_bytes: u32,
    /// Wait for new data until then when none is available at `offset`.
    pub wait_until: Option<Instant>,
}

/// What a fetch read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchResult {
    /// Offset after the last durable (committed) record.
    pub high_watermark: i64,
    /// First offset still stored.
    pub log_start_offset: i64,
    /// Whole batches, concatenated, as stored.
    pub records: Bytes,
}

/// What a list-offsets found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListOffsetsResult {
    /// The offset, -1 when none.
    pub offset: i64,
    /// The timestamp at it (spec Timestamp), -1 when unknown.
    pub timestamp_ms: i64,
}

/// The operations on partitions a shard owns. Shard view: implemented by
/// a type that lives on one shard (`!Send` futures).
pub trait PartitionService: 'static {
    /// Appends one record batch, answering once `acks` is met. With acks
    /// None the result is still returned (the handler sends nothing).
    fn produce(
        &self,
        partition: PartitionId,
        acks: Acks,
        batch: Bytes,
    ) -> impl Future<Output = Result<ProduceResult, ServiceError>>;

    /// Reads from `args.offset`, never past the high watermark, waiting up
    /// to `args.wait_until` when nothing is there yet.
    fn fetch(
        &self,
        partition: PartitionId,
        args: FetchArgs,
    ) -> impl Future<Output = Result<FetchResult, ServiceError>>;

    /// Looks up an offset by position or timestamp.
    fn list_offsets(
        &self,
        partition: PartitionId,
        spec: OffsetSpec,
        timestamp_ms: i64,
    ) -> impl Future<Output = Result<ListOffsetsResult, ServiceError>>;

    /// Creates the partition on this shard (idempotent), durably.
    fn create_partition(
        &self,
        partition: PartitionId,
    ) -> impl Future<Output = Result<(), ServiceError>>;

    /// Deletes the partition and its data, durably.
    fn delete_partition(
        &self,
        partition: PartitionId,
    ) -> impl Future<Output = Result<(), ServiceError>>;

    /// Partitions this shard holds, and how many of them it leads.
    fn counts(&self) -> (u64, u64);

    /// The partitions this shard holds.
    fn partitions(&self) -> Vec<PartitionId>;

    /// The shard log the partitions live in (statistics, retention).
    fn log(&self) -> &ShardLog;

    /// The first index of `partition` that retention must keep: nothing
    /// at or after it may be dropped (it is not yet applied, or not yet
    /// durable). `None` when the partition is not served here.
    fn retain_from(&self, partition: PartitionId) -> Option<u64>;

    /// Ends every fetch waiting for data (each answers with what there
    /// is), now and from now on: the shard is stopping and must not wait
    /// out long-polls before it can close.
    fn end_waits(&self);

    /// Makes everything durable and refuses further work.
    fn close(&self) -> impl Future<Output = Result<(), ServiceError>>;
}

/// Milliseconds since the Unix epoch: the log-append time of a produce.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Limits a [`LocalLogService`] enforces on produced batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceLimits {
    /// Largest batch.
    pub batch_bytes_max: usize,
    /// Largest record in a batch.
    pub record_bytes_max: usize,
}

/// Most fetches that may wait for data at once on one shard; more are
/// answered at once with what there is.
pub const FETCH_WAITERS_MAX: usize = 4096;

/// Durable (committed) end of a partition: what fetches may see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Watermark {
    /// Offset after the last visible record.
    pub(crate) offset: u64,
    /// Raft index of the last visible entry.
    pub(crate) index: u64,
}

/// What readers may see of each partition of a shard, and the fetches
/// waiting for more: the part of fetch and list-offsets both services
/// share. Shard view: owned by one shard.
#[derive(Debug)]
pub(crate) struct Visible {
    marks: RefCell<HashMap<PartitionId, Watermark>>,
    /// Notified when a watermark moves (long-poll waiters).
    advanced: Event,
    waiters: Cell<usize>,
    /// Fetches no longer wait for data.
    no_waits: Shutdown,
}

impl Visible {
    pub(crate) fn new(marks: HashMap<PartitionId, Watermark>) -> Self {
        Self {
            marks: RefCell::new(marks),
            advanced: Event::new(),
            waiters: Cell::new(0),
            no_waits: Shutdown::new(),
        }
    }

    pub(crate) fn get(&self, partition: PartitionId) -> Result<Watermark, ServiceError> {
        self.marks.borrow().get(&partition).copied().ok_or_else(|| {
            ServiceError::new(ErrorCode::UnknownPartition, "partition not on this shard")
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.marks.borrow().len()
    }

    pub(crate) fn partitions(&self) -> Vec<PartitionId> {
        self.marks.borrow().keys().copied().collect()
    }

    pub(crate) fn insert_if_absent(&self, partition: PartitionId, mark: Watermark) {
        self.marks.borrow_mut().entry(partition).or_insert(mark);
    }

    /// Moves a partition's watermark forward (never back); returns whether
    /// it moved. Call [`notify`](Self::notify) after a round of these.
    pub(crate) fn raise(&self, partition: PartitionId, mark: Watermark) -> bool {
        match self.marks.borrow_mut().get_mut(&partition) {
            Some(current) if mark.offset > current.offset || mark.index > current.index => {
                current.offset = current.offset.max(mark.offset);
                current.index = current.index.max(mark.index);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn remove(&self, partition: PartitionId) {
        self.marks.borrow_mut().remove(&partition);
        // Waiters on the deleted partition find it gone.
        self.notify();
    }

    /// Wakes the fetches waiting for data.
    pub(crate) fn notify(&self) {
        self.advanced.notify(usize::MAX);
    }

    pub(crate) fn end_waits(&self) {
        self.no_waits.trigger();
    }

    /// Reads committed batches of `partition` from `log`.
    pub(crate) async fn fetch(
        &self,
        log: &ShardLog,
        partition: PartitionId,
        args: FetchArgs,
    ) -> Result<FetchResult, ServiceError> {
        let offset = u64::try_from(args.offset).map_err(|_| {
            ServiceError::new(
                ErrorCode::OffsetOutOfRange,
                format!("offset {} is negative", args.offset),
            )
        })?;
        let mut waiting = false;
        let result = loop {
            let listener = self.advanced.listen();
            let mark = self.get(partition)?;
            let start = log.log_start_offset(partition).map_err(storage_error)?;
            if offset < start || offset > mark.offset {
                break Err(ServiceError::new(
                    ErrorCode::OffsetOutOfRange,
                    format!(
                        "offset {offset} is outside [{start}, {}] (log start, high watermark)",
                        mark.offset
                    ),
                ));
            }
            let base = FetchResult {
                high_watermark: mark.offset as i64,
                log_start_offset: start as i64,
                records: Bytes::new(),
            };
            if offset < mark.offset {
                let batches = log
                    .read_from_offset(partition, offset, u64::from(args.max_bytes), mark.index)
                    .await
                    .map_err(storage_error)?;
                let total: usize = batches.iter().map(|b| b.bytes.len()).sum();
                let mut records = Vec::with_capacity(total);
                for batch in &batches {
                    records.extend_from_slice(&batch.bytes);
                }
                break Ok(FetchResult {
                    records: Bytes::from(records),
                    ..base
                });
            }
            // Nothing new: wait for the watermark, a deadline or close.
            let Some(deadline) = args.wait_until else {
                break Ok(base);
            };
            if self.no_waits.is_triggered()
                || Instant::now() >= deadline
                || (!waiting && self.waiters.get() >= FETCH_WAITERS_MAX)
            {
                break Ok(base);
            }
            if !waiting {
                waiting = true;
                self.waiters.set(self.waiters.get() + 1);
            }
            let timer = async {
                glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now()))
                    .await;
            };
            futures_lite::future::or(
                futures_lite::future::or(listener, timer),
                self.no_waits.listen(),
            )
            .await;
        };
        if waiting {
            self.waiters.set(self.waiters.get() - 1);
        }
        result
    }

    /// Looks up an offset of `partition` among what is visible.
    pub(crate) async fn list_offsets(
        &self,
        log: &ShardLog,
        partition: PartitionId,
        spec: OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<ListOffsetsResult, ServiceError> {
        let mark = self.get(partition)?;
        let start = log.log_start_offset(partition).map_err(storage_error)?;
        let none = ListOffsetsResult {
            offset: -1,
            timestamp_ms: -1,
        };
        match spec {
            OffsetSpec::Earliest => Ok(ListOffsetsResult {
                offset: start as i64,
                ..none
            }),
            OffsetSpec::Latest => Ok(ListOffsetsResult {
                offset: mark.offset as i64,
                ..none
            }),
            OffsetSpec::Timestamp => {
                let found = log
                    .offset_for_timestamp(partition, timestamp_ms)
                    .map_err(storage_error)?;
                // Only what is durable is visible.
                let Some(base) = found.filter(|offset| *offset < mark.offset) else {
                    return Ok(none);
                };
                // The index finds the batch; the first record in it with a
                // timestamp at or after the one asked is the answer.
                let batches = log
                    .read_from_offset(partition, base, 1, mark.index)
                    .await
                    .map_err(storage_error)?;
                for batch in &batches {
                    let view = RecordBatchView::parse(&batch.bytes).map_err(batch_error)?;
                    for record in view.records() {
                        let record = record.map_err(batch_error)?;
                        let ts = view.record_timestamp(&record);
                        let offset = view.record_offset(&record);
                        if ts >= timestamp_ms && offset >= 0 && (offset as u64) < mark.offset {
                            return Ok(ListOffsetsResult {
                                offset,
                                timestamp_ms: ts,
                            });
                        }
                    }
                }
                Ok(none)
            }
            other => Err(ServiceError::new(
                ErrorCode::InvalidRequest,
                format!("unknown offset spec {}", other.0),
            )),
        }
    }
}

/// The single-replica partition service: appends straight to the shard
/// log, with no replication. Acks All appends then syncs; acks Leader and
/// None append and let the background flusher sync. The high watermark is
/// what is synced, so a fetch never sees a record a crash could lose.
/// Kept beside the Raft-backed service (`[raft] enabled = false`). Shard
/// view: owned by one shard.
#[derive(Debug)]
pub struct LocalLogService {
    log: ShardLog,
    limits: ProduceLimits,
    /// Durable end per partition.
    visible: Visible,
    /// Appended end per partition not yet known durable.
    pending: RefCell<HashMap<PartitionId, Watermark>>,
    /// Notified when there is something to sync for the flusher.
    dirty: Event,
    /// Serialises appends: an append picks the next Raft index before it
    /// may wait for staging space.
    append_lock: glommio::sync::Semaphore,
    closing: Shutdown,
}

pub(crate) fn storage_error(error: StorageError) -> ServiceError {
    match error {
        StorageError::UnknownPartition(_) => ServiceError::new(
            ErrorCode::UnknownPartition,
            format!("partition not on this shard: {error}"),
        ),
        StorageError::OffsetOutOfRange { .. } => {
            ServiceError::new(ErrorCode::OffsetOutOfRange, error.to_string())
        }
        StorageError::BadBatch { .. } => {
            ServiceError::new(ErrorCode::CorruptBatch, error.to_string())
        }
        error => ServiceError::new(ErrorCode::StorageError, error.to_string()),
    }
}

pub(crate) fn batch_error(error: BatchError) -> ServiceError {
    ServiceError::new(
        ErrorCode::CorruptBatch,
        format!("invalid record batch: {error}"),
    )
}

/// Checks a produced batch against `limits` before anything stores it.
/// Checks a produced batch against the limits and its crc (the one pass
/// over its bytes the broker makes before storing them); returns the number
/// of offsets it takes.
pub(crate) fn check_batch(limits: &ProduceLimits, batch: &[u8]) -> Result<u32, ServiceError> {
    if batch.len() > limits.batch_bytes_max {
        return Err(ServiceError::new(
            ErrorCode::BatchTooLarge,
            format!(
                "batch of {} bytes exceeds batch_bytes_max {}",
                batch.len(),
                limits.batch_bytes_max
            ),
        ));
    }
    let view = RecordBatchView::parse_verified(batch).map_err(batch_error)?;
    if view.compression() == 0 {
        for record in view.records() {
            let record = record.map_err(batch_error)?;
            if record.encoded_bytes() > limits.record_bytes_max {
                return Err(ServiceError::new(
                    ErrorCode::RecordTooLarge,
                    format!(
                        "record of {} bytes exceeds record_bytes_max {}",
                        record.encoded_bytes(),
                        limits.record_bytes_max
                    ),
                ));
            }
        }
    }
    Ok(view.offset_count())
}

impl LocalLogService {
    /// The service over `log`, whose partitions were all recovered
    /// durable. Start [`run_flusher`](Self::run_flusher) beside it.
    pub fn new(log: ShardLog, limits: ProduceLimits) -> Rc<Self> {
        let mut watermarks = HashMap::new();
        for id in log.partitions() {
            if let (Ok(offset), Ok(index)) = (log.next_offset(id), log.last_index(id)) {
                watermarks.insert(id, Watermark { offset, index });
            }
        }
        Rc::new(Self {
            log,
            limits,
            visible: Visible::new(watermarks),
            pending: RefCell::new(HashMap::new()),
            dirty: Event::new(),
            append_lock: glommio::sync::Semaphore::new(1),
            closing: Shutdown::new(),
        })
    }

    /// The shard log.
    pub fn log(&self) -> &ShardLog {
        &self.log
    }

    /// Syncs appends made without acks All, until [`close`]. Runs as a
    /// task of the shard.
    ///
    /// [`close`]: PartitionService::close
    pub async fn run_flusher(self: Rc<Self>) {
        loop {
            let listener = self.dirty.listen();
            if self.closing.is_triggered() {
                return;
            }
            if self.pending.borrow().is_empty() {
                futures_lite::future::or(listener, self.closing.listen()).await;
                continue;
            }
            if let Err(error) = self.sync_and_publish().await {
                tracing::error!(%error, "shard log sync failed");
                // The log is poisoned; every later append fails too.
                return;
            }
        }
    }

    /// Syncs everything appended so far and moves the watermarks of what
    /// it covered.
    async fn sync_and_publish(&self) -> Result<(), ServiceError> {
        let covered = std::mem::take(&mut *self.pending.borrow_mut());
        if let Err(error) = self.log.sync().await {
            // Not durable: put them back for a later round (which will fail
            // too: the log is poisoned).
            let mut pending = self.pending.borrow_mut();
            for (id, mark) in covered {
                pending.entry(id).or_insert(mark);
            }
            return Err(storage_error(error));
        }
        if !covered.is_empty() {
            for (id, mark) in covered {
                self.visible.raise(id, mark);
            }
            self.visible.notify();
        }
        Ok(())
    }
}

impl PartitionService for LocalLogService {
    async fn produce(
        &self,
        partition: PartitionId,
        acks: Acks,
        batch: Bytes,
    ) -> Result<ProduceResult, ServiceError> {
        if self.closing.is_triggered() {
            return Err(ServiceError::new(
                ErrorCode::BrokerShuttingDown,
                "the shard is stopping",
            ));
        }
        self.visible.get(partition)?;
        check_batch(&self.limits, &batch)?;
        let permit = self.append_lock.acquire_permit(1).await.map_err(|_| {
            ServiceError::new(ErrorCode::BrokerShuttingDown, "the shard is stopping")
        })?;
        let index = self.log.last_index(partition).map_err(storage_error)? + 1;
        // One replica, one term: the leader epoch stamped into batches is 1.
        let entry = EntryRef {
            index,
            term: 1,
            kind: EntryKind::Data,
            payload: &batch,
        };
        let outcome = self
            .log
            .append(partition, &[entry])
            .await
            .map_err(storage_error)?;
        let log_append_time_ms = now_ms();
        drop(permit);
        self.pending.borrow_mut().insert(
            partition,
            Watermark {
                offset: outcome.next_offset,
                index: outcome.last_index,
            },
        );
        if acks == Acks::All {
            self.sync_and_publish().await?;
        } else {
            self.dirty.notify(1);
        }
        Ok(ProduceResult {
            base_offset: outcome.base_offset as i64,
            log_append_time_ms,
            log_start_offset: self
                .log
                .log_start_offset(partition)
                .map_or(-1, |o| o as i64),
        })
    }

    async fn fetch(
        &self,
        partition: PartitionId,
        args: FetchArgs,
    ) -> Result<FetchResult, ServiceError> {
        self.visible.fetch(&self.log, partition, args).await
    }

    async fn list_offsets(
        &self,
        partition: PartitionId,
        spec: OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<ListOffsetsResult, ServiceError> {
        self.visible
            .list_offsets(&self.log, partition, spec, timestamp_ms)
            .await
    }

    async fn create_partition(&self, partition: PartitionId) -> Result<(), ServiceError> {
        self.log
            .create_partition(partition)
            .await
            .map_err(storage_error)?;
        self.log.sync().await.map_err(storage_error)?;
        self.visible.insert_if_absent(
            partition,
            Watermark {
                offset: self.log.next_offset(partition).unwrap_or(0),
                index: self.log.last_index(partition).unwrap_or(0),
            },
        );
        Ok(())
    }

    async fn delete_partition(&self, partition: PartitionId) -> Result<(), ServiceError> {
        self.pending.borrow_mut().remove(&partition);
        self.visible.remove(partition);
        match self.log.remove_partition(partition).await {
            Ok(()) | Err(StorageError::UnknownPartition(_)) => {}
            Err(error) => return Err(storage_error(error)),
        }
        self.log.sync().await.map_err(storage_error)?;
        self.visible.notify();
        Ok(())
    }

    fn counts(&self) -> (u64, u64) {
        let n = self.visible.len() as u64;
        (n, n)
    }

    fn partitions(&self) -> Vec<PartitionId> {
        self.log.partitions()
    }

    fn log(&self) -> &ShardLog {
        &self.log
    }

    fn retain_from(&self, partition: PartitionId) -> Option<u64> {
        // What is visible is durable; the rest may still be in a round.
        self.visible.get(partition).ok().map(|mark| mark.index + 1)
    }

    fn end_waits(&self) {
        self.visible.end_waits();
    }

    async fn close(&self) -> Result<(), ServiceError> {
        self.visible.end_waits();
        self.closing.trigger();
        self.dirty.notify(usize::MAX);
        self.sync_and_publish().await?;
        self.log.close().await.map_err(storage_error)
    }
}
