//! The embedded store: SQLite in WAL mode with `synchronous = FULL`, so a write that returned
//! is on disk before the API acknowledges it (it survives SIGKILL and power loss).
//!
//! Writes go through a single connection and take the write lock up front (`BEGIN
//! IMMEDIATE`), which serialises audit-chain appends even if two processes share the file;
//! reads use a small pool of read-only connections.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use keyward_core::audit::{AuditDraft, AuditEvent};
use keyward_core::key::KeyHash;
use keyward_core::quota::{Balance, QuotaConfig};
use keyward_core::record::{KeyRecord, Plan};
use keyward_core::usage::UsageCount;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};
use time::OffsetDateTime;

use crate::sql::{backend, to_millis};
use crate::usage::to_i64;
use crate::{
    AuditFilter, CreditOp, FoundKey, KeyFilter, KeyStore, KeyWrite, Page, PlanWrite, StoreError,
    UsageFilter, UsagePage,
};
use crate::{reads, usage, writes};

/// The SQLite-backed [`KeyStore`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir` and runs its migrations.
    ///
    /// Errors name the directory and say what is wrong with it (not a directory, not
    /// writable, not a keyward database) rather than failing later.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            location: data_dir.display().to_string(),
            reason,
        };
        let path = crate::data_dir::prepare(data_dir)?;
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base.clone().create_if_missing(true))
            .await
            .map_err(|e| open_error(format!("cannot open {}: {e}", path.display())))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| {
                open_error(format!(
                    "{} is not a usable keyward database: {e}",
                    path.display()
                ))
            })?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base.read_only(true))
            .await
            .map_err(|e| open_error(format!("cannot open {} for reading: {e}", path.display())))?;
        Ok(Self { writer, readers })
    }

    /// A write transaction that holds the write lock from its first statement (`BEGIN
    /// IMMEDIATE`), so concurrent writers queue instead of failing to upgrade a read lock.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)
    }

    /// Closes the pools, flushing the WAL.
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    /// A connection of the read-only pool.
    async fn reader(&self) -> Result<PoolConnection<Sqlite>, StoreError> {
        self.readers.acquire().await.map_err(backend)
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn find_by_hash(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
    ) -> Result<Option<FoundKey>, StoreError> {
        reads::find_by_hash(&mut *self.reader().await?, hash, now).await
    }

    async fn get_key(
        &self,
        key_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        reads::get_key(&mut *self.reader().await?, key_id, now).await
    }

    async fn list_keys(&self, filter: &KeyFilter) -> Result<Page<KeyRecord>, StoreError> {
        reads::list_keys(&mut *self.reader().await?, filter).await
    }

    async fn write_key(&self, write: KeyWrite) -> Result<i64, StoreError> {
        let mut tx = self.write_tx().await?;
        let seq = writes::write_key(&mut *tx, write).await?;
        tx.commit().await.map_err(backend)?;
        Ok(seq)
    }

    async fn create_first_root_key(&self, write: KeyWrite) -> Result<Option<i64>, StoreError> {
        // BEGIN IMMEDIATE holds the write lock, so the check and the insert cannot interleave
        // with another process bootstrapping the same file.
        let mut tx = self.write_tx().await?;
        let seq = writes::create_first_root_key(&mut *tx, write).await?;
        tx.commit().await.map_err(backend)?;
        Ok(seq)
    }

    async fn append_audit(&self, draft: AuditDraft) -> Result<i64, StoreError> {
        let mut tx = self.write_tx().await?;
        let seq = writes::append_audit(&mut *tx, draft).await?;
        tx.commit().await.map_err(backend)?;
        Ok(seq)
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Page<AuditEvent>, StoreError> {
        reads::list_audit(&mut *self.reader().await?, filter).await
    }

    async fn touch_last_used(&self, uses: &[(String, OffsetDateTime)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for (key_id, at) in uses {
            sqlx::query(
                "UPDATE keys SET last_used_at = ?1 WHERE key_id = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)",
            )
            .bind(to_millis(*at))
            .bind(key_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn add_usage(&self, counts: &[UsageCount]) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for c in counts {
            sqlx::query(
                "INSERT INTO usage_hourly (hour, key_id, code, owner, tenant, verifications, credits)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (hour, key_id, code) DO UPDATE SET
                   verifications = verifications + excluded.verifications,
                   credits = credits + excluded.credits,
                   owner = excluded.owner, tenant = excluded.tenant",
            )
            .bind(to_millis(c.start))
            .bind(&c.key_id)
            .bind(c.code.as_str())
            .bind(&c.owner)
            .bind(&c.tenant)
            .bind(to_i64(c.verifications))
            .bind(to_i64(c.credits))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn list_usage(&self, filter: &UsageFilter) -> Result<UsagePage, StoreError> {
        usage::list_usage(&mut *self.reader().await?, filter).await
    }

    async fn count_root_keys(&self) -> Result<u64, StoreError> {
        Ok(writes::count_root_keys(&mut *self.reader().await?)
            .await?
            .max(0) as u64)
    }

    async fn change_head(&self) -> Result<i64, StoreError> {
        reads::change_head(&mut *self.reader().await?).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.readers)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get_plan(&self, plan_id: &str) -> Result<Option<Plan>, StoreError> {
        reads::get_plan(&mut *self.reader().await?, plan_id).await
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        reads::list_plans(&mut *self.reader().await?).await
    }

    async fn write_plan(&self, write: PlanWrite) -> Result<i64, StoreError> {
        let mut tx = self.write_tx().await?;
        let seq = writes::write_plan(&mut *tx, write).await?;
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
        let mut tx = self.write_tx().await?;
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
        let mut tx = self.write_tx().await?;
        let after =
            writes::adjust_credits(&mut *tx, key_id, config, unspent, op, audit, now).await?;
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
        let mut tx = self.write_tx().await?;
        writes::give_back_credits(&mut *tx, key_id, config, amount, period, now).await?;
        tx.commit().await.map_err(backend)
    }

    async fn balance(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        now: OffsetDateTime,
    ) -> Result<Balance, StoreError> {
        writes::read_balance(&mut *self.reader().await?, key_id, config, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn behaviour_suite_passes_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        crate::testsuite::run_all(&store).await;
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let write = crate::testsuite::new_key_write("key_AAAAAAAAAAAAAAAAAAAA", "kw_live_reopen");
        store.write_key(write).await.unwrap();
        store.close().await;
        drop(store);
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let found = store
            .find_by_hash(&KeyHash::sha256_of("kw_live_reopen"), crate::testsuite::T0)
            .await
            .unwrap();
        assert_eq!(found.unwrap().record.key_id, "key_AAAAAAAAAAAAAAAAAAAA");
    }

    #[tokio::test]
    async fn corrupt_database_is_a_clear_open_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(crate::data_dir::DB_FILE), b"this is not a database, just some bytes that fill a header ........................................").unwrap();
        let err = SqliteStore::open(dir.path()).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Open { .. }), "{text}");
        assert!(text.contains("keyward.db"), "{text}");
    }

    #[tokio::test]
    async fn data_dir_that_is_a_file_is_a_clear_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = SqliteStore::open(&file).await.unwrap_err();
        assert!(
            err.to_string().contains("cannot create the data directory"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn audit_log_rejects_updates_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        store
            .write_key(crate::testsuite::new_key_write(
                "key_AAAAAAAAAAAAAAAAAAAB",
                "kw_live_x",
            ))
            .await
            .unwrap();
        let update = sqlx::query("UPDATE audit_log SET actor = 'mallory'")
            .execute(&store.writer)
            .await;
        assert!(update.unwrap_err().to_string().contains("append-only"));
        let delete = sqlx::query("DELETE FROM audit_log")
            .execute(&store.writer)
            .await;
        assert!(delete.unwrap_err().to_string().contains("append-only"));
    }

    /// An hourly usage page seeks the primary key from its start (the row value), so its cost
    /// does not grow with the rows of the window before it (found linear by bench/scale.sh).
    #[tokio::test]
    async fn an_hourly_usage_page_seeks_the_index() {
        use crate::dialect::Dialect as _;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        // A constant of this crate, not input: safe to format into the statement.
        let explain = format!("EXPLAIN QUERY PLAN {}", Sqlite::LIST_USAGE_HOURLY);
        let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(explain))
            .bind(1_i64)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(0_i64)
            .bind("")
            .bind("")
            .bind(10_i64)
            .fetch_all(&store.writer)
            .await
            .unwrap()
            .iter()
            .map(|row| sqlx::Row::get::<String, _>(row, "detail"))
            .collect();
        let plan = plan.join("; ");
        assert!(
            plan.contains("USING INDEX") && plan.contains("(hour,key_id,code)>(?,?,?)"),
            "{plan}"
        );
        assert!(
            !plan.contains("SCAN") && !plan.contains("TEMP B-TREE"),
            "{plan}"
        );
    }

    /// A page of keys seeks (kind, seq) from its cursor and needs no sort, so its cost does not
    /// grow with the key count (found linear by bench/scale.sh).
    #[tokio::test]
    async fn a_page_of_keys_seeks_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        // The statement of `reads::list_keys`, with its binds.
        let explain = format!("EXPLAIN QUERY PLAN {}", crate::reads::LIST_KEYS);
        let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(explain))
            .bind("api")
            .bind(0_i64)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(0_i64)
            .bind(101_i64)
            .fetch_all(&store.writer)
            .await
            .unwrap()
            .iter()
            .map(|row| sqlx::Row::get::<String, _>(row, "detail"))
            .collect();
        let plan = plan.join("; ");
        assert!(plan.contains("keys_kind_seq (kind=? AND seq>?)"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
