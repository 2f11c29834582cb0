//! The verify decision: given a key record, the secret presented and the request, what answer.
//!
//! The order of checks is fixed and documented because callers branch on the code: REVOKED,
//! then EXPIRED (the secret's grace period ended, or the key expired), then DISABLED, then
//! TENANT_NOT_ALLOWED and ENVIRONMENT_NOT_ALLOWED (the request requires another tenant or
//! environment than the key's; checked before permissions, so a key of another tenant learns
//! nothing about its grants), then INSUFFICIENT_PERMISSIONS, then ROUTE_NOT_ALLOWED, then IP_NOT_ALLOWED, then
//! ORIGIN_NOT_ALLOWED. MALFORMED and NOT_FOUND are decided before a record exists (by
//! [`crate::key::ParsedKey::parse`] and the store lookup); RATE_LIMITED and USAGE_EXCEEDED
//! after a VALID decision, by the limit and quota stages, which consume only if all admit.

use time::OffsetDateTime;

use crate::binding::{ip_allowed, origin_allowed};
use crate::path::NormalPath;
use crate::permission::PermissionQuery;
use crate::record::{KeyRecord, SecretInfo};
use crate::route::route_allowed;

/// The outcome of a verification. The names are the stable wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerifyCode {
    /// The key is valid for this request.
    Valid,
    /// The string is not a well-formed keyward key (format or checksum).
    Malformed,
    /// No key has this hash.
    NotFound,
    /// The key was revoked.
    Revoked,
    /// The key expired, or this secret was rotated out and its grace period ended.
    Expired,
    /// The key is disabled.
    Disabled,
    /// The request requires a tenant the key does not belong to (or the key has none).
    TenantNotAllowed,
    /// The request requires an environment other than the key's.
    EnvironmentNotAllowed,
    /// The key lacks a permission the query requires.
    InsufficientPermissions,
    /// The key's route allowlist does not include this request.
    RouteNotAllowed,
    /// The caller's IP address is outside the key's allowlist.
    IpNotAllowed,
    /// The request's origin is outside the key's allowed origins.
    OriginNotAllowed,
    /// A rate limit refused the request.
    RateLimited,
    /// The key's quota does not cover the request's cost.
    UsageExceeded,
}

impl VerifyCode {
    /// The stable wire code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "VALID",
            Self::Malformed => "MALFORMED",
            Self::NotFound => "NOT_FOUND",
            Self::Revoked => "REVOKED",
            Self::Expired => "EXPIRED",
            Self::Disabled => "DISABLED",
            Self::TenantNotAllowed => "TENANT_NOT_ALLOWED",
            Self::EnvironmentNotAllowed => "ENVIRONMENT_NOT_ALLOWED",
            Self::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
            Self::RouteNotAllowed => "ROUTE_NOT_ALLOWED",
            Self::IpNotAllowed => "IP_NOT_ALLOWED",
            Self::OriginNotAllowed => "ORIGIN_NOT_ALLOWED",
            Self::RateLimited => "RATE_LIMITED",
            Self::UsageExceeded => "USAGE_EXCEEDED",
        }
    }

    /// Parses a stable wire code.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Every code, in documentation order.
    pub const ALL: [VerifyCode; 14] = [
        Self::Valid,
        Self::Malformed,
        Self::NotFound,
        Self::Revoked,
        Self::Expired,
        Self::Disabled,
        Self::TenantNotAllowed,
        Self::EnvironmentNotAllowed,
        Self::InsufficientPermissions,
        Self::RouteNotAllowed,
        Self::IpNotAllowed,
        Self::OriginNotAllowed,
        Self::RateLimited,
        Self::UsageExceeded,
    ];
}

/// What the caller asks about besides the key itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyRequest<'a> {
    /// Permissions the request needs.
    pub query: Option<&'a PermissionQuery>,
    /// HTTP method of the protected request.
    pub method: Option<&'a str>,
    /// Path of the protected request, normalised by the edge that received it (an edge
    /// refuses a path that cannot be normalised before it asks).
    pub path: Option<&'a NormalPath>,
    /// The tenant the request requires (a gateway route's or proxy location's `tenant`): a key
    /// of another tenant, or of none, gets TENANT_NOT_ALLOWED.
    pub tenant: Option<&'a str>,
    /// The environment the request requires: a key of another gets ENVIRONMENT_NOT_ALLOWED.
    pub environment: Option<&'a str>,
    /// The caller's IP address (checked against the key's IP allowlist).
    pub ip: Option<std::net::IpAddr>,
    /// The request's `Origin` (or `Referer`) (checked against the key's allowed origins).
    pub origin: Option<&'a str>,
}

/// The decision for a found key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The outcome.
    pub code: VerifyCode,
    /// Set when the presented secret was rotated out and still verifies until this time.
    pub deprecated_until: Option<OffsetDateTime>,
}

/// Decides the outcome for a key found by the hash of `secret`.
pub fn decide(
    key: &KeyRecord,
    secret: &SecretInfo,
    request: &VerifyRequest<'_>,
    now: OffsetDateTime,
) -> Decision {
    let code = if key.revoked_at.is_some() {
        VerifyCode::Revoked
    } else if !secret.is_live(now) || key.expires_at.is_some_and(|t| t <= now) {
        VerifyCode::Expired
    } else if !key.enabled {
        VerifyCode::Disabled
    } else if request
        .tenant
        .is_some_and(|t| key.tenant.as_deref() != Some(t))
    {
        VerifyCode::TenantNotAllowed
    } else if request.environment.is_some_and(|e| key.environment != e) {
        VerifyCode::EnvironmentNotAllowed
    } else if request
        .query
        .is_some_and(|q| !q.is_satisfied_by(&key.permissions))
    {
        VerifyCode::InsufficientPermissions
    } else if !route_allowed(&key.routes, request.method, request.path) {
        VerifyCode::RouteNotAllowed
    } else if !ip_allowed(&key.policy.ip_allowlist, request.ip) {
        VerifyCode::IpNotAllowed
    } else if !origin_allowed(&key.policy.origins, request.origin) {
        VerifyCode::OriginNotAllowed
    } else {
        VerifyCode::Valid
    };
    Decision {
        code,
        // The hint tells a caller to switch secrets; on a refusal it would only mislead.
        deprecated_until: secret.expires_at.filter(|_| code == VerifyCode::Valid),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::key::KeyHash;
    use crate::permission::Permission;
    use crate::route::RoutePattern;
    use keyward_testkit::T0;
    use time::Duration;

    pub(crate) fn secret(expires_at: Option<OffsetDateTime>) -> SecretInfo {
        SecretInfo {
            hash: KeyHash::sha256_of("kw_live_secret"),
            start: "kw_live_abcd".into(),
            created_at: T0,
            expires_at,
        }
    }

    pub(crate) fn record() -> KeyRecord {
        KeyRecord {
            owner: "billing-team".into(),
            permissions: vec![Permission::new("orders.read").unwrap()],
            secrets: vec![secret(None)],
            ..KeyRecord::sample(T0)
        }
    }

    fn code(
        key: &KeyRecord,
        secret: &SecretInfo,
        req: VerifyRequest<'_>,
        now: OffsetDateTime,
    ) -> VerifyCode {
        decide(key, secret, &req, now).code
    }

    #[test]
    fn valid_key_passes() {
        let q = PermissionQuery::parse("orders.read").unwrap();
        let req = VerifyRequest {
            query: Some(&q),
            ..Default::default()
        };
        assert_eq!(code(&record(), &secret(None), req, T0), VerifyCode::Valid);
    }

    #[test]
    fn checks_are_ordered() {
        let q = PermissionQuery::parse("orders.write").unwrap();
        let req = VerifyRequest {
            query: Some(&q),
            ..Default::default()
        };
        let mut key = record();
        key.enabled = false;
        key.expires_at = Some(T0);
        key.revoked_at = Some(T0);
        assert_eq!(code(&key, &secret(None), req, T0), VerifyCode::Revoked);
        key.revoked_at = None;
        assert_eq!(code(&key, &secret(None), req, T0), VerifyCode::Expired);
        key.expires_at = Some(T0 + Duration::seconds(1));
        assert_eq!(code(&key, &secret(None), req, T0), VerifyCode::Disabled);
        key.enabled = true;
        assert_eq!(
            code(&key, &secret(None), req, T0),
            VerifyCode::InsufficientPermissions
        );
        key.routes = vec![RoutePattern::new("GET /v1/orders/*").unwrap()];
        let ok_q = PermissionQuery::parse("orders.read").unwrap();
        let path = crate::path::normalize(b"/v1/orders/1", Default::default()).unwrap();
        let req = VerifyRequest {
            query: Some(&ok_q),
            method: Some("POST"),
            path: Some(&path),
            ..VerifyRequest::default()
        };
        assert_eq!(
            code(&key, &secret(None), req, T0),
            VerifyCode::RouteNotAllowed
        );
        let req = VerifyRequest {
            method: Some("GET"),
            ..req
        };
        assert_eq!(code(&key, &secret(None), req, T0), VerifyCode::Valid);
    }

    #[test]
    fn key_expiry_is_exclusive_of_the_instant() {
        let mut key = record();
        key.expires_at = Some(T0 + Duration::seconds(10));
        let req = VerifyRequest::default();
        assert_eq!(
            code(&key, &secret(None), req, T0 + Duration::seconds(9)),
            VerifyCode::Valid
        );
        assert_eq!(
            code(&key, &secret(None), req, T0 + Duration::seconds(10)),
            VerifyCode::Expired
        );
    }

    #[test]
    fn deprecated_secret_verifies_until_its_grace_ends() {
        let until = T0 + Duration::hours(1);
        let old = secret(Some(until));
        let d = decide(&record(), &old, &VerifyRequest::default(), T0);
        assert_eq!(
            d,
            Decision {
                code: VerifyCode::Valid,
                deprecated_until: Some(until)
            }
        );
        let d = decide(&record(), &old, &VerifyRequest::default(), until);
        assert_eq!(
            d,
            Decision {
                code: VerifyCode::Expired,
                deprecated_until: None
            }
        );
    }

    #[test]
    fn rotation_hint_only_accompanies_a_valid_answer() {
        let mut key = record();
        key.revoked_at = Some(T0);
        let d = decide(
            &key,
            &secret(Some(T0 + Duration::hours(1))),
            &VerifyRequest::default(),
            T0,
        );
        assert_eq!(
            d,
            Decision {
                code: VerifyCode::Revoked,
                deprecated_until: None
            }
        );
    }

    #[test]
    fn codes_are_stable() {
        let names: Vec<_> = VerifyCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "VALID",
                "MALFORMED",
                "NOT_FOUND",
                "REVOKED",
                "EXPIRED",
                "DISABLED",
                "TENANT_NOT_ALLOWED",
                "ENVIRONMENT_NOT_ALLOWED",
                "INSUFFICIENT_PERMISSIONS",
                "ROUTE_NOT_ALLOWED",
                "IP_NOT_ALLOWED",
                "ORIGIN_NOT_ALLOWED",
                "RATE_LIMITED",
                "USAGE_EXCEEDED"
            ]
        );
    }

    #[test]
    fn finding_6_a_required_tenant_or_environment_refuses_other_keys() {
        let q = PermissionQuery::parse("orders.read").unwrap();
        let requiring = |tenant, environment| VerifyRequest {
            query: Some(&q),
            tenant,
            environment,
            ..VerifyRequest::default()
        };
        let mut acme = record();
        acme.tenant = Some("acme".into());
        let no_tenant = record();
        let mut test_key = acme.clone();
        test_key.environment = "test".into();
        let s = secret(None);
        // Tenant A's key holding the permission a tenant B route needs.
        assert_eq!(
            code(&acme, &s, requiring(Some("beta"), None), T0),
            VerifyCode::TenantNotAllowed
        );
        assert_eq!(
            code(&no_tenant, &s, requiring(Some("acme"), None), T0),
            VerifyCode::TenantNotAllowed
        );
        assert_eq!(
            code(&acme, &s, requiring(Some("ACME"), None), T0),
            VerifyCode::TenantNotAllowed,
            "tenants compare exactly"
        );
        assert_eq!(
            code(&acme, &s, requiring(Some("acme"), None), T0),
            VerifyCode::Valid
        );
        // A test key on a live route.
        assert_eq!(
            code(&test_key, &s, requiring(Some("acme"), Some("live")), T0),
            VerifyCode::EnvironmentNotAllowed
        );
        assert_eq!(
            code(&acme, &s, requiring(Some("acme"), Some("live")), T0),
            VerifyCode::Valid
        );
        // Tenant before environment, both before permissions, after the key's own state.
        let other = PermissionQuery::parse("orders.write").unwrap();
        let both_wrong = VerifyRequest {
            query: Some(&other),
            tenant: Some("beta"),
            environment: Some("live"),
            ..VerifyRequest::default()
        };
        assert_eq!(
            code(&test_key, &s, both_wrong, T0),
            VerifyCode::TenantNotAllowed
        );
        let env_wrong = VerifyRequest {
            tenant: None,
            ..both_wrong
        };
        assert_eq!(
            code(&test_key, &s, env_wrong, T0),
            VerifyCode::EnvironmentNotAllowed
        );
        let mut disabled = test_key.clone();
        disabled.enabled = false;
        assert_eq!(code(&disabled, &s, both_wrong, T0), VerifyCode::Disabled);
    }

    #[test]
    fn bindings_come_after_routes() {
        let mut key = record();
        key.policy.ip_allowlist = vec![crate::binding::parse_cidr("10.0.0.0/8").unwrap()];
        key.policy.origins = vec![crate::binding::OriginPattern::new("app.example.com").unwrap()];
        let inside = Some("10.1.1.1".parse().unwrap());
        let outside = Some("192.0.2.1".parse().unwrap());
        let req = |ip, origin| VerifyRequest {
            ip,
            origin,
            ..VerifyRequest::default()
        };
        assert_eq!(
            code(
                &key,
                &secret(None),
                req(outside, Some("https://app.example.com")),
                T0
            ),
            VerifyCode::IpNotAllowed
        );
        assert_eq!(
            code(
                &key,
                &secret(None),
                req(inside, Some("https://evil.com")),
                T0
            ),
            VerifyCode::OriginNotAllowed
        );
        assert_eq!(
            code(&key, &secret(None), req(inside, None), T0),
            VerifyCode::OriginNotAllowed
        );
        assert_eq!(
            code(
                &key,
                &secret(None),
                req(inside, Some("https://app.example.com")),
                T0
            ),
            VerifyCode::Valid
        );
    }
}
