//! [`Producer`]: batches records per partition and sends each batch to the
//! shard that owns the partition.
//!
//! Each partition the producer writes to has a queue and a task. The task
//! takes records from the queue and encodes them at once into the
//! partition's open batch ([`BatchBuilder`]); the batch is closed when the
//! next record would push it past `batch_bytes_max`, when `linger` has
//! passed since its first record, or on [`Producer::flush`]. A closed batch
//! is sent as one Produce request to the partition leader's owning shard
//! (the shard port of the metadata, or the broker's port when that is 0),
//! once one of the partition's `in_flight_per_partition` slots and one of
//! the producer's `in_flight_max` slots are free. Retriable failures
//! (NotLeader, LeaderNotAvailable, RequestTimedOut, BrokerShuttingDown, a
//! lost connection, ...) refresh the topic's metadata when leadership may
//! have moved and retry the same bytes after a backoff, up to `retries`
//! times. Every record of the batch then resolves with its offset (the
//! base offset the broker assigned plus its index in the batch) or with
//! the batch's error.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shardmq_schema::batch::{BatchBuilder, HeaderRef};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::time::Instant;

use crate::client::Client;
use crate::codec::{self, ProduceItem};
use crate::config::{Acks, ClientConfig, Partitioner, ProducerConfig};
use crate::error::{ClientError, Result};
use crate::partitioner::key_partition;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A record to produce.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    /// Topic name.
    pub topic: String,
    /// Partition; `None` lets the partitioner choose.
    pub partition: Option<i32>,
    /// Key; `None` for a null key.
    pub key: Option<Bytes>,
    /// Value; `None` for a null value.
    pub value: Option<Bytes>,
    /// Headers: key, nullable value.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
    /// Create time, ms since the epoch; `None` for the time of sending.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record of `topic` with this value, no key.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            value: Some(value.into()),
            ..Self::default()
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the partition.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the timestamp.
    pub fn timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<Bytes>, value: Option<Bytes>) -> Self {
        self.headers.push((key.into(), value));
        self
    }
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic name, shared by every record of the batch.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// The record's offset; -1 with [`Acks::None`].
    pub offset: i64,
    /// The record's create time, ms since the epoch.
    pub timestamp: i64,
    /// When the partition leader appended the record's batch, ms since the
    /// epoch (its clock); -1 with [`Acks::None`].
    pub log_append_time_ms: i64,
}

/// The outcome of one record, resolving once its batch is acknowledged
/// (or has failed for good).
#[derive(Debug)]
pub struct Delivery {
    rx: oneshot::Receiver<Result<RecordMetadata>>,
}

impl Future for Delivery {
    type Output = Result<RecordMetadata>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|result| result.unwrap_or(Err(ClientError::Closed)))
    }
}

type Reply = oneshot::Sender<Result<RecordMetadata>>;

#[derive(Debug)]
struct Pending {
    record: ProducerRecord,
    timestamp: i64,
    reply: Reply,
}

#[derive(Debug)]
enum Cmd {
    Record(Pending),
    Flush,
}

/// What [`Producer::send`] could do without waiting.
enum Attempt {
    /// The record is queued.
    Queued(Delivery),
    /// Metadata or room in the queue is missing: queue it when polled.
    Wait(ProducerRecord),
    /// The record is refused.
    Fail(ClientError),
}

/// A topic's partition queues, indexed by partition; `None` until used.
type PartitionQueues = Vec<Option<mpsc::Sender<Cmd>>>;

#[derive(Debug)]
struct Core {
    client: Client,
    config: ProducerConfig,
    /// Each topic's partition queues, indexed by partition.
    queues: Mutex<HashMap<Arc<str>, PartitionQueues>>,
    round_robin: AtomicU32,
    /// Produce requests in flight over all partitions.
    requests: Semaphore,
    /// Records queued and not yet resolved.
    outstanding: AtomicUsize,
    /// Notified when `outstanding` drops to 0.
    idle: Notify,
    closed: AtomicBool,
}

/// The user's handle: when the last clone goes, the queues close and the
/// partition tasks send what they hold, then stop.
#[derive(Debug)]
struct Handle {
    core: Arc<Core>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&self.core.queues).clear();
    }
}

/// Sends records to a cluster, batched per partition. Cheap to clone; all
/// clones share the batches. Must be used within a tokio runtime.
#[derive(Debug, Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

impl Producer {
    /// Connects a new [`Client`] and makes a producer over it.
    pub async fn connect(client: ClientConfig, config: ProducerConfig) -> Result<Self> {
        Ok(Self::new(Client::connect(client).await?, config))
    }

    /// A producer over an existing client.
    pub fn new(client: Client, config: ProducerConfig) -> Self {
        let requests = Semaphore::new(config.in_flight_max.max(1));
        Self {
            handle: Arc::new(Handle {
                core: Arc::new(Core {
                    client,
                    config,
                    queues: Mutex::new(HashMap::new()),
                    round_robin: AtomicU32::new(0),
                    requests,
                    outstanding: AtomicUsize::new(0),
                    idle: Notify::new(),
                    closed: AtomicBool::new(false),
                }),
            }),
        }
    }

    fn core(&self) -> &Arc<Core> {
        &self.handle.core
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.core().client
    }

    /// Sends a record; the future resolves with where it was stored once
    /// its batch is acknowledged.
    ///
    /// The record enters its partition's queue right away when the topic's
    /// metadata is cached and the queue has room, else when the future is
    /// first polled. Records of a partition are sent in the order they
    /// enter its queue; [`enqueue`](Self::enqueue) makes that moment
    /// explicit.
    pub fn send(
        &self,
        record: ProducerRecord,
    ) -> impl Future<Output = Result<RecordMetadata>> + Send + 'static {
        let now = self.try_enqueue(record);
        let this = self.clone();
        async move {
            let delivery = match now {
                Attempt::Queued(delivery) => delivery,
                Attempt::Fail(error) => return Err(error),
                Attempt::Wait(record) => this.enqueue(record).await?,
            };
            delivery.await
        }
    }

    /// Puts a record in its partition's queue, waiting for metadata or for
    /// room in the queue, and returns its [`Delivery`].
    pub async fn enqueue(&self, record: ProducerRecord) -> Result<Delivery> {
        let core = self.core();
        if core.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        let count = match core.client.cached_partition_count(&record.topic) {
            Some(count) => count,
            None => core.client.topic(&record.topic).await?.partitions.len(),
        };
        let partition = core.choose_partition(&record, count)?;
        let sender = core.queue(&record.topic, partition);
        let (pending, delivery) = core.pending(record);
        core.outstanding.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError(cmd)) = sender.send(Cmd::Record(pending)).await {
            core.fail_cmd(cmd, ClientError::Closed);
        }
        Ok(delivery)
    }

    fn try_enqueue(&self, record: ProducerRecord) -> Attempt {
        let core = self.core();
        if core.closed.load(Ordering::Acquire) {
            return Attempt::Fail(ClientError::Closed);
        }
        let Some(count) = core.client.cached_partition_count(&record.topic) else {
            return Attempt::Wait(record);
        };
        let partition = match core.choose_partition(&record, count) {
            Ok(partition) => partition,
            Err(error) => return Attempt::Fail(error),
        };
        let sender = core.queue(&record.topic, partition);
        let (pending, delivery) = core.pending(record);
        core.outstanding.fetch_add(1, Ordering::AcqRel);
        match sender.try_send(Cmd::Record(pending)) {
            Ok(()) => Attempt::Queued(delivery),
            Err(error) => {
                let closed = matches!(error, mpsc::error::TrySendError::Closed(_));
                let Cmd::Record(pending) = error.into_inner() else {
                    unreachable!("a record was sent");
                };
                core.resolved();
                if closed {
                    Attempt::Fail(ClientError::Closed)
                } else {
                    Attempt::Wait(pending.record)
                }
            }
        }
    }

    /// Sends every open batch now and waits until every record queued
    /// before the call is acknowledged or failed.
    pub async fn flush(&self) {
        let core = self.core();
        let senders: Vec<_> = lock(&core.queues)
            .values()
            .flatten()
            .flatten()
            .cloned()
            .collect();
        for sender in senders {
            let _ = sender.send(Cmd::Flush).await;
        }
        core.wait_idle().await;
    }

    /// Refuses new records, sends those queued and waits for their
    /// outcome. Other clones are closed too.
    pub async fn close(&self) {
        let core = self.core();
        core.closed.store(true, Ordering::Release);
        // Dropping the senders ends each queue; its task sends what it
        // holds and stops.
        lock(&core.queues).clear();
        core.wait_idle().await;
    }
}

impl Core {
    fn choose_partition(&self, record: &ProducerRecord, count: usize) -> Result<i32> {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        if count == 0 {
            return Err(ClientError::InvalidArgument(format!(
                "topic {} has no partitions",
                record.topic
            )));
        }
        if let Some(partition) = record.partition {
            if partition < 0 || partition as u32 >= count {
                return Err(ClientError::InvalidArgument(format!(
                    "topic {} has no partition {partition}",
                    record.topic
                )));
            }
            return Ok(partition);
        }
        match (&record.key, self.config.partitioner) {
            (Some(key), Partitioner::KeyHash) => Ok(key_partition(key, count)),
            _ => {
                let next = self.round_robin.fetch_add(1, Ordering::Relaxed);
                Ok((next % count) as i32)
            }
        }
    }

    fn pending(&self, record: ProducerRecord) -> (Pending, Delivery) {
        let (reply, rx) = oneshot::channel();
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        (
            Pending {
                record,
                timestamp,
                reply,
            },
            Delivery { rx },
        )
    }

    /// The queue of a partition, with its task started on first use.
    fn queue(self: &Arc<Self>, topic: &str, partition: i32) -> mpsc::Sender<Cmd> {
        let index = usize::try_from(partition).unwrap_or(0);
        let mut queues = lock(&self.queues);
        if let Some(Some(sender)) = queues.get(topic).and_then(|q| q.get(index)) {
            return sender.clone();
        }
        let (topic, slots) = match queues.get_key_value(topic) {
            Some((name, _)) => (name.clone(), queues.get_mut(topic).expect("present")),
            None => {
                let name: Arc<str> = Arc::from(topic);
                (name.clone(), queues.entry(name).or_default())
            }
        };
        if slots.len() <= index {
            slots.resize(index + 1, None);
        }
        let (sender, receiver) = mpsc::channel(self.config.queue_records_max.max(1));
        slots[index] = Some(sender.clone());
        tokio::spawn(partition_task(self.clone(), topic, partition, receiver));
        sender
    }

    /// One record less outstanding.
    fn resolved(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    fn deliver(&self, reply: Reply, result: Result<RecordMetadata>) {
        let _ = reply.send(result);
        self.resolved();
    }

    fn fail_cmd(&self, cmd: Cmd, error: ClientError) {
        if let Cmd::Record(pending) = cmd {
            self.deliver(pending.reply, Err(error));
        }
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.outstanding.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.config
            .retry_backoff
            .saturating_mul(factor)
            .min(self.config.retry_backoff_max)
    }

    /// Sends one batch, retrying retriable errors, and resolves its records;
    /// gives the batch's buffer back for reuse.
    async fn send_batch(
        &self,
        topic: Arc<str>,
        partition: i32,
        batch: Vec<u8>,
        records: Vec<(Reply, i64)>,
    ) -> Vec<u8> {
        let result = match self.requests.acquire().await {
            Ok(_permit) => {
                let mut attempt = 0;
                loop {
                    match self.produce_once(&topic, partition, &batch).await {
                        Ok(ack) => break Ok(ack),
                        Err(error) if error.is_retriable() && attempt < self.config.retries => {
                            tracing::debug!(%topic, partition, attempt, %error, "retrying batch");
                            if error.needs_metadata_refresh() {
                                // A failed refresh shows up in the retry.
                                let _ = self.client.refresh_topic(&topic).await;
                            }
                            tokio::time::sleep(self.backoff(attempt)).await;
                            attempt += 1;
                        }
                        Err(error) => break Err(error),
                    }
                }
            }
            Err(_) => Err(ClientError::Closed),
        };
        match result {
            Ok((base_offset, log_append_time)) => {
                for (index, (reply, timestamp)) in records.into_iter().enumerate() {
                    let offset = if base_offset < 0 {
                        -1
                    } else {
                        base_offset + index as i64
                    };
                    self.deliver(
                        reply,
                        Ok(RecordMetadata {
                            topic: Arc::clone(&topic),
                            partition,
                            offset,
                            timestamp,
                            log_append_time_ms: log_append_time,
                        }),
                    );
                }
            }
            Err(error) => {
                for (reply, _) in records {
                    self.deliver(reply, Err(error.clone()));
                }
            }
        }
        batch
    }

    /// One attempt: base offset and log-append time of the batch.
    async fn produce_once(&self, topic: &str, partition: i32, batch: &[u8]) -> Result<(i64, i64)> {
        let conn = self.client.leader_connection(topic, partition).await?;
        let items = [ProduceItem {
            topic,
            partition,
            records: batch,
        }];
        let acks = self.config.acks;
        let ack_timeout_ms = u32::try_from(self.config.ack_timeout.as_millis()).unwrap_or(u32::MAX);
        let build = |id, client_id: &str| {
            codec::encode_produce(id, client_id, acks, ack_timeout_ms, &items)
        };
        if acks == Acks::None {
            conn.send_oneway(build)?;
            return Ok((-1, -1));
        }
        let timeout = self.client.config().request_timeout + self.config.ack_timeout;
        let response = conn.request_with_timeout(build, timeout).await?;
        let results = codec::decode_produce(&response)?;
        let result = results
            .into_iter()
            .find(|r| r.topic == topic && r.partition == partition)
            .ok_or_else(|| ClientError::protocol("produce response without the partition"))?;
        if result.error != shardmq_schema::protocol::ErrorCode::None {
            return Err(ClientError::Broker {
                code: result.error,
                message: result.message,
            });
        }
        Ok((result.base_offset, result.log_append_time_ms))
    }
}

fn headers_of(record: &ProducerRecord) -> Vec<HeaderRef<'_>> {
    record
        .headers
        .iter()
        .map(|(key, value)| (&key[..], value.as_deref()))
        .collect()
}

/// The batching loop of one partition; ends when its queue closes and the
/// last batch is handed off.
async fn partition_task(
    core: Arc<Core>,
    topic: Arc<str>,
    partition: i32,
    mut queue: mpsc::Receiver<Cmd>,
) {
    let slots = Arc::new(Semaphore::new(core.config.in_flight_per_partition.max(1)));
    let max = core.config.batch_bytes_max;
    let mut carry: Option<Pending> = None;
    let mut open = true;
    // Capacity of the next batch's buffer: the size of the last one, so a
    // steady stream fills its buffer without reallocating.
    let mut size_hint = 16 * 1024;
    // Buffers of sent batches, reused so a steady stream allocates (and
    // faults in) no new batch memory. At most one per send slot, plus one.
    let spare: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let spare_max = core.config.in_flight_per_partition.max(1) + 1;
    while open || carry.is_some() {
        let first = match carry.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(Cmd::Record(pending)) => pending,
                Some(Cmd::Flush) => continue,
                None => break,
            },
        };
        let mut buf = match lock(&spare).pop() {
            Some(mut buf) => {
                buf.clear();
                buf
            }
            None => Vec::with_capacity(size_hint),
        };
        let mut records: Vec<(Reply, i64)> = Vec::with_capacity(64);
        let deadline = Instant::now() + core.config.linger;
        let finished = {
            let mut builder = BatchBuilder::new(&mut buf, 0, first.timestamp);
            let headers = headers_of(&first.record);
            builder.append(
                first.timestamp,
                first.record.key.as_deref(),
                first.record.value.as_deref(),
                &headers,
            );
            records.push((first.reply, first.timestamp));
            let linger = tokio::time::sleep_until(deadline);
            tokio::pin!(linger);
            while builder.len_bytes() < max && Instant::now() < deadline {
                tokio::select! {
                    biased;
                    cmd = queue.recv() => match cmd {
                        Some(Cmd::Record(pending)) => {
                            let headers = headers_of(&pending.record);
                            let key = pending.record.key.as_deref();
                            let value = pending.record.value.as_deref();
                            let bytes = builder.next_record_bytes(pending.timestamp, key, value, &headers);
                            if builder.len_bytes() + bytes > max {
                                drop(headers);
                                carry = Some(pending);
                                break;
                            }
                            builder.append(pending.timestamp, key, value, &headers);
                            drop(headers);
                            records.push((pending.reply, pending.timestamp));
                        }
                        Some(Cmd::Flush) => break,
                        None => {
                            open = false;
                            break;
                        }
                    },
                    () = &mut linger => break,
                }
            }
            builder.try_finish()
        };
        match finished {
            Ok(len) => {
                buf.truncate(len);
                size_hint = len.clamp(1024, max.max(1024));
            }
            Err(error) => {
                for (reply, _) in records {
                    core.deliver(
                        reply,
                        Err(ClientError::InvalidArgument(format!(
                            "record too large: {error}"
                        ))),
                    );
                }
                continue;
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let core = core.clone();
        let topic = topic.clone();
        let spare = Arc::clone(&spare);
        // A buffer much larger than this partition's batches is not kept.
        let keep_bytes_max = size_hint.saturating_mul(2).max(64 * 1024);
        tokio::spawn(async move {
            let buf = core.send_batch(topic, partition, buf, records).await;
            drop(slot);
            let mut spare = lock(&spare);
            if spare.len() < spare_max && buf.capacity() <= keep_bytes_max {
                spare.push(buf);
            }
        });
    }
    // Queue closed: anything still in it was never batched.
    queue.close();
    while let Ok(cmd) = queue.try_recv() {
        core.fail_cmd(cmd, ClientError::Closed);
    }
}
