//! `brokerctl`: Kafka's command-line tools as subcommands, with Kafka's flags:
//! `topics` (kafka-topics.sh), `console-producer`, `console-consumer`, `consumer-groups`
//! (kafka-consumer-groups.sh), `configs` (kafka-configs.sh), `leader-election`
//! (kafka-leader-election.sh) and `reassign-partitions` (kafka-reassign-partitions.sh); each
//! also answers to its script's name (`kafka-leader-election`, ...).
//!
//! It talks only the Kafka protocol, so it works against Apache Kafka too: admin requests use
//! the `kafka-protocol` crate's messages over one connection ([`client`]), producing and
//! consuming use librdkafka (the `rdkafka` crate). Errors print one line on stderr and exit
//! with status 1; output is plain columns, stable enough to script.
//!
//! # Layout
//! - [`client`]: the admin connection (ApiVersions negotiation, framing, error names).
//! - [`topics`], [`configs`]: topic and config administration.
//! - [`console`]: console producer and consumer.
//! - [`groups`]: consumer group listing, description, deletion, offset resets.
//! - [`partitions`]: leader elections and partition reassignments.

mod client;
mod configs;
mod console;
mod groups;
mod partitions;
mod topics;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "brokerctl",
    version,
    about = "Kafka's command-line tools, for any Kafka-compatible broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, describe, alter and delete topics (kafka-topics.sh).
    Topics(topics::Args),
    /// Write stdin lines as records (kafka-console-producer.sh).
    ConsoleProducer(console::ProducerArgs),
    /// Print records (kafka-console-consumer.sh).
    ConsoleConsumer(console::ConsumerArgs),
    /// List, describe and delete groups, reset their offsets (kafka-consumer-groups.sh).
    ConsumerGroups(groups::Args),
    /// Describe and alter topic and broker configs (kafka-configs.sh).
    #[command(alias = "kafka-configs")]
    Configs(configs::Args),
    /// Elect preferred (or unclean) leaders (kafka-leader-election.sh).
    #[command(alias = "kafka-leader-election")]
    LeaderElection(partitions::ElectionArgs),
    /// Move partition replicas between brokers (kafka-reassign-partitions.sh).
    #[command(alias = "kafka-reassign-partitions")]
    ReassignPartitions(partitions::ReassignArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Topics(args) => topics::run(args),
        Command::ConsoleProducer(args) => console::produce(args),
        Command::ConsoleConsumer(args) => console::consume(args),
        Command::ConsumerGroups(args) => groups::run(args),
        Command::Configs(args) => configs::run(args),
        Command::LeaderElection(args) => partitions::elect(args),
        Command::ReassignPartitions(args) => partitions::reassign(args),
    };
    if let Err(message) = result {
        eprintln!("Error: {message}");
        std::process::exit(1);
    }
}

/// Parses `key=value`.
fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}
