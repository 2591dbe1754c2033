//! Crash safety: acknowledged data survives SIGKILL, and recovery keeps exactly the valid prefix
//! of a damaged segment.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::{self, RawClient};
use common::Broker;
use kafka_protocol::records::Compression;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

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
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..4 {
        assignment
            .add_partition_offset("durable", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut found = std::collections::HashMap::new();
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
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (found.len() as i64) < high && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            found.insert(
                (m.partition(), m.offset()),
                String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
            );
        }
    }
    for (partition, offset, value) in &acked {
        assert_eq!(
            found.get(&(*partition, *offset)),
            Some(value),
            "acknowledged message lost at {partition}:{offset}"
        );
    }
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
