//! Metrics exposition for binaries.
//!
//! Libraries only emit through the `metrics` facade; the binary decides where metrics go.
//! [`prometheus_recorder`] builds (but does not install) a Prometheus recorder with mesh's
//! latency buckets, so histograms render as Prometheus histograms that aggregate across
//! proxies rather than as per-process summaries.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

pub use mesh_core::metrics::describe as describe_metrics;

/// A Prometheus recorder configured for mesh's metrics. Install it with
/// `metrics::set_global_recorder`, call [`describe_metrics`], and pass its handle to
/// [`Proxy::with_prometheus`](crate::Proxy::with_prometheus).
///
/// # Errors
///
/// When the bucket configuration is rejected (it is fixed, so only on a library bug).
pub fn prometheus_recorder() -> Result<PrometheusRecorder, TelemetryError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(mesh_core::metrics::RESPONSE_LATENCY_SECONDS.to_owned()),
            mesh_core::metrics::LATENCY_BUCKETS,
        )
        .map_err(|e| TelemetryError(e.to_string()))?
        .build_recorder())
}

/// The metrics recorder could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the Prometheus recorder: {0}")]
pub struct TelemetryError(String);
