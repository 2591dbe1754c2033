use std::os::unix::fs::FileExt;

use futures::future::join_all;
use futures_lite::future::poll_once;

use super::*;
use crate::record_batch::{validate, Batches};
use crate::storage::direct_read::Prefetched;
use crate::storage::testutil::{batch, batch_with_timestamps, build_batch, run};
use crate::storage::{ReadLimit, ReadSlice, Records};

pub(crate) fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 512,
        ..LogConfig::default()
    }
}

pub(crate) fn append(log: &PartitionLog, bytes: Vec<u8>) -> AppendInfo {
    let header = validate(&bytes, 1 << 20).expect("test batches are valid");
    log.append(Bytes::from(bytes), &header, 7).expect("append")
}

/// Waits until no roll is still closing a segment: retention, compaction and DeleteRecords
/// leave such a segment to their next run, which a test counting what they delete must not
/// race with.
pub(crate) async fn rolls_settled(log: &PartitionLog) {
    while log.roll_closing() {
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
}

pub(crate) fn slice_bytes(records: &Records) -> Vec<u8> {
    match records {
        Records::File(slice) => {
            let mut bytes = vec![0u8; slice.len];
            slice
                .file
                .read_exact_at(&mut bytes, slice.position)
                .unwrap();
            bytes
        }
        Records::Memory { chunks, len } => {
            let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(bytes.len(), *len);
            bytes
        }
    }
}

/// The file range of a read that must come from a segment file.
pub(crate) fn file_slice(records: Records) -> ReadSlice {
    match records {
        Records::File(slice) => slice,
        Records::Memory { .. } => panic!("expected a file read"),
    }
}

/// `LogConfig::default()` without the tail cache: every read goes to the files.
pub(crate) fn uncached_config() -> LogConfig {
    LogConfig {
        tail_cache_bytes: 0,
        ..LogConfig::default()
    }
}

/// Whole batches at the start of `bytes` (a read's last batch may be cut by max_bytes).
pub(crate) fn whole_batches(bytes: &[u8]) -> Vec<BatchHeader> {
    Batches::new(bytes, 1 << 20)
        .map_while(Result::ok)
        .map(|(h, _)| h)
        .collect()
}

/// Reads the whole log from `from` like a consumer, checking every batch's CRC.
pub(crate) fn consume_all(log: &PartitionLog, from: i64, max_bytes: usize) -> Vec<BatchHeader> {
    let mut out = Vec::new();
    let mut next = from;
    while let Some(slice) = log
        .read(next, max_bytes, true, ReadLimit::HighWatermark)
        .unwrap()
    {
        let bytes = slice_bytes(&slice);
        let batches = whole_batches(&bytes);
        assert!(
            !batches.is_empty(),
            "min_one_batch returns at least one whole batch"
        );
        let mut at = 0;
        for h in batches {
            validate(&bytes[at..at + h.total_len()], 1 << 20).expect("stored batch validates");
            at += h.total_len();
            if h.last_offset() >= next {
                next = h.last_offset() + 1;
                out.push(h);
            }
        }
    }
    out
}

#[test]
fn append_read_round_trip_across_many_batches() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), small_config())
            .await
            .unwrap();
        let mut expected = Vec::new();
        for i in 0..300usize {
            let count = 1 + i % 7;
            let info = append(&log, batch(count, 10 + i % 50, 1_000 + i as i64));
            assert_eq!(info.last_offset - info.base_offset + 1, count as i64);
            expected.push((info.base_offset, info.last_offset));
        }
        let log_end = log.log_end_offset();
        assert_eq!(log_end, expected.last().unwrap().1 + 1);
        log.wait_written(log_end, false).await.unwrap();
        assert_eq!(log.high_watermark(), log_end);
        assert!(log.segment_count() > 3, "16 KiB segments rolled");

        // Point reads: every offset maps to the batch holding it, offsets and epoch patched.
        for &(base, last) in &expected {
            for offset in [base, last] {
                let slice = log
                    .read(offset, 1 << 20, false, ReadLimit::HighWatermark)
                    .unwrap()
                    .unwrap();
                let bytes = slice_bytes(&slice);
                let first =
                    validate(&bytes[..whole_batches(&bytes)[0].total_len()], 1 << 20).unwrap();
                assert_eq!((first.base_offset, first.last_offset()), (base, last));
                assert_eq!(first.partition_leader_epoch, 7);
                if let Records::File(slice) = &slice {
                    let file_bytes = slice.file.metadata().unwrap().len();
                    assert!(
                        slice.position + slice.len as u64 <= file_bytes,
                        "never across a segment end"
                    );
                }
            }
        }
        // Sequential consumption with small fetches sees every batch exactly once.
        let seen: Vec<(i64, i64)> = consume_all(&log, 0, 3000)
            .iter()
            .map(|h| (h.base_offset, h.last_offset()))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(
            log.size_bytes(),
            log.segments
                .borrow()
                .iter()
                .map(|s| s.size_bytes())
                .sum::<u64>()
        );
        log.close().await.unwrap();
    });
}

#[test]
fn reads_honour_max_bytes_kip74_and_the_high_watermark() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), uncached_config())
            .await
            .unwrap();
        let big = batch(20, 100, 1_000);
        let big_len = big.len();
        append(&log, big);
        append(&log, batch(1, 10, 1_000));
        // Offsets are assigned but not yet written: between HW and LEO reads see nothing.
        assert_eq!((log.high_watermark(), log.log_end_offset()), (0, 21));
        assert!(log
            .read(0, 1 << 20, true, ReadLimit::HighWatermark)
            .unwrap()
            .is_none());
        assert!(log
            .read(21, 1 << 20, true, ReadLimit::HighWatermark)
            .unwrap()
            .is_none());
        assert!(matches!(
            log.read(22, 100, true, ReadLimit::HighWatermark),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert!(matches!(
            log.read(-1, 100, true, ReadLimit::HighWatermark),
            Err(StorageError::OffsetOutOfRange { .. })
        ));

        log.wait_written(21, false).await.unwrap();
        let whole = file_slice(
            log.read(5, 100, true, ReadLimit::HighWatermark)
                .unwrap()
                .unwrap(),
        );
        assert_eq!(
            (whole.position, whole.len),
            (0, big_len),
            "KIP-74: the first batch whole"
        );
        let cut = file_slice(
            log.read(5, 100, false, ReadLimit::HighWatermark)
                .unwrap()
                .unwrap(),
        );
        assert_eq!(
            cut.len, 100,
            "without min_one_batch the range is cut at max_bytes"
        );
        let both = file_slice(
            log.read(0, 1 << 20, false, ReadLimit::HighWatermark)
                .unwrap()
                .unwrap(),
        );
        assert_eq!(
            both.len as u64,
            log.size_bytes(),
            "up to the high watermark"
        );
        let second = file_slice(
            log.read(20, 1 << 20, false, ReadLimit::HighWatermark)
                .unwrap()
                .unwrap(),
        );
        assert_eq!(second.position, big_len as u64);
        assert!(
            log.read(21, 1 << 20, true, ReadLimit::HighWatermark)
                .unwrap()
                .is_none(),
            "at the high watermark"
        );
        assert!(log
            .read(0, 0, false, ReadLimit::HighWatermark)
            .unwrap()
            .is_none());
        log.close().await.unwrap();
    });
}

#[test]
fn tail_reads_come_from_memory_and_match_the_file() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let config = LogConfig {
            tail_cache_bytes: 64 * 1024,
            ..small_config()
        };
        let log = PartitionLog::open(path.clone(), config).await.unwrap();
        // Not yet written: the cache holds it, but nothing above the high watermark is served.
        let first = append(&log, batch(3, 100, 1_000));
        assert!(log
            .read(0, 1 << 20, true, ReadLimit::HighWatermark)
            .unwrap()
            .is_none());
        log.wait_written(first.last_offset + 1, false)
            .await
            .unwrap();
        let hit = log
            .read(1, 1 << 20, true, ReadLimit::HighWatermark)
            .unwrap()
            .unwrap();
        assert!(
            matches!(hit, Records::Memory { .. }),
            "fresh data from memory"
        );
        let bytes = slice_bytes(&hit);
        let header = validate(&bytes, 1 << 20).expect("a whole valid batch (CRC included)");
        assert_eq!((header.base_offset, header.partition_leader_epoch), (0, 7));

        let mut expected = Vec::new();
        for i in 0..400usize {
            let info = append(&log, batch(1 + i % 5, 200 + i % 300, 2_000 + i as i64));
            expected.push((info.base_offset, info.last_offset));
        }
        log.wait_written(log.log_end_offset(), false).await.unwrap();
        let (cost, start) = log.tail_cache_usage();
        assert!(cost <= 64 * 1024, "within the cap: {cost}");
        let start = start.expect("recent batches cached");
        assert!(start > 0, "old batches evicted");
        // Below the cache: from the file. Inside: from memory, identical bytes.
        assert!(matches!(
            log.read(start - 1, 1 << 20, true, ReadLimit::HighWatermark)
                .unwrap()
                .unwrap(),
            Records::File(_)
        ));
        for &(base, last) in expected.iter().filter(|(b, _)| *b >= start) {
            let memory = log
                .read(last, 5_000, true, ReadLimit::HighWatermark)
                .unwrap()
                .unwrap();
            assert!(matches!(memory, Records::Memory { .. }));
            let memory = slice_bytes(&memory);
            let batches = whole_batches(&memory);
            assert_eq!(batches[0].base_offset, base);
            assert_eq!(
                batches.iter().map(|h| h.total_len()).sum::<usize>(),
                memory.len(),
                "whole batches only"
            );
            assert!(memory.len() <= 5_000 || batches.len() == 1);
            let file = slice_bytes(
                &log.read_file(last, memory.len(), true, log.high_watermark(), None)
                    .unwrap()
                    .unwrap(),
            );
            assert!(file.starts_with(&memory[..memory.len().min(file.len())]));
        }
        // KIP-74 from memory: a first batch larger than max_bytes comes whole.
        let tail = expected.last().unwrap().0;
        let one = log
            .read(tail, 1, true, ReadLimit::HighWatermark)
            .unwrap()
            .unwrap();
        assert!(matches!(one, Records::Memory { .. }));
        assert_eq!(whole_batches(&slice_bytes(&one)).len(), 1);
        // A consumer from the start sees every batch once, across files and memory.
        let mut all = vec![(first.base_offset, first.last_offset)];
        all.extend(expected.iter().copied());
        let seen: Vec<(i64, i64)> = consume_all(&log, 0, 3000)
            .iter()
            .map(|h| (h.base_offset, h.last_offset()))
            .collect();
        assert_eq!(seen, all);
        log.close().await.unwrap();

        // After a restart the cache starts empty: reads go to the files.
        let log = PartitionLog::open(path, small_config()).await.unwrap();
        assert_eq!(log.tail_cache_usage(), (0, None));
        assert!(matches!(
            log.read(tail, 1 << 20, true, ReadLimit::HighWatermark)
                .unwrap()
                .unwrap(),
            Records::File(_)
        ));
        log.close().await.unwrap();
    });
}

#[test]
fn segments_roll_at_segment_bytes_with_kafka_names() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topic-3");
        let config = LogConfig {
            segment_bytes: 8192,
            ..small_config()
        };
        let log = PartitionLog::open(path.clone(), config).await.unwrap();
        let one = batch(5, 700, 1_000).len() as u64;
        assert!(
            2 * one <= 8192 && 3 * one > 8192,
            "two batches fit in a segment, not three"
        );
        for _ in 0..7 {
            append(&log, batch(5, 700, 1_000));
        }
        log.wait_written(log.log_end_offset(), false).await.unwrap();
        assert_eq!(log.segment_base_offsets(), vec![0, 10, 20, 30]);
        // A roll closes the old segment (padding cut, index files, snapshot) beside the writes
        // to the next one; a durable wait returns once that is done.
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        let closed_sizes: Vec<u64> = log
            .segments
            .borrow()
            .iter()
            .map(|s| std::fs::metadata(s.log_path()).unwrap().len())
            .collect();
        assert_eq!(
            closed_sizes[..3],
            [2 * one, 2 * one, 2 * one],
            "closed segments cut to their batches"
        );
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut expected = Vec::new();
        for base in [0, 10, 20, 30] {
            for ext in ["index", "log", "timeindex"] {
                expected.push(format!("{base:020}.{ext}"));
            }
            if base > 0 {
                // Each roll saves the producer state at the new segment's base.
                expected.push(format!("{base:020}.snapshot"));
            }
        }
        expected.push("leader-epoch-checkpoint".to_string());
        expected.sort();
        assert_eq!(names, expected);
        assert!(log.durable_offset() >= 30);
        log.close().await.unwrap();
    });
}

#[test]
fn reopen_after_close_preserves_everything() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let log = PartitionLog::open(path.clone(), small_config())
            .await
            .unwrap();
        for i in 0..100 {
            append(
                &log,
                build_batch(5_000 + i, &[0, 1, 2], 40, 77, (i * 3) as i32),
            );
        }
        append(&log, batch(2, 40, 9_000));
        log.close().await.unwrap();
        assert!(matches!(
            log.read(0, 100, true, ReadLimit::HighWatermark),
            Err(StorageError::Closed)
        ));
        assert!(matches!(
            log.append(
                Bytes::new(),
                &validate(&batch(1, 1, 0), 1 << 20).unwrap(),
                0
            ),
            Err(StorageError::Closed)
        ));
        let before = (
            log.log_start_offset(),
            log.log_end_offset(),
            log.size_bytes(),
            log.segment_base_offsets(),
        );
        let before_batches = consume_all_closed(&path).await;
        drop(log);

        let log = PartitionLog::open(path.clone(), small_config())
            .await
            .unwrap();
        let after = (
            log.log_start_offset(),
            log.log_end_offset(),
            log.size_bytes(),
            log.segment_base_offsets(),
        );
        assert_eq!(after, before);
        assert_eq!(log.high_watermark(), 302);
        assert!(
            log.durable_offset() <= 302,
            "durable only once synced again"
        );
        assert_eq!(consume_all(&log, 0, 5000), before_batches);
        assert_eq!(
            log.offset_for_timestamp(5_050).unwrap(),
            Some((146, 5_050)),
            "batch 48 holds 5048..=5050"
        );
        // The producer state of the active segment: the last five batches of producer 77.
        let producer: Vec<i32> = log
            .recovered_producer_batches()
            .iter()
            .map(|h| h.base_sequence)
            .collect();
        assert!(producer.len() <= 5 && !producer.is_empty());
        assert_eq!(*producer.last().unwrap(), 99 * 3);
        let info = append(&log, batch(1, 1, 1));
        assert_eq!(info.base_offset, 302);
        log.wait_written(303, true).await.unwrap();
        assert_eq!(log.durable_offset(), 303);
        log.close().await.unwrap();
    });
}

async fn consume_all_closed(path: &Path) -> Vec<BatchHeader> {
    let log = PartitionLog::open(path.to_path_buf(), small_config())
        .await
        .unwrap();
    let all = consume_all(&log, 0, 5000);
    log.close().await.unwrap();
    all
}

#[test]
fn offset_for_timestamp_matches_a_brute_force_search() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let log = PartitionLog::open(path.clone(), small_config())
            .await
            .unwrap();
        // (offset, timestamp) of every record, in offset order; timestamps not monotonic.
        let mut records = Vec::new();
        for i in 0..200i64 {
            let base_ts = 10_000 + (i * 37 % 100) * 10 + i;
            let deltas = [3, 0, 7];
            let info = append(&log, batch_with_timestamps(base_ts, &deltas, 30));
            for (k, d) in deltas.iter().enumerate() {
                records.push((info.base_offset + k as i64, base_ts + d));
            }
        }
        log.wait_written(log.log_end_offset(), false).await.unwrap();
        let brute = |target: i64| records.iter().copied().find(|&(_, ts)| ts >= target);
        let targets: Vec<i64> = (9_990..11_300).step_by(7).collect();
        for &t in &targets {
            assert_eq!(log.offset_for_timestamp(t).unwrap(), brute(t), "target {t}");
        }
        assert_eq!(log.offset_for_timestamp(i64::MAX).unwrap(), None);
        // MAX_TIMESTAMP (KIP-734): the first record carrying the largest timestamp.
        let largest = records.iter().map(|&(_, ts)| ts).max().unwrap();
        let max_record = brute(largest);
        assert_eq!(log.offset_for_max_timestamp().unwrap(), max_record);
        log.close().await.unwrap();

        // Again from the index files loaded on open.
        let log = PartitionLog::open(path, small_config()).await.unwrap();
        assert_eq!(log.offset_for_max_timestamp().unwrap(), max_record);
        for &t in &targets {
            assert_eq!(
                log.offset_for_timestamp(t).unwrap(),
                brute(t),
                "target {t} after reopen"
            );
        }
        log.close().await.unwrap();
    });
}

#[test]
fn compressed_batches_answer_with_base_offset_and_max_timestamp() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        append(&log, batch_with_timestamps(1_000, &[0, 5], 10));
        let mut compressed = batch_with_timestamps(2_000, &[0, 9, 4], 10);
        compressed[22] |= 4; // attributes: zstd; the records stay opaque to the broker
        let crc = crate::record_batch::compute_crc(&compressed);
        compressed[17..21].copy_from_slice(&crc.to_be_bytes());
        append(&log, compressed);
        log.wait_written(5, false).await.unwrap();
        assert_eq!(log.offset_for_timestamp(1_003).unwrap(), Some((1, 1_005)));
        assert_eq!(log.offset_for_timestamp(1_006).unwrap(), Some((2, 2_009)));
        log.close().await.unwrap();
    });
}

#[test]
fn wait_for_data_wakes_on_append_and_dropping_it_leaks_nothing() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        let waiting = glommio::spawn_local(log.wait_for_data(0, ReadLimit::HighWatermark));
        futures_lite::future::yield_now().await;
        assert_eq!(log.pending_waiters(), 1, "the spawned wait registered");
        append(&log, batch(1, 1, 1));
        waiting.await;
        assert_eq!(log.high_watermark(), 1);
        assert_eq!(log.pending_waiters(), 0);

        // Long polls on an idle partition that time out, thousands of times.
        for _ in 0..10_000 {
            let mut wait = Box::pin(log.wait_for_data(1, ReadLimit::HighWatermark));
            assert!(poll_once(&mut wait).await.is_none());
        }
        assert_eq!(log.pending_waiters(), 0, "dropped waits are unregistered");
        // Already satisfied: resolves at once.
        log.wait_for_data(0, ReadLimit::HighWatermark).await;
        // Closing releases pending waits.
        let pending = glommio::spawn_local(log.wait_for_data(5, ReadLimit::HighWatermark));
        futures_lite::future::yield_now().await;
        log.close().await.unwrap();
        pending.await;
        assert_eq!(log.pending_waiters(), 0);
    });
}

/// Which of the first `pages` pages of `file` are in the page cache (mincore).
fn resident_pages(file: &std::fs::File, pages: usize) -> Vec<bool> {
    use std::os::fd::AsRawFd;
    let len = pages * 4096;
    // SAFETY: a read-only shared mapping of an open file, never dereferenced, unmapped
    // below; mincore writes one byte per page into a buffer of exactly that many bytes.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED);
        let mut residency = vec![0u8; pages];
        assert_eq!(libc::mincore(addr, len, residency.as_mut_ptr()), 0);
        libc::munmap(addr, len);
        residency.iter().map(|b| b & 1 == 1).collect()
    }
}

#[test]
fn reads_hint_the_kernel_to_read_ahead_of_the_consumer() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), uncached_config())
            .await
            .unwrap();
        while log.size_bytes() + log.queued_bytes() < 12 << 20 {
            append(&log, batch(16, 1000, 1));
            if log.queued_bytes() > 4 << 20 {
                log.wait_written(log.log_end_offset(), false).await.unwrap();
            }
        }
        log.wait_written(log.log_end_offset(), false).await.unwrap();
        // Force hints whatever this machine's read_ahead_kb says.
        log.segments.borrow()[0].set_read_ahead_piece_bytes(1 << 20);
        let file = log.segments.borrow()[0].read_file().unwrap();
        let mib_pages = (1 << 20) / 4096;
        assert!(
            !resident_pages(&file, 8 * mib_pages).iter().any(|&r| r),
            "O_DIRECT appends leave the page cache empty"
        );

        let first = file_slice(
            log.read(0, 1 << 20, true, ReadLimit::HighWatermark)
                .unwrap()
                .unwrap(),
        );
        assert_eq!(
            log.stats().read_ahead_bytes,
            4 << 20,
            "one step, the fetch included"
        );
        // WILLNEED only queued the reads: wait for them, without reading anything.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while resident_pages(&file, 4 * mib_pages).iter().any(|&r| !r) {
            assert!(
                std::time::Instant::now() < deadline,
                "hinted pages never arrived"
            );
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        // The next fetch continues the window rather than hinting the same pages again.
        let next = file_slice(
            log.read(1_000, 1 << 20, true, ReadLimit::HighWatermark)
                .unwrap()
                .unwrap(),
        );
        assert!(next.position > first.position);
        assert_eq!(log.stats().read_ahead_bytes, 8 << 20);
        log.close().await.unwrap();
    });
}

#[test]
fn durable_waits_share_one_fdatasync() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        let ends: Vec<i64> = (0..50)
            .map(|_| append(&log, batch(2, 100, 1)).last_offset + 1)
            .collect();
        let results = join_all(ends.iter().map(|&end| log.wait_written(end, true))).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(log.durable_offset(), 100);
        let stats = log.stats();
        assert_eq!(
            (stats.writes, stats.syncs),
            (1, 1),
            "50 requests, one write, one sync"
        );
        // Non-durable waits never sync.
        append(&log, batch(1, 1, 1));
        log.wait_written(101, false).await.unwrap();
        assert_eq!(log.stats().syncs, 1);
        assert_eq!(log.durable_offset(), 100);
        log.close().await.unwrap();
    });
}

#[test]
fn concurrent_producers_group_commit() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        let producers = 20;
        let rounds = 10;
        let tasks: Vec<_> = (0..producers)
            .map(|_| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    for _ in 0..rounds {
                        let info = append(&log, batch(1, 200, 1));
                        log.wait_written(info.last_offset + 1, true).await.unwrap();
                        assert!(log.durable_offset() > info.last_offset);
                    }
                })
            })
            .collect();
        join_all(tasks).await;
        let syncs = log.stats().syncs;
        assert!(
            syncs > 0 && syncs <= rounds * 2,
            "{syncs} syncs for {} durable requests",
            producers * rounds
        );
        log.close().await.unwrap();
    });
}

/// Writes cut into many pieces (as at extent boundaries: here every two pages of the file)
/// put the same bytes in the same places: what is read, and what a reopened log recovers
/// (cut or not, a crash or a clean close), is every batch appended.
#[test]
fn writes_cut_into_many_pieces_hold_every_batch() {
    for crash in [false, true] {
        run(move || async move {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t-0");
            // Segments of 1 MiB: writes of tens of KiB, cut in many places.
            let config = LogConfig {
                segment_bytes: 1 << 20,
                ..small_config()
            };
            let log = PartitionLog::open(path.clone(), config.clone())
                .await
                .unwrap();
            log.cut_writes_every_bytes
                .set(Some(2 * crate::storage::PAGE_BYTES));
            for i in 0..120usize {
                // 1 to 6 records of 1,500 bytes: batches that start and end anywhere in a page,
                // ten of them to a write, so most pieces lie inside a write, not at its end.
                append(&log, batch(1 + i % 6, 1_500, 1_000 + i as i64));
                if i % 10 == 9 {
                    log.wait_written(log.log_end_offset(), false).await.unwrap();
                }
            }
            let end = log.log_end_offset();
            log.wait_written(end, true).await.unwrap();
            let expected = consume_all(&log, 0, 1 << 20);
            assert_eq!(expected.last().unwrap().last_offset() + 1, end);
            if crash {
                drop(log);
            } else {
                log.close().await.unwrap();
            }
            let log = PartitionLog::open(path, config).await.unwrap();
            assert_eq!(log.log_end_offset(), end);
            assert_eq!(consume_all(&log, 0, 1 << 20), expected);
            log.close().await.unwrap();
        });
    }
}

#[test]
fn a_write_error_fails_the_log_without_panicking() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        append(&log, batch(1, 10, 1));
        log.wait_written(1, false).await.unwrap();
        log.fail_next_write.set(true);
        append(&log, batch(1, 10, 1));
        let mut data = Box::pin(log.wait_for_data(1, ReadLimit::HighWatermark));
        assert!(poll_once(&mut data).await.is_none());
        match log.wait_written(2, true).await {
            Err(StorageError::Io(e)) => assert!(e.to_string().contains("injected"), "{e}"),
            other => panic!("expected the write error, got {other:?}"),
        }
        data.await; // released, not left hanging
        assert!(matches!(
            log.append(
                Bytes::from(batch(1, 1, 1)),
                &validate(&batch(1, 1, 1), 1 << 20).unwrap(),
                0
            ),
            Err(StorageError::Io(_))
        ));
        assert_eq!(log.high_watermark(), 1);
        assert!(
            log.read(0, 100, true, ReadLimit::HighWatermark)
                .unwrap()
                .is_some(),
            "written data stays readable"
        );
        assert!(
            log.wait_written(1, false).await.is_ok(),
            "written before the failure"
        );
        assert!(matches!(log.close().await, Err(StorageError::Io(_))));
    });
}

#[test]
fn delete_removes_the_directory_and_fails_queued_waits() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let log = PartitionLog::open(path.clone(), LogConfig::default())
            .await
            .unwrap();
        append(&log, batch(1, 1, 1));
        log.wait_written(1, true).await.unwrap();
        append(&log, batch(1, 1, 1));
        // Registered before the writer can run: delete drops the queued batch instead.
        let mut waiting = Box::pin(log.wait_written(2, true));
        assert!(poll_once(&mut waiting).await.is_none());
        log.delete().await.unwrap();
        assert!(matches!(waiting.await, Err(StorageError::Closed)));
        assert!(!path.exists());
        assert!(matches!(
            log.read(0, 10, true, ReadLimit::HighWatermark),
            Err(StorageError::Closed)
        ));
    });
}

/// A log nobody appends to or reads for the idle time gives back its tail cache, its read
/// descriptors and (through the writer, after syncing what it wrote) its O_DIRECT descriptor;
/// reads and appends afterwards open them again and see every byte. A log used meanwhile keeps
/// them.
#[test]
fn an_idle_log_releases_its_cache_and_descriptors() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), small_config())
            .await
            .unwrap();
        let first = append(&log, batch(3, 100, 1_000));
        log.wait_written(log.log_end_offset(), false).await.unwrap();
        // Read from the file once so its read descriptor is open.
        let from_file = log.read_file(0, 1 << 20, true, log.high_watermark(), None);
        assert!(from_file.unwrap().is_some());
        assert!(log.tail_cache_usage().0 > 0);
        assert_eq!(log.open_read_files(), 1);
        let idle = Duration::from_secs(30);
        let now = Instant::now();
        assert!(!log.release_if_idle(now, idle), "just used");
        let later = now + idle + Duration::from_secs(1);
        let syncs_before = log.stats().syncs;
        assert!(log.release_if_idle(later, idle));
        assert!(!log.release_if_idle(later, idle), "released once");
        assert_eq!(log.tail_cache_usage(), (0, None), "the cache is released");
        assert_eq!(log.open_read_files(), 0, "the read descriptors are closed");
        // The writer syncs, writes the indexes and closes its file when it next runs.
        while log.writer_release_requested.get() {
            glommio::yield_if_needed().await;
            glommio::executor().yield_task_queue_now().await;
        }
        assert_eq!(
            log.stats().syncs,
            syncs_before + 1,
            "what it wrote is synced"
        );
        assert_eq!(log.durable_offset(), log.log_end_offset());
        // Everything is still there, and the log works on.
        let read = log
            .read(first.base_offset, 1 << 20, true, ReadLimit::HighWatermark)
            .unwrap()
            .unwrap();
        assert!(matches!(read, Records::File(_)), "from the file now");
        assert_eq!(whole_batches(&slice_bytes(&read)).len(), 1);
        let second = append(&log, batch(2, 100, 2_000));
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        let read = log
            .read(0, 1 << 20, true, ReadLimit::HighWatermark)
            .unwrap()
            .unwrap();
        let batches = whole_batches(&slice_bytes(&read));
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].base_offset, second.base_offset);
        log.close().await.unwrap();
        let reopened = PartitionLog::open(dir.path().join("t-0"), small_config())
            .await
            .unwrap();
        assert_eq!(reopened.log_end_offset(), second.last_offset + 1);
        reopened.close().await.unwrap();
    });
}

/// Cold bytes read into memory (`storage::direct_read`) answer a read only while their segment
/// is still the log's, whatever happened to its read descriptor: after a truncation replaced
/// the segment and other batches took the same offsets and positions, the same prefetched bytes
/// are ignored and the file's new batches are served.
#[test]
fn prefetched_bytes_serve_only_the_segment_they_were_read_from() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), uncached_config())
            .await
            .unwrap();
        append(&log, batch(5, 10, 1));
        append(&log, batch(5, 10, 1));
        log.wait_written(10, false).await.unwrap();
        let file = log.segments.borrow()[0].read_file().unwrap();
        let size = log.segments.borrow()[0].size_bytes();
        let mut bytes = vec![0u8; size as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        let prefetched = Prefetched {
            segment: log.segments.borrow()[0].id(),
            position: 0,
            bytes: Bytes::from(bytes.clone()),
        };
        // Its read descriptor closed and opened again (a roll's close, an idle release): the
        // same segment, still served from memory.
        log.segments.borrow()[0].release_read_file();
        let second_batch_at = whole_batches(&bytes)[0].total_len();

        let served = log
            .read_with(5, 1 << 20, true, ReadLimit::Written, Some(&prefetched))
            .unwrap()
            .unwrap();
        assert!(matches!(served, Records::Memory { .. }), "from memory");
        assert_eq!(slice_bytes(&served), &bytes[second_batch_at..]);

        assert_eq!(log.truncate_to(5).await.unwrap(), 5);
        // The same length at the same position, other bytes (timestamps, CRC).
        append(&log, batch(5, 10, 2));
        log.wait_written(10, false).await.unwrap();
        let served = log
            .read_with(5, 1 << 20, true, ReadLimit::Written, Some(&prefetched))
            .unwrap()
            .unwrap();
        assert!(
            matches!(served, Records::File(_)),
            "the replaced segment's file"
        );
        let now = slice_bytes(&served);
        let headers = whole_batches(&now);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].base_offset, 5);
        assert_eq!(now.len(), bytes.len() - second_batch_at);
        assert_ne!(
            now,
            bytes[second_batch_at..],
            "the new batch, not the old one"
        );
        log.close().await.unwrap();
    });
}
