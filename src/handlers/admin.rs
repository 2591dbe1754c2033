//! Administrative APIs: CreateTopics (19), DeleteTopics (20), CreatePartitions (37),
//! DescribeConfigs (32), InitProducerId (22), DescribeCluster (60).
//!
//! Changes go to the coordinator on shard 0, which makes them durable in the metadata log and
//! publishes the new snapshot to every shard before the response is sent: when a client hears
//! "created", every shard already hosts the partitions.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::coordination::state_machine::{Command, NewTopic};
use crate::coordination::Coordinator;
use crate::protocol::ApiError;
use crate::shard::Shard;

/// How long a topic change may wait for the coordination quorum when the request gives no
/// timeout (or an unreasonable one).
const DEFAULT_COORDINATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `f` against the coordinator on shard 0, then publishes the resulting metadata to every
/// shard, so that when the client hears "done" this broker already serves the change.
pub async fn coordinate<R, F, Fut>(shard: &Rc<Shard>, f: F) -> R
where
    R: Send + 'static,
    F: FnOnce(Rc<Coordinator>) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
{
    shard
        .invoke_on(0, move |coordinator_shard| async move {
            let coordinator = coordinator_shard
                .coordinator
                .clone()
                .expect("shard 0 coordinates");
            let result = f(coordinator).await;
            coordinator_shard.publish_metadata().await;
            result
        })
        .await
}

/// The request's timeout, within sane bounds.
pub fn coordination_timeout(timeout_ms: i32) -> Duration {
    if timeout_ms <= 0 {
        return DEFAULT_COORDINATION_TIMEOUT;
    }
    Duration::from_millis(timeout_ms as u64).clamp(Duration::from_secs(1), Duration::from_secs(120))
}

fn str(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// (name, partitions, replication factor, manual assignment given, configs)
type TopicToCreate = (String, i32, i16, bool, Vec<(String, String)>);

/// What a created (or validated) topic looks like in the response.
struct CreatedTopic {
    id: uuid::Uuid,
    partitions: i32,
    replication_factor: i16,
    configs: Vec<(String, String)>,
}

pub async fn create_topics(
    shard: &Rc<Shard>,
    version: i16,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let defaults = (
        shard.config.num_partitions,
        shard.config.default_replication_factor,
        shard.config.max_partitions as u64,
    );
    let unclean_default = shard.config.unclean_leader_election_enable;
    let validate_only = request.validate_only;
    let timeout = coordination_timeout(request.timeout_ms);
    let topics: Vec<TopicToCreate> = request
        .topics
        .into_iter()
        .map(|t| {
            let configs = t
                .configs
                .into_iter()
                .filter_map(|c| c.value.map(|v| (c.name.to_string(), v.to_string())))
                .collect();
            (
                t.name.0.to_string(),
                t.num_partitions,
                t.replication_factor,
                !t.assignments.is_empty(),
                configs,
            )
        })
        .collect();
    let results = coordinate(shard, move |coordinator| async move {
        let mut results = Vec::new();
        for (name, partitions, rf, manual_assignment, mut configs) in topics {
            let partitions = if partitions == -1 {
                defaults.0
            } else {
                partitions
            };
            let rf = if rf == -1 { defaults.1 } else { rf };
            if unclean_default
                && !configs
                    .iter()
                    .any(|(k, _)| k == "unclean.leader.election.enable")
            {
                configs.push(("unclean.leader.election.enable".into(), "true".into()));
            }
            let topic = NewTopic {
                name: name.clone(),
                id: *uuid::Uuid::new_v4().as_bytes(),
                partitions,
                replication_factor: rf,
                configs: configs.clone(),
            };
            let result = if super::groups::is_internal_topic(&name) {
                // Its directories belong to the group coordinator's offsets logs.
                Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!("{name} is internal to the broker"),
                ))
            } else if manual_assignment {
                Err(ApiError::new(
                    ResponseError::InvalidReplicaAssignment,
                    "manual replica assignment is not supported",
                ))
            } else if validate_only {
                coordinator.check(|s| s.validate_new_topic(&topic, defaults.2))
            } else {
                coordinator
                    .change(
                        Command::CreateTopic {
                            topic: topic.clone(),
                            max_partitions: defaults.2,
                        },
                        timeout,
                    )
                    .await
                    .map(|_| ())
            };
            if result.is_ok() && !validate_only {
                tracing::info!(topic = %name, partitions, replication_factor = rf, "created topic");
            }
            let created = result.map(|()| CreatedTopic {
                id: uuid::Uuid::from_bytes(topic.id),
                partitions,
                replication_factor: rf,
                configs,
            });
            results.push((name, created));
        }
        results
    })
    .await;
    let mut response = CreateTopicsResponse::default();
    response.topics = results
        .into_iter()
        .map(|(name, result)| {
            let mut out = CreatableTopicResult::default();
            out.name = TopicName(str(name));
            match result {
                Ok(topic) => {
                    if version >= 7 {
                        out.topic_id = topic.id;
                    }
                    if version >= 5 {
                        out.num_partitions = topic.partitions;
                        out.replication_factor = topic.replication_factor;
                        out.configs = Some(
                            topic
                                .configs
                                .into_iter()
                                .map(|(k, v)| {
                                    let mut c = CreatableTopicConfigs::default();
                                    c.name = str(k);
                                    c.value = Some(str(v));
                                    c.config_source = CONFIG_SOURCE_TOPIC;
                                    c
                                })
                                .collect(),
                        );
                    }
                }
                Err(e) => {
                    out.error_code = e.code.code();
                    out.error_message = Some(str(e.message));
                    if version >= 5 {
                        out.num_partitions = -1;
                        out.replication_factor = -1;
                    }
                }
            }
            out
        })
        .collect();
    response
}

pub async fn delete_topics(
    shard: &Rc<Shard>,
    version: i16,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let names: Vec<Option<String>> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| t.name.map(|n| n.0.to_string()))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| Some(n.0.to_string()))
            .collect()
    };
    let enabled = shard.config.delete_topic_enable;
    let timeout = coordination_timeout(request.timeout_ms);
    let results = coordinate(shard, move |coordinator| async move {
        let mut results = Vec::new();
        for name in names {
            let result = match &name {
                None => Err(ApiError::new(
                    ResponseError::UnknownTopicId,
                    "deleting by topic id is not supported",
                )),
                Some(_) if !enabled => Err(ApiError::new(
                    ResponseError::TopicDeletionDisabled,
                    "delete.topic.enable is false",
                )),
                Some(n) => coordinator
                    .change(Command::DeleteTopic { name: n.clone() }, timeout)
                    .await
                    .map(|_| tracing::info!(topic = %n, "deleted topic")),
            };
            results.push((name, result));
        }
        results
    })
    .await;
    let mut response = DeleteTopicsResponse::default();
    response.responses = results
        .into_iter()
        .map(|(name, result)| {
            let mut out = DeletableTopicResult::default();
            out.name = name.map(|n| TopicName(str(n)));
            if let Err(e) = result {
                out.error_code = e.code.code();
                if version >= 5 {
                    out.error_message = Some(str(e.message));
                }
            }
            out
        })
        .collect();
    response
}

pub async fn create_partitions(
    shard: &Rc<Shard>,
    _version: i16,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let max_partitions = shard.config.max_partitions as u64;
    let validate_only = request.validate_only;
    let timeout = coordination_timeout(request.timeout_ms);
    let topics: Vec<(String, i32, bool)> = request
        .topics
        .into_iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.count,
                t.assignments.is_some_and(|a| !a.is_empty()),
            )
        })
        .collect();
    let results = coordinate(shard, move |coordinator| async move {
        let mut results = Vec::new();
        for (name, count, manual) in topics {
            let result = if manual {
                Err(ApiError::new(
                    ResponseError::InvalidReplicaAssignment,
                    "manual replica assignment is not supported",
                ))
            } else if validate_only {
                coordinator.check(|s| s.validate_create_partitions(&name, count, max_partitions))
            } else {
                coordinator
                    .change(
                        Command::CreatePartitions {
                            name: name.clone(),
                            count,
                            max_partitions,
                        },
                        timeout,
                    )
                    .await
                    .map(|_| ())
            };
            results.push((name, result));
        }
        results
    })
    .await;
    let mut response = CreatePartitionsResponse::default();
    response.results = results
        .into_iter()
        .map(|(name, result)| {
            let mut out = CreatePartitionsTopicResult::default();
            out.name = TopicName(str(name));
            if let Err(e) = result {
                out.error_code = e.code.code();
                out.error_message = Some(str(e.message));
            }
            out
        })
        .collect();
    response
}

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const CONFIG_SOURCE_TOPIC: i8 = 1;
const CONFIG_SOURCE_STATIC_BROKER: i8 = 4;
const CONFIG_SOURCE_DEFAULT: i8 = 5;
const CONFIG_TYPE_STRING: i8 = 2;
const CONFIG_TYPE_INT: i8 = 3;
const CONFIG_TYPE_LONG: i8 = 5;

/// (topic key, broker key, value, type) of the settings a topic inherits from the broker.
fn topic_defaults(shard: &Shard) -> Vec<(&'static str, &'static str, String, i8)> {
    let log = &shard.config.log;
    vec![
        (
            "retention.ms",
            "log.retention.ms",
            log.retention_ms.to_string(),
            CONFIG_TYPE_LONG,
        ),
        (
            "retention.bytes",
            "log.retention.bytes",
            log.retention_bytes.to_string(),
            CONFIG_TYPE_LONG,
        ),
        (
            "segment.bytes",
            "log.segment.bytes",
            log.segment_bytes.to_string(),
            CONFIG_TYPE_INT,
        ),
        (
            "max.message.bytes",
            "message.max.bytes",
            shard.config.message_max_bytes.to_string(),
            CONFIG_TYPE_INT,
        ),
        (
            "cleanup.policy",
            "log.cleanup.policy",
            "delete".to_string(),
            CONFIG_TYPE_STRING,
        ),
        (
            "min.insync.replicas",
            "min.insync.replicas",
            shard.config.min_insync_replicas.to_string(),
            CONFIG_TYPE_INT,
        ),
        (
            "message.timestamp.type",
            "log.message.timestamp.type",
            "CreateTime".to_string(),
            CONFIG_TYPE_STRING,
        ),
    ]
}

fn broker_configs(shard: &Shard) -> Vec<(&'static str, String, i8)> {
    let c = &shard.config;
    vec![
        ("broker.id", c.node_id.to_string(), CONFIG_TYPE_INT),
        (
            "log.dirs",
            c.data_dir.display().to_string(),
            CONFIG_TYPE_STRING,
        ),
        (
            "num.partitions",
            c.num_partitions.to_string(),
            CONFIG_TYPE_INT,
        ),
        (
            "default.replication.factor",
            c.default_replication_factor.to_string(),
            CONFIG_TYPE_INT,
        ),
        (
            "min.insync.replicas",
            c.min_insync_replicas.to_string(),
            CONFIG_TYPE_INT,
        ),
        (
            "log.segment.bytes",
            c.log.segment_bytes.to_string(),
            CONFIG_TYPE_INT,
        ),
        (
            "log.retention.ms",
            c.log.retention_ms.to_string(),
            CONFIG_TYPE_LONG,
        ),
        (
            "log.retention.bytes",
            c.log.retention_bytes.to_string(),
            CONFIG_TYPE_LONG,
        ),
        ("delete.topic.enable", c.delete_topic_enable.to_string(), 1),
        (
            "auto.create.topics.enable",
            c.auto_create_topics_enable.to_string(),
            1,
        ),
        (
            "message.max.bytes",
            c.message_max_bytes.to_string(),
            CONFIG_TYPE_INT,
        ),
        (
            "socket.request.max.bytes",
            c.socket_request_max_bytes.to_string(),
            CONFIG_TYPE_INT,
        ),
    ]
}

fn config_entry(
    version: i16,
    name: &str,
    value: String,
    source: i8,
    config_type: i8,
) -> DescribeConfigsResourceResult {
    let mut entry = DescribeConfigsResourceResult::default();
    entry.name = str(name);
    entry.value = Some(str(value));
    entry.read_only = version == 0 || source != CONFIG_SOURCE_TOPIC;
    if version >= 1 {
        entry.config_source = source;
    }
    if version >= 3 {
        entry.config_type = config_type;
    }
    entry
}

pub async fn describe_configs(
    shard: &Rc<Shard>,
    version: i16,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let snapshot = shard.metadata();
    let mut response = DescribeConfigsResponse::default();
    response.results = request
        .resources
        .into_iter()
        .map(|resource| {
            let mut result = DescribeConfigsResult::default();
            result.resource_type = resource.resource_type;
            result.resource_name = resource.resource_name.clone();
            let wanted = |key: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
            };
            let name = resource.resource_name.to_string();
            match resource.resource_type {
                RESOURCE_TOPIC => match snapshot.topic(&name) {
                    Some(topic) => {
                        result.configs = topic_defaults(shard)
                            .into_iter()
                            .filter(|(key, ..)| wanted(key))
                            .map(|(key, _, default, ty)| match topic.configs.get(key) {
                                Some(v) => {
                                    config_entry(version, key, v.clone(), CONFIG_SOURCE_TOPIC, ty)
                                }
                                None => {
                                    config_entry(version, key, default, CONFIG_SOURCE_DEFAULT, ty)
                                }
                            })
                            .collect();
                    }
                    None => {
                        result.error_code = ResponseError::UnknownTopicOrPartition.code();
                        result.error_message = Some(str(format!("Topic {name} does not exist")));
                    }
                },
                RESOURCE_BROKER if name.is_empty() || name == shard.config.node_id.to_string() => {
                    result.configs = broker_configs(shard)
                        .into_iter()
                        .filter(|(key, ..)| wanted(key))
                        .map(|(key, value, ty)| {
                            config_entry(version, key, value, CONFIG_SOURCE_STATIC_BROKER, ty)
                        })
                        .collect();
                }
                _ => {
                    result.error_code = ResponseError::InvalidRequest.code();
                    result.error_message = Some(str("unsupported resource"));
                }
            }
            result
        })
        .collect();
    response
}

pub async fn init_producer_id(
    shard: &Rc<Shard>,
    _version: i16,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    if request.transactional_id.is_some() {
        response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        response.producer_id = ProducerId(-1);
        response.producer_epoch = -1;
        return response;
    }
    // KIP-360: a producer that already has an id may ask for its epoch to be bumped.
    let (current_id, current_epoch) = (request.producer_id.0, request.producer_epoch);
    if current_id >= 0 && (0..i16::MAX - 1).contains(&current_epoch) {
        response.producer_id = ProducerId(current_id);
        response.producer_epoch = current_epoch + 1;
        return response;
    }
    let allocated = shard
        .invoke_on(0, |s| async move {
            let coordinator = s.coordinator.clone().expect("shard 0 coordinates");
            coordinator.allocate_producer_id().await
        })
        .await;
    match allocated {
        Ok(id) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = 0;
        }
        Err(e) => {
            response.error_code = e.code.code();
            response.producer_id = ProducerId(-1);
            response.producer_epoch = -1;
        }
    }
    response
}

pub async fn describe_cluster(
    shard: &Rc<Shard>,
    _version: i16,
    _request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let snapshot = shard.metadata();
    let mut response = DescribeClusterResponse::default();
    response.cluster_id = str(snapshot.cluster_id.clone());
    response.controller_id = BrokerId(snapshot.controller_id);
    response.brokers = snapshot
        .brokers
        .iter()
        .map(|b| {
            let mut broker = DescribeClusterBroker::default();
            broker.broker_id = BrokerId(b.node_id);
            broker.host = str(b.host.clone());
            broker.port = b.port as i32;
            broker.rack = b.rack.clone().map(str);
            broker
        })
        .collect();
    response
}
