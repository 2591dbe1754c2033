//! Consumer groups: the classic (client-side assignment) group coordinator and committed
//! offsets.
//!
//! # Where a group lives
//! A group id hashes to one partition of the internal offsets topic ([`coordinator_for`]);
//! that partition's owner shard ([`crate::shard::router::owner_shard`]) owns the group's state
//! machine, its committed offsets and the partition's log. In a cluster the node that
//! coordinates a group is the leader of that partition ([`coordinator_node`]), so group
//! coordination moves with partition leadership, as in Kafka.
//!
//! # Layout
//! - [`records`]: the offsets log's key/value layout (Kafka's `__consumer_offsets` v1 keys,
//!   v3 values) inside RecordBatch v2 batches.
//! - [`offsets_log`]: the shard's open offsets partitions: append + durable wait, replay.
//! - [`group`]: one group's state machine (Empty, PreparingRebalance, CompletingRebalance,
//!   Stable, Dead), members, generations; no I/O.
//! - [`coordinator`]: the per-shard [`GroupCoordinator`]: groups and offsets by id, the
//!   timers (session expiry, rebalance deadlines), durability.
//! - [`txn_offsets`]: offsets of transactions (TxnOffsetCommit), pending until the marker
//!   the transaction coordinator writes to their offsets partition.

pub mod coordinator;
pub mod group;
pub mod offsets_log;
pub mod records;
pub mod txn_offsets;

pub use coordinator::GroupCoordinator;

use crate::coordination::ClusterMetadata;
use crate::shard::router;

/// The internal topic holding committed offsets and group metadata. Never listed to clients
/// unless asked for by name; clients cannot create, produce to or delete it.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Group ids longer than this get INVALID_GROUP_ID: it bounds the size of one offsets record.
pub const MAX_GROUP_ID_BYTES: usize = 1024;

/// Upper bound of `offset.metadata.max.bytes`: with group ids and topic names bounded too, a
/// batch of `offsets_log::RECORDS_PER_BATCH` records stays under 1 MiB.
pub const MAX_OFFSET_METADATA_BYTES: usize = 8192;

/// Group coordinator settings; Kafka's names and, except where noted, Kafka's defaults.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`: a JoinGroup asking for less gets INVALID_SESSION_TIMEOUT.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group
    /// waits for more members. Kafka's default is 3000; ours is 100 so a lone consumer starts
    /// quickly while members started together still land in one generation.
    pub initial_rebalance_delay_ms: i32,
    /// `offsets.topic.num.partitions`: fixed once groups have been placed (changing it moves
    /// groups to other partitions, whose logs do not hold their offsets).
    pub offsets_topic_partitions: i32,
    /// `offset.metadata.max.bytes`: larger commit metadata gets OFFSET_METADATA_TOO_LARGE.
    pub offset_metadata_max_bytes: usize,
    /// `group.max.size`: joins beyond it get GROUP_MAX_SIZE_REACHED.
    pub max_size: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 100,
            offsets_topic_partitions: 50,
            offset_metadata_max_bytes: 4096,
            max_size: 1_000,
        }
    }
}

/// The offsets-topic partition that holds `group_id`'s offsets and metadata. The one
/// placement decision for groups: everything else derives from it.
pub fn coordinator_for(group_id: &str, offsets_topic_partitions: i32) -> i32 {
    assert!(offsets_topic_partitions > 0);
    (router::fnv1a(group_id) % offsets_topic_partitions as u64) as i32
}

/// The shard that owns the groups of offsets partition `partition`: the partition's owner, as
/// for any topic.
pub fn owner_shard(partition: i32, nr_shards: usize) -> usize {
    router::owner_shard(OFFSETS_TOPIC, partition, nr_shards)
}

/// The node that coordinates the groups of offsets partition `partition`: the partition's
/// leader in the cluster metadata. A single node (a quorum of one, `clustered` false)
/// coordinates every group before the metadata carries the offsets topic; in a cluster there is
/// no coordinator until the quorum has created the topic and the partition has a leader.
pub fn coordinator_node(
    metadata: &ClusterMetadata,
    partition: i32,
    this_node: i32,
    clustered: bool,
) -> Option<i32> {
    match metadata.topic(OFFSETS_TOPIC) {
        Some(_) => metadata.partition_leader(OFFSETS_TOPIC, partition),
        None if clustered => None,
        None => Some(this_node),
    }
}

/// The offsets topic as the coordination quorum creates it in a cluster: Kafka's
/// `offsets.topic.replication.factor` (3), or fewer while fewer brokers are live.
pub fn offsets_topic_replication_factor(live_brokers: usize) -> i16 {
    live_brokers.clamp(1, 3) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_deterministic_and_spread() {
        let mut seen = [0usize; 50];
        for i in 0..5_000 {
            let group = format!("group-{i}");
            let p = coordinator_for(&group, 50);
            assert_eq!(p, coordinator_for(&group, 50));
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 40), "{seen:?}");
        assert_eq!(
            coordinator_node(&ClusterMetadata::empty(), 3, 7, false),
            Some(7)
        );
        assert_eq!(
            coordinator_node(&ClusterMetadata::empty(), 3, 7, true),
            None
        );
    }
}
