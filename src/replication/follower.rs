//! Follower fetchers: on each shard, one task per leader broker copies the partitions this
//! shard owns and that broker leads, over the Kafka Fetch protocol (as a replica, with this
//! broker's id and epoch), into the local logs at the leader's offsets.
//!
//! A round is: cut any divergent suffix first (OffsetForLeaderEpoch, for partitions that just
//! started following), then one fetch for every followed partition, append what came back,
//! fdatasync it, and only then fetch again: the next fetch offset tells the leader that
//! everything below it is on this broker's disk, which is what the leader's high watermark
//! (and so every acks=all answer) is made of.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use futures::future::join_all;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ReplicaState};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::peer::{self, PeerConnection, PeerError};
use crate::shard::partition::Partition;
use crate::shard::Shard;

/// Fetch v15: the first version carrying the replica's broker epoch (KIP-903), which the
/// leader checks before it treats a fetch as a replica's.
pub const REPLICA_FETCH_VERSION: i16 = 15;
const OFFSET_FOR_LEADER_EPOCH_VERSION: i16 = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long past the fetch's own wait a response may take before the connection is dropped.
const RESPONSE_GRACE: Duration = Duration::from_secs(10);

/// Starts the fetcher for `leader` on this shard unless it runs already. It stops by itself
/// once this shard follows nothing from `leader`.
pub fn ensure_fetcher(shard: &Rc<Shard>, leader: i32) {
    if leader < 0 || leader == shard.broker.node_id {
        return;
    }
    if !shard.fetchers.borrow_mut().insert(leader) {
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move { run(shard, leader).await }).detach();
}

/// What the loop does after a round.
enum Next {
    Continue,
    /// Something the leader or the metadata must resolve first (leadership moving, the leader
    /// not yet knowing the new epoch): wait a little.
    Backoff,
}

async fn run(shard: Rc<Shard>, leader: i32) {
    let backoff = Duration::from_millis(shard.config.replication.fetch_backoff_ms.max(1));
    let max_response_bytes = shard.config.replication.fetch_response_max_bytes
        + shard.config.message_max_bytes
        + (1 << 20);
    let mut connection: Option<PeerConnection> = None;
    let mut last_error = String::new();
    tracing::debug!(shard = shard.id, leader, "fetcher started");
    loop {
        let partitions = followed_from(&shard, leader);
        if partitions.is_empty() || shard.is_shutting_down() {
            // No await between the check and the removal: `ensure_fetcher` either sees this
            // task registered (and it still serves the partition) or starts a new one.
            shard.fetchers.borrow_mut().remove(&leader);
            tracing::debug!(shard = shard.id, leader, "fetcher stopped");
            return;
        }
        let metadata = shard.metadata();
        let (Some(broker), Some(&own_epoch)) = (
            metadata.broker(leader),
            metadata.broker_epochs.get(&shard.broker.node_id),
        ) else {
            // The leader is not live, or this broker is not registered yet.
            glommio::timer::sleep(backoff).await;
            continue;
        };
        if connection.is_none() {
            let address = format!("{}:{}", broker.host, broker.port);
            let client_id = format!("replica-{}-shard-{}", shard.broker.node_id, shard.id);
            match PeerConnection::connect(&address, client_id, max_response_bytes, CONNECT_TIMEOUT)
                .await
            {
                Ok(c) => connection = Some(c),
                Err(e) => {
                    let error = e.to_string();
                    if error != last_error {
                        tracing::warn!(leader, %address, %error, "cannot reach the leader to fetch");
                        last_error = error;
                    }
                    glommio::timer::sleep(backoff).await;
                    continue;
                }
            }
        }
        let conn = connection.as_mut().expect("connected above");
        let diverging: Vec<Rc<Partition>> = partitions
            .iter()
            .filter(|p| p.needs_truncation())
            .cloned()
            .collect();
        let round = if diverging.is_empty() {
            fetch_round(&shard, conn, leader, own_epoch, &partitions).await
        } else {
            truncation_round(&shard, conn, leader, &diverging).await
        };
        match round {
            Ok(Next::Continue) => last_error.clear(),
            Ok(Next::Backoff) => glommio::timer::sleep(backoff).await,
            Err(e) => {
                let error = e.to_string();
                if error != last_error {
                    tracing::warn!(leader, address = conn.address(), %error, "replica fetch failed; reconnecting");
                    last_error = error;
                }
                connection = None;
                glommio::timer::sleep(backoff).await;
            }
        }
    }
}

/// The partitions this shard follows from `leader`.
fn followed_from(shard: &Shard, leader: i32) -> Vec<Rc<Partition>> {
    shard
        .owned_partitions()
        .into_iter()
        .filter(|p| p.following() == Some(leader))
        .collect()
}

/// The partition as it was when a request about it was built: a response applies only if the
/// partition is still followed from the same leader at the same epoch (and, for fetches, at
/// the same log end offset).
struct Sent {
    partition: Rc<Partition>,
    leader_epoch: i32,
    offset: i64,
}

impl Sent {
    fn still_current(&self, leader: i32) -> bool {
        self.partition.following() == Some(leader)
            && self.partition.leader_epoch.get() == self.leader_epoch
    }
}

/// Asks the leader where each partition's log stops agreeing with ours and cuts the rest
/// (Kafka's truncation by leader epoch, KIP-101/KIP-279).
async fn truncation_round(
    shard: &Shard,
    conn: &mut PeerConnection,
    leader: i32,
    partitions: &[Rc<Partition>],
) -> Result<Next, PeerError> {
    let mut request = OffsetForLeaderEpochRequest::default();
    request.replica_id = BrokerId(shard.broker.node_id);
    let mut sent: BTreeMap<(String, i32), (Sent, i32)> = BTreeMap::new();
    for p in partitions {
        let Some(latest_epoch) = p.log.latest_epoch() else {
            // Nothing this broker wrote under any epoch: nothing can diverge.
            p.set_needs_truncation(false);
            continue;
        };
        let mut entry = OffsetForLeaderPartition::default();
        entry.partition = p.index;
        entry.current_leader_epoch = p.leader_epoch.get();
        entry.leader_epoch = latest_epoch;
        match request
            .topics
            .iter_mut()
            .find(|t| t.topic.0.as_str() == p.topic)
        {
            Some(topic) => topic.partitions.push(entry),
            None => {
                let mut topic = OffsetForLeaderTopic::default();
                topic.topic = TopicName(StrBytes::from_string(p.topic.clone()));
                topic.partitions.push(entry);
                request.topics.push(topic);
            }
        }
        sent.insert(
            (p.topic.clone(), p.index),
            (
                Sent {
                    partition: p.clone(),
                    leader_epoch: p.leader_epoch.get(),
                    offset: p.log.log_end_offset(),
                },
                latest_epoch,
            ),
        );
    }
    if sent.is_empty() {
        return Ok(Next::Continue);
    }
    let body = conn
        .call(
            ApiKey::OffsetForLeaderEpoch,
            OFFSET_FOR_LEADER_EPOCH_VERSION,
            &request,
            CONNECT_TIMEOUT + RESPONSE_GRACE,
        )
        .await?;
    let response: OffsetForLeaderEpochResponse =
        peer::decode(body, OFFSET_FOR_LEADER_EPOCH_VERSION)?;
    let mut next = Next::Continue;
    for topic in response.topics {
        for answer in topic.partitions {
            let Some((sent, asked_epoch)) =
                sent.get(&(topic.topic.0.to_string(), answer.partition))
            else {
                continue;
            };
            if !sent.still_current(leader) || !sent.partition.needs_truncation() {
                continue;
            }
            if answer.error_code != 0 {
                tracing::debug!(topic = %sent.partition.topic, partition = answer.partition, error = answer.error_code, "leader refused OffsetForLeaderEpoch");
                next = Next::Backoff;
                continue;
            }
            let log = &sent.partition.log;
            let (target, again) = if answer.leader_epoch < 0 || answer.end_offset < 0 {
                // The leader has no epoch at or below ours: keep only what was committed.
                (log.high_watermark(), false)
            } else {
                match log.end_offset_for_epoch(answer.leader_epoch) {
                    // Both logs have the epoch: they agree up to the smaller end of it.
                    Some((epoch, end)) if epoch == answer.leader_epoch => {
                        (answer.end_offset.min(end), false)
                    }
                    // We end that epoch elsewhere or lack it: cut to what we have at or below
                    // it and ask again with the epoch now last in our log (Kafka's loop).
                    Some((_, end)) => (answer.end_offset.min(end), true),
                    None => (answer.end_offset, false),
                }
            };
            let target = target.min(sent.offset);
            tracing::debug!(topic = %sent.partition.topic, partition = answer.partition, asked_epoch, leader_epoch = answer.leader_epoch, leader_end_offset = answer.end_offset, target, "divergence point");
            if let Err(e) = sent.partition.truncate_to(target).await {
                tracing::error!(topic = %sent.partition.topic, partition = answer.partition, error = %e, "truncation failed");
                next = Next::Backoff;
                continue;
            }
            sent.partition.set_needs_truncation(again);
        }
    }
    Ok(next)
}

/// One fetch for every followed partition; appends and syncs what comes back.
async fn fetch_round(
    shard: &Shard,
    conn: &mut PeerConnection,
    leader: i32,
    own_epoch: i64,
    partitions: &[Rc<Partition>],
) -> Result<Next, PeerError> {
    let config = &shard.config.replication;
    // The fetch offset promises the leader that everything below it is on this disk.
    for result in sync_to_end(partitions.iter()).await {
        if let Err(e) = result {
            tracing::error!(error = %e, "follower log cannot sync; not fetching");
            return Ok(Next::Backoff);
        }
    }
    let metadata = shard.metadata();
    let mut request = FetchRequest::default();
    request.replica_id = BrokerId(-1);
    request.replica_state = ReplicaState::default()
        .with_replica_id(BrokerId(shard.broker.node_id))
        .with_replica_epoch(own_epoch);
    request.max_wait_ms = config.fetch_wait_max_ms.min(i32::MAX as u64) as i32;
    request.min_bytes = 1;
    request.max_bytes = config.fetch_response_max_bytes.min(i32::MAX as usize) as i32;
    request.isolation_level = 0;
    request.session_id = 0;
    request.session_epoch = -1;
    let mut sent: BTreeMap<(uuid::Uuid, i32), Sent> = BTreeMap::new();
    let mut topics: BTreeMap<uuid::Uuid, FetchTopic> = BTreeMap::new();
    for p in partitions {
        let topic_id = p.topic_id;
        if metadata.topic(&p.topic).is_none_or(|t| t.id != topic_id) {
            continue; // deleted (or re-created) meanwhile
        }
        let offset = p.log.log_end_offset();
        let mut entry = FetchPartition::default();
        entry.partition = p.index;
        entry.current_leader_epoch = p.leader_epoch.get();
        entry.fetch_offset = offset;
        entry.last_fetched_epoch = -1;
        entry.log_start_offset = p.log.log_start_offset();
        entry.partition_max_bytes = config.fetch_max_bytes.min(i32::MAX as usize) as i32;
        topics
            .entry(topic_id)
            .or_insert_with(|| FetchTopic::default().with_topic_id(topic_id))
            .partitions
            .push(entry);
        sent.insert(
            (topic_id, p.index),
            Sent {
                partition: p.clone(),
                leader_epoch: p.leader_epoch.get(),
                offset,
            },
        );
    }
    if sent.is_empty() {
        return Ok(Next::Backoff);
    }
    request.topics = topics.into_values().collect();
    let wait = Duration::from_millis(config.fetch_wait_max_ms);
    let body = conn
        .call(
            ApiKey::Fetch,
            REPLICA_FETCH_VERSION,
            &request,
            wait + RESPONSE_GRACE,
        )
        .await?;
    let response: FetchResponse = peer::decode(body, REPLICA_FETCH_VERSION)?;
    if response.error_code != 0 {
        tracing::warn!(
            leader,
            error = response.error_code,
            "the leader refused a replica fetch"
        );
        return Ok(Next::Backoff);
    }
    let mut next = Next::Continue;
    // (partition, the leader's high watermark, the leader's log start)
    let mut appended: Vec<(Rc<Partition>, i64, i64)> = Vec::new();
    for topic in response.responses {
        for data in topic.partitions {
            let Some(sent) = sent.get(&(topic.topic_id, data.partition_index)) else {
                continue;
            };
            let partition = &sent.partition;
            let name = &partition.topic;
            if !sent.still_current(leader) || partition.log.log_end_offset() != sent.offset {
                continue;
            }
            match ResponseError::try_from_code(data.error_code) {
                None => {}
                Some(ResponseError::OffsetOutOfRange) => {
                    if sent.offset < data.log_start_offset {
                        if let Err(e) = partition.restart_at(data.log_start_offset).await {
                            tracing::error!(topic = %name, partition = data.partition_index, error = %e, "cannot restart the follower log");
                        }
                    } else {
                        // Ahead of the leader: a suffix the leader does not have.
                        partition.set_needs_truncation(true);
                    }
                    continue;
                }
                Some(error) => {
                    tracing::debug!(topic = %name, partition = data.partition_index, ?error, "replica fetch refused for a partition");
                    next = Next::Backoff;
                    continue;
                }
            }
            if let Some(records) = data.records.filter(|r| !r.is_empty()) {
                // The topic's limit, so a batch the response cuts short reads as cut short
                // (not as too large); never below the response, which holds whole batches.
                let max_batch_bytes = metadata
                    .topic(name)
                    .map_or(shard.config.message_max_bytes, |t| {
                        shard.max_batch_bytes_for(t)
                    })
                    .max(records.len());
                let compacted = name == crate::groups::OFFSETS_TOPIC
                    || metadata
                        .topic(name)
                        .is_some_and(|t| crate::shard::log_cleaner::cleanup_policy(&t.configs).0);
                match partition.append_replicated(&records, max_batch_bytes, compacted) {
                    Ok(0) => {}
                    Ok(_) => {
                        let cells = crate::metrics::shard_cells(shard.id);
                        crate::metrics::BrokerStats::add(
                            &cells.replication_bytes_in,
                            records.len() as u64,
                        );
                    }
                    Err(e) => {
                        tracing::error!(topic = %name, partition = data.partition_index, error = %e.message, "cannot append fetched batches");
                        next = Next::Backoff;
                    }
                }
            }
            appended.push((
                partition.clone(),
                data.high_watermark,
                data.log_start_offset,
            ));
        }
    }
    // Durable before the high watermark moves and before the next fetch says so.
    let synced = sync_to_end(appended.iter().map(|(p, _, _)| p)).await;
    for ((partition, leader_high_watermark, leader_log_start), result) in
        appended.iter().zip(synced)
    {
        match result {
            Ok(()) => {
                let log = &partition.log;
                log.set_high_watermark_bound(Some(*leader_high_watermark));
                // DeleteRecords on the leader (or its retention) moved its log start: follow
                // it, as Kafka's fetcher does, as far as this log's high watermark.
                let start = (*leader_log_start).min(log.high_watermark());
                if start > log.log_start_offset() {
                    if let Err(e) = log.advance_log_start(start).await {
                        tracing::warn!(topic = %partition.topic, error = %e, "cannot move the follower's log start");
                    }
                }
            }
            Err(e) => {
                tracing::error!(topic = %partition.topic, error = %e, "follower log cannot sync");
                next = Next::Backoff;
            }
        }
    }
    Ok(next)
}

/// Waits until each partition's log is fdatasync'ed up to its current end (one group commit
/// per log, all in parallel).
async fn sync_to_end<'a>(
    partitions: impl Iterator<Item = &'a Rc<Partition>>,
) -> Vec<Result<(), crate::storage::StorageError>> {
    join_all(partitions.map(|p| p.log.wait_written(p.log.log_end_offset(), true))).await
}
