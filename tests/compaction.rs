//! Log compaction (`cleanup.policy=compact`) against the real broker with real clients:
//! latest value per key, tombstones going on schedule, offsets with gaps read by librdkafka
//! and kafka-python, consumers racing the cleaner, crashes, keyless records refused, and the
//! offsets topic replayed after cleaning.

#[path = "common/clients.rs"]
mod clients;
mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Broker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// Partitions of each topic whose offsets are committed.
const PARTITIONS: i32 = 8;
const TIMEOUT: Duration = Duration::from_secs(30);
const KEYS: usize = 100;
const UPDATES: usize = 50;
/// Records with keys of their own, written last so that the final updates are in closed
/// segments, where the cleaner reaches them.
const FILLERS: usize = 200;

/// A broker whose cleaner runs every 200 ms.
fn start(data_dir: &std::path::Path, extra: &[&str]) -> Broker {
    let mut args = vec!["--override", "log.cleaner.backoff.ms=200"];
    args.extend_from_slice(extra);
    Broker::start_in(data_dir, 2, &args)
}

fn admin(broker: &Broker) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .expect("admin client")
}

async fn create_compacted(broker: &Broker, name: &str, configs: &[(&str, &str)]) {
    let mut topic = NewTopic::new(name, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "16384")
        .set("min.cleanable.dirty.ratio", "0.01");
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin(broker)
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .expect("create topics");
    results[0].as_ref().expect("topic created");
}

fn producer(broker: &Broker) -> FutureProducer {
    producer_with(&broker.addr, "all")
}

fn producer_with(bootstrap: &str, acks: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        // Batches must fit the topics' 16 KiB segments.
        .set("batch.size", "8000")
        .create()
        .expect("producer")
}

/// 100 bytes unlike any other value, so segments fill at the same pace compressed.
fn noise(seed: usize) -> String {
    let mut x = seed as u64 * 2_654_435_761 + 1;
    (0..100)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

fn value(key: usize, update: usize) -> String {
    format!("{update}:{}", noise(key * 1000 + update))
}

/// Sends `records` (key, value or tombstone) and waits for every ack, in order per call.
async fn send(producer: &FutureProducer, topic: &str, records: &[(String, Option<String>)]) {
    let sends = records.iter().map(|(key, value)| {
        let mut record = FutureRecord::to(topic).key(key.as_str());
        if let Some(value) = value {
            record = record.payload(value.as_str());
        }
        producer.send(record, TIMEOUT)
    });
    for result in futures::future::join_all(sends).await {
        result.expect("acked");
    }
}

/// 100 keys x 50 updates, then fillers; returns the last offset written.
async fn fill(producer: &FutureProducer, topic: &str) -> i64 {
    for update in 0..UPDATES {
        let round: Vec<_> = (0..KEYS)
            .map(|k| (format!("key-{k}"), Some(value(k, update))))
            .collect();
        send(producer, topic, &round).await;
    }
    fillers(producer, topic, 0).await
}

async fn fillers(producer: &FutureProducer, topic: &str, first: usize) -> i64 {
    let round: Vec<_> = (first..first + FILLERS)
        .map(|i| (format!("filler-{i}"), Some(noise(i + 1_000_000))))
        .collect();
    send(producer, topic, &round).await;
    (KEYS * UPDATES + first + FILLERS) as i64 - 1
}

type Read = Vec<(i64, String, Option<String>)>;

/// Every record from the start through `last_offset`, as librdkafka delivers them; offsets
/// must strictly increase (gaps allowed).
fn read_all(addr: &str, topic: &str, last_offset: i64) -> Read {
    let consumer = clients::assigned_consumer(
        addr,
        "compaction-reader",
        topic,
        &[("fetch.wait.max.ms", "100")],
    );
    let mut out: Read = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while out.last().is_none_or(|(o, _, _)| *o < last_offset) {
        assert!(
            Instant::now() < deadline,
            "did not reach offset {last_offset}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        // Transient errors (a leader change in the cluster test) are retried by the client;
        // the deadline catches a consumer that never gets there.
        let Ok(m) = message else {
            continue;
        };
        if let Some((previous, _, _)) = out.last() {
            assert!(
                m.offset() > *previous,
                "offset {} after {previous}",
                m.offset()
            );
        }
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
        out.push((m.offset(), text(m.key()).unwrap(), text(m.payload())));
    }
    out
}

fn latest(read: &Read) -> BTreeMap<String, Option<String>> {
    read.iter()
        .map(|(_, k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Records per key in `read`.
fn counts(read: &Read) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, key, _) in read {
        *counts.entry(key.clone()).or_default() += 1;
    }
    counts
}

/// Reads until every `key-*` appears once (the cleaner finished), checking each pass.
fn await_compacted(addr: &str, topic: &str, last_offset: i64) -> Read {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read = read_all(addr, topic, last_offset);
        // Whatever the cleaner did so far, every key reads its final value.
        for k in 0..KEYS {
            assert_eq!(
                latest(&read)[&format!("key-{k}")].as_deref(),
                Some(value(k, UPDATES - 1).as_str())
            );
        }
        let counts = counts(&read);
        if (0..KEYS).all(|k| counts[&format!("key-{k}")] == 1) {
            return read;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted: {} records",
            read.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_updates_compact_to_the_latest_value_per_key_and_clients_read_across_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]);
    create_compacted(&broker, "latest", &[]).await;
    let last = fill(&producer(&broker), "latest").await;
    let read = await_compacted(&broker.addr, "latest", last);
    assert_eq!(read.len(), KEYS + FILLERS, "one record per key");
    // Offsets 0..4900 are a gap now: consumers starting at the log start (0) skip it.
    assert_eq!(
        read[0].0,
        value_at(0),
        "the first record left is key-0's last update"
    );
    assert_eq!(
        read.last().unwrap().0,
        last,
        "offsets are the original ones"
    );
    for (offset, key, value) in &read {
        if let Some(k) = key.strip_prefix("key-") {
            let k: usize = k.parse().unwrap();
            let expected = value_at(k);
            assert_eq!(*offset, expected, "key {key} at its last update's offset");
            assert!(value
                .as_ref()
                .unwrap()
                .starts_with(&format!("{}:", UPDATES - 1)));
        }
    }
    // kafka-python reads the same records across the gaps.
    let script = format!(
        r#"
from kafka import KafkaConsumer, TopicPartition
tp = TopicPartition("latest", 0)
c = KafkaConsumer(bootstrap_servers="{addr}", enable_auto_commit=False, consumer_timeout_ms=10000)
c.assign([tp]); c.seek_to_beginning(tp)
offsets = []
for m in c:
    offsets.append(m.offset)
    if m.offset >= {last}:
        break
assert offsets == sorted(set(offsets)), "increasing"
print(len(offsets), offsets[-1])
"#,
        addr = broker.addr
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("{} {last}", KEYS + FILLERS)
    );
    // ListOffsets earliest is still 0 (compaction never moves the log start).
    let mut raw = common::raw::RawClient::connect(&broker.addr);
    assert_eq!(raw.list_offset("latest", 0, -2), (0, 0));
    // The metrics count the runs.
    let log = broker.log();
    assert!(log.contains("log cleaner compacted segments"), "{log}");
}

/// The offset of key `k`'s last update: rounds of KEYS records in key order.
fn value_at(k: usize) -> i64 {
    ((UPDATES - 1) * KEYS + k) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_stay_for_delete_retention_then_the_key_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]);
    create_compacted(&broker, "deletes", &[("delete.retention.ms", "1000")]).await;
    let producer = producer(&broker);
    let mut last = fill(&producer, "deletes").await;
    let doomed: Vec<_> = (0..10).map(|k| (format!("key-{k}"), None)).collect();
    send(&producer, "deletes", &doomed).await;
    // Fillers past the tombstones so their segment closes.
    let round: Vec<_> = (0..FILLERS)
        .map(|i| (format!("late-{i}"), Some(noise(i + 2_000_000))))
        .collect();
    send(&producer, "deletes", &round).await;
    last += (doomed.len() + FILLERS) as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read = read_all(&broker.addr, "deletes", last);
        let latest = latest(&read);
        for k in 0..10 {
            // Deleted: a tombstone, or nothing at all once it expired; never an old value.
            assert_eq!(latest.get(&format!("key-{k}")).cloned().flatten(), None);
        }
        for k in 10..KEYS {
            assert_eq!(
                latest[&format!("key-{k}")].as_deref(),
                Some(value(k, UPDATES - 1).as_str())
            );
        }
        if (0..10).all(|k| !latest.contains_key(&format!("key-{k}"))) {
            break;
        }
        assert!(Instant::now() < deadline, "tombstones never went away");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reading_while_the_cleaner_runs_sees_a_consistent_log() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]);
    create_compacted(&broker, "racing", &[]).await;
    let producer = producer(&broker);
    let last = fill(&producer, "racing").await;
    // Read from the start repeatedly while the cleaner works (and more updates arrive):
    // read_all checks increasing offsets; every pass has every key's final value.
    let mut passes = 0;
    let start = Instant::now();
    while passes < 5 || start.elapsed() < Duration::from_secs(2) {
        let read = read_all(&broker.addr, "racing", last);
        let latest = latest(&read);
        for k in 0..KEYS {
            assert_eq!(
                latest[&format!("key-{k}")].as_deref(),
                Some(value(k, UPDATES - 1).as_str())
            );
        }
        passes += 1;
    }
    await_compacted(&broker.addr, "racing", last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_while_cleaning_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start(dir.path(), &[]);
    create_compacted(&broker, "crashy", &[]).await;
    let producer = producer(&broker);
    let last = fill(&producer, "crashy").await;
    drop(producer);
    // Kill while a run has cleaned files on disk (`.log.cleaned` / `.log.swap`), when the
    // 20 ms polls catch one; else a little later, after or between runs.
    let dir_of_partition = broker.data_dir.join("crashy-0");
    let caught = common::wait_until(Duration::from_secs(5), || {
        std::fs::read_dir(&dir_of_partition)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(".log."))
            })
            .unwrap_or(false)
    });
    broker.kill9();
    eprintln!("killed with a cleaner run's files on disk: {caught}");
    let broker = start(dir.path(), &[]);
    let read = await_compacted(&broker.addr, "crashy", last);
    assert_eq!(read.len(), KEYS + FILLERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_are_refused_and_configs_are_described() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]);
    create_compacted(&broker, "keys-only", &[("delete.retention.ms", "5000")]).await;
    let producer = producer(&broker);
    let refused = producer
        .send(
            FutureRecord::<str, str>::to("keys-only").payload("no key"),
            TIMEOUT,
        )
        .await;
    let (error, _) = refused.expect_err("a keyless record is refused");
    assert_eq!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::InvalidRecord),
        "{error}"
    );
    send(&producer, "keys-only", &[("k".into(), Some("v".into()))]).await;
    let described = admin(&broker)
        .describe_configs(
            &[ResourceSpecifier::Topic("keys-only")],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let resource = described[0].as_ref().unwrap();
    let entry = |name: &str| {
        resource
            .entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} described"))
    };
    assert_eq!(entry("cleanup.policy").value.as_deref(), Some("compact"));
    assert_eq!(entry("delete.retention.ms").value.as_deref(), Some("5000"));
    assert!(!entry("delete.retention.ms").is_default);
    assert_eq!(entry("min.compaction.lag.ms").value.as_deref(), Some("0"));
    assert!(entry("min.compaction.lag.ms").is_default);
    // compact,delete is accepted too; nonsense is not.
    let both = NewTopic::new("both", 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "delete,compact");
    let bad =
        NewTopic::new("bad", 1, TopicReplication::Fixed(1)).set("min.cleanable.dirty.ratio", "2");
    let results = admin(&broker)
        .create_topics(&[both, bad], &AdminOptions::new())
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert!(results[1].is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_compaction_of_the_offsets_log_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments everywhere, so the offsets log has closed segments to clean.
    let extra = [
        "--override",
        "log.segment.bytes=16384",
        "--override",
        "log.cleaner.min.cleanable.ratio=0.01",
    ];
    let mut broker = start(dir.path(), &extra);
    let topics: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
    let new_topics: Vec<_> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    admin(&broker)
        .create_topics(&new_topics, &AdminOptions::new())
        .await
        .unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "committer")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // 64 offsets per commit: the offsets log's 1 MiB segments fill after ~200 commits.
    let commits = 400;
    for round in 0..commits {
        let mut offsets = TopicPartitionList::new();
        for topic in &topics {
            for p in 0..PARTITIONS {
                offsets
                    .add_partition_offset(topic, p, Offset::Offset(round as i64 * 10 + p as i64))
                    .unwrap();
            }
        }
        consumer.commit(&offsets, CommitMode::Sync).unwrap();
    }
    drop(consumer);
    // The offsets log shrinks once the cleaner ran on it.
    let compacted = common::wait_until(Duration::from_secs(60), || {
        broker.log().lines().any(|l| {
            l.contains("log cleaner compacted segments") && l.contains("__consumer_offsets")
        })
    });
    assert!(compacted, "{}", broker.log());
    broker.stop();
    let broker = start(dir.path(), &extra);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "committer")
        .create()
        .unwrap();
    let mut wanted = TopicPartitionList::new();
    for topic in &topics {
        for p in 0..PARTITIONS {
            wanted.add_partition(topic, p);
        }
    }
    let committed = consumer.committed_offsets(wanted, TIMEOUT).unwrap();
    for element in committed.elements() {
        assert_eq!(
            element.offset(),
            Offset::Offset((commits - 1) as i64 * 10 + element.partition() as i64),
            "{}-{}",
            element.topic(),
            element.partition()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_applies_to_compact_delete_topics_only() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(
        dir.path(),
        &["--override", "log.retention.check.interval.ms=100"],
    );
    // Records older than a millisecond: retention would delete every closed segment.
    create_compacted(&broker, "kept", &[("retention.ms", "1")]).await;
    create_compacted(
        &broker,
        "aged",
        &[("retention.ms", "1"), ("cleanup.policy", "compact,delete")],
    )
    .await;
    let producer = producer(&broker);
    let mut raw = common::raw::RawClient::connect(&broker.addr);
    for topic in ["kept", "aged"] {
        // Distinct keys: compaction removes nothing, only retention could.
        let round: Vec<_> = (0..300)
            .map(|i| (format!("unique-{i}"), Some(noise(i))))
            .collect();
        send(&producer, topic, &round).await;
    }
    let moved = common::wait_until(TIMEOUT, || raw.list_offset("aged", 0, -2).1 > 0);
    assert!(
        moved,
        "retention moved the log start of the compact,delete topic"
    );
    assert_eq!(
        raw.list_offset("kept", 0, -2),
        (0, 0),
        "compact alone: no retention"
    );
    let read = read_all(&broker.addr, "kept", 299);
    assert_eq!(read.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_was_down_catches_up_across_a_compacted_leaders_gaps() {
    use common::cluster::{await_metadata, partitions_of, Cluster};
    let mut cluster = Cluster::start(3, &["--override", "log.cleaner.backoff.ms=200"]);
    let bootstrap = cluster.bootstrap();
    let topic = NewTopic::new("replicated", 1, TopicReplication::Fixed(3))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "16384")
        .set("min.cleanable.dirty.ratio", "0.01");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let created = admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(created[0].is_ok(), "{created:?}");
    let all_in_sync = |m: &kafka_protocol::messages::MetadataResponse| {
        partitions_of(m, "replicated").is_some_and(|ps| ps[0].leader >= 0 && ps[0].isr.len() == 3)
    };
    let addr0 = cluster.broker(0).addr.clone();
    let (m, _) = await_metadata(&addr0, TIMEOUT, "all in sync", all_in_sync);
    let leader = partitions_of(&m, "replicated").unwrap()[0].leader as usize;
    let down = (leader + 1) % 3;
    cluster.kill9(down);
    // Written and compacted on the leader while `down` is away.
    let producer = producer_with(&bootstrap, "1");
    let last = fill(&producer, "replicated").await;
    let leader_addr = cluster.broker(leader).addr.clone();
    await_compacted(&leader_addr, "replicated", last);
    // Back: it fetches the cleaned batches, gaps included, and rejoins the ISR.
    cluster.restart(down);
    let (m, _) = await_metadata(&leader_addr, Duration::from_secs(60), "back in sync", |m| {
        partitions_of(m, "replicated").is_some_and(|ps| ps[0].isr.contains(&(down as i32)))
    });
    assert_eq!(
        partitions_of(&m, "replicated").unwrap()[0].leader as usize,
        leader
    );
    // Its copy serves the same latest values once it leads.
    cluster.kill9(leader);
    let survivor = cluster.broker(down).addr.clone();
    await_metadata(&survivor, Duration::from_secs(60), "a new leader", |m| {
        partitions_of(m, "replicated")
            .is_some_and(|ps| ps[0].leader >= 0 && ps[0].leader as usize != leader)
    });
    let read = read_all(&survivor, "replicated", last);
    for k in 0..KEYS {
        assert_eq!(
            latest(&read)[&format!("key-{k}")].as_deref(),
            Some(value(k, UPDATES - 1).as_str())
        );
    }
}
