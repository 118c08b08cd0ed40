//! Failure accrual: an endpoint that keeps failing is taken out of the balancer for a while.
//!
//! After `failures` consecutive failures (a connection error, or a response the shared
//! classifier calls a failure — a 5xx, a gRPC error status in the head) the endpoint is
//! ejected: its `poll_ready` stays pending for a backoff that grows exponentially, with
//! jitter, from `min` to `max` (tower's `ExponentialBackoffMaker`). When the backoff ends it
//! admits one probe request; a success restores it (and resets the backoff), a failure ejects
//! it again for the next, longer backoff. This is what keeps P2C honest: an endpoint that
//! fails instantly would otherwise look like the least loaded one and draw more traffic.
//!
//! The same per-endpoint state gives a new endpoint a warm-up: until it has answered once
//! (or [`WARMUP_CAP`] has passed since its first request), it takes one request at a time.
//! Peak-EWMA knows nothing of an endpoint before its first answer, so without this a burst
//! of concurrent requests to a cold balancer splits evenly between a fast and a slow replica
//! (half the burst waits for the slow one); with it the burst waits at most one answer of the
//! fastest endpoint, and the slow one is found out by a single request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::util::rng::HasherRng;
use tower_service::Service;

use crate::BoxError;
use crate::body::{ProxyBody, RequestBody};
use crate::classify::{Classify, ResponseClass};

/// How long a new endpoint takes one request at a time if its first answer does not come.
pub const WARMUP_CAP: Duration = Duration::from_secs(1);

/// When an endpoint is ejected, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccrualConfig {
    /// Consecutive failures that eject an endpoint. Default: 5.
    pub failures: u32,
    /// The first ejection's backoff. Default: 1 s.
    pub min_backoff: Duration,
    /// The longest backoff. Default: 60 s.
    pub max_backoff: Duration,
}

impl Default for AccrualConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// An endpoint's health as the balancer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Taking requests.
    Ready,
    /// Ejected until its backoff ends.
    Ejected,
    /// Its backoff ended: one probe request decides.
    Probing,
}

impl Health {
    /// The `state` label: `ready`, `ejected` or `probing`.
    pub fn label(self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::Ejected => "ejected",
            Health::Probing => "probing",
        }
    }
}

/// The accrual state one endpoint shares with its in-flight responses.
#[derive(Debug)]
struct State {
    health: Health,
    consecutive: u32,
    /// Requests sent and not yet answered (the endpoint's current load).
    in_flight: u32,
    /// Whether the endpoint has answered once (or its warm-up ran out).
    warm: bool,
    /// When its first request was sent.
    first_sent: Option<tokio::time::Instant>,
    probe_in_flight: bool,
    /// The task waiting for the probe to finish.
    waiter: Option<Waker>,
}

/// What others may read of an endpoint's accrual (for `/endpoints.json` and metrics).
#[derive(Clone, Debug)]
pub struct AccrualHandle(Arc<Mutex<State>>);

impl AccrualHandle {
    /// The endpoint's health and consecutive failures.
    pub fn snapshot(&self) -> (Health, u32) {
        let s = lock(&self.0);
        (s.health, s.consecutive)
    }

    /// Requests sent to the endpoint and not yet answered.
    pub fn in_flight(&self) -> u32 {
        lock(&self.0).in_flight
    }
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Failure accrual around one endpoint's service.
pub struct FailureAccrual<S> {
    inner: S,
    failures: u32,
    state: Arc<Mutex<State>>,
    maker: ExponentialBackoffMaker<HasherRng>,
    backoff: ExponentialBackoff<HasherRng>,
    /// Whether the backoff has advanced since the endpoint was last healthy.
    escalated: bool,
    /// The current ejection's timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The end of the warm-up, while the endpoint is cold.
    warmup: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for FailureAccrual<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureAccrual")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<S> FailureAccrual<S> {
    /// Accrual with `config` around `inner`.
    pub fn new(inner: S, config: AccrualConfig) -> Self {
        // Jitter of 50 %: endpoints ejected together do not all come back together. Only an
        // invalid range or jitter makes the maker fail; the range is ordered here.
        let mut maker = ExponentialBackoffMaker::new(
            config.min_backoff,
            config.max_backoff.max(config.min_backoff),
            0.5,
            HasherRng::default(),
        )
        .unwrap_or_default();
        let backoff = maker.make_backoff();
        Self {
            inner,
            failures: config.failures.max(1),
            state: Arc::new(Mutex::new(State {
                health: Health::Ready,
                consecutive: 0,
                in_flight: 0,
                warm: false,
                first_sent: None,
                probe_in_flight: false,
                waiter: None,
            })),
            maker,
            backoff,
            escalated: false,
            sleep: None,
            warmup: None,
        }
    }

    /// A handle to read the endpoint's health.
    pub fn handle(&self) -> AccrualHandle {
        AccrualHandle(self.state.clone())
    }
}

impl<S> FailureAccrual<S> {
    /// Pending while the endpoint is cold and already has its one request in flight.
    fn warming(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let until = {
            let mut s = lock(&self.state);
            match s.first_sent {
                Some(first) if !s.warm && s.in_flight > 0 => {
                    s.waiter = Some(cx.waker().clone());
                    first + WARMUP_CAP
                }
                _ => return Poll::Ready(()),
            }
        };
        let sleep = self
            .warmup
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if sleep.as_mut().poll(cx).is_ready() {
            lock(&self.state).warm = true;
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl<S> Service<Request<RequestBody>> for FailureAccrual<S>
where
    S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.warming(cx).is_pending() {
            return Poll::Pending;
        }
        loop {
            let health = lock(&self.state).health;
            match health {
                Health::Ready => {
                    self.sleep = None;
                    if self.escalated {
                        // Healthy again: the next run of failures starts from the first backoff.
                        self.backoff = self.maker.make_backoff();
                        self.escalated = false;
                    }
                    break;
                }
                Health::Ejected => {
                    if self.sleep.is_none() {
                        self.escalated = true;
                        self.sleep = Some(Box::pin(self.backoff.next_backoff()));
                    }
                    let Some(sleep) = self.sleep.as_mut() else {
                        break;
                    };
                    match sleep.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(()) => {
                            self.sleep = None;
                            let mut s = lock(&self.state);
                            s.health = Health::Probing;
                            s.probe_in_flight = false;
                        }
                    }
                }
                Health::Probing => {
                    let mut s = lock(&self.state);
                    if s.probe_in_flight {
                        s.waiter = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    break;
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let classify = Classify::for_request(req.headers());
        let probe = {
            let mut s = lock(&self.state);
            let probe = s.health == Health::Probing;
            if probe {
                s.probe_in_flight = true;
            }
            s.in_flight = s.in_flight.saturating_add(1);
            if s.first_sent.is_none() {
                s.first_sent = Some(tokio::time::Instant::now());
            }
            probe
        };
        let fut = self.inner.call(req);
        // Counts the request out however its future ends (answered, failed or dropped).
        let mut guard = InFlight {
            state: self.state.clone(),
            probe,
            recorded: false,
        };
        let state = self.state.clone();
        let failures = self.failures;
        Box::pin(async move {
            let res = fut.await;
            let failed = match &res {
                Err(_) => true,
                Ok(r) => classify.head(r.status(), r.headers()) == Some(ResponseClass::Failure),
            };
            record(&state, failed, failures);
            guard.recorded = true;
            drop(guard);
            res
        })
    }
}

/// One request in flight; dropping it counts the request out.
struct InFlight {
    state: Arc<Mutex<State>>,
    /// Whether the request is the probe of an endpoint whose backoff ended.
    probe: bool,
    /// Whether its outcome was recorded (it was answered or failed, not abandoned).
    recorded: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        s.in_flight = s.in_flight.saturating_sub(1);
        if self.probe && !self.recorded && s.health == Health::Probing {
            // The probe was abandoned (the client left, a deadline fired): it proved
            // nothing, so the endpoint goes back to its backoff — never stuck probing.
            s.probe_in_flight = false;
            s.health = Health::Ejected;
        }
        // A cold endpoint whose one request went away (the client left) may take the next.
        if let Some(w) = s.waiter.take() {
            w.wake();
        }
    }
}

/// Records one response's outcome: a success restores the endpoint, the `failures`-th
/// consecutive failure (or a failed probe) ejects it.
fn record(state: &Mutex<State>, failed: bool, failures: u32) {
    let mut s = lock(state);
    // Any answer (an error too) is a latency sample: the endpoint is warm.
    s.warm = true;
    let was_probe = s.health == Health::Probing;
    if failed {
        s.consecutive = s.consecutive.saturating_add(1);
        if was_probe || s.consecutive >= failures {
            s.health = Health::Ejected;
        }
    } else {
        s.consecutive = 0;
        s.health = Health::Ready;
    }
    if was_probe {
        s.probe_in_flight = false;
    }
    if let Some(w) = s.waiter.take() {
        w.wake();
    }
}
