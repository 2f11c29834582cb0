//! Validation of key metadata, with errors that name the offending field.
//!
//! Every input limit of keyward is here (key metadata, policies, rotation grace, verify
//! requests, paging), documented in docs/http-api.md ("Input limits"); they keep records small
//! enough to cache by the hundred thousand and keep hostile input from costing much.

use std::borrow::Cow;

use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};

use crate::key::{PREFIX_LIVE, PREFIX_ROOT, PREFIX_TEST, Prefix};
use crate::permission::Permission;
use crate::redact::redact;
use crate::route::RoutePattern;

/// Longest owner, name or purpose, in characters.
pub const MAX_TEXT_CHARS: usize = 256;
/// Longest tenant or environment, in bytes.
pub const MAX_IDENT_LEN: usize = 64;
/// Most tags on a key.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 64;
/// Most permissions on a key.
pub const MAX_PERMISSIONS: usize = 128;
/// Most route patterns on a key.
pub const MAX_ROUTES: usize = 64;
/// Largest `meta` object, serialized, in bytes.
pub const MAX_META_BYTES: usize = 4096;
/// Longest revocation reason, in characters.
pub const MAX_REASON_CHARS: usize = 512;
/// Longest lifetime a key can be given: 10 years.
pub const MAX_TTL: Duration = Duration::days(3660);
/// Longest grace period of a rotation (the old secret's remaining life): 30 days.
pub const MAX_GRACE: Duration = Duration::days(30);
/// Largest cost one verification may carry.
pub const MAX_COST: u64 = 1_000_000_000;
/// Longest request path a verify call may ask about (its query included): the path
/// normaliser's own bound.
pub const MAX_VERIFY_PATH_BYTES: usize = crate::path::MAX_PATH_BYTES;
/// Longest HTTP method name a verify call may give.
pub const MAX_METHOD_LEN: usize = 32;
/// Largest page a list call returns.
pub const MAX_PAGE: u32 = 1000;
/// Page size when none is given.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest page of a usage read.
pub const MAX_USAGE_PAGE: u32 = 10_000;
/// Usage page size when none is given.
pub const DEFAULT_USAGE_PAGE: u32 = 1000;

/// An input field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's name as it appears in the API.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Refuses values that look like a key: metadata is stored, listed, returned by verify and
/// written to the audit log, so a key pasted into it by mistake would be kept in clear.
fn no_key(field: &str, value: &str) -> Result<(), FieldError> {
    match redact(value) {
        Cow::Borrowed(_) => Ok(()),
        Cow::Owned(_) => Err(FieldError::new(
            field,
            "looks like an API key; keys must never be put in metadata (it would be stored in clear)",
        )),
    }
}

/// Free text such as an owner or name: non-blank, bounded, no control characters.
pub fn text(field: &str, value: &str) -> Result<String, FieldError> {
    no_key(field, value)?;
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if trimmed.chars().count() > MAX_TEXT_CHARS {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// Optional free text.
pub fn optional_text(field: &str, value: Option<&str>) -> Result<Option<String>, FieldError> {
    value.map(|v| text(field, v)).transpose()
}

/// An identifier such as a tenant or environment: `[A-Za-z0-9_.:-]`, 1 to 64 bytes.
pub fn ident(field: &str, value: &str) -> Result<String, FieldError> {
    no_key(field, value)?;
    if value.is_empty() || value.len() > MAX_IDENT_LEN {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {MAX_IDENT_LEN} characters"),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        return Err(FieldError::new(
            field,
            "may contain only A-Z a-z 0-9 _ . : -",
        ));
    }
    Ok(value.to_owned())
}

/// Tags: at most 32, each 1 to 64 bytes of `[A-Za-z0-9_.:=/-]`, duplicates removed.
pub fn tags(values: &[String]) -> Result<Vec<String>, FieldError> {
    if values.len() > MAX_TAGS {
        return Err(FieldError::new("tags", format!("at most {MAX_TAGS} tags")));
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for (i, tag) in values.iter().enumerate() {
        no_key(&format!("tags[{i}]"), tag)?;
        let ok_chars = tag.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'=' | b'/' | b'-')
        });
        if tag.is_empty() || tag.len() > MAX_TAG_LEN || !ok_chars {
            return Err(FieldError::new(
                format!("tags[{i}]"),
                format!("must be 1 to {MAX_TAG_LEN} characters of A-Z a-z 0-9 _ . : = / -"),
            ));
        }
        if !out.contains(tag) {
            out.push(tag.clone());
        }
    }
    Ok(out)
}

/// The `meta` object: bounded in size when serialized.
pub fn meta(value: Map<String, Value>) -> Result<Map<String, Value>, FieldError> {
    let serialized = Value::Object(value.clone()).to_string();
    no_key("meta", &serialized)?;
    let size = serialized.len();
    if size > MAX_META_BYTES {
        return Err(FieldError::new(
            "meta",
            format!("is {size} bytes serialized; at most {MAX_META_BYTES} are allowed"),
        ));
    }
    Ok(value)
}

/// Permission grants: at most 128, each valid, duplicates removed.
pub fn permissions(values: &[String]) -> Result<Vec<Permission>, FieldError> {
    if values.len() > MAX_PERMISSIONS {
        return Err(FieldError::new(
            "permissions",
            format!("at most {MAX_PERMISSIONS} permissions"),
        ));
    }
    let mut out: Vec<Permission> = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        no_key(&format!("permissions[{i}]"), value)?;
        let p = Permission::new(value)
            .map_err(|e| FieldError::new(format!("permissions[{i}]"), e.to_string()))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Route patterns: at most 64, each valid.
pub fn routes(values: &[String]) -> Result<Vec<RoutePattern>, FieldError> {
    if values.len() > MAX_ROUTES {
        return Err(FieldError::new(
            "routes",
            format!("at most {MAX_ROUTES} routes"),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            no_key(&format!("routes[{i}]"), v)?;
            RoutePattern::new(v).map_err(|e| FieldError::new(format!("routes[{i}]"), e.to_string()))
        })
        .collect()
}

/// A revocation reason: non-blank, bounded.
pub fn reason(value: &str) -> Result<String, FieldError> {
    no_key("reason", value)?;
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(FieldError::new("reason", "must not be empty"));
    }
    if trimmed.chars().count() > MAX_REASON_CHARS || trimmed.chars().any(char::is_control) {
        return Err(FieldError::new(
            "reason",
            format!("must be at most {MAX_REASON_CHARS} characters without control characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// An absolute expiry: in the future and at most [`MAX_TTL`] away.
pub fn expires_at(
    field: &str,
    at: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, FieldError> {
    if at <= now {
        return Err(FieldError::new(field, "must be in the future"));
    }
    if at - now > MAX_TTL {
        return Err(FieldError::new(
            field,
            "must be at most 3660 days (10 years) away",
        ));
    }
    Ok(at)
}

/// A lifetime in seconds, turned into an expiry.
pub fn ttl(seconds: i64, now: OffsetDateTime) -> Result<OffsetDateTime, FieldError> {
    if seconds <= 0 || seconds > MAX_TTL.whole_seconds() {
        return Err(FieldError::new(
            "ttl_seconds",
            format!(
                "must be between 1 and {} (10 years)",
                MAX_TTL.whole_seconds()
            ),
        ));
    }
    Ok(now + Duration::seconds(seconds))
}

/// A rotation's grace period: from 0 (the old secret ends at once) to [`MAX_GRACE`].
pub fn grace(grace: Duration) -> Result<Duration, FieldError> {
    if grace.is_negative() || grace > MAX_GRACE {
        return Err(FieldError::new(
            "grace_period_seconds",
            format!(
                "must be between 0 and {} (30 days)",
                MAX_GRACE.whole_seconds()
            ),
        ));
    }
    Ok(grace)
}

/// The cost of one verification: at most [`MAX_COST`]. Inline: it is checked on every
/// verification.
#[inline]
pub fn cost(cost: u64) -> Result<u64, FieldError> {
    if cost > MAX_COST {
        return Err(FieldError::new(
            "cost",
            format!("must be at most {MAX_COST}"),
        ));
    }
    Ok(cost)
}

/// The request path a verify call asks about: at most [`MAX_VERIFY_PATH_BYTES`] (its normal
/// form is checked by [`crate::path`]).
pub fn verify_path(path: Option<&str>) -> Result<(), FieldError> {
    if path.is_some_and(|p| p.len() > MAX_VERIFY_PATH_BYTES) {
        return Err(FieldError::new(
            "path",
            format!("must be at most {MAX_VERIFY_PATH_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The HTTP method a verify call names: 1 to [`MAX_METHOD_LEN`] ASCII letters.
pub fn verify_method(method: Option<&str>) -> Result<(), FieldError> {
    if method.is_some_and(|m| {
        m.is_empty() || m.len() > MAX_METHOD_LEN || !m.bytes().all(|b| b.is_ascii_alphabetic())
    }) {
        return Err(FieldError::new(
            "method",
            "must be an HTTP method name (1 to 32 letters)",
        ));
    }
    Ok(())
}

/// A list call's page size: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] when absent.
pub fn page_limit(limit: Option<u32>) -> Result<u32, FieldError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(FieldError::new(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        )),
    }
}

/// A usage read's page size: 1 to [`MAX_USAGE_PAGE`], [`DEFAULT_USAGE_PAGE`] when absent.
pub fn usage_page_limit(limit: Option<u32>) -> Result<u32, FieldError> {
    let limit = limit.unwrap_or(DEFAULT_USAGE_PAGE);
    if !(1..=MAX_USAGE_PAGE).contains(&limit) {
        return Err(FieldError::new(
            "limit",
            format!("must be between 1 and {MAX_USAGE_PAGE}"),
        ));
    }
    Ok(limit)
}

/// The key prefix: an explicit one, or `kw_test` for test-like environments and `kw_live`
/// otherwise.
pub fn prefix(explicit: Option<&str>, environment: &str) -> Result<Prefix, FieldError> {
    let chosen = match explicit {
        // Scanners and operators read `kwroot_` as "admin credential": API keys may not use it.
        Some(PREFIX_ROOT) => {
            return Err(FieldError::new(
                "prefix",
                format!("{PREFIX_ROOT} is reserved for root keys"),
            ));
        }
        Some(p) => p,
        None if matches!(
            environment,
            "test" | "testing" | "dev" | "development" | "sandbox" | "staging"
        ) =>
        {
            PREFIX_TEST
        }
        None => PREFIX_LIVE,
    };
    Prefix::new(chosen).map_err(|e| FieldError::new("prefix", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_testkit::T0;
    use serde_json::json;

    #[test]
    fn errors_name_the_field() {
        assert_eq!(text("owner", "  ").unwrap_err().field, "owner");
        assert_eq!(text("owner", " team ").unwrap(), "team");
        assert_eq!(
            permissions(&["ok".into(), "bad perm".into()])
                .unwrap_err()
                .field,
            "permissions[1]"
        );
        assert_eq!(
            routes(&["GET /x".into(), "nope".into()]).unwrap_err().field,
            "routes[1]"
        );
        assert_eq!(
            tags(&["a".into(), "b c".into()]).unwrap_err().field,
            "tags[1]"
        );
        assert_eq!(ident("tenant", "a b").unwrap_err().field, "tenant");
    }

    #[test]
    fn meta_is_bounded() {
        let small = json!({"plan": "pro"}).as_object().unwrap().clone();
        assert!(meta(small).is_ok());
        let big = json!({"blob": "x".repeat(5000)})
            .as_object()
            .unwrap()
            .clone();
        assert!(meta(big).unwrap_err().message.contains("at most 4096"));
    }

    #[test]
    fn expiry_must_be_future_and_bounded() {
        assert!(expires_at("expires_at", T0, T0).is_err());
        assert!(expires_at("expires_at", T0 + Duration::seconds(1), T0).is_ok());
        assert!(expires_at("expires_at", T0 + Duration::days(4000), T0).is_err());
        assert_eq!(ttl(60, T0).unwrap(), T0 + Duration::minutes(1));
        assert!(ttl(0, T0).is_err());
        assert!(ttl(i64::MAX, T0).is_err());
    }

    #[test]
    fn prefix_follows_the_environment() {
        assert_eq!(prefix(None, "live").unwrap().as_str(), "kw_live");
        assert_eq!(prefix(None, "test").unwrap().as_str(), "kw_test");
        assert_eq!(
            prefix(Some("acme_prod"), "test").unwrap().as_str(),
            "acme_prod"
        );
        assert_eq!(prefix(Some("Bad"), "live").unwrap_err().field, "prefix");
        assert!(
            prefix(Some("kwroot"), "live")
                .unwrap_err()
                .message
                .contains("reserved")
        );
    }

    #[test]
    fn key_shaped_values_are_refused_everywhere() {
        let key = "kw_live_AbCdEfGhIjKlMnOpQrStUvWxYz01234567abcd";
        assert_eq!(text("name", key).unwrap_err().field, "name");
        assert_eq!(ident("tenant", key).unwrap_err().field, "tenant");
        assert_eq!(tags(&[key.into()]).unwrap_err().field, "tags[0]");
        assert_eq!(
            permissions(&[key.into()]).unwrap_err().field,
            "permissions[0]"
        );
        assert_eq!(
            routes(&[format!("GET /{key}")]).unwrap_err().field,
            "routes[0]"
        );
        assert_eq!(
            reason(&format!("leaked {key}")).unwrap_err().field,
            "reason"
        );
        let m = json!({"note": {"deep": [key]}})
            .as_object()
            .unwrap()
            .clone();
        assert!(
            meta(m)
                .unwrap_err()
                .message
                .contains("looks like an API key")
        );
    }

    #[test]
    fn duplicates_are_dropped() {
        assert_eq!(permissions(&["a".into(), "a".into()]).unwrap().len(), 1);
        assert_eq!(
            tags(&["x".into(), "x".into()]).unwrap(),
            vec!["x".to_owned()]
        );
    }
}

/// A rate limit as received, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitSpec {
    /// Name, unique per key.
    pub name: String,
    /// Units per period.
    pub limit: u64,
    /// Period in seconds.
    pub period_seconds: u64,
    /// Burst; defaults to `limit`.
    pub burst: Option<u64>,
    /// `key` (default), `owner` or `tenant`.
    pub scope: Option<String>,
    /// `exact` (default) or `local_first`.
    pub mode: Option<String>,
}

/// A quota as received, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaSpec {
    /// Starting balance.
    pub credits: u64,
    /// Refill amount, with `refill_interval`.
    pub refill_amount: Option<u64>,
    /// `daily` or `monthly`.
    pub refill_interval: Option<String>,
    /// Day of the month for `monthly` (1 to 31).
    pub refill_day: Option<u8>,
}

/// Rate limits: at most 8, names unique, values within bounds.
pub fn limits(
    field: &str,
    specs: &[LimitSpec],
) -> Result<Vec<crate::limit::RateLimit>, FieldError> {
    use crate::limit::{LimitMode, LimitScope, MAX_LIMIT, MAX_PERIOD_SECONDS, RateLimit};
    if specs.len() > 8 {
        return Err(FieldError::new(field, "at most 8 limits"));
    }
    let mut out: Vec<RateLimit> = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let at = |what: &str| format!("{field}[{i}].{what}");
        let name = ident(&at("name"), &s.name)?;
        if out.iter().any(|l| l.name == name) {
            return Err(FieldError::new(
                at("name"),
                format!("{name:?} is used twice"),
            ));
        }
        if s.limit == 0 || s.limit > MAX_LIMIT {
            return Err(FieldError::new(
                at("limit"),
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        if s.period_seconds == 0 || s.period_seconds > MAX_PERIOD_SECONDS {
            return Err(FieldError::new(
                at("period_seconds"),
                format!("must be between 1 and {MAX_PERIOD_SECONDS}"),
            ));
        }
        let burst = s.burst.unwrap_or(s.limit);
        if burst == 0 || burst > MAX_LIMIT {
            return Err(FieldError::new(
                at("burst"),
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let scope = match s.scope.as_deref() {
            None => LimitScope::Key,
            Some(text) => LimitScope::parse(text)
                .ok_or_else(|| FieldError::new(at("scope"), "must be key, owner or tenant"))?,
        };
        let mode = match s.mode.as_deref() {
            None => LimitMode::Exact,
            Some(text) => LimitMode::parse(text)
                .ok_or_else(|| FieldError::new(at("mode"), "must be exact or local_first"))?,
        };
        out.push(RateLimit {
            name,
            limit: s.limit,
            period_seconds: s.period_seconds,
            burst,
            scope,
            mode,
        });
    }
    Ok(out)
}

/// [`quota`] for a quota that may be absent (a key or plan without one, or a patch removing it).
pub fn optional_quota(
    field: &str,
    spec: Option<&QuotaSpec>,
) -> Result<Option<crate::quota::QuotaConfig>, FieldError> {
    spec.map(|q| quota(field, q)).transpose()
}

/// A quota with its optional refill rule.
pub fn quota(field: &str, spec: &QuotaSpec) -> Result<crate::quota::QuotaConfig, FieldError> {
    use crate::quota::{QuotaConfig, Refill, RefillSchedule};
    let refill = match (spec.refill_amount, spec.refill_interval.as_deref()) {
        (None, None) => None,
        (Some(amount), Some(interval)) => {
            let schedule = match (interval, spec.refill_day) {
                ("daily", None) => RefillSchedule::Daily,
                ("monthly", Some(day)) if (1..=31).contains(&day) => {
                    RefillSchedule::Monthly { day }
                }
                ("monthly", _) => {
                    return Err(FieldError::new(
                        format!("{field}.refill_day"),
                        "monthly refills need a day from 1 to 31",
                    ));
                }
                _ => {
                    return Err(FieldError::new(
                        format!("{field}.refill_interval"),
                        "must be daily (without refill_day) or monthly (with refill_day)",
                    ));
                }
            };
            Some(Refill { amount, schedule })
        }
        _ => {
            return Err(FieldError::new(
                format!("{field}.refill_interval"),
                "refill_amount and refill_interval go together",
            ));
        }
    };
    Ok(QuotaConfig {
        credits: spec.credits,
        refill,
    })
}

/// CIDR blocks or addresses.
pub fn ip_allowlist(values: &[String]) -> Result<Vec<ipnet::IpNet>, FieldError> {
    if values.len() > crate::binding::MAX_BINDINGS {
        return Err(FieldError::new("ip_allowlist", "at most 64 blocks"));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            crate::binding::parse_cidr(v).ok_or_else(|| {
                FieldError::new(
                    format!("ip_allowlist[{i}]"),
                    "must be an IPv4 or IPv6 address or CIDR block",
                )
            })
        })
        .collect()
}

/// Origin patterns: `example.com` or `*.example.com`.
pub fn origins(values: &[String]) -> Result<Vec<crate::binding::OriginPattern>, FieldError> {
    if values.len() > crate::binding::MAX_BINDINGS {
        return Err(FieldError::new("origins", "at most 64 origins"));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            crate::binding::OriginPattern::new(v).ok_or_else(|| {
                FieldError::new(
                    format!("origins[{i}]"),
                    "must be a lower-case host name or *.host",
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn limits_are_validated_with_field_paths() {
        let ok = LimitSpec {
            name: "per_second".into(),
            limit: 50,
            period_seconds: 1,
            burst: Some(100),
            scope: None,
            mode: None,
        };
        let parsed = limits("limits", std::slice::from_ref(&ok)).unwrap();
        assert_eq!(parsed[0].burst, 100);
        assert_eq!(parsed[0].mode, crate::limit::LimitMode::Exact);
        let local = LimitSpec {
            mode: Some("local_first".into()),
            ..ok.clone()
        };
        assert_eq!(
            limits("limits", &[local]).unwrap()[0].mode,
            crate::limit::LimitMode::LocalFirst
        );
        let unknown = limits(
            "limits",
            &[LimitSpec {
                mode: Some("eventual".into()),
                ..ok.clone()
            }],
        )
        .unwrap_err();
        assert_eq!(
            (unknown.field.as_str(), unknown.message.as_str()),
            ("limits[0].mode", "must be exact or local_first")
        );
        let dup = limits("limits", &[ok.clone(), ok.clone()]).unwrap_err();
        assert_eq!(dup.field, "limits[1].name");
        let zero = LimitSpec {
            limit: 0,
            ..ok.clone()
        };
        assert_eq!(
            limits("limits", &[zero]).unwrap_err().field,
            "limits[0].limit"
        );
        let scope = LimitSpec {
            scope: Some("planet".into()),
            ..ok
        };
        assert_eq!(
            limits("limits", &[scope]).unwrap_err().field,
            "limits[0].scope"
        );
    }

    #[test]
    fn quota_refill_rules() {
        let daily = QuotaSpec {
            credits: 10,
            refill_amount: Some(100),
            refill_interval: Some("daily".into()),
            refill_day: None,
        };
        assert!(quota("quota", &daily).is_ok());
        let monthly_no_day = QuotaSpec {
            refill_interval: Some("monthly".into()),
            ..daily.clone()
        };
        assert_eq!(
            quota("quota", &monthly_no_day).unwrap_err().field,
            "quota.refill_day"
        );
        let half = QuotaSpec {
            refill_interval: None,
            ..daily
        };
        assert_eq!(
            quota("quota", &half).unwrap_err().field,
            "quota.refill_interval"
        );
    }

    #[test]
    fn bindings_are_validated() {
        assert_eq!(
            ip_allowlist(&["10.0.0.0/8".into(), "bogus".into()])
                .unwrap_err()
                .field,
            "ip_allowlist[1]"
        );
        assert_eq!(
            origins(&["ok.example".into(), "Bad".into()])
                .unwrap_err()
                .field,
            "origins[1]"
        );
    }
}
