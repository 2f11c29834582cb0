//! The body of a `POST /v1/keys/verify` answer, written straight from the engine's
//! [`Verification`] into one pre-sized buffer.
//!
//! Building the [`VerifyKeyResponse`] wire struct first cloned every string of the key (and
//! its `meta` map) only to serialise and drop them, and serde's writer went through a
//! `BytesMut` adapter a few bytes at a time: a profile of the verify endpoint put that at an
//! eighth of the request's instructions. The bytes written here are exactly
//! `serde_json::to_vec(&verify_response(v))` (the struct stays the documented schema and the
//! reference): the tests below compare the two for every field, absent and present, and for
//! strings that need escaping.
//!
//! [`VerifyKeyResponse`]: keyward_wire::VerifyKeyResponse

use keyward_core::verify::VerifyCode;
use keyward_engine::{Degraded, Verification};
use keyward_wire::Timestamp;

/// Room for a typical answer (a key with a few permissions and limits) without regrowing.
const TYPICAL_BYTES: usize = 640;

/// The JSON body of the verify answer for `v`.
pub(crate) fn verify_body(v: &Verification) -> Vec<u8> {
    let mut out = Vec::with_capacity(TYPICAL_BYTES);
    let w = &mut out;
    w.extend_from_slice(if v.code == VerifyCode::Valid {
        b"{\"valid\":true"
    } else {
        b"{\"valid\":false"
    });
    field_str(w, "code", v.code.as_str());
    if let Some(key) = v.key.as_deref() {
        field_str(w, "key_id", &key.key_id);
        field_str(w, "owner", &key.owner);
        if let Some(name) = &key.name {
            field_str(w, "name", name);
        }
        if let Some(tenant) = &key.tenant {
            field_str(w, "tenant", tenant);
        }
        field_str(w, "environment", &key.environment);
        name(w, "permissions");
        w.push(b'[');
        for (i, p) in key.permissions.iter().enumerate() {
            if i > 0 {
                w.push(b',');
            }
            string(w, p.as_str());
        }
        w.push(b']');
        name(w, "meta");
        serde(w, &key.meta);
        if let Some(expires_at) = key.expires_at {
            name(w, "expires_at");
            serde(w, &Timestamp(expires_at));
        }
    }
    if let Some(until) = v.deprecated_until {
        name(w, "rotation");
        w.extend_from_slice(b"{\"deprecated\":true,\"expires_at\":");
        serde(w, &Timestamp(until));
        w.push(b'}');
    }
    if !v.limits.is_empty() {
        name(w, "limits");
        w.push(b'[');
        for (i, limit) in v.limits.iter().enumerate() {
            if i > 0 {
                w.push(b',');
            }
            w.extend_from_slice(b"{\"name\":");
            string(w, &limit.name);
            field_u64(w, "limit", limit.limit);
            field_u64(w, "period_seconds", limit.period_seconds);
            field_u64(w, "remaining", limit.remaining);
            field_u64(w, "reset", limit.reset_seconds);
            w.push(b'}');
        }
        w.push(b']');
    }
    if let Some(credits) = v.credits_remaining {
        field_u64(w, "credits_remaining", credits);
    }
    if let Some(retry_after) = v.retry_after {
        field_u64(w, "retry_after", retry_after);
    }
    if let Some(enforcement) = &v.enforcement {
        name(w, "enforcement");
        w.extend_from_slice(b"{\"source\":");
        string(w, enforcement.source.as_str());
        field_str(w, "reason", &enforcement.reason);
        w.push(b'}');
    }
    if let Some(degraded) = v.degraded {
        name(w, "degraded");
        w.extend_from_slice(b"{\"reason\":");
        string(w, degraded.reason());
        if let Degraded::StaleCache { age_seconds } = degraded {
            field_u64(w, "age_seconds", age_seconds);
        }
        w.push(b'}');
    }
    w.push(b'}');
    out
}

/// `,"name":` (every field but the first, which the caller writes with the opening brace).
fn name(w: &mut Vec<u8>, name: &str) {
    w.extend_from_slice(b",\"");
    w.extend_from_slice(name.as_bytes());
    w.extend_from_slice(b"\":");
}

fn field_str(w: &mut Vec<u8>, field: &str, value: &str) {
    name(w, field);
    string(w, value);
}

fn field_u64(w: &mut Vec<u8>, field: &str, value: u64) {
    name(w, field);
    w.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// A JSON string: copied as it is when nothing in it needs escaping (the common case: ids,
/// names and codes), else escaped by serde_json, so the rules are serde_json's own.
fn string(w: &mut Vec<u8>, value: &str) {
    if value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        serde(w, value);
    } else {
        w.push(b'"');
        w.extend_from_slice(value.as_bytes());
        w.push(b'"');
    }
}

fn serde<T: serde::Serialize + ?Sized>(w: &mut Vec<u8>, value: &T) {
    // Writing to a Vec cannot fail, and these values (strings, a JSON map, a timestamp that
    // came out of the store) always serialise; a failure would leave the field out, which the
    // equality tests would catch.
    let _ = serde_json::to_writer(w, value);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyward_core::record::KeyRecord;
    use keyward_engine::{Enforcement, EnforcementSource, LimitReport};
    use time::macros::datetime;

    use super::*;
    use keyward_wire::{DegradedAnswer, RotationHint, VerifyKeyResponse};

    /// The reference: the documented wire struct, built as the handler built it before.
    fn verify_response(v: &Verification) -> VerifyKeyResponse {
        let key = v.key.as_deref();
        VerifyKeyResponse {
            valid: v.code == VerifyCode::Valid,
            code: v.code.as_str().to_owned(),
            key_id: key.map(|k| k.key_id.clone()),
            owner: key.map(|k| k.owner.clone()),
            name: key.and_then(|k| k.name.clone()),
            tenant: key.and_then(|k| k.tenant.clone()),
            environment: key.map(|k| k.environment.clone()),
            permissions: key.map(|k| k.permissions.iter().map(ToString::to_string).collect()),
            meta: key.map(|k| k.meta.clone()),
            expires_at: key.and_then(|k| k.expires_at).map(Timestamp),
            rotation: v.deprecated_until.map(|t| RotationHint {
                deprecated: true,
                expires_at: Timestamp(t),
            }),
            limits: v
                .limits
                .iter()
                .map(|r| keyward_wire::LimitState {
                    name: r.name.clone(),
                    limit: r.limit,
                    period_seconds: r.period_seconds,
                    remaining: r.remaining,
                    reset: r.reset_seconds,
                })
                .collect(),
            credits_remaining: v.credits_remaining,
            retry_after: v.retry_after,
            enforcement: v.enforcement.as_ref().map(|e| keyward_wire::Enforcement {
                source: e.source.as_str().to_owned(),
                reason: e.reason.clone(),
            }),
            degraded: v.degraded.map(|d| DegradedAnswer {
                reason: d.reason().to_owned(),
                age_seconds: match d {
                    Degraded::StaleCache { age_seconds } => Some(age_seconds),
                    Degraded::FailOpenUnknownKey => None,
                },
            }),
        }
    }

    /// Strings that must be escaped, and ones that must not be.
    const AWKWARD: [&str; 6] = [
        "plain",
        "quote \" and backslash \\",
        "control \u{1}\u{1f} newline\n tab\t",
        "unicode é ✓ 🚀 and \u{7f}",
        "",
        "</script>",
    ];

    fn assert_same(v: &Verification) {
        let reference = serde_json::to_vec(&verify_response(v)).unwrap();
        let written = verify_body(v);
        assert_eq!(
            String::from_utf8(written).unwrap(),
            String::from_utf8(reference).unwrap()
        );
    }

    fn bare(code: VerifyCode) -> Verification {
        Verification {
            code,
            key: None,
            deprecated_until: None,
            limits: Vec::new(),
            credits_remaining: None,
            retry_after: None,
            quota: None,
            enforcement: None,
            degraded: None,
        }
    }

    fn record(text: &str) -> KeyRecord {
        KeyRecord {
            owner: text.to_owned(),
            environment: format!("env {text}"),
            ..KeyRecord::sample(datetime!(2026-01-01 00:00:00 UTC))
        }
    }

    #[test]
    fn every_code_without_a_key() {
        for code in VerifyCode::ALL {
            assert_same(&bare(code));
        }
    }

    #[test]
    fn a_key_with_every_optional_field_absent_and_present() {
        for text in AWKWARD {
            let mut v = bare(VerifyCode::Valid);
            v.key = Some(Arc::new(record(text)));
            assert_same(&v);

            let mut full = record(text);
            full.name = Some(format!("name {text}"));
            full.tenant = Some(format!("tenant {text}"));
            full.meta.insert(
                text.to_owned(),
                serde_json::json!({"nested": [text, 1, null]}),
            );
            full.permissions = vec![
                keyward_core::permission::Permission::new("orders.read").unwrap(),
                keyward_core::permission::Permission::new("admin.*").unwrap(),
            ];
            full.expires_at = Some(datetime!(2031-02-03 04:05:06.789 UTC));
            v.key = Some(Arc::new(full));
            v.deprecated_until = Some(datetime!(2030-01-01 00:00:00 UTC));
            v.limits = vec![
                LimitReport {
                    name: format!("per {text}"),
                    limit: u64::MAX,
                    period_seconds: 1,
                    remaining: 0,
                    reset_seconds: 17,
                },
                LimitReport {
                    name: "per_day".into(),
                    limit: 10,
                    period_seconds: 86_400,
                    remaining: 9,
                    reset_seconds: 0,
                },
            ];
            v.credits_remaining = Some(0);
            v.retry_after = Some(u64::MAX);
            v.enforcement = Some(Enforcement {
                source: EnforcementSource::LocalFirst,
                reason: format!("because {text}"),
            });
            for degraded in [
                Degraded::StaleCache { age_seconds: 42 },
                Degraded::FailOpenUnknownKey,
            ] {
                v.degraded = Some(degraded);
                assert_same(&v);
            }
        }
    }
}
