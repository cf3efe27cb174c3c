//! How long a link waits before dialing again, without I/O or a clock:
//! [`Backoff`] returns delays, the link sleeps them.
//!
//! The delay doubles with each failure from `min` up to `max`, and is
//! jittered by a generator seeded by the caller, so runs replay and the
//! links of many shards that lost a peer at the same moment do not dial it
//! again in lockstep.

use std::time::Duration;

/// Failures after which the delay no longer grows: 2^31 times `min` is
/// beyond any `max` worth having.
const DOUBLINGS_MAX: u32 = 31;

/// Exponential backoff with jitter.
///
/// The `n`th delay since the last [`reset`](Self::reset) (from 0) is drawn
/// uniformly from `(base / 2, base]` where `base = min(min * 2^n, max)`:
/// always within `(min / 2, max]`, never zero.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    rng: SplitMix64,
}

impl Backoff {
    /// A backoff from `min` to `max` (raised to `min` if below it; `min`
    /// is at least 1 ms), jittered by a generator seeded with `seed`.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            min,
            max: max.max(min),
            failures: 0,
            rng: SplitMix64(seed),
        }
    }

    /// The delay to wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .min
            .checked_mul(1 << self.failures.min(DOUBLINGS_MAX))
            .map_or(self.max, |base| base.min(self.max));
        self.failures = self.failures.saturating_add(1);
        // Take off up to (not quite) half the base, in nanoseconds.
        let half_ns = u64::try_from(base.as_nanos() / 2).unwrap_or(u64::MAX);
        let jitter_ns = if half_ns == 0 {
            0
        } else {
            self.rng.next() % half_ns
        };
        base - Duration::from_nanos(jitter_ns)
    }

    /// Back to the first delay: the last dial succeeded.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Steele, Lea and Flood's SplitMix64: tiny, fast, good enough for jitter,
/// and a good mixer for deriving one seed from another.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_within_their_jitter_band_up_to_max() {
        let mut backoff = Backoff::new(50 * MS, 2000 * MS, 7);
        let bases = [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (n, base) in bases.into_iter().enumerate() {
            let base = base * MS;
            let delay = backoff.next_delay();
            assert!(
                delay > base / 2 && delay <= base,
                "delay {n}: {delay:?} outside ({:?}, {base:?}]",
                base / 2
            );
        }
        assert_eq!(backoff.failures(), bases.len() as u32);
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(10 * MS, 1000 * MS, 1);
        for _ in 0..20 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        assert!(backoff.next_delay() <= 10 * MS);
    }

    #[test]
    fn same_seed_same_delays_other_seed_other_delays() {
        let delays = |seed| {
            let mut backoff = Backoff::new(50 * MS, 2000 * MS, seed);
            (0..16).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(42), delays(42));
        assert_ne!(delays(42), delays(43));
    }

    #[test]
    fn jitter_spreads_delays() {
        // Many links that failed together must not all wait the same time.
        let firsts: std::collections::BTreeSet<_> = (0..64)
            .map(|seed| Backoff::new(50 * MS, 2000 * MS, seed).next_delay())
            .collect();
        assert!(firsts.len() > 32, "only {} distinct delays", firsts.len());
    }

    #[test]
    fn many_failures_neither_overflow_nor_pass_max() {
        let mut backoff = Backoff::new(Duration::from_secs(3600), Duration::MAX, 3);
        for _ in 0..100 {
            assert!(backoff.next_delay() > Duration::from_secs(1800));
        }
        let mut backoff = Backoff::new(MS, 5 * MS, 3);
        for _ in 0..10_000 {
            let delay = backoff.next_delay();
            assert!(delay > MS / 2 && delay <= 5 * MS);
        }
    }

    #[test]
    fn bounds_are_normalized() {
        // max below min counts as min; a zero min as 1 ms, so a delay is
        // never zero.
        let mut backoff = Backoff::new(100 * MS, 10 * MS, 0);
        for _ in 0..5 {
            let delay = backoff.next_delay();
            assert!(delay > 50 * MS && delay <= 100 * MS);
        }
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO, 0);
        assert!(backoff.next_delay() > Duration::ZERO);
    }
}
