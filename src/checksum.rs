//! CRC-32C (Castagnoli): the checksum of Kafka's record batches, and of the broker's own files
//! and frames (clean-close record, producer snapshots, coordination frames).
//!
//! Every produced byte is checked once on the data path (a leader validates each batch before
//! it appends), so this runs at the produce rate: 1.2 GB/s in W3 on one shard. It is computed
//! by `crc-fast`, which folds with AVX-512 VPCLMULQDQ where the CPU has it and falls back to
//! SSE4.2 or a table otherwise (chosen once at run time). On this project's EPYC VMs it runs at
//! 55-64 GB/s on 16 KiB-1 MiB inputs against 25-32 GB/s for the `crc32c` crate's three-way
//! `crc32q`, which took 6-7 % of a shard's samples in W3 (docs/benchmarks.md, "A faster VM").

/// The CRC-32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    // CRC-32/ISCSI is CRC-32C; the 32-bit result comes back widened to u64.
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

#[cfg(test)]
mod tests {
    use super::crc32c;

    #[test]
    fn matches_the_standard_check_values() {
        // The catalogue's check value for CRC-32C, and RFC 3720's (iSCSI) test vectors.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn long_inputs_at_any_alignment_agree_with_a_bitwise_reference() {
        fn reference(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= b as u32;
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0x82F6_3B78
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        // Lengths around the SIMD paths' block sizes, from odd starting addresses.
        for start in [0usize, 1, 3, 63] {
            for len in [1usize, 15, 16, 63, 64, 255, 256, 1023, 4096, 65_537] {
                let piece = &data[start..start + len];
                assert_eq!(crc32c(piece), reference(piece), "start {start} len {len}");
            }
        }
    }
}
