//! Serving HTTP on a client connection and forwarding each request to its target.
//!
//! The connection's protocol is already known from detection, so the matching hyper server
//! (HTTP/1 or HTTP/2) runs directly, configured with the limits of DESIGN.md §5. Each request
//! passes through [`ProxyService`]: framing check, hop-by-hop headers, the target's
//! endpoint client, and on failure the one error classifier
//! ([`mesh_core::errors::error_response`]). Upgrades (WebSocket) and `CONNECT` become a
//! byte tunnel only once the upstream has answered `101` (or 2xx to `CONNECT`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::BoxError;
use mesh_core::body::{BodyEnd, ProxyBody, RequestBody};
use mesh_core::classify::Classify;
use mesh_core::errors::{BadRequest, ResponseTimeout, error_response};
use mesh_core::headers::{strip_hop_by_hop, wants_upgrade};
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Direction;
use crate::config::Limits;
use crate::conn::{ConnState, RequestGuard, ServerIo, Watch};
use crate::targets::Target;

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

/// What every request of one client connection shares, besides its target.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    /// Ends upgraded tunnels when the proxy gives up draining.
    pub(crate) abort: CancellationToken,
    /// Tracks upgraded tunnels, so a drain waits for them.
    pub(crate) tracker: TaskTracker,
    /// The connection's slot under the connection cap; a tunnel keeps it.
    pub(crate) permit: Arc<OwnedSemaphorePermit>,
    pub(crate) response_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

/// Forwards the requests of one client connection to its target.
#[derive(Clone, Debug)]
pub(crate) struct ProxyService {
    target: Arc<Target>,
    conn: Arc<ConnState>,
    ctx: Arc<ConnCtx>,
}

impl ProxyService {
    pub(crate) fn new(target: Arc<Target>, conn: Arc<ConnState>, ctx: Arc<ConnCtx>) -> Self {
        Self { target, conn, ctx }
    }
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ServerBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ServerBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // The body is wrapped at once, so its end is reported even if this future is dropped
        // before it first runs.
        let desynced = self.conn.is_desynced();
        let (guard, mut body_hook) = self.conn.request_started(!req.body().is_end_stream());
        // An HTTP/2 stream times its own response, from the end of its request body.
        let body_sent = match body_hook.take() {
            Some(conn) if req.version() == http::Version::HTTP_2 => {
                let sent = Arc::new(BodySent::new(conn));
                body_hook = Some(sent.clone());
                Some(sent)
            }
            hook => {
                body_hook = hook;
                None
            }
        };
        let req = req.map(|body| RequestBody::new(body, body_hook));
        let ambiguous = self.conn.take_ambiguous();
        let target = self.target.clone();
        let ctx = self.ctx.clone();
        let conn = self.conn.clone();
        Box::pin(async move {
            let start = Instant::now();
            target.http.request();
            let grpc = is_grpc(&req);
            let h2 = req.version() == http::Version::HTTP_2;
            // HTTP/1 has one request in flight per connection: its watchdog times the
            // response head, with no timer per request. HTTP/2 streams time themselves.
            let watched = (!h2).then_some(&*conn);
            let mut res = match forward(&target, req, ambiguous, &ctx, watched, body_sent).await {
                Ok(res) => res,
                Err(error) => {
                    if let Some(suppressed) = target.failures.allow() {
                        tracing::info!(dst = %target.addr, %error, suppressed, "request failed");
                    }
                    let mut res = error_response(&error, grpc);
                    if h2 {
                        // HTTP/2 has no connection-level `Connection` header.
                        res.headers_mut().remove(http::header::CONNECTION);
                    }
                    res
                }
            };
            if desynced && !h2 {
                // An earlier request body was abandoned mid-way, so this head was found by
                // hyper without the proxy's checks: answer it, then close.
                res.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            // Interim (the metrics layer replaces this): the head's outcome, recorded now.
            let class = Classify::for_grpc(grpc)
                .head(res.status(), res.headers())
                .unwrap_or(mesh_core::classify::ResponseClass::Success);
            target.http.latency(start.elapsed());
            target.http.response(res.status(), class);
            Ok(res.map(|body| ServerBody {
                inner: body,
                _guard: guard,
            }))
        })
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

async fn forward(
    target: &Arc<Target>,
    mut req: Request<RequestBody>,
    ambiguous: bool,
    ctx: &ConnCtx,
    watched: Option<&ConnState>,
    body_sent: Option<Arc<BodySent>>,
) -> Result<Response<ProxyBody>, BoxError> {
    if ambiguous {
        return Err(BadRequest::new("ambiguous request framing (content-length with transfer-encoding, repeated content-length, or bare LF)").into());
    }
    check_host(&req)?;
    let upgrade = req.version() <= http::Version::HTTP_11 && wants_upgrade(req.headers());
    let connect = req.method() == Method::CONNECT;
    let downstream = (upgrade || connect).then(|| hyper::upgrade::on(&mut req));
    strip_hop_by_hop(req.headers_mut(), upgrade);
    if target.direction == Direction::Inbound {
        // `l5d-client-id` is the verified peer identity the inbound side vouches for
        // (DESIGN §4); a value a client sent itself is never passed on.
        req.headers_mut().remove(L5D_CLIENT_ID);
    }
    let timeout = ctx.response_timeout;
    let late = || ResponseTimeout::new(target.addr, timeout);
    let mut res = match watched {
        Some(state) => {
            state.await_response_head(timeout);
            let mut send = std::pin::pin!(target.endpoint.send(req));
            let res = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending => state.poll_response_late(cx).map(|()| None),
            })
            .await;
            state.response_head_done();
            res.ok_or_else(late)??
        }
        None => match body_sent {
            None => tokio::time::timeout(timeout, target.endpoint.send(req))
                .await
                .map_err(|_| late())??,
            // The clock starts once the upstream has the whole request (see
            // `ConnState::await_response_head`).
            Some(sent) => {
                // Until the body ends, the clock restarts with each chunk: an upload the
                // upstream stopped reading (and does not answer) still times out.
                let timer = async {
                    let mut last = sent.progressed_at();
                    loop {
                        tokio::select! {
                            () = sent.ended.notified() => break,
                            () = tokio::time::sleep_until(last + timeout) => {
                                let now = sent.progressed_at();
                                if now == last {
                                    return;
                                }
                                last = now;
                            }
                        }
                    }
                    tokio::time::sleep(timeout).await;
                };
                tokio::select! {
                    res = target.endpoint.send(req) => res?,
                    () = timer => return Err(late().into()),
                }
            }
        },
    };
    if res.version() == http::Version::HTTP_10 {
        // RFC 9110 §2.5: an intermediary sends its own HTTP version. hyper writes a response
        // in the version it carries, so an HTTP/1.0 upstream's answer would reach a 1.1
        // client as a 1.0 response (close-delimited, connection closed) and a keep-alive
        // 1.0 client without `Connection: keep-alive` (connection closed). hyper itself
        // answers a 1.0 client in 1.0.
        *res.version_mut() = http::Version::HTTP_11;
    }
    let switched = (upgrade && res.status() == StatusCode::SWITCHING_PROTOCOLS)
        || (connect && res.status().is_success());
    strip_hop_by_hop(res.headers_mut(), switched && upgrade);
    if let (true, Some(downstream)) = (switched, downstream) {
        let upstream = hyper::upgrade::on(&mut res);
        let tunnel = tunnel(
            downstream,
            upstream,
            target.clone(),
            ctx.permit.clone(),
            ctx.idle_timeout,
        );
        ctx.tracker
            .spawn(ctx.abort.clone().run_until_cancelled_owned(tunnel));
    }
    Ok(res)
}

/// Copies bytes between an upgraded client connection and its upstream until both ends
/// finish, the tunnel idles out, or the proxy aborts after its drain. It holds the client
/// connection's slot under the connection cap for as long as it runs, and is tracked, so a
/// drain waits for it.
async fn tunnel(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    target: Arc<Target>,
    _permit: Arc<OwnedSemaphorePermit>,
    idle: Duration,
) {
    let dst = target.addr;
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::info!(%dst, %error, "upgrade failed after the upstream agreed");
            return;
        }
    };
    let state = ConnState::new();
    let mut down = ServerIo::new(TokioIo::new(down), state.clone(), Watch::Bytes);
    let mut up = TokioIo::new(up);
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut down, &mut up) => match res {
            Ok((tx, rx)) => tracing::debug!(%dst, tx, rx, "tunnel closed"),
            Err(error) => tracing::debug!(%dst, %error, "tunnel failed"),
        },
        _ = state.expired(None, idle, None) => tracing::debug!(%dst, "idle tunnel closed"),
    }
    let (read, written) = state.bytes();
    target.tcp.transferred(read, written);
}

/// Passes the end of an HTTP/2 request body on to the connection's bookkeeping and to the
/// stream's response timer.
struct BodySent {
    conn: Arc<dyn BodyEnd>,
    ended: tokio::sync::Notify,
    base: Instant,
    /// Milliseconds after `base` of the last body chunk.
    progress_ms: std::sync::atomic::AtomicU64,
}

impl BodySent {
    fn new(conn: Arc<dyn BodyEnd>) -> Self {
        Self {
            conn,
            ended: tokio::sync::Notify::new(),
            base: Instant::now(),
            progress_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn progressed_at(&self) -> Instant {
        self.base
            + Duration::from_millis(self.progress_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl BodyEnd for BodySent {
    fn progressed(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.progress_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
        self.conn.progressed();
    }

    fn body_ended(&self, complete: bool) {
        self.conn.body_ended(complete);
        // A stored permit: the timer starts even if it begins waiting only later.
        self.ended.notify_one();
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, and an absolute-form target
/// wins over it. Routing reads the authority, so a request whose authority is missing or
/// ambiguous is refused rather than guessed at.
fn check_host<B>(req: &Request<B>) -> Result<(), BadRequest> {
    if req.version() == http::Version::HTTP_2 {
        return Ok(());
    }
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest::new("more than one Host header"));
    }
    match (host, req.uri().authority()) {
        (None, _) if req.version() == http::Version::HTTP_11 => {
            Err(BadRequest::new("HTTP/1.1 request without a Host header"))
        }
        (Some(h), Some(a))
            if req.method() != Method::CONNECT
                && !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) =>
        {
            Err(BadRequest::new(
                "Host header differs from the request target's authority",
            ))
        }
        _ => Ok(()),
    }
}

/// The header that carries the verified identity of an inbound peer to the application.
const L5D_CLIENT_ID: &str = "l5d-client-id";

pin_project! {
    /// The body the proxy's server sends: the response body plus the guard that marks the
    /// request finished when the body is done or dropped.
    #[derive(Debug)]
    pub(crate) struct ServerBody {
        #[pin]
        inner: ProxyBody,
        _guard: RequestGuard,
    }
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
