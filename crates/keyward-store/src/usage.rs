//! Reading usage, for both backends: the query's parameters, its run, and the decoding of its
//! rows into a page. The SQL text is the backend's (`Dialect::LIST_USAGE`): PostgreSQL must be
//! told to compare text bytewise.

use keyward_core::audit::unix_millis;
use keyward_core::usage::{Granularity, UsageCount, UsageCursor};
use keyward_core::verify::VerifyCode;

use crate::dialect::Dialect;
use crate::sql::{Columns, from_millis};
use crate::statement::{Conn, Statement};
use crate::{StoreError, UsageFilter, UsagePage};

/// The bound values of a usage query: for the grouping query, in placeholder order, bucket
/// size, from, to, key_id, owner, tenant, cursor (bucket, key_id, code), limit + 1; the hourly
/// query binds `hourly_start` for from and cursor, and no bucket size.
struct UsageQuery<'a> {
    bucket: i64,
    from: i64,
    to: i64,
    key_id: Option<&'a str>,
    owner: Option<&'a str>,
    tenant: Option<&'a str>,
    after_bucket: i64,
    after_key_id: &'a str,
    after_code: &'a str,
    fetch: i64,
    /// Where an hourly page starts, exclusive: the cursor, or (`from`, "", "") if that is
    /// later (every stored key_id is longer than "", so the hour `from` itself is in).
    hourly_start: (i64, &'a str, &'a str),
}

impl<'a> UsageQuery<'a> {
    fn new(filter: &'a UsageFilter) -> Self {
        let from = unix_millis(filter.from);
        let (after_bucket, after_key_id, after_code) = match &filter.after {
            Some(c) => (unix_millis(c.start), c.key_id.as_str(), c.code.as_str()),
            // Before every bucket: bucket starts are never negative for stored rows, and even
            // if they were, "" sorts before every key_id.
            None => (i64::MIN, "", ""),
        };
        Self {
            bucket: filter.granularity.millis(),
            // Rows of buckets before the cursor's cannot be on this page.
            from: from.max(after_bucket),
            to: unix_millis(filter.to),
            key_id: filter.key_id.as_deref(),
            owner: filter.owner.as_deref(),
            tenant: filter.tenant.as_deref(),
            after_bucket,
            after_key_id,
            after_code,
            fetch: i64::from(filter.limit.max(1)) + 1,
            hourly_start: (after_bucket, after_key_id, after_code).max((from, "", "")),
        }
    }
}

/// A count for binding: stored counts are BIGINT, and no real count reaches i64::MAX.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_i64(column: &str, n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("usage {column} is negative: {n}")))
}

/// Reads usage, summed per `filter.granularity`.
pub(crate) async fn list_usage<C: Conn>(
    conn: &mut C,
    filter: &UsageFilter,
) -> Result<UsagePage, StoreError> {
    let q = UsageQuery::new(filter);
    let statement = match filter.granularity {
        Granularity::Hour => {
            let (hour, key_id, code) = q.hourly_start;
            Statement::new(C::Dialect::LIST_USAGE_HOURLY)
                .bind(q.to)
                .bind(q.key_id)
                .bind(q.owner)
                .bind(q.tenant)
                .bind(hour)
                .bind(key_id)
                .bind(code)
                .bind(q.fetch)
        }
        Granularity::Day => Statement::new(C::Dialect::LIST_USAGE)
            .bind(q.bucket)
            .bind(q.from)
            .bind(q.to)
            .bind(q.key_id)
            .bind(q.owner)
            .bind(q.tenant)
            .bind(q.after_bucket)
            .bind(q.after_key_id)
            .bind(q.after_code)
            .bind(q.fetch),
    };
    let rows = conn.fetch_all(statement).await?;
    page(&rows, filter.limit)
}

/// Builds a page from the fetched rows (one more than the page size, if there are more).
fn page(rows: &[impl Columns], limit: u32) -> Result<UsagePage, StoreError> {
    let limit = limit.max(1) as usize;
    let more = rows.len() > limit;
    let items = rows
        .iter()
        .take(limit)
        .map(|row| {
            let code = row.text("code")?;
            Ok(UsageCount {
                start: from_millis(row.int("bucket")?)?,
                code: VerifyCode::parse(&code)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown usage code {code:?}")))?,
                key_id: row.text("key_id")?,
                owner: row.text("owner")?,
                tenant: row.opt_text("tenant")?,
                verifications: from_i64("verifications", row.int("verifications")?)?,
                credits: from_i64("credits", row.int("credits")?)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let next = if more {
        items.last().map(UsageCursor::after)
    } else {
        None
    };
    Ok(UsagePage { items, next })
}
