//! Workload identities: the names mesh peers authenticate each other by.
//!
//! Mesh peers present X.509 certificates whose URI SAN carries a SPIFFE ID
//! (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`). The type lives in mesh-core, not mesh-tls,
//! because more than TLS names peers by it: discovery carries the identity an endpoint is
//! expected to present ([`crate::target::Endpoint`]), and authorization policy,
//! `l5d-client-id` and the `peer_id` metric label name the verified one. mesh-tls verifies
//! certificates against it.

use std::fmt;
use std::str::FromStr;

/// A workload identity: a validated SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity(spiffe::SpiffeId);

/// The text is not a valid SPIFFE ID.
#[derive(Debug, thiserror::Error)]
#[error("invalid SPIFFE ID {input:?}: {reason}")]
pub struct InvalidIdentity {
    input: String,
    reason: String,
}

impl Identity {
    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        self.0.trust_domain().as_str()
    }

    /// The path, e.g. `/ns/default/sa/web`.
    pub fn path(&self) -> &str {
        self.0.path()
    }
}

impl FromStr for Identity {
    type Err = InvalidIdentity;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        spiffe::SpiffeId::new(s)
            .map(Identity)
            .map_err(|e| InvalidIdentity {
                input: s.chars().take(256).collect(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/web"
            .parse()
            .expect("valid");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "http://cluster.local/x",
            "spiffe://",
            "spiffe://td/a//b",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }
}
