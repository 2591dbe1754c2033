//! The producer: batches per partition, Produce requests pipelined per leader connection.
//!
//! One task per producer generates records and writes requests; one reader task per connection
//! reads responses in order (Kafka answers a connection's requests in order) and records latency.
//! Records are only *queued* as they are generated (time, sequence number, key index: 24 bytes);
//! they are encoded when a request is built, directly into the request buffer, so each payload
//! byte is copied once by the harness. Request buffers are pooled and come back from the reader
//! once the response is in (they are kept until then so a failed batch can be resent).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ProduceResponse, ResponseHeader};
use kafka_protocol::protocol::Decodable;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Notify};

use crate::cli::{KeyDist, ProduceOpts};
use crate::client::{is_retriable, read_frame, Conn, Layout};
use crate::clock::{self, now_ns};
use crate::payload::{self, Keys, Payloads, Rng};
use crate::schedule::Schedule;
use crate::stats::{record_ns, Live, Tally};
use crate::timer::PreciseTimer;
use crate::wire::{self, ProduceWriter, RecordSpec, BATCH_HEADER_LEN};

/// What every producer of a run shares.
pub struct Plan {
    pub opts: ProduceOpts,
    pub layout: Layout,
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
}

impl Plan {
    fn stamped(&self) -> bool {
        self.opts.message_size >= wire::STAMP_LEN
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
    conn: usize,
    recs: Vec<Queued>,
    queued: bool,
}

/// One partition's batch within an in-flight request.
#[derive(Clone)]
struct SentPart {
    partition: i32,
    batch: std::ops::Range<usize>,
    times: std::ops::Range<usize>,
    attempt: u32,
}

/// A request awaiting its response, with what is needed to account for it or resend parts.
struct InFlight {
    correlation: i32,
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
    not_before_ns: u64,
}

/// A request buffer with its bookkeeping vectors, kept for reuse.
type Spare = (BytesMut, Vec<u64>, Vec<SentPart>);

/// State shared between a producer task and its reader tasks.
struct Shared {
    notify: Notify,
    /// Responses processed, for the no-progress watchdog.
    responses: std::sync::atomic::AtomicU64,
    in_flight: Vec<AtomicUsize>,
    failure: Mutex<Option<String>>,
    retries: Mutex<Vec<(usize, Retry)>>,
    spares: Mutex<Vec<Spare>>,
}

impl Shared {
    fn fail(&self, msg: String) {
        self.failure.lock().expect("lock").get_or_insert(msg);
        self.notify.notify_one();
    }
}

struct ConnState {
    addr: String,
    writer: OwnedWriteHalf,
    version: i16,
    tx: Option<mpsc::UnboundedSender<InFlight>>,
    /// Partitions with queued records, in arrival order (drained round-robin).
    nonempty: VecDeque<u32>,
    retries: VecDeque<Retry>,
    reader: Option<tokio::task::JoinHandle<Result<Tally>>>,
}

/// Runs producer `index` of `count` to completion; returns what it measured.
pub async fn run(plan: Arc<Plan>, index: usize, count: usize) -> Result<Tally> {
    let opts = &plan.opts;
    let nparts = plan.layout.partitions();
    let all: Vec<u32> = (0..nparts).collect();
    let by_leader = plan.layout.by_leader(&all)?;

    let shared = Arc::new(Shared {
        notify: Notify::new(),
        responses: Default::default(),
        in_flight: (0..by_leader.len()).map(|_| AtomicUsize::new(0)).collect(),
        failure: Mutex::new(None),
        retries: Mutex::new(Vec::new()),
        spares: Mutex::new(Vec::new()),
    });

    let mut parts: Vec<Part> = (0..nparts)
        .map(|_| Part {
            conn: usize::MAX,
            recs: Vec::new(),
            queued: false,
        })
        .collect();
    let mut conns = Vec::new();
    for (ci, (addr, ps)) in by_leader.into_iter().enumerate() {
        for &p in &ps {
            parts[p as usize].conn = ci;
        }
        let conn = Conn::open(&addr, &plan.client_id).await?;
        let version = conn.versions.pick(
            ApiKey::Produce,
            wire::PRODUCE_MIN_VERSION,
            wire::PRODUCE_MAX_VERSION,
        )?;
        let (rd, writer) = conn.stream.into_split();
        let (tx, reader) = if opts.acks.0 == 0 {
            (None, None) // acks=0: the broker sends no response
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = ReaderCtx {
                conn: ci,
                version,
                shared: shared.clone(),
                plan: plan.clone(),
            };
            let h = tokio::spawn(read_responses(
                BufReader::with_capacity(64 << 10, rd),
                rx,
                ctx,
            ));
            (Some(tx), Some(h))
        };
        conns.push(ConnState {
            addr,
            writer,
            version,
            tx,
            nonempty: VecDeque::new(),
            retries: VecDeque::new(),
            reader,
        });
    }

    let mut p = Producer {
        plan: plan.clone(),
        shared: shared.clone(),
        parts,
        conns,
        rng: Rng::new(0x5eed ^ (index as u64).wrapping_mul(0x9e37_79b9)),
        sticky: index as u32 % nparts,
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
    };
    let result = p.drive(index, count).await;

    // Close the request channels so readers finish, then collect what they measured.
    let mut tally = std::mem::take(&mut p.acks0_tally);
    for c in &mut p.conns {
        c.tx = None;
        let _ = c.writer.shutdown().await;
    }
    let mut reader_err = None;
    for c in &mut p.conns {
        if let Some(h) = c.reader.take() {
            if result.is_err() {
                h.abort(); // it may be waiting for a response that will never come
                continue;
            }
            match h.await {
                Ok(Ok(t)) => tally.merge(&t),
                Ok(Err(e)) => reader_err = Some(e.context(format!("reading from {}", c.addr))),
                Err(e) => reader_err = Some(anyhow!("reader task: {e}")),
            }
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
    rng: Rng,
    /// Partition receiving unkeyed records until its batch is full.
    sticky: u32,
    /// Upper bound of one record's encoded size (all records of a run are the same size).
    rec_size: usize,
    correlation: i32,
    scratch: BytesMut,
    acks0_tally: Tally,
    quota: Option<u64>,
    measured: u64,
    seq: u64,
    gen_done: bool,
}

impl Producer {
    fn records_per_batch(&self) -> usize {
        (self.plan.opts.batch_size / self.rec_size).max(1)
    }

    /// Queued records in the partition closest to a full batch.
    fn fullest_pending(&self) -> usize {
        if self.plan.keys.is_unkeyed() {
            return self.parts[self.sticky as usize].recs.len();
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
                if self.is_full(self.sticky) {
                    self.sticky = (self.sticky + 1) % self.parts.len() as u32;
                }
                self.sticky
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
            part.queued = true;
            self.conns[part.conn].nonempty.push_back(p);
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
            self.collect_retries();

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
                while self.shared.in_flight[ci].load(Relaxed) < opts.max_in_flight {
                    if !self.send_one(ci, linger_ns).await? {
                        break;
                    }
                    sent_any = true;
                }
            }

            // 3. Done when everything generated has been answered.
            let idle = self
                .conns
                .iter()
                .all(|c| c.nonempty.is_empty() && c.retries.is_empty())
                && self.shared.in_flight.iter().all(|f| f.load(Relaxed) == 0)
                && self.shared.retries.lock().expect("lock").is_empty();
            if self.gen_done && idle {
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
            let now = now_ns();
            for (ci, c) in self.conns.iter().enumerate() {
                if self.shared.in_flight[ci].load(Relaxed) >= opts.max_in_flight {
                    continue; // an ack wakes us
                }
                for &p in &c.nonempty {
                    if let Some(first) = self.parts[p as usize].recs.first() {
                        consider(first.t_ns + linger_ns);
                    }
                }
                for r in &c.retries {
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
                    // Only an ack can unblock us: watch for a broker that stopped answering.
                    let before = self.shared.responses.load(Relaxed);
                    let watchdog = std::time::Duration::from_millis(
                        opts.request_timeout_ms.max(0) as u64 + 5_000,
                    );
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

    fn collect_retries(&mut self) {
        let mut q = self.shared.retries.lock().expect("lock");
        for (ci, r) in q.drain(..) {
            self.conns[ci].retries.push_back(r);
        }
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
        let retry_due = self.conns[ci]
            .retries
            .front()
            .is_some_and(|r| r.not_before_ns <= now);

        let mut chosen: Vec<u32> = Vec::new();
        if !retry_due {
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
        times.clear();
        sent.clear();
        self.correlation = self.correlation.wrapping_add(1);
        let correlation = self.correlation;
        let topic = self.plan.layout.topic.clone();
        let version = self.conns[ci].version;
        let nparts = if retry_due { 1 } else { chosen.len() };
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
        if retry_due {
            let r = self.conns[ci].retries.pop_front().expect("checked");
            let mark = w.begin_partition(&mut buf, r.partition, r.batch.len());
            buf.extend_from_slice(&r.batch);
            let (start, end) = w.end_partition(&mut buf, mark);
            sent.push(SentPart {
                partition: r.partition,
                batch: start..end,
                times: 0..r.times.len(),
                attempt: r.attempt,
            });
            times.extend_from_slice(&r.times);
        } else {
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

        self.shared.in_flight[ci].fetch_add(1, Relaxed);
        let c = &mut self.conns[ci];
        c.writer
            .write_all(&buf)
            .await
            .with_context(|| format!("writing Produce to {}", c.addr))?;
        match &c.tx {
            Some(tx) => {
                let inflight = InFlight {
                    correlation,
                    buf,
                    times,
                    parts: sent,
                };
                if tx.send(inflight).is_err() {
                    // The reader ended: it stored why.
                    let why = self.shared.failure.lock().expect("lock").take();
                    bail!(why.unwrap_or_else(|| "response reader ended".into()));
                }
            }
            None => {
                // acks=0: written is all there is; latency is to the end of the write.
                let done = now_ns();
                tally_acked(&mut self.acks0_tally, &self.plan, &times, done);
                self.shared.in_flight[ci].fetch_sub(1, Relaxed);
                self.shared
                    .spares
                    .lock()
                    .expect("lock")
                    .push((buf, times, sent));
            }
        }
        Ok(true)
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
    version: i16,
    shared: Arc<Shared>,
    plan: Arc<Plan>,
}

async fn read_responses(
    mut rd: BufReader<OwnedReadHalf>,
    mut rx: mpsc::UnboundedReceiver<InFlight>,
    ctx: ReaderCtx,
) -> Result<Tally> {
    let result = read_loop(&mut rd, &mut rx, &ctx).await;
    if let Err(e) = &result {
        ctx.shared.fail(format!("{e:#}"));
    }
    result
}

async fn read_loop(
    rd: &mut BufReader<OwnedReadHalf>,
    rx: &mut mpsc::UnboundedReceiver<InFlight>,
    ctx: &ReaderCtx,
) -> Result<Tally> {
    let mut tally = Tally::default();
    let mut rbuf = BytesMut::with_capacity(64 << 10);
    let header_version = ApiKey::Produce.response_header_version(ctx.version);
    let retries_allowed = ctx.plan.opts.retries;
    let backoff_ns = ctx.plan.opts.retry_backoff_ms * 1_000_000;
    while let Some(inf) = rx.recv().await {
        read_frame(rd, &mut rbuf).await?;
        let now = now_ns();
        let mut s: &[u8] = &rbuf;
        let header = ResponseHeader::decode(&mut s, header_version)?;
        if header.correlation_id != inf.correlation {
            bail!(
                "Produce response correlation id {} != {}",
                header.correlation_id,
                inf.correlation
            );
        }
        let resp = ProduceResponse::decode(&mut s, ctx.version)?;
        let mut answered = 0usize;
        for topic in &resp.responses {
            for (i, pr) in topic.partition_responses.iter().enumerate() {
                // Brokers answer in request order; fall back to a search if one does not.
                let sp = match inf.parts.get(i) {
                    Some(sp) if sp.partition == pr.index => sp,
                    _ => match inf.parts.iter().find(|sp| sp.partition == pr.index) {
                        Some(sp) => sp,
                        None => continue,
                    },
                };
                answered += 1;
                let times = &inf.times[sp.times.clone()];
                if pr.error_code == 0 {
                    tally_acked(&mut tally, &ctx.plan, times, now);
                    continue;
                }
                ctx.plan.live.errors.fetch_add(1, Relaxed);
                if is_retriable(pr.error_code) && sp.attempt < retries_allowed {
                    ctx.plan.live.retries.fetch_add(1, Relaxed);
                    ctx.shared.retries.lock().expect("lock").push((
                        ctx.conn,
                        Retry {
                            partition: sp.partition,
                            batch: Bytes::copy_from_slice(&inf.buf[sp.batch.clone()]),
                            times: times.to_vec(),
                            attempt: sp.attempt + 1,
                            not_before_ns: now + backoff_ns,
                        },
                    ));
                } else {
                    eprintln!(
                        "produce to {}-{} failed: error {} ({} records dropped)",
                        ctx.plan.layout.topic,
                        sp.partition,
                        pr.error_code,
                        times.len()
                    );
                }
            }
        }
        if answered < inf.parts.len() {
            ctx.plan
                .live
                .errors
                .fetch_add((inf.parts.len() - answered) as u64, Relaxed);
        }
        ctx.shared.in_flight[ctx.conn].fetch_sub(1, Relaxed);
        ctx.shared.responses.fetch_add(1, Relaxed);
        ctx.shared.notify.notify_one();
        ctx.shared
            .spares
            .lock()
            .expect("lock")
            .push((inf.buf, inf.times, inf.parts));
    }
    Ok(tally)
}

/// Builds the run's payloads and keys and checks options that would fail later.
pub fn validate(opts: &ProduceOpts, _layout: &Layout) -> Result<()> {
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
