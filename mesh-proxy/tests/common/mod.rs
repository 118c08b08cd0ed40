//! Shared harness for the proxy's end-to-end tests: a proxy on `127.0.0.1:0` in front of
//! the hello app, small HTTP clients, a raw HTTP/1 response parser, raw HTTP/2 frames, a
//! TLS 1.3 ClientHello, metrics scraping, and a panic check.
//!
//! # The panic check
//!
//! The proxy's tasks run on the test's runtime through `tokio::spawn`, and tokio turns a
//! panicking task into a `JoinError` nobody looks at: a bug that panics in a connection task
//! would otherwise pass as a closed connection. Every [`TestProxy`] therefore carries a
//! [`PanicCheck`], which fails the test when it is dropped if a panic was recorded while it
//! was alive — on the test's own thread (where a current-thread runtime runs every spawned
//! task) or on a tokio worker thread (multi-thread runtimes; such a panic cannot be
//! attributed to one test, so every live check reports it). Panics on other tests' threads
//! are theirs. A test that fails by its own assertion is not reported twice: the check
//! does nothing while its thread is already unwinding.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
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
///
/// Dropping it fails the test if a task panicked while it was alive (see [`PanicCheck`]);
/// moving `task` out of it (to await the run ending) keeps that check in place.
pub struct TestProxy {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: Shutdown,
    pub task: JoinHandle<()>,
    pub panics: PanicCheck,
}

impl TestProxy {
    /// Fails now if a task has panicked since this proxy started.
    pub fn assert_no_panics(&self) {
        self.panics.assert_no_panics();
    }
}

// ---- panic check --------------------------------------------------------------------------

/// One panic seen by the hook.
#[derive(Clone, Debug)]
struct PanicRecord {
    seq: u64,
    thread: Option<String>,
    message: String,
}

static PANICS: Mutex<Vec<PanicRecord>> = Mutex::new(Vec::new());
static PANIC_SEQ: AtomicU64 = AtomicU64::new(0);

/// Installs (once per test binary) a panic hook that records every panic, then hands it to
/// the previous hook so the usual message is still printed.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "<non-string payload>".to_owned());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let record = PanicRecord {
                seq: PANIC_SEQ.fetch_add(1, Ordering::SeqCst),
                thread: std::thread::current().name().map(str::to_owned),
                message: format!("{what}{at}"),
            };
            // Never panic inside the hook: a poisoned lock still holds the records.
            PANICS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(record);
            previous(info);
        }));
    });
}

/// Whether a panic on `thread` belongs to no particular test: tokio's worker threads (and
/// unnamed threads) serve whichever runtime spawned onto them.
fn unattributable(thread: Option<&str>) -> bool {
    thread.is_none_or(|t| t.starts_with("tokio-runtime-worker"))
}

/// Fails the test, when dropped or asked, if a panic was recorded since it was created on
/// its own thread or on a tokio worker thread.
#[derive(Debug)]
pub struct PanicCheck {
    thread: Option<String>,
    since: u64,
}

impl PanicCheck {
    /// Starts watching for panics from now on.
    pub fn new() -> Self {
        install_panic_hook();
        Self {
            thread: std::thread::current().name().map(str::to_owned),
            since: PANIC_SEQ.load(Ordering::SeqCst),
        }
    }

    /// Panics recorded since this check started that belong to this test.
    pub fn panics(&self) -> Vec<String> {
        PANICS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|r| r.seq >= self.since)
            .filter(|r| r.thread == self.thread || unattributable(r.thread.as_deref()))
            .map(|r| {
                format!(
                    "thread '{}': {}",
                    r.thread.as_deref().unwrap_or("<unnamed>"),
                    r.message
                )
            })
            .collect()
    }

    /// Fails if a task has panicked since this check started.
    pub fn assert_no_panics(&self) {
        let panics = self.panics();
        assert!(
            panics.is_empty(),
            "a task panicked while this TestProxy was alive (tokio swallowed it):\n  {}",
            panics.join("\n  ")
        );
    }
}

impl Default for PanicCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PanicCheck {
    fn drop(&mut self) {
        // The test is already failing by its own panic; a second one would abort and bury
        // the first message.
        if !std::thread::panicking() {
            self.assert_no_panics();
        }
    }
}

/// Polls `cond` every 5 ms until it holds, failing with `what` after `within`.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The start of a configuration whose outbound listener routes with `[routers.<router>]`:
/// admin, outbound and inbound (to nowhere) on `127.0.0.1:0`. The caller appends the rest.
pub fn routed_toml(router: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [outbound]\nlisten = \"127.0.0.1:0\"\nrouter = \"{router}\"\n\
         [inbound]\nlisten = \"127.0.0.1:0\"\ntarget = \"127.0.0.1:1\"\n"
    )
}

/// A fresh, empty directory under the system's temporary directory, unique to this process
/// and call (`what` names it for whoever finds it left behind).
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mesh-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// Writes `dir/name` atomically (a rename), as a deployment tool would.
pub fn write_atomic(dir: &std::path::Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// A config with every listener on `127.0.0.1:0`, both directions targeting `target`.
pub fn config(target: SocketAddr) -> Config {
    let mut cfg = Config::default();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    cfg.admin.listen = any;
    cfg.outbound.listen = Some(any);
    cfg.inbound.listen = Some(any);
    cfg.outbound.target = Some(target.into());
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
    // Watching starts before anything of the proxy runs.
    let panics = PanicCheck::new();
    let bound = p.bind().await.expect("bind proxy");
    TestProxy {
        panics,
        outbound: bound.outbound_addr().expect("outbound"),
        inbound: bound.inbound_addr().expect("inbound"),
        admin: bound.admin_addr(),
        shutdown: bound.shutdown_handle(),
        task: tokio::spawn(bound.run()),
    }
}

/// The hello app and a default proxy in front of it.
pub async fn app_and_proxy() -> (App, TestProxy) {
    app_and_proxy_with(|_| {}).await
}

/// The hello app and a proxy in front of it, with `tune` applied to the default test
/// config.
pub async fn app_and_proxy_with(tune: impl FnOnce(&mut Config)) -> (App, TestProxy) {
    let app = App::spawn().await;
    let mut cfg = config(app.addr());
    tune(&mut cfg);
    let proxy = proxy(cfg).await;
    (app, proxy)
}

/// An address on `127.0.0.1` where nothing listens: a port the kernel handed out and that
/// was closed again (connects to it are refused).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
    // `l` is dropped here, closing the port.
}

// ---- metrics ------------------------------------------------------------------------------

/// The Prometheus recorder of this test binary, installed on first use. Metrics are
/// process-wide, so tests that share a binary share counters: compare before and after, or
/// select by a label unique to the test (`dst`).
pub fn prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = mesh_proxy::telemetry::prometheus_recorder().expect("recorder");
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("no other recorder in this test binary");
            mesh_proxy::telemetry::describe_metrics();
            handle
        })
        .clone()
}

/// Starts a proxy with `cfg` whose admin server serves `/metrics` from [`prometheus`].
pub async fn proxy_with_metrics(cfg: Config) -> TestProxy {
    proxy_with(Proxy::new(cfg).with_prometheus(prometheus())).await
}

/// `GET /metrics` from the admin server at `admin`.
pub async fn scrape(admin: SocketAddr) -> String {
    let mut c = h1(admin).await;
    let res = c
        .send_request(get(admin, "/metrics", http::Version::HTTP_11))
        .await
        .expect("scrape");
    assert_eq!(res.status(), 200, "GET /metrics");
    String::from_utf8(body_bytes(res.into_body()).await.to_vec()).expect("utf-8")
}

/// The response's `l5d-proxy-error`, or empty.
pub fn proxy_error<B>(res: &http::Response<B>) -> String {
    res.headers()
        .get("l5d-proxy-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The value of the first sample line of `name` that carries every label in `labels`
/// (each written `key="value"`).
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .find(|l| {
            let (set, _) = l.split_once('}').unwrap_or((l, ""));
            labels
                .iter()
                .all(|want| set.split(',').any(|have| have == *want))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
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

// ---- raw HTTP/1 responses -----------------------------------------------------------------

/// One HTTP/1 response parsed from raw bytes.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: http::HeaderMap,
    /// The body, de-chunked when the response was chunked.
    pub body: Bytes,
    /// Trailers of a chunked body.
    pub trailers: http::HeaderMap,
}

impl RawResponse {
    /// The value of header `name`, if present once or more (the first one).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Parses every complete response at the start of `data` (pipelined or interim ones
/// included, in order) and returns them with the number of bytes they took. Bodies are
/// framed by `Transfer-Encoding: chunked`, then `Content-Length`, else (not for 1xx, 204,
/// 304) by the end of `data`, as a close-delimited body is. Responses to HEAD, which carry
/// a length but no body, are not supported. Stops at the first incomplete or malformed
/// response.
pub fn parse_responses(data: &[u8]) -> (Vec<RawResponse>, usize) {
    let mut out = Vec::new();
    let mut used = 0;
    while used < data.len() {
        match parse_one(&data[used..]) {
            Some((res, n)) => {
                out.push(res);
                used += n;
            }
            None => break,
        }
    }
    (out, used)
}

/// The first complete response in `data`, interim (1xx) responses included.
pub fn parse_response(data: &[u8]) -> Option<RawResponse> {
    parse_one(data).map(|(res, _)| res)
}

/// The status of the first complete response in `text` (as [`raw`] returns it).
pub fn response_status(text: &str) -> Option<u16> {
    parse_response(text.as_bytes()).map(|r| r.status)
}

fn find(data: &[u8], needle: &[u8]) -> Option<usize> {
    data.windows(needle.len()).position(|w| w == needle)
}

fn parse_fields(lines: &[u8]) -> Option<http::HeaderMap> {
    let mut headers = http::HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let name = http::HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
        headers.append(name, value);
    }
    Some(headers)
}

fn parse_one(data: &[u8]) -> Option<(RawResponse, usize)> {
    let head_end = find(data, b"\r\n\r\n")? + 4;
    let head = &data[..head_end - 4];
    let (status_line, fields) = match find(head, b"\r\n") {
        Some(i) => (&head[..i], &head[i + 2..]),
        None => (head, &head[head.len()..]),
    };
    let status_line = std::str::from_utf8(status_line).ok()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?.to_owned();
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let reason = parts.next().unwrap_or("").to_owned();
    let headers = parse_fields(fields)?;
    let rest = &data[head_end..];
    let chunked = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"))
        });
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
    let mut trailers = http::HeaderMap::new();
    let (body, used) = if (100..200).contains(&status) || status == 204 || status == 304 {
        (Bytes::new(), 0)
    } else if chunked {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = find(&rest[at..], b"\r\n")?;
            let size_text = std::str::from_utf8(&rest[at..at + line_end]).ok()?;
            let size_text = size_text.split(';').next()?.trim();
            let size = usize::from_str_radix(size_text, 16).ok()?;
            at += line_end + 2;
            if size == 0 {
                // Trailer fields, then the empty line.
                let end = if rest[at..].starts_with(b"\r\n") {
                    0
                } else {
                    find(&rest[at..], b"\r\n\r\n")? + 2
                };
                trailers = parse_fields(&rest[at..at + end])?;
                at += end + 2;
                break;
            }
            body.extend_from_slice(rest.get(at..at + size)?);
            if rest.get(at + size..at + size + 2)? != b"\r\n" {
                return None;
            }
            at += size + 2;
        }
        (Bytes::from(body), at)
    } else if let Some(length) = length {
        let n = length?;
        (Bytes::copy_from_slice(rest.get(..n)?), n)
    } else {
        (Bytes::copy_from_slice(rest), rest.len())
    };
    let res = RawResponse {
        version,
        status,
        reason,
        headers,
        body,
        trailers,
    };
    Some((res, head_end + used))
}

// ---- raw HTTP/2 frames --------------------------------------------------------------------

/// HTTP/2 frame types used by the raw client (RFC 9113 §6).
pub mod frame {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const FLAG_END_STREAM: u8 = 0x1;
    pub const FLAG_ACK: u8 = 0x1;
    pub const FLAG_END_HEADERS: u8 = 0x4;
    pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const PROTOCOL_ERROR: u32 = 0x1;
}

/// One HTTP/2 frame as read off the wire.
#[derive(Clone, Debug)]
pub struct RawFrame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// An HTTP/2 frame header and payload.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    assert!(
        len < 1 << 14,
        "frames here stay under the default maximum size"
    );
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A HEADERS frame (END_HEADERS | END_STREAM) for `GET path` on `authority`, HPACK-encoded
/// by hand: static-table `:method GET` and `:scheme http`, literal `:path` and `:authority`
/// without indexing, so no dynamic table state is involved.
pub fn h2_get(stream: u32, authority: &str, path: &str) -> Vec<u8> {
    fn literal(block: &mut Vec<u8>, name_index: u8, value: &str) {
        let len = u8::try_from(value.len())
            .ok()
            .filter(|&l| l < 127)
            .expect("value short enough for a one-byte HPACK length");
        block.push(name_index); // 0000xxxx: literal without indexing, indexed name
        block.push(len); // H = 0: not Huffman-coded
        block.extend_from_slice(value.as_bytes());
    }
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    literal(&mut block, 0x04, path);
    literal(&mut block, 0x01, authority);
    h2_frame(
        frame::HEADERS,
        frame::FLAG_END_HEADERS | frame::FLAG_END_STREAM,
        stream,
        &block,
    )
}

/// Reads one HTTP/2 frame from `s`, for at most `wait`; `None` on close or timeout.
pub async fn read_h2_frame(s: &mut TcpStream, wait: Duration) -> Option<RawFrame> {
    tokio::time::timeout(wait, async {
        let mut header = [0u8; 9];
        s.read_exact(&mut header).await.ok()?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.ok()?;
        Some(RawFrame {
            kind: header[3],
            flags: header[4],
            stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            payload,
        })
    })
    .await
    .ok()
    .flatten()
}

/// A raw HTTP/2 connection to `addr`: preface and an empty SETTINGS sent, the server's
/// SETTINGS read and acknowledged. Returns the stream and the server's settings
/// (identifier, value), in the order sent.
pub async fn raw_h2(addr: SocketAddr) -> (TcpStream, Vec<(u16, u32)>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut hello = mesh_core::detect::H2_PREFACE.to_vec();
    hello.extend(h2_frame(frame::SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.expect("write preface");
    loop {
        let f = read_h2_frame(&mut s, Duration::from_secs(5))
            .await
            .expect("the server's SETTINGS");
        if f.kind == frame::SETTINGS && f.flags & frame::FLAG_ACK == 0 {
            let settings = f
                .payload
                .chunks_exact(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect();
            s.write_all(&h2_frame(frame::SETTINGS, frame::FLAG_ACK, 0, &[]))
                .await
                .expect("ack SETTINGS");
            return (s, settings);
        }
    }
}

// ---- TLS ----------------------------------------------------------------------------------

/// A complete TLS 1.3 ClientHello record, as a modern client sends it: TLS 1.3 cipher
/// suites, `server_name`, `supported_groups`, `signature_algorithms`, ALPN,
/// `supported_versions` (1.3), `psk_key_exchange_modes` and an X25519 `key_share`.
pub fn tls13_client_hello(server_name: &str, alpn: &[&[u8]]) -> Vec<u8> {
    fn vec8(out: &mut Vec<u8>, data: &[u8]) {
        out.push(u8::try_from(data.len()).expect("vec8"));
        out.extend_from_slice(data);
    }
    fn vec16(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(&u16::try_from(data.len()).expect("vec16").to_be_bytes());
        out.extend_from_slice(data);
    }
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        vec16(out, data);
    }
    let mut exts = Vec::new();
    let mut sni = vec![0u8]; // host_name
    vec16(&mut sni, server_name.as_bytes());
    let mut sni_list = Vec::new();
    vec16(&mut sni_list, &sni);
    ext(&mut exts, 0x0000, &sni_list); // server_name
    let mut groups = Vec::new();
    vec16(&mut groups, &[0x00, 0x1d, 0x00, 0x17]); // x25519, secp256r1
    ext(&mut exts, 0x000a, &groups); // supported_groups
    let mut sigs = Vec::new();
    vec16(&mut sigs, &[0x04, 0x03, 0x08, 0x04, 0x04, 0x01]); // ecdsa-p256, rsa-pss, rsa
    ext(&mut exts, 0x000d, &sigs); // signature_algorithms
    let mut protocols = Vec::new();
    for p in alpn {
        vec8(&mut protocols, p);
    }
    let mut alpn_ext = Vec::new();
    vec16(&mut alpn_ext, &protocols);
    ext(&mut exts, 0x0010, &alpn_ext); // application_layer_protocol_negotiation
    let mut versions = Vec::new();
    vec8(&mut versions, &[0x03, 0x04]); // TLS 1.3
    ext(&mut exts, 0x002b, &versions); // supported_versions
    ext(&mut exts, 0x002d, &[0x01, 0x01]); // psk_key_exchange_modes: psk_dhe_ke
    let mut share = vec![0x00, 0x1d]; // x25519
    vec16(&mut share, &[0x42; 32]);
    let mut shares = Vec::new();
    vec16(&mut shares, &share);
    ext(&mut exts, 0x0033, &shares); // key_share

    let mut body = vec![0x03, 0x03]; // legacy_version: TLS 1.2
    body.extend((0u8..32).map(|i| i.wrapping_mul(7))); // random
    vec8(&mut body, &[0xab; 32]); // legacy_session_id
    vec16(&mut body, &[0x13, 0x01, 0x13, 0x02, 0x13, 0x03]); // TLS_AES_*, CHACHA20
    vec8(&mut body, &[0x00]); // legacy_compression_methods: null
    vec16(&mut body, &exts);

    let mut handshake = vec![0x01]; // client_hello
    let len = u32::try_from(body.len()).expect("hello length");
    handshake.extend_from_slice(&len.to_be_bytes()[1..]);
    handshake.extend(body);

    let mut record = vec![0x16, 0x03, 0x01]; // handshake, legacy record version TLS 1.0
    vec16(&mut record, &handshake);
    record
}
