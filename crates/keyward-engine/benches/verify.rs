//! In-process verification cost: a cached VALID key, a MALFORMED string, a NOT_FOUND key
//! (answered by the negative cache), and SHA-256 of a key alone (the floor for VALID).
//!
//! Run with `cargo bench -p keyward-engine --bench verify`; figures go to BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keyward_core::key::{KeyHash, Prefix, generate_key};
use keyward_core::permission::PermissionQuery;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use keyward_engine::clock::SystemClock;
use keyward_engine::{CacheConfig, EngineConfig, Keyward, NewKey};
use keyward_store::SqliteStore;

/// Polls a future that must complete without waiting (a cache hit never awaits I/O), so the
/// figure is the cost of verification itself, not of an executor.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benchmarked path awaited: it was not served from the cache"),
    }
}

fn bench_verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (engine, key, unknown) = runtime.block_on(async {
        let store = SqliteStore::open(dir.path()).await.unwrap();
        // Entries older than the staleness backstop (30 s by default) are read from the store
        // again, which would await; the cases together run longer than that.
        let config = EngineConfig {
            cache: CacheConfig {
                max_staleness: Duration::from_secs(3600),
                ..CacheConfig::default()
            },
            ..EngineConfig::default()
        };
        let engine = Keyward::new(Arc::new(store), Arc::new(SystemClock), config);
        let root = engine.bootstrap().await.unwrap().unwrap();
        let principal = engine
            .authenticate(Some(root.key.expose()), "keys.create", None)
            .await
            .unwrap();
        let spec = NewKey {
            owner: "bench".into(),
            permissions: vec!["orders.read".into(), "orders.write".into()],
            ..NewKey::default()
        };
        let created = engine.create_key(&principal, spec).await.unwrap();
        let unknown =
            generate_key(&Prefix::new("kw_live").unwrap(), &mut rand::rngs::SysRng).unwrap();
        // Warm both caches.
        let none = VerifyRequest::default();
        assert_eq!(
            engine
                .verify(created.key.expose(), &none)
                .await
                .unwrap()
                .code,
            VerifyCode::Valid
        );
        assert_eq!(
            engine.verify(unknown.expose(), &none).await.unwrap().code,
            VerifyCode::NotFound
        );
        (engine, created.key, unknown)
    });
    let query = PermissionQuery::parse("orders.read").unwrap();
    let with_permission = VerifyRequest {
        query: Some(&query),
        ..VerifyRequest::default()
    };
    let malformed = format!("{}x", &key.expose()[..key.expose().len() - 1]);

    let mut group = c.benchmark_group("verify");
    group.bench_function("cached_valid", |b| {
        b.iter(|| {
            let v = ready(engine.verify(black_box(key.expose()), &with_permission)).unwrap();
            assert_eq!(v.code, VerifyCode::Valid);
        })
    });
    // As in a server: the Prometheus recorder is installed, so the per-verification counters,
    // the latency histogram and the key_id label cap do real work.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    group.bench_function("cached_valid_prometheus", |b| {
        b.iter(|| {
            metrics::with_local_recorder(&recorder, || {
                let v = ready(engine.verify(black_box(key.expose()), &with_permission)).unwrap();
                assert_eq!(v.code, VerifyCode::Valid);
            })
        })
    });
    group.bench_function("malformed", |b| {
        b.iter(|| {
            let v = ready(engine.verify(black_box(&malformed), &with_permission)).unwrap();
            assert_eq!(v.code, VerifyCode::Malformed);
        })
    });
    group.bench_function("not_found_cached", |b| {
        b.iter(|| {
            let v = ready(engine.verify(black_box(unknown.expose()), &with_permission)).unwrap();
            assert_eq!(v.code, VerifyCode::NotFound);
        })
    });
    group.bench_function("sha256_floor", |b| {
        b.iter(|| KeyHash::sha256_of(black_box(key.expose())))
    });
    group.finish();
    drop(engine);
    drop(runtime);
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
