//! The `Keyward-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256>`, the MAC taken with
//! the webhook secret over `<t>.<body>` (the decimal timestamp, a full stop, the raw body).
//!
//! A receiver verifies by recomputing the MAC over the exact bytes it received, comparing in
//! constant time, and refusing timestamps outside its replay window ([`verify`] does all
//! three). Several `v1=` entries may appear while a secret is being changed; any match passes.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Name of the header carrying the signature.
pub const SIGNATURE_HEADER: &str = "keyward-signature";

/// Replay window a receiver should use unless it has reasons for another: five minutes.
pub const DEFAULT_TOLERANCE_SECONDS: u64 = 300;

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=...,v1=...`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is outside the replay window.
    #[error("signature timestamp outside the replay window")]
    Stale,
    /// No `v1` MAC matches.
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable_hmac());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    // `new_from_slice` only fails for MACs with a fixed key size; HMAC has none. A fixed
    // non-secret key keeps this total without a panic.
    <Hmac<Sha256> as KeyInit>::new(&Default::default())
}

/// The header value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Checks a received header against `body`, with `now` and `tolerance_seconds` bounding the
/// timestamp in both directions (replay and clock skew).
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_seconds: u64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => tags.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(timestamp) > tolerance_seconds {
        return Err(SignatureError::Stale);
    }
    let expected = mac(secret, timestamp, body);
    // `verify_slice` compares in constant time.
    if tags
        .iter()
        .any(|tag| expected.clone().verify_slice(tag).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_secret_only() {
        let body = br#"{"type":"key_revoked"}"#;
        let header = sign(b"s3cret", 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(verify(b"s3cret", &header, body, 1_700_000_010, 300), Ok(()));
        assert_eq!(
            verify(b"wrong", &header, body, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"s3cret", &header, b"{}", 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"s3cret", &header, body, 1_700_000_301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(b"s3cret", "v1=00", body, 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn matches_an_independent_hmac_sha256() {
        // The header is plain HMAC-SHA256 over `<t>.<body>`, so any HMAC library verifies it.
        let header = sign(b"Jefe", 0, b"body");
        let mut reference = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        reference.update(b"0.body");
        let tag = hex::encode(reference.finalize().into_bytes());
        assert_eq!(header, format!("t=0,v1={tag}"));
    }
}
