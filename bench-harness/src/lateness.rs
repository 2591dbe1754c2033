//! How late the harness itself runs, so a run tells a stalled client from a stalled broker.
//!
//! Two measures, both in microseconds from the end of the warm-up:
//!
//! - **timer**: a task on the harness's event loop asks to be woken every `--lateness-tick-us`
//!   (a periodic timerfd) and records how late each wake-up is. When the loop is busy or the
//!   process is descheduled, ticks fire late; a stall of 100 ms shows as one tick 100 ms late
//!   plus the ticks it swallowed (recorded as 99, 98, ... ms late, HdrHistogram's correction for
//!   a fixed interval), so the percentiles read as "the fraction of time the loop was this late".
//! - **producer send lag** (open loop only): how long after it was due each Produce request was
//!   written. A request is due when its first batch filled or lingered long enough; the producer
//!   sleeps until exactly then, so on a healthy loop the lag is the wake-up latency. It grows when
//!   the harness falls behind its schedule, and also while the in-flight window is full (the
//!   broker is not acknowledging), so read it with the timer: a large send lag with an on-time
//!   timer is the broker's backpressure, both large is the client.
//!
//! - **produce round trip**: from a Produce request's last byte written to its response read,
//!   per request. Against the broker's own time for the request (its `/metrics`, from the frame
//!   read to the response ready) it tells time in the broker's handling from time in sockets,
//!   scheduling and the broker's read and write queues.
//! - **produce write**: how long writing each Produce request into the socket took. Beyond the
//!   copy into the socket buffer, that is the time the buffer stayed full because the broker
//!   was not reading: backpressure that neither the round trip (it starts after the last byte)
//!   nor the broker's own request time (it starts at the whole frame read) contains.
//! - **produce turnaround** (open loop): for a request that was already due when a response
//!   freed a slot of its connection's full in-flight window, from that response read to this
//!   request's write starting: the client's own reaction time (waking the producer, building and
//!   checksumming the request), the one part of a behind producer's cycle that is neither the
//!   broker's nor the socket's.
//!
//! Cost: one wake-up per tick (about 1,000 a second by default), a few microseconds each, and
//! up to three histogram records per Produce request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::clock::now_ns;
use crate::stats::new_hist;
use crate::timer::PreciseTimer;

/// Lateness histograms (µs) shared by a run's tasks.
pub struct Lateness {
    pub tick_us: u64,
    timer: Mutex<Histogram<u64>>,
    send_lag: Mutex<Histogram<u64>>,
    round_trip: Mutex<Histogram<u64>>,
    write: Mutex<Histogram<u64>>,
    turnaround: Mutex<Histogram<u64>>,
    /// Whether the run has an open-loop schedule to lag behind.
    open_loop: bool,
}

impl Lateness {
    pub fn new(tick_us: u64, open_loop: bool) -> Arc<Lateness> {
        Arc::new(Lateness {
            tick_us,
            timer: Mutex::new(new_hist()),
            send_lag: Mutex::new(new_hist()),
            round_trip: Mutex::new(new_hist()),
            write: Mutex::new(new_hist()),
            turnaround: Mutex::new(new_hist()),
            open_loop,
        })
    }

    pub fn open_loop(&self) -> bool {
        self.open_loop
    }

    /// Adds a producer's send-lag histogram (µs) at the end of its run.
    pub fn add_send_lag(&self, h: &Histogram<u64>) {
        self.send_lag
            .lock()
            .expect("lock")
            .add(h)
            .expect("same histogram bounds");
    }

    /// One Produce request's round trip (written to answered), ns.
    pub fn record_round_trip(&self, ns: u64) {
        self.round_trip
            .lock()
            .expect("lock")
            .record((ns / 1_000).max(1))
            .ok();
    }

    /// How long writing one Produce request into its socket took, ns.
    pub fn record_write(&self, ns: u64) {
        self.write
            .lock()
            .expect("lock")
            .record((ns / 1_000).max(1))
            .ok();
    }

    /// From a response freeing a full window's slot to the write of a request already due, ns.
    pub fn record_turnaround(&self, ns: u64) {
        self.turnaround
            .lock()
            .expect("lock")
            .record((ns / 1_000).max(1))
            .ok();
    }

    pub fn summary(&self) -> HarnessLateness {
        HarnessLateness {
            tick_us: self.tick_us,
            timer: LatenessSummary::from_hist(&self.timer.lock().expect("lock")),
            producer_send_lag: LatenessSummary::from_hist(&self.send_lag.lock().expect("lock")),
            produce_round_trip: LatenessSummary::from_hist(&self.round_trip.lock().expect("lock")),
            produce_write: LatenessSummary::from_hist(&self.write.lock().expect("lock")),
            produce_turnaround: LatenessSummary::from_hist(&self.turnaround.lock().expect("lock")),
        }
    }
}

/// Starts the ticker (nothing if `tick_us` is 0). It runs until aborted; the histogram is kept
/// in `lateness`, so aborting loses nothing.
pub fn spawn_ticker(
    lateness: &Arc<Lateness>,
    measure_start_ns: u64,
) -> Option<tokio::task::JoinHandle<()>> {
    if lateness.tick_us == 0 {
        return None;
    }
    let lateness = lateness.clone();
    Some(tokio::spawn(async move {
        let period_ns = lateness.tick_us * 1_000;
        let Ok(mut timer) = PreciseTimer::periodic(Duration::from_nanos(period_ns)) else {
            return;
        };
        // The earliest tick not yet seen fire.
        let mut next = now_ns() + period_ns;
        loop {
            let Ok(n) = timer.expirations().await else {
                return;
            };
            let now = now_ns();
            if next >= measure_start_ns {
                let late_us = now.saturating_sub(next) / 1_000;
                lateness
                    .timer
                    .lock()
                    .expect("lock")
                    .record_correct(late_us.max(1), lateness.tick_us)
                    .ok();
            }
            next += n.max(1) * period_ns;
        }
    }))
}

/// Percentiles of a lateness histogram, in microseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatenessSummary {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub max_us: u64,
}

impl LatenessSummary {
    fn from_hist(h: &Histogram<u64>) -> Option<LatenessSummary> {
        (!h.is_empty()).then(|| LatenessSummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p99_9_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }

    fn line(&self) -> String {
        format!(
            "p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            self.p50_us, self.p99_us, self.p99_9_us, self.max_us
        )
    }
}

/// What a run reports as `harness_lateness`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HarnessLateness {
    /// The timer's period, µs.
    pub tick_us: u64,
    /// How late the event loop's periodic timer fired.
    pub timer: Option<LatenessSummary>,
    /// Open loop: how long after it was due each Produce request was written.
    pub producer_send_lag: Option<LatenessSummary>,
    /// From each Produce request written to its response read (acks 1 and all).
    pub produce_round_trip: Option<LatenessSummary>,
    /// How long writing each Produce request took (a full socket: the broker not reading).
    pub produce_write: Option<LatenessSummary>,
    /// Open loop: from a response freeing a full window's slot to the next (overdue) request
    /// written on it: the client's reaction time.
    pub produce_turnaround: Option<LatenessSummary>,
}

impl HarnessLateness {
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &self.timer {
            parts.push(format!(
                "event loop timer ({} µs ticks) late by {}",
                self.tick_us,
                t.line()
            ));
        }
        if let Some(l) = &self.producer_send_lag {
            parts.push(format!("produce requests written after due {}", l.line()));
        }
        if let Some(l) = &self.produce_round_trip {
            parts.push(format!(
                "produce request round trip (written to answered) {}",
                l.line()
            ));
        }
        if let Some(l) = &self.produce_write {
            parts.push(format!(
                "produce request write (into the socket) {}",
                l.line()
            ));
        }
        if let Some(l) = &self.produce_turnaround {
            parts.push(format!(
                "producer turnaround (slot freed to overdue request written) {}",
                l.line()
            ));
        }
        parts.join("; ")
    }

    /// A warning when the harness itself stalled long enough to matter to the latencies.
    pub fn stall_note(&self) -> Option<String> {
        let t = self.timer.as_ref()?;
        (t.max_us >= 10_000).then(|| {
            format!(
                "the harness's own event loop ran up to {:.1} ms late (p99.9 {:.1} ms): latencies \
                 near that include a client-side stall (busy or descheduled harness), not only \
                 the broker",
                t.max_us as f64 / 1e3,
                t.p99_9_us as f64 / 1e3
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ticker measures a stall it is made to suffer: the event loop is blocked for 30 ms
    /// (a synchronous sleep on the single-threaded runtime), so the ticks during it fire late.
    #[tokio::test]
    async fn ticker_sees_a_blocked_event_loop() {
        let l = Lateness::new(1_000, false);
        let h = spawn_ticker(&l, 0).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::thread::sleep(Duration::from_millis(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
        h.abort();
        let s = l.summary();
        let t = s.timer.clone().unwrap();
        assert!(t.max_us >= 29_000, "{t:?}");
        // The swallowed ticks are filled in: about 30 of them are at least 1 ms late.
        assert!(t.count >= 30, "{t:?}");
        assert!(s.producer_send_lag.is_none());
        assert!(s.produce_round_trip.is_none());
        assert!(s.produce_write.is_none());
        assert!(s.produce_turnaround.is_none());
        assert!(s.stall_note().unwrap().contains("ms late"));
    }

    /// Request writes are summarised in µs and named in the text line, apart from round trips.
    #[test]
    fn request_writes_are_reported_apart_from_round_trips() {
        let l = Lateness::new(0, true);
        l.record_write(40_000);
        l.record_write(3_000_000);
        l.record_round_trip(1_000_000);
        l.record_turnaround(700_000);
        let s = l.summary();
        let w = s.produce_write.clone().unwrap();
        assert_eq!(w.count, 2);
        assert!((2_990..=3_010).contains(&w.max_us), "{w:?}");
        assert_eq!(s.produce_round_trip.clone().unwrap().count, 1);
        assert_eq!(s.produce_turnaround.clone().unwrap().p50_us, 700);
        let line = s.line();
        assert!(
            line.contains("produce request write (into the socket) p50 40 µs"),
            "{line}"
        );
    }
}
