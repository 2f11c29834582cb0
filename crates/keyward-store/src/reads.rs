//! Every read both SQL backends make, defined once over [`Conn`] (see `statement.rs`): the
//! caller hands in a pooled connection, and on PostgreSQL retries the whole read once if that
//! connection failed. Usage reads are in `usage.rs`.

use keyward_core::audit::AuditEvent;
use keyward_core::key::KeyHash;
use keyward_core::record::{KeyRecord, KeyStatus, Plan};
use time::OffsetDateTime;

use crate::dialect::Dialect;
use crate::sql::{
    Columns, event_from_row, json_text, plan_from_row, record_from_row, secret_from_row, to_millis,
};
use crate::statement::{Conn, Statement};
use crate::{AuditFilter, FoundKey, KeyFilter, Page, StoreError};

/// Fills in each record's secrets live at `now`.
async fn with_secrets<C: Conn>(
    conn: &mut C,
    mut records: Vec<KeyRecord>,
    now: OffsetDateTime,
) -> Result<Vec<KeyRecord>, StoreError> {
    if records.is_empty() {
        return Ok(records);
    }
    let ids: Vec<&str> = records.iter().map(|r| r.key_id.as_str()).collect();
    let rows = conn
        .fetch_all(
            Statement::new(C::Dialect::SECRETS_OF_KEYS)
                .bind(json_text(&ids))
                .bind(to_millis(now)),
        )
        .await?;
    let secrets = rows
        .iter()
        .map(|row| Ok((row.text("key_id")?, secret_from_row(row)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    for record in &mut records {
        record.secrets = secrets
            .iter()
            .filter(|(id, _)| *id == record.key_id)
            .map(|(_, s)| s.clone())
            .collect();
    }
    Ok(records)
}

/// The key owning the secret with `hash`, with its secrets live at `now`.
pub(crate) async fn find_by_hash(
    conn: &mut impl Conn,
    hash: &KeyHash,
    now: OffsetDateTime,
) -> Result<Option<FoundKey>, StoreError> {
    let row = conn
        .fetch_optional(
            Statement::new(
                "SELECT key_id, hash, hash_version, start, created_at, expires_at FROM secrets
                 WHERE hash = $1 AND hash_version = $2",
            )
            .bind(hash.to_hex())
            .bind(hash.version()),
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let secret = secret_from_row(&row)?;
    let key_id = row.text("key_id")?;
    Ok(get_key(conn, &key_id, now)
        .await?
        .map(|record| FoundKey { record, secret }))
}

/// A key by key_id, with its secrets live at `now`.
pub(crate) async fn get_key(
    conn: &mut impl Conn,
    key_id: &str,
    now: OffsetDateTime,
) -> Result<Option<KeyRecord>, StoreError> {
    let row = conn
        .fetch_optional(Statement::new("SELECT * FROM keys WHERE key_id = $1").bind(key_id))
        .await?;
    match row {
        Some(row) => Ok(with_secrets(conn, vec![record_from_row(&row)?], now)
            .await?
            .pop()),
        None => Ok(None),
    }
}

/// One page of keys of kind `$1` after seq `$2`, filtered by owner `$3`, tenant `$4` and
/// status `$5` at `$6`, at most `$7` (an index seek on (kind, seq): migration 0004).
/// (`CAST(... AS TEXT)` gives PostgreSQL a parameter's type where it is only tested for null;
/// on SQLite it changes nothing.)
pub(crate) const LIST_KEYS: &str = "SELECT * FROM keys WHERE kind = $1 AND seq > $2
                   AND (CAST($3 AS TEXT) IS NULL OR owner = $3)
                   AND (CAST($4 AS TEXT) IS NULL OR tenant = $4)
                   AND (CAST($5 AS TEXT) IS NULL
                        OR ($5 = 'revoked' AND revoked_at IS NOT NULL)
                        OR ($5 = 'expired' AND revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= $6)
                        OR ($5 = 'active' AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $6)))
                 ORDER BY seq LIMIT $7";

/// A page of keys, oldest first.
pub(crate) async fn list_keys(
    conn: &mut impl Conn,
    filter: &KeyFilter,
) -> Result<Page<KeyRecord>, StoreError> {
    let limit = i64::from(filter.limit.max(1));
    let rows = conn
        .fetch_all(
            Statement::new(LIST_KEYS)
                .bind(filter.kind.as_str())
                .bind(filter.after.unwrap_or(0))
                .bind(&filter.owner)
                .bind(&filter.tenant)
                .bind(filter.status.map(KeyStatus::as_str))
                .bind(to_millis(filter.now))
                .bind(limit + 1),
        )
        .await?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next_cursor = match rows.last() {
        Some(last) if more => Some(last.int("seq")?),
        _ => None,
    };
    let records = rows
        .iter()
        .map(record_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page {
        items: with_secrets(conn, records, filter.now).await?,
        next_cursor,
    })
}

/// A page of audit events in sequence order.
pub(crate) async fn list_audit(
    conn: &mut impl Conn,
    filter: &AuditFilter,
) -> Result<Page<AuditEvent>, StoreError> {
    let limit = i64::from(filter.limit.max(1));
    let rows = conn
        .fetch_all(
            Statement::new(
                "SELECT * FROM audit_log WHERE seq > $1
                   AND (CAST($2 AS TEXT) IS NULL OR target = $2)
                   AND (CAST($3 AS TEXT) IS NULL OR action = $3)
                   AND (CAST($5 AS TEXT) IS NULL
                        OR EXISTS (SELECT 1 FROM keys k WHERE k.key_id = audit_log.target AND k.tenant = $5)
                        OR EXISTS (SELECT 1 FROM keys k WHERE k.key_id = audit_log.actor AND k.tenant = $5))
                 ORDER BY seq LIMIT $4",
            )
            .bind(filter.after.unwrap_or(0))
            .bind(&filter.target)
            .bind(&filter.action)
            .bind(limit + 1)
            .bind(&filter.tenant),
        )
        .await?;
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

/// The store's change head: the latest audit sequence number (0 when empty).
pub(crate) async fn change_head(conn: &mut impl Conn) -> Result<i64, StoreError> {
    let row = conn
        .fetch_optional(Statement::new("SELECT max(seq) AS head FROM audit_log"))
        .await?;
    Ok(match row {
        Some(row) => row.opt_int("head")?.unwrap_or(0),
        None => 0,
    })
}

/// A plan by name.
pub(crate) async fn get_plan(
    conn: &mut impl Conn,
    plan_id: &str,
) -> Result<Option<Plan>, StoreError> {
    let row = conn
        .fetch_optional(Statement::new("SELECT * FROM plans WHERE plan_id = $1").bind(plan_id))
        .await?;
    row.as_ref().map(plan_from_row).transpose()
}

/// Every plan, by name.
pub(crate) async fn list_plans(conn: &mut impl Conn) -> Result<Vec<Plan>, StoreError> {
    let rows = conn
        .fetch_all(Statement::new("SELECT * FROM plans ORDER BY plan_id"))
        .await?;
    rows.iter().map(plan_from_row).collect()
}
