//! The gateway in front of a real upstream, both on port 0, sharing the test server's engine.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::routing::any;
use keyward_core::path::PathPrefix;
use keyward_core::permission::PermissionQuery;
use keyward_http::gateway::{GatewayConfig, GatewayRoute, serve_gateway};
use keyward_http::listener::Connections;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use keyward_testkit::http::Http;
use keyward_testkit::server::Server;

/// An upstream that reads the body and answers with the method, path, query, headers and body
/// length it received, or (under `/slow`) never answers.
pub(crate) async fn upstream() -> std::net::SocketAddr {
    async fn echo(request: Request) -> axum::Json<Value> {
        let (request, body) = request.into_parts();
        // The body is read whole first, as an upstream that takes uploads would.
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        let headers: serde_json::Map<String, Value> = request
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), Value::from(v.to_str().unwrap_or(""))))
            .collect();
        axum::Json(json!({
            "method": request.method.as_str(),
            "path": request.uri.path(),
            "query": request.uri.query(),
            "headers": headers,
            "body_bytes": body.len(),
        }))
    }
    async fn never() -> &'static str {
        std::future::pending::<()>().await;
        "unreachable"
    }
    let app = Router::new().route("/slow", any(never)).fallback(echo);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

pub(crate) fn route(
    prefix: &str,
    upstream: std::net::SocketAddr,
    permissions: Option<&str>,
) -> GatewayRoute {
    GatewayRoute {
        prefix: PathPrefix::new(prefix, false).unwrap(),
        upstream: format!("http://{upstream}").parse().unwrap(),
        permissions: permissions.map(|p| PermissionQuery::parse(p).unwrap()),
        cost: 1,
        allow_query_key: false,
        timeout: Duration::from_millis(300),
        allow_path_params: false,
        tenant: None,
        environment: None,
        host: None,
    }
}

pub(crate) async fn gateway(s: &Server, routes: Vec<GatewayRoute>) -> Http {
    Http::new(gateway_on(s, routes, Connections::defaults("gateway")).await)
}

/// The real gateway (`serve_gateway`) on port 0 with `connections`; returns its address.
pub(crate) async fn gateway_on(
    s: &Server,
    routes: Vec<GatewayRoute>,
    connections: Connections,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_gateway(
        listener,
        Arc::clone(&s.engine),
        GatewayConfig {
            routes,
            ratelimit_headers_on_success: true,
        },
        connections,
        std::future::pending(),
    ));
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn admitted_requests_reach_the_upstream_without_the_key() {
    let s = Server::start().await;
    let up = upstream().await;
    let mut open = route("/public", up, None);
    open.allow_query_key = true;
    let gw = gateway(&s, vec![route("/orders", up, Some("orders.read")), open]).await;
    let (key, key_id) = s
        .create(json!({"owner": "billing", "tenant": "acme", "permissions": ["orders.read"], "limits": [{"name": "per_minute", "limit": 10, "period_seconds": 60}]}))
        .await;
    let r = gw.raw("GET", "/orders/42?x=1", Some(&key), None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let echoed = r.json();
    assert_eq!(echoed["path"], "/orders/42");
    assert_eq!(echoed["query"], "x=1");
    assert_eq!(echoed["headers"]["x-keyward-key-id"], key_id.as_str());
    assert_eq!(echoed["headers"]["x-keyward-owner"], "billing");
    assert_eq!(echoed["headers"]["x-keyward-tenant"], "acme");
    assert_eq!(echoed["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(
        echoed["headers"].get("authorization").is_none(),
        "the key is stripped"
    );
    assert!(!String::from_utf8_lossy(&r.body).contains(&key));
    assert_eq!(r.header("ratelimit-policy"), "\"per_minute\";q=10;w=60");
    assert_eq!(r.header("ratelimit"), "\"per_minute\";r=9;t=0");

    // X-API-Key works too, and forged identity headers do not pass.
    let r = gw
        .raw_with_headers(
            "GET",
            "/orders/1",
            &[("x-api-key", &key), ("x-keyward-owner", "mallory")],
        )
        .await;
    assert_eq!(r.json()["headers"]["x-keyward-owner"], "billing");
    assert!(r.json()["headers"].get("x-api-key").is_none());

    // The query parameter only where a route allows it, and then removed before forwarding.
    let r = gw
        .raw("GET", &format!("/public/x?api_key={key}&y=2"), None, None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["query"], "y=2");
    gw.raw("GET", &format!("/orders/1?api_key={key}"), None, None)
        .await
        .problem(401, "missing_key");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_problems_with_stable_codes() {
    let s = Server::start().await;
    let up = upstream().await;
    let gw = gateway(&s, vec![route("/orders", up, Some("orders.read"))]).await;
    let (key, _) = s
        .create(json!({"owner": "o", "permissions": ["orders.read"], "limits": [{"name": "per_minute", "limit": 1, "period_seconds": 60}], "ip_allowlist": ["127.0.0.0/8"]}))
        .await;
    let (no_perm, _) = s.create(json!({"owner": "o"})).await;
    let (elsewhere, _) = s
        .create(json!({"owner": "o", "permissions": ["*"], "ip_allowlist": ["10.0.0.0/8"]}))
        .await;
    gw.raw("GET", "/orders/1", None, None)
        .await
        .problem(401, "missing_key");
    gw.raw("GET", "/orders/1", Some("kw_live_nope"), None)
        .await
        .problem(401, "malformed_key");
    let r = gw.raw("GET", "/orders/1", Some(&no_perm), None).await;
    r.problem(403, "insufficient_permissions");
    gw.raw("GET", "/orders/1", Some(&elsewhere), None)
        .await
        .problem(403, "ip_not_allowed");
    gw.raw("GET", "/nowhere", Some(&key), None)
        .await
        .problem(404, "not_found");
    for sneaky in ["/orders/../admin", "/orders//1", "/orders/%2e%2e/admin"] {
        gw.raw("GET", sneaky, Some(&key), None)
            .await
            .problem(400, "invalid_request");
    }
    assert_eq!(
        gw.raw("GET", "/orders/1", Some(&key), None).await.status,
        200
    );
    let limited = gw.raw("GET", "/orders/1", Some(&key), None).await;
    limited.problem(429, "rate_limited");
    assert_eq!(limited.header("retry-after"), "60");
    assert_eq!(limited.header("ratelimit"), "\"per_minute\";r=0;t=60");
    assert_eq!(
        limited.header("ratelimit-policy"),
        "\"per_minute\";q=1;w=60"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_are_502_and_504_without_details() {
    let s = Server::start().await;
    let up = upstream().await;
    // Port 1 on loopback: nothing listens there.
    let dead: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let gw = gateway(
        &s,
        vec![route("/dead", dead, None), route("/slow", up, None)],
    )
    .await;
    let (key, _) = s.create(json!({"owner": "o"})).await;
    let r = gw.raw("GET", "/dead/x", Some(&key), None).await;
    let body = r.problem(502, "bad_gateway");
    assert!(
        !body.to_string().contains("127.0.0.1:1") && !body.to_string().contains("refused"),
        "{body}"
    );
    gw.raw("GET", "/slow", Some(&key), None)
        .await
        .problem(504, "gateway_timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_n_admitted_through_the_gateway() {
    let s = Server::start().await;
    let up = upstream().await;
    let gw = gateway(&s, vec![route("/api", up, None)]).await;
    let (key, _) = s.create(json!({"owner": "o", "limits": [{"name": "per_hour", "limit": 30, "period_seconds": 3600}]})).await;
    let mut tasks = Vec::new();
    for _ in 0..120 {
        let (gw, key) = (gw.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            gw.raw("GET", "/api/x", Some(&key), None).await.status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 30);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 90);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_quota_is_a_429_with_its_ratelimit_item() {
    let s = Server::start().await;
    let up = upstream().await;
    let gw = gateway(&s, vec![route("/api", up, None)]).await;
    let (key, _) = s
        .create(json!({"owner": "o", "quota": {"credits": 1}}))
        .await;
    let ok = gw.raw("GET", "/api/x", Some(&key), None).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("ratelimit-policy"), "\"quota\";q=1");
    assert_eq!(ok.header("ratelimit"), "\"quota\";r=0");
    let spent = gw.raw("GET", "/api/x", Some(&key), None).await;
    spent.problem(429, "usage_exceeded");
    assert_eq!(spent.header("retry-after"), "3600");
    assert_eq!(spent.header("ratelimit"), "\"quota\";r=0;t=3600");
}

/// `keyward gateway --config` as a process: thread-per-core listeners plus the admin API.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_command_serves_routes_and_the_admin_api() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\n\n[[route]]\nprefix = \"/orders\"\nupstream = \"http://{up}\"\npermissions = \"orders.read\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let gateway = crate::KEYWARD.gateway(&config, dir.path());
    let admin = Http::new(gateway.addr_after("admin API listening on"));
    let gw = Http::new(gateway.addr);
    let root = gateway.root_key.clone().unwrap();
    let lines = &gateway.stdout_lines;
    assert!(lines.iter().any(|l| l.contains("(2 threads)")), "{lines:?}");
    let (key, _) = admin
        .create(&root, json!({"owner": "o", "permissions": ["orders.read"]}))
        .await;
    for _ in 0..4 {
        let r = gw.raw("GET", "/orders/1", Some(&key), None).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["headers"]["x-keyward-owner"], "o");
    }
    gw.raw("GET", "/orders/1", None, None)
        .await
        .problem(401, "missing_key");
    gateway.kill();
}

/// Issue 10, finding 5: well-formed keys cost nothing to mint, and each unknown one used to be
/// a store read. Through the gateway, an address presenting many unknown keys gets its
/// budget (401 `unknown_key`), then 429 `too_many_unknown_keys` with `Retry-After` and no
/// store read; a key the node has cached still passes from the same address (the budget is
/// consulted only when the store would be read), and the budget comes back.
#[tokio::test(flavor = "multi_thread")]
async fn finding_5_a_flood_of_unknown_keys_from_one_address_is_throttled() {
    let s = Server::start().await;
    let up = upstream().await;
    let gw = gateway(&s, vec![route("/api", up, None)]).await;
    let (key, _) = s.create(json!({"owner": "o"})).await;
    let unknown = || keyward_testkit::keys::stranger("kw_live");
    assert_eq!(gw.raw("GET", "/api/x", Some(&key), None).await.status, 200);
    let burst = keyward_engine::UnknownKeyBudget::default().burst;
    for _ in 0..burst {
        gw.raw("GET", "/api/x", Some(&unknown()), None)
            .await
            .problem(401, "unknown_key");
    }
    let throttled = gw.raw("GET", "/api/x", Some(&unknown()), None).await;
    throttled.problem(429, "too_many_unknown_keys");
    assert_eq!(throttled.header("retry-after"), "1");
    assert_eq!(gw.raw("GET", "/api/x", Some(&key), None).await.status, 200);
    s.clock.advance(time::Duration::seconds(1));
    gw.raw("GET", "/api/x", Some(&unknown()), None)
        .await
        .problem(401, "unknown_key");
}
