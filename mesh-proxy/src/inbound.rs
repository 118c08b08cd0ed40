//! The inbound stack: traffic from the mesh in to the local application.
//!
//! Like the outbound stack (see `outbound.rs` for the stages), with the inbound side's own
//! rule: `l5d-client-id` is the verified peer identity the inbound proxy vouches for
//! (DESIGN.md §4), so a value a client sent itself is removed before the request reaches
//! the application. mTLS termination and authorization policy slot in here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use mesh_core::body::RequestBody;
use mesh_core::headers::HopByHopLayer;
use mesh_core::metrics::RecordHttpLayer;
use mesh_core::upgrade::UpgradesLayer;
use tower::ServiceBuilder;
use tower_service::Service;

use crate::checks::RequestChecks;
use crate::conn::ConnState;
use crate::deadline::ResponseDeadline;
use crate::http::StackResponse;
use crate::stack::{LogicalTarget, Targets};
use crate::tunnel::{ConnCtx, ProxyTunnel};

/// The header that carries the verified identity of an inbound peer to the application.
const L5D_CLIENT_ID: &str = "l5d-client-id";

/// The inbound request stack of one client connection to the local application at `addr`.
pub(crate) fn http_stack(
    targets: &Targets,
    logical: &Arc<LogicalTarget>,
    addr: SocketAddr,
    conn: &Arc<ConnState>,
    ctx: &Arc<ConnCtx>,
) -> impl Service<Request<RequestBody>, Response = StackResponse, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    // Per endpoint and per concrete destination (cached): the local application's client.
    let app = targets.route_to(addr);
    let dst = logical.logical.text().clone();
    ServiceBuilder::new()
        .layer(RecordHttpLayer::new(logical.http.clone()))
        .layer(logical.respond.clone())
        .layer(RequestChecks::layer(conn.clone()))
        .layer(UpgradesLayer::new(ProxyTunnel::new(
            ctx.clone(),
            logical.clone(),
        )))
        .layer(HopByHopLayer::new())
        // Only the proxy may vouch for a peer's identity.
        .map_request(|mut req: Request<RequestBody>| {
            req.headers_mut().remove(L5D_CLIENT_ID);
            req
        })
        .layer(ResponseDeadline::layer(
            conn.clone(),
            dst,
            ctx.response_timeout,
        ))
        .service(app)
}
