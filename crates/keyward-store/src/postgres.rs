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
//! balance was adjusted through the API). See [`PgChangeFeed`](feed::PgChangeFeed) for how a gap is reported.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::sql::backend;
use crate::{Change, StoreError};

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

    /// A write transaction holding `locks` (see [`Locks`]).
    async fn write_tx(
        &self,
        locks: Locks<'_>,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let mut tx = self.observed(self.pool.begin().await.map_err(backend))?;
        match locks {
            Locks::Chain => lock_writes(&mut tx).await?,
            Locks::Credits(key_id) => lock_credits(&mut tx, key_id).await?,
            Locks::ChainThenCredits(key_id) => {
                lock_writes(&mut tx).await?;
                lock_credits(&mut tx, key_id).await?;
            }
        }
        Ok(tx)
    }

    /// Queues `change` on the feed (delivered only if the transaction commits) and commits.
    async fn commit(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        change: Option<&Change>,
    ) -> Result<(), StoreError> {
        if let Some(change) = change {
            feed::notify(&mut tx, &self.channel, change).await?;
        }
        tx.commit().await.map_err(backend)
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

/// The locks a write transaction takes before its statements.
///
/// The chain lock serialises audit-chain appends (and so key, plan and credit-adjusting
/// writes) across nodes; a credit lock serialises one key's balance. A write that needs both
/// takes the chain lock first, and none takes them the other way round, so two writes cannot
/// deadlock.
#[derive(Debug, Clone, Copy)]
enum Locks<'a> {
    /// The chain lock only.
    Chain,
    /// One key's credit lock only.
    Credits(&'a str),
    /// The chain lock, then one key's credit lock.
    ChainThenCredits(&'a str),
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

mod feed;
mod key_store;

#[cfg(test)]
mod tests;
