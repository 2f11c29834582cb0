//! Anomaly detection's flags: the response settings `serve` and `gateway` share (and the
//! gateway file's keys, parsed with the same checks), and `keyward simulate-leak`'s scenario.

use clap::{Args, Parser, ValueEnum};

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

/// Anomaly detection and the automated response (docs/anomaly-response.md).
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
