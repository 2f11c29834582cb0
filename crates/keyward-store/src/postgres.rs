//! The cluster store: PostgreSQL, shared by every keyward node, with a change feed over
//! `LISTEN`/`NOTIFY` so each node learns of the others' writes.
//!
//! It keeps exactly the semantics of the SQLite store (the behaviour suite runs against both).
//! The choices that differ because several processes write at once:
//!
//! - **One writer at a time for the audit chain.** Every write that appends an audit event
//!   first locks the single row of `write_lock` (`SELECT ... FOR UPDATE`), so appends are
//!   serialised across nodes and the hash chain stays linear, the way `BEGIN IMMEDIATE` does
//!   on SQLite. The lock is a row of this schema (not a database-wide advisory lock), so two
//!   keyward deployments in two schemas of one database do not wait for each other. Key
//!   inserts also happen under it, so `keys.seq` is assigned in commit order and a listing
//!   cursor never skips a key that committed late.
//! - **Credit balances** are read, changed and written under a transaction-scoped advisory
//!   lock per key (`pg_advisory_xact_lock` of the schema and key_id), so two nodes taking
//!   credits from one key at once cannot both spend the same balance.
//! - **Times** are Unix milliseconds in `BIGINT` columns, the same representation as SQLite,
//!   and JSON columns are `TEXT` (see `migrations/postgres/0001_init.sql` for why).
//!
//! **Retries.** A read (`find_by_hash`, `get_key`, `list_*`, `get_plan`, `balance`,
//! `count_root_keys`, `change_head`, `ping`) that fails with a connection-level error (I/O,
//! TLS, a terminated backend, SQLSTATE class 08) is retried once on a fresh connection: a read
//! changes nothing, so running it twice is harmless. A write is never retried here: if the
//! connection fails around `COMMIT`, the write may have been applied even though its
//! acknowledgement was lost, and replaying it blindly could apply it twice (two credit takes,
//! two audit events). The error goes to the caller, whose own rules decide (the engine
//! re-reads and retries an optimistic write only on `Conflict`).
//!
//! **Change feed.** Every write that changes how a key verifies calls `pg_notify` inside its
//! own transaction, so the notification is delivered exactly when (and only if) the write
//! commits. The channel is `keyward_changes`, or `keyward_changes_<schema>` when the store
//! uses its own schema (so two deployments, or two tests, in one database do not see each
//! other's changes). The payload is `<kind>:<id>`: `key:<key_id>` (a key's record or secrets
//! changed), `plan:<plan_id>` (a plan changed or was deleted) or `credits:<key_id>` (a credit
//! balance was adjusted through the API). See [`PgChangeFeed`] for how a gap is reported.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use keyward_core::audit::{AuditDraft, AuditEvent, GENESIS_HASH};
use keyward_core::key::KeyHash;
use keyward_core::permission::Permission;
use keyward_core::quota::{Balance, QuotaConfig, current_balance};
use keyward_core::record::{KeyKind, KeyRecord, KeyStatus, Plan, SecretInfo};
use keyward_core::route::RoutePattern;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use time::OffsetDateTime;

use keyward_core::usage::UsageCount;

use crate::sql::{
    backend, check_root_guard, event_from_row, from_millis, json_text, opt_from_millis,
    plan_from_row, record_from_row, secret_from_row, to_millis,
};
use crate::usage::{UsageQuery, UsageTuple, page, to_i64};
use crate::{
    AuditFilter, Change, ChangeFeed, CreditOp, FoundKey, KeyFilter, KeyStore, KeyWrite, Page,
    PlanWrite, StoreError, UsageFilter, UsagePage,
};

/// The migrations of the PostgreSQL schema (separate from SQLite's).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The notification channel when the store uses the connection's default schema.
const CHANNEL: &str = "keyward_changes";

/// Longest schema name accepted: the channel name (`keyward_changes_` + schema) must stay
/// within PostgreSQL's 63-byte identifier limit.
const MAX_SCHEMA_LEN: usize = 40;

/// Settings of a [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most connections the store's pool opens (default 10). The change feed uses one more.
    pub max_connections: u32,
    /// How long an operation waits for a pooled connection, or for a new connection, before it
    /// fails (default 5 s).
    pub acquire_timeout: Duration,
    /// Server-side limit on one statement (`statement_timeout`, default 5 s), set on every
    /// connection when it opens.
    pub statement_timeout: Duration,
    /// Use (and create if missing) this schema instead of the connection's default: lower-case
    /// letters, digits and `_`, at most 40 characters, not starting with a digit. It is set as
    /// the `search_path` of every connection, and names the change-feed channel.
    pub schema: Option<String>,
    /// `application_name` of the store's connections (default `keyward`); the change feed's
    /// connection is `<application_name>-feed`, so an operator can tell them apart in
    /// `pg_stat_activity`.
    pub application_name: String,
    /// How long the change feed waits in silence before it checks its connection with a query
    /// (default 10 s): a connection cut off without a FIN would otherwise look like a quiet
    /// store forever.
    pub feed_idle_check: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            schema: None,
            application_name: "keyward".into(),
            feed_idle_check: Duration::from_secs(10),
        }
    }
}

/// The PostgreSQL-backed [`KeyStore`], for several keyward nodes sharing one store.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Where the store is, for messages (no credentials).
    location: String,
    /// How the change feed connects (the store's options, another application_name).
    feed_connect: PgConnectOptions,
    channel: String,
    options: PostgresOptions,
    /// When the server last answered a call (see [`Answered`]).
    answered: Arc<Answered>,
}

/// When the server last answered a call, to tell a full pool from an unreachable server: sqlx
/// reports both as a pool timeout (the pool keeps retrying a refused connection until the
/// acquire timeout). A pool timeout while the server answered other calls within the last
/// acquire timeout is saturation; with no answer in that time it is an outage. (The window is
/// two acquire timeouts: the call that timed out waited one of them, and an answer shortly
/// before it began still says the server was alive. After a server goes silent, its first
/// pool timeouts can therefore read as saturation for one more acquire timeout.)
#[derive(Debug)]
struct Answered {
    since: std::time::Instant,
    /// Milliseconds after `since` of the last answer, plus one (0: never).
    at: AtomicU64,
}

impl Answered {
    fn new() -> Self {
        Self {
            since: std::time::Instant::now(),
            at: AtomicU64::new(0),
        }
    }

    fn note(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.at.store(ms + 1, Ordering::Relaxed);
    }

    fn within(&self, window: Duration) -> bool {
        match self.at.load(Ordering::Relaxed) {
            0 => false,
            at => {
                let ago = self
                    .since
                    .elapsed()
                    .saturating_sub(Duration::from_millis(at - 1));
                ago <= window
            }
        }
    }
}

/// Whether `source` is sqlx's pool timeout.
fn is_pool_timeout(source: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    matches!(
        source.downcast_ref::<sqlx::Error>(),
        Some(sqlx::Error::PoolTimedOut)
    )
}

/// Whether `e` says the connection failed (so a read may be retried on another one), as
/// opposed to the statement failing.
fn is_connection_error(e: &StoreError) -> bool {
    let StoreError::Backend(source) = e else {
        return false;
    };
    match source.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Io(_) | sqlx::Error::Tls(_)) => true,
        Some(sqlx::Error::Database(db)) => db.code().is_some_and(|code| {
            // 08xxx connection exception; 57P01..57P03 the server is shutting down, was
            // restarted or cannot accept connections yet.
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Checks a schema name; it is interpolated into SQL and the channel name, so only a plain
/// lower-case identifier is accepted.
fn check_schema(schema: &str) -> Result<(), String> {
    let plain = !schema.is_empty()
        && schema.len() <= MAX_SCHEMA_LEN
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit()
        && !schema.starts_with("pg_");
    if plain {
        Ok(())
    } else {
        Err(format!(
            "schema {schema:?} must be 1 to {MAX_SCHEMA_LEN} lower-case letters, digits and _, \
             not starting with a digit or pg_"
        ))
    }
}

/// Takes the `schema` query parameter out of a URL (sqlx would ignore it with a warning).
fn split_schema(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut schema = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("schema=") {
            Some(name) => {
                schema = Some(name.to_owned());
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, schema)
}

/// `host:port/database` of a connection, without credentials, for error messages.
fn location(connect: &PgConnectOptions, schema: Option<&str>) -> String {
    let mut text = format!(
        "postgres://{}:{}/{}",
        connect.get_host(),
        connect.get_port(),
        connect.get_database().unwrap_or("")
    );
    if let Some(schema) = schema {
        text.push_str(&format!(" (schema {schema})"));
    }
    text
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`), creates the schema
    /// if `options.schema` names one, and runs the migrations (taking sqlx's migration lock,
    /// so nodes starting together migrate once).
    ///
    /// The URL may carry the schema as a `schema=NAME` query parameter (for example
    /// `postgres://host/db?schema=keyward`); `options.schema`, when set, wins.
    ///
    /// Errors are [`StoreError::Open`] naming the server (never the password) and what failed.
    pub async fn connect(url: &str, mut options: PostgresOptions) -> Result<Self, StoreError> {
        let (url, url_schema) = split_schema(url);
        if options.schema.is_none() {
            options.schema = url_schema;
        }
        let parsed = PgConnectOptions::from_str(&url).map_err(|e| StoreError::Open {
            location: "the --store URL".into(),
            reason: format!("not a PostgreSQL URL: {e}"),
        })?;
        let schema = options.schema.as_deref();
        let open_error = |reason: String| StoreError::Open {
            location: location(&parsed, schema),
            reason,
        };
        if let Some(schema) = schema {
            check_schema(schema).map_err(open_error)?;
        }
        let timeout_ms = options.statement_timeout.as_millis().max(1).to_string();
        let mut settings = vec![("statement_timeout", timeout_ms)];
        if let Some(schema) = schema {
            settings.push(("search_path", schema.to_owned()));
        }
        let base = parsed.clone().options(settings);
        if let Some(schema) = schema {
            create_schema(&parsed, schema, options.acquire_timeout)
                .await
                .map_err(|e| open_error(format!("cannot create schema {schema}: {e}")))?;
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(base.clone().application_name(&options.application_name))
            .await
            .map_err(|e| open_error(format!("cannot connect: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| open_error(format!("cannot migrate the keyward schema: {e}")))?;
        let channel = match schema {
            Some(schema) => format!("{CHANNEL}_{schema}"),
            None => CHANNEL.to_owned(),
        };
        let feed_connect = base.application_name(&format!("{}-feed", options.application_name));
        Ok(Self {
            pool,
            location: location(&parsed, schema),
            feed_connect,
            channel,
            options,
            answered: Arc::new(Answered::new()),
        })
    }

    /// Where the store is, without credentials: `postgres://host:port/database (schema s)`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Runs the migrations and closes: `keyward migrate`.
    pub async fn migrate(url: &str, options: PostgresOptions) -> Result<(), StoreError> {
        let store = Self::connect(url, options).await?;
        store.close().await;
        Ok(())
    }

    /// The notification channel of this store's change feed.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs a read, and runs it once more if the first attempt failed on its connection (see
    /// the module docs: reads are safe to repeat, writes are not).
    async fn read<'a, T, F, Fut>(&'a self, op: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + 'a,
    {
        let result = match op().await {
            Err(e) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "store read failed on its connection; retrying once");
                op().await
            }
            other => other,
        };
        self.observed(result)
    }

    /// A write transaction.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.observed(self.pool.begin().await.map_err(backend))
    }

    /// Notes an answer from the server, or tells a pool timeout's cause (see [`Answered`]).
    fn observed<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.answered.note();
                Ok(value)
            }
            Err(StoreError::Saturated(source))
                if is_pool_timeout(&*source)
                    && !self.answered.within(self.options.acquire_timeout * 2) =>
            {
                Err(StoreError::Backend(source))
            }
            Err(e) => Err(e),
        }
    }

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
        read_balance(&mut conn, key_id, config, now).await
    }
}

/// Creates `schema` if it is missing, on a connection of its own. Two nodes doing this at
/// once can race inside PostgreSQL (`IF NOT EXISTS` is not atomic); the loser's duplicate
/// error means the schema is there, which is all that was asked.
async fn create_schema(
    connect: &PgConnectOptions,
    schema: &str,
    timeout: Duration,
) -> Result<(), sqlx::Error> {
    let mut conn = tokio::time::timeout(timeout, connect.connect())
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    let created = sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
    )))
    .execute(&mut conn)
    .await;
    let _ = conn.close().await;
    match created {
        Err(sqlx::Error::Database(db))
            if db.is_unique_violation() || db.code().as_deref() == Some("42P06") =>
        {
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// Takes the lock that serialises audit-chain appends (and key inserts) across nodes.
async fn lock_writes(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT id FROM write_lock WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Takes the transaction-scoped lock on one key's credit balance.
async fn lock_credits(conn: &mut PgConnection, key_id: &str) -> Result<(), StoreError> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '/credits/' || $1, 0))",
    )
    .bind(key_id)
    .execute(&mut *conn)
    .await
    .map_err(backend)?;
    Ok(())
}

/// Queues `change` for delivery to every node's feed when the caller's transaction commits.
async fn notify(conn: &mut PgConnection, channel: &str, change: &Change) -> Result<(), StoreError> {
    let payload = match change {
        // `@<ms>` carries the write time for the propagation-lag metric; key_ids never hold
        // an `@`, and readers that predate it would take the whole rest as the key_id, which
        // only costs them an eviction that matches nothing plus the staleness backstop.
        Change::Key {
            key_id,
            written_at: Some(at),
        } => format!("key:{key_id}@{}", to_millis(*at)),
        Change::Key {
            key_id,
            written_at: None,
        } => format!("key:{key_id}"),
        Change::Plan { plan_id } => format!("plan:{plan_id}"),
        Change::Credits { key_id } => format!("credits:{key_id}"),
        // Never sent: a resync is what a subscriber concludes from a gap.
        Change::Resync => return Ok(()),
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Reads a notification payload; `None` for one this version does not know.
fn parse_payload(payload: &str) -> Option<Change> {
    let (kind, id) = payload.split_once(':')?;
    let id = id.to_owned();
    match kind {
        "key" => Some(match id.split_once('@') {
            Some((key_id, ms)) => Change::Key {
                key_id: key_id.to_owned(),
                written_at: ms.parse().ok().and_then(|ms| from_millis(ms).ok()),
            },
            None => Change::Key {
                key_id: id,
                written_at: None,
            },
        }),
        "plan" => Some(Change::Plan { plan_id: id }),
        "credits" => Some(Change::Credits { key_id: id }),
        _ => None,
    }
}

/// The balance at `now`, refilled if a scheduled refill passed (not yet written back).
async fn read_balance(
    conn: &mut PgConnection,
    key_id: &str,
    config: &QuotaConfig,
    now: OffsetDateTime,
) -> Result<Balance, StoreError> {
    let row = sqlx::query("SELECT remaining, period FROM quota_balances WHERE key_id = $1")
        .bind(key_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(backend)?;
    let stored = match row {
        Some(row) => Some(Balance {
            remaining: u64::try_from(row.try_get::<i64, _>("remaining").map_err(backend)?)
                .unwrap_or(0),
            period: opt_from_millis(row.try_get("period").map_err(backend)?)?,
        }),
        None => None,
    };
    Ok(current_balance(config, stored, now))
}

async fn write_balance(
    conn: &mut PgConnection,
    key_id: &str,
    balance: Balance,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO quota_balances (key_id, remaining, period) VALUES ($1, $2, $3)
         ON CONFLICT (key_id) DO UPDATE SET remaining = excluded.remaining, period = excluded.period",
    )
    .bind(key_id)
    .bind(i64::try_from(balance.remaining).unwrap_or(i64::MAX))
    .bind(balance.period.map(to_millis))
    .execute(&mut *conn)
    .await
    .map_err(backend)?;
    Ok(())
}

/// Appends `draft` to the chain inside the caller's transaction, which holds `lock_writes`.
async fn append_in(conn: &mut PgConnection, draft: AuditDraft) -> Result<i64, StoreError> {
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await
        .map_err(backend)?;
    let (seq, prev_hash) = match last {
        Some(row) => (
            row.try_get::<i64, _>("seq").map_err(backend)? + 1,
            row.try_get::<String, _>("hash").map_err(backend)?,
        ),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let event = draft.into_event(seq, &prev_hash);
    sqlx::query(
        "INSERT INTO audit_log (seq, time, actor, action, target, summary, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(event.seq)
    .bind(to_millis(event.time))
    .bind(&event.actor)
    .bind(&event.action)
    .bind(&event.target)
    .bind(&event.summary_json)
    .bind(&event.prev_hash)
    .bind(&event.hash)
    .execute(&mut *conn)
    .await
    .map_err(backend)?;
    Ok(seq)
}

/// The last-root-key guard ([`check_root_guard`]) over the root keys as this transaction
/// sees them; the caller holds the write lock, so no other write can change them meanwhile.
async fn root_guard(
    conn: &mut PgConnection,
    after: &KeyRecord,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let rows = sqlx::query("SELECT * FROM keys WHERE kind = 'root' AND revoked_at IS NULL")
        .fetch_all(&mut *conn)
        .await
        .map_err(backend)?;
    let roots = rows
        .iter()
        .map(record_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let before = roots.iter().find(|k| k.key_id == after.key_id);
    check_root_guard(before, after, &roots, now)
}

/// Applies a key write, its audit event and its notification inside the caller's
/// transaction, which holds `lock_writes`.
async fn write_key_in(
    conn: &mut PgConnection,
    channel: &str,
    write: KeyWrite,
) -> Result<i64, StoreError> {
    let KeyWrite {
        record: r,
        expected_version,
        new_secret,
        secret_ends,
        audit,
    } = write;
    let permissions: Vec<&str> = r.permissions.iter().map(Permission::as_str).collect();
    let routes: Vec<&str> = r.routes.iter().map(RoutePattern::as_str).collect();
    let sql = match expected_version {
        None => {
            "INSERT INTO keys (key_id, kind, owner, name, tenant, environment, purpose, tags, meta, permissions, routes,
                expires_at, enabled, created_at, created_by, updated_at, revoked_at, revoked_reason, rotated_at, version, policy)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $22
             WHERE $21::bigint IS NULL"
        }
        Some(_) => {
            "UPDATE keys SET kind = $2, owner = $3, name = $4, tenant = $5, environment = $6, purpose = $7, tags = $8,
                meta = $9, permissions = $10, routes = $11, expires_at = $12, enabled = $13, created_at = $14,
                created_by = $15, updated_at = $16, revoked_at = $17, revoked_reason = $18, rotated_at = $19, version = $20,
                policy = $22
             WHERE key_id = $1 AND version = $21"
        }
    };
    if r.kind == KeyKind::Root && expected_version.is_some() {
        root_guard(conn, &r, audit.time).await?;
    }
    if let Some(plan) = &r.policy.plan {
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM plans WHERE plan_id = $1")
            .bind(plan)
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?;
        if exists.is_none() {
            return Err(StoreError::PlanMissing(plan.clone()));
        }
    }
    let result = sqlx::query(sql)
        .bind(&r.key_id)
        .bind(r.kind.as_str())
        .bind(&r.owner)
        .bind(&r.name)
        .bind(&r.tenant)
        .bind(&r.environment)
        .bind(&r.purpose)
        .bind(json_text(&r.tags))
        .bind(json_text(&r.meta))
        .bind(json_text(&permissions))
        .bind(json_text(&routes))
        .bind(r.expires_at.map(to_millis))
        .bind(r.enabled)
        .bind(to_millis(r.created_at))
        .bind(&r.created_by)
        .bind(to_millis(r.updated_at))
        .bind(r.revoked_at.map(to_millis))
        .bind(&r.revoked_reason)
        .bind(r.rotated_at.map(to_millis))
        .bind(r.version)
        .bind(expected_version)
        .bind(json_text(&r.policy))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    if result.rows_affected() != 1 {
        return Err(StoreError::Conflict);
    }
    if let Some(s) = new_secret {
        sqlx::query(
            "INSERT INTO secrets (hash, hash_version, key_id, start, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(s.hash.to_hex())
        .bind(s.hash.version())
        .bind(&r.key_id)
        .bind(&s.start)
        .bind(to_millis(s.created_at))
        .bind(s.expires_at.map(to_millis))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }
    for (hash, ends) in secret_ends {
        sqlx::query("UPDATE secrets SET expires_at = $1 WHERE hash = $2 AND key_id = $3")
            .bind(to_millis(ends))
            .bind(hash.to_hex())
            .bind(&r.key_id)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
    }
    let written_at = Some(audit.time);
    let seq = append_in(conn, audit).await?;
    let change = Change::Key {
        key_id: r.key_id,
        written_at,
    };
    notify(conn, channel, &change).await?;
    Ok(seq)
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
        let mut tx = self.begin().await?;
        lock_writes(&mut tx).await?;
        let seq = write_key_in(&mut tx, &self.channel, write).await?;
        tx.commit().await.map_err(backend)?;
        Ok(seq)
    }

    async fn create_first_root_key(&self, write: KeyWrite) -> Result<Option<i64>, StoreError> {
        // Under the write lock no other node can insert a root key between the count and the
        // insert below.
        let mut tx = self.begin().await?;
        lock_writes(&mut tx).await?;
        let roots: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keys WHERE kind = 'root'")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if roots > 0 {
            return Ok(None);
        }
        let seq = write_key_in(&mut tx, &self.channel, write).await?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(seq))
    }

    async fn append_audit(&self, draft: AuditDraft) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        lock_writes(&mut tx).await?;
        let seq = append_in(&mut tx, draft).await?;
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
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keys WHERE kind = 'root'")
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
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
        let PlanWrite {
            plan: p,
            expected_version,
            delete,
            audit,
        } = write;
        let mut tx = self.begin().await?;
        lock_writes(&mut tx).await?;
        let permissions: Vec<&str> = p.permissions.iter().map(Permission::as_str).collect();
        let result = if delete {
            // Key writes take the same lock, so no key can start following the plan between
            // this count and the delete.
            let in_use: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM keys WHERE (policy::jsonb ->> 'plan') = $1 AND revoked_at IS NULL",
            )
            .bind(&p.plan_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
            if in_use > 0 {
                return Err(StoreError::Conflict);
            }
            sqlx::query("DELETE FROM plans WHERE plan_id = $1 AND version = $2")
                .bind(&p.plan_id)
                .bind(expected_version)
                .execute(&mut *tx)
                .await
        } else if let Some(expected) = expected_version {
            sqlx::query(
                "UPDATE plans SET limits = $2, quota = $3, permissions = $4, version = $5, updated_at = $6
                 WHERE plan_id = $1 AND version = $7",
            )
            .bind(&p.plan_id)
            .bind(json_text(&p.limits))
            .bind(p.quota.as_ref().map(json_text))
            .bind(json_text(&permissions))
            .bind(p.version)
            .bind(to_millis(p.updated_at))
            .bind(expected)
            .execute(&mut *tx)
            .await
        } else {
            sqlx::query(
                "INSERT INTO plans (plan_id, limits, quota, permissions, version, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&p.plan_id)
            .bind(json_text(&p.limits))
            .bind(p.quota.as_ref().map(json_text))
            .bind(json_text(&permissions))
            .bind(p.version)
            .bind(to_millis(p.created_at))
            .bind(to_millis(p.updated_at))
            .execute(&mut *tx)
            .await
        }
        .map_err(backend)?;
        if result.rows_affected() != 1 {
            return Err(StoreError::Conflict);
        }
        let seq = append_in(&mut tx, audit).await?;
        notify(&mut tx, &self.channel, &Change::Plan { plan_id: p.plan_id }).await?;
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
        let balance = read_balance(&mut tx, key_id, config, now).await?;
        let granted = want.min(balance.remaining);
        let after = Balance {
            remaining: balance.remaining - granted,
            period: balance.period,
        };
        write_balance(&mut tx, key_id, after).await?;
        tx.commit().await.map_err(backend)?;
        Ok((granted, after))
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
        let before = read_balance(&mut tx, key_id, config, now).await?;
        let returned = before.remaining.saturating_add(unspent);
        let remaining = match op {
            CreditOp::Set(n) => n,
            CreditOp::Increase(n) => returned.saturating_add(n),
            CreditOp::Decrease(n) => returned.saturating_sub(n),
        };
        let after = Balance {
            remaining,
            period: before.period,
        };
        write_balance(&mut tx, key_id, after).await?;
        let mut audit = audit;
        if let Some(summary) = audit.summary.as_object_mut() {
            summary.insert("before".into(), serde_json::Value::from(returned));
            summary.insert("after".into(), serde_json::Value::from(remaining));
        }
        append_in(&mut tx, audit).await?;
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
        let balance = read_balance(&mut tx, key_id, config, now).await?;
        if balance.period == period {
            let after = Balance {
                remaining: balance.remaining.saturating_add(amount),
                period,
            };
            write_balance(&mut tx, key_id, after).await?;
        }
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

/// A [`ChangeFeed`] on PostgreSQL `LISTEN`, over a connection of its own.
///
/// Notifications are not queued for a disconnected listener, so a gap is reported instead:
/// when the connection is lost, [`next`](ChangeFeed::next) returns an error for as long as
/// the server cannot be reached, and once it listens again the first item is
/// [`Change::Resync`] (nothing committed in between can be known). sqlx's own reconnection is
/// off (`eager_reconnect(false)`): `try_recv` returning `Ok(None)` means the connection is
/// gone, and this feed drops the listener and builds a new one, so no reconnection (after a
/// cancelled call, or under a query) can happen without a resync. A connection that falls silent
/// is checked with a query after `feed_idle_check`, so a half-open connection becomes an
/// error rather than a feed that never speaks again.
pub struct PgChangeFeed {
    connect: PgConnectOptions,
    channel: String,
    timeout: Duration,
    idle_check: Duration,
    listener: Option<PgListener>,
    /// A gap was seen: the next successful item is `Resync`.
    resync_due: bool,
}

impl PgChangeFeed {
    async fn subscribe(
        connect: PgConnectOptions,
        channel: String,
        timeout: Duration,
        idle_check: Duration,
    ) -> Result<Self, StoreError> {
        let mut feed = Self {
            connect,
            channel,
            timeout,
            idle_check,
            listener: None,
            resync_due: false,
        };
        feed.listener = Some(feed.listen().await?);
        Ok(feed)
    }

    /// Opens a connection that listens on the channel.
    async fn listen(&self) -> Result<PgListener, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(self.timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(self.connect.clone());
        let mut listener = PgListener::connect_with(&pool).await.map_err(backend)?;
        // Only this feed uses the pool; a close of it is not a reason to stop waiting.
        listener.ignore_pool_close_event(true);
        // sqlx would otherwise reconnect inside `try_recv` before reporting the loss, and a
        // cancelled `try_recv` (the idle check's timeout) or a query on the listener would
        // then reconnect silently, hiding the gap. This feed reconnects itself instead.
        listener.eager_reconnect(false);
        listener.listen(&self.channel).await.map_err(backend)?;
        Ok(listener)
    }

    /// Forgets the connection after an error; the next call reconnects and starts with a
    /// resync.
    fn broken(&mut self, e: StoreError) -> StoreError {
        self.listener = None;
        self.resync_due = true;
        e
    }
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn next(&mut self) -> Result<Change, StoreError> {
        if self.listener.is_none() {
            let listener = match self.listen().await {
                Ok(listener) => listener,
                Err(e) => return Err(self.broken(e)),
            };
            self.listener = Some(listener);
        }
        if self.resync_due {
            self.resync_due = false;
            return Ok(Change::Resync);
        }
        loop {
            let Some(listener) = self.listener.as_mut() else {
                // Unreachable: set above. Report it as a gap rather than panic.
                self.resync_due = true;
                return Err(StoreError::Backend("change feed lost its listener".into()));
            };
            match tokio::time::timeout(self.idle_check, listener.try_recv()).await {
                Ok(Ok(Some(notification))) => match parse_payload(notification.payload()) {
                    Some(change) => return Ok(change),
                    None => {
                        tracing::warn!(
                            payload = notification.payload(),
                            "unknown change notification; resyncing"
                        );
                        return Ok(Change::Resync);
                    }
                },
                // The connection was lost (and, with eager reconnect off, not replaced):
                // report the gap; the next call listens on a new connection and resyncs.
                Ok(Ok(None)) => {
                    return Err(self.broken(StoreError::Backend(
                        "the change feed's connection was lost".into(),
                    )));
                }
                Ok(Err(e)) => return Err(self.broken(backend(e))),
                Err(_silent) => {
                    // Nothing for a while: make sure the connection is still there. try_recv
                    // is cancel-safe (sqlx reads whole messages only).
                    let alive = tokio::time::timeout(
                        self.timeout,
                        sqlx::query("SELECT 1").execute(&mut *listener),
                    )
                    .await;
                    match alive {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => return Err(self.broken(backend(e))),
                        Err(_) => {
                            return Err(self.broken(StoreError::Backend(
                                "the change feed's connection did not answer".into(),
                            )));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
