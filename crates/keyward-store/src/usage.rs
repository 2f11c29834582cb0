//! What both backends share for usage rows: the query's parameters and the decoding of its
//! rows into a page. Each backend holds its own SQL text (placeholders and casts differ).

use keyward_core::audit::unix_millis;
use keyward_core::usage::{UsageCount, UsageCursor};
use keyward_core::verify::VerifyCode;

use crate::sql::from_millis;
use crate::{StoreError, UsageFilter, UsagePage};

/// A usage row as both backends select it:
/// (bucket, key_id, code, owner, tenant, verifications, credits).
pub(crate) type UsageTuple = (i64, String, String, String, Option<String>, i64, i64);

/// The bound values of a usage query, in placeholder order:
/// bucket size, from, to, key_id, owner, tenant, cursor (bucket, key_id, code), limit + 1.
pub(crate) struct UsageQuery<'a> {
    pub bucket: i64,
    pub from: i64,
    pub to: i64,
    pub key_id: Option<&'a str>,
    pub owner: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub after_bucket: i64,
    pub after_key_id: &'a str,
    pub after_code: &'a str,
    pub fetch: i64,
}

impl<'a> UsageQuery<'a> {
    pub fn new(filter: &'a UsageFilter) -> Self {
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

/// Builds a page from the fetched rows (one more than the page size, if there are more).
pub(crate) fn page(rows: Vec<UsageTuple>, limit: u32) -> Result<UsagePage, StoreError> {
    let limit = limit.max(1) as usize;
    let more = rows.len() > limit;
    let items = rows
        .into_iter()
        .take(limit)
        .map(
            |(bucket, key_id, code, owner, tenant, verifications, credits)| {
                Ok(UsageCount {
                    start: from_millis(bucket)?,
                    code: VerifyCode::parse(&code).ok_or_else(|| {
                        StoreError::Corrupt(format!("unknown usage code {code:?}"))
                    })?,
                    key_id,
                    owner,
                    tenant,
                    verifications: from_i64("verifications", verifications)?,
                    credits: from_i64("credits", credits)?,
                })
            },
        )
        .collect::<Result<Vec<_>, StoreError>>()?;
    let next = if more {
        items.last().map(UsageCursor::after)
    } else {
        None
    };
    Ok(UsagePage { items, next })
}
