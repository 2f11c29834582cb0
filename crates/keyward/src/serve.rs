//! `keyward serve`: open the store, bootstrap the first root key, serve until a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyward_engine::clock::SystemClock;
use keyward_engine::{CacheConfig, EngineConfig, Keyward};
use keyward_http::AppState;
use keyward_store::SqliteStore;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::cli::{LogFormat, ServeArgs};

pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("KEYWARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down");
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let store = SqliteStore::open(&args.data_dir).await?;
    let config = EngineConfig {
        cache: CacheConfig {
            max_staleness: Duration::from_secs(args.cache_max_staleness_seconds),
            ..CacheConfig::default()
        },
        ..EngineConfig::default()
    };
    let engine = Arc::new(Keyward::new(
        Arc::new(store.clone()),
        Arc::new(SystemClock),
        config,
    ));
    if let Some(root) = engine
        .bootstrap()
        .await
        .context("creating the first root key")?
    {
        // Printed to stdout, never logged: this is the only time the root key exists in clear.
        println!(
            "keyward: created the first root key ({}), with all permissions:",
            root.record.key_id
        );
        println!();
        println!("    {}", root.key.expose());
        println!();
        println!("This root key will not be shown again. Store it now, for example:");
        println!("    export KEYWARD_ROOT_KEY=<the key above>");
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    println!(
        "keyward: listening on http://{local} (data in {})",
        args.data_dir.display()
    );
    tracing::info!(%local, data_dir = %args.data_dir.display(), "keyward listening");

    let flusher = spawn_upkeep(
        Arc::clone(&engine),
        Duration::from_secs(args.last_used_flush_seconds),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
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
    let http = tokio::spawn(keyward_http::serve(listener, state, stopped(stop_rx)));
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    http.await.context("HTTP task")?.context("serving HTTP")?;
    if let Some(grpc) = ext_authz {
        grpc.await
            .context("ext_authz task")?
            .context("serving ext_authz")?;
    }
    flusher.abort();
    shutdown_engine(&engine).await;
    store.close().await;
    Ok(())
}

/// Writes buffered `last_used_at` times and sweeps idle limiter state every `every`.
pub fn spawn_upkeep(engine: Arc<Keyward>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = engine.flush_last_used().await {
                tracing::warn!(error = %e, "writing last_used_at failed; will retry");
            }
            engine.maintain();
        }
    })
}

/// Flushes `last_used_at` and returns unspent quota leases before the process exits.
pub async fn shutdown_engine(engine: &Keyward) {
    if let Err(e) = engine.flush_last_used().await {
        tracing::warn!(error = %e, "writing last_used_at at shutdown failed");
    }
    if let Err(e) = engine.release_leases().await {
        tracing::warn!(error = %e, "returning unspent quota credits at shutdown failed");
    }
}
