//! Offsets of transactions at the group coordinator (Kafka's design): TxnOffsetCommit writes
//! them to the group's offsets partition as transactional batches of the producer, and they
//! stay pending, apart from the groups' offsets, until the transaction coordinator's marker
//! reaches that partition: a commit marker makes them the group's offsets, an abort marker
//! drops them. A replay of the partition does the same with the markers it finds
//! (`GroupCoordinator::load_records`).
//!
//! Owned by the offsets partition's owner shard, as the rest of `GroupCoordinator`.

use std::collections::HashMap;

use kafka_protocol::ResponseError;

use super::coordinator::{apply, not_durable, CommitEntry, GroupCoordinator};
use super::group::Group;
use super::offsets_log::{wait_durable, OffsetsLogs};
use super::records::{OffsetValue, OffsetsRecord, TxnProducer};
use crate::shard::now_ms;

/// Transactions with pending offsets one shard keeps at most: producer ids come from clients
/// (the group coordinator cannot check them against the transaction coordinator), so they
/// must not grow the map without bound. Beyond it a new transaction's offsets are refused
/// with a retriable error until others end.
const MAX_PENDING_TRANSACTIONS: usize = 10_000;

/// Offsets a transaction committed (TxnOffsetCommit), written to the offsets log as its
/// transactional batches and waiting for its marker: by (group, topic, partition).
pub(super) type PendingTxnOffsets = HashMap<(String, String, i32), OffsetValue>;

/// Adds the offset commits among `records` (a transactional batch's, as appended or as
/// replayed) to a transaction's pending offsets; later ones of a partition replace earlier.
pub(super) fn add_pending(pending: &mut PendingTxnOffsets, records: Vec<OffsetsRecord>) {
    for record in records {
        if let OffsetsRecord::Offset {
            group,
            topic,
            partition,
            value: Some(value),
        } = record
        {
            pending.insert((group, topic, partition), value);
        }
    }
}

impl GroupCoordinator {
    /// TxnOffsetCommit: checks the member (when `member` is given: v3+ requests carry the
    /// generation), writes the offsets to the group's offsets partition as a transactional
    /// batch of `producer` and keeps them pending until the transaction's marker reaches the
    /// partition ([`Self::complete_transaction`]). Returns a group-level error or one result
    /// per entry, once durable (on every in-sync replica in a cluster).
    pub async fn commit_transactional(
        &self,
        group_id: String,
        member: Option<(String, Option<String>, i32)>,
        producer: TxnProducer,
        entries: Vec<CommitEntry>,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        self.open_log_of(&group_id).await?;
        if let Some((member_id, instance_id, generation)) = &member {
            self.with_group(&group_id, |g| {
                g.check_commit(member_id, instance_id.as_deref(), *generation, now_ms())
            })?;
        }
        let now = now_ms();
        let mut results = Vec::with_capacity(entries.len());
        let mut records = Vec::with_capacity(entries.len());
        for e in entries {
            match self.offset_value(&e, now) {
                Ok(value) => {
                    records.push(OffsetsRecord::Offset {
                        group: group_id.clone(),
                        topic: e.topic,
                        partition: e.partition,
                        value: Some(value),
                    });
                    results.push(None);
                }
                Err(code) => results.push(Some(code)),
            }
        }
        if records.is_empty() {
            return Ok(results);
        }
        {
            let pending = self.pending_txn_offsets.borrow();
            let entries_pending = pending.get(&producer.0).map_or(0, HashMap::len);
            if entries_pending == 0 && pending.len() >= MAX_PENDING_TRANSACTIONS {
                tracing::warn!(group = %group_id, "too many transactions with pending offsets");
                return Err(ResponseError::ConcurrentTransactions);
            }
            if entries_pending + records.len() > crate::transactions::MAX_PARTITIONS_PER_TRANSACTION
            {
                return Err(ResponseError::InvalidRequest);
            }
        }
        let partition = self.partition_of(&group_id);
        let Some(log) = self.logs.get(partition) else {
            return Err(ResponseError::NotCoordinator);
        };
        let appended = OffsetsLogs::append(&log, &records, now, Some(producer));
        let end = match appended {
            Ok(end) => end,
            Err(e) => {
                tracing::warn!(group = %group_id, error = %e, "transactional offsets not written");
                return Err(ResponseError::NotCoordinator);
            }
        };
        // Pending from the append on, in log order: a marker appended after this batch (even
        // before it is durable) must find them, as a replay would.
        {
            let mut pending = self.pending_txn_offsets.borrow_mut();
            add_pending(pending.entry(producer.0).or_default(), records);
        }
        if let Err(e) = wait_durable(&log, end).await {
            tracing::error!(group = %group_id, error = %e, "transactional offsets not durable");
            return Ok(not_durable(results));
        }
        Ok(results)
    }

    /// A transaction's marker for offsets partition `partition` (what the transaction
    /// coordinator writes when the transaction ends): appended to the partition's log, and
    /// the transaction's pending offsets of the partition's groups become the groups' offsets
    /// (commit) or are dropped (abort). Answered once the marker is durable.
    pub async fn complete_transaction(
        &self,
        partition: i32,
        producer: TxnProducer,
        committed: bool,
    ) -> Result<(), ResponseError> {
        if self.ensure_open(partition).await.is_err() {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        let log = self
            .logs
            .get(partition)
            .ok_or(ResponseError::NotLeaderOrFollower)?;
        let end = OffsetsLogs::append_marker(&log, producer, committed, now_ms()).map_err(|e| {
            tracing::warn!(partition, error = %e, "transaction marker not written");
            ResponseError::NotLeaderOrFollower
        })?;
        let ended = take_pending(
            &mut self.pending_txn_offsets.borrow_mut(),
            producer.0,
            |group| self.partition_of(group) == partition,
        );
        if committed {
            apply_committed(&mut self.groups.borrow_mut(), ended);
        }
        wait_durable(&log, end).await.map_err(|e| {
            tracing::error!(partition, error = %e, "transaction marker not durable");
            ResponseError::KafkaStorageError
        })
    }

    /// Whether a transaction's offset for (`group_id`, `topic`, `partition`) is pending.
    pub(super) fn has_pending_offset(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        let key = (group_id.to_string(), topic.to_string(), partition);
        self.pending_txn_offsets
            .borrow()
            .values()
            .any(|offsets| offsets.contains_key(&key))
    }
}

/// Removes and returns the pending offsets of `producer_id` whose group `in_partition` says is
/// on the partition a marker was written to.
/// A committed transaction's offsets (from [`take_pending`]) become its groups' offsets.
pub(super) fn apply_committed(
    groups: &mut HashMap<String, Group>,
    ended: Vec<((String, String, i32), OffsetValue)>,
) {
    for ((group, topic, partition), value) in ended {
        apply(
            groups,
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value: Some(value),
            },
        );
    }
}

pub(super) fn take_pending(
    pending: &mut HashMap<i64, PendingTxnOffsets>,
    producer_id: i64,
    in_partition: impl Fn(&str) -> bool,
) -> Vec<((String, String, i32), OffsetValue)> {
    let Some(offsets) = pending.get_mut(&producer_id) else {
        return Vec::new();
    };
    let ended: Vec<_> = offsets
        .keys()
        .filter(|(group, _, _)| in_partition(group))
        .cloned()
        .collect();
    let taken = ended
        .into_iter()
        .filter_map(|key| offsets.remove_entry(&key))
        .collect();
    if offsets.is_empty() {
        pending.remove(&producer_id);
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::records::OffsetsBatch;
    use crate::groups::GroupConfig;
    use crate::storage::LogConfig;

    fn offset(group: &str, partition: i32, offset: i64) -> OffsetsRecord {
        OffsetsRecord::Offset {
            group: group.into(),
            topic: "t".into(),
            partition,
            value: Some(OffsetValue {
                offset,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: 0,
            }),
        }
    }

    /// Replay honours markers: a transaction's offsets count from its commit marker on, are
    /// gone at its abort marker, and stay pending (never visible) without one.
    #[test]
    fn replayed_transactional_offsets_wait_for_their_marker() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = GroupCoordinator::new(
            0,
            1,
            dir.path().to_path_buf(),
            &LogConfig::default(),
            GroupConfig::default(),
            false,
        );
        let group = "replayed";
        let partition = coordinator.partition_of(group);
        let transactional = |producer_id, record| OffsetsBatch::Transactional {
            producer_id,
            records: vec![record],
        };
        coordinator.load_records(
            partition,
            vec![
                OffsetsBatch::Records(vec![offset(group, 0, 1), offset(group, 1, 1)]),
                transactional(7, offset(group, 0, 5)),
                transactional(8, offset(group, 1, 6)),
                transactional(9, offset(group, 2, 7)),
                OffsetsBatch::Marker {
                    producer_id: 7,
                    committed: true,
                },
                OffsetsBatch::Marker {
                    producer_id: 8,
                    committed: false,
                },
            ],
        );
        let groups = coordinator.groups.borrow();
        let offsets = &groups[group].offsets;
        assert_eq!(offsets[&("t".to_string(), 0)].offset, 5, "committed");
        assert_eq!(offsets[&("t".to_string(), 1)].offset, 1, "aborted");
        assert!(
            !offsets.contains_key(&("t".to_string(), 2)),
            "still pending"
        );
        assert!(coordinator.has_pending_offset(group, "t", 2));
        assert!(!coordinator.has_pending_offset(group, "t", 0));
        assert!(!coordinator.has_pending_offset(group, "t", 1));
    }
}
