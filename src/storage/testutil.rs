//! Test helpers: RecordBatch v2 builders with chosen timestamps and sizes, and an executor
//! runner. Offsets follow the header layout documented in `record_batch`.

use std::future::Future;

use crate::record_batch::varint::put_zigzag;
use crate::record_batch::{compute_crc, HEADER_LEN, LOG_OVERHEAD, MAGIC_V2};

/// An uncompressed batch with one record per entry of `timestamp_deltas` (relative to
/// `base_timestamp`), each with a `value_bytes`-byte value, from `producer_id`.
pub fn build_batch(
    base_timestamp: i64,
    timestamp_deltas: &[i64],
    value_bytes: usize,
    producer_id: i64,
    base_sequence: i32,
) -> Vec<u8> {
    assert!(!timestamp_deltas.is_empty());
    let mut records = Vec::new();
    for (i, &delta) in timestamp_deltas.iter().enumerate() {
        let mut body = vec![0u8]; // attributes
        put_zigzag(&mut body, delta);
        put_zigzag(&mut body, i as i64);
        put_zigzag(&mut body, -1); // null key
        put_zigzag(&mut body, value_bytes as i64);
        body.extend(std::iter::repeat_n(b'v', value_bytes));
        put_zigzag(&mut body, 0); // no headers
        put_zigzag(&mut records, body.len() as i64);
        records.extend(body);
    }
    let count = timestamp_deltas.len() as i32;
    let max_timestamp = base_timestamp + timestamp_deltas.iter().max().copied().unwrap_or(0);
    let mut b = vec![0u8; HEADER_LEN];
    b.extend(records);
    let len = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[16] = MAGIC_V2;
    b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    b[27..35].copy_from_slice(&base_timestamp.to_be_bytes());
    b[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
    b[43..51].copy_from_slice(&producer_id.to_be_bytes());
    b[51..53].copy_from_slice(&0i16.to_be_bytes());
    b[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    b[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// An uncompressed batch of records at `base_timestamp + deltas`, values of `value_bytes`.
pub fn batch_with_timestamps(
    base_timestamp: i64,
    timestamp_deltas: &[i64],
    value_bytes: usize,
) -> Vec<u8> {
    build_batch(base_timestamp, timestamp_deltas, value_bytes, -1, -1)
}

/// `count` records with timestamp `timestamp` and `value_bytes`-byte values.
pub fn batch(count: usize, value_bytes: usize, timestamp: i64) -> Vec<u8> {
    batch_with_timestamps(timestamp, &vec![0; count], value_bytes)
}

/// Runs `body` on a fresh glommio executor thread, as the shard would.
pub fn run<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async move { body().await })
        .unwrap()
        .join()
        .unwrap();
}
