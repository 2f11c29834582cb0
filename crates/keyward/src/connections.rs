//! The connection settings of keyward's HTTP listeners (timeouts, cap, trusted proxies, PROXY
//! protocol, `/metrics` host names): `keyward serve`'s flags and the gateway TOML's keys, both
//! turned into one `keyward_http::listener::ListenerConfig` (see
//! docs/connections.md).

use std::time::Duration;

use clap::Args;
use keyward_http::listener::{Connections, ListenerConfig};
use keyward_http::trusted_proxy::TrustedProxies;

/// The HTTP listener's connections (docs/connections.md).
#[derive(Debug, Clone, Args)]
pub struct ListenerArgs {
    /// Longest time a client has to send a complete request head, counted from the connection
    /// opening or, on a kept-alive connection, from the previous response (milliseconds).
    #[arg(long, env = "KEYWARD_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub header_read_timeout_ms: u64,
    /// A connection on which no byte moves either way for this long is closed (milliseconds).
    #[arg(long, env = "KEYWARD_IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub idle_timeout_ms: u64,
    /// Longest time a request body may take to arrive after its head; then 408 (milliseconds).
    #[arg(long, env = "KEYWARD_BODY_READ_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub body_read_timeout_ms: u64,
    /// Most open connections; a connection beyond them is closed on arrival.
    #[arg(long, env = "KEYWARD_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// A proxy (CIDR block or address) whose X-Forwarded-For, and PROXY header, names the
    /// client; repeatable. Without one the socket peer is always the client.
    #[arg(long = "trusted-proxy", env = "KEYWARD_TRUSTED_PROXIES", value_name = "CIDR", value_delimiter = ',', value_parser = parse_block)]
    pub trusted_proxies: Vec<String>,
    /// Read a PROXY protocol header (v1 or v2) at the start of connections from trusted
    /// proxies; one from any other peer closes the connection.
    #[arg(long, env = "KEYWARD_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
    /// A name this listener is reached by (besides its addresses and localhost): GET /metrics
    /// answers only requests whose Host names the listener; repeatable.
    #[arg(long = "metrics-host", env = "KEYWARD_METRICS_HOSTS", value_name = "NAME", value_delimiter = ',', value_parser = parse_host_name)]
    pub metrics_hosts: Vec<String>,
}

fn parse_block(text: &str) -> Result<String, String> {
    TrustedProxies::parse(&[text])
        .map(|_| text.trim().to_owned())
        .map_err(|e| e.to_string())
}

fn parse_host_name(text: &str) -> Result<String, String> {
    let name = text.trim();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!(
            "{text:?} is not a host name (letters, digits, '-' and '.')"
        ))
    }
}

impl ListenerArgs {
    /// The listener configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<ListenerConfig> {
        Ok(ListenerConfig {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            trusted_proxies: TrustedProxies::parse(&self.trusted_proxies)?,
            proxy_protocol: self.proxy_protocol,
            host_names: self.metrics_hosts.clone(),
        })
    }

    /// The connection policy of the listener called `name`.
    pub fn connections(&self, name: &'static str) -> anyhow::Result<Connections> {
        Ok(Connections::new(name, self.config()?)?)
    }
}

/// The same settings as keys of the gateway's TOML (top-level keys of the same names).
#[derive(Debug, Default)]
pub struct FileListener {
    pub header_read_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub max_connections: Option<u64>,
    pub trusted_proxies: Vec<String>,
    pub proxy_protocol: bool,
    pub metrics_hosts: Vec<String>,
}

impl FileListener {
    /// The configuration, checked as the flags are checked; errors name the key.
    pub fn config(&self) -> Result<ListenerConfig, String> {
        let millis = |key: &str, value: Option<u64>, default: Duration| match value {
            None => Ok(default),
            Some(ms) if (10..=3_600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
            Some(_) => Err(format!("{key} must be 10 to 3600000 (milliseconds)")),
        };
        let defaults = ListenerConfig::default();
        let max_connections = match self.max_connections {
            None => defaults.max_connections,
            Some(n) if (1..=1_000_000).contains(&n) => usize::try_from(n).unwrap_or(usize::MAX),
            Some(_) => return Err("max_connections must be 1 to 1000000".into()),
        };
        let host_names = self
            .metrics_hosts
            .iter()
            .map(|n| parse_host_name(n).map_err(|e| format!("metrics_hosts: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(ListenerConfig {
            header_read_timeout: millis(
                "header_read_timeout_ms",
                self.header_read_timeout_ms,
                defaults.header_read_timeout,
            )?,
            idle_timeout: millis(
                "idle_timeout_ms",
                self.idle_timeout_ms,
                defaults.idle_timeout,
            )?,
            body_read_timeout: millis(
                "body_read_timeout_ms",
                self.body_read_timeout_ms,
                defaults.body_read_timeout,
            )?,
            max_connections,
            trusted_proxies: TrustedProxies::parse(&self.trusted_proxies)
                .map_err(|e| format!("trusted_proxies: {e}"))?,
            proxy_protocol: self.proxy_protocol,
            host_names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_are_checked() {
        let ok = FileListener {
            header_read_timeout_ms: Some(200),
            max_connections: Some(3),
            trusted_proxies: vec!["10.0.0.0/8".into()],
            proxy_protocol: true,
            metrics_hosts: vec!["Metrics.Internal".into()],
            ..FileListener::default()
        }
        .config()
        .unwrap();
        assert_eq!(ok.header_read_timeout, Duration::from_millis(200));
        assert_eq!(ok.max_connections, 3);
        assert!(ok.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert_eq!(ok.host_names, ["metrics.internal"]);
        for (bad, expected) in [
            (
                FileListener {
                    idle_timeout_ms: Some(0),
                    ..FileListener::default()
                },
                "idle_timeout_ms",
            ),
            (
                FileListener {
                    max_connections: Some(0),
                    ..FileListener::default()
                },
                "max_connections",
            ),
            (
                FileListener {
                    trusted_proxies: vec!["10.0.0.0/40".into()],
                    ..FileListener::default()
                },
                "trusted_proxies",
            ),
            (
                FileListener {
                    metrics_hosts: vec!["a b".into()],
                    ..FileListener::default()
                },
                "metrics_hosts",
            ),
        ] {
            let err = bad.config().unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }
}
