//! The slow-request log: a request that spent longer than `request.slow.log.ms` in the broker
//! is logged (a warning, at most one per shard per [`LOG_INTERVAL`]) with where its time went,
//! as Kafka's request log (`kafka.request.logger`) breaks a request into queue, local, remote,
//! response-queue and send times. Every one is counted (`broker_slow_requests_total`).
//!
//! The phases of one request on its connection:
//! - `socket`: from the kernel receiving the frame's last bytes to the shard reading them
//!   (the shard busy elsewhere, or not scheduled);
//! - `dispatch`: decoding and the synchronous work (a Produce's appends);
//! - `queued`: behind the connection's earlier responses (responses go out in request order);
//! - `wait`: the response's own wait (a write, replicas, a Fetch's long poll);
//! - `send`: writing the response to the socket (a client that does not read holds it).
//!
//! A Fetch's `wait` is its long poll, asked for by the client, and so is its `queued` behind
//! earlier Fetches' long polls on the same connection: neither counts toward the threshold. With each line come the shard's share of busy time from the read to the response
//! written (`shard_busy_percent`), and its task-queue runs of a millisecond or more since the
//! request was received (`long_runs`, `12.5ms@default`): a saturated shard, one long task, or
//! neither (then the time went to a wait outside the shard). That is how the spikes of
//! docs/benchmarks.md's W3 were told apart.

use std::cell::Cell;
use std::time::{Duration, Instant};

use super::connection::FETCH_API_KEY;
use crate::metrics;
use crate::shard::stall;

/// At most one slow-request warning per shard this often; the rest are counted in the next.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What the reader knows of a request when it hands the response to the writer.
#[derive(Debug, Clone, Copy)]
pub struct Read {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub frame_bytes: usize,
    /// The kernel received the frame's last bytes this long before `read_at` (unknown without
    /// receive stamps, or when the read parked for them).
    pub socket_wait: Option<Duration>,
    /// The frame was read whole.
    pub read_at: Instant,
    /// The request's synchronous part was done (its response future made).
    pub dispatched_at: Instant,
    /// The shard's busy time ([`stall::busy_time`]) at `read_at`.
    pub busy_at_read: Duration,
}

/// When the writer took the response up, when it was ready and when it was written.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub picked_at: Instant,
    pub ready_at: Instant,
    pub written_at: Instant,
}

/// One shard's rate limit for the warning.
#[derive(Debug, Default)]
struct LogState {
    last_logged: Cell<Option<Instant>>,
    /// Slow requests since the last warning, and the slowest of them (its time in the broker
    /// and API key): a spike's worst is reported even when its first was logged.
    unlogged: Cell<u64>,
    unlogged_max: Cell<(f64, i16)>,
}

thread_local! {
    static LOG_STATE: LogState = LogState::default();
}

/// The phases of a finished request, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phases {
    pub socket_ms: f64,
    pub dispatch_ms: f64,
    pub queued_ms: f64,
    pub wait_ms: f64,
    pub send_ms: f64,
}

impl Phases {
    pub fn of(read: &Read, written: &Written) -> Phases {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let between = |from: Instant, to: Instant| ms(to.saturating_duration_since(from));
        Phases {
            socket_ms: read.socket_wait.map_or(0.0, ms),
            dispatch_ms: between(read.read_at, read.dispatched_at),
            // The writer may have been waiting for this response before it was dispatched.
            queued_ms: between(read.dispatched_at, written.picked_at),
            wait_ms: between(written.picked_at.max(read.dispatched_at), written.ready_at),
            send_ms: between(written.ready_at, written.written_at),
        }
    }

    /// The time that counts against the threshold. For a Fetch, neither its long poll nor its
    /// time queued behind the connection's earlier responses: a consumer that pipelines
    /// fetches for different partitions on one connection queues each behind the long polls
    /// before it, up to its `fetch.max.wait.ms`, by its own choice. (A slow send of an earlier
    /// response shows as that response's `send_ms`.)
    pub fn in_broker_ms(&self, api_key: i16) -> f64 {
        let own = self.socket_ms + self.dispatch_ms + self.send_ms;
        if api_key == FETCH_API_KEY {
            own
        } else {
            own + self.queued_ms + self.wait_ms
        }
    }
}

/// Checks a finished request against `threshold` (zero: off) on shard `shard`'s thread;
/// counts and logs it if it was slow.
pub fn finished(shard: usize, threshold: Duration, read: &Read, written: &Written) {
    if threshold.is_zero() {
        return;
    }
    let phases = Phases::of(read, written);
    let in_broker_ms = phases.in_broker_ms(read.api_key);
    if in_broker_ms < threshold.as_secs_f64() * 1e3 {
        return;
    }
    metrics::shard_cells(shard)
        .slow_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = written.written_at;
    let unlogged = LOG_STATE.with(|state| {
        if state
            .last_logged
            .get()
            .is_some_and(|last| now.saturating_duration_since(last) < LOG_INTERVAL)
        {
            state.unlogged.set(state.unlogged.get() + 1);
            if in_broker_ms > state.unlogged_max.get().0 {
                state.unlogged_max.set((in_broker_ms, read.api_key));
            }
            return None;
        }
        state.last_logged.set(Some(now));
        Some((state.unlogged.replace(0), state.unlogged_max.take()))
    });
    let Some((unlogged, (unlogged_max_ms, unlogged_max_api))) = unlogged else {
        return;
    };
    let life = now.saturating_duration_since(read.read_at);
    let busy = stall::busy_time().saturating_sub(read.busy_at_read);
    let busy_percent = if life.is_zero() {
        0.0
    } else {
        (busy.as_secs_f64() / life.as_secs_f64() * 100.0).min(100.0)
    };
    // From when the kernel had the whole request: the runs that kept the shard from reading it
    // count too.
    let received_at = read
        .socket_wait
        .and_then(|waited| read.read_at.checked_sub(waited))
        .unwrap_or(read.read_at);
    let long_runs: Vec<String> = stall::long_runs_since(received_at)
        .into_iter()
        .map(|(ran, queue)| format!("{:.1}ms@{queue}", ran.as_secs_f64() * 1e3))
        .collect();
    let api_name = |key: i16| {
        kafka_protocol::messages::ApiKey::try_from(key)
            .map_or_else(|_| key.to_string(), |key| format!("{key:?}"))
    };
    let f = |ms: f64| format!("{ms:.1}");
    tracing::warn!(
        shard,
        api = %api_name(read.api_key),
        version = read.api_version,
        correlation_id = read.correlation_id,
        bytes = read.frame_bytes,
        in_broker_ms = %f(in_broker_ms),
        socket_ms = %f(phases.socket_ms),
        dispatch_ms = %f(phases.dispatch_ms),
        queued_ms = %f(phases.queued_ms),
        wait_ms = %f(phases.wait_ms),
        send_ms = %f(phases.send_ms),
        shard_busy_percent = %format!("{busy_percent:.0}"),
        long_runs = %long_runs.join(" "),
        unlogged_since_last_warning = unlogged,
        unlogged_max_ms = %f(unlogged_max_ms),
        unlogged_max_api = %if unlogged == 0 { "-".to_string() } else { api_name(unlogged_max_api) },
        "slow request (request.slow.log.ms)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_split_a_requests_life_and_a_fetchs_long_polls_do_not_count() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let read = Read {
            api_key: FETCH_API_KEY,
            api_version: 12,
            correlation_id: 7,
            frame_bytes: 100,
            socket_wait: Some(Duration::from_millis(3)),
            read_at: at(10),
            dispatched_at: at(12),
            busy_at_read: Duration::ZERO,
        };
        let written = Written {
            picked_at: at(20),
            ready_at: at(520),
            written_at: at(525),
        };
        let phases = Phases::of(&read, &written);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(phases.socket_ms, 3.0));
        assert!(close(phases.dispatch_ms, 2.0));
        assert!(close(phases.queued_ms, 8.0));
        assert!(close(phases.wait_ms, 500.0));
        assert!(close(phases.send_ms, 5.0));
        assert!(
            close(phases.in_broker_ms(FETCH_API_KEY), 10.0),
            "a Fetch's long poll and its queueing behind others' do not count"
        );
        assert!(
            close(phases.in_broker_ms(0), 518.0),
            "a Produce's wait counts"
        );
        // The writer waiting before the response existed is not queueing.
        let early = Written {
            picked_at: at(5),
            ..written
        };
        let phases = Phases::of(&read, &early);
        assert!(close(phases.queued_ms, 0.0));
        assert!(close(phases.wait_ms, 508.0));
    }
}
