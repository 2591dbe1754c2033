//! Fetch response encoding with record bytes left in the segment files.
//!
//! The crate's `FetchResponse` wants records as in-memory `Bytes`; encoding it would mean
//! reading every fetched byte into memory first. Instead this encoder writes the fields around
//! the records into memory chunks and leaves each partition's records as a [`Chunk::File`]
//! range, which the connection sends with sendfile. Records served from a tail cache are
//! already in memory: they become [`Chunk::Mem`] pieces (the cached `Bytes`, not copies).
//! Versions 4 to 12 (12 is flexible).

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::ApiKey;

use super::{begin_response, Chunk, ResponseFrame};
use crate::shard::producer_state::AbortedTxn;
use crate::storage::Records;

/// One partition of a fetch response.
pub struct FetchedPartition {
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub records: Option<Records>,
    /// read_committed: the aborted transactions the records overlap.
    pub aborted: Vec<AbortedTxn>,
}

/// One topic of a fetch response.
pub struct FetchedTopic {
    /// Named in responses up to v12.
    pub name: String,
    /// Named by id from v13 (topic ids, KIP-516).
    pub id: uuid::Uuid,
    pub partitions: Vec<FetchedPartition>,
}

fn put_unsigned_varint(buf: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn put_array_len(buf: &mut BytesMut, flexible: bool, len: usize) {
    if flexible {
        put_unsigned_varint(buf, len as u32 + 1);
    } else {
        buf.put_i32(len as i32);
    }
}

fn put_string(buf: &mut BytesMut, flexible: bool, s: &str) {
    if flexible {
        put_unsigned_varint(buf, s.len() as u32 + 1);
    } else {
        buf.put_i16(s.len() as i16);
    }
    buf.put_slice(s.as_bytes());
}

/// Encodes a complete Fetch response frame (size prefix included).
pub fn encode(
    version: i16,
    correlation_id: i32,
    error_code: i16,
    session_id: i32,
    topics: Vec<FetchedTopic>,
) -> ResponseFrame {
    assert!(
        (4..=15).contains(&version),
        "fetch response v{version} is not supported"
    );
    let flexible = version >= 12;
    let mut chunks = Vec::new();
    let mut buf = BytesMut::with_capacity(256);
    begin_response(&mut buf, ApiKey::Fetch, version, correlation_id);
    buf.put_i32(0); // throttle_time_ms
    if version >= 7 {
        buf.put_i16(error_code);
        buf.put_i32(session_id);
    }
    put_array_len(&mut buf, flexible, topics.len());
    for topic in topics {
        if version >= 13 {
            buf.put_slice(topic.id.as_bytes());
        } else {
            put_string(&mut buf, flexible, &topic.name);
        }
        put_array_len(&mut buf, flexible, topic.partitions.len());
        for p in topic.partitions {
            buf.put_i32(p.partition);
            buf.put_i16(p.error_code);
            buf.put_i64(p.high_watermark);
            buf.put_i64(p.last_stable_offset);
            if version >= 5 {
                buf.put_i64(p.log_start_offset);
            }
            put_array_len(&mut buf, flexible, p.aborted.len());
            for aborted in &p.aborted {
                buf.put_i64(aborted.producer_id);
                buf.put_i64(aborted.first_offset);
                if flexible {
                    buf.put_u8(0); // tagged fields
                }
            }
            if version >= 11 {
                buf.put_i32(-1); // preferred_read_replica
            }
            let records_len = p.records.as_ref().map_or(0, Records::len);
            if flexible {
                put_unsigned_varint(&mut buf, records_len as u32 + 1);
            } else {
                buf.put_i32(records_len as i32);
            }
            if let Some(records) = p.records.filter(|r| !r.is_empty()) {
                chunks.push(Chunk::Mem(buf.split().freeze()));
                match records {
                    Records::File(slice) => chunks.push(Chunk::File(slice)),
                    Records::Memory { chunks: pieces, .. } => {
                        chunks.extend(pieces.into_iter().map(Chunk::Mem))
                    }
                }
            }
            if flexible {
                buf.put_u8(0); // partition tagged fields
            }
        }
        if flexible {
            buf.put_u8(0); // topic tagged fields
        }
    }
    if flexible {
        buf.put_u8(0); // response tagged fields
    }
    chunks.push(Chunk::Mem(buf.freeze()));
    let total: usize = chunks.iter().map(Chunk::len).sum();
    let size = (total - 4) as i32;
    match &mut chunks[0] {
        Chunk::Mem(first) => {
            let mut patched = BytesMut::from(&first[..]);
            patched[0..4].copy_from_slice(&size.to_be_bytes());
            chunks[0] = Chunk::Mem(patched.freeze());
        }
        Chunk::File(_) => unreachable!("a response always starts with its header"),
    }
    if chunks.len() == 1 {
        match chunks.pop() {
            Some(Chunk::Mem(b)) => ResponseFrame::Mem(b),
            _ => unreachable!(),
        }
    } else {
        ResponseFrame::Chunked(chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ReadSlice;
    use bytes::Buf;
    use kafka_protocol::messages::{FetchResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;
    use std::io::Write;
    use std::sync::Arc;

    /// Encodes with file-backed and memory records, materialises the chunks, and decodes the
    /// result with the reference decoder of the `kafka-protocol` crate.
    #[test]
    fn decodes_with_the_reference_decoder_at_every_version() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"0123456789abcdef").unwrap();
        let file = Arc::new(file);
        for version in 4..=15 {
            let topics = vec![FetchedTopic {
                name: "t".into(),
                id: uuid::Uuid::from_u128(7),
                partitions: vec![
                    FetchedPartition {
                        partition: 0,
                        error_code: 0,
                        high_watermark: 10,
                        last_stable_offset: 10,
                        log_start_offset: 0,
                        records: Some(Records::File(ReadSlice {
                            file: file.clone(),
                            position: 4,
                            len: 8,
                        })),
                        aborted: vec![AbortedTxn {
                            producer_id: 5,
                            first_offset: 3,
                            last_offset: 9,
                        }],
                    },
                    FetchedPartition {
                        partition: 2,
                        error_code: 0,
                        high_watermark: 20,
                        last_stable_offset: 20,
                        log_start_offset: 0,
                        records: Some(Records::Memory {
                            chunks: vec![
                                bytes::Bytes::from_static(b"head"),
                                bytes::Bytes::from_static(b"body!"),
                            ],
                            len: 9,
                        }),
                        aborted: Vec::new(),
                    },
                    FetchedPartition {
                        partition: 1,
                        error_code: 1,
                        high_watermark: -1,
                        last_stable_offset: -1,
                        log_start_offset: -1,
                        records: None,
                        aborted: Vec::new(),
                    },
                ],
            }];
            let mut bytes = Vec::new();
            match encode(version, 9, 0, 0, topics) {
                ResponseFrame::Chunked(chunks) => {
                    for c in chunks {
                        match c {
                            Chunk::Mem(b) => bytes.extend_from_slice(&b),
                            Chunk::File(s) => {
                                use std::os::unix::fs::FileExt;
                                let mut v = vec![0; s.len];
                                s.file.read_exact_at(&mut v, s.position).unwrap();
                                bytes.extend_from_slice(&v);
                            }
                        }
                    }
                }
                _ => panic!("records must stay in the file"),
            }
            let mut buf = bytes::Bytes::from(bytes);
            assert_eq!(buf.get_i32() as usize, buf.len());
            let header =
                ResponseHeader::decode(&mut buf, ApiKey::Fetch.response_header_version(version))
                    .unwrap();
            assert_eq!(header.correlation_id, 9);
            let response = FetchResponse::decode(&mut buf, version).unwrap();
            assert!(buf.is_empty(), "v{version}: trailing bytes");
            if version >= 13 {
                assert_eq!(response.responses[0].topic_id, uuid::Uuid::from_u128(7));
            } else {
                assert_eq!(response.responses[0].topic.0.as_str(), "t");
            }
            let p = &response.responses[0].partitions;
            assert_eq!(
                p[0].records.as_deref(),
                Some(&b"456789ab"[..]),
                "v{version}"
            );
            assert_eq!(p[0].high_watermark, 10);
            let aborted = p[0].aborted_transactions.as_ref().expect("aborted list");
            assert_eq!(
                (aborted[0].producer_id.0, aborted[0].first_offset),
                (5, 3),
                "v{version}"
            );
            assert_eq!(
                p[1].records.as_deref(),
                Some(&b"headbody!"[..]),
                "v{version}"
            );
            assert_eq!(p[1].high_watermark, 20);
            assert_eq!(p[2].error_code, 1);
        }
    }
}
