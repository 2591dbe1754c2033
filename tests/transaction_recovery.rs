//! Transactions across segment rolls and restarts: aborted transactions whose markers are in
//! closed segments, and a transaction open across a roll when the broker is killed, stay
//! invisible to read_committed consumers after a kill -9 and after a clean stop (the
//! `.txnindex` files and producer-state snapshots, not a rescan of the active segment only).

#[path = "common/clients.rs"]
mod clients;
mod common;

use std::time::{Duration, Instant};

use clients::TxnProducer;
use common::Broker;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Small segments: a few dozen 1 KiB records roll several times.
const SEGMENT_BYTES: &str = "16384";
/// Each record's value: its name, then padding so that records fill segments quickly.
const PADDING_BYTES: usize = 1000;

fn create_topic(bootstrap: &str, name: &str) {
    clients::create_topic(
        bootstrap,
        name,
        1,
        &[("segment.bytes", SEGMENT_BYTES), ("retention.ms", "-1")],
    );
}

/// Small batches, so a transaction's records spread over several of the topic's small segments.
fn transactional_producer(bootstrap: &str, transactional_id: &str, timeout_ms: u32) -> TxnProducer {
    clients::transactional_producer_with(
        bootstrap,
        transactional_id,
        timeout_ms,
        &[("batch.size", "4096")],
    )
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Sends the records named `names` (padded) and waits until they are written.
fn send(producer: &TxnProducer, topic: &str, names: &[String]) {
    for name in names {
        let value = format!("{name}#{}", "x".repeat(PADDING_BYTES));
        producer
            .send(BaseRecord::to(topic).key(name.as_str()).payload(&value))
            .map_err(|(e, _)| e)
            .expect("enqueue");
    }
    producer.flush(TIMEOUT).expect("flush");
}

fn committed_transaction(producer: &TxnProducer, topic: &str, names: &[String]) {
    producer.begin_transaction().unwrap();
    send(producer, topic, names);
    producer.commit_transaction(TIMEOUT).expect("commit");
}

/// Reads the topic from the beginning with `isolation` until `last` arrives, then until a
/// poll finds nothing more; returns the record names in offset order.
fn read_all(bootstrap: &str, topic: &str, isolation: &str, last: &str) -> Vec<String> {
    let consumer = clients::assigned_consumer(
        bootstrap,
        "txn-recovery-reader",
        topic,
        &[("isolation.level", isolation), ("fetch.wait.max.ms", "100")],
    );
    let mut out: Vec<String> = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    let mut quiet_polls = 0;
    while Instant::now() < deadline && quiet_polls < 5 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(message) => {
                let m = message.expect("consume");
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                out.push(value.split('#').next().unwrap_or_default().to_string());
                quiet_polls = 0;
            }
            None if out.iter().any(|v| v == last) => quiet_polls += 1,
            None => {}
        }
    }
    assert!(
        out.iter().any(|v| v == last),
        "{last} never arrived ({isolation}); read {out:?}"
    );
    out
}

fn segment_files(dir: &std::path::Path, topic: &str) -> usize {
    std::fs::read_dir(dir.join("data").join(format!("{topic}-0")))
        .map(|entries| {
            entries
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn aborted_transactions_in_closed_segments_stay_hidden_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let topic = "txn-rolls";
    let mut broker = Broker::start_in(dir.path(), 2, &[]);
    create_topic(&broker.addr, topic);
    let producer = transactional_producer(&broker.addr, "roller", 60_000);
    committed_transaction(&producer, topic, &names("before", 20));
    producer.begin_transaction().unwrap();
    send(&producer, topic, &names("aborted", 30));
    producer.abort_transaction(TIMEOUT).expect("abort");
    committed_transaction(&producer, topic, &names("after", 40));
    drop(producer);

    let mut committed = names("before", 20);
    committed.extend(names("after", 40));
    let mut everything = names("before", 20);
    everything.extend(names("aborted", 30));
    everything.extend(names("after", 40));
    assert_eq!(
        read_all(&broker.addr, topic, "read_committed", "after-39"),
        committed
    );
    // Visible once journaled: the segment writes (and rolls) follow.
    assert!(
        common::wait_until(TIMEOUT, || segment_files(dir.path(), topic) >= 5),
        "the abort marker must sit in a closed segment, several rolls back"
    );

    broker.kill9();
    let mut broker = Broker::start_in(dir.path(), 2, &[]);
    assert_eq!(
        read_all(&broker.addr, topic, "read_committed", "after-39"),
        committed,
        "after kill -9"
    );
    assert_eq!(
        read_all(&broker.addr, topic, "read_uncommitted", "after-39"),
        everything
    );

    broker.stop();
    let broker = Broker::start_in(dir.path(), 2, &[]);
    assert_eq!(
        read_all(&broker.addr, topic, "read_committed", "after-39"),
        committed,
        "after a clean stop"
    );
    assert_eq!(
        read_all(&broker.addr, topic, "read_uncommitted", "after-39"),
        everything
    );
}

#[test]
fn a_transaction_open_across_a_roll_is_aborted_whole_after_kill9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let topic = "txn-open-roll";
    let mut broker = Broker::start_in(dir.path(), 2, &[]);
    create_topic(&broker.addr, topic);
    let other = transactional_producer(&broker.addr, "steady", 60_000);
    committed_transaction(&other, topic, &names("before", 5));
    let open = transactional_producer(&broker.addr, "abandoned", 3_000);
    open.begin_transaction().unwrap();
    send(&open, topic, &names("open", 40));
    // Committed behind the open transaction: read_committed reaches it only once the open
    // one is decided, so the last stable offset must stay at the open transaction's start.
    committed_transaction(&other, topic, &names("middle", 20));
    assert!(
        common::wait_until(TIMEOUT, || segment_files(dir.path(), topic) >= 4),
        "the open transaction spans rolls"
    );
    broker.kill9();
    drop(open);
    drop(other);

    let broker = Broker::start_in(dir.path(), 2, &[]);
    let after = transactional_producer(&broker.addr, "after-restart", 60_000);
    committed_transaction(&after, topic, &names("after", 2));
    let mut committed = names("before", 5);
    committed.extend(names("middle", 20));
    committed.extend(names("after", 2));
    // Until the coordinator aborts the open transaction (its 3 s timeout), the consumer sees
    // only "before"; then the rest, never a record of the aborted transaction.
    assert_eq!(
        read_all(&broker.addr, topic, "read_committed", "after-1"),
        committed
    );
    let seen = read_all(&broker.addr, topic, "read_uncommitted", "after-1");
    assert_eq!(seen.iter().filter(|v| v.starts_with("open-")).count(), 40);
}
