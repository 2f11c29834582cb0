//! Issue 10, findings 1, 6 and 13, at all three edges: a request path is normalised once (and
//! refused when it cannot be), the route and the key's allowlist are chosen on that normal
//! form, the gateway forwards exactly it, and a route can require a tenant and environment.
//! The gateway runs in front of the real echo upstream of `gateway.rs`.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ext_authz::{check_request, outcome};
use crate::gateway::{gateway, route, upstream};
use crate::limits::verifier;
use keyward_testkit::http::Http;
use keyward_testkit::server::Server;

/// Sends `METHOD target HTTP/1.1` exactly as given, for targets an HTTP client library would
/// refuse to build (a backslash, a NUL byte), and returns the status and the body.
async fn send_target(http: &Http, target: &[u8], key: &str) -> (u16, String) {
    let addr = http.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    (status, text)
}

/// `/orders` needs `orders.read`, `/orders/admin` needs `orders.admin`, one upstream.
async fn orders_gateway(s: &Server) -> Http {
    let up = upstream().await;
    gateway(
        s,
        vec![
            route("/orders", up, Some("orders.read")),
            route("/orders/admin", up, Some("orders.admin")),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_1_no_spelling_of_a_path_escapes_the_stricter_route() {
    let s = Server::start().await;
    let gw = orders_gateway(&s).await;
    let (reader, _) = s
        .create(json!({"owner": "o", "permissions": ["orders.read"]}))
        .await;
    let (admin, _) = s
        .create(json!({"owner": "o", "permissions": ["orders.read", "orders.admin"]}))
        .await;
    assert_eq!(
        gw.raw("GET", "/orders/1", Some(&reader), None).await.status,
        200
    );
    // Each of these reached the upstream's /orders/admin/users with orders.read alone.
    for spelling in [
        "/orders/admin/users",
        "/orders/%61dmin/users",
        "/orders/%61%64%6D%69%6E/users",
        "/orders/ADMIN/users",
        "/Orders/Admin/users",
        "/orders/admin/",
    ] {
        let r = gw.raw("GET", spelling, Some(&reader), None).await;
        r.problem(403, "insufficient_permissions");
        assert_eq!(
            r.header("x-keyward-code"),
            "INSUFFICIENT_PERMISSIONS",
            "{spelling}"
        );
        assert_eq!(
            gw.raw("GET", spelling, Some(&admin), None).await.status,
            200,
            "{spelling}"
        );
    }
    // Path parameters are refused outright on a route that does not accept them.
    let r = gw
        .raw("GET", "/orders/admin;x/users", Some(&reader), None)
        .await;
    r.problem(400, "invalid_request");
    assert_eq!(r.header("x-keyward-code"), "INVALID_PATH");
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_1_the_upstream_receives_exactly_the_normal_form() {
    let s = Server::start().await;
    let gw = orders_gateway(&s).await;
    let (admin, _) = s
        .create(json!({"owner": "o", "permissions": ["orders.*"]}))
        .await;
    for (sent, forwarded) in [
        ("/orders/%61dmin/users", "/orders/admin/users"),
        ("/orders/%7euser/%c3%a9", "/orders/~user/%C3%A9"),
        ("/orders/users%3asearch", "/orders/users:search"),
        ("/ORDERS/1/", "/ORDERS/1/"),
    ] {
        let r = gw
            .raw("GET", &format!("{sent}?q=%2F..%2F&x=1"), Some(&admin), None)
            .await;
        assert_eq!(
            r.status,
            200,
            "{sent}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let echoed = r.json();
        assert_eq!(echoed["path"], forwarded, "{sent}");
        assert_eq!(
            echoed["query"], "q=%2F..%2F&x=1",
            "the query is passed as sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_1_paths_that_cannot_be_normalised_are_refused_with_400() {
    let s = Server::start().await;
    let gw = orders_gateway(&s).await;
    let (key, _) = s
        .create(json!({"owner": "o", "permissions": ["orders.*"]}))
        .await;
    let long = format!("/orders/{}", "a".repeat(4096));
    for path in [
        "/orders/admin%2Fusers",
        "/orders/%2e%2e/admin",
        "/orders/%2E/admin",
        "/orders/..;/admin",
        "/orders/x/%5c..%5cadmin",
        "/orders/%00",
        "/orders/%0d%0aevil",
        "/orders/%2561dmin",
        "/orders/%c0%ae%c0%ae",
        "/orders/%zz",
        "/orders//admin",
        long.as_str(),
    ] {
        let r = gw.raw("GET", path, Some(&key), None).await;
        r.problem(400, "invalid_request");
        assert_eq!(r.header("x-keyward-code"), "INVALID_PATH", "{path}");
    }
    // A raw backslash or NUL cannot even be put in a URI by a client library: sent as bytes.
    for target in [&b"/orders/x\\..\\admin"[..], b"/orders/\0"] {
        let (status, text) = send_target(&gw, target, &key).await;
        assert_eq!(status, 400, "{target:?}: {text}");
        assert!(
            !text.contains("\"path\""),
            "nothing reached the upstream: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_1_double_dot_semicolon_cannot_escape_a_double_star_allowlist() {
    let s = Server::start().await;
    let up = upstream().await;
    let gw = gateway(&s, vec![route("/", up, None)]).await;
    let (key, _) = s
        .create(json!({"owner": "o", "routes": ["GET /public/**"]}))
        .await;
    assert_eq!(
        gw.raw("GET", "/public/a/b", Some(&key), None).await.status,
        200
    );
    gw.raw("GET", "/admin", Some(&key), None)
        .await
        .problem(403, "route_not_allowed");
    // Servers that strip path parameters read these as /admin.
    for path in [
        "/public/..;/admin",
        "/public/..;x=1/admin",
        "/public/%2e%2e;/admin",
    ] {
        gw.raw("GET", path, Some(&key), None)
            .await
            .problem(400, "invalid_request");
    }
    // Allowlists compare the normal form, and case exactly.
    assert_eq!(
        gw.raw("GET", "/%70ublic/x", Some(&key), None).await.status,
        200
    );
    gw.raw("GET", "/PUBLIC/x", Some(&key), None)
        .await
        .problem(403, "route_not_allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_1_path_parameters_and_case_sensitivity_are_per_route_opt_ins() {
    let s = Server::start().await;
    let up = upstream().await;
    let mut matrix = route("/matrix", up, None);
    matrix.allow_path_params = true;
    let mut exact = route("/orders/admin", up, Some("orders.admin"));
    exact.prefix = keyward_core::path::PathPrefix::new("/orders/admin", true).unwrap();
    let mut restricted = route("/matrix/admin", up, Some("orders.admin"));
    restricted.allow_path_params = true;
    let gw = gateway(
        &s,
        vec![
            matrix,
            restricted,
            route("/orders", up, Some("orders.read")),
            exact,
        ],
    )
    .await;
    let (reader, _) = s
        .create(json!({"owner": "o", "permissions": ["orders.read"], "routes": ["GET /matrix/cars/*", "GET /orders/**"]}))
        .await;
    let r = gw
        .raw("GET", "/matrix/cars;color=red/1", Some(&reader), None)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "/matrix/cars;color=red/1");
    // With parameters accepted, the route and the allowlist still see the segment names.
    gw.raw("GET", "/matrix/admin;x/1", Some(&reader), None)
        .await
        .problem(403, "insufficient_permissions");
    gw.raw("GET", "/matrix/..;/orders/1", Some(&reader), None)
        .await
        .problem(400, "invalid_request");
    // A case-sensitive route for a case-sensitive upstream: only its exact spelling is it.
    gw.raw("GET", "/orders/admin/1", Some(&reader), None)
        .await
        .problem(403, "insufficient_permissions");
    assert_eq!(
        gw.raw("GET", "/orders/ADMIN/1", Some(&reader), None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_13_a_60_kb_path_is_refused_before_any_matching() {
    let s = Server::start().await;
    let up = upstream().await;
    let gw = gateway(&s, vec![route("/", up, None)]).await;
    let routes: Vec<String> = (0..64).map(|i| format!("GET /r{i}/**/x")).collect();
    let (key, _) = s.create(json!({"owner": "o", "routes": routes})).await;
    // 60 KiB: the most a client library puts in one URI (`http` caps it just under 64 KiB).
    let huge = format!("/r0{}", "/a".repeat(30 * 1024));
    let r = gw.raw("GET", &huge, Some(&key), None).await;
    let body = r.problem(400, "invalid_request");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("longer than 4096"),
        "{body}"
    );
    // The deepest path allowed is matched normally.
    let deep = format!("/r63{}/x", "/a".repeat(120));
    assert_eq!(gw.raw("GET", &deep, Some(&key), None).await.status, 200);
    let too_deep = format!("/r63{}/x", "/a".repeat(127));
    gw.raw("GET", &too_deep, Some(&key), None)
        .await
        .problem(400, "invalid_request");
}

/// Keys of two tenants and two environments, all holding `orders.read`.
async fn tenant_keys(s: &Server) -> [String; 4] {
    let mut keys = Vec::new();
    for body in [
        json!({"owner": "a", "tenant": "acme", "permissions": ["orders.read"]}),
        json!({"owner": "a", "tenant": "acme", "environment": "test", "permissions": ["orders.read"]}),
        json!({"owner": "b", "tenant": "beta", "permissions": ["orders.read"]}),
        json!({"owner": "n", "permissions": ["orders.read"]}),
    ] {
        keys.push(s.create(body).await.0);
    }
    keys.try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_6_gateway_routes_require_their_tenant_and_environment() {
    let s = Server::start().await;
    let up = upstream().await;
    let mut acme = route("/acme", up, Some("orders.read"));
    acme.tenant = Some("acme".into());
    acme.environment = Some("live".into());
    let mut beta = route("/beta", up, Some("orders.read"));
    beta.tenant = Some("beta".into());
    let mut open = route("/acme-open", up, None);
    open.tenant = Some("acme".into());
    let gw = gateway(&s, vec![acme, beta, open]).await;
    let [acme_live, acme_test, beta_key, no_tenant] = tenant_keys(&s).await;
    let r = gw.raw("GET", "/acme/1", Some(&acme_live), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-keyward-tenant"], "acme");
    for (key, path, problem, code) in [
        (
            &beta_key,
            "/acme/1",
            "tenant_not_allowed",
            "TENANT_NOT_ALLOWED",
        ),
        (
            &no_tenant,
            "/acme/1",
            "tenant_not_allowed",
            "TENANT_NOT_ALLOWED",
        ),
        (
            &acme_live,
            "/beta/1",
            "tenant_not_allowed",
            "TENANT_NOT_ALLOWED",
        ),
        (
            &acme_test,
            "/acme/1",
            "environment_not_allowed",
            "ENVIRONMENT_NOT_ALLOWED",
        ),
        (
            &beta_key,
            "/acme-open/1",
            "tenant_not_allowed",
            "TENANT_NOT_ALLOWED",
        ),
    ] {
        let r = gw.raw("GET", path, Some(key), None).await;
        r.problem(403, problem);
        assert_eq!(r.header("x-keyward-code"), code, "{path}");
        assert!(r.header("x-keyward-key-id").is_empty());
    }
    assert_eq!(
        gw.raw("GET", "/beta/1", Some(&beta_key), None).await.status,
        200
    );
    // A route without permissions admits any valid key of its tenant, of any environment.
    let (bare, _) = s.create(json!({"owner": "a", "tenant": "acme"})).await;
    for key in [&bare, &acme_test] {
        assert_eq!(
            gw.raw("GET", "/acme-open/1", Some(key), None).await.status,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_1_and_6_nginx_auth_normalises_x_original_uri_and_requires_tenants() {
    let s = Server::start().await;
    let nginx = verifier(&s).await;
    let (key, _) = s
        .create(json!({"owner": "o", "tenant": "acme", "routes": ["GET /public/**"]}))
        .await;
    let (test_key, _) = s
        .create(json!({"owner": "o", "tenant": "acme", "environment": "test"}))
        .await;
    let uri = |u: &'static str| [("x-original-method", "GET"), ("x-original-uri", u)];
    let ok = s
        .http
        .auth_request(Some(&nginx), Some(&key), &uri("/%70ublic/a?x=1"), "")
        .await;
    assert_eq!(ok.status, 204);
    // What cannot be normalised is refused (403, the status nginx passes on) with a code the
    // shipped config turns into a 400.
    for bad in [
        "/public/..;/admin",
        "/public/%2e%2e/admin",
        "/public/a%2Fb",
        "/public/a\\b",
        "/public/%00",
        "relative",
    ] {
        let r = s
            .http
            .auth_request(Some(&nginx), Some(&key), &uri(bad), "")
            .await;
        r.problem(403, "invalid_request");
        assert_eq!(r.header("x-keyward-code"), "INVALID_PATH", "{bad}");
    }
    // Only the proxy's query string can accept path parameters.
    let params = uri("/public/a;jsessionid=1");
    s.http
        .auth_request(Some(&nginx), Some(&key), &params, "")
        .await
        .problem(403, "invalid_request");
    assert_eq!(
        s.http
            .auth_request(Some(&nginx), Some(&key), &params, "?allow_path_params=true")
            .await
            .status,
        204
    );
    // Required tenant and environment.
    let require = |tenant: &'static str, environment: &'static str| {
        [
            ("x-keyward-require-tenant", tenant),
            ("x-keyward-require-environment", environment),
        ]
    };
    assert_eq!(
        s.http
            .auth_request(Some(&nginx), Some(&test_key), &require("acme", "test"), "")
            .await
            .status,
        204
    );
    let r = s
        .http
        .auth_request(Some(&nginx), Some(&test_key), &require("beta", "test"), "")
        .await;
    r.problem(403, "tenant_not_allowed");
    assert_eq!(r.header("x-keyward-code"), "TENANT_NOT_ALLOWED");
    let r = s
        .http
        .auth_request(Some(&nginx), Some(&test_key), &require("acme", "live"), "")
        .await;
    r.problem(403, "environment_not_allowed");
    assert_eq!(r.header("x-keyward-code"), "ENVIRONMENT_NOT_ALLOWED");
    let twice = [
        ("x-keyward-require-tenant", "acme"),
        ("x-keyward-require-tenant", "beta"),
    ];
    let r = s
        .http
        .auth_request(Some(&nginx), Some(&test_key), &twice, "")
        .await;
    assert_eq!(
        r.problem(400, "invalid_field")["field"],
        "x-keyward-require-tenant"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_1_and_6_ext_authz_normalises_the_path_and_requires_tenants() {
    let s = Server::start().await;
    let mut client = crate::ext_authz::ext_authz_client(&s).await;
    let (key, _) = s
        .create(json!({"owner": "o", "tenant": "acme", "routes": ["GET /public/**"]}))
        .await;
    let (test_key, _) = s
        .create(json!({"owner": "o", "tenant": "acme", "environment": "test"}))
        .await;
    let mut check = async |key: &str, path: &str, extensions: &[(&str, &str)]| {
        let request = check_request(Some(key), "GET", path, "10.0.0.1", extensions);
        client
            .check(request)
            .await
            .map(|r| outcome(&r.into_inner()))
    };
    let check_ok = |r: Result<_, tonic::Status>| r.unwrap();
    assert_eq!(
        check_ok(check(&key, "/%70ublic/a?x=1", &[]).await).0,
        0,
        "OK"
    );
    for bad in [
        "/public/..;/admin",
        "/public/%2e%2e/admin",
        "/public/a%2Fb",
        "/public/a\\b",
        "/public/%00",
    ] {
        let (grpc, http, headers, body) = check_ok(check(&key, bad, &[]).await);
        assert_eq!(
            (grpc, http),
            (3, Some(400)),
            "INVALID_ARGUMENT, denied 400: {bad}"
        );
        assert_eq!(headers["x-keyward-code"], "INVALID_PATH");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "invalid_request");
    }
    let params = [("keyward_allow_path_params", "true")];
    assert_eq!(check_ok(check(&key, "/public/a;v=1", &params).await).0, 0);
    assert_eq!(
        check_ok(check(&key, "/public/a;v=1", &[]).await).1,
        Some(400)
    );

    let acme_test = [("keyward_tenant", "acme"), ("keyward_environment", "test")];
    assert_eq!(check_ok(check(&test_key, "/x", &acme_test).await).0, 0);
    for (extensions, problem, code) in [
        (
            [("keyward_tenant", "beta"), ("keyward_environment", "test")],
            "tenant_not_allowed",
            "TENANT_NOT_ALLOWED",
        ),
        (
            [("keyward_tenant", "acme"), ("keyward_environment", "live")],
            "environment_not_allowed",
            "ENVIRONMENT_NOT_ALLOWED",
        ),
    ] {
        let (grpc, http, headers, body) = check_ok(check(&test_key, "/x", &extensions).await);
        assert_eq!((grpc, http), (7, Some(403)), "PERMISSION_DENIED: {problem}");
        assert_eq!(headers["x-keyward-code"], code);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], problem);
    }
    // A malformed requirement is the route's misconfiguration.
    let misconfigured = check(&test_key, "/x", &[("keyward_tenant", "a b")]).await;
    let (grpc, http, _, body) = check_ok(misconfigured);
    assert_eq!(
        (grpc, http),
        (3, Some(400)),
        "INVALID_ARGUMENT, denied: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_1_and_6_verify_normalises_the_path_and_takes_tenant_and_environment() {
    let s = Server::start().await;
    let (key, _) = s
        .create(json!({"owner": "o", "tenant": "acme", "routes": ["GET /orders/admin/*"]}))
        .await;
    let code = |v: Value| v["code"].as_str().unwrap().to_owned();
    let body = |path: &str| json!({"key": key, "method": "GET", "path": path});
    assert_eq!(code(s.verify(body("/orders/%61dmin/x?y=1")).await), "VALID");
    assert_eq!(
        code(s.verify(body("/orders/ADMIN/x")).await),
        "ROUTE_NOT_ALLOWED",
        "allowlists compare case exactly"
    );
    for bad in [
        "/orders/admin;x/y",
        "/orders/..;/admin/x",
        "/orders/%2e%2e/admin/x",
        "/orders/admin%2Fx",
        "/orders/admin\\x",
        "/orders/admin/\u{0}",
    ] {
        let r = s
            .http
            .call(
                "POST",
                "/v1/keys/verify",
                Some(&s.root_key),
                Some(body(bad)),
            )
            .await;
        assert_eq!(r.problem(400, "invalid_field")["field"], "path", "{bad}");
    }
    let with = |tenant: &str, environment: &str| json!({"key": key, "method": "GET", "path": "/orders/admin/1", "tenant": tenant, "environment": environment});
    assert_eq!(code(s.verify(with("acme", "live")).await), "VALID");
    assert_eq!(
        code(s.verify(with("beta", "live")).await),
        "TENANT_NOT_ALLOWED"
    );
    assert_eq!(
        code(s.verify(with("acme", "test")).await),
        "ENVIRONMENT_NOT_ALLOWED"
    );
    let r = s
        .http
        .call(
            "POST",
            "/v1/keys/verify",
            Some(&s.root_key),
            Some(with("a b", "live")),
        )
        .await;
    assert_eq!(r.problem(400, "invalid_field")["field"], "tenant");
}
