//! Idempotent-producer state of one partition: the last batches each producer wrote, so that a
//! retried batch is answered with its original offset instead of being written twice, and a
//! gap in sequence numbers is refused (Kafka's ProducerStateManager rules).

use std::collections::{HashMap, VecDeque};

use kafka_protocol::ResponseError;

use crate::protocol::record_batch::BatchHeader;

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
        if !batch.has_producer_id() {
            return;
        }
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.producer_epoch,
                batches: VecDeque::new(),
            });
        if batch.producer_epoch != entry.epoch {
            entry.epoch = batch.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == CACHED_BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.batches.push_back(CachedBatch {
            first_sequence: batch.base_sequence,
            last_sequence: batch.last_sequence(),
            base_offset,
        });
    }

    /// The table as batches that [`Self::record`] turns back into the same table, oldest
    /// first: what a clean close saves so the next open needs no scan of the log.
    pub fn snapshot(&self) -> Vec<BatchHeader> {
        let mut batches: Vec<BatchHeader> = self
            .producers
            .iter()
            .flat_map(|(&producer_id, entry)| {
                entry.batches.iter().map(move |b| {
                    BatchHeader::for_producer_state(
                        producer_id,
                        entry.epoch,
                        (b.first_sequence, b.last_sequence),
                        b.base_offset,
                    )
                })
            })
            .collect();
        batches.sort_unstable_by_key(|b| b.base_offset);
        batches
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
    use crate::protocol::record_batch::{tests::make_batch, BatchHeader};

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
    fn a_snapshot_rebuilds_the_same_table_even_across_a_sequence_wrap() {
        let mut table = ProducerStateTable::default();
        for i in 0..7 {
            table.record(&header(1, 0, i * 2, 2), 10 + i as i64 * 2);
        }
        table.record(&header(2, 3, i32::MAX - 1, 4), 40); // sequences 2147483646..=1
        let mut rebuilt = ProducerStateTable::default();
        for batch in table.snapshot() {
            rebuilt.record(&batch, batch.base_offset);
        }
        for probe in [
            header(1, 0, 12, 2),
            header(1, 0, 4, 2),
            header(1, 0, 14, 1),
            header(1, 0, 2, 2),
            header(2, 3, i32::MAX - 1, 4),
            header(2, 3, 2, 1),
            header(2, 3, 3, 1),
            header(2, 2, 0, 1),
        ] {
            assert_eq!(rebuilt.check(&probe), table.check(&probe), "{probe:?}");
        }
        assert_eq!(
            rebuilt.check(&header(2, 3, i32::MAX - 1, 4)),
            Ok(SequenceCheck::Duplicate { base_offset: 40 })
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
}
