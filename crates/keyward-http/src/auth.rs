//! `GET /v1/auth`: the nginx `auth_request` endpoint.
//!
//! nginx sends a subrequest with the client's headers; keyward reads the key from
//! `Authorization: Bearer` or `X-API-Key`, the original request from `X-Original-Method`,
//! `X-Original-URI` and `X-Real-IP`, and the origin from `Origin` (or `Referer`). nginx itself
//! authenticates with a root key holding `keys.verify` in `X-Keyward-Root-Key` (set in the
//! nginx config), since `Authorization` belongs to the client.
//!
//! Answers: 204 with identity and RateLimit headers; 401 (no or bad key) or 403 (permission,
//! route, IP, origin). nginx turns any other status of an auth subrequest into a 500, so limit
//! and quota refusals are answered 403 with `X-Keyward-Code: RATE_LIMITED` (or
//! `USAGE_EXCEEDED`) and `Retry-After`; the shipped nginx config (`examples/nginx/`) maps
//! them back to 429.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_core::permission::PermissionQuery;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::enforce::{decorate, missing_key, presented_key, refusal};
use crate::error::ApiError;
use crate::extract::{ApiQuery, RemoteAddr};

/// Header carrying nginx's own root key.
pub const ROOT_KEY_HEADER: &str = "x-keyward-root-key";

/// What the protected location requires.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuthParams {
    /// Permission query the location requires, e.g. `orders.read`.
    permissions: Option<String>,
    /// Units the request consumes (default 1).
    cost: Option<u64>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks the client's key for nginx `auth_request`.
#[utoipa::path(get, path = "/v1/auth", tag = "verify", params(AuthParams,
        ("X-Keyward-Root-Key" = String, Header, description = "nginx's root key (keys.verify)"),
        ("X-Original-Method" = Option<String>, Header, description = "Method of the client request"),
        ("X-Original-URI" = Option<String>, Header, description = "URI of the client request"),
        ("X-Real-IP" = Option<String>, Header, description = "The client's address")),
    responses(
        (status = 204, description = "Admitted; identity and RateLimit headers set"),
        (status = 401, description = "No key, or the key does not verify", body = keyward_wire::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Refused: permission, route, IP, origin, or (with X-Keyward-Code) a limit or quota", body = keyward_wire::Problem, content_type = "application/problem+json"),
        (status = 400, description = "A query parameter is invalid, or X-Keyward-Root-Key is missing or not a root key with keys.verify (`auth_misconfigured`: the proxy is misconfigured)", body = keyward_wire::Problem, content_type = "application/problem+json"),
    ))]
pub async fn nginx_auth(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<AuthParams>,
) -> Result<Response, ApiError> {
    // nginx's own credential failing is a misconfiguration, not a bad client key: answer 400,
    // which nginx turns into a 500 for the client (any status but 2xx, 401 and 403), so it
    // shows instead of every client being told its key is bad. Not a 5xx of keyward's own:
    // anyone who reaches this endpoint can send a wrong header, and that is not keyward failing.
    if let Err(e) = state
        .engine
        .authenticate(header(&headers, ROOT_KEY_HEADER), "keys.verify", remote)
        .await
    {
        return Err(match e {
            keyward_engine::AuthError::Engine(engine) => engine.into(),
            refused => {
                tracing::error!(error = %refused, "the auth_request caller's X-Keyward-Root-Key does not authorize keys.verify");
                ApiError::new(
                    "auth_misconfigured",
                    "the X-Keyward-Root-Key sent by the proxy is not a valid root key with keys.verify",
                )
            }
        });
    }
    let Some(key) = presented_key(&headers) else {
        return Ok(missing_key().into_response());
    };
    let query = params
        .permissions
        .as_deref()
        .map(PermissionQuery::parse)
        .transpose()?;
    let uri = header(&headers, "x-original-uri");
    let request = VerifyRequest {
        query: query.as_ref(),
        method: header(&headers, "x-original-method"),
        path: uri,
        ip: header(&headers, "x-real-ip").and_then(|ip| ip.trim().parse().ok()),
        origin: header(&headers, "origin").or_else(|| header(&headers, "referer")),
    };
    let v = state
        .engine
        .verify_cost(key, &request, params.cost.unwrap_or(1))
        .await?;
    let mut response = match refusal(v.code) {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(error) => {
            let limited = matches!(v.code, VerifyCode::RateLimited | VerifyCode::UsageExceeded);
            let error = if limited {
                error.with_status(StatusCode::FORBIDDEN)
            } else {
                error
            };
            error.into_response()
        }
    };
    decorate(response.headers_mut(), &v);
    Ok(response)
}
