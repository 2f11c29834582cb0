//! The span of one HTTP request, for the admin API and the gateway alike (see
//! docs/observability.md, "Traces"). It names the request by its method and route template (the admin API's matched
//! route, or the gateway route's configured prefix), never by the raw URI: a key pasted into a
//! path or a query string must not reach a trace. Without a trace exporter the span is
//! disabled and every function here returns at once.

use axum::http::{Method, StatusCode};
use tracing::Span;
use tracing::field::Empty;

/// Which server a request span belongs to (`keyward.server`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Server {
    Admin,
    Gateway,
}

/// Opens the span of a request, named by its method until [`record_route`] names it by route;
/// [`record_status`] completes it.
pub(crate) fn request_span(server: Server, method: &Method) -> Span {
    let server = match server {
        Server::Admin => "admin",
        Server::Gateway => "gateway",
    };
    tracing::info_span!(
        "http_request",
        otel.name = method.as_str(),
        otel.kind = "server",
        otel.status_code = Empty,
        keyward.server = server,
        http.request.method = method.as_str(),
        http.route = Empty,
        http.response.status_code = Empty,
    )
}

/// Records the route template and names the span `METHOD ROUTE`, as the HTTP semantic
/// conventions do (a request that matched no route keeps the name `METHOD`). Must be called
/// before the span is first entered: the OpenTelemetry layer fixes the name then.
pub(crate) fn record_route(span: &Span, method: &Method, route: &str) {
    if span.is_disabled() {
        return;
    }
    span.record("http.route", route);
    span.record("otel.name", format!("{method} {route}"));
}

/// Records the response status; a 5xx marks the span as failed (4xx answers are the client's
/// error, not the server's, so they leave the status unset).
pub(crate) fn record_status(span: &Span, status: StatusCode) {
    if span.is_disabled() {
        return;
    }
    // As an i64: the OpenTelemetry layer would record an unsigned number as text.
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
}
