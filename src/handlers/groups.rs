//! The group coordinator APIs: FindCoordinator (10), JoinGroup (11), Heartbeat (12),
//! LeaveGroup (13), SyncGroup (14), OffsetCommit (8), OffsetFetch (9), DescribeGroups (15),
//! ListGroups (16), DeleteGroups (42), OffsetDelete (47).
//!
//! A request about group G runs on G's shard (`groups::owner_shard` of
//! `groups::coordinator_for(G)`), reached with `Shard::invoke_on`; only that shard touches G.
//! Requests naming several groups (OffsetFetch v8+, DescribeGroups, DeleteGroups) fan out per
//! group; ListGroups asks every shard.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use futures::future::join_all;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::groups::coordinator::CommitEntry;
use crate::groups::group::JoinRequest;
use crate::groups::{self, MAX_GROUP_ID_BYTES, OFFSETS_TOPIC};
use crate::shard::Shard;

fn s(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

fn code(error: Option<ResponseError>) -> i16 {
    error.map_or(0, |e| e.code())
}

fn valid_group_id(group_id: &str) -> bool {
    !group_id.is_empty() && group_id.len() <= MAX_GROUP_ID_BYTES
}

/// Why this node cannot serve `group_id`, if it cannot: in a cluster, another node leads the
/// group's offsets partition.
fn coordinator_error(shard: &Shard, group_id: &str) -> Option<ResponseError> {
    if !valid_group_id(group_id) {
        return Some(ResponseError::InvalidGroupId);
    }
    not_coordinator_here(shard, group_id)
}

/// NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE unless this node leads the offsets partition
/// the group id `key` hashes to.
pub(crate) fn not_coordinator_here(shard: &Shard, key: &str) -> Option<ResponseError> {
    let partition = shard.groups.partition_of(key);
    unless_this_node(
        shard,
        groups::coordinator_node(
            &shard.metadata(),
            partition,
            shard.broker.node_id,
            shard.config.is_clustered(),
        ),
    )
}

/// What a coordinator request answers when `coordinator` (the node leading the coordinator's
/// partition, `None` if none does) is not this node: NOT_COORDINATOR, or
/// COORDINATOR_NOT_AVAILABLE.
pub(crate) fn unless_this_node(shard: &Shard, coordinator: Option<i32>) -> Option<ResponseError> {
    match coordinator {
        Some(node) if node == shard.broker.node_id => None,
        Some(_) => Some(ResponseError::NotCoordinator),
        None => Some(ResponseError::CoordinatorNotAvailable),
    }
}

/// In a cluster the internal topics (`__consumer_offsets`, `__transaction_state`) are topics of
/// the coordination state, created on first need (as Kafka creates them on the first
/// FindCoordinator), compacted, replicated to min(3, live brokers); until their partitions
/// have leaders, clients are told the coordinator is not available and retry.
fn ensure_internal_topic(shard: &Rc<Shard>, name: &'static str, partitions: i32) {
    thread_local! {
        /// One creation in flight per topic and shard: clients retry FindCoordinator
        /// meanwhile, and each retry must not queue another proposal.
        static CREATING: std::cell::RefCell<std::collections::HashSet<&'static str>> =
            std::cell::RefCell::new(std::collections::HashSet::new());
    }
    if !shard.config.is_clustered()
        || shard.metadata().topic(name).is_some()
        || !CREATING.with(|c| c.borrow_mut().insert(name))
    {
        return;
    }
    let max_partitions = shard.config.max_partitions as u64;
    let shard = shard.clone();
    glommio::spawn_local(async move {
        crate::handlers::admin::coordinate(&shard, move |coordinator| async move {
            let live = coordinator.with_state(|s| s.brokers.len());
            let topic = crate::coordination::state_machine::NewTopic {
                name: name.to_string(),
                id: *uuid::Uuid::new_v4().as_bytes(),
                partitions,
                replication_factor: groups::offsets_topic_replication_factor(live),
                configs: vec![("cleanup.policy".into(), "compact".into())],
            };
            let command = crate::coordination::state_machine::Command::CreateTopic {
                topic,
                max_partitions,
            };
            match coordinator
                .change(command, std::time::Duration::from_secs(10))
                .await
            {
                Ok(_) => tracing::info!(topic = name, partitions, "created an internal topic"),
                Err(e) if e.code == ResponseError::TopicAlreadyExists => {}
                Err(e) => {
                    tracing::warn!(topic = name, error = %e, "cannot create an internal topic yet")
                }
            }
        })
        .await;
        CREATING.with(|c| c.borrow_mut().remove(name));
    })
    .detach();
}

/// Runs `f` on the shard that owns `group_id`.
async fn on_group_shard<R, F, Fut>(shard: &Rc<Shard>, group_id: &str, f: F) -> R
where
    R: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
{
    let owner = groups::owner_shard(shard.groups.partition_of(group_id), shard.nr_shards);
    shard.invoke_on(owner, f).await
}

pub async fn find_coordinator(
    shard: &Rc<Shard>,
    version: i16,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let transactional = request.key_type == 1;
    if transactional {
        ensure_internal_topic(
            shard,
            crate::transactions::TRANSACTION_STATE_TOPIC,
            shard.config.transaction_state.partitions,
        );
    } else {
        ensure_internal_topic(
            shard,
            groups::OFFSETS_TOPIC,
            shard.config.groups.offsets_topic_partitions,
        );
    }
    let metadata = shard.metadata();
    let lookup = |key: &str| -> (Option<ResponseError>, String, i32, String, i32) {
        // Key type 0: a group, on the offsets topic; 1: a transactional id, on the
        // transaction state topic (`transactions::replicated`).
        if !(0..=1).contains(&request.key_type) {
            return (
                Some(ResponseError::InvalidRequest),
                "unknown coordinator key type".into(),
                -1,
                String::new(),
                -1,
            );
        }
        if !valid_group_id(key) {
            return (
                Some(ResponseError::InvalidGroupId),
                "invalid group id".into(),
                -1,
                String::new(),
                -1,
            );
        }
        let node = if transactional {
            let partition =
                crate::transactions::partition_of(key, shard.config.transaction_state.partitions);
            crate::transactions::replicated::coordinator_node(
                &metadata,
                partition,
                shard.broker.node_id,
                shard.config.is_clustered(),
            )
        } else {
            groups::coordinator_node(
                &metadata,
                shard.groups.partition_of(key),
                shard.broker.node_id,
                shard.config.is_clustered(),
            )
        };
        let broker = node.and_then(|node| {
            metadata
                .brokers
                .iter()
                .find(|b| b.node_id == node)
                .cloned()
                .or_else(|| (node == shard.broker.node_id).then(|| shard.broker.clone()))
        });
        match broker {
            Some(b) => (None, String::new(), b.node_id, b.host, b.port as i32),
            None => (
                Some(ResponseError::CoordinatorNotAvailable),
                "the coordinator is not available".into(),
                -1,
                String::new(),
                -1,
            ),
        }
    };
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let (error, message, node, host, port) = lookup(key);
                let mut c = Coordinator::default();
                c.key = key.clone();
                c.error_code = code(error);
                c.error_message = error.map(|_| s(message));
                c.node_id = BrokerId(node);
                c.host = s(host);
                c.port = port;
                c
            })
            .collect();
    } else {
        let (error, message, node, host, port) = lookup(&request.key);
        response.error_code = code(error);
        if version >= 1 {
            response.error_message = error.map(|_| s(message));
        }
        response.node_id = BrokerId(node);
        response.host = s(host);
        response.port = port;
    }
    response
}

pub async fn join_group(
    shard: &Rc<Shard>,
    version: i16,
    client_id: String,
    client_host: String,
    request: JoinGroupRequest,
) -> JoinGroupResponse {
    let group_id = request.group_id.0.to_string();
    let mut response = JoinGroupResponse::default();
    response.protocol_name = Some(s(""));
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.map(|i| i.to_string()),
        client_id,
        client_host,
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    if let Some(error) = coordinator_error(shard, &group_id) {
        response.error_code = error.code();
        response.generation_id = -1;
        response.member_id = s(join.member_id);
        return response;
    }
    let result = on_group_shard(shard, &group_id.clone(), move |owner| async move {
        owner.groups.join(group_id, join).await
    })
    .await;
    response.error_code = code(result.error);
    response.generation_id = result.generation;
    if version >= 7 {
        response.protocol_type = result.protocol_type.map(s);
        response.protocol_name = result.protocol_name.map(s);
    } else {
        response.protocol_name = Some(s(result.protocol_name.unwrap_or_default()));
    }
    response.leader = s(result.leader);
    response.member_id = s(result.member_id);
    response.members = result
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = s(id);
            if version >= 5 {
                m.group_instance_id = instance.map(s);
            }
            m.metadata = metadata;
            m
        })
        .collect();
    response
}

pub async fn sync_group(
    shard: &Rc<Shard>,
    version: i16,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let group_id = request.group_id.0.to_string();
    let mut response = SyncGroupResponse::default();
    if let Some(error) = coordinator_error(shard, &group_id) {
        response.error_code = error.code();
        return response;
    }
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.map(|i| i.to_string());
    let assignments: Vec<(String, Bytes)> = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let generation = request.generation_id;
    let result = on_group_shard(shard, &group_id.clone(), move |owner| async move {
        owner
            .groups
            .sync(group_id, member_id, instance_id, generation, assignments)
            .await
    })
    .await;
    response.error_code = code(result.error);
    if version >= 5 {
        response.protocol_type = result.protocol_type.map(s);
        response.protocol_name = result.protocol_name.map(s);
    }
    response.assignment = result.assignment;
    response
}

pub async fn heartbeat(
    shard: &Rc<Shard>,
    _version: i16,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    let group_id = request.group_id.0.to_string();
    let mut response = HeartbeatResponse::default();
    if let Some(error) = coordinator_error(shard, &group_id) {
        response.error_code = error.code();
        return response;
    }
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.map(|i| i.to_string());
    let generation = request.generation_id;
    let error = on_group_shard(shard, &group_id.clone(), move |owner| async move {
        owner
            .groups
            .heartbeat(&group_id, &member_id, instance_id.as_deref(), generation)
    })
    .await;
    response.error_code = code(error);
    response
}

pub async fn leave_group(
    shard: &Rc<Shard>,
    version: i16,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let group_id = request.group_id.0.to_string();
    let mut response = LeaveGroupResponse::default();
    if let Some(error) = coordinator_error(shard, &group_id) {
        response.error_code = error.code();
        return response;
    }
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let sent = leaving.clone();
    let results = on_group_shard(shard, &group_id.clone(), move |owner| async move {
        owner.groups.leave(&group_id, &sent)
    })
    .await;
    if version >= 3 {
        response.members = leaving
            .into_iter()
            .zip(results)
            .map(|((member_id, instance_id), error)| {
                let mut m = MemberResponse::default();
                m.member_id = s(member_id);
                m.group_instance_id = instance_id.map(s);
                m.error_code = code(error);
                m
            })
            .collect();
    } else {
        response.error_code = code(results.into_iter().next().flatten());
    }
    response
}

pub async fn offset_commit(
    shard: &Rc<Shard>,
    _version: i16,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group_id = request.group_id.0.to_string();
    let snapshot = shard.metadata();
    let group_error = coordinator_error(shard, &group_id);
    // Per partition: Err(code) decided here, Ok(index) into the entries sent to the owner.
    type Slots = Vec<(i32, Result<usize, ResponseError>)>;
    let mut layout: Vec<(TopicName, Slots)> = Vec::new();
    let mut entries = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let partitions_known = snapshot.topic(&name).map(|t| t.partitions.len() as i32);
        let mut slots = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let slot = match (group_error, partitions_known) {
                (Some(e), _) => Err(e),
                (None, Some(n)) if p.partition_index >= 0 && p.partition_index < n => {
                    entries.push(CommitEntry {
                        topic: name.clone(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.map(|m| m.to_string()),
                    });
                    Ok(entries.len() - 1)
                }
                _ => Err(ResponseError::UnknownTopicOrPartition),
            };
            slots.push((p.partition_index, slot));
        }
        layout.push((topic.name, slots));
    }
    let results = if entries.is_empty() {
        Ok(Vec::new())
    } else {
        let member_id = request.member_id.to_string();
        let instance_id = request.group_instance_id.map(|i| i.to_string());
        let generation = request.generation_id_or_member_epoch;
        on_group_shard(shard, &group_id.clone(), move |owner| async move {
            owner
                .groups
                .commit(group_id, member_id, instance_id, generation, entries)
                .await
        })
        .await
    };
    let mut response = OffsetCommitResponse::default();
    response.topics = layout
        .into_iter()
        .map(|(name, slots)| {
            let mut t = OffsetCommitResponseTopic::default();
            t.name = name;
            t.partitions = slots
                .into_iter()
                .map(|(index, slot)| {
                    let mut p = OffsetCommitResponsePartition::default();
                    p.partition_index = index;
                    p.error_code = match (slot, &results) {
                        (Err(e), _) => e.code(),
                        (Ok(_), Err(e)) => e.code(),
                        (Ok(i), Ok(r)) => code(r.get(i).copied().flatten()),
                    };
                    p
                })
                .collect();
            t
        })
        .collect();
    response
}

type FetchedTopics = crate::groups::coordinator::TopicOffsets;

async fn fetch_group(
    shard: &Rc<Shard>,
    group_id: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<FetchedTopics, ResponseError> {
    if let Some(error) = coordinator_error(shard, &group_id) {
        return Err(error);
    }
    on_group_shard(shard, &group_id.clone(), move |owner| async move {
        owner.groups.fetch(&group_id, topics, require_stable).await
    })
    .await
}

pub async fn offset_fetch(
    shard: &Rc<Shard>,
    version: i16,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    // v7+: read_committed consumers ask not to be given offsets of open transactions.
    let require_stable = version >= 7 && request.require_stable;
    if version >= 8 {
        let fetches = request.groups.into_iter().map(|g| {
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let group_id = g.group_id;
            async move {
                let fetched =
                    fetch_group(shard, group_id.0.to_string(), topics, require_stable).await;
                let mut out = OffsetFetchResponseGroup::default();
                out.group_id = group_id;
                match fetched {
                    Err(e) => out.error_code = e.code(),
                    Ok(topics) => {
                        out.topics = topics
                            .into_iter()
                            .map(|(name, partitions)| {
                                let mut t = OffsetFetchResponseTopics::default();
                                t.name = TopicName(s(name));
                                t.partitions = partitions
                                    .into_iter()
                                    .map(|(index, value)| {
                                        let mut p = OffsetFetchResponsePartitions::default();
                                        p.partition_index = index;
                                        let value = value.unwrap_or_else(|e| {
                                            p.error_code = e.code();
                                            None
                                        });
                                        p.committed_offset =
                                            value.as_ref().map_or(-1, |v| v.offset);
                                        p.committed_leader_epoch =
                                            value.as_ref().map_or(-1, |v| v.leader_epoch);
                                        p.metadata =
                                            Some(s(value.map(|v| v.metadata).unwrap_or_default()));
                                        p
                                    })
                                    .collect();
                                t
                            })
                            .collect();
                    }
                }
                out
            }
        });
        response.groups = join_all(fetches).await;
        return response;
    }
    let topics = request.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect::<Vec<_>>()
    });
    let fetched = fetch_group(
        shard,
        request.group_id.0.to_string(),
        topics.clone(),
        require_stable,
    )
    .await;
    match fetched {
        Err(e) if version >= 2 => response.error_code = e.code(),
        Err(e) => {
            // v1 has no top-level error: report it on every partition asked for.
            response.topics = topics
                .unwrap_or_default()
                .into_iter()
                .map(|(name, ps)| {
                    let mut t = OffsetFetchResponseTopic::default();
                    t.name = TopicName(s(name));
                    t.partitions = ps
                        .into_iter()
                        .map(|index| {
                            let mut p = OffsetFetchResponsePartition::default();
                            p.partition_index = index;
                            p.committed_offset = -1;
                            p.metadata = Some(s(""));
                            p.error_code = e.code();
                            p
                        })
                        .collect();
                    t
                })
                .collect();
        }
        Ok(fetched) => {
            response.topics = fetched
                .into_iter()
                .map(|(name, partitions)| {
                    let mut t = OffsetFetchResponseTopic::default();
                    t.name = TopicName(s(name));
                    t.partitions = partitions
                        .into_iter()
                        .map(|(index, value)| {
                            let mut p = OffsetFetchResponsePartition::default();
                            p.partition_index = index;
                            let value = value.unwrap_or_else(|e| {
                                p.error_code = e.code();
                                None
                            });
                            p.committed_offset = value.as_ref().map_or(-1, |v| v.offset);
                            if version >= 5 {
                                p.committed_leader_epoch =
                                    value.as_ref().map_or(-1, |v| v.leader_epoch);
                            }
                            p.metadata = Some(s(value.map(|v| v.metadata).unwrap_or_default()));
                            p
                        })
                        .collect();
                    t
                })
                .collect();
        }
    }
    response
}

pub async fn list_groups(
    shard: &Rc<Shard>,
    version: i16,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    let lists = (0..shard.nr_shards)
        .map(|target| shard.invoke_on(target, |owner| async move { owner.groups.list() }));
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let mut response = ListGroupsResponse::default();
    response.groups = join_all(lists)
        .await
        .into_iter()
        .flatten()
        .filter(|g| states.is_empty() || states.contains(&g.state.to_lowercase()))
        .map(|g| {
            let mut out = ListedGroup::default();
            out.group_id = GroupId(s(g.group_id));
            out.protocol_type = s(g.protocol_type);
            if version >= 4 {
                out.group_state = s(g.state);
            }
            out
        })
        .collect();
    response
}

pub async fn describe_groups(
    shard: &Rc<Shard>,
    version: i16,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let describes = request.groups.into_iter().map(|group_id| async move {
        let mut out = DescribedGroup::default();
        let id = group_id.0.to_string();
        out.group_id = group_id;
        if let Some(error) = coordinator_error(shard, &id) {
            out.error_code = error.code();
            return out;
        }
        let found = on_group_shard(shard, &id.clone(), move |owner| async move {
            owner.groups.describe(&id).map(|d| {
                // Members are not Send-free of Rc: copy out plain data.
                (
                    d.state,
                    d.protocol_type,
                    d.protocol,
                    d.members
                        .into_iter()
                        .map(|m| {
                            (
                                m.member_id,
                                m.instance_id,
                                m.client_id,
                                m.client_host,
                                m.metadata,
                                m.assignment,
                            )
                        })
                        .collect::<Vec<_>>(),
                )
            })
        })
        .await;
        match found {
            None => out.group_state = s("Dead"),
            Some((state, protocol_type, protocol, members)) => {
                out.group_state = s(state);
                out.protocol_type = s(protocol_type);
                out.protocol_data = s(protocol);
                out.members = members
                    .into_iter()
                    .map(
                        |(member_id, instance_id, client_id, client_host, metadata, assignment)| {
                            let mut m = DescribedGroupMember::default();
                            m.member_id = s(member_id);
                            if version >= 4 {
                                m.group_instance_id = instance_id.map(s);
                            }
                            m.client_id = s(client_id);
                            m.client_host = s(client_host);
                            m.member_metadata = metadata;
                            m.member_assignment = assignment;
                            m
                        },
                    )
                    .collect();
            }
        }
        out
    });
    let mut response = DescribeGroupsResponse::default();
    response.groups = join_all(describes).await;
    response
}

pub async fn delete_groups(
    shard: &Rc<Shard>,
    _version: i16,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let deletes = request.groups_names.into_iter().map(|group_id| async move {
        let id = group_id.0.to_string();
        let error = match coordinator_error(shard, &id) {
            Some(e) => Some(e),
            None => {
                on_group_shard(shard, &id.clone(), move |owner| async move {
                    owner.groups.delete(&id).await
                })
                .await
            }
        };
        let mut out = DeletableGroupResult::default();
        out.group_id = group_id;
        out.error_code = code(error);
        out
    });
    let mut response = DeleteGroupsResponse::default();
    response.results = join_all(deletes).await;
    response
}

pub async fn offset_delete(
    shard: &Rc<Shard>,
    _version: i16,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let group_id = request.group_id.0.to_string();
    let mut response = OffsetDeleteResponse::default();
    if let Some(error) = coordinator_error(shard, &group_id) {
        response.error_code = error.code();
        return response;
    }
    let topics: Vec<(String, Vec<i32>)> = request
        .topics
        .into_iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.partitions
                    .into_iter()
                    .map(|p| p.partition_index)
                    .collect(),
            )
        })
        .collect();
    let result = on_group_shard(shard, &group_id.clone(), move |owner| async move {
        owner.groups.delete_offsets(&group_id, topics).await
    })
    .await;
    match result {
        Err(e) => response.error_code = e.code(),
        Ok(topics) => {
            response.topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    let mut t = OffsetDeleteResponseTopic::default();
                    t.name = TopicName(s(name));
                    t.partitions = partitions
                        .into_iter()
                        .map(|(index, error)| {
                            let mut p = OffsetDeleteResponsePartition::default();
                            p.partition_index = index;
                            p.error_code = code(error);
                            p
                        })
                        .collect();
                    t
                })
                .collect();
        }
    }
    response
}

/// The internal offsets topic as Metadata describes it when asked for by name: every
/// partition led by this node (a single node coordinates every group).
pub fn offsets_topic_metadata(
    shard: &Shard,
    version: i16,
) -> kafka_protocol::messages::metadata_response::MetadataResponseTopic {
    use kafka_protocol::messages::metadata_response::{
        MetadataResponsePartition, MetadataResponseTopic,
    };
    let node = BrokerId(shard.broker.node_id);
    let mut topic = MetadataResponseTopic::default();
    topic.name = Some(TopicName(s(OFFSETS_TOPIC)));
    if version >= 1 {
        topic.is_internal = true;
    }
    topic.partitions = (0..shard.groups.config.offsets_topic_partitions)
        .map(|index| {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = index;
            p.leader_id = node;
            p.replica_nodes = vec![node];
            p.isr_nodes = vec![node];
            p
        })
        .collect();
    topic
}

/// True for the internal offsets topic, which clients may not create, write or delete.
pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC || name == crate::transactions::TRANSACTION_STATE_TOPIC
}
