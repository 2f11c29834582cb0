//! The key parser and its friends: `ParsedKey::parse`, `Prefix::new`, `is_key_id`,
//! `KeyHash::from_stored`, and the redactor that hides key-shaped text in logs.
//!
//! Oracles beyond "no panic": a key that parses starts with a valid prefix and is hidden by the
//! redactor; redaction is idempotent; a key generated from the input parses, and changing any one
//! character of its body makes it fail the checksum (CRC-32 catches every single-byte change);
//! a generated key is hidden wherever it is embedded in the input text.

#![no_main]

use keyward_core::base62::ALPHABET;
use keyward_core::key::{
    self, CHECKSUM_LEN, KeyHash, MalformedKey, ParsedKey, Prefix, RANDOM_LEN, START_RANDOM_CHARS,
};
use keyward_core::redact::redact;
use keyward_fuzz::InputRng;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(parsed) = ParsedKey::parse(text) {
        let prefix = parsed.prefix();
        assert!(
            Prefix::new(prefix).is_ok(),
            "parsed prefix {prefix:?} is not valid"
        );
        assert!(text.starts_with(parsed.start()));
        assert_eq!(parsed.start().len(), prefix.len() + 1 + START_RANDOM_CHARS);
        let hash = parsed.hash();
        assert_eq!(
            KeyHash::from_stored(hash.version(), &hash.to_hex()),
            Ok(hash)
        );
        let body = &text[prefix.len() + 1..];
        assert!(
            !redact(text).contains(body),
            "a valid key survived redaction"
        );
    }
    let _ = Prefix::new(text);
    let _ = key::is_key_id(text);
    let _ = KeyHash::from_stored(i64::from(data.first().copied().unwrap_or(1) % 3), text);

    let once = redact(text);
    assert_eq!(redact(&once), once, "redaction is not idempotent");

    // A key generated from this input, with the first line as prefix when it is a valid one.
    let mut rng = InputRng::new(data);
    let prefix = text
        .lines()
        .next()
        .and_then(|l| Prefix::new(l).ok())
        .unwrap_or_else(|| Prefix::new(key::PREFIX_LIVE).expect("constant prefix"));
    let generated = key::generate_key(&prefix, &mut rng).expect("InputRng never fails");
    let whole = generated.expose();
    let parsed = ParsedKey::parse(whole).expect("a generated key parses");
    assert_eq!(parsed.prefix(), prefix.as_str());
    let body_at = prefix.as_str().len() + 1;
    assert_eq!(whole.len(), body_at + RANDOM_LEN + CHECKSUM_LEN);

    let pick = rng.next();
    let at = body_at + (pick % (RANDOM_LEN + CHECKSUM_LEN) as u64) as usize;
    let replacement = ALPHABET[((pick >> 8) % 62) as usize];
    if whole.as_bytes()[at] != replacement {
        let mut changed = whole.as_bytes().to_vec();
        changed[at] = replacement;
        let changed = String::from_utf8(changed).expect("base62 is ASCII");
        assert_eq!(
            ParsedKey::parse(&changed).err(),
            Some(MalformedKey::BadChecksum),
            "a one-character change to the body went unnoticed"
        );
    }

    let random = &whole[body_at..body_at + RANDOM_LEN];
    if !text.contains(random) {
        let cut = text
            .char_indices()
            .nth(text.chars().count() / 2)
            .map_or(0, |(i, _)| i);
        let embedded = format!("{}{whole}{}", &text[..cut], &text[cut..]);
        assert!(
            !redact(&embedded).contains(random),
            "a key embedded in text survived redaction"
        );
    }
});
