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
use mesh_core::balance::{BalanceConfig, Balancer};
use mesh_core::body::{ProxyBody, RequestBody};
use mesh_core::cache::Cache;
use mesh_core::client::{ClientConfig, HttpEndpoint};
use mesh_core::errors::RespondLayer;
use mesh_core::errors::{GrpcCode, HttpError};
use mesh_core::identity::Identity;
use mesh_core::metrics::{HttpMetrics, TcpMetrics};
use mesh_core::resolve::Resolution;
use mesh_core::target::{Concrete, Endpoint, Logical, Name, ProtocolHint};
use mesh_discovery::namer::{BindError, Namers};
use tokio::sync::watch;
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
    /// A bound name: P2C + Peak-EWMA over its discovered endpoints, with its resolution for
    /// opaque TCP (which picks one endpoint per connection).
    Balance(Balancer, watch::Receiver<Resolution>),
    /// A path no namer could bind: every request fails, naming why.
    Unbound(Arc<BindError>),
}

impl Service<Request<RequestBody>> for ConcreteStack {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxResponse;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            ConcreteStack::Forward(endpoint) => endpoint.poll_ready(cx),
            ConcreteStack::Balance(balancer, _) => balancer.poll_ready(cx),
            ConcreteStack::Unbound(_) => Poll::Ready(Ok(())),
        }
    }

    #[inline]
    fn call(&mut self, req: Request<RequestBody>) -> BoxResponse {
        match self {
            ConcreteStack::Forward(endpoint) => endpoint.call(req),
            ConcreteStack::Balance(balancer, _) => balancer.call(req),
            ConcreteStack::Unbound(error) => {
                let error = unbound(error);
                Box::pin(std::future::ready(Err(error)))
            }
        }
    }
}

/// The error of a request to a path no namer could bind: 503 naming the path and why.
fn unbound(error: &Arc<BindError>) -> BoxError {
    #[derive(Debug, thiserror::Error)]
    #[error("no route: {0}")]
    struct NoRoute(Arc<BindError>);
    HttpError::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        GrpcCode::Unavailable,
        NoRoute(error.clone()),
    )
    .into()
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
    /// Made on first use: a connection-level destination whose requests are each routed
    /// elsewhere (a router listener's `/router/NAME`) never exports an HTTP series of zeros.
    http: std::sync::OnceLock<Arc<HttpMetrics>>,
    /// The labels `http` is made with.
    labels: (&'static str, Arc<str>, Vec<(&'static str, String)>),
    pub(crate) tcp: TcpMetrics,
    /// Answers failures with the one classifier; shares one log limit per destination.
    pub(crate) respond: RespondLayer,
}

impl LogicalTarget {
    /// The destination's HTTP metrics.
    pub(crate) fn http(&self) -> Arc<HttpMetrics> {
        self.http
            .get_or_init(|| {
                let (dir, dst, labels) = &self.labels;
                Arc::new(HttpMetrics::with_labels(dir, dst.to_string(), labels))
            })
            .clone()
    }
}

/// The per-target caches of one listener.
#[derive(Debug)]
pub(crate) struct Targets {
    direction: Direction,
    connect: Connect,
    client: ClientConfig,
    /// The identity the listener's configured target must present (`outbound.peer_id`).
    target_identity: Option<(SocketAddr, Identity)>,
    /// The namers bound paths resolve through (`/#/NAME/...`).
    namers: Arc<Namers>,
    balance: BalanceConfig,
    /// Spreads opaque connections to a bound name over its endpoints.
    next_pick: std::sync::atomic::AtomicUsize,
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
        namers: Arc<Namers>,
        balance: BalanceConfig,
    ) -> Self {
        let max = NonZeroUsize::new(MAX_TARGETS).unwrap_or(NonZeroUsize::MIN);
        Self {
            direction,
            connect,
            client,
            target_identity,
            namers,
            balance,
            next_pick: std::sync::atomic::AtomicUsize::new(0),
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

    /// The endpoint for an opaque TCP connection to `dst`: the address itself, or one of a
    /// bound name's endpoints (in turn; waiting for the name's first resolution at most the
    /// fail-fast timeout). `Err` says why there is none.
    pub(crate) async fn opaque_endpoint(&self, dst: &Name) -> Result<Endpoint, String> {
        let addr = match dst {
            Name::Addr(addr) => *addr,
            Name::Path(path) => {
                let mut resolution = match self.route_to(dst).concrete {
                    ConcreteStack::Balance(_, resolution) => resolution,
                    ConcreteStack::Unbound(error) => return Err(error.to_string()),
                    ConcreteStack::Forward(e) => return Ok(e.endpoint().clone()),
                };
                let wait = resolution.wait_for(|r| !matches!(r, Resolution::Pending));
                let set = match tokio::time::timeout(self.balance.fail_fast, wait).await {
                    Ok(Ok(r)) => r.clone(),
                    _ => return Err(format!("{path}: no answer from discovery")),
                };
                let endpoints: Vec<&Endpoint> = match &set {
                    Resolution::Endpoints(set) => set.values().collect(),
                    Resolution::DoesNotExist(why) => return Err(format!("no such name: {why}")),
                    Resolution::Pending => Vec::new(),
                };
                if endpoints.is_empty() {
                    return Err(format!("{path}: no endpoints"));
                }
                let n = self
                    .next_pick
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(endpoints[n % endpoints.len()]
                    .clone()
                    .with_protocol(ProtocolHint::Opaque));
            }
        };
        Ok(self.endpoint_at(addr).with_protocol(ProtocolHint::Opaque))
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
                http: std::sync::OnceLock::new(),
                tcp: TcpMetrics::with_labels(dir, dst.clone(), &labels),
                labels: (dir, dst.into(), labels),
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

    /// The route to a destination: for an address, its concrete stage (the endpoint
    /// itself) from the cache — the endpoint is looked up on every call, not only when the
    /// concrete stage is built, so it stays cached (and its idle connections swept) while it
    /// is in use; for a bound name, its balancer.
    pub(crate) fn route_to(&self, dst: &Name) -> FixedRoute {
        match dst {
            Name::Addr(addr) => {
                let endpoint = self.endpoint(&self.endpoint_at(*addr));
                FixedRoute::new(
                    self.concrete(&Concrete::from(*addr), |_| ConcreteStack::Forward(endpoint)),
                )
            }
            Name::Path(path) => FixedRoute::new(
                self.concrete(&Concrete::new(dst.clone()), |_| self.balance_over(path)),
            ),
        }
    }

    /// The balancer over a name a dtab bound (`id`, resolving through `resolution`), cached
    /// as the concrete destination `id`.
    pub(crate) fn balanced(
        &self,
        id: &Arc<str>,
        resolution: watch::Receiver<Resolution>,
    ) -> ConcreteStack {
        let concrete = Concrete::new(Name::Path(id.clone()));
        self.concrete(&concrete, |_| self.balance(id.clone(), resolution))
    }

    /// Keeps a bound name's concrete stack cached (a live route uses it).
    pub(crate) fn touch(&self, bound: &crate::router::BoundName) {
        match &bound.target {
            crate::router::BoundTarget::Addr(addr) => {
                self.route_to(&Name::Addr(*addr));
            }
            crate::router::BoundTarget::Resolved(_) => {
                let _ = self
                    .concretes
                    .get(&Concrete::new(Name::Path(bound.id.clone())));
            }
        }
    }

    /// A balancer over the endpoints `path` binds to. Each endpoint gets its own HTTP client
    /// (not shared through the endpoint cache): when the endpoint leaves discovery, the
    /// balancer drops it and its connections with it.
    fn balance_over(&self, path: &Arc<str>) -> ConcreteStack {
        match self.namers.bind_path(path) {
            Ok(bound) => self.balance(path.clone(), bound.resolution),
            Err(error) => {
                tracing::warn!(%path, %error, "cannot bind");
                ConcreteStack::Unbound(Arc::new(error))
            }
        }
    }

    /// A balancer named `name` over `resolution`'s endpoints.
    fn balance(&self, name: Arc<str>, resolution: watch::Receiver<Resolution>) -> ConcreteStack {
        let (connect, client) = (self.connect.clone(), self.client);
        let balancer = Balancer::new(
            name,
            resolution.clone(),
            move |e: &Endpoint| HttpEndpoint::new(e.clone(), connect.clone(), client),
            &self.balance,
        );
        ConcreteStack::Balance(balancer, resolution)
    }

    /// Every balanced destination of this listener, for `/endpoints.json` and the
    /// `mesh_endpoints` gauge.
    pub(crate) fn balancers(&self) -> Vec<Balancer> {
        self.concretes
            .services()
            .into_iter()
            .filter_map(|c| match c {
                ConcreteStack::Balance(b, _) => Some(b),
                ConcreteStack::Forward(_) | ConcreteStack::Unbound(_) => None,
            })
            .collect()
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
/// destination chosen when the connection was accepted. A listener with a router uses
/// `router::RouterStack` instead, which names the destination per request.
#[derive(Clone, Debug)]
pub(crate) struct FixedRoute {
    pub(crate) concrete: ConcreteStack,
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
