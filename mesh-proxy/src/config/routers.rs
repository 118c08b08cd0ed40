//! `[routers.<name>]`: how the outbound listener names each request and rewrites the name
//! (Linkerd 1's routers, DESIGN.md §4 "Dtab").
//!
//! A router has an *identifier* — what part of the request becomes its logical name under a
//! prefix (`/svc/hello` from `Host: hello`) — and a *dtab*, parsed when the file is loaded so
//! a bad dentry stops the load with its position instead of failing requests later. Which
//! sources may extend the dtab per request (`l5d-dtab`, `l5d-ctx-dtab`) is the router's too:
//! the headers rewrite routing, so only clients the operator trusts may send them.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;

use http::StatusCode;
use ipnet::IpNet;
use mesh_core::dtab::{Dtab, Path};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// One `[routers.<name>]` section.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RouterConfig {
    /// How a request becomes a logical name. Default: `{ kind = "host", prefix = "/svc" }`.
    pub identifier: IdentifierConfig,
    /// The delegation table the logical name is rewritten with. Default: empty (every name
    /// is bound only by the namers: `/#/…` and `/$/inet/…`).
    pub dtab: RouterDtab,
    /// Who may extend the dtab per request with `l5d-dtab` and `l5d-ctx-dtab`: `"loopback"`,
    /// `"mesh"` (any peer with a verified mesh identity) or an address range
    /// (`"10.0.0.0/8"`). Default: `["loopback", "mesh"]`. From any other source both headers
    /// are removed.
    pub trusted_sources: Vec<TrustedSource>,
    /// The status of a "no route" answer (a name that binds to nothing). Default: 404.
    pub no_route_status: u16,
    /// Resilience per logical name (`[routers.NAME.service."/svc/world"]`): timeouts,
    /// retries, and per route faults. The longest prefix of a request's name applies.
    pub service: std::collections::BTreeMap<String, super::ServiceConfig>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            identifier: IdentifierConfig::default(),
            dtab: RouterDtab::default(),
            trusted_sources: default_trusted(),
            no_route_status: 404,
            service: std::collections::BTreeMap::new(),
        }
    }
}

/// The default trusted sources: loopback clients and verified mesh peers.
pub fn default_trusted() -> Vec<TrustedSource> {
    vec![TrustedSource::Loopback, TrustedSource::Mesh]
}

impl RouterConfig {
    /// The no-route status as a [`StatusCode`] (checked at load).
    pub fn no_route_status(&self) -> StatusCode {
        StatusCode::from_u16(self.no_route_status).unwrap_or(StatusCode::NOT_FOUND)
    }

    /// What types cannot check: the status is an error status.
    pub(crate) fn check(&self) -> Result<(), String> {
        if !(400..=599).contains(&self.no_route_status) {
            return Err(format!(
                "no_route_status must be an error status (400-599), not {}",
                self.no_route_status
            ));
        }
        crate::router::ServicePolicies::build(&self.service, None)?;
        let prefix = self.identifier.prefix();
        if prefix.len() > MAX_PREFIX_LABELS {
            return Err(format!(
                "identifier prefix has more than {MAX_PREFIX_LABELS} labels"
            ));
        }
        if let IdentifierConfig::Path { segments, .. } = &self.identifier
            && segments.get() > MAX_PATH_SEGMENTS
        {
            return Err(format!(
                "identifier segments must be at most {MAX_PATH_SEGMENTS}"
            ));
        }
        Ok(())
    }
}

/// The most labels an identifier prefix may have.
const MAX_PREFIX_LABELS: usize = 16;
/// The most path segments the path identifier may take.
const MAX_PATH_SEGMENTS: usize = 16;

/// What part of a request names it (`identifier = { kind = "…", … }`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum IdentifierConfig {
    /// `Host` (HTTP/1) or `:authority` (HTTP/2): `/svc/hello` for `Host: hello:8080`.
    Host {
        /// The prefix. Default `/svc`.
        #[serde(default = "svc")]
        prefix: PathText,
        /// Keep the port as part of the label (`/svc/hello:8080`). Default: false.
        #[serde(default)]
        keep_port: bool,
    },
    /// The first `segments` segments of the request path: `/svc/api/users` for
    /// `GET /api/users/7` with `segments = 2`.
    Path {
        /// The prefix. Default `/svc`.
        #[serde(default = "svc")]
        prefix: PathText,
        /// How many segments. Default 1.
        #[serde(default = "one")]
        segments: NonZeroUsize,
        /// Remove them from the path sent upstream. Default: false.
        #[serde(default)]
        consume: bool,
    },
    /// HTTP version, method and host: `/svc/1.1/GET/hello` (Linkerd 1's `methodAndHost`).
    MethodHost {
        /// The prefix. Default `/svc`.
        #[serde(default = "svc")]
        prefix: PathText,
    },
    /// Every request the same name, `path` (Linkerd 1's `io.l5d.static`): a listener that
    /// sends all its traffic to one service, routed by the dtab.
    Static {
        /// The name. Default `/svc/default`.
        #[serde(default = "default_static")]
        path: PathText,
    },
    /// A named header: a value starting with `/` is a path appended to the prefix, any other
    /// value one label (`/svc/hello` for `l5d-name: hello`).
    Header {
        /// The prefix. Default `/svc`.
        #[serde(default = "svc")]
        prefix: PathText,
        /// The header.
        name: HeaderNameText,
    },
}

impl Default for IdentifierConfig {
    fn default() -> Self {
        IdentifierConfig::Host {
            prefix: svc(),
            keep_port: false,
        }
    }
}

impl IdentifierConfig {
    /// The prefix names are made under.
    pub fn prefix(&self) -> &Path {
        match self {
            IdentifierConfig::Host { prefix, .. }
            | IdentifierConfig::Path { prefix, .. }
            | IdentifierConfig::MethodHost { prefix }
            | IdentifierConfig::Header { prefix, .. } => &prefix.0,
            IdentifierConfig::Static { path } => &path.0,
        }
    }
}

fn svc() -> PathText {
    PathText(Path::from_labels(["svc"]))
}

fn default_static() -> PathText {
    PathText(Path::from_labels(["svc", "default"]))
}

fn one() -> NonZeroUsize {
    NonZeroUsize::MIN
}

/// A dtab path in the configuration (`"/svc"`), parsed at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathText(pub Path);

impl Serialize for PathText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PathText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Path::read(&text)
            .map(PathText)
            .map_err(|e| de::Error::custom(format!("invalid path {text:?}: {e}")))
    }
}

/// A header name in the configuration, checked at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderNameText(pub http::HeaderName);

impl Serialize for HeaderNameText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for HeaderNameText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        http::HeaderName::from_bytes(text.as_bytes())
            .map(HeaderNameText)
            .map_err(|_| de::Error::custom(format!("{text:?} is not a valid header name")))
    }
}

/// A router's dtab, parsed when the configuration is loaded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouterDtab(pub Dtab);

impl Serialize for RouterDtab {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RouterDtab {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Dtab::read(&text).map(RouterDtab).map_err(|e| {
            // The position inside the dtab, as a person counts it in the file's text.
            let before = text.get(..e.offset).unwrap_or(&text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            de::Error::custom(format!(
                "invalid dtab at its line {line}, column {column}: {e}"
            ))
        })
    }
}

/// A source allowed to send `l5d-dtab` and `l5d-ctx-dtab`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustedSource {
    /// Clients on a loopback address (the local application).
    Loopback,
    /// Peers with a verified mesh identity (mTLS).
    Mesh,
    /// Clients whose address is in this range.
    Net(IpNet),
}

impl TrustedSource {
    /// Whether a client at `addr`, verified as a mesh peer or not, is this source.
    pub fn admits(&self, addr: IpAddr, mesh_peer: bool) -> bool {
        match self {
            TrustedSource::Loopback => addr.to_canonical().is_loopback(),
            TrustedSource::Mesh => mesh_peer,
            TrustedSource::Net(net) => net.contains(&addr.to_canonical()),
        }
    }
}

impl fmt::Display for TrustedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustedSource::Loopback => f.write_str("loopback"),
            TrustedSource::Mesh => f.write_str("mesh"),
            TrustedSource::Net(net) => fmt::Display::fmt(net, f),
        }
    }
}

impl std::str::FromStr for TrustedSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "loopback" => Ok(TrustedSource::Loopback),
            "mesh" => Ok(TrustedSource::Mesh),
            _ => s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(TrustedSource::Net)
                .map_err(|_| {
                    format!(
                        "{s:?} is not a trusted source: \"loopback\", \"mesh\" or an address range like \"10.0.0.0/8\""
                    )
                }),
        }
    }
}

impl Serialize for TrustedSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TrustedSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// Each router of `config`, and the router `[outbound]` names: the key, value and reason of
/// the first problem.
pub(super) fn check_routers(config: &super::Config) -> Result<(), super::load::Invalid> {
    for (name, router) in &config.routers {
        router
            .check()
            .map_err(|reason| ("routers", format!("\"{name}\""), reason))?;
    }
    if let Some(name) = &config.outbound.router
        && !config.routers.contains_key(name)
    {
        return Err((
            "outbound.router",
            format!("\"{name}\""),
            format!("no [routers.{name}] section"),
        ));
    }
    Ok(())
}
