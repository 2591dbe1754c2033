//! Crash safety: acknowledged data survives SIGKILL, and recovery keeps exactly the valid prefix
//! of a damaged segment.

#[path = "common/clients.rs"]
mod clients;
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::{self, RawClient};
use common::Broker;
use kafka_protocol::messages::{
    fetch_request, produce_request, BrokerId, FetchRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_data_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_in(tmp.path(), 2, &[]);
    let mut admin = RawClient::connect(&broker.addr);
    assert_eq!(admin.create_topic("durable", 4), 0);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "5000")
        .create()
        .unwrap();
    let acked: Arc<Mutex<Vec<(i32, i64, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (producer, acked) = (producer.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let value = format!("w{worker}-{i}");
                match producer
                    .send(
                        FutureRecord::to("durable").key(&value).payload(&value),
                        Duration::from_secs(5),
                    )
                    .await
                {
                    Ok(delivery) => {
                        acked
                            .lock()
                            .unwrap()
                            .push((delivery.partition, delivery.offset, value))
                    }
                    Err(_) => return, // the broker is gone
                }
            }
        }));
    }
    assert!(
        common::wait_until(Duration::from_secs(60), || acked.lock().unwrap().len()
            >= 3000),
        "producing stalled"
    );
    broker.kill9();
    for task in tasks {
        task.await.unwrap();
    }
    drop(producer);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 3000);

    let broker = Broker::start_in(tmp.path(), 2, &[]);
    let consumer = consumer_from_the_beginning(&broker.addr, "durable", 4);
    let high: i64 = (0..4)
        .map(|p| {
            consumer
                .fetch_watermarks("durable", p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum();
    assert!(
        high as usize >= acked.len(),
        "high watermarks {high} below acknowledged {}",
        acked.len()
    );
    every_acknowledged_message_is_read(&consumer, &acked, high as usize);
}

/// A consumer assigned partitions `0..partitions` of `topic` from their beginning.
fn consumer_from_the_beginning(addr: &str, topic: &str, partitions: i32) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    clients::assign_from_beginning(&consumer, topic, partitions);
    consumer
}

/// Reads until `expected` messages came (or 60 s passed), then checks that every acknowledged
/// `(partition, offset, value)` is among them.
fn every_acknowledged_message_is_read(
    consumer: &BaseConsumer,
    acked: &[(i32, i64, String)],
    expected: usize,
) {
    let mut found = std::collections::HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while found.len() < expected && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            found.insert(
                (m.partition(), m.offset()),
                String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
            );
        }
    }
    for (partition, offset, value) in acked {
        assert_eq!(
            found.get(&(*partition, *offset)),
            Some(value),
            "acknowledged message lost at {partition}:{offset}"
        );
    }
}

/// acks=1 with the journal: a produce is answered once its batch is in the shard's journal
/// (tmpfs), before its segment write. With every segment write held (as a device that never
/// completes one) the broker still answers, and after `kill -9` the restarted broker replays
/// every acknowledged batch from the journal into the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_1_data_only_in_the_journal_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let journal_dir = tmp.path().join("journal");
    let journal_flag = format!("log.journal.dir={}", journal_dir.display());
    let extra = [
        "--override",
        &journal_flag,
        "--override",
        "log.journal.bytes=16777216",
        "--http",
        "127.0.0.1:0",
    ];
    let mut broker = Broker::start_in_with_env(
        tmp.path(),
        2,
        &extra,
        &[("BROKER_FAULT_HOLD_SEGMENT_WRITES", "1")],
    );
    let mut admin = RawClient::connect(&broker.addr);
    assert_eq!(admin.create_topic("journaled", 4), 0);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("acks", "1")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "5000")
        .create()
        .unwrap();
    let values: Vec<String> = (0..2000).map(|i| format!("m-{i}")).collect();
    let deliveries = futures::future::join_all(values.iter().map(|value| {
        producer.send(
            FutureRecord::to("journaled").key(value).payload(value),
            Duration::from_secs(5),
        )
    }))
    .await;
    let acked: Vec<(i32, i64, String)> = deliveries
        .into_iter()
        .zip(&values)
        .map(|(delivery, value)| {
            let delivery = delivery
                .unwrap_or_else(|(e, _)| panic!("acks=1 produce of {value} with held writes: {e}"));
            (delivery.partition, delivery.offset, value.clone())
        })
        .collect();
    let metrics = common::http_get(broker.console.as_ref().expect("console"), "/metrics");
    assert_eq!(common::metric(&metrics, "broker_journal_full_total"), 0.0);
    assert!(common::metric(&metrics, "broker_journaled_bytes_total") > 0.0);
    broker.kill9();
    drop(producer);
    // Nothing reached the segment files.
    let segment_bytes: u64 = std::fs::read_dir(tmp.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("journaled-")
        })
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(segment_bytes, 0, "segment writes were held");

    let broker = Broker::start_in(tmp.path(), 2, &extra);
    assert!(
        broker.log().contains("replayed journaled batches"),
        "the restart replayed the journal"
    );
    let consumer = consumer_from_the_beginning(&broker.addr, "journaled", 4);
    every_acknowledged_message_is_read(&consumer, &acked, acked.len());
    // The old journal files are gone once every log replayed them; the new run has its own.
    let files: Vec<_> = std::fs::read_dir(&journal_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".journal"))
        .collect();
    assert_eq!(
        files.len(),
        2,
        "one journal per shard of the new run: {files:?}"
    );
}

/// Walks the batches of a segment file: returns (start, length) of each.
fn batches_in(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut position = 0;
    while position + 12 <= bytes.len() {
        let len = i32::from_be_bytes(bytes[position + 8..position + 12].try_into().unwrap());
        if len <= 0 || position + 12 + len as usize > bytes.len() {
            break;
        }
        out.push((position, 12 + len as usize));
        position += 12 + len as usize;
    }
    out
}

fn damaged_tail_is_cut(damage: impl Fn(&std::path::Path, (usize, usize))) {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_in(tmp.path(), 1, &[]);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("fragile", 1), 0);
    for i in 0..50u8 {
        let (code, base) = client.produce(
            "fragile",
            0,
            raw::batch(&[&[i]], None, Compression::None),
            -1,
        );
        assert_eq!((code, base), (0, i as i64));
    }
    drop(client);
    broker.stop();
    let segment = broker.data_dir.join("fragile-0/00000000000000000000.log");
    let bytes = std::fs::read(&segment).unwrap();
    let batches = batches_in(&bytes);
    assert_eq!(batches.len(), 50);
    damage(&segment, *batches.last().unwrap());

    let broker = Broker::start_in(tmp.path(), 1, &[]);
    let mut client = RawClient::connect(&broker.addr);
    let (error, high_watermark, records) = client.fetch("fragile", 0, 0, 0);
    assert_eq!(
        (error, high_watermark),
        (0, 49),
        "exactly the 49 intact batches remain"
    );
    let values = raw::values(records);
    assert_eq!(values.len(), 49);
    assert_eq!(
        values.last().unwrap(),
        &(48, bytes::Bytes::from_static(&[48]))
    );
    // The log continues right after the valid prefix.
    let (code, base) = client.produce(
        "fragile",
        0,
        raw::batch(&[b"after"], None, Compression::None),
        -1,
    );
    assert_eq!((code, base), (0, 49));
    assert!(broker.log().contains("fragile"), "recovery is logged");
}

#[test]
fn recovery_cuts_a_truncated_tail() {
    damaged_tail_is_cut(|segment, (start, len)| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(segment)
            .unwrap();
        file.set_len((start + len / 2) as u64).unwrap();
    });
}

#[test]
fn recovery_cuts_a_corrupted_tail() {
    damaged_tail_is_cut(|segment, (start, len)| {
        let mut bytes = std::fs::read(segment).unwrap();
        bytes[start + len - 3] ^= 0xff;
        std::fs::write(segment, bytes).unwrap();
    });
}

/// 10,000 partitions (one topic) restart, cleanly and after `kill -9`, and every one is led
/// and holds its record. The start-up path for many partitions: no file descriptor per idle
/// partition (this machine's `ulimit -n` is 20,000, two per partition would not fit), no
/// fsync per partition, and recovery of logs that were not closed cleanly.
#[test]
fn ten_thousand_partitions_restart_and_every_one_is_readable() {
    const PARTITIONS: i32 = 10_000;
    const PER_REQUEST: i32 = 1_000;
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_in(tmp.path(), 2, &[]);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("many", PARTITIONS), 0);
    let topic = || TopicName(StrBytes::from_static_str("many"));
    // One record per partition, its index, PER_REQUEST partitions per request.
    for first in (0..PARTITIONS).step_by(PER_REQUEST as usize) {
        let mut data = produce_request::TopicProduceData::default();
        data.name = topic();
        data.partition_data = (first..first + PER_REQUEST)
            .map(|p| {
                let mut d = produce_request::PartitionProduceData::default();
                d.index = p;
                d.records = Some(raw::batch(
                    &[p.to_string().as_bytes()],
                    None,
                    Compression::None,
                ));
                d
            })
            .collect();
        let mut request = ProduceRequest::default();
        request.acks = 1;
        request.timeout_ms = 10_000;
        request.topic_data = vec![data];
        let response = client.call(8, &request);
        for p in &response.responses[0].partition_responses {
            assert_eq!(
                (p.error_code, p.base_offset),
                (0, 0),
                "partition {}",
                p.index
            );
        }
    }
    let check = |broker: &Broker, when: &str| {
        let mut client = RawClient::connect(&broker.addr);
        assert_eq!(client.partition_count("many"), Some(PARTITIONS as usize));
        for first in (0..PARTITIONS).step_by(PER_REQUEST as usize) {
            let mut t = fetch_request::FetchTopic::default();
            t.topic = topic();
            t.partitions = (first..first + PER_REQUEST)
                .map(|p| {
                    let mut f = fetch_request::FetchPartition::default();
                    f.partition = p;
                    f.partition_max_bytes = 4096;
                    f
                })
                .collect();
            let mut request = FetchRequest::default();
            request.replica_id = BrokerId(-1);
            request.max_wait_ms = 0;
            request.max_bytes = 50 << 20;
            request.topics = vec![t];
            let response = client.call(11, &request);
            let partitions = &response.responses[0].partitions;
            assert_eq!(partitions.len(), PER_REQUEST as usize);
            for p in partitions {
                let index = p.partition_index;
                assert_eq!(
                    (p.error_code, p.high_watermark),
                    (0, 1),
                    "{when}: partition {index}"
                );
                let values = raw::values(p.records.clone().unwrap_or_default());
                assert_eq!(
                    values,
                    vec![(0, bytes::Bytes::from(index.to_string()))],
                    "{when}: partition {index}"
                );
            }
        }
    };
    check(&broker, "before the restart");
    broker.stop();
    let mut broker = Broker::start_in(tmp.path(), 2, &[]);
    check(&broker, "after a clean restart");
    broker.kill9();
    let broker = Broker::start_in(tmp.path(), 2, &[]);
    check(&broker, "after kill -9");
}

/// Two brokers on one data directory would append to the same segments and Raft log: the
/// second refuses to start, names the holder's pid, and the first keeps serving.
#[test]
fn a_second_broker_on_the_same_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Broker::start_in(dir.path(), 1, &[]);
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--http",
            "off",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .expect("run a second broker");
    assert!(!second.status.success(), "the second broker started");
    let stderr = String::from_utf8_lossy(&second.stderr);
    let pid = first.pid().unwrap().to_string();
    assert!(
        stderr.contains("is in use by another broker process") && stderr.contains(&pid),
        "{stderr}"
    );
    assert!(first.is_running());
    first.stop();
    // Once the holder stopped, the directory is free again.
    let mut again = Broker::start_in(dir.path(), 1, &[]);
    again.stop();
}

/// A shard that panics during start-up ends the process with an error naming it, whichever
/// shard it is (before, the other shards waited for it forever and the broker never exited).
#[test]
fn a_shard_panicking_at_start_up_ends_the_process_with_an_error() {
    for shard in ["0", "1"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--cores",
                "2",
                "--http",
                "off",
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .env("BROKER_FAULT_PANIC_SHARD", shard)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut status = None;
        assert!(
            common::wait_until(Duration::from_secs(30), || {
                status = child.try_wait().unwrap();
                status.is_some()
            }),
            "shard {shard} panicked and the broker is still running"
        );
        assert!(!status.unwrap().success());
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(
            stderr.contains(&format!("shard {shard} panicked during start-up")),
            "{stderr}"
        );
    }
}
