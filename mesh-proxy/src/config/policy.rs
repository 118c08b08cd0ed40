//! `[routers.NAME.service."<path>"]`: resilience per logical name — timeouts, retries with
//! a budget, fault injection — and `[[….routes]]` refining them per request (path prefix,
//! method, headers; first match wins). A name takes the service with the longest prefix
//! that matches it, label by label.

use std::collections::BTreeMap;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// One service's policy.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The whole exchange, across retries, the response body included. Default: none.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// The response head, across retries. Default: none (the listener's
    /// `limits.response_timeout` stays the outer cap).
    #[serde(with = "humantime_serde")]
    pub response_timeout: Option<Duration>,
    /// Each attempt, to its response head. Default: none.
    #[serde(with = "humantime_serde")]
    pub per_try_timeout: Option<Duration>,
    /// Retries. Default: none (one attempt).
    pub retries: Option<RetriesConfig>,
    /// Per-request refinements, first match wins.
    pub routes: Vec<RouteConfig>,
}

/// `retries = { … }` of a service.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetriesConfig {
    /// The service's retry budget.
    pub budget: BudgetConfig,
    /// What is retried: `5xx`, `gateway-error`, `connect-failure`, `refused-stream`,
    /// `reset`, statuses (`"503"`, `"500-504"`), gRPC codes (`unavailable`, …). Default:
    /// `["connect-failure", "refused-stream", "unavailable"]`.
    pub on: Vec<String>,
    /// Non-idempotent methods retried anyway. Default: none (GET, HEAD, OPTIONS, PUT,
    /// DELETE and TRACE always are).
    pub methods: Vec<String>,
    /// Attempts per request, the first included. Default 3.
    pub max_attempts: u32,
    /// Exponential backoff between attempts, jittered. Default `{ min = "10ms", max = "1s" }`.
    pub backoff: BackoffConfig,
    /// The largest request body kept for a retry; larger bodies are not retried. Default
    /// 64 KiB.
    pub replay_limit: ByteSize,
    /// Tell clients how many retries a response took, in `l5d-retry-count`. Default: false.
    pub report_count: bool,
}

impl Default for RetriesConfig {
    fn default() -> Self {
        Self {
            budget: BudgetConfig::default(),
            on: ["connect-failure", "refused-stream", "unavailable"]
                .map(String::from)
                .to_vec(),
            methods: Vec::new(),
            max_attempts: 3,
            backoff: BackoffConfig::default(),
            replay_limit: ByteSize::kib(64),
            report_count: false,
        }
    }
}

/// A retry budget (tower's `TpsBudget`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Retries allowed per request, on top of the floor. Default 0.2.
    pub ratio: f32,
    /// Retries allowed per second whatever the traffic. Default 10.
    pub min_per_second: u32,
    /// How long a request counts towards the ratio. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// `backoff = { min, max }`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// The first pause. Default 10 ms.
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    /// The longest pause. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(10),
            max: Duration::from_secs(1),
        }
    }
}

/// `[[….routes]]`: a refinement for the requests it matches.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// Which requests (every condition given must hold).
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// Replaces the service's total timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Replaces the service's response-head timeout.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Option<Duration>,
    /// Replaces the service's per-try timeout.
    #[serde(with = "humantime_serde")]
    pub per_try_timeout: Option<Duration>,
    /// Replaces the keys it sets of the service's retries (the budget stays the service's).
    pub retries: Option<RouteRetriesConfig>,
    /// Faults injected into matching requests.
    pub fault: Option<FaultConfig>,
}

/// `match = { path_prefix, method, headers }`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteMatch {
    /// The request path starts with this, at a segment boundary (`/api` matches `/api` and
    /// `/api/x`, not `/apis`).
    pub path_prefix: Option<String>,
    /// The request method.
    pub method: Option<String>,
    /// Headers that must be present with exactly these values.
    pub headers: BTreeMap<String, String>,
}

/// A route's retries: each key replaces the service's.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteRetriesConfig {
    /// See [`RetriesConfig::on`].
    pub on: Option<Vec<String>>,
    /// See [`RetriesConfig::methods`].
    pub methods: Option<Vec<String>>,
    /// See [`RetriesConfig::max_attempts`].
    pub max_attempts: Option<u32>,
    /// See [`RetriesConfig::backoff`].
    pub backoff: Option<BackoffConfig>,
}

/// `fault = { abort, delay, header }`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Answer a share of requests with an error.
    pub abort: Option<AbortConfig>,
    /// Delay a share of requests.
    pub delay: Option<DelayConfig>,
    /// Only requests with this header (`"x-chaos"`) or header and value
    /// (`"x-chaos: on"`).
    pub header: Option<String>,
}

/// `abort = { status, grpc, percent }`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AbortConfig {
    /// The HTTP status (400–599). Default 503.
    pub status: Option<u16>,
    /// The gRPC code for gRPC calls (`unavailable`, `internal`, …). Default: the status's.
    pub grpc: Option<String>,
    /// The share of requests, 0–100.
    pub percent: f64,
}

/// `delay = { duration, percent }`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DelayConfig {
    /// How long.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// The share of requests, 0–100.
    pub percent: f64,
}
