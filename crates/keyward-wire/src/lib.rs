//! keyward's JSON wire types: what the HTTP API accepts and returns, shared by the server and
//! the CLI client. Field names are snake_case; times are RFC 3339 strings in UTC; request
//! types reject unknown fields so a typo is a 400, not a silently ignored setting.
//!
//! Nothing here is a domain type: the server converts between these and `keyward-core`, so
//! internal enums never reach the wire by accident.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// An instant, serialized as an RFC 3339 string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[schema(value_type = String, format = DateTime, example = "2026-12-31T23:59:59Z")]
pub struct Timestamp(#[serde(with = "time::serde::rfc3339")] pub OffsetDateTime);

impl From<OffsetDateTime> for Timestamp {
    fn from(t: OffsetDateTime) -> Self {
        Self(t)
    }
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// A named rate limit, e.g. `{"name": "per_second", "limit": 50, "period_seconds": 1, "burst": 100}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// Name, unique per key (`A-Z a-z 0-9 _ . : -`).
    pub name: String,
    /// Units admitted per period.
    pub limit: u64,
    /// Period length in seconds.
    pub period_seconds: u64,
    /// Units that can be spent at once from a full bucket (default: `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// `key` (default), `owner` or `tenant`: who shares the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `exact` (default) or `local_first`: with Redis, whether every decision is one Redis
    /// round trip (N nodes admit exactly the limit) or is made from node-local state
    /// reconciled with Redis in the background (faster, with a documented overshoot bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// A usage quota: a credit balance, optionally refilled to `refill_amount` daily (00:00 UTC)
/// or monthly on `refill_day`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// Starting balance.
    pub credits: u64,
    /// Balance after each refill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_amount: Option<u64>,
    /// `daily` or `monthly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_interval: Option<String>,
    /// Day of the month (1 to 31) for monthly refills; short months use their last day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_day: Option<u8>,
}

/// `POST /v1/keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Who is accountable for the key (a team, a service, a person).
    pub owner: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tenant (customer) the key belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Environment, e.g. `live` (default) or `test`; test-like environments get the `kw_test` prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Why the key exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// A JSON object returned by verify (at most 4096 bytes serialized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Map<String, Value>>,
    /// Granted permissions, e.g. `orders.read`, `orders.*`, `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    /// Endpoint allowlist, e.g. `GET /v1/orders/*`; empty means any endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// When the key stops verifying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Lifetime in seconds from now (instead of `expires_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// Whether the key starts enabled (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Key prefix, `[a-z][a-z0-9_]{0,19}`; `kw_live` or `kw_test` by environment when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Plan the key follows; its own settings override the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// The key's own rate limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitSpec>,
    /// The key's own quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
    /// Allowed caller addresses as CIDR blocks or addresses (IPv4 and IPv6); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allowlist: Vec<String>,
    /// Allowed browser origins: `app.example.com` or `*.example.com`; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<String>,
}

/// `POST /v1/root-keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRootKeyRequest {
    /// Who is accountable for the root key (default `keyward-admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Confines the root key to this tenant: it sees and changes only that tenant's keys,
    /// audit events, usage and reports (see docs/keys.md, "Tenant-scoped root keys"). A root key
    /// that is itself confined must name its own tenant here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Root permissions (at least one): `keys.create`, `keys.read`, `keys.update`,
    /// `keys.revoke`, `keys.verify`, `audit.read`, `root.manage`, wildcards of them, or `*`.
    /// Only permissions the creating root key holds itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    /// When the root key stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Lifetime in seconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

/// `PATCH /v1/keys/{key_id}`: absent fields stay as they are; `null` clears `name` or
/// `expires_at`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// New display name.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, nullable)]
    pub name: Option<Option<String>>,
    /// New permissions (replaces the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// New route allowlist (replaces the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    /// New meta object (replaces it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Map<String, Value>>,
    /// New tags (replaces the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// New expiry; `null` removes it.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Timestamp>, nullable)]
    pub expires_at: Option<Option<Timestamp>>,
    /// Enable or disable the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// New plan; `null` takes the key off its plan.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, nullable)]
    pub plan: Option<Option<String>>,
    /// New own limits (replaces the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Vec<LimitSpec>>,
    /// New own quota settings; `null` removes them (the balance is changed through
    /// `/v1/keys/{key_id}/credits`).
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<QuotaSpec>, nullable)]
    pub quota: Option<Option<QuotaSpec>>,
    /// New IP allowlist (replaces the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_allowlist: Option<Vec<String>>,
    /// New allowed origins (replaces the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origins: Option<Vec<String>>,
}

/// `POST /v1/keys/{key_id}/rotate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// How long the previous secret keeps verifying (0 to 2592000; default 0: it stops at once).
    #[serde(default)]
    pub grace_period_seconds: i64,
}

/// `POST /v1/keys/{key_id}/revoke` and `POST /v1/root-keys/{key_id}/revoke`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeyRequest {
    /// Why the key is revoked (recorded in the key and the audit log).
    pub reason: String,
}

/// `POST /v1/keys/verify`.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyKeyRequest {
    /// The key presented by the client.
    pub key: String,
    /// Permission query, e.g. `orders.read AND (orders.write OR admin.*)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    /// HTTP method of the protected request (checked against the key's routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path of the protected request (checked against the key's routes), at most 4096 bytes;
    /// a query after `?` is ignored. A path that cannot be normalised safely (dot or empty
    /// segments, `;`, `%2F`, `\`, control characters, bad escapes) is a 400 naming `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The caller's IP address (checked against the key's IP allowlist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The request's `Origin` or `Referer` (checked against the key's allowed origins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Units this request consumes from limits and quota (default 1; 0 checks without
    /// consuming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
    /// Only a key of this tenant is valid (`TENANT_NOT_ALLOWED` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only a key of this environment is valid (`ENVIRONMENT_NOT_ALLOWED` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// One secret of a key, as displayed (never the secret itself or its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecretView {
    /// Prefix and the first four random characters.
    pub start: String,
    /// `current` or `deprecated` (rotated out, verifying until `expires_at`).
    pub state: String,
    /// When it was issued.
    pub created_at: Timestamp,
    /// When a deprecated secret stops verifying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// A key record as returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    /// Public identifier.
    pub key_id: String,
    /// Who is accountable.
    pub owner: String,
    /// Display name.
    pub name: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Environment.
    pub environment: String,
    /// Purpose.
    pub purpose: Option<String>,
    /// Labels.
    pub tags: Vec<String>,
    /// Caller-defined object.
    #[schema(value_type = Object)]
    pub meta: Map<String, Value>,
    /// Granted permissions.
    pub permissions: Vec<String>,
    /// Endpoint allowlist.
    pub routes: Vec<String>,
    /// Expiry.
    pub expires_at: Option<Timestamp>,
    /// Whether the key is enabled.
    pub enabled: bool,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// key_id of the root key that created it.
    pub created_by: Option<String>,
    /// Last change.
    pub updated_at: Timestamp,
    /// Last successful verification (written in the background, may lag by seconds).
    pub last_used_at: Option<Timestamp>,
    /// Revocation time.
    pub revoked_at: Option<Timestamp>,
    /// Revocation reason.
    pub revoked_reason: Option<String>,
    /// Last rotation.
    pub rotated_at: Option<Timestamp>,
    /// Live secrets: the current one and, during a grace period, the deprecated one.
    pub secrets: Vec<SecretView>,
    /// The plan the key follows.
    pub plan: Option<String>,
    /// The key's own rate limits (its plan may add more).
    pub limits: Vec<LimitSpec>,
    /// The key's own quota settings.
    pub quota: Option<QuotaSpec>,
    /// Allowed caller addresses.
    pub ip_allowlist: Vec<String>,
    /// Allowed browser origins.
    pub origins: Vec<String>,
}

/// `201` from `POST /v1/keys` and `POST /v1/root-keys`.
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// The secret. It is shown here once and never again.
    pub key: String,
    /// The stored record.
    pub record: KeyView,
}

/// A secret whose end time a rotation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EndedSecret {
    /// Display form of the secret.
    pub start: String,
    /// When it stops (or stopped) verifying.
    pub expires_at: Timestamp,
}

/// `201` from `POST /v1/keys/{key_id}/rotate`.
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RotatedKey {
    /// The new secret, shown once.
    pub key: String,
    /// The record after the rotation.
    pub record: KeyView,
    /// The previous secret and the end of its grace period.
    pub previous_secret: Option<EndedSecret>,
    /// Secrets that were still in an earlier grace period and were ended now, because at
    /// most two secrets of a key are live at once.
    pub ended_secrets: Vec<EndedSecret>,
}

/// `GET /v1/keys` and `GET /v1/root-keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// One page of keys, oldest first.
    pub keys: Vec<KeyView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Rotation hint in a verify response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RotationHint {
    /// Always true: the presented secret was rotated out.
    pub deprecated: bool,
    /// When the presented secret stops verifying.
    pub expires_at: Timestamp,
}

/// `200` from `POST /v1/keys/verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VerifyKeyResponse {
    /// True only for `VALID`.
    pub valid: bool,
    /// `VALID`, `MALFORMED`, `NOT_FOUND`, `REVOKED`, `EXPIRED`, `DISABLED`,
    /// `TENANT_NOT_ALLOWED`, `ENVIRONMENT_NOT_ALLOWED`, `INSUFFICIENT_PERMISSIONS`,
    /// `ROUTE_NOT_ALLOWED`, `IP_NOT_ALLOWED`, `ORIGIN_NOT_ALLOWED`, `RATE_LIMITED` or
    /// `USAGE_EXCEEDED`.
    pub code: String,
    /// The key's identifier, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Owner, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Name, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tenant, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Environment, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Granted permissions, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// Meta object, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Map<String, Value>>,
    /// Expiry, when found and set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Present when the presented secret was rotated out and is in its grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationHint>,
    /// Each rate limit of the key after this request (when the request reached the limits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitState>,
    /// Credits left, when the key has a quota and the request reached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_remaining: Option<u64>,
    /// For RATE_LIMITED and USAGE_EXCEEDED: seconds until a retry can succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Where the limits and quota were decided, when the request reached them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Enforcement>,
    /// Present when the answer was given without the store, because it could not be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<DegradedAnswer>,
}

/// Which state decided a request's limits and quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Enforcement {
    /// `redis` (shared by every node), `local_first` (this node's view of the shared limits,
    /// reconciled with Redis in the background), `local_fallback` (this node alone, because
    /// Redis did not answer) or `local` (this node alone: no Redis is configured).
    pub source: String,
    /// Why, in words.
    pub reason: String,
}

/// How a verify answer was given while the store was unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DegradedAnswer {
    /// `store_unavailable_stale_cache` (a cached entry past the staleness bound, within
    /// stale-if-error) or `store_unavailable_fail_open` (an unknown key admitted because
    /// `fail_open_unknown_keys` is on).
    pub reason: String,
    /// Age of the cached entry used, for `store_unavailable_stale_cache`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
}

/// One rate limit's state in a verify response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LimitState {
    /// The limit's name.
    pub name: String,
    /// Units per period.
    pub limit: u64,
    /// Period in seconds.
    pub period_seconds: u64,
    /// Units left.
    pub remaining: u64,
    /// Seconds until a request of the same cost would be admitted.
    pub reset: u64,
}

/// `POST /v1/keys/{key_id}/credits`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditsRequest {
    /// `set`, `increase` or `decrease` (never below zero).
    pub op: String,
    /// How many credits.
    pub amount: u64,
}

/// A key's credit balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Credits {
    /// The key.
    pub key_id: String,
    /// Credits left.
    pub remaining: u64,
}

/// `POST /v1/plans` and `PUT /v1/plans/{plan_id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// The plan's name (only in `POST`; the path names it in `PUT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    /// Rate limits of keys on the plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitSpec>,
    /// Quota of keys on the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
    /// Permissions of keys on the plan that set none of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanView {
    /// The plan's name.
    pub plan_id: String,
    /// Rate limits.
    pub limits: Vec<LimitSpec>,
    /// Quota.
    pub quota: Option<QuotaSpec>,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Version, incremented by each change.
    pub version: i64,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// `GET /v1/plans`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanList {
    /// Every plan, by name.
    pub plans: Vec<PlanView>,
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEventView {
    /// Position in the log, from 1.
    pub seq: i64,
    /// When it happened (millisecond precision).
    pub time: Timestamp,
    /// key_id of the root key that acted.
    pub actor: Option<String>,
    /// `key.create`, `key.update`, `key.rotate`, `key.revoke`, `root.create`, `root.revoke`
    /// or `auth.failed`.
    pub action: String,
    /// key_id acted on.
    pub target: Option<String>,
    /// Before/after summary (never a secret).
    #[schema(value_type = Object)]
    pub summary: Value,
    /// Hash of the previous event.
    pub prev_hash: String,
    /// SHA-256 of this event's fields and `prev_hash`.
    pub hash: String,
}

/// `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    /// One page of events in sequence order.
    pub events: Vec<AuditEventView>,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BrokenLinkView {
    /// Sequence number of the first bad event.
    pub seq: i64,
    /// What is wrong there.
    pub reason: String,
}

/// `POST /v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditVerifyReport {
    /// True if every link holds.
    pub intact: bool,
    /// Events checked before the first break (all of them if intact).
    pub checked: u64,
    /// The first broken link.
    pub first_broken: Option<BrokenLinkView>,
    /// Sequence number of the last verified event.
    pub head_seq: i64,
    /// Hash of the last verified event. The chain cannot reveal events cut off its end, so
    /// keep this value outside keyward now and then and compare it with a later report.
    pub head_hash: String,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, `degraded` (ready, but Redis is down: limits are node-local) or `unavailable`.
    pub status: String,
    /// Per-dependency status (for `/readyz`), e.g. `{"store": "ok", "redis": "unavailable"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub checks: Option<Map<String, Value>>,
}

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// `urn:keyward:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// Stable machine-readable code (see the table in docs/errors.md).
    pub code: String,
    /// The request field at fault, for validation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `Debug` for types carrying a plaintext key: the key is shown as `<redacted>`, so a stray
/// `{:?}` cannot leak it.
macro_rules! debug_without_key {
    ($ty:ident { $($field:ident),* }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("key", &"<redacted>")
                    $(.field(stringify!($field), &self.$field))*
                    .finish()
            }
        }
    };
}

debug_without_key!(VerifyKeyRequest {
    permissions,
    method,
    path
});
debug_without_key!(CreatedKey { record });
debug_without_key!(RotatedKey {
    record,
    previous_secret,
    ended_secrets
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_keys() {
        let request = VerifyKeyRequest {
            key: "kw_live_secret".into(),
            ..VerifyKeyRequest::default()
        };
        let text = format!("{request:?}");
        assert!(
            !text.contains("kw_live_secret") && text.contains("<redacted>"),
            "{text}"
        );
    }

    #[test]
    fn patch_distinguishes_absent_from_null() {
        let absent: UpdateKeyRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(absent.name, None);
        let null: UpdateKeyRequest =
            serde_json::from_str(r#"{"name": null, "expires_at": null}"#).unwrap();
        assert_eq!(null.name, Some(None));
        assert_eq!(null.expires_at, Some(None));
        let set: UpdateKeyRequest =
            serde_json::from_str(r#"{"expires_at": "2030-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(set.expires_at.unwrap().unwrap().0.year(), 2030);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err =
            serde_json::from_str::<CreateKeyRequest>(r#"{"owner": "a", "ownr": "b"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `ownr`"), "{err}");
    }
}

/// One key of the rotation report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RotationReportEntry {
    /// The key.
    pub key_id: String,
    /// Its owner.
    pub owner: String,
    /// Its tenant.
    pub tenant: Option<String>,
    /// Its environment.
    pub environment: String,
    /// When its current secret was issued (its last rotation, or its creation).
    pub secret_issued_at: Timestamp,
    /// Whole days since then.
    pub age_days: u64,
    /// The applicable policy's maximum age in days.
    pub max_age_days: u32,
    /// When it falls (or fell) out of policy.
    pub due_at: Timestamp,
    /// `overdue` (out of policy) or `due_soon` (within `within_days` of it).
    #[schema(example = "overdue")]
    pub status: String,
}

/// `GET /v1/reports/rotation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RotationReportView {
    /// When the report was made.
    pub generated_at: Timestamp,
    /// The "due soon" window in days.
    pub within_days: u32,
    /// Active API keys looked at.
    pub active_keys: u64,
    /// Of those, keys a rotation policy applies to.
    pub keys_with_policy: u64,
    /// Share of active keys within their policy (keys without a policy count as within).
    pub compliance_ratio: f64,
    /// Overdue keys, then keys due soon, each earliest due first.
    pub keys: Vec<RotationReportEntry>,
}

/// One row of `GET /v1/usage`: verifications of one key with one outcome in one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    /// Start of the hour or day (UTC).
    pub start: Timestamp,
    /// The key.
    pub key_id: String,
    /// The key's owner when it was used.
    pub owner: String,
    /// The key's tenant when it was used.
    pub tenant: Option<String>,
    /// The verification outcome (VALID, RATE_LIMITED, USAGE_EXCEEDED, REVOKED, ...).
    pub code: String,
    /// Verifications with this outcome.
    pub verifications: u64,
    /// Credits they took from the key's quota (0 for keys without a quota).
    pub credits: u64,
}

/// `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageReportView {
    /// `hour` or `day`.
    pub granularity: String,
    /// Buckets starting at or after this time (the request's `from`, rounded down).
    pub from: Timestamp,
    /// Buckets starting before this time (the request's `to`, rounded up).
    pub to: Timestamp,
    /// Rows ordered by start, key_id, code.
    pub items: Vec<UsageRow>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_cursor: Option<String>,
}
