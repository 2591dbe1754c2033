//! One process-wide clock in unix nanoseconds, monotonic within the process.
//!
//! Send timestamps travel inside payloads and are compared with receive times, so both must come
//! from the same scale. Wall-clock reads can step (NTP); this clock reads `Instant` and adds the
//! wall-clock offset sampled once at start, so it never goes backwards, yet stays comparable with
//! another process on the same machine to within the offset-sampling error.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Base {
    instant: Instant,
    unix_ns: u64,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| Base {
        instant: Instant::now(),
        unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    })
}

/// Now, in unix nanoseconds.
pub fn now_ns() -> u64 {
    let b = base();
    b.unix_ns + b.instant.elapsed().as_nanos() as u64
}

/// The `Instant` at which `now_ns()` will read `ns` (for sleeping until a scheduled time).
pub fn instant_at(ns: u64) -> Instant {
    let b = base();
    b.instant + Duration::from_nanos(ns.saturating_sub(b.unix_ns))
}

pub fn ns_to_ms(ns: u64) -> i64 {
    (ns / 1_000_000) as i64
}
