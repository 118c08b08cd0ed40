//! The mesh proxy: configuration, listeners, the inbound and outbound stacks, the admin
//! server and the process lifecycle.
//!
//! A binary builds a [`Config`](config::Config) (from a TOML file and flags), installs the
//! process-wide pieces a library must not install itself — a tracing subscriber, a metrics
//! recorder — and hands them to a [`Proxy`]:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = mesh_proxy::config::Config::from_toml("inline", "[outbound]\ntarget = \"127.0.0.1:8080\"\n")?;
//! let proxy = mesh_proxy::Proxy::new(config).bind().await?;
//! let shutdown = proxy.shutdown_handle();
//! tokio::spawn(async move {
//!     let _ = mesh_proxy::signal().await;
//!     shutdown.trigger();
//! });
//! proxy.run().await;
//! # Ok(()) }
//! ```
//!
//! See ARCHITECTURE.md for the stack order of each listener.

pub mod admin;
mod authz;
mod checks;
pub mod config;
mod conn;
mod connect;
mod deadline;
mod delegator;
mod endpoints;
mod hangup;
mod http;
mod identity;
mod inbound;
mod lifecycle;
mod listener;
mod outbound;
mod ratelog;
mod refuse;
mod reload;
mod router;
mod stack;
mod tcp;
pub mod telemetry;
mod tunnel;

pub use self::admin::LogLevel;
pub use self::lifecycle::{BindError, BoundProxy, Proxy, Shutdown, StartError, signal};
pub use self::reload::{Reloaded, Reloader};

/// Which way traffic flows through a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the local application out to the mesh.
    Outbound,
    /// From the mesh in to the local application.
    Inbound,
}

impl Direction {
    /// The `direction` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}
