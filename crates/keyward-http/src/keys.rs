//! `/v1/keys`: issue, read, list, update, rotate, revoke and verify API keys.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use keyward_core::path::{PathOptions, normalize_target};
use keyward_core::permission::PermissionQuery;
use keyward_core::record::{KeyKind, KeyStatus};
use keyward_core::validate;
use keyward_core::verify::VerifyRequest;
use keyward_engine::{Created, CreditOp, KeyPatch, ListKeys, NewKey, Principal};
use keyward_wire::{
    CreateKeyRequest, CreatedKey, Credits, CreditsRequest, KeyList, KeyView, Problem,
    RevokeKeyRequest, RotateKeyRequest, RotatedKey, UpdateKeyRequest, VerifyKeyRequest,
    VerifyKeyResponse,
};
use serde::Deserialize;
use time::Duration;
use utoipa::IntoParams;

use crate::AppState;
use crate::convert::{
    decode_cursor, encode_cursor, ended_secret, key_view, limit_spec, parse_limit, quota_spec,
};
use crate::error::ApiError;
use crate::extract::{
    ApiJson, ApiPath, ApiQuery, Authorized, KeysCreate, KeysRead, KeysRevoke, KeysUpdate,
    KeysVerify,
};

/// Filters and paging for `GET /v1/keys`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListKeysParams {
    /// Only keys of this owner.
    owner: Option<String>,
    /// Only keys of this tenant.
    tenant: Option<String>,
    /// `active`, `revoked` or `expired`.
    status: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

pub(crate) fn list_query(params: ListKeysParams) -> Result<ListKeys, ApiError> {
    let status = params
        .status
        .as_deref()
        .map(|s| {
            KeyStatus::parse(s)
                .ok_or_else(|| ApiError::field("status", "must be active, revoked or expired"))
        })
        .transpose()?;
    Ok(ListKeys {
        owner: params.owner,
        tenant: params.tenant,
        status,
        limit: parse_limit(params.limit.as_deref())?,
        after: decode_cursor(params.cursor.as_deref())?,
    })
}

/// Issues an API key. The secret is in this response only.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKeyRequest,
    security(("root_key" = [])),
    responses(
        (status = 201, description = "Created; `key` is shown only here", body = CreatedKey),
        (status = 400, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Root key lacks keys.create", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_key(
    State(state): State<AppState>,
    auth: Authorized<KeysCreate>,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let spec = NewKey {
        owner: body.owner,
        name: body.name,
        tenant: body.tenant,
        environment: body.environment,
        purpose: body.purpose,
        tags: body.tags,
        meta: body.meta,
        permissions: body.permissions,
        routes: body.routes,
        expires_at: body.expires_at.map(|t| t.0),
        ttl_seconds: body.ttl_seconds,
        enabled: body.enabled,
        prefix: body.prefix,
        plan: body.plan,
        limits: body.limits.into_iter().map(limit_spec).collect(),
        quota: body.quota.map(quota_spec),
        ip_allowlist: body.ip_allowlist,
        origins: body.origins,
    };
    let new_key = state.engine.create_key(&auth.principal, spec).await?;
    Ok(created(&state, new_key))
}

/// Reads a key's record (never its secret or hash).
#[utoipa::path(get, path = "/v1/keys/{key_id}", tag = "keys", security(("root_key" = [])),
    params(("key_id" = String, Path, description = "The key's public identifier")),
    responses(
        (status = 200, body = KeyView),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_key(
    State(state): State<AppState>,
    auth: Authorized<KeysRead>,
    ApiPath(key_id): ApiPath<String>,
) -> Result<Json<KeyView>, ApiError> {
    let record = state
        .engine
        .get_key_as(&auth.principal, KeyKind::Api, &key_id)
        .await?;
    Ok(Json(key_view(&record, state.engine.now())))
}

/// Lists keys, oldest first, with stable cursor pagination.
#[utoipa::path(get, path = "/v1/keys", tag = "keys", security(("root_key" = [])), params(ListKeysParams),
    responses(
        (status = 200, body = KeyList),
        (status = 400, description = "Bad filter or paging value", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_keys(
    State(state): State<AppState>,
    auth: Authorized<KeysRead>,
    ApiQuery(params): ApiQuery<ListKeysParams>,
) -> Result<Json<KeyList>, ApiError> {
    list_of_kind(&state, &auth.principal, KeyKind::Api, params).await
}

/// One page of keys of `kind` visible to `principal`, for `/v1/keys` and `/v1/root-keys`.
pub(crate) async fn list_of_kind(
    state: &AppState,
    principal: &Principal,
    kind: KeyKind,
    params: ListKeysParams,
) -> Result<Json<KeyList>, ApiError> {
    let page = state
        .engine
        .list_keys_as(principal, kind, list_query(params)?)
        .await?;
    let now = state.engine.now();
    Ok(Json(KeyList {
        keys: page.items.iter().map(|r| key_view(r, now)).collect(),
        next_cursor: encode_cursor(page.next_cursor),
    }))
}

/// The 201 answer to a create: the secret, shown this once, and the record.
pub(crate) fn created(state: &AppState, created: Created) -> (StatusCode, Json<CreatedKey>) {
    let record = key_view(&created.record, state.engine.now());
    let key = created.key.expose().to_owned();
    (StatusCode::CREATED, Json(CreatedKey { key, record }))
}

/// Updates name, permissions, routes, meta, tags, expiry or enabled.
#[utoipa::path(patch, path = "/v1/keys/{key_id}", tag = "keys", request_body = UpdateKeyRequest,
    security(("root_key" = [])),
    params(("key_id" = String, Path, description = "The key's public identifier")),
    responses(
        (status = 200, body = KeyView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_key(
    State(state): State<AppState>,
    auth: Authorized<KeysUpdate>,
    ApiPath(key_id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateKeyRequest>,
) -> Result<Json<KeyView>, ApiError> {
    let patch = KeyPatch {
        name: body.name,
        permissions: body.permissions,
        routes: body.routes,
        meta: body.meta,
        tags: body.tags,
        expires_at: body.expires_at.map(|e| e.map(|t| t.0)),
        enabled: body.enabled,
        plan: body.plan,
        limits: body.limits.map(|l| l.into_iter().map(limit_spec).collect()),
        quota: body.quota.map(|q| q.map(quota_spec)),
        ip_allowlist: body.ip_allowlist,
        origins: body.origins,
    };
    let record = state
        .engine
        .update_key(&auth.principal, &key_id, patch)
        .await?;
    Ok(Json(key_view(&record, state.engine.now())))
}

/// Gives the key a new secret; the previous one keeps verifying for the grace period.
#[utoipa::path(post, path = "/v1/keys/{key_id}/rotate", tag = "keys", request_body = RotateKeyRequest,
    security(("root_key" = [])),
    params(("key_id" = String, Path, description = "The key's public identifier")),
    responses(
        (status = 201, description = "Rotated; `key` is shown only here", body = RotatedKey),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rotate_key(
    State(state): State<AppState>,
    auth: Authorized<KeysUpdate>,
    ApiPath(key_id): ApiPath<String>,
    ApiJson(body): ApiJson<RotateKeyRequest>,
) -> Result<(StatusCode, Json<RotatedKey>), ApiError> {
    let grace = Duration::seconds(body.grace_period_seconds);
    let rotated = state
        .engine
        .rotate_key(&auth.principal, &key_id, grace)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(RotatedKey {
            key: rotated.key.expose().to_owned(),
            record: key_view(&rotated.record, state.engine.now()),
            previous_secret: rotated.plan.previous.as_ref().map(ended_secret),
            ended_secrets: rotated.plan.ended.iter().map(ended_secret).collect(),
        }),
    ))
}

/// Revokes every secret of the key, effective immediately.
#[utoipa::path(post, path = "/v1/keys/{key_id}/revoke", tag = "keys", request_body = RevokeKeyRequest,
    security(("root_key" = [])),
    params(("key_id" = String, Path, description = "The key's public identifier")),
    responses(
        (status = 200, body = KeyView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already revoked", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_key(
    State(state): State<AppState>,
    auth: Authorized<KeysRevoke>,
    ApiPath(key_id): ApiPath<String>,
    ApiJson(body): ApiJson<RevokeKeyRequest>,
) -> Result<Json<KeyView>, ApiError> {
    let record = state
        .engine
        .revoke_key(&auth.principal, KeyKind::Api, &key_id, &body.reason)
        .await?;
    Ok(Json(key_view(&record, state.engine.now())))
}

/// Answers whether a key is valid for a request. Any well-formed request gets 200 with a code.
/// A root key confined to a tenant sees keys of other tenants as `NOT_FOUND`.
#[utoipa::path(post, path = "/v1/keys/verify", tag = "verify", request_body = VerifyKeyRequest,
    security(("root_key" = [])),
    responses(
        (status = 200, body = VerifyKeyResponse),
        (status = 400, description = "Bad permission query or body, or a path that cannot be normalised safely", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "too_many_unknown_keys: the request's `ip` presented too many unknown keys; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store_unavailable, or store_saturated (see Retry-After): the key was not in the cache and the store could not be read", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn verify_key(
    State(state): State<AppState>,
    auth: Authorized<KeysVerify>,
    ApiJson(body): ApiJson<VerifyKeyRequest>,
) -> Result<axum::response::Response, ApiError> {
    validate::verify_path(body.path.as_deref())?;
    validate::verify_method(body.method.as_deref())?;
    let query = body
        .permissions
        .as_deref()
        .map(PermissionQuery::parse)
        .transpose()?;
    // The same normal form the edges check allowlists on, and the same refusals.
    let path = body
        .path
        .as_deref()
        .map(|p| normalize_target(p.as_bytes(), PathOptions::default()))
        .transpose()
        .map_err(|e| ApiError::field("path", e.to_string()))?;
    let tenant = body
        .tenant
        .as_deref()
        .map(|t| validate::ident("tenant", t))
        .transpose()?;
    let environment = body
        .environment
        .as_deref()
        .map(|e| validate::ident("environment", e))
        .transpose()?;
    let request = VerifyRequest {
        query: query.as_ref(),
        method: body.method.as_deref(),
        path: path.as_ref(),
        tenant: tenant.as_deref(),
        environment: environment.as_deref(),
        ip: body
            .ip
            .as_deref()
            .map(|ip| {
                ip.parse()
                    .map_err(|_| ApiError::field("ip", "must be an IPv4 or IPv6 address"))
            })
            .transpose()?,
        origin: body.origin.as_deref(),
    };
    let v = state
        .engine
        .verify_as(&auth.principal, &body.key, &request, body.cost.unwrap_or(1))
        .await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        crate::verify_json::verify_body(&v),
    )
        .into_response())
}

/// Sets, increases or decreases a key's credits (audited).
#[utoipa::path(post, path = "/v1/keys/{key_id}/credits", tag = "keys", request_body = CreditsRequest,
    security(("root_key" = [])),
    params(("key_id" = String, Path, description = "The key's public identifier")),
    responses(
        (status = 200, body = Credits),
        (status = 400, description = "Bad op, or the key has no quota", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn adjust_credits(
    State(state): State<AppState>,
    auth: Authorized<KeysUpdate>,
    ApiPath(key_id): ApiPath<String>,
    ApiJson(body): ApiJson<CreditsRequest>,
) -> Result<Json<Credits>, ApiError> {
    let op = match body.op.as_str() {
        "set" => CreditOp::Set(body.amount),
        "increase" => CreditOp::Increase(body.amount),
        "decrease" => CreditOp::Decrease(body.amount),
        _ => return Err(ApiError::field("op", "must be set, increase or decrease")),
    };
    let remaining = state
        .engine
        .adjust_credits(&auth.principal, &key_id, op)
        .await?;
    Ok(Json(Credits { key_id, remaining }))
}

/// Reads a key's credit balance.
#[utoipa::path(get, path = "/v1/keys/{key_id}/credits", tag = "keys", security(("root_key" = [])),
    params(("key_id" = String, Path, description = "The key's public identifier")),
    responses(
        (status = 200, body = Credits),
        (status = 400, description = "The key has no quota", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_credits(
    State(state): State<AppState>,
    auth: Authorized<KeysRead>,
    ApiPath(key_id): ApiPath<String>,
) -> Result<Json<Credits>, ApiError> {
    match state.engine.credits_as(&auth.principal, &key_id).await? {
        Some(remaining) => Ok(Json(Credits { key_id, remaining })),
        None => Err(ApiError::field(
            "quota",
            "the key has no quota (set one on the key or its plan)",
        )),
    }
}
