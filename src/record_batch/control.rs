//! Transaction markers: the control batches a coordinator appends to every partition of a
//! transaction when it ends. Attributes carry the transactional (0x10) and control (0x20)
//! bits; the one record's key is `version: i16 = 0, type: i16` (0 abort, 1 commit) and its
//! value `version: i16 = 0, coordinator_epoch: i32`. Consumers skip these batches.

use bytes::{BufMut, Bytes, BytesMut};

use super::varint::{put_zigzag, read_zigzag_at, VARLONG_MAX_BYTES};
use super::{compute_crc, HEADER_LEN, MAGIC_V2};

const ATTRIBUTES_TRANSACTIONAL_CONTROL: i16 = 0x10 | 0x20;
const MARKER_ABORT: i16 = 0;
const MARKER_COMMIT: i16 = 1;

/// A commit (or abort) marker of `producer_id` at `producer_epoch`, with base offset 0 (the
/// log assigns the real one) and a valid CRC-32C.
pub fn encode_marker(
    producer_id: i64,
    producer_epoch: i16,
    committed: bool,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + 24);
    buf.put_bytes(0, HEADER_LEN);
    let mut record = BytesMut::with_capacity(20);
    record.put_i8(0); // attributes
    put_zigzag(&mut record, 0); // timestamp delta
    put_zigzag(&mut record, 0); // offset delta
    put_zigzag(&mut record, 4);
    record.put_i16(0);
    record.put_i16(if committed {
        MARKER_COMMIT
    } else {
        MARKER_ABORT
    });
    put_zigzag(&mut record, 6);
    record.put_i16(0);
    record.put_i32(coordinator_epoch);
    put_zigzag(&mut record, 0); // headers
    put_zigzag(&mut buf, record.len() as i64);
    buf.put_slice(&record);
    let batch_length = (buf.len() - 12) as i32;
    buf[8..12].copy_from_slice(&batch_length.to_be_bytes());
    buf[16] = MAGIC_V2;
    buf[21..23].copy_from_slice(&ATTRIBUTES_TRANSACTIONAL_CONTROL.to_be_bytes());
    buf[23..27].copy_from_slice(&0i32.to_be_bytes()); // last offset delta
    buf[27..35].copy_from_slice(&timestamp_ms.to_be_bytes());
    buf[35..43].copy_from_slice(&timestamp_ms.to_be_bytes());
    buf[43..51].copy_from_slice(&producer_id.to_be_bytes());
    buf[51..53].copy_from_slice(&producer_epoch.to_be_bytes());
    buf[53..57].copy_from_slice(&(-1i32).to_be_bytes()); // base sequence
    buf[57..61].copy_from_slice(&1i32.to_be_bytes()); // record count
    let crc = compute_crc(&buf);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    buf.freeze()
}

/// Whether the control batch `batch` (starting at its header) is a commit marker: `Some(true)`
/// commit, `Some(false)` abort, `None` when it is not a readable transaction marker.
pub fn marker_committed(batch: &[u8]) -> Option<bool> {
    let mut position = HEADER_LEN;
    read_zigzag_at(batch, &mut position, VARLONG_MAX_BYTES)?; // record length
    position += 1; // attributes
    read_zigzag_at(batch, &mut position, VARLONG_MAX_BYTES)?; // timestamp delta
    read_zigzag_at(batch, &mut position, VARLONG_MAX_BYTES)?; // offset delta
    if read_zigzag_at(batch, &mut position, VARLONG_MAX_BYTES)? < 4 {
        return None;
    }
    let key = batch.get(position..position + 4)?;
    match i16::from_be_bytes([key[2], key[3]]) {
        MARKER_COMMIT => Some(true),
        MARKER_ABORT => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::validate;

    #[test]
    fn markers_are_valid_control_batches() {
        for committed in [true, false] {
            let batch = encode_marker(42, 3, committed, 0, 1_000);
            let header = validate(&batch, 1 << 20).unwrap();
            assert!(header.is_control() && header.is_transactional());
            assert_eq!((header.producer_id, header.producer_epoch), (42, 3));
            assert_eq!(marker_committed(&batch), Some(committed));
        }
        assert_eq!(marker_committed(&[0u8; 10]), None);
    }
}
