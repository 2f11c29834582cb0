//! `/v1/reports/*`: read-only reports over the keys (permission `keys.read`).

use axum::Json;
use axum::extract::State;
use keyward_engine::rotation_policy::{RotationReport, RotationStanding};
use keyward_wire::{Problem, RotationReportEntry, RotationReportView};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiQuery, Authorized, KeysRead};

/// Longest "due soon" window a report accepts, in days.
const MAX_WITHIN_DAYS: u32 = 3650;

/// Parameters of `GET /v1/reports/rotation`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RotationParams {
    /// Also list keys falling out of policy within this many days (0 to 3650; default: the
    /// server's warning lead time, 7 days unless configured).
    within_days: Option<String>,
}

fn view(report: RotationReport) -> RotationReportView {
    RotationReportView {
        generated_at: report.generated_at.into(),
        within_days: report.within_days,
        active_keys: report.active_keys,
        keys_with_policy: report.keys_with_policy,
        compliance_ratio: report.compliance_ratio,
        keys: report
            .entries
            .into_iter()
            .map(|e| RotationReportEntry {
                key_id: e.key_id,
                owner: e.owner,
                tenant: e.tenant,
                environment: e.environment,
                secret_issued_at: e.secret_issued_at.into(),
                age_days: e.age_days,
                max_age_days: e.max_age_days,
                due_at: e.due_at.into(),
                status: match e.standing {
                    RotationStanding::Overdue => "overdue",
                    RotationStanding::DueSoon => "due_soon",
                }
                .to_owned(),
            })
            .collect(),
    }
}

/// Lists active API keys out of their rotation policy, and those within `within_days` of it.
#[utoipa::path(get, path = "/v1/reports/rotation", tag = "keys", security(("root_key" = [])), params(RotationParams),
    responses(
        (status = 200, body = RotationReportView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rotation_report(
    State(state): State<AppState>,
    auth: Authorized<KeysRead>,
    ApiQuery(params): ApiQuery<RotationParams>,
) -> Result<Json<RotationReportView>, ApiError> {
    let within_days = params
        .within_days
        .map(|d| {
            d.parse::<u32>()
                .ok()
                .filter(|d| *d <= MAX_WITHIN_DAYS)
                .ok_or_else(|| {
                    ApiError::field(
                        "within_days",
                        format!("must be a whole number between 0 and {MAX_WITHIN_DAYS}"),
                    )
                })
        })
        .transpose()?;
    let report = state
        .engine
        .rotation_report_as(&auth.principal, within_days)
        .await?;
    Ok(Json(view(report)))
}
