//! # broker
//!
//! A Kafka-compatible streaming broker, thread-per-core on glommio (io_uring).
//! See `docs/ARCHITECTURE.md` for the codemap and the invariants.
//!
//! # Layout
//! - [`server`]: start-up, shards, shutdown.
//! - [`net`]: listeners, connections (framing, limits, backpressure), sendfile.
//! - [`record_batch`]: the RecordBatch v2 header view (parse, validate, assign offsets); the
//!   bottom layer, importing nothing of the crate.
//! - [`protocol`]: framing around the `kafka-protocol` crate, the zero-copy Fetch response
//!   encoder.
//! - [`handlers`]: one module per Kafka API.
//! - [`shard`]: per-core state, partition placement, the cross-core job mesh, producer state.
//! - [`storage`]: partition logs: segments, indexes, O_DIRECT appends, recovery, retention.
//! - [`replication`]: followers fetching from leaders, high watermark, ISR changes,
//!   truncation by leader epoch.
//! - [`coordination`]: the ZooKeeper role: broker registry, topic assignment, metadata log.
//! - [`admin`]: the web console, its JSON API and Prometheus `/metrics`, served off the shards.
//! - [`groups`]: consumer groups: the group coordinator, committed offsets, the offsets log.
//! - [`config`], [`metrics`], [`alloc`].

pub mod admin;
pub mod alloc;
pub mod checksum;
pub mod config;
pub mod coordination;
pub mod groups;
pub mod handlers;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod record_batch;
pub mod replication;
pub mod server;
pub mod shard;
pub mod startup;
pub mod storage;
pub mod transactions;

#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: alloc::GuardedAllocator = alloc::GuardedAllocator;
