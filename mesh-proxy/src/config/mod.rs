//! The proxy's configuration: one TOML file, typed at the edge.
//!
//! Every section and key has a documented default, so an empty file is a working sidecar
//! (DESIGN.md §1 ports, §5 limits). Unknown keys are errors, not silently ignored: a typo in
//! a limit must not leave the proxy running on a default the operator meant to change.
//! [`Config::from_toml`] reports the file, line, key and value of the first problem.
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

mod load;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

pub use self::load::ConfigError;
pub(crate) use self::load::same_socket;

/// The whole configuration of one proxy process.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The admin server.
    pub admin: AdminConfig,
    /// The outbound listener: traffic from the local app to the mesh.
    pub outbound: ListenerConfig,
    /// The inbound listener: traffic from the mesh to the local app.
    pub inbound: ListenerConfig,
    /// Safety limits shared by both listeners.
    pub limits: Limits,
    /// Upstream connection reuse.
    pub client: ClientSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin: AdminConfig::default(),
            outbound: ListenerConfig::outbound(),
            inbound: ListenerConfig::inbound(),
            limits: Limits::default(),
            client: ClientSettings::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

impl Config {
    /// Fills listener addresses left out of a file with their per-direction defaults.
    pub(crate) fn fill_defaults(&mut self) {
        self.outbound.listen.get_or_insert(OUTBOUND_LISTEN);
        self.inbound.listen.get_or_insert(INBOUND_LISTEN);
    }
}

/// The default outbound listener address, `127.0.0.1:4140`.
pub const OUTBOUND_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4140);
/// The default inbound listener address, `0.0.0.0:4143`.
pub const INBOUND_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 4143);

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

/// One proxy listener (inbound or outbound).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Whether the listener runs. Default: true.
    pub enabled: bool,
    /// Where it listens. Default: `127.0.0.1:4140` (outbound), `0.0.0.0:4143` (inbound).
    pub listen: Option<SocketAddr>,
    /// Where connections go when they carry no original destination (no iptables
    /// redirect). Default: none — such connections are refused with a log line.
    pub target: Option<SocketAddr>,
    /// Destination ports forwarded as opaque TCP without protocol detection: protocols
    /// where the server speaks first would otherwise wait for the detect timeout.
    /// Default: 21, 22, 25, 110, 143, 587, 3306, 4444, 5432, 6379, 9300, 11211.
    pub opaque_ports: Vec<u16>,
}

/// The default opaque ports: FTP, SSH, SMTP, POP3, IMAP, submission, MySQL, Galera,
/// PostgreSQL, Redis, Elasticsearch transport, memcached (Linkerd's list plus the common
/// server-speaks-first mail and file protocols).
pub fn default_opaque_ports() -> Vec<u16> {
    vec![
        21, 22, 25, 110, 143, 587, 3306, 4444, 5432, 6379, 9300, 11211,
    ]
}

impl ListenerConfig {
    /// The default outbound listener, `127.0.0.1:4140`.
    pub fn outbound() -> Self {
        Self {
            listen: Some(OUTBOUND_LISTEN),
            ..Self::default()
        }
    }

    /// The default inbound listener, `0.0.0.0:4143`.
    pub fn inbound() -> Self {
        Self {
            listen: Some(INBOUND_LISTEN),
            ..Self::default()
        }
    }
}

/// A listener section left without `listen` gets its direction's address when the file is
/// loaded ([`Config::from_toml`]).
impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            target: None,
            opaque_ports: default_opaque_ports(),
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
    /// Bound on opening an upstream connection. Default: 1s.
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
