//! Every JSON request body of the admin API (the `keyward-wire` request types), decoded as the
//! server decodes it (`ApiJson`: a top-level array is refused, then serde), then run through the
//! validation the engine applies (`keyward_core::validate`, which holds the rotation grace
//! bound and verify's path and method limits, and the credit op) and the pure code a valid body
//! reaches (rate-limit checks, quota balances, the verify call's permission query and address).
//! The first byte picks the type, modulo 8 (the seeds use the digits `'0'` to `'7'`, 0x30 to
//! 0x37): 0 `CreateKeyRequest`, 1 `CreateRootKeyRequest`,
//! 2 `UpdateKeyRequest`, 3 `RotateKeyRequest`, 4 `RevokeKeyRequest`, 5 `VerifyKeyRequest`,
//! 6 `CreditsRequest`, 7 `PlanRequest`; the rest is the body.
//!
//! Oracles: no panic; a decoded body serializes and decodes to the same JSON (the CLI client
//! sends what the server reads); a fresh rate-limit bucket admits any cost up to its burst.

#![no_main]

use keyward_core::limit::{self, RateLimit};
use keyward_core::permission::PermissionQuery;
use keyward_core::quota::{self, QuotaConfig};
use keyward_core::validate::{self, FieldError};
use keyward_fuzz::NOW;
use keyward_wire::{
    CreateKeyRequest, CreateRootKeyRequest, CreditsRequest, LimitSpec, PlanRequest, QuotaSpec,
    RevokeKeyRequest, RotateKeyRequest, Timestamp, UpdateKeyRequest, VerifyKeyRequest,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 8 {
        0 => check::<CreateKeyRequest>(body, |r| create_key(r)),
        1 => check::<CreateRootKeyRequest>(body, |r| create_root_key(r)),
        2 => check::<UpdateKeyRequest>(body, |r| update_key(r)),
        3 => check::<RotateKeyRequest>(body, |r| {
            validate::grace(time::Duration::seconds(r.grace_period_seconds)).map(drop)
        }),
        4 => check::<RevokeKeyRequest>(body, |r| validate::reason(&r.reason).map(drop)),
        5 => check::<VerifyKeyRequest>(body, |r| verify(r)),
        6 => check::<CreditsRequest>(body, |r| match r.op.as_str() {
            "set" | "increase" | "decrease" => Ok(()),
            _ => Err(field("op")),
        }),
        _ => check::<PlanRequest>(body, |r| plan(r)),
    }
});

/// Decodes `body` as the server does; on success checks the JSON round trip and validates.
fn check<T: DeserializeOwned + Serialize>(
    body: &[u8],
    validate: impl Fn(&T) -> Result<(), FieldError>,
) {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return;
    }
    let Ok(request) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let value = serde_json::to_value(&request).expect("a decoded body serializes");
    let again: T = serde_json::from_value(value.clone()).expect("a serialized body decodes");
    assert_eq!(
        serde_json::to_value(&again).expect("serializes"),
        value,
        "round trip changed it"
    );
    let _ = validate(&request);
}

fn field(name: &str) -> FieldError {
    FieldError::new(name, "invalid")
}

fn expiry(at: Option<Timestamp>, ttl: Option<i64>) -> Result<(), FieldError> {
    match (at, ttl) {
        (Some(_), Some(_)) => Err(field("ttl_seconds")),
        (Some(at), None) => validate::expires_at("expires_at", at.0, NOW).map(drop),
        (None, Some(ttl)) => validate::ttl(ttl, NOW).map(drop),
        (None, None) => Ok(()),
    }
}

fn limits(specs: &[LimitSpec]) -> Result<(), FieldError> {
    let specs: Vec<validate::LimitSpec> = specs
        .iter()
        .map(|l| validate::LimitSpec {
            name: l.name.clone(),
            limit: l.limit,
            period_seconds: l.period_seconds,
            burst: l.burst,
            scope: l.scope.clone(),
            mode: l.mode.clone(),
        })
        .collect();
    for limit in validate::limits("limits", &specs)? {
        spend(&limit);
    }
    Ok(())
}

/// Runs a validated limit: a fresh bucket admits any cost up to the burst, and what is left
/// never exceeds the burst.
fn spend(limit: &RateLimit) {
    let mut tat = None;
    for cost in [0, 1, limit.burst, limit.burst.saturating_add(1), u64::MAX] {
        let fresh = limit::check(limit, None, cost, NOW);
        assert_eq!(
            fresh.admitted,
            cost <= limit.burst,
            "fresh bucket, cost {cost}: {limit:?}"
        );
        let status = limit::check(limit, tat, cost, NOW);
        assert!(status.remaining <= limit.burst);
        if status.admitted {
            tat = Some(status.new_tat);
        }
    }
}

fn quota(spec: Option<&QuotaSpec>) -> Result<(), FieldError> {
    let Some(q) = spec else { return Ok(()) };
    let spec = validate::QuotaSpec {
        credits: q.credits,
        refill_amount: q.refill_amount,
        refill_interval: q.refill_interval.clone(),
        refill_day: q.refill_day,
    };
    let config: QuotaConfig = validate::quota("quota", &spec)?;
    let balance = quota::current_balance(&config, None, NOW);
    assert_eq!(balance.remaining, config.credits);
    if let Some(refill) = config.refill {
        let last = refill
            .schedule
            .last_at_or_before(NOW)
            .expect("a refill instant before now");
        assert!(last <= NOW);
        let next = refill
            .schedule
            .next_after(NOW)
            .expect("a refill instant after now");
        assert!(next > NOW, "next refill {next} is not after {NOW}");
        let _ = quota::current_balance(&config, Some(balance), next);
    }
    Ok(())
}

fn create_key(r: &CreateKeyRequest) -> Result<(), FieldError> {
    let environment = validate::ident("environment", r.environment.as_deref().unwrap_or("live"))?;
    validate::permissions(&r.permissions)?;
    validate::prefix(r.prefix.as_deref(), &environment)?;
    expiry(r.expires_at, r.ttl_seconds)?;
    validate::text("owner", &r.owner)?;
    validate::optional_text("name", r.name.as_deref())?;
    if let Some(tenant) = &r.tenant {
        validate::ident("tenant", tenant)?;
    }
    validate::optional_text("purpose", r.purpose.as_deref())?;
    validate::tags(&r.tags)?;
    validate::meta(r.meta.clone().unwrap_or_default())?;
    validate::routes(&r.routes)?;
    limits(&r.limits)?;
    quota(r.quota.as_ref())?;
    validate::ip_allowlist(&r.ip_allowlist)?;
    validate::origins(&r.origins)?;
    Ok(())
}

fn create_root_key(r: &CreateRootKeyRequest) -> Result<(), FieldError> {
    validate::text("owner", r.owner.as_deref().unwrap_or("keyward-admin"))?;
    validate::optional_text("name", r.name.as_deref())?;
    validate::permissions(&r.permissions)?;
    expiry(r.expires_at, r.ttl_seconds)
}

fn update_key(r: &UpdateKeyRequest) -> Result<(), FieldError> {
    if let Some(name) = &r.name {
        validate::optional_text("name", name.as_deref())?;
    }
    if let Some(p) = &r.permissions {
        validate::permissions(p)?;
    }
    if let Some(routes) = &r.routes {
        validate::routes(routes)?;
    }
    if let Some(meta) = &r.meta {
        validate::meta(meta.clone())?;
    }
    if let Some(tags) = &r.tags {
        validate::tags(tags)?;
    }
    if let Some(Some(at)) = r.expires_at {
        validate::expires_at("expires_at", at.0, NOW)?;
    }
    if let Some(l) = &r.limits {
        limits(l)?;
    }
    if let Some(q) = &r.quota {
        quota(q.as_ref())?;
    }
    if let Some(ips) = &r.ip_allowlist {
        validate::ip_allowlist(ips)?;
    }
    if let Some(origins) = &r.origins {
        validate::origins(origins)?;
    }
    Ok(())
}

/// What `POST /v1/keys/verify` checks before the engine looks the key up.
fn verify(r: &VerifyKeyRequest) -> Result<(), FieldError> {
    let _ = keyward_core::key::ParsedKey::parse(&r.key);
    validate::verify_path(r.path.as_deref())?;
    validate::verify_method(r.method.as_deref())?;
    if let Some(query) = &r.permissions {
        PermissionQuery::parse(query).map_err(|_| field("permissions"))?;
    }
    if let Some(ip) = &r.ip {
        ip.parse::<std::net::IpAddr>().map_err(|_| field("ip"))?;
    }
    if let Some(origin) = &r.origin {
        let _ = keyward_core::binding::origin_host(origin);
    }
    if let Some(path) = &r.path {
        // As the verify handler does; the normaliser has its own target (request_path).
        let _ = keyward_core::path::normalize_target(
            path.as_bytes(),
            keyward_core::path::PathOptions::default(),
        );
    }
    Ok(())
}

fn plan(r: &PlanRequest) -> Result<(), FieldError> {
    if let Some(id) = &r.plan_id {
        validate::ident("plan_id", id)?;
    }
    limits(&r.limits)?;
    quota(r.quota.as_ref())?;
    validate::permissions(&r.permissions)?;
    Ok(())
}
