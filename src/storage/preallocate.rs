//! Allocating the active segment's blocks ahead of its writes.
//!
//! An O_DIRECT write that extends a file (past its size, into blocks not allocated yet) cannot
//! be done without waiting: the file system must allocate blocks and update the inode, so
//! io_uring's non-blocking attempt fails and the write goes to a kernel worker thread instead.
//! Every append to a fresh segment is such a write. Measured (docs/benchmarks.md, "Without
//! retention every segment is a fresh file"): W3 at 716k msgs/s used 1.68-1.83 broker CPU s
//! per GB with fresh files against 1.42-1.49 with reused ones, and its tail latency was worse.
//! A write into blocks already allocated (a reused file, or blocks `fallocate` reserved, which
//! read as zeros until written) within the file's size completes inline.
//!
//! So the writer keeps the file's size a bounded distance ahead of what it has written:
//! once a segment holds [`MIN_WRITTEN_BYTES`], a background `fallocate` (on a duplicate of the
//! writer's descriptor, run by io_uring's workers) extends the file to twice what is written,
//! at most `log.preallocate.ahead.bytes` (default 64 MiB) ahead and never past the segment
//! size. Kafka's `log.preallocate` reserves whole segments; ahead-of-the-writes keeps the cost
//! in disk to at most the active segment's own size, capped, and nothing for a partition that
//! writes little.
//!
//! The reserved tail is zeros on disk until written, so it must never be taken for data:
//! - reads are bounded by the segment's logical size, never the file's;
//! - recovery cuts the active segment at the first invalid batch, which zeros are, and truncates
//!   the file there (`recovery::recover_active`); a closed segment a crash caught before its
//!   roll cut it is cut the same way (`recovery::load_closed_segment`);
//! - a clean close, an idle release and a roll truncate the file to its logical size, after the
//!   fallocate in flight finished ([`Preallocator::settle`]): one finishing after the cut would
//!   extend the file again.

use std::cell::Cell;
use std::io;
use std::rc::Rc;

use glommio::io::DmaFile;
use tracing::warn;

use super::segment::open_file_bytes;
use super::PAGE_BYTES;

/// A segment holding less than this is not preallocated: a partition that writes little costs
/// no extra disk, and its few extending writes cost little.
pub const MIN_WRITTEN_BYTES: u64 = 1 << 20;

/// Preallocation targets are rounded up to this, so steps are few and whole.
const TARGET_ALIGN_BYTES: u64 = 1 << 20;

/// Default for `log.preallocate.ahead.bytes`.
pub const DEFAULT_AHEAD_BYTES: u64 = 64 << 20;

/// The file size to extend the active segment's file to after a write that ended at
/// `written_end`, or `None` if the file is far enough ahead. `known_file_bytes` is the size the
/// writer knows the file has (`None` after it opened the file: the fallocate task reads it).
pub fn preallocation_target(
    written_end: u64,
    known_file_bytes: Option<u64>,
    ahead_max_bytes: u64,
    segment_bytes: u64,
) -> Option<u64> {
    if ahead_max_bytes == 0 || written_end < MIN_WRITTEN_BYTES {
        return None;
    }
    let ahead = written_end.min(ahead_max_bytes);
    let target = (written_end + ahead)
        .next_multiple_of(TARGET_ALIGN_BYTES)
        .min(segment_bytes.next_multiple_of(PAGE_BYTES));
    if target <= written_end {
        return None;
    }
    match known_file_bytes {
        // Extend again once less than half the distance is left: a step is at least half of
        // `ahead`, so a busy partition fallocates about every 32 MiB.
        Some(known) if known >= target || known >= written_end + ahead / 2 => None,
        _ => Some(target),
    }
}

/// The active segment's preallocation state, owned by the partition's writer.
pub(crate) struct Preallocator {
    /// The file's size as last known (writes and finished fallocates raise it); `None` until
    /// the first fallocate after the file was opened reads it.
    file_bytes: Rc<Cell<Option<u64>>>,
    /// Set when a fallocate failed: this writer stops trying (a file system without
    /// `fallocate`, a full disk; the writes themselves still work or report the error).
    failed: Rc<Cell<bool>>,
    /// Whether the last fallocate task is still running (it clears this when it ends).
    in_flight: Rc<Cell<bool>>,
    running: Option<glommio::task::JoinHandle<()>>,
    /// The size of the open file when it was opened, if it is a reused one (a recycled
    /// segment's): see [`Self::reused_file_opened`].
    reused_file_bytes: Option<u64>,
}

impl Preallocator {
    pub(crate) fn new() -> Preallocator {
        Preallocator {
            file_bytes: Rc::new(Cell::new(None)),
            failed: Rc::new(Cell::new(false)),
            in_flight: Rc::new(Cell::new(false)),
            reused_file_bytes: None,
            running: None,
        }
    }

    /// The active file's size as last known (writes and finished fallocates raise it).
    pub(crate) fn known_file_bytes(&self) -> Option<u64> {
        self.file_bytes.get()
    }

    /// The writer opened a file (a new segment, possibly a reused file, or the active one
    /// again): its size is unknown until the next fallocate reads it. Call after
    /// [`Self::settle`].
    pub(crate) fn file_opened(&mut self) {
        assert!(
            !self.in_flight.get(),
            "a fallocate still running on the previous file"
        );
        self.running = None;
        self.reused_file_bytes = None;
        // No task holds the old file's size any more (settled), so the cell is reused.
        self.file_bytes.set(None);
    }

    /// [`Self::file_opened`] for a reused file (a recycled segment's, renamed into place at a
    /// roll) of `file_bytes`: one that holds at least half a segment is never extended. Its
    /// blocks reach its old segment's end, as a rule within a batch of the segment size, so an
    /// extension would cover only its last writes, and the next roll would cut it off again,
    /// which on a file system mounted with `discard` is a discard the device serves between
    /// appends. Writes past the old size (the last one or two) extend the file themselves.
    /// Measured at W3's 760,000 msgs/s: 39.8-42.8 discards and 0.5-1.2 MB a second instead of
    /// 54.2-59.0 and 1.2-2.5, and no more writes handed to io_uring's workers
    /// (`docs/benchmarks.md`, session 30).
    pub(crate) fn reused_file_opened(&mut self, file_bytes: u64) {
        self.file_opened();
        self.file_bytes.set(Some(file_bytes));
        self.reused_file_bytes = Some(file_bytes);
    }

    /// A write to `file` ended at `written_end` (page-aligned, padding included): extends the
    /// file in the background, up to `ahead_max_bytes` ahead (`log.preallocate.ahead.bytes`),
    /// if it is not far enough ahead and no fallocate is running.
    pub(crate) fn after_write(
        &mut self,
        file: &DmaFile,
        written_end: u64,
        segment_bytes: u64,
        ahead_max_bytes: u64,
    ) {
        if let Some(known) = self.file_bytes.get() {
            self.file_bytes.set(Some(known.max(written_end)));
        }
        if self.failed.get() || self.in_flight.get() {
            return;
        }
        if self
            .reused_file_bytes
            .is_some_and(|reused| reused >= segment_bytes / 2)
        {
            return;
        }
        self.running = None;
        let Some(target) = preallocation_target(
            written_end,
            self.file_bytes.get(),
            ahead_max_bytes,
            segment_bytes,
        ) else {
            return;
        };
        // A duplicate descriptor: the task owns it, so it stays valid whatever the writer does
        // with its own meanwhile.
        let dup = match file.dup() {
            Ok(dup) => dup,
            Err(error) => {
                stop_preallocating(&self.failed, &error);
                return;
            }
        };
        let (file_bytes, failed, in_flight) = (
            self.file_bytes.clone(),
            self.failed.clone(),
            self.in_flight.clone(),
        );
        in_flight.set(true);
        let task = async move {
            let result: io::Result<u64> = async {
                // The descriptor's size: a recycled file renamed into place keeps the path it
                // was opened by (`open_file_bytes`).
                let size = open_file_bytes(&dup)?;
                if size < target {
                    dup.pre_allocate(target, false).await?;
                    crate::metrics::DETAIL
                        .segment_preallocated_bytes
                        .fetch_add(target - size, std::sync::atomic::Ordering::Relaxed);
                }
                Ok::<u64, glommio::GlommioError<()>>(size.max(target))
            }
            .await
            .map_err(io::Error::from);
            let _ = dup.close().await;
            match result {
                Ok(size) => file_bytes.set(Some(size.max(file_bytes.get().unwrap_or(0)))),
                Err(error) => stop_preallocating(&failed, &error),
            }
            in_flight.set(false);
        };
        self.running = Some(glommio::spawn_local(task).detach());
    }

    /// Waits for the fallocate in flight, if any: before the file is cut to its logical size
    /// or handed over, so that no fallocate extends it afterwards.
    pub(crate) async fn settle(&mut self) {
        if let Some(task) = self.running.take() {
            // `None` only if the task was cancelled, which nothing does.
            let _ = task.await;
        }
    }
}

fn stop_preallocating(failed: &Cell<bool>, error: &dyn std::fmt::Display) {
    warn!(%error, "preallocating segment blocks failed; this partition's writer stops preallocating");
    failed.set(true);
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::storage::log::tests::{append, consume_all};
    use crate::storage::log::PartitionLog;
    use crate::storage::testutil::{batch, run};
    use crate::storage::LogConfig;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn nothing_below_the_minimum_or_when_disabled() {
        assert_eq!(preallocation_target(MIB - 1, Some(0), 64 * MIB, GIB), None);
        assert_eq!(preallocation_target(10 * MIB, Some(0), 0, GIB), None);
    }

    #[test]
    fn doubles_what_is_written_up_to_the_cap() {
        assert_eq!(
            preallocation_target(MIB, Some(MIB), 64 * MIB, GIB),
            Some(2 * MIB)
        );
        assert_eq!(
            preallocation_target(5 * MIB + 4096, Some(5 * MIB + 4096), 64 * MIB, GIB),
            Some(11 * MIB)
        );
        assert_eq!(
            preallocation_target(500 * MIB, Some(500 * MIB), 64 * MIB, GIB),
            Some(564 * MIB)
        );
    }

    #[test]
    fn waits_until_less_than_half_the_distance_is_left() {
        // 500 MiB written, file at 540 MiB: 40 MiB ahead, more than half of 64.
        assert_eq!(
            preallocation_target(500 * MIB, Some(540 * MIB), 64 * MIB, GIB),
            None
        );
        assert_eq!(
            preallocation_target(500 * MIB, Some(531 * MIB), 64 * MIB, GIB),
            Some(564 * MIB)
        );
    }

    #[test]
    fn never_past_the_segment_size() {
        assert_eq!(
            preallocation_target(1000 * MIB, Some(1000 * MIB), 64 * MIB, GIB),
            Some(GIB)
        );
        assert_eq!(preallocation_target(GIB, Some(GIB), 64 * MIB, GIB), None);
        // A segment size that is not a multiple of the alignment: its last page at most.
        assert_eq!(
            preallocation_target(60 * MIB, Some(60 * MIB), 64 * MIB, 64 * MIB + 100),
            Some(64 * MIB + PAGE_BYTES)
        );
    }

    #[test]
    fn an_unknown_size_always_asks() {
        assert_eq!(
            preallocation_target(500 * MIB, None, 64 * MIB, GIB),
            Some(564 * MIB)
        );
    }

    fn config(ahead_bytes: u64) -> LogConfig {
        LogConfig {
            segment_bytes: 64 * MIB,
            preallocate_ahead_bytes: ahead_bytes,
            tail_cache_bytes: 0,
            ..LogConfig::default()
        }
    }

    fn active_file_bytes(path: &Path) -> u64 {
        segment_file_bytes(path, 0)
    }

    fn segment_file_bytes(path: &Path, base_offset: i64) -> u64 {
        std::fs::metadata(path.join(crate::storage::segment::file_name(base_offset, "log")))
            .unwrap()
            .len()
    }

    /// Appends about 3 MiB in 100 KiB batches, each written before the next.
    async fn write_3_mib(log: &PartitionLog) {
        for i in 0..30 {
            append(log, batch(100, 1000, 1_000 + i));
            log.wait_written(log.log_end_offset(), false).await.unwrap();
        }
        assert!(log.size_bytes() > 2 * MIB + MIB / 2);
    }

    /// Waits (yielding to the fallocate task, bounded) until the file is `bytes` long.
    async fn file_reaches(path: &Path, bytes: u64) {
        segment_file_reaches(path, 0, bytes).await
    }

    /// The same for the segment starting at `base_offset`.
    async fn segment_file_reaches(path: &Path, base_offset: i64, bytes: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while segment_file_bytes(path, base_offset) < bytes {
            assert!(
                Instant::now() < deadline,
                "the file never reached {bytes}: {}",
                segment_file_bytes(path, base_offset)
            );
            glommio::executor().yield_task_queue_now().await;
        }
    }

    #[test]
    fn a_busy_segment_is_allocated_ahead_of_its_writes_and_cut_at_close() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t-0");
            let log = PartitionLog::open(path.clone(), config(4 * MIB))
                .await
                .unwrap();
            write_3_mib(&log).await;
            let written = log.size_bytes();
            // Ahead by at least half of min(written, 4 MiB) (or a fallocate still running from
            // a write 100 KiB earlier reaches further), never more than that, whole MiBs.
            file_reaches(&path, written + MIB).await;
            assert!(active_file_bytes(&path) <= (2 * written).next_multiple_of(MIB));
            let batches = consume_all(&log, 0, 1 << 20);
            assert_eq!(batches.len(), 30, "reads stop at the logical end");
            log.close().await.unwrap();
            assert_eq!(active_file_bytes(&path), written, "close cuts the reserve");
            let log = PartitionLog::open(path.clone(), config(4 * MIB))
                .await
                .unwrap();
            assert_eq!(consume_all(&log, 0, 1 << 20), batches);
            log.close().await.unwrap();
        });
    }

    #[test]
    fn a_crash_leaves_a_reserved_tail_of_zeros_that_recovery_cuts() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t-0");
            let log = PartitionLog::open(path.clone(), config(64 * MIB))
                .await
                .unwrap();
            write_3_mib(&log).await;
            let (written, end) = (log.size_bytes(), log.log_end_offset());
            file_reaches(&path, written + MIB).await;
            let batches = consume_all(&log, 0, 1 << 20);
            drop(log);

            let log = PartitionLog::open(path.clone(), config(64 * MIB))
                .await
                .unwrap();
            assert_eq!(log.log_end_offset(), end);
            assert_eq!(consume_all(&log, 0, 1 << 20), batches);
            assert_eq!(active_file_bytes(&path), written, "recovery cut the zeros");
            // Appends go on from the logical end, over what was reserved.
            append(&log, batch(3, 10, 9_000));
            log.wait_written(log.log_end_offset(), true).await.unwrap();
            let all = consume_all(&log, 0, 1 << 20);
            assert_eq!(all.len(), 31);
            assert_eq!(all[30].base_offset, end);
            log.close().await.unwrap();
        });
    }

    #[test]
    fn nothing_is_reserved_when_turned_off() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t-0");
            let log = PartitionLog::open(path.clone(), config(0)).await.unwrap();
            write_3_mib(&log).await;
            assert_eq!(
                active_file_bytes(&path),
                log.size_bytes().next_multiple_of(PAGE_BYTES),
                "the last write's page, no more"
            );
            log.close().await.unwrap();
        });
    }

    #[test]
    fn rolled_segments_end_at_their_last_batch() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t-0");
            let config = LogConfig {
                segment_bytes: 2 * MIB,
                ..config(64 * MIB)
            };
            let log = PartitionLog::open(path.clone(), config.clone())
                .await
                .unwrap();
            write_3_mib(&log).await;
            log.wait_written(log.log_end_offset(), true).await.unwrap();
            assert_eq!(log.segment_base_offsets().len(), 2);
            let size = log.size_bytes();
            log.close().await.unwrap();
            let files: u64 = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum();
            assert_eq!(files, size, "no reserved bytes left in any segment file");
            let log = PartitionLog::open(path, config).await.unwrap();
            assert_eq!(consume_all(&log, 0, 1 << 20).len(), 30);
            log.close().await.unwrap();
        });
    }

    /// A roll into a recycled file the writer opened ahead of it (under its `.reuse` name, then
    /// renamed) must not end preallocation: the size is asked of the descriptor, not of the
    /// name it was opened by, which no longer exists.
    #[test]
    fn preallocation_goes_on_after_a_roll_into_a_prepared_recycled_file() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t-0");
            let config = LogConfig {
                segment_bytes: 4 * MIB,
                retention_bytes: (4 * MIB) as i64,
                retention_ms: -1,
                ..config(4 * MIB)
            };
            let log = PartitionLog::open(path.clone(), config).await.unwrap();
            let mut i = 0;
            let mut append_until =
                async |log: &PartitionLog, done: &dyn Fn(&PartitionLog) -> bool| {
                    while !done(log) {
                        append(log, batch(100, 1000, 1_000 + i));
                        i += 1;
                        log.wait_written(log.log_end_offset(), false).await.unwrap();
                    }
                };
            append_until(&log, &|log| log.segment_base_offsets().len() >= 3).await;
            assert!(log.enforce_retention(i64::MAX).await.unwrap() >= 1);
            // The writer takes the recycled files (the last one ahead of a roll, while the
            // active segment fills), rolls into them, then into a fresh file.
            append_until(&log, &|log| log.recycled_segment_count() == 0).await;
            let taken_at = *log.segment_base_offsets().last().unwrap();
            append_until(&log, &|log| {
                *log.segment_base_offsets().last().unwrap() != taken_at
            })
            .await;
            let prepared = *log.segment_base_offsets().last().unwrap();
            append_until(&log, &|log| {
                *log.segment_base_offsets().last().unwrap() != prepared
            })
            .await;
            let fresh = *log.segment_base_offsets().last().unwrap();
            // About 1.5 MiB into the fresh segment: past the minimum, so it is allocated ahead.
            let fresh_start = log.size_bytes();
            append_until(&log, &|log| log.size_bytes() >= fresh_start + 3 * MIB / 2).await;
            segment_file_reaches(&path, fresh, 2 * MIB + MIB / 2).await;
            log.close().await.unwrap();
        });
    }

    /// A reused file holding half a segment or more is not extended (the next roll would cut
    /// the extension off again); a fresh file, or a small reused one, is.
    #[test]
    fn a_reused_file_of_half_a_segment_or_more_is_not_extended() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("segment");
            let (written_end, segment_bytes) = (3 * MIB, 4 * MIB);
            // (the reused file's size when it was opened, whether it is extended)
            for (reused_bytes, extended) in [
                (Some(3 * MIB + MIB / 2), false),
                (Some(2 * MIB), false),
                (Some(MIB), true),
                (None, true),
            ] {
                let on_disk = reused_bytes.unwrap_or(0).max(written_end);
                std::fs::write(&path, vec![0u8; on_disk as usize]).unwrap();
                let file = glommio::io::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .dma_open(&path)
                    .await
                    .unwrap();
                let mut preallocator = Preallocator::new();
                match reused_bytes {
                    Some(bytes) => preallocator.reused_file_opened(bytes),
                    None => preallocator.file_opened(),
                }
                preallocator.after_write(&file, written_end, segment_bytes, 4 * MIB);
                preallocator.settle().await;
                let size = std::fs::metadata(&path).unwrap().len();
                assert_eq!(size == segment_bytes, extended, "{reused_bytes:?}: {size}");
                file.close().await.unwrap();
            }
        });
    }
}
