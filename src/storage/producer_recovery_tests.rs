//! Producer state and aborted transactions across rolls, crashes, clean closes, damaged files
//! and logs written before snapshots existed (`producer_snapshot`, `txn_index`,
//! `recovery::producers`).

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::record_batch::control::encode_marker;
use crate::record_batch::{compute_crc, validate};
use crate::storage::log::tests::{append, consume_all, small_config};
use crate::storage::producer_snapshot;
use crate::storage::testutil::{batch, build_batch, run};
use crate::storage::txn_index::TxnIndexEntry;
use crate::storage::PartitionLog;

const TXN_PRODUCER: i64 = 40;
const OPEN_PRODUCER: i64 = 41;
const IDEMPOTENT_PRODUCER: i64 = 50;

/// A batch of `producer_id` with `count` records of 200 bytes, transactional or not.
fn producer_batch(producer_id: i64, sequence: i32, count: usize, transactional: bool) -> Vec<u8> {
    let mut bytes = build_batch(1_000, &vec![0; count], 200, producer_id, sequence);
    if transactional {
        bytes[22] |= 0x10; // attributes low byte: transactional
        let crc = compute_crc(&bytes);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    bytes
}

fn append_marker(log: &PartitionLog, producer_id: i64, committed: bool) -> i64 {
    let bytes = encode_marker(producer_id, 0, committed, 0, 1_000).to_vec();
    let header = validate(&bytes, 1 << 20).unwrap();
    log.append(Bytes::from(bytes), &header, 7)
        .unwrap()
        .base_offset
}

struct Written {
    txn_first_offset: i64,
    abort_offset: i64,
    open_first_offset: i64,
    last_idempotent: (i32, i64),
}

/// A transaction of TXN_PRODUCER that spans a roll and aborts, one of OPEN_PRODUCER that
/// starts before a roll and stays open, an idempotent producer's batches, and committed data
/// across several rolls after the abort. Returns what recovery must find.
async fn write_history(log: &PartitionLog) -> Written {
    let txn_first_offset = append(log, producer_batch(TXN_PRODUCER, 0, 3, true)).base_offset;
    roll(log, 2).await;
    append(log, producer_batch(TXN_PRODUCER, 3, 3, true));
    let abort_offset = append_marker(log, TXN_PRODUCER, false);
    let open_first_offset = append(log, producer_batch(OPEN_PRODUCER, 0, 2, true)).base_offset;
    roll(log, 3).await;
    let mut last_idempotent = (0, 0);
    for i in 0..7 {
        let info = append(log, producer_batch(IDEMPOTENT_PRODUCER, i * 2, 2, false));
        last_idempotent = (i * 2, info.base_offset);
    }
    roll(log, 1).await;
    append(log, producer_batch(OPEN_PRODUCER, 2, 2, true));
    log.wait_written(log.log_end_offset(), true).await.unwrap();
    Written {
        txn_first_offset,
        abort_offset,
        open_first_offset,
        last_idempotent,
    }
}

/// Appends plain batches until `rolls` more 16 KiB segments exist (the writer rolls as it
/// writes, so each batch is waited for).
async fn roll(log: &PartitionLog, rolls: usize) {
    let target = log.segment_count() + rolls;
    while log.segment_count() < target {
        append(log, batch(10, 200, 1_000));
        log.wait_written(log.log_end_offset(), false).await.unwrap();
    }
}

fn check_recovered(log: &PartitionLog, written: &Written) {
    assert_eq!(
        log.recovered_aborted_transactions(),
        vec![TxnIndexEntry {
            producer_id: TXN_PRODUCER,
            first_offset: written.txn_first_offset,
            last_offset: written.abort_offset,
            last_stable_offset: written.open_first_offset.min(written.abort_offset + 1),
        }],
        "the abort, with its first batch before the roll"
    );
    assert_eq!(
        log.recovered_open_transactions(),
        vec![(OPEN_PRODUCER, written.open_first_offset)],
        "the open transaction counts from its first batch, before the rolls"
    );
    let idempotent: Vec<(i32, i64)> = log
        .recovered_producer_batches()
        .iter()
        .filter(|h| h.producer_id == IDEMPOTENT_PRODUCER)
        .map(|h| (h.base_sequence, h.base_offset))
        .collect();
    assert_eq!(idempotent.len(), 5, "the last five batches");
    assert_eq!(*idempotent.last().unwrap(), written.last_idempotent);
}

/// An empty log in a fresh directory (kept while the first value lives) at the returned path.
async fn new_log() -> (tempfile::TempDir, PathBuf, std::rc::Rc<PartitionLog>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    let log = crash_and_reopen(&path).await;
    (dir, path, log)
}

async fn crash_and_reopen(path: &Path) -> std::rc::Rc<PartitionLog> {
    PartitionLog::open(path.to_path_buf(), small_config())
        .await
        .unwrap()
}

fn files_with(path: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

#[test]
fn transactions_and_producers_survive_a_crash_across_rolls() {
    run(|| async {
        let (_dir, path, log) = new_log().await;
        let written = write_history(&log).await;
        let active_base = *log.segment_base_offsets().last().unwrap();
        assert!(
            written.abort_offset < active_base && log.segment_count() >= 7,
            "the abort is in a closed segment"
        );
        drop(log); // a crash: no close

        assert_eq!(files_with(&path, "txnindex").len(), 1);
        assert!(producer_snapshot::path_for(&path, active_base).exists());
        let log = crash_and_reopen(&path).await;
        assert!(!log.opened_after_clean_close());
        check_recovered(&log, &written);
        log.close().await.unwrap();
    });
}

#[test]
fn a_clean_close_keeps_transactions_and_skips_the_scan() {
    run(|| async {
        let (_dir, path, log) = new_log().await;
        let written = write_history(&log).await;
        log.close_clean().await.unwrap();

        let log = crash_and_reopen(&path).await;
        assert!(
            log.opened_after_clean_close(),
            "open transactions no longer force a scan"
        );
        check_recovered(&log, &written);
        // Appends after the trusted open continue the state; a crash then scans again.
        let marker = append_marker(&log, OPEN_PRODUCER, false);
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        drop(log);
        let log = crash_and_reopen(&path).await;
        assert!(!log.opened_after_clean_close());
        let aborted = log.recovered_aborted_transactions();
        assert_eq!(aborted.len(), 2);
        assert_eq!(
            (aborted[1].first_offset, aborted[1].last_offset),
            (written.open_first_offset, marker)
        );
        assert!(log.recovered_open_transactions().is_empty());
        log.close().await.unwrap();
    });
}

#[test]
fn damaged_snapshots_and_indexes_are_rebuilt_by_scanning() {
    run(|| async {
        let (_dir, path, log) = new_log().await;
        let written = write_history(&log).await;
        let active_base = *log.segment_base_offsets().last().unwrap();
        drop(log);

        // The newest snapshot torn, the next one garbage, the transaction index truncated.
        let newest = producer_snapshot::path_for(&path, active_base);
        let bytes = std::fs::read(&newest).unwrap();
        std::fs::write(&newest, &bytes[..bytes.len() - 3]).unwrap();
        let snapshots = files_with(&path, "snapshot");
        assert!(snapshots.len() >= 3);
        std::fs::write(&snapshots[snapshots.len() - 2], b"not a snapshot").unwrap();
        let index = files_with(&path, "txnindex").pop().unwrap();
        let index_bytes = std::fs::read(&index).unwrap();
        std::fs::write(&index, &index_bytes[..20]).unwrap();

        let log = crash_and_reopen(&path).await;
        check_recovered(&log, &written);
        assert_eq!(std::fs::read(&index).unwrap(), index_bytes, "index rebuilt");
        assert!(
            producer_snapshot::read(&path, active_base).is_ok(),
            "snapshot rewritten"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn a_log_without_snapshots_is_scanned_once_and_then_has_them() {
    run(|| async {
        let (_dir, path, log) = new_log().await;
        let written = write_history(&log).await;
        let active_base = *log.segment_base_offsets().last().unwrap();
        drop(log);
        // What the previous version of the broker left: no snapshots, no transaction index.
        for file in files_with(&path, "snapshot")
            .into_iter()
            .chain(files_with(&path, "txnindex"))
        {
            std::fs::remove_file(file).unwrap();
        }

        let log = crash_and_reopen(&path).await;
        check_recovered(&log, &written);
        assert_eq!(producer_snapshot::list(&path).unwrap(), vec![active_base]);
        assert_eq!(files_with(&path, "txnindex").len(), 1);
        log.close().await.unwrap();
    });
}

/// A roll opens the next segment and writes to it at once; closing the old one (padding cut,
/// fdatasync, index files, `.txnindex`, the snapshot at the new base, the new segment's index
/// files) finishes beside those writes. A crash before it finished leaves the files as below:
/// recovery must lose nothing and rebuild the aborted transaction from the scan.
#[test]
fn a_crash_before_a_roll_finished_closing_the_old_segment_loses_nothing() {
    run(|| async {
        let (_dir, path, log) = new_log().await;
        append(&log, producer_batch(TXN_PRODUCER, 0, 3, true));
        roll(&log, 1).await;
        append(&log, producer_batch(TXN_PRODUCER, 3, 3, true));
        append_marker(&log, TXN_PRODUCER, false);
        roll(&log, 1).await; // the segment holding the abort marker closes
        append(&log, batch(10, 200, 1_000));
        let end = log.log_end_offset();
        log.wait_written(end, true).await.unwrap();
        let bases = log.segment_base_offsets();
        let (closing_base, active_base) = (bases[bases.len() - 2], bases[bases.len() - 1]);
        drop(log);

        // What an intact crash recovers, for comparison.
        let log = crash_and_reopen(&path).await;
        let aborted = log.recovered_aborted_transactions();
        assert_eq!(aborted.len(), 1);
        let batches = consume_all(&log, 0, 1 << 20);
        assert_eq!(batches.last().unwrap().last_offset() + 1, end);
        drop(log);

        // The closing undone: the old segment's zeros back (its last page's padding and the
        // blocks preallocated ahead of its writes, `storage::preallocate`), its index files and
        // `.txnindex` as a new segment has them (empty, absent), no snapshot at the new base,
        // the new segment's index files not created yet.
        let name = |base: i64, ext: &str| path.join(format!("{base:020}.{ext}"));
        let closing_log = name(closing_base, "log");
        let size = std::fs::metadata(&closing_log).unwrap().len();
        let padded = size.next_multiple_of(4096);
        assert!(padded > size, "the segment ends inside a page");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&closing_log)
            .unwrap()
            .set_len(padded + (12 << 20))
            .unwrap();
        std::fs::write(name(closing_base, "index"), b"").unwrap();
        std::fs::write(name(closing_base, "timeindex"), b"").unwrap();
        std::fs::remove_file(name(closing_base, "txnindex")).unwrap();
        std::fs::remove_file(producer_snapshot::path_for(&path, active_base)).unwrap();
        std::fs::remove_file(name(active_base, "index")).unwrap();
        std::fs::remove_file(name(active_base, "timeindex")).unwrap();

        let log = crash_and_reopen(&path).await;
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.recovered_aborted_transactions(), aborted);
        assert_eq!(consume_all(&log, 0, 1 << 20), batches);
        assert_eq!(
            std::fs::metadata(&closing_log).unwrap().len(),
            size,
            "padding cut"
        );
        assert!(
            name(closing_base, "txnindex").exists(),
            "transaction index rebuilt"
        );
        assert!(producer_snapshot::path_for(&path, active_base).exists());
        log.close().await.unwrap();
    });
}

#[test]
fn retention_removes_indexes_and_old_snapshots_with_their_segments() {
    run(|| async {
        let (_dir, path, log) = new_log().await;
        let written = write_history(&log).await;
        let index = files_with(&path, "txnindex").pop().unwrap();
        let removed = log.enforce_retention_with(0, -1, 40 * 1024).await.unwrap();
        assert!(removed > 0);
        assert!(log.log_start_offset() > written.abort_offset);
        assert!(!index.exists(), "the index went with its segment");
        let snapshots = producer_snapshot::list(&path).unwrap();
        assert!(snapshots.iter().all(|&o| o >= log.log_start_offset()));
        log.close().await.unwrap();
    });
}

/// The figure for the docs: recovery after a crash with 200 closed segments, with snapshots
/// and (as a log of the previous version) without. `RECOVERY_FIGURE_SEGMENT_BYTES` sets the
/// segment size (16 KiB by default).
#[test]
#[ignore = "timing figure, run by hand"]
fn recovery_time_with_many_closed_segments() {
    run(|| async {
        let segment_bytes: u64 = std::env::var("RECOVERY_FIGURE_SEGMENT_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16 * 1024);
        let config = crate::storage::LogConfig {
            segment_bytes,
            ..small_config()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let log = PartitionLog::open(path.clone(), config.clone())
            .await
            .unwrap();
        let mut sequence = 0;
        while log.segment_count() < 201 {
            // An aborted transaction and idempotent batches in every segment or so.
            append(
                &log,
                producer_batch(IDEMPOTENT_PRODUCER, sequence, 2, false),
            );
            sequence += 2;
            append(&log, producer_batch(TXN_PRODUCER, 0, 1, true));
            append_marker(&log, TXN_PRODUCER, false);
            let records = (segment_bytes / 8 / 230).clamp(1, 1000) as usize;
            append(&log, batch(records, 200, 1_000));
            log.wait_written(log.log_end_offset(), false).await.unwrap();
        }
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        drop(log);
        let reopen = |label: &'static str| {
            let (path, config) = (path.clone(), config.clone());
            async move {
                let started = std::time::Instant::now();
                let log = PartitionLog::open(path, config).await.unwrap();
                eprintln!(
                    "{label}: reopened {} segments ({} aborted transactions) in {:?}",
                    log.segment_count(),
                    log.recovered_aborted_transactions().len(),
                    started.elapsed()
                );
                drop(log);
            }
        };
        for _ in 0..3 {
            reopen("with snapshots").await;
        }
        // As the previous version left logs: the first open scans every closed segment.
        for file in files_with(&path, "snapshot") {
            std::fs::remove_file(file).unwrap();
        }
        reopen("without snapshots (upgrade scan)").await;
        reopen("after the upgrade scan").await;
    });
}

/// The idempotent producer's batches all sit in closed segments and the active one has just
/// rolled (empty) when the broker crashes: a retry of its last batch is still recognised.
#[test]
fn a_retry_after_a_crash_right_after_a_roll_is_deduplicated() {
    use crate::shard::producer_state::{ProducerStateTable, SequenceCheck};
    run(|| async {
        let (_dir, path, log) = new_log().await;
        let mut last = None;
        for i in 0..4 {
            let bytes = producer_batch(IDEMPOTENT_PRODUCER, i * 3, 3, false);
            last = Some((bytes.clone(), append(&log, bytes).base_offset));
        }
        // The roll leaves the active segment holding one plain batch: nothing of the producer.
        roll(&log, 3).await;
        log.wait_written(log.log_end_offset(), true).await.unwrap();
        drop(log);

        let log = crash_and_reopen(&path).await;
        let mut table = ProducerStateTable::default();
        for header in log.recovered_producer_batches() {
            table.record(&header, header.base_offset);
        }
        let (retried, offset) = last.unwrap();
        let header = validate(&retried, 1 << 20).unwrap();
        assert_eq!(
            table.check(&header),
            Ok(SequenceCheck::Duplicate {
                base_offset: offset
            })
        );
        let next = validate(&producer_batch(IDEMPOTENT_PRODUCER, 12, 1, false), 1 << 20).unwrap();
        assert_eq!(table.check(&next), Ok(SequenceCheck::Append));
        let gap = validate(&producer_batch(IDEMPOTENT_PRODUCER, 20, 1, false), 1 << 20).unwrap();
        assert!(
            table.check(&gap).is_err(),
            "out of order after the restart too"
        );
        log.close().await.unwrap();
    });
}
