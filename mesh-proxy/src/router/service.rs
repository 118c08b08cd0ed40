//! The outbound request stack of a connection whose requests are routed by a dtab.
//!
//! The logical destination is known only once a request is named, so the stack above the
//! concrete stage is assembled per request from the route's cached pieces — metrics by
//! `dst`, the classifier, framing checks, upgrades, hop-by-hop headers, the response
//! deadline — all reference-counted handles, in the same order the fixed-destination stack
//! (`outbound.rs`) uses. A request that cannot be named or bound runs through the same
//! layers (counted under `dst="unknown"`, answered by the one classifier), with a concrete
//! stage that fails it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use mesh_core::BoxError;
use mesh_core::body::{ProxyBody, RequestBody};
use mesh_core::headers::HopByHopLayer;
use mesh_core::metrics::RecordHttpLayer;
use mesh_core::policy::Resilient;
use mesh_core::upgrade::UpgradesLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_service::Service;

use super::Router;
use crate::checks::RequestChecks;
use crate::conn::ConnState;
use crate::deadline::ResponseDeadline;
use crate::http::StackResponse;
use crate::stack::{BoxResponse, ConcreteStack};
use crate::tunnel::{ConnCtx, ProxyTunnel};

/// The routed request stack of one client connection.
#[derive(Clone, Debug)]
pub(crate) struct RouterStack {
    router: Arc<Router>,
    client: SocketAddr,
    mesh_peer: bool,
    conn: Arc<ConnState>,
    ctx: Arc<ConnCtx>,
}

impl RouterStack {
    /// The stack for a connection from `client` (a verified mesh peer or not).
    pub(crate) fn new(
        router: Arc<Router>,
        client: SocketAddr,
        mesh_peer: bool,
        conn: Arc<ConnState>,
        ctx: Arc<ConnCtx>,
    ) -> Self {
        Self {
            router,
            client,
            mesh_peer,
            conn,
            ctx,
        }
    }
}

impl Service<Request<RequestBody>> for RouterStack {
    type Response = StackResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<StackResponse, Infallible>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody>) -> Self::Future {
        let super::Routed {
            logical,
            concrete,
            policy,
        } = self.router.route(&mut req, self.client, self.mesh_peer);
        let dst = logical.logical.text().clone();
        let mut stack = ServiceBuilder::new()
            .layer(RecordHttpLayer::new(logical.http()))
            .layer(logical.respond.clone())
            .layer(RequestChecks::layer(self.conn.clone()))
            .layer(UpgradesLayer::new(ProxyTunnel::new(
                self.ctx.clone(),
                logical.clone(),
            )))
            .layer(HopByHopLayer::new())
            .layer(ResponseDeadline::layer(
                self.conn.clone(),
                dst,
                self.ctx.response_timeout,
            ))
            .service(Resilient::new(Concrete(concrete.map_err(Some)), policy));
        // Every stage is ready at once (see `http.rs`), so the request is called in place and
        // only its response future is boxed — not the stack with it, which a `Oneshot` would
        // move into the allocation too.
        match stack.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Box::pin(stack.call(req)),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Box::pin(stack.oneshot(req)),
        }
    }
}

/// The concrete stage of one routed request: the chosen stack, or the error that answers
/// the request.
struct Concrete(Result<ConcreteStack, Option<BoxError>>);

/// A clone for another attempt. Only a chosen stack is ever tried again: a request answered
/// with a routing error has no policy, so its clone is never called.
impl Clone for Concrete {
    fn clone(&self) -> Self {
        match &self.0 {
            Ok(stack) => Self(Ok(stack.clone())),
            Err(_) => Self(Err(None)),
        }
    }
}

impl Service<Request<RequestBody>> for Concrete {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxResponse;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.0 {
            Ok(stack) => stack.poll_ready(cx),
            Err(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<RequestBody>) -> BoxResponse {
        match &mut self.0 {
            Ok(stack) => stack.call(req),
            Err(error) => {
                let error = error
                    .take()
                    .unwrap_or_else(|| "route error already answered".into());
                Box::pin(std::future::ready(Err(error)))
            }
        }
    }
}
