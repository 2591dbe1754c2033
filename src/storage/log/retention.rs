//! Retention of a [`PartitionLog`]: deleting old closed segments by the policy of
//! [`crate::storage::retention`] and moving the log start (and the epoch cache's) with them.

use std::cell::Cell;
use std::rc::Rc;

use tracing::info;

use super::{settled_closed_segments, Lifecycle, PartitionLog};
use crate::storage::retention::{self, SegmentSummary};
use crate::storage::segment::Segment;
use crate::storage::StorageError;

thread_local! {
    /// Whether a partition of this shard (a shard is one thread) closed a segment since the
    /// last [`take_rolls_on_this_shard`].
    static ROLLED_ON_THIS_SHARD: Cell<bool> = const { Cell::new(false) };
}

pub(super) fn note_roll_on_this_shard() {
    ROLLED_ON_THIS_SHARD.set(true);
}

/// Whether a partition of this shard closed a segment since the last call. The shard's
/// housekeeping then runs retention at its next tick on the partitions that did
/// ([`PartitionLog::take_rolled`]), besides its pass over all of them every
/// `log.retention.check.interval.ms`: by size, a segment can only become deletable when a roll
/// closes another, and its file is what the partition's next roll reuses. Waiting for the
/// interval (Kafka's default is 5 minutes; W3 runs with 1 s) left a busy partition's next roll
/// without one about every third time, creating (and later freeing) a fresh file instead.
pub fn take_rolls_on_this_shard() -> bool {
    ROLLED_ON_THIS_SHARD.replace(false)
}

impl PartitionLog {
    /// Whether a roll closed a segment since the last call (see [`take_rolls_on_this_shard`]).
    pub fn take_rolled(&self) -> bool {
        self.rolled.replace(false)
    }

    /// Deletes whole closed segments (never the active one, never one reaching past the high
    /// watermark) whose largest timestamp is older than `now_ms - retention_ms`, or oldest
    /// first while the log stays at or above `retention_bytes` without them (Kafka's rule);
    /// advances the log start offset and moves the leader epoch cache's start with it.
    /// Deleted segments' files wait for reuse; those no roll took within
    /// `file_delete_delay_ms` go to the shard's paced [`reaper`](crate::storage::reaper).
    /// Returns the number of segments deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        let (retention_ms, retention_bytes) =
            (self.config.retention_ms, self.config.retention_bytes);
        self.enforce_retention_with(now_ms, retention_ms, retention_bytes)
            .await
    }

    /// [`enforce_retention`](Self::enforce_retention) with the limits given rather than those
    /// the log was opened with: a topic's `retention.ms` / `retention.bytes` changed while it
    /// runs (AlterConfigs) take effect at the next run.
    pub async fn enforce_retention_with(
        &self,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Result<usize, StorageError> {
        self.check_readable()?;
        self.release_unused_recycled(std::time::Instant::now());
        if self.lifecycle.get() == Lifecycle::Truncating || self.cleaning() {
            return Ok(0); // the segment list is being rewritten; the next run catches up
        }
        let high_watermark = self.high_watermark();
        let removed: Vec<Rc<Segment>> = {
            let mut segments = self.segments.borrow_mut();
            // A segment a roll is still closing waits for the next run.
            let closed = settled_closed_segments(&segments);
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
            let policy = crate::storage::LogConfig {
                retention_ms,
                retention_bytes,
                ..self.config.clone()
            };
            let count = retention::deletable_prefix(&summaries, total_bytes, &policy, now_ms);
            segments.drain(..count).collect()
        };
        if removed.is_empty() {
            return Ok(0);
        }
        // Never backwards: DeleteRecords may have moved it inside the new first segment.
        let log_start_offset = self.segments.borrow()[0]
            .base_offset()
            .max(self.log_start_offset());
        assert!(
            log_start_offset <= self.high_watermark(),
            "retention deleted data above the high watermark"
        );
        self.log_start_offset.set(log_start_offset);
        self.tail_cache.borrow_mut().evict_below(log_start_offset);
        for segment in &removed {
            info!(segment = %segment.log_path().display(), log_start_offset, "retention deletes segment");
        }
        let count = removed.len();
        self.delete_segments(removed).await?;
        // In memory only: the file keeps entries below the log start until it is next written,
        // and opening moves them up to the log start anyway. Writing it here cost two fsyncs
        // on the shard's thread per partition at every retention run, which stalled the shard
        // for tens to hundreds of milliseconds while the unlinks kept the journal busy (Kafka
        // moved the same flush off its produce path: KAFKA-15046).
        self.epochs
            .borrow_mut()
            .truncate_from_start(log_start_offset);
        Ok(count)
    }
}
