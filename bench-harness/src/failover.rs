//! A failover workload: steady producing to N partitions across a SIGKILL
//! of the server leading the most of them.
//!
//! 1. Create the topic (replication factor 3) and wait until every
//!    partition has a leader.
//! 2. Producers send at the workload's rate, open loop, partition
//!    `s mod N` for send `s`, so each partition gets a record every
//!    `N / rate` seconds (the resolution of the figures below).
//! 3. After the warm-up, ask who leads each partition, SIGKILL the server
//!    leading the most (the lowest id on a tie) and note the instant the
//!    kill returned (the process is then dead and reaped). Sending goes on
//!    for the measured period.
//! 4. Per partition the killed server led: the time from the kill to the
//!    first acknowledgement of a record sent after the kill. Such an
//!    acknowledgement can only come from a new leader. When the driver can
//!    poll leaders cheaply (shardmq: one DescribeReplicas per surviving
//!    broker), also the time from the kill to the first poll that found a
//!    new leader among the survivors, every [`ELECTION_POLL`].
//!
//! Records in flight to the killed server when it died fail (their
//! outcome is unknown to the client); they are counted, not retried by the
//! harness. The topic is not deleted: the servers, one of them dead, are
//! discarded right after.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::deploy::Deployment;
use crate::driver::{AckFuture, BenchProducer, Driver, DriverError};
use crate::payload::{epoch_ns, PayloadMaker};
use crate::report::model::{FailoverRun, TimelinePoint};
use crate::schedule::{Pacer, Schedule};
use crate::workload::Workload;

/// Interval of the leader polls after the kill.
pub const ELECTION_POLL: Duration = Duration::from_millis(100);
/// Longest wait of one leader poll.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the partitions may take to be led after creation.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(120);
/// Width of a timeline bucket.
const BUCKET: Duration = Duration::from_millis(100);
/// How long outstanding acknowledgements are awaited after sending ends.
const ACK_DRAIN_TIMEOUT: Duration = Duration::from_secs(40);
/// Acknowledgements one producer may have outstanding in the harness; it
/// waits beyond.
const ACKS_PENDING_MAX: usize = 65_536;

/// What the producers and the kill share.
#[derive(Debug)]
struct Shared {
    /// Set right after the kill.
    kill_at: OnceLock<Instant>,
    /// Per partition: the first acknowledgement of a record sent after the
    /// kill.
    first_ack: Mutex<Vec<Option<Instant>>>,
    /// Acknowledgements per bucket from the start.
    buckets: Vec<AtomicU64>,
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, error: impl std::fmt::Display) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(error.to_string());
        }
    }
}

/// Runs the failover measurement of `workload` against `driver` on
/// `deployment`, killing one of its servers; `prefix` names the topic.
pub async fn measure(
    driver: &dyn Driver,
    deployment: &mut Deployment,
    workload: &Workload,
    prefix: &str,
) -> Result<FailoverRun, DriverError> {
    let label = format!("{} {}", driver.name(), driver.mode());
    let topic = format!("{prefix}-0");
    let partitions = workload.partitions_per_topic;
    let rate = workload
        .producer_rate
        .ok_or_else(|| DriverError::new("harness", "failover", "needs a fixed producer_rate"))?;
    eprintln!("== {label}: creating {topic} with {partitions} partition(s)");
    driver.create_topic(&topic, partitions).await?;
    let all = deployment.node_ids();
    let created = Instant::now();
    loop {
        let leaders = driver.leaders(&topic, partitions, &all).await?;
        if leaders.iter().all(Option::is_some) {
            break;
        }
        if created.elapsed() >= LEADERS_TIMEOUT {
            return Err(DriverError::new(
                "harness",
                "failover",
                format!(
                    "partitions of {topic} still without a leader after {} s",
                    LEADERS_TIMEOUT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let producers_n = workload.producers_per_topic.max(1);
    let mut producers = Vec::new();
    for _ in 0..producers_n {
        producers.push(driver.create_producer(&topic, partitions).await?);
    }
    let total = workload.warmup + workload.duration;
    let buckets = (total.as_millis() / BUCKET.as_millis()) as usize + 1;
    let shared = Arc::new(Shared {
        kill_at: OnceLock::new(),
        first_ack: Mutex::new(vec![None; partitions as usize]),
        buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let start = Instant::now();
    let start_epoch_ns = epoch_ns();
    let mut tasks = JoinSet::new();
    for (i, producer) in producers.into_iter().enumerate() {
        let schedule = Schedule::new(rate, i as u64, u64::from(producers_n));
        let pacer = Pacer::new(Some(schedule), start, total);
        let maker = PayloadMaker::new(
            workload.message_size as usize,
            workload.random_bytes_ratio,
            workload.key_distributor,
            0xFA11_0000 + i as u64,
        );
        tasks.spawn(produce(
            producer,
            pacer,
            maker,
            Sending {
                start,
                start_epoch_ns,
                index: i as u64,
                stride: u64::from(producers_n),
                partitions,
            },
            Arc::clone(&shared),
        ));
    }

    tokio::time::sleep_until(start + workload.warmup).await;
    let leaders = driver.leaders(&topic, partitions, &all).await?;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for id in leaders.iter().flatten() {
        *counts.entry(id.clone()).or_default() += 1;
    }
    // The busiest leader; on a tie the first id in node order.
    let victim = all
        .iter()
        .max_by_key(|id| {
            (
                counts.get(*id).copied().unwrap_or(0),
                std::cmp::Reverse(all.iter().position(|x| x == *id)),
            )
        })
        .cloned()
        .ok_or_else(|| DriverError::new("harness", "failover", "no server to kill"))?;
    let led: Vec<usize> = leaders
        .iter()
        .enumerate()
        .filter(|(_, l)| l.as_deref() == Some(victim.as_str()))
        .map(|(p, _)| p)
        .collect();
    let victim_name = deployment.name_of(&victim).unwrap_or(&victim).to_owned();
    let leaders_before: BTreeMap<String, u32> = all
        .iter()
        .map(|id| {
            (
                deployment.name_of(id).unwrap_or(id).to_owned(),
                counts.get(id).copied().unwrap_or(0),
            )
        })
        .collect();
    eprintln!(
        "== {label}: killing {victim_name} (SIGKILL), leader of {} of {partitions} partition(s)",
        led.len()
    );
    if deployment.kill(&victim).is_none() {
        return Err(DriverError::new(
            "harness",
            "failover",
            format!("{victim_name} was not running"),
        ));
    }
    let kill_at = Instant::now();
    let _ = shared.kill_at.set(kill_at);
    let survivors: Vec<String> = all.iter().filter(|id| **id != victim).cloned().collect();

    // Who leads, every poll, until every partition the victim led has a
    // new leader or sending ends.
    let mut elected: Vec<Option<Instant>> = vec![None; partitions as usize];
    let poll = driver.leaders_poll_is_cheap();
    let end = start + total;
    if poll {
        let mut next = kill_at;
        while led.iter().any(|&p| elected[p].is_none()) && Instant::now() < end {
            let asked =
                tokio::time::timeout(POLL_TIMEOUT, driver.leaders(&topic, partitions, &survivors))
                    .await;
            let seen = Instant::now();
            if let Ok(Ok(now)) = asked {
                for &p in &led {
                    let new = now[p].as_deref().is_some_and(|id| id != victim);
                    if new && elected[p].is_none() {
                        elected[p] = Some(seen);
                    }
                }
            }
            next += ELECTION_POLL;
            if next > Instant::now() {
                tokio::time::sleep_until(next).await;
            }
        }
    }
    while tasks.join_next().await.is_some() {}

    let ms_since_kill = |at: Instant| at.saturating_duration_since(kill_at).as_secs_f64() * 1e3;
    let first_ack = shared
        .first_ack
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut first_ack_ms: Vec<f64> = led
        .iter()
        .filter_map(|&p| first_ack[p].map(ms_since_kill))
        .collect();
    first_ack_ms.sort_by(f64::total_cmp);
    let unrecovered = (led.len() - first_ack_ms.len()) as u32;
    let mut others: Vec<f64> = (0..partitions as usize)
        .filter(|p| !led.contains(p))
        .filter_map(|p| first_ack[p].map(ms_since_kill))
        .collect();
    others.sort_by(f64::total_cmp);
    let mut elected_ms: Vec<f64> = led
        .iter()
        .filter_map(|&p| elected[p].map(ms_since_kill))
        .collect();
    elected_ms.sort_by(f64::total_cmp);
    let kill_at_s = kill_at.duration_since(start).as_secs_f64();
    let timeline = shared
        .buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let per_s = b.load(Ordering::Relaxed) as f64 / BUCKET.as_secs_f64();
            TimelinePoint {
                t: (i + 1) as f64 * BUCKET.as_secs_f64(),
                produce_msg_per_s: per_s,
                consume_msg_per_s: 0.0,
                backlog: 0,
            }
        })
        .collect();
    let (election_timeout, election_timeout_ms) = driver.election_timeout();
    let run = FailoverRun {
        driver: driver.name().to_owned(),
        mode: driver.mode(),
        durability: driver.durability(),
        replication_factor: driver.replication_factor(),
        partitions,
        rate,
        per_partition_interval_ms: f64::from(partitions) / rate * 1e3,
        killed: victim_name,
        killed_led_partitions: led.len() as u32,
        leaders_before,
        first_ack_p50_ms: quantile(&first_ack_ms, 0.5),
        first_ack_max_ms: first_ack_ms.last().copied().unwrap_or(0.0),
        first_ack_ms,
        unrecovered_partitions: unrecovered,
        elected_p50_ms: quantile(&elected_ms, 0.5),
        elected_max_ms: elected_ms.last().copied().unwrap_or(0.0),
        elected_ms,
        elected_poll_ms: if poll {
            ELECTION_POLL.as_secs_f64() * 1e3
        } else {
            0.0
        },
        others_first_ack_p50_ms: quantile(&others, 0.5),
        others_first_ack_max_ms: others.last().copied().unwrap_or(0.0),
        errors: shared.failed.load(Ordering::Acquire),
        first_error: shared
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        election_timeout,
        election_timeout_ms,
        timeline,
        kill_at_s,
        config: driver.config(),
    };
    eprintln!(
        "{label}: first ack on the new leader after the kill: p50 {:.0} ms, max {:.0} ms over {} partition(s) ({} without one)",
        run.first_ack_p50_ms,
        run.first_ack_max_ms,
        run.killed_led_partitions,
        run.unrecovered_partitions,
    );
    if poll {
        eprintln!(
            "{label}: new leader seen: p50 {:.0} ms, max {:.0} ms",
            run.elected_p50_ms, run.elected_max_ms
        );
    }
    Ok(run)
}

/// The nearest-rank quantile `q` of ascending `values` (0 when empty).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Where one producer's sends go.
#[derive(Debug, Clone, Copy)]
struct Sending {
    start: Instant,
    start_epoch_ns: u64,
    /// This producer's place among `stride` producers.
    index: u64,
    stride: u64,
    partitions: u32,
}

async fn produce(
    mut producer: Box<dyn BenchProducer>,
    mut pacer: Pacer,
    mut maker: PayloadMaker,
    sending: Sending,
    shared: Arc<Shared>,
) {
    let (tx, rx) = mpsc::channel::<(u32, Instant, AckFuture)>(ACKS_PENDING_MAX);
    let collector = tokio::spawn(collect(rx, Arc::clone(&shared), sending.start));
    let mut n = 0u64;
    while let Some(intended) = pacer.next_due().await {
        let global = n * sending.stride + sending.index;
        n += 1;
        let partition = (global % u64::from(sending.partitions)) as u32;
        let at = sending.start_epoch_ns + intended.duration_since(sending.start).as_nanos() as u64;
        let value = maker.value(at);
        match producer.send_to(partition, value).await {
            Ok(ack) => {
                if tx.send((partition, intended, ack)).await.is_err() {
                    break;
                }
            }
            Err(e) => shared.fail(e),
        }
    }
    drop(tx);
    if tokio::time::timeout(ACK_DRAIN_TIMEOUT, collector)
        .await
        .is_err()
    {
        shared.fail(format!(
            "acknowledgements still outstanding {} s after sending ended",
            ACK_DRAIN_TIMEOUT.as_secs()
        ));
    }
    let _ = tokio::time::timeout(ACK_DRAIN_TIMEOUT, producer.close()).await;
}

/// Awaits acknowledgements as they resolve and records each one.
async fn collect(
    mut rx: mpsc::Receiver<(u32, Instant, AckFuture)>,
    shared: Arc<Shared>,
    start: Instant,
) {
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(done) = pending.next(), if !pending.is_empty() => record(&shared, done, start),
            next = rx.recv(), if open => match next {
                Some((partition, intended, ack)) => pending.push(acked(partition, intended, ack)),
                None => open = false,
            },
            else => break,
        }
    }
}

/// One resolved send: its partition, intended send time, when it resolved
/// and how.
type Done = (u32, Instant, Instant, Result<(), DriverError>);

async fn acked(partition: u32, intended: Instant, ack: AckFuture) -> Done {
    let result = ack.await;
    (partition, intended, Instant::now(), result)
}

fn record(shared: &Shared, (partition, intended, at, result): Done, start: Instant) {
    if let Err(e) = result {
        shared.fail(e);
        return;
    }
    shared.acked.fetch_add(1, Ordering::Relaxed);
    let bucket = (at.saturating_duration_since(start).as_millis() / BUCKET.as_millis()) as usize;
    if let Some(b) = shared.buckets.get(bucket) {
        b.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(&kill_at) = shared.kill_at.get() {
        if intended >= kill_at {
            let mut first = shared.first_ack.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = first.get_mut(partition as usize) {
                if slot.is_none_or(|t| at < t) {
                    *slot = Some(at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[7.0], 0.5), 7.0);
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
    }
}
