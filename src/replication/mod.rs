//! Partition replication, as Kafka does it: followers fetch from the leader with the Fetch
//! protocol, the leader tracks how far each has fetched, advances the high watermark to what
//! every in-sync replica has on disk, and asks the coordination quorum to shrink or expand the
//! ISR (`AlterPartition`). A follower that starts following at a new leader epoch first cuts
//! any suffix that diverges from the new leader's log (OffsetForLeaderEpoch).
//!
//! Everything here runs on the shard that owns the partition (`shard::router`), on followers
//! as on leaders: one owner per partition holds on every broker.
//!
//! - [`leader`]: per-partition follower progress, high watermark bound, ISR decisions (pure).
//! - [`isr`]: proposing ISR changes through the coordination quorum; the periodic check.
//! - [`follower`]: the fetcher tasks (one per shard and leader broker).
//! - [`peer`]: the broker-to-broker Kafka connection the fetchers use.

pub mod follower;
pub mod isr;
pub mod leader;
pub mod peer;
