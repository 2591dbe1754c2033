//! Administrative APIs: CreateTopics (19), DeleteTopics (20), CreatePartitions (37),
//! DescribeConfigs (32), AlterConfigs (33), IncrementalAlterConfigs (44), InitProducerId (22),
//! DescribeCluster (60).
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

use crate::coordination::state_machine::{Command, ConfigChange, NewTopic};
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
const CONFIG_SOURCE_DEFAULT: i8 = 5;
const CONFIG_TYPE_BOOLEAN: i8 = 1;
const CONFIG_TYPE_STRING: i8 = 2;
const CONFIG_TYPE_INT: i8 = 3;
const CONFIG_TYPE_LONG: i8 = 5;
const CONFIG_TYPE_DOUBLE: i8 = 6;

/// (topic key, broker key, value, type) of the settings a topic inherits from the broker.
fn topic_defaults(shard: &Shard) -> Vec<(&'static str, &'static str, String, i8)> {
    let log = &shard.config.log;
    let cleaner = &shard.config.cleaner.defaults;
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
            "segment.ms",
            "log.roll.ms",
            log.segment_ms.to_string(),
            CONFIG_TYPE_LONG,
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
            "delete.retention.ms",
            "log.cleaner.delete.retention.ms",
            cleaner.delete_retention_ms.to_string(),
            CONFIG_TYPE_LONG,
        ),
        (
            "min.cleanable.dirty.ratio",
            "log.cleaner.min.cleanable.ratio",
            cleaner.min_cleanable_dirty_ratio.to_string(),
            CONFIG_TYPE_DOUBLE,
        ),
        (
            "min.compaction.lag.ms",
            "log.cleaner.min.compaction.lag.ms",
            cleaner.min_compaction_lag_ms.to_string(),
            CONFIG_TYPE_LONG,
        ),
        (
            "max.compaction.lag.ms",
            "log.cleaner.max.compaction.lag.ms",
            cleaner.max_compaction_lag_ms.to_string(),
            CONFIG_TYPE_LONG,
        ),
        (
            "message.timestamp.type",
            "log.message.timestamp.type",
            "CreateTime".to_string(),
            CONFIG_TYPE_STRING,
        ),
        (
            "unclean.leader.election.enable",
            "unclean.leader.election.enable",
            shard.config.unclean_leader_election_enable.to_string(),
            CONFIG_TYPE_BOOLEAN,
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
            "log.roll.ms",
            c.log.segment_ms.to_string(),
            CONFIG_TYPE_LONG,
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
        (
            "delete.topic.enable",
            c.delete_topic_enable.to_string(),
            CONFIG_TYPE_BOOLEAN,
        ),
        (
            "log.cleaner.enable",
            c.cleaner.enable.to_string(),
            CONFIG_TYPE_BOOLEAN,
        ),
        (
            "log.cleaner.backoff.ms",
            c.cleaner.backoff_ms.to_string(),
            CONFIG_TYPE_LONG,
        ),
        (
            "log.cleaner.dedupe.buffer.size",
            c.cleaner.dedupe_buffer_bytes.to_string(),
            CONFIG_TYPE_LONG,
        ),
        (
            "auto.create.topics.enable",
            c.auto_create_topics_enable.to_string(),
            CONFIG_TYPE_BOOLEAN,
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
        (
            "max.connections",
            c.max_connections.to_string(),
            CONFIG_TYPE_INT,
        ),
    ]
}

/// One described config: (name, value, source, type, read-only, synonyms as (name, value,
/// source), most specific first).
pub(super) struct Described {
    pub name: &'static str,
    pub value: String,
    pub source: i8,
    pub config_type: i8,
    pub read_only: bool,
    pub synonyms: Vec<(&'static str, String, i8)>,
}

pub(super) fn config_entry(
    version: i16,
    include_synonyms: bool,
    d: Described,
) -> DescribeConfigsResourceResult {
    let mut entry = DescribeConfigsResourceResult::default();
    entry.name = str(d.name);
    entry.value = Some(str(d.value));
    // v0 has no source: "is default" travels in its place.
    entry.read_only = d.read_only;
    entry.is_sensitive = false;
    entry.config_source = if version == 0 {
        (d.source == CONFIG_SOURCE_DEFAULT) as i8
    } else {
        d.source
    };
    if version >= 1 && include_synonyms {
        entry.synonyms = d
            .synonyms
            .into_iter()
            .map(|(name, value, source)| {
                let mut s = describe_configs_response::DescribeConfigsSynonym::default();
                s.name = str(name);
                s.value = Some(str(value));
                s.source = source;
                s
            })
            .collect();
    }
    if version >= 3 {
        entry.config_type = d.config_type;
        entry.documentation = None;
    }
    entry
}

pub async fn describe_configs(
    shard: &Rc<Shard>,
    version: i16,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let snapshot = shard.metadata();
    let include_synonyms = request.include_synonyms;
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
                            .map(|(key, broker_key, default, ty)| {
                                // Kafka lists the topic override, then the broker key it
                                // overrides: dynamic for this broker, dynamic default, static.
                                let mut synonyms = Vec::new();
                                if let Some(v) = topic.configs.get(key) {
                                    synonyms.push((key, v.clone(), CONFIG_SOURCE_TOPIC));
                                }
                                for (v, source) in
                                    super::broker_configs::dynamic_synonyms(shard, broker_key)
                                {
                                    synonyms.push((broker_key, v, source));
                                }
                                let (value, source) = match synonyms.first() {
                                    Some((_, v, source)) => (v.clone(), *source),
                                    None => (default.clone(), CONFIG_SOURCE_DEFAULT),
                                };
                                synonyms.push((broker_key, default, CONFIG_SOURCE_DEFAULT));
                                let described = Described {
                                    name: key,
                                    value,
                                    source,
                                    config_type: ty,
                                    read_only: false,
                                    synonyms,
                                };
                                config_entry(version, include_synonyms, described)
                            })
                            .collect();
                    }
                    None => {
                        result.error_code = ResponseError::UnknownTopicOrPartition.code();
                        result.error_message = Some(str(format!("Topic {name} does not exist")));
                    }
                },
                RESOURCE_BROKER => match super::broker_configs::describe(
                    shard,
                    &name,
                    broker_configs(shard),
                    wanted,
                    version,
                    include_synonyms,
                ) {
                    Ok(configs) => result.configs = configs,
                    Err(e) => {
                        result.error_code = e.code.code();
                        result.error_message = Some(str(e.message));
                    }
                },
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

/// One resource of an AlterConfigs / IncrementalAlterConfigs request, decoded.
struct AlterResource {
    resource_type: i8,
    name: String,
    /// Refused before reaching the coordinator (bad operation, null value, duplicate key).
    malformed: Option<ApiError>,
    changes: Vec<ConfigChange>,
}

/// What a topic alteration resolved to: (type, name, result).
type AlterResult = (i8, String, Result<(), ApiError>);

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

fn decode_change(key: String, op: i8, value: Option<String>) -> Result<ConfigChange, ApiError> {
    let null = || {
        ApiError::new(
            ResponseError::InvalidRequest,
            format!("Null value not supported for : {key}"),
        )
    };
    Ok(match op {
        OP_SET => ConfigChange::Set {
            value: value.ok_or_else(null)?,
            key,
        },
        OP_DELETE => ConfigChange::Delete { key },
        OP_APPEND => ConfigChange::Append {
            value: value.ok_or_else(null)?,
            key,
        },
        OP_SUBTRACT => ConfigChange::Subtract {
            value: value.ok_or_else(null)?,
            key,
        },
        _ => {
            return Err(ApiError::new(
                ResponseError::InvalidRequest,
                format!("Unknown config operation {op} for {key}"),
            ))
        }
    })
}

fn change_key(change: &ConfigChange) -> &str {
    match change {
        ConfigChange::Set { key, .. }
        | ConfigChange::Delete { key }
        | ConfigChange::Append { key, .. }
        | ConfigChange::Subtract { key, .. } => key,
    }
}

fn alter_resource(
    resource_type: i8,
    name: String,
    configs: impl Iterator<Item = (String, i8, Option<String>)>,
) -> AlterResource {
    let mut malformed = None;
    let mut changes = Vec::new();
    for (key, op, value) in configs {
        match decode_change(key, op, value) {
            Ok(change) => {
                if changes.iter().any(|c| change_key(c) == change_key(&change)) {
                    malformed.get_or_insert(ApiError::new(
                        ResponseError::InvalidRequest,
                        "Error due to duplicate config keys",
                    ));
                }
                changes.push(change);
            }
            Err(e) => {
                malformed.get_or_insert(e);
            }
        }
    }
    AlterResource {
        resource_type,
        name,
        malformed,
        changes,
    }
}

/// Applies config changes through the coordination quorum (so every broker applies them and
/// they survive restarts): topic overrides, and dynamic broker configs (`broker_configs`).
async fn alter_resources(
    shard: &Rc<Shard>,
    resources: Vec<AlterResource>,
    replace: bool,
    validate_only: bool,
) -> Vec<AlterResult> {
    let message_max = shard.config.message_max_bytes;
    coordinate(shard, move |coordinator| async move {
        let mut results = Vec::new();
        for r in resources {
            let result = if let Some(e) = r.malformed {
                Err(e)
            } else {
                match r.resource_type {
                    RESOURCE_TOPIC if lowers_log_bound(&coordinator, &r, replace, message_max) => {
                        Err(ApiError::new(
                            ResponseError::InvalidConfig,
                            format!(
                                "max.message.bytes of {} is above message.max.bytes ({message_max}) \
                                 and cannot be lowered: the log reads its batches with that bound",
                                r.name
                            ),
                        ))
                    }
                    RESOURCE_TOPIC if validate_only => coordinator.check(|s| {
                        s.altered_topic_configs(&r.name, replace, &r.changes)
                            .map(|_| ())
                    }),
                    RESOURCE_TOPIC => coordinator
                        .change(
                            Command::AlterTopicConfigs {
                                name: r.name.clone(),
                                replace,
                                changes: r.changes,
                            },
                            DEFAULT_COORDINATION_TIMEOUT,
                        )
                        .await
                        .map(|_| tracing::info!(topic = %r.name, "altered topic configs")),
                    RESOURCE_BROKER => {
                        super::broker_configs::alter(
                            &coordinator,
                            &r.name,
                            r.changes,
                            replace,
                            validate_only,
                            message_max,
                            DEFAULT_COORDINATION_TIMEOUT,
                        )
                        .await
                    }
                    other => Err(ApiError::new(
                        ResponseError::InvalidRequest,
                        format!("Unsupported resource type {other}"),
                    )),
                }
            };
            results.push((r.resource_type, r.name, result));
        }
        results
    })
    .await
}

/// Whether a change lowers a topic's `max.message.bytes` from above the broker's
/// `message.max.bytes`: the topic's logs open with the larger of the two as the bound on batch
/// lengths read from disk, so batches written under the higher limit would be unreadable (and
/// cut by recovery) after a restart.
fn lowers_log_bound(
    coordinator: &Coordinator,
    r: &AlterResource,
    replace: bool,
    message_max: usize,
) -> bool {
    let key = "max.message.bytes";
    let current = coordinator.with_state(|s| {
        s.topics
            .get(&r.name)
            .and_then(|t| t.configs.get(key))
            .and_then(|v| v.parse::<usize>().ok())
    });
    let Some(current) = current.filter(|&c| c > message_max) else {
        return false;
    };
    let mut next = if replace { None } else { Some(current) };
    for change in &r.changes {
        match change {
            ConfigChange::Set { key: k, value } if k == key => match value.trim().parse() {
                Ok(v) => next = Some(v),
                // Refused by validation, with the reason.
                Err(_) => return false,
            },
            ConfigChange::Delete { key: k } if k == key => next = None,
            _ => {}
        }
    }
    next.unwrap_or(message_max) < current
}

fn alter_response_entry(
    (resource_type, name, result): AlterResult,
) -> (i16, Option<StrBytes>, i8, StrBytes) {
    match result {
        Ok(()) => (0, None, resource_type, str(name)),
        Err(e) => (
            e.code.code(),
            Some(str(e.message)),
            resource_type,
            str(name),
        ),
    }
}

pub async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    _version: i16,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let resources = request
        .resources
        .into_iter()
        .map(|r| {
            alter_resource(
                r.resource_type,
                r.resource_name.to_string(),
                r.configs.into_iter().map(|c| {
                    (
                        c.name.to_string(),
                        c.config_operation,
                        c.value.map(|v| v.to_string()),
                    )
                }),
            )
        })
        .collect();
    let results = alter_resources(shard, resources, false, request.validate_only).await;
    let mut response = IncrementalAlterConfigsResponse::default();
    response.responses = results
        .into_iter()
        .map(|r| {
            let (code, message, resource_type, name) = alter_response_entry(r);
            let mut out =
                incremental_alter_configs_response::AlterConfigsResourceResponse::default();
            out.error_code = code;
            out.error_message = message;
            out.resource_type = resource_type;
            out.resource_name = name;
            out
        })
        .collect();
    response
}

/// AlterConfigs: the given configs replace all of a resource's overrides; a null value is
/// refused (Kafka's `AlterConfigs` treats every listed key as a SET).
pub async fn alter_configs(
    shard: &Rc<Shard>,
    _version: i16,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let resources = request
        .resources
        .into_iter()
        .map(|r| {
            alter_resource(
                r.resource_type,
                r.resource_name.to_string(),
                r.configs
                    .into_iter()
                    .map(|c| (c.name.to_string(), OP_SET, c.value.map(|v| v.to_string()))),
            )
        })
        .collect();
    let results = alter_resources(shard, resources, true, request.validate_only).await;
    let mut response = AlterConfigsResponse::default();
    response.responses = results
        .into_iter()
        .map(|r| {
            let (code, message, resource_type, name) = alter_response_entry(r);
            let mut out = alter_configs_response::AlterConfigsResourceResponse::default();
            out.error_code = code;
            out.error_message = message;
            out.resource_type = resource_type;
            out.resource_name = name;
            out
        })
        .collect();
    response
}

pub async fn init_producer_id(
    shard: &Rc<Shard>,
    version: i16,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    if request.transactional_id.is_some() {
        return crate::handlers::transactions::init_producer_id(shard, version, request).await;
    }
    let mut response = InitProducerIdResponse::default();
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
