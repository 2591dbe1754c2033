//! Runs a workload (produce, consume, e2e) and reports its figures.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cli::{
    Common, ConsumeCmd, ConsumeOpts, E2eCmd, KeyDist, ProduceCmd, ProduceOpts, StartAt, StopOpts,
    Workload,
};
use crate::client::{self, Router};
use crate::clock::now_ns;
use crate::consumer;
use crate::lateness::{self, HarnessLateness, Lateness};
use crate::payload::{Keys, Payloads};
use crate::producer;
use crate::retry::{Op, RetrySummary};
use crate::stats::{Figures, LatencySummary, Live, Tally};
use crate::usage::{Sample, Usage};
use crate::wire::{RecordSpec, BATCH_HEADER_LEN};

/// Default run length when neither --messages nor --duration-secs is given.
const DEFAULT_MESSAGES: u64 = 1_000_000;

#[derive(Debug, Serialize, Clone)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub workload: String,
    pub target: String,
    pub topic: String,
    pub partitions: u32,
    pub started_unix_ms: u64,
    pub warmup_secs: f64,
    pub config: serde_json::Value,
    pub produce: Option<Figures>,
    pub consume: Option<Figures>,
    /// Send time (carried in each payload) to receipt by a consumer.
    pub e2e_latency: Option<LatencySummary>,
    /// Requests retried after retriable errors or failed connections, by request and reason.
    pub retries: RetrySummary,
    /// The broker's limit on one record batch, when it tells (DescribeConfigs).
    pub batch_limit: Option<BatchLimit>,
    /// How late the harness itself ran (its event loop, its open-loop schedule), µs.
    pub harness_lateness: Option<HarnessLateness>,
    /// Whether consumers used incremental fetch sessions, and how.
    pub fetch_sessions: Option<consumer::FetchSessions>,
    pub usage: Option<Usage>,
    pub notes: Vec<String>,
}

impl Report {
    fn new(workload: &str, common: &Common, router: &Router, config: serde_json::Value) -> Report {
        Report {
            tool: "bench-harness",
            version: env!("CARGO_PKG_VERSION"),
            workload: workload.to_string(),
            target: common.bootstrap.clone(),
            topic: common.topic.clone(),
            partitions: router.layout().partitions(),
            started_unix_ms: now_ns() / 1_000_000,
            warmup_secs: common.warmup_secs,
            config,
            produce: None,
            consume: None,
            e2e_latency: None,
            retries: RetrySummary::default(),
            batch_limit: None,
            harness_lateness: None,
            fetch_sessions: None,
            usage: None,
            notes: Vec::new(),
        }
    }

    /// Human-readable summary.
    pub fn print(&self) {
        println!(
            "{} -> {} topic {} ({} partitions){}",
            self.workload,
            self.target,
            self.topic,
            self.partitions,
            if self.warmup_secs > 0.0 {
                format!(", warm-up {} s excluded", self.warmup_secs)
            } else {
                String::new()
            }
        );
        if let Some(f) = &self.produce {
            println!("produce: {}", f.line());
            if let Some(l) = &f.latency {
                println!("produce latency (send to ack): {}", l.line());
            }
        }
        if let Some(f) = &self.consume {
            println!("consume: {}", f.line());
        }
        if let Some(l) = &self.e2e_latency {
            println!("end-to-end latency (send to receive): {}", l.line());
        }
        println!("retries: {}", self.retries.line());
        if let Some(l) = &self.batch_limit {
            println!(
                "broker limit on a record batch: {} = {} bytes; --batch-size {} used",
                l.source, l.max_message_bytes, l.batch_size_used
            );
        }
        if let Some(f) = &self.fetch_sessions {
            println!("fetch sessions: {}", f.line());
        }
        if let Some(l) = &self.harness_lateness {
            println!("harness lateness: {}", l.line());
        }
        if let Some(u) = &self.usage {
            println!("{}", u.line());
        }
        for n in &self.notes {
            println!("note: {n}");
        }
    }

    /// Stops the ticker and reports what it and the producers measured.
    fn set_lateness(&mut self, l: &Lateness, ticker: Option<tokio::task::JoinHandle<()>>) {
        if let Some(t) = ticker {
            t.abort();
        }
        let summary = l.summary();
        if let Some(n) = summary.stall_note() {
            self.notes.push(n);
        }
        self.harness_lateness = Some(summary);
    }

    fn set_batch_limit(&mut self, limit: Option<BatchLimit>) {
        if let Some(l) = &limit {
            if l.batch_size_used < l.batch_size_requested {
                self.notes.push(format!(
                    "--batch-size {} capped to {} to fit the broker's {} = {}",
                    l.batch_size_requested, l.batch_size_used, l.source, l.max_message_bytes
                ));
            }
        }
        self.batch_limit = limit;
    }

    pub fn write_json(&self, path: &std::path::Path) -> Result<()> {
        let f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), self)?;
        Ok(())
    }
}

pub async fn run(w: &Workload) -> Result<Report> {
    match w {
        Workload::Produce(c) => run_produce(c).await,
        Workload::Consume(c) => run_consume(c).await,
        Workload::E2e(c) => run_e2e(c).await,
    }
}

fn secs_ns(s: f64) -> u64 {
    (s.max(0.0) * 1e9) as u64
}

async fn router(common: &Common) -> Result<Arc<Router>> {
    Router::prepare(
        &common.bootstrap,
        &common.topic,
        common.create_topic,
        common.partitions,
        common.replication_factor,
        &common.client_id,
        common.retry_policy(),
    )
    .await
}

/// What the broker allows in one record batch, and the batch size a run used because of it.
#[derive(Debug, Serialize, Clone)]
pub struct BatchLimit {
    /// Largest record batch the broker accepts, bytes.
    pub max_message_bytes: usize,
    /// The setting it comes from, e.g. `max.message.bytes of topic w1`.
    pub source: String,
    pub batch_size_requested: usize,
    pub batch_size_used: usize,
}

/// Reads the broker's limit on one record batch (if it answers DescribeConfigs) and caps
/// `--batch-size` so that every batch fits: a batch holds `batch_size / record` records of at
/// most `record` bytes (the upper-bound size the producer batches by) plus its 61-byte header.
/// With Kafka's default `message.max.bytes` (1,048,588) the max-rate workloads' 1 MiB batches of
/// 1 KiB records fit as they are (1,001 records, at most 1,048,108 bytes); larger records or a
/// smaller limit get a smaller batch instead of MESSAGE_TOO_LARGE.
async fn fit_batch_size(
    router: &Router,
    opts: &ProduceOpts,
) -> Result<(ProduceOpts, Option<BatchLimit>)> {
    let mut opts = opts.clone();
    let Some((limit, source)) = client::max_message_bytes(router).await else {
        return Ok((opts, None));
    };
    let key_len = (opts.key_dist != KeyDist::None).then_some(opts.key_size.max(1));
    let record = RecordSpec::size_estimate(key_len, opts.message_size);
    let requested = opts.batch_size;
    opts.batch_size = batch_size_within(requested, record, limit).ok_or_else(|| {
        anyhow::anyhow!(
            "one record of --message-size {} (up to {record} bytes encoded, plus a \
             {BATCH_HEADER_LEN}-byte batch header) does not fit the broker's {source} = {limit}; \
             raise it or send smaller messages",
            opts.message_size
        )
    })?;
    if opts.batch_size != requested {
        eprintln!(
            "note: --batch-size {requested} does not fit the broker's {source} = {limit}: \
             using {}",
            opts.batch_size
        );
    }
    Ok((
        opts.clone(),
        Some(BatchLimit {
            max_message_bytes: limit,
            source,
            batch_size_requested: requested,
            batch_size_used: opts.batch_size,
        }),
    ))
}

/// The batch size to use so that a batch of `batch_size / record` records of at most `record`
/// bytes, plus its header, stays within `limit`: `batch_size` itself if it does, the largest
/// whole number of records that does otherwise, `None` if not even one record fits.
fn batch_size_within(batch_size: usize, record: usize, limit: usize) -> Option<usize> {
    let room = limit.checked_sub(BATCH_HEADER_LEN)?;
    if record > room {
        return None;
    }
    let largest = (batch_size / record).max(1) * record + BATCH_HEADER_LEN;
    Some(if largest <= limit {
        batch_size
    } else {
        room / record * record
    })
}

fn producer_plan(
    common: &Common,
    opts: &ProduceOpts,
    stop: &StopOpts,
    router: &Arc<Router>,
    start_ns: u64,
    lateness: &Arc<Lateness>,
) -> Result<producer::Plan> {
    producer::validate(opts)?;
    let partitions = router.layout().partitions();
    let measure_start_ns = start_ns + secs_ns(common.warmup_secs);
    let messages = match (stop.messages, stop.duration_secs) {
        (None, None) => Some(DEFAULT_MESSAGES),
        (m, _) => m,
    };
    Ok(producer::Plan {
        opts: opts.clone(),
        router: router.clone(),
        partitions,
        client_id: common.client_id.clone(),
        payloads: Payloads::new(opts.message_size, opts.payload, 0x7061_796c),
        keys: Keys::new(
            opts.key_dist,
            opts.key_count,
            opts.key_size,
            partitions,
            0x006b_6579,
        ),
        start_ns,
        measure_start_ns,
        stop_ns: stop.duration_secs.map(|d| measure_start_ns + secs_ns(d)),
        messages,
        live: Arc::new(Live::default()),
        lateness: lateness.clone(),
    })
}

async fn spawn_producers(plan: Arc<producer::Plan>) -> JoinSet<Result<Tally>> {
    let n = plan.opts.producers;
    let mut set = JoinSet::new();
    for i in 0..n {
        set.spawn(producer::run(plan.clone(), i, n));
    }
    set
}

async fn join_all(mut set: JoinSet<Result<Tally>>) -> Result<Tally> {
    let mut total = Tally::default();
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(t)) => total.merge(&t),
            Ok(Err(e)) => {
                if first_err.is_none() {
                    first_err = Some(e);
                    set.abort_all();
                }
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => bail!("task failed: {e}"),
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Prints a progress line every `every` seconds once the run is past 3 s.
fn spawn_progress(
    every: f64,
    start_ns: u64,
    produce: Option<Arc<Live>>,
    consume: Option<Arc<Live>>,
) -> Option<tokio::task::JoinHandle<()>> {
    if every <= 0.0 {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut last = (now_ns(), 0u64, 0u64, 0u64, 0u64);
        loop {
            tokio::time::sleep(Duration::from_secs_f64(every)).await;
            let now = now_ns();
            let elapsed = (now - start_ns) as f64 / 1e9;
            let dt = (now - last.0) as f64 / 1e9;
            let read = |l: &Option<Arc<Live>>| {
                l.as_ref()
                    .map_or((0, 0), |l| (l.msgs.load(Relaxed), l.bytes.load(Relaxed)))
            };
            let (pm, pb) = read(&produce);
            let (cm, cb) = read(&consume);
            let mut line = format!("[{elapsed:7.1} s]");
            if produce.is_some() {
                line += &format!(
                    " produce {:>9.0} msg/s {:>7.1} MB/s",
                    (pm - last.1) as f64 / dt,
                    (pb - last.2) as f64 / dt / 1e6
                );
            }
            if consume.is_some() {
                line += &format!(
                    " | consume {:>9.0} msg/s {:>7.1} MB/s",
                    (cm - last.3) as f64 / dt,
                    (cb - last.4) as f64 / dt / 1e6
                );
            }
            if let Some(c) = &consume {
                let max_us = c.max_latency_us.swap(0, Relaxed);
                if max_us > 0 {
                    line += &format!(" | e2e max {:>7.1} ms", max_us as f64 / 1e3);
                }
            }
            let errors: u64 = [&produce, &consume]
                .iter()
                .filter_map(|l| l.as_ref())
                .map(|l| l.errors.load(Relaxed))
                .sum();
            if errors > 0 {
                line += &format!(" | errors {errors}");
            }
            let retries: u64 = [&produce, &consume]
                .iter()
                .filter_map(|l| l.as_ref())
                .map(|l| l.retries.load(Relaxed))
                .sum();
            if retries > 0 {
                line += &format!(" | retries {retries}");
            }
            if elapsed >= 3.0 {
                eprintln!("{line}");
            }
            last = (now, pm, pb, cm, cb);
        }
    }))
}

/// Samples CPU (and broker memory) at the end of the warm-up.
fn spawn_usage_start(pid: Option<u32>, at_ns: u64) -> tokio::task::JoinHandle<Sample> {
    tokio::spawn(async move {
        let now = now_ns();
        if at_ns > now {
            tokio::time::sleep(Duration::from_nanos(at_ns - now)).await;
        }
        Sample::take(pid)
    })
}

pub async fn run_produce(cmd: &ProduceCmd) -> Result<Report> {
    let router = router(&cmd.common).await?;
    let (popts, batch_limit) = fit_batch_size(&router, &cmd.produce).await?;
    let start_ns = now_ns() + 20_000_000;
    let lateness = Lateness::new(cmd.common.lateness_tick_us, popts.rate.is_some());
    let plan = Arc::new(producer_plan(
        &cmd.common,
        &popts,
        &cmd.stop,
        &router,
        start_ns,
        &lateness,
    )?);
    let ticker = lateness::spawn_ticker(&lateness, plan.measure_start_ns);
    let mut report = Report::new(
        "produce",
        &cmd.common,
        &router,
        serde_json::json!({
            "common": cmd.common, "stop": cmd.stop, "produce": cmd.produce,
        }),
    );
    report.set_batch_limit(batch_limit);
    let usage0 = spawn_usage_start(cmd.common.broker_pid, plan.measure_start_ns);
    let progress = spawn_progress(
        cmd.common.progress_secs,
        start_ns,
        Some(plan.live.clone()),
        None,
    );
    let tally = join_all(spawn_producers(plan.clone()).await).await;
    if let Some(p) = progress {
        p.abort();
    }
    let tally = tally?;
    let usage1 = Sample::take(cmd.common.broker_pid);
    let figs = Figures::new(
        &tally,
        plan.measure_start_ns,
        None,
        plan.live.errors.load(Relaxed),
        plan.live.retries.load(Relaxed),
    );
    report.usage = Some(Usage::between(&usage0.await?, &usage1, figs.bytes));
    report.produce = Some(figs);
    report.retries = router.stats.summary();
    report.set_lateness(&lateness, ticker);
    add_notes(&mut report, Some(&cmd.produce), Some(&plan.live), None);
    Ok(report)
}

fn add_notes(
    report: &mut Report,
    p: Option<&ProduceOpts>,
    live: Option<&Live>,
    c: Option<&ConsumeOpts>,
) {
    if let Some(p) = p {
        report.notes.push(match p.rate {
            Some(r) => format!(
                "open loop at {r} msgs/s: latency from each record's scheduled send time (coordinated omission corrected)"
            ),
            None => "max rate (closed loop): latency from record creation to ack".to_string(),
        });
        if let Some(l) = live.filter(|l| l.overloaded.load(Relaxed)) {
            let retries = l.retries.load(Relaxed);
            report.notes.push(format!(
                "OVERLOADED: the open-loop schedule fell more than {} s behind, so generation stopped early; the target cannot sustain {} msgs/s{}",
                p.max_lag_secs,
                p.rate.unwrap_or_default(),
                if retries > 0 {
                    format!(" (or was unavailable: {retries} produce retries)")
                } else {
                    String::new()
                }
            ));
        }
        if p.acks.0 == 0 {
            report
                .notes
                .push("acks=0: produce latency is to the end of the socket write".to_string());
        }
    }
    if c.is_some() {
        report.notes.push(
            "consumers assign partitions directly (no consumer group); consume MB/s counts record-batch bytes"
                .to_string(),
        );
    }
}

/// Where consumers start and stop, and what they measure.
struct Reading {
    by_send_time: bool,
    start_offsets: HashMap<u32, i64>,
    end_offsets: Option<HashMap<u32, i64>>,
    measure_start_ns: u64,
    parse_values: bool,
    messages: Option<u64>,
}

fn consumer_plan(
    common: &Common,
    opts: &ConsumeOpts,
    router: &Arc<Router>,
    r: Reading,
) -> Arc<consumer::Plan> {
    let Reading {
        by_send_time,
        start_offsets,
        end_offsets,
        measure_start_ns,
        parse_values,
        messages,
    } = r;
    let (stop_tx, _) = watch::channel(false);
    Arc::new(consumer::Plan {
        opts: opts.clone(),
        router: router.clone(),
        partitions: router.layout().partitions(),
        client_id: common.client_id.clone(),
        start_offsets,
        end_offsets,
        measure_start_ns,
        parse_values,
        measure_by_send_time: by_send_time,
        connection_per_group: parse_values,
        live: Arc::new(Live::default()),
        measured: Default::default(),
        messages,
        stop_tx,
        pool: Default::default(),
        sessions: Default::default(),
    })
}

/// Stops consumers at the deadline, or after `idle` without a record (once `armed` says so).
fn spawn_consume_monitor(
    plan: Arc<consumer::Plan>,
    deadline_ns: Option<u64>,
    idle: Duration,
    armed: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        let mut last = plan.live.msgs.load(Relaxed);
        let mut last_change = now_ns();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if *plan.stop_tx.borrow() {
                return false;
            }
            let now = now_ns();
            if deadline_ns.is_some_and(|d| now >= d) {
                let _ = plan.stop_tx.send(true);
                return false;
            }
            let m = plan.live.msgs.load(Relaxed);
            if m != last {
                last = m;
                last_change = now;
            } else if *armed.borrow() && now - last_change >= idle.as_nanos() as u64 {
                let _ = plan.stop_tx.send(true);
                return true;
            }
        }
    })
}

pub async fn run_consume(cmd: &ConsumeCmd) -> Result<Report> {
    consumer::validate(&cmd.consume)?;
    let common = &cmd.common;
    let router = router(common).await?;
    let all: Vec<u32> = (0..router.layout().partitions()).collect();
    let ts = match cmd.consume.from {
        StartAt::Beginning => client::EARLIEST,
        StartAt::End => client::LATEST,
    };
    let start_offsets = client::list_offsets(&router, &all, ts).await?;
    let to_end = cmd.to_end
        || (cmd.consume.from == StartAt::Beginning
            && cmd.stop.messages.is_none()
            && cmd.stop.duration_secs.is_none());
    let end_offsets = if to_end {
        Some(client::list_offsets(&router, &all, client::LATEST).await?)
    } else {
        None
    };
    let backlog: i64 = end_offsets
        .as_ref()
        .map(|e| all.iter().map(|p| e[p] - start_offsets[p]).sum())
        .unwrap_or(0);
    let start_ns = now_ns();
    let measure_start_ns = start_ns + secs_ns(common.warmup_secs);
    let lateness = Lateness::new(common.lateness_tick_us, false);
    let ticker = lateness::spawn_ticker(&lateness, measure_start_ns);
    let plan = consumer_plan(
        common,
        &cmd.consume,
        &router,
        Reading {
            start_offsets,
            end_offsets,
            measure_start_ns,
            parse_values: cmd.e2e_latency,
            by_send_time: false,
            messages: cmd.stop.messages,
        },
    );
    let mut report = Report::new(
        "consume",
        common,
        &router,
        serde_json::json!({
            "common": common, "stop": cmd.stop, "consume": cmd.consume,
            "to_end": to_end, "e2e_latency": cmd.e2e_latency,
        }),
    );
    let usage0 = spawn_usage_start(common.broker_pid, measure_start_ns);
    let progress = spawn_progress(
        common.progress_secs,
        start_ns,
        None,
        Some(plan.live.clone()),
    );
    let deadline = cmd
        .stop
        .duration_secs
        .map(|d| measure_start_ns + secs_ns(d));
    let (_armed_tx, armed) = watch::channel(true);
    let monitor = spawn_consume_monitor(
        plan.clone(),
        deadline,
        Duration::from_secs_f64(cmd.consume.idle_timeout_secs),
        armed,
    );
    consumer::start(&plan)?;
    let tally = consumer::join(&plan).await;
    monitor.abort();
    let idled = monitor.await.unwrap_or(false);
    if let Some(p) = progress {
        p.abort();
    }
    let tally = tally?;
    let usage1 = Sample::take(common.broker_pid);
    let end = deadline.map(|d| d.min(now_ns()));
    let mut figs = Figures::new(
        &tally,
        measure_start_ns,
        if cmd.stop.duration_secs.is_some() {
            end
        } else {
            None
        },
        plan.live.errors.load(Relaxed),
        router.stats.count(Op::Fetch),
    );
    if cmd.e2e_latency {
        report.e2e_latency = figs.latency.take();
    }
    report.usage = Some(Usage::between(&usage0.await?, &usage1, figs.bytes));
    report.consume = Some(figs);
    report.fetch_sessions = Some(plan.fetch_sessions());
    report.retries = router.stats.summary();
    report.set_lateness(&lateness, ticker);
    if to_end {
        report.notes.push(format!(
            "catch-up read of {backlog} records (end offsets taken at start)"
        ));
    }
    if idled {
        report.notes.push(format!(
            "stopped after {} s without records",
            cmd.consume.idle_timeout_secs
        ));
    }
    add_notes(&mut report, None, None, Some(&cmd.consume));
    Ok(report)
}

pub async fn run_e2e(cmd: &E2eCmd) -> Result<Report> {
    consumer::validate(&cmd.consume)?;
    let common = &cmd.common;
    if cmd.produce.message_size < crate::wire::STAMP_LEN {
        bail!("e2e needs --message-size of at least 16 (the send time travels in the payload)");
    }
    let router = router(common).await?;
    let (popts, batch_limit) = fit_batch_size(&router, &cmd.produce).await?;
    let all: Vec<u32> = (0..router.layout().partitions()).collect();
    // Consumers start at the end, so they see only this run's records.
    let start_offsets = client::list_offsets(&router, &all, client::LATEST).await?;
    // Leave the consumers time to connect and send their first fetch.
    let start_ns = now_ns() + 200_000_000;
    let lateness = Lateness::new(common.lateness_tick_us, popts.rate.is_some());
    let pplan = Arc::new(producer_plan(
        common, &popts, &cmd.stop, &router, start_ns, &lateness,
    )?);
    let ticker = lateness::spawn_ticker(&lateness, pplan.measure_start_ns);
    let cplan = consumer_plan(
        common,
        &cmd.consume,
        &router,
        Reading {
            start_offsets,
            end_offsets: None,
            measure_start_ns: pplan.measure_start_ns,
            parse_values: true,
            by_send_time: true,
            messages: None,
        },
    );
    let mut report = Report::new(
        "e2e",
        common,
        &router,
        serde_json::json!({
            "common": common, "stop": cmd.stop, "produce": cmd.produce, "consume": cmd.consume,
        }),
    );
    report.set_batch_limit(batch_limit);
    let usage0 = spawn_usage_start(common.broker_pid, pplan.measure_start_ns);
    let progress = spawn_progress(
        common.progress_secs,
        start_ns,
        Some(pplan.live.clone()),
        Some(cplan.live.clone()),
    );
    consumer::start(&cplan)?;
    let (armed_tx, armed) = watch::channel(false);
    let monitor = spawn_consume_monitor(
        cplan.clone(),
        None,
        Duration::from_secs_f64(cmd.consume.idle_timeout_secs),
        armed,
    );
    let consumers_done = {
        let cplan = cplan.clone();
        tokio::spawn(async move { consumer::join(&cplan).await })
    };
    let produced = join_all(spawn_producers(pplan.clone()).await).await;
    let produce_end = now_ns();
    if produced.is_err() {
        let _ = cplan.stop_tx.send(true);
    }
    let ptally = produced?;
    // Everything acked should arrive; stop once it has (or after the idle timeout).
    let _ = armed_tx.send(true);
    let target = pplan.live.msgs.load(Relaxed);
    let stopper = {
        let cplan = cplan.clone();
        tokio::spawn(async move {
            loop {
                if cplan.live.msgs.load(Relaxed) >= target || *cplan.stop_tx.borrow() {
                    let _ = cplan.stop_tx.send(true);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let ctally = consumers_done.await??;
    stopper.abort();
    monitor.abort();
    let idled = monitor.await.unwrap_or(false);
    if let Some(p) = progress {
        p.abort();
    }
    let usage1 = Sample::take(common.broker_pid);
    let pfigs = Figures::new(
        &ptally,
        pplan.measure_start_ns,
        None,
        pplan.live.errors.load(Relaxed),
        pplan.live.retries.load(Relaxed),
    );
    let mut cfigs = Figures::new(
        &ctally,
        pplan.measure_start_ns,
        None,
        cplan.live.errors.load(Relaxed),
        router.stats.count(Op::Fetch),
    );
    report.e2e_latency = cfigs.latency.take();
    report.usage = Some(Usage::between(&usage0.await?, &usage1, pfigs.bytes));
    let received = cplan.live.msgs.load(Relaxed);
    if received < target {
        report.notes.push(format!(
            "consumers received {received} of {target} acked records{}",
            if idled {
                " (stopped by the idle timeout)"
            } else {
                ""
            }
        ));
    }
    let _ = produce_end;
    report.fetch_sessions = Some(cplan.fetch_sessions());
    report.retries = router.stats.summary();
    report.set_lateness(&lateness, ticker);
    report.produce = Some(pfigs);
    report.consume = Some(cfigs);
    add_notes(
        &mut report,
        Some(&cmd.produce),
        Some(&pplan.live),
        Some(&cmd.consume),
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Cmd};
    use clap::Parser;

    async fn null_broker() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let args = match Cli::parse_from(["bench-harness", "null-broker", "--partitions", "4"]).cmd
        {
            Cmd::NullBroker(a) => a,
            _ => unreachable!(),
        };
        tokio::spawn(crate::null_broker::serve_on(listener, args));
        addr
    }

    fn workload(args: &[&str]) -> Workload {
        let mut argv = vec!["bench-harness"];
        argv.extend_from_slice(args);
        match Cli::parse_from(argv).cmd {
            Cmd::Produce(c) => Workload::Produce(c),
            Cmd::Consume(c) => Workload::Consume(c),
            Cmd::E2e(c) => Workload::E2e(c),
            _ => unreachable!(),
        }
    }

    #[test]
    fn batch_sizes_fit_the_brokers_limit() {
        let kafka_default = 1_048_588;
        let record = RecordSpec::size_estimate(None, 1024); // W1's records
        assert_eq!(record, 1047);
        // W1's 1 MiB batches already fit Kafka's default: 1,001 records, 1,048,108 bytes.
        assert_eq!(
            batch_size_within(1 << 20, record, kafka_default),
            Some(1 << 20)
        );
        // 8 KiB records: 128 of them would not, 127 do.
        let big = RecordSpec::size_estimate(None, 8192);
        let fit = batch_size_within(1 << 20, big, kafka_default).unwrap();
        assert_eq!(fit / big, 127);
        assert!(fit / big * big + BATCH_HEADER_LEN <= kafka_default);
        // Smaller than the limit: unchanged; one record too big: none.
        assert_eq!(
            batch_size_within(65_536, record, kafka_default),
            Some(65_536)
        );
        assert_eq!(batch_size_within(65_536, record, 1000), None);
    }

    /// Every workload runs end to end against the null broker, over real sockets, and counts
    /// exactly what it was asked for.
    #[tokio::test]
    async fn workloads_against_the_null_broker() {
        let addr = null_broker().await;
        let common = [
            "--bootstrap",
            &addr,
            "--topic",
            "t",
            "--partitions",
            "4",
            "--progress-secs",
            "0",
        ];

        let produce = |extra: &[&str]| {
            let mut a = vec!["produce"];
            a.extend_from_slice(&common);
            a.extend_from_slice(&["--messages", "20000", "--message-size", "200"]);
            a.extend_from_slice(extra);
            workload(&a)
        };
        for extra in [
            &[][..],
            &["--acks", "0"],
            &["--acks", "all", "--key-dist", "random", "--producers", "3"],
            &[
                "--rate",
                "40000",
                "--linger-ms",
                "0.5",
                "--compression",
                "none",
            ],
        ] {
            let r = run(&produce(extra)).await.unwrap();
            let p = r.produce.unwrap();
            assert_eq!(p.msgs, 20_000, "{extra:?}");
            assert_eq!(p.bytes, 20_000 * 200);
            assert_eq!(p.errors, 0);
            assert_eq!(p.latency.unwrap().count, 20_000);
            assert_eq!(r.partitions, 4);
        }

        // The null broker serves an endless log: read a fixed number of records.
        let mut a = vec!["consume"];
        a.extend_from_slice(&common);
        a.extend_from_slice(&["--messages", "50000", "--consumers", "2"]);
        let r = run(&workload(&a)).await.unwrap();
        assert!(r.consume.unwrap().msgs >= 50_000);

        let mut a = vec!["e2e"];
        a.extend_from_slice(&common);
        a.extend_from_slice(&["--messages", "5000", "--idle-timeout-secs", "1"]);
        let r = run(&workload(&a)).await.unwrap();
        assert_eq!(r.produce.unwrap().msgs, 5_000);
        // The null broker's records carry no send stamps, so there is no e2e latency to show.
        assert!(r.e2e_latency.is_none());

        // In echo mode it serves back what was produced: every stamped record arrives.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo = listener.local_addr().unwrap().to_string();
        let args = match Cli::parse_from(["bench-harness", "null-broker", "--echo"]).cmd {
            Cmd::NullBroker(a) => a,
            _ => unreachable!(),
        };
        tokio::spawn(crate::null_broker::serve_on(listener, args));
        let r = run(&workload(&[
            "e2e",
            "--bootstrap",
            &echo,
            "--topic",
            "e",
            "--partitions",
            "3",
            "--progress-secs",
            "0",
            "--messages",
            "5000",
            "--rate",
            "20000",
        ]))
        .await
        .unwrap();
        assert_eq!(r.produce.unwrap().msgs, 5_000);
        assert_eq!(r.consume.unwrap().msgs, 5_000);
        assert_eq!(r.e2e_latency.unwrap().count, 5_000);
    }
}
