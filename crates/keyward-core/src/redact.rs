//! Redaction of anything shaped like a keyward key in free text: a last line of defence for
//! error messages and log lines that quote user input.
//!
//! It is deliberately broader than the key format. Two rules, applied to every run of
//! `[A-Za-z0-9_]` (the whole run is replaced):
//! - an underscore-separated segment of 32 or more ASCII letters and digits, checksum or not,
//!   so a key with a typo or a truncated copy is hidden too;
//! - any 38 consecutive letters and digits that form a key body with a valid checksum, with or
//!   without an underscore, so a key whose separator was escaped (`kw_live%5F...` in a URL, or
//!   glued to the `n` of a JSON `\n` or the `m` of an ANSI colour code) is still found.
//!
//! Letters, digits and the underscore are never escaped by JSON, `Debug`, percent-encoding or
//! ANSI styling, so a key written through any of them stays one contiguous run here. What this
//! cannot see is a key whose body is itself split or re-encoded (base64, a byte array, a hex
//! dump, a line break inside it).

use std::borrow::Cow;

use crate::key::{CHECKSUM_LEN, RANDOM_LEN};

/// What a redacted run is replaced with.
pub const REDACTED: &str = "[REDACTED]";

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn looks_secret(run: &str) -> bool {
    (run.contains('_') && run.split('_').any(|segment| segment.len() >= RANDOM_LEN))
        || run.split('_').any(contains_key_body)
}

/// True if some 38 consecutive characters of `segment` (letters and digits only) are a key
/// body: 32 random characters followed by their CRC-32 in base62.
fn contains_key_body(segment: &str) -> bool {
    const BODY: usize = RANDOM_LEN + CHECKSUM_LEN;
    let bytes = segment.as_bytes();
    if bytes.len() < BODY {
        return false;
    }
    bytes.windows(BODY).any(|window| {
        let (random, checksum) = window.split_at(RANDOM_LEN);
        crate::key::checksum_matches(random, checksum)
    })
}

/// Length of the escape sequence (after its backslash) at the start of `run`: 5 for `u` and four
/// hex digits, else 1.
fn escape_len(run: &str) -> usize {
    let bytes = run.as_bytes();
    if bytes.len() >= 5 && bytes[0] == b'u' && bytes[1..5].iter().all(u8::is_ascii_hexdigit) {
        5
    } else {
        1
    }
}

/// Returns `text` with key-shaped runs replaced by [`REDACTED`]; borrows when nothing matched.
pub fn redact(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !is_word_byte(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_word_byte(bytes[i]) {
            i += 1;
        }
        // Word bytes are ASCII, so these are char boundaries.
        let run = &text[start..i];
        if run.len() >= RANDOM_LEN && looks_secret(run) {
            // Keep the letters of an escape sequence the run starts with (`\n`, `\u00e9`), so
            // redacting an escaped line (JSON, Debug) leaves it well-formed.
            let keep = if start > 0 && bytes[start - 1] == b'\\' {
                escape_len(run)
            } else {
                0
            };
            let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
            buf.push_str(&text[copied..start + keep]);
            buf.push_str(REDACTED);
            copied = i;
        }
    }
    match out {
        Some(mut buf) => {
            buf.push_str(&text[copied..]);
            Cow::Owned(buf)
        }
        None => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base62;

    #[test]
    fn keys_are_redacted_wherever_they_appear() {
        let key = "kw_live_AbCdEfGhIjKlMnOpQrStUvWxYz01234567abcd";
        let text = format!("invalid type: string \"{key}\", expected i64; again:{key}.");
        let redacted = redact(&text);
        assert!(!redacted.contains("AbCdEfGh"), "{redacted}");
        assert_eq!(redacted.matches(REDACTED).count(), 2);
        assert!(redacted.starts_with("invalid type: string \"[REDACTED]\""));
    }

    /// A real, checksum-valid key body (random part and checksum).
    fn body() -> String {
        let random = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";
        let checksum = base62::encode_padded(u64::from(crc32fast::hash(random.as_bytes())), 6);
        format!("{random}{checksum}")
    }

    #[test]
    fn a_key_body_is_found_whatever_its_separator_became() {
        let body = body();
        for text in [
            format!("GET /v1/keys/kw_live%5F{body}?x=1"),
            format!("{{\"msg\":\"line\\n{body}\"}}"),
            format!("\u{1b}[3m{body}\u{1b}[0m"),
            format!("({body})"),
            format!("xx{body}yy"),
        ] {
            let redacted = redact(&text);
            assert!(!redacted.contains(&body), "{text} -> {redacted}");
            assert!(redacted.contains(REDACTED), "{redacted}");
        }
    }

    #[test]
    fn escape_sequences_before_a_key_survive_so_json_stays_valid() {
        let key = format!("kw_live_{}", body());
        for (text, expected) in [
            (format!("a\\n{key}"), "a\\n[REDACTED]"),
            (format!("a\\t{key}"), "a\\t[REDACTED]"),
            (format!("a\\u00e9{key}"), "a\\u00e9[REDACTED]"),
            (format!("a\\\"{key}\\\""), "a\\\"[REDACTED]\\\""),
        ] {
            assert_eq!(redact(&text), expected);
        }
    }

    #[test]
    fn long_alphanumeric_runs_without_a_checksum_are_kept() {
        // A SHA-256 in hex, as in audit chain hashes: no underscore, no key body.
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert!(matches!(redact(hash), Cow::Borrowed(_)));
    }

    #[test]
    fn ordinary_text_is_untouched() {
        for text in [
            "key_id key_AbCdEfGhIjKlMnOpQrSt not found",
            "orders.read AND admin.*",
            "ünïcödé_text",
            "",
        ] {
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text}");
        }
    }
}
