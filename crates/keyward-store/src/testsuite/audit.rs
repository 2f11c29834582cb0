//! The audit log: its hash chain, and listing it by target, action and tenant.

use super::*;

pub(super) async fn audit_chain(store: &dyn KeyStore) {
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

/// The tenant filter of the audit log (a tenant-scoped root key's view): events whose target
/// or actor is a key of the tenant, and nothing else, paged like any other listing.
pub(super) async fn audit_by_tenant(store: &dyn KeyStore) {
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
