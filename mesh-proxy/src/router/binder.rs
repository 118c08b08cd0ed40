//! What the dtab's leaves bind to in the proxy: the configured namers at `/#/NAME/…` and the
//! built-in `/$/inet/<host>/<port>`.
//!
//! Binding here is synchronous and cheap, as the namers' is: it yields a name and a live
//! [`Resolution`] watch, never waits for discovery. So a route can be bound on the request
//! path (once, then cached), and a name whose endpoints come and go is followed by its watch
//! instead of by binding again.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_core::dtab::{BindError, Binder, Path};
use mesh_core::resolve::Resolution;
use mesh_discovery::dns_namer::DnsNamer;
use mesh_discovery::namer::{BindError as NamerError, Namer, Namers};
use tokio::sync::watch;

/// A leaf a dtab binding ended in.
#[derive(Clone, Debug)]
pub(crate) struct BoundName {
    /// The bound name without its residual: `/#/fs/hello`, `/$/inet/127.0.0.1/8080`.
    pub(crate) id: Arc<str>,
    /// Where it resolves to.
    pub(crate) target: BoundTarget,
}

/// Where a bound name's requests go.
#[derive(Clone, Debug)]
pub(crate) enum BoundTarget {
    /// One literal address (`/$/inet/127.0.0.1/8080`).
    Addr(SocketAddr),
    /// A live set of endpoints (a namer's name, or `/$/inet` with a host name).
    Resolved(watch::Receiver<Resolution>),
}

impl BoundName {
    /// How many endpoints it has now (`None` while its first resolution is pending).
    pub(crate) fn endpoints(&self) -> Option<usize> {
        match &self.target {
            BoundTarget::Addr(_) => Some(1),
            BoundTarget::Resolved(rx) => match &*rx.borrow() {
                Resolution::Pending => None,
                Resolution::DoesNotExist(_) => Some(0),
                Resolution::Endpoints(set) => Some(set.len()),
            },
        }
    }

    /// Its JSON for `/delegator.json`: the id, the endpoints it has now, and its state —
    /// `ready`, `resolving`, `empty`, or `missing` (the namer says the name does not exist;
    /// requests then fall back as from a negative branch).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let state = match &self.target {
            BoundTarget::Addr(_) => "ready",
            BoundTarget::Resolved(rx) => match &*rx.borrow() {
                Resolution::Pending => "resolving",
                Resolution::DoesNotExist(_) => "missing",
                Resolution::Endpoints(set) if set.is_empty() => "empty",
                Resolution::Endpoints(_) => "ready",
            },
        };
        serde_json::json!({ "id": &*self.id, "endpoints": self.endpoints(), "state": state })
    }
}

impl std::fmt::Display for BoundName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.endpoints() {
            Some(n) => write!(f, "{} ({n} endpoints)", self.id),
            None => write!(f, "{} (resolving)", self.id),
        }
    }
}

/// Binds the leaves a dtab leaves to the namers: the listener's configured namers and a DNS
/// resolver (the system's) for `/$/inet` host names.
#[derive(Clone, Debug)]
pub(crate) struct ProxyBinder {
    pub(crate) namers: Arc<Namers>,
    /// `None` when the system resolver could not be set up (a host name in `/$/inet` is then
    /// a binding error naming why).
    pub(crate) inet: Option<Arc<DnsNamer>>,
}

impl Binder for ProxyBinder {
    type Bound = BoundName;

    fn bind_namer(&self, path: &Path) -> Result<Option<BoundName>, BindError> {
        let text = namer_text(path)?;
        match self.namers.bind_path(&text) {
            Ok(bound) => Ok(Some(BoundName {
                id: bound.id.into(),
                target: BoundTarget::Resolved(bound.resolution),
            })),
            // As in Linkerd 1: a path under no configured namer is negative, so an
            // alternation may fall back from it.
            Err(NamerError::UnknownNamer { .. }) => Ok(None),
            Err(e) => Err(BindError::Namer {
                path: path.clone(),
                message: e.to_string(),
            }),
        }
    }

    fn bind_inet(&self, host: &str, port: u16, _residual: &Path) -> Result<BoundName, BindError> {
        // `/$/inet/<port>`: no host is the local host, as in Finagle.
        let host = if host.is_empty() { "127.0.0.1" } else { host };
        let id: Arc<str> = format!("/$/inet/{host}/{port}").into();
        let host_ip = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host_ip.parse::<IpAddr>() {
            return Ok(BoundName {
                id,
                target: BoundTarget::Addr(SocketAddr::new(ip, port)),
            });
        }
        let fail = |message: String| BindError::Namer {
            path: Path::from_labels(["$", "inet", host, &port.to_string()]),
            message,
        };
        let Some(dns) = &self.inet else {
            return Err(fail(format!(
                "cannot resolve host name {host:?}: no system DNS configuration"
            )));
        };
        let bound = dns
            .bind(&[host, &port.to_string()])
            .map_err(|e| fail(e.to_string()))?;
        Ok(BoundName {
            id,
            target: BoundTarget::Resolved(bound.resolution),
        })
    }
}

/// A `/#/…` path as the namers' text form; a label they could not read (not UTF-8, or
/// holding a `/`) is an error naming the path.
fn namer_text(path: &Path) -> Result<String, BindError> {
    let mut text = String::new();
    for i in 0..path.len() {
        match path.label_str(i) {
            Some(label) if !label.contains('/') => {
                text.push('/');
                text.push_str(label);
            }
            _ => {
                return Err(BindError::Namer {
                    path: path.clone(),
                    message: "a namer path's labels must be UTF-8 without '/'".into(),
                });
            }
        }
    }
    Ok(text)
}
