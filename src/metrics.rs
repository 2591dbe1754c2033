//! Process-wide counters. Relaxed atomics: they are statistics, never used to synchronise.
//! Updated once per request or response, never per record.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Open client connections over all shards (checked against `max.connections`).
    pub connections: AtomicUsize,
    pub connections_refused: AtomicU64,
    /// Fetch record bytes sent from segment files to sockets with sendfile.
    pub zero_copy_bytes: AtomicU64,
    /// Fetch record bytes that went through a user-space buffer (socket buffer was full).
    pub copied_fetch_bytes: AtomicU64,
    /// Fetch record bytes served from the partitions' tail caches (memory, not the files).
    pub memory_fetch_bytes: AtomicU64,
    /// Segment bytes read on a blocking thread before a fetch read them (`storage::direct_read`,
    /// `storage::warm`): cold bytes that would otherwise have been waited for on the shard.
    pub warmed_fetch_bytes: AtomicU64,
    /// Of those, the bytes read with O_DIRECT into memory and sent from there
    /// (`storage::direct_read`); the rest went through the page cache.
    pub direct_read_bytes: AtomicU64,
    pub produced_bytes: AtomicU64,
    pub requests: AtomicU64,
    pub malformed_requests: AtomicU64,
}

impl BrokerStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A one-line summary for the log.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "connections={} requests={} produced_bytes={} fetch_zero_copy_bytes={} fetch_copied_bytes={} fetch_memory_bytes={} malformed_requests={} connections_refused={}",
            self.connections.load(Ordering::Relaxed),
            get(&self.requests),
            get(&self.produced_bytes),
            get(&self.zero_copy_bytes),
            get(&self.copied_fetch_bytes),
            get(&self.memory_fetch_bytes),
            get(&self.malformed_requests),
            get(&self.connections_refused),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Detailed counters for `/metrics` and the console (src/admin/). Static, fixed-size and
// lock-free: the hot path does one relaxed `fetch_add` per event on a cell it indexes directly
// (no map lookup, no allocation); the scrape reads them all.

/// Shards with cells of their own; a broker with more shards folds the rest onto these
/// (`shard % MAX_SHARD_CELLS`), which keeps the statics fixed-size.
pub const MAX_SHARD_CELLS: usize = 64;
/// Kafka API keys below this are counted per key and version (ours all are).
pub const MAX_API_KEYS: usize = 80;
/// Versions below this are counted per version; higher ones land on the last cell.
pub const MAX_API_VERSIONS: usize = 20;

/// One shard's counters, on their own cache lines so shards never write the same line.
#[repr(align(128))]
#[derive(Debug)]
pub struct ShardCells {
    /// Produce record bytes appended by this shard (as owner of the partitions).
    pub bytes_in: AtomicU64,
    /// Records appended by this shard.
    pub messages_in: AtomicU64,
    /// Response bytes written to clients by this shard's connections (fetch records included).
    pub bytes_out: AtomicU64,
    /// Request frame bytes read by this shard's connections.
    pub request_bytes: AtomicU64,
    /// Record bytes this shard's followers fetched from partition leaders and appended.
    pub replication_bytes_in: AtomicU64,
    /// Incremental fetch sessions (KIP-227) open in this shard's cache (a gauge).
    pub fetch_sessions: AtomicU64,
    /// Partitions cached over those sessions (a gauge).
    pub fetch_session_partitions: AtomicU64,
    /// Sessions this shard's cache evicted to make room for new ones.
    pub fetch_session_evictions: AtomicU64,
    /// Incremental fetch requests served from this shard's sessions.
    pub incremental_fetches: AtomicU64,
    /// Times this shard's event loop did not come back within `shard.stall.threshold.ms`
    /// (`shard::stall`).
    pub stalls: AtomicU64,
    /// Requests that spent longer than `request.slow.log.ms` in the broker, by connection
    /// shard (`net::slow_request`).
    pub slow_requests: AtomicU64,
    /// Jobs other shards sent this shard over the mesh: one per cross-shard hop (a request's
    /// share for the partitions this shard owns, a fetch's read or long-poll wait, ...). Each
    /// can wake the shard, which is most of what a small request costs.
    pub mesh_jobs: AtomicU64,
    /// Client connections this shard serves now (a gauge; `net::balance` places them).
    pub connections: AtomicU64,
    /// Batch bytes this shard copied into its journal (`storage::journal`).
    pub journaled_bytes: AtomicU64,
    /// Appends the journal had no room for: they waited for room (or their own write).
    pub journal_full: AtomicU64,
}

impl ShardCells {
    const fn new() -> ShardCells {
        ShardCells {
            bytes_in: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            request_bytes: AtomicU64::new(0),
            replication_bytes_in: AtomicU64::new(0),
            fetch_sessions: AtomicU64::new(0),
            fetch_session_partitions: AtomicU64::new(0),
            fetch_session_evictions: AtomicU64::new(0),
            incremental_fetches: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            slow_requests: AtomicU64::new(0),
            mesh_jobs: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            journaled_bytes: AtomicU64::new(0),
            journal_full: AtomicU64::new(0),
        }
    }
}

/// Upper bounds of the latency histograms' buckets, in microseconds (the last bucket, +Inf,
/// is implicit). 50 µs to 10 s covers a memory fetch up to a long-polling fetch.
pub const LATENCY_BUCKET_BOUNDS_US: [u64; 18] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 7_500_000, 10_000_000,
];

/// A lock-free cumulative histogram: one relaxed add for the bucket, the count and the sum.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Non-cumulative per-bucket counts; index `LATENCY_BUCKET_BOUNDS_US.len()` is +Inf.
    pub buckets: [AtomicU64; LATENCY_BUCKET_BOUNDS_US.len() + 1],
    pub count: AtomicU64,
    pub sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub const fn new() -> LatencyHistogram {
        LatencyHistogram {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKET_BOUNDS_US.len() + 1],
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: std::time::Duration) {
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let bucket = LATENCY_BUCKET_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKET_BOUNDS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters indexed by (API key, version).
#[derive(Debug)]
pub struct ApiCells {
    cells: [[AtomicU64; MAX_API_VERSIONS]; MAX_API_KEYS],
}

impl ApiCells {
    const fn new() -> ApiCells {
        ApiCells {
            cells: [const { [const { AtomicU64::new(0) }; MAX_API_VERSIONS] }; MAX_API_KEYS],
        }
    }

    /// Counts one event; keys outside the table are dropped (decoding rejects them anyway).
    pub fn add(&self, api_key: i16, version: i16) {
        if let (Ok(key), Ok(version)) = (usize::try_from(api_key), usize::try_from(version)) {
            if key < MAX_API_KEYS {
                self.cells[key][version.min(MAX_API_VERSIONS - 1)].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn get(&self, api_key: usize, version: usize) -> u64 {
        self.cells[api_key][version].load(Ordering::Relaxed)
    }
}

/// Everything `/metrics` exports beyond [`BrokerStats`].
#[derive(Debug)]
pub struct DetailedMetrics {
    pub shards: [ShardCells; MAX_SHARD_CELLS],
    /// Requests by the API key and version in their header (read before decoding).
    pub requests: ApiCells,
    /// Requests that closed the connection (undecodable) or whose response failed to encode.
    pub request_errors: ApiCells,
    /// Time from a produce request's frame being read to its response being ready.
    pub produce_latency: LatencyHistogram,
    /// The same for fetch, long-poll wait (`max_wait_ms`) included, as in Kafka's TotalTimeMs.
    pub fetch_latency: LatencyHistogram,
    /// How long each request's last bytes waited in its socket before its shard read them
    /// (`net::rx_stamp`): the shard busy with other work meanwhile.
    pub request_socket_wait: LatencyHistogram,
    /// One partition writer's fdatasync.
    pub fdatasync_latency: LatencyHistogram,
    /// One partition writer's O_DIRECT write (what an acks=1 produce and a tailing consumer
    /// wait for), from submission to completion.
    pub segment_write_latency: LatencyHistogram,
    /// How long each appended batch waited in its partition's queue until its writer took it
    /// for a write: behind the write in flight (one per partition at a time) or a roll.
    pub segment_write_wait: LatencyHistogram,
    /// Bytes partition writers allocated ahead of their writes (`storage::preallocate`).
    pub segment_preallocated_bytes: AtomicU64,
    /// How long each detected shard stall kept the event loop away (`shard::stall`).
    pub stall_duration: LatencyHistogram,
    /// How long each task-queue run kept a shard's event loop from polling for I/O, all
    /// shards: a write queued or completed during a run is submitted or noticed only after it.
    pub task_queue_run: LatencyHistogram,
    /// Partitions led by this node whose ISR lost a member / gained one, as committed by the
    /// coordination quorum (Kafka's IsrShrinksPerSec / IsrExpandsPerSec, as totals).
    pub isr_shrinks: AtomicU64,
    pub isr_expands: AtomicU64,
    /// Consumer group rebalances completed (a join phase ended with a new generation).
    pub group_rebalances: AtomicU64,
    /// Log cleaner runs that rewrote segments, the bytes they read and wrote back, and the
    /// records they removed (`storage::cleaner`).
    pub cleaner_runs: AtomicU64,
    pub cleaner_bytes_read: AtomicU64,
    pub cleaner_bytes_written: AtomicU64,
    pub cleaner_records_removed: AtomicU64,
}

/// The process's detailed metrics. A static so that storage (which has no `BrokerStats`) can
/// count fdatasyncs without plumbing.
pub static DETAIL: DetailedMetrics = DetailedMetrics {
    shards: [const { ShardCells::new() }; MAX_SHARD_CELLS],
    requests: ApiCells::new(),
    request_errors: ApiCells::new(),
    produce_latency: LatencyHistogram::new(),
    fetch_latency: LatencyHistogram::new(),
    request_socket_wait: LatencyHistogram::new(),
    fdatasync_latency: LatencyHistogram::new(),
    segment_write_latency: LatencyHistogram::new(),
    segment_write_wait: LatencyHistogram::new(),
    segment_preallocated_bytes: AtomicU64::new(0),
    stall_duration: LatencyHistogram::new(),
    task_queue_run: LatencyHistogram::new(),
    isr_shrinks: AtomicU64::new(0),
    isr_expands: AtomicU64::new(0),
    group_rebalances: AtomicU64::new(0),
    cleaner_runs: AtomicU64::new(0),
    cleaner_bytes_read: AtomicU64::new(0),
    cleaner_bytes_written: AtomicU64::new(0),
    cleaner_records_removed: AtomicU64::new(0),
};

/// The cells of shard `id`.
pub fn shard_cells(id: usize) -> &'static ShardCells {
    &DETAIL.shards[id % MAX_SHARD_CELLS]
}
