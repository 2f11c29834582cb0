//! Conversions from domain records to wire types, and cursor encoding.

use keyward_core::audit::AuditEvent;
use keyward_core::limit::RateLimit;
use keyward_core::permission::Permission;
use keyward_core::quota::{QuotaConfig, RefillSchedule};
use keyward_core::record::KeyRecord;
use keyward_core::record::Plan;
use keyward_core::rotation::SecretEnd;
use keyward_core::route::RoutePattern;
use keyward_wire::{
    AuditEventView, EndedSecret, KeyView, LimitSpec, PlanView, QuotaSpec, SecretView, Timestamp,
};
use time::OffsetDateTime;

use crate::error::ApiError;

pub fn key_view(r: &KeyRecord, now: OffsetDateTime) -> KeyView {
    KeyView {
        key_id: r.key_id.clone(),
        owner: r.owner.clone(),
        name: r.name.clone(),
        tenant: r.tenant.clone(),
        environment: r.environment.clone(),
        purpose: r.purpose.clone(),
        tags: r.tags.clone(),
        meta: r.meta.clone(),
        permissions: r.permissions.iter().map(Permission::to_string).collect(),
        routes: r.routes.iter().map(RoutePattern::to_string).collect(),
        expires_at: r.expires_at.map(Timestamp),
        enabled: r.enabled,
        status: r.status(now).as_str().to_owned(),
        created_at: Timestamp(r.created_at),
        created_by: r.created_by.clone(),
        updated_at: Timestamp(r.updated_at),
        last_used_at: r.last_used_at.map(Timestamp),
        revoked_at: r.revoked_at.map(Timestamp),
        revoked_reason: r.revoked_reason.clone(),
        rotated_at: r.rotated_at.map(Timestamp),
        secrets: r
            .secrets
            .iter()
            .filter(|s| s.is_live(now))
            .map(|s| SecretView {
                start: s.start.clone(),
                state: if s.expires_at.is_none() {
                    "current"
                } else {
                    "deprecated"
                }
                .to_owned(),
                created_at: Timestamp(s.created_at),
                expires_at: s.expires_at.map(Timestamp),
            })
            .collect(),
        plan: r.policy.plan.clone(),
        limits: r.policy.limits.iter().map(limit_view).collect(),
        quota: r.policy.quota.as_ref().map(quota_view),
        ip_allowlist: r
            .policy
            .ip_allowlist
            .iter()
            .map(ToString::to_string)
            .collect(),
        origins: r
            .policy
            .origins
            .iter()
            .map(|o| o.as_str().to_owned())
            .collect(),
    }
}

pub fn limit_view(l: &RateLimit) -> LimitSpec {
    LimitSpec {
        name: l.name.clone(),
        limit: l.limit,
        period_seconds: l.period_seconds,
        burst: Some(l.burst),
        scope: Some(l.scope.as_str().to_owned()),
        mode: Some(l.mode.as_str().to_owned()),
    }
}

pub fn quota_view(q: &QuotaConfig) -> QuotaSpec {
    let (interval, day) = match q.refill.map(|r| r.schedule) {
        None => (None, None),
        Some(RefillSchedule::Daily) => (Some("daily".to_owned()), None),
        Some(RefillSchedule::Monthly { day }) => (Some("monthly".to_owned()), Some(day)),
    };
    QuotaSpec {
        credits: q.credits,
        refill_amount: q.refill.map(|r| r.amount),
        refill_interval: interval,
        refill_day: day,
    }
}

pub fn limit_spec(l: LimitSpec) -> keyward_engine::LimitSpec {
    keyward_engine::LimitSpec {
        name: l.name,
        limit: l.limit,
        period_seconds: l.period_seconds,
        burst: l.burst,
        scope: l.scope,
        mode: l.mode,
    }
}

pub fn quota_spec(q: QuotaSpec) -> keyward_engine::QuotaSpec {
    keyward_engine::QuotaSpec {
        credits: q.credits,
        refill_amount: q.refill_amount,
        refill_interval: q.refill_interval,
        refill_day: q.refill_day,
    }
}

pub fn plan_view(p: &Plan) -> PlanView {
    PlanView {
        plan_id: p.plan_id.clone(),
        limits: p.limits.iter().map(limit_view).collect(),
        quota: p.quota.as_ref().map(quota_view),
        permissions: p.permissions.iter().map(ToString::to_string).collect(),
        version: p.version,
        created_at: Timestamp(p.created_at),
        updated_at: Timestamp(p.updated_at),
    }
}

pub fn ended_secret(e: &SecretEnd) -> EndedSecret {
    EndedSecret {
        start: e.start.clone(),
        expires_at: Timestamp(e.expires_at),
    }
}

pub fn event_view(e: AuditEvent) -> AuditEventView {
    AuditEventView {
        seq: e.seq,
        time: Timestamp(e.time),
        actor: e.actor,
        action: e.action,
        target: e.target,
        summary: e.summary,
        prev_hash: e.prev_hash,
        hash: e.hash,
    }
}

/// Cursors are opaque to clients; today they are the position of the last item returned.
pub fn encode_cursor(position: Option<i64>) -> Option<String> {
    position.map(|p| p.to_string())
}

pub fn decode_cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    cursor
        .map(|c| match c.parse::<i64>() {
            Ok(p) if p >= 0 => Ok(p),
            _ => Err(ApiError::field(
                "cursor",
                "is not a cursor returned by this API",
            )),
        })
        .transpose()
}

pub fn parse_limit(limit: Option<&str>) -> Result<Option<u32>, ApiError> {
    limit
        .map(|l| {
            l.parse::<u32>().map_err(|_| {
                ApiError::field(
                    "limit",
                    format!(
                        "must be a whole number between 1 and {}",
                        keyward_engine::MAX_PAGE
                    ),
                )
            })
        })
        .transpose()
}
