//! Endpoint discovery: turning a destination into the addresses that serve it.
//!
//! Discovery sits between routing and balancing (DESIGN.md §3): a router names a concrete
//! destination, a resolver yields its endpoints, and the balancer spreads requests over them.
//! File, DNS and control-plane resolvers arrive with the discovery wave; the static resolver
//! here is what a proxy uses when a listener names its target outright.

use std::net::SocketAddr;

/// A destination resolved to a fixed set of addresses that never changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticEndpoints {
    addrs: Vec<SocketAddr>,
}

/// A static destination needs at least one address.
#[derive(Debug, thiserror::Error)]
#[error("a static destination needs at least one address")]
pub struct NoEndpoints;

impl StaticEndpoints {
    /// A destination served by `addrs`.
    ///
    /// # Errors
    ///
    /// [`NoEndpoints`] when `addrs` is empty.
    pub fn new(addrs: Vec<SocketAddr>) -> Result<Self, NoEndpoints> {
        if addrs.is_empty() {
            return Err(NoEndpoints);
        }
        Ok(Self { addrs })
    }

    /// The addresses, in configuration order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_an_address() {
        assert!(StaticEndpoints::new(vec![]).is_err());
        let a: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        assert_eq!(StaticEndpoints::new(vec![a]).expect("one").addrs(), &[a]);
    }
}
