//! Keys: creating and finding them, optimistic concurrency, secret rotation, listing and
//! paging, last-used times, the first root key, and the last-root-key guard.

use super::*;

pub(super) async fn create_and_find(store: &dyn KeyStore) {
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

pub(super) async fn optimistic_concurrency(store: &dyn KeyStore) {
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

pub(super) async fn rotation_secrets(store: &dyn KeyStore) {
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

pub(super) async fn listing_and_pagination(store: &dyn KeyStore) {
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

pub(super) async fn last_used(store: &dyn KeyStore) {
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

/// Bootstrap writes a root key only into a store that never had one.
pub(super) async fn first_root_key_once(store: &dyn KeyStore) {
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

/// Issue 10, finding 11: the "last root.manage key" check runs inside the write's
/// transaction. A write that would leave no usable root key with `root.manage` is refused
/// even though the caller's own check (made before, outside the transaction) passed: this is
/// what makes two revocations racing on the last two such keys leave one.
pub(super) async fn finding_11_the_last_root_manage_key_is_guarded_inside_the_write(
    store: &dyn KeyStore,
) {
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
