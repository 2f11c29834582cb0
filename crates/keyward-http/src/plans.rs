//! `/v1/plans`: named templates of limits, quota and permissions (permissions `plans.read`,
//! `plans.write`). Changing a plan changes every key on it at once.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keyward_engine::PlanSpec;
use keyward_wire::{PlanList, PlanRequest, PlanView, Problem};

use crate::AppState;
use crate::convert::{limit_spec, plan_view, quota_spec};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, Authorized, PlansRead, PlansWrite};

fn spec(body: PlanRequest) -> PlanSpec {
    PlanSpec {
        limits: body.limits.into_iter().map(limit_spec).collect(),
        quota: body.quota.map(quota_spec),
        permissions: body.permissions,
    }
}

/// Creates a plan.
#[utoipa::path(post, path = "/v1/plans", tag = "plans", request_body = PlanRequest, security(("root_key" = [])),
    responses(
        (status = 201, body = PlanView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The root key lacks plans.write, or is confined to a tenant (`out_of_scope`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A plan with this name exists", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_plan(
    State(state): State<AppState>,
    auth: Authorized<PlansWrite>,
    ApiJson(mut body): ApiJson<PlanRequest>,
) -> Result<(StatusCode, Json<PlanView>), ApiError> {
    let plan_id = body
        .plan_id
        .take()
        .ok_or_else(|| ApiError::field("plan_id", "is required"))?;
    let plan = state
        .engine
        .put_plan(&auth.principal, &plan_id, spec(body), true)
        .await?;
    Ok((StatusCode::CREATED, Json(plan_view(&plan))))
}

/// Replaces a plan; keys on it follow at once.
#[utoipa::path(put, path = "/v1/plans/{plan_id}", tag = "plans", request_body = PlanRequest, security(("root_key" = [])),
    params(("plan_id" = String, Path, description = "The plan's name")),
    responses(
        (status = 200, body = PlanView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The root key lacks plans.write, or is confined to a tenant (`out_of_scope`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replace_plan(
    State(state): State<AppState>,
    auth: Authorized<PlansWrite>,
    ApiPath(plan_id): ApiPath<String>,
    ApiJson(body): ApiJson<PlanRequest>,
) -> Result<Json<PlanView>, ApiError> {
    if body.plan_id.as_ref().is_some_and(|id| *id != plan_id) {
        return Err(ApiError::field(
            "plan_id",
            "differs from the plan named in the path",
        ));
    }
    let plan = state
        .engine
        .put_plan(&auth.principal, &plan_id, spec(body), false)
        .await?;
    Ok(Json(plan_view(&plan)))
}

/// Reads a plan.
#[utoipa::path(get, path = "/v1/plans/{plan_id}", tag = "plans", security(("root_key" = [])),
    params(("plan_id" = String, Path, description = "The plan's name")),
    responses((status = 200, body = PlanView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_plan(
    State(state): State<AppState>,
    _auth: Authorized<PlansRead>,
    ApiPath(plan_id): ApiPath<String>,
) -> Result<Json<PlanView>, ApiError> {
    Ok(Json(plan_view(&state.engine.get_plan(&plan_id).await?)))
}

/// Lists every plan.
#[utoipa::path(get, path = "/v1/plans", tag = "plans", security(("root_key" = [])), responses((status = 200, body = PlanList)))]
pub async fn list_plans(
    State(state): State<AppState>,
    _auth: Authorized<PlansRead>,
) -> Result<Json<PlanList>, ApiError> {
    let plans = state.engine.list_plans().await?;
    Ok(Json(PlanList {
        plans: plans.iter().map(plan_view).collect(),
    }))
}

/// Deletes a plan that no live key follows.
#[utoipa::path(delete, path = "/v1/plans/{plan_id}", tag = "plans", security(("root_key" = [])),
    params(("plan_id" = String, Path, description = "The plan's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The root key lacks plans.write, or is confined to a tenant (`out_of_scope`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Keys still follow the plan", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_plan(
    State(state): State<AppState>,
    auth: Authorized<PlansWrite>,
    ApiPath(plan_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_plan(&auth.principal, &plan_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
