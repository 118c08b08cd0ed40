//! The resilience policies of a router's services, compiled from `[….service."<path>"]` when
//! the configuration is loaded (every mistake reported then, naming the service), and looked
//! up per request: the service with the longest prefix of the logical name, then its first
//! route whose match holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use mesh_core::body::ReplayMemory;
use mesh_core::dtab::Path;
use mesh_core::errors::GrpcCode;
use mesh_core::policy::{Fault, Percent, RequestPolicy, RetryOn, RetryPolicy};
use tower::retry::budget::TpsBudget;

use crate::config::{FaultConfig, RetriesConfig, RouteConfig, RouteRetriesConfig, ServiceConfig};

/// Every service of a router, longest prefix first.
#[derive(Debug, Default)]
pub(crate) struct ServicePolicies(Vec<ServicePolicy>);

#[derive(Debug)]
struct ServicePolicy {
    prefix: Path,
    default: Arc<RequestPolicy>,
    routes: Vec<(Match, Arc<RequestPolicy>)>,
}

#[derive(Debug)]
struct Match {
    path_prefix: Option<String>,
    method: Option<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ServicePolicies {
    /// Compiles a router's services, their replay buffers drawing on `memory` (the
    /// process's allowance; `None` when only checking); the error names the service and
    /// what is wrong.
    pub(crate) fn build(
        services: &BTreeMap<String, ServiceConfig>,
        memory: Option<&ReplayMemory>,
    ) -> Result<Self, String> {
        let mut all = Vec::with_capacity(services.len());
        for (key, svc) in services {
            let fail = |e: String| format!("service {key:?}: {e}");
            let prefix = Path::read(key).map_err(|e| fail(format!("not a path: {e}")))?;
            let dst: Arc<str> = key.as_str().into();
            check_timeouts(svc.timeout, svc.per_try_timeout).map_err(fail)?;
            check_timeouts(svc.timeout, svc.response_timeout).map_err(fail)?;
            // One budget per service, shared by its routes, whichever of them retries.
            let route_retries = svc.routes.iter().any(|r| r.retries.is_some());
            let budget = match &svc.retries {
                Some(r) => Some(budget(r).map_err(fail)?),
                None if route_retries => Some(budget(&RetriesConfig::default()).map_err(fail)?),
                None => None,
            };
            let retry = match (&svc.retries, &budget) {
                (Some(r), Some(b)) => {
                    Some(Arc::new(retry(r, None, b.clone(), memory).map_err(fail)?))
                }
                _ => None,
            };
            let default = Arc::new(RequestPolicy {
                dst: dst.clone(),
                timeout: svc.timeout,
                response_timeout: svc.response_timeout,
                per_try_timeout: svc.per_try_timeout,
                retry: retry.clone(),
                fault: None,
            });
            let mut routes = Vec::with_capacity(svc.routes.len());
            for (i, route) in svc.routes.iter().enumerate() {
                let fail = |e: String| format!("service {key:?}, route {}: {e}", i + 1);
                routes
                    .push(compile_route(route, svc, &dst, &budget, &retry, memory).map_err(fail)?);
            }
            all.push(ServicePolicy {
                prefix,
                default,
                routes,
            });
        }
        all.sort_by_key(|s| std::cmp::Reverse(s.prefix.len()));
        Ok(Self(all))
    }

    /// The policy for a request named `name`, if a service covers it.
    pub(crate) fn find<B>(&self, name: &Path, req: &Request<B>) -> Option<Arc<RequestPolicy>> {
        let svc = self.0.iter().find(|s| name.starts_with(&s.prefix))?;
        let route = svc.routes.iter().find(|(m, _)| m.holds(req));
        Some(route.map_or(&svc.default, |(_, p)| p).clone())
    }

    /// Whether no service is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn compile_route(
    route: &RouteConfig,
    svc: &ServiceConfig,
    dst: &Arc<str>,
    budget: &Option<Arc<TpsBudget>>,
    service_retry: &Option<Arc<RetryPolicy>>,
    memory: Option<&ReplayMemory>,
) -> Result<(Match, Arc<RequestPolicy>), String> {
    let m = &route.matches;
    let method = m
        .method
        .as_deref()
        .map(|s| Method::from_bytes(s.as_bytes()).map_err(|_| format!("invalid method {s:?}")))
        .transpose()?;
    let mut headers = Vec::new();
    for (k, v) in &m.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        let value = HeaderValue::from_str(v).map_err(|_| format!("invalid header value {v:?}"))?;
        headers.push((name, value));
    }
    if let Some(p) = &m.path_prefix
        && !p.starts_with('/')
    {
        return Err(format!("path_prefix {p:?} must start with /"));
    }
    let retry = match (&route.retries, svc.retries.as_ref()) {
        (None, _) => service_retry.clone(),
        (Some(r), base) => {
            let base = base.cloned().unwrap_or_default();
            let b = match budget {
                Some(b) => b.clone(),
                None => self::budget(&base)?,
            };
            Some(Arc::new(retry(&base, Some(r), b, memory)?))
        }
    };
    let fault = route.fault.as_ref().map(fault).transpose()?;
    check_timeouts(
        route.timeout.or(svc.timeout),
        route.per_try_timeout.or(svc.per_try_timeout),
    )?;
    check_timeouts(
        route.timeout.or(svc.timeout),
        route.response_timeout.or(svc.response_timeout),
    )?;
    let policy = RequestPolicy {
        dst: dst.clone(),
        timeout: route.timeout.or(svc.timeout),
        response_timeout: route.response_timeout.or(svc.response_timeout),
        per_try_timeout: route.per_try_timeout.or(svc.per_try_timeout),
        retry,
        fault,
    };
    Ok((
        Match {
            path_prefix: m.path_prefix.clone(),
            method,
            headers,
        },
        Arc::new(policy),
    ))
}

/// Timeouts must be able to pass, and an attempt may not outlast the whole request.
fn check_timeouts(total: Option<Duration>, per_try: Option<Duration>) -> Result<(), String> {
    if total.is_some_and(|d| d.is_zero()) || per_try.is_some_and(|d| d.is_zero()) {
        return Err("timeouts must be greater than zero".into());
    }
    if let (Some(t), Some(p)) = (total, per_try)
        && p > t
    {
        return Err(format!(
            "a per-try or response timeout ({p:?}) is longer than the total timeout ({t:?})"
        ));
    }
    Ok(())
}

fn budget(r: &RetriesConfig) -> Result<Arc<TpsBudget>, String> {
    let b = &r.budget;
    // tower's budget withdraws a whole number of deposits per retry: below 1 the ratio is
    // 1/n, and any other value would be silently rounded (0.6 would behave as 1.0).
    if b.ratio > 0.0 && b.ratio < 1.0 {
        let n = 1.0 / f64::from(b.ratio);
        if (n - n.round()).abs() > 0.01 * n {
            return Err(format!(
                "retries.budget.ratio {} below 1 must be 1/n (0.5, 0.25, 0.2, 0.1, ...)",
                b.ratio
            ));
        }
    }
    if b.ttl < Duration::from_secs(1) || b.ttl > Duration::from_secs(60) {
        return Err("retries.budget.ttl must be between 1s and 60s".into());
    }
    if !(0.0..=1000.0).contains(&b.ratio) {
        return Err("retries.budget.ratio must be between 0 and 1000".into());
    }
    if b.min_per_second >= i32::MAX as u32 {
        return Err("retries.budget.min_per_second is too large".into());
    }
    Ok(Arc::new(TpsBudget::new(b.ttl, b.min_per_second, b.ratio)))
}

fn retry(
    base: &RetriesConfig,
    route: Option<&RouteRetriesConfig>,
    budget: Arc<TpsBudget>,
    memory: Option<&ReplayMemory>,
) -> Result<RetryPolicy, String> {
    let on = route.and_then(|r| r.on.as_ref()).unwrap_or(&base.on);
    let methods = route
        .and_then(|r| r.methods.as_ref())
        .unwrap_or(&base.methods);
    if methods.iter().any(|m| m.eq_ignore_ascii_case("CONNECT")) {
        return Err("retries.methods: CONNECT is never retried (it becomes a tunnel)".into());
    }
    let max_attempts = route
        .and_then(|r| r.max_attempts)
        .unwrap_or(base.max_attempts);
    let backoff = route
        .and_then(|r| r.backoff.as_ref())
        .unwrap_or(&base.backoff);
    if !(1..=10).contains(&max_attempts) {
        return Err(format!(
            "retries.max_attempts must be 1 to 10, not {max_attempts}"
        ));
    }
    if backoff.min.is_zero() || backoff.max < backoff.min || backoff.max > Duration::from_secs(60) {
        return Err("retries.backoff needs 0 < min <= max <= 60s".into());
    }
    let replay = usize::try_from(base.replay_limit.as_u64()).unwrap_or(usize::MAX);
    if replay > 16 * 1024 * 1024 {
        return Err("retries.replay_limit must be at most 16 MiB".into());
    }
    Ok(RetryPolicy {
        on: on
            .iter()
            .map(|s| s.parse::<RetryOn>().map_err(|e| format!("retries.on: {e}")))
            .collect::<Result<_, _>>()?,
        methods: methods
            .iter()
            .map(|s| {
                Method::from_bytes(s.as_bytes())
                    .map_err(|_| format!("retries.methods: invalid method {s:?}"))
            })
            .collect::<Result<_, _>>()?,
        max_attempts,
        min_backoff: backoff.min,
        max_backoff: backoff.max,
        replay_limit: replay,
        replay_memory: memory.cloned(),
        budget,
        report_count: base.report_count,
    })
}

fn fault(f: &FaultConfig) -> Result<Fault, String> {
    let percent =
        |p: f64| Percent::new(p).ok_or_else(|| format!("fault percent {p} is not within 0-100"));
    let delay = match &f.delay {
        Some(d) => {
            if d.duration > Duration::from_secs(300) {
                return Err("fault.delay.duration must be at most 5m".into());
            }
            Some((d.duration, percent(d.percent)?))
        }
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => {
            let status = a.status.unwrap_or(503);
            if !(400..=599).contains(&status) {
                return Err(format!("fault.abort.status must be 400-599, not {status}"));
            }
            let status = StatusCode::from_u16(status).map_err(|e| e.to_string())?;
            let grpc = match a.grpc.as_deref() {
                None => grpc_for(status),
                Some(name) => grpc_named(name)?,
            };
            Some((status, grpc, percent(a.percent)?))
        }
        None => None,
    };
    let only_with = match &f.header {
        None => None,
        Some(h) => {
            let (name, value) = match h.split_once(':') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (h.trim(), None),
            };
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("fault.header: invalid header name {name:?}"))?;
            let value = value
                .map(|v| {
                    HeaderValue::from_str(v)
                        .map_err(|_| format!("fault.header: invalid value {v:?}"))
                })
                .transpose()?;
            Some((name, value))
        }
    };
    Ok(Fault {
        delay,
        abort,
        only_with,
    })
}

/// The gRPC code matching an HTTP status (gRPC's HTTP mapping).
fn grpc_for(status: StatusCode) -> GrpcCode {
    match status.as_u16() {
        400 => GrpcCode::Internal,
        401 => GrpcCode::Unauthenticated,
        403 => GrpcCode::PermissionDenied,
        404 => GrpcCode::Unimplemented,
        429 | 502..=504 => GrpcCode::Unavailable,
        _ => GrpcCode::Unknown,
    }
}

fn grpc_named(name: &str) -> Result<GrpcCode, String> {
    let code = match name.to_ascii_lowercase().replace('_', "-").as_str() {
        "cancelled" => 1,
        "unknown" => 2,
        "invalid-argument" => 3,
        "deadline-exceeded" => 4,
        "not-found" => 5,
        "already-exists" => 6,
        "permission-denied" => 7,
        "resource-exhausted" => 8,
        "failed-precondition" => 9,
        "aborted" => 10,
        "out-of-range" => 11,
        "unimplemented" => 12,
        "internal" => 13,
        "unavailable" => 14,
        "data-loss" => 15,
        "unauthenticated" => 16,
        other => match other.parse::<u8>() {
            Ok(n) if (1..=16).contains(&n) => n,
            _ => return Err(format!("fault.abort.grpc: unknown gRPC code {name:?}")),
        },
    };
    Ok(GrpcCode::from_u8(code))
}

impl Match {
    fn holds<B>(&self, req: &Request<B>) -> bool {
        if let Some(m) = &self.method
            && req.method() != m
        {
            return false;
        }
        if let Some(p) = &self.path_prefix {
            let path = req.uri().path();
            let p = p.trim_end_matches('/');
            let at_boundary = path
                .strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || p.is_empty());
            if !at_boundary {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(n, v)| req.headers().get_all(n).iter().any(|x| x == v))
    }
}
