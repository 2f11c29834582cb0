//! `GET /v1/auth`: the nginx `auth_request` endpoint.
//!
//! nginx sends a subrequest with the client's headers; keyward reads the key from
//! `Authorization: Bearer` or `X-API-Key`, the original request from `X-Original-Method`,
//! `X-Original-URI` and `X-Real-IP`, and the origin from `Origin` (or `Referer`). nginx itself
//! authenticates with a root key holding `keys.verify` in `X-Keyward-Root-Key` (set in the
//! nginx config), since `Authorization` belongs to the client.
//!
//! The location's requirements come from nginx: `permissions` and `cost` (and
//! `allow_path_params`) in the query string of the subrequest URL, and a required tenant and
//! environment in `X-Keyward-Require-Tenant` and `X-Keyward-Require-Environment`. nginx
//! passes the client's headers to the subrequest, so a client can send those two itself; that
//! is harmless, since they can only narrow what passes, and `proxy_set_header` replaces them.
//! Anything that loosens a check is a query parameter, which only the nginx config sets.
//!
//! Answers: 204 with identity and RateLimit headers; 401 (no or bad key) or 403 (tenant,
//! environment, permission, route, IP, origin). nginx turns any other status of an auth
//! subrequest into a 500, so limit and quota refusals are answered 403 with
//! `X-Keyward-Code: RATE_LIMITED` (or `USAGE_EXCEEDED`) and `Retry-After`, and an
//! `X-Original-URI` whose path cannot be normalised safely 403 `invalid_request` with
//! `X-Keyward-Code: INVALID_PATH`; the shipped nginx config (`examples/nginx/`) maps them back
//! to 429 and 400. An address over its budget of
//! unknown keys gets 403 with the problem code `too_many_unknown_keys` and `Retry-After`, for
//! the same reason.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_core::path::{PathOptions, normalize_target};
use keyward_core::permission::PermissionQuery;
use keyward_core::validate;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::enforce::{decorate, invalid_path, missing_key, presented_key, refusal};
use crate::error::ApiError;
use crate::extract::{ApiQuery, RemoteAddr};

/// Header carrying nginx's own root key.
pub const ROOT_KEY_HEADER: &str = "x-keyward-root-key";
/// Header carrying the tenant a location requires.
pub const REQUIRE_TENANT_HEADER: &str = "x-keyward-require-tenant";
/// Header carrying the environment a location requires.
pub const REQUIRE_ENVIRONMENT_HEADER: &str = "x-keyward-require-environment";

/// What the protected location requires.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuthParams {
    /// Permission query the location requires, e.g. `orders.read`.
    permissions: Option<String>,
    /// Units the request consumes (default 1).
    cost: Option<u64>,
    /// Accept `;` path parameters in `X-Original-URI` (refused by default).
    allow_path_params: Option<bool>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A required tenant or environment: an identifier, sent at most once.
fn requirement(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::field(name, "must be sent at most once"));
    }
    let value = value
        .to_str()
        .map_err(|_| ApiError::field(name, "must be an identifier"))?;
    Ok(Some(validate::ident(name, value)?))
}

/// Checks the client's key for nginx `auth_request`.
#[utoipa::path(get, path = "/v1/auth", tag = "verify", params(AuthParams,
        ("X-Keyward-Root-Key" = String, Header, description = "nginx's root key (keys.verify)"),
        ("X-Original-Method" = Option<String>, Header, description = "Method of the client request"),
        ("X-Original-URI" = Option<String>, Header, description = "URI of the client request"),
        ("X-Real-IP" = Option<String>, Header, description = "The client's address"),
        ("X-Keyward-Require-Tenant" = Option<String>, Header, description = "Only keys of this tenant pass"),
        ("X-Keyward-Require-Environment" = Option<String>, Header, description = "Only keys of this environment pass")),
    responses(
        (status = 204, description = "Admitted; identity and RateLimit headers set"),
        (status = 400, description = "The proxy's request is invalid: permission query, parameters or a requirement header, or X-Keyward-Root-Key is missing or not a root key with keys.verify (`auth_misconfigured`: the proxy is misconfigured)", body = keyward_wire::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or the key does not verify", body = keyward_wire::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Refused: tenant, environment, permission, route, IP, origin, (with X-Keyward-Code) a limit, a quota or a path that cannot be normalised (INVALID_PATH), or too many unknown keys from the address", body = keyward_wire::Problem, content_type = "application/problem+json"),
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
    let principal = match state
        .engine
        .authenticate(header(&headers, ROOT_KEY_HEADER), "keys.verify", remote)
        .await
    {
        Ok(principal) => principal,
        Err(e) => {
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
    };
    let query = params
        .permissions
        .as_deref()
        .map(PermissionQuery::parse)
        .transpose()?;
    let tenant = requirement(&headers, REQUIRE_TENANT_HEADER)?;
    let environment = requirement(&headers, REQUIRE_ENVIRONMENT_HEADER)?;
    // The raw bytes: a path nginx passes with bytes outside ASCII is percent-encoded by the
    // normaliser, not taken for an absent path (which a key without routes would pass with).
    let options = PathOptions {
        allow_path_params: params.allow_path_params.unwrap_or(false),
    };
    let path = match headers.get("x-original-uri") {
        Some(uri) => match normalize_target(uri.as_bytes(), options) {
            Ok(path) => Some(path),
            Err(e) => return Ok(invalid_path(e, Some(StatusCode::FORBIDDEN))),
        },
        None => None,
    };
    let Some(key) = presented_key(&headers) else {
        return Ok(missing_key().into_response());
    };
    let request = VerifyRequest {
        query: query.as_ref(),
        method: header(&headers, "x-original-method"),
        path: path.as_ref(),
        ip: header(&headers, "x-real-ip").and_then(|ip| ip.trim().parse().ok()),
        origin: header(&headers, "origin").or_else(|| header(&headers, "referer")),
        tenant: tenant.as_deref(),
        environment: environment.as_deref(),
    };
    let v = state
        .engine
        .verify_as(&principal, key, &request, params.cost.unwrap_or(1))
        .await
        .map_err(|e| {
            // Like a limit, the per-address budget of unknown keys answers 403 here (nginx
            // would turn a 429 into a 500), with its problem code and Retry-After.
            let throttled = matches!(e, keyward_engine::EngineError::TooManyUnknownKeys { .. });
            let error = ApiError::from(e);
            if throttled {
                error.with_status(StatusCode::FORBIDDEN)
            } else {
                error
            }
        })?;
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
