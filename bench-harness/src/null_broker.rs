//! A broker that stores nothing, to measure the harness's own ceiling on this machine.
//!
//! It answers ApiVersions, Metadata, CreateTopics and ListOffsets; acknowledges every Produce
//! (counting records from batch headers, so base offsets advance) without keeping the data; and
//! answers every Fetch with copies of one fixed in-memory batch, base offsets rewritten to follow
//! the requested offset, so a consumer can read forever. The Fetch response is hand-encoded and
//! written straight from that one buffer: the null broker should cost as little as possible, so
//! that what limits a run against it is the harness (and the kernel's loopback copy).
//!
//! It can also play a broker in trouble, to test that the harness rides out what a real cluster
//! does: leaders still being elected after a topic is created (`--not-leader-after-create-ms`,
//! `--leader-not-available-after-create-ms`), leadership changing at any time
//! (`--not-leader-every`) or moving to another broker (`--leader-moves-to`), connections closing under load (`--close-every`), and Kafka's limit on
//! a record batch (`--message-max-bytes`).
//!
//! Fetch sessions (KIP-227) are kept in their simplest correct form: a Fetch with epoch 0 opens
//! a session holding each partition's fetch offset as the request gave it; an incremental Fetch
//! (the session's id and next epoch) updates the partitions it names, drops the forgotten ones,
//! and is answered for every partition in the session, at the offsets the session holds (a
//! partition not named keeps its last fetch offset), leaving out those with nothing new.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    api_versions_response::ApiVersion,
    create_topics_response::CreatableTopicResult,
    describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult},
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
    produce_response::{PartitionProduceResponse, TopicProduceResponse},
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, FetchRequest, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable, Encodable, StrBytes};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::cli::NullBrokerArgs;
use crate::client::read_frame;
use crate::payload::Payloads;
use crate::retry::{
    FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH, LEADER_NOT_AVAILABLE,
    MESSAGE_TOO_LARGE, NOT_LEADER_OR_FOLLOWER, TOPIC_ALREADY_EXISTS,
};
use crate::wire::{self, put_uvarint, Codec, RecordSpec};

/// Versions served: the ranges the harness and common clients use, topic names throughout.
const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DescribeConfigs, 1, 4),
];

/// Largest Fetch answer per partition: the fixed chunk is this big at most.
const MAX_CHUNK_BYTES: usize = 16 << 20;

/// A topic the null broker knows: its partition count and when it was created.
#[derive(Clone, Copy)]
struct Topic {
    partitions: u32,
    created: Instant,
}

/// The trouble the null broker plays (see the module doc and `NullBrokerArgs`).
#[derive(Default)]
struct Faults {
    not_leader_after_create: Duration,
    leader_not_available_after_create: Duration,
    not_leader_every: u64,
    close_every: u64,
    /// (host, port) of the broker leadership moves to, and when (after a topic's creation).
    moves_to: Option<(String, i32)>,
    moves_after: Duration,
    /// Partition answers given (for `not_leader_every`).
    answers: AtomicU64,
    /// Produce and Fetch requests received (for `close_every`).
    requests: AtomicU64,
}

impl Faults {
    /// The error for one partition of a Produce, Fetch or ListOffsets for `topic` (0 = none).
    fn partition_error(&self, topic: Option<Topic>) -> i16 {
        if let Some(t) = topic {
            if t.created.elapsed() < self.not_leader_after_create || self.moved(t) {
                return NOT_LEADER_OR_FOLLOWER;
            }
        }
        if self.not_leader_every > 0
            && (self.answers.fetch_add(1, Relaxed) + 1).is_multiple_of(self.not_leader_every)
        {
            return NOT_LEADER_OR_FOLLOWER;
        }
        0
    }

    /// Whether the topic's leadership has moved to the other broker.
    fn moved(&self, t: Topic) -> bool {
        self.moves_to.is_some() && t.created.elapsed() >= self.moves_after
    }

    /// Whether to drop this Produce or Fetch request and close its connection.
    fn close_now(&self) -> bool {
        self.close_every > 0
            && (self.requests.fetch_add(1, Relaxed) + 1).is_multiple_of(self.close_every)
    }
}

struct State {
    host: String,
    port: i32,
    default_partitions: u32,
    topics: Mutex<HashMap<String, Topic>>,
    faults: Faults,
    /// Largest record batch accepted (0 = any).
    message_max_bytes: usize,
    /// Whether DescribeConfigs is offered.
    describe_configs: bool,
    /// Open fetch sessions; `None` with --no-fetch-sessions.
    sessions: Option<Mutex<Sessions>>,
    drop_session_every: u64,
    incremental_fetches: AtomicU64,
    /// Next offset per (topic, partition), advanced by Produce.
    offsets: Mutex<HashMap<(String, i32), i64>>,
    /// Whole batches, back to back, each of `batch_records` records.
    chunk: Bytes,
    batch_len: usize,
    batch_records: i64,
    /// With --echo: what was produced, served back by Fetch.
    echo: Option<Echo>,
}

pub async fn serve(args: NullBrokerArgs) -> Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    serve_on(listener, args).await
}

/// Serves on a bound listener (port 0 in tests: the advertised port is the bound one).
pub async fn serve_on(listener: TcpListener, args: NullBrokerArgs) -> Result<()> {
    let bound = listener.local_addr()?.to_string();
    let advertise = args.advertise.clone().unwrap_or(bound);
    let (host, port) = advertise
        .rsplit_once(':')
        .context("--advertise wants HOST:PORT")?;
    let (chunk, batch_len) = fetch_chunk(args.message_size, args.batch_records)?;
    let state = Arc::new(State {
        host: host.to_string(),
        port: port.parse().context("port")?,
        default_partitions: args.partitions,
        topics: Mutex::new(HashMap::new()),
        offsets: Mutex::new(HashMap::new()),
        chunk,
        batch_len,
        batch_records: args.batch_records as i64,
        echo: args.echo.then(|| Echo {
            logs: Mutex::new(HashMap::new()),
            appended: Notify::new(),
            retain_bytes: args.echo_retain_mib << 20,
        }),
        faults: Faults {
            not_leader_after_create: Duration::from_millis(args.not_leader_after_create_ms),
            leader_not_available_after_create: Duration::from_millis(
                args.leader_not_available_after_create_ms,
            ),
            not_leader_every: args.not_leader_every,
            close_every: args.close_every,
            moves_to: match &args.leader_moves_to {
                Some(a) => {
                    let (h, p) = a
                        .rsplit_once(':')
                        .context("--leader-moves-to wants HOST:PORT")?;
                    Some((h.to_string(), p.parse().context("--leader-moves-to port")?))
                }
                None => None,
            },
            moves_after: Duration::from_millis(args.leader_moves_after_ms),
            ..Faults::default()
        },
        message_max_bytes: args.message_max_bytes,
        describe_configs: args.message_max_bytes > 0 && !args.no_describe_configs,
        sessions: (!args.no_fetch_sessions).then(|| Mutex::new(Sessions::default())),
        drop_session_every: args.drop_fetch_session_every,
        incremental_fetches: AtomicU64::new(0),
    });
    eprintln!(
        "null broker on {} (advertised {advertise}): acks every Produce without storing it, \
         answers Fetch from one in-memory batch of {} x {} B records",
        listener.local_addr()?,
        args.batch_records,
        args.message_size
    );
    loop {
        let (sock, peer) = listener.accept().await?;
        sock.set_nodelay(true)?;
        let st = state.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(sock, st).await {
                let msg = format!("{e:#}");
                if !msg.contains("reading frame size") {
                    eprintln!("null broker: connection {peer}: {msg}");
                }
            }
        });
    }
}

fn fetch_chunk(message_size: usize, batch_records: usize) -> Result<(Bytes, usize)> {
    let payloads = Payloads::new(message_size, crate::cli::PayloadKind::Random, 42);
    let mut batch = BytesMut::new();
    let mut scratch = BytesMut::new();
    wire::encode_batch(
        &mut batch,
        &mut scratch,
        Codec::None,
        0,
        (0..batch_records.max(1) as u64).map(|i| RecordSpec {
            timestamp_ms: 0,
            key: None,
            body: payloads.body(i),
            stamp: None,
        }),
    )?;
    let batch_len = batch.len();
    let copies = (MAX_CHUNK_BYTES / batch_len).max(1);
    let mut chunk = BytesMut::with_capacity(copies * batch_len);
    for _ in 0..copies {
        chunk.extend_from_slice(&batch);
    }
    Ok((chunk.freeze(), batch_len))
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

impl State {
    fn topic(&self, name: &str) -> Option<Topic> {
        self.topics.lock().expect("lock").get(name).copied()
    }

    /// The APIs (and versions) this broker offers.
    fn supported(&self) -> impl Iterator<Item = &'static (ApiKey, i16, i16)> + '_ {
        SUPPORTED
            .iter()
            .filter(|(k, _, _)| *k != ApiKey::DescribeConfigs || self.describe_configs)
    }

    /// MESSAGE_TOO_LARGE for a produced `records` field holding a batch over the limit.
    fn too_large(&self, records: Option<&[u8]>) -> bool {
        self.message_max_bytes > 0
            && records.is_some_and(|r| {
                wire::batches(r).any(|(h, _)| h.total_len > self.message_max_bytes)
            })
    }
}

/// Answers DescribeConfigs with the one limit the null broker has: topic `max.message.bytes`
/// and broker `message.max.bytes`.
fn describe_configs(st: &State, req: &DescribeConfigsRequest) -> DescribeConfigsResponse {
    let results = req
        .resources
        .iter()
        .map(|r| {
            let key = match r.resource_type {
                2 => "max.message.bytes",
                4 => "message.max.bytes",
                _ => "",
            };
            let wanted = r
                .configuration_keys
                .as_ref()
                .is_none_or(|ks| ks.iter().any(|k| k.as_str() == key));
            let unknown_topic =
                r.resource_type == 2 && st.topic(r.resource_name.as_str()).is_none();
            let configs = if key.is_empty() || !wanted || unknown_topic {
                Vec::new()
            } else {
                vec![DescribeConfigsResourceResult::default()
                    .with_name(StrBytes::from_static_str(key))
                    .with_value(Some(StrBytes::from_string(
                        st.message_max_bytes.to_string(),
                    )))
                    .with_read_only(true)]
            };
            DescribeConfigsResult::default()
                .with_error_code(if unknown_topic { 3 } else { 0 })
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone())
                .with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

async fn serve_conn(sock: TcpStream, st: Arc<State>) -> Result<()> {
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut rbuf = BytesMut::with_capacity(1 << 20);
    let mut out = BytesMut::with_capacity(64 << 10);
    // This connection's copy of the fetch chunk, whose base offsets get rewritten per answer.
    let mut chunk: Option<BytesMut> = None;
    loop {
        read_frame(&mut rd, &mut rbuf).await?;
        let mut frame = rbuf.split().freeze();
        let mut body = frame.clone();
        let header = decode_request_header_from_buffer(&mut body)?;
        let key = ApiKey::try_from(header.request_api_key)
            .map_err(|_| anyhow::anyhow!("unknown api key {}", header.request_api_key))?;
        let v = header.request_api_version;
        let supported = st
            .supported()
            .find(|(k, _, _)| *k == key)
            .is_some_and(|(_, lo, hi)| (*lo..=*hi).contains(&v));
        if !supported && key != ApiKey::ApiVersions {
            bail!("unsupported request {key:?} v{v}");
        }
        if matches!(key, ApiKey::Produce | ApiKey::Fetch) && st.faults.close_now() {
            return Ok(()); // dropped unanswered: the connection closes
        }
        out.clear();
        match key {
            ApiKey::ApiVersions => {
                let (v, resp) = if supported {
                    (v, api_versions(&st, 0))
                } else {
                    (0, api_versions(&st, 35)) // UNSUPPORTED_VERSION, answered in v0
                };
                respond(&mut out, &header, key, v, &resp)?;
            }
            ApiKey::DescribeConfigs => {
                let req = DescribeConfigsRequest::decode(&mut body, v)?;
                respond(&mut out, &header, key, v, &describe_configs(&st, &req))?;
            }
            ApiKey::Metadata => {
                let req = MetadataRequest::decode(&mut body, v)?;
                respond(&mut out, &header, key, v, &metadata(&st, &req))?;
            }
            ApiKey::CreateTopics => {
                let req = CreateTopicsRequest::decode(&mut body, v)?;
                let mut topics = st.topics.lock().expect("lock");
                let results = req
                    .topics
                    .iter()
                    .map(|t| {
                        let exists = topics.contains_key(t.name.0.as_str());
                        if !exists {
                            let n = if t.num_partitions > 0 {
                                t.num_partitions as u32
                            } else {
                                st.default_partitions
                            };
                            let created = Instant::now();
                            topics.insert(
                                t.name.0.to_string(),
                                Topic {
                                    partitions: n,
                                    created,
                                },
                            );
                        }
                        CreatableTopicResult::default()
                            .with_name(t.name.clone())
                            .with_error_code(if exists { TOPIC_ALREADY_EXISTS } else { 0 })
                            .with_num_partitions(t.num_partitions)
                            .with_replication_factor(t.replication_factor)
                    })
                    .collect();
                drop(topics);
                let resp = CreateTopicsResponse::default().with_topics(results);
                respond(&mut out, &header, key, v, &resp)?;
            }
            ApiKey::ListOffsets => {
                let req = ListOffsetsRequest::decode(&mut body, v)?;
                let offsets = st.offsets.lock().expect("lock");
                let topics = req
                    .topics
                    .iter()
                    .map(|t| {
                        let topic = st.topic(t.name.0.as_str());
                        ListOffsetsTopicResponse::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        let (start, end) = match &st.echo {
                                            Some(e) => {
                                                e.offsets(t.name.0.as_str(), p.partition_index)
                                            }
                                            None => (
                                                0,
                                                offsets
                                                    .get(&(t.name.0.to_string(), p.partition_index))
                                                    .copied()
                                                    .unwrap_or(0),
                                            ),
                                        };
                                        ListOffsetsPartitionResponse::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(st.faults.partition_error(topic))
                                            .with_timestamp(-1)
                                            .with_offset(if p.timestamp == -1 {
                                                end
                                            } else {
                                                start
                                            })
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                drop(offsets);
                let resp = ListOffsetsResponse::default().with_topics(topics);
                respond(&mut out, &header, key, v, &resp)?;
            }
            ApiKey::Produce => {
                let req = ProduceRequest::decode(&mut body, v)?;
                let mut offsets = st.offsets.lock().expect("lock");
                let topics = req
                    .topic_data
                    .iter()
                    .map(|t| {
                        let topic = st.topic(t.name.0.as_str());
                        TopicProduceResponse::default()
                            .with_name(t.name.clone())
                            .with_partition_responses(
                                t.partition_data
                                    .iter()
                                    .map(|p| {
                                        let mut error = st.faults.partition_error(topic);
                                        if error == 0 && st.too_large(p.records.as_deref()) {
                                            error = MESSAGE_TOO_LARGE;
                                        }
                                        if error != 0 {
                                            return PartitionProduceResponse::default()
                                                .with_index(p.index)
                                                .with_error_code(error)
                                                .with_base_offset(-1);
                                        }
                                        let records: i64 = p
                                            .records
                                            .as_deref()
                                            .map(|r| {
                                                wire::batches(r)
                                                    .map(|(h, _)| i64::from(h.record_count))
                                                    .sum()
                                            })
                                            .unwrap_or(0);
                                        let next = offsets
                                            .entry((t.name.0.to_string(), p.index))
                                            .or_insert(0);
                                        let mut base = *next;
                                        *next += records;
                                        if let (Some(echo), Some(r)) = (&st.echo, &p.records) {
                                            base = echo.append(t.name.0.as_str(), p.index, r);
                                        }
                                        PartitionProduceResponse::default()
                                            .with_index(p.index)
                                            .with_base_offset(base)
                                            .with_log_append_time_ms(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                drop(offsets);
                if req.acks != 0 {
                    let resp = ProduceResponse::default().with_responses(topics);
                    respond(&mut out, &header, key, v, &resp)?;
                }
            }
            ApiKey::Fetch => {
                let req = FetchRequest::decode(&mut body, v)?;
                drop(body);
                let fetch = fetch_plan(&st, &req, v);
                match &st.echo {
                    Some(echo) => echo_fetch(&mut wr, &mut out, echo, &header, &fetch).await?,
                    None => {
                        let c = chunk.get_or_insert_with(|| BytesMut::from(&st.chunk[..]));
                        write_fetch(&mut wr, &mut out, c, &st, &header, &fetch).await?;
                    }
                }
                out.clear();
            }
            _ => bail!("unexpected {key:?}"),
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
        }
        frame.clear();
        if let Ok(b) = frame.try_into_mut() {
            rbuf = b;
        }
    }
}

fn api_versions(st: &State, error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            st.supported()
                .map(|(k, lo, hi)| {
                    ApiVersion::default()
                        .with_api_key(*k as i16)
                        .with_min_version(*lo)
                        .with_max_version(*hi)
                })
                .collect(),
        )
}

fn metadata(st: &State, req: &MetadataRequest) -> MetadataResponse {
    let topics = st.topics.lock().expect("lock");
    let names: Vec<String> = match &req.topics {
        Some(ts) => ts
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .collect(),
        None => topics.keys().cloned().collect(),
    };
    let topic_entries = names
        .iter()
        .map(|n| {
            let Some(&topic) = topics.get(n) else {
                // Unknown until created, as on a broker without auto-creation.
                return MetadataResponseTopic::default()
                    .with_name(Some(name(n)))
                    .with_error_code(3);
            };
            let electing = topic.created.elapsed() < st.faults.leader_not_available_after_create;
            let (error, leader) = if electing {
                (LEADER_NOT_AVAILABLE, -1)
            } else if st.faults.moved(topic) {
                (0, 1)
            } else {
                (0, 0)
            };
            MetadataResponseTopic::default()
                .with_name(Some(name(n)))
                .with_partitions(
                    (0..topic.partitions as i32)
                        .map(|p| {
                            MetadataResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(error)
                                .with_leader_id(BrokerId(leader))
                                .with_replica_nodes(vec![BrokerId(0)])
                                .with_isr_nodes(vec![BrokerId(0)])
                        })
                        .collect(),
                )
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(
            std::iter::once((0, st.host.clone(), st.port))
                .chain(st.faults.moves_to.iter().map(|(h, p)| (1, h.clone(), *p)))
                .map(|(id, host, port)| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(id))
                        .with_host(StrBytes::from_string(host))
                        .with_port(port)
                })
                .collect(),
        )
        .with_cluster_id(Some(StrBytes::from_static_str("null-broker")))
        .with_controller_id(BrokerId(0))
        .with_topics(topic_entries)
}

fn respond<R: Encodable + kafka_protocol::protocol::HeaderVersion>(
    out: &mut BytesMut,
    req: &RequestHeader,
    key: ApiKey,
    version: i16,
    resp: &R,
) -> Result<()> {
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(req.correlation_id)
        .encode(out, key.response_header_version(version))?;
    resp.encode(out, version)?;
    let size = (out.len() - 4) as i32;
    out[0..4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// One partition of a Fetch, as the answer is built for it.
struct FetchPart {
    partition: i32,
    offset: i64,
    max_bytes: i32,
    /// An error to answer instead of records (0 = none).
    error: i16,
}

/// What one Fetch asks for, with the faults to play applied.
struct Fetch {
    max_wait_ms: i32,
    min_bytes: i32,
    max_bytes: i32,
    session_id: i32,
    /// Top-level error (the partitions are then not answered).
    error_code: i16,
    /// Leave out partitions with neither records nor an error (an incremental fetch's answer).
    only_changed: bool,
    topics: Vec<(String, Vec<FetchPart>)>,
}

/// Most fetch sessions kept at once; further requests for one are answered without (id 0).
const MAX_SESSIONS: usize = 10_000;

/// The fetch sessions of the null broker.
#[derive(Default)]
struct Sessions {
    last_id: i32,
    open: HashMap<i32, Session>,
}

/// One fetch session: the epoch it expects next and, per (topic, partition), the fetch offset
/// and partition_max_bytes last sent for it.
struct Session {
    next_epoch: i32,
    parts: std::collections::BTreeMap<(String, i32), (i64, i32)>,
}

/// (partition, fetch offset, partition_max_bytes)
type Wanted = (i32, i64, i32);

/// The partitions a Fetch names, at the offsets it names, by topic.
fn requested(req: &FetchRequest) -> Vec<(String, Vec<Wanted>)> {
    req.topics
        .iter()
        .map(|t| {
            let parts = t
                .partitions
                .iter()
                .map(|p| (p.partition, p.fetch_offset, p.partition_max_bytes))
                .collect();
            (t.topic.0.to_string(), parts)
        })
        .collect()
}

/// Resolves a Fetch against its session (if any) into what to answer.
fn fetch_plan(st: &State, req: &FetchRequest, version: i16) -> Fetch {
    let mut fetch = Fetch {
        max_wait_ms: req.max_wait_ms,
        min_bytes: req.min_bytes,
        max_bytes: req.max_bytes,
        session_id: 0,
        error_code: 0,
        only_changed: false,
        topics: Vec::new(),
    };
    let mut wanted = requested(req);
    match (&st.sessions, version >= 7) {
        (Some(sessions), true) => {
            let mut sessions = sessions.lock().expect("lock");
            let (id, epoch) = (req.session_id, req.session_epoch);
            if epoch <= 0 && id != 0 {
                sessions.open.remove(&id); // closed, or replaced by a new one
            }
            if epoch == 0 && sessions.open.len() < MAX_SESSIONS {
                sessions.last_id = sessions.last_id.checked_add(1).unwrap_or(1);
                let new_id = sessions.last_id;
                let parts = wanted
                    .iter()
                    .flat_map(|(t, ps)| ps.iter().map(move |&(p, o, m)| ((t.clone(), p), (o, m))))
                    .collect();
                sessions.open.insert(
                    new_id,
                    Session {
                        next_epoch: 1,
                        parts,
                    },
                );
                fetch.session_id = new_id;
            } else if epoch > 0 {
                let n = st.incremental_fetches.fetch_add(1, Relaxed) + 1;
                let dropped = st.drop_session_every > 0 && n.is_multiple_of(st.drop_session_every);
                if dropped {
                    sessions.open.remove(&id);
                }
                let Some(session) = sessions.open.get_mut(&id) else {
                    fetch.error_code = FETCH_SESSION_ID_NOT_FOUND;
                    return fetch;
                };
                if epoch != session.next_epoch {
                    fetch.error_code = INVALID_FETCH_SESSION_EPOCH;
                    return fetch;
                }
                session.next_epoch = epoch.checked_add(1).unwrap_or(1);
                for (t, ps) in &wanted {
                    for &(p, o, m) in ps {
                        session.parts.insert((t.clone(), p), (o, m));
                    }
                }
                for f in &req.forgotten_topics_data {
                    for p in &f.partitions {
                        session.parts.remove(&(f.topic.0.to_string(), *p));
                    }
                }
                // Every partition in the session, starting at a different one each time so a
                // small max_bytes does not starve the last ones.
                let all: Vec<_> = session.parts.iter().collect();
                let start = if all.is_empty() {
                    0
                } else {
                    epoch as usize % all.len()
                };
                wanted = Vec::new();
                for ((t, p), (o, m)) in all[start..].iter().chain(&all[..start]) {
                    match wanted.last_mut() {
                        Some((last, ps)) if last == t => ps.push((*p, *o, *m)),
                        _ => wanted.push((t.clone(), vec![(*p, *o, *m)])),
                    }
                }
                fetch.session_id = id;
                fetch.only_changed = true;
            }
        }
        (None, true) if req.session_epoch > 0 => {
            fetch.error_code = FETCH_SESSION_ID_NOT_FOUND;
            return fetch;
        }
        _ => {}
    }
    fetch.topics = wanted
        .into_iter()
        .map(|(t, ps)| {
            let topic = st.topic(&t);
            let parts = ps
                .into_iter()
                .map(|(partition, offset, max_bytes)| FetchPart {
                    partition,
                    offset,
                    max_bytes,
                    error: st.faults.partition_error(topic),
                })
                .collect();
            (t, parts)
        })
        .collect();
    fetch
}

/// An error answer for one partition.
fn failed_part(p: &FetchPart) -> PartAnswer {
    PartAnswer {
        partition: p.partition,
        error_code: p.error,
        high_watermark: -1,
        log_start_offset: -1,
        records_len: 0,
    }
}

/// One partition's part of a Fetch answer: everything but the record bytes.
struct PartAnswer {
    partition: i32,
    error_code: i16,
    high_watermark: i64,
    log_start_offset: i64,
    records_len: usize,
}

/// Encodes a Fetch response (versions 4..=12) except the record bytes into `out`, size prefix
/// included. Returns, per partition in order, where in `out` its records belong: the caller writes
/// `out` up to each cut, then that partition's records, and finally the rest of `out`.
fn fetch_frame(
    out: &mut BytesMut,
    version: i16,
    correlation_id: i32,
    fetch: &Fetch,
    topics: &[(&str, Vec<PartAnswer>)],
) -> Vec<usize> {
    let flexible = version >= 12;
    let put_len = |out: &mut BytesMut, n: usize| {
        if flexible {
            put_uvarint(out, n as u64 + 1);
        } else {
            out.put_i32(n as i32);
        }
    };
    out.clear();
    out.put_i32(0); // size, patched below
    out.put_i32(correlation_id);
    if flexible {
        out.put_u8(0);
    }
    out.put_i32(0); // throttle_time_ms
    if version >= 7 {
        out.put_i16(fetch.error_code);
        out.put_i32(fetch.session_id);
    }
    put_len(out, topics.len());
    let mut cuts = Vec::new();
    let mut record_bytes = 0usize;
    for (topic, parts) in topics {
        if flexible {
            put_uvarint(out, topic.len() as u64 + 1);
        } else {
            out.put_i16(topic.len() as i16);
        }
        out.put_slice(topic.as_bytes());
        put_len(out, parts.len());
        for p in parts {
            out.put_i32(p.partition);
            out.put_i16(p.error_code);
            out.put_i64(p.high_watermark);
            out.put_i64(p.high_watermark); // last_stable_offset
            if version >= 5 {
                out.put_i64(p.log_start_offset);
            }
            if flexible {
                out.put_u8(0); // aborted_transactions: null
            } else {
                out.put_i32(-1);
            }
            if version >= 11 {
                out.put_i32(-1); // preferred_read_replica
            }
            put_len(out, p.records_len);
            cuts.push(out.len());
            record_bytes += p.records_len;
            if flexible {
                out.put_u8(0); // partition tagged fields
            }
        }
        if flexible {
            out.put_u8(0); // topic tagged fields
        }
    }
    if flexible {
        out.put_u8(0); // body tagged fields
    }
    let size = (out.len() - 4 + record_bytes) as i32;
    out[0..4].copy_from_slice(&size.to_be_bytes());
    cuts
}

/// Answers a Fetch with copies of the fixed batch, base offsets following each fetch offset.
async fn write_fetch(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    out: &mut BytesMut,
    chunk: &mut BytesMut,
    st: &State,
    header: &RequestHeader,
    fetch: &Fetch,
) -> Result<()> {
    let max_batches = chunk.len() / st.batch_len;
    let mut budget = fetch.max_bytes.max(1) as usize;
    let mut topics: Vec<(&str, Vec<PartAnswer>)> = Vec::new();
    let mut plan: Vec<(i64, usize)> = Vec::new(); // (fetch offset, batches) per partition
    for (topic, ps) in fetch.topics.iter().filter(|_| fetch.error_code == 0) {
        let mut parts = Vec::new();
        for p in ps {
            if p.error != 0 {
                parts.push(failed_part(p));
                plan.push((p.offset, 0));
                continue;
            }
            let want = (p.max_bytes.max(0) as usize).min(budget) / st.batch_len;
            // Like Kafka, at least one batch for the first partition even if it is too big.
            let first = plan.is_empty();
            let n = want.max(usize::from(first)).min(max_batches);
            if n == 0 && fetch.only_changed {
                continue;
            }
            budget = budget.saturating_sub(n * st.batch_len);
            parts.push(PartAnswer {
                partition: p.partition,
                error_code: 0,
                high_watermark: p.offset + n as i64 * st.batch_records,
                log_start_offset: 0,
                records_len: n * st.batch_len,
            });
            plan.push((p.offset, n));
        }
        topics.push((topic.as_str(), parts));
    }
    let cuts = fetch_frame(
        out,
        header.request_api_version,
        header.correlation_id,
        fetch,
        &topics,
    );
    let mut at = 0;
    for (cut, (fetch_offset, batches)) in cuts.into_iter().zip(plan) {
        wr.write_all(&out[at..cut]).await?;
        at = cut;
        for i in 0..batches {
            let base = fetch_offset + i as i64 * st.batch_records;
            let o = i * st.batch_len;
            chunk[o..o + 8].copy_from_slice(&base.to_be_bytes());
        }
        wr.write_all(&chunk[..batches * st.batch_len]).await?;
    }
    wr.write_all(&out[at..]).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Echo mode: keep what is produced (a bounded tail per partition) and serve it back, so an e2e
// run has real, stamped records to measure: the harness's own end-to-end latency floor.

/// The retained tail of one partition.
#[derive(Default)]
struct PartLog {
    /// (base offset, offset after the batch, batch with its base offset rewritten)
    batches: VecDeque<(i64, i64, Bytes)>,
    bytes: usize,
    start: i64,
    next: i64,
}

struct Echo {
    logs: Mutex<HashMap<(String, i32), PartLog>>,
    appended: Notify,
    retain_bytes: usize,
}

impl Echo {
    /// Appends a produced `records` field; returns its base offset.
    fn append(&self, topic: &str, partition: i32, records: &[u8]) -> i64 {
        let mut logs = self.logs.lock().expect("lock");
        let log = logs.entry((topic.to_string(), partition)).or_default();
        let base = log.next;
        for (h, batch) in wire::batches(records) {
            let mut b = BytesMut::from(batch);
            b[0..8].copy_from_slice(&log.next.to_be_bytes());
            let next = log.next + i64::from(h.last_offset_delta) + 1;
            log.bytes += b.len();
            log.batches.push_back((log.next, next, b.freeze()));
            log.next = next;
        }
        while log.bytes > self.retain_bytes && log.batches.len() > 1 {
            let (_, next, b) = log.batches.pop_front().expect("non-empty");
            log.bytes -= b.len();
            log.start = next;
        }
        drop(logs);
        self.appended.notify_waiters();
        base
    }

    /// (log start, log end) of a partition.
    fn offsets(&self, topic: &str, partition: i32) -> (i64, i64) {
        let logs = self.logs.lock().expect("lock");
        logs.get(&(topic.to_string(), partition))
            .map_or((0, 0), |l| (l.start, l.next))
    }

    /// Batches from `offset` on, up to `max_bytes` (at least one batch), and the log's bounds.
    fn read(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> (Vec<Bytes>, i64, i64) {
        let logs = self.logs.lock().expect("lock");
        let Some(log) = logs.get(&(topic.to_string(), partition)) else {
            return (Vec::new(), 0, 0);
        };
        let mut out = Vec::new();
        let mut size = 0;
        let from = log.batches.partition_point(|(_, next, _)| *next <= offset);
        for (_, _, b) in log.batches.range(from..) {
            if (!out.is_empty() || !at_least_one) && size + b.len() > max_bytes {
                break;
            }
            size += b.len();
            out.push(b.clone());
        }
        (out, log.start, log.next)
    }
}

/// Answers a Fetch from the echo log, waiting up to max_wait_ms for min_bytes like a broker.
async fn echo_fetch(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    out: &mut BytesMut,
    echo: &Echo,
    header: &RequestHeader,
    fetch: &Fetch,
) -> Result<()> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(fetch.max_wait_ms.max(0) as u64);
    let failed = fetch.error_code != 0
        || fetch
            .topics
            .iter()
            .any(|(_, ps)| ps.iter().any(|p| p.error != 0));
    loop {
        // Register for wake-ups before looking, so an append in between is not missed.
        let appended = echo.appended.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();

        let mut budget = fetch.max_bytes.max(1) as usize;
        let mut topics: Vec<(&str, Vec<PartAnswer>)> = Vec::new();
        let mut data: Vec<Vec<Bytes>> = Vec::new();
        let mut total = 0usize;
        for (topic, ps) in fetch.topics.iter().filter(|_| fetch.error_code == 0) {
            let mut parts = Vec::new();
            for p in ps {
                if p.error != 0 {
                    parts.push(failed_part(p));
                    data.push(Vec::new());
                    continue;
                }
                let max = (p.max_bytes.max(0) as usize).min(budget);
                // Like Kafka, only the first partition with data may go over the limits.
                let (batches, start, next) =
                    echo.read(topic, p.partition, p.offset, max, total == 0);
                let len: usize = batches.iter().map(Bytes::len).sum();
                if len == 0 && fetch.only_changed {
                    continue;
                }
                budget = budget.saturating_sub(len);
                total += len;
                parts.push(PartAnswer {
                    partition: p.partition,
                    error_code: 0,
                    high_watermark: next,
                    log_start_offset: start,
                    records_len: len,
                });
                data.push(batches);
            }
            topics.push((topic.as_str(), parts));
        }
        let min_bytes = fetch.min_bytes.max(1) as usize;
        if failed || total >= min_bytes || tokio::time::Instant::now() >= deadline {
            let cuts = fetch_frame(
                out,
                header.request_api_version,
                header.correlation_id,
                fetch,
                &topics,
            );
            let mut at = 0;
            for (cut, batches) in cuts.into_iter().zip(data) {
                wr.write_all(&out[at..cut]).await?;
                at = cut;
                for b in batches {
                    wr.write_all(&b).await?;
                }
            }
            wr.write_all(&out[at..]).await?;
            return Ok(());
        }
        tokio::select! {
            _ = appended => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::FetchResponse;
    use tokio::io::AsyncReadExt;

    /// The hand-encoded Fetch answer decodes with kafka-protocol at every served version, and
    /// its batches carry the requested offsets.
    #[tokio::test]
    async fn fetch_response_decodes() {
        let (chunk, batch_len) = fetch_chunk(100, 4).unwrap();
        let st = State {
            host: "h".into(),
            port: 1,
            default_partitions: 2,
            topics: Mutex::new(HashMap::new()),
            offsets: Mutex::new(HashMap::new()),
            chunk: chunk.clone(),
            batch_len,
            batch_records: 4,
            echo: None,
            faults: Faults::default(),
            message_max_bytes: 0,
            describe_configs: false,
            sessions: None,
            drop_session_every: 0,
            incremental_fetches: AtomicU64::new(0),
        };
        for v in 4..=12i16 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                all
            });
            let (sock, _) = listener.accept().await.unwrap();
            let (_rd, mut wr) = sock.into_split();
            let req = FetchRequest::default()
                .with_max_bytes(1 << 20)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(name("t"))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(100)
                            .with_partition_max_bytes(3 * batch_len as i32),
                        FetchPartition::default()
                            .with_partition(1)
                            .with_fetch_offset(7)
                            .with_partition_max_bytes(1),
                    ])]);
            let header = RequestHeader::default()
                .with_request_api_key(ApiKey::Fetch as i16)
                .with_request_api_version(v)
                .with_correlation_id(9);
            let mut out = BytesMut::new();
            let mut c = BytesMut::from(&chunk[..]);
            let fetch = fetch_plan(&st, &req, v);
            write_fetch(&mut wr, &mut out, &mut c, &st, &header, &fetch)
                .await
                .unwrap();
            drop(wr);
            drop(_rd);
            let all = client.await.unwrap();
            let size = i32::from_be_bytes(all[0..4].try_into().unwrap()) as usize;
            assert_eq!(size, all.len() - 4, "v{v}");
            let mut body = Bytes::from(all).slice(4..);
            let h = ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(v))
                .unwrap();
            assert_eq!(h.correlation_id, 9);
            let resp = FetchResponse::decode(&mut body, v).unwrap();
            assert!(body.is_empty(), "v{v}: trailing bytes");
            let parts = &resp.responses[0].partitions;
            assert_eq!(parts.len(), 2);
            let offsets: Vec<i64> = wire::batches(parts[0].records.as_ref().unwrap())
                .map(|(h, _)| h.base_offset)
                .collect();
            assert_eq!(offsets, vec![100, 104, 108], "v{v}");
            // Too small a partition_max_bytes for the second partition: nothing for it.
            assert_eq!(wire::batches(parts[1].records.as_ref().unwrap()).count(), 0);
        }
    }
}
