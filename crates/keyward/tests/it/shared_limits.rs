//! Shared limits across servers (issue 4): two `keyward serve` processes with `--redis` and one
//! namespace enforce one limit per key between them.

use keyward_testkit::http::Http;
use keyward_testkit::redis;
use serde_json::json;

use crate::KEYWARD;

#[tokio::test]
async fn two_servers_sharing_redis_enforce_one_limit() {
    let Some(url) = redis::url("two_servers_sharing_redis_enforce_one_limit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let namespace = redis::namespace();
    let data_dir = dir.path().to_str().unwrap();
    let args = [
        "--data-dir",
        data_dir,
        "--redis",
        url.as_str(),
        "--redis-namespace",
        namespace.as_str(),
    ];
    let a = KEYWARD.serve_with(&args, &dir.path().join("a"));
    let root = a.root_key.clone().unwrap();
    // The second node shares the data directory (one store) and the Redis namespace.
    let b = KEYWARD.serve_with(&args, &dir.path().join("b"));
    let (http_a, http_b) = (Http::new(a.addr), Http::new(b.addr));
    let limits = json!([{"name": "per_hour", "limit": 5, "period_seconds": 3600}]);
    let (key, _) = http_a
        .create(&root, json!({"owner": "o", "limits": limits}))
        .await;
    let mut codes = Vec::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { &http_a } else { &http_b };
        let r = node.verify(&root, json!({"key": key})).await;
        assert_eq!(r.status, 200);
        let body = r.json();
        assert_eq!(body["enforcement"]["source"], "redis", "{body}");
        codes.push(body["code"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        codes,
        [
            "VALID",
            "VALID",
            "VALID",
            "VALID",
            "VALID",
            "RATE_LIMITED",
            "RATE_LIMITED",
            "RATE_LIMITED"
        ],
        "five per hour across both servers, not five each"
    );
    let ready = http_b.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["checks"]["redis"], "ok");
}
