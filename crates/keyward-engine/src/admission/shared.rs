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
//! [`sync_shared`](crate::Keyward::sync_shared) (the upkeep tick) and at a clean shutdown. The
//! store always holds the Redis balance plus the credits not yet written behind.
//!
//! When Redis does not answer within [`RedisConfig::timeout`], the node falls back to local
//! enforcement: each limit divided by the number of live nodes (from a heartbeat in Redis, the
//! last count known) and a small credit budget per key on this node. What it spends from that
//! budget is deducted from the Redis balance once Redis answers again, exactly once (a token
//! per settlement). The decision's source shows in
//! [`Verification::enforcement`](crate::Verification::enforcement).
//!
//! The decisions are in `decide.rs`, the upkeep (heartbeat, settlement, write-behind, credit
//! reads and adjustments) in `upkeep.rs`.
//!
//! Limits with `mode = "local_first"` are decided from node-local state and reconciled with
//! Redis in the background (the `local_first` module; the overshoot bound is in
//! docs/limits-and-quotas.md).

mod decide;
mod local_first;
mod upkeep;

pub use crate::verification::{Enforcement, EnforcementSource};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration as StdDuration, Instant};

use keyward_core::key::generate_key_id;
use keyward_core::limit::{RateLimit, nanos};
use keyward_core::quota::QuotaConfig;
use keyward_store::StoreError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script};
use time::OffsetDateTime;

use super::local::Limiter;
use crate::error::EngineError;
use local_first::LocalFirst;
pub use local_first::ReconcileReport;

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

/// What one [`Keyward::sync_shared`](crate::Keyward::sync_shared) did.
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

/// The Lua scripts, one file each beside this one; those that read pools or balances start
/// with `common.lua`, which states the rules they share.
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
                admit: Script::new(concat!(
                    include_str!("shared/common.lua"),
                    include_str!("shared/admit.lua")
                )),
                init_quota: Script::new(include_str!("shared/init_quota.lua")),
                take_pending: Script::new(include_str!("shared/take_pending.lua")),
                give_back: Script::new(include_str!("shared/give_back.lua")),
                adjust: Script::new(concat!(
                    include_str!("shared/common.lua"),
                    include_str!("shared/adjust.lua")
                )),
                settle: Script::new(concat!(
                    include_str!("shared/common.lua"),
                    include_str!("shared/settle.lua")
                )),
                heartbeat: Script::new(include_str!("shared/heartbeat.lua")),
                reconcile: Script::new(concat!(
                    include_str!("shared/common.lua"),
                    include_str!("shared/reconcile.lua")
                )),
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

#[cfg(test)]
mod tests;
