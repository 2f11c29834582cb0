//! Issue 10, finding 11, through the engine: the "last root.manage key" rule holds when two
//! revocations race, because the store checks it inside the write's transaction (the
//! engine's own check, made before the write, passes for both).

use keyward_core::record::KeyKind;

use crate::tests::fixture_with;
use crate::{EngineConfig, EngineError, NewKey};

#[tokio::test]
async fn finding_11_two_concurrent_revocations_leave_a_root_manage_key() {
    let f = fixture_with(EngineConfig::default()).await;
    let second = f
        .engine
        .create_root_key(
            &f.root,
            NewKey {
                owner: "ops".into(),
                permissions: vec!["root.manage".into()],
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
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
