//! What the store keeps about a key: its metadata and its secrets (as hashes).

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::binding::OriginPattern;
use crate::key::KeyHash;
use crate::limit::RateLimit;
use crate::permission::Permission;
use crate::quota::QuotaConfig;
use crate::route::RoutePattern;

/// Whether a key is an API key handed to clients or a root key for keyward's own admin API.
///
/// Root keys are kept apart: they never verify through the public verify call (they answer
/// NOT_FOUND there), and API keys never authenticate the admin API, whatever they are granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// A key issued to an API client.
    Api,
    /// A credential for keyward's admin API.
    Root,
}

impl KeyKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Root => "root",
        }
    }

    /// Parses the stored name.
    pub fn from_stored(s: &str) -> Option<Self> {
        match s {
            "api" => Some(Self::Api),
            "root" => Some(Self::Root),
            _ => None,
        }
    }
}

/// The lifecycle status of a key at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    /// Neither revoked nor past its expiry (it may still be disabled).
    Active,
    /// Revoked by an operator; permanent.
    Revoked,
    /// Past its `expires_at`.
    Expired,
}

impl KeyStatus {
    /// The name used in filters and responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }

    /// Parses a status name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "revoked" => Some(Self::Revoked),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// One secret of a key. A key has one current secret and, during a rotation's grace period,
/// one deprecated secret; secrets that ended stay stored so they answer EXPIRED, not NOT_FOUND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// Hash of the whole secret.
    pub hash: KeyHash,
    /// Public display form: prefix and the first four random characters.
    pub start: String,
    /// When this secret was issued.
    pub created_at: OffsetDateTime,
    /// `None` for the current secret; for a rotated-out secret, when it stops (or stopped)
    /// verifying.
    pub expires_at: Option<OffsetDateTime>,
}

impl SecretInfo {
    /// True if this secret still verifies at `now` (ignoring the key's own state).
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// A key's metadata and live secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// Public identifier, `key_` + base62.
    pub key_id: String,
    /// API key or root key.
    pub kind: KeyKind,
    /// Who is accountable for the key.
    pub owner: String,
    /// Human-readable name.
    pub name: Option<String>,
    /// Tenant (customer) the key belongs to.
    pub tenant: Option<String>,
    /// Environment, e.g. `live` or `test`.
    pub environment: String,
    /// Why the key exists.
    pub purpose: Option<String>,
    /// Free-form labels.
    pub tags: Vec<String>,
    /// Caller-defined JSON object, bounded in size.
    pub meta: Map<String, Value>,
    /// Granted permissions.
    pub permissions: Vec<Permission>,
    /// Endpoint allowlist; empty means any endpoint.
    pub routes: Vec<RoutePattern>,
    /// When the key stops verifying, if ever.
    pub expires_at: Option<OffsetDateTime>,
    /// A disabled key answers DISABLED until enabled again.
    pub enabled: bool,
    /// When the key was created.
    pub created_at: OffsetDateTime,
    /// key_id of the root key that created it (`None` for the bootstrap root key).
    pub created_by: Option<String>,
    /// When the record last changed.
    pub updated_at: OffsetDateTime,
    /// When the key last verified successfully (updated off the hot path).
    pub last_used_at: Option<OffsetDateTime>,
    /// When the key was revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// When the key was last rotated.
    pub rotated_at: Option<OffsetDateTime>,
    /// Optimistic-concurrency version, incremented by every write.
    pub version: i64,
    /// Secrets that were live when the record was read, current first.
    pub secrets: Vec<SecretInfo>,
    /// Limits, quota, plan and bindings.
    pub policy: KeyPolicy,
}

/// What a key may consume and where from. A key's own settings override its plan's: its
/// limits replace the plan's limits of the same name, its quota replaces the plan's quota, and
/// its permissions (if any) replace the plan's.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct KeyPolicy {
    /// The plan this key follows.
    #[serde(default)]
    pub plan: Option<String>,
    /// The key's own rate limits.
    #[serde(default)]
    pub limits: Vec<RateLimit>,
    /// The key's own quota.
    #[serde(default)]
    pub quota: Option<QuotaConfig>,
    /// Allowed caller addresses; empty means any.
    #[serde(default)]
    pub ip_allowlist: Vec<ipnet::IpNet>,
    /// Allowed browser origins; empty means any.
    #[serde(default)]
    pub origins: Vec<OriginPattern>,
}

/// A plan: a named template of limits, quota and permissions (free, pro, enterprise...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The plan's name, its identifier.
    pub plan_id: String,
    /// Rate limits of keys on the plan.
    pub limits: Vec<RateLimit>,
    /// Quota of keys on the plan.
    pub quota: Option<QuotaConfig>,
    /// Permissions of keys on the plan that set none of their own.
    pub permissions: Vec<Permission>,
    /// Optimistic-concurrency version.
    pub version: i64,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// A record for tests, defined once for every crate's tests (`test-support` feature): an
/// enabled API key `key_00000000000000000000` of owner `billing` in `live`, created at `t0`,
/// granting nothing, with no secret. A test sets the fields it is about with struct-update
/// syntax (`KeyRecord { owner: …, ..KeyRecord::sample(T0) }`).
#[cfg(any(test, feature = "test-support"))]
impl KeyRecord {
    pub fn sample(t0: OffsetDateTime) -> Self {
        Self {
            key_id: "key_00000000000000000000".into(),
            kind: KeyKind::Api,
            owner: "billing".into(),
            name: None,
            tenant: None,
            environment: "live".into(),
            purpose: None,
            tags: vec![],
            meta: Map::new(),
            permissions: vec![],
            routes: vec![],
            expires_at: None,
            enabled: true,
            created_at: t0,
            created_by: None,
            updated_at: t0,
            last_used_at: None,
            revoked_at: None,
            revoked_reason: None,
            rotated_at: None,
            version: 1,
            secrets: vec![],
            policy: KeyPolicy::default(),
        }
    }
}

impl KeyRecord {
    /// The record as verification sees it: the plan's settings filled in under the key's own.
    pub fn with_plan(mut self, plan: Option<&Plan>) -> Self {
        let Some(plan) = plan else { return self };
        if self.permissions.is_empty() {
            self.permissions.clone_from(&plan.permissions);
        }
        let own: Vec<String> = self.policy.limits.iter().map(|l| l.name.clone()).collect();
        let inherited = plan
            .limits
            .iter()
            .filter(|l| !own.contains(&l.name))
            .cloned();
        let mut limits: Vec<RateLimit> = inherited.collect();
        limits.append(&mut self.policy.limits);
        self.policy.limits = limits;
        if self.policy.quota.is_none() {
            self.policy.quota = plan.quota;
        }
        self
    }
}

impl KeyRecord {
    /// The status at `now`.
    pub fn status(&self, now: OffsetDateTime) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|t| t <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    /// A JSON summary of the metadata for the audit log: no secret, no hash.
    pub fn audit_summary(&self) -> Value {
        json!({
            "kind": self.kind.as_str(),
            "owner": self.owner,
            "name": self.name,
            "tenant": self.tenant,
            "environment": self.environment,
            "purpose": self.purpose,
            "tags": self.tags,
            "meta": self.meta,
            "permissions": self.permissions.iter().map(Permission::as_str).collect::<Vec<_>>(),
            "routes": self.routes.iter().map(RoutePattern::as_str).collect::<Vec<_>>(),
            "expires_at": self.expires_at.map(|t| t.unix_timestamp()),
            "enabled": self.enabled,
            "secrets": self.secrets.iter().map(|s| s.start.as_str()).collect::<Vec<_>>(),
            "policy": serde_json::to_value(&self.policy).unwrap_or(Value::Null),
        })
    }
}
