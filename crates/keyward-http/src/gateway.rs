//! The gateway: a reverse proxy that enforces keys in-process.
//!
//! Each route maps a path prefix to an upstream and says what the request needs (a permission
//! query, a cost, optionally a tenant and an environment). The gateway reads the key from
//! `Authorization: Bearer` or `X-API-Key` (or, only where a route allows it, the `api_key` query
//! parameter, which is logged as a warning), verifies it with limits and quota, removes it, and
//! forwards the request over a pooled connection with `X-Keyward-Key-Id`, `X-Keyward-Owner` and
//! `X-Keyward-Tenant`.
//!
//! The path is normalised once ([`keyward_core::path`]); the route is chosen, the key's
//! allowlist checked and the upstream addressed with that one normal form, and a path that
//! cannot be normalised safely is refused with 400 before any key is looked up.
//!
//! What the upstream sees of the client is what keyward saw, not what the client claims: `Host`
//! is the route's upstream authority (or its configured `host`), so a key cannot reach another
//! virtual host behind the same address; every client `X-Keyward-*` header is removed; the
//! forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP` and the other client-address
//! headers) and the URL and method override headers are removed and `X-Forwarded-For`,
//! `X-Forwarded-Host`, `X-Forwarded-Proto` and `X-Real-IP` set by keyward (see
//! [`crate::trusted_proxy`] for when a proxy's chain is kept). Refusals are problem+json: 401
//! (missing or invalid key), 403 (tenant, environment, permission, route, IP, origin), 429
//! (limit, quota) with `Retry-After` and the RateLimit fields. Upstream failures are 502,
//! timeouts 504, with no upstream detail in the body.

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
use keyward_core::path::{
    NormalPath, PathError, PathOptions, PathPrefix, longest_prefix, normalize,
};
use keyward_core::permission::PermissionQuery;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use keyward_engine::Keyward;

use crate::enforce::{
    API_KEY_HEADER, KEY_ID_HEADER, OWNER_HEADER, TENANT_HEADER, decorate, invalid_path,
    missing_key, presented_key, refusal,
};
use crate::error::ApiError;
use crate::extract::ClientAddr;
use crate::listener::Connections;
use crate::spans;
use crate::trusted_proxy::Resolved;
use tracing::Instrument as _;

/// Query parameter a route may accept keys in (off by default).
pub const QUERY_KEY_PARAM: &str = "api_key";

/// One gateway route.
#[derive(Debug, Clone)]
pub struct GatewayRoute {
    /// Requests whose normalised path starts with this prefix, segment by segment, use this
    /// route (ASCII case-insensitively unless the prefix is case-sensitive).
    pub prefix: PathPrefix,
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
    /// Accept `;` path parameters (matched by segment name, forwarded as sent); refused (400)
    /// by default, since servers disagree about them.
    pub allow_path_params: bool,
    /// Only keys of this tenant pass (TENANT_NOT_ALLOWED otherwise).
    pub tenant: Option<String>,
    /// Only keys of this environment pass (ENVIRONMENT_NOT_ALLOWED otherwise).
    pub environment: Option<String>,
    /// The `Host` sent upstream (`host[:port]`); the upstream's authority when `None`.
    pub host: Option<String>,
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Routes, matched by longest prefix (see [`choose_route`]).
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

/// Serves the gateway on `listener` under `connections`' timeouts, cap and trusted proxies
/// (see [`crate::listener`]) until `shutdown` resolves.
pub async fn serve_gateway(
    listener: tokio::net::TcpListener,
    engine: Arc<Keyward>,
    config: GatewayConfig,
    connections: Connections,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::listener::serve_router(
        listener,
        gateway_router(engine, config),
        connections,
        shutdown,
    )
    .await
}

/// How the gateway normalises request paths: parameters are accepted here and refused after
/// the route is chosen unless that route allows them, so that `admin;x` cannot choose a
/// route other than `admin` would.
const GATEWAY_PATH: PathOptions = PathOptions {
    allow_path_params: true,
};

/// The route for a normalised path: the one whose prefix matches the most segments. Pure, so a
/// fuzz oracle can check that a path and its normal form choose the same route.
pub fn choose_route<'a>(config: &'a GatewayConfig, path: &NormalPath) -> Option<&'a GatewayRoute> {
    longest_prefix(&config.routes, path, |r| &r.prefix)
}

/// The query string without the `api_key` parameter, and the key it carried.
fn split_query_key(query: &str) -> (String, Option<String>) {
    if query.is_empty() {
        return (String::new(), None);
    }
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

/// Headers that tell an upstream where a request came from, or what it "really" is: a client
/// must not set them. keyward sets the `X-Forwarded-*` family and `X-Real-IP` itself; the
/// URL and method overrides (honoured by some frameworks) would otherwise let a request reach
/// an endpoint or method other than the one its route and key were checked for.
const CLIENT_CLAIMS: [&str; 19] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// True for a header name the client may not send upstream. Names are compared with `_` read
/// as `-`, because CGI-style upstreams (and the frameworks on them) map both to the same
/// variable: `X_Keyward_Owner` would otherwise pass as `X-Keyward-Owner`.
fn is_client_claim(name: &HeaderName) -> bool {
    let name = name.as_str();
    let same = |protected: &str| {
        name.len() == protected.len()
            && name
                .bytes()
                .zip(protected.bytes())
                .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
    };
    crate::enforce::is_keyward_header(name) || CLIENT_CLAIMS.iter().any(|c| same(c))
}

fn clean_forward_headers(headers: &mut HeaderMap) {
    // Headers the client named in `Connection` are hop-by-hop too (RFC 9110 section 7.6.1).
    let mut drop: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    // One pass over what the client sent rather than a lookup per name that must not pass
    // (about thirty): each lookup by name parses and hashes it, and a request carries only a
    // few headers. The key never goes upstream, and clients cannot forge identity or forwarding
    // headers.
    drop.extend(
        headers
            .keys()
            .filter(|name| {
                HOP_BY_HOP.contains(&name.as_str())
                    || *name == header::AUTHORIZATION
                    || name.as_str() == API_KEY_HEADER
                    || is_client_claim(name)
            })
            .cloned(),
    );
    for name in drop {
        headers.remove(name);
    }
}

/// What keyward tells the upstream about a request, worked out from the client's headers
/// before they are cleaned.
struct Forwarding {
    host: Option<HeaderValue>,
    forwarded_host: Option<HeaderValue>,
    proto: HeaderValue,
    forwarded_for: Option<HeaderValue>,
    real_ip: Option<HeaderValue>,
}

impl Forwarding {
    fn of(headers: &HeaderMap, uri: &Uri, route: &GatewayRoute, from: Option<&Resolved>) -> Self {
        let host = route
            .host
            .as_deref()
            .or_else(|| route.upstream.authority().map(|a| a.as_str()))
            .and_then(|h| HeaderValue::from_str(h).ok());
        // The Host the client asked for, if it is a well-formed authority (no user information).
        let forwarded_host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .filter(|h| !h.contains('@'))
            .filter(|h| h.parse::<axum::http::uri::Authority>().is_ok())
            .and_then(|h| HeaderValue::from_str(h).ok());
        // keyward speaks plain HTTP; a trusted proxy in front may have terminated TLS and says so.
        let proto = from
            .filter(|f| f.peer_trusted)
            .and_then(|_| headers.get("x-forwarded-proto"))
            .filter(|p| *p == "https" || *p == "http")
            .cloned()
            .unwrap_or(HeaderValue::from_static("http"));
        Self {
            host,
            forwarded_host,
            proto,
            forwarded_for: from.and_then(|f| crate::trusted_proxy::forwarded_for(headers, f)),
            real_ip: from.and_then(|f| HeaderValue::from_str(&f.client.to_string()).ok()),
        }
    }

    fn apply(self, headers: &mut HeaderMap) {
        if let Some(host) = self.host {
            headers.insert(header::HOST, host);
        }
        // Names built at compile time: `from_static` at run time parses the name each call.
        const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
        const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
        const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
        const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
        let set = [
            (X_FORWARDED_HOST, self.forwarded_host),
            (X_FORWARDED_PROTO, Some(self.proto)),
            (X_FORWARDED_FOR, self.forwarded_for),
            (X_REAL_IP, self.real_ip),
        ];
        for (name, value) in set {
            if let Some(value) = value {
                headers.insert(name, value);
            }
        }
    }
}

async fn proxy(
    State(state): State<GatewayState>,
    ClientAddr(from): ClientAddr,
    request: Request,
) -> Response {
    let span = spans::request_span(spans::Server::Gateway, request.method());
    if !span.is_disabled() {
        // The route's configured prefix, never the request's own path (it may carry a key).
        let path = normalize(request.uri().path().as_bytes(), GATEWAY_PATH);
        if let Some(route) = path.ok().and_then(|p| choose_route(&state.config, &p)) {
            spans::record_route(&span, request.method(), route.prefix.as_str());
        }
    }
    let response = match forward(&state, from, request)
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
    from: Option<Resolved>,
    request: Request,
) -> Result<Response, Response> {
    let (mut parts, body) = request.into_parts();
    // Routes are chosen by prefix: a path an upstream reads differently from keyward (escapes,
    // case, dot segments, parameters) could reach another route's endpoint. So the route, the
    // allowlist and the upstream all see one normal form, and what has none is refused.
    let path =
        normalize(parts.uri.path().as_bytes(), GATEWAY_PATH).map_err(|e| invalid_path(e, None))?;
    let route = choose_route(&state.config, &path).ok_or_else(|| {
        ApiError::new("not_found", "no gateway route matches this path").into_response()
    })?;
    if path.has_params() && !route.allow_path_params {
        return Err(invalid_path(PathError::PathParameter, None));
    }
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
    let ip = from.map(|f| f.client);
    let verify = VerifyRequest {
        query: route.permissions.as_ref(),
        method: Some(parts.method.as_str()),
        path: Some(&path),
        ip,
        origin: origin.as_deref(),
        tenant: route.tenant.as_deref(),
        environment: route.environment.as_deref(),
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

    // Exactly the normal form the route and the allowlist were checked on, after the
    // upstream's own path (without its trailing `/`), built in one buffer.
    let base = route
        .upstream
        .path_and_query()
        .map_or("", |p| p.as_str())
        .trim_end_matches('/');
    let mut target = String::with_capacity(base.len() + path.as_str().len() + 1 + query.len());
    target.push_str(base);
    target.push_str(path.as_str());
    if !query.is_empty() {
        target.push('?');
        target.push_str(&query);
    }
    let mut upstream = route.upstream.clone().into_parts();
    upstream.path_and_query = Some(target.try_into().map_err(|_| {
        ApiError::new("bad_gateway", "the upstream URL is invalid").into_response()
    })?);
    let forwarding = Forwarding::of(&parts.headers, &parts.uri, route, from.as_ref());
    parts.uri = Uri::from_parts(upstream)
        .map_err(|_| ApiError::new("bad_gateway", "the upstream URL is invalid").into_response())?;
    clean_forward_headers(&mut parts.headers);
    forwarding.apply(&mut parts.headers);
    // The edge headers are built once: identity goes upstream, RateLimit fields back down.
    let mut edge = HeaderMap::new();
    decorate(&mut edge, &v);
    for (name, value) in &edge {
        if matches!(name.as_str(), KEY_ID_HEADER | OWNER_HEADER | TENANT_HEADER) {
            parts.headers.insert(name.clone(), value.clone());
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
        Ok(Err(e)) if crate::listener::is_body_read_timeout(&e) => {
            return Err(crate::extract::request_timeout().into_response());
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
    // One pass, as for the request: an upstream's answer rarely has any of them.
    let hop_by_hop: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(&name.as_str()))
        .cloned()
        .collect();
    for name in hop_by_hop {
        parts.headers.remove(name);
    }
    if state.config.ratelimit_headers_on_success && v.code == VerifyCode::Valid {
        for (name, value) in &edge {
            if matches!(name.as_str(), "ratelimit-policy" | "ratelimit") {
                parts.headers.insert(name.clone(), value.clone());
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
            prefix: PathPrefix::new(prefix, false).unwrap(),
            upstream: "http://127.0.0.1:1".parse().unwrap(),
            permissions: None,
            cost: 1,
            allow_query_key: false,
            timeout: Duration::from_secs(1),
            allow_path_params: false,
            tenant: None,
            environment: None,
            host: None,
        }
    }

    fn chosen<'a>(config: &'a GatewayConfig, path: &str) -> Option<&'a str> {
        let path = normalize(path.as_bytes(), GATEWAY_PATH).unwrap();
        choose_route(config, &path).map(|r| r.prefix.as_str())
    }

    #[test]
    fn longest_prefix_wins_at_segment_boundaries() {
        let config = GatewayConfig {
            routes: vec![route("/"), route("/orders"), route("/orders/admin")],
            ratelimit_headers_on_success: false,
        };
        assert_eq!(chosen(&config, "/orders/1"), Some("/orders"));
        assert_eq!(chosen(&config, "/orders/admin/x"), Some("/orders/admin"));
        assert_eq!(chosen(&config, "/ordersx"), Some("/"));
        let narrow = GatewayConfig {
            routes: vec![route("/orders")],
            ratelimit_headers_on_success: false,
        };
        assert_eq!(chosen(&narrow, "/ordersx"), None);
    }

    #[test]
    fn finding_1_every_spelling_of_a_path_chooses_its_route() {
        let config = GatewayConfig {
            routes: vec![route("/orders"), route("/orders/admin")],
            ratelimit_headers_on_success: false,
        };
        for spelling in [
            "/orders/admin/users",
            "/orders/%61dmin/users",
            "/orders/ADMIN/users",
            "/orders/admin;x/users",
            "/Orders/Admin/",
        ] {
            assert_eq!(
                chosen(&config, spelling),
                Some("/orders/admin"),
                "{spelling}"
            );
        }
    }

    /// The normal form keeps `%2B` and `%2A` apart from `+` and `*`, but upstreams decode
    /// them to `+` and `*`: a route whose prefix has either must be chosen for both spellings,
    /// or `/files/a%2Bb` falls under `/files` and reaches `/files/a+b` with `/files`' needs.
    #[test]
    fn review_encoded_plus_or_star_cannot_dodge_a_more_specific_route() {
        let config = GatewayConfig {
            routes: vec![
                route("/files"),
                route("/files/a+b"),
                route("/files/%2Ac"),
                route("/files/d%2Be"),
            ],
            ratelimit_headers_on_success: false,
        };
        for (spelling, route) in [
            ("/files/a+b/x", "/files/a+b"),
            ("/files/a%2Bb/x", "/files/a+b"),
            ("/files/a%2bb", "/files/a+b"),
            ("/files/A%2BB", "/files/a+b"),
            ("/files/*c", "/files/%2Ac"),
            ("/files/%2ac/x", "/files/%2Ac"),
            ("/files/d+e", "/files/d%2Be"),
            ("/files/a%20b", "/files"),
            ("/files/ab", "/files"),
        ] {
            assert_eq!(chosen(&config, spelling), Some(route), "{spelling}");
        }
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

    #[test]
    fn client_claims_go_in_every_spelling() {
        let mut headers = HeaderMap::new();
        for name in [
            "x-keyward-code",
            "x_keyward_owner",
            "x-keyward_tenant",
            "x-keyward-anything",
            "x-forwarded-host",
            "x_forwarded_for",
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "x-original-url",
            "x-http-method-override",
            "x-listed",
        ] {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("forged"),
            );
        }
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Listed"),
        );
        headers.insert("x-keywardish", HeaderValue::from_static("kept"));
        headers.insert("x-forwarded", HeaderValue::from_static("kept"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        clean_forward_headers(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-forwarded", "x-keywardish"]);
    }
}
