//! rdkafka clients set up the way several test files need them. Not in `common/mod.rs`, so
//! the test binaries that use no rdkafka client do not link it: include it with
//! `#[path = "common/clients.rs"] mod clients;`.
#![allow(dead_code)]

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
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
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    consumer
}
