//! The read side of [`PartitionLog`]: fetches (from the tail cache or a segment file, below the
//! caller's [`ReadLimit`]), ListOffsets by timestamp, and the waits of long-polling fetches.

use std::future::Future;
use std::ops::ControlFlow;

use super::PartitionLog;
use crate::storage::direct_read::Prefetched;
use crate::storage::notify::Mark;
use crate::storage::segment::NO_TIMESTAMP;
use crate::storage::timestamp;
use crate::storage::warm::{ColdRange, SCAN_SLACK_BYTES};
use crate::storage::{ReadLimit, ReadSlice, Records, StorageError};

impl PartitionLog {
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
        self.read_with(offset, max_bytes, min_one_batch, limit, None)
    }

    /// [`Self::read`], given the segment bytes [`Self::cold_range`] named, read into memory
    /// (`storage::direct_read`): when they are still this log's and hold the whole answer, it
    /// is served from them as memory chunks instead of as a file range for sendfile.
    pub fn read_with(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
        limit: ReadLimit,
        prefetched: Option<&Prefetched>,
    ) -> Result<Option<Records>, StorageError> {
        self.check_readable()?;
        if offset < self.log_start_offset() || offset > self.log_end_offset() {
            return Err(self.out_of_range(offset));
        }
        let limit_offset = self.limit_offset(limit);
        if offset >= limit_offset || (max_bytes == 0 && !min_one_batch) {
            return Ok(None);
        }
        self.mark_used();
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
        // Journaled batches are visible before they are written: the files serve only what is
        // written, the tail cache the rest (it keeps unwritten batches; one it never took, larger
        // than its cap or with the cache off, is waited for until written: `wait_for_data`).
        let file_limit = limit_offset.min(self.written_offset());
        self.read_file(offset, max_bytes, min_one_batch, file_limit, prefetched)
    }

    /// The segment bytes a [`Self::read`] of `offset` will touch when the tail cache does not
    /// hold `offset`, if they are not in the page cache (`storage::warm`): from the sparse
    /// index entry at or below `offset`, `max_bytes` plus the scan's slack, within the segment.
    /// No I/O beyond non-waiting residency checks; `None` also for anything `read` would
    /// refuse or serve from memory.
    pub fn cold_range(&self, offset: i64, max_bytes: usize) -> Option<ColdRange> {
        let cached_from = self.tail_cache.borrow().start_offset();
        if cached_from.is_some_and(|start| start <= offset) {
            return None;
        }
        let segments = self.segments.borrow();
        let segment = &segments[segments
            .partition_point(|s| s.base_offset() <= offset)
            .checked_sub(1)?];
        if offset >= segment.next_offset() {
            return None;
        }
        let position = segment.lookup_position(offset);
        let len = (max_bytes.saturating_add(SCAN_SLACK_BYTES) as u64)
            .min(segment.size_bytes().saturating_sub(position));
        let file = segment.read_file().ok()?;
        let cold = if self.config.cold_reads_in_memory {
            ColdRange::of_counted(file, position, len as usize)
        } else {
            ColdRange::of(file, position, len as usize)
        };
        cold.map(|range| range.of_segment(segment.id()))
    }

    fn limit_offset(&self, limit: ReadLimit) -> i64 {
        match limit {
            ReadLimit::HighWatermark => self.high_watermark(),
            ReadLimit::Written => self.written_offset(),
            ReadLimit::Below(offset) => self.high_watermark().min(offset),
        }
    }

    /// [`Self::read`] from the segment files only: a file range, or memory chunks when
    /// `prefetched` holds the range and is of the segment read (the same `Segment::id`: a
    /// segment replaced since, by a truncation or a compaction, has another, and is read from
    /// its file).
    pub(super) fn read_file(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
        limit_offset: i64,
        prefetched: Option<&Prefetched>,
    ) -> Result<Option<Records>, StorageError> {
        let segments = self.segments.borrow();
        let Some(mut i) = segments
            .partition_point(|s| s.base_offset() <= offset)
            .checked_sub(1)
        else {
            return Err(self.out_of_range(offset));
        };
        let max_batch_bytes = self.max_batch_bytes();
        let mut target = offset;
        while let Some(segment) = segments.get(i) {
            if target >= limit_offset {
                return Ok(None);
            }
            if target < segment.next_offset() {
                let end_bytes = segment.size_bytes();
                let file = segment.read_file()?;
                let memory = prefetched.filter(|p| p.segment == segment.id());
                let Some((position, header)) =
                    segment.find_batch_in(target, end_bytes, max_batch_bytes, memory)?
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
                        .scan_headers_in(position, end_bytes, max_batch_bytes, memory, |p, h| {
                            if p >= stop || h.last_offset() >= limit_offset {
                                ControlFlow::Break(p)
                            } else {
                                ControlFlow::Continue(())
                            }
                        })?
                        .unwrap_or(end_bytes);
                    len_bytes = len_bytes.min(below_limit - position);
                }
                // Bytes below `end_bytes` never change while the segment is this log's, so
                // what was read of them is what the file holds now.
                if let Some(bytes) = memory.and_then(|m| m.slice(position, len_bytes)) {
                    return Ok(Some(Records::Memory {
                        len: bytes.len(),
                        chunks: vec![bytes],
                    }));
                }
                let hinted = if self.config.cold_reads_in_memory {
                    0
                } else {
                    segment.hint_read_ahead(position, len_bytes)
                };
                if hinted > 0 {
                    let mut stats = self.stats.get();
                    stats.read_ahead_bytes += hinted;
                    self.stats.set(stats);
                }
                return Ok(Some(Records::File(ReadSlice {
                    file,
                    position,
                    len: len_bytes as usize,
                })));
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

    /// ListOffsets MAX_TIMESTAMP (-3, KIP-734): the first record carrying the largest timestamp
    /// of the log, with that timestamp; `None` for a log without records or when that record is
    /// not below the high watermark (as [`Self::offset_for_timestamp`]). Exact per record in
    /// uncompressed CreateTime batches; otherwise the batch's base offset.
    pub fn offset_for_max_timestamp(&self) -> Result<Option<(i64, i64)>, StorageError> {
        self.check_readable()?;
        let largest = self
            .segments
            .borrow()
            .iter()
            .map(|s| s.max_timestamp())
            .max()
            .unwrap_or(NO_TIMESTAMP);
        if largest == NO_TIMESTAMP {
            return Ok(None);
        }
        // The first record at or after the largest timestamp is the first one carrying it.
        self.offset_for_timestamp(largest)
    }

    fn search_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let segments = self.segments.borrow();
        for segment in segments.iter().filter(|s| s.max_timestamp() >= timestamp) {
            let start = segment.lookup_timestamp_position(timestamp);
            let found = segment.scan_headers(
                start,
                segment.size_bytes(),
                self.max_batch_bytes(),
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
        let mut mark = match limit {
            // A wait below the last stable offset also needs the partition's transaction
            // events (`Partition::stable_change`); the data part is the high watermark's.
            ReadLimit::HighWatermark | ReadLimit::Below(_) => Mark::HighWatermark,
            ReadLimit::Written => Mark::Written,
        };
        // Visible but neither written nor in the tail cache (a batch larger than its cap, or the
        // cache off): readable once written, so waiting on the high watermark would return at
        // once and again on every poll.
        if mark == Mark::HighWatermark
            && offset >= self.written_offset()
            && offset < self.high_watermark()
            && self
                .tail_cache
                .borrow()
                .start_offset()
                .is_none_or(|start| start > offset)
        {
            mark = Mark::Written;
        }
        let wait = self.notifier.wait(mark, offset.saturating_add(1));
        async move {
            // A failure, close or truncation also ends the wait; the caller's next read
            // reports it.
            let _ = wait.await;
        }
    }
}

/// Bytes read per step of [`PartitionLog::for_each_written_batch`].
const REPLAY_READ_BYTES: usize = 4 << 20;

impl PartitionLog {
    /// Calls `f` with every batch written to the log (header and bytes), oldest first: the
    /// replay of an internal log (offsets, transaction state) when its owner opens or adopts
    /// it. Everything written counts, above the high watermark too: a new leader's log is
    /// what its followers converge to. Never on the fetch path (it copies what it reads).
    /// `what` names the log in errors.
    pub fn for_each_written_batch(
        &self,
        what: &str,
        max_batch_bytes: usize,
        mut f: impl FnMut(&crate::record_batch::BatchHeader, &[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        use crate::record_batch::{BatchError, Batches};
        let mut offset = self.log_start_offset();
        let end = self.written_offset();
        let mut buf = Vec::new();
        while offset < end {
            let Some(read) = self
                .read(offset, REPLAY_READ_BYTES, true, ReadLimit::Written)
                .map_err(|e| e.to_string())?
            else {
                break;
            };
            buf.clear();
            read.copy_into(&mut buf)
                .map_err(|e| format!("reading the {what}: {e}"))?;
            // A read may end inside a batch: whole batches only, the next read continues
            // after the last one.
            let mut next = offset;
            for item in Batches::new(&buf, max_batch_bytes) {
                match item {
                    Ok((header, range)) => {
                        next = header.last_offset() + 1;
                        f(&header, &buf[range])?;
                    }
                    Err((_, BatchError::Truncated)) => break,
                    Err((at, e)) => return Err(format!("{what} batch at {at}: {e}")),
                }
            }
            if next <= offset {
                return Err(format!("{what} replay stuck at offset {offset}"));
            }
            offset = next;
        }
        Ok(())
    }
}
