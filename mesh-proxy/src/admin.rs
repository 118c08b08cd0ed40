//! The admin server: metrics, health, the effective config, the log level and shutdown.
//!
//! It listens on loopback by default (DESIGN.md §5) and stays up while the proxy drains, so
//! `/ready` can answer 503 to take the proxy out of rotation and `/metrics` can still be
//! scraped.
//!
//! | path | method | answer |
//! |---|---|---|
//! | `/metrics` | GET | Prometheus text |
//! | `/ready` | GET | 200 while serving, 503 while draining |
//! | `/live` | GET | 200 while the process runs |
//! | `/config.json` | GET | the effective configuration |
//! | `/endpoints.json` | GET | every balanced destination and its endpoints (state, weight, identity, failures) |
//! | `/log-level` | GET, PUT | the tracing filter; PUT a new one (e.g. `debug,hyper=info`) |
//! | `/shutdown` | POST | start a graceful shutdown (loopback clients only) |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_core::body::ReplayMemory;
use mesh_core::policy::RETRY_REPLAY_BYTES;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::Shutdown;
use crate::config::EffectiveConfig;
use crate::listener::ListenerCtx;

/// Concurrent admin connections; more are closed at accept. Idle keep-alive connections
/// close after the 10 s header-read timeout.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// The largest body accepted by `PUT /log-level`.
const MAX_LOG_LEVEL_BODY: usize = 4 * 1024;

/// Reads and changes the process's log filter at runtime.
///
/// Implemented for `tracing_subscriber::reload::Handle<EnvFilter, S>`, which the binary
/// creates when it installs its subscriber.
pub trait LogLevel: Send + Sync {
    /// The filter in force, in `EnvFilter` directive syntax.
    fn current(&self) -> String;

    /// Replaces the filter.
    ///
    /// # Errors
    ///
    /// A message saying why the directives are invalid.
    fn set(&self, directives: &str) -> Result<(), String>;
}

impl<S> LogLevel for tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>
where
    S: tracing::Subscriber + Send + Sync + 'static,
{
    fn current(&self) -> String {
        self.with_current(|f| f.to_string()).unwrap_or_default()
    }

    fn set(&self, directives: &str) -> Result<(), String> {
        let filter = tracing_subscriber::EnvFilter::builder()
            .parse(directives)
            .map_err(|e| format!("invalid log filter {directives:?}: {e}"))?;
        self.reload(filter).map_err(|e| e.to_string())
    }
}

/// What the admin server reports on and controls.
#[derive(Clone)]
pub(crate) struct AdminState {
    /// The configuration in force, read on each `/config.json` (a reload swaps it).
    pub(crate) config: EffectiveConfig,
    pub(crate) prometheus: Option<PrometheusHandle>,
    pub(crate) log: Option<Arc<dyn LogLevel>>,
    pub(crate) shutdown: Shutdown,
    /// The listeners, whose balancers `/endpoints.json` describes.
    pub(crate) listeners: Vec<Arc<ListenerCtx>>,
    /// The retry replay allowance, whose use `/metrics` samples.
    pub(crate) replay_memory: ReplayMemory,
}

/// Serves the admin API until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, state: AdminState) {
    // The admin API is for an operator and a scraper, not for traffic: a few connections.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin connection limit reached; closing");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "admin connection error");
            }
        });
    }
}

async fn route(
    state: &AdminState,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (path.as_str(), &method) {
        ("/metrics", &Method::GET) => match &state.prometheus {
            Some(p) => {
                let used = state.replay_memory.used();
                metrics::gauge!(RETRY_REPLAY_BYTES).set(used as f64);
                p.run_upkeep();
                typed(StatusCode::OK, "text/plain; version=0.0.4", p.render())
            }
            None => text(StatusCode::NOT_FOUND, "no metrics recorder installed\n"),
        },
        ("/ready", &Method::GET) => {
            if state.shutdown.is_triggered() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        ("/live", &Method::GET) => text(StatusCode::OK, "live\n"),
        ("/config.json", &Method::GET) => {
            match serde_json::to_string_pretty(&*state.config.current()) {
                Ok(json) => typed(StatusCode::OK, "application/json", json + "\n"),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot render config: {e}\n"),
                ),
            }
        }
        ("/endpoints.json", &Method::GET) => {
            let body = crate::endpoints::json(&state.listeners);
            typed(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
        ("/delegator.json", &Method::GET) => {
            match crate::delegator::delegator(&state.listeners, req.uri().query()) {
                Ok(body) => typed(StatusCode::OK, "application/json", format!("{body:#}\n")),
                Err((status, message)) => text(status, message + "\n"),
            }
        }
        ("/dtabs", &Method::GET) => {
            let body = crate::delegator::dtabs(&state.listeners);
            typed(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
        ("/log-level", &Method::GET) => match &state.log {
            Some(l) => text(StatusCode::OK, l.current() + "\n"),
            None => text(StatusCode::NOT_FOUND, "log level control not installed\n"),
        },
        ("/log-level", &Method::PUT) => put_log_level(state, req).await,
        ("/shutdown", &Method::POST) => {
            // Canonical form: on a dual-stack `[::]` listener an IPv4 loopback client shows
            // as `::ffff:127.0.0.1`, which `Ipv6Addr::is_loopback` does not count.
            if !peer.ip().to_canonical().is_loopback() {
                tracing::warn!(%peer, "refused /shutdown from a non-loopback client");
                return text(
                    StatusCode::FORBIDDEN,
                    "shutdown is only accepted from loopback\n",
                );
            }
            tracing::info!(%peer, "shutdown requested via admin");
            state.shutdown.trigger();
            text(StatusCode::OK, "shutting down\n")
        }
        (
            "/metrics" | "/ready" | "/live" | "/config.json" | "/endpoints.json"
            | "/delegator.json" | "/dtabs",
            _,
        ) => not_allowed("GET"),
        ("/log-level", _) => not_allowed("GET, PUT"),
        ("/shutdown", _) => not_allowed("POST"),
        _ => text(StatusCode::NOT_FOUND, format!("no admin endpoint {path}\n")),
    }
}

async fn put_log_level(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(log) = &state.log else {
        return text(StatusCode::NOT_FOUND, "log level control not installed\n");
    };
    let body = match Limited::new(req.into_body(), MAX_LOG_LEVEL_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("log level body rejected: {e}\n"),
            );
        }
    };
    let Ok(directives) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "log level must be UTF-8\n");
    };
    let directives = directives.trim();
    match log.set(directives) {
        Ok(()) => {
            tracing::info!(filter = directives, "log level changed");
            text(StatusCode::OK, format!("{}\n", log.current()))
        }
        Err(e) => text(StatusCode::BAD_REQUEST, e + "\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    typed(status, "text/plain; charset=utf-8", body)
}

fn typed(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    res.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;

    fn state() -> AdminState {
        AdminState {
            listeners: Vec::new(),
            config: EffectiveConfig::new(crate::config::Config::default()),
            prometheus: None,
            log: None,
            shutdown: Shutdown::default(),
            replay_memory: ReplayMemory::new(1024),
        }
    }

    /// Sends `POST /shutdown` to the admin handler as if from `peer` (a real socket can only
    /// come from loopback in a test) and returns the status and whether shutdown started.
    async fn post_shutdown_from(peer: &str) -> (StatusCode, bool) {
        let peer: SocketAddr = peer.parse().expect("peer address");
        let state = state();
        let shutdown = state.shutdown.clone();
        let (client, server) = tokio::io::duplex(4096);
        let svc = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(route(&state, peer, req).await) }
        });
        let server = tokio::spawn(
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), svc),
        );
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("handshake");
        let conn = tokio::spawn(conn);
        let req = Request::post("/shutdown")
            .header(http::header::HOST, "admin")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let res = tx.send_request(req).await.expect("response");
        let status = res.status();
        drop(tx);
        let _ = conn.await;
        let _ = server.await;
        (status, shutdown.is_triggered())
    }

    #[tokio::test]
    async fn shutdown_is_refused_from_a_non_loopback_peer() {
        for peer in [
            "10.0.0.1:50000",
            "[2001:db8::1]:50000",
            "[::ffff:10.0.0.1]:50000",
        ] {
            assert_eq!(
                post_shutdown_from(peer).await,
                (StatusCode::FORBIDDEN, false),
                "{peer}"
            );
        }
    }

    #[tokio::test]
    async fn shutdown_is_accepted_from_loopback() {
        // `[::ffff:127.0.0.1]` is how an IPv4 loopback client appears to an admin server
        // listening on a dual-stack `[::]` socket.
        for peer in ["127.0.0.1:50000", "[::1]:50000", "[::ffff:127.0.0.1]:50000"] {
            assert_eq!(
                post_shutdown_from(peer).await,
                (StatusCode::OK, true),
                "{peer}"
            );
        }
    }
}
