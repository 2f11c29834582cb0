//! Base62 with the alphabet `0-9A-Za-z`, the one GitHub's token checksums use.

/// The base62 alphabet, in value order.
pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The largest multiple of 62 that fits in a byte. Bytes at or above it are rejected when
/// sampling so that every character is equally likely (no modulo bias).
pub const REJECTION_BOUND: u8 = 248;

/// True if `b` is one of the 62 alphabet characters.
#[inline]
pub fn is_base62(b: u8) -> bool {
    IS_BASE62[usize::from(b)]
}

/// [`is_base62`] as a table: one load per byte on the verify path.
static IS_BASE62: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = true;
        i += 1;
    }
    table
};

/// True if every byte of `bytes` is one of the 62 alphabet characters.
///
/// Eight bytes at a time (SWAR: each byte of a `u64` tested for the three ranges at once, the
/// last word overlapping the one before), so a key body costs five word tests instead of 38
/// byte tests; shorter inputs go byte by byte.
pub fn all_base62(bytes: &[u8]) -> bool {
    if bytes.len() < 8 {
        return bytes.iter().all(|&b| is_base62(b));
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let last = bytes.len() - 8;
    (0..last).step_by(8).all(|at| word_is_base62(word(at))) && word_is_base62(word(last))
}

/// Each byte of `w` repeated in every byte of a word.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// [`all_base62`] for one word: every byte ASCII and in `0-9`, `A-Z` or `a-z`.
fn word_is_base62(w: u64) -> bool {
    const HIGH: u64 = splat(0x80);
    if w & HIGH != 0 {
        return false;
    }
    // For a byte below 0x80, adding 0x80 - lo sets its high bit iff it is >= lo, and adding
    // 0x7F - hi sets it iff it is > hi; neither sum carries into the next byte.
    let within = |lo: u8, hi: u8| {
        let at_least_lo = w + splat(0x80 - lo);
        let above_hi = w + splat(0x7F - hi);
        at_least_lo & !above_hi & HIGH
    };
    within(b'0', b'9') | within(b'A', b'Z') | within(b'a', b'z') == HIGH
}

/// The value of base62 `digits` (most significant first), or `None` if one is not a base62
/// character or the value does not fit in a `u64`.
pub fn decode(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |value, &b| {
        let digit = DIGIT[usize::from(b)];
        if digit == NOT_A_DIGIT {
            return None;
        }
        value.checked_mul(62)?.checked_add(u64::from(digit))
    })
}

/// Marks a byte that is not a base62 character in [`DIGIT`].
const NOT_A_DIGIT: u8 = u8::MAX;

/// Each byte's base62 value, or [`NOT_A_DIGIT`].
static DIGIT: [u8; 256] = {
    let mut table = [NOT_A_DIGIT; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Encodes `value` in base62, left-padded with `0` to `width` characters.
///
/// Values needing more than `width` digits keep all their digits.
pub fn encode_padded(mut value: u64, width: usize) -> String {
    let mut digits = Vec::with_capacity(width.max(11));
    while value > 0 {
        digits.push(ALPHABET[(value % 62) as usize]);
        value /= 62;
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    digits.into_iter().map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time check answers as the byte check does, for every byte value at every
    /// position of inputs of every length up to two words and a half.
    #[test]
    fn all_base62_matches_the_byte_check() {
        for len in 0..=20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut input = vec![b'a'; len];
                    input[at] = b;
                    let by_byte = input.iter().all(|&c| is_base62(c));
                    assert_eq!(
                        all_base62(&input),
                        by_byte,
                        "len {len}, byte {b:#x} at {at}"
                    );
                }
            }
            assert!(all_base62(&vec![b'Z'; len]));
        }
    }

    #[test]
    fn decode_inverts_encode_and_refuses_what_is_not_base62() {
        for v in [
            0u64,
            1,
            61,
            62,
            3843,
            0xCBF4_3926,
            u32::MAX as u64,
            62u64.pow(6) - 1,
        ] {
            assert_eq!(decode(encode_padded(v, 6).as_bytes()), Some(v));
        }
        assert_eq!(decode(b""), Some(0));
        assert_eq!(decode(b"ab-c"), None);
        assert_eq!(decode(b"\xff"), None);
        assert_eq!(decode(&[b'z'; 11]), None, "62^11 - 1 does not fit in a u64");
    }

    #[test]
    fn encodes_known_values() {
        assert_eq!(encode_padded(0, 6), "000000");
        assert_eq!(encode_padded(61, 1), "z");
        assert_eq!(encode_padded(62, 1), "10");
        assert_eq!(encode_padded(u32::MAX as u64, 6), "4gfFC3");
    }

    #[test]
    fn rejection_bound_is_largest_multiple_of_62_in_a_byte() {
        assert_eq!(REJECTION_BOUND % 62, 0);
        assert!(u16::from(REJECTION_BOUND) + 62 > 256);
    }
}
