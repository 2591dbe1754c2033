//! Idempotent-producer state of one partition: the last batches each producer wrote, so that a
//! retried batch is answered with its original offset instead of being written twice, and a
//! gap in sequence numbers is refused (Kafka's ProducerStateManager rules).

use std::collections::{HashMap, VecDeque};

use kafka_protocol::ResponseError;

use crate::record_batch::BatchHeader;

/// Kafka keeps the last five batches per producer: a producer has at most five in flight.
const CACHED_BATCHES_PER_PRODUCER: usize = 5;

#[derive(Debug, Clone, Copy)]
struct CachedBatch {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
}

#[derive(Debug)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<CachedBatch>,
    /// The max timestamp of the producer's last batch (DescribeProducers).
    last_timestamp: i64,
}

/// One producer as DescribeProducers reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSummary {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_timestamp: i64,
    pub current_txn_start_offset: i64,
}

/// What to do with a batch from a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New data in sequence (or no producer id): append it.
    Append,
    /// A retry of a batch already in the log at `base_offset`: answer success, write nothing.
    Duplicate { base_offset: i64 },
}

/// Owned by the partition's shard, like the log it describes.
#[derive(Debug, Default)]
pub struct ProducerStateTable {
    producers: HashMap<i64, ProducerEntry>,
    /// Transactions open on this partition: producer id to the offset of its first batch.
    /// The smallest bounds the last stable offset.
    ongoing: HashMap<i64, i64>,
    /// Aborted transactions, in marker order: what read_committed fetches report so that
    /// clients drop their records. Rebuilt at open from the log's `.txnindex` files (every
    /// segment's), extended by each abort marker appended, forgotten below the log start:
    /// 24 bytes per abort in the retained log, next to the offset index entries every closed
    /// segment already keeps in memory, and no file read on the fetch path.
    aborted: Vec<AbortedTxn>,
}

/// A transaction whose abort marker is in the log: its records span
/// `first_offset..=last_offset` (the marker's offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

impl ProducerStateTable {
    /// Checks a batch against the producer's state without changing it.
    pub fn check(&self, batch: &BatchHeader) -> Result<SequenceCheck, ResponseError> {
        if !batch.has_producer_id() {
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            // No state: a new producer, or one whose batches retention removed. Kafka accepts
            // any sequence here.
            return Ok(SequenceCheck::Append);
        };
        if batch.producer_epoch < entry.epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if batch.producer_epoch == entry.epoch {
            let last_sequence = batch.last_sequence();
            if let Some(cached) = entry.batches.iter().find(|b| {
                b.first_sequence == batch.base_sequence && b.last_sequence == last_sequence
            }) {
                return Ok(SequenceCheck::Duplicate {
                    base_offset: cached.base_offset,
                });
            }
            let expected = entry
                .batches
                .back()
                .map_or(0, |b| next_sequence(b.last_sequence));
            if batch.base_sequence != expected {
                return Err(ResponseError::OutOfOrderSequenceNumber);
            }
        } else if batch.base_sequence != 0 {
            // A bumped epoch starts its sequences again at zero.
            return Err(ResponseError::OutOfOrderSequenceNumber);
        }
        Ok(SequenceCheck::Append)
    }

    /// Records a batch that was appended at `base_offset`.
    pub fn record(&mut self, batch: &BatchHeader, base_offset: i64) {
        // Control batches carry no sequence numbers: markers go through `end_transaction`.
        if !batch.has_producer_id() || batch.is_control() {
            return;
        }
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.producer_epoch,
                batches: VecDeque::new(),
                last_timestamp: -1,
            });
        if batch.producer_epoch != entry.epoch {
            entry.epoch = batch.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == CACHED_BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.last_timestamp = batch.max_timestamp;
        entry.batches.push_back(CachedBatch {
            first_sequence: batch.base_sequence,
            last_sequence: batch.last_sequence(),
            base_offset,
        });
    }

    /// Tracks a transactional data batch appended at `base_offset`: the first one of a
    /// producer opens its transaction on this partition.
    pub fn begin_transaction(&mut self, producer_id: i64, base_offset: i64) {
        self.ongoing.entry(producer_id).or_insert(base_offset);
    }

    /// A commit or abort marker of `producer_id` at `marker_offset` closes its transaction; an
    /// abort is remembered for read_committed fetches. The marker's epoch fences older ones.
    pub fn end_transaction(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        committed: bool,
        marker_offset: i64,
    ) {
        let first_offset = self.ongoing.remove(&producer_id);
        if !committed {
            if let Some(first_offset) = first_offset {
                self.aborted.push(AbortedTxn {
                    producer_id,
                    first_offset,
                    last_offset: marker_offset,
                });
            }
        }
        if producer_epoch < 0 {
            // Rebuilt from recovery, which knows the producers' epochs from their batches.
            return;
        }
        let entry = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: producer_epoch,
                batches: VecDeque::new(),
                last_timestamp: -1,
            });
        if producer_epoch > entry.epoch {
            entry.epoch = producer_epoch;
            entry.batches.clear();
        }
    }

    /// The epoch this partition knows `producer_id` at, if it knows the producer.
    pub fn epoch_of(&self, producer_id: i64) -> Option<i16> {
        self.producers.get(&producer_id).map(|entry| entry.epoch)
    }

    /// The first offset of the oldest open transaction, if any.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.values().copied().min()
    }

    /// The first offset of `producer_id`'s open transaction, if it has one here.
    pub fn ongoing_start(&self, producer_id: i64) -> Option<i64> {
        self.ongoing.get(&producer_id).copied()
    }

    /// Aborted transactions overlapping `from..below`.
    pub fn aborted_between(&self, from: i64, below: i64) -> Vec<AbortedTxn> {
        self.aborted
            .iter()
            .filter(|a| a.last_offset >= from && a.first_offset < below)
            .copied()
            .collect()
    }

    /// Takes the aborted transactions recovery found (the log's `.txnindex` files), in marker
    /// order, before any marker written since.
    pub fn restore_aborted(&mut self, aborted: impl IntoIterator<Item = AbortedTxn>) {
        assert!(self.aborted.is_empty(), "restored into a fresh table");
        self.aborted.extend(aborted);
    }

    /// Forgets aborted transactions wholly below `log_start_offset` (deleted by retention).
    pub fn forget_aborted_below(&mut self, log_start_offset: i64) {
        self.aborted.retain(|a| a.last_offset >= log_start_offset);
    }

    /// Every producer's id, epoch, last sequence and open transaction start (DescribeProducers).
    pub fn producers(&self) -> Vec<ProducerSummary> {
        self.producers
            .iter()
            .map(|(&producer_id, entry)| ProducerSummary {
                producer_id,
                epoch: entry.epoch,
                last_sequence: entry.batches.back().map_or(-1, |b| b.last_sequence),
                last_timestamp: entry.last_timestamp,
                current_txn_start_offset: self.ongoing_start(producer_id).unwrap_or(-1),
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::{tests::make_batch, BatchHeader};

    fn header(pid: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        let mut h = BatchHeader::parse(&make_batch(count, pid, seq), 1 << 20).unwrap();
        h.producer_epoch = epoch;
        h
    }

    #[test]
    fn retries_are_deduplicated_and_gaps_refused() {
        let mut table = ProducerStateTable::default();
        let first = header(7, 0, 0, 3);
        assert_eq!(table.check(&first), Ok(SequenceCheck::Append));
        table.record(&first, 100);
        assert_eq!(
            table.check(&first),
            Ok(SequenceCheck::Duplicate { base_offset: 100 })
        );
        let gap = header(7, 0, 5, 1);
        assert_eq!(
            table.check(&gap),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        let next = header(7, 0, 3, 2);
        assert_eq!(table.check(&next), Ok(SequenceCheck::Append));
        table.record(&next, 103);
        let fenced = header(7, -1, 5, 1);
        assert_eq!(
            table.check(&fenced),
            Err(ResponseError::InvalidProducerEpoch)
        );
        assert_eq!(
            table.check(&header(7, 1, 4, 1)),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        assert_eq!(table.check(&header(7, 1, 0, 1)), Ok(SequenceCheck::Append));
        assert_eq!(
            table.check(&header(-1, 0, -1, 1)),
            Ok(SequenceCheck::Append)
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut table = ProducerStateTable::default();
        for i in 0..7 {
            let h = header(1, 0, i, 1);
            assert_eq!(table.check(&h), Ok(SequenceCheck::Append));
            table.record(&h, i as i64);
        }
        assert_eq!(
            table.check(&header(1, 0, 6, 1)),
            Ok(SequenceCheck::Duplicate { base_offset: 6 })
        );
        assert_eq!(
            table.check(&header(1, 0, 1, 1)),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
    }

    #[test]
    fn open_transactions_bound_the_stable_offset_and_aborts_are_remembered() {
        let mut table = ProducerStateTable::default();
        assert_eq!(table.first_unstable_offset(), None);
        table.begin_transaction(1, 10);
        table.begin_transaction(1, 12);
        table.begin_transaction(2, 11);
        assert_eq!(table.first_unstable_offset(), Some(10));
        table.end_transaction(1, 0, true, 13);
        assert_eq!(table.first_unstable_offset(), Some(11));
        table.end_transaction(2, 0, false, 14);
        assert_eq!(table.first_unstable_offset(), None);
        let aborted = AbortedTxn {
            producer_id: 2,
            first_offset: 11,
            last_offset: 14,
        };
        assert_eq!(table.aborted_between(0, 20), vec![aborted]);
        assert!(table.aborted_between(15, 20).is_empty());
        assert!(table.aborted_between(0, 11).is_empty());
        // A marker at a newer epoch fences the older one.
        table.end_transaction(2, 1, false, 15);
        assert_eq!(
            table.check(&header(2, 0, 0, 1)),
            Err(ResponseError::InvalidProducerEpoch)
        );
        table.forget_aborted_below(15);
        assert!(table.aborted_between(0, 20).is_empty());
    }
}
