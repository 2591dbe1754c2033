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
//! Fetch sessions (KIP-227, v7+) are kept in the shard caches of [`super::fetch_session`]: a
//! request naming a session is served on the shard that holds it (one mesh hop when the client
//! reconnected to another shard), a full request with epoch 0 gets a session on the shard of
//! its connection when there is room, and an incremental request reads every partition of its
//! session (long-polling on all of them) and answers only those with something new.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{join_all, select, select_all};
use std::sync::atomic::Ordering::Relaxed;

use kafka_protocol::messages::fetch_request::FetchPartition;
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::ResponseError;

use super::fetch_session::{
    owner_of_session, FetchContext, PartitionKey, PartitionOutcome, PartitionParams, FINAL_EPOCH,
    INITIAL_EPOCH, INVALID_SESSION_ID,
};
use super::Dispatched;
use crate::metrics::{self, BrokerStats};
use crate::protocol::fetch_response::{self, FetchedPartition, FetchedTopic};
use crate::protocol::{RequestFrame, ResponseFrame};
use crate::shard::partition::storage_error;
use crate::shard::producer_state::AbortedTxn;
use crate::shard::{now_ms, Shard};
use crate::storage::direct_read::Prefetched;
use crate::storage::warm::ColdRange;
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
    /// The follower's log start offset (-1: not given).
    log_start_offset: i64,
    /// isolation_level 1: only what the last stable offset makes visible.
    read_committed: bool,
}

/// A partition read, as the owner shard saw it.
struct ReadResult {
    error_code: i16,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
    records: Option<Records>,
    /// read_committed: aborted transactions the records overlap (empty otherwise; no
    /// allocation then).
    aborted: Vec<AbortedTxn>,
}

impl ReadResult {
    fn error(code: ResponseError) -> ReadResult {
        ReadResult {
            error_code: code.code(),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            records: None,
            aborted: Vec::new(),
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

/// A topic to read, as the request or the session names it, with its partitions in order.
struct Wanted {
    /// The name in the request (v4-12) or the session; empty at v13+, where `id` names it.
    name: String,
    id: uuid::Uuid,
    partitions: Vec<(i32, PartitionParams)>,
}

/// A topic of the plan: its resolved name and id, and its partitions' slots, in order.
type TopicLayout = (String, uuid::Uuid, Vec<(i32, Slot)>);

/// Where each requested partition sits in the response, and which shard reads it.
enum Slot {
    Failed(ResponseError),
    Read { shard: usize, index: usize },
}

/// The response-wide limits and the long-poll of one fetch.
struct Limits {
    min_bytes: usize,
    max_bytes: usize,
    deadline: Instant,
    read_committed: bool,
}

async fn handle(
    shard: Rc<Shard>,
    version: i16,
    correlation_id: i32,
    mut body: FetchRequest,
) -> ResponseFrame {
    if version >= 7 && body.session_id != INVALID_SESSION_ID {
        let full = body.session_epoch == INITIAL_EPOCH || body.session_epoch == FINAL_EPOCH;
        match owner_of_session(body.session_id, shard.nr_shards) {
            // The session lives on another shard (its client reconnected and the new
            // connection landed elsewhere): serve the whole request there.
            Some(owner) if owner != shard.id && !full => {
                return shard
                    .invoke_on(owner, move |owner| async move {
                        serve(owner, version, correlation_id, body).await
                    })
                    .await;
            }
            // A full request closes the session it names; a new one is made on this shard.
            Some(owner) if owner != shard.id => {
                let closed = body.session_id;
                shard
                    .invoke_on(owner, move |owner| async move {
                        owner.fetch_sessions.borrow_mut().remove(closed);
                        publish_session_metrics(&owner);
                    })
                    .await;
                body.session_id = INVALID_SESSION_ID;
            }
            _ => {}
        }
    }
    serve(shard, version, correlation_id, body).await
}

/// Serves a fetch on the shard that holds its session (if it names one).
async fn serve(
    shard: Rc<Shard>,
    version: i16,
    correlation_id: i32,
    body: FetchRequest,
) -> ResponseFrame {
    let by_id = version >= 13;
    let context = if version >= 7 {
        let (changes, forgotten) = session_changes(version, &body);
        let context = shard.fetch_sessions.borrow_mut().begin(
            Instant::now(),
            body.session_id,
            body.session_epoch,
            by_id,
            &changes,
            &forgotten,
        );
        publish_session_metrics(&shard);
        context
    } else {
        FetchContext::Sessionless
    };
    let max_wait = Duration::from_millis(body.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let (replica, refused) = replica_of(&shard, version, &body);
    let asked_bytes = body.max_bytes.max(0) as usize;
    // A consumer's response is capped by the broker's `fetch.max.bytes`, as Kafka's is; a
    // follower's only by what it asks (its `replica.fetch.response.max.bytes`).
    let max_bytes = if replica.is_none() {
        asked_bytes.min(shard.config.fetch_max_bytes)
    } else {
        asked_bytes
    };
    let limits = Limits {
        // Kafka: min_bytes never above the cap, or the wait could never be satisfied early.
        min_bytes: (body.min_bytes.max(0) as usize).min(max_bytes),
        max_bytes,
        deadline: Instant::now() + max_wait,
        read_committed: body.isolation_level == 1,
    };
    match context {
        FetchContext::Error(code) => {
            tracing::debug!(
                session_id = body.session_id,
                epoch = body.session_epoch,
                ?code,
                "fetch session error"
            );
            fetch_response::encode(
                version,
                correlation_id,
                code.code(),
                INVALID_SESSION_ID,
                Vec::new(),
            )
        }
        FetchContext::Sessionless => {
            let wanted = wanted_from_request(version, body);
            let topics = read_topics(&shard, version, replica, refused, &wanted, &limits).await;
            fetch_response::encode(version, correlation_id, 0, INVALID_SESSION_ID, topics)
        }
        FetchContext::Full => {
            let wanted = wanted_from_request(version, body);
            let topics = read_topics(&shard, version, replica, refused, &wanted, &limits).await;
            let cached: Vec<_> = wanted
                .iter()
                .zip(&topics)
                .flat_map(|(w, t)| {
                    let name: Rc<str> = Rc::from(w.name.as_str());
                    w.partitions
                        .iter()
                        .zip(&t.partitions)
                        .map(move |(&(index, params), p)| {
                            ((name.clone(), index), params, outcome(p))
                        })
                })
                .collect();
            let session_id = shard
                .fetch_sessions
                .borrow_mut()
                .create(Instant::now(), &cached);
            publish_session_metrics(&shard);
            if session_id != INVALID_SESSION_ID {
                tracing::debug!(
                    session_id,
                    partitions = cached.len(),
                    "fetch session created"
                );
            }
            fetch_response::encode(version, correlation_id, 0, session_id, topics)
        }
        FetchContext::Incremental {
            session_id,
            epoch,
            partitions,
        } => {
            let wanted = wanted_from_session(&partitions);
            let topics = read_topics(&shard, version, replica, refused, &wanted, &limits).await;
            let outcomes: Vec<_> = partitions
                .into_iter()
                .zip(topics.iter().flat_map(|t| &t.partitions))
                .map(|((key, _), p)| (key, outcome(p)))
                .collect();
            let verdict = shard
                .fetch_sessions
                .borrow_mut()
                .finish(session_id, epoch, &outcomes);
            match verdict {
                Ok(include) => {
                    let mut include = include.into_iter();
                    let topics = topics
                        .into_iter()
                        .filter_map(|mut t| {
                            t.partitions.retain(|_| include.next().unwrap_or(true));
                            (!t.partitions.is_empty()).then_some(t)
                        })
                        .collect();
                    fetch_response::encode(version, correlation_id, 0, session_id, topics)
                }
                Err((code, session_id)) => {
                    tracing::info!(
                        session_id,
                        epoch,
                        ?code,
                        "fetch session changed while reading"
                    );
                    fetch_response::encode(
                        version,
                        correlation_id,
                        code.code(),
                        session_id,
                        Vec::new(),
                    )
                }
            }
        }
    }
}

fn partition_params(version: i16, p: &FetchPartition) -> PartitionParams {
    PartitionParams {
        fetch_offset: p.fetch_offset,
        max_bytes: p.partition_max_bytes,
        current_leader_epoch: if version >= 9 {
            p.current_leader_epoch
        } else {
            -1
        },
        log_start_offset: if version >= 5 { p.log_start_offset } else { -1 },
    }
}

/// What an incremental request changes in its session: the partitions it names (added, or with
/// new parameters) and those it forgets. Empty for full requests, which name every partition
/// anyway, and at v13+ (no sessions by topic id).
fn session_changes(
    version: i16,
    body: &FetchRequest,
) -> (Vec<(PartitionKey, PartitionParams)>, Vec<PartitionKey>) {
    let full = body.session_epoch == INITIAL_EPOCH || body.session_epoch == FINAL_EPOCH;
    if full || version >= 13 {
        return (Vec::new(), Vec::new());
    }
    let changes = body
        .topics
        .iter()
        .flat_map(|t| {
            let name: Rc<str> = Rc::from(t.topic.0.as_str());
            t.partitions
                .iter()
                .map(move |p| ((name.clone(), p.partition), partition_params(version, p)))
        })
        .collect();
    let forgotten = body
        .forgotten_topics_data
        .iter()
        .flat_map(|t| {
            let name: Rc<str> = Rc::from(t.topic.0.as_str());
            t.partitions.iter().map(move |&p| (name.clone(), p))
        })
        .collect();
    (changes, forgotten)
}

fn wanted_from_request(version: i16, body: FetchRequest) -> Vec<Wanted> {
    body.topics
        .into_iter()
        .map(|t| Wanted {
            name: t.topic.0.to_string(),
            id: t.topic_id,
            partitions: t
                .partitions
                .iter()
                .map(|p| (p.partition, partition_params(version, p)))
                .collect(),
        })
        .collect()
}

/// A session's partitions, consecutive ones of a topic under one entry (a topic may appear
/// more than once; the protocol allows it and clients handle it, as Kafka's responses do).
fn wanted_from_session(partitions: &[(PartitionKey, PartitionParams)]) -> Vec<Wanted> {
    let mut wanted: Vec<Wanted> = Vec::new();
    for ((topic, index), params) in partitions {
        match wanted.last_mut() {
            Some(last) if last.name == **topic => last.partitions.push((*index, *params)),
            _ => wanted.push(Wanted {
                name: topic.to_string(),
                id: uuid::Uuid::nil(),
                partitions: vec![(*index, *params)],
            }),
        }
    }
    wanted
}

/// What the session cache needs to know about a partition of the response.
fn outcome(p: &FetchedPartition) -> PartitionOutcome {
    PartitionOutcome {
        error_code: p.error_code,
        high_watermark: p.high_watermark,
        last_stable_offset: p.last_stable_offset,
        log_start_offset: p.log_start_offset,
        has_records: p.records.as_ref().is_some_and(|r| !r.is_empty()),
    }
}

/// Copies this shard's session cache figures into its metrics cells (this shard is their only
/// writer, so plain stores).
fn publish_session_metrics(shard: &Shard) {
    let cache = shard.fetch_sessions.borrow();
    let cells = metrics::shard_cells(shard.id);
    cells.fetch_sessions.store(cache.len() as u64, Relaxed);
    cells
        .fetch_session_partitions
        .store(cache.cached_partitions() as u64, Relaxed);
    cells
        .fetch_session_evictions
        .store(cache.evictions(), Relaxed);
    cells
        .incremental_fetches
        .store(cache.incremental_fetches(), Relaxed);
}

/// Reads `wanted` on the owner shards, long-polling until `min_bytes` are there (or an error,
/// or the deadline), and returns one response topic per wanted topic, one partition per wanted
/// partition, in order, with the response-wide `max_bytes` applied.
async fn read_topics(
    shard: &Rc<Shard>,
    version: i16,
    replica: Option<i32>,
    refused: bool,
    wanted: &[Wanted],
    limits: &Limits,
) -> Vec<FetchedTopic> {
    let snapshot = shard.metadata();
    let by_id = version >= 13;
    let mut per_shard: Vec<Vec<ReadRequest>> = (0..shard.nr_shards).map(|_| Vec::new()).collect();
    let mut layout: Vec<TopicLayout> = Vec::with_capacity(wanted.len());
    for topic in wanted {
        let known = if by_id {
            snapshot.topic_by_id(topic.id)
        } else {
            snapshot.topic(topic.name.as_str())
        };
        let name = known.map_or_else(|| topic.name.clone(), |t| t.name.clone());
        let unknown = if by_id {
            ResponseError::UnknownTopicId
        } else {
            ResponseError::UnknownTopicOrPartition
        };
        let slots = topic
            .partitions
            .iter()
            .map(|&(index, params)| {
                let slot = match known {
                    _ if refused => Slot::Failed(ResponseError::TopicAuthorizationFailed),
                    Some(t) if index >= 0 && (index as usize) < t.partitions.len() => {
                        let owner = shard.owner_of(&name, index);
                        per_shard[owner].push(ReadRequest {
                            topic: name.clone(),
                            partition: index,
                            offset: params.fetch_offset,
                            max_bytes: params.max_bytes.max(0) as usize,
                            current_leader_epoch: params.current_leader_epoch,
                            replica,
                            log_start_offset: params.log_start_offset,
                            read_committed: limits.read_committed && replica.is_none(),
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
        layout.push((name, topic.id, slots));
    }
    let mut results = read_all(shard, &per_shard, true).await;
    loop {
        let total: usize = results.iter().flatten().map(ReadResult::len).sum();
        let any_error = results.iter().flatten().any(|r| r.error_code != 0);
        let now = Instant::now();
        if total >= limits.min_bytes.max(1)
            || any_error
            || now >= limits.deadline
            || per_shard.iter().all(Vec::is_empty)
        {
            break;
        }
        results = wait_then_read(shard, &per_shard, limits.deadline).await;
    }

    // Apply the response-wide max_bytes: the first non-empty partition's first batch always
    // goes whole (KIP-74), then everything is cut to what is left (clients drop a partial
    // trailing batch), as Kafka's broker does.
    let mut budget = limits.max_bytes;
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
                        cut(records, budget, first);
                        first = false;
                        budget = budget.saturating_sub(records.len());
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
                        last_stable_offset: result.last_stable_offset,
                        log_start_offset: result.log_start_offset,
                        records: result.records,
                        aborted: result.aborted,
                    }
                })
                .collect(),
        })
        .collect();
    BrokerStats::add(&shard.stats.memory_fetch_bytes, memory_bytes);
    topics
}

/// Cuts a partition's records to the `budget` left of the response. A cut inside the first
/// batch sends nothing: a partition whose records hold no whole batch makes clients fail
/// ("no complete records were found"; kafka-python and the Java client raise), so Kafka sends
/// such a partition empty too. Except for the response's first partition
/// (`first_goes_whole`), whose first batch goes whole however small the budget (KIP-74), so
/// that a consumer always makes progress.
fn cut(records: &mut Records, budget: usize, first_goes_whole: bool) {
    if records.len() <= budget {
        return;
    }
    let keep = match first_batch_len(records) {
        Some(first_batch) if first_goes_whole => budget.max(first_batch),
        Some(first_batch) if first_batch <= budget => budget,
        // A first batch whose length cannot be read is left as it is.
        None if first_goes_whole => return,
        _ => 0,
    };
    records.truncate(keep);
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
    read_shards(shard, per_shard, first, None).await
}

/// [`read_all`], except the shard `skip` (its entry stays empty).
async fn read_shards(
    shard: &Rc<Shard>,
    per_shard: &[Vec<ReadRequest>],
    first: bool,
    skip: Option<usize>,
) -> Vec<Vec<ReadResult>> {
    let reads = per_shard.iter().enumerate().map(|(target, requests)| {
        let requests = requests.clone();
        let shard = shard.clone();
        async move {
            if requests.is_empty() || skip == Some(target) {
                return Vec::new();
            }
            shard
                .invoke_on(target, move |owner| async move {
                    read_local(&owner, &requests, first).await
                })
                .await
        }
    });
    join_all(reads).await
}

/// Reads this shard's partitions of a fetch. Segment bytes the reads will need that neither
/// the tail cache nor the page cache holds are first read on a blocking-pool thread, so the
/// header scans and the response do not wait for the device on the shard, holding up every
/// other partition it owns: with O_DIRECT into memory (`storage::direct_read`), which the
/// response is then written from, or, past the shard's budget for such memory, into the page
/// cache for sendfile (`storage::warm`).
async fn read_local(owner: &Rc<Shard>, requests: &[ReadRequest], first: bool) -> Vec<ReadResult> {
    let cold: Vec<(usize, ColdRange)> = requests
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let partition = owner.partition(&r.topic, r.partition)?;
            Some((i, partition.log.cold_range(r.offset, r.max_bytes)?))
        })
        .collect();
    // Per request, its cold bytes read into memory; left empty (no allocation) when a fetch
    // has no cold range, as a tailing consumer's has not.
    let mut prefetched: Vec<Option<Prefetched>> = Vec::new();
    if !cold.is_empty() {
        prefetched.resize(requests.len(), None);
        let bytes: usize = cold.iter().map(|(_, range)| range.bytes()).sum();
        BrokerStats::add(&owner.stats.warmed_fetch_bytes, bytes as u64);
        let budget = owner.direct_reads.clone();
        let read = glommio::executor()
            .spawn_blocking(move || {
                cold.iter()
                    .map(|(i, range)| (*i, range.read_direct(&budget)))
                    .collect::<Vec<_>>()
            })
            .await;
        for (i, read) in read {
            if let Some(read) = &read {
                BrokerStats::add(&owner.stats.direct_read_bytes, read.bytes.len() as u64);
            }
            prefetched[i] = read;
        }
    }
    read_now(owner, requests, first, &prefetched)
}

/// `prefetched`: per request, its cold segment bytes read into memory, if they were (empty
/// when none were).
fn read_now(
    owner: &Rc<Shard>,
    requests: &[ReadRequest],
    first: bool,
    prefetched: &[Option<Prefetched>],
) -> Vec<ReadResult> {
    debug_assert!(prefetched.is_empty() || prefetched.len() == requests.len());
    let metadata = owner.metadata();
    let lag_time_max_ms = owner.config.replication.lag_time_max_ms as i64;
    requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let prefetched = prefetched.get(i).and_then(Option::as_ref);
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
                            r.log_start_offset,
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
                None if r.read_committed => ReadLimit::Below(partition.last_stable_offset()),
                None => ReadLimit::HighWatermark,
            };
            let last_stable_offset = partition.last_stable_offset();
            let records = match log.read_with(r.offset, r.max_bytes, true, limit, prefetched) {
                Ok(records) => records,
                Err(e) => {
                    let code = storage_error(e).code;
                    return ReadResult {
                        error_code: code.code(),
                        high_watermark: log.high_watermark(),
                        last_stable_offset,
                        log_start_offset: log.log_start_offset(),
                        records: None,
                        aborted: Vec::new(),
                    };
                }
            };
            let aborted = if r.read_committed && records.is_some() {
                partition.aborted_transactions(r.offset, last_stable_offset)
            } else {
                Vec::new()
            };
            ReadResult {
                error_code: 0,
                high_watermark: log.high_watermark(),
                last_stable_offset,
                log_start_offset: log.log_start_offset(),
                records,
                aborted,
            }
        })
        .collect()
}

/// Waits until any requested partition has data past its fetch offset (or the deadline), then
/// reads every shard's partitions again. The shard whose partition ended the wait reads its
/// partitions right there and answers with the reads, so a long poll that another shard's
/// partition wakes costs one hop to that shard, not two (the wait's, then a read's); each
/// message between shards can wake a sleeping shard, the main cost of a small fetch. The
/// other shards are read as [`read_all`] does.
async fn wait_then_read(
    shard: &Rc<Shard>,
    per_shard: &[Vec<ReadRequest>],
    deadline: Instant,
) -> Vec<Vec<ReadResult>> {
    type WaitThenRead = Pin<Box<dyn Future<Output = (usize, Vec<ReadResult>)>>>;
    let mut waits: Vec<WaitThenRead> = Vec::new();
    for (target, requests) in per_shard.iter().enumerate() {
        if requests.is_empty() {
            continue;
        }
        let requests = requests.clone();
        let shard = shard.clone();
        waits.push(Box::pin(async move {
            let reads = shard
                .invoke_on(target, move |owner| async move {
                    // Bounded by the deadline on the owner too, so a remote waiter never
                    // outlives the fetch that asked for it by more than the wait itself.
                    // One that lost the race reads once more when it ends and its answer
                    // goes nowhere.
                    wait_local(&owner, &requests, deadline).await;
                    read_local(&owner, &requests, false).await
                })
                .await;
            (target, reads)
        }));
    }
    if waits.is_empty() {
        return read_all(shard, per_shard, false).await;
    }
    let ((woken, reads), _, _) = select_all(waits).await;
    let mut results = read_shards(shard, per_shard, false, Some(woken)).await;
    results[woken] = reads;
    results
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
            if r.read_committed {
                let stable = partition.stable_change();
                if partition.log.high_watermark() > offset {
                    // Data is there but nothing was readable: an open transaction holds the
                    // last stable offset at the fetch offset, and only its end moves it.
                    let wait = async move {
                        let _ = stable.await;
                    };
                    return Some(Box::pin(wait) as Pin<Box<dyn Future<Output = ()>>>);
                }
                // Wake on new data or on a transaction event, whichever comes first.
                let data = partition.log.wait_for_data(offset, limit);
                let wait = async move {
                    select(Box::pin(data), stable).await;
                };
                return Some(Box::pin(wait) as Pin<Box<dyn Future<Output = ()>>>);
            }
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
