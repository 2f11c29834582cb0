//! keyward's service layer: the verify pipeline and the key lifecycle, on top of a
//! [`KeyStore`] and a [`Clock`].
//!
//! [`Keyward`] is what the HTTP API (and later the gateway and the gRPC authorizer) call. It
//! owns the verify cache, the off-hot-path `last_used_at` buffer, and the rules that tie a
//! write to its audit event and its cache invalidation. It knows nothing of HTTP.
//!
//! The verify pipeline, in order: parse and checksum (MALFORMED, no lookup) → hash → cache
//! (secret, then record; NOT_FOUND cache) → store on a miss → [`decide`] → record use. Later
//! stages (rate limits, quotas, bindings) slot in after the decision.

mod address_table;
mod admission;
pub mod anomaly;
mod auth_audit;
mod cache;
pub mod clock;
pub mod events;
pub mod heavy_hitters;
mod metered_store;
pub mod rotation;
mod scope;
mod shared;
pub mod simulate;
mod single_flight;
pub mod telemetry;
pub mod unknown_keys;
mod usage;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use keyward_core::audit::{
    AuditAction, AuditDraft, AuditEvent, BrokenLink, ChainVerifier, summary_diff,
};
use keyward_core::clock::Clock;
use keyward_core::key::{
    EntropyError, KeyHash, PREFIX_ROOT, ParsedKey, PlaintextKey, Prefix, generate_key,
    generate_key_id, is_key_id,
};
use keyward_core::limit::ceil_seconds;
use keyward_core::permission::{Permission, PermissionQuery};
use keyward_core::quota::QuotaConfig;
use keyward_core::record::{KeyKind, KeyPolicy, KeyRecord, KeyStatus, Plan, SecretInfo};
use keyward_core::rotation::{MAX_GRACE, RotationPlan, plan_rotation};
use keyward_core::usage::{Granularity, UsageCount, UsageCursor};
use keyward_core::validate::{self, FieldError};
use keyward_core::verify::{VerifyCode, VerifyRequest, decide};
use keyward_store::{
    AuditFilter, Change, KeyFilter, KeyStore, KeyWrite, Page, PlanWrite, StoreError,
};
use serde_json::{Map, Value, json};
use time::{Duration, OffsetDateTime};
use tracing::Instrument as _;

pub use admission::LimitReport;
use admission::{Leases, Limiter, period_of};
pub use auth_audit::{
    ANONYMOUS_AUTH_FAILURES_PER_ADDRESS_PER_MINUTE, AUTH_FAILURE_EVENTS_PER_MINUTE,
};
pub use cache::{CacheConfig, CacheSizes};
use cache::{CachedRecord, CachedSecret, SecretLookup, VerifyCache};
pub use keyward_core::validate::{LimitSpec, QuotaSpec};
pub use keyward_store::CreditOp;
pub use scope::{Principal, Scope};
pub use shared::{
    Enforcement, EnforcementSource, ReconcileReport, RedisConfig, RedisHealth, SyncReport,
};
pub use unknown_keys::UnknownKeyBudget;
use usage::{LastUsedBuffer, UsageBuffer};

/// Largest page a list call returns.
pub const MAX_PAGE: u32 = 1000;
/// Page size when none is given.
pub const DEFAULT_PAGE: u32 = 100;
/// Permissions a root key may hold.
pub const ROOT_PERMISSIONS: [&str; 10] = [
    "keys.create",
    "keys.read",
    "keys.update",
    "keys.revoke",
    "keys.verify",
    "audit.read",
    "root.manage",
    "plans.read",
    "plans.write",
    "usage.read",
];
/// Why a tenant-scoped root key may read plans but not write them.
const PLANS_ARE_SHARED: &str =
    "plans are shared by every tenant (it may read them, not change them)";
/// How many times a write is retried when it races another write to the same key.
const WRITE_ATTEMPTS: usize = 3;

/// Errors of engine operations.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No key with this key_id (of the kind asked for).
    #[error("no key with key_id {key_id}")]
    NotFound {
        /// The key_id asked for.
        key_id: String,
    },
    /// An input field is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The key is revoked and cannot be changed.
    #[error("key {key_id} is revoked")]
    Revoked {
        /// The revoked key.
        key_id: String,
    },
    /// No plan with this name.
    #[error("no plan named {plan_id}")]
    PlanNotFound {
        /// The plan asked for.
        plan_id: String,
    },
    /// A plan with this name exists.
    #[error("a plan named {plan_id} exists")]
    PlanExists {
        /// The plan's name.
        plan_id: String,
    },
    /// Live keys still follow this plan.
    #[error("keys still follow plan {plan_id}; move them to another plan first")]
    PlanInUse {
        /// The plan's name.
        plan_id: String,
    },
    /// Revoking this root key would leave no usable root key with `root.manage`.
    #[error("{key_id} is the last usable root key with root.manage; create another one first")]
    LastRootKey {
        /// The root key that was to be revoked.
        key_id: String,
    },
    /// The key kept changing under concurrent writes.
    #[error("the key was changed concurrently; retry")]
    Conflict,
    /// A tenant-scoped root key asked for something that spans every tenant.
    #[error("this root key acts only on tenant {tenant:?}, and {what}")]
    OutOfScope {
        /// The root key's tenant.
        tenant: String,
        /// Why the operation is not confined to one tenant.
        what: &'static str,
    },
    /// A root key tried to create a root key holding a permission it does not hold itself.
    #[error(
        "{field}: a root key can grant only permissions it holds, and it does not hold {permission:?}"
    )]
    Escalation {
        /// The request field naming the permission.
        field: String,
        /// The permission asked for.
        permission: String,
    },
    /// The caller's address presented too many keys this node does not know; refused without
    /// a store read (see [`unknown_keys`]).
    #[error("too many unknown keys from this address; retry in {retry_after_seconds} s")]
    TooManyUnknownKeys {
        /// Seconds until the address may present an unknown key again.
        retry_after_seconds: u64,
    },
    /// The OS random generator failed.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::Conflict,
            StoreError::LastRootKey(key_id) => Self::LastRootKey { key_id },
            StoreError::PlanMissing(plan) => {
                Self::Invalid(FieldError::new("plan", format!("no plan named {plan:?}")))
            }
            other => Self::Store(other),
        }
    }
}

/// Why an admin call was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential, or one that is not a valid root key (401).
    #[error("a valid root key is required")]
    Unauthenticated,
    /// A valid root key without the permission needed (403).
    #[error("the root key lacks the permission {permission}")]
    Forbidden {
        /// The permission the call needs.
        permission: &'static str,
    },
    /// The check itself failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The result of a verification.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The outcome.
    pub code: VerifyCode,
    /// The key, when one was found.
    pub key: Option<Arc<KeyRecord>>,
    /// When the presented (rotated-out) secret stops verifying.
    pub deprecated_until: Option<OffsetDateTime>,
    /// Each rate limit's state after this request (empty if the key has none or the request
    /// did not reach the limit stage).
    pub limits: Vec<LimitReport>,
    /// Credits left, if the key has a quota and the request reached the quota stage.
    pub credits_remaining: Option<u64>,
    /// For RATE_LIMITED and USAGE_EXCEEDED: seconds until a retry can succeed.
    pub retry_after: Option<u64>,
    /// The quota as a RateLimit policy item, when the request reached the quota stage.
    pub quota: Option<QuotaReport>,
    /// Where the limit and quota decision was made and why, when the request reached it.
    pub enforcement: Option<Enforcement>,
    /// Set when the answer did not come from fresh data because the store was unreachable.
    pub degraded: Option<Degraded>,
}

/// Why a verification was answered without the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degraded {
    /// The key was answered from a cache entry older than the staleness bound (but within
    /// stale-if-error) because the store could not be reached.
    StaleCache {
        /// Age of the cached entry.
        age_seconds: u64,
    },
    /// The key is unknown here and the store could not be reached; it was admitted because
    /// `fail_open_unknown_keys` is on (no identity, permissions, limits or quota applied).
    FailOpenUnknownKey,
}

impl Degraded {
    /// Stable name for responses and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::StaleCache { .. } => "store_unavailable_stale_cache",
            Self::FailOpenUnknownKey => "store_unavailable_fail_open",
        }
    }
}

/// A quota described like a rate limit, for the RateLimit header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaReport {
    /// Credits per refill period (or the starting balance, without a refill).
    pub quota: u64,
    /// Seconds between refills, if the quota refills.
    pub window_seconds: Option<u64>,
    /// Credits left.
    pub remaining: u64,
    /// Seconds until the next refill, if any.
    pub reset_seconds: Option<u64>,
}

impl Verification {
    fn without_key(code: VerifyCode) -> Self {
        Self {
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
}

/// Retry-After for a quota without a refill rule: only an operator can add credits, so ask
/// callers to come back in an hour rather than hammer.
pub const EXHAUSTED_QUOTA_RETRY_SECONDS: u64 = 3600;
/// Largest cost one request may carry.
pub const MAX_COST: u64 = 1_000_000_000;

/// Input for a new key, as received (validated by the engine).
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// Who is accountable (required).
    pub owner: String,
    /// Display name.
    pub name: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Environment; `live` when absent.
    pub environment: Option<String>,
    /// Purpose.
    pub purpose: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Meta object.
    pub meta: Option<Map<String, Value>>,
    /// Granted permissions.
    pub permissions: Vec<String>,
    /// Route allowlist.
    pub routes: Vec<String>,
    /// Absolute expiry.
    pub expires_at: Option<OffsetDateTime>,
    /// Lifetime from now, in seconds (exclusive with `expires_at`).
    pub ttl_seconds: Option<i64>,
    /// Whether the key starts enabled (default true).
    pub enabled: Option<bool>,
    /// Key prefix; chosen from the environment when absent.
    pub prefix: Option<String>,
    /// Plan the key follows.
    pub plan: Option<String>,
    /// The key's own rate limits.
    pub limits: Vec<LimitSpec>,
    /// The key's own quota.
    pub quota: Option<QuotaSpec>,
    /// Allowed caller addresses (CIDR).
    pub ip_allowlist: Vec<String>,
    /// Allowed browser origins.
    pub origins: Vec<String>,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    /// New name (`Some(None)` clears it).
    pub name: Option<Option<String>>,
    /// New permissions.
    pub permissions: Option<Vec<String>>,
    /// New routes.
    pub routes: Option<Vec<String>>,
    /// New meta object.
    pub meta: Option<Map<String, Value>>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New expiry (`Some(None)` removes it).
    pub expires_at: Option<Option<OffsetDateTime>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New plan (`Some(None)` removes it).
    pub plan: Option<Option<String>>,
    /// New own limits.
    pub limits: Option<Vec<LimitSpec>>,
    /// New own quota (`Some(None)` removes it).
    pub quota: Option<Option<QuotaSpec>>,
    /// New IP allowlist.
    pub ip_allowlist: Option<Vec<String>>,
    /// New allowed origins.
    pub origins: Option<Vec<String>>,
}

/// A created key: the plaintext (to hand over once) and its record.
#[derive(Debug)]
pub struct Created {
    /// The secret, shown once.
    pub key: PlaintextKey,
    /// The stored record.
    pub record: KeyRecord,
}

/// A rotated key: the new plaintext, the record, and what happened to the older secrets.
#[derive(Debug)]
pub struct Rotated {
    /// The new secret, shown once.
    pub key: PlaintextKey,
    /// The stored record after the rotation.
    pub record: KeyRecord,
    /// The previous secret's grace period and any secret ended early.
    pub plan: RotationPlan,
}

/// Filters for listing keys.
#[derive(Debug, Clone, Default)]
pub struct ListKeys {
    /// Owner filter.
    pub owner: Option<String>,
    /// Tenant filter.
    pub tenant: Option<String>,
    /// Status filter.
    pub status: Option<KeyStatus>,
    /// Page size (1 to [`MAX_PAGE`]).
    pub limit: Option<u32>,
    /// Cursor from a previous page.
    pub after: Option<i64>,
}

/// The result of walking the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Events checked before the first break (all of them if intact).
    pub checked: u64,
    /// The first broken link, if any.
    pub first_broken: Option<BrokenLink>,
    /// Sequence number of the last verified event.
    pub head_seq: i64,
    /// Hash of the last verified event; keep a copy outside keyward to detect truncation.
    pub head_hash: String,
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Verify cache sizing.
    pub cache: CacheConfig,
    /// Credits leased from the store at a time per key: one durable write per this many
    /// credits spent, and the most a crash can overcharge a key by.
    pub quota_lease: u64,
    /// Admit well-formed keys this node does not know while the store is unreachable.
    /// Dangerous: any string with a valid checksum passes, with no identity, permissions,
    /// limits or quota. Off by default (unknown keys fail closed with STORE_UNAVAILABLE).
    /// Never applies while the store is merely saturated (see [`StoreError::Saturated`]).
    pub fail_open_unknown_keys: bool,
    /// Store reads for keys this node does not know, per caller address.
    pub unknown_key_budget: UnknownKeyBudget,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cache: CacheConfig::default(),
            quota_lease: 20,
            fail_open_unknown_keys: false,
            unknown_key_budget: UnknownKeyBudget::default(),
        }
    }
}

/// A plan as received, before validation.
#[derive(Debug, Clone, Default)]
pub struct PlanSpec {
    /// Rate limits of keys on the plan.
    pub limits: Vec<LimitSpec>,
    /// Quota of keys on the plan.
    pub quota: Option<QuotaSpec>,
    /// Permissions of keys on the plan that set none of their own.
    pub permissions: Vec<String>,
}

/// A usage read ([`Keyward::usage`]); unset bounds default to the last day (hourly) or the
/// last 30 days (daily).
#[derive(Debug, Clone)]
pub struct UsageQuery {
    /// Hourly rows or daily sums.
    pub granularity: Granularity,
    /// Start (rounded down to the granularity).
    pub from: Option<OffsetDateTime>,
    /// End, exclusive (rounded up to the granularity; default: the end of the bucket in
    /// progress).
    pub to: Option<OffsetDateTime>,
    /// Only this key.
    pub key_id: Option<String>,
    /// Only usage recorded with this owner.
    pub owner: Option<String>,
    /// Only usage recorded with this tenant.
    pub tenant: Option<String>,
    /// Page size (1 to [`MAX_USAGE_PAGE`]; default [`DEFAULT_USAGE_PAGE`]).
    pub limit: Option<u32>,
    /// Continue after this row (a previous report's `next`).
    pub after: Option<UsageCursor>,
}

/// A page of usage rows.
#[derive(Debug, Clone)]
pub struct UsageReport {
    /// The granularity of `items`.
    pub granularity: Granularity,
    /// The range covered, after rounding: buckets starting in `[from, to)`.
    pub from: OffsetDateTime,
    /// End of the range, exclusive.
    pub to: OffsetDateTime,
    /// Rows ordered by (start, key_id, code).
    pub items: Vec<UsageCount>,
    /// Where the next page starts, if there may be one.
    pub next: Option<UsageCursor>,
}

/// Largest usage page.
pub const MAX_USAGE_PAGE: u32 = 10_000;
/// Usage page size when none is given.
pub const DEFAULT_USAGE_PAGE: u32 = 1000;

/// The keyward service.
pub struct Keyward {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    cache: VerifyCache,
    last_used: LastUsedBuffer,
    usage: UsageBuffer,
    /// Budgets of the `auth.failed` events of anonymous failures.
    auth_failures: auth_audit::FailureAudit,
    limiter: Limiter,
    leases: Leases,
    plans: Mutex<std::collections::HashMap<String, Option<Arc<Plan>>>>,
    config: EngineConfig,
    /// Shared limits and quotas, when a Redis is configured.
    shared: Option<shared::Shared>,
    /// False while the store's change feed is down: notifications may be missed, so the cache
    /// is not served without a store read until the feed is back and the cache is cleared.
    feed_trusted: AtomicBool,
    /// Entries filled before this instant (Unix nanoseconds; set by a resync) are not fresh,
    /// though they stay usable for stale-if-error.
    trusted_since: AtomicI64,
    /// When the store last failed a verify-path read (Unix nanoseconds, `i64::MIN` if it has
    /// not): until [`STORE_PROBE_INTERVAL`] has passed, lookups skip the store and answer from
    /// stale-if-error at once instead of each waiting out the connection timeout.
    store_failed_at: AtomicI64,
    /// Store reads in flight by secret hash, so concurrent misses of one key read it once.
    flights: single_flight::Flights,
    /// Store reads for unknown keys per caller address.
    unknown_keys: unknown_keys::UnknownKeys,
    /// Events for webhooks and other subscribers.
    events: tokio::sync::broadcast::Sender<events::Event>,
    /// Per-key traffic baselines and the queue of anomalies awaiting a response.
    anomaly: anomaly::Detector,
    /// Rotation policies and what was announced about them.
    rotation: rotation::RotationState,
}

fn plan_summary(plan: &Plan) -> Value {
    json!({
        "limits": serde_json::to_value(&plan.limits).unwrap_or(Value::Null),
        "quota": serde_json::to_value(plan.quota).unwrap_or(Value::Null),
        "permissions": plan.permissions.iter().map(Permission::as_str).collect::<Vec<_>>(),
    })
}

pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, FieldError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(FieldError::new(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        )),
    }
}

fn prefix_of(start: &str) -> Option<Prefix> {
    let (prefix, _) = start.rsplit_once('_')?;
    Prefix::new(prefix).ok()
}

fn root_permissions(values: &[String]) -> Result<Vec<Permission>, FieldError> {
    let permissions = validate::permissions(values)?;
    for (i, p) in permissions.iter().enumerate() {
        let known = ROOT_PERMISSIONS.iter().any(|r| p.grants(r));
        if !known {
            return Err(FieldError::new(
                format!("permissions[{i}]"),
                format!(
                    "{p} grants none of the root permissions ({})",
                    ROOT_PERMISSIONS.join(", ")
                ),
            ));
        }
    }
    if permissions.is_empty() {
        return Err(FieldError::new(
            "permissions",
            "a root key needs at least one permission",
        ));
    }
    Ok(permissions)
}

impl Keyward {
    /// Builds the service over a store and a clock.
    pub fn new(store: Arc<dyn KeyStore>, clock: Arc<dyn Clock>, config: EngineConfig) -> Self {
        let now = clock.now();
        Self {
            store: Arc::new(metered_store::MeteredStore::new(store)),
            clock,
            cache: VerifyCache::new(config.cache),
            last_used: LastUsedBuffer::default(),
            usage: UsageBuffer::default(),
            auth_failures: auth_audit::FailureAudit::new(now),
            limiter: Limiter::default(),
            leases: Leases::default(),
            plans: Mutex::new(std::collections::HashMap::new()),
            config,
            shared: None,
            feed_trusted: AtomicBool::new(true),
            trusted_since: AtomicI64::new(i64::MIN),
            store_failed_at: AtomicI64::new(i64::MIN),
            flights: single_flight::Flights::new(),
            unknown_keys: unknown_keys::UnknownKeys::new(config.unknown_key_budget),
            events: tokio::sync::broadcast::channel(events::EVENT_BUFFER).0,
            anomaly: anomaly::Detector::new(anomaly::AnomalyConfig::default(), now),
            rotation: rotation::RotationState::default(),
        }
    }

    /// Shares rate limits and quotas with every node using the same Redis and namespace (see
    /// the `shared` module). Connects lazily: a Redis that is down at start means node-local
    /// fallback until it answers. Needs a Tokio runtime.
    pub fn with_redis(mut self, config: RedisConfig) -> Result<Self, EngineError> {
        self.shared = Some(shared::Shared::connect(config)?);
        Ok(self)
    }

    /// The current time according to the injected clock.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The current time truncated to the millisecond precision the store keeps, so a record
    /// returned by a write is identical to the same record read back later.
    fn write_time(&self) -> OffsetDateTime {
        let now = self.clock.now();
        now.replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
            .unwrap_or(now)
    }

    /// Verifies an API key for a request. Well-formed inputs always give a [`Verification`];
    /// an error means the store failed on a cache miss.
    pub async fn verify(
        &self,
        presented: &str,
        request: &VerifyRequest<'_>,
    ) -> Result<Verification, EngineError> {
        self.verify_cost(presented, request, 1).await
    }

    /// Verifies an API key for a request of `cost` units (0 checks without consuming).
    pub async fn verify_cost(
        &self,
        presented: &str,
        request: &VerifyRequest<'_>,
        cost: u64,
    ) -> Result<Verification, EngineError> {
        self.verify_in(presented, request, cost, Scope::All).await
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
        if cost > MAX_COST {
            return Err(FieldError::new("cost", format!("must be at most {MAX_COST}")).into());
        }
        let result = match (scope, request.ip) {
            // Boxed: a scoped caller naming an address is the rare case, and inline its future
            // would grow every verification's (a larger future is moved on every call).
            (Scope::Tenant(_), Some(ip)) => {
                Box::pin(self.verify_scoped_budgeted(presented, request, cost, scope, ip)).await
            }
            _ => {
                self.verify_scoped(presented, request, KeyKind::Api, cost, scope)
                    .await
            }
        };
        log_verification(&result);
        if let Ok(verification) = &result {
            self.anomaly
                .observe(verification, request.ip, self.clock.now());
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
        presented: &str,
        request: &VerifyRequest<'_>,
        cost: u64,
        scope: Scope<'_>,
        ip: std::net::IpAddr,
    ) -> Result<Verification, EngineError> {
        if let Ok(parsed) = ParsedKey::parse(presented) {
            let known_here = self
                .cache
                .known_record(&parsed.hash())
                .is_some_and(|cached| {
                    cached.record.kind == KeyKind::Api
                        && scope.admits(cached.record.tenant.as_deref())
                });
            if !known_here
                && let Err(retry_after_seconds) =
                    self.unknown_keys.check(Some(ip), self.clock.now())
            {
                return Err(EngineError::TooManyUnknownKeys {
                    retry_after_seconds,
                });
            }
        }
        let result = self
            .verify_scoped(presented, request, KeyKind::Api, cost, scope)
            .await;
        if let Ok(v) = &result
            && v.code == VerifyCode::NotFound
        {
            self.unknown_keys.charge(Some(ip), self.clock.now());
        }
        result
    }

    async fn verify_kind(
        &self,
        presented: &str,
        request: &VerifyRequest<'_>,
        kind: KeyKind,
        cost: u64,
    ) -> Result<Verification, EngineError> {
        self.verify_scoped(presented, request, kind, cost, Scope::All)
            .await
    }

    async fn verify_scoped(
        &self,
        presented: &str,
        request: &VerifyRequest<'_>,
        kind: KeyKind,
        cost: u64,
        scope: Scope<'_>,
    ) -> Result<Verification, EngineError> {
        let span = verify_span(kind);
        // Instrumenting would move the whole decision future (kilobytes) into the wrapper on
        // every call, which showed in the verify benchmark. With traces off the span is
        // disabled and the decision runs in place; with traces on it is boxed, so only a
        // pointer moves.
        let decision = async {
            if span.is_disabled() {
                self.decide_kind(presented, request, kind, cost, scope)
                    .await
            } else {
                Box::pin(self.decide_kind(presented, request, kind, cost, scope))
                    .instrument(span.clone())
                    .await
            }
        };
        if kind == KeyKind::Root {
            let result = decision.await;
            record_verification(&span, &result);
            return result;
        }
        let started = std::time::Instant::now();
        let result = decision.await;
        telemetry::verification(&result, started.elapsed());
        record_verification(&span, &result);
        result
    }

    async fn decide_kind(
        &self,
        presented: &str,
        request: &VerifyRequest<'_>,
        kind: KeyKind,
        cost: u64,
        scope: Scope<'_>,
    ) -> Result<Verification, EngineError> {
        let Ok(parsed) = ParsedKey::parse(presented) else {
            return Ok(Verification::without_key(VerifyCode::Malformed));
        };
        let hash = parsed.hash();
        let now = self.clock.now();
        let mut degraded = None;
        // A scoped caller's budget is kept by `verify_scoped_budgeted`, not by the store read.
        let budget_ip = match scope {
            Scope::All => request.ip,
            Scope::Tenant(_) => None,
        };
        let found = match self.lookup(&hash, now, budget_ip, &mut degraded).await {
            // Never where the request requires a tenant or environment: an unknown key's
            // cannot be known, and admitting it would open one tenant's route to any key. A
            // scoped caller never fails open either, for the same reason.
            Err(EngineError::Store(StoreError::Backend(source)))
                if kind == KeyKind::Api
                    && self.config.fail_open_unknown_keys
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
            Box::pin(self.admit(&record, cost, now, &mut verification)).await?;
        }
        if verification.code == VerifyCode::Valid {
            self.last_used.record(&record.key_id, now);
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
                self.usage.record(&record, hour, verification.code, credits);
            }
        }
        verification.key = Some(record);
        Ok(verification)
    }

    /// The limit and quota stages, all-or-nothing: limits are checked without consuming,
    /// then the quota is charged, then the limits are consumed (re-checked under their lock);
    /// if that last step refuses, the quota charge is given back.
    async fn admit(
        &self,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
        verification: &mut Verification,
    ) -> Result<(), EngineError> {
        let policy = &record.policy;
        if policy.limits.is_empty() && policy.quota.is_none() {
            return Ok(());
        }
        if let Some(limit) = policy.limits.iter().find(|l| l.burst < cost) {
            // It could never pass: a client told to retry would retry forever.
            return Err(FieldError::new(
                "cost",
                format!(
                    "{cost} exceeds the burst {} of limit {:?}; it can never be admitted",
                    limit.burst, limit.name
                ),
            )
            .into());
        }
        if self.shared.is_some() {
            return self.admit_shared(record, cost, now, verification).await;
        }
        verification.enforcement = Some(Enforcement {
            source: EnforcementSource::Local,
            reason: "limits and quota of this node (no shared store configured)".into(),
        });
        let peek = self.limiter.decide(record, cost, now, false);
        if !peek.admitted {
            verification.code = VerifyCode::RateLimited;
            verification.retry_after = Some(peek.retry_after);
            verification.limits = peek.reports;
            return Ok(());
        }
        if let Some(quota) = &policy.quota {
            let spent = self.spend_credits(&record.key_id, quota, cost, now).await?;
            let remaining = spent
                .unwrap_or_else(|| self.leases.reported_remaining(&record.key_id).unwrap_or(0));
            self.report_quota(quota, remaining, spent.is_some(), now, verification);
            if spent.is_none() {
                verification.code = VerifyCode::UsageExceeded;
                // Nothing was consumed: report the limits as they stand.
                verification.limits = self.limiter.decide(record, 0, now, false).reports;
                return Ok(());
            }
        }
        let commit = self.limiter.decide(record, cost, now, true);
        if !commit.admitted {
            if policy.quota.is_some() {
                self.leases.refund(&record.key_id, cost);
            }
            verification.code = VerifyCode::RateLimited;
            verification.retry_after = Some(commit.retry_after);
        }
        verification.limits = commit.reports;
        Ok(())
    }

    /// Fills the quota part of a verification: the RateLimit item, the credits left and, for a
    /// refused request, when a retry can succeed.
    fn report_quota(
        &self,
        quota: &QuotaConfig,
        remaining: u64,
        admitted: bool,
        now: OffsetDateTime,
        verification: &mut Verification,
    ) {
        let refill = quota.refill.and_then(|r| {
            let last = r.schedule.last_at_or_before(now)?;
            let next = r.schedule.next_after(now)?;
            Some((r.amount, (next - last).whole_seconds(), next))
        });
        let seconds_until = |t: OffsetDateTime| ceil_seconds((t - now).whole_nanoseconds());
        verification.quota = Some(QuotaReport {
            quota: refill.map_or(quota.credits, |(amount, _, _)| amount),
            window_seconds: refill.and_then(|(_, window, _)| u64::try_from(window).ok()),
            remaining,
            reset_seconds: refill.map(|(_, _, next)| seconds_until(next)),
        });
        verification.credits_remaining = Some(remaining);
        if !admitted {
            verification.retry_after = Some(
                refill.map_or(EXHAUSTED_QUOTA_RETRY_SECONDS, |(_, _, next)| {
                    seconds_until(next).max(1)
                }),
            );
        }
    }

    /// Spends `cost` credits, leasing a block from the store when the local lease runs short;
    /// `None` if the balance does not cover it.
    async fn spend_credits(
        &self,
        key_id: &str,
        quota: &QuotaConfig,
        cost: u64,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, EngineError> {
        let period = period_of(quota, now);
        if let Some(remaining) = self.leases.try_spend(key_id, cost, period) {
            return Ok(Some(remaining));
        }
        // One refill per key at a time: concurrent misses wait for it instead of each taking a
        // block, which keeps at most one block per key in memory (the crash bound) and one
        // store write per block.
        let gate = self.leases.refill_gate(key_id);
        let _refilling = gate.lock().await;
        if let Some(remaining) = self.leases.try_spend(key_id, cost, period) {
            return Ok(Some(remaining));
        }
        if self.leases.exhausted(key_id, period) {
            // The store had nothing left for this period: no write per refused request.
            return Ok(None);
        }
        let want = cost.max(self.config.quota_lease);
        let (granted, balance) = self.store.take_credits(key_id, quota, want, now).await?;
        self.leases
            .add(key_id, granted, balance.remaining, balance.period);
        Ok(self.leases.try_spend(key_id, cost, balance.period))
    }

    /// True if an entry filled at `filled_at` may be served without a store read: the change
    /// feed is trusted (no notification may have been missed) and the entry is younger than
    /// the staleness bound.
    fn fresh(&self, filled_at: OffsetDateTime, now: OffsetDateTime, trusted: bool) -> bool {
        trusted
            && unix_nanos(filled_at) >= self.trusted_since.load(Ordering::Acquire)
            && now - filled_at <= self.config.cache.max_staleness
    }

    /// The store read of a lookup, unless the store failed less than [`STORE_PROBE_INTERVAL`]
    /// ago: then the lookup goes straight to stale-if-error (one probe per interval finds out
    /// when the store is back).
    ///
    /// For a hash the cache does not hold as a key (`budgeted`), the read is refused, without
    /// reading, while the caller's address is over its budget of unknown keys
    /// (`unknown_keys.rs`); a key the node has seen is refreshed whatever the budget.
    /// Concurrent reads of one hash are made once (`single_flight.rs`). A saturated store
    /// (`StoreError::Saturated`) is neither a failure nor a recovery: the request is shed and
    /// the store is not marked down, so a flood that fills the pool cannot switch a node to its
    /// outage behaviour.
    async fn probe_store(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
        generation: u64,
        trusted: bool,
        ip: Option<std::net::IpAddr>,
        budgeted: bool,
    ) -> Result<Option<(Arc<KeyRecord>, SecretInfo)>, EngineError> {
        let failed_at = self.store_failed_at.load(Ordering::Acquire);
        if failed_at != i64::MIN
            && i128::from(unix_nanos(now)) - i128::from(failed_at)
                < STORE_PROBE_INTERVAL.as_nanos() as i128
        {
            return Err(EngineError::Store(StoreError::Backend(
                "the store failed moments ago; waiting for the next probe".into(),
            )));
        }
        if budgeted && let Err(retry_after_seconds) = self.unknown_keys.check(ip, now) {
            return Err(EngineError::TooManyUnknownKeys {
                retry_after_seconds,
            });
        }
        let (result, read_here) = self
            .flights
            .read(hash, generation, trusted, || {
                self.lookup_in_store(hash, now, generation, trusted)
            })
            .await;
        match &result {
            Err(EngineError::Store(StoreError::Backend(_))) => {
                self.store_failed_at
                    .store(unix_nanos(now), Ordering::Release);
            }
            Err(EngineError::Store(StoreError::Saturated(_))) => {}
            other => {
                if budgeted && read_here && matches!(other, Ok(None)) {
                    self.unknown_keys.charge(ip, now);
                }
                if failed_at != i64::MIN {
                    self.store_failed_at.store(i64::MIN, Ordering::Release);
                }
            }
        }
        result
    }

    /// Finds the key of a secret hash: from the cache while its entries are fresh, else from
    /// the store; if the store cannot be reached, from entries still within stale-if-error
    /// (reported in `fallback`), else the store's error (unknown keys fail closed).
    async fn lookup(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
        ip: Option<std::net::IpAddr>,
        fallback: &mut Option<Degraded>,
    ) -> Result<Option<(Arc<KeyRecord>, SecretInfo)>, EngineError> {
        let generation = self.cache.generation();
        let trusted = self.feed_trusted.load(Ordering::Acquire);
        let cached = self.cache.secret(hash);
        let cached_record = match &cached {
            SecretLookup::NotFound(at) if self.fresh(*at, now, trusted) => return Ok(None),
            SecretLookup::Known(secret) => {
                let record = self.cache.record(&secret.key_id);
                if let Some(record) = &record
                    && self.fresh(secret.filled_at, now, trusted)
                    && self.fresh(record.filled_at, now, trusted)
                {
                    return Ok(Some((Arc::clone(&record.record), secret.secret.clone())));
                }
                record
            }
            SecretLookup::NotFound(_) | SecretLookup::Unknown => None,
        };
        // Boxed: the store read's future is large, and keeping it inline would make every
        // verification's future (moved on each call) that large, cache hits included.
        // A secret this node has cached (if stale) is a key it knows: refreshing it is not an
        // unknown-key read, so the per-address budget does not hold it back.
        let budgeted = !matches!(cached, SecretLookup::Known(_));
        match Box::pin(self.probe_store(hash, now, generation, trusted, ip, budgeted)).await {
            Err(EngineError::Store(StoreError::Backend(source))) => {
                let usable = |at: OffsetDateTime| now - at <= self.config.cache.stale_if_error;
                if let (SecretLookup::Known(secret), Some(record)) = (&cached, cached_record)
                    && usable(secret.filled_at)
                    && usable(record.filled_at)
                {
                    let age = now - secret.filled_at.min(record.filled_at);
                    *fallback = Some(Degraded::StaleCache {
                        age_seconds: u64::try_from(age.whole_seconds()).unwrap_or(0),
                    });
                    return Ok(Some((record.record, secret.secret.clone())));
                }
                Err(EngineError::Store(StoreError::Backend(source)))
            }
            other => other,
        }
    }

    async fn lookup_in_store(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
        generation: u64,
        trusted: bool,
    ) -> Result<Option<(Arc<KeyRecord>, SecretInfo)>, EngineError> {
        let Some(found) = self.store.find_by_hash(hash, now).await? else {
            self.cache.fill_not_found(*hash, now, generation);
            return Ok(None);
        };
        let record = Arc::new(self.effective(found.record, trusted).await?);
        self.cache.fill_record(
            CachedRecord {
                record: Arc::clone(&record),
                filled_at: now,
            },
            generation,
        );
        self.cache.fill_secret(
            *hash,
            CachedSecret {
                key_id: record.key_id.clone(),
                secret: found.secret.clone(),
                filled_at: now,
            },
            generation,
        );
        Ok(Some((record, found.secret)))
    }

    /// The record as verification sees it: its plan's settings filled in.
    /// While the change feed is not trusted, plans are read from the store, not the plan map.
    async fn effective(&self, record: KeyRecord, trusted: bool) -> Result<KeyRecord, EngineError> {
        let Some(plan_id) = record.policy.plan.clone() else {
            return Ok(record);
        };
        let cached = if trusted {
            self.plans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&plan_id)
                .cloned()
        } else {
            None
        };
        let plan = match cached {
            Some(plan) => plan,
            None => {
                let generation = self.cache.generation();
                let plan = self.store.get_plan(&plan_id).await?.map(Arc::new);
                let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
                // A plan change since the read bumped the generation: do not cache what it
                // replaced (the plan map is cleared under the same lock order by forget_plans).
                if self.cache.generation() == generation {
                    plans.insert(plan_id, plan.clone());
                }
                plan
            }
        };
        Ok(record.with_plan(plan.as_deref()))
    }

    /// Authenticates a root key for an admin call needing `permission`.
    ///
    /// Failures are written to the audit log with the reason and the caller's address, never
    /// with the presented credential: always when they name an existing root key, and within
    /// per-address and total caps when anonymous (see `auth_audit.rs`).
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
        tracing::info!(
            key_id = actor.as_deref(),
            reason,
            permission,
            "root key refused"
        );
        let forbidden = reason == VerifyCode::InsufficientPermissions.as_str();
        self.audit_auth_failure(reason, actor, permission, remote)
            .await?;
        Err(if forbidden {
            AuthError::Forbidden { permission }
        } else {
            AuthError::Unauthenticated
        })
    }

    /// True if the store has a root key (so [`Keyward::bootstrap`] would create none).
    pub async fn has_root_key(&self) -> Result<bool, EngineError> {
        Ok(self.store.count_root_keys().await? > 0)
    }

    /// Creates the first root key if the store has never had one; returns it to print once.
    pub async fn bootstrap(&self) -> Result<Option<Created>, EngineError> {
        if self.has_root_key().await? {
            return Ok(None);
        }
        let spec = NewKey {
            owner: "keyward-bootstrap".into(),
            name: Some("bootstrap root key".into()),
            permissions: vec!["*".into()],
            ..NewKey::default()
        };
        let (write, created) = self.prepare_create(None, KeyKind::Root, spec).await?;
        let hash = write.new_secret.as_ref().map(|s| s.hash);
        // Nodes starting together on an empty shared store all get here; the store writes the
        // key only if no root key exists yet, atomically, so exactly one of them mints one.
        if self.store.create_first_root_key(write).await?.is_none() {
            return Ok(None);
        }
        self.cache.invalidate(&created.record.key_id, &hash);
        tracing::info!(key_id = %created.record.key_id, kind = "root", "key created");
        Ok(Some(created))
    }

    /// Creates an API key.
    pub async fn create_key(
        &self,
        actor: &Principal,
        spec: NewKey,
    ) -> Result<Created, EngineError> {
        self.create(Some(actor), KeyKind::Api, spec).await
    }

    /// Creates a root key.
    pub async fn create_root_key(
        &self,
        actor: &Principal,
        spec: NewKey,
    ) -> Result<Created, EngineError> {
        self.create(Some(actor), KeyKind::Root, spec).await
    }

    async fn create(
        &self,
        actor: Option<&Principal>,
        kind: KeyKind,
        spec: NewKey,
    ) -> Result<Created, EngineError> {
        let (write, created) = self.prepare_create(actor, kind, spec).await?;
        let hash = write.new_secret.as_ref().map(|s| s.hash);
        self.store.write_key(write).await?;
        self.cache.invalidate(&created.record.key_id, &hash);
        tracing::info!(key_id = %created.record.key_id, kind = kind.as_str(), "key created");
        Ok(created)
    }

    /// Validates `spec` and generates the key: the write that stores it, and what the caller
    /// gets back once it committed.
    async fn prepare_create(
        &self,
        actor: Option<&Principal>,
        kind: KeyKind,
        spec: NewKey,
    ) -> Result<(KeyWrite, Created), EngineError> {
        let now = self.clock.now();
        let environment =
            validate::ident("environment", spec.environment.as_deref().unwrap_or("live"))?;
        let (permissions, prefix) = match kind {
            KeyKind::Api => (
                validate::permissions(&spec.permissions)?,
                validate::prefix(spec.prefix.as_deref(), &environment)?,
            ),
            KeyKind::Root => {
                if spec.prefix.is_some() {
                    return Err(FieldError::new(
                        "prefix",
                        format!("root keys always use the prefix {PREFIX_ROOT}"),
                    )
                    .into());
                }
                (
                    root_permissions(&spec.permissions)?,
                    Prefix::new(PREFIX_ROOT)
                        .map_err(|e| FieldError::new("prefix", e.to_string()))?,
                )
            }
        };
        if let Some(actor) = actor {
            actor.may_create(kind, spec.tenant.as_deref(), &permissions)?;
        }
        let expires_at = match (spec.expires_at, spec.ttl_seconds) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "ttl_seconds",
                    "give expires_at or ttl_seconds, not both",
                )
                .into());
            }
            (Some(at), None) => Some(validate::expires_at("expires_at", at, now)?),
            (None, Some(ttl)) => Some(validate::ttl(ttl, now)?),
            (None, None) => None,
        };
        let mut rng = rand::rngs::SysRng;
        let key = generate_key(&prefix, &mut rng)?;
        let parsed = key
            .parsed()
            .map_err(|_| EngineError::Entropy(EntropyError))?;
        let secret = SecretInfo {
            hash: parsed.hash(),
            start: parsed.start().to_owned(),
            created_at: now,
            expires_at: None,
        };
        let record = KeyRecord {
            key_id: generate_key_id(&mut rng)?,
            kind,
            owner: validate::text("owner", &spec.owner)?,
            name: validate::optional_text("name", spec.name.as_deref())?,
            tenant: spec
                .tenant
                .as_deref()
                .map(|t| validate::ident("tenant", t))
                .transpose()?,
            environment,
            purpose: validate::optional_text("purpose", spec.purpose.as_deref())?,
            tags: validate::tags(&spec.tags)?,
            meta: validate::meta(spec.meta.clone().unwrap_or_default())?,
            permissions,
            routes: validate::routes(&spec.routes)?,
            expires_at,
            enabled: spec.enabled.unwrap_or(true),
            created_at: now,
            created_by: actor.map(|a| a.key_id.clone()),
            updated_at: now,
            last_used_at: None,
            revoked_at: None,
            revoked_reason: None,
            rotated_at: None,
            version: 1,
            secrets: vec![secret.clone()],
            policy: match kind {
                KeyKind::Api => self.policy(&spec).await?,
                KeyKind::Root => KeyPolicy::default(),
            },
        };
        let action = match kind {
            KeyKind::Api => AuditAction::KeyCreate,
            KeyKind::Root => AuditAction::RootCreate,
        };
        let write = KeyWrite {
            record: record.clone(),
            expected_version: None,
            new_secret: Some(secret),
            secret_ends: Vec::new(),
            audit: AuditDraft {
                time: now,
                actor: actor.map(|a| a.key_id.clone()),
                action,
                target: Some(record.key_id.clone()),
                summary: record.audit_summary(),
            },
        };
        Ok((write, Created { key, record }))
    }

    /// Validates the policy part of a new key.
    async fn policy(&self, spec: &NewKey) -> Result<KeyPolicy, EngineError> {
        if let Some(plan_id) = &spec.plan {
            self.require_plan(plan_id).await?;
        }
        Ok(KeyPolicy {
            plan: spec.plan.clone(),
            limits: validate::limits("limits", &spec.limits)?,
            quota: spec
                .quota
                .as_ref()
                .map(|q| validate::quota("quota", q))
                .transpose()?,
            ip_allowlist: validate::ip_allowlist(&spec.ip_allowlist)?,
            origins: validate::origins(&spec.origins)?,
        })
    }

    async fn require_plan(&self, plan_id: &str) -> Result<(), EngineError> {
        match self.store.get_plan(plan_id).await? {
            Some(_) => Ok(()),
            None => Err(FieldError::new("plan", format!("no plan named {plan_id:?}")).into()),
        }
    }

    /// Reads a plan.
    pub async fn get_plan(&self, plan_id: &str) -> Result<Plan, EngineError> {
        self.store
            .get_plan(plan_id)
            .await?
            .ok_or_else(|| EngineError::PlanNotFound {
                plan_id: plan_id.to_owned(),
            })
    }

    /// Lists every plan.
    pub async fn list_plans(&self) -> Result<Vec<Plan>, EngineError> {
        Ok(self.store.list_plans().await?)
    }

    /// Creates (`create`) or replaces a plan; every key on it changes at once.
    pub async fn put_plan(
        &self,
        actor: &Principal,
        plan_id: &str,
        spec: PlanSpec,
        create: bool,
    ) -> Result<Plan, EngineError> {
        actor.require_unscoped(PLANS_ARE_SHARED)?;
        let plan_id = validate::ident("plan_id", plan_id)?;
        let now = self.write_time();
        let current = self.store.get_plan(&plan_id).await?;
        let (expected_version, created_at, version, action) = match (&current, create) {
            (Some(_), true) => return Err(EngineError::PlanExists { plan_id }),
            (None, false) => return Err(EngineError::PlanNotFound { plan_id }),
            (None, true) => (None, now, 1, AuditAction::PlanCreate),
            (Some(p), false) => (
                Some(p.version),
                p.created_at,
                p.version + 1,
                AuditAction::PlanUpdate,
            ),
        };
        let plan = Plan {
            plan_id: plan_id.clone(),
            limits: validate::limits("limits", &spec.limits)?,
            quota: spec
                .quota
                .as_ref()
                .map(|q| validate::quota("quota", q))
                .transpose()?,
            permissions: validate::permissions(&spec.permissions)?,
            version,
            created_at,
            updated_at: now,
        };
        let summary = json!({
            "before": current.as_ref().map(plan_summary),
            "after": plan_summary(&plan),
        });
        self.store
            .write_plan(PlanWrite {
                plan: plan.clone(),
                expected_version,
                delete: false,
                audit: AuditDraft {
                    time: now,
                    actor: Some(actor.key_id.clone()),
                    action,
                    target: Some(plan_id.clone()),
                    summary,
                },
            })
            .await?;
        self.forget_plans();
        Ok(plan)
    }

    /// Deletes a plan no live key references.
    pub async fn delete_plan(&self, actor: &Principal, plan_id: &str) -> Result<(), EngineError> {
        actor.require_unscoped(PLANS_ARE_SHARED)?;
        let plan = self.get_plan(plan_id).await?;
        let now = self.write_time();
        let summary = json!({"before": plan_summary(&plan)});
        let write = PlanWrite {
            expected_version: Some(plan.version),
            delete: true,
            audit: AuditDraft {
                time: now,
                actor: Some(actor.key_id.clone()),
                action: AuditAction::PlanDelete,
                target: Some(plan.plan_id.clone()),
                summary,
            },
            plan,
        };
        match self.store.write_plan(write).await {
            Ok(_) => {
                self.forget_plans();
                Ok(())
            }
            Err(StoreError::Conflict) => Err(EngineError::PlanInUse {
                plan_id: plan_id.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// A plan changed: every cached record may have inherited from it.
    fn forget_plans(&self) {
        // Bump the generation first, then clear: a plan read that raced with the change either
        // sees the new generation and does not cache, or cached before the clear.
        self.cache.invalidate_all_records();
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Sets, increases or decreases a key's credits; unspent leased credits are returned to
    /// the balance first.
    pub async fn adjust_credits(
        &self,
        actor: &Principal,
        key_id: &str,
        op: CreditOp,
    ) -> Result<u64, EngineError> {
        let record = self
            .effective(
                self.get_key_as(actor, KeyKind::Api, key_id).await?,
                self.feed_trusted.load(Ordering::Acquire),
            )
            .await?;
        let Some(quota) = record.policy.quota else {
            return Err(FieldError::new(
                "quota",
                "the key has no quota (set one on the key or its plan)",
            )
            .into());
        };
        let now = self.write_time();
        let (name, amount) = match op {
            CreditOp::Set(n) => ("set", n),
            CreditOp::Increase(n) => ("increase", n),
            CreditOp::Decrease(n) => ("decrease", n),
        };
        let audit = AuditDraft {
            time: now,
            actor: Some(actor.key_id.clone()),
            action: AuditAction::CreditsAdjust,
            target: Some(key_id.to_owned()),
            summary: json!({"op": name, "amount": amount}),
        };
        if let Some(after) = self
            .adjust_shared(key_id, &quota, op, audit.clone(), now)
            .await?
        {
            return Ok(after);
        }
        let unspent = self.leases.take(key_id);
        let balance = self
            .store
            .adjust_credits(key_id, &quota, unspent, op, audit, now)
            .await?;
        Ok(balance.remaining)
    }

    /// Credits left for a key with a quota (durable balance plus this process's lease).
    pub(crate) async fn credits(&self, record: &KeyRecord) -> Result<Option<u64>, EngineError> {
        let record = self
            .effective(record.clone(), self.feed_trusted.load(Ordering::Acquire))
            .await?;
        let Some(quota) = record.policy.quota else {
            return Ok(None);
        };
        if let Some(live) = self.shared_credits(&record.key_id, &quota).await {
            return Ok(Some(live));
        }
        let now = self.clock.now();
        let balance = self.store.balance(&record.key_id, &quota, now).await?;
        if self.shared.is_some() {
            // Redis does not hold the balance (not loaded yet, or unreachable): the store's,
            // less what this node spent locally during an outage.
            return Ok(Some(
                balance
                    .remaining
                    .saturating_sub(self.owed_credits(&record.key_id)),
            ));
        }
        let leased = self
            .leases
            .reported_remaining(&record.key_id)
            .map_or(0, |r| r.saturating_sub(balance.remaining));
        Ok(Some(balance.remaining + leased))
    }

    /// Periodic upkeep: forgets rate-limit state of full buckets.
    pub fn maintain(&self) -> usize {
        self.leases.sweep();
        self.maintain_shared();
        self.limiter.sweep(self.clock.now())
    }

    /// Returns unspent leased credits to the store (at shutdown), so a clean stop loses none.
    pub async fn release_leases(&self) -> Result<(), EngineError> {
        self.release_shared().await?;
        for (key_id, lease) in self.leases.drain() {
            if lease.available == 0 {
                continue;
            }
            let Ok(record) = self.get_key(KeyKind::Api, &key_id).await else {
                continue;
            };
            if let Some(quota) = self
                .effective(record, self.feed_trusted.load(Ordering::Acquire))
                .await?
                .policy
                .quota
            {
                let now = self.clock.now();
                self.store
                    .give_back_credits(&key_id, &quota, lease.available, lease.period, now)
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads a key of `kind`, whatever its tenant (callers outside the engine use
    /// [`get_key_as`](Self::get_key_as)).
    pub(crate) async fn get_key(
        &self,
        kind: KeyKind,
        key_id: &str,
    ) -> Result<KeyRecord, EngineError> {
        let not_found = || EngineError::NotFound {
            key_id: key_id.to_owned(),
        };
        if !is_key_id(key_id) {
            return Err(not_found());
        }
        match self.store.get_key(key_id, self.clock.now()).await? {
            Some(record) if record.kind == kind => Ok(record),
            _ => Err(not_found()),
        }
    }

    /// Lists keys of `kind`, of every tenant (callers outside the engine use
    /// [`list_keys_as`](Self::list_keys_as)).
    pub(crate) async fn list_keys(
        &self,
        kind: KeyKind,
        query: ListKeys,
    ) -> Result<Page<KeyRecord>, EngineError> {
        let filter = KeyFilter {
            kind,
            owner: query.owner,
            tenant: query.tenant,
            status: query.status,
            now: self.clock.now(),
            limit: page_limit(query.limit)?,
            after: query.after,
        };
        Ok(self.store.list_keys(&filter).await?)
    }

    /// Reads, changes and writes a key with optimistic concurrency, retrying on a race; the
    /// change returns the new record, the secret changes and the audit event.
    async fn modify<F>(
        &self,
        kind: KeyKind,
        key_id: &str,
        change: F,
    ) -> Result<KeyRecord, EngineError>
    where
        F: Fn(&KeyRecord, OffsetDateTime) -> Result<KeyWrite, EngineError>,
    {
        for _ in 0..WRITE_ATTEMPTS {
            let current = self.get_key(kind, key_id).await?;
            let now = self.write_time();
            let mut write = change(&current, now)?;
            write.expected_version = Some(current.version);
            write.record.version = current.version + 1;
            write.record.updated_at = now;
            write.record.last_used_at = current.last_used_at;
            // The record as it is after the write, built here rather than read back: once the
            // write commits, a failing read must not lose a new secret that exists only in
            // this response.
            let mut written = write.record.clone();
            written.secrets = write.new_secret.iter().cloned().collect();
            for secret in &current.secrets {
                let mut secret = secret.clone();
                if let Some((_, ends)) = write.secret_ends.iter().find(|(h, _)| *h == secret.hash) {
                    secret.expires_at = Some(*ends);
                }
                if secret.is_live(now) {
                    written.secrets.push(secret);
                }
            }
            let touched: Vec<KeyHash> = written
                .secrets
                .iter()
                .chain(current.secrets.iter())
                .map(|s| s.hash)
                .collect();
            match self.store.write_key(write).await {
                Ok(_) => {
                    self.cache.invalidate(key_id, &touched);
                    return Ok(written);
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Conflict)
    }

    /// [`modify`](Self::modify) on behalf of `actor`: a key outside its scope is not found.
    async fn modify_as<F>(
        &self,
        actor: &Principal,
        kind: KeyKind,
        key_id: &str,
        change: F,
    ) -> Result<KeyRecord, EngineError>
    where
        F: Fn(&KeyRecord, OffsetDateTime) -> Result<KeyWrite, EngineError>,
    {
        self.modify(kind, key_id, |current, now| {
            actor.reveal(current)?;
            change(current, now)
        })
        .await
    }

    /// Updates an API key's metadata.
    pub async fn update_key(
        &self,
        actor: &Principal,
        key_id: &str,
        patch: KeyPatch,
    ) -> Result<KeyRecord, EngineError> {
        let nothing = patch.name.is_none()
            && patch.permissions.is_none()
            && patch.routes.is_none()
            && patch.meta.is_none()
            && patch.tags.is_none()
            && patch.expires_at.is_none()
            && patch.enabled.is_none()
            && patch.plan.is_none()
            && patch.limits.is_none()
            && patch.quota.is_none()
            && patch.ip_allowlist.is_none()
            && patch.origins.is_none();
        // Plan existence is checked before the write, outside the retry loop.
        if let Some(Some(plan_id)) = &patch.plan {
            self.require_plan(plan_id).await?;
        }
        if nothing {
            return Err(FieldError::new("body", "names no field to update").into());
        }
        self.modify_as(actor, KeyKind::Api, key_id, |current, now| {
            if current.revoked_at.is_some() {
                return Err(EngineError::Revoked {
                    key_id: key_id.to_owned(),
                });
            }
            let mut next = current.clone();
            if let Some(name) = &patch.name {
                next.name = validate::optional_text("name", name.as_deref())?;
            }
            if let Some(p) = &patch.permissions {
                next.permissions = validate::permissions(p)?;
            }
            if let Some(r) = &patch.routes {
                next.routes = validate::routes(r)?;
            }
            if let Some(m) = &patch.meta {
                next.meta = validate::meta(m.clone())?;
            }
            if let Some(t) = &patch.tags {
                next.tags = validate::tags(t)?;
            }
            if let Some(e) = patch.expires_at {
                next.expires_at = e
                    .map(|at| validate::expires_at("expires_at", at, now))
                    .transpose()?;
            }
            if let Some(enabled) = patch.enabled {
                next.enabled = enabled;
            }
            if let Some(plan) = &patch.plan {
                next.policy.plan.clone_from(plan);
            }
            if let Some(limits) = &patch.limits {
                next.policy.limits = validate::limits("limits", limits)?;
            }
            if let Some(quota) = &patch.quota {
                next.policy.quota = quota
                    .as_ref()
                    .map(|q| validate::quota("quota", q))
                    .transpose()?;
            }
            if let Some(ips) = &patch.ip_allowlist {
                next.policy.ip_allowlist = validate::ip_allowlist(ips)?;
            }
            if let Some(origins) = &patch.origins {
                next.policy.origins = validate::origins(origins)?;
            }
            Ok(KeyWrite {
                audit: AuditDraft {
                    time: now,
                    actor: Some(actor.key_id.clone()),
                    action: AuditAction::KeyUpdate,
                    target: Some(key_id.to_owned()),
                    summary: summary_diff(&current.audit_summary(), &next.audit_summary()),
                },
                record: next,
                expected_version: None,
                new_secret: None,
                secret_ends: Vec::new(),
            })
        })
        .await
    }

    /// Gives an API key a new secret; the old one verifies for `grace` more.
    pub async fn rotate_key(
        &self,
        actor: &Principal,
        key_id: &str,
        grace: Duration,
    ) -> Result<Rotated, EngineError> {
        if grace.is_negative() || grace > MAX_GRACE {
            return Err(FieldError::new(
                "grace_period_seconds",
                format!(
                    "must be between 0 and {} (30 days)",
                    MAX_GRACE.whole_seconds()
                ),
            )
            .into());
        }
        let new_key: Mutex<Option<(PlaintextKey, RotationPlan)>> = Mutex::new(None);
        let record = self
            .modify_as(actor, KeyKind::Api, key_id, |current, now| {
                if current.revoked_at.is_some() {
                    return Err(EngineError::Revoked { key_id: key_id.to_owned() });
                }
                let prefix = current
                    .secrets
                    .first()
                    .and_then(|s| prefix_of(&s.start))
                    .map_or_else(|| validate::prefix(None, &current.environment), Ok)?;
                let key = generate_key(&prefix, &mut rand::rngs::SysRng)?;
                let parsed = key.parsed().map_err(|_| EngineError::Entropy(EntropyError))?;
                let secret = SecretInfo {
                    hash: parsed.hash(),
                    start: parsed.start().to_owned(),
                    created_at: now,
                    expires_at: None,
                };
                let plan = plan_rotation(&current.secrets, grace, now);
                let mut next = current.clone();
                next.rotated_at = Some(now);
                let summary = json!({
                    "new_secret": secret.start,
                    "grace_period_seconds": grace.whole_seconds(),
                    "previous_secret": plan.previous.as_ref().map(|p| json!({"start": p.start, "expires_at": p.expires_at.unix_timestamp()})),
                    "ended_secrets": plan.ended.iter().map(|e| e.start.as_str()).collect::<Vec<_>>(),
                });
                let write = KeyWrite {
                    record: next,
                    expected_version: None,
                    new_secret: Some(secret),
                    secret_ends: plan.changes().map(|c| (c.hash, c.expires_at)).collect(),
                    audit: AuditDraft {
                        time: now,
                        actor: Some(actor.key_id.clone()),
                        action: AuditAction::KeyRotate,
                        target: Some(key_id.to_owned()),
                        summary,
                    },
                };
                *new_key.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, plan));
                Ok(write)
            })
            .await?;
        let (key, plan) = new_key
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or(EngineError::Conflict)?;
        tracing::info!(key_id, "key rotated");
        Ok(Rotated { key, record, plan })
    }

    /// Revokes a key of `kind`: every secret fails with REVOKED from now on.
    pub async fn revoke_key(
        &self,
        actor: &Principal,
        kind: KeyKind,
        key_id: &str,
        reason: &str,
    ) -> Result<KeyRecord, EngineError> {
        let reason = validate::reason(reason)?;
        // The last usable root.manage key is guarded inside the write's transaction by the
        // store (`KeyStore::write_key`), for the key being revoked only; an out-of-scope key
        // is not found first (`modify_as`), before that guard could tell otherwise.
        let record = self
            .modify_as(actor, kind, key_id, |current, now| {
                if current.revoked_at.is_some() {
                    return Err(EngineError::Revoked { key_id: key_id.to_owned() });
                }
                let mut next = current.clone();
                next.revoked_at = Some(now);
                next.revoked_reason = Some(reason.clone());
                Ok(KeyWrite {
                    audit: AuditDraft {
                        time: now,
                        actor: Some(actor.key_id.clone()),
                        action: match kind {
                            KeyKind::Api => AuditAction::KeyRevoke,
                            KeyKind::Root => AuditAction::RootRevoke,
                        },
                        target: Some(key_id.to_owned()),
                        summary: json!({
                            "reason": reason,
                            "secrets": current.secrets.iter().map(|s| s.start.as_str()).collect::<Vec<_>>(),
                        }),
                    },
                    record: next,
                    expected_version: None,
                    new_secret: None,
                    secret_ends: Vec::new(),
                })
            })
            .await?;
        tracing::info!(key_id, kind = kind.as_str(), "key revoked");
        if kind == KeyKind::Api {
            self.publish(events::Event::KeyRevoked {
                key_id: record.key_id.clone(),
                owner: record.owner.clone(),
                tenant: record.tenant.clone(),
                reason,
                at: record.revoked_at.unwrap_or_else(|| self.now()),
            });
        }
        Ok(record)
    }

    /// Lists audit events of every tenant (the engine's tests; callers outside the engine use
    /// [`list_audit_as`](Self::list_audit_as)).
    #[cfg(test)]
    pub(crate) async fn list_audit(
        &self,
        target: Option<String>,
        action: Option<String>,
        limit: Option<u32>,
        after: Option<i64>,
    ) -> Result<Page<AuditEvent>, EngineError> {
        self.audit_page(target, action, limit, after, None).await
    }

    /// A page of audit events; with `tenant`, only those whose target or actor is a key of it.
    async fn audit_page(
        &self,
        target: Option<String>,
        action: Option<String>,
        limit: Option<u32>,
        after: Option<i64>,
        tenant: Option<String>,
    ) -> Result<Page<AuditEvent>, EngineError> {
        if action
            .as_deref()
            .is_some_and(|a| AuditAction::parse(a).is_none())
        {
            let known: Vec<_> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
            return Err(
                FieldError::new("action", format!("must be one of {}", known.join(", "))).into(),
            );
        }
        let filter = AuditFilter {
            target,
            action,
            tenant,
            limit: page_limit(limit)?,
            after,
        };
        Ok(self.store.list_audit(&filter).await?)
    }

    /// Walks the whole audit chain and reports the first broken link.
    pub(crate) async fn verify_audit_chain(&self) -> Result<ChainReport, EngineError> {
        fn report(verifier: &ChainVerifier, first_broken: Option<BrokenLink>) -> ChainReport {
            let (head_seq, head_hash) = verifier.head();
            ChainReport {
                checked: verifier.checked(),
                first_broken,
                head_seq,
                head_hash: head_hash.to_owned(),
            }
        }
        let mut verifier = ChainVerifier::default();
        let mut filter = AuditFilter {
            limit: MAX_PAGE,
            ..AuditFilter::default()
        };
        loop {
            let page = self.store.list_audit(&filter).await?;
            for event in &page.items {
                if let Err(broken) = verifier.check(event) {
                    return Ok(report(&verifier, Some(broken)));
                }
            }
            match page.next_cursor {
                Some(cursor) => filter.after = Some(cursor),
                None => return Ok(report(&verifier, None)),
            }
        }
    }

    /// Writes buffered `last_used_at` times to the store; the server calls it periodically
    /// and at shutdown. Returns how many keys were written.
    pub async fn flush_last_used(&self) -> Result<usize, EngineError> {
        let batch = self.last_used.drain();
        if let Err(e) = self.store.touch_last_used(&batch).await {
            // Put them back so the next flush retries; later uses win on merge.
            self.last_used.restore(batch);
            return Err(e.into());
        }
        Ok(batch.len())
    }

    /// Adds the usage counted since the last flush to the store; the server calls it
    /// periodically and at shutdown. Returns how many (key, hour, outcome) rows were written.
    /// A failed flush keeps the counts for the next one.
    /// Cancelling it (dropping the future mid-write) also keeps them; only a write whose
    /// commit is lost on its way back is counted twice by the retry.
    pub async fn flush_usage(&self) -> Result<usize, EngineError> {
        let batch = self.usage.take_batch();
        self.store.add_usage(batch.counts()).await?;
        Ok(batch.written())
    }

    /// Reads usage for billing (written by [`flush_usage`](Self::flush_usage), so counts of
    /// the last flush interval are not in it yet).
    pub(crate) async fn usage(&self, query: UsageQuery) -> Result<UsageReport, EngineError> {
        let granularity = query.granularity;
        let out_of_range = |field: &'static str| {
            FieldError::new(
                field,
                "must be a time from 1970-01-01T00:00:00Z to before 9000-01-01T00:00:00Z",
            )
        };
        for (field, t) in [("from", query.from), ("to", query.to)] {
            if t.is_some_and(|t| !keyward_core::usage::in_range(t)) {
                return Err(out_of_range(field).into());
            }
        }
        // By default the bucket in progress is included (its counts so far). Within the
        // range checked above, rounding and the default span cannot leave the calendar.
        let to = match query.to {
            Some(to) => granularity.ceil(to),
            None => granularity
                .floor(self.clock.now())
                .and_then(|t| t.checked_add(Duration::milliseconds(granularity.millis()))),
        }
        .ok_or_else(|| out_of_range("to"))?;
        let from = match query.from {
            Some(from) => Some(from),
            None => to.checked_sub(granularity.default_span()),
        }
        .and_then(|from| granularity.floor(from))
        .filter(|from| keyward_core::usage::in_range(*from))
        .ok_or_else(|| out_of_range("from"))?;
        if from >= to {
            return Err(FieldError::new("from", "must be before 'to'").into());
        }
        let longest = granularity.max_span();
        if to - from > longest {
            return Err(FieldError::new(
                "from",
                format!(
                    "the range may span at most {} days at granularity '{}'",
                    longest.whole_days(),
                    granularity.as_str()
                ),
            )
            .into());
        }
        // A cursor belongs to a page of this granularity and range: its row starts a bucket
        // inside it (a cursor from another query would silently skip rows).
        if let Some(after) = &query.after
            && (granularity.floor(after.start) != Some(after.start)
                || after.start < from
                || after.start >= to)
        {
            return Err(FieldError::new(
                "cursor",
                "does not belong to this granularity and range: pass the same from, to and \
                 granularity as the request that returned it",
            )
            .into());
        }
        let limit = query.limit.unwrap_or(DEFAULT_USAGE_PAGE);
        if !(1..=MAX_USAGE_PAGE).contains(&limit) {
            return Err(FieldError::new(
                "limit",
                format!("must be between 1 and {MAX_USAGE_PAGE}"),
            )
            .into());
        }
        let filter = keyward_store::UsageFilter {
            granularity,
            from,
            to,
            key_id: query.key_id,
            owner: query.owner,
            tenant: query.tenant,
            limit,
            after: query.after,
        };
        let page = self.store.list_usage(&filter).await?;
        Ok(UsageReport {
            granularity,
            from,
            to,
            items: page.items,
            next: page.next,
        })
    }

    /// Checks that the store answers (for `/readyz`).
    ///
    /// It leaves the verify path's failure state alone: anyone can call `/readyz`, and a ping
    /// that happens to succeed must not send every lookup back to a store that just failed
    /// before [`STORE_PROBE_INTERVAL`] has passed (issue 10, finding 5).
    pub async fn ready(&self) -> Result<(), EngineError> {
        self.store.ping().await?;
        Ok(())
    }

    /// Publishes an event to every subscriber; never blocks (with no subscriber it is dropped).
    pub fn publish(&self, event: events::Event) {
        let _ = self.events.send(event);
    }

    /// Subscribes to events published from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<events::Event> {
        self.events.subscribe()
    }

    /// Current cache entry counts.
    pub fn cache_sizes(&self) -> CacheSizes {
        self.cache.sizes()
    }

    /// True while the store's change feed is connected (or the store has no other writers),
    /// so the cache may answer without a store read.
    pub fn change_feed_trusted(&self) -> bool {
        self.feed_trusted.load(Ordering::Acquire)
    }

    /// Follows the store's change feed, evicting what other nodes change, until the process
    /// stops; returns at once for a store with no other writers (the embedded SQLite store).
    ///
    /// While the feed is down the cache is not trusted: verifications read the store (and
    /// fall back to stale-if-error entries only if the store fails too). When the feed is
    /// back the whole cache is cleared before it is trusted again, since any notification of
    /// the outage may have been missed.
    pub async fn follow_changes(self: Arc<Self>) {
        // The first retry after a success is immediate; repeated failures back off.
        let mut backoff = std::time::Duration::ZERO;
        let mut feed = loop {
            match self.store.changes().await {
                Ok(None) => return,
                Ok(Some(feed)) => break feed,
                Err(e) => {
                    self.distrust(&e);
                    backoff = next_backoff(backoff).await;
                }
            }
        };
        // Changes committed before the subscription began were not seen.
        self.apply_change(Change::Resync);
        backoff = std::time::Duration::ZERO;
        loop {
            match feed.next().await {
                Ok(change) => {
                    backoff = std::time::Duration::ZERO;
                    self.apply_change(change);
                }
                Err(e) => {
                    self.distrust(&e);
                    backoff = next_backoff(backoff).await;
                }
            }
        }
    }

    fn distrust(&self, error: &StoreError) {
        if self.feed_trusted.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                error = %error,
                "change feed lost: verifying from the store until it is back"
            );
        }
    }

    /// Applies one change seen on the feed (this node's own writes arrive too; evicting
    /// twice is harmless).
    fn apply_change(&self, change: Change) {
        match change {
            Change::Key { key_id, written_at } => {
                if let Some(at) = written_at {
                    telemetry::propagation(self.clock.now() - at);
                }
                self.cache.invalidate_key(&key_id);
            }
            Change::Plan { .. } => self.forget_plans(),
            Change::Credits { key_id } => {
                // The balance was changed elsewhere: credits leased before the change are
                // dropped (at most one lease block, the same bound as a crash).
                let dropped = self.leases.take(&key_id);
                if dropped > 0 {
                    tracing::debug!(key_id, dropped, "credits changed elsewhere; lease dropped");
                }
            }
            Change::Resync => {
                // Nothing cached before now is fresh any more (it may predate a missed
                // change), but it stays usable for stale-if-error should the store fail again.
                self.trusted_since
                    .store(unix_nanos(self.clock.now()), Ordering::Release);
                self.cache.bump_generation();
                self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
                if !self.feed_trusted.swap(true, Ordering::AcqRel) {
                    tracing::info!("change feed connected; cache cleared and trusted again");
                }
            }
        }
    }
}

/// After a verify-path store read fails, how long lookups answer from stale-if-error without
/// trying the store again.
const STORE_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Nanoseconds since the Unix epoch, saturated to `i64` (good until the year 2262).
fn unix_nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// Waits between attempts to reach a lost change feed.
const FEED_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(50);
const FEED_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits `current` (nothing the first time) and returns the next wait, doubling to a cap.
async fn next_backoff(current: std::time::Duration) -> std::time::Duration {
    if current.is_zero() {
        return FEED_BACKOFF_MIN;
    }
    tokio::time::sleep(current).await;
    (current * 2).min(FEED_BACKOFF_MAX)
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
mod root_guard_tests;
#[cfg(test)]
mod shared_tests;
#[cfg(test)]
mod store_miss_tests;
#[cfg(test)]
mod test_proxy;
#[cfg(test)]
mod tests;
