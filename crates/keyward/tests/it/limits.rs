//! Issue 3 over HTTP: limits and quotas in verify, credits, plans, bindings and `/v1/auth`.

use serde_json::{Value, json};
use time::Duration;

use keyward_testkit::server::Server;

#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_limits_and_refuses_with_retry_after() {
    let s = Server::start().await;
    let (key, _) = s
        .create(json!({
            "owner": "o",
            "limits": [{"name": "per_second", "limit": 2, "period_seconds": 1}, {"name": "per_day", "limit": 100, "period_seconds": 86400}],
            "quota": {"credits": 10}
        }))
        .await;
    let v = s.verify(json!({"key": key, "cost": 2})).await;
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["credits_remaining"], 8);
    assert_eq!(
        v["limits"][0],
        json!({"name": "per_second", "limit": 2, "period_seconds": 1, "remaining": 0, "reset": 1})
    );
    assert_eq!(v["limits"][1]["remaining"], 98);
    let v = s.verify(json!({"key": key})).await;
    assert_eq!(
        (
            v["valid"].clone(),
            v["code"].clone(),
            v["retry_after"].clone()
        ),
        (json!(false), json!("RATE_LIMITED"), json!(1))
    );
    assert_eq!(
        v["limits"][1]["remaining"], 98,
        "a refused request consumes nothing"
    );
    s.clock.advance(Duration::seconds(1));
    let v = s.verify(json!({"key": key, "cost": 0})).await;
    assert_eq!(
        (v["code"].clone(), v["credits_remaining"].clone()),
        (json!("VALID"), json!(8)),
        "cost 0 only checks"
    );
    let r = s
        .admin(
            "POST",
            "/v1/keys/verify",
            Some(json!({"key": key, "cost": 3})),
        )
        .await;
    let problem = r.problem(400, "invalid_field");
    assert!(
        problem["detail"].as_str().unwrap().contains("burst 2"),
        "a cost above the burst can never pass: {problem}"
    );
    let r = s
        .admin(
            "POST",
            "/v1/keys/verify",
            Some(json!({"key": key, "cost": 2_000_000_000u64})),
        )
        .await;
    assert_eq!(r.problem(400, "invalid_field")["field"], "cost");
}

#[tokio::test(flavor = "multi_thread")]
async fn ip_and_origin_bindings() {
    let s = Server::start().await;
    let (key, key_id) = s
        .create(json!({"owner": "o", "ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"], "origins": ["*.example.com"]}))
        .await;
    let code = |v: Value| v["code"].as_str().unwrap().to_owned();
    let ok = json!({"key": key, "ip": "10.2.3.4", "origin": "https://app.example.com"});
    assert_eq!(code(s.verify(ok).await), "VALID");
    assert_eq!(
        code(
            s.verify(json!({"key": key, "ip": "2001:db8::7", "origin": "https://a.example.com"}))
                .await
        ),
        "VALID"
    );
    assert_eq!(
        code(
            s.verify(json!({"key": key, "ip": "192.0.2.1", "origin": "https://app.example.com"}))
                .await
        ),
        "IP_NOT_ALLOWED"
    );
    assert_eq!(
        code(
            s.verify(json!({"key": key, "ip": "10.2.3.4", "origin": "https://example.org"}))
                .await
        ),
        "ORIGIN_NOT_ALLOWED"
    );
    let r = s
        .admin(
            "POST",
            "/v1/keys/verify",
            Some(json!({"key": key, "ip": "not-an-ip"})),
        )
        .await;
    assert_eq!(r.problem(400, "invalid_field")["field"], "ip");
    let record = s
        .admin("GET", &format!("/v1/keys/{key_id}"), None)
        .await
        .json();
    assert_eq!(
        record["ip_allowlist"],
        json!(["10.0.0.0/8", "2001:db8::/32"])
    );
    let bad = s
        .admin(
            "POST",
            "/v1/keys",
            Some(json!({"owner": "o", "ip_allowlist": ["10.0.0.0/99"]})),
        )
        .await;
    assert_eq!(
        bad.problem(400, "invalid_field")["field"],
        "ip_allowlist[0]"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_are_set_increased_decreased_and_audited() {
    let s = Server::start().await;
    let (key, key_id) = s
        .create(json!({"owner": "o", "quota": {"credits": 3}}))
        .await;
    let path = format!("/v1/keys/{key_id}/credits");
    for _ in 0..3 {
        assert_eq!(s.verify(json!({"key": key})).await["code"], "VALID");
    }
    let v = s.verify(json!({"key": key})).await;
    assert_eq!(
        (v["code"].clone(), v["retry_after"].clone()),
        (json!("USAGE_EXCEEDED"), json!(3600))
    );
    let r = s
        .admin("POST", &path, Some(json!({"op": "increase", "amount": 5})))
        .await;
    assert_eq!(r.json(), json!({"key_id": key_id, "remaining": 5}));
    let r = s
        .admin("POST", &path, Some(json!({"op": "decrease", "amount": 2})))
        .await;
    assert_eq!(r.json()["remaining"], 3);
    let r = s
        .admin("POST", &path, Some(json!({"op": "set", "amount": 1})))
        .await;
    assert_eq!(r.json()["remaining"], 1);
    assert_eq!(s.admin("GET", &path, None).await.json()["remaining"], 1);
    assert_eq!(s.verify(json!({"key": key})).await["code"], "VALID");
    assert_eq!(
        s.verify(json!({"key": key})).await["code"],
        "USAGE_EXCEEDED"
    );
    s.admin("POST", &path, Some(json!({"op": "double", "amount": 1})))
        .await
        .problem(400, "invalid_field");
    let audit = s
        .admin(
            "GET",
            &format!("/v1/audit?key_id={key_id}&action=credits.adjust"),
            None,
        )
        .await
        .json();
    let ops: Vec<Value> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["summary"]["op"].clone())
        .collect();
    assert_eq!(ops, [json!("increase"), json!("decrease"), json!("set")]);
    let (_, plain) = s.create(json!({"owner": "o"})).await;
    let r = s
        .admin("GET", &format!("/v1/keys/{plain}/credits"), None)
        .await;
    assert_eq!(r.problem(400, "invalid_field")["field"], "quota");
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_crud_and_keys_follow_their_plan() {
    let s = Server::start().await;
    let free = json!({"plan_id": "free", "limits": [{"name": "per_minute", "limit": 1, "period_seconds": 60}], "permissions": ["orders.read"]});
    let r = s.admin("POST", "/v1/plans", Some(free.clone())).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["version"], 1);
    s.admin("POST", "/v1/plans", Some(free))
        .await
        .problem(409, "plan_exists");
    let (key, key_id) = s.create(json!({"owner": "o", "plan": "free"})).await;
    let req = json!({"key": key, "permissions": "orders.read"});
    assert_eq!(s.verify(req.clone()).await["code"], "VALID");
    assert_eq!(s.verify(req.clone()).await["code"], "RATE_LIMITED");
    let pro = json!({"limits": [{"name": "per_minute", "limit": 100, "period_seconds": 60}], "permissions": ["orders.*"]});
    let r = s.admin("PUT", "/v1/plans/free", Some(pro)).await;
    assert_eq!(r.json()["version"], 2);
    assert_eq!(
        s.verify(json!({"key": key, "permissions": "orders.write"}))
            .await["code"],
        "VALID",
        "the plan change applies at once"
    );
    assert_eq!(
        s.admin("GET", "/v1/plans", None).await.json()["plans"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.admin("GET", "/v1/plans/free", None).await.json()["permissions"],
        json!(["orders.*"])
    );
    s.admin("GET", "/v1/plans/gold", None)
        .await
        .problem(404, "plan_not_found");
    s.admin("DELETE", "/v1/plans/free", None)
        .await
        .problem(409, "plan_in_use");
    s.admin(
        "PATCH",
        &format!("/v1/keys/{key_id}"),
        Some(json!({"plan": null})),
    )
    .await;
    assert_eq!(s.admin("DELETE", "/v1/plans/free", None).await.status, 204);
    let actions: Vec<Value> = s.admin("GET", "/v1/audit?key_id=free", None).await.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].clone())
        .collect();
    assert_eq!(
        actions,
        [
            json!("plan.create"),
            json!("plan.update"),
            json!("plan.delete")
        ]
    );
    let r = s
        .admin(
            "POST",
            "/v1/keys",
            Some(json!({"owner": "o", "plan": "free"})),
        )
        .await;
    assert_eq!(r.problem(400, "invalid_field")["field"], "plan");
}

/// Sets up a verify-only root key for nginx's `X-Keyward-Root-Key`.
pub(crate) async fn verifier(s: &Server) -> String {
    let r = s
        .admin(
            "POST",
            "/v1/root-keys",
            Some(json!({"owner": "nginx", "permissions": ["keys.verify"]})),
        )
        .await;
    r.json()["key"].as_str().unwrap().to_owned()
}

async fn auth(
    s: &Server,
    root: Option<&str>,
    key: Option<&str>,
    extra: &[(&str, &str)],
    query: &str,
) -> keyward_testkit::http::Response {
    s.http.auth_request(root, key, extra, query).await
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_endpoint_answers_204_401_403_with_headers() {
    let s = Server::start().await;
    let nginx = verifier(&s).await;
    let (key, key_id) = s
        .create(json!({
            "owner": "billing", "tenant": "acme", "permissions": ["orders.read"],
            "routes": ["GET /v1/orders/*"], "limits": [{"name": "per_minute", "limit": 2, "period_seconds": 60}]
        }))
        .await;
    let original = [
        ("x-original-method", "GET"),
        ("x-original-uri", "/v1/orders/7"),
        ("x-real-ip", "10.0.0.1"),
    ];
    let ok = auth(
        &s,
        Some(&nginx),
        Some(&key),
        &original,
        "?permissions=orders.read",
    )
    .await;
    assert_eq!(ok.status, 204);
    assert_eq!(ok.header("x-keyward-key-id"), key_id);
    assert_eq!(ok.header("x-keyward-owner"), "billing");
    assert_eq!(ok.header("x-keyward-tenant"), "acme");
    assert_eq!(ok.header("ratelimit-policy"), "\"per_minute\";q=2;w=60");
    assert_eq!(ok.header("ratelimit"), "\"per_minute\";r=1;t=0");

    // nginx's own root key missing is a misconfiguration: 400 (nginx makes it a 500), not a
    // client-facing 401, and not a 5xx of keyward's own.
    auth(&s, None, Some(&key), &original, "")
        .await
        .problem(400, "auth_misconfigured");
    auth(&s, Some(&nginx), None, &original, "")
        .await
        .problem(401, "missing_key");
    auth(&s, Some(&nginx), Some("kw_live_bogus"), &original, "")
        .await
        .problem(401, "malformed_key");
    let denied = auth(
        &s,
        Some(&nginx),
        Some(&key),
        &original,
        "?permissions=orders.write",
    )
    .await;
    denied.problem(403, "insufficient_permissions");
    assert_eq!(denied.header("x-keyward-code"), "INSUFFICIENT_PERMISSIONS");
    let off_route = [
        ("x-original-method", "DELETE"),
        ("x-original-uri", "/v1/orders/7"),
    ];
    auth(&s, Some(&nginx), Some(&key), &off_route, "")
        .await
        .problem(403, "route_not_allowed");

    assert_eq!(
        auth(&s, Some(&nginx), Some(&key), &original, "")
            .await
            .status,
        204
    );
    // The limit is spent: 403 (nginx accepts only 401/403 from auth_request) with the code and
    // Retry-After for nginx to turn into a 429.
    let limited = auth(&s, Some(&nginx), Some(&key), &original, "").await;
    limited.problem(403, "rate_limited");
    assert_eq!(limited.header("x-keyward-code"), "RATE_LIMITED");
    assert_eq!(limited.header("retry-after"), "30");
    assert_eq!(limited.header("ratelimit"), "\"per_minute\";r=0;t=30");
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_n_admitted_of_concurrent_http_requests() {
    let s = Server::start().await;
    let nginx = verifier(&s).await;
    let (key, _) = s.create(json!({"owner": "o", "limits": [{"name": "per_hour", "limit": 25, "period_seconds": 3600}]})).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (http, nginx, key) = (s.http.clone(), nginx.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            http.auth_request(Some(&nginx), Some(&key), &[], "")
                .await
                .status
        }));
    }
    let mut admitted = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            204 => admitted += 1,
            403 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        (admitted, limited),
        (25, 75),
        "exactly N admitted, not N+1, not N-1"
    );
}
