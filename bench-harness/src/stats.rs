//! Counters, latency histograms and the figures a run reports.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, from 1 µs to one hour, to 3 significant digits.
pub const HIST_MAX_US: u64 = 3_600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Records a latency given in nanoseconds; values beyond the range saturate at the maximum.
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1_000).max(1));
}

/// Live counters, shared by every task of a run: read by the progress line, and by the run's end
/// (errors, retries). Latency and the measured figures are kept per task and merged at the end.
#[derive(Default, Debug)]
pub struct Live {
    pub msgs: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub retries: AtomicU64,
    /// Set when an open-loop producer fell too far behind its schedule and stopped early.
    pub overloaded: std::sync::atomic::AtomicBool,
    /// Highest latency (µs) seen since the progress line last took it: when in a run the
    /// tail happened, which the run's histogram cannot say.
    pub max_latency_us: AtomicU64,
}

impl Live {
    pub fn add(&self, msgs: u64, bytes: u64) {
        self.msgs.fetch_add(msgs, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }

    pub fn note_latency_ns(&self, ns: u64) {
        self.max_latency_us.fetch_max(ns / 1_000, Relaxed);
    }
}

/// What one task measured after the warm-up: merged into a [`Figures`] at the end.
pub struct Tally {
    pub msgs: u64,
    pub bytes: u64,
    /// Time of the last measured completion (ack, or receipt), unix ns.
    pub last_ns: u64,
    pub hist: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            msgs: 0,
            bytes: 0,
            last_ns: 0,
            hist: new_hist(),
        }
    }
}

impl Tally {
    pub fn merge(&mut self, other: &Tally) {
        self.msgs += other.msgs;
        self.bytes += other.bytes;
        self.last_ns = self.last_ns.max(other.last_ns);
        self.hist.add(&other.hist).expect("same histogram bounds");
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub p99_99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn from_hist(h: &Histogram<u64>) -> Option<LatencySummary> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        Some(LatencySummary {
            count: h.len(),
            mean_ms: h.mean() / 1_000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p99_9_ms: ms(h.value_at_quantile(0.999)),
            p99_99_ms: ms(h.value_at_quantile(0.9999)),
            max_ms: ms(h.max()),
        })
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  p99.99 {:.3} ms  max {:.3} ms  (n={})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p99_9_ms, self.p99_99_ms, self.max_ms, self.count
        )
    }
}

/// Throughput and latency of one side (produce or consume) of a run, after the warm-up.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    pub msgs: u64,
    pub bytes: u64,
    pub secs: f64,
    pub msgs_per_sec: f64,
    /// Megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
    pub errors: u64,
    pub retries: u64,
    pub latency: Option<LatencySummary>,
}

impl Figures {
    /// `start_ns` is the end of the warm-up; throughput runs to the last measured completion,
    /// or to `end_ns` if given (a fixed-duration run that ended idle).
    pub fn new(t: &Tally, start_ns: u64, end_ns: Option<u64>, errors: u64, retries: u64) -> Self {
        let end = end_ns.unwrap_or(t.last_ns).max(start_ns);
        let secs = (end - start_ns) as f64 / 1e9;
        let per_sec = |x: u64| if secs > 0.0 { x as f64 / secs } else { 0.0 };
        Figures {
            msgs: t.msgs,
            bytes: t.bytes,
            secs,
            msgs_per_sec: per_sec(t.msgs),
            mb_per_sec: per_sec(t.bytes) / 1e6,
            errors,
            retries,
            latency: LatencySummary::from_hist(&t.hist),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} msgs in {:.2} s: {:.0} msgs/s, {:.1} MB/s; errors {}, retries {}",
            self.msgs, self.secs, self.msgs_per_sec, self.mb_per_sec, self.errors, self.retries
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_a_known_distribution() {
        let mut h = new_hist();
        // 1..=10_000 µs, uniformly: p50 ≈ 5 ms, p99 ≈ 9.9 ms, max = 10 ms.
        for us in 1..=10_000u64 {
            record_ns(&mut h, us * 1_000);
        }
        let s = LatencySummary::from_hist(&h).unwrap();
        assert_eq!(s.count, 10_000);
        let close = |a: f64, b: f64| (a - b).abs() / b < 0.002;
        assert!(close(s.p50_ms, 5.0), "{s:?}");
        assert!(close(s.p90_ms, 9.0), "{s:?}");
        assert!(close(s.p99_ms, 9.9), "{s:?}");
        assert!(close(s.p99_9_ms, 9.99), "{s:?}");
        assert!(close(s.max_ms, 10.0), "{s:?}");
        assert!(close(s.mean_ms, 5.0005), "{s:?}");
    }

    #[test]
    fn out_of_range_values_saturate_and_sub_microsecond_counts_as_one() {
        let mut h = new_hist();
        record_ns(&mut h, 10); // 10 ns
        record_ns(&mut h, u64::MAX);
        let s = LatencySummary::from_hist(&h).unwrap();
        assert_eq!(s.count, 2);
        assert_eq!(s.p50_ms, 0.001);
        assert!(s.max_ms >= 3_599_000.0);
        assert!(LatencySummary::from_hist(&new_hist()).is_none());
    }

    #[test]
    fn tallies_merge_and_figures_divide_by_the_measured_window() {
        let mut a = Tally {
            msgs: 1_000,
            bytes: 1_000_000,
            last_ns: 3_000_000_000,
            ..Default::default()
        };
        record_ns(&mut a.hist, 2_000_000);
        let mut b = Tally {
            msgs: 1_000,
            bytes: 1_000_000,
            last_ns: 2_000_000_000,
            ..Default::default()
        };
        record_ns(&mut b.hist, 4_000_000);
        a.merge(&b);
        let f = Figures::new(&a, 1_000_000_000, None, 3, 1);
        assert_eq!(f.msgs, 2_000);
        assert!((f.secs - 2.0).abs() < 1e-9);
        assert!((f.msgs_per_sec - 1_000.0).abs() < 1e-6);
        assert!((f.mb_per_sec - 1.0).abs() < 1e-9);
        assert_eq!(f.errors, 3);
        let l = f.latency.unwrap();
        assert_eq!(l.count, 2);
        assert!((l.max_ms - 4.0).abs() < 0.01);
    }
}
