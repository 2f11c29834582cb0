//! Envoy ext_authz over a real gRPC connection: `Authorization/Check` with the envoy-types client.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use keyward_testkit::server::Server;

pub(crate) fn check_request(
    key: Option<&str>,
    method: &str,
    path: &str,
    ip: &str,
    extensions: &[(&str, &str)],
) -> CheckRequest {
    let mut headers = HashMap::new();
    if let Some(key) = key {
        headers.insert("authorization".to_owned(), format!("Bearer {key}"));
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }),
    }
}

/// (gRPC code, HTTP status of a denial, headers as a map, body).
pub(crate) fn outcome(
    response: &CheckResponse,
) -> (i32, Option<i32>, HashMap<String, String>, String) {
    let code = response.status.as_ref().map_or(0, |s| s.code);
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => {
            let headers = denied
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            (
                code,
                denied.status.as_ref().map(|s| s.code),
                headers,
                denied.body.clone(),
            )
        }
        Some(HttpResponse::OkResponse(ok)) => {
            let mut headers: HashMap<String, String> = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            for h in ok
                .response_headers_to_add
                .iter()
                .filter_map(|h| h.header.as_ref())
            {
                headers.insert(format!("response:{}", h.key), h.value.clone());
            }
            headers.insert("removed".into(), ok.headers_to_remove.join(","));
            (code, None, headers, String::new())
        }
        _ => (code, None, HashMap::new(), String::new()),
    }
}

/// The ext_authz gRPC server over `s`'s engine on port 0, and a client connected to it.
pub(crate) async fn ext_authz_client(s: &Server) -> AuthorizationClient<tonic::transport::Channel> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(keyward_http::ext_authz::serve_ext_authz(
        listener,
        Arc::clone(&s.engine),
        std::future::pending(),
    ));
    AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_over_grpc_allows_denies_and_limits() {
    let s = Server::start().await;
    let mut client = ext_authz_client(&s).await;
    let (key, key_id) = s
        .create(json!({
            "owner": "billing", "tenant": "acme", "permissions": ["orders.read"], "ip_allowlist": ["10.0.0.0/8"],
            "limits": [{"name": "per_minute", "limit": 2, "period_seconds": 60}]
        }))
        .await;
    let needs_read = [("keyward_permissions", "orders.read")];

    let ok = client
        .check(check_request(
            Some(&key),
            "GET",
            "/orders/1",
            "10.1.1.1",
            &needs_read,
        ))
        .await
        .unwrap()
        .into_inner();
    let (code, status, headers, _) = outcome(&ok);
    assert_eq!((code, status), (0, None), "gRPC OK");
    assert_eq!(headers["x-keyward-key-id"], key_id);
    assert_eq!(headers["x-keyward-owner"], "billing");
    assert_eq!(headers["x-keyward-tenant"], "acme");
    assert_eq!(headers["removed"], "authorization,x-api-key");
    assert_eq!(headers["response:ratelimit"], "\"per_minute\";r=1;t=0");

    type Case<'a> = (
        Option<&'a str>,
        &'a str,
        &'a [(&'a str, &'a str)],
        i32,
        i32,
        &'a str,
    );
    let cases: [Case<'_>; 4] = [
        (None, "10.1.1.1", &needs_read, 16, 401, "missing_key"),
        (
            Some("kw_live_nope"),
            "10.1.1.1",
            &needs_read,
            16,
            401,
            "malformed_key",
        ),
        (
            Some(&key),
            "10.1.1.1",
            &[("keyward_permissions", "orders.write")],
            7,
            403,
            "insufficient_permissions",
        ),
        (
            Some(&key),
            "192.0.2.1",
            &needs_read,
            7,
            403,
            "ip_not_allowed",
        ),
    ];
    for (presented, ip, extensions, grpc, http, problem) in cases {
        let r = client
            .check(check_request(presented, "GET", "/orders/1", ip, extensions))
            .await
            .unwrap()
            .into_inner();
        let (code, status, headers, body) = outcome(&r);
        assert_eq!((code, status), (grpc, Some(http)), "{problem}");
        assert_eq!(headers["content-type"], "application/problem+json");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], problem);
    }

    let ok = client
        .check(check_request(
            Some(&key),
            "GET",
            "/orders/2",
            "10.1.1.1",
            &needs_read,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&ok).0, 0);
    let limited = client
        .check(check_request(
            Some(&key),
            "GET",
            "/orders/3",
            "10.1.1.1",
            &needs_read,
        ))
        .await
        .unwrap()
        .into_inner();
    let (code, status, headers, body) = outcome(&limited);
    assert_eq!(
        (code, status),
        (8, Some(429)),
        "RESOURCE_EXHAUSTED and HTTP 429"
    );
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(headers["x-keyward-code"], "RATE_LIMITED");
    assert_eq!(headers["ratelimit"], "\"per_minute\";r=0;t=30");
    assert_eq!(headers["ratelimit-policy"], "\"per_minute\";q=2;w=60");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "rate_limited"
    );

    // A key without a tenant: a client-sent x-keyward-tenant must be removed, not passed on.
    let (plain, _) = s.create(json!({"owner": "o"})).await;
    let mut forged = check_request(Some(&plain), "GET", "/x", "10.1.1.1", &[]);
    let http = forged
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.headers
        .insert("x-keyward-tenant".into(), "victim".into());
    let ok = client.check(forged).await.unwrap().into_inner();
    let (_, _, headers, _) = outcome(&ok);
    assert!(
        headers["removed"]
            .split(',')
            .any(|h| h == "x-keyward-tenant"),
        "{headers:?}"
    );
    assert!(!headers.contains_key("x-keyward-tenant"));

    let bad = client
        .check(check_request(
            Some(&key),
            "GET",
            "/",
            "10.1.1.1",
            &[("keyward_cost", "many")],
        ))
        .await;
    // A denial, not a gRPC error: Envoy's failure_mode_allow admits on an error.
    let (code, status, _, body) = outcome(&bad.unwrap().into_inner());
    assert_eq!((code, status), (3, Some(400)), "INVALID_ARGUMENT, 400");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "invalid_field");
    assert_eq!(body["field"], "keyward_cost");
}

/// Review of issue 10: a check keyward could not carry out was a gRPC error, which Envoy's
/// `failure_mode_allow` turns into an admitted request, skipping limits and quota; a cost
/// above a limit's burst (a tenant admin sets both) was one. Every such check is now a denial.
#[tokio::test(flavor = "multi_thread")]
async fn review_an_invalid_check_is_denied_never_a_grpc_error() {
    let s = Server::start().await;
    let mut client = ext_authz_client(&s).await;
    let (key, _) = s
        .create(json!({
            "owner": "o", "permissions": ["orders.read"],
            "limits": [{"name": "per_second", "limit": 2, "period_seconds": 1}]
        }))
        .await;
    for extensions in [
        &[("keyward_cost", "5")][..],
        &[("keyward_permissions", "orders.read AND (")][..],
        &[("keyward_allow_path_params", "maybe")][..],
        &[("keyward_environment", "no spaces")][..],
    ] {
        let answer = client
            .check(check_request(
                Some(&key),
                "GET",
                "/orders/1",
                "10.1.1.1",
                extensions,
            ))
            .await
            .unwrap_or_else(|e| panic!("{extensions:?}: a gRPC error: {e}"))
            .into_inner();
        let (code, status, _, body) = outcome(&answer);
        assert_eq!((code, status), (3, Some(400)), "{extensions:?}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["status"], 400, "{body}");
    }
}

/// Issue 10, finding 12: a client's `x-keyward-code` (and every other `x-keyward-*` header it
/// sent, in any spelling) used to survive an OK answer, because only names keyward itself had
/// not computed were removed.
#[tokio::test(flavor = "multi_thread")]
async fn finding_12_no_client_keyward_header_survives_ext_authz() {
    let s = Server::start().await;
    let mut client = ext_authz_client(&s).await;
    let (key, key_id) = s.create(json!({"owner": "billing"})).await;
    let mut forged = check_request(Some(&key), "GET", "/x", "10.1.1.1", &[]);
    let http = forged
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    for (name, value) in [
        ("x-keyward-code", "VALID"),
        ("x-keyward-owner", "mallory"),
        ("X-Keyward-Key-Id", "key_forged"),
        ("x-keyward-tenant", "victim"),
        ("x_keyward_tenant", "victim"),
        ("x-keyward-root-key", "forged"),
        ("x-keyward-anything", "forged"),
    ] {
        http.headers.insert(name.into(), value.into());
    }
    let ok = client.check(forged).await.unwrap().into_inner();
    let (code, _, headers, _) = outcome(&ok);
    assert_eq!(code, 0);
    // keyward's identity headers overwrite the client's...
    assert_eq!(headers["x-keyward-owner"], "billing");
    assert_eq!(headers["x-keyward-key-id"], key_id);
    // ...and every other x-keyward-* name the client sent is removed.
    let mut removed: Vec<&str> = headers["removed"].split(',').collect();
    removed.sort_unstable();
    assert_eq!(
        removed,
        [
            "authorization",
            "x-api-key",
            "x-keyward-anything",
            "x-keyward-code",
            "x-keyward-root-key",
            "x-keyward-tenant",
            "x_keyward_tenant",
        ]
    );
    assert!(!headers.contains_key("x-keyward-code"));
}
