//! One segment: a `<base_offset:020>.log` file of whole batches, its in-memory sparse indexes,
//! and the pread-based header scans reads use to find a batch.
//!
//! Owned by the shard that owns the partition (shared there as `Rc<Segment>` between the log and
//! its writer task). Mutable fields are `Cell`/`RefCell` and only the writer task (appends) and
//! recovery (before the log is shared) change them.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use glommio::io::{DmaFile, OpenOptions};

use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use super::StorageError;
use crate::protocol::record_batch::{BatchHeader, HEADER_LEN};

/// Kafka's "no timestamp" value; also the max timestamp of an empty segment.
pub const NO_TIMESTAMP: i64 = -1;

/// Bytes read per pread when walking batch headers; with the default 4 KiB index interval one
/// or two reads find any batch.
const HEADER_SCAN_BYTES: usize = 4096;

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

#[derive(Debug)]
pub struct Segment {
    base_offset: i64,
    log_path: PathBuf,
    /// Page-cache handle for preads and sendfile; never used for writes.
    read_file: Arc<File>,
    /// Logical size: bytes of whole batches written (for the active segment: exactly the bytes
    /// below the high watermark). The file may be longer by zero padding.
    size_bytes: Cell<u64>,
    /// Last offset + 1 of the batches written, or `base_offset` when empty.
    next_offset: Cell<i64>,
    max_timestamp: Cell<i64>,
    bytes_since_index_entry: Cell<u64>,
    offset_index: RefCell<OffsetIndex>,
    time_index: RefCell<TimeIndex>,
}

impl Segment {
    /// A segment whose first `size_bytes` are described by `offset_index`/`time_index`, whose
    /// last index entry sits at the batch starting at `size_bytes` (or which is empty). Recovery
    /// then feeds the batches from there through [`Segment::record_batch`].
    pub fn new(
        dir: &Path,
        base_offset: i64,
        read_file: File,
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
        Segment {
            base_offset,
            log_path: dir.join(file_name(base_offset, "log")),
            read_file: Arc::new(read_file),
            size_bytes: Cell::new(size_bytes),
            next_offset: Cell::new(next_offset),
            max_timestamp: Cell::new(max_timestamp),
            bytes_since_index_entry: Cell::new(0),
            offset_index: RefCell::new(offset_index),
            time_index: RefCell::new(time_index),
        }
    }

    /// Creates the files of a new, empty segment and returns it with its O_DIRECT write handle.
    pub async fn create(dir: &Path, base_offset: i64) -> Result<(Segment, DmaFile), StorageError> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let dma = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(&log_path)
            .await?;
        let existing_bytes = dma.file_size().await?;
        if existing_bytes != 0 {
            // Only recovery decides what an existing file holds; never write over one.
            return Err(StorageError::Corrupt {
                segment_base_offset: base_offset,
                position: 0,
                reason: format!("new segment file already holds {existing_bytes} bytes"),
            });
        }
        let read_file = File::open(&log_path)?;
        // Empty index files keep the directory looking like Kafka's; they are filled on close.
        File::create(log_path.with_extension("index"))?;
        File::create(log_path.with_extension("timeindex"))?;
        sync_dir(dir).await?;
        let segment = Segment::new(
            dir,
            base_offset,
            read_file,
            OffsetIndex::default(),
            TimeIndex::default(),
        );
        Ok((segment, dma))
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
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

    pub fn read_file(&self) -> &Arc<File> {
        &self.read_file
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
        mut position: u64,
        end_bytes: u64,
        max_batch_bytes: usize,
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
            if position < buf_start || header_end > buf_start + buf_len as u64 {
                let want = (end_bytes - position).min(HEADER_SCAN_BYTES as u64) as usize;
                buf_len = read_at_most(&self.read_file, &mut buf[..want], position)?;
                buf_start = position;
                if buf_len < HEADER_LEN {
                    return Err(self.corrupt(position, "file shorter than its logical size"));
                }
            }
            let at = (position - buf_start) as usize;
            let header = BatchHeader::parse(&buf[at..buf_len], max_batch_bytes)
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
        let start = self.lookup_position(offset);
        self.scan_headers(start, end_bytes, max_batch_bytes, |position, header| {
            if header.last_offset() >= offset {
                ControlFlow::Break((position, *header))
            } else {
                ControlFlow::Continue(())
            }
        })
    }

    /// Reads one whole batch (its length was bounded by `max_batch_bytes` when parsed).
    pub fn read_batch(&self, position: u64, header: &BatchHeader) -> Result<Vec<u8>, StorageError> {
        let mut bytes = vec![0u8; header.total_len()];
        let n = read_at_most(&self.read_file, &mut bytes, position)?;
        if n != bytes.len() {
            return Err(self.corrupt(position, "batch shorter than its length"));
        }
        Ok(bytes)
    }

    /// Bytes `[align_down(size), size)`: the partial last page the writer must rewrite.
    pub fn read_tail_page(&self, page_bytes: u64) -> Result<Vec<u8>, StorageError> {
        let size = self.size_bytes();
        let start = size - size % page_bytes;
        let mut tail = vec![0u8; (size - start) as usize];
        let n = read_at_most(&self.read_file, &mut tail, start)?;
        if n != tail.len() {
            return Err(self.corrupt(start, "file shorter than its logical size"));
        }
        Ok(tail)
    }

    /// Writes both index files from memory. Buffered and not synced: they are rebuilt when found
    /// stale, so losing them costs a rescan, never data.
    pub fn persist_indexes(&self) -> io::Result<()> {
        std::fs::write(self.index_path(), self.offset_index.borrow().encode())?;
        std::fs::write(self.time_index_path(), self.time_index.borrow().encode())?;
        Ok(())
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
        self.read_file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(NO_TIMESTAMP, |d| d.as_millis() as i64)
    }

    /// Unlinks the segment's files. Open handles (e.g. a `ReadSlice` on another core) keep
    /// the bytes readable until they are dropped.
    pub fn delete_files(&self) -> io::Result<()> {
        for path in [
            self.log_path.clone(),
            self.index_path(),
            self.time_index_path(),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn corrupt(&self, position: u64, reason: &str) -> StorageError {
        StorageError::Corrupt {
            segment_base_offset: self.base_offset,
            position,
            reason: reason.to_string(),
        }
    }
}

thread_local! {
    /// Devices (`st_dev`) whose O_DIRECT polling support glommio has probed on this thread.
    static PROBED_DEVICES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
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
    if PROBED_DEVICES.with(|p| p.borrow().contains(&device)) {
        return Ok(());
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

    #[test]
    fn kafka_file_names() {
        assert_eq!(file_name(0, "log"), "00000000000000000000.log");
        assert_eq!(file_name(1234, "index"), "00000000000000001234.index");
        assert_eq!(parse_log_file_name("00000000000000001234.log"), Some(1234));
        assert_eq!(parse_log_file_name("00000000000000001234.index"), None);
        assert_eq!(parse_log_file_name("1234.log"), None);
        assert_eq!(parse_log_file_name("0000000000000000123x.log"), None);
    }

    #[test]
    fn record_batch_adds_sparse_entries_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(100, "log"));
        File::create(&path).unwrap();
        let segment = Segment::new(
            dir.path(),
            100,
            File::open(&path).unwrap(),
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
