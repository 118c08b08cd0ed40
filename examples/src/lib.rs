//! The thin mesh binaries live in this package as `[[example]]` targets: `sidecar`,
//! `demo`, `meshctl` and `embedded`. This library holds the start-up they share: the
//! process-wide pieces a library crate must not install — the tracing subscriber (with a
//! filter `/log-level` can change), the Prometheus metrics recorder and the TLS crypto
//! provider.

use std::sync::Arc;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Handles to the process-wide telemetry, for `mesh_proxy::Proxy`.
pub struct Telemetry {
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Reads and changes the log filter (`/log-level`).
    pub log: reload::Handle<EnvFilter, Registry>,
}

/// Installs the tracing subscriber with `filter` and the Prometheus recorder with mesh's
/// metric descriptions.
///
/// # Errors
///
/// When a subscriber or recorder is already installed.
pub fn init(filter: EnvFilter) -> anyhow::Result<Telemetry> {
    let (filter, log) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer())
        .try_init()
        .context("cannot install the tracing subscriber")?;
    let recorder = mesh_proxy::telemetry::prometheus_recorder()?;
    let prometheus = recorder.handle();
    metrics::set_global_recorder(recorder).context("cannot install the metrics recorder")?;
    mesh_proxy::telemetry::describe_metrics();
    Ok(Telemetry { prometheus, log })
}

/// The TLS crypto provider of the mesh binaries: aws-lc-rs, installed as the process default
/// (so every rustls user in the process agrees) and returned for `Proxy::with_crypto_provider`.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    // Already installed (a second call): the installed one is kept and used.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}
