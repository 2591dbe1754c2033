//! Metadata (key 3), v0-12: brokers, controller, topics with leaders, replicas and ISR.
//! Unknown topics are created here when `auto.create.topics.enable` and the request allow it.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::coordination::metadata::validate_topic_name;
use crate::coordination::state_machine::{Command, NewTopic};
use crate::coordination::TopicMetadata;
use crate::handlers::admin;
use crate::protocol::ApiError;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, version: i16, request: MetadataRequest) -> MetadataResponse {
    let mut snapshot = shard.metadata();
    // v0 sends an empty list for "all topics"; v1+ sends null.
    let requested: Option<Vec<String>> = match request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(
            topics
                .into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .collect(),
        ),
    };
    let allow_auto_create = version < 4 || request.allow_auto_topic_creation;
    let mut errors: Vec<(String, ApiError)> = Vec::new();
    if let Some(names) = &requested {
        let missing: Vec<String> = names
            .iter()
            .filter(|n| {
                snapshot.topic(n).is_none()
                    && validate_topic_name(n).is_ok()
                    && !super::groups::is_internal_topic(n)
            })
            .cloned()
            .collect();
        if !missing.is_empty() && allow_auto_create && shard.config.auto_create_topics_enable {
            errors = auto_create(shard, missing).await;
            snapshot = shard.metadata();
        }
    }
    let mut response = MetadataResponse::default();
    response.brokers = snapshot
        .brokers
        .iter()
        .map(|b| {
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(b.node_id);
            broker.host = StrBytes::from_string(b.host.clone());
            broker.port = b.port as i32;
            broker.rack = b.rack.clone().map(StrBytes::from_string);
            broker
        })
        .collect();
    if version >= 2 {
        response.cluster_id = Some(StrBytes::from_string(snapshot.cluster_id.clone()));
    }
    response.controller_id = BrokerId(snapshot.controller_id);
    response.topics = match requested {
        // Internal topics are listed only when asked for by name.
        None => snapshot
            .topics
            .values()
            .filter(|t| !super::groups::is_internal_topic(&t.name))
            .map(|t| topic_response(version, t))
            .collect(),
        Some(names) => names
            .into_iter()
            .map(|name| match snapshot.topic(&name) {
                Some(topic) => topic_response(version, topic),
                // Internal: listed only when asked for by name, as Kafka does.
                None if super::groups::is_internal_topic(&name) => {
                    super::groups::offsets_topic_metadata(shard, version)
                }
                None => {
                    let code = if let Some((_, e)) = errors.iter().find(|(n, _)| *n == name) {
                        e.code
                    } else if validate_topic_name(&name).is_err() {
                        ResponseError::InvalidTopicException
                    } else {
                        ResponseError::UnknownTopicOrPartition
                    };
                    error_topic(name, code)
                }
            })
            .collect(),
    };
    response
}

async fn auto_create(shard: &Rc<Shard>, names: Vec<String>) -> Vec<(String, ApiError)> {
    let partitions = shard.config.num_partitions;
    let replication_factor = shard.config.default_replication_factor;
    let max_partitions = shard.config.max_partitions as u64;
    admin::coordinate(shard, move |coordinator| async move {
        let mut errors = Vec::new();
        for name in names {
            let topic = NewTopic {
                name: name.clone(),
                id: *uuid::Uuid::new_v4().as_bytes(),
                partitions,
                replication_factor,
                configs: vec![],
            };
            let created = coordinator
                .change(
                    Command::CreateTopic {
                        topic,
                        max_partitions,
                    },
                    Duration::from_secs(10),
                )
                .await;
            match created {
                Ok(_) => tracing::info!(topic = %name, partitions, "auto-created topic"),
                // Lost a race with another creator: fine.
                Err(e) if e.code == ResponseError::TopicAlreadyExists => {}
                Err(e) => errors.push((name, e)),
            }
        }
        errors
    })
    .await
}

fn error_topic(name: String, code: ResponseError) -> MetadataResponseTopic {
    let mut topic = MetadataResponseTopic::default();
    topic.error_code = code.code();
    topic.name = Some(TopicName(StrBytes::from_string(name)));
    topic
}

fn topic_response(version: i16, topic: &Arc<TopicMetadata>) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(StrBytes::from_string(topic.name.clone())));
    if version >= 1 {
        out.is_internal = super::groups::is_internal_topic(&topic.name);
    }
    if version >= 10 {
        out.topic_id = topic.id;
    }
    out.partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let mut partition = MetadataResponsePartition::default();
            partition.partition_index = index as i32;
            if p.leader < 0 {
                // No live in-sync replica: clients wait and retry.
                partition.error_code = ResponseError::LeaderNotAvailable.code();
            }
            partition.leader_id = BrokerId(p.leader);
            if version >= 7 {
                partition.leader_epoch = p.leader_epoch;
            }
            partition.replica_nodes = p.replicas.iter().copied().map(BrokerId).collect();
            partition.isr_nodes = p.isr.iter().copied().map(BrokerId).collect();
            partition
        })
        .collect();
    out
}
