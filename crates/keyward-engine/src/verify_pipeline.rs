//! The verify pipeline, `Keyward`'s side: parse and checksum (MALFORMED, no lookup) → hash →
//! [`KeyLookup::lookup`](crate::lookup::KeyLookup::lookup) (cache, freshness, store) →
//! [`decide`] → [`Admission::admit`](crate::admission::Admission::admit) for a key with limits
//! or a quota → `last_used_at` and usage counts → anomaly detection. Root keys go through the
//! same pipeline for [`Keyward::authenticate`].
//!
//! This is the hot path: every function here is measured by `benches/verify.rs`. The comments
//! on boxing and instrumentation say why each future is shaped as it is.

use std::future::Future;

use keyward_core::key::ParsedKey;
use keyward_core::permission::PermissionQuery;
use keyward_core::record::KeyKind;
use keyward_core::usage::Granularity;
use keyward_core::validate;
use keyward_core::verify::{VerifyCode, VerifyRequest, decide};
use keyward_store::StoreError;
use time::OffsetDateTime;
use tracing::Instrument as _;

use crate::Keyward;
use crate::error::{AuthError, EngineError};
use crate::scope::{Principal, Scope};
use crate::telemetry;
use crate::verification::{Degraded, Verification};

impl Keyward {
    // The public entry points return the pipeline's own future rather than wrapping it in
    // one more `async fn`: each wrapper would move the answer once more on its way out.

    /// Verifies an API key for a request. Well-formed inputs always give a [`Verification`];
    /// an error means the store failed on a cache miss.
    pub fn verify<'a>(
        &'a self,
        presented: &'a str,
        request: &'a VerifyRequest<'a>,
    ) -> impl Future<Output = Result<Verification, EngineError>> + Send + 'a {
        self.verify_in(presented, request, 1, Scope::All)
    }

    /// Verifies an API key for a request of `cost` units (0 checks without consuming).
    pub fn verify_cost<'a>(
        &'a self,
        presented: &'a str,
        request: &'a VerifyRequest<'a>,
        cost: u64,
    ) -> impl Future<Output = Result<Verification, EngineError>> + Send + 'a {
        self.verify_in(presented, request, cost, Scope::All)
    }

    /// Verifies an API key for a caller holding `keys.verify`: a key outside the caller's
    /// scope answers `NOT_FOUND`, before any limit, quota or usage is touched.
    pub fn verify_as<'a>(
        &'a self,
        actor: &'a Principal,
        presented: &'a str,
        request: &'a VerifyRequest<'a>,
        cost: u64,
    ) -> impl Future<Output = Result<Verification, EngineError>> + Send + 'a {
        self.verify_in(presented, request, cost, actor.scope())
    }

    /// [`verify_cost`](Self::verify_cost) for a caller confined to `scope` (see
    /// [`Keyward::verify_as`]).
    async fn verify_in(
        &self,
        presented: &str,
        request: &VerifyRequest<'_>,
        cost: u64,
        scope: Scope<'_>,
    ) -> Result<Verification, EngineError> {
        validate::cost(cost)?;
        let started = telemetry::latency_clock().raw();
        let (result, now) = match (ParsedKey::parse(presented), scope, request.ip) {
            (Err(_), ..) => (self.malformed(KeyKind::Api, started), None),
            // Boxed: a scoped caller naming an address is the rare case, and inline its future
            // would grow every verification's (a larger future is moved on every call).
            (Ok(parsed), Scope::Tenant(_), Some(ip)) => {
                let budgeted =
                    self.verify_scoped_budgeted(parsed, request, cost, scope, ip, started);
                Box::pin(budgeted).await
            }
            (Ok(parsed), ..) => {
                self.verify_scoped(parsed, request, KeyKind::Api, cost, scope, started)
                    .await
            }
        };
        log_verification(&result);
        if let Ok(verification) = &result {
            // The time the decision was made at; read here only for an answer that needed no
            // clock (MALFORMED), and only if the detector has something to note.
            let now = || now.unwrap_or_else(|| self.clock.now());
            self.anomaly.observe(verification, request.ip, now);
        }
        result
    }

    /// A scoped caller's verification, with the unknown-key budget of the address it names.
    ///
    /// The caller chooses that address, so the budget must not tell it whether a key outside
    /// its scope exists: such a key has to cost exactly what a key never issued costs, in every
    /// state of the cache. So, for scoped callers only, the budget is checked before any
    /// lookup except of a key of its own tenant this node has cached, and every `NOT_FOUND`
    /// answer takes a token, whether the store was read or not (the unscoped rule, a token per
    /// store read that found nothing, would charge a never-issued key once and then answer
    /// it from the not-found cache for free, while another tenant's key costs nothing).
    async fn verify_scoped_budgeted(
        &self,
        parsed: ParsedKey<'_>,
        request: &VerifyRequest<'_>,
        cost: u64,
        scope: Scope<'_>,
        ip: std::net::IpAddr,
        started: u64,
    ) -> (Result<Verification, EngineError>, Option<OffsetDateTime>) {
        let known_here = self
            .keys
            .known_record(&parsed.hash())
            .is_some_and(|cached| {
                cached.record.kind == KeyKind::Api && scope.admits(cached.record.tenant.as_deref())
            });
        if !known_here
            && let Err(retry_after_seconds) =
                self.keys.unknown_keys().check(Some(ip), self.clock.now())
        {
            let refused = EngineError::TooManyUnknownKeys {
                retry_after_seconds,
            };
            return (Err(refused), None);
        }
        let (result, now) = self
            .verify_scoped(parsed, request, KeyKind::Api, cost, scope, started)
            .await;
        if let Ok(v) = &result
            && v.code == VerifyCode::NotFound
        {
            let now = now.unwrap_or_else(|| self.clock.now());
            self.keys.unknown_keys().charge(Some(ip), now);
        }
        (result, now)
    }

    async fn verify_kind(
        &self,
        presented: &str,
        request: &VerifyRequest<'_>,
        kind: KeyKind,
        cost: u64,
    ) -> Result<Verification, EngineError> {
        // Root keys are not in the verification metrics: no latency to time.
        let started = 0;
        match ParsedKey::parse(presented) {
            Err(_) => self.malformed(kind, started),
            Ok(parsed) => {
                self.verify_scoped(parsed, request, kind, cost, Scope::All, started)
                    .await
                    .0
            }
        }
    }

    /// The answer to a string that is not a well-formed key (format or checksum), decided
    /// before any lookup and recorded like every answer (its span; for API keys the metrics,
    /// its latency from `started`) without entering the lookup pipeline: a flood of garbage
    /// costs the least it can.
    fn malformed(&self, kind: KeyKind, started: u64) -> Result<Verification, EngineError> {
        let span = verify_span(kind);
        let result = Ok(Verification::without_key(VerifyCode::Malformed));
        if kind == KeyKind::Api {
            let clock = telemetry::latency_clock();
            telemetry::meters().verification(&result, clock.delta(started, clock.raw()));
        }
        record_verification(&span, &result);
        result
    }

    /// The verification of a well-formed key, recorded in its span and (for API keys) in the
    /// metrics (its latency from `started`, a [`telemetry::latency_clock`] reading), with the
    /// time the lookup and decision used (read once, after the key parsed).
    async fn verify_scoped(
        &self,
        parsed: ParsedKey<'_>,
        request: &VerifyRequest<'_>,
        kind: KeyKind,
        cost: u64,
        scope: Scope<'_>,
        started: u64,
    ) -> (Result<Verification, EngineError>, Option<OffsetDateTime>) {
        let span = verify_span(kind);
        // Instrumenting would move the whole decision future (kilobytes) into the wrapper on
        // every call, which showed in the verify benchmark. With traces off the span is
        // disabled and the decision runs in place; with traces on it is boxed, so only a
        // pointer moves.
        let mut now = None;
        let decision = async {
            if span.is_disabled() {
                self.decide_kind(parsed, request, kind, cost, scope, &mut now)
                    .await
            } else {
                Box::pin(self.decide_kind(parsed, request, kind, cost, scope, &mut now))
                    .instrument(span.clone())
                    .await
            }
        };
        if kind == KeyKind::Root {
            let result = decision.await;
            record_verification(&span, &result);
            return (result, now);
        }
        let result = decision.await;
        let clock = telemetry::latency_clock();
        let elapsed = clock.delta(started, clock.raw());
        telemetry::meters().verification(&result, elapsed);
        record_verification(&span, &result);
        (result, now)
    }

    async fn decide_kind(
        &self,
        parsed: ParsedKey<'_>,
        request: &VerifyRequest<'_>,
        kind: KeyKind,
        cost: u64,
        scope: Scope<'_>,
        decided_at: &mut Option<OffsetDateTime>,
    ) -> Result<Verification, EngineError> {
        let hash = parsed.hash();
        let now = self.clock.now();
        *decided_at = Some(now);
        let mut degraded = None;
        // A scoped caller's budget is kept by `verify_scoped_budgeted`, not by the store read.
        let budget_ip = match scope {
            Scope::All => request.ip,
            Scope::Tenant(_) => None,
        };
        let found = match self.keys.lookup(&hash, now, budget_ip, &mut degraded).await {
            // Never where the request requires a tenant or environment: an unknown key's
            // cannot be known, and admitting it would open one tenant's route to any key. A
            // scoped caller never fails open either, for the same reason.
            Err(EngineError::Store(StoreError::Backend(source)))
                if kind == KeyKind::Api
                    && self.keys.fail_open_unknown_keys
                    && request.tenant.is_none()
                    && request.environment.is_none()
                    && scope == Scope::All =>
            {
                tracing::warn!(
                    error = %source,
                    "store unavailable: admitting a well-formed unknown key (fail_open_unknown_keys)"
                );
                let mut v = Verification::without_key(VerifyCode::Valid);
                v.degraded = Some(Degraded::FailOpenUnknownKey);
                return Ok(v);
            }
            other => other?,
        };
        let Some((record, secret)) = found else {
            return Ok(Verification::without_key(VerifyCode::NotFound));
        };
        // Root keys and API keys live in separate worlds; the constant-time comparison is a
        // second line of defence behind the hash lookup.
        if record.kind != kind || !secret.hash.ct_eq(&hash) {
            return Ok(Verification::without_key(VerifyCode::NotFound));
        }
        // A key outside a scoped caller's tenant does not exist for it: decided before
        // limits, quota and usage, so the caller can neither spend nor observe it.
        if !scope.admits(record.tenant.as_deref()) {
            return Ok(Verification::without_key(VerifyCode::NotFound));
        }
        let decision = decide(&record, &secret, request, now);
        let mut verification = Verification {
            code: decision.code,
            deprecated_until: decision.deprecated_until,
            degraded,
            ..Verification::without_key(decision.code)
        };
        let policy = &record.policy;
        if decision.code == VerifyCode::Valid
            && kind == KeyKind::Api
            && (!policy.limits.is_empty() || policy.quota.is_some())
        {
            // Boxed for the same reason as the store read in `lookup`: admission (Redis
            // included) is a large future, and only keys with limits or a quota need it.
            Box::pin(self.admission.admit(&record, cost, now))
                .await?
                .apply_to(&mut verification);
        }
        if verification.code == VerifyCode::Valid {
            self.usage.record_last_used(&record.key_id, now);
        }
        if kind == KeyKind::Api {
            // Credits are spent only by an admitted request on a key with a quota.
            let credits = if verification.code == VerifyCode::Valid && verification.quota.is_some()
            {
                cost
            } else {
                0
            };
            // Every time a clock gives has an hour; a time that had none would not be billed.
            if let Some(hour) = Granularity::Hour.floor(now) {
                self.usage.count(&record, hour, verification.code, credits);
            }
        }
        verification.key = Some(record);
        Ok(verification)
    }

    /// Authenticates a root key for an admin call needing `permission`.
    ///
    /// Failures are written to the audit log with the reason and the caller's address, never
    /// with the presented credential: always when they name an existing root key, and within
    /// per-address and total caps when anonymous (see `root_auth.rs`).
    pub async fn authenticate(
        &self,
        presented: Option<&str>,
        permission: &'static str,
        remote: Option<std::net::IpAddr>,
    ) -> Result<Principal, AuthError> {
        let (reason, actor) = match presented {
            None => ("MISSING", None),
            Some(key) => {
                let query = PermissionQuery::Require(permission.to_owned());
                let request = VerifyRequest {
                    query: Some(&query),
                    ip: remote,
                    ..VerifyRequest::default()
                };
                let v = self.verify_kind(key, &request, KeyKind::Root, 0).await?;
                match (v.code, v.key) {
                    (VerifyCode::Valid, Some(k)) => return Ok(Principal::new(k)),
                    (code, key) => (code.as_str(), key.map(|k| k.key_id.clone())),
                }
            }
        };
        Err(self
            .root_auth
            .refuse(reason, actor, permission, remote)
            .await)
    }
}

/// The span of one verification (see docs/observability.md, "Traces"): its attributes are `key_kind`, and,
/// once decided, the outcome `code`, the `key_id` and `tenant` of the key found, and whether the
/// answer was `degraded`. Never the presented key. Without a trace exporter the span is
/// disabled, and creating and recording it costs a cached callsite check.
fn verify_span(kind: KeyKind) -> tracing::Span {
    tracing::info_span!(
        "verify",
        key_kind = kind.as_str(),
        code = tracing::field::Empty,
        key_id = tracing::field::Empty,
        tenant = tracing::field::Empty,
        degraded = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

fn record_verification(span: &tracing::Span, result: &Result<Verification, EngineError>) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(v) => {
            span.record("code", v.code.as_str());
            if let Some(key) = &v.key {
                span.record("key_id", key.key_id.as_str());
                span.record("tenant", key.tenant.as_deref());
            }
            span.record("degraded", v.degraded.as_ref().map(Degraded::reason));
        }
        // The error's text stays in the log; the span only says that it failed.
        Err(_) => {
            span.record("otel.status_code", "error");
        }
    }
}

/// One debug line per refused verification, with the key_id when the key is known (never the
/// presented key); accepted ones at trace, as they are the bulk of the traffic.
fn log_verification(result: &Result<Verification, EngineError>) {
    let Ok(v) = result else { return };
    let key_id = v.key.as_ref().map(|k| k.key_id.as_str());
    if v.code == VerifyCode::Valid {
        tracing::trace!(key_id, "key verified");
    } else {
        tracing::debug!(key_id, code = v.code.as_str(), "verification refused");
    }
}

#[cfg(test)]
mod alloc_tests;
