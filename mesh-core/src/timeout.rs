//! A deadline on the response head of each request.
//!
//! [`Timeout`] fails a request with [`ResponseTimeout`] (answered `504`, gRPC
//! `DEADLINE_EXCEEDED`, by [`crate::errors::classify`]) when the inner service has not
//! produced a response head within its duration. Only the head is timed: a response that has
//! begun — a download, an SSE or gRPC stream — runs as long as bytes keep flowing, which the
//! connection's idle timeout guards.
//!
//! It sits per concrete destination (DESIGN.md §3), inside retries so that each attempt gets
//! its own deadline. Readiness is not timed: waiting for a ready endpoint is bounded by the
//! balancer's own fail-fast. A per-route timeout is this layer with the route's duration: each request gets a
//! timer of its own, exact to the millisecond. (The proxy's listener-wide HTTP/1 response
//! timeout is enforced by the connection watchdog instead, without a timer per request.)
//!
//! ```
//! # async fn run() -> Result<(), mesh_core::BoxError> {
//! use std::time::Duration;
//! use mesh_core::timeout::TimeoutLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new("world", Duration::from_secs(2)))
//!     .service_fn(|name: &'static str| async move { Ok::<_, mesh_core::BoxError>(format!("hello, {name}")) });
//! assert_eq!(svc.oneshot("world").await?, "hello, world");
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use crate::BoxError;
use crate::errors::ResponseTimeout;

/// Applies a response-head deadline to every request of the inner service.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
    dst: Arc<str>,
}

impl<S> Timeout<S> {
    /// Times `inner`'s responses to `dst` (named in the error) with `timeout`.
    pub fn new(inner: S, dst: impl Into<Arc<str>>, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            dst: dst.into(),
        }
    }

    /// The deadline each request gets.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = future::ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is not timed: a balancer's fail-fast bounds waiting for an endpoint.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        future::ResponseFuture::new(
            self.inner.call(req),
            tokio::time::sleep(self.timeout),
            self.dst.clone(),
            self.timeout,
        )
    }
}

/// Builds [`Timeout`] services.
#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
    dst: Arc<str>,
}

impl TimeoutLayer {
    /// A layer timing responses from `dst` with `timeout`.
    pub fn new(dst: impl Into<Arc<str>>, timeout: Duration) -> Self {
        Self {
            timeout,
            dst: dst.into(),
        }
    }
}

impl<S> tower_layer::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            timeout: self.timeout,
            dst: self.dst.clone(),
        }
    }
}

/// The future [`Timeout`] returns.
pub mod future {
    use super::*;

    pin_project! {
        /// The inner response, or [`ResponseTimeout`] once the deadline passes.
        #[derive(Debug)]
        pub struct ResponseFuture<F> {
            #[pin]
            inner: F,
            #[pin]
            sleep: Sleep,
            dst: Arc<str>,
            timeout: Duration,
        }
    }

    impl<F> ResponseFuture<F> {
        pub(super) fn new(inner: F, sleep: Sleep, dst: Arc<str>, timeout: Duration) -> Self {
            Self {
                inner,
                sleep,
                dst,
                timeout,
            }
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
            let this = self.project();
            if let Poll::Ready(res) = this.inner.poll(cx) {
                return Poll::Ready(res.map_err(Into::into));
            }
            match this.sleep.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(ResponseTimeout::for_dst(
                    this.dst.clone(),
                    *this.timeout,
                )
                .into())),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_layer::Layer;
    use tower_test::mock;

    #[tokio::test(start_paused = true)]
    async fn a_late_response_is_a_response_timeout_at_exactly_the_deadline() {
        let (svc, mut handle) = mock::pair::<&str, &str>();
        let mut svc = TimeoutLayer::new("world", Duration::from_millis(500)).layer(svc);
        handle.allow(1);
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("ready");
        let start = tokio::time::Instant::now();
        let fut = svc.call("req");
        let (req, _respond) = handle.next_request().await.expect("request");
        assert_eq!(req, "req");
        let err = fut.await.expect_err("timed out");
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        let err = err
            .downcast_ref::<ResponseTimeout>()
            .expect("ResponseTimeout");
        assert_eq!(err.dst(), "world");
        assert_eq!(err.timeout(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_within_the_deadline_passes_through() {
        let (svc, mut handle) = mock::pair::<&str, &str>();
        let mut svc = Timeout::new(svc, "world", Duration::from_millis(500));
        handle.allow(1);
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("ready");
        let fut = svc.call("req");
        let (_, respond) = handle.next_request().await.expect("request");
        tokio::time::advance(Duration::from_millis(499)).await;
        respond.send_response("res");
        assert_eq!(fut.await.expect("response"), "res");
    }

    #[tokio::test(start_paused = true)]
    async fn inner_errors_pass_through_unchanged() {
        let (svc, mut handle) = mock::pair::<&str, &str>();
        let mut svc = Timeout::new(svc, "world", Duration::from_secs(1));
        handle.allow(1);
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("ready");
        let fut = svc.call("req");
        let (_, respond) = handle.next_request().await.expect("request");
        respond.send_error(std::io::Error::other("boom"));
        let err = fut.await.expect_err("error");
        assert!(err.downcast_ref::<ResponseTimeout>().is_none());
        assert!(err.to_string().contains("boom"));
    }
}
