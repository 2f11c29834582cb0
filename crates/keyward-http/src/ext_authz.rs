//! Envoy `ext_authz`: a gRPC `envoy.service.auth.v3.Authorization/Check` server.
//!
//! Envoy sends the client's request attributes; keyward reads the key from the
//! `authorization: Bearer` or `x-api-key` header, the method and path, the peer address and
//! the `origin` (or `referer`) header. Per-route requirements come from Envoy's
//! `context_extensions` (`keyward_permissions`: a permission query; `keyward_cost`: units).
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
use keyward_core::permission::PermissionQuery;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use keyward_engine::{Keyward, Verification};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::enforce::{decorate, presented_key_in, refusal, status};

/// Context extension carrying the route's permission query.
pub const PERMISSIONS_EXTENSION: &str = "keyward_permissions";
/// Context extension carrying the route's cost.
pub const COST_EXTENSION: &str = "keyward_cost";

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
    let (_, problem) = detail_problem.problem();
    let mut builder = DeniedHttpResponseBuilder::new();
    builder.set_http_status(envoy_status);
    builder.add_header(
        "content-type",
        "application/problem+json",
        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
        false,
    );
    let mut headers = HeaderMap::new();
    if let Some(v) = v {
        decorate(&mut headers, v);
    }
    for (name, value) in &headers {
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
        let Some(key) = presented_key_in(|name| headers.get(name).map(String::as_str)) else {
            return Ok(Response::new(denied(
                VerifyCode::Malformed,
                crate::enforce::missing_key(),
                None,
            )));
        };
        let query = extensions
            .and_then(|e| e.get(PERMISSIONS_EXTENSION))
            .map(|q| PermissionQuery::parse(q))
            .transpose()
            .map_err(|e| Status::invalid_argument(format!("{PERMISSIONS_EXTENSION}: {e}")))?;
        let cost = extensions
            .and_then(|e| e.get(COST_EXTENSION))
            .map(|c| c.parse::<u64>())
            .transpose()
            .map_err(|_| {
                Status::invalid_argument(format!("{COST_EXTENSION} must be a whole number"))
            })?
            .unwrap_or(1);
        let path = http.map(|h| h.path.as_str());
        let verify = VerifyRequest {
            query: query.as_ref(),
            method: http.map(|h| h.method.as_str()),
            path,
            ip: request.get_client_address().and_then(|a| a.parse().ok()),
            origin: headers
                .get("origin")
                .or_else(|| headers.get("referer"))
                .map(String::as_str),
        };
        let v = match self.engine.verify_cost(key, &verify, cost).await {
            Ok(v) => v,
            Err(keyward_engine::EngineError::Invalid(field)) => {
                return Err(Status::invalid_argument(field.to_string()));
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
        for name in ["x-keyward-key-id", "x-keyward-owner", "x-keyward-tenant"] {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                ok.add_header(
                    name,
                    value,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
        }
        ok.remove_header("authorization");
        ok.remove_header("x-api-key");
        // Identity headers the client sent itself must not reach the upstream: the ones set
        // above overwrite theirs, any other x-keyward-* (a tenant for a key without one) goes.
        for name in client_headers
            .keys()
            .filter(|n| n.starts_with("x-keyward-"))
        {
            if !headers.contains_key(name.as_str()) {
                ok.remove_header(name.clone());
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
