//! Tests of what replication needs from a log: follower appends, read limits and the high
//! watermark's bound, the leader epoch cache through the log, truncation. Real files in a
//! temporary directory, on a glommio executor, like the shard runs them.

use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use futures_lite::future::poll_once;

use super::epoch_cache::{self, EpochEntry, CHECKPOINT_FILE};
use super::log::tests::{slice_bytes, small_config, uncached_config, whole_batches};
use super::testutil::{batch, build_batch, run};
use super::{AppendInfo, LogConfig, PartitionLog, ReadLimit, Records, StorageError};
use crate::record_batch::{assign, validate, BatchHeader};

fn append_at_epoch(log: &PartitionLog, bytes: Vec<u8>, epoch: i32) -> AppendInfo {
    let header = validate(&bytes, 1 << 20).expect("test batches are valid");
    log.append(Bytes::from(bytes), &header, epoch)
        .expect("append")
}

/// A batch as a leader would send it: offsets and epoch assigned, CRC unchanged.
fn leader_batch(bytes: Vec<u8>, base_offset: i64, epoch: i32) -> (Bytes, BatchHeader) {
    let mut bytes = bytes;
    assign(&mut bytes, base_offset, epoch);
    let header = validate(&bytes, 1 << 20).expect("assign leaves the CRC valid");
    (Bytes::from(bytes), header)
}

/// Every batch from `from` below `limit`, as the bytes a reader gets, checking each CRC.
fn read_all(log: &PartitionLog, from: i64, limit: ReadLimit) -> Vec<(BatchHeader, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = from;
    while let Some(records) = log.read(next, 3000, true, limit).unwrap() {
        let bytes = slice_bytes(&records);
        let mut at = 0;
        for h in whole_batches(&bytes) {
            let one = bytes[at..at + h.total_len()].to_vec();
            validate(&one, 1 << 20).expect("stored batch validates");
            at += h.total_len();
            if h.last_offset() >= next {
                next = h.last_offset() + 1;
                out.push((h, one));
            }
        }
    }
    out
}

fn offsets(batches: &[(BatchHeader, Vec<u8>)]) -> Vec<(i64, i64)> {
    batches
        .iter()
        .map(|(h, _)| (h.base_offset, h.last_offset()))
        .collect()
}

fn checkpoint(dir: &Path) -> Vec<EpochEntry> {
    epoch_cache::decode(&std::fs::read_to_string(dir.join(CHECKPOINT_FILE)).unwrap()).unwrap()
}

fn entries(list: &[(i32, i64)]) -> Vec<EpochEntry> {
    list.iter()
        .map(|&(epoch, start_offset)| EpochEntry {
            epoch,
            start_offset,
        })
        .collect()
}

#[test]
fn replica_appends_keep_the_leaders_bytes_and_refuse_gaps() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        for config in [small_config(), uncached_config()] {
            let _ = std::fs::remove_dir_all(&path);
            let log = PartitionLog::open(path.clone(), config.clone())
                .await
                .unwrap();
            let mut sent = Vec::new();
            let mut next = 0;
            for i in 0..60i64 {
                let epoch = if i < 30 { 4 } else { 6 };
                let (bytes, header) = leader_batch(
                    build_batch(1_000 + i, &[0, 1, 2], 50, 9, i as i32 * 3),
                    next,
                    epoch,
                );
                let info = log.append_replica(bytes.clone(), &header).unwrap();
                assert_eq!((info.base_offset, info.last_offset), (next, next + 2));
                sent.push(bytes.to_vec());
                next += 3;
            }
            assert_eq!(log.epoch_entries(), entries(&[(4, 0), (6, 90)]));

            // A gap, an overlap, an older epoch, a header that is not the bytes'.
            let (gap, gap_header) = leader_batch(batch(1, 10, 1), next + 1, 6);
            assert!(matches!(
                log.append_replica(gap, &gap_header),
                Err(StorageError::NonMonotonicOffset { expected, got }) if expected == next && got == next + 1
            ));
            let (old, old_header) = leader_batch(batch(1, 10, 1), next - 3, 6);
            assert!(matches!(
                log.append_replica(old, &old_header),
                Err(StorageError::NonMonotonicOffset { .. })
            ));
            let (stale, stale_header) = leader_batch(batch(1, 10, 1), next, 5);
            assert!(matches!(
                log.append_replica(stale, &stale_header),
                Err(StorageError::StaleLeaderEpoch { latest: 6, got: 5 })
            ));
            let (bytes, mut lying) = leader_batch(batch(1, 10, 1), next, 6);
            lying.partition_leader_epoch = 7;
            assert!(matches!(
                log.append_replica(bytes, &lying),
                Err(StorageError::InvalidBatch(_))
            ));
            assert_eq!(log.log_end_offset(), next, "nothing refused was appended");
            // A gap (a compacted leader's cleaned segment): the log end moves up to it.
            let (gap, gap_header) = leader_batch(batch(1, 10, 1), next + 5, 6);
            sent.push(gap.to_vec());
            let info = log
                .append_replica_with_gaps(gap, &gap_header, true)
                .unwrap();
            assert_eq!(info.base_offset, next + 5);
            next += 6;

            log.wait_written(next, false).await.unwrap();
            let read = read_all(&log, 0, ReadLimit::Written);
            let read_bytes: Vec<Vec<u8>> = read.into_iter().map(|(_, b)| b).collect();
            assert_eq!(read_bytes, sent, "byte for byte the leader's batches");
            log.close().await.unwrap();

            let log = PartitionLog::open(path.clone(), config).await.unwrap();
            let read_bytes: Vec<Vec<u8>> = read_all(&log, 0, ReadLimit::Written)
                .into_iter()
                .map(|(_, b)| b)
                .collect();
            assert_eq!(read_bytes, sent, "and from the files after a reopen");
            assert_eq!(log.epoch_entries(), entries(&[(4, 0), (6, 90)]));
            log.close().await.unwrap();
        }
    });
}

#[test]
fn the_high_watermark_bound_limits_consumer_reads_and_waits() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        for config in [small_config(), uncached_config()] {
            let path = dir.path().join(format!("t-{}", config.tail_cache_bytes));
            let log = PartitionLog::open(path, config).await.unwrap();
            assert_eq!(log.high_watermark(), 0);
            log.set_high_watermark_bound(Some(0));
            let mut ends = Vec::new();
            for _ in 0..80 {
                ends.push(append_at_epoch(&log, batch(3, 100, 1_000), 1).last_offset + 1);
            }
            log.wait_written(240, false).await.unwrap();
            assert_eq!((log.written_offset(), log.high_watermark()), (240, 0));
            assert!(log
                .read(0, 1 << 20, true, ReadLimit::HighWatermark)
                .unwrap()
                .is_none());
            assert_eq!(read_all(&log, 0, ReadLimit::Written).len(), 80);

            // Waits: replicas wake on written data, consumers only when the bound moves.
            let mut consumer = Box::pin(log.wait_for_data(0, ReadLimit::HighWatermark));
            assert!(poll_once(&mut consumer).await.is_none());
            log.wait_for_data(0, ReadLimit::Written).await;
            let mut acks_all = Box::pin(log.wait_for_high_watermark(ends[9]));
            assert!(poll_once(&mut acks_all).await.is_none());

            // A bound inside the segments (and mid-batch: that batch is not visible).
            log.set_high_watermark_bound(Some(ends[9] + 1));
            assert_eq!(log.high_watermark(), ends[9] + 1);
            consumer.await;
            acks_all.await.unwrap();
            let visible = read_all(&log, 0, ReadLimit::HighWatermark);
            assert_eq!(visible.len(), 10, "whole batches below the high watermark");
            assert_eq!(visible.last().unwrap().0.last_offset() + 1, ends[9]);
            assert!(
                log.read(ends[9], 1 << 20, true, ReadLimit::HighWatermark)
                    .unwrap()
                    .is_none(),
                "the batch holding the high watermark stays hidden"
            );
            // Below the bound the high watermark never moves back.
            log.set_high_watermark_bound(Some(3));
            assert_eq!(log.high_watermark(), ends[9] + 1);
            // ListOffsets by timestamp answers only below the high watermark.
            assert_eq!(log.offset_for_timestamp(1_000).unwrap(), Some((0, 1_000)));

            log.set_high_watermark_bound(Some(ends[50]));
            assert_eq!(read_all(&log, 0, ReadLimit::HighWatermark).len(), 51);
            log.set_high_watermark_bound(None);
            assert_eq!(log.high_watermark(), 240, "unbounded: follows written");
            assert_eq!(read_all(&log, 0, ReadLimit::HighWatermark).len(), 80);

            // A replica reopened restores its high watermark below the written offset.
            log.restore_high_watermark(ends[20]);
            assert_eq!(log.high_watermark(), ends[20]);
            log.set_high_watermark_bound(Some(ends[20]));
            append_at_epoch(&log, batch(1, 1, 1), 1);
            log.wait_written(241, false).await.unwrap();
            assert_eq!(log.high_watermark(), ends[20]);
            log.close().await.unwrap();
        }
    });
}

#[test]
fn retention_keeps_what_the_high_watermark_has_not_passed_and_moves_the_epoch_start() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let config = LogConfig {
            retention_ms: -1,
            retention_bytes: 0,
            ..truncation_config()
        };
        let log = PartitionLog::open(path.clone(), config.clone())
            .await
            .unwrap();
        log.set_high_watermark_bound(Some(0));
        for i in 0..200 {
            append_at_epoch(&log, batch(2, 100, 1_000), 1 + i / 100);
        }
        log.wait_written(400, false).await.unwrap();
        let bases = log.segment_base_offsets();
        assert!(bases.len() > 4);
        assert_eq!(
            log.enforce_retention(i64::MAX).await.unwrap(),
            0,
            "all above the HW"
        );
        log.set_high_watermark_bound(Some(bases[3]));
        assert_eq!(log.enforce_retention(i64::MAX).await.unwrap(), 3);
        assert_eq!(log.log_start_offset(), bases[3]);
        let expected = if bases[3] < 200 {
            entries(&[(1, bases[3]), (2, 200)])
        } else {
            entries(&[(2, bases[3])])
        };
        assert_eq!(log.epoch_entries(), expected);
        // Retention does not rewrite the checkpoint (two fsyncs on the shard's thread per
        // partition and run): after a crash, opening fits the file's entries to the log start.
        drop(log);
        let log = PartitionLog::open(path.clone(), config).await.unwrap();
        assert_eq!(log.log_start_offset(), bases[3]);
        assert_eq!(log.epoch_entries(), expected);
        log.close().await.unwrap();
    });
}

#[test]
fn epoch_cache_through_the_log_and_after_a_torn_tail() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let log = PartitionLog::open(path.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.latest_epoch(), None);
        assert_eq!(log.end_offset_for_epoch(0), None);
        append_at_epoch(&log, batch(2, 10, 1), 1);
        append_at_epoch(&log, batch(2, 10, 1), 1);
        append_at_epoch(&log, batch(2, 10, 1), 3);
        assert!(matches!(
            log.append(
                Bytes::from(batch(1, 1, 1)),
                &validate(&batch(1, 1, 1), 1 << 20).unwrap(),
                2
            ),
            Err(StorageError::StaleLeaderEpoch { latest: 3, got: 2 })
        ));
        assert_eq!(log.log_end_offset(), 6);
        // A new leader records its epoch before appending anything.
        log.assign_epoch_start(5).unwrap();
        log.assign_epoch_start(5).unwrap();
        assert!(matches!(
            log.assign_epoch_start(4),
            Err(StorageError::StaleLeaderEpoch { .. })
        ));
        assert_eq!(log.epoch_entries(), entries(&[(1, 0), (3, 4), (5, 6)]));
        assert_eq!(log.end_offset_for_epoch(1), Some((1, 4)));
        assert_eq!(log.end_offset_for_epoch(2), Some((1, 4)));
        assert_eq!(log.end_offset_for_epoch(3), Some((3, 6)));
        assert_eq!(log.end_offset_for_epoch(5), Some((5, 6)));
        assert_eq!(log.end_offset_for_epoch(6), None);
        append_at_epoch(&log, batch(2, 10, 1), 5);
        assert_eq!(
            log.end_offset_for_epoch(5),
            Some((5, 8)),
            "the latest ends at LEO"
        );
        append_at_epoch(&log, batch(2, 10, 1), 7);
        log.close().await.unwrap();

        // Round trip.
        let log = PartitionLog::open(path.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(
            log.epoch_entries(),
            entries(&[(1, 0), (3, 4), (5, 6), (7, 8)])
        );
        log.close().await.unwrap();

        // A torn tail cuts the epoch-7 batch: its entry goes with it.
        let file = path.join("00000000000000000000.log");
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let log = PartitionLog::open(path.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 8);
        assert_eq!(log.epoch_entries(), entries(&[(1, 0), (3, 4), (5, 6)]));
        // The file loses the dropped entry before the log grows past it (opening does not
        // write: every restarting leader drops its empty epoch).
        std::fs::write(
            path.join(CHECKPOINT_FILE),
            epoch_cache::encode(&entries(&[(1, 0), (3, 4), (5, 6), (7, 8)])),
        )
        .unwrap();
        let log = {
            log.close().await.unwrap();
            PartitionLog::open(path.clone(), LogConfig::default())
                .await
                .unwrap()
        };
        assert_eq!(log.epoch_entries(), entries(&[(1, 0), (3, 4), (5, 6)]));
        assert_eq!(
            checkpoint(&path),
            entries(&[(1, 0), (3, 4), (5, 6), (7, 8)])
        );
        append_at_epoch(&log, batch(1, 10, 1), 5);
        assert_eq!(checkpoint(&path), log.epoch_entries());
        log.close().await.unwrap();

        // A corrupt checkpoint is rebuilt from the batches.
        std::fs::write(path.join(CHECKPOINT_FILE), "0\n2\n1 0\n").unwrap();
        let log = PartitionLog::open(path.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.epoch_entries(), entries(&[(1, 0), (3, 4), (5, 6)]));
        log.close().await.unwrap();
    });
}

#[test]
fn a_missing_checkpoint_is_rebuilt_from_every_segment() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let log = PartitionLog::open(path.clone(), truncation_config())
            .await
            .unwrap();
        // Epoch changes inside closed segments, at segment starts, and in the active one.
        let epoch_at = |i: i64| match i {
            0..=36 => 0,
            37..=99 => 2,
            100..=100 => 3,
            101..=249 => 8,
            _ => 9,
        };
        for i in 0..260 {
            append_at_epoch(&log, batch(1, 200, 1_000), epoch_at(i));
        }
        log.close().await.unwrap();
        let expected = log.epoch_entries();
        assert_eq!(
            expected,
            entries(&[(0, 0), (2, 37), (3, 100), (8, 101), (9, 250)])
        );
        assert!(log.segment_count() > 5);
        std::fs::remove_file(path.join(CHECKPOINT_FILE)).unwrap();
        let log = PartitionLog::open(path.clone(), truncation_config())
            .await
            .unwrap();
        assert_eq!(log.epoch_entries(), expected);
        assert_eq!(
            checkpoint(&path),
            expected,
            "the rebuilt cache is persisted"
        );
        log.close().await.unwrap();
    });
}

/// 8 KiB segments: about 20 batches of [`filled_log`] each.
fn truncation_config() -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        ..small_config()
    }
}

/// 120 batches of 3 records from producer 11 (sequences 0, 3, ...), in 8 KiB segments;
/// epoch 1 for the first 60, epoch 2 after. Returns the batches' (base, last) offsets.
async fn filled_log(path: &Path) -> (Rc<PartitionLog>, Vec<(i64, i64)>) {
    let log = PartitionLog::open(path.to_path_buf(), truncation_config())
        .await
        .unwrap();
    let mut batches = Vec::new();
    for i in 0..120 {
        let bytes = build_batch(1_000 + i as i64, &[0, 1, 2], 100, 11, i * 3);
        let info = append_at_epoch(&log, bytes, if i < 60 { 1 } else { 2 });
        batches.push((info.base_offset, info.last_offset));
    }
    log.wait_written(log.log_end_offset(), false).await.unwrap();
    assert!(log.segment_count() >= 6);
    (log, batches)
}

#[test]
fn truncate_to_mid_batch_and_at_segment_boundaries_then_append_and_reopen() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            "mid batch, mid segment",
            "segment boundary",
            "inside the active segment",
        ];
        for (case, name) in cases.iter().enumerate() {
            let path = dir.path().join(format!("t-{case}"));
            let (log, batches) = filled_log(&path).await;
            let bases = log.segment_base_offsets();
            // (requested offset, index of the first batch removed)
            let (requested, first_removed) = match case {
                0 => {
                    let k = batches.iter().position(|&(b, _)| b > bases[2] + 6).unwrap();
                    (batches[k].0 + 1, k)
                }
                1 => {
                    let k = batches.iter().position(|&(b, _)| b == bases[3]).unwrap();
                    (bases[3], k)
                }
                _ => {
                    let last = *bases.last().unwrap();
                    let k = batches.iter().position(|&(b, _)| b > last).unwrap() + 1;
                    (batches[k].0 + 2, k)
                }
            };
            let new_end = batches[first_removed].0;
            let log_end_before = log.log_end_offset();
            assert_eq!(log.truncate_to(requested).await.unwrap(), new_end, "{name}");
            assert_eq!(log.log_end_offset(), new_end, "{name}");
            assert_eq!(
                (
                    log.written_offset(),
                    log.durable_offset(),
                    log.high_watermark()
                ),
                (new_end, new_end, new_end),
                "{name}"
            );
            let kept_segments: Vec<i64> = bases.iter().copied().filter(|&b| b <= new_end).collect();
            assert_eq!(log.segment_base_offsets(), kept_segments, "{name}");
            for base in bases.iter().filter(|&&b| b > new_end) {
                assert!(!path.join(format!("{base:020}.log")).exists(), "{name}");
            }
            let active = *kept_segments.last().unwrap();
            let active_file = path.join(format!("{active:020}.log"));
            assert_eq!(
                std::fs::metadata(&active_file).unwrap().len(),
                *log.segment_sizes_bytes().last().unwrap(),
                "{name}: cut at the batch boundary"
            );
            let read = read_all(&log, 0, ReadLimit::HighWatermark);
            assert_eq!(offsets(&read), batches[..first_removed], "{name}");
            assert!(matches!(
                log.read(new_end + 1, 100, true, ReadLimit::Written),
                Err(StorageError::OffsetOutOfRange { .. })
            ));
            // The epoch cache and the producer batches describe what is left.
            let expected_epochs = if new_end > 180 {
                entries(&[(1, 0), (2, 180)])
            } else {
                entries(&[(1, 0)])
            };
            assert_eq!(log.epoch_entries(), expected_epochs, "{name}");
            assert_eq!(checkpoint(&path), expected_epochs, "{name}");
            let producer = log.recovered_producer_batches();
            assert!(
                producer.iter().all(|h| h.last_offset() < new_end),
                "{name}: {producer:?}"
            );
            if new_end > active {
                assert_eq!(
                    producer.last().unwrap().last_offset(),
                    new_end - 1,
                    "{name}"
                );
            }
            // Truncating at or past the end changes nothing.
            assert_eq!(log.truncate_to(log_end_before).await.unwrap(), new_end);

            // Appending again continues at the cut, with a new epoch.
            let info = append_at_epoch(&log, batch(2, 30, 5_000), 3);
            assert_eq!(info.base_offset, new_end, "{name}");
            let mut expected = batches[..first_removed].to_vec();
            expected.push((info.base_offset, info.last_offset));
            log.wait_written(info.last_offset + 1, true).await.unwrap();
            assert_eq!(
                offsets(&read_all(&log, 0, ReadLimit::HighWatermark)),
                expected
            );
            log.close().await.unwrap();

            let log = PartitionLog::open(path.clone(), truncation_config())
                .await
                .unwrap();
            assert_eq!(
                offsets(&read_all(&log, 0, ReadLimit::HighWatermark)),
                expected,
                "{name}: after reopening"
            );
            let mut expected_epochs = expected_epochs;
            expected_epochs.push(EpochEntry {
                epoch: 3,
                start_offset: new_end,
            });
            assert_eq!(log.epoch_entries(), expected_epochs, "{name}");
            log.close().await.unwrap();
        }
    });
}

#[test]
fn waits_above_a_truncation_fail_and_never_succeed_on_later_data() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        log.set_high_watermark_bound(Some(0));
        append_at_epoch(&log, batch(5, 10, 1), 1);
        log.wait_written(5, true).await.unwrap();
        let queued = append_at_epoch(&log, batch(5, 10, 1), 1);
        let end = queued.last_offset + 1;
        // A durable produce waiter, created (not yet polled) before the truncation.
        let durable = log.wait_written(end, true);
        // Consumers and acks=all waiters, polled before it.
        let mut visible = Box::pin(log.wait_for_high_watermark(end));
        assert!(poll_once(&mut visible).await.is_none());
        let mut below = Box::pin(log.wait_for_high_watermark(5));
        assert!(poll_once(&mut below).await.is_none());
        let consumer = glommio::spawn_local(log.wait_for_data(7, ReadLimit::HighWatermark));
        futures_lite::future::yield_now().await;

        assert_eq!(log.truncate_to(5).await.unwrap(), 5);
        // The leader's data comes back to those offsets: still not what was waited for.
        let replacement = append_at_epoch(&log, batch(10, 10, 1), 2);
        log.wait_written(replacement.last_offset + 1, true)
            .await
            .unwrap();
        log.set_high_watermark_bound(None);
        for (name, outcome) in [("durable", durable.await), ("visible", visible.await)] {
            assert!(
                matches!(outcome, Err(StorageError::Truncated { log_end: 5, .. })),
                "{name}: {outcome:?}"
            );
        }
        consumer.await; // released
        below.await.unwrap();
        assert_eq!(log.pending_waiters(), 0);
        log.close().await.unwrap();
    });
}

#[test]
fn appends_during_a_truncation_are_refused() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        for _ in 0..10 {
            append_at_epoch(&log, batch(2, 10, 1), 1);
        }
        let truncating = {
            let log = log.clone();
            glommio::spawn_local(async move { log.truncate_to(4).await })
        };
        futures_lite::future::yield_now().await;
        let bytes = batch(1, 1, 1);
        let header = validate(&bytes, 1 << 20).unwrap();
        assert!(matches!(
            log.append(Bytes::from(bytes), &header, 1),
            Err(StorageError::Truncating)
        ));
        assert_eq!(truncating.await.unwrap(), 4);
        assert_eq!(append_at_epoch(&log, batch(1, 1, 1), 1).base_offset, 4);
        log.close().await.unwrap();
    });
}

#[test]
fn truncate_fully_and_start_at_restarts_an_empty_log() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let (log, _) = filled_log(&path).await;
        log.restore_high_watermark(10);
        log.set_high_watermark_bound(Some(10));
        let mut pending = Box::pin(log.wait_for_high_watermark(log.log_end_offset()));
        assert!(poll_once(&mut pending).await.is_none());
        log.truncate_fully_and_start_at(1_000).await.unwrap();
        assert!(matches!(pending.await, Err(StorageError::Truncated { .. })));
        assert_eq!(
            (
                log.log_start_offset(),
                log.log_end_offset(),
                log.written_offset(),
                log.high_watermark()
            ),
            (1_000, 1_000, 1_000, 1_000)
        );
        assert_eq!(log.segment_base_offsets(), vec![1_000]);
        assert!(log.epoch_entries().is_empty());
        assert!(log.recovered_producer_batches().is_empty());
        let logs: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".log"))
            .collect();
        assert_eq!(logs, vec!["00000000000000001000.log".to_string()]);
        assert!(log
            .read(1_000, 100, true, ReadLimit::Written)
            .unwrap()
            .is_none());
        assert!(matches!(
            log.read(999, 100, true, ReadLimit::Written),
            Err(StorageError::OffsetOutOfRange { .. })
        ));

        let (bytes, header) = leader_batch(batch(3, 10, 1), 1_000, 9);
        log.append_replica(bytes, &header).unwrap();
        log.wait_written(1_003, true).await.unwrap();
        assert_eq!(
            log.high_watermark(),
            1_000,
            "the bound (10) is below the log start: the high watermark stays there"
        );
        log.close().await.unwrap();

        let log = PartitionLog::open(path.clone(), small_config())
            .await
            .unwrap();
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (1_000, 1_003)
        );
        assert_eq!(log.epoch_entries(), entries(&[(9, 1_000)]));
        assert_eq!(
            offsets(&read_all(&log, 1_000, ReadLimit::HighWatermark)),
            vec![(1_000, 1_002)]
        );
        // Below the log start, truncate_to restarts the log too (as Kafka does).
        assert_eq!(log.truncate_to(500).await.unwrap(), 500);
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 500));
        log.close().await.unwrap();
    });
}

#[test]
fn reads_honour_their_limit_in_memory_and_in_the_files() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("t-0"), small_config())
            .await
            .unwrap();
        log.set_high_watermark_bound(Some(4));
        for _ in 0..4 {
            append_at_epoch(&log, batch(2, 10, 1), 1);
        }
        log.wait_written(8, false).await.unwrap();
        let memory = log
            .read(0, 1 << 20, true, ReadLimit::HighWatermark)
            .unwrap()
            .unwrap();
        assert!(matches!(memory, Records::Memory { .. }));
        assert_eq!(whole_batches(&slice_bytes(&memory)).len(), 2);
        let replica = log
            .read(0, 1 << 20, true, ReadLimit::Written)
            .unwrap()
            .unwrap();
        assert_eq!(whole_batches(&slice_bytes(&replica)).len(), 4);
        assert!(log
            .read(4, 1 << 20, true, ReadLimit::HighWatermark)
            .unwrap()
            .is_none());
        assert!(log
            .read(8, 1 << 20, true, ReadLimit::Written)
            .unwrap()
            .is_none());
        log.close().await.unwrap();
    });
}
