//! Transactions in a three-broker cluster with librdkafka (the `rdkafka` crate): offsets sent
//! to a transaction go through the *group's* coordinator while the transactional id is
//! coordinated by another broker, and a coordinator killed with -9 mid-transaction is replaced
//! by the broker that takes over its transaction state partition.

#[path = "common/clients.rs"]
mod clients;
mod common;

use std::time::{Duration, Instant};

use clients::{read_until, transactional_producer, values, TxnProducer};
use common::cluster::Cluster;
use common::raw::RawClient;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

fn consumer(bootstrap: &str, group: &str, isolation: &str) -> BaseConsumer {
    clients::isolated_consumer(
        bootstrap,
        group,
        isolation,
        &[("auto.offset.reset", "earliest")],
    )
}

/// Sends `values` to partition 0 of `topic`.
fn send(producer: &TxnProducer, topic: &str, values: &[String]) {
    clients::send_values(producer, topic, 1, values);
}

/// The node FindCoordinator names for `key` (key type 0: a group, 1: a transactional id),
/// once it names one (the internal topic is created on first need).
fn coordinator_of(addr: &str, key: &str, key_type: i8) -> (i32, String) {
    let mut client = RawClient::connect(addr);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut request = FindCoordinatorRequest::default();
        request.key = StrBytes::from_string(key.to_string());
        request.key_type = key_type;
        let response = client.call(3, &request);
        if response.error_code == 0 {
            return (
                response.node_id.0,
                format!("{}:{}", response.host, response.port),
            );
        }
        assert!(
            Instant::now() < deadline,
            "no coordinator for {key}: {response:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A group id whose coordinator is not `other` (ids hash onto partitions led by different
/// brokers).
fn group_coordinated_apart_from(addr: &str, other: i32) -> (String, i32, String) {
    for i in 0..200 {
        let group = format!("ctp-group-{i}");
        let (node, address) = coordinator_of(addr, &group, 0);
        if node != other {
            return (group, node, address);
        }
    }
    panic!("every group hashed onto broker {other}");
}

/// OffsetFetch v7 with require_stable to the group's coordinator: the partition's error code
/// and committed offset.
fn stable_offset(coordinator: &str, group: &str, topic: &str) -> (i16, i64) {
    let mut client = RawClient::connect(coordinator);
    let mut wanted = offset_fetch_request::OffsetFetchRequestTopic::default();
    wanted.name = TopicName(StrBytes::from_string(topic.to_string()));
    wanted.partition_indexes = vec![0];
    let mut request = OffsetFetchRequest::default();
    request.group_id = GroupId(StrBytes::from_string(group.to_string()));
    request.topics = Some(vec![wanted]);
    request.require_stable = true;
    let response = client.call(7, &request);
    assert_eq!(response.error_code, 0, "{response:?}");
    let p = &response.topics[0].partitions[0];
    (p.error_code, p.committed_offset)
}

/// A consume-transform-produce loop (librdkafka's `send_offsets_to_transaction`) whose group
/// and transactional id are coordinated by different brokers: TxnOffsetCommit is served by the
/// group's coordinator, the transaction coordinator's markers reach the group's offsets
/// partition on the other broker, and the offsets become the group's only on commit.
#[test]
fn offsets_of_a_transaction_go_through_the_group_coordinator_of_another_broker() {
    let cluster = Cluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();
    let addr = cluster.broker(0).addr.clone();
    let mut client = RawClient::connect(&addr);
    assert_eq!(client.create_topic_rf("ctp-in", 1, 3).0, 0);
    assert_eq!(client.create_topic_rf("ctp-out", 1, 3).0, 0);

    let transactional_id = "ctp-transformer";
    let (txn_node, _) = coordinator_of(&addr, transactional_id, 1);
    let (group, group_node, group_address) = group_coordinated_apart_from(&addr, txn_node);
    assert_ne!(group_node, txn_node);

    let inputs = values("in", 10);
    {
        let plain: rdkafka::producer::BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("producer");
        for value in &inputs {
            plain
                .send(
                    BaseRecord::to("ctp-in")
                        .partition(0)
                        .key(value)
                        .payload(value),
                )
                .map_err(|(e, _)| e)
                .expect("enqueue");
        }
        plain.flush(TIMEOUT).expect("flush");
    }

    let producer = transactional_producer(&bootstrap, transactional_id, 60_000);
    let input = consumer(&bootstrap, &group, "read_committed");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset("ctp-in", 0, Offset::Beginning)
        .unwrap();
    input.assign(&assignment).unwrap();
    let observer = consumer(&bootstrap, &group, "read_uncommitted");
    let committed = || -> Offset {
        let mut wanted = TopicPartitionList::new();
        wanted.add_partition("ctp-in", 0);
        observer
            .committed_offsets(wanted, TIMEOUT)
            .expect("committed")
            .elements()[0]
            .offset()
    };
    let take = |n: usize| -> (Vec<String>, i64) {
        let mut taken = Vec::new();
        let mut next = 0;
        let deadline = Instant::now() + TIMEOUT;
        while taken.len() < n && Instant::now() < deadline {
            if let Some(message) = input.poll(Duration::from_millis(100)) {
                let m = message.expect("consume");
                taken.push(String::from_utf8_lossy(m.payload().unwrap()).into_owned());
                next = m.offset() + 1;
            }
        }
        assert_eq!(taken.len(), n, "inputs read: {taken:?}");
        (taken, next)
    };
    let transform = |taken: &[String]| -> Vec<String> {
        taken.iter().map(|v| v.replace("in-", "out-")).collect()
    };
    // The input position after the taken records, as part of the open transaction.
    let send_offsets = |next: i64| {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset("ctp-in", 0, Offset::Offset(next))
            .unwrap();
        producer
            .send_offsets_to_transaction(&offsets, &input.group_metadata().unwrap(), TIMEOUT)
            .expect("offsets sent to the group's coordinator");
    };

    // Aborted: its outputs and offsets are never seen.
    let (taken, next) = take(5);
    producer.begin_transaction().unwrap();
    send(&producer, "ctp-out", &transform(&taken));
    send_offsets(next);
    // UNSTABLE_OFFSET_COMMIT while the transaction's offsets are pending.
    assert_eq!(stable_offset(&group_address, &group, "ctp-in").0, 88);
    assert_eq!(committed(), Offset::Invalid);
    producer.abort_transaction(TIMEOUT).expect("abort");
    assert_eq!(stable_offset(&group_address, &group, "ctp-in"), (0, -1));
    assert_eq!(committed(), Offset::Invalid);

    // Committed twice: the outputs and the offsets become visible together.
    let mut expected = Vec::new();
    input.seek("ctp-in", 0, Offset::Beginning, TIMEOUT).unwrap();
    for _ in 0..2 {
        let (taken, next) = take(5);
        producer.begin_transaction().unwrap();
        send(&producer, "ctp-out", &transform(&taken));
        expected.extend(transform(&taken));
        send_offsets(next);
        assert_ne!(committed(), Offset::Offset(next), "visible before commit");
        producer.commit_transaction(TIMEOUT).expect("commit");
        assert_eq!(committed(), Offset::Offset(next));
        assert_eq!(stable_offset(&group_address, &group, "ctp-in"), (0, next));
    }
    let seen = read_until(&bootstrap, "ctp-out", 1, "read_committed", "out-9");
    assert_eq!(seen, expected);
}

/// kill -9 of the broker coordinating a transactional id while its transaction is open: the
/// broker that takes over the id's `__transaction_state` partition loads the state from its
/// replica, so a new producer of the id gets the next epoch (the old producer is fenced) and
/// the open transaction is aborted (read_committed consumers never see it, and it no longer
/// holds them back), while what was committed stays visible.
#[test]
fn a_killed_transaction_coordinator_is_replaced_from_the_replicated_state() {
    let mut cluster = Cluster::start(3, &[]);
    let addr = cluster.broker(0).addr.clone();
    let mut client = RawClient::connect(&addr);
    assert_eq!(client.create_topic_rf("failover", 1, 3).0, 0);
    let transactional_id = "failover-transactions";
    let (coordinator, _) = coordinator_of(&addr, transactional_id, 1);

    // The timeout is long: only the takeover can abort the open transaction in this test.
    let producer = transactional_producer(&cluster.bootstrap(), transactional_id, 120_000);
    producer.begin_transaction().unwrap();
    send(&producer, "failover", &values("committed", 5));
    producer.commit_transaction(TIMEOUT).expect("commit");
    producer.begin_transaction().unwrap();
    send(&producer, "failover", &values("open", 5));

    let killed_at = Instant::now();
    cluster.kill9(coordinator as usize);
    let survivors = cluster.bootstrap();
    let survivor = cluster.broker(cluster.running()[0]).addr.clone();
    let mut successor_node = coordinator;
    assert!(
        common::wait_until(Duration::from_secs(60), || {
            successor_node = coordinator_of(&survivor, transactional_id, 1).0;
            successor_node != coordinator
        }),
        "the id still coordinated by the killed broker"
    );

    let coordinator_moved_after = killed_at.elapsed();
    let successor = transactional_producer(&survivors, transactional_id, 120_000);
    successor.begin_transaction().unwrap();
    send(&successor, "failover", &values("after", 5));
    successor
        .commit_transaction(TIMEOUT)
        .expect("commit after the failover");
    // The figures (`--nocapture`).
    eprintln!(
        "coordinator {coordinator} killed: FindCoordinator names {successor_node} after {} ms; \
         the successor's first transaction committed {} ms after the kill",
        coordinator_moved_after.as_millis(),
        killed_at.elapsed().as_millis()
    );

    let error = producer
        .commit_transaction(TIMEOUT)
        .expect_err("the producer of the old epoch is fenced");
    assert!(
        clients::is_fenced(&error),
        "expected a fatal fencing error, got {error:?}"
    );

    let seen = read_until(&survivors, "failover", 1, "read_committed", "after-4");
    let mut expected = values("committed", 5);
    expected.extend(values("after", 5));
    assert_eq!(seen, expected, "the open transaction was aborted");
}
