//! Discovery and balancing settings: `[namers.<name>]`, `[balancer]`, and the outbound
//! target that may name a bound path instead of an address.
//!
//! Namers are shared by the whole process and referenced as `/#/<name>/…` (Linkerd 1's
//! form): `outbound.target = "/#/fs/hello"` sends the listener's traffic to the balancer over
//! the endpoints the `fs` namer binds `hello` to. The routers (`[routers.<name>]`) reference
//! the same namers from their dtabs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_core::target::Name;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// One `[namers.<name>]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum NamerConfig {
    /// Endpoints listed in the file: `services.hello = ["127.0.0.1:8081",
    /// "127.0.0.1:8082 weight=2 id=spiffe://td/ns/a/sa/b zone=b"]` → `/#/<name>/hello`.
    Static {
        /// Service name → endpoint lines.
        services: BTreeMap<String, Vec<String>>,
    },
    /// One file per service in `dir` (`/#/<name>/hello` is `dir/hello`), one endpoint a line
    /// in the same syntax, `#` comments; edits are applied within a second, an invalid edit
    /// is logged and the last good set kept, a missing file means the name does not exist.
    File {
        /// The directory of endpoint files.
        dir: PathBuf,
    },
    /// DNS A and AAAA records: `/#/<name>/<host>/<port>`, refreshed by the answer's TTL
    /// (within `min_ttl`..`max_ttl`); NXDOMAIN means the name does not exist; a failed lookup
    /// keeps the last good set.
    Dns(DnsSettings),
    /// DNS SRV records: `/#/<name>/<srv name>` (e.g. `_http._tcp.hello.example`), ports and
    /// weights from the records (weights are shown, not yet used by the balancer), targets
    /// resolved to addresses.
    DnsSrv(DnsSettings),
}

/// The settings of a DNS namer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSettings {
    /// The nameserver to ask (UDP and TCP), e.g. `"127.0.0.1:5353"`. Default: the system's
    /// (`/etc/resolv.conf`).
    pub nameserver: Option<SocketAddr>,
    /// The shortest refresh interval, whatever the TTL. Default: 5s.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// The longest refresh interval, whatever the TTL. Default: 5m.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Bound on one query. Default: 2s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            nameserver: None,
            min_ttl: mesh_discovery::dns_namer::DEFAULT_MIN_TTL,
            max_ttl: mesh_discovery::dns_namer::DEFAULT_MAX_TTL,
            timeout: mesh_discovery::dns_namer::DEFAULT_TIMEOUT,
        }
    }
}

impl DnsSettings {
    /// The namer configuration of kind `kind` these settings describe.
    pub fn dns_config(
        &self,
        kind: mesh_discovery::dns_namer::DnsKind,
    ) -> mesh_discovery::dns_namer::DnsConfig {
        let mut c = mesh_discovery::dns_namer::DnsConfig::new(kind);
        c.nameserver = self.nameserver;
        c.min_ttl = self.min_ttl;
        c.max_ttl = self.max_ttl;
        c.timeout = self.timeout;
        c
    }
}

/// The `[balancer]` section: how requests are spread over a bound name's endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerSettings {
    /// The latency assumed of an endpoint before it has answered (Peak-EWMA). Default: 1ms —
    /// optimistic, so every new endpoint is tried (its warm-up lets one request through until
    /// it answers) and then judged on what it measured.
    #[serde(with = "humantime_serde")]
    pub default_rtt: Duration,
    /// How fast old latency samples fade (Peak-EWMA). Default: 10s.
    #[serde(with = "humantime_serde")]
    pub decay: Duration,
    /// Consecutive failures (connect errors, 5xx, gRPC errors) that eject an endpoint.
    /// Default: 5.
    pub failures: u32,
    /// The first ejection's length; each further one doubles, with jitter. Default: 1s.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    /// The longest ejection. Default: 60s.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long requests wait for a ready endpoint before failing at once with 503.
    /// Default: 3s.
    #[serde(with = "humantime_serde")]
    pub fail_fast_timeout: Duration,
    /// Requests queued per destination while no endpoint is ready. Default: 100.
    pub queue: usize,
}

impl Default for BalancerSettings {
    fn default() -> Self {
        let d = mesh_core::balance::BalanceConfig::default();
        Self {
            default_rtt: d.default_rtt,
            decay: d.decay,
            failures: d.accrual.failures,
            min_backoff: d.accrual.min_backoff,
            max_backoff: d.accrual.max_backoff,
            fail_fast_timeout: d.fail_fast,
            queue: d.queue,
        }
    }
}

impl BalancerSettings {
    /// The balancer configuration these settings describe.
    pub fn balance_config(&self) -> mesh_core::balance::BalanceConfig {
        mesh_core::balance::BalanceConfig {
            default_rtt: self.default_rtt,
            decay: self.decay,
            accrual: mesh_core::balance::AccrualConfig {
                failures: self.failures,
                min_backoff: self.min_backoff,
                max_backoff: self.max_backoff,
            },
            fail_fast: self.fail_fast_timeout,
            queue: self.queue,
        }
    }
}

/// Where the outbound listener sends connections that carry no original destination: an
/// address (`"127.0.0.1:8080"`) or a bound path (`"/#/fs/hello"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundTarget(pub Name);

impl OutboundTarget {
    /// The address, when the target is one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match &self.0 {
            Name::Addr(a) => Some(*a),
            Name::Path(_) => None,
        }
    }

    /// The path, when the target is a bound name.
    pub fn path(&self) -> Option<&str> {
        match &self.0 {
            Name::Path(p) => Some(p),
            Name::Addr(_) => None,
        }
    }
}

impl From<SocketAddr> for OutboundTarget {
    fn from(addr: SocketAddr) -> Self {
        Self(Name::Addr(addr))
    }
}

impl fmt::Display for OutboundTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for OutboundTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        match s.strip_prefix("/#/") {
            Some(rest) if !rest.is_empty() && !rest.split('/').any(str::is_empty) => {
                Ok(Self(Name::Path(s.into())))
            }
            _ => Err(format!(
                "{s:?} is neither an address (ip:port) nor a bound path (/#/<namer>/<name>)"
            )),
        }
    }
}

impl Serialize for OutboundTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OutboundTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}
