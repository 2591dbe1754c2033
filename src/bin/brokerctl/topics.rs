//! `brokerctl topics`: kafka-topics.sh.

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;

use crate::client::{error_text, s, Conn, Result};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    bootstrap_server: String,
    #[arg(long, group = "action")]
    create: bool,
    #[arg(long, group = "action")]
    list: bool,
    #[arg(long, group = "action")]
    describe: bool,
    #[arg(long, group = "action")]
    delete: bool,
    #[arg(long, group = "action")]
    alter: bool,
    #[arg(long)]
    topic: Option<String>,
    #[arg(long)]
    partitions: Option<i32>,
    #[arg(long)]
    replication_factor: Option<i16>,
    /// Topic config override, `key=value`; repeatable.
    #[arg(long, value_parser = crate::key_value)]
    config: Vec<(String, String)>,
    /// With --create: succeed if the topic exists.
    #[arg(long)]
    if_not_exists: bool,
}

fn topic(args: &Args) -> Result<&str> {
    args.topic
        .as_deref()
        .ok_or_else(|| "--topic is required".to_string())
}

pub fn run(args: Args) -> Result<()> {
    let mut conn = Conn::connect(&args.bootstrap_server)?;
    if args.create {
        create(&mut conn, &args)
    } else if args.list {
        for name in list(&mut conn)? {
            println!("{name}");
        }
        Ok(())
    } else if args.describe {
        describe(&mut conn, args.topic.as_deref())
    } else if args.delete {
        let name = topic(&args)?;
        let mut request = DeleteTopicsRequest::default();
        request.timeout_ms = 30_000;
        if conn.version_of::<DeleteTopicsRequest>(6) >= 6 {
            let mut t = delete_topics_request::DeleteTopicState::default();
            t.name = Some(TopicName(s(name)));
            request.topics = vec![t];
        } else {
            request.topic_names = vec![TopicName(s(name))];
        }
        let response = conn.call(6, &request)?;
        let result = response.responses.first().ok_or("empty response")?;
        if result.error_code != 0 {
            return Err(error_text(result.error_code, result.error_message.as_ref()));
        }
        println!("Deleted topic {name}.");
        Ok(())
    } else if args.alter {
        let name = topic(&args)?;
        let count = args
            .partitions
            .ok_or("--alter needs --partitions (use `configs --alter` for configs)")?;
        let mut t = CreatePartitionsTopic::default();
        t.name = TopicName(s(name));
        t.count = count;
        let mut request = CreatePartitionsRequest::default();
        request.topics = vec![t];
        request.timeout_ms = 30_000;
        let response = conn.call(3, &request)?;
        let result = response.results.first().ok_or("empty response")?;
        if result.error_code != 0 {
            return Err(error_text(result.error_code, result.error_message.as_ref()));
        }
        println!("Topic {name} now has {count} partitions.");
        Ok(())
    } else {
        Err("one of --create, --list, --describe, --delete, --alter is required".into())
    }
}

fn create(conn: &mut Conn, args: &Args) -> Result<()> {
    let name = topic(args)?;
    let mut t = CreatableTopic::default();
    t.name = TopicName(s(name));
    t.num_partitions = args.partitions.unwrap_or(-1);
    t.replication_factor = args.replication_factor.unwrap_or(-1);
    t.configs = args
        .config
        .iter()
        .map(|(k, v)| {
            let mut c = CreatableTopicConfig::default();
            c.name = s(k.clone());
            c.value = Some(s(v.clone()));
            c
        })
        .collect();
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![t];
    request.timeout_ms = 30_000;
    let response = conn.call(7, &request)?;
    let result = response.topics.first().ok_or("empty response")?;
    match result.error_code {
        0 => {
            println!("Created topic {name}.");
            Ok(())
        }
        36 if args.if_not_exists => Ok(()), // TOPIC_ALREADY_EXISTS
        code => Err(error_text(code, result.error_message.as_ref())),
    }
}

/// Topic names, sorted, internal topics left out (as kafka-topics.sh does by default).
pub fn list(conn: &mut Conn) -> Result<Vec<String>> {
    let mut request = MetadataRequest::default();
    request.topics = None;
    let response = conn.call(12, &request)?;
    let mut names: Vec<String> = response
        .topics
        .iter()
        .filter(|t| !t.is_internal)
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect();
    names.sort();
    Ok(names)
}

fn describe(conn: &mut Conn, only: Option<&str>) -> Result<()> {
    let mut request = MetadataRequest::default();
    request.topics = only.map(|name| {
        let mut t = MetadataRequestTopic::default();
        t.name = Some(TopicName(s(name)));
        vec![t]
    });
    let response = conn.call(12, &request)?;
    let reassigning = reassignments(conn);
    let mut topics = response.topics;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    for t in topics {
        let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        if t.error_code != 0 {
            return Err(format!(
                "topic '{name}': {}",
                error_text(t.error_code, None)
            ));
        }
        if only.is_none() && t.is_internal {
            continue;
        }
        let mut partitions = t.partitions;
        partitions.sort_by_key(|p| p.partition_index);
        let rf = partitions.first().map_or(0, |p| p.replica_nodes.len());
        let configs = topic_configs(conn, &name).unwrap_or_default();
        println!(
            "Topic: {name}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {rf}\tConfigs: {configs}",
            topic_id_text(t.topic_id),
            partitions.len()
        );
        let join = |ids: &[BrokerId]| {
            ids.iter()
                .map(|b| b.0.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        for p in partitions {
            // Kafka's describe adds the moving replicas of a running reassignment.
            let moving = reassigning
                .get(&(name.clone(), p.partition_index))
                .map(|(adding, removing)| {
                    format!(
                        "\tAdding Replicas: {}\tRemoving Replicas: {}",
                        join(adding),
                        join(removing)
                    )
                })
                .unwrap_or_default();
            println!(
                "\tTopic: {name}\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}{moving}",
                p.partition_index,
                if p.leader_id.0 < 0 {
                    "none".to_string()
                } else {
                    p.leader_id.0.to_string()
                },
                join(&p.replica_nodes),
                join(&p.isr_nodes)
            );
        }
    }
    Ok(())
}

/// Running reassignments: (topic, partition) -> (adding, removing). Empty when the broker
/// does not offer ListPartitionReassignments.
fn reassignments(
    conn: &mut Conn,
) -> std::collections::HashMap<(String, i32), (Vec<BrokerId>, Vec<BrokerId>)> {
    let mut request = ListPartitionReassignmentsRequest::default();
    request.timeout_ms = 30_000;
    let Ok(response) = conn.call(0, &request) else {
        return Default::default();
    };
    response
        .topics
        .into_iter()
        .flat_map(|t| {
            let name = t.name.to_string();
            t.partitions.into_iter().map(move |p| {
                (
                    (name.clone(), p.partition_index),
                    (p.adding_replicas, p.removing_replicas),
                )
            })
        })
        .collect()
}

/// Kafka prints topic ids in URL-safe base64 without padding.
fn topic_id_text(id: uuid::Uuid) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = id.as_bytes();
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Overridden (non-default) configs of a topic as `k=v,k=v`.
fn topic_configs(conn: &mut Conn, topic: &str) -> Result<String> {
    let mut resource = DescribeConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = s(topic);
    resource.configuration_keys = None;
    let mut request = DescribeConfigsRequest::default();
    request.resources = vec![resource];
    let response = conn.call(4, &request)?;
    let result = response.results.first().ok_or("empty response")?;
    let mut pairs: Vec<String> = result
        .configs
        .iter()
        .filter(|c| c.config_source == 1) // TOPIC_CONFIG: set on the topic
        .map(|c| {
            format!(
                "{}={}",
                c.name,
                c.value.as_ref().map(|v| v.to_string()).unwrap_or_default()
            )
        })
        .collect();
    pairs.sort();
    Ok(pairs.join(","))
}

#[cfg(test)]
mod tests {
    #[test]
    fn topic_ids_print_like_kafka() {
        assert_eq!(
            super::topic_id_text(uuid::Uuid::nil()),
            "AAAAAAAAAAAAAAAAAAAAAA"
        );
    }
}
