//! CRC-32C arithmetic the writer needs beyond computing a crc: extending a
//! known crc of a suffix over a prefix, without a pass over the suffix.
//!
//! A stored data record's payload crc covers the whole record batch, while
//! the batch's own crc (verified on append) covers everything from its
//! attributes on. The writer derives the first from the second:
//! `crc(head ‖ rest) = crc(head) · x^(8·|rest|) ⊕ crc(rest)` over GF(2),
//! modulo the CRC-32C polynomial. The init and final xor of CRC-32C cancel
//! out of that identity. Cost: about log2(|rest|) products of 32-bit
//! polynomials, well under a microsecond for any batch size.

/// The CRC-32C (Castagnoli) polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a · b mod P`, both reflected (bit 31 is the coefficient of x^0).
const fn mul_mod(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        if m == 0 {
            return p;
        }
    }
}

/// `X2N[k] = x^(2^k) mod P`.
const X2N: [u32; 32] = {
    let mut t = [0u32; 32];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 32 {
        t[k] = p;
        p = mul_mod(p, p);
        k += 1;
    }
    t
};

/// `x^(8·n) mod P`: the factor that shifts a crc past `n` bytes.
fn x8n_mod(mut n: u64) -> u32 {
    let mut p = 1u32 << 31; // x^0
    let mut k = 3; // 8 = 2^3
    while n != 0 {
        if n & 1 != 0 {
            p = mul_mod(X2N[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC-32C of `A ‖ B` from `crc_a = crc32c(A)`, `crc_b = crc32c(B)` and
/// the length of `B`.
pub(crate) fn combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    mul_mod(x8n_mod(len_b as u64), crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn combining_with_nothing_keeps_the_crc() {
        let a = crc32c::crc32c(b"123456789");
        assert_eq!(a, 0xE306_9283, "the CRC-32C check value");
        assert_eq!(combine(a, crc32c::crc32c(b""), 0), a);
        assert_eq!(combine(crc32c::crc32c(b""), a, 9), a);
    }

    #[test]
    fn combines_across_a_megabyte() {
        let data: Vec<u8> = (0..(1usize << 20) + 37)
            .map(|i| (i * 131 % 251) as u8)
            .collect();
        let (head, rest) = data.split_at(21);
        assert_eq!(
            combine(crc32c::crc32c(head), crc32c::crc32c(rest), rest.len()),
            crc32c::crc32c(&data)
        );
    }

    proptest! {
        #[test]
        fn combine_equals_the_crc_of_the_concatenation(
            a in proptest::collection::vec(any::<u8>(), 0..300),
            b in proptest::collection::vec(any::<u8>(), 0..5000),
        ) {
            let whole: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
            prop_assert_eq!(
                combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len()),
                crc32c::crc32c(&whole)
            );
        }
    }
}
