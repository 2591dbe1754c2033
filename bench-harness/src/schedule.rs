//! Open-loop send schedules.
//!
//! A closed-loop load generator sends the next record when the system lets it, so when the system
//! stalls it also stops sending, and the stall is recorded once instead of for every record that
//! should have been sent meanwhile (coordinated omission). Here every record's send time is fixed
//! in advance from the target rate; latency is measured from that scheduled time, not from when
//! the harness got around to sending, so a stall shows up in every record it delayed.

/// The schedule of one producer among `producers` sharing a total rate. Producer `index` is
/// offset by `index / total_rate`, so the merged stream is evenly spaced, not bursty.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    first_ns: u64,
    interval_ns: f64,
}

impl Schedule {
    pub fn new(start_ns: u64, total_rate_per_sec: f64, producers: usize, index: usize) -> Self {
        assert!(total_rate_per_sec > 0.0 && producers > 0 && index < producers);
        let global_interval = 1e9 / total_rate_per_sec;
        Schedule {
            first_ns: start_ns + (global_interval * index as f64) as u64,
            interval_ns: global_interval * producers as f64,
        }
    }

    /// Scheduled send time of this producer's record `i`. Computed from `i`, never accumulated,
    /// so rounding cannot drift over a long run.
    pub fn at(&self, i: u64) -> u64 {
        self.first_ns + (i as f64 * self.interval_ns) as u64
    }

    /// How many records are due at `now_ns` (records `0..n` have `at(i) <= now_ns`).
    pub fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.first_ns {
            return 0;
        }
        let n = ((now_ns - self.first_ns) as f64 / self.interval_ns) as u64 + 1;
        // Float rounding can be off by one either way; settle it against `at`.
        if self.at(n) <= now_ns {
            n + 1
        } else if n > 0 && self.at(n - 1) > now_ns {
            n - 1
        } else {
            n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_without_drift() {
        let s = Schedule::new(1_000, 1_000_000.0, 1, 0); // 1 µs apart
        assert_eq!(s.at(0), 1_000);
        assert_eq!(s.at(1), 2_000);
        // After 3.6e9 records (an hour) the time is exact, not accumulated error.
        assert_eq!(s.at(3_600_000_000), 1_000 + 3_600_000_000_000);
        // Non-integral intervals stay within a nanosecond of the ideal.
        let s = Schedule::new(0, 3.0, 1, 0);
        assert!((s.at(3_000_000) as i64 - 1_000_000_000_000_000).abs() <= 1);
    }

    #[test]
    fn producers_interleave_into_one_even_stream() {
        let rate = 1000.0; // 1 ms apart overall
        let scheds: Vec<Schedule> = (0..4).map(|i| Schedule::new(0, rate, 4, i)).collect();
        let mut all: Vec<u64> = scheds
            .iter()
            .flat_map(|s| (0..250).map(move |i| s.at(i)))
            .collect();
        all.sort_unstable();
        for (k, t) in all.iter().enumerate() {
            assert_eq!(*t, k as u64 * 1_000_000);
        }
    }

    #[test]
    fn due_counts_records_at_or_before_now() {
        let s = Schedule::new(500, 2_000.0, 3, 1); // 1.5 ms per producer, offset 0.5 ms
        assert_eq!(s.due(0), 0);
        for now in (0..20_000_000u64).step_by(77_777) {
            let n = s.due(now);
            assert!(n == 0 || s.at(n - 1) <= now, "now={now} n={n}");
            assert!(s.at(n) > now, "now={now} n={n}");
        }
    }
}
