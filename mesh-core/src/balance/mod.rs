//! Load balancing over a destination's discovered endpoints.
//!
//! Power of two choices over the ready endpoints, each weighed by its Peak-EWMA load
//! (Finagle's balancer, as tower implements it — `p2c` mirrors `tower::balance::p2c`, and
//! lets a retry avoid the endpoints its request already tried — over
//! `tower::load::PeakEwma`, completing a request's latency sample at its response head).
//! Around that:
//!
//! ```text
//! Balancer (cloneable handle) ─▶ Buffer (bounded queue, one worker task per destination)
//!   ─▶ FailFast (no ready endpoint within the timeout, or no such name ⇒ 503 at once)
//!   ─▶ P2c ─▶ PeakEwma ─▶ FailureAccrual (eject after N consecutive failures)
//!   ─▶ the endpoint's service (its HTTP client)
//! ```
//!
//! Endpoints come from a [`Resolution`] watch ([`discover`]): they join and leave the
//! balancer as the resolver's sets change, and a leaving endpoint's service (and its
//! connections) is dropped. One queue per destination, so a destination with no endpoints
//! never holds up another.

mod accrual;
pub mod discover;
mod failfast;
mod p2c;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::sync::watch;
use tower::buffer::Buffer;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower_service::Service;

pub use self::accrual::{AccrualConfig, AccrualHandle, FailureAccrual, Health, WARMUP_CAP};
pub use self::discover::{
    EndpointEntry, EndpointState, EndpointView, Endpoints, ResolutionDiscover, Summary,
};
pub use self::failfast::{BoxResponse, FailFast, Unavailable};
pub use self::p2c::{P2c, Tried};
use crate::BoxError;
use crate::body::{ProxyBody, RequestBody};
use crate::resolve::Resolution;
use crate::target::Endpoint;

/// How a destination's balancer behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalanceConfig {
    /// The latency assumed of an endpoint before it has answered. Default: 1 ms: optimistic,
    /// so a new endpoint is tried at once — one request, its warm-up — and then judged on its
    /// measured latency. (A pessimistic default would leave a new endpoint unused under light
    /// load, where the known endpoints' cost never rises above it.)
    pub default_rtt: Duration,
    /// How fast old latency samples fade. Default: 10 s.
    pub decay: Duration,
    /// When endpoints are ejected.
    pub accrual: AccrualConfig,
    /// How long requests may wait for a ready endpoint before failing at once. Default: 3 s.
    pub fail_fast: Duration,
    /// Requests queued per destination; more wait for room. Default: 100.
    pub queue: usize,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(1),
            decay: Duration::from_secs(10),
            accrual: AccrualConfig::default(),
            fail_fast: Duration::from_secs(3),
            queue: 100,
        }
    }
}

/// A destination's balancer: a cloneable handle to its queue.
#[derive(Clone)]
pub struct Balancer {
    dst: Arc<str>,
    buffer: Buffer<Request<RequestBody>, BoxResponse>,
    endpoints: Arc<Endpoints>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("dst", &self.dst)
            .field("endpoints", &self.endpoints.summary())
            .finish_non_exhaustive()
    }
}

impl Balancer {
    /// A balancer for `dst` over the endpoints `resolution` names, each served by the
    /// service `make` builds for it. Spawns the queue's worker: call within a Tokio runtime.
    pub fn new<S, F>(
        dst: Arc<str>,
        resolution: watch::Receiver<Resolution>,
        mut make: F,
        config: &BalanceConfig,
    ) -> Self
    where
        F: FnMut(&Endpoint) -> S + Send + Unpin + 'static,
        S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = BoxError>
            + Send
            + Unpin
            + 'static,
        S::Future: Send + 'static,
    {
        let endpoints = Arc::new(Endpoints::default());
        let accrual = config.accrual;
        let discover = ResolutionDiscover::new(
            resolution,
            move |e: &Endpoint| {
                let svc = FailureAccrual::new(make(e), accrual);
                let handle = svc.handle();
                (svc, handle)
            },
            endpoints.clone(),
        );
        let discover = PeakEwmaDiscover::new(
            discover,
            config.default_rtt,
            config.decay,
            CompleteOnResponse::default(),
        );
        let balance = P2c::new(discover);
        let failfast = FailFast::new(balance, config.fail_fast, dst.clone(), endpoints.clone());
        Self {
            dst,
            buffer: Buffer::new(failfast, config.queue.max(1)),
            endpoints,
        }
    }

    /// The destination's endpoints and their health.
    pub fn endpoints(&self) -> &Arc<Endpoints> {
        &self.endpoints
    }

    /// The destination's name.
    pub fn dst(&self) -> &Arc<str> {
        &self.dst
    }
}

impl Service<Request<RequestBody>> for Balancer {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxResponse;

    /// Always ready: the wait for room in the queue happens in the response future, so a
    /// stack holding this handle never blocks on one destination.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> BoxResponse {
        let mut buffer = self.buffer.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| buffer.poll_ready(cx)).await?;
            let response: Result<Response<ProxyBody>, BoxError> = buffer.call(req).await;
            response
        })
    }
}
