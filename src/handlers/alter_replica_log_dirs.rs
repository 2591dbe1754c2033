//! AlterReplicaLogDirs (key 34), v1-2 (the `kafka-protocol` crate decodes no v0, whose layout
//! is v1's): move replicas between this broker's log directories.
//!
//! The broker has one data directory (`log.dirs` takes the first entry of a list: several
//! directories, Kafka's JBOD, are not supported), so it answers as Kafka does for a broker with
//! one directory: moving a replica it holds to that directory succeeds (it is already there),
//! another directory is LOG_DIR_NOT_FOUND, a partition that does not exist is
//! UNKNOWN_TOPIC_OR_PARTITION and one without a replica here REPLICA_NOT_AVAILABLE.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use kafka_protocol::messages::alter_replica_log_dirs_response::{
    AlterReplicaLogDirPartitionResult, AlterReplicaLogDirTopicResult,
};
use kafka_protocol::messages::{
    AlterReplicaLogDirsRequest, AlterReplicaLogDirsResponse, TopicName,
};
use kafka_protocol::ResponseError;

use crate::shard::Shard;

/// Whether `path` names the broker's data directory, as configured or resolved.
fn is_data_dir(data_dir: &Path, path: &str) -> bool {
    let path = Path::new(path);
    if path == data_dir {
        return true;
    }
    match (std::fs::canonicalize(path), std::fs::canonicalize(data_dir)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

pub async fn handle(
    shard: &Rc<Shard>,
    _version: i16,
    request: AlterReplicaLogDirsRequest,
) -> AlterReplicaLogDirsResponse {
    let snapshot = shard.metadata();
    let this_node = shard.broker.node_id;
    let mut topics: BTreeMap<String, Vec<AlterReplicaLogDirPartitionResult>> = BTreeMap::new();
    for dir in request.dirs {
        let known_dir = is_data_dir(&shard.config.data_dir, dir.path.as_str());
        for topic in dir.topics {
            let name = topic.name.0.to_string();
            for index in topic.partitions {
                let error = if !known_dir {
                    ResponseError::LogDirNotFound
                } else {
                    match snapshot.partition(&name, index) {
                        None => ResponseError::UnknownTopicOrPartition,
                        Some(p) if !p.replicas.contains(&this_node) => {
                            ResponseError::ReplicaNotAvailable
                        }
                        Some(_) => {
                            tracing::debug!(topic = %name, partition = index, "replica already in the requested (only) log dir");
                            topics.entry(name.clone()).or_default().push({
                                let mut r = AlterReplicaLogDirPartitionResult::default();
                                r.partition_index = index;
                                r
                            });
                            continue;
                        }
                    }
                };
                let mut r = AlterReplicaLogDirPartitionResult::default();
                r.partition_index = index;
                r.error_code = error.code();
                topics.entry(name.clone()).or_default().push(r);
            }
        }
    }
    let mut response = AlterReplicaLogDirsResponse::default();
    response.results = topics
        .into_iter()
        .map(|(name, partitions)| {
            let mut t = AlterReplicaLogDirTopicResult::default();
            t.topic_name = TopicName(name.into());
            t.partitions = partitions;
            t
        })
        .collect();
    response
}
