//! Rotation policy: how old a key's current secret may get, per tenant and environment; the
//! rotation report; and the upkeep check that announces keys about to expire
//! (`key_expiring_soon`) or past their policy (`rotation_overdue`) on the event bus.
//!
//! Policies come from configuration (`Keyward::set_rotation_config`), not from the store:
//! every node of a cluster is started with the same flags, and a policy change is a deploy.
//! The age of a key is the age of its current secret: `rotated_at`, or `created_at` for a key
//! never rotated.
//!
//! Each condition is announced once per key and per *anchor*: the expiry instant for
//! `key_expiring_soon`, the current secret's issue time for `rotation_overdue`. Extending a
//! key's expiry or rotating it therefore re-arms the announcement. What was announced is kept
//! in memory only: after a restart every key still in a condition is announced once more.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use keyward_core::clock::Clock;
use keyward_core::record::{KeyKind, KeyRecord, KeyStatus};
use keyward_core::validate::MAX_PAGE;
use keyward_store::{KeyFilter, KeyStore};
use time::{Duration, OffsetDateTime};

use crate::error::EngineError;
use crate::events::Event;

/// Default lead time of `key_expiring_soon` and of the report's "due soon" list.
pub const DEFAULT_WARNING_DAYS: u32 = 7;

/// Name of the compliance gauge: the share of active API keys within their rotation policy.
pub const COMPLIANCE_GAUGE: &str = "keyward_rotation_compliance_ratio";

/// One rule: keys of `tenant` (any tenant if `None`) in `environment` (any if `None`) must
/// be rotated at least every `max_age_days` days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPolicy {
    /// The tenant, or any.
    pub tenant: Option<String>,
    /// The environment, or any.
    pub environment: Option<String>,
    /// Largest age of a key's current secret, in days (at least 1).
    pub max_age_days: u32,
}

impl RotationPolicy {
    /// Parses `TENANT/ENVIRONMENT=DAYS`, where either side of the slash may be `*` (any).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scope, days) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}`: expected TENANT/ENVIRONMENT=DAYS"))?;
        let (tenant, environment) = scope
            .split_once('/')
            .ok_or_else(|| format!("`{text}`: expected TENANT/ENVIRONMENT=DAYS"))?;
        let max_age_days: u32 = days
            .trim()
            .parse()
            .map_err(|_| format!("`{text}`: DAYS must be a whole number of days"))?;
        if max_age_days == 0 {
            return Err(format!("`{text}`: DAYS must be at least 1"));
        }
        let any = |s: &str| (s != "*").then(|| s.to_owned());
        if tenant.is_empty() || environment.is_empty() {
            return Err(format!("`{text}`: use `*` for any tenant or environment"));
        }
        Ok(Self {
            tenant: any(tenant),
            environment: any(environment),
            max_age_days,
        })
    }

    /// How specific the rule is: an exact tenant outranks an exact environment.
    fn specificity(&self) -> u8 {
        u8::from(self.tenant.is_some()) * 2 + u8::from(self.environment.is_some())
    }

    fn matches(&self, record: &KeyRecord) -> bool {
        self.tenant
            .as_deref()
            .is_none_or(|t| record.tenant.as_deref() == Some(t))
            && self
                .environment
                .as_deref()
                .is_none_or(|e| record.environment == e)
    }
}

/// Rotation settings of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationConfig {
    /// The rules; the most specific matching rule applies to a key.
    pub policies: Vec<RotationPolicy>,
    /// Lead time, in days, of `key_expiring_soon` and of the report's default "due soon".
    pub warning_days: u32,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
            warning_days: DEFAULT_WARNING_DAYS,
        }
    }
}

impl RotationConfig {
    /// The rule that applies to `record`, if any.
    pub fn policy_for(&self, record: &KeyRecord) -> Option<&RotationPolicy> {
        self.policies
            .iter()
            .filter(|p| p.matches(record))
            .max_by_key(|p| p.specificity())
    }
}

/// Where a key stands against its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStanding {
    /// Older than its policy allows.
    Overdue,
    /// Falls out of policy within the report's window.
    DueSoon,
}

/// One key of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationEntry {
    /// The key.
    pub key_id: String,
    /// Its owner.
    pub owner: String,
    /// Its tenant.
    pub tenant: Option<String>,
    /// Its environment.
    pub environment: String,
    /// When its current secret was issued.
    pub secret_issued_at: OffsetDateTime,
    /// Whole days since then.
    pub age_days: u64,
    /// The policy's limit.
    pub max_age_days: u32,
    /// When it falls (or fell) out of policy.
    pub due_at: OffsetDateTime,
    /// Overdue or due soon.
    pub standing: RotationStanding,
}

/// `GET /v1/reports/rotation`.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationReport {
    /// When the report was made.
    pub generated_at: OffsetDateTime,
    /// The "due soon" window, in days.
    pub within_days: u32,
    /// Active API keys looked at.
    pub active_keys: u64,
    /// Of those, keys some policy applies to.
    pub keys_with_policy: u64,
    /// Share of active keys within their policy (keys without a policy count as within; 1.0
    /// with no active key).
    pub compliance_ratio: f64,
    /// Keys out of policy, then keys due soon, each oldest first.
    pub entries: Vec<RotationEntry>,
}

/// What one upkeep check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RotationCheck {
    /// `key_expiring_soon` events published.
    pub expiring_announced: u64,
    /// `rotation_overdue` events published.
    pub overdue_announced: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Announced {
    ExpiringSoon { key_id: String, expires_at: i64 },
    Overdue { key_id: String, issued_at: i64 },
}

/// The rotation policies in force, the report over them and what was announced; see the
/// module docs.
pub(crate) struct RotationPolicies {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    events: tokio::sync::broadcast::Sender<Event>,
    config: Mutex<RotationConfig>,
    announced: Mutex<HashSet<Announced>>,
}

/// When `record`'s current secret was issued.
pub fn secret_issued_at(record: &KeyRecord) -> OffsetDateTime {
    record.rotated_at.unwrap_or(record.created_at)
}

/// Where `record` stands at `now` under `policy`, with `within` as the "due soon" window.
pub fn standing(
    record: &KeyRecord,
    policy: &RotationPolicy,
    now: OffsetDateTime,
    within: Duration,
) -> (OffsetDateTime, Option<RotationStanding>) {
    let due_at = secret_issued_at(record) + Duration::days(i64::from(policy.max_age_days));
    let standing = if now >= due_at {
        Some(RotationStanding::Overdue)
    } else if due_at - now <= within {
        Some(RotationStanding::DueSoon)
    } else {
        None
    };
    (due_at, standing)
}

fn whole_days(d: Duration) -> u64 {
    u64::try_from(d.whole_days()).unwrap_or(0)
}

impl RotationPolicies {
    pub(crate) fn new(
        store: Arc<dyn KeyStore>,
        clock: Arc<dyn Clock>,
        events: tokio::sync::broadcast::Sender<Event>,
    ) -> Self {
        Self {
            store,
            clock,
            events,
            config: Mutex::default(),
            announced: Mutex::default(),
        }
    }

    /// Replaces the rotation policies and warning lead time.
    pub(crate) fn set_config(&self, config: RotationConfig) {
        if let Ok(mut current) = self.config.lock() {
            *current = config;
        }
    }

    /// The rotation policies and warning lead time in force.
    pub(crate) fn config(&self) -> RotationConfig {
        self.config.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Every active API key, read page by page.
    async fn active_api_keys(
        &self,
        now: OffsetDateTime,
        tenant: Option<&str>,
    ) -> Result<Vec<KeyRecord>, EngineError> {
        let mut keys = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_keys(&KeyFilter {
                    kind: KeyKind::Api,
                    owner: None,
                    tenant: tenant.map(str::to_owned),
                    status: Some(KeyStatus::Active),
                    now,
                    limit: MAX_PAGE,
                    after,
                })
                .await?;
            keys.extend(page.items);
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => return Ok(keys),
            }
        }
    }

    /// The keys out of policy, and those falling out of it within `within_days` (the warning
    /// lead time if `None`). Also sets the compliance gauge.
    /// With `tenant`, only that tenant's keys (a tenant-scoped root key's report; see
    /// `Keyward::rotation_report_as`).
    pub(crate) async fn report(
        &self,
        tenant: Option<&str>,
        within_days: Option<u32>,
    ) -> Result<RotationReport, EngineError> {
        let now = self.clock.now();
        let config = self.config();
        let within_days = within_days.unwrap_or(config.warning_days);
        let keys = self.active_api_keys(now, tenant).await?;
        Ok(build_report(&config, &keys, now, within_days))
    }

    /// The upkeep check: sets the compliance gauge and announces, once each, keys that expire
    /// within the lead time and keys past their rotation policy.
    pub(crate) async fn check(&self) -> Result<RotationCheck, EngineError> {
        let now = self.clock.now();
        let config = self.config();
        let keys = self.active_api_keys(now, None).await?;
        let report = build_report(&config, &keys, now, 0);
        metrics::gauge!(COMPLIANCE_GAUGE).set(report.compliance_ratio);
        let lead = Duration::days(i64::from(config.warning_days));
        let mut check = RotationCheck::default();
        let mut events = Vec::new();
        {
            let Ok(mut announced) = self.announced.lock() else {
                return Ok(check);
            };
            let mut current = HashSet::new();
            for key in &keys {
                if let Some(expires_at) = key.expires_at
                    && expires_at > now
                    && expires_at - now <= lead
                {
                    let mark = Announced::ExpiringSoon {
                        key_id: key.key_id.clone(),
                        expires_at: expires_at.unix_timestamp(),
                    };
                    if !announced.contains(&mark) {
                        check.expiring_announced += 1;
                        events.push(Event::KeyExpiringSoon {
                            key_id: key.key_id.clone(),
                            owner: key.owner.clone(),
                            tenant: key.tenant.clone(),
                            expires_at,
                        });
                    }
                    current.insert(mark);
                }
            }
            for entry in &report.entries {
                let mark = Announced::Overdue {
                    key_id: entry.key_id.clone(),
                    issued_at: entry.secret_issued_at.unix_timestamp(),
                };
                if !announced.contains(&mark) {
                    check.overdue_announced += 1;
                    events.push(Event::RotationOverdue {
                        key_id: entry.key_id.clone(),
                        owner: entry.owner.clone(),
                        tenant: entry.tenant.clone(),
                        age_days: entry.age_days,
                        max_age_days: u64::from(entry.max_age_days),
                    });
                }
                current.insert(mark);
            }
            // Only conditions that still hold are remembered, so the set stays as small as
            // the keys in a condition, and a condition that ends and returns is announced again.
            *announced = current;
        }
        for event in events {
            // Never blocks; with no subscriber the event is dropped.
            let _ = self.events.send(event);
        }
        Ok(check)
    }
}

fn build_report(
    config: &RotationConfig,
    keys: &[KeyRecord],
    now: OffsetDateTime,
    within_days: u32,
) -> RotationReport {
    let within = Duration::days(i64::from(within_days));
    let mut entries = Vec::new();
    let mut keys_with_policy = 0u64;
    let mut overdue = 0u64;
    for key in keys {
        let Some(policy) = config.policy_for(key) else {
            continue;
        };
        keys_with_policy += 1;
        let (due_at, standing) = standing(key, policy, now, within);
        let Some(standing) = standing else {
            continue;
        };
        if standing == RotationStanding::Overdue {
            overdue += 1;
        }
        let issued = secret_issued_at(key);
        entries.push(RotationEntry {
            key_id: key.key_id.clone(),
            owner: key.owner.clone(),
            tenant: key.tenant.clone(),
            environment: key.environment.clone(),
            secret_issued_at: issued,
            age_days: whole_days(now - issued),
            max_age_days: policy.max_age_days,
            due_at,
            standing,
        });
    }
    entries.sort_by_key(|e| (e.standing != RotationStanding::Overdue, e.due_at));
    let active_keys = keys.len() as u64;
    let compliance_ratio = if active_keys == 0 {
        1.0
    } else {
        (active_keys - overdue) as f64 / active_keys as f64
    };
    RotationReport {
        generated_at: now,
        within_days,
        active_keys,
        keys_with_policy,
        compliance_ratio,
        entries,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An active API key record (also used by other modules' tests).
    pub(crate) fn sample_record() -> KeyRecord {
        KeyRecord::sample(OffsetDateTime::UNIX_EPOCH)
    }

    #[test]
    fn standing_counts_from_the_current_secret() {
        let policy = RotationPolicy::parse("*/*=30").unwrap();
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let mut key = sample_record();
        let within = Duration::days(7);
        assert_eq!(
            standing(&key, &policy, t0 + Duration::days(22), within).1,
            None
        );
        assert_eq!(
            standing(&key, &policy, t0 + Duration::days(23), within).1,
            Some(RotationStanding::DueSoon)
        );
        assert_eq!(
            standing(&key, &policy, t0 + Duration::days(30), within).1,
            Some(RotationStanding::Overdue)
        );
        key.rotated_at = Some(t0 + Duration::days(29));
        assert_eq!(
            standing(&key, &policy, t0 + Duration::days(30), within).1,
            None
        );
    }

    #[test]
    fn parses_policies() {
        let p = RotationPolicy::parse("acme/live=90").unwrap();
        assert_eq!(p.tenant.as_deref(), Some("acme"));
        assert_eq!(p.environment.as_deref(), Some("live"));
        assert_eq!(p.max_age_days, 90);
        let p = RotationPolicy::parse("*/*=30").unwrap();
        assert_eq!((p.tenant, p.environment), (None, None));
        for bad in [
            "acme=90",
            "acme/live",
            "acme/live=0",
            "acme/live=x",
            "/live=3",
        ] {
            assert!(RotationPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_most_specific_policy_wins() {
        let config = RotationConfig {
            policies: ["*/*=365", "*/live=90", "acme/*=60", "acme/live=30"]
                .iter()
                .map(|p| RotationPolicy::parse(p).unwrap())
                .collect(),
            warning_days: 7,
        };
        let record = |tenant: Option<&str>, env: &str| KeyRecord {
            tenant: tenant.map(str::to_owned),
            environment: env.to_owned(),
            ..sample_record()
        };
        let days = |r: &KeyRecord| config.policy_for(r).map(|p| p.max_age_days);
        assert_eq!(days(&record(Some("acme"), "live")), Some(30));
        assert_eq!(days(&record(Some("acme"), "test")), Some(60));
        assert_eq!(days(&record(Some("other"), "live")), Some(90));
        assert_eq!(days(&record(None, "live")), Some(90));
        assert_eq!(days(&record(None, "test")), Some(365));
    }
}
