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
//!
//! This file rebuilds a log from its directory; [`scan`] holds the batch validator and the
//! buffered scan, [`direct`] the O_DIRECT scan and its page-cache residency check, [`producers`]
//! the producer state and aborted transactions of the closed segments (newest producer-state
//! snapshot plus `.txnindex` files; closed segments are scanned only above that snapshot, or
//! all once for a log without snapshots). The active segment's scan carries that state on.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::Path;
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};
use tracing::{info, warn};

use super::clean_close;
use super::epoch_cache::EpochEntry;
use super::index::{OffsetIndex, TimeIndex};
use super::producer_snapshot::{self, ProducerTracker};
use super::segment::{self, BatchMeta, Segment};
use super::txn_index::{self, TxnIndexEntry};
use super::{LogConfig, StorageError, PAGE_BYTES};
use crate::record_batch::BatchHeader;

pub mod direct;
pub(crate) mod producers;
pub mod scan;

use self::direct::scan_file_direct;
use self::scan::{scan_file, FileScan, OffsetBounds};
pub use self::scan::{scan_valid_prefix, ScanResult, ScanStop};

/// Bytes read per pread while scanning a segment: large enough to amortise syscalls (1 GiB is
/// 128 reads), small enough to stay cache-friendly.
pub(crate) const SCAN_CHUNK_BYTES: usize = 8 << 20;

/// Bytes per O_DIRECT read of the active segment's scan, and how many such reads are in flight.
/// The device always has reads queued while the CRC scan (about 0.1 s per GiB with hardware
/// CRC-32C) runs over the chunk that arrived. 8 MiB in flight fits glommio's default
/// registered I/O memory (10 MiB per executor), so the reads use pre-pinned buffers: measured
/// on a 1.1 GiB segment, 4 x 8 MiB reads (heap buffers, faulted in again and again) cost
/// 0.35 s of system CPU against 0.05 s for 4 x 2 MiB, at the same wall time; 1 x 8 MiB up to
/// 2 x 16 MiB all read at the device's bandwidth there.
const DIRECT_READ_BYTES: usize = 2 << 20;
const DIRECT_READS_IN_FLIGHT: usize = 4;

/// Bytes of a control batch that hold its marker type (header, record prefix, key).
pub(crate) const MARKER_PREFIX_BYTES: usize = 96;

/// A log rebuilt from its directory, ready to hand to the writer.
pub(crate) struct RecoveredLog {
    /// Closed segments, oldest first, then the active one (`active.segment`, also last here).
    pub segments: Vec<Rc<Segment>>,
    pub active: RecoveredActive,
}

/// The active segment as its recovery scan left it.
pub(crate) struct RecoveredActive {
    pub segment: Rc<Segment>,
    /// The O_DIRECT handle the scan read through (`None` when nothing was scanned); opening a
    /// log closes it, and the writer opens its own at its first write.
    pub file: Option<DmaFile>,
    /// The partial last page.
    pub tail: Vec<u8>,
    /// Producers' last batches and open transactions as of the segment's end.
    pub producers: ProducerTracker,
    /// Aborted transactions of the whole log (every segment's), in marker order.
    pub aborted: Vec<TxnIndexEntry>,
    /// Where each leader epoch seen in the segment starts (epochs only ever increase).
    pub epoch_starts: Vec<EpochEntry>,
    /// Loaded from a clean close's record instead of scanned ([`clean_close`]).
    pub trusted_clean_close: bool,
}

/// Lists `<base>.log` files, loads closed segments, scans and repairs the active one.
/// Creates segment 0 when the directory holds none.
pub(crate) async fn recover_log(
    dir: &Path,
    config: &LogConfig,
) -> Result<RecoveredLog, StorageError> {
    // A log cleaner run interrupted by a crash: finished if it committed, else rolled back.
    crate::storage::cleaner::swap::recover(dir)?;
    let mut bases = Vec::new();
    let mut txn_index_bases = HashSet::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = segment::parse_log_file_name(name) {
            bases.push(base);
        } else if name.ends_with(".snapshot.tmp") || name.ends_with(".txnindex.tmp") {
            // A write a crash interrupted; the file it was replacing (if any) is intact.
            std::fs::remove_file(entry.path())?;
        } else if let Some(base) = name
            .strip_suffix(".txnindex")
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse::<i64>().ok())
        {
            txn_index_bases.insert(base);
        }
    }
    bases.sort_unstable();

    let Some((&active_base, closed_bases)) = bases.split_last() else {
        let (segment, file) = Segment::create(dir, 0).await?;
        // No descriptor stays open for a partition nobody writes yet.
        file.close().await?;
        let segment = Rc::new(segment);
        // Snapshots of a log whose segments are gone describe nothing.
        producer_snapshot::remove_where(dir, |_| true)?;
        return Ok(RecoveredLog {
            segments: vec![segment.clone()],
            active: RecoveredActive {
                segment,
                file: None,
                tail: Vec::new(),
                producers: ProducerTracker::default(),
                aborted: Vec::new(),
                epoch_starts: Vec::new(),
                trusted_clean_close: false,
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
    let clean = clean_close::take(dir).filter(|c| c.active_base_offset == active_base);
    let trusted = match clean {
        Some(clean) => trust_cleanly_closed_segment(dir, config, clean)?,
        None => None,
    };
    let mut active = match trusted {
        Some(active) => active,
        None => {
            // Snapshots inside the active segment (a clean close's) may count batches a
            // crash lost: the scan rebuilds that state.
            producer_snapshot::remove_where(dir, |offset| offset > active_base)?;
            let closed =
                producers::recover_closed_segments(dir, &segments, active_base, config, |base| {
                    txn_index_bases.contains(&base)
                })?;
            let mut active =
                recover_active_segment(dir, active_base, config, None, closed.tracker).await?;
            let mut aborted = closed.aborted;
            aborted.append(&mut active.aborted);
            active.aborted = aborted;
            active
        }
    };
    if active.trusted_clean_close {
        let closed =
            producers::recover_closed_segments(dir, &segments, active_base, config, |base| {
                txn_index_bases.contains(&base)
            })?;
        let mut aborted = closed.aborted;
        aborted.append(&mut active.aborted);
        active.aborted = aborted;
    }
    // The scan's descriptors close: the writer and readers open their own when they need
    // them, so a restarted broker holds none for partitions nobody uses.
    if let Some(file) = active.file.take() {
        file.close().await?;
    }
    active.segment.release_read_file();
    if let Some(previous) = segments.last().map(|s| s.next_offset()) {
        check_order(previous, &active.segment)?;
    }
    segments.push(active.segment.clone());
    Ok(RecoveredLog { segments, active })
}

/// The active segment as a clean close left it ([`clean_close`]): loaded like a closed one
/// (index files checked, the batches after the last entry CRC-checked) instead of scanned
/// whole. `None`, and the caller scans, unless the file is exactly the recorded size and what
/// loads ends at the recorded next offset.
fn trust_cleanly_closed_segment(
    dir: &Path,
    config: &LogConfig,
    clean: clean_close::CleanClose,
) -> Result<Option<RecoveredActive>, StorageError> {
    let base_offset = clean.active_base_offset;
    let path = dir.join(segment::file_name(base_offset, "log"));
    let file_bytes = std::fs::metadata(&path)?.len();
    if file_bytes != clean.active_size_bytes || file_bytes == 0 {
        return Ok(None);
    }
    let segment = load_closed_segment(dir, base_offset, config)?;
    if segment.size_bytes() != file_bytes || segment.next_offset() != clean.next_offset {
        info!(
            segment = %path.display(),
            "active segment does not match its clean-close record; scanning it"
        );
        return Ok(None);
    }
    // The clean close wrote the producer state at the segment's end and its aborted
    // transactions; without them the segment is scanned.
    let producers = match producer_snapshot::read(dir, clean.next_offset) {
        Ok(producers) => producers,
        Err(reason) => {
            info!(segment = %path.display(), %reason, "no producer-state snapshot at the clean close; scanning");
            return Ok(None);
        }
    };
    let aborted = match txn_index::read(&path, base_offset, clean.next_offset, file_bytes) {
        Ok(aborted) => aborted,
        Err(reason) => {
            info!(segment = %path.display(), %reason, "transaction index unusable; scanning");
            return Ok(None);
        }
    };
    segment.set_aborted(aborted.clone(), false);
    let tail = segment.read_tail_page(PAGE_BYTES)?;
    segment.release_read_file();
    Ok(Some(RecoveredActive {
        segment: Rc::new(segment),
        file: None,
        tail,
        producers,
        aborted,
        // The clean close synced the leader epoch checkpoint: it has every epoch.
        epoch_starts: Vec::new(),
        trusted_clean_close: true,
    }))
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
///
/// `producers` is the producer state at the segment's base (see [`producers`]); the scan
/// carries it to the segment's end and rebuilds the segment's aborted transactions.
pub(crate) async fn recover_active_segment(
    dir: &Path,
    base_offset: i64,
    config: &LogConfig,
    scan_end: Option<u64>,
    producers: ProducerTracker,
) -> Result<RecoveredActive, StorageError> {
    let path = dir.join(segment::file_name(base_offset, "log"));
    if scan_end.is_none() && std::fs::metadata(&path)?.len() == 0 {
        // Nothing to scan or cut (a partition never written, or rolled and never written
        // since): no descriptor either. Most partitions of a broker with thousands are this.
        return Ok(RecoveredActive {
            segment: Rc::new(Segment::new(
                dir,
                base_offset,
                None,
                OffsetIndex::default(),
                TimeIndex::default(),
            )),
            file: None,
            tail: Vec::new(),
            producers,
            aborted: Vec::new(),
            epoch_starts: Vec::new(),
            trusted_clean_close: false,
        });
    }
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
    let mut active = ActiveScan::new(dir, base_offset, &path, producers.clone())?;
    let mut bounds = segment_bounds(base_offset, base_offset);
    let page_cache = active.segment.read_file()?;
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
            active = ActiveScan::new(dir, base_offset, &path, producers)?;
            bounds = segment_bounds(base_offset, base_offset);
            let read_file = active.segment.read_file()?;
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
        aborted,
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
    // Not on disk yet (or stale there): persisted when the segment closes.
    segment.set_aborted(aborted.clone(), true);
    Ok(RecoveredActive {
        segment: Rc::new(segment),
        file: Some(active_file),
        tail,
        producers,
        aborted,
        epoch_starts,
        trusted_clean_close: false,
    })
}

/// What the scan of the active segment rebuilds: the segment's indexes and size, the
/// producer state, the segment's aborted transactions, and where each leader epoch starts.
struct ActiveScan {
    segment: Segment,
    producers: ProducerTracker,
    aborted: Vec<TxnIndexEntry>,
    epoch_starts: Vec<EpochEntry>,
}

impl ActiveScan {
    fn new(
        dir: &Path,
        base_offset: i64,
        path: &Path,
        producers: ProducerTracker,
    ) -> Result<ActiveScan, StorageError> {
        let segment = Segment::new(
            dir,
            base_offset,
            Some(File::open(path)?),
            OffsetIndex::default(),
            TimeIndex::default(),
        );
        Ok(ActiveScan {
            segment,
            producers,
            aborted: Vec::new(),
            epoch_starts: Vec::new(),
        })
    }

    fn record(&mut self, position: u64, header: &BatchHeader, index_interval_bytes: u32) {
        self.segment
            .record_batch(position, &BatchMeta::from(header), index_interval_bytes);
        if header.has_producer_id() {
            let segment = &self.segment;
            let aborted = self.producers.record(header, || {
                producers::read_marker(&*segment.read_file().ok()?, position)
            });
            self.aborted.extend(aborted);
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

pub(crate) fn segment_bounds(base_offset: i64, next_min: i64) -> OffsetBounds {
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
    let file_bytes = std::fs::metadata(&path)?.len();
    let (segment, scan, rebuilt) = match load_indexes(&path, file_bytes) {
        Ok((offset_index, time_index)) => {
            let expected_first = offset_index
                .last()
                .map(|e| base_offset + e.relative_offset as i64);
            let entries_before = offset_index.len();
            let segment = Segment::new(
                dir,
                base_offset,
                Some(File::open(&path)?),
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
    // Readers open it again when they need it (most closed segments are never read again).
    segment.release_read_file();
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
        Some(File::open(path)?),
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
    let read_file = segment.read_file()?;
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
    use std::path::PathBuf;

    use super::*;
    use crate::storage::log::tests::{append, consume_all, small_config};
    use crate::storage::recovery::scan::tests::pure_scan;
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
                    crate::storage::testutil::batch_with_timestamps(1_000 + i * 10, &[0, 4, 2], 40),
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
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
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
                let (valid, _, batches) = pure_scan(&on_disk, LogConfig::default().max_batch_bytes);
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
