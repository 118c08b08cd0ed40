//! The targets each stage of a stack is built for (DESIGN.md §3).
//!
//! A request passes three stages, each built per target and cached
//! ([`crate::cache::Cache`]):
//!
//! 1. **route** — the request becomes a [`Logical`] destination: what the application asked
//!    for. Today's rule is the connection's original destination or the listener's target;
//!    dtab routing replaces the rule (identify → dtab → name tree), not the stage.
//! 2. **per concrete destination** — a [`Concrete`] name the logical one was bound to (a
//!    traffic split picks one of several): response timeout today; retries and the balancer
//!    over discovered endpoints later.
//! 3. **per endpoint** — an [`Endpoint`]: one address, with what is known about it from
//!    discovery — the identity it must present (mTLS checks it), the protocol it speaks, its
//!    weight and free-form labels (zone, node). The connect stack takes an `Endpoint`, so mTLS
//!    wraps it without touching its callers.
//!
//! Configuration travels with the target as typed values, never as loose `Duration`s or
//! `bool`s threaded through function arguments.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use crate::identity::Identity;

/// What a destination is called before it is bound to endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Name {
    /// A socket address: an original destination, or a listener's configured target.
    Addr(SocketAddr),
    /// A path such as `/svc/world` or `/#/fs/world` (dtab routing).
    Path(Arc<str>),
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Addr(a) => fmt::Display::fmt(a, f),
            Name::Path(p) => f.write_str(p),
        }
    }
}

/// A destination known by a [`Name`], with its printed form kept for labels and errors.
macro_rules! named_target {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $ty {
            name: Name,
            text: Arc<str>,
        }

        impl $ty {
            /// The destination `name`.
            pub fn new(name: Name) -> Self {
                let text = name.to_string().into();
                Self { name, text }
            }

            /// Its name.
            pub fn name(&self) -> &Name {
                &self.name
            }

            /// Its name as shared text (for labels and error messages, without formatting
            /// again).
            pub fn text(&self) -> &Arc<str> {
                &self.text
            }
        }

        impl From<SocketAddr> for $ty {
            fn from(addr: SocketAddr) -> Self {
                Self::new(Name::Addr(addr))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.text)
            }
        }
    };
}

named_target! {
    /// A logical destination: what the application asked for. The `dst` metric label.
    Logical
}

named_target! {
    /// A concrete destination: a name bound to a set of endpoints (or, today, one address).
    Concrete
}

/// The protocol an endpoint is known to speak, when discovery knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProtocolHint {
    /// Unknown: requests keep the HTTP version they arrived in.
    #[default]
    Unknown,
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 (prior knowledge).
    Http2,
    /// Not HTTP: bytes are forwarded as they are.
    Opaque,
}

/// Free-form endpoint labels (zone, node, ...), shared and immutable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels(Arc<[(Arc<str>, Arc<str>)]>);

impl Labels {
    /// Labels from `(key, value)` pairs, sorted by key.
    pub fn new(
        pairs: impl IntoIterator<Item = (impl Into<Arc<str>>, impl Into<Arc<str>>)>,
    ) -> Self {
        let mut v: Vec<(Arc<str>, Arc<str>)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        v.sort();
        Self(v.into())
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| &**k == key).map(|(_, v)| &**v)
    }

    /// Every `(key, value)` pair, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

/// One endpoint: an address and what is known about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    addr: SocketAddr,
    identity: Option<Identity>,
    protocol: ProtocolHint,
    weight: NonZeroU32,
    labels: Labels,
}

impl Endpoint {
    /// An endpoint at `addr` with nothing else known: no expected identity, unknown
    /// protocol, weight 1, no labels.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            identity: None,
            protocol: ProtocolHint::Unknown,
            weight: NonZeroU32::MIN,
            labels: Labels::default(),
        }
    }

    /// The identity the endpoint must present (mTLS).
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The protocol the endpoint speaks.
    pub fn with_protocol(mut self, protocol: ProtocolHint) -> Self {
        self.protocol = protocol;
        self
    }

    /// The endpoint's share of its destination's traffic, relative to its siblings.
    pub fn with_weight(mut self, weight: NonZeroU32) -> Self {
        self.weight = weight;
        self
    }

    /// The endpoint's labels.
    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The identity it must present, if known.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The protocol it speaks, if known.
    pub fn protocol(&self) -> ProtocolHint {
        self.protocol
    }

    /// Its weight.
    pub fn weight(&self) -> NonZeroU32 {
        self.weight
    }

    /// Its labels.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.addr, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_print_as_addresses_or_paths() {
        let a: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        assert_eq!(Logical::from(a).to_string(), "127.0.0.1:8080");
        assert_eq!(
            Concrete::new(Name::Path("/#/fs/world".into()))
                .text()
                .as_ref(),
            "/#/fs/world"
        );
        let v6: SocketAddr = "[::1]:80".parse().expect("addr");
        assert_eq!(Logical::from(v6).to_string(), "[::1]:80");
    }

    #[test]
    fn endpoints_carry_identity_weight_and_labels() {
        let a: SocketAddr = "127.0.0.1:8081".parse().expect("addr");
        let id: Identity = "spiffe://td/ns/a/sa/b".parse().expect("id");
        let e = Endpoint::new(a)
            .with_identity(id.clone())
            .with_weight(NonZeroU32::new(2).expect("2"))
            .with_labels(Labels::new([("zone", "b"), ("node", "n1")]));
        assert_eq!(e.identity(), Some(&id));
        assert_eq!(e.weight().get(), 2);
        assert_eq!(e.labels().get("zone"), Some("b"));
        assert_eq!(
            e.labels().iter().collect::<Vec<_>>(),
            vec![("node", "n1"), ("zone", "b")]
        );
        assert_ne!(e, Endpoint::new(a), "identity is part of the endpoint");
    }
}
