//! Issue 10, finding 11, through the engine: the "last root.manage key" rule holds when two
//! revocations race, because the store checks it inside the write's transaction (the engine
//! makes no check of its own before the write: one would pass for both).

use keyward_core::record::KeyKind;

use crate::test_fixture::fixture_with;
use crate::{EngineConfig, EngineError, NewKey};

#[tokio::test]
async fn finding_11_two_concurrent_revocations_leave_a_root_manage_key() {
    let f = fixture_with(EngineConfig::default()).await;
    let second = f.create_root(&["root.manage"]).await;
    let (a, b) = tokio::join!(
        f.engine
            .revoke_key(&f.root, KeyKind::Root, &f.root.key_id, "first"),
        f.engine
            .revoke_key(&f.root, KeyKind::Root, &second.record.key_id, "second"),
    );
    let refused = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(EngineError::LastRootKey { .. })))
        .count();
    assert_eq!(
        (u8::from(a.is_ok()) + u8::from(b.is_ok()), refused),
        (1, 1),
        "{a:?} {b:?}"
    );
    // The survivor still manages root keys.
    let survivor = if a.is_ok() {
        second.key.expose()
    } else {
        f.root_key.expose()
    };
    f.engine
        .authenticate(Some(survivor), "root.manage", None)
        .await
        .unwrap();
}

/// The guard protects root keys that hold `root.manage`, and nothing else: with no usable
/// `root.manage` key left (the only one expired, which nothing prevents), a root key holding
/// `keys.revoke` must still be able to revoke a leaked root key, and a tenant's admin one of
/// its own tenant's root keys. The engine's old check, made before the write, refused every
/// root-key revocation then (409 last_root_key), whatever the key held.
#[tokio::test]
async fn review_a_root_key_without_root_manage_can_always_be_revoked() {
    let f = fixture_with(EngineConfig::default()).await;
    let create = |permissions: &[&str], tenant: Option<&str>, ttl: Option<i64>| {
        let spec = NewKey {
            owner: "ops".into(),
            tenant: tenant.map(str::to_owned),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            ttl_seconds: ttl,
            ..NewKey::default()
        };
        let engine = &f.engine;
        let root = &f.root;
        async move { engine.create_root_key(root, spec).await.unwrap() }
    };
    let admin = create(&["root.manage"], None, Some(60)).await;
    let revoker = crate::Principal::new(create(&["keys.revoke"], None, None).await.record);
    let leaked = create(&["keys.read"], None, None).await;
    let acme_admin =
        crate::Principal::new(create(&["keys.revoke"], Some("acme"), None).await.record);
    let acme_leaked = create(&["keys.read"], Some("acme"), None).await;
    // The bootstrap key goes (the admin key remains), then the admin key expires.
    f.engine
        .revoke_key(&f.root, KeyKind::Root, &f.root.key_id, "rotated")
        .await
        .unwrap();
    f.clock.advance(time::Duration::seconds(61));
    assert!(
        f.engine
            .authenticate(Some(admin.key.expose()), "root.manage", None)
            .await
            .is_err()
    );

    f.engine
        .revoke_key(&revoker, KeyKind::Root, &leaked.record.key_id, "leaked")
        .await
        .unwrap();
    f.engine
        .revoke_key(
            &acme_admin,
            KeyKind::Root,
            &acme_leaked.record.key_id,
            "leaked",
        )
        .await
        .unwrap();
}
