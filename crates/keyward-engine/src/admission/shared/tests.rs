//! Shared limits and quotas against a real Redis (`KEYWARD_TEST_REDIS_URL`): three engine
//! instances ("nodes") over one store, each with its own Redis connection, in one random
//! namespace per test. Without the variable the tests say they were skipped; with `CI=true`
//! a missing Redis is a failure.

use std::sync::atomic::{AtomicUsize, Ordering};

use keyward_store::SqliteStore;

use std::sync::Arc;

use keyward_core::verify::{VerifyCode, VerifyRequest};
use time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::*;
use keyward_testkit::proxy::CutProxy;
pub(crate) use keyward_testkit::redis::{
    namespace, socket as redis_socket, url as redis_url, wipe,
};

use crate::test_fixture::T0;

struct Cluster {
    nodes: Vec<Arc<Keyward>>,
    store: Arc<SqliteStore>,
    clock: Arc<ManualClock>,
    root: Principal,
    url: String,
    namespace: String,
    proxy: Option<CutProxy>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let (url, namespace) = (self.url.clone(), self.namespace.clone());
        // Best effort: the namespace is random, so leftovers harm nothing.
        let cleanup = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(wipe(&url, &namespace));
            }
        });
        let _ = cleanup.join();
    }
}

fn config(url: &str, namespace: &str) -> RedisConfig {
    RedisConfig {
        namespace: namespace.to_owned(),
        timeout: std::time::Duration::from_millis(500),
        fallback_credits: 5,
        ..RedisConfig::new(url)
    }
}

/// Three nodes over one SQLite store and one Redis namespace; with `proxied`, their Redis
/// traffic goes through a proxy the test can cut.
async fn cluster(url: String, proxied: bool) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    let clock = Arc::new(ManualClock::new(T0));
    let namespace = namespace();
    let proxy = if proxied {
        Some(CutProxy::start(redis_socket(&url).await).await)
    } else {
        None
    };
    let node_url = proxy
        .as_ref()
        .map_or_else(|| url.clone(), |p| format!("redis://{}", p.addr));
    let nodes: Vec<Arc<Keyward>> = (0..3)
        .map(|_| {
            Arc::new(
                Keyward::new(store.clone(), clock.clone(), EngineConfig::default())
                    .with_redis(config(&node_url, &namespace))
                    .unwrap(),
            )
        })
        .collect();
    let boot = nodes[0].bootstrap().await.unwrap().unwrap();
    Cluster {
        root: Principal::new(boot.record.clone()),
        nodes,
        store,
        clock,
        url,
        namespace,
        proxy,
        _dir: dir,
    }
}

impl Cluster {
    async fn key(&self, spec: NewKey) -> Created {
        self.nodes[0].create_key(&self.root, spec).await.unwrap()
    }

    /// Fires `attempts` concurrent verifies of `cost`, spread round-robin over the nodes.
    async fn fire(&self, key: &str, attempts: usize, cost: u64) -> Vec<Verification> {
        let mut tasks = Vec::new();
        for i in 0..attempts {
            let node = Arc::clone(&self.nodes[i % self.nodes.len()]);
            let key = key.to_owned();
            tasks.push(tokio::spawn(async move {
                node.verify_cost(&key, &VerifyRequest::default(), cost)
                    .await
                    .unwrap()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    async fn store_balance(&self, created: &Created) -> u64 {
        let quota = created.record.policy.quota.unwrap();
        self.store
            .balance(&created.record.key_id, &quota, self.clock.now())
            .await
            .unwrap()
            .remaining
    }

    /// Syncs every node until each reports Redis up (bounded: Redis must come back).
    async fn sync_all(&self) -> SyncReport {
        let mut total = SyncReport::default();
        for node in &self.nodes {
            let mut report = node.sync_shared().await.unwrap();
            for _ in 0..100 {
                if report.redis_up {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                report = node.sync_shared().await.unwrap();
            }
            assert!(report.redis_up, "Redis did not come back");
            total.settled += report.settled;
            total.written_behind += report.written_behind;
        }
        total.redis_up = true;
        total
    }
}

fn limit(name: &str, limit: u64, period_seconds: u64, burst: Option<u64>) -> LimitSpec {
    LimitSpec {
        name: name.into(),
        limit,
        period_seconds,
        burst,
        scope: None,
        mode: None,
    }
}

fn quota(credits: u64) -> Option<QuotaSpec> {
    Some(QuotaSpec {
        credits,
        ..QuotaSpec::default()
    })
}

fn count(all: &[Verification], code: VerifyCode) -> usize {
    all.iter().filter(|v| v.code == code).count()
}

fn source(v: &Verification) -> EnforcementSource {
    v.enforcement.as_ref().unwrap().source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_together_admit_exactly_the_limit() {
    let Some(url) = redis_url("three_nodes_together_admit_exactly_the_limit") else {
        return;
    };
    let c = cluster(url, false).await;
    let created = c
        .key(NewKey {
            owner: "o".into(),
            limits: vec![limit("per_second", 10, 1, Some(15))],
            ..NewKey::default()
        })
        .await;
    let all = c.fire(created.key.expose(), 30, 1).await;
    assert_eq!(count(&all, VerifyCode::Valid), 15, "the burst, not 3 x 15");
    assert_eq!(count(&all, VerifyCode::RateLimited), 15);
    assert!(all.iter().all(|v| source(v) == EnforcementSource::Redis));
    let refused = all
        .iter()
        .find(|v| v.code == VerifyCode::RateLimited)
        .unwrap();
    assert_eq!(refused.limits[0].remaining, 0);
    assert_eq!(refused.retry_after, Some(1));
    // Smooth refill: one unit per 100 ms, shared by all nodes.
    c.clock.advance(Duration::milliseconds(100));
    let all = c.fire(created.key.expose(), 9, 1).await;
    assert_eq!(count(&all, VerifyCode::Valid), 1);
    c.clock.advance(Duration::milliseconds(500));
    let all = c.fire(created.key.expose(), 30, 1).await;
    assert_eq!(count(&all, VerifyCode::Valid), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_pool_is_shared_by_its_keys_on_every_node() {
    let Some(url) = redis_url("an_owner_pool_is_shared_by_its_keys_on_every_node") else {
        return;
    };
    let c = cluster(url, false).await;
    let spec = || NewKey {
        owner: "acme".into(),
        tenant: Some("t1".into()),
        limits: vec![LimitSpec {
            scope: Some("owner".into()),
            ..limit("per_hour", 7, 3600, None)
        }],
        ..NewKey::default()
    };
    let a = c.key(spec()).await;
    let b = c.key(spec()).await;
    let (x, y) = tokio::join!(c.fire(a.key.expose(), 10, 1), c.fire(b.key.expose(), 10, 1));
    let admitted = count(&x, VerifyCode::Valid) + count(&y, VerifyCode::Valid);
    assert_eq!(admitted, 7, "one pool for both keys across three nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limits_and_the_quota_are_all_or_nothing_across_nodes() {
    let Some(url) = redis_url("two_limits_and_the_quota_are_all_or_nothing_across_nodes") else {
        return;
    };
    let c = cluster(url, false).await;
    let created = c
        .key(NewKey {
            owner: "o".into(),
            limits: vec![
                limit("per_second", 5, 1, None),
                limit("per_minute", 8, 60, None),
            ],
            quota: quota(6),
            ..NewKey::default()
        })
        .await;
    let key = created.key.expose();
    let all = c.fire(key, 12, 1).await;
    assert_eq!(count(&all, VerifyCode::Valid), 5);
    c.clock.advance(Duration::seconds(1));
    // per_second admits 5, per_minute 3, the quota 1: one request passes, and the refused ones
    // take nothing from either limit.
    let all = c.fire(key, 12, 1).await;
    assert_eq!(count(&all, VerifyCode::Valid), 1);
    assert_eq!(count(&all, VerifyCode::UsageExceeded), 11);
    let v = c.nodes[2]
        .verify(key, &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!(
        (v.code, v.credits_remaining),
        (VerifyCode::UsageExceeded, Some(0))
    );
    let minute = v.limits.iter().find(|l| l.name == "per_minute").unwrap();
    assert_eq!(minute.remaining, 2, "USAGE_EXCEEDED consumed no limit");
    // Credits back: now per_minute (2 left) refuses first, and consumes no credit.
    c.nodes[1]
        .adjust_credits(&c.root, &created.record.key_id, CreditOp::Set(10))
        .await
        .unwrap();
    let all = c.fire(key, 6, 1).await;
    assert_eq!(count(&all, VerifyCode::Valid), 2);
    assert_eq!(count(&all, VerifyCode::RateLimited), 4);
    assert_eq!(
        c.nodes[0].credits(&created.record).await.unwrap(),
        Some(8),
        "rate-limited requests cost no credits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_is_exact_across_nodes_and_written_behind() {
    let Some(url) = redis_url("the_quota_is_exact_across_nodes_and_written_behind") else {
        return;
    };
    let c = cluster(url, false).await;
    let created = c
        .key(NewKey {
            owner: "o".into(),
            quota: quota(20),
            ..NewKey::default()
        })
        .await;
    let all = c.fire(created.key.expose(), 45, 1).await;
    assert_eq!(count(&all, VerifyCode::Valid), 20, "not one credit more");
    assert_eq!(count(&all, VerifyCode::UsageExceeded), 25);
    assert_eq!(
        c.store_balance(&created).await,
        20,
        "not yet written behind"
    );
    let report = c.sync_all().await;
    assert_eq!(report.written_behind, 1);
    assert_eq!(c.store_balance(&created).await, 0);
    // An operator adds credits on one node; every node spends from the same balance.
    let after = c.nodes[2]
        .adjust_credits(&c.root, &created.record.key_id, CreditOp::Increase(4))
        .await
        .unwrap();
    assert_eq!(after, 4);
    let all = c.fire(created.key.expose(), 9, 1).await;
    assert_eq!(count(&all, VerifyCode::Valid), 4);
    c.sync_all().await;
    assert_eq!(c.store_balance(&created).await, 0);
    let events = c.nodes[0]
        .list_audit(
            Some(created.record.key_id.clone()),
            Some("credits.adjust".into()),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(events.items.len(), 1, "the adjustment is audited");
    assert_eq!(events.items[0].summary["live_balance"]["after"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_off_falls_back_to_local_shares_and_settles_once() {
    let Some(url) = redis_url("redis_cut_off_falls_back_to_local_shares_and_settles_once") else {
        return;
    };
    let c = cluster(url, true).await;
    let proxy = c.proxy.as_ref().unwrap();
    // Each node counts the live nodes when it beats: the second round sees all three.
    c.sync_all().await;
    c.sync_all().await;
    assert_eq!(
        c.nodes[0].redis_health().await.unwrap().live_nodes,
        3,
        "three heartbeats"
    );
    let limited = c
        .key(NewKey {
            owner: "o".into(),
            limits: vec![limit("per_minute", 9, 60, None)],
            ..NewKey::default()
        })
        .await;
    let paid = c
        .key(NewKey {
            owner: "o".into(),
            quota: quota(100),
            ..NewKey::default()
        })
        .await;
    let all = c.fire(paid.key.expose(), 2, 1).await;
    assert_eq!(count(&all, VerifyCode::Valid), 2);

    // Requests keep flowing while Redis is cut off.
    let flowing = Arc::new(AtomicUsize::new(0));
    let background = {
        let (node, key, flowing) = (
            Arc::clone(&c.nodes[2]),
            limited.key.expose().to_owned(),
            Arc::clone(&flowing),
        );
        tokio::spawn(async move {
            for _ in 0..50 {
                let v = node
                    .verify_cost(&key, &VerifyRequest::default(), 0)
                    .await
                    .unwrap();
                assert_eq!(v.code, VerifyCode::Valid);
                flowing.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    proxy.cut();
    // The proxy closes its connections asynchronously: wait (bounded) until Redis is gone.
    for _ in 0..100 {
        if !c.nodes[0].redis_health().await.unwrap().up {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let v = c.nodes[0]
        .verify(limited.key.expose(), &VerifyRequest::default())
        .await
        .unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "bounded"
    );
    assert_eq!(v.code, VerifyCode::Valid);
    assert_eq!(source(&v), EnforcementSource::LocalFallback);
    assert!(
        v.enforcement.as_ref().unwrap().reason.contains("1/3"),
        "{:?}",
        v.enforcement
    );
    assert_eq!(v.limits[0].limit, 3, "9 per minute over 3 live nodes");
    let local: Vec<VerifyCode> = {
        let mut out = Vec::new();
        for _ in 0..5 {
            out.push(
                c.nodes[0]
                    .verify(limited.key.expose(), &VerifyRequest::default())
                    .await
                    .unwrap()
                    .code,
            );
        }
        out
    };
    assert_eq!(
        local.iter().filter(|c| **c == VerifyCode::Valid).count(),
        2,
        "this node's share is 3: {local:?}"
    );
    // The quota: a budget of 5 credits per key on each node.
    for node in [0, 1] {
        let mut admitted = 0;
        for _ in 0..8 {
            let v = c.nodes[node]
                .verify(paid.key.expose(), &VerifyRequest::default())
                .await
                .unwrap();
            assert_eq!(source(&v), EnforcementSource::LocalFallback);
            admitted += usize::from(v.code == VerifyCode::Valid);
        }
        assert_eq!(admitted, 5, "node {node}");
    }
    background.await.unwrap();
    assert_eq!(flowing.load(Ordering::SeqCst), 50, "verify never failed");

    proxy.restore();
    let report = c.sync_all().await;
    assert_eq!(report.settled, 2, "nodes 0 and 1 owed credits");
    // Spent: 2 through Redis, 10 locally; deducted exactly once, however often nodes sync.
    c.sync_all().await;
    assert_eq!(c.nodes[2].credits(&paid.record).await.unwrap(), Some(88));
    let v = c.nodes[1]
        .verify(paid.key.expose(), &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!(source(&v), EnforcementSource::Redis);
    assert_eq!(v.credits_remaining, Some(87));
    c.sync_all().await;
    assert_eq!(c.store_balance(&paid).await, 87, "written behind once too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_data_refunds_at_most_the_spend_since_the_last_write_behind() {
    let Some(url) =
        redis_url("losing_redis_data_refunds_at_most_the_spend_since_the_last_write_behind")
    else {
        return;
    };
    let c = cluster(url.clone(), false).await;
    let created = c
        .key(NewKey {
            owner: "o".into(),
            quota: quota(100),
            ..NewKey::default()
        })
        .await;
    let key = created.key.expose();
    assert_eq!(count(&c.fire(key, 30, 1).await, VerifyCode::Valid), 30);
    c.sync_all().await;
    assert_eq!(c.store_balance(&created).await, 70);
    // A node dies without shutting down: its spend lives in Redis and another node writes it.
    assert_eq!(count(&c.fire(key, 4, 1).await, VerifyCode::Valid), 4);
    c.nodes[1].sync_shared().await.unwrap();
    assert_eq!(
        c.store_balance(&created).await,
        66,
        "no loss from a node crash"
    );
    // Spend that is not written behind yet, then Redis restarts without persistence.
    let unwritten = 7;
    assert_eq!(
        count(&c.fire(key, unwritten, 1).await, VerifyCode::Valid),
        unwritten
    );
    let truth = 100 - 30 - 4 - unwritten as u64;
    wipe(&url, &c.namespace).await;
    let v = c.nodes[0]
        .verify(key, &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!(v.code, VerifyCode::Valid);
    let after_reload = v.credits_remaining.unwrap() + 1;
    assert!(
        after_reload >= truth,
        "never double-charges: {after_reload}"
    );
    assert!(
        after_reload - truth <= unwritten as u64,
        "refunds at most the spend since the last write-behind"
    );
    assert_eq!(after_reload, 66, "reloaded from the store's 66");
    // A clean shutdown writes everything behind.
    c.nodes[0].release_leases().await.unwrap();
    assert_eq!(c.store_balance(&created).await, 65);
}

mod local_first;
mod store_outage;
