//! `/api/v1`: the JSON the console's page polls, and its actions. Documented in
//! docs/http-api.md. Reads go to shard 0 through [`ShardLink`]; counters are read directly
//! from `crate::metrics` on this (the HTTP) thread.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::providers::{self, PartitionFacts};
use super::records;
use super::ShardLink;
use crate::coordination::metadata::validate_topic_name;
use crate::handlers::admin as kafka_admin;
use crate::metrics::{BrokerStats, LatencyHistogram, DETAIL, LATENCY_BUCKET_BOUNDS_US};

/// Most records one messages request returns.
const MAX_MESSAGES: usize = 100;
/// Bytes of a partition read to find its newest records.
const MESSAGES_READ_BYTES: usize = 1 << 20;
/// Rates are recomputed when the previous sample is at least this old.
const RATE_SAMPLE_MIN: Duration = Duration::from_millis(900);
/// Kafka versions of the admin requests the console builds (current field layouts).
const CREATE_TOPICS_VERSION: i16 = 7;
const DELETE_TOPICS_VERSION: i16 = 6;
const CREATE_PARTITIONS_VERSION: i16 = 3;

/// State shared by the API handlers.
pub struct Api {
    pub link: ShardLink,
    pub stats: Arc<BrokerStats>,
    pub started: Instant,
    pub shards: usize,
    pub node_id: i32,
    /// Per topic: when its end offsets were last summed, the sum, and the rate derived.
    rates: Mutex<HashMap<String, RateSample>>,
}

#[derive(Clone, Copy)]
struct RateSample {
    at: Instant,
    end_offsets: i64,
    per_second: f64,
}

impl Api {
    pub fn new(
        link: ShardLink,
        stats: Arc<BrokerStats>,
        started: Instant,
        shards: usize,
        node_id: i32,
    ) -> Api {
        Api {
            link,
            stats,
            started,
            shards,
            node_id,
            rates: Mutex::new(HashMap::new()),
        }
    }

    /// Messages in per second for `topic`, from the change of its summed end offsets since the
    /// previous sample (0 on the first).
    fn messages_in_rate(&self, topic: &str, end_offsets: i64, now: Instant) -> f64 {
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        match rates.get_mut(topic) {
            Some(sample) if now.duration_since(sample.at) < RATE_SAMPLE_MIN => sample.per_second,
            Some(sample) => {
                let seconds = now.duration_since(sample.at).as_secs_f64();
                let delta = (end_offsets - sample.end_offsets).max(0) as f64;
                *sample = RateSample {
                    at: now,
                    end_offsets,
                    per_second: delta / seconds,
                };
                sample.per_second
            }
            None => {
                rates.insert(
                    topic.to_string(),
                    RateSample {
                        at: now,
                        end_offsets,
                        per_second: 0.0,
                    },
                );
                0.0
            }
        }
    }
}

pub type ApiState = State<Arc<Api>>;

/// An API failure: an HTTP status and a message, as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiFailure(pub StatusCode, pub String);

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn unavailable(_: super::ShardGone) -> ApiFailure {
    ApiFailure(
        StatusCode::SERVICE_UNAVAILABLE,
        "the broker is shutting down".into(),
    )
}

/// Kafka error code to an HTTP status.
fn kafka_failure(code: i16, message: Option<String>) -> ApiFailure {
    let status = match code {
        3 => StatusCode::NOT_FOUND,  // UNKNOWN_TOPIC_OR_PARTITION
        36 => StatusCode::CONFLICT,  // TOPIC_ALREADY_EXISTS
        73 => StatusCode::FORBIDDEN, // TOPIC_DELETION_DISABLED
        _ => StatusCode::BAD_REQUEST,
    };
    let name = kafka_protocol::error::ResponseError::try_from_code(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| format!("error {code}"));
    ApiFailure(
        status,
        message.map_or(name.clone(), |m| format!("{name}: {m}")),
    )
}

fn str(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub async fn overview(State(api): ApiState) -> Result<Json<providers::OverviewView>, ApiFailure> {
    let uptime_ms = api.started.elapsed().as_millis() as u64;
    let view = api
        .link
        .run(move |shard| async move { providers::overview(&shard, uptime_ms) })
        .await
        .map_err(unavailable)?;
    Ok(Json(view))
}

#[derive(Serialize)]
pub struct TopicSummary {
    name: String,
    id: String,
    partitions: usize,
    replication_factor: usize,
    under_replicated_partitions: usize,
    size_bytes: u64,
    messages: i64,
    messages_in_per_sec: f64,
    configs: std::collections::BTreeMap<String, String>,
}

pub async fn topics(State(api): ApiState) -> Result<Json<serde_json::Value>, ApiFailure> {
    let (metadata, facts) = api
        .link
        .run(|shard| async move {
            let facts = providers::partition_facts(&shard, None).await;
            (shard.metadata(), facts)
        })
        .await
        .map_err(unavailable)?;
    let mut by_topic: HashMap<&str, Vec<&PartitionFacts>> = HashMap::new();
    for f in &facts {
        by_topic.entry(f.topic.as_str()).or_default().push(f);
    }
    let now = Instant::now();
    let topics: Vec<TopicSummary> = metadata
        .topics
        .values()
        .map(|t| {
            let facts = by_topic
                .get(t.name.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let end_offsets: i64 = facts.iter().map(|f| f.log_end_offset).sum();
            TopicSummary {
                name: t.name.clone(),
                id: t.id.to_string(),
                partitions: t.partitions.len(),
                replication_factor: t.partitions.first().map_or(0, |p| p.replicas.len()),
                under_replicated_partitions: t
                    .partitions
                    .iter()
                    .filter(|p| p.isr.len() < p.replicas.len())
                    .count(),
                size_bytes: facts.iter().map(|f| f.size_bytes).sum(),
                messages: facts
                    .iter()
                    .map(|f| f.high_watermark - f.log_start_offset)
                    .sum(),
                messages_in_per_sec: api.messages_in_rate(&t.name, end_offsets, now),
                configs: t.configs.clone(),
            }
        })
        .collect();
    // Forget deleted topics, so the samples stay bounded by the topics that exist.
    api.rates
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|name, _| metadata.topics.contains_key(name));
    Ok(Json(json!({ "topics": topics })))
}

#[derive(Serialize)]
struct PartitionDetail {
    partition: i32,
    leader: i32,
    leader_epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    under_replicated: bool,
    /// Null when no shard of this node hosts it (led elsewhere).
    shard: Option<usize>,
    log_start_offset: Option<i64>,
    log_end_offset: Option<i64>,
    high_watermark: Option<i64>,
    size_bytes: Option<u64>,
    segments: Option<usize>,
}

pub async fn topic(
    State(api): ApiState,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    let topic_name = name.clone();
    let (metadata, facts) = api
        .link
        .run(move |shard| async move {
            let facts = providers::partition_facts(&shard, Some(topic_name)).await;
            (shard.metadata(), facts)
        })
        .await
        .map_err(unavailable)?;
    let Some(t) = metadata.topic(&name) else {
        return Err(ApiFailure(
            StatusCode::NOT_FOUND,
            format!("no topic named {name:?}"),
        ));
    };
    let partitions: Vec<PartitionDetail> = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = facts.iter().find(|f| f.partition == i as i32);
            PartitionDetail {
                partition: i as i32,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
                under_replicated: p.isr.len() < p.replicas.len(),
                shard: f.map(|f| f.shard),
                log_start_offset: f.map(|f| f.log_start_offset),
                log_end_offset: f.map(|f| f.log_end_offset),
                high_watermark: f.map(|f| f.high_watermark),
                size_bytes: f.map(|f| f.size_bytes),
                segments: f.map(|f| f.segments),
            }
        })
        .collect();
    Ok(Json(json!({
        "name": t.name,
        "id": t.id.to_string(),
        "configs": t.configs,
        "partitions": partitions,
    })))
}

#[derive(Deserialize)]
pub struct MessagesQuery {
    limit: Option<usize>,
}

pub async fn messages(
    State(api): ApiState,
    Path((name, partition)): Path<(String, i32)>,
    Query(query): Query<MessagesQuery>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    let limit = query.limit.unwrap_or(20).clamp(1, MAX_MESSAGES);
    let topic = name.clone();
    let newest = api
        .link
        .run(move |shard| async move {
            let known = shard
                .metadata()
                .topic(&topic)
                .is_some_and(|t| partition >= 0 && (partition as usize) < t.partitions.len());
            if !known {
                return Err(format!("no partition {topic}-{partition}"));
            }
            providers::newest_records(&shard, topic, partition, limit as i64, MESSAGES_READ_BYTES)
                .await
        })
        .await
        .map_err(unavailable)?
        .map_err(|e| ApiFailure(StatusCode::NOT_FOUND, e))?;
    let from_offset = newest.from_offset;
    let decoded = match newest.records {
        None => (Vec::new(), None),
        Some(records) => tokio::task::spawn_blocking(move || {
            records::read_bytes(&records).map(|bytes| records::decode(bytes, from_offset, limit))
        })
        .await
        .map_err(|e| ApiFailure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiFailure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
    };
    Ok(Json(json!({
        "topic": name,
        "partition": partition,
        "log_start_offset": newest.log_start_offset,
        "high_watermark": newest.high_watermark,
        "display_chars": records::DISPLAY_CHARS,
        "messages": decoded.0,
        "problem": decoded.1,
    })))
}

pub async fn groups(State(api): ApiState) -> Result<Json<serde_json::Value>, ApiFailure> {
    let groups = api
        .link
        .run(|shard| async move {
            match providers::providers().groups {
                Some(provider) => Some(provider.list(&shard).await),
                None => None,
            }
        })
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({
        "available": groups.is_some(),
        "groups": groups.unwrap_or_default(),
    })))
}

fn histogram_json(h: &LatencyHistogram) -> serde_json::Value {
    let buckets: Vec<u64> = h
        .buckets
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    json!({
        "count": buckets.iter().sum::<u64>(),
        "sum_us": h.sum_us.load(Ordering::Relaxed),
        "buckets": buckets,
    })
}

/// Cumulative counters for the live charts; the page derives rates and interval quantiles
/// from two polls, so this endpoint keeps no per-viewer state.
pub async fn stats(State(api): ApiState) -> Json<serde_json::Value> {
    let shards = &DETAIL.shards[..api.shards.min(DETAIL.shards.len())];
    let sum =
        |f: &dyn Fn(&crate::metrics::ShardCells) -> u64| -> u64 { shards.iter().map(f).sum() };
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    Json(json!({
        "time_ms": crate::shard::now_ms(),
        "uptime_ms": api.started.elapsed().as_millis() as u64,
        "bytes_in": sum(&|s| get(&s.bytes_in)),
        "messages_in": sum(&|s| get(&s.messages_in)),
        "bytes_out": sum(&|s| get(&s.bytes_out)),
        "connections": api.stats.connections.load(Ordering::Relaxed),
        "requests": get(&api.stats.requests),
        "fetch_bytes": {
            "zero_copy": get(&api.stats.zero_copy_bytes),
            "copied": get(&api.stats.copied_fetch_bytes),
            "memory": get(&api.stats.memory_fetch_bytes),
        },
        "latency_bucket_bounds_us": LATENCY_BUCKET_BOUNDS_US,
        "produce_latency": histogram_json(&DETAIL.produce_latency),
        "fetch_latency": histogram_json(&DETAIL.fetch_latency),
        "request_socket_wait": histogram_json(&DETAIL.request_socket_wait),
        "fdatasync_latency": histogram_json(&DETAIL.fdatasync_latency),
        "segment_write_latency": histogram_json(&DETAIL.segment_write_latency),
        "segment_write_wait": histogram_json(&DETAIL.segment_write_wait),
    }))
}

#[derive(Deserialize)]
pub struct CreateTopic {
    name: String,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
}

pub async fn create_topic(
    State(api): ApiState,
    Json(body): Json<CreateTopic>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiFailure> {
    validate_topic_name(&body.name).map_err(|e| ApiFailure(StatusCode::BAD_REQUEST, e))?;
    let partitions = body.partitions.unwrap_or(-1);
    let replication_factor = body.replication_factor.unwrap_or(-1);
    if partitions == 0 || partitions < -1 || replication_factor == 0 || replication_factor < -1 {
        return Err(ApiFailure(
            StatusCode::BAD_REQUEST,
            "partitions and replication_factor must be at least 1".into(),
        ));
    }
    let name = body.name.clone();
    let result = api
        .link
        .run(move |shard| async move {
            let mut topic = CreatableTopic::default();
            topic.name = TopicName(str(&name));
            topic.num_partitions = partitions;
            topic.replication_factor = replication_factor;
            let mut request = CreateTopicsRequest::default();
            request.topics = vec![topic];
            request.timeout_ms = 30_000;
            let response = kafka_admin::create_topics(&shard, CREATE_TOPICS_VERSION, request).await;
            response
                .topics
                .first()
                .map(|t| {
                    (
                        t.error_code,
                        t.error_message.as_ref().map(|m| m.to_string()),
                        t.num_partitions,
                    )
                })
                .unwrap_or((-1, Some("no result".into()), -1))
        })
        .await
        .map_err(unavailable)?;
    match result {
        (0, _, partitions) => Ok((
            StatusCode::CREATED,
            Json(json!({ "name": body.name, "partitions": partitions })),
        )),
        (code, message, _) => Err(kafka_failure(code, message)),
    }
}

#[derive(Deserialize)]
pub struct AddPartitions {
    /// The new total number of partitions (Kafka's CreatePartitions semantics).
    count: i32,
}

pub async fn add_partitions(
    State(api): ApiState,
    Path(name): Path<String>,
    Json(body): Json<AddPartitions>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    let topic_name = name.clone();
    let count = body.count;
    let result = api
        .link
        .run(move |shard| async move {
            let mut topic = CreatePartitionsTopic::default();
            topic.name = TopicName(str(&topic_name));
            topic.count = count;
            let mut request = CreatePartitionsRequest::default();
            request.topics = vec![topic];
            request.timeout_ms = 30_000;
            let response =
                kafka_admin::create_partitions(&shard, CREATE_PARTITIONS_VERSION, request).await;
            response
                .results
                .first()
                .map(|r| {
                    (
                        r.error_code,
                        r.error_message.as_ref().map(|m| m.to_string()),
                    )
                })
                .unwrap_or((-1, Some("no result".into())))
        })
        .await
        .map_err(unavailable)?;
    match result {
        (0, _) => Ok(Json(json!({ "name": name, "partitions": count }))),
        (code, message) => Err(kafka_failure(code, message)),
    }
}

pub async fn delete_topic(
    State(api): ApiState,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    let topic_name = name.clone();
    let result = api
        .link
        .run(move |shard| async move {
            let mut topic = DeleteTopicState::default();
            topic.name = Some(TopicName(str(&topic_name)));
            let mut request = DeleteTopicsRequest::default();
            request.topics = vec![topic];
            request.timeout_ms = 30_000;
            let response = kafka_admin::delete_topics(&shard, DELETE_TOPICS_VERSION, request).await;
            response
                .responses
                .first()
                .map(|r| {
                    (
                        r.error_code,
                        r.error_message.as_ref().map(|m| m.to_string()),
                    )
                })
                .unwrap_or((-1, Some("no result".into())))
        })
        .await
        .map_err(unavailable)?;
    match result {
        (0, _) => Ok(Json(json!({ "deleted": name }))),
        (code, message) => Err(kafka_failure(code, message)),
    }
}

pub async fn delete_group(
    State(api): ApiState,
    Path(group): Path<String>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    let group_id = group.clone();
    let result = api
        .link
        .run(move |shard| async move {
            match providers::providers().groups {
                Some(provider) => Some(provider.delete_empty(&shard, group_id).await),
                None => None,
            }
        })
        .await
        .map_err(unavailable)?;
    match result {
        None => Err(ApiFailure(
            StatusCode::NOT_IMPLEMENTED,
            "consumer groups are not available in this build".into(),
        )),
        Some(Ok(())) => Ok(Json(json!({ "deleted": group }))),
        Some(Err(e)) => Err(ApiFailure(StatusCode::CONFLICT, e)),
    }
}
