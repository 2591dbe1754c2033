//! Produce (key 0), v3-9: validate RecordBatch v2 batches, append them on the partitions'
//! shards, answer once written (acks=1) or written and fdatasync'd (acks=all).
//!
//! Batches are appended before [`dispatch`] returns, in the order requests arrive on the
//! connection; that is what keeps an idempotent producer's pipelined requests in sequence. The
//! wait for the disk happens in the response future, so many requests share one write and one
//! fdatasync (group commit).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::Dispatched;
use crate::metrics::BrokerStats;
use crate::protocol::{self, ApiError, RequestFrame};
use crate::shard::partition::Partition;
use crate::shard::Shard;

/// Longest an acks=all produce waits for the in-sync replicas, whatever the client asks.
const MAX_PRODUCE_TIMEOUT_MS: i32 = 300_000;

/// What the client asked for in `acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    None,
    Leader,
    All,
}

/// The outcome for one partition.
#[derive(Debug, Clone)]
pub struct PartitionResult {
    pub error: Option<ApiError>,
    pub base_offset: i64,
    pub log_start_offset: i64,
}

impl PartitionResult {
    fn failed(error: ApiError) -> PartitionResult {
        PartitionResult {
            error: Some(error),
            base_offset: -1,
            log_start_offset: -1,
        }
    }
}

/// Batches for one partition, sent to its owner shard.
struct PartitionInput {
    topic: String,
    partition: i32,
    records: Bytes,
}

enum Slot {
    Done(PartitionResult),
    /// Index into the results of the job sent to a shard.
    Pending {
        shard: usize,
        index: usize,
    },
}

pub async fn dispatch(
    shard: &Rc<Shard>,
    request: &RequestFrame,
    body: ProduceRequest,
) -> Dispatched {
    let (version, correlation_id) = (request.version, request.header.correlation_id);
    let acks =
        match body.acks {
            0 => Acks::None,
            1 => Acks::Leader,
            -1 => Acks::All,
            _ => {
                let response = error_response(
                    version,
                    &body,
                    ApiError::new(
                        ResponseError::InvalidRequiredAcks,
                        "acks must be -1, 0 or 1",
                    ),
                );
                return Dispatched::Respond(Box::pin(std::future::ready(
                    protocol::encode_response(ApiKey::Produce, version, correlation_id, &response),
                )));
            }
        };
    let snapshot = shard.metadata();
    // How long acks=all may wait for the in-sync replicas (Kafka's produce timeout).
    let timeout = Duration::from_millis(body.timeout_ms.clamp(1, MAX_PRODUCE_TIMEOUT_MS) as u64);
    let mut per_shard: Vec<Vec<PartitionInput>> =
        (0..shard.nr_shards).map(|_| Vec::new()).collect();
    let mut layout: Vec<(TopicName, Vec<(i32, Slot)>)> = Vec::with_capacity(body.topic_data.len());
    for topic in body.topic_data {
        let name = topic.name.0.to_string();
        let known = snapshot.topic(&name).cloned();
        let mut slots = Vec::with_capacity(topic.partition_data.len());
        for data in topic.partition_data {
            let index = data.index;
            let slot = match (&known, data.records) {
                (Some(t), Some(records)) if index >= 0 && (index as usize) < t.partitions.len() => {
                    BrokerStats::add(&shard.stats.produced_bytes, records.len() as u64);
                    let owner = shard.owner_of(&name, index);
                    per_shard[owner].push(PartitionInput {
                        topic: name.clone(),
                        partition: index,
                        records,
                    });
                    Slot::Pending {
                        shard: owner,
                        index: per_shard[owner].len() - 1,
                    }
                }
                (Some(_), None) => Slot::Done(PartitionResult::failed(ApiError::new(
                    ResponseError::CorruptMessage,
                    "no records",
                ))),
                _ => Slot::Done(PartitionResult::failed(ApiError::new(
                    ResponseError::UnknownTopicOrPartition,
                    "This server does not host this topic-partition.",
                ))),
            };
            slots.push((index, slot));
        }
        layout.push((topic.name, slots));
    }
    // Append now, in request order: locally inline, remotely by sending the job (the owner
    // appends when it runs the job, in the order jobs were sent).
    let mut waits: Vec<(usize, ShardWait)> = Vec::new();
    for (target, inputs) in per_shard.into_iter().enumerate() {
        if inputs.is_empty() {
            continue;
        }
        let wait: ShardWait = if target == shard.id {
            let accepted = append_all(shard, &inputs, acks);
            Box::pin(wait_all(accepted, acks, timeout))
        } else {
            let rx = shard
                .submit_on(target, move |owner| async move {
                    let accepted = append_all(&owner, &inputs, acks);
                    wait_all(accepted, acks, timeout).await
                })
                .await;
            // A dropped reply means the owner shard went away: reported per partition below.
            Box::pin(async move { rx.await.unwrap_or_default() })
        };
        waits.push((target, wait));
    }
    if acks == Acks::None {
        return Dispatched::NoResponse;
    }
    let nr_shards = shard.nr_shards;
    Dispatched::Respond(Box::pin(async move {
        let mut by_shard: Vec<Vec<PartitionResult>> = vec![Vec::new(); nr_shards];
        let (targets, futures): (Vec<usize>, Vec<ShardWait>) = waits.into_iter().unzip();
        for (target, results) in targets.into_iter().zip(join_all(futures).await) {
            by_shard[target] = results;
        }
        let mut response = ProduceResponse::default();
        response.responses = layout
            .into_iter()
            .map(|(name, slots)| {
                let mut topic = TopicProduceResponse::default();
                topic.name = name;
                topic.partition_responses = slots
                    .into_iter()
                    .map(|(index, slot)| {
                        let result = match slot {
                            Slot::Done(result) => result,
                            Slot::Pending { shard, index } => {
                                by_shard[shard].get(index).cloned().unwrap_or_else(|| {
                                    PartitionResult::failed(ApiError::new(
                                        ResponseError::UnknownServerError,
                                        "the partition's shard did not answer",
                                    ))
                                })
                            }
                        };
                        partition_response(version, index, result)
                    })
                    .collect();
                topic
            })
            .collect();
        protocol::encode_response(ApiKey::Produce, version, correlation_id, &response)
    }))
}

type ShardWait = Pin<Box<dyn Future<Output = Vec<PartitionResult>>>>;

/// A partition's batches, appended and waiting for the disk.
struct Accepted {
    partition: Rc<Partition>,
    base_offset: i64,
    end_offset: i64,
}

/// Appends every input on the owner shard, synchronously, in order.
fn append_all(
    owner: &Rc<Shard>,
    inputs: &[PartitionInput],
    acks: Acks,
) -> Vec<Result<Accepted, ApiError>> {
    let snapshot = owner.metadata();
    inputs
        .iter()
        .map(|input| {
            let partition = owner
                .partition(&input.topic, input.partition)
                .ok_or_else(|| {
                    ApiError::new(
                        ResponseError::NotLeaderOrFollower,
                        "partition is not hosted here",
                    )
                })?;
            let topic = snapshot.topic(&input.topic);
            let max_batch_bytes = topic
                .map_or_else(
                    || owner.message_max_bytes(),
                    |t| owner.max_batch_bytes_for(t),
                )
                // The log's bound on batch lengths (raised with max.message.bytes when the
                // metadata changes) holds: MESSAGE_TOO_LARGE here.
                .min(partition.log.max_batch_bytes())
                // A batch fits in one segment (Kafka: RecordBatchTooLargeException).
                .min(partition.log.segment_bytes() as usize);
            if topic.is_some_and(|t| crate::shard::log_cleaner::cleanup_policy(&t.configs).0) {
                // Kafka's LogValidator: a compacted topic refuses records without a key.
                crate::storage::cleaner::records::check_keys(&input.records)
                    .map_err(|e| ApiError::new(ResponseError::InvalidRecord, e))?;
            }
            let appended = partition.append(&input.records, max_batch_bytes, acks == Acks::All)?;
            let cells = crate::metrics::shard_cells(owner.id);
            BrokerStats::add(&cells.bytes_in, input.records.len() as u64);
            BrokerStats::add(
                &cells.messages_in,
                (appended.end_offset - appended.base_offset).max(0) as u64,
            );
            Ok(Accepted {
                partition,
                base_offset: appended.base_offset,
                end_offset: appended.end_offset,
            })
        })
        .collect()
}

/// Waits until every accepted append may be acknowledged: written (acks=1), or durable here
/// and on every in-sync replica (acks=all). The partitions' writer tasks coalesce concurrent
/// waits into shared writes and syncs.
async fn wait_all(
    accepted: Vec<Result<Accepted, ApiError>>,
    acks: Acks,
    timeout: Duration,
) -> Vec<PartitionResult> {
    let waits = accepted.into_iter().map(|result| async move {
        let accepted = match result {
            Ok(accepted) => accepted,
            Err(error) => return PartitionResult::failed(error),
        };
        if acks != Acks::None {
            if let Err(error) = accepted
                .partition
                .wait_acknowledged(accepted.end_offset, acks == Acks::All, timeout)
                .await
            {
                return PartitionResult::failed(error);
            }
        }
        PartitionResult {
            error: None,
            base_offset: accepted.base_offset,
            log_start_offset: accepted.partition.log.log_start_offset(),
        }
    });
    join_all(waits).await
}

fn partition_response(
    version: i16,
    index: i32,
    result: PartitionResult,
) -> PartitionProduceResponse {
    let mut out = PartitionProduceResponse::default();
    out.index = index;
    out.base_offset = result.base_offset;
    out.log_append_time_ms = -1;
    if version >= 5 {
        out.log_start_offset = result.log_start_offset;
    }
    if let Some(error) = result.error {
        out.error_code = error.code.code();
        if version >= 8 {
            out.error_message = Some(StrBytes::from_string(error.message));
        }
    }
    out
}

fn error_response(version: i16, body: &ProduceRequest, error: ApiError) -> ProduceResponse {
    let mut response = ProduceResponse::default();
    response.responses = body
        .topic_data
        .iter()
        .map(|t| {
            let mut topic = TopicProduceResponse::default();
            topic.name = t.name.clone();
            topic.partition_responses = t
                .partition_data
                .iter()
                .map(|p| {
                    partition_response(version, p.index, PartitionResult::failed(error.clone()))
                })
                .collect();
            topic
        })
        .collect();
    response
}
