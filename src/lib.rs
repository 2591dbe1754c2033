//! # broker
//!
//! A Kafka-compatible streaming broker, thread-per-core on glommio (io_uring).
//! See `docs/ARCHITECTURE.md` for the codemap and the invariants.
//!
//! # Layout
//! - [`protocol`]: wire framing around the `kafka-protocol` crate and the RecordBatch v2 view.
//! - [`storage`]: partition logs: segments, indexes, O_DIRECT appends, recovery, retention.

pub mod protocol;
pub mod storage;
