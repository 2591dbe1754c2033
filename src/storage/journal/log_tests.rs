//! The journal under a real log: acknowledged before the write, replayed after a death.

use std::time::Duration;

use super::*;
use crate::storage::log::tests::append;
use crate::storage::testutil::{batch, run};
use crate::storage::{LogConfig, PartitionLog, ReadLimit, Records};

fn journaled_config() -> LogConfig {
    LogConfig {
        journal: true,
        ..LogConfig::default()
    }
}

fn memory_bytes(records: Records) -> Vec<u8> {
    match records {
        Records::Memory { chunks, .. } => chunks.iter().flat_map(|c| c.to_vec()).collect(),
        Records::File(_) => panic!("a batch that is not written was read from a file"),
    }
}

/// A batch appended while the device never completes its write is acknowledged (acks=1) and
/// visible to consumers from memory; the process dies; the next open appends it from the
/// journal, written and durable, and the old file can go.
#[test]
fn an_acknowledged_batch_outlives_a_held_write_and_is_replayed_at_open() {
    let data = tempfile::tempdir().unwrap();
    let journal_dir = tempfile::tempdir().unwrap();
    // A name no other test's log uses: recovery's batches are process-wide.
    let log_dir = data.path().join("journal-replay-test-0");
    let sent = batch(5, 100, 1_700_000_000_000);
    let (first_journal, first_log_dir, first_sent) = (
        journal_dir.path().to_path_buf(),
        log_dir.clone(),
        sent.clone(),
    );
    run(move || async move {
        open_on_this_shard(&first_journal, 0, RING_MIN_BYTES).unwrap();
        let log = PartitionLog::open(first_log_dir, journaled_config())
            .await
            .unwrap();
        log.hold_writes.set(true);
        // One batch written before the device stops, so the replay continues a segment.
        append(&log, first_sent.clone());
        log.hold_writes.set(false);
        log.wait_written(5, false).await.unwrap();
        log.hold_writes.set(true);
        let info = append(&log, first_sent.clone());
        // acks=1: answered at once, nothing more written.
        let acked = futures_lite::future::poll_once(log.wait_journaled(info.last_offset + 1)).await;
        assert!(
            matches!(acked, Some(Ok(()))),
            "acks=1 answered from the journal"
        );
        glommio::timer::sleep(Duration::from_millis(50)).await;
        assert_eq!(log.written_offset(), 5);
        assert_eq!(log.high_watermark(), 10);
        // A consumer reads it, from memory.
        let read = log
            .read(5, 1 << 20, true, ReadLimit::HighWatermark)
            .unwrap()
            .expect("visible");
        let read = memory_bytes(read);
        assert_eq!(i64::from_be_bytes(read[0..8].try_into().unwrap()), 5);
        assert_eq!(read[16..], first_sent[16..]);
        // The process dies here: no close; the executor drops the held writer, the thread
        // its journal mapping.
    });
    assert_eq!(recover_previous(journal_dir.path(), 1 << 20).unwrap(), 2);
    run(move || async move {
        let log = PartitionLog::open(log_dir, LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 10);
        assert_eq!(log.durable_offset(), 10, "replayed and synced at open");
        let read = log
            .read(5, 1 << 20, true, ReadLimit::HighWatermark)
            .unwrap()
            .expect("replayed");
        let bytes = crate::storage::log::tests::slice_bytes(&read);
        let header = crate::record_batch::validate(&bytes, 1 << 20).unwrap();
        assert_eq!((header.base_offset, header.record_count), (5, 5));
        assert_eq!(bytes[16..], sent[16..]);
        log.close().await.unwrap();
    });
    finish_recovery();
    assert_eq!(
        std::fs::read_dir(journal_dir.path()).unwrap().count(),
        0,
        "the old journal file is gone"
    );
}

/// Without a journal on the shard (or for a log that does not use one) acks=1 waits for the
/// write, as before.
#[test]
fn without_a_journal_acks_wait_for_the_write() {
    let data = tempfile::tempdir().unwrap();
    let log_dir = data.path().join("journal-less-0");
    run(move || async move {
        let log = PartitionLog::open(log_dir, journaled_config())
            .await
            .unwrap();
        log.hold_writes.set(true);
        let info = append(&log, batch(5, 100, 0));
        let wait = log.wait_journaled(info.last_offset + 1);
        futures::pin_mut!(wait);
        assert!(futures_lite::future::poll_once(&mut wait).await.is_none());
        assert_eq!(log.high_watermark(), 0);
        log.hold_writes.set(false);
        wait.await.unwrap();
        assert_eq!(log.high_watermark(), 5);
        log.close().await.unwrap();
    });
}
