//! A service's resilience policy applied to one request: fault injection, a total timeout
//! across attempts, retries with a budget and body replay, a per-try timeout (DESIGN.md §4,
//! `[routers.NAME.service."/svc/x"]`).
//!
//! [`Resilient`] wraps the concrete stage (a balancer, or one endpoint). Its order is the
//! order of the policy's promises:
//!
//! 1. **fault** — an injected delay, then an injected abort answered at once (never retried);
//! 2. **timeouts** — the total `timeout` (lowered by an incoming `grpc-timeout`) covers the
//!    whole exchange: before the response head, expiry is a 504 (gRPC `DEADLINE_EXCEEDED`)
//!    naming the destination; after it, a gRPC stream ends with DEADLINE_EXCEEDED trailers
//!    and any other body fails (the client sees the stream reset, never a short answer
//!    taken for whole). `response_timeout` bounds the head alone, across attempts;
//! 3. **attempts** — each with the per-try timeout; a failure the policy names is tried again
//!    after a jittered exponential backoff while attempts and the budget last. The request
//!    body streams to the first attempt while [`ReplayBody`] keeps up to the replay limit;
//!    a larger body is not retried. A response is judged on its head, before any byte
//!    reaches the client, so nothing is retried once the client has seen part of an answer.
//!
//! Requests without a policy pass straight through (no allocation, no timer).

mod fault;
mod retry;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body as _;
use tower::ServiceExt;
use tower_service::Service;

pub use self::fault::{Fault, Injected, InjectedFault, Percent};
pub use self::retry::{Reason, RetryOn, RetryPolicy, grpc_status, is_idempotent};
use crate::BoxError;
use crate::body::{NotReplayable, ProxyBody, ReplayBody, RequestBody};
use crate::errors::{HttpError, ResponseTimeout, find};

/// Retries, by destination and reason.
pub const RETRY_TOTAL: &str = "mesh_retry_total";
/// Retries refused because the budget was spent, by destination.
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "mesh_retry_budget_exhausted_total";
/// Injected faults, by destination and `fault` (`delay`, `abort`).
pub const FAULT_INJECTED_TOTAL: &str = "mesh_fault_injected_total";
/// Bytes the retry replay buffers of all requests hold now (sampled when scraped).
pub const RETRY_REPLAY_BYTES: &str = "mesh_retry_replay_bytes";

/// What applies to one request of a route.
#[derive(Debug, Default)]
pub struct RequestPolicy {
    /// The logical destination (the `dst` label, and the name in errors).
    pub dst: Arc<str>,
    /// The whole exchange, across attempts, the response body included.
    pub timeout: Option<Duration>,
    /// The response head, across attempts.
    pub response_timeout: Option<Duration>,
    /// Each attempt, to its response head.
    pub per_try_timeout: Option<Duration>,
    /// Retries; none: one attempt.
    pub retry: Option<Arc<RetryPolicy>>,
    /// Injected faults.
    pub fault: Option<Fault>,
}

/// The concrete stage under a request's policy; see the module docs.
#[derive(Clone, Debug)]
pub struct Resilient<S> {
    inner: S,
    policy: Option<Arc<RequestPolicy>>,
}

impl<S> Resilient<S> {
    /// `inner` under `policy` (none: passed straight through).
    pub fn new(inner: S, policy: Option<Arc<RequestPolicy>>) -> Self {
        Self { inner, policy }
    }
}

/// The response future of a stage.
type BoxResponse = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

impl<S> Service<Request<RequestBody>> for Resilient<S>
where
    S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Either<S::Future, BoxResponse>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        match &self.policy {
            None => Either::Left(self.inner.call(req)),
            Some(policy) => {
                // Every attempt readies its own clone: the stages under this one are
                // always ready (the balancer waits inside its response future).
                Either::Right(Box::pin(run(self.inner.clone(), policy.clone(), req)))
            }
        }
    }
}

async fn run<S>(
    inner: S,
    policy: Arc<RequestPolicy>,
    req: Request<RequestBody>,
) -> Result<Response<ProxyBody>, BoxError>
where
    S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = BoxError> + Clone,
{
    let total = match (policy.timeout, grpc_timeout(req.headers())) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let grpc = crate::classify::is_grpc(req.headers());
    // The deadline runs from the request's arrival: an injected delay counts against it.
    let deadline = total.map(|d| (tokio::time::Instant::now() + d, d));
    // One timer for the total deadline: it bounds the head (unless the response timeout
    // comes first) and then goes with the response body.
    let mut total_timer = deadline.map(|(at, _)| Box::pin(tokio::time::sleep_until(at)));
    let head_limit = policy
        .response_timeout
        .map(|r| (tokio::time::Instant::now() + r, r))
        .filter(|(at, _)| deadline.is_none_or(|(total, _)| *at < total));
    let answer = faulted(inner, &policy, req);
    let res = match (head_limit, total_timer.as_mut(), deadline) {
        (Some((at, d)), _, _) => match tokio::time::timeout_at(at, answer).await {
            Ok(r) => r?,
            Err(_) => return Err(ResponseTimeout::for_dst(policy.dst.clone(), d).into()),
        },
        (None, Some(timer), Some((_, d))) => {
            tokio::pin!(answer);
            tokio::select! {
                biased;
                r = &mut answer => r?,
                () = timer.as_mut() => {
                    return Err(ResponseTimeout::for_dst(policy.dst.clone(), d).into());
                }
            }
        }
        _ => answer.await?,
    };
    // The total deadline covers the whole exchange, the response body included.
    Ok(match (total_timer, deadline) {
        (Some(timer), Some((_, d))) => res.map(|body| {
            let expired = ResponseTimeout::for_dst(policy.dst.clone(), d);
            ProxyBody::with_deadline(body, timer, grpc, expired)
        }),
        _ => res,
    })
}

/// Injected faults, then the attempts.
async fn faulted<S>(
    inner: S,
    policy: &RequestPolicy,
    req: Request<RequestBody>,
) -> Result<Response<ProxyBody>, BoxError>
where
    S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = BoxError>,
{
    if let Some(fault) = &policy.fault {
        let injected = fault.draw(&req);
        if let Some(d) = injected.delay {
            metrics::counter!(FAULT_INJECTED_TOTAL, "dst" => policy.dst.to_string(), "fault" => "delay").increment(1);
            tokio::time::sleep(d).await;
        }
        if let Some((status, grpc)) = injected.abort {
            metrics::counter!(FAULT_INJECTED_TOTAL, "dst" => policy.dst.to_string(), "fault" => "abort").increment(1);
            return Err(HttpError::new(status, grpc, InjectedFault("abort")).into());
        }
    }
    attempts(inner, policy, req).await
}

/// One attempt to its response head, under the per-try timeout.
async fn attempt<S>(
    inner: &mut S,
    policy: &RequestPolicy,
    req: Request<RequestBody>,
) -> Result<Response<ProxyBody>, BoxError>
where
    S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = BoxError>,
{
    let call = inner.ready().await?.call(req);
    match policy.per_try_timeout {
        None => call.await,
        Some(d) => match tokio::time::timeout(d, call).await {
            Ok(r) => r,
            Err(_) => Err(PerTryTimeout {
                dst: policy.dst.clone(),
                timeout: d,
            }
            .into()),
        },
    }
}

/// An attempt that did not get its response head within the per-try timeout: answered 504
/// (gRPC `DEADLINE_EXCEEDED`) when no attempt is left.
#[derive(Debug, thiserror::Error)]
#[error("no response from {dst} within the per-try timeout of {timeout:?}")]
pub struct PerTryTimeout {
    dst: Arc<str>,
    timeout: Duration,
}

async fn attempts<S>(
    mut inner: S,
    policy: &RequestPolicy,
    req: Request<RequestBody>,
) -> Result<Response<ProxyBody>, BoxError>
where
    S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = BoxError>,
{
    let Some(retry) = &policy.retry else {
        return attempt(&mut inner, policy, req).await;
    };
    retry.deposit();
    // Upgrades and CONNECT become tunnels: never tried twice.
    if req.method() == Method::CONNECT || req.headers().contains_key(http::header::UPGRADE) {
        return attempt(&mut inner, policy, req).await;
    }
    let (mut parts, body) = req.into_parts();
    // Shared by every attempt's clone: a balancer sends a retry elsewhere while it can.
    parts.extensions.insert(crate::balance::Tried::default());
    let grpc = crate::classify::is_grpc(&parts.headers);
    let replay = (!http_body::Body::is_end_stream(&body)).then(|| match &retry.replay_memory {
        Some(memory) => ReplayBody::with_memory(body, retry.replay_limit, memory.clone()),
        None => ReplayBody::new(body, retry.replay_limit),
    });
    let mut body = replay_body(replay.as_ref()).ok_or(NotReplayable)?;
    let mut n: u32 = 1;
    loop {
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        *req.extensions_mut() = parts.extensions.clone();
        let result = attempt(&mut inner, policy, req).await;
        let method_ok = retry.retries_method(&parts.method);
        let reason = match &result {
            // A gRPC call is a POST: listing gRPC codes opts its calls in, for those codes.
            Ok(res) => retry
                .response_reason(res.status(), res.headers())
                .filter(|r| method_ok || (grpc && *r == "grpc")),
            Err(e) if find::<PerTryTimeout>(e.as_ref()).is_some() => retry
                .retries_per_try_timeout()
                .then_some("per-try-timeout")
                .filter(|_| method_ok),
            Err(e) => retry
                .error_reason(e)
                .and_then(|(r, unsent)| (unsent || method_ok).then_some(r)),
        };
        let Some(reason) = reason else {
            return reported(result, retry, n);
        };
        if n >= retry.max_attempts || replay.as_ref().is_some_and(|r| !r.is_replayable()) {
            return reported(result, retry, n);
        }
        if !retry.withdraw() {
            metrics::counter!(RETRY_BUDGET_EXHAUSTED_TOTAL, "dst" => policy.dst.to_string())
                .increment(1);
            return reported(result, retry, n);
        }
        tokio::time::sleep(retry.backoff(n)).await;
        // The failed attempt may have read on past the replay limit meanwhile: then its
        // answer stands.
        let Some(next) = replay_body(replay.as_ref()) else {
            return reported(result, retry, n);
        };
        metrics::counter!(RETRY_TOTAL, "dst" => policy.dst.to_string(), "reason" => reason)
            .increment(1);
        if let Ok(res) = result {
            drain_ready(res.into_body());
        }
        body = next;
        n += 1;
    }
}

/// The most of a discarded answer's body [`drain_ready`] reads.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Reads what has already arrived of a failed attempt's response body (at most
/// [`DRAIN_LIMIT`] bytes, never waiting) before dropping it. An HTTP/1 upstream connection
/// goes back to the pool only when its response was read to the end; dropping a short error
/// body unread would close the connection, and every retry would then pay for a new one (and
/// between meshed proxies, a TLS handshake).
fn drain_ready(body: ProxyBody) {
    let mut body = std::pin::pin!(body);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut left = DRAIN_LIMIT;
    while let Poll::Ready(Some(Ok(frame))) = body.as_mut().poll_frame(&mut cx) {
        let n = frame.data_ref().map_or(0, bytes::Bytes::len);
        if n >= left {
            break;
        }
        left -= n;
    }
}

/// The body of the next attempt: empty, or a replay; `None` when it can no longer be replayed.
fn replay_body(replay: Option<&ReplayBody>) -> Option<RequestBody> {
    match replay {
        None => Some(RequestBody::empty()),
        Some(r) => r.try_clone().map(RequestBody::from_body),
    }
}

/// The response of attempt `n`, with `l5d-retry-count: n - 1` when the policy reports it.
fn reported(
    result: Result<Response<ProxyBody>, BoxError>,
    retry: &RetryPolicy,
    n: u32,
) -> Result<Response<ProxyBody>, BoxError> {
    result.map(|mut res| {
        if retry.report_count {
            res.headers_mut()
                .insert("l5d-retry-count", http::HeaderValue::from(n - 1));
        }
        res
    })
}

/// An incoming `grpc-timeout` (`100m`, `2S`, …): an upper bound on the request's deadline.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
