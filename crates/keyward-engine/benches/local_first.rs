//! Verify latency with Redis, `exact` against `local_first`, side by side in one run: the same
//! engine, the same warm cache, one key per mode with a limit it never reaches. An exact limit
//! costs one Redis round trip per verification; a local-first limit none.
//!
//! Needs a Redis: `KEYWARD_TEST_REDIS_URL=redis://127.0.0.1:6379 cargo bench -p keyward-engine
//! --bench local_first`. Without the variable it says it was skipped and measures nothing.
//! Figures go to BENCHMARKS.md ("local_first vs exact").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keyward_core::verify::{VerifyCode, VerifyRequest};
use keyward_engine::clock::SystemClock;
use keyward_engine::{EnforcementSource, EngineConfig, Keyward, LimitSpec, NewKey, RedisConfig};
use keyward_store::SqliteStore;

fn bench_modes(c: &mut Criterion) {
    let Ok(url) = std::env::var("KEYWARD_TEST_REDIS_URL") else {
        eprintln!(
            "SKIPPED local_first bench: set KEYWARD_TEST_REDIS_URL=redis://127.0.0.1:6379 to run it"
        );
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!(
        "kwbench:{}",
        keyward_core::key::generate_key_id(&mut rand::rngs::SysRng).unwrap()
    );
    let (engine, keys) = runtime.block_on(async {
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let engine = Keyward::new(
            Arc::new(store),
            Arc::new(SystemClock),
            EngineConfig::default(),
        )
        .with_redis(RedisConfig {
            namespace,
            ..RedisConfig::new(url)
        })
        .unwrap();
        let root = engine.bootstrap().await.unwrap().unwrap();
        let principal = engine
            .authenticate(Some(root.key.expose()), "keys.create", None)
            .await
            .unwrap();
        let mut keys = Vec::new();
        for (mode, source) in [
            ("exact", EnforcementSource::Redis),
            ("local_first", EnforcementSource::LocalFirst),
        ] {
            let spec = NewKey {
                owner: "bench".into(),
                limits: vec![LimitSpec {
                    name: "per_second".into(),
                    limit: 1_000_000_000,
                    period_seconds: 1,
                    burst: None,
                    scope: None,
                    mode: Some(mode.into()),
                }],
                ..NewKey::default()
            };
            let created = engine.create_key(&principal, spec).await.unwrap();
            let v = engine
                .verify(created.key.expose(), &VerifyRequest::default())
                .await
                .unwrap();
            assert_eq!(v.code, VerifyCode::Valid);
            assert_eq!(v.enforcement.unwrap().source, source);
            keys.push((mode, created.key));
        }
        (engine, keys)
    });
    let mut group = c.benchmark_group("verify_with_redis");
    group.measurement_time(Duration::from_secs(5));
    for (mode, key) in &keys {
        let none = VerifyRequest::default();
        group.bench_function(*mode, |b| {
            b.iter(|| {
                let v = runtime
                    .block_on(engine.verify(black_box(key.expose()), &none))
                    .unwrap();
                assert_eq!(v.code, VerifyCode::Valid);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_modes);
criterion_main!(benches);
