//! The coordinator's durable state: `__transaction_state-0` in the data directory, a log of
//! records keyed by transactional id whose value is the id's whole state after a transition
//! (the newest record of an id wins at replay). Written before the coordinator answers, so
//! a restarted coordinator finishes what it had prepared (PrepareCommit writes its commit
//! markers, offsets included) and aborts what was open.
//!
//! Value layout (big-endian): version i16 = 0, producer id i64, epoch i16, timeout ms i32,
//! state i8, start ms i64, last update ms i64, partitions [topic str, index i32], pending
//! offsets [group str, [topic str, partition i32, offset i64, leader epoch i32, metadata
//! nullable str]]; strings are i16 length + UTF-8, arrays i32 count. The pending offsets are
//! always empty now (a transaction's offsets are in the offsets log, pending until its
//! marker) and skipped when read: older logs kept them here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};

use super::coordinator::{TxnMetadata, TxnState};
use super::TRANSACTION_STATE_TOPIC;
use crate::record_batch;
use crate::record_batch::varint::put_zigzag;
use crate::storage::{LogConfig, PartitionLog};

const BATCH_HEADER_BYTES: usize = 61;
const VALUE_VERSION: i16 = 0;

/// The open state log.
pub struct StateLog {
    log: Rc<PartitionLog>,
}

fn state_code(state: TxnState) -> i8 {
    match state {
        TxnState::Empty => 0,
        TxnState::Ongoing => 1,
        TxnState::PrepareCommit => 2,
        TxnState::PrepareAbort => 3,
        TxnState::CompleteCommit => 4,
        TxnState::CompleteAbort => 5,
        TxnState::Dead => 6,
    }
}

fn state_of(code: i8) -> Option<TxnState> {
    Some(match code {
        0 => TxnState::Empty,
        1 => TxnState::Ongoing,
        2 => TxnState::PrepareCommit,
        3 => TxnState::PrepareAbort,
        4 => TxnState::CompleteCommit,
        5 => TxnState::CompleteAbort,
        6 => TxnState::Dead,
        _ => return None,
    })
}

fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_i16(s.len().min(i16::MAX as usize) as i16);
    buf.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

/// Encodes one id's state as a record value.
pub fn encode_value(meta: &TxnMetadata) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + 32 * meta.partitions.len());
    buf.put_i16(VALUE_VERSION);
    buf.put_i64(meta.producer_id);
    buf.put_i16(meta.producer_epoch);
    buf.put_i32(meta.timeout_ms);
    buf.put_i8(state_code(meta.state));
    buf.put_i64(meta.start_ms);
    buf.put_i64(meta.last_update_ms);
    buf.put_i32(meta.partitions.len() as i32);
    for (topic, index) in &meta.partitions {
        put_str(&mut buf, topic);
        buf.put_i32(*index);
    }
    // No pending offsets (see the module docs).
    buf.put_i32(0);
    buf.freeze()
}

/// A bounds-checked reader of disk bytes: corrupt input is an error, never a panic.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let slice = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(slice)
    }
    fn i8(&mut self) -> Option<i8> {
        Some(self.take(1)?[0] as i8)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn nullable_str(&mut self) -> Option<Option<String>> {
        let len = self.i16()?;
        if len < 0 {
            return Some(None);
        }
        let bytes = self.take(len as usize)?;
        Some(Some(String::from_utf8(bytes.to_vec()).ok()?))
    }
    fn str(&mut self) -> Option<String> {
        self.nullable_str()?
    }
    /// An array count, bounded by the bytes left (each element takes at least one).
    fn count(&mut self) -> Option<usize> {
        let n = self.i32()?;
        (n >= 0 && (n as usize) <= self.buf.len() - self.pos).then_some(n as usize)
    }
    fn varint(&mut self) -> Option<i64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        None
    }
}

/// Decodes a record value written by [`encode_value`].
pub fn decode_value(value: &[u8]) -> Option<TxnMetadata> {
    let mut r = Reader { buf: value, pos: 0 };
    if r.i16()? != VALUE_VERSION {
        return None;
    }
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let state = state_of(r.i8()?)?;
    let start_ms = r.i64()?;
    let last_update_ms = r.i64()?;
    let mut partitions = BTreeSet::new();
    for _ in 0..r.count()? {
        let topic = r.str()?;
        partitions.insert((topic, r.i32()?));
    }
    for _ in 0..r.count()? {
        // An older log's pending offsets: read past them.
        r.str()?;
        for _ in 0..r.count()? {
            r.str()?;
            r.i32()?;
            r.i64()?;
            r.i32()?;
            r.nullable_str()?;
        }
    }
    Some(TxnMetadata {
        producer_id,
        producer_epoch,
        timeout_ms,
        state,
        partitions,
        start_ms,
        last_update_ms,
    })
}

/// One record (key = transactional id, value = state) as an uncompressed batch.
pub fn encode_batch(key: &str, value: &[u8], timestamp_ms: i64) -> Bytes {
    let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + 16 + key.len() + value.len());
    buf.put_bytes(0, BATCH_HEADER_BYTES);
    let mut record = BytesMut::with_capacity(16 + key.len() + value.len());
    record.put_i8(0);
    put_zigzag(&mut record, 0);
    put_zigzag(&mut record, 0);
    put_zigzag(&mut record, key.len() as i64);
    record.put_slice(key.as_bytes());
    put_zigzag(&mut record, value.len() as i64);
    record.put_slice(value);
    put_zigzag(&mut record, 0);
    put_zigzag(&mut buf, record.len() as i64);
    buf.put_slice(&record);
    let batch_length = (buf.len() - 12) as i32;
    buf[8..12].copy_from_slice(&batch_length.to_be_bytes());
    buf[16] = 2;
    buf[27..35].copy_from_slice(&timestamp_ms.to_be_bytes());
    buf[35..43].copy_from_slice(&timestamp_ms.to_be_bytes());
    buf[43..51].copy_from_slice(&(-1i64).to_be_bytes());
    buf[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    buf[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    buf[57..61].copy_from_slice(&1i32.to_be_bytes());
    let crc = record_batch::compute_crc(&buf);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    buf.freeze()
}

/// The (key, value) of the one record of a batch written by [`encode_batch`].
fn decode_batch(batch: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut r = Reader {
        buf: batch,
        pos: BATCH_HEADER_BYTES,
    };
    r.varint()?;
    r.i8()?;
    r.varint()?;
    r.varint()?;
    let key_len = r.varint()?;
    let key = String::from_utf8(r.take(usize::try_from(key_len).ok()?)?.to_vec()).ok()?;
    let value_len = r.varint()?;
    let value = r.take(usize::try_from(value_len).ok()?)?.to_vec();
    Some((key, value))
}

/// The log settings of the state log: the offsets logs' (never aged out; compaction keeps
/// the newest state of every id) with `transaction.state.log.segment.bytes` segments.
pub fn state_log_config(broker_log: &LogConfig, segment_bytes: u64) -> LogConfig {
    let mut config = crate::groups::offsets_log::offsets_log_config(broker_log);
    config.segment_bytes = segment_bytes;
    config
}

/// The newest state of every transactional id in `log` (everything written: a new leader's
/// log is what its followers converge to). Unreadable records are skipped with a warning.
pub fn replay(log: &PartitionLog) -> Result<Vec<(String, TxnMetadata)>, String> {
    let mut newest: BTreeMap<String, TxnMetadata> = BTreeMap::new();
    log.for_each_written_batch("transaction state log", usize::MAX, |header, batch| {
        match decode_batch(batch).and_then(|(key, value)| decode_value(&value).map(|m| (key, m))) {
            Some((key, meta)) => {
                newest.insert(key, meta);
            }
            None => tracing::warn!(
                offset = header.base_offset,
                "unreadable transaction state record skipped"
            ),
        }
        Ok(())
    })?;
    Ok(newest.into_iter().collect())
}

impl StateLog {
    /// The log itself, for the log cleaner (shard 0 compacts it).
    pub fn partition_log(&self) -> Rc<PartitionLog> {
        self.log.clone()
    }

    /// Opens the state log in `data_dir` and replays it: the newest state of every id.
    pub async fn open(
        data_dir: &Path,
        config: LogConfig,
    ) -> Result<(StateLog, Vec<(String, TxnMetadata)>), String> {
        let dir = data_dir.join(format!("{TRANSACTION_STATE_TOPIC}-0"));
        let log = PartitionLog::open(dir, config)
            .await
            .map_err(|e| e.to_string())?;
        let states = replay(&log)?;
        Ok((StateLog { log }, states))
    }

    /// Appends the state of `transactional_id` and waits until it is on disk.
    pub async fn write(
        &self,
        transactional_id: &str,
        meta: &TxnMetadata,
        now_ms: i64,
    ) -> Result<(), String> {
        let batch = encode_batch(transactional_id, &encode_value(meta), now_ms);
        let header = record_batch::validate(&batch, usize::MAX).map_err(|e| e.to_string())?;
        let info = self
            .log
            .append(batch, &header, 0)
            .map_err(|e| e.to_string())?;
        self.log
            .wait_written(info.last_offset + 1, true)
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn close(&self) {
        if let Err(e) = self.log.close().await {
            tracing::error!(error = %e, "closing the transaction state log failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_garbage_is_refused() {
        let meta = TxnMetadata {
            producer_id: 9,
            producer_epoch: 4,
            timeout_ms: 60_000,
            state: TxnState::PrepareCommit,
            partitions: [("t".to_string(), 1), ("u".to_string(), 0)].into(),
            start_ms: 5,
            last_update_ms: 6,
        };
        let batch = encode_batch("id", &encode_value(&meta), 7);
        record_batch::validate(&batch, usize::MAX).unwrap();
        let (key, value) = decode_batch(&batch).unwrap();
        assert_eq!(key, "id");
        let back = decode_value(&value).unwrap();
        assert_eq!(back.partitions, meta.partitions);
        assert_eq!(back.state, TxnState::PrepareCommit);
        for cut in 0..value.len() {
            assert!(decode_value(&value[..cut]).is_none());
        }
    }
}
