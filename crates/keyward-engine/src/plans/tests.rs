//! Tests of plans: their settings apply to the keys that follow them, and a change reaches
//! those keys at once.

use keyward_core::verify::{VerifyCode, VerifyRequest};

use crate::test_fixture::*;
use crate::*;
use keyward_core::permission::PermissionQuery;

#[tokio::test]
async fn plans_apply_to_their_keys_and_changes_reach_them_at_once() {
    let f = fixture().await;
    let plan = PlanSpec {
        limits: vec![limit("per_minute", 2, 60, None)],
        quota: None,
        permissions: vec!["orders.read".into()],
    };
    f.engine
        .put_plan(&f.root, "free", plan.clone(), true)
        .await
        .unwrap();
    assert!(matches!(
        f.engine.put_plan(&f.root, "free", plan.clone(), true).await,
        Err(EngineError::PlanExists { .. })
    ));
    let on_plan = create_with(
        &f,
        NewKey {
            owner: "o".into(),
            plan: Some("free".into()),
            ..NewKey::default()
        },
    )
    .await;
    let q = PermissionQuery::parse("orders.read").unwrap();
    let req = VerifyRequest {
        query: Some(&q),
        ..VerifyRequest::default()
    };
    let key = on_plan.key.expose();
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::Valid,
        "permissions come from the plan"
    );
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::Valid
    );
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::RateLimited
    );
    // Raising the plan's limit changes the key at once.
    let pro = PlanSpec {
        limits: vec![limit("per_minute", 5, 60, None)],
        ..plan
    };
    f.engine
        .put_plan(&f.root, "free", pro, false)
        .await
        .unwrap();
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::Valid
    );
    // A key's own limit of the same name overrides the plan's.
    let own = create_with(
        &f,
        NewKey {
            owner: "o".into(),
            plan: Some("free".into()),
            limits: vec![limit("per_minute", 1, 60, None)],
            ..NewKey::default()
        },
    )
    .await;
    assert_eq!(
        count(&codes(&f, own.key.expose(), 3, 1).await, VerifyCode::Valid),
        1
    );
    // Unknown plans are refused; a plan in use cannot be deleted.
    let bad = NewKey {
        owner: "o".into(),
        plan: Some("gold".into()),
        ..NewKey::default()
    };
    assert!(
        matches!(f.engine.create_key(&f.root, bad).await, Err(EngineError::Invalid(e)) if e.field == "plan")
    );
    assert!(matches!(
        f.engine.delete_plan(&f.root, "free").await,
        Err(EngineError::PlanInUse { .. })
    ));
    let audit = f
        .engine
        .list_audit(Some("free".into()), None, None, None)
        .await
        .unwrap();
    let actions: Vec<_> = audit.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["plan.create", "plan.update"]);
}
