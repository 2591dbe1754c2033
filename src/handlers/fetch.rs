//! Fetch (key 1), v4-15: long polling with `max_wait_ms` and `min_bytes`, `max_bytes` and
//! per-partition limits. Record bytes are sent from the segment files with sendfile, or from
//! the owner's tail cache (the newest batches, in memory) when the fetch offset is in it.
//!
//! Consumers read below the high watermark. Followers (`replication::follower`) fetch as
//! replicas at v15, naming their broker id and broker epoch (KIP-903): they read everything
//! written, and their fetch offset is what moves the high watermark, so a fetch that claims a
//! replica id without the live broker's epoch is refused (TOPIC_AUTHORIZATION_FAILED, as Kafka
//! answers a replica fetch it does not authorize). ApiVersions advertises v12 to clients:
//! v13+ name topics by id.
//!
//! Fetch sessions (KIP-227) are not implemented: every response carries session id 0, which
//! tells clients to keep sending full fetch requests, as Kafka does when its session cache is
//! full.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{join_all, select, select_all};
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::ResponseError;

use super::Dispatched;
use crate::metrics::BrokerStats;
use crate::protocol::fetch_response::{self, FetchedPartition, FetchedTopic};
use crate::protocol::{RequestFrame, ResponseFrame};
use crate::shard::partition::storage_error;
use crate::shard::{now_ms, Shard};
use crate::storage::{ReadLimit, Records};

/// Longest a fetch may be parked, whatever the client asks: bounds the memory of waiters.
const MAX_WAIT_CAP: Duration = Duration::from_secs(60);

/// One partition to read, routed to its owner shard.
#[derive(Clone)]
struct ReadRequest {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    /// The leader epoch the fetcher knows (-1: not given).
    current_leader_epoch: i32,
    /// The follower broker fetching, for replica fetches.
    replica: Option<i32>,
}

/// A partition read, as the owner shard saw it.
struct ReadResult {
    error_code: i16,
    high_watermark: i64,
    log_start_offset: i64,
    records: Option<Records>,
}

impl ReadResult {
    fn error(code: ResponseError) -> ReadResult {
        ReadResult {
            error_code: code.code(),
            high_watermark: -1,
            log_start_offset: -1,
            records: None,
        }
    }

    fn len(&self) -> usize {
        self.records.as_ref().map_or(0, Records::len)
    }
}

pub fn dispatch(shard: &Rc<Shard>, request: &RequestFrame, body: FetchRequest) -> Dispatched {
    let (version, correlation_id) = (request.version, request.header.correlation_id);
    let shard = shard.clone();
    Dispatched::Respond(Box::pin(async move {
        handle(shard, version, correlation_id, body).await
    }))
}

/// A requested topic (name, id) and its partitions' slots, in request order.
type TopicLayout = (String, uuid::Uuid, Vec<(i32, Slot)>);

/// Where each requested partition sits in the response, and which shard reads it.
enum Slot {
    Failed(ResponseError),
    Read { shard: usize, index: usize },
}

async fn handle(
    shard: Rc<Shard>,
    version: i16,
    correlation_id: i32,
    body: FetchRequest,
) -> ResponseFrame {
    if version >= 7 && (body.session_id != 0 || body.session_epoch > 0) {
        return fetch_response::encode(
            version,
            correlation_id,
            ResponseError::FetchSessionIdNotFound.code(),
            0,
            Vec::new(),
        );
    }
    let snapshot = shard.metadata();
    let (replica, refused) = replica_of(&shard, version, &body);
    let by_id = version >= 13;
    let mut per_shard: Vec<Vec<ReadRequest>> = (0..shard.nr_shards).map(|_| Vec::new()).collect();
    let mut layout: Vec<TopicLayout> = Vec::with_capacity(body.topics.len());
    for topic in body.topics {
        let known = if by_id {
            snapshot.topic_by_id(topic.topic_id)
        } else {
            snapshot.topic(topic.topic.0.as_str())
        };
        let name = known.map_or_else(|| topic.topic.0.to_string(), |t| t.name.clone());
        let unknown = if by_id {
            ResponseError::UnknownTopicId
        } else {
            ResponseError::UnknownTopicOrPartition
        };
        let slots = topic
            .partitions
            .into_iter()
            .map(|p| {
                let index = p.partition;
                let slot = match known {
                    _ if refused => Slot::Failed(ResponseError::TopicAuthorizationFailed),
                    Some(t) if index >= 0 && (index as usize) < t.partitions.len() => {
                        let owner = shard.owner_of(&name, index);
                        per_shard[owner].push(ReadRequest {
                            topic: name.clone(),
                            partition: index,
                            offset: p.fetch_offset,
                            max_bytes: p.partition_max_bytes.max(0) as usize,
                            current_leader_epoch: if version >= 9 {
                                p.current_leader_epoch
                            } else {
                                -1
                            },
                            replica,
                        });
                        Slot::Read {
                            shard: owner,
                            index: per_shard[owner].len() - 1,
                        }
                    }
                    _ => Slot::Failed(unknown),
                };
                (index, slot)
            })
            .collect();
        layout.push((name, topic.topic_id, slots));
    }
    let min_bytes = body.min_bytes.max(0) as usize;
    let max_wait = Duration::from_millis(body.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = Instant::now() + max_wait;
    let mut results = read_all(&shard, &per_shard, true).await;
    loop {
        let total: usize = results.iter().flatten().map(ReadResult::len).sum();
        let any_error = results.iter().flatten().any(|r| r.error_code != 0);
        let now = Instant::now();
        if total >= min_bytes.max(1)
            || any_error
            || now >= deadline
            || per_shard.iter().all(Vec::is_empty)
        {
            break;
        }
        wait_for_data(&shard, &per_shard, deadline).await;
        results = read_all(&shard, &per_shard, false).await;
    }

    // Apply the response-wide max_bytes: the first non-empty partition is always whole
    // (KIP-74), later ones are cut to what is left (clients drop a partial trailing batch).
    let mut budget = body.max_bytes.max(0) as usize;
    let mut first = true;
    let mut memory_bytes = 0u64;
    let mut slot_results: Vec<Vec<Option<ReadResult>>> = results
        .into_iter()
        .map(|r| r.into_iter().map(Some).collect())
        .collect();
    let topics = layout
        .into_iter()
        .map(|(name, id, slots)| FetchedTopic {
            name,
            id,
            partitions: slots
                .into_iter()
                .map(|(index, slot)| {
                    let mut result = match slot {
                        Slot::Failed(code) => ReadResult::error(code),
                        Slot::Read { shard, index } => {
                            slot_results[shard][index].take().unwrap_or_else(|| {
                                ReadResult::error(ResponseError::UnknownServerError)
                            })
                        }
                    };
                    if let Some(records) = result.records.as_mut() {
                        if first {
                            first = false;
                            budget = budget.saturating_sub(records.len());
                        } else {
                            cut(records, budget);
                            budget -= records.len();
                        }
                        if let Records::Memory { len, .. } = records {
                            memory_bytes += *len as u64;
                        }
                    }
                    if result.records.as_ref().is_some_and(Records::is_empty) {
                        result.records = None;
                    }
                    FetchedPartition {
                        partition: index,
                        error_code: result.error_code,
                        high_watermark: result.high_watermark,
                        last_stable_offset: result.high_watermark,
                        log_start_offset: result.log_start_offset,
                        records: result.records,
                    }
                })
                .collect(),
        })
        .collect();
    BrokerStats::add(&shard.stats.memory_fetch_bytes, memory_bytes);
    fetch_response::encode(version, correlation_id, 0, 0, topics)
}

/// Cuts a partition's records to the `budget` left of the response. A cut inside the first
/// batch sends nothing: a partition whose records hold no whole batch makes clients fail
/// ("no complete records were found"; kafka-python and the Java client raise), so Kafka sends
/// such a partition empty too.
fn cut(records: &mut Records, budget: usize) {
    if records.len() <= budget {
        return;
    }
    let whole_first_batch = first_batch_len(records).is_some_and(|len| len <= budget);
    records.truncate(if whole_first_batch { budget } else { 0 });
}

/// The length of the first batch of `records`, from its header (`batch_length` at bytes 8..12,
/// counting what follows it). A file range is read with one pread of those 12 bytes, which the
/// owner's batch lookup has just brought into the page cache.
fn first_batch_len(records: &Records) -> Option<usize> {
    let mut header = [0u8; 12];
    match records {
        Records::Memory { chunks, .. } => {
            let mut filled = 0;
            for chunk in chunks {
                let n = chunk.len().min(header.len() - filled);
                header[filled..filled + n].copy_from_slice(&chunk[..n]);
                filled += n;
                if filled == header.len() {
                    break;
                }
            }
            if filled < header.len() {
                return None;
            }
        }
        Records::File(slice) => {
            use std::os::unix::fs::FileExt;
            if slice.len < header.len() {
                return None;
            }
            slice.file.read_exact_at(&mut header, slice.position).ok()?;
        }
    }
    let batch_length = i32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    usize::try_from(batch_length).ok().map(|n| n + 12)
}

/// The follower broker a fetch comes from, if it claims to be one, and whether the claim is
/// refused: only a live broker naming its own current epoch (Fetch v15+) fetches as a replica.
fn replica_of(shard: &Shard, version: i16, body: &FetchRequest) -> (Option<i32>, bool) {
    let (replica_id, replica_epoch) = if version >= 15 {
        (
            body.replica_state.replica_id.0,
            Some(body.replica_state.replica_epoch),
        )
    } else {
        (body.replica_id.0, None)
    };
    // Negative ids are consumers (-1) and Kafka's debugging consumers (-2, -3).
    if replica_id < 0 {
        return (None, false);
    }
    let live_epoch = shard.metadata().broker_epochs.get(&replica_id).copied();
    if replica_id != shard.broker.node_id && live_epoch.is_some() && live_epoch == replica_epoch {
        return (Some(replica_id), false);
    }
    tracing::warn!(
        replica_id,
        version,
        "refusing a replica fetch that does not carry a live broker's epoch"
    );
    (None, true)
}

/// Reads every partition on its owner shard, all shards in parallel. `first` marks the read
/// that answers a follower's fetch offset (the long-poll's later reads do not count again).
async fn read_all(
    shard: &Rc<Shard>,
    per_shard: &[Vec<ReadRequest>],
    first: bool,
) -> Vec<Vec<ReadResult>> {
    let reads = per_shard.iter().enumerate().map(|(target, requests)| {
        let requests = requests.clone();
        let shard = shard.clone();
        async move {
            if requests.is_empty() {
                return Vec::new();
            }
            shard
                .invoke_on(target, move |owner| async move {
                    read_local(&owner, &requests, first)
                })
                .await
        }
    });
    join_all(reads).await
}

fn read_local(owner: &Rc<Shard>, requests: &[ReadRequest], first: bool) -> Vec<ReadResult> {
    let metadata = owner.metadata();
    let lag_time_max_ms = owner.config.replication.lag_time_max_ms as i64;
    requests
        .iter()
        .map(|r| {
            let Some(partition) = owner.partition(&r.topic, r.partition) else {
                return ReadResult::error(ResponseError::NotLeaderOrFollower);
            };
            if let Err(code) = partition.check_leader(r.current_leader_epoch) {
                return ReadResult::error(code);
            }
            let log = &partition.log;
            let limit = match r.replica {
                Some(node) => {
                    if first {
                        let (change, known) = partition.record_follower_fetch(
                            node,
                            r.offset,
                            now_ms(),
                            lag_time_max_ms,
                            |n| metadata.broker(n).is_some(),
                        );
                        if !known {
                            return ReadResult::error(ResponseError::NotLeaderOrFollower);
                        }
                        if let Some(change) = change {
                            crate::replication::isr::propose(owner, &partition, change);
                        }
                    }
                    ReadLimit::Written
                }
                None => ReadLimit::HighWatermark,
            };
            let records = match log.read(r.offset, r.max_bytes, true, limit) {
                Ok(records) => records,
                Err(e) => {
                    let code = storage_error(e).code;
                    return ReadResult {
                        error_code: code.code(),
                        high_watermark: log.high_watermark(),
                        log_start_offset: log.log_start_offset(),
                        records: None,
                    };
                }
            };
            ReadResult {
                error_code: 0,
                high_watermark: log.high_watermark(),
                log_start_offset: log.log_start_offset(),
                records,
            }
        })
        .collect()
}

/// Resolves when any requested partition has data past its fetch offset, or at the deadline.
async fn wait_for_data(shard: &Rc<Shard>, per_shard: &[Vec<ReadRequest>], deadline: Instant) {
    let mut waits: Vec<Pin<Box<dyn Future<Output = ()>>>> = Vec::new();
    for (target, requests) in per_shard.iter().enumerate() {
        if requests.is_empty() {
            continue;
        }
        let requests = requests.clone();
        let shard = shard.clone();
        waits.push(Box::pin(async move {
            shard
                .invoke_on(target, move |owner| async move {
                    // Bounded by the deadline on the owner too, so a remote waiter never
                    // outlives the fetch that asked for it by more than the wait itself.
                    wait_local(&owner, &requests, deadline).await
                })
                .await
        }));
    }
    if waits.is_empty() {
        return;
    }
    select_all(waits).await;
}

async fn wait_local(owner: &Shard, requests: &[ReadRequest], deadline: Instant) {
    let waits: Vec<Pin<Box<dyn Future<Output = ()>>>> = requests
        .iter()
        .filter_map(|r| {
            let partition = owner.partition(&r.topic, r.partition)?;
            let offset = r.offset;
            let limit = if r.replica.is_some() {
                ReadLimit::Written
            } else {
                ReadLimit::HighWatermark
            };
            let wait = async move { partition.log.wait_for_data(offset, limit).await };
            Some(Box::pin(wait) as Pin<Box<dyn Future<Output = ()>>>)
        })
        .collect();
    if waits.is_empty() {
        return;
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    // Whichever comes first: data on any partition, or the deadline.
    select(
        select_all(waits),
        Box::pin(glommio::timer::sleep(remaining)),
    )
    .await;
}
