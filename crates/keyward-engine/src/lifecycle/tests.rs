//! Tests of the key lifecycle: writes evict the cache at once, rotation and its grace period,
//! expiry, input validation, the audit chain every write extends, and the revocation event.

use keyward_core::record::KeyKind;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use time::Duration;

use crate::test_fixture::*;
use crate::*;
use keyward_core::permission::PermissionQuery;
use serde_json::json;

#[tokio::test]
async fn writes_invalidate_the_cache_at_once() {
    let f = fixture().await;
    let created = f.create(&["orders.read"]).await;
    let key = created.key.expose();
    let id = created.record.key_id.clone();
    let read = PermissionQuery::parse("orders.read").unwrap();
    let req = VerifyRequest {
        query: Some(&read),
        ..VerifyRequest::default()
    };
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::Valid
    );

    let patch = KeyPatch {
        enabled: Some(false),
        ..KeyPatch::default()
    };
    f.engine.update_key(&f.root, &id, patch).await.unwrap();
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::Disabled
    );

    let patch = KeyPatch {
        enabled: Some(true),
        permissions: Some(vec!["orders.write".into()]),
        ..KeyPatch::default()
    };
    f.engine.update_key(&f.root, &id, patch).await.unwrap();
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::InsufficientPermissions
    );

    f.engine
        .revoke_key(&f.root, KeyKind::Api, &id, "leaked")
        .await
        .unwrap();
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::Revoked
    );
    assert!(matches!(
        f.engine
            .revoke_key(&f.root, KeyKind::Api, &id, "again")
            .await,
        Err(EngineError::Revoked { .. })
    ));
    assert!(matches!(
        f.engine
            .update_key(
                &f.root,
                &id,
                KeyPatch {
                    enabled: Some(true),
                    ..KeyPatch::default()
                }
            )
            .await,
        Err(EngineError::Revoked { .. })
    ));
}

#[tokio::test]
async fn rotation_grace_period_and_second_rotation() {
    let f = fixture().await;
    let first = f.create(&[]).await;
    let id = first.record.key_id.clone();
    assert_eq!(f.code(first.key.expose()).await, VerifyCode::Valid);

    let second = f
        .engine
        .rotate_key(&f.root, &id, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(second.record.key_id, id, "key_id stays the same");
    assert_eq!(
        second.plan.previous.as_ref().unwrap().expires_at,
        T0 + Duration::hours(1)
    );
    let old = f.verify(first.key.expose()).await;
    assert_eq!(old.code, VerifyCode::Valid);
    assert_eq!(old.deprecated_until, Some(T0 + Duration::hours(1)));
    let new = f.verify(second.key.expose()).await;
    assert_eq!((new.code, new.deprecated_until), (VerifyCode::Valid, None));
    assert_eq!(second.record.secrets.len(), 2);

    // Rotating again during the grace period ends the oldest secret at once.
    f.clock.advance(Duration::minutes(10));
    let third = f
        .engine
        .rotate_key(&f.root, &id, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(third.plan.ended.len(), 1);
    assert_eq!(third.plan.ended[0].start, first.record.secrets[0].start);
    assert_eq!(f.code(first.key.expose()).await, VerifyCode::Expired);
    assert_eq!(f.code(second.key.expose()).await, VerifyCode::Valid);
    assert_eq!(f.code(third.key.expose()).await, VerifyCode::Valid);
    assert_eq!(third.record.secrets.len(), 2, "at most two live secrets");

    // When the grace period ends the previous secret stops; the current one goes on.
    f.clock.advance(Duration::hours(1));
    assert_eq!(f.code(second.key.expose()).await, VerifyCode::Expired);
    assert_eq!(f.code(third.key.expose()).await, VerifyCode::Valid);

    // Revocation reaches every secret.
    f.engine
        .revoke_key(&f.root, KeyKind::Api, &id, "done")
        .await
        .unwrap();
    for k in [&first.key, &second.key, &third.key] {
        assert_eq!(f.code(k.expose()).await, VerifyCode::Revoked);
    }
}

#[tokio::test]
async fn zero_grace_ends_the_old_secret_immediately() {
    let f = fixture().await;
    let first = f.create(&[]).await;
    assert_eq!(f.code(first.key.expose()).await, VerifyCode::Valid);
    let second = f
        .engine
        .rotate_key(&f.root, &first.record.key_id, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(f.code(first.key.expose()).await, VerifyCode::Expired);
    assert_eq!(f.code(second.key.expose()).await, VerifyCode::Valid);
    assert!(second.key.expose().starts_with("kw_live_"));
    assert!(matches!(
        f.engine.rotate_key(&f.root, &first.record.key_id, Duration::days(31)).await,
        Err(EngineError::Invalid(e)) if e.field == "grace_period_seconds"
    ));
}

#[tokio::test]
async fn ttl_expiry_follows_the_clock() {
    let f = fixture().await;
    let spec = NewKey {
        owner: "ci".into(),
        ttl_seconds: Some(60),
        environment: Some("test".into()),
        ..NewKey::default()
    };
    let created = f.engine.create_key(&f.root, spec).await.unwrap();
    assert!(created.key.expose().starts_with("kw_test_"));
    assert_eq!(f.code(created.key.expose()).await, VerifyCode::Valid);
    f.clock.advance(Duration::seconds(59));
    assert_eq!(f.code(created.key.expose()).await, VerifyCode::Valid);
    f.clock.advance(Duration::seconds(1));
    assert_eq!(f.code(created.key.expose()).await, VerifyCode::Expired);
}

#[tokio::test]
async fn invalid_input_names_the_field() {
    let f = fixture().await;
    let cases: Vec<(NewKey, &str)> = vec![
        (
            NewKey {
                owner: " ".into(),
                ..NewKey::default()
            },
            "owner",
        ),
        (
            NewKey {
                owner: "o".into(),
                permissions: vec!["bad perm".into()],
                ..NewKey::default()
            },
            "permissions[0]",
        ),
        (
            NewKey {
                owner: "o".into(),
                routes: vec!["nope".into()],
                ..NewKey::default()
            },
            "routes[0]",
        ),
        (
            NewKey {
                owner: "o".into(),
                ttl_seconds: Some(1),
                expires_at: Some(T0),
                ..NewKey::default()
            },
            "ttl_seconds",
        ),
        (
            NewKey {
                owner: "o".into(),
                expires_at: Some(T0),
                ..NewKey::default()
            },
            "expires_at",
        ),
        (
            NewKey {
                owner: "o".into(),
                prefix: Some("BAD".into()),
                ..NewKey::default()
            },
            "prefix",
        ),
        (
            NewKey {
                owner: "o".into(),
                tenant: Some("a b".into()),
                ..NewKey::default()
            },
            "tenant",
        ),
    ];
    for (spec, field) in cases {
        match f.engine.create_key(&f.root, spec).await {
            Err(EngineError::Invalid(e)) => assert_eq!(e.field, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let bad_root = NewKey {
        owner: "o".into(),
        permissions: vec!["orders.read".into()],
        ..NewKey::default()
    };
    assert!(
        matches!(f.engine.create_root_key(&f.root, bad_root).await, Err(EngineError::Invalid(e)) if e.field == "permissions[0]")
    );
}

#[tokio::test]
async fn every_write_is_audited_in_an_intact_chain() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let id = created.record.key_id.clone();
    f.engine
        .update_key(
            &f.root,
            &id,
            KeyPatch {
                name: Some(Some("n".into())),
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap();
    f.engine
        .rotate_key(&f.root, &id, Duration::ZERO)
        .await
        .unwrap();
    f.engine
        .revoke_key(&f.root, KeyKind::Api, &id, "leaked")
        .await
        .unwrap();
    let page = f
        .engine
        .list_audit(Some(id.clone()), None, None, None)
        .await
        .unwrap();
    let actions: Vec<_> = page.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["key.create", "key.update", "key.rotate", "key.revoke"]
    );
    assert_eq!(
        page.items[1].summary,
        json!({"before": {"name": null}, "after": {"name": "n"}})
    );
    assert_eq!(page.items[3].summary["reason"], "leaked");
    assert!(
        page.items
            .iter()
            .all(|e| e.actor.as_deref() == Some(f.root.key_id.as_str()))
    );
    let report = f.engine.verify_audit_chain().await.unwrap();
    assert_eq!(
        (report.checked, report.first_broken, report.head_seq),
        (5, None, 5)
    );
    let last = f
        .engine
        .list_audit(None, None, None, Some(4))
        .await
        .unwrap();
    assert_eq!(report.head_hash, last.items[0].hash);
}

#[tokio::test]
async fn list_limits_are_validated() {
    let f = fixture().await;
    for bad in [0, MAX_PAGE + 1] {
        let q = ListKeys {
            limit: Some(bad),
            ..ListKeys::default()
        };
        assert!(
            matches!(f.engine.list_keys(KeyKind::Api, q).await, Err(EngineError::Invalid(e)) if e.field == "limit")
        );
    }
    assert!(matches!(
        f.engine.get_key(KeyKind::Api, "not-a-key-id").await,
        Err(EngineError::NotFound { .. })
    ));
    assert!(matches!(
        f.engine.get_key(KeyKind::Api, &f.root.key_id).await,
        Err(EngineError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_revocation_is_published_as_an_event_without_the_secret() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let mut events = f.engine.subscribe();
    f.engine
        .revoke_key(
            &f.root,
            KeyKind::Api,
            &created.record.key_id,
            "leaked in a log",
        )
        .await
        .unwrap();
    let event = events.try_recv().unwrap();
    assert_eq!(event.kind(), "key_revoked");
    let json = serde_json::to_string(&event).unwrap();
    assert!(json.contains(&created.record.key_id), "{json}");
    assert!(json.contains("leaked in a log"), "{json}");
    assert!(!json.contains(created.key.expose()), "{json}");
    // Root keys are not announced.
    assert!(events.try_recv().is_err());
}
