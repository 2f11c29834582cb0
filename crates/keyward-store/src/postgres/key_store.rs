//! [`KeyStore`] for [`PostgresStore`]: the shared reads (`crate::reads`), each retried once on
//! a fresh connection after a connection-level error (see the parent module), and the shared
//! writes (`crate::writes`), run under this backend's locks with their change notification
//! queued in the same transaction.

use async_trait::async_trait;
use keyward_core::audit::{AuditDraft, AuditEvent};
use keyward_core::key::KeyHash;
use keyward_core::quota::{Balance, QuotaConfig};
use keyward_core::record::{KeyRecord, Plan};
use keyward_core::usage::UsageCount;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use time::OffsetDateTime;

use super::feed::{PgChangeFeed, key_change};
use super::{Locks, PostgresStore};
use crate::sql::{backend, to_millis};
use crate::usage::to_i64;
use crate::{
    AuditFilter, Change, ChangeFeed, CreditOp, FoundKey, KeyFilter, KeyStore, KeyWrite, Page,
    PlanWrite, StoreError, UsageFilter, UsagePage,
};
use crate::{reads, usage, writes};

impl PostgresStore {
    /// A connection of the pool, for one read.
    async fn conn(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        self.pool.acquire().await.map_err(backend)
    }
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn changes(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        let feed = PgChangeFeed::subscribe(
            self.feed_connect.clone(),
            self.channel.clone(),
            self.options.acquire_timeout,
            self.options.feed_idle_check,
        )
        .await?;
        Ok(Some(Box::new(feed)))
    }

    async fn change_head(&self) -> Result<i64, StoreError> {
        self.read(|| async { reads::change_head(&mut *self.conn().await?).await })
            .await
    }

    async fn find_by_hash(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
    ) -> Result<Option<FoundKey>, StoreError> {
        self.read(|| async { reads::find_by_hash(&mut *self.conn().await?, hash, now).await })
            .await
    }

    async fn get_key(
        &self,
        key_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.read(|| async { reads::get_key(&mut *self.conn().await?, key_id, now).await })
            .await
    }

    async fn list_keys(&self, filter: &KeyFilter) -> Result<Page<KeyRecord>, StoreError> {
        self.read(|| async { reads::list_keys(&mut *self.conn().await?, filter).await })
            .await
    }

    async fn write_key(&self, write: KeyWrite) -> Result<i64, StoreError> {
        let change = key_change(&write);
        let mut tx = self.write_tx(Locks::Chain).await?;
        let seq = writes::write_key(&mut *tx, write).await?;
        self.commit(tx, Some(&change)).await?;
        Ok(seq)
    }

    async fn create_first_root_key(&self, write: KeyWrite) -> Result<Option<i64>, StoreError> {
        // Under the write lock no other node can insert a root key between the count and the
        // insert.
        let change = key_change(&write);
        let mut tx = self.write_tx(Locks::Chain).await?;
        let seq = writes::create_first_root_key(&mut *tx, write).await?;
        // Notified only when a key was written.
        self.commit(tx, seq.and(Some(&change))).await?;
        Ok(seq)
    }

    async fn append_audit(&self, draft: AuditDraft) -> Result<i64, StoreError> {
        let mut tx = self.write_tx(Locks::Chain).await?;
        let seq = writes::append_audit(&mut *tx, draft).await?;
        self.commit(tx, None).await?;
        Ok(seq)
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Page<AuditEvent>, StoreError> {
        self.read(|| async { reads::list_audit(&mut *self.conn().await?, filter).await })
            .await
    }

    async fn touch_last_used(&self, uses: &[(String, OffsetDateTime)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = uses.iter().map(|(id, _)| id.as_str()).collect();
        let times: Vec<i64> = uses.iter().map(|(_, at)| to_millis(*at)).collect();
        // One statement: the later time wins even against another node's concurrent flush,
        // because the row's condition is re-checked after waiting for its lock.
        sqlx::query(
            "UPDATE keys SET last_used_at = u.at
             FROM (SELECT key_id, max(at) AS at FROM unnest($1::text[], $2::bigint[]) AS u (key_id, at)
                   GROUP BY key_id) AS u
             WHERE keys.key_id = u.key_id AND (keys.last_used_at IS NULL OR keys.last_used_at < u.at)",
        )
        .bind(&ids)
        .bind(&times)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn add_usage(&self, counts: &[UsageCount]) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let hours: Vec<i64> = counts.iter().map(|c| to_millis(c.start)).collect();
        let key_ids: Vec<&str> = counts.iter().map(|c| c.key_id.as_str()).collect();
        let codes: Vec<&str> = counts.iter().map(|c| c.code.as_str()).collect();
        let owners: Vec<&str> = counts.iter().map(|c| c.owner.as_str()).collect();
        let tenants: Vec<Option<&str>> = counts.iter().map(|c| c.tenant.as_deref()).collect();
        let verifications: Vec<i64> = counts.iter().map(|c| to_i64(c.verifications)).collect();
        let credits: Vec<i64> = counts.iter().map(|c| to_i64(c.credits)).collect();
        // One statement, not retried (a write). Rows of the batch that share a bucket are
        // summed first: ON CONFLICT may touch each row only once per statement. Rows are
        // written in key order, so two nodes flushing the same rows lock them in the same
        // order and cannot deadlock.
        sqlx::query(
            "INSERT INTO usage_hourly (hour, key_id, code, owner, tenant, verifications, credits)
             SELECT hour, key_id, code, max(owner), max(tenant), sum(verifications)::bigint,
                    sum(credits)::bigint
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::bigint[], $7::bigint[])
                  AS u (hour, key_id, code, owner, tenant, verifications, credits)
             GROUP BY hour, key_id, code
             ORDER BY hour, key_id, code
             ON CONFLICT (hour, key_id, code) DO UPDATE SET
               verifications = usage_hourly.verifications + excluded.verifications,
               credits = usage_hourly.credits + excluded.credits,
               owner = excluded.owner, tenant = excluded.tenant",
        )
        .bind(&hours)
        .bind(&key_ids)
        .bind(&codes)
        .bind(&owners)
        .bind(&tenants)
        .bind(&verifications)
        .bind(&credits)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn list_usage(&self, filter: &UsageFilter) -> Result<UsagePage, StoreError> {
        self.read(|| async { usage::list_usage(&mut *self.conn().await?, filter).await })
            .await
    }

    async fn count_root_keys(&self) -> Result<u64, StoreError> {
        self.read(|| async {
            let count = writes::count_root_keys(&mut *self.conn().await?).await?;
            Ok(count.max(0) as u64)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|| async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn get_plan(&self, plan_id: &str) -> Result<Option<Plan>, StoreError> {
        self.read(|| async { reads::get_plan(&mut *self.conn().await?, plan_id).await })
            .await
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        self.read(|| async { reads::list_plans(&mut *self.conn().await?).await })
            .await
    }

    async fn write_plan(&self, write: PlanWrite) -> Result<i64, StoreError> {
        let change = Change::Plan {
            plan_id: write.plan.plan_id.clone(),
        };
        let mut tx = self.write_tx(Locks::Chain).await?;
        let seq = writes::write_plan(&mut *tx, write).await?;
        self.commit(tx, Some(&change)).await?;
        Ok(seq)
    }

    async fn take_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        want: u64,
        now: OffsetDateTime,
    ) -> Result<(u64, Balance), StoreError> {
        let mut tx = self.write_tx(Locks::Credits(key_id)).await?;
        let taken = writes::take_credits(&mut *tx, key_id, config, want, now).await?;
        self.commit(tx, None).await?;
        Ok(taken)
    }

    async fn adjust_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        unspent: u64,
        op: CreditOp,
        audit: AuditDraft,
        now: OffsetDateTime,
    ) -> Result<Balance, StoreError> {
        let mut tx = self.write_tx(Locks::ChainThenCredits(key_id)).await?;
        let after =
            writes::adjust_credits(&mut *tx, key_id, config, unspent, op, audit, now).await?;
        let change = Change::Credits {
            key_id: key_id.to_owned(),
        };
        self.commit(tx, Some(&change)).await?;
        Ok(after)
    }

    async fn give_back_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        amount: u64,
        period: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx(Locks::Credits(key_id)).await?;
        writes::give_back_credits(&mut *tx, key_id, config, amount, period, now).await?;
        self.commit(tx, None).await
    }

    async fn balance(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        now: OffsetDateTime,
    ) -> Result<Balance, StoreError> {
        self.read(|| async {
            writes::read_balance(&mut *self.conn().await?, key_id, config, now).await
        })
        .await
    }
}
