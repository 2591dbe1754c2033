//! Connections, framing, version negotiation and the admin requests (Metadata, CreateTopics,
//! ListOffsets). Nothing here assumes which broker is on the other end: versions come from
//! ApiVersions, leaders and their addresses from Metadata.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    create_topics_request::CreatableTopic, list_offsets_request, metadata_request, ApiKey,
    ApiVersionsRequest, BrokerId, CreateTopicsRequest, ListOffsetsRequest, MetadataRequest,
    MetadataResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response frame accepted: a length read from the network never sizes an allocation
/// unchecked.
pub const MAX_FRAME_BYTES: usize = 256 << 20;

pub const ERR_UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const ERR_TOPIC_ALREADY_EXISTS: i16 = 36;
pub const ERR_OFFSET_OUT_OF_RANGE: i16 = 1;

/// Kafka error codes a producer retries (Kafka's `RetriableException` subclasses that occur on
/// produce).
pub fn is_retriable(code: i16) -> bool {
    matches!(code, 2 | 3 | 5 | 6 | 7 | 13 | 19 | 20 | 56 | 89)
}

/// Reads one size-prefixed frame into `buf` (cleared first), without zero-filling it.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> Result<()> {
    let len = r.read_i32().await.context("reading frame size")?;
    if len < 4 || len as usize > MAX_FRAME_BYTES {
        bail!("bad frame size {len}");
    }
    let len = len as usize;
    buf.clear();
    buf.reserve(len);
    while buf.len() < len {
        let want = len - buf.len();
        let mut lim = (&mut *buf).limit(want);
        if r.read_buf(&mut lim).await? == 0 {
            bail!("connection closed mid-frame");
        }
    }
    Ok(())
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

    /// Sends one request and waits for its response.
    pub async fn call<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response> {
        let correlation = self.next_correlation();
        let mut buf = BytesMut::with_capacity(256);
        encode_request(&mut buf, req, version, correlation, &self.client_id)?;
        self.stream.write_all(&buf).await?;
        read_frame(&mut self.stream, &mut self.rbuf)
            .await
            .with_context(|| format!("reading {:?} response from {}", R::KEY, self.addr))?;
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

fn topic_name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

/// Where a topic's partitions live.
#[derive(Clone, Debug)]
pub struct Layout {
    pub topic: String,
    /// Leader broker id of each partition, indexed by partition id.
    pub leaders: Vec<i32>,
    /// Advertised `host:port` of each broker.
    pub brokers: BTreeMap<i32, String>,
}

impl Layout {
    pub fn partitions(&self) -> u32 {
        self.leaders.len() as u32
    }

    pub fn leader_addr(&self, partition: u32) -> Result<&str> {
        let id = self.leaders[partition as usize];
        self.brokers
            .get(&id)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("partition {partition}: leader {id} not among the brokers"))
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

/// The topic's layout, or `None` if the broker does not know the topic.
pub async fn describe(conn: &mut Conn, topic: &str) -> Result<Option<Layout>> {
    let resp = metadata(conn, Some(&[topic])).await?;
    let Some(t) = resp.topics.first() else {
        return Ok(None);
    };
    if t.error_code == ERR_UNKNOWN_TOPIC_OR_PARTITION {
        return Ok(None);
    }
    if t.error_code != 0 {
        bail!("metadata for {topic}: error {}", t.error_code);
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
    Ok(Some(Layout {
        topic: topic.to_string(),
        leaders,
        brokers,
    }))
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
        ERR_TOPIC_ALREADY_EXISTS => Ok(false),
        code => bail!(
            "CreateTopics {topic}: error {code} {}",
            r.error_message.as_ref().map(|m| m.as_str()).unwrap_or("")
        ),
    }
}

/// Finds the topic, creating it first when asked to or when it does not exist, and waits until
/// every partition has a leader.
pub async fn prepare_topic(
    bootstrap: &str,
    topic: &str,
    create: bool,
    partitions: Option<u32>,
    replication_factor: i16,
    client_id: &str,
) -> Result<Layout> {
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(layout) = describe(&mut conn, topic).await? {
            if !layout.leaders.is_empty() && layout.leaders.iter().all(|&l| l >= 0) {
                if let Some(want) = partitions {
                    if want != layout.partitions() {
                        eprintln!(
                            "note: topic {topic} has {} partitions (asked for {want}); using all of them",
                            layout.partitions()
                        );
                    }
                }
                return Ok(layout);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("topic {topic}: partitions still without a leader after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub const EARLIEST: i64 = -2;
pub const LATEST: i64 = -1;

/// Offsets at `timestamp` (EARLIEST or LATEST) of the given partitions, asking each leader.
pub async fn list_offsets(
    layout: &Layout,
    partitions: &[u32],
    timestamp: i64,
    client_id: &str,
) -> Result<HashMap<u32, i64>> {
    let mut out = HashMap::new();
    for (addr, parts) in layout.by_leader(partitions)? {
        let mut conn = Conn::open(&addr, client_id).await?;
        let version = conn.versions.pick(ApiKey::ListOffsets, 1, 7)?;
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(topic_name(&layout.topic))
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
        for t in &resp.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    bail!(
                        "ListOffsets {}-{} at {addr}: error {}",
                        layout.topic,
                        p.partition_index,
                        p.error_code
                    );
                }
                out.insert(p.partition_index as u32, p.offset);
            }
        }
    }
    for p in partitions {
        if !out.contains_key(p) {
            bail!("ListOffsets: no answer for partition {p}");
        }
    }
    Ok(out)
}
