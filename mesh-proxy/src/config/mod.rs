//! The proxy's configuration: one TOML file, typed at the edge.
//!
//! Every section and key has a documented default, so an empty file is a working sidecar
//! (DESIGN.md §1 ports, §5 limits). Unknown keys are errors, not silently ignored: a typo in
//! a limit must not leave the proxy running on a default the operator meant to change.
//! [`Config::from_toml`] reports the file, line, key and value of the first problem;
//! [`check_file`] is the same check for a file on disk, and what `meshctl check` runs.
//!
//! ```
//! let cfg = mesh_proxy::config::Config::from_toml(
//!     "sidecar.toml",
//!     r#"
//!     [outbound]
//!     target = "127.0.0.1:8080"
//!     [limits]
//!     header_read_timeout = "5s"
//!     "#,
//! ).unwrap();
//! assert_eq!(cfg.limits.header_read_timeout.as_secs(), 5);
//! ```
//!
//! # Sections
//!
//! One type per TOML section, each `#[serde(default, deny_unknown_fields)]` with its
//! defaults next to its fields: [`AdminConfig`], [`OutboundConfig`], [`InboundConfig`],
//! [`Limits`], [`ClientSettings`], [`ShutdownConfig`]. Inbound and outbound are separate
//! types because they grow apart (see DESIGN.md §4): a key valid in one is an error in the
//! other. Validation that types cannot express runs per section, then across sections
//! (a target that loops back into a listener), in `load.rs`.
//!
//! `[identity]` ([`IdentityConfig`]) is optional: absent means plaintext everywhere.
//! `[namers.<name>]` ([`NamerConfig`]) mount namers at `/#/<name>`, shared by every listener
//! (and the routers to come); `[balancer]` ([`BalancerSettings`]) tunes the balancer over a
//! bound name's endpoints.
//!
//! `[routers.<name>]` ([`RouterConfig`]) name each outbound request (the identifier) and
//! rewrite the name with a dtab; `[outbound] router = "<name>"` selects one. A section still
//! to come arrives as one new field of [`Config`] (which is `#[non_exhaustive]`, so adding one
//! breaks no caller), its own type, and one line in the per-section check.
//!
//! # The effective configuration
//!
//! A running proxy holds its configuration in one place, shared by the listeners' owner
//! ([`BoundProxy`](crate::BoundProxy)) and the admin server's `/config.json`: an
//! [`ArcSwap`], so that a reload can replace the whole configuration with one atomic store.
//! Readers see the old or the new file, never a mix, and never wait on a lock.
//! [`BoundProxy::config`](crate::BoundProxy::config) returns the one in force.

mod discovery;
mod identity;
mod listeners;
mod load;
mod policy;
mod routers;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

pub use self::discovery::{BalancerSettings, DnsSettings, NamerConfig, OutboundTarget};
pub(crate) use self::identity::InboundPolicies;
pub use self::identity::{IdentityConfig, InboundMode, PeerId, PolicyConfig, PortPolicyConfig};
pub use self::listeners::{
    INBOUND_LISTEN, InboundConfig, OUTBOUND_LISTEN, OutboundConfig, default_opaque_ports,
};
pub(crate) use self::load::same_socket;
pub use self::load::{ConfigError, check_file};
pub use self::policy::{
    AbortConfig, BackoffConfig, BudgetConfig, DelayConfig, FaultConfig, RetriesConfig, RouteConfig,
    RouteMatch, RouteRetriesConfig, ServiceConfig,
};
pub use self::routers::{
    HeaderNameText, IdentifierConfig, PathText, RouterConfig, RouterDtab, TrustedSource,
    default_trusted,
};

/// The whole configuration of one proxy process.
///
/// Build one with [`Config::default`] (then set fields) or load one with
/// [`Config::from_file`]; new sections are added as new fields, hence `#[non_exhaustive]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The admin server.
    pub admin: AdminConfig,
    /// The outbound listener: traffic from the local app to the mesh.
    pub outbound: OutboundConfig,
    /// The inbound listener: traffic from the mesh to the local app.
    pub inbound: InboundConfig,
    /// Safety limits shared by both listeners.
    pub limits: Limits,
    /// Upstream connection reuse.
    pub client: ClientSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// The workload's mesh identity; absent: plaintext.
    pub identity: Option<IdentityConfig>,
    /// Namers, by the name they are mounted under (`/#/<name>/…`).
    pub namers: std::collections::BTreeMap<String, NamerConfig>,
    /// How requests are spread over a bound name's endpoints.
    pub balancer: BalancerSettings,
    /// Routers, by name (`[outbound] router = "<name>"` selects one).
    pub routers: std::collections::BTreeMap<String, RouterConfig>,
}

/// The configuration in force, shared by a proxy and its admin server.
///
/// This is the holder a reload swaps: one [`ArcSwap`], replaced as a whole. A reader that
/// needs several values takes one snapshot with [`current`](Self::current) and reads them
/// all from it, so it never combines values from two files.
#[derive(Clone, Debug)]
pub(crate) struct EffectiveConfig(Arc<ArcSwap<Config>>);

impl EffectiveConfig {
    pub(crate) fn new(config: Config) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(config)))
    }

    /// A snapshot of the configuration in force.
    pub(crate) fn current(&self) -> Arc<Config> {
        self.0.load_full()
    }

    /// Replaces the configuration in force (a reload).
    pub(crate) fn replace(&self, config: Config) {
        self.0.store(Arc::new(config));
    }
}

/// The admin server (`/metrics`, `/ready`, `/live`, `/config.json`, `/log-level`,
/// `/shutdown`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin server listens. Default: `127.0.0.1:4191`.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4191)),
        }
    }
}

/// Safety limits (DESIGN.md §5). Each bounds something a client controls.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest HTTP/1 request line plus headers; larger heads get 431. Default: 60 KiB.
    pub max_request_header_bytes: ByteSize,
    /// Most HTTP/1 request headers; more get 431. Default: 100.
    pub max_request_headers: NonZeroUsize,
    /// How long a client may take to send a request head, from its first byte. Slower
    /// senders are disconnected. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most concurrent HTTP/2 streams per connection; more are refused. Default: 100.
    pub http2_max_concurrent_streams: u32,
    /// Largest HTTP/2 header list. Default: 16 KiB.
    pub http2_max_header_list_bytes: ByteSize,
    /// Connections with nothing in flight for this long are closed. Default: 1h.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long the upstream may take to send a response head; slower answers get 504.
    /// Streaming bodies and upgraded connections are not limited by it. Default: 60s.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Bound on opening an upstream connection, and again on its mesh TLS handshake (each a
    /// 504 when exceeded). Default: 1s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long protocol detection waits for a client's first bytes before forwarding the
    /// connection as opaque TCP. Default: 1s.
    #[serde(with = "humantime_serde")]
    pub detect_timeout: Duration,
    /// Most concurrent client connections, across both listeners (tunnels included); more
    /// are closed at accept.
    /// Default: half the open-file limit less a reserve (each proxied connection
    /// uses two descriptors), at most 100000.
    pub max_connections: Option<NonZeroUsize>,
    /// What the retry replay buffers of all requests may hold together (each request's own
    /// is bounded by its service's `retries.replay_limit`). A request that finds it spent is
    /// still forwarded, but not retried. Default: 64 MiB.
    pub replay_memory: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_header_bytes: ByteSize::kib(60),
            max_request_headers: NonZeroUsize::new(100).unwrap_or(NonZeroUsize::MIN),
            header_read_timeout: Duration::from_secs(10),
            http2_max_concurrent_streams: 100,
            http2_max_header_list_bytes: ByteSize::kib(16),
            idle_timeout: Duration::from_secs(3600),
            response_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(1),
            detect_timeout: Duration::from_secs(1),
            max_connections: None,
            replay_memory: ByteSize::mib(64),
        }
    }
}

impl Limits {
    /// The connection cap in force: the configured one, or one derived from the process's
    /// open-file limit.
    pub fn connection_cap(&self) -> usize {
        if let Some(n) = self.max_connections {
            return n.get();
        }
        let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        let soft = usize::try_from(soft).unwrap_or(usize::MAX);
        (soft.saturating_sub(64) / 2).clamp(16, 100_000)
    }
}

/// Upstream connection reuse.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSettings {
    /// Idle HTTP/1 connections kept per upstream endpoint. Default: 256.
    pub max_idle_per_endpoint: usize,
    /// How long an idle upstream connection is kept. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            max_idle_per_endpoint: 256,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Graceful shutdown.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight work may run after a shutdown signal before the process exits.
    /// Default: 30s.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30),
        }
    }
}
