//! Record values and keys.
//!
//! Every value starts with the intended send time of its record: a u64,
//! big-endian, in nanoseconds since the UNIX epoch. Consumers read it back
//! to measure end-to-end latency from the moment the send was due, so a
//! slow producer is charged to the system under test. The rest of the value
//! is `random_bytes_ratio` random bytes, then zeros.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::workload::KeyDistribution;

/// Bytes of the timestamp at the start of every value.
pub const TIMESTAMP_BYTES: usize = 8;

/// Distinct value templates per producer, so random payloads are not one
/// repeated buffer (OMB repeats one payload file; this varies a little).
const TEMPLATES: usize = 16;

/// Distinct keys cycled through by [`KeyDistribution::RoundRobin`].
pub const ROUND_ROBIN_KEYS: u64 = 10_000;

/// Now, in nanoseconds since the UNIX epoch (0 before 1970).
pub fn epoch_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The timestamp at the start of a value, if it is long enough.
pub fn read_timestamp(value: &[u8]) -> Option<u64> {
    let head: [u8; TIMESTAMP_BYTES] = value.get(..TIMESTAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

/// A small, fast, seedable generator (xorshift64*); benchmark payloads and
/// keys need variety, not cryptographic quality.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a seed (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// Bytes of one arena values are cut from.
const ARENA_BYTES: usize = 1 << 20;
/// Used-up arenas kept for reuse; older ones are let go.
const ARENAS_KEPT: usize = 64;

/// Makes the values and keys of one producer.
///
/// Values are cut from arenas of [`ARENA_BYTES`]; an arena is written
/// again once every value cut from it has been dropped (the client copied
/// them into its batches), so a steady stream neither allocates nor
/// page-faults per value: the harness's own cost stays off the figures.
#[derive(Debug)]
pub struct PayloadMaker {
    templates: Vec<Vec<u8>>,
    next_template: usize,
    arena: BytesMut,
    spent: std::collections::VecDeque<BytesMut>,
    keys: KeyDistribution,
    key_counter: u64,
    rng: XorShift,
}

impl PayloadMaker {
    /// Values of `size` bytes (at least [`TIMESTAMP_BYTES`]) with
    /// `random_ratio` of the bytes after the timestamp random.
    pub fn new(size: usize, random_ratio: f64, keys: KeyDistribution, seed: u64) -> Self {
        let size = size.max(TIMESTAMP_BYTES);
        let body = size - TIMESTAMP_BYTES;
        let random = ((body as f64) * random_ratio.clamp(0.0, 1.0)).round() as usize;
        let mut rng = XorShift::new(seed);
        let templates = (0..TEMPLATES)
            .map(|_| {
                let mut t = vec![0u8; size];
                rng.fill(&mut t[TIMESTAMP_BYTES..TIMESTAMP_BYTES + random]);
                t
            })
            .collect();
        Self {
            templates,
            next_template: 0,
            arena: BytesMut::new(),
            spent: std::collections::VecDeque::new(),
            keys,
            key_counter: seed % ROUND_ROBIN_KEYS,
            rng,
        }
    }

    /// The next value, stamped with `intended_epoch_ns`.
    pub fn value(&mut self, intended_epoch_ns: u64) -> Bytes {
        let size = self.templates[self.next_template].len();
        if self.arena.capacity() < size {
            self.next_arena(size);
        }
        let template = &self.templates[self.next_template];
        self.next_template = (self.next_template + 1) % self.templates.len();
        self.arena.extend_from_slice(template);
        self.arena[..TIMESTAMP_BYTES].copy_from_slice(&intended_epoch_ns.to_be_bytes());
        self.arena.split().freeze()
    }

    /// Replaces the used-up arena: by the oldest spent one whose values
    /// are all gone, else by a new one.
    fn next_arena(&mut self, size: usize) {
        let bytes = ARENA_BYTES.max(size);
        let used = std::mem::take(&mut self.arena);
        if used.capacity() > 0 || !self.spent.is_empty() {
            self.spent.push_back(used);
        }
        if let Some(oldest) = self.spent.front_mut() {
            if oldest.try_reclaim(bytes) {
                self.arena = self.spent.pop_front().expect("front exists");
                return;
            }
        }
        if self.spent.len() > ARENAS_KEPT {
            self.spent.pop_front();
        }
        self.arena = BytesMut::with_capacity(bytes);
    }

    /// The next key, or `None` when records carry no key.
    pub fn key(&mut self) -> Option<Bytes> {
        match self.keys {
            KeyDistribution::None => None,
            KeyDistribution::RoundRobin => {
                let k = self.key_counter;
                self.key_counter = (self.key_counter + 1) % ROUND_ROBIN_KEYS;
                Some(Bytes::from(format!("key-{k}")))
            }
            KeyDistribution::Random => {
                Some(Bytes::copy_from_slice(&self.rng.next_u64().to_be_bytes()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_carries_the_timestamp_and_the_random_share() {
        let mut maker = PayloadMaker::new(1024, 0.5, KeyDistribution::None, 7);
        let v = maker.value(123_456_789);
        assert_eq!(v.len(), 1024);
        assert_eq!(read_timestamp(&v), Some(123_456_789));
        let body = &v[TIMESTAMP_BYTES..];
        let zeros_tail = body[508..].iter().all(|&b| b == 0);
        assert!(zeros_tail, "the second half of the body is zeros");
        assert!(body[..508].iter().filter(|&&b| b != 0).count() > 400);
        assert_eq!(maker.key(), None);
    }

    #[test]
    fn arenas_are_reused_once_their_values_are_dropped() {
        let size = 1000;
        let mut maker = PayloadMaker::new(size, 0.0, KeyDistribution::None, 3);
        let per_arena = ARENA_BYTES / size;
        // Fill a few arenas while holding every value: all distinct.
        let held: Vec<Bytes> = (0..3 * per_arena as u64).map(|i| maker.value(i)).collect();
        for (i, v) in held.iter().enumerate() {
            assert_eq!(read_timestamp(v), Some(i as u64), "values do not overlap");
        }
        let first = held[0].as_ptr();
        drop(held);
        // Every value dropped: later values land in memory used before.
        let again: Vec<Bytes> = (0..3 * per_arena as u64).map(|i| maker.value(i)).collect();
        assert!(
            again.iter().any(|v| v.as_ptr() == first),
            "an arena was reused"
        );
        for (i, v) in again.iter().enumerate() {
            assert_eq!(read_timestamp(v), Some(i as u64));
            assert_eq!(v.len(), size);
        }
    }

    #[test]
    fn keys_follow_the_distribution() {
        let mut rr = PayloadMaker::new(8, 0.0, KeyDistribution::RoundRobin, 0);
        let a = rr.key().unwrap();
        let b = rr.key().unwrap();
        assert_ne!(a, b);
        let mut random = PayloadMaker::new(8, 0.0, KeyDistribution::Random, 1);
        assert_eq!(random.key().unwrap().len(), 8);
        assert_eq!(read_timestamp(&[1, 2, 3]), None);
    }
}
