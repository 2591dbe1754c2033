//! The log's side of the shard's journal ([`crate::storage::journal`]): copying a leader's
//! appends into it, forgetting them when the log is deleted or truncated, and replaying at open
//! what a previous run journaled but never wrote.

use bytes::Bytes;

use super::PartitionLog;
use crate::record_batch;
use crate::storage::journal;
use crate::storage::StorageError;

impl PartitionLog {
    /// Offers a just-queued batch to the shard's journal, which moves the journaled mark over
    /// it once it holds it (at once, or when a full ring has room again). The copy carries the
    /// assigned offset and epoch, as the segment will.
    pub(super) fn journal_batch(
        &self,
        batch: &Bytes,
        base_offset: i64,
        last_offset: i64,
        leader_epoch: i32,
    ) {
        let Some(log_id) = self.journal_log_id else {
            return;
        };
        let mut head = [0u8; 16];
        head.copy_from_slice(&batch[..16]);
        record_batch::assign(&mut head, base_offset, leader_epoch);
        journal::append(journal::LeaderBatch {
            log_id,
            notifier: &self.notifier,
            dir_name: &self.dir_name,
            head,
            batch,
            base_offset,
            end_offset: last_offset + 1,
        });
    }

    /// The journal's entries of this log are never to be replayed: it is being deleted, or a
    /// truncation (after its writer drained: they are all written) cuts below them.
    pub(super) fn forget_journaled(&self) {
        if let Some(log_id) = self.journal_log_id {
            journal::forget_log(log_id);
        }
    }

    /// Appends `batches` (a previous run's journal entries for this directory, oldest first)
    /// that continue the log where its recovered segments end, and waits until they are
    /// durable: only then may the old journal files go. Batches wholly below the end are
    /// already in the segments; a batch past the end means the journal lost the ones between
    /// (it never should), so the rest is left out with an error in the log.
    pub(super) async fn replay_journaled(&self, batches: Vec<Bytes>) -> Result<(), StorageError> {
        if batches.is_empty() {
            return Ok(());
        }
        let start = self.log_end_offset();
        for batch in batches {
            let header = match record_batch::validate(&batch, self.max_batch_bytes()) {
                Ok(header) => header,
                Err(error) => {
                    tracing::error!(dir = %self.dir.display(), ?error, "journaled batch rejected; later ones not replayed");
                    break;
                }
            };
            let end = self.log_end_offset();
            if header.last_offset() < end {
                continue;
            }
            if header.base_offset != end {
                tracing::error!(
                    dir = %self.dir.display(),
                    log_end_offset = end,
                    journaled_base_offset = header.base_offset,
                    "the journal skips offsets; later journaled batches not replayed"
                );
                break;
            }
            self.append_replica(batch, &header)?;
        }
        let end = self.log_end_offset();
        if end > start {
            self.wait_written(end, true).await?;
            tracing::info!(
                dir = %self.dir.display(),
                from = start,
                to = end,
                "replayed journaled batches the previous run had not written"
            );
        }
        Ok(())
    }
}
