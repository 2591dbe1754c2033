//! CRC-framed records, the on-disk and on-wire unit of the coordination layer.
//!
//! Frame: `[payload length: u32 LE][CRC-32C of payload: u32 LE][payload]`. A reader stops at the
//! first frame that is torn, oversized or fails its CRC; on disk that is where a crash cut the
//! file, and everything before it is intact.

/// Bytes of the length and CRC in front of every payload.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Appends one frame holding `payload` to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("frames are far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crate::checksum::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payload length announced by a frame header, if the header is complete.
pub fn frame_len(header: &[u8]) -> Option<usize> {
    let len: [u8; 4] = header.get(0..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(len) as usize)
}

/// Checks the frame at the start of `bytes`: `Some((payload, frame_bytes))` if it is whole,
/// within `max_payload_bytes`, and its CRC matches.
pub fn decode_frame(bytes: &[u8], max_payload_bytes: usize) -> Option<(&[u8], usize)> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return None;
    }
    let len = frame_len(bytes)?;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    if len > max_payload_bytes || bytes.len() - FRAME_HEADER_BYTES < len {
        return None;
    }
    let payload = &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
    (crate::checksum::crc32c(payload) == crc).then_some((payload, FRAME_HEADER_BYTES + len))
}

/// Every valid frame from the start of `bytes`, and the length of that valid prefix.
pub fn decode_frames(bytes: &[u8], max_payload_bytes: usize) -> (Vec<&[u8]>, usize) {
    let mut payloads = Vec::new();
    let mut position = 0;
    while let Some((payload, used)) = decode_frame(&bytes[position..], max_payload_bytes) {
        payloads.push(payload);
        position += used;
    }
    (payloads, position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_stop_at_damage() {
        let mut bytes = Vec::new();
        encode_frame(b"one", &mut bytes);
        encode_frame(b"", &mut bytes);
        encode_frame(b"three", &mut bytes);
        let whole = bytes.len();
        let (payloads, len) = decode_frames(&bytes, 100);
        assert_eq!(payloads, vec![&b"one"[..], b"", b"three"]);
        assert_eq!(len, whole);
        // A torn tail.
        let (payloads, len) = decode_frames(&bytes[..whole - 1], 100);
        assert_eq!(payloads.len(), 2);
        assert_eq!(len, FRAME_HEADER_BYTES * 2 + 3);
        // A flipped bit.
        bytes[FRAME_HEADER_BYTES] ^= 1;
        assert_eq!(decode_frames(&bytes, 100), (vec![], 0));
        // A length above the limit.
        let mut big = Vec::new();
        encode_frame(&[0; 10], &mut big);
        assert_eq!(decode_frames(&big, 9).1, 0);
    }
}
