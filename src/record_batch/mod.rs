//! A zero-copy view of Kafka's RecordBatch v2 header.
//!
//! The bottom of the crate's layering: it imports nothing of the crate but `checksum`, and both
//! the wire side (`protocol`, `handlers`) and the disk side (`storage`) build on it, so neither
//! needs the other for the batch format.
//!
//! The broker never re-encodes records: a batch travels from the producer's socket to the segment
//! file to the consumer's socket in the form the producer built. What the broker needs from it
//! (offsets, counts, timestamps, producer identity) lives in the fixed 61-byte header, which this
//! module parses and checks. Only two header fields are ever rewritten, both outside the CRC:
//! `base_offset` (assigned by the leader) and `partition_leader_epoch`.
//!
//! ```text
//! offset  size  field
//!      0     8  base_offset
//!      8     4  batch_length            (bytes after this field)
//!     12     4  partition_leader_epoch
//!     16     1  magic                   (2)
//!     17     4  crc                     (CRC-32C of bytes 21..end)
//!     21     2  attributes              (bits 0-2 codec, 3 timestamp type, 4 txn, 5 control)
//!     23     4  last_offset_delta
//!     27     8  base_timestamp
//!     35     8  max_timestamp
//!     43     8  producer_id
//!     51     2  producer_epoch
//!     53     4  base_sequence
//!     57     4  record_count
//!     61     …  records
//! ```

pub mod control;
pub mod varint;

use std::fmt;

/// Length of the fixed RecordBatch v2 header.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batch_length` counts: base_offset + batch_length itself.
pub const LOG_OVERHEAD: usize = 12;
/// The only record format this broker stores.
pub const MAGIC_V2: u8 = 2;
/// First byte covered by the CRC.
const CRC_START: usize = 21;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;

/// Why a byte range is not a valid RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than the header or the declared length needs.
    Truncated,
    /// `batch_length` is below the header size or above the allowed maximum.
    BadLength(i32),
    /// Not magic 2 (older message formats are not accepted).
    BadMagic(u8),
    /// Stored and computed CRC-32C differ.
    CrcMismatch { stored: u32, computed: u32 },
    /// `record_count` is not positive or disagrees with `last_offset_delta`.
    BadRecordCount {
        record_count: i32,
        last_offset_delta: i32,
    },
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Truncated => write!(f, "truncated record batch"),
            BatchError::BadLength(len) => write!(f, "invalid batch length {len}"),
            BatchError::BadMagic(m) => write!(f, "unsupported magic {m}"),
            BatchError::CrcMismatch { stored, computed } => {
                write!(
                    f,
                    "crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            BatchError::BadRecordCount {
                record_count,
                last_offset_delta,
            } => write!(
                f,
                "record count {record_count} disagrees with last offset delta {last_offset_delta}"
            ),
        }
    }
}

impl std::error::Error for BatchError {}

/// The parsed fixed header of one RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: u8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// A header standing for a producer's batch in saved producer state (the clean-close
    /// record): only what idempotence checks read is meaningful (producer id and epoch, the
    /// sequence range, the base offset).
    pub fn for_producer_state(
        producer_id: i64,
        producer_epoch: i16,
        (first_sequence, last_sequence): (i32, i32),
        base_offset: i64,
    ) -> BatchHeader {
        let last_offset_delta = if first_sequence < 0 {
            0
        } else if last_sequence >= first_sequence {
            last_sequence - first_sequence
        } else {
            // Sequences wrap from i32::MAX to 0.
            (i32::MAX - first_sequence) + last_sequence + 1
        };
        BatchHeader {
            base_offset,
            batch_length: (HEADER_LEN - LOG_OVERHEAD) as i32,
            partition_leader_epoch: -1,
            magic: MAGIC_V2,
            crc: 0,
            attributes: 0,
            last_offset_delta,
            base_timestamp: -1,
            max_timestamp: -1,
            producer_id,
            producer_epoch,
            base_sequence: first_sequence,
            record_count: last_offset_delta + 1,
        }
    }

    /// Parses the header at the start of `buf` without checking the CRC.
    ///
    /// Checks the length field against `max_batch_bytes` before anything trusts it, so a
    /// corrupt length never sizes a read or an allocation.
    pub fn parse(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
        if buf.len() < LOG_OVERHEAD {
            return Err(BatchError::Truncated);
        }
        let batch_length = be_i32(buf, BATCH_LENGTH);
        let min_len = (HEADER_LEN - LOG_OVERHEAD) as i32;
        if batch_length < min_len || batch_length as usize + LOG_OVERHEAD > max_batch_bytes {
            return Err(BatchError::BadLength(batch_length));
        }
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated);
        }
        let magic = buf[MAGIC];
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, BASE_OFFSET),
            batch_length,
            partition_leader_epoch: be_i32(buf, LEADER_EPOCH),
            magic,
            crc: be_i32(buf, CRC) as u32,
            attributes: be_i16(buf, ATTRIBUTES),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP),
            producer_id: be_i64(buf, PRODUCER_ID),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH),
            base_sequence: be_i32(buf, BASE_SEQUENCE),
            record_count: be_i32(buf, RECORD_COUNT),
        })
    }

    /// Total size of the batch on the wire and on disk, header included.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the last record once `base_offset` is assigned.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> u8 {
        (self.attributes & 0x7) as u8
    }

    /// True when timestamps were set by the broker (LogAppendTime).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x8 != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    /// True when the batch came from an idempotent (or transactional) producer.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// Sequence number of the last record, wrapping at i32::MAX as Kafka does.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return self.base_sequence;
        }
        let last = self.base_sequence as i64 + self.last_offset_delta as i64;
        (last % (i32::MAX as i64 + 1)) as i32
    }
}

/// Computes the CRC-32C that a batch's header should carry.
pub fn compute_crc(batch: &[u8]) -> u32 {
    debug_assert!(batch.len() >= HEADER_LEN);
    crate::checksum::crc32c(&batch[CRC_START..])
}

/// Fully validates one batch as the leader must before appending it: header, exact length,
/// record count consistency and CRC-32C. `batch` must be exactly one batch.
pub fn validate(batch: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    validate_counted(batch, max_batch_bytes, |header| {
        header.last_offset_delta == header.record_count - 1
    })
}

/// [`validate`] for a batch a leader sent to its follower, which may come from a compacted
/// segment: the log cleaner removes records but keeps the batch's last offset delta, so the
/// record count may be anything from 1 to `last_offset_delta + 1`.
pub fn validate_replicated(
    batch: &[u8],
    max_batch_bytes: usize,
) -> Result<BatchHeader, BatchError> {
    validate_counted(batch, max_batch_bytes, |header| {
        header.record_count as i64 <= header.last_offset_delta as i64 + 1
    })
}

/// Header, exact length, a positive record count that `count_fits` accepts, CRC-32C.
fn validate_counted(
    batch: &[u8],
    max_batch_bytes: usize,
    count_fits: impl Fn(&BatchHeader) -> bool,
) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch, max_batch_bytes)?;
    if header.total_len() != batch.len() {
        return Err(BatchError::Truncated);
    }
    if header.record_count <= 0 || !count_fits(&header) {
        return Err(BatchError::BadRecordCount {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    let computed = compute_crc(batch);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Rewrites the two header fields the leader owns. Neither is covered by the CRC. `batch` may
/// be the batch or just its first 16 bytes, which hold both.
pub fn assign(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    assert!(
        batch.len() >= LEADER_EPOCH + 4,
        "assign on a buffer shorter than the batch's first 16 bytes"
    );
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Splits a buffer holding whole batches back to back (a produce request's `records`, or a
/// region of a segment file) into `(header, byte range)` pairs.
///
/// Stops at the first error and reports it with the position where it happened, so that log
/// recovery can cut there and produce validation can reject the request.
pub struct Batches<'a> {
    buf: &'a [u8],
    position: usize,
    max_batch_bytes: usize,
    failed: bool,
}

impl<'a> Batches<'a> {
    pub fn new(buf: &'a [u8], max_batch_bytes: usize) -> Self {
        Batches {
            buf,
            position: 0,
            max_batch_bytes,
            failed: false,
        }
    }

    /// Bytes consumed by the batches yielded so far.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<(BatchHeader, std::ops::Range<usize>), (usize, BatchError)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.position..];
        let header = match BatchHeader::parse(rest, self.max_batch_bytes) {
            Ok(header) => header,
            Err(error) => {
                self.failed = true;
                return Some(Err((self.position, error)));
            }
        };
        if rest.len() < header.total_len() {
            self.failed = true;
            return Some(Err((self.position, BatchError::Truncated)));
        }
        let range = self.position..self.position + header.total_len();
        self.position = range.end;
        Some(Ok((header, range)))
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Builds a syntactically valid uncompressed batch with `count` empty-value records.
    /// Used by tests across the crate; the records section is opaque to the broker.
    pub fn make_batch(count: i32, producer_id: i64, base_sequence: i32) -> Vec<u8> {
        assert!(count > 0);
        let mut records = Vec::new();
        for i in 0..count {
            // length, attributes, timestampDelta, offsetDelta, keyLen(-1), valueLen(1), value, headers(0)
            let body = [0u8, 0, (i as u8) << 1, 1, 2, b'x', 0];
            records.push((body.len() as u8) << 1);
            records.extend_from_slice(&body);
        }
        let mut b = vec![0u8; HEADER_LEN];
        b.extend_from_slice(&records);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&len.to_be_bytes());
        b[MAGIC] = MAGIC_V2;
        b[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&(count - 1).to_be_bytes());
        b[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&1_000i64.to_be_bytes());
        b[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&1_000i64.to_be_bytes());
        b[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
        b[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_be_bytes());
        b[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&count.to_be_bytes());
        let crc = compute_crc(&b);
        b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn valid_batch_round_trips() {
        let mut b = make_batch(3, -1, -1);
        let h = validate(&b, 1 << 20).unwrap();
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assign(&mut b, 42, 7);
        let h = validate(&b, 1 << 20).expect("base offset and epoch are outside the crc");
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.last_offset(), 44);
        assert_eq!(h.partition_leader_epoch, 7);
    }

    #[test]
    fn corruption_is_detected() {
        let mut b = make_batch(2, -1, -1);
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::CrcMismatch { .. })
        ));
        let b = make_batch(2, -1, -1);
        assert_eq!(
            validate(&b[..b.len() - 1], 1 << 20),
            Err(BatchError::Truncated)
        );
        let mut b = make_batch(2, -1, -1);
        b[MAGIC] = 1;
        assert_eq!(validate(&b, 1 << 20), Err(BatchError::BadMagic(1)));
        let mut b = make_batch(2, -1, -1);
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(validate(&b, 1 << 20), Err(BatchError::BadLength(i32::MAX)));
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(validate(&b, 1 << 20), Err(BatchError::BadLength(-5)));
    }

    #[test]
    fn batches_iterator_stops_at_first_bad_batch() {
        let mut buf = make_batch(1, -1, -1);
        buf.extend(make_batch(2, -1, -1));
        let good_len = buf.len();
        buf.extend_from_slice(&[0u8; 30]);
        let mut it = Batches::new(&buf, 1 << 20);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_ok());
        assert_eq!(it.position(), good_len);
        assert!(matches!(it.next(), Some(Err((p, _))) if p == good_len));
        assert!(it.next().is_none());
    }

    #[test]
    fn sequences_wrap() {
        let h = BatchHeader {
            base_sequence: i32::MAX,
            last_offset_delta: 1,
            ..header0()
        };
        assert_eq!(h.last_sequence(), 0);
    }

    fn header0() -> BatchHeader {
        BatchHeader::parse(&make_batch(1, -1, -1), 1 << 20).unwrap()
    }
}
