//! Records inside one RecordBatch v2: finding each record's offset, key and whether it is a
//! tombstone, and building the batch that keeps only some of them.
//!
//! A record is `length varint` then `attributes i8, timestampDelta varlong, offsetDelta
//! varint, keyLength varint, key, valueLength varint, value, headers`. Its offset and timestamp
//! are deltas from the batch's base offset and base timestamp, which a cleaned batch keeps
//! (as do its last offset delta, max timestamp and producer fields), so a kept record's bytes
//! are copied unchanged: nothing but the header's length, count and CRC-32C is re-encoded.

use std::borrow::Cow;
use std::ops::Range;

use super::codec;
use crate::record_batch::varint::{read_zigzag_at, VARINT_MAX_BYTES, VARLONG_MAX_BYTES};
use crate::record_batch::{compute_crc, BatchHeader, Batches, HEADER_LEN};

const BATCH_LENGTH: usize = 8;
const CRC: usize = 17;
const RECORD_COUNT: usize = 57;
/// Bytes of the header after `batch_length` (what `batch_length` counts besides records).
const HEADER_AFTER_LENGTH: usize = HEADER_LEN - 12;

/// Most bytes one batch may decompress to: Kafka's batches are at most `message.max.bytes`
/// compressed, and real payloads compress well under 64:1.
pub const MAX_DECOMPRESSED_BATCH_BYTES: usize = 64 << 20;

/// One record of a batch, as ranges of the batch's uncompressed records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    pub offset_delta: i32,
    /// `None` for a record without a key.
    pub key: Option<Range<usize>>,
    /// False for a tombstone (null value).
    pub has_value: bool,
    /// The whole record, length prefix included.
    pub bytes: Range<usize>,
}

fn read_varint(buf: &[u8], at: &mut usize) -> Result<i32, String> {
    let value = read_zigzag_at(buf, at, VARINT_MAX_BYTES).ok_or("truncated or overlong varint")?;
    i32::try_from(value).map_err(|_| "varint out of range".to_string())
}

/// A length-prefixed field (-1 = null) at `*at`; returns its range.
fn read_bytes_field(
    buf: &[u8],
    at: &mut usize,
    end: usize,
) -> Result<Option<Range<usize>>, String> {
    let len = read_varint(buf, at)?;
    if len < 0 {
        return Ok(None);
    }
    let range = *at..*at + len as usize;
    if range.end > end {
        return Err("field crosses the record's end".into());
    }
    *at = range.end;
    Ok(Some(range))
}

/// The `count` records of `body` (uncompressed records of one batch).
pub fn parse_records(body: &[u8], count: i32) -> Result<Vec<RecordRef>, String> {
    let mut records = Vec::with_capacity(count.clamp(0, 4096) as usize);
    let mut at = 0usize;
    for _ in 0..count.max(0) {
        let start = at;
        let len = read_varint(body, &mut at)?;
        if len < 0 || at + len as usize > body.len() {
            return Err("record length crosses the batch end".into());
        }
        let end = at + len as usize;
        at += 1; // attributes
        read_zigzag_at(body, &mut at, VARLONG_MAX_BYTES).ok_or("truncated or overlong varlong")?; // timestamp delta
        let offset_delta = read_varint(body, &mut at)?;
        let key = read_bytes_field(body, &mut at, end)?;
        let value = read_bytes_field(body, &mut at, end)?;
        records.push(RecordRef {
            offset_delta,
            key,
            has_value: value.is_some(),
            bytes: start..end,
        });
        at = end;
    }
    Ok(records)
}

/// The uncompressed records of `batch` (one whole batch).
pub fn batch_body<'a>(batch: &'a [u8], header: &BatchHeader) -> Result<Cow<'a, [u8]>, String> {
    let records = &batch[HEADER_LEN..];
    match header.compression() {
        codec::CODEC_NONE => Ok(Cow::Borrowed(records)),
        codec => codec::decompress(codec, records, MAX_DECOMPRESSED_BATCH_BYTES).map(Cow::Owned),
    }
}

/// A batch holding the `kept` records of `body`, with `batch`'s header (same base offset,
/// last offset delta, timestamps, producer id/epoch, base sequence, attributes and codec), a
/// new record count and length, and its CRC-32C.
pub fn rebuild_batch(
    batch: &[u8],
    header: &BatchHeader,
    body: &[u8],
    kept: &[&RecordRef],
) -> Result<Vec<u8>, String> {
    let mut records = Vec::with_capacity(kept.iter().map(|r| r.bytes.len()).sum());
    for record in kept {
        records.extend_from_slice(&body[record.bytes.clone()]);
    }
    let records = match header.compression() {
        codec::CODEC_NONE => records,
        codec => codec::compress(codec, &records)?,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + records.len());
    out.extend_from_slice(&batch[..HEADER_LEN]);
    out.extend_from_slice(&records);
    let batch_length = i32::try_from(HEADER_AFTER_LENGTH + records.len())
        .map_err(|_| "rebuilt batch too large".to_string())?;
    out[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
    out[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = compute_crc(&out);
    out[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Produce to a compacted topic: every record needs a key (Kafka's `LogValidator` refuses the
/// whole request with INVALID_RECORD otherwise). `records` holds whole batches already
/// validated; control batches carry no user keys and are skipped.
pub fn check_keys(records: &[u8]) -> Result<(), String> {
    for item in Batches::new(records, usize::MAX) {
        // A malformed batch is the batch validation's to report (CORRUPT_MESSAGE).
        let Ok((header, range)) = item else {
            return Ok(());
        };
        if header.is_control() {
            continue;
        }
        let batch = &records[range];
        let body = batch_body(batch, &header)?;
        for record in parse_records(&body, header.record_count)? {
            if record.key.is_none() {
                return Err(format!(
                    "Compacted topic cannot accept message without key (offset delta {})",
                    record.offset_delta
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record_batch::validate;
    use crate::record_batch::varint::put_zigzag;

    /// A test record: key and value, each possibly null.
    pub(crate) type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

    /// A batch at `base_offset` of records `(key, value)` with one header each, compressed
    /// with `codec`, as a producer would build it.
    pub(crate) fn keyed_batch(base_offset: i64, records: &[KeyValue<'_>], codec: u8) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, (key, value)) in records.iter().enumerate() {
            let mut record = vec![0u8]; // attributes
            put_zigzag(&mut record, i as i64); // timestamp delta
            put_zigzag(&mut record, i as i64); // offset delta
            for field in [key, value] {
                match field {
                    Some(bytes) => {
                        put_zigzag(&mut record, bytes.len() as i64);
                        record.extend_from_slice(bytes);
                    }
                    None => put_zigzag(&mut record, -1),
                }
            }
            put_zigzag(&mut record, 1); // one header
            put_zigzag(&mut record, 1);
            record.push(b'h');
            put_zigzag(&mut record, 1);
            record.push(b'v');
            put_zigzag(&mut body, record.len() as i64);
            body.extend_from_slice(&record);
        }
        let body = codec::compress(codec, &body).unwrap();
        let mut batch = vec![0u8; HEADER_LEN];
        batch[..8].copy_from_slice(&base_offset.to_be_bytes());
        batch[8..12].copy_from_slice(&((HEADER_AFTER_LENGTH + body.len()) as i32).to_be_bytes());
        batch[16] = 2;
        batch[21..23].copy_from_slice(&(codec as i16).to_be_bytes());
        batch[23..27].copy_from_slice(&(records.len() as i32 - 1).to_be_bytes());
        batch[27..35].copy_from_slice(&1_000i64.to_be_bytes());
        batch[35..43].copy_from_slice(&(1_000 + records.len() as i64 - 1).to_be_bytes());
        batch[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        batch[51..53].copy_from_slice(&(-1i16).to_be_bytes());
        batch[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        batch[57..61].copy_from_slice(&(records.len() as i32).to_be_bytes());
        batch.extend_from_slice(&body);
        let crc = compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        batch
    }

    #[test]
    fn a_rebuilt_batch_keeps_offsets_and_drops_records_in_every_codec() {
        for codec in 0..=4u8 {
            let batch = keyed_batch(
                100,
                &[
                    (Some(b"a"), Some(b"1")),
                    (Some(b"b"), None),
                    (Some(b"a"), Some(b"2")),
                ],
                codec,
            );
            let header = validate(&batch, 1 << 20).unwrap();
            let body = batch_body(&batch, &header).unwrap();
            let records = parse_records(&body, header.record_count).unwrap();
            assert_eq!(records.len(), 3);
            assert_eq!(&body[records[1].key.clone().unwrap()], b"b");
            assert!(!records[1].has_value, "tombstone");
            let kept = [&records[1], &records[2]];
            let rebuilt = rebuild_batch(&batch, &header, &body, &kept).unwrap();
            // Valid except the count, which a cleaned batch may have below last delta + 1.
            let parsed = BatchHeader::parse(&rebuilt, 1 << 20).unwrap();
            assert_eq!(parsed.total_len(), rebuilt.len());
            assert_eq!(parsed.crc, compute_crc(&rebuilt));
            assert_eq!(parsed.record_count, 2);
            assert_eq!(parsed.base_offset, 100);
            assert_eq!(parsed.last_offset(), 102);
            assert_eq!(parsed.compression(), codec);
            // What a client decodes: the kept records at their original offsets.
            let mut bytes = bytes::Bytes::from(rebuilt);
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();
            let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![101, 102], "codec {codec}");
            assert_eq!(set.records[1].value.as_deref(), Some(&b"2"[..]));
            assert!(set.records[0].value.is_none());
        }
    }

    #[test]
    fn keyless_records_are_refused_for_compacted_topics() {
        let good = keyed_batch(0, &[(Some(b"k"), Some(b"v"))], codec::CODEC_LZ4);
        assert!(check_keys(&good).is_ok());
        let bad = keyed_batch(0, &[(Some(b"k"), Some(b"v")), (None, Some(b"v"))], 1);
        assert!(check_keys(&bad).unwrap_err().contains("without key"));
    }

    #[test]
    fn garbage_records_are_errors_not_panics() {
        let batch = keyed_batch(0, &[(Some(b"key"), Some(b"value"))], 0);
        let header = validate(&batch, 1 << 20).unwrap();
        let body = &batch[HEADER_LEN..];
        for cut in 0..body.len() {
            let _ = parse_records(&body[..cut], header.record_count);
        }
        let mut flipped = body.to_vec();
        flipped[0] = 0xff;
        assert!(parse_records(&flipped, 1).is_err());
        assert!(parse_records(&[0xff; 12], 1).is_err());
    }
}
