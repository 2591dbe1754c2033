//! Which part of a log a cleaning run covers (pure, so the policy is tested without files).
//!
//! Kafka's rules: the closed segments below the high watermark split into a clean prefix
//! (cleaned before: at most one record per key, tombstones waiting out
//! `delete.retention.ms`) and a dirty rest, written since the last run. The dirty part stops
//! at the first segment holding a record younger than `min.compaction.lag.ms`. A log is
//! cleaned when its dirty ratio, dirty bytes over clean + dirty bytes, reaches
//! `min.cleanable.dirty.ratio`, or when its oldest dirty record is older than
//! `max.compaction.lag.ms`, or (this broker) when tombstones kept by an earlier run are due
//! for removal.

/// A topic's compaction settings (topic configs over `log.cleaner.*` broker defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionConfig {
    /// `min.cleanable.dirty.ratio` (0.5).
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms` (0): records younger than this stay uncompacted.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms` (i64::MAX): a dirty record older than this forces a run.
    pub max_compaction_lag_ms: i64,
    /// `delete.retention.ms` (1 day): how long a tombstone stays after its segment was
    /// cleaned, so consumers that were behind still see the delete.
    pub delete_retention_ms: i64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 86_400_000,
        }
    }
}

/// What the plan needs to know about one closed segment below the high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    pub base_offset: i64,
    pub size_bytes: u64,
    /// Largest record timestamp (or the file's modification time), ms.
    pub max_timestamp_ms: i64,
}

/// A cleaning run: segments `[0, dirty_end)` are rewritten with the key map built over
/// `[dirty_start, dirty_end)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub dirty_start: usize,
    pub dirty_end: usize,
    pub dirty_ratio: f64,
}

/// The run to make over `closed` (oldest first), or `None` when the log needs none.
/// `first_dirty_offset` is where the last run stopped (a segment's base offset);
/// `tombstones_due` says tombstones kept by an earlier run may now be removed.
pub fn choose(
    closed: &[SegmentSummary],
    first_dirty_offset: i64,
    config: &CompactionConfig,
    now_ms: i64,
    tombstones_due: bool,
) -> Option<Plan> {
    let dirty_start = closed.partition_point(|s| s.base_offset < first_dirty_offset);
    let youngest_cleanable_ms = now_ms.saturating_sub(config.min_compaction_lag_ms.max(0));
    let dirty_end = dirty_start
        + closed[dirty_start..]
            .iter()
            .take_while(|s| s.max_timestamp_ms <= youngest_cleanable_ms)
            .count();
    let bytes = |range: &[SegmentSummary]| range.iter().map(|s| s.size_bytes).sum::<u64>();
    let clean_bytes = bytes(&closed[..dirty_start]);
    let dirty_bytes = bytes(&closed[dirty_start..dirty_end]);
    let dirty_ratio = if clean_bytes + dirty_bytes == 0 {
        0.0
    } else {
        dirty_bytes as f64 / (clean_bytes + dirty_bytes) as f64
    };
    let overdue = closed[dirty_start..dirty_end].first().is_some_and(|s| {
        s.max_timestamp_ms < now_ms.saturating_sub(config.max_compaction_lag_ms.max(0))
    });
    let ratio_reached = dirty_bytes > 0 && dirty_ratio >= config.min_cleanable_dirty_ratio;
    let has_dirty = dirty_end > dirty_start;
    let tombstone_run = tombstones_due && dirty_start > 0;
    if (has_dirty && (ratio_reached || overdue)) || tombstone_run {
        Some(Plan {
            dirty_start,
            dirty_end: if has_dirty && (ratio_reached || overdue) {
                dirty_end
            } else {
                dirty_start
            },
            dirty_ratio,
        })
    } else {
        None
    }
}

/// Consecutive segments rewritten into one file: runs of `(size, base offset, next offset)`
/// whose sizes add up to at most `max_bytes` (`segment.bytes`) and whose offsets span less
/// than `i32::MAX` (Kafka's `groupSegmentsBySize`). Segments cleaned before are small, so
/// they merge, and a compacted log does not keep one small file per segment it ever rolled.
pub fn group_by_size(segments: &[(u64, i64, i64)], max_bytes: u64) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < segments.len() {
        let (mut bytes, base, _) = segments[start];
        let mut end = start + 1;
        while let Some(&(size, _, next_offset)) = segments.get(end) {
            if bytes + size > max_bytes || next_offset - base > i32::MAX as i64 {
                break;
            }
            bytes += size;
            end += 1;
        }
        groups.push(start..end);
        start = end;
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(list: &[(i64, u64, i64)]) -> Vec<SegmentSummary> {
        list.iter()
            .map(
                |&(base_offset, size_bytes, max_timestamp_ms)| SegmentSummary {
                    base_offset,
                    size_bytes,
                    max_timestamp_ms,
                },
            )
            .collect()
    }

    #[test]
    fn the_dirty_ratio_decides() {
        let closed = segments(&[(0, 100, 10), (10, 100, 20), (20, 100, 30)]);
        let config = CompactionConfig::default();
        // Never cleaned: all dirty.
        let plan = choose(&closed, 0, &config, 1_000, false).unwrap();
        assert_eq!((plan.dirty_start, plan.dirty_end), (0, 3));
        assert_eq!(plan.dirty_ratio, 1.0);
        // One clean segment of three: 2/3 dirty.
        let plan = choose(&closed, 10, &config, 1_000, false).unwrap();
        assert_eq!((plan.dirty_start, plan.dirty_end), (1, 3));
        // Two clean: 1/3 < 0.5.
        assert_eq!(choose(&closed, 20, &config, 1_000, false), None);
        // Nothing dirty at all.
        assert_eq!(choose(&closed, 30, &config, 1_000, false), None);
    }

    #[test]
    fn min_lag_stops_the_dirty_range_and_max_lag_forces_a_run() {
        let closed = segments(&[(0, 100, 10), (10, 100, 500), (20, 100, 900)]);
        let config = CompactionConfig {
            min_compaction_lag_ms: 400,
            ..CompactionConfig::default()
        };
        let plan = choose(&closed, 0, &config, 1_000, false).unwrap();
        assert_eq!(
            plan.dirty_end, 2,
            "the segment with a record at 900 is too young"
        );
        let config = CompactionConfig {
            min_cleanable_dirty_ratio: 0.9,
            max_compaction_lag_ms: 100,
            ..CompactionConfig::default()
        };
        let plan = choose(&closed, 10, &config, 1_000, false).unwrap();
        assert_eq!(
            (plan.dirty_start, plan.dirty_end),
            (1, 3),
            "overdue at ratio 2/3"
        );
    }

    #[test]
    fn small_neighbours_are_grouped_up_to_the_segment_size() {
        let segments = [
            (100, 0, 10),
            (4000, 10, 20),
            (50, 20, 30),
            (50, 30, 40),
            (10, 40, 50),
        ];
        assert_eq!(group_by_size(&segments, 4096), vec![0..1, 1..3, 3..5]);
        assert_eq!(group_by_size(&segments, 100), vec![0..1, 1..2, 2..4, 4..5]);
        assert!(group_by_size(&[], 100).is_empty());
        let wide = [(1, 0, 10), (1, 10, i32::MAX as i64 + 1)];
        assert_eq!(group_by_size(&wide, 100), vec![0..1, 1..2], "offset span");
    }

    #[test]
    fn due_tombstones_rewrite_the_clean_part() {
        let closed = segments(&[(0, 100, 10), (10, 100, 20)]);
        let config = CompactionConfig::default();
        assert_eq!(choose(&closed, 20, &config, 1_000, false), None);
        let plan = choose(&closed, 20, &config, 1_000, true).unwrap();
        assert_eq!((plan.dirty_start, plan.dirty_end), (2, 2));
        assert_eq!(choose(&[], 0, &config, 1_000, true), None);
    }
}
