//! The coordination role (what ZooKeeper does in a classic Kafka setup): broker registration
//! and sessions, topic and partition assignment, leader selection, all replicated by Raft among
//! the voters of the coordination quorum (KRaft's controller quorum, in effect).
//!
//! - [`state_machine`]: the deterministic state (brokers, topics, leaders, ISR) and the commands
//!   that change it. No I/O, no clock.
//! - [`quorum`]: one voter without I/O: raft-rs's `RawNode` applying committed commands, plus
//!   the quorum leader's session expiry.
//! - [`raft_store`]: the Raft log in memory and on disk (CRC-framed files, snapshots).
//! - [`runtime`]: the coordination shard: a voter driven on shard 0, TCP links to the other
//!   voters, this broker's registration and heartbeats, metadata publication.
//! - [`sim`]: a seeded, deterministic simulation of voters and brokers over a faulty network.
//! - [`legacy_import`]: the upgrade path from the single-node metadata log.
//! - [`partition_admin`]: leader elections and replica reassignments asked for by operators.
//! - [`rebalance`]: the periodic preferred-leader election (`auto.leader.rebalance.enable`).
//! - [`broker_configs`]: which broker configs are dynamic, and their validation.
//! - [`metadata`]: the immutable [`ClusterMetadata`] snapshot every shard reads.
//!
//! A single node is a quorum of one, embedded: the same code, no network.

pub mod broker_configs;
pub mod frames;
pub mod legacy_import;
pub mod metadata;
pub mod partition_admin;
pub mod quorum;
pub mod raft_logging;
pub mod raft_store;
pub mod rebalance;
pub mod runtime;
pub mod sim;
pub mod snapshot_compat;
pub mod state_machine;

pub use metadata::{BrokerInfo, ClusterMetadata, PartitionMetadata, TopicMetadata};
pub use runtime::{Coordinator, CoordinatorConfig, Voter};
pub use state_machine::{Command, Outcome, TOPIC_CONFIG_KEYS};
