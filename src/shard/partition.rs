//! A partition as its owning shard sees it: the log plus the idempotent-producer state.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::producer_state::{ProducerStateTable, SequenceCheck};
use crate::protocol::record_batch::{self, BatchError, BatchHeader, Batches};
use crate::protocol::ApiError;
use crate::storage::{PartitionLog, StorageError};

/// One partition led by this broker. Owned by exactly one shard (see `shard::router`); never
/// touched from another core.
pub struct Partition {
    pub topic: String,
    pub index: i32,
    /// Distinguishes a re-created topic from the deleted one of the same name.
    pub topic_id: Uuid,
    pub log: Rc<PartitionLog>,
    pub leader_epoch: Cell<i32>,
    producers: RefCell<ProducerStateTable>,
}

/// Where a produce to this partition landed.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub base_offset: i64,
    /// One past the last offset written; what to wait for before answering.
    pub end_offset: i64,
}

impl Partition {
    pub fn new(
        topic: String,
        index: i32,
        topic_id: Uuid,
        log: Rc<PartitionLog>,
        leader_epoch: i32,
    ) -> Partition {
        let mut producers = ProducerStateTable::default();
        let mut recovered = 0;
        for header in log.recovered_producer_batches() {
            producers.record(&header, header.base_offset);
            recovered += 1;
        }
        if recovered > 0 {
            tracing::debug!(
                topic,
                index,
                recovered,
                "rebuilt producer state from the log tail"
            );
        }
        Partition {
            topic,
            index,
            topic_id,
            log,
            leader_epoch: Cell::new(leader_epoch),
            producers: RefCell::new(producers),
        }
    }

    /// Validates the batches of one produce request and appends them, synchronously assigning
    /// offsets (so appends are ordered as requests were read). The caller then waits on
    /// `log.wait_written(end_offset, durable)` before answering.
    ///
    /// Nothing is appended unless every batch is valid: a request is all or nothing per
    /// partition, as in Kafka.
    pub fn append(&self, records: &Bytes, max_batch_bytes: usize) -> Result<Appended, ApiError> {
        let mut headers: Vec<(BatchHeader, std::ops::Range<usize>)> = Vec::with_capacity(1);
        for item in Batches::new(records, usize::MAX) {
            let (header, range) = item.map_err(|(_, e)| batch_error(e))?;
            if header.total_len() > max_batch_bytes {
                return Err(ApiError::new(
                    ResponseError::MessageTooLarge,
                    format!(
                        "batch of {} bytes exceeds message.max.bytes {max_batch_bytes}",
                        header.total_len()
                    ),
                ));
            }
            record_batch::validate(&records[range.clone()], max_batch_bytes)
                .map_err(batch_error)?;
            if header.is_transactional() || header.is_control() {
                return Err(ApiError::new(
                    ResponseError::UnsupportedForMessageFormat,
                    "transactional batches are not supported",
                ));
            }
            headers.push((header, range));
        }
        if headers.is_empty() {
            return Err(ApiError::new(
                ResponseError::CorruptMessage,
                "produce request without record batches",
            ));
        }
        let mut producers = self.producers.borrow_mut();
        for (header, _) in &headers {
            if let SequenceCheck::Duplicate { base_offset } =
                producers.check(header).map_err(|code| {
                    ApiError::new(
                        code,
                        format!(
                            "producer {} sequence {}",
                            header.producer_id, header.base_sequence
                        ),
                    )
                })?
            {
                // A retry of data already in the log: answer with its original offset.
                tracing::debug!(
                    producer_id = header.producer_id,
                    base_offset,
                    "duplicate batch"
                );
                return Ok(Appended {
                    base_offset,
                    end_offset: base_offset + header.record_count as i64,
                });
            }
        }
        let mut first_offset = None;
        let mut end_offset = 0;
        for (header, range) in headers {
            let info = self
                .log
                .append(records.slice(range), &header, self.leader_epoch.get())
                .map_err(storage_error)?;
            producers.record(&header, info.base_offset);
            first_offset.get_or_insert(info.base_offset);
            end_offset = info.last_offset + 1;
        }
        Ok(Appended {
            base_offset: first_offset.expect("at least one batch"),
            end_offset,
        })
    }
}

fn batch_error(e: BatchError) -> ApiError {
    ApiError::new(ResponseError::CorruptMessage, e.to_string())
}

/// Maps a storage failure to the Kafka error a client understands.
pub fn storage_error(e: StorageError) -> ApiError {
    match e {
        StorageError::OffsetOutOfRange { .. } => {
            ApiError::new(ResponseError::OffsetOutOfRange, e.to_string())
        }
        other => {
            tracing::error!(error = %other, "storage error");
            ApiError::new(ResponseError::KafkaStorageError, other.to_string())
        }
    }
}
