//! The v1 key format, key hashing and identifier generation.
//!
//! A key is `<prefix>_<random><checksum>`:
//! - `prefix` matches `[a-z][a-z0-9_]{0,19}` and is found by the *last* underscore;
//! - `random` is 32 base62 characters drawn uniformly from a CSPRNG (about 190 bits);
//! - `checksum` is the CRC-32 (IEEE) of the 32 random characters, base62, left-padded with `0`
//!   to 6 characters. This is the scheme GitHub uses for its tokens, so secret scanners can
//!   recognise keyward keys offline and discard look-alikes without asking the server.
//!
//! The store keeps only [`KeyHash`] (SHA-256 of the whole key, tagged with a version so the
//! algorithm can change), the public `start` (prefix plus 4 random characters) and the key_id.

use std::fmt;

use rand_core::TryCryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::base62;

/// Number of random base62 characters in a key.
pub const RANDOM_LEN: usize = 32;
/// Number of base62 characters of the CRC-32 checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Maximum length of a prefix.
pub const MAX_PREFIX_LEN: usize = 20;
/// Longest possible key: prefix, underscore, random part and checksum.
pub const MAX_KEY_LEN: usize = MAX_PREFIX_LEN + 1 + BODY_LEN;
/// Length of the part after the separator: the random part and the checksum.
const BODY_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;
/// Number of random characters shown in a key's public `start`.
pub const START_RANDOM_CHARS: usize = 4;
/// Number of base62 characters after `key_` in a key_id (about 119 bits).
pub const KEY_ID_RANDOM_LEN: usize = 20;

/// Default prefix for keys of a live (production) environment.
pub const PREFIX_LIVE: &str = "kw_live";
/// Default prefix for keys of a test environment.
pub const PREFIX_TEST: &str = "kw_test";
/// Prefix of root keys, the credentials of keyward's own admin API.
pub const PREFIX_ROOT: &str = "kwroot";

/// Why a string is not a well-formed keyward key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKey {
    /// No underscore separates a prefix from the body.
    #[error("the key has no prefix separator '_'")]
    NoSeparator,
    /// The prefix does not match `[a-z][a-z0-9_]{0,19}`.
    #[error("the key prefix is not of the form [a-z][a-z0-9_]{{0,19}}")]
    BadPrefix,
    /// The body is not 38 base62 characters.
    #[error("the key body is not 38 base62 characters")]
    BadBody,
    /// The checksum does not match the random part.
    #[error("the key checksum does not match")]
    BadChecksum,
}

/// A validated key prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix(String);

impl Prefix {
    /// Validates a prefix against `[a-z][a-z0-9_]{0,19}`.
    pub fn new(prefix: &str) -> Result<Self, MalformedKey> {
        if is_valid_prefix(prefix) {
            Ok(Self(prefix.to_owned()))
        } else {
            Err(MalformedKey::BadPrefix)
        }
    }

    /// The prefix text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_valid_prefix(prefix: &str) -> bool {
    let bytes = prefix.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z'))
        && bytes.len() <= MAX_PREFIX_LEN
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// True if `checksum` is the CRC-32 of `random` in base62 (six digits, zero-padded). The
/// digits are decoded and compared as a number: a CRC-32 has exactly one six-digit form, and
/// decoding costs a third of encoding.
pub(crate) fn checksum_matches(random: &[u8], checksum: &[u8]) -> bool {
    checksum.len() == CHECKSUM_LEN
        && base62::decode(checksum) == Some(u64::from(crc32fast::hash(random)))
}

/// Why `input`, which failed a format check, is malformed: the last underscore splits prefix
/// and body (the body holds none); a prefix that is fine leaves the body at fault.
#[cold]
fn fault(input: &str) -> MalformedKey {
    if input.len() > MAX_KEY_LEN {
        return MalformedKey::BadBody;
    }
    let Some(separator) = input.rfind('_') else {
        return MalformedKey::NoSeparator;
    };
    if !is_valid_prefix(&input[..separator]) {
        return MalformedKey::BadPrefix;
    }
    MalformedKey::BadBody
}

/// A plaintext key, held only long enough to hand it to its owner once.
///
/// It is zeroed on drop, and its `Debug` form shows only the public start, so a stray
/// `{:?}` in a log line or panic message cannot leak it.
pub struct PlaintextKey(Zeroizing<String>);

impl PlaintextKey {
    /// The secret text. Call this only to return the key to the caller who created it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The parsed form; a generated key always parses.
    pub fn parsed(&self) -> Result<ParsedKey<'_>, MalformedKey> {
        ParsedKey::parse(&self.0)
    }
}

impl fmt::Debug for PlaintextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parsed() {
            Ok(parsed) => write!(f, "PlaintextKey({}…)", parsed.start()),
            Err(_) => f.write_str("PlaintextKey(<redacted>)"),
        }
    }
}

/// A key string that has passed the format and checksum checks, borrowed from the input.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    whole: &'a str,
    separator: usize,
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedKey({}…)", self.start())
    }
}

impl<'a> ParsedKey<'a> {
    /// Checks the format and checksum of `input` without allocating.
    pub fn parse(input: &'a str) -> Result<Self, MalformedKey> {
        // The body has a fixed length and holds no underscore, so a well-formed key's separator
        // stands at a fixed distance from the end: no search. An input that fails a format
        // check is malformed, and `fault` (off the hot path) names why.
        let bytes = input.as_bytes();
        let separator = match bytes.len().checked_sub(BODY_LEN + 1) {
            Some(at) if bytes[at] == b'_' && bytes.len() <= MAX_KEY_LEN => at,
            _ => return Err(fault(input)),
        };
        let body = &bytes[separator + 1..];
        if !is_valid_prefix(&input[..separator]) || !base62::all_base62(body) {
            return Err(fault(input));
        }
        let (random, checksum) = body.split_at(RANDOM_LEN);
        if !checksum_matches(random, checksum) {
            return Err(MalformedKey::BadChecksum);
        }
        Ok(Self {
            whole: input,
            separator,
        })
    }

    /// The prefix, without the underscore.
    pub fn prefix(&self) -> &'a str {
        &self.whole[..self.separator]
    }

    /// The public display form: prefix, underscore and the first four random characters.
    pub fn start(&self) -> &'a str {
        &self.whole[..self.separator + 1 + START_RANDOM_CHARS]
    }

    /// The storage hash of the whole key with the current algorithm.
    pub fn hash(&self) -> KeyHash {
        KeyHash::sha256_of(self.whole)
    }
}

/// The stored hash of a key, tagged with its algorithm so it can be migrated later.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyHash {
    /// Version 1: SHA-256 of the whole key string (FIPS 180-4). Keys carry about 190 bits of
    /// entropy, so a fast unsalted hash is enough: a slow password hash would add nothing
    /// against guessing and would cost every verification milliseconds.
    Sha256V1([u8; 32]),
}

/// Errors decoding a stored hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashDecodeError {
    /// The stored version is not one this build knows.
    #[error("unknown key hash version {0}")]
    UnknownVersion(i64),
    /// The stored digest is not the right length or not hex.
    #[error("stored key hash is not valid hex of the right length")]
    BadDigest,
}

impl KeyHash {
    /// The current algorithm's version number, as stored.
    pub const CURRENT_VERSION: i64 = 1;

    /// Hashes a key string with the current algorithm.
    pub fn sha256_of(key: &str) -> Self {
        Self::Sha256V1(Sha256::digest(key.as_bytes()).into())
    }

    /// The version number stored beside the digest.
    pub fn version(&self) -> i64 {
        match self {
            Self::Sha256V1(_) => 1,
        }
    }

    /// The digest bytes.
    pub fn digest(&self) -> &[u8] {
        match self {
            Self::Sha256V1(d) => d,
        }
    }

    /// Lower-case hex of the digest, the stored form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.digest())
    }

    /// Rebuilds a hash from its stored version and hex digest.
    pub fn from_stored(version: i64, digest_hex: &str) -> Result<Self, HashDecodeError> {
        match version {
            1 => {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(digest_hex, &mut digest)
                    .map_err(|_| HashDecodeError::BadDigest)?;
                Ok(Self::Sha256V1(digest))
            }
            other => Err(HashDecodeError::UnknownVersion(other)),
        }
    }

    /// Compares two hashes in constant time: the digests' 64-bit words are XORed and ORed
    /// together with no early exit, and the one comparison at the end goes through `subtle`,
    /// which hides the value from the optimiser (per byte, `subtle` costs ten times more).
    pub fn ct_eq(&self, other: &Self) -> bool {
        let (Self::Sha256V1(a), Self::Sha256V1(b)) = (self, other);
        let mut diff = 0u64;
        for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
            let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().unwrap_or([0; 8]));
            diff |= word(x) ^ word(y);
        }
        bool::from(diff.ct_eq(&0))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not a secret, but there is no reason to print all of it either.
        write!(f, "KeyHash(v{}:{}…)", self.version(), &self.to_hex()[..8])
    }
}

/// The OS random generator failed; no key was made.
#[derive(Debug, thiserror::Error)]
#[error("the random number generator failed")]
pub struct EntropyError;

/// Fills `out` with characters drawn uniformly from the base62 alphabet.
///
/// Each random byte is used only if it is below 248 (= 4 × 62), so `byte % 62` is uniform.
fn fill_base62<R: TryCryptoRng + ?Sized>(rng: &mut R, out: &mut [u8]) -> Result<(), EntropyError> {
    let mut filled = 0;
    // The key's characters come straight from these bytes, so they are wiped on drop too.
    let mut pool = Zeroizing::new([0u8; 64]);
    while filled < out.len() {
        rng.try_fill_bytes(pool.as_mut_slice())
            .map_err(|_| EntropyError)?;
        for &b in pool.iter() {
            if b < base62::REJECTION_BOUND && filled < out.len() {
                out[filled] = base62::ALPHABET[usize::from(b % 62)];
                filled += 1;
            }
        }
    }
    Ok(())
}

/// Generates a new key with the given prefix.
pub fn generate_key<R: TryCryptoRng + ?Sized>(
    prefix: &Prefix,
    rng: &mut R,
) -> Result<PlaintextKey, EntropyError> {
    let mut random = Zeroizing::new([0u8; RANDOM_LEN]);
    fill_base62(rng, random.as_mut_slice())?;
    let checksum =
        base62::encode_padded(u64::from(crc32fast::hash(random.as_slice())), CHECKSUM_LEN);
    let mut key = Zeroizing::new(String::with_capacity(MAX_KEY_LEN));
    key.push_str(prefix.as_str());
    key.push('_');
    // The random part is ASCII by construction.
    key.extend(random.iter().map(|&b| char::from(b)));
    key.push_str(&checksum);
    Ok(PlaintextKey(key))
}

/// Generates a public key identifier: `key_` followed by 20 base62 characters.
pub fn generate_key_id<R: TryCryptoRng + ?Sized>(rng: &mut R) -> Result<String, EntropyError> {
    let mut random = [0u8; KEY_ID_RANDOM_LEN];
    fill_base62(rng, &mut random)?;
    let mut id = String::with_capacity(4 + KEY_ID_RANDOM_LEN);
    id.push_str("key_");
    id.extend(random.iter().map(|&b| char::from(b)));
    Ok(id)
}

/// True if `s` has the shape of a key_id; used to reject junk path parameters early.
pub fn is_key_id(s: &str) -> bool {
    s.strip_prefix("key_")
        .is_some_and(|rest| rest.len() == KEY_ID_RANDOM_LEN && rest.bytes().all(base62::is_base62))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::convert::Infallible;

    /// A deterministic generator for tests: bytes from a fixed script, then a counter.
    pub(crate) struct ScriptedRng {
        pub script: Vec<u8>,
        pub counter: u8,
        pub bytes_drawn: usize,
    }

    impl ScriptedRng {
        pub(crate) fn new(script: Vec<u8>) -> Self {
            Self {
                script,
                counter: 0,
                bytes_drawn: 0,
            }
        }
    }

    impl rand_core::TryRng for ScriptedRng {
        type Error = Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            Ok(0)
        }
        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            Ok(0)
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
            for b in dst {
                *b = if self.script.is_empty() {
                    self.counter = self.counter.wrapping_add(1) % 62;
                    self.counter
                } else {
                    self.script.remove(0)
                };
                self.bytes_drawn += 1;
            }
            Ok(())
        }
    }
    impl rand_core::TryCryptoRng for ScriptedRng {}

    fn make_key(prefix: &str, random: &str) -> String {
        let checksum = base62::encode_padded(u64::from(crc32fast::hash(random.as_bytes())), 6);
        format!("{prefix}_{random}{checksum}")
    }

    #[test]
    fn checksum_is_crc32_ieee_in_base62() {
        // CRC-32/IEEE("123456789") = 0xCBF43926, the standard check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(base62::encode_padded(0xCBF4_3926, 6), "3jZRME");
        let random = "123456789".repeat(4)[..32].to_owned();
        let key = make_key("kw_live", &random);
        let parsed = ParsedKey::parse(&key).unwrap();
        assert_eq!(parsed.prefix(), "kw_live");
        assert_eq!(parsed.start(), "kw_live_1234");
    }

    #[test]
    fn generated_keys_parse_and_have_the_right_shape() {
        let prefix = Prefix::new("kw_test").unwrap();
        let key = generate_key(&prefix, &mut ScriptedRng::new(vec![])).unwrap();
        let text = key.expose();
        assert_eq!(text.len(), "kw_test_".len() + 38);
        let parsed = ParsedKey::parse(text).unwrap();
        assert_eq!(parsed.prefix(), "kw_test");
        assert_eq!(parsed.hash(), KeyHash::sha256_of(text));
    }

    #[test]
    fn sampling_rejects_bytes_at_or_above_248() {
        // 248..=255 must be skipped; 0 -> '0', 61 -> 'z', 62 -> '0', 247 -> 247 % 62 = 61 -> 'z'.
        let mut script = vec![248, 255, 0, 250, 61, 62, 247];
        script.resize(64, 249);
        let mut rng = ScriptedRng::new(script);
        let mut out = [0u8; 4];
        fill_base62(&mut rng, &mut out).unwrap();
        assert_eq!(&out, b"0z0z");
    }

    #[test]
    fn sampling_is_uniform_over_the_alphabet() {
        // Every byte value once: after rejection each of the 62 characters appears exactly 4 times.
        let script: Vec<u8> = (0..=255u8).collect();
        let mut rng = ScriptedRng::new(script);
        let mut out = [0u8; 248];
        fill_base62(&mut rng, &mut out).unwrap();
        let mut counts = [0usize; 62];
        for b in out {
            counts[base62::ALPHABET.iter().position(|&a| a == b).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c == 4), "{counts:?}");
    }

    #[test]
    fn malformed_inputs_are_rejected_with_a_reason() {
        let good = make_key("kw_live", &"a".repeat(32));
        assert!(ParsedKey::parse(&good).is_ok());
        let cases: Vec<(String, MalformedKey)> = vec![
            (String::new(), MalformedKey::NoSeparator),
            ("nounderscore".into(), MalformedKey::NoSeparator),
            (
                good.replacen("kw_live", "Kw_live", 1),
                MalformedKey::BadPrefix,
            ),
            (
                good.replacen("kw_live", "9w_live", 1),
                MalformedKey::BadPrefix,
            ),
            (format!("_{}", &good[8..]), MalformedKey::BadPrefix),
            (good[..good.len() - 1].to_owned(), MalformedKey::BadBody),
            (format!("{good}a"), MalformedKey::BadBody),
            (good.replacen("aaaa", "aa-a", 1), MalformedKey::BadBody),
            (good.replacen("aaaa", "aaab", 1), MalformedKey::BadChecksum),
            // Too long overall: rejected before anything else is looked at.
            (
                format!("{}_{}", "a".repeat(21), &good[8..]),
                MalformedKey::BadBody,
            ),
            ("x".repeat(10_000), MalformedKey::BadBody),
            ("kw_live_ééééééééééééééééééé".into(), MalformedKey::BadBody),
        ];
        for (input, expected) in cases {
            assert_eq!(ParsedKey::parse(&input), Err(expected), "{input}");
        }
    }

    /// `parse` finds the separator by position, not by search: it must answer exactly as the
    /// search-based rule (the last underscore splits prefix and body) for inputs one edit away
    /// from a good key, where the two could differ.
    #[test]
    fn parse_agrees_with_the_last_underscore_rule_one_edit_from_a_good_key() {
        fn by_search(input: &str) -> Result<usize, MalformedKey> {
            if input.len() > MAX_KEY_LEN {
                return Err(MalformedKey::BadBody);
            }
            let separator = input.rfind('_').ok_or(MalformedKey::NoSeparator)?;
            if !is_valid_prefix(&input[..separator]) {
                return Err(MalformedKey::BadPrefix);
            }
            let body = &input.as_bytes()[separator + 1..];
            if body.len() != BODY_LEN || !body.iter().all(|b| b.is_ascii_alphanumeric()) {
                return Err(MalformedKey::BadBody);
            }
            let random = &body[..RANDOM_LEN];
            let expected = base62::encode_padded(u64::from(crc32fast::hash(random)), CHECKSUM_LEN);
            if expected.as_bytes() != &body[RANDOM_LEN..] {
                return Err(MalformedKey::BadChecksum);
            }
            Ok(separator)
        }
        let mut inputs = Vec::new();
        for prefix in ["kw_live", "k", &"a".repeat(20), "my_co_prod_v2"] {
            let good = make_key(prefix, &"aB3".repeat(11)[..32]);
            inputs.push(good.clone());
            for at in 0..=good.len() {
                for c in ["_", "-", "a", "Z", "0", "é", ""] {
                    let mut edited = good.clone();
                    edited.insert_str(at, c);
                    inputs.push(edited);
                    if at < good.len() {
                        let mut replaced = good.clone();
                        replaced.replace_range(at..=at, c);
                        inputs.push(replaced);
                    }
                }
            }
        }
        for input in &inputs {
            let parsed = ParsedKey::parse(input).map(|p| p.separator);
            assert_eq!(parsed, by_search(input), "{input:?}");
        }
    }

    #[test]
    fn prefix_is_parsed_by_the_last_underscore() {
        let key = make_key("my_co_prod_v2", &"Z".repeat(32));
        assert_eq!(ParsedKey::parse(&key).unwrap().prefix(), "my_co_prod_v2");
        let longest = make_key(&"a".repeat(20), &"Z".repeat(32));
        assert!(ParsedKey::parse(&longest).is_ok());
        assert_eq!(Prefix::new(&"a".repeat(21)), Err(MalformedKey::BadPrefix));
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let key = generate_key(
            &Prefix::new("kw_live").unwrap(),
            &mut ScriptedRng::new(vec![]),
        )
        .unwrap();
        let debug = format!("{key:?} {:?}", key.parsed().unwrap());
        assert!(!debug.contains(key.expose()));
        assert!(debug.contains(key.parsed().unwrap().start()));
    }

    /// Hashes that differ in any one bit of any byte are unequal (the comparison works on
    /// 64-bit words, so every word and every byte position within one is covered).
    #[test]
    fn ct_eq_sees_a_single_bit_anywhere() {
        let KeyHash::Sha256V1(digest) = KeyHash::sha256_of("kw_live_x");
        for byte in 0..32 {
            for bit in [0x01u8, 0x80] {
                let mut other = digest;
                other[byte] ^= bit;
                let (a, b) = (KeyHash::Sha256V1(digest), KeyHash::Sha256V1(other));
                assert!(!a.ct_eq(&b), "byte {byte} bit {bit:#x}");
                assert!(a.ct_eq(&KeyHash::Sha256V1(digest)));
            }
        }
    }

    #[test]
    fn hash_round_trips_through_its_stored_form() {
        let hash = KeyHash::sha256_of("kw_live_x");
        let back = KeyHash::from_stored(hash.version(), &hash.to_hex()).unwrap();
        assert!(hash.ct_eq(&back));
        assert_eq!(
            KeyHash::from_stored(2, &hash.to_hex()),
            Err(HashDecodeError::UnknownVersion(2))
        );
        assert_eq!(
            KeyHash::from_stored(1, "zz"),
            Err(HashDecodeError::BadDigest)
        );
        assert!(!hash.ct_eq(&KeyHash::sha256_of("kw_live_y")));
    }

    #[test]
    fn key_ids_have_their_shape() {
        let id = generate_key_id(&mut ScriptedRng::new(vec![])).unwrap();
        assert!(is_key_id(&id), "{id}");
        assert!(!is_key_id("key_short"));
        assert!(!is_key_id(&format!("kex_{}", &id[4..])));
    }
}
