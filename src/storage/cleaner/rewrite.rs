//! The blocking half of a cleaning run, on glommio's blocking thread pool: reading closed
//! segments batch by batch to build the key map, and writing each segment's cleaned copy to
//! `<base>.log.cleaned` (fsync'ed) with its indexes built in memory.
//!
//! Closed segments below the high watermark never change, so reading them off the shard
//! through their own descriptors races nothing.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::aborted::AbortedTransactions;
use super::offset_map::KeyOffsetMap;
use super::records::{batch_body, parse_records, rebuild_batch};
use super::swap::cleaned_path;
use crate::record_batch::{BatchHeader, HEADER_LEN};
use crate::storage::index::{OffsetIndex, TimeIndex};
use crate::storage::segment::{read_at_most, BatchMeta, Segment};
use crate::storage::StorageError;

/// A closed segment handed to the blocking thread.
#[derive(Debug)]
pub struct SourceSegment {
    pub base_offset: i64,
    pub log_path: PathBuf,
    pub file: Arc<File>,
    pub size_bytes: u64,
    /// Last offset + 1 of its batches.
    pub next_offset: i64,
    /// Below the first dirty offset: cleaned by an earlier run.
    pub already_clean: bool,
}

impl SourceSegment {
    fn corrupt(&self, position: u64, reason: &str) -> StorageError {
        StorageError::Corrupt {
            segment_base_offset: self.base_offset,
            position,
            reason: format!("log cleaner: {reason}"),
        }
    }

    /// Calls `visit` with each batch (its position, header and bytes), oldest first.
    fn for_each_batch(
        &self,
        max_batch_bytes: usize,
        mut visit: impl FnMut(u64, &BatchHeader, &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let mut position = 0u64;
        let mut head = [0u8; HEADER_LEN];
        let mut batch = Vec::new();
        while position < self.size_bytes {
            if read_at_most(&self.file, &mut head, position)? != HEADER_LEN {
                return Err(self.corrupt(position, "truncated batch header"));
            }
            let header = BatchHeader::parse(&head, max_batch_bytes)
                .map_err(|e| self.corrupt(position, &e.to_string()))?;
            batch.resize(header.total_len(), 0);
            if read_at_most(&self.file, &mut batch, position)? != batch.len() {
                return Err(self.corrupt(position, "truncated batch"));
            }
            if !visit(position, &header, &batch)? {
                return Ok(());
            }
            position += batch.len() as u64;
        }
        Ok(())
    }
}

/// Puts the keys of `dirty`'s records in `map`, oldest first, up to its budget. Returns how
/// many segments were mapped whole: the run cleans up to their end only. Control batches
/// carry no user keys and are skipped (as Kafka does), and so are the batches of aborted
/// transactions: they must not supersede an earlier record of the same key (an aborted
/// transactional offset commit would otherwise erase the committed one). Committed
/// transactional batches count like any other: every transaction below the first unstable
/// offset, where runs stop, is decided.
pub fn build_offset_map(
    dirty: &[SourceSegment],
    map: &mut KeyOffsetMap,
    aborted: &AbortedTransactions,
    max_batch_bytes: usize,
) -> Result<usize, StorageError> {
    for (mapped, segment) in dirty.iter().enumerate() {
        let mut full = false;
        segment.for_each_batch(max_batch_bytes, |position, header, batch| {
            if header.is_control() || is_aborted(header, aborted) {
                return Ok(true);
            }
            let body = batch_body(batch, header).map_err(|e| segment.corrupt(position, &e))?;
            let records = parse_records(&body, header.record_count)
                .map_err(|e| segment.corrupt(position, &e))?;
            for record in records {
                let Some(key) = record.key else { continue };
                let offset = header.base_offset + record.offset_delta as i64;
                if !map.insert(&body[key], offset) {
                    full = true;
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        if full {
            return Ok(mapped);
        }
    }
    Ok(dirty.len())
}

/// What cleaning one group of segments did.
#[derive(Debug, Default)]
pub struct SegmentOutcome {
    /// The cleaned copy of the group, written to `<first base>.log.cleaned` and fsync'ed;
    /// `None` when the group is one segment from which nothing was removed (it stays).
    pub cleaned: Option<Segment>,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// When the tombstones the cleaned copy keeps may go (its clean time +
    /// `delete.retention.ms`).
    pub tombstones_due_ms: Option<i64>,
}

/// A batch of a transaction that aborted.
fn is_aborted(header: &BatchHeader, aborted: &AbortedTransactions) -> bool {
    header.is_transactional() && aborted.contains(header.producer_id, header.base_offset)
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Writes the records of the consecutive segments `group` that `map` does not supersede to
/// one file, `<first base>.log.cleaned`.
///
/// A record goes when its key has a later offset in `map`, when it has no key (Kafka counts
/// it as invalid and drops it), or when it is a tombstone in a segment cleaned more than
/// `delete_retention_ms` ago (its modification time, which rewrites of already clean
/// segments preserve: the copy takes the latest of its members'). A batch whose records all
/// go disappears; a batch that loses some is rebuilt with its own base offset, so offsets
/// keep increasing with gaps.
///
/// The batches of aborted transactions go whole (read_committed consumers never saw them;
/// Kafka's cleaner drops them too); committed transactional batches are cleaned like others,
/// their rebuilt copies keeping the producer fields. Control batches (transaction markers)
/// are kept whole.
///
/// Producer state at start-up comes from the producer-state snapshot at the active segment's
/// base (`storage::producer_snapshot`, written at each roll) plus a scan of the active
/// segment, which is never cleaned; so dropping a producer's last batch from a closed segment
/// does not lose its sequence (Kafka keeps that batch, `retainLastBatchSequence`). Only a log
/// with no valid snapshot at all rebuilds from the segments themselves, and then a producer
/// whose batches were all cleaned away starts afresh, as after Kafka's producer expiry.
#[allow(clippy::too_many_arguments)]
pub fn clean_group(
    dir: &Path,
    group: &[SourceSegment],
    map: &KeyOffsetMap,
    aborted: &AbortedTransactions,
    now_ms: i64,
    delete_retention_ms: i64,
    index_interval_bytes: u32,
    max_batch_bytes: usize,
) -> Result<SegmentOutcome, StorageError> {
    let first = &group[0];
    let mut modified_times = Vec::with_capacity(group.len());
    for source in group {
        modified_times.push(std::fs::metadata(&source.log_path)?.modified()?);
    }
    let clean_time_ms = |i: usize| {
        if group[i].already_clean {
            millis(modified_times[i])
        } else {
            now_ms
        }
    };
    // The copy's clean time: the latest of its members', so no tombstone goes early.
    let copy_clean_time_ms = (0..group.len()).map(clean_time_ms).max().unwrap_or(now_ms);
    let cleaned_path = cleaned_path(&first.log_path);
    let mut out = BufWriter::new(File::create(&cleaned_path)?);
    let segment = Segment::new(
        dir,
        first.base_offset,
        None,
        OffsetIndex::default(),
        TimeIndex::default(),
    );
    let mut outcome = SegmentOutcome {
        bytes_before: group.iter().map(|s| s.size_bytes).sum(),
        ..SegmentOutcome::default()
    };
    let mut kept_tombstone = false;
    let mut position = 0u64;
    let mut write = |bytes: &[u8], header: &BatchHeader| -> Result<(), StorageError> {
        out.write_all(bytes)?;
        let meta = BatchMeta {
            len_bytes: bytes.len() as u64,
            ..BatchMeta::from(header)
        };
        segment.record_batch(position, &meta, index_interval_bytes);
        position += bytes.len() as u64;
        Ok(())
    };
    for (i, source) in group.iter().enumerate() {
        let tombstones_removable =
            source.already_clean && clean_time_ms(i) <= now_ms.saturating_sub(delete_retention_ms);
        source.for_each_batch(max_batch_bytes, |at, header, batch| {
            if header.is_control() {
                write(batch, header)?;
                return Ok(true);
            }
            if is_aborted(header, aborted) {
                outcome.records_removed += header.record_count.max(0) as u64;
                return Ok(true);
            }
            let body = batch_body(batch, header).map_err(|e| source.corrupt(at, &e))?;
            let records =
                parse_records(&body, header.record_count).map_err(|e| source.corrupt(at, &e))?;
            let kept: Vec<_> = records
                .iter()
                .filter(|record| {
                    let Some(key) = &record.key else {
                        return false;
                    };
                    let offset = header.base_offset + record.offset_delta as i64;
                    if map
                        .get(&body[key.clone()])
                        .is_some_and(|latest| offset < latest)
                    {
                        return false;
                    }
                    if !record.has_value {
                        if tombstones_removable {
                            return false;
                        }
                        kept_tombstone = true;
                    }
                    true
                })
                .collect();
            outcome.records_removed += (records.len() - kept.len()) as u64;
            if kept.len() == records.len() {
                write(batch, header)?;
            } else if !kept.is_empty() {
                let rebuilt = rebuild_batch(batch, header, &body, &kept)
                    .map_err(|e| source.corrupt(at, &e))?;
                write(&rebuilt, header)?;
            }
            Ok(true)
        })?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    outcome.bytes_after = position;
    if kept_tombstone {
        outcome.tombstones_due_ms = Some(copy_clean_time_ms.saturating_add(delete_retention_ms));
    }
    if outcome.records_removed == 0 && group.len() == 1 {
        drop(file);
        std::fs::remove_file(&cleaned_path)?;
        if kept_tombstone && !first.already_clean {
            // Clean from now: its tombstones' delete.retention.ms starts here.
            let now = UNIX_EPOCH + Duration::from_millis(now_ms.max(0) as u64);
            File::options()
                .write(true)
                .open(&first.log_path)?
                .set_modified(now)?;
        }
        return Ok(outcome);
    }
    if group.iter().all(|s| s.already_clean) {
        // Rewriting clean segments does not restart their tombstones' retention.
        let latest = modified_times.iter().max().copied().unwrap_or(UNIX_EPOCH);
        file.set_modified(latest)?;
    }
    file.sync_all()?;
    segment.shrink_indexes();
    outcome.cleaned = Some(segment);
    Ok(outcome)
}
