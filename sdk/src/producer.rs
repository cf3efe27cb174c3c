//! [`Producer`]: batches records per partition and sends the batches to
//! the shards that own the partitions, those of many partitions led by the
//! same shard together in one Produce request.
//!
//! Each partition the producer writes to has a queue and a task. The task
//! takes records from the queue and encodes them at once into the
//! partition's open batch ([`BatchBuilder`]); the batch is closed when the
//! next record would push it past `batch_bytes_max`, when `linger` has
//! passed since its first record, or on [`Producer::flush`]. A closed batch
//! is sent once one of the partition's `in_flight_per_partition` slots is
//! free; the slot is held until the batch's records resolve, so with one
//! slot (the default) a partition never has two batches on the way.
//!
//! Batches are grouped per connection, that is per leader shard (the shard
//! port of the metadata, or the broker's port when that is 0): a batch to
//! send joins its shard's `Route`. While fewer than `in_flight_max`
//! Produce requests are in flight on the route, a request is started at
//! once, carrying every batch waiting there at that moment (whatever
//! partitions and topics), up to `request_bytes_max` and never splitting a
//! batch; when that many are in flight, ready batches wait and the next
//! request to finish sends the next group. A lone batch on an idle route
//! thus leaves at once, with no timer, and a busy route sends fewer,
//! larger requests instead of one per partition. The response has one
//! outcome per item, in request order, and each goes back to its batch.
//!
//! Each batch keeps its own retries, and retries only what is known not to
//! have been appended. The broker answers NotLeader, LeaderNotAvailable,
//! BrokerShuttingDown, Throttled and NotEnoughReplicas only for batches it
//! did not append, and a failed connect (or a connection found broken
//! before the request was queued) sent nothing: such a batch is sent again,
//! the same bytes, possibly in a grouped request with other batches; the
//! other items of the failed request are not resent. A NotLeader that names
//! the new leader (a `LeaderHint` not older than the cached leadership) updates
//! the cached leader and is retried there at once; the others refresh the
//! topic's metadata when leadership may have moved and wait a backoff
//! (doubling from `retry_backoff` up to `retry_backoff_max`, at least the
//! broker's throttle time). Retries stop after `retries` of them or once
//! the next would start more than `delivery_timeout` after the batch's
//! first attempt; the records then fail with the last error.
//!
//! A batch whose outcome cannot be known is never sent again, since that
//! could store it twice: the broker's RequestTimedOut (its append goes on
//! and may still commit), no response within the request timeout, a
//! connection lost after the request was queued, a response that cannot be
//! read. Its records fail with [`ClientError::OutcomeUnknown`]
//! ([`ClientError::is_outcome_unknown`]). Every other failure (a refusal
//! such as CorruptBatch or UnknownTopic, retries exhausted) means the
//! records were not appended.
//!
//! Every record of a batch resolves exactly once, with its offset (the
//! base offset the broker assigned plus its index in the batch) or with the
//! batch's error. With [`Acks::None`] a request is resolved once it is
//! queued for writing.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shardmq_schema::batch::{BatchBuilder, HeaderRef};
use shardmq_schema::protocol::ErrorCode;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::time::Instant;

use crate::client::Client;
use crate::codec::{self, LeaderHint, ProduceItem, ProduceResult};
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
    partition: i32,
}

impl Delivery {
    /// The partition the record was queued for, known before the outcome
    /// (and so also when the record fails).
    pub fn partition(&self) -> i32 {
        self.partition
    }
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

/// What a Produce request spends on one item besides its batch's bytes
/// (the item table, the vector's length, the topic's offset), rounded up;
/// the same estimate as [`codec::encode_produce`]'s.
const ITEM_OVERHEAD_BYTES: usize = 64;

/// One attempt of a batch: its bytes, on their way to the shard, and where
/// the outcome goes.
#[derive(Debug)]
struct Submission {
    topic: Arc<str>,
    partition: i32,
    batch: Vec<u8>,
    done: oneshot::Sender<Attempted>,
}

/// The outcome of one attempt, with the batch's bytes given back for a
/// retry or for reuse.
#[derive(Debug)]
struct Attempted {
    batch: Vec<u8>,
    /// Base offset and log-append time of the batch.
    result: Result<(i64, i64)>,
    /// With NotLeader: where the broker says the leader is.
    hint: Option<LeaderHint>,
    /// How long the broker asked the client to wait (response header).
    throttle: Duration,
}

/// A Produce response's items and the throttle time of its header.
type GroupResponse = Option<(Vec<ProduceResult>, Duration)>;

/// The Produce requests to one broker shard, that is to one connection of
/// the [`Client`]: the batches waiting for a request and the drivers
/// sending them. Shared by every partition led there, whatever its topic.
#[derive(Debug)]
struct Route {
    /// `host:port` of the shard.
    addr: String,
    state: Mutex<RouteState>,
}

#[derive(Debug, Default)]
struct RouteState {
    /// Batches waiting for a request, in the order they became ready. At
    /// most `in_flight_per_partition` per partition the producer writes
    /// to, since a batch holds its partition's slot while here.
    waiting: VecDeque<Submission>,
    /// Drivers running, each with at most one request in flight; at most
    /// `in_flight_max`. While batches wait, at least one runs.
    drivers: usize,
}

/// Moves the oldest waiting batches into `group` while the request stays
/// within `bytes_max`: the first one always (a batch is never split, a
/// larger one goes alone), then each next one that fits, in order, so the
/// group is a prefix of the queue.
fn take_group(waiting: &mut VecDeque<Submission>, group: &mut Vec<Submission>, bytes_max: usize) {
    let mut bytes = 0usize;
    while let Some(next) = waiting.front() {
        let next_bytes = next.batch.len() + ITEM_OVERHEAD_BYTES;
        if !group.is_empty() && bytes + next_bytes > bytes_max {
            break;
        }
        bytes += next_bytes;
        group.extend(waiting.pop_front());
    }
}

/// The outcome of item `index` of a Produce request, from the response's
/// items (one per request item, in request order).
fn item_outcome(
    results: &[ProduceResult],
    index: usize,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64)> {
    let result = results
        .get(index)
        .filter(|r| r.topic == topic && r.partition == partition)
        .ok_or_else(|| {
            ClientError::protocol(format!(
                "produce response item {index} is not {topic}/{partition}"
            ))
        })?;
    if result.error != ErrorCode::None {
        return Err(ClientError::Broker {
            code: result.error,
            message: result.message.clone(),
        });
    }
    Ok((result.base_offset, result.log_append_time_ms))
}

/// What to do after a failed attempt of a batch.
#[derive(Debug)]
enum Next {
    /// Send again at once: the cached leader moved to where a hint said.
    RetryNow,
    /// Send again after a backoff, refreshing the metadata first if set.
    RetryAfter {
        /// Refresh the topic's metadata before the retry.
        refresh: bool,
        /// Wait at least this long (the broker's throttle time).
        at_least: Duration,
    },
    /// The records fail with this error.
    Fail(ClientError),
}

/// Judges a failed attempt: `retries_left` says whether the batch may be
/// sent again at all; `hint_moved` whether a NotLeader's hint changed the
/// cached leader. The caller still checks the delivery timeout.
fn judge(error: ClientError, retries_left: bool, hint_moved: bool, throttle: Duration) -> Next {
    if error.is_outcome_unknown() {
        let error = match error {
            unknown @ ClientError::OutcomeUnknown { .. } => unknown,
            cause => ClientError::OutcomeUnknown {
                cause: Box::new(cause),
            },
        };
        return Next::Fail(error);
    }
    if !error.is_safe_to_resend() || !retries_left {
        return Next::Fail(error);
    }
    match error.code() {
        Some(ErrorCode::NotLeader) if hint_moved => Next::RetryNow,
        Some(ErrorCode::Throttled) => Next::RetryAfter {
            refresh: false,
            at_least: throttle,
        },
        Some(ErrorCode::NotEnoughReplicas) => Next::RetryAfter {
            refresh: false,
            at_least: Duration::ZERO,
        },
        _ => Next::RetryAfter {
            refresh: true,
            at_least: Duration::ZERO,
        },
    }
}

#[derive(Debug)]
struct Core {
    client: Client,
    config: ProducerConfig,
    /// Each topic's partition queues, indexed by partition.
    queues: Mutex<HashMap<Arc<str>, PartitionQueues>>,
    round_robin: AtomicU32,
    /// The route of each shard address batches were sent to; one per
    /// broker shard of the cluster.
    routes: Mutex<HashMap<String, Arc<Route>>>,
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
        Self {
            handle: Arc::new(Handle {
                core: Arc::new(Core {
                    client,
                    config,
                    queues: Mutex::new(HashMap::new()),
                    round_robin: AtomicU32::new(0),
                    routes: Mutex::new(HashMap::new()),
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
        let (pending, delivery) = core.pending(record, partition);
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
        let (pending, delivery) = core.pending(record, partition);
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

    fn pending(&self, record: ProducerRecord, partition: i32) -> (Pending, Delivery) {
        let (reply, rx) = oneshot::channel();
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        (
            Pending {
                record,
                timestamp,
                reply,
            },
            Delivery { rx, partition },
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

    /// Sends one batch, retrying what is known not to have been appended
    /// (see the module docs), and resolves its records; gives the batch's
    /// buffer back for reuse.
    async fn send_batch(
        self: &Arc<Self>,
        topic: Arc<str>,
        partition: i32,
        mut batch: Vec<u8>,
        records: Vec<(Reply, i64)>,
    ) -> Vec<u8> {
        let deadline = Instant::now() + self.config.delivery_timeout;
        let mut retried = 0u32;
        let mut backoffs = 0u32;
        let result = loop {
            let attempted = self.produce_once(&topic, partition, batch).await;
            batch = attempted.batch;
            let error = match attempted.result {
                Ok(ack) => break Ok(ack),
                Err(error) => error,
            };
            let hint_moved = attempted
                .hint
                .as_ref()
                .is_some_and(|hint| self.client.apply_leader_hint(&topic, partition, hint));
            let retries_left = retried < self.config.retries;
            match judge(error.clone(), retries_left, hint_moved, attempted.throttle) {
                Next::Fail(error) => break Err(error),
                // No retry starts after the delivery timeout.
                Next::RetryNow if Instant::now() >= deadline => break Err(error),
                Next::RetryNow => {
                    tracing::debug!(%topic, partition, retried, %error, "retrying batch at the hinted leader");
                }
                Next::RetryAfter { refresh, at_least } => {
                    let wait = self.backoff(backoffs).max(at_least);
                    if Instant::now() + wait > deadline {
                        break Err(error);
                    }
                    tracing::debug!(%topic, partition, retried, %error, "retrying batch");
                    if refresh {
                        // A failed refresh shows up in the retry.
                        let _ = self.client.refresh_topic(&topic).await;
                    }
                    tokio::time::sleep(wait).await;
                    backoffs += 1;
                }
            }
            retried += 1;
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

    /// One attempt: hands the batch to the route of its leader's shard and
    /// waits for its item's outcome (base offset and log-append time).
    async fn produce_once(
        self: &Arc<Self>,
        topic: &Arc<str>,
        partition: i32,
        batch: Vec<u8>,
    ) -> Attempted {
        let addr = match self.client.leader_addr(topic, partition).await {
            Ok(addr) => addr,
            Err(error) => {
                return Attempted {
                    batch,
                    result: Err(error),
                    hint: None,
                    throttle: Duration::ZERO,
                }
            }
        };
        let (done, outcome) = oneshot::channel();
        self.submit(
            &addr,
            Submission {
                topic: Arc::clone(topic),
                partition,
                batch,
                done,
            },
        );
        match outcome.await {
            Ok(attempted) => attempted,
            // The driver was dropped with the batch: only when the runtime
            // shuts down.
            Err(_) => Attempted {
                batch: Vec::new(),
                result: Err(ClientError::Closed),
                hint: None,
                throttle: Duration::ZERO,
            },
        }
    }

    /// Queues a batch on the route of `addr`, and starts a driver for the
    /// route if fewer than `in_flight_max` run: then the batch leaves at
    /// once, with whatever else waits there.
    fn submit(self: &Arc<Self>, addr: &str, submission: Submission) {
        let route = {
            let mut routes = lock(&self.routes);
            match routes.get(addr) {
                Some(route) => Arc::clone(route),
                None => {
                    let route = Arc::new(Route {
                        addr: addr.to_owned(),
                        state: Mutex::default(),
                    });
                    routes.insert(addr.to_owned(), Arc::clone(&route));
                    route
                }
            }
        };
        let start = {
            let mut state = lock(&route.state);
            state.waiting.push_back(submission);
            let start = state.drivers < self.config.in_flight_max.max(1);
            if start {
                state.drivers += 1;
            }
            start
        };
        if start {
            tokio::spawn(Arc::clone(self).drive(route));
        }
    }

    /// Sends the batches waiting on a route, one request at a time, each
    /// carrying every batch waiting when it starts (up to
    /// `request_bytes_max`), until none waits.
    async fn drive(self: Arc<Self>, route: Arc<Route>) {
        let mut group: Vec<Submission> = Vec::new();
        loop {
            {
                let mut state = lock(&route.state);
                take_group(
                    &mut state.waiting,
                    &mut group,
                    self.config.request_bytes_max,
                );
                if group.is_empty() {
                    // Decided under the lock a submitter takes: a batch
                    // queued after this starts its own driver.
                    state.drivers -= 1;
                    return;
                }
            }
            let response = self.produce_group(&route.addr, &group).await;
            for (index, submission) in group.drain(..).enumerate() {
                let (result, hint, throttle) = match &response {
                    Ok(None) => (Ok((-1, -1)), None, Duration::ZERO),
                    Ok(Some((results, throttle))) => (
                        item_outcome(results, index, &submission.topic, submission.partition),
                        results.get(index).and_then(|r| r.leader_hint.clone()),
                        *throttle,
                    ),
                    Err(error) => (Err(error.clone()), None, Duration::ZERO),
                };
                // The batch's task may be gone (the runtime shutting down).
                let _ = submission.done.send(Attempted {
                    batch: submission.batch,
                    result,
                    hint,
                    throttle,
                });
            }
        }
    }

    /// One Produce request carrying the batches of `group`: the response's
    /// items and throttle time, or `None` with [`Acks::None`].
    async fn produce_group(&self, addr: &str, group: &[Submission]) -> Result<GroupResponse> {
        let conn = self.client.connection(addr).await?;
        let items: Vec<ProduceItem<'_>> = group
            .iter()
            .map(|submission| ProduceItem {
                topic: &submission.topic,
                partition: submission.partition,
                records: &submission.batch,
            })
            .collect();
        let acks = self.config.acks;
        let ack_timeout_ms = u32::try_from(self.config.ack_timeout.as_millis()).unwrap_or(u32::MAX);
        let build = |id, client_id: &str| {
            codec::encode_produce(id, client_id, acks, ack_timeout_ms, &items)
        };
        if acks == Acks::None {
            conn.send_oneway(build)?;
            return Ok(None);
        }
        let timeout = self.client.config().request_timeout + self.config.ack_timeout;
        let response = conn.request_with_timeout(build, timeout).await?;
        let throttle =
            Duration::from_millis(u64::from(response.response().header().throttle_time_ms()));
        Ok(Some((codec::decode_produce(&response)?, throttle)))
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
            // Whatever is queued already joins at once, linger or not
            // (a producer faster than its round trips batches naturally);
            // then the batch waits for more until `linger` has passed.
            while builder.len_bytes() < max {
                let cmd = match queue.try_recv() {
                    Ok(cmd) => Some(cmd),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if Instant::now() >= deadline {
                            break;
                        }
                        tokio::select! {
                            biased;
                            cmd = queue.recv() => cmd,
                            () = &mut linger => break,
                        }
                    }
                };
                match cmd {
                    Some(Cmd::Record(pending)) => {
                        let headers = headers_of(&pending.record);
                        let key = pending.record.key.as_deref();
                        let value = pending.record.value.as_deref();
                        let bytes =
                            builder.next_record_bytes(pending.timestamp, key, value, &headers);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(sizes: &[usize]) -> VecDeque<Submission> {
        sizes
            .iter()
            .enumerate()
            .map(|(partition, &bytes)| Submission {
                topic: Arc::from("t"),
                partition: partition as i32,
                batch: vec![0; bytes],
                done: oneshot::channel().0,
            })
            .collect()
    }

    #[test]
    fn take_group_takes_a_prefix_within_the_bound_and_never_splits_a_batch() {
        const ITEM: usize = ITEM_OVERHEAD_BYTES;
        /// Waiting batch sizes, bytes_max, partitions taken, then left.
        type Case = (&'static [usize], usize, &'static [i32], &'static [i32]);
        let cases: &[Case] = &[
            (&[], 1_000, &[], &[]),
            (&[100], 1_000, &[0], &[]),
            (&[100, 100, 100], 1_000, &[0, 1, 2], &[]),
            // Exactly at the bound fits.
            (&[100, 100], 2 * (100 + ITEM), &[0, 1], &[]),
            (&[100, 100, 100], 2 * (100 + ITEM), &[0, 1], &[2]),
            // A batch over the bound goes alone, first or later.
            (&[5_000, 100], 1_000, &[0], &[1]),
            (&[100, 5_000, 100], 1_000, &[0], &[1, 2]),
            // The group is a prefix: a small batch behind a big one waits.
            (&[600, 600, 10], 1_000, &[0], &[1, 2]),
        ];
        for (sizes, bytes_max, taken, left) in cases {
            let mut queue = waiting(sizes);
            let mut group = Vec::new();
            take_group(&mut queue, &mut group, *bytes_max);
            let got: Vec<i32> = group.iter().map(|s| s.partition).collect();
            let rest: Vec<i32> = queue.iter().map(|s| s.partition).collect();
            assert_eq!(
                (&got[..], &rest[..]),
                (*taken, *left),
                "{sizes:?} {bytes_max}"
            );
        }
    }

    fn result(topic: &str, partition: i32, error: ErrorCode, base_offset: i64) -> ProduceResult {
        ProduceResult {
            topic: topic.to_owned(),
            partition,
            error,
            message: None,
            base_offset,
            log_append_time_ms: 7,
            leader_hint: None,
        }
    }

    #[test]
    fn item_outcome_reads_the_item_at_its_index() {
        let results = [
            result("a", 0, ErrorCode::None, 10),
            result("b", 0, ErrorCode::NotLeader, -1),
            result("a", 0, ErrorCode::None, 12),
        ];
        assert_eq!(item_outcome(&results, 0, "a", 0).unwrap(), (10, 7));
        let refused = item_outcome(&results, 1, "b", 0).unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::NotLeader));
        assert!(refused.is_retriable());
        // Two batches of one partition in a request: each its own item.
        assert_eq!(item_outcome(&results, 2, "a", 0).unwrap(), (12, 7));
        // An item missing or out of order breaks the protocol.
        for (index, topic, partition) in [(3, "a", 0), (0, "b", 0), (1, "b", 1)] {
            let error = item_outcome(&results, index, topic, partition).unwrap_err();
            assert!(matches!(error, ClientError::Protocol(_)), "{error:?}");
        }
    }

    /// What [`judge`] decides, in words a table can hold.
    fn decision(next: &Next) -> String {
        match next {
            Next::RetryNow => "now".to_owned(),
            Next::RetryAfter { refresh, at_least } => {
                format!(
                    "after refresh={refresh} at_least={}ms",
                    at_least.as_millis()
                )
            }
            Next::Fail(error) if error.is_outcome_unknown() => {
                assert!(
                    matches!(error, ClientError::OutcomeUnknown { .. }),
                    "{error:?}"
                );
                "unknown".to_owned()
            }
            Next::Fail(error) => format!("fail {:?}", error.code()),
        }
    }

    #[test]
    fn judge_retries_only_what_was_not_appended() {
        let broker = |code| ClientError::broker(code, None);
        let lost = |request_sent| ClientError::ConnectionLost {
            addr: "a".into(),
            reason: "reset".into(),
            request_sent,
        };
        let timeout = |request_sent| ClientError::Timeout {
            after: Duration::from_secs(1),
            request_sent,
        };
        let connect = ClientError::Connect {
            addr: "a".into(),
            source: Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        let throttle = Duration::from_millis(200);
        // Error, retries left, hint moved the leader, decision.
        let cases: Vec<(ClientError, bool, bool, &str)> = vec![
            (broker(ErrorCode::NotLeader), true, true, "now"),
            (
                broker(ErrorCode::NotLeader),
                true,
                false,
                "after refresh=true at_least=0ms",
            ),
            (
                broker(ErrorCode::LeaderNotAvailable),
                true,
                false,
                "after refresh=true at_least=0ms",
            ),
            (
                broker(ErrorCode::BrokerShuttingDown),
                true,
                false,
                "after refresh=true at_least=0ms",
            ),
            (
                broker(ErrorCode::Throttled),
                true,
                false,
                "after refresh=false at_least=200ms",
            ),
            (
                broker(ErrorCode::NotEnoughReplicas),
                true,
                false,
                "after refresh=false at_least=0ms",
            ),
            (connect, true, false, "after refresh=true at_least=0ms"),
            (lost(false), true, false, "after refresh=true at_least=0ms"),
            (
                timeout(false),
                true,
                false,
                "after refresh=true at_least=0ms",
            ),
            // Nothing left to retry with: the error itself, not unknown.
            (
                broker(ErrorCode::NotLeader),
                false,
                true,
                "fail Some(NotLeader)",
            ),
            // The outcome cannot be known: never retried.
            (broker(ErrorCode::RequestTimedOut), true, false, "unknown"),
            (lost(true), true, false, "unknown"),
            (timeout(true), true, false, "unknown"),
            (ClientError::protocol("garbled"), true, false, "unknown"),
            (broker(ErrorCode::RequestTimedOut), false, false, "unknown"),
            // Refused for sure.
            (
                broker(ErrorCode::CorruptBatch),
                true,
                false,
                "fail Some(CorruptBatch)",
            ),
            (
                broker(ErrorCode::UnknownTopic),
                true,
                false,
                "fail Some(UnknownTopic)",
            ),
            (ClientError::Closed, true, false, "fail None"),
        ];
        for (error, retries_left, hint_moved, expected) in cases {
            let shown = format!("{error:?}");
            let next = judge(error, retries_left, hint_moved, throttle);
            assert_eq!(decision(&next), expected, "{shown}");
        }
    }
}
