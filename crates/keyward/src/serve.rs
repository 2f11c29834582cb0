//! `keyward serve`: open the store, bootstrap the first root key, serve until a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyward_engine::clock::SystemClock;
use keyward_engine::{CacheConfig, EngineConfig, Keyward};
use keyward_http::AppState;
use keyward_telemetry::traces::{OtlpConfig, Traces};
use tokio::net::TcpListener;

use crate::cli::server::{LogFormat, ServeArgs};

/// Installs the process's logging and, when `traces` is configured, the OpenTelemetry trace
/// export: every log line and every exported span is redacted of key-shaped text on its way
/// out, and panics are logged through the same path (see `keyward-telemetry`). Without
/// `traces` there is no exporter and no OpenTelemetry layer at all.
///
/// Must run inside the Tokio runtime (the OTLP exporter's gRPC channel lives there). The
/// returned provider must go to [`shutdown_traces`] before the process exits.
pub fn init_telemetry(
    format: LogFormat,
    traces: Option<&OtlpConfig>,
) -> anyhow::Result<Option<Traces>> {
    let built = traces.map(Traces::otlp).transpose();
    // Logging comes first in any case, so the error below (and all else) is logged.
    keyward_telemetry::init(
        match format {
            LogFormat::Text => keyward_telemetry::Format::Text,
            LogFormat::Json => keyward_telemetry::Format::Json,
        },
        built.as_ref().ok().and_then(Option::as_ref),
    );
    let built = built.context("configuring trace export (--otlp-endpoint)")?;
    if let Some(config) = traces {
        tracing::info!(
            endpoint = %config.endpoint,
            service_name = %config.service_name,
            "exporting traces over OTLP/gRPC"
        );
    }
    Ok(built)
}

/// Exports the spans still queued and stops the trace export (a no-op without traces). Runs
/// the blocking shutdown on a blocking thread: the export it waits for needs the runtime's
/// worker threads to drive its gRPC channel.
pub async fn shutdown_traces(traces: Option<Traces>) {
    let Some(traces) = traces else { return };
    match tokio::task::spawn_blocking(move || traces.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "exporting the last traces at shutdown failed"),
        Err(e) => tracing::warn!(error = %e, "shutting down the trace export failed"),
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: call it before announcing the listener, so a SIGTERM sent right
/// after the "listening on" line still shuts down gracefully instead of killing the process.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        match signals {
            (Ok(mut interrupt), Ok(mut term)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let traces = init_telemetry(args.log_format, args.traces.config(None, None).as_ref())?;
    let result = serve(args).await;
    // Also after a failed start: the spans of what did happen are still sent.
    shutdown_traces(traces).await;
    result
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Checked before anything starts: a bad listener setting is a usage error.
    let connections = args.listener.connections("admin")?;
    // Settings are checked before the store is touched or a root key minted.
    let notify = args.notify.settings()?;
    let store = crate::store::Store::open(
        args.store.as_deref(),
        &args.data_dir,
        keyward_store::PostgresOptions {
            max_connections: args.store_pool_size,
            acquire_timeout: Duration::from_millis(args.store_acquire_timeout_ms),
            statement_timeout: Duration::from_millis(args.store_statement_timeout_ms),
            ..keyward_store::PostgresOptions::default()
        },
    )
    .await?;
    let config = EngineConfig {
        cache: CacheConfig {
            max_staleness: Duration::from_secs(args.cache_max_staleness_seconds),
            stale_if_error: Duration::from_secs(args.stale_if_error_seconds),
            ..CacheConfig::default()
        },
        quota_lease: args.quota_lease,
        fail_open_unknown_keys: args.fail_open_unknown_keys,
        unknown_key_budget: unknown_key_budget(args.unknown_keys_per_minute),
    };
    // Before the engine: its verify path resolves its metric handles against the recorder
    // installed at its first verification (keyward_engine::telemetry).
    keyward_http::prometheus::install();
    let engine = Arc::new(with_redis(
        Keyward::new(store.shared(), Arc::new(SystemClock), config)
            .with_anomaly_detection(args.anomaly.config()),
        args.redis.config(),
    )?);
    crate::bootstrap::announce(&engine, args.bootstrap_key_file.as_deref()).await?;
    let _webhooks = crate::notify::start(&engine, notify);
    let flusher = spawn_upkeep(
        Arc::clone(&engine),
        Duration::from_secs(args.last_used_flush_seconds),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ext_authz = match args.ext_authz_listen {
        Some(addr) => {
            let grpc = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            println!(
                "keyward: ext_authz gRPC listening on {}",
                grpc.local_addr().context("reading the bound address")?
            );
            let engine = Arc::clone(&engine);
            Some(tokio::spawn(keyward_http::ext_authz::serve_ext_authz(
                grpc,
                engine,
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    let state = AppState {
        engine: Arc::clone(&engine),
    };
    // The admin API stays on the work-stealing runtime: its requests vary in cost, and a
    // per-core split measured a worse tail (one thread can get most connections).
    let signalled = shutdown_signal();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let http = tokio::spawn(keyward_http::serve(
        listener,
        state,
        connections,
        stopped(stop_rx.clone()),
    ));
    let location = store.describe(&args.data_dir);
    println!("keyward: listening on http://{local} ({location})");
    tracing::info!(%local, %location, "keyward listening");
    signalled.await;
    let _ = stop_tx.send(true);
    let served = async {
        http.await.context("HTTP task")?.context("serving HTTP")?;
        if let Some(grpc) = ext_authz {
            grpc.await
                .context("ext_authz task")?
                .context("serving ext_authz")?;
        }
        anyhow::Ok(())
    }
    .await;
    // Even after a serving error, the buffered counts are written before the process exits.
    stop_upkeep(flusher).await;
    shutdown_engine(&engine).await;
    store.close().await;
    served
}

/// Stops the upkeep task and waits until it has stopped, so the final flushes below never
/// overlap a periodic one (the engine's flushes put back a batch whose write was cancelled).
pub async fn stop_upkeep(upkeep: tokio::task::JoinHandle<()>) {
    upkeep.abort();
    let _ = upkeep.await;
}

/// The per-address budget of unknown-key store reads for `--unknown-keys-per-minute` (or the
/// gateway's `unknown_keys_per_minute`): that many a minute, and as many at once.
pub fn unknown_key_budget(per_minute: u32) -> keyward_engine::UnknownKeyBudget {
    keyward_engine::UnknownKeyBudget {
        per_minute,
        burst: per_minute,
        ..keyward_engine::UnknownKeyBudget::default()
    }
}

/// Adds shared limits and quotas on Redis to an engine, if configured.
pub fn with_redis(
    engine: Keyward,
    redis: Option<keyward_engine::RedisConfig>,
) -> anyhow::Result<Keyward> {
    match redis {
        None => Ok(engine),
        Some(config) => {
            let namespace = config.namespace.clone();
            let engine = engine
                .with_redis(config)
                .context("configuring Redis (--redis)")?;
            tracing::info!(%namespace, "limits and quotas are shared through Redis");
            Ok(engine)
        }
    }
}

/// Runs the background work of a node until aborted: the periodic flush and sweep (and, with
/// Redis, the heartbeat and the write-behind of spent credits), and the follower of the store's
/// change feed (a no-op on a store with no other writers).
/// How often keys are checked against the rotation policy and for coming expiry.
pub const ROTATION_CHECK_INTERVAL: Duration = Duration::from_secs(60);

pub fn spawn_upkeep(engine: Arc<Keyward>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let follower = Arc::clone(&engine).follow_changes();
        let periodic = async {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = engine.flush_last_used().await {
                    tracing::warn!(error = %e, "writing last_used_at failed; will retry");
                }
                if let Err(e) = engine.flush_usage().await {
                    tracing::warn!(error = %e, "writing usage counts failed; will retry");
                }
                engine.maintain();
                if let Err(e) = engine.sync_shared().await {
                    tracing::warn!(error = %e, "writing spent credits behind to the store failed; will retry");
                }
            }
        };
        // local_first limits are reconciled on their own, shorter tick, so a slow store write
        // on the upkeep tick never delays it; without Redis it returns at once.
        let reconcile = async {
            let Some(every) = engine.reconcile_interval() else {
                return;
            };
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Never fails: a Redis failure is logged by the engine and retried next tick.
                engine.reconcile_local_first().await;
            }
        };
        // Rotation and expiry are checked on a slower tick of their own: the check reads every
        // active key, and its announcements are once per key anyway.
        let rotation = async {
            let mut tick = tokio::time::interval(ROTATION_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = engine.check_rotation().await {
                    tracing::warn!(error = %e, "checking rotation policy and expiry failed; will retry");
                }
            }
        };
        // Anomalies are responded to here, off the verify path (see keyward_engine::anomaly).
        let anomalies = Arc::clone(&engine).respond_to_anomalies();
        // The follower returns at once when there is no feed; the periodic work never ends.
        tokio::join!(follower, periodic, reconcile, rotation, anomalies);
    })
}

/// Flushes `last_used_at` and usage counts, and returns unspent quota leases before the process exits.
pub async fn shutdown_engine(engine: &Keyward) {
    if let Err(e) = engine.flush_last_used().await {
        tracing::warn!(error = %e, "writing last_used_at at shutdown failed");
    }
    if let Err(e) = engine.flush_usage().await {
        tracing::warn!(error = %e, "writing usage counts at shutdown failed");
    }
    if let Err(e) = engine.release_leases().await {
        tracing::warn!(error = %e, "returning unspent quota credits at shutdown failed");
    }
}

/// The stop signal a per-core server waits on.
pub type Stop = tokio::sync::watch::Receiver<bool>;

/// Resolves when `stop` turns true (or its sender is gone).
pub async fn stopped(mut stop: Stop) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Serves on `addr` thread-per-core: each of `threads` threads runs its own single-threaded
/// runtime with its own `SO_REUSEPORT` listener on the same address, so a request never hops
/// between threads (on the 2-core CI machine a profile of the multi-threaded runtime showed
/// about a fifth of the CPU in cross-thread wake-ups). Shared state (the engine) is `Send +
/// Sync`. Returns the bound address (port 0 resolved) once every thread listens.
///
/// `SO_REUSEPORT` lets another process of the same user bind the same port too; run one
/// keyward process per address.
pub fn serve_per_core<F, Fut>(
    addr: std::net::SocketAddr,
    threads: usize,
    name: &str,
    stop: &Stop,
    serve: F,
) -> anyhow::Result<(
    std::net::SocketAddr,
    Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
)>
where
    F: Fn(TcpListener, Stop) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + 'static,
{
    let mut addr = addr;
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads.max(1) {
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (serve, stop) = (serve.clone(), stop.clone());
        let worker = std::thread::Builder::new()
            .name(format!("keyward-{name}-{i}"))
            .spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let socket = if addr.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.set_reuseport(true)?;
                    socket.set_reuseaddr(true)?;
                    socket
                        .bind(addr)
                        .with_context(|| format!("cannot listen on {addr}"))?;
                    let listener = socket
                        .listen(1024)
                        .with_context(|| format!("cannot listen on {addr}"))?;
                    let _ = bound_tx.send(listener.local_addr()?);
                    serve(listener, stop).await
                })
            })
            .with_context(|| format!("starting a {name} thread"))?;
        match bound_rx.recv() {
            Ok(bound) => addr = bound,
            // The thread ended before binding: its result says why.
            Err(_) => {
                return Err(match worker.join() {
                    Ok(Err(e)) => e,
                    _ => anyhow::anyhow!("a {name} thread failed to start"),
                });
            }
        }
        workers.push(worker);
    }
    Ok((addr, workers))
}

/// Waits for per-core server threads to finish (after the stop signal).
pub async fn join_per_core(
    workers: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<()> {
    for worker in workers {
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .context("joining a server thread")?
            .map_err(|_| anyhow::anyhow!("a server thread panicked"))??;
    }
    Ok(())
}
