//! rdkafka clients set up the way several test files need them. Not in `common/mod.rs`, so
//! the test binaries that use no rdkafka client do not link it: include it with
//! `#[path = "common/clients.rs"] mod clients;`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

pub type TxnProducer = ThreadedProducer<DefaultProducerContext>;

/// A transactional producer with `transactional_id`, transactions timing out after
/// `timeout_ms`, its transactions initialised.
pub fn transactional_producer(
    bootstrap: &str,
    transactional_id: &str,
    timeout_ms: u32,
) -> TxnProducer {
    transactional_producer_with(bootstrap, transactional_id, timeout_ms, &[])
}

/// [`transactional_producer`] with more client settings.
pub fn transactional_producer_with(
    bootstrap: &str,
    transactional_id: &str,
    timeout_ms: u32,
    settings: &[(&str, &str)],
) -> TxnProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .set("message.timeout.ms", timeout_ms.to_string())
        .set("linger.ms", "5");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let producer: TxnProducer = config.create().expect("transactional producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init_transactions");
    producer
}

/// A consumer in `group` (no automatic commits) assigned partition 0 of `topic` from the
/// beginning, with more client settings.
pub fn assigned_consumer(
    bootstrap: &str,
    group: &str,
    topic: &str,
    settings: &[(&str, &str)],
) -> BaseConsumer {
    let consumer = consumer_with(bootstrap, group, settings);
    assign_from_beginning(&consumer, topic, 1);
    consumer
}

/// Assigns `consumer` partitions `0..partitions` of `topic`, each from its beginning.
pub fn assign_from_beginning(consumer: &BaseConsumer, topic: &str, partitions: i32) {
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
}

/// A consumer in `group` reading with `isolation` (`read_committed` or `read_uncommitted`), no
/// automatic commits, fetches waiting at most 100 ms, with more client settings.
pub fn isolated_consumer(
    bootstrap: &str,
    group: &str,
    isolation: &str,
    settings: &[(&str, &str)],
) -> BaseConsumer {
    let mut all = vec![("isolation.level", isolation), ("fetch.wait.max.ms", "100")];
    all.extend_from_slice(settings);
    consumer_with(bootstrap, group, &all)
}

/// A consumer in `group` with no automatic commits and `settings`.
fn consumer_with(bootstrap: &str, group: &str, settings: &[(&str, &str)]) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    config.create().expect("consumer")
}

/// Sends each of `values` (as key and value) to partition `i % partitions` of `topic`, then
/// waits until all are written.
pub fn send_values(producer: &TxnProducer, topic: &str, partitions: i32, values: &[String]) {
    for (i, value) in values.iter().enumerate() {
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(i as i32 % partitions)
                    .key(value.as_str())
                    .payload(value.as_str()),
            )
            .map_err(|(e, _)| e)
            .expect("enqueue");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// `prefix-0`, `prefix-1`, ... `prefix-(n-1)`.
pub fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Reads partitions `0..partitions` of `topic` from the beginning with `isolation` until a
/// record with value `last` is seen (30 s at most, then fails); returns every value read, in
/// order per partition.
pub fn read_until(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
    last: &str,
) -> Vec<String> {
    let consumer = isolated_consumer(bootstrap, "txn-test-reader", isolation, &[]);
    assign_from_beginning(&consumer, topic, partitions);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !out.iter().any(|v| v == last) && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let m = message.expect("consume");
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    assert!(
        out.iter().any(|v| v == last),
        "{last} never arrived ({isolation}); read {out:?}"
    );
    out
}

/// Creates `name` with `partitions` (replication factor 1) and topic `configs` through the
/// admin client (CreateTopics), failing if the broker refuses.
pub fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let results = runtime
        .block_on(admin.create_topics(&[topic], &AdminOptions::new()))
        .expect("create topics");
    results[0].as_ref().expect("topic created");
}

/// Whether `error` is the fatal error of a fenced transactional producer (a newer epoch of its
/// transactional id exists), as librdkafka reports it.
pub fn is_fenced(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(e) => {
            e.is_fatal()
                && matches!(
                    e.code(),
                    RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::InvalidProducerEpoch
                        | RDKafkaErrorCode::Fenced
                )
        }
        _ => false,
    }
}
