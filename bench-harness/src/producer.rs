//! The producer: batches per partition, Produce requests pipelined per leader connection.
//!
//! One task per producer generates records and writes requests; one reader task per connection
//! reads responses in order (Kafka answers a connection's requests in order) and records latency.
//! Records are only *queued* as they are generated (time, sequence number, key index: 24 bytes);
//! they are encoded when a request is built, directly into the request buffer, so each payload
//! byte is copied once by the harness. Request buffers are pooled and come back from the reader
//! once the response is in (they are kept until then so a failed batch can be resent).
//!
//! Failures a Kafka producer rides out are retried the same way here: a batch answered with a
//! retriable error (the leader moved, the topic is new, too few replicas for now), or in flight
//! on a connection that closed or stopped answering, is sent again after a metadata refresh,
//! possibly to another broker, with an exponential backoff, until it has been failing for
//! `--retry-timeout-secs`. A resent batch keeps its records' original times, so its latency
//! counts from the first send (the delay is not hidden), and it is counted once, when acked.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ProduceResponse, ResponseHeader};
use kafka_protocol::protocol::Decodable;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Notify};

use crate::cli::{KeyDist, ProduceOpts};
use crate::client::{is_connection_error, Conn, FrameReader, Router};
use crate::clock::{self, now_ns};
use crate::lateness::Lateness;
use crate::payload::{self, Keys, Payloads, Rng};
use crate::retry::{describe_error, is_retriable, Op, Reason, MESSAGE_TOO_LARGE};
use crate::schedule::Schedule;
use crate::stats::{new_hist, record_ns, Live, Tally};
use crate::timer::PreciseTimer;
use crate::wire::{self, ProduceWriter, RecordSpec, BATCH_HEADER_LEN};

/// What every producer of a run shares.
pub struct Plan {
    pub opts: ProduceOpts,
    pub router: Arc<Router>,
    pub partitions: u32,
    pub client_id: String,
    pub payloads: Payloads,
    pub keys: Keys,
    /// Start of the run (and of the open-loop schedule), unix ns.
    pub start_ns: u64,
    /// End of the warm-up: records timed before it are sent but not measured.
    pub measure_start_ns: u64,
    /// Records timed at or after this are not produced (fixed-duration runs).
    pub stop_ns: Option<u64>,
    /// Measured records for all producers together (count runs).
    pub messages: Option<u64>,
    pub live: Arc<Live>,
    /// Where the open loop's send lag goes.
    pub lateness: Arc<Lateness>,
}

impl Plan {
    fn stamped(&self) -> bool {
        self.opts.message_size >= wire::STAMP_LEN
    }

    fn topic(&self) -> &str {
        &self.router.topic
    }
}

/// A record waiting in its partition's queue.
#[derive(Clone, Copy)]
struct Queued {
    t_ns: u64,
    seq: u64,
    key: u32,
}

const NO_KEY: u32 = u32::MAX;

struct Part {
    /// The connection to the partition's leader; `None` while it has no (reachable) leader.
    conn: Option<usize>,
    recs: Vec<Queued>,
    /// In its connection's `nonempty` list.
    queued: bool,
    /// Since when the partition has had no reachable leader (unix ns).
    unroutable_since: Option<u64>,
}

/// One partition's batch within an in-flight request.
#[derive(Clone)]
struct SentPart {
    partition: i32,
    batch: std::ops::Range<usize>,
    times: std::ops::Range<usize>,
    /// 0 for a first send.
    attempt: u32,
    /// When this batch first failed (unix ns); meaningless on a first send.
    first_error_ns: u64,
}

/// A request awaiting its response, with what is needed to account for it or resend parts.
struct InFlight {
    correlation: i32,
    /// When its last byte was written (unix ns; 0 until then).
    written_ns: u64,
    buf: BytesMut,
    times: Vec<u64>,
    parts: Vec<SentPart>,
}

/// A batch to send again after a retriable error.
struct Retry {
    partition: i32,
    batch: Bytes,
    times: Vec<u64>,
    attempt: u32,
    first_error_ns: u64,
    not_before_ns: u64,
}

/// A request buffer with its bookkeeping vectors, kept for reuse.
type Spare = (BytesMut, Vec<u64>, Vec<SentPart>);

/// State shared between a producer task and its reader tasks.
struct Shared {
    notify: Notify,
    /// Responses processed, for the no-progress watchdog.
    responses: std::sync::atomic::AtomicU64,
    failure: Mutex<Option<String>>,
    retries: Mutex<Vec<Retry>>,
    /// Connections whose reader stopped (closed, reset, no answer); their requests are retries.
    broken: Mutex<Vec<usize>>,
    spares: Mutex<Vec<Spare>>,
}

impl Shared {
    fn fail(&self, msg: String) {
        self.failure.lock().expect("lock").get_or_insert(msg);
        self.notify.notify_one();
    }
}

/// The retry of one batch of `inf` that failed for `reason`, or why the run must stop (it has
/// been failing for longer than the retry timeout).
fn make_retry(
    plan: &Plan,
    inf: &InFlight,
    sp: &SentPart,
    reason: Reason,
    now: u64,
) -> Result<Retry, String> {
    let policy = plan.router.policy;
    let first_error_ns = if sp.attempt == 0 {
        now
    } else {
        sp.first_error_ns
    };
    let attempt = sp.attempt + 1;
    let failing_ns = now.saturating_sub(first_error_ns);
    if failing_ns > policy.timeout_ns() {
        return Err(format!(
            "produce to {}-{}: still failing ({}) after {:.1} s and {} attempts; raise \
             --retry-timeout-secs if the cluster needs longer",
            plan.topic(),
            sp.partition,
            reason.label(),
            failing_ns as f64 / 1e9,
            attempt
        ));
    }
    plan.router.stats.add(Op::Produce, reason, 1);
    plan.live.retries.fetch_add(1, Relaxed);
    Ok(Retry {
        partition: sp.partition,
        batch: Bytes::copy_from_slice(&inf.buf[sp.batch.clone()]),
        times: inf.times[sp.times.clone()].to_vec(),
        attempt,
        first_error_ns,
        not_before_ns: now + policy.backoff_ns(attempt),
    })
}

/// Every batch of a request that never got an answer, as retries.
fn requeue(plan: &Plan, inf: &InFlight, reason: Reason, now: u64) -> Result<Vec<Retry>, String> {
    inf.parts
        .iter()
        .map(|sp| make_retry(plan, inf, sp, reason, now))
        .collect()
}

struct ConnState {
    addr: String,
    /// `None` once the connection broke; a new one is opened for the leader on refresh.
    writer: Option<OwnedWriteHalf>,
    version: i16,
    tx: Option<mpsc::UnboundedSender<InFlight>>,
    in_flight: Arc<AtomicUsize>,
    /// When a response last freed a slot of a full window (ns; 0: none since the last send).
    slot_freed_ns: Arc<AtomicU64>,
    /// Partitions with queued records, in arrival order (drained round-robin).
    nonempty: VecDeque<u32>,
}

impl ConnState {
    fn alive(&self) -> bool {
        self.writer.is_some()
    }
}

/// Runs producer `index` of `count` to completion; returns what it measured.
pub async fn run(plan: Arc<Plan>, index: usize, count: usize) -> Result<Tally> {
    let nparts = plan.partitions;
    let shared = Arc::new(Shared {
        notify: Notify::new(),
        responses: Default::default(),
        failure: Mutex::new(None),
        retries: Mutex::new(Vec::new()),
        broken: Mutex::new(Vec::new()),
        spares: Mutex::new(Vec::new()),
    });
    let opts = &plan.opts;
    let mut p = Producer {
        plan: plan.clone(),
        shared: shared.clone(),
        parts: (0..nparts)
            .map(|_| Part {
                conn: None,
                recs: Vec::new(),
                queued: false,
                unroutable_since: None,
            })
            .collect(),
        conns: Vec::new(),
        readers: Vec::new(),
        retries: VecDeque::new(),
        refresh_needed: false,
        refresh_attempt: 0,
        next_refresh_ns: 0,
        rng: Rng::new(0x5eed ^ (index as u64).wrapping_mul(0x9e37_79b9)),
        sticky: StickyPartitioner::new(index as u32 % nparts, nparts),
        rec_size: RecordSpec::size_estimate(plan.keys.max_len(), opts.message_size),
        correlation: 0,
        scratch: BytesMut::new(),
        acks0_tally: Tally::default(),
        quota: plan
            .messages
            .map(|m| m / count as u64 + u64::from((index as u64) < m % count as u64)),
        measured: 0,
        seq: 0,
        gen_done: false,
        send_lag: new_hist(),
    };
    let layout = plan.router.layout();
    let result = match p.route(&layout).await {
        Ok(()) => p.drive(index, count).await,
        Err(e) => Err(e),
    };
    plan.lateness.add_send_lag(&p.send_lag);

    // Close the request channels so readers finish, then collect what they measured.
    let mut tally = std::mem::take(&mut p.acks0_tally);
    for c in &mut p.conns {
        c.tx = None;
        if let Some(w) = c.writer.as_mut() {
            let _ = w.shutdown().await;
        }
    }
    let mut reader_err = None;
    for (addr, h) in p.readers.drain(..) {
        if result.is_err() {
            h.abort(); // it may be waiting for a response that will never come
            continue;
        }
        match h.await {
            Ok(Ok(t)) => tally.merge(&t),
            Ok(Err(e)) => reader_err = Some(e.context(format!("reading from {addr}"))),
            Err(e) => reader_err = Some(anyhow!("reader task: {e}")),
        }
    }
    result?;
    if let Some(e) = reader_err {
        return Err(e);
    }
    Ok(tally)
}

struct Producer {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    parts: Vec<Part>,
    conns: Vec<ConnState>,
    /// Every reader task this producer started, live or finished, with its broker's address.
    readers: Vec<(String, tokio::task::JoinHandle<Result<Tally>>)>,
    /// Batches to resend, in the order they failed.
    retries: VecDeque<Retry>,
    /// Some partition needs a new leader (an error said so, or its connection broke).
    refresh_needed: bool,
    refresh_attempt: u32,
    next_refresh_ns: u64,
    rng: Rng,
    /// Where unkeyed records go.
    sticky: StickyPartitioner,
    /// Upper bound of one record's encoded size (all records of a run are the same size).
    rec_size: usize,
    correlation: i32,
    scratch: BytesMut,
    acks0_tally: Tally,
    quota: Option<u64>,
    measured: u64,
    seq: u64,
    gen_done: bool,
    /// Open loop: how late requests were written after they were due, µs.
    send_lag: hdrhistogram::Histogram<u64>,
}

/// Kafka's partitioner for records without a key (KIP-794): all records go to one partition
/// until a batch's worth has gone there, then to the next. Switching on the batch's worth and
/// not only when the partition's queue is full matters at a fixed rate below capacity: requests
/// then drain the queue before it ever fills, and a partitioner waiting for a full queue kept
/// one partition for seconds at a time (every other partition idle) until a slow round trip let
/// the queue fill. Kafka's Java client switches after `batch.size` bytes; librdkafka after
/// `sticky.partitioning.linger.ms`; both spread a steady stream over every partition.
#[derive(Debug)]
struct StickyPartitioner {
    current: u32,
    partitions: u32,
    /// Records given to `current` since it was chosen.
    given: usize,
}

impl StickyPartitioner {
    fn new(first: u32, partitions: u32) -> Self {
        assert!(first < partitions, "partition {first} of {partitions}");
        Self {
            current: first,
            partitions,
            given: 0,
        }
    }

    fn current(&self) -> u32 {
        self.current
    }

    /// The partition for the next record: the current one, or the next in turn once
    /// `records_per_batch` went to the current one or its queue is full.
    fn pick(&mut self, records_per_batch: usize, current_is_full: bool) -> u32 {
        if self.given >= records_per_batch || current_is_full {
            self.current = (self.current + 1) % self.partitions;
            self.given = 0;
        }
        self.given += 1;
        self.current
    }
}

impl Producer {
    fn records_per_batch(&self) -> usize {
        (self.plan.opts.batch_size / self.rec_size).max(1)
    }

    /// Queued records in the partition closest to a full batch.
    fn fullest_pending(&self) -> usize {
        if self.plan.keys.is_unkeyed() {
            return self.parts[self.sticky.current() as usize].recs.len();
        }
        self.conns
            .iter()
            .flat_map(|c| c.nonempty.iter())
            .map(|&p| self.parts[p as usize].recs.len())
            .max()
            .unwrap_or(0)
    }

    fn is_full(&self, p: u32) -> bool {
        self.parts[p as usize].recs.len() >= self.records_per_batch()
    }

    /// Queues record `seq` timed at `t_ns`; false if its partition's batch is full (the caller
    /// retries it once a request has drained the batch).
    fn try_add(&mut self, t_ns: u64) -> bool {
        let key = self.plan.keys.pick(self.seq, &mut self.rng);
        let p = match key {
            Some(k) => self.plan.keys.partition(k),
            None => {
                let current_is_full = self.is_full(self.sticky.current());
                self.sticky.pick(self.records_per_batch(), current_is_full)
            }
        };
        if self.is_full(p) {
            return false;
        }
        let part = &mut self.parts[p as usize];
        part.recs.push(Queued {
            t_ns,
            seq: self.seq,
            key: key.unwrap_or(NO_KEY),
        });
        if !part.queued {
            if let Some(ci) = part.conn {
                part.queued = true;
                self.conns[ci].nonempty.push_back(p);
            }
        }
        self.seq += 1;
        if t_ns >= self.plan.measure_start_ns {
            self.measured += 1;
            if self.quota.is_some_and(|q| self.measured >= q) {
                self.gen_done = true;
            }
        }
        true
    }

    /// Marks generation finished when the next record would fall past the stop time.
    fn check_stop(&mut self, t_ns: u64) -> bool {
        if self.plan.stop_ns.is_some_and(|s| t_ns >= s) || self.quota == Some(0) {
            self.gen_done = true;
        }
        self.gen_done
    }

    /// The live connection to `addr`, opened (with its reader task) if there is none.
    async fn conn_for(&mut self, addr: &str) -> Result<usize> {
        if let Some(ci) = self.conns.iter().position(|c| c.alive() && c.addr == addr) {
            return Ok(ci);
        }
        let conn = Conn::open(addr, &self.plan.client_id).await?;
        let version = conn.versions.pick(
            ApiKey::Produce,
            wire::PRODUCE_MIN_VERSION,
            wire::PRODUCE_MAX_VERSION,
        )?;
        let ci = self.conns.len();
        let (rd, writer) = conn.stream.into_split();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let slot_freed_ns = Arc::new(AtomicU64::new(0));
        let tx = if self.plan.opts.acks.0 == 0 {
            None // acks=0: the broker sends no response
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = ReaderCtx {
                conn: ci,
                addr: addr.to_string(),
                version,
                in_flight: in_flight.clone(),
                slot_freed_ns: slot_freed_ns.clone(),
                shared: self.shared.clone(),
                plan: self.plan.clone(),
            };
            let h = tokio::spawn(read_responses(FrameReader::new(rd, 64 << 10), rx, ctx));
            self.readers.push((addr.to_string(), h));
            Some(tx)
        };
        self.conns.push(ConnState {
            addr: addr.to_string(),
            writer: Some(writer),
            version,
            tx,
            in_flight,
            slot_freed_ns,
            nonempty: VecDeque::new(),
        });
        Ok(ci)
    }

    /// Points every partition at its leader's connection in `layout`, opening connections as
    /// needed. A partition without a reachable leader waits for the next refresh.
    async fn route(&mut self, layout: &crate::client::Layout) -> Result<()> {
        let now = now_ns();
        let mut unroutable = false;
        // A broker that cannot be reached is tried once per refresh, not once per partition.
        let mut unreachable: Vec<String> = Vec::new();
        for p in 0..self.parts.len() as u32 {
            let want = layout.leader_of(p).map(str::to_string);
            let current = self.parts[p as usize]
                .conn
                .filter(|&ci| self.conns[ci].alive())
                .map(|ci| self.conns[ci].addr.clone());
            if want.is_some() && current == want {
                continue;
            }
            if let Some(ci) = self.parts[p as usize].conn.take() {
                self.conns[ci].nonempty.retain(|&q| q != p);
            }
            self.parts[p as usize].queued = false;
            let routed = match want {
                Some(addr) if !unreachable.contains(&addr) => match self.conn_for(&addr).await {
                    Ok(ci) => Some(ci),
                    Err(e) if is_connection_error(&e) => {
                        unreachable.push(addr);
                        None
                    }
                    Err(e) => return Err(e),
                },
                _ => None,
            };
            let part = &mut self.parts[p as usize];
            match routed {
                Some(ci) => {
                    part.conn = Some(ci);
                    part.unroutable_since = None;
                    if !part.recs.is_empty() {
                        part.queued = true;
                        self.conns[ci].nonempty.push_back(p);
                    }
                }
                None => {
                    unroutable = true;
                    let since = *part.unroutable_since.get_or_insert(now);
                    let policy = self.plan.router.policy;
                    if now - since > policy.timeout_ns() {
                        bail!(
                            "produce to {}-{p}: no reachable leader for {:.1} s; raise \
                             --retry-timeout-secs if the cluster needs longer",
                            self.plan.topic(),
                            (now - since) as f64 / 1e9
                        );
                    }
                }
            }
        }
        let policy = self.plan.router.policy;
        self.refresh_needed = unroutable;
        if unroutable {
            self.refresh_attempt += 1;
            self.next_refresh_ns = now + policy.backoff_ns(self.refresh_attempt);
        } else {
            self.refresh_attempt = 0;
            // At most one refresh per initial backoff, however many errors arrive.
            self.next_refresh_ns = now + policy.initial.as_nanos() as u64;
        }
        Ok(())
    }

    /// Takes in what the readers handed back: batches to retry, connections that broke.
    fn collect_failures(&mut self) {
        let retries: Vec<Retry> = std::mem::take(&mut *self.shared.retries.lock().expect("lock"));
        if !retries.is_empty() {
            self.refresh_needed = true;
            self.retries.extend(retries);
        }
        let broken: Vec<usize> = std::mem::take(&mut *self.shared.broken.lock().expect("lock"));
        for ci in broken {
            self.mark_broken(ci);
        }
    }

    /// Stops using connection `ci`; its partitions are routed again on the next refresh.
    fn mark_broken(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        c.writer = None;
        c.tx = None;
        for p in c.nonempty.drain(..) {
            self.parts[p as usize].queued = false;
        }
        for part in &mut self.parts {
            if part.conn == Some(ci) {
                part.conn = None;
            }
        }
        self.refresh_needed = true;
        self.next_refresh_ns = 0; // at once: the leader may have moved
    }

    async fn drive(&mut self, index: usize, count: usize) -> Result<()> {
        let opts = self.plan.opts.clone();
        let linger_ns = (opts.linger_ms * 1e6) as u64;
        let max_lag_ns = (opts.max_lag_secs * 1e9) as u64;
        let schedule = opts
            .rate
            .map(|r| Schedule::new(self.plan.start_ns, r, count, index));
        let mut next_i: u64 = 0; // open loop: next scheduled record
        let mut timer = PreciseTimer::new().context("timerfd")?;
        // Nothing is generated before the run starts (consumers may still be connecting).
        timer
            .sleep_until(clock::instant_at(self.plan.start_ns))
            .await?;
        let mut spins = 0u32;
        loop {
            if let Some(msg) = self.shared.failure.lock().expect("lock").take() {
                bail!(msg);
            }
            self.collect_failures();
            if self.refresh_needed && now_ns() >= self.next_refresh_ns {
                let layout = self.plan.router.refresh().await;
                self.route(&layout).await?;
            }

            // 1. Generate what is due (open loop) or what fits (max rate).
            let mut blocked = false;
            if let (Some(s), false) = (&schedule, self.gen_done) {
                let lag = now_ns().saturating_sub(s.at(next_i));
                if lag > max_lag_ns {
                    // The target cannot take this rate; latencies would only keep growing.
                    self.gen_done = true;
                    self.plan.live.overloaded.store(true, Relaxed);
                }
            }
            if !self.gen_done {
                match &schedule {
                    Some(s) => {
                        let due = s.due(now_ns());
                        while next_i < due {
                            let t = s.at(next_i);
                            if self.check_stop(t) {
                                break;
                            }
                            if !self.try_add(t) {
                                blocked = true;
                                break;
                            }
                            next_i += 1;
                            if self.gen_done {
                                break;
                            }
                        }
                    }
                    None => {
                        // As fast as the in-flight window allows: fill until a batch is full.
                        let mut t = now_ns();
                        for n in 0u32.. {
                            if n % 16 == 0 {
                                t = now_ns();
                            }
                            if self.check_stop(t) {
                                break;
                            }
                            if !self.try_add(t) {
                                blocked = true;
                                break;
                            }
                            if self.gen_done || n >= 4096 {
                                break;
                            }
                        }
                    }
                }
            }

            // 2. Send whatever is ready on every connection with room in its window.
            let mut sent_any = false;
            for ci in 0..self.conns.len() {
                while self.conns[ci].alive()
                    && self.conns[ci].in_flight.load(Relaxed) < opts.max_in_flight
                {
                    if !self.send_one(ci, linger_ns).await? {
                        break;
                    }
                    sent_any = true;
                }
            }

            // 3. Done when everything generated has been answered.
            if self.gen_done && self.idle() {
                return Ok(());
            }

            // 4. Wait for the next reason to act. Sending may have unblocked generation (with
            // acks=0 nothing else ever will), so after a send go round again first.
            if sent_any || (schedule.is_none() && !self.gen_done && !blocked) {
                // Max rate and not blocked: keep generating, yielding now and then so the
                // reader tasks run on a single-threaded runtime.
                spins += 1;
                if spins.is_multiple_of(8) || sent_any {
                    tokio::task::yield_now().await;
                }
                continue;
            }
            let mut deadline: Option<u64> = None;
            let mut consider = |t: u64| deadline = Some(deadline.map_or(t, |d: u64| d.min(t)));
            if let (Some(s), false, false) = (&schedule, self.gen_done, blocked) {
                // Records not yet queued force a send only once the first of them has lingered,
                // or when enough of them fill a batch; until then they can be queued later, in
                // one go, with their scheduled times (which is all latency is measured from).
                // This keeps wake-ups near one per linger period instead of one per record.
                let fullest = self.fullest_pending();
                let to_fill = self.records_per_batch().saturating_sub(fullest).max(1) as u64;
                consider(s.at(next_i) + linger_ns);
                consider(s.at(next_i + to_fill - 1));
            }
            if self.refresh_needed {
                consider(self.next_refresh_ns);
            }
            let now = now_ns();
            let has_room =
                |c: &ConnState| c.alive() && c.in_flight.load(Relaxed) < opts.max_in_flight;
            for c in self.conns.iter().filter(|c| has_room(c)) {
                for &p in &c.nonempty {
                    if let Some(first) = self.parts[p as usize].recs.first() {
                        consider(first.t_ns + linger_ns);
                    }
                }
            }
            for r in &self.retries {
                if self.parts[r.partition as usize]
                    .conn
                    .is_some_and(|ci| has_room(&self.conns[ci]))
                {
                    consider(r.not_before_ns);
                }
            }
            if let Some(d) = deadline {
                if d <= now {
                    continue;
                }
            }
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = self.shared.notify.notified() => {}
                        r = timer.sleep_until(clock::instant_at(d)) => r?,
                    }
                }
                None => {
                    // Only an ack (or a reader giving up on its connection) can unblock us.
                    // Readers time out on their own; this only catches a harness bug.
                    let before = self.shared.responses.load(Relaxed);
                    let watchdog = Duration::from_millis(opts.request_timeout_ms.max(0) as u64)
                        + self.plan.router.policy.timeout
                        + Duration::from_secs(10);
                    tokio::select! {
                        _ = self.shared.notify.notified() => {}
                        _ = tokio::time::sleep(watchdog) => {
                            if self.shared.responses.load(Relaxed) == before {
                                bail!("no Produce response within {} ms", watchdog.as_millis());
                            }
                        }
                    }
                }
            }
        }
    }

    /// Nothing queued, nothing to retry, nothing in flight.
    fn idle(&self) -> bool {
        self.retries.is_empty()
            && self.conns.iter().all(|c| c.in_flight.load(Relaxed) == 0)
            && self.parts.iter().all(|p| p.recs.is_empty())
            && self.shared.retries.lock().expect("lock").is_empty()
    }

    fn spare(&self) -> Spare {
        self.shared
            .spares
            .lock()
            .expect("lock")
            .pop()
            .unwrap_or_else(|| {
                (
                    BytesMut::with_capacity(self.plan.opts.max_request_bytes + 64 * 1024),
                    Vec::new(),
                    Vec::new(),
                )
            })
    }

    /// Builds and writes one request for connection `ci` if anything is ready; false if not.
    async fn send_one(&mut self, ci: usize, linger_ns: u64) -> Result<bool> {
        let now = now_ns();
        let opts = &self.plan.opts;
        let flushing = self.gen_done;
        let per_batch = self.records_per_batch();

        // Retries first, one partition per request.
        let retry_at = self.retries.iter().position(|r| {
            r.not_before_ns <= now && self.parts[r.partition as usize].conn == Some(ci)
        });

        let mut chosen: Vec<u32> = Vec::new();
        if retry_at.is_none() {
            let mut budget = opts.max_request_bytes;
            let c = &self.conns[ci];
            for &p in &c.nonempty {
                let part = &self.parts[p as usize];
                let Some(first) = part.recs.first() else {
                    continue;
                };
                let ready =
                    flushing || part.recs.len() >= per_batch || now >= first.t_ns + linger_ns;
                if !ready {
                    continue;
                }
                let est = part.recs.len().min(per_batch) * self.rec_size + BATCH_HEADER_LEN + 16;
                if !chosen.is_empty() && est > budget {
                    break;
                }
                budget = budget.saturating_sub(est);
                chosen.push(p);
            }
            if chosen.is_empty() {
                return Ok(false);
            }
        }

        let (mut buf, mut times, mut sent) = self.spare();
        // Open loop: when this request's first batch was due (for the producer's turnaround).
        let mut due_ns: Option<u64> = None;
        times.clear();
        sent.clear();
        self.correlation = self.correlation.wrapping_add(1);
        let correlation = self.correlation;
        let topic = self.plan.router.topic.clone();
        let version = self.conns[ci].version;
        let nparts = if retry_at.is_some() { 1 } else { chosen.len() };
        let mut w = ProduceWriter::begin(
            &mut buf,
            version,
            correlation,
            &self.plan.client_id,
            opts.acks.0,
            opts.request_timeout_ms,
            &topic,
            nparts,
        );
        if let Some(at) = retry_at {
            let r = self.retries.remove(at).expect("found above");
            let mark = w.begin_partition(&mut buf, r.partition, r.batch.len());
            buf.extend_from_slice(&r.batch);
            let (start, end) = w.end_partition(&mut buf, mark);
            sent.push(SentPart {
                partition: r.partition,
                batch: start..end,
                times: 0..r.times.len(),
                attempt: r.attempt,
                first_error_ns: r.first_error_ns,
            });
            times.extend_from_slice(&r.times);
        } else {
            if self.plan.lateness.open_loop() && !flushing {
                // Due when the first of its batches filled or had lingered long enough.
                let due: u64 = chosen
                    .iter()
                    .filter_map(|&p| {
                        let recs = &self.parts[p as usize].recs;
                        match recs.get(per_batch - 1) {
                            Some(filled) => Some(filled.t_ns),
                            None => recs.first().map(|r| r.t_ns + linger_ns),
                        }
                    })
                    .min()
                    .unwrap_or(now);
                if due >= self.plan.measure_start_ns {
                    record_ns(&mut self.send_lag, now.saturating_sub(due));
                }
                due_ns = Some(due);
            }
            let stamped = self.plan.stamped();
            for &p in &chosen {
                let n = self.parts[p as usize].recs.len().min(per_batch);
                let mark =
                    w.begin_partition(&mut buf, p as i32, n * self.rec_size + BATCH_HEADER_LEN);
                let plan = &*self.plan;
                let recs = &self.parts[p as usize].recs[..n];
                let base_ts = clock::ns_to_ms(recs[0].t_ns);
                wire::encode_batch(
                    &mut buf,
                    &mut self.scratch,
                    opts.compression,
                    base_ts,
                    recs.iter().map(|r| RecordSpec {
                        timestamp_ms: clock::ns_to_ms(r.t_ns),
                        key: (r.key != NO_KEY).then(|| plan.keys.key(r.key)),
                        body: plan.payloads.body(r.seq),
                        stamp: stamped.then(|| payload::stamp(r.t_ns)),
                    }),
                )?;
                let (start, end) = w.end_partition(&mut buf, mark);
                let t0 = times.len();
                times.extend(recs.iter().map(|r| r.t_ns));
                sent.push(SentPart {
                    partition: p as i32,
                    batch: start..end,
                    times: t0..times.len(),
                    attempt: 0,
                    first_error_ns: 0,
                });
                let part = &mut self.parts[p as usize];
                part.recs.drain(..n);
            }
            // Drop drained partitions from the ready list; rotate the rest for fairness.
            let parts = &mut self.parts;
            let c = &mut self.conns[ci];
            c.nonempty.retain(|&p| {
                let keep = !parts[p as usize].recs.is_empty();
                parts[p as usize].queued = keep;
                keep
            });
            if let Some(&first) = chosen.first() {
                if let Some(pos) = c.nonempty.iter().position(|&p| p == first) {
                    c.nonempty.rotate_left(pos + 1);
                }
            }
        }
        w.finish(&mut buf);

        let c = &mut self.conns[ci];
        c.in_flight.fetch_add(1, Relaxed);
        let mut inflight = InFlight {
            correlation,
            written_ns: 0,
            buf,
            times,
            parts: sent,
        };
        let write_started_ns = now_ns();
        // Turnaround: a request already due when a response freed a slot of the full window
        // waited only for the client between that response and this write.
        let freed_ns = c.slot_freed_ns.swap(0, Relaxed);
        if freed_ns >= self.plan.measure_start_ns && due_ns.is_some_and(|due| due <= freed_ns) {
            self.plan
                .lateness
                .record_turnaround(write_started_ns.saturating_sub(freed_ns));
        }
        let writer = c.writer.as_mut().expect("send_one on a live connection");
        if writer.write_all(&inflight.buf).await.is_err() {
            // The connection broke: what was in flight on it comes back from its reader; this
            // request is retried from here.
            c.in_flight.fetch_sub(1, Relaxed);
            self.mark_broken(ci);
            self.requeue_here(inflight, Reason::ConnectionClosed)?;
            return Ok(false);
        }
        inflight.written_ns = now_ns();
        if write_started_ns >= self.plan.measure_start_ns {
            self.plan
                .lateness
                .record_write(inflight.written_ns.saturating_sub(write_started_ns));
        }
        match &c.tx {
            Some(tx) => {
                if let Err(mpsc::error::SendError(inflight)) = tx.send(inflight) {
                    // The reader stopped (connection closed or silent): it handed back what it
                    // had; this one is retried from here.
                    c.in_flight.fetch_sub(1, Relaxed);
                    self.mark_broken(ci);
                    self.requeue_here(inflight, Reason::ConnectionClosed)?;
                    return Ok(false);
                }
            }
            None => {
                // acks=0: written is all there is; latency is to the end of the write.
                let done = now_ns();
                tally_acked(&mut self.acks0_tally, &self.plan, &inflight.times, done);
                c.in_flight.fetch_sub(1, Relaxed);
                self.shared.spares.lock().expect("lock").push((
                    inflight.buf,
                    inflight.times,
                    inflight.parts,
                ));
            }
        }
        Ok(true)
    }

    fn requeue_here(&mut self, inf: InFlight, reason: Reason) -> Result<()> {
        let retries = requeue(&self.plan, &inf, reason, now_ns()).map_err(|m| anyhow!(m))?;
        self.retries.extend(retries);
        self.shared
            .spares
            .lock()
            .expect("lock")
            .push((inf.buf, inf.times, inf.parts));
        Ok(())
    }
}

/// Counts acknowledged records: all of them in the live counters, those timed after the
/// warm-up in the tally, with their latency from the scheduled (or creation) time.
fn tally_acked(tally: &mut Tally, plan: &Plan, times: &[u64], now: u64) {
    let size = plan.opts.message_size as u64;
    let mut measured = 0u64;
    for &t in times {
        if t >= plan.measure_start_ns {
            measured += 1;
            record_ns(&mut tally.hist, now.saturating_sub(t));
        }
    }
    if measured > 0 {
        tally.msgs += measured;
        tally.bytes += measured * size;
        tally.last_ns = tally.last_ns.max(now);
    }
    plan.live.add(times.len() as u64, times.len() as u64 * size);
}

struct ReaderCtx {
    conn: usize,
    addr: String,
    version: i16,
    in_flight: Arc<AtomicUsize>,
    slot_freed_ns: Arc<AtomicU64>,
    shared: Arc<Shared>,
    plan: Arc<Plan>,
}

/// Why a reader stopped reading its connection.
enum Stop {
    /// The connection failed; these requests never got an answer.
    Connection(Reason, Vec<InFlight>),
    /// Something the run cannot continue from (a protocol error, a non-retriable error).
    Fatal(anyhow::Error),
}

async fn read_responses(
    mut rd: FrameReader<OwnedReadHalf>,
    mut rx: mpsc::UnboundedReceiver<InFlight>,
    ctx: ReaderCtx,
) -> Result<Tally> {
    let mut tally = Tally::default();
    match read_loop(&mut rd, &mut rx, &ctx, &mut tally).await {
        None => Ok(tally),
        Some(Stop::Fatal(e)) => {
            ctx.shared.fail(format!("{e:#}"));
            Err(e)
        }
        Some(Stop::Connection(reason, mut lost)) => {
            // Nothing more is accepted; what was already queued is lost with the connection.
            rx.close();
            while let Ok(inf) = rx.try_recv() {
                lost.push(inf);
            }
            let now = now_ns();
            let mut retries = Vec::new();
            for inf in &lost {
                match requeue(&ctx.plan, inf, reason, now) {
                    Ok(r) => retries.extend(r),
                    Err(msg) => ctx.shared.fail(msg),
                }
            }
            ctx.shared.retries.lock().expect("lock").extend(retries);
            ctx.shared.broken.lock().expect("lock").push(ctx.conn);
            ctx.in_flight.fetch_sub(lost.len(), Relaxed);
            ctx.shared.notify.notify_one();
            Ok(tally)
        }
    }
}

async fn read_loop(
    rd: &mut FrameReader<OwnedReadHalf>,
    rx: &mut mpsc::UnboundedReceiver<InFlight>,
    ctx: &ReaderCtx,
    tally: &mut Tally,
) -> Option<Stop> {
    let header_version = ApiKey::Produce.response_header_version(ctx.version);
    let plan = &*ctx.plan;
    // A broker that holds a response this long is treated as gone (Kafka's request.timeout.ms).
    let no_response =
        Duration::from_millis(plan.opts.request_timeout_ms.max(0) as u64) + Duration::from_secs(5);
    while let Some(inf) = rx.recv().await {
        let frame = match tokio::time::timeout(no_response, rd.next()).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) if is_connection_error(&e) => {
                return Some(Stop::Connection(Reason::ConnectionClosed, vec![inf]))
            }
            Ok(Err(e)) => return Some(Stop::Fatal(e.context(format!("reading {}", ctx.addr)))),
            Err(_) => return Some(Stop::Connection(Reason::NoResponse, vec![inf])),
        };
        let now = now_ns();
        if inf.written_ns >= plan.measure_start_ns {
            plan.lateness
                .record_round_trip(now.saturating_sub(inf.written_ns));
        }
        if let Err(e) = handle_response(ctx, &inf, frame, header_version, now, tally) {
            return Some(Stop::Fatal(e));
        }
        if ctx.in_flight.fetch_sub(1, Relaxed) == plan.opts.max_in_flight {
            ctx.slot_freed_ns.store(now, Relaxed);
        }
        ctx.shared.responses.fetch_add(1, Relaxed);
        ctx.shared.notify.notify_one();
        ctx.shared
            .spares
            .lock()
            .expect("lock")
            .push((inf.buf, inf.times, inf.parts));
    }
    None
}

fn handle_response(
    ctx: &ReaderCtx,
    inf: &InFlight,
    frame: Bytes,
    header_version: i16,
    now: u64,
    tally: &mut Tally,
) -> Result<()> {
    let plan = &*ctx.plan;
    let mut s: &[u8] = &frame;
    let header = ResponseHeader::decode(&mut s, header_version)?;
    if header.correlation_id != inf.correlation {
        bail!(
            "Produce response correlation id {} != {}",
            header.correlation_id,
            inf.correlation
        );
    }
    let resp = ProduceResponse::decode(&mut s, ctx.version)?;
    let mut answered = vec![false; inf.parts.len()];
    for topic in &resp.responses {
        for (i, pr) in topic.partition_responses.iter().enumerate() {
            // Brokers answer in request order; fall back to a search if one does not.
            let at = match inf.parts.get(i) {
                Some(sp) if sp.partition == pr.index => i,
                _ => match inf.parts.iter().position(|sp| sp.partition == pr.index) {
                    Some(at) => at,
                    None => continue,
                },
            };
            let sp = &inf.parts[at];
            answered[at] = true;
            let times = &inf.times[sp.times.clone()];
            let code = pr.error_code;
            if code == 0 {
                tally_acked(tally, plan, times, now);
            } else if is_retriable(code) {
                let retry =
                    make_retry(plan, inf, sp, Reason::Error(code), now).map_err(|m| anyhow!(m))?;
                ctx.shared.retries.lock().expect("lock").push(retry);
            } else if code == MESSAGE_TOO_LARGE {
                let batch = sp.batch.len();
                bail!(
                    "produce to {}-{} at {}: {}: the broker refused a record batch of {batch} \
                     bytes ({} records of --message-size {}, --batch-size {}). Raise the broker's \
                     message.max.bytes (or the topic's max.message.bytes) above {batch}, or run \
                     with a smaller --batch-size",
                    plan.topic(),
                    sp.partition,
                    ctx.addr,
                    describe_error(code),
                    times.len(),
                    plan.opts.message_size,
                    plan.opts.batch_size,
                );
            } else {
                bail!(
                    "produce to {}-{} at {}: {} ({} records); not retriable",
                    plan.topic(),
                    sp.partition,
                    ctx.addr,
                    describe_error(code),
                    times.len()
                );
            }
        }
    }
    if let Some(at) = answered.iter().position(|a| !a) {
        bail!(
            "Produce response from {} has no answer for {}-{}",
            ctx.addr,
            plan.topic(),
            inf.parts[at].partition
        );
    }
    Ok(())
}

/// Builds the run's payloads and keys and checks options that would fail later.
pub fn validate(opts: &ProduceOpts) -> Result<()> {
    opts.compression.check_available()?;
    if opts.producers == 0 || opts.max_in_flight == 0 {
        bail!("--producers and --max-in-flight must be at least 1");
    }
    if let Some(r) = opts.rate {
        if r <= 0.0 || !r.is_finite() {
            bail!("--rate must be positive");
        }
    }
    if opts.key_dist != KeyDist::None && opts.key_count == 0 {
        bail!("--key-count must be at least 1");
    }
    if opts.batch_size > opts.max_request_bytes {
        bail!("--batch-size is larger than --max-request-bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::StickyPartitioner;

    /// Records that never fill a queue (a fixed rate below capacity: every request drains
    /// it) still go to every partition in turn, a batch's worth each.
    #[test]
    fn unkeyed_records_move_on_after_a_batchs_worth_even_when_queues_never_fill() {
        let mut sticky = StickyPartitioner::new(2, 4);
        let picks: Vec<u32> = (0..12).map(|_| sticky.pick(3, false)).collect();
        assert_eq!(picks, [2, 2, 2, 3, 3, 3, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn a_full_queue_moves_on_at_once() {
        let mut sticky = StickyPartitioner::new(0, 3);
        assert_eq!(sticky.pick(100, false), 0);
        // Partition 0's queue fills; partition 1's does not.
        assert_eq!(sticky.pick(100, true), 1);
        assert_eq!(sticky.pick(100, false), 1);
        assert_eq!(sticky.current(), 1);
    }
}
