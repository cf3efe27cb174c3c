//! [`Consumer`]: reads assigned partitions from their leaders' owning
//! shards (or from the replicas of one chosen broker, [`ReadFrom`]), from
//! positions the caller sets.
//!
//! The consumer keeps one position per assigned partition: the offset of
//! the next record to return. [`Consumer::poll`] sends one Fetch request
//! per owning shard (concurrently, each a long poll of at most `max_wait`),
//! decodes the returned batches with [`RecordBatchView`], skips records
//! below the position (a fetch starts with the whole batch holding the
//! position) and control batches, and moves each position past what it
//! returns. Records of a partition come back in offset order.
//!
//! With [`ReadFrom::Replica`] the fetches go to that broker's replica of
//! each partition, on the shard port the metadata names for it, with
//! `allow_follower` set: the replica answers even as a follower, up to the
//! commit index it knows, so its high watermark is its own and may trail
//! the leader's.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use shardmq_schema::batch::{RecordBatchView, LENGTH_PREFIX_BYTES};
use shardmq_schema::protocol::{ErrorCode, OffsetSpec};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::Client;
use crate::codec::{self, FetchItem, FetchResult, ListOffsetsItem};
use crate::config::{ClientConfig, ConsumerConfig};
pub use crate::config::{ReadFrom, SeekTo};
use crate::error::{ClientError, Result};

/// Fetch rounds of one poll while every partition is refused (leader
/// moved): the first, and retries against the leaders just learnt.
const FETCH_ROUNDS_MAX: u32 = 3;

/// Position lookups (ListOffsets) one consumer has in flight at once when
/// it starts or seeks every partition.
pub const RESOLVE_IN_FLIGHT_MAX: usize = 64;
/// Attempts of an offset lookup (ListOffsets, DescribeReplicas) after
/// retriable errors.
const LOOKUP_ATTEMPTS_MAX: u32 = 4;
/// First wait between lookup or fetch attempts.
const LOOKUP_BACKOFF: Duration = Duration::from_millis(50);

/// One record batch as a replica stored it ([`Consumer::poll_batches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBatch {
    /// Topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// Offset after the batch's last record.
    pub next_offset: i64,
    /// Records in the batch.
    pub record_count: i32,
    /// Whether it is a control batch (transaction markers).
    pub is_control: bool,
    /// The whole batch, Kafka RecordBatch v2 bytes as stored; shares the
    /// fetch response's memory.
    pub bytes: Bytes,
}

/// One record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Create time, or append time in a log-append-time topic; ms.
    pub timestamp: i64,
    /// Key; `None` when null.
    pub key: Option<Bytes>,
    /// Value; `None` when null.
    pub value: Option<Bytes>,
    /// Headers: key, nullable value.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// Reads records of assigned partitions of one topic.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    topic: Option<String>,
    /// Next offset to return per assigned partition; `None` until resolved
    /// from `config.start`.
    positions: BTreeMap<i32, Option<i64>>,
    /// Fetches still in flight, at most one per broker shard address: a
    /// poll returns as soon as one of them brings records, and the others
    /// go on into the next poll instead of being sent again. Each answers
    /// `(address, the (partition, offset) pairs it asked, its outcome)`.
    in_flight: JoinSet<FetchOutcome>,
    /// The addresses `in_flight` has a fetch to, with what the newest one
    /// asked: a poll that wants something else there (a seek moved a
    /// position) sends another, and the answer of the stale one is dropped.
    in_flight_addrs: HashMap<String, Vec<(i32, i64)>>,
}

/// What one background fetch brought back.
type FetchOutcome = (String, Vec<(i32, i64)>, Result<Vec<FetchResult>>);

impl Consumer {
    /// Connects a new [`Client`] and makes a consumer over it.
    pub async fn connect(client: ClientConfig, config: ConsumerConfig) -> Result<Self> {
        Ok(Self::new(Client::connect(client).await?, config))
    }

    /// A consumer over an existing client, with nothing assigned.
    pub fn new(client: Client, config: ConsumerConfig) -> Self {
        Self {
            client,
            config,
            topic: None,
            positions: BTreeMap::new(),
            in_flight: JoinSet::new(),
            in_flight_addrs: HashMap::new(),
        }
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reads these partitions of `topic` from now on, replacing any earlier
    /// assignment. Each starts at `config.start` unless sought.
    pub async fn assign(&mut self, topic: &str, partitions: &[i32]) -> Result<()> {
        let info = self.client.topic(topic).await?;
        for &partition in partitions {
            if !info.partitions.iter().any(|p| p.partition == partition) {
                return Err(ClientError::broker(
                    ErrorCode::UnknownPartition,
                    Some(&format!("{topic}/{partition}")),
                ));
            }
        }
        self.topic = Some(topic.to_owned());
        self.positions = partitions.iter().map(|&p| (p, None)).collect();
        Ok(())
    }

    /// Assigns every partition of `topic`.
    pub async fn assign_all(&mut self, topic: &str) -> Result<()> {
        let info = self.client.topic(topic).await?;
        let partitions: Vec<i32> = info.partitions.iter().map(|p| p.partition).collect();
        self.assign(topic, &partitions).await
    }

    /// The assigned topic.
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// The offset of the next record [`poll`](Self::poll) returns from the
    /// partition, once known.
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.positions.get(&partition).copied().flatten()
    }

    fn assigned_topic(&self) -> Result<String> {
        self.topic
            .clone()
            .ok_or_else(|| ClientError::InvalidArgument("no partition assigned".to_owned()))
    }

    /// Moves the position of an assigned partition (ListOffsets for
    /// Earliest, Latest and Timestamp). A timestamp after every record
    /// seeks to the end.
    pub async fn seek(&mut self, partition: i32, to: SeekTo) -> Result<()> {
        if !self.positions.contains_key(&partition) {
            return Err(ClientError::InvalidArgument(format!(
                "partition {partition} is not assigned"
            )));
        }
        let offset = self.resolve(partition, to).await?;
        self.positions.insert(partition, Some(offset));
        Ok(())
    }

    /// [`seek`](Self::seek) on every assigned partition.
    pub async fn seek_all(&mut self, to: SeekTo) -> Result<()> {
        let partitions: Vec<i32> = self.positions.keys().copied().collect();
        self.seek_each(&partitions, to).await
    }

    /// [`seek`](Self::seek) on each of `partitions`, all assigned.
    async fn seek_each(&mut self, partitions: &[i32], to: SeekTo) -> Result<()> {
        for (partition, offset) in self.resolve_all(partitions, to).await? {
            self.positions.insert(partition, Some(offset));
        }
        Ok(())
    }

    /// The offset `to` names in each of `partitions`, up to
    /// [`RESOLVE_IN_FLIGHT_MAX`] lookups at once: a consumer of a
    /// thousand partitions starts after a few round trips, not a thousand.
    /// The first lookup that fails fails them all.
    async fn resolve_all(&self, partitions: &[i32], to: SeekTo) -> Result<Vec<(i32, i64)>> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        stream::iter(partitions.iter().copied())
            .map(|partition| async move {
                self.resolve(partition, to)
                    .await
                    .map(|offset| (partition, offset))
            })
            .buffer_unordered(RESOLVE_IN_FLIGHT_MAX)
            .try_collect()
            .await
    }

    /// The offset `to` names in the partition. Reading from a replica,
    /// Earliest and Latest are that replica's log start and high
    /// watermark (DescribeReplicas on its broker); otherwise, and for
    /// Timestamp, the leader answers ListOffsets.
    async fn resolve(&self, partition: i32, to: SeekTo) -> Result<i64> {
        let (spec, timestamp_ms) = match to {
            SeekTo::Offset(offset) => return Ok(offset),
            SeekTo::Earliest => (OffsetSpec::Earliest, 0),
            SeekTo::Latest => (OffsetSpec::Latest, 0),
            SeekTo::Timestamp(ts) => (OffsetSpec::Timestamp, ts),
        };
        let topic = self.assigned_topic()?;
        if let (ReadFrom::Replica(node_id), OffsetSpec::Earliest | OffsetSpec::Latest) =
            (self.config.read_from, spec)
        {
            return self
                .resolve_on_replica(&topic, partition, node_id, spec)
                .await;
        }
        let item = [ListOffsetsItem {
            topic: &topic,
            partition,
            spec,
            timestamp_ms,
        }];
        let mut attempt = 0;
        loop {
            let mut hint = None;
            let result = async {
                let conn = self.client.leader_connection(&topic, partition).await?;
                let response = conn
                    .request(|id, client_id| codec::encode_list_offsets(id, client_id, &item))
                    .await?;
                let answer = codec::decode_list_offsets(&response)?
                    .into_iter()
                    .find(|a| a.topic == topic && a.partition == partition)
                    .ok_or_else(|| ClientError::protocol("list offsets without the partition"))?;
                if answer.error != ErrorCode::None {
                    hint = answer.leader_hint;
                    return Err(ClientError::Broker {
                        code: answer.error,
                        message: answer.message,
                    });
                }
                Ok(answer.offset)
            }
            .await;
            match result {
                Ok(-1) if spec == OffsetSpec::Timestamp => {
                    // No record at or after the timestamp: the end.
                    return Box::pin(self.resolve(partition, SeekTo::Latest)).await;
                }
                Ok(offset) => return Ok(offset),
                Err(error) if error.is_retriable() && attempt < LOOKUP_ATTEMPTS_MAX => {
                    let moved = hint
                        .as_ref()
                        .is_some_and(|h| self.client.apply_leader_hint(&topic, partition, h));
                    if !moved {
                        if error.needs_metadata_refresh() {
                            let _ = self.client.refresh_topic(&topic).await;
                        }
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Earliest or Latest of the replica on `node_id`, as its broker
    /// reports it.
    async fn resolve_on_replica(
        &self,
        topic: &str,
        partition: i32,
        node_id: i32,
        spec: OffsetSpec,
    ) -> Result<i64> {
        let mut attempt = 0;
        loop {
            let result = self
                .client
                .describe_replicas(node_id, Some(&[topic]))
                .await
                .and_then(|described| {
                    described
                        .replica(topic, partition)
                        .map(|r| {
                            if spec == OffsetSpec::Earliest {
                                r.log_start_offset
                            } else {
                                r.high_watermark
                            }
                        })
                        .ok_or_else(|| {
                            ClientError::InvalidArgument(format!(
                                "node {node_id} holds no replica of {topic}/{partition}"
                            ))
                        })
                });
            match result {
                Err(error) if error.is_retriable() && attempt < LOOKUP_ATTEMPTS_MAX => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Where the partition's fetches go: its leader's owning shard, or the
    /// chosen replica's shard.
    async fn fetch_addr(&self, topic: &str, partition: i32) -> Result<String> {
        match self.config.read_from {
            ReadFrom::Leader => self.client.leader_addr(topic, partition).await,
            ReadFrom::Replica(node_id) => self.client.replica_addr(topic, partition, node_id).await,
        }
    }

    /// Fetches what is available at the positions, waiting up to
    /// `max_wait` on the broker for something to arrive (a long poll), and
    /// returns it in offset order per partition; empty if nothing came.
    ///
    /// A partition whose leader moved (NotLeader, LeaderNotAvailable, a
    /// broker that cannot be reached) is fetched again from the leader a
    /// hint names or, after a metadata refresh, from the one the metadata
    /// names, within `max_wait`; if it is still refused it is skipped this
    /// time. A position outside the log fails with
    /// [`ClientError::OffsetOutOfRange`]; seek to go on.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>> {
        let topic = self.assigned_topic()?;
        let answers = self.fetch(&topic, max_wait).await?;
        let mut out = Vec::new();
        for (answer, position) in answers {
            let next = decode_records(&topic, &answer, position, &mut out)?;
            self.positions.insert(answer.partition, Some(next));
        }
        Ok(out)
    }

    /// [`poll`](Self::poll), returning whole record batches as the broker
    /// stored them instead of records: every batch that ends after the
    /// position, control batches included (the first may begin before the
    /// position). Each position moves past the batches returned.
    pub async fn poll_batches(&mut self, max_wait: Duration) -> Result<Vec<FetchedBatch>> {
        let topic = self.assigned_topic()?;
        let answers = self.fetch(&topic, max_wait).await?;
        let mut out = Vec::new();
        for (answer, position) in answers {
            let next = decode_batches(&answer, position, &mut out)?;
            self.positions.insert(answer.partition, Some(next));
        }
        Ok(out)
    }

    /// One poll's fetches: the answers without error, each with the
    /// position it was fetched at, sorted by partition.
    async fn fetch(&mut self, topic: &str, max_wait: Duration) -> Result<Vec<(FetchResult, i64)>> {
        // Resolve positions not yet known.
        let unknown: Vec<i32> = self
            .positions
            .iter()
            .filter(|(_, pos)| pos.is_none())
            .map(|(&p, _)| p)
            .collect();
        self.seek_each(&unknown, self.config.start).await?;
        let deadline = Instant::now() + max_wait;
        let mut round = 0;
        loop {
            let (answers, refused) = self.fetch_round(topic, deadline).await?;
            round += 1;
            let now = Instant::now();
            if !answers.is_empty() || !refused || round >= FETCH_ROUNDS_MAX || now >= deadline {
                return Ok(answers);
            }
            // Everything was refused: once more against the leaders just
            // learnt, after a short wait so a leaderless partition is not
            // asked in a tight loop.
            tokio::time::sleep(backoff(round - 1).min(deadline - now)).await;
        }
    }

    /// One fetch per owning shard, concurrently, each a long poll until
    /// `deadline`, except to shards that still have one in flight from an
    /// earlier poll. Returns as soon as one brings records (the others stay
    /// in flight), or at the deadline: the answers without error (those
    /// with records or at the end of the log) that still match the
    /// positions, and whether some partition was refused with a retriable
    /// error (then the metadata was refreshed or a hint applied).
    async fn fetch_round(
        &mut self,
        topic: &str,
        deadline: Instant,
    ) -> Result<(Vec<(FetchResult, i64)>, bool)> {
        let mut refused = false;
        let mut refresh = false;
        let mut by_addr: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
        for (&partition, &position) in &self.positions {
            let Some(offset) = position else { continue };
            match self.fetch_addr(topic, partition).await {
                Ok(addr) => by_addr.entry(addr).or_default().push((partition, offset)),
                // No leader now: skip the partition this time.
                Err(error) if error.is_retriable() => {
                    refused = true;
                    refresh = true;
                }
                Err(error) => return Err(error),
            }
        }
        let max_wait = deadline.saturating_duration_since(Instant::now());
        let max_wait_ms = u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX);
        let timeout = self.client.config().request_timeout + max_wait;
        let allow_follower = matches!(self.config.read_from, ReadFrom::Replica(_));
        // The fetches sent by this round: it waits for them (or records),
        // not for ones carried over from an earlier poll.
        let mut started: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (addr, mut parts) in by_addr {
            parts.sort_unstable();
            if self.in_flight_addrs.get(&addr) == Some(&parts) {
                continue;
            }
            self.in_flight_addrs.insert(addr.clone(), parts.clone());
            started.insert(addr.clone());
            let client = self.client.clone();
            let topic = topic.to_owned();
            let (min_bytes, partition_max, fetch_max) = (
                self.config.fetch_min_bytes,
                self.config.partition_bytes_max,
                self.config.fetch_bytes_max,
            );
            self.in_flight.spawn(async move {
                let result = async {
                    let conn = client.connection(&addr).await?;
                    let items: Vec<FetchItem<'_>> = parts
                        .iter()
                        .map(|&(partition, offset)| FetchItem {
                            topic: &topic,
                            partition,
                            offset,
                            max_bytes: partition_max,
                        })
                        .collect();
                    let response = conn
                        .request_with_timeout(
                            |id, client_id| {
                                codec::encode_fetch(
                                    id,
                                    client_id,
                                    max_wait_ms,
                                    min_bytes,
                                    fetch_max,
                                    allow_follower,
                                    &items,
                                )
                            },
                            timeout,
                        )
                        .await?;
                    codec::decode_fetch(&response)
                }
                .await;
                (addr, parts, result)
            });
        }
        let mut answers: Vec<FetchResult> = Vec::new();
        let mut first_error = None;
        let hard_deadline = deadline + self.client.config().request_timeout;
        while !started.is_empty() {
            let left = hard_deadline.saturating_duration_since(Instant::now());
            let joined = match tokio::time::timeout(left, self.in_flight.join_next()).await {
                Ok(Some(joined)) => joined,
                // Nothing in flight, or a broker that does not answer: what
                // came is the answer.
                Ok(None) | Err(_) => break,
            };
            match joined {
                Ok((addr, parts, outcome)) => {
                    if self.in_flight_addrs.get(&addr).is_some_and(|newest| {
                        let mut asked = parts.clone();
                        asked.sort_unstable();
                        *newest == asked
                    }) {
                        self.in_flight_addrs.remove(&addr);
                        started.remove(&addr);
                    }
                    match outcome {
                        Ok(results) => {
                            // Only answers for positions that did not move
                            // meanwhile (a seek, or a fetch elsewhere).
                            let asked: HashMap<i32, i64> = parts.into_iter().collect();
                            let current: Vec<FetchResult> = results
                                .into_iter()
                                .filter(|r| {
                                    asked.get(&r.partition).copied()
                                        == self.positions.get(&r.partition).copied().flatten()
                                })
                                .collect();
                            let got_records = current.iter().any(|r| !r.records.is_empty());
                            answers.extend(current);
                            if got_records {
                                break;
                            }
                        }
                        Err(error) if error.is_retriable() => {
                            refused = true;
                            refresh |= error.needs_metadata_refresh();
                        }
                        Err(error) => {
                            first_error.get_or_insert(error);
                        }
                    }
                }
                Err(join) => {
                    // A fetch task panicked (a bug): start over clean.
                    self.in_flight.abort_all();
                    self.in_flight_addrs.clear();
                    first_error
                        .get_or_insert(ClientError::protocol(format!("fetch task failed: {join}")));
                    break;
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        answers.sort_by_key(|a| a.partition);
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            if answer.topic != topic {
                continue;
            }
            let Some(Some(position)) = self.positions.get(&answer.partition).copied() else {
                continue;
            };
            match answer.error {
                ErrorCode::None => out.push((answer, position)),
                ErrorCode::OffsetOutOfRange => {
                    return Err(ClientError::OffsetOutOfRange {
                        topic: topic.to_owned(),
                        partition: answer.partition,
                        offset: position,
                    })
                }
                ErrorCode::NotLeader if matches!(self.config.read_from, ReadFrom::Replica(_)) => {
                    // A replica asked for a follower read does not answer
                    // NotLeader unless it will not serve one at all.
                    return Err(ClientError::Broker {
                        code: ErrorCode::NotLeader,
                        message: Some(format!(
                            "the replica refused a follower read of {topic}/{}{}",
                            answer.partition,
                            answer.message.map(|m| format!(": {m}")).unwrap_or_default()
                        )),
                    });
                }
                code if code.is_retriable() => {
                    refused = true;
                    let moved = answer.leader_hint.as_ref().is_some_and(|hint| {
                        self.client.apply_leader_hint(topic, answer.partition, hint)
                    });
                    refresh |= !moved;
                }
                code => {
                    return Err(ClientError::Broker {
                        code,
                        message: answer.message,
                    })
                }
            }
        }
        if refresh {
            let _ = self.client.refresh_topic(topic).await;
        }
        Ok((out, refused))
    }
}

/// Wait before lookup or fetch attempt `attempt + 1`: 50 ms, doubling, at
/// most 1 s.
fn backoff(attempt: u32) -> Duration {
    let factor = 1u32 << attempt.min(5);
    (LOOKUP_BACKOFF * factor).min(Duration::from_secs(1))
}

/// Appends the batches of `answer` that end after `position` to `out`;
/// returns the new position. A batch cut short at the end of the records
/// ends the decoding.
fn decode_batches(answer: &FetchResult, position: i64, out: &mut Vec<FetchedBatch>) -> Result<i64> {
    let mut next = position;
    for_each_batch(&answer.records, |bytes, batch| {
        if batch.next_offset() <= next {
            return Ok(());
        }
        out.push(FetchedBatch {
            topic: answer.topic.clone(),
            partition: answer.partition,
            base_offset: batch.base_offset(),
            next_offset: batch.next_offset(),
            record_count: batch.record_count(),
            is_control: batch.is_control(),
            bytes: answer.records.slice_ref(bytes),
        });
        next = batch.next_offset();
        Ok(())
    })?;
    Ok(next)
}

/// Calls `f` with the bytes and view of each whole batch of `records`, in
/// order; a batch cut short at the end (a broker that trims to
/// `max_bytes`) ends the walk.
fn for_each_batch(
    records: &[u8],
    mut f: impl FnMut(&[u8], &RecordBatchView<'_>) -> Result<()>,
) -> Result<()> {
    let mut at = 0;
    while records.len() - at >= LENGTH_PREFIX_BYTES {
        let length_bytes: [u8; 4] = records[at + 8..at + 12]
            .try_into()
            .map_err(|_| ClientError::protocol("batch length"))?;
        let batch_length = i32::from_be_bytes(length_bytes);
        let Ok(batch_length) = usize::try_from(batch_length) else {
            return Err(ClientError::protocol("negative batch length"));
        };
        let end = at + LENGTH_PREFIX_BYTES + batch_length;
        if end > records.len() {
            break; // a partial batch at the end
        }
        let bytes = &records[at..end];
        at = end;
        let batch = RecordBatchView::parse(bytes)
            .map_err(|e| ClientError::protocol(format!("fetched batch: {e}")))?;
        f(bytes, &batch)?;
    }
    Ok(())
}

/// Appends the records of `answer` at or after `position` to `out`;
/// returns the new position. A batch cut short at the end of the records
/// (a broker that trims to `max_bytes`) ends the decoding.
fn decode_records(
    topic: &str,
    answer: &FetchResult,
    position: i64,
    out: &mut Vec<ConsumedRecord>,
) -> Result<i64> {
    let mut next = position;
    for_each_batch(&answer.records, |_, batch| {
        if batch.next_offset() <= next {
            return Ok(());
        }
        if batch.is_control() {
            next = batch.next_offset();
            return Ok(());
        }
        for record in batch.records() {
            let record =
                record.map_err(|e| ClientError::protocol(format!("fetched record: {e}")))?;
            let offset = batch.record_offset(&record);
            if offset < next {
                continue;
            }
            let share = |part: Option<&[u8]>| part.map(|p| answer.records.slice_ref(p));
            out.push(ConsumedRecord {
                topic: topic.to_owned(),
                partition: answer.partition,
                offset,
                timestamp: batch.record_timestamp(&record),
                key: share(record.key()),
                value: share(record.value()),
                headers: record
                    .headers()
                    .filter_map(|h| h.ok())
                    .map(|(k, v)| (answer.records.slice_ref(k), share(v)))
                    .collect(),
            });
        }
        next = next.max(batch.next_offset());
        Ok(())
    })?;
    Ok(next)
}
