//! Envoy `ext_authz`: a gRPC `envoy.service.auth.v3.Authorization/Check` server.
//!
//! Envoy sends the client's request attributes; keyward reads the key from the
//! `authorization: Bearer` or `x-api-key` header, the method and path, the peer address and
//! the `origin` (or `referer`) header. Per-route requirements come from Envoy's
//! `context_extensions`: `keyward_permissions` (a permission query), `keyward_cost` (units),
//! `keyward_tenant` and `keyward_environment` (only keys of that tenant or environment pass),
//! `keyward_allow_path_params` (`true` accepts `;` path parameters).
//!
//! The path is normalised as the gateway does ([`keyward_core::path`]). What keyward cannot
//! check as asked is a denial, never a gRPC error (which Envoy's `failure_mode_allow` would
//! turn into an admission), with HTTP 400 under the gRPC status INVALID_ARGUMENT: a path that
//! cannot be normalised safely (`invalid_request`, `x-keyward-code: INVALID_PATH`), a malformed
//! extension (the route's misconfiguration, `invalid_field` naming it), and a request the engine
//! refuses as invalid, such as a cost above a limit's burst.
//!
//! Allowed: gRPC OK with `x-keyward-key-id`, `x-keyward-owner`, `x-keyward-tenant` added to the
//! upstream request, the key headers removed, and the RateLimit fields added to the response.
//! Denied: 401/403/429 with a problem+json body, `x-keyward-code`, `Retry-After` and the
//! RateLimit fields, under the gRPC status UNAUTHENTICATED, PERMISSION_DENIED or
//! RESOURCE_EXHAUSTED.
//!
//! The gRPC listener has no authentication of its own (Envoy's ext_authz filter sends none by
//! default): bind it to loopback or a private interface that only Envoy reaches.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::HeaderMap;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use keyward_core::path::{PathError, PathOptions, normalize_target};
use keyward_core::permission::PermissionQuery;
use keyward_core::validate;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use keyward_engine::{Keyward, Verification};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::enforce::{
    CODE_HEADER, INVALID_PATH_CODE, KEY_ID_HEADER, OWNER_HEADER, TENANT_HEADER, decorate,
    is_keyward_header, presented_key_in, refusal, status,
};

/// Context extension carrying the route's permission query.
pub const PERMISSIONS_EXTENSION: &str = "keyward_permissions";
/// Context extension carrying the route's cost.
pub const COST_EXTENSION: &str = "keyward_cost";
/// Context extension carrying the tenant the route requires.
pub const TENANT_EXTENSION: &str = "keyward_tenant";
/// Context extension carrying the environment the route requires.
pub const ENVIRONMENT_EXTENSION: &str = "keyward_environment";
/// Context extension that accepts `;` path parameters on the route (`true` or `false`).
pub const PATH_PARAMS_EXTENSION: &str = "keyward_allow_path_params";

/// The `Authorization` service over an engine.
pub struct ExtAuthz {
    engine: Arc<Keyward>,
}

impl ExtAuthz {
    /// A service answering from `engine`.
    pub fn new(engine: Arc<Keyward>) -> Self {
        Self { engine }
    }
}

/// Serves `Authorization/Check` on `listener` until `shutdown` resolves.
pub async fn serve_ext_authz(
    listener: TcpListener,
    engine: Arc<Keyward>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(ExtAuthz::new(engine)))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
}

fn denied(
    code: VerifyCode,
    detail_problem: crate::error::ApiError,
    v: Option<&Verification>,
) -> CheckResponse {
    let http = status(code);
    let grpc = match http.as_u16() {
        401 => Status::unauthenticated("the API key does not verify"),
        429 => Status::resource_exhausted("a limit or quota of the API key was reached"),
        _ => Status::permission_denied("the API key may not make this request"),
    };
    let envoy_status = match http.as_u16() {
        401 => HttpStatusCode::Unauthorized,
        429 => HttpStatusCode::TooManyRequests,
        _ => HttpStatusCode::Forbidden,
    };
    let mut headers = HeaderMap::new();
    if let Some(v) = v {
        decorate(&mut headers, v);
    }
    denial(grpc, envoy_status, detail_problem, &headers)
}

/// The denial of a request whose path cannot be normalised safely.
fn denied_path(error: PathError) -> CheckResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        CODE_HEADER,
        axum::http::HeaderValue::from_static(INVALID_PATH_CODE),
    );
    denial(
        Status::invalid_argument("the request path cannot be checked safely"),
        HttpStatusCode::BadRequest,
        crate::error::ApiError::new(
            "invalid_request",
            format!("the request path cannot be checked safely: {error}"),
        ),
        &headers,
    )
}

/// The denial of a check keyward cannot carry out as asked: a context extension that does not
/// parse (the route's misconfiguration) or a request the engine refuses as invalid (a cost above
/// a limit's burst). An answer, never a gRPC error: Envoy's `failure_mode_allow` lets a request
/// through when the check *fails*, and these must not admit anything.
fn denied_invalid(problem: crate::error::ApiError) -> Response<CheckResponse> {
    Response::new(denial(
        Status::invalid_argument("the check request is invalid"),
        HttpStatusCode::BadRequest,
        problem,
        &HeaderMap::new(),
    ))
}

fn denial(
    grpc: Status,
    envoy_status: HttpStatusCode,
    detail_problem: crate::error::ApiError,
    headers: &HeaderMap,
) -> CheckResponse {
    let (_, problem) = detail_problem.problem();
    let mut builder = DeniedHttpResponseBuilder::new();
    builder.set_http_status(envoy_status);
    builder.add_header(
        "content-type",
        "application/problem+json",
        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
        false,
    );
    for (name, value) in headers {
        if let Ok(value) = value.to_str() {
            builder.add_header(
                name.as_str(),
                value,
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                false,
            );
        }
    }
    builder.set_body(String::from_utf8(problem).unwrap_or_default());
    let mut response = CheckResponse::with_status(grpc);
    response.set_http_response(builder);
    response
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let empty = HashMap::new();
        let headers = request.get_client_headers().unwrap_or(&empty);
        let client_headers = headers;
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let extensions = request.attributes.as_ref().map(|a| &a.context_extensions);
        let misconfigured = |name: &str, detail: String| {
            Ok(denied_invalid(crate::error::ApiError::field(name, detail)))
        };
        let query = match extensions
            .and_then(|e| e.get(PERMISSIONS_EXTENSION))
            .map(|q| PermissionQuery::parse(q))
            .transpose()
        {
            Ok(query) => query,
            Err(e) => return misconfigured(PERMISSIONS_EXTENSION, e.to_string()),
        };
        let cost = match extensions
            .and_then(|e| e.get(COST_EXTENSION))
            .map(|c| c.parse::<u64>())
            .transpose()
        {
            Ok(cost) => cost.unwrap_or(1),
            Err(_) => return misconfigured(COST_EXTENSION, "must be a whole number".into()),
        };
        let requirement = |name: &str| {
            extensions
                .and_then(|e| e.get(name))
                .map(|v| validate::ident(name, v))
                .transpose()
        };
        let (tenant, environment) = match (
            requirement(TENANT_EXTENSION),
            requirement(ENVIRONMENT_EXTENSION),
        ) {
            (Ok(tenant), Ok(environment)) => (tenant, environment),
            (Err(e), _) | (_, Err(e)) => return Ok(denied_invalid(e.into())),
        };
        let allow_path_params = match extensions.and_then(|e| e.get(PATH_PARAMS_EXTENSION)) {
            None => false,
            Some(v) => match v.parse::<bool>() {
                Ok(allow) => allow,
                Err(_) => {
                    return misconfigured(PATH_PARAMS_EXTENSION, "must be true or false".into());
                }
            },
        };
        // Envoy's `path` is the request target, query included.
        let path = match http
            .map(|h| normalize_target(h.path.as_bytes(), PathOptions { allow_path_params }))
        {
            Some(Err(e)) => return Ok(Response::new(denied_path(e))),
            Some(Ok(path)) => Some(path),
            None => None,
        };
        let Some(key) = presented_key_in(|name| headers.get(name).map(String::as_str)) else {
            return Ok(Response::new(denied(
                VerifyCode::Malformed,
                crate::enforce::missing_key(),
                None,
            )));
        };
        let verify = VerifyRequest {
            query: query.as_ref(),
            method: http.map(|h| h.method.as_str()),
            path: path.as_ref(),
            ip: request.get_client_address().and_then(|a| a.parse().ok()),
            origin: headers
                .get("origin")
                .or_else(|| headers.get("referer"))
                .map(String::as_str),
            tenant: tenant.as_deref(),
            environment: environment.as_deref(),
        };
        let v = match self.engine.verify_cost(key, &verify, cost).await {
            Ok(v) => v,
            Err(e @ keyward_engine::EngineError::Invalid(_)) => {
                return Ok(denied_invalid(e.into()));
            }
            Err(e @ keyward_engine::EngineError::TooManyUnknownKeys { .. }) => {
                // Answered like a limit (429, RESOURCE_EXHAUSTED), with its own problem code.
                return Ok(Response::new(denied(
                    VerifyCode::RateLimited,
                    e.into(),
                    None,
                )));
            }
            Err(e) => {
                tracing::error!(error = %e, "ext_authz check failed");
                return Err(Status::unavailable(
                    "keyward could not verify the key; retry",
                ));
            }
        };
        if let Some(problem) = refusal(v.code) {
            return Ok(Response::new(denied(v.code, problem, Some(&v))));
        }
        let mut headers = HeaderMap::new();
        decorate(&mut headers, &v);
        let mut ok = OkHttpResponseBuilder::new();
        let mut identity: Vec<&str> = Vec::with_capacity(3);
        for name in [KEY_ID_HEADER, OWNER_HEADER, TENANT_HEADER] {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                ok.add_header(
                    name,
                    value,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
                identity.push(name);
            }
        }
        ok.remove_header("authorization");
        ok.remove_header("x-api-key");
        // Every x-keyward-* header the client sent itself goes (in any case, and with `_` for
        // `-`), except the identity headers set above, which overwrite the client's: removing
        // those too could remove keyward's own, depending on the order Envoy applies the two.
        for name in client_headers.keys().filter(|n| is_keyward_header(n)) {
            if !identity.iter().any(|set| name.eq_ignore_ascii_case(set)) {
                ok.remove_header(name.to_ascii_lowercase());
            }
        }
        for name in ["ratelimit-policy", "ratelimit"] {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                ok.add_response_header(
                    name,
                    value,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
        }
        let mut response = CheckResponse::with_status(Status::ok("admitted"));
        response.set_http_response(ok);
        Ok(Response::new(response))
    }
}
