//! The gateway's TOML configuration: parsing and checking (`keyward gateway --config`). The
//! keys are listed in the `gateway` module's documentation and in docs; every error names the
//! file and the key. Pure apart from reading the file, so the fuzz target `gateway_toml` can
//! call [`parse_config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::anomaly::AnomalyArgs;
use anyhow::{Context, bail};
use keyward_core::path::PathPrefix;
use keyward_core::permission::PermissionQuery;
use keyward_engine::EngineConfig;
use keyward_http::gateway::{GatewayConfig, GatewayRoute};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: SocketAddr,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    admin_listen: Option<SocketAddr>,
    bootstrap_key_file: Option<PathBuf>,
    #[serde(default)]
    ratelimit_headers_on_success: bool,
    quota_lease: Option<u64>,
    threads: Option<usize>,
    redis: Option<String>,
    redis_namespace: Option<String>,
    redis_timeout_ms: Option<u64>,
    redis_fallback_nodes: Option<u64>,
    redis_fallback_credits: Option<u64>,
    stale_if_error_seconds: Option<u64>,
    #[serde(default)]
    fail_open_unknown_keys: bool,
    unknown_keys_per_minute: Option<u32>,
    redis_reconcile_ms: Option<u64>,
    #[serde(default)]
    webhooks: Vec<String>,
    webhook_max_attempts: Option<u32>,
    #[serde(default)]
    rotation_policies: Vec<String>,
    expiry_warning_days: Option<u32>,
    on_anomaly: Option<String>,
    #[serde(default)]
    on_anomaly_tenants: Vec<String>,
    auto_disable_max_per_hour: Option<u32>,
    anomaly_spike_factor: Option<f64>,
    anomaly_min_rate_per_minute: Option<u32>,
    anomaly_new_ips_per_minute: Option<u32>,
    anomaly_failures_per_minute: Option<u32>,
    otlp_endpoint: Option<String>,
    otlp_service_name: Option<String>,
    header_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    max_connections: Option<u64>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    metrics_hosts: Vec<String>,
    #[serde(rename = "route", default)]
    routes: Vec<FileRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    prefix: String,
    upstream: String,
    permissions: Option<String>,
    cost: Option<u64>,
    #[serde(default)]
    allow_query_key: bool,
    timeout_seconds: Option<u64>,
    #[serde(default)]
    allow_path_params: bool,
    #[serde(default)]
    case_sensitive: bool,
    tenant: Option<String>,
    environment: Option<String>,
    host: Option<String>,
}

/// The parsed configuration.
pub struct Loaded {
    pub listen: SocketAddr,
    /// The embedded store's directory (one of this and `store` is needed to run).
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL URL: the shared store instead of `data_dir`.
    pub store: Option<String>,
    pub admin_listen: Option<SocketAddr>,
    /// Where the first root key of an empty store goes instead of standard output.
    pub bootstrap_key_file: Option<PathBuf>,
    pub quota_lease: u64,
    pub threads: usize,
    pub redis: Option<keyward_engine::RedisConfig>,
    /// Store outage behaviour (see docs/cluster.md, "When the store is down").
    pub stale_if_error: Duration,
    pub fail_open_unknown_keys: bool,
    /// Store reads for unknown keys per caller address and minute (0: no budget).
    pub unknown_keys_per_minute: u32,
    pub gateway: GatewayConfig,
    /// Webhook endpoints (the secret comes from KEYWARD_WEBHOOK_SECRET).
    pub webhooks: Vec<String>,
    pub webhook_max_attempts: u32,
    pub rotation: keyward_engine::rotation_policy::RotationConfig,
    /// Where to export traces (checked); `--otlp-endpoint` overrides it.
    pub otlp_endpoint: Option<String>,
    /// The service name of exported traces; `--otlp-service-name` overrides it.
    pub otlp_service_name: Option<String>,
    /// Anomaly settings from the file (defaults, or the environment, where it is silent).
    pub anomaly: AnomalyArgs,
    /// The gateway listener's connections.
    pub gateway_listener: keyward_http::listener::ListenerConfig,
    /// The admin listener's connections (no PROXY protocol there).
    pub admin_listener: keyward_http::listener::ListenerConfig,
}

impl FileConfig {
    /// The file's anomaly keys as the flags they mirror.
    fn anomaly_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        let mut push = |flag: &str, value: Option<String>| {
            // One `--flag=value` token, so a value starting with '-' stays a value.
            if let Some(value) = value {
                flags.push(format!("--{flag}={value}"));
            }
        };
        push("on-anomaly", self.on_anomaly.clone());
        for tenant in &self.on_anomaly_tenants {
            push("on-anomaly-tenant", Some(tenant.clone()));
        }
        push(
            "auto-disable-max-per-hour",
            self.auto_disable_max_per_hour.map(|v| v.to_string()),
        );
        push(
            "anomaly-spike-factor",
            self.anomaly_spike_factor.map(|v| v.to_string()),
        );
        push(
            "anomaly-min-rate-per-minute",
            self.anomaly_min_rate_per_minute.map(|v| v.to_string()),
        );
        push(
            "anomaly-new-ips-per-minute",
            self.anomaly_new_ips_per_minute.map(|v| v.to_string()),
        );
        push(
            "anomaly-failures-per-minute",
            self.anomaly_failures_per_minute.map(|v| v.to_string()),
        );
        flags
    }
}

/// Reads and validates a gateway config file; errors name the file and the field.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_config(path, &text)
}

/// Parses and validates the text of a gateway config; `path` only names it in errors. No I/O,
/// so the fuzz target `gateway_toml` drives it with arbitrary text.
pub fn parse_config(path: &Path, text: &str) -> anyhow::Result<Loaded> {
    let file: FileConfig = toml::from_str(text)
        .with_context(|| format!("{} is not a valid gateway config", path.display()))?;
    if file.routes.is_empty() {
        bail!("{}: define at least one [[route]]", path.display());
    }
    if file.data_dir.is_some() && file.store.is_some() {
        bail!(
            "{}: set data_dir (the embedded store) or store (PostgreSQL), not both",
            path.display()
        );
    }
    let anomaly = AnomalyArgs::parse_flags(&file.anomaly_flags()).map_err(|e| {
        // clap's rendering names the flag; the file's key is the same name with '_'.
        let message = e.to_string();
        let first = message.lines().next().unwrap_or_default();
        anyhow::anyhow!(
            "{}: anomaly settings: {}",
            path.display(),
            first.trim_start_matches("error: ")
        )
    })?;
    let routes = file
        .routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("{}: route[{i}]", path.display());
            if !r.prefix.starts_with('/') {
                bail!("{at}.prefix must start with '/'");
            }
            let prefix = PathPrefix::new(&r.prefix, r.case_sensitive)
                .map_err(|e| anyhow::anyhow!("{at}.prefix: {e}"))?;
            let ident = |field: &str, value: Option<String>| {
                value
                    .map(|v| keyward_core::validate::ident(field, &v))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("{at}.{e}"))
            };
            let tenant = ident("tenant", r.tenant)?;
            let environment = ident("environment", r.environment)?;
            let upstream: hyper::Uri = r
                .upstream
                .parse()
                .with_context(|| format!("{at}.upstream is not a URL"))?;
            if upstream.scheme_str() != Some("http") || upstream.host().is_none() {
                bail!("{at}.upstream must be an http://host:port URL");
            }
            let permissions = r
                .permissions
                .as_deref()
                .map(PermissionQuery::parse)
                .transpose()
                .with_context(|| format!("{at}.permissions"))?;
            if let Some(host) = &r.host {
                let authority = host
                    .parse::<hyper::http::uri::Authority>()
                    .ok()
                    .filter(|a| !a.as_str().contains('@'));
                if authority.is_none() {
                    bail!("{at}.host must be host or host:port");
                }
            }
            Ok(GatewayRoute {
                prefix,
                upstream,
                permissions,
                cost: r.cost.unwrap_or(1),
                allow_query_key: r.allow_query_key,
                timeout: Duration::from_secs(r.timeout_seconds.unwrap_or(30).max(1)),
                allow_path_params: r.allow_path_params,
                tenant,
                environment,
                host: r.host,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Two prefixes that differ only in case (or spelling) would make the choice between them
    // depend on the request's case or on their order.
    for (i, a) in routes.iter().enumerate() {
        if let Some(j) = routes[..i]
            .iter()
            .position(|b| b.prefix.overlaps(&a.prefix))
        {
            bail!(
                "{}: route[{j}] and route[{i}] have the same prefix ({:?} and {:?}; prefixes are compared after normalisation and ignoring case)",
                path.display(),
                routes[j].prefix.as_str(),
                a.prefix.as_str()
            );
        }
    }
    if file.stale_if_error_seconds.is_some_and(|s| s > 86_400) {
        bail!(
            "{}: stale_if_error_seconds must be at most 86400",
            path.display()
        );
    }
    let policies = file
        .rotation_policies
        .iter()
        .map(|p| keyward_engine::rotation_policy::RotationPolicy::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: rotation_policies: {e}", path.display()))?;
    let otlp_endpoint = file
        .otlp_endpoint
        .as_deref()
        .map(crate::cli::server::parse_otlp_endpoint)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{}: otlp_endpoint: {e}", path.display()))?;
    let otlp_service_name = file
        .otlp_service_name
        .as_deref()
        .map(crate::cli::server::parse_service_name)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{}: otlp_service_name: {e}", path.display()))?;
    let listener = crate::connections::FileListener {
        header_read_timeout_ms: file.header_read_timeout_ms,
        idle_timeout_ms: file.idle_timeout_ms,
        body_read_timeout_ms: file.body_read_timeout_ms,
        max_connections: file.max_connections,
        trusted_proxies: file.trusted_proxies.clone(),
        proxy_protocol: file.proxy_protocol,
        metrics_hosts: file.metrics_hosts.clone(),
    }
    .config()
    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let admin_listener = keyward_http::listener::ListenerConfig {
        proxy_protocol: false,
        ..listener.clone()
    };
    // Checked here, so a bad combination fails before anything starts.
    keyward_http::listener::Connections::new("gateway", listener.clone())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Loaded {
        gateway_listener: listener,
        admin_listener,
        anomaly,
        otlp_endpoint,
        otlp_service_name,
        webhooks: file.webhooks,
        webhook_max_attempts: file.webhook_max_attempts.unwrap_or(5).clamp(1, 20),
        rotation: keyward_engine::rotation_policy::RotationConfig {
            policies,
            warning_days: file
                .expiry_warning_days
                .unwrap_or(keyward_engine::rotation_policy::DEFAULT_WARNING_DAYS)
                .min(365),
        },
        stale_if_error: file.stale_if_error_seconds.map_or(
            keyward_engine::CacheConfig::default().stale_if_error,
            Duration::from_secs,
        ),
        fail_open_unknown_keys: file.fail_open_unknown_keys,
        unknown_keys_per_minute: file
            .unknown_keys_per_minute
            .unwrap_or(keyward_engine::UnknownKeyBudget::default().per_minute)
            .min(1_000_000),
        listen: file.listen,
        data_dir: file.data_dir,
        store: file.store,
        admin_listen: file.admin_listen,
        bootstrap_key_file: file.bootstrap_key_file,
        quota_lease: file
            .quota_lease
            .unwrap_or(EngineConfig::default().quota_lease)
            .max(1),
        threads: file
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, 256),
        redis: file.redis.map(|url| {
            let defaults = keyward_engine::RedisConfig::new(url);
            keyward_engine::RedisConfig {
                namespace: file.redis_namespace.unwrap_or(defaults.namespace.clone()),
                timeout: file.redis_timeout_ms.map_or(defaults.timeout, |ms| {
                    Duration::from_millis(ms.clamp(10, 10_000))
                }),
                fallback_nodes: file.redis_fallback_nodes.map(|n| n.max(1)),
                fallback_credits: file
                    .redis_fallback_credits
                    .unwrap_or(defaults.fallback_credits),
                reconcile_interval: file
                    .redis_reconcile_ms
                    .map_or(defaults.reconcile_interval, |ms| {
                        Duration::from_millis(ms.clamp(10, 60_000))
                    }),
                ..defaults
            }
        }),
        gateway: GatewayConfig {
            routes,
            ratelimit_headers_on_success: file.ratelimit_headers_on_success,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> anyhow::Result<Loaded> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn a_full_config_loads() {
        let loaded = load_text(
            r#"
listen = "127.0.0.1:0"
data_dir = "/tmp/x"
ratelimit_headers_on_success = true
redis = "redis://127.0.0.1:6379"
redis_namespace = "edge"
redis_timeout_ms = 100
redis_fallback_nodes = 3
redis_fallback_credits = 7
stale_if_error_seconds = 60
fail_open_unknown_keys = true
unknown_keys_per_minute = 0
otlp_endpoint = "http://127.0.0.1:4317"
otlp_service_name = "edge"
bootstrap_key_file = "/run/keyward/root-key"
header_read_timeout_ms = 500
idle_timeout_ms = 7000
body_read_timeout_ms = 9000
max_connections = 64
trusted_proxies = ["10.0.0.0/8", "2001:db8::/32"]
proxy_protocol = true
metrics_hosts = ["keyward-1.internal"]
[[route]]
prefix = "/orders"
upstream = "http://127.0.0.1:9000"
permissions = "orders.read"
cost = 2
host = "orders.internal:8080"
tenant = "acme"
environment = "live"
allow_path_params = true
case_sensitive = true
"#,
        )
        .unwrap();
        let route = &loaded.gateway.routes[0];
        assert_eq!(route.cost, 2);
        assert_eq!(route.tenant.as_deref(), Some("acme"));
        assert_eq!(route.environment.as_deref(), Some("live"));
        assert!(route.allow_path_params && route.prefix.is_case_sensitive());
        assert_eq!(route.host.as_deref(), Some("orders.internal:8080"));
        let listener = &loaded.gateway_listener;
        assert_eq!(listener.header_read_timeout, Duration::from_millis(500));
        assert_eq!(listener.idle_timeout, Duration::from_millis(7000));
        assert_eq!(listener.body_read_timeout, Duration::from_millis(9000));
        assert_eq!(listener.max_connections, 64);
        assert!(
            listener
                .trusted_proxies
                .contains("10.1.1.1".parse().unwrap())
        );
        assert!(listener.proxy_protocol);
        assert_eq!(listener.host_names, ["keyward-1.internal"]);
        // The admin listener shares the settings but never reads PROXY headers.
        assert!(!loaded.admin_listener.proxy_protocol);
        assert_eq!(loaded.admin_listener.max_connections, 64);
        assert!(loaded.gateway.ratelimit_headers_on_success);
        let redis = loaded.redis.unwrap();
        assert_eq!(redis.url, "redis://127.0.0.1:6379");
        assert_eq!(redis.namespace, "edge");
        assert_eq!(redis.timeout, Duration::from_millis(100));
        assert_eq!(redis.fallback_nodes, Some(3));
        assert_eq!(redis.fallback_credits, 7);
        assert_eq!(loaded.stale_if_error, Duration::from_secs(60));
        assert!(loaded.fail_open_unknown_keys);
        assert_eq!(loaded.unknown_keys_per_minute, 0);
        assert_eq!(
            loaded.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(loaded.otlp_service_name.as_deref(), Some("edge"));
        assert_eq!(
            loaded.bootstrap_key_file.as_deref(),
            Some(Path::new("/run/keyward/root-key"))
        );
        // Left out, the outage settings are the safe defaults.
        let plain = load_text(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"/tmp/x\"\n[[route]]\nprefix = \"/o\"\nupstream = \"http://a:1\"\n",
        )
        .unwrap();
        assert!(!plain.fail_open_unknown_keys);
        let route = &plain.gateway.routes[0];
        assert!(route.tenant.is_none() && route.environment.is_none());
        assert!(!route.allow_path_params && !route.prefix.is_case_sensitive());
        assert_eq!(plain.unknown_keys_per_minute, 60);
        assert_eq!(plain.stale_if_error, Duration::from_secs(300));
        assert!(plain.redis.is_none());
        assert!(plain.otlp_endpoint.is_none());
        assert!(plain.gateway.routes[0].host.is_none());
        assert!(plain.gateway_listener.trusted_proxies.is_empty());
        assert_eq!(
            plain.gateway_listener.header_read_timeout,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn trace_flags_override_the_file_and_traces_are_off_by_default() {
        use crate::cli::server::TraceArgs;
        let none = TraceArgs {
            otlp_endpoint: None,
            otlp_service_name: None,
        };
        assert_eq!(none.config(None, None), None);
        let from_file = none.config(Some("http://collector:4317"), None).unwrap();
        assert_eq!(from_file.endpoint, "http://collector:4317");
        assert_eq!(from_file.service_name, "keyward");
        let flags = TraceArgs {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            otlp_service_name: Some("edge".into()),
        };
        let overridden = flags
            .config(Some("http://collector:4317"), Some("file"))
            .unwrap();
        assert_eq!(overridden.endpoint, "http://127.0.0.1:4317");
        assert_eq!(overridden.service_name, "edge");
    }

    #[test]
    fn anomaly_settings_load_from_the_file_and_flags_win() {
        use keyward_engine::anomaly::AnomalyAction;

        let base = "listen = \"127.0.0.1:0\"\ndata_dir = \"/tmp/x\"\n";
        let route = "[[route]]\nprefix = \"/o\"\nupstream = \"http://a:1\"\n";
        let loaded = load_text(&format!(
            "{base}on_anomaly = \"disable\"\non_anomaly_tenants = [\"acme=alert\", \"beta=disable\"]\n\
             auto_disable_max_per_hour = 3\nanomaly_spike_factor = 8.5\n\
             anomaly_min_rate_per_minute = 120\nanomaly_new_ips_per_minute = 40\n\
             anomaly_failures_per_minute = 50\n{route}"
        ))
        .unwrap();
        let config = loaded.anomaly.clone().config();
        assert_eq!(config.on_anomaly, AnomalyAction::Disable);
        assert_eq!(
            config.tenants.get("acme").copied(),
            Some(AnomalyAction::Alert)
        );
        assert_eq!(
            config.tenants.get("beta").copied(),
            Some(AnomalyAction::Disable)
        );
        assert_eq!(config.max_auto_disables_per_hour, 3);
        assert_eq!(config.thresholds.spike_factor, 8.5);
        assert_eq!(config.thresholds.min_rate_per_minute, 120.0);
        assert_eq!(config.thresholds.new_ips_per_minute, 40);
        assert_eq!(config.thresholds.failures_per_minute, 50);

        // A flag (or variable) given for one setting wins over the file for that setting only.
        let given =
            AnomalyArgs::parse_flags(&["--auto-disable-max-per-hour".into(), "0".into()]).unwrap();
        let merged = given
            .overlay(loaded.anomaly, |id| id == "auto_disable_max_per_hour")
            .config();
        assert_eq!(merged.max_auto_disables_per_hour, 0);
        assert_eq!(merged.on_anomaly, AnomalyAction::Disable);
        assert_eq!(merged.thresholds.spike_factor, 8.5);

        // Left out, the settings are the command line's defaults.
        let plain = load_text(&format!("{base}{route}"))
            .unwrap()
            .anomaly
            .config();
        let defaults = AnomalyArgs::parse_flags(&[]).unwrap().config();
        assert_eq!(plain.on_anomaly, defaults.on_anomaly);
        assert_eq!(
            plain.max_auto_disables_per_hour,
            defaults.max_auto_disables_per_hour
        );
        assert_eq!(
            plain.thresholds.spike_factor,
            defaults.thresholds.spike_factor
        );

        // Bad values get the command line's checks, naming the setting.
        for (line, expected) in [
            ("on_anomaly = \"panic\"", "on-anomaly"),
            ("on_anomaly_tenants = [\"acme\"]", "TENANT=alert|disable"),
            ("anomaly_spike_factor = 1.0", "between 1.5 and 1000"),
            (
                "anomaly_new_ips_per_minute = 1",
                "anomaly-new-ips-per-minute",
            ),
            (
                "auto_disable_max_per_hour = 100001",
                "auto-disable-max-per-hour",
            ),
        ] {
            let err = format!(
                "{:#}",
                load_text(&format!("{base}{line}\n{route}")).err().unwrap()
            );
            assert!(err.contains("anomaly settings"), "{line}: {err}");
            assert!(err.contains(expected), "{line}: {err}");
        }
    }

    /// `IDS` decides which settings the command line overrides: it must name every one.
    #[test]
    fn anomaly_ids_name_every_anomaly_setting() {
        use clap::Args;
        let command = AnomalyArgs::augment_args(clap::Command::new("keyward"));
        let mut ids: Vec<&str> = command
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .collect();
        ids.sort_unstable();
        let mut listed = AnomalyArgs::IDS.to_vec();
        listed.sort_unstable();
        assert_eq!(ids, listed);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let base = "listen = \"127.0.0.1:0\"\ndata_dir = \"/tmp/x\"\n";
        let cases = [
            (base.to_owned(), "at least one [[route]]"),
            (
                format!("{base}[[route]]\nprefix = \"orders\"\nupstream = \"http://a:1\"\n"),
                "prefix must start with '/'",
            ),
            (
                format!("{base}[[route]]\nprefix = \"/o\"\nupstream = \"https://a:1\"\n"),
                "http://host:port",
            ),
            (
                format!(
                    "{base}[[route]]\nprefix = \"/o\"\nupstream = \"http://a:1\"\npermissions = \"a AND\"\n"
                ),
                "permissions",
            ),
            (format!("{base}colour = 1\n"), "not a valid gateway config"),
            (
                format!("{base}[[route]]\nprefix = \"/o/../admin\"\nupstream = \"http://a:1\"\n"),
                "route[0].prefix: the path has a '.' or '..' segment",
            ),
            (
                format!("{base}[[route]]\nprefix = \"/o;x\"\nupstream = \"http://a:1\"\n"),
                "route[0].prefix",
            ),
            (
                format!(
                    "{base}[[route]]\nprefix = \"/Orders\"\nupstream = \"http://a:1\"\n[[route]]\nprefix = \"/orders/\"\nupstream = \"http://a:1\"\ncase_sensitive = true\n"
                ),
                "route[0] and route[1] have the same prefix",
            ),
            (
                format!(
                    "{base}[[route]]\nprefix = \"/o\"\nupstream = \"http://a:1\"\ntenant = \"a b\"\n"
                ),
                "route[0].tenant",
            ),
            (
                format!(
                    "{base}[[route]]\nprefix = \"/o\"\nupstream = \"http://a:1\"\nenvironment = \"\"\n"
                ),
                "route[0].environment",
            ),
            (
                format!(
                    "{base}otlp_endpoint = \"https://collector:4317\"\n[[route]]\nprefix = \"/o\"\nupstream = \"http://a:1\"\n"
                ),
                "otlp_endpoint: https is not supported",
            ),
            (
                format!(
                    "{base}store = \"postgres://h/db\"\n[[route]]\nprefix = \"/o\"\nupstream = \"http://a:1\"\n"
                ),
                "not both",
            ),
            (
                format!(
                    "{base}[[route]]\nprefix = \"/o\"\nupstream = \"http://a:1\"\nhost = \"user@evil\"\n"
                ),
                "host must be host or host:port",
            ),
            (
                format!(
                    "{base}proxy_protocol = true\n[[route]]\nprefix = \"/o\"\nupstream = \"http://a:1\"\n"
                ),
                "needs at least one trusted proxy",
            ),
            (
                format!(
                    "{base}trusted_proxies = [\"10.0.0.0/99\"]\n[[route]]\nprefix = \"/o\"\nupstream = \"http://a:1\"\n"
                ),
                "trusted_proxies",
            ),
            (
                format!(
                    "{base}header_read_timeout_ms = 0\n[[route]]\nprefix = \"/o\"\nupstream = \"http://a:1\"\n"
                ),
                "header_read_timeout_ms",
            ),
        ];
        for (text, expected) in cases {
            let err = format!("{:#}", load_text(&text).err().unwrap());
            assert!(err.contains(expected), "{err}");
        }
    }
}
