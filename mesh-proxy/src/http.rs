//! Serving HTTP on a client connection: the hyper server and the adapter between it and a
//! connection's request stack.
//!
//! The connection's protocol is already known from detection, so the matching hyper server
//! (HTTP/1 or HTTP/2) runs directly, configured with the limits of DESIGN.md §5.
//! [`ConnService`] does the connection's bookkeeping for each request — the exchange is in
//! flight until its response body and its request body have both ended, an HTTP/2 body's end
//! starts its response timer, a connection that lost track of message boundaries closes after
//! its next response — and hands the request to the stack that `outbound.rs` or
//! `inbound.rs` built for the connection.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::future::Either;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use mesh_core::body::ProxyBody;
use mesh_core::body::RequestBody;
use mesh_core::metrics::RecordBody;
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower::util::Oneshot;
use tower_service::Service;

use crate::config::Limits;
use crate::conn::{ConnState, RequestGuard};
use crate::deadline::{BodySent, StreamBody};

/// Server settings derived once from the limits.
#[derive(Clone, Debug)]
pub(crate) struct ServerSettings {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl ServerSettings {
    pub(crate) fn new(limits: &Limits) -> Self {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        let max_head =
            usize::try_from(limits.max_request_header_bytes.as_u64()).unwrap_or(usize::MAX);
        // `max_header_size` is exact for a complete head; the read buffer bound makes an
        // endless head fail at about the same size instead of buffering up to hyper's 400 KiB.
        h1.max_header_size(max_head)
            .max_buf_size(max_head.saturating_add(4096).max(8192));
        // No timer: with one, hyper arms its own 30 s header-read timeout, which re-arms a
        // boxed sleep per request and closes idle keep-alive connections. The connection
        // watchdog (`conn.rs`) enforces the header timeout instead.
        // hyper's default is 100; setting it moves header indices to the heap, so only
        // when it differs.
        if limits.max_request_headers.get() != 100 {
            h1.max_headers(limits.max_request_headers.get());
        }
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(
                u32::try_from(limits.http2_max_header_list_bytes.as_u64()).unwrap_or(u32::MAX),
            );
        Self { h1, h2 }
    }

    pub(crate) fn h1(&self) -> &hyper::server::conn::http1::Builder {
        &self.h1
    }

    pub(crate) fn h2(&self) -> &hyper::server::conn::http2::Builder<TokioExecutor> {
        &self.h2
    }
}

/// The response a connection's stack produces.
pub(crate) type StackResponse = Response<RecordBody<ProxyBody>>;

/// Adapts a connection's request stack to hyper, doing the connection's bookkeeping.
///
/// hyper calls a service through `&self`; tower's take `&mut self`. The stack belongs to
/// this one connection, so it sits in a `RefCell` and is called in place: no clone of the
/// stack per request.
#[derive(Debug)]
pub(crate) struct ConnService<S> {
    stack: RefCell<S>,
    conn: Arc<ConnState>,
}

impl<S> ConnService<S> {
    pub(crate) fn new(stack: S, conn: Arc<ConnState>) -> Self {
        Self {
            stack: RefCell::new(stack),
            conn,
        }
    }
}

impl<S> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<RequestBody>, Response = StackResponse, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ServerBody>;
    type Error = Infallible;
    type Future = ConnFuture<S::Future, Pin<Box<Oneshot<S, Request<RequestBody>>>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // The body is wrapped at once, so its end is reported even if this future is dropped
        // before it first runs.
        let desynced = self.conn.is_desynced();
        let h2 = req.version() == http::Version::HTTP_2;
        let (guard, hook) = self.conn.request_started(!req.body().is_end_stream());
        let req = match hook {
            // An HTTP/2 stream times its own response, from the end of its request body.
            Some(conn) if h2 => {
                let sent = Arc::new(BodySent::new(conn));
                let mut req = req.map(|body| RequestBody::new(body, Some(sent.clone())));
                req.extensions_mut().insert(StreamBody(sent));
                req
            }
            hook => req.map(|body| RequestBody::new(body, hook)),
        };
        // Every stage of the proxy's stacks is always ready (connections are opened per
        // request), so the request enters the stack now, while its head is current (the
        // framing checks read what the connection saw of it). A stage that ever waits for
        // readiness is awaited inside the response future instead.
        let mut stack = self.stack.borrow_mut();
        let inner = match stack.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Either::Left(stack.call(req)),
            Poll::Ready(Err(never)) => match never {},
            // Boxed: it holds a whole stack and request, and never happens today; inline it
            // would make every request's future that large.
            Poll::Pending => Either::Right(Box::pin(stack.clone().oneshot(req))),
        };
        ConnFuture {
            inner,
            guard: Some(guard),
            close: desynced && !h2,
        }
    }
}

pin_project! {
    /// The response of one request, with the connection's bookkeeping attached to its body.
    pub(crate) struct ConnFuture<F, G> {
        #[pin]
        inner: Either<F, G>,
        guard: Option<RequestGuard>,
        // An earlier request body was abandoned mid-way, so this head was found by hyper
        // without the proxy's checks: answer it, then close.
        close: bool,
    }
}

impl<F, G> Future for ConnFuture<F, G>
where
    F: Future<Output = Result<StackResponse, Infallible>>,
    G: Future<Output = Result<StackResponse, Infallible>>,
{
    type Output = Result<Response<ServerBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut res) = std::task::ready!(this.inner.poll(cx));
        if *this.close {
            res.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        let guard = this.guard.take();
        Poll::Ready(Ok(res.map(|body| ServerBody {
            inner: body,
            _guard: guard,
        })))
    }
}

pin_project! {
    /// The body the proxy's server sends: the response body plus the guard that marks the
    /// request finished when the body is done or dropped.
    #[derive(Debug)]
    pub(crate) struct ServerBody {
        #[pin]
        inner: RecordBody<ProxyBody>,
        _guard: Option<RequestGuard>,
    }
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = mesh_core::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, mesh_core::BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
