//! Redaction of anything shaped like a keyward key in free text: a last line of defence for
//! error messages and log lines that quote user input.
//!
//! It is deliberately broader than the key format: any underscore-separated segment of 32 or
//! more ASCII letters and digits inside a run of `[A-Za-z0-9_]` gets the whole run replaced,
//! checksum or not, so a key with a typo or a truncated copy is hidden too.

use std::borrow::Cow;

use crate::key::RANDOM_LEN;

/// What a redacted run is replaced with.
pub const REDACTED: &str = "[REDACTED]";

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn looks_secret(run: &str) -> bool {
    run.contains('_') && run.split('_').any(|segment| segment.len() >= RANDOM_LEN)
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
        if run.len() > RANDOM_LEN && looks_secret(run) {
            let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
            buf.push_str(&text[copied..start]);
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

    #[test]
    fn keys_are_redacted_wherever_they_appear() {
        let key = "kw_live_AbCdEfGhIjKlMnOpQrStUvWxYz01234567abcd";
        let text = format!("invalid type: string \"{key}\", expected i64; again:{key}.");
        let redacted = redact(&text);
        assert!(!redacted.contains("AbCdEfGh"), "{redacted}");
        assert_eq!(redacted.matches(REDACTED).count(), 2);
        assert!(redacted.starts_with("invalid type: string \"[REDACTED]\""));
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
