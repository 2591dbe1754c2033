//! The offsets log's records, in Kafka's `__consumer_offsets` layout so the bytes are familiar
//! to anyone who has dumped that topic: offset keys v1 (`version, group, topic, partition`),
//! offset values v3 (`version, offset, leader_epoch, metadata, commit_timestamp`), group keys
//! v2 (`version, group`) and group values v3 (members always empty: members are not restored
//! after a restart, they rejoin). A null value is a tombstone (offset or group deleted), which
//! is what compaction will key on once it exists.
//!
//! Records travel in ordinary uncompressed RecordBatch v2 batches, so an offsets partition is a
//! normal `PartitionLog` and every storage guarantee (CRC, recovery, group commit) applies.

use bytes::{BufMut, Bytes, BytesMut};

use crate::record_batch::varint::put_zigzag;
use crate::record_batch::{self, Batches};

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;
/// RecordBatch v2 fixed header length.
const BATCH_HEADER_BYTES: usize = 61;
/// RecordBatch v2 attributes bit of a transaction's batch.
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<OffsetValue>,
    },
    Group {
        group: String,
        value: Option<GroupValue>,
    },
}

fn put_str(buf: &mut BytesMut, s: &str) {
    debug_assert!(
        s.len() <= i16::MAX as usize,
        "bounded by the request checks"
    );
    buf.put_i16(s.len() as i16);
    buf.put_slice(s.as_bytes());
}

fn put_nullable_str(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(buf, s),
        None => buf.put_i16(-1),
    }
}

impl OffsetsRecord {
    fn key(&self) -> BytesMut {
        let mut key = BytesMut::new();
        match self {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                ..
            } => {
                key.put_i16(OFFSET_KEY_VERSION);
                put_str(&mut key, group);
                put_str(&mut key, topic);
                key.put_i32(*partition);
            }
            OffsetsRecord::Group { group, .. } => {
                key.put_i16(GROUP_KEY_VERSION);
                put_str(&mut key, group);
            }
        }
        key
    }

    fn value(&self) -> Option<BytesMut> {
        let mut out = BytesMut::new();
        match self {
            OffsetsRecord::Offset { value: None, .. }
            | OffsetsRecord::Group { value: None, .. } => return None,
            OffsetsRecord::Offset { value: Some(v), .. } => {
                out.put_i16(OFFSET_VALUE_VERSION);
                out.put_i64(v.offset);
                out.put_i32(v.leader_epoch);
                put_str(&mut out, &v.metadata);
                out.put_i64(v.commit_timestamp_ms);
            }
            OffsetsRecord::Group { value: Some(v), .. } => {
                out.put_i16(GROUP_VALUE_VERSION);
                put_str(&mut out, &v.protocol_type);
                out.put_i32(v.generation);
                put_nullable_str(&mut out, v.protocol.as_deref());
                put_nullable_str(&mut out, v.leader.as_deref());
                out.put_i64(v.state_timestamp_ms);
                out.put_i32(0); // members
            }
        }
        Some(out)
    }
}

/// What one batch of an offsets log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsBatch {
    /// Plain records (OffsetCommit, group metadata): in effect at once.
    Records(Vec<OffsetsRecord>),
    /// Offsets a transaction committed (TxnOffsetCommit): pending until the producer's
    /// commit marker makes them the group's, dropped at its abort marker.
    Transactional {
        producer_id: i64,
        records: Vec<OffsetsRecord>,
    },
    /// A transaction marker the transaction coordinator wrote (WriteTxnMarkers).
    Marker { producer_id: i64, committed: bool },
}

/// The producer of a transactional batch: id and epoch (Kafka writes TxnOffsetCommit's
/// offsets with them, and the transactional attribute, so markers apply to them).
pub type TxnProducer = (i64, i16);

/// Encodes `records` (at least one) as one uncompressed RecordBatch v2 with base offset 0
/// (the log assigns the real one) and a valid CRC-32C; transactional when `producer` is
/// given.
pub fn encode_batch(
    records: &[OffsetsRecord],
    timestamp_ms: i64,
    producer: Option<TxnProducer>,
) -> Bytes {
    assert!(!records.is_empty(), "an empty batch is not a batch");
    let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + 64 * records.len());
    buf.put_bytes(0, BATCH_HEADER_BYTES);
    let mut body = BytesMut::new();
    for (delta, record) in records.iter().enumerate() {
        body.clear();
        body.put_i8(0); // attributes
        put_zigzag(&mut body, 0); // timestamp delta
        put_zigzag(&mut body, delta as i64);
        let key = record.key();
        put_zigzag(&mut body, key.len() as i64);
        body.put_slice(&key);
        match record.value() {
            Some(value) => {
                put_zigzag(&mut body, value.len() as i64);
                body.put_slice(&value);
            }
            None => put_zigzag(&mut body, -1),
        }
        put_zigzag(&mut body, 0); // headers
        put_zigzag(&mut buf, body.len() as i64);
        buf.put_slice(&body);
    }
    let count = records.len() as i32;
    let batch_length = (buf.len() - 12) as i32;
    // base offset 0, batch length, leader epoch 0, magic 2, crc (below), attributes 0
    buf[8..12].copy_from_slice(&batch_length.to_be_bytes());
    buf[16] = 2;
    buf[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    buf[27..35].copy_from_slice(&timestamp_ms.to_be_bytes());
    buf[35..43].copy_from_slice(&timestamp_ms.to_be_bytes());
    let (producer_id, producer_epoch) = producer.unwrap_or((-1, -1));
    if producer.is_some() {
        buf[21..23].copy_from_slice(&ATTRIBUTE_TRANSACTIONAL.to_be_bytes());
    }
    buf[43..51].copy_from_slice(&producer_id.to_be_bytes());
    buf[51..53].copy_from_slice(&producer_epoch.to_be_bytes());
    buf[53..57].copy_from_slice(&(-1i32).to_be_bytes()); // base sequence
    buf[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = record_batch::compute_crc(&buf);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    buf.freeze()
}

/// A bounds-checked reader: every read of disk bytes goes through it, so a corrupt record is
/// an error, never a panic or an oversized allocation.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Decoded<T> = Result<T, String>;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Decoded<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("truncated at {} (+{n})", self.pos))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn i16(&mut self) -> Decoded<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn i32(&mut self) -> Decoded<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn i64(&mut self) -> Decoded<i64> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn nullable_str(&mut self) -> Decoded<Option<String>> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| "string is not UTF-8".to_string())
    }
    fn str(&mut self) -> Decoded<String> {
        self.nullable_str()?
            .ok_or_else(|| "null where a string is required".to_string())
    }
    fn varint(&mut self) -> Decoded<i64> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = self.take(1)?[0];
            value |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err("varint longer than 10 bytes".into())
    }
    /// A varint length; -1 means null.
    fn varbytes(&mut self) -> Decoded<Option<&'a [u8]>> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| "length overflow".to_string())?;
        self.take(len).map(Some)
    }
}

fn decode_record(key: &[u8], value: Option<&[u8]>) -> Decoded<Option<OffsetsRecord>> {
    let mut k = Reader { buf: key, pos: 0 };
    match k.i16()? {
        0 | 1 => {
            let (group, topic, partition) = (k.str()?, k.str()?, k.i32()?);
            let value = match value {
                None => None,
                Some(v) => {
                    let mut r = Reader { buf: v, pos: 0 };
                    let version = r.i16()?;
                    if !(1..=3).contains(&version) {
                        return Err(format!("offset value version {version}"));
                    }
                    let offset = r.i64()?;
                    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
                    let metadata = r.str()?;
                    let commit_timestamp_ms = r.i64()?;
                    Some(OffsetValue {
                        offset,
                        leader_epoch,
                        metadata,
                        commit_timestamp_ms,
                    })
                }
            };
            Ok(Some(OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            }))
        }
        2 => {
            let group = k.str()?;
            let value = match value {
                None => None,
                Some(v) => {
                    let mut r = Reader { buf: v, pos: 0 };
                    let version = r.i16()?;
                    if version != GROUP_VALUE_VERSION {
                        return Err(format!("group value version {version}"));
                    }
                    Some(GroupValue {
                        protocol_type: r.str()?,
                        generation: r.i32()?,
                        protocol: r.nullable_str()?,
                        leader: r.nullable_str()?,
                        state_timestamp_ms: r.i64()?,
                    })
                }
            };
            Ok(Some(OffsetsRecord::Group { group, value }))
        }
        // Unknown key versions (written by a newer broker) are skipped, not fatal.
        _ => Ok(None),
    }
}

/// Decodes every batch in `buf` (whole uncompressed batches back to back, as read from a
/// segment). Stops with an error at the first batch it cannot read.
pub fn decode_batches(buf: &[u8], max_batch_bytes: usize) -> Decoded<Vec<OffsetsBatch>> {
    let mut batches = Vec::new();
    for item in Batches::new(buf, max_batch_bytes) {
        let (header, range) = item.map_err(|(at, e)| format!("batch at {at}: {e}"))?;
        if header.is_control() {
            let committed = crate::record_batch::control::marker_committed(&buf[range])
                .ok_or_else(|| "unreadable transaction marker".to_string())?;
            batches.push(OffsetsBatch::Marker {
                producer_id: header.producer_id,
                committed,
            });
            continue;
        }
        if header.compression() != 0 {
            return Err("compressed offsets batch".into());
        }
        let mut r = Reader {
            buf: &buf[range],
            pos: BATCH_HEADER_BYTES,
        };
        let mut out = Vec::new();
        for _ in 0..header.record_count {
            let body = r.varbytes()?.ok_or_else(|| "null record".to_string())?;
            let mut rec = Reader { buf: body, pos: 0 };
            rec.take(1)?; // attributes
            rec.varint()?; // timestamp delta
            rec.varint()?; // offset delta
            let key = rec
                .varbytes()?
                .ok_or_else(|| "record without a key".to_string())?;
            let value = rec.varbytes()?;
            if let Some(record) = decode_record(key, value)? {
                out.push(record);
            }
        }
        batches.push(if header.is_transactional() {
            OffsetsBatch::Transactional {
                producer_id: header.producer_id,
                records: out,
            }
        } else {
            OffsetsBatch::Records(out)
        });
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_valid_batch() {
        let records = vec![
            OffsetsRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3,
                value: Some(OffsetValue {
                    offset: 42,
                    leader_epoch: 1,
                    metadata: "m".into(),
                    commit_timestamp_ms: 7,
                }),
            },
            OffsetsRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 4,
                value: None,
            },
            OffsetsRecord::Group {
                group: "g".into(),
                value: Some(GroupValue {
                    protocol_type: "consumer".into(),
                    generation: 5,
                    protocol: Some("range".into()),
                    leader: None,
                    state_timestamp_ms: 9,
                }),
            },
            OffsetsRecord::Group {
                group: "h".into(),
                value: None,
            },
        ];
        let batch = encode_batch(&records, 1000, None);
        let header = record_batch::validate(&batch, 1 << 20).expect("valid batch");
        assert_eq!(header.record_count, 4);
        let transactional = encode_batch(&records[..1], 1000, Some((7, 2)));
        let header = record_batch::validate(&transactional, 1 << 20).expect("valid batch");
        assert!(header.is_transactional() && !header.is_control());
        assert_eq!((header.producer_id, header.producer_epoch), (7, 2));
        let marker = crate::record_batch::control::encode_marker(7, 2, true, 0, 1000);
        let mut all = batch.to_vec();
        all.extend_from_slice(&transactional);
        all.extend_from_slice(&marker);
        let decoded = decode_batches(&all, 1 << 20).unwrap();
        assert_eq!(
            decoded,
            vec![
                OffsetsBatch::Records(records.clone()),
                OffsetsBatch::Transactional {
                    producer_id: 7,
                    records: records[..1].to_vec()
                },
                OffsetsBatch::Marker {
                    producer_id: 7,
                    committed: true
                },
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let batch = encode_batch(
            &[OffsetsRecord::Group {
                group: "g".into(),
                value: None,
            }],
            0,
            None,
        );
        for cut in 0..batch.len() {
            let _ = decode_batches(&batch[..cut], 1 << 20);
        }
        let mut bad = batch.to_vec();
        bad[62] = 0xff;
        let _ = decode_batches(&bad, 1 << 20);
    }
}
