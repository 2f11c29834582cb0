//! The store behaviour suite: every [`KeyStore`] implementation must pass it.

use keyward_core::audit::{AuditAction, AuditDraft, ChainVerifier};
use keyward_core::key::KeyHash;
use keyward_core::permission::Permission;
use keyward_core::record::{KeyKind, KeyRecord, KeyStatus, SecretInfo};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::{AuditFilter, KeyFilter, KeyStore, KeyWrite, StoreError};

pub(crate) use keyward_testkit::T0;

pub(crate) fn record(key_id: &str, owner: &str) -> KeyRecord {
    KeyRecord {
        key_id: key_id.into(),
        kind: KeyKind::Api,
        owner: owner.into(),
        name: Some("name".into()),
        tenant: Some("acme".into()),
        environment: "live".into(),
        purpose: None,
        tags: vec!["ci".into()],
        meta: json!({"plan": "pro", "n": 1.5})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        permissions: vec![Permission::new("orders.*").unwrap()],
        routes: vec![],
        expires_at: None,
        enabled: true,
        created_at: T0,
        created_by: Some("key_root".into()),
        updated_at: T0,
        last_used_at: None,
        revoked_at: None,
        revoked_reason: None,
        rotated_at: None,
        version: 1,
        secrets: vec![],
        policy: Default::default(),
    }
}

fn secret(plaintext: &str, created_at: OffsetDateTime) -> SecretInfo {
    SecretInfo {
        hash: KeyHash::sha256_of(plaintext),
        start: plaintext.chars().take(12).collect(),
        created_at,
        expires_at: None,
    }
}

pub(crate) fn draft(action: AuditAction, target: &str) -> AuditDraft {
    AuditDraft {
        time: T0,
        actor: Some("key_root".into()),
        action,
        target: Some(target.into()),
        summary: json!({"x": 1}),
    }
}

pub(crate) fn new_key_write(key_id: &str, plaintext: &str) -> KeyWrite {
    KeyWrite {
        record: record(key_id, "team"),
        expected_version: None,
        new_secret: Some(secret(plaintext, T0)),
        secret_ends: vec![],
        audit: draft(AuditAction::KeyCreate, key_id),
    }
}

fn id(n: usize) -> String {
    format!("key_{n:0>20}")
}

/// Runs every behaviour check against `store`, which must be empty.
pub(crate) async fn run_all(store: &dyn KeyStore) {
    create_and_find(store).await;
    optimistic_concurrency(store).await;
    rotation_secrets(store).await;
    listing_and_pagination(store).await;
    last_used(store).await;
    audit_chain(store).await;
    policy_and_plans(store).await;
    credits(store).await;
    first_root_key_once(store).await;
    usage(store).await;
    audit_by_tenant(store).await;
    finding_11_the_last_root_manage_key_is_guarded_inside_the_write(store).await;
}

/// The tenant filter of the audit log (a tenant-scoped root key's view): events whose target
/// or actor is a key of the tenant, and nothing else, paged like any other listing.
async fn audit_by_tenant(store: &dyn KeyStore) {
    let globex = id(80);
    let mut write = new_key_write(&globex, "kw_live_globex");
    write.record.tenant = Some("globex".into());
    store.write_key(write).await.unwrap();
    // Its own failed authentication (actor), an event about no key, and one naming a key_id
    // that does not exist.
    let mut failed = draft(AuditAction::AuthFailed, "");
    failed.actor = Some(globex.clone());
    failed.target = None;
    store.append_audit(failed).await.unwrap();
    let mut stray = draft(AuditAction::AuthFailed, "");
    stray.actor = None;
    stray.target = None;
    store.append_audit(stray).await.unwrap();
    store
        .append_audit(draft(AuditAction::KeyUpdate, &id(999)))
        .await
        .unwrap();
    let list = |tenant: &str, action: Option<&str>, limit: u32, after: Option<i64>| AuditFilter {
        tenant: Some(tenant.into()),
        action: action.map(Into::into),
        limit,
        after,
        ..Default::default()
    };
    let page = store
        .list_audit(&list("globex", None, 100, None))
        .await
        .unwrap();
    let seen: Vec<_> = page
        .items
        .iter()
        .map(|e| (e.action.as_str(), e.actor.clone(), e.target.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("key.create", Some("key_root".into()), Some(globex.clone())),
            ("auth.failed", Some(globex.clone()), None),
        ]
    );
    // Pages of one event each, then the end.
    let first = store
        .list_audit(&list("globex", None, 1, None))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 1);
    let second = store
        .list_audit(&list("globex", None, 1, first.next_cursor))
        .await
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.items[0].action, "auth.failed");
    if let Some(after) = second.next_cursor {
        let rest = store
            .list_audit(&list("globex", None, 1, Some(after)))
            .await
            .unwrap();
        assert!(rest.items.is_empty());
    }
    let only_failures = store
        .list_audit(&list("globex", Some("auth.failed"), 100, None))
        .await
        .unwrap();
    assert_eq!(only_failures.items.len(), 1);
    // Every record of the suite but id(80) is acme's: its events never name globex's key, and
    // the events about no key or an unknown key_id belong to no tenant.
    let acme = store
        .list_audit(&list("acme", None, 1000, None))
        .await
        .unwrap();
    assert!(acme.items.iter().any(|e| e.target == Some(id(1))));
    for event in &acme.items {
        assert_ne!(event.target.as_ref(), Some(&globex), "{event:?}");
        assert_ne!(event.actor.as_ref(), Some(&globex), "{event:?}");
        assert!(event.target.is_some(), "{event:?}");
        assert_ne!(event.target, Some(id(999)), "{event:?}");
    }
    let nobody = store
        .list_audit(&list("nobody", None, 100, None))
        .await
        .unwrap();
    assert!(nobody.items.is_empty());
}

/// Usage counts add up per (hour, key, code), sum per day, filter, and page without gaps.
async fn usage(store: &dyn KeyStore) {
    use keyward_core::usage::{Granularity, UsageCount};
    use keyward_core::verify::VerifyCode;

    use crate::UsageFilter;

    let count = |hour: OffsetDateTime, key: &str, owner: &str, code, n, credits| UsageCount {
        start: hour,
        key_id: key.into(),
        owner: owner.into(),
        tenant: (owner == "alice").then(|| "acme".into()),
        code,
        verifications: n,
        credits,
    };
    let h0 = T0;
    let h1 = T0 + Duration::hours(1);
    let d1 = T0 + Duration::days(1);
    store.add_usage(&[]).await.unwrap();
    store
        .add_usage(&[
            count(h0, "key_a", "alice", VerifyCode::Valid, 3, 30),
            count(h0, "key_a", "alice", VerifyCode::RateLimited, 1, 0),
            count(h1, "key_a", "alice", VerifyCode::Valid, 2, 20),
            count(h0, "key_b", "bob", VerifyCode::Valid, 5, 0),
            count(d1, "key_a", "alice", VerifyCode::Valid, 7, 70),
        ])
        .await
        .unwrap();
    // A second batch (another node, or the next flush) adds to the same rows.
    store
        .add_usage(&[
            count(h0, "key_a", "alice", VerifyCode::Valid, 4, 40),
            // Two counts for one row in one batch add up too.
            count(h0, "key_b", "bob", VerifyCode::Valid, 1, 0),
            count(h0, "key_b", "bob", VerifyCode::Valid, 1, 0),
        ])
        .await
        .unwrap();
    let filter = |granularity| UsageFilter {
        granularity,
        from: T0,
        to: T0 + Duration::days(2),
        key_id: None,
        owner: None,
        tenant: None,
        limit: 100,
        after: None,
    };
    let rows = |page: crate::UsagePage| {
        page.items
            .into_iter()
            .map(|c| (c.start, c.key_id, c.code, c.verifications, c.credits))
            .collect::<Vec<_>>()
    };
    let hourly = store.list_usage(&filter(Granularity::Hour)).await.unwrap();
    assert_eq!(hourly.next, None);
    assert_eq!(
        rows(hourly),
        vec![
            (h0, "key_a".into(), VerifyCode::RateLimited, 1, 0),
            (h0, "key_a".into(), VerifyCode::Valid, 7, 70),
            (h0, "key_b".into(), VerifyCode::Valid, 7, 0),
            (h1, "key_a".into(), VerifyCode::Valid, 2, 20),
            (d1, "key_a".into(), VerifyCode::Valid, 7, 70),
        ]
    );
    let daily = store.list_usage(&filter(Granularity::Day)).await.unwrap();
    assert_eq!(
        rows(daily),
        vec![
            (T0, "key_a".into(), VerifyCode::RateLimited, 1, 0),
            (T0, "key_a".into(), VerifyCode::Valid, 9, 90),
            (T0, "key_b".into(), VerifyCode::Valid, 7, 0),
            (d1, "key_a".into(), VerifyCode::Valid, 7, 70),
        ]
    );
    // `to` is exclusive and `from` inclusive.
    let mut window = filter(Granularity::Hour);
    window.from = h1;
    window.to = d1;
    assert_eq!(
        rows(store.list_usage(&window).await.unwrap()),
        vec![(h1, "key_a".into(), VerifyCode::Valid, 2, 20)]
    );
    // Filters by key, owner and tenant.
    let mut by_key = filter(Granularity::Day);
    by_key.key_id = Some("key_b".into());
    let only_b = store.list_usage(&by_key).await.unwrap();
    assert_eq!(only_b.items.len(), 1);
    assert_eq!(only_b.items[0].owner, "bob");
    assert_eq!(only_b.items[0].tenant, None);
    let mut by_owner = filter(Granularity::Day);
    by_owner.owner = Some("alice".into());
    let alice = store.list_usage(&by_owner).await.unwrap();
    assert_eq!(alice.items.len(), 3);
    assert!(
        alice.items.iter().all(|c| c.key_id == "key_a"
            && c.owner == "alice"
            && c.tenant.as_deref() == Some("acme"))
    );
    let mut by_tenant = filter(Granularity::Hour);
    by_tenant.tenant = Some("acme".into());
    assert_eq!(store.list_usage(&by_tenant).await.unwrap().items.len(), 4);
    by_tenant.tenant = Some("nobody".into());
    assert!(store.list_usage(&by_tenant).await.unwrap().items.is_empty());
    // Pages of two walk every hourly row once, in order.
    let mut paged = filter(Granularity::Hour);
    paged.limit = 2;
    let mut walked = Vec::new();
    loop {
        let page = store.list_usage(&paged).await.unwrap();
        assert!(page.items.len() <= 2);
        let next = page.next.clone();
        walked.extend(rows(page));
        match next {
            Some(cursor) => paged.after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(
        walked,
        rows(store.list_usage(&filter(Granularity::Hour)).await.unwrap())
    );
    assert_eq!(walked.len(), 5);

    // Real key_ids mix cases; both backends order them bytewise ('B' < 'a'), so pages split
    // the same way whatever PostgreSQL's collation, and a daily walk visits every sum once.
    let later = T0 + Duration::days(10);
    store
        .add_usage(&[
            count(later, "key_a", "alice", VerifyCode::Valid, 1, 0),
            count(later, "key_B", "bob", VerifyCode::Valid, 2, 0),
            count(
                later + Duration::hours(5),
                "key_B",
                "bob",
                VerifyCode::Valid,
                3,
                0,
            ),
            count(later, "key_Z", "bob", VerifyCode::Revoked, 4, 0),
        ])
        .await
        .unwrap();
    let mut daily = filter(Granularity::Day);
    daily.from = later;
    daily.to = later + Duration::days(1);
    daily.limit = 1;
    let mut walked = Vec::new();
    loop {
        let page = store.list_usage(&daily).await.unwrap();
        let next = page.next.clone();
        walked.extend(rows(page));
        match next {
            Some(cursor) => daily.after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(
        walked,
        vec![
            (later, "key_B".into(), VerifyCode::Valid, 5, 0),
            (later, "key_Z".into(), VerifyCode::Revoked, 4, 0),
            (later, "key_a".into(), VerifyCode::Valid, 1, 0),
        ]
    );
}

/// Bootstrap writes a root key only into a store that never had one.
async fn first_root_key_once(store: &dyn KeyStore) {
    let root = |key_id: &str, plaintext: &str| {
        let mut write = new_key_write(key_id, plaintext);
        write.record.kind = KeyKind::Root;
        write.record.policy = Default::default();
        write.audit.action = AuditAction::RootCreate;
        write
    };
    assert_eq!(store.count_root_keys().await.unwrap(), 0);
    let first = store
        .create_first_root_key(root(&id(90), "kwroot_first"))
        .await
        .unwrap();
    assert!(first.is_some());
    assert_eq!(
        store
            .create_first_root_key(root(&id(91), "kwroot_second"))
            .await
            .unwrap(),
        None,
        "a second bootstrap writes nothing"
    );
    assert_eq!(store.count_root_keys().await.unwrap(), 1);
    assert!(store.get_key(&id(91), T0).await.unwrap().is_none());
}

async fn policy_and_plans(store: &dyn KeyStore) {
    use keyward_core::limit::{LimitMode, LimitScope, RateLimit};
    use keyward_core::record::Plan;
    // Local-first, so the round trip shows a non-default mode survives the store.
    let limit = RateLimit {
        name: "per_second".into(),
        limit: 5,
        period_seconds: 1,
        burst: 5,
        scope: LimitScope::Owner,
        mode: LimitMode::LocalFirst,
    };
    let plan = Plan {
        plan_id: "pro".into(),
        limits: vec![limit.clone()],
        quota: Some(keyward_core::quota::QuotaConfig {
            credits: 100,
            refill: None,
        }),
        permissions: vec![Permission::new("orders.*").unwrap()],
        version: 1,
        created_at: T0,
        updated_at: T0,
    };
    let plan_write = |plan: Plan, expected, delete| crate::PlanWrite {
        plan,
        expected_version: expected,
        delete,
        audit: draft(AuditAction::PlanCreate, "pro"),
    };
    store
        .write_plan(plan_write(plan.clone(), None, false))
        .await
        .unwrap();
    let mut write = new_key_write(&id(50), "kw_live_policy");
    write.record.policy.plan = Some("pro".into());
    write.record.policy.limits = vec![limit.clone()];
    write.record.policy.ip_allowlist =
        vec![keyward_core::binding::parse_cidr("10.0.0.0/8").unwrap()];
    store.write_key(write.clone()).await.unwrap();
    assert_eq!(
        store.get_key(&id(50), T0).await.unwrap().unwrap().policy,
        write.record.policy
    );

    assert!(matches!(
        store
            .write_plan(plan_write(plan.clone(), None, false))
            .await,
        Err(StoreError::Duplicate)
    ));
    assert_eq!(store.get_plan("pro").await.unwrap().unwrap(), plan);
    let mut v2 = plan.clone();
    v2.version = 2;
    v2.quota = None;
    store
        .write_plan(plan_write(v2.clone(), Some(1), false))
        .await
        .unwrap();
    assert!(matches!(
        store
            .write_plan(plan_write(v2.clone(), Some(1), false))
            .await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.list_plans().await.unwrap(), vec![v2.clone()]);
    // A plan that keys still use cannot be deleted.
    assert!(matches!(
        store
            .write_plan(plan_write(v2.clone(), Some(2), true))
            .await,
        Err(StoreError::Conflict)
    ));
    assert!(store.get_plan("pro").await.unwrap().is_some());
    // A key cannot be written pointing at a plan that does not exist.
    let mut orphan = new_key_write(&id(51), "kw_live_orphan");
    orphan.record.policy.plan = Some("gold".into());
    assert!(
        matches!(store.write_key(orphan).await, Err(StoreError::PlanMissing(p)) if p == "gold")
    );
    assert!(store.get_key(&id(51), T0).await.unwrap().is_none());
}

async fn credits(store: &dyn KeyStore) {
    use crate::CreditOp;
    use keyward_core::quota::{QuotaConfig, Refill, RefillSchedule};
    let config = QuotaConfig {
        credits: 10,
        refill: Some(Refill {
            amount: 7,
            schedule: RefillSchedule::Daily,
        }),
    };
    let key = id(1);
    assert_eq!(
        store.balance(&key, &config, T0).await.unwrap().remaining,
        10
    );
    assert_eq!(store.take_credits(&key, &config, 4, T0).await.unwrap().0, 4);
    assert_eq!(
        store.take_credits(&key, &config, 100, T0).await.unwrap().0,
        6,
        "never more than is left"
    );
    assert_eq!(store.take_credits(&key, &config, 1, T0).await.unwrap().0, 0);
    // Returning 2 unspent and adding 5 gives 7; decrease never goes below zero.
    let audit = || draft(AuditAction::CreditsAdjust, &key);
    assert_eq!(
        store
            .adjust_credits(&key, &config, 2, CreditOp::Increase(5), audit(), T0)
            .await
            .unwrap()
            .remaining,
        7
    );
    assert_eq!(
        store
            .adjust_credits(&key, &config, 0, CreditOp::Decrease(50), audit(), T0)
            .await
            .unwrap()
            .remaining,
        0
    );
    assert_eq!(
        store
            .adjust_credits(&key, &config, 0, CreditOp::Set(3), audit(), T0)
            .await
            .unwrap()
            .remaining,
        3
    );
    // The next day's refill resets the balance to the refill amount.
    let tomorrow = T0 + Duration::days(1);
    assert_eq!(
        store
            .balance(&key, &config, tomorrow)
            .await
            .unwrap()
            .remaining,
        7
    );
    assert_eq!(
        store
            .take_credits(&key, &config, 7, tomorrow)
            .await
            .unwrap()
            .0,
        7
    );
    assert_eq!(
        store
            .balance(&key, &config, tomorrow)
            .await
            .unwrap()
            .remaining,
        0
    );
    let events = store
        .list_audit(&AuditFilter {
            action: Some("credits.adjust".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.items[0].summary["before"], 2);
    assert_eq!(events.items[0].summary["after"], 7);
}

async fn create_and_find(store: &dyn KeyStore) {
    store.ping().await.unwrap();
    store
        .write_key(new_key_write(&id(1), "kw_live_one"))
        .await
        .unwrap();
    let found = store
        .find_by_hash(&KeyHash::sha256_of("kw_live_one"), T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.record.key_id, id(1));
    assert_eq!(
        found.record.meta,
        *json!({"plan": "pro", "n": 1.5}).as_object().unwrap()
    );
    assert_eq!(found.record.secrets.len(), 1);
    assert_eq!(found.secret.start, "kw_live_one");
    assert_eq!(
        found.record,
        store.get_key(&id(1), T0).await.unwrap().unwrap()
    );
    assert!(
        store
            .find_by_hash(&KeyHash::sha256_of("kw_live_nope"), T0)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get_key(&id(999), T0).await.unwrap().is_none());
    // The same key_id or the same secret twice is refused, and nothing of it is kept.
    assert!(matches!(
        store
            .write_key(new_key_write(&id(1), "kw_live_other"))
            .await,
        Err(StoreError::Duplicate)
    ));
    assert!(matches!(
        store.write_key(new_key_write(&id(2), "kw_live_one")).await,
        Err(StoreError::Duplicate)
    ));
    assert!(store.get_key(&id(2), T0).await.unwrap().is_none());
    assert!(
        store
            .find_by_hash(&KeyHash::sha256_of("kw_live_other"), T0)
            .await
            .unwrap()
            .is_none()
    );
}

async fn optimistic_concurrency(store: &dyn KeyStore) {
    let mut current = store.get_key(&id(1), T0).await.unwrap().unwrap();
    current.name = Some("renamed".into());
    current.version = 2;
    let write = |r: KeyRecord, expected| KeyWrite {
        record: r,
        expected_version: Some(expected),
        new_secret: None,
        secret_ends: vec![],
        audit: draft(AuditAction::KeyUpdate, &id(1)),
    };
    store.write_key(write(current.clone(), 1)).await.unwrap();
    // A second writer that read version 1 loses.
    assert!(matches!(
        store.write_key(write(current.clone(), 1)).await,
        Err(StoreError::Conflict)
    ));
    let stored = store.get_key(&id(1), T0).await.unwrap().unwrap();
    assert_eq!(stored.name.as_deref(), Some("renamed"));
    assert_eq!(stored.version, 2);
}

async fn rotation_secrets(store: &dyn KeyStore) {
    let mut current = store.get_key(&id(1), T0).await.unwrap().unwrap();
    let old_hash = KeyHash::sha256_of("kw_live_one");
    current.version = 3;
    current.rotated_at = Some(T0);
    store
        .write_key(KeyWrite {
            record: current,
            expected_version: Some(2),
            new_secret: Some(secret("kw_live_two", T0 + Duration::seconds(1))),
            secret_ends: vec![(old_hash, T0 + Duration::hours(1))],
            audit: draft(AuditAction::KeyRotate, &id(1)),
        })
        .await
        .unwrap();
    let record = store.get_key(&id(1), T0).await.unwrap().unwrap();
    let starts: Vec<_> = record.secrets.iter().map(|s| s.start.as_str()).collect();
    assert_eq!(
        starts,
        ["kw_live_two", "kw_live_one"],
        "current secret first"
    );
    let old = store.find_by_hash(&old_hash, T0).await.unwrap().unwrap();
    assert_eq!(old.secret.expires_at, Some(T0 + Duration::hours(1)));
    // After the grace period the old secret is still found (it answers EXPIRED) but is no
    // longer among the key's live secrets.
    let later = T0 + Duration::hours(2);
    let old = store.find_by_hash(&old_hash, later).await.unwrap().unwrap();
    assert_eq!(old.record.secrets.len(), 1);
}

async fn listing_and_pagination(store: &dyn KeyStore) {
    for n in 10..25 {
        let mut write = new_key_write(&id(n), &format!("kw_live_list{n}"));
        write.record.owner = if n % 2 == 0 {
            "even".into()
        } else {
            "odd".into()
        };
        if n == 12 {
            write.record.revoked_at = Some(T0);
        }
        if n == 14 {
            write.record.expires_at = Some(T0 + Duration::minutes(1));
        }
        store.write_key(write).await.unwrap();
    }
    let mut filter = KeyFilter {
        kind: KeyKind::Api,
        owner: Some("even".into()),
        tenant: None,
        status: None,
        now: T0 + Duration::minutes(5),
        limit: 3,
        after: None,
    };
    let mut seen = Vec::new();
    loop {
        let page = store.list_keys(&filter).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|r| r.key_id.clone()));
        match page.next_cursor {
            Some(c) => filter.after = Some(c),
            None => break,
        }
    }
    let expected: Vec<String> = (10..25).filter(|n| n % 2 == 0).map(id).collect();
    assert_eq!(seen, expected);

    filter.after = None;
    filter.limit = 100;
    for (status, expected) in [
        (KeyStatus::Revoked, vec![id(12)]),
        (KeyStatus::Expired, vec![id(14)]),
    ] {
        filter.status = Some(status);
        let got: Vec<_> = store
            .list_keys(&filter)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|r| r.key_id)
            .collect();
        assert_eq!(got, expected, "{status:?}");
    }
    filter.status = Some(KeyStatus::Active);
    assert_eq!(store.list_keys(&filter).await.unwrap().items.len(), 6);
    filter.owner = None;
    filter.tenant = Some("nobody".into());
    filter.status = None;
    assert!(store.list_keys(&filter).await.unwrap().items.is_empty());
    filter.kind = KeyKind::Root;
    filter.tenant = None;
    assert!(store.list_keys(&filter).await.unwrap().items.is_empty());
    assert_eq!(store.count_root_keys().await.unwrap(), 0);
}

async fn last_used(store: &dyn KeyStore) {
    let t1 = T0 + Duration::seconds(30);
    store.touch_last_used(&[(id(10), t1)]).await.unwrap();
    // An older timestamp arriving late does not move it back.
    store.touch_last_used(&[(id(10), T0)]).await.unwrap();
    assert_eq!(
        store
            .get_key(&id(10), T0)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(t1)
    );
    // A metadata write does not overwrite it.
    let mut r = store.get_key(&id(10), T0).await.unwrap().unwrap();
    r.last_used_at = None;
    r.version = 2;
    store
        .write_key(KeyWrite {
            record: r,
            expected_version: Some(1),
            new_secret: None,
            secret_ends: vec![],
            audit: draft(AuditAction::KeyUpdate, &id(10)),
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .get_key(&id(10), T0)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(t1)
    );
}

async fn audit_chain(store: &dyn KeyStore) {
    let head_before = store.change_head().await.unwrap();
    let appended = store
        .append_audit(AuditDraft {
            time: T0,
            actor: None,
            action: AuditAction::AuthFailed,
            target: None,
            summary: json!({"reason": "NOT_FOUND"}),
        })
        .await
        .unwrap();
    // The change head is the latest audit event's sequence number, and it moves forward.
    assert!(appended > head_before);
    assert_eq!(store.change_head().await.unwrap(), appended);
    let mut verifier = ChainVerifier::default();
    let mut filter = AuditFilter {
        limit: 4,
        ..Default::default()
    };
    let mut total = 0;
    loop {
        let page = store.list_audit(&filter).await.unwrap();
        for event in &page.items {
            verifier.check(event).unwrap();
            total += 1;
        }
        match page.next_cursor {
            Some(c) => filter.after = Some(c),
            None => break,
        }
    }
    // 1 create + 1 update + 1 rotate + 15 creates + 1 update + 1 auth failure; failed writes left no event.
    assert_eq!(total, 20);
    let only = store
        .list_audit(&AuditFilter {
            target: Some(id(1)),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = only.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.create", "key.update", "key.rotate"]);
    let failures = store
        .list_audit(&AuditFilter {
            action: Some("auth.failed".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failures.items.len(), 1);
    assert_eq!(failures.items[0].summary, json!({"reason": "NOT_FOUND"}));
}

/// Issue 10, finding 11: the "last root.manage key" check runs inside the write's
/// transaction. A write that would leave no usable root key with `root.manage` is refused
/// even though the caller's own check (made before, outside the transaction) passed: this is
/// what makes two revocations racing on the last two such keys leave one.
async fn finding_11_the_last_root_manage_key_is_guarded_inside_the_write(store: &dyn KeyStore) {
    let now = T0 + Duration::hours(1);
    let create = |n: usize, permissions: &[&str]| {
        let mut write = new_key_write(&id(n), &format!("kwroot_guard_{n}"));
        write.record.kind = KeyKind::Root;
        write.record.tenant = None;
        write.record.permissions = permissions
            .iter()
            .map(|p| Permission::new(p).unwrap())
            .collect();
        write.audit.action = AuditAction::RootCreate;
        write
    };
    // Root keys earlier checks left behind hold no root.manage, so they do not count.
    let leftovers = store
        .list_keys(&KeyFilter {
            kind: KeyKind::Root,
            owner: None,
            tenant: None,
            status: Some(KeyStatus::Active),
            now,
            limit: 1000,
            after: None,
        })
        .await
        .unwrap();
    for key in leftovers.items {
        assert!(!key.permissions.iter().any(|p| p.grants("root.manage")));
    }
    let change = |current: &KeyRecord, f: &dyn Fn(&mut KeyRecord)| {
        let mut next = current.clone();
        f(&mut next);
        next.version = current.version + 1;
        KeyWrite {
            record: next,
            expected_version: Some(current.version),
            new_secret: None,
            secret_ends: vec![],
            audit: AuditDraft {
                time: now,
                ..draft(AuditAction::RootRevoke, &current.key_id)
            },
        }
    };
    let get = |n: usize| async move { store.get_key(&id(n), now).await.unwrap().unwrap() };
    let revoke = |r: &mut KeyRecord| {
        r.revoked_at = Some(now);
        r.revoked_reason = Some("test".into());
    };

    store.write_key(create(200, &["*"])).await.unwrap();
    store
        .write_key(create(201, &["root.manage"]))
        .await
        .unwrap();
    store.write_key(create(202, &["keys.read"])).await.unwrap();
    // A tenant-scoped root.manage key is not one that remains: it cannot mint an unscoped
    // root key (issue 10, finding 7).
    let mut scoped = create(205, &["root.manage"]);
    scoped.record.tenant = Some("acme".into());
    store.write_key(scoped).await.unwrap();

    // Both callers checked that another root.manage key exists, and both were right when
    // they looked. The first revocation commits; the second would leave none.
    let (a, b) = (get(200).await, get(201).await);
    store.write_key(change(&a, &revoke)).await.unwrap();
    let refused = store.write_key(change(&b, &revoke)).await;
    assert!(
        matches!(&refused, Err(StoreError::LastRootKey(k)) if *k == id(201)),
        "{refused:?}"
    );
    let b = get(201).await;
    assert_eq!(b.revoked_at, None, "the refused write changed nothing");
    assert_eq!(b.version, 1);

    // Disabling it, moving its expiry to the past, or taking root.manage away is the same.
    let past = |r: &mut KeyRecord| r.expires_at = Some(now - Duration::seconds(1));
    let disable = |r: &mut KeyRecord| r.enabled = false;
    let demote = |r: &mut KeyRecord| r.permissions = vec![Permission::new("keys.*").unwrap()];
    for f in [&past as &dyn Fn(&mut KeyRecord), &disable, &demote] {
        assert!(matches!(
            store.write_key(change(&b, f)).await,
            Err(StoreError::LastRootKey(_))
        ));
    }
    // A future expiry keeps it usable now, and other changes of the last key pass.
    let later = |r: &mut KeyRecord| r.expires_at = Some(now + Duration::days(1));
    store.write_key(change(&b, &later)).await.unwrap();
    // Root keys without root.manage may go.
    let c = get(202).await;
    store.write_key(change(&c, &revoke)).await.unwrap();

    // With a second root.manage key the first may go, and the chain records both writes.
    store.write_key(create(203, &["root.*"])).await.unwrap();
    let b = get(201).await;
    store.write_key(change(&b, &revoke)).await.unwrap();
    let d = get(203).await;
    assert!(matches!(
        store.write_key(change(&d, &revoke)).await,
        Err(StoreError::LastRootKey(_))
    ));

    // Two revocations racing on the last two root.manage keys: exactly one commits.
    store
        .write_key(create(204, &["root.manage"]))
        .await
        .unwrap();
    let e = get(204).await;
    let (first, second) = tokio::join!(
        store.write_key(change(&d, &revoke)),
        store.write_key(change(&e, &revoke))
    );
    let refused = [&first, &second]
        .iter()
        .filter(|r| matches!(r, Err(StoreError::LastRootKey(_))))
        .count();
    assert_eq!(
        (first.is_ok() as u8 + second.is_ok() as u8, refused),
        (1, 1),
        "{first:?} {second:?}"
    );
}
