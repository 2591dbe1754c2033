//! The [`PartitionLog`] side of log compaction ([`crate::storage::cleaner`]): which segments a
//! run may read, where the dirty part starts (`cleaner-offset-checkpoint`), and switching the
//! segment list to cleaned segments in one step on the owning shard.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;

use super::{settled_closed_segments, Lifecycle, PartitionLog};
use crate::storage::cleaner::aborted::IndexFile;
use crate::storage::segment::{DoomedFiles, Segment};
use crate::storage::txn_index::TxnIndexEntry;

/// Kafka keeps one `cleaner-offset-checkpoint` per log directory; here each partition keeps
/// its own: the first offset not cleaned yet, then (second line, if any) when the tombstones
/// the last run kept are due. Losing it only makes the next run re-clean the log.
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";

/// A log's compaction progress, in memory on the owning shard.
#[derive(Debug, Default)]
pub(crate) struct CompactionState {
    /// `None` until read from the checkpoint file on the first run.
    first_dirty_offset: Cell<Option<i64>>,
    /// When tombstones kept by the last run may be removed.
    tombstones_due_ms: Cell<Option<i64>>,
    /// A run is in progress: retention and idle release leave the segments alone meanwhile.
    running: Cell<bool>,
}

/// Marks a run in progress for as long as it lives.
pub struct CleaningGuard<'a> {
    log: &'a PartitionLog,
}

impl Drop for CleaningGuard<'_> {
    fn drop(&mut self) {
        self.log.compaction.running.set(false);
    }
}

/// `(first dirty offset, tombstones due)` from the checkpoint file.
fn read_checkpoint(dir: &Path) -> (Option<i64>, Option<i64>) {
    let text = std::fs::read_to_string(dir.join(CLEANER_CHECKPOINT_FILE)).unwrap_or_default();
    let mut lines = text.lines().map(|l| l.trim().parse::<i64>().ok());
    (lines.next().flatten(), lines.next().flatten())
}

/// The checkpoint file's text for [`read_checkpoint`].
pub fn checkpoint_text(first_dirty_offset: i64, tombstones_due_ms: Option<i64>) -> String {
    match tombstones_due_ms {
        Some(due) => format!("{first_dirty_offset}\n{due}\n"),
        None => format!("{first_dirty_offset}\n"),
    }
}

impl PartitionLog {
    /// Starts a cleaning run, unless one is running or the log is not open.
    pub fn begin_cleaning(&self) -> Option<CleaningGuard<'_>> {
        if self.lifecycle.get() != Lifecycle::Open || self.compaction.running.get() {
            return None;
        }
        self.compaction.running.set(true);
        Some(CleaningGuard { log: self })
    }

    pub(crate) fn cleaning(&self) -> bool {
        self.compaction.running.get()
    }

    /// The closed segments wholly below the high watermark and the first unstable offset,
    /// oldest first: what a run may read and rewrite (never the active segment, never data
    /// consumers cannot see yet, never a transaction not decided yet: Kafka's cleaner stops at
    /// the first unstable offset too, since an open transaction's records may still abort).
    pub fn cleanable_segments(&self) -> Vec<Rc<Segment>> {
        let limit = self
            .producer_tracker
            .borrow()
            .first_open_offset()
            .map_or(self.high_watermark(), |first_open| {
                first_open.min(self.high_watermark())
            });
        let segments = self.segments.borrow();
        let closed = settled_closed_segments(&segments);
        // A segment a roll is still closing has no `.txnindex` yet, which a run reads for
        // every closed segment: the next run cleans.
        if closed.len() + 1 < segments.len() {
            return Vec::new();
        }
        closed
            .iter()
            .take_while(|s| s.next_offset() <= limit)
            .cloned()
            .collect()
    }

    /// Where the aborted transactions of the segments from `from_base` on are: the closed
    /// segments' `.txnindex` files (written durably when each closed), to read off the shard,
    /// and the active segment's entries, in memory. A transaction in a cleaned segment may have its abort marker in any
    /// later segment.
    pub fn aborted_transaction_sources(
        &self,
        from_base: i64,
    ) -> (Vec<IndexFile>, Vec<TxnIndexEntry>) {
        let segments = self.segments.borrow();
        let (active, closed) = segments.split_last().expect("a log has an active segment");
        let files = closed
            .iter()
            .filter(|s| s.next_offset() > from_base)
            .map(|s| IndexFile {
                log_path: s.log_path().to_path_buf(),
                base_offset: s.base_offset(),
                next_offset: s.next_offset(),
                size_bytes: s.size_bytes(),
            })
            .collect();
        (files, active.aborted_entries())
    }

    /// Where the part of the log not cleaned yet starts (a segment's base offset).
    pub fn first_dirty_offset(&self) -> i64 {
        let offset = match self.compaction.first_dirty_offset.get() {
            Some(offset) => offset,
            None => {
                let (offset, tombstones_due_ms) = read_checkpoint(&self.dir);
                let offset = offset.unwrap_or(0);
                self.compaction.first_dirty_offset.set(Some(offset));
                if self.compaction.tombstones_due_ms.get().is_none() {
                    self.compaction.tombstones_due_ms.set(tombstones_due_ms);
                }
                offset
            }
        };
        offset.max(self.log_start_offset())
    }

    /// Whether tombstones kept by an earlier run (of this process, or recorded in the
    /// checkpoint) may be removed now.
    pub fn tombstones_due(&self, now_ms: i64) -> bool {
        self.first_dirty_offset(); // loads the checkpoint once
        self.compaction
            .tombstones_due_ms
            .get()
            .is_some_and(|due| due <= now_ms)
    }

    /// Whether each of `old` is still in the segment list and the log still open: checked
    /// before a run commits its swap.
    pub fn segments_unchanged(&self, old: &[Rc<Segment>]) -> bool {
        let segments = self.segments.borrow();
        self.lifecycle.get() == Lifecycle::Open
            && old
                .iter()
                .all(|o| segments.iter().any(|s| Rc::ptr_eq(s, o)))
    }

    /// The base offset of the segment after `segment` (where the dirty part starts once
    /// `segment` is cleaned).
    pub fn next_segment_base(&self, segment: &Rc<Segment>) -> Option<i64> {
        let segments = self.segments.borrow();
        let i = segments.iter().position(|s| Rc::ptr_eq(s, segment))?;
        segments.get(i + 1).map(|s| s.base_offset())
    }

    /// Switches the segment list to the cleaned segments (already in place on disk) in one
    /// step, records the run's progress, and returns the replaced segments' read handles,
    /// whose last close the caller does off the shard. Readers holding an old handle (a
    /// sendfile on another shard) keep reading the old file; new reads see the cleaned one.
    pub fn install_cleaned(
        &self,
        replacements: Vec<(Vec<Rc<Segment>>, Segment)>,
        first_dirty_offset: i64,
        tombstones_due_ms: Option<i64>,
    ) -> DoomedFiles {
        let mut doomed = DoomedFiles::default();
        {
            let mut segments = self.segments.borrow_mut();
            for (members, new) in replacements {
                let Some(i) = segments.iter().position(|s| Rc::ptr_eq(s, &members[0])) else {
                    continue; // checked before the commit; gone only if the log was deleted
                };
                segments[i] = Rc::new(new);
                // Merged members leave the list; their files are gone already (the commit
                // removed them). The first one's path names the cleaned file: only the
                // handles go, closed off the shard.
                segments.retain(|s| !members[1..].iter().any(|m| Rc::ptr_eq(s, m)));
                for old in &members {
                    doomed.handles.extend(old.doomed().handles);
                }
            }
            // Segments the run emptied go (files included), so a compacted log does not keep
            // a file for every segment it ever rolled. Never the first (the log start stays
            // where it is) nor the active one; reads of their offsets fall through to the next
            // segment as reads of any gap do.
            let last = segments.len() - 1;
            let mut index = 0;
            segments.retain(|segment| {
                index += 1;
                let empty_middle = index > 1 && index - 1 < last && segment.size_bytes() == 0;
                if empty_middle {
                    doomed.extend(segment.doomed());
                }
                !empty_middle
            });
        }
        self.compaction
            .first_dirty_offset
            .set(Some(first_dirty_offset));
        self.compaction.tombstones_due_ms.set(tombstones_due_ms);
        // Batches the tail cache still holds from cleaned segments are the old versions.
        self.tail_cache.borrow_mut().evict_below(first_dirty_offset);
        doomed
    }
}
