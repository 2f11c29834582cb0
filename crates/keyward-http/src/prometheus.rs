//! `GET /metrics`: the Prometheus text exposition of every metric in
//! `keyward_engine::telemetry`, rendered by `metrics-exporter-prometheus` from the recorder
//! this module installs.
//!
//! The recorder is one per process ([`install`] is idempotent): `metrics` has one global
//! recorder, and tests boot several servers in one process, which then share their counters.
//! The endpoint is unauthenticated, as scrapers expect; it sits on the admin listener, which
//! must not be reachable from the public internet (the scrape names key_ids and tenants, never
//! a key or its hash).

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use keyward_engine::telemetry::{self, METRICS, MetricKind};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::ApiError;

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
pub async fn metrics() -> Response {
    match install() {
        Some(handle) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], handle.render()).into_response(),
        None => {
            ApiError::new("internal", "metrics are not available in this process").into_response()
        }
    }
}
