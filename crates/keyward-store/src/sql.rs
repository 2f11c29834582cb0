//! What the two SQL backends share. Both store the same columns with the same values (times
//! as Unix milliseconds, JSON as text; see `migrations/postgres/0001_init.sql`), so one set of
//! conversions and row decoders serves both: a backend only says how to read a column.

use keyward_core::audit::{AuditEvent, unix_millis};
use keyward_core::key::KeyHash;
use keyward_core::permission::Permission;
use keyward_core::record::{KeyKind, KeyRecord, Plan, SecretInfo};
use keyward_core::route::RoutePattern;
use serde_json::Value;
use time::OffsetDateTime;

use crate::StoreError;

/// A backend error as a [`StoreError`]: unique violations are [`StoreError::Duplicate`], and
/// a full pool or a server shedding load is [`StoreError::Saturated`], not an outage (a flood
/// of lookups must not make a node believe its store is down). A pool timeout is ambiguous on
/// PostgreSQL (the pool also times out while it cannot connect): `postgres.rs` turns it back
/// into [`StoreError::Backend`] when the server has not answered anything lately.
pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate,
        sqlx::Error::PoolTimedOut => StoreError::Saturated(Box::new(e)),
        // PostgreSQL: too_many_connections, and query_canceled (a statement timeout).
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|code| matches!(&*code, "53300" | "57014")) =>
        {
            StoreError::Saturated(Box::new(e))
        }
        _ => StoreError::Backend(Box::new(e)),
    }
}

/// Whether `record` keeps root keys manageable at `now`: a root key without a tenant that is
/// enabled, not revoked, not expired, and grants `root.manage`. A tenant-scoped root key does
/// not count: it cannot mint an unscoped root key, so it cannot recover the installation.
pub(crate) fn manages_root(record: &KeyRecord, now: OffsetDateTime) -> bool {
    record.kind == KeyKind::Root
        && record.tenant.is_none()
        && record.enabled
        && record.revoked_at.is_none()
        && record.expires_at.is_none_or(|at| at > now)
        && keyward_core::permission::granted(&record.permissions, "root.manage")
}

/// The last-root-key guard, run by both backends inside a key write's transaction (under the
/// write lock, so two writes cannot both see the other's key as the one that remains):
/// a write that turns a key that [`manages_root`] into one that does not is refused with
/// [`StoreError::LastRootKey`] unless one of `others` (every other unrevoked root key, read
/// in the same transaction) still manages root keys. `now` is the write's audit time.
pub(crate) fn check_root_guard(
    before: Option<&KeyRecord>,
    after: &KeyRecord,
    others: &[KeyRecord],
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let loses_one = before.is_some_and(|b| manages_root(b, now)) && !manages_root(after, now);
    if loses_one
        && !others
            .iter()
            .any(|r| r.key_id != after.key_id && manages_root(r, now))
    {
        return Err(StoreError::LastRootKey(after.key_id.clone()));
    }
    Ok(())
}

pub(crate) fn to_millis(t: OffsetDateTime) -> i64 {
    unix_millis(t)
}

pub(crate) fn from_millis(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| StoreError::Corrupt(format!("timestamp {ms} is out of range")))
}

pub(crate) fn opt_from_millis(ms: Option<i64>) -> Result<Option<OffsetDateTime>, StoreError> {
    ms.map(from_millis).transpose()
}

pub(crate) fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> String {
    // Serializing plain strings and maps cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    column: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("column {column}: {e}")))
}

/// Reading a row's columns by name, for any backend whose rows decode these types.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, column: &str) -> Result<bool, StoreError>;
}

impl<R> Columns for R
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn text(&self, column: &str) -> Result<String, StoreError> {
        self.try_get(column).map_err(backend)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        self.try_get(column).map_err(backend)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        self.try_get(column).map_err(backend)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        self.try_get(column).map_err(backend)
    }
    fn flag(&self, column: &str) -> Result<bool, StoreError> {
        self.try_get(column).map_err(backend)
    }
}

fn permissions(column: &str, text: &str) -> Result<Vec<Permission>, StoreError> {
    parse_json::<Vec<String>>(column, text)?
        .iter()
        .map(|p| Permission::new(p).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect()
}

pub(crate) fn secret_from_row(row: &impl Columns) -> Result<SecretInfo, StoreError> {
    Ok(SecretInfo {
        hash: KeyHash::from_stored(row.int("hash_version")?, &row.text("hash")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        start: row.text("start")?,
        created_at: from_millis(row.int("created_at")?)?,
        expires_at: opt_from_millis(row.opt_int("expires_at")?)?,
    })
}

pub(crate) fn record_from_row(row: &impl Columns) -> Result<KeyRecord, StoreError> {
    let opt_time = |c: &str| opt_from_millis(row.opt_int(c)?);
    let kind = row.text("kind")?;
    let routes: Vec<String> = parse_json("routes", &row.text("routes")?)?;
    Ok(KeyRecord {
        key_id: row.text("key_id")?,
        kind: KeyKind::from_stored(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown key kind {kind:?}")))?,
        owner: row.text("owner")?,
        name: row.opt_text("name")?,
        tenant: row.opt_text("tenant")?,
        environment: row.text("environment")?,
        purpose: row.opt_text("purpose")?,
        tags: parse_json("tags", &row.text("tags")?)?,
        meta: parse_json("meta", &row.text("meta")?)?,
        permissions: permissions("permissions", &row.text("permissions")?)?,
        // A pattern stored under older, looser rules still loads (and matches nothing).
        routes: routes
            .iter()
            .map(|r| RoutePattern::from_stored(r))
            .collect(),
        expires_at: opt_time("expires_at")?,
        enabled: row.flag("enabled")?,
        created_at: from_millis(row.int("created_at")?)?,
        created_by: row.opt_text("created_by")?,
        updated_at: from_millis(row.int("updated_at")?)?,
        last_used_at: opt_time("last_used_at")?,
        revoked_at: opt_time("revoked_at")?,
        revoked_reason: row.opt_text("revoked_reason")?,
        rotated_at: opt_time("rotated_at")?,
        version: row.int("version")?,
        secrets: Vec::new(),
        policy: parse_json("policy", &row.text("policy")?)?,
    })
}

pub(crate) fn plan_from_row(row: &impl Columns) -> Result<Plan, StoreError> {
    Ok(Plan {
        plan_id: row.text("plan_id")?,
        limits: parse_json("limits", &row.text("limits")?)?,
        quota: row
            .opt_text("quota")?
            .as_deref()
            .map(|q| parse_json("quota", q))
            .transpose()?,
        permissions: permissions("permissions", &row.text("permissions")?)?,
        version: row.int("version")?,
        created_at: from_millis(row.int("created_at")?)?,
        updated_at: from_millis(row.int("updated_at")?)?,
    })
}

pub(crate) fn event_from_row(row: &impl Columns) -> Result<AuditEvent, StoreError> {
    let summary = row.text("summary")?;
    Ok(AuditEvent {
        seq: row.int("seq")?,
        time: from_millis(row.int("time")?)?,
        actor: row.opt_text("actor")?,
        action: row.text("action")?,
        target: row.opt_text("target")?,
        // An unparsable summary is shown as null; the chain check, which hashes the stored
        // text, is what reports it.
        summary: serde_json::from_str::<Value>(&summary).unwrap_or(Value::Null),
        summary_json: summary,
        prev_hash: row.text("prev_hash")?,
        hash: row.text("hash")?,
    })
}
