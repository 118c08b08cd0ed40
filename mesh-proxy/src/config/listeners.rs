//! The two proxy listeners, each its own section type.
//!
//! Inbound and outbound share their listening keys and grow apart: outbound names the
//! identity its fixed target must present (`peer_id`) and will name the router that resolves
//! its traffic (`router = "default"`); inbound carries the authorization policy its peers
//! must satisfy (`policy`, `paths`, `ports`). Two types, each with `deny_unknown_fields`,
//! mean a key that belongs to one direction is rejected in the other with its line, instead
//! of being accepted and ignored.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::discovery::OutboundTarget;
use super::identity::{PeerId, PolicyConfig, PortPolicyConfig};

/// The default outbound listener address, `127.0.0.1:4140`.
pub const OUTBOUND_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4140);

/// The default inbound listener address, `0.0.0.0:4143`.
pub const INBOUND_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 4143);

/// The default opaque ports: FTP, SSH, SMTP, POP3, IMAP, submission, MySQL, Galera,
/// PostgreSQL, Redis, Elasticsearch transport, memcached (Linkerd's list plus the common
/// server-speaks-first mail and file protocols).
pub fn default_opaque_ports() -> Vec<u16> {
    vec![
        21, 22, 25, 110, 143, 587, 3306, 4444, 5432, 6379, 9300, 11211,
    ]
}

/// The `[outbound]` section: traffic from the local app to other services.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OutboundConfig {
    /// Whether the listener runs. Default: true.
    pub enabled: bool,
    /// Where it listens. Default: `127.0.0.1:4140` ([`OUTBOUND_LISTEN`]): only the local app
    /// may send through the mesh. A file always sets it (TOML has no null); `None`, settable
    /// only from code, leaves the listener unbound like `enabled = false`.
    pub listen: Option<SocketAddr>,
    /// Where connections go when they carry no original destination (no iptables
    /// redirect): an address, or a bound path such as `/#/fs/hello` (requests then go to the
    /// balancer over that name's endpoints). Default: none — such connections are refused
    /// with a log line.
    pub target: Option<OutboundTarget>,
    /// Destination ports forwarded as opaque TCP without protocol detection: protocols
    /// where the server speaks first would otherwise wait for the detect timeout.
    /// Default: [`default_opaque_ports`] (21, 22, 25, 110, 143, 587, 3306, 4444, 5432, 6379,
    /// 9300, 11211).
    pub opaque_ports: Vec<u16>,
    /// With an `[identity]`: whether connections to destinations are mesh TLS. Default:
    /// true — every destination is taken to be meshed (with no expected identity known, its
    /// peer must belong to the trust domain). Set false to send plaintext while keeping an
    /// identity for the inbound side.
    pub mtls: bool,
    /// The SPIFFE ID `target` must present over mesh TLS. Default: none — any identity of
    /// the trust domain.
    pub peer_id: Option<PeerId>,
    /// The `[routers.<name>]` that names and routes each HTTP request. Default: none —
    /// requests go to the connection's destination (`target`). With a router, `target` is
    /// used only for connections that are not HTTP.
    pub router: Option<String>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: Some(OUTBOUND_LISTEN),
            target: None,
            opaque_ports: default_opaque_ports(),
            mtls: true,
            peer_id: None,
            router: None,
        }
    }
}

impl OutboundConfig {
    /// The address to bind: `listen` when the listener is enabled.
    pub fn bind_addr(&self) -> Option<SocketAddr> {
        self.listen.filter(|_| self.enabled)
    }
}

/// The `[inbound]` section: traffic from the mesh to the local app.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct InboundConfig {
    /// Whether the listener runs. Default: true.
    pub enabled: bool,
    /// Where it listens. Default: `0.0.0.0:4143` ([`INBOUND_LISTEN`]): other pods reach the
    /// app through it. A file always sets it (TOML has no null); `None`, settable only from
    /// code, leaves the listener unbound like `enabled = false`.
    pub listen: Option<SocketAddr>,
    /// The local app, for connections that carry no original destination (no iptables
    /// redirect). Default: none — such connections are refused with a log line.
    pub target: Option<SocketAddr>,
    /// Destination ports forwarded as opaque TCP without protocol detection: protocols
    /// where the server speaks first would otherwise wait for the detect timeout. With an
    /// `[identity]`, inbound connections to these ports still have their first bytes read
    /// for a mesh TLS ClientHello (mesh peers speak TLS there too), so a plaintext client of
    /// a server-speaks-first protocol waits up to `limits.detect_timeout`.
    /// Default: [`default_opaque_ports`] (21, 22, 25, 110, 143, 587, 3306, 4444, 5432, 6379,
    /// 9300, 11211).
    pub opaque_ports: Vec<u16>,
    /// Who may connect, for every port without its own entry in `ports`: `"deny"`,
    /// `"all-unauthenticated"`, `"all-authenticated"` (any verified mesh identity) or a list
    /// of SPIFFE IDs, each exact or ending in `*`. Default: `"all-unauthenticated"`. Denied
    /// HTTP requests get 403 (gRPC `PERMISSION_DENIED`); denied TCP connections are closed
    /// before any byte reaches the application.
    pub policy: PolicyConfig,
    /// HTTP path prefix → policy, refining `policy` per route (the longest prefix decides).
    /// Default: none.
    pub paths: BTreeMap<String, PolicyConfig>,
    /// Per destination port (`[inbound.ports.8080]`): `policy` and `paths` for that port,
    /// each defaulting to the section's. Default: none.
    pub ports: BTreeMap<String, PortPolicyConfig>,
    /// Who may pass routing context (`l5d-ctx-dtab`, `l5d-dtab`) on to the application:
    /// `"loopback"`, `"mesh"` (verified mesh peers) or address ranges. Default:
    /// `["loopback", "mesh"]`; from anyone else both headers are removed.
    pub trusted_sources: Vec<super::routers::TrustedSource>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: Some(INBOUND_LISTEN),
            target: None,
            opaque_ports: default_opaque_ports(),
            policy: PolicyConfig::default(),
            paths: BTreeMap::new(),
            ports: BTreeMap::new(),
            trusted_sources: super::routers::default_trusted(),
        }
    }
}

impl InboundConfig {
    /// The address to bind: `listen` when the listener is enabled.
    pub fn bind_addr(&self) -> Option<SocketAddr> {
        self.listen.filter(|_| self.enabled)
    }
}
