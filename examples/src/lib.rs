//! The thin mesh binaries live in this package as `[[example]]` targets: `sidecar`,
//! `demo`, `meshctl` and `embedded`. This library holds the start-up they share: the
//! process-wide pieces a library crate must not install — the tracing subscriber (with a filter `/log-level` can change)
//! and the Prometheus metrics recorder.

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
