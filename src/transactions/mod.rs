//! Transactions (exactly-once): the transaction coordinator and the markers it writes.
//!
//! # Where a transaction lives
//! A transactional id hashes to a partition of `__transaction_state` ([`partition_of`], the
//! hash groups use); in a cluster the leader of that partition coordinates the id
//! ([`replicated`]), a single node coordinates every id with its own state log
//! ([`state_log`]). On that node the coordinator runs on shard 0
//! ([`coordinator::TxnCoordinator`]); partitions of the transaction are reached on their
//! owner shards (or leaders) to append markers, offsets partitions through the group
//! coordinator.
//!
//! # Layout
//! - [`coordinator`]: transactional ids, producer ids and epochs, transaction states, the
//!   timeout that aborts, ending a transaction (markers).
//! - [`state_log`]: the state records (keyed by transactional id) and a single node's log.
//! - [`replicated`]: the state partitions of a cluster: adoption, release, replicated writes.
//!
//! The markers' format (control batches) is [`crate::record_batch::control`]. The partition side (open transactions, last stable offset, aborted transactions) is in
//! `shard::producer_state` and `shard::partition`.

pub mod coordinator;
pub mod replicated;
pub mod state_log;

/// `transaction.max.timeout.ms` (Kafka's default): a producer asking for more gets
/// INVALID_TRANSACTION_TIMEOUT.
pub const MAX_TRANSACTION_TIMEOUT_MS: i32 = 900_000;

/// How often the coordinator looks for transactions past their timeout (Kafka's
/// `transaction.abort.timed.out.transaction.cleanup.interval.ms` is 10 s; ours is shorter so
/// an abandoned transaction blocks read_committed consumers for less long).
pub const TIMEOUT_CHECK_INTERVAL_MS: u64 = 500;

/// Transactional ids longer than this are refused: it bounds the coordinator's memory per id.
pub const MAX_TRANSACTIONAL_ID_BYTES: usize = 1024;

/// Partitions one transaction may span: bounds the coordinator's memory per id.
pub const MAX_PARTITIONS_PER_TRANSACTION: usize = 100_000;

/// The internal log of the coordinator's state (Kafka's name). Clients cannot create it.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// The smallest `transaction.state.log.segment.bytes`: a segment holds at least a few
/// records of the largest state the coordinator writes for a typical transaction.
pub const MIN_STATE_SEGMENT_BYTES: u64 = 16 << 10;

/// The transaction state log's settings; Kafka's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnStateConfig {
    /// `transaction.state.log.num.partitions`: partitions of `__transaction_state` in a
    /// cluster (Kafka's default, the same as the offsets topic's here). Fixed once
    /// transactional ids have been placed: changing it moves ids away from their state.
    pub partitions: i32,
    /// `transaction.state.log.segment.bytes` (Kafka's default): small segments let the log
    /// cleaner compact the state log sooner.
    pub segment_bytes: u64,
}

impl Default for TxnStateConfig {
    fn default() -> Self {
        TxnStateConfig {
            partitions: 50,
            segment_bytes: 100 << 20,
        }
    }
}

/// The `__transaction_state` partition of `transactional_id`: the placement decision for
/// transactional ids (the groups' hash, over the state topic's partitions).
pub fn partition_of(transactional_id: &str, state_partitions: i32) -> i32 {
    crate::groups::coordinator_for(transactional_id, state_partitions)
}
