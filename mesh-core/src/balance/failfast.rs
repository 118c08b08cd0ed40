//! Fail-fast: a balancer that cannot serve does not let requests queue behind it.
//!
//! The balancer sits behind a bounded queue (tower's `Buffer`), whose worker asks the
//! balancer for readiness before each request. When no endpoint becomes ready within the
//! fail-fast timeout, [`FailFast`] reports ready anyway and fails each request at once —
//! 503 naming the destination and why (no endpoints, all ejected) — so the queue drains
//! instead of filling. It keeps asking the balancer, and the first time an endpoint is
//! ready again requests flow as before. A name that does not exist fails at once, without
//! the wait. Its `poll_ready` never fails: a failed `poll_ready` would poison the `Buffer`
//! for good.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower_service::Service;

use super::discover::Endpoints;
use crate::BoxError;
use crate::body::{ProxyBody, RequestBody};
use crate::errors::{GrpcCode, HttpError};

/// A destination could not take the request.
#[derive(Debug, thiserror::Error)]
#[error("{dst}: {reason}")]
pub struct Unavailable {
    dst: Arc<str>,
    reason: String,
}

impl Unavailable {
    /// The destination.
    pub fn dst(&self) -> &str {
        &self.dst
    }
}

/// The response future of a balancer stage.
pub type BoxResponse = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

#[derive(Debug)]
enum Mode {
    /// Requests go to the inner service.
    Open,
    /// The inner service is not ready; since when the timer runs.
    Waiting(Pin<Box<tokio::time::Sleep>>),
    /// Requests fail at once until the inner service is ready.
    Failing,
}

/// Fails requests at once after the inner service has not been ready for `timeout`.
#[derive(Debug)]
pub struct FailFast<S> {
    inner: S,
    timeout: Duration,
    mode: Mode,
    dst: Arc<str>,
    endpoints: Arc<Endpoints>,
}

impl<S> FailFast<S> {
    /// Fail-fast for the destination `dst` (whose resolution `endpoints` describes).
    pub fn new(inner: S, timeout: Duration, dst: Arc<str>, endpoints: Arc<Endpoints>) -> Self {
        Self {
            inner,
            timeout,
            mode: Mode::Open,
            dst,
            endpoints,
        }
    }

    /// Why requests fail now, in words.
    fn reason(&self) -> (StatusCode, String) {
        let s = self.endpoints.summary();
        if let Some(why) = s.missing {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no such name: {why}"),
            );
        }
        let total = s.ready + s.ejected + s.probing + s.pending;
        let reason = if !s.resolved {
            format!("no answer from discovery within {:?}", self.timeout)
        } else if total == 0 {
            "no endpoints".to_owned()
        } else if s.ready == 0 {
            format!("all {total} endpoints ejected by failure accrual")
        } else {
            format!("no endpoint ready within {:?}", self.timeout)
        };
        (StatusCode::SERVICE_UNAVAILABLE, reason)
    }
}

impl<S> Service<Request<RequestBody>> for FailFast<S>
where
    S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxResponse;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                if matches!(self.mode, Mode::Failing) {
                    tracing::info!(dst = %self.dst, "endpoints ready again; no longer failing fast");
                }
                self.mode = Mode::Open;
                return Poll::Ready(Ok(()));
            }
            // The balancer's errors are its discovery's, and ours never fails; still, keep
            // the queue alive and fail the requests instead.
            Poll::Ready(Err(error)) => {
                tracing::warn!(dst = %self.dst, %error, "balancer failed; failing fast");
                self.mode = Mode::Failing;
                return Poll::Ready(Ok(()));
            }
            Poll::Pending => {}
        }
        // A name that does not exist is answered at once.
        if self.endpoints.summary().missing.is_some() {
            self.mode = Mode::Failing;
            return Poll::Ready(Ok(()));
        }
        loop {
            match &mut self.mode {
                Mode::Failing => return Poll::Ready(Ok(())),
                Mode::Open => {
                    self.mode = Mode::Waiting(Box::pin(tokio::time::sleep(self.timeout)));
                }
                Mode::Waiting(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let (_, reason) = self.reason();
                    tracing::info!(dst = %self.dst, %reason, "failing fast");
                    self.mode = Mode::Failing;
                }
            }
        }
    }

    fn call(&mut self, req: Request<RequestBody>) -> BoxResponse {
        if matches!(self.mode, Mode::Failing) {
            let (status, reason) = self.reason();
            let error = HttpError::new(
                status,
                GrpcCode::Unavailable,
                Unavailable {
                    dst: self.dst.clone(),
                    reason,
                },
            );
            return Box::pin(std::future::ready(Err(error.into())));
        }
        Box::pin(self.inner.call(req))
    }
}
