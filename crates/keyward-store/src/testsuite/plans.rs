//! Plans and policies, and durable credit balances.

use super::*;

pub(super) async fn policy_and_plans(store: &dyn KeyStore) {
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

pub(super) async fn credits(store: &dyn KeyStore) {
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
    let adjust = |unspent, op| {
        let audit = draft(AuditAction::CreditsAdjust, &key);
        let (key, config) = (&key, &config);
        async move {
            let after = store.adjust_credits(key, config, unspent, op, audit, T0);
            after.await.unwrap().remaining
        }
    };
    assert_eq!(adjust(2, CreditOp::Increase(5)).await, 7);
    assert_eq!(adjust(0, CreditOp::Decrease(50)).await, 0);
    assert_eq!(adjust(0, CreditOp::Set(3)).await, 3);
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
