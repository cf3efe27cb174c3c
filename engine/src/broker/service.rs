//! The vocabulary of a shard's partition service
//! ([`RaftService`](super::raft_service::RaftService)): its errors, the
//! arguments and results of produce, fetch and list-offsets, the checks a
//! produced batch passes, and [`Visible`], what readers may see of each
//! partition and the long-polls waiting for more.
//!
//! Hot path (produce, fetch): one append or one read per item, no
//! allocation per record.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use event_listener::Event;
use shardmq_net::Shutdown;
use shardmq_schema::batch::{BatchError, RecordBatchView};
use shardmq_schema::protocol::{ErrorCode, OffsetSpec};
use shardmq_storage::{PartitionId, ShardLog, StorageError};

/// An error a client gets for one partition item: a stable code and a
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ServiceError {
    /// The wire code.
    pub code: ErrorCode,
    /// Detail for people.
    pub message: String,
    /// With NotLeader: the node id of the leader the replica knows of (the
    /// handler turns it into a `LeaderHint`).
    pub leader: Option<i32>,
}

impl ServiceError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            leader: None,
        }
    }

    /// A NotLeader error naming the leader this replica knows of.
    pub fn not_leader(leader: Option<i32>, message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::NotLeader,
            message: message.into(),
            leader,
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
    /// Serve from this replica even when it is a follower (up to the commit
    /// it knows); otherwise only a leader that has committed in its term
    /// serves.
    pub allow_follower: bool,
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

/// Milliseconds since the Unix epoch: the log-append time of a produce.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Limits the service enforces on produced batches.
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

    /// For a fetch from `offset`: the empty answer when there is nothing
    /// new to read now (the offset is the high watermark), without a read
    /// or a task; `None` when the fetch must run (records to read, or an
    /// error for it to report).
    pub(crate) fn nothing_new(
        &self,
        log: &ShardLog,
        partition: PartitionId,
        offset: i64,
    ) -> Option<FetchResult> {
        let offset = u64::try_from(offset).ok()?;
        let mark = self.get(partition).ok()?;
        let start = log.log_start_offset(partition).ok()?;
        (offset == mark.offset && offset >= start).then(|| FetchResult {
            high_watermark: mark.offset as i64,
            log_start_offset: start as i64,
            records: Bytes::new(),
        })
    }

    /// Waits until `ready` says so, checking it now and after each move
    /// of a watermark of this shard; gives up at `deadline` or when waits
    /// end (the shard stops). One listener at a time, however many
    /// partitions `ready` looks at. Returns whether `ready` held.
    pub(crate) async fn wait_until(
        &self,
        deadline: Instant,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        loop {
            // Listening before the check: a move in between still wakes.
            let listener = self.advanced.listen();
            if ready() {
                return true;
            }
            if self.no_waits.is_triggered() || Instant::now() >= deadline {
                return false;
            }
            self.until_moved(listener, deadline).await;
        }
    }

    /// Waits for `listener` (a watermark moved), `deadline` or the end of
    /// waits, whichever comes first.
    async fn until_moved(&self, listener: event_listener::EventListener, deadline: Instant) {
        let timer = async {
            glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now())).await;
        };
        futures_lite::future::or(
            futures_lite::future::or(listener, timer),
            self.no_waits.listen(),
        )
        .await;
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
            self.until_moved(listener, deadline).await;
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
