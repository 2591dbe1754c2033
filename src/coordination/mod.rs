//! The coordination role (what ZooKeeper does in a classic Kafka setup): the broker registry,
//! topic and partition assignment, leader selection, and the durable metadata log.
//!
//! A single node runs it embedded on shard 0. Every change is appended to the metadata log
//! (fdatasync) before a new [`ClusterMetadata`] snapshot is built and pushed to the shards.
//! Owned by shard 0 only; other shards reach it with `Shard::invoke_on(0, ...)`.

pub mod metadata;
pub mod metadata_log;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use uuid::Uuid;

pub use metadata::{BrokerInfo, ClusterMetadata, PartitionMetadata, TopicMetadata};
use metadata_log::{MetadataLog, MetadataRecord};

use crate::protocol::ApiError;

/// Producer ids are handed out in blocks; one metadata record covers a whole block.
const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// Topic configuration keys accepted in CreateTopics, with the broker key they override.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "max.message.bytes",
    "cleanup.policy",
    "min.insync.replicas",
    "message.timestamp.type",
];

/// A registered broker: its registration sequence decides leadership among in-sync replicas
/// (lowest first), as with ZooKeeper's sequential ephemeral nodes.
#[derive(Debug, Clone)]
struct Registration {
    info: BrokerInfo,
    sequence: u64,
}

struct State {
    cluster_id: String,
    version: u64,
    brokers: Vec<Registration>,
    topics: BTreeMap<String, Arc<TopicMetadata>>,
    next_producer_id: i64,
    producer_id_block_end: i64,
}

/// The coordinator. Lives on shard 0; `!Send`.
pub struct Coordinator {
    node_id: i32,
    state: RefCell<State>,
    log: RefCell<MetadataLog>,
}

impl Coordinator {
    /// Replays the metadata log under `data_dir/coordination` and registers this broker.
    pub fn open(data_dir: &Path, this_broker: BrokerInfo) -> std::io::Result<Coordinator> {
        let (mut log, records) = MetadataLog::open(&data_dir.join("coordination"))?;
        let mut state = State {
            cluster_id: String::new(),
            version: 1,
            brokers: vec![Registration {
                info: this_broker.clone(),
                sequence: 0,
            }],
            topics: BTreeMap::new(),
            next_producer_id: 0,
            producer_id_block_end: 0,
        };
        let replayed = records.len();
        for record in records {
            apply(&mut state, record);
        }
        if state.cluster_id.is_empty() {
            let cluster_id = short_cluster_id(Uuid::new_v4());
            log.append(&[MetadataRecord::ClusterCreated {
                cluster_id: cluster_id.clone(),
            }])?;
            state.cluster_id = cluster_id;
        }
        // Ids of a block that may have been handed out before a crash are never reused.
        state.next_producer_id = state.producer_id_block_end;
        tracing::info!(
            replayed,
            topics = state.topics.len(),
            cluster_id = %state.cluster_id,
            "coordination state loaded"
        );
        Ok(Coordinator {
            node_id: this_broker.node_id,
            state: RefCell::new(state),
            log: RefCell::new(log),
        })
    }

    /// The current snapshot, to publish to every shard.
    pub fn snapshot(&self) -> Arc<ClusterMetadata> {
        let state = self.state.borrow();
        Arc::new(ClusterMetadata {
            version: state.version,
            cluster_id: state.cluster_id.clone(),
            controller_id: self.node_id,
            brokers: state.brokers.iter().map(|r| r.info.clone()).collect(),
            topics: state.topics.clone(),
        })
    }

    fn live_brokers(&self) -> Vec<i32> {
        let state = self.state.borrow();
        let mut brokers = state.brokers.clone();
        brokers.sort_by_key(|r| r.sequence);
        brokers.iter().map(|r| r.info.node_id).collect()
    }

    /// Creates a topic (or only validates the request). Replicas are spread round-robin over the
    /// live brokers; the first replica, the earliest registered, leads.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: Vec<(String, String)>,
        validate_only: bool,
        max_partitions: usize,
    ) -> Result<Arc<TopicMetadata>, ApiError> {
        metadata::validate_topic_name(name)
            .map_err(|m| ApiError::new(ResponseError::InvalidTopicException, m))?;
        if self.state.borrow().topics.contains_key(name) {
            return Err(ApiError::new(
                ResponseError::TopicAlreadyExists,
                format!("Topic '{name}' already exists."),
            ));
        }
        if partitions < 1 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                "Number of partitions must be larger than 0.",
            ));
        }
        let live = self.live_brokers();
        if replication_factor < 1 || replication_factor as usize > live.len() {
            return Err(ApiError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "Replication factor: {replication_factor} larger than available brokers: {}.",
                    live.len()
                ),
            ));
        }
        for (key, _) in &configs {
            if !TOPIC_CONFIG_KEYS.contains(&key.as_str()) {
                return Err(ApiError::new(
                    ResponseError::InvalidConfig,
                    format!("Unknown topic config name: {key}"),
                ));
            }
        }
        self.check_partition_limit(partitions as usize, max_partitions)?;
        let assignments = assign_replicas(&live, 0, partitions, replication_factor);
        let record = MetadataRecord::TopicCreated {
            name: name.to_string(),
            id: *Uuid::new_v4().as_bytes(),
            assignments,
            configs,
        };
        if validate_only {
            let mut scratch = State {
                cluster_id: String::new(),
                version: 0,
                brokers: Vec::new(),
                topics: BTreeMap::new(),
                next_producer_id: 0,
                producer_id_block_end: 0,
            };
            apply(&mut scratch, record);
            return Ok(scratch.topics.remove(name).expect("topic just applied"));
        }
        self.commit(vec![record])?;
        Ok(self.state.borrow().topics[name].clone())
    }

    pub fn delete_topic(&self, name: &str) -> Result<(), ApiError> {
        if !self.state.borrow().topics.contains_key(name) {
            return Err(ApiError::new(
                ResponseError::UnknownTopicOrPartition,
                "This server does not host this topic-partition.",
            ));
        }
        self.commit(vec![MetadataRecord::TopicDeleted {
            name: name.to_string(),
        }])
    }

    /// Grows a topic to `count` partitions (Kafka never shrinks one).
    pub fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
        max_partitions: usize,
    ) -> Result<(), ApiError> {
        let current = match self.state.borrow().topics.get(name) {
            Some(topic) => topic.partitions.len() as i32,
            None => {
                return Err(ApiError::new(
                    ResponseError::UnknownTopicOrPartition,
                    "This server does not host this topic-partition.",
                ))
            }
        };
        if count <= current {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("Topic currently has {current} partitions, which is higher than or equal to the requested {count}."),
            ));
        }
        self.check_partition_limit((count - current) as usize, max_partitions)?;
        if validate_only {
            return Ok(());
        }
        let rf = self.state.borrow().topics[name].partitions[0]
            .replicas
            .len() as i16;
        let assignments = assign_replicas(&self.live_brokers(), current, count - current, rf);
        self.commit(vec![MetadataRecord::PartitionsCreated {
            name: name.to_string(),
            assignments,
        }])
    }

    /// Refuses to grow the cluster past `max.partitions`.
    fn check_partition_limit(&self, added: usize, max_partitions: usize) -> Result<(), ApiError> {
        let existing: usize = self
            .state
            .borrow()
            .topics
            .values()
            .map(|t| t.partitions.len())
            .sum();
        if existing + added > max_partitions {
            return Err(ApiError::new(
                ResponseError::PolicyViolation,
                format!("the broker is limited to {max_partitions} partitions (max.partitions)"),
            ));
        }
        Ok(())
    }

    /// Hands out a producer id for an idempotent producer; ids are never reused, even across
    /// restarts, because a block is made durable before any id in it is returned.
    pub fn allocate_producer_id(&self) -> Result<i64, ApiError> {
        let needs_block = {
            let state = self.state.borrow();
            state.next_producer_id >= state.producer_id_block_end
        };
        if needs_block {
            let block_end = self.state.borrow().producer_id_block_end + PRODUCER_ID_BLOCK_SIZE;
            self.commit(vec![MetadataRecord::ProducerIdBlock { block_end }])?;
        }
        let mut state = self.state.borrow_mut();
        let id = state.next_producer_id;
        state.next_producer_id += 1;
        debug_assert!(id < state.producer_id_block_end);
        Ok(id)
    }

    /// Makes records durable, then applies them and bumps the snapshot version.
    fn commit(&self, records: Vec<MetadataRecord>) -> Result<(), ApiError> {
        self.log.borrow_mut().append(&records).map_err(|e| {
            tracing::error!(error = %e, "metadata log write failed");
            ApiError::new(
                ResponseError::KafkaStorageError,
                format!("metadata log: {e}"),
            )
        })?;
        let mut state = self.state.borrow_mut();
        for record in records {
            apply(&mut state, record);
        }
        state.version += 1;
        Ok(())
    }
}

fn apply(state: &mut State, record: MetadataRecord) {
    match record {
        MetadataRecord::ClusterCreated { cluster_id } => state.cluster_id = cluster_id,
        MetadataRecord::TopicCreated {
            name,
            id,
            assignments,
            configs,
        } => {
            let topic = TopicMetadata {
                name: name.clone(),
                id: Uuid::from_bytes(id),
                partitions: assignments.into_iter().map(partition_for).collect(),
                configs: configs.into_iter().collect(),
            };
            state.topics.insert(name, Arc::new(topic));
        }
        MetadataRecord::PartitionsCreated { name, assignments } => {
            if let Some(topic) = state.topics.get_mut(&name) {
                let topic = Arc::make_mut(topic);
                topic
                    .partitions
                    .extend(assignments.into_iter().map(partition_for));
            }
        }
        MetadataRecord::TopicDeleted { name } => {
            state.topics.remove(&name);
        }
        MetadataRecord::ProducerIdBlock { block_end } => {
            state.producer_id_block_end = state.producer_id_block_end.max(block_end)
        }
    }
}

fn partition_for(replicas: Vec<i32>) -> PartitionMetadata {
    assert!(
        !replicas.is_empty(),
        "a partition needs at least one replica"
    );
    PartitionMetadata {
        leader: replicas[0],
        leader_epoch: 0,
        isr: replicas.clone(),
        replicas,
    }
}

/// Round-robin placement: partition `p` starts at broker `p mod n`, so leadership spreads.
fn assign_replicas(live: &[i32], first_partition: i32, count: i32, rf: i16) -> Vec<Vec<i32>> {
    assert!(!live.is_empty() && rf as usize <= live.len());
    (first_partition..first_partition + count)
        .map(|p| {
            (0..rf as usize)
                .map(|r| live[(p as usize + r) % live.len()])
                .collect()
        })
        .collect()
}

/// Kafka cluster ids are 22-character URL-safe base64 of a UUID.
fn short_cluster_id(id: Uuid) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let value = id.as_u128();
    (0..22)
        .map(|i| ALPHABET[((value >> (i * 6)) & 63) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker() -> BrokerInfo {
        BrokerInfo {
            node_id: 0,
            host: "localhost".into(),
            port: 9092,
            rack: None,
        }
    }

    #[test]
    fn topics_and_producer_ids_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first_pid;
        {
            let c = Coordinator::open(dir.path(), broker()).unwrap();
            c.create_topic("a", 3, 1, vec![], false, 100).unwrap();
            c.create_topic(
                "b",
                1,
                1,
                vec![("retention.ms".into(), "5".into())],
                false,
                100,
            )
            .unwrap();
            c.create_partitions("b", 2, false, 100).unwrap();
            c.delete_topic("a").unwrap();
            first_pid = c.allocate_producer_id().unwrap();
        }
        let c = Coordinator::open(dir.path(), broker()).unwrap();
        let snap = c.snapshot();
        assert!(snap.topic("a").is_none());
        let b = snap.topic("b").unwrap();
        assert_eq!(b.partitions.len(), 2);
        assert_eq!(b.configs["retention.ms"], "5");
        assert!(c.allocate_producer_id().unwrap() > first_pid);
    }

    #[test]
    fn invalid_requests_get_kafka_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = Coordinator::open(dir.path(), broker()).unwrap();
        let code = |r: Result<Arc<TopicMetadata>, ApiError>| r.unwrap_err().code;
        assert_eq!(
            code(c.create_topic("t", 1, 3, vec![], false, 100)),
            ResponseError::InvalidReplicationFactor
        );
        assert_eq!(
            code(c.create_topic("t", 0, 1, vec![], false, 100)),
            ResponseError::InvalidPartitions
        );
        assert_eq!(
            code(c.create_topic("bad name", 1, 1, vec![], false, 100)),
            ResponseError::InvalidTopicException
        );
        assert_eq!(
            code(c.create_topic("t", 200, 1, vec![], false, 100)),
            ResponseError::PolicyViolation
        );
        c.create_topic("t", 1, 1, vec![], true, 100).unwrap();
        assert!(
            c.snapshot().topic("t").is_none(),
            "validate_only creates nothing"
        );
        c.create_topic("t", 1, 1, vec![], false, 100).unwrap();
        assert_eq!(
            code(c.create_topic("t", 1, 1, vec![], false, 100)),
            ResponseError::TopicAlreadyExists
        );
        assert_eq!(
            c.create_partitions("t", 1, false, 100).unwrap_err().code,
            ResponseError::InvalidPartitions
        );
    }

    #[test]
    fn cluster_ids_look_like_kafkas() {
        let id = short_cluster_id(Uuid::new_v4());
        assert_eq!(id.len(), 22);
    }
}
