//! The per-target pieces a listener's stacks are built from, and the caches that hold them
//! (DESIGN.md §3, "per-target stacks").
//!
//! Three caches, one per stage: per logical destination (metric handles, the error
//! responder's log limit), per concrete destination (the stage retries, per-route timeouts
//! and the balancer will fill), per endpoint (the HTTP client and its connection pool). Each
//! is bounded in count and forgets targets nobody has looked up for [`TARGET_IDLE`]; an
//! endpoint that still keeps idle pooled connections stays until they expire.
//!
//! `outbound.rs` and `inbound.rs` compose these into a stack per client connection.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use mesh_core::BoxError;
use mesh_core::body::{ProxyBody, RequestBody};
use mesh_core::cache::Cache;
use mesh_core::client::{ClientConfig, HttpEndpoint};
use mesh_core::errors::RespondLayer;
use mesh_core::identity::Identity;
use mesh_core::metrics::{HttpMetrics, TcpMetrics};
use mesh_core::target::{Concrete, Endpoint, Logical, ProtocolHint};
use tower_service::Service;

use crate::Direction;
use crate::connect::Connect;

/// The most targets each cache of one listener holds.
pub(crate) const MAX_TARGETS: usize = 10_000;

/// How long a target nobody looks up stays cached.
pub(crate) const TARGET_IDLE: Duration = Duration::from_secs(60);

/// The response future at a stage boundary.
pub(crate) type BoxResponse =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

/// The per-concrete-destination stage: one variant per shape it can take, one `match`.
///
/// An enum rather than a boxed trait object: cloning it (once per request, by the route
/// stage) is a reference-count increment, not an allocation, and calling it costs the one
/// boxed future of its inner service. Retries, per-route timeouts and the balancer add
/// variants.
#[derive(Clone, Debug)]
pub(crate) enum ConcreteStack {
    /// One endpoint, forwarded to directly (a destination named by its address).
    Forward(HttpEndpoint<Connect>),
}

impl Service<Request<RequestBody>> for ConcreteStack {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxResponse;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            ConcreteStack::Forward(endpoint) => endpoint.poll_ready(cx),
        }
    }

    #[inline]
    fn call(&mut self, req: Request<RequestBody>) -> BoxResponse {
        match self {
            ConcreteStack::Forward(endpoint) => endpoint.call(req),
        }
    }
}

/// Who the client of an inbound connection is, as far as the proxy can vouch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Peer {
    /// Not an inbound connection: no peer labels.
    Local,
    /// No verified identity (plaintext, or TLS passed through).
    Unauthenticated,
    /// A mesh TLS peer with this verified identity.
    Mesh(Identity),
}

impl Peer {
    /// The verified identity, if any.
    pub(crate) fn identity(&self) -> Option<&Identity> {
        match self {
            Peer::Mesh(id) => Some(id),
            Peer::Local | Peer::Unauthenticated => None,
        }
    }

    /// The `tls` and `peer_id` metric labels (none for [`Peer::Local`]).
    fn labels(&self) -> Vec<(&'static str, String)> {
        match self {
            Peer::Local => Vec::new(),
            Peer::Unauthenticated => vec![("tls", "false".into()), ("peer_id", String::new())],
            Peer::Mesh(id) => vec![("tls", "true".into()), ("peer_id", id.to_string())],
        }
    }
}

/// What a listener keeps per logical destination (and, inbound, per peer identity).
#[derive(Debug)]
pub(crate) struct LogicalTarget {
    pub(crate) logical: Logical,
    pub(crate) peer: Peer,
    pub(crate) http: Arc<HttpMetrics>,
    pub(crate) tcp: TcpMetrics,
    /// Answers failures with the one classifier; shares one log limit per destination.
    pub(crate) respond: RespondLayer,
}

/// The per-target caches of one listener.
#[derive(Debug)]
pub(crate) struct Targets {
    direction: Direction,
    connect: Connect,
    client: ClientConfig,
    /// The identity the listener's configured target must present (`outbound.peer_id`).
    target_identity: Option<(SocketAddr, Identity)>,
    logicals: Cache<(Logical, Peer), Arc<LogicalTarget>>,
    concretes: Cache<Concrete, ConcreteStack>,
    endpoints: Cache<Endpoint, HttpEndpoint<Connect>>,
}

impl Targets {
    pub(crate) fn new(
        direction: Direction,
        connect: Connect,
        client: ClientConfig,
        target_identity: Option<(SocketAddr, Identity)>,
    ) -> Self {
        let max = NonZeroUsize::new(MAX_TARGETS).unwrap_or(NonZeroUsize::MIN);
        Self {
            direction,
            connect,
            client,
            target_identity,
            logicals: Cache::new(max, TARGET_IDLE),
            concretes: Cache::new(max, TARGET_IDLE),
            endpoints: Cache::new(max, TARGET_IDLE),
        }
    }

    /// The connect stack: plain TCP, or mesh TLS over it.
    pub(crate) fn connect(&self) -> Connect {
        self.connect.clone()
    }

    /// The endpoint target for an address: what it is expected to present, if known.
    pub(crate) fn endpoint_at(&self, addr: SocketAddr) -> Endpoint {
        match &self.target_identity {
            Some((target, id)) if *target == addr => Endpoint::from(addr).with_identity(id.clone()),
            _ => Endpoint::from(addr),
        }
    }

    /// The endpoint target for an opaque TCP connection to `addr`.
    pub(crate) fn opaque_endpoint(&self, addr: SocketAddr) -> Endpoint {
        self.endpoint_at(addr).with_protocol(ProtocolHint::Opaque)
    }

    /// The logical destination's shared pieces, for a client that is `peer`.
    pub(crate) fn logical(&self, logical: &Logical, peer: &Peer) -> Arc<LogicalTarget> {
        let key = (logical.clone(), peer.clone());
        self.logicals.get_or_build(&key, |(l, peer)| {
            let dir = self.direction.as_str();
            let dst = l.text().to_string();
            let labels = peer.labels();
            Arc::new(LogicalTarget {
                logical: l.clone(),
                peer: peer.clone(),
                http: Arc::new(HttpMetrics::with_labels(dir, dst.clone(), &labels)),
                tcp: TcpMetrics::with_labels(dir, dst, &labels),
                respond: RespondLayer::new(l.text().clone()),
            })
        })
    }

    /// The concrete destination's stack, built by `build` on first use.
    pub(crate) fn concrete(
        &self,
        concrete: &Concrete,
        build: impl FnOnce(&Concrete) -> ConcreteStack,
    ) -> ConcreteStack {
        self.concretes.get_or_build(concrete, build)
    }

    /// The endpoint's HTTP client.
    pub(crate) fn endpoint(&self, endpoint: &Endpoint) -> HttpEndpoint<Connect> {
        self.endpoints.get_or_build(endpoint, |e| {
            HttpEndpoint::new(e.clone(), self.connect.clone(), self.client)
        })
    }

    /// The route to a destination named by its address: its concrete stage (today the
    /// endpoint itself) from the cache. The endpoint is looked up on every call, not only
    /// when the concrete stage is built, so it stays cached — and its idle connections
    /// swept — while it is in use.
    pub(crate) fn route_to(&self, addr: SocketAddr) -> FixedRoute {
        let endpoint = self.endpoint(&self.endpoint_at(addr));
        FixedRoute::new(self.concrete(&Concrete::from(addr), |_| ConcreteStack::Forward(endpoint)))
    }

    /// Closes expired idle upstream connections and forgets targets nobody looked up.
    pub(crate) fn sweep(&self) {
        self.logicals.evict_idle(|_| false);
        self.concretes.evict_idle(|_| false);
        for endpoint in self.endpoints.services() {
            endpoint.evict_expired();
        }
        self.endpoints.evict_idle(|e| e.evict_expired() > 0);
    }
}

/// The route stage for a connection whose logical destination is fixed (its original
/// destination or the listener's target): every request goes to the one concrete
/// destination chosen when the connection was accepted. Dtab routing replaces this stage
/// with one that names the destination per request.
#[derive(Clone, Debug)]
pub(crate) struct FixedRoute {
    concrete: ConcreteStack,
}

impl FixedRoute {
    pub(crate) fn new(concrete: ConcreteStack) -> Self {
        Self { concrete }
    }
}

impl Service<Request<RequestBody>> for FixedRoute {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxResponse;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.concrete.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        self.concrete.call(req)
    }
}
