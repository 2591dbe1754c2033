//! `brokerctl leader-election` (kafka-leader-election.sh) and `brokerctl reassign-partitions`
//! (kafka-reassign-partitions.sh, with Kafka's reassignment JSON).

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
use kafka_protocol::messages::*;
use serde::{Deserialize, Serialize};

use crate::client::{error_text, s, Conn, Result};

#[derive(clap::Args)]
pub struct ElectionArgs {
    #[arg(long)]
    bootstrap_server: String,
    /// `preferred` or `unclean`.
    #[arg(long)]
    election_type: String,
    /// Every partition of every topic.
    #[arg(long, conflicts_with_all = ["topic", "partition"])]
    all_topic_partitions: bool,
    #[arg(long, requires = "partition")]
    topic: Option<String>,
    #[arg(long, requires = "topic")]
    partition: Option<i32>,
}

/// Kafka's election output: successes, partitions that needed none, failures (exit 1).
pub fn elect(args: ElectionArgs) -> Result<()> {
    let election_type: i8 = match args.election_type.to_ascii_lowercase().as_str() {
        "preferred" => 0,
        "unclean" => 1,
        other => {
            return Err(format!(
                "--election-type must be preferred or unclean, not {other:?}"
            ))
        }
    };
    let mut request = ElectLeadersRequest::default();
    request.election_type = election_type;
    request.timeout_ms = 30_000;
    request.topic_partitions = match (args.all_topic_partitions, args.topic, args.partition) {
        (true, _, _) => None,
        (false, Some(topic), Some(partition)) => {
            let mut t = TopicPartitions::default();
            t.topic = TopicName(s(topic));
            t.partitions = vec![partition];
            Some(vec![t])
        }
        _ => return Err("--all-topic-partitions or --topic with --partition is required".into()),
    };
    let mut conn = Conn::connect(&args.bootstrap_server)?;
    let response = conn.call(2, &request)?;
    if response.error_code != 0 {
        return Err(error_text(response.error_code, None));
    }
    let (mut elected, mut not_needed, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for topic in &response.replica_election_results {
        for p in &topic.partition_result {
            let name = format!("{}-{}", topic.topic.as_str(), p.partition_id);
            match p.error_code {
                0 => elected.push(name),
                84 => not_needed.push(name), // ELECTION_NOT_NEEDED
                code => failed.push((name, error_text(code, p.error_message.as_ref()))),
            }
        }
    }
    let kind = if election_type == 0 {
        "PREFERRED"
    } else {
        "UNCLEAN"
    };
    if !elected.is_empty() {
        println!(
            "Successfully completed leader election ({kind}) for partitions {}",
            elected.join(", ")
        );
    }
    if !not_needed.is_empty() {
        println!(
            "Valid replica already elected for partitions {}",
            not_needed.join(", ")
        );
    }
    for (name, error) in &failed {
        println!("Failed to elect leader for partition {name} with error {error}");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} replica(s) could not be elected", failed.len()))
    }
}

#[derive(clap::Args)]
pub struct ReassignArgs {
    #[arg(long)]
    bootstrap_server: String,
    /// Kafka's JSON: `{"version":1,"partitions":[{"topic":..,"partition":..,"replicas":[..]}]}`.
    #[arg(long)]
    reassignment_json_file: String,
    #[arg(long, group = "action")]
    execute: bool,
    #[arg(long, group = "action")]
    verify: bool,
    #[arg(long, group = "action")]
    cancel: bool,
}

#[derive(Serialize, Deserialize)]
struct Plan {
    version: i32,
    partitions: Vec<PlannedPartition>,
}

#[derive(Serialize, Deserialize)]
struct PlannedPartition {
    topic: String,
    partition: i32,
    replicas: Vec<i32>,
    /// Kafka's per-replica log dirs; only `any` is meaningful here (one data directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_dirs: Option<Vec<String>>,
}

fn read_plan(path: &str) -> Result<Plan> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let plan: Plan =
        serde_json::from_str(&text).map_err(|e| format!("invalid reassignment JSON: {e}"))?;
    if plan.partitions.is_empty() {
        return Err("the reassignment JSON names no partitions".into());
    }
    Ok(plan)
}

/// Current replicas of the named partitions, from Metadata.
fn current_replicas(conn: &mut Conn, plan: &Plan) -> Result<BTreeMap<(String, i32), Vec<i32>>> {
    let mut request = MetadataRequest::default();
    let mut names: Vec<&String> = plan.partitions.iter().map(|p| &p.topic).collect();
    names.sort();
    names.dedup();
    request.topics = Some(
        names
            .into_iter()
            .map(|n| {
                let mut t = metadata_request::MetadataRequestTopic::default();
                t.name = Some(TopicName(s(n.clone())));
                t
            })
            .collect(),
    );
    let response = conn.call(12, &request)?;
    let mut replicas = BTreeMap::new();
    for t in &response.topics {
        let Some(name) = &t.name else { continue };
        for p in &t.partitions {
            replicas.insert(
                (name.to_string(), p.partition_index),
                p.replica_nodes.iter().map(|r| r.0).collect(),
            );
        }
    }
    Ok(replicas)
}

/// Partitions with a reassignment in progress, among those of the plan.
fn ongoing(conn: &mut Conn, plan: &Plan) -> Result<Vec<(String, i32)>> {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for p in &plan.partitions {
        topics.entry(&p.topic).or_default().push(p.partition);
    }
    let mut request = ListPartitionReassignmentsRequest::default();
    request.timeout_ms = 30_000;
    request.topics = Some(
        topics
            .into_iter()
            .map(|(name, partitions)| {
                let mut t = ListPartitionReassignmentsTopics::default();
                t.name = TopicName(s(name));
                t.partition_indexes = partitions;
                t
            })
            .collect(),
    );
    let response = conn.call(0, &request)?;
    if response.error_code != 0 {
        return Err(error_text(
            response.error_code,
            response.error_message.as_ref(),
        ));
    }
    Ok(response
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.to_string(), p.partition_index))
        })
        .collect())
}

/// Sends the plan's targets (`cancel`: null replicas); returns the partitions accepted.
fn alter(conn: &mut Conn, plan: &Plan, cancel: bool) -> Result<Vec<String>> {
    let mut topics: BTreeMap<&str, Vec<ReassignablePartition>> = BTreeMap::new();
    for p in &plan.partitions {
        let mut r = ReassignablePartition::default();
        r.partition_index = p.partition;
        r.replicas = (!cancel).then(|| p.replicas.iter().map(|&b| BrokerId(b)).collect());
        topics.entry(&p.topic).or_default().push(r);
    }
    let mut request = AlterPartitionReassignmentsRequest::default();
    request.timeout_ms = 30_000;
    request.topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            let mut t = ReassignableTopic::default();
            t.name = TopicName(s(name));
            t.partitions = partitions;
            t
        })
        .collect();
    let response = conn.call(0, &request)?;
    if response.error_code != 0 {
        return Err(error_text(
            response.error_code,
            response.error_message.as_ref(),
        ));
    }
    let mut accepted = Vec::new();
    let mut errors = Vec::new();
    for t in &response.responses {
        for p in &t.partitions {
            let name = format!("{}-{}", t.name.as_str(), p.partition_index);
            match p.error_code {
                0 => accepted.push(name),
                // NO_REASSIGNMENT_IN_PROGRESS on cancel: nothing to cancel there.
                85 if cancel => {}
                code => errors.push(format!(
                    "{name}: {}",
                    error_text(code, p.error_message.as_ref())
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(accepted)
    } else {
        Err(format!(
            "Error reassigning partition(s):\n{}",
            errors.join("\n")
        ))
    }
}

pub fn reassign(args: ReassignArgs) -> Result<()> {
    let plan = read_plan(&args.reassignment_json_file)?;
    let mut conn = Conn::connect(&args.bootstrap_server)?;
    if args.execute {
        let current = current_replicas(&mut conn, &plan)?;
        let rollback = Plan {
            version: 1,
            partitions: plan
                .partitions
                .iter()
                .filter_map(|p| {
                    let replicas = current.get(&(p.topic.clone(), p.partition))?.clone();
                    Some(PlannedPartition {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        log_dirs: Some(vec!["any".into(); replicas.len()]),
                        replicas,
                    })
                })
                .collect(),
        };
        println!("Current partition replica assignment\n");
        println!(
            "{}\n",
            serde_json::to_string(&rollback).map_err(|e| e.to_string())?
        );
        println!("Save this to use as the --reassignment-json-file option during rollback");
        let accepted = alter(&mut conn, &plan, false)?;
        println!(
            "Successfully started partition reassignments for {}",
            accepted.join(",")
        );
        Ok(())
    } else if args.verify {
        let in_progress = ongoing(&mut conn, &plan)?;
        let current = current_replicas(&mut conn, &plan)?;
        println!("Status of partition reassignment:");
        for p in &plan.partitions {
            let name = format!("{}-{}", p.topic, p.partition);
            if in_progress.contains(&(p.topic.clone(), p.partition)) {
                println!("Reassignment of partition {name} is still in progress.");
                continue;
            }
            match current.get(&(p.topic.clone(), p.partition)) {
                Some(replicas) if *replicas == p.replicas => {
                    println!("Reassignment of partition {name} is completed.")
                }
                Some(replicas) => println!(
                    "There is no active reassignment of partition {name}, but replica set is \
                     {replicas:?} rather than {:?}.",
                    p.replicas
                ),
                None => println!("Partition {name} does not exist."),
            }
        }
        Ok(())
    } else if args.cancel {
        let cancelled = alter(&mut conn, &plan, true)?;
        if cancelled.is_empty() {
            println!("None of the specified partition reassignments are active.");
        } else {
            println!(
                "Successfully cancelled partition reassignments for: {}",
                cancelled.join(",")
            );
        }
        Ok(())
    } else {
        Err("one of --execute, --verify, --cancel is required".into())
    }
}
