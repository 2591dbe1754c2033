//! `brokerctl console-producer` and `console-consumer`, through librdkafka.

use std::io::{BufRead, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::client::Result;

#[derive(clap::Args)]
pub struct ProducerArgs {
    #[arg(long)]
    bootstrap_server: String,
    #[arg(long)]
    topic: String,
    /// `parse.key=true`, `key.separator=:` (Kafka's reader properties); repeatable.
    #[arg(long, value_parser = crate::key_value)]
    property: Vec<(String, String)>,
    /// Any librdkafka/Kafka producer setting, `acks=all`; repeatable.
    #[arg(long, value_parser = crate::key_value)]
    producer_property: Vec<(String, String)>,
    /// none, gzip (when given without a value), snappy, lz4 or zstd.
    #[arg(long, num_args = 0..=1, default_missing_value = "gzip")]
    compression_codec: Option<String>,
    /// Shorthand for `--producer-property acks=...`.
    #[arg(long)]
    request_required_acks: Option<String>,
}

/// Remembers the first delivery failure.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<(usize, Option<String>)>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            let mut failed = self.failed.lock().expect("not poisoned");
            failed.0 += 1;
            failed.1.get_or_insert_with(|| error.to_string());
        }
    }
}

fn property<'a>(props: &'a [(String, String)], key: &str) -> Option<&'a str> {
    props
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub fn produce(args: ProducerArgs) -> Result<()> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.bootstrap_server)
        .set("linger.ms", "5");
    if let Some(acks) = &args.request_required_acks {
        config.set("acks", acks);
    }
    if let Some(codec) = &args.compression_codec {
        config.set("compression.codec", codec);
    }
    for (k, v) in &args.producer_property {
        config.set(k, v);
    }
    let producer: BaseProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .map_err(|e| format!("cannot create producer: {e}"))?;
    let parse_key = property(&args.property, "parse.key") == Some("true");
    let separator = property(&args.property, "key.separator").unwrap_or("\t");
    let stdin = std::io::stdin();
    for (number, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        let (key, value) = if parse_key {
            let (k, v) = line.split_once(separator).ok_or_else(|| {
                format!(
                    "No key separator found on line number {}: '{line}'",
                    number + 1
                )
            })?;
            (Some(k.to_string()), v.to_string())
        } else {
            (None, line)
        };
        let mut record = BaseRecord::<String, String>::to(&args.topic).payload(&value);
        if let Some(key) = &key {
            record = record.key(key);
        }
        let mut record = record;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(format!("cannot produce: {e}")),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| format!("cannot deliver every record: {e}"))?;
    let failed = producer.context().failed.lock().expect("not poisoned");
    if failed.0 > 0 {
        return Err(format!(
            "{} records were not delivered: {}",
            failed.0,
            failed.1.clone().unwrap_or_default()
        ));
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ConsumerArgs {
    #[arg(long)]
    bootstrap_server: String,
    #[arg(long)]
    topic: String,
    /// Consumer group; default `console-consumer-<pid>` (ignored with --partition).
    #[arg(long)]
    group: Option<String>,
    /// Start at the earliest offset when the group has no committed offset.
    #[arg(long)]
    from_beginning: bool,
    /// Read one partition (no group membership).
    #[arg(long)]
    partition: Option<i32>,
    /// With --partition: `earliest`, `latest` or an offset.
    #[arg(long)]
    offset: Option<String>,
    #[arg(long)]
    max_messages: Option<usize>,
    /// Exit when no record arrives for this long.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// `print.key=true`, `print.timestamp=true`, `print.partition=true`, `print.offset=true`,
    /// `key.separator=...`; repeatable.
    #[arg(long, value_parser = crate::key_value)]
    property: Vec<(String, String)>,
    /// Any librdkafka/Kafka consumer setting; repeatable.
    #[arg(long, value_parser = crate::key_value)]
    consumer_property: Vec<(String, String)>,
}

pub fn consume(args: ConsumerArgs) -> Result<()> {
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("console-consumer-{}", std::process::id()));
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.bootstrap_server)
        .set("group.id", &group)
        .set(
            "auto.offset.reset",
            if args.from_beginning {
                "earliest"
            } else {
                "latest"
            },
        )
        .set("enable.partition.eof", "false");
    for (k, v) in &args.consumer_property {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| format!("cannot create consumer: {e}"))?;
    if let Some(partition) = args.partition {
        let offset = match args.offset.as_deref() {
            None if args.from_beginning => Offset::Beginning,
            None | Some("latest") => Offset::End,
            Some("earliest") => Offset::Beginning,
            Some(n) => Offset::Offset(
                n.parse()
                    .map_err(|_| format!("--offset must be earliest, latest or a number: {n}"))?,
            ),
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&args.topic, partition, offset)
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
    } else {
        if args.offset.is_some() {
            return Err("--offset needs --partition".into());
        }
        consumer
            .subscribe(&[&args.topic])
            .map_err(|e| format!("cannot subscribe: {e}"))?;
    }
    let print_key = property(&args.property, "print.key") == Some("true");
    let print_timestamp = property(&args.property, "print.timestamp") == Some("true");
    let print_partition = property(&args.property, "print.partition") == Some("true");
    let print_offset = property(&args.property, "print.offset") == Some("true");
    let separator = property(&args.property, "key.separator").unwrap_or("\t");
    let timeout = args.timeout_ms.map(Duration::from_millis);
    let mut last = Instant::now();
    let mut count = 0usize;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while args.max_messages.is_none_or(|max| count < max) {
        if timeout.is_some_and(|t| last.elapsed() >= t) {
            break;
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = message.map_err(|e| format!("consuming: {e}"))?;
        last = Instant::now();
        let mut line = String::new();
        if print_timestamp {
            match m.timestamp() {
                Timestamp::CreateTime(t) => line.push_str(&format!("CreateTime:{t}\t")),
                Timestamp::LogAppendTime(t) => line.push_str(&format!("LogAppendTime:{t}\t")),
                Timestamp::NotAvailable => line.push_str("NO_TIMESTAMP\t"),
            }
        }
        if print_partition {
            line.push_str(&format!("Partition:{}\t", m.partition()));
        }
        if print_offset {
            line.push_str(&format!("Offset:{}\t", m.offset()));
        }
        if print_key {
            match m.key() {
                Some(k) => line.push_str(&String::from_utf8_lossy(k)),
                None => line.push_str("null"),
            }
            line.push_str(separator);
        }
        match m.payload() {
            Some(v) => line.push_str(&String::from_utf8_lossy(v)),
            None => line.push_str("null"),
        }
        writeln!(out, "{line}").map_err(|e| format!("writing stdout: {e}"))?;
        count += 1;
    }
    out.flush().ok();
    if args.partition.is_none() {
        // The group's position, so the next run with --group continues from here.
        if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            if !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) {
                eprintln!("warning: cannot commit offsets: {e}");
            }
        }
    }
    eprintln!("Processed a total of {count} messages");
    Ok(())
}
