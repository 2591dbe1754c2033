//! Hand-written encoders for the hot path: RecordBatch v2 and the Produce request around it.
//!
//! Everything else (metadata, fetch, admin requests) goes through the `kafka-protocol` crate's
//! generated types. The Produce request is the exception because the generated type owns its
//! record bytes (`Option<Bytes>` per partition): building batches elsewhere and copying them into
//! the request would cost one more pass over every payload byte. Here the batch is encoded in
//! place, inside the request buffer, so each payload byte is copied exactly once by the harness
//! (template -> request buffer) and once by the kernel (request buffer -> socket).
//!
//! RecordBatch v2 layout (Kafka's `DefaultRecordBatch`):
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
//!     61     …  records (compressed as a whole when the codec is not none)
//! ```

use anyhow::{bail, Result};
use bytes::{BufMut, Bytes, BytesMut};

/// Length of the fixed RecordBatch v2 header.
pub const BATCH_HEADER_LEN: usize = 61;
/// base_offset + batch_length: the bytes not counted by `batch_length`.
pub const LOG_OVERHEAD: usize = 12;
const CRC_OFFSET: usize = 17;
const CRC_START: usize = 21;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const BASE_TIMESTAMP_OFFSET: usize = 27;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const RECORD_COUNT_OFFSET: usize = 57;
const CONTROL_FLAG: i16 = 1 << 5;

/// Kafka's compression codecs, numbered as in the batch attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    pub fn attribute(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }

    pub fn from_attributes(attributes: i16) -> Result<Codec> {
        Ok(match attributes & 0x7 {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            other => bail!("unknown compression codec {other}"),
        })
    }

    /// Fails early, before any connection is made, when this build lacks the codec.
    pub fn check_available(self) -> Result<()> {
        let available = match self {
            Codec::None => true,
            Codec::Gzip => cfg!(feature = "gzip"),
            Codec::Snappy => cfg!(feature = "snappy"),
            Codec::Lz4 => cfg!(feature = "lz4"),
            Codec::Zstd => cfg!(feature = "zstd"),
        };
        if !available {
            bail!("this build of bench-harness has no {self:?} support (cargo feature off)");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Varints. Record fields use zigzag varints; flexible request versions use unsigned varints.

pub fn uvarint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub fn put_uvarint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn varint_len(v: i64) -> usize {
    uvarint_len(zigzag(v))
}

pub fn put_varint(buf: &mut BytesMut, v: i64) {
    put_uvarint(buf, zigzag(v))
}

/// Reads an unsigned varint at `*pos`, advancing it. `None` when truncated or longer than 10 bytes.
pub fn get_uvarint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *data.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

pub fn get_varint(data: &[u8], pos: &mut usize) -> Option<i64> {
    let v = get_uvarint(data, pos)?;
    Some(((v >> 1) as i64) ^ -((v & 1) as i64))
}

// ---------------------------------------------------------------------------------------------
// Records and batches.

/// Bytes a [`RecordSpec`] may overwrite at the start of its value.
pub const STAMP_LEN: usize = 16;

/// One record to encode. The value is `body`, with its first 16 bytes replaced by `stamp` if
/// given, so a precomputed payload carries a per-record send timestamp without a second copy.
#[derive(Clone, Copy, Debug)]
pub struct RecordSpec<'a> {
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub body: &'a [u8],
    pub stamp: Option<[u8; STAMP_LEN]>,
}

impl RecordSpec<'_> {
    fn body_len(&self, timestamp_delta: i64, offset_delta: i64) -> usize {
        let key_len = match self.key {
            Some(k) => varint_len(k.len() as i64) + k.len(),
            None => 1,
        };
        1 + varint_len(timestamp_delta)
            + varint_len(offset_delta)
            + key_len
            + varint_len(self.body.len() as i64)
            + self.body.len()
            + 1
    }

    /// Upper bound of this record's encoded size, for batch-size accounting before encoding.
    pub fn size_estimate(key_len: Option<usize>, value_len: usize) -> usize {
        // length varint (<=5) + attributes + ts delta (<=5 in practice) + offset delta (<=5)
        // + key + value + headers count
        5 + 1 + 5 + 5 + key_len.map_or(1, |k| 5 + k) + 5 + value_len + 1
    }
}

fn put_record(buf: &mut BytesMut, rec: &RecordSpec<'_>, timestamp_delta: i64, offset_delta: i64) {
    debug_assert!(rec.stamp.is_none() || rec.body.len() >= STAMP_LEN);
    put_varint(buf, rec.body_len(timestamp_delta, offset_delta) as i64);
    buf.put_u8(0); // record attributes: unused
    put_varint(buf, timestamp_delta);
    put_varint(buf, offset_delta);
    match rec.key {
        Some(k) => {
            put_varint(buf, k.len() as i64);
            buf.put_slice(k);
        }
        None => put_varint(buf, -1),
    }
    put_varint(buf, rec.body.len() as i64);
    match &rec.stamp {
        Some(stamp) => {
            buf.put_slice(stamp);
            buf.put_slice(&rec.body[STAMP_LEN..]);
        }
        None => buf.put_slice(rec.body),
    }
    put_varint(buf, 0); // headers
}

/// What an encoded batch holds, for accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodedBatch {
    pub records: usize,
    pub bytes: usize,
}

/// Appends one RecordBatch v2 with `records` to `buf` (base offset 0, no producer id, so no
/// idempotence). `scratch` holds the uncompressed records when a codec is used.
pub fn encode_batch<'a>(
    buf: &mut BytesMut,
    scratch: &mut BytesMut,
    codec: Codec,
    base_timestamp_ms: i64,
    records: impl IntoIterator<Item = RecordSpec<'a>>,
) -> Result<EncodedBatch> {
    let start = buf.len();
    buf.put_i64(0); // base_offset: assigned by the leader
    buf.put_i32(0); // batch_length: patched below
    buf.put_i32(-1); // partition_leader_epoch
    buf.put_u8(2); // magic
    buf.put_u32(0); // crc: patched below
    buf.put_i16(codec.attribute()); // CreateTime, not transactional, not control
    buf.put_i32(0); // last_offset_delta: patched below
    buf.put_i64(base_timestamp_ms);
    buf.put_i64(base_timestamp_ms); // max_timestamp: patched below
    buf.put_i64(-1); // producer_id
    buf.put_i16(-1); // producer_epoch
    buf.put_i32(-1); // base_sequence
    buf.put_i32(0); // record_count: patched below

    let mut count: i64 = 0;
    let mut max_ts = base_timestamp_ms;
    {
        let out: &mut BytesMut = if codec == Codec::None {
            buf
        } else {
            scratch.clear();
            scratch
        };
        for rec in records {
            let delta = rec.timestamp_ms - base_timestamp_ms;
            max_ts = max_ts.max(rec.timestamp_ms);
            put_record(out, &rec, delta, count);
            count += 1;
        }
    }
    if count == 0 {
        bail!("a record batch needs at least one record");
    }
    if codec != Codec::None {
        compress_into(buf, scratch, codec)?;
    }

    let end = buf.len();
    let batch = &mut buf[start..end];
    batch[8..12].copy_from_slice(&((end - start - LOG_OVERHEAD) as i32).to_be_bytes());
    batch[LAST_OFFSET_DELTA_OFFSET..LAST_OFFSET_DELTA_OFFSET + 4]
        .copy_from_slice(&((count - 1) as i32).to_be_bytes());
    batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&max_ts.to_be_bytes());
    batch[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4]
        .copy_from_slice(&(count as i32).to_be_bytes());
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &batch[CRC_START..]) as u32;
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(EncodedBatch {
        records: count as usize,
        bytes: end - start,
    })
}

#[allow(unused_variables)]
fn compress_into(buf: &mut BytesMut, raw: &BytesMut, codec: Codec) -> Result<()> {
    #[allow(unused_imports)]
    use kafka_protocol::compression::Compressor;
    let fill = |tmp: &mut BytesMut| -> Result<()> {
        tmp.put_slice(raw);
        Ok(())
    };
    match codec {
        Codec::None => buf.put_slice(raw),
        #[cfg(feature = "gzip")]
        Codec::Gzip => kafka_protocol::compression::Gzip::compress(buf, fill)?,
        #[cfg(feature = "snappy")]
        Codec::Snappy => kafka_protocol::compression::Snappy::compress(buf, fill)?,
        #[cfg(feature = "lz4")]
        Codec::Lz4 => kafka_protocol::compression::Lz4::compress(buf, fill)?,
        #[cfg(feature = "zstd")]
        Codec::Zstd => kafka_protocol::compression::Zstd::compress(buf, fill)?,
        #[allow(unreachable_patterns)]
        other => bail!("{other:?} compression is not compiled in"),
    }
    Ok(())
}

#[allow(unused_variables)]
fn decompress(data: &[u8], codec: Codec) -> Result<Bytes> {
    #[allow(unused_imports)]
    use kafka_protocol::compression::Decompressor;
    let mut src = Bytes::copy_from_slice(data);
    let take = |b: &mut Bytes| -> Result<Bytes> { Ok(std::mem::take(b)) };
    Ok(match codec {
        Codec::None => src,
        #[cfg(feature = "gzip")]
        Codec::Gzip => kafka_protocol::compression::Gzip::decompress(&mut src, take)?,
        #[cfg(feature = "snappy")]
        Codec::Snappy => kafka_protocol::compression::Snappy::decompress(&mut src, take)?,
        #[cfg(feature = "lz4")]
        Codec::Lz4 => kafka_protocol::compression::Lz4::decompress(&mut src, take)?,
        #[cfg(feature = "zstd")]
        Codec::Zstd => kafka_protocol::compression::Zstd::decompress(&mut src, take)?,
        #[allow(unreachable_patterns)]
        other => bail!("{other:?} compression is not compiled in"),
    })
}

/// The header fields a consumer needs, read without touching the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Whole batch, including the 12 bytes `batch_length` does not count.
    pub total_len: usize,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub record_count: i32,
}

impl BatchHeader {
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_FLAG != 0
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// Iterates over the complete batches of a fetched `records` field. A fetch response may end in
/// a partial batch (the broker cuts at `partition_max_bytes`); iteration stops before it. Stops
/// too at a batch that is not magic 2 or has an impossible length.
pub struct Batches<'a> {
    data: &'a [u8],
}

pub fn batches(data: &[u8]) -> Batches<'_> {
    Batches { data }
}

impl<'a> Iterator for Batches<'a> {
    type Item = (BatchHeader, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let d = self.data;
        if d.len() < BATCH_HEADER_LEN {
            return None;
        }
        let batch_length = be_i32(d, 8);
        if batch_length < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 || d[16] != 2 {
            return None;
        }
        let total_len = batch_length as usize + LOG_OVERHEAD;
        if d.len() < total_len {
            return None;
        }
        let header = BatchHeader {
            base_offset: be_i64(d, 0),
            total_len,
            attributes: be_i16(d, ATTRIBUTES_OFFSET),
            last_offset_delta: be_i32(d, LAST_OFFSET_DELTA_OFFSET),
            base_timestamp: be_i64(d, BASE_TIMESTAMP_OFFSET),
            record_count: be_i32(d, RECORD_COUNT_OFFSET),
        };
        let (batch, rest) = d.split_at(total_len);
        self.data = rest;
        Some((header, batch))
    }
}

/// Calls `f(offset, value)` for each record of one batch, decompressing if needed. Used only where
/// values matter (end-to-end latency); throughput consumers count from the header alone.
pub fn for_each_value(
    header: &BatchHeader,
    batch: &[u8],
    mut f: impl FnMut(i64, Option<&[u8]>),
) -> Result<()> {
    let codec = Codec::from_attributes(header.attributes)?;
    let owned;
    let records: &[u8] = if codec == Codec::None {
        &batch[BATCH_HEADER_LEN..]
    } else {
        owned = decompress(&batch[BATCH_HEADER_LEN..], codec)?;
        &owned
    };
    let mut pos = 0usize;
    for _ in 0..header.record_count.max(0) {
        let truncated = || anyhow::anyhow!("truncated record");
        let len = get_varint(records, &mut pos).ok_or_else(truncated)?;
        let end = pos + usize::try_from(len)?;
        if end > records.len() {
            bail!("record overruns its batch");
        }
        pos += 1; // attributes
        get_varint(records, &mut pos).ok_or_else(truncated)?; // timestamp delta
        let offset_delta = get_varint(records, &mut pos).ok_or_else(truncated)?;
        let key_len = get_varint(records, &mut pos).ok_or_else(truncated)?;
        if key_len > 0 {
            pos += key_len as usize;
        }
        let value_len = get_varint(records, &mut pos).ok_or_else(truncated)?;
        let value = if value_len >= 0 {
            let v_end = pos + value_len as usize;
            if v_end > end {
                bail!("record value overruns its record");
            }
            Some(&records[pos..v_end])
        } else {
            None
        };
        f(header.base_offset + offset_delta, value);
        pos = end;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Produce request framing (versions 3..=12: topic names, not ids).

/// Lowest Produce version that carries RecordBatch v2.
pub const PRODUCE_MIN_VERSION: i16 = 3;
/// Highest Produce version that addresses topics by name (v13 switched to topic ids).
pub const PRODUCE_MAX_VERSION: i16 = 12;

fn flexible_produce(version: i16) -> bool {
    version >= 9
}

fn put_string(buf: &mut BytesMut, s: &str, flexible: bool) {
    if flexible {
        put_uvarint(buf, s.len() as u64 + 1);
    } else {
        buf.put_i16(s.len() as i16);
    }
    buf.put_slice(s.as_bytes());
}

/// Writes a Produce request directly into a reusable buffer: size prefix, header, body, and the
/// record batches in place. Usage: `begin`, then per partition `begin_partition` + encode the batch
/// + `end_partition`, then `finish`. The request holds one topic.
pub struct ProduceWriter {
    flexible: bool,
    partitions_declared: usize,
    partitions: usize,
}

/// Where a partition's `records` length field sits, and how wide it was reserved.
pub struct PartitionMark {
    len_pos: usize,
    len_width: usize,
    pub batch_start: usize,
}

impl ProduceWriter {
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        buf: &mut BytesMut,
        version: i16,
        correlation_id: i32,
        client_id: &str,
        acks: i16,
        timeout_ms: i32,
        topic: &str,
        partitions: usize,
    ) -> ProduceWriter {
        assert!((PRODUCE_MIN_VERSION..=PRODUCE_MAX_VERSION).contains(&version));
        let flexible = flexible_produce(version);
        buf.clear();
        buf.put_i32(0); // size: patched by finish
        buf.put_i16(0); // api key: Produce
        buf.put_i16(version);
        buf.put_i32(correlation_id);
        // Request header v1/v2: client_id is a (non-compact) nullable string in both.
        buf.put_i16(client_id.len() as i16);
        buf.put_slice(client_id.as_bytes());
        if flexible {
            buf.put_u8(0); // header tagged fields
            buf.put_u8(0); // transactional_id: null compact string
        } else {
            buf.put_i16(-1); // transactional_id: null
        }
        buf.put_i16(acks);
        buf.put_i32(timeout_ms);
        if flexible {
            put_uvarint(buf, 2); // one topic (compact array: n + 1)
        } else {
            buf.put_i32(1);
        }
        put_string(buf, topic, flexible);
        if flexible {
            put_uvarint(buf, partitions as u64 + 1);
        } else {
            buf.put_i32(partitions as i32);
        }
        ProduceWriter {
            flexible,
            partitions_declared: partitions,
            partitions: 0,
        }
    }

    /// Starts a partition entry; `estimated_len` sizes the compact length field.
    pub fn begin_partition(
        &mut self,
        buf: &mut BytesMut,
        partition: i32,
        estimated_len: usize,
    ) -> PartitionMark {
        self.partitions += 1;
        buf.put_i32(partition);
        let len_pos = buf.len();
        let len_width = if self.flexible {
            uvarint_len(estimated_len as u64 + 1)
        } else {
            4
        };
        buf.put_bytes(0, len_width);
        PartitionMark {
            len_pos,
            len_width,
            batch_start: buf.len(),
        }
    }

    /// Writes the `records` length; returns where the batch now starts and ends (it moves if the
    /// compact length needed a different width than estimated).
    pub fn end_partition(&mut self, buf: &mut BytesMut, mark: PartitionMark) -> (usize, usize) {
        let len = buf.len() - mark.batch_start;
        let mut batch_start = mark.batch_start;
        if self.flexible {
            let need = uvarint_len(len as u64 + 1);
            if need != mark.len_width {
                shift_tail(
                    buf,
                    mark.batch_start,
                    need as isize - mark.len_width as isize,
                );
                batch_start = mark.len_pos + need;
            }
            let mut tmp = BytesMut::with_capacity(5);
            put_uvarint(&mut tmp, len as u64 + 1);
            buf[mark.len_pos..mark.len_pos + need].copy_from_slice(&tmp);
        } else {
            buf[mark.len_pos..mark.len_pos + 4].copy_from_slice(&(len as i32).to_be_bytes());
        }
        let batch_end = batch_start + len;
        if self.flexible {
            buf.put_u8(0); // partition tagged fields
        }
        (batch_start, batch_end)
    }

    /// Closes the request and writes its size prefix.
    pub fn finish(self, buf: &mut BytesMut) {
        assert_eq!(
            self.partitions, self.partitions_declared,
            "partition count declared in begin() must match the partitions written"
        );
        if self.flexible {
            buf.put_u8(0); // topic tagged fields
            buf.put_u8(0); // body tagged fields
        }
        let size = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&size.to_be_bytes());
    }
}

/// Moves `buf[from..]` by `delta` bytes (growing or shrinking the buffer).
fn shift_tail(buf: &mut BytesMut, from: usize, delta: isize) {
    let old_len = buf.len();
    if delta > 0 {
        buf.put_bytes(0, delta as usize);
        buf.copy_within(from..old_len, from + delta as usize);
    } else if delta < 0 {
        let d = (-delta) as usize;
        buf.copy_within(from..old_len, from - d);
        buf.truncate(old_len - d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ProduceRequest;
    use kafka_protocol::protocol::Decodable;
    use kafka_protocol::records::RecordBatchDecoder;

    fn specs<'a>(body: &'a [u8], stamp: [u8; 16], keys: &'a [Vec<u8>]) -> Vec<RecordSpec<'a>> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| RecordSpec {
                timestamp_ms: 1_700_000_000_000 + i as i64 * 3,
                key: if i % 3 == 0 { None } else { Some(k.as_slice()) },
                body,
                stamp: Some(stamp),
            })
            .collect()
    }

    fn roundtrip(codec: Codec) {
        let body: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let stamp = [0xAB; 16];
        let keys: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1 + i as usize % 9]).collect();
        let recs = specs(&body, stamp, &keys);
        let mut buf = BytesMut::new();
        let mut scratch = BytesMut::new();
        let info = encode_batch(
            &mut buf,
            &mut scratch,
            codec,
            1_700_000_000_000,
            recs.clone(),
        )
        .unwrap();
        assert_eq!(info.records, 50);
        assert_eq!(info.bytes, buf.len());

        let mut bytes = buf.clone().freeze();
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap(); // checks the CRC too
        assert_eq!(set.records.len(), 50);
        for (i, (got, want)) in set.records.iter().zip(&recs).enumerate() {
            assert_eq!(got.offset, i as i64);
            assert_eq!(got.timestamp, want.timestamp_ms);
            assert_eq!(got.key.as_deref(), want.key);
            let v = got.value.as_ref().unwrap();
            assert_eq!(&v[..16], &stamp);
            assert_eq!(&v[16..], &body[16..]);
        }

        // Our own header view and value walker agree.
        let (h, b) = batches(&buf).next().unwrap();
        assert_eq!(h.record_count, 50);
        assert_eq!(h.last_offset_delta, 49);
        assert_eq!(h.total_len, buf.len());
        let mut n = 0;
        for_each_value(&h, b, |off, v| {
            assert_eq!(off, n);
            assert_eq!(&v.unwrap()[..16], &stamp);
            n += 1;
        })
        .unwrap();
        assert_eq!(n, 50);
    }

    #[test]
    fn batch_roundtrip_uncompressed() {
        roundtrip(Codec::None);
    }

    #[cfg(feature = "gzip")]
    #[test]
    fn batch_roundtrip_gzip() {
        roundtrip(Codec::Gzip);
    }

    #[cfg(feature = "snappy")]
    #[test]
    fn batch_roundtrip_snappy() {
        roundtrip(Codec::Snappy);
    }

    #[cfg(feature = "lz4")]
    #[test]
    fn batch_roundtrip_lz4() {
        roundtrip(Codec::Lz4);
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn batch_roundtrip_zstd() {
        roundtrip(Codec::Zstd);
    }

    #[test]
    fn partial_trailing_batch_is_not_yielded() {
        let body = [1u8; 100];
        let mut buf = BytesMut::new();
        let mut scratch = BytesMut::new();
        for _ in 0..3 {
            let rec = RecordSpec {
                timestamp_ms: 5,
                key: None,
                body: &body,
                stamp: None,
            };
            encode_batch(&mut buf, &mut scratch, Codec::None, 5, [rec, rec]).unwrap();
        }
        let cut = buf.len() - 10;
        assert_eq!(batches(&buf[..cut]).count(), 2);
        assert_eq!(batches(&buf).count(), 3);
    }

    #[test]
    fn varints() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i32::MAX as i64,
            i64::MIN,
            i64::MAX,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            let mut pos = 0;
            assert_eq!(get_varint(&b, &mut pos), Some(v));
            assert_eq!(pos, b.len());
        }
    }

    /// The hand-built Produce request decodes with kafka-protocol's generated decoder, in both
    /// the classic and the flexible encodings, including compact lengths that needed a shift.
    #[test]
    fn produce_request_decodes() {
        let body = vec![9u8; 300];
        for version in [3i16, 7, 8, 9, 11, 12] {
            let mut buf = BytesMut::new();
            let mut scratch = BytesMut::new();
            let mut w = ProduceWriter::begin(&mut buf, version, 42, "bench", -1, 30_000, "t", 3);
            let mut expected = Vec::new();
            for p in 0..3 {
                // Deliberately wrong estimates, to exercise the shifting path.
                let estimate = if p == 1 { 10 } else { 100_000 };
                let mark = w.begin_partition(&mut buf, p, estimate);
                let n = (p as usize + 1) * 2;
                let rec = RecordSpec {
                    timestamp_ms: 1,
                    key: None,
                    body: &body,
                    stamp: None,
                };
                encode_batch(
                    &mut buf,
                    &mut scratch,
                    Codec::None,
                    1,
                    std::iter::repeat_n(rec, n),
                )
                .unwrap();
                let (start, end) = w.end_partition(&mut buf, mark);
                let (h, b) = batches(&buf[start..]).next().unwrap();
                assert_eq!(b.len(), end - start);
                assert_eq!(h.record_count as usize, n);
                expected.push(n);
            }
            w.finish(&mut buf);
            let size = i32::from_be_bytes(buf[0..4].try_into().unwrap()) as usize;
            assert_eq!(size, buf.len() - 4);

            let mut frame = buf.clone().freeze().slice(4..);
            let header =
                kafka_protocol::protocol::decode_request_header_from_buffer(&mut frame).unwrap();
            assert_eq!(header.request_api_key, 0);
            assert_eq!(header.request_api_version, version);
            assert_eq!(header.correlation_id, 42);
            let req = ProduceRequest::decode(&mut frame, version).unwrap();
            assert!(frame.is_empty(), "v{version}: trailing bytes");
            assert_eq!(req.acks, -1);
            assert_eq!(req.topic_data.len(), 1);
            assert_eq!(req.topic_data[0].name.0.as_str(), "t");
            let parts = &req.topic_data[0].partition_data;
            assert_eq!(parts.len(), 3);
            for (p, n) in parts.iter().zip(expected) {
                let mut records = p.records.clone().unwrap();
                let set = RecordBatchDecoder::decode(&mut records).unwrap();
                assert_eq!(set.records.len(), n);
            }
        }
    }
}
