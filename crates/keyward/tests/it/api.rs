//! The admin and verify API over real HTTP.

use serde_json::{Value, json};
use time::Duration;

use keyward_testkit::server::Server;

#[tokio::test(flavor = "multi_thread")]
async fn create_verify_revoke() {
    let s = Server::start().await;
    let r = s.admin("POST", "/v1/keys", Some(json!({
        "owner": "billing-team", "name": "orders reader", "tenant": "acme", "permissions": ["orders.read"],
        "meta": {"plan": "pro"}, "tags": ["ci"]
    }))).await;
    assert_eq!(r.status, 201);
    let created = r.json();
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["record"]["key_id"].as_str().unwrap().to_owned();
    assert!(
        key.starts_with("kw_live_") && key.len() == "kw_live_".len() + 38,
        "{key}"
    );
    assert_eq!(created["record"]["owner"], "billing-team");
    assert_eq!(created["record"]["status"], "active");
    assert_eq!(created["record"]["created_by"].as_str().unwrap().len(), 24);
    assert_eq!(created["record"]["secrets"][0]["start"], &key[..12]);

    // The record never carries the secret or its hash.
    let record = s.admin("GET", &format!("/v1/keys/{key_id}"), None).await;
    assert_eq!(record.status, 200);
    assert_eq!(
        record.json(),
        created["record"],
        "a write returns exactly what a later read returns"
    );
    let text = String::from_utf8(record.body.clone()).unwrap();
    assert!(!text.contains(&key));
    assert!(!text.contains(&hex_sha256(&key)));
    assert!(!text.contains("hash"));

    let v = s
        .verify(json!({"key": key, "permissions": "orders.read"}))
        .await;
    assert_eq!(v["valid"], true);
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["key_id"], key_id.as_str());
    assert_eq!(v["owner"], "billing-team");
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["environment"], "live");
    assert_eq!(v["permissions"], json!(["orders.read"]));
    assert_eq!(v["meta"], json!({"plan": "pro"}));
    assert!(v.get("rotation").is_none());

    let revoked = s.revoke(&key_id, "leaked").await;
    assert_eq!(revoked.status, 200);
    assert_eq!(revoked.json()["status"], "revoked");
    assert_eq!(revoked.json()["revoked_reason"], "leaked");
    let v = s.verify(json!({"key": key})).await;
    assert_eq!(
        (v["valid"].clone(), v["code"].clone()),
        (json!(false), json!("REVOKED"))
    );
    s.revoke(&key_id, "again").await.problem(409, "key_revoked");
}

fn hex_sha256(text: &str) -> String {
    use keyward_core::key::KeyHash;
    KeyHash::sha256_of(text).to_hex()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_never_holds_a_plaintext_key() {
    let s = Server::start().await;
    let (key, key_id) = s.create(json!({"owner": "o"})).await;
    let rotated = s
        .admin(
            "POST",
            &format!("/v1/keys/{key_id}/rotate"),
            Some(json!({"grace_period_seconds": 60})),
        )
        .await;
    let new_key = rotated.json()["key"].as_str().unwrap().to_owned();
    let read_back = s
        .admin("GET", &format!("/v1/keys/{key_id}"), None)
        .await
        .json();
    assert_eq!(rotated.json()["record"], read_back);
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(s.dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let haystack = String::from_utf8_lossy(&bytes);
    assert!(haystack.contains(&key_id), "the store files were read");
    for secret in [&key, &new_key, &s.root_key] {
        assert!(!haystack.contains(secret.as_str()));
        // Not even the random part alone.
        assert!(!haystack.contains(&secret[secret.len() - 38..]));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_calls_need_a_root_key_with_the_right_permission() {
    let s = Server::start().await;
    let unauth = s.http.call("GET", "/v1/keys", None, None).await;
    let body = unauth.problem(401, "unauthenticated");
    assert_eq!(
        unauth.header("www-authenticate"),
        "Bearer realm=\"keyward\""
    );
    // The shape of an error body is part of the API.
    assert_eq!(
        body,
        json!({
            "type": "urn:keyward:problem:unauthenticated",
            "title": "A valid root key is required",
            "status": 401,
            "detail": "send a valid root key as 'Authorization: Bearer <root key>'",
            "code": "unauthenticated"
        })
    );
    s.http
        .call("GET", "/v1/keys", Some("kwroot_nonsense"), None)
        .await
        .problem(401, "unauthenticated");
    let raw = s.http.raw("GET", "/v1/keys", None, None).await;
    assert_eq!(raw.status, 401);

    // An API key with every permission still cannot administer keyward.
    let (api_key, _) = s.create(json!({"owner": "o", "permissions": ["*"]})).await;
    s.http
        .call("GET", "/v1/keys", Some(&api_key), None)
        .await
        .problem(401, "unauthenticated");

    // A root key holds only what it was given.
    let r = s
        .admin(
            "POST",
            "/v1/root-keys",
            Some(json!({"owner": "support", "permissions": ["keys.read", "audit.read"]})),
        )
        .await;
    assert_eq!(r.status, 201);
    let reader = r.json()["key"].as_str().unwrap().to_owned();
    let reader_id = r.json()["record"]["key_id"].as_str().unwrap().to_owned();
    assert!(reader.starts_with("kwroot_"));
    assert_eq!(
        s.http
            .call("GET", "/v1/keys", Some(&reader), None)
            .await
            .status,
        200
    );
    let forbidden = s
        .http
        .call(
            "POST",
            "/v1/keys",
            Some(&reader),
            Some(json!({"owner": "x"})),
        )
        .await;
    assert!(
        forbidden.problem(403, "forbidden")["detail"]
            .as_str()
            .unwrap()
            .contains("keys.create")
    );
    s.http
        .verify(&reader, json!({"key": api_key}))
        .await
        .problem(403, "forbidden");
    s.http
        .call("GET", "/v1/root-keys", Some(&reader), None)
        .await
        .problem(403, "forbidden");

    // Root keys answer NOT_FOUND at verify: they are not API keys.
    assert_eq!(s.verify(json!({"key": reader})).await["code"], "NOT_FOUND");

    let list = s.admin("GET", "/v1/root-keys", None).await.json();
    assert_eq!(list["keys"].as_array().unwrap().len(), 2);
    let revoked = s
        .admin(
            "POST",
            &format!("/v1/root-keys/{reader_id}/revoke"),
            Some(json!({"reason": "staff left"})),
        )
        .await;
    assert_eq!(revoked.status, 200);
    s.http
        .call("GET", "/v1/keys", Some(&reader), None)
        .await
        .problem(401, "unauthenticated");

    // Every failure above is in the audit log, without the credential.
    let audit = s.admin("GET", "/v1/audit?action=auth.failed", None).await;
    let text = String::from_utf8(audit.body.clone()).unwrap();
    assert!(!text.contains(&api_key) && !text.contains(&reader));
    let reasons: Vec<Value> = audit.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["summary"]["reason"].clone())
        .collect();
    assert_eq!(
        reasons,
        [
            "MISSING",
            "MALFORMED",
            "MISSING",
            "NOT_FOUND",
            "INSUFFICIENT_PERMISSIONS",
            "INSUFFICIENT_PERMISSIONS",
            "INSUFFICIENT_PERMISSIONS",
            "REVOKED"
        ]
    );
    let first = &audit.json()["events"][0];
    assert_eq!(first["summary"]["remote_addr"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_verify_code() {
    let s = Server::start().await;
    let (key, key_id) = s.create(json!({
        "owner": "o", "permissions": ["orders.read", "admin.*"], "routes": ["GET /v1/orders/*"], "ttl_seconds": 3600
    })).await;
    let code = |v: Value| v["code"].as_str().unwrap().to_owned();
    let ok = json!({"key": key, "permissions": "orders.read AND (orders.write OR admin.users)", "method": "GET", "path": "/v1/orders/42"});
    assert_eq!(code(s.verify(ok.clone()).await), "VALID");
    assert_eq!(
        code(s.verify(json!({"key": "not a key"})).await),
        "MALFORMED"
    );
    let mut bad_checksum = key.clone();
    bad_checksum.replace_range(key.len() - 1.., if key.ends_with('0') { "1" } else { "0" });
    assert_eq!(
        code(s.verify(json!({"key": bad_checksum})).await),
        "MALFORMED"
    );
    let (other, other_id) = s.create(json!({"owner": "o"})).await;
    s.revoke(&other_id, "x").await;
    assert_eq!(code(s.verify(json!({"key": other})).await), "REVOKED");
    let unknown = keyward_testkit::keys::stranger("kw_live");
    let nf = s.verify(json!({"key": unknown})).await;
    assert_eq!(code(nf.clone()), "NOT_FOUND");
    assert!(nf.get("key_id").is_none());
    let mut other_tenant = ok.clone();
    other_tenant["tenant"] = json!("acme");
    assert_eq!(code(s.verify(other_tenant).await), "TENANT_NOT_ALLOWED");
    let mut other_environment = ok.clone();
    other_environment["environment"] = json!("test");
    assert_eq!(
        code(s.verify(other_environment).await),
        "ENVIRONMENT_NOT_ALLOWED"
    );
    let mut wrong = ok.clone();
    wrong["permissions"] = json!("orders.write");
    assert_eq!(code(s.verify(wrong).await), "INSUFFICIENT_PERMISSIONS");
    let mut off_route = ok.clone();
    off_route["method"] = json!("DELETE");
    assert_eq!(code(s.verify(off_route).await), "ROUTE_NOT_ALLOWED");
    // A path that cannot be normalised safely is a bad request, not an answer about the key.
    let mut traversal = ok.clone();
    traversal["path"] = json!("/v1/orders/../admin");
    let refused = s.admin("POST", "/v1/keys/verify", Some(traversal)).await;
    assert_eq!(refused.problem(400, "invalid_field")["field"], "path");
    assert_eq!(
        code(s.verify(json!({"key": key})).await),
        "ROUTE_NOT_ALLOWED",
        "a route-restricted key needs a route"
    );
    let disabled = s
        .admin(
            "PATCH",
            &format!("/v1/keys/{key_id}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(disabled.json()["enabled"], false);
    assert_eq!(code(s.verify(ok.clone()).await), "DISABLED");
    s.admin(
        "PATCH",
        &format!("/v1/keys/{key_id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    s.clock.advance(Duration::hours(1));
    let expired = s.verify(ok.clone()).await;
    assert_eq!(code(expired.clone()), "EXPIRED");
    assert_eq!(expired["key_id"], key_id.as_str());
    assert_eq!(
        s.admin("GET", &format!("/v1/keys/{key_id}"), None)
            .await
            .json()["status"],
        "expired"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn permission_query_errors_say_where() {
    let s = Server::start().await;
    let (key, _) = s.create(json!({"owner": "o"})).await;
    let r = s
        .admin(
            "POST",
            "/v1/keys/verify",
            Some(json!({"key": key, "permissions": "orders.read AND (x OR"})),
        )
        .await;
    let body = r.problem(400, "invalid_permission_query");
    assert_eq!(body["field"], "permissions");
    assert!(
        body["detail"].as_str().unwrap().contains("at byte 21"),
        "{body}"
    );
    let huge = vec!["p"; 2000].join(" OR ");
    let r = s
        .admin(
            "POST",
            "/v1/keys/verify",
            Some(json!({"key": key, "permissions": huge})),
        )
        .await;
    assert!(
        r.problem(400, "invalid_permission_query")["detail"]
            .as_str()
            .unwrap()
            .contains("longer than 1024")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_with_grace_over_http() {
    let s = Server::start().await;
    let (first, key_id) = s.create(json!({"owner": "o", "prefix": "acme_prod"})).await;
    let r = s
        .admin(
            "POST",
            &format!("/v1/keys/{key_id}/rotate"),
            Some(json!({"grace_period_seconds": 3600})),
        )
        .await;
    assert_eq!(r.status, 201);
    let rotated = r.json();
    let second = rotated["key"].as_str().unwrap().to_owned();
    assert!(second.starts_with("acme_prod_"), "the prefix is kept");
    assert_eq!(rotated["record"]["key_id"], key_id.as_str());
    assert_eq!(rotated["previous_secret"]["start"], &first[..14]);
    assert_eq!(
        rotated["previous_secret"]["expires_at"],
        "2026-06-01T10:00:00Z"
    );
    assert_eq!(rotated["ended_secrets"], json!([]));
    let states: Vec<_> = rotated["record"]["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].clone())
        .collect();
    assert_eq!(states, [json!("current"), json!("deprecated")]);

    let old = s.verify(json!({"key": first})).await;
    assert_eq!(old["code"], "VALID");
    assert_eq!(
        old["rotation"],
        json!({"deprecated": true, "expires_at": "2026-06-01T10:00:00Z"})
    );
    assert!(
        s.verify(json!({"key": second}))
            .await
            .get("rotation")
            .is_none()
    );

    s.clock.advance(Duration::minutes(30));
    let r = s
        .admin(
            "POST",
            &format!("/v1/keys/{key_id}/rotate"),
            Some(json!({"grace_period_seconds": 600})),
        )
        .await;
    let third = r.json();
    assert_eq!(
        third["ended_secrets"][0]["start"],
        &first[..14],
        "rotating during a grace period ends the older secret"
    );
    assert_eq!(s.verify(json!({"key": first})).await["code"], "EXPIRED");
    assert_eq!(s.verify(json!({"key": second})).await["code"], "VALID");
    s.clock.advance(Duration::minutes(10));
    assert_eq!(s.verify(json!({"key": second})).await["code"], "EXPIRED");
    assert_eq!(
        s.verify(json!({"key": third["key"]})).await["code"],
        "VALID"
    );

    let r = s
        .admin(
            "POST",
            &format!("/v1/keys/{key_id}/rotate"),
            Some(json!({"grace_period_seconds": -1})),
        )
        .await;
    assert_eq!(
        r.problem(400, "invalid_field")["field"],
        "grace_period_seconds"
    );
    s.admin(
        "POST",
        "/v1/keys/key_00000000000000000000/rotate",
        Some(json!({})),
    )
    .await
    .problem(404, "key_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_pages_through_every_key_once() {
    let s = Server::start().await;
    let mut expected = Vec::new();
    for i in 0..7 {
        let (_, id) = s
            .create(json!({"owner": "team-a", "tenant": if i % 2 == 0 { "even" } else { "odd" }}))
            .await;
        expected.push(id);
    }
    s.create(json!({"owner": "team-b"})).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/keys?owner=team-a&limit=3&cursor={c}"),
            None => "/v1/keys?owner=team-a&limit=3".to_owned(),
        };
        let page = s.admin("GET", &path, None).await.json();
        let keys = page["keys"].as_array().unwrap();
        assert!(keys.len() <= 3);
        seen.extend(
            keys.iter()
                .map(|k| k["key_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    let odd = s.admin("GET", "/v1/keys?tenant=odd", None).await.json();
    assert_eq!(odd["keys"].as_array().unwrap().len(), 3);
    s.admin(
        "POST",
        &format!("/v1/keys/{}/revoke", expected[0]),
        Some(json!({"reason": "r"})),
    )
    .await;
    let revoked = s.admin("GET", "/v1/keys?status=revoked", None).await.json();
    assert_eq!(revoked["keys"][0]["key_id"], expected[0].as_str());
    assert_eq!(revoked["keys"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_updates_and_audits() {
    let s = Server::start().await;
    let (key, key_id) = s
        .create(json!({"owner": "o", "name": "before", "permissions": ["a"], "ttl_seconds": 60}))
        .await;
    let path = format!("/v1/keys/{key_id}");
    let r = s.admin("PATCH", &path, Some(json!({
        "name": null, "permissions": ["orders.*"], "routes": ["* /v1/**"], "meta": {"k": 1}, "tags": ["t"], "expires_at": null
    }))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let record = r.json();
    assert_eq!(record["name"], Value::Null);
    assert_eq!(record["permissions"], json!(["orders.*"]));
    assert_eq!(record["expires_at"], Value::Null);
    assert_eq!(record["meta"], json!({"k": 1}));
    let v = s
        .verify(
            json!({"key": key, "permissions": "orders.write", "method": "POST", "path": "/v1/x"}),
        )
        .await;
    assert_eq!(
        v["code"], "VALID",
        "the update reached the verify cache at once"
    );

    s.admin("PATCH", &path, Some(json!({})))
        .await
        .problem(400, "invalid_field");
    s.admin("PATCH", &path, Some(json!({"nmae": "typo"})))
        .await
        .problem(400, "invalid_request");
    let bad = s
        .admin(
            "PATCH",
            &path,
            Some(json!({"expires_at": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(bad.problem(400, "invalid_field")["field"], "expires_at");
    s.admin(
        "PATCH",
        "/v1/keys/key_00000000000000000000",
        Some(json!({"enabled": false})),
    )
    .await
    .problem(404, "key_not_found");

    let audit = s
        .admin(
            "GET",
            &format!("/v1/audit?key_id={key_id}&action=key.update"),
            None,
        )
        .await
        .json();
    let summary = &audit["events"][0]["summary"];
    assert_eq!(summary["before"]["name"], "before");
    assert_eq!(summary["after"]["name"], Value::Null);
    assert_eq!(summary["after"]["permissions"], json!(["orders.*"]));
    assert!(!audit.to_string().contains(&key));
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_chain_detects_tampering() {
    let s = Server::start().await;
    let (_, key_id) = s.create(json!({"owner": "o"})).await;
    s.revoke(&key_id, "r").await;
    let report = s.admin("POST", "/v1/audit/verify", None).await.json();
    let events = s.admin("GET", "/v1/audit", None).await.json();
    let head_hash = events["events"][2]["hash"].clone();
    assert_eq!(
        report,
        json!({"intact": true, "checked": 3, "first_broken": null, "head_seq": 3, "head_hash": head_hash})
    );

    let page = s.admin("GET", "/v1/audit?limit=2", None).await.json();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_cursor"], "2");
    let rest = s
        .admin("GET", "/v1/audit?limit=2&cursor=2", None)
        .await
        .json();
    assert_eq!(rest["events"][0]["seq"], 3);
    assert_eq!(rest["events"][0]["prev_hash"], page["events"][1]["hash"]);
    s.admin("GET", "/v1/audit?action=key.delete", None)
        .await
        .problem(400, "invalid_field");

    // Someone with access to the database file rewrites history.
    let db = s.dir.path().join("keyward.db");
    let url = format!("sqlite://{}", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("DROP TRIGGER audit_log_no_update")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET summary = '{\"reason\":\"routine\"}' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let report = s.admin("POST", "/v1/audit/verify", None).await.json();
    assert_eq!(report["intact"], false);
    assert_eq!(report["checked"], 2);
    assert_eq!(report["first_broken"]["seq"], 3);
    assert_eq!(report["head_seq"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_openapi() {
    let s = Server::start().await;
    assert_eq!(
        s.http.call("GET", "/healthz", None, None).await.json(),
        json!({"status": "ok"})
    );
    assert_eq!(
        s.http.call("GET", "/readyz", None, None).await.json(),
        json!({"status": "ok", "checks": {"store": "ok", "change_feed": "ok"}})
    );
    let openapi = s.http.call("GET", "/openapi.json", None, None).await;
    assert_eq!(openapi.status, 200);
    let committed =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json")).unwrap();
    assert!(
        openapi.body == committed,
        "/openapi.json differs from the committed openapi.json"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn last_used_is_recorded_off_the_hot_path() {
    let s = Server::start().await;
    let (key, key_id) = s.create(json!({"owner": "o"})).await;
    s.clock.advance(Duration::seconds(42));
    assert_eq!(s.verify(json!({"key": key})).await["code"], "VALID");
    assert_eq!(
        s.admin("GET", &format!("/v1/keys/{key_id}"), None)
            .await
            .json()["last_used_at"],
        Value::Null
    );
    s.engine.flush_last_used().await.unwrap();
    assert_eq!(
        s.admin("GET", &format!("/v1/keys/{key_id}"), None)
            .await
            .json()["last_used_at"],
        "2026-06-01T09:00:42Z"
    );
}
