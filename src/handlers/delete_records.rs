//! DeleteRecords (key 21), v0-2: moves partitions' log start offsets forward ("delete every
//! record before offset"), on each partition's owner shard.
//!
//! The leader moves its own log start (durably: `log-start-offset-checkpoint`), then, as
//! Kafka's `DelayedDeleteRecords`, answers once every in-sync follower reported a log start at
//! least as far in its replica fetches (followers take the leader's from the fetch responses),
//! or with REQUEST_TIMED_OUT after the request's timeout. The low watermark answered is the
//! smallest log start among the leader and its in-sync followers.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;

use crate::shard::partition::storage_error;
use crate::shard::Shard;

use super::groups::is_internal_topic;

/// "Up to the high watermark", as the request's offset.
const HIGH_WATERMARK: i64 = -1;

pub async fn handle(
    shard: &Rc<Shard>,
    _version: i16,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let snapshot = shard.metadata();
    let timeout = Duration::from_millis(request.timeout_ms.max(0) as u64);
    let mut work = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let partitions = snapshot.topic(&name).map(|t| t.partitions.len() as i32);
        for p in &topic.partitions {
            let (index, offset) = (p.partition_index, p.offset);
            let name = name.clone();
            let shard = shard.clone();
            work.push(async move {
                if is_internal_topic(&name) {
                    // Kafka never deletes records of its internal topics on request.
                    return Err(ResponseError::InvalidTopicException);
                }
                match partitions {
                    Some(count) if (0..count).contains(&index) => {}
                    _ => return Err(ResponseError::UnknownTopicOrPartition),
                }
                let owner = shard.owner_of(&name, index);
                shard
                    .invoke_on(owner, move |owner| async move {
                        delete_before(&owner, &name, index, offset, timeout).await
                    })
                    .await
            });
        }
    }
    let mut answers = join_all(work).await.into_iter();
    let mut response = DeleteRecordsResponse::default();
    response.topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let mut out = DeleteRecordsTopicResult::default();
            out.partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let answer = answers.next().expect("one answer per partition");
                    let mut result = DeleteRecordsPartitionResult::default();
                    result.partition_index = p.partition_index;
                    match answer {
                        Ok(low_watermark) => result.low_watermark = low_watermark,
                        Err(code) => {
                            result.low_watermark = -1;
                            result.error_code = code.code();
                        }
                    }
                    result
                })
                .collect();
            out.name = topic.name;
            out
        })
        .collect();
    response
}

/// On the owner shard: the partition's log start after the deletion.
async fn delete_before(
    owner: &Shard,
    topic: &str,
    index: i32,
    offset: i64,
    timeout: Duration,
) -> Result<i64, ResponseError> {
    let Some(partition) = owner.partition(topic, index) else {
        return Err(ResponseError::NotLeaderOrFollower);
    };
    partition.check_leader(-1)?;
    let log = &partition.log;
    let high_watermark = log.high_watermark();
    let target = match offset {
        HIGH_WATERMARK => high_watermark,
        // Kafka: a negative offset other than -1, or one past what consumers can see.
        o if o < 0 || o > high_watermark => return Err(ResponseError::OffsetOutOfRange),
        o => o,
    };
    log.advance_log_start(target)
        .await
        .map_err(|e| storage_error(e).code)?;
    // The followers learn it from their next fetch response and report theirs in the fetch
    // after; poll for that (rare requests, a few fetch round trips).
    let started = Instant::now();
    loop {
        match partition.low_watermark() {
            None => return Err(ResponseError::NotLeaderOrFollower),
            Some(low_watermark) if low_watermark >= target => return Ok(low_watermark),
            Some(_) if started.elapsed() >= timeout => return Err(ResponseError::RequestTimedOut),
            Some(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}
