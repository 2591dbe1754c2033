//! Operator APIs on partitions: ElectLeaders (43, v0-2), AlterPartitionReassignments (45, v0)
//! and ListPartitionReassignments (46, v0).
//!
//! Elections and reassignments are commands of the coordination quorum
//! (`coordination::partition_admin`), so every broker applies them and they survive restarts;
//! any broker takes the request (Kafka sends them to the controller; here every broker
//! forwards through Raft). The answer comes once the command is committed and this broker
//! applied the new metadata; a reassignment then runs by itself: new replicas fetch as
//! followers, and the quorum completes it when the leader reports them in sync.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::admin::{coordinate, coordination_timeout};
use crate::coordination::state_machine::PartitionOutcome;
use crate::coordination::{Command, Outcome};
use crate::protocol::ApiError;
use crate::shard::Shard;

const ELECTION_PREFERRED: i8 = 0;
const ELECTION_UNCLEAN: i8 = 1;

fn str(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Proposes a per-partition command; a failure of the quorum itself is the whole answer.
async fn propose_for_partitions(
    shard: &Rc<Shard>,
    command: Command,
    timeout_ms: i32,
) -> Result<Vec<PartitionOutcome>, ApiError> {
    let timeout = coordination_timeout(timeout_ms);
    coordinate(shard, move |coordinator| async move {
        match coordinator.propose(command, timeout).await? {
            Outcome::Partitions(results) => Ok(results),
            Outcome::Refused { code, message } => Err(ApiError::new(code, message)),
            other => Err(ApiError::new(
                ResponseError::UnknownServerError,
                format!("unexpected outcome {other:?}"),
            )),
        }
    })
    .await
}

/// Results grouped by topic, in request order within each topic.
fn by_topic<T>(results: impl IntoIterator<Item = (String, T)>) -> BTreeMap<String, Vec<T>> {
    let mut topics: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for (topic, result) in results {
        topics.entry(topic).or_default().push(result);
    }
    topics
}

pub async fn elect_leaders(
    shard: &Rc<Shard>,
    version: i16,
    request: ElectLeadersRequest,
) -> ElectLeadersResponse {
    let mut response = ElectLeadersResponse::default();
    // v0 has no election type: preferred only.
    let election_type = if version >= 1 {
        request.election_type
    } else {
        ELECTION_PREFERRED
    };
    let partitions: Option<Vec<(String, i32)>> = request.topic_partitions.map(|topics| {
        topics
            .into_iter()
            .flat_map(|t| {
                let name = t.topic.0.to_string();
                t.partitions.into_iter().map(move |p| (name.clone(), p))
            })
            .collect()
    });
    if partitions
        .as_ref()
        .is_some_and(|p| p.len() > shard.config.max_partitions)
    {
        // No cluster has more partitions: nothing this large goes into the coordination log.
        response.error_code = ResponseError::InvalidRequest.code();
        return response;
    }
    let requested = partitions.clone().unwrap_or_default();
    let results = match election_type {
        ELECTION_PREFERRED | ELECTION_UNCLEAN => {
            let command = Command::ElectLeaders {
                unclean: election_type == ELECTION_UNCLEAN,
                partitions,
            };
            propose_for_partitions(shard, command, request.timeout_ms).await
        }
        other => Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("Unknown election type {other}"),
        )),
    };
    let results = match results {
        Ok(results) => results,
        // v1+ carries a top-level error; v0 only per-partition ones.
        Err(e) if version >= 1 => {
            response.error_code = e.code.code();
            return response;
        }
        Err(e) => requested
            .into_iter()
            .map(|(t, p)| (t, p, Some((e.code, e.message.clone()))))
            .collect(),
    };
    for (topic, partitions) in by_topic(results.into_iter().map(|(t, p, e)| (t, (p, e)))) {
        if partitions.iter().any(|(_, e)| e.is_none()) {
            tracing::info!(%topic, election_type, "elected leaders");
        }
        let mut out = ReplicaElectionResult::default();
        out.topic = TopicName(str(topic));
        out.partition_result = partitions
            .into_iter()
            .map(|(index, error)| {
                let mut p = PartitionResult::default();
                p.partition_id = index;
                if let Some((code, message)) = error {
                    p.error_code = code.code();
                    p.error_message = Some(str(message));
                }
                p
            })
            .collect();
        response.replica_election_results.push(out);
    }
    response
}

pub async fn alter_partition_reassignments(
    shard: &Rc<Shard>,
    _version: i16,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let mut response = AlterPartitionReassignmentsResponse::default();
    let reassignments: Vec<(String, i32, Option<Vec<i32>>)> = request
        .topics
        .into_iter()
        .flat_map(|t| {
            let name = t.name.0.to_string();
            t.partitions.into_iter().map(move |p| {
                (
                    name.clone(),
                    p.partition_index,
                    p.replicas.map(|rs| rs.into_iter().map(|r| r.0).collect()),
                )
            })
        })
        .collect();
    if reassignments.is_empty() {
        return response;
    }
    // Bounds what goes into the coordination log: no cluster has more partitions than
    // `max.partitions`, and no target more replicas than there are brokers (the state machine
    // refuses those with a message; here they are cut short before they reach the log).
    if reassignments.len() > shard.config.max_partitions {
        response.error_code = ResponseError::InvalidRequest.code();
        response.error_message = Some(str("more partitions than max.partitions"));
        return response;
    }
    let brokers = shard.metadata().brokers.len();
    let reassignments = reassignments
        .into_iter()
        .map(|(topic, index, target)| {
            // Still more replicas than brokers, so still refused, but bounded.
            let target = target.map(|mut t| {
                t.truncate(brokers + 1);
                t
            });
            (topic, index, target)
        })
        .collect::<Vec<_>>();
    tracing::info!(?reassignments, "reassigning partitions");
    let command = Command::ReassignPartitions { reassignments };
    let results = match propose_for_partitions(shard, command, request.timeout_ms).await {
        Ok(results) => results,
        Err(e) => {
            response.error_code = e.code.code();
            response.error_message = Some(str(e.message));
            return response;
        }
    };
    for (topic, partitions) in by_topic(results.into_iter().map(|(t, p, e)| (t, (p, e)))) {
        let mut out = ReassignableTopicResponse::default();
        out.name = TopicName(str(topic));
        out.partitions = partitions
            .into_iter()
            .map(|(index, error)| {
                let mut p = ReassignablePartitionResponse::default();
                p.partition_index = index;
                if let Some((code, message)) = error {
                    p.error_code = code.code();
                    p.error_message = Some(str(message));
                }
                p
            })
            .collect();
        response.responses.push(out);
    }
    response
}

/// The reassignments in progress, from this broker's copy of the committed metadata.
pub async fn list_partition_reassignments(
    shard: &Rc<Shard>,
    _version: i16,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let snapshot = shard.metadata();
    let wanted: Option<BTreeMap<String, Vec<i32>>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let broker_ids = |ids: &[i32]| ids.iter().map(|&r| BrokerId(r)).collect::<Vec<_>>();
    let mut response = ListPartitionReassignmentsResponse::default();
    for (name, topic) in &snapshot.topics {
        let partitions: Vec<OngoingPartitionReassignment> = topic
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.adding_replicas.is_empty() || !p.removing_replicas.is_empty())
            .filter(|(index, _)| {
                wanted
                    .as_ref()
                    .is_none_or(|w| w.get(name).is_some_and(|ps| ps.contains(&(*index as i32))))
            })
            .map(|(index, p)| {
                let mut out = OngoingPartitionReassignment::default();
                out.partition_index = index as i32;
                out.replicas = broker_ids(&p.replicas);
                out.adding_replicas = broker_ids(&p.adding_replicas);
                out.removing_replicas = broker_ids(&p.removing_replicas);
                out
            })
            .collect();
        if !partitions.is_empty() {
            let mut out = OngoingTopicReassignment::default();
            out.name = TopicName(str(name.clone()));
            out.partitions = partitions;
            response.topics.push(out);
        }
    }
    response
}
