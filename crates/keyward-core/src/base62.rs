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

/// Writes `value` in base62 into `out`, left-padded with `0`; returns false if it does not fit.
///
/// The allocation-free twin of [`encode_padded`], used on the verify path.
pub fn encode_into(mut value: u64, out: &mut [u8]) -> bool {
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    value == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_values() {
        assert_eq!(encode_padded(0, 6), "000000");
        assert_eq!(encode_padded(61, 1), "z");
        assert_eq!(encode_padded(62, 1), "10");
        assert_eq!(encode_padded(u32::MAX as u64, 6), "4gfFC3");
    }

    #[test]
    fn encode_into_matches_encode_padded() {
        for v in [0u64, 1, 61, 62, 3843, 0xCBF4_3926, u32::MAX as u64] {
            let mut buf = [0u8; 6];
            assert!(encode_into(v, &mut buf));
            assert_eq!(std::str::from_utf8(&buf).unwrap(), encode_padded(v, 6));
        }
        let mut small = [0u8; 1];
        assert!(!encode_into(62, &mut small));
    }

    #[test]
    fn rejection_bound_is_largest_multiple_of_62_in_a_byte() {
        assert_eq!(REJECTION_BOUND % 62, 0);
        assert!(u16::from(REJECTION_BOUND) + 62 > 256);
    }
}
