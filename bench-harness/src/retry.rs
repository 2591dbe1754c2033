//! Retriable errors, backoff and the per-error retry counts a run reports.
//!
//! A Kafka client rides out leader elections and broker restarts: an error that says "not here,
//! not yet" (a leader moving, a topic just created, a replica set shrinking) or a connection that
//! closes is retried after a metadata refresh, with an exponential backoff, until a time budget
//! (`--retry-timeout-secs`) runs out. The harness does the same, so a run against a cluster that
//! is electing leaders measures the cluster, not the harness giving up. Every retry is counted
//! by request type and reason and reported with the run.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const LEADER_NOT_AVAILABLE: i16 = 5;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;

/// Kafka's name for an error code (the ones a benchmark meets; others print as `error N`).
pub fn error_name(code: i16) -> &'static str {
    match code {
        -1 => "UNKNOWN_SERVER_ERROR",
        0 => "NONE",
        1 => "OFFSET_OUT_OF_RANGE",
        2 => "CORRUPT_MESSAGE",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        4 => "INVALID_FETCH_SIZE",
        5 => "LEADER_NOT_AVAILABLE",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        10 => "MESSAGE_TOO_LARGE",
        13 => "NETWORK_EXCEPTION",
        17 => "INVALID_TOPIC_EXCEPTION",
        18 => "RECORD_LIST_TOO_LARGE",
        19 => "NOT_ENOUGH_REPLICAS",
        20 => "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        21 => "INVALID_REQUIRED_ACKS",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        35 => "UNSUPPORTED_VERSION",
        36 => "TOPIC_ALREADY_EXISTS",
        37 => "INVALID_PARTITIONS",
        38 => "INVALID_REPLICATION_FACTOR",
        41 => "NOT_CONTROLLER",
        42 => "INVALID_REQUEST",
        43 => "UNSUPPORTED_FOR_MESSAGE_FORMAT",
        56 => "KAFKA_STORAGE_ERROR",
        70 => "FETCH_SESSION_ID_NOT_FOUND",
        71 => "INVALID_FETCH_SESSION_EPOCH",
        74 => "FENCED_LEADER_EPOCH",
        75 => "UNKNOWN_LEADER_EPOCH",
        87 => "INVALID_RECORD",
        89 => "THROTTLING_QUOTA_EXCEEDED",
        _ => "",
    }
}

/// `NAME (code)`, or `error code` for codes without a name here.
pub fn describe_error(code: i16) -> String {
    match error_name(code) {
        "" => format!("error {code}"),
        name => format!("{name} ({code})"),
    }
}

/// Errors a Kafka client retries on Produce, Fetch and ListOffsets (Kafka's
/// `RetriableException`s): the leader moved or is being elected, the topic is not known yet
/// (just created), the request timed out, too few in-sync replicas for now, a stale or future
/// leader epoch, a storage or network fault on the broker.
pub fn is_retriable(code: i16) -> bool {
    matches!(code, 2 | 3 | 5 | 6 | 7 | 13 | 19 | 20 | 56 | 74 | 75 | 89)
}

/// Why a request is retried: a Kafka error code, or something the connection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Error(i16),
    /// The connection closed, was reset, or could not be opened.
    ConnectionClosed,
    /// No response within the request timeout; the connection is dropped and reopened.
    NoResponse,
}

impl Reason {
    pub fn label(&self) -> String {
        match self {
            Reason::Error(code) => match error_name(*code) {
                "" => format!("error_{code}"),
                name => name.to_string(),
            },
            Reason::ConnectionClosed => "connection_closed".to_string(),
            Reason::NoResponse => "no_response".to_string(),
        }
    }
}

/// The request a retry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Metadata,
    ListOffsets,
    Produce,
    Fetch,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Metadata => "metadata",
            Op::ListOffsets => "list_offsets",
            Op::Produce => "produce",
            Op::Fetch => "fetch",
        }
    }
}

/// Retry counts by request and reason, shared by every task of a run.
#[derive(Default, Debug)]
pub struct RetryStats {
    counts: Mutex<BTreeMap<(Op, Reason), u64>>,
}

/// What a run reports: `{"produce": {"NOT_LEADER_OR_FOLLOWER": 3}, ...}` and the total.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RetrySummary {
    pub total: u64,
    pub by_request: BTreeMap<String, BTreeMap<String, u64>>,
}

impl RetryStats {
    pub fn add(&self, op: Op, reason: Reason, n: u64) {
        if n > 0 {
            *self
                .counts
                .lock()
                .expect("lock")
                .entry((op, reason))
                .or_default() += n;
        }
    }

    pub fn count(&self, op: Op) -> u64 {
        let counts = self.counts.lock().expect("lock");
        counts
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn summary(&self) -> RetrySummary {
        let counts = self.counts.lock().expect("lock");
        let mut s = RetrySummary::default();
        for ((op, reason), n) in counts.iter() {
            s.total += n;
            *s.by_request
                .entry(op.name().to_string())
                .or_default()
                .entry(reason.label())
                .or_default() += n;
        }
        s
    }
}

impl RetrySummary {
    /// `produce 3 (NOT_LEADER_OR_FOLLOWER 3), list_offsets 2 (...)`, or `none`.
    pub fn line(&self) -> String {
        if self.total == 0 {
            return "none".to_string();
        }
        self.by_request
            .iter()
            .map(|(op, reasons)| {
                let n: u64 = reasons.values().sum();
                let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
                format!("{op} {n} ({})", detail.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How retries are paced and bounded.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// How long one thing (a batch, a partition's fetch, a ListOffsets) may keep failing.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1 for the first retry): initial, doubling, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(20);
        self.initial.saturating_mul(1 << shift).min(self.max)
    }

    pub fn backoff_ns(&self, attempt: u32) -> u64 {
        self.backoff(attempt).as_nanos() as u64
    }

    pub fn timeout_ns(&self) -> u64 {
        self.timeout.as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let ms: Vec<u128> = (1..=7).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(ms, vec![50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn summary_groups_by_request_and_reason() {
        let s = RetryStats::default();
        s.add(Op::Produce, Reason::Error(NOT_LEADER_OR_FOLLOWER), 2);
        s.add(Op::Produce, Reason::ConnectionClosed, 1);
        s.add(Op::ListOffsets, Reason::Error(NOT_LEADER_OR_FOLLOWER), 4);
        s.add(Op::Fetch, Reason::Error(99), 1);
        s.add(Op::Fetch, Reason::Error(5), 0);
        let sum = s.summary();
        assert_eq!(sum.total, 8);
        assert_eq!(sum.by_request["produce"]["NOT_LEADER_OR_FOLLOWER"], 2);
        assert_eq!(sum.by_request["produce"]["connection_closed"], 1);
        assert_eq!(sum.by_request["fetch"]["error_99"], 1);
        assert_eq!(s.count(Op::Produce), 3);
        assert_eq!(
            sum.line(),
            "fetch 1 (error_99 1), list_offsets 4 (NOT_LEADER_OR_FOLLOWER 4), \
             produce 3 (NOT_LEADER_OR_FOLLOWER 2, connection_closed 1)"
        );
        assert!(is_retriable(6) && is_retriable(74) && is_retriable(20));
        assert!(!is_retriable(MESSAGE_TOO_LARGE) && !is_retriable(0));
        assert_eq!(describe_error(6), "NOT_LEADER_OR_FOLLOWER (6)");
        assert_eq!(describe_error(999), "error 999");
    }
}
