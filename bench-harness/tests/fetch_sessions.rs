//! Incremental fetch sessions (KIP-227) in the harness's consumer, against the null broker's
//! minimal session implementation (a partition left out of an incremental fetch keeps the offset
//! the broker last heard for it): a consume reads every record exactly once whether sessions
//! are on, off, refused by the broker, or lost along the way.

mod common;

use common::{num, run, NullBroker};

const RECORDS: u64 = 20_000;

/// Fills topic `s` (6 partitions) with 20,000 records in batches of about 16 KiB.
fn fill(addr: &str) {
    let r = run(
        "produce",
        addr,
        &[
            "--topic",
            "s",
            "--partitions",
            "6",
            "--message-size",
            "100",
            "--batch-size",
            "16384",
            "--key-dist",
            "random",
            "--messages",
            "20000",
        ],
    );
    assert_eq!(num(r.ok(), &["produce", "msgs"]), RECORDS);
}

/// Reads the topic from the beginning to the end offsets, with responses of about two batches
/// (fetch max bytes 40,000), so most partitions get nothing in a given response and an
/// incremental fetch leaves them out.
fn catch_up(addr: &str, sessions: &str) -> serde_json::Value {
    let r = run(
        "consume",
        addr,
        &[
            "--topic",
            "s",
            "--from",
            "beginning",
            "--to-end",
            "--fetch-in-flight",
            "2",
            "--fetch-max-bytes",
            "40000",
            "--partition-max-bytes",
            "40000",
            "--fetch-sessions",
            sessions,
        ],
    );
    let j = r.ok().clone();
    assert_eq!(num(&j, &["consume", "msgs"]), RECORDS, "{}", r.stdout());
    // Nothing was served twice: the broker's session always held the offsets the consumer
    // had reached.
    assert_eq!(num(&j, &["fetch_sessions", "stale_records"]), 0, "{j:#}");
    j
}

fn used(j: &serde_json::Value) -> bool {
    j["fetch_sessions"]["used"]
        .as_bool()
        .expect("fetch_sessions.used")
}

#[test]
fn consume_reads_everything_once_with_sessions_on_and_off() {
    let broker = NullBroker::start(&["--echo"]);
    fill(&broker.addr);

    let on = catch_up(&broker.addr, "on");
    assert!(used(&on), "{on:#}");
    assert_eq!(num(&on, &["fetch_sessions", "sessions_opened"]), 2);
    assert_eq!(num(&on, &["fetch_sessions", "full_requests"]), 2, "{on:#}");
    assert!(
        num(&on, &["fetch_sessions", "incremental_requests"]) > 20,
        "{on:#}"
    );

    let off = catch_up(&broker.addr, "off");
    assert!(!used(&off));
    assert_eq!(num(&off, &["fetch_sessions", "incremental_requests"]), 0);
    assert!(num(&off, &["fetch_sessions", "full_requests"]) > 20);
}

/// A broker that opens no session (answers session id 0) gets full fetches throughout.
#[test]
fn consume_falls_back_to_full_fetches_without_broker_sessions() {
    let broker = NullBroker::start(&["--echo", "--no-fetch-sessions"]);
    fill(&broker.addr);
    let j = catch_up(&broker.addr, "on");
    assert!(!used(&j));
    assert_eq!(num(&j, &["fetch_sessions", "incremental_requests"]), 0);
}

/// A broker that loses sessions (FETCH_SESSION_ID_NOT_FOUND on every 7th incremental fetch):
/// the consumer opens a new one and goes on from where it was.
#[test]
fn consume_restarts_lost_sessions() {
    let broker = NullBroker::start(&["--echo", "--drop-fetch-session-every", "7"]);
    fill(&broker.addr);
    let j = catch_up(&broker.addr, "on");
    assert!(used(&j));
    assert!(
        num(&j, &["fetch_sessions", "session_restarts"]) > 0,
        "{j:#}"
    );
    assert!(num(&j, &["fetch_sessions", "sessions_opened"]) > 2, "{j:#}");
}

/// End to end (consumers long-polling at the log end, so most fetches carry no partition at
/// all), with sessions on by default: every record arrives once.
#[test]
fn e2e_with_sessions_receives_every_record_once() {
    let broker = NullBroker::start(&["--echo"]);
    let r = run(
        "e2e",
        &broker.addr,
        &[
            "--topic",
            "live",
            "--partitions",
            "6",
            "--message-size",
            "100",
            "--messages",
            "6000",
            "--rate",
            "6000",
            "--idle-timeout-secs",
            "5",
        ],
    );
    let j = r.ok();
    assert_eq!(num(j, &["consume", "msgs"]), 6000, "{}", r.stdout());
    assert!(used(j));
    assert!(num(j, &["fetch_sessions", "incremental_requests"]) > 0);
    assert_eq!(num(j, &["fetch_sessions", "stale_records"]), 0);
}
