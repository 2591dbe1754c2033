//! Kafka wire protocol: request framing and the RecordBatch v2 view.

pub mod record_batch;
