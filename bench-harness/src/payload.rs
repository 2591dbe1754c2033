//! Precomputed payloads and keys, so producing a record allocates nothing and computes little.

use crate::cli::{KeyDist, PayloadKind};

/// Marks a payload stamped by this harness: the first 16 bytes of a value are this magic number
/// and the record's scheduled send time (unix ns, little-endian). A consumer measures end-to-end
/// latency only from values that start with it.
pub const STAMP_MAGIC: u64 = 0x4248_5453_5f76_3031; // "BHTS_v01"
pub const STAMP_LEN: usize = 16;

pub fn stamp(send_ns: u64) -> [u8; STAMP_LEN] {
    let mut s = [0u8; STAMP_LEN];
    s[..8].copy_from_slice(&STAMP_MAGIC.to_le_bytes());
    s[8..].copy_from_slice(&send_ns.to_le_bytes());
    s
}

/// The send time in a stamped value, if it is one.
pub fn read_stamp(value: &[u8]) -> Option<u64> {
    if value.len() < STAMP_LEN || value[..8] != STAMP_MAGIC.to_le_bytes() {
        return None;
    }
    Some(u64::from_le_bytes(value[8..16].try_into().ok()?))
}

/// SplitMix64: tiny, fast, good enough to pick keys and fill payloads.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Distinct value bodies taken as windows of one template, so consecutive records differ (which
/// keeps compression ratios honest) while each body is still a plain slice.
pub struct Payloads {
    template: Vec<u8>,
    size: usize,
}

const WINDOWS: usize = 257;

impl Payloads {
    pub fn new(size: usize, kind: PayloadKind, seed: u64) -> Payloads {
        let mut rng = Rng::new(seed);
        let len = size + WINDOWS;
        let template = match kind {
            PayloadKind::Random => (0..len).map(|_| rng.next_u64() as u8).collect(),
            PayloadKind::Text => {
                // Words from a small vocabulary: compresses roughly like log lines or JSON.
                const WORDS: &[&str] = &[
                    "broker",
                    "partition",
                    "offset",
                    "leader",
                    "replica",
                    "segment",
                    "batch",
                    "record",
                    "consumer",
                    "producer",
                    "topic",
                    "commit",
                    "fetch",
                    "append",
                    "latency",
                    "throughput",
                    "index",
                    "epoch",
                    "cluster",
                    "shard",
                ];
                let mut t = Vec::with_capacity(len + 16);
                while t.len() < len {
                    t.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
                    t.push(b' ');
                }
                t.truncate(len);
                t
            }
            PayloadKind::Zeros => vec![0; len],
        };
        Payloads { template, size }
    }

    pub fn body(&self, seq: u64) -> &[u8] {
        let start = (seq % WINDOWS as u64) as usize;
        &self.template[start..start + self.size]
    }
}

/// Record keys and, for keyed records, the partition Kafka's default partitioner would pick.
pub struct Keys {
    dist: KeyDist,
    keys: Vec<Vec<u8>>,
    partition_of: Vec<u32>,
}

impl Keys {
    pub fn new(dist: KeyDist, count: usize, size: usize, partitions: u32, seed: u64) -> Keys {
        let mut rng = Rng::new(seed ^ 0x6b65_7973);
        let count = if dist == KeyDist::None {
            0
        } else {
            count.max(1)
        };
        let keys: Vec<Vec<u8>> = (0..count)
            .map(|_| {
                (0..size.max(1))
                    .map(|_| b'a' + rng.below(26) as u8)
                    .collect()
            })
            .collect();
        let partition_of = keys
            .iter()
            .map(|k| (murmur2(k) & 0x7fff_ffff) % partitions.max(1))
            .collect();
        Keys {
            dist,
            keys,
            partition_of,
        }
    }

    pub fn is_unkeyed(&self) -> bool {
        self.dist == KeyDist::None
    }

    /// The key index for record `seq`, or `None` for unkeyed records.
    pub fn pick(&self, seq: u64, rng: &mut Rng) -> Option<u32> {
        match self.dist {
            KeyDist::None => None,
            KeyDist::RoundRobin => Some((seq % self.keys.len() as u64) as u32),
            KeyDist::Random => Some(rng.below(self.keys.len() as u64) as u32),
        }
    }

    pub fn key(&self, idx: u32) -> &[u8] {
        &self.keys[idx as usize]
    }

    pub fn partition(&self, idx: u32) -> u32 {
        self.partition_of[idx as usize]
    }

    pub fn max_len(&self) -> Option<usize> {
        self.keys.iter().map(Vec::len).max()
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), so keyed records land on the
/// partitions a Java producer would choose.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2 (as signed ints there).
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, want) in cases {
            assert_eq!(
                murmur2(input) as i32,
                *want,
                "{:?}",
                std::str::from_utf8(input)
            );
        }
    }

    #[test]
    fn stamps_roundtrip() {
        let s = stamp(1_234_567_890_123);
        let mut v = vec![0u8; 64];
        v[..16].copy_from_slice(&s);
        assert_eq!(read_stamp(&v), Some(1_234_567_890_123));
        assert_eq!(read_stamp(&[0u8; 64]), None);
        assert_eq!(read_stamp(&v[..10]), None);
    }

    #[test]
    fn payload_windows_have_the_requested_size() {
        for kind in [PayloadKind::Random, PayloadKind::Text, PayloadKind::Zeros] {
            let p = Payloads::new(100, kind, 1);
            for seq in 0..600 {
                assert_eq!(p.body(seq).len(), 100);
            }
        }
    }
}
