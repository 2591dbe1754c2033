//! The transaction coordinator's state in a cluster: `__transaction_state`, an internal
//! replicated topic (compacted, created on the first FindCoordinator for a transactional id,
//! as Kafka creates it). A transactional id hashes to one of its partitions
//! ([`super::partition_of`]); the broker leading that partition coordinates the id.
//!
//! When this broker becomes a partition's leader, the partition's owner shard replays the log
//! and hands the states to the coordinator on shard 0 ([`on_role_change`]), which *adopts*
//! the partition: prepared transactions are completed (markers written) and open ones aborted
//! past their timeout by its timer. When leadership moves away the coordinator *releases*
//! the partition and forgets its ids; requests for them get NOT_COORDINATOR. Every state
//! change is appended to the partition on its owner shard and answered only once on every
//! in-sync replica ([`write_state`]), as offsets commits are.
//!
//! Adoptions and releases carry the partition's leader epoch: one older than the last seen
//! for the partition is stale and ignored.

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::ResponseError;

use super::coordinator::{coordinator, TxnMetadata};
use super::{state_log, TRANSACTION_STATE_TOPIC};
use crate::coordination::ClusterMetadata;
use crate::shard::partition::{Partition, RoleChange};
use crate::shard::{now_ms, Shard};

/// Longest a state write waits for the in-sync replicas of its partition.
const STATE_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The node that coordinates the transactional ids of state partition `partition`: its leader
/// in the cluster metadata. A single node coordinates every id (with its own state log); in a
/// cluster there is none until the topic exists and the partition has a leader.
pub fn coordinator_node(
    metadata: &ClusterMetadata,
    partition: i32,
    this_node: i32,
    clustered: bool,
) -> Option<i32> {
    if !clustered {
        return Some(this_node);
    }
    metadata.partition_leader(TRANSACTION_STATE_TOPIC, partition)
}

/// Called on a state partition's owner shard when this broker starts or stops leading it.
pub fn on_role_change(shard: &Rc<Shard>, partition: &Rc<Partition>, change: &RoleChange) {
    debug_assert_eq!(partition.topic, TRANSACTION_STATE_TOPIC);
    let index = partition.index;
    let leader_epoch = partition.leader_epoch.get();
    match change {
        RoleChange::BecameLeader => {
            // Read now, before anything else is appended here: the log as this leader found it.
            let states = match state_log::replay(&partition.log) {
                Ok(states) => states,
                Err(e) => {
                    tracing::error!(partition = index, error = %e, "cannot load the transaction state partition");
                    return;
                }
            };
            let shard = shard.clone();
            glommio::spawn_local(async move {
                shard
                    .invoke_on(0, move |s| async move {
                        coordinator(&s).adopt_partition(index, leader_epoch, states);
                    })
                    .await;
            })
            .detach();
        }
        RoleChange::BecameFollower { .. } => release(shard, index, leader_epoch),
        RoleChange::None => {}
    }
}

/// This broker no longer holds state partition `index` (leadership moved, or the replica
/// went): the coordinator forgets its ids.
pub fn release(shard: &Rc<Shard>, index: i32, leader_epoch: i32) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        shard
            .invoke_on(0, move |s| async move {
                coordinator(&s).release_partition(index, leader_epoch);
            })
            .await;
    })
    .detach();
}

/// Appends the state of `transactional_id` to state partition `index` on its owner shard and
/// waits until every in-sync replica has it.
pub async fn write_state(
    shard: &Rc<Shard>,
    index: i32,
    transactional_id: &str,
    meta: &TxnMetadata,
) -> Result<(), ResponseError> {
    let batch = state_log::encode_batch(transactional_id, &state_log::encode_value(meta), now_ms());
    let owner = shard.owner_of(TRANSACTION_STATE_TOPIC, index);
    shard
        .invoke_on(owner, move |owner| async move {
            let partition = owner
                .partition(TRANSACTION_STATE_TOPIC, index)
                .filter(|p| p.is_leader())
                .ok_or(ResponseError::NotCoordinator)?;
            let header = crate::record_batch::validate(&batch, usize::MAX)
                .map_err(|_| ResponseError::UnknownServerError)?;
            let appended = partition
                .log
                .append(batch, &header, partition.leader_epoch.get())
                .map_err(|e| {
                    tracing::error!(index, error = %e, "transaction state not appended");
                    ResponseError::CoordinatorNotAvailable
                })?;
            partition
                .wait_acknowledged(appended.last_offset + 1, true, STATE_WRITE_TIMEOUT)
                .await
                .map_err(|e| {
                    tracing::warn!(index, error = %e, "transaction state not replicated");
                    ResponseError::CoordinatorNotAvailable
                })
        })
        .await
}
