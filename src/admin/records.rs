//! The newest records of a partition, decoded for display on the HTTP thread.
//!
//! Keys and values are arbitrary bytes: they become lossy UTF-8, cut to
//! [`DISPLAY_CHARS`] characters, and travel as JSON strings. The page inserts them with
//! `textContent`, never as HTML, so `<script>` in a value stays text.

use std::os::unix::fs::FileExt;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
use serde::Serialize;

use crate::storage::Records;

/// Characters of a key or value shown; longer ones are cut and flagged.
pub const DISPLAY_CHARS: usize = 256;

/// RecordBatch v2: base offset (8) + batch length (4) precede the rest of the batch.
const BATCH_LENGTH_END: usize = 12;

#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<String>,
    pub value: Option<String>,
    pub value_bytes: usize,
    pub truncated: bool,
    pub headers: usize,
}

/// The bytes of `records`: memory chunks joined, a file range read with pread (the caller runs
/// this on a blocking thread).
pub fn read_bytes(records: &Records) -> std::io::Result<Bytes> {
    match records {
        Records::Memory { chunks, len } => {
            let mut out = BytesMut::with_capacity(*len);
            for chunk in chunks {
                out.extend_from_slice(chunk);
            }
            Ok(out.freeze())
        }
        Records::File(slice) => {
            let mut out = vec![0u8; slice.len];
            let mut done = 0;
            while done < out.len() {
                let n = slice
                    .file
                    .read_at(&mut out[done..], slice.position + done as u64)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            out.truncate(done);
            Ok(Bytes::from(out))
        }
    }
}

fn display(bytes: &Option<Bytes>) -> (Option<String>, bool) {
    match bytes {
        None => (None, false),
        Some(b) => {
            let text = String::from_utf8_lossy(b);
            let mut chars = text.chars();
            let shown: String = chars.by_ref().take(DISPLAY_CHARS).collect();
            (Some(shown), chars.next().is_some())
        }
    }
}

/// Decodes the whole batches in `bytes` (a cut trailing batch is dropped) and returns the
/// records at `from_offset` or later, newest last, at most `limit`. A batch that cannot be
/// decoded (compressed with a codec this build lacks, or corrupt) ends the list with an
/// `Err` message next to what was decoded before it.
pub fn decode(bytes: Bytes, from_offset: i64, limit: usize) -> (Vec<MessageView>, Option<String>) {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut problem = None;
    while rest.len() >= BATCH_LENGTH_END {
        let batch_len = i32::from_be_bytes(rest[8..12].try_into().expect("4 bytes"));
        let total = BATCH_LENGTH_END as i64 + batch_len as i64;
        if batch_len <= 0 || total > rest.len() as i64 {
            break;
        }
        let mut batch = rest.split_to(total as usize);
        match RecordBatchDecoder::decode(&mut batch) {
            Ok(set) => {
                for record in set.records {
                    if record.offset < from_offset || record.control {
                        continue;
                    }
                    let (key, key_cut) = display(&record.key);
                    let (value, value_cut) = display(&record.value);
                    out.push(MessageView {
                        offset: record.offset,
                        timestamp_ms: record.timestamp,
                        key,
                        value,
                        value_bytes: record.value.as_ref().map_or(0, |v| v.remaining()),
                        truncated: key_cut || value_cut,
                        headers: record.headers.len(),
                    });
                }
            }
            Err(e) => {
                problem = Some(format!("a batch could not be decoded: {e}"));
                break;
            }
        }
    }
    if out.len() > limit {
        out.drain(..out.len() - limit);
    }
    (out, problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn record(offset: i64, value: &[u8]) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::copy_from_slice(value)),
            headers: Default::default(),
        }
    }

    #[test]
    fn newest_records_are_cut_and_partial_batches_dropped() {
        let long = vec![b'x'; 1000];
        let records: Vec<Record> = (0..5)
            .map(|i| record(i, if i == 4 { &long } else { b"<b>v</b>" }))
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        let whole = buf.freeze();
        let (shown, problem) = decode(whole.clone(), 2, 2);
        assert!(problem.is_none());
        assert_eq!(shown.iter().map(|m| m.offset).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(
            shown[0].value.as_deref(),
            Some("<b>v</b>"),
            "text, escaped by the page"
        );
        assert!(shown[1].truncated);
        assert_eq!(shown[1].value.as_ref().unwrap().len(), DISPLAY_CHARS);
        assert_eq!(shown[1].value_bytes, 1000);
        // A batch cut by the read size (the last, holding offset 4) is skipped, not an error.
        let (shown, problem) = decode(whole.slice(..whole.len() - 1), 0, 10);
        assert!(problem.is_none(), "{problem:?}");
        assert!(shown.iter().all(|m| m.offset < 4), "{shown:?}");
    }
}
