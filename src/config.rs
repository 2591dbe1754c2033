//! Broker configuration: Kafka-style properties file, overridden by command-line flags.
//!
//! Keys that mean the same as in Apache Kafka keep Kafka's names (`broker.id`, `listeners`,
//! `log.dirs`, ...), so an operator's existing `server.properties` mostly carries over. Unknown
//! keys are logged and ignored, as Kafka does.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use crate::storage::LogConfig;

/// Everything a broker process needs to start. Immutable after start; every shard holds a copy.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `broker.id` / `--node-id`.
    pub node_id: i32,
    /// Number of shards (glommio executors, one per core when pinned).
    pub cores: usize,
    /// `listeners` / `--listen`: where clients connect. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// `advertised.listeners` / `--advertise`: host and port returned in Metadata.
    /// `None` means "the listen address" (with the port actually bound).
    pub advertise: Option<(String, u16)>,
    /// `log.dirs` / `--data-dir`.
    pub data_dir: PathBuf,
    /// `--http`: admin console and metrics (served by a later component).
    pub http: Option<SocketAddr>,
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
    /// `max.connections`: per broker; connections above it are closed at accept.
    pub max_connections: usize,
    /// `max.inflight.requests.per.connection`: requests read ahead of their responses.
    /// Reading pauses at this limit (backpressure), it is not an error.
    pub max_inflight_requests_per_connection: usize,
    /// `max.partitions`: total partitions the broker will host.
    pub max_partitions: usize,
    /// Log settings that topics inherit unless they override them.
    pub log: LogConfig,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    /// `log.tail.cache.bytes`: memory per shard for the newest batches of its partitions,
    /// served to tailing consumers without touching the device; split over the shard's
    /// partitions (`Shard::log_config_for`). 0 disables the cache.
    pub tail_cache_bytes_per_shard: u64,
    /// Consumer group coordinator settings (`group.*`, `offsets.topic.num.partitions`, ...).
    pub groups: crate::groups::GroupConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 0,
            cores: 1,
            listen: "0.0.0.0:9092".parse().expect("static address"),
            advertise: None,
            data_dir: PathBuf::from("./data"),
            http: None,
            num_partitions: 1,
            default_replication_factor: 1,
            min_insync_replicas: 1,
            delete_topic_enable: true,
            auto_create_topics_enable: true,
            message_max_bytes: 1_048_588,
            socket_request_max_bytes: 104_857_600,
            max_connections: 10_000,
            max_inflight_requests_per_connection: 64,
            max_partitions: 100_000,
            log: LogConfig::default(),
            retention_check_interval_ms: 300_000,
            tail_cache_bytes_per_shard: 256 << 20,
            groups: crate::groups::GroupConfig::default(),
        }
    }
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

/// Resolves `host:port` (names allowed) to a socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr, ConfigError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| ConfigError(format!("cannot resolve address {addr:?}")))
}

/// Splits `PLAINTEXT://host:port` (first listener of a comma list) into host and port.
fn parse_listener(key: &str, value: &str) -> Result<(String, u16), ConfigError> {
    let first = value.split(',').next().unwrap_or("").trim();
    let hostport = first.rsplit("://").next().unwrap_or(first);
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

    fn apply(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "broker.id" | "node.id" => self.node_id = parse(key, value)?,
            "num.cores" => self.cores = parse(key, value)?,
            "listeners" => {
                let (host, port) = parse_listener(key, value)?;
                self.listen = resolve(&format!("{host}:{port}"))?;
            }
            "advertised.listeners" => self.advertise = Some(parse_listener(key, value)?),
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
            "max.connections" => self.max_connections = parse(key, value)?,
            "max.inflight.requests.per.connection" => {
                self.max_inflight_requests_per_connection = parse(key, value)?
            }
            "max.partitions" => self.max_partitions = parse(key, value)?,
            "log.segment.bytes" => self.log.segment_bytes = parse(key, value)?,
            "log.retention.hours" => {
                self.log.retention_ms = parse::<i64>(key, value)?.saturating_mul(3_600_000)
            }
            "log.retention.minutes" => {
                self.log.retention_ms = parse::<i64>(key, value)?.saturating_mul(60_000)
            }
            "log.retention.ms" => self.log.retention_ms = parse(key, value)?,
            "log.retention.bytes" => self.log.retention_bytes = parse(key, value)?,
            "log.tail.cache.bytes" => self.tail_cache_bytes_per_shard = parse(key, value)?,
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
            "offset.metadata.max.bytes" => {
                self.groups.offset_metadata_max_bytes = parse(key, value)?
            }
            // Kafka keys that have no meaning for this broker (threads, ZooKeeper, ...).
            _ => tracing::warn!(key, "ignoring unknown configuration key"),
        }
        Ok(())
    }

    /// Checks cross-field rules once flags and file are merged.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.cores == 0 {
            return Err(ConfigError("--cores must be at least 1".into()));
        }
        if self.message_max_bytes > self.socket_request_max_bytes {
            return Err(ConfigError(
                "message.max.bytes must not exceed socket.request.max.bytes".into(),
            ));
        }
        if self.max_inflight_requests_per_connection == 0 || self.max_connections == 0 {
            return Err(ConfigError("connection limits must be at least 1".into()));
        }
        if self.num_partitions < 1 || self.default_replication_factor < 1 {
            return Err(ConfigError(
                "num.partitions and default.replication.factor must be at least 1".into(),
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
        self.log.max_batch_bytes = self.message_max_bytes;
        Ok(())
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
    fn bad_values_are_rejected() {
        let props = HashMap::from([("num.partitions".to_string(), "many".to_string())]);
        assert!(BrokerConfig::default().apply_properties(&props).is_err());
    }
}
