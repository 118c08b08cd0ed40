//! The inbound stack: traffic from the mesh in to the local application.
//!
//! Like the outbound stack (see `outbound.rs` for the stages), with the inbound side's own
//! layer: [`Authorize`] applies the port's authorization policy to each request and sets
//! `l5d-client-id` to the verified peer identity the inbound proxy vouches for (DESIGN.md
//! §4; a value a client sent itself is removed). Mesh TLS is terminated before this stack,
//! by the listener, with [`InboundTls`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use mesh_core::body::RequestBody;
use mesh_core::headers::HopByHopLayer;
use mesh_core::metrics::RecordHttpLayer;
use mesh_core::target::Name;
use mesh_core::upgrade::UpgradesLayer;
use tower::ServiceBuilder;
use tower_service::Service;

use mesh_core::metrics::{AUTHZ_DECISIONS_TOTAL, TLS_HANDSHAKE_ERRORS_TOTAL};
use mesh_tls::accept::{InboundKind, MeshAcceptor};

use crate::authz::{Authorize, PortAuthz};
use crate::checks::RequestChecks;
use crate::config::InboundMode;
use crate::conn::ConnState;
use crate::deadline::ResponseDeadline;
use crate::http::StackResponse;
use crate::ratelog::LogLimit;
use crate::stack::{LogicalTarget, Targets};
use crate::tunnel::{ConnCtx, ProxyTunnel};

/// Mesh TLS termination on an inbound listener.
#[derive(Debug)]
pub(crate) struct InboundTls {
    pub(crate) acceptor: MeshAcceptor,
    pub(crate) mode: InboundMode,
    /// Handshake failures and strict-mode refusals are logged at most once a second.
    log: LogLimit,
    failures: metrics::Counter,
    refused: metrics::Counter,
}

impl InboundTls {
    pub(crate) fn new(acceptor: MeshAcceptor, mode: InboundMode) -> Self {
        Self {
            acceptor,
            mode,
            log: LogLimit::new(),
            failures: metrics::counter!(TLS_HANDSHAKE_ERRORS_TOTAL, "direction" => "inbound"),
            refused: metrics::counter!(
                AUTHZ_DECISIONS_TOTAL,
                "direction" => "inbound",
                "port" => "any",
                "rule" => "inbound_mode=strict",
                "decision" => "deny"
            ),
        }
    }

    /// A mesh TLS handshake failed: counted and logged naming the client and why.
    pub(crate) fn handshake_failed(&self, client: SocketAddr, error: &dyn std::fmt::Display) {
        self.failures.increment(1);
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(peer = %client, %error, suppressed, "mesh TLS handshake failed; connection closed");
        }
    }

    /// A strict listener closes what is not mesh TLS.
    pub(crate) fn refuse(&self, client: SocketAddr, kind: InboundKind) {
        self.refused.increment(1);
        if let Some(suppressed) = self.log.allow() {
            let what = match kind {
                InboundKind::Plaintext => "plaintext",
                InboundKind::PassThrough | InboundKind::Mesh => {
                    "TLS not addressed to this workload"
                }
            };
            tracing::warn!(peer = %client, what, suppressed, "inbound is strict (mesh TLS only); connection closed");
        }
    }
}

/// The inbound request stack of one client connection to the local application at `dst`.
pub(crate) fn http_stack(
    targets: &Targets,
    logical: &Arc<LogicalTarget>,
    dst: &Name,
    conn: &Arc<ConnState>,
    ctx: &Arc<ConnCtx>,
    authz: Arc<PortAuthz>,
    trusted: bool,
) -> impl Service<Request<RequestBody>, Response = StackResponse, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    // Per endpoint and per concrete destination (cached): the local application's client.
    let app = targets.route_to(dst);
    let dst = logical.logical.text().clone();
    ServiceBuilder::new()
        .layer(RecordHttpLayer::new(logical.http()))
        .layer(logical.respond.clone())
        .layer(RequestChecks::layer(conn.clone()))
        .layer(UpgradesLayer::new(ProxyTunnel::new(
            ctx.clone(),
            logical.clone(),
        )))
        .layer(HopByHopLayer::new())
        // The port's policy per request; l5d-client-id from the verified peer only.
        .layer(Authorize::layer(authz, &logical.peer))
        // Routing context (`l5d-ctx-dtab`) reaches the application only from trusted peers.
        .map_request(move |mut req: Request<RequestBody>| {
            if !trusted {
                crate::router::strip_context(req.headers_mut());
            }
            req
        })
        .layer(ResponseDeadline::layer(
            conn.clone(),
            dst,
            ctx.response_timeout,
        ))
        .service(app)
}
