//! The inputs and reports of the engine's admin operations: key specs and patches, what a
//! create or rotate hands back, list filters, plan specs, usage queries, and the engine's
//! settings.

use keyward_core::audit::BrokenLink;
use keyward_core::key::PlaintextKey;
use keyward_core::record::{KeyRecord, KeyStatus};
use keyward_core::rotation::RotationPlan;
use keyward_core::usage::{Granularity, UsageCount, UsageCursor};
use keyward_core::validate::{LimitSpec, QuotaSpec};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::cache::CacheConfig;
use crate::unknown_keys::UnknownKeyBudget;

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
    /// Page size (1 to [`MAX_PAGE`](keyward_core::validate::MAX_PAGE)).
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
    /// Never applies while the store is merely saturated (see [`StoreError::Saturated`](keyward_store::StoreError::Saturated)).
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

/// A usage read ([`Keyward::usage_as`](crate::Keyward::usage_as)); unset bounds default to the last day (hourly) or the
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
    /// Page size (1 to [`MAX_USAGE_PAGE`](keyward_core::validate::MAX_USAGE_PAGE); default [`DEFAULT_USAGE_PAGE`](keyward_core::validate::DEFAULT_USAGE_PAGE)).
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
