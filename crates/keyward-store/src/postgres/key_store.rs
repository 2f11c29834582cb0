//! [`KeyStore`] for [`PostgresStore`]: reads, each retried once on a fresh connection after a
//! connection-level error (see the parent module), and writes, which run the statements of
//! `crate::writes` under this backend's locks and queue their change notification.

use async_trait::async_trait;
use keyward_core::audit::{AuditDraft, AuditEvent};
use keyward_core::key::KeyHash;
use keyward_core::quota::{Balance, QuotaConfig};
use keyward_core::record::{KeyRecord, KeyStatus, Plan, SecretInfo};
use keyward_core::usage::UsageCount;
use sqlx::Row;
use time::OffsetDateTime;

use super::feed::{PgChangeFeed, key_change, notify};
use super::{PostgresStore, lock_credits, lock_writes};
use crate::sql::{
    backend, event_from_row, plan_from_row, record_from_row, secret_from_row, to_millis,
};
use crate::usage::{UsageQuery, UsageTuple, page, to_i64};
use crate::writes;
use crate::{
    AuditFilter, Change, ChangeFeed, CreditOp, FoundKey, KeyFilter, KeyStore, KeyWrite, Page,
    PlanWrite, StoreError, UsageFilter, UsagePage,
};

impl PostgresStore {
    async fn secrets_for(
        &self,
        key_ids: &[String],
        now: OffsetDateTime,
    ) -> Result<Vec<(String, SecretInfo)>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, hash, hash_version, start, created_at, expires_at FROM secrets
             WHERE key_id = ANY($1) AND (expires_at IS NULL OR expires_at > $2)
             ORDER BY key_id, expires_at IS NOT NULL, created_at DESC",
        )
        .bind(key_ids)
        .bind(to_millis(now))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("key_id").map_err(backend)?,
                    secret_from_row(row)?,
                ))
            })
            .collect()
    }

    async fn with_secrets(
        &self,
        mut records: Vec<KeyRecord>,
        now: OffsetDateTime,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        if records.is_empty() {
            return Ok(records);
        }
        let ids: Vec<String> = records.iter().map(|r| r.key_id.clone()).collect();
        let secrets = self.secrets_for(&ids, now).await?;
        for record in &mut records {
            record.secrets = secrets
                .iter()
                .filter(|(id, _)| *id == record.key_id)
                .map(|(_, s)| s.clone())
                .collect();
        }
        Ok(records)
    }

    async fn find_by_hash_once(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
    ) -> Result<Option<FoundKey>, StoreError> {
        let row = sqlx::query(
            "SELECT key_id, hash, hash_version, start, created_at, expires_at FROM secrets
             WHERE hash = $1 AND hash_version = $2",
        )
        .bind(hash.to_hex())
        .bind(hash.version())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let secret = secret_from_row(&row)?;
        let key_id: String = row.try_get("key_id").map_err(backend)?;
        Ok(self
            .get_key_once(&key_id, now)
            .await?
            .map(|record| FoundKey { record, secret }))
    }

    async fn get_key_once(
        &self,
        key_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM keys WHERE key_id = $1")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        match row {
            Some(row) => Ok(self
                .with_secrets(vec![record_from_row(&row)?], now)
                .await?
                .pop()),
            None => Ok(None),
        }
    }

    async fn list_keys_once(&self, filter: &KeyFilter) -> Result<Page<KeyRecord>, StoreError> {
        let limit = i64::from(filter.limit.max(1));
        let rows = sqlx::query(
            "SELECT * FROM keys WHERE kind = $1 AND seq > $2
               AND ($3::text IS NULL OR owner = $3) AND ($4::text IS NULL OR tenant = $4)
               AND ($5::text IS NULL
                    OR ($5 = 'revoked' AND revoked_at IS NOT NULL)
                    OR ($5 = 'expired' AND revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= $6)
                    OR ($5 = 'active' AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $6)))
             ORDER BY seq LIMIT $7",
        )
        .bind(filter.kind.as_str())
        .bind(filter.after.unwrap_or(0))
        .bind(&filter.owner)
        .bind(&filter.tenant)
        .bind(filter.status.map(KeyStatus::as_str))
        .bind(to_millis(filter.now))
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let more = rows.len() as i64 > limit;
        let rows = &rows[..rows.len().min(limit as usize)];
        let next_cursor = match rows.last() {
            Some(last) if more => Some(last.try_get::<i64, _>("seq").map_err(backend)?),
            _ => None,
        };
        let records = rows
            .iter()
            .map(record_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            items: self.with_secrets(records, filter.now).await?,
            next_cursor,
        })
    }

    async fn list_audit_once(&self, filter: &AuditFilter) -> Result<Page<AuditEvent>, StoreError> {
        let limit = i64::from(filter.limit.max(1));
        let rows = sqlx::query(
            "SELECT * FROM audit_log WHERE seq > $1 AND ($2::text IS NULL OR target = $2)
               AND ($3::text IS NULL OR action = $3)
               AND ($5::text IS NULL
                    OR EXISTS (SELECT 1 FROM keys k WHERE k.key_id = audit_log.target AND k.tenant = $5)
                    OR EXISTS (SELECT 1 FROM keys k WHERE k.key_id = audit_log.actor AND k.tenant = $5))
             ORDER BY seq LIMIT $4",
        )
        .bind(filter.after.unwrap_or(0))
        .bind(&filter.target)
        .bind(&filter.action)
        .bind(limit + 1)
        .bind(&filter.tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let more = rows.len() as i64 > limit;
        let items = rows
            .iter()
            .take(limit as usize)
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if more {
            items.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn list_usage_once(&self, filter: &UsageFilter) -> Result<UsagePage, StoreError> {
        let q = UsageQuery::new(filter);
        // Text is compared bytewise (COLLATE "C"), as on SQLite, so pages split the same way
        // whatever the database's collation.
        let rows: Vec<UsageTuple> = sqlx::query_as(
            r#"SELECT bucket, key_id, code, owner, tenant, verifications, credits FROM (
                 SELECT (hour / $1) * $1 AS bucket, key_id COLLATE "C" AS key_id,
                        code COLLATE "C" AS code, max(owner) AS owner, max(tenant) AS tenant,
                        sum(verifications)::bigint AS verifications,
                        sum(credits)::bigint AS credits
                 FROM usage_hourly
                 WHERE hour >= $2 AND hour < $3 AND ($4::text IS NULL OR key_id = $4)
                   AND ($5::text IS NULL OR owner = $5) AND ($6::text IS NULL OR tenant = $6)
                 GROUP BY 1, 2, 3
               ) AS t
               WHERE bucket > $7 OR (bucket = $7 AND (key_id > $8 OR (key_id = $8 AND code > $9)))
               ORDER BY bucket, key_id, code LIMIT $10"#,
        )
        .bind(q.bucket)
        .bind(q.from)
        .bind(q.to)
        .bind(q.key_id)
        .bind(q.owner)
        .bind(q.tenant)
        .bind(q.after_bucket)
        .bind(q.after_key_id)
        .bind(q.after_code)
        .bind(q.fetch)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        page(rows, filter.limit)
    }

    async fn balance_once(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        now: OffsetDateTime,
    ) -> Result<Balance, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        writes::read_balance(&mut *conn, key_id, config, now).await
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
        self.read(|| async {
            let head: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM audit_log")
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
            Ok(head.unwrap_or(0))
        })
        .await
    }

    async fn find_by_hash(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
    ) -> Result<Option<FoundKey>, StoreError> {
        self.read(|| self.find_by_hash_once(hash, now)).await
    }

    async fn get_key(
        &self,
        key_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.read(|| self.get_key_once(key_id, now)).await
    }

    async fn list_keys(&self, filter: &KeyFilter) -> Result<Page<KeyRecord>, StoreError> {
        self.read(|| self.list_keys_once(filter)).await
    }

    async fn write_key(&self, write: KeyWrite) -> Result<i64, StoreError> {
        let change = key_change(&write);
        let mut tx = self.begin().await?;
        lock_writes(&mut tx).await?;
        let seq = writes::write_key(&mut *tx, write).await?;
        notify(&mut tx, &self.channel, &change).await?;
        tx.commit().await.map_err(backend)?;
        Ok(seq)
    }

    async fn create_first_root_key(&self, write: KeyWrite) -> Result<Option<i64>, StoreError> {
        // Under the write lock no other node can insert a root key between the count and the
        // insert.
        let change = key_change(&write);
        let mut tx = self.begin().await?;
        lock_writes(&mut tx).await?;
        let seq = writes::create_first_root_key(&mut *tx, write).await?;
        if seq.is_some() {
            notify(&mut tx, &self.channel, &change).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(seq)
    }

    async fn append_audit(&self, draft: AuditDraft) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        lock_writes(&mut tx).await?;
        let seq = writes::append_audit(&mut *tx, draft).await?;
        tx.commit().await.map_err(backend)?;
        Ok(seq)
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Page<AuditEvent>, StoreError> {
        self.read(|| self.list_audit_once(filter)).await
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
        self.read(|| self.list_usage_once(filter)).await
    }

    async fn count_root_keys(&self) -> Result<u64, StoreError> {
        self.read(|| async {
            let mut conn = self.pool.acquire().await.map_err(backend)?;
            Ok(writes::count_root_keys(&mut *conn).await?.max(0) as u64)
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
        self.read(|| async {
            let row = sqlx::query("SELECT * FROM plans WHERE plan_id = $1")
                .bind(plan_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
            row.as_ref().map(plan_from_row).transpose()
        })
        .await
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        self.read(|| async {
            let rows = sqlx::query("SELECT * FROM plans ORDER BY plan_id")
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
            rows.iter().map(plan_from_row).collect()
        })
        .await
    }

    async fn write_plan(&self, write: PlanWrite) -> Result<i64, StoreError> {
        let change = Change::Plan {
            plan_id: write.plan.plan_id.clone(),
        };
        let mut tx = self.begin().await?;
        lock_writes(&mut tx).await?;
        let seq = writes::write_plan(&mut *tx, write).await?;
        notify(&mut tx, &self.channel, &change).await?;
        tx.commit().await.map_err(backend)?;
        Ok(seq)
    }

    async fn take_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        want: u64,
        now: OffsetDateTime,
    ) -> Result<(u64, Balance), StoreError> {
        let mut tx = self.begin().await?;
        lock_credits(&mut tx, key_id).await?;
        let taken = writes::take_credits(&mut *tx, key_id, config, want, now).await?;
        tx.commit().await.map_err(backend)?;
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
        let mut tx = self.begin().await?;
        // The chain lock first, then the key's credit lock: take_credits holds only the
        // latter, so the two orders cannot deadlock.
        lock_writes(&mut tx).await?;
        lock_credits(&mut tx, key_id).await?;
        let after =
            writes::adjust_credits(&mut *tx, key_id, config, unspent, op, audit, now).await?;
        let change = Change::Credits {
            key_id: key_id.to_owned(),
        };
        notify(&mut tx, &self.channel, &change).await?;
        tx.commit().await.map_err(backend)?;
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
        let mut tx = self.begin().await?;
        lock_credits(&mut tx, key_id).await?;
        writes::give_back_credits(&mut *tx, key_id, config, amount, period, now).await?;
        tx.commit().await.map_err(backend)
    }

    async fn balance(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        now: OffsetDateTime,
    ) -> Result<Balance, StoreError> {
        self.read(|| self.balance_once(key_id, config, now)).await
    }
}
