//! A partition as its owning shard sees it: the log, the idempotent-producer state, and its
//! replication role (leader with its followers' progress, or follower of another broker).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::producer_state::{AbortedTxn, ProducerStateTable, ProducerSummary, SequenceCheck};
use crate::coordination::PartitionMetadata;
use crate::protocol::ApiError;
use crate::record_batch::{self, control, BatchError, BatchHeader, Batches};
use crate::replication::leader::{IsrChange, LeaderState};
use crate::storage::{PartitionLog, StorageError};

/// This broker's part in a partition's replication at the current leader epoch.
#[derive(Debug)]
pub enum Role {
    /// Takes produce requests and serves consumers and followers.
    Leader(LeaderState),
    /// Copies the leader's log. `needs_truncation` until it has cut any suffix that diverges
    /// from the leader's log (OffsetForLeaderEpoch), which it must do before fetching.
    Follower { leader: i32, needs_truncation: bool },
}

/// What a metadata change did to this broker's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    None,
    BecameLeader,
    /// Follows `leader` (-1: no leader elected yet) at a new epoch.
    BecameFollower {
        leader: i32,
    },
}

/// One partition replicated on this broker. Owned by exactly one shard (see `shard::router`);
/// never touched from another core.
pub struct Partition {
    pub topic: String,
    pub index: i32,
    /// Distinguishes a re-created topic from the deleted one of the same name.
    pub topic_id: Uuid,
    pub log: Rc<PartitionLog>,
    pub leader_epoch: Cell<i32>,
    /// The coordination state's version of this partition, named by ISR changes.
    partition_epoch: Cell<i32>,
    this_node: i32,
    replicas: RefCell<Vec<i32>>,
    role: RefCell<Role>,
    /// The log end offset when this broker became leader at the current epoch: a follower joins
    /// the ISR only once it has reached it.
    epoch_start_offset: Cell<i64>,
    /// `min.insync.replicas` of the topic (or the broker default).
    min_insync_replicas: Cell<usize>,
    producers: RefCell<ProducerStateTable>,
    /// Completes when this broker stops leading at the epoch a produce waiter saw: an acks=all
    /// wait must then answer NOT_LEADER_OR_FOLLOWER, never success from a fenced leader.
    leadership_lost: RefCell<LeadershipSignal>,
    /// Fetches parked until the last stable offset moves (see [`Self::stable_change`]).
    stable_waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

/// The sending half (taken when fired) and a clonable receiving half.
type LeadershipSignal = (Option<oneshot::Sender<()>>, Shared<oneshot::Receiver<()>>);

/// Where a produce to this partition landed.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub base_offset: i64,
    /// One past the last offset written; what to wait for before answering.
    pub end_offset: i64,
}

fn leadership_signal() -> LeadershipSignal {
    let (tx, rx) = oneshot::channel();
    (Some(tx), rx.shared())
}

impl Partition {
    /// A partition whose log is open, in the role `state` gives this node.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        topic: String,
        index: i32,
        topic_id: Uuid,
        log: Rc<PartitionLog>,
        this_node: i32,
        state: &PartitionMetadata,
        min_insync_replicas: usize,
        now_ms: i64,
    ) -> Partition {
        let partition = Partition {
            topic,
            index,
            topic_id,
            log,
            leader_epoch: Cell::new(-1),
            partition_epoch: Cell::new(-1),
            this_node,
            replicas: RefCell::new(Vec::new()),
            // Replaced by `apply_state` below.
            role: RefCell::new(Role::Follower {
                leader: -1,
                needs_truncation: true,
            }),
            epoch_start_offset: Cell::new(0),
            min_insync_replicas: Cell::new(min_insync_replicas),
            producers: RefCell::new(ProducerStateTable::default()),
            leadership_lost: RefCell::new(leadership_signal()),
            stable_waiters: RefCell::new(Vec::new()),
        };
        partition.rebuild_producer_state();
        if state.replicas.len() > 1 {
            // A log opens with its high watermark at its end, right for one replica only.
            // Replicated, the end may hold batches no other replica has (this broker died
            // before they were replicated): consumers must not see them until the ISR has
            // them. Without a checkpoint of the old value, start from the log start; a leader
            // raises it as soon as its followers fetch (Kafka keeps
            // `replication-offset-checkpoint` for the same purpose).
            partition
                .log
                .restore_high_watermark(partition.log.log_start_offset());
        }
        partition.apply_state(state, min_insync_replicas, now_ms);
        partition
    }

    /// Rebuilds the idempotent-producer table and the transaction state from what the log's
    /// recovery found (a producer-state snapshot, the `.txnindex` files and the scan after
    /// them), at open and after a truncation removed batches.
    pub fn rebuild_producer_state(&self) {
        let mut producers = ProducerStateTable::default();
        let mut recovered = 0;
        for header in self.log.recovered_producer_batches() {
            producers.record(&header, header.base_offset);
            recovered += 1;
        }
        producers.restore_aborted(
            self.log
                .recovered_aborted_transactions()
                .into_iter()
                .map(|e| AbortedTxn {
                    producer_id: e.producer_id,
                    first_offset: e.first_offset,
                    last_offset: e.last_offset,
                }),
        );
        for (producer_id, first_offset) in self.log.recovered_open_transactions() {
            producers.begin_transaction(producer_id, first_offset);
        }
        if recovered > 0 {
            tracing::debug!(
                topic = %self.topic,
                index = self.index,
                recovered,
                "rebuilt producer state from the log tail"
            );
        }
        *self.producers.borrow_mut() = producers;
    }

    /// Opens or closes a producer's transaction for a transactional batch now in the log
    /// (replicated, or read back at recovery); `batch` is the batch's bytes.
    fn track_transaction(
        &self,
        producers: &mut ProducerStateTable,
        header: &BatchHeader,
        batch: &[u8],
    ) {
        if !header.is_transactional() {
            return;
        }
        if header.is_control() {
            match control::marker_committed(batch) {
                Some(committed) => producers.end_transaction(
                    header.producer_id,
                    header.producer_epoch,
                    committed,
                    header.base_offset,
                ),
                None => {
                    tracing::warn!(topic = %self.topic, partition = self.index, offset = header.base_offset, "unreadable control batch")
                }
            }
        } else {
            producers.begin_transaction(header.producer_id, header.base_offset);
        }
        self.notify_stable_change();
    }

    /// Appends a commit or abort marker for `producer_id` (the coordinator ending its
    /// transaction); only the leader writes markers. Returns where it landed.
    pub fn write_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        committed: bool,
        coordinator_epoch: i32,
        now_ms: i64,
    ) -> Result<Appended, ApiError> {
        if !self.is_leader() {
            return Err(ApiError::new(
                ResponseError::NotLeaderOrFollower,
                format!(
                    "this broker is not the leader of {}-{}",
                    self.topic, self.index
                ),
            ));
        }
        if self
            .producers
            .borrow()
            .epoch_of(producer_id)
            .is_some_and(|known| producer_epoch < known)
        {
            return Err(ApiError::new(
                ResponseError::InvalidProducerEpoch,
                format!("marker of producer {producer_id} at an older epoch {producer_epoch}"),
            ));
        }
        let batch = control::encode_marker(
            producer_id,
            producer_epoch,
            committed,
            coordinator_epoch,
            now_ms,
        );
        let header = record_batch::validate(&batch, usize::MAX).map_err(batch_error)?;
        let info = self
            .log
            .append(batch, &header, self.leader_epoch.get())
            .map_err(storage_error)?;
        self.producers.borrow_mut().end_transaction(
            producer_id,
            producer_epoch,
            committed,
            info.base_offset,
        );
        self.notify_stable_change();
        Ok(Appended {
            base_offset: info.base_offset,
            end_offset: info.last_offset + 1,
        })
    }

    /// The last stable offset: below it every transaction is decided (read_committed
    /// consumers read up to it). Never above the high watermark.
    pub fn last_stable_offset(&self) -> i64 {
        let high_watermark = self.log.high_watermark();
        self.producers
            .borrow()
            .first_unstable_offset()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// Aborted transactions a read_committed fetch of `from..below` must report.
    pub fn aborted_transactions(&self, from: i64, below: i64) -> Vec<AbortedTxn> {
        let mut producers = self.producers.borrow_mut();
        producers.forget_aborted_below(self.log.log_start_offset());
        producers.aborted_between(from, below)
    }

    /// Producers with state here, for DescribeProducers.
    pub fn producer_summaries(&self) -> Vec<ProducerSummary> {
        self.producers.borrow().producers()
    }

    /// Resolves at the next transaction start or end on this partition (the last stable offset
    /// may have moved): what a parked read_committed fetch waits for besides new data.
    pub fn stable_change(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.stable_waiters.borrow_mut();
        waiters.retain(|w| !w.is_canceled());
        waiters.push(tx);
        rx
    }

    fn notify_stable_change(&self) {
        for waiter in self.stable_waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Takes a new committed state of this partition: leadership, epochs, ISR.
    pub fn apply_state(
        &self,
        state: &PartitionMetadata,
        min_insync_replicas: usize,
        now_ms: i64,
    ) -> RoleChange {
        self.min_insync_replicas.set(min_insync_replicas);
        let replicas_changed = *self.replicas.borrow() != state.replicas;
        *self.replicas.borrow_mut() = state.replicas.clone();
        let epoch_changed = state.leader_epoch != self.leader_epoch.get();
        let partition_changed = state.partition_epoch != self.partition_epoch.get();
        let was_leader = self.is_leader();
        self.leader_epoch.set(state.leader_epoch);
        self.partition_epoch.set(state.partition_epoch);
        let leads = state.leader == self.this_node;
        let change = if leads && was_leader && !epoch_changed {
            // Only a new partition epoch settles a pending ISR change: an unrelated snapshot
            // must not drop a joining member from the high watermark's count early.
            if partition_changed {
                if let Role::Leader(leader) = &mut *self.role.borrow_mut() {
                    if replicas_changed {
                        leader.set_replicas(&state.replicas, now_ms);
                    }
                    leader.set_isr(&state.isr);
                }
            }
            RoleChange::None
        } else if leads {
            if was_leader {
                self.signal_leadership_lost();
            }
            if let Err(e) = self.log.assign_epoch_start(state.leader_epoch) {
                tracing::error!(topic = %self.topic, partition = self.index, error = %e, "cannot record the new leader epoch");
            }
            self.epoch_start_offset.set(self.log.log_end_offset());
            *self.role.borrow_mut() = Role::Leader(LeaderState::new(
                self.this_node,
                &state.replicas,
                &state.isr,
                now_ms,
            ));
            tracing::info!(topic = %self.topic, partition = self.index, epoch = state.leader_epoch, log_end_offset = self.log.log_end_offset(), "leading");
            RoleChange::BecameLeader
        } else if epoch_changed || was_leader {
            if was_leader {
                self.signal_leadership_lost();
            }
            *self.role.borrow_mut() = Role::Follower {
                leader: state.leader,
                needs_truncation: true,
            };
            tracing::info!(topic = %self.topic, partition = self.index, leader = state.leader, epoch = state.leader_epoch, "following");
            RoleChange::BecameFollower {
                leader: state.leader,
            }
        } else {
            RoleChange::None
        };
        self.refresh_high_watermark();
        change
    }

    /// This broker is no longer a replica (a reassignment moved the partition away): waiting
    /// produces answer NOT_LEADER_OR_FOLLOWER, so producers go to the new leader, before the
    /// log is deleted under them.
    pub fn stop_replicating(&self) {
        if self.is_leader() {
            self.signal_leadership_lost();
        }
        *self.role.borrow_mut() = Role::Follower {
            leader: -1,
            needs_truncation: true,
        };
    }

    fn signal_leadership_lost(&self) {
        let mut signal = self.leadership_lost.borrow_mut();
        if let Some(tx) = signal.0.take() {
            let _ = tx.send(());
        }
        *signal = leadership_signal();
    }

    pub fn is_leader(&self) -> bool {
        matches!(*self.role.borrow(), Role::Leader(_))
    }

    /// The broker this one follows for this partition, if it is a follower.
    pub fn following(&self) -> Option<i32> {
        match *self.role.borrow() {
            Role::Follower { leader, .. } => Some(leader),
            Role::Leader(_) => None,
        }
    }

    pub fn needs_truncation(&self) -> bool {
        matches!(
            *self.role.borrow(),
            Role::Follower {
                needs_truncation: true,
                ..
            }
        )
    }

    /// The follower must (again) find where its log diverges before fetching more.
    pub fn set_needs_truncation(&self, needed: bool) {
        if let Role::Follower {
            needs_truncation, ..
        } = &mut *self.role.borrow_mut()
        {
            *needs_truncation = needed;
        }
    }

    pub fn replicas(&self) -> Vec<i32> {
        self.replicas.borrow().clone()
    }

    /// The committed ISR as this leader knows it; empty on a follower.
    pub fn isr(&self) -> Vec<i32> {
        match &*self.role.borrow() {
            Role::Leader(leader) => leader.isr().to_vec(),
            Role::Follower { .. } => Vec::new(),
        }
    }

    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch.get()
    }

    pub fn min_insync_replicas(&self) -> usize {
        self.min_insync_replicas.get()
    }

    /// Refuses requests that must go to the leader: NOT_LEADER_OR_FOLLOWER on a follower, and
    /// Kafka's epoch checks when the client names the leader epoch it knows (-1: it does not).
    pub fn check_leader(&self, current_leader_epoch: i32) -> Result<(), ResponseError> {
        if !self.is_leader() {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        let epoch = self.leader_epoch.get();
        match current_leader_epoch {
            -1 => Ok(()),
            e if e < epoch => Err(ResponseError::FencedLeaderEpoch),
            e if e > epoch => Err(ResponseError::UnknownLeaderEpoch),
            _ => Ok(()),
        }
    }

    /// Moves the log's high watermark as far as the ISR allows (leader), or holds it where the
    /// leader last said it is (follower).
    fn refresh_high_watermark(&self) {
        let bound = match &*self.role.borrow() {
            Role::Leader(leader) => leader.high_watermark_bound(),
            Role::Follower { .. } => Some(self.log.high_watermark()),
        };
        self.log.set_high_watermark_bound(bound);
    }

    /// A follower fetched at `fetch_offset` (everything below it is on its disk). Returns an ISR
    /// expansion to propose if the follower has just caught up, and false in `.1` if the node
    /// is not a follower of this partition.
    pub fn record_follower_fetch(
        &self,
        node_id: i32,
        fetch_offset: i64,
        log_start_offset: i64,
        now_ms: i64,
        lag_time_max_ms: i64,
        is_live: impl Fn(i32) -> bool,
    ) -> (Option<IsrChange>, bool) {
        let written = self.log.written_offset();
        let mut role = self.role.borrow_mut();
        let Role::Leader(leader) = &mut *role else {
            return (None, false);
        };
        if !leader.record_fetch(node_id, fetch_offset, written, now_ms) {
            return (None, false);
        }
        leader.record_log_start(node_id, log_start_offset);
        let change = if leader.isr().contains(&node_id) {
            None
        } else {
            leader.isr_change(
                now_ms,
                lag_time_max_ms,
                self.log.high_watermark(),
                self.epoch_start_offset.get(),
                is_live,
            )
        };
        drop(role);
        self.refresh_high_watermark();
        (change, true)
    }

    /// The smallest log start offset among this leader and its in-sync followers (Kafka's
    /// low watermark); `None` when this broker does not lead the partition.
    pub fn low_watermark(&self) -> Option<i64> {
        let own = self.log.log_start_offset();
        match &*self.role.borrow() {
            Role::Leader(leader) => {
                Some(leader.followers_low_watermark().map_or(own, |f| f.min(own)))
            }
            _ => None,
        }
    }

    /// The ISR change this leader should propose now (periodic check), if any.
    pub fn isr_change_due(
        &self,
        now_ms: i64,
        lag_time_max_ms: i64,
        is_live: impl Fn(i32) -> bool,
    ) -> Option<IsrChange> {
        let mut role = self.role.borrow_mut();
        let Role::Leader(leader) = &mut *role else {
            return None;
        };
        let change = leader.isr_change(
            now_ms,
            lag_time_max_ms,
            self.log.high_watermark(),
            self.epoch_start_offset.get(),
            is_live,
        );
        drop(role);
        if change.as_ref().is_some_and(|c| c.expands) {
            self.refresh_high_watermark();
        }
        change
    }

    /// The quorum did not take the proposed ISR change.
    pub fn isr_change_failed(&self) {
        if let Role::Leader(leader) = &mut *self.role.borrow_mut() {
            leader.clear_pending();
        }
        self.refresh_high_watermark();
    }

    /// Validates the batches of one produce request and appends them, synchronously assigning
    /// offsets (so appends are ordered as requests were read). The caller then waits with
    /// [`Self::wait_acknowledged`] before answering.
    ///
    /// Nothing is appended unless every batch is valid: a request is all or nothing per
    /// partition, as in Kafka. With `acks_all`, refused with NOT_ENOUGH_REPLICAS while the ISR
    /// is smaller than `min.insync.replicas`.
    pub fn append(
        &self,
        records: &Bytes,
        max_batch_bytes: usize,
        acks_all: bool,
    ) -> Result<Appended, ApiError> {
        if !self.is_leader() {
            return Err(ApiError::new(
                ResponseError::NotLeaderOrFollower,
                format!(
                    "this broker is not the leader of {}-{}",
                    self.topic, self.index
                ),
            ));
        }
        if acks_all {
            self.check_enough_replicas(ResponseError::NotEnoughReplicas)?;
        }
        let mut headers: Vec<(BatchHeader, std::ops::Range<usize>)> = Vec::with_capacity(1);
        for item in Batches::new(records, usize::MAX) {
            let (header, range) = item.map_err(|(_, e)| batch_error(e))?;
            if header.total_len() > max_batch_bytes {
                return Err(ApiError::new(
                    ResponseError::MessageTooLarge,
                    format!(
                        "batch of {} bytes exceeds message.max.bytes {max_batch_bytes}",
                        header.total_len()
                    ),
                ));
            }
            record_batch::validate(&records[range.clone()], max_batch_bytes)
                .map_err(batch_error)?;
            if header.is_control() {
                // Markers are the transaction coordinator's to write.
                return Err(ApiError::new(
                    ResponseError::InvalidRecord,
                    "clients cannot produce control batches",
                ));
            }
            headers.push((header, range));
        }
        if headers.is_empty() {
            return Err(ApiError::new(
                ResponseError::CorruptMessage,
                "produce request without record batches",
            ));
        }
        let mut producers = self.producers.borrow_mut();
        for (header, _) in &headers {
            if let SequenceCheck::Duplicate { base_offset } =
                producers.check(header).map_err(|code| {
                    ApiError::new(
                        code,
                        format!(
                            "producer {} sequence {}",
                            header.producer_id, header.base_sequence
                        ),
                    )
                })?
            {
                // A retry of data already in the log: answer with its original offset.
                tracing::debug!(
                    producer_id = header.producer_id,
                    base_offset,
                    "duplicate batch"
                );
                return Ok(Appended {
                    base_offset,
                    end_offset: base_offset + header.record_count as i64,
                });
            }
        }
        let mut first_offset = None;
        let mut end_offset = 0;
        for (header, range) in headers {
            let info = self
                .log
                .append(records.slice(range), &header, self.leader_epoch.get())
                .map_err(storage_error)?;
            producers.record(&header, info.base_offset);
            if header.is_transactional() {
                producers.begin_transaction(header.producer_id, info.base_offset);
            }
            first_offset.get_or_insert(info.base_offset);
            end_offset = info.last_offset + 1;
        }
        Ok(Appended {
            base_offset: first_offset.expect("at least one batch"),
            end_offset,
        })
    }

    /// Runs on every acks=all produce: reads the ISR in place, formats only a refusal.
    fn check_enough_replicas(&self, code: ResponseError) -> Result<(), ApiError> {
        let required = self.min_insync_replicas.get();
        let in_sync = match &*self.role.borrow() {
            Role::Leader(leader) => leader.isr().len(),
            Role::Follower { .. } => 0,
        };
        if in_sync < required {
            return Err(ApiError::new(
                code,
                format!(
                    "the in-sync replicas {:?} of {}-{} are fewer than min.insync.replicas {required}",
                    self.isr(),
                    self.topic,
                    self.index
                ),
            ));
        }
        Ok(())
    }

    /// Waits until offsets below `end_offset` may be acknowledged: safe on this leader
    /// (acks=1: written, or in the shard's journal, which outlives the process), or
    /// fdatasync'd here and on every ISR member, i.e. below the high watermark (acks=all).
    /// Fails if leadership is lost meanwhile (a fenced leader acknowledges nothing), at
    /// `timeout` (REQUEST_TIMED_OUT), or with NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR
    /// shrank below `min.insync.replicas` before the write was replicated.
    pub async fn wait_acknowledged(
        &self,
        end_offset: i64,
        acks_all: bool,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        // Leadership lost between the append and this wait (a burst of events in one turn,
        // as after a SIGSTOP): the follower may already have cut the batch to follow the new
        // leader, and a wait for an offset above the cut log end fails with
        // OFFSET_OUT_OF_RANGE, or resolves on the new leader's data once that is replicated up
        // to it. Either way the answer is NOT_LEADER_OR_FOLLOWER, as Kafka's: the client
        // retries at the new leader with the same producer sequence, which that leader
        // recognises if it has the batch. A non-retriable error here made librdkafka's
        // idempotent producer bump its epoch and send such batches again as new ones:
        // duplicates (`tests/replication.rs`, the SIGSTOP test).
        if !self.is_leader() {
            return Err(leadership_moved());
        }
        let epoch_at_start = self.leader_epoch.get();
        let moved = || !self.is_leader() || self.leader_epoch.get() != epoch_at_start;
        if !acks_all {
            let written = self.log.wait_journaled(end_offset).await;
            if moved() {
                return Err(leadership_moved());
            }
            return written.map_err(storage_error);
        }
        let lost = self.leadership_lost.borrow().1.clone();
        // Durable here, then below the high watermark: on every ISR member's disk.
        let durable = self.log.wait_written(end_offset, true);
        let replicated = self.log.wait_for_high_watermark(end_offset);
        let replicated = async move {
            durable.await.map_err(storage_error)?;
            replicated.await.map_err(storage_error)
        };
        let timer = glommio::timer::sleep(timeout);
        futures::pin_mut!(replicated, timer);
        let outcome = futures::future::select(replicated, futures::future::select(lost, timer));
        match outcome.await {
            futures::future::Either::Left((result, _)) => {
                result.map_err(|e| if moved() { leadership_moved() } else { e })?
            }
            futures::future::Either::Right((futures::future::Either::Left(_), _)) => {
                return Err(leadership_moved())
            }
            futures::future::Either::Right((futures::future::Either::Right(_), _)) => {
                return Err(ApiError::new(
                    ResponseError::RequestTimedOut,
                    "the in-sync replicas did not confirm the write within the request timeout",
                ))
            }
        }
        if !self.is_leader() {
            return Err(leadership_moved());
        }
        self.check_enough_replicas(ResponseError::NotEnoughReplicasAfterAppend)
    }

    /// Appends batches fetched from the leader, as the leader wrote them (same offsets, same
    /// bytes). Stops at a trailing partial batch (the leader cut the response there). Returns
    /// the number of batches appended. `compacted`: the topic is compacted, so the leader's
    /// batches may have gaps between them and fewer records than their offset range.
    pub fn append_replicated(
        &self,
        records: &Bytes,
        max_batch_bytes: usize,
        compacted: bool,
    ) -> Result<usize, ApiError> {
        let mut appended = 0;
        let mut producers = self.producers.borrow_mut();
        for item in Batches::new(records, max_batch_bytes) {
            let (header, range) = match item {
                Ok(batch) => batch,
                Err((_, BatchError::Truncated)) => break,
                Err((_, e)) => return Err(batch_error(e)),
            };
            let batch = &records[range.clone()];
            if compacted {
                record_batch::validate_replicated(batch, max_batch_bytes)
            } else {
                record_batch::validate(batch, max_batch_bytes)
            }
            .map_err(batch_error)?;
            self.log
                .append_replica_with_gaps(records.slice(range.clone()), &header, compacted)
                .map_err(storage_error)?;
            if header.has_producer_id() {
                producers.record(&header, header.base_offset);
                self.track_transaction(&mut producers, &header, &records[range]);
            }
            appended += 1;
        }
        Ok(appended)
    }

    /// After the follower learnt from the leader where their logs agree: cuts the suffix that
    /// diverges (if any) and rebuilds producer state.
    pub async fn truncate_to(&self, offset: i64) -> Result<(), StorageError> {
        if offset < self.log.log_end_offset() {
            let end = self.log.truncate_to(offset).await?;
            tracing::info!(topic = %self.topic, partition = self.index, offset = end, "truncated a divergent suffix");
            self.rebuild_producer_state();
        }
        Ok(())
    }

    /// The follower is behind the leader's log start: starts over, empty, at `offset`.
    pub async fn restart_at(&self, offset: i64) -> Result<(), StorageError> {
        self.log.truncate_fully_and_start_at(offset).await?;
        tracing::info!(topic = %self.topic, partition = self.index, offset, "behind the leader's log start; restarted the log there");
        self.rebuild_producer_state();
        Ok(())
    }
}

fn leadership_moved() -> ApiError {
    ApiError::new(
        ResponseError::NotLeaderOrFollower,
        "leadership moved before the write was replicated",
    )
}

fn batch_error(e: BatchError) -> ApiError {
    ApiError::new(ResponseError::CorruptMessage, e.to_string())
}

/// Maps a storage failure to the Kafka error a client understands.
pub fn storage_error(e: StorageError) -> ApiError {
    match e {
        // A follower cutting its divergent suffix under a wait: the wait belonged to a leader
        // that no longer leads.
        StorageError::Truncated { .. } | StorageError::Truncating => {
            ApiError::new(ResponseError::NotLeaderOrFollower, e.to_string())
        }
        StorageError::OffsetOutOfRange { .. } => {
            ApiError::new(ResponseError::OffsetOutOfRange, e.to_string())
        }
        // The partition is going away from under the request (the broker is stopping, the
        // topic was deleted, the replica moved): nothing is wrong with the disk, and the
        // client should look for the partition's leader again, as Kafka has it do.
        StorageError::Closed => {
            tracing::debug!("request on a closed log");
            ApiError::new(ResponseError::NotLeaderOrFollower, e.to_string())
        }
        other => {
            tracing::error!(error = %other, "storage error");
            ApiError::new(ResponseError::KafkaStorageError, other.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_log_sends_the_client_to_the_leader_and_a_disk_failure_is_a_storage_error() {
        assert_eq!(
            storage_error(StorageError::Closed).code,
            ResponseError::NotLeaderOrFollower
        );
        assert_eq!(
            storage_error(StorageError::Io(std::io::Error::other("EIO"))).code,
            ResponseError::KafkaStorageError
        );
    }

    /// A produce waiting for its acks when this replica loses the leadership, and then
    /// truncates the offsets it waits for to follow the new leader's log, answers
    /// NOT_LEADER_OR_FOLLOWER (the client retries at the new leader with the same sequence),
    /// not the truncation's OFFSET_OUT_OF_RANGE: also when both happen before the waiting
    /// request runs again, as after a SIGSTOP (`tests/replication.rs`).
    #[test]
    fn a_wait_after_losing_the_leadership_and_truncating_sends_the_client_to_the_leader() {
        crate::storage::testutil::run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let log = crate::storage::PartitionLog::open(
                dir.path().join("t-0"),
                crate::storage::LogConfig::default(),
            )
            .await
            .unwrap();
            let state = |leader, epoch| PartitionMetadata {
                leader,
                leader_epoch: epoch,
                partition_epoch: epoch,
                replicas: vec![1, 2],
                isr: vec![1, 2],
                adding_replicas: Vec::new(),
                removing_replicas: Vec::new(),
            };
            let partition = Partition::new("t".into(), 0, Uuid::nil(), log, 1, &state(1, 1), 1, 0);
            let records = Bytes::from(crate::storage::testutil::batch(2, 10, 1_000));
            let appended = partition.append(&records, 1 << 20, true).unwrap();
            // Replica 2 never fetches: the write stays above the high watermark. The wait
            // starts before the leadership moves.
            let wait =
                partition.wait_acknowledged(appended.end_offset, true, Duration::from_secs(60));
            futures::pin_mut!(wait);
            assert!(futures::poll!(&mut wait).is_pending());
            let second = partition.append(&records, 1 << 20, true).unwrap();
            partition.apply_state(&state(2, 2), 1, 0);
            partition.truncate_to(0).await.unwrap();
            let error = wait.await.unwrap_err();
            assert_eq!(error.code, ResponseError::NotLeaderOrFollower, "{error:?}");
            // The second request's wait starts only after both: its offsets are above the cut
            // log's end.
            for acks_all in [true, false] {
                let error = partition
                    .wait_acknowledged(second.end_offset, acks_all, Duration::from_secs(60))
                    .await
                    .unwrap_err();
                assert_eq!(error.code, ResponseError::NotLeaderOrFollower, "{error:?}");
            }
        });
    }
}
