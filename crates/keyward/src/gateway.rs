//! `keyward gateway --config gateway.toml`: the reverse proxy that enforces keys in-process,
//! optionally serving the admin API from the same process (`admin_listen`), so both share one
//! verify cache and one set of limit counters.
//!
//! ```toml
//! listen = "127.0.0.1:8081"          # where clients connect
//! data_dir = "./keyward-data"         # the embedded store (do not run a second keyward on it:
//!                                     # limits and quota leases live in each process's memory)
//! # store = "postgres://keyward@db/keyward"  # or a shared PostgreSQL store instead of
//!                                     # data_dir (--store / KEYWARD_STORE override it)
//! admin_listen = "127.0.0.1:8080"     # optional: the admin API in this process too
//! bootstrap_key_file = "/run/keyward/root-key"  # optional: write the first root key here
//!                                     # (mode 0600, never overwritten), not to stdout
//! ratelimit_headers_on_success = true # RateLimit fields on admitted responses as well
//! quota_lease = 20                    # credits leased per store write (the crash overcharge bound)
//! threads = 2                         # gateway threads, one runtime each (default: one per core)
//! redis = "redis://127.0.0.1:6379"    # optional: share limits and quotas with other nodes
//! redis_namespace = "keyward"         # prefix of keyward's Redis keys (same on every node)
//! redis_fallback_nodes = 3            # optional: divide limits by this while Redis is down
//! redis_fallback_credits = 10         # credits per key on this node while Redis is down
//! stale_if_error_seconds = 300        # store down: keys cached this recently still verify
//! fail_open_unknown_keys = false      # store down: DANGEROUS, admit unknown well-formed keys
//! unknown_keys_per_minute = 60        # store reads for unknown keys per caller address (0: off)
//! redis_reconcile_ms = 100            # how often local_first limits reconcile with Redis
//! webhooks = ["http://127.0.0.1:9100/keyward"]  # signed event POSTs (secret: the
//!                                     # KEYWARD_WEBHOOK_SECRET environment variable)
//! webhook_max_attempts = 5            # attempts per event and endpoint
//! rotation_policies = ["acme/live=90", "*/*=365"]  # TENANT/ENVIRONMENT=DAYS, `*` for any
//! expiry_warning_days = 7             # notice for key_expiring_soon
//! on_anomaly = "alert"                # or "disable" (docs/anomaly-response.md)
//! on_anomaly_tenants = ["acme=disable"]  # per-tenant response, TENANT=alert|disable
//! auto_disable_max_per_hour = 10      # safety brake on automatic disables (per node)
//! anomaly_spike_factor = 5.0          # rate this many times the baseline is a spike
//! anomaly_min_rate_per_minute = 60    # rates below this are never a spike
//! anomaly_new_ips_per_minute = 20     # new caller addresses per minute that are a burst
//! anomaly_failures_per_minute = 30    # failed verifications per minute that are a burst
//! # Each anomaly setting given as a flag or environment variable wins over the file's.
//! otlp_endpoint = "http://127.0.0.1:4317"  # optional: export traces over OTLP/gRPC
//! otlp_service_name = "keyward-edge"  # service.name of exported traces (default "keyward")
//! # Connections of the gateway and admin listeners (docs/connections.md):
//! header_read_timeout_ms = 10000      # a request head must arrive within this
//! idle_timeout_ms = 60000             # no byte either way for this long closes a connection
//! body_read_timeout_ms = 30000        # a request body must arrive within this (else 408)
//! max_connections = 10000             # per listener; more are closed on arrival
//! trusted_proxies = ["10.0.0.0/8"]    # peers whose X-Forwarded-For names the client
//! proxy_protocol = false              # gateway listener: PROXY v1/v2 from trusted proxies
//! metrics_hosts = ["keyward-1.internal"]  # admin listener: names /metrics answers for
//!
//! [[route]]
//! prefix = "/orders"                  # path prefix, matched segment by segment on the
//!                                     # normalised path, ASCII case-insensitively
//! upstream = "http://127.0.0.1:9000"  # plain HTTP upstream
//! permissions = "orders.read"         # permission query the route requires (none: any
//!                                     # valid key of the allowed tenant/environment)
//! tenant = "acme"                     # optional: only keys of this tenant
//! environment = "live"                # optional: only keys of this environment
//! cost = 1                            # units per request (default 1)
//! allow_query_key = false             # accept ?api_key= (logged as a warning)
//! allow_path_params = false           # accept ';' path parameters (default: 400)
//! case_sensitive = false              # match the prefix case-sensitively (only for an
//!                                     # upstream known to be case-sensitive)
//! timeout_seconds = 30                # upstream response-header timeout (default 30)
//! host = "orders.internal"            # Host sent upstream (default: the upstream's host:port)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::anomaly::AnomalyArgs;
use crate::serve::{join_per_core, serve_per_core, stopped};
use anyhow::{Context, bail};
use keyward_engine::clock::SystemClock;
use keyward_engine::{EngineConfig, Keyward};
use keyward_http::AppState;
use keyward_http::gateway::serve_gateway;
use keyward_http::listener::Connections;

mod config;

pub use config::{Loaded, load, parse_config};

pub async fn run(
    config_path: &Path,
    store_url: Option<&str>,
    redis: Option<keyward_engine::RedisConfig>,
    anomaly: AnomalyArgs,
    anomaly_given: impl Fn(&str) -> bool,
    traces: &crate::cli::server::TraceArgs,
) -> anyhow::Result<()> {
    let loaded = load(config_path)?;
    let traces = crate::serve::init_telemetry(
        crate::cli::server::LogFormat::Text,
        traces
            .config(
                loaded.otlp_endpoint.as_deref(),
                loaded.otlp_service_name.as_deref(),
            )
            .as_ref(),
    )?;
    let anomaly = anomaly
        .overlay(loaded.anomaly.clone(), anomaly_given)
        .config();
    let result = serve(config_path, loaded, store_url, redis, anomaly).await;
    // Also after a failed start: the spans of what did happen are still sent.
    crate::serve::shutdown_traces(traces).await;
    result
}

async fn serve(
    config_path: &Path,
    mut loaded: Loaded,
    store_url: Option<&str>,
    redis: Option<keyward_engine::RedisConfig>,
    anomaly: keyward_engine::anomaly::AnomalyConfig,
) -> anyhow::Result<()> {
    if redis.is_some() {
        loaded.redis = redis;
    }
    // --store (or KEYWARD_STORE) wins over the file's store and data_dir.
    let store_url = store_url.or(loaded.store.as_deref());
    let data_dir = match (&loaded.data_dir, store_url) {
        (_, Some(_)) => PathBuf::new(),
        (Some(dir), None) => dir.clone(),
        (None, None) => bail!(
            "{}: set data_dir (the embedded store) or store (a postgres:// URL), or pass --store",
            config_path.display()
        ),
    };
    // Settings are checked before the store is touched or a root key minted.
    let secret = std::env::var("KEYWARD_WEBHOOK_SECRET")
        .ok()
        .and_then(|s| s.parse::<crate::notify::WebhookSecret>().ok());
    let notify = crate::notify::Settings {
        webhooks: crate::notify::webhook_config(
            loaded.webhooks.clone(),
            secret.as_ref(),
            loaded.webhook_max_attempts,
        )?,
        rotation: loaded.rotation.clone(),
    };
    let store = crate::store::Store::open(
        store_url,
        &data_dir,
        keyward_store::PostgresOptions::default(),
    )
    .await?;
    let config = EngineConfig {
        quota_lease: loaded.quota_lease,
        cache: keyward_engine::CacheConfig {
            stale_if_error: loaded.stale_if_error,
            ..keyward_engine::CacheConfig::default()
        },
        fail_open_unknown_keys: loaded.fail_open_unknown_keys,
        unknown_key_budget: crate::serve::unknown_key_budget(loaded.unknown_keys_per_minute),
    };
    // Before the engine: its verify path resolves its metric handles against the recorder
    // installed at its first verification (keyward_engine::telemetry).
    keyward_http::prometheus::install();
    let engine = Arc::new(crate::serve::with_redis(
        Keyward::new(store.shared(), Arc::new(SystemClock), config).with_anomaly_detection(anomaly),
        loaded.redis.clone(),
    )?);
    crate::bootstrap::announce(&engine, loaded.bootstrap_key_file.as_deref()).await?;
    let _webhooks = crate::notify::start(&engine, notify);
    let signalled = crate::serve::shutdown_signal();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin = match loaded.admin_listen {
        Some(addr) => {
            let admin_listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            println!(
                "keyward: admin API listening on http://{}",
                admin_listener.local_addr()?
            );
            let state = AppState {
                engine: Arc::clone(&engine),
            };
            Some(tokio::spawn(keyward_http::serve(
                admin_listener,
                state,
                Connections::new("admin", loaded.admin_listener.clone())?,
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    let upkeep = crate::serve::spawn_upkeep(Arc::clone(&engine), Duration::from_secs(5));
    let (gateway_engine, config) = (Arc::clone(&engine), loaded.gateway.clone());
    // One set of connection slots for every gateway thread: the cap is per listener.
    let connections = Connections::new("gateway", loaded.gateway_listener.clone())?;
    let (bound, gateway) = serve_per_core(
        loaded.listen,
        loaded.threads,
        "gateway",
        &stop_rx,
        move |listener, stop| {
            let (engine, config) = (Arc::clone(&gateway_engine), config.clone());
            let connections = connections.clone();
            async move {
                serve_gateway(listener, engine, config, connections, stopped(stop))
                    .await
                    .context("serving the gateway")
            }
        },
    )?;
    println!(
        "keyward: gateway listening on http://{bound} ({} threads)",
        loaded.threads
    );
    signalled.await;
    let _ = stop_tx.send(true);
    let served = async {
        join_per_core(gateway).await?;
        if let Some(admin) = admin {
            admin
                .await
                .context("admin task")?
                .context("serving the admin API")?;
        }
        anyhow::Ok(())
    }
    .await;
    // Even after a serving error, the buffered counts are written before the process exits.
    crate::serve::stop_upkeep(upkeep).await;
    crate::serve::shutdown_engine(&engine).await;
    store.close().await;
    served
}
