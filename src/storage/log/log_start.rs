//! Moving a [`PartitionLog`]'s start forward on request (DeleteRecords, and a follower taking
//! its leader's log start), persisted in `log-start-offset-checkpoint` so a restart keeps it.
//!
//! Retention moves the log start only to a segment boundary, which the segment files record by
//! themselves. DeleteRecords may move it into the middle of a segment; that position lives in
//! the checkpoint: `0\n<offset>\n` (a version, then the offset). Opening takes the larger of it
//! and the first segment's base offset, so a checkpoint left behind by older segments is
//! harmless.

use std::io::{self, Write};
use std::path::Path;
use std::rc::Rc;

use tracing::{info, warn};

use super::{settled_closed_segments, PartitionLog};
use crate::storage::segment::Segment;
use crate::storage::StorageError;

pub const LOG_START_CHECKPOINT: &str = "log-start-offset-checkpoint";
const VERSION: &str = "0";

/// The log start recorded in `dir`, if a whole, well-formed checkpoint is there.
pub fn read_checkpoint(dir: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(dir.join(LOG_START_CHECKPOINT)).ok()?;
    let mut lines = text.lines();
    let parsed = match (lines.next(), lines.next(), lines.next()) {
        (Some(VERSION), Some(offset), None) => offset.trim().parse::<i64>().ok(),
        _ => None,
    }
    .filter(|&offset| offset >= 0);
    if parsed.is_none() {
        warn!(dir = %dir.display(), "ignoring a malformed log-start-offset-checkpoint");
    }
    parsed
}

/// Writes the checkpoint durably (temporary file, fsync, rename, directory fsync).
fn write_checkpoint(dir: &Path, offset: i64) -> io::Result<()> {
    let path = dir.join(LOG_START_CHECKPOINT);
    let temporary = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(format!("{VERSION}\n{offset}\n").as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes the checkpoint (the log restarted; its first segment says where it starts).
pub fn remove_checkpoint(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(LOG_START_CHECKPOINT)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl PartitionLog {
    /// Moves the log start forward to `offset` (DeleteRecords' "delete everything before"):
    /// reads below it fail with `OffsetOutOfRange`, ListOffsets earliest answers it, and
    /// closed segments wholly below it are deleted (off the shard). Returns the log start
    /// after the call; an `offset` at or below the current start changes nothing.
    ///
    /// The caller keeps `offset` at or below the high watermark (Kafka's rule: nothing a
    /// follower may still need, nothing consumers cannot see yet).
    pub async fn advance_log_start(&self, offset: i64) -> Result<i64, StorageError> {
        self.check_open()?;
        if offset <= self.log_start_offset() {
            return Ok(self.log_start_offset());
        }
        assert!(
            offset <= self.high_watermark(),
            "log start {offset} past the high watermark {}",
            self.high_watermark()
        );
        // Durable first: once the start moved in memory, a restart must not move it back.
        // Blocking, like the epoch checkpoint: a rare administrative write of a few bytes.
        write_checkpoint(&self.dir, offset)?;
        self.log_start_offset.set(offset);
        self.tail_cache.borrow_mut().evict_below(offset);
        info!(dir = %self.dir.display(), log_start_offset = offset, "log start moved forward");
        let removed: Vec<Rc<Segment>> = {
            let mut segments = self.segments.borrow_mut();
            // A segment a roll is still closing stays: retention (if the topic has limits) or
            // the next DeleteRecords removes it.
            let below = settled_closed_segments(&segments)
                .iter()
                .take_while(|s| s.next_offset() <= offset)
                .count();
            segments.drain(..below).collect()
        };
        self.delete_segments(removed).await?;
        let mut epochs = self.epochs.borrow_mut();
        if epochs.truncate_from_start(offset) {
            epochs.persist()?;
        }
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::log::tests::{append, consume_all, small_config};
    use crate::storage::testutil::{batch, run};
    use crate::storage::{LogConfig, ReadLimit};

    #[test]
    fn the_log_start_moves_inside_a_segment_survives_reopening_and_retention_moves_it_on() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t-0");
            let config = LogConfig {
                retention_ms: 1_000,
                ..small_config()
            };
            let log = PartitionLog::open(path.clone(), config.clone())
                .await
                .unwrap();
            for _ in 0..200 {
                append(&log, batch(4, 100, 1_000));
            }
            log.wait_written(log.log_end_offset(), false).await.unwrap();
            let bases = log.segment_base_offsets();
            assert!(bases.len() > 4);
            // Two past the third segment's base: inside it.
            let start = bases[2] + 2;
            assert_eq!(log.advance_log_start(start).await.unwrap(), start);
            assert_eq!(log.log_start_offset(), start);
            assert_eq!(
                log.segment_base_offsets(),
                bases[2..],
                "whole segments below go"
            );
            assert!(!path.join(format!("{:020}.log", bases[1])).exists());
            assert!(matches!(
                log.read(start - 1, 100, true, ReadLimit::HighWatermark),
                Err(StorageError::OffsetOutOfRange { .. })
            ));
            assert!(!consume_all(&log, start, 5000).is_empty());
            // Backwards is a no-op.
            assert_eq!(log.advance_log_start(bases[1]).await.unwrap(), start);
            log.close().await.unwrap();

            let log = PartitionLog::open(path.clone(), config.clone())
                .await
                .unwrap();
            assert_eq!(log.log_start_offset(), start, "the checkpoint is read back");
            // Retention (time: every record is old) deletes up to the active segment and
            // moves the start to its base, past the checkpointed start.
            assert!(log.enforce_retention(i64::MAX).await.unwrap() > 0);
            assert_eq!(log.log_start_offset(), *bases.last().unwrap());
            // A follower restarting its log elsewhere: the checkpoint goes with the old start.
            let restart = log.log_end_offset() + 10;
            log.truncate_fully_and_start_at(restart).await.unwrap();
            assert!(!path.join(LOG_START_CHECKPOINT).exists());
            log.close().await.unwrap();
            let log = PartitionLog::open(path, config).await.unwrap();
            assert_eq!(log.log_start_offset(), restart);
            log.close().await.unwrap();
        });
    }

    #[test]
    fn a_malformed_checkpoint_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["", "0\n", "1\n5\n", "0\nx\n", "0\n-4\n", "0\n5\n6\n"] {
            std::fs::write(dir.path().join(LOG_START_CHECKPOINT), text).unwrap();
            assert_eq!(read_checkpoint(dir.path()), None, "{text:?}");
        }
        write_checkpoint(dir.path(), 42).unwrap();
        assert_eq!(read_checkpoint(dir.path()), Some(42));
    }
}
