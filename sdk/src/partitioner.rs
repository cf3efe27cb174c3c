//! Choosing a record's partition: MurmurHash2 of the key, as Kafka's
//! default partitioner does, so a key lands in the same partition whichever
//! of the two clients produced it.

/// MurmurHash2 (32-bit) with Kafka's seed `0x9747b28c`, as Kafka's
/// `Utils.murmur2` computes it; returned as the same signed value.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Kafka hashes the length as a Java int.
    let mut h = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() == 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record among `partitions` (at least 1):
/// `(murmur2(key) & 0x7fffffff) % partitions`, Kafka's formula.
pub fn key_partition(key: &[u8], partitions: u32) -> i32 {
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    (positive % partitions.max(1)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values of Kafka's own test of `Utils.murmur2`.
        let cases: [(&[u8], i32); 6] = [
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
        for (data, expected) in cases {
            assert_eq!(murmur2(data), expected, "{:?}", std::str::from_utf8(data));
        }
    }

    #[test]
    fn key_partition_is_in_range_and_stable() {
        for n in 1..20u32 {
            let p = key_partition(b"some key", n);
            assert!((0..n as i32).contains(&p));
            assert_eq!(p, key_partition(b"some key", n));
        }
    }
}
