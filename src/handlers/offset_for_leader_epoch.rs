//! OffsetForLeaderEpoch (key 23), v2-4: where a leader epoch ends in this leader's log.
//!
//! Followers ask it before fetching at a new leader epoch, to cut any suffix their log has
//! that the leader's does not (`replication::follower`); consumers ask it after a leader change
//! to detect log truncation (KIP-320). The answer is the largest epoch at or below the one
//! asked for and the offset where it ends (the start of the next epoch, or the log end for the
//! current one); -1/-1 (UNDEFINED) when the log has no such epoch.

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use crate::shard::Shard;

/// (error, epoch, end offset) for one partition.
type Answer = (i16, i32, i64);

pub async fn handle(
    shard: &Rc<Shard>,
    _version: i16,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let snapshot = shard.metadata();
    let mut lookups = Vec::new();
    for topic in &request.topics {
        let name = topic.topic.0.to_string();
        let known = snapshot.topic(&name).is_some();
        for p in &topic.partitions {
            let (index, current, asked) = (p.partition, p.current_leader_epoch, p.leader_epoch);
            let shard = shard.clone();
            let name = name.clone();
            lookups.push(async move {
                if !known || snapshot_partition_missing(&shard, &name, index) {
                    return (ResponseError::UnknownTopicOrPartition.code(), -1, -1);
                }
                let owner = shard.owner_of(&name, index);
                shard
                    .invoke_on(owner, move |owner| async move {
                        lookup(&owner, &name, index, current, asked)
                    })
                    .await
            });
        }
    }
    let mut answers = join_all(lookups).await.into_iter();
    let mut response = OffsetForLeaderEpochResponse::default();
    response.topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let mut out = OffsetForLeaderTopicResult::default();
            out.partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let (error_code, leader_epoch, end_offset) =
                        answers.next().expect("one answer per partition");
                    let mut answer = EpochEndOffset::default();
                    answer.partition = p.partition;
                    answer.error_code = error_code;
                    answer.leader_epoch = leader_epoch;
                    answer.end_offset = end_offset;
                    answer
                })
                .collect();
            out.topic = topic.topic;
            out
        })
        .collect();
    response
}

fn snapshot_partition_missing(shard: &Shard, topic: &str, index: i32) -> bool {
    shard.metadata().partition(topic, index).is_none()
}

fn lookup(owner: &Shard, topic: &str, index: i32, current_leader_epoch: i32, asked: i32) -> Answer {
    let Some(partition) = owner.partition(topic, index) else {
        return (ResponseError::NotLeaderOrFollower.code(), -1, -1);
    };
    if let Err(code) = partition.check_leader(current_leader_epoch) {
        return (code.code(), -1, -1);
    }
    match partition.log.end_offset_for_epoch(asked) {
        Some((epoch, end_offset)) => (0, epoch, end_offset),
        None => (0, -1, -1),
    }
}
