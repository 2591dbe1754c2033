//! Which transactional batches of the cleaned segments belong to aborted transactions.
//!
//! A run only reads segments below the first unstable offset
//! (`PartitionLog::cleanable_segments`), so every transactional batch it sees is decided: its
//! transaction either aborted (an entry of some `.txnindex` at or after its segment covers it)
//! or committed. Aborted batches are dropped whole and never enter the key map; committed
//! ones are cleaned like any other records (Kafka's cleaner does the same).

use std::collections::HashMap;
use std::path::PathBuf;

use crate::storage::txn_index::{self, TxnIndexEntry};
use crate::storage::StorageError;

/// A closed segment's `.txnindex`, to read off the shard.
#[derive(Debug, Clone)]
pub struct IndexFile {
    pub log_path: PathBuf,
    pub base_offset: i64,
    pub next_offset: i64,
    pub size_bytes: u64,
}

/// The aborted transactions' offset ranges, by producer id.
#[derive(Debug, Default)]
pub struct AbortedTransactions {
    /// Per producer, `(first_offset, last_offset)` of each aborted transaction, ascending and
    /// disjoint (a producer has one transaction open at a time).
    ranges: HashMap<i64, Vec<(i64, i64)>>,
}

impl AbortedTransactions {
    /// Reads the closed segments' `.txnindex` files (see
    /// `PartitionLog::aborted_transaction_sources`) and adds the active segment's entries.
    /// Blocking. A damaged index fails the run: cleaning without it could keep aborted records
    /// as the latest value of their key.
    pub fn load(files: &[IndexFile], active: Vec<TxnIndexEntry>) -> Result<Self, StorageError> {
        let mut entries = Vec::new();
        for file in files {
            let read = txn_index::read(
                &file.log_path,
                file.base_offset,
                file.next_offset,
                file.size_bytes,
            )
            .map_err(|e| {
                StorageError::Io(std::io::Error::other(format!(
                    "{}: {e}",
                    txn_index::path_for(&file.log_path).display()
                )))
            })?;
            entries.extend(read);
        }
        entries.extend(active);
        Ok(Self::from_entries(entries))
    }

    pub fn from_entries(entries: impl IntoIterator<Item = TxnIndexEntry>) -> Self {
        let mut ranges: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for entry in entries {
            ranges
                .entry(entry.producer_id)
                .or_default()
                .push((entry.first_offset, entry.last_offset));
        }
        for list in ranges.values_mut() {
            list.sort_unstable();
        }
        AbortedTransactions { ranges }
    }

    /// Whether the transactional batch of `producer_id` starting at `base_offset` was aborted.
    pub fn contains(&self, producer_id: i64, base_offset: i64) -> bool {
        let Some(list) = self.ranges.get(&producer_id) else {
            return false;
        };
        // The last range starting at or before the batch.
        let at = list.partition_point(|&(first, _)| first <= base_offset);
        at > 0 && base_offset <= list[at - 1].1
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(producer_id: i64, first_offset: i64, last_offset: i64) -> TxnIndexEntry {
        TxnIndexEntry {
            producer_id,
            first_offset,
            last_offset,
            last_stable_offset: first_offset,
        }
    }

    #[test]
    fn a_batch_is_aborted_only_inside_its_producers_aborted_ranges() {
        let aborted = AbortedTransactions::from_entries([
            entry(7, 100, 120),
            entry(7, 10, 20),
            entry(8, 15, 30),
        ]);
        assert!(aborted.contains(7, 10));
        assert!(aborted.contains(7, 19));
        assert!(aborted.contains(7, 110));
        assert!(!aborted.contains(7, 9));
        assert!(!aborted.contains(7, 21));
        assert!(!aborted.contains(7, 121));
        assert!(aborted.contains(8, 15));
        assert!(!aborted.contains(9, 15), "another producer's range");
        assert!(!AbortedTransactions::default().contains(7, 10));
    }
}
