//! Arguments of the commands that run a node (`serve`, `gateway`, `migrate`) and of the
//! settings groups both server commands flatten in: Redis-shared limits and trace export.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::anomaly::AnomalyArgs;
use crate::connections::ListenerArgs;
use crate::notify::NotifyArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KEYWARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of the embedded store (created if missing); not used with --store.
    #[arg(long, env = "KEYWARD_DATA_DIR", default_value = "./keyward-data")]
    pub data_dir: PathBuf,
    /// Use a shared PostgreSQL store instead of the embedded one, so several nodes can serve
    /// the same keys: postgres://user:password@host:port/db[?schema=NAME].
    #[arg(long, env = "KEYWARD_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// PostgreSQL: most pooled connections (the change feed uses one more).
    #[arg(long, env = "KEYWARD_STORE_POOL_SIZE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub store_pool_size: u32,
    /// PostgreSQL: how long a call waits for a connection (pooled or new) before it fails
    /// with 503 store_unavailable (milliseconds).
    #[arg(long, env = "KEYWARD_STORE_ACQUIRE_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub store_acquire_timeout_ms: u64,
    /// PostgreSQL: server-side limit on one statement (statement_timeout, milliseconds).
    #[arg(long, env = "KEYWARD_STORE_STATEMENT_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub store_statement_timeout_ms: u64,
    /// Log line format (logs go to standard error).
    #[arg(long, env = "KEYWARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds between writes of buffered last_used_at times and usage counts (see GET /v1/usage).
    #[arg(long, env = "KEYWARD_LAST_USED_FLUSH_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub last_used_flush_seconds: u64,
    /// Quota credits leased from the store per write: larger means fewer writes on busy keys,
    /// and is also the most a crash can overcharge a key by.
    #[arg(long, env = "KEYWARD_QUOTA_LEASE", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub quota_lease: u64,
    /// Also serve Envoy's ext_authz gRPC Authorization/Check on this address.
    #[arg(long, env = "KEYWARD_EXT_AUTHZ_LISTEN")]
    pub ext_authz_listen: Option<SocketAddr>,
    /// Longest time a cached key is served without re-reading the store (seconds).
    #[arg(long, env = "KEYWARD_CACHE_MAX_STALENESS_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub cache_max_staleness_seconds: u64,
    /// While the store cannot be reached, keys seen within this many seconds are still
    /// answered from the cache (stale-if-error); unknown keys fail closed.
    #[arg(long, env = "KEYWARD_STALE_IF_ERROR_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub stale_if_error_seconds: u64,
    /// DANGEROUS: while the store cannot be reached, admit any well-formed key this node does
    /// not know, with no identity, permissions, limits or quota.
    #[arg(long, env = "KEYWARD_FAIL_OPEN_UNKNOWN_KEYS")]
    pub fail_open_unknown_keys: bool,
    /// Write the first root key of an empty store to this file (created with mode 0600, never
    /// overwritten) instead of standard output, which service managers ship to log stores.
    #[arg(long, env = "KEYWARD_BOOTSTRAP_KEY_FILE")]
    pub bootstrap_key_file: Option<PathBuf>,
    /// Store reads for unknown keys each caller address may cause per minute (also the burst);
    /// beyond it, keys not in the cache get 429 too_many_unknown_keys without a store read.
    /// 0 turns the budget off.
    #[arg(long, env = "KEYWARD_UNKNOWN_KEYS_PER_MINUTE", default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub unknown_keys_per_minute: u32,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub anomaly: AnomalyArgs,
    #[command(flatten)]
    pub notify: NotifyArgs,
    #[command(flatten)]
    pub traces: TraceArgs,
    #[command(flatten)]
    pub listener: ListenerArgs,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The gateway's TOML configuration (listen, data_dir or store, [[route]]s).
    #[arg(long, env = "KEYWARD_GATEWAY_CONFIG")]
    pub config: PathBuf,
    /// The shared PostgreSQL store (postgres://user:password@host:port/db[?schema=NAME]);
    /// overrides the config's `store` and `data_dir`.
    #[arg(long, env = "KEYWARD_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Overrides the config file's Redis settings when `--redis` (or KEYWARD_REDIS) is given.
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub anomaly: AnomalyArgs,
    /// Overrides the config file's `otlp_endpoint` and `otlp_service_name` when given.
    #[command(flatten)]
    pub traces: TraceArgs,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The PostgreSQL store to migrate (postgres://user:password@host:port/db[?schema=NAME]).
    #[arg(long, env = "KEYWARD_STORE", hide_env_values = true)]
    pub store: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Shared limits and quotas (every node with the same Redis and namespace shares them).
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Share rate limits and quotas with other nodes through this Redis (redis://host:port/db).
    #[arg(long, env = "KEYWARD_REDIS")]
    pub redis: Option<String>,
    /// Prefix of every Redis key keyward writes; nodes that share limits use the same one.
    #[arg(long, env = "KEYWARD_REDIS_NAMESPACE", default_value = "keyward")]
    pub redis_namespace: String,
    /// Bound on each Redis call (milliseconds); past it the node decides locally.
    #[arg(long, env = "KEYWARD_REDIS_TIMEOUT_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub redis_timeout_ms: u64,
    /// While Redis is down, divide each limit by this many nodes instead of the live-node count
    /// of the last heartbeat.
    #[arg(long, env = "KEYWARD_REDIS_FALLBACK_NODES", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub redis_fallback_nodes: Option<u64>,
    /// While Redis is down, credits each key may spend on this node (settled with Redis later).
    #[arg(long, env = "KEYWARD_REDIS_FALLBACK_CREDITS", default_value_t = 10)]
    pub redis_fallback_credits: u64,
    /// How often limits with mode=local_first are reconciled with Redis (milliseconds); their
    /// overshoot bound grows with it.
    #[arg(long, env = "KEYWARD_REDIS_RECONCILE_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub redis_reconcile_ms: u64,
}

impl RedisArgs {
    /// The engine's Redis settings, if a Redis is configured.
    pub fn config(&self) -> Option<keyward_engine::RedisConfig> {
        let url = self.redis.as_ref()?;
        Some(keyward_engine::RedisConfig {
            namespace: self.redis_namespace.clone(),
            timeout: std::time::Duration::from_millis(self.redis_timeout_ms),
            fallback_nodes: self.redis_fallback_nodes,
            fallback_credits: self.redis_fallback_credits,
            reconcile_interval: std::time::Duration::from_millis(self.redis_reconcile_ms),
            ..keyward_engine::RedisConfig::new(url.clone())
        })
    }
}

/// OpenTelemetry traces (see docs/observability.md, "Traces"): off unless an endpoint is given.
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Export traces over OTLP/gRPC to this collector (http://host:port, for example
    /// http://127.0.0.1:4317). Without it no spans are recorded at all.
    #[arg(long, env = "KEYWARD_OTLP_ENDPOINT", value_name = "URL", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// The service.name resource attribute of exported traces (default: keyward).
    #[arg(long, env = "KEYWARD_OTLP_SERVICE_NAME", value_name = "NAME", value_parser = parse_service_name)]
    pub otlp_service_name: Option<String>,
}

impl TraceArgs {
    /// The trace export settings, if an endpoint is configured (`file` holds the gateway
    /// config file's, which the flags override).
    pub fn config(
        &self,
        file_endpoint: Option<&str>,
        file_service_name: Option<&str>,
    ) -> Option<keyward_telemetry::traces::OtlpConfig> {
        let endpoint = self.otlp_endpoint.as_deref().or(file_endpoint)?;
        Some(keyward_telemetry::traces::OtlpConfig {
            endpoint: endpoint.to_owned(),
            service_name: self
                .otlp_service_name
                .as_deref()
                .or(file_service_name)
                .unwrap_or(keyward_telemetry::traces::DEFAULT_SERVICE_NAME)
                .to_owned(),
        })
    }
}

/// Checks an OTLP/gRPC endpoint: `http://host[:port]`, with no path, query or credentials.
pub fn parse_otlp_endpoint(text: &str) -> Result<String, String> {
    const EXPECTED: &str = "expected an OTLP/gRPC endpoint such as http://127.0.0.1:4317";
    let uri: hyper::Uri = text
        .parse()
        .map_err(|e| format!("not a URL ({e}); {EXPECTED}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "https is not supported (keyward is built without TLS for OTLP): send to a \
                 collector on this host or a trusted network over http://; {EXPECTED}"
            ));
        }
        _ => return Err(EXPECTED.to_owned()),
    }
    let Some(authority) = uri.authority() else {
        return Err(EXPECTED.to_owned());
    };
    if authority.host().is_empty() {
        return Err(EXPECTED.to_owned());
    }
    if authority.as_str().contains('@') {
        return Err(format!(
            "credentials in the URL are not supported (pass them as headers in \
             OTEL_EXPORTER_OTLP_HEADERS); {EXPECTED}"
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "an OTLP/gRPC endpoint has no path or query; {EXPECTED}"
        ));
    }
    Ok(text.to_owned())
}

/// A service name: not empty, at most 255 characters.
pub fn parse_service_name(text: &str) -> Result<String, String> {
    if text.trim().is_empty() || text.len() > 255 {
        return Err("expected a name of 1 to 255 characters".to_owned());
    }
    Ok(text.to_owned())
}
