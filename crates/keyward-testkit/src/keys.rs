//! Well-formed keys for leak checks: a key no server has issued, and the part of a key that
//! must never appear in any output.

use keyward_core::key::{Prefix, generate_key};

/// A fresh, well-formed key (valid prefix and checksum) with `prefix` that no server has
/// ever seen.
pub fn stranger(prefix: &str) -> String {
    let prefix = Prefix::new(prefix).unwrap();
    generate_key(&prefix, &mut rand::rngs::SysRng)
        .unwrap()
        .expose()
        .to_owned()
}

/// The 32 random characters of a key: what must not appear anywhere, whatever surrounds it.
pub fn secret_part(key: &str) -> &str {
    let body = &key[key.rfind('_').unwrap() + 1..];
    &body[..32]
}

/// Whether `haystack` holds `needle`'s bytes anywhere.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Fails, naming `channel`, if `output` holds the secret part of any of `keys`.
pub fn assert_no_key(channel: &str, output: &[u8], keys: &[String]) {
    for key in keys {
        assert!(
            !contains(output, secret_part(key)),
            "{channel} contains the key {key}:\n{}",
            String::from_utf8_lossy(output)
        );
    }
}
