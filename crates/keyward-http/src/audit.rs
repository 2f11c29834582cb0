//! `/v1/audit`: read the audit log and check its hash chain (permission `audit.read`).

use axum::Json;
use axum::extract::State;
use keyward_wire::{AuditList, AuditVerifyReport, BrokenLinkView, Problem};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::convert::{decode_cursor, encode_cursor, event_view, parse_limit};
use crate::error::ApiError;
use crate::extract::{ApiQuery, AuditRead, Authorized};

/// Filters and paging for `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only events about this key_id.
    key_id: Option<String>,
    /// Only events with this action, e.g. `key.revoke`.
    action: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Lists audit events in sequence order.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("root_key" = [])), params(AuditParams),
    responses(
        (status = 200, body = AuditList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_audit(
    State(state): State<AppState>,
    auth: Authorized<AuditRead>,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<AuditList>, ApiError> {
    let page = state
        .engine
        .list_audit_as(
            &auth.principal,
            params.key_id,
            params.action,
            parse_limit(params.limit.as_deref())?,
            decode_cursor(params.cursor.as_deref())?,
        )
        .await?;
    Ok(Json(AuditList {
        next_cursor: encode_cursor(page.next_cursor),
        events: page.items.into_iter().map(event_view).collect(),
    }))
}

/// Walks the whole hash chain and reports the first broken link.
#[utoipa::path(post, path = "/v1/audit/verify", tag = "audit", security(("root_key" = [])),
    responses(
        (status = 200, body = AuditVerifyReport),
        (status = 403, description = "The root key lacks audit.read, or is confined to a tenant (`out_of_scope`): the chain spans every tenant", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn verify_audit(
    State(state): State<AppState>,
    auth: Authorized<AuditRead>,
) -> Result<Json<AuditVerifyReport>, ApiError> {
    let report = state.engine.verify_audit_chain_as(&auth.principal).await?;
    Ok(Json(AuditVerifyReport {
        intact: report.first_broken.is_none(),
        checked: report.checked,
        first_broken: report.first_broken.map(|b| BrokenLinkView {
            seq: b.seq,
            reason: b.reason,
        }),
        head_seq: report.head_seq,
        head_hash: report.head_hash,
    }))
}
