//! Shared harness for the proxy's end-to-end tests: a proxy on `127.0.0.1:0` in front of
//! the hello app, and small HTTP clients.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::config::Config;
use mesh_proxy::{Proxy, Shutdown};
use mesh_test::app::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A running proxy.
pub struct TestProxy {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: Shutdown,
    pub task: JoinHandle<()>,
}

/// A config with every listener on `127.0.0.1:0`, both directions targeting `target`.
pub fn config(target: SocketAddr) -> Config {
    let mut cfg = Config::default();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    cfg.admin.listen = any;
    cfg.outbound.listen = Some(any);
    cfg.inbound.listen = Some(any);
    cfg.outbound.target = Some(target);
    cfg.inbound.target = Some(target);
    cfg.shutdown.grace = Duration::from_secs(10);
    cfg
}

/// Starts a proxy with `cfg`.
pub async fn proxy(cfg: Config) -> TestProxy {
    proxy_with(Proxy::new(cfg)).await
}

/// Starts a prepared proxy.
pub async fn proxy_with(p: Proxy) -> TestProxy {
    let bound = p.bind().await.expect("bind proxy");
    TestProxy {
        outbound: bound.outbound_addr().expect("outbound"),
        inbound: bound.inbound_addr().expect("inbound"),
        admin: bound.admin_addr(),
        shutdown: bound.shutdown_handle(),
        task: tokio::spawn(bound.run()),
    }
}

/// The hello app and a default proxy in front of it.
pub async fn app_and_proxy() -> (App, TestProxy) {
    let app = App::spawn().await;
    let proxy = proxy(config(app.addr())).await;
    (app, proxy)
}

/// A streaming request body fed from a channel, for tests that interleave sending and
/// receiving.
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Frame<Bytes>>,
}

impl ChannelBody {
    pub fn new() -> (tokio::sync::mpsc::Sender<Frame<Bytes>>, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        (tx, Self { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

pub type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// An HTTP/1.1 client connection to `addr`.
pub async fn h1(addr: SocketAddr) -> http1::SendRequest<TestBody> {
    let io = TcpStream::connect(addr).await.expect("connect");
    let (tx, conn) = http1::handshake(TokioIo::new(io))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn.with_upgrades());
    tx
}

/// An HTTP/2 (prior knowledge) client connection to `addr`.
pub async fn h2(addr: SocketAddr) -> http2::SendRequest<TestBody> {
    let io = TcpStream::connect(addr).await.expect("connect");
    let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    tx
}

/// Collects a response body.
pub async fn body_bytes<B>(body: B) -> Bytes
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    body.collect().await.expect("body").to_bytes()
}

/// Sends raw bytes on a new connection and reads until the peer closes or `wait` passes.
/// Returns what was read and whether the peer closed.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    read_until_close(&mut s, wait).await
}

/// Reads from `s` until it closes or `wait` passes; returns the text and whether it closed.
pub async fn read_until_close(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A GET request for `path` with a Host header (HTTP/1) or authority (HTTP/2).
pub fn get(addr: SocketAddr, path: &str, version: http::Version) -> http::Request<TestBody> {
    request(http::Method::GET, addr, path, version, empty())
}

pub fn request(
    method: http::Method,
    addr: SocketAddr,
    path: &str,
    version: http::Version,
    body: TestBody,
) -> http::Request<TestBody> {
    let uri = if version == http::Version::HTTP_2 {
        format!("http://{addr}{path}")
    } else {
        path.to_owned()
    };
    let mut b = http::Request::builder()
        .method(method)
        .uri(uri)
        .version(version);
    if version != http::Version::HTTP_2 {
        b = b.header(http::header::HOST, addr.to_string());
    }
    b.body(body).expect("request")
}
