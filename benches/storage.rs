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
//!
//! # Cold-cache mode
//! `STORAGE_COLD=recovery|read BENCH_DIR=/path cargo bench --bench storage` skips criterion and
//! measures once with an empty page cache (it writes `/proc/sys/vm/drop_caches`, so it needs
//! root), on a fixture kept in `$BENCH_DIR/storage-cold/` across runs: one 1.1 GiB active
//! segment (1.1 M x 1 KiB records, 16 per batch) left as after `kill -9` (page padding, no
//! index files).
//! - `recovery`: drop caches, time `PartitionLog::open` (the full CRC-checked scan).
//! - `read`: open, drop caches, then time a catch-up consumer: `read` 1 MiB at a time from
//!   offset 0 to the high watermark, each slice sendfile'd to `/dev/null`, as fetch does.
//!   With `STORAGE_COLD_KERNEL_READ_AHEAD=off` the segment's read fd gets
//!   `POSIX_FADV_RANDOM` first, which turns the kernel's own read-ahead off for it: a stand-in
//!   for a device with a small `read_ahead_kb` that does not touch the machine's settings.
//!
//! One figure per process, so two builds (before/after) can be interleaved A B A B by a shell
//! loop against the same fixture and compared by their medians.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker::record_batch::{compute_crc, validate, HEADER_LEN, LOG_OVERHEAD, MAGIC_V2};
use broker::storage::{LogConfig, PartitionLog, ReadLimit, Records};
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
                        log.wait_for_data(log.high_watermark(), ReadLimit::HighWatermark)
                            .await;
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
                    let slice = log
                        .read(offset, fetch_bytes, true, ReadLimit::HighWatermark)
                        .unwrap()
                        .unwrap();
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
                    let Some(Records::File(slice)) = log
                        .read(offset, fetch_bytes, true, ReadLimit::HighWatermark)
                        .unwrap()
                    else {
                        // The newest 8 MiB come from the tail cache: nothing to pread.
                        offset = (offset + 7919) % end;
                        continue;
                    };
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

/// Reads every `.log` file under `dir` through the page cache, so it is cached.
fn warm_page_cache(dir: &Path) {
    use std::io::Read;
    let mut buf = vec![0u8; 8 << 20];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let mut file = std::fs::File::open(&path).unwrap();
            while file.read(&mut buf).unwrap() > 0 {}
        }
    }
}

/// Opening a log whose active segment holds 1 GiB: the full CRC-checked recovery scan, with
/// the file in the page cache (warm-cache figure: a process restart after consumers read the
/// segment). Recovery reads with O_DIRECT what is not cached, and would never warm it itself,
/// so the bench does, outside the timed part. `STORAGE_COLD=recovery` gives the cold figure.
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
                    warm_page_cache(&dir);
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

/// Records per batch and value bytes per record of the cold-cache fixture (W1's shape).
const COLD_RECORDS_PER_BATCH: usize = 16;
const COLD_VALUE_BYTES: usize = 1000;
const COLD_RECORDS: usize = 1_100_000;

fn drop_page_cache() {
    // Only clean pages are dropped; sync first so every page of the fixture is clean.
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches (needs root)");
}

fn cold_config() -> LogConfig {
    LogConfig {
        segment_bytes: i32::MAX as u64,
        ..LogConfig::default()
    }
}

/// Creates the fixture once: a single active segment left without `close`, as `kill -9`
/// would (zero padding to the page, no index files).
fn cold_fixture() -> PathBuf {
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let root = base.join("storage-cold");
    let dir = root.join("t-0");
    let done = root.join("complete");
    if done.exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let path = dir.clone();
    on_executor(move || async move {
        let log = PartitionLog::open(path, cold_config()).await.unwrap();
        let batch = make_batch(COLD_RECORDS_PER_BATCH, COLD_VALUE_BYTES);
        let header = validate(&batch, 1 << 20).unwrap();
        for _ in 0..COLD_RECORDS / COLD_RECORDS_PER_BATCH {
            log.append(batch.clone(), &header, 0).unwrap();
            if log.queued_bytes() > 64 << 20 {
                log.wait_written(log.log_end_offset(), false).await.unwrap();
            }
        }
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        drop(log);
        Duration::ZERO
    });
    std::fs::write(&done, b"").unwrap();
    dir
}

fn cold_recovery(dir: PathBuf) {
    drop_page_cache();
    on_executor(move || async move {
        let start = Instant::now();
        let log = PartitionLog::open(dir, cold_config()).await.unwrap();
        let elapsed = start.elapsed();
        let bytes = log.size_bytes();
        println!(
            "cold_recovery_ms={:.1} bytes={bytes} mb_per_s={:.0}",
            elapsed.as_secs_f64() * 1e3,
            bytes as f64 / elapsed.as_secs_f64() / 1e6
        );
        drop(log); // no close: the files stay as they are for the next run
        elapsed
    });
}

fn cold_read(dir: PathBuf) {
    use std::os::fd::AsRawFd;
    on_executor(move || async move {
        let log = PartitionLog::open(dir, cold_config()).await.unwrap();
        let batch_bytes = make_batch(COLD_RECORDS_PER_BATCH, COLD_VALUE_BYTES).len();
        let end = log.high_watermark();
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        if std::env::var("STORAGE_COLD_KERNEL_READ_AHEAD").is_ok_and(|v| v == "off") {
            // Halfway: any read-ahead state this leaves is far from offset 0.
            let Some(Records::File(slice)) = log
                .read(end / 2, 1, true, ReadLimit::HighWatermark)
                .unwrap()
            else {
                panic!("the middle of the log is read from its segment file");
            };
            // SAFETY: advice on a descriptor the slice keeps open.
            let rc = unsafe {
                libc::posix_fadvise(slice.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM)
            };
            assert_eq!(rc, 0);
        }
        let hinted_before = log.stats().read_ahead_bytes;
        drop_page_cache();
        let fetch_bytes = 1 << 20;
        let (mut offset, mut bytes, mut fetches) = (0i64, 0u64, 0u64);
        let start = Instant::now();
        while offset < end {
            let records = log
                .read(offset, fetch_bytes, true, ReadLimit::HighWatermark)
                .unwrap()
                .unwrap();
            let len = records.len();
            // The newest batches may come from the tail cache: no I/O to time there.
            let Records::File(slice) = records else {
                let whole = (len / batch_bytes).max(1);
                offset += (whole * COLD_RECORDS_PER_BATCH) as i64;
                bytes += (whole * batch_bytes) as u64;
                fetches += 1;
                continue;
            };
            let mut position = slice.position as libc::off_t;
            let mut left = slice.len;
            while left > 0 {
                // SAFETY: both descriptors are open for the call; `position` is a valid off_t.
                let n = unsafe {
                    libc::sendfile(
                        null.as_raw_fd(),
                        slice.file.as_raw_fd(),
                        &mut position,
                        left,
                    )
                };
                assert!(n > 0, "sendfile: {}", std::io::Error::last_os_error());
                left -= n as usize;
            }
            // The fixture's batches all have the same length: the slice holds whole batches
            // plus the start of the next one, which the next fetch starts with.
            let whole = (slice.len / batch_bytes).max(1);
            offset += (whole * COLD_RECORDS_PER_BATCH) as i64;
            bytes += (whole * batch_bytes) as u64;
            fetches += 1;
        }
        let elapsed = start.elapsed();
        assert_eq!(offset, end, "walked every batch");
        println!(
            "cold_read_ms={:.1} bytes={bytes} fetches={fetches} mb_per_s={:.0} read_ahead_hinted_bytes={}",
            elapsed.as_secs_f64() * 1e3,
            bytes as f64 / elapsed.as_secs_f64() / 1e6,
            log.stats().read_ahead_bytes - hinted_before
        );
        drop(log);
        elapsed
    });
}

/// A leader's check of each produced batch (header, length, counts and the CRC-32C over all of
/// it), on W3's shape: 1 KiB records in batches of 64 KiB and 1 MiB.
fn validate_batches(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    for (name, count) in [
        ("64KiB_of_1KiB_records", 63),
        ("1MiB_of_1KiB_records", 1015),
    ] {
        let batch = make_batch(count, 1024);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_function(name, |bench| {
            bench.iter(|| validate(std::hint::black_box(&batch), 8 << 20).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, append, read, recovery, validate_batches);

fn main() {
    if let Some(mode) = std::env::var_os("STORAGE_COLD") {
        let dir = cold_fixture();
        match mode.to_str() {
            Some("recovery") => cold_recovery(dir),
            Some("read") => cold_read(dir),
            _ => panic!("STORAGE_COLD must be `recovery` or `read`"),
        }
        return;
    }
    idle_partition_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
