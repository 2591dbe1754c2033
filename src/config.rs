//! Broker configuration: Kafka-style properties file, overridden by command-line flags.
//!
//! Keys that mean the same as in Apache Kafka keep Kafka's names (`broker.id`, `listeners`,
//! `log.dirs`, ...), so an operator's existing `server.properties` mostly carries over. Unknown
//! keys are logged and ignored, as Kafka does.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use crate::coordination::Voter;
use crate::storage::LogConfig;

/// Everything a broker process needs to start. Immutable after start; every shard holds a copy.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `broker.id` / `--node-id`.
    pub node_id: i32,
    /// `num.cores` / `--cores`: number of shards (glommio executors, one per core when pinned).
    /// `None`: one per CPU this process may run on ([`default_cores`]), as Redpanda does.
    pub cores: Option<usize>,
    /// `overprovisioned` / `--overprovisioned` (Redpanda's flag): the machine's CPUs are shared
    /// with other busy processes (clients, other services), so shards run unpinned and the
    /// kernel may move a woken shard to an idle CPU instead of queueing it behind another
    /// process's thread on its own. Measured on a 2-CPU VM running the load generator beside
    /// the broker (docs/benchmarks.md, W3): e2e p50 about a third lower, p99.9 up to 3x lower.
    pub overprovisioned: bool,
    /// `listeners` / `--listen`: where clients connect. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// `advertised.listeners` / `--advertise`: host and port returned in Metadata.
    /// `None` means "the listen address" (with the port actually bound).
    pub advertise: Option<(String, u16)>,
    /// `log.dirs` / `--data-dir`.
    pub data_dir: PathBuf,
    /// `http.listeners` / `--http`: the web console and `/metrics` (src/admin/). `None` means
    /// the default: 127.0.0.1:8080 when clients use a fixed port, skipped with a warning if
    /// that port is taken (see `admin::http::choose_address`).
    pub http: Option<SocketAddr>,
    /// `--http off` / `http.listeners=off` (or empty): no console at all.
    pub http_disabled: bool,
    /// `num.partitions`: partitions of auto-created topics and of CreateTopics with -1.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// `min.insync.replicas`.
    pub min_insync_replicas: i16,
    /// `delete.topic.enable`.
    pub delete_topic_enable: bool,
    /// `auto.create.topics.enable`.
    pub auto_create_topics_enable: bool,
    /// `message.max.bytes`: largest record batch accepted (MESSAGE_TOO_LARGE above).
    pub message_max_bytes: usize,
    /// `socket.request.max.bytes`: largest request frame; larger ones close the connection.
    pub socket_request_max_bytes: usize,
    /// `fetch.max.bytes`: the most a consumer's Fetch response carries, whatever its
    /// `max_bytes` asks (Kafka's broker setting; the first batch still goes whole, KIP-74).
    /// Not applied to followers' fetches (theirs is `replica.fetch.response.max.bytes`).
    pub fetch_max_bytes: usize,
    /// `fetch.cold.read.buffer.bytes`: per shard, the memory fetches may hold of cold segment
    /// bytes (neither in the tail cache nor the page cache) read with O_DIRECT and sent from
    /// memory (`storage::direct_read`); past it, and with 0, they go through the page cache
    /// and sendfile.
    pub fetch_cold_read_buffer_bytes: usize,
    /// `max.connections`: per broker; connections above it are closed at accept.
    pub max_connections: usize,
    /// `max.inflight.requests.per.connection`: requests read ahead of their responses.
    /// Reading pauses at this limit (backpressure), it is not an error.
    pub max_inflight_requests_per_connection: usize,
    /// `max.partitions`: total partitions the broker will host.
    pub max_partitions: usize,
    /// `max.incremental.fetch.session.cache.slots`: incremental fetch sessions (KIP-227) the
    /// broker keeps, split over its shards. 0: no sessions (clients send full fetches).
    pub fetch_session_cache_slots: usize,
    /// Log settings that topics inherit unless they override them.
    pub log: LogConfig,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    /// `controller.quorum.voters` / `--controller-quorum-voters`: `id@host:port,...`, the voters
    /// of the coordination quorum. Empty: a quorum of one (this node), embedded.
    pub quorum_voters: Vec<Voter>,
    /// A `CONTROLLER://host:port` entry of `listeners` / `--controller-listen`: where this node
    /// accepts the other voters. Default: the address of its own voters entry.
    pub controller_listen: Option<SocketAddr>,
    /// `broker.heartbeat.interval.ms`: how often this broker renews its session.
    pub broker_heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms`: a broker silent this long is fenced and loses leadership.
    pub broker_session_timeout_ms: u64,
    /// `unclean.leader.election.enable`: the default for topics that do not set it.
    pub unclean_leader_election_enable: bool,
    /// `log.tail.cache.bytes`: memory per shard for the newest batches of its partitions,
    /// served to tailing consumers without touching the device; split over the shard's
    /// partitions (`Shard::log_config_for`). 0 disables the cache.
    pub tail_cache_bytes_per_shard: u64,
    /// `log.journal.dir`: where each shard keeps its journal (`storage::journal`), which makes
    /// an acks=1 append safe from the process's death before its segment write. Must be a
    /// memory file system (tmpfs) to be of use. `Default`: a directory of `/dev/shm` named
    /// after the data directory; `Off` (`none`): acks=1 waits for the segment write.
    pub journal_dir: JournalDir,
    /// `log.journal.bytes`: each shard's journal ring, allocated in the journal's file system
    /// (memory, on tmpfs). At 1.3 GB/s into one shard, 512 MiB covers a device hold of about
    /// 300 ms and the writes that catch up after it; a longer hold makes later appends wait
    /// for their writes. `None` (the default): an eighth of the machine's memory shared by
    /// the shards, at most 512 MiB and at least 64 MiB each, within half of the journal file
    /// system's free space (`startup::prepare_journal`).
    pub journal_bytes_per_shard: Option<u64>,
    /// `log.idle.release.ms`: a partition not appended to or read for this long gives back its
    /// tail cache, its file descriptors and its partial last page (reopened on the next use).
    /// 0: never.
    pub idle_release_ms: u64,
    /// `shard.stall.threshold.ms`: a shard whose event loop does not come back for longer is
    /// reported (warning, `broker_shard_stalls_total`); half of it is the executors' preempt
    /// timer. 0 turns detection off (and leaves glommio's 100 ms preempt timer).
    pub stall_threshold_ms: u64,
    /// `shard.stall.stack.interval.ms`: at most one stall stack per shard this often (taken by
    /// a signal, symbolized on a watchdog thread: `shard::stall_stack`); 0: none.
    pub stall_stack_interval_ms: u64,
    /// `request.slow.log.ms`: a request that spends longer in the broker (from the kernel
    /// receiving it to its response written; a Fetch's long poll, and its queueing behind earlier
    /// Fetches', not counted) is logged with
    /// where its time went (`net::slow_request`) and counted. 0: off.
    pub request_slow_log_ms: u64,
    /// `shard.idle.poll.us`: a shard with nothing to run keeps polling for events this long
    /// before it sleeps (glommio's `spin_before_park`), so an event that comes soon finds it
    /// on its CPU instead of waiting to be scheduled again. 0 (the default): sleep at once.
    /// Costs up to this much CPU per sleep: for shards on cores of their own.
    pub idle_poll_us: u64,
    /// Consumer group coordinator settings (`group.*`, `offsets.topic.num.partitions`, ...).
    pub groups: crate::groups::GroupConfig,
    /// The transaction coordinator's state log (`transaction.state.log.*`).
    pub transaction_state: crate::transactions::TxnStateConfig,
    /// Follower fetching and ISR upkeep (`replica.*`).
    pub replication: ReplicationConfig,
    /// Periodic preferred-leader election (`auto.leader.rebalance.enable`, ...).
    pub leader_rebalance: crate::coordination::rebalance::RebalanceConfig,
    /// Log compaction (`log.cleaner.*`).
    pub cleaner: LogCleanerConfig,
}

/// The log cleaner's broker settings: Kafka's `log.cleaner.*` keys.
#[derive(Debug, Clone, PartialEq)]
pub struct LogCleanerConfig {
    /// `log.cleaner.enable`: run the cleaner for topics with `compact` in `cleanup.policy`.
    pub enable: bool,
    /// `log.cleaner.backoff.ms`: pause between two passes over a shard's compacted logs.
    pub backoff_ms: u64,
    /// `log.cleaner.dedupe.buffer.size`: memory for one run's key map, per shard (Kafka's is
    /// shared by its cleaner threads). A run whose dirty keys do not fit cleans a prefix.
    pub dedupe_buffer_bytes: usize,
    /// Topic defaults: `log.cleaner.delete.retention.ms`, `log.cleaner.min.cleanable.ratio`,
    /// `log.cleaner.min.compaction.lag.ms`, `log.cleaner.max.compaction.lag.ms`.
    pub defaults: crate::storage::cleaner::CompactionConfig,
}

impl Default for LogCleanerConfig {
    fn default() -> Self {
        LogCleanerConfig {
            enable: true,
            backoff_ms: 15_000,
            dedupe_buffer_bytes: 128 << 20,
            defaults: crate::storage::cleaner::CompactionConfig::default(),
        }
    }
}

/// How followers fetch and when a leader drops a lagging follower from the ISR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `replica.lag.time.max.ms`: a follower that has not caught up with the leader's log end
    /// for this long leaves the ISR (Kafka's default, 30 s).
    pub lag_time_max_ms: u64,
    /// `replica.fetch.max.bytes`: per partition and fetch; the first batch is sent whole even
    /// when larger (KIP-74).
    pub fetch_max_bytes: usize,
    /// `replica.fetch.response.max.bytes`: per fetch response.
    pub fetch_response_max_bytes: usize,
    /// `replica.fetch.wait.max.ms`: how long the leader may park a follower's fetch.
    pub fetch_wait_max_ms: u64,
    /// `replica.fetch.backoff.ms`: pause after a failed fetch before the next one.
    pub fetch_backoff_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            lag_time_max_ms: 30_000,
            // Kafka's default is 1 MiB; batches of bench-harness's size (1 MiB) need a little
            // more to move more than one per round trip.
            fetch_max_bytes: 4 << 20,
            fetch_response_max_bytes: 16 << 20,
            fetch_wait_max_ms: 500,
            fetch_backoff_ms: 100,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 0,
            cores: None,
            overprovisioned: false,
            listen: "0.0.0.0:9092".parse().expect("static address"),
            advertise: None,
            data_dir: PathBuf::from("./data"),
            http: None,
            http_disabled: false,
            num_partitions: 1,
            default_replication_factor: 1,
            min_insync_replicas: 1,
            delete_topic_enable: true,
            auto_create_topics_enable: true,
            message_max_bytes: 1_048_588,
            socket_request_max_bytes: 104_857_600,
            fetch_max_bytes: DEFAULT_FETCH_MAX_BYTES,
            fetch_cold_read_buffer_bytes: crate::storage::direct_read::DEFAULT_BUFFER_BYTES,
            max_connections: 10_000,
            max_inflight_requests_per_connection: 64,
            max_partitions: 100_000,
            fetch_session_cache_slots: 1000,
            log: LogConfig::default(),
            retention_check_interval_ms: 300_000,
            tail_cache_bytes_per_shard: 256 << 20,
            journal_dir: JournalDir::Default,
            journal_bytes_per_shard: None,
            stall_threshold_ms: DEFAULT_STALL_THRESHOLD_MS,
            stall_stack_interval_ms: 60_000,
            idle_poll_us: 0,
            request_slow_log_ms: DEFAULT_REQUEST_SLOW_LOG_MS,
            idle_release_ms: 30_000,
            quorum_voters: Vec::new(),
            controller_listen: None,
            broker_heartbeat_interval_ms: 250,
            broker_session_timeout_ms: 1500,
            unclean_leader_election_enable: false,
            groups: crate::groups::GroupConfig::default(),
            transaction_state: crate::transactions::TxnStateConfig::default(),
            replication: ReplicationConfig::default(),
            leader_rebalance: Default::default(),
            cleaner: LogCleanerConfig::default(),
        }
    }
}

/// `log.journal.dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalDir {
    /// `/dev/shm/broker-journal-<hash of the data directory's canonical path>`, if `/dev/shm`
    /// is there.
    Default,
    Off,
    At(PathBuf),
}

/// A configuration value that could not be used.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError(format!("invalid value for {key}: {value:?}")))
}

/// Parses `controller.quorum.voters`: `id@host:port` entries, comma-separated.
pub fn parse_voters(value: &str) -> Result<Vec<Voter>, ConfigError> {
    let mut voters = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, address) = entry.split_once('@').ok_or_else(|| {
            ConfigError(format!(
                "controller.quorum.voters: expected id@host:port, got {entry:?}"
            ))
        })?;
        let node_id: i32 = parse("controller.quorum.voters", id)?;
        if node_id < 0 {
            return Err(ConfigError(format!(
                "controller.quorum.voters: negative id in {entry:?}"
            )));
        }
        split_host_port("controller.quorum.voters", address)?;
        if voters.iter().any(|v: &Voter| v.node_id == node_id) {
            return Err(ConfigError(format!(
                "controller.quorum.voters: id {node_id} listed twice"
            )));
        }
        voters.push(Voter {
            node_id,
            address: address.to_string(),
        });
    }
    Ok(voters)
}

/// `shard.stall.threshold.ms` unless set: a task holding a shard this long delays every client
/// of the shard by as much (12x W3's 2 ms p99 target), and it is above the OS scheduler's time
/// slice, so a busy machine descheduling the thread for a slice is not reported as a stall.
pub const DEFAULT_STALL_THRESHOLD_MS: u64 = 25;

/// `fetch.max.bytes` unless set: Kafka's default (55 MiB).
pub const DEFAULT_FETCH_MAX_BYTES: usize = 57_671_680;

/// Kafka's lower bound for `fetch.max.bytes`.
pub const MIN_FETCH_MAX_BYTES: usize = 1024;

/// `request.slow.log.ms` unless set: a second in the broker is far outside what any request
/// should take on a healthy broker (W3's p99 target is 5 ms end to end), and rare enough that
/// the warning never floods a log.
pub const DEFAULT_REQUEST_SLOW_LOG_MS: u64 = 1000;

/// Shards when neither `--cores` nor `num.cores` says: the CPUs this process may run on.
/// `available_parallelism` counts the affinity mask (`taskset`, a cpuset) and a cgroup CPU
/// quota, not every online CPU.
pub fn default_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPUs this process may run on (its affinity mask), ascending: where shards are pinned.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity writes into a zeroed, properly sized cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Resolves `host:port` (names allowed) to a socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr, ConfigError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| ConfigError(format!("cannot resolve address {addr:?}")))
}

/// Splits `PLAINTEXT://host:port` (the first listener of a comma list that is not the
/// `CONTROLLER` one) into host and port.
fn parse_listener(key: &str, value: &str) -> Result<(String, u16), ConfigError> {
    let first = value
        .split(',')
        .map(str::trim)
        .find(|l| !l.starts_with("CONTROLLER://"))
        .unwrap_or("");
    split_host_port(key, first)
}

fn split_host_port(key: &str, listener: &str) -> Result<(String, u16), ConfigError> {
    let value = listener;
    let hostport = listener.rsplit("://").next().unwrap_or(listener);
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| ConfigError(format!("{key}: expected host:port, got {value:?}")))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok((host.trim_matches(['[', ']']).to_string(), parse(key, port)?))
}

impl BrokerConfig {
    /// Reads a Kafka-style properties file over the defaults.
    pub fn from_properties_file(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let file = std::fs::File::open(path)
            .map_err(|e| ConfigError(format!("cannot open {}: {e}", path.display())))?;
        let props = java_properties::read(std::io::BufReader::new(file))
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let mut config = BrokerConfig::default();
        config.apply_properties(&props)?;
        Ok(config)
    }

    /// Applies properties in a stable order so that, e.g., `log.retention.ms` wins over
    /// `log.retention.hours` whatever order the file lists them in, as in Kafka.
    pub fn apply_properties(&mut self, props: &HashMap<String, String>) -> Result<(), ConfigError> {
        let mut keys: Vec<&String> = props.keys().collect();
        keys.sort_by_key(|k| (k.as_str() == "log.retention.ms", k.as_str().to_owned()));
        for key in keys {
            self.apply(key, &props[key])?;
        }
        Ok(())
    }

    /// Applies one `key=value` (`--override`, as Kafka's start script takes it).
    pub fn apply_override(&mut self, assignment: &str) -> Result<(), ConfigError> {
        let (key, value) = assignment.split_once('=').ok_or_else(|| {
            ConfigError(format!("--override expects KEY=VALUE, got {assignment:?}"))
        })?;
        self.apply(key.trim(), value.trim())
    }

    fn apply(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "broker.id" | "node.id" => self.node_id = parse(key, value)?,
            "num.cores" => self.cores = Some(parse(key, value)?),
            "overprovisioned" => self.overprovisioned = parse(key, value)?,
            "listeners" => {
                let (host, port) = parse_listener(key, value)?;
                self.listen = resolve(&format!("{host}:{port}"))?;
                if let Some(controller) = value
                    .split(',')
                    .map(str::trim)
                    .find(|l| l.starts_with("CONTROLLER://"))
                {
                    let (host, port) = split_host_port(key, controller)?;
                    self.controller_listen = Some(resolve(&format!("{host}:{port}"))?);
                }
            }
            "controller.quorum.voters" => self.quorum_voters = parse_voters(value)?,
            "broker.heartbeat.interval.ms" => {
                self.broker_heartbeat_interval_ms = parse(key, value)?
            }
            "broker.session.timeout.ms" => self.broker_session_timeout_ms = parse(key, value)?,
            "unclean.leader.election.enable" => {
                self.unclean_leader_election_enable = parse(key, value)?
            }
            "auto.leader.rebalance.enable" => self.leader_rebalance.enable = parse(key, value)?,
            "leader.imbalance.check.interval.seconds" => {
                self.leader_rebalance.check_interval_seconds = parse(key, value)?
            }
            "leader.imbalance.per.broker.percentage" => {
                self.leader_rebalance.imbalance_percentage = parse(key, value)?
            }
            // Kafka's KRaft keys with no other meaning here.
            "process.roles"
            | "controller.listener.names"
            | "listener.security.protocol.map"
            | "inter.broker.listener.name" => {}
            "advertised.listeners" => self.advertise = Some(parse_listener(key, value)?),
            "http.listeners" => self.set_http(value)?,
            "log.dirs" | "log.dir" => {
                // Several log dirs are a JBOD feature we do not have: use the first.
                let first = value.split(',').next().unwrap_or("").trim();
                self.data_dir = PathBuf::from(first);
            }
            "num.partitions" => self.num_partitions = parse(key, value)?,
            "default.replication.factor" => self.default_replication_factor = parse(key, value)?,
            "min.insync.replicas" => self.min_insync_replicas = parse(key, value)?,
            "delete.topic.enable" => self.delete_topic_enable = parse(key, value)?,
            "auto.create.topics.enable" => self.auto_create_topics_enable = parse(key, value)?,
            "message.max.bytes" => self.message_max_bytes = parse(key, value)?,
            "socket.request.max.bytes" => self.socket_request_max_bytes = parse(key, value)?,
            "fetch.max.bytes" => self.fetch_max_bytes = parse(key, value)?,
            "fetch.cold.read.buffer.bytes" => {
                self.fetch_cold_read_buffer_bytes = parse(key, value)?
            }
            "max.connections" => self.max_connections = parse(key, value)?,
            "max.inflight.requests.per.connection" => {
                self.max_inflight_requests_per_connection = parse(key, value)?
            }
            "max.partitions" => self.max_partitions = parse(key, value)?,
            "max.incremental.fetch.session.cache.slots" => {
                self.fetch_session_cache_slots = parse(key, value)?
            }
            "log.segment.bytes" => self.log.segment_bytes = parse(key, value)?,
            "log.roll.ms" => self.log.segment_ms = parse(key, value)?,
            "log.roll.hours" => {
                self.log.segment_ms = parse::<i64>(key, value)?.saturating_mul(3_600_000)
            }
            "log.retention.hours" => {
                self.log.retention_ms = parse::<i64>(key, value)?.saturating_mul(3_600_000)
            }
            "log.retention.minutes" => {
                self.log.retention_ms = parse::<i64>(key, value)?.saturating_mul(60_000)
            }
            "log.retention.ms" => self.log.retention_ms = parse(key, value)?,
            "log.retention.bytes" => self.log.retention_bytes = parse(key, value)?,
            "log.segment.delete.delay.ms" => self.log.file_delete_delay_ms = parse(key, value)?,
            "log.preallocate.ahead.bytes" => self.log.preallocate_ahead_bytes = parse(key, value)?,
            "log.tail.cache.bytes" => self.tail_cache_bytes_per_shard = parse(key, value)?,
            "log.journal.dir" => {
                self.journal_dir = match value.trim() {
                    "" | "none" => JournalDir::Off,
                    dir => JournalDir::At(PathBuf::from(dir)),
                }
            }
            "log.journal.bytes" => self.journal_bytes_per_shard = Some(parse(key, value)?),
            "shard.stall.threshold.ms" => self.stall_threshold_ms = parse(key, value)?,
            "shard.stall.stack.interval.ms" => self.stall_stack_interval_ms = parse(key, value)?,
            "shard.idle.poll.us" => self.idle_poll_us = parse(key, value)?,
            "request.slow.log.ms" => self.request_slow_log_ms = parse(key, value)?,
            "log.idle.release.ms" => self.idle_release_ms = parse(key, value)?,
            "log.index.interval.bytes" => self.log.index_interval_bytes = parse(key, value)?,
            "log.retention.check.interval.ms" => {
                self.retention_check_interval_ms = parse(key, value)?
            }
            "group.min.session.timeout.ms" => {
                self.groups.min_session_timeout_ms = parse(key, value)?
            }
            "group.max.session.timeout.ms" => {
                self.groups.max_session_timeout_ms = parse(key, value)?
            }
            "group.initial.rebalance.delay.ms" => {
                self.groups.initial_rebalance_delay_ms = parse(key, value)?
            }
            "group.max.size" => self.groups.max_size = parse(key, value)?,
            "offsets.topic.num.partitions" => {
                self.groups.offsets_topic_partitions = parse(key, value)?
            }
            "transaction.state.log.num.partitions" => {
                self.transaction_state.partitions = parse(key, value)?
            }
            "transaction.state.log.segment.bytes" => {
                self.transaction_state.segment_bytes = parse(key, value)?
            }
            "replica.lag.time.max.ms" => self.replication.lag_time_max_ms = parse(key, value)?,
            "replica.fetch.max.bytes" => self.replication.fetch_max_bytes = parse(key, value)?,
            "replica.fetch.response.max.bytes" => {
                self.replication.fetch_response_max_bytes = parse(key, value)?
            }
            "replica.fetch.wait.max.ms" => self.replication.fetch_wait_max_ms = parse(key, value)?,
            "replica.fetch.backoff.ms" => self.replication.fetch_backoff_ms = parse(key, value)?,
            "offset.metadata.max.bytes" => {
                self.groups.offset_metadata_max_bytes = parse(key, value)?
            }
            "log.cleaner.enable" => self.cleaner.enable = parse(key, value)?,
            "log.cleaner.backoff.ms" => self.cleaner.backoff_ms = parse(key, value)?,
            "log.cleaner.dedupe.buffer.size" => {
                self.cleaner.dedupe_buffer_bytes = parse(key, value)?
            }
            "log.cleaner.delete.retention.ms" => {
                self.cleaner.defaults.delete_retention_ms = parse(key, value)?
            }
            "log.cleaner.min.cleanable.ratio" => {
                self.cleaner.defaults.min_cleanable_dirty_ratio = parse(key, value)?
            }
            "log.cleaner.min.compaction.lag.ms" => {
                self.cleaner.defaults.min_compaction_lag_ms = parse(key, value)?
            }
            "log.cleaner.max.compaction.lag.ms" => {
                self.cleaner.defaults.max_compaction_lag_ms = parse(key, value)?
            }
            // Kafka keys that have no meaning for this broker (threads, ZooKeeper, ...).
            _ => tracing::warn!(key, "ignoring unknown configuration key"),
        }
        Ok(())
    }

    /// `http.listeners` / `--http`: `[http://]HOST:PORT`, or `off` (or empty) for no console.
    pub fn set_http(&mut self, value: &str) -> Result<(), ConfigError> {
        let value = value.trim();
        if value.is_empty() || value.eq_ignore_ascii_case("off") {
            self.http = None;
            self.http_disabled = true;
            return Ok(());
        }
        let (host, port) = parse_listener("http.listeners", value)?;
        self.http = Some(resolve(&format!("{host}:{port}"))?);
        self.http_disabled = false;
        Ok(())
    }

    /// Checks cross-field rules once flags and file are merged.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.cores == Some(0) {
            return Err(ConfigError("--cores must be at least 1".into()));
        }
        if self.journal_bytes_per_shard.is_some_and(|bytes| {
            bytes < crate::storage::journal::RING_MIN_BYTES || !bytes.is_multiple_of(8)
        }) {
            return Err(ConfigError(format!(
                "log.journal.bytes must be a multiple of 8 and at least {}",
                crate::storage::journal::RING_MIN_BYTES
            )));
        }
        if self.message_max_bytes > self.socket_request_max_bytes {
            return Err(ConfigError(
                "message.max.bytes must not exceed socket.request.max.bytes".into(),
            ));
        }
        if self.fetch_max_bytes < MIN_FETCH_MAX_BYTES {
            return Err(ConfigError(format!(
                "fetch.max.bytes must be at least {MIN_FETCH_MAX_BYTES}"
            )));
        }
        if self.max_inflight_requests_per_connection == 0 || self.max_connections == 0 {
            return Err(ConfigError("connection limits must be at least 1".into()));
        }
        if self.num_partitions < 1 || self.default_replication_factor < 1 {
            return Err(ConfigError(
                "num.partitions and default.replication.factor must be at least 1".into(),
            ));
        }
        if !self.quorum_voters.is_empty()
            && !self.quorum_voters.iter().any(|v| v.node_id == self.node_id)
        {
            return Err(ConfigError(format!(
                "node.id {} is not in controller.quorum.voters; every node must be a voter \
                 (broker-only nodes are not supported yet)",
                self.node_id
            )));
        }
        if self.broker_heartbeat_interval_ms == 0
            || self.broker_session_timeout_ms < 2 * self.broker_heartbeat_interval_ms
        {
            return Err(ConfigError(
                "broker.session.timeout.ms must be at least twice broker.heartbeat.interval.ms"
                    .into(),
            ));
        }
        if self.groups.offsets_topic_partitions < 1
            || self.groups.min_session_timeout_ms > self.groups.max_session_timeout_ms
            || self.groups.initial_rebalance_delay_ms < 0
            || self.groups.offset_metadata_max_bytes > crate::groups::MAX_OFFSET_METADATA_BYTES
        {
            return Err(ConfigError(
                "offsets.topic.num.partitions must be at least 1, group.min.session.timeout.ms at most group.max.session.timeout.ms, group.initial.rebalance.delay.ms not negative, offset.metadata.max.bytes at most 8192".into(),
            ));
        }
        if self.transaction_state.partitions < 1
            || self.transaction_state.segment_bytes < crate::transactions::MIN_STATE_SEGMENT_BYTES
        {
            return Err(ConfigError(format!(
                "transaction.state.log.num.partitions must be at least 1, transaction.state.log.segment.bytes at least {}",
                crate::transactions::MIN_STATE_SEGMENT_BYTES
            )));
        }
        self.log.max_batch_bytes = self.message_max_bytes;
        Ok(())
    }

    /// Whether shard `i` runs on CPU `allowed[i]` only: when there is a CPU for every shard and
    /// the machine is not `overprovisioned`.
    pub fn pins_shards(&self, allowed_cpus: usize) -> bool {
        !self.overprovisioned && self.shards() <= allowed_cpus
    }

    /// Shards to start: `num.cores` / `--cores`, else [`default_cores`].
    pub fn shards(&self) -> usize {
        self.cores.unwrap_or_else(default_cores)
    }

    /// True for a node of a multi-voter cluster (not a single node, its own quorum of one).
    pub fn is_clustered(&self) -> bool {
        self.quorum_voters.len() > 1
    }

    /// Host and port that clients are told to connect to.
    pub fn advertised(&self, bound: SocketAddr) -> (String, u16) {
        match &self.advertise {
            Some((host, port)) => (host.clone(), if *port == 0 { bound.port() } else { *port }),
            None => {
                let host = if bound.ip().is_unspecified() {
                    "localhost".to_string()
                } else {
                    bound.ip().to_string()
                };
                (host, bound.port())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_keys_are_understood() {
        let props: HashMap<String, String> = [
            ("broker.id", "2"),
            ("listeners", "PLAINTEXT://127.0.0.1:9094"),
            ("advertised.listeners", "PLAINTEXT://kafka2:9094"),
            ("log.dirs", "/var/lib/broker/d2"),
            ("log.retention.ms", "1000"),
            ("log.retention.hours", "5"),
            ("num.partitions", "3"),
            ("zookeeper.connect", "localhost:2181"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut config = BrokerConfig::default();
        config.apply_properties(&props).unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(
            config.listen,
            "127.0.0.1:9094".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.advertise, Some(("kafka2".to_string(), 9094)));
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/broker/d2"));
        assert_eq!(config.log.retention_ms, 1000, "ms wins over hours");
        assert_eq!(config.num_partitions, 3);
    }

    #[test]
    fn fetch_max_bytes_is_kafkas_and_bounded_below() {
        let mut config = BrokerConfig::default();
        assert_eq!(config.fetch_max_bytes, 57_671_680, "Kafka's default");
        let props = |value: &str| -> HashMap<String, String> {
            [("fetch.max.bytes".to_string(), value.to_string())]
                .into_iter()
                .collect()
        };
        config.apply_properties(&props("1048576")).unwrap();
        assert_eq!(config.fetch_max_bytes, 1 << 20);
        assert!(config.validate().is_ok());
        config.apply_properties(&props("1023")).unwrap();
        assert!(config.validate().is_err(), "below Kafka's 1024");
    }

    #[test]
    fn shard_keys_are_understood() {
        let mut config = BrokerConfig::default();
        assert_eq!(config.idle_poll_us, 0, "shards sleep at once by default");
        let props: HashMap<String, String> = [
            ("shard.idle.poll.us", "50"),
            ("shard.stall.threshold.ms", "40"),
            ("shard.stall.stack.interval.ms", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        config.apply_properties(&props).unwrap();
        assert_eq!(config.idle_poll_us, 50);
        assert_eq!(config.stall_threshold_ms, 40);
        assert_eq!(config.stall_stack_interval_ms, 0);
        let bad: HashMap<String, String> = [("shard.idle.poll.us".to_string(), "-1".to_string())]
            .into_iter()
            .collect();
        assert!(config.apply_properties(&bad).is_err());
    }

    #[test]
    fn cluster_keys_are_understood() {
        let props: HashMap<String, String> = [
            ("node.id", "1"),
            ("process.roles", "broker,controller"),
            (
                "listeners",
                "CONTROLLER://127.0.0.1:9191,PLAINTEXT://127.0.0.1:9093",
            ),
            (
                "controller.quorum.voters",
                "0@127.0.0.1:9190,1@127.0.0.1:9191,2@localhost:9192",
            ),
            ("broker.session.timeout.ms", "3000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut config = BrokerConfig::default();
        config.apply_properties(&props).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.listen,
            "127.0.0.1:9093".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            config.controller_listen,
            Some("127.0.0.1:9191".parse().unwrap())
        );
        assert_eq!(config.quorum_voters.len(), 3);
        assert_eq!(config.quorum_voters[2].address, "localhost:9192");
        assert_eq!(config.broker_session_timeout_ms, 3000);
        assert!(parse_voters("0@a:1,0@b:2").is_err());
        assert!(parse_voters("x@a:1").is_err());
        assert!(parse_voters("1:9092").is_err());
        config.node_id = 7;
        assert!(
            config.validate().is_err(),
            "a node outside the voters is refused"
        );
    }

    #[test]
    fn the_shipped_cluster_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for i in 0..3 {
            let mut config =
                BrokerConfig::from_properties_file(&dir.join(format!("server-{i}.properties")))
                    .unwrap();
            config.validate().unwrap();
            assert_eq!(config.node_id, i);
            assert_eq!(config.listen.port(), 9092 + i as u16);
            assert_eq!(config.controller_listen.unwrap().port(), 9192 + i as u16);
            assert_eq!(config.quorum_voters.len(), 3);
        }
    }

    #[test]
    fn shards_default_to_the_cpus_this_process_may_use() {
        let mut config = BrokerConfig::default();
        assert_eq!(config.cores, None);
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(config.shards(), cpus);
        assert!(
            allowed_cpus().len() >= cpus,
            "pinning has a CPU for every default shard"
        );
        let props = HashMap::from([("num.cores".to_string(), "3".to_string())]);
        config.apply_properties(&props).unwrap();
        assert_eq!((config.cores, config.shards()), (Some(3), 3));
        config.cores = Some(0);
        assert!(config.validate().is_err());
    }

    #[test]
    fn bad_values_are_rejected() {
        let props = HashMap::from([("num.partitions".to_string(), "many".to_string())]);
        assert!(BrokerConfig::default().apply_properties(&props).is_err());
    }

    #[test]
    fn http_listeners_take_an_address_or_off() {
        let mut config = BrokerConfig::default();
        config.set_http("http://127.0.0.1:8081").unwrap();
        assert_eq!(config.http, Some("127.0.0.1:8081".parse().unwrap()));
        assert!(!config.http_disabled);
        config.set_http("off").unwrap();
        assert_eq!((config.http, config.http_disabled), (None, true));
        let props = HashMap::from([("http.listeners".to_string(), "127.0.0.1:0".to_string())]);
        let mut config = BrokerConfig::default();
        config.apply_properties(&props).unwrap();
        assert_eq!(config.http.map(|a| a.port()), Some(0));
        assert!(config.set_http("no-port-here").is_err());
    }
}
