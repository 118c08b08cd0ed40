//! Dtab routing: the route stage that names each request and binds the name per request
//! (Linkerd 1's router, DESIGN.md §3 and §4).
//!
//! A request passes four steps, all here: the identifier names it (`/svc/hello`); the
//! router's dtab, extended by a trusted client's `l5d-dtab`/`l5d-ctx-dtab`, delegates the
//! name to a tree of bound names; the tree — cached per dtab and name — picks one concrete
//! destination for this request; that destination's stack (a balancer over the name's
//! endpoints, or one address) serves it. Everything above the concrete stage — metrics by
//! `dst`, the one error classifier, the framing checks, upgrades, the response deadline — is
//! the same stack every listener uses, built for the request's logical name.
//!
//! The router's settings (identifier, dtab, trusted sources) sit behind one atomic pointer
//! with a generation: a reload replaces them whole, requests in flight finish on the old
//! ones, and routes bound under the old dtab are never looked up again (their generation is
//! part of the cache key) and age out of the cache.

mod binder;
mod context;
mod identify;
mod policy;
mod service;
mod tree;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use http::{Request, StatusCode};
use mesh_core::BoxError;
use mesh_core::body::ReplayMemory;
use mesh_core::cache::Cache;
use mesh_core::dtab::{Dtab, Path, delegate};
use mesh_core::errors::{GrpcCode, HttpError};
use mesh_core::target::{Logical, Name};
use mesh_discovery::dns_namer::DnsNamer;
use mesh_discovery::namer::Namers;

pub(crate) use self::binder::{BoundName, BoundTarget, ProxyBinder};
pub(crate) use self::context::strip as strip_context;
use self::identify::Identifier;
pub(crate) use self::policy::ServicePolicies;
pub(crate) use self::service::RouterStack;
use self::tree::{Pick, RouteTree};
use crate::config::{RouterConfig, TrustedSource};
use crate::stack::{ConcreteStack, LogicalTarget, MAX_TARGETS, Peer, TARGET_IDLE, Targets};

/// The `dst` label of requests whose name binds to nothing: bounded, whatever clients send.
const UNKNOWN: &str = "unknown";

/// The most logical names one router labels metrics with (see [`Router::logical_for`]).
const MAX_DST_LABELS: usize = 1000;

/// How long a route whose binding failed is kept before the next request binds it again.
const ERROR_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// A router's settings in force; replaced whole by a reload.
#[derive(Debug)]
struct Settings {
    generation: u64,
    identifier: Identifier,
    dtab: Dtab,
    trusted: Vec<TrustedSource>,
    no_route: StatusCode,
    policies: ServicePolicies,
}

/// The cache key of a bound route: the settings' generation, the request's local dtab and
/// the logical name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RouteKey {
    generation: u64,
    local: Dtab,
    name: Path,
}

/// Where one request goes: its logical target (metrics, errors), the concrete stack that
/// serves it or the error that answers it, and the resilience policy of its service.
pub(crate) struct Routed {
    pub(crate) logical: Arc<LogicalTarget>,
    pub(crate) concrete: Result<ConcreteStack, BoxError>,
    pub(crate) policy: Option<Arc<mesh_core::policy::RequestPolicy>>,
}

impl Routed {
    fn failed(logical: &Arc<LogicalTarget>, error: BoxError) -> Self {
        Self {
            logical: logical.clone(),
            concrete: Err(error),
            policy: None,
        }
    }
}

/// A logical name, bound: its tree, and its metrics once a request has gone somewhere.
#[derive(Debug)]
pub(crate) struct Route {
    name: Path,
    /// Made on the first request the route sends somewhere: a name that never reaches an
    /// endpoint is counted under `dst="unknown"` and never becomes a label of its own, so
    /// clients sending arbitrary hosts cannot grow the metrics without bound.
    logical: std::sync::OnceLock<Arc<LogicalTarget>>,
    tree: RouteTree,
    /// When it was bound (a route with a binding error is bound again after [`ERROR_RETRY`]).
    built: std::time::Instant,
}

/// One configured router, as a listener runs it.
#[derive(Debug)]
pub(crate) struct Router {
    name: Arc<str>,
    placeholder: Arc<str>,
    settings: ArcSwap<Settings>,
    next_generation: AtomicU64,
    binder: ProxyBinder,
    targets: Arc<Targets>,
    routes: Cache<RouteKey, Arc<Route>>,
    /// The logical target of requests that could not be named or bound.
    unknown: Arc<LogicalTarget>,
    /// How many names have a `dst` label of their own.
    labels: AtomicUsize,
    /// The process's allowance for retry replay buffers, which every reload's policies share.
    replay_memory: ReplayMemory,
    /// The service sections in force (to tell whether a reload changes them).
    services: std::sync::Mutex<std::collections::BTreeMap<String, crate::config::ServiceConfig>>,
}

impl Router {
    /// The router `name` configured by `config`, binding through `namers` (and, for
    /// `/$/inet` host names, `inet`) into `targets`' stacks; its retries keep request bodies
    /// within `replay_memory`.
    pub(crate) fn new(
        name: &str,
        config: &RouterConfig,
        namers: Arc<Namers>,
        inet: Option<Arc<DnsNamer>>,
        targets: Arc<Targets>,
        replay_memory: ReplayMemory,
    ) -> Self {
        let unknown = targets.logical(&Logical::new(Name::Path(UNKNOWN.into())), &Peer::Local);
        let max = NonZeroUsize::new(MAX_TARGETS).unwrap_or(NonZeroUsize::MIN);
        Self {
            name: name.into(),
            placeholder: format!("/router/{name}").into(),
            settings: ArcSwap::from_pointee(settings(0, config, &replay_memory)),
            next_generation: AtomicU64::new(1),
            binder: ProxyBinder { namers, inet },
            targets,
            routes: Cache::new(max, TARGET_IDLE),
            unknown,
            labels: AtomicUsize::new(0),
            services: std::sync::Mutex::new(config.service.clone()),
            replay_memory,
        }
    }

    /// The router's name (`[routers.<name>]`).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The connection-level name of a connection with no destination of its own (its HTTP
    /// requests are each routed): `/router/<name>`.
    pub(crate) fn placeholder(&self) -> Arc<str> {
        self.placeholder.clone()
    }

    /// The dtab in force.
    pub(crate) fn dtab(&self) -> Dtab {
        self.settings.load().dtab.clone()
    }

    /// Puts a reloaded configuration in force for new requests; returns whether anything
    /// changed. Open connections stay; their next request routes by the new settings.
    pub(crate) fn reload(&self, config: &RouterConfig) -> bool {
        let current = self.settings.load();
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let new = settings(generation, config, &self.replay_memory);
        // Policies hold live budgets: compared by their configuration.
        let unchanged = new.dtab == current.dtab
            && new.identifier == current.identifier
            && new.trusted == current.trusted
            && new.no_route == current.no_route
            && self
                .services
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .eq(&config.service);
        if !unchanged {
            *self.services.lock().unwrap_or_else(|p| p.into_inner()) = config.service.clone();
            self.settings.store(Arc::new(new));
            // Routes bound under the old settings are never looked up again: free their room.
            self.routes.retain(|k| k.generation == generation);
        }
        !unchanged
    }

    /// Where one request goes: its logical target (for metrics and errors) and the concrete
    /// stack that serves it, or the error that answers it.
    pub(crate) fn route<B>(
        &self,
        req: &mut Request<B>,
        client: SocketAddr,
        mesh_peer: bool,
    ) -> Routed {
        let settings = self.settings.load();
        // May this client extend the dtab (`l5d-dtab`, `l5d-ctx-dtab`)?
        let trusted = settings
            .trusted
            .iter()
            .any(|t| t.admits(client.ip(), mesh_peer));
        let local = match context::take_local_dtab(req.headers_mut(), trusted) {
            Ok(local) => local,
            Err(e) => return Routed::failed(&self.unknown, bad_request(e)),
        };
        let name = match settings.identifier.identify(req) {
            Ok(name) => name,
            Err(e) => return Routed::failed(&self.unknown, bad_request(e)),
        };
        let policy = if settings.policies.is_empty() {
            None
        } else {
            settings.policies.find(&name, req)
        };
        // A gRPC deadline is honoured for every name, with or without a service policy.
        let policy = policy.or_else(|| {
            req.headers().contains_key("grpc-timeout").then(|| {
                Arc::new(mesh_core::policy::RequestPolicy {
                    dst: name.to_string().into(),
                    ..Default::default()
                })
            })
        });
        let key = RouteKey {
            generation: settings.generation,
            local,
            name,
        };
        let route = self
            .routes
            .get_or_build(&key, |key| Arc::new(self.bind(&settings.dtab, key)));
        if route.tree.has_error() && route.built.elapsed() >= ERROR_RETRY {
            // A namer that failed may have recovered: this request binds again.
            self.routes.remove(&key);
        }
        let picked = match route.tree.pick() {
            Pick::Leaf(leaf) => {
                let logical = route.logical.get_or_init(|| self.logical_for(&route.name));
                return Routed {
                    logical: logical.clone(),
                    concrete: Ok(leaf.concrete.clone()),
                    policy,
                };
            }
            Pick::Neg(empty) if !empty.is_empty() => {
                Err(no_route(settings.no_route, &route.name, &empty.join("; ")))
            }
            Pick::Neg(_) => Err(no_route(
                settings.no_route,
                &route.name,
                "no dentry or namer binds it",
            )),
            Pick::Fail => Err(no_route(
                settings.no_route,
                &route.name,
                "it binds to a failure (!)",
            )),
            Pick::Empty => Err(no_route(
                settings.no_route,
                &route.name,
                "it binds to an empty set ($)",
            )),
            Pick::Error(e) => Err(HttpError::new(
                StatusCode::BAD_GATEWAY,
                GrpcCode::Unavailable,
                RouteError(format!("cannot bind {}: {e}", route.name)),
            )
            .into()),
        };
        Routed {
            logical: self.unknown.clone(),
            concrete: picked,
            policy: None,
        }
    }

    /// The logical target (metrics label `dst`) of a name that reached an endpoint: its own,
    /// for the first [`MAX_DST_LABELS`] such names; `unknown` after that, so names made of
    /// request data (path segments, header values) cannot grow the label set without bound.
    fn logical_for(&self, name: &Path) -> Arc<LogicalTarget> {
        if self.labels.fetch_add(1, Ordering::Relaxed) >= MAX_DST_LABELS {
            self.labels.store(MAX_DST_LABELS, Ordering::Relaxed);
            return self.unknown.clone();
        }
        self.targets.logical(
            &Logical::new(Name::Path(name.to_string().into())),
            &Peer::Local,
        )
    }

    /// Binds a logical name through the router's dtab extended by the request's.
    fn bind(&self, dtab: &Dtab, key: &RouteKey) -> Route {
        let full = if key.local.is_empty() {
            dtab.clone()
        } else {
            dtab.concat(&key.local)
        };
        let explanation = delegate(&full, &key.name, &self.binder);
        let tree = match explanation.find_too_large() {
            // A binding cut short is unusable as a whole, even where the cut branch sits in a
            // union (the other branches would silently take all its traffic).
            Some(e) => RouteTree::Error(Arc::new(e.clone())),
            None => RouteTree::from_explanation(&explanation, &mut |bound| self.concrete(bound)),
        };
        tracing::debug!(router = %self.name, name = %key.name, local = %key.local, "bound");
        Route {
            name: key.name.clone(),
            logical: std::sync::OnceLock::new(),
            tree,
            built: std::time::Instant::now(),
        }
    }

    /// The concrete stack of a bound name (shared through the listener's concrete cache).
    fn concrete(&self, bound: &BoundName) -> ConcreteStack {
        match &bound.target {
            BoundTarget::Addr(addr) => self.targets.route_to(&Name::Addr(*addr)).concrete,
            BoundTarget::Resolved(resolution) => {
                self.targets.balanced(&bound.id, resolution.clone())
            }
        }
    }

    /// How `path` delegates through the dtab in force extended by `extra`: the explanation
    /// as JSON (`/delegator.json`).
    pub(crate) fn explain(&self, path: &Path, extra: &Dtab) -> serde_json::Value {
        let dtab = self.settings.load().dtab.concat(extra);
        delegate(&dtab, path, &self.binder).to_json(&|b: &BoundName| b.to_json())
    }

    /// Forgets routes nobody used for a while; keeps the concrete stacks of the others
    /// cached in the listener (so `/endpoints.json` lists them).
    pub(crate) fn sweep(&self) {
        self.routes.evict_idle(|_| false);
        for route in self.routes.services() {
            route.tree.touch(&self.targets);
        }
    }
}

fn settings(generation: u64, config: &RouterConfig, memory: &ReplayMemory) -> Settings {
    Settings {
        generation,
        identifier: Identifier::new(config.identifier.clone()),
        dtab: config.dtab.0.clone(),
        trusted: config.trusted_sources.clone(),
        no_route: config.no_route_status(),
        policies: ServicePolicies::build(&config.service, Some(memory)).unwrap_or_else(|error| {
            // Checked when the configuration was loaded; never reached.
            tracing::error!(%error, "router services not applied");
            ServicePolicies::default()
        }),
    }
}

/// The message of a routing failure (the `l5d-proxy-error` text).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RouteError(String);

fn bad_request(e: impl std::fmt::Display) -> BoxError {
    HttpError::new(
        StatusCode::BAD_REQUEST,
        GrpcCode::InvalidArgument,
        RouteError(e.to_string()),
    )
    .into()
}

fn no_route(status: StatusCode, name: &Path, why: &str) -> BoxError {
    HttpError::new(
        status,
        GrpcCode::Unimplemented,
        RouteError(format!("no route to {name}: {why}")),
    )
    .into()
}
