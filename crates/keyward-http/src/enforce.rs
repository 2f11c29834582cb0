//! Turning a verification into an HTTP answer at the edge: the status and problem code for a
//! refusal, the identity headers for an admitted request, and the IETF RateLimit headers
//! (draft-ietf-httpapi-ratelimit-headers) plus `Retry-After`. Shared by `/v1/auth` (nginx
//! `auth_request`) and the gateway.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_core::path::PathError;
use keyward_core::verify::VerifyCode;
use keyward_engine::Verification;

use crate::error::ApiError;

/// Header carrying the verify code on every `/v1/auth` and gateway answer.
pub const CODE_HEADER: &str = "x-keyward-code";
/// Identity headers added to admitted requests.
pub const KEY_ID_HEADER: &str = "x-keyward-key-id";
/// The key's owner.
pub const OWNER_HEADER: &str = "x-keyward-owner";
/// The key's tenant (absent if it has none).
pub const TENANT_HEADER: &str = "x-keyward-tenant";
/// Alternative to `Authorization: Bearer` for presenting a key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// True for a name in keyward's `X-Keyward-*` family, in any case and with `_` for `-`:
/// CGI-style upstreams (and frameworks on them) read `X_Keyward_Owner` as `X-Keyward-Owner`,
/// so a client must not be able to send either.
pub fn is_keyward_header(name: &str) -> bool {
    const PREFIX: &[u8] = b"x-keyward-";
    name.len() >= PREFIX.len()
        && name
            .bytes()
            .zip(PREFIX)
            .all(|(a, &b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

/// The key a client presented: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    presented_key_in(|name| headers.get(name).and_then(|v| v.to_str().ok()))
}

/// The same rule over any header lookup (`name` is lower-case), for Envoy's header map.
pub fn presented_key_in<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
    let bearer = header("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    bearer.or_else(|| header(API_KEY_HEADER).map(str::trim))
}

/// The problem code and status of a refused verification (`None` for VALID).
pub fn refusal(code: VerifyCode) -> Option<ApiError> {
    let (problem, detail) = match code {
        VerifyCode::Valid => return None,
        VerifyCode::Malformed => (
            "malformed_key",
            "the API key is not a well-formed keyward key",
        ),
        VerifyCode::NotFound => ("unknown_key", "the API key is not recognized"),
        VerifyCode::Revoked => ("revoked_key", "the API key was revoked"),
        VerifyCode::Expired => ("expired_key", "the API key has expired"),
        VerifyCode::Disabled => ("disabled_key", "the API key is disabled"),
        VerifyCode::TenantNotAllowed => (
            "tenant_not_allowed",
            "this endpoint requires a key of another tenant",
        ),
        VerifyCode::EnvironmentNotAllowed => (
            "environment_not_allowed",
            "this endpoint requires a key of another environment",
        ),
        VerifyCode::InsufficientPermissions => (
            "insufficient_permissions",
            "the API key lacks a permission this endpoint needs",
        ),
        VerifyCode::RouteNotAllowed => (
            "route_not_allowed",
            "the API key may not call this endpoint",
        ),
        VerifyCode::IpNotAllowed => (
            "ip_not_allowed",
            "the API key may not be used from this address",
        ),
        VerifyCode::OriginNotAllowed => (
            "origin_not_allowed",
            "the API key may not be used from this origin",
        ),
        VerifyCode::RateLimited => (
            "rate_limited",
            "a rate limit of the API key was reached; retry after Retry-After seconds",
        ),
        VerifyCode::UsageExceeded => ("usage_exceeded", "the API key's quota is used up"),
    };
    Some(ApiError::new(problem, detail))
}

/// `X-Keyward-Code` of a request refused because its path cannot be normalised safely (not a
/// verify code: no key is looked up for such a request).
pub const INVALID_PATH_CODE: &str = "INVALID_PATH";

/// The refusal of a request whose path cannot be normalised safely: `invalid_request` with
/// `X-Keyward-Code: INVALID_PATH`, at the code's 400 unless `status` says otherwise (`/v1/auth`
/// answers 403, the only refusal status nginx passes on).
pub fn invalid_path(error: PathError, status: Option<StatusCode>) -> Response {
    let problem = ApiError::new(
        "invalid_request",
        format!("the request path cannot be checked safely: {error}"),
    );
    let mut response = match status {
        Some(status) => problem.with_status(status),
        None => problem,
    }
    .into_response();
    insert(response.headers_mut(), CODE_HEADER, INVALID_PATH_CODE);
    response
}

/// The answer for a request that presented no key.
pub fn missing_key() -> ApiError {
    ApiError::new(
        "missing_key",
        "send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    )
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// The prefix of an encoded header value (RFC 8187's `ext-value` with the UTF-8 charset and
/// no language).
pub const ENCODED_PREFIX: &str = "utf-8''";

/// A free-text value (an owner) as a header value. Printable ASCII goes as it is; anything
/// else, or a value that itself starts with the prefix, goes as RFC 8187 `ext-value`:
/// `utf-8''` and the UTF-8 bytes percent-encoded except `attr-char`s, so `Zoë Ltd` is
/// `utf-8''Zo%C3%AB%20Ltd`. A reader decodes a value that starts with `utf-8''` and takes
/// any other as it is; the two cannot be confused.
pub fn header_text(value: &str) -> String {
    use std::fmt::Write as _;
    let printable = value.bytes().all(|b| (0x20..0x7f).contains(&b));
    let looks_encoded = value
        .get(..ENCODED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(ENCODED_PREFIX));
    if printable && !looks_encoded {
        return value.to_owned();
    }
    let mut out = String::with_capacity(ENCODED_PREFIX.len() + value.len() * 3);
    out.push_str(ENCODED_PREFIX);
    for b in value.bytes() {
        // RFC 8187 attr-char: ALPHA / DIGIT / "!" / "#" / "$" / "&" / "+" / "-" / "." /
        // "^" / "_" / "`" / "|" / "~".
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Adds the verify code, identity (if admitted), RateLimit fields and Retry-After.
pub fn decorate(headers: &mut HeaderMap, v: &Verification) {
    insert(headers, CODE_HEADER, v.code.as_str());
    if let Some(key) = v.key.as_deref().filter(|_| v.code == VerifyCode::Valid) {
        insert(headers, KEY_ID_HEADER, &key.key_id);
        insert(headers, OWNER_HEADER, &header_text(&key.owner));
        if let Some(tenant) = &key.tenant {
            insert(headers, TENANT_HEADER, tenant);
        }
    }
    // Each limit is a policy item; `r` is capped at `q` (a burst above the steady rate is
    // spendable at once, but the field's quota is the steady `limit` per window). Both fields
    // are written into one buffer each: this runs on every gateway and auth_request answer,
    // and a `format!` per item and a join cost more than the rest of the headers together.
    if v.limits.is_empty() && v.quota.is_none() {
        if let Some(retry) = v.retry_after {
            insert(headers, "retry-after", itoa::Buffer::new().format(retry));
        }
        return;
    }
    let items = v.limits.len() + usize::from(v.quota.is_some());
    let mut policy = String::with_capacity(40 * items);
    let mut state = String::with_capacity(40 * items);
    for l in &v.limits {
        ratelimit_item(
            &mut policy,
            &l.name,
            ('q', l.limit),
            Some(('w', l.period_seconds)),
        );
        ratelimit_item(
            &mut state,
            &l.name,
            ('r', l.remaining.min(l.limit)),
            Some(('t', l.reset_seconds)),
        );
    }
    if let Some(q) = &v.quota {
        ratelimit_item(
            &mut policy,
            "quota",
            ('q', q.quota),
            q.window_seconds.map(|w| ('w', w)),
        );
        let reset = match (v.code, v.retry_after) {
            (VerifyCode::UsageExceeded, Some(retry)) => Some(retry),
            _ => q.reset_seconds,
        };
        ratelimit_item(
            &mut state,
            "quota",
            ('r', q.remaining.min(q.quota)),
            reset.map(|t| ('t', t)),
        );
    }
    insert(headers, "ratelimit-policy", &policy);
    insert(headers, "ratelimit", &state);
    if let Some(retry) = v.retry_after {
        insert(headers, "retry-after", itoa::Buffer::new().format(retry));
    }
}

/// Appends one item of a RateLimit field (`"name";a=1;b=2`), after `, ` unless it is the first.
fn ratelimit_item(out: &mut String, name: &str, first: (char, u64), second: Option<(char, u64)>) {
    if !out.is_empty() {
        out.push_str(", ");
    }
    out.push('"');
    out.push_str(name);
    out.push('"');
    for (param, value) in std::iter::once(first).chain(second) {
        out.push(';');
        out.push(param);
        out.push('=');
        out.push_str(itoa::Buffer::new().format(value));
    }
}

/// The status a refusal gets at the edge.
pub fn status(code: VerifyCode) -> StatusCode {
    match code {
        VerifyCode::Valid => StatusCode::OK,
        VerifyCode::Malformed
        | VerifyCode::NotFound
        | VerifyCode::Revoked
        | VerifyCode::Expired
        | VerifyCode::Disabled => StatusCode::UNAUTHORIZED,
        VerifyCode::TenantNotAllowed
        | VerifyCode::EnvironmentNotAllowed
        | VerifyCode::InsufficientPermissions
        | VerifyCode::RouteNotAllowed
        | VerifyCode::IpNotAllowed
        | VerifyCode::OriginNotAllowed => StatusCode::FORBIDDEN,
        VerifyCode::RateLimited | VerifyCode::UsageExceeded => StatusCode::TOO_MANY_REQUESTS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keyward_family_in_every_spelling() {
        for name in [
            "x-keyward-code",
            "X-Keyward-Owner",
            "x_keyward_tenant",
            "X_KEYWARD-",
            "x-keyward_x",
        ] {
            assert!(is_keyward_header(name), "{name}");
        }
        for name in [
            "x-keyward",
            "x-keywardx-a",
            "keyward-owner",
            "x-api-key",
            "",
        ] {
            assert!(!is_keyward_header(name), "{name}");
        }
    }

    #[test]
    fn owners_that_are_not_printable_ascii_are_encoded_not_dropped() {
        assert_eq!(header_text("billing team"), "billing team");
        assert_eq!(header_text("Zoë Ltd"), "utf-8''Zo%C3%AB%20Ltd");
        assert_eq!(header_text("請求"), "utf-8''%E8%AB%8B%E6%B1%82");
        // A plain value that would read as encoded is encoded itself, so it round-trips.
        assert_eq!(header_text("UTF-8''x"), "utf-8''UTF-8%27%27x");
        assert_eq!(header_text("50% off"), "50% off");
        for owner in ["Zoë Ltd", "請求", "UTF-8''x", "a\u{7f}b"] {
            assert!(
                HeaderValue::from_str(&header_text(owner)).is_ok(),
                "{owner}"
            );
        }
    }

    #[test]
    fn ratelimit_fields_list_every_limit_then_the_quota() {
        use keyward_engine::{LimitReport, QuotaReport};
        let limit = |name: &str, remaining, reset_seconds| LimitReport {
            name: name.into(),
            limit: 10,
            period_seconds: 60,
            remaining,
            reset_seconds,
        };
        let mut v = Verification {
            code: VerifyCode::UsageExceeded,
            key: None,
            deprecated_until: None,
            // More left than the limit (a burst) is reported as the limit.
            limits: vec![limit("per_minute", 12, 0), limit("per_day", 0, 7)],
            credits_remaining: Some(0),
            retry_after: Some(3600),
            quota: Some(QuotaReport {
                quota: 100,
                window_seconds: Some(86_400),
                remaining: 0,
                reset_seconds: Some(5),
            }),
            enforcement: None,
            degraded: None,
        };
        let mut headers = HeaderMap::new();
        decorate(&mut headers, &v);
        assert_eq!(
            headers["ratelimit-policy"],
            r#""per_minute";q=10;w=60, "per_day";q=10;w=60, "quota";q=100;w=86400"#
        );
        // A spent quota resets when a retry can succeed.
        assert_eq!(
            headers["ratelimit"],
            r#""per_minute";r=10;t=0, "per_day";r=0;t=7, "quota";r=0;t=3600"#
        );
        assert_eq!(headers["retry-after"], "3600");

        // A quota without refill has neither window nor reset; no limits, no leading comma.
        v.code = VerifyCode::Valid;
        v.limits.clear();
        v.retry_after = None;
        v.quota = Some(QuotaReport {
            quota: 5,
            window_seconds: None,
            remaining: 4,
            reset_seconds: None,
        });
        let mut headers = HeaderMap::new();
        decorate(&mut headers, &v);
        assert_eq!(headers["ratelimit-policy"], r#""quota";q=5"#);
        assert_eq!(headers["ratelimit"], r#""quota";r=4"#);
        assert!(headers.get("retry-after").is_none());

        // Nothing to report: no RateLimit fields at all.
        v.quota = None;
        let mut headers = HeaderMap::new();
        decorate(&mut headers, &v);
        assert!(headers.get("ratelimit").is_none() && headers.get("ratelimit-policy").is_none());
    }
}
