//! Truncation of a [`PartitionLog`]: a follower removing a divergent suffix
//! ([`PartitionLog::truncate_to`]) or restarting its log at the leader's log start
//! ([`PartitionLog::truncate_fully_and_start_at`]), in place, with the writer stopped.

use std::rc::Rc;

use tracing::{info, warn};

use super::{Lifecycle, PartitionLog};
use crate::storage::notify::Mark;
use crate::storage::producer_snapshot;
use crate::storage::recovery::{self, RecoveredActive};
use crate::storage::segment::{self, Segment};
use crate::storage::writer::WriterHost;
use crate::storage::StorageError;

impl PartitionLog {
    /// Removes every batch at or above `offset` (a follower's divergent suffix); if `offset`
    /// falls inside a batch the whole batch goes. Returns the new log end offset. In place:
    /// the `Rc<PartitionLog>` stays valid.
    ///
    /// The writer drains its queue and stops; later segments are deleted (newest first, so a
    /// crash leaves a prefix), the segment holding the cut is cut and rescanned like an active
    /// segment on open (indexes, producer batches, tail page) and becomes the active segment;
    /// the epoch cache drops the epochs starting at or after the cut. LEO, written and durable
    /// become the new end, the high watermark `min(high watermark, new end)` (below it is
    /// allowed, as for Kafka followers, and logged at warn). Every wait above the cut fails
    /// with `Truncated`. Appends are refused with `Truncating` meanwhile.
    ///
    /// `offset` at or above LEO: nothing to do. Below the log start: as
    /// [`Self::truncate_fully_and_start_at`] (Kafka does the same).
    pub async fn truncate_to(&self, offset: i64) -> Result<i64, StorageError> {
        self.check_open()?;
        if offset < 0 {
            return Err(self.out_of_range(offset));
        }
        if offset >= self.log_end_offset() {
            return Ok(self.log_end_offset());
        }
        if offset < self.log_start_offset() {
            self.truncate_fully_and_start_at(offset).await?;
            return Ok(offset);
        }
        self.suspend_writer().await?;
        // Everything queued is written now; what the journal holds of it must not come back.
        self.forget_journaled();
        let cut = self.cut_suffix(offset).await;
        self.resume_writer(cut)
    }

    /// Deletes every segment and restarts the log empty at `offset`: log start, LEO, written,
    /// durable and high watermark all become `offset` (a follower whose log ends below the
    /// leader's log start). The epoch cache is cleared; every pending wait fails with
    /// `Truncated`.
    pub async fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), StorageError> {
        self.check_open()?;
        if offset < 0 {
            return Err(self.out_of_range(offset));
        }
        self.suspend_writer().await?;
        self.forget_journaled();
        let restarted = self.restart_at(offset).await;
        self.resume_writer(restarted).map(|_| ())
    }

    /// Stops the writer after it wrote everything queued; appends are refused until
    /// [`Self::resume_writer`].
    async fn suspend_writer(&self) -> Result<(), StorageError> {
        self.lifecycle.set(Lifecycle::Truncating);
        if let Err(e) = self.stop_writer().await {
            // The writer failed (the log is in the failed state): nothing to truncate.
            self.lifecycle.set(Lifecycle::Open);
            return Err(e);
        }
        assert!(!self.has_queued(), "the writer drains before stopping");
        assert_eq!(
            self.written_offset(),
            self.log_end_offset(),
            "everything queued is written"
        );
        Ok(())
    }

    /// Restarts the writer on the active segment a truncation left, or puts the log in the
    /// failed state if the truncation failed (its files are then in an unknown state).
    fn resume_writer(
        &self,
        truncated: Result<RecoveredActive, StorageError>,
    ) -> Result<i64, StorageError> {
        if self.lifecycle.get() != Lifecycle::Truncating {
            // Closed or deleted meanwhile: the file handle closes on drop.
            return Err(StorageError::Closed);
        }
        self.lifecycle.set(Lifecycle::Open);
        match truncated {
            Ok(active) => {
                self.start_writer(active);
                Ok(self.log_end_offset())
            }
            Err(error) => {
                self.fail(&error);
                Err(error)
            }
        }
    }

    /// The marks and memory side of a truncation, done before any file changes so that reads
    /// never see past the cut: LEO, written and durable to `new_end`, the high watermark to at
    /// most `new_end`, waits above `floor` failed, the tail cache cut.
    fn lower_marks(&self, floor: i64, new_end: i64) {
        let high_watermark = self.high_watermark();
        self.log_end_offset.set(new_end);
        let durable = self.durable_offset().min(floor).min(new_end);
        self.notifier
            .truncate(floor, new_end, durable, high_watermark.min(new_end));
        self.sync_requested_offset
            .set(self.sync_requested_offset.get().min(durable));
        self.tail_cache.borrow_mut().truncate_from(floor);
    }

    /// [`Self::truncate_to`] with the writer stopped: returns the cut segment, rescanned, as
    /// the new active segment.
    async fn cut_suffix(&self, offset: i64) -> Result<RecoveredActive, StorageError> {
        let (index, cut_position, new_end) = {
            let segments = self.segments.borrow();
            let index = segments
                .partition_point(|s| s.base_offset() <= offset)
                .checked_sub(1)
                .expect("offset >= log start, so a segment starts at or below it");
            let segment = &segments[index];
            match segment.find_batch(offset, segment.size_bytes(), self.max_batch_bytes())? {
                Some((position, header)) => (index, position, header.base_offset),
                None => (index, segment.size_bytes(), segment.next_offset()),
            }
        };
        assert!(new_end <= offset && new_end >= self.log_start_offset());
        let high_watermark = self.high_watermark();
        if new_end < high_watermark {
            // Allowed (Kafka followers may), but consumers may have seen what goes.
            warn!(
                dir = %self.dir.display(),
                high_watermark,
                new_end,
                "truncating below the high watermark"
            );
        }
        info!(
            dir = %self.dir.display(),
            requested = offset,
            new_end,
            log_end = self.log_end_offset(),
            "truncating the log"
        );
        self.lower_marks(new_end, new_end);

        let (cut, later): (Rc<Segment>, Vec<Rc<Segment>>) = {
            let segments = self.segments.borrow();
            (segments[index].clone(), segments[index + 1..].to_vec())
        };
        for segment in later.iter().rev() {
            segment.delete_files()?;
        }
        // Rescanned up to the cut before the file is cut: until the new segment replaces the
        // old one, reads through the old one may still look at the header at the cut.
        // Producer state: snapshots above the cut segment's base count batches being removed;
        // the state at that base comes from an older snapshot and the closed segments.
        producer_snapshot::remove_where(&self.dir, |o| o > cut.base_offset())?;
        let closed_segments = self.segments.borrow()[..index].to_vec();
        let closed = recovery::producers::recover_closed_segments(
            &self.dir,
            &closed_segments,
            cut.base_offset(),
            &self.config,
            |_| true,
        )?;
        let mut active = recovery::recover_active_segment(
            &self.dir,
            cut.base_offset(),
            &self.config,
            Some(cut_position),
            closed.tracker,
        )
        .await?;
        let mut aborted = closed.aborted;
        aborted.append(&mut active.aborted);
        active.aborted = aborted;
        if active.segment.size_bytes() != cut_position || active.segment.next_offset() != new_end {
            return Err(cut.corrupt(
                active.segment.size_bytes(),
                &format!(
                    "batches below the cut at {cut_position} (offset {new_end}) do not validate"
                ),
            ));
        }
        {
            let mut segments = self.segments.borrow_mut();
            segments.truncate(index);
            segments.push(active.segment.clone());
        }
        let file = active
            .file
            .as_ref()
            .expect("a cut segment is scanned through its file");
        file.truncate(cut_position).await?;
        file.fdatasync().await?;
        self.count_sync();
        // The cut segment is active now: its index files are rebuilt by scans and written
        // when it closes; empty ones keep the directory looking like Kafka's meanwhile.
        std::fs::File::create(active.segment.index_path())?;
        std::fs::File::create(active.segment.time_index_path())?;
        segment::sync_dir(&self.dir).await?;
        self.notifier.advance(Mark::Durable, new_end);
        // After the cut is durable: a crash before this leaves entries at or past the log end,
        // which opening drops.
        {
            let mut epochs = self.epochs.borrow_mut();
            if epochs.truncate_from_end(new_end) {
                epochs.persist()?;
            }
        }
        Ok(active)
    }

    /// [`Self::truncate_fully_and_start_at`] with the writer stopped: returns the new, empty
    /// active segment.
    async fn restart_at(&self, offset: i64) -> Result<RecoveredActive, StorageError> {
        info!(
            dir = %self.dir.display(),
            offset,
            log_start = self.log_start_offset(),
            log_end = self.log_end_offset(),
            "truncating the whole log and restarting it"
        );
        // Every wait fails: below `offset` nothing is left either.
        let floor = self.log_start_offset().min(offset);
        self.lower_marks(floor, floor);
        self.tail_cache.borrow_mut().clear();
        producer_snapshot::remove_where(&self.dir, |_| true)?;
        // Cleared before the segments go: a crash in between leaves an empty checkpoint beside
        // segments, which opening treats as missing and rebuilds.
        self.epochs.borrow_mut().replace(Vec::new())?;
        // The new segment's base offset says where the log starts now.
        super::log_start::remove_checkpoint(&self.dir)?;

        let old = self.segments.borrow().clone();
        // Newest first, everything that reaches `offset`, so a crash leaves a prefix that the
        // new segment can follow without overlapping it.
        let (kept, reaching): (Vec<_>, Vec<_>) = old
            .iter()
            .partition(|s| s.base_offset() < offset && s.next_offset() <= offset);
        for segment in reaching.iter().rev() {
            segment.delete_files()?;
        }
        let (segment, file) = Segment::create(&self.dir, offset).await?;
        let segment = Rc::new(segment);
        // Then the rest, oldest first: a crash leaves a log whose start moved forward, as
        // retention would.
        for segment in &kept {
            segment.delete_files()?;
        }
        segment::sync_dir(&self.dir).await?;
        *self.segments.borrow_mut() = vec![segment.clone()];
        self.log_start_offset.set(offset);
        self.log_end_offset.set(offset);
        // Everything below `offset` is gone, so every mark may sit at it.
        self.notifier.truncate(floor, offset, offset, offset);
        Ok(RecoveredActive {
            segment,
            file: Some(file),
            tail: Vec::new(),
            producers: Default::default(),
            aborted: Vec::new(),
            epoch_starts: Vec::new(),
            trusted_clean_close: false,
        })
    }
}
