//! Which shard serves a new connection.
//!
//! The kernel spreads accepts over the shards' SO_REUSEPORT sockets by a hash of the peer's
//! address and port, so a client with a handful of connections often has its busiest ones on
//! one shard while the other shards idle: a producer and a consumer that land together make
//! one core carry both directions of their traffic. So each accepted connection goes to the
//! shard serving the fewest connections (the shard that accepted it hands it over when that is
//! another one), as Seastar's `connection_distribution` does. Ties go round robin, so the
//! first connections of a client alternate over the shards whatever the order they close in.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Open connections per shard, shared by all shards (relaxed atomics: two shards placing a
/// connection at the same moment may both pick the same least-loaded shard, which the next
/// placements even out).
#[derive(Debug)]
pub struct ConnectionBalance {
    /// Connections each shard serves now.
    open: Box<[AtomicUsize]>,
    /// Where the search for the least-loaded shard starts; every placement advances it, so
    /// among equally loaded shards the choice rotates.
    cursor: AtomicUsize,
}

impl ConnectionBalance {
    pub fn new(shards: usize) -> ConnectionBalance {
        assert!(shards > 0);
        ConnectionBalance {
            open: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// Chooses the shard for a new connection, the one serving the fewest (ties: the first at
    /// or after the cursor), and counts the connection there. `close` must follow when the
    /// connection ends.
    pub fn place(&self) -> usize {
        let shards = self.open.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % shards;
        let target = (0..shards)
            .map(|step| (start + step) % shards)
            .min_by_key(|&shard| self.open[shard].load(Ordering::Relaxed))
            .expect("at least one shard");
        self.open[target].fetch_add(1, Ordering::Relaxed);
        target
    }

    /// A connection that `place` counted on `shard` ended.
    pub fn close(&self, shard: usize) {
        let before = self.open[shard].fetch_sub(1, Ordering::Relaxed);
        assert!(
            before > 0,
            "shard {shard} closed a connection it did not count"
        );
    }

    /// Connections `shard` serves now.
    pub fn open_on(&self, shard: usize) -> usize {
        self.open[shard].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_loaded_shard_and_ties_rotate() {
        let balance = ConnectionBalance::new(2);
        let first = balance.place();
        let second = balance.place();
        assert_ne!(
            first, second,
            "the second connection goes to the idle shard"
        );
        // Both serve one: the next two still split, whichever order they come in.
        let third = balance.place();
        let fourth = balance.place();
        assert_ne!(third, fourth);
        assert_eq!((balance.open_on(0), balance.open_on(1)), (2, 2));
        // A shard whose connections closed gets the next ones until it has caught up.
        balance.close(first);
        balance.close(third);
        assert_eq!(balance.open_on(first), 0);
        assert_eq!(balance.place(), first);
        assert_eq!(balance.place(), first);
        assert_eq!((balance.open_on(0), balance.open_on(1)), (2, 2));
    }

    #[test]
    fn one_shard_takes_everything() {
        let balance = ConnectionBalance::new(1);
        for _ in 0..3 {
            assert_eq!(balance.place(), 0);
        }
        assert_eq!(balance.open_on(0), 3);
    }

    #[test]
    fn many_shards_fill_evenly() {
        let balance = ConnectionBalance::new(5);
        for _ in 0..23 {
            balance.place();
        }
        let counts: Vec<usize> = (0..5).map(|s| balance.open_on(s)).collect();
        assert!(counts.iter().all(|&c| c == 4 || c == 5), "{counts:?}");
    }
}
