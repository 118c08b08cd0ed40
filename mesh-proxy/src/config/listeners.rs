//! The two proxy listeners, each its own section type.
//!
//! Inbound and outbound accept the same keys today, but they are different sections that grow
//! apart: outbound will name the router that resolves its traffic (`router = "default"`),
//! inbound will carry the authorization policy its peers must satisfy (`policy = ...`). Two
//! types, each with `deny_unknown_fields`, mean a key that belongs to one direction is
//! rejected in the other with its line, instead of being accepted and ignored.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

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
    /// redirect). Default: none — such connections are refused with a log line.
    pub target: Option<SocketAddr>,
    /// Destination ports forwarded as opaque TCP without protocol detection: protocols
    /// where the server speaks first would otherwise wait for the detect timeout.
    /// Default: [`default_opaque_ports`] (21, 22, 25, 110, 143, 587, 3306, 4444, 5432, 6379,
    /// 9300, 11211).
    pub opaque_ports: Vec<u16>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: Some(OUTBOUND_LISTEN),
            target: None,
            opaque_ports: default_opaque_ports(),
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
    /// where the server speaks first would otherwise wait for the detect timeout.
    /// Default: [`default_opaque_ports`] (21, 22, 25, 110, 143, 587, 3306, 4444, 5432, 6379,
    /// 9300, 11211).
    pub opaque_ports: Vec<u16>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: Some(INBOUND_LISTEN),
            target: None,
            opaque_ports: default_opaque_ports(),
        }
    }
}

impl InboundConfig {
    /// The address to bind: `listen` when the listener is enabled.
    pub fn bind_addr(&self) -> Option<SocketAddr> {
        self.listen.filter(|_| self.enabled)
    }
}
