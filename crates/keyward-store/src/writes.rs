//! Every write both SQL backends make, defined once. Each function runs inside the caller's
//! transaction, which already holds the backend's write lock (`BEGIN IMMEDIATE` on SQLite;
//! the `write_lock` row, and for credits the key's advisory lock, on PostgreSQL), and leaves
//! committing, and on PostgreSQL notifying the change feed, to the caller.
//!
//! A key column is named for writing in one place, [`key_columns`]; the insert and the update
//! of a key are both built from it.

use keyward_core::audit::{AuditDraft, GENESIS_HASH};
use keyward_core::permission::Permission;
use keyward_core::quota::{Balance, QuotaConfig, current_balance};
use keyward_core::record::{KeyKind, KeyRecord};
use keyward_core::route::RoutePattern;
use time::OffsetDateTime;

use crate::dialect::Dialect;
use crate::sql::{
    Columns, check_root_guard, json_text, opt_from_millis, record_from_row, to_millis,
};
use crate::statement::{Conn, Statement, Value};
use crate::{CreditOp, KeyWrite, PlanWrite, StoreError};

/// The columns of `keys` a key write sets, each with its value in `r`, in placeholder order.
/// `key_id` comes first: an insert sets it, an update finds the row by it. `seq` and
/// `last_used_at` are not here: the database assigns the one, `touch_last_used` writes the
/// other.
fn key_columns(r: &KeyRecord) -> Vec<(&'static str, Value)> {
    let permissions: Vec<&str> = r.permissions.iter().map(Permission::as_str).collect();
    let routes: Vec<&str> = r.routes.iter().map(RoutePattern::as_str).collect();
    vec![
        ("key_id", (&r.key_id).into()),
        ("kind", r.kind.as_str().into()),
        ("owner", (&r.owner).into()),
        ("name", (&r.name).into()),
        ("tenant", (&r.tenant).into()),
        ("environment", (&r.environment).into()),
        ("purpose", (&r.purpose).into()),
        ("tags", json_text(&r.tags).into()),
        ("meta", json_text(&r.meta).into()),
        ("permissions", json_text(&permissions).into()),
        ("routes", json_text(&routes).into()),
        ("expires_at", r.expires_at.map(to_millis).into()),
        ("enabled", r.enabled.into()),
        ("created_at", to_millis(r.created_at).into()),
        ("created_by", (&r.created_by).into()),
        ("updated_at", to_millis(r.updated_at).into()),
        ("revoked_at", r.revoked_at.map(to_millis).into()),
        ("revoked_reason", (&r.revoked_reason).into()),
        ("rotated_at", r.rotated_at.map(to_millis).into()),
        ("version", r.version.into()),
        ("policy", json_text(&r.policy).into()),
    ]
}

/// The insert of a new key (`expected_version` `None`), or the update of the row at
/// `expected_version`, built from [`key_columns`].
fn key_statement(r: &KeyRecord, expected_version: Option<i64>) -> Statement {
    let columns = key_columns(r);
    let sql = match expected_version {
        None => {
            let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
            let places: Vec<String> = (1..=columns.len()).map(|n| format!("${n}")).collect();
            format!(
                "INSERT INTO keys ({}) VALUES ({})",
                names.join(", "),
                places.join(", ")
            )
        }
        Some(_) => {
            // $1 is key_id (the row to update); the expected version follows the columns.
            let sets: Vec<String> = columns
                .iter()
                .enumerate()
                .skip(1)
                .map(|(i, (name, _))| format!("{name} = ${}", i + 1))
                .collect();
            format!(
                "UPDATE keys SET {} WHERE key_id = $1 AND version = ${}",
                sets.join(", "),
                columns.len() + 1
            )
        }
    };
    let statement = Statement::assembled(sql).bind_all(columns.into_iter().map(|(_, value)| value));
    match expected_version {
        Some(version) => statement.bind(version),
        None => statement,
    }
}

/// Runs a `SELECT COUNT(*) AS n ...` statement.
async fn count(conn: &mut impl Conn, statement: Statement) -> Result<i64, StoreError> {
    match conn.fetch_optional(statement).await? {
        Some(row) => row.int("n"),
        None => Ok(0),
    }
}

/// Number of root keys ever created (revoked ones included).
pub(crate) async fn count_root_keys(conn: &mut impl Conn) -> Result<i64, StoreError> {
    count(
        conn,
        Statement::new("SELECT COUNT(*) AS n FROM keys WHERE kind = 'root'"),
    )
    .await
}

/// Appends `draft` to the audit chain; returns its sequence number.
pub(crate) async fn append_audit(
    conn: &mut impl Conn,
    draft: AuditDraft,
) -> Result<i64, StoreError> {
    let last = conn
        .fetch_optional(Statement::new(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
        ))
        .await?;
    let (seq, prev_hash) = match last {
        Some(row) => (row.int("seq")? + 1, row.text("hash")?),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let event = draft.into_event(seq, &prev_hash);
    conn.execute(
        Statement::new(
            "INSERT INTO audit_log (seq, time, actor, action, target, summary, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(event.seq)
        .bind(to_millis(event.time))
        .bind(event.actor)
        .bind(event.action)
        .bind(event.target)
        .bind(event.summary_json)
        .bind(event.prev_hash)
        .bind(event.hash),
    )
    .await?;
    Ok(seq)
}

/// The last-root-key guard ([`check_root_guard`]) over the root keys as this transaction
/// sees them; the caller holds the write lock, so no other write can change them meanwhile.
async fn root_guard(
    conn: &mut impl Conn,
    after: &KeyRecord,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let rows = conn
        .fetch_all(Statement::new(
            "SELECT * FROM keys WHERE kind = 'root' AND revoked_at IS NULL",
        ))
        .await?;
    let roots = rows
        .iter()
        .map(record_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let before = roots.iter().find(|k| k.key_id == after.key_id);
    check_root_guard(before, after, &roots, now)
}

/// Applies a key write and appends its audit event; returns the event's sequence number.
pub(crate) async fn write_key(conn: &mut impl Conn, write: KeyWrite) -> Result<i64, StoreError> {
    let KeyWrite {
        record: r,
        expected_version,
        new_secret,
        secret_ends,
        audit,
    } = write;
    if r.kind == KeyKind::Root && expected_version.is_some() {
        root_guard(conn, &r, audit.time).await?;
    }
    if let Some(plan) = &r.policy.plan {
        let exists = conn
            .fetch_optional(Statement::new("SELECT 1 FROM plans WHERE plan_id = $1").bind(plan))
            .await?;
        if exists.is_none() {
            return Err(StoreError::PlanMissing(plan.clone()));
        }
    }
    if conn.execute(key_statement(&r, expected_version)).await? != 1 {
        return Err(StoreError::Conflict);
    }
    if let Some(s) = new_secret {
        conn.execute(
            Statement::new(
                "INSERT INTO secrets (hash, hash_version, key_id, start, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(s.hash.to_hex())
            .bind(s.hash.version())
            .bind(&r.key_id)
            .bind(s.start)
            .bind(to_millis(s.created_at))
            .bind(s.expires_at.map(to_millis)),
        )
        .await?;
    }
    for (hash, ends) in secret_ends {
        conn.execute(
            Statement::new("UPDATE secrets SET expires_at = $1 WHERE hash = $2 AND key_id = $3")
                .bind(to_millis(ends))
                .bind(hash.to_hex())
                .bind(&r.key_id),
        )
        .await?;
    }
    append_audit(conn, audit).await
}

/// Writes `write` (a new root key) only if the store has never had a root key; `None` when
/// one exists. The caller's write lock keeps the count and the insert together.
pub(crate) async fn create_first_root_key(
    conn: &mut impl Conn,
    write: KeyWrite,
) -> Result<Option<i64>, StoreError> {
    if count_root_keys(conn).await? > 0 {
        return Ok(None);
    }
    write_key(conn, write).await.map(Some)
}

/// Creates, replaces or deletes a plan and appends its audit event.
pub(crate) async fn write_plan<C: Conn>(conn: &mut C, write: PlanWrite) -> Result<i64, StoreError> {
    let PlanWrite {
        plan: p,
        expected_version,
        delete,
        audit,
    } = write;
    let permissions: Vec<&str> = p.permissions.iter().map(Permission::as_str).collect();
    let statement = if delete {
        // Key writes take the same lock, so no key can start following the plan between
        // this count and the delete.
        let on_plan = Statement::new(C::Dialect::COUNT_KEYS_ON_PLAN).bind(&p.plan_id);
        if count(conn, on_plan).await? > 0 {
            return Err(StoreError::Conflict);
        }
        Statement::new("DELETE FROM plans WHERE plan_id = $1 AND version = $2")
            .bind(&p.plan_id)
            .bind(expected_version)
    } else if let Some(expected) = expected_version {
        Statement::new(
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
    } else {
        Statement::new(
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
    };
    if conn.execute(statement).await? != 1 {
        return Err(StoreError::Conflict);
    }
    append_audit(conn, audit).await
}

/// The balance at `now`, refilled if a scheduled refill passed (not yet written back).
pub(crate) async fn read_balance(
    conn: &mut impl Conn,
    key_id: &str,
    config: &QuotaConfig,
    now: OffsetDateTime,
) -> Result<Balance, StoreError> {
    let row = conn
        .fetch_optional(
            Statement::new("SELECT remaining, period FROM quota_balances WHERE key_id = $1")
                .bind(key_id),
        )
        .await?;
    let stored = match row {
        Some(row) => Some(Balance {
            remaining: u64::try_from(row.int("remaining")?).unwrap_or(0),
            period: opt_from_millis(row.opt_int("period")?)?,
        }),
        None => None,
    };
    Ok(current_balance(config, stored, now))
}

async fn write_balance(
    conn: &mut impl Conn,
    key_id: &str,
    balance: Balance,
) -> Result<(), StoreError> {
    conn.execute(
        Statement::new(
            "INSERT INTO quota_balances (key_id, remaining, period) VALUES ($1, $2, $3)
             ON CONFLICT (key_id) DO UPDATE SET remaining = excluded.remaining, period = excluded.period",
        )
        .bind(key_id)
        .bind(i64::try_from(balance.remaining).unwrap_or(i64::MAX))
        .bind(balance.period.map(to_millis)),
    )
    .await?;
    Ok(())
}

/// Takes up to `want` credits; returns how many were taken and the balance left.
pub(crate) async fn take_credits(
    conn: &mut impl Conn,
    key_id: &str,
    config: &QuotaConfig,
    want: u64,
    now: OffsetDateTime,
) -> Result<(u64, Balance), StoreError> {
    let balance = read_balance(conn, key_id, config, now).await?;
    let granted = want.min(balance.remaining);
    let after = Balance {
        remaining: balance.remaining - granted,
        period: balance.period,
    };
    write_balance(conn, key_id, after).await?;
    Ok((granted, after))
}

/// Returns `unspent` leased credits, applies `op`, and appends `audit` with the balance
/// before and after in its summary.
pub(crate) async fn adjust_credits(
    conn: &mut impl Conn,
    key_id: &str,
    config: &QuotaConfig,
    unspent: u64,
    op: CreditOp,
    mut audit: AuditDraft,
    now: OffsetDateTime,
) -> Result<Balance, StoreError> {
    let before = read_balance(conn, key_id, config, now).await?;
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
    write_balance(conn, key_id, after).await?;
    if let Some(summary) = audit.summary.as_object_mut() {
        summary.insert("before".into(), serde_json::Value::from(returned));
        summary.insert("after".into(), serde_json::Value::from(remaining));
    }
    append_audit(conn, audit).await?;
    Ok(after)
}

/// Returns `amount` unspent credits of refill period `period` (dropped if the balance has been
/// refilled since).
pub(crate) async fn give_back_credits(
    conn: &mut impl Conn,
    key_id: &str,
    config: &QuotaConfig,
    amount: u64,
    period: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let balance = read_balance(conn, key_id, config, now).await?;
    if balance.period == period {
        let after = Balance {
            remaining: balance.remaining.saturating_add(amount),
            period,
        };
        write_balance(conn, key_id, after).await?;
    }
    Ok(())
}
