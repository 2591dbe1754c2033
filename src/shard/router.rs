//! Which shard owns a partition. Pure and deterministic: every shard computes the same answer
//! without asking anyone, and the answer never changes while the shard count stays the same.

/// FNV-1a, so placement does not depend on the process's hash seed. Also places consumer
/// groups (`groups::coordinator_for`).
pub fn fnv1a(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The shard that owns `topic`/`partition`. Consecutive partitions of a topic land on
/// consecutive shards, so a topic's load spreads over all cores.
pub fn owner_shard(topic: &str, partition: i32, nr_shards: usize) -> usize {
    assert!(nr_shards > 0 && partition >= 0);
    ((fnv1a(topic) % nr_shards as u64 + partition as u64) % nr_shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_of_a_topic_spread_over_all_shards() {
        for shards in 1..6 {
            let mut seen = vec![0; shards];
            for p in 0..(shards as i32 * 4) {
                let owner = owner_shard("orders", p, shards);
                assert_eq!(owner, owner_shard("orders", p, shards), "deterministic");
                seen[owner] += 1;
            }
            assert!(seen.iter().all(|&n| n == 4), "{seen:?}");
        }
    }
}
