//! The coordinator's append-only metadata log: every topic change is a record here before it is
//! published, so a restart loses no topic.
//!
//! Frame: `[payload length: u32 LE][CRC-32C of payload: u32 LE][payload: rkyv-encoded record]`.
//! Replay stops at the first frame that is torn or fails its CRC and cuts the file there, the same
//! rule the partition logs follow. Writes are rare (control plane), so they use plain blocking
//! file I/O with fdatasync on the coordination shard.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rkyv::rancor;

/// Upper bound on one encoded record; a length field above it marks corruption.
pub const MAX_RECORD_BYTES: usize = 16 << 20;
const FRAME_HEADER_BYTES: usize = 8;

/// One durable change to cluster metadata.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum MetadataRecord {
    /// First record of a fresh cluster.
    ClusterCreated {
        cluster_id: String,
    },
    /// `assignments[p]` lists the replicas of partition p, preferred leader first.
    TopicCreated {
        name: String,
        id: [u8; 16],
        assignments: Vec<Vec<i32>>,
        configs: Vec<(String, String)>,
    },
    /// New partitions appended to an existing topic.
    PartitionsCreated {
        name: String,
        assignments: Vec<Vec<i32>>,
    },
    TopicDeleted {
        name: String,
    },
    /// Producer ids below `block_end` may have been handed out; a restart starts above it.
    ProducerIdBlock {
        block_end: i64,
    },
}

/// The open metadata log. Owned by the coordination shard only.
pub struct MetadataLog {
    path: PathBuf,
    file: File,
}

impl MetadataLog {
    /// Opens (creating if needed) the log under `dir` and returns every valid record in order.
    pub fn open(dir: &Path) -> io::Result<(MetadataLog, Vec<MetadataRecord>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("metadata.log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (records, valid_len) = decode_records(&bytes);
        if valid_len < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                cut_bytes = bytes.len() - valid_len,
                "metadata log has an invalid tail; cutting it"
            );
            file.set_len(valid_len as u64)?;
            file.sync_data()?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok((MetadataLog { path, file }, records))
    }

    /// Appends and fdatasyncs records; returns once they are durable.
    pub fn append(&mut self, records: &[MetadataRecord]) -> io::Result<()> {
        let mut frame = Vec::new();
        for record in records {
            let payload = rkyv::to_bytes::<rancor::Error>(record)
                .map_err(|e| io::Error::other(format!("encoding metadata record: {e}")))?;
            assert!(
                payload.len() <= MAX_RECORD_BYTES,
                "metadata record over the frame limit"
            );
            frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            frame.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
            frame.extend_from_slice(&payload);
        }
        self.file.write_all(&frame)?;
        self.file.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Decodes the longest valid prefix of a metadata log; returns the records and its length.
pub fn decode_records(bytes: &[u8]) -> (Vec<MetadataRecord>, usize) {
    let mut records = Vec::new();
    let mut position = 0;
    while bytes.len() - position >= FRAME_HEADER_BYTES {
        let header = &bytes[position..position + FRAME_HEADER_BYTES];
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let start = position + FRAME_HEADER_BYTES;
        if len > MAX_RECORD_BYTES || bytes.len() - start < len {
            break;
        }
        let payload = &bytes[start..start + len];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        // rkyv needs its input aligned; copy into an aligned buffer (rare, small records).
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(len);
        aligned.extend_from_slice(payload);
        match rkyv::from_bytes::<MetadataRecord, rancor::Error>(&aligned) {
            Ok(record) => records.push(record),
            Err(_) => break,
        }
        position = start + len;
    }
    (records, position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let created = MetadataRecord::TopicCreated {
            name: "t".into(),
            id: [7; 16],
            assignments: vec![vec![0], vec![0]],
            configs: vec![("retention.ms".into(), "1000".into())],
        };
        {
            let (mut log, records) = MetadataLog::open(dir.path()).unwrap();
            assert!(records.is_empty());
            log.append(&[
                created.clone(),
                MetadataRecord::ProducerIdBlock { block_end: 1000 },
            ])
            .unwrap();
        }
        let path = dir.path().join("metadata.log");
        let good_len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[5, 0, 0, 0, 1, 2])
            .unwrap();
        let (_, records) = MetadataLog::open(dir.path()).unwrap();
        assert_eq!(
            records,
            vec![created, MetadataRecord::ProducerIdBlock { block_end: 1000 }]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    }

    #[test]
    fn corrupt_frames_stop_decoding() {
        let payload =
            rkyv::to_bytes::<rancor::Error>(&MetadataRecord::TopicDeleted { name: "x".into() })
                .unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(crc32c::crc32c(&payload) ^ 1).to_le_bytes());
        bytes.extend_from_slice(&payload);
        assert_eq!(decode_records(&bytes), (vec![], 0));
        assert_eq!(decode_records(&[0xff; 8]).1, 0);
    }
}
