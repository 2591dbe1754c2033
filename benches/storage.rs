//! Storage-layer benchmarks: append (acks=1, acks=all with group commit), read, recovery, and
//! the memory cost of an idle partition.
//!
//! Needs in Cargo.toml:
//! ```toml
//! [[bench]]
//! name = "storage"
//! harness = false
//! ```
//! Run: `cargo bench --bench storage` (`BENCH_DIR=/path` to pick the disk; default: a temp dir
//! under the current directory, so the data lands on the same disk as `data/`).
//!
//! Every measurement runs inside a fresh glommio executor (`iter_custom`), as a shard would.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker::protocol::record_batch::{compute_crc, validate, HEADER_LEN, LOG_OVERHEAD, MAGIC_V2};
use broker::storage::{LogConfig, PartitionLog};
use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

/// An uncompressed batch of `count` records with `value_bytes`-byte values (1-byte varints
/// suffice for the sizes used here).
fn make_batch(count: usize, value_bytes: usize) -> Bytes {
    let mut records = Vec::new();
    for i in 0..count {
        let mut body = vec![0u8, 0, (i as u8) << 1, 1];
        let mut v = (value_bytes as u64) << 1;
        while v >= 0x80 {
            body.push(v as u8 | 0x80);
            v >>= 7;
        }
        body.push(v as u8);
        body.extend(std::iter::repeat_n(b'x', value_bytes));
        body.push(0);
        let mut len = (body.len() as u64) << 1;
        while len >= 0x80 {
            records.push(len as u8 | 0x80);
            len >>= 7;
        }
        records.push(len as u8);
        records.extend(body);
    }
    let mut b = vec![0u8; HEADER_LEN];
    b.extend(records);
    let len = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[16] = MAGIC_V2;
    b[23..27].copy_from_slice(&(count as i32 - 1).to_be_bytes());
    b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
    b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    b[57..61].copy_from_slice(&(count as i32).to_be_bytes());
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(b)
}

fn bench_root() -> tempfile::TempDir {
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    tempfile::tempdir_in(base).expect("bench dir")
}

/// Runs `body` on a fresh glommio executor and returns what it measured.
fn on_executor<F, Fut>(body: F) -> Duration
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Duration> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async move { body().await })
        .unwrap()
        .join()
        .unwrap()
}

async fn open(dir: &Path) -> Rc<PartitionLog> {
    PartitionLog::open(dir.to_path_buf(), LogConfig::default())
        .await
        .unwrap()
}

static DURABLE_REQUESTS: AtomicU64 = AtomicU64::new(0);
static SYNCS: AtomicU64 = AtomicU64::new(0);

/// 16 KiB batches (16 x 1 KiB records), as W1's producers send.
fn append(c: &mut Criterion) {
    let batch = make_batch(16, 1000);
    let header = validate(&batch, 1 << 20).unwrap();
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Bytes(batch.len() as u64));

    // acks=1, a producer that never waits except for backpressure (8 MiB queued), as many
    // connections together look to the writer: it always finds megabytes to coalesce.
    let b = batch.clone();
    group.bench_function("acks1_16KiB_streaming", move |bench| {
        let b = b.clone();
        bench.iter_custom(move |iters| {
            let b = b.clone();
            on_executor(move || async move {
                let root = bench_root();
                let log = open(&root.path().join("t-0")).await;
                let start = Instant::now();
                for _ in 0..iters {
                    log.append(b.clone(), &header, 0).unwrap();
                    if log.queued_bytes() > 8 << 20 {
                        log.wait_for_data(log.high_watermark()).await;
                    }
                }
                log.wait_written(log.log_end_offset(), false).await.unwrap();
                let elapsed = start.elapsed();
                log.close().await.unwrap();
                elapsed
            })
        })
    });

    // acks=1, 64 batches (1 MiB) in flight then wait: one write round at a time, no overlap
    // between producing and writing, so this shows the latency of a 1 MiB O_DIRECT write.
    let b = batch.clone();
    group.bench_function("acks1_16KiB_rounds_of_64", move |bench| {
        let b = b.clone();
        bench.iter_custom(move |iters| {
            let b = b.clone();
            on_executor(move || async move {
                let root = bench_root();
                let log = open(&root.path().join("t-0")).await;
                let start = Instant::now();
                for i in 0..iters {
                    log.append(b.clone(), &header, 0).unwrap();
                    if i % 64 == 63 {
                        log.wait_written(log.log_end_offset(), false).await.unwrap();
                    }
                }
                log.wait_written(log.log_end_offset(), false).await.unwrap();
                let elapsed = start.elapsed();
                log.close().await.unwrap();
                elapsed
            })
        })
    });

    // acks=all from N concurrent producers, each waiting for its own batch: group commit.
    for producers in [1usize, 16, 64] {
        let b = batch.clone();
        group.bench_with_input(
            BenchmarkId::new("acks_all_16KiB_producers", producers),
            &producers,
            move |bench, &producers| {
                let b = b.clone();
                bench.iter_custom(move |iters| {
                    let b = b.clone();
                    on_executor(move || async move {
                        let root = bench_root();
                        let log = open(&root.path().join("t-0")).await;
                        let per_producer = iters.div_ceil(producers as u64);
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..producers)
                            .map(|_| {
                                let log = log.clone();
                                let b = b.clone();
                                glommio::spawn_local(async move {
                                    for _ in 0..per_producer {
                                        let info = log.append(b.clone(), &header, 0).unwrap();
                                        log.wait_written(info.last_offset + 1, true).await.unwrap();
                                    }
                                })
                            })
                            .collect();
                        futures::future::join_all(tasks).await;
                        let elapsed = start.elapsed();
                        DURABLE_REQUESTS
                            .fetch_add(per_producer * producers as u64, Ordering::Relaxed);
                        SYNCS.fetch_add(log.stats().syncs, Ordering::Relaxed);
                        log.close().await.unwrap();
                        elapsed
                    })
                })
            },
        );
        let requests = DURABLE_REQUESTS.swap(0, Ordering::Relaxed);
        let syncs = SYNCS.swap(0, Ordering::Relaxed);
        eprintln!(
            "  acks=all, {producers} producers: {requests} durable requests, {syncs} fdatasyncs ({:.1} requests per sync)",
            requests as f64 / syncs.max(1) as f64
        );
    }
    group.finish();
}

/// Builds a 64 MiB log on the current executor and pulls it into the page cache (O_DIRECT
/// writes bypass it, so a fresh log reads from the device).
async fn read_fixture(dir: &Path) -> Rc<PartitionLog> {
    let log = open(dir).await;
    let batch = make_batch(16, 1000);
    let header = validate(&batch, 1 << 20).unwrap();
    for _ in 0..(64 << 20) / batch.len() {
        log.append(batch.clone(), &header, 0).unwrap();
    }
    log.wait_written(log.log_end_offset(), false).await.unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            std::hint::black_box(std::fs::read(&path).unwrap());
        }
    }
    log
}

/// The fetch path's storage work: `read` (index lookup + pread header scan) alone, and with
/// the 1 MiB pread a non-sendfile path would add, on a warm 64 MiB log.
fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    let fetch_bytes = 1 << 20;
    group.bench_function("lookup_only", |bench| {
        bench.iter_custom(|iters| {
            on_executor(move || async move {
                let root = bench_root();
                let log = read_fixture(&root.path().join("t-0")).await;
                let end = log.high_watermark();
                let start = Instant::now();
                let mut offset = 0;
                for _ in 0..iters {
                    let slice = log.read(offset, fetch_bytes, true).unwrap().unwrap();
                    std::hint::black_box(slice);
                    offset = (offset + 7919) % end;
                }
                let elapsed = start.elapsed();
                log.close().await.unwrap();
                elapsed
            })
        })
    });
    group.throughput(Throughput::Bytes(fetch_bytes as u64));
    group.bench_function("lookup_and_pread_1MiB_warm", |bench| {
        bench.iter_custom(|iters| {
            on_executor(move || async move {
                use std::os::unix::fs::FileExt;
                let root = bench_root();
                let log = read_fixture(&root.path().join("t-0")).await;
                let end = log.high_watermark();
                let mut buf = vec![0u8; fetch_bytes];
                let start = Instant::now();
                let mut offset = 0;
                for _ in 0..iters {
                    let slice = log.read(offset, fetch_bytes, true).unwrap().unwrap();
                    slice
                        .file
                        .read_exact_at(&mut buf[..slice.len], slice.position)
                        .unwrap();
                    offset = (offset + 7919) % end;
                }
                let elapsed = start.elapsed();
                log.close().await.unwrap();
                elapsed
            })
        })
    });
    group.finish();
}

/// Opening a log whose active segment holds 1 GiB: the full CRC-checked recovery scan.
/// The file is in the page cache after the first run (warm-cache figure).
fn recovery(c: &mut Criterion) {
    let root = bench_root();
    let dir = root.path().join("t-0");
    let config = LogConfig {
        segment_bytes: i32::MAX as u64,
        max_batch_bytes: 1 << 20,
        ..LogConfig::default()
    };
    {
        let dir = dir.clone();
        let config = config.clone();
        on_executor(move || async move {
            let log = PartitionLog::open(dir, config).await.unwrap();
            let batch = make_batch(64, 1000);
            let header = validate(&batch, 1 << 20).unwrap();
            while log.size_bytes() + log.queued_bytes() < 1 << 30 {
                log.append(batch.clone(), &header, 0).unwrap();
                if log.queued_bytes() > 64 << 20 {
                    log.wait_written(log.log_end_offset(), false).await.unwrap();
                }
            }
            log.close().await.unwrap();
            Duration::ZERO
        });
    }
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(1 << 30));
    group.bench_function("open_1GiB_active_segment", |bench| {
        bench.iter_custom(|iters| {
            let dir = dir.clone();
            let config = config.clone();
            on_executor(move || async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let log = PartitionLog::open(dir.clone(), config.clone())
                        .await
                        .unwrap();
                    total += start.elapsed();
                    assert!(log.size_bytes() >= 1 << 30);
                    drop(log); // no close: leave the files untouched for the next iteration
                    futures_lite::future::yield_now().await;
                }
                total
            })
        })
    });
    group.finish();
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// W5's concern: what 1,000 idle partitions (each with one small batch written) cost in
/// resident memory. Printed, not timed.
fn idle_partition_memory() {
    let root = bench_root();
    let path = root.path().to_path_buf();
    on_executor(move || async move {
        let partitions = 1000;
        let batch = make_batch(1, 100);
        let header = validate(&batch, 1 << 20).unwrap();
        let before = rss_bytes();
        let mut logs = Vec::with_capacity(partitions);
        for p in 0..partitions {
            let log = open(&path.join(format!("t-{p}"))).await;
            log.append(batch.clone(), &header, 0).unwrap();
            log.wait_written(1, false).await.unwrap();
            logs.push(log);
        }
        let after = rss_bytes();
        eprintln!(
            "idle partitions: {partitions} open, RSS +{} KiB total, {:.1} KiB per partition",
            (after - before) / 1024,
            (after - before) as f64 / 1024.0 / partitions as f64
        );
        for log in logs {
            log.close().await.unwrap();
        }
        Duration::ZERO
    });
}

criterion_group!(benches, append, read, recovery);

fn main() {
    idle_partition_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
