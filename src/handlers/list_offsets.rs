//! ListOffsets (key 2), v1-7: earliest (-2), latest (-1), max timestamp (-3), or the first
//! offset at or after a timestamp.

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use crate::shard::partition::storage_error;
use crate::shard::Shard;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

/// One partition's answer: (error, timestamp, offset, leader epoch).
type Answer = (Option<ResponseError>, i64, i64, i32);

pub async fn handle(
    shard: &Rc<Shard>,
    version: i16,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let snapshot = shard.metadata();
    // read_committed: the latest offset is the last stable offset.
    let read_committed = request.isolation_level == 1;
    let mut lookups = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let partitions = snapshot
            .topic(&name)
            .map_or(0, |t| t.partitions.len() as i32);
        for p in &topic.partitions {
            let (index, timestamp) = (p.partition_index, p.timestamp);
            let current_leader_epoch = if version >= 4 {
                p.current_leader_epoch
            } else {
                -1
            };
            let name = name.clone();
            let shard = shard.clone();
            lookups.push(async move {
                if index < 0 || index >= partitions {
                    return (Some(ResponseError::UnknownTopicOrPartition), -1, -1, -1);
                }
                let owner = shard.owner_of(&name, index);
                shard
                    .invoke_on(owner, move |owner| async move {
                        lookup(
                            &owner,
                            &name,
                            index,
                            timestamp,
                            current_leader_epoch,
                            read_committed,
                        )
                    })
                    .await
            });
        }
    }
    let mut answers = join_all(lookups).await.into_iter();
    let mut response = ListOffsetsResponse::default();
    response.topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let mut out = ListOffsetsTopicResponse::default();
            out.partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let (error, timestamp, offset, epoch) =
                        answers.next().expect("one answer per partition");
                    let mut partition = ListOffsetsPartitionResponse::default();
                    partition.partition_index = p.partition_index;
                    partition.error_code = error.map_or(0, |e| e.code());
                    partition.timestamp = timestamp;
                    partition.offset = offset;
                    if version >= 4 {
                        partition.leader_epoch = epoch;
                    }
                    partition
                })
                .collect();
            out.name = topic.name;
            out
        })
        .collect();
    response
}

fn lookup(
    owner: &Shard,
    topic: &str,
    index: i32,
    timestamp: i64,
    current_leader_epoch: i32,
    read_committed: bool,
) -> Answer {
    let ok = None;
    let Some(partition) = owner.partition(topic, index) else {
        return (Some(ResponseError::NotLeaderOrFollower), -1, -1, -1);
    };
    if let Err(code) = partition.check_leader(current_leader_epoch) {
        return (Some(code), -1, -1, -1);
    }
    let log = &partition.log;
    let epoch = partition.leader_epoch.get();
    match timestamp {
        LATEST if read_committed => (ok, -1, partition.last_stable_offset(), epoch),
        LATEST => (ok, -1, log.high_watermark(), epoch),
        EARLIEST => (ok, -1, log.log_start_offset(), epoch),
        // KIP-734: clients send it from v7, answered the same at every version.
        MAX_TIMESTAMP => match log.offset_for_max_timestamp() {
            Ok(Some((offset, found_ts))) => (ok, found_ts, offset, epoch),
            Ok(None) => (ok, -1, -1, epoch),
            Err(e) => (Some(storage_error(e).code), -1, -1, epoch),
        },
        ts if ts < 0 => (Some(ResponseError::InvalidRequest), -1, -1, epoch),
        ts => match log.offset_for_timestamp(ts) {
            Ok(Some((offset, found_ts))) => (ok, found_ts, offset, epoch),
            // No record at or after ts: Kafka answers offset -1 with no error.
            Ok(None) => (ok, -1, -1, epoch),
            Err(e) => (Some(storage_error(e).code), -1, -1, epoch),
        },
    }
}
