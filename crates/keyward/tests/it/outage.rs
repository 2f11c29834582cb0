//! Real outages: a node reaches PostgreSQL through a TCP proxy the test controls, and the test
//! cuts it off (every connection closed, new ones refused) while requests flow, then restores
//! it. Needs `KEYWARD_TEST_POSTGRES_URL` (see `keyward_testkit::postgres`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keyward_testkit::eventually;
use keyward_testkit::http::{Http, Response};
use keyward_testkit::postgres::Schema;
use keyward_testkit::proxy::CutProxy;
use serde_json::{Value, json};

use crate::KEYWARD;

async fn verify(http: &Http, root: &str, key: &str) -> Response {
    http.verify(root, json!({"key": key})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_postgres_serves_cached_keys_fails_closed_and_recovers() {
    let Some(schema) = Schema::new("a_node_cut_off_from_postgres") else {
        return;
    };
    let proxy = CutProxy::start(schema.server()).await;
    let logs = tempfile::tempdir().unwrap();
    let store = schema.store_url_via(proxy.addr);
    let node = KEYWARD.serve_with(
        &[
            "--store",
            &store,
            "--store-acquire-timeout-ms",
            "300",
            "--store-statement-timeout-ms",
            "2000",
        ],
        &logs.path().join("node"),
    );
    let root = node.root_key.clone().expect("bootstrap");
    let http = Http::new(node.addr);
    let create = |name: &'static str| {
        let (http, root) = (http.clone(), root.clone());
        async move {
            http.call(
                "POST",
                "/v1/keys",
                Some(&root),
                Some(json!({"owner": "outage", "name": name})),
            )
            .await
        }
    };
    let known = create("known").await.json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let unseen = create("unseen").await.json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // The node's own writes also come back through the change feed a moment later and evict
    // what they touched, and a cache fill racing any eviction is dropped; verifying a few
    // dozen times lets those notifications pass so the key (and the root key) end up cached.
    for _ in 0..50 {
        assert_eq!(verify(&http, &root, &known).await.json()["code"], "VALID");
    }

    // Requests flow the whole time: the cached key must verify throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let flow = {
        let (http, root, key, stop) = (http.clone(), root.clone(), known.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let r = verify(&http, &root, &key).await;
                answers.push((r.status, r.json()["code"].clone()));
            }
            answers
        })
    };

    proxy.cut();
    // The known key keeps verifying, marked as answered from a stale cache.
    let degraded: Value = eventually(Duration::from_secs(20), "a degraded answer", || async {
        let body = verify(&http, &root, &known).await.json();
        (body["degraded"]["reason"] == "store_unavailable_stale_cache").then_some(body)
    })
    .await;
    assert_eq!(degraded["code"], "VALID", "{degraded}");
    // A key this node never looked up fails closed.
    verify(&http, &root, &unseen)
        .await
        .problem(503, "store_unavailable");
    // Admin writes are refused the same way.
    create("during").await.problem(503, "store_unavailable");
    // The load balancer is told.
    let ready = http.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json()["checks"]["store"],
        "unavailable",
        "{}",
        ready.json()
    );

    proxy.restore();
    // Recovery needs no restart: the store answers and the change feed is back.
    eventually(
        Duration::from_secs(20),
        "readiness after restore",
        || async {
            let ready = http.call("GET", "/readyz", None, None).await;
            (ready.status == 200 && ready.json()["status"] == "ok").then_some(())
        },
    )
    .await;
    // A node that saw the store fail tries it again at most once a second (in between it
    // answers from stale-if-error at once, and unknown keys fail closed). The readiness check
    // above does not end that wait (issue 10, finding 5: anyone can call /readyz); the next
    // probe does.
    let body = eventually(Duration::from_secs(20), "the next store probe", || async {
        let r = verify(&http, &root, &unseen).await;
        (r.status == 200).then(|| r.json())
    })
    .await;
    assert_eq!(body["code"], "VALID", "{body}");
    let body = verify(&http, &root, &known).await.json();
    assert_eq!(body["code"], "VALID", "{body}");
    assert!(body.get("degraded").is_none(), "{body}");
    assert_eq!(create("after").await.status, 201);

    stop.store(true, Ordering::SeqCst);
    let answers = flow.await.unwrap();
    assert!(!answers.is_empty());
    for (status, code) in &answers {
        assert_eq!(
            (*status, code.as_str()),
            (200, Some("VALID")),
            "{answers:?}"
        );
    }
    drop(node);
    schema.drop().await;
}
