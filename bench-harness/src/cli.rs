//! Command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::wire::Codec;

#[derive(Parser, Debug)]
#[command(
    name = "bench-harness",
    version,
    about = "Kafka-protocol load generator: produce, consume, end-to-end latency, A/B comparisons",
    long_about = "Kafka-protocol load generator. Speaks only the Kafka wire protocol, so the same \
run targets this project's broker, Apache Kafka, or any Kafka-compatible broker: leaders are found \
with Metadata and each leader is reached at its advertised address.\n\nThroughput is in messages/s \
and MB/s (1 MB = 10^6 bytes); latency percentiles come from an HdrHistogram. With --rate the load \
is open loop: send times are scheduled in advance and latency is measured from the scheduled time, \
so coordinated omission is corrected."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// N producers writing to one topic.
    Produce(ProduceCmd),
    /// N consumers reading one topic (partitions assigned directly; no consumer group).
    Consume(ConsumeCmd),
    /// Produce and consume at once; end-to-end latency from a send time carried in each payload.
    E2e(E2eCmd),
    /// Run one workload against two or more brokers, interleaved A B A B, and compare medians.
    Compare(CompareCmd),
    /// A broker that stores nothing: measures the harness's own ceiling on this machine.
    NullBroker(NullBrokerArgs),
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// Bootstrap broker, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Send CreateTopics first (an existing topic is fine). A missing topic is created anyway.
    #[arg(long)]
    pub create_topic: bool,
    /// Partitions for a topic this run creates (default 8). An existing topic keeps its own.
    #[arg(long)]
    pub partitions: Option<u32>,
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i16,
    /// Write machine-readable results here.
    #[arg(long)]
    #[serde(skip)]
    pub json: Option<PathBuf>,
    /// Seconds at the start excluded from every figure.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_secs: f64,
    /// Runtime threads for the harness (1 = a single-threaded event loop).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds between progress lines on stderr (0 = none). The first comes after 3 s.
    #[arg(long, default_value_t = 2.0)]
    pub progress_secs: f64,
    /// Sample this process's CPU time and memory (the broker's pid) into the results.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    #[arg(long, default_value = "bench-harness")]
    pub client_id: String,
    /// How long one batch, partition or ListOffsets may keep failing with retriable errors
    /// (leader elections, a topic just created, closed connections) before the run fails.
    #[arg(long, default_value_t = 30.0)]
    pub retry_timeout_secs: f64,
    /// First wait before a retry; it doubles on every further failure.
    #[arg(long, default_value_t = 50)]
    pub retry_backoff_ms: u64,
    /// Longest wait between retries.
    #[arg(long, default_value_t = 1000)]
    pub retry_backoff_max_ms: u64,
    /// Period of the timer that measures how late the harness's own event loop runs
    /// (`harness_lateness` in the results); 0 = off.
    #[arg(long, default_value_t = 1000)]
    pub lateness_tick_us: u64,
}

impl Common {
    pub fn retry_policy(&self) -> crate::retry::RetryPolicy {
        use std::time::Duration;
        crate::retry::RetryPolicy {
            initial: Duration::from_millis(self.retry_backoff_ms.max(1)),
            max: Duration::from_millis(self.retry_backoff_max_ms.max(self.retry_backoff_ms)),
            timeout: Duration::from_secs_f64(self.retry_timeout_secs.max(0.0)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyDist {
    /// Null keys; batches go to partitions in turn (sticky, like Kafka's default partitioner).
    None,
    /// A key picked at random from --key-count keys per record; partition by murmur2(key).
    Random,
    /// Keys cycled in order; partition by murmur2(key).
    RoundRobin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadKind {
    /// Incompressible bytes.
    Random,
    /// Words from a small vocabulary (compresses like text).
    Text,
    /// All zeros.
    Zeros,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Acks(pub i16);

impl std::str::FromStr for Acks {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "0" => Ok(Acks(0)),
            "1" => Ok(Acks(1)),
            "all" | "-1" => Ok(Acks(-1)),
            _ => Err(format!("acks must be 0, 1 or all, not {s}")),
        }
    }
}

/// When a run stops.
#[derive(Args, Debug, Clone, Serialize)]
pub struct StopOpts {
    /// Messages to measure in total (after the warm-up). With neither this nor
    /// --duration-secs, produce and e2e send 1,000,000 and consume reads to the end offsets.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds to measure (after the warm-up).
    #[arg(long, conflicts_with = "messages")]
    pub duration_secs: Option<f64>,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct ProduceOpts {
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Value size in bytes. Values of 16 bytes or more carry the send time in their first 16.
    #[arg(long, default_value_t = 1024)]
    pub message_size: usize,
    #[arg(long, value_enum, default_value_t = KeyDist::None)]
    pub key_dist: KeyDist,
    /// Distinct keys for keyed distributions.
    #[arg(long, default_value_t = 10_000)]
    pub key_count: usize,
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    #[arg(long, value_enum, default_value_t = PayloadKind::Random)]
    pub payload: PayloadKind,
    /// 0, 1 or all.
    #[arg(long, default_value = "1")]
    pub acks: Acks,
    /// Batch size per partition in bytes (Kafka's batch.size).
    #[arg(long, default_value_t = 65_536)]
    pub batch_size: usize,
    /// How long a batch may wait to fill (Kafka's linger.ms).
    #[arg(long, default_value_t = 1.0)]
    pub linger_ms: f64,
    #[arg(long, value_enum, default_value_t = Codec::None)]
    pub compression: Codec,
    /// Fixed total rate in messages/s, open loop. Without it: as fast as acks allow.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: stop generating (and say so) once this far behind the schedule, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub max_lag_secs: f64,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 5)]
    pub max_in_flight: usize,
    /// Largest Produce request (all partitions' batches for one broker together).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_request_bytes: usize,
    /// Produce timeout sent to the broker; a connection whose response takes 5 s longer is
    /// dropped and its requests retried.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    Beginning,
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    On,
    Off,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct ConsumeOpts {
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Start at the log start or at the end (ListOffsets).
    #[arg(long, value_enum, default_value_t = StartAt::Beginning)]
    pub from: StartAt,
    #[arg(long, default_value_t = 500)]
    pub max_wait_ms: i32,
    #[arg(long, default_value_t = 1)]
    pub min_bytes: i32,
    #[arg(long, default_value_t = 64 << 20)]
    pub fetch_max_bytes: i32,
    #[arg(long, default_value_t = 8 << 20)]
    pub partition_max_bytes: i32,
    /// Fetch requests in flight per connection (each for a disjoint set of partitions).
    #[arg(long, default_value_t = 4)]
    pub fetch_in_flight: usize,
    /// Stop after this long without a record (once producers are done, in e2e).
    #[arg(long, default_value_t = 10.0)]
    pub idle_timeout_secs: f64,
    /// Incremental fetch sessions (KIP-227, Fetch v7+): after a first full fetch, each request
    /// names only the partitions whose fetch offset changed. Falls back to full fetches when the
    /// broker opens no session.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub fetch_sessions: OnOff,
}

#[derive(Args, Debug, Clone)]
pub struct ProduceCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub stop: StopOpts,
    #[command(flatten)]
    pub produce: ProduceOpts,
}

#[derive(Args, Debug, Clone)]
pub struct ConsumeCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub stop: StopOpts,
    #[command(flatten)]
    pub consume: ConsumeOpts,
    /// Stop at the end offsets seen at start (default when reading from the beginning with
    /// neither --messages nor --duration-secs: a catch-up read).
    #[arg(long)]
    pub to_end: bool,
    /// Parse record values and report end-to-end latency from stamped payloads.
    #[arg(long)]
    pub e2e_latency: bool,
}

#[derive(Args, Debug, Clone)]
pub struct E2eCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub stop: StopOpts,
    #[command(flatten)]
    pub produce: ProduceOpts,
    #[command(flatten)]
    pub consume: ConsumeOpts,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Workload {
    Produce(ProduceCmd),
    Consume(ConsumeCmd),
    E2e(E2eCmd),
}

impl Workload {
    pub fn common_mut(&mut self) -> &mut Common {
        match self {
            Workload::Produce(c) => &mut c.common,
            Workload::Consume(c) => &mut c.common,
            Workload::E2e(c) => &mut c.common,
        }
    }

    pub fn common(&self) -> &Common {
        match self {
            Workload::Produce(c) => &c.common,
            Workload::Consume(c) => &c.common,
            Workload::E2e(c) => &c.common,
        }
    }
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Example:\n  bench-harness compare --targets ours=127.0.0.1:9092,tansu=127.0.0.1:9093 \
--repetitions 3 produce --topic t --partitions 8 --messages 500000"
)]
pub struct CompareCmd {
    /// A target; repeat for each (named by address).
    #[arg(long = "bootstrap")]
    pub bootstraps: Vec<String>,
    /// Named targets: NAME=HOST:PORT,NAME=HOST:PORT.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Rounds; each round runs every target once, in order.
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Pause between runs, seconds (lets the previous broker settle).
    #[arg(long, default_value_t = 1.0)]
    pub pause_secs: f64,
    /// All runs and the summary, machine-readable.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(subcommand)]
    pub workload: Workload,
}

#[derive(Args, Debug, Clone)]
pub struct NullBrokerArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub listen: String,
    /// Address put in Metadata (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Runtime threads (1 = one event loop, leaving the other core to the harness).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Partitions for a CreateTopics that leaves the count to the broker.
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
    /// Value size of the records Fetch returns.
    #[arg(long, default_value_t = 1024)]
    pub message_size: usize,
    /// Records per batch in Fetch responses.
    #[arg(long, default_value_t = 64)]
    pub batch_records: usize,
    /// Keep what is produced (the last --echo-retain-mib per partition) and serve it to Fetch,
    /// long-polling like a broker, instead of the fixed batch: gives e2e runs real records, so
    /// they measure the harness's own end-to-end latency floor.
    #[arg(long)]
    pub echo: bool,
    #[arg(long, default_value_t = 64)]
    pub echo_retain_mib: usize,
    /// Play a cluster still electing a new topic's leaders: for this long after a topic is
    /// created (CreateTopics), Produce, Fetch and ListOffsets for it are answered
    /// NOT_LEADER_OR_FOLLOWER while Metadata already names a leader (what Kafka does while the
    /// new leader has not yet learned it leads).
    #[arg(long, default_value_t = 0)]
    pub not_leader_after_create_ms: u64,
    /// For this long after a topic is created, Metadata answers its partitions
    /// LEADER_NOT_AVAILABLE with no leader.
    #[arg(long, default_value_t = 0)]
    pub leader_not_available_after_create_ms: u64,
    /// Answer every Nth partition of Produce, Fetch and ListOffsets NOT_LEADER_OR_FOLLOWER
    /// (a leadership change at any time; 0 = never). A refused produce is not stored.
    #[arg(long, default_value_t = 0)]
    pub not_leader_every: u64,
    /// Close the connection instead of answering every Nth Produce or Fetch request (the
    /// request is dropped unread; 0 = never).
    #[arg(long, default_value_t = 0)]
    pub close_every: u64,
    /// Hand leadership of every topic to another broker (node 1 at this address, e.g. a second
    /// null broker) --leader-moves-after-ms after the topic was created here: from then on
    /// Metadata names it as the leader and Produce, Fetch and ListOffsets here are answered
    /// NOT_LEADER_OR_FOLLOWER.
    #[arg(long)]
    pub leader_moves_to: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub leader_moves_after_ms: u64,
    /// Refuse record batches larger than this with MESSAGE_TOO_LARGE, like Kafka's
    /// `message.max.bytes` (1048588 by default there); 0 = no limit. The limit is answered to
    /// DescribeConfigs (topic `max.message.bytes`, broker `message.max.bytes`).
    #[arg(long, default_value_t = 0)]
    pub message_max_bytes: usize,
    /// Do not offer DescribeConfigs (as some Kafka-compatible brokers do not).
    #[arg(long)]
    pub no_describe_configs: bool,
    /// Open no fetch sessions: answer session id 0 to a Fetch asking for one (as a broker
    /// without KIP-227 does, or one whose session cache is full).
    #[arg(long)]
    pub no_fetch_sessions: bool,
    /// Lose a fetch session on every Nth incremental Fetch, answering
    /// FETCH_SESSION_ID_NOT_FOUND (as after an eviction); 0 = never.
    #[arg(long, default_value_t = 0)]
    pub drop_fetch_session_every: u64,
}
