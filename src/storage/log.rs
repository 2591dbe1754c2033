//! [`PartitionLog`]: one topic-partition's log, the API the shard layer calls.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::task::Waker;

use bytes::Bytes;
use glommio::task::JoinHandle;
use tracing::{info, warn};

use super::epoch_cache::LeaderEpochCache;
use super::notify::{Mark, Notifier};
use super::recovery::{self, RecoveredActive};
use super::retention::{self, SegmentSummary};
use super::segment::{self, BatchMeta, Segment};
use super::tail_cache::TailCache;
use super::timestamp;
use super::writer::Writer;
use super::{AppendInfo, LogConfig, ReadLimit, ReadSlice, Records, StorageError};
use crate::protocol::record_batch::BatchHeader;

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
pub(crate) enum Lifecycle {
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

/// A batch whose offsets are assigned but which the writer has not written yet.
#[derive(Debug)]
pub(crate) struct QueuedBatch {
    /// The producer's (or the leader's) bytes, untouched; the writer stamps `meta.base_offset`
    /// and `leader_epoch` into its copy in the DMA buffer. For a replica batch both are the
    /// batch's own values, so the bytes on disk are the leader's exactly.
    pub bytes: Bytes,
    pub leader_epoch: i32,
    pub meta: BatchMeta,
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
    /// What the last scan of the active segment saw of each producer (see
    /// [`Self::recovered_producer_batches`]).
    producer_batches: RefCell<Vec<BatchHeader>>,
    /// Which leader epoch starts where; persisted in `leader-epoch-checkpoint`.
    epochs: RefCell<LeaderEpochCache>,
    /// The newest batches in memory, up to `config.tail_cache_bytes`: reads of them never
    /// touch the device (appends are O_DIRECT, so the page cache does not have them).
    tail_cache: RefCell<TailCache>,
    stats: Cell<LogStats>,
    /// Fault injection: the writer's next write fails.
    #[cfg(test)]
    pub(crate) fail_next_write: Cell<bool>,
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
        let recovered = recovery::recover_log(&dir, &config).await?;
        let active = recovered.active;
        let log_start_offset = recovered.segments[0].base_offset();
        let log_end_offset = active.segment.next_offset();
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
        let log = Rc::new_cyclic(|me| PartitionLog {
            me: me.clone(),
            dir,
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
            producer_batches: RefCell::new(Vec::new()),
            epochs: RefCell::new(epochs),
            tail_cache: RefCell::new(TailCache::new(config_tail_cache_bytes)),
            stats: Cell::new(LogStats::default()),
            #[cfg(test)]
            fail_next_write: Cell::new(false),
        });
        log.start_writer(active);
        Ok(log)
    }

    /// Spawns the writer task on the active segment a recovery scan left behind.
    fn start_writer(&self, active: RecoveredActive) {
        *self.producer_batches.borrow_mut() = active.producer_batches;
        let writer = Writer::new(self.me.clone(), active.file, active.segment, active.tail);
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

    /// Every offset below it is visible to consumers: the written offset for an unreplicated
    /// log, or as far as [`Self::set_high_watermark_bound`] allows.
    pub fn high_watermark(&self) -> i64 {
        self.notifier.get(Mark::HighWatermark)
    }

    /// Every offset below it is written and fdatasync'd.
    pub fn durable_offset(&self) -> i64 {
        self.notifier.get(Mark::Durable)
    }

    /// Bounds the high watermark. `None` (the default when a log opens): it follows the
    /// written offset. `Some(bound)`: it becomes `max(high watermark, min(written, bound))`,
    /// now and whenever the written offset advances (the leader's ISR minimum, or on a follower
    /// the leader's high watermark). It never moves backwards except by truncation. Waits on
    /// the high watermark wake as it advances.
    pub fn set_high_watermark_bound(&self, bound: Option<i64>) {
        self.notifier.set_high_watermark_bound(bound);
    }

    /// Sets the high watermark to `offset`, clamped to `[log start, written]`, even below its
    /// current value: for a log just (re)opened as a replica, whose high watermark starts at
    /// the written offset only because that is the unreplicated default, and which restores
    /// the value it had (Kafka's `replication-offset-checkpoint`). Call it before consumers
    /// read the log: lowering it hides data they may have seen.
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
        self.check_batch(&batch, header)?;
        let base_offset = self.log_end_offset.get();
        self.epochs.borrow_mut().assign(leader_epoch, base_offset)?;
        Ok(self.enqueue(batch, header, base_offset, leader_epoch))
    }

    /// Appends a batch fetched from the leader as it is: its base offset and partition leader
    /// epoch were assigned by the leader and are kept, so the bytes on disk are the leader's.
    /// The batch must start at the log end offset (`NonMonotonicOffset` otherwise: a gap or an
    /// overlap means the fetch and the log disagree) and carry an epoch no older than the
    /// latest cached one (`StaleLeaderEpoch`: diverging data must be truncated first); a newer
    /// epoch is recorded (and persisted) before the batch is queued. Same size and record-count
    /// checks as [`Self::append`]; the caller has validated the CRC and tracks producer state.
    pub fn append_replica(
        &self,
        batch: Bytes,
        header: &BatchHeader,
    ) -> Result<AppendInfo, StorageError> {
        self.check_open()?;
        self.check_batch(&batch, header)?;
        let head_offset = i64::from_be_bytes(batch[0..8].try_into().expect("8 bytes"));
        let head_epoch = i32::from_be_bytes(batch[12..16].try_into().expect("4 bytes"));
        if (head_offset, head_epoch) != (header.base_offset, header.partition_leader_epoch) {
            return Err(StorageError::InvalidBatch(format!(
                "header says base offset {} epoch {}, the bytes {head_offset} {head_epoch}",
                header.base_offset, header.partition_leader_epoch
            )));
        }
        let expected = self.log_end_offset.get();
        if header.base_offset != expected {
            return Err(StorageError::NonMonotonicOffset {
                expected,
                got: header.base_offset,
            });
        }
        let epoch = header.partition_leader_epoch;
        self.epochs.borrow_mut().assign(epoch, expected)?;
        Ok(self.enqueue(batch, header, expected, epoch))
    }

    /// Length and record-count checks shared by both appends.
    fn check_batch(&self, batch: &Bytes, header: &BatchHeader) -> Result<(), StorageError> {
        if batch.len() != header.total_len() {
            return Err(StorageError::InvalidBatch(format!(
                "{} bytes but the header says {}",
                batch.len(),
                header.total_len()
            )));
        }
        if batch.len() > self.config.max_batch_bytes
            || batch.len() as u64 > self.config.segment_bytes
        {
            return Err(StorageError::InvalidBatch(format!(
                "{} bytes exceeds max_batch_bytes {} or segment_bytes {}",
                batch.len(),
                self.config.max_batch_bytes,
                self.config.segment_bytes
            )));
        }
        if header.record_count <= 0 || header.last_offset_delta != header.record_count - 1 {
            return Err(StorageError::InvalidBatch(format!(
                "record count {} with last offset delta {}",
                header.record_count, header.last_offset_delta
            )));
        }
        Ok(())
    }

    /// Queues a checked batch at `base_offset` (the log end offset) and wakes the writer.
    fn enqueue(
        &self,
        batch: Bytes,
        header: &BatchHeader,
        base_offset: i64,
        leader_epoch: i32,
    ) -> AppendInfo {
        assert_eq!(
            base_offset,
            self.log_end_offset.get(),
            "appends start at the log end"
        );
        let last_offset = base_offset + header.last_offset_delta as i64;
        self.log_end_offset.set(last_offset + 1);
        let meta = BatchMeta {
            base_offset,
            last_offset,
            max_timestamp: header.max_timestamp,
            len_bytes: batch.len() as u64,
        };
        // Cached now, in offset order; served only once below the reader's limit.
        self.tail_cache
            .borrow_mut()
            .push(&batch, base_offset, last_offset, leader_epoch);
        self.queue.borrow_mut().push_back(QueuedBatch {
            bytes: batch,
            leader_epoch,
            meta,
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

    /// Resolves when the high watermark reaches `end_offset` (acks=all on a replicated log),
    /// or fails like [`Self::wait_written`]: out of range, closed, failed, or `Truncated`.
    pub fn wait_for_high_watermark(
        &self,
        end_offset: i64,
    ) -> impl Future<Output = Result<(), StorageError>> + 'static {
        let wait = if end_offset > self.log_end_offset() {
            Err(self.out_of_range(end_offset))
        } else {
            Ok(self.notifier.wait(Mark::HighWatermark, end_offset))
        };
        async move { wait?.await }
    }

    /// Returns the batches from the one holding `offset`, up to `max_bytes`, only batches
    /// wholly below `limit` (the high watermark for consumers, the written offset for replica
    /// fetches). With `min_one_batch` a first batch larger than `max_bytes` is returned whole
    /// (KIP-74).
    ///
    /// From the tail cache when it holds `offset` (whole batches, as memory chunks), else as a
    /// byte range of one segment file (never across a segment end; the last batch may be cut).
    ///
    /// `offset` at or above the limit (but not above LEO), or `max_bytes == 0` without
    /// `min_one_batch`: `Ok(None)`. Below log start or above LEO: `OffsetOutOfRange`.
    ///
    /// Where the kernel's own read-ahead is small, also asks it to start reading the range and
    /// up to 16 MiB past it ([`Segment::hint_read_ahead`]), once per byte per consumer.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
        limit: ReadLimit,
    ) -> Result<Option<Records>, StorageError> {
        self.check_readable()?;
        if offset < self.log_start_offset() || offset > self.log_end_offset() {
            return Err(self.out_of_range(offset));
        }
        let limit_offset = self.limit_offset(limit);
        if offset >= limit_offset || (max_bytes == 0 && !min_one_batch) {
            return Ok(None);
        }
        let cached = self
            .tail_cache
            .borrow()
            .read(offset, max_bytes, min_one_batch, limit_offset);
        if let Some(read) = cached {
            return Ok(Some(Records::Memory {
                chunks: read.chunks,
                len: read.len,
            }));
        }
        Ok(self
            .read_file(offset, max_bytes, min_one_batch, limit_offset)?
            .map(Records::File))
    }

    fn limit_offset(&self, limit: ReadLimit) -> i64 {
        match limit {
            ReadLimit::HighWatermark => self.high_watermark(),
            ReadLimit::Written => self.written_offset(),
        }
    }

    /// [`Self::read`] from the segment files only.
    fn read_file(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
        limit_offset: i64,
    ) -> Result<Option<ReadSlice>, StorageError> {
        let segments = self.segments.borrow();
        let Some(mut i) = segments
            .partition_point(|s| s.base_offset() <= offset)
            .checked_sub(1)
        else {
            return Err(self.out_of_range(offset));
        };
        let max_batch_bytes = self.config.max_batch_bytes;
        let mut target = offset;
        while let Some(segment) = segments.get(i) {
            if target >= limit_offset {
                return Ok(None);
            }
            if target < segment.next_offset() {
                let end_bytes = segment.size_bytes();
                let Some((position, header)) =
                    segment.find_batch(target, end_bytes, max_batch_bytes)?
                else {
                    return Err(segment.corrupt(
                        end_bytes,
                        &format!("offset {target} not found below the end"),
                    ));
                };
                if header.last_offset() >= limit_offset {
                    return Ok(None); // the limit falls inside this batch
                }
                let mut len_bytes = (max_bytes as u64).min(end_bytes - position);
                if min_one_batch {
                    len_bytes = len_bytes.max(header.total_len() as u64);
                }
                if limit_offset < segment.next_offset() {
                    // The limit is inside this segment (a high watermark behind the written
                    // offset, or a truncation in progress): stop before the first batch that
                    // reaches it. Walks the headers of the range about to be sent anyway.
                    let stop = position + len_bytes;
                    let below_limit = segment
                        .scan_headers(position, end_bytes, max_batch_bytes, |p, h| {
                            if p >= stop || h.last_offset() >= limit_offset {
                                ControlFlow::Break(p)
                            } else {
                                ControlFlow::Continue(())
                            }
                        })?
                        .unwrap_or(end_bytes);
                    len_bytes = len_bytes.min(below_limit - position);
                }
                let hinted = segment.hint_read_ahead(position, len_bytes);
                if hinted > 0 {
                    let mut stats = self.stats.get();
                    stats.read_ahead_bytes += hinted;
                    self.stats.set(stats);
                }
                return Ok(Some(ReadSlice {
                    file: segment.read_file().clone(),
                    position,
                    len: len_bytes as usize,
                }));
            }
            // `target` falls in a gap after this segment's batches: serve the next segment.
            i += 1;
            if let Some(next) = segments.get(i) {
                target = next.base_offset();
            }
        }
        Ok(None)
    }

    /// ListOffsets by timestamp: the first offset whose record timestamp is `>= timestamp`,
    /// with that timestamp; `None` if there is none below the high watermark (Kafka answers
    /// only with fetchable offsets). Exact per record in uncompressed CreateTime batches;
    /// otherwise the batch's base offset and max timestamp.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>, StorageError> {
        self.check_readable()?;
        let high_watermark = self.high_watermark();
        let found = self.search_timestamp(timestamp)?;
        Ok(found.filter(|&(offset, _)| offset < high_watermark))
    }

    fn search_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let segments = self.segments.borrow();
        for segment in segments.iter().filter(|s| s.max_timestamp() >= timestamp) {
            let start = segment.lookup_timestamp_position(timestamp);
            let found = segment.scan_headers(
                start,
                segment.size_bytes(),
                self.config.max_batch_bytes,
                |p, h| {
                    if h.max_timestamp >= timestamp {
                        ControlFlow::Break((p, *h))
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            )?;
            let Some((position, header)) = found else {
                continue;
            };
            if header.compression() == 0 && !header.is_log_append_time() {
                let bytes = segment.read_batch(position, &header)?;
                if let Some(hit) = timestamp::first_record_at_or_after(&bytes, &header, timestamp) {
                    return Ok(Some(hit));
                }
            }
            return Ok(Some((header.base_offset, header.max_timestamp)));
        }
        Ok(None)
    }

    /// Resolves once the `limit` watermark passes `offset` (the high watermark for consumers,
    /// the written offset for replica fetches), or when the log fails or closes, or a
    /// truncation removes `offset`. Cancel-safe: dropping the future removes its registration,
    /// so repeated long polls leak nothing.
    pub fn wait_for_data(
        &self,
        offset: i64,
        limit: ReadLimit,
    ) -> impl Future<Output = ()> + 'static {
        let mark = match limit {
            ReadLimit::HighWatermark => Mark::HighWatermark,
            ReadLimit::Written => Mark::Written,
        };
        let wait = self.notifier.wait(mark, offset.saturating_add(1));
        async move {
            // A failure, close or truncation also ends the wait; the caller's next read
            // reports it.
            let _ = wait.await;
        }
    }

    /// Deletes whole closed segments (never the active one, never one reaching past the high
    /// watermark) whose largest timestamp is older than `now_ms - retention_ms`, or oldest
    /// first while the log stays at or above `retention_bytes` without them (Kafka's rule);
    /// advances the log start offset and moves the leader epoch cache's start with it.
    /// Returns the number of segments deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        self.check_readable()?;
        if self.lifecycle.get() == Lifecycle::Truncating {
            return Ok(0); // the segment list is being rewritten; the next run catches up
        }
        let high_watermark = self.high_watermark();
        let removed: Vec<Rc<Segment>> = {
            let mut segments = self.segments.borrow_mut();
            let closed = &segments[..segments.len() - 1];
            // Kafka deletes only segments wholly below the high watermark: a follower may
            // still need what consumers cannot see yet.
            let below_high_watermark = closed
                .iter()
                .take_while(|s| s.next_offset() <= high_watermark)
                .count();
            let summaries: Vec<SegmentSummary> = closed[..below_high_watermark]
                .iter()
                .map(|s| SegmentSummary {
                    retention_timestamp_ms: s.retention_timestamp(),
                    size_bytes: s.size_bytes(),
                })
                .collect();
            let total_bytes = segments.iter().map(|s| s.size_bytes()).sum();
            let count = retention::deletable_prefix(&summaries, total_bytes, &self.config, now_ms);
            segments.drain(..count).collect()
        };
        if removed.is_empty() {
            return Ok(0);
        }
        let log_start_offset = self.segments.borrow()[0].base_offset();
        assert!(
            log_start_offset <= self.high_watermark(),
            "retention deleted data above the high watermark"
        );
        self.log_start_offset.set(log_start_offset);
        self.tail_cache.borrow_mut().evict_below(log_start_offset);
        for segment in &removed {
            info!(segment = %segment.log_path().display(), log_start_offset, "retention deleted segment");
            segment.delete_files()?;
        }
        // After the files: a crash in between leaves entries below the log start, which
        // opening moves up to it.
        let mut epochs = self.epochs.borrow_mut();
        if epochs.truncate_from_start(log_start_offset) {
            epochs.persist()?;
        }
        Ok(removed.len())
    }

    /// Headers of batches with a producer id seen by the last scan of the active segment
    /// (on open, or of the segment a truncation cut), oldest first: the last five per producer
    /// (all Kafka's idempotence checks need). After [`Self::truncate_to`] the caller rebuilds
    /// its producer state from these.
    pub fn recovered_producer_batches(&self) -> Vec<BatchHeader> {
        self.producer_batches.borrow().clone()
    }

    /// Removes every batch at or above `offset` (a follower's divergent suffix); if `offset`
    /// falls inside a batch the whole batch goes. Returns the new log end offset. In place:
    /// the `Rc<PartitionLog>` stays valid.
    ///
    /// The writer drains its queue and stops; later segments are deleted (newest first, so a
    /// crash leaves a prefix), the segment holding the cut is cut and rescanned like an active
    /// segment on open (indexes, producer batches, tail page) and becomes the active segment;
    /// the epoch cache drops the epochs starting at or after the cut. LEO, written and durable
    /// become the new end, the high watermark `min(high watermark, new end)` (below it is
    /// allowed, as for Kafka followers, and logged at warn). Every wait above the cut fails
    /// with `Truncated`. Appends are refused with `Truncating` meanwhile.
    ///
    /// `offset` at or above LEO: nothing to do. Below the log start: as
    /// [`Self::truncate_fully_and_start_at`] (Kafka does the same).
    pub async fn truncate_to(&self, offset: i64) -> Result<i64, StorageError> {
        self.check_open()?;
        if offset < 0 {
            return Err(self.out_of_range(offset));
        }
        if offset >= self.log_end_offset() {
            return Ok(self.log_end_offset());
        }
        if offset < self.log_start_offset() {
            self.truncate_fully_and_start_at(offset).await?;
            return Ok(offset);
        }
        self.suspend_writer().await?;
        let cut = self.cut_suffix(offset).await;
        self.resume_writer(cut)
    }

    /// Deletes every segment and restarts the log empty at `offset`: log start, LEO, written,
    /// durable and high watermark all become `offset` (a follower whose log ends below the
    /// leader's log start). The epoch cache is cleared; every pending wait fails with
    /// `Truncated`.
    pub async fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), StorageError> {
        self.check_open()?;
        if offset < 0 {
            return Err(self.out_of_range(offset));
        }
        self.suspend_writer().await?;
        let restarted = self.restart_at(offset).await;
        self.resume_writer(restarted).map(|_| ())
    }

    /// Stops the writer after it wrote everything queued; appends are refused until
    /// [`Self::resume_writer`].
    async fn suspend_writer(&self) -> Result<(), StorageError> {
        self.lifecycle.set(Lifecycle::Truncating);
        if let Err(e) = self.stop_writer().await {
            // The writer failed (the log is in the failed state): nothing to truncate.
            self.lifecycle.set(Lifecycle::Open);
            return Err(e);
        }
        assert!(!self.has_queued(), "the writer drains before stopping");
        assert_eq!(
            self.written_offset(),
            self.log_end_offset(),
            "everything queued is written"
        );
        Ok(())
    }

    /// Restarts the writer on the active segment a truncation left, or puts the log in the
    /// failed state if the truncation failed (its files are then in an unknown state).
    fn resume_writer(
        &self,
        truncated: Result<RecoveredActive, StorageError>,
    ) -> Result<i64, StorageError> {
        if self.lifecycle.get() != Lifecycle::Truncating {
            // Closed or deleted meanwhile: the file handle closes on drop.
            return Err(StorageError::Closed);
        }
        self.lifecycle.set(Lifecycle::Open);
        match truncated {
            Ok(active) => {
                self.start_writer(active);
                Ok(self.log_end_offset())
            }
            Err(error) => {
                self.fail(&error);
                Err(error)
            }
        }
    }

    /// The marks and memory side of a truncation, done before any file changes so that reads
    /// never see past the cut: LEO, written and durable to `new_end`, the high watermark to at
    /// most `new_end`, waits above `floor` failed, the tail cache cut.
    fn lower_marks(&self, floor: i64, new_end: i64) {
        let high_watermark = self.high_watermark();
        self.log_end_offset.set(new_end);
        let durable = self.durable_offset().min(floor).min(new_end);
        self.notifier
            .truncate(floor, new_end, durable, high_watermark.min(new_end));
        self.sync_requested_offset
            .set(self.sync_requested_offset.get().min(durable));
        self.tail_cache.borrow_mut().truncate_from(floor);
    }

    /// [`Self::truncate_to`] with the writer stopped: returns the cut segment, rescanned, as
    /// the new active segment.
    async fn cut_suffix(&self, offset: i64) -> Result<RecoveredActive, StorageError> {
        let (index, cut_position, new_end) = {
            let segments = self.segments.borrow();
            let index = segments
                .partition_point(|s| s.base_offset() <= offset)
                .checked_sub(1)
                .expect("offset >= log start, so a segment starts at or below it");
            let segment = &segments[index];
            match segment.find_batch(offset, segment.size_bytes(), self.config.max_batch_bytes)? {
                Some((position, header)) => (index, position, header.base_offset),
                None => (index, segment.size_bytes(), segment.next_offset()),
            }
        };
        assert!(new_end <= offset && new_end >= self.log_start_offset());
        let high_watermark = self.high_watermark();
        if new_end < high_watermark {
            // Allowed (Kafka followers may), but consumers may have seen what goes.
            warn!(
                dir = %self.dir.display(),
                high_watermark,
                new_end,
                "truncating below the high watermark"
            );
        }
        info!(
            dir = %self.dir.display(),
            requested = offset,
            new_end,
            log_end = self.log_end_offset(),
            "truncating the log"
        );
        self.lower_marks(new_end, new_end);

        let (cut, later): (Rc<Segment>, Vec<Rc<Segment>>) = {
            let segments = self.segments.borrow();
            (segments[index].clone(), segments[index + 1..].to_vec())
        };
        for segment in later.iter().rev() {
            segment.delete_files()?;
        }
        // Rescanned up to the cut before the file is cut: until the new segment replaces the
        // old one, reads through the old one may still look at the header at the cut.
        let active = recovery::recover_active_segment(
            &self.dir,
            cut.base_offset(),
            &self.config,
            Some(cut_position),
        )
        .await?;
        if active.segment.size_bytes() != cut_position || active.segment.next_offset() != new_end {
            return Err(cut.corrupt(
                active.segment.size_bytes(),
                &format!(
                    "batches below the cut at {cut_position} (offset {new_end}) do not validate"
                ),
            ));
        }
        {
            let mut segments = self.segments.borrow_mut();
            segments.truncate(index);
            segments.push(active.segment.clone());
        }
        active.file.truncate(cut_position).await?;
        active.file.fdatasync().await?;
        self.count_sync();
        // The cut segment is active now: its index files are rebuilt by scans and written
        // when it closes; empty ones keep the directory looking like Kafka's meanwhile.
        std::fs::File::create(active.segment.index_path())?;
        std::fs::File::create(active.segment.time_index_path())?;
        segment::sync_dir(&self.dir).await?;
        self.notifier.advance(Mark::Durable, new_end);
        // After the cut is durable: a crash before this leaves entries at or past the log end,
        // which opening drops.
        {
            let mut epochs = self.epochs.borrow_mut();
            if epochs.truncate_from_end(new_end) {
                epochs.persist()?;
            }
        }
        Ok(active)
    }

    /// [`Self::truncate_fully_and_start_at`] with the writer stopped: returns the new, empty
    /// active segment.
    async fn restart_at(&self, offset: i64) -> Result<RecoveredActive, StorageError> {
        info!(
            dir = %self.dir.display(),
            offset,
            log_start = self.log_start_offset(),
            log_end = self.log_end_offset(),
            "truncating the whole log and restarting it"
        );
        // Every wait fails: below `offset` nothing is left either.
        let floor = self.log_start_offset().min(offset);
        self.lower_marks(floor, floor);
        self.tail_cache.borrow_mut().clear();
        self.producer_batches.borrow_mut().clear();
        // Cleared before the segments go: a crash in between leaves an empty checkpoint beside
        // segments, which opening treats as missing and rebuilds.
        self.epochs.borrow_mut().replace(Vec::new())?;

        let old = self.segments.borrow().clone();
        // Newest first, everything that reaches `offset`, so a crash leaves a prefix that the
        // new segment can follow without overlapping it.
        let (kept, reaching): (Vec<_>, Vec<_>) = old
            .iter()
            .partition(|s| s.base_offset() < offset && s.next_offset() <= offset);
        for segment in reaching.iter().rev() {
            segment.delete_files()?;
        }
        let (segment, file) = Segment::create(&self.dir, offset).await?;
        let segment = Rc::new(segment);
        // Then the rest, oldest first: a crash leaves a log whose start moved forward, as
        // retention would.
        for segment in &kept {
            segment.delete_files()?;
        }
        segment::sync_dir(&self.dir).await?;
        *self.segments.borrow_mut() = vec![segment.clone()];
        self.log_start_offset.set(offset);
        self.log_end_offset.set(offset);
        // Everything below `offset` is gone, so every mark may sit at it.
        self.notifier.truncate(floor, offset, offset, offset);
        Ok(RecoveredActive {
            segment,
            file,
            tail: Vec::new(),
            producer_batches: Vec::new(),
            epoch_starts: Vec::new(),
        })
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

    /// Stops the writer (dropping queued batches; their waits fail with `Closed`) and removes
    /// the directory: topic deletion.
    pub async fn delete(&self) -> Result<(), StorageError> {
        if self.lifecycle.get() != Lifecycle::Closed {
            self.lifecycle.set(Lifecycle::Deleting);
        }
        // A failed writer does not prevent deletion.
        let _ = self.stop_writer().await;
        self.lifecycle.set(Lifecycle::Closed);
        self.notifier.close();
        self.segments.borrow_mut().clear();
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
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

    // The writer task's side of the log.

    pub(crate) fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.get()
    }

    pub(crate) fn notifier(&self) -> &Rc<Notifier> {
        &self.notifier
    }

    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    /// Some durable wait is not covered yet and there is written data to cover it with.
    pub(crate) fn sync_needed(&self) -> bool {
        let durable = self.durable_offset();
        self.sync_requested_offset.get() > durable && self.written_offset() > durable
    }

    pub(crate) fn writer_has_work(&self) -> bool {
        self.has_queued() || self.sync_needed() || self.lifecycle.get() != Lifecycle::Open
    }

    pub(crate) fn park_writer(&self, waker: &Waker) {
        *self.writer_waker.borrow_mut() = Some(waker.clone());
    }

    pub(crate) fn front_batch(&self) -> Option<BatchMeta> {
        self.queue.borrow().front().map(|b| b.meta)
    }

    /// Dequeues the batches of the next write: at least one, then more while they fit in
    /// `max_write_bytes`, in `room_bytes` of the segment, and in its relative offset range.
    pub(crate) fn take_batches(
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

    pub(crate) fn discard_queue(&self) {
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
        // Failed or deleted: written data stays readable from the files.
        self.tail_cache.borrow_mut().clear();
    }

    /// Puts the log in the failed state: later appends and unsatisfied waits get the error.
    pub(crate) fn fail(&self, error: &StorageError) {
        tracing::error!(dir = %self.dir.display(), %error, "partition log failed");
        let io_error = match error {
            StorageError::Io(e) => std::io::Error::new(e.kind(), e.to_string()),
            other => std::io::Error::other(other.to_string()),
        };
        self.notifier.fail(&io_error);
        self.discard_queue();
    }

    pub(crate) fn push_segment(&self, segment: Rc<Segment>) {
        let mut segments = self.segments.borrow_mut();
        let last = segments.last().expect("never empty while open");
        assert!(
            segment.base_offset() >= last.next_offset(),
            "segments must not overlap"
        );
        segments.push(segment);
    }

    pub(crate) fn count_write(&self, bytes: u64) {
        let mut stats = self.stats.get();
        stats.writes += 1;
        stats.bytes_written += bytes;
        self.stats.set(stats);
    }

    pub(crate) fn count_sync(&self) {
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
pub(crate) mod tests {
    use std::os::unix::fs::FileExt;

    use futures::future::join_all;
    use futures_lite::future::poll_once;

    use super::*;
    use crate::protocol::record_batch::{validate, Batches};
    use crate::storage::testutil::{batch, batch_with_timestamps, build_batch, run};

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
                let file = slice_bytes(&Records::File(
                    log.read_file(last, memory.len(), true, log.high_watermark())
                        .unwrap()
                        .unwrap(),
                ));
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
            }
            expected.push("leader-epoch-checkpoint".to_string());
            assert_eq!(names, expected);
            // A roll syncs the closed segment, so everything before the active one is durable.
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
            log.close().await.unwrap();

            // Again from the index files loaded on open.
            let log = PartitionLog::open(path, small_config()).await.unwrap();
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
            let crc = crate::protocol::record_batch::compute_crc(&compressed);
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
            let file = log.segments.borrow()[0].read_file().clone();
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
}
