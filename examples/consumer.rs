//! Consumes a topic as a member of a consumer group with the standard Rust Kafka client
//! (rdkafka), committing offsets after processing, so a restart continues where it stopped.
//! Start two of them with the same group to see the partitions split between them.
//!
//!     cargo run --example consumer -- localhost:9092 demo demo-group
//!
//! Arguments: bootstrap servers, topic, group id (defaults: localhost:9092 demo demo-group).
//! Stops after 10 s without messages.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "localhost:9092".into());
    let topic = args.next().unwrap_or_else(|| "demo".into());
    let group = args.next().unwrap_or_else(|| "demo-group".into());

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        // Start from the beginning when the group has no committed offset yet.
        .set("auto.offset.reset", "earliest")
        // Commit explicitly below, after each message is processed (at-least-once).
        .set("enable.auto.commit", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()?;
    consumer.subscribe(&[&topic])?;

    let idle = Duration::from_secs(10);
    let mut last = Instant::now();
    let mut count = 0usize;
    while last.elapsed() < idle {
        match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Err(_) => continue,
            Ok(Err(error)) => return Err(error.into()),
            Ok(Ok(message)) => {
                last = Instant::now();
                count += 1;
                let key = message
                    .key()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                let value = message
                    .payload()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                println!(
                    "partition {} offset {}: {key} = {value}",
                    message.partition(),
                    message.offset()
                );
                consumer.commit_message(&message, CommitMode::Async)?;
            }
        }
    }
    // Make the last commits durable before leaving the group.
    consumer.commit_consumer_state(CommitMode::Sync).ok();
    println!("consumed {count} messages in group {group}");
    Ok(())
}
