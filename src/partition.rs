//! Which partition a lead belongs to: Kafka's default partitioner, `murmur2(key) % partitions`
//! (Java clients, Kafka Streams, and librdkafka with `partitioner=murmur2_random`). Records in
//! another partition than their lead's are forwarded there (see `[kafka] repartition`), and
//! `/leads/{id}` finds the instance that owns a lead with it.

/// Kafka's 32-bit murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed `0x9747b28c`.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of a lead id among `partitions` (> 0): `toPositive(murmur2(id)) % partitions`.
pub fn lead_partition(lead_id: &str, partitions: usize) -> i32 {
    ((murmur2(lead_id.as_bytes()) & 0x7fff_ffff) as usize % partitions.max(1)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Kafka's own `UtilsTest` and librdkafka's `rdmurmur2.c` unit test.
    #[test]
    fn matches_kafkas_murmur2() {
        let cases: &[(&str, i32)] = &[
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
            ("kafka", 0xd067_cf64_u32 as i32),
        ];
        for &(key, want) in cases {
            assert_eq!(murmur2(key.as_bytes()) as i32, want, "murmur2({key:?})");
        }
    }

    #[test]
    fn partitions_are_in_range_and_positive() {
        for i in 0..10_000 {
            let p = lead_partition(&format!("lead-{i}"), 6);
            assert!((0..6).contains(&p));
        }
        assert_eq!(lead_partition("21", 1), 0);
    }
}
