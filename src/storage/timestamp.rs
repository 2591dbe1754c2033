//! Record-level timestamp search inside one uncompressed RecordBatch v2, for ListOffsets.
//!
//! Each record is `length varint, attributes i8, timestampDelta varlong, offsetDelta varint, ...`
//! (zigzag varints). Only the first three fields are read; `length` skips the rest. Every read is
//! bounds-checked, so a malformed batch yields `None`, never a panic.

use crate::record_batch::varint::{read_zigzag, VARINT_MAX_BYTES, VARLONG_MAX_BYTES};
use crate::record_batch::{BatchHeader, HEADER_LEN};

/// The first record (in offset order) of `batch` whose timestamp is `>= target`, as
/// `(offset, timestamp)`. `batch` is the whole uncompressed batch `header` was parsed from.
pub fn first_record_at_or_after(
    batch: &[u8],
    header: &BatchHeader,
    target: i64,
) -> Option<(i64, i64)> {
    let mut position = HEADER_LEN;
    for _ in 0..header.record_count {
        let (length, used) = read_zigzag(batch.get(position..)?, VARINT_MAX_BYTES)?;
        position += used;
        let end = position.checked_add(usize::try_from(length).ok()?)?;
        let record = batch.get(position..end)?;
        let after_attributes = record.get(1..)?;
        let (timestamp_delta, used) = read_zigzag(after_attributes, VARLONG_MAX_BYTES)?;
        let (offset_delta, _) = read_zigzag(after_attributes.get(used..)?, VARINT_MAX_BYTES)?;
        let timestamp = header.base_timestamp.wrapping_add(timestamp_delta);
        if timestamp >= target {
            return Some((header.base_offset.checked_add(offset_delta)?, timestamp));
        }
        position = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::validate;
    use crate::storage::testutil::batch_with_timestamps;

    #[test]
    fn finds_the_first_record_at_or_after() {
        let bytes = batch_with_timestamps(1_000, &[0, 50, 20, 90], 3);
        let header = validate(&bytes, 1 << 20).unwrap();
        assert_eq!(
            first_record_at_or_after(&bytes, &header, 0),
            Some((0, 1_000))
        );
        assert_eq!(
            first_record_at_or_after(&bytes, &header, 1_021),
            Some((1, 1_050))
        );
        assert_eq!(
            first_record_at_or_after(&bytes, &header, 1_051),
            Some((3, 1_090))
        );
        assert_eq!(first_record_at_or_after(&bytes, &header, 1_091), None);
    }

    #[test]
    fn malformed_records_yield_none() {
        let bytes = batch_with_timestamps(1_000, &[0, 50], 3);
        let header = validate(&bytes, 1 << 20).unwrap();
        for cut in HEADER_LEN..bytes.len() {
            // Never panics; may still find the first record when it is whole.
            let _ = first_record_at_or_after(&bytes[..cut], &header, 1_050);
        }
        let mut garbage = bytes.clone();
        garbage[HEADER_LEN..].fill(0xff);
        assert_eq!(first_record_at_or_after(&garbage, &header, 0), None);
    }
}
