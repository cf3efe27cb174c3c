//! The rate limiter: when each send is due.
//!
//! A fixed-rate run is open loop. `k` producers share a total rate `r`:
//! the sends of the whole run are numbered 0, 1, 2, ... and send `s` is due
//! at `start + s / r`; producer `i` makes the sends `i, i + k, i + 2k, ...`.
//! A producer that falls behind (the broker stalled it, or its queue was
//! full) does not skip or re-space the sends it owes: it makes them at once,
//! and each one's latency is still measured from the time it was due. That
//! is what keeps the harness free of coordinated omission; the lag itself is
//! reported as the publish delay (actual minus intended send time).
//!
//! [`Schedule`] is the pure arithmetic; [`Pacer`] waits on tokio's clock, so
//! tests can drive it with `tokio::time::pause()`. tokio's timer has a
//! resolution of 1 ms, so a send usually leaves up to about a millisecond
//! after it was due. That lateness is the harness's, it shows in the
//! publish delay, and it is in the latency of every driver alike: the
//! harness does not spin to hide it, since a spinning producer would take
//! a core from the server under test.

use std::time::Duration;

use tokio::time::Instant;

/// The due times of one producer's sends, as offsets from the start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Sends per second over all producers.
    total_rate: f64,
    /// This producer's position among them.
    index: u64,
    /// Number of producers sharing `total_rate`.
    stride: u64,
}

impl Schedule {
    /// Producer `index` of `stride` sharing `total_rate` sends per second.
    ///
    /// # Panics
    /// If the rate is not a positive finite number or `index >= stride`
    /// (callers validate both).
    pub fn new(total_rate: f64, index: u64, stride: u64) -> Self {
        assert!(
            total_rate.is_finite() && total_rate > 0.0,
            "rate {total_rate} must be positive"
        );
        assert!(index < stride, "producer {index} of {stride}");
        Self {
            total_rate,
            index,
            stride,
        }
    }

    /// When this producer's `n`-th send (from 0) is due, after the start.
    pub fn due_offset(&self, n: u64) -> Duration {
        let seq = n.saturating_mul(self.stride).saturating_add(self.index);
        Duration::from_secs_f64(seq as f64 / self.total_rate)
    }

    /// How many of this producer's sends are due strictly before `elapsed`.
    pub fn sends_before(&self, elapsed: Duration) -> u64 {
        // Estimate from the rate, then correct for floating-point rounding
        // so the answer agrees exactly with `due_offset`.
        let global = (elapsed.as_secs_f64() * self.total_rate).ceil() as u64;
        let mut n = global.saturating_sub(self.index).div_ceil(self.stride);
        // Rounding moves the estimate by at most a send or two; the bound
        // only guards against a bug.
        for _ in 0..16 {
            if n > 0 && self.due_offset(n - 1) >= elapsed {
                n -= 1;
            } else if self.due_offset(n) < elapsed {
                n += 1;
            } else {
                return n;
            }
        }
        n
    }
}

/// Waits for each send of one producer in turn.
#[derive(Debug)]
pub struct Pacer {
    /// `None`: closed loop, each send is due when the previous one left.
    schedule: Option<Schedule>,
    start: Instant,
    /// No send is due at or after `start + end`.
    end: Duration,
    next: u64,
}

impl Pacer {
    /// A pacer from `start` until `start + end`, on `schedule` (open loop)
    /// or as fast as the caller goes (`None`).
    pub fn new(schedule: Option<Schedule>, start: Instant, end: Duration) -> Self {
        Self {
            schedule,
            start,
            end,
            next: 0,
        }
    }

    /// Sends handed out so far.
    pub fn sent(&self) -> u64 {
        self.next
    }

    /// Waits until the next send is due and returns the time it was due
    /// (in the past when the caller is behind), or `None` once the next
    /// send would fall at or after the end.
    pub async fn next_due(&mut self) -> Option<Instant> {
        let due = match self.schedule {
            Some(schedule) => {
                let offset = schedule.due_offset(self.next);
                if offset >= self.end {
                    return None;
                }
                let due = self.start + offset;
                tokio::time::sleep_until(due).await;
                due
            }
            None => {
                let now = Instant::now();
                if now >= self.start + self.end {
                    return None;
                }
                now
            }
        };
        self.next += 1;
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_interleave_the_global_schedule() {
        // 3 producers at 1,000 msg/s: every millisecond one of them sends.
        let producers: Vec<_> = (0..3).map(|i| Schedule::new(1000.0, i, 3)).collect();
        let mut all: Vec<Duration> = producers
            .iter()
            .flat_map(|p| (0..100).map(|n| p.due_offset(n)))
            .collect();
        all.sort();
        for (s, due) in all.iter().enumerate() {
            assert_eq!(due.as_micros(), s as u128 * 1000, "send {s}");
        }
    }

    #[test]
    fn sends_before_counts_exactly() {
        let p = Schedule::new(1000.0, 1, 4);
        // Producer 1 of 4 sends at 1 ms, 5 ms, 9 ms, ...
        assert_eq!(p.sends_before(Duration::from_millis(1)), 0);
        assert_eq!(p.sends_before(Duration::from_micros(1001)), 1);
        assert_eq!(p.sends_before(Duration::from_millis(5)), 1);
        assert_eq!(p.sends_before(Duration::from_micros(5001)), 2);
        // Over a long run the count matches the rate share to within one.
        let one_hour = Duration::from_secs(3600);
        assert_eq!(p.sends_before(one_hour), 900_000);
        for n in [0u64, 1, 2, 1_000, 899_999] {
            let due = p.due_offset(n);
            assert_eq!(p.sends_before(due), n, "send {n} is not before itself");
        }
    }

    #[test]
    fn odd_rates_do_not_drift() {
        // 7 producers sharing 333.3 msg/s for a day: the last send is due
        // where the rate says, within a microsecond.
        let rate = 333.3;
        let p = Schedule::new(rate, 6, 7);
        let n = 4_000_000;
        let expected = (n * 7 + 6) as f64 / rate;
        let got = p.due_offset(n).as_secs_f64();
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn pacer_sends_at_the_intended_times() {
        let start = Instant::now();
        let mut pacer = Pacer::new(
            Some(Schedule::new(100.0, 0, 1)),
            start,
            Duration::from_secs(1),
        );
        let mut n = 0u64;
        while let Some(due) = pacer.next_due().await {
            assert_eq!(due, start + Duration::from_millis(10 * n));
            // With a paused clock, time only moves by the pacer's sleeps:
            // each send leaves exactly when it is due.
            assert_eq!(Instant::now(), due);
            n += 1;
        }
        assert_eq!(n, 100);
        assert_eq!(pacer.sent(), 100);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_stalled_producer_catches_up_without_omitting_sends() {
        let start = Instant::now();
        let mut pacer = Pacer::new(
            Some(Schedule::new(1000.0, 0, 1)),
            start,
            Duration::from_secs(2),
        );
        assert_eq!(pacer.next_due().await, Some(start));
        // The producer is stuck for half a second (a broker stall).
        tokio::time::advance(Duration::from_millis(500)).await;
        let resumed = Instant::now();
        // The 499 sends it owes come out at once, each with its own
        // intended time, not the time it resumed.
        for n in 1..500u64 {
            let due = pacer.next_due().await.unwrap();
            assert_eq!(due, start + Duration::from_millis(n));
            assert_eq!(Instant::now(), resumed, "no waiting while behind");
        }
        // Then it is back on schedule.
        let due = pacer.next_due().await.unwrap();
        assert_eq!(due, start + Duration::from_millis(500));
        let due = pacer.next_due().await.unwrap();
        assert_eq!(due, start + Duration::from_millis(501));
        assert_eq!(Instant::now(), due);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn closed_loop_stops_at_the_end() {
        let start = Instant::now();
        let mut pacer = Pacer::new(None, start, Duration::from_millis(10));
        let mut sent = 0;
        while pacer.next_due().await.is_some() {
            sent += 1;
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(sent, 10);
    }
}
