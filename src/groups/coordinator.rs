//! The group coordinator of one shard: every group whose offsets partition
//! ([`super::coordinator_for`]) this shard owns, their committed offsets, and the offsets logs
//! that make both durable.
//!
//! Owned by one shard (`Shard::groups`); handlers on other shards reach it with
//! `Shard::invoke_on(owner, ..)`. Group state lives in a `RefCell` that is never borrowed across
//! an await: JoinGroup and SyncGroup waits are oneshot channels completed by the state machine.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;

use super::group::{
    Group, GroupState, JoinRequest, JoinResult, MemberDescription, Pending, SyncResult,
};
use super::offsets_log::{wait_durable, OffsetsLogs};
use super::records::{OffsetValue, OffsetsBatch, OffsetsRecord};
use super::txn_offsets::{take_pending, PendingTxnOffsets};
use super::{coordinator_for, owner_shard, GroupConfig};
use crate::shard::now_ms;
use crate::shard::partition::Partition;
use crate::storage::LogConfig;

/// How often the timers run (session expiry, rebalance deadlines, the initial delay).
pub const TICK_MS: u64 = 50;

/// Committed offsets by topic: (topic, [(partition, offset if committed, or
/// UNSTABLE_OFFSET_COMMIT while a transaction's offset for it is pending and the fetch asked
/// for stable offsets only)]).
pub type TopicOffsets = Vec<(
    String,
    Vec<(i32, Result<Option<OffsetValue>, ResponseError>)>,
)>;

/// One committed offset to store.
#[derive(Debug, Clone)]
pub struct CommitEntry {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// A group as ListGroups reports it.
#[derive(Debug, Clone)]
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
}

/// A group as DescribeGroups reports it.
pub struct GroupDescription {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

pub struct GroupCoordinator {
    shard_id: usize,
    nr_shards: usize,
    pub config: GroupConfig,
    pub(super) groups: RefCell<HashMap<String, Group>>,
    /// Transactions' offsets not yet committed or aborted, by producer id. Kept apart from the
    /// groups' offsets so that OffsetFetch never returns them before their commit marker.
    pub(super) pending_txn_offsets: RefCell<HashMap<i64, PendingTxnOffsets>>,
    pub(super) logs: OffsetsLogs,
}

impl GroupCoordinator {
    pub fn new(
        shard_id: usize,
        nr_shards: usize,
        data_dir: PathBuf,
        log: &LogConfig,
        config: GroupConfig,
        clustered: bool,
    ) -> GroupCoordinator {
        assert!(config.offsets_topic_partitions > 0);
        GroupCoordinator {
            shard_id,
            nr_shards,
            logs: OffsetsLogs::new(data_dir, log, clustered),
            config,
            groups: RefCell::new(HashMap::new()),
            pending_txn_offsets: RefCell::new(HashMap::new()),
        }
    }

    /// This shard's own offsets logs (single node), which the log cleaner compacts.
    pub fn own_offsets_logs(&self) -> Vec<std::rc::Rc<crate::storage::PartitionLog>> {
        self.logs.own_logs()
    }

    /// The offsets partition of `group_id`.
    pub fn partition_of(&self, group_id: &str) -> i32 {
        coordinator_for(group_id, self.config.offsets_topic_partitions)
    }

    fn owned_partitions(&self) -> impl Iterator<Item = i32> + '_ {
        (0..self.config.offsets_topic_partitions)
            .filter(|&p| owner_shard(p, self.nr_shards) == self.shard_id)
    }

    /// Opens and replays every offsets partition of this shard that exists on disk. Runs
    /// before the shard serves clients, so a restarted broker answers OffsetFetch with what
    /// was committed before.
    pub async fn load(&self) -> Result<(), String> {
        let existing = self.logs.existing(self.owned_partitions());
        for partition in existing {
            self.ensure_open(partition).await?;
        }
        Ok(())
    }

    /// Opens the log of `partition` on first use and applies what it holds.
    pub(super) async fn ensure_open(&self, partition: i32) -> Result<(), String> {
        if self.logs.get(partition).is_some() {
            return Ok(());
        }
        let (_, replayed) = self.logs.open(partition).await?;
        if let Some(records) = replayed {
            self.load_records(partition, records);
        }
        Ok(())
    }

    /// [`Self::ensure_open`] for the group's offsets partition, as the error a request answers.
    pub(super) async fn open_log_of(&self, group_id: &str) -> Result<(), ResponseError> {
        self.ensure_open(self.partition_of(group_id))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "offsets log unavailable");
                ResponseError::CoordinatorNotAvailable
            })
    }

    /// The value an offset commit stores for `entry`, or OFFSET_METADATA_TOO_LARGE.
    pub(super) fn offset_value(
        &self,
        entry: &CommitEntry,
        now: i64,
    ) -> Result<OffsetValue, ResponseError> {
        let metadata = entry.metadata.clone().unwrap_or_default();
        if metadata.len() > self.config.offset_metadata_max_bytes {
            return Err(ResponseError::OffsetMetadataTooLarge);
        }
        Ok(OffsetValue {
            offset: entry.offset,
            leader_epoch: entry.leader_epoch,
            metadata,
            commit_timestamp_ms: now,
        })
    }

    /// Applies a replayed offsets partition: plain records at once, a transaction's offsets at
    /// its commit marker (dropped at its abort marker, pending while it has none).
    pub(super) fn load_records(&self, partition: i32, batches: Vec<OffsetsBatch>) {
        let count = batches.len();
        let mut groups = self.groups.borrow_mut();
        let mut pending = self.pending_txn_offsets.borrow_mut();
        for batch in batches {
            match batch {
                OffsetsBatch::Records(records) => {
                    for record in records {
                        apply(&mut groups, record);
                    }
                }
                OffsetsBatch::Transactional {
                    producer_id,
                    records,
                } => {
                    super::txn_offsets::add_pending(
                        pending.entry(producer_id).or_default(),
                        records,
                    );
                }
                OffsetsBatch::Marker {
                    producer_id,
                    committed,
                } => {
                    let ended = take_pending(&mut pending, producer_id, |group| {
                        self.partition_of(group) == partition
                    });
                    if committed {
                        super::txn_offsets::apply_committed(&mut groups, ended);
                    }
                }
            }
        }
        groups.retain(|_, g| !g.is_forgettable());
        tracing::info!(
            partition,
            batches = count,
            groups = groups.len(),
            pending_transactions = pending.len(),
            "offsets partition loaded"
        );
    }

    /// In a cluster: this broker became the leader of replicated offsets partition
    /// `partition` (`Shard::apply_metadata`). Its groups are loaded from the log before any
    /// request for them is served here.
    pub fn adopt_partition(&self, partition: i32, replicated: Rc<Partition>) {
        self.drop_groups_of(partition);
        match self.logs.adopt(partition, replicated) {
            Ok(records) => self.load_records(partition, records),
            Err(e) => {
                self.logs.release(partition);
                tracing::error!(partition, error = %e, "cannot load the offsets partition");
            }
        }
    }

    /// In a cluster: leadership of offsets partition `partition` moved away. Its groups are
    /// forgotten here; the new leader loads them from its replica.
    pub fn release_partition(&self, partition: i32) {
        if self.logs.release(partition) {
            let dropped = self.drop_groups_of(partition);
            tracing::info!(
                partition,
                groups = dropped,
                "offsets partition moved to another broker"
            );
        }
    }

    fn drop_groups_of(&self, partition: i32) -> usize {
        let mut pending = self.pending_txn_offsets.borrow_mut();
        for offsets in pending.values_mut() {
            offsets.retain(|(group, _, _), _| self.partition_of(group) != partition);
        }
        pending.retain(|_, offsets| !offsets.is_empty());
        let mut groups = self.groups.borrow_mut();
        let before = groups.len();
        groups.retain(|id, _| self.partition_of(id) != partition);
        before - groups.len()
    }

    /// Appends `records` to the group's partition and waits until they are durable.
    async fn persist(&self, group_id: &str, records: Vec<OffsetsRecord>) -> Result<(), String> {
        if records.is_empty() {
            return Ok(());
        }
        let partition = self.partition_of(group_id);
        self.ensure_open(partition).await?;
        let log = self.logs.get(partition).ok_or("offsets log closed")?;
        let end = OffsetsLogs::append(&log, &records, now_ms(), None)?;
        wait_durable(&log, end).await
    }

    /// Appends without waiting (group transitions found by the timers): ordering with later
    /// appends is kept, and a crash before the sync loses only a generation number.
    fn persist_detached(self: &Rc<Self>, group_id: String, records: Vec<OffsetsRecord>) {
        if records.is_empty() {
            return;
        }
        let me = self.clone();
        glommio::spawn_local(async move {
            if let Err(e) = me.persist(&group_id, records).await {
                tracing::error!(group = %group_id, error = %e, "writing group metadata failed");
            }
        })
        .detach();
    }

    pub(super) fn with_group<R>(&self, group_id: &str, f: impl FnOnce(&mut Group) -> R) -> R {
        let mut groups = self.groups.borrow_mut();
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id.to_string()));
        let result = f(group);
        if group.is_forgettable() {
            groups.remove(group_id);
        }
        result
    }

    pub async fn join(self: &Rc<Self>, group_id: String, request: JoinRequest) -> JoinResult {
        if let Err(code) = self.open_log_of(&group_id).await {
            return JoinResult::error(code, &request.member_id);
        }
        let member_id = request.member_id.clone();
        let mut persist = Vec::new();
        let pending = self.with_group(&group_id, |g| {
            g.join(request, now_ms(), &self.config, &mut persist)
        });
        self.persist_detached(group_id, persist);
        match pending {
            Pending::Now(result) => result,
            Pending::Later(rx) => rx
                .await
                .unwrap_or_else(|_| JoinResult::error(ResponseError::UnknownMemberId, &member_id)),
        }
    }

    pub async fn sync(
        self: &Rc<Self>,
        group_id: String,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncResult {
        let mut persist = Vec::new();
        let pending = {
            let mut groups = self.groups.borrow_mut();
            match groups.get_mut(&group_id) {
                None => Pending::Now(SyncResult::error(ResponseError::UnknownMemberId)),
                Some(g) => g.sync(
                    &member_id,
                    instance_id.as_deref(),
                    generation,
                    assignments,
                    now_ms(),
                    &mut persist,
                ),
            }
        };
        self.persist_detached(group_id, persist);
        match pending {
            Pending::Now(result) => result,
            Pending::Later(rx) => rx
                .await
                .unwrap_or_else(|_| SyncResult::error(ResponseError::UnknownMemberId)),
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Option<ResponseError> {
        match self.groups.borrow_mut().get_mut(group_id) {
            None => Some(ResponseError::UnknownMemberId),
            Some(g) => g.heartbeat(member_id, instance_id, generation, now_ms()),
        }
    }

    pub fn leave(
        self: &Rc<Self>,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Vec<Option<ResponseError>> {
        let mut persist = Vec::new();
        let results = match self.groups.borrow_mut().get_mut(group_id) {
            None => vec![Some(ResponseError::UnknownMemberId); members.len()],
            Some(g) => g.leave(members, now_ms(), &mut persist),
        };
        self.persist_detached(group_id.to_string(), persist);
        results
    }

    /// Stores offsets: validated against the group's membership, appended to the offsets log,
    /// answered once fdatasync'ed. Returns a group-level error or one result per entry.
    pub async fn commit(
        &self,
        group_id: String,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
        entries: Vec<CommitEntry>,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        self.open_log_of(&group_id).await?;
        let now = now_ms();
        let mut results = Vec::with_capacity(entries.len());
        let mut records = Vec::with_capacity(entries.len());
        self.with_group(&group_id, |g| {
            g.check_commit(&member_id, instance_id.as_deref(), generation, now)?;
            if g.members.is_empty() && g.protocol_type.is_none() && g.generation == 0 {
                // A group only ever used for commits (simple consumers, admin resets).
                g.protocol_type = None;
            }
            for e in &entries {
                let value = match self.offset_value(e, now) {
                    Ok(value) => value,
                    Err(code) => {
                        results.push(Some(code));
                        continue;
                    }
                };
                // Applied now, in request order; answered only once durable (below).
                g.offsets
                    .insert((e.topic.clone(), e.partition), value.clone());
                records.push(OffsetsRecord::Offset {
                    group: group_id.clone(),
                    topic: e.topic.clone(),
                    partition: e.partition,
                    value: Some(value),
                });
                results.push(None);
            }
            Ok::<(), ResponseError>(())
        })?;
        if let Err(e) = self.persist(&group_id, records).await {
            tracing::error!(group = %group_id, error = %e, "offset commit not durable");
            return Ok(not_durable(results));
        }
        Ok(results)
    }

    /// Committed offsets of a group: of the given (topic, partitions), or all of them.
    /// `require_stable`: partitions with a transaction's offset pending answer
    /// UNSTABLE_OFFSET_COMMIT (the client retries until the transaction ended), as Kafka does.
    pub async fn fetch(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
        require_stable: bool,
    ) -> Result<TopicOffsets, ResponseError> {
        self.open_log_of(group_id).await?;
        let groups = self.groups.borrow();
        let group = groups.get(group_id);
        let lookup = |t: &str, p: i32| {
            if require_stable && self.has_pending_offset(group_id, t, p) {
                return Err(ResponseError::UnstableOffsetCommit);
            }
            Ok(group.and_then(|g| g.offsets.get(&(t.to_string(), p)).cloned()))
        };
        Ok(match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(t, ps)| {
                    let found = ps.into_iter().map(|p| (p, lookup(&t, p))).collect();
                    (t, found)
                })
                .collect(),
            None => {
                let mut out: TopicOffsets = Vec::new();
                if let Some(g) = group {
                    for (t, p) in g.offsets.keys() {
                        let found = lookup(t, *p);
                        match out.last_mut() {
                            Some((last, ps)) if last == t => ps.push((*p, found)),
                            _ => out.push((t.clone(), vec![(*p, found)])),
                        }
                    }
                }
                out
            }
        })
    }

    pub fn list(&self) -> Vec<ListedGroup> {
        let mut out: Vec<ListedGroup> = self
            .groups
            .borrow()
            .values()
            .map(|g| ListedGroup {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_else(|| "consumer".into()),
                state: g.state.name(),
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// `None`: the group does not exist (DescribeGroups reports it as Dead, as Kafka does).
    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let groups = self.groups.borrow();
        let g = groups.get(group_id)?;
        Some(GroupDescription {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: g.protocol.clone().unwrap_or_default(),
            members: g.describe_members(),
        })
    }

    /// DeleteGroups: refused with NON_EMPTY_GROUP while the group has members.
    pub async fn delete(&self, group_id: &str) -> Option<ResponseError> {
        if self.ensure_open(self.partition_of(group_id)).await.is_err() {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        let records = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get(group_id) else {
                return Some(ResponseError::GroupIdNotFound);
            };
            if g.state != GroupState::Empty || !g.members.is_empty() {
                return Some(ResponseError::NonEmptyGroup);
            }
            let g = groups.remove(group_id).expect("present");
            let mut records: Vec<OffsetsRecord> = g
                .offsets
                .into_keys()
                .map(|(topic, partition)| OffsetsRecord::Offset {
                    group: group_id.to_string(),
                    topic,
                    partition,
                    value: None,
                })
                .collect();
            records.push(OffsetsRecord::Group {
                group: group_id.to_string(),
                value: None,
            });
            records
        };
        tracing::info!(group = group_id, "group deleted");
        match self.persist(group_id, records).await {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(group = group_id, error = %e, "group deletion not durable");
                Some(ResponseError::KafkaStorageError)
            }
        }
    }

    /// OffsetDelete: forgets committed offsets of topics the group does not subscribe to.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        topics: Vec<(String, Vec<i32>)>,
    ) -> Result<Vec<(String, Vec<(i32, Option<ResponseError>)>)>, ResponseError> {
        if self.ensure_open(self.partition_of(group_id)).await.is_err() {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let mut records = Vec::new();
        let results = {
            let mut groups = self.groups.borrow_mut();
            let g = groups
                .get_mut(group_id)
                .ok_or(ResponseError::GroupIdNotFound)?;
            let subscribed = if g.state == GroupState::Empty {
                Vec::new()
            } else {
                g.subscribed_topics()
            };
            topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let results = partitions
                        .into_iter()
                        .map(|p| {
                            if subscribed.contains(&topic) {
                                return (p, Some(ResponseError::GroupSubscribedToTopic));
                            }
                            if g.offsets.remove(&(topic.clone(), p)).is_some() {
                                records.push(OffsetsRecord::Offset {
                                    group: group_id.to_string(),
                                    topic: topic.clone(),
                                    partition: p,
                                    value: None,
                                });
                            }
                            (p, None)
                        })
                        .collect();
                    (topic, results)
                })
                .collect()
        };
        self.persist(group_id, records).await.map_err(|e| {
            tracing::error!(group = group_id, error = %e, "offset deletion not durable");
            ResponseError::KafkaStorageError
        })?;
        Ok(results)
    }

    /// Session expiry and rebalance deadlines, every [`TICK_MS`], until shutdown.
    pub async fn run_timers(self: Rc<Self>, shutting_down: impl Fn() -> bool) {
        while !shutting_down() {
            glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
            let now = now_ms();
            let mut writes: Vec<(String, Vec<OffsetsRecord>)> = Vec::new();
            {
                let mut groups = self.groups.borrow_mut();
                for g in groups.values_mut() {
                    let mut persist = Vec::new();
                    g.tick(now, &mut persist);
                    if !persist.is_empty() {
                        writes.push((g.id.clone(), persist));
                    }
                }
            }
            for (group, records) in writes {
                self.persist_detached(group, records);
            }
        }
    }

    pub async fn close(&self) {
        self.logs.close().await;
    }
}

/// Applies one replayed record.
/// Per-entry results of a commit whose records did not become durable: every entry not
/// already refused fails with KAFKA_STORAGE_ERROR.
pub(super) fn not_durable(results: Vec<Option<ResponseError>>) -> Vec<Option<ResponseError>> {
    results
        .into_iter()
        .map(|r| r.or(Some(ResponseError::KafkaStorageError)))
        .collect()
}

pub(super) fn apply(groups: &mut HashMap<String, Group>, record: OffsetsRecord) {
    match record {
        OffsetsRecord::Offset {
            group,
            topic,
            partition,
            value,
        } => {
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(group));
            match value {
                Some(v) => {
                    g.offsets.insert((topic, partition), v);
                }
                None => {
                    g.offsets.remove(&(topic, partition));
                }
            }
        }
        OffsetsRecord::Group { group, value } => match value {
            Some(v) => groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(group))
                .restore(&v),
            None => {
                groups.remove(&group);
            }
        },
    }
}
