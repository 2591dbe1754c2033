//! The record codecs of RecordBatch v2 (attributes bits 0-2): the cleaner opens a compressed
//! batch, keeps some of its records and compresses them again with the batch's own codec, and
//! produce checks the keys of compressed batches on compacted topics.
//!
//! Decompression is bounded: a few hundred bytes of gzip can expand to gigabytes, so every
//! decoder stops at `limit_bytes` of output and reports an error instead of allocating more.

use std::io::{Read, Write};

pub const CODEC_NONE: u8 = 0;
pub const CODEC_GZIP: u8 = 1;
pub const CODEC_SNAPPY: u8 = 2;
pub const CODEC_LZ4: u8 = 3;
pub const CODEC_ZSTD: u8 = 4;

/// The Java client's snappy framing (xerial's `SnappyOutputStream`): this magic, then blocks
/// of `[u32 compressed length][raw snappy block]`.
const XERIAL_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// Uncompressed bytes per snappy block we write (xerial's default).
const SNAPPY_BLOCK_BYTES: usize = 32 * 1024;
/// zstd's default level, the one Kafka's producers use.
const ZSTD_LEVEL: i32 = 3;

/// Reads `reader` to its end, failing once it yields more than `limit_bytes`.
fn read_bounded(reader: impl Read, limit_bytes: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    reader
        .take(limit_bytes as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot decompress: {e}"))?;
    if out.len() > limit_bytes {
        return Err(format!("decompresses to more than {limit_bytes} bytes"));
    }
    Ok(out)
}

/// The uncompressed records of a batch whose codec is `codec`.
pub fn decompress(codec: u8, data: &[u8], limit_bytes: usize) -> Result<Vec<u8>, String> {
    match codec {
        CODEC_NONE => read_bounded(data, limit_bytes),
        CODEC_GZIP => read_bounded(flate2::read::GzDecoder::new(data), limit_bytes),
        CODEC_SNAPPY => decompress_snappy(data, limit_bytes),
        CODEC_LZ4 => {
            let decoder = lz4::Decoder::new(data).map_err(|e| format!("bad lz4 frame: {e}"))?;
            read_bounded(decoder, limit_bytes)
        }
        CODEC_ZSTD => {
            let decoder = zstd::stream::read::Decoder::with_buffer(data)
                .map_err(|e| format!("bad zstd frame: {e}"))?;
            read_bounded(decoder, limit_bytes)
        }
        other => Err(format!("unknown compression codec {other}")),
    }
}

fn decompress_snappy(data: &[u8], limit_bytes: usize) -> Result<Vec<u8>, String> {
    let raw_block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), String> {
        let len = snap::raw::decompress_len(block).map_err(|e| format!("bad snappy: {e}"))?;
        if out.len() + len > limit_bytes {
            return Err(format!("decompresses to more than {limit_bytes} bytes"));
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(|e| format!("bad snappy: {e}"))?;
        Ok(())
    };
    let mut out = Vec::new();
    let Some(mut rest) = data.strip_prefix(XERIAL_MAGIC.as_slice()) else {
        // librdkafka and others send one raw snappy block.
        raw_block(data, &mut out)?;
        return Ok(out);
    };
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err("truncated snappy block length".into());
        }
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let block = rest
            .get(4..4 + len)
            .ok_or_else(|| "truncated snappy block".to_string())?;
        raw_block(block, &mut out)?;
        rest = &rest[4 + len..];
    }
    Ok(out)
}

/// `data` compressed with `codec`, in the framing Kafka's Java client writes.
pub fn compress(codec: u8, data: &[u8]) -> Result<Vec<u8>, String> {
    let io = |e: std::io::Error| format!("cannot compress: {e}");
    match codec {
        CODEC_NONE => Ok(data.to_vec()),
        CODEC_GZIP => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).map_err(io)?;
            encoder.finish().map_err(io)
        }
        CODEC_SNAPPY => {
            let mut out = XERIAL_MAGIC.to_vec();
            let mut encoder = snap::raw::Encoder::new();
            for block in data.chunks(SNAPPY_BLOCK_BYTES) {
                let compressed = encoder
                    .compress_vec(block)
                    .map_err(|e| format!("cannot compress: {e}"))?;
                out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            Ok(out)
        }
        CODEC_LZ4 => {
            let mut encoder = lz4::EncoderBuilder::new().build(Vec::new()).map_err(io)?;
            encoder.write_all(data).map_err(io)?;
            let (out, result) = encoder.finish();
            result.map_err(io)?;
            Ok(out)
        }
        CODEC_ZSTD => zstd::bulk::compress(data, ZSTD_LEVEL).map_err(io),
        other => Err(format!("unknown compression codec {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        for codec in [CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD] {
            let compressed = compress(codec, &data).unwrap();
            assert_eq!(
                decompress(codec, &compressed, 1 << 20).unwrap(),
                data,
                "{codec}"
            );
        }
    }

    #[test]
    fn decompression_stops_at_the_limit() {
        let data = vec![0u8; 1 << 20];
        for codec in [CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD] {
            let compressed = compress(codec, &data).unwrap();
            assert!(decompress(codec, &compressed, 1000).is_err(), "{codec}");
        }
        assert!(decompress(7, b"x", 10).is_err());
        assert!(decompress(CODEC_GZIP, b"not gzip", 10).is_err());
    }

    #[test]
    fn raw_snappy_blocks_are_read_too() {
        let block = snap::raw::Encoder::new().compress_vec(b"hello").unwrap();
        assert_eq!(decompress(CODEC_SNAPPY, &block, 100).unwrap(), b"hello");
    }
}
