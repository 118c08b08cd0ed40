//! Inbound authorization and the peer identity, applied to connections and requests.
//!
//! The policy itself is pure logic in [`mesh_core::authz`]; this module applies it where the
//! inbound side knows who the peer is: [`ListenerAuthz::decide`] for a TCP connection
//! (denied: closed before a byte reaches the application) and the [`Authorize`] layer for
//! each HTTP request (denied: `403` / `PERMISSION_DENIED` through the one classifier, the
//! connection stays open). The same layer sets `l5d-client-id` to the verified identity —
//! only the proxy may vouch for a peer, so a value the client sent is removed first.
//!
//! Every decision is counted under the rule that made it; the counters are resolved when
//! the listener starts (one per rule and outcome), so a request costs an atomic add.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request};
use mesh_core::BoxError;
use mesh_core::authz::{Decision, Denied, PortPolicy};
use mesh_core::identity::Identity;
use mesh_core::metrics::AUTHZ_DECISIONS_TOTAL;
use metrics::Counter;
use tower_service::Service;

use crate::refuse::RefuseOr;

use crate::config::InboundPolicies;
use crate::ratelog::LogLimit;
use crate::stack::Peer;

/// The header that carries the verified identity of an inbound peer to the application.
pub(crate) const L5D_CLIENT_ID: &str = "l5d-client-id";

/// One port's policy and its decision counters.
#[derive(Debug)]
pub(crate) struct PortAuthz {
    policy: PortPolicy,
    /// Connections refused because path rules need HTTP and the bytes were not HTTP.
    not_http: Counter,
    /// Denials are logged at most once a second per port.
    log: LogLimit,
    /// Per rule: (rule, allowed counter, denied counter).
    counters: Vec<(Arc<str>, Counter, Counter)>,
}

impl PortAuthz {
    fn new(port: &str, policy: &PortPolicy) -> Self {
        let counters = policy
            .rules()
            .map(|rule| {
                let counter = |decision: &'static str| {
                    metrics::counter!(
                        AUTHZ_DECISIONS_TOTAL,
                        "direction" => "inbound",
                        "port" => port.to_owned(),
                        "rule" => rule.to_string(),
                        "decision" => decision
                    )
                };
                (rule.clone(), counter("allow"), counter("deny"))
            })
            .collect();
        let not_http = metrics::counter!(
            AUTHZ_DECISIONS_TOTAL,
            "direction" => "inbound",
            "port" => port.to_owned(),
            "rule" => "paths-need-http",
            "decision" => "deny"
        );
        Self {
            policy: policy.clone(),
            not_http,
            log: LogLimit::new(),
            counters,
        }
    }

    /// Decides for `peer` (and, for HTTP, a request `path`) and counts the decision.
    pub(crate) fn decide(&self, peer: Option<&Identity>, path: Option<&str>) -> Decision {
        let decision = self.policy.decide(peer, path);
        if let Some((_, allow, deny)) = self
            .counters
            .iter()
            .find(|(rule, _, _)| Arc::ptr_eq(rule, &decision.rule))
        {
            if decision.allowed {
                allow.increment(1);
            } else {
                deny.increment(1);
            }
        }
        decision
    }

    /// Whether a connection that is not HTTP may be forwarded as bytes: not when the port
    /// has path rules, which only HTTP requests can be held to (forwarding unparsed bytes
    /// would let a client dodge them, and carry a forged `l5d-client-id` to the app).
    pub(crate) fn admits_unparsed(&self, peer: Option<&Identity>) -> bool {
        if !self.policy.has_paths() {
            return true;
        }
        self.not_http.increment(1);
        if let Some(suppressed) = self.log.allow() {
            tracing::info!(
                peer_id = peer.map_or_else(String::new, ToString::to_string),
                suppressed,
                "connection closed: not HTTP, and this port has HTTP path rules"
            );
        }
        false
    }

    /// Logs a denial, rate-limited.
    pub(crate) fn log_denied(&self, peer: Option<&Identity>, decision: &Decision, what: &str) {
        if let Some(suppressed) = self.log.allow() {
            tracing::info!(
                peer_id = peer.map_or_else(String::new, ToString::to_string),
                rule = %decision.rule,
                what,
                suppressed,
                "denied by authorization policy"
            );
        }
    }
}

/// The policies of one inbound listener, per destination port.
#[derive(Debug)]
pub(crate) struct ListenerAuthz {
    default: Arc<PortAuthz>,
    ports: BTreeMap<u16, Arc<PortAuthz>>,
}

impl ListenerAuthz {
    pub(crate) fn new(policies: &InboundPolicies) -> Self {
        Self {
            default: Arc::new(PortAuthz::new("default", policies.default_policy())),
            ports: policies
                .ports()
                .map(|(port, p)| (port, Arc::new(PortAuthz::new(&port.to_string(), p))))
                .collect(),
        }
    }

    /// The policy of connections to `port`.
    pub(crate) fn port(&self, port: u16) -> &Arc<PortAuthz> {
        self.ports.get(&port).unwrap_or(&self.default)
    }
}

/// Sets `l5d-client-id` from the connection's verified peer and applies the port's policy
/// to each request.
#[derive(Clone, Debug)]
pub(crate) struct Authorize<S> {
    inner: S,
    authz: Arc<PortAuthz>,
    peer: Option<Identity>,
    /// The peer identity as a header value, built once per connection.
    header: Option<HeaderValue>,
}

impl<S> Authorize<S> {
    pub(crate) fn layer(
        authz: Arc<PortAuthz>,
        peer: &Peer,
    ) -> impl tower_layer::Layer<S, Service = Self> + Clone {
        let peer = peer.identity().cloned();
        let header = peer
            .as_ref()
            .and_then(|id| HeaderValue::from_str(&id.to_string()).ok());
        tower_layer::layer_fn(move |inner| Authorize {
            inner,
            authz: authz.clone(),
            peer: peer.clone(),
            header: header.clone(),
        })
    }
}

impl<S, B> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RefuseOr<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let decision = self
            .authz
            .decide(self.peer.as_ref(), Some(req.uri().path()));
        if !decision.allowed {
            self.authz
                .log_denied(self.peer.as_ref(), &decision, req.uri().path());
            return RefuseOr::refuse(Denied::error(self.peer.as_ref(), &decision));
        }
        let headers = req.headers_mut();
        headers.remove(L5D_CLIENT_ID);
        if let Some(id) = &self.header {
            headers.insert(L5D_CLIENT_ID, id.clone());
        }
        RefuseOr::call(self.inner.call(req))
    }
}
