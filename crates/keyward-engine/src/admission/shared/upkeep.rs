//! Upkeep of the shared state (the server's upkeep tick and shutdown): heartbeat and live-node
//! count, settlement of outage spend, write-behind of spent credits to the store, credit reads
//! and adjustments against the live balance in Redis (see the parent module).

use std::sync::atomic::Ordering;

use keyward_core::key::generate_key_id;
use keyward_core::quota::QuotaConfig;
use keyward_core::record::KeyKind;
use keyward_store::{CreditOp, StoreError};
use redis::FromRedisValue;
use time::OffsetDateTime;

use super::{
    CallError, QUOTA_TTL_SECONDS, RedisHealth, Settlement, Shared, SyncReport, WRITE_BEHIND_BATCH,
    WRITE_BEHIND_BATCHES_PER_TICK, period_arg, strings,
};
use crate::admission::Admission;
use crate::admission::local::period_of;
use crate::error::EngineError;
use crate::lookup::KeyLookup;

impl Admission {
    /// Deducts what this node spent from its local budget during an outage from the Redis
    /// balances, exactly once per settlement; keeps what fails for the next attempt.
    pub(super) async fn settle_owed(&self, shared: &Shared, keys: &KeyLookup) -> usize {
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
            match self
                .settle_one(shared, keys, &key_id, &settlement, now)
                .await
            {
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
        keys: &KeyLookup,
        key_id: &str,
        settlement: &Settlement,
        now: OffsetDateTime,
    ) -> Result<bool, EngineError> {
        let record = match keys.get_key(KeyKind::Api, key_id, self.clock.now()).await {
            Ok(record) => keys.effective(record, false).await?,
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
    async fn write_behind(&self, shared: &Shared, keys: &KeyLookup) -> Result<usize, EngineError> {
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
                match self.write_one(keys, key_id, credits, period, now).await {
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
        keys: &KeyLookup,
        key_id: &str,
        credits: u64,
        period: &str,
        now: OffsetDateTime,
    ) -> Result<(), EngineError> {
        let record = match keys.get_key(KeyKind::Api, key_id, self.clock.now()).await {
            Ok(record) => keys.effective(record, false).await?,
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
    pub(crate) async fn sync_shared(&self, keys: &KeyLookup) -> Result<SyncReport, EngineError> {
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
        let settled = self.settle_owed(shared, keys).await;
        let written_behind = self.write_behind(shared, keys).await?;
        Ok(SyncReport {
            redis_up: true,
            settled,
            written_behind,
        })
    }

    /// Whether Redis answers a PING within the timeout; `None` without Redis.
    pub(crate) async fn redis_health(&self) -> Option<RedisHealth> {
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
    pub(crate) async fn release_shared(&self, keys: &KeyLookup) -> Result<(), EngineError> {
        let Some(shared) = self.shared() else {
            return Ok(());
        };
        if !shared.is_up() {
            // One more try: a node stopping during an outage would otherwise drop its owed spend.
            shared.mark_up();
        }
        self.settle_owed(shared, keys).await;
        self.write_behind(shared, keys).await?;
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
