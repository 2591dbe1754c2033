//! `brokerctl consumer-groups`: kafka-consumer-groups.sh.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::client::{error_text, s, Conn, Result};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    bootstrap_server: String,
    #[arg(long, group = "action")]
    list: bool,
    #[arg(long, group = "action")]
    describe: bool,
    #[arg(long, group = "action")]
    delete: bool,
    #[arg(long, group = "action")]
    reset_offsets: bool,
    /// Repeatable for --delete.
    #[arg(long)]
    group: Vec<String>,
    /// With --describe: one line per member instead of per partition.
    #[arg(long)]
    members: bool,
    /// With --reset-offsets: the topic (`T` or `T:0,1`); repeatable.
    #[arg(long)]
    topic: Vec<String>,
    /// With --reset-offsets: every topic the group has offsets for.
    #[arg(long)]
    all_topics: bool,
    #[arg(long)]
    to_earliest: bool,
    #[arg(long)]
    to_latest: bool,
    #[arg(long)]
    to_offset: Option<i64>,
    #[arg(long, allow_hyphen_values = true)]
    shift_by: Option<i64>,
    /// Show the new offsets without committing them (the default).
    #[arg(long)]
    dry_run: bool,
    /// Commit the new offsets.
    #[arg(long)]
    execute: bool,
}

const TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(args: Args) -> Result<()> {
    let mut conn = Conn::connect(&args.bootstrap_server)?;
    if args.list {
        for (group, _, _) in list(&mut conn)? {
            println!("{group}");
        }
        return Ok(());
    }
    if args.group.is_empty() {
        return Err("--group is required".into());
    }
    if args.describe {
        for group in &args.group {
            describe(&args, group)?;
        }
        Ok(())
    } else if args.delete {
        delete(&args)
    } else if args.reset_offsets {
        reset(&args, &args.group[0])
    } else {
        Err("one of --list, --describe, --delete, --reset-offsets is required".into())
    }
}

/// (group id, protocol type, state), sorted by id.
fn list(conn: &mut Conn) -> Result<Vec<(String, String, String)>> {
    let response = conn.call(4, &ListGroupsRequest::default())?;
    if response.error_code != 0 {
        return Err(error_text(response.error_code, None));
    }
    let mut groups: Vec<_> = response
        .groups
        .into_iter()
        .map(|g| {
            (
                g.group_id.0.to_string(),
                g.protocol_type.to_string(),
                g.group_state.to_string(),
            )
        })
        .collect();
    groups.sort();
    Ok(groups)
}

/// A connection to the coordinator of `group`.
fn coordinator(bootstrap: &str, group: &str) -> Result<Conn> {
    let mut conn = Conn::connect(bootstrap)?;
    let mut request = FindCoordinatorRequest::default();
    let (code, message, host, port) = if conn.version_of::<FindCoordinatorRequest>(4) >= 4 {
        request.coordinator_keys = vec![s(group)];
        let response = conn.call(4, &request)?;
        let c = response
            .coordinators
            .into_iter()
            .next()
            .ok_or("empty response")?;
        (c.error_code, c.error_message, c.host, c.port)
    } else {
        request.key = s(group);
        let r = conn.call(3, &request)?;
        (r.error_code, r.error_message, r.host, r.port)
    };
    if code != 0 {
        return Err(format!(
            "cannot find the coordinator of group '{group}': {}",
            error_text(code, message.as_ref())
        ));
    }
    Conn::connect(&format!("{host}:{port}"))
}

fn describe_group(conn: &mut Conn, group: &str) -> Result<DescribedGroup> {
    let mut request = DescribeGroupsRequest::default();
    request.groups = vec![GroupId(s(group))];
    let response = conn.call(5, &request)?;
    let g = response.groups.into_iter().next().ok_or("empty response")?;
    if g.error_code != 0 {
        return Err(error_text(g.error_code, None));
    }
    Ok(g)
}

/// Committed offsets of a group: (topic, partition) -> offset.
fn committed(conn: &mut Conn, group: &str) -> Result<BTreeMap<(String, i32), i64>> {
    let mut request = OffsetFetchRequest::default();
    request.group_id = GroupId(s(group));
    request.topics = None;
    let response = conn.call(7, &request)?;
    if response.error_code != 0 {
        return Err(error_text(response.error_code, None));
    }
    let mut out = BTreeMap::new();
    for t in response.topics {
        for p in t.partitions {
            if p.error_code == 0 && p.committed_offset >= 0 {
                out.insert(
                    (t.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    Ok(out)
}

/// The (topic, partition) pairs of a ConsumerProtocolAssignment; empty when it does not parse.
fn decode_assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    broker::groups::group::parse_assignment(bytes)
}

fn watermarks(bootstrap: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| format!("cannot create client: {e}"))
}

/// Prints rows as columns padded to their widest cell.
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join(" ").trim_end());
    }
}

fn describe(args: &Args, group: &str) -> Result<()> {
    let mut conn = coordinator(&args.bootstrap_server, group)?;
    let described = describe_group(&mut conn, group)?;
    if described.group_state.as_str() == "Dead" {
        return Err(format!("Consumer group '{group}' does not exist."));
    }
    println!();
    if described.members.is_empty() {
        println!("Consumer group '{group}' has no active members.");
        println!();
    }
    if args.members {
        let mut rows = vec![["GROUP", "CONSUMER-ID", "HOST", "CLIENT-ID", "#PARTITIONS"]
            .map(String::from)
            .to_vec()];
        for m in &described.members {
            rows.push(vec![
                group.to_string(),
                m.member_id.to_string(),
                host(&m.client_host),
                m.client_id.to_string(),
                decode_assignment(&m.member_assignment).len().to_string(),
            ]);
        }
        print_table(&rows);
        return Ok(());
    }
    let offsets = committed(&mut conn, group)?;
    let mut owners: BTreeMap<(String, i32), (String, String, String)> = BTreeMap::new();
    for m in &described.members {
        for tp in decode_assignment(&m.member_assignment) {
            owners.insert(
                tp,
                (
                    m.member_id.to_string(),
                    host(&m.client_host),
                    m.client_id.to_string(),
                ),
            );
        }
    }
    let partitions: BTreeSet<(String, i32)> =
        offsets.keys().chain(owners.keys()).cloned().collect();
    let client = watermarks(&args.bootstrap_server)?;
    let mut rows = vec![[
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST",
        "CLIENT-ID",
    ]
    .map(String::from)
    .to_vec()];
    for (topic, partition) in partitions {
        let end = client
            .fetch_watermarks(&topic, partition, TIMEOUT)
            .map(|(_, high)| high)
            .ok();
        let current = offsets.get(&(topic.clone(), partition)).copied();
        let lag = match (current, end) {
            (Some(c), Some(e)) => (e - c).max(0).to_string(),
            _ => "-".into(),
        };
        let dash = || "-".to_string();
        let (member, host, client_id) = owners
            .get(&(topic.clone(), partition))
            .cloned()
            .unwrap_or_else(|| (dash(), dash(), dash()));
        rows.push(vec![
            group.to_string(),
            topic,
            partition.to_string(),
            current.map_or_else(dash, |c| c.to_string()),
            end.map_or_else(dash, |e| e.to_string()),
            lag,
            member,
            host,
            client_id,
        ]);
    }
    print_table(&rows);
    Ok(())
}

fn host(client_host: &str) -> String {
    if client_host.is_empty() {
        "-".into()
    } else {
        client_host.to_string()
    }
}

fn delete(args: &Args) -> Result<()> {
    let mut failures = Vec::new();
    for group in &args.group {
        let mut conn = coordinator(&args.bootstrap_server, group)?;
        let mut request = DeleteGroupsRequest::default();
        request.groups_names = vec![GroupId(s(group.clone()))];
        let response = conn.call(2, &request)?;
        let result = response.results.first().ok_or("empty response")?;
        if result.error_code != 0 {
            failures.push(format!(
                "Group '{group}' could not be deleted due to: {}",
                error_text(result.error_code, None)
            ));
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("; "));
    }
    let names: Vec<String> = args.group.iter().map(|g| format!("'{g}'")).collect();
    println!(
        "Deletion of requested consumer groups ({}) was successful.",
        names.join(", ")
    );
    Ok(())
}

/// `T` or `T:0,1,2`.
fn parse_topic(spec: &str) -> Result<(String, Option<Vec<i32>>)> {
    match spec.split_once(':') {
        None => Ok((spec.to_string(), None)),
        Some((t, ps)) => {
            let parts = ps
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse::<i32>()
                        .map_err(|_| format!("bad partition in {spec:?}"))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((t.to_string(), Some(parts)))
        }
    }
}

fn partition_count(conn: &mut Conn, topic: &str) -> Result<i32> {
    let mut t = MetadataRequestTopic::default();
    t.name = Some(TopicName(s(topic)));
    let mut request = MetadataRequest::default();
    request.topics = Some(vec![t]);
    let response = conn.call(12, &request)?;
    let t = response.topics.first().ok_or("empty response")?;
    if t.error_code != 0 {
        return Err(format!(
            "topic '{topic}': {}",
            error_text(t.error_code, None)
        ));
    }
    Ok(t.partitions.len() as i32)
}

fn reset(args: &Args, group: &str) -> Result<()> {
    let chosen = [
        args.to_earliest,
        args.to_latest,
        args.to_offset.is_some(),
        args.shift_by.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if chosen != 1 {
        return Err(
            "--reset-offsets needs exactly one of --to-earliest, --to-latest, --to-offset, --shift-by"
                .into(),
        );
    }
    if args.topic.is_empty() && !args.all_topics {
        return Err("--reset-offsets needs --topic or --all-topics".into());
    }
    let mut conn = coordinator(&args.bootstrap_server, group)?;
    let described = describe_group(&mut conn, group)?;
    let state = described.group_state.to_string();
    if state != "Empty" && state != "Dead" {
        return Err(format!(
            "Assignments can only be reset if the group '{group}' is inactive, but the current state is {state}."
        ));
    }
    let current = committed(&mut conn, group)?;
    let mut targets: BTreeSet<(String, i32)> = BTreeSet::new();
    if args.all_topics {
        targets.extend(current.keys().cloned());
    }
    let mut meta = Conn::connect(&args.bootstrap_server)?;
    for spec in &args.topic {
        let (topic, partitions) = parse_topic(spec)?;
        let partitions = match partitions {
            Some(ps) => ps,
            None => (0..partition_count(&mut meta, &topic)?).collect(),
        };
        targets.extend(partitions.into_iter().map(|p| (topic.clone(), p)));
    }
    let client = watermarks(&args.bootstrap_server)?;
    let mut plan = Vec::new();
    for (topic, partition) in targets {
        let (low, high) = client
            .fetch_watermarks(&topic, partition, TIMEOUT)
            .map_err(|e| format!("cannot read the offsets of {topic}-{partition}: {e}"))?;
        let target = if args.to_earliest {
            low
        } else if args.to_latest {
            high
        } else if let Some(offset) = args.to_offset {
            offset
        } else {
            let from = current
                .get(&(topic.clone(), partition))
                .copied()
                .unwrap_or(high);
            from.saturating_add(args.shift_by.unwrap_or(0))
        };
        plan.push((topic, partition, target.clamp(low, high)));
    }
    let mut rows = vec![["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"]
        .map(String::from)
        .to_vec()];
    for (topic, partition, offset) in &plan {
        rows.push(vec![
            group.into(),
            topic.clone(),
            partition.to_string(),
            offset.to_string(),
        ]);
    }
    println!();
    print_table(&rows);
    if !args.execute {
        return Ok(());
    }
    let mut by_topic: BTreeMap<String, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for (topic, partition, offset) in plan {
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = partition;
        p.committed_offset = offset;
        p.committed_leader_epoch = -1;
        p.committed_metadata = Some(s(""));
        by_topic.entry(topic).or_default().push(p);
    }
    let mut request = OffsetCommitRequest::default();
    request.group_id = GroupId(s(group));
    request.generation_id_or_member_epoch = -1;
    request.member_id = s("");
    request.retention_time_ms = -1;
    request.topics = by_topic
        .into_iter()
        .map(|(name, partitions)| {
            let mut t = OffsetCommitRequestTopic::default();
            t.name = TopicName(s(name));
            t.partitions = partitions;
            t
        })
        .collect();
    let response = conn.call(8, &request)?;
    for t in response.topics {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(format!(
                    "cannot commit {}-{}: {}",
                    t.name.0,
                    p.partition_index,
                    error_text(p.error_code, None)
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn assignments_decode() {
        let mut b = vec![
            0u8, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 9,
        ];
        b.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            super::decode_assignment(&b),
            vec![("t".to_string(), 3), ("t".to_string(), 9)]
        );
        assert!(super::decode_assignment(&b[..10]).is_empty());
    }
}
