//! The consumer: Fetch requests for disjoint partition groups, several outstanding per broker.
//!
//! Partitions are assigned directly (consumer `c` of `n` takes partitions `p % n == c`); there is
//! no consumer group, so no coordinator, joins or offset commits are involved. A partition's next
//! fetch offset is only known once its previous response is in, so pipelining is across
//! partitions: each broker's partitions are split into `--fetch-in-flight` groups, each with one
//! fetch outstanding. For throughput runs the groups' fetches are pipelined on one connection; for
//! end-to-end latency each group gets its own connection, because brokers that serve a
//! connection's requests one at a time (Apache Kafka does) would make a long-polling fetch delay
//! the fetches queued behind it.
//!
//! Records are counted from batch headers (`record_count`); values are parsed only when
//! end-to-end latency is wanted.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchTopic},
    ApiKey, BrokerId, FetchRequest, FetchResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::cli::ConsumeOpts;
use crate::client::{encode_request, read_frame, Conn, Layout, ERR_OFFSET_OUT_OF_RANGE};
use crate::clock::now_ns;
use crate::payload::read_stamp;
use crate::stats::{record_ns, Live, Tally};
use crate::wire;

/// Fetch versions used: v4 is the first with RecordBatch v2, v12 the last addressing topics by
/// name (v13 switched to topic ids).
const FETCH_MIN_VERSION: i16 = 4;
const FETCH_MAX_VERSION: i16 = 12;

pub struct Plan {
    pub opts: ConsumeOpts,
    pub layout: Layout,
    pub client_id: String,
    pub start_offsets: HashMap<u32, i64>,
    /// Stop reading a partition at this offset (catch-up reads).
    pub end_offsets: Option<HashMap<u32, i64>>,
    pub measure_start_ns: u64,
    /// Parse values for end-to-end latency.
    pub parse_values: bool,
    /// Count a record as measured by its send stamp (e2e: the same records the producers
    /// measured), not by when it arrived.
    pub measure_by_send_time: bool,
    /// One connection per fetch group instead of pipelining groups on one connection.
    pub connection_per_group: bool,
    pub live: Arc<Live>,
    /// Measured records across all consumers, for `messages`.
    pub measured: AtomicU64,
    pub messages: Option<u64>,
    pub stop_tx: watch::Sender<bool>,
}

/// The fetch tasks of consumer `index` of `count`: (leader address, partition groups).
pub fn assignments(
    plan: &Plan,
    index: usize,
    count: usize,
) -> Result<Vec<(String, Vec<Vec<u32>>)>> {
    let mine: Vec<u32> = (0..plan.layout.partitions())
        .filter(|p| *p as usize % count == index)
        .collect();
    let mut tasks = Vec::new();
    for (addr, parts) in plan.layout.by_leader(&mine)? {
        let n = plan.opts.fetch_in_flight.clamp(1, parts.len());
        let mut groups = vec![Vec::new(); n];
        for (i, p) in parts.into_iter().enumerate() {
            groups[i % n].push(p);
        }
        if plan.connection_per_group {
            tasks.extend(groups.into_iter().map(|g| (addr.clone(), vec![g])));
        } else {
            tasks.push((addr, groups));
        }
    }
    Ok(tasks)
}

struct PartState {
    offset: i64,
    end: Option<i64>,
    done: bool,
}

/// Fetches the groups' partitions from one broker until stopped or every partition is done.
pub async fn run_conn(plan: Arc<Plan>, addr: String, groups: Vec<Vec<u32>>) -> Result<Tally> {
    let opts = &plan.opts;
    let conn = Conn::open(&addr, &plan.client_id).await?;
    let version = conn
        .versions
        .pick(ApiKey::Fetch, FETCH_MIN_VERSION, FETCH_MAX_VERSION)?;
    let header_version = ApiKey::Fetch.response_header_version(version);
    let (rd, mut wr) = conn.stream.into_split();
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut stop = plan.stop_tx.subscribe();
    let topic = TopicName(StrBytes::from_string(plan.layout.topic.clone()));

    let mut state: HashMap<u32, PartState> = HashMap::new();
    for g in &groups {
        for &p in g {
            let offset = plan.start_offsets[&p];
            let end = plan.end_offsets.as_ref().map(|e| e[&p]);
            state.insert(
                p,
                PartState {
                    offset,
                    end,
                    done: end.is_some_and(|e| offset >= e),
                },
            );
        }
    }

    let mut tally = Tally::default();
    let mut wbuf = BytesMut::with_capacity(4096);
    let mut rbuf = BytesMut::with_capacity(1 << 20);
    let mut correlation = 0i32;
    let mut in_flight: VecDeque<(i32, usize)> = VecDeque::new();

    // Builds and writes group `g`'s fetch; false when all its partitions are done.
    macro_rules! send_fetch {
        ($g:expr) => {{
            let g: usize = $g;
            let parts: Vec<FetchPartition> = groups[g]
                .iter()
                .filter(|p| !state[p].done)
                .map(|&p| {
                    FetchPartition::default()
                        .with_partition(p as i32)
                        .with_current_leader_epoch(-1)
                        .with_fetch_offset(state[&p].offset)
                        .with_log_start_offset(-1)
                        .with_partition_max_bytes(opts.partition_max_bytes)
                })
                .collect();
            if parts.is_empty() {
                false
            } else {
                let req = FetchRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_max_wait_ms(opts.max_wait_ms)
                    .with_min_bytes(opts.min_bytes)
                    .with_max_bytes(opts.fetch_max_bytes)
                    .with_isolation_level(0)
                    .with_session_id(0)
                    .with_session_epoch(-1)
                    .with_topics(vec![FetchTopic::default()
                        .with_topic(topic.clone())
                        .with_partitions(parts)]);
                correlation = correlation.wrapping_add(1);
                wbuf.clear();
                encode_request(&mut wbuf, &req, version, correlation, &plan.client_id)?;
                wr.write_all(&wbuf)
                    .await
                    .with_context(|| format!("writing Fetch to {addr}"))?;
                in_flight.push_back((correlation, g));
                true
            }
        }};
    }

    if *stop.borrow() {
        return Ok(tally);
    }
    for g in 0..groups.len() {
        send_fetch!(g);
    }

    while let Some(&(expected, g)) = in_flight.front() {
        tokio::select! {
            r = read_frame(&mut rd, &mut rbuf) => r.with_context(|| format!("reading Fetch response from {addr}"))?,
            _ = stop.wait_for(|s| *s) => break,
        }
        in_flight.pop_front();
        let now = now_ns();
        let mut frame: Bytes = rbuf.split().freeze();
        let mut body = frame.clone();
        let header = ResponseHeader::decode(&mut body, header_version)?;
        if header.correlation_id != expected {
            bail!(
                "Fetch response correlation id {} != {expected}",
                header.correlation_id
            );
        }
        let resp = FetchResponse::decode(&mut body, version)?;
        drop(body);
        let mut backoff = resp.error_code != 0;
        if resp.error_code != 0 {
            plan.live.errors.fetch_add(1, Relaxed);
        }
        let mut measured_msgs = 0u64;
        for t in &resp.responses {
            for pd in &t.partitions {
                let p = pd.partition_index as u32;
                let Some(st) = state.get_mut(&p) else {
                    continue;
                };
                if pd.error_code != 0 {
                    plan.live.errors.fetch_add(1, Relaxed);
                    if pd.error_code == ERR_OFFSET_OUT_OF_RANGE && pd.log_start_offset > st.offset {
                        st.offset = pd.log_start_offset; // data deleted under us: skip ahead
                    } else {
                        backoff = true;
                    }
                    continue;
                }
                let Some(records) = &pd.records else {
                    continue;
                };
                let m = consume_records(&plan, st, records, now, &mut tally)?;
                measured_msgs += m;
                if st.end.is_some_and(|e| st.offset >= e) {
                    st.done = true;
                }
            }
        }
        drop(resp);
        // Take the read buffer back if nothing else holds the frame.
        frame.clear();
        if let Ok(b) = frame.try_into_mut() {
            rbuf = b;
        }
        if measured_msgs > 0 {
            let total = plan.measured.fetch_add(measured_msgs, Relaxed) + measured_msgs;
            if plan.messages.is_some_and(|m| total >= m) {
                let _ = plan.stop_tx.send(true);
            }
        }
        if *stop.borrow() {
            break;
        }
        if backoff {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        send_fetch!(g);
    }
    Ok(tally)
}

/// Accounts one partition's fetched records and advances its offset; returns how many count
/// toward the measured figures.
fn consume_records(
    plan: &Plan,
    st: &mut PartState,
    records: &[u8],
    now: u64,
    tally: &mut Tally,
) -> Result<u64> {
    let fetch_offset = st.offset;
    let mut total = 0u64;
    let mut total_bytes = 0u64;
    let mut measured = 0u64;
    for (h, batch) in wire::batches(records) {
        if h.last_offset() < fetch_offset {
            continue; // a batch straddling the fetch offset, already counted
        }
        st.offset = h.last_offset() + 1;
        if h.is_control() {
            continue;
        }
        let n = if h.base_offset < fetch_offset {
            (h.last_offset() - fetch_offset + 1) as u64
        } else {
            h.record_count.max(0) as u64
        };
        total += n;
        total_bytes += h.total_len as u64;
        if !plan.measure_by_send_time && now >= plan.measure_start_ns {
            measured += n;
            tally.bytes += h.total_len as u64;
        }
        if plan.parse_values {
            let mut by_stamp = 0u64;
            // Latency only for records sent after the warm-up (and by this harness's stamp).
            wire::for_each_value(&h, batch, |offset, value| {
                if offset < fetch_offset {
                    return;
                }
                if let Some(sent) = value.and_then(read_stamp) {
                    if sent >= plan.measure_start_ns {
                        by_stamp += 1;
                        record_ns(&mut tally.hist, now.saturating_sub(sent));
                    }
                }
            })?;
            if plan.measure_by_send_time && by_stamp > 0 {
                measured += by_stamp;
                tally.bytes += h.total_len as u64 * by_stamp / n.max(1);
            }
        }
    }
    if measured > 0 {
        tally.msgs += measured;
        tally.last_ns = tally.last_ns.max(now);
    }
    plan.live.add(total, total_bytes);
    Ok(measured)
}

pub fn validate(opts: &ConsumeOpts) -> Result<()> {
    if opts.consumers == 0 || opts.fetch_in_flight == 0 {
        bail!("--consumers and --fetch-in-flight must be at least 1");
    }
    if opts.partition_max_bytes <= 0 || opts.fetch_max_bytes <= 0 {
        bail!("fetch sizes must be positive");
    }
    Ok(())
}
