//! The cluster metadata snapshot every shard reads.
//!
//! The coordinator builds a new immutable snapshot on every change and pushes it to every shard;
//! shards swap their pointer. A snapshot is never mutated after it is built, which is what makes
//! sharing it across cores (behind an `Arc`) safe without a lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

/// A broker known to the cluster, as advertised to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Order of registration with the coordination quorum (lower registered earlier; leadership
    /// prefers it). `None` before this broker's own registration committed.
    pub registration_sequence: Option<u64>,
}

/// Replica placement and leadership of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub leader: i32,
    /// Increases on every leadership change; stamped into appended batches.
    pub leader_epoch: i32,
    /// Increases on every change of the partition's state (ISR, leader); a leader's ISR change
    /// (`AlterPartition`) names the one it read, so a stale change is refused.
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// A running reassignment's joining and leaving replicas (both empty otherwise).
    pub adding_replicas: Vec<i32>,
    pub removing_replicas: Vec<i32>,
}

/// A topic as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub id: Uuid,
    pub partitions: Vec<PartitionMetadata>,
    /// Per-topic overrides of broker log settings (`retention.ms`, `segment.bytes`, ...).
    pub configs: BTreeMap<String, String>,
}

/// An immutable view of the cluster at one version.
#[derive(Debug, Clone)]
pub struct ClusterMetadata {
    /// Strictly increases with every change the coordinator publishes.
    pub version: u64,
    pub cluster_id: String,
    /// The voter leading the coordination quorum (Kafka's active controller), -1 if none.
    pub controller_id: i32,
    /// Live (registered, unexpired) brokers, earliest registration first.
    pub brokers: Vec<BrokerInfo>,
    pub topics: BTreeMap<String, Arc<TopicMetadata>>,
    /// Recently deleted topics (name, id): a broker that was down during a delete removes the
    /// partition directories it still holds for them.
    pub deleted_topics: Vec<(String, Uuid)>,
    /// Each live broker's epoch: its registration's random incarnation. Never shown to clients:
    /// a replica fetch must carry its broker's epoch (KIP-903), which is what stops a client
    /// from fetching as a replica and moving the high watermark (the CVE-2018-1288 class).
    pub broker_epochs: BTreeMap<i32, i64>,
    /// Topic names by id, for Fetch v13+ (topics named by id): built with the snapshot from
    /// `topics`, so a replica fetch never scans every topic.
    pub topic_names_by_id: BTreeMap<Uuid, String>,
    /// Dynamic broker configs by broker id as a string, `""` for the cluster default.
    pub broker_configs: BTreeMap<String, BTreeMap<String, String>>,
}

impl ClusterMetadata {
    /// The snapshot a shard holds before the coordinator's first push.
    pub fn empty() -> ClusterMetadata {
        ClusterMetadata {
            version: 0,
            cluster_id: String::new(),
            controller_id: -1,
            brokers: Vec::new(),
            topics: BTreeMap::new(),
            deleted_topics: Vec::new(),
            broker_epochs: BTreeMap::new(),
            topic_names_by_id: BTreeMap::new(),
            broker_configs: BTreeMap::new(),
        }
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMetadata>> {
        self.topics.get(name)
    }

    /// A partition's leader, if the topic and index exist and it has one.
    pub fn partition_leader(&self, topic: &str, index: i32) -> Option<i32> {
        self.partition(topic, index)
            .map(|p| p.leader)
            .filter(|&leader| leader >= 0)
    }

    /// A partition's state, if the topic and index exist.
    pub fn partition(&self, topic: &str, index: i32) -> Option<&PartitionMetadata> {
        let index = usize::try_from(index).ok()?;
        self.topics.get(topic)?.partitions.get(index)
    }

    /// A topic by its id (Fetch v13+ names topics by id).
    pub fn topic_by_id(&self, id: Uuid) -> Option<&Arc<TopicMetadata>> {
        self.topics.get(self.topic_names_by_id.get(&id)?)
    }

    pub fn broker(&self, node_id: i32) -> Option<&BrokerInfo> {
        self.brokers.iter().find(|b| b.node_id == node_id)
    }

    /// The dynamic value of broker config `key` for `node_id`: its own, else the cluster
    /// default; `None` when neither is set (the static value applies).
    pub fn dynamic_broker_config(&self, node_id: i32, key: &str) -> Option<&str> {
        if self.broker_configs.is_empty() {
            // The common case, on the produce path: no allocation for the id's string.
            return None;
        }
        self.broker_configs
            .get(&node_id.to_string())
            .and_then(|c| c.get(key))
            .or_else(|| self.broker_configs.get("").and_then(|c| c.get(key)))
            .map(String::as_str)
    }

    pub fn partition_count(&self) -> usize {
        self.topics.values().map(|t| t.partitions.len()).sum()
    }
}

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters long, the limit is 249",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains {c:?}: only [a-zA-Z0-9._-] are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name("späti").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
    }
}
