//! The transaction coordinator of this node: one per node, on shard 0 (see the module docs).
//!
//! States follow Kafka's: Empty, Ongoing, PrepareCommit / PrepareAbort (markers being
//! written: other requests get CONCURRENT_TRANSACTIONS), CompleteCommit / CompleteAbort, Dead.
//! A producer is named by (producer id, epoch); InitProducerId bumps the epoch, which fences
//! the previous producer of the same transactional id (PRODUCER_FENCED), and aborts the
//! transaction it left open. A timer aborts transactions open longer than their timeout.
//!
//! Offsets sent with a transaction (Kafka's design): AddOffsetsToTxn adds the group's offsets
//! partition to the transaction; the group coordinator keeps the TxnOffsetCommit offsets
//! pending in that partition's log, and the marker written there when the transaction ends
//! makes them the group's (commit) or drops them (abort).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use futures::future::join_all;
use kafka_protocol::ResponseError;

use super::state_log::StateLog;
use super::{
    MAX_PARTITIONS_PER_TRANSACTION, MAX_TRANSACTION_TIMEOUT_MS, TIMEOUT_CHECK_INTERVAL_MS,
};
use crate::shard::{now_ms, Shard};

/// How long marker writes wait for the partitions' in-sync replicas.
const MARKER_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
}

impl TxnState {
    /// The name DescribeTransactions and ListTransactions use.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
        }
    }

    fn preparing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// One transactional id's state.
#[derive(Debug, Clone)]
pub struct TxnMetadata {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// Partitions the open transaction wrote to (AddPartitionsToTxn).
    pub partitions: BTreeSet<(String, i32)>,
    /// When the open transaction started (-1: none open).
    pub start_ms: i64,
    pub last_update_ms: i64,
}

/// The coordinator's state on shard 0.
#[derive(Default)]
pub struct TxnCoordinator {
    txns: RefCell<HashMap<String, TxnMetadata>>,
    timer_started: Cell<bool>,
    /// The durable state of a single node: its own `__transaction_state-0`. `None` in a
    /// cluster, where the state is in the partitions of the replicated topic (`replicated`).
    state_log: RefCell<Option<Rc<StateLog>>>,
    /// In a cluster: the state partitions this broker leads and has loaded (the ids it
    /// coordinates), by partition, with the leader epoch they were adopted at.
    adopted: RefCell<HashMap<i32, i32>>,
    /// In a cluster: the newest leader epoch seen per state partition, so that a stale
    /// adoption or release (sent before a newer one) is ignored.
    newest_epochs: RefCell<HashMap<i32, i32>>,
    /// `transaction.state.log.num.partitions`, from the shard's config.
    state_partitions: Cell<i32>,
}

thread_local! {
    static COORDINATOR: Rc<TxnCoordinator> = Rc::new(TxnCoordinator::default());
}

/// The coordinator of this node; call on shard 0 only. Starts the timeout timer on first use.
pub fn coordinator(shard: &Rc<Shard>) -> Rc<TxnCoordinator> {
    debug_assert_eq!(shard.id, 0, "the transaction coordinator runs on shard 0");
    let coordinator = COORDINATOR.with(Rc::clone);
    coordinator
        .state_partitions
        .set(shard.config.transaction_state.partitions);
    if !coordinator.timer_started.replace(true) {
        let shard = shard.clone();
        let timer = coordinator.clone();
        glommio::spawn_local(async move { timer.abort_timed_out(shard).await }).detach();
    }
    coordinator
}

/// Opens and replays the state log (single node), before clients are served: prepared
/// transactions are completed and open ones aborted past their timeout by the timer.
pub async fn load(shard: &Rc<Shard>) -> Result<(), String> {
    if shard.config.is_clustered() {
        return Ok(());
    }
    let config = super::state_log::state_log_config(
        &shard.config.log,
        shard.config.transaction_state.segment_bytes,
    );
    let (log, replayed) = StateLog::open(&shard.config.data_dir, config).await?;
    let coordinator = coordinator(shard);
    let mut txns = coordinator.txns.borrow_mut();
    for (transactional_id, mut meta) in replayed {
        if meta.state.preparing() {
            // Its markers may be missing: the timer writes them at its next run.
            meta.last_update_ms = 0;
            tracing::info!(%transactional_id, state = meta.state.name(), "completing a prepared transaction");
        }
        txns.insert(transactional_id, meta);
    }
    *coordinator.state_log.borrow_mut() = Some(Rc::new(log));
    Ok(())
}

/// A single node's state log, which the log cleaner on shard 0 compacts (its records are
/// keyed by transactional id: the newest state of every id stays).
pub fn own_state_log() -> Option<Rc<crate::storage::PartitionLog>> {
    COORDINATOR.with(|c| c.state_log.borrow().as_ref().map(|log| log.partition_log()))
}

/// Closes the state log at shutdown.
pub async fn close() {
    let log = COORDINATOR.with(|c| c.state_log.borrow_mut().take());
    if let Some(log) = log {
        log.close().await;
    }
}

/// Kafka's check of a request's producer against the transactional id's current one.
fn check_producer(meta: &TxnMetadata, producer_id: i64, epoch: i16) -> Result<(), ResponseError> {
    if meta.producer_id != producer_id {
        return Err(ResponseError::InvalidProducerIdMapping);
    }
    if epoch != meta.producer_epoch {
        return Err(ResponseError::ProducerFenced);
    }
    if meta.state.preparing() {
        return Err(ResponseError::ConcurrentTransactions);
    }
    Ok(())
}

impl TxnCoordinator {
    /// Whether this coordinator serves `transactional_id` now: always on a single node; in a
    /// cluster only once it has loaded the id's state partition (COORDINATOR_LOAD_IN_PROGRESS
    /// while this broker leads it but has not yet, NOT_COORDINATOR when another broker does).
    pub fn check_serving(
        &self,
        shard: &Shard,
        transactional_id: &str,
    ) -> Result<(), ResponseError> {
        if !shard.config.is_clustered() {
            return Ok(());
        }
        let partition =
            super::partition_of(transactional_id, shard.config.transaction_state.partitions);
        if self.adopted.borrow().contains_key(&partition) {
            return Ok(());
        }
        match super::replicated::coordinator_node(
            &shard.metadata(),
            partition,
            shard.broker.node_id,
            true,
        ) {
            Some(node) if node == shard.broker.node_id => {
                Err(ResponseError::CoordinatorLoadInProgress)
            }
            _ => Err(ResponseError::NotCoordinator),
        }
    }

    /// In a cluster: this broker leads state partition `partition` since `leader_epoch`, and
    /// `states` is what the partition holds. Its ids are coordinated here from now on.
    pub fn adopt_partition(
        &self,
        partition: i32,
        leader_epoch: i32,
        states: Vec<(String, TxnMetadata)>,
    ) {
        if !self.newer_epoch(partition, leader_epoch) {
            tracing::info!(
                partition,
                leader_epoch,
                "stale adoption of a transaction state partition ignored"
            );
            return;
        }
        let partitions = self.state_partitions.get();
        let mut txns = self.txns.borrow_mut();
        txns.retain(|id, _| super::partition_of(id, partitions) != partition);
        let count = states.len();
        for (transactional_id, mut meta) in states {
            if meta.state.preparing() {
                // Its markers may be missing: the timer writes them at its next run.
                meta.last_update_ms = 0;
                tracing::info!(%transactional_id, state = meta.state.name(), "completing a prepared transaction");
            }
            txns.insert(transactional_id, meta);
        }
        self.adopted.borrow_mut().insert(partition, leader_epoch);
        tracing::info!(
            partition,
            leader_epoch,
            transactional_ids = count,
            "transaction state partition loaded"
        );
    }

    /// In a cluster: leadership of state partition `partition` moved away (at `leader_epoch`):
    /// its ids are forgotten here; the new leader loads them from its replica.
    pub fn release_partition(&self, partition: i32, leader_epoch: i32) {
        if !self.newer_epoch(partition, leader_epoch) {
            return;
        }
        if self.adopted.borrow_mut().remove(&partition).is_none() {
            return;
        }
        let partitions = self.state_partitions.get();
        let mut txns = self.txns.borrow_mut();
        let before = txns.len();
        txns.retain(|id, _| super::partition_of(id, partitions) != partition);
        tracing::info!(
            partition,
            transactional_ids = before - txns.len(),
            "transaction state partition moved to another broker"
        );
    }

    /// Records `leader_epoch` for `partition`; false when a newer one was seen (the change was
    /// sent before a later one and is stale). Leader epochs grow with every leadership change,
    /// so an adoption and the release that ends it never share an epoch's order wrongly.
    fn newer_epoch(&self, partition: i32, leader_epoch: i32) -> bool {
        let mut epochs = self.newest_epochs.borrow_mut();
        match epochs.get(&partition) {
            Some(&seen) if seen > leader_epoch => false,
            _ => {
                epochs.insert(partition, leader_epoch);
                true
            }
        }
    }

    /// Writes the current state of `transactional_id` and waits until it is durable: to a
    /// single node's state log, or in a cluster to the id's state partition (on every in-sync
    /// replica).
    async fn persist(
        &self,
        shard: &Rc<Shard>,
        transactional_id: &str,
    ) -> Result<(), ResponseError> {
        let Some(meta) = self.describe(transactional_id) else {
            return Ok(());
        };
        let log = self.state_log.borrow().clone();
        let Some(log) = log else {
            if !shard.config.is_clustered() {
                return Ok(());
            }
            let partition =
                super::partition_of(transactional_id, shard.config.transaction_state.partitions);
            return super::replicated::write_state(shard, partition, transactional_id, &meta).await;
        };
        log.write(transactional_id, &meta, now_ms())
            .await
            .map_err(|e| {
                tracing::error!(transactional_id, error = %e, "transaction state not durable");
                ResponseError::CoordinatorNotAvailable
            })
    }

    /// A copy of one transactional id's state.
    pub fn describe(&self, transactional_id: &str) -> Option<TxnMetadata> {
        self.txns.borrow().get(transactional_id).cloned()
    }

    /// Every transactional id with its state.
    pub fn list(&self) -> Vec<(String, TxnMetadata)> {
        let mut all: Vec<_> = self
            .txns
            .borrow()
            .iter()
            .map(|(id, meta)| (id.clone(), meta.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// InitProducerId with a transactional id: a new producer id at epoch 0, or the current
    /// one at the next epoch (fencing the previous producer, whose open transaction is
    /// aborted first).
    pub async fn init_producer_id(
        &self,
        shard: &Rc<Shard>,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), ResponseError> {
        if timeout_ms <= 0 || timeout_ms > MAX_TRANSACTION_TIMEOUT_MS {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let existing = self.describe(transactional_id);
        let Some(meta) = existing else {
            let producer_id = allocate_producer_id(shard).await?;
            let now = now_ms();
            self.txns.borrow_mut().insert(
                transactional_id.to_string(),
                TxnMetadata {
                    producer_id,
                    producer_epoch: 0,
                    timeout_ms,
                    state: TxnState::Empty,
                    partitions: BTreeSet::new(),
                    start_ms: -1,
                    last_update_ms: now,
                },
            );
            self.persist(shard, transactional_id).await?;
            return Ok((producer_id, 0));
        };
        if meta.state.preparing() {
            return Err(ResponseError::ConcurrentTransactions);
        }
        if let Some((producer_id, epoch)) = expected {
            // KIP-360: the producer names the epoch it has; only that one may be bumped.
            if producer_id != meta.producer_id || epoch != meta.producer_epoch {
                return Err(ResponseError::ProducerFenced);
            }
        }
        if meta.state == TxnState::Ongoing {
            // The previous producer left a transaction open: abort it at a new epoch, which
            // also fences that producer's later writes to the partitions.
            self.abort_bumping_epoch(shard, transactional_id).await?;
        }
        let (producer_id, epoch) = {
            let txns = self.txns.borrow();
            let meta = txns.get(transactional_id).expect("still known");
            (meta.producer_id, meta.producer_epoch)
        };
        let (producer_id, epoch) = if epoch >= i16::MAX - 1 {
            (allocate_producer_id(shard).await?, 0)
        } else {
            (producer_id, epoch + 1)
        };
        {
            let mut txns = self.txns.borrow_mut();
            let meta = txns.get_mut(transactional_id).expect("still known");
            meta.producer_id = producer_id;
            meta.producer_epoch = epoch;
            meta.timeout_ms = timeout_ms;
            if meta.state == TxnState::Dead {
                meta.state = TxnState::Empty;
            }
            meta.last_update_ms = now_ms();
        }
        self.persist(shard, transactional_id).await?;
        Ok((producer_id, epoch))
    }

    /// Opens the transaction if needed and applies `change` to it.
    fn with_open_transaction(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        change: impl FnOnce(&mut TxnMetadata) -> Result<(), ResponseError>,
    ) -> Result<(), ResponseError> {
        let mut txns = self.txns.borrow_mut();
        let meta = txns
            .get_mut(transactional_id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        check_producer(meta, producer_id, epoch)?;
        let now = now_ms();
        if meta.state != TxnState::Ongoing {
            meta.state = TxnState::Ongoing;
            meta.start_ms = now;
            meta.partitions.clear();
        }
        meta.last_update_ms = now;
        change(meta)
    }

    /// AddPartitionsToTxn: durable before the producer writes to them, so that a restarted
    /// coordinator knows where to write the markers.
    pub async fn add_partitions(
        &self,
        shard: &Rc<Shard>,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Result<(), ResponseError> {
        let mut added = false;
        self.with_open_transaction(transactional_id, producer_id, epoch, |meta| {
            if meta.partitions.len() + partitions.len() > MAX_PARTITIONS_PER_TRANSACTION {
                return Err(ResponseError::InvalidRequest);
            }
            for partition in partitions {
                added |= meta.partitions.insert(partition);
            }
            Ok(())
        })?;
        if added {
            self.persist(shard, transactional_id).await?;
        }
        Ok(())
    }

    /// AddOffsetsToTxn: the group's offsets partition joins the transaction, so that its
    /// marker reaches the offsets the group coordinator keeps pending for it.
    pub async fn add_offsets(
        &self,
        shard: &Rc<Shard>,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        offsets_partition: i32,
    ) -> Result<(), ResponseError> {
        self.add_partitions(
            shard,
            transactional_id,
            producer_id,
            epoch,
            vec![(crate::groups::OFFSETS_TOPIC.to_string(), offsets_partition)],
        )
        .await
    }

    /// EndTxn: writes the markers to every partition of the transaction (offsets partitions
    /// included: their group coordinators apply or drop the transaction's offsets).
    pub async fn end_transaction(
        &self,
        shard: &Rc<Shard>,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), ResponseError> {
        {
            let mut txns = self.txns.borrow_mut();
            let meta = txns
                .get_mut(transactional_id)
                .ok_or(ResponseError::InvalidProducerIdMapping)?;
            check_producer(meta, producer_id, epoch)?;
            match (meta.state, commit) {
                (TxnState::Ongoing, _) => {}
                // A retry of an EndTxn that completed.
                (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
                    return Ok(())
                }
                // Nothing was sent: nothing to abort (what the Java client does after an
                // error before its first send).
                (TxnState::Empty | TxnState::CompleteCommit, false) => return Ok(()),
                _ => return Err(ResponseError::InvalidTxnState),
            }
            meta.state = if commit {
                TxnState::PrepareCommit
            } else {
                TxnState::PrepareAbort
            };
            meta.last_update_ms = now_ms();
        }
        // Durable before any marker: a restarted coordinator finishes the same decision.
        self.persist(shard, transactional_id).await?;
        self.complete(shard, transactional_id, commit).await
    }

    /// Aborts the open transaction of `transactional_id` at the next epoch (timeouts, and a
    /// new producer taking over the id).
    async fn abort_bumping_epoch(
        &self,
        shard: &Rc<Shard>,
        transactional_id: &str,
    ) -> Result<(), ResponseError> {
        {
            let mut txns = self.txns.borrow_mut();
            let Some(meta) = txns.get_mut(transactional_id) else {
                return Ok(());
            };
            if meta.state != TxnState::Ongoing {
                return Ok(());
            }
            if meta.producer_epoch < i16::MAX - 1 {
                meta.producer_epoch += 1;
            }
            meta.state = TxnState::PrepareAbort;
            meta.last_update_ms = now_ms();
        }
        self.persist(shard, transactional_id).await?;
        self.complete(shard, transactional_id, false).await
    }

    /// Writes the markers of a prepared transaction and completes it.
    async fn complete(
        &self,
        shard: &Rc<Shard>,
        transactional_id: &str,
        commit: bool,
    ) -> Result<(), ResponseError> {
        let Some(meta) = self.describe(transactional_id) else {
            return Ok(());
        };
        let writes = meta.partitions.iter().map(|(topic, index)| {
            write_marker(
                shard,
                topic.clone(),
                *index,
                meta.producer_id,
                meta.producer_epoch,
                commit,
                0,
            )
        });
        let failed = join_all(writes)
            .await
            .into_iter()
            .filter_map(Result::err)
            .count();
        if failed > 0 {
            // Leave it prepared: the timer writes the markers again.
            tracing::warn!(
                transactional_id,
                failed,
                "transaction markers not written yet"
            );
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        if let Some(meta) = self.txns.borrow_mut().get_mut(transactional_id) {
            meta.state = if commit {
                TxnState::CompleteCommit
            } else {
                TxnState::CompleteAbort
            };
            meta.partitions.clear();
            meta.start_ms = -1;
            meta.last_update_ms = now_ms();
        }
        self.persist(shard, transactional_id).await
    }

    /// Runs forever on shard 0: aborts transactions open past their timeout, and retries
    /// markers of prepared transactions whose writes failed.
    async fn abort_timed_out(self: Rc<Self>, shard: Rc<Shard>) {
        loop {
            glommio::timer::sleep(Duration::from_millis(TIMEOUT_CHECK_INTERVAL_MS)).await;
            let now = now_ms();
            let due: Vec<(String, TxnState)> = self
                .txns
                .borrow()
                .iter()
                .filter(|(_, meta)| {
                    (meta.state == TxnState::Ongoing
                        && now - meta.start_ms > meta.timeout_ms as i64)
                        || (meta.state.preparing()
                            && now - meta.last_update_ms > TIMEOUT_CHECK_INTERVAL_MS as i64)
                })
                .map(|(id, meta)| (id.clone(), meta.state))
                .collect();
            for (transactional_id, state) in due {
                let result = match state {
                    TxnState::Ongoing => {
                        tracing::info!(%transactional_id, "aborting a transaction past its timeout");
                        self.abort_bumping_epoch(&shard, &transactional_id).await
                    }
                    state => {
                        self.complete(&shard, &transactional_id, state == TxnState::PrepareCommit)
                            .await
                    }
                };
                if let Err(e) = result {
                    tracing::warn!(%transactional_id, error = ?e, "transaction not completed yet");
                }
            }
        }
    }
}

async fn allocate_producer_id(shard: &Rc<Shard>) -> Result<i64, ResponseError> {
    let coordinator = shard
        .coordinator
        .clone()
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    coordinator.allocate_producer_id().await.map_err(|e| e.code)
}

/// Appends one marker on the partition's owner shard and waits until it is durable on the
/// in-sync replicas. A partition that no longer exists needs no marker.
pub(crate) async fn write_marker(
    shard: &Rc<Shard>,
    topic: String,
    index: i32,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
) -> Result<(), ResponseError> {
    let snapshot = shard.metadata();
    let exists = snapshot.topic(&topic).is_some();
    let leader = snapshot.partition_leader(&topic, index);
    if let Some(leader) = leader.filter(|&l| l != shard.broker.node_id) {
        let address = snapshot
            .broker(leader)
            .map(|b| format!("{}:{}", b.host, b.port))
            .ok_or(ResponseError::NotLeaderOrFollower)?;
        return write_remote_marker(
            shard,
            &address,
            topic,
            index,
            (producer_id, epoch),
            commit,
            coordinator_epoch,
        )
        .await;
    }
    if topic == crate::groups::OFFSETS_TOPIC {
        // The group coordinator owns the offsets partitions' logs: it appends the marker and
        // applies (commit) or drops (abort) the transaction's pending offsets.
        let owner = crate::groups::owner_shard(index, shard.nr_shards);
        return shard
            .invoke_on(owner, move |owner| async move {
                owner
                    .groups
                    .complete_transaction(index, (producer_id, epoch), commit)
                    .await
            })
            .await;
    }
    let owner = shard.owner_of(&topic, index);
    shard
        .invoke_on(owner, move |owner| async move {
            let Some(partition) = owner.partition(&topic, index) else {
                return if exists {
                    tracing::warn!(%topic, index, "partition of a transaction not hosted here");
                    Err(ResponseError::NotLeaderOrFollower)
                } else {
                    Ok(())
                };
            };
            let appended = partition
                .write_marker(producer_id, epoch, commit, coordinator_epoch, now_ms())
                .map_err(|e| e.code)?;
            partition
                .wait_acknowledged(appended.end_offset, true, MARKER_WRITE_TIMEOUT)
                .await
                .map_err(|e| e.code)
        })
        .await
}

/// WriteTxnMarkers to the broker that leads the partition (a coordinator in a cluster).
async fn write_remote_marker(
    shard: &Rc<Shard>,
    address: &str,
    topic: String,
    index: i32,
    (producer_id, epoch): (i64, i16),
    commit: bool,
    coordinator_epoch: i32,
) -> Result<(), ResponseError> {
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    use kafka_protocol::messages::{
        ApiKey, ProducerId, TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
    };
    use kafka_protocol::protocol::StrBytes;

    use crate::replication::peer::{self, PeerConnection};

    const VERSION: i16 = 1;
    let mut marker_topic = WritableTxnMarkerTopic::default();
    marker_topic.name = TopicName(StrBytes::from_string(topic));
    marker_topic.partition_indexes = vec![index];
    let mut marker = WritableTxnMarker::default();
    marker.producer_id = ProducerId(producer_id);
    marker.producer_epoch = epoch;
    marker.transaction_result = commit;
    marker.coordinator_epoch = coordinator_epoch;
    marker.topics = vec![marker_topic];
    let mut request = WriteTxnMarkersRequest::default();
    request.markers = vec![marker];
    let client_id = format!("txn-coordinator-{}", shard.broker.node_id);
    let unreachable = |e: peer::PeerError| {
        tracing::warn!(address, error = %e, "cannot write a transaction marker on the leader");
        ResponseError::NotLeaderOrFollower
    };
    let mut connection = PeerConnection::connect(address, client_id, 1 << 20, MARKER_WRITE_TIMEOUT)
        .await
        .map_err(unreachable)?;
    let body = connection
        .call(
            ApiKey::WriteTxnMarkers,
            VERSION,
            &request,
            MARKER_WRITE_TIMEOUT,
        )
        .await
        .map_err(unreachable)?;
    let response: WriteTxnMarkersResponse = peer::decode(body, VERSION).map_err(unreachable)?;
    let code = response
        .markers
        .first()
        .and_then(|m| m.topics.first())
        .and_then(|t| t.partitions.first())
        .map_or(ResponseError::UnknownServerError.code(), |p| p.error_code);
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(error),
    }
}
