//! What a verification answers: [`Verification`], with the quota and degradation reports it
//! carries.

use std::sync::Arc;

use keyward_core::record::KeyRecord;
use keyward_core::verify::VerifyCode;
use time::OffsetDateTime;

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
    pub(crate) fn without_key(code: VerifyCode) -> Self {
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

/// One limit's report for a verify response and the RateLimit headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitReport {
    /// The limit's name.
    pub name: String,
    /// Units per period.
    pub limit: u64,
    /// Period in seconds.
    pub period_seconds: u64,
    /// Units left after this request.
    pub remaining: u64,
    /// Seconds until a request of the same cost would be admitted.
    pub reset_seconds: u64,
}

/// Where an admission decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnforcementSource {
    /// In Redis, shared by every node.
    Redis,
    /// On this node, because Redis did not answer.
    LocalFallback,
    /// On this node: no Redis is configured.
    Local,
    /// On this node, from its view of the shared state (`local_first` limits), reconciled with
    /// Redis in the background.
    LocalFirst,
}

impl EnforcementSource {
    /// The stable name (`redis`, `local_fallback`, `local`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::LocalFallback => "local_fallback",
            Self::Local => "local",
            Self::LocalFirst => "local_first",
        }
    }
}

/// Which state decided a request's limits and quota, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement {
    /// Where the decision was made.
    pub source: EnforcementSource,
    /// Why, in words.
    pub reason: String,
}
