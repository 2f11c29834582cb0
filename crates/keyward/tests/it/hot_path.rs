//! The lean path of `POST /v1/keys/verify` and `GET /v1/auth` (keyward_http's `hot` module)
//! answers exactly as the router does: the same engine is served twice, once as the server
//! serves it (lean path in front of the router) and once through the router alone, and every
//! request of a corpus of good and bad ones gets the same status, headers and body from both.

use keyward_http::AppState;
use keyward_http::listener::Connections;
use keyward_testkit::http::{Http, Response};
use keyward_testkit::server::Server;
use serde_json::{Value, json};

/// The same engine, served through the router alone.
async fn router_only(s: &Server) -> Http {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState {
        engine: s.engine.clone(),
    };
    tokio::spawn(keyward_http::listener::serve_router(
        listener,
        keyward_http::router(state),
        Connections::defaults("admin"),
        std::future::pending(),
    ));
    Http::new(addr)
}

/// What must match: the status, every header but the date, and the body (as JSON when it is).
fn comparable(r: &Response) -> (u16, Vec<(String, String)>, Value) {
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    let body = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into_owned()));
    (r.status, headers, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lean_path_answers_as_the_router_does() {
    let s = Server::start().await;
    let plain = router_only(&s).await;
    let root = s.root_key.clone();
    // No limits or quota: two verifications of the same key answer the same.
    let (key, _) = s
        .create(json!({"owner": "o", "permissions": ["orders.read"]}))
        .await;
    let reader = s
        .admin(
            "POST",
            "/v1/root-keys",
            Some(json!({"owner": "r", "permissions": ["keys.read"]})),
        )
        .await
        .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let verify = |body: String| (Some(root.clone()), "application/json", body.into_bytes());
    let good = format!(r#"{{"key":"{key}","permissions":"orders.read"}}"#);
    let verify_cases = vec![
        verify(good.clone()),
        verify(format!(r#"{{"key":"{key}","permissions":"orders.write"}}"#)),
        verify(format!(r#"{{"key":"{key}","path":"/a/../b"}}"#)),
        verify(format!(r#"{{"key":"{key}","ip":"not-an-ip"}}"#)),
        verify(format!(r#"{{"key":"{key}","permissions":"AND ("}}"#)),
        verify(format!(r#"{{"key":"{key}","tenant":"bad tenant"}}"#)),
        verify(format!(r#"{{"key":"{key}","scopes":["a"]}}"#)),
        verify(r#"{"key":"kw_live_notakey"}"#.to_owned()),
        verify(r#"{"key":"kw_live_9AiOVWQeLykFU9qddXI1OlqzL8lhszH22kpKKB"}"#.to_owned()),
        verify(format!(r#"["{key}"]"#)),
        verify(r#"{"key": "#.to_owned()),
        verify("{}".to_owned()),
        verify(format!(
            r#"{{"key":"{key}","origin":"{}"}}"#,
            "x".repeat(70 * 1024)
        )),
        (Some(root.clone()), "text/plain", good.clone().into_bytes()),
        (Some(root.clone()), "", good.clone().into_bytes()),
        (None, "application/json", good.clone().into_bytes()),
        (
            Some(reader.clone()),
            "application/json",
            good.clone().into_bytes(),
        ),
        (
            Some(key.clone()),
            "application/json",
            good.clone().into_bytes(),
        ),
        (
            Some("kwroot_nothing".to_owned()),
            "application/json",
            good.clone().into_bytes(),
        ),
    ];
    for (bearer, content_type, body) in verify_cases {
        let sent = |http: Http| {
            let (bearer, body) = (bearer.clone(), body.clone());
            async move {
                http.raw(
                    "POST",
                    "/v1/keys/verify",
                    bearer.as_deref(),
                    Some((content_type, body)),
                )
                .await
            }
        };
        let lean = sent(s.http.clone()).await;
        let routed = sent(plain.clone()).await;
        assert_eq!(
            comparable(&lean),
            comparable(&routed),
            "POST /v1/keys/verify with {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(80)
                .collect::<String>()
        );
    }

    // (nginx root key, client key, headers, query)
    type AuthCase<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Vec<(&'a str, &'a str)>,
        &'a str,
    );
    let auth_cases: Vec<AuthCase> = vec![
        (Some(&root), Some(&key), vec![], "?permissions=orders.read"),
        (Some(&root), Some(&key), vec![], "?permissions=orders.write"),
        (
            Some(&root),
            Some(&key),
            vec![("x-original-uri", "/a/%2e%2e/b")],
            "",
        ),
        (
            Some(&root),
            Some(&key),
            vec![("x-original-method", "GET")],
            "?cost=0",
        ),
        (Some(&root), Some(&key), vec![], "?scopes=a"),
        (Some(&root), Some(&key), vec![], "?cost=-1"),
        (Some(&root), Some(&key), vec![], "?permissions=AND%20("),
        (
            Some(&root),
            Some(&key),
            vec![
                ("x-keyward-require-tenant", "a"),
                ("x-keyward-require-tenant", "b"),
            ],
            "",
        ),
        (Some(&root), None, vec![], ""),
        (None, Some(&key), vec![], ""),
        (Some(&reader), Some(&key), vec![], ""),
        (Some(&root), Some("kw_live_notakey"), vec![], ""),
    ];
    for (root, key, extra, query) in auth_cases {
        let lean = s.http.auth_request(root, key, &extra, query).await;
        let routed = plain.auth_request(root, key, &extra, query).await;
        assert_eq!(
            comparable(&lean),
            comparable(&routed),
            "GET /v1/auth{query} with {extra:?}"
        );
    }
    // The same request served by both really is a success on both (the corpus is not all
    // refusals that would match whatever each path did).
    let ok = s
        .http
        .raw(
            "POST",
            "/v1/keys/verify",
            Some(&s.root_key),
            Some(("application/json", good.into_bytes())),
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["valid"], true);
}
