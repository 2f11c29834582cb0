//! `GET /metrics`: the Prometheus text exposition of every metric in
//! `keyward_engine::telemetry`, rendered by `metrics-exporter-prometheus` from the recorder
//! this module installs.
//!
//! The recorder is one per process ([`install`] is idempotent): `metrics` has one global
//! recorder, and tests boot several servers in one process, which then share their counters.
//! The endpoint is unauthenticated, as scrapers expect; it sits on the admin listener, which
//! must not be reachable from the public internet (the scrape names key_ids and tenants, never
//! a key or its hash).
//!
//! Because it is unauthenticated, it answers only requests addressed to the listener itself:
//! a `Host` that is an address of the listener, a loopback address, `localhost`, or a name
//! configured for the listener (`--metrics-host`). Anything else gets 421
//! `misdirected_request`. This stops DNS rebinding: a web page on an attacker's name that
//! resolves to the admin listener's address makes the browser send the attacker's name as
//! `Host`, so the page cannot read the scrape.

use std::sync::OnceLock;
use std::time::Duration;

use std::net::IpAddr;

use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keyward_engine::telemetry::{self, METRICS, MetricKind};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::ApiError;
use crate::listener::ConnectionInfo;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histogram samples are folded into their buckets between scrapes, so a process
/// nobody scrapes does not hold every sample in memory.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once; later calls
/// return the same handle), describes every keyward metric and starts the upkeep thread.
/// `None` if another recorder was installed first: metrics then go there, not to `/metrics`.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE.get_or_init(build).as_ref()
}

fn build() -> Option<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for &(name, kind, _) in METRICS {
        if kind != MetricKind::Histogram {
            continue;
        }
        let Some(buckets) = telemetry::buckets(name) else {
            continue;
        };
        builder = match builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets) {
            Ok(builder) => builder,
            Err(e) => {
                tracing::warn!(error = %e, metric = name, "metrics: bad histogram buckets");
                return None;
            }
        };
    }
    let handle = match builder.install_recorder() {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: another recorder is installed; /metrics is empty");
            return None;
        }
    };
    telemetry::describe();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("keyward-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                // Hands the verify path's aggregated samples over in batches of a few seconds,
                // so a scrape never has a long interval's worth to hand over at once.
                keyward_engine::telemetry::flush();
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        // Scrapes still drain the histograms; only an unscraped process holds its samples.
        tracing::warn!(error = %e, "metrics: cannot start the upkeep thread");
    }
    Some(handle)
}

/// `GET /metrics`.
pub async fn metrics(request: Request) -> Response {
    let info = request.extensions().get::<ConnectionInfo>();
    let local = info.map(|i| i.local.ip());
    let names = info.map_or(&[][..], ConnectionInfo::host_names);
    // The Host header, and the authority of an absolute-form request target: each one present
    // must name this listener, and at least one must be present.
    let host = request.headers().get(header::HOST).map(|h| h.to_str().ok());
    let target = request.uri().authority().map(|a| Some(a.as_str()));
    let claimed: Vec<Option<&str>> = host.into_iter().chain(target).collect();
    if claimed.is_empty()
        || !claimed
            .iter()
            .all(|h| h.is_some_and(|h| host_allowed(h, local, names)))
    {
        return ApiError::new(
            "misdirected_request",
            "this listener answers /metrics only for its own address or configured names (--metrics-host)",
        )
        .into_response();
    }
    match install() {
        Some(handle) => {
            // The verify path aggregates its latency samples; they reach the recorder here.
            keyward_engine::telemetry::flush();
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], handle.render()).into_response()
        }
        None => {
            ApiError::new("internal", "metrics are not available in this process").into_response()
        }
    }
}

/// True if the authority `host` (`name[:port]`) names the listener: its own address `local`,
/// a loopback address, `localhost`, or one of `names` (compared without case and trailing dot).
fn host_allowed(host: &str, local: Option<IpAddr>, names: &[String]) -> bool {
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    if host.contains('@') {
        return false;
    }
    let name = authority.host();
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        let ip = ip.to_canonical();
        return ip.is_loopback() || local.is_some_and(|l| l.to_canonical() == ip);
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || names
            .iter()
            .any(|n| n.strip_suffix('.').unwrap_or(n).eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listener_s_own_names_are_answered() {
        let local: Option<IpAddr> = Some("10.0.0.11".parse().unwrap());
        let names = vec!["metrics.internal".to_owned()];
        for host in [
            "10.0.0.11:8080",
            "10.0.0.11",
            "127.0.0.1:8080",
            "127.5.5.5",
            "[::1]:8080",
            "[::ffff:127.0.0.1]",
            "localhost:8080",
            "LOCALHOST.",
            "metrics.internal:9090",
            "Metrics.Internal.",
        ] {
            assert!(host_allowed(host, local, &names), "{host}");
        }
        for host in [
            "attacker.example:8080",
            "10.0.0.12:8080",
            "metrics.internal.attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "user@127.0.0.1",
            "",
            "10.0.0.11:8080/x",
            "[::1",
        ] {
            assert!(!host_allowed(host, local, &names), "{host}");
        }
        // Without connection information only loopback and localhost pass.
        assert!(!host_allowed("10.0.0.11", None, &[]));
        assert!(host_allowed("127.0.0.1", None, &[]));
    }
}
