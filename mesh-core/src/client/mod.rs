//! HTTP clients to one upstream endpoint: pooled HTTP/1 connections and one multiplexed
//! HTTP/2 connection.
//!
//! [`HttpEndpoint`] is the last stage of the request path (DESIGN.md §3, "per endpoint"): it
//! owns the connections to one address, opened through a connect service (plain TCP today;
//! mTLS wraps it later), and sends each request in the HTTP version it arrived in, so an h2c
//! client keeps HTTP/2 end to end and gRPC trailers pass through untouched.
//!
//! Built on `hyper::client::conn` directly rather than hyper-util's pooled `Client`: the
//! endpoint is already known, so the pool needs no per-request key hashing, URI rewriting or
//! spawned task per request.
//!
//! HTTP/1 connections are reused after their response ends; a request that a pooled
//! connection could not even start sending (the upstream closed it while idle) is sent again
//! on a fresh connection, which is safe because no byte of it left the proxy.

mod expect;
mod pool;

pub use self::pool::UpstreamBody;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Version};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tower_service::Service;

use crate::BoxError;
use crate::body::{ProxyBody, RequestBody};
use crate::connect::TcpConnect;
use crate::target::{Endpoint, ProtocolHint};

use self::pool::{IdleList, Returner};

/// Limits and tuning for the connections to one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Idle HTTP/1 connections kept per endpoint. Default: 256.
    pub max_idle_per_endpoint: usize,
    /// How long an idle HTTP/1 connection is kept. Default: 30s.
    pub idle_timeout: Duration,
    /// Largest response head accepted from an upstream, in bytes. Default: 64 KiB.
    pub max_response_header_bytes: usize,
    /// How long a request body that expects `100-continue` is held for the upstream's
    /// `100 Continue` before it is sent anyway. Keep it below any response timeout that
    /// counts a held body as stalled. Default: 1s.
    pub continue_wait: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_idle_per_endpoint: 256,
            idle_timeout: Duration::from_secs(30),
            max_response_header_bytes: 64 * 1024,
            continue_wait: Duration::from_secs(1),
        }
    }
}

/// The upstream failed the exchange after the connection was open: it closed early, sent
/// malformed HTTP, or reset the stream.
#[derive(Debug, thiserror::Error)]
#[error("upstream {addr}: {source}")]
pub struct UpstreamError {
    addr: SocketAddr,
    #[source]
    source: hyper::Error,
}

impl UpstreamError {
    /// The endpoint that failed.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the upstream exchange timed out inside hyper.
    pub fn is_timeout(&self) -> bool {
        self.source.is_timeout()
    }

    /// Whether the upstream refused the HTTP/2 stream (`REFUSED_STREAM`), which guarantees
    /// it did not process the request.
    pub fn is_refused_stream(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&self.source);
        while let Some(e) = cur {
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            }
            cur = e.source();
        }
        false
    }

    pub(crate) fn hyper_error(&self) -> &hyper::Error {
        &self.source
    }
}

/// The upstream's response was framed ambiguously (both `Content-Length` and
/// `Transfer-Encoding`). It is refused rather than forwarded, and its connection is closed:
/// bytes after such a response could be taken for the next response (response splitting).
#[derive(Debug, thiserror::Error)]
#[error("upstream {addr} sent an ambiguous response: {reason}")]
pub struct BadResponse {
    addr: SocketAddr,
    reason: &'static str,
}

impl BadResponse {
    /// The endpoint that sent it.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Connections to one upstream address, shared by every request to it.
pub struct HttpEndpoint<C = TcpConnect> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    endpoint: Endpoint,
    addr: SocketAddr,
    connect: C,
    config: ClientConfig,
    idle: Arc<IdleList>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    h2_connecting: tokio::sync::Mutex<()>,
}

impl<C> Clone for HttpEndpoint<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> std::fmt::Debug for HttpEndpoint<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl<C, I> HttpEndpoint<C>
where
    C: Service<Endpoint, Response = I, Error = BoxError> + Clone + Send + Sync + 'static,
    C::Future: Send,
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    /// Connections to `endpoint`, opened with `connect` (which gets the endpoint target, so
    /// a TLS connector sees the identity it must present).
    pub fn new(endpoint: Endpoint, connect: C, config: ClientConfig) -> Self {
        let addr = endpoint.addr();
        let idle = Arc::new(IdleList::new(
            config.max_idle_per_endpoint,
            config.idle_timeout,
        ));
        Self {
            inner: Arc::new(Inner {
                endpoint,
                addr,
                connect,
                config,
                idle,
                h2: Mutex::new(None),
                h2_connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The endpoint target.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// Closes idle connections past their idle timeout; returns how many idle HTTP/1
    /// connections remain.
    pub fn evict_expired(&self) -> usize {
        self.inner.idle.evict_expired()
    }

    /// Sends `req` in its own HTTP version and returns the upstream's response.
    ///
    /// A `101 Switching Protocols` response (or a 2xx answer to `CONNECT`) leaves its
    /// connection to the caller's upgrade; it never returns to the pool.
    ///
    /// # Errors
    ///
    /// The connect service's errors, or [`UpstreamError`].
    pub async fn send(&self, req: Request<RequestBody>) -> Result<Response<ProxyBody>, BoxError> {
        if req.version() == Version::HTTP_2 {
            self.send_h2(req).await
        } else {
            self.send_h1(req).await
        }
    }

    async fn send_h1(&self, req: Request<RequestBody>) -> Result<Response<ProxyBody>, BoxError> {
        let addr = self.inner.addr;
        let is_connect = req.method() == Method::CONNECT;
        let mut req = req;
        let held = expect::hold_for_continue(&mut req, self.inner.config.continue_wait);
        // At most one retry, and only for a pooled connection that closed before the
        // request started: then the upstream cannot have seen any of it.
        let (mut sender, reused) = match self.inner.idle.checkout() {
            Some(s) => (s, true),
            None => (Box::pin(self.connect_h1()).await?, false),
        };
        let mut may_retry = reused;
        let res = loop {
            if let Err(source) = sender.ready().await {
                if may_retry {
                    may_retry = false;
                    sender = Box::pin(self.connect_h1()).await?;
                    continue;
                }
                return Err(UpstreamError { addr, source }.into());
            }
            match sender.try_send_request(req).await {
                Ok(res) => break res,
                Err(mut e) => match e.take_message() {
                    Some(unsent) if may_retry => {
                        tracing::debug!(%addr, error = %e.error(), "pooled connection closed; reconnecting");
                        may_retry = false;
                        req = unsent;
                        sender = Box::pin(self.connect_h1()).await?;
                    }
                    _ => {
                        return Err(UpstreamError {
                            addr,
                            source: e.into_error(),
                        }
                        .into());
                    }
                },
            }
        };
        if let Some(held) = held {
            // A final answer before any `100 Continue`. A refusal (`417`, `413`, a redirect)
            // means the body is never sent; a `2xx` that streams while it reads (an echo)
            // still wants it.
            if res.status().is_success() {
                held.release();
            } else {
                held.refuse();
            }
        }
        if res.headers().contains_key(http::header::TRANSFER_ENCODING)
            && res.headers().contains_key(http::header::CONTENT_LENGTH)
        {
            // Dropping the sender and the response closes the connection.
            return Err(BadResponse {
                addr,
                reason: "both content-length and transfer-encoding",
            }
            .into());
        }
        let upgraded = res.status() == StatusCode::SWITCHING_PROTOCOLS
            || (is_connect && res.status().is_success());
        if upgraded {
            return Ok(res.map(ProxyBody::upstream));
        }
        let returner = Returner::new(sender, Arc::downgrade(&self.inner.idle));
        Ok(res.map(|b| ProxyBody::from_upstream(UpstreamBody::returning(b, returner))))
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<RequestBody>, BoxError> {
        let addr = self.inner.addr;
        // The connect stack learns which protocol this connection will carry (mTLS offers it
        // in ALPN, so HTTP/1.1 stays HTTP/1.1 across the hop).
        let target = self
            .inner
            .endpoint
            .clone()
            .with_protocol(ProtocolHint::Http1);
        let io = self.inner.connect.clone().call(target).await?;
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(self.inner.config.max_response_header_bytes.max(8192))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError { addr, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%addr, %error, "upstream HTTP/1 connection failed");
            }
        });
        Ok(sender)
    }

    async fn send_h2(&self, req: Request<RequestBody>) -> Result<Response<ProxyBody>, BoxError> {
        let addr = self.inner.addr;
        let mut sender = self.h2_sender().await?;
        // At most one re-send, and only of a request the connection handed back unsent: the
        // upstream said GOAWAY (or the connection closed) before the stream was opened, so
        // the upstream never saw it. New streams then go to a new connection.
        let mut may_retry = true;
        let mut req = req;
        let res = loop {
            match sender.try_send_request(req).await {
                Ok(res) => break res,
                Err(mut e) => match e.take_message() {
                    Some(unsent) if may_retry => {
                        tracing::debug!(%addr, error = %e.error(), "HTTP/2 connection went away; reconnecting");
                        may_retry = false;
                        req = unsent;
                        // The handed-back connection is closed, so this connects anew (or
                        // joins a connection another request just opened).
                        sender = Box::pin(self.connect_h2()).await?;
                    }
                    _ => {
                        return Err(UpstreamError {
                            addr,
                            source: e.into_error(),
                        }
                        .into());
                    }
                },
            }
        };
        Ok(res.map(ProxyBody::upstream))
    }

    async fn h2_sender(&self) -> Result<http2::SendRequest<RequestBody>, BoxError> {
        if let Some(s) = self.cached_h2() {
            return Ok(s);
        }
        // Connecting is rare; boxing it keeps every request's future small.
        Box::pin(self.connect_h2()).await
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<RequestBody>, BoxError> {
        // One connect at a time, so a burst of first requests shares one connection.
        let _connecting = self.inner.h2_connecting.lock().await;
        if let Some(s) = self.cached_h2() {
            return Ok(s);
        }
        let addr = self.inner.addr;
        let target = self
            .inner
            .endpoint
            .clone()
            .with_protocol(ProtocolHint::Http2);
        let io = self.inner.connect.clone().call(target).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            // Until the upstream's SETTINGS arrive its stream limit is unknown: open one
            // stream and queue the rest, rather than assume 100 and have the excess refused
            // (a burst on a new connection to an upstream with a lower limit).
            .initial_max_send_streams(1)
            .max_header_list_size(
                u32::try_from(self.inner.config.max_response_header_bytes).unwrap_or(u32::MAX),
            )
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError { addr, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%addr, %error, "upstream HTTP/2 connection failed");
            }
        });
        *self.inner.h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    fn cached_h2(&self) -> Option<http2::SendRequest<RequestBody>> {
        let mut slot = self.inner.h2.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }
}

/// An endpoint is the innermost service of a request stack: later layers (timeouts, retries,
/// a balancer over several endpoints) wrap it as a `tower::Service`.
///
/// It is always ready: connections are opened, reused or multiplexed per request, so there
/// is no capacity to wait for here; a balancer in front of several endpoints adds readiness
/// by load.
impl<C, I> Service<Request<RequestBody>> for HttpEndpoint<C>
where
    C: Service<Endpoint, Response = I, Error = BoxError> + Clone + Send + Sync + 'static,
    C::Future: Send,
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;

    /// An upstream answering every request with its method and path.
    async fn upstream() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let text = format!("{} {}", req.method(), req.uri().path());
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from(
                        text,
                    ))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc),
                );
            }
        });
        addr
    }

    /// A front server that hands each request to `endpoint` through `tower::Service`.
    async fn front(endpoint: HttpEndpoint) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let endpoint = endpoint.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let mut endpoint = endpoint.clone();
                    async move {
                        Service::call(&mut endpoint, req.map(|b| RequestBody::new(b, None))).await
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn endpoint_serves_as_a_tower_service_and_reuses_its_connection() {
        let up = upstream().await;
        let endpoint = HttpEndpoint::new(
            Endpoint::new(up),
            TcpConnect::default(),
            ClientConfig::default(),
        );
        let addr = front(endpoint.clone()).await;
        let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        tokio::spawn(conn);
        for path in ["/a", "/b", "/c"] {
            tx.ready().await.expect("ready");
            let req = Request::get(path)
                .header("host", "x")
                .body(Empty::<bytes::Bytes>::new())
                .expect("request");
            let res = tx.send_request(req).await.expect("response");
            let body = res.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(body, format!("GET {path}"));
        }
        tokio::task::yield_now().await;
        assert_eq!(
            endpoint.evict_expired(),
            1,
            "one pooled upstream connection served all three"
        );
    }
}
