//! Recovery: find the valid prefix of segment bytes, and rebuild a log's in-memory state on open.
//!
//! The active (last) segment is always scanned from its start, every batch CRC-checked, and cut
//! at the first invalid byte (torn write, CRC mismatch, garbage, the zero padding O_DIRECT
//! leaves past the logical end). Closed segments were truncated and fdatasync'd when they were
//! rolled, so only their indexes are checked; a stale index costs a rescan of that segment.
//!
//! The active segment is read with O_DIRECT (`scan_file_direct`): four 2 MiB reads in flight
//! on the shard's io_uring while the CRC scan (~0.1 s per GiB) runs over the chunk that already
//! arrived, and the shard serves other work while it waits. Appends are O_DIRECT, so after a
//! machine crash (or when nobody consumed the tail) the bytes are not in the page cache, and a
//! buffered scan is bound by the kernel's read-ahead, pays a copy and a page-cache fill per
//! byte, and blocks the shard in pread; the direct scan reads at the device's bandwidth and
//! copies only the batches that straddle two chunks. Chunks whose pages are all in the page
//! cache (consumers read them before a process crash or a clean restart; `mincore` tells) are
//! copied from it instead: O_DIRECT would read them from the device again (a cached 1 GiB
//! segment: 0.16 s copied, 0.9 s re-read here). Recovery leaves the page cache as it found it;
//! consumers that then catch up rely on the read fds' read-ahead
//! ([`Segment::hint_read_ahead`]). If O_DIRECT reads are refused the scan falls back to the
//! page cache. Closed segments (index checks, rare rescans) use chunked buffered preads
//! (`scan_file`). Both scans feed the same pure validator, `scan_batches` (under
//! [`scan_valid_prefix`], the fuzz target).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::Path;
use std::rc::Rc;

use futures::StreamExt;
use glommio::io::{DmaFile, OpenOptions};
use tracing::{info, warn};

use super::epoch_cache::EpochEntry;
use super::index::{OffsetIndex, TimeIndex};
use super::segment::{self, read_at_most, BatchMeta, Segment};
use super::{LogConfig, StorageError, PAGE_BYTES};
use crate::protocol::record_batch::{validate, BatchError, BatchHeader, LOG_OVERHEAD};

/// Bytes read per pread while scanning a segment: large enough to amortise syscalls (1 GiB is
/// 128 reads), small enough to stay cache-friendly.
const SCAN_CHUNK_BYTES: usize = 8 << 20;

/// Bytes per O_DIRECT read of the active segment's scan, and how many such reads are in flight.
/// The device always has reads queued while the CRC scan (about 0.1 s per GiB with hardware
/// CRC-32C) runs over the chunk that arrived. 8 MiB in flight fits glommio's default
/// registered I/O memory (10 MiB per executor), so the reads use pre-pinned buffers: measured
/// on a 1.1 GiB segment, 4 x 8 MiB reads (heap buffers, faulted in again and again) cost
/// 0.35 s of system CPU against 0.05 s for 4 x 2 MiB, at the same wall time; 1 x 8 MiB up to
/// 2 x 16 MiB all read at the device's bandwidth there.
const DIRECT_READ_BYTES: usize = 2 << 20;
const DIRECT_READS_IN_FLIGHT: usize = 4;

/// Batches per producer id kept from the recovery scan: Kafka deduplicates against the last
/// five batches of each producer, so older ones carry no state.
const PRODUCER_BATCHES_KEPT: usize = 5;

/// Why a scan stopped before the end of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanStop {
    /// The bytes at the stop position are not a whole valid batch (this includes a torn
    /// write, `Truncated`, and zero padding, `BadLength(0)`).
    Invalid(BatchError),
    /// The batch's offsets do not follow the previous batch, or overflow the allowed range.
    OffsetOutOfOrder {
        base_offset: i64,
        expected_at_least: i64,
    },
}

/// The valid prefix of a segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanResult {
    /// Length of the longest prefix made of whole valid batches.
    pub valid_bytes: usize,
    /// Headers of the batches in that prefix, in order.
    pub batches: Vec<BatchHeader>,
    /// `None` when every byte was valid.
    pub stop: Option<ScanStop>,
}

/// Offsets a scan accepts next; carried across chunks and segments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OffsetBounds {
    /// The next batch's base offset must be at least this (previous last offset + 1).
    pub next_min: i64,
    /// No batch may end past this (segment base + i32::MAX for relative offsets).
    pub last_max: i64,
}

/// The length of the longest valid prefix of a segment's bytes (whole batches, magic 2, valid
/// lengths, CRC-32C ok, offsets non-negative and strictly increasing), plus its batch headers.
///
/// Pure, so it doubles as a fuzz target; allocation is bounded by `bytes.len()`.
pub fn scan_valid_prefix(bytes: &[u8], max_batch_bytes: usize) -> ScanResult {
    let mut bounds = OffsetBounds {
        next_min: 0,
        last_max: i64::MAX,
    };
    let mut batches = Vec::new();
    let (valid_bytes, stop) = scan_batches(bytes, max_batch_bytes, &mut bounds, |_, header| {
        batches.push(*header)
    });
    ScanResult {
        valid_bytes,
        batches,
        stop,
    }
}

/// Validates batches from the start of `bytes`, calling `on_batch(position, header)` for each
/// valid one. Returns the valid length and why it stopped (`None`: all bytes consumed).
pub(crate) fn scan_batches(
    bytes: &[u8],
    max_batch_bytes: usize,
    bounds: &mut OffsetBounds,
    mut on_batch: impl FnMut(usize, &BatchHeader),
) -> (usize, Option<ScanStop>) {
    let mut position = 0;
    while position < bytes.len() {
        let rest = &bytes[position..];
        // Parse first so a corrupt length is bounded before it is used to slice.
        let header = match BatchHeader::parse(rest, max_batch_bytes) {
            Ok(header) => header,
            Err(e) => return (position, Some(ScanStop::Invalid(e))),
        };
        if rest.len() < header.total_len() {
            return (position, Some(ScanStop::Invalid(BatchError::Truncated)));
        }
        let header = match validate(&rest[..header.total_len()], max_batch_bytes) {
            Ok(header) => header,
            Err(e) => return (position, Some(ScanStop::Invalid(e))),
        };
        // base_offset is outside the CRC, so it must be checked on its own.
        let last_offset = header
            .base_offset
            .checked_add(header.last_offset_delta as i64);
        match last_offset {
            Some(last) if header.base_offset >= bounds.next_min && last <= bounds.last_max => {
                on_batch(position, &header);
                bounds.next_min = last + 1;
                position += header.total_len();
            }
            _ => {
                let stop = ScanStop::OffsetOutOfOrder {
                    base_offset: header.base_offset,
                    expected_at_least: bounds.next_min,
                };
                return (position, Some(stop));
            }
        }
    }
    (position, None)
}

/// Result of scanning a file region.
#[derive(Debug)]
pub(crate) struct FileScan {
    /// File position where the valid batches end.
    pub valid_end: u64,
    pub stop: Option<ScanStop>,
}

/// Scans `file` from `start` (a batch boundary) to `end`, reading `chunk_bytes` at a time and
/// carrying a batch split by a chunk boundary over to the next read.
pub(crate) fn scan_file(
    file: &File,
    (start, end): (u64, u64),
    chunk_bytes: usize,
    max_batch_bytes: usize,
    bounds: &mut OffsetBounds,
    mut on_batch: impl FnMut(u64, &BatchHeader),
) -> io::Result<FileScan> {
    if start >= end {
        return Ok(FileScan {
            valid_end: start,
            stop: None,
        });
    }
    // The carried-over part of a batch is shorter than max_batch_bytes, so a chunk one byte
    // larger always makes progress and always fits a whole valid batch.
    let chunk_bytes = chunk_bytes.max(max_batch_bytes + 1);
    let capacity = chunk_bytes.min((end - start) as usize);
    let mut buf = vec![0u8; capacity];
    let mut filled = 0usize; // bytes of `buf` holding file data
    let mut buf_position = start; // file position of buf[0]
    let mut read_position = start;
    loop {
        let want = (capacity - filled).min((end - read_position) as usize);
        let n = read_at_most(file, &mut buf[filled..filled + want], read_position)?;
        filled += n;
        read_position += n as u64;
        // A short read means the file is shorter than `end`: treat it as the end.
        let at_end = read_position >= end || n < want;
        let (valid, stop) = scan_batches(&buf[..filled], max_batch_bytes, bounds, |p, h| {
            on_batch(buf_position + p as u64, h)
        });
        match stop {
            Some(ScanStop::Invalid(BatchError::Truncated)) if !at_end => {
                buf.copy_within(valid..filled, 0);
                filled -= valid;
                buf_position += valid as u64;
            }
            None if !at_end => {
                filled = 0;
                buf_position += valid as u64;
            }
            stop => {
                return Ok(FileScan {
                    valid_end: buf_position + valid as u64,
                    stop,
                })
            }
        }
    }
}

/// Scans `file` (opened with O_DIRECT) from `start` (a batch boundary) to `end` like
/// [`scan_file`], with `reads_in_flight` aligned reads of `read_bytes` queued ahead of the
/// scan. Batches are validated in place in the read buffers; only a batch split by a chunk
/// boundary is copied, into a carry buffer completed from the next chunk.
///
/// With `page_cache` (a buffered handle to the same file), a chunk whose pages are all in the
/// page cache is copied from there instead (memory speed, where O_DIRECT would read the device
/// again): after a process crash or a clean restart, whatever consumers read recently is
/// still cached.
pub(crate) async fn scan_file_direct(
    file: &DmaFile,
    page_cache: Option<&File>,
    (start, end): (u64, u64),
    (read_bytes, reads_in_flight): (usize, usize),
    max_batch_bytes: usize,
    bounds: &mut OffsetBounds,
    mut on_batch: impl FnMut(u64, &BatchHeader),
) -> Result<FileScan, StorageError> {
    if start >= end {
        return Ok(FileScan {
            valid_end: start,
            stop: None,
        });
    }
    let align = file.alignment().max(1);
    let read_bytes = (read_bytes as u64).max(align).next_multiple_of(align);
    let first_read = start - start % align;
    let residency = page_cache.and_then(|f| Residency::map(f, end));
    let residency = residency.as_ref();
    // Buffers for copied chunks, reused: a fresh 2 MiB buffer per chunk costs a page fault
    // per 4 KiB, as much as the copy itself.
    let spare_buffers: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let reads = (first_read..end)
        .step_by(read_bytes as usize)
        .map(|position| {
            let len = read_bytes.min((end - position).next_multiple_of(align));
            let spare_buffers = spare_buffers.clone();
            async move {
                let cached =
                    page_cache.filter(|_| residency.is_some_and(|r| r.all_resident(position, len)));
                let read = match cached {
                    Some(buffered) => {
                        let mut bytes = spare_buffers.borrow_mut().pop().unwrap_or_default();
                        bytes.resize(len as usize, 0);
                        read_at_most(buffered, &mut bytes, position).map(|n| {
                            bytes.truncate(n);
                            Chunk::Cached(CopiedChunk {
                                bytes,
                                spares: spare_buffers,
                            })
                        })
                    }
                    None => file
                        .read_at_aligned(position, len as usize)
                        .await
                        .map(Chunk::Direct)
                        .map_err(io::Error::from),
                };
                (position, len as usize, read)
            }
        });
    // `buffered` keeps `reads_in_flight` reads submitted (in order), so the device is busy
    // while this task validates the chunk it was handed.
    let mut reads = futures::stream::iter(reads).buffered(reads_in_flight.max(1));

    // File bytes [carry_start, carry_start + carry.len()) begin a batch that the previous
    // chunk cut; every byte before carry_start is validated.
    let mut carry: Vec<u8> = Vec::new();
    let mut carry_start = start;
    while let Some((position, requested, read)) = reads.next().await {
        let chunk = read?;
        let chunk = chunk.bytes();
        // A short read means the file is shorter than `end`: treat it as the end.
        let at_end = position + requested as u64 >= end || chunk.len() < requested;
        let from = (carry_start + carry.len() as u64 - position) as usize;
        let to = chunk.len().min((end - position) as usize);
        let mut data = &chunk[from.min(to)..to];
        let mut data_position = position + from as u64;

        // First finish the batch the previous chunk cut, taking only the bytes it needs.
        while !carry.is_empty() {
            let (valid, stop) = scan_batches(&carry, max_batch_bytes, bounds, |p, h| {
                on_batch(carry_start + p as u64, h)
            });
            match stop {
                None => {
                    carry_start += valid as u64;
                    carry.clear();
                }
                Some(ScanStop::Invalid(BatchError::Truncated)) if !data.is_empty() => {
                    debug_assert_eq!(valid, 0, "the carry holds at most one batch");
                    let take = (batch_len_so_far(&carry) - carry.len()).min(data.len());
                    carry.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    data_position += take as u64;
                }
                Some(ScanStop::Invalid(BatchError::Truncated)) if !at_end => break,
                stop => {
                    return Ok(FileScan {
                        valid_end: carry_start + valid as u64,
                        stop,
                    })
                }
            }
        }
        if !carry.is_empty() {
            continue; // the cut batch is longer than this whole chunk
        }

        let (valid, stop) = scan_batches(data, max_batch_bytes, bounds, |p, h| {
            on_batch(data_position + p as u64, h)
        });
        carry_start = data_position + valid as u64;
        match stop {
            Some(ScanStop::Invalid(BatchError::Truncated)) if !at_end => {
                // Shorter than max_batch_bytes: a longer length field stops as BadLength.
                carry.extend_from_slice(&data[valid..]);
            }
            None if !at_end => {}
            stop => {
                return Ok(FileScan {
                    valid_end: carry_start,
                    stop,
                })
            }
        }
    }
    unreachable!("the last read is at or past `end`, so the loop returns")
}

/// One chunk of a [`scan_file_direct`] scan.
enum Chunk {
    Direct(glommio::io::ReadResult),
    Cached(CopiedChunk),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Direct(read) => read,
            Chunk::Cached(copied) => &copied.bytes,
        }
    }
}

/// A chunk copied from the page cache; its buffer goes back to `spares` when dropped.
struct CopiedChunk {
    bytes: Vec<u8>,
    spares: Rc<RefCell<Vec<Vec<u8>>>>,
}

impl Drop for CopiedChunk {
    fn drop(&mut self) {
        self.spares
            .borrow_mut()
            .push(std::mem::take(&mut self.bytes));
    }
}

/// Which pages of a file are in the page cache: `mincore` on a shared read-only mapping that
/// is never dereferenced (so it cannot fault, nor raise SIGBUS if the file shrinks).
struct Residency {
    addr: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

impl Residency {
    /// Maps the first `len` bytes of `file`; `None` if that fails (residency then unknown, and
    /// every chunk is read with O_DIRECT).
    fn map(file: &File, len: u64) -> Option<Residency> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        // SAFETY: a new PROT_READ mapping of an open file; the kernel picks the address.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return None;
        }
        Some(Residency {
            addr: std::ptr::NonNull::new(addr)?,
            len,
        })
    }

    /// True when every page of `[position, position + len)` (clamped to the mapping) is
    /// cached.
    fn all_resident(&self, position: u64, len: u64) -> bool {
        let page = PAGE_BYTES as usize;
        let Ok(from) = usize::try_from(position) else {
            return false;
        };
        let from = from - from % page;
        let to = self.len.min(from.saturating_add(len as usize));
        if from >= to {
            return false;
        }
        let mut pages = vec![0u8; (to - from).div_ceil(page)];
        // SAFETY: `from` is page-aligned and `[from, to)` lies inside the mapping; `pages`
        // has one byte per page of that range, as mincore writes.
        let rc = unsafe {
            libc::mincore(
                self.addr.as_ptr().cast::<u8>().add(from).cast(),
                to - from,
                pages.as_mut_ptr(),
            )
        };
        rc == 0 && pages.iter().all(|p| p & 1 == 1)
    }
}

impl Drop for Residency {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` created; nothing borrows it.
        unsafe { libc::munmap(self.addr.as_ptr(), self.len) };
    }
}

/// How long the partial batch in `bytes` (a `Truncated` scan result) will be once whole: its
/// length field when present (already checked against `max_batch_bytes`), else the bytes up
/// to that field.
fn batch_len_so_far(bytes: &[u8]) -> usize {
    if bytes.len() < LOG_OVERHEAD {
        return LOG_OVERHEAD;
    }
    let length = i32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
    LOG_OVERHEAD + length as usize
}

/// A log rebuilt from its directory, ready to hand to the writer.
pub(crate) struct RecoveredLog {
    /// Closed segments, oldest first, then the active one (`active.segment`, also last here).
    pub segments: Vec<Rc<Segment>>,
    pub active: RecoveredActive,
}

/// The active segment as its recovery scan left it.
pub(crate) struct RecoveredActive {
    pub segment: Rc<Segment>,
    /// The O_DIRECT handle the writer appends through.
    pub file: DmaFile,
    /// The partial last page.
    pub tail: Vec<u8>,
    /// The last batches of each producer, oldest first.
    pub producer_batches: Vec<BatchHeader>,
    /// Where each leader epoch seen in the segment starts (epochs only ever increase).
    pub epoch_starts: Vec<EpochEntry>,
}

/// Lists `<base>.log` files, loads closed segments, scans and repairs the active one.
/// Creates segment 0 when the directory holds none.
pub(crate) async fn recover_log(
    dir: &Path,
    config: &LogConfig,
) -> Result<RecoveredLog, StorageError> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(base) = entry
            .file_name()
            .to_str()
            .and_then(segment::parse_log_file_name)
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();

    let Some((&active_base, closed_bases)) = bases.split_last() else {
        let (segment, file) = Segment::create(dir, 0).await?;
        let segment = Rc::new(segment);
        return Ok(RecoveredLog {
            segments: vec![segment.clone()],
            active: RecoveredActive {
                segment,
                file,
                tail: Vec::new(),
                producer_batches: Vec::new(),
                epoch_starts: Vec::new(),
            },
        });
    };

    let mut segments = Vec::with_capacity(bases.len());
    for &base in closed_bases {
        let segment = load_closed_segment(dir, base, config)?;
        if let Some(previous) = segments.last().map(|s: &Rc<Segment>| s.next_offset()) {
            check_order(previous, &segment)?;
        }
        segments.push(Rc::new(segment));
    }
    let active = recover_active_segment(dir, active_base, config, None).await?;
    if let Some(previous) = segments.last().map(|s| s.next_offset()) {
        check_order(previous, &active.segment)?;
    }
    segments.push(active.segment.clone());
    Ok(RecoveredLog { segments, active })
}

fn check_order(previous_next_offset: i64, segment: &Segment) -> Result<(), StorageError> {
    if segment.base_offset() < previous_next_offset {
        return Err(segment.corrupt(
            0,
            &format!(
                "segment overlaps the previous one, which ends at offset {previous_next_offset}"
            ),
        ));
    }
    Ok(())
}

/// Scans the whole active segment, cuts it after the last valid batch, rebuilds its indexes
/// (its index files are never trusted) and reads back its partial last page.
///
/// With `scan_end`, only the bytes below it are scanned and the file is left as it is: what
/// `PartitionLog::truncate_to` runs on the segment it cuts (which becomes the active one)
/// before it cuts the file itself.
pub(crate) async fn recover_active_segment(
    dir: &Path,
    base_offset: i64,
    config: &LogConfig,
    scan_end: Option<u64>,
) -> Result<RecoveredActive, StorageError> {
    let path = dir.join(segment::file_name(base_offset, "log"));
    let active_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(&path)
        .await?;
    if !PAGE_BYTES.is_multiple_of(active_file.alignment()) {
        return Err(StorageError::Io(io::Error::other(format!(
            "device needs {}-byte O_DIRECT alignment, above the {PAGE_BYTES}-byte page",
            active_file.alignment()
        ))));
    }
    let file_bytes = std::fs::metadata(&path)?.len();
    let range = (
        0,
        file_bytes
            .min(i32::MAX as u64)
            .min(scan_end.unwrap_or(u64::MAX)),
    );
    let interval = config.index_interval_bytes;
    let mut active = ActiveScan::new(dir, base_offset, &path)?;
    let mut bounds = segment_bounds(base_offset, base_offset);
    let page_cache = active.segment.read_file().clone();
    let direct = scan_file_direct(
        &active_file,
        Some(&page_cache),
        range,
        (DIRECT_READ_BYTES, DIRECT_READS_IN_FLIGHT),
        config.max_batch_bytes,
        &mut bounds,
        |position, header| active.record(position, header, interval),
    )
    .await;
    let scan = match direct {
        Ok(scan) => scan,
        // O_DIRECT reads refused (see `segment::prime_direct_io_probe`): the page-cache scan is
        // slower but finds the same prefix.
        Err(StorageError::Io(e)) if e.kind() == io::ErrorKind::Unsupported => {
            warn!(segment = %path.display(), error = %e, "O_DIRECT reads refused; recovering through the page cache");
            active = ActiveScan::new(dir, base_offset, &path)?;
            bounds = segment_bounds(base_offset, base_offset);
            let read_file = active.segment.read_file().clone();
            scan_file(
                &read_file,
                range,
                SCAN_CHUNK_BYTES,
                config.max_batch_bytes,
                &mut bounds,
                |position, header| active.record(position, header, interval),
            )?
        }
        Err(e) => return Err(e),
    };
    let ActiveScan {
        segment,
        producers,
        epoch_starts,
    } = active;
    debug_assert_eq!(scan.valid_end, segment.size_bytes());

    let cut_bytes = file_bytes - scan.valid_end;
    if cut_bytes > 0 && scan_end.is_none() {
        info!(
            segment = %segment.log_path().display(),
            valid_bytes = scan.valid_end,
            cut_bytes,
            reason = ?scan.stop,
            "recovery cut the active segment after its last valid batch"
        );
        active_file.truncate(scan.valid_end).await?;
    }
    // No fdatasync here: 1,000 partitions would pay 1,000 syncs at startup. The log starts with
    // only the closed segments counted as durable; the first durable wait syncs the rest
    // (including this truncation).
    let tail = segment.read_tail_page(PAGE_BYTES)?;

    let mut producer_batches: Vec<BatchHeader> = producers.into_values().flatten().collect();
    producer_batches.sort_unstable_by_key(|h| h.base_offset);
    Ok(RecoveredActive {
        segment: Rc::new(segment),
        file: active_file,
        tail,
        producer_batches,
        epoch_starts,
    })
}

/// What the scan of the active segment rebuilds: the segment's indexes and size, the last
/// batches of each producer, and where each leader epoch starts.
struct ActiveScan {
    segment: Segment,
    producers: HashMap<i64, VecDeque<BatchHeader>>,
    epoch_starts: Vec<EpochEntry>,
}

impl ActiveScan {
    fn new(dir: &Path, base_offset: i64, path: &Path) -> Result<ActiveScan, StorageError> {
        let segment = Segment::new(
            dir,
            base_offset,
            File::open(path)?,
            OffsetIndex::default(),
            TimeIndex::default(),
        );
        Ok(ActiveScan {
            segment,
            producers: HashMap::new(),
            epoch_starts: Vec::new(),
        })
    }

    fn record(&mut self, position: u64, header: &BatchHeader, index_interval_bytes: u32) {
        self.segment
            .record_batch(position, &BatchMeta::from(header), index_interval_bytes);
        if header.has_producer_id() {
            let kept = self.producers.entry(header.producer_id).or_default();
            if kept.len() == PRODUCER_BATCHES_KEPT {
                kept.pop_front();
            }
            kept.push_back(*header);
        }
        let epoch = header.partition_leader_epoch;
        if epoch >= 0 && self.epoch_starts.last().is_none_or(|e| epoch > e.epoch) {
            self.epoch_starts.push(EpochEntry {
                epoch,
                start_offset: header.base_offset,
            });
        }
    }
}

fn segment_bounds(base_offset: i64, next_min: i64) -> OffsetBounds {
    OffsetBounds {
        next_min,
        last_max: base_offset.saturating_add(i32::MAX as i64),
    }
}

/// Loads a closed segment: trusts its index files after a consistency check and scans only the
/// batches after the last index entry (to learn the next offset and max timestamp); rescans the
/// whole segment when the indexes are missing or stale. A closed segment whose tail does not
/// validate is cut like an active one (it should not happen: rolls fdatasync before moving on).
fn load_closed_segment(
    dir: &Path,
    base_offset: i64,
    config: &LogConfig,
) -> Result<Segment, StorageError> {
    let path = dir.join(segment::file_name(base_offset, "log"));
    let file_bytes = File::open(&path)?.metadata()?.len();
    let (segment, scan, rebuilt) = match load_indexes(&path, file_bytes) {
        Ok((offset_index, time_index)) => {
            let expected_first = offset_index
                .last()
                .map(|e| base_offset + e.relative_offset as i64);
            let entries_before = offset_index.len();
            let segment = Segment::new(
                dir,
                base_offset,
                File::open(&path)?,
                offset_index,
                time_index,
            );
            match scan_segment_from(&segment, file_bytes, expected_first, config)? {
                Some(scan) => {
                    let extended = segment.index_entry_count() != entries_before;
                    (segment, scan, extended)
                }
                None => {
                    info!(segment = %path.display(), "index does not match the log; rebuilding");
                    rescan_closed(dir, base_offset, &path, file_bytes, config)?
                }
            }
        }
        Err(reason) => {
            info!(segment = %path.display(), %reason, "index missing or stale; rebuilding");
            rescan_closed(dir, base_offset, &path, file_bytes, config)?
        }
    };
    if scan.valid_end < file_bytes {
        warn!(
            segment = %path.display(),
            valid_bytes = scan.valid_end,
            cut_bytes = file_bytes - scan.valid_end,
            reason = ?scan.stop,
            "closed segment has an invalid tail; cutting it"
        );
        let file = std::fs::OpenOptions::new().write(true).open(&path)?;
        file.set_len(scan.valid_end)?;
        file.sync_data()?;
    }
    if rebuilt {
        segment.persist_indexes()?;
    }
    segment.shrink_indexes();
    Ok(segment)
}

fn rescan_closed(
    dir: &Path,
    base_offset: i64,
    path: &Path,
    file_bytes: u64,
    config: &LogConfig,
) -> Result<(Segment, FileScan, bool), StorageError> {
    let segment = Segment::new(
        dir,
        base_offset,
        File::open(path)?,
        OffsetIndex::default(),
        TimeIndex::default(),
    );
    let scan = scan_segment_from(&segment, file_bytes, None, config)?
        .expect("a scan from position 0 has no expected first batch to mismatch");
    Ok((segment, scan, true))
}

/// Feeds the batches from the segment's current end to `file_bytes` through `record_batch`.
/// Returns `None` when the first batch is not the one the last index entry names.
fn scan_segment_from(
    segment: &Segment,
    file_bytes: u64,
    expected_first_base: Option<i64>,
    config: &LogConfig,
) -> Result<Option<FileScan>, StorageError> {
    let start = segment.size_bytes();
    let base = segment.base_offset();
    let mut bounds = segment_bounds(base, segment.next_offset());
    let mut first = true;
    let mut mismatch = false;
    let read_file = segment.read_file().clone();
    let scan = scan_file(
        &read_file,
        (start, file_bytes.min(i32::MAX as u64)),
        SCAN_CHUNK_BYTES,
        config.max_batch_bytes,
        &mut bounds,
        |position, header| {
            if first && expected_first_base.is_some_and(|b| b != header.base_offset) {
                mismatch = true;
            }
            first = false;
            if !mismatch {
                segment.record_batch(
                    position,
                    &BatchMeta::from(header),
                    config.index_interval_bytes,
                );
            }
        },
    )?;
    if mismatch || (expected_first_base.is_some() && first) {
        // The entry points at no batch, or at a different one.
        return Ok(None);
    }
    Ok(Some(scan))
}

/// Reads and cross-checks both index files of a closed segment.
fn load_indexes(log_path: &Path, log_bytes: u64) -> Result<(OffsetIndex, TimeIndex), String> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    // Bound what a corrupt index file can make us allocate: a valid one is far smaller.
    for ext in ["index", "timeindex"] {
        let len = std::fs::metadata(log_path.with_extension(ext))
            .map_err(|e| e.to_string())?
            .len();
        if len > log_bytes {
            return Err(format!(".{ext} larger than its log"));
        }
    }
    let offsets = OffsetIndex::decode(&read(&log_path.with_extension("index"))?, log_bytes)?;
    let times = TimeIndex::decode(&read(&log_path.with_extension("timeindex"))?)?;
    match (offsets.last(), times.last()) {
        (None, None) => {}
        (Some(o), Some(t)) if t.relative_offset <= o.relative_offset => {}
        _ => return Err("time index does not match the offset index".into()),
    }
    Ok((offsets, times))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::record_batch::{assign, tests::make_batch};

    fn log_bytes(batches: &[(i64, i32)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(base, count) in batches {
            let mut b = make_batch(count, -1, -1);
            assign(&mut b, base, 0);
            out.extend(b);
        }
        out
    }

    #[test]
    fn whole_valid_log_is_accepted() {
        let bytes = log_bytes(&[(0, 2), (2, 3), (10, 1)]);
        let scan = scan_valid_prefix(&bytes, 1 << 20);
        assert_eq!(scan.valid_bytes, bytes.len());
        assert_eq!(scan.stop, None);
        let bases: Vec<i64> = scan.batches.iter().map(|h| h.base_offset).collect();
        assert_eq!(bases, vec![0, 2, 10]);
    }

    #[test]
    fn torn_crc_and_padding_cut_at_the_bad_batch() {
        let bytes = log_bytes(&[(0, 2), (2, 3)]);
        let first_len = make_batch(2, -1, -1).len();
        for cut in [first_len + 1, first_len + 20, bytes.len() - 1] {
            let scan = scan_valid_prefix(&bytes[..cut], 1 << 20);
            assert_eq!(scan.valid_bytes, first_len, "cut at {cut}");
            assert_eq!(scan.stop, Some(ScanStop::Invalid(BatchError::Truncated)));
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let scan = scan_valid_prefix(&flipped, 1 << 20);
        assert_eq!(scan.valid_bytes, first_len);
        assert!(matches!(
            scan.stop,
            Some(ScanStop::Invalid(BatchError::CrcMismatch { .. }))
        ));
        let mut padded = bytes.clone();
        padded.resize(8192, 0);
        let scan = scan_valid_prefix(&padded, 1 << 20);
        assert_eq!(scan.valid_bytes, bytes.len());
        assert_eq!(scan.stop, Some(ScanStop::Invalid(BatchError::BadLength(0))));
    }

    #[test]
    fn offsets_must_increase_and_not_overflow() {
        let bytes = log_bytes(&[(5, 2), (6, 1)]);
        let scan = scan_valid_prefix(&bytes, 1 << 20);
        assert_eq!(scan.batches.len(), 1);
        assert_eq!(
            scan.stop,
            Some(ScanStop::OffsetOutOfOrder {
                base_offset: 6,
                expected_at_least: 7
            })
        );
        let bytes = log_bytes(&[(i64::MAX, 2)]);
        assert_eq!(scan_valid_prefix(&bytes, 1 << 20).valid_bytes, 0);
        let bytes = log_bytes(&[(-3, 1)]);
        assert_eq!(scan_valid_prefix(&bytes, 1 << 20).valid_bytes, 0);
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: random bytes and random cuts of a valid log.
        let valid = log_bytes(&[(0, 3), (3, 1), (4, 7)]);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut bytes = valid.clone();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % bytes.len();
                bytes[i] = next() as u8;
            }
            let cut = (next() as usize) % (bytes.len() + 1);
            let scan = scan_valid_prefix(&bytes[..cut], 1 << 20);
            assert!(scan.valid_bytes <= cut);
            let again = scan_valid_prefix(&bytes[..scan.valid_bytes], 1 << 20);
            assert_eq!(
                again.valid_bytes, scan.valid_bytes,
                "the valid prefix is valid"
            );
            assert_eq!(again.stop, None);
        }
    }

    #[test]
    fn chunked_file_scan_matches_the_pure_scan() {
        let mut bytes = Vec::new();
        for i in 0..200 {
            let mut b = make_batch(1 + i % 5, -1, -1);
            let base = scan_valid_prefix(&bytes, 1 << 20)
                .batches
                .last()
                .map_or(0, |h| h.last_offset() + 1);
            assign(&mut b, base, 0);
            bytes.extend(b);
        }
        let valid_len = bytes.len();
        bytes.extend_from_slice(&[0u8; 100]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let mut bounds = OffsetBounds {
            next_min: 0,
            last_max: i64::MAX,
        };
        let mut seen = Vec::new();
        // Chunks of ~300 bytes split batches across reads again and again.
        let scan = scan_file(
            &file,
            (0, bytes.len() as u64),
            0,
            300,
            &mut bounds,
            |p, h| seen.push((p, h.base_offset)),
        )
        .unwrap();
        let expected: Vec<(u64, i64)> = {
            let pure = scan_valid_prefix(&bytes, 300);
            let mut position = 0u64;
            pure.batches
                .iter()
                .map(|h| {
                    let at = position;
                    position += h.total_len() as u64;
                    (at, h.base_offset)
                })
                .collect()
        };
        assert_eq!(seen, expected);
        assert_eq!(scan.valid_end, valid_len as u64);
        assert_eq!(seen.len(), 200);
        assert_eq!(scan.stop, Some(ScanStop::Invalid(BatchError::BadLength(0))));
    }

    /// Batches of 1..=12 records with values of 0..=1500 bytes: many are longer than a 4 KiB
    /// read, so chunk boundaries fall in every part of a batch, headers included.
    fn varied_log(count: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut next = 0i64;
        for i in 0..count {
            let mut b = crate::storage::testutil::build_batch(
                1_000,
                &vec![0; 1 + i % 12],
                (i * 397) % 1501,
                -1,
                -1,
            );
            assign(&mut b, next, 0);
            next += 1 + (i % 12) as i64;
            bytes.extend(b);
        }
        bytes
    }

    /// What the pure scan says about `bytes`: (valid length, stop, (position, base) per batch).
    fn pure_scan(bytes: &[u8], max: usize) -> (u64, Option<ScanStop>, Vec<(u64, i64)>) {
        let scan = scan_valid_prefix(bytes, max);
        let mut position = 0u64;
        let batches = scan
            .batches
            .iter()
            .map(|h| {
                let at = position;
                position += h.total_len() as u64;
                (at, h.base_offset)
            })
            .collect();
        (scan.valid_bytes as u64, scan.stop, batches)
    }

    async fn direct_scan(
        file: &DmaFile,
        page_cache: Option<&File>,
        range: (u64, u64),
        reads: (usize, usize),
        max: usize,
    ) -> (u64, Option<ScanStop>, Vec<(u64, i64)>) {
        let mut bounds = OffsetBounds {
            next_min: 0,
            last_max: i64::MAX,
        };
        let mut seen = Vec::new();
        let scan = scan_file_direct(file, page_cache, range, reads, max, &mut bounds, |p, h| {
            seen.push((p, h.base_offset))
        })
        .await
        .unwrap();
        (scan.valid_end, scan.stop, seen)
    }

    /// Writes `bytes` and leaves only every other 8 KiB of it in the page cache, so a scan
    /// that may copy cached chunks mixes them with O_DIRECT reads.
    fn write_half_cached(path: &Path, bytes: &[u8]) -> File {
        use std::os::fd::AsRawFd;
        std::fs::write(path, bytes).unwrap();
        let file = File::open(path).unwrap();
        file.sync_all().unwrap(); // clean pages, which DONTNEED drops
        let advise = |at: usize, len: usize, advice| {
            // SAFETY: advice on an open descriptor.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), at as i64, len as i64, advice) };
            assert_eq!(rc, 0);
        };
        // Whole file: DONTNEED skips large folios the range covers only in part.
        advise(0, 0, libc::POSIX_FADV_DONTNEED);
        // No read-ahead on this descriptor: a pread caches just the pages it reads.
        advise(0, 0, libc::POSIX_FADV_RANDOM);
        let mut page = [0u8; 8192];
        for at in (0..bytes.len()).step_by(16384) {
            read_at_most(&file, &mut page, at as u64).unwrap();
        }
        file
    }

    #[test]
    fn direct_scan_matches_the_pure_scan_at_every_chunk_boundary() {
        crate::storage::testutil::run(|| async {
            let valid = varied_log(24);
            // A flipped CRC byte in a batch that straddles a chunk boundary, then garbage.
            let straddling = pure_scan(&valid, 1 << 20)
                .2
                .windows(2)
                .find(|w| w[0].0 / 4096 != (w[1].0 - 1) / 4096 && w[0].0 > 3 * 4096)
                .map(|w| w[0].0 as usize)
                .unwrap();
            let start = pure_scan(&valid, 1 << 20).2[2].0;
            let dir = tempfile::tempdir().unwrap();
            let files = [
                ("valid", valid.clone()),
                ("padded", {
                    let mut b = valid.clone();
                    b.resize(valid.len().next_multiple_of(4096) + 4096, 0);
                    b
                }),
                ("flipped", {
                    let mut b = valid.clone();
                    b[straddling + 4000] ^= 0x40;
                    b.extend_from_slice(&[0xA5; 3000]);
                    b
                }),
            ];
            for (name, bytes) in files {
                let path = dir.path().join(name);
                let cached = write_half_cached(&path, &bytes);
                let file = OpenOptions::new().read(true).dma_open(&path).await.unwrap();
                // Both kinds of chunk really occur.
                glommio::executor().io_stats();
                let whole = direct_scan(
                    &file,
                    Some(&cached),
                    (0, bytes.len() as u64),
                    (4096, 2),
                    1 << 20,
                )
                .await;
                let (direct_reads, _) = glommio::executor().io_stats().all_rings().file_reads();
                let chunks = bytes.len().div_ceil(4096) as u64;
                assert!(
                    direct_reads > 0 && direct_reads < chunks,
                    "{direct_reads} of {chunks}"
                );
                assert_eq!(whole, pure_scan(&bytes, 1 << 20));
                // Torn tails at, just before and just after each 4 KiB boundary (a chunk
                // boundary for every read size below), and a few in between.
                let mut cuts = vec![bytes.len()];
                for boundary in (0..=bytes.len()).step_by(4096) {
                    for delta in [-62i64, -61, -13, -12, -11, -1, 0, 1, 11, 12, 13, 61, 62] {
                        let cut = boundary as i64 + delta;
                        if (0..=bytes.len() as i64).contains(&cut) {
                            cuts.push(cut as usize);
                        }
                    }
                    cuts.push((boundary + 1777).min(bytes.len()));
                }
                for &cut in &cuts {
                    let expected = pure_scan(&bytes[..cut], 1 << 20);
                    for reads in [(4096, 1), (4096, 3), (12288, 2), (1 << 20, 4)] {
                        for page_cache in [None, Some(&cached)] {
                            let range = (0, cut as u64);
                            let got = direct_scan(&file, page_cache, range, reads, 1 << 20).await;
                            let cache = page_cache.is_some();
                            assert_eq!(got, expected, "{name}: cut {cut}, {reads:?}, {cache}");
                        }
                    }
                }
                // A scan from a batch boundary that is not page-aligned (a closed segment's
                // last index entry), with a small max_batch_bytes.
                assert!(!start.is_multiple_of(4096) && start < straddling as u64);
                let mut expected = pure_scan(&bytes[start as usize..], 4000);
                expected.0 += start;
                for b in &mut expected.2 {
                    b.0 += start;
                }
                let mut bounds = OffsetBounds {
                    next_min: 0,
                    last_max: i64::MAX,
                };
                let mut seen = Vec::new();
                let scan = scan_file_direct(
                    &file,
                    Some(&cached),
                    (start, bytes.len() as u64),
                    (4096, 2),
                    4000,
                    &mut bounds,
                    |p, h| seen.push((p, h.base_offset)),
                )
                .await
                .unwrap();
                assert_eq!(
                    (scan.valid_end, scan.stop, seen),
                    expected,
                    "{name} from {start}"
                );
                file.close().await.unwrap();
            }
        });
    }

    #[test]
    fn direct_scan_stops_at_a_short_file() {
        crate::storage::testutil::run(|| async {
            let bytes = varied_log(20);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.log");
            let cut = bytes.len() - 100;
            let cached = write_half_cached(&path, &bytes[..cut]);
            let file = OpenOptions::new().read(true).dma_open(&path).await.unwrap();
            // Asked for more than the file holds, as when it shrank after its size was read.
            for page_cache in [None, Some(&cached)] {
                let range = (0, bytes.len() as u64 + 5000);
                let got = direct_scan(&file, page_cache, range, (4096, 3), 1 << 20).await;
                assert_eq!(got, pure_scan(&bytes[..cut], 1 << 20));
                let empty = direct_scan(&file, page_cache, (700, 700), (4096, 3), 1 << 20).await;
                assert_eq!(empty, (700, None, vec![]));
            }
            file.close().await.unwrap();
        });
    }

    mod with_log {
        use std::path::PathBuf;

        use super::super::*;
        use super::pure_scan;
        use crate::storage::log::tests::{append, consume_all, small_config};
        use crate::storage::testutil::{batch, run};
        use crate::storage::PartitionLog;

        fn active_log_path(log: &PartitionLog) -> PathBuf {
            let base = *log.segment_base_offsets().last().unwrap();
            log.dir().join(segment::file_name(base, "log"))
        }

        /// Writes `count` batches of 3 records, closes, returns (log file, last batch position).
        async fn log_with_batches(dir: PathBuf, count: usize) -> (PathBuf, u64, i64) {
            let log = PartitionLog::open(dir, LogConfig::default()).await.unwrap();
            let mut last = None;
            for i in 0..count {
                let position = log.size_bytes() + log.queued_bytes();
                let info = append(&log, batch(3, 50, 1_000 + i as i64));
                last = Some((position, info.base_offset));
            }
            log.close().await.unwrap();
            let (position, base) = last.unwrap();
            (active_log_path(&log), position, base)
        }

        #[test]
        fn torn_tail_is_cut_and_appends_continue_at_the_right_offset() {
            run(|| async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("t-0");
                let (file, last_position, last_base) = log_with_batches(path.clone(), 20).await;
                let len = std::fs::metadata(&file).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .unwrap()
                    .set_len(len - 5)
                    .unwrap();
                let log = PartitionLog::open(path.clone(), LogConfig::default())
                    .await
                    .unwrap();
                assert_eq!(log.log_end_offset(), last_base);
                assert_eq!(log.high_watermark(), last_base);
                assert_eq!(
                    std::fs::metadata(&file).unwrap().len(),
                    last_position,
                    "cut at the torn batch"
                );
                assert_eq!(consume_all(&log, 0, 4096).len(), 19);
                assert_eq!(append(&log, batch(2, 1, 1)).base_offset, last_base);
                log.wait_written(last_base + 2, true).await.unwrap();
                log.close().await.unwrap();

                let log = PartitionLog::open(path, LogConfig::default())
                    .await
                    .unwrap();
                assert_eq!(log.log_end_offset(), last_base + 2);
                assert_eq!(consume_all(&log, 0, 4096).len(), 20);
                log.close().await.unwrap();
            });
        }

        #[test]
        fn flipped_byte_in_the_last_batch_is_cut() {
            run(|| async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("t-0");
                let (file, last_position, last_base) = log_with_batches(path.clone(), 20).await;
                let mut bytes = std::fs::read(&file).unwrap();
                let at = bytes.len() - 3;
                bytes[at] ^= 0x10;
                std::fs::write(&file, &bytes).unwrap();

                let log = PartitionLog::open(path, LogConfig::default())
                    .await
                    .unwrap();
                assert_eq!(log.log_end_offset(), last_base);
                assert_eq!(log.size_bytes(), last_position);
                let seen = consume_all(&log, 0, 1 << 20);
                assert_eq!(seen.last().unwrap().last_offset(), last_base - 1);
                assert_eq!(append(&log, batch(1, 1, 1)).base_offset, last_base);
                log.close().await.unwrap();
            });
        }

        #[test]
        fn crash_without_close_keeps_every_written_batch() {
            run(|| async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("t-0");
                let log = PartitionLog::open(path.clone(), LogConfig::default())
                    .await
                    .unwrap();
                for i in 0..50 {
                    append(&log, batch(1 + i % 4, 33, 1_000));
                }
                let written = log.log_end_offset();
                log.wait_written(written, false).await.unwrap();
                let logical_bytes = log.size_bytes();
                let file = active_log_path(&log);
                let before = consume_all(&log, 0, 1 << 20);
                drop(log); // no close: the page padding stays, indexes are not written
                let on_disk = std::fs::metadata(&file).unwrap().len();
                assert!(
                    on_disk > logical_bytes && on_disk.is_multiple_of(PAGE_BYTES),
                    "O_DIRECT padding"
                );
                // Garbage past the padding, as a torn later write might leave.
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&file)
                    .unwrap();
                std::io::Write::write_all(&mut f, &[0xA5; 777]).unwrap();
                drop(f);

                let log = PartitionLog::open(path, LogConfig::default())
                    .await
                    .unwrap();
                assert_eq!(log.log_end_offset(), written);
                assert_eq!(log.size_bytes(), logical_bytes);
                assert_eq!(std::fs::metadata(&file).unwrap().len(), logical_bytes);
                assert_eq!(consume_all(&log, 0, 1 << 20), before);
                log.close().await.unwrap();
            });
        }

        #[test]
        fn closed_segment_indexes_are_rebuilt_when_missing_or_stale() {
            run(|| async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("t-0");
                let log = PartitionLog::open(path.clone(), small_config())
                    .await
                    .unwrap();
                for i in 0..600i64 {
                    append(
                        &log,
                        crate::storage::testutil::batch_with_timestamps(
                            1_000 + i * 10,
                            &[0, 4, 2],
                            40,
                        ),
                    );
                }
                log.close().await.unwrap();
                let bases = log.segment_base_offsets();
                assert!(bases.len() >= 6);
                let before = consume_all_reopened(&path).await;
                let index = |base: i64, ext: &str| path.join(segment::file_name(base, ext));
                let originals: Vec<(Vec<u8>, Vec<u8>)> = bases[..5]
                    .iter()
                    .map(|&b| {
                        (
                            std::fs::read(index(b, "index")).unwrap(),
                            std::fs::read(index(b, "timeindex")).unwrap(),
                        )
                    })
                    .collect();
                assert!(originals
                    .iter()
                    .all(|(o, t)| o.len() >= 3 * 8 && !t.is_empty()));

                std::fs::remove_file(index(bases[0], "index")).unwrap();
                let garbage: Vec<u8> = (0..originals[1].0.len())
                    .map(|i| (i * 131 + 7) as u8)
                    .collect();
                std::fs::write(index(bases[1], "index"), garbage).unwrap();
                std::fs::write(index(bases[2], "timeindex"), [1u8; 5]).unwrap();
                // Plausible-looking entries that point between batches.
                let shifted = OffsetIndex::decode(&originals[3].0, u64::MAX).unwrap();
                let mut bytes = Vec::new();
                for e in shifted.entries() {
                    bytes.extend_from_slice(&(e.relative_offset as i32).to_be_bytes());
                    bytes.extend_from_slice(&(e.position as i32 + 1).to_be_bytes());
                }
                std::fs::write(index(bases[3], "index"), bytes).unwrap();
                // A valid prefix (entries lost in a crash) is extended, not rebuilt.
                std::fs::write(index(bases[4], "index"), &originals[4].0[..8]).unwrap();
                std::fs::write(index(bases[4], "timeindex"), &originals[4].1[..12]).unwrap();

                let log = PartitionLog::open(path.clone(), small_config())
                    .await
                    .unwrap();
                for (i, base) in bases[..5].iter().enumerate() {
                    assert_eq!(
                        std::fs::read(index(*base, "index")).unwrap(),
                        originals[i].0,
                        "segment {i}"
                    );
                    assert_eq!(
                        std::fs::read(index(*base, "timeindex")).unwrap(),
                        originals[i].1,
                        "segment {i}"
                    );
                }
                assert_eq!(consume_all(&log, 0, 2000), before);
                assert_eq!(
                    log.offset_for_timestamp(1_000 + 150 * 10 + 3).unwrap(),
                    Some((451, 2_504))
                );
                log.close().await.unwrap();
            });
        }

        /// Appends 16 KiB batches (so batches straddle the read boundaries) over more reads
        /// than recovery keeps in flight, closes, and returns the active segment's path and
        /// bytes.
        async fn multi_chunk_log(path: PathBuf) -> (PathBuf, Vec<u8>) {
            let log = PartitionLog::open(path, LogConfig::default())
                .await
                .unwrap();
            let reads = DIRECT_READS_IN_FLIGHT as u64 + 2;
            while log.size_bytes() + log.queued_bytes() < reads * DIRECT_READ_BYTES as u64 + 5000 {
                append(&log, batch(16, 1000, 1_000));
                if log.queued_bytes() > 4 << 20 {
                    log.wait_written(log.log_end_offset(), false).await.unwrap();
                }
            }
            log.close().await.unwrap();
            let file = active_log_path(&log);
            let bytes = std::fs::read(&file).unwrap();
            evict(&file);
            (file, bytes)
        }

        /// Drops `path` from the page cache, as a machine crash would.
        fn evict(path: &std::path::Path) {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(path).unwrap();
            file.sync_all().unwrap();
            // SAFETY: advice on an open descriptor.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0);
        }

        #[test]
        fn recovery_copies_what_the_page_cache_holds() {
            run(|| async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("t-0");
                let (file, bytes) = multi_chunk_log(path.clone()).await;
                // A clean restart (or a process crash) after consumers read the whole segment.
                assert_eq!(std::fs::read(&file).unwrap(), bytes);
                glommio::executor().io_stats(); // resets the counters
                let log = PartitionLog::open(path, LogConfig::default())
                    .await
                    .unwrap();
                let (reads, _) = glommio::executor().io_stats().all_rings().file_reads();
                assert_eq!(reads, 0, "no O_DIRECT read for cached chunks");
                assert_eq!(log.size_bytes(), bytes.len() as u64);
                let expected: Vec<i64> = pure_scan(&bytes, 1 << 20).2.iter().map(|b| b.1).collect();
                let seen: Vec<i64> = consume_all(&log, 0, 1 << 20)
                    .iter()
                    .map(|h| h.base_offset)
                    .collect();
                assert_eq!(seen, expected);
                log.close().await.unwrap();
            });
        }

        #[test]
        fn recovery_reads_the_active_segment_with_o_direct() {
            run(|| async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("t-0");
                // The first segment file this thread opens is empty: without the probe
                // priming, glommio would refuse every O_DIRECT read after it.
                let (_, bytes) = multi_chunk_log(path.clone()).await;
                glommio::executor().io_stats(); // resets the counters
                let log = PartitionLog::open(path, LogConfig::default())
                    .await
                    .unwrap();
                let (reads, read_bytes) = glommio::executor().io_stats().all_rings().file_reads();
                assert_eq!(log.size_bytes(), bytes.len() as u64);
                assert!(
                    read_bytes >= bytes.len() as u64 && reads >= 3,
                    "{reads} O_DIRECT reads of {read_bytes} bytes for {} bytes",
                    bytes.len()
                );
                log.close().await.unwrap();
            });
        }

        #[test]
        fn torn_tails_inside_and_at_the_edges_of_multi_mib_reads() {
            run(|| async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("t-0");
                let (file, bytes) = multi_chunk_log(path.clone()).await;
                let chunk = DIRECT_READ_BYTES;
                // The batch that straddles the first read boundary.
                let straddling = pure_scan(&bytes, 1 << 20)
                    .2
                    .iter()
                    .map(|&(p, _)| p as usize)
                    .rfind(|&p| p < chunk)
                    .unwrap();
                assert!(straddling + batch(16, 1000, 1_000).len() > chunk);
                let mut cases: Vec<(String, Vec<u8>)> = [
                    chunk - 1,
                    chunk,
                    chunk + 1,
                    straddling + 5,
                    straddling + 70,
                    chunk + chunk / 2 + 777,
                    2 * chunk - 3,
                    2 * chunk,
                    2 * chunk + 12,
                    bytes.len() - 1,
                ]
                .iter()
                .map(|&cut| (format!("cut at {cut}"), bytes[..cut].to_vec()))
                .collect();
                let mut flipped = bytes.clone();
                flipped[chunk + 100] ^= 1; // inside the straddling batch's second part
                cases.push(("flipped byte across the boundary".into(), flipped));
                let mut padded = bytes[..2 * chunk + 5000].to_vec();
                padded.resize(padded.len().next_multiple_of(4096), 0);
                padded.extend_from_slice(&[0xA5; 10_000]);
                cases.push(("padding then garbage".into(), padded));

                for (name, on_disk) in cases {
                    let (valid, _, batches) =
                        pure_scan(&on_disk, LogConfig::default().max_batch_bytes);
                    assert!(
                        valid < bytes.len() as u64,
                        "{name}: the case must cut something"
                    );
                    std::fs::write(&file, &on_disk).unwrap();
                    evict(&file); // read with O_DIRECT, not copied from the page cache
                    let log = PartitionLog::open(path.clone(), LogConfig::default())
                        .await
                        .unwrap();
                    let next = batches.last().map_or(0, |&(_, base)| base + 16);
                    assert_eq!(log.size_bytes(), valid, "{name}");
                    assert_eq!(log.log_end_offset(), next, "{name}");
                    assert_eq!(std::fs::metadata(&file).unwrap().len(), valid, "{name}");
                    let seen: Vec<i64> = consume_all(&log, 0, 1 << 20)
                        .iter()
                        .map(|h| h.base_offset)
                        .collect();
                    let expected: Vec<i64> = batches.iter().map(|&(_, base)| base).collect();
                    assert_eq!(seen, expected, "{name}");
                    drop(log); // no close: nothing is written, the next case rewrites the file
                }
            });
        }

        #[test]
        fn recovery_falls_back_to_the_page_cache_when_o_direct_reads_are_refused() {
            run(|| async {
                let dir = tempfile::tempdir().unwrap();
                // Opening an empty file first makes glommio turn on polled I/O for the
                // device where the device cannot poll (virtio, most SATA): O_DIRECT reads are
                // then refused with EOPNOTSUPP. Where it can poll, this test takes the direct
                // path and checks the same things.
                let empty = dir.path().join("empty");
                std::fs::write(&empty, b"").unwrap();
                let poison = OpenOptions::new()
                    .read(true)
                    .dma_open(&empty)
                    .await
                    .unwrap();
                poison.close().await.unwrap();
                let path = dir.path().join("t-0");
                let (_, bytes) = multi_chunk_log(path.clone()).await;
                let before = consume_all_reopened_default(&path).await;
                let log = PartitionLog::open(path, LogConfig::default())
                    .await
                    .unwrap();
                assert_eq!(log.size_bytes(), bytes.len() as u64);
                assert_eq!(consume_all(&log, 0, 1 << 20), before);
                assert_eq!(before.len(), pure_scan(&bytes, 1 << 20).2.len());
                log.close().await.unwrap();
            });
        }

        async fn consume_all_reopened_default(path: &std::path::Path) -> Vec<BatchHeader> {
            let log = PartitionLog::open(path.to_path_buf(), LogConfig::default())
                .await
                .unwrap();
            let all = consume_all(&log, 0, 1 << 20);
            log.close().await.unwrap();
            all
        }

        async fn consume_all_reopened(path: &std::path::Path) -> Vec<BatchHeader> {
            let log = PartitionLog::open(path.to_path_buf(), small_config())
                .await
                .unwrap();
            let all = consume_all(&log, 0, 2000);
            log.close().await.unwrap();
            all
        }
    }
}
