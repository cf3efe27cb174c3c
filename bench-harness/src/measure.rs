//! One measured run of a workload against one driver.
//!
//! The run creates fresh topics, starts the consumers (reading from the
//! beginning), then the producers, all on one clock: `start` and the wall
//! time at `start`. The first `warmup` is not measured; the next `duration`
//! is. Then producers stop, their outstanding acknowledgements are awaited
//! (bounded), consumers drain what was acknowledged (bounded), and the
//! topics are deleted.
//!
//! What counts where:
//! - publish latency and publish delay: sends *intended* inside the
//!   measured period (however late they were acknowledged);
//! - end-to-end latency: records whose carried timestamp (their intended
//!   send time) falls inside the measured period;
//! - throughput: acknowledgements and consumptions *happening* inside the
//!   measured period, over its length;
//! - backlog: records sent and not yet consumed, sampled every second;
//! - latency over time: publish latency per bucket of intended send time
//!   (and end-to-end latency per bucket of carried send time) within the
//!   measured period, beside what the processes did each second of it
//!   ([`crate::activity`]).
//!
//! Each producer records into its own histograms (whole-run and per
//! bucket), merged at the end; the send path takes no lock and records no
//! per-record allocation beyond the record itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::activity;
use crate::driver::{AckFuture, BenchConsumer, BenchProducer, Driver, DriverError};
use crate::payload::{epoch_ns, read_timestamp, PayloadMaker};
use crate::report::model::{LatencyBucket, OverTime, ProcessCpu, Throughput, TimelinePoint};
use crate::schedule::{Pacer, Schedule};
use crate::stats::{self, new_histogram, LatencyBuckets, MaxBuckets, ProducerHistograms};
use crate::workload::Workload;

/// Acknowledgements one producer may have outstanding in the harness; the
/// producer waits (and falls behind schedule, which the publish delay
/// shows) beyond it.
pub const PRODUCER_ACKS_PENDING_MAX: usize = 65_536;
/// How long producers' outstanding acknowledgements are awaited after the
/// measured period.
pub const ACK_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long consumers may take to read what was acknowledged after the
/// producers finished.
pub const CONSUME_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait of one consumer poll.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Consecutive failed polls after which a consumer gives up.
const POLL_ERRORS_MAX: u32 = 50;
/// Interval of the timeline points.
const TIMELINE_INTERVAL: Duration = Duration::from_secs(1);
/// Interval of the progress lines on stderr.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// What one run is asked to do.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Target msg/s over all producers; `None` sends as fast as the
    /// clients accept (closed loop).
    pub rate: Option<f64>,
    /// Sent but not measured, before the measured period.
    pub warmup: Duration,
    /// The measured period.
    pub duration: Duration,
    /// Topic names are `<topic_prefix>-<i>`.
    pub topic_prefix: String,
    /// Server processes to measure the CPU of: (name, pid).
    pub servers: Vec<(String, u32)>,
    /// Ports of the servers' Prometheus endpoints on 127.0.0.1, by name
    /// (servers without one are not listed).
    pub server_metrics: Vec<(String, u16)>,
    /// Each producer sends its next record once the previous one is
    /// acknowledged (one record in flight per producer).
    pub sequential: bool,
    /// Prefix of the progress lines, e.g. "shardmq acks=all #1".
    pub label: String,
}

/// The measurements of one run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Acknowledged and consumed amounts over the measured period.
    pub throughput: Throughput,
    /// Intended send time to acknowledgement, µs, all producers merged.
    pub publish: Histogram<u64>,
    /// Actual minus intended send time, µs, all producers merged.
    pub publish_delay: Histogram<u64>,
    /// Carried send time to consumption, µs, all consumers merged.
    pub end_to_end: Histogram<u64>,
    /// Most records sent and not yet consumed at a sample (0 without
    /// consumers).
    pub backlog_max: u64,
    /// Records sent and not yet consumed when the measured period ended.
    pub backlog_end: u64,
    /// One point per second of the measured period.
    pub timeline: Vec<TimelinePoint>,
    /// Latency per bucket and the processes' activity per second.
    pub over_time: OverTime,
    /// CPU of the servers (when their pids are known; with several, their
    /// sum first) and of the harness.
    pub processes: Vec<ProcessCpu>,
    /// Sends or polls that failed.
    pub errors: u64,
    /// The first of those errors.
    pub first_error: Option<String>,
}

/// A run that could not be set up or whose clients failed outright.
pub type RunError = DriverError;

/// Counters shared by a run's tasks.
#[derive(Debug, Default)]
struct Shared {
    sent: AtomicU64,
    acked: AtomicU64,
    acked_measured: AtomicU64,
    consumed: AtomicU64,
    consumed_measured: AtomicU64,
    consumed_bytes_measured: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Set when consumers should stop.
    stop_consumers: AtomicBool,
}

impl Shared {
    fn fail(&self, error: impl std::fmt::Display) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(error.to_string());
        }
    }

    fn backlog(&self, consumers: bool) -> u64 {
        if !consumers {
            return 0;
        }
        self.sent
            .load(Ordering::Relaxed)
            .saturating_sub(self.consumed.load(Ordering::Relaxed))
    }
}

/// The run's clock: one start for every task.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    start_epoch_ns: u64,
    measure_from: Instant,
    measure_to: Instant,
    /// Width of the latency-over-time buckets.
    bucket_width: Duration,
}

impl Clock {
    fn epoch_ns(&self, at: Instant) -> u64 {
        self.start_epoch_ns + at.saturating_duration_since(self.start).as_nanos() as u64
    }

    fn measured(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.measure_to
    }

    /// Time into the measured period of `at` (0 before it).
    fn offset(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.measure_from)
    }

    /// Empty latency buckets of the measured period.
    fn latency_buckets(&self) -> LatencyBuckets {
        LatencyBuckets::new(self.bucket_width, self.measure_to - self.measure_from)
    }
}

/// Runs `workload` once against `driver`.
pub async fn run_once(
    driver: &dyn Driver,
    workload: &Workload,
    spec: &RunSpec,
) -> Result<RunOutcome, RunError> {
    let topics: Vec<String> = (0..workload.topics)
        .map(|i| format!("{}-{i}", spec.topic_prefix))
        .collect();
    for topic in &topics {
        driver
            .create_topic(topic, workload.partitions_per_topic)
            .await?;
    }
    let outcome = run_on_topics(driver, workload, spec, &topics).await;
    for topic in &topics {
        if let Err(e) = driver.delete_topic(topic).await {
            eprintln!("{}: {e} (ignored)", spec.label);
        }
    }
    outcome
}

async fn run_on_topics(
    driver: &dyn Driver,
    workload: &Workload,
    spec: &RunSpec,
    topics: &[String],
) -> Result<RunOutcome, RunError> {
    let partitions = workload.partitions_per_topic;
    let has_consumers = workload.consumers_per_topic > 0;
    let mut consumers: Vec<Box<dyn BenchConsumer>> = Vec::new();
    for topic in topics {
        for i in 0..workload.consumers_per_topic {
            consumers.push(
                driver
                    .create_consumer(topic, partitions, i, workload.consumers_per_topic)
                    .await?,
            );
        }
    }
    let mut producers: Vec<Box<dyn BenchProducer>> = Vec::new();
    for topic in topics {
        for _ in 0..workload.producers_per_topic {
            producers.push(driver.create_producer(topic, partitions).await?);
        }
    }

    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let clock = Clock {
        start,
        start_epoch_ns: epoch_ns(),
        measure_from: start + spec.warmup,
        measure_to: start + spec.warmup + spec.duration,
        bucket_width: stats::latency_bucket_width(spec.duration),
    };

    let mut consumer_tasks = JoinSet::new();
    for consumer in consumers {
        consumer_tasks.spawn(consume(consumer, clock, Arc::clone(&shared)));
    }
    let monitor = tokio::spawn(monitor(
        clock,
        Arc::clone(&shared),
        spec.clone(),
        has_consumers,
        u64::from(workload.message_size),
    ));
    let activity = tokio::spawn(activity::sample(
        activity::targets(&spec.servers, &spec.server_metrics),
        clock.measure_from,
        clock.measure_to,
    ));

    let stride = producers.len() as u64;
    let mut producer_tasks = JoinSet::new();
    for (i, producer) in producers.into_iter().enumerate() {
        let schedule = spec.rate.map(|rate| Schedule::new(rate, i as u64, stride));
        let pacer = Pacer::new(schedule, start, spec.warmup + spec.duration);
        let maker = PayloadMaker::new(
            workload.message_size as usize,
            workload.random_bytes_ratio,
            workload.key_distributor,
            0x5EED_0000 + i as u64,
        );
        producer_tasks.spawn(produce(
            producer,
            pacer,
            maker,
            clock,
            Arc::clone(&shared),
            spec.sequential,
        ));
    }
    let mut histograms = Vec::new();
    while let Some(joined) = producer_tasks.join_next().await {
        match joined {
            Ok(h) => histograms.push(h),
            Err(e) => shared.fail(format!("producer task: {e}")),
        }
    }

    // Let consumers read what was acknowledged, within a bound.
    if has_consumers {
        let deadline = Instant::now() + CONSUME_DRAIN_TIMEOUT;
        loop {
            let consumed = shared.consumed.load(Ordering::Acquire);
            if consumed >= shared.acked.load(Ordering::Acquire) {
                break;
            }
            if Instant::now() >= deadline || consumer_tasks.is_empty() {
                eprintln!(
                    "{}: consumers stopped {} records short of those acknowledged",
                    spec.label,
                    shared
                        .acked
                        .load(Ordering::Acquire)
                        .saturating_sub(consumed)
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    shared.stop_consumers.store(true, Ordering::Release);
    let mut e2e_parts = Vec::new();
    while let Some(joined) = consumer_tasks.join_next().await {
        match joined {
            Ok(h) => e2e_parts.push(h),
            Err(e) => shared.fail(format!("consumer task: {e}")),
        }
    }
    let monitored = match monitor.await {
        Ok(m) => m,
        Err(e) => return Err(DriverError::new("harness", "monitor", e)),
    };
    let seconds = match activity.await {
        Ok(seconds) => seconds,
        Err(e) => return Err(DriverError::new("harness", "activity sampler", e)),
    };

    let publish = stats::merge(histograms.iter().map(|h| &h.publish));
    let publish_delay = stats::merge(histograms.iter().map(|h| &h.delay));
    let end_to_end = stats::merge(e2e_parts.iter().map(|(h, _)| h));
    let mut publish_buckets = clock.latency_buckets();
    let mut delay_max = MaxBuckets::new(clock.bucket_width, spec.duration);
    for h in &histograms {
        publish_buckets.add(&h.publish_buckets);
        delay_max.add(&h.delay_max);
    }
    let mut e2e_buckets = clock.latency_buckets();
    for (_, buckets) in &e2e_parts {
        e2e_buckets.add(buckets);
    }
    let over_time = OverTime {
        bucket_ms: clock.bucket_width.as_millis() as u64,
        publish: latency_buckets(&publish_buckets, Some(&delay_max)),
        end_to_end: latency_buckets(&e2e_buckets, None),
        slow_us: activity::SLOW_US,
        seconds,
    };

    let secs = spec.duration.as_secs_f64();
    let size = u64::from(workload.message_size);
    let produced_messages = shared.acked_measured.load(Ordering::Acquire);
    let produced_bytes = produced_messages * size;
    let consumed_messages = shared.consumed_measured.load(Ordering::Acquire);
    let consumed_bytes = shared.consumed_bytes_measured.load(Ordering::Acquire);
    let throughput = Throughput {
        seconds: secs,
        produced_messages,
        produced_bytes,
        consumed_messages,
        consumed_bytes,
        produce_msg_per_s: produced_messages as f64 / secs,
        produce_mb_per_s: produced_bytes as f64 / secs / 1e6,
        consume_msg_per_s: consumed_messages as f64 / secs,
        consume_mb_per_s: consumed_bytes as f64 / secs / 1e6,
    };
    let per_gb = |cpu: f64| {
        if produced_bytes == 0 {
            0.0
        } else {
            cpu / (produced_bytes as f64 / 1e9)
        }
    };
    let processes = monitored
        .cpu
        .into_iter()
        .map(|(name, cpu_seconds)| ProcessCpu {
            name,
            cpu_seconds,
            cpu_seconds_per_gb: per_gb(cpu_seconds),
        })
        .collect();
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(RunOutcome {
        throughput,
        publish,
        publish_delay,
        end_to_end,
        backlog_max: monitored.backlog_max,
        backlog_end: monitored.backlog_end,
        timeline: monitored.timeline,
        over_time,
        processes,
        errors: shared.failed.load(Ordering::Acquire),
        first_error,
    })
}

/// One producer: sends on its schedule, hands each acknowledgement future
/// to a collector task that times it (or, `sequential`, awaits it before
/// the next send), and returns its histograms.
async fn produce(
    mut producer: Box<dyn BenchProducer>,
    mut pacer: Pacer,
    mut maker: PayloadMaker,
    clock: Clock,
    shared: Arc<Shared>,
    sequential: bool,
) -> ProducerHistograms {
    let (ack_tx, ack_rx) = mpsc::channel::<(Instant, AckFuture)>(PRODUCER_ACKS_PENDING_MAX);
    let collector = tokio::spawn(collect_acks(ack_rx, clock, Arc::clone(&shared)));
    let mut delay = new_histogram();
    let mut delay_max = MaxBuckets::new(clock.bucket_width, clock.measure_to - clock.measure_from);
    let mut own_publish = new_histogram();
    let mut own_buckets = clock.latency_buckets();
    while let Some(intended) = pacer.next_due().await {
        let key = maker.key();
        let value = maker.value(clock.epoch_ns(intended));
        let ack = match producer.send(key, value).await {
            Ok(ack) => ack,
            Err(e) => {
                shared.fail(e);
                continue;
            }
        };
        let sent_at = Instant::now();
        shared.sent.fetch_add(1, Ordering::Relaxed);
        if clock.measured(intended) {
            let us = sent_at.saturating_duration_since(intended).as_micros() as u64;
            delay.saturating_record(us);
            delay_max.record(clock.offset(intended), us);
        }
        if sequential {
            let outcome = match tokio::time::timeout(ACK_DRAIN_TIMEOUT, ack).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    shared.fail(format!(
                        "no acknowledgement within {} s",
                        ACK_DRAIN_TIMEOUT.as_secs()
                    ));
                    break;
                }
            };
            record_ack(
                &mut own_publish,
                &mut own_buckets,
                intended,
                outcome,
                clock,
                &shared,
            );
            continue;
        }
        if ack_tx.send((intended, ack)).await.is_err() {
            break;
        }
    }
    drop(ack_tx);
    let (mut publish, mut publish_buckets) =
        match tokio::time::timeout(ACK_DRAIN_TIMEOUT, collector).await {
            Ok(Ok(collected)) => collected,
            Ok(Err(e)) => {
                shared.fail(format!("ack collector: {e}"));
                (new_histogram(), clock.latency_buckets())
            }
            Err(_) => {
                shared.fail(format!(
                    "acknowledgements still outstanding {} s after the run",
                    ACK_DRAIN_TIMEOUT.as_secs()
                ));
                (new_histogram(), clock.latency_buckets())
            }
        };
    // Same bounds: adding cannot fail.
    let _ = publish.add(&own_publish);
    publish_buckets.add(&own_buckets);
    let _ = tokio::time::timeout(ACK_DRAIN_TIMEOUT, producer.close()).await;
    ProducerHistograms {
        publish,
        delay,
        publish_buckets,
        delay_max,
    }
}

/// Counts one acknowledgement (or failure) and records its latency from
/// the intended send time, whole-run and in the bucket of that time.
fn record_ack(
    publish: &mut Histogram<u64>,
    buckets: &mut LatencyBuckets,
    intended: Instant,
    outcome: Result<(), DriverError>,
    clock: Clock,
    shared: &Shared,
) {
    let acked_at = Instant::now();
    match outcome {
        Ok(()) => {
            shared.acked.fetch_add(1, Ordering::Relaxed);
            if clock.measured(acked_at) {
                shared.acked_measured.fetch_add(1, Ordering::Relaxed);
            }
            if clock.measured(intended) {
                let us = acked_at.saturating_duration_since(intended).as_micros() as u64;
                publish.saturating_record(us);
                buckets.record(clock.offset(intended), us);
            }
        }
        Err(e) => shared.fail(e),
    }
}

/// Awaits acknowledgements as they resolve and records their latency from
/// the intended send time.
async fn collect_acks(
    mut rx: mpsc::Receiver<(Instant, AckFuture)>,
    clock: Clock,
    shared: Arc<Shared>,
) -> (Histogram<u64>, LatencyBuckets) {
    let mut publish = new_histogram();
    let mut buckets = clock.latency_buckets();
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some((intended, result)) = pending.next(), if !pending.is_empty() => {
                record_ack(&mut publish, &mut buckets, intended, result, clock, &shared);
            }
            next = rx.recv(), if open => match next {
                Some((intended, ack)) => {
                    pending.push(async move { (intended, ack.await) });
                }
                None => open = false,
            },
            else => break,
        }
    }
    (publish, buckets)
}

/// One consumer: reads until told to stop; returns its end-to-end
/// histogram, whole-run and per bucket of carried send time.
async fn consume(
    mut consumer: Box<dyn BenchConsumer>,
    clock: Clock,
    shared: Arc<Shared>,
) -> (Histogram<u64>, LatencyBuckets) {
    let mut e2e = new_histogram();
    let mut e2e_buckets = clock.latency_buckets();
    let measure_from_ns = clock.epoch_ns(clock.measure_from);
    let measure_to_ns = clock.epoch_ns(clock.measure_to);
    let mut errors_in_a_row = 0u32;
    while !shared.stop_consumers.load(Ordering::Acquire) {
        let values = match consumer.poll(POLL_WAIT).await {
            Ok(values) => {
                errors_in_a_row = 0;
                values
            }
            Err(e) => {
                errors_in_a_row += 1;
                if errors_in_a_row >= POLL_ERRORS_MAX {
                    shared.fail(format!("consumer gave up: {e}"));
                    break;
                }
                tokio::time::sleep(POLL_WAIT).await;
                continue;
            }
        };
        if values.is_empty() {
            continue;
        }
        let now = Instant::now();
        let now_ns = epoch_ns();
        let mut bytes = 0u64;
        for value in &values {
            bytes += value.len() as u64;
            if let Some(ts) = read_timestamp(value) {
                if ts >= measure_from_ns && ts < measure_to_ns {
                    let us = now_ns.saturating_sub(ts) / 1_000;
                    e2e.saturating_record(us);
                    e2e_buckets.record(Duration::from_nanos(ts - measure_from_ns), us);
                }
            }
        }
        shared
            .consumed
            .fetch_add(values.len() as u64, Ordering::AcqRel);
        if clock.measured(now) {
            shared
                .consumed_measured
                .fetch_add(values.len() as u64, Ordering::Relaxed);
            shared
                .consumed_bytes_measured
                .fetch_add(bytes, Ordering::Relaxed);
        }
    }
    (e2e, e2e_buckets)
}

/// The non-empty buckets of `buckets` for the report, each with its
/// largest publish delay when `delay_max` is given.
fn latency_buckets(buckets: &LatencyBuckets, delay_max: Option<&MaxBuckets>) -> Vec<LatencyBucket> {
    buckets
        .summaries()
        .into_iter()
        .map(|b| LatencyBucket {
            t: b.start.as_secs_f64(),
            count: b.count,
            p50: b.p50,
            p99: b.p99,
            max: b.max,
            send_delay_max: delay_max.map_or(0, |d| d.at(b.start)),
        })
        .collect()
}

/// The name of the sum of `count` servers named like `first`
/// ("shardmq-broker 1" gives "shardmq-broker (sum of 3)").
pub fn sum_name(first: &str, count: usize) -> String {
    let base = first
        .rsplit_once(' ')
        .filter(|(_, n)| n.chars().all(|c| c.is_ascii_digit()))
        .map_or(first, |(base, _)| base);
    format!("{base} (sum of {count})")
}

/// What the monitor saw.
#[derive(Debug)]
struct Monitored {
    timeline: Vec<TimelinePoint>,
    backlog_max: u64,
    backlog_end: u64,
    /// (process name, CPU seconds over the measured period): the servers'
    /// sum first when there are several, each server, the harness.
    cpu: Vec<(String, f64)>,
}

/// Prints progress, samples the timeline and backlog, and measures CPU
/// over the measured period; ends with it.
async fn monitor(
    clock: Clock,
    shared: Arc<Shared>,
    spec: RunSpec,
    has_consumers: bool,
    message_size: u64,
) -> Monitored {
    let mut timeline = Vec::new();
    let mut backlog_max = 0u64;
    let mut next_progress = clock.start + PROGRESS_INTERVAL;
    let mut next_sample = clock.measure_from;
    let mut cpu_start: Option<(Vec<Option<f64>>, Option<f64>)> = None;
    let mut last = (0u64, 0u64, clock.start);
    let mut last_progress = (0u64, clock.start);
    let server_cpu = |servers: &[(String, u32)]| -> Vec<Option<f64>> {
        servers
            .iter()
            .map(|(_, pid)| stats::process_cpu_seconds(*pid))
            .collect()
    };
    loop {
        let wake = next_progress.min(next_sample).min(clock.measure_to);
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        if cpu_start.is_none() && now >= clock.measure_from {
            // The measured period begins: the baseline of every rate.
            cpu_start = Some((server_cpu(&spec.servers), stats::own_cpu_seconds()));
            last = (
                shared.acked.load(Ordering::Relaxed),
                shared.consumed.load(Ordering::Relaxed),
                now,
            );
        } else if cpu_start.is_some() && (now >= next_sample || now >= clock.measure_to) {
            let acked = shared.acked.load(Ordering::Relaxed);
            let consumed = shared.consumed.load(Ordering::Relaxed);
            let dt = now.duration_since(last.2).as_secs_f64().max(1e-9);
            let backlog = shared.backlog(has_consumers);
            backlog_max = backlog_max.max(backlog);
            timeline.push(TimelinePoint {
                t: now.duration_since(clock.measure_from).as_secs_f64(),
                produce_msg_per_s: (acked - last.0) as f64 / dt,
                consume_msg_per_s: (consumed - last.1) as f64 / dt,
                backlog,
            });
            last = (acked, consumed, now);
        }
        while next_sample <= now {
            next_sample += TIMELINE_INTERVAL;
        }
        if now >= next_progress {
            let acked = shared.acked.load(Ordering::Relaxed);
            let dt = now.duration_since(last_progress.1).as_secs_f64().max(1e-9);
            let phase = if now < clock.measure_from {
                "warm-up"
            } else {
                "measured"
            };
            let rate = (acked - last_progress.0) as f64 / dt;
            let mut line = format!(
                "[{} {:5.1} s {phase}] acked {acked} ({rate:.0} msg/s, {:.2} MB/s)",
                spec.label,
                now.duration_since(clock.start).as_secs_f64(),
                rate * message_size as f64 / 1e6,
            );
            if has_consumers {
                line += &format!(
                    ", consumed {}, backlog {}",
                    shared.consumed.load(Ordering::Relaxed),
                    shared.backlog(true)
                );
            }
            let failed = shared.failed.load(Ordering::Relaxed);
            if failed > 0 {
                line += &format!(", errors {failed}");
            }
            eprintln!("{line}");
            last_progress = (acked, now);
            while next_progress <= now {
                next_progress += PROGRESS_INTERVAL;
            }
        }
        if now >= clock.measure_to {
            break;
        }
    }
    let backlog_end = shared.backlog(has_consumers);
    backlog_max = backlog_max.max(backlog_end);
    let (server_start, own_start) = cpu_start.unwrap_or((Vec::new(), None));
    let server_end = server_cpu(&spec.servers);
    let mut servers = Vec::new();
    for (i, (name, _)) in spec.servers.iter().enumerate() {
        let before = server_start.get(i).copied().flatten();
        let after = server_end.get(i).copied().flatten();
        if let (Some(before), Some(after)) = (before, after) {
            servers.push((name.clone(), after - before));
        }
    }
    let mut cpu = Vec::new();
    if servers.len() > 1 {
        cpu.push((
            sum_name(&servers[0].0, servers.len()),
            servers.iter().map(|(_, s)| s).sum(),
        ));
    }
    cpu.extend(servers);
    if let (Some(before), Some(after)) = (own_start, stats::own_cpu_seconds()) {
        cpu.push(("shardmq-bench".to_owned(), after - before));
    }
    Monitored {
        timeline,
        backlog_max,
        backlog_end,
        cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_named_after_the_servers() {
        assert_eq!(sum_name("shardmq-broker 1", 3), "shardmq-broker (sum of 3)");
        assert_eq!(sum_name("nats-server 2", 3), "nats-server (sum of 3)");
        assert_eq!(sum_name("nats-server", 2), "nats-server (sum of 2)");
    }
}
