//! Per-target state, built once and shared by every connection to the same destination:
//! the upstream connection pool and the metric handles (DESIGN.md §3, "per-target stacks").
//!
//! A sidecar that follows original destinations sees an open-ended set of targets, so the
//! cache is bounded: it holds at most [`MAX_TARGETS`] entries, and a periodic sweep drops
//! entries no connection uses and that keep no idle upstream connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use mesh_core::client::{ClientConfig, HttpEndpoint};
use mesh_core::connect::TcpConnect;
use mesh_core::metrics::{HttpMetrics, TcpMetrics};

use crate::Direction;
use crate::ratelog::LogLimit;

/// The most targets one listener caches.
pub(crate) const MAX_TARGETS: usize = 10_000;

/// Everything the proxy keeps per destination address.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) direction: Direction,
    pub(crate) addr: SocketAddr,
    pub(crate) endpoint: HttpEndpoint<TcpConnect>,
    pub(crate) http: HttpMetrics,
    pub(crate) tcp: TcpMetrics,
    /// Limits "request failed" log lines for this target.
    pub(crate) failures: LogLimit,
}

/// The targets of one listener.
#[derive(Debug)]
pub(crate) struct Targets {
    direction: Direction,
    connect: TcpConnect,
    client: ClientConfig,
    cache: Mutex<HashMap<SocketAddr, Arc<Target>>>,
}

impl Targets {
    pub(crate) fn new(direction: Direction, connect: TcpConnect, client: ClientConfig) -> Self {
        Self {
            direction,
            connect,
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The target for `addr`, built on first use.
    pub(crate) fn get(&self, addr: SocketAddr) -> Arc<Target> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = cache.get(&addr) {
            return t.clone();
        }
        let target = Arc::new(self.build(addr));
        if cache.len() < MAX_TARGETS {
            cache.insert(addr, target.clone());
        }
        target
    }

    fn build(&self, addr: SocketAddr) -> Target {
        let dst = addr.to_string();
        let dir = self.direction.as_str();
        Target {
            direction: self.direction,
            addr,
            endpoint: HttpEndpoint::new(addr.into(), self.connect, self.client),
            http: HttpMetrics::new(dir, dst.clone()),
            tcp: TcpMetrics::new(dir, dst),
            failures: LogLimit::new(),
        }
    }

    /// Closes expired idle upstream connections and forgets unused targets.
    pub(crate) fn sweep(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, t| {
            let idle = t.endpoint.evict_expired();
            Arc::strong_count(t) > 1 || idle > 0
        });
    }
}
