//! Tests of the store-miss path under a flood (issue 10, finding 5): saturation is shed, not
//! taken for an outage; concurrent misses of one key read the store once; unknown keys are
//! bounded per caller address; `/readyz` does not reset the failure state. They run over the
//! counting store of `test_fixture.rs`, which proves how many reads reached the store.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use keyward_core::verify::{VerifyCode, VerifyRequest};
use keyward_store::StoreError;
use time::Duration;

use crate::test_fixture::{CountingStore, fixture_with, unknown_key};
use crate::unknown_keys::UnknownKeyBudget;
use crate::{Degraded, EngineConfig, EngineError, Keyward};

fn from(ip: [u8; 4]) -> VerifyRequest<'static> {
    VerifyRequest {
        ip: Some(IpAddr::from(ip)),
        ..VerifyRequest::default()
    }
}

#[tokio::test]
async fn finding_5_a_saturated_store_sheds_the_request_and_never_fails_open_or_marks_it_down() {
    let f = fixture_with(EngineConfig {
        fail_open_unknown_keys: true,
        ..EngineConfig::default()
    })
    .await;
    let known = f.create(&[]).await;
    assert_eq!(f.verify(known.key.expose()).await.code, VerifyCode::Valid);
    f.clock.advance(Duration::seconds(31));
    f.store.saturated.store(true, Ordering::SeqCst);

    // An unknown key is shed: no VALID without identity, whatever fail_open_unknown_keys says.
    let err = f
        .engine
        .verify(unknown_key().expose(), &VerifyRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Store(StoreError::Saturated(_))),
        "{err:?}"
    );
    // A known key past its freshness is shed too: saturation is no outage, so no
    // stale-if-error answer either (an attacker could otherwise stretch a revoked key's life).
    let err = f
        .engine
        .verify(known.key.expose(), &VerifyRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Store(StoreError::Saturated(_))),
        "{err:?}"
    );

    // The store was not marked down: the moment it has a free connection, the very next
    // lookup reads it (no probe interval to wait out, no stale or fail-open answers).
    f.store.saturated.store(false, Ordering::SeqCst);
    let reads = f.finds();
    let v = f.verify(known.key.expose()).await;
    assert_eq!((v.code, v.degraded), (VerifyCode::Valid, None));
    let v = f
        .engine
        .verify(unknown_key().expose(), &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!((v.code, v.degraded), (VerifyCode::NotFound, None));
    assert_eq!(f.finds(), reads + 2);

    // A real outage is still one: fail-open applies only to it.
    f.store.down.store(true, Ordering::SeqCst);
    let v = f
        .engine
        .verify(unknown_key().expose(), &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!(v.degraded, Some(Degraded::FailOpenUnknownKey));
}

#[tokio::test]
async fn finding_5_concurrent_misses_of_one_key_read_the_store_once() {
    let f = fixture_with(EngineConfig::default()).await;
    let known = f.create(&[]).await;
    for key in [
        unknown_key().expose().to_owned(),
        known.key.expose().to_owned(),
    ] {
        let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel();
        *f.store.gate.lock().await = Some((reached_tx, release_rx));
        let before = f.finds();
        let request = from([192, 0, 2, 1]);
        let verify = || f.engine.verify(&key, &request);
        // The first verification's read is held at the store until the others are waiting.
        let release = async {
            reached_rx.await.unwrap();
            tokio::task::yield_now().await;
            release_tx.send(()).unwrap();
        };
        let (a, b, c, d, e, ()) =
            tokio::join!(verify(), verify(), verify(), verify(), verify(), release);
        let codes: Vec<_> = [a, b, c, d, e]
            .into_iter()
            .map(|r| r.unwrap().code)
            .collect();
        let expected = if key == known.key.expose() {
            VerifyCode::Valid
        } else {
            VerifyCode::NotFound
        };
        assert_eq!(codes, [expected; 5]);
        assert_eq!(f.finds(), before + 1, "five misses, one store read");
        assert_eq!(
            f.engine.keys.flights.in_flight(),
            0,
            "nothing left in flight"
        );
    }
}

#[tokio::test]
async fn finding_5_a_cancelled_reader_hands_its_read_to_a_waiter() {
    let f = fixture_with(EngineConfig::default()).await;
    let key = unknown_key();
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
    let (_release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    *f.store.gate.lock().await = Some((reached_tx, release_rx));
    let request = VerifyRequest::default();
    let before = f.finds();
    // Boxed, so that dropping it below really cancels it.
    let mut first = Box::pin(f.engine.verify(key.expose(), &request));
    let second = f.engine.verify(key.expose(), &request);
    tokio::pin!(second);
    // The first caller reads and is held at the store; the second waits for that read.
    tokio::select! {
        _ = &mut first => unreachable!("the read is held"),
        r = reached_rx => r.unwrap(),
    }
    tokio::select! {
        biased;
        _ = &mut second => unreachable!("it waits for the read in flight"),
        () = tokio::task::yield_now() => {}
    }
    // The first caller goes away (its client disconnected): the second reads instead.
    drop(first);
    let v = second.await.unwrap();
    assert_eq!(v.code, VerifyCode::NotFound);
    assert_eq!(f.finds(), before + 2);
    assert_eq!(f.engine.keys.flights.in_flight(), 0);
}

#[tokio::test]
async fn finding_5_unknown_keys_are_bounded_per_address_without_store_reads() {
    let f = fixture_with(EngineConfig {
        unknown_key_budget: UnknownKeyBudget {
            per_minute: 1,
            burst: 3,
            max_addresses: 1000,
        },
        ..EngineConfig::default()
    })
    .await;
    let mut valid = Vec::new();
    for _ in 0..5 {
        valid.push(f.create(&[]).await);
    }
    let flooder = from([203, 0, 113, 9]);
    // Keys that exist cost no budget, however many the address presents.
    for created in &valid[..4] {
        let v = f.engine.verify(created.key.expose(), &flooder).await;
        assert_eq!(v.unwrap().code, VerifyCode::Valid);
    }
    // Three unknown keys are looked up; then unknown keys are refused without a store read.
    for _ in 0..3 {
        let v = f.engine.verify(unknown_key().expose(), &flooder).await;
        assert_eq!(v.unwrap().code, VerifyCode::NotFound);
    }
    let reads = f.finds();
    for _ in 0..20 {
        let err = f
            .engine
            .verify(unknown_key().expose(), &flooder)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::TooManyUnknownKeys {
                    retry_after_seconds: 60
                }
            ),
            "{err:?}"
        );
    }
    // So is a valid key the node has not seen yet: it was not looked up.
    let err = f.engine.verify(valid[4].key.expose(), &flooder).await;
    assert!(matches!(err, Err(EngineError::TooManyUnknownKeys { .. })));
    assert_eq!(f.finds(), reads, "refused without reading the store");
    // What is cached still answers for that address; other addresses are unaffected.
    let v = f.engine.verify(valid[0].key.expose(), &flooder).await;
    assert_eq!(v.unwrap().code, VerifyCode::Valid);
    let other = from([203, 0, 113, 10]);
    let v = f.engine.verify(unknown_key().expose(), &other).await;
    assert_eq!(v.unwrap().code, VerifyCode::NotFound);
    // Past the cache's freshness, a key the node knows is refreshed from the store even though
    // the address is still out of budget.
    f.clock.advance(Duration::seconds(31));
    let reads = f.finds();
    let v = f.engine.verify(valid[1].key.expose(), &flooder).await;
    assert_eq!(v.unwrap().code, VerifyCode::Valid);
    assert_eq!(f.finds(), reads + 1);
    assert!(
        f.engine
            .verify(unknown_key().expose(), &flooder)
            .await
            .is_err()
    );
    // A minute after it ran out, the address has a token again.
    f.clock.advance(Duration::seconds(29));
    let v = f.engine.verify(unknown_key().expose(), &flooder).await;
    assert_eq!(v.unwrap().code, VerifyCode::NotFound);
}

#[tokio::test]
async fn finding_5_readyz_does_not_end_the_wait_for_the_next_store_probe() {
    let f = fixture_with(EngineConfig::default()).await;
    let created = f.create(&[]).await;
    let key = created.key.expose();
    let request = VerifyRequest::default();
    let verify = || f.engine.verify(key, &request);
    assert_eq!(verify().await.unwrap().code, VerifyCode::Valid);
    f.clock.advance(Duration::seconds(31));
    f.store.down.store(true, Ordering::SeqCst);
    assert!(verify().await.unwrap().degraded.is_some());
    // The store answers a ping again (anyone may call /readyz, as often as they like).
    f.store.down.store(false, Ordering::SeqCst);
    f.engine.ready().await.unwrap();
    let reads = f.store_reads();
    let v = verify().await.unwrap();
    assert!(
        v.degraded.is_some(),
        "still within the probe interval: answered from the stale cache"
    );
    assert_eq!(
        f.store_reads(),
        reads,
        "the ping did not send lookups back early"
    );
    // The probe interval ends on the engine's own schedule.
    f.clock.advance(Duration::seconds(1));
    let v = verify().await.unwrap();
    assert_eq!((v.code, v.degraded), (VerifyCode::Valid, None));
}

/// Callers that waited for a read which failed saturated get a saturated error too, not an
/// outage (which would mark the store down).
#[tokio::test]
async fn a_saturated_read_is_saturated_for_the_callers_that_waited_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = CountingStore::open(dir.path()).await;
    let engine = Arc::new(Keyward::new(
        store.clone(),
        Arc::new(crate::clock::ManualClock::new(
            time::OffsetDateTime::UNIX_EPOCH,
        )),
        EngineConfig::default(),
    ));
    store.saturated.store(true, Ordering::SeqCst);
    let key = unknown_key();
    let request = VerifyRequest::default();
    let (a, b) = tokio::join!(
        engine.verify(key.expose(), &request),
        engine.verify(key.expose(), &request)
    );
    for r in [a, b] {
        assert!(matches!(
            r,
            Err(EngineError::Store(StoreError::Saturated(_)))
        ));
    }
}

/// A tenant-scoped caller chooses the `ip` of its verifications, so the per-address budget of
/// unknown keys must not tell it whether another tenant's key exists: a key outside its scope
/// (cached on the node or not, presented once or again) must cost and answer exactly what a
/// key never issued does, in every state of the budget.
#[tokio::test]
async fn review_scoped_key_cannot_probe_other_tenant_via_unknown_key_budget() {
    let f = fixture_with(EngineConfig {
        unknown_key_budget: UnknownKeyBudget {
            per_minute: 1,
            burst: 3,
            max_addresses: 1000,
        },
        ..EngineConfig::default()
    })
    .await;
    let acme = f
        .engine
        .create_root_key(
            &f.root,
            crate::NewKey {
                owner: "acme-admin".into(),
                tenant: Some("acme".into()),
                permissions: vec!["keys.verify".into()],
                ..crate::NewKey::default()
            },
        )
        .await
        .unwrap();
    let acme = crate::Principal::new(acme.record);
    let globex_key = || async {
        f.engine
            .create_key(
                &f.root,
                crate::NewKey {
                    owner: "globex".into(),
                    tenant: Some("globex".into()),
                    ..crate::NewKey::default()
                },
            )
            .await
            .unwrap()
            .key
    };
    // One of globex's keys is in this node's cache (globex's own traffic verified it), the
    // other has never been verified here.
    let cached = globex_key().await;
    let v = f
        .engine
        .verify(cached.expose(), &VerifyRequest::default())
        .await;
    assert_eq!(v.unwrap().code, VerifyCode::Valid);
    let uncached = globex_key().await;
    let never_issued = unknown_key();

    // What acme observes presenting `candidate` twice from a fresh address, then unknown keys
    // until it is refused, then `candidate` again.
    let mut last_octet = 0;
    let mut observe = |candidate: String| {
        last_octet += 1;
        let request = from([198, 51, 100, last_octet]);
        let engine = &f.engine;
        let acme = &acme;
        async move {
            let answer = |key: String| async move {
                match engine.verify_as(acme, &key, &request, 1).await {
                    Ok(v) => format!("{:?}", v.code),
                    Err(e) => format!("{e:?}"),
                }
            };
            let mut seen = vec![
                answer(candidate.clone()).await,
                answer(candidate.clone()).await,
            ];
            let mut passed = 0;
            while passed < 10 && answer(unknown_key().expose().to_owned()).await == "NotFound" {
                passed += 1;
            }
            seen.push(format!("unknown keys before the budget ran out: {passed}"));
            seen.push(answer(candidate).await);
            seen
        }
    };
    let baseline = observe(never_issued.expose().to_owned()).await;
    // The budget did run out, so each answer below was given in both of its states.
    assert_eq!(baseline[..2], ["NotFound", "NotFound"]);
    assert!(!baseline[2].ends_with(": 10"), "{baseline:?}");
    for (what, key) in [("cached", &cached), ("uncached", &uncached)] {
        assert_eq!(
            observe(key.expose().to_owned()).await,
            baseline,
            "globex's {what} key must look never issued to acme"
        );
    }
}
