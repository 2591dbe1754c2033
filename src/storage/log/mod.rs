//! [`PartitionLog`]: one topic-partition's log, the API the shard layer calls.
//!
//! This file holds the log's state, opening, appends, waits on written data, the epoch cache
//! API and the lifecycle; [`read`] the fetch path, [`truncate`] follower truncation,
//! [`retention`] segment deletion.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::task::JoinHandle;

use super::clean_close;
use super::epoch_cache::LeaderEpochCache;
use super::journal;
use super::notify::{Mark, Notifier};
use super::producer_snapshot::{self, ProducerTracker};
use super::reaper;
use super::recovery::{self, RecoveredActive};
use super::segment::{self, BatchMeta, DoomedFiles, Segment};
use super::tail_cache::TailCache;
use super::txn_index::TxnIndexEntry;
use super::writer::{QueuedBatch, RecycledFile, StopRequest, Writer, WriterHost};
use super::{AppendInfo, LogConfig, StorageError};
use crate::record_batch::BatchHeader;

pub mod compact;
mod journal_replay;
mod log_start;
mod read;
mod retention;
pub use retention::take_rolls_on_this_shard;
mod truncate;

/// Counters for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// O_DIRECT writes issued (each may carry many batches).
    pub writes: u64,
    /// fdatasync calls issued (group commits, rolls, close).
    pub syncs: u64,
    /// Batch bytes written (excluding rewritten tail pages and padding).
    pub bytes_written: u64,
    /// Bytes that reads asked the kernel to read ahead (`POSIX_FADV_WILLNEED`).
    pub read_ahead_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Open,
    /// A truncation asked the writer to drain and stop; it restarts the writer when done.
    /// Appends are refused meanwhile; reads go on.
    Truncating,
    /// `close` asked the writer to drain, sync and stop.
    Closing,
    /// `delete` asked the writer to drop queued batches and stop.
    Deleting,
    Closed,
}

/// One topic-partition's log.
///
/// Owned by exactly one shard: the glommio executor (core) that the router maps this partition
/// to creates it with [`PartitionLog::open`] and shares it only within that executor, as
/// `Rc<PartitionLog>`; it is `!Send`. State lives in `Cell`/`RefCell`, and no borrow is held
/// across an `.await`, so the shard's tasks and the partition's writer task interleave freely.
///
/// Appends assign offsets synchronously and queue the batch; the partition's writer task
/// ([`super::writer`]) writes queued batches with O_DIRECT, then advances the written offset
/// (and with it the high watermark, as far as its bound allows). Reads look only below the
/// watermark their [`ReadLimit`] names.
#[derive(Debug)]
pub struct PartitionLog {
    /// This log, for the writer tasks it spawns (which hold it only weakly).
    me: Weak<PartitionLog>,
    dir: PathBuf,
    config: LogConfig,
    /// `config.segment_bytes` as changed since the open (a topic's `segment.bytes`): the next
    /// roll uses it.
    segment_bytes: Cell<u64>,
    /// The bound on batch lengths, at least `config.max_batch_bytes`: raised at run time (a
    /// topic's `max.message.bytes`), never lowered, so every batch written stays readable.
    /// Whatever reads batches of this log bounds their lengths with it.
    max_batch_bytes: Cell<usize>,
    /// Sorted by base offset; the last one is the active segment. Never empty while open.
    segments: RefCell<Vec<Rc<Segment>>>,
    log_start_offset: Cell<i64>,
    /// Next offset to assign; includes queued, unwritten batches.
    log_end_offset: Cell<i64>,
    queue: RefCell<VecDeque<QueuedBatch>>,
    queued_bytes: Cell<u64>,
    /// Largest end offset a durable waiter asked for; the writer syncs while it is ahead.
    sync_requested_offset: Cell<i64>,
    lifecycle: Cell<Lifecycle>,
    /// Written offset, durable offset, high watermark, failure state and the waits on them.
    notifier: Rc<Notifier>,
    /// Set while the writer task is parked with nothing to do.
    writer_waker: RefCell<Option<Waker>>,
    writer_task: RefCell<Option<JoinHandle<Result<(), StorageError>>>>,
    /// Producers' last batches and open transactions as of the written offset: fed by the
    /// writer as it writes, saved at each roll (`producer_snapshot`), rebuilt by recovery.
    producer_tracker: RefCell<ProducerTracker>,
    /// Aborted transactions of every segment as the last recovery (open or truncation) found
    /// them, for the partition to rebuild its table from.
    recovered_aborted: RefCell<Vec<TxnIndexEntry>>,
    /// Which leader epoch starts where; persisted in `leader-epoch-checkpoint`.
    epochs: RefCell<LeaderEpochCache>,
    /// The newest batches in memory, up to `config.tail_cache_bytes`: reads of them never
    /// touch the device (appends are O_DIRECT, so the page cache does not have them).
    tail_cache: RefCell<TailCache>,
    stats: Cell<LogStats>,
    /// Deleted segments' files waiting in the directory for new segments to reuse them
    /// ([`segment::RECYCLED_SEGMENT_EXTENSION`]), oldest first. A new segment takes one only
    /// if it starts at or above the offset its old batches end below, so whatever of the old
    /// bytes recovery might read past the new segment's end has offsets below the segment's
    /// base and stops the scan. Every deleted segment nothing still reads comes here: in the
    /// steady state each roll takes the file a retention run gave up, and nothing is unlinked
    /// (unlinking is what stalled writes: [`reaper`]). The files take no more space than the
    /// segments did before the run; one that no roll took within `file_delete_delay_ms` is
    /// handed to the [`reaper`] at the next run.
    recycled_segments: RefCell<VecDeque<RecycledSegment>>,
    /// A roll closed a segment since retention last ran here ([`Self::take_rolled`]).
    rolled: Cell<bool>,
    /// Last append or read: an idle log gives back its memory and descriptors
    /// ([`Self::release_if_idle`]).
    last_used: Cell<Instant>,
    /// Set when [`Self::release_if_idle`] released this log (cleared by the next use).
    released: Cell<bool>,
    /// The writer is asked to close its file and drop its tail page.
    writer_release_requested: Cell<bool>,
    /// The open trusted a clean close's record instead of scanning the active segment.
    opened_after_clean_close: bool,
    /// Log compaction's progress ([`compact`]).
    compaction: compact::CompactionState,
    /// This log's id in the shard's journal when its appends go there (`config.journal` and a
    /// journal on this shard): acks=1 and consumers then wait for the copy, not the write.
    journal_log_id: Option<u64>,
    /// The directory's name: what the journal files this log's batches under.
    dir_name: Rc<str>,
    /// Fault injection: the writer's next write fails.
    #[cfg(test)]
    pub(crate) fail_next_write: Cell<bool>,
    /// Test hook: the writer cuts its writes at every multiple of this many bytes of the file,
    /// as it cuts them where extents start.
    #[cfg(test)]
    pub(crate) cut_writes_every_bytes: Cell<Option<u64>>,
    /// Test hook: the writer waits before its next write while this is set.
    #[cfg(test)]
    pub(crate) hold_writes: Cell<bool>,
}

impl PartitionLog {
    /// Opens (recovering) or creates the log in `dir` and starts its writer task on the
    /// current executor, which becomes the log's owner. The high watermark starts unbounded,
    /// at the written offset.
    pub async fn open(dir: PathBuf, config: LogConfig) -> Result<Rc<PartitionLog>, StorageError> {
        config.validate()?;
        let created = !dir.exists();
        std::fs::create_dir_all(&dir)?;
        if created {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                segment::sync_dir(parent).await?;
            }
        }
        segment::prime_direct_io_probe(&dir).await?;
        // Files left for reuse by the previous run: which offsets they held is not recorded,
        // so they are not reused (see `recycled_segments`).
        let leftovers: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == segment::RECYCLED_SEGMENT_EXTENSION)
            })
            .collect();
        // Unlinked at the shard's pace, like any recycled file nobody took: a restart after a
        // large retention run must not free them all at once either.
        reaper::unlink_later(leftovers);
        let recovered = recovery::recover_log(&dir, &config).await?;
        let active = recovered.active;
        let opened_after_clean_close = active.trusted_clean_close;
        let log_end_offset = active.segment.next_offset();
        // DeleteRecords may have moved the start inside the first segment; a checkpoint from
        // before retention removed older segments says less than the first segment does. A
        // torn tail may leave the end below it: the log then starts (empty) at its end.
        let log_start_offset = log_start::read_checkpoint(&dir)
            .unwrap_or(0)
            .max(recovered.segments[0].base_offset())
            .min(log_end_offset);
        let epochs = LeaderEpochCache::open(
            &dir,
            &recovered.segments,
            &active.epoch_starts,
            (log_start_offset, log_end_offset),
            config.max_batch_bytes,
        )?;
        // Closed segments were fdatasync'd when rolled; the active one is not known to be
        // durable until the first sync.
        let durable_offset = active.segment.base_offset();
        // Debug, not info: a broker with thousands of partitions would log a line for each.
        tracing::debug!(
            dir = %dir.display(),
            log_start_offset,
            log_end_offset,
            segments = recovered.segments.len(),
            latest_epoch = ?epochs.latest_epoch(),
            "opened partition log"
        );
        let config_tail_cache_bytes = config.tail_cache_bytes;
        let journal_log_id = (config.journal && journal::installed()).then(journal::next_log_id);
        let dir_name = dir
            .file_name()
            .map(|n| Rc::from(n.to_string_lossy()))
            .unwrap_or_else(|| Rc::from(""));
        let log = Rc::new_cyclic(|me| PartitionLog {
            me: me.clone(),
            dir,
            segment_bytes: Cell::new(config.segment_bytes),
            max_batch_bytes: Cell::new(config.max_batch_bytes),
            config,
            segments: RefCell::new(recovered.segments),
            log_start_offset: Cell::new(log_start_offset),
            log_end_offset: Cell::new(log_end_offset),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            sync_requested_offset: Cell::new(durable_offset),
            lifecycle: Cell::new(Lifecycle::Open),
            notifier: Notifier::new(log_end_offset, durable_offset),
            writer_waker: RefCell::new(None),
            writer_task: RefCell::new(None),
            producer_tracker: RefCell::new(ProducerTracker::default()),
            recovered_aborted: RefCell::new(Vec::new()),
            epochs: RefCell::new(epochs),
            tail_cache: RefCell::new(TailCache::new(config_tail_cache_bytes)),
            stats: Cell::new(LogStats::default()),
            recycled_segments: RefCell::new(VecDeque::new()),
            rolled: Cell::new(false),
            last_used: Cell::new(Instant::now()),
            released: Cell::new(false),
            writer_release_requested: Cell::new(false),
            opened_after_clean_close,
            compaction: compact::CompactionState::default(),
            journal_log_id,
            dir_name,
            #[cfg(test)]
            fail_next_write: Cell::new(false),
            #[cfg(test)]
            cut_writes_every_bytes: Cell::new(None),
            #[cfg(test)]
            hold_writes: Cell::new(false),
        });
        log.start_writer(active);
        // What the previous run journaled past the segments' end (it died before writing it).
        log.replay_journaled(journal::take_recovered(&log.dir_name))
            .await?;
        Ok(log)
    }

    /// Spawns the writer task on the active segment a recovery scan left behind.
    fn start_writer(&self, active: RecoveredActive) {
        *self.producer_tracker.borrow_mut() = active.producers;
        *self.recovered_aborted.borrow_mut() = active.aborted;
        let writer = Writer::new(
            self.me.clone(),
            active.file,
            active.segment,
            Some(active.tail),
        );
        let task = glommio::spawn_local(writer.run()).detach();
        *self.writer_task.borrow_mut() = Some(task);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.get()
    }

    /// The next offset to be assigned (includes queued, unwritten batches).
    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset.get()
    }

    /// Every offset below it is written to the segment file (what replica fetches read).
    pub fn written_offset(&self) -> i64 {
        self.notifier.get(Mark::Written)
    }

    /// Every offset below it is visible to consumers: the journaled offset (written, or in
    /// the shard's journal) for an unreplicated log, or as far as
    /// [`Self::set_high_watermark_bound`] allows.
    pub fn high_watermark(&self) -> i64 {
        self.notifier.get(Mark::HighWatermark)
    }

    /// Every offset below it is written and fdatasync'd.
    pub fn durable_offset(&self) -> i64 {
        self.notifier.get(Mark::Durable)
    }

    /// Bounds the high watermark. `None` (the default when a log opens): it follows the
    /// journaled offset. `Some(bound)`: it becomes `max(high watermark, min(journaled,
    /// bound))`, now and whenever the journaled offset advances (the leader's ISR minimum, or
    /// on a follower the leader's high watermark). It never moves backwards except by
    /// truncation. Waits on the high watermark wake as it advances.
    pub fn set_high_watermark_bound(&self, bound: Option<i64>) {
        self.notifier.set_high_watermark_bound(bound);
    }

    /// Sets the high watermark to `offset`, clamped to `[log start, journaled]`, even below
    /// its current value: for a log just (re)opened as a replica, whose high watermark starts
    /// at the journaled offset only because that is the unreplicated default, and which
    /// restores the value it had (Kafka's `replication-offset-checkpoint`). Call it before
    /// consumers read the log: lowering it hides data they may have seen.
    pub fn restore_high_watermark(&self, offset: i64) {
        self.notifier
            .reset_high_watermark(offset, self.log_start_offset());
    }

    /// Bytes of written batches in all segments (excluding queued batches).
    pub fn size_bytes(&self) -> u64 {
        self.segments.borrow().iter().map(|s| s.size_bytes()).sum()
    }

    /// Bytes appended but not yet written; the shard may apply backpressure on it.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.get()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.borrow().len()
    }

    /// Whether a roll is still closing the newest closed segment: retention, compaction and
    /// DeleteRecords leave that segment to their next run.
    pub fn roll_closing(&self) -> bool {
        let segments = self.segments.borrow();
        settled_closed_segments(&segments).len() + 1 < segments.len()
    }

    /// Logical sizes of the segments, oldest first.
    pub fn segment_sizes_bytes(&self) -> Vec<u64> {
        self.segments
            .borrow()
            .iter()
            .map(|s| s.size_bytes())
            .collect()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.segments
            .borrow()
            .iter()
            .map(|s| s.base_offset())
            .collect()
    }

    /// Registered `wait_written` / `wait_for_data` waits (pending ones only).
    pub fn pending_waiters(&self) -> usize {
        self.notifier.waiter_count()
    }

    pub fn stats(&self) -> LogStats {
        self.stats.get()
    }

    /// Bytes the tail cache counts against its cap, and its lowest cached offset.
    pub fn tail_cache_usage(&self) -> (usize, Option<i64>) {
        let cache = self.tail_cache.borrow();
        (cache.cost_bytes(), cache.start_offset())
    }

    /// Assigns offsets `[LEO, LEO + record_count)` to one already-validated batch, queues it
    /// for the writer task and wakes it. Synchronous: offsets follow call order.
    ///
    /// `batch` is the producer's bytes untouched; the writer copies them into an aligned DMA
    /// buffer and patches `base_offset` and `partition_leader_epoch` there.
    ///
    /// `leader_epoch` above the latest cached epoch starts a new epoch at this batch (persisted
    /// before the batch is queued); below it, the append is refused with `StaleLeaderEpoch`
    /// (a leader never writes with an epoch older than one already in its log).
    pub fn append(
        &self,
        batch: Bytes,
        header: &BatchHeader,
        leader_epoch: i32,
    ) -> Result<AppendInfo, StorageError> {
        self.check_open()?;
        self.check_batch(&batch, header, false)?;
        let base_offset = self.log_end_offset.get();
        {
            let mut epochs = self.epochs.borrow_mut();
            epochs.before_append()?;
            epochs.assign(leader_epoch, base_offset)?;
        }
        Ok(self.enqueue(batch, header, base_offset, leader_epoch, true))
    }

    /// Appends a batch fetched from the leader as it is: its base offset and partition leader
    /// epoch were assigned by the leader and are kept, so the bytes on disk are the leader's.
    /// The batch must start at the log end offset (`NonMonotonicOffset` otherwise: a gap or
    /// an overlap means the fetch and the log disagree; see [`Self::append_replica_with_gaps`]
    /// for compacted logs) and carry an epoch no older than the
    /// latest cached one (`StaleLeaderEpoch`: diverging data must be truncated first); a newer
    /// epoch is recorded (and persisted) before the batch is queued. Same size and record-count
    /// checks as [`Self::append`]; the caller has validated the CRC and tracks producer state.
    pub fn append_replica(
        &self,
        batch: Bytes,
        header: &BatchHeader,
    ) -> Result<AppendInfo, StorageError> {
        self.append_replica_with_gaps(batch, header, false)
    }

    /// [`Self::append_replica`] for a compacted topic when `compacted`: a batch may start
    /// above the log end offset (the leader's cleaner removed the records between; the log
    /// end moves up to the batch, as Kafka's followers do) and hold fewer records than its
    /// offset range.
    pub fn append_replica_with_gaps(
        &self,
        batch: Bytes,
        header: &BatchHeader,
        compacted: bool,
    ) -> Result<AppendInfo, StorageError> {
        self.check_open()?;
        self.check_batch(&batch, header, compacted)?;
        let head_offset = i64::from_be_bytes(batch[0..8].try_into().expect("8 bytes"));
        let head_epoch = i32::from_be_bytes(batch[12..16].try_into().expect("4 bytes"));
        if (head_offset, head_epoch) != (header.base_offset, header.partition_leader_epoch) {
            return Err(StorageError::InvalidBatch(format!(
                "header says base offset {} epoch {}, the bytes {head_offset} {head_epoch}",
                header.base_offset, header.partition_leader_epoch
            )));
        }
        let expected = self.log_end_offset.get();
        if header.base_offset < expected || (!compacted && header.base_offset != expected) {
            return Err(StorageError::NonMonotonicOffset {
                expected,
                got: header.base_offset,
            });
        }
        let epoch = header.partition_leader_epoch;
        {
            let mut epochs = self.epochs.borrow_mut();
            epochs.before_append()?;
            epochs.assign(epoch, header.base_offset)?;
        }
        self.log_end_offset.set(header.base_offset);
        Ok(self.enqueue(batch, header, header.base_offset, epoch, false))
    }

    /// Length and record-count checks shared by both appends; `compacted_ok` accepts fewer
    /// records than the offset range (a leader's cleaned batch).
    fn check_batch(
        &self,
        batch: &Bytes,
        header: &BatchHeader,
        compacted_ok: bool,
    ) -> Result<(), StorageError> {
        if batch.len() != header.total_len() {
            return Err(StorageError::InvalidBatch(format!(
                "{} bytes but the header says {}",
                batch.len(),
                header.total_len()
            )));
        }
        if batch.len() > self.max_batch_bytes() || batch.len() as u64 > self.segment_bytes() {
            return Err(StorageError::InvalidBatch(format!(
                "{} bytes exceeds max_batch_bytes {} or segment_bytes {}",
                batch.len(),
                self.max_batch_bytes(),
                self.segment_bytes()
            )));
        }
        let count_ok = if compacted_ok {
            header.record_count as i64 <= header.last_offset_delta as i64 + 1
        } else {
            header.last_offset_delta == header.record_count - 1
        };
        if header.record_count <= 0 || !count_ok {
            return Err(StorageError::InvalidBatch(format!(
                "record count {} with last offset delta {}",
                header.record_count, header.last_offset_delta
            )));
        }
        Ok(())
    }

    /// Queues a checked batch at `base_offset` (the log end offset) and wakes the writer;
    /// with `journal` (a leader's append) also copies it into the shard's journal, if this log
    /// uses one, which makes it safe (and visible, as far as the high watermark's bound
    /// allows) before its write. A follower's appends are not journaled: it acknowledges
    /// nothing to clients, and the leader counts only what the follower wrote.
    fn enqueue(
        &self,
        batch: Bytes,
        header: &BatchHeader,
        base_offset: i64,
        leader_epoch: i32,
        journal: bool,
    ) -> AppendInfo {
        assert_eq!(
            base_offset,
            self.log_end_offset.get(),
            "appends start at the log end"
        );
        let last_offset = base_offset + header.last_offset_delta as i64;
        self.log_end_offset.set(last_offset + 1);
        self.mark_used();
        let meta = BatchMeta {
            base_offset,
            last_offset,
            max_timestamp: header.max_timestamp,
            len_bytes: batch.len() as u64,
        };
        // Cached now, in offset order; served only once below the reader's limit. A journaled
        // log shows consumers batches before they are written, and only this cache has them
        // until then: no eviction may drop them.
        let keep_from = if self.journal_log_id.is_some() {
            self.written_offset()
        } else {
            i64::MAX
        };
        self.tail_cache.borrow_mut().push(
            &batch,
            base_offset,
            last_offset,
            leader_epoch,
            keep_from,
        );
        if journal {
            self.journal_batch(&batch, base_offset, last_offset, leader_epoch);
        }
        self.queue.borrow_mut().push_back(QueuedBatch {
            bytes: batch,
            leader_epoch,
            meta,
            producer: header.has_producer_id().then_some(*header),
            // The clock `mark_used` just read.
            queued_at: self.last_used.get(),
        });
        self.queued_bytes
            .set(self.queued_bytes.get() + meta.len_bytes);
        self.wake_writer();
        AppendInfo {
            base_offset,
            last_offset,
            log_append_time_ms: -1,
        }
    }

    /// A broker becoming leader with `epoch` records that the epoch starts at the log end
    /// offset, before it appends anything (as Kafka does), so followers asking for the end of
    /// their older epoch get this offset. No-op if `epoch` is already the latest; refused with
    /// `StaleLeaderEpoch` if it is older.
    pub fn assign_epoch_start(&self, epoch: i32) -> Result<(), StorageError> {
        self.check_open()?;
        self.epochs
            .borrow_mut()
            .assign(epoch, self.log_end_offset())?;
        Ok(())
    }

    /// The newest leader epoch of the log, if any batch or [`Self::assign_epoch_start`]
    /// recorded one.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.borrow().latest_epoch()
    }

    /// Kafka's OffsetForLeaderEpoch answer: the largest cached epoch at or below `epoch` and
    /// where it ends (the start of the next cached epoch, or the log end offset for the latest
    /// epoch). When every cached epoch is above `epoch`, Kafka answers `epoch` itself with the
    /// first cached epoch's start offset. `None` (Kafka's UNDEFINED_EPOCH -1 and offset -1)
    /// for an empty cache, a negative epoch, or an epoch above every cached one. See
    /// [`LeaderEpochCache::end_offset_for`].
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.epochs
            .borrow()
            .end_offset_for(epoch, self.log_end_offset())
    }

    /// The cached `(epoch, start offset)` entries, oldest first; for tests and diagnostics.
    pub fn epoch_entries(&self) -> Vec<super::EpochEntry> {
        self.epochs.borrow().entries().to_vec()
    }

    /// Resolves when every offset `< end_offset` is written (`durable = false`, acks=1) or also
    /// fdatasync'd (`durable = true`, acks=all on an unreplicated log). Durable waits are
    /// group-committed: the writer issues one fdatasync for everything written so far and
    /// releases every wait it covers.
    ///
    /// Fails with `Truncated` if a truncation made after this call removes `end_offset - 1`,
    /// even if other data reaches that offset later. The wait starts when this is called, not
    /// when the future is first polled.
    pub fn wait_written(
        &self,
        end_offset: i64,
        durable: bool,
    ) -> impl Future<Output = Result<(), StorageError>> + 'static {
        let wait = if end_offset > self.log_end_offset() {
            Err(self.out_of_range(end_offset))
        } else {
            let mark = if durable {
                Mark::Durable
            } else {
                Mark::Written
            };
            if durable && self.durable_offset() < end_offset {
                if self.sync_requested_offset.get() < end_offset {
                    self.sync_requested_offset.set(end_offset);
                }
                self.wake_writer();
            }
            Ok(self.notifier.wait(mark, end_offset))
        };
        async move { wait?.await }
    }

    /// Resolves once every offset below `end_offset` is written or in the shard's journal
    /// (safe from the process's death): what acks=1 waits for. Fails like
    /// [`Self::wait_written`].
    pub fn wait_journaled(
        &self,
        end_offset: i64,
    ) -> impl Future<Output = Result<(), StorageError>> + 'static {
        self.wait_mark(Mark::Journaled, end_offset)
    }

    /// Resolves when the high watermark reaches `end_offset` (acks=all on a replicated log),
    /// or fails like [`Self::wait_written`]: out of range, closed, failed, or `Truncated`.
    pub fn wait_for_high_watermark(
        &self,
        end_offset: i64,
    ) -> impl Future<Output = Result<(), StorageError>> + 'static {
        self.wait_mark(Mark::HighWatermark, end_offset)
    }

    /// A wait for `mark` to reach `end_offset`, refused at once past the log end.
    fn wait_mark(
        &self,
        mark: Mark,
        end_offset: i64,
    ) -> impl Future<Output = Result<(), StorageError>> + 'static {
        let wait = if end_offset > self.log_end_offset() {
            Err(self.out_of_range(end_offset))
        } else {
            Ok(self.notifier.wait(mark, end_offset))
        };
        async move { wait?.await }
    }

    /// Headers of the last five batches of each producer as of the written offset, oldest
    /// first (all Kafka's idempotence checks need). At open and after [`Self::truncate_to`]
    /// (when everything is written) the partition rebuilds its producer table from these.
    pub fn recovered_producer_batches(&self) -> Vec<BatchHeader> {
        self.producer_tracker.borrow().producer_batches()
    }

    /// Open transactions as of the written offset: producer id and first offset.
    pub fn recovered_open_transactions(&self) -> Vec<(i64, i64)> {
        let tracker = self.producer_tracker.borrow();
        let mut open: Vec<(i64, i64)> = tracker
            .open_transactions()
            .iter()
            .map(|(&id, &first)| (id, first))
            .collect();
        open.sort_unstable_by_key(|&(id, first)| (first, id));
        open
    }

    /// Aborted transactions of every segment as the last open or truncation found them
    /// (the `.txnindex` files, and the scan of what they do not cover), in marker order.
    pub fn recovered_aborted_transactions(&self) -> Vec<TxnIndexEntry> {
        self.recovered_aborted.borrow().clone()
    }

    /// Records a use (append or read) for [`Self::release_if_idle`].
    pub(crate) fn mark_used(&self) {
        self.last_used.set(Instant::now());
        self.released.set(false);
        // In use again before the writer got to the release: it keeps its file.
        self.writer_release_requested.set(false);
    }

    /// If nothing appended to or read this log for `idle`, gives back what it holds for
    /// speed: the tail cache, the segments' read descriptors, and (through the writer, after
    /// it synced, wrote the index files and cut the padding, as a clean close does) the active
    /// segment's O_DIRECT descriptor and tail page. Readers and the writer open them again when
    /// needed. Returns whether it released anything now.
    pub fn release_if_idle(&self, now: Instant, idle: Duration) -> bool {
        if self.released.get()
            || self.cleaning()
            || now.saturating_duration_since(self.last_used.get()) < idle
            || self.lifecycle.get() != Lifecycle::Open
        {
            return false;
        }
        self.released.set(true);
        self.tail_cache.borrow_mut().clear();
        for segment in self.segments.borrow().iter() {
            segment.release_read_file();
        }
        self.writer_release_requested.set(true);
        self.wake_writer();
        true
    }

    /// Descriptors this log holds open now: segment read descriptors (tests, diagnostics; the
    /// writer's is not counted).
    pub fn open_read_files(&self) -> usize {
        self.segments
            .borrow()
            .iter()
            .filter(|s| s.has_read_file())
            .count()
    }

    /// Drains the queue, fdatasyncs, writes the index files, stops the writer task.
    /// Returns the writer's error if it had failed.
    pub async fn close(&self) -> Result<(), StorageError> {
        if self.lifecycle.get() == Lifecycle::Open {
            self.lifecycle.set(Lifecycle::Closing);
        }
        let result = self.stop_writer().await;
        self.tail_cache.borrow_mut().clear();
        self.lifecycle.set(Lifecycle::Closed);
        self.notifier.close();
        result
    }

    /// Whether this open trusted a clean close's record ([`clean_close`]) instead of scanning
    /// the active segment.
    pub fn opened_after_clean_close(&self) -> bool {
        self.opened_after_clean_close
    }

    /// A broker's clean shutdown: [`Self::close`], a producer-state snapshot at the log end
    /// and the active segment's `.txnindex`, then the clean-close record ([`clean_close`]), so
    /// the next open trusts the active segment instead of scanning it. Nothing is recorded if
    /// the close failed.
    pub async fn close_clean(&self) -> Result<(), StorageError> {
        // A writer that failed makes this an error: nothing is recorded.
        self.close().await?;
        let active = self
            .segments
            .borrow()
            .last()
            .cloned()
            .expect("a log always has an active segment");
        if self.durable_offset() < self.log_end_offset() {
            // Never written since it was opened (a writer that wrote, or was released, synced
            // and wrote the index files): recovery's cut of the torn tail (if any) and the
            // bytes before it are not known to be synced, and the index files on disk are
            // from before (recovery rebuilt the active segment's in memory only); without
            // them the next open would scan the segment anyway.
            std::fs::File::open(active.log_path())?.sync_data()?;
            active.persist_indexes()?;
        }
        self.epochs.borrow_mut().sync()?;
        active.persist_txn_index()?;
        let producers = self.producer_tracker.borrow();
        producer_snapshot::write_unsynced(
            &self.dir,
            active.next_offset(),
            &producers.encode(active.next_offset()),
        )?;
        debug_assert_eq!(
            std::fs::metadata(active.log_path())?.len(),
            active.size_bytes(),
            "a closed active segment has no padding"
        );
        clean_close::CleanClose {
            active_base_offset: active.base_offset(),
            active_size_bytes: active.size_bytes(),
            next_offset: active.next_offset(),
            producer_batches: producers.producer_batches(),
        }
        .write(&self.dir)?;
        Ok(())
    }

    /// Stops the writer (dropping queued batches; their waits fail with `Closed`) and removes
    /// the directory: topic deletion.
    pub async fn delete(&self) -> Result<(), StorageError> {
        if self.lifecycle.get() != Lifecycle::Closed {
            self.lifecycle.set(Lifecycle::Deleting);
        }
        // A topic created again under this name must not get these batches at its next start.
        self.forget_journaled();
        // A failed writer does not prevent deletion.
        let _ = self.stop_writer().await;
        self.lifecycle.set(Lifecycle::Closed);
        self.notifier.close();
        // The last handles close on the blocking thread (nothing is freed yet: the files keep
        // their names). The directory is renamed away at once and its files unlinked at the
        // shard's pace: freeing a whole partition's blocks at once held up every other
        // partition's writes ([`reaper`]).
        let handles: Vec<_> = self
            .segments
            .borrow_mut()
            .drain(..)
            .flat_map(|s| s.doomed().handles)
            .collect();
        glommio::executor()
            .spawn_blocking(move || drop(handles))
            .await;
        reaper::remove_dir_later(self.dir.clone()).await?;
        Ok(())
    }

    async fn stop_writer(&self) -> Result<(), StorageError> {
        self.wake_writer();
        let task = self.writer_task.borrow_mut().take();
        match task {
            // None: the task was cancelled, which this code never does.
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    fn check_open(&self) -> Result<(), StorageError> {
        match self.lifecycle.get() {
            Lifecycle::Open => {}
            Lifecycle::Truncating => return Err(StorageError::Truncating),
            Lifecycle::Closing | Lifecycle::Deleting | Lifecycle::Closed => {
                return Err(StorageError::Closed)
            }
        }
        match self.notifier.status_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn check_readable(&self) -> Result<(), StorageError> {
        match self.lifecycle.get() {
            Lifecycle::Open | Lifecycle::Truncating | Lifecycle::Closing => Ok(()),
            Lifecycle::Deleting | Lifecycle::Closed => Err(StorageError::Closed),
        }
    }

    fn out_of_range(&self, requested: i64) -> StorageError {
        StorageError::OffsetOutOfRange {
            requested,
            log_start: self.log_start_offset(),
            log_end: self.log_end_offset(),
        }
    }

    fn wake_writer(&self) {
        let waker = self.writer_waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl PartitionLog {
    /// Deletes segments the log no longer lists (retention, DeleteRecords) on the blocking
    /// thread: their index files go, their segment files (those nothing still reads) wait for
    /// new segments to reuse them (see `recycled_segments`).
    async fn delete_segments(&self, removed: Vec<Rc<Segment>>) -> Result<(), StorageError> {
        let mut doomed = DoomedFiles::default();
        let mut end_offsets = Vec::with_capacity(removed.len());
        for segment in &removed {
            doomed.extend(segment.doomed());
            doomed.recycle(segment);
            end_offsets.push((
                segment::recycled_path(segment.log_path()),
                segment.next_offset(),
            ));
        }
        // Our last references: the files' final close happens on the blocking thread.
        drop(removed);
        let kept: HashSet<PathBuf> = doomed.delete_off_shard().await?.into_iter().collect();
        let since = Instant::now();
        // Oldest first, so the oldest is reused first.
        self.recycled_segments.borrow_mut().extend(
            end_offsets
                .into_iter()
                .filter(|(path, _)| kept.contains(path))
                .map(|(path, end_offset)| RecycledSegment {
                    path,
                    end_offset,
                    since,
                }),
        );
        // Snapshots below the log start describe deleted batches; the newest stays (recovery
        // starts from it when nothing newer exists).
        let (dir, log_start_offset) = (self.dir.clone(), self.log_start_offset());
        glommio::executor()
            .spawn_blocking(move || {
                let newest = producer_snapshot::list(&dir)?.last().copied();
                producer_snapshot::remove_where(&dir, |o| o < log_start_offset && Some(o) != newest)
            })
            .await?;
        Ok(())
    }
}

/// The closed segments of `segments` (the log's list, the active one last) that are done
/// closing: all of them but the newest while a roll still closes it (`writer::ClosingSegment`,
/// at most one per partition). Retention, DeleteRecords and the cleaner touch only these: the
/// closing task is still writing the newest one's files.
pub(crate) fn settled_closed_segments(segments: &[Rc<Segment>]) -> &[Rc<Segment>] {
    let closed = &segments[..segments.len() - 1];
    let settled = match closed.split_last() {
        Some((newest, older)) if newest.is_closing() => older,
        _ => closed,
    };
    debug_assert!(
        settled.iter().all(|s| !s.is_closing()),
        "only the newest closed segment can still be closing"
    );
    settled
}

/// A deleted segment's file waiting for a new segment to reuse it.
#[derive(Debug)]
struct RecycledSegment {
    path: PathBuf,
    /// The offset the file's old batches end below: only a segment starting here or above
    /// may take it.
    end_offset: i64,
    /// When the log gave the segment up.
    since: Instant,
}

impl PartitionLog {
    /// Hands the recycled files no roll took within `file_delete_delay_ms` to the shard's
    /// [`reaper`]; returns how many. Retention calls it at each run.
    pub fn release_unused_recycled(&self, now: Instant) -> usize {
        let delay = Duration::from_millis(self.config.file_delete_delay_ms);
        let mut unused = Vec::new();
        self.recycled_segments.borrow_mut().retain(|recycled| {
            let keep = now.saturating_duration_since(recycled.since) < delay;
            if !keep {
                unused.push(recycled.path.clone());
            }
            keep
        });
        let count = unused.len();
        reaper::unlink_later(unused);
        count
    }

    /// Recycled files waiting for reuse.
    pub fn recycled_segment_count(&self) -> usize {
        self.recycled_segments.borrow().len()
    }
}

impl PartitionLog {
    /// Takes a running log's new limits (a topic's `segment.bytes` or `max.message.bytes`
    /// changed): the next segment roll uses `segment_bytes`; the bound on batch lengths only
    /// grows (batches written under a higher one must stay readable).
    pub fn set_limits(&self, segment_bytes: u64, max_batch_bytes: usize) {
        if segment_bytes >= crate::storage::PAGE_BYTES && segment_bytes <= i32::MAX as u64 {
            self.segment_bytes.set(segment_bytes);
        }
        if max_batch_bytes <= i32::MAX as usize {
            self.max_batch_bytes
                .set(self.max_batch_bytes.get().max(max_batch_bytes));
        }
    }

    /// The segment size the next roll happens at.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes.get()
    }

    /// The bound on batch lengths: appends above it are refused, reads bound lengths with it.
    pub fn max_batch_bytes(&self) -> usize {
        self.max_batch_bytes.get()
    }
}

/// The writer task's side of the log.
impl WriterHost for PartitionLog {
    fn written(&self, offset: i64) {
        self.notifier.advance(Mark::Written, offset);
        if self.journal_log_id.is_some() {
            // What consumers could read only from the cache is in the files now.
            self.tail_cache.borrow_mut().unpin_below(offset);
            // Room in the shard's journal for batches waiting for it, if any.
            journal::on_written();
        }
    }

    fn segment_bytes(&self) -> u64 {
        PartitionLog::segment_bytes(self)
    }

    fn take_recycled_segment(&self, base_offset: i64) -> Option<RecycledFile> {
        let mut recycled = self.recycled_segments.borrow_mut();
        let index = recycled.iter().position(|r| r.end_offset <= base_offset)?;
        recycled.remove(index).map(|r| RecycledFile {
            path: r.path,
            end_offset: r.end_offset,
        })
    }

    fn segment_closed(&self) {
        self.rolled.set(true);
        retention::note_roll_on_this_shard();
    }

    fn give_back_recycled_segment(&self, file: RecycledFile) {
        // First in line again: it is the oldest the writer could take.
        self.recycled_segments
            .borrow_mut()
            .push_front(RecycledSegment {
                path: file.path,
                end_offset: file.end_offset,
                since: Instant::now(),
            });
    }

    fn config(&self) -> &LogConfig {
        &self.config
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_end_offset(&self) -> i64 {
        self.log_end_offset.get()
    }

    fn stop_request(&self) -> StopRequest {
        match self.lifecycle.get() {
            Lifecycle::Open => StopRequest::None,
            Lifecycle::Truncating => StopRequest::Drain,
            Lifecycle::Closing => StopRequest::Finish,
            Lifecycle::Deleting | Lifecycle::Closed => StopRequest::Discard,
        }
    }

    fn track_written(&self, header: &BatchHeader, batch: &[u8]) -> Option<TxnIndexEntry> {
        self.producer_tracker.borrow_mut().record(header, || {
            crate::record_batch::control::marker_committed(batch)
        })
    }

    fn encode_producer_snapshot(&self, offset: i64) -> Vec<u8> {
        self.producer_tracker.borrow().encode(offset)
    }

    #[cfg(test)]
    fn take_injected_write_failure(&self) -> bool {
        self.fail_next_write.take()
    }

    #[cfg(test)]
    fn injected_cuts_every_bytes(&self) -> Option<u64> {
        self.cut_writes_every_bytes.get()
    }

    #[cfg(test)]
    fn writes_held(&self) -> bool {
        self.hold_writes.get()
            || super::writer::HOLD_WRITES.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn notifier(&self) -> &Rc<Notifier> {
        &self.notifier
    }

    fn has_queued(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    /// Some durable wait is not covered yet and there is written data to cover it with.
    fn sync_needed(&self) -> bool {
        let durable = self.durable_offset();
        self.sync_requested_offset.get() > durable && self.written_offset() > durable
    }

    fn writer_has_work(&self) -> bool {
        self.has_queued()
            || self.sync_needed()
            || self.writer_release_requested.get()
            || self.lifecycle.get() != Lifecycle::Open
    }

    fn release_requested(&self) -> bool {
        self.writer_release_requested.get()
    }

    fn writer_released(&self) {
        self.writer_release_requested.set(false);
    }

    fn sync_epoch_checkpoint(&self) -> Result<(), StorageError> {
        self.epochs.borrow_mut().sync()
    }

    fn park_writer(&self, waker: &Waker) {
        *self.writer_waker.borrow_mut() = Some(waker.clone());
    }

    fn front_batch(&self) -> Option<BatchMeta> {
        self.queue.borrow().front().map(|b| b.meta)
    }

    /// Dequeues the batches of the next write: at least one, then more while they fit in
    /// `max_write_bytes`, in `room_bytes` of the segment, and in its relative offset range.
    fn take_batches(
        &self,
        room_bytes: u64,
        segment_base_offset: i64,
        max_write_bytes: u64,
    ) -> Vec<QueuedBatch> {
        let mut queue = self.queue.borrow_mut();
        let mut taken = Vec::new();
        let mut total_bytes = 0u64;
        while let Some(next) = queue.front() {
            let len = next.meta.len_bytes;
            let fits = total_bytes + len <= max_write_bytes
                && total_bytes + len <= room_bytes
                && next.meta.last_offset - segment_base_offset <= i32::MAX as i64;
            if !taken.is_empty() && !fits {
                break;
            }
            total_bytes += len;
            taken.push(queue.pop_front().expect("front exists"));
        }
        self.queued_bytes.set(self.queued_bytes.get() - total_bytes);
        taken
    }

    fn discard_queue(&self) {
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
        // Failed or deleted: written data stays readable from the files.
        self.tail_cache.borrow_mut().clear();
    }

    /// Puts the log in the failed state: later appends and unsatisfied waits get the error.
    fn fail(&self, error: &StorageError) {
        tracing::error!(dir = %self.dir.display(), %error, "partition log failed");
        let io_error = match error {
            StorageError::Io(e) => std::io::Error::new(e.kind(), e.to_string()),
            other => std::io::Error::other(other.to_string()),
        };
        self.notifier.fail(&io_error);
        self.discard_queue();
    }

    fn push_segment(&self, segment: Rc<Segment>) {
        let mut segments = self.segments.borrow_mut();
        let last = segments.last().expect("never empty while open");
        assert!(
            segment.base_offset() >= last.next_offset(),
            "segments must not overlap"
        );
        segments.push(segment);
    }

    fn count_write(&self, bytes: u64) {
        let mut stats = self.stats.get();
        stats.writes += 1;
        stats.bytes_written += bytes;
        self.stats.set(stats);
    }

    fn count_sync(&self) {
        let mut stats = self.stats.get();
        stats.syncs += 1;
        self.stats.set(stats);
    }
}

impl Drop for PartitionLog {
    /// Dropped without `close`: release the waits and let the writer notice and exit.
    fn drop(&mut self) {
        self.notifier.close();
        if let Some(waker) = self.writer_waker.get_mut().take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
