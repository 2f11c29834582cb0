//! The gateway: a reverse proxy that enforces keys in-process.
//!
//! Each route maps a path prefix to an upstream and says what the request needs (a permission
//! query, a cost). The gateway reads the key from `Authorization: Bearer` or `X-API-Key` (or,
//! only where a route allows it, the `api_key` query parameter, which is logged as a warning),
//! verifies it with limits and quota, removes it, and forwards the request over a pooled
//! connection with `X-Keyward-Key-Id`, `X-Keyward-Owner` and `X-Keyward-Tenant`. Refusals are
//! problem+json: 401 (missing or invalid key), 403 (permission, route, IP, origin), 429 (limit,
//! quota) with `Retry-After` and the RateLimit fields. Upstream failures are 502, timeouts 504,
//! with no upstream detail in the body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keyward_core::permission::PermissionQuery;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use keyward_engine::Keyward;

use crate::enforce::{API_KEY_HEADER, decorate, missing_key, presented_key, refusal};
use crate::error::ApiError;
use crate::extract::RemoteAddr;
use crate::spans;
use tracing::Instrument as _;

/// Query parameter a route may accept keys in (off by default).
pub const QUERY_KEY_PARAM: &str = "api_key";

/// One gateway route.
#[derive(Debug, Clone)]
pub struct GatewayRoute {
    /// Requests whose path starts with this prefix (at a `/` boundary) use this route.
    pub prefix: String,
    /// Base URL of the upstream, `http://host:port` (plain HTTP).
    pub upstream: Uri,
    /// Permission query the route requires.
    pub permissions: Option<PermissionQuery>,
    /// Units each request consumes (default 1).
    pub cost: u64,
    /// Accept the key in the `api_key` query parameter (discouraged: URLs end up in logs).
    pub allow_query_key: bool,
    /// Longest wait for the upstream's response headers.
    pub timeout: Duration,
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Routes, matched by longest prefix.
    pub routes: Vec<GatewayRoute>,
    /// Add RateLimit headers to successful responses too.
    pub ratelimit_headers_on_success: bool,
}

#[derive(Clone)]
struct GatewayState {
    engine: Arc<Keyward>,
    config: Arc<GatewayConfig>,
    client: Client<HttpConnector, Body>,
}

/// Builds the gateway router over an engine.
pub fn gateway_router(engine: Arc<Keyward>, config: GatewayConfig) -> Router {
    crate::prometheus::install();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector);
    let state = GatewayState {
        engine,
        config: Arc::new(config),
        client,
    };
    Router::new().fallback(proxy).with_state(state)
}

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve_gateway(
    listener: tokio::net::TcpListener,
    engine: Arc<Keyward>,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = gateway_router(engine, config).into_make_service_with_connect_info::<SocketAddr>();
    // Small answers go out at once rather than waiting on Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn route_for<'a>(config: &'a GatewayConfig, path: &str) -> Option<&'a GatewayRoute> {
    config
        .routes
        .iter()
        .filter(|r| {
            // A prefix matches at a segment boundary: `/orders` covers `/orders` and
            // `/orders/1`, not `/ordersx`.
            let prefix = r.prefix.trim_end_matches('/');
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|r| r.prefix.len())
}

/// The query string without the `api_key` parameter, and the key it carried.
fn split_query_key(query: &str) -> (String, Option<String>) {
    let mut key = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((QUERY_KEY_PARAM, value)) => {
                key = Some(value.to_owned());
                false
            }
            _ => !pair.is_empty(),
        })
        .collect();
    (kept.join("&"), key)
}

/// Headers that describe one connection and must not be forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn clean_forward_headers(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // The key never goes upstream, and clients cannot forge identity headers.
    headers.remove(header::AUTHORIZATION);
    headers.remove(API_KEY_HEADER);
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-keyward-"))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

async fn proxy(
    State(state): State<GatewayState>,
    RemoteAddr(remote): RemoteAddr,
    request: Request,
) -> Response {
    let span = spans::request_span(spans::Server::Gateway, request.method());
    if !span.is_disabled() {
        // The route's configured prefix, never the request's own path (it may carry a key).
        let path = request.uri().path();
        if let Some(route) = keyward_core::route::is_canonical_path(path)
            .then(|| route_for(&state.config, path))
            .flatten()
        {
            spans::record_route(&span, request.method(), &route.prefix);
        }
    }
    let response = match forward(&state, remote, request)
        .instrument(span.clone())
        .await
    {
        Ok(response) => response,
        Err(response) => response,
    };
    spans::record_status(&span, response.status());
    response
}

async fn forward(
    state: &GatewayState,
    remote: Option<std::net::IpAddr>,
    request: Request,
) -> Result<Response, Response> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    if !keyward_core::route::is_canonical_path(&path) {
        // Routes are chosen by prefix: a path an upstream would normalise differently (dot
        // segments, empty segments, encoded separators) could reach another route's endpoint.
        return Err(ApiError::new(
            "invalid_request",
            "the request path is not in canonical form",
        )
        .into_response());
    }
    let route = route_for(&state.config, &path).ok_or_else(|| {
        ApiError::new("not_found", "no gateway route matches this path").into_response()
    })?;
    let (query, query_key) = split_query_key(parts.uri.query().unwrap_or(""));
    let header_key = presented_key(&parts.headers).map(str::to_owned);
    let key = match (header_key, query_key) {
        (Some(key), _) => key,
        (None, Some(key)) if route.allow_query_key => {
            tracing::warn!(route = %route.prefix, "API key sent in the query string");
            metrics::counter!(keyward_engine::telemetry::QUERY_KEY_WARNINGS).increment(1);
            key
        }
        _ => return Err(missing_key().into_response()),
    };
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .or_else(|| parts.headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let ip = remote;
    let verify = VerifyRequest {
        query: route.permissions.as_ref(),
        method: Some(parts.method.as_str()),
        path: Some(&path),
        ip,
        origin: origin.as_deref(),
    };
    let v = state
        .engine
        .verify_cost(&key, &verify, route.cost)
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    if let Some(error) = refusal(v.code) {
        let mut response = error.into_response();
        decorate(response.headers_mut(), &v);
        return Err(response);
    }

    let path_and_query = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    let upstream = format!(
        "{}{}",
        route.upstream.to_string().trim_end_matches('/'),
        path_and_query
    );
    parts.uri = upstream
        .parse()
        .map_err(|_| ApiError::new("bad_gateway", "the upstream URL is invalid").into_response())?;
    clean_forward_headers(&mut parts.headers);
    // The edge headers are built once: identity goes upstream, RateLimit fields back down.
    let mut edge = HeaderMap::new();
    decorate(&mut edge, &v);
    for name in ["x-keyward-key-id", "x-keyward-owner", "x-keyward-tenant"] {
        if let Some(value) = edge.get(name) {
            parts
                .headers
                .insert(HeaderName::from_static(name), value.clone());
        }
    }
    if let Some(ip) = &remote {
        let forwarded = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(previous) => format!("{previous}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded) {
            parts
                .headers
                .insert(HeaderName::from_static("x-forwarded-for"), value);
        }
    }
    let upstream_request = Request::from_parts(parts, body);
    let response = match tokio::time::timeout(route.timeout, state.client.request(upstream_request))
        .await
    {
        Err(_) => {
            return Err(
                ApiError::new("gateway_timeout", "the upstream did not answer in time")
                    .into_response(),
            );
        }
        Ok(Err(e)) => {
            tracing::warn!(route = %route.prefix, error = %e, "upstream request failed");
            return Err(
                ApiError::new("bad_gateway", "the upstream could not be reached").into_response(),
            );
        }
        Ok(Ok(response)) => response,
    };
    let (mut parts, body) = response.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    if state.config.ratelimit_headers_on_success && v.code == VerifyCode::Valid {
        for name in ["ratelimit-policy", "ratelimit"] {
            if let Some(value) = edge.get(name) {
                parts
                    .headers
                    .insert(HeaderName::from_static(name), value.clone());
            }
        }
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str) -> GatewayRoute {
        GatewayRoute {
            prefix: prefix.into(),
            upstream: "http://127.0.0.1:1".parse().unwrap(),
            permissions: None,
            cost: 1,
            allow_query_key: false,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn longest_prefix_wins_at_segment_boundaries() {
        let config = GatewayConfig {
            routes: vec![route("/"), route("/orders"), route("/orders/admin")],
            ratelimit_headers_on_success: false,
        };
        assert_eq!(route_for(&config, "/orders/1").unwrap().prefix, "/orders");
        assert_eq!(
            route_for(&config, "/orders/admin/x").unwrap().prefix,
            "/orders/admin"
        );
        assert_eq!(route_for(&config, "/ordersx").unwrap().prefix, "/");
        let narrow = GatewayConfig {
            routes: vec![route("/orders")],
            ratelimit_headers_on_success: false,
        };
        assert!(route_for(&narrow, "/ordersx").is_none());
    }

    #[test]
    fn the_query_key_is_removed() {
        assert_eq!(
            split_query_key("a=1&api_key=k&b=2"),
            ("a=1&b=2".to_owned(), Some("k".to_owned()))
        );
        assert_eq!(split_query_key(""), (String::new(), None));
    }

    #[test]
    fn forwarded_headers_lose_the_key_and_forged_identity() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer secret"),
        );
        headers.insert(API_KEY_HEADER, HeaderValue::from_static("secret"));
        headers.insert("x-keyward-owner", HeaderValue::from_static("forged"));
        headers.insert("connection", HeaderValue::from_static("close"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        clean_forward_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("accept"));
    }
}
