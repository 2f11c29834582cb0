//! `GET /v1/usage`: verifications and credits per key, hour or day, for billing (permission
//! `usage.read`).

use axum::Json;
use axum::extract::State;
use keyward_core::usage::{Granularity, UsageCursor};
use keyward_engine::{MAX_USAGE_PAGE, UsageQuery, UsageReport};
use keyward_wire::{Problem, UsageReportView, UsageRow};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::IntoParams;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiQuery, Authorized, UsageRead};

/// Filters and paging for `GET /v1/usage`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Only this key.
    key_id: Option<String>,
    /// Only usage recorded with this owner.
    owner: Option<String>,
    /// Only usage recorded with this tenant.
    tenant: Option<String>,
    /// Start, RFC 3339, rounded down to the hour or day (default: `to` minus one day for
    /// `hour`, minus 30 days for `day`).
    from: Option<String>,
    /// End, exclusive, RFC 3339, rounded up to the hour or day (default: the end of the hour or
    /// day in progress). Times are from 1970 to before 9000. At most 93 days
    /// after `from` for `hour`, 3660 for `day`.
    to: Option<String>,
    /// `hour` (default) or `day` (UTC days).
    granularity: Option<String>,
    /// Page size, 1 to 10000 (default 1000).
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn time_param(
    field: &'static str,
    value: Option<&str>,
) -> Result<Option<OffsetDateTime>, ApiError> {
    value
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                ApiError::field(field, "must be an RFC 3339 time, e.g. 2026-11-28T00:00:00Z")
            })
        })
        .transpose()
}

impl UsageParams {
    fn query(self) -> Result<UsageQuery, ApiError> {
        let granularity = match self.granularity.as_deref() {
            None => Granularity::Hour,
            Some(g) => Granularity::parse(g)
                .ok_or_else(|| ApiError::field("granularity", "must be 'hour' or 'day'"))?,
        };
        let limit = self
            .limit
            .map(|l| {
                l.parse::<u32>().map_err(|_| {
                    ApiError::field(
                        "limit",
                        format!("must be a whole number between 1 and {MAX_USAGE_PAGE}"),
                    )
                })
            })
            .transpose()?;
        // The cursor names its granularity, so a day page never continues an hour page.
        let after = self
            .cursor
            .map(|c| {
                c.strip_prefix(granularity.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .and_then(UsageCursor::parse)
                    .ok_or_else(|| {
                        ApiError::field(
                            "cursor",
                            "is not a cursor returned by this API for this granularity",
                        )
                    })
            })
            .transpose()?;
        Ok(UsageQuery {
            granularity,
            from: time_param("from", self.from.as_deref())?,
            to: time_param("to", self.to.as_deref())?,
            key_id: self.key_id,
            owner: self.owner,
            tenant: self.tenant,
            limit,
            after,
        })
    }
}

fn view(report: UsageReport) -> UsageReportView {
    UsageReportView {
        granularity: report.granularity.as_str().to_owned(),
        from: report.from.into(),
        to: report.to.into(),
        items: report
            .items
            .into_iter()
            .map(|c| UsageRow {
                start: c.start.into(),
                key_id: c.key_id,
                owner: c.owner,
                tenant: c.tenant,
                code: c.code.as_str().to_owned(),
                verifications: c.verifications,
                credits: c.credits,
            })
            .collect(),
        next_cursor: report
            .next
            .map(|c| format!("{}.{}", report.granularity.as_str(), c.encode())),
    }
}

/// Usage for billing: verifications per key and outcome, and the credits they spent, per hour
/// or per day. Counts reach the store in batches (every `--last-used-flush-seconds`, 5 s by
/// default), so the latest seconds may not be in it yet.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", security(("root_key" = [])), params(UsageParams),
    responses(
        (status = 200, body = UsageReportView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_usage(
    State(state): State<AppState>,
    auth: Authorized<UsageRead>,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<UsageReportView>, ApiError> {
    let report = state
        .engine
        .usage_as(&auth.principal, params.query()?)
        .await?;
    Ok(Json(view(report)))
}
