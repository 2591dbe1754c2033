//! The offsets partitions a shard owns: ordinary `PartitionLog`s under
//! `<data-dir>/__consumer_offsets-<p>/`.
//!
//! On a single node they are this module's own logs, opened at start when they exist (and
//! replayed) or on the first commit of a group placed on them. In a cluster the offsets topic
//! is a replicated topic like any other: the shard opens its partitions (`shard::partition`,
//! replicated by `replication`), and the group coordinator *adopts* a partition when this
//! broker becomes its leader (replaying it) and releases it when leadership moves, so commits
//! are acknowledged only once on every in-sync replica.
//!
//! Owned by one shard (the partitions' owner shard); `!Send`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use std::time::Duration;

use crate::shard::partition::Partition;
use crate::storage::{LogConfig, PartitionLog, StorageError};

use super::records::{decode_batches, encode_batch, OffsetsBatch, OffsetsRecord, TxnProducer};
use super::OFFSETS_TOPIC;

/// Records per appended batch: with group ids, topic names and commit metadata bounded, 100
/// records stay far below `message.max.bytes`.
pub const RECORDS_PER_BATCH: usize = 100;

/// Longest a commit waits for the in-sync replicas of its offsets partition.
const REPLICATED_COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// One offsets partition's log, as the group coordinator writes to it.
#[derive(Clone)]
pub enum OffsetsLog {
    /// A single node's own log: durable once fdatasync'ed.
    Own(Rc<PartitionLog>),
    /// A replicated partition this broker leads: durable once on every in-sync replica.
    Replicated(Rc<Partition>),
}

impl OffsetsLog {
    fn log(&self) -> &Rc<PartitionLog> {
        match self {
            OffsetsLog::Own(log) => log,
            OffsetsLog::Replicated(partition) => &partition.log,
        }
    }
}

pub struct OffsetsLogs {
    data_dir: PathBuf,
    config: LogConfig,
    /// In a cluster only adopted (led) partitions are written; nothing is opened here.
    clustered: bool,
    logs: RefCell<HashMap<i32, OffsetsLog>>,
    /// Serialises lazy opens so two commits never open the same directory twice.
    open_lock: glommio::sync::Semaphore,
}

fn storage(e: StorageError) -> String {
    e.to_string()
}

/// The log settings of offsets partitions, from the broker's.
pub fn offsets_log_config(broker_log: &LogConfig) -> LogConfig {
    let mut config = broker_log.clone();
    // Offsets must never age out: retention would silently reset consumers. Compaction
    // (keeping the newest record per key, `storage::cleaner`) is the bound, as in Kafka.
    config.retention_ms = -1;
    config.retention_bytes = -1;
    config.segment_bytes = config.segment_bytes.min(100 << 20);
    config.tail_cache_bytes = 256 << 10;
    // A batch of RECORDS_PER_BATCH records of bounded size (group id, topic name, commit
    // metadata) stays under 1 MiB, whatever message.max.bytes says for client batches.
    config.max_batch_bytes = config.max_batch_bytes.max(1 << 20);
    config.segment_bytes = config.segment_bytes.max(config.max_batch_bytes as u64);
    config
}

impl OffsetsLogs {
    pub fn new(data_dir: PathBuf, broker_log: &LogConfig, clustered: bool) -> OffsetsLogs {
        OffsetsLogs {
            data_dir,
            config: offsets_log_config(broker_log),
            clustered,
            logs: RefCell::new(HashMap::new()),
            open_lock: glommio::sync::Semaphore::new(1),
        }
    }

    fn dir(&self, partition: i32) -> PathBuf {
        self.data_dir.join(format!("{OFFSETS_TOPIC}-{partition}"))
    }

    /// Partitions among `owned` that have a log on disk (a single node's own logs).
    pub fn existing(&self, owned: impl Iterator<Item = i32>) -> Vec<i32> {
        if self.clustered {
            return Vec::new();
        }
        owned.filter(|&p| self.dir(p).is_dir()).collect()
    }

    /// Opens partition `partition`'s log (creating it if needed). Returns the records in it
    /// when this call opened it, so the caller can rebuild state before anyone commits. In a
    /// cluster only an adopted partition is open, and nothing else can be.
    pub async fn open(
        &self,
        partition: i32,
    ) -> Result<(OffsetsLog, Option<Vec<OffsetsBatch>>), String> {
        if let Some(log) = self.get(partition) {
            return Ok((log, None));
        }
        if self.clustered {
            return Err(format!(
                "offsets partition {partition} is not led by this broker (or still loading)"
            ));
        }
        let _permit = self
            .open_lock
            .acquire_permit(1)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(log) = self.get(partition) {
            return Ok((log, None));
        }
        let log = PartitionLog::open(self.dir(partition), self.config.clone())
            .await
            .map_err(storage)?;
        let records = replay(&log, self.config.max_batch_bytes)?;
        let log = OffsetsLog::Own(log);
        self.logs.borrow_mut().insert(partition, log.clone());
        Ok((log, Some(records)))
    }

    /// This broker now leads replicated offsets partition `partition`: reads what it holds
    /// (everything written: the leader's log is the one the ISR converges to) and writes to
    /// it from now on.
    pub fn adopt(
        &self,
        partition: i32,
        replicated: Rc<Partition>,
    ) -> Result<Vec<OffsetsBatch>, String> {
        assert!(
            self.clustered,
            "only a cluster replicates the offsets topic"
        );
        let records = replay(&replicated.log, self.config.max_batch_bytes)?;
        self.logs
            .borrow_mut()
            .insert(partition, OffsetsLog::Replicated(replicated));
        Ok(records)
    }

    /// A single node's own offsets logs, for the log cleaner (replicated ones are the shard's
    /// partitions, which it cleans as any compacted topic).
    pub fn own_logs(&self) -> Vec<Rc<PartitionLog>> {
        self.logs
            .borrow()
            .values()
            .filter_map(|log| match log {
                OffsetsLog::Own(log) => Some(log.clone()),
                OffsetsLog::Replicated(_) => None,
            })
            .collect()
    }

    /// Leadership of `partition` moved away: no more writes from here.
    pub fn release(&self, partition: i32) -> bool {
        self.logs.borrow_mut().remove(&partition).is_some()
    }

    pub fn get(&self, partition: i32) -> Option<OffsetsLog> {
        self.logs.borrow().get(&partition).cloned()
    }

    /// Appends `records` now (offsets assigned in call order) and returns the end offset to
    /// wait for: the caller awaits [`wait_durable`] before answering (acks=all rule).
    /// `producer`: the records are a transaction's (TxnOffsetCommit), pending until its marker.
    pub fn append(
        log: &OffsetsLog,
        records: &[OffsetsRecord],
        now_ms: i64,
        producer: Option<TxnProducer>,
    ) -> Result<i64, String> {
        let leader_epoch = Self::leader_epoch(log)?;
        let log = log.log();
        let mut end_offset = log.log_end_offset();
        for chunk in records.chunks(RECORDS_PER_BATCH) {
            let batch = encode_batch(chunk, now_ms, producer);
            let header =
                crate::record_batch::validate(&batch, usize::MAX).map_err(|e| e.to_string())?;
            let info = log.append(batch, &header, leader_epoch).map_err(storage)?;
            end_offset = info.last_offset + 1;
        }
        Ok(end_offset)
    }

    /// Appends a transaction's commit or abort marker now and returns the end offset to wait
    /// for, as [`Self::append`].
    pub fn append_marker(
        log: &OffsetsLog,
        (producer_id, producer_epoch): TxnProducer,
        committed: bool,
        now_ms: i64,
    ) -> Result<i64, String> {
        let leader_epoch = Self::leader_epoch(log)?;
        let batch = crate::record_batch::control::encode_marker(
            producer_id,
            producer_epoch,
            committed,
            0,
            now_ms,
        );
        let header =
            crate::record_batch::validate(&batch, usize::MAX).map_err(|e| e.to_string())?;
        let info = log
            .log()
            .append(batch, &header, leader_epoch)
            .map_err(storage)?;
        Ok(info.last_offset + 1)
    }

    /// The leader epoch appends are stamped with; an error once no longer the leader.
    fn leader_epoch(log: &OffsetsLog) -> Result<i32, String> {
        Ok(match log {
            OffsetsLog::Own(_) => 0,
            OffsetsLog::Replicated(partition) => {
                if !partition.is_leader() {
                    return Err("no longer the leader of the offsets partition".into());
                }
                partition.leader_epoch.get()
            }
        })
    }

    pub async fn close(&self) {
        let logs: Vec<_> = self.logs.borrow().values().cloned().collect();
        for log in logs {
            // Replicated partitions belong to the shard, which closes them.
            if let OffsetsLog::Own(log) = log {
                if let Err(e) = log.close().await {
                    tracing::error!(error = %e, "closing an offsets log failed");
                }
            }
        }
    }
}

/// Waits until everything below `end_offset` is durable: fdatasync'ed (group-committed with
/// other waiters on the same partition), and in a cluster on every in-sync replica.
pub async fn wait_durable(log: &OffsetsLog, end_offset: i64) -> Result<(), String> {
    match log {
        OffsetsLog::Own(log) => log.wait_written(end_offset, true).await.map_err(storage),
        OffsetsLog::Replicated(partition) => partition
            .wait_acknowledged(end_offset, true, REPLICATED_COMMIT_TIMEOUT)
            .await
            .map_err(|e| e.message),
    }
}

/// Reads every batch of a freshly opened log, oldest first.
fn replay(log: &PartitionLog, max_batch_bytes: usize) -> Result<Vec<OffsetsBatch>, String> {
    let mut out = Vec::new();
    log.for_each_written_batch("offsets log", max_batch_bytes, |_, batch| {
        out.extend(decode_batches(batch, max_batch_bytes)?);
        Ok(())
    })?;
    Ok(out)
}
