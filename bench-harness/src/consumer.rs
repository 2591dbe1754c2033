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
//! A partition answered with a retriable error (its leader moved or is being elected), or whose
//! connection closed or stopped answering, is parked: after a backoff the topic's metadata is
//! refreshed and the partition goes back to its group, or is handed to the fetch task of its new
//! leader (started if there is none), at the offset it had reached. A partition that keeps
//! failing for `--retry-timeout-secs` fails the run.
//!
//! Each group keeps a fetch session with its leader (KIP-227, `--fetch-sessions on`, Fetch v7+):
//! the first request is a full fetch that asks for one (session id 0, epoch 0); later requests
//! carry the broker's session id and the next epoch, and name only the partitions whose fetch
//! offset changed since the broker last heard it (new ones included) plus, as forgotten, those
//! the group stopped reading. A partition left out keeps its last fetch offset in the broker's
//! session, so only partitions the last response brought nothing for (or that errored and were
//! taken out) are left out. A broker that answers session id 0 gets full fetches; one that lost
//! the session (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH) gets a new one.
//!
//! Records are counted from batch headers (`record_count`); values are parsed only when
//! end-to-end latency is wanted.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchTopic, ForgottenTopic},
    ApiKey, BrokerId, FetchRequest, FetchResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use std::os::fd::AsRawFd;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};

use crate::cli::{ConsumeOpts, OnOff};
use crate::client::{encode_request, is_connection_error, Conn, FrameReader, Router};
use crate::clock::{self, now_ns};
use crate::payload::read_stamp;
use crate::retry::{
    describe_error, is_retriable, Op, Reason, FETCH_SESSION_ID_NOT_FOUND,
    INVALID_FETCH_SESSION_EPOCH, LEADER_NOT_AVAILABLE, OFFSET_OUT_OF_RANGE,
};
use crate::stats::{record_ns, Live, Tally};
use crate::wire;

/// Fetch versions used: v4 is the first with RecordBatch v2, v12 the last addressing topics by
/// name (v13 switched to topic ids).
const FETCH_MIN_VERSION: i16 = 4;
const FETCH_MAX_VERSION: i16 = 12;

/// How long past its `max_wait_ms` a fetch may go unanswered before the connection is dropped.
const FETCH_NO_RESPONSE: Duration = Duration::from_secs(30);

pub struct Plan {
    pub opts: ConsumeOpts,
    pub router: Arc<Router>,
    pub partitions: u32,
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
    pub pool: Pool,
    pub sessions: SessionStats,
}

impl Plan {
    fn topic(&self) -> &str {
        &self.router.topic
    }

    /// What the run's fetches did with sessions, for the report.
    pub fn fetch_sessions(&self) -> FetchSessions {
        let s = &self.sessions;
        let established = s.established.load(Relaxed);
        FetchSessions {
            requested: self.opts.fetch_sessions == OnOff::On,
            used: established > 0,
            sessions_opened: established,
            full_requests: s.full.load(Relaxed),
            incremental_requests: s.incremental.load(Relaxed),
            session_restarts: s.restarts.load(Relaxed),
            stale_records: s.stale_records.load(Relaxed),
        }
    }
}

/// Fetch session counters, shared by a run's fetch tasks.
#[derive(Default)]
pub struct SessionStats {
    full: AtomicU64,
    incremental: AtomicU64,
    restarts: AtomicU64,
    established: AtomicU64,
    stale_records: AtomicU64,
}

/// What a run reports as `fetch_sessions`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FetchSessions {
    /// `--fetch-sessions on`.
    pub requested: bool,
    /// The broker opened at least one session.
    pub used: bool,
    pub sessions_opened: u64,
    /// Fetches naming every partition (no session, or the first of one).
    pub full_requests: u64,
    /// Fetches naming only changed partitions.
    pub incremental_requests: u64,
    /// Sessions the broker lost (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH).
    pub session_restarts: u64,
    /// Records received again below their partition's fetch offset (whole batches): what a
    /// session that missed an offset update would show. 0 on a correct run.
    pub stale_records: u64,
}

impl FetchSessions {
    pub fn line(&self) -> String {
        let state = match (self.requested, self.used) {
            (false, _) => "off",
            (true, true) => "on",
            (true, false) => "requested, broker opened none",
        };
        format!(
            "{state}; {} full and {} incremental fetches, {} session restarts, {} stale records",
            self.full_requests,
            self.incremental_requests,
            self.session_restarts,
            self.stale_records
        )
    }
}

/// Where a partition's reading stands; travels with it when its leader moves.
#[derive(Clone, Debug)]
pub struct PartState {
    offset: i64,
    end: Option<i64>,
    done: bool,
    /// When the partition's current run of failures began (unix ns).
    error_since: Option<u64>,
    /// Failures in the current run, for the backoff.
    attempts: u32,
}

/// A partition moving to the fetch task of its new leader.
pub struct Handoff {
    partition: u32,
    state: PartState,
}

/// The fetch tasks of a run: by leader address (for hand-offs), and their handles.
#[derive(Default)]
pub struct Pool {
    routes: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Handoff>>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<Result<Tally>>>>,
}

/// Starts the fetch tasks of every consumer.
pub fn start(plan: &Arc<Plan>) -> Result<()> {
    let layout = plan.router.layout();
    let n = plan.opts.consumers;
    for index in 0..n {
        let mine: Vec<u32> = (0..plan.partitions)
            .filter(|p| *p as usize % n == index)
            .collect();
        for (addr, parts) in layout.by_leader(&mine)? {
            let groups = plan.opts.fetch_in_flight.clamp(1, parts.len());
            let mut split: Vec<Vec<Handoff>> = (0..groups).map(|_| Vec::new()).collect();
            for (i, p) in parts.into_iter().enumerate() {
                let offset = plan.start_offsets[&p];
                let end = plan.end_offsets.as_ref().map(|e| e[&p]);
                split[i % groups].push(Handoff {
                    partition: p,
                    state: PartState {
                        offset,
                        end,
                        done: end.is_some_and(|e| offset >= e),
                        error_since: None,
                        attempts: 0,
                    },
                });
            }
            if plan.connection_per_group {
                for g in split {
                    spawn_task(plan, &addr, vec![g]);
                }
            } else {
                spawn_task(plan, &addr, split);
            }
        }
    }
    Ok(())
}

fn spawn_task(plan: &Arc<Plan>, addr: &str, groups: Vec<Vec<Handoff>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    plan.pool
        .routes
        .lock()
        .expect("lock")
        .entry(addr.to_string())
        .or_default()
        .push(tx.clone());
    let h = tokio::spawn(run_conn(plan.clone(), addr.to_string(), groups, tx, rx));
    plan.pool.tasks.lock().expect("lock").push(h);
}

/// Gives a partition to a fetch task for `addr`, starting one if there is none.
fn dispatch(plan: &Arc<Plan>, addr: &str, mut h: Handoff) {
    {
        let mut routes = plan.pool.routes.lock().expect("lock");
        if let Some(senders) = routes.get_mut(addr) {
            while let Some(tx) = senders.first() {
                match tx.send(h) {
                    Ok(()) => return,
                    Err(mpsc::error::SendError(back)) => {
                        h = back;
                        senders.remove(0);
                    }
                }
            }
        }
    }
    spawn_task(plan, addr, vec![vec![h]]);
}

/// Waits for every fetch task (including those started along the way); the first error stops
/// the others.
pub async fn join(plan: &Arc<Plan>) -> Result<Tally> {
    let mut total = Tally::default();
    let mut first_err: Option<anyhow::Error> = None;
    loop {
        let handles: Vec<_> = std::mem::take(&mut *plan.pool.tasks.lock().expect("lock"));
        if handles.is_empty() {
            break;
        }
        for h in handles {
            match h.await {
                Ok(Ok(t)) => total.merge(&t),
                Ok(Err(e)) => {
                    if first_err.is_none() {
                        let _ = plan.stop_tx.send(true);
                        first_err = Some(e);
                    }
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    let _ = plan.stop_tx.send(true);
                    first_err.get_or_insert(anyhow!("fetch task failed: {e}"));
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// A fetch group: partitions with at most one fetch outstanding.
#[derive(Default)]
struct Group {
    parts: Vec<u32>,
    in_flight: bool,
    session: Session,
}

/// The group's fetch session with its leader (KIP-227).
#[derive(Default)]
struct Session {
    /// 0: none; the next fetch is a full one asking for a session (epoch 0).
    id: i32,
    /// The epoch the next incremental fetch carries.
    epoch: i32,
    /// The fetch offset the broker's session holds for each partition in it: the last one sent.
    known: HashMap<u32, i64>,
}

impl Session {
    fn next_epoch(epoch: i32) -> i32 {
        if epoch == i32::MAX {
            1
        } else {
            epoch + 1
        }
    }
}

/// An open connection to the leader.
struct Io {
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    version: i16,
}

/// A fetch awaiting its response.
struct Pending {
    correlation: i32,
    group: usize,
    /// Partitions the request named.
    sent: Vec<u32>,
    /// Its session epoch: -1 without a session, 0 for a full fetch opening one.
    epoch: i32,
    deadline_ns: u64,
}

/// A partition waiting out a backoff before it is routed again.
struct Parked {
    partition: u32,
    group: usize,
    not_before_ns: u64,
}

enum Event {
    Stop,
    Frame(Result<Bytes>),
    Handoff(Option<Handoff>),
    Unpark,
    Timeout,
}

/// One fetch task: the partition groups it reads from one leader, over one connection.
struct Task {
    plan: Arc<Plan>,
    addr: String,
    topic: TopicName,
    io: Option<Io>,
    groups: Vec<Group>,
    state: HashMap<u32, PartState>,
    pending: VecDeque<Pending>,
    parked: Vec<Parked>,
    correlation: i32,
    wbuf: BytesMut,
    tally: Tally,
    /// Fetch sessions asked for and the broker's Fetch version allows them.
    sessions: bool,
}

async fn next_frame(io: &mut Option<Io>, reading: bool) -> Result<Bytes> {
    match io {
        Some(io) if reading => io.reader.next().await,
        _ => std::future::pending().await,
    }
}

/// Fetches its partitions from one broker until stopped or every partition is done (or gone to
/// another leader).
async fn run_conn(
    plan: Arc<Plan>,
    addr: String,
    groups: Vec<Vec<Handoff>>,
    me: mpsc::UnboundedSender<Handoff>,
    mut rx: mpsc::UnboundedReceiver<Handoff>,
) -> Result<Tally> {
    let mut t = Task {
        topic: TopicName(StrBytes::from_string(plan.topic().to_string())),
        plan: plan.clone(),
        addr: addr.clone(),
        io: None,
        groups: Vec::new(),
        state: HashMap::new(),
        pending: VecDeque::new(),
        parked: Vec::new(),
        correlation: 0,
        wbuf: BytesMut::with_capacity(4096),
        tally: Tally::default(),
        sessions: false,
    };
    for g in groups {
        let mut group = Group::default();
        for h in g {
            group.parts.push(h.partition);
            t.state.insert(h.partition, h.state);
        }
        t.groups.push(group);
    }
    let result = t.run(&mut rx).await;
    // Hand on anything that arrived while this task was finishing.
    if let Some(senders) = plan.pool.routes.lock().expect("lock").get_mut(&addr) {
        senders.retain(|tx| !tx.same_channel(&me));
    }
    rx.close();
    if !*plan.stop_tx.borrow() {
        while let Ok(h) = rx.try_recv() {
            dispatch(&plan, &addr, h);
        }
    }
    result?;
    Ok(t.tally)
}

impl Task {
    async fn run(&mut self, rx: &mut mpsc::UnboundedReceiver<Handoff>) -> Result<()> {
        let mut stop = self.plan.stop_tx.subscribe();
        if *stop.borrow() {
            return Ok(());
        }
        self.connect_or_park().await?;
        for g in 0..self.groups.len() {
            self.send_fetch(g).await?;
        }
        let mut rx_open = true;
        loop {
            if self.pending.is_empty() && self.parked.is_empty() {
                return Ok(()); // every partition done, or moved to another task
            }
            let reading = !self.pending.is_empty();
            let unpark_at = self.parked.iter().map(|p| p.not_before_ns).min();
            let timeout_at = self.pending.front().map(|p| p.deadline_ns);
            let ev = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => Event::Stop,
                r = next_frame(&mut self.io, reading) => Event::Frame(r),
                h = rx.recv(), if rx_open => Event::Handoff(h),
                _ = sleep_until_ns(unpark_at) => Event::Unpark,
                _ = sleep_until_ns(timeout_at) => Event::Timeout,
            };
            match ev {
                Event::Stop => return Ok(()),
                Event::Frame(Ok(frame)) => {
                    self.on_response(frame).await?;
                    if *stop.borrow() {
                        return Ok(());
                    }
                }
                Event::Frame(Err(e)) if is_connection_error(&e) => {
                    self.connection_failed(Reason::ConnectionClosed)?;
                }
                Event::Frame(Err(e)) => {
                    return Err(e.context(format!("reading Fetch response from {}", self.addr)))
                }
                Event::Timeout => self.connection_failed(Reason::NoResponse)?,
                Event::Handoff(None) => rx_open = false,
                Event::Handoff(Some(h)) => {
                    let g = (0..self.groups.len())
                        .min_by_key(|&g| self.groups[g].parts.len())
                        .unwrap_or(0);
                    if self.groups.is_empty() {
                        self.groups.push(Group::default());
                    }
                    self.state.insert(h.partition, h.state);
                    self.parked.push(Parked {
                        partition: h.partition,
                        group: g,
                        not_before_ns: 0,
                    });
                    self.unpark().await?;
                }
                Event::Unpark => self.unpark().await?,
            }
        }
    }

    /// Opens the connection if there is none; on failure every partition is parked.
    async fn connect_or_park(&mut self) -> Result<bool> {
        if self.io.is_some() {
            return Ok(true);
        }
        match Conn::open(&self.addr, &self.plan.client_id).await {
            Ok(conn) => {
                let version =
                    conn.versions
                        .pick(ApiKey::Fetch, FETCH_MIN_VERSION, FETCH_MAX_VERSION)?;
                let socket = conn.stream.as_raw_fd();
                let (rd, writer) = conn.stream.into_split();
                self.sessions = self.plan.opts.fetch_sessions == OnOff::On && version >= 7;
                self.io = Some(Io {
                    // The descriptor lives as long as `rd`, which the reader owns.
                    reader: FrameReader::with_batched_wakeups(rd, 1 << 20, socket),
                    writer,
                    version,
                });
                Ok(true)
            }
            Err(e) if is_connection_error(&e) => {
                self.connection_failed(Reason::ConnectionClosed)?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The connection broke or went silent: every partition it served waits out a backoff.
    fn connection_failed(&mut self, reason: Reason) -> Result<()> {
        self.io = None;
        self.pending.clear();
        for g in 0..self.groups.len() {
            self.groups[g].in_flight = false;
            // The broker may keep the session, but where its epoch stands is unknown now.
            self.groups[g].session = Session::default();
            for p in std::mem::take(&mut self.groups[g].parts) {
                self.park(p, g, reason)?;
            }
        }
        Ok(())
    }

    /// Takes `p` out of its group for a backoff; fails the run once it has been failing for
    /// longer than the retry timeout.
    fn park(&mut self, p: u32, group: usize, reason: Reason) -> Result<()> {
        let now = now_ns();
        let policy = self.plan.router.policy;
        self.groups[group].parts.retain(|&q| q != p);
        let st = self.state.get_mut(&p).expect("owned partition");
        if st.done {
            return Ok(()); // nothing more to read from it
        }
        let since = *st.error_since.get_or_insert(now);
        st.attempts += 1;
        if now - since > policy.timeout_ns() {
            bail!(
                "fetch {}-{p} from {}: still failing ({}) after {:.1} s and {} attempts; raise \
                 --retry-timeout-secs if the cluster needs longer",
                self.plan.topic(),
                self.addr,
                reason.label(),
                (now - since) as f64 / 1e9,
                st.attempts
            );
        }
        self.plan.router.stats.add(Op::Fetch, reason, 1);
        self.plan.live.retries.fetch_add(1, Relaxed);
        self.parked.push(Parked {
            partition: p,
            group,
            not_before_ns: now + policy.backoff_ns(st.attempts),
        });
        Ok(())
    }

    /// Routes the partitions whose backoff is over: back into their group if this broker still
    /// leads them, to another task if the leader moved, or parked again if there is none yet.
    async fn unpark(&mut self) -> Result<()> {
        let now = now_ns();
        let due: Vec<Parked> = {
            let (due, wait) = std::mem::take(&mut self.parked)
                .into_iter()
                .partition(|p| p.not_before_ns <= now);
            self.parked = wait;
            due
        };
        if due.is_empty() {
            return Ok(());
        }
        // A hand-off arriving (not_before 0) needs no fresh metadata.
        let retrying = due.iter().any(|p| self.state[&p.partition].attempts > 0);
        let layout = if retrying {
            self.plan.router.refresh().await
        } else {
            self.plan.router.layout()
        };
        let mut here = Vec::new();
        for Parked {
            partition, group, ..
        } in due
        {
            match layout.leader_of(partition) {
                Some(a) if a == self.addr => here.push((partition, group)),
                Some(a) => {
                    let a = a.to_string();
                    let state = self.state.remove(&partition).expect("owned partition");
                    dispatch(&self.plan, &a, Handoff { partition, state });
                }
                None => {
                    self.groups[group].parts.retain(|&q| q != partition);
                    self.park(partition, group, Reason::Error(LEADER_NOT_AVAILABLE))?;
                }
            }
        }
        if here.is_empty() || !self.connect_or_park_these(&here).await? {
            return Ok(());
        }
        let mut groups: Vec<usize> = here.iter().map(|&(_, g)| g).collect();
        for (p, g) in here {
            if !self.groups[g].parts.contains(&p) {
                self.groups[g].parts.push(p);
            }
        }
        groups.sort_unstable();
        groups.dedup();
        for g in groups {
            if !self.groups[g].in_flight {
                self.send_fetch(g).await?;
            }
        }
        Ok(())
    }

    /// Makes sure there is a connection for partitions coming back; parks them again if not.
    async fn connect_or_park_these(&mut self, here: &[(u32, usize)]) -> Result<bool> {
        if self.io.is_some() {
            return Ok(true);
        }
        // Partitions still in groups are parked by a failed connect; these are not in one yet.
        for &(p, g) in here {
            if !self.groups[g].parts.contains(&p) {
                self.groups[g].parts.push(p);
            }
        }
        self.connect_or_park().await
    }

    /// Builds and writes group `g`'s fetch (nothing when all its partitions are done).
    async fn send_fetch(&mut self, g: usize) -> Result<()> {
        let Some(io) = self.io.as_mut() else {
            return Ok(());
        };
        let opts = &self.plan.opts;
        let active: Vec<u32> = self.groups[g]
            .parts
            .iter()
            .copied()
            .filter(|p| !self.state[p].done)
            .collect();
        if active.is_empty() {
            return Ok(());
        }
        let state = &self.state;
        let (session_id, epoch, sent, forgotten) = if self.sessions {
            let s = &mut self.groups[g].session;
            if s.id == 0 {
                // Full fetch, asking for a session that starts from these offsets.
                s.known = active.iter().map(|&p| (p, state[&p].offset)).collect();
                (0, 0, active, Vec::new())
            } else {
                let in_session = active.iter().filter(|p| s.known.contains_key(p)).count();
                let forgotten: Vec<u32> = if in_session == s.known.len() {
                    Vec::new() // the common case: nobody left the group
                } else {
                    let keep: std::collections::HashSet<u32> = active.iter().copied().collect();
                    s.known
                        .keys()
                        .copied()
                        .filter(|p| !keep.contains(p))
                        .collect()
                };
                for p in &forgotten {
                    s.known.remove(p);
                }
                let changed: Vec<u32> = active
                    .into_iter()
                    .filter(|p| s.known.get(p) != Some(&state[p].offset))
                    .collect();
                for &p in &changed {
                    s.known.insert(p, state[&p].offset);
                }
                (s.id, s.epoch, changed, forgotten)
            }
        } else {
            (0, -1, active, Vec::new())
        };
        let counter = if epoch > 0 {
            &self.plan.sessions.incremental
        } else {
            &self.plan.sessions.full
        };
        counter.fetch_add(1, Relaxed);
        let parts: Vec<FetchPartition> = sent
            .iter()
            .map(|&p| {
                FetchPartition::default()
                    .with_partition(p as i32)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(self.state[&p].offset)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(opts.partition_max_bytes)
            })
            .collect();
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(opts.max_wait_ms)
            .with_min_bytes(opts.min_bytes)
            .with_max_bytes(opts.fetch_max_bytes)
            .with_isolation_level(0)
            .with_session_id(session_id)
            .with_session_epoch(epoch)
            .with_topics(if parts.is_empty() {
                Vec::new()
            } else {
                vec![FetchTopic::default()
                    .with_topic(self.topic.clone())
                    .with_partitions(parts)]
            })
            .with_forgotten_topics_data(if forgotten.is_empty() {
                Vec::new()
            } else {
                vec![ForgottenTopic::default()
                    .with_topic(self.topic.clone())
                    .with_partitions(forgotten.iter().map(|&p| p as i32).collect())]
            });
        self.correlation = self.correlation.wrapping_add(1);
        self.wbuf.clear();
        encode_request(
            &mut self.wbuf,
            &req,
            io.version,
            self.correlation,
            &self.plan.client_id,
        )?;
        if io.writer.write_all(&self.wbuf).await.is_err() {
            return self.connection_failed(Reason::ConnectionClosed);
        }
        let wait = Duration::from_millis(opts.max_wait_ms.max(0) as u64) + FETCH_NO_RESPONSE;
        self.pending.push_back(Pending {
            correlation: self.correlation,
            group: g,
            sent,
            epoch,
            deadline_ns: now_ns() + wait.as_nanos() as u64,
        });
        self.groups[g].in_flight = true;
        Ok(())
    }

    async fn on_response(&mut self, frame: Bytes) -> Result<()> {
        let pending = self.pending.pop_front().expect("a fetch was in flight");
        let g = pending.group;
        self.groups[g].in_flight = false;
        let version = self.io.as_ref().expect("connected").version;
        let now = now_ns();
        let mut body = frame;
        let header =
            ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(version))?;
        if header.correlation_id != pending.correlation {
            bail!(
                "Fetch response correlation id {} != {}",
                header.correlation_id,
                pending.correlation
            );
        }
        let resp = FetchResponse::decode(&mut body, version)?;
        drop(body);
        if self.sessions {
            let s = &mut self.groups[g].session;
            match resp.error_code {
                FETCH_SESSION_ID_NOT_FOUND | INVALID_FETCH_SESSION_EPOCH => {
                    // The broker lost or evicted the session: start a new one at once.
                    *s = Session::default();
                    self.plan.sessions.restarts.fetch_add(1, Relaxed);
                    return self.send_fetch(g).await;
                }
                0 if pending.epoch == 0 => {
                    s.id = resp.session_id;
                    s.epoch = 1;
                    if s.id != 0 {
                        self.plan.sessions.established.fetch_add(1, Relaxed);
                    }
                }
                0 if resp.session_id == s.id => s.epoch = Session::next_epoch(s.epoch),
                // The broker closed the session (or answered another): a full fetch next.
                _ => *s = Session::default(),
            }
        }
        if resp.error_code != 0 {
            let code = resp.error_code;
            if !is_retriable(code) {
                bail!(
                    "fetch {} from {}: {}; not retriable",
                    self.plan.topic(),
                    self.addr,
                    describe_error(code)
                );
            }
            for p in self.groups[g].parts.clone() {
                self.park(p, g, Reason::Error(code))?;
            }
            return Ok(());
        }
        let mut measured_msgs = 0u64;
        let mut failed: Vec<(u32, i16)> = Vec::new();
        for t in &resp.responses {
            for pd in &t.partitions {
                let p = pd.partition_index as u32;
                let Some(st) = self.state.get_mut(&p) else {
                    continue;
                };
                if pd.error_code != 0 {
                    if pd.error_code == OFFSET_OUT_OF_RANGE && pd.log_start_offset > st.offset {
                        // Data deleted under us (retention): skip ahead.
                        self.plan.live.errors.fetch_add(1, Relaxed);
                        st.offset = pd.log_start_offset;
                    } else {
                        failed.push((p, pd.error_code));
                    }
                    continue;
                }
                let Some(records) = &pd.records else {
                    continue;
                };
                let m = consume_records(&self.plan, st, records, now, &mut self.tally)?;
                measured_msgs += m;
                if st.end.is_some_and(|e| st.offset >= e) {
                    st.done = true;
                }
            }
        }
        drop(resp);
        // Partitions the request named and the response did not fail are healthy again.
        for p in &pending.sent {
            if !failed.iter().any(|f| f.0 == *p) {
                if let Some(st) = self.state.get_mut(p) {
                    st.error_since = None;
                    st.attempts = 0;
                }
            }
        }
        for (p, code) in failed {
            if is_retriable(code) || code == OFFSET_OUT_OF_RANGE {
                self.park(p, g, Reason::Error(code))?;
            } else {
                bail!(
                    "fetch {}-{p} from {}: {}; not retriable",
                    self.plan.topic(),
                    self.addr,
                    describe_error(code)
                );
            }
        }
        if measured_msgs > 0 {
            let total = self.plan.measured.fetch_add(measured_msgs, Relaxed) + measured_msgs;
            if self.plan.messages.is_some_and(|m| total >= m) {
                let _ = self.plan.stop_tx.send(true);
            }
        }
        if *self.plan.stop_tx.borrow() {
            return Ok(());
        }
        self.send_fetch(g).await
    }
}

async fn sleep_until_ns(at: Option<u64>) {
    match at {
        Some(ns) => tokio::time::sleep_until(clock::instant_at(ns).into()).await,
        None => std::future::pending().await,
    }
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
            // Served again although the broker was told the offset past it.
            plan.sessions
                .stale_records
                .fetch_add(h.record_count.max(0) as u64, Relaxed);
            continue;
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
            let mut oldest_sent = u64::MAX;
            // Latency only for records sent after the warm-up (and by this harness's stamp).
            wire::for_each_value(&h, batch, |offset, value| {
                if offset < fetch_offset {
                    return;
                }
                if let Some(sent) = value.and_then(read_stamp) {
                    if sent >= plan.measure_start_ns {
                        by_stamp += 1;
                        oldest_sent = oldest_sent.min(sent);
                        record_ns(&mut tally.hist, now.saturating_sub(sent));
                    }
                }
            })?;
            if oldest_sent != u64::MAX {
                plan.live.note_latency_ns(now.saturating_sub(oldest_sent));
            }
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
