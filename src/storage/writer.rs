//! The per-partition writer task: the only code that writes a segment file.
//!
//! Runs on the shard that owns the partition (spawned by `PartitionLog::open` with
//! `spawn_local`). It sees the log only through [`WriterHost`], the log's side of their
//! contract (its queue, marks, counters and segment list), so this module does not depend on
//! the log's. It holds the log only weakly while parked, so dropping the last `Rc` of the log
//! ends it. Each round it:
//! 1. rolls the segment first if the next batch would push it past `segment_bytes`;
//! 2. drains every queued batch (up to `MAX_WRITE_BYTES`) into one freshly allocated aligned
//!    DMA buffer, behind the partial tail page it keeps from the previous write, patches their
//!    offsets and leader epochs there, and issues one O_DIRECT write at the page-aligned position
//!    of that tail page (the tail page is rewritten, never read back); two adjacent writes, the
//!    tail page and the rest, when the rest goes to blocks never written (`staging.rs` says
//!    why);
//! 3. advances the written offset (and with it the high watermark, as far as its bound allows)
//!    and the sparse indexes;
//! 4. fdatasyncs only if a durable wait is pending, releasing every wait the sync covers (group
//!    commit): appends arriving during a write or a sync queue up and share the next round.
//!
//! A truncation stops the task the same way as a close, without the index files and the final
//! sync (it cuts the files itself), and starts a new one on the segment it leaves active.
//!
//! Between writes a partition keeps only the tail page (< 4 KiB), not a DMA buffer. The
//! segment's O_DIRECT descriptor is opened at the first write, and an idle partition (see
//! `PartitionLog::release_if_idle`) gives it and the tail page back: the writer syncs, writes
//! the index files, cuts the padding, and closes the file, as a clean close does. The next write
//! reads the tail page back and opens the file again.
//! Any I/O error puts the log in the failed state (waits and later appends get the error) and
//! ends the task; after a failed fdatasync nothing about the file's contents can be trusted.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use super::extents::ExtentStarts;
use super::notify::{Mark, Notifier};
use super::preallocate::Preallocator;
use super::segment::{open_file_bytes, BatchMeta, EncodedIndexes, Segment};
use super::staging::{self, Staging};
use super::txn_index::TxnIndexEntry;
use super::{producer_snapshot, txn_index, LogConfig, StorageError, PAGE_BYTES};
use crate::record_batch::BatchHeader;

/// Cap on one write: big enough to reach the device's sequential bandwidth, small enough that
/// a burst does not hold megabytes of staging memory or delay the written offset long.
pub const MAX_WRITE_BYTES: u64 = 4 << 20;

/// A segment write slower than this is logged: 100 times the device's usual time for one, and
/// long enough to hold every Produce request waiting on that partition past any latency goal.
const SLOW_WRITE: std::time::Duration = std::time::Duration::from_millis(100);

/// Fault injection (set by the server from `BROKER_FAULT_HOLD_SEGMENT_WRITES` in debug
/// builds): every writer waits before its next segment write for as long as this is set.
pub static HOLD_WRITES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A batch whose offsets are assigned but which the writer has not written yet.
#[derive(Debug)]
pub(crate) struct QueuedBatch {
    /// The producer's (or the leader's) bytes, untouched; the writer stamps `meta.base_offset`
    /// and `leader_epoch` into its copy in the DMA buffer. For a replica batch both are the
    /// batch's own values, so the bytes on disk are the leader's exactly.
    pub bytes: Bytes,
    pub leader_epoch: i32,
    pub meta: BatchMeta,
    /// The batch's header when it has a producer id: the log's producer state follows it as
    /// it is written (`WriterHost::track_written`).
    pub producer: Option<BatchHeader>,
    /// When it was queued: its wait for the write is a metric (`segment_write_wait`).
    pub queued_at: std::time::Instant,
}

/// What the log asks of its writer besides writing what is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopRequest {
    /// Keep writing.
    None,
    /// Truncation: write everything queued, then stop (the truncation cuts and syncs itself).
    Drain,
    /// Close: write everything queued, write the index files, cut the padding, sync, stop.
    Finish,
    /// Deletion: drop what is queued and stop.
    Discard,
}

/// The log's side of the writer task: everything the writer reads or changes in it.
pub(crate) trait WriterHost: 'static {
    fn config(&self) -> &LogConfig;
    /// The segment size to roll at: `config().segment_bytes` unless changed at run time.
    fn segment_bytes(&self) -> u64 {
        self.config().segment_bytes
    }
    fn dir(&self) -> &Path;
    /// The written and durable marks the writer advances (waits wake on them).
    fn notifier(&self) -> &Rc<Notifier>;
    fn log_end_offset(&self) -> i64;
    fn stop_request(&self) -> StopRequest;
    fn has_queued(&self) -> bool;
    /// Some durable wait is not covered yet and there is written data to cover it with.
    fn sync_needed(&self) -> bool;
    fn writer_has_work(&self) -> bool;
    /// Remembers the waker to wake when there is work.
    fn park_writer(&self, waker: &Waker);
    fn front_batch(&self) -> Option<BatchMeta>;
    /// Dequeues the batches of the next write: at least one, then more while they fit in
    /// `max_write_bytes`, in `room_bytes` of the segment, and in its relative offset range.
    fn take_batches(
        &self,
        room_bytes: u64,
        segment_base_offset: i64,
        max_write_bytes: u64,
    ) -> Vec<QueuedBatch>;
    fn discard_queue(&self);
    /// Appends the segment a roll created to the log's segment list.
    fn push_segment(&self, segment: Rc<Segment>);
    /// A file retention left in the directory that a segment starting at `base_offset` may
    /// reuse; it is then the writer's to rename.
    fn take_recycled_segment(&self, base_offset: i64) -> Option<RecycledFile>;
    /// A recycled file the writer took ahead of a roll and did not use (it stopped first, or a
    /// truncation moved the log's end below the file's old batches): a later roll may take it,
    /// or the reaper unlinks it with the others nobody took.
    fn give_back_recycled_segment(&self, file: RecycledFile);
    /// A roll finished closing a segment: retention may now delete the oldest one, whose
    /// file the next roll would reuse.
    fn segment_closed(&self);
    /// Puts the log in the failed state: later appends and unsatisfied waits get the error.
    fn fail(&self, error: &StorageError);
    /// Every offset below `offset` is in the segment files now: raises the written mark (and
    /// whatever follows it in the log).
    fn written(&self, offset: i64);
    fn count_write(&self, bytes: u64);
    fn count_sync(&self);
    /// The log asks the writer to close its file and drop its tail page (the partition is
    /// idle); [`Self::writer_released`] acknowledges.
    fn release_requested(&self) -> bool;
    fn writer_released(&self);
    /// Makes the leader epoch checkpoint durable if it changed since its last sync: before a
    /// segment is closed (closed segments are not rescanned, so their epochs must be in it).
    fn sync_epoch_checkpoint(&self) -> Result<(), StorageError>;
    /// A batch with a producer id (its `base_offset` the assigned one) goes into the segment
    /// file: the log's producer state takes it. Returns the index entry of an abort marker.
    fn track_written(&self, header: &BatchHeader, batch: &[u8]) -> Option<TxnIndexEntry>;
    /// The log's producer state (every batch written so far) as snapshot file bytes.
    fn encode_producer_snapshot(&self, offset: i64) -> Vec<u8>;
    /// Fault injection: whether the next write must fail.
    #[cfg(test)]
    fn take_injected_write_failure(&self) -> bool;
    /// Test hook: cut writes at every multiple of this many bytes of the file.
    #[cfg(test)]
    fn injected_cuts_every_bytes(&self) -> Option<u64>;
    /// Fault injection: the next segment write waits while this says so ([`HOLD_WRITES`]).
    fn writes_held(&self) -> bool {
        HOLD_WRITES.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn written_offset(&self) -> i64 {
        self.notifier().get(Mark::Written)
    }
}

/// A deleted segment's file kept for reuse (`PartitionLog::recycled_segments`).
#[derive(Debug)]
pub(crate) struct RecycledFile {
    pub path: PathBuf,
    /// The offset the file's old batches end below: only a segment starting here or above
    /// may take it, so that recovery, which stops at the first batch whose offset does not
    /// follow, can never take the old bytes for the new segment's.
    pub end_offset: i64,
}

/// A recycled file opened, and its size read, ahead of the roll that will reuse it
/// ([`Writer::prepare_next_file`]).
struct PreparedFile {
    recycled: RecycledFile,
    file: DmaFile,
    size_bytes: u64,
    /// Where its extents start, if the file system said.
    extents: Option<ExtentStarts>,
}

enum Exit {
    Closed,
    Deleted,
    /// A truncation stopped the writer after it drained the queue.
    Suspended,
    /// The log was dropped without `close`.
    Dropped,
}

pub(crate) struct Writer<Log: WriterHost> {
    log: Weak<Log>,
    /// The active segment's O_DIRECT handle: opened at the first write, closed when the
    /// partition goes idle.
    file: Option<DmaFile>,
    /// The active segment (also the last entry of the log's segment list).
    segment: Rc<Segment>,
    /// Bytes `[align_down(size), size)` of the active segment: the partial last page; `None`
    /// while released (read back from the file before the next write).
    tail: Option<Vec<u8>>,
    /// When the active segment became active here (for `segment_ms`).
    segment_started: std::time::Instant,
    /// The closing of the segment the last roll left, while it runs (see [`Self::roll`]).
    closing: Option<glommio::task::JoinHandle<Result<(), StorageError>>>,
    /// Keeps the active segment's file allocated ahead of the writes ([`super::preallocate`]).
    preallocator: Preallocator,
    /// Where the active file's blocks that hold written data end: its size when opened (what
    /// a recycled file held, what a reopened one keeps), raised by each write. Above it lie
    /// preallocated (unwritten) blocks or nothing. `None` until read after an opening. Used
    /// only to choose how to split a write (`staging::should_split`), never for what is read.
    written_blocks_end: Option<u64>,
    /// The next segment's file being opened, or opened, ahead of its roll
    /// ([`Self::prepare_next_file`]); `None` inside when there was nothing to prepare.
    next_file: Option<glommio::task::JoinHandle<Option<PreparedFile>>>,
    /// Where the extents of a segment's file (by base offset) start, as last read: writes are
    /// cut there ([`super::extents`]). Only for speed, like `written_blocks_end`.
    extents: Option<(i64, ExtentStarts)>,
}

impl<Log: WriterHost> Writer<Log> {
    pub(crate) fn new(
        log: Weak<Log>,
        file: Option<DmaFile>,
        segment: Rc<Segment>,
        tail: Option<Vec<u8>>,
    ) -> Writer<Log> {
        if let Some(tail) = &tail {
            assert_eq!(
                tail.len() as u64,
                segment.size_bytes() % PAGE_BYTES,
                "tail page must match the segment size"
            );
        }
        if let Some(file) = &file {
            assert_eq!(
                PAGE_BYTES % file.alignment(),
                0,
                "device alignment above the page size"
            );
        }
        Writer {
            log,
            file,
            segment,
            tail,
            segment_started: std::time::Instant::now(),
            closing: None,
            preallocator: Preallocator::new(),
            written_blocks_end: None,
            next_file: None,
            extents: None,
        }
    }

    pub(crate) async fn run(mut self) -> Result<(), StorageError> {
        let served = self.serve().await;
        // A file prepared for a roll that will not come here: a later writer may use it.
        self.give_back_next_file().await;
        let served = match served {
            // The file descriptor closes on drop; recovery handles the padding left behind.
            Ok(Exit::Dropped) => return Ok(()),
            Ok(Exit::Closed | Exit::Deleted | Exit::Suspended) => {
                // A truncation cuts the file next: no fallocate may extend it afterwards.
                self.preallocator.settle().await;
                self.finish_closing().await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = served {
            if let Some(log) = self.log.upgrade() {
                log.fail(&error);
            }
            return Err(error);
        }
        if let Some(file) = self.file.take() {
            file.close().await?;
        }
        Ok(())
    }

    /// The active segment's O_DIRECT handle, opened if it is not.
    async fn file(&mut self) -> Result<&DmaFile, StorageError> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(self.segment.log_path())
                .await?;
            if !PAGE_BYTES.is_multiple_of(file.alignment()) {
                let alignment = file.alignment();
                file.close().await?;
                return Err(StorageError::Io(io::Error::other(format!(
                    "device needs {alignment}-byte O_DIRECT alignment, above the {PAGE_BYTES}-byte page"
                ))));
            }
            self.preallocator.file_opened();
            self.written_blocks_end = None;
            self.file = Some(file);
        }
        Ok(self.file.as_ref().expect("opened above"))
    }

    /// [`Self::written_blocks_end`], read from the file after it was opened.
    async fn written_blocks_end(&mut self) -> Result<u64, StorageError> {
        if let Some(end) = self.written_blocks_end {
            return Ok(end);
        }
        let end = open_file_bytes(self.file().await?)?;
        self.written_blocks_end = Some(end);
        Ok(end)
    }

    /// Offsets inside the write of `bytes` at `position` where an extent of the active file
    /// starts ([`super::extents`]). The map is read again (on a blocking thread: the file
    /// system may read its extent tree from the disk) for a new segment, or when it ends
    /// before the write while the file has blocks allocated beyond it (a fallocate since).
    async fn extent_cuts(&mut self, position: u64, bytes: u64) -> Result<Vec<usize>, StorageError> {
        let base_offset = self.segment.base_offset();
        let allocated_end = self
            .preallocator
            .known_file_bytes()
            .unwrap_or(0)
            .max(self.written_blocks_end.unwrap_or(0));
        // Past the blocks allocated (an extending write of a fresh file) there is nothing to
        // map, and a file growing by its own writes must not be mapped again for each.
        let wanted_end = (position + bytes).min(allocated_end);
        let worth_reading = wanted_end > position + PAGE_BYTES;
        if worth_reading
            && self
                .extents_of(base_offset)
                .is_none_or(|map| !map.covers(position, wanted_end))
        {
            let fd = std::os::fd::AsRawFd::as_raw_fd(self.file().await?);
            let map = ExtentStarts::read_off_loop(fd, position)
                .await
                .unwrap_or_else(|error| {
                    tracing::debug!(%error, "no extent map (FIEMAP): segment writes are not cut at extents");
                    ExtentStarts::unknown()
                });
            self.extents = Some((base_offset, map));
        }
        Ok(self
            .extents_of(base_offset)
            .map(|map| map.cuts_within(position, position + bytes).collect())
            .unwrap_or_default())
    }

    /// The extent map held, if it is the segment starting at `base_offset`'s.
    fn extents_of(&self, base_offset: i64) -> Option<&ExtentStarts> {
        match &self.extents {
            Some((base, map)) if *base == base_offset => Some(map),
            _ => None,
        }
    }

    /// The partial last page, read back from the segment if it was released.
    fn tail(&mut self) -> Result<&mut Vec<u8>, StorageError> {
        if self.tail.is_none() {
            self.tail = Some(self.segment.read_tail_page(PAGE_BYTES)?);
        }
        Ok(self.tail.as_mut().expect("read above"))
    }

    async fn serve(&mut self) -> Result<Exit, StorageError> {
        loop {
            let Some(log) = self.next_work().await else {
                return Ok(Exit::Dropped);
            };
            if log.stop_request() == StopRequest::Discard {
                log.discard_queue();
                return Ok(Exit::Deleted);
            }
            if log.has_queued() {
                self.write_queued(&log).await?;
            }
            match log.stop_request() {
                StopRequest::Drain if !log.has_queued() => return Ok(Exit::Suspended),
                StopRequest::Finish if !log.has_queued() => {
                    self.finish(&log).await?;
                    return Ok(Exit::Closed);
                }
                _ => {}
            }
            if log.sync_needed() {
                self.sync(&log).await?;
            }
            if log.release_requested() {
                if !log.has_queued() && log.stop_request() == StopRequest::None {
                    self.release(&log).await?;
                }
                log.writer_released();
            }
        }
    }

    /// Parks until there is work; `None` once the log is gone. The log is held only weakly
    /// while parked.
    async fn next_work(&self) -> Option<Rc<Log>> {
        futures_lite::future::poll_fn(|cx| {
            let Some(log) = self.log.upgrade() else {
                return Poll::Ready(None);
            };
            if log.writer_has_work() {
                return Poll::Ready(Some(log));
            }
            log.park_writer(cx.waker());
            Poll::Pending
        })
        .await
    }

    fn must_roll_before(&self, next: &BatchMeta, log: &Log) -> bool {
        let size = self.segment.size_bytes();
        let segment_ms = log.config().segment_ms;
        let too_old =
            segment_ms >= 0 && self.segment_started.elapsed().as_millis() >= segment_ms as u128;
        size > 0
            && (size + next.len_bytes > log.segment_bytes()
                || next.last_offset - self.segment.base_offset() > i32::MAX as i64
                || too_old)
    }

    async fn write_queued(&mut self, log: &Log) -> Result<(), StorageError> {
        while log.writes_held() {
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        let Some(front) = log.front_batch() else {
            return Ok(());
        };
        if self.must_roll_before(&front, log) {
            self.roll(log).await?;
        }
        let size = self.segment.size_bytes();
        let room_bytes = log.segment_bytes().saturating_sub(size);
        let batches = log.take_batches(room_bytes, self.segment.base_offset(), MAX_WRITE_BYTES);
        assert!(!batches.is_empty(), "the queue had a batch");
        let taken_at = std::time::Instant::now();
        for batch in &batches {
            crate::metrics::DETAIL
                .segment_write_wait
                .observe(taken_at.saturating_duration_since(batch.queued_at));
        }

        let write_position = size - size % PAGE_BYTES;
        let tail = std::mem::take(self.tail()?);
        assert_eq!(tail.len() as u64, size - write_position);
        let data_bytes: u64 = batches.iter().map(|b| b.meta.len_bytes).sum();
        let used = tail.len() + data_bytes as usize;
        let buffer_bytes = used.next_multiple_of(PAGE_BYTES as usize);
        let written_blocks_end = self.written_blocks_end().await?;
        let split = staging::should_split(
            write_position,
            buffer_bytes as u64,
            tail.len() as u64,
            written_blocks_end,
        );
        // Where the write is cut into pieces, each its own O_DIRECT write (all submitted
        // together, in order): after a rewritten tail page followed by unwritten blocks, and
        // where an extent of the file starts.
        let mut starts = self
            .extent_cuts(write_position, buffer_bytes as u64)
            .await?;
        #[cfg(test)]
        if let Some(step) = log.injected_cuts_every_bytes() {
            let end = write_position + buffer_bytes as u64;
            let first = (write_position / step + 1) * step;
            starts.extend(
                (first..end)
                    .step_by(step as usize)
                    .map(|at| (at - write_position) as usize),
            );
        }
        starts.push(0);
        if split {
            starts.push(PAGE_BYTES as usize);
        }
        starts.retain(|&start| start < buffer_bytes);
        starts.sort_unstable();
        starts.dedup();
        let file = self.file().await?;
        let mut buffers: Vec<DmaBuffer> = starts
            .iter()
            .zip(starts.iter().skip(1).chain([&buffer_bytes]))
            .map(|(&start, &end)| file.alloc_dma_buffer(end - start))
            .collect();
        let mut staged = Staging::new(buffers.iter_mut().map(|b| b.as_bytes_mut()).collect());
        staged.put(0, &tail);
        let mut at = tail.len();
        let mut metas = Vec::with_capacity(batches.len());
        let mut aborted = Vec::new();
        for batch in batches {
            if let Some(mut header) = batch.producer {
                header.base_offset = batch.meta.base_offset;
                aborted.extend(log.track_written(&header, &batch.bytes));
            }
            staged.put_batch(at, &batch.bytes, batch.meta.base_offset, batch.leader_epoch);
            metas.push(batch.meta);
            at += batch.bytes.len();
            // `batch.bytes` drops here, releasing the request buffer before the write.
        }
        staged.zero_from(used);
        let next_tail = staged.copy_out(used - used % PAGE_BYTES as usize, used);
        drop(staged);

        #[cfg(test)]
        if log.take_injected_write_failure() {
            return Err(io::Error::other("injected write failure").into());
        }
        let started = std::time::Instant::now();
        let written = if buffers.len() == 1 {
            let buffer = buffers.pop().expect("one piece");
            file.write_at(buffer, write_position).await?
        } else {
            // Polled in order, so submitted in order: the tail page first.
            let writes = buffers
                .into_iter()
                .zip(&starts)
                .map(|(buffer, &start)| file.write_at(buffer, write_position + start as u64));
            let mut written = 0;
            for result in futures::future::join_all(writes).await {
                written += result?;
            }
            written
        };
        let write_time = started.elapsed();
        crate::metrics::DETAIL
            .segment_write_latency
            .observe(write_time);
        if write_time >= SLOW_WRITE {
            // The histogram says that some write was slow; this says when and which, to line
            // up with rolls, retention and other partitions' writes in the same log.
            tracing::warn!(
                segment = %self.segment.log_path().display(),
                position = write_position,
                bytes = buffer_bytes,
                write_ms = write_time.as_secs_f64() * 1e3,
                "slow segment write"
            );
        }
        // Neither piece can write more than it holds: the sum is whole only if both are.
        if written != buffer_bytes {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short O_DIRECT write: {written} of {buffer_bytes} bytes"),
            )
            .into());
        }
        self.preallocator.after_write(
            self.file.as_ref().expect("written above"),
            write_position + buffer_bytes as u64,
            log.segment_bytes(),
            log.config().preallocate_ahead_bytes,
        );

        self.written_blocks_end =
            Some(written_blocks_end.max(write_position + buffer_bytes as u64));

        let mut position = size;
        for meta in &metas {
            self.segment
                .record_batch(position, meta, log.config().index_interval_bytes);
            position += meta.len_bytes;
        }
        for entry in aborted {
            self.segment.record_aborted(entry);
        }
        self.tail = Some(next_tail);
        log.count_write(data_bytes);
        let written = self.segment.next_offset();
        assert!(
            written <= log.log_end_offset(),
            "written offset above the log end"
        );
        log.written(written);
        self.prepare_next_file(log);
        Ok(())
    }

    /// Once the active segment is half full, opens a recycled file for the next roll in the
    /// background and reads its size, if there is one to take. The roll then only renames it:
    /// opening it there cost the rolling partition's writes (and every Produce request with a
    /// batch for it) two more rounds through the event loop, 2-5 ms on a busy shard (W3 at
    /// 760k msgs/s, 2026-11-28). Its old batches end at or below the written offset, and so
    /// below any base the next segment can have unless a truncation intervenes, which the roll
    /// checks again.
    fn prepare_next_file(&mut self, log: &Log) {
        if self.next_file.is_some() || self.segment.size_bytes() < log.segment_bytes() / 2 {
            return;
        }
        let Some(recycled) = log.take_recycled_segment(log.written_offset()) else {
            return;
        };
        self.next_file = Some(glommio::spawn_local(open_recycled(recycled)).detach());
    }

    /// The prepared file, once its opening finished (at once if it has).
    async fn take_next_file(&mut self) -> Option<PreparedFile> {
        self.next_file.take()?.await.flatten()
    }

    /// Closes the prepared file, if any, and gives it back to the log.
    async fn give_back_next_file(&mut self) {
        let Some(prepared) = self.take_next_file().await else {
            return;
        };
        // Closing only drops a descriptor of a file nothing was written to.
        let _ = prepared.file.close().await;
        if let Some(log) = self.log.upgrade() {
            log.give_back_recycled_segment(prepared.recycled);
        }
    }

    /// One fdatasync for everything written so far; releases every wait it covers.
    async fn sync(&mut self, log: &Log) -> Result<(), StorageError> {
        let covered = log.written_offset();
        let started = std::time::Instant::now();
        self.file().await?.fdatasync().await?;
        crate::metrics::DETAIL
            .fdatasync_latency
            .observe(started.elapsed());
        // The segments before the active one (and its directory entry) are durable once their
        // closing is done.
        self.finish_closing().await?;
        log.count_sync();
        log.notifier().advance(Mark::Durable, covered);
        Ok(())
    }

    /// Closes the active segment and opens the next one, starting at the written offset.
    ///
    /// Only what the next write needs happens before it: the next segment's file in place and
    /// open. The rest runs in a task beside the writes to the new segment ([`ClosingSegment`]):
    /// the old segment's index files, padding cut, fdatasync and leader epoch checkpoint, its
    /// `.txnindex`, the producer snapshot at the new base, and the new segment's index files
    /// and directory sync. Under load (10 rolls a second at 680 MB/s over 8 partitions) a roll
    /// that waited for all that held its partition's acks for 4-11 ms each time. Durability
    /// still waits for it: a sync, the next roll, a close, a release and a truncation await the
    /// task first. A crash while it runs leaves what recovery repairs anyway: a closed segment
    /// with zero padding (cut on load), stale index files (rebuilt), no snapshot at the active
    /// segment's base (the previous one is used and the closed segment scanned, which rebuilds
    /// its `.txnindex` too).
    async fn roll(&mut self, log: &Log) -> Result<(), StorageError> {
        self.finish_closing().await?;
        // The closing task cuts the old file to its size: no fallocate may extend it after.
        self.preallocator.settle().await;
        let old = self.segment.clone();
        assert_eq!(
            old.next_offset(),
            log.written_offset(),
            "roll with unwritten batches before it"
        );
        let base_offset = old.next_offset();
        // The producer state as of the new segment's base (recovery scans only from there),
        // taken now: the writes that follow change it.
        let snapshot = log.encode_producer_snapshot(base_offset);
        let txn_index = old.take_txn_index_to_persist();
        let (segment, file, written_blocks_end) = self.open_next_segment(log, base_offset).await?;
        // A prepared file's size is known; any other file is reused exactly when it is not
        // empty (`Segment::open_new` refuses a non-empty file it did not take for reuse).
        let file_bytes = match written_blocks_end {
            Some(bytes) => bytes,
            None => open_file_bytes(&file)?,
        };
        let old_file = self.file.replace(file);
        if file_bytes > 0 {
            self.preallocator.reused_file_opened(file_bytes);
        } else {
            self.preallocator.file_opened();
        }
        // Read just now: the first write need not ask again.
        self.written_blocks_end = Some(file_bytes);
        old.release_read_file();
        old.set_closing(true);
        let closing = ClosingSegment {
            segment: old,
            file: old_file,
            txn_index,
            snapshot,
            next_base_offset: base_offset,
        };
        self.closing = Some(glommio::spawn_local(closing.run(self.log.clone())).detach());
        self.segment = Rc::new(segment);
        self.segment_started = std::time::Instant::now();
        self.tail = Some(Vec::new());
        log.push_segment(self.segment.clone());
        Ok(())
    }

    /// The next segment's file in place and open: the prepared one if there is one it may
    /// take, else a recycled file opened now, else a fresh file. Also returns how far the
    /// file's written blocks reach, if known.
    async fn open_next_segment(
        &mut self,
        log: &Log,
        base_offset: i64,
    ) -> Result<(Segment, DmaFile, Option<u64>), StorageError> {
        match self.take_next_file().await {
            Some(prepared) if prepared.recycled.end_offset <= base_offset => {
                if let Some(segment) =
                    Segment::open_prepared(log.dir(), base_offset, &prepared.recycled.path).await?
                {
                    // Read beside the active segment's writes: the first write here need not.
                    self.extents = prepared.extents.map(|map| (base_offset, map));
                    return Ok((segment, prepared.file, Some(prepared.size_bytes)));
                }
                // Gone behind the log's back (see `Segment::open_new`): a fresh file.
                let _ = prepared.file.close().await;
                let (segment, file) = Segment::open_new(log.dir(), base_offset, None).await?;
                return Ok((segment, file, None));
            }
            Some(prepared) => {
                // A truncation moved the log's end below the file's old batches.
                let _ = prepared.file.close().await;
                log.give_back_recycled_segment(prepared.recycled);
            }
            None => {}
        }
        let recycled = log.take_recycled_segment(base_offset);
        let (segment, file) = Segment::open_new(
            log.dir(),
            base_offset,
            recycled.as_ref().map(|r| r.path.as_path()),
        )
        .await?;
        Ok((segment, file, None))
    }

    /// Waits for the closing of the segment the last roll left, if it is still running.
    async fn finish_closing(&mut self) -> Result<(), StorageError> {
        match self.closing.take() {
            Some(task) => task.await.unwrap_or(Err(StorageError::Closed)),
            None => Ok(()),
        }
    }

    /// Clean shutdown: index files written, padding cut, everything synced. Nothing to do if
    /// the file is not open (never written since the log opened, or released since, which did
    /// the same).
    async fn finish(&mut self, log: &Log) -> Result<(), StorageError> {
        if self.file.is_none() {
            return Ok(());
        }
        self.flush_and_close(log).await
    }

    /// The partition went idle: what a clean close does, then the file and the tail page go.
    async fn release(&mut self, log: &Log) -> Result<(), StorageError> {
        if self.file.is_some() {
            self.flush_and_close(log).await?;
        }
        self.tail = None;
        // An idle partition holds no descriptor.
        self.give_back_next_file().await;
        Ok(())
    }

    async fn flush_and_close(&mut self, log: &Log) -> Result<(), StorageError> {
        // Before this segment's index files are written: the closing task creates them empty.
        self.finish_closing().await?;
        // Before the cut to the logical size: a fallocate finishing after it would undo it.
        self.preallocator.settle().await;
        let file = self.file.take().expect("callers check");
        // Off the event loop, as a roll does (`ClosingSegment`): rewriting an index file frees
        // its old blocks, which on a file system mounted with `discard` and without a journal
        // is a synchronous discard, and the `.txnindex` is fsync'd. With many partitions going
        // idle at once, the shard's loop would wait for each in turn.
        let indexes = self.segment.encode_indexes();
        let txn_index = self.segment.take_txn_index_to_persist();
        glommio::executor()
            .spawn_blocking(move || write_index_files(&indexes, txn_index))
            .await?;
        file.truncate(self.segment.size_bytes()).await?;
        file.fdatasync().await?;
        file.close().await?;
        log.count_sync();
        log.notifier().advance(Mark::Durable, log.written_offset());
        Ok(())
    }
}

/// A closing segment's index files and `.txnindex` (if it has aborted transactions). Blocking:
/// for a blocking thread. The index files are not synced (recovery rebuilds stale ones); the
/// `.txnindex` is.
fn write_index_files(
    indexes: &EncodedIndexes,
    txn_index: Option<(PathBuf, Vec<TxnIndexEntry>)>,
) -> io::Result<()> {
    indexes.write()?;
    if let Some((log_path, entries)) = txn_index {
        txn_index::write_durably(&log_path, &entries)?;
    }
    Ok(())
}

/// Opens `recycled` for writing and reads its size ([`Writer::prepare_next_file`]); `None`
/// if that fails: the roll then does without, and a file that cannot be opened is not kept.
async fn open_recycled(recycled: RecycledFile) -> Option<PreparedFile> {
    let opened = async {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&recycled.path)
            .await?;
        match open_file_bytes(&file) {
            Ok(size_bytes) => Ok((file, size_bytes)),
            Err(error) => {
                let _ = file.close().await;
                Err(error)
            }
        }
    }
    .await;
    match opened {
        Ok((file, size_bytes)) => {
            // Where its extents start (see `extents`), read now rather than on the write path.
            // The file stays open meanwhile: this task owns it.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            let extents = ExtentStarts::read_off_loop(fd, 0).await.ok();
            Some(PreparedFile {
                recycled,
                file,
                size_bytes,
                extents,
            })
        }
        Err(error) => {
            // Gone is fine (see `Segment::open_new`); anything else is worth a line, and the
            // file goes.
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %recycled.path.display(), %error, "a recycled segment file could not be opened; it is deleted");
                super::reaper::unlink_later(vec![recycled.path]);
            }
            None
        }
    }
}

/// What a roll leaves to finish off the writer's path (see [`Writer::roll`]).
struct ClosingSegment {
    segment: Rc<Segment>,
    /// The old segment's O_DIRECT handle; `None` if it was never opened (an empty segment).
    file: Option<DmaFile>,
    txn_index: Option<(PathBuf, Vec<TxnIndexEntry>)>,
    snapshot: Vec<u8>,
    next_base_offset: i64,
}

impl ClosingSegment {
    async fn run<Log: WriterHost>(self, log: Weak<Log>) -> Result<(), StorageError> {
        let ClosingSegment {
            segment,
            file,
            txn_index,
            snapshot,
            next_base_offset,
        } = self;
        // A closed segment is exactly its batches and durable, so recovery only scans the
        // active one and a sync of the active file covers the whole log. Its leader epochs are
        // not rescanned either: the checkpoint must hold them.
        if let Some(file) = &file {
            file.truncate(segment.size_bytes()).await?;
            file.fdatasync().await?;
        }
        if let Some(log) = log.upgrade() {
            log.sync_epoch_checkpoint()?;
            log.count_sync();
            log.notifier().advance(Mark::Durable, segment.next_offset());
        }
        let indexes = segment.encode_indexes();
        let dir = segment
            .log_path()
            .parent()
            .expect("a segment file is in its log directory")
            .to_path_buf();
        let old_base = segment.base_offset();
        glommio::executor()
            .spawn_blocking(move || -> io::Result<()> {
                write_index_files(&indexes, txn_index)?;
                // Last of the old segment's files: its presence tells recovery that the segments
                // below it are closed for good.
                producer_snapshot::write_durably(&dir, next_base_offset, &snapshot)?;
                // A clean close's snapshot inside the old segment is superseded.
                producer_snapshot::remove_where(&dir, |o| o > old_base && o < next_base_offset)?;
                Segment::complete_creation(&dir, next_base_offset)
            })
            .await?;
        if let Some(file) = file {
            file.close().await?;
        }
        segment.shrink_indexes();
        segment.set_closing(false);
        if let Some(log) = log.upgrade() {
            log.segment_closed();
        }
        Ok(())
    }
}
