//! The cleaner on real logs: what a consumer reads after a run, tombstones, crashes mid-swap.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;

use super::records::tests::{keyed_batch, KeyValue};
use super::{clean, swap, CompactionConfig};
use crate::record_batch::validate;
use crate::storage::log::tests::slice_bytes;
use crate::storage::testutil::run;
use crate::storage::{LogConfig, PartitionLog, ReadLimit};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        tail_cache_bytes: 0,
        ..LogConfig::default()
    }
}

fn eager() -> CompactionConfig {
    CompactionConfig {
        min_cleanable_dirty_ratio: 0.0,
        ..CompactionConfig::default()
    }
}

/// Appends one batch of `(key, value)` records compressed with `codec`.
fn put(log: &PartitionLog, records: &[(&str, Option<&str>)], codec: u8) {
    let records: Vec<KeyValue<'_>> = records
        .iter()
        .map(|(k, v)| (Some(k.as_bytes()), v.map(str::as_bytes)))
        .collect();
    let bytes = keyed_batch(0, &records, codec);
    let header = validate(&bytes, 1 << 20).unwrap();
    log.append(Bytes::from(bytes), &header, 0).unwrap();
}

/// Every record a consumer reads from the start: `(offset, key, value)`, checking that
/// offsets strictly increase.
fn read_all(log: &PartitionLog) -> Vec<(i64, String, Option<String>)> {
    let mut out: Vec<(i64, String, Option<String>)> = Vec::new();
    let mut next = log.log_start_offset();
    while let Some(read) = log
        .read(next, 64 << 10, true, ReadLimit::HighWatermark)
        .unwrap()
    {
        let mut bytes = Bytes::from(slice_bytes(&read));
        let mut last = next;
        while bytes.len() >= 61 {
            let header = crate::record_batch::BatchHeader::parse(&bytes, 1 << 20).unwrap();
            if header.total_len() > bytes.len() {
                break;
            }
            let mut batch = bytes.split_to(header.total_len());
            last = header.last_offset() + 1;
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut batch).unwrap();
            for record in set.records {
                if let Some((previous, _, _)) = out.last() {
                    assert!(record.offset > *previous, "offsets strictly increase");
                }
                let text = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
                out.push((record.offset, text(record.key).unwrap(), text(record.value)));
            }
        }
        assert!(last > next, "progress");
        next = last;
    }
    out
}

/// The latest value per key of what a consumer reads.
fn latest(records: &[(i64, String, Option<String>)]) -> BTreeMap<String, Option<String>> {
    records
        .iter()
        .map(|(_, k, v)| (k.clone(), v.clone()))
        .collect()
}

/// 100 bytes that compress badly.
fn noise(seed: usize) -> String {
    let mut x = seed as u64 * 2_654_435_761 + 1;
    (0..100)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// 20 keys x 10 updates, 5 records per batch, codecs in turn: many closed segments.
async fn filled(path: &Path) -> Rc<PartitionLog> {
    let log = PartitionLog::open(path.to_path_buf(), config())
        .await
        .unwrap();
    for round in 0..10 {
        for chunk in 0..4 {
            let values: Vec<String> = (0..5)
                .map(|i| {
                    format!(
                        "v{round}-{}-{}",
                        chunk * 5 + i,
                        noise(round * 20 + chunk * 5 + i)
                    )
                })
                .collect();
            let keys: Vec<String> = (0..5).map(|i| format!("key{}", chunk * 5 + i)).collect();
            let records: Vec<(&str, Option<&str>)> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| (k.as_str(), Some(v.as_str())))
                .collect();
            put(&log, &records, (round % 5) as u8);
        }
    }
    log.wait_written(log.log_end_offset(), true).await.unwrap();
    assert!(
        log.segment_count() > 4,
        "several closed segments: {:?}",
        log.segment_sizes_bytes()
    );
    log
}

#[test]
fn a_run_keeps_the_latest_record_of_every_key_at_its_offset() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path()).await;
        let before = read_all(&log);
        assert_eq!(before.len(), 200);
        let segments_before = log.segment_count();
        let stats = clean(&log, &eager(), now_ms(), 1 << 20)
            .await
            .unwrap()
            .unwrap();
        assert!(
            log.segment_count() < segments_before,
            "emptied segments are gone"
        );
        assert!(
            stats.records_removed > 0 && stats.segments_rewritten > 0,
            "{stats:?}"
        );
        let after = read_all(&log);
        assert_eq!(
            latest(&after),
            latest(&before),
            "every key's latest value stays"
        );
        let closed_end = log.segment_base_offsets().last().copied().unwrap();
        let mut seen = std::collections::HashSet::new();
        for (offset, key, _) in after.iter().filter(|(o, _, _)| *o < closed_end) {
            assert!(
                seen.insert(key.clone()),
                "{key} twice in closed segments (at {offset})"
            );
        }
        // Every record kept is the one at its original offset.
        let original: BTreeMap<i64, _> = before.iter().map(|r| (r.0, r.clone())).collect();
        for record in &after {
            assert_eq!(original[&record.0], *record);
        }
        assert_eq!(log.log_end_offset(), 200);
        // A second run finds nothing dirty; the reopened log reads the same.
        assert!(clean(&log, &eager(), now_ms(), 1 << 20)
            .await
            .unwrap()
            .is_none());
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), config())
            .await
            .unwrap();
        assert_eq!(read_all(&log), after);
        assert_eq!(log.first_dirty_offset(), closed_end);
        // Appends go on at the same offsets.
        put(&log, &[("key0", Some("new"))], 0);
        log.wait_written(201, false).await.unwrap();
        assert_eq!(read_all(&log).last().unwrap().0, 200);
        log.close().await.unwrap();
    });
}

#[test]
fn a_small_key_map_cleans_a_prefix_of_the_dirty_segments() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path()).await;
        // Then keys never seen before, 10 per batch: the map cannot hold them all.
        for batch in 0..30 {
            let keys: Vec<String> = (0..10).map(|i| format!("new{}", batch * 10 + i)).collect();
            let value = noise(batch);
            let records: Vec<(&str, Option<&str>)> = keys
                .iter()
                .map(|k| (k.as_str(), Some(value.as_str())))
                .collect();
            put(&log, &records, 0);
        }
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        let before = read_all(&log);
        // Room for the 20 updated keys and 40 more.
        let budget = 60 * (6 + super::offset_map::ENTRY_OVERHEAD_BYTES);
        let stats = clean(&log, &eager(), now_ms(), budget)
            .await
            .unwrap()
            .unwrap();
        assert!(
            stats.keys_mapped < 320 && stats.records_removed > 0,
            "{stats:?}"
        );
        let first_dirty = log.first_dirty_offset();
        let active_base = log.segment_base_offsets().last().copied().unwrap();
        assert!(
            first_dirty > 0 && first_dirty < active_base,
            "{first_dirty} {active_base}"
        );
        assert_eq!(latest(&read_all(&log)), latest(&before));
        // Later runs go on from there.
        for _ in 0..5 {
            clean(&log, &eager(), now_ms(), budget).await.unwrap();
        }
        assert!(log.first_dirty_offset() >= first_dirty);
        assert_eq!(latest(&read_all(&log)), latest(&before));
        log.close().await.unwrap();
    });
}

#[test]
fn tombstones_stay_for_delete_retention_then_go() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path()).await;
        put(&log, &[("key3", None), ("key4", None)], 0);
        // Roll past the tombstones.
        for round in 0..6 {
            put(&log, &[("other", Some(&format!("{round:0>900}")))], 0);
        }
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        let config = CompactionConfig {
            delete_retention_ms: 60_000,
            ..eager()
        };
        clean(&log, &config, now_ms(), 1 << 20)
            .await
            .unwrap()
            .unwrap();
        let after = read_all(&log);
        assert!(
            after.iter().any(|(_, k, v)| k == "key3" && v.is_none()),
            "the tombstone is kept for delete.retention.ms"
        );
        assert!(!after.iter().any(|(_, k, v)| k == "key3" && v.is_some()));
        assert!(!log.tombstones_due(now_ms()));
        // delete.retention.ms after the run, with slack for the files' write times; a restart
        // keeps the due time (the checkpoint).
        let later = now_ms() + 65_000;
        assert!(log.tombstones_due(later));
        let log_config = log.config().clone();
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), log_config)
            .await
            .unwrap();
        assert!(!log.tombstones_due(now_ms()));
        assert!(log.tombstones_due(later));
        clean(&log, &config, later, 1 << 20).await.unwrap().unwrap();
        let after = read_all(&log);
        assert!(
            !after.iter().any(|(_, k, _)| k == "key3" || k == "key4"),
            "gone"
        );
        assert!(after.iter().any(|(_, k, _)| k == "key5"));
        log.close().await.unwrap();
    });
}

#[test]
fn a_crash_after_the_swap_commits_is_finished_on_open() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path()).await;
        let expected = latest(&read_all(&log));
        swap::inject_crash_after_swap_rename(dir.path());
        assert!(clean(&log, &eager(), now_ms(), 1 << 20).await.is_err());
        let swaps = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .to_string_lossy()
                    .ends_with(".swap")
            })
            .count();
        assert!(swaps > 0, "the crash left .swap files");
        // The old segments still serve reads (their descriptors are pinned).
        assert_eq!(latest(&read_all(&log)), expected);
        drop(log); // a crash: no close
        let log = PartitionLog::open(dir.path().to_path_buf(), config())
            .await
            .unwrap();
        let after = read_all(&log);
        assert_eq!(latest(&after), expected);
        assert!(after.len() < 200, "the cleaned segments are in place");
        log.close().await.unwrap();
    });
}

#[test]
fn segment_ms_rolls_so_the_cleaner_reaches_the_newest_updates() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        // segment.ms 0: every segment is old enough to roll at the next append.
        let config = LogConfig {
            segment_ms: 0,
            ..config()
        };
        let log = PartitionLog::open(dir.path().to_path_buf(), config)
            .await
            .unwrap();
        for round in 0..3 {
            put(
                &log,
                &[("a", Some(&format!("{round}"))), ("b", Some("x"))],
                0,
            );
            log.wait_written(log.log_end_offset(), false).await.unwrap();
        }
        assert_eq!(log.segment_count(), 3, "one segment per append");
        // The last roll's closing done (the cleaner skips a log while a segment is closing).
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        clean(&log, &eager(), now_ms(), 1 << 20)
            .await
            .unwrap()
            .unwrap();
        let read = read_all(&log);
        let values: Vec<_> = read
            .iter()
            .map(|(o, k, v)| (*o, k.as_str(), v.as_deref()))
            .collect();
        // Closed segments hold round 1's records, superseded by nothing closed after them.
        assert_eq!(
            values,
            vec![
                (2, "a", Some("1")),
                (3, "b", Some("x")),
                (4, "a", Some("2")),
                (5, "b", Some("x"))
            ]
        );
        log.close().await.unwrap();
    });
}

#[test]
fn a_follower_copies_a_cleaned_log_across_its_gaps() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let leader = filled(&dir.path().join("leader")).await;
        clean(&leader, &eager(), now_ms(), 1 << 20)
            .await
            .unwrap()
            .unwrap();
        let follower = PartitionLog::open(dir.path().join("follower"), config())
            .await
            .unwrap();
        let mut next = 0;
        while let Some(read) = leader
            .read(next, 64 << 10, true, ReadLimit::Written)
            .unwrap()
        {
            let bytes = Bytes::from(slice_bytes(&read));
            for item in crate::record_batch::Batches::new(&bytes, 1 << 20) {
                let Ok((_, range)) = item else { break };
                let header =
                    crate::record_batch::validate_replicated(&bytes[range.clone()], 1 << 20)
                        .unwrap();
                follower
                    .append_replica_with_gaps(bytes.slice(range), &header, true)
                    .unwrap();
                next = header.last_offset() + 1;
            }
        }
        follower.wait_written(next, false).await.unwrap();
        assert_eq!(follower.log_end_offset(), leader.log_end_offset());
        assert_eq!(read_all(&follower), read_all(&leader));
        leader.close().await.unwrap();
        follower.close().await.unwrap();
    });
}

#[test]
fn cleaned_segments_merge_and_a_crash_mid_merge_is_finished_on_open() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path()).await;
        clean(&log, &eager(), now_ms(), 1 << 20)
            .await
            .unwrap()
            .unwrap();
        // More updates, so the next run has dirty segments and small clean ones to merge.
        put_rounds(&log, 10..14);
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        let expected = latest(&read_all(&log));
        let before = log.segment_count();
        swap::inject_crash_after_swap_rename(dir.path());
        assert!(clean(&log, &eager(), now_ms(), 1 << 20).await.is_err());
        assert_eq!(
            latest(&read_all(&log)),
            expected,
            "old segments still serve reads"
        );
        let merges = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".swap.members"))
            .count();
        assert!(merges > 0, "the crash left a merge half done");
        drop(log);
        let log = PartitionLog::open(dir.path().to_path_buf(), config())
            .await
            .unwrap();
        assert_eq!(latest(&read_all(&log)), expected);
        assert!(
            log.segment_count() < before,
            "merged: {} of {before}",
            log.segment_count()
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".log."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // And without a crash, the next runs keep merging and keep every latest value.
        put(&log, &[("key0", Some("last"))], 0);
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        clean(&log, &eager(), now_ms(), 1 << 20).await.unwrap();
        let mut expected = expected;
        expected.insert("key0".into(), Some("last".into()));
        assert_eq!(latest(&read_all(&log)), expected);
        log.close().await.unwrap();
    });
}

#[test]
fn an_unfinished_run_is_rolled_back_on_open() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path()).await;
        let before = read_all(&log);
        log.close().await.unwrap();
        // What a crash while writing cleaned copies leaves: a partial `.cleaned` file.
        let cleaned = dir.path().join("00000000000000000000.log.cleaned");
        std::fs::write(&cleaned, b"partial").unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), config())
            .await
            .unwrap();
        assert!(!cleaned.exists());
        assert_eq!(read_all(&log), before);
        log.close().await.unwrap();
    });
}

/// An aborted transaction in a segment the cleaner rewrites and merges: the merged segment's
/// `.txnindex` carries the entry, and a crash then loses nothing of it.
/// Appends a transactional batch of `producer_id` (epoch 0) with `records`; its offset.
fn put_transactional(
    log: &PartitionLog,
    producer_id: i64,
    sequence: i32,
    records: &[(&str, &str)],
) -> i64 {
    use crate::record_batch::compute_crc;
    let records: Vec<KeyValue<'_>> = records
        .iter()
        .map(|(k, v)| (Some(k.as_bytes()), Some(v.as_bytes())))
        .collect();
    let mut txn = keyed_batch(0, &records, 0);
    txn[43..51].copy_from_slice(&producer_id.to_be_bytes());
    txn[53..57].copy_from_slice(&sequence.to_be_bytes()); // base sequence
    txn[22] |= 0x10; // attributes: transactional
    let crc = compute_crc(&txn);
    txn[17..21].copy_from_slice(&crc.to_be_bytes());
    let header = validate(&txn, 1 << 20).unwrap();
    log.append(Bytes::from(txn), &header, 0)
        .unwrap()
        .base_offset
}

/// Appends the commit or abort marker of `producer_id`'s transaction; its offset.
fn put_marker(log: &PartitionLog, producer_id: i64, committed: bool) -> i64 {
    let marker =
        crate::record_batch::control::encode_marker(producer_id, 0, committed, 0, now_ms());
    let header = validate(&marker, 1 << 20).unwrap();
    log.append(marker, &header, 0).unwrap().base_offset
}

/// Updates of key0..key19 (`rounds` x 4 batches of 5), uncompressed.
fn put_rounds(log: &PartitionLog, rounds: std::ops::Range<usize>) {
    for round in rounds {
        for chunk in 0..4 {
            let values: Vec<String> = (0..5)
                .map(|i| format!("v{round}-{}-{}", chunk * 5 + i, noise(round * 20 + i)))
                .collect();
            let keys: Vec<String> = (0..5).map(|i| format!("key{}", chunk * 5 + i)).collect();
            let records: Vec<(&str, Option<&str>)> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| (k.as_str(), Some(v.as_str())))
                .collect();
            put(log, &records, 0);
        }
    }
}

#[test]
fn aborted_transactions_go_committed_ones_compact_and_open_ones_wait() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path()).await;
        put(&log, &[("keyX", Some("old")), ("keyY", Some("old"))], 0);
        let old_x = log.log_end_offset() - 2;
        let old_y = old_x + 1;
        // Committed: supersedes keyX's older value.
        let committed = put_transactional(&log, 70, 0, &[("keyX", "committed")]);
        put_marker(&log, 70, true);
        // Aborted: never keyY's value, and gone from the log.
        let aborted = put_transactional(&log, 71, 0, &[("keyY", "aborted")]);
        put_marker(&log, 71, false);
        put_rounds(&log, 10..12);
        // Open: nothing from its first offset on is cleaned until it ends.
        let open = put_transactional(&log, 72, 0, &[("key5", "open")]);
        put_rounds(&log, 12..16);
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        let before = read_all(&log);
        clean(&log, &eager(), now_ms(), 1 << 20).await.unwrap();
        let after = read_all(&log);
        let at = |records: &[(i64, String, Option<String>)], offset: i64| {
            records.iter().find(|r| r.0 == offset).map(|r| r.2.clone())
        };
        assert_eq!(at(&before, aborted), Some(Some("aborted".into())));
        assert_eq!(
            at(&after, aborted),
            None,
            "the aborted transaction's record went"
        );
        assert_eq!(
            at(&after, old_y),
            Some(Some("old".into())),
            "an abort supersedes nothing"
        );
        assert_eq!(
            at(&after, old_x),
            None,
            "a committed transaction supersedes"
        );
        assert_eq!(at(&after, committed), Some(Some("committed".into())));
        let from = |records: &[(i64, String, Option<String>)], offset: i64| -> Vec<_> {
            records.iter().filter(|r| r.0 >= offset).cloned().collect()
        };
        assert_eq!(
            from(&after, open),
            from(&before, open),
            "nothing at or after the open transaction is cleaned"
        );

        // Once it commits, the rest is cleaned too: its key5 is superseded by later values.
        put_marker(&log, 72, true);
        put_rounds(&log, 16..18);
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        clean(&log, &eager(), now_ms(), 1 << 20).await.unwrap();
        assert_eq!(at(&read_all(&log), open), None);
    })
}

#[test]
fn merged_segments_carry_their_aborted_transactions() {
    use crate::storage::{segment, txn_index};
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path()).await;
        let first = put_transactional(&log, 77, 0, &[("key3", "aborted")]);
        let marker_offset = put_marker(&log, 77, false);
        // Updates after it; each run cleans them, and the next merges the small clean ones.
        let segment_of = |bases: &[i64]| bases[bases.partition_point(|&b| b <= marker_offset) - 1];
        let base_before = segment_of(&log.segment_base_offsets());
        let segments_before = log.segment_count();
        for rounds in [10..14, 14..18, 18..22] {
            put_rounds(&log, rounds);
            log.wait_written(log.log_end_offset(), true).await.unwrap();
            clean(&log, &eager(), now_ms(), 1 << 20).await.unwrap();
        }
        let bases = log.segment_base_offsets();
        let base = segment_of(&bases);
        let next = bases[bases.partition_point(|&b| b <= marker_offset)];
        assert!(
            log.segment_count() < segments_before && base < base_before,
            "the marker's segment was merged into an earlier one: {base_before} -> {base} \
             ({segments_before} segments before, {bases:?} after)"
        );
        let expected = (77, first, marker_offset);
        let in_file = txn_index::read(
            &dir.path().join(segment::file_name(base, "log")),
            base,
            next,
            u64::MAX,
        )
        .unwrap();
        let key = |e: &txn_index::TxnIndexEntry| (e.producer_id, e.first_offset, e.last_offset);
        assert_eq!(in_file.iter().map(key).collect::<Vec<_>>(), vec![expected]);
        drop(log); // a crash
        let log = PartitionLog::open(dir.path().to_path_buf(), config())
            .await
            .unwrap();
        let recovered: Vec<_> = log
            .recovered_aborted_transactions()
            .iter()
            .map(key)
            .collect();
        assert_eq!(recovered, vec![expected]);
        log.close().await.unwrap();
    });
}
