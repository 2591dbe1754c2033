//! Kafka's record-level integers: zigzag-encoded base-128 varints (protobuf's `sint64`), at most
//! 5 bytes for a varint field (lengths, offset deltas) and 10 for a varlong (timestamp deltas).
//! Decoding is bounds-checked and length-capped, so malformed bytes give `None`, never a panic
//! or a read past the slice.

use bytes::BufMut;

/// Longest encoding of a 32-bit varint field.
pub const VARINT_MAX_BYTES: usize = 5;
/// Longest encoding of a 64-bit varlong field.
pub const VARLONG_MAX_BYTES: usize = 10;

/// Appends `value` zigzag-encoded.
pub fn put_zigzag(buf: &mut impl BufMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        buf.put_u8((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    buf.put_u8(zigzag as u8);
}

/// Decodes a zigzag varint of at most `max_bytes` bytes from the start of `bytes`; returns the
/// value and the bytes it took.
pub fn read_zigzag(bytes: &[u8], max_bytes: usize) -> Option<(i64, usize)> {
    let mut raw = 0u64;
    for (i, &b) in bytes.iter().take(max_bytes).enumerate() {
        raw |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Some((((raw >> 1) as i64) ^ -((raw & 1) as i64), i + 1));
        }
    }
    None
}

/// [`read_zigzag`] at `*position`, moving it past the value.
pub fn read_zigzag_at(bytes: &[u8], position: &mut usize, max_bytes: usize) -> Option<i64> {
    let (value, used) = read_zigzag(bytes.get(*position..)?, max_bytes)?;
    *position += used;
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_known_encodings_and_refuses_overlong_or_cut_ones() {
        assert_eq!(read_zigzag(&[0x00], VARINT_MAX_BYTES), Some((0, 1)));
        assert_eq!(read_zigzag(&[0x01], VARINT_MAX_BYTES), Some((-1, 1)));
        assert_eq!(read_zigzag(&[0x02], VARINT_MAX_BYTES), Some((1, 1)));
        assert_eq!(read_zigzag(&[0xac, 0x02], VARINT_MAX_BYTES), Some((150, 2)));
        assert_eq!(read_zigzag(&[0xff; 6], VARINT_MAX_BYTES), None);
        assert_eq!(read_zigzag(&[0x80], VARINT_MAX_BYTES), None, "cut short");
        assert_eq!(read_zigzag(&[], VARINT_MAX_BYTES), None);
    }

    #[test]
    fn round_trips_the_extremes() {
        for value in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            i32::MAX as i64,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let mut buf = Vec::new();
            put_zigzag(&mut buf, value);
            assert!(buf.len() <= VARLONG_MAX_BYTES);
            assert_eq!(
                read_zigzag(&buf, VARLONG_MAX_BYTES),
                Some((value, buf.len()))
            );
        }
        let mut buf = Vec::new();
        put_zigzag(&mut buf, i32::MIN as i64);
        assert_eq!(
            buf.len(),
            VARINT_MAX_BYTES,
            "a 32-bit value fits a varint field"
        );
    }
}
