//! Log compaction: for topics with `compact` in `cleanup.policy`, keep only the latest record
//! of every key in the closed segments (Kafka's `LogCleaner`).
//!
//! # Layout
//! - [`plan`]: which segments a run covers (dirty ratio, compaction lags, tombstones due).
//! - [`offset_map`]: the key → latest offset map, bounded by `log.cleaner.dedupe.buffer.size`.
//! - [`aborted`]: which transactional batches belong to aborted transactions (from the
//!   `.txnindex` files); runs stop at the first unstable offset, so every other one committed.
//! - [`records`]: records inside a batch, rebuilding a batch that keeps some of them.
//! - [`codec`]: the batch codecs (bounded decompression, recompression with the same codec).
//! - [`rewrite`]: the blocking work: building the map, writing `<base>.log.cleaned` files.
//! - [`swap`]: the crash-safe `.cleaned` → `.swap` → `.log` protocol and its recovery.
//!
//! # A run ([`clean`])
//! On the owning shard: pick the segments, open (pin) their read descriptors. On the blocking
//! thread: build the map over the dirty segments, write cleaned copies of every segment from
//! the log start to the end of the mapped ones, fsync them. Back on the shard: check the log
//! still lists those segments, commit the swap on the blocking thread, then switch the segment
//! list to the cleaned segments in one step. Cleaned segments keep their base offsets and
//! their batches keep theirs: offsets stay increasing, with gaps where records went.
//!
//! Retention and idle release skip a log while its run is in progress (see
//! `PartitionLog::begin_cleaning`), so the segments a run read are the ones it replaces, and
//! the pinned descriptors are what reads use until the list switches.

pub mod aborted;
pub mod codec;
pub mod offset_map;
pub mod plan;
pub mod records;
pub mod rewrite;
pub mod swap;

#[cfg(test)]
mod tests;

use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use self::aborted::AbortedTransactions;
use self::offset_map::KeyOffsetMap;
pub use self::plan::CompactionConfig;
use self::rewrite::{SegmentOutcome, SourceSegment};
use super::log::compact::{checkpoint_text, CLEANER_CHECKPOINT_FILE};
use super::segment::Segment;
use super::{PartitionLog, StorageError};

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunStats {
    pub dirty_ratio: f64,
    pub segments_rewritten: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    pub keys_mapped: usize,
}

/// Cleans `log` once if its compaction settings call for it; `Ok(None)` when nothing was due
/// (or a run is already going). `dedupe_buffer_bytes` bounds the key map.
pub async fn clean(
    log: &PartitionLog,
    config: &CompactionConfig,
    now_ms: i64,
    dedupe_buffer_bytes: usize,
) -> Result<Option<RunStats>, StorageError> {
    let Some(_running) = log.begin_cleaning() else {
        return Ok(None);
    };
    let closed = log.cleanable_segments();
    let summaries: Vec<plan::SegmentSummary> = closed
        .iter()
        .map(|s| plan::SegmentSummary {
            base_offset: s.base_offset(),
            size_bytes: s.size_bytes(),
            max_timestamp_ms: s.retention_timestamp(),
        })
        .collect();
    let Some(plan) = plan::choose(
        &summaries,
        log.first_dirty_offset(),
        config,
        now_ms,
        log.tombstones_due(now_ms),
    ) else {
        return Ok(None);
    };
    let candidates = &closed[..plan.dirty_end];
    // Pinned: each segment's own descriptor stays on the old file through the swap, so a
    // read on this shard never opens the cleaned file by name before the list switches.
    let sources = candidates
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Ok(SourceSegment {
                base_offset: s.base_offset(),
                log_path: s.log_path().to_path_buf(),
                file: s.read_file()?,
                size_bytes: s.size_bytes(),
                next_offset: s.next_offset(),
                already_clean: i < plan.dirty_start,
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    let (aborted_files, active_aborted) =
        log.aborted_transaction_sources(candidates.first().map_or(i64::MAX, |s| s.base_offset()));
    let dir = log.dir().to_path_buf();
    let (index_interval_bytes, max_batch_bytes, segment_bytes) = (
        log.config().index_interval_bytes,
        log.max_batch_bytes(),
        log.segment_bytes(),
    );
    let delete_retention_ms = config.delete_retention_ms;
    let dirty_start = plan.dirty_start;
    let work_dir = dir.clone();
    type Groups = Vec<(Range<usize>, SegmentOutcome)>;
    let (outcomes, mapped, keys_mapped) = glommio::executor()
        .spawn_blocking(move || -> Result<(Groups, usize, usize), StorageError> {
            let aborted = AbortedTransactions::load(&aborted_files, active_aborted)?;
            let mut map = KeyOffsetMap::new(dedupe_buffer_bytes);
            let mapped = rewrite::build_offset_map(
                &sources[dirty_start..],
                &mut map,
                &aborted,
                max_batch_bytes,
            )?;
            let end = dirty_start + mapped;
            let spans: Vec<(u64, i64, i64)> = sources[..end]
                .iter()
                .map(|s| (s.size_bytes, s.base_offset, s.next_offset))
                .collect();
            let mut outcomes: Groups = Vec::with_capacity(end);
            for group in plan::group_by_size(&spans, segment_bytes) {
                let outcome = rewrite::clean_group(
                    &work_dir,
                    &sources[group.clone()],
                    &map,
                    &aborted,
                    now_ms,
                    delete_retention_ms,
                    index_interval_bytes,
                    max_batch_bytes,
                );
                match outcome {
                    Ok(outcome) => outcomes.push((group, outcome)),
                    Err(e) => {
                        let written: Vec<Segment> = outcomes
                            .into_iter()
                            .filter_map(|(_, o)| o.cleaned)
                            .collect();
                        let _ = swap::abandon(&written);
                        return Err(e);
                    }
                }
            }
            Ok((outcomes, mapped, map.len()))
        })
        .await?;
    if mapped < plan.dirty_end - plan.dirty_start {
        tracing::warn!(
            dir = %dir.display(),
            mapped_segments = mapped,
            dirty_segments = plan.dirty_end - plan.dirty_start,
            dedupe_buffer_bytes,
            "log cleaner: the key map is full; cleaning a prefix of the dirty segments"
        );
    }
    let end = plan.dirty_start + mapped;
    let first_dirty_offset = match end.checked_sub(1) {
        Some(last) if end > plan.dirty_start => log
            .next_segment_base(&closed[last])
            .unwrap_or(closed[last].next_offset()),
        _ => log.first_dirty_offset(),
    };
    let tombstones_due_ms = outcomes
        .iter()
        .filter_map(|(_, o)| o.tombstones_due_ms)
        .min();
    let mut stats = RunStats {
        dirty_ratio: plan.dirty_ratio,
        keys_mapped,
        ..RunStats::default()
    };
    let mut old_segments: Vec<Vec<Rc<Segment>>> = Vec::new();
    let mut cleaned: Vec<swap::Replacement> = Vec::new();
    for (group, outcome) in outcomes {
        stats.records_removed += outcome.records_removed;
        if let Some(segment) = outcome.cleaned {
            let members = &candidates[group];
            stats.segments_rewritten += members.len();
            stats.bytes_read += outcome.bytes_before;
            stats.bytes_written += outcome.bytes_after;
            cleaned.push(swap::Replacement {
                segment,
                members: members[1..]
                    .iter()
                    .map(|s| s.log_path().to_path_buf())
                    .collect(),
            });
            old_segments.push(members.to_vec());
        }
    }
    let old: Vec<Rc<Segment>> = old_segments.iter().flatten().cloned().collect();
    if !log.segments_unchanged(&old) {
        let cleaned: Vec<Segment> = cleaned.into_iter().map(|r| r.segment).collect();
        glommio::executor()
            .spawn_blocking(move || swap::abandon(&cleaned))
            .await?;
        return Ok(None);
    }
    let commit_dir = dir.clone();
    let cleaned = glommio::executor()
        .spawn_blocking(move || -> Result<Vec<Segment>, StorageError> {
            if let Err(e) = swap::commit(&commit_dir, &cleaned) {
                // Before the commit point the `.cleaned` files must not outlive the run.
                let segments: Vec<Segment> = cleaned.into_iter().map(|r| r.segment).collect();
                let _ = swap::abandon(&segments);
                return Err(e.into());
            }
            std::fs::write(
                commit_dir.join(CLEANER_CHECKPOINT_FILE),
                checkpoint_text(first_dirty_offset, tombstones_due_ms),
            )?;
            Ok(cleaned.into_iter().map(|r| r.segment).collect())
        })
        .await?;
    let doomed = log.install_cleaned(
        old_segments.into_iter().zip(cleaned).collect(),
        first_dirty_offset,
        tombstones_due_ms,
    );
    doomed.delete_off_shard().await?;
    if stats.segments_rewritten > 0 {
        let detail = &crate::metrics::DETAIL;
        detail.cleaner_runs.fetch_add(1, Relaxed);
        detail
            .cleaner_bytes_read
            .fetch_add(stats.bytes_read, Relaxed);
        detail
            .cleaner_bytes_written
            .fetch_add(stats.bytes_written, Relaxed);
        detail
            .cleaner_records_removed
            .fetch_add(stats.records_removed, Relaxed);
    }
    Ok(Some(stats))
}
