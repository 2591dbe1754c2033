//! The cleaner's key → latest offset map over the dirty part of a log, with a memory budget
//! (`log.cleaner.dedupe.buffer.size`, per shard).
//!
//! Keys are kept whole rather than hashed (Kafka keeps 16-byte MD5 digests): a collision would
//! delete a live record, and whole keys cost little at the sizes this broker targets. Each
//! entry is charged its key length plus [`ENTRY_OVERHEAD_BYTES`].

use std::collections::HashMap;

/// What one entry costs beyond its key: the hash table slot, the boxed slice header, the
/// offset and the allocator's rounding, roughly.
pub const ENTRY_OVERHEAD_BYTES: usize = 48;

#[derive(Debug)]
pub struct KeyOffsetMap {
    latest: HashMap<Box<[u8]>, i64>,
    used_bytes: usize,
    budget_bytes: usize,
}

impl KeyOffsetMap {
    pub fn new(budget_bytes: usize) -> KeyOffsetMap {
        KeyOffsetMap {
            latest: HashMap::new(),
            used_bytes: 0,
            budget_bytes,
        }
    }

    /// Records `offset` as the latest offset of `key` (offsets arrive in increasing order).
    /// Returns false, changing nothing, when a new key would take the map over its budget.
    pub fn insert(&mut self, key: &[u8], offset: i64) -> bool {
        if let Some(latest) = self.latest.get_mut(key) {
            *latest = offset.max(*latest);
            return true;
        }
        let cost = key.len() + ENTRY_OVERHEAD_BYTES;
        if self.used_bytes + cost > self.budget_bytes {
            return false;
        }
        self.used_bytes += cost;
        self.latest.insert(key.into(), offset);
        true
    }

    pub fn get(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_offset_within_its_budget() {
        let mut map = KeyOffsetMap::new(2 * (1 + ENTRY_OVERHEAD_BYTES));
        assert!(map.insert(b"a", 1));
        assert!(map.insert(b"b", 2));
        assert!(map.insert(b"a", 3), "an update costs nothing");
        assert!(!map.insert(b"c", 4), "a third key is over budget");
        assert_eq!(map.get(b"a"), Some(3));
        assert_eq!(map.get(b"c"), None);
        assert_eq!(map.len(), 2);
        assert_eq!(map.used_bytes(), 2 * (1 + ENTRY_OVERHEAD_BYTES));
    }
}
