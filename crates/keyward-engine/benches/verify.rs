//! In-process verification cost, as in a server: the Prometheus recorder installed as the
//! process's recorder (with the server's histogram buckets), the server's log subscriber
//! (JSON at `info`, written nowhere), every hook of the verify path on.
//! Cases: a cached VALID key, a MALFORMED string (bad checksum), a NOT_FOUND key answered by
//! the negative cache, and SHA-256 of a key alone (the floor for VALID).
//!
//! - `cargo bench -p keyward-engine --bench verify`: criterion timings.
//! - `bench/callgrind-verify.sh`: the same binary with `--instructions CASE N` runs one case N
//!   times inside `measured`, which callgrind counts alone (instructions per verification).
//!
//! Figures go to BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::Criterion;
use keyward_core::key::{KeyHash, PlaintextKey, Prefix, generate_key};
use keyward_core::permission::PermissionQuery;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use keyward_engine::clock::SystemClock;
use keyward_engine::telemetry::{VERIFY_DURATION, buckets};
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

/// An engine over the real SQLite store with a warm cache: one key (two grants), and an
/// unknown key already answered NOT_FOUND once.
struct Bench {
    engine: Keyward,
    key: PlaintextKey,
    unknown: PlaintextKey,
    malformed: String,
    query: PermissionQuery,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// The cases, by the name `--instructions` and the reports use.
const CASES: [&str; 3] = ["cached_valid", "malformed", "not_found_cached"];

impl Bench {
    fn new() -> Self {
        install_recorder();
        let log = keyward_telemetry::subscriber(
            keyward_telemetry::Format::Json,
            tracing_subscriber::EnvFilter::new("info"),
            std::io::sink,
            false,
        );
        tracing::subscriber::set_global_default(log).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (engine, key, unknown) = runtime.block_on(async {
            let store = SqliteStore::open(dir.path()).await.unwrap();
            // Entries older than the staleness backstop (30 s by default) are read from the
            // store again, which would await; the cases together run longer than that.
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
            let v = engine.verify(created.key.expose(), &none).await.unwrap();
            assert_eq!(v.code, VerifyCode::Valid);
            let v = engine.verify(unknown.expose(), &none).await.unwrap();
            assert_eq!(v.code, VerifyCode::NotFound);
            (engine, created.key, unknown)
        });
        let malformed = format!("{}x", &key.expose()[..key.expose().len() - 1]);
        Self {
            engine,
            key,
            unknown,
            malformed,
            query: PermissionQuery::parse("orders.read").unwrap(),
            _runtime: runtime,
            _dir: dir,
        }
    }

    /// One verification of `case`, checked.
    fn run(&self, case: &str) {
        let request = VerifyRequest {
            query: Some(&self.query),
            ..VerifyRequest::default()
        };
        let (presented, expected) = match case {
            "cached_valid" => (self.key.expose(), VerifyCode::Valid),
            "malformed" => (self.malformed.as_str(), VerifyCode::Malformed),
            "not_found_cached" => (self.unknown.expose(), VerifyCode::NotFound),
            other => panic!("no case {other}; the cases are {CASES:?}"),
        };
        let v = ready(self.engine.verify(black_box(presented), &request)).unwrap();
        assert_eq!(v.code, expected);
    }
}

/// The Prometheus recorder as the server installs it (`keyward_http::prometheus`), with the
/// latency histogram's buckets, as the process's recorder.
fn install_recorder() {
    let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(VERIFY_DURATION.to_owned()),
            buckets(VERIFY_DURATION).unwrap(),
        )
        .unwrap();
    builder.install_recorder().unwrap();
}

/// The loop callgrind counts (`--toggle-collect`): kept out of line so that its name survives.
#[inline(never)]
fn measured(bench: &Bench, case: &str, n: u64) {
    for _ in 0..n {
        bench.run(case);
    }
}

fn criterion_cases(c: &mut Criterion, bench: &Bench) {
    let mut group = c.benchmark_group("verify");
    for case in CASES {
        group.bench_function(case, |b| b.iter(|| bench.run(case)));
    }
    group.bench_function("sha256_floor", |b| {
        b.iter(|| KeyHash::sha256_of(black_box(bench.key.expose())))
    });
    group.finish();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let bench = Bench::new();
    if let Some(at) = args.iter().position(|a| a == "--instructions") {
        let case = args.get(at + 1).expect("--instructions CASE N");
        let n: u64 = args.get(at + 2).and_then(|n| n.parse().ok()).expect("N");
        // Warm up outside the counted function, then run the counted loop.
        for _ in 0..100 {
            bench.run(case);
        }
        measured(&bench, case, n);
        return ExitCode::SUCCESS;
    }
    let mut criterion = Criterion::default().configure_from_args();
    criterion_cases(&mut criterion, &bench);
    criterion.final_summary();
    ExitCode::SUCCESS
}
