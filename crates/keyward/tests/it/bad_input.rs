//! Bad input always gets a clear 4xx problem, never a panic or a dropped connection.

use serde_json::json;

use keyward_testkit::server::Server;

#[tokio::test(flavor = "multi_thread")]
async fn malformed_bodies_get_clear_4xx() {
    let s = Server::start().await;
    let root = Some(s.root_key.as_str());
    let post = |ct: &'static str, body: Vec<u8>| {
        let http = s.http.clone();
        async move { http.raw("POST", "/v1/keys", root, Some((ct, body))).await }
    };

    let big = format!(r#"{{"owner": "{}"}}"#, "x".repeat(70 * 1024)).into_bytes();
    assert!(
        post("application/json", big)
            .await
            .problem(413, "payload_too_large")["detail"]
            .as_str()
            .unwrap()
            .contains("65536")
    );
    let truncated = post("application/json", br#"{"owner": "o", "permi"#.to_vec()).await;
    assert!(
        truncated.problem(400, "invalid_request")["detail"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    post(
        "application/json",
        vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
    )
    .await
    .problem(400, "invalid_request");
    post("text/plain", br#"{"owner": "o"}"#.to_vec())
        .await
        .problem(415, "unsupported_media_type");
    post("", br#"{"owner": "o"}"#.to_vec())
        .await
        .problem(415, "unsupported_media_type");
    let unknown = post(
        "application/json",
        br#"{"owner": "o", "scopes": ["a"]}"#.to_vec(),
    )
    .await;
    assert!(
        unknown.problem(400, "invalid_request")["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `scopes`")
    );
    let missing = post("application/json", b"{}".to_vec()).await;
    assert!(
        missing.problem(400, "invalid_request")["detail"]
            .as_str()
            .unwrap()
            .contains("owner")
    );
    post("application/json", b"[]".to_vec())
        .await
        .problem(400, "invalid_request");
    post("application/json", b"null".to_vec())
        .await
        .problem(400, "invalid_request");
    // serde reads a struct from an array of its fields; the API takes objects only.
    for body in [&br#"["o"]"#[..], b" \n [\"o\", null]"] {
        let array = post("application/json", body.to_vec()).await;
        assert!(
            array.problem(400, "invalid_request")["detail"]
                .as_str()
                .unwrap()
                .contains("expected a JSON object, found an array"),
        );
    }
    // JSON media types with parameters or a +json suffix are accepted, as before.
    for ct in [
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "Application/JSON",
    ] {
        let ok = post(ct, br#"{"owner": "o"}"#.to_vec()).await;
        assert_eq!(
            ok.status,
            201,
            "{ct}: {}",
            String::from_utf8_lossy(&ok.body)
        );
    }
    post("application/jsonx", br#"{"owner": "o"}"#.to_vec())
        .await
        .problem(415, "unsupported_media_type");

    // A verify request written as an array holding a real key is refused, not verified.
    let (key, _) = s.create(json!({"owner": "o"})).await;
    s.http
        .raw(
            "POST",
            "/v1/keys/verify",
            root,
            Some((
                "application/json",
                serde_json::to_vec(&json!([key])).unwrap(),
            )),
        )
        .await
        .problem(400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_fields_are_named() {
    let s = Server::start().await;
    let cases = [
        (json!({"owner": ""}), "owner"),
        (
            json!({"owner": "o", "permissions": ["orders.*.read"]}),
            "permissions[0]",
        ),
        (
            json!({"owner": "o", "routes": ["GET /ok", "no-method"]}),
            "routes[1]",
        ),
        (
            json!({"owner": "o", "meta": {"blob": "x".repeat(5000)}}),
            "meta",
        ),
        (json!({"owner": "o", "tags": ["has space"]}), "tags[0]"),
        (json!({"owner": "o", "ttl_seconds": 0}), "ttl_seconds"),
        (
            json!({"owner": "o", "ttl_seconds": 60, "expires_at": "2030-01-01T00:00:00Z"}),
            "ttl_seconds",
        ),
        (json!({"owner": "o", "prefix": "Nope"}), "prefix"),
        (json!({"owner": "o", "prefix": "kwroot"}), "prefix"),
        (
            json!({"owner": "o", "environment": "prod uction"}),
            "environment",
        ),
    ];
    for (body, field) in cases {
        let r = s.admin("POST", "/v1/keys", Some(body)).await;
        let problem = r.problem(400, "invalid_field");
        assert_eq!(problem["field"], field, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().starts_with(field),
            "{problem}"
        );
    }
    // A key pasted into metadata would be stored in clear: refused, and not echoed.
    let (key, key_id) = s.create(json!({"owner": "o"})).await;
    for body in [
        json!({"owner": key}),
        json!({"owner": "o", "name": format!("key {key}")}),
        json!({"owner": "o", "meta": {"k": key}}),
    ] {
        let r = s.admin("POST", "/v1/keys", Some(body)).await;
        assert!(
            r.problem(400, "invalid_field")["detail"]
                .as_str()
                .unwrap()
                .contains("looks like an API key")
        );
        assert!(!String::from_utf8_lossy(&r.body).contains(&key));
    }
    let r = s
        .admin(
            "PATCH",
            &format!("/v1/keys/{key_id}"),
            Some(json!({"permissions": [key]})),
        )
        .await;
    assert_eq!(r.problem(400, "invalid_field")["field"], "permissions[0]");
    let r = s
        .admin(
            "POST",
            "/v1/keys",
            Some(json!({"owner": "o", "expires_at": "tomorrow"})),
        )
        .await;
    assert!(
        r.problem(400, "invalid_request")["detail"]
            .as_str()
            .unwrap()
            .contains("expires_at")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn absurd_paging_values_are_rejected() {
    let s = Server::start().await;
    for query in [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=1001",
        "limit=99999999999999999999",
        "cursor=-5",
        "cursor=abc",
        "cursor=99999999999999999999999",
        "status=deleted",
    ] {
        let r = s.admin("GET", &format!("/v1/keys?{query}"), None).await;
        let p = r.problem(400, "invalid_field");
        assert!(
            ["limit", "cursor", "status"].contains(&p["field"].as_str().unwrap()),
            "{query}: {p}"
        );
    }
    s.admin("GET", "/v1/keys?ownr=x", None)
        .await
        .problem(400, "invalid_request");
    s.admin("GET", "/v1/audit?limit=0", None)
        .await
        .problem(400, "invalid_field");
    let page = s
        .admin("GET", "/v1/keys?limit=1000&cursor=999999", None)
        .await;
    assert_eq!(page.json(), json!({"keys": [], "next_cursor": null}));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_methods_and_ids() {
    let s = Server::start().await;
    s.admin("GET", "/v2/keys", None)
        .await
        .problem(404, "not_found");
    s.admin("DELETE", "/v1/keys", None)
        .await
        .problem(405, "method_not_allowed");
    s.admin("GET", "/v1/keys/not-a-key-id", None)
        .await
        .problem(404, "key_not_found");
    let long_id = format!("/v1/keys/key_{}", "a".repeat(5000));
    s.admin("GET", &long_id, None)
        .await
        .problem(404, "key_not_found");
    // A key pasted where a key_id belongs is not echoed back.
    let (key, _) = s.create(json!({"owner": "o"})).await;
    let r = s.admin("GET", &format!("/v1/keys/{key}"), None).await;
    r.problem(404, "key_not_found");
    assert!(!String::from_utf8_lossy(&r.body).contains(&key));
    let r = s
        .admin(
            "POST",
            "/v1/keys",
            Some(json!({"owner": "o", "ttl_seconds": key})),
        )
        .await;
    r.problem(400, "invalid_request");
    assert!(
        !String::from_utf8_lossy(&r.body).contains(&key),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_path_parameters_and_verify_fields() {
    let s = Server::start().await;
    let r = s.admin("GET", "/v1/keys/%FF%FE", None).await;
    r.problem(400, "invalid_request");
    let (key, _) = s.create(json!({"owner": "o"})).await;
    let long_path = format!("/{}", "a/".repeat(3000));
    let r = s
        .admin(
            "POST",
            "/v1/keys/verify",
            Some(json!({"key": key, "path": long_path})),
        )
        .await;
    assert_eq!(r.problem(400, "invalid_field")["field"], "path");
    let r = s
        .admin(
            "POST",
            "/v1/keys/verify",
            Some(json!({"key": key, "method": "GET /x"})),
        )
        .await;
    assert_eq!(r.problem(400, "invalid_field")["field"], "method");
    let r = s
        .admin("POST", "/v1/keys/verify", Some(json!({"key": 42})))
        .await;
    r.problem(400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread")]
async fn root_keys_need_explicit_permissions_and_one_must_remain() {
    let s = Server::start().await;
    let r = s
        .admin("POST", "/v1/root-keys", Some(json!({"owner": "ops"})))
        .await;
    assert_eq!(r.problem(400, "invalid_field")["field"], "permissions");
    let root_id = s.admin("GET", "/v1/root-keys", None).await.json()["keys"][0]["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s
        .admin(
            "POST",
            &format!("/v1/root-keys/{root_id}/revoke"),
            Some(json!({"reason": "oops"})),
        )
        .await;
    r.problem(409, "last_root_key");
    // With a second key that can manage root keys, the first can go.
    let second = s
        .admin(
            "POST",
            "/v1/root-keys",
            Some(json!({"owner": "ops", "permissions": ["root.*", "keys.read"]})),
        )
        .await;
    let second_key = second.json()["key"].as_str().unwrap().to_owned();
    let r = s
        .admin(
            "POST",
            &format!("/v1/root-keys/{root_id}/revoke"),
            Some(json!({"reason": "rotated"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.http
            .call("GET", "/v1/keys", Some(&second_key), None)
            .await
            .status,
        200
    );
    s.http
        .call("GET", "/v1/keys", Some(&s.root_key), None)
        .await
        .problem(401, "unauthenticated");
}
