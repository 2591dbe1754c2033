//! KIP-320 from a real client's side: librdkafka (the rdkafka crate) consuming from a
//! replicated partition whose leader is killed validates its position on the new leader with
//! OffsetForLeaderEpoch, which the broker answers, and goes on reading every record once, in
//! order, across the leader change.

#[path = "common/clients.rs"]
mod clients;
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::cluster::{await_metadata, partitions_of, Cluster};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

const WAIT: Duration = Duration::from_secs(30);
const TOPIC: &str = "epochs";

/// `http://HOST:PORT` of a broker's console, from its ready line.
fn console_of(ready_line: &str) -> String {
    let (_, address) = ready_line
        .split_once("console http://")
        .unwrap_or_else(|| panic!("no console in {ready_line:?}"));
    address.trim().to_string()
}

/// The sum of `kafka_network_requestmetrics_requests_total` samples for `request`.
fn requests_served(console: &str, request: &str) -> f64 {
    let mut stream = TcpStream::connect(console).expect("console");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {console}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let label = format!("request=\"{request}\"");
    text.lines()
        .filter(|l| {
            l.starts_with("kafka_network_requestmetrics_requests_total{") && l.contains(&label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn produce(producer: &FutureProducer, from: usize, to: usize) {
    for i in from..to {
        let value = format!("record-{i}");
        producer
            .send(
                FutureRecord::<(), _>::to(TOPIC)
                    .partition(0)
                    .payload(&value),
                WAIT,
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce {i}: {e}"));
    }
}

/// Polls `consumer` until it has `count` records in `seen` (offset -> value).
fn consume_until(consumer: &BaseConsumer, seen: &mut BTreeMap<i64, String>, count: usize) {
    let deadline = Instant::now() + WAIT;
    while seen.len() < count {
        assert!(
            Instant::now() < deadline,
            "read {} of {count} records",
            seen.len()
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let value = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
            let previous = seen.insert(message.offset(), value);
            assert!(
                previous.is_none(),
                "offset {} delivered twice",
                message.offset()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_validates_its_position_with_offset_for_leader_epoch_after_a_leader_change() {
    let mut cluster = Cluster::start(3, &["--http", "127.0.0.1:0"]);
    let bootstrap = cluster.bootstrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(TOPIC, 1, TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(WAIT)),
        )
        .await
        .expect("create topics");
    assert!(created[0].is_ok(), "{created:?}");
    let any = cluster.broker(0).addr.clone();
    let (m, _) = await_metadata(&any, WAIT, "every replica in sync", |m| {
        partitions_of(m, TOPIC).is_some_and(|ps| ps[0].leader >= 0 && ps[0].isr.len() == 3)
    });
    let old_leader = partitions_of(&m, TOPIC).unwrap()[0].leader;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    produce(&producer, 0, 100).await;

    let consumer = clients::assigned_consumer(
        &bootstrap,
        "epochs-reader",
        TOPIC,
        &[("topic.metadata.refresh.interval.ms", "500")],
    );
    let mut seen = BTreeMap::new();
    consume_until(&consumer, &mut seen, 100);

    cluster.kill9(old_leader as usize);
    let survivor = cluster.broker(cluster.running()[0]).addr.clone();
    let (m, _) = await_metadata(&survivor, WAIT, "a new leader", |m| {
        partitions_of(m, TOPIC).is_some_and(|ps| ps[0].leader >= 0 && ps[0].leader != old_leader)
    });
    let new_leader = partitions_of(&m, TOPIC).unwrap()[0].leader as usize;
    let console = console_of(&cluster.broker(new_leader).ready_line);

    produce(&producer, 100, 200).await;
    consume_until(&consumer, &mut seen, 200);
    let expected: BTreeMap<i64, String> = (0..200)
        .map(|i| (i as i64, format!("record-{i}")))
        .collect();
    assert_eq!(seen, expected, "every record once, at its offset");

    // librdkafka validates its fetch position after the leader epoch changed (KIP-320).
    let deadline = Instant::now() + WAIT;
    while requests_served(&console, "OffsetForLeaderEpoch") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the new leader (node {new_leader}) served no OffsetForLeaderEpoch; log:\n{}",
            cluster.log_of(new_leader)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
