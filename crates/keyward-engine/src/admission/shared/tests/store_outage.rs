//! Shared quotas while the store is down: a balance that cannot be loaded falls back to the
//! local budget, and write-behind loses no key of a batch the store refused.

use super::*;

/// One node with Redis over a store the test can take down (`store.down`).
struct StoreOutageNode {
    node: Keyward,
    store: Arc<crate::test_fixture::CountingStore>,
    clock: Arc<ManualClock>,
    root: Principal,
    namespace: String,
    _dir: tempfile::TempDir,
}

async fn store_outage_node(url: &str) -> StoreOutageNode {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::test_fixture::CountingStore::open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let namespace = namespace();
    let node = Keyward::new(store.clone(), clock.clone(), EngineConfig::default())
        .with_redis(config(url, &namespace))
        .unwrap();
    let boot = node.bootstrap().await.unwrap().unwrap();
    StoreOutageNode {
        root: Principal::new(boot.record.clone()),
        node,
        store,
        clock,
        namespace,
        _dir: dir,
    }
}

async fn quota_key(node: &Keyward, root: &Principal, credits: u64) -> Created {
    node.create_key(
        root,
        NewKey {
            owner: "quota".into(),
            quota: quota(credits),
            ..NewKey::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_balance_that_cannot_be_loaded_while_the_store_is_down_falls_back_locally() {
    let Some(url) = redis_url("a_balance_that_cannot_be_loaded_while_the_store_is_down") else {
        return;
    };
    let StoreOutageNode {
        node,
        store,
        clock,
        root,
        namespace,
        _dir,
    } = store_outage_node(&url).await;
    let created = quota_key(&node, &root, 100).await;
    let key = created.key.expose();
    let v = node.verify(key, &VerifyRequest::default()).await.unwrap();
    assert_eq!(v.code, VerifyCode::Valid);
    // Redis loses the balance, the store goes down, and the cache entry is past fresh.
    wipe(&url, &namespace).await;
    store.down.store(true, Ordering::SeqCst);
    clock.advance(Duration::seconds(31));
    let v = node.verify(key, &VerifyRequest::default()).await.unwrap();
    assert_eq!(v.code, VerifyCode::Valid, "{v:?}");
    assert!(v.degraded.is_some(), "the key came from stale-if-error");
    let enforcement = v.enforcement.clone().unwrap();
    assert_eq!(
        enforcement.source,
        EnforcementSource::LocalFallback,
        "{v:?}"
    );
    assert!(enforcement.reason.contains("store"), "{enforcement:?}");
    // Redis itself is not reported down.
    assert!(node.redis_health().await.unwrap().up);
    wipe(&url, &namespace).await;
}

#[tokio::test]
async fn a_store_outage_during_write_behind_loses_no_key_of_the_batch() {
    let Some(url) = redis_url("a_store_outage_during_write_behind_loses_no_key_of_the_batch")
    else {
        return;
    };
    let StoreOutageNode {
        node,
        store,
        clock,
        root,
        namespace,
        _dir,
    } = store_outage_node(&url).await;
    let mut keys = Vec::new();
    for _ in 0..5 {
        let created = quota_key(&node, &root, 100).await;
        for _ in 0..3 {
            let v = node
                .verify(created.key.expose(), &VerifyRequest::default())
                .await
                .unwrap();
            assert_eq!(v.code, VerifyCode::Valid);
        }
        keys.push(created);
    }
    // The store is down at the write-behind: the batch taken from Redis cannot be written.
    store.down.store(true, Ordering::SeqCst);
    assert!(node.sync_shared().await.is_err());
    store.down.store(false, Ordering::SeqCst);
    node.sync_shared().await.unwrap();
    for created in &keys {
        let quota = created.record.policy.quota.unwrap();
        let balance = store
            .balance(&created.record.key_id, &quota, clock.now())
            .await
            .unwrap();
        assert_eq!(balance.remaining, 97, "every key's spend reached the store");
    }
    wipe(&url, &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_quotas_refill_keeps_its_spend_written_behind() {
    let Some(url) = redis_url("removing_a_quotas_refill_keeps_its_spend_written_behind") else {
        return;
    };
    let c = cluster(url, false).await;
    let with_refill = keyward_core::validate::QuotaSpec {
        credits: 50,
        refill_amount: Some(50),
        refill_interval: Some("daily".into()),
        ..Default::default()
    };
    let created = c
        .key(NewKey {
            owner: "o".into(),
            quota: Some(with_refill),
            ..NewKey::default()
        })
        .await;
    let key = created.key.expose();
    assert_eq!(count(&c.fire(key, 5, 1).await, VerifyCode::Valid), 5);
    c.sync_all().await;
    // The operator drops the refill rule; spending goes on and must still reach the store.
    let updated = c.nodes[0]
        .update_key(
            &c.root,
            &created.record.key_id,
            KeyPatch {
                quota: Some(Some(keyward_core::validate::QuotaSpec {
                    credits: 50,
                    ..Default::default()
                })),
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap();
    // Through the node that made the change: the other nodes of this test have no change feed
    // (one SQLite store), so they would keep the old rule for up to the staleness bound.
    for _ in 0..7 {
        let v = c.nodes[0]
            .verify(key, &VerifyRequest::default())
            .await
            .unwrap();
        assert_eq!(v.code, VerifyCode::Valid);
    }
    c.sync_all().await;
    let quota = updated.policy.quota.unwrap();
    let stored = c
        .store
        .balance(&created.record.key_id, &quota, c.clock.now())
        .await
        .unwrap();
    assert_eq!(
        stored.remaining,
        50 - 12,
        "the spend after the change was written behind"
    );
}
