//! Tenant-scoped root keys (issue 10, finding 7) over the real HTTP API: a root key created
//! with a `tenant` sees, changes, verifies and reports on that tenant only, and cannot reach
//! past it, not even to learn that another tenant's key_id exists.

use serde_json::{Value, json};
use time::Duration;

use crate::KEYWARD;
use keyward_testkit::http::Response;
use keyward_testkit::server::Server;

/// A root key minted by the bootstrap key: (secret, key_id).
async fn root_key(s: &Server, body: Value) -> (String, String) {
    let r = s.admin("POST", "/v1/root-keys", Some(body)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let json = r.json();
    assert!(json["key"].as_str().unwrap().starts_with("kwroot_"));
    (
        json["key"].as_str().unwrap().to_owned(),
        json["record"]["key_id"].as_str().unwrap().to_owned(),
    )
}

/// A well-formed key_id that was never issued.
fn never_issued() -> String {
    keyward_core::key::generate_key_id(&mut rand::rngs::SysRng).unwrap()
}

/// The key_ids of a `KeyList`.
fn listed(r: &Response) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts the answer a key_id that was never issued gets: a scoped key must not be able to
/// tell another tenant's key from no key at all.
fn assert_not_found(r: &Response, key_id: &str, what: &str) {
    assert_eq!(
        r.status,
        404,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let body = r.problem(404, "key_not_found");
    assert_eq!(
        body["detail"],
        format!("no key with key_id {key_id}"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_7_a_tenant_root_key_sees_and_changes_only_its_tenants_keys() {
    let s = Server::start().await;
    let quota = json!({"credits": 10});
    let (_, acme) = s
        .create(json!({"owner": "a", "tenant": "acme", "quota": quota}))
        .await;
    let (globex_key, globex) = s
        .create(json!({"owner": "g", "tenant": "globex", "quota": quota}))
        .await;
    let (_, untenanted) = s.create(json!({"owner": "u", "quota": quota})).await;
    let (admin, _) = root_key(
        &s,
        json!({"owner": "acme-team", "tenant": "acme", "permissions": ["keys.*"]}),
    )
    .await;
    let call = |method: &'static str, path: String, body: Option<Value>| {
        let http = s.http.clone();
        let admin = admin.clone();
        async move { http.call(method, &path, Some(&admin), body).await }
    };

    // Listing shows its tenant only, whatever tenant is asked for.
    assert_eq!(
        listed(&call("GET", "/v1/keys".into(), None).await),
        [acme.as_str()]
    );
    assert_eq!(
        listed(&call("GET", "/v1/keys?tenant=acme".into(), None).await),
        [acme.as_str()]
    );
    assert!(listed(&call("GET", "/v1/keys?tenant=globex".into(), None).await).is_empty());
    // The global view is unchanged.
    assert_eq!(
        listed(&s.admin("GET", "/v1/keys", None).await),
        [acme.clone(), globex.clone(), untenanted.clone()]
    );

    let before = s
        .admin("GET", &format!("/v1/keys/{globex}"), None)
        .await
        .json();
    // Another tenant's key, a key without a tenant and a key_id never issued all answer the
    // same 404, on every route that names a key.
    for id in [globex.clone(), untenanted.clone(), never_issued()] {
        let routes: [(&str, String, Option<Value>); 6] = [
            ("GET", format!("/v1/keys/{id}"), None),
            (
                "PATCH",
                format!("/v1/keys/{id}"),
                Some(json!({"name": "mine now"})),
            ),
            ("POST", format!("/v1/keys/{id}/rotate"), Some(json!({}))),
            (
                "POST",
                format!("/v1/keys/{id}/revoke"),
                Some(json!({"reason": "x"})),
            ),
            ("GET", format!("/v1/keys/{id}/credits"), None),
            (
                "POST",
                format!("/v1/keys/{id}/credits"),
                Some(json!({"op": "set", "amount": 0})),
            ),
        ];
        for (method, path, body) in routes {
            let r = call(method, path.clone(), body).await;
            assert_not_found(&r, &id, &format!("{method} {path}"));
        }
    }
    // Nothing of the other tenant's key changed.
    let after = s
        .admin("GET", &format!("/v1/keys/{globex}"), None)
        .await
        .json();
    assert_eq!(after, before);
    assert_eq!(after["status"], "active");
    let credits = s
        .admin("GET", &format!("/v1/keys/{globex}/credits"), None)
        .await
        .json();
    assert_eq!(credits["remaining"], 10);
    assert_eq!(s.verify(json!({"key": globex_key})).await["code"], "VALID");

    // Its own tenant's key it reads and changes as any root key would.
    assert_eq!(
        call("GET", format!("/v1/keys/{acme}"), None).await.status,
        200
    );
    let renamed = call(
        "PATCH",
        format!("/v1/keys/{acme}"),
        Some(json!({"name": "n"})),
    )
    .await;
    assert_eq!(renamed.status, 200);
    assert_eq!(
        call("POST", format!("/v1/keys/{acme}/rotate"), Some(json!({})))
            .await
            .status,
        201
    );
    let set = call(
        "POST",
        format!("/v1/keys/{acme}/credits"),
        Some(json!({"op": "set", "amount": 3})),
    )
    .await;
    assert_eq!(set.json()["remaining"], 3);
    assert_eq!(
        call("GET", format!("/v1/keys/{acme}/credits"), None)
            .await
            .json()["remaining"],
        3
    );
    assert_eq!(
        call(
            "POST",
            format!("/v1/keys/{acme}/revoke"),
            Some(json!({"reason": "done"}))
        )
        .await
        .status,
        200
    );

    // It creates keys of its own tenant only, and must say so.
    for body in [
        json!({"owner": "x"}),
        json!({"owner": "x", "tenant": "globex"}),
        json!({"owner": "x", "tenant": "ACME"}),
    ] {
        let r = call("POST", "/v1/keys".into(), Some(body.clone())).await;
        let problem = r.problem(400, "invalid_field");
        assert_eq!(problem["field"], "tenant", "{body}");
    }
    let created = call(
        "POST",
        "/v1/keys".into(),
        Some(json!({"owner": "x", "tenant": "acme"})),
    )
    .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.json()["record"]["tenant"], "acme");
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_7_a_tenant_root_key_cannot_mint_or_revoke_root_keys_outside_its_tenant() {
    let s = Server::start().await;
    let bootstrap_id = listed(&s.admin("GET", "/v1/root-keys", None).await)[0].clone();
    let (acme_admin, acme_admin_id) = root_key(
        &s,
        json!({"tenant": "acme", "permissions": ["root.manage", "keys.read"]}),
    )
    .await;
    let (globex_admin, globex_admin_id) = root_key(
        &s,
        json!({"tenant": "globex", "permissions": ["root.manage"]}),
    )
    .await;
    let mint = |body: Value| {
        let http = s.http.clone();
        let key = acme_admin.clone();
        async move {
            http.call("POST", "/v1/root-keys", Some(&key), Some(body))
                .await
        }
    };

    // No unscoped root key, and none of another tenant.
    for body in [
        json!({"permissions": ["keys.read"]}),
        json!({"tenant": "globex", "permissions": ["keys.read"]}),
    ] {
        let r = mint(body.clone()).await;
        assert_eq!(r.problem(400, "invalid_field")["field"], "tenant", "{body}");
    }
    // Within its tenant, only permissions it holds.
    for (i, permissions) in [json!(["*"]), json!(["keys.read", "keys.create"])]
        .into_iter()
        .enumerate()
    {
        let r = mint(json!({"tenant": "acme", "permissions": permissions})).await;
        let problem = r.problem(403, "forbidden");
        assert_eq!(problem["field"], format!("permissions[{i}]"));
    }
    let r = mint(json!({"tenant": "acme", "permissions": ["keys.read"]})).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let minted = r.json();
    assert_eq!(minted["record"]["tenant"], "acme");
    let minted_id = minted["record"]["key_id"].as_str().unwrap().to_owned();

    // It lists its tenant's root keys only.
    let mine = listed(
        &s.http
            .call("GET", "/v1/root-keys", Some(&acme_admin), None)
            .await,
    );
    assert_eq!(mine, [acme_admin_id.clone(), minted_id.clone()]);

    // The unscoped bootstrap key and another tenant's root key do not exist for it.
    for id in [bootstrap_id, globex_admin_id] {
        let r = s
            .http
            .call(
                "POST",
                &format!("/v1/root-keys/{id}/revoke"),
                Some(&acme_admin),
                Some(json!({"reason": "takeover"})),
            )
            .await;
        assert_not_found(&r, &id, "revoke another tenant's root key");
    }
    assert_eq!(
        s.http
            .call("GET", "/v1/root-keys", Some(&globex_admin), None)
            .await
            .status,
        200,
        "the other tenant's admin key still works"
    );
    assert_eq!(s.admin("GET", "/v1/root-keys", None).await.status, 200);
    // Its own tenant's it may revoke.
    let r = s
        .http
        .call(
            "POST",
            &format!("/v1/root-keys/{minted_id}/revoke"),
            Some(&acme_admin),
            Some(json!({"reason": "done"})),
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_7_a_root_key_grants_only_permissions_it_holds() {
    let s = Server::start().await;
    // Before this fix, root.manage alone could mint `*` (and so every other permission).
    let (manager, _) = root_key(&s, json!({"permissions": ["root.manage"]})).await;
    let (keys_manager, _) = root_key(&s, json!({"permissions": ["root.manage", "keys.*"]})).await;
    let cases: [(&str, Value, u16); 8] = [
        (&manager, json!(["*"]), 403),
        (&manager, json!(["keys.read"]), 403),
        (&manager, json!(["root.*"]), 403),
        (&manager, json!(["root.manage"]), 201),
        (&keys_manager, json!(["*"]), 403),
        (&keys_manager, json!(["keys.read", "audit.read"]), 403),
        (&keys_manager, json!(["keys.read"]), 201),
        (&keys_manager, json!(["keys.*", "root.manage"]), 201),
    ];
    for (key, permissions, expected) in cases {
        let r = s
            .http
            .call(
                "POST",
                "/v1/root-keys",
                Some(key),
                Some(json!({"permissions": permissions})),
            )
            .await;
        assert_eq!(
            r.status,
            expected,
            "{permissions}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if expected == 403 {
            r.problem(403, "forbidden");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_7_a_tenant_root_key_verifies_only_its_tenants_keys() {
    let s = Server::start().await;
    let (acme_key, acme) = s
        .create(json!({"owner": "a", "tenant": "acme", "quota": {"credits": 5}}))
        .await;
    let (globex_key, globex) = s
        .create(json!({"owner": "g", "tenant": "globex", "quota": {"credits": 5}}))
        .await;
    let (verifier, _) = root_key(
        &s,
        json!({"tenant": "acme", "permissions": ["keys.verify"]}),
    )
    .await;
    let verify = |key: &str, cost: u64| {
        let http = s.http.clone();
        let verifier = verifier.clone();
        let body = json!({"key": key, "cost": cost});
        async move {
            let r = http
                .call("POST", "/v1/keys/verify", Some(&verifier), Some(body))
                .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()
        }
    };

    let v = verify(&acme_key, 1).await;
    assert_eq!(
        (v["code"].clone(), v["key_id"].clone()),
        (json!("VALID"), json!(acme))
    );
    // Another tenant's key is NOT_FOUND, with no identity, and costs it nothing.
    let v = verify(&globex_key, 5).await;
    assert_eq!(v["code"], "NOT_FOUND");
    assert_eq!(v["valid"], false);
    for field in ["key_id", "owner", "tenant", "credits_remaining"] {
        assert!(v.get(field).is_none_or(Value::is_null), "{field}: {v}");
    }
    let credits = s
        .admin("GET", &format!("/v1/keys/{globex}/credits"), None)
        .await
        .json();
    assert_eq!(
        credits["remaining"], 5,
        "a scoped verify spent another tenant's quota"
    );
    s.engine.flush_usage().await.unwrap();
    let usage = s
        .admin("GET", &format!("/v1/usage?key_id={globex}"), None)
        .await
        .json();
    assert_eq!(
        usage["items"],
        json!([]),
        "a scoped verify was billed to the other tenant"
    );

    // The same through nginx auth_request with the scoped key as X-Keyward-Root-Key.
    let r = s
        .http
        .auth_request(Some(&verifier), Some(&acme_key), &[], "")
        .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let r = s
        .http
        .auth_request(Some(&verifier), Some(&globex_key), &[], "")
        .await;
    r.problem(401, "unknown_key");
    assert_eq!(r.header("x-keyward-key-id"), "");

    // An unscoped verifier still sees every tenant.
    assert_eq!(s.verify(json!({"key": globex_key})).await["code"], "VALID");
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_7_a_tenant_root_key_reads_only_its_tenants_audit_usage_and_reports() {
    let s = Server::start().await;
    s.engine
        .set_rotation_config(keyward_engine::rotation_policy::RotationConfig {
            policies: vec![
                keyward_engine::rotation_policy::RotationPolicy::parse("*/live=30").unwrap(),
            ],
            warning_days: 7,
        });
    let (acme_key, acme) = s.create(json!({"owner": "a", "tenant": "acme"})).await;
    let (globex_key, globex) = s.create(json!({"owner": "g", "tenant": "globex"})).await;
    let (reader, reader_id) = root_key(
        &s,
        json!({"tenant": "acme", "permissions": ["audit.read", "usage.read", "keys.read"]}),
    )
    .await;
    s.admin(
        "PATCH",
        &format!("/v1/keys/{globex}"),
        Some(json!({"name": "g2"})),
    )
    .await;
    s.admin(
        "PATCH",
        &format!("/v1/keys/{acme}"),
        Some(json!({"name": "a2"})),
    )
    .await;
    // The reader's own refused call is audited with it as the actor.
    s.http
        .call(
            "POST",
            "/v1/keys",
            Some(&reader),
            Some(json!({"owner": "x", "tenant": "acme"})),
        )
        .await
        .problem(403, "forbidden");
    for key in [&acme_key, &globex_key] {
        assert_eq!(s.verify(json!({"key": key})).await["code"], "VALID");
    }
    s.engine.flush_usage().await.unwrap();
    let get = |path: String| {
        let http = s.http.clone();
        let reader = reader.clone();
        async move {
            let r = http.call("GET", &path, Some(&reader), None).await;
            assert_eq!(
                r.status,
                200,
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            r.json()
        }
    };

    // Audit: the events of its tenant's keys (its own root key included), nothing else.
    let events = get("/v1/audit".into()).await;
    let seen: Vec<(String, Value, Value)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].clone(),
                e["target"].clone(),
            )
        })
        .collect();
    let acme_ids = [json!(acme), json!(reader_id)];
    for (action, actor, target) in &seen {
        assert!(
            acme_ids.contains(target) || acme_ids.contains(actor),
            "{action} by {actor} on {target} is not acme's"
        );
        assert!(
            *target != json!(globex),
            "{action} on the other tenant's key"
        );
    }
    let actions: Vec<&str> = seen.iter().map(|(a, _, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        ["key.create", "root.create", "key.update", "auth.failed"]
    );
    let by_id = get(format!("/v1/audit?key_id={globex}")).await;
    assert_eq!(by_id["events"], json!([]));
    // The chain spans every tenant: refused.
    s.http
        .call("POST", "/v1/audit/verify", Some(&reader), None)
        .await
        .problem(403, "out_of_scope");

    // Usage: its tenant's rows only, whatever is asked.
    let usage = get("/v1/usage".into()).await;
    let keys: Vec<&str> = usage["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [acme.as_str()]);
    assert_eq!(
        get("/v1/usage?tenant=globex".into()).await["items"],
        json!([])
    );
    assert_eq!(
        get(format!("/v1/usage?key_id={globex}")).await["items"],
        json!([])
    );
    let everyone = s.admin("GET", "/v1/usage", None).await.json();
    assert_eq!(everyone["items"].as_array().unwrap().len(), 2);

    // The rotation report: its tenant's keys only.
    s.clock.advance(Duration::days(31));
    let report = get("/v1/reports/rotation".into()).await;
    assert_eq!(report["active_keys"], 1);
    let overdue: Vec<&str> = report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(overdue, [acme.as_str()]);
    let all = s.admin("GET", "/v1/reports/rotation", None).await.json();
    assert_eq!(all["active_keys"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_7_a_tenant_root_key_reads_plans_but_cannot_change_them() {
    let s = Server::start().await;
    let plan = json!({"plan_id": "pro", "quota": {"credits": 100}});
    assert_eq!(s.admin("POST", "/v1/plans", Some(plan)).await.status, 201);
    let (scoped, _) = root_key(
        &s,
        json!({"tenant": "acme", "permissions": ["plans.read", "plans.write", "keys.create"]}),
    )
    .await;
    let call = |method: &'static str, path: &'static str, body: Option<Value>| {
        let http = s.http.clone();
        let scoped = scoped.clone();
        async move { http.call(method, path, Some(&scoped), body).await }
    };
    assert_eq!(call("GET", "/v1/plans", None).await.status, 200);
    assert_eq!(call("GET", "/v1/plans/pro", None).await.status, 200);
    // Plans are shared by every tenant: a scoped key cannot change them.
    let writes = [
        ("POST", "/v1/plans", Some(json!({"plan_id": "mine"}))),
        (
            "PUT",
            "/v1/plans/pro",
            Some(json!({"quota": {"credits": 1}})),
        ),
        ("DELETE", "/v1/plans/pro", None),
    ];
    for (method, path, body) in writes {
        call(method, path, body).await.problem(403, "out_of_scope");
    }
    let unchanged = s.admin("GET", "/v1/plans/pro", None).await.json();
    assert_eq!(unchanged["quota"]["credits"], 100);
    assert_eq!(unchanged["version"], 1);
    // Its keys may follow a plan.
    let r = call(
        "POST",
        "/v1/keys",
        Some(json!({"owner": "o", "tenant": "acme", "plan": "pro"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn finding_7_the_cli_creates_a_tenant_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEYWARD.serve(dir.path());
    let root = server.root_key.clone().unwrap();
    let created = server.cli(
        &root,
        &[
            "root",
            "create",
            "--tenant",
            "acme",
            "--permission",
            "keys.*",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let text = String::from_utf8(created.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["tenant", "acme"])),
        "{text}"
    );
    let scoped = text
        .lines()
        .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["key", secret] => Some(secret.to_owned()),
            _ => None,
        })
        .unwrap();
    assert!(scoped.starts_with("kwroot_"), "{text}");
    let refused = server.cli(&scoped, &["keys", "create", "--owner", "x"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8(refused.stderr).unwrap();
    assert!(err.contains("tenant"), "{err}");
    let made = server.cli(
        &scoped,
        &["keys", "create", "--owner", "x", "--tenant", "acme"],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}
