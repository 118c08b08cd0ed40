//! Which failures a request is retried on, and how often: the retry half of a service's
//! resilience policy (DESIGN.md §4 `retries`).
//!
//! A retry is safe only when the upstream cannot have acted on the request twice: an
//! idempotent method (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), or any method when the
//! connection failed before the request was written (connect failure, HTTP/2
//! `REFUSED_STREAM`). Other methods are retried only when configured; upgrades and `CONNECT`
//! never. Every retry is paid for from the service's budget (tower's `TpsBudget`: a share of
//! recent requests plus a floor per second), so a failing upstream sees at most that much
//! extra load — no retry storm.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use tower::retry::budget::{Budget, TpsBudget};

use crate::BoxError;
use crate::client::UpstreamError;
use crate::connect::{ConnectError, ConnectTimeout};
use crate::errors::{GrpcCode, find};

/// One condition a response or failure is retried on (`retries.on`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryOn {
    /// Any 5xx status.
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// A status in this inclusive range (`"503"`, `"500-504"`).
    Status(u16, u16),
    /// The connection could not be opened (refused, unreachable, timed out).
    ConnectFailure,
    /// The upstream refused the HTTP/2 stream before processing it.
    RefusedStream,
    /// The upstream reset or closed the exchange before any response byte.
    Reset,
    /// A gRPC status in the response head (a trailers-only response).
    Grpc(GrpcCode),
    /// An attempt without a response head within the per-try timeout (also implied by
    /// `5xx` and `gateway-error`: the timeout answers 504).
    PerTryTimeout,
}

impl std::str::FromStr for RetryOn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let grpc = |c| Ok(RetryOn::Grpc(c));
        match s {
            "5xx" => Ok(RetryOn::ServerError),
            "gateway-error" => Ok(RetryOn::GatewayError),
            "connect-failure" => Ok(RetryOn::ConnectFailure),
            "refused-stream" => Ok(RetryOn::RefusedStream),
            "reset" => Ok(RetryOn::Reset),
            "per-try-timeout" => Ok(RetryOn::PerTryTimeout),
            "unavailable" => grpc(GrpcCode::Unavailable),
            "cancelled" => grpc(GrpcCode::Cancelled),
            "deadline-exceeded" => grpc(GrpcCode::DeadlineExceeded),
            "resource-exhausted" => grpc(GrpcCode::ResourceExhausted),
            "internal" => grpc(GrpcCode::Internal),
            "unknown" => grpc(GrpcCode::Unknown),
            "aborted" => grpc(GrpcCode::Aborted),
            _ => {
                let (lo, hi) = s.split_once('-').unwrap_or((s, s));
                match (lo.parse::<u16>(), hi.parse::<u16>()) {
                    (Ok(lo), Ok(hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => {
                        Ok(RetryOn::Status(lo, hi))
                    }
                    _ => Err(format!(
                        "{s:?}: expected 5xx, gateway-error, connect-failure, refused-stream, reset, per-try-timeout, a status or range (\"503\", \"500-504\"), or a gRPC code (unavailable, cancelled, deadline-exceeded, resource-exhausted, internal, unknown, aborted)"
                    )),
                }
            }
        }
    }
}

/// How a service's requests are retried.
#[derive(Debug)]
pub struct RetryPolicy {
    /// What is retried.
    pub on: Vec<RetryOn>,
    /// Non-idempotent methods retried anyway (idempotent ones always are).
    pub methods: Vec<Method>,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// The first backoff; each retry doubles it, up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// The largest request body kept for replay; a larger body is not retried.
    pub replay_limit: usize,
    /// The allowance that all replay buffers share (the process's, as the proxy builds
    /// policies); a body that finds it spent is not retried. `None`: only `replay_limit`.
    pub replay_memory: Option<crate::body::ReplayMemory>,
    /// The service's budget, shared by its routes.
    pub budget: Arc<TpsBudget>,
    /// Tell the client how many retries its response took (`l5d-retry-count`).
    pub report_count: bool,
}

/// Why one attempt is worth another.
pub type Reason = &'static str;

impl RetryPolicy {
    /// Records a request in the budget (each request earns a share of a retry).
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }

    /// Whether a request with `method` may be retried after it was sent.
    pub fn retries_method(&self, method: &Method) -> bool {
        is_idempotent(method) || self.methods.contains(method)
    }

    /// Why a response is retried, if it is: its status, or a gRPC status in its head.
    pub fn response_reason(&self, status: StatusCode, headers: &HeaderMap) -> Option<Reason> {
        let s = status.as_u16();
        for on in &self.on {
            match on {
                RetryOn::ServerError if status.is_server_error() => return Some("5xx"),
                RetryOn::GatewayError if (502..=504).contains(&s) => return Some("gateway-error"),
                RetryOn::Status(lo, hi) if (*lo..=*hi).contains(&s) => return Some("status"),
                RetryOn::Grpc(code) if grpc_status(headers) == Some(*code) => return Some("grpc"),
                _ => {}
            }
        }
        None
    }

    /// Whether an attempt that hit the per-try timeout is retried.
    pub fn retries_per_try_timeout(&self) -> bool {
        self.on.iter().any(|o| {
            matches!(
                o,
                RetryOn::PerTryTimeout | RetryOn::ServerError | RetryOn::GatewayError
            )
        })
    }

    /// Why a failed attempt is retried, if it is, and whether the request can be known
    /// unsent (then any method may be retried).
    pub fn error_reason(&self, error: &BoxError) -> Option<(Reason, bool)> {
        let e: &(dyn std::error::Error + 'static) = error.as_ref();
        let connect = find::<ConnectError>(e).is_some() || find::<ConnectTimeout>(e).is_some();
        if connect && self.on.contains(&RetryOn::ConnectFailure) {
            return Some(("connect-failure", true));
        }
        if let Some(up) = find::<UpstreamError>(e) {
            if up.is_refused_stream() && self.on.contains(&RetryOn::RefusedStream) {
                return Some(("refused-stream", true));
            }
            // A reset of the exchange, not the client's own body failing (retrying that would
            // send a second truncated request).
            if !up.is_timeout()
                && crate::errors::downstream_body_error(up.hyper_error()).is_none()
                && self.on.contains(&RetryOn::Reset)
            {
                return Some(("reset", false));
            }
        }
        None
    }

    /// The pause before retry number `n` (1 for the first): exponential from `min_backoff`,
    /// capped at `max_backoff`, with "equal jitter" (half fixed, half random) so retries of
    /// many clients do not arrive in step.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .min_backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.max_backoff);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// GET, HEAD, OPTIONS, PUT, DELETE and TRACE (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The gRPC status in a response head (a trailers-only response), if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<GrpcCode> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u8>()
        .ok()?;
    Some(GrpcCode::from_u8(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[&str]) -> RetryPolicy {
        RetryPolicy {
            on: on.iter().map(|s| s.parse().expect("valid")).collect(),
            methods: Vec::new(),
            max_attempts: 3,
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            replay_limit: 64 * 1024,
            replay_memory: None,
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
            report_count: false,
        }
    }

    #[test]
    fn conditions_parse_and_match() {
        let p = policy(&["gateway-error", "500-501", "unavailable"]);
        let h = HeaderMap::new();
        assert_eq!(
            p.response_reason(StatusCode::BAD_GATEWAY, &h),
            Some("gateway-error")
        );
        assert_eq!(
            p.response_reason(StatusCode::INTERNAL_SERVER_ERROR, &h),
            Some("status")
        );
        assert_eq!(
            p.response_reason(StatusCode::from_u16(505).expect("505"), &h),
            None
        );
        assert_eq!(p.response_reason(StatusCode::OK, &h), None);
        let mut g = HeaderMap::new();
        g.insert("grpc-status", "14".parse().expect("value"));
        assert_eq!(p.response_reason(StatusCode::OK, &g), Some("grpc"));
        g.insert("grpc-status", "3".parse().expect("value"));
        assert_eq!(p.response_reason(StatusCode::OK, &g), None);
        assert!("600".parse::<RetryOn>().is_err());
        assert!("503-500".parse::<RetryOn>().is_err());
        assert!("sometimes".parse::<RetryOn>().is_err());
    }

    #[test]
    fn only_idempotent_methods_unless_configured() {
        let mut p = policy(&["5xx"]);
        assert!(p.retries_method(&Method::GET));
        assert!(p.retries_method(&Method::PUT));
        assert!(!p.retries_method(&Method::POST));
        p.methods.push(Method::POST);
        assert!(p.retries_method(&Method::POST));
        assert!(!p.retries_method(&Method::PATCH));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = policy(&["5xx"]);
        for _ in 0..100 {
            let first = p.backoff(1);
            assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10));
            let third = p.backoff(3);
            assert!(third >= Duration::from_millis(20) && third <= Duration::from_millis(40));
            let tenth = p.backoff(10);
            assert!(tenth >= Duration::from_millis(50) && tenth <= Duration::from_millis(100));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_retries_under_total_failure() {
        // 0.2 of requests plus 10 per second, over a 10 s window.
        let p = policy(&["5xx"]);
        let mut retries = 0;
        for _ in 0..1000 {
            p.deposit();
            if p.withdraw() {
                retries += 1;
            }
            tokio::time::advance(Duration::from_millis(5)).await;
        }
        // 1000 requests over 5 s: at most 0.2 × 1000 + 10 × 10 retries.
        assert!(retries <= 300, "{retries} retries");
        assert!(
            retries >= 150,
            "{retries} retries: the budget should allow about 0.2 per request"
        );
    }
}
