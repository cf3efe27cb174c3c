//! Zigzag variable-length integers as used inside Kafka records.
//!
//! A value is first zigzag-mapped so that small magnitudes of either sign
//! become small unsigned numbers (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...), then
//! written little-endian in groups of 7 bits, the high bit of each byte set
//! while more bytes follow (unsigned LEB128).
//!
//! Kafka names the 32-bit form a *varint* (at most 5 bytes) and the 64-bit form
//! a *varlong* (at most 10 bytes); this module keeps those names.
//!
//! Decoding is strict about two things a lenient decoder would let slide:
//! an encoding longer than the maximum width, and set bits that do not fit the
//! target width in the final byte. Both would be silently truncated by a
//! lenient decoder; rejecting them means every accepted varint denotes exactly
//! one value. Redundant zero groups (e.g. `0x80 0x00` for 0) are accepted, as
//! Kafka accepts them.

/// Longest encoding of a 32-bit varint: ceil(32 / 7).
pub const VARINT_BYTES_MAX: usize = 5;
/// Longest encoding of a 64-bit varlong: ceil(64 / 7).
pub const VARLONG_BYTES_MAX: usize = 10;

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    /// The input ended while the continuation bit was still set.
    #[error("input ends inside a varint")]
    Truncated,
    /// More groups than the width allows, or bits beyond the width.
    #[error("varint does not fit its width")]
    Overflow,
}

/// Maps a signed 32-bit value onto an unsigned one, small magnitudes first.
#[inline]
pub const fn zigzag_encode_32(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

/// Inverse of [`zigzag_encode_32`].
#[inline]
pub const fn zigzag_decode_32(encoded: u32) -> i32 {
    ((encoded >> 1) as i32) ^ -((encoded & 1) as i32)
}

/// Maps a signed 64-bit value onto an unsigned one, small magnitudes first.
#[inline]
pub const fn zigzag_encode_64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Inverse of [`zigzag_encode_64`].
#[inline]
pub const fn zigzag_decode_64(encoded: u64) -> i64 {
    ((encoded >> 1) as i64) ^ -((encoded & 1) as i64)
}

/// Bytes an unsigned LEB128 encoding of `value` takes (1 for zero).
#[inline]
const fn unsigned_len(value: u64) -> usize {
    // `| 1` makes zero count as one significant bit, hence one byte.
    let significant_bits = 64 - (value | 1).leading_zeros() as usize;
    significant_bits.div_ceil(7)
}

/// Bytes [`put_varint`] writes for `value`.
#[inline]
pub const fn varint_len(value: i32) -> usize {
    unsigned_len(zigzag_encode_32(value) as u64)
}

/// Bytes [`put_varlong`] writes for `value`.
#[inline]
pub const fn varlong_len(value: i64) -> usize {
    unsigned_len(zigzag_encode_64(value))
}

#[inline]
fn put_unsigned(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends the zigzag varint encoding of `value` to `out`.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, value: i32) {
    put_unsigned(out, u64::from(zigzag_encode_32(value)));
}

/// Appends the zigzag varlong encoding of `value` to `out`.
#[inline]
pub fn put_varlong(out: &mut Vec<u8>, value: i64) {
    put_unsigned(out, zigzag_encode_64(value));
}

/// Reads an unsigned LEB128 value of at most `width_bits` bits from the start
/// of `input`. Returns the value and the number of bytes consumed.
#[inline]
fn read_unsigned(input: &[u8], width_bits: u32) -> Result<(u64, usize), VarintError> {
    let bytes_max = width_bits.div_ceil(7) as usize;
    let mut value: u64 = 0;
    for (i, &byte) in input.iter().take(bytes_max).enumerate() {
        let shift = 7 * i as u32;
        let group = u64::from(byte & 0x7f);
        if i + 1 == bytes_max {
            // The final group may only carry the bits still missing from the
            // width, and must not announce another byte.
            let bits_left = width_bits - shift;
            if byte & 0x80 != 0 || group >> bits_left != 0 {
                return Err(VarintError::Overflow);
            }
        }
        value |= group << shift;
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    // Only reachable when the input ran out before a terminating byte: the
    // last permitted byte either terminates or returns Overflow above.
    Err(VarintError::Truncated)
}

/// Decodes a zigzag varint from the start of `input`; returns the value and
/// the number of bytes it occupied.
#[inline]
pub fn read_varint(input: &[u8]) -> Result<(i32, usize), VarintError> {
    let (raw, len) = read_unsigned(input, 32)?;
    // read_unsigned guarantees raw fits in 32 bits.
    Ok((zigzag_decode_32(raw as u32), len))
}

/// Decodes a zigzag varlong from the start of `input`; returns the value and
/// the number of bytes it occupied.
#[inline]
pub fn read_varlong(input: &[u8]) -> Result<(i64, usize), VarintError> {
    let (raw, len) = read_unsigned(input, 64)?;
    Ok((zigzag_decode_64(raw), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_orders_small_magnitudes_first() {
        let expected: [(i32, u32); 7] = [
            (0, 0),
            (-1, 1),
            (1, 2),
            (-2, 3),
            (2, 4),
            (i32::MAX, u32::MAX - 1),
            (i32::MIN, u32::MAX),
        ];
        for (value, encoded) in expected {
            assert_eq!(zigzag_encode_32(value), encoded, "{value}");
            assert_eq!(zigzag_decode_32(encoded), value, "{value}");
        }
        assert_eq!(zigzag_encode_64(i64::MIN), u64::MAX);
        assert_eq!(zigzag_decode_64(u64::MAX - 1), i64::MAX);
    }

    /// Known encodings, independent of the encoder under test.
    #[test]
    fn known_encodings() {
        let cases: [(i64, &[u8]); 8] = [
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (300, &[0xd8, 0x04]),
            (-300, &[0xd7, 0x04]),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            assert_eq!(out, bytes, "varlong {value}");
            assert_eq!(varlong_len(value), bytes.len());
            assert_eq!(read_varlong(bytes), Ok((value, bytes.len())));

            let narrow = i32::try_from(value).unwrap();
            out.clear();
            put_varint(&mut out, narrow);
            assert_eq!(out, bytes, "varint {value}");
            assert_eq!(varint_len(narrow), bytes.len());
            assert_eq!(read_varint(bytes), Ok((narrow, bytes.len())));
        }
    }

    #[test]
    fn extremes_round_trip_at_maximum_width() {
        for value in [i32::MIN, i32::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), VARINT_BYTES_MAX);
            assert_eq!(read_varint(&out), Ok((value, VARINT_BYTES_MAX)));
        }
        for value in [i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            assert_eq!(out.len(), VARLONG_BYTES_MAX);
            assert_eq!(read_varlong(&out), Ok((value, VARLONG_BYTES_MAX)));
        }
    }

    #[test]
    fn rejects_malformed_input() {
        assert_eq!(read_varint(&[]), Err(VarintError::Truncated));
        assert_eq!(read_varint(&[0x80]), Err(VarintError::Truncated));
        assert_eq!(read_varint(&[0xff; 4]), Err(VarintError::Truncated));
        // Sixth byte announced.
        assert_eq!(read_varint(&[0xff; 6]), Err(VarintError::Overflow));
        // Fifth byte carries a bit beyond 32.
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0x10]),
            Err(VarintError::Overflow)
        );
        assert_eq!(read_varlong(&[0xff; 11]), Err(VarintError::Overflow));
        let mut too_wide = [0xffu8; 10];
        too_wide[9] = 0x02;
        assert_eq!(read_varlong(&too_wide), Err(VarintError::Overflow));
        // Redundant zero group is tolerated, as Kafka tolerates it.
        assert_eq!(read_varint(&[0x80, 0x00]), Ok((0, 2)));
    }

    #[test]
    fn reads_only_its_own_bytes() {
        assert_eq!(read_varint(&[0x02, 0xff, 0xff]), Ok((1, 1)));
    }
}
