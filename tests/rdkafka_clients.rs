//! librdkafka (through the `rdkafka` crate) against the real broker binary.

#[path = "common/clients.rs"]
mod clients;
mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::Broker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

fn admin(broker: &Broker) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .expect("admin client")
}

async fn create_topic(broker: &Broker, name: &str, partitions: i32) {
    let results = admin(broker)
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topics");
    results[0].as_ref().expect("topic created");
}

fn producer(broker: &Broker, extra: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &broker.addr)
        .set("acks", "all")
        .set("linger.ms", "5");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("producer")
}

/// Reads `expected` messages from every partition of `topic`, from the beginning.
fn consume_all(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<(i32, i64, Vec<u8>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "unused-assign-only")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    clients::assign_from_beginning(&consumer, topic, partitions);
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while out.len() < expected && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let m = message.expect("consume");
            out.push((
                m.partition(),
                m.offset(),
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    // Nothing beyond what was produced shows up.
    if let Some(Ok(extra)) = consumer.poll(Duration::from_millis(300)) {
        panic!(
            "unexpected extra message at {}:{}",
            extra.partition(),
            extra.offset()
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_messages_round_trip_in_order_over_partitions_and_shards() {
    // Three shards on a two-CPU machine: exercises the unpinned path and cross-shard routing.
    let broker = Broker::start(3);
    create_topic(&broker, "orders", 6).await;
    let producer = producer(&broker, &[]);
    let messages = 3000;
    let mut sends = Vec::new();
    for i in 0..messages {
        let key = format!("customer-{}", i % 40);
        let value = format!("{key}:{i}");
        let producer = producer.clone();
        sends.push(async move {
            producer
                .send(
                    FutureRecord::to("orders").key(&key).payload(&value),
                    TIMEOUT,
                )
                .await
                .map_err(|(e, _)| e)
        });
    }
    let acks = futures::future::join_all(sends).await;
    let acked: Vec<(i32, i64)> = acks
        .into_iter()
        .map(|r| r.expect("acked"))
        .map(|d| (d.partition, d.offset))
        .collect();
    assert_eq!(
        acked.iter().collect::<HashSet<_>>().len(),
        messages,
        "every ack has its own offset"
    );

    let consumed = consume_all(&broker, "orders", 6, messages);
    assert_eq!(consumed.len(), messages, "no loss");
    let mut partitions_of_key: HashMap<Vec<u8>, HashSet<i32>> = HashMap::new();
    let mut last_seq: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut seen = HashSet::new();
    for (partition, _, key, value) in &consumed {
        partitions_of_key
            .entry(key.clone())
            .or_default()
            .insert(*partition);
        let value = String::from_utf8(value.clone()).unwrap();
        let seq: i64 = value.rsplit(':').next().unwrap().parse().unwrap();
        assert!(seen.insert(seq), "duplicate {value}");
        let last = last_seq.entry(key.clone()).or_insert(-1);
        assert!(seq > *last, "per-key order broken at {value}");
        *last = seq;
    }
    assert!(
        partitions_of_key.values().all(|p| p.len() == 1),
        "a key stays on one partition"
    );
    let used: HashSet<i32> = consumed.iter().map(|c| c.0).collect();
    assert_eq!(used.len(), 6, "all partitions (on all shards) carry data");
}

/// A consumer catching up on a backlog no cache holds: with the tail cache at one byte every
/// fetch reads segment bytes the O_DIRECT appends left out of the page cache, so the broker
/// reads them with O_DIRECT into memory and answers from there (`storage::direct_read`),
/// librdkafka's 1 MiB per partition cutting the last batch of most answers. Every message
/// comes back once, in order, with its bytes, from partitions on both shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_consumer_reads_a_cold_backlog_whole() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let broker = Broker::start_in(
        tmp.path(),
        2,
        &[
            "--override",
            "log.tail.cache.bytes=1",
            "--http",
            "127.0.0.1:0",
        ],
    );
    create_topic(&broker, "backlog", 4).await;
    let producer = producer(&broker, &[("batch.size", "262144"), ("linger.ms", "20")]);
    let messages = 800; // 8 MiB of 10 KiB values over 4 partitions
    let value_of = |i: usize| -> Vec<u8> {
        let mut value = format!("{i:08}:").into_bytes();
        value.resize(10 << 10, b'a' + (i % 26) as u8);
        value
    };
    let sends = (0..messages).map(|i| {
        let producer = producer.clone();
        let value = value_of(i);
        async move {
            producer
                .send(
                    FutureRecord::to("backlog")
                        .partition((i % 4) as i32)
                        .key(&i.to_string())
                        .payload(&value),
                    TIMEOUT,
                )
                .await
                .map_err(|(e, _)| e)
                .expect("acked")
        }
    });
    futures::future::join_all(sends).await;

    let consumed = consume_all(&broker, "backlog", 4, messages);
    assert_eq!(consumed.len(), messages, "no loss");
    let mut next_offset = [0i64; 4];
    let mut seen = HashSet::new();
    for (partition, offset, key, value) in &consumed {
        let i: usize = String::from_utf8(key.clone()).unwrap().parse().unwrap();
        assert_eq!(*partition, (i % 4) as i32);
        assert_eq!(
            *offset, next_offset[*partition as usize],
            "in order, none skipped"
        );
        next_offset[*partition as usize] += 1;
        assert!(value == &value_of(i), "message {i}'s bytes");
        assert!(seen.insert(i), "message {i} twice");
    }
    let metrics = common::http_get(broker.console.as_deref().expect("console"), "/metrics");
    let read_into_memory = common::metric(&metrics, "broker_fetch_direct_read_bytes_total");
    assert!(
        read_into_memory >= (4 << 20) as f64,
        "{read_into_memory} bytes read with O_DIRECT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_compression_codecs_round_trip() {
    let broker = Broker::start(2);
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        create_topic(&broker, &topic, 1).await;
        let producer = producer(&broker, &[("compression.type", codec), ("linger.ms", "20")]);
        let sends: Vec<_> = (0..500)
            .map(|i| {
                let producer = producer.clone();
                let topic = topic.clone();
                async move {
                    let value = format!("{codec} message {i} {}", "z".repeat(100));
                    producer
                        .send(FutureRecord::to(&topic).key("k").payload(&value), TIMEOUT)
                        .await
                        .map_err(|(e, _)| e)
                }
            })
            .collect();
        for r in futures::future::join_all(sends).await {
            r.expect("acked");
        }
        let consumed = consume_all(&broker, &topic, 1, 500);
        assert_eq!(consumed.len(), 500, "{codec}");
        for (i, (_, offset, _, value)) in consumed.iter().enumerate() {
            assert_eq!(*offset, i as i64);
            assert!(String::from_utf8_lossy(value).starts_with(&format!("{codec} message {i} ")));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_round_trip() {
    let broker = Broker::start(2);
    create_topic(&broker, "large", 2).await;
    let producer = producer(&broker, &[("message.max.bytes", "1000000")]);
    for i in 0..6u8 {
        let value = vec![i; 900_000];
        producer
            .send(
                FutureRecord::to("large")
                    .key(&[i][..])
                    .payload(&value)
                    .partition((i % 2) as i32),
                TIMEOUT,
            )
            .await
            .map_err(|(e, _)| e)
            .expect("acked");
    }
    let consumed = consume_all(&broker, "large", 2, 6);
    assert_eq!(consumed.len(), 6);
    for (_, _, key, value) in consumed {
        assert_eq!(value.len(), 900_000);
        assert!(value.iter().all(|b| *b == key[0]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_earliest_latest_and_by_timestamp() {
    let broker = Broker::start(2);
    create_topic(&broker, "times", 1).await;
    let producer = producer(&broker, &[("linger.ms", "0")]);
    let base = 1_700_000_000_000i64;
    for i in 0..20i64 {
        producer
            .send(
                FutureRecord::to("times")
                    .key("k")
                    .payload("v")
                    .timestamp(base + i * 1000),
                TIMEOUT,
            )
            .await
            .map_err(|(e, _)| e)
            .expect("acked");
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "offsets")
        .create()
        .unwrap();
    assert_eq!(
        consumer.fetch_watermarks("times", 0, TIMEOUT).unwrap(),
        (0, 20)
    );
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset("times", 0, Offset::Offset(base + 7_500))
        .unwrap();
    let found = consumer.offsets_for_times(query, TIMEOUT).unwrap();
    assert_eq!(
        found.find_partition("times", 0).unwrap().offset(),
        Offset::Offset(8)
    );
    let mut late = TopicPartitionList::new();
    late.add_partition_offset("times", 0, Offset::Offset(base + 1_000_000))
        .unwrap();
    let found = consumer.offsets_for_times(late, TIMEOUT).unwrap();
    assert_eq!(
        found.find_partition("times", 0).unwrap().offset(),
        Offset::End
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_refused_and_deleted() {
    let broker = Broker::start(2);
    let admin = admin(&broker);
    let options = AdminOptions::new();
    create_topic(&broker, "doomed", 4).await;
    let again = admin
        .create_topics(
            &[NewTopic::new("doomed", 4, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .unwrap();
    assert_eq!(
        again[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::TopicAlreadyExists
    );
    let too_many = admin
        .create_topics(
            &[NewTopic::new("rf3", 1, TopicReplication::Fixed(3))],
            &options,
        )
        .await
        .unwrap();
    assert_eq!(
        too_many[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::InvalidReplicationFactor
    );

    let producer = producer(&broker, &[]);
    producer
        .send(
            FutureRecord::to("doomed")
                .key("k")
                .payload("old")
                .partition(0),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert!(broker.data_dir.join("doomed-0").exists());
    let deleted = admin.delete_topics(&["doomed"], &options).await.unwrap();
    deleted[0].as_ref().expect("deleted");
    assert!(
        !broker.data_dir.join("doomed-0").exists(),
        "partition directories are removed"
    );
    let metadata = producer.client().fetch_metadata(None, TIMEOUT).unwrap();
    assert!(metadata.topics().iter().all(|t| t.name() != "doomed"));

    // Re-created under the same name it starts empty.
    create_topic(&broker, "doomed", 2).await;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "g")
        .create()
        .unwrap();
    assert_eq!(
        consumer.fetch_watermarks("doomed", 0, TIMEOUT).unwrap(),
        (0, 0)
    );
    let missing = admin
        .delete_topics(&["never-existed"], &options)
        .await
        .unwrap();
    assert_eq!(
        missing[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::UnknownTopicOrPartition
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_writes_each_message_once() {
    let broker = Broker::start(2);
    create_topic(&broker, "exactly", 3).await;
    let producer = producer(
        &broker,
        &[
            ("enable.idempotence", "true"),
            ("max.in.flight.requests.per.connection", "5"),
        ],
    );
    let sends: Vec<_> = (0..2000)
        .map(|i| {
            let producer = producer.clone();
            async move {
                let value = i.to_string();
                producer
                    .send(
                        FutureRecord::to("exactly").key(&value).payload(&value),
                        TIMEOUT,
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        })
        .collect();
    for r in futures::future::join_all(sends).await {
        r.expect("acked");
    }
    let consumed = consume_all(&broker, "exactly", 3, 2000);
    let distinct: HashSet<Vec<u8>> = consumed.iter().map(|c| c.3.clone()).collect();
    assert_eq!((consumed.len(), distinct.len()), (2000, 2000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_creation_follows_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("server.properties");
    std::fs::write(&config, "auto.create.topics.enable=false\n").unwrap();
    let broker = Broker::start_in(tmp.path(), 1, &["--config", config.to_str().unwrap()]);
    let producer = producer(&broker, &[("message.timeout.ms", "2000")]);
    let err = producer
        .send(FutureRecord::to("not-there").key("k").payload("v"), TIMEOUT)
        .await
        .unwrap_err()
        .0;
    assert!(
        matches!(
            err,
            KafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::MessageTimedOut
                    | RDKafkaErrorCode::UnknownTopic
            )
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_configs_shows_topic_overrides_and_broker_defaults() {
    use rdkafka::admin::{ConfigSource, ResourceSpecifier};
    let broker = Broker::start(1);
    let admin = admin(&broker);
    let topic =
        NewTopic::new("configured", 1, TopicReplication::Fixed(1)).set("retention.ms", "3600000");
    admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let results = admin
        .describe_configs(
            &[
                ResourceSpecifier::Topic("configured"),
                ResourceSpecifier::Broker(0),
            ],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let topic = results[0].as_ref().expect("topic configs");
    let retention = topic.get("retention.ms").expect("retention.ms listed");
    assert_eq!(retention.value.as_deref(), Some("3600000"));
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    let segment = topic.get("segment.bytes").expect("segment.bytes listed");
    assert_eq!(segment.value.as_deref(), Some("1073741824"));
    assert!(segment.is_default);
    let broker_configs = results[1].as_ref().expect("broker configs");
    assert_eq!(
        broker_configs
            .get("broker.id")
            .and_then(|e| e.value.as_deref()),
        Some("0")
    );
}
