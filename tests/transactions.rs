//! Transactions (exactly-once) with librdkafka's transactional producer (through the `rdkafka`
//! crate) against the real broker binary: commit and abort, isolation levels, fencing,
//! timeouts, offsets committed in a transaction, and a kill -9 mid-transaction.

#[path = "common/clients.rs"]
mod clients;
mod common;

use std::time::{Duration, Instant};

use clients::{
    is_fenced, read_until, send_values as send, transactional_producer, values, TxnProducer,
};
use common::Broker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    clients::create_topic(bootstrap, name, partitions, &[]);
}

fn consumer(bootstrap: &str, group: &str, isolation: &str) -> BaseConsumer {
    clients::isolated_consumer(bootstrap, group, isolation, &[])
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn read_committed_sees_only_committed_transactions() {
    let broker = Broker::start(2);
    create_topic(&broker.addr, "txn-visibility", 3);
    let producer = transactional_producer(&broker.addr, "visibility", 60_000);

    let committed_first = values("committed-a", 9);
    producer.begin_transaction().unwrap();
    send(&producer, "txn-visibility", 3, &committed_first);
    producer.commit_transaction(TIMEOUT).expect("commit");

    let aborted = values("aborted", 6);
    producer.begin_transaction().unwrap();
    send(&producer, "txn-visibility", 3, &aborted);
    producer.abort_transaction(TIMEOUT).expect("abort");

    let committed_last = values("committed-b", 3);
    producer.begin_transaction().unwrap();
    send(&producer, "txn-visibility", 3, &committed_last);
    producer.commit_transaction(TIMEOUT).expect("commit");

    // committed-b-0 .. -2 land on partitions 0, 1, 2: wait for each partition's last one.
    let mut expected_committed: Vec<String> = committed_first.clone();
    expected_committed.extend(committed_last.clone());
    let committed = wait_for_all(
        &broker.addr,
        "txn-visibility",
        3,
        "read_committed",
        &expected_committed,
    );
    assert_eq!(sorted(committed), sorted(expected_committed.clone()));

    let mut everything = expected_committed;
    everything.extend(aborted);
    let uncommitted = wait_for_all(
        &broker.addr,
        "txn-visibility",
        3,
        "read_uncommitted",
        &everything,
    );
    assert_eq!(sorted(uncommitted), sorted(everything));
}

/// Reads until every value of `expected` was seen, then a little longer to catch extras.
fn wait_for_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
    expected: &[String],
) -> Vec<String> {
    let consumer = consumer(bootstrap, "txn-test-reader", isolation);
    clients::assign_from_beginning(&consumer, topic, partitions);
    let mut out: Vec<String> = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while !expected.iter().all(|e| out.contains(e)) && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let m = message.expect("consume");
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    // Anything that should not be visible would have come with what was read.
    while let Some(message) = consumer.poll(Duration::from_millis(300)) {
        let m = message.expect("consume");
        out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
    }
    out
}

#[test]
fn a_new_producer_with_the_same_transactional_id_fences_the_old_one() {
    let broker = Broker::start(2);
    create_topic(&broker.addr, "txn-fencing", 2);
    let first = transactional_producer(&broker.addr, "fenced-id", 60_000);
    first.begin_transaction().unwrap();
    send(&first, "txn-fencing", 2, &values("zombie", 4));

    // The second producer's init aborts what the first left open and bumps the epoch.
    let second = transactional_producer(&broker.addr, "fenced-id", 60_000);
    second.begin_transaction().unwrap();
    send(&second, "txn-fencing", 2, &values("fresh", 4));
    second.commit_transaction(TIMEOUT).expect("second commits");

    let error = first
        .commit_transaction(TIMEOUT)
        .expect_err("the fenced producer cannot commit");
    assert!(
        is_fenced(&error),
        "expected a fatal fencing error, got {error:?}"
    );

    let seen = wait_for_all(
        &broker.addr,
        "txn-fencing",
        2,
        "read_committed",
        &values("fresh", 4),
    );
    assert_eq!(sorted(seen), sorted(values("fresh", 4)));
}

#[test]
fn a_transaction_past_its_timeout_is_aborted() {
    let broker = Broker::start(2);
    create_topic(&broker.addr, "txn-timeout", 1);
    let abandoned = transactional_producer(&broker.addr, "slow", 2_000);
    abandoned.begin_transaction().unwrap();
    send(&abandoned, "txn-timeout", 1, &values("abandoned", 5));

    // A later committed transaction of another producer sits behind the open one: a
    // read_committed consumer reaches it only once the coordinator aborted the open one.
    let other = transactional_producer(&broker.addr, "other", 60_000);
    other.begin_transaction().unwrap();
    send(&other, "txn-timeout", 1, &values("after", 2));
    other.commit_transaction(TIMEOUT).unwrap();

    let started = Instant::now();
    let seen = read_until(&broker.addr, "txn-timeout", 1, "read_committed", "after-1");
    assert_eq!(
        seen,
        values("after", 2),
        "the abandoned records must never appear"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(abandoned);
}

#[test]
fn offsets_sent_to_a_transaction_become_visible_on_commit() {
    let broker = Broker::start(2);
    create_topic(&broker.addr, "txn-input", 1);
    create_topic(&broker.addr, "txn-output", 1);
    let group = "txn-transformer";
    let producer = transactional_producer(&broker.addr, "transformer", 60_000);
    let input = consumer(&broker.addr, group, "read_committed");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset("txn-input", 0, Offset::Beginning)
        .unwrap();
    input.assign(&assignment).unwrap();
    // A read_committed consumer asks for stable offsets only (OffsetFetch require_stable) and
    // is answered UNSTABLE_OFFSET_COMMIT, and retries, while a transaction's offsets are
    // pending: the group's committed offsets are observed with a read_uncommitted one.
    let observer = consumer(&broker.addr, group, "read_uncommitted");

    let committed_offset = |consumer: &BaseConsumer| -> Offset {
        let mut wanted = TopicPartitionList::new();
        wanted.add_partition("txn-input", 0);
        let committed = consumer
            .committed_offsets(wanted, TIMEOUT)
            .expect("committed");
        committed.elements()[0].offset()
    };

    // Aborted: the offsets never reach the group.
    producer.begin_transaction().unwrap();
    send(&producer, "txn-output", 1, &values("out-aborted", 2));
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("txn-input", 0, Offset::Offset(5))
        .unwrap();
    producer
        .send_offsets_to_transaction(&offsets, &input.group_metadata().unwrap(), TIMEOUT)
        .expect("send offsets");
    assert_eq!(committed_offset(&observer), Offset::Invalid);
    producer.abort_transaction(TIMEOUT).unwrap();
    assert_eq!(committed_offset(&observer), Offset::Invalid);

    // Committed: visible once the transaction commits, not before.
    producer.begin_transaction().unwrap();
    send(&producer, "txn-output", 1, &values("out", 2));
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("txn-input", 0, Offset::Offset(7))
        .unwrap();
    producer
        .send_offsets_to_transaction(&offsets, &input.group_metadata().unwrap(), TIMEOUT)
        .expect("send offsets");
    assert_eq!(committed_offset(&observer), Offset::Invalid);
    producer.commit_transaction(TIMEOUT).unwrap();
    assert_eq!(committed_offset(&input), Offset::Offset(7));
    assert_eq!(committed_offset(&observer), Offset::Offset(7));
}

#[test]
fn kill9_mid_transaction_keeps_committed_records_and_aborts_the_open_transaction() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = Broker::start_in(dir.path(), 2, &[]);
    create_topic(&broker.addr, "txn-crash", 2);
    let producer = transactional_producer(&broker.addr, "crashing", 3_000);
    producer.begin_transaction().unwrap();
    send(&producer, "txn-crash", 2, &values("committed", 6));
    producer.commit_transaction(TIMEOUT).expect("commit");
    producer.begin_transaction().unwrap();
    send(&producer, "txn-crash", 2, &values("open", 6));
    broker.kill9();
    drop(producer);

    // Same data directory: the partitions find the open transaction in their logs (the last
    // stable offset stays before it) and the coordinator, from its state log, aborts it once
    // its 3 s timeout has passed.
    let broker = Broker::start_in(dir.path(), 2, &[]);
    let other = transactional_producer(&broker.addr, "after-crash", 60_000);
    other.begin_transaction().unwrap();
    send(&other, "txn-crash", 2, &values("after", 2));
    other
        .commit_transaction(TIMEOUT)
        .expect("commit after restart");

    let mut expected = values("committed", 6);
    expected.extend(values("after", 2));
    let seen = wait_for_all(&broker.addr, "txn-crash", 2, "read_committed", &expected);
    assert_eq!(sorted(seen), sorted(expected));

    let mut everything = values("committed", 6);
    everything.extend(values("open", 6));
    everything.extend(values("after", 2));
    let seen = wait_for_all(
        &broker.addr,
        "txn-crash",
        2,
        "read_uncommitted",
        &everything,
    );
    assert_eq!(sorted(seen), sorted(everything));
}

/// DescribeTransactions, ListTransactions and DescribeProducers through raw protocol requests
/// (the Rust and Python admin clients available here expose none of the three).
#[test]
fn transactions_and_producers_are_described() {
    use common::raw::RawClient;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    let broker = Broker::start(2);
    create_topic(&broker.addr, "txn-described", 2);
    let producer = transactional_producer(&broker.addr, "described", 60_000);
    producer.begin_transaction().unwrap();
    send(&producer, "txn-described", 1, &values("open", 3));

    let mut raw = RawClient::connect(&broker.addr);
    let describe = |raw: &mut RawClient| {
        let mut request = DescribeTransactionsRequest::default();
        request.transactional_ids = vec![
            TransactionalId(StrBytes::from_static_str("described")),
            TransactionalId(StrBytes::from_static_str("nobody")),
        ];
        raw.call(0, &request).transaction_states
    };
    let states = describe(&mut raw);
    assert_eq!(states[0].error_code, 0);
    assert_eq!(states[0].transaction_state.as_str(), "Ongoing");
    assert_eq!(states[0].transaction_timeout_ms, 60_000);
    assert_eq!(states[0].topics.len(), 1);
    assert_eq!(states[0].topics[0].topic.0.as_str(), "txn-described");
    assert_eq!(states[0].topics[0].partitions, vec![0]);
    assert!(states[0].transaction_start_time_ms > 0);
    let producer_id = states[0].producer_id;
    // TRANSACTIONAL_ID_NOT_FOUND
    assert_eq!(states[1].error_code, 105);

    let mut list = ListTransactionsRequest::default();
    list.state_filters = vec![StrBytes::from_static_str("Ongoing")];
    list.duration_filter = -1;
    let listed = raw.call(1, &list).transaction_states;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].transactional_id.0.as_str(), "described");
    assert_eq!(listed[0].producer_id, producer_id);

    let describe_producers = |raw: &mut RawClient| {
        let mut topic = describe_producers_request::TopicRequest::default();
        topic.name = TopicName(StrBytes::from_static_str("txn-described"));
        topic.partition_indexes = vec![0];
        let mut request = DescribeProducersRequest::default();
        request.topics = vec![topic];
        raw.call(0, &request).topics[0].partitions[0].clone()
    };
    let partition = describe_producers(&mut raw);
    assert_eq!(partition.error_code, 0);
    assert_eq!(partition.active_producers.len(), 1);
    let active = &partition.active_producers[0];
    assert_eq!(active.producer_id, producer_id);
    assert_eq!(active.last_sequence, 2);
    assert_eq!(active.current_txn_start_offset, 0);

    producer.commit_transaction(TIMEOUT).unwrap();
    assert_eq!(
        describe(&mut raw)[0].transaction_state.as_str(),
        "CompleteCommit"
    );
    assert!(raw.call(1, &list).transaction_states.is_empty());
    let partition = describe_producers(&mut raw);
    assert_eq!(partition.active_producers[0].current_txn_start_offset, -1);
}

/// confluent-kafka's transactional producer and read_committed consumer, and kafka-python's
/// admin client (describe_transactions, list_transactions, describe_producers).
#[test]
fn python_clients_use_transactions_and_describe_them() {
    let broker = Broker::start(2);
    create_topic(&broker.addr, "py-txn", 1);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/transactions.py");
    let output = std::process::Command::new("python3")
        .args([script, &broker.addr, "py-txn"])
        .output()
        .expect("python3 (run the README's test command, which installs the clients)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("transactions ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// WriteTxnMarkers (what `kafka-transactions.sh abort` sends for a hanging transaction): an
/// abort marker written directly to the partition releases read_committed consumers; a marker
/// at an older epoch than the partition knows is refused.
#[test]
fn write_txn_markers_aborts_a_hanging_transaction() {
    use common::raw::RawClient;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    let broker = Broker::start(2);
    create_topic(&broker.addr, "txn-hanging", 1);
    let producer = transactional_producer(&broker.addr, "hanging", 600_000);
    producer.begin_transaction().unwrap();
    send(&producer, "txn-hanging", 1, &values("hanging", 3));

    let mut raw = RawClient::connect(&broker.addr);
    let mut topic = describe_producers_request::TopicRequest::default();
    topic.name = TopicName(StrBytes::from_static_str("txn-hanging"));
    topic.partition_indexes = vec![0];
    let mut describe = DescribeProducersRequest::default();
    describe.topics = vec![topic];
    let active = raw.call(0, &describe).topics[0].partitions[0].active_producers[0].clone();

    let markers = |epoch: i16| {
        let mut topic = write_txn_markers_request::WritableTxnMarkerTopic::default();
        topic.name = TopicName(StrBytes::from_static_str("txn-hanging"));
        topic.partition_indexes = vec![0];
        let mut marker = write_txn_markers_request::WritableTxnMarker::default();
        marker.producer_id = active.producer_id;
        marker.producer_epoch = epoch;
        marker.transaction_result = false;
        marker.topics = vec![topic];
        let mut request = WriteTxnMarkersRequest::default();
        request.markers = vec![marker];
        request
    };
    let stale = raw.call(1, &markers(active.producer_epoch as i16 - 1));
    // INVALID_PRODUCER_EPOCH
    assert_eq!(stale.markers[0].topics[0].partitions[0].error_code, 47);
    let written = raw.call(1, &markers(active.producer_epoch as i16));
    assert_eq!(written.markers[0].topics[0].partitions[0].error_code, 0);

    let other = transactional_producer(&broker.addr, "after-hanging", 60_000);
    other.begin_transaction().unwrap();
    send(&other, "txn-hanging", 1, &values("after", 1));
    other.commit_transaction(TIMEOUT).unwrap();
    let seen = read_until(&broker.addr, "txn-hanging", 1, "read_committed", "after-0");
    assert_eq!(seen, values("after", 1));
    drop(producer);
}

/// Three brokers: the coordinator writes markers to partitions other brokers lead with
/// WriteTxnMarkers (its state is in the replicated `__transaction_state`:
/// `transactions_cluster.rs` kills it).
#[test]
fn transactions_span_partitions_led_by_other_brokers() {
    let cluster = common::cluster::Cluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();
    let mut client = common::raw::RawClient::connect(&cluster.broker(0).addr);
    assert_eq!(client.create_topic_rf("txn-cluster", 3, 1).0, 0);
    let metadata = common::cluster::metadata(&cluster.broker(0).addr);
    let leaders: std::collections::HashSet<i32> =
        common::cluster::partitions_of(&metadata, "txn-cluster")
            .expect("topic in metadata")
            .iter()
            .map(|p| p.leader)
            .collect();
    assert!(
        leaders.len() > 1,
        "partitions led by more than one broker: {leaders:?}"
    );
    let producer = transactional_producer(&bootstrap, "clustered", 60_000);
    producer.begin_transaction().unwrap();
    send(&producer, "txn-cluster", 3, &values("committed", 6));
    producer.commit_transaction(TIMEOUT).expect("commit");
    producer.begin_transaction().unwrap();
    send(&producer, "txn-cluster", 3, &values("aborted", 6));
    producer.abort_transaction(TIMEOUT).expect("abort");
    producer.begin_transaction().unwrap();
    send(&producer, "txn-cluster", 3, &values("last", 3));
    producer.commit_transaction(TIMEOUT).expect("commit");

    let mut expected = values("committed", 6);
    expected.extend(values("last", 3));
    let seen = wait_for_all(&bootstrap, "txn-cluster", 3, "read_committed", &expected);
    assert_eq!(sorted(seen), sorted(expected));
}

/// The `.log` segment files of the log in `dir`: (base offset, bytes).
fn segments(dir: &std::path::Path) -> Vec<(i64, u64)> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| {
            let base = e
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .parse()
                .unwrap();
            (base, e.metadata().unwrap().len())
        })
        .collect()
}

fn log_bytes(dir: &std::path::Path) -> u64 {
    segments(dir).iter().map(|(_, bytes)| bytes).sum()
}

/// Single node: the state log `__transaction_state-0` is compacted by the log cleaner (many
/// transactions on a few ids leave the newest state of each), and a restart still restores
/// every id's producer id and state from what the cleaner kept.
#[test]
fn the_transaction_state_log_is_compacted_and_still_restores_the_state() {
    use common::raw::RawClient;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    let dir = tempfile::tempdir().expect("temp dir");
    let extra = [
        "--override",
        "transaction.state.log.segment.bytes=16384",
        "--override",
        "log.cleaner.backoff.ms=200",
        "--override",
        "log.cleaner.min.cleanable.ratio=0.01",
    ];
    let mut broker = Broker::start_in(dir.path(), 2, &extra);
    create_topic(&broker.addr, "txn-compacted", 1);
    let ids = ["compacted-a", "compacted-b", "compacted-c"];
    let producers: Vec<TxnProducer> = ids
        .iter()
        .map(|id| transactional_producer(&broker.addr, id, 60_000))
        .collect();
    let rounds = 80;
    for round in 0..rounds {
        for (producer, id) in producers.iter().zip(ids) {
            producer.begin_transaction().unwrap();
            send(producer, "txn-compacted", 1, &[format!("{id}-{round}")]);
            producer.commit_transaction(TIMEOUT).expect("commit");
        }
    }
    let state_dir = dir.path().join("data").join("__transaction_state-0");
    let compacted = common::wait_until(Duration::from_secs(60), || {
        broker.log().lines().any(|l| {
            l.contains("log cleaner compacted segments") && l.contains("__transaction_state-0")
        })
    });
    assert!(compacted, "{}", broker.log());
    // Three ids' newest states fit in far less than one 16 KiB segment; the active segment
    // (never cleaned) and the cleaned ones together stay within a few segments, whatever the
    // number of transactions (240 here wrote about 100 KiB of states).
    let bounded = common::wait_until(Duration::from_secs(30), || {
        log_bytes(&state_dir) <= 3 * 16384
    });
    assert!(bounded, "state log still {} bytes", log_bytes(&state_dir));
    // Every transaction wrote its states: the active segment starts far into the log.
    let records_written = segments(&state_dir).iter().map(|(base, _)| *base).max();
    assert!(
        records_written.is_some_and(|offset| offset >= 2 * rounds as i64),
        "{:?}",
        segments(&state_dir)
    );
    // The figures, for the README (`--nocapture`).
    for line in broker.log().lines().filter(|l| {
        l.contains("log cleaner compacted segments") && l.contains("__transaction_state-0")
    }) {
        eprintln!("{line}");
    }
    eprintln!(
        "state log after cleaning: {} bytes in {:?} (base offset, bytes)",
        log_bytes(&state_dir),
        segments(&state_dir)
    );

    let describe = |addr: &str| {
        let mut raw = RawClient::connect(addr);
        let mut request = DescribeTransactionsRequest::default();
        request.transactional_ids = ids
            .iter()
            .map(|id| TransactionalId(StrBytes::from_static_str(id)))
            .collect();
        raw.call(0, &request)
            .transaction_states
            .into_iter()
            .map(|s| {
                assert_eq!(s.error_code, 0, "{s:?}");
                (
                    s.producer_id.0,
                    s.producer_epoch,
                    s.transaction_state.to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = describe(&broker.addr);
    assert!(before.iter().all(|(_, _, state)| state == "CompleteCommit"));
    drop(producers);
    broker.stop();
    let broker = Broker::start_in(dir.path(), 2, &extra);
    assert_eq!(describe(&broker.addr), before);
    // The restored epoch fences: a new producer of an id continues after it.
    let again = transactional_producer(&broker.addr, ids[0], 60_000);
    again.begin_transaction().unwrap();
    send(&again, "txn-compacted", 1, &["after-restart".to_string()]);
    again
        .commit_transaction(TIMEOUT)
        .expect("commit after restart");
    let after = describe(&broker.addr);
    assert_eq!(after[0].0, before[0].0, "same producer id");
    assert_eq!(after[0].1, before[0].1 + 1, "next epoch");
}

/// Single node, kill -9 while a transaction's offsets are pending: the restarted broker
/// replays the offsets log honouring its markers: the offsets an earlier transaction committed
/// are the group's, the pending ones stay invisible and go when the coordinator aborts their
/// transaction at its timeout (a read_committed fetch is then stable again).
#[test]
fn pending_transactional_offsets_survive_kill9_as_pending_and_are_aborted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = Broker::start_in(dir.path(), 2, &[]);
    create_topic(&broker.addr, "txn-offsets-in", 1);
    create_topic(&broker.addr, "txn-offsets-out", 1);
    let group = "txn-offsets-replayed";
    let input = consumer(&broker.addr, group, "read_committed");
    let metadata = input.group_metadata().unwrap();
    let offsets_at = |offset: i64| {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset("txn-offsets-in", 0, Offset::Offset(offset))
            .unwrap();
        offsets
    };
    let producer = transactional_producer(&broker.addr, "offsets-replayed", 3_000);
    producer.begin_transaction().unwrap();
    send(&producer, "txn-offsets-out", 1, &values("committed", 1));
    producer
        .send_offsets_to_transaction(&offsets_at(5), &metadata, TIMEOUT)
        .unwrap();
    producer.commit_transaction(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    send(&producer, "txn-offsets-out", 1, &values("open", 1));
    producer
        .send_offsets_to_transaction(&offsets_at(9), &metadata, TIMEOUT)
        .unwrap();
    broker.kill9();
    drop(producer);

    let broker = Broker::start_in(dir.path(), 2, &[]);
    let observer = consumer(&broker.addr, group, "read_uncommitted");
    let committed = || {
        let mut wanted = TopicPartitionList::new();
        wanted.add_partition("txn-offsets-in", 0);
        observer
            .committed_offsets(wanted, TIMEOUT)
            .expect("committed")
            .elements()[0]
            .offset()
    };
    assert_eq!(
        committed(),
        Offset::Offset(5),
        "the committed transaction's offsets"
    );
    // The open transaction is aborted at its timeout: a stable fetch answers again, with the
    // offsets of the committed one.
    let stable = |addr: &str| {
        use kafka_protocol::messages::*;
        use kafka_protocol::protocol::StrBytes;
        let mut topic = offset_fetch_request::OffsetFetchRequestTopic::default();
        topic.name = TopicName(StrBytes::from_static_str("txn-offsets-in"));
        topic.partition_indexes = vec![0];
        let mut request = OffsetFetchRequest::default();
        request.group_id = GroupId(StrBytes::from_static_str(group));
        request.topics = Some(vec![topic]);
        request.require_stable = true;
        let response = common::raw::RawClient::connect(addr).call(7, &request);
        let p = &response.topics[0].partitions[0];
        (p.error_code, p.committed_offset)
    };
    assert!(
        common::wait_until(TIMEOUT, || stable(&broker.addr) == (0, 5)),
        "{:?}",
        stable(&broker.addr)
    );
    assert_eq!(committed(), Offset::Offset(5));

    let successor = transactional_producer(&broker.addr, "offsets-replayed", 60_000);
    successor.begin_transaction().unwrap();
    send(&successor, "txn-offsets-out", 1, &values("after", 1));
    successor
        .send_offsets_to_transaction(&offsets_at(12), &metadata, TIMEOUT)
        .unwrap();
    successor.commit_transaction(TIMEOUT).unwrap();
    assert_eq!(committed(), Offset::Offset(12));
}
