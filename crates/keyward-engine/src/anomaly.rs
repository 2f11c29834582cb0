//! Anomaly detection on the verify path and the automated response to it.
//!
//! **Detection** ([`Detector::observe`]) runs after every API-key verification: one short lock
//! of one of [`SHARDS`] map shards and an O(1) update of the key's
//! [`KeyBaseline`](keyward_core::anomaly::KeyBaseline) (or, for an unknown or malformed key,
//! of the caller address's [`FailureCounter`]). The maths is in `keyward_core::anomaly`. A
//! finding is queued on a bounded channel ([`QUEUE`]); the verify path never waits for the
//! response, and a full queue drops the finding (counted in
//! `keyward_anomalies_dropped_total`).
//!
//! **Memory** is bounded: at most `max_tracked_keys` baselines and `max_tracked_ips` address
//! counters. A full shard first forgets entries idle for an hour, then the least recently seen
//! half, so the work is amortised O(1) per insert and recently active keys keep their history.
//!
//! **Response** (the `response` module: `Keyward::respond_to_anomalies`, run by the server;
//! tests and `simulate-leak` call `Keyward::drain_anomalies`): the key's tenant chooses `alert` or
//! `disable` ([`AnomalyConfig`]). `disable` sets the key DISABLED through the normal audited
//! write (a `key.update` by actor [`ANOMALY_ACTOR`], reversible with `PATCH enabled=true`),
//! publishes `Event::KeyDisabled { automatic: true }` and counts
//! `keyward_auto_disables_total`.
//!
//! **Only leak signals act** (issue 10, finding 4). A key is disabled only for a signal drawn
//! from traffic that verified ([`AnomalyKind::suggests_leak`]: a rate spike, a burst of new
//! caller addresses), because only its holder can produce that traffic. A burst of failures
//! against a key (a secret ended by rotation, a refused address, origin or route) can be sent
//! by anyone who once saw one of its secrets, so it is reported (audited, counted, published)
//! and never acted on: otherwise an old secret could switch off the live one.
//!
//! The **safety brake** allows at most `max_auto_disables_per_hour` automatic disables per
//! node in any sliding hour **for each tenant** (keys without a tenant: for each owner); beyond
//! it that tenant's anomalies only alert, and the brake engaging is logged, audited
//! (`anomaly.brake`, once per engagement) and counted (`keyward_auto_disable_brakes_total`).
//! A brake per tenant, not per node, is what keeps a tenant that spikes its own keys (to spend
//! the brake) from disarming the protection of every other tenant; a tenant-scoped root key
//! can mint keys with any owner inside its tenant, which is why owners are not the unit for
//! keys that have a tenant. Every anomaly is audited (`anomaly.detected`; failure bursts at
//! most [`AUDIT_EVENTS_PER_MINUTE`], leak signals always), counted in
//! `keyward_anomalies_total{kind,action}` and published as `Event::Anomaly`.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use keyward_core::anomaly::Thresholds;
use keyward_core::anomaly::{AnomalyKind, FailureCounter, Finding, KeyBaseline, Observation};
use keyward_core::record::KeyKind;
use keyward_core::verify::VerifyCode;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::verification::Verification;

/// Number of independently locked shards of the baseline maps.
pub const SHARDS: usize = 16;
/// Findings waiting for a response at most; more are dropped (and counted).
pub const QUEUE: usize = 1024;
/// Most `anomaly.detected` audit events of failure bursts per minute; beyond that they are
/// still counted, logged and published, but not audited (a flood must not fill the disk).
/// Leak signals are always audited.
pub const AUDIT_EVENTS_PER_MINUTE: u32 = 120;
/// The audit actor of automated responses.
pub const ANOMALY_ACTOR: &str = "keyward:anomaly";

/// What to do about an anomaly on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnomalyAction {
    /// Audit, count and publish it.
    Alert,
    /// As `Alert`, and disable the key (unless the safety brake is engaged).
    Disable,
}

impl AnomalyAction {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Disable => "disable",
        }
    }

    /// Parses `alert` or `disable`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "alert" => Some(Self::Alert),
            "disable" => Some(Self::Disable),
            _ => None,
        }
    }
}

/// Anomaly detection settings.
#[derive(Debug, Clone)]
pub struct AnomalyConfig {
    /// Detection thresholds.
    pub thresholds: Thresholds,
    /// The response for keys of tenants without an override (and keys without a tenant).
    pub on_anomaly: AnomalyAction,
    /// Per-tenant responses.
    pub tenants: HashMap<String, AnomalyAction>,
    /// Automatic disables allowed per node in any sliding hour for one tenant (keys without
    /// a tenant: for one owner); the safety brake.
    pub max_auto_disables_per_hour: u32,
    /// Key baselines kept at most.
    pub max_tracked_keys: usize,
    /// Caller-address failure counters kept at most.
    pub max_tracked_ips: usize,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            on_anomaly: AnomalyAction::Alert,
            tenants: HashMap::new(),
            max_auto_disables_per_hour: 10,
            max_tracked_keys: 100_000,
            max_tracked_ips: 100_000,
        }
    }
}

impl AnomalyConfig {
    /// The response for a key of `tenant`.
    pub fn action_for(&self, tenant: Option<&str>) -> AnomalyAction {
        tenant
            .and_then(|t| self.tenants.get(t).copied())
            .unwrap_or(self.on_anomaly)
    }
}

/// A finding waiting for its response.
#[derive(Debug, Clone)]
struct Detected {
    key_id: Option<String>,
    tenant: Option<String>,
    owner: Option<String>,
    ip: Option<IpAddr>,
    finding: Finding,
    at: OffsetDateTime,
}

/// What was done about one anomaly.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyOutcome {
    /// The signal.
    pub kind: AnomalyKind,
    /// The key, if the anomaly concerns one.
    pub key_id: Option<String>,
    /// The caller address, for failure bursts from one address.
    pub ip: Option<IpAddr>,
    /// What was done: `Disable` only if the key was actually disabled.
    pub action: AnomalyAction,
    /// True if the tenant asked for `disable` but the safety brake held it back.
    pub braked: bool,
    /// When it was detected.
    pub at: OffsetDateTime,
    /// The figures behind it.
    pub detail: Value,
}

/// Whose automatic disables one brake counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BrakeScope {
    Tenant(String),
    /// A key without a tenant.
    Owner(String),
}

impl BrakeScope {
    fn of(tenant: Option<&str>, owner: Option<&str>) -> Self {
        match tenant {
            Some(t) => Self::Tenant(t.to_owned()),
            None => Self::Owner(owner.unwrap_or_default().to_owned()),
        }
    }

    fn summary(&self) -> Value {
        match self {
            Self::Tenant(t) => json!({"tenant": t}),
            Self::Owner(o) => json!({"owner": o}),
        }
    }
}

/// Scopes whose brake state is kept at most; beyond it, scopes with no disable in the last
/// hour are forgotten (they hold nothing).
const MAX_BRAKE_SCOPES: usize = 10_000;

struct Brake {
    disables: VecDeque<OffsetDateTime>,
    engaged: bool,
}

struct AuditBudget {
    window_start: OffsetDateTime,
    written: u32,
}

type Shard<K, V> = Mutex<HashMap<K, V>>;

/// The per-node detector state; see the module docs.
pub(crate) struct Detector {
    config: AnomalyConfig,
    keys: Vec<Shard<String, KeyBaseline>>,
    ips: Vec<Shard<IpAddr, FailureCounter>>,
    queue: tokio::sync::mpsc::Sender<Detected>,
    inbox: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Detected>>,
    brakes: Mutex<HashMap<BrakeScope, Brake>>,
    audit_budget: Mutex<AuditBudget>,
    raised: AtomicU64,
    hasher: std::hash::RandomState,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes room in a full map: forget entries idle for an hour, and if that is not enough, the
/// least recently seen half (amortised O(1): the next sweep is at least half a map away).
fn make_room<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    cap: usize,
    now: OffsetDateTime,
    seen: fn(&V) -> OffsetDateTime,
) {
    if map.len() < cap {
        return;
    }
    map.retain(|_, v| now - seen(v) < Duration::hours(1));
    if map.len() < cap {
        return;
    }
    let mut times: Vec<OffsetDateTime> = map.values().map(seen).collect();
    let middle = times.len() / 2;
    let (_, median, _) = times.select_nth_unstable(middle);
    let median = *median;
    map.retain(|_, v| seen(v) > median);
}

/// Outcomes that count as failures against a found key. DISABLED is left out (it is what an
/// automatic disable produces, and would otherwise alert again); limits and quotas are the
/// key working as configured.
fn is_key_failure(code: VerifyCode) -> bool {
    !matches!(
        code,
        VerifyCode::Valid
            | VerifyCode::RateLimited
            | VerifyCode::UsageExceeded
            | VerifyCode::Disabled
    )
}

impl Detector {
    pub(crate) fn new(config: AnomalyConfig, now: OffsetDateTime) -> Self {
        let (queue, inbox) = tokio::sync::mpsc::channel(QUEUE);
        Self {
            config,
            keys: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ips: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            queue,
            inbox: tokio::sync::Mutex::new(inbox),
            brakes: Mutex::new(HashMap::new()),
            audit_budget: Mutex::new(AuditBudget {
                window_start: now,
                written: 0,
            }),
            raised: AtomicU64::new(0),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn shard_of(&self, subject: impl std::hash::Hash) -> usize {
        (self.hasher.hash_one(subject) as usize) % SHARDS
    }

    fn ip_hash(&self, ip: IpAddr) -> u64 {
        self.hasher.hash_one(ip)
    }

    /// Feeds one API-key verification to the baselines; queues what it sets off. `now` is
    /// asked for only when there is something to note (a MALFORMED answer without an address
    /// costs no clock read).
    pub(crate) fn observe(
        &self,
        v: &Verification,
        ip: Option<IpAddr>,
        now: impl FnOnce() -> OffsetDateTime,
    ) {
        let thresholds = &self.config.thresholds;
        let detected = match &v.key {
            Some(key) if key.kind == KeyKind::Api => {
                if v.code == VerifyCode::Disabled {
                    return;
                }
                let now = now();
                let seen = Observation {
                    at: now,
                    ip: ip.map(|ip| self.ip_hash(ip)),
                    failed: is_key_failure(v.code),
                };
                let cap = (self.config.max_tracked_keys / SHARDS).max(1);
                let finding = {
                    let mut shard = lock(&self.keys[self.shard_of(&key.key_id)]);
                    match shard.get_mut(key.key_id.as_str()) {
                        Some(baseline) => baseline.observe(seen, thresholds),
                        None => {
                            make_room(&mut shard, cap, now, KeyBaseline::last_seen);
                            let mut baseline = KeyBaseline::new(now);
                            let finding = baseline.observe(seen, thresholds);
                            shard.insert(key.key_id.clone(), baseline);
                            finding
                        }
                    }
                };
                finding.map(|finding| Detected {
                    key_id: Some(key.key_id.clone()),
                    tenant: key.tenant.clone(),
                    owner: Some(key.owner.clone()),
                    ip: None,
                    finding,
                    at: now,
                })
            }
            None if matches!(v.code, VerifyCode::NotFound | VerifyCode::Malformed) => {
                let Some(ip) = ip else { return };
                let now = now();
                let cap = (self.config.max_tracked_ips / SHARDS).max(1);
                let finding = {
                    let mut shard = lock(&self.ips[self.shard_of(ip)]);
                    if !shard.contains_key(&ip) {
                        make_room(&mut shard, cap, now, FailureCounter::last_seen);
                    }
                    shard
                        .entry(ip)
                        .or_insert_with(|| FailureCounter::new(now))
                        .fail(now, thresholds, AnomalyKind::IpFailureBurst)
                };
                finding.map(|finding| Detected {
                    key_id: None,
                    tenant: None,
                    owner: None,
                    ip: Some(ip),
                    finding,
                    at: now,
                })
            }
            _ => None,
        };
        if let Some(detected) = detected {
            self.raised.fetch_add(1, Ordering::Relaxed);
            if self.queue.try_send(detected).is_err() {
                metrics::counter!("keyward_anomalies_dropped_total").increment(1);
                tracing::debug!("anomaly queue full: a finding was dropped");
            }
        }
    }

    /// True if an automatic disable in `scope` may go ahead now (and counts it); false once
    /// the scope's brake holds. The second value is true the first time the brake holds in an
    /// engagement.
    fn allow_disable(&self, scope: &BrakeScope, now: OffsetDateTime) -> (bool, bool) {
        let mut brakes = lock(&self.brakes);
        if brakes.len() >= MAX_BRAKE_SCOPES && !brakes.contains_key(scope) {
            brakes.retain(|_, b| {
                b.disables
                    .back()
                    .is_some_and(|t| now - *t < Duration::hours(1))
            });
        }
        let brake = brakes.entry(scope.clone()).or_insert_with(|| Brake {
            disables: VecDeque::new(),
            engaged: false,
        });
        while brake
            .disables
            .front()
            .is_some_and(|t| now - *t >= Duration::hours(1))
        {
            brake.disables.pop_front();
        }
        let max = self.config.max_auto_disables_per_hour as usize;
        if brake.disables.len() < max {
            brake.disables.push_back(now);
            brake.engaged = false;
            (true, false)
        } else {
            let first = !brake.engaged;
            brake.engaged = true;
            (false, first)
        }
    }

    fn may_audit(&self, now: OffsetDateTime) -> bool {
        let mut budget = lock(&self.audit_budget);
        if now - budget.window_start >= Duration::minutes(1) {
            budget.window_start = now;
            budget.written = 0;
        }
        budget.written += 1;
        budget.written <= AUDIT_EVENTS_PER_MINUTE
    }
}

mod response;
pub(crate) use response::Anomalies;

#[cfg(test)]
mod tests;
