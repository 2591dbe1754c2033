//! One segment: a `<base_offset:020>.log` file of whole batches, its in-memory sparse indexes,
//! the pread-based header scans reads use to find a batch, and the read-ahead hints that keep a
//! catch-up consumer's page cache filling ahead of its fetches.
//!
//! Owned by the shard that owns the partition (shared there as `Rc<Segment>` between the log and
//! its writer task). Mutable fields are `Cell`/`RefCell` and only the writer task (appends) and
//! recovery (before the log is shared) change them.
//!
//! The read descriptor is opened on first use and dropped when the partition goes idle
//! ([`Segment::release_read_file`]): a broker with 10,000 partitions keeps no descriptor for
//! the ones nobody reads.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use glommio::io::{DmaFile, OpenOptions};

use super::direct_read::Prefetched;
use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use super::txn_index::{self, TxnIndexEntry};
use super::{StorageError, PAGE_BYTES};
use crate::record_batch::{BatchHeader, HEADER_LEN};

/// Kafka's "no timestamp" value; also the max timestamp of an empty segment.
pub const NO_TIMESTAMP: i64 = -1;

/// Bytes read per pread when walking batch headers; with the default 4 KiB index interval one
/// or two reads find any batch.
const HEADER_SCAN_BYTES: usize = 4096;

/// How far past a consumer's fetch the page cache should already be filling: about 10 ms of a
/// 1.5 GB/s catch-up consumer, enough to keep several device requests queued.
pub const READ_AHEAD_BYTES: u64 = 16 << 20;

/// Most bytes hinted for one fetch. WILLNEED allocates the page cache synchronously (measured
/// here: ~0.2 ms per MiB), so this bounds what one fetch costs the shard to ~1 ms.
const READ_AHEAD_STEP_BYTES: u64 = 4 << 20;

/// A gap in the window smaller than this is not worth a syscall (unless it reaches the end).
const READ_AHEAD_MIN_STEP_BYTES: u64 = 1 << 20;

/// The next [`Segment::id`] (from 1: 0 names no segment).
static NEXT_SEGMENT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A kernel read-ahead window at least this large needs no help (see `read_ahead_piece_bytes`).
const KERNEL_READ_AHEAD_ENOUGH_BYTES: u64 = 8 << 20;

/// Consumers per segment whose hinted ranges are remembered.
const READ_AHEAD_STREAMS: usize = 4;

/// What the indexes need to know about one batch once its offset is assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub len_bytes: u64,
}

impl From<&BatchHeader> for BatchMeta {
    fn from(h: &BatchHeader) -> Self {
        BatchMeta {
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
            max_timestamp: h.max_timestamp,
            len_bytes: h.total_len() as u64,
        }
    }
}

/// Kafka's file name for a segment file: 20-digit zero-padded base offset plus extension.
pub fn file_name(base_offset: i64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

/// Parses `<20 digits>.log` back into a base offset.
pub fn parse_log_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Reads into `buf` at `position` until it is full or the file ends; returns the bytes read.
pub fn read_at_most(file: &File, buf: &mut [u8], position: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], position + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The ranges of one segment already hinted to the kernel, one per recent consumer (a
/// "stream"), so that sequential fetches extend their window instead of hinting the same pages
/// again, and two consumers at different positions do not reset each other's window.
#[derive(Debug, Default, Clone)]
pub(crate) struct ReadAheadStreams {
    /// `(last fetch position, end of the hinted range)`; `(0, 0)` is unused.
    streams: [(u64, u64); READ_AHEAD_STREAMS],
    /// The stream a new consumer replaces (round robin).
    next_victim: usize,
}

impl ReadAheadStreams {
    /// The byte range to hint for a fetch of `[position, position + len)` when every byte below
    /// `limit` may be read ahead, or `None` when the window ahead of the fetch is hinted already.
    /// A fetch at or inside a stream's hinted range continues that stream; any other starts a
    /// new one at `position`.
    pub(crate) fn next_hint(&mut self, position: u64, len: u64, limit: u64) -> Option<(u64, u64)> {
        let window_end = position
            .saturating_add(len)
            .saturating_add(READ_AHEAD_BYTES)
            .min(limit);
        let i = match self
            .streams
            .iter()
            .position(|&(at, to)| to > 0 && at <= position && position <= to)
        {
            Some(i) => i,
            None => {
                let i = self.next_victim;
                self.next_victim = (i + 1) % READ_AHEAD_STREAMS;
                self.streams[i] = (position, position);
                i
            }
        };
        let start = self.streams[i].1.max(position);
        self.streams[i].0 = position;
        let missing = window_end.saturating_sub(start);
        if missing == 0 || (missing < READ_AHEAD_MIN_STEP_BYTES && window_end < limit) {
            return None;
        }
        let end = start + missing.min(READ_AHEAD_STEP_BYTES);
        self.streams[i].1 = end;
        Some((start, end))
    }
}

thread_local! {
    /// [`read_ahead_piece_bytes`] per device (`st_dev`), read from sysfs once per thread.
    static READ_AHEAD_PIECES: RefCell<HashMap<u64, u64>> = RefCell::new(HashMap::new());
}

/// Bytes per `POSIX_FADV_WILLNEED` call for segments on `file`'s device, or 0 when fetches
/// should not hint at all.
///
/// Every segment read fd is marked `POSIX_FADV_SEQUENTIAL`, which makes the kernel's own
/// read-ahead window twice the device's `read_ahead_kb`. When that window is large (8 MiB or
/// more) the kernel alone keeps the device busy, and more cheaply than WILLNEED: measured on
/// a cold 1.1 GiB segment with `read_ahead_kb` 8192 (1 MiB fetches, sendfile), SEQUENTIAL
/// alone read at 2.1 GB/s with 0.1 s of system CPU, WILLNEED hints 16 MiB ahead at 1.8 GB/s
/// with 0.3 s (WILLNEED fills the page cache in single pages, read-ahead in large folios).
/// With a small window (the common 128 KiB default, or none) catch-up reads wait on the device
/// at every fetch: with the kernel's read-ahead off for the fd they read at 0.44 GB/s, and
/// hints 16 MiB ahead lift them to 1.9 GB/s. The kernel reads at most
/// `max(max_sectors_kb, window)` per WILLNEED call, so hints are issued in pieces of that size.
fn read_ahead_piece_bytes(file: &File) -> u64 {
    let Ok(device) = file.metadata().map(|m| m.dev()) else {
        return 0;
    };
    if let Some(piece) = READ_AHEAD_PIECES.with(|p| p.borrow().get(&device).copied()) {
        return piece;
    }
    let (major, minor) = (libc::major(device), libc::minor(device));
    let read_ahead_kb = block_queue_kb(major, minor, "read_ahead_kb");
    let piece = match read_ahead_kb {
        Some(kb) if 2 * kb * 1024 >= KERNEL_READ_AHEAD_ENOUGH_BYTES => 0,
        // Unknown (not a plain block device): assume the kernel needs help.
        _ => {
            let window_kb = 2 * read_ahead_kb.unwrap_or(0);
            let max_sectors_kb = block_queue_kb(major, minor, "max_sectors_kb").unwrap_or(0);
            (window_kb.max(max_sectors_kb).max(128) * 1024).min(READ_AHEAD_STEP_BYTES)
        }
    };
    READ_AHEAD_PIECES.with(|p| p.borrow_mut().insert(device, piece));
    piece
}

/// A `queue/` attribute of the block device `major:minor`, or of its disk for a partition.
fn block_queue_kb(major: u32, minor: u32, name: &str) -> Option<u64> {
    let device = format!("/sys/dev/block/{major}:{minor}");
    let candidates = [
        format!("{device}/queue/{name}"),
        format!("{device}/../queue/{name}"),
        format!("/sys/class/bdi/{major}:{minor}/{name}"),
    ];
    candidates
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse().ok())
}

/// A segment's two index files as bytes, ready to write.
pub struct EncodedIndexes {
    files: [(PathBuf, Vec<u8>); 2],
}

impl EncodedIndexes {
    /// Buffered writes, not synced (blocking).
    pub fn write(&self) -> io::Result<()> {
        for (path, bytes) in &self.files {
            std::fs::write(path, bytes)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Segment {
    /// Unique to this `Segment` in the process ([`Segment::id`]).
    id: u64,
    base_offset: i64,
    log_path: PathBuf,
    /// Page-cache handle for preads and sendfile, opened on first use; never used for writes.
    /// Readers on other shards hold clones, so dropping it here never cuts a send short.
    read_file: RefCell<Option<Arc<File>>>,
    /// Every read descriptor this segment opened that may still be alive (a release drops only
    /// this segment's own reference): reusing the file for a new segment must wait until no
    /// send can still read the old bytes through any of them.
    read_files_handed_out: RefCell<Vec<Weak<File>>>,
    /// Logical size: bytes of whole batches written (for the active segment: exactly the bytes
    /// below the written offset). The file may be longer by zero padding.
    size_bytes: Cell<u64>,
    /// Last offset + 1 of the batches written, or `base_offset` when empty.
    next_offset: Cell<i64>,
    max_timestamp: Cell<i64>,
    bytes_since_index_entry: Cell<u64>,
    offset_index: RefCell<OffsetIndex>,
    time_index: RefCell<TimeIndex>,
    /// Bytes per WILLNEED call, 0 when fetches leave read-ahead to the kernel; `None` until the
    /// read descriptor is first opened.
    read_ahead_piece_bytes: Cell<Option<u64>>,
    read_ahead: RefCell<ReadAheadStreams>,
    /// The active segment's aborted transactions (its `.txnindex` in memory), and whether the
    /// file lags behind them. Closed segments keep theirs on disk only (the partition's
    /// producer table holds the list read_committed fetches use).
    aborted: RefCell<Vec<TxnIndexEntry>>,
    aborted_dirty: Cell<bool>,
    /// A roll closed this segment and its closing (index files, padding cut, fdatasync,
    /// `.txnindex`, the next segment's producer snapshot) is still running beside the writes to
    /// the next one: retention and the cleaner leave it alone until it is done.
    closing: Cell<bool>,
}

impl Segment {
    /// A segment whose first `size_bytes` are described by `offset_index`/`time_index`, whose
    /// last index entry sits at the batch starting at `size_bytes` (or which is empty). Recovery
    /// then feeds the batches from there through [`Segment::record_batch`]. `read_file`, if
    /// given, is the segment's read descriptor (else it is opened on first use).
    pub fn new(
        dir: &Path,
        base_offset: i64,
        read_file: Option<File>,
        offset_index: OffsetIndex,
        time_index: TimeIndex,
    ) -> Segment {
        assert!(
            base_offset >= 0,
            "negative segment base offset {base_offset}"
        );
        let (size_bytes, next_offset) = match offset_index.last() {
            Some(e) => (e.position as u64, base_offset + e.relative_offset as i64),
            None => (0, base_offset),
        };
        let max_timestamp = time_index.last().map_or(NO_TIMESTAMP, |e| e.timestamp);
        let segment = Segment {
            id: NEXT_SEGMENT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            base_offset,
            log_path: dir.join(file_name(base_offset, "log")),
            read_file: RefCell::new(None),
            read_files_handed_out: RefCell::new(Vec::new()),
            size_bytes: Cell::new(size_bytes),
            next_offset: Cell::new(next_offset),
            max_timestamp: Cell::new(max_timestamp),
            bytes_since_index_entry: Cell::new(0),
            offset_index: RefCell::new(offset_index),
            time_index: RefCell::new(time_index),
            read_ahead_piece_bytes: Cell::new(None),
            read_ahead: RefCell::new(ReadAheadStreams::default()),
            aborted: RefCell::new(Vec::new()),
            aborted_dirty: Cell::new(false),
            closing: Cell::new(false),
        };
        if let Some(file) = read_file {
            segment.adopt_read_file(file);
        }
        segment
    }

    fn adopt_read_file(&self, file: File) -> Arc<File> {
        // Consumers read a segment front to back: let the kernel use its largest read-ahead
        // window on this fd. Advice only, so a failure changes nothing but speed.
        // SAFETY: posix_fadvise on a descriptor `file` keeps open; no memory is passed.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
        if self.read_ahead_piece_bytes.get().is_none() {
            self.read_ahead_piece_bytes
                .set(Some(read_ahead_piece_bytes(&file)));
        }
        let file = Arc::new(file);
        *self.read_file.borrow_mut() = Some(file.clone());
        let mut handed_out = self.read_files_handed_out.borrow_mut();
        handed_out.retain(|weak| weak.strong_count() > 0);
        handed_out.push(Arc::downgrade(&file));
        file
    }

    /// The read descriptor (opened now if it is not open): for preads and sendfile.
    pub fn read_file(&self) -> io::Result<Arc<File>> {
        if let Some(file) = &*self.read_file.borrow() {
            return Ok(file.clone());
        }
        Ok(self.adopt_read_file(File::open(&self.log_path)?))
    }

    /// Closes the read descriptor (an idle partition); the next read opens it again. Clones
    /// held by reads in flight keep it open until they end.
    pub fn release_read_file(&self) {
        self.read_file.borrow_mut().take();
    }

    /// Whether the read descriptor is open (tests, diagnostics).
    pub fn has_read_file(&self) -> bool {
        self.read_file.borrow().is_some()
    }

    /// Creates the files of a new, empty segment and returns it with its O_DIRECT write handle;
    /// its empty index files exist and its directory entry is durable.
    pub async fn create(dir: &Path, base_offset: i64) -> Result<(Segment, DmaFile), StorageError> {
        let created = Self::open_new(dir, base_offset, None).await?;
        let dir_owned = dir.to_path_buf();
        glommio::executor()
            .spawn_blocking(move || Self::complete_creation(&dir_owned, base_offset))
            .await?;
        Ok(created)
    }

    /// The part of creating a segment that its first write needs: the file in place, a
    /// `.txnindex` left at this base removed, the O_DIRECT handle open. The rest,
    /// [`Self::complete_creation`], is the caller's: a roll runs it beside the first writes to
    /// the new segment and waits for it before anything in the segment counts as durable (until
    /// the directory is synced, a power loss may take the new file with it).
    ///
    /// The file is new and empty, or `recycled`: a file retention left in `dir` for reuse
    /// ([`RECYCLED_SEGMENT_EXTENSION`]), renamed, not copied, so its blocks stay allocated and
    /// the segment's appends overwrite them. Its old bytes past the segment's size are never
    /// read: every read is bounded by the size, which starts at 0, and recovery stops at the
    /// first of them because their offsets are below the segment's base (the caller
    /// guarantees it: see `PartitionLog::take_recycled_segment`).
    pub async fn open_new(
        dir: &Path,
        base_offset: i64,
        recycled: Option<&Path>,
    ) -> Result<(Segment, DmaFile), StorageError> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let reused = Self::put_in_place(&log_path, base_offset, recycled).await?;
        let dma = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!reused)
            .dma_open(&log_path)
            .await?;
        if !reused {
            let existing_bytes = open_file_bytes(&dma)?;
            if existing_bytes != 0 {
                // Only recovery decides what an existing file holds; never write over one.
                dma.close().await?;
                return Err(StorageError::Corrupt {
                    segment_base_offset: base_offset,
                    position: 0,
                    reason: format!("new segment file already holds {existing_bytes} bytes"),
                });
            }
        }
        Ok((Self::new_empty(dir, base_offset), dma))
    }

    /// [`Self::open_new`] with a recycled file the caller opened ahead of the roll
    /// (`writer::PreparedFile`): only the rename is left, so a roll waits for one blocking
    /// call instead of that, an open and a size query, each a round through the shard's event
    /// loop and, on a busy shard's CPU, a wait for the helper thread to be scheduled. `None`
    /// if the recycled file is gone (the caller then closes its handle and creates a fresh
    /// file).
    pub async fn open_prepared(
        dir: &Path,
        base_offset: i64,
        recycled: &Path,
    ) -> Result<Option<Segment>, StorageError> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let reused = Self::put_in_place(&log_path, base_offset, Some(recycled)).await?;
        Ok(reused.then(|| Self::new_empty(dir, base_offset)))
    }

    /// Renames `recycled` (if any) to `log_path` and removes a `.txnindex` left at this base;
    /// returns whether the recycled file was there to rename.
    async fn put_in_place(
        log_path: &Path,
        base_offset: i64,
        recycled: Option<&Path>,
    ) -> Result<bool, StorageError> {
        if recycled.is_some() && log_path.exists() {
            return Err(StorageError::Corrupt {
                segment_base_offset: base_offset,
                position: 0,
                reason: "new segment file already exists".into(),
            });
        }
        // On the blocking thread: a rename or unlink waits for room in the file system's
        // journal, which a busy device can hold up for a long time.
        let rename = recycled.map(|from| (from.to_path_buf(), log_path.to_path_buf()));
        let txn_index = txn_index::path_for(log_path);
        let reused = glommio::executor()
            .spawn_blocking(move || -> io::Result<bool> {
                let reused = match rename {
                    // Gone is fine: the reaper may have unlinked a file of the same name (a
                    // leftover of the previous run); a fresh file does the same job.
                    Some((from, to)) => match std::fs::rename(from, to) {
                        Ok(()) => true,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                        Err(e) => return Err(e),
                    },
                    None => false,
                };
                // A `.txnindex` left at this base (a segment truncated away) describes other
                // batches.
                match std::fs::remove_file(txn_index) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(reused),
                }
            })
            .await?;
        Ok(reused)
    }

    /// A segment of no batches yet, its file in place.
    fn new_empty(dir: &Path, base_offset: i64) -> Segment {
        Segment::new(
            dir,
            base_offset,
            // Opened by the first read: a topic of 10,000 partitions holds no descriptor for
            // the ones nobody reads.
            None,
            OffsetIndex::default(),
            TimeIndex::default(),
        )
    }

    /// Blocking: the segment's empty index files (the directory looks like Kafka's; they are
    /// filled when the segment closes) and a sync of the directory, which makes the new
    /// segment's entry durable.
    pub fn complete_creation(dir: &Path, base_offset: i64) -> io::Result<()> {
        let log_path = dir.join(file_name(base_offset, "log"));
        File::create(log_path.with_extension("index"))?;
        File::create(log_path.with_extension("timeindex"))?;
        File::open(dir)?.sync_all()
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// Which `Segment` this is, unique in the process: a segment replaced by a truncation or a
    /// compaction (new objects, whatever their base offsets and files) has another. Its read
    /// descriptor may be closed and opened again meanwhile (a roll's close, an idle release);
    /// its bytes below its size never change while it is the log's.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.get()
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset.get()
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.get()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn index_path(&self) -> PathBuf {
        self.log_path.with_extension("index")
    }

    pub fn time_index_path(&self) -> PathBuf {
        self.log_path.with_extension("timeindex")
    }

    pub fn index_entry_count(&self) -> usize {
        self.offset_index.borrow().len()
    }

    /// Accounts for one batch written at `position` (the current logical end): advances size and
    /// next offset and adds sparse index entries every `index_interval_bytes`, Kafka's rule.
    /// The only mutator of the indexes, shared by the writer and recovery so both build the same.
    pub fn record_batch(&self, position: u64, batch: &BatchMeta, index_interval_bytes: u32) {
        assert_eq!(
            position,
            self.size_bytes.get(),
            "batches must be contiguous"
        );
        assert!(
            batch.base_offset >= self.next_offset.get() && batch.last_offset >= batch.base_offset,
            "offsets must strictly increase: next {} got {}..={}",
            self.next_offset.get(),
            batch.base_offset,
            batch.last_offset
        );
        let relative_last = batch.last_offset - self.base_offset;
        assert!(
            relative_last <= i32::MAX as i64,
            "segment spans more than i32::MAX offsets"
        );
        let end = position + batch.len_bytes;
        assert!(end <= i32::MAX as u64, "segment larger than i32::MAX bytes");

        let max_timestamp = self.max_timestamp.get().max(batch.max_timestamp);
        if self.bytes_since_index_entry.get() >= index_interval_bytes as u64 {
            let relative_offset = (batch.base_offset - self.base_offset) as u32;
            self.offset_index.borrow_mut().push(OffsetEntry {
                relative_offset,
                position: position as u32,
            });
            let mut time_index = self.time_index.borrow_mut();
            // The first time entry is unconditional so "offset index non-empty" implies "time
            // index non-empty", which the staleness check relies on.
            if time_index
                .last()
                .is_none_or(|e| max_timestamp > e.timestamp)
            {
                time_index.push(TimeEntry {
                    timestamp: max_timestamp,
                    relative_offset,
                });
            }
            self.bytes_since_index_entry.set(0);
        }
        self.bytes_since_index_entry
            .set(self.bytes_since_index_entry.get() + batch.len_bytes);
        self.size_bytes.set(end);
        self.next_offset.set(batch.last_offset + 1);
        self.max_timestamp.set(max_timestamp);
    }

    /// File position to start scanning from for `offset`.
    pub fn lookup_position(&self, offset: i64) -> u64 {
        let relative = (offset - self.base_offset).clamp(0, i32::MAX as i64) as u32;
        self.offset_index
            .borrow()
            .lookup(relative)
            .map_or(0, |e| e.position as u64)
    }

    /// File position to start scanning from for the first record with a timestamp `>= timestamp`.
    pub fn lookup_timestamp_position(&self, timestamp: i64) -> u64 {
        match self.time_index.borrow().last_below(timestamp) {
            Some(e) => self.lookup_position(self.base_offset + e.relative_offset as i64),
            None => 0,
        }
    }

    /// Walks batch headers from `position` (a batch start) up to `end_bytes` with preads of a
    /// few KiB, calling `visit` for each until it breaks. Bytes below `end_bytes` were written
    /// by this broker, so anything that does not parse is reported as corruption, not a panic.
    pub fn scan_headers<T>(
        &self,
        position: u64,
        end_bytes: u64,
        max_batch_bytes: usize,
        visit: impl FnMut(u64, &BatchHeader) -> ControlFlow<T>,
    ) -> Result<Option<T>, StorageError> {
        self.scan_headers_in(position, end_bytes, max_batch_bytes, None, visit)
    }

    /// [`Self::scan_headers`], taking the headers that fall in `memory` (this file's bytes,
    /// read into memory from the position given, as by a cold fetch's O_DIRECT read) from
    /// there instead of the file.
    pub fn scan_headers_in<T>(
        &self,
        mut position: u64,
        end_bytes: u64,
        max_batch_bytes: usize,
        memory: Option<&Prefetched>,
        mut visit: impl FnMut(u64, &BatchHeader) -> ControlFlow<T>,
    ) -> Result<Option<T>, StorageError> {
        let mut buf = [0u8; HEADER_SCAN_BYTES];
        // File bytes [buf_start, buf_start + buf_len) are in `buf`.
        let mut buf_start = 0u64;
        let mut buf_len = 0usize;
        let mut next_offset_min = self.base_offset;
        while position < end_bytes {
            let header_end = position + HEADER_LEN as u64;
            if header_end > end_bytes {
                return Err(self.corrupt(position, "truncated batch header below the end"));
            }
            let in_memory = memory
                .and_then(|m| m.bytes_from(position))
                .filter(|bytes| bytes.len() >= HEADER_LEN);
            let header_bytes = match in_memory {
                Some(bytes) => bytes,
                None => {
                    if position < buf_start || header_end > buf_start + buf_len as u64 {
                        let want = (end_bytes - position).min(HEADER_SCAN_BYTES as u64) as usize;
                        buf_len = read_at_most(&*self.read_file()?, &mut buf[..want], position)?;
                        buf_start = position;
                        if buf_len < HEADER_LEN {
                            return Err(
                                self.corrupt(position, "file shorter than its logical size")
                            );
                        }
                    }
                    &buf[(position - buf_start) as usize..buf_len]
                }
            };
            let header = BatchHeader::parse(header_bytes, max_batch_bytes)
                .map_err(|e| self.corrupt(position, &e.to_string()))?;
            let next = position + header.total_len() as u64;
            if next > end_bytes {
                return Err(self.corrupt(position, "batch crosses the logical end"));
            }
            if header.base_offset < next_offset_min || header.last_offset_delta < 0 {
                return Err(self.corrupt(position, "batch offsets out of order"));
            }
            next_offset_min = header.base_offset + header.last_offset_delta as i64 + 1;
            if let ControlFlow::Break(found) = visit(position, &header) {
                return Ok(Some(found));
            }
            position = next;
        }
        Ok(None)
    }

    /// The first batch below `end_bytes` whose last offset is `>= offset`, with its position.
    pub fn find_batch(
        &self,
        offset: i64,
        end_bytes: u64,
        max_batch_bytes: usize,
    ) -> Result<Option<(u64, BatchHeader)>, StorageError> {
        self.find_batch_in(offset, end_bytes, max_batch_bytes, None)
    }

    /// [`Self::find_batch`], with the headers in `memory` taken from there
    /// ([`Self::scan_headers_in`]).
    pub fn find_batch_in(
        &self,
        offset: i64,
        end_bytes: u64,
        max_batch_bytes: usize,
        memory: Option<&Prefetched>,
    ) -> Result<Option<(u64, BatchHeader)>, StorageError> {
        let start = self.lookup_position(offset);
        self.scan_headers_in(
            start,
            end_bytes,
            max_batch_bytes,
            memory,
            |position, header| {
                if header.last_offset() >= offset {
                    ControlFlow::Break((position, *header))
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
    }

    /// Reads one whole batch (its length was bounded by `max_batch_bytes` when parsed).
    pub fn read_batch(&self, position: u64, header: &BatchHeader) -> Result<Vec<u8>, StorageError> {
        let mut bytes = vec![0u8; header.total_len()];
        let n = read_at_most(&*self.read_file()?, &mut bytes, position)?;
        if n != bytes.len() {
            return Err(self.corrupt(position, "batch shorter than its length"));
        }
        Ok(bytes)
    }

    /// Asks the kernel to start reading the bytes a consumer fetching `[position, position +
    /// len)` will want next (the fetch itself and up to [`READ_AHEAD_BYTES`] past it) into the
    /// page cache that sendfile reads from, when the kernel's own read-ahead is too small for
    /// this device (see `read_ahead_piece_bytes`). Returns the bytes hinted.
    ///
    /// `POSIX_FADV_WILLNEED` only queues the reads, but allocates their page cache before it
    /// returns, so one call hints at most `READ_AHEAD_STEP_BYTES`. Hints stop at the last whole
    /// page below the logical end: the partial last page of the active segment is rewritten by
    /// O_DIRECT writes, and a read of it racing one could leave stale bytes in the page cache.
    pub fn hint_read_ahead(&self, position: u64, len: u64) -> u64 {
        let Some(file) = self.read_file.borrow().clone() else {
            return 0; // the read that wants the hint opened it; released since: nothing to do
        };
        let piece = self.read_ahead_piece_bytes.get().unwrap_or(0);
        if piece == 0 {
            return 0;
        }
        let limit = self.size_bytes() - self.size_bytes() % PAGE_BYTES;
        let Some((start, end)) = self.read_ahead.borrow_mut().next_hint(position, len, limit)
        else {
            return 0;
        };
        let mut at = start;
        while at < end {
            let n = piece.min(end - at);
            // SAFETY: posix_fadvise on a descriptor this segment keeps open; no memory passed.
            let failed = unsafe {
                libc::posix_fadvise(
                    file.as_raw_fd(),
                    at as libc::off_t,
                    n as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                )
            } != 0;
            if failed {
                break; // advice only: reads still work, just without the head start
            }
            at += n;
        }
        at - start
    }

    /// Makes fetches hint read-ahead in pieces of `piece_bytes` whatever the device (0: never).
    #[cfg(test)]
    pub(crate) fn set_read_ahead_piece_bytes(&self, piece_bytes: u64) {
        self.read_ahead_piece_bytes.set(Some(piece_bytes));
    }

    /// Bytes `[align_down(size), size)`: the partial last page the writer must rewrite.
    pub fn read_tail_page(&self, page_bytes: u64) -> Result<Vec<u8>, StorageError> {
        let size = self.size_bytes();
        let start = size - size % page_bytes;
        let mut tail = vec![0u8; (size - start) as usize];
        if tail.is_empty() {
            return Ok(tail);
        }
        let n = read_at_most(&*self.read_file()?, &mut tail, start)?;
        if n != tail.len() {
            return Err(self.corrupt(start, "file shorter than its logical size"));
        }
        Ok(tail)
    }

    /// Writes both index files from memory. Buffered and not synced: they are rebuilt when found
    /// stale, so losing them costs a rescan, never data.
    pub fn persist_indexes(&self) -> io::Result<()> {
        self.encode_indexes().write()
    }

    /// Both index files' bytes, to write elsewhere (a blocking thread) with
    /// [`EncodedIndexes::write`].
    pub fn encode_indexes(&self) -> EncodedIndexes {
        EncodedIndexes {
            files: [
                (self.index_path(), self.offset_index.borrow().encode()),
                (self.time_index_path(), self.time_index.borrow().encode()),
            ],
        }
    }

    /// Marks the segment as being closed off the writer's path (see the `closing` field).
    pub fn set_closing(&self, closing: bool) {
        self.closing.set(closing);
    }

    /// Whether a roll's closing of this segment is still running.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Replaces the segment's aborted transactions (recovery); `dirty`: the file lags.
    pub fn set_aborted(&self, entries: Vec<TxnIndexEntry>, dirty: bool) {
        *self.aborted.borrow_mut() = entries;
        self.aborted_dirty.set(dirty);
    }

    /// The aborted transactions held in memory (the active segment's; empty for a closed one,
    /// whose entries are in its `.txnindex` file).
    pub fn aborted_entries(&self) -> Vec<TxnIndexEntry> {
        self.aborted.borrow().clone()
    }

    /// An abort marker written to this (active) segment.
    pub fn record_aborted(&self, entry: TxnIndexEntry) {
        let mut aborted = self.aborted.borrow_mut();
        assert!(
            entry.last_offset >= self.base_offset
                && aborted
                    .last()
                    .is_none_or(|e| e.last_offset < entry.last_offset),
            "abort markers are recorded in offset order in their segment"
        );
        aborted.push(entry);
        self.aborted_dirty.set(true);
    }

    /// The `.txnindex` path and entries to write if the file lags behind memory (marked
    /// written: the caller writes it or fails the log).
    pub fn take_txn_index_to_persist(&self) -> Option<(PathBuf, Vec<TxnIndexEntry>)> {
        if !self.aborted_dirty.replace(false) {
            return None;
        }
        Some((self.log_path.clone(), self.aborted.borrow().clone()))
    }

    /// Writes the `.txnindex` durably if it lags (blocking; only segments with aborts).
    pub fn persist_txn_index(&self) -> io::Result<()> {
        match self.take_txn_index_to_persist() {
            Some((log_path, entries)) => txn_index::write_durably(&log_path, &entries),
            None => Ok(()),
        }
    }

    /// Called once the segment stops growing.
    pub fn shrink_indexes(&self) {
        self.offset_index.borrow_mut().shrink_to_fit();
        self.time_index.borrow_mut().shrink_to_fit();
    }

    /// The timestamp time retention compares: the largest record timestamp, or the file's
    /// modification time when no batch carried one (Kafka's fallback).
    pub fn retention_timestamp(&self) -> i64 {
        let max = self.max_timestamp();
        if max >= 0 {
            return max;
        }
        std::fs::metadata(&self.log_path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(NO_TIMESTAMP, |d| d.as_millis() as i64)
    }

    /// Unlinks the segment's files. Open handles (e.g. a `ReadSlice` on another core) keep
    /// the bytes readable until they are dropped.
    pub fn delete_files(&self) -> io::Result<()> {
        self.doomed().delete().map(drop)
    }

    /// What deleting this segment takes, as a `Send` value: its paths and its read handle, so
    /// the unlinks and the last close (where the kernel frees the file's blocks, which takes
    /// milliseconds per GiB) can run off the shard ([`DoomedFiles::delete`] on a blocking
    /// thread). Until then, reads through other handles keep working.
    pub fn doomed(&self) -> DoomedFiles {
        DoomedFiles {
            paths: vec![
                self.log_path.clone(),
                self.index_path(),
                self.time_index_path(),
                txn_index::path_for(&self.log_path),
            ],
            handles: self.read_file.borrow().iter().cloned().collect(),
            recycle: Vec::new(),
        }
    }

    pub fn corrupt(&self, position: u64, reason: &str) -> StorageError {
        StorageError::Corrupt {
            segment_base_offset: self.base_offset,
            position,
            reason: reason.to_string(),
        }
    }
}

/// The extension a deleted segment's file takes while it waits in its partition's directory
/// for a new segment to reuse it (recovery only takes `.log` files for segments).
pub const RECYCLED_SEGMENT_EXTENSION: &str = "reuse";

/// Where a deleted segment's file waits for reuse.
pub fn recycled_path(log_path: &Path) -> PathBuf {
    log_path.with_extension(RECYCLED_SEGMENT_EXTENSION)
}

/// Files to remove, with the open handles whose last close must happen with them.
#[derive(Debug, Default)]
pub struct DoomedFiles {
    pub paths: Vec<PathBuf>,
    pub handles: Vec<Arc<File>>,
    /// Segment files to keep for reuse (renamed to [`RECYCLED_SEGMENT_EXTENSION`]) instead of
    /// unlinking them, with every read handle of theirs still alive: freeing and reallocating
    /// a segment's blocks costs the file system (and with online discard, the device) about as
    /// much as writing them.
    pub recycle: Vec<(PathBuf, Vec<Arc<File>>)>,
}

impl DoomedFiles {
    pub fn extend(&mut self, other: DoomedFiles) {
        self.paths.extend(other.paths);
        self.handles.extend(other.handles);
        self.recycle.extend(other.recycle);
    }

    /// Asks to keep `segment`'s file (one of the paths) for reuse instead of unlinking it.
    pub fn recycle(&mut self, segment: &Segment) {
        let log_path = segment.log_path();
        self.paths.retain(|p| p != log_path);
        let live: Vec<Arc<File>> = segment
            .read_files_handed_out
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        self.handles
            .retain(|h| !live.iter().any(|l| Arc::ptr_eq(h, l)));
        self.recycle.push((log_path.to_path_buf(), live));
    }

    /// Renames the files to recycle that nothing reads any more, unlinks the paths (and the
    /// files to recycle that are still being read; missing ones are fine), then drops the
    /// handles. Returns where the recycled files are now. Blocking.
    ///
    /// A file still being read (a fetch response sending from it, which holds its handle)
    /// must keep its bytes until the send ends, so it is not reused; no new reader can get a
    /// handle once its segment left the log.
    pub fn delete(mut self) -> io::Result<Vec<PathBuf>> {
        let mut recycled = Vec::new();
        for (path, handles) in std::mem::take(&mut self.recycle) {
            // Each handle is then held here only: no send reads through it any more.
            if handles.iter().all(|h| Arc::strong_count(h) == 1) {
                let reuse = recycled_path(&path);
                std::fs::rename(&path, &reuse)?;
                recycled.push(reuse);
            } else {
                self.paths.push(path);
            }
            self.handles.extend(handles);
        }
        for path in &self.paths {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        drop(self.handles);
        Ok(recycled)
    }

    /// [`Self::delete`] on glommio's blocking-work thread pool, so the shard keeps serving.
    pub async fn delete_off_shard(self) -> io::Result<Vec<PathBuf>> {
        glommio::executor()
            .spawn_blocking(move || self.delete())
            .await
    }
}

thread_local! {
    /// Devices (`st_dev`) whose O_DIRECT polling support glommio has probed on this thread.
    static PROBED_DEVICES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// One probe at a time per thread: a shard opening thousands of logs at once would
    /// otherwise probe once per log (each writes, opens and removes a file) before the first
    /// probe finishes.
    static PROBE_LOCK: std::rc::Rc<glommio::sync::Semaphore> =
        std::rc::Rc::new(glommio::sync::Semaphore::new(1));
}

/// Makes glommio's io_uring polling probe for `dir`'s device run on a file that holds data.
///
/// glommio 0.9 decides once per thread and device, at the first `dma_open`, whether the device
/// supports polled I/O, by reading the first block of the file being opened. On an empty file
/// (a new segment, or an active segment that was just rolled) that read succeeds without
/// reaching the device, so glommio wrongly enables polling; from then on every O_DIRECT *read*
/// on that device fails with EOPNOTSUPP (writes that allocate blocks are not polled, so they
/// still work). Opening a small file with data first, once per thread and device, gets the
/// right answer cached before any segment file is opened.
pub async fn prime_direct_io_probe(dir: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::MetadataExt;
    let device = std::fs::metadata(dir)?.dev();
    let probed = || PROBED_DEVICES.with(|p| p.borrow().contains(&device));
    if probed() {
        return Ok(());
    }
    let lock = PROBE_LOCK.with(|l| l.clone());
    let _permit = lock
        .acquire_permit(1)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    if probed() {
        return Ok(()); // another log's open probed it while this one waited
    }
    let path = dir.join(".direct-io-probe");
    // Buffered write: the O_DIRECT probe read then flushes it and reads the device itself.
    std::fs::write(&path, [0x5a; 4096])?;
    let opened = OpenOptions::new().read(true).dma_open(&path).await;
    let removed = std::fs::remove_file(&path);
    opened?.close().await?;
    removed?;
    PROBED_DEVICES.with(|p| p.borrow_mut().push(device));
    Ok(())
}

/// The size of an open segment file, asked of its descriptor. glommio's `DmaFile::file_size`
/// stats the path the file was opened by, which no longer names it once a recycled file
/// prepared for a roll is renamed into place (the stat then fails, or finds another file), and
/// it goes through an io_uring worker thread; `fstat` asks the open inode, without I/O.
pub fn open_file_bytes(file: &DmaFile) -> io::Result<u64> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: the descriptor is open for as long as `file` is borrowed, and fstat writes a
    // whole `stat` when it returns 0.
    let stat = unsafe {
        if libc::fstat(file.as_raw_fd(), stat.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        stat.assume_init()
    };
    Ok(stat.st_size as u64)
}

/// fdatasync on the directory, so a created or removed segment name survives a crash.
pub async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let handle = glommio::io::Directory::open(dir).await?;
    let synced = handle.sync().await;
    handle.close().await?;
    synced?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recycled file is opened under its `.reuse` name and renamed into place at the roll:
    /// its size is still readable (glommio's `file_size` stats the old name: ENOENT).
    #[test]
    fn an_open_files_size_is_read_after_it_was_renamed() {
        crate::storage::testutil::run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let reuse = dir.path().join(file_name(0, "reuse"));
            std::fs::write(&reuse, vec![0u8; 3 * PAGE_BYTES as usize]).unwrap();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(&reuse)
                .await
                .unwrap();
            std::fs::rename(&reuse, dir.path().join(file_name(100, "log"))).unwrap();
            assert_eq!(open_file_bytes(&file).unwrap(), 3 * PAGE_BYTES);
            file.close().await.unwrap();
        });
    }

    #[test]
    fn kafka_file_names() {
        assert_eq!(file_name(0, "log"), "00000000000000000000.log");
        assert_eq!(file_name(1234, "index"), "00000000000000001234.index");
        assert_eq!(parse_log_file_name("00000000000000001234.log"), Some(1234));
        assert_eq!(parse_log_file_name("00000000000000001234.index"), None);
        assert_eq!(parse_log_file_name("1234.log"), None);
        assert_eq!(parse_log_file_name("0000000000000000123x.log"), None);
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn sequential_fetches_extend_one_window_without_hinting_twice() {
        let mut ra = ReadAheadStreams::default();
        let limit = 1 << 30;
        let mut hinted = Vec::new();
        let mut position = 0;
        for _ in 0..100 {
            if let Some(range) = ra.next_hint(position, MIB, limit) {
                hinted.push(range);
            }
            let (_, ahead) = *hinted.last().unwrap();
            assert!(ahead >= position + MIB, "the fetch itself is hinted");
            position += MIB - 300; // the next fetch starts at the cut batch
        }
        for pair in hinted.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "contiguous, no range hinted twice");
        }
        assert!(hinted.iter().all(|(s, e)| e - s <= READ_AHEAD_STEP_BYTES));
        let (_, end) = *hinted.last().unwrap();
        assert!(
            end >= position + READ_AHEAD_BYTES - READ_AHEAD_MIN_STEP_BYTES,
            "the window stays about READ_AHEAD_BYTES ahead: {end} vs {position}"
        );
        assert!(
            hinted
                .iter()
                .all(|(s, e)| e - s >= READ_AHEAD_MIN_STEP_BYTES),
            "no syscall for a few pages"
        );
    }

    #[test]
    fn hints_stop_at_the_limit_and_resume_when_it_grows() {
        let mut ra = ReadAheadStreams::default();
        assert_eq!(ra.next_hint(0, MIB, 3 * MIB), Some((0, 3 * MIB)));
        assert_eq!(ra.next_hint(MIB, MIB, 3 * MIB), None);
        // A tailing consumer: the log grows by a few pages, hinted even below the min step.
        assert_eq!(
            ra.next_hint(2 * MIB, MIB, 3 * MIB + 8192),
            Some((3 * MIB, 3 * MIB + 8192))
        );
        assert_eq!(ra.next_hint(3 * MIB, 8192, 3 * MIB + 8192), None);
    }

    #[test]
    fn interleaved_consumers_keep_their_own_windows() {
        let mut ra = ReadAheadStreams::default();
        let limit = 1 << 30;
        let (a, b) = (0, 500 * MIB);
        let first_a = ra.next_hint(a, MIB, limit).unwrap();
        let first_b = ra.next_hint(b, MIB, limit).unwrap();
        assert_eq!((first_a.0, first_b.0), (a, b));
        // Each continues from its own hinted end; nothing is hinted twice.
        let next_a = ra.next_hint(a + MIB, MIB, limit).unwrap();
        let next_b = ra.next_hint(b + MIB, MIB, limit).unwrap();
        assert_eq!((next_a.0, next_b.0), (first_a.1, first_b.1));
        // A consumer inside a window already hinted joins it instead of hinting it again.
        let joined = ra.next_hint(a + MIB + 4096, 4096, limit).unwrap();
        assert_eq!(joined.0, next_a.1);
        // More consumers than streams: the oldest stream is replaced, nothing breaks.
        for k in 2..10 {
            assert_eq!(
                ra.next_hint(k * 100 * MIB, MIB, limit).unwrap().0,
                k * 100 * MIB
            );
        }
    }

    #[test]
    fn segments_hint_only_whole_pages_below_the_logical_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(0, "log"));
        std::fs::write(&path, vec![0u8; 3 * 4096]).unwrap();
        let segment = Segment::new(
            dir.path(),
            0,
            Some(File::open(&path).unwrap()),
            OffsetIndex::default(),
            TimeIndex::default(),
        );
        segment.set_read_ahead_piece_bytes(4096);
        let meta = BatchMeta {
            base_offset: 0,
            last_offset: 0,
            max_timestamp: 1,
            len_bytes: 2 * 4096 + 100,
        };
        segment.record_batch(0, &meta, 4096);
        assert_eq!(
            segment.hint_read_ahead(0, 100),
            2 * 4096,
            "not the partial last page"
        );
        assert_eq!(segment.hint_read_ahead(100, 100), 0, "already hinted");
        segment.set_read_ahead_piece_bytes(0);
        assert_eq!(segment.hint_read_ahead(5 * 4096, 100), 0, "off");
    }

    #[test]
    fn record_batch_adds_sparse_entries_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(100, "log"));
        File::create(&path).unwrap();
        let segment = Segment::new(
            dir.path(),
            100,
            Some(File::open(&path).unwrap()),
            OffsetIndex::default(),
            TimeIndex::default(),
        );
        let mut position = 0;
        for i in 0..10i64 {
            let meta = BatchMeta {
                base_offset: 100 + i * 2,
                last_offset: 101 + i * 2,
                max_timestamp: 1000 - i, // decreasing: only the first time entry is written
                len_bytes: 1000,
            };
            segment.record_batch(position, &meta, 2500);
            position += 1000;
        }
        // Entries before batches 3, 6 and 9 (at >= 2500 bytes since the last entry).
        let offsets = segment.offset_index.borrow().entries().to_vec();
        assert_eq!(
            offsets,
            vec![
                OffsetEntry {
                    relative_offset: 6,
                    position: 3000
                },
                OffsetEntry {
                    relative_offset: 12,
                    position: 6000
                },
                OffsetEntry {
                    relative_offset: 18,
                    position: 9000
                },
            ]
        );
        let times = segment.time_index.borrow().entries().to_vec();
        assert_eq!(
            times,
            vec![TimeEntry {
                timestamp: 1000,
                relative_offset: 6
            }]
        );
        assert_eq!(segment.size_bytes(), 10_000);
        assert_eq!(segment.next_offset(), 120);
        assert_eq!(segment.max_timestamp(), 1000);
        assert_eq!(segment.lookup_position(111), 3000);
        assert_eq!(segment.lookup_position(112), 6000);
        assert_eq!(segment.lookup_position(100), 0);
    }
}
