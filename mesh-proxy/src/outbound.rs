//! The outbound stack: traffic from the local application out to the mesh.
//!
//! [`http_stack`] builds, for one client connection, the whole request path top to bottom
//! (DESIGN.md §3). The three stages are each built per target and cached in [`Targets`]:
//! per logical destination (what the application asked for), per concrete destination (what
//! it is bound to), per endpoint (one address). Routing (dtab), retries, per-route timeouts,
//! the balancer and mTLS each replace or fill one stage without touching the others.

use std::convert::Infallible;
use std::sync::Arc;

use http::Request;
use mesh_core::body::RequestBody;
use mesh_core::headers::HopByHopLayer;
use mesh_core::metrics::RecordHttpLayer;
use mesh_core::target::Name;
use mesh_core::upgrade::UpgradesLayer;
use tower::ServiceBuilder;
use tower_service::Service;

use crate::checks::RequestChecks;
use crate::conn::ConnState;
use crate::deadline::ResponseDeadline;
use crate::http::StackResponse;
use crate::stack::{LogicalTarget, Targets};
use crate::tunnel::{ConnCtx, ProxyTunnel};

/// The outbound request stack of one client connection whose destination is `dst`.
pub(crate) fn http_stack(
    targets: &Targets,
    logical: &Arc<LogicalTarget>,
    dst: &Name,
    conn: &Arc<ConnState>,
    ctx: &Arc<ConnCtx>,
) -> impl Service<Request<RequestBody>, Response = StackResponse, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    // Stage 3, per endpoint (cached): the HTTP client — an HTTP/1 pool and a shared HTTP/2
    // connection — over the connect stack (plain TCP; mTLS wraps it).
    // Stage 2, per concrete destination (cached): today the endpoint itself; retries,
    // per-route timeouts and the balancer over discovered endpoints go here.
    let route = targets.route_to(dst);
    // Stage 1, the route, under the connection's server-side layers, outermost first.
    let dst = logical.logical.text().clone();
    ServiceBuilder::new()
        // Golden metrics, counted when each response ends (gRPC trailers decide).
        .layer(RecordHttpLayer::new(logical.http()))
        // The one classifier: every error below becomes its response here.
        .layer(logical.respond.clone())
        // Ambiguous framing and a missing or conflicting Host: 400, close.
        .layer(RequestChecks::layer(conn.clone()))
        // WebSocket and CONNECT: a tunnel once the upstream agrees.
        .layer(UpgradesLayer::new(ProxyTunnel::new(
            ctx.clone(),
            logical.clone(),
        )))
        // Connection-level headers stay on their hop.
        .layer(HopByHopLayer::new())
        // The listener-wide response timeout.
        .layer(ResponseDeadline::layer(
            conn.clone(),
            dst,
            ctx.response_timeout,
        ))
        // The route: the connection's destination, fixed when it was accepted.
        .service(route)
}
