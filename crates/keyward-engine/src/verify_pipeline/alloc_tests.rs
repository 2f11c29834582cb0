//! The verify path allocates nothing once warm: a cached VALID key (with a permission query and
//! a tenant), a MALFORMED string and a NOT_FOUND key answered by the negative cache, each
//! verified a hundred times under a counting allocator (`allocation-counter`, which counts
//! the allocations of the measuring thread only). A hundred warm-up verifications per case
//! first do what happens once per key, address or process: fill the caches, the usage and
//! last-used buffers' entries, the anomaly baseline and the address's failure counter, resolve
//! the metric handles, give the key its own `key_id` label (after `KEY_LABEL_PROMOTE_AFTER`
//! requests), and queue the failure-burst finding that a hundred MALFORMED answers to one
//! address set off.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use keyward_core::permission::PermissionQuery;
use keyward_core::verify::{VerifyCode, VerifyRequest};

use crate::NewKey;
use crate::test_fixture::{fixture, unknown_key};

/// Polls a verification that must complete without waiting (a cache hit awaits no I/O).
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the verification awaited: it was not served from the cache"),
    }
}

#[tokio::test]
async fn a_warm_verification_allocates_nothing() {
    let f = fixture().await;
    let spec = NewKey {
        owner: "billing".into(),
        tenant: Some("acme".into()),
        permissions: vec!["orders.read".into(), "orders.write".into()],
        ..NewKey::default()
    };
    let created = f.engine.create_key(&f.root, spec).await.unwrap();
    let key = created.key.expose();
    let unknown = unknown_key();
    let malformed = format!("{}x", &key[..key.len() - 1]);
    let query = PermissionQuery::parse("orders.read").unwrap();
    let request = VerifyRequest {
        query: Some(&query),
        ip: Some([192, 0, 2, 7].into()),
        ..VerifyRequest::default()
    };
    let cases = [
        (key, VerifyCode::Valid),
        (malformed.as_str(), VerifyCode::Malformed),
        (unknown.expose(), VerifyCode::NotFound),
    ];
    // Warm up: the first verifications fill the caches (and await the store).
    for (presented, expected) in cases {
        let v = f.engine.verify(presented, &request).await.unwrap();
        assert_eq!(v.code, expected);
    }
    let warm_up = 100.max(crate::telemetry::KEY_LABEL_PROMOTE_AFTER + 1);
    for (presented, expected) in cases {
        let warm = || ready(f.engine.verify(presented, &request)).unwrap();
        for _ in 0..warm_up {
            assert_eq!(warm().code, expected);
        }
        let info = allocation_counter::measure(|| {
            for _ in 0..100 {
                assert_eq!(warm().code, expected);
            }
        });
        assert_eq!(
            info.count_total, 0,
            "{expected:?}: {} allocations ({} bytes) in 100 verifications",
            info.count_total, info.bytes_total
        );
    }
}
