//! Connections, framing, version negotiation and the admin requests (Metadata, CreateTopics,
//! ListOffsets, DescribeConfigs). Nothing here assumes which broker is on the other end: versions
//! come from ApiVersions, leaders and their addresses from Metadata, refreshed by the [`Router`]
//! whenever a request says leadership moved.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    create_topics_request::CreatableTopic, describe_configs_request::DescribeConfigsResource,
    list_offsets_request, metadata_request, ApiKey, ApiVersionsRequest, BrokerId,
    CreateTopicsRequest, DescribeConfigsRequest, ListOffsetsRequest, MetadataRequest,
    MetadataResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clock::now_ns;
use crate::retry::{
    describe_error, is_retriable, Op, Reason, RetryPolicy, RetryStats, LEADER_NOT_AVAILABLE,
    TOPIC_ALREADY_EXISTS, UNKNOWN_TOPIC_OR_PARTITION,
};

/// Largest response frame accepted: a length read from the network never sizes an allocation
/// unchecked.
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// How long an admin request (and a connection's ApiVersions exchange) may take: above the
/// 30 s CreateTopics asks the broker to wait, so its answer (even a timeout) arrives. Creating
/// 10,000 partitions took 7 s on a loaded 2-core VM; the old 15 s failed W6's largest point.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

fn frame_len(len: i32) -> Result<usize> {
    if len < 4 || len as usize > MAX_FRAME_BYTES {
        bail!("bad frame size {len}");
    }
    Ok(len as usize)
}

/// Reads one size-prefixed frame into `buf` (cleared first), without zero-filling it.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> Result<()> {
    let len = frame_len(r.read_i32().await.context("reading frame size")?)?;
    buf.clear();
    buf.reserve(len);
    while buf.len() < len {
        let want = len - buf.len();
        let mut lim = (&mut *buf).limit(want);
        if r.read_buf(&mut lim).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-frame",
            )
            .into());
        }
    }
    Ok(())
}

/// Frames read straight from a socket into one growing buffer. Unlike [`read_frame`], `next` is
/// cancel-safe (bytes read before a cancellation stay buffered), so it can sit in a `select!`
/// beside timers and channels. A frame is a slice of the buffer: once the caller drops it, the
/// buffer's space is reused, so a steady stream of frames allocates nothing.
pub struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    /// The socket whose SO_RCVLOWAT the reader sets while a large frame arrives, and the value
    /// it has now (`1`, the kernel's default, between frames).
    wake_at: Option<(RawFd, usize)>,
}

/// While at least this much of a frame is still to come, the reader asks the kernel not to
/// wake it before this much is queued (SO_RCVLOWAT). A multi-megabyte Fetch response otherwise
/// wakes the consumer for every 64 KiB segment loopback delivers, and each wake-up costs the
/// *sender* too: on one machine the broker's writev runs the receiver's TCP input and its
/// wake-up (an inter-processor interrupt, a VM exit here). A client on another machine would
/// not cost the broker that at all. The broker's own reads do the same (`WAKE_AT_MAX_BYTES`).
const WAKE_AT_BYTES: usize = 256 << 10;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(rd: R, capacity: usize) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(capacity),
            wake_at: None,
        }
    }

    /// As [`Self::new`], for a socket that carries large frames: the reader is woken once per
    /// [`WAKE_AT_BYTES`] of a frame rather than per segment that arrives.
    pub fn with_batched_wakeups(rd: R, capacity: usize, socket: RawFd) -> Self {
        FrameReader {
            wake_at: Some((socket, 1)),
            ..Self::new(rd, capacity)
        }
    }

    /// Sets the socket's wake-up threshold for `want` more bytes of the current frame: all of
    /// them are on their way, so the kernel can wait for [`WAKE_AT_BYTES`] of them (it wakes
    /// the reader anyway when its receive window or memory runs short). Only two changes per
    /// large frame: up at its start, back to 1 for its last part and the next frame's size.
    fn set_wake_at(&mut self, want: usize) {
        let Some((socket, current)) = self.wake_at.as_mut() else {
            return;
        };
        let wanted = if want >= WAKE_AT_BYTES {
            WAKE_AT_BYTES
        } else {
            1
        };
        if wanted == *current {
            return;
        }
        let value = wanted as libc::c_int;
        // SAFETY: setsockopt on the socket this reader reads, with a c_int of the right size.
        let result = unsafe {
            libc::setsockopt(
                *socket,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result == 0 {
            *current = wanted;
        } else {
            // Not fatal: the reader is woken per segment, as without it.
            self.wake_at = None;
        }
    }

    /// The next frame, without its size prefix.
    pub async fn next(&mut self) -> Result<Bytes> {
        // Reads go at most this far past the end of the current frame: small frames arrive
        // several per read, while a large frame is read in place with little of the next one
        // after it (what is left over is moved to the front of the buffer when it is reused).
        const READ_AHEAD: usize = 64 << 10;
        loop {
            let want = if self.buf.len() >= 4 {
                let len = frame_len(i32::from_be_bytes(self.buf[..4].try_into().expect("4")))?;
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Ok(self.buf.split_to(len).freeze());
                }
                4 + len - self.buf.len()
            } else {
                0
            };
            self.set_wake_at(want);
            self.buf.reserve(want + READ_AHEAD);
            let mut limited = (&mut self.buf).limit(want + READ_AHEAD);
            if self.rd.read_buf(&mut limited).await? == 0 {
                let what = if self.buf.is_empty() {
                    "connection closed"
                } else {
                    "connection closed mid-frame"
                };
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, what).into());
            }
        }
    }
}

/// Whether an error is the connection's doing (closed, reset, refused, timed out): the request
/// can be retried on a new connection, possibly to another broker.
pub fn is_connection_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>().is_some()
            || c.downcast_ref::<tokio::time::error::Elapsed>().is_some()
    })
}

/// Versions the broker supports, from ApiVersions.
#[derive(Clone, Debug, Default)]
pub struct Versions(HashMap<i16, (i16, i16)>);

impl Versions {
    /// The highest version both sides support, within `ours`.
    pub fn pick(&self, key: ApiKey, ours_min: i16, ours_max: i16) -> Result<i16> {
        let (min, max) = self
            .0
            .get(&(key as i16))
            .copied()
            .ok_or_else(|| anyhow!("broker does not support {key:?}"))?;
        let v = max.min(ours_max);
        if v < min.max(ours_min) {
            bail!(
                "no common {key:?} version: broker {min}..={max}, harness {ours_min}..={ours_max}"
            );
        }
        Ok(v)
    }
}

pub async fn connect(addr: &str) -> Result<TcpStream> {
    let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A request/response connection for admin calls (one request at a time). The hot paths use their
/// own pipelined loops on raw streams but negotiate versions through this.
pub struct Conn {
    pub stream: TcpStream,
    pub addr: String,
    pub versions: Versions,
    client_id: String,
    correlation: i32,
    rbuf: BytesMut,
}

impl Conn {
    pub async fn open(addr: &str, client_id: &str) -> Result<Conn> {
        let mut conn = Conn {
            stream: connect(addr).await?,
            addr: addr.to_string(),
            versions: Versions::default(),
            client_id: client_id.to_string(),
            correlation: 0,
            rbuf: BytesMut::with_capacity(64 << 10),
        };
        // v3 is what current clients send; v0 is understood by every broker since 0.10.
        let resp = match conn.api_versions(3).await {
            Ok(r) if r.error_code == 0 => r,
            _ => {
                conn.stream = connect(addr).await?;
                let r = conn.api_versions(0).await?;
                if r.error_code != 0 {
                    bail!("ApiVersions failed at {addr}: error {}", r.error_code);
                }
                r
            }
        };
        conn.versions = Versions(
            resp.api_keys
                .iter()
                .map(|k| (k.api_key, (k.min_version, k.max_version)))
                .collect(),
        );
        Ok(conn)
    }

    async fn api_versions(
        &mut self,
        version: i16,
    ) -> Result<kafka_protocol::messages::ApiVersionsResponse> {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("bench-harness"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        self.call(&req, version).await
    }

    pub fn next_correlation(&mut self) -> i32 {
        self.correlation = self.correlation.wrapping_add(1);
        self.correlation
    }

    /// Sends one request and waits for its response (at most [`ADMIN_TIMEOUT`]).
    pub async fn call<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response> {
        let correlation = self.next_correlation();
        let mut buf = BytesMut::with_capacity(256);
        encode_request(&mut buf, req, version, correlation, &self.client_id)?;
        let exchange = async {
            self.stream.write_all(&buf).await?;
            read_frame(&mut self.stream, &mut self.rbuf).await
        };
        tokio::time::timeout(ADMIN_TIMEOUT, exchange)
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r)
            .with_context(|| format!("{:?} request to {}", R::KEY, self.addr))?;
        let mut body = self.rbuf.split().freeze();
        decode_response::<R>(&mut body, version, correlation)
    }
}

/// Encodes a size-prefixed request (header + body) into `buf`.
pub fn encode_request<R: Request>(
    buf: &mut BytesMut,
    req: &R,
    version: i16,
    correlation_id: i32,
    client_id: &str,
) -> Result<()> {
    let start = buf.len();
    buf.put_i32(0);
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
    header.encode(buf, R::header_version(version))?;
    req.encode(buf, version)?;
    let size = (buf.len() - start - 4) as i32;
    buf[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// Decodes a response frame (without its size prefix), checking the correlation id.
pub fn decode_response<R: Request>(
    body: &mut Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<R::Response> {
    let header = ResponseHeader::decode(body, R::Response::header_version(version))?;
    if header.correlation_id != correlation_id {
        bail!(
            "{:?} response has correlation id {}, expected {}",
            R::KEY,
            header.correlation_id,
            correlation_id
        );
    }
    R::Response::decode(body, version)
}

pub fn topic_name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

/// Where a topic's partitions live.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Leader broker id of each partition, indexed by partition id; -1 while it has none.
    pub leaders: Vec<i32>,
    /// Advertised `host:port` of each broker.
    pub brokers: BTreeMap<i32, String>,
}

impl Layout {
    pub fn partitions(&self) -> u32 {
        self.leaders.len() as u32
    }

    /// The leader's address, if the partition has a leader this layout can reach.
    pub fn leader_of(&self, partition: u32) -> Option<&str> {
        let id = *self.leaders.get(partition as usize)?;
        self.brokers.get(&id).map(String::as_str)
    }

    pub fn leader_addr(&self, partition: u32) -> Result<&str> {
        self.leader_of(partition).ok_or_else(|| {
            anyhow!(
                "partition {partition}: no reachable leader (leader id {})",
                self.leaders.get(partition as usize).copied().unwrap_or(-1)
            )
        })
    }

    /// Partitions grouped by leader address.
    pub fn by_leader(&self, partitions: &[u32]) -> Result<BTreeMap<String, Vec<u32>>> {
        let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for &p in partitions {
            out.entry(self.leader_addr(p)?.to_string())
                .or_default()
                .push(p);
        }
        Ok(out)
    }
}

async fn metadata(conn: &mut Conn, topics: Option<&[&str]>) -> Result<MetadataResponse> {
    let version = conn.versions.pick(ApiKey::Metadata, 1, 12)?;
    let req = MetadataRequest::default()
        .with_topics(topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    metadata_request::MetadataRequestTopic::default().with_name(Some(topic_name(t)))
                })
                .collect()
        }))
        .with_allow_auto_topic_creation(false);
    conn.call(&req, version).await
}

/// The topic's layout, or `None` if the broker does not know the topic. A topic whose leaders are
/// being elected (LEADER_NOT_AVAILABLE) comes back with no leaders.
pub async fn describe(conn: &mut Conn, topic: &str) -> Result<Option<Layout>> {
    let resp = metadata(conn, Some(&[topic])).await?;
    let Some(t) = resp.topics.first() else {
        return Ok(None);
    };
    if t.error_code == UNKNOWN_TOPIC_OR_PARTITION {
        return Ok(None);
    }
    if t.error_code != 0 && t.error_code != LEADER_NOT_AVAILABLE {
        bail!("metadata for {topic}: {}", describe_error(t.error_code));
    }
    let n = t.partitions.len();
    let mut leaders = vec![-1; n];
    for p in &t.partitions {
        let idx = p.partition_index as usize;
        if idx >= n {
            bail!("metadata for {topic}: partition ids are not 0..{n}");
        }
        leaders[idx] = if p.error_code == 0 { p.leader_id.0 } else { -1 };
    }
    let brokers = resp
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    Ok(Some(Layout { leaders, brokers }))
}

/// Creates the topic; an existing topic is fine. Sent to the controller when Metadata names one
/// (older brokers answer NOT_CONTROLLER otherwise; newer ones forward).
pub async fn create_topic(
    conn: &mut Conn,
    topic: &str,
    partitions: u32,
    replication_factor: i16,
    client_id: &str,
) -> Result<bool> {
    let meta = metadata(conn, Some(&[])).await?;
    let controller = meta
        .brokers
        .iter()
        .find(|b| b.node_id == meta.controller_id && meta.controller_id != BrokerId(-1))
        .map(|b| format!("{}:{}", b.host.as_str(), b.port));
    let mut ctl_conn;
    let target: &mut Conn = match controller {
        Some(addr) if addr != conn.addr => match Conn::open(&addr, client_id).await {
            Ok(c) => {
                ctl_conn = c;
                &mut ctl_conn
            }
            Err(_) => conn, // advertised address unreachable from here: let the bootstrap forward
        },
        _ => conn,
    };
    let version = target.versions.pick(ApiKey::CreateTopics, 2, 7)?;
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(topic))
            .with_num_partitions(partitions as i32)
            .with_replication_factor(replication_factor)])
        .with_timeout_ms(30_000);
    let resp = target.call(&req, version).await?;
    let r = resp
        .topics
        .first()
        .ok_or_else(|| anyhow!("CreateTopics: empty response"))?;
    match r.error_code {
        0 => Ok(true),
        TOPIC_ALREADY_EXISTS => Ok(false),
        code => bail!(
            "CreateTopics {topic}: {} {}",
            describe_error(code),
            r.error_message.as_ref().map(|m| m.as_str()).unwrap_or("")
        ),
    }
}

/// One topic's current layout for a run, refreshed from Metadata when a request says the leader
/// moved (or a connection to it failed), and the run's retry policy and retry counts.
pub struct Router {
    bootstrap: String,
    pub client_id: String,
    pub topic: String,
    pub policy: RetryPolicy,
    pub stats: RetryStats,
    layout: Mutex<Arc<Layout>>,
    /// When the layout was last refreshed (unix ns).
    refreshed_ns: AtomicU64,
    /// One refresh at a time; holds the admin connection between refreshes.
    refresher: tokio::sync::Mutex<Option<Conn>>,
}

impl Router {
    /// Finds the topic, creating it first when asked to or when it does not exist, and waits
    /// (within the retry timeout) until every partition has a leader.
    pub async fn prepare(
        bootstrap: &str,
        topic: &str,
        create: bool,
        partitions: Option<u32>,
        replication_factor: i16,
        client_id: &str,
        policy: RetryPolicy,
    ) -> Result<Arc<Router>> {
        let mut conn = Conn::open(bootstrap, client_id).await?;
        let existing = if create {
            None
        } else {
            describe(&mut conn, topic).await?
        };
        if existing.is_none() {
            let n = partitions.unwrap_or(8);
            let created = create_topic(&mut conn, topic, n, replication_factor, client_id).await?;
            if created {
                eprintln!(
                    "created topic {topic} ({n} partitions, replication factor {replication_factor})"
                );
            }
        }
        let router = Arc::new(Router {
            bootstrap: bootstrap.to_string(),
            client_id: client_id.to_string(),
            topic: topic.to_string(),
            policy,
            stats: RetryStats::default(),
            layout: Mutex::new(Arc::new(Layout {
                leaders: Vec::new(),
                brokers: BTreeMap::new(),
            })),
            refreshed_ns: AtomicU64::new(0),
            refresher: tokio::sync::Mutex::new(Some(conn)),
        });
        let started = now_ns();
        let mut attempt = 0;
        loop {
            let layout = router.refresh().await;
            if !layout.leaders.is_empty() && layout.leaders.iter().all(|&l| l >= 0) {
                if let Some(want) = partitions {
                    if want != layout.partitions() {
                        eprintln!(
                            "note: topic {topic} has {} partitions (asked for {want}); using all of them",
                            layout.partitions()
                        );
                    }
                }
                return Ok(router);
            }
            attempt += 1;
            let backoff = policy.backoff(attempt);
            let waited = Duration::from_nanos(now_ns() - started);
            if waited + backoff > policy.timeout {
                bail!(
                    "topic {topic}: partitions still without a leader after {:.1} s ({} of {} \
                     have none); raise --retry-timeout-secs if the cluster needs longer",
                    waited.as_secs_f64(),
                    layout.leaders.iter().filter(|&&l| l < 0).count(),
                    layout.leaders.len()
                );
            }
            router
                .stats
                .add(Op::Metadata, Reason::Error(LEADER_NOT_AVAILABLE), 1);
            tokio::time::sleep(backoff).await;
        }
    }

    /// The layout as last seen.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout.lock().expect("lock").clone()
    }

    /// Asks for fresh metadata and returns the new layout. Callers that arrive while a refresh is
    /// under way share its answer. If no broker answers, the last layout stays (a caller then
    /// fails to reach the old leader and retries later, within its retry timeout).
    pub async fn refresh(&self) -> Arc<Layout> {
        let asked = now_ns();
        let mut slot = self.refresher.lock().await;
        if self.refreshed_ns.load(Relaxed) >= asked {
            return self.layout(); // refreshed while we waited for the lock
        }
        let old = self.layout();
        let mut candidates: Vec<String> = Vec::new();
        if let Some(c) = slot.as_ref() {
            candidates.push(c.addr.clone());
        }
        candidates.push(self.bootstrap.clone());
        candidates.extend(old.brokers.values().cloned());
        candidates.dedup();
        for addr in candidates {
            let conn = match slot.take() {
                Some(c) if c.addr == addr => c,
                _ => match Conn::open(&addr, &self.client_id).await {
                    Ok(c) => c,
                    Err(_) => continue,
                },
            };
            let mut conn = conn;
            match describe(&mut conn, &self.topic).await {
                Ok(found) => {
                    let mut layout = found.unwrap_or_else(|| Layout {
                        // Not known (being recreated?): no leaders, callers keep waiting.
                        leaders: vec![-1; old.leaders.len()],
                        brokers: old.brokers.clone(),
                    });
                    // A run keeps the partitions it started with.
                    if !old.leaders.is_empty() {
                        layout.leaders.resize(old.leaders.len(), -1);
                    }
                    let layout = Arc::new(layout);
                    *self.layout.lock().expect("lock") = layout.clone();
                    self.refreshed_ns.store(now_ns(), Relaxed);
                    *slot = Some(conn);
                    return layout;
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    eprintln!("metadata refresh from {addr}: {e:#}");
                    continue;
                }
            }
        }
        self.stats.add(Op::Metadata, Reason::ConnectionClosed, 1);
        old
    }
}

pub const EARLIEST: i64 = -2;
pub const LATEST: i64 = -1;

/// One ListOffsets request to `addr`: (partition, error code, offset) per partition answered.
async fn list_offsets_at(
    addr: &str,
    topic: &str,
    parts: &[u32],
    timestamp: i64,
    client_id: &str,
) -> Result<Vec<(u32, i16, i64)>> {
    let mut conn = Conn::open(addr, client_id).await?;
    let version = conn.versions.pick(ApiKey::ListOffsets, 1, 7)?;
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                parts
                    .iter()
                    .map(|&p| {
                        list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(p as i32)
                            .with_current_leader_epoch(-1)
                            .with_timestamp(timestamp)
                    })
                    .collect(),
            )]);
    let resp = conn.call(&req, version).await?;
    Ok(resp
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index as u32, p.error_code, p.offset))
        .collect())
}

/// Offsets at `timestamp` (EARLIEST or LATEST) of the given partitions, asking each leader.
/// Retriable errors and failed connections are retried after a metadata refresh, with backoff,
/// within the retry timeout.
pub async fn list_offsets(
    router: &Router,
    partitions: &[u32],
    timestamp: i64,
) -> Result<HashMap<u32, i64>> {
    let topic = &router.topic;
    let policy = router.policy;
    let started = now_ns();
    let mut out = HashMap::new();
    let mut pending: Vec<u32> = partitions.to_vec();
    let mut attempt = 0u32;
    loop {
        let layout = if attempt == 0 {
            router.layout()
        } else {
            router.refresh().await
        };
        let mut failed: Vec<(u32, Reason, String)> = Vec::new();
        let mut by_leader: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for &p in &pending {
            match layout.leader_of(p) {
                Some(addr) => by_leader.entry(addr.to_string()).or_default().push(p),
                None => failed.push((
                    p,
                    Reason::Error(LEADER_NOT_AVAILABLE),
                    "no leader in metadata".into(),
                )),
            }
        }
        for (addr, parts) in by_leader {
            match list_offsets_at(&addr, topic, &parts, timestamp, &router.client_id).await {
                Ok(answers) => {
                    for &(p, code, offset) in &answers {
                        if !parts.contains(&p) {
                            continue;
                        }
                        if code == 0 {
                            out.insert(p, offset);
                        } else if is_retriable(code) {
                            failed.push((p, Reason::Error(code), format!("at {addr}")));
                        } else {
                            bail!(
                                "ListOffsets {topic}-{p} at {addr}: {}",
                                describe_error(code)
                            );
                        }
                    }
                    for &p in &parts {
                        if !answers.iter().any(|a| a.0 == p) {
                            bail!("ListOffsets at {addr}: no answer for {topic}-{p}");
                        }
                    }
                }
                Err(e) if is_connection_error(&e) => {
                    for &p in &parts {
                        failed.push((p, Reason::ConnectionClosed, format!("{e:#}")));
                    }
                }
                Err(e) => return Err(e.context(format!("ListOffsets at {addr}"))),
            }
        }
        if failed.is_empty() {
            return Ok(out);
        }
        for (_, reason, _) in &failed {
            router.stats.add(Op::ListOffsets, *reason, 1);
        }
        attempt += 1;
        let backoff = policy.backoff(attempt);
        let waited = Duration::from_nanos(now_ns() - started);
        if waited + backoff > policy.timeout {
            let (p, reason, detail) = &failed[0];
            bail!(
                "ListOffsets {topic}-{p}: still failing ({}, {detail}) after {:.1} s and {attempt} \
                 attempts; raise --retry-timeout-secs if the cluster needs longer",
                reason.label(),
                waited.as_secs_f64()
            );
        }
        pending = failed.into_iter().map(|f| f.0).collect();
        pending.sort_unstable();
        pending.dedup();
        tokio::time::sleep(backoff).await;
    }
}

/// A broker's limit on one record batch: `max.message.bytes` of the topic (which defaults to the
/// broker's `message.max.bytes`), or the broker's own when the topic's cannot be read. `None`
/// when the broker does not answer DescribeConfigs (not every Kafka-compatible broker does).
pub async fn max_message_bytes(router: &Router) -> Option<(usize, String)> {
    let layout = router.layout();
    let addr = layout.leader_of(0).unwrap_or(&router.bootstrap).to_string();
    let mut conn = Conn::open(&addr, &router.client_id).await.ok()?;
    let version = conn.versions.pick(ApiKey::DescribeConfigs, 1, 4).ok()?;
    let broker_id = layout.leaders.first().copied().unwrap_or(0).max(0);
    let resources = [
        (2i8, router.topic.clone(), "max.message.bytes"),
        (4i8, broker_id.to_string(), "message.max.bytes"),
    ];
    for (kind, name, key) in resources {
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(kind)
                .with_resource_name(StrBytes::from_string(name.clone()))
                .with_configuration_keys(Some(vec![StrBytes::from_static_str(key)])),
        ]);
        let Ok(resp) = conn.call(&req, version).await else {
            return None;
        };
        let found = resp
            .results
            .iter()
            .filter(|r| r.error_code == 0)
            .flat_map(|r| r.configs.iter())
            .find(|c| c.name.as_str() == key)
            .and_then(|c| c.value.as_ref()?.as_str().parse::<usize>().ok());
        if let Some(v) = found {
            let whose = if kind == 2 {
                format!("topic {name}")
            } else {
                format!("broker {name}")
            };
            return Some((v, format!("{key} of {whose}")));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn wake_at_of(socket: RawFd) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a c_int of the stated size.
        let result = unsafe {
            libc::getsockopt(
                socket,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(result, 0);
        value
    }

    /// A large frame raises the wake-up threshold while it arrives; the small frame after it
    /// must still be read at once (a threshold left up would leave its reader asleep), and the
    /// threshold is back at the kernel's default between frames.
    #[tokio::test]
    async fn batched_wakeups_read_a_large_frame_then_a_small_one_without_waiting() {
        const LARGE: usize = 3 * WAKE_AT_BYTES + 17;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (go_on, mut told) = tokio::sync::mpsc::channel::<()>(1);
        let writer = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut large = (LARGE as i32).to_be_bytes().to_vec();
            large.extend((0..LARGE).map(|i| i as u8));
            // In pieces, so that the reader waits mid-frame.
            for piece in large.chunks(100_000) {
                socket.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            told.recv().await.unwrap();
            socket.write_all(&4i32.to_be_bytes()).await.unwrap();
            socket.write_all(b"end!").await.unwrap();
            // The connection stays open: the small frame alone must wake the reader.
            told.recv().await;
        });
        let stream = TcpStream::connect(address).await.unwrap();
        let socket = stream.as_raw_fd();
        let (rd, _wr) = stream.into_split();
        let mut reader = FrameReader::with_batched_wakeups(rd, 64 << 10, socket);
        let frame = reader.next().await.unwrap();
        assert_eq!(frame.len(), LARGE);
        assert!(frame.iter().enumerate().all(|(i, &b)| b == i as u8));
        assert_eq!(wake_at_of(socket), 1, "back to the default after the frame");
        go_on.send(()).await.unwrap();
        let small = tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .expect("the small frame woke the reader")
            .unwrap();
        assert_eq!(&small[..], b"end!");
        drop(go_on);
        writer.await.unwrap();
    }
}
