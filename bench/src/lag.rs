//! Replication lag over a run: how many records the destination still lacks, sampled while a
//! system replicates.
//!
//! The count comes from the check consumer (`check.rs`), the `read_committed` reader that also
//! decides when a run is done, so the lag curve ends exactly where the measured window ends and
//! counts only committed records (ours writes in transactions: end offsets would count open
//! transactions and commit markers). Sampling it is an atomic load every [`INTERVAL`]: no
//! request to any broker, nothing that competes with the system under test. What it cannot see
//! is what landed at the destination but is not read yet: one fetch (`fetch.wait.max.ms=50`)
//! while the checker keeps up, more if a system writes faster than the checker reads, the same
//! bias the measured window's end has.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How often the lag is sampled.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// Records the destination still lacks, over one system's run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LagSeries {
    /// Records the destination must hold at the end (the source records that pass the
    /// scenario's filter; all of them for a plain copy).
    pub expected: u64,
    /// Sampling interval, ms.
    pub interval_ms: u64,
    /// `[seconds since the system's processes started, records not yet at the destination]`,
    /// in time order; the last point is the last arrival (lag 0) when the run completed.
    pub points: Vec<(f64, u64)>,
}

impl LagSeries {
    /// An empty series for a destination that must end up holding `expected` records.
    pub fn new(expected: u64, interval: Duration) -> Self {
        Self {
            expected,
            interval_ms: interval.as_millis() as u64,
            points: Vec::new(),
        }
    }

    /// Records that `arrived` records were at the destination `t_s` seconds after the start.
    /// Returns the lag. A sample older than the previous one is dropped (time only moves on).
    pub fn push(&mut self, t_s: f64, arrived: u64) -> u64 {
        let lag = self.expected.saturating_sub(arrived);
        if self.points.last().is_none_or(|(t, _)| *t <= t_s) {
            // Milliseconds are plenty for a 250 ms sampler and keep the JSON short.
            self.points.push(((t_s * 1000.0).round() / 1000.0, lag));
        }
        lag
    }

    /// Ends the series at the last arrival, `last_s` seconds after the start: samples taken
    /// after it go, and the curve closes at zero exactly there.
    pub fn finish(&mut self, last_s: f64) {
        self.points.retain(|(t, _)| *t < last_s);
        self.push(last_s, self.expected);
    }

    /// When the lag first was at most `lag`, seconds after the start. (The peak says little
    /// here: the source is preloaded, so every run starts with everything missing.)
    pub fn reached_s(&self, lag: u64) -> Option<f64> {
        self.points.iter().find(|p| p.1 <= lag).map(|p| p.0)
    }

    /// When half the expected records were at the destination.
    pub fn half_s(&self) -> Option<f64> {
        self.reached_s(self.expected / 2)
    }

    /// When the destination first held every expected record.
    pub fn drained_s(&self) -> Option<f64> {
        self.reached_s(0)
    }

    /// When half and when all of the records had arrived, in words.
    pub fn summary(&self) -> String {
        match (self.half_s(), self.drained_s()) {
            (Some(h), Some(d)) => format!("half by {h:.1} s, all by {d:.1} s"),
            (Some(h), None) => format!("half by {h:.1} s, not all arrived"),
            (None, _) => "not half arrived".to_owned(),
        }
    }

    /// Time of the last point.
    pub fn end_s(&self) -> f64 {
        self.points.last().map_or(0.0, |(t, _)| *t)
    }
}

/// Samples a count of arrived records every interval on its own thread, until every expected
/// record arrived or [`Sampler::finish`] is called.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<LagSeries>>,
}

impl Sampler {
    /// Starts sampling `arrived` (records at the destination so far), times taken from
    /// `origin`.
    pub fn start(
        origin: Instant,
        expected: u64,
        interval: Duration,
        arrived: Arc<AtomicU64>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("er-bench-lag".into())
                .spawn(move || {
                    let mut series = LagSeries::new(expected, interval);
                    // Ticks on a fixed schedule, so a slow wake-up does not shift every later
                    // sample.
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let t = origin.elapsed().as_secs_f64();
                        if series.push(t, arrived.load(Ordering::Relaxed)) == 0 {
                            break;
                        }
                        next += interval;
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    series
                })
                .expect("spawning the lag sampler thread")
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the series.
    pub fn finish(mut self) -> LagSeries {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    /// A run that ends early (the check thread panicked) must not leave the thread ticking.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(f64, u64)]) -> LagSeries {
        let mut s = LagSeries::new(100, INTERVAL);
        for &(t, arrived) in points {
            s.push(t, arrived);
        }
        s
    }

    #[test]
    fn lag_is_what_the_destination_still_lacks() {
        let s = series(&[(0.0, 0), (0.25, 0), (0.5, 40), (0.75, 90), (1.0, 100)]);
        assert_eq!(
            s.points,
            vec![(0.0, 100), (0.25, 100), (0.5, 60), (0.75, 10), (1.0, 0)]
        );
        assert_eq!(s.half_s(), Some(0.75));
        assert_eq!(s.drained_s(), Some(1.0));
        assert_eq!(s.interval_ms, 250);
    }

    #[test]
    fn more_than_expected_is_no_lag_and_time_never_goes_back() {
        let mut s = series(&[(1.0, 10), (0.5, 50), (2.0, 150)]);
        assert_eq!(s.points, vec![(1.0, 90), (2.0, 0)]);
        s.push(1.5, 100);
        assert_eq!(s.points.len(), 2);
        let mut s = series(&[(0.0, 0), (2.0, 60)]);
        assert_eq!(s.summary(), "half by 2.0 s, not all arrived");
        s.finish(2.5);
        assert_eq!(s.summary(), "half by 2.0 s, all by 2.5 s");
    }

    #[test]
    fn finish_closes_at_the_last_arrival() {
        // The sampler saw zero only at 1.5 s; the last record was read at 1.234 s.
        let mut s = series(&[(0.0, 0), (0.5, 30), (1.0, 80), (1.5, 100)]);
        s.finish(1.2344);
        assert_eq!(s.points, vec![(0.0, 100), (0.5, 70), (1.0, 20), (1.234, 0)]);
        assert_eq!(s.drained_s(), Some(1.234));
        assert_eq!(s.end_s(), 1.234);
    }

    #[test]
    fn a_run_that_never_starts_has_no_drain_time() {
        let s = series(&[(0.0, 0), (0.25, 0)]);
        assert_eq!((s.half_s(), s.drained_s()), (None, None));
        assert_eq!(s.summary(), "not half arrived");
        assert_eq!(s.end_s(), 0.25);
        assert_eq!(LagSeries::default().drained_s(), None);
    }

    #[test]
    fn sampler_follows_the_counter_and_stops_when_all_arrived() {
        let arrived = Arc::new(AtomicU64::new(0));
        let origin = Instant::now();
        let sampler = Sampler::start(origin, 100, Duration::from_millis(5), arrived.clone());
        // Holds of 100 ms: many 5 ms ticks each, even on a loaded machine.
        std::thread::sleep(Duration::from_millis(100));
        arrived.store(60, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
        arrived.store(100, Ordering::Relaxed);
        // It stops by itself on reaching zero; finish only collects.
        std::thread::sleep(Duration::from_millis(100));
        let s = sampler.finish();
        let lags: Vec<u64> = s.points.iter().map(|p| p.1).collect();
        assert_eq!(lags.first(), Some(&100));
        assert!(lags.contains(&40), "{lags:?}");
        assert_eq!(lags.last(), Some(&0));
        assert_eq!(lags.iter().filter(|l| **l == 0).count(), 1, "{lags:?}");
        assert!(s.points.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn sampler_stops_when_told() {
        let arrived = Arc::new(AtomicU64::new(10));
        let sampler = Sampler::start(Instant::now(), 100, Duration::from_millis(5), arrived);
        std::thread::sleep(Duration::from_millis(20));
        let s = sampler.finish();
        assert!(!s.points.is_empty());
        assert!(s.points.iter().all(|p| p.1 == 90));
    }
}
