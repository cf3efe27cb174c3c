//! The max-rate search: the highest rate a driver sustains.
//!
//! A workload with `producer_rate = 0` asks for it. Short fixed-rate
//! trials run first at `start_rate`, doubling while the driver keeps up;
//! after the first trial it cannot sustain, the search bisects between the
//! best sustained and the lowest failed rate until they are within
//! `tolerance` of each other. If even `start_rate` fails, the rate halves
//! until a trial passes. The number of trials is bounded by `max_trials`.
//!
//! [`RateSearch`] is sans-IO: it proposes rates and is told the outcome of
//! each trial. [`search_max_rate`] drives it with any trial function, which
//! is how the runner uses it and how the tests drive it with a fake.

use std::future::Future;
use std::time::Duration;

use crate::report::model::RateTrial;

/// Lowest rate the search tries, in msg/s; below it the driver is broken
/// rather than slow.
pub const RATE_MIN: f64 = 1.0;

/// How the search proceeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchConfig {
    /// First trial's rate, msg/s.
    pub start_rate: f64,
    /// Length of the measured part of each trial.
    pub trial: Duration,
    /// Most trials in one search.
    pub max_trials: u32,
    /// The search stops once `(failed - sustained) / failed` is at most
    /// this, and a trial is sustained if it achieved at least
    /// `(1 - tolerance)` of its target.
    pub tolerance: f64,
    /// Highest rate tried; a driver sustaining it is reported at it.
    pub max_rate: f64,
}

impl SearchConfig {
    /// Whether a trial that achieved `achieved` msg/s at `target` with
    /// `errors` failed sends and a final backlog of `backlog` messages kept
    /// up: within tolerance of the target, no errors, and consumers no more
    /// than one second of traffic behind (when there are consumers).
    pub fn is_sustained(&self, target: f64, achieved: f64, errors: u64, backlog: u64) -> bool {
        achieved >= target * (1.0 - self.tolerance)
            && errors == 0
            && (backlog as f64) <= target.max(1_000.0)
    }
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            start_rate: 5_000.0,
            trial: Duration::from_secs(5),
            max_trials: 14,
            tolerance: 0.05,
            max_rate: 10_000_000.0,
        }
    }
}

/// The state of one search.
#[derive(Debug, Clone)]
pub struct RateSearch {
    config: SearchConfig,
    /// Highest sustained rate so far.
    sustained: Option<f64>,
    /// Lowest failed rate so far.
    failed: Option<f64>,
    trials: Vec<RateTrial>,
}

impl RateSearch {
    /// A search that has run no trial yet.
    pub fn new(config: SearchConfig) -> Self {
        Self {
            config,
            sustained: None,
            failed: None,
            trials: Vec::new(),
        }
    }

    /// The rate of the next trial, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        if self.trials.len() >= self.config.max_trials as usize {
            return None;
        }
        let cfg = &self.config;
        match (self.sustained, self.failed) {
            (None, None) => Some(cfg.start_rate.min(cfg.max_rate)),
            (Some(ok), None) => (ok < cfg.max_rate).then(|| (ok * 2.0).min(cfg.max_rate)),
            (None, Some(bad)) => {
                let next = bad / 2.0;
                (next >= RATE_MIN).then_some(next)
            }
            (Some(ok), Some(bad)) => {
                ((bad - ok) / bad > cfg.tolerance).then(|| ok + (bad - ok) / 2.0)
            }
        }
    }

    /// Records the outcome of the trial at `trial.target_rate`.
    pub fn record(&mut self, trial: RateTrial) {
        let rate = trial.target_rate;
        if trial.sustained {
            self.sustained = Some(self.sustained.map_or(rate, |ok| ok.max(rate)));
        } else {
            self.failed = Some(self.failed.map_or(rate, |bad| bad.min(rate)));
        }
        self.trials.push(trial);
    }

    /// The highest sustained rate, if any trial was sustained.
    pub fn result(&self) -> Option<f64> {
        self.sustained
    }

    /// The trials so far, in the order they ran.
    pub fn trials(&self) -> &[RateTrial] {
        &self.trials
    }

    /// The configuration.
    pub fn config(&self) -> &SearchConfig {
        &self.config
    }
}

/// Runs a whole search with `trial`, which runs one trial at the given
/// rate. Returns the search (its result and trials) or the first error.
pub async fn search_max_rate<F, Fut, E>(config: SearchConfig, mut trial: F) -> Result<RateSearch, E>
where
    F: FnMut(f64) -> Fut,
    Fut: Future<Output = Result<RateTrial, E>>,
{
    let mut search = RateSearch::new(config);
    while let Some(rate) = search.next_rate() {
        let outcome = trial(rate).await?;
        search.record(RateTrial {
            target_rate: rate,
            ..outcome
        });
    }
    Ok(search)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver that sustains exactly `capacity` msg/s and achieves it
    /// when pushed harder.
    fn fake(capacity: f64) -> impl FnMut(f64) -> std::future::Ready<Result<RateTrial, ()>> {
        move |rate| {
            std::future::ready(Ok(RateTrial {
                target_rate: rate,
                achieved_rate: rate.min(capacity),
                sustained: rate <= capacity,
            }))
        }
    }

    fn run(config: SearchConfig, capacity: f64) -> RateSearch {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(search_max_rate(config, fake(capacity)))
            .unwrap()
    }

    #[test]
    fn converges_to_the_capacity_within_tolerance() {
        let config = SearchConfig::default();
        for capacity in [1_234.0, 5_000.0, 7_777.0, 48_000.0, 250_001.0, 3_000_000.0] {
            let search = run(config, capacity);
            let found = search.result().expect("some rate sustained");
            assert!(found <= capacity, "{found} above capacity {capacity}");
            assert!(
                found >= capacity * (1.0 - config.tolerance),
                "{found} too far below {capacity} after {} trials",
                search.trials().len()
            );
            assert!(search.trials().len() <= config.max_trials as usize);
        }
    }

    #[test]
    fn trial_count_is_bounded() {
        let config = SearchConfig {
            max_trials: 5,
            ..SearchConfig::default()
        };
        let search = run(config, 9_999_999.0);
        assert_eq!(search.trials().len(), 5);
        // Doubling from 5,000: 5k, 10k, 20k, 40k, 80k all sustained.
        assert_eq!(search.result(), Some(80_000.0));
    }

    #[test]
    fn stops_at_the_max_rate() {
        let config = SearchConfig {
            start_rate: 1_000.0,
            max_rate: 6_000.0,
            ..SearchConfig::default()
        };
        let search = run(config, 1e12);
        assert_eq!(search.result(), Some(6_000.0));
        let rates: Vec<f64> = search.trials().iter().map(|t| t.target_rate).collect();
        assert_eq!(rates, [1_000.0, 2_000.0, 4_000.0, 6_000.0]);
    }

    #[test]
    fn a_dead_driver_ends_with_no_result() {
        let search = run(SearchConfig::default(), 0.0);
        assert_eq!(search.result(), None);
        assert!(search.trials().len() <= SearchConfig::default().max_trials as usize);
        assert!(search.trials().iter().all(|t| !t.sustained));
    }

    #[test]
    fn the_bisection_narrows_monotonically() {
        let search = run(SearchConfig::default(), 12_345.0);
        let rates: Vec<f64> = search.trials().iter().map(|t| t.target_rate).collect();
        assert_eq!(&rates[..3], [5_000.0, 10_000.0, 20_000.0]);
        // After the first failure every trial lies between the best
        // sustained and the lowest failed rate seen before it.
        let (mut ok, mut bad) = (10_000.0f64, 20_000.0f64);
        for t in &search.trials()[3..] {
            assert!(t.target_rate > ok && t.target_rate < bad, "{rates:?}");
            if t.sustained {
                ok = t.target_rate;
            } else {
                bad = t.target_rate;
            }
        }
    }

    #[test]
    fn sustained_needs_rate_no_errors_and_a_small_backlog() {
        let s = SearchConfig::default();
        assert!(s.is_sustained(10_000.0, 9_600.0, 0, 100));
        assert!(!s.is_sustained(10_000.0, 9_400.0, 0, 100));
        assert!(!s.is_sustained(10_000.0, 10_000.0, 1, 100));
        assert!(!s.is_sustained(10_000.0, 10_000.0, 0, 20_000));
    }
}
