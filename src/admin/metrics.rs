//! `/metrics`: `crate::metrics` in the Prometheus text format.
//!
//! Encoding uses the `prometheus-client` crate (the Prometheus project's Rust client) through
//! its `Collector` interface: the broker's counters stay the relaxed atomics the hot path
//! already bumps, and are read only here, on a scrape. Names follow the Kafka JMX exporter's
//! where Kafka has the metric (`kafka_server_brokertopicmetrics_bytesin_total`, ...), with a
//! `shard` label where ours are per core; the rest are `broker_*`.

use std::sync::atomic::Ordering;

use kafka_protocol::messages::ApiKey;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::shard::cpu_time::{self, CpuTime};

use crate::metrics::{
    BrokerStats, LatencyHistogram, DETAIL, LATENCY_BUCKET_BOUNDS_US, MAX_API_KEYS,
    MAX_API_VERSIONS, MAX_SHARD_CELLS,
};

/// What a scrape needs from the shards, fetched from shard 0 once per scrape.
#[derive(Debug, Clone, Default)]
pub struct ClusterGauges {
    /// Partitions each shard of this node owns.
    pub partitions_per_shard: Vec<usize>,
    pub under_replicated_partitions: usize,
    pub topics: usize,
}

/// One scrape's view: the shared counters plus the gauges gathered for it.
#[derive(Debug)]
struct Snapshot {
    stats: std::sync::Arc<BrokerStats>,
    gauges: ClusterGauges,
    shards: usize,
    uptime_seconds: f64,
    node_id: i32,
}

/// Renders the text exposition.
pub fn render(
    stats: std::sync::Arc<BrokerStats>,
    gauges: ClusterGauges,
    shards: usize,
    uptime_seconds: f64,
    node_id: i32,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        stats,
        gauges,
        shards,
        uptime_seconds,
        node_id,
    }));
    let mut out = String::with_capacity(32 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One counter per shard cell from the shards' CPU accounting; cells without figures are left
/// out.
fn cpu_time_counter<T: prometheus_client::encoding::EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    cells: &[Option<CpuTime>],
    value: impl Fn(&CpuTime) -> T,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (shard, time) in cells.iter().enumerate() {
        let Some(time) = time else { continue };
        let labels = [("shard", shard.to_string())];
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value(time), None)?;
    }
    Ok(())
}

/// A histogram as prometheus-client's encoder takes it: per-bucket (not cumulative) counts,
/// which it accumulates itself, with bounds in seconds.
fn histogram_parts(h: &LatencyHistogram) -> (f64, u64, Vec<(f64, u64)>) {
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            let bound = LATENCY_BUCKET_BOUNDS_US
                .get(i)
                // f64::MAX is how prometheus-client spells the +Inf bucket.
                .map_or(f64::MAX, |&us| us as f64 / 1e6);
            (bound, cell.load(Ordering::Relaxed))
        })
        .collect();
    // Count from the buckets, not `h.count`, so that `_count` equals the +Inf bucket even
    // while observations race with this scrape.
    let count = buckets.iter().map(|(_, n)| n).sum();
    let sum_seconds = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
    (sum_seconds, count, buckets)
}

fn api_name(key: usize) -> String {
    match ApiKey::try_from(key as i16) {
        Ok(api) => format!("{api:?}"),
        Err(_) => format!("Unknown{key}"),
    }
}

impl Snapshot {
    fn shard_counter(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(usize) -> u64,
    ) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for shard in 0..self.shards.min(MAX_SHARD_CELLS) {
            let labels = [("shard", shard.to_string())];
            metric
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value(shard), None)?;
        }
        Ok(())
    }

    /// The kernel's accounting of each shard's thread (`shard::cpu_time`). Shards beyond
    /// `MAX_SHARD_CELLS` fold onto the cells as the other per-shard metrics do; a shard the
    /// kernel gives no figures for is left out.
    fn shard_cpu_time(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut cells: Vec<Option<CpuTime>> = vec![None; self.shards.min(MAX_SHARD_CELLS)];
        for shard in 0..self.shards {
            if let Some(time) = cpu_time::read(shard) {
                *cells[shard % MAX_SHARD_CELLS].get_or_insert_with(CpuTime::default) += time;
            }
        }
        cpu_time_counter(
            encoder,
            "broker_shard_cpu_seconds",
            "Time the shard's thread ran on a CPU (the kernel's scheduler accounting).",
            &cells,
            |t| t.on_cpu.as_secs_f64(),
        )?;
        cpu_time_counter(
            encoder,
            "broker_shard_cpu_wait_seconds",
            "Time the shard's thread was ready to run but waited for a CPU that another thread or process had: what a busy machine adds to every wake-up.",
            &cells,
            |t| t.waiting.as_secs_f64(),
        )?;
        cpu_time_counter(
            encoder,
            "broker_shard_cpu_runs",
            "Times the shard's thread was put on a CPU (wait seconds over runs: the mean wait per wake-up).",
            &cells,
            |t| t.runs,
        )?;
        Ok(())
    }

    fn api_counter(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        cells: &crate::metrics::ApiCells,
    ) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for key in 0..MAX_API_KEYS {
            for version in 0..MAX_API_VERSIONS {
                let n = cells.get(key, version);
                if n == 0 {
                    continue;
                }
                let labels = [("request", api_name(key)), ("version", version.to_string())];
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        Ok(())
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let shards = &DETAIL.shards;
        self.shard_counter(
            &mut encoder,
            "kafka_server_brokertopicmetrics_bytesin",
            "Produce record bytes appended, by owner shard.",
            |s| get(&shards[s].bytes_in),
        )?;
        self.shard_counter(
            &mut encoder,
            "kafka_server_brokertopicmetrics_messagesin",
            "Records appended, by owner shard.",
            |s| get(&shards[s].messages_in),
        )?;
        self.shard_counter(
            &mut encoder,
            "kafka_server_brokertopicmetrics_bytesout",
            "Response bytes written to clients (fetched records included), by connection shard.",
            |s| get(&shards[s].bytes_out),
        )?;
        self.shard_counter(
            &mut encoder,
            "kafka_server_brokertopicmetrics_replicationbytesin",
            "Record bytes fetched from partition leaders by this broker's followers, by shard.",
            |s| get(&shards[s].replication_bytes_in),
        )?;
        self.shard_counter(
            &mut encoder,
            "broker_shard_stalls",
            "Times the shard's event loop did not come back within shard.stall.threshold.ms (a task that did not yield).",
            |s| get(&shards[s].stalls),
        )?;
        self.shard_counter(
            &mut encoder,
            "broker_slow_requests",
            "Requests that spent longer than request.slow.log.ms in the broker (a Fetch's long polls not counted), by connection shard.",
            |s| get(&shards[s].slow_requests),
        )?;
        self.shard_counter(
            &mut encoder,
            "broker_mesh_jobs",
            "Jobs received from other shards (cross-shard hops), by receiving shard.",
            |s| get(&shards[s].mesh_jobs),
        )?;
        self.shard_cpu_time(&mut encoder)?;
        self.shard_counter(
            &mut encoder,
            "broker_request_bytes",
            "Request bytes read from clients, by connection shard.",
            |s| get(&shards[s].request_bytes),
        )?;
        self.api_counter(
            &mut encoder,
            "kafka_network_requestmetrics_requests",
            "Requests by API and version.",
            &DETAIL.requests,
        )?;
        self.api_counter(
            &mut encoder,
            "kafka_network_requestmetrics_errors",
            "Requests that closed the connection (undecodable) or failed to encode a response, by API and version.",
            &DETAIL.request_errors,
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "kafka_network_requestmetrics_totaltime_seconds",
                "Time from reading a request to its response being ready (fetch includes its long-poll wait).",
                None,
                MetricType::Histogram,
            )?;
            for (request, h) in [
                ("Produce", &DETAIL.produce_latency),
                ("Fetch", &DETAIL.fetch_latency),
            ] {
                let (sum, count, buckets) = histogram_parts(h);
                let labels = [("request", request)];
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        for (name, help, histogram) in [
            (
                "broker_request_socket_wait_seconds",
                "How long each request's last bytes waited in its socket before its shard read them (the shard busy with other work), as Kafka's RequestQueueTimeMs.",
                &DETAIL.request_socket_wait,
            ),
            (
                "kafka_log_logflushstats_logflush_seconds",
                "fdatasync of a partition's active segment (one per group commit).",
                &DETAIL.fdatasync_latency,
            ),
            (
                "broker_segment_write_seconds",
                "One O_DIRECT write of a partition's active segment, submission to completion.",
                &DETAIL.segment_write_latency,
            ),
            (
                "broker_segment_write_wait_seconds",
                "How long each appended batch waited in its partition's queue for its write to start (behind the write in flight).",
                &DETAIL.segment_write_wait,
            ),
            (
                "broker_shard_stall_seconds",
                "How long each detected shard stall kept its event loop away, all shards.",
                &DETAIL.stall_duration,
            ),
            (
                "broker_shard_task_queue_run_seconds",
                "How long each task-queue run kept its shard's event loop from polling for I/O (submitting queued writes, noticing completions), all shards.",
                &DETAIL.task_queue_run,
            ),
        ] {
            let (sum, count, buckets) = histogram_parts(histogram);
            let mut metric =
                encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        counter(
            &mut encoder,
            "broker_fetch_warmed_bytes",
            "Segment bytes a fetch found outside the page cache and had read on a blocking thread first (instead of waiting for the device on the shard): into memory with O_DIRECT, or into the page cache.",
            get(&self.stats.warmed_fetch_bytes),
        )?;
        counter(
            &mut encoder,
            "broker_fetch_direct_read_bytes",
            "Of the cold segment bytes fetches read off the shard, those read with O_DIRECT into memory and sent from there (the rest went through the page cache).",
            get(&self.stats.direct_read_bytes),
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "broker_fetch_bytes",
                "Fetched record bytes by how they reached the socket: sendfile (zero_copy), a user-space copy after EAGAIN (copied), or the tail cache (memory).",
                None,
                MetricType::Counter,
            )?;
            for (path, value) in [
                ("zero_copy", get(&self.stats.zero_copy_bytes)),
                ("copied", get(&self.stats.copied_fetch_bytes)),
                ("memory", get(&self.stats.memory_fetch_bytes)),
            ] {
                let labels = [("path", path)];
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
        }
        let memory = get(&self.stats.memory_fetch_bytes) as f64;
        let files = (get(&self.stats.zero_copy_bytes) + get(&self.stats.copied_fetch_bytes)) as f64;
        gauge(
            &mut encoder,
            "broker_tail_cache_hit_ratio",
            "Share of fetched record bytes served from the tail cache since start (0 before any fetch).",
            if memory + files > 0.0 {
                memory / (memory + files)
            } else {
                0.0
            },
        )?;
        gauge(
            &mut encoder,
            "kafka_server_socketservermetrics_connection_count",
            "Open client connections.",
            self.stats.connections.load(Ordering::Relaxed) as f64,
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "broker_shard_connections",
                "Open client connections, by the shard serving them (new ones go to the shard with the fewest).",
                None,
                MetricType::Gauge,
            )?;
            for shard in 0..self.shards.min(MAX_SHARD_CELLS) {
                let labels = [("shard", shard.to_string())];
                let open = crate::metrics::DETAIL.shards[shard]
                    .connections
                    .load(Ordering::Relaxed);
                metric
                    .encode_family(&labels)?
                    .encode_gauge(&(open as i64))?;
            }
        }
        counter(
            &mut encoder,
            "broker_connections_refused",
            "Connections closed at accept because max.connections was reached.",
            get(&self.stats.connections_refused),
        )?;
        counter(
            &mut encoder,
            "broker_malformed_requests",
            "Requests that closed their connection (bad size, undecodable).",
            get(&self.stats.malformed_requests),
        )?;
        counter(
            &mut encoder,
            "broker_log_lines_dropped",
            "Log lines dropped because the log's output did not keep up (the writer's queue was full).",
            crate::logging::dropped_lines(),
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "kafka_server_replicamanager_partitioncount",
                "Partitions led by this node, by owner shard.",
                None,
                MetricType::Gauge,
            )?;
            for (shard, n) in self.gauges.partitions_per_shard.iter().enumerate() {
                let labels = [("shard", shard.to_string())];
                metric.encode_family(&labels)?.encode_gauge(&(*n as i64))?;
            }
        }
        gauge(
            &mut encoder,
            "kafka_server_replicamanager_underreplicatedpartitions",
            "Partitions in the cluster with fewer in-sync replicas than replicas.",
            self.gauges.under_replicated_partitions as f64,
        )?;
        counter(
            &mut encoder,
            "kafka_server_replicamanager_isrshrinks",
            "ISR shrinks of partitions this node leads, as committed by the coordination quorum.",
            crate::metrics::DETAIL.isr_shrinks.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "kafka_server_replicamanager_isrexpands",
            "ISR expansions of partitions this node leads.",
            crate::metrics::DETAIL.isr_expands.load(Ordering::Relaxed),
        )?;
        for (name, help, value) in [
            (
                "broker_log_segment_preallocated_bytes",
                "Bytes of segment files allocated ahead of their writes (fallocate).",
                &crate::metrics::DETAIL.segment_preallocated_bytes,
            ),
            (
                "broker_log_cleaner_runs",
                "Log cleaner runs that rewrote segments of compacted topics.",
                &crate::metrics::DETAIL.cleaner_runs,
            ),
            (
                "broker_log_cleaner_bytes_read",
                "Bytes of segments the log cleaner rewrote, before cleaning.",
                &crate::metrics::DETAIL.cleaner_bytes_read,
            ),
            (
                "broker_log_cleaner_bytes_written",
                "Bytes of the cleaned segments the log cleaner wrote.",
                &crate::metrics::DETAIL.cleaner_bytes_written,
            ),
            (
                "broker_log_cleaner_records_removed",
                "Records the log cleaner removed (superseded, expired tombstones, keyless).",
                &crate::metrics::DETAIL.cleaner_records_removed,
            ),
        ] {
            counter(&mut encoder, name, help, value.load(Ordering::Relaxed))?;
        }
        let sum_shards =
            |cell: fn(&crate::metrics::ShardCells) -> &std::sync::atomic::AtomicU64| {
                (0..self.shards.min(MAX_SHARD_CELLS))
                    .map(|s| get(cell(&shards[s])))
                    .sum::<u64>()
            };
        gauge(
            &mut encoder,
            "kafka_server_fetchsessioncache_numincrementalfetchsessions",
            "Incremental fetch sessions (KIP-227) open.",
            sum_shards(|c| &c.fetch_sessions) as f64,
        )?;
        gauge(
            &mut encoder,
            "kafka_server_fetchsessioncache_numincrementalfetchpartitionscached",
            "Partitions cached over the open fetch sessions.",
            sum_shards(|c| &c.fetch_session_partitions) as f64,
        )?;
        counter(
            &mut encoder,
            "kafka_server_fetchsessioncache_incrementalfetchsessionevictions",
            "Fetch sessions evicted to make room for new ones (max.incremental.fetch.session.cache.slots).",
            sum_shards(|c| &c.fetch_session_evictions),
        )?;
        counter(
            &mut encoder,
            "broker_journaled_bytes",
            "Batch bytes copied into the shards' journals (acks=1 answered before the segment write).",
            sum_shards(|c| &c.journaled_bytes),
        )?;
        counter(
            &mut encoder,
            "broker_journal_full",
            "Appends that found no room in their shard's journal: acks=1 waited for the oldest entries' writes to free it (or, for a batch over a quarter of the ring, for its own write).",
            sum_shards(|c| &c.journal_full),
        )?;
        counter(
            &mut encoder,
            "broker_incremental_fetch_requests",
            "Fetch requests served from a fetch session (listing only changed partitions).",
            sum_shards(|c| &c.incremental_fetches),
        )?;
        counter(
            &mut encoder,
            "kafka_coordinator_group_rebalances",
            "Consumer group rebalances completed on this node.",
            crate::metrics::DETAIL
                .group_rebalances
                .load(Ordering::Relaxed),
        )?;
        gauge(
            &mut encoder,
            "broker_topics",
            "Topics in the cluster.",
            self.gauges.topics as f64,
        )?;
        gauge(
            &mut encoder,
            "broker_uptime_seconds",
            "Seconds since the console started (with the broker).",
            self.uptime_seconds,
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "broker_build",
                "Constant 1, labelled with this node's id and version.",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("node_id", self.node_id.to_string()),
            ];
            metric.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
        Ok(())
    }
}
