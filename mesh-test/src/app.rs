//! The hello application: HTTP/1.1, HTTP/2 and gRPC on one port.
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | `hello from mesh` |
//! | `* /echo` | the request body streamed back, trailers included |
//! | `GET /status/{code}` | that status |
//! | `GET /slow?ms=N` | `slow` after N ms (at most 60 s) |
//! | `GET /hold` | `held` once the test calls [`App::release`] (at most 60 s) |
//! | `GET /ws` with `Upgrade: websocket` | a WebSocket that echoes every message |
//! | `CONNECT host:port` | `200`, then a byte tunnel that echoes |
//! | `content-type: application/grpc` on `/hello.*` | `hello.Greeter` (see [`crate::grpc`]) |
//!
//! Every request's head is recorded ([`App::seen`]) so tests can compare what a client sent
//! with what arrived through the proxy, and [`App::wait_seen`] lets a test wait until requests
//! have arrived instead of sleeping. `/hold` keeps requests in flight for exactly as long as a
//! test needs, which a fixed `/slow` delay cannot promise on a busy machine.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::Role;

/// What the application saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The method.
    pub method: Method,
    /// The request target.
    pub uri: Uri,
    /// The HTTP version it arrived in.
    pub version: Version,
    /// The headers as received.
    pub headers: HeaderMap,
}

/// A running hello application.
#[derive(Clone, Debug)]
pub struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stats: Arc<Stats>,
    /// How many requests have been recorded, for [`App::wait_seen`].
    seen_count: Arc<watch::Sender<usize>>,
    /// Whether `/hold` requests may answer.
    released: Arc<watch::Sender<bool>>,
    /// What `/` says it is: `hello from <name>`.
    name: Arc<str>,
    /// The `x-key`s `/first-fails` has seen.
    keys: Arc<Mutex<std::collections::HashSet<String>>>,
}

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl App {
    /// Starts the application on `127.0.0.1:0`.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound (a broken test environment).
    pub async fn spawn() -> App {
        #[allow(clippy::expect_used)]
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        App::serve(listener)
    }

    /// Serves the application on `listener` in a background task.
    pub fn serve(listener: TcpListener) -> App {
        App::serve_named(listener, "mesh")
    }

    /// Serves the application on `listener`, answering `/` with `hello from <name>` (so a
    /// demo or test can tell several apps apart).
    pub fn serve_named(listener: TcpListener, name: &str) -> App {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = App {
            addr,
            seen,
            stats: Arc::default(),
            seen_count: Arc::new(watch::Sender::new(0)),
            released: Arc::new(watch::Sender::new(false)),
            name: name.into(),
            keys: Arc::default(),
        };
        let a = app.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                a.stats.connections.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                let a = a.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let a = a.clone();
                        async move { Ok::<_, Infallible>(a.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        app
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many TCP connections the application has accepted.
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// The most requests the application has had in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.stats.max_in_flight.load(Ordering::Relaxed)
    }

    /// Waits until the application has seen at least `n` requests, for at most `within`.
    /// Returns whether it had.
    pub async fn wait_seen(&self, n: usize, within: Duration) -> bool {
        let mut rx = self.seen_count.subscribe();
        tokio::time::timeout(within, rx.wait_for(|&seen| seen >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Lets every `/hold` request, waiting or still to come, answer.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Every request head seen so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<tonic::body::Body> {
        let now = self.stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let head = req.method() == Method::HEAD;
        let trailer = req.headers().get(http::header::TRAILER).cloned();
        let mut res = self.route(req).await;
        if head {
            // A HEAD response carries the length of the body it omits, and no body.
            let len = http_body::Body::size_hint(res.body()).exact().unwrap_or(0);
            res.headers_mut()
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
            *res.body_mut() = tonic::body::Body::empty();
        }
        if let Some(t) = trailer {
            // Echoed trailers are declared, as HTTP/1.1 requires for sending them.
            res.headers_mut().insert(http::header::TRAILER, t);
        }
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        res
    }

    async fn route(&self, mut req: Request<Incoming>) -> Response<tonic::body::Body> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(Seen {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                headers: req.headers().clone(),
            });
            self.seen_count.send_replace(seen.len());
        }
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        // gRPC calls to `hello.*`; other paths keep their HTTP meaning, so tests can make a
        // gRPC client wait on `/slow`.
        if grpc && req.uri().path().starts_with("/hello.") {
            return crate::grpc::serve(req).await;
        }
        if req.method() == Method::CONNECT {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            return text(StatusCode::OK, "");
        }
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/" => text(StatusCode::OK, format!("hello from {}\n", self.name)),
            "/headers" => {
                // What arrived: the version, then every header (e.g. l5d-client-id).
                let mut out = format!("version: {:?}\n", req.version());
                for (name, value) in req.headers() {
                    out.push_str(&format!(
                        "{name}: {}\n",
                        String::from_utf8_lossy(value.as_bytes())
                    ));
                }
                text(StatusCode::OK, out)
            }
            "/collect" => {
                // Reads the whole body before answering (so a hyper server asks an
                // `Expect: 100-continue` client for it), then answers with it.
                match http_body_util::BodyExt::collect(req.into_body()).await {
                    Ok(body) => text(StatusCode::OK, body.to_bytes()),
                    Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
                }
            }
            "/echo" => {
                let mut res = Response::new(tonic::body::Body::new(req.into_body()));
                res.headers_mut()
                    .insert("x-echo", http::HeaderValue::from_static("1"));
                res
            }
            "/slow" => {
                let ms = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("ms="))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1000)
                    .min(60_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, "slow\n")
            }
            "/hold" => {
                let mut released = self.released.subscribe();
                let _ =
                    tokio::time::timeout(Duration::from_secs(60), released.wait_for(|&open| open))
                        .await;
                text(StatusCode::OK, "held\n")
            }
            // Fails a share of requests (`?p=0.3`) with 503 after reading the body; the
            // others answer with the body they received.
            "/flaky" => {
                let p = query_f64(&req, "p").unwrap_or(0.5);
                let body = http_body_util::BodyExt::collect(req.into_body()).await;
                match body {
                    Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
                    Ok(_) if fastrand::f64() < p => {
                        text(StatusCode::SERVICE_UNAVAILABLE, "flaky\n")
                    }
                    Ok(b) => text(StatusCode::OK, b.to_bytes()),
                }
            }
            // The first request carrying a given `x-key` fails with 503 (after reading its
            // body); later ones answer with the body they received.
            "/first-fails" => {
                let key = req
                    .headers()
                    .get("x-key")
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default();
                let body = http_body_util::BodyExt::collect(req.into_body()).await;
                let first = self
                    .keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key);
                match body {
                    Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
                    Ok(_) if first => text(StatusCode::SERVICE_UNAVAILABLE, "first try fails\n"),
                    Ok(b) => text(StatusCode::OK, b.to_bytes()),
                }
            }
            // Never answers (within a minute).
            "/hang" => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                text(StatusCode::OK, "late\n")
            }
            // A gRPC response head, then a stream that never sends a message or trailers.
            "/grpc-stall" => {
                let stalled = futures_util::stream::pending::<
                    Result<http_body::Frame<Bytes>, tonic::Status>,
                >();
                let mut res = Response::new(tonic::body::Body::new(
                    http_body_util::StreamBody::new(stalled),
                ));
                res.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                res
            }
            // A response head, then a body that never sends a byte nor ends.
            "/stall" => {
                let stalled = futures_util::stream::pending::<
                    Result<http_body::Frame<Bytes>, tonic::Status>,
                >();
                Response::new(tonic::body::Body::new(http_body_util::StreamBody::new(
                    stalled,
                )))
            }
            // A gRPC trailers-only response with `?code=N`.
            "/grpc-status" => {
                let code = query_f64(&req, "code").unwrap_or(0.0);
                let mut res = text(StatusCode::OK, "");
                let h = res.headers_mut();
                h.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                if let Ok(v) = http::HeaderValue::from_str(&format!("{code}")) {
                    h.insert("grpc-status", v);
                }
                res
            }
            "/ws" => websocket(req),
            p if p.starts_with("/status/") => {
                let code = p["/status/".len()..]
                    .parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok());
                match code {
                    Some(c) => text(c, format!("status {}\n", c.as_u16())),
                    None => text(StatusCode::BAD_REQUEST, "bad status\n"),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn websocket(mut req: Request<Incoming>) -> Response<tonic::body::Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a websocket request\n");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(up),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut res = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = res.headers_mut();
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    res
}

/// A numeric query parameter.
fn query_f64<B>(req: &Request<B>, name: &str) -> Option<f64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<tonic::body::Body> {
    let mut res = Response::new(tonic::body::Body::new(Full::new(body.into())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    res
}
