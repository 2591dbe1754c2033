//! Producer state and aborted transactions of a log's closed segments, as recovery (and a
//! follower's truncation) rebuilds them: from the newest valid producer-state snapshot at or
//! below the active segment's base plus the closed segments' `.txnindex` files, scanning only
//! the closed segments at or above that snapshot (normally none: the roll that created the
//! active segment wrote a snapshot at its base).
//!
//! Without a usable snapshot (a log written before snapshots existed, or every snapshot
//! damaged) the closed segments are scanned from the first one, once: their `.txnindex` files
//! and a snapshot at the active segment's base are written, so the next open is fast again.
//! A damaged `.txnindex` moves the scan's start to a snapshot at or below its segment.

use std::path::Path;
use std::rc::Rc;

use tracing::{info, warn};

use super::scan::scan_file;
use super::{segment_bounds, MARKER_PREFIX_BYTES, SCAN_CHUNK_BYTES};
use crate::storage::producer_snapshot::{self, ProducerTracker};
use crate::storage::segment::{self, Segment};
use crate::storage::txn_index::{self, TxnIndexEntry};
use crate::storage::{LogConfig, StorageError};

/// What the closed segments contribute: the producer state at the active segment's base and
/// their aborted transactions, in marker order.
pub(crate) struct ClosedProducerState {
    pub tracker: ProducerTracker,
    pub aborted: Vec<TxnIndexEntry>,
}

/// Rebuilds the state of `closed` (oldest first, all below `active_base`). `has_txn_index`
/// says which segments have a `.txnindex` file (from the directory listing recovery already
/// made, so segments without one cost no system call).
pub(crate) fn recover_closed_segments(
    dir: &Path,
    closed: &[Rc<Segment>],
    active_base: i64,
    config: &LogConfig,
    has_txn_index: impl Fn(i64) -> bool,
) -> Result<ClosedProducerState, StorageError> {
    let mut indexes: Vec<Option<Vec<TxnIndexEntry>>> = closed
        .iter()
        .map(|s| {
            if !has_txn_index(s.base_offset()) {
                return Some(Vec::new());
            }
            match txn_index::read(s.log_path(), s.base_offset(), s.next_offset(), s.size_bytes()) {
                Ok(entries) => Some(entries),
                Err(reason) => {
                    warn!(segment = %s.log_path().display(), %reason, "transaction index damaged; rebuilding it");
                    None
                }
            }
        })
        .collect();
    let limit = closed
        .iter()
        .zip(&indexes)
        .find(|(_, index)| index.is_none())
        .map_or(active_base, |(s, _)| s.base_offset());
    let log_first = closed.first().map_or(active_base, |s| s.base_offset());
    let (from_offset, mut tracker) = newest_snapshot(dir, log_first, limit)
        .unwrap_or_else(|| (log_first, ProducerTracker::default()));
    if from_offset < active_base && !closed.is_empty() {
        info!(
            dir = %dir.display(),
            from_offset,
            active_base,
            "no producer-state snapshot at the active segment; scanning closed segments"
        );
    }

    let mut scanned_segments = 0;
    for (segment, index) in closed.iter().zip(indexes.iter_mut()) {
        if segment.next_offset() <= from_offset {
            continue;
        }
        let aborted = scan_closed_segment(segment, from_offset, &mut tracker, config)?;
        txn_index::write_durably(segment.log_path(), &aborted)?;
        *index = Some(aborted);
        scanned_segments += 1;
    }
    if scanned_segments > 0 {
        // The next open starts here instead of scanning again.
        producer_snapshot::write_durably(dir, active_base, &tracker.encode(active_base))?;
    }
    let aborted = indexes
        .into_iter()
        .flat_map(|index| index.expect("damaged indexes were rebuilt by the scan"))
        .collect();
    Ok(ClosedProducerState { tracker, aborted })
}

/// The newest snapshot in `from..=limit` that reads back whole (damaged ones are logged).
fn newest_snapshot(dir: &Path, from: i64, limit: i64) -> Option<(i64, ProducerTracker)> {
    let offsets = producer_snapshot::list(dir).ok()?;
    for &offset in offsets.iter().rev() {
        if offset > limit || offset < from {
            continue;
        }
        match producer_snapshot::read(dir, offset) {
            Ok(tracker) => return Some((offset, tracker)),
            Err(reason) => {
                warn!(dir = %dir.display(), offset, %reason, "producer-state snapshot unusable; trying an older one")
            }
        }
    }
    None
}

/// Feeds a closed segment's batches at or above `from_offset` to `tracker`; returns the
/// segment's aborted transactions.
fn scan_closed_segment(
    segment: &Segment,
    from_offset: i64,
    tracker: &mut ProducerTracker,
    config: &LogConfig,
) -> Result<Vec<TxnIndexEntry>, StorageError> {
    let start = if from_offset > segment.base_offset() {
        segment.lookup_position(from_offset)
    } else {
        0
    };
    let read_file = segment.read_file()?;
    let mut bounds = segment_bounds(segment.base_offset(), segment.base_offset());
    let mut aborted = Vec::new();
    scan_file(
        &read_file,
        (start, segment.size_bytes()),
        SCAN_CHUNK_BYTES,
        config.max_batch_bytes,
        &mut bounds,
        |position, header| {
            if header.base_offset < from_offset {
                return;
            }
            aborted.extend(tracker.record(header, || read_marker(&read_file, position)));
        },
    )?;
    segment.release_read_file();
    Ok(aborted)
}

/// Reads a control batch's commit flag at `position` (markers are rare: one small read each).
pub(crate) fn read_marker(file: &std::fs::File, position: u64) -> Option<bool> {
    let mut marker = [0u8; MARKER_PREFIX_BYTES];
    let read = segment::read_at_most(file, &mut marker, position).ok()?;
    crate::record_batch::control::marker_committed(&marker[..read])
}
