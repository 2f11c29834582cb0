//! `Keyward`'s background work and process hooks, each delegating to its component: the
//! usage flushes, the change feed, limit and quota upkeep (with Redis: heartbeat, settlement,
//! write-behind, local-first reconciles), the anomaly response, the rotation check, readiness
//! and the event bus. The server runs them (see `keyward::serve`); tests call them directly.

use std::sync::Arc;

use keyward_store::Change;

use crate::anomaly::AnomalyOutcome;
use crate::cache::CacheSizes;
use crate::error::EngineError;
use crate::events::Event;
use crate::rotation_policy::{RotationCheck, RotationConfig};
use crate::{Keyward, ReconcileReport, RedisHealth, SyncReport};

impl Keyward {
    /// Writes buffered `last_used_at` times to the store; the server calls it periodically
    /// and at shutdown. Returns how many keys were written.
    pub async fn flush_last_used(&self) -> Result<usize, EngineError> {
        self.usage.flush_last_used().await
    }

    /// Adds the usage counted since the last flush to the store; the server calls it
    /// periodically and at shutdown. Returns how many (key, hour, outcome) rows were written.
    /// A failed flush keeps the counts for the next one.
    /// Cancelling it (dropping the future mid-write) also keeps them; only a write whose
    /// commit is lost on its way back is counted twice by the retry.
    pub async fn flush_usage(&self) -> Result<usize, EngineError> {
        self.usage.flush_usage().await
    }

    /// Periodic upkeep: forgets rate-limit state of full buckets.
    pub fn maintain(&self) -> usize {
        self.admission.maintain()
    }

    /// Returns unspent leased credits to the store (at shutdown), so a clean stop loses none.
    pub async fn release_leases(&self) -> Result<(), EngineError> {
        self.admission.release_leases(&self.keys).await
    }

    /// Periodic work with Redis configured (the server's upkeep tick): heartbeat and live-node
    /// count, settlement of outage spend, write-behind of spent credits to the store. Without
    /// Redis it does nothing.
    pub async fn sync_shared(&self) -> Result<SyncReport, EngineError> {
        self.admission.sync_shared(&self.keys).await
    }

    /// Whether Redis answers a PING within the timeout; `None` without Redis.
    pub async fn redis_health(&self) -> Option<RedisHealth> {
        self.admission.redis_health().await
    }

    /// How often [`Keyward::reconcile_local_first`] should run; `None` without Redis.
    pub fn reconcile_interval(&self) -> Option<std::time::Duration> {
        self.admission.reconcile_interval()
    }

    /// Reconciles this node's local-first pools with Redis: sends the units admitted locally
    /// since the last call and adopts the shared state. Runs off the verify path (the server
    /// calls it every `RedisConfig::reconcile_interval`); tests call it explicitly. Never
    /// fails: a Redis failure keeps the units for the next call and marks Redis down. Without
    /// Redis, or with no local-first pool in use, it does nothing.
    pub async fn reconcile_local_first(&self) -> ReconcileReport {
        self.admission.reconcile_local_first(&self.keys).await
    }

    /// Anomalies detected by this node since it started (before any response).
    pub fn anomalies_raised(&self) -> u64 {
        self.anomaly.raised()
    }

    /// Responds to every anomaly already detected and returns what was done; the server runs
    /// [`Keyward::respond_to_anomalies`] instead.
    pub async fn drain_anomalies(&self) -> Vec<AnomalyOutcome> {
        self.anomaly.drain(&self.lifecycle, &self.keys).await
    }

    /// Responds to anomalies as they are detected, until the process stops.
    pub async fn respond_to_anomalies(self: Arc<Self>) {
        self.anomaly
            .respond_until_stopped(&self.lifecycle, &self.keys)
            .await;
    }

    /// Replaces the rotation policies and warning lead time.
    pub fn set_rotation_config(&self, config: RotationConfig) {
        self.rotation.set_config(config);
    }

    /// The rotation policies and warning lead time in force.
    pub fn rotation_config(&self) -> RotationConfig {
        self.rotation.config()
    }

    /// The upkeep check: sets the compliance gauge and announces, once each, keys that expire
    /// within the lead time and keys past their rotation policy.
    pub async fn check_rotation(&self) -> Result<RotationCheck, EngineError> {
        self.rotation.check().await
    }

    /// Checks that the store answers (for `/readyz`).
    ///
    /// It leaves the verify path's failure state alone: anyone can call `/readyz`, and a ping
    /// that happens to succeed must not send every lookup back to a store that just failed
    /// before `STORE_PROBE_INTERVAL` (`lookup.rs`) has passed (issue 10, finding 5).
    pub async fn ready(&self) -> Result<(), EngineError> {
        self.store.ping().await?;
        Ok(())
    }

    /// Publishes an event to every subscriber; never blocks (with no subscriber it is dropped).
    pub fn publish(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Subscribes to events published from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Current cache entry counts.
    pub fn cache_sizes(&self) -> CacheSizes {
        self.keys.cache_sizes()
    }

    /// True while the store's change feed is connected (or the store has no other writers),
    /// so the cache may answer without a store read.
    pub fn change_feed_trusted(&self) -> bool {
        self.keys.change_feed_trusted()
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
                    self.keys.distrust(&e);
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
                    self.keys.distrust(&e);
                    backoff = next_backoff(backoff).await;
                }
            }
        }
    }

    /// Applies one change seen on the feed (this node's own writes arrive too; evicting
    /// twice is harmless).
    fn apply_change(&self, change: Change) {
        match change {
            Change::Key { key_id, written_at } => {
                let propagation = written_at.map(|at| self.clock.now() - at);
                self.keys.key_changed(&key_id, propagation);
            }
            Change::Plan { .. } => self.keys.forget_plans(),
            Change::Credits { key_id } => self.admission.balance_changed(&key_id),
            Change::Resync => self.keys.resync(self.clock.now()),
        }
    }
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
