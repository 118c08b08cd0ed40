//! The layer that turns a failed request into its response, at the top of a server stack.
//!
//! Below it, every stage fails with a named error; above it, there are only responses — what
//! the client sees and what the metrics layer counts. It logs each failure at most once a
//! second per destination, with how many it suppressed: a failing upstream must not become a
//! flood of log lines.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, Version};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{classify, error_response_for};
use crate::BoxError;
use crate::body::ProxyBody;
use crate::classify::is_grpc;
use crate::log_limit::LogLimit;

/// Answers the inner service's errors with the classifier's response.
#[derive(Clone, Debug)]
pub struct Respond<S> {
    inner: S,
    report: Arc<Report>,
    /// The inner service failed to become ready: the next request is answered with it.
    failed: Option<Arc<BoxError>>,
}

#[derive(Debug)]
struct Report {
    dst: Arc<str>,
    limit: LogLimit,
}

impl<S> Respond<S> {
    /// Answers `inner`'s failures; log lines name `dst`.
    pub fn new(inner: S, dst: impl Into<Arc<str>>) -> Self {
        RespondLayer::new(dst).layer(inner)
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

impl<S, B> Service<Request<B>> for Respond<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = future::ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        // A service that cannot become ready fails the next request instead, answered like
        // any other error; it is not called.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                self.failed = Some(Arc::new(e.into()));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = is_grpc(req.headers());
        let h2 = req.version() == Version::HTTP_2;
        let (inner, failed) = match self.failed.take() {
            Some(error) => (None, Some(error)),
            None => (Some(self.inner.call(req)), None),
        };
        future::ResponseFuture {
            grpc,
            h2,
            inner,
            failed,
            report: self.report.clone(),
        }
    }
}

impl Report {
    fn log(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) -> super::Classified {
        let c = classify(error);
        if let Some(suppressed) = self.limit.allow() {
            if c.unclassified {
                tracing::warn!(dst = %self.dst, %error, suppressed, "request failed with an unclassified error");
            } else {
                tracing::info!(dst = %self.dst, %error, suppressed, "request failed");
            }
        }
        c
    }
}

/// Builds [`Respond`] services for one destination; they share one log limit.
#[derive(Clone, Debug)]
pub struct RespondLayer {
    report: Arc<Report>,
}

impl RespondLayer {
    /// Failures are logged naming `dst`, at most once a second across every service this
    /// layer builds.
    pub fn new(dst: impl Into<Arc<str>>) -> Self {
        Self {
            report: Arc::new(Report {
                dst: dst.into(),
                limit: LogLimit::new(),
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for RespondLayer {
    type Service = Respond<S>;

    fn layer(&self, inner: S) -> Respond<S> {
        Respond {
            inner,
            report: self.report.clone(),
            failed: None,
        }
    }
}

/// The future [`Respond`] returns.
pub mod future {
    use super::*;

    pin_project! {
        /// The inner response, or the response its error is answered with.
        #[derive(Debug)]
        pub struct ResponseFuture<F> {
            #[pin]
            pub(super) inner: Option<F>,
            pub(super) failed: Option<Arc<BoxError>>,
            pub(super) report: Arc<Report>,
            pub(super) grpc: bool,
            pub(super) h2: bool,
        }
    }

    impl<F, E> Future for ResponseFuture<F>
    where
        F: Future<Output = Result<Response<ProxyBody>, E>>,
        E: Into<BoxError>,
    {
        type Output = Result<Response<ProxyBody>, Infallible>;

        #[inline]
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let error = match (this.inner.as_pin_mut(), this.failed.take()) {
                (Some(inner), _) => match inner.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(res)) => return Poll::Ready(Ok(res)),
                    Poll::Ready(Err(e)) => Arc::new(e.into()),
                },
                (None, Some(failed)) => failed,
                (None, None) => return Poll::Pending,
            };
            let c = this.report.log(error.as_ref().as_ref());
            let mut res = error_response_for(&c, *this.grpc);
            if *this.h2 {
                // HTTP/2 has no connection-level `Connection` header.
                res.headers_mut().remove(http::header::CONNECTION);
            }
            Poll::Ready(Ok(res))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::{BadRequest, L5D_PROXY_ERROR};
    use tower_test::mock;

    #[tokio::test]
    async fn errors_become_responses_once_classified() {
        let (svc, mut handle) = mock::pair::<Request<()>, Response<ProxyBody>>();
        let mut svc = RespondLayer::new("world").layer(svc);
        handle.allow(2);
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("ready");
        let fut = svc.call(Request::new(()));
        let (_, respond) = handle.next_request().await.expect("request");
        respond.send_error(BadRequest::new("more than one Host header"));
        let res = fut.await.expect("infallible");
        assert_eq!(res.status(), http::StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()["connection"], "close");
        assert!(
            res.headers()[L5D_PROXY_ERROR]
                .to_str()
                .expect("ascii")
                .contains("more than one Host")
        );

        // gRPC over HTTP/2: a trailers-only answer, no connection header.
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("ready");
        let req = Request::builder()
            .version(Version::HTTP_2)
            .header("content-type", "application/grpc")
            .body(())
            .expect("request");
        let fut = svc.call(req);
        let (_, respond) = handle.next_request().await.expect("request");
        respond.send_error(BadRequest::new("bad"));
        let res = fut.await.expect("infallible");
        assert_eq!(res.status(), http::StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "13");
        assert!(!res.headers().contains_key("connection"));
    }

    #[tokio::test]
    async fn a_service_that_cannot_become_ready_fails_the_next_request_without_a_call() {
        let (svc, mut handle) = mock::pair::<Request<()>, Response<ProxyBody>>();
        let mut svc = RespondLayer::new("world").layer(svc);
        handle.send_error(BadRequest::new("not ready"));
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("ready: the error is kept for the request");
        let res = svc.call(Request::new(())).await.expect("infallible");
        assert_eq!(res.status(), http::StatusCode::BAD_REQUEST);
        assert!(
            res.headers()[L5D_PROXY_ERROR]
                .to_str()
                .expect("ascii")
                .contains("not ready")
        );
        handle.allow(1);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), handle.next_request())
                .await
                .is_err(),
            "the inner service was not called"
        );
    }
}
