//! `/v1/root-keys`: the credentials of keyward's own admin API (permission `root.manage`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keyward_core::record::KeyKind;
use keyward_engine::NewKey;
use keyward_wire::{CreateRootKeyRequest, CreatedKey, KeyList, KeyView, Problem, RevokeKeyRequest};

use crate::AppState;
use crate::convert::key_view;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, Authorized, RootManage};
use crate::keys::{ListKeysParams, created, list_of_kind};

/// Creates a root key. The secret is in this response only.
#[utoipa::path(post, path = "/v1/root-keys", tag = "root-keys", request_body = CreateRootKeyRequest,
    security(("root_key" = [])),
    responses(
        (status = 201, description = "Created; `key` is shown only here", body = CreatedKey),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Root key lacks root.manage, or asks for a permission it does not hold", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_root_key(
    State(state): State<AppState>,
    auth: Authorized<RootManage>,
    ApiJson(body): ApiJson<CreateRootKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let spec = NewKey {
        owner: body.owner.unwrap_or_else(|| "keyward-admin".to_owned()),
        name: body.name,
        tenant: body.tenant,
        permissions: body.permissions,
        expires_at: body.expires_at.map(|t| t.0),
        ttl_seconds: body.ttl_seconds,
        ..NewKey::default()
    };
    let new_key = state.engine.create_root_key(&auth.principal, spec).await?;
    Ok(created(&state, new_key))
}

/// Lists root keys.
#[utoipa::path(get, path = "/v1/root-keys", tag = "root-keys", security(("root_key" = [])), params(ListKeysParams),
    responses((status = 200, body = KeyList)))]
pub async fn list_root_keys(
    State(state): State<AppState>,
    auth: Authorized<RootManage>,
    ApiQuery(params): ApiQuery<ListKeysParams>,
) -> Result<Json<KeyList>, ApiError> {
    list_of_kind(&state, &auth.principal, KeyKind::Root, params).await
}

/// Revokes a root key.
#[utoipa::path(post, path = "/v1/root-keys/{key_id}/revoke", tag = "root-keys", request_body = RevokeKeyRequest,
    security(("root_key" = [])),
    params(("key_id" = String, Path, description = "The root key's identifier")),
    responses(
        (status = 200, body = KeyView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_root_key(
    State(state): State<AppState>,
    auth: Authorized<RootManage>,
    ApiPath(key_id): ApiPath<String>,
    ApiJson(body): ApiJson<RevokeKeyRequest>,
) -> Result<Json<KeyView>, ApiError> {
    let record = state
        .engine
        .revoke_key(&auth.principal, KeyKind::Root, &key_id, &body.reason)
        .await?;
    Ok(Json(key_view(&record, state.engine.now())))
}
