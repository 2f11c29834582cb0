//! Tests of finding keys: what the cache answers without the store, and how a node behaves
//! when the store fails (stale-if-error, fail-open) and when other nodes write (the change
//! feed, resyncs).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use keyward_core::key::{PlaintextKey, Prefix, generate_key};
use keyward_core::record::KeyKind;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use keyward_store::{Change, StoreError};
use time::Duration;

use crate::test_fixture::*;
use crate::*;
use keyward_core::permission::PermissionQuery;

#[tokio::test]
async fn malformed_keys_never_reach_the_store() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let mut bad_checksum = created.key.expose().to_owned();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'a' { 'b' } else { 'a' });
    let before = f.store_reads();
    for input in [
        "",
        "garbage",
        "kw_live_short",
        bad_checksum.as_str(),
        &"x".repeat(100_000),
    ] {
        assert_eq!(f.code(input).await, VerifyCode::Malformed, "{input:.40}");
    }
    assert_eq!(f.store_reads(), before);
}

#[tokio::test]
async fn cached_valid_verify_does_not_touch_the_store() {
    let f = fixture().await;
    let created = f.create(&["orders.read"]).await;
    assert_eq!(f.code(created.key.expose()).await, VerifyCode::Valid);
    let after_first = f.store_reads();
    for _ in 0..10 {
        assert_eq!(f.code(created.key.expose()).await, VerifyCode::Valid);
    }
    assert_eq!(f.store_reads(), after_first);
}

#[tokio::test]
async fn not_found_is_cached_and_bounded() {
    let mut config = EngineConfig::default();
    config.cache.max_not_found = 50;
    let f = fixture_with(config).await;
    let prefix = Prefix::new("kw_live").unwrap();
    let unknown = generate_key(&prefix, &mut rand::rngs::SysRng).unwrap();
    assert_eq!(f.code(unknown.expose()).await, VerifyCode::NotFound);
    let finds = f.finds();
    assert_eq!(f.code(unknown.expose()).await, VerifyCode::NotFound);
    assert_eq!(
        f.finds(),
        finds,
        "a repeated unknown key is answered from the negative cache"
    );
    for _ in 0..500 {
        let k = generate_key(&prefix, &mut rand::rngs::SysRng).unwrap();
        assert_eq!(f.code(k.expose()).await, VerifyCode::NotFound);
    }
    let sizes = f.engine.cache_sizes();
    assert!(sizes.not_found <= 50, "{sizes:?}");
}

#[tokio::test]
async fn a_fill_that_read_the_store_before_a_revoke_is_not_cached() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel();
    *f.store.gate.lock().await = Some((reached_tx, release_rx));
    let none = VerifyRequest::default();
    // The verify reads the key from the store, then stalls; the revoke commits meanwhile.
    let verify = f.engine.verify(created.key.expose(), &none);
    let revoke = async {
        reached_rx.await.unwrap();
        f.engine
            .revoke_key(&f.root, KeyKind::Api, &created.record.key_id, "leaked")
            .await
            .unwrap();
        release_tx.send(()).unwrap();
    };
    let (overlapping, ()) = tokio::join!(verify, revoke);
    // The overlapping call read the key before the revoke: VALID is its honest answer.
    assert_eq!(overlapping.unwrap().code, VerifyCode::Valid);
    // But what it read must not have been cached over the revoke's invalidation.
    assert_eq!(f.code(created.key.expose()).await, VerifyCode::Revoked);
}

#[tokio::test]
async fn a_store_outage_serves_cached_keys_until_stale_if_error_and_fails_unknown_keys_closed() {
    let f = fixture().await;
    let created = f.create(&["orders.read"]).await;
    let key = created.key.expose();
    let unknown = unknown_key();
    assert_eq!(f.code(key).await, VerifyCode::Valid);
    f.store.down.store(true, Ordering::SeqCst);

    // Fresh entries need no store at all.
    let v = f.verify(key).await;
    assert_eq!((v.code, v.degraded), (VerifyCode::Valid, None));

    // Past the staleness bound the store is asked; it fails, so the stale entry answers.
    f.clock.advance(Duration::seconds(31));
    let v = f.verify(key).await;
    assert_eq!(v.code, VerifyCode::Valid);
    assert_eq!(v.degraded, Some(Degraded::StaleCache { age_seconds: 31 }));
    // Permissions still come from the cached record.
    let admin = PermissionQuery::parse("orders.admin").unwrap();
    let request = VerifyRequest {
        query: Some(&admin),
        ..VerifyRequest::default()
    };
    let v = f.engine.verify(key, &request).await.unwrap();
    assert_eq!(v.code, VerifyCode::InsufficientPermissions);

    // An unknown key fails closed with the store's error.
    let err = f
        .engine
        .verify(unknown.expose(), &VerifyRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Store(StoreError::Backend(_))),
        "{err:?}"
    );
    // Malformed keys need no store.
    assert_eq!(f.code("kw_live_garbage").await, VerifyCode::Malformed);

    // Beyond stale-if-error (5 minutes by default) even known keys fail closed.
    f.clock.advance(Duration::seconds(300));
    let err = f
        .engine
        .verify(key, &VerifyRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Store(StoreError::Backend(_))),
        "{err:?}"
    );

    // The store is back: after the probe interval, fresh answers again, without a degraded
    // marker.
    f.store.down.store(false, Ordering::SeqCst);
    f.clock.advance(Duration::seconds(1));
    let v = f.verify(key).await;
    assert_eq!((v.code, v.degraded), (VerifyCode::Valid, None));
    assert_eq!(f.code(unknown.expose()).await, VerifyCode::NotFound);
}

#[tokio::test]
async fn fail_open_admits_unknown_keys_only_when_configured_and_only_while_the_store_is_down() {
    let f = fixture_with(EngineConfig {
        fail_open_unknown_keys: true,
        ..EngineConfig::default()
    })
    .await;
    let unknown = unknown_key();
    assert_eq!(f.code(unknown.expose()).await, VerifyCode::NotFound);
    f.clock.advance(Duration::seconds(31));
    f.store.down.store(true, Ordering::SeqCst);
    let v = f.verify(unknown.expose()).await;
    assert_eq!(v.code, VerifyCode::Valid);
    assert_eq!(v.degraded, Some(Degraded::FailOpenUnknownKey));
    assert!(v.key.is_none(), "no identity is invented");
    assert_eq!(f.code("kw_live_garbage").await, VerifyCode::Malformed);
    // Root keys never fail open: the admin API needs the store.
    let err = f
        .engine
        .authenticate(Some(unknown_root().expose()), "keys.read", None)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Engine(_)), "{err:?}");
    f.store.down.store(false, Ordering::SeqCst);
    f.clock.advance(Duration::seconds(1));
    assert_eq!(f.code(unknown.expose()).await, VerifyCode::NotFound);
}

/// With `fail_open_unknown_keys`, a route that requires a tenant or environment still never
/// admits a key whose tenant and environment cannot be read.
#[tokio::test]
async fn finding_6_fail_open_never_admits_where_a_tenant_or_environment_is_required() {
    let f = fixture_with(EngineConfig {
        fail_open_unknown_keys: true,
        ..EngineConfig::default()
    })
    .await;
    let unknown = unknown_key();
    f.store.down.store(true, Ordering::SeqCst);
    for request in [
        VerifyRequest {
            tenant: Some("acme"),
            ..VerifyRequest::default()
        },
        VerifyRequest {
            environment: Some("live"),
            ..VerifyRequest::default()
        },
    ] {
        let refused = f.engine.verify(unknown.expose(), &request).await;
        assert!(matches!(refused, Err(EngineError::Store(_))), "{refused:?}");
    }
    let admitted = f.verify(unknown.expose()).await;
    assert_eq!(
        admitted.code,
        VerifyCode::Valid,
        "fail-open itself still works"
    );
}

fn unknown_root() -> PlaintextKey {
    generate_key(&Prefix::new("kwroot").unwrap(), &mut rand::rngs::SysRng).unwrap()
}

/// Two engines over one store: `f.engine` is node A (it writes), `node_b` only verifies and
/// learns of A's writes through the change feed the test drives.
async fn node_b(
    f: &Fixture,
) -> (
    Arc<Keyward>,
    tokio::sync::mpsc::UnboundedSender<Result<Change, StoreError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    *f.store.feed.lock().unwrap() = Some(ChannelFeed(rx));
    let b = Arc::new(Keyward::new(
        f.store.clone(),
        f.clock.clone(),
        EngineConfig::default(),
    ));
    tokio::spawn(Arc::clone(&b).follow_changes());
    // Once the follower has taken the feed it has also cleared the cache (no await between).
    until(|| f.store.feed.lock().unwrap().is_none()).await;
    (b, tx)
}

/// Lets the feed follower run until `done` holds (bounded: the follower needs a few polls).
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn other_nodes_changes_evict_this_nodes_cache_through_the_feed() {
    let f = fixture().await;
    let created = f.create(&["orders.read"]).await;
    let key = created.key.expose();
    let id = created.record.key_id.clone();
    let (b, feed) = node_b(&f).await;
    let verify_b = |b: Arc<Keyward>| async move {
        b.verify(key, &VerifyRequest::default()).await.unwrap().code
    };
    assert_eq!(verify_b(b.clone()).await, VerifyCode::Valid);
    let reads = f.store_reads();
    assert_eq!(verify_b(b.clone()).await, VerifyCode::Valid);
    assert_eq!(f.store_reads(), reads, "node B answers from its cache");

    // Node A revokes. Without a notification node B's cache would still say VALID.
    f.engine
        .revoke_key(&f.root, KeyKind::Api, &id, "test")
        .await
        .unwrap();
    assert_eq!(
        verify_b(b.clone()).await,
        VerifyCode::Valid,
        "not yet notified"
    );
    feed.send(Ok(Change::Key {
        key_id: id.clone(),
        written_at: None,
    }))
    .unwrap();
    until(|| b.keys.cache.record(&id).is_none()).await;
    assert_eq!(verify_b(b.clone()).await, VerifyCode::Revoked);
}

#[tokio::test]
async fn a_rotation_elsewhere_evicts_the_old_secret_too() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let old = created.key.expose().to_owned();
    let id = created.record.key_id.clone();
    let (b, feed) = node_b(&f).await;
    assert_eq!(
        b.verify(&old, &VerifyRequest::default())
            .await
            .unwrap()
            .code,
        VerifyCode::Valid
    );
    // Rotated with no grace: the old secret ends now.
    f.engine
        .rotate_key(&f.root, &id, Duration::ZERO)
        .await
        .unwrap();
    f.clock.advance(Duration::seconds(1));
    feed.send(Ok(Change::Key {
        key_id: id.clone(),
        written_at: None,
    }))
    .unwrap();
    until(|| b.keys.cache.record(&id).is_none()).await;
    assert_eq!(
        b.verify(&old, &VerifyRequest::default())
            .await
            .unwrap()
            .code,
        VerifyCode::Expired
    );
}

#[tokio::test]
async fn a_lost_feed_stops_cache_answers_until_it_is_back_and_resynced() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let key = created.key.expose();
    let id = created.record.key_id.clone();
    let (b, feed) = node_b(&f).await;
    assert!(b.change_feed_trusted());
    assert_eq!(
        b.verify(key, &VerifyRequest::default()).await.unwrap().code,
        VerifyCode::Valid
    );
    // The feed breaks: node B no longer trusts its cache and reads the store every time.
    feed.send(Err(StoreError::Backend("listener lost (test)".into())))
        .unwrap();
    until(|| !b.change_feed_trusted()).await;
    let reads = f.store_reads();
    assert_eq!(
        b.verify(key, &VerifyRequest::default()).await.unwrap().code,
        VerifyCode::Valid
    );
    assert!(f.store_reads() > reads, "an untrusted cache is not served");
    // A revoke made while the feed was down (its notification lost) is seen at once.
    f.engine
        .revoke_key(&f.root, KeyKind::Api, &id, "test")
        .await
        .unwrap();
    assert_eq!(
        b.verify(key, &VerifyRequest::default()).await.unwrap().code,
        VerifyCode::Revoked
    );
    // The feed is back: nothing cached before the resync counts as fresh, so the next answer
    // is read from the store, and the cache is trusted again after that.
    f.clock.advance(Duration::milliseconds(1));
    feed.send(Ok(Change::Resync)).unwrap();
    until(|| b.change_feed_trusted()).await;
    let reads = f.store_reads();
    assert_eq!(
        b.verify(key, &VerifyRequest::default()).await.unwrap().code,
        VerifyCode::Revoked
    );
    assert_eq!(
        b.verify(key, &VerifyRequest::default()).await.unwrap().code,
        VerifyCode::Revoked
    );
    assert_eq!(
        f.store_reads(),
        reads + 1,
        "filled once, then served from the cache"
    );
}

#[tokio::test]
async fn a_failing_store_is_probed_once_a_second_not_on_every_verify() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let key = created.key.expose();
    assert_eq!(f.code(key).await, VerifyCode::Valid);
    f.clock.advance(Duration::seconds(31));
    f.store.down.store(true, Ordering::SeqCst);
    let v = f.verify(key).await;
    assert!(v.degraded.is_some());
    let reads = f.store_reads();
    for _ in 0..10 {
        let v = f.verify(key).await;
        assert_eq!(v.code, VerifyCode::Valid);
        assert!(v.degraded.is_some());
        // Unknown keys fail closed at once too.
        assert!(
            f.engine
                .verify(unknown_key().expose(), &VerifyRequest::default())
                .await
                .is_err()
        );
    }
    assert_eq!(
        f.store_reads(),
        reads,
        "no store call within the probe interval"
    );
    f.clock.advance(Duration::seconds(1));
    let _ = f.verify(key).await;
    assert_eq!(f.store_reads(), reads + 1, "one probe per interval");
}

#[tokio::test]
async fn a_resync_keeps_old_entries_for_stale_if_error_but_not_as_fresh() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let key = created.key.expose();
    let (b, feed) = node_b(&f).await;
    assert_eq!(
        b.verify(key, &VerifyRequest::default()).await.unwrap().code,
        VerifyCode::Valid
    );
    // The feed flaps: lost, then back (resync), then the store fails.
    feed.send(Err(StoreError::Backend("lost (test)".into())))
        .unwrap();
    until(|| !b.change_feed_trusted()).await;
    f.clock.advance(Duration::milliseconds(1));
    feed.send(Ok(Change::Resync)).unwrap();
    until(|| b.change_feed_trusted()).await;
    f.store.down.store(true, Ordering::SeqCst);
    // Not fresh (filled before the resync), so the store is tried; it fails, and the entry
    // still answers under stale-if-error rather than a 503.
    let v = b.verify(key, &VerifyRequest::default()).await.unwrap();
    assert_eq!(v.code, VerifyCode::Valid);
    assert!(
        matches!(v.degraded, Some(Degraded::StaleCache { .. })),
        "{v:?}"
    );
}

/// The cache has no clock of its own: when the wall clock steps back, an entry "filled" later
/// than now by more than the staleness bound has no known age and is read from the store again,
/// rather than served as fresh until the clock catches up.
#[tokio::test]
async fn a_wall_clock_stepped_back_does_not_keep_entries_fresh() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let key = created.key.expose();
    f.clock.advance(Duration::hours(2));
    assert_eq!(f.code(key).await, VerifyCode::Valid);
    let reads = f.store_reads();
    assert_eq!(f.code(key).await, VerifyCode::Valid);
    assert_eq!(
        f.store_reads(),
        reads,
        "a fresh entry is served from the cache"
    );
    // A small step back stays within the bound: still fresh.
    f.clock.advance(Duration::seconds(-10));
    assert_eq!(f.code(key).await, VerifyCode::Valid);
    assert_eq!(f.store_reads(), reads);
    // NTP steps the clock back two hours: the entry is not fresh, the store is read.
    f.clock.advance(Duration::hours(-2));
    assert_eq!(f.code(key).await, VerifyCode::Valid);
    assert_eq!(
        f.store_reads(),
        reads + 1,
        "read from the store, then cached again"
    );
    assert_eq!(f.code(key).await, VerifyCode::Valid);
    assert_eq!(f.store_reads(), reads + 1);
}
