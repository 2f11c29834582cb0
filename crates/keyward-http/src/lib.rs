//! keyward's HTTP API: the only crate that knows HTTP and JSON.
//!
//! [`router`] builds the axum router over an [`AppState`]; it is kept apart from serving so
//! tests can drive it directly or boot it on port 0 with [`serve`]. Every handler's required
//! root permission is part of its signature ([`extract::Authorized`]), every error is an
//! RFC 9457 problem with a stable code ([`error::ERROR_CODES`]), and the OpenAPI document is
//! generated from the handlers ([`openapi_json`]) and committed as `openapi.json`.

pub mod audit;
pub mod auth;
mod convert;
pub mod enforce;
pub mod error;
pub mod ext_authz;
pub mod extract;
pub mod gateway;
mod hot;
pub mod keys;
mod links;
pub mod listener;
pub mod plans;
pub mod prometheus;
pub mod proxy_protocol;
pub mod reports;
mod responses;
pub mod root_keys;
mod spans;
pub mod system;
pub mod trusted_proxy;
pub mod usage;
mod verify_json;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keyward_engine::Keyward;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ApiError;
use crate::links::Links;
use crate::responses::CommonResponses;

/// Largest accepted request body; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The service.
    pub engine: Arc<Keyward>,
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The router with `extra` routes behind the same layers (request log, panic catcher). Only
/// tests use it, for routes the product must not have, such as one that panics.
#[doc(hidden)]
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    prometheus::install();
    extra
        .route("/v1/keys", post(keys::create_key).get(keys::list_keys))
        .route("/v1/keys/verify", post(keys::verify_key))
        .route("/v1/auth", get(auth::nginx_auth))
        .route(
            "/v1/keys/{key_id}",
            get(keys::get_key).patch(keys::update_key),
        )
        .route("/v1/keys/{key_id}/rotate", post(keys::rotate_key))
        .route("/v1/keys/{key_id}/revoke", post(keys::revoke_key))
        .route(
            "/v1/keys/{key_id}/credits",
            post(keys::adjust_credits).get(keys::get_credits),
        )
        .route("/v1/plans", post(plans::create_plan).get(plans::list_plans))
        .route(
            "/v1/plans/{plan_id}",
            get(plans::get_plan)
                .put(plans::replace_plan)
                .delete(plans::delete_plan),
        )
        .route(
            "/v1/root-keys",
            post(root_keys::create_root_key).get(root_keys::list_root_keys),
        )
        .route(
            "/v1/root-keys/{key_id}/revoke",
            post(root_keys::revoke_root_key),
        )
        .route("/v1/reports/rotation", get(reports::rotation_report))
        .route("/v1/usage", get(usage::get_usage))
        .route("/v1/audit", get(audit::list_audit))
        .route("/v1/audit/verify", post(audit::verify_audit))
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/openapi.json", get(system::openapi_json))
        .route("/metrics", get(prometheus::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(log_request))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new("not_found", "no such endpoint; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        "method_not_allowed",
        "this endpoint does not accept that method; see /openapi.json",
    )
}

fn panic_response(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    // The payload may quote request data; it is not logged or returned.
    tracing::error!("a request handler panicked");
    ApiError::new("internal", "an internal error occurred; it has been logged").into_response()
}

/// Traces and logs each request by its route template, never the raw URI or headers (a key
/// pasted into a path or query must not reach the log or a trace): one span per request (see
/// [`spans`]) and one log line.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    logged(
        &method,
        route.as_ref().map(MatchedPath::as_str),
        next.run(request),
    )
    .await
}

/// Runs `handled`, the handling of one admin API request for `route` (a template, `None` when
/// no route matched), inside its request span, and logs it: what [`log_request`] does for the
/// router, and [`hot`] for the endpoints it serves itself.
async fn logged(
    method: &axum::http::Method,
    route: Option<&str>,
    handled: impl std::future::Future<Output = Response>,
) -> Response {
    let span = spans::request_span(spans::Server::Admin, method);
    let logged = tracing::enabled!(tracing::Level::INFO);
    // Nothing is captured when neither wants it: this runs on every request.
    if span.is_disabled() && !logged {
        return handled.await;
    }
    if let Some(route) = route {
        spans::record_route(&span, method, route);
    }
    let started = Instant::now();
    let response = handled.instrument(span.clone()).await;
    spans::record_status(&span, response.status());
    if logged {
        tracing::info!(
            %method,
            route = route.unwrap_or("<unmatched>"),
            status = response.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
    }
    response
}

/// Serves the API on `listener` under `connections`' timeouts, cap and trusted proxies (see
/// [`listener`]) until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    connections: listener::Connections,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_api(
        listener,
        state.clone(),
        router(state),
        connections,
        shutdown,
    )
    .await
}

/// Serves `router` (built over `state` by [`router`] or [`router_with`]) as [`serve`] does: with
/// the lean path of `POST /v1/keys/verify` and `GET /v1/auth` in front of it (the `hot`
/// module). Tests that add routes serve through it so they exercise the same path.
pub async fn serve_api(
    listener: TcpListener,
    state: AppState,
    router: Router,
    connections: listener::Connections,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener::serve_fronted(listener, hot::Hot(state), router, connections, shutdown).await
}

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "root_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A keyward root key (kwroot_...)"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "keyward", description = "Self-hosted API key service: issue, verify, rotate and revoke API keys."),
    paths(
        keys::create_key, keys::list_keys, keys::get_key, keys::update_key, keys::rotate_key, keys::revoke_key,
        keys::verify_key, auth::nginx_auth, keys::adjust_credits, keys::get_credits, plans::create_plan, plans::list_plans,
        plans::get_plan, plans::replace_plan, plans::delete_plan, root_keys::create_root_key, root_keys::list_root_keys, root_keys::revoke_root_key,
        audit::list_audit, audit::verify_audit, system::healthz, system::readyz, reports::rotation_report,
        usage::get_usage,
    ),
    modifiers(&SecurityAddon, &CommonResponses, &Links),
    tags(
        (name = "keys", description = "API key lifecycle"),
        (name = "verify", description = "Key verification"),
        (name = "plans", description = "Templates of limits, quota and permissions"),
        (name = "root-keys", description = "Credentials of the admin API"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "system", description = "Health and readiness"),
        (name = "usage", description = "Usage for billing"),
    )
)]
struct ApiDoc;

/// The OpenAPI 3.1 document, pretty-printed (the committed `openapi.json`).
pub fn openapi_json() -> String {
    let mut text = links::camel_case(ApiDoc::openapi().to_pretty_json().unwrap_or_default());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
        let generated = super::openapi_json();
        if std::env::var_os("KEYWARD_BLESS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "openapi.json is out of date; run `KEYWARD_BLESS=1 cargo test -p keyward-http` and commit it"
        );
        assert!(generated.contains("\"openapi\": \"3.1.0\""));
    }
}
