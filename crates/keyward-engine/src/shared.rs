//! Shared limits and quotas on Redis: with a Redis configured, every node of a cluster enforces
//! one limit per pool and one balance per key.
//!
//! Each admission decision is one `EVALSHA` of `shared/admit.lua`: the same GCRA as
//! [`keyward_core::limit`] over the same pools (key, owner per tenant, tenant), all-or-nothing
//! over every limit of the key and its quota deduction together. `now` comes from the calling
//! node's clock, so nodes need synchronised clocks (NTP); see docs/limits-and-quotas.md, "Shared limits and quotas (Redis)".
//!
//! Quota balances live in Redis. A balance is loaded from the store on first use (only one node
//! initialises it), refilled by schedule inside the script and written behind to the store by
//! [`Keyward::sync_shared`] (the upkeep tick) and at a clean shutdown. The store always holds
//! the Redis balance plus the credits not yet written behind.
//!
//! When Redis does not answer within [`RedisConfig::timeout`], the node falls back to local
//! enforcement: each limit divided by the number of live nodes (from a heartbeat in Redis, the
//! last count known) and a small credit budget per key on this node. What it spends from that
//! budget is deducted from the Redis balance once Redis answers again, exactly once (a token
//! per settlement). The decision's source shows in [`Verification::enforcement`].
//!
//! Limits with `mode = "local_first"` are decided from node-local state and reconciled with
//! Redis in the background (the `local_first` module; the overshoot bound is in
//! docs/limits-and-quotas.md).

mod local_first;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration as StdDuration, Instant};

use keyward_core::key::generate_key_id;
use keyward_core::limit::{RateLimit, nanos};
use keyward_core::quota::QuotaConfig;
use keyward_core::record::{KeyKind, KeyRecord};
use keyward_core::verify::VerifyCode;
use keyward_store::{CreditOp, StoreError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script};
use time::OffsetDateTime;

use crate::admission::{Limiter, evaluate, period_of, pool};
use crate::{EngineError, Keyward, Verification};
pub use local_first::ReconcileReport;
use local_first::{LocalFirst, is_local_first};

/// How long an idle limit pool is kept in Redis after its bucket is full again, beyond the
/// exact instant: a margin for clock skew between nodes.
const POOL_TTL_MARGIN_MS: u64 = 60_000;
/// A quota balance untouched this long expires from Redis and is reloaded from the store.
const QUOTA_TTL_SECONDS: u64 = 7 * 86_400;
/// While Redis is down, a verify tries it again at most this often.
const PROBE_INTERVAL: StdDuration = StdDuration::from_secs(1);
/// Keys written behind per Redis round trip.
const WRITE_BEHIND_BATCH: usize = 100;
/// Most batches written behind per upkeep tick.
const WRITE_BEHIND_BATCHES_PER_TICK: usize = 50;

/// Settings of the shared limit store.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every Redis key keyward writes (default `keyward`); tests use a random one each.
    pub namespace: String,
    /// Bound on every Redis call; past it the node decides locally (default 250 ms).
    pub timeout: StdDuration,
    /// A node whose heartbeat is older than this no longer counts as live (default 30 s).
    pub node_window: StdDuration,
    /// Divide limits by this instead of the live-node count while Redis is down.
    pub fallback_nodes: Option<u64>,
    /// Credits each key may spend on this node while Redis is down (default 10).
    pub fallback_credits: u64,
    /// How often `local_first` limits are reconciled with Redis (default 100 ms); the overshoot
    /// bound grows with it.
    pub reconcile_interval: StdDuration,
}

impl RedisConfig {
    /// Defaults for a Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: "keyward".into(),
            timeout: StdDuration::from_millis(250),
            node_window: StdDuration::from_secs(30),
            fallback_nodes: None,
            fallback_credits: 10,
            reconcile_interval: StdDuration::from_millis(100),
        }
    }
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

/// Whether Redis answers (for `/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisHealth {
    /// True if a PING answered within the timeout.
    pub up: bool,
    /// What failed, when it is down.
    pub error: Option<String>,
    /// Live nodes last counted by the heartbeat.
    pub live_nodes: u64,
}

/// What one [`Keyward::sync_shared`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Redis answered.
    pub redis_up: bool,
    /// Keys whose outage spend was deducted from Redis.
    pub settled: usize,
    /// Keys whose spend was written behind to the store.
    pub written_behind: usize,
}

/// A failed Redis call (never shown to API callers; logged).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(StdDuration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from Redis: {0}")]
    Reply(String),
    /// Redis answered, but the key's balance had to be loaded from the store, which did not.
    #[error("the store could not load the key's balance into Redis: {0}")]
    StoreUnavailable(String),
}

struct Scripts {
    admit: Script,
    init_quota: Script,
    take_pending: Script,
    give_back: Script,
    adjust: Script,
    settle: Script,
    heartbeat: Script,
    reconcile: Script,
}

/// Credits spent from the local budget while Redis was down, not yet deducted from Redis.
#[derive(Debug, Default)]
struct Owed {
    credits: u64,
    period: Option<OffsetDateTime>,
    /// A settlement sent but not confirmed: retried with the same token, so it counts once.
    settling: Option<Settlement>,
}

#[derive(Debug, Clone)]
struct Settlement {
    token: String,
    credits: u64,
    period: Option<OffsetDateTime>,
}

struct Health {
    up: bool,
    next_probe: Instant,
    error: Option<String>,
}

/// The Redis side of the engine.
pub(crate) struct Shared {
    conn: ConnectionManager,
    config: RedisConfig,
    node_id: String,
    scripts: Scripts,
    health: Mutex<Health>,
    live_nodes: AtomicU64,
    /// Node-local limits while Redis is down.
    fallback: Limiter,
    /// This node's view of its `local_first` pools.
    local_first: LocalFirst,
    owed: Mutex<HashMap<String, Owed>>,
    /// The balance Redis last reported per key: the local budget never exceeds it.
    known_credits: moka::sync::Cache<String, u64>,
}

fn period_arg(period: Option<OffsetDateTime>) -> i64 {
    period.map_or(-1, OffsetDateTime::unix_timestamp)
}

fn micros(t: OffsetDateTime) -> String {
    format!("{:.3}", nanos(t) as f64 / 1000.0)
}

fn micros_to_nanos(text: &str) -> Option<i128> {
    if text.is_empty() {
        return None;
    }
    text.parse::<f64>()
        .ok()
        .map(|us| (us * 1000.0).round() as i128)
}

fn interval_micros(limit: &RateLimit) -> String {
    format!("{:.3}", limit.emission_interval() as f64 / 1000.0)
}

/// A limit as one node enforces it while Redis is down: its share of the cluster's.
pub(crate) fn local_share(limit: &RateLimit, nodes: u64) -> RateLimit {
    let nodes = nodes.max(1);
    RateLimit {
        limit: (limit.limit / nodes).max(1),
        burst: (limit.burst / nodes).max(1),
        ..limit.clone()
    }
}

fn strings(value: redis::Value) -> Result<Vec<String>, CallError> {
    Vec::<String>::from_redis_value(value).map_err(|e| CallError::Reply(e.to_string()))
}

impl Shared {
    pub(crate) fn connect(config: RedisConfig) -> Result<Self, EngineError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            EngineError::Invalid(keyward_core::validate::FieldError::new(
                "redis",
                format!("not a Redis URL: {e}"),
            ))
        })?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_min_delay(StdDuration::from_millis(20))
            .set_max_delay(StdDuration::from_millis(500));
        // Lazy: a node starts (in fallback) even if Redis is down at boot.
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| EngineError::Store(StoreError::Backend(Box::new(e))))?;
        let node_id = generate_key_id(&mut rand::rngs::SysRng)?.replacen("key_", "node_", 1);
        Ok(Self {
            conn,
            node_id,
            scripts: Scripts {
                admit: Script::new(include_str!("shared/admit.lua")),
                init_quota: Script::new(include_str!("shared/init_quota.lua")),
                take_pending: Script::new(include_str!("shared/take_pending.lua")),
                give_back: Script::new(include_str!("shared/give_back.lua")),
                adjust: Script::new(include_str!("shared/adjust.lua")),
                settle: Script::new(include_str!("shared/settle.lua")),
                heartbeat: Script::new(include_str!("shared/heartbeat.lua")),
                reconcile: Script::new(include_str!("shared/reconcile.lua")),
            },
            health: Mutex::new(Health {
                up: true,
                next_probe: Instant::now(),
                error: None,
            }),
            live_nodes: AtomicU64::new(1),
            fallback: Limiter::default(),
            local_first: LocalFirst::default(),
            owed: Mutex::new(HashMap::new()),
            known_credits: moka::sync::Cache::new(100_000),
            config,
        })
    }

    fn quota_key(&self, key_id: &str) -> String {
        format!("{}:q:{key_id}", self.config.namespace)
    }

    fn dirty_key(&self) -> String {
        format!("{}:dirty", self.config.namespace)
    }

    /// Runs one script invocation, bounded by the timeout.
    async fn run(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<redis::Value, CallError> {
        let mut conn = self.conn.clone();
        let started = std::time::Instant::now();
        let result =
            match tokio::time::timeout(self.config.timeout, invocation.invoke_async(&mut conn))
                .await
            {
                Ok(result) => result.map_err(CallError::from),
                Err(_) => Err(CallError::Timeout(self.config.timeout)),
            };
        crate::telemetry::redis_call(started.elapsed(), result.is_ok());
        result
    }

    /// Whether a verify should try Redis now: always while it is up, at most once per
    /// [`PROBE_INTERVAL`] while it is down (so an outage does not add a timeout to every call).
    fn should_try(&self) -> bool {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if health.up {
            return true;
        }
        let now = Instant::now();
        if now >= health.next_probe {
            health.next_probe = now + PROBE_INTERVAL;
            return true;
        }
        false
    }

    /// Records a successful call; true if Redis was down until now.
    fn mark_up(&self) -> bool {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let was_down = !health.up;
        if was_down {
            tracing::info!(
                namespace = %self.config.namespace,
                "Redis answers again: limits and quotas are shared again"
            );
        }
        health.up = true;
        health.error = None;
        was_down
    }

    fn mark_down(&self, error: &CallError) {
        if matches!(error, CallError::StoreUnavailable(_)) {
            // Redis answered; it was the store that failed.
            return;
        }
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if health.up {
            tracing::warn!(
                error = %error,
                live_nodes = self.live_nodes.load(Ordering::Relaxed),
                "Redis unreachable: limits and quotas fall back to node-local enforcement"
            );
        }
        health.up = false;
        health.next_probe = Instant::now() + PROBE_INTERVAL;
        health.error = Some(error.to_string());
    }

    fn is_up(&self) -> bool {
        self.health.lock().unwrap_or_else(|e| e.into_inner()).up
    }

    /// What made Redis count as down, for the fallback's reason.
    fn last_error(&self) -> String {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error
            .clone()
            .unwrap_or_else(|| "Redis is down".into())
    }

    /// The divisor of limits while Redis is down.
    fn fallback_nodes(&self) -> u64 {
        self.config
            .fallback_nodes
            .unwrap_or_else(|| self.live_nodes.load(Ordering::Relaxed))
            .max(1)
    }

    async fn init_quota(
        &self,
        store: &dyn keyward_store::KeyStore,
        key_id: &str,
        quota: &QuotaConfig,
        now: OffsetDateTime,
    ) -> Result<Result<(), CallError>, EngineError> {
        let balance = store.balance(key_id, quota, now).await?;
        let mut invocation = self.scripts.init_quota.prepare_invoke();
        invocation
            .key(self.quota_key(key_id))
            .arg(balance.remaining)
            .arg(period_arg(balance.period))
            .arg(QUOTA_TTL_SECONDS);
        Ok(self.run(&invocation).await.map(|_| ()))
    }
}

/// What the admission script decided.
enum Outcome {
    Admitted {
        credits: Option<u64>,
        tats: Vec<Option<i128>>,
    },
    Limited {
        tats: Vec<Option<i128>>,
    },
    Exhausted {
        credits: u64,
        tats: Vec<Option<i128>>,
    },
}

impl Keyward {
    fn shared(&self) -> Option<&Shared> {
        self.shared.as_ref()
    }

    /// Runs the admission script, loading the key's balance from the store first if Redis does
    /// not hold it yet. The outer error is a store failure; the inner one a Redis failure.
    async fn shared_decision(
        &self,
        shared: &Shared,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
    ) -> Result<Result<Outcome, CallError>, EngineError> {
        let limits = &record.policy.limits;
        let quota = record.policy.quota.as_ref();
        for _ in 0..3 {
            let mut invocation = shared.scripts.admit.prepare_invoke();
            for limit in limits {
                invocation.key(pool(record, limit).redis_key(&shared.config.namespace));
            }
            invocation
                .key(shared.quota_key(&record.key_id))
                .key(shared.dirty_key());
            invocation.arg(micros(now)).arg(cost).arg(limits.len());
            for limit in limits {
                invocation.arg(interval_micros(limit)).arg(limit.burst);
            }
            let period = quota.and_then(|q| period_of(q, now));
            let refill_amount = quota.and_then(|q| q.refill).map_or(0, |r| r.amount);
            invocation
                .arg(u8::from(quota.is_some()))
                .arg(period_arg(period))
                .arg(refill_amount)
                .arg(&record.key_id)
                .arg(QUOTA_TTL_SECONDS)
                .arg(POOL_TTL_MARGIN_MS);
            let reply = match shared.run(&invocation).await.and_then(strings) {
                Ok(reply) => reply,
                Err(e) => return Ok(Err(e)),
            };
            let status = reply.first().map(String::as_str).unwrap_or("");
            if status == "init" {
                if let Some(quota) = quota {
                    match shared
                        .init_quota(self.store.as_ref(), &record.key_id, quota, now)
                        .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Ok(Err(e)),
                        // The store is down (the key itself may be served from
                        // stale-if-error): decide from the local budget, as for a Redis outage.
                        Err(EngineError::Store(StoreError::Backend(e))) => {
                            return Ok(Err(CallError::StoreUnavailable(e.to_string())));
                        }
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            let credits = reply.get(1).and_then(|c| c.parse::<u64>().ok());
            let tats: Vec<Option<i128>> = (0..limits.len())
                .map(|i| reply.get(2 + i).and_then(|t| micros_to_nanos(t)))
                .collect();
            if let Some(c) = credits {
                shared.known_credits.insert(record.key_id.clone(), c);
            }
            return Ok(Ok(match status {
                "admitted" => Outcome::Admitted { credits, tats },
                "limited" => Outcome::Limited { tats },
                "exhausted" => Outcome::Exhausted {
                    credits: credits.unwrap_or(0),
                    tats,
                },
                other => return Ok(Err(CallError::Reply(format!("status {other:?}")))),
            }));
        }
        Ok(Err(CallError::Reply(
            "the quota balance was not loaded after three attempts".into(),
        )))
    }

    /// The limit and quota stages with Redis configured: one script in Redis, or node-local
    /// fallback when Redis does not answer.
    pub(crate) async fn admit_shared(
        &self,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
        verification: &mut Verification,
    ) -> Result<(), EngineError> {
        let Some(shared) = self.shared() else {
            return Ok(());
        };
        if record.policy.limits.iter().any(is_local_first) {
            return self
                .admit_local_first(shared, record, cost, now, verification)
                .await;
        }
        let mut error = None;
        if shared.should_try() {
            match self.shared_decision(shared, record, cost, now).await? {
                Ok(outcome) => {
                    // Back from an outage: what this node spent locally is settled into Redis by
                    // the next upkeep tick (`sync_shared`), never inline, so a verify cannot
                    // wait on a settlement of many keys.
                    shared.mark_up();
                    self.report_shared(record, cost, now, outcome, verification);
                    verification.enforcement = Some(crate::Enforcement {
                        source: EnforcementSource::Redis,
                        reason: "shared limit state in Redis".into(),
                    });
                    return Ok(());
                }
                Err(e) => {
                    shared.mark_down(&e);
                    error = Some(e.to_string());
                }
            }
        }
        let error = error.unwrap_or_else(|| shared.last_error());
        self.admit_fallback(shared, record, cost, now, verification, &error);
        Ok(())
    }

    /// Admission for a key with at least one `local_first` limit. Only local-first limits and
    /// no quota: decided from this node's view alone, with no Redis call. Otherwise the
    /// local-first limits are reserved locally first, then the exact limits and the quota are
    /// decided by the admission script, and the reservation is given back if the script
    /// refuses or fails; if a local limit refuses, the script runs with cost 0 (it consumes
    /// nothing and only reports the exact limits). Reserving (rather than checking, then
    /// committing after the script) means a concurrent request can never make the local
    /// commit fail after Redis has already consumed, which would need a compensating Redis
    /// call. While Redis is down, the node-local fallback decides everything, as for exact
    /// limits.
    async fn admit_local_first(
        &self,
        shared: &Shared,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
        verification: &mut Verification,
    ) -> Result<(), EngineError> {
        let interval = shared.config.reconcile_interval;
        let all_local =
            record.policy.quota.is_none() && record.policy.limits.iter().all(is_local_first);
        if all_local {
            if !shared.is_up() {
                let error = shared.last_error();
                self.admit_fallback(shared, record, cost, now, verification, &error);
                return Ok(());
            }
            let (decision, _) = shared.local_first.decide(record, cost, now, true);
            if !decision.admitted {
                verification.code = VerifyCode::RateLimited;
                verification.retry_after = Some(decision.retry_after.max(1));
            }
            verification.limits = decision.reports;
            verification.enforcement = Some(crate::Enforcement {
                source: EnforcementSource::LocalFirst,
                reason: format!(
                    "local_first limits decided from this node's view, reconciled with Redis \
                     every {} ms",
                    interval.as_millis()
                ),
            });
            return Ok(());
        }
        if !shared.should_try() {
            let error = shared.last_error();
            self.admit_fallback(shared, record, cost, now, verification, &error);
            return Ok(());
        }
        let mut local = record.clone();
        local.policy.limits.retain(is_local_first);
        let mut exact = record.clone();
        exact.policy.limits.retain(|l| !is_local_first(l));
        let (reserved, local_tats) = shared.local_first.decide(&local, cost, now, true);
        let script_cost = if reserved.admitted { cost } else { 0 };
        let outcome = match self.shared_decision(shared, &exact, script_cost, now).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                if reserved.admitted {
                    shared.local_first.give_back(&local, cost);
                }
                shared.mark_down(&e);
                self.admit_fallback(shared, record, cost, now, verification, &e.to_string());
                return Ok(());
            }
            Err(e) => {
                if reserved.admitted {
                    shared.local_first.give_back(&local, cost);
                }
                return Err(e);
            }
        };
        // Settled by the next upkeep tick, not inline (see above).
        shared.mark_up();
        let merge = |exact_tats: Vec<Option<i128>>| -> Vec<Option<i128>> {
            let mut exact_tats = exact_tats.into_iter();
            let mut local_tats = local_tats.iter().copied();
            record
                .policy
                .limits
                .iter()
                .map(|l| {
                    if is_local_first(l) {
                        local_tats.next().flatten()
                    } else {
                        exact_tats.next().flatten()
                    }
                })
                .collect()
        };
        if reserved.admitted && !matches!(outcome, Outcome::Admitted { .. }) {
            // The script refused: nothing of this request may stay consumed locally.
            shared.local_first.give_back(&local, cost);
        }
        let outcome = match outcome {
            Outcome::Admitted { credits, tats } if reserved.admitted => Outcome::Admitted {
                credits,
                tats: merge(tats),
            },
            // A local limit refused (the script ran with cost 0): rate limited, whatever else.
            Outcome::Admitted { tats, .. } | Outcome::Limited { tats } => {
                Outcome::Limited { tats: merge(tats) }
            }
            Outcome::Exhausted { tats, .. } if !reserved.admitted => {
                Outcome::Limited { tats: merge(tats) }
            }
            Outcome::Exhausted { credits, tats } => Outcome::Exhausted {
                credits,
                tats: merge(tats),
            },
        };
        self.report_shared(record, cost, now, outcome, verification);
        verification.enforcement = Some(crate::Enforcement {
            source: EnforcementSource::Redis,
            reason: format!(
                "exact limits and quota in Redis; local_first limits from this node's view, \
                 reconciled every {} ms",
                interval.as_millis()
            ),
        });
        Ok(())
    }

    fn report_shared(
        &self,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
        outcome: Outcome,
        verification: &mut Verification,
    ) {
        let (tats, credits, code) = match outcome {
            Outcome::Admitted { credits, tats } => (tats, credits, VerifyCode::Valid),
            Outcome::Limited { tats } => (tats, None, VerifyCode::RateLimited),
            Outcome::Exhausted { credits, tats } => {
                (tats, Some(credits), VerifyCode::UsageExceeded)
            }
        };
        let (decision, _) = evaluate(record, &tats, cost, now);
        verification.code = code;
        match code {
            VerifyCode::Valid => verification.limits = decision.reports,
            VerifyCode::RateLimited => {
                verification.limits = decision.reports;
                verification.retry_after = Some(decision.retry_after.max(1));
            }
            _ => {
                // Nothing was consumed: the limits as they stand.
                verification.limits = evaluate(record, &tats, 0, now).0.reports;
            }
        }
        if let (Some(quota), Some(credits)) = (record.policy.quota.as_ref(), credits) {
            self.report_quota(quota, credits, code == VerifyCode::Valid, now, verification);
        }
    }

    /// The node-local decision while Redis is down.
    fn admit_fallback(
        &self,
        shared: &Shared,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
        verification: &mut Verification,
        error: &str,
    ) {
        let nodes = shared.fallback_nodes();
        let mut local = record.clone();
        local.policy.limits = record
            .policy
            .limits
            .iter()
            .map(|l| local_share(l, nodes))
            .collect();
        let budget = shared.config.fallback_credits;
        verification.enforcement = Some(crate::Enforcement {
            source: EnforcementSource::LocalFallback,
            reason: format!(
                "Redis unreachable ({error}); this node enforces 1/{nodes} of each limit and at \
                 most {budget} credits per key until Redis answers"
            ),
        });
        let peek = shared.fallback.decide(&local, cost, now, false);
        if !peek.admitted {
            verification.code = VerifyCode::RateLimited;
            verification.retry_after = Some(peek.retry_after.max(1));
            verification.limits = peek.reports;
            return;
        }
        if let Some(quota) = &record.policy.quota {
            let period = period_of(quota, now);
            let allowance = shared
                .known_credits
                .get(&record.key_id)
                .map_or(budget, |known| known.min(budget));
            let left = {
                let mut owed = shared.owed.lock().unwrap_or_else(|e| e.into_inner());
                let entry = owed.entry(record.key_id.clone()).or_default();
                if entry.period < period {
                    // Spend of a period since refilled is owed to nobody.
                    entry.credits = 0;
                    entry.period = period;
                }
                let in_flight = entry.settling.as_ref().map_or(0, |s| s.credits);
                let used = entry.credits + in_flight;
                if used + cost <= allowance {
                    entry.credits += cost;
                    Some(allowance - used - cost)
                } else {
                    None
                }
            };
            match left {
                Some(left) => self.report_quota(quota, left, true, now, verification),
                None => {
                    verification.code = VerifyCode::UsageExceeded;
                    self.report_quota(quota, 0, false, now, verification);
                    verification.limits = shared.fallback.decide(&local, 0, now, false).reports;
                    return;
                }
            }
        }
        let commit = shared.fallback.decide(&local, cost, now, true);
        if !commit.admitted {
            if record.policy.quota.is_some() {
                let mut owed = shared.owed.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(entry) = owed.get_mut(&record.key_id) {
                    entry.credits = entry.credits.saturating_sub(cost);
                }
            }
            verification.code = VerifyCode::RateLimited;
            verification.retry_after = Some(commit.retry_after.max(1));
        }
        verification.limits = commit.reports;
    }

    /// Deducts what this node spent from its local budget during an outage from the Redis
    /// balances, exactly once per settlement; keeps what fails for the next attempt.
    async fn settle_owed(&self, shared: &Shared) -> usize {
        let work: Vec<(String, Settlement)> = {
            let mut owed = shared.owed.lock().unwrap_or_else(|e| e.into_inner());
            let mut work = Vec::new();
            for (key_id, entry) in owed.iter_mut() {
                if entry.settling.is_none() && entry.credits > 0 {
                    let Ok(token) = generate_key_id(&mut rand::rngs::SysRng) else {
                        continue;
                    };
                    entry.settling = Some(Settlement {
                        token,
                        credits: std::mem::take(&mut entry.credits),
                        period: entry.period,
                    });
                }
                if let Some(s) = &entry.settling {
                    work.push((key_id.clone(), s.clone()));
                }
            }
            owed.retain(|_, e| e.settling.is_some() || e.credits > 0);
            work
        };
        let mut settled = 0;
        let now = self.clock.now();
        for (key_id, settlement) in work {
            match self.settle_one(shared, &key_id, &settlement, now).await {
                Ok(true) => {
                    settled += 1;
                    let mut owed = shared.owed.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(entry) = owed.get_mut(&key_id) {
                        if entry
                            .settling
                            .as_ref()
                            .is_some_and(|s| s.token == settlement.token)
                        {
                            entry.settling = None;
                        }
                        if entry.credits == 0 && entry.settling.is_none() {
                            owed.remove(&key_id);
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(key_id, error = %e, "settling outage spend with Redis failed; will retry");
                }
            }
        }
        settled
    }

    /// One settlement; `Ok(false)` when the key no longer has a quota (nothing to settle).
    async fn settle_one(
        &self,
        shared: &Shared,
        key_id: &str,
        settlement: &Settlement,
        now: OffsetDateTime,
    ) -> Result<bool, EngineError> {
        let record = match self.get_key(KeyKind::Api, key_id).await {
            Ok(record) => self.effective(record, false).await?,
            Err(EngineError::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(e),
        };
        let Some(quota) = record.policy.quota else {
            return Ok(true);
        };
        let backend = |e: CallError| EngineError::Store(StoreError::Backend(Box::new(e)));
        for _ in 0..3 {
            let mut invocation = shared.scripts.settle.prepare_invoke();
            invocation
                .key(shared.quota_key(key_id))
                .key(shared.dirty_key())
                .key(format!(
                    "{}:settled:{}",
                    shared.config.namespace, settlement.token
                ))
                .arg(settlement.credits)
                .arg(period_arg(settlement.period))
                .arg(period_arg(period_of(&quota, now)))
                .arg(quota.refill.map_or(0, |r| r.amount))
                .arg(key_id)
                .arg(QUOTA_TTL_SECONDS);
            let reply = shared.run(&invocation).await.map_err(backend)?;
            let reply = String::from_redis_value(reply)
                .map_err(|e| backend(CallError::Reply(e.to_string())))?;
            if reply == "init" {
                shared
                    .init_quota(self.store.as_ref(), key_id, &quota, now)
                    .await?
                    .map_err(backend)?;
                continue;
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Writes credits spent in Redis behind to the store: one `take_credits` per key with
    /// spend since the last write. Any node may write any key's spend (it lives in Redis).
    async fn write_behind(&self, shared: &Shared) -> Result<usize, EngineError> {
        let backend = |e: CallError| EngineError::Store(StoreError::Backend(Box::new(e)));
        let prefix = format!("{}:q:", shared.config.namespace);
        let mut written = 0;
        // Bounded per tick: a key whose write keeps failing goes back to the dirty set and
        // would otherwise be popped again and again within one tick.
        for _ in 0..WRITE_BEHIND_BATCHES_PER_TICK {
            let mut invocation = shared.scripts.take_pending.prepare_invoke();
            invocation
                .key(shared.dirty_key())
                .arg(&prefix)
                .arg(WRITE_BEHIND_BATCH);
            let batch = shared
                .run(&invocation)
                .await
                .and_then(strings)
                .map_err(backend)?;
            if batch.is_empty() {
                return Ok(written);
            }
            let now = self.clock.now();
            let mut items = batch.chunks(3).filter_map(|item| match item {
                [key_id, credits, period] => Some((
                    key_id.as_str(),
                    credits.parse().unwrap_or(0u64),
                    period.as_str(),
                )),
                _ => None,
            });
            while let Some((key_id, credits, period)) = items.next() {
                match self.write_one(key_id, credits, period, now).await {
                    Ok(()) => written += 1,
                    Err(e) => {
                        // The batch left Redis when it was taken: what is not written must go
                        // back, or that spend would never reach the store.
                        self.give_back_unwritten(shared, key_id, credits, period)
                            .await;
                        if matches!(e, EngineError::Store(StoreError::Backend(_))) {
                            // The store is unreachable: the rest would fail the same way.
                            for (key_id, credits, period) in items {
                                self.give_back_unwritten(shared, key_id, credits, period)
                                    .await;
                            }
                            return Err(e);
                        }
                        tracing::warn!(key_id, error = %e, "write-behind of a key's spend failed; it stays in Redis for the next tick");
                    }
                }
            }
        }
        Ok(written)
    }

    /// Returns credits taken for write-behind but not written to Redis's pending spend.
    async fn give_back_unwritten(&self, shared: &Shared, key_id: &str, credits: u64, period: &str) {
        let mut invocation = shared.scripts.give_back.prepare_invoke();
        invocation
            .key(shared.quota_key(key_id))
            .key(shared.dirty_key())
            .arg(credits)
            .arg(period)
            .arg(key_id);
        if let Err(back) = shared.run(&invocation).await {
            tracing::error!(key_id, error = %back, "could not give unwritten credits back to Redis");
        }
    }

    async fn write_one(
        &self,
        key_id: &str,
        credits: u64,
        period: &str,
        now: OffsetDateTime,
    ) -> Result<(), EngineError> {
        let record = match self.get_key(KeyKind::Api, key_id).await {
            Ok(record) => self.effective(record, false).await?,
            Err(EngineError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some(quota) = record.policy.quota else {
            return Ok(());
        };
        if period_arg(period_of(&quota, now)).to_string() != period {
            // Spent in a period the store has since refilled (or will on its next read).
            return Ok(());
        }
        self.store
            .take_credits(key_id, &quota, credits, now)
            .await?;
        Ok(())
    }

    /// Periodic work with Redis configured (the server's upkeep tick): heartbeat and live-node
    /// count, settlement of outage spend, write-behind of spent credits to the store. Without
    /// Redis it does nothing.
    pub async fn sync_shared(&self) -> Result<SyncReport, EngineError> {
        let Some(shared) = self.shared() else {
            return Ok(SyncReport::default());
        };
        let now_ms = self.clock.now().unix_timestamp_nanos() / 1_000_000;
        let window = i128::try_from(shared.config.node_window.as_millis()).unwrap_or(i128::MAX);
        let mut invocation = shared.scripts.heartbeat.prepare_invoke();
        invocation
            .key(format!("{}:nodes", shared.config.namespace))
            .arg(now_ms.to_string())
            .arg(&shared.node_id)
            .arg((now_ms - window).to_string())
            .arg((window * 4).to_string());
        match shared.run(&invocation).await {
            Ok(count) => {
                if let Ok(count) = u64::from_redis_value(count) {
                    shared.live_nodes.store(count.max(1), Ordering::Relaxed);
                }
                shared.mark_up();
            }
            Err(e) => {
                shared.mark_down(&e);
                return Ok(SyncReport::default());
            }
        }
        let settled = self.settle_owed(shared).await;
        let written_behind = self.write_behind(shared).await?;
        Ok(SyncReport {
            redis_up: true,
            settled,
            written_behind,
        })
    }

    /// Whether Redis answers a PING within the timeout; `None` without Redis.
    pub async fn redis_health(&self) -> Option<RedisHealth> {
        let shared = self.shared()?;
        let mut conn = shared.conn.clone();
        let ping = tokio::time::timeout(
            shared.config.timeout,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        let error = match ping {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(CallError::Redis(e).to_string()),
            Err(_) => Some(CallError::Timeout(shared.config.timeout).to_string()),
        };
        Some(RedisHealth {
            up: error.is_none(),
            error,
            live_nodes: shared.live_nodes.load(Ordering::Relaxed),
        })
    }

    /// Credits left according to Redis, when Redis holds the key's balance; `None` to ask the
    /// store instead.
    pub(crate) async fn shared_credits(&self, key_id: &str, quota: &QuotaConfig) -> Option<u64> {
        let shared = self.shared()?;
        let mut conn = shared.conn.clone();
        let read = tokio::time::timeout(
            shared.config.timeout,
            redis::cmd("HMGET")
                .arg(shared.quota_key(key_id))
                .arg("r")
                .arg("p")
                .query_async::<(Option<u64>, Option<i64>)>(&mut conn),
        )
        .await;
        let Ok(Ok((Some(remaining), Some(per)))) = read else {
            return None;
        };
        let now = self.clock.now();
        match quota.refill {
            Some(refill) if per < period_arg(period_of(quota, now)) => Some(refill.amount),
            _ => Some(remaining),
        }
    }

    /// Credits a node owes Redis from an outage for this key (counted into reads of the
    /// balance from the store).
    pub(crate) fn owed_credits(&self, key_id: &str) -> u64 {
        self.shared().map_or(0, |shared| {
            let owed = shared.owed.lock().unwrap_or_else(|e| e.into_inner());
            owed.get(key_id).map_or(0, |o| {
                o.credits + o.settling.as_ref().map_or(0, |s| s.credits)
            })
        })
    }

    /// An operator's credit adjustment with Redis configured: applied to the live balance in
    /// Redis (loaded first if needed), then to the store with its audit event. Refused (as a
    /// store outage) while Redis is down, since the live balance could not follow.
    pub(crate) async fn adjust_shared(
        &self,
        key_id: &str,
        quota: &QuotaConfig,
        op: CreditOp,
        audit: keyward_core::audit::AuditDraft,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, EngineError> {
        let Some(shared) = self.shared() else {
            return Ok(None);
        };
        let backend = |e: CallError| EngineError::Store(StoreError::Backend(Box::new(e)));
        let (name, amount) = match op {
            CreditOp::Set(n) => ("set", n),
            CreditOp::Increase(n) => ("increase", n),
            CreditOp::Decrease(n) => ("decrease", n),
        };
        let run = |op_name: &'static str, amount: u64| {
            let mut invocation = shared.scripts.adjust.prepare_invoke();
            invocation
                .key(shared.quota_key(key_id))
                .arg(op_name)
                .arg(amount)
                .arg(period_arg(period_of(quota, now)))
                .arg(quota.refill.map_or(0, |r| r.amount))
                .arg(QUOTA_TTL_SECONDS);
            invocation
        };
        let mut applied = None;
        for _ in 0..3 {
            let reply = shared
                .run(&run(name, amount))
                .await
                .and_then(strings)
                .map_err(backend)?;
            match reply.as_slice() {
                [status] if status == "init" => {
                    shared
                        .init_quota(self.store.as_ref(), key_id, quota, now)
                        .await?
                        .map_err(backend)?;
                }
                [_, before, after] => {
                    applied = Some((
                        before.parse::<u64>().unwrap_or(0),
                        after.parse::<u64>().unwrap_or(0),
                    ));
                    break;
                }
                other => return Err(backend(CallError::Reply(format!("{other:?}")))),
            }
        }
        let Some((before, after)) = applied else {
            return Err(backend(CallError::Reply(
                "the quota balance was not loaded after three attempts".into(),
            )));
        };
        shared.known_credits.insert(key_id.to_owned(), after);
        let mut audit = audit;
        if let Some(summary) = audit.summary.as_object_mut() {
            summary.insert(
                "live_balance".into(),
                serde_json::json!({"before": before, "after": after}),
            );
        }
        if let Err(e) = self
            .store
            .adjust_credits(key_id, quota, 0, op, audit, now)
            .await
        {
            // Undo in Redis what the store did not record, so a retry does not apply it twice.
            let (undo, by) = match op {
                CreditOp::Increase(n) => ("decrease", n),
                CreditOp::Decrease(_) => ("increase", before - after.min(before)),
                CreditOp::Set(_) => ("set", before),
            };
            if let Err(back) = shared.run(&run(undo, by)).await {
                tracing::error!(key_id, error = %back, "could not undo a credit adjustment in Redis");
            }
            return Err(e.into());
        }
        Ok(Some(after))
    }

    /// At a clean shutdown: settle outage spend, write everything behind, leave the node set.
    pub(crate) async fn release_shared(&self) -> Result<(), EngineError> {
        let Some(shared) = self.shared() else {
            return Ok(());
        };
        if !shared.is_up() {
            // One more try: a node stopping during an outage would otherwise drop its owed spend.
            shared.mark_up();
        }
        self.settle_owed(shared).await;
        self.write_behind(shared).await?;
        let mut conn = shared.conn.clone();
        let _ = tokio::time::timeout(
            shared.config.timeout,
            redis::cmd("ZREM")
                .arg(format!("{}:nodes", shared.config.namespace))
                .arg(&shared.node_id)
                .query_async::<i64>(&mut conn),
        )
        .await;
        Ok(())
    }

    /// Sweeps full buckets of the fallback limiter.
    pub(crate) fn maintain_shared(&self) {
        if let Some(shared) = self.shared() {
            let now = self.clock.now();
            shared.fallback.sweep(now);
            shared.local_first.sweep(now);
        }
    }
}
