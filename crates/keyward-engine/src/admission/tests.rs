//! Tests of node-local admission: limits are exact under concurrency and all-or-nothing, owner
//! pools, quotas spent by cost, refills, and the lease's crash bound.

use std::sync::Arc;

use keyward_core::validate::QuotaSpec;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use keyward_store::SqliteStore;
use time::Duration;

use crate::clock::ManualClock;
use crate::test_fixture::*;
use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_is_admitted_under_concurrency() {
    let f = Arc::new(fixture().await);
    let spec = NewKey {
        owner: "o".into(),
        limits: vec![limit("per_minute", 50, 60, None)],
        ..NewKey::default()
    };
    let key = Arc::new(create_with(&f, spec).await.key.expose().to_owned());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (f, key) = (Arc::clone(&f), Arc::clone(&key));
        tasks.push(tokio::spawn(async move { codes(&f, &key, 40, 1).await }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(count(&all, VerifyCode::Valid), 50, "not 49, not 51");
    assert_eq!(count(&all, VerifyCode::RateLimited), 320 - 50);
}

#[tokio::test]
async fn limits_are_all_or_nothing_and_report_their_state() {
    let f = fixture().await;
    let spec = NewKey {
        owner: "o".into(),
        limits: vec![
            limit("per_second", 5, 1, None),
            limit("per_minute", 7, 60, None),
        ],
        ..NewKey::default()
    };
    let key = create_with(&f, spec).await.key;
    assert_eq!(
        count(&codes(&f, key.expose(), 10, 1).await, VerifyCode::Valid),
        5
    );
    f.clock.advance(Duration::seconds(1));
    // per_second would admit 5 more, per_minute only 2: and refusals consume nothing.
    assert_eq!(
        count(&codes(&f, key.expose(), 10, 1).await, VerifyCode::Valid),
        2
    );
    let v = f.verify(key.expose()).await;
    assert_eq!(v.code, VerifyCode::RateLimited);
    let minute = v.limits.iter().find(|l| l.name == "per_minute").unwrap();
    assert_eq!(
        (minute.limit, minute.remaining, minute.period_seconds),
        (7, 0, 60)
    );
    assert!(v.retry_after.unwrap() >= 1);
    let second = v.limits.iter().find(|l| l.name == "per_second").unwrap();
    assert_eq!(
        second.remaining, 3,
        "the refused requests took nothing from per_second"
    );
}

#[tokio::test]
async fn owner_limits_are_one_pool_for_all_keys() {
    let f = fixture().await;
    let spec = || NewKey {
        owner: "acme".into(),
        limits: vec![limit("per_hour", 3, 3600, Some("owner"))],
        ..NewKey::default()
    };
    let a = create_with(&f, spec()).await.key;
    let b = create_with(&f, spec()).await.key;
    let mut all = codes(&f, a.expose(), 2, 1).await;
    all.extend(codes(&f, b.expose(), 3, 1).await);
    assert_eq!(
        count(&all, VerifyCode::Valid),
        3,
        "minting more keys does not multiply the allowance"
    );
}

#[tokio::test]
async fn quota_is_spent_by_cost_and_refused_requests_cost_nothing() {
    let f = fixture().await;
    let spec = NewKey {
        owner: "o".into(),
        quota: Some(QuotaSpec {
            credits: 10,
            ..QuotaSpec::default()
        }),
        limits: vec![limit("per_minute", 20, 60, None)],
        ..NewKey::default()
    };
    let created = create_with(&f, spec).await;
    let key = created.key.expose();
    let got = codes(&f, key, 3, 3).await;
    assert_eq!(
        got,
        [VerifyCode::Valid, VerifyCode::Valid, VerifyCode::Valid]
    );
    // 1 credit left: a cost-3 request is USAGE_EXCEEDED and takes nothing from the limit.
    let v = f
        .engine
        .verify_cost(key, &VerifyRequest::default(), 3)
        .await
        .unwrap();
    assert_eq!(
        (v.code, v.credits_remaining),
        (VerifyCode::UsageExceeded, Some(1))
    );
    assert_eq!(v.retry_after, Some(EXHAUSTED_QUOTA_RETRY_SECONDS));
    assert_eq!(v.limits[0].remaining, 11);
    let v = f
        .engine
        .verify_cost(key, &VerifyRequest::default(), 1)
        .await
        .unwrap();
    assert_eq!((v.code, v.credits_remaining), (VerifyCode::Valid, Some(0)));
    assert_eq!(v.limits[0].remaining, 10);
    // A request the limit refuses costs no credits.
    f.engine
        .adjust_credits(&f.root, &created.record.key_id, CreditOp::Set(50))
        .await
        .unwrap();
    let v = f
        .engine
        .verify_cost(key, &VerifyRequest::default(), 11)
        .await
        .unwrap();
    assert_eq!(v.code, VerifyCode::RateLimited);
    assert_eq!(f.engine.credits(&created.record).await.unwrap(), Some(50));
}

#[tokio::test]
async fn daily_refill_follows_the_clock() {
    let f = fixture().await;
    let spec = NewKey {
        owner: "o".into(),
        quota: Some(QuotaSpec {
            credits: 2,
            refill_amount: Some(3),
            refill_interval: Some("daily".into()),
            refill_day: None,
        }),
        ..NewKey::default()
    };
    let key = create_with(&f, spec).await.key;
    assert_eq!(
        count(&codes(&f, key.expose(), 5, 1).await, VerifyCode::Valid),
        2
    );
    let v = f.verify(key.expose()).await;
    assert_eq!(
        v.retry_after,
        Some(12 * 3600),
        "T0 is noon: the refill is at midnight"
    );
    f.clock.advance(Duration::hours(12));
    assert_eq!(
        count(&codes(&f, key.expose(), 5, 1).await, VerifyCode::Valid),
        3
    );
}

#[tokio::test]
async fn a_crash_overcharges_at_most_one_lease_and_never_refunds() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let (engine, created) = quota_engine(dir.path(), clock.clone()).await;
    for _ in 0..13 {
        let v = engine
            .verify(created.key.expose(), &VerifyRequest::default())
            .await
            .unwrap();
        assert_eq!(v.code, VerifyCode::Valid);
    }
    // The process dies: no shutdown code runs, the unspent lease is lost.
    drop(engine);
    let after_crash = reopened(dir.path(), clock.clone()).await;
    let left = after_crash.credits(&created.record).await.unwrap().unwrap();
    assert!(left <= 100 - 13, "never refunds: {left}");
    assert!(100 - 13 - left < 5, "overcharge below one lease: {left}");
    assert_eq!(left, 85, "13 spent from three leases of 5");
    // A clean shutdown gives unspent credits back.
    for _ in 0..2 {
        after_crash
            .verify(created.key.expose(), &VerifyRequest::default())
            .await
            .unwrap();
    }
    after_crash.release_leases().await.unwrap();
    assert_eq!(
        after_crash.credits(&created.record).await.unwrap(),
        Some(83)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_lease_one_block_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let (engine, created) = quota_engine(dir.path(), clock.clone()).await;
    let key = Arc::new(created.key.expose().to_owned());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (engine, key) = (Arc::clone(&engine), Arc::clone(&key));
        tasks.push(tokio::spawn(async move {
            engine
                .verify(&key, &VerifyRequest::default())
                .await
                .unwrap()
                .code
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), VerifyCode::Valid);
    }
    drop(engine);
    let after_crash = reopened(dir.path(), clock).await;
    let left = after_crash.credits(&created.record).await.unwrap().unwrap();
    assert!(left <= 100 - 8, "never refunds: {left}");
    assert!(
        100 - 8 - left < 5,
        "concurrent misses did not each take a block: {left}"
    );
}

#[tokio::test]
async fn owner_pools_are_per_tenant() {
    let f = fixture().await;
    let spec = |tenant: &str| NewKey {
        owner: "admin".into(),
        tenant: Some(tenant.into()),
        limits: vec![limit("per_hour", 1, 3600, Some("owner"))],
        ..NewKey::default()
    };
    let a = create_with(&f, spec("acme")).await.key;
    let b = create_with(&f, spec("globex")).await.key;
    assert_eq!(f.code(a.expose()).await, VerifyCode::Valid);
    assert_eq!(
        f.code(b.expose()).await,
        VerifyCode::Valid,
        "another tenant's admin is another pool"
    );
    assert_eq!(f.code(a.expose()).await, VerifyCode::RateLimited);
}

/// An engine over the store in `dir` with a quota lease of 5, and a key with 100 credits.
async fn quota_engine(dir: &std::path::Path, clock: Arc<ManualClock>) -> (Arc<Keyward>, Created) {
    let config = EngineConfig {
        quota_lease: 5,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Keyward::new(
        Arc::new(SqliteStore::open(dir).await.unwrap()),
        clock,
        config,
    ));
    let boot = engine.bootstrap().await.unwrap().unwrap();
    let root = Principal::new(boot.record.clone());
    let spec = NewKey {
        owner: "o".into(),
        quota: Some(QuotaSpec {
            credits: 100,
            ..QuotaSpec::default()
        }),
        ..NewKey::default()
    };
    let created = engine.create_key(&root, spec).await.unwrap();
    (engine, created)
}

/// The engine after a crash: a new one over the same store, nothing handed back.
async fn reopened(dir: &std::path::Path, clock: Arc<ManualClock>) -> Keyward {
    let config = EngineConfig {
        quota_lease: 5,
        ..EngineConfig::default()
    };
    Keyward::new(
        Arc::new(SqliteStore::open(dir).await.unwrap()),
        clock,
        config,
    )
}
