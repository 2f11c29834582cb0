//! Command-line definitions. The `--help` text generated from here is committed as
//! `docs/cli-help.txt` and checked by a test.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// keyward: a self-hosted API key service.
#[derive(Debug, Parser)]
#[command(name = "keyward", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // Parsed once per process; boxing buys nothing.
pub enum Command {
    /// Run the keyward server.
    Serve(ServeArgs),
    /// Run the gateway: a reverse proxy that enforces keys (see --config).
    Gateway(GatewayArgs),
    /// Create or upgrade the PostgreSQL schema, then exit (serve and gateway also do this on
    /// start).
    Migrate(MigrateArgs),
    /// Manage API keys on a running server.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify an API key (exit 0 if VALID, 3 if not).
    Verify(VerifyArgs),
    /// Read and check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage root keys (credentials of the admin API).
    #[command(subcommand)]
    Root(RootCommand),
    /// Manage plans (templates of limits, quota and permissions).
    #[command(subcommand)]
    Plans(PlansCommand),
    /// Read usage for billing (verifications and credits per key, hour or day).
    #[command(subcommand)]
    Usage(UsageCommand),
    /// Replay a leaked key's traffic in-process (simulated time, no network) and show how
    /// fast anomaly detection catches it.
    SimulateLeak(SimulateLeakArgs),
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

/// OpenTelemetry traces (see README "Traces"): off unless an endpoint is given.
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

/// Webhooks and rotation policy (see README "Webhooks" and "Rotation policy").
#[derive(Debug, Clone, Args)]
pub struct NotifyArgs {
    /// POST signed JSON events (key_revoked, key_expiring_soon, rotation_overdue, anomaly,
    /// key_disabled) to this http:// URL; repeat for several endpoints.
    #[arg(long = "webhook", env = "KEYWARD_WEBHOOKS", value_delimiter = ',')]
    pub webhooks: Vec<String>,
    /// Secret for the HMAC-SHA256 Keyward-Signature header (prefer the environment variable:
    /// command lines are visible to other users).
    #[arg(long, env = "KEYWARD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<crate::notify::WebhookSecret>,
    /// Attempts per event and endpoint before it is given up (backoff 1 s, doubling, at most 60 s).
    #[arg(long, env = "KEYWARD_WEBHOOK_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub webhook_max_attempts: u32,
    /// Rotation policy TENANT/ENVIRONMENT=DAYS (`*` for any): the current secret of a matching
    /// active key must be younger than DAYS; the most specific rule applies. Repeatable.
    #[arg(long = "rotation-policy", env = "KEYWARD_ROTATION_POLICIES", value_delimiter = ',', value_parser = crate::notify::parse_rotation_policy)]
    pub rotation_policies: Vec<keyward_engine::rotation_policy::RotationPolicy>,
    /// Days of notice for key_expiring_soon, and the rotation report's default "due soon" window.
    #[arg(long, env = "KEYWARD_EXPIRY_WARNING_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(0..=365))]
    pub expiry_warning_days: u32,
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
    pub listener: crate::connections::ListenerArgs,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Where the client finds the server and how it prints.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Base URL of the keyward server (http only; terminate TLS in front of keyward).
    #[arg(
        long,
        env = "KEYWARD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // Parsed once per process.
pub enum KeysCommand {
    /// Issue a key; prints the secret once.
    Create(KeysCreateArgs),
    /// List keys.
    List(KeysListArgs),
    /// Show a key's record.
    Show(KeyIdArgs),
    /// Change a key's metadata.
    Update(KeysUpdateArgs),
    /// Give a key a new secret; prints it once.
    Rotate(KeysRotateArgs),
    /// Revoke every secret of a key, effective immediately.
    Revoke(RevokeArgs),
    /// Show or change a key's quota credits.
    Credits(CreditsArgs),
}

#[derive(Debug, Args)]
pub struct CreditsArgs {
    /// The key's identifier (key_...).
    pub key_id: String,
    /// Set the balance.
    #[arg(long, conflicts_with_all = ["increase", "decrease"])]
    pub set: Option<u64>,
    /// Add credits.
    #[arg(long, conflicts_with = "decrease")]
    pub increase: Option<u64>,
    /// Remove credits (not below zero).
    #[arg(long)]
    pub decrease: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// Create a plan.
    Create(PlanArgs),
    /// Replace a plan (keys on it follow at once).
    Update(PlanArgs),
    /// List plans.
    List(ClientOnly),
    /// Show a plan.
    Show(PlanIdArgs),
    /// Delete a plan no key follows.
    Delete(PlanIdArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The plan's name.
    pub plan_id: String,
    /// A permission of keys on the plan (repeatable).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// A rate limit (repeatable), as for `keys create --limit`.
    #[arg(long = "limit")]
    pub limits: Vec<String>,
    /// Quota: starting credit balance.
    #[arg(long)]
    pub credits: Option<u64>,
    /// Quota refill: daily:AMOUNT or monthly:DAY:AMOUNT.
    #[arg(long, requires = "credits")]
    pub refill: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct PlanIdArgs {
    /// The plan's name.
    pub plan_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct KeysCreateArgs {
    /// Who is accountable for the key.
    #[arg(long)]
    pub owner: String,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Tenant (customer).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Environment (default live; test, dev, staging and sandbox get the kw_test prefix).
    #[arg(long)]
    pub environment: Option<String>,
    /// Why the key exists.
    #[arg(long)]
    pub purpose: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// A granted permission (repeatable), e.g. orders.read, orders.*, *.
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// An allowed route (repeatable), e.g. 'GET /v1/orders/*'.
    #[arg(long = "route")]
    pub routes: Vec<String>,
    /// Meta as a JSON object.
    #[arg(long)]
    pub meta: Option<String>,
    /// Expiry as RFC 3339, e.g. 2027-01-01T00:00:00Z.
    #[arg(long, conflicts_with = "ttl")]
    pub expires_at: Option<String>,
    /// Lifetime, e.g. 3600, 90s, 15m, 12h, 30d, 2w.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Create the key disabled.
    #[arg(long)]
    pub disabled: bool,
    /// Key prefix, [a-z][a-z0-9_]{0,19}.
    #[arg(long)]
    pub prefix: Option<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Limits, quota, plan and bindings of a key or plan.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Plan the key follows.
    #[arg(long)]
    pub plan: Option<String>,
    /// A rate limit (repeatable): NAME=LIMIT/PERIOD[,burst=N][,scope=key|owner|tenant][,mode=exact|local_first],
    /// e.g. per_second=50/1s,burst=100 or per_day=100000/1d.
    #[arg(long = "limit")]
    pub limits: Vec<String>,
    /// Quota: starting credit balance.
    #[arg(long)]
    pub credits: Option<u64>,
    /// Quota refill: daily:AMOUNT or monthly:DAY:AMOUNT (needs --credits).
    #[arg(long, requires = "credits")]
    pub refill: Option<String>,
    /// An allowed caller address or CIDR block (repeatable).
    #[arg(long = "ip")]
    pub ips: Vec<String>,
    /// An allowed browser origin, host or *.host (repeatable).
    #[arg(long = "origin")]
    pub origins: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KeysListArgs {
    /// Only keys of this owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only keys of this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// active, revoked or expired.
    #[arg(long)]
    pub status: Option<String>,
    /// Page size (1 to 1000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Cursor from a previous page.
    #[arg(long)]
    pub cursor: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct KeyIdArgs {
    /// The key's identifier (key_...).
    pub key_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct KeysUpdateArgs {
    /// The key's identifier (key_...).
    pub key_id: String,
    /// New display name.
    #[arg(long, conflicts_with = "clear_name")]
    pub name: Option<String>,
    /// Remove the display name.
    #[arg(long)]
    pub clear_name: bool,
    /// Replace the permissions with these (repeatable).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// Remove all permissions.
    #[arg(long, conflicts_with = "permissions")]
    pub clear_permissions: bool,
    /// Replace the routes with these (repeatable).
    #[arg(long = "route")]
    pub routes: Vec<String>,
    /// Remove the route allowlist (any endpoint).
    #[arg(long, conflicts_with = "routes")]
    pub clear_routes: bool,
    /// Replace the tags with these (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Remove all tags.
    #[arg(long, conflicts_with = "tags")]
    pub clear_tags: bool,
    /// Replace meta with this JSON object.
    #[arg(long)]
    pub meta: Option<String>,
    /// New expiry as RFC 3339.
    #[arg(long, conflicts_with = "no_expiry")]
    pub expires_at: Option<String>,
    /// Remove the expiry.
    #[arg(long)]
    pub no_expiry: bool,
    /// Enable the key.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable the key.
    #[arg(long)]
    pub disable: bool,
    /// Take the key off its plan.
    #[arg(long, conflicts_with = "plan")]
    pub no_plan: bool,
    /// Remove the key's own limits.
    #[arg(long, conflicts_with = "limits")]
    pub clear_limits: bool,
    /// Remove the key's own quota.
    #[arg(long, conflicts_with = "credits")]
    pub clear_quota: bool,
    /// Remove the IP allowlist.
    #[arg(long, conflicts_with = "ips")]
    pub clear_ips: bool,
    /// Remove the allowed origins.
    #[arg(long, conflicts_with = "origins")]
    pub clear_origins: bool,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct KeysRotateArgs {
    /// The key's identifier (key_...).
    pub key_id: String,
    /// How long the previous secret keeps working, e.g. 0, 10m, 24h (default 0: it stops now).
    #[arg(long, default_value = "0")]
    pub grace: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The key's identifier (key_...).
    pub key_id: String,
    /// Why the key is revoked.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The key to verify, or '-' to read it from standard input (keeps it out of shell history).
    pub key: String,
    /// A permission the key must hold (repeatable; all are required).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// A permission query instead, e.g. 'orders.read AND (orders.write OR admin.*)'.
    #[arg(long, conflicts_with = "permissions")]
    pub query: Option<String>,
    /// HTTP method of the protected request.
    #[arg(long)]
    pub method: Option<String>,
    /// Path of the protected request.
    #[arg(long)]
    pub path: Option<String>,
    /// The caller's IP address.
    #[arg(long)]
    pub ip: Option<String>,
    /// The request's Origin.
    #[arg(long)]
    pub origin: Option<String>,
    /// Units the request consumes (default 1; 0 checks without consuming).
    #[arg(long)]
    pub cost: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events.
    List(AuditListArgs),
    /// Walk the hash chain and report the first broken link (exit 3 if broken).
    Verify(ClientOnly),
}

#[derive(Debug, Args)]
pub struct AuditListArgs {
    /// Only events about this key_id.
    #[arg(long)]
    pub key_id: Option<String>,
    /// Only this action, e.g. key.revoke.
    #[arg(long)]
    pub action: Option<String>,
    /// Page size (1 to 1000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Cursor from a previous page.
    #[arg(long)]
    pub cursor: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Write usage rows as CSV (every page of GET /v1/usage): start, key_id, owner, tenant,
    /// code, verifications, credits.
    Export(UsageExportArgs),
}

#[derive(Debug, Args)]
pub struct UsageExportArgs {
    /// Only this key.
    #[arg(long)]
    pub key_id: Option<String>,
    /// Only usage recorded with this owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only usage recorded with this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Start, RFC 3339 (rounded down; default: a day or 30 days before --to).
    #[arg(long)]
    pub from: Option<String>,
    /// End, exclusive, RFC 3339 (rounded up; default: the end of the hour or day in progress).
    #[arg(long)]
    pub to: Option<String>,
    /// hour or day (UTC).
    #[arg(long, default_value = "hour")]
    pub granularity: String,
    /// Write the CSV to this file instead of standard output.
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ClientOnly {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// Create a root key; prints it once.
    Create(RootCreateArgs),
    /// List root keys.
    List(KeysListArgs),
    /// Revoke a root key.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct RootCreateArgs {
    /// Who is accountable for the root key.
    #[arg(long)]
    pub owner: Option<String>,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Confine the root key to this tenant's keys, audit events, usage and reports.
    #[arg(long)]
    pub tenant: Option<String>,
    /// A root permission (repeatable; at least one): keys.create, keys.read, keys.update,
    /// keys.revoke, keys.verify, audit.read, root.manage, or * for all.
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// Lifetime, e.g. 30d.
    #[arg(long)]
    pub ttl: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What to do about an anomaly on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnAnomaly {
    // Plain comments: doc comments here would switch every --help to the long layout.
    // Audit it, count it and publish it as an event (webhook).
    Alert,
    // Also disable the key (reversible by re-enabling it), within the safety brake.
    Disable,
}

impl OnAnomaly {
    pub fn action(self) -> keyward_engine::anomaly::AnomalyAction {
        match self {
            Self::Alert => keyward_engine::anomaly::AnomalyAction::Alert,
            Self::Disable => keyward_engine::anomaly::AnomalyAction::Disable,
        }
    }
}

fn tenant_action(s: &str) -> Result<(String, OnAnomaly), String> {
    let (tenant, action) = s
        .split_once('=')
        .ok_or_else(|| format!("expected TENANT=alert|disable, got {s:?}"))?;
    let action = OnAnomaly::from_str(action, false)
        .map_err(|_| format!("the action for tenant {tenant:?} must be alert or disable"))?;
    if tenant.is_empty() {
        return Err("the tenant name is empty".into());
    }
    Ok((tenant.to_owned(), action))
}

fn spike_factor(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (1.5..=1000.0).contains(&f) => Ok(f),
        _ => Err("must be a number between 1.5 and 1000".into()),
    }
}

/// Anomaly detection and the automated response (README: "Anomaly detection and response").
#[derive(Debug, Clone, Args)]
pub struct AnomalyArgs {
    /// Response to an anomaly on a key of a tenant without an override (or without a tenant).
    #[arg(long, env = "KEYWARD_ON_ANOMALY", value_enum, default_value_t = OnAnomaly::Alert)]
    pub on_anomaly: OnAnomaly,
    /// Per-tenant response, TENANT=alert|disable (repeatable; comma-separated in the variable).
    #[arg(long = "on-anomaly-tenant", env = "KEYWARD_ON_ANOMALY_TENANTS", value_name = "TENANT=ACTION", value_delimiter = ',', value_parser = tenant_action)]
    pub on_anomaly_tenant: Vec<(String, OnAnomaly)>,
    /// Safety brake: most keys this node disables automatically in any hour; beyond it,
    /// anomalies only alert.
    #[arg(long, env = "KEYWARD_AUTO_DISABLE_MAX_PER_HOUR", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub auto_disable_max_per_hour: u32,
    /// A key's request rate (or rate of new caller addresses) this many times its one-hour
    /// baseline is a spike.
    #[arg(long, env = "KEYWARD_ANOMALY_SPIKE_FACTOR", default_value_t = 5.0, value_parser = spike_factor)]
    pub anomaly_spike_factor: f64,
    /// Request rates under this many per minute never count as a spike.
    #[arg(long, env = "KEYWARD_ANOMALY_MIN_RATE_PER_MINUTE", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub anomaly_min_rate_per_minute: u32,
    /// New caller addresses per minute on one key that count as a burst.
    #[arg(long, env = "KEYWARD_ANOMALY_NEW_IPS_PER_MINUTE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    pub anomaly_new_ips_per_minute: u32,
    /// Failed verifications per minute against one key, or of unknown keys from one address,
    /// that count as a burst.
    #[arg(long, env = "KEYWARD_ANOMALY_FAILURES_PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    pub anomaly_failures_per_minute: u32,
}

/// Parses anomaly settings written as flags (the gateway file's keys), with the command line's
/// checks.
#[derive(Debug, Parser)]
#[command(name = "anomaly settings", no_binary_name = true)]
struct AnomalySettings {
    #[command(flatten)]
    args: AnomalyArgs,
}

impl AnomalyArgs {
    /// The argument ids, as `ArgMatches::value_source` knows them.
    pub const IDS: [&'static str; 7] = [
        "on_anomaly",
        "on_anomaly_tenant",
        "auto_disable_max_per_hour",
        "anomaly_spike_factor",
        "anomaly_min_rate_per_minute",
        "anomaly_new_ips_per_minute",
        "anomaly_failures_per_minute",
    ];

    /// Parses settings given as `--flag value` pairs, checked as on the command line (the
    /// environment still supplies what the flags leave out).
    pub fn parse_flags(flags: &[String]) -> Result<Self, clap::Error> {
        AnomalySettings::try_parse_from(flags).map(|s| s.args)
    }

    /// These settings where `given(id)` (set on the command line or in the environment), and
    /// `file`'s elsewhere.
    pub fn overlay(self, file: Self, given: impl Fn(&str) -> bool) -> Self {
        Self {
            on_anomaly: if given("on_anomaly") {
                self.on_anomaly
            } else {
                file.on_anomaly
            },
            on_anomaly_tenant: if given("on_anomaly_tenant") {
                self.on_anomaly_tenant
            } else {
                file.on_anomaly_tenant
            },
            auto_disable_max_per_hour: if given("auto_disable_max_per_hour") {
                self.auto_disable_max_per_hour
            } else {
                file.auto_disable_max_per_hour
            },
            anomaly_spike_factor: if given("anomaly_spike_factor") {
                self.anomaly_spike_factor
            } else {
                file.anomaly_spike_factor
            },
            anomaly_min_rate_per_minute: if given("anomaly_min_rate_per_minute") {
                self.anomaly_min_rate_per_minute
            } else {
                file.anomaly_min_rate_per_minute
            },
            anomaly_new_ips_per_minute: if given("anomaly_new_ips_per_minute") {
                self.anomaly_new_ips_per_minute
            } else {
                file.anomaly_new_ips_per_minute
            },
            anomaly_failures_per_minute: if given("anomaly_failures_per_minute") {
                self.anomaly_failures_per_minute
            } else {
                file.anomaly_failures_per_minute
            },
        }
    }

    /// The engine's settings.
    pub fn config(&self) -> keyward_engine::anomaly::AnomalyConfig {
        use keyward_engine::anomaly::{AnomalyConfig, Thresholds};
        AnomalyConfig {
            thresholds: Thresholds {
                spike_factor: self.anomaly_spike_factor,
                min_rate_per_minute: f64::from(self.anomaly_min_rate_per_minute),
                new_ips_per_minute: self.anomaly_new_ips_per_minute,
                failures_per_minute: self.anomaly_failures_per_minute,
                ..Thresholds::default()
            },
            on_anomaly: self.on_anomaly.action(),
            tenants: self
                .on_anomaly_tenant
                .iter()
                .map(|(tenant, action)| (tenant.clone(), action.action()))
                .collect(),
            max_auto_disables_per_hour: self.auto_disable_max_per_hour,
            ..AnomalyConfig::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct SimulateLeakArgs {
    /// Minutes of steady traffic before the leak.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1440))]
    pub baseline_minutes: u32,
    /// Requests per second of the steady traffic.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub baseline_rps: u32,
    /// Addresses the steady traffic comes from.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=250))]
    pub baseline_ips: u32,
    /// Extra requests per second once the key has leaked.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub spike_rps: u32,
    /// New addresses the leaked key is used from.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub spike_ips: u32,
    /// Longest the leak runs if nothing detects it (seconds).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub max_spike_seconds: u32,
    /// The simulated tenant's response.
    #[arg(long, value_enum, default_value_t = OnAnomaly::Disable)]
    pub on_anomaly: OnAnomaly,
    /// Spike factor (as for serve).
    #[arg(long, default_value_t = 5.0, value_parser = spike_factor)]
    pub anomaly_spike_factor: f64,
}
