//! Transaction APIs: InitProducerId (with a transactional id), AddPartitionsToTxn (v0-3),
//! AddOffsetsToTxn, EndTxn, TxnOffsetCommit, DescribeTransactions, ListTransactions,
//! DescribeProducers, WriteTxnMarkers. The transaction coordinator's work runs on shard 0
//! (`transactions::coordinator`) of the broker leading the id's `__transaction_state`
//! partition; TxnOffsetCommit is the group coordinator's (`groups::txn_offsets`).

use std::rc::Rc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::groups::{self, coordinator::CommitEntry};
use crate::shard::Shard;
use crate::transactions::coordinator::{coordinator, write_marker, TxnMetadata};
use crate::transactions::{partition_of, replicated, MAX_TRANSACTIONAL_ID_BYTES};

fn code(result: Result<(), ResponseError>) -> i16 {
    result.err().map_or(0, |e| e.code())
}

/// Why this node cannot coordinate `transactional_id`, if it cannot: the id is invalid, or in
/// a cluster another node leads the `__transaction_state` partition it hashes to (whether
/// this node has loaded that partition yet is the coordinator's check, `check_serving`).
fn coordinator_error(shard: &Shard, transactional_id: &str) -> Option<ResponseError> {
    if transactional_id.is_empty() || transactional_id.len() > MAX_TRANSACTIONAL_ID_BYTES {
        return Some(ResponseError::InvalidRequest);
    }
    not_transaction_coordinator_here(shard, transactional_id)
}

/// NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE unless this node leads the state partition of
/// `transactional_id`.
pub(crate) fn not_transaction_coordinator_here(
    shard: &Shard,
    transactional_id: &str,
) -> Option<ResponseError> {
    let partition = partition_of(transactional_id, shard.config.transaction_state.partitions);
    super::groups::unless_this_node(
        shard,
        replicated::coordinator_node(
            &shard.metadata(),
            partition,
            shard.broker.node_id,
            shard.config.is_clustered(),
        ),
    )
}

/// Old request versions know INVALID_PRODUCER_EPOCH only; PRODUCER_FENCED came with the
/// versions listed (KIP-588).
fn fenced_for(version: i16, fenced_since: i16, error: ResponseError) -> ResponseError {
    if error == ResponseError::ProducerFenced && version < fenced_since {
        ResponseError::InvalidProducerEpoch
    } else {
        error
    }
}

/// InitProducerId with a transactional id (the idempotent case stays in `admin`).
pub async fn init_producer_id(
    shard: &Rc<Shard>,
    version: i16,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    let transactional_id = request
        .transactional_id
        .as_ref()
        .map(|id| id.0.to_string())
        .unwrap_or_default();
    if let Some(error) = coordinator_error(shard, &transactional_id) {
        response.error_code = error.code();
        return response;
    }
    let expected =
        (request.producer_id.0 >= 0).then_some((request.producer_id.0, request.producer_epoch));
    let timeout_ms = request.transaction_timeout_ms;
    let result = shard
        .invoke_on(0, move |s| async move {
            let coordinator = coordinator(&s);
            coordinator.check_serving(&s, &transactional_id)?;
            coordinator
                .init_producer_id(&s, &transactional_id, timeout_ms, expected)
                .await
        })
        .await;
    match result {
        Ok((producer_id, epoch)) => {
            response.producer_id = ProducerId(producer_id);
            response.producer_epoch = epoch;
        }
        Err(e) => response.error_code = fenced_for(version, 3, e).code(),
    }
    response
}

pub async fn add_partitions_to_txn(
    shard: &Rc<Shard>,
    version: i16,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let transactional_id = request.v3_and_below_transactional_id.0.to_string();
    let snapshot = shard.metadata();
    let mut error = coordinator_error(shard, &transactional_id);
    let mut partitions = Vec::new();
    for topic in &request.v3_and_below_topics {
        let known = snapshot.topic(topic.name.0.as_str());
        for &index in &topic.partitions {
            let exists = known.is_some_and(|t| index >= 0 && (index as usize) < t.partitions.len());
            if !exists && error.is_none() {
                error = Some(ResponseError::UnknownTopicOrPartition);
            }
            partitions.push((topic.name.0.to_string(), index));
        }
    }
    let result = match error {
        Some(e) => Err(e),
        None => {
            let (producer_id, epoch) = (
                request.v3_and_below_producer_id.0,
                request.v3_and_below_producer_epoch,
            );
            shard
                .invoke_on(0, move |s| async move {
                    let coordinator = coordinator(&s);
                    coordinator.check_serving(&s, &transactional_id)?;
                    coordinator
                        .add_partitions(&s, &transactional_id, producer_id, epoch, partitions)
                        .await
                })
                .await
        }
    };
    let partition_code = code(result.map_err(|e| fenced_for(version, 2, e)));
    let mut response = AddPartitionsToTxnResponse::default();
    response.results_by_topic_v3_and_below = request
        .v3_and_below_topics
        .into_iter()
        .map(|topic| {
            let mut t = AddPartitionsToTxnTopicResult::default();
            t.name = topic.name;
            t.results_by_partition = topic
                .partitions
                .into_iter()
                .map(|index| {
                    let mut p = AddPartitionsToTxnPartitionResult::default();
                    p.partition_index = index;
                    p.partition_error_code = partition_code;
                    p
                })
                .collect();
            t
        })
        .collect();
    response
}

pub async fn add_offsets_to_txn(
    shard: &Rc<Shard>,
    version: i16,
    request: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let transactional_id = request.transactional_id.0.to_string();
    let group_id = request.group_id.0.to_string();
    let result = match coordinator_error(shard, &transactional_id) {
        Some(e) => Err(e),
        None if group_id.is_empty() || group_id.len() > groups::MAX_GROUP_ID_BYTES => {
            Err(ResponseError::InvalidGroupId)
        }
        None => {
            let (producer_id, epoch) = (request.producer_id.0, request.producer_epoch);
            let offsets_partition = shard.groups.partition_of(&group_id);
            shard
                .invoke_on(0, move |s| async move {
                    let coordinator = coordinator(&s);
                    coordinator.check_serving(&s, &transactional_id)?;
                    coordinator
                        .add_offsets(&s, &transactional_id, producer_id, epoch, offsets_partition)
                        .await
                })
                .await
        }
    };
    let mut response = AddOffsetsToTxnResponse::default();
    response.error_code = code(result.map_err(|e| fenced_for(version, 2, e)));
    response
}

pub async fn end_txn(shard: &Rc<Shard>, version: i16, request: EndTxnRequest) -> EndTxnResponse {
    let transactional_id = request.transactional_id.0.to_string();
    let result = match coordinator_error(shard, &transactional_id) {
        Some(e) => Err(e),
        None => {
            let (producer_id, epoch, commit) = (
                request.producer_id.0,
                request.producer_epoch,
                request.committed,
            );
            shard
                .invoke_on(0, move |s| async move {
                    let coordinator = coordinator(&s);
                    coordinator.check_serving(&s, &transactional_id)?;
                    coordinator
                        .end_transaction(&s, &transactional_id, producer_id, epoch, commit)
                        .await
                })
                .await
        }
    };
    let mut response = EndTxnResponse::default();
    response.error_code = code(result.map_err(|e| fenced_for(version, 2, e)));
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    response
}

/// TxnOffsetCommit, served by the *group's* coordinator (clients send it there, as Kafka's
/// design has it): checked against the group's membership (v3+), written to the group's
/// offsets partition as a transactional batch of the producer, and kept pending there until
/// the transaction coordinator's marker reaches that partition (commit makes them visible,
/// abort drops them).
pub async fn txn_offset_commit(
    shard: &Rc<Shard>,
    version: i16,
    request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let group_id = request.group_id.0.to_string();
    let snapshot = shard.metadata();
    let mut entries = Vec::new();
    let mut unknown = Vec::new();
    for topic in &request.topics {
        let known = snapshot.topic(topic.name.0.as_str());
        for p in &topic.partitions {
            let index = p.partition_index;
            if known.is_some_and(|t| index >= 0 && (index as usize) < t.partitions.len()) {
                entries.push(CommitEntry {
                    topic: topic.name.0.to_string(),
                    partition: index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                });
            } else {
                unknown.push((topic.name.0.to_string(), index));
            }
        }
    }
    let group_error = if group_id.is_empty() || group_id.len() > groups::MAX_GROUP_ID_BYTES {
        Some(ResponseError::InvalidGroupId)
    } else if request.transactional_id.0.len() > MAX_TRANSACTIONAL_ID_BYTES {
        Some(ResponseError::InvalidRequest)
    } else {
        super::groups::not_coordinator_here(shard, &group_id)
    };
    let stored = match group_error {
        Some(error) => Err(error),
        None => {
            let member = (version >= 3).then(|| {
                (
                    request.member_id.to_string(),
                    request.group_instance_id.as_ref().map(|i| i.to_string()),
                    request.generation_id,
                )
            });
            let producer = (request.producer_id.0, request.producer_epoch);
            let owner = groups::owner_shard(shard.groups.partition_of(&group_id), shard.nr_shards);
            shard
                .invoke_on(owner, move |owner| async move {
                    owner
                        .groups
                        .commit_transactional(group_id, member, producer, entries)
                        .await
                })
                .await
        }
    };
    // One result per known entry, in request order.
    let mut results = match stored {
        Ok(results) => results.into_iter(),
        Err(error) => {
            let code = fenced_for(version, 2, error).code();
            return respond_txn_offset_commit(request.topics, &unknown, |_| code);
        }
    };
    respond_txn_offset_commit(request.topics, &unknown, |_| {
        results.next().flatten().map_or(0, |e| e.code())
    })
}

/// The response of a TxnOffsetCommit: UNKNOWN_TOPIC_OR_PARTITION for `unknown` partitions,
/// `code_of` (called in request order) for the others.
fn respond_txn_offset_commit(
    topics: Vec<txn_offset_commit_request::TxnOffsetCommitRequestTopic>,
    unknown: &[(String, i32)],
    mut code_of: impl FnMut(i32) -> i16,
) -> TxnOffsetCommitResponse {
    let mut response = TxnOffsetCommitResponse::default();
    response.topics = topics
        .into_iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let mut t = TxnOffsetCommitResponseTopic::default();
            t.partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let mut out = TxnOffsetCommitResponsePartition::default();
                    out.partition_index = p.partition_index;
                    out.error_code = if unknown.contains(&(name.clone(), p.partition_index)) {
                        ResponseError::UnknownTopicOrPartition.code()
                    } else {
                        code_of(p.partition_index)
                    };
                    out
                })
                .collect();
            t.name = topic.name;
            t
        })
        .collect();
    response
}

fn described(transactional_id: String, meta: Option<TxnMetadata>) -> TransactionState {
    let mut state = TransactionState::default();
    state.transactional_id = TransactionalId(StrBytes::from_string(transactional_id));
    match meta {
        None => {
            state.error_code = ResponseError::TransactionalIdNotFound.code();
            state.producer_id = ProducerId(-1);
            state.producer_epoch = -1;
        }
        Some(meta) => {
            state.transaction_state = StrBytes::from_static_str(meta.state.name());
            state.transaction_timeout_ms = meta.timeout_ms;
            state.transaction_start_time_ms = meta.start_ms;
            state.producer_id = ProducerId(meta.producer_id);
            state.producer_epoch = meta.producer_epoch;
            let mut topics: Vec<TopicData> = Vec::new();
            for (topic, index) in meta.partitions {
                match topics.last_mut() {
                    Some(last) if last.topic.0.as_str() == topic => last.partitions.push(index),
                    _ => {
                        let mut t = TopicData::default();
                        t.topic = TopicName(StrBytes::from_string(topic));
                        t.partitions = vec![index];
                        topics.push(t);
                    }
                }
            }
            state.topics = topics;
        }
    }
    state
}

pub async fn describe_transactions(
    shard: &Rc<Shard>,
    _version: i16,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let mut response = DescribeTransactionsResponse::default();
    for id in request.transactional_ids {
        let id = id.0.to_string();
        if let Some(error) = coordinator_error(shard, &id) {
            let mut state = described(id, None);
            state.error_code = error.code();
            response.transaction_states.push(state);
            continue;
        }
        let lookup = id.clone();
        let meta: Result<_, ResponseError> = shard
            .invoke_on(0, move |s| async move {
                let coordinator = coordinator(&s);
                coordinator.check_serving(&s, &lookup)?;
                Ok(coordinator.describe(&lookup))
            })
            .await;
        match meta {
            Ok(meta) => response.transaction_states.push(described(id, meta)),
            Err(error) => {
                let mut state = described(id, None);
                state.error_code = error.code();
                response.transaction_states.push(state);
            }
        }
    }
    response
}

pub async fn list_transactions(
    shard: &Rc<Shard>,
    _version: i16,
    request: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let all = shard
        .invoke_on(0, |s| async move { coordinator(&s).list() })
        .await;
    let states: Vec<String> = request
        .state_filters
        .iter()
        .map(|s| s.to_string())
        .collect();
    let now = crate::shard::now_ms();
    let mut response = ListTransactionsResponse::default();
    response.transaction_states = all
        .into_iter()
        .filter(|(_, meta)| states.is_empty() || states.iter().any(|s| s == meta.state.name()))
        .filter(|(_, meta)| {
            request.producer_id_filters.is_empty()
                || request
                    .producer_id_filters
                    .contains(&ProducerId(meta.producer_id))
        })
        .filter(|(_, meta)| {
            // v1: only transactions running longer than the filter (-1: all).
            request.duration_filter < 0
                || (meta.start_ms >= 0 && now - meta.start_ms >= request.duration_filter)
        })
        .map(|(id, meta)| {
            let mut state = ListedState::default();
            state.transactional_id = TransactionalId(StrBytes::from_string(id));
            state.producer_id = ProducerId(meta.producer_id);
            state.transaction_state = StrBytes::from_static_str(meta.state.name());
            state
        })
        .collect();
    response
}

pub async fn describe_producers(
    shard: &Rc<Shard>,
    _version: i16,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let mut response = DescribeProducersResponse::default();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut out = TopicResponse::default();
        for index in topic.partition_indexes {
            let owner = shard.owner_of(&name, index);
            let lookup = name.clone();
            let producers = shard
                .invoke_on(owner, move |owner| async move {
                    let partition = owner
                        .partition(&lookup, index)
                        .ok_or(ResponseError::UnknownTopicOrPartition)?;
                    if !partition.is_leader() {
                        return Err(ResponseError::NotLeaderOrFollower);
                    }
                    Ok(partition.producer_summaries())
                })
                .await;
            let mut p = PartitionResponse::default();
            p.partition_index = index;
            match producers {
                Ok(producers) => {
                    p.active_producers = producers
                        .into_iter()
                        .map(|summary| {
                            let mut state = ProducerState::default();
                            state.producer_id = ProducerId(summary.producer_id);
                            state.producer_epoch = summary.epoch as i32;
                            state.last_sequence = summary.last_sequence;
                            state.last_timestamp = summary.last_timestamp;
                            state.coordinator_epoch = 0;
                            state.current_txn_start_offset = summary.current_txn_start_offset;
                            state
                        })
                        .collect();
                }
                Err(e) => p.error_code = e.code(),
            }
            out.partitions.push(p);
        }
        out.name = topic.name;
        response.topics.push(out);
    }
    response
}

/// WriteTxnMarkers: appends the given commit or abort markers to partitions this broker
/// leads (what a coordinator on another broker sends, and what `kafka-transactions.sh abort`
/// uses to end a hanging transaction).
pub async fn write_txn_markers(
    shard: &Rc<Shard>,
    _version: i16,
    request: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let snapshot = shard.metadata();
    let mut response = WriteTxnMarkersResponse::default();
    for marker in request.markers {
        let mut result = WritableTxnMarkerResult::default();
        result.producer_id = marker.producer_id;
        for topic in marker.topics {
            let name = topic.name.0.to_string();
            let known = snapshot.topic(&name).map(|t| t.partitions.len() as i32);
            let writes = topic.partition_indexes.iter().map(|&index| {
                let name = name.clone();
                async move {
                    if !known.is_some_and(|n| index >= 0 && index < n) {
                        return Err(ResponseError::UnknownTopicOrPartition);
                    }
                    write_marker(
                        shard,
                        name,
                        index,
                        marker.producer_id.0,
                        marker.producer_epoch,
                        marker.transaction_result,
                        marker.coordinator_epoch,
                    )
                    .await
                }
            });
            let outcomes = futures::future::join_all(writes).await;
            let mut t = WritableTxnMarkerTopicResult::default();
            t.partitions = topic
                .partition_indexes
                .iter()
                .zip(outcomes)
                .map(|(&index, outcome)| {
                    let mut p = WritableTxnMarkerPartitionResult::default();
                    p.partition_index = index;
                    p.error_code = code(outcome);
                    p
                })
                .collect();
            t.name = topic.name;
            result.topics.push(t);
        }
        response.markers.push(result);
    }
    response
}
