//! Process-wide counters. Relaxed atomics: they are statistics, never used to synchronise.
//! Updated once per request or response, never per record.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Open client connections over all shards (checked against `max.connections`).
    pub connections: AtomicUsize,
    pub connections_refused: AtomicU64,
    /// Fetch record bytes sent from segment files to sockets with sendfile.
    pub zero_copy_bytes: AtomicU64,
    /// Fetch record bytes that went through a user-space buffer (socket buffer was full).
    pub copied_fetch_bytes: AtomicU64,
    /// Fetch record bytes served from the partitions' tail caches (memory, not the files).
    pub memory_fetch_bytes: AtomicU64,
    pub produced_bytes: AtomicU64,
    pub requests: AtomicU64,
    pub malformed_requests: AtomicU64,
}

impl BrokerStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A one-line summary for the log.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "connections={} requests={} produced_bytes={} fetch_zero_copy_bytes={} fetch_copied_bytes={} fetch_memory_bytes={} malformed_requests={} connections_refused={}",
            self.connections.load(Ordering::Relaxed),
            get(&self.requests),
            get(&self.produced_bytes),
            get(&self.zero_copy_bytes),
            get(&self.copied_fetch_bytes),
            get(&self.memory_fetch_bytes),
            get(&self.malformed_requests),
            get(&self.connections_refused),
        )
    }
}
