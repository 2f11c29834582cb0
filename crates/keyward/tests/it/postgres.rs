//! The server on PostgreSQL (`--store`): a key created through one node verifies through
//! another and its revocation reaches the other, nodes starting together mint one root key,
//! and `keyward migrate`.
//!
//! These need a server: set `KEYWARD_TEST_POSTGRES_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/test`). Without it they say they were skipped; with
//! `CI=true` a missing URL fails them. Each test uses a schema of its own (`?schema=`), from
//! `keyward_testkit::postgres`.

use keyward_testkit::http::Http;
use keyward_testkit::postgres::Schema;
use keyward_testkit::process::Process;
use serde_json::json;

use crate::KEYWARD;

#[tokio::test]
async fn serve_on_postgres_creates_and_verifies_a_key_across_nodes() {
    let Some(schema) = Schema::new("serve_on_postgres_creates_and_verifies_a_key_across_nodes")
    else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let store = schema.store_url();
    let a = KEYWARD.serve_with(&["--store", &store], &logs.path().join("a"));
    let root = a.root_key.clone().expect("the first node bootstraps");
    assert!(
        a.stdout_lines.iter().all(|l| !l.contains("password")),
        "{:?}",
        a.stdout_lines
    );
    let http_a = Http::new(a.addr);
    let (key, key_id) = http_a
        .create(
            &root,
            json!({"owner": "billing", "permissions": ["orders.read"]}),
        )
        .await;

    // A second node on the same store: no second root key, and it knows the key.
    let b = KEYWARD.serve_with(&["--store", &store], &logs.path().join("b"));
    assert_eq!(b.root_key, None, "{:?}", b.stdout_lines);
    for node in [&http_a, &Http::new(b.addr)] {
        let verified = node
            .verify(&root, json!({"key": key, "permissions": "orders.read"}))
            .await;
        assert_eq!(verified.status, 200);
        assert_eq!(verified.json()["code"], "VALID", "{}", verified.json());
    }
    // Node b has the key cached; a revoke through node a reaches it through the change feed
    // long before the cache's 30 s staleness bound.
    let revoked = http_a.revoke(&root, &key_id, "leaked").await;
    assert_eq!(revoked.status, 200);
    let http_b = Http::new(b.addr);
    let seen = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let verified = http_b.verify(&root, json!({"key": key})).await;
            if verified.json()["code"] == "REVOKED" {
                return;
            }
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "node b still accepts the revoked key after 5 s"
    );
    // Node b measured how long the revocation took to reach it: it applied the change
    // before it could answer REVOKED, so the sample is there already.
    let metrics = http_b.raw("GET", "/metrics", None, None).await;
    let text = String::from_utf8(metrics.body).unwrap();
    let samples: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("keyward_revocation_propagation_seconds_count "))
        .unwrap_or_else(|| panic!("no propagation histogram in:\n{text}"))
        .parse()
        .unwrap();
    assert!(samples >= 1.0, "{samples}");
    drop((a, b));
    schema.drop().await;
}

#[tokio::test]
async fn nodes_starting_together_on_an_empty_store_mint_one_root_key() {
    let Some(schema) = Schema::new("nodes_starting_together_on_an_empty_store_mint_one_root_key")
    else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let store = schema.store_url();
    let nodes: Vec<Process> = std::thread::scope(|scope| {
        let starts: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|name| {
                let (store, dir) = (store.clone(), logs.path().join(name));
                scope.spawn(move || KEYWARD.serve_with(&["--store", &store], &dir))
            })
            .collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    let minted = nodes.iter().filter(|n| n.root_key.is_some()).count();
    assert_eq!(minted, 1, "exactly one node prints a root key");
    drop(nodes);
    schema.drop().await;
}

#[tokio::test]
async fn migrate_runs_the_migrations_and_exits() {
    let Some(schema) = Schema::new("migrate_runs_the_migrations_and_exits") else {
        return;
    };
    for _ in 0..2 {
        let out = KEYWARD
            .command()
            .args(["migrate", "--store", &schema.store_url()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
    }
    schema.drop().await;
}

#[test]
fn migrate_failures_are_clear_errors() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    for (store, expected) in [
        (
            format!("postgres://keyward:hunter2@127.0.0.1:{port}/keyward"),
            format!("127.0.0.1:{port}"),
        ),
        (
            "mysql://keyward:hunter2@db/keyward".to_owned(),
            "postgres://".to_owned(),
        ),
    ] {
        let out = KEYWARD
            .command()
            .args(["migrate", "--store", &store])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(&expected), "{err}");
        assert!(
            !err.contains("hunter2"),
            "the password is not echoed: {err}"
        );
        assert!(!err.contains("panic"), "{err}");
    }
    // Without a store there is nothing to migrate: a usage error, not a panic.
    let out = KEYWARD
        .command()
        .arg("migrate")
        .env_remove("KEYWARD_STORE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
