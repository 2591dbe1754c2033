//! Produces keyed messages with the standard Rust Kafka client (rdkafka), durably (acks=all).
//!
//!     cargo run --example producer -- localhost:9092 demo 10
//!
//! Arguments: bootstrap servers, topic, number of messages (defaults: localhost:9092 demo 10).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "localhost:9092".into());
    let topic = args.next().unwrap_or_else(|| "demo".into());
    let count: usize = args.next().map_or(Ok(10), |n| n.parse())?;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        // Answered only once the broker has fdatasync'ed the batch.
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;

    for i in 0..count {
        let key = format!("key-{}", i % 4);
        let value = format!("message {i}");
        let record = FutureRecord::to(&topic).key(&key).payload(&value);
        // Await each delivery for a simple demo; real producers keep many in flight.
        match producer.send(record, Duration::from_secs(10)).await {
            Ok(delivery) => println!(
                "{key} -> partition {} offset {}",
                delivery.partition, delivery.offset
            ),
            Err((error, _)) => return Err(format!("delivery failed: {error}").into()),
        }
    }
    Ok(())
}
