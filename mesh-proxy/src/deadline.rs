//! The listener-wide response timeout (`limits.response_timeout`): the upstream's response
//! head must come within it once the request body has ended.
//!
//! The clock starts at the end of the request body, as Envoy's route timeout does: an
//! upload that takes longer than the timeout is a slow client, not a slow upstream. While
//! the body is still arriving, the clock restarts with each chunk, so an upload the upstream
//! stopped reading (and does not answer) is bounded too.
//!
//! HTTP/1 has one request in flight per connection, so its connection watchdog
//! ([`ConnState`]) enforces the deadline with no timer per request. An HTTP/2 stream gets a
//! timer of its own. Per-route timeouts are [`mesh_core::timeout::Timeout`] layers inside
//! this one, per concrete destination.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Version};
use mesh_core::BoxError;
use mesh_core::body::BodyEnd;
use mesh_core::errors::ResponseTimeout;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::conn::ConnState;

/// Fails requests whose response head is late with [`ResponseTimeout`].
#[derive(Clone, Debug)]
pub(crate) struct ResponseDeadline<S> {
    inner: S,
    conn: Arc<ConnState>,
    timeout: Duration,
    dst: Arc<str>,
}

impl<S> ResponseDeadline<S> {
    /// Requests on the connection `conn` to `dst` get `timeout`.
    pub(crate) fn layer(
        conn: Arc<ConnState>,
        dst: Arc<str>,
        timeout: Duration,
    ) -> impl tower_layer::Layer<S, Service = Self> + Clone {
        tower_layer::layer_fn(move |inner| ResponseDeadline {
            inner,
            conn: conn.clone(),
            timeout,
            dst: dst.clone(),
        })
    }
}

impl<S, B, R> Service<Request<B>> for ResponseDeadline<S>
where
    S: Service<Request<B>, Response = R>,
    S::Error: Into<BoxError>,
{
    type Response = R;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let timeout = self.timeout;
        let dst = self.dst.clone();
        if req.version() != Version::HTTP_2 {
            self.conn.await_response_head(timeout);
            return ResponseFuture::Watched {
                inner: self.inner.call(req),
                conn: self.conn.clone(),
                dst,
                timeout,
            };
        }
        match req.extensions_mut().remove::<StreamBody>() {
            None => ResponseFuture::Timed {
                inner: self.inner.call(req),
                // Boxed: a timer is large, and this future is nested inside every layer
                // above it, HTTP/1 requests' included.
                sleep: Box::pin(tokio::time::sleep(timeout)),
                dst,
                timeout,
            },
            Some(StreamBody(sent)) => ResponseFuture::AfterBody {
                inner: self.inner.call(req),
                timer: Box::pin(after_body(sent, timeout)),
                dst,
                timeout,
            },
        }
    }
}

/// Sleeps until the response is late: one timeout after the body ended, or after its last
/// chunk if it stalls first.
async fn after_body(sent: Arc<BodySent>, timeout: Duration) {
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
}

pin_project! {
    /// The inner response, or [`ResponseTimeout`].
    #[project = Proj]
    pub(crate) enum ResponseFuture<F> {
        /// HTTP/1: the connection watchdog keeps the time.
        Watched { #[pin] inner: F, conn: Arc<ConnState>, dst: Arc<str>, timeout: Duration },
        /// An HTTP/2 stream without a body: a timer from now.
        Timed { #[pin] inner: F, sleep: Pin<Box<Sleep>>, dst: Arc<str>, timeout: Duration },
        /// An HTTP/2 stream with a body: a timer from its end (or its stall).
        AfterBody {
            #[pin] inner: F,
            timer: Pin<Box<dyn Future<Output = ()> + Send>>,
            dst: Arc<str>,
            timeout: Duration,
        },
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (late, dst, timeout) = match self.project() {
            Proj::Watched {
                inner,
                conn,
                dst,
                timeout,
            } => {
                if let Poll::Ready(res) = inner.poll(cx) {
                    conn.response_head_done();
                    return Poll::Ready(res.map_err(Into::into));
                }
                let late = conn.poll_response_late(cx).is_ready();
                if late {
                    conn.response_head_done();
                }
                (late, dst, timeout)
            }
            Proj::Timed {
                inner,
                sleep,
                dst,
                timeout,
            } => {
                if let Poll::Ready(res) = inner.poll(cx) {
                    return Poll::Ready(res.map_err(Into::into));
                }
                (sleep.as_mut().poll(cx).is_ready(), dst, timeout)
            }
            Proj::AfterBody {
                inner,
                timer,
                dst,
                timeout,
            } => {
                if let Poll::Ready(res) = inner.poll(cx) {
                    return Poll::Ready(res.map_err(Into::into));
                }
                (timer.as_mut().poll(cx).is_ready(), dst, timeout)
            }
        };
        if late {
            Poll::Ready(Err(ResponseTimeout::for_dst(dst.clone(), *timeout).into()))
        } else {
            Poll::Pending
        }
    }
}

/// Marks an HTTP/2 request whose body is still arriving: its deadline waits for the body.
#[derive(Clone, Debug)]
pub(crate) struct StreamBody(pub(crate) Arc<BodySent>);

/// Passes the end of an HTTP/2 request body (and its progress) on to the connection's
/// bookkeeping and to the stream's response timer.
pub(crate) struct BodySent {
    conn: Arc<dyn BodyEnd>,
    ended: tokio::sync::Notify,
    base: Instant,
    /// Milliseconds after `base` of the last body chunk.
    progress_ms: AtomicU64,
}

impl std::fmt::Debug for BodySent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodySent").finish_non_exhaustive()
    }
}

impl BodySent {
    pub(crate) fn new(conn: Arc<dyn BodyEnd>) -> Self {
        Self {
            conn,
            ended: tokio::sync::Notify::new(),
            base: Instant::now(),
            progress_ms: AtomicU64::new(0),
        }
    }

    fn progressed_at(&self) -> Instant {
        self.base + Duration::from_millis(self.progress_ms.load(Ordering::Relaxed))
    }
}

impl BodyEnd for BodySent {
    fn progressed(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.progress_ms.store(ms, Ordering::Relaxed);
        self.conn.progressed();
    }

    fn body_ended(&self, complete: bool) {
        self.conn.body_ended(complete);
        // A stored permit: the timer starts even if it begins waiting only later.
        self.ended.notify_one();
    }
}
