//! What HTTP/1 clients other than a tidy HTTP/1.1 one do: pipelining, HTTP/1.0 with and
//! without keep-alive, and an upstream that answers before it has read the upload.
//!
//! Clients here are raw TCP, so the test controls every byte and reads the framing the proxy
//! chose; upstreams are raw TCP where the test needs a response hyper would not send.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// Long enough for any local exchange on a busy machine, short enough to fail fast.
const WAIT: Duration = Duration::from_secs(10);

// ---- a raw HTTP/1 response reader --------------------------------------------------------

/// One response as read off the wire.
struct Raw {
    version: String,
    status: u16,
    /// Header names exactly as sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// How the body was framed: `chunked`, `length` or `close`.
    framing: &'static str,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.body[..self.body.len().min(64)];
        f.debug_struct("Raw")
            .field("version", &self.version)
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("framing", &self.framing)
            .field("body_len", &self.body.len())
            .field("body_start", &String::from_utf8_lossy(shown))
            .finish()
    }
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads more bytes into `buf`; false when the peer closed (or reset) the connection.
async fn fill(s: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match timeout(WAIT, s.read(&mut chunk)).await {
        Err(_) => panic!("nothing read for {WAIT:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => false,
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response from `s`, starting with bytes left in `buf` by an earlier call (so
/// pipelined responses can be read one after the other). `None` when the connection closed
/// before a response head.
async fn read_response(s: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<Raw> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if !fill(s, buf).await {
            assert!(buf.is_empty(), "connection closed mid-head: {buf:?}");
            return None;
        }
    };
    let head = String::from_utf8(buf[..end].to_vec()).expect("UTF-8 head");
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().expect("version").to_owned();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.to_owned(), v.trim().to_owned())
        })
        .collect();
    let mut raw = Raw {
        version,
        status,
        headers,
        body: Vec::new(),
        framing: "length",
    };
    if status < 200 || status == 204 || status == 304 {
        return Some(raw);
    }
    if raw
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        raw.framing = "chunked";
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                assert!(fill(s, buf).await, "closed inside a chunked body");
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            buf.drain(..line_end + 2);
            if size == 0 {
                // No trailers expected: the final CRLF.
                while buf.len() < 2 {
                    assert!(fill(s, buf).await, "closed before the last CRLF");
                }
                assert_eq!(
                    &buf[..2],
                    b"\r\n",
                    "trailers or garbage after the last chunk"
                );
                buf.drain(..2);
                return Some(raw);
            }
            while buf.len() < size + 2 {
                assert!(fill(s, buf).await, "closed inside a chunk");
            }
            raw.body.extend_from_slice(&buf[..size]);
            assert_eq!(&buf[size..size + 2], b"\r\n", "chunk not followed by CRLF");
            buf.drain(..size + 2);
        }
    }
    if let Some(len) = raw.header("content-length") {
        let len: usize = len.parse().expect("content-length");
        while buf.len() < len {
            assert!(fill(s, buf).await, "closed before the content-length");
        }
        raw.body = buf.drain(..len).collect();
        return Some(raw);
    }
    raw.framing = "close";
    while fill(s, buf).await {}
    raw.body = std::mem::take(buf);
    Some(raw)
}

// ---- upstreams ------------------------------------------------------------------------------

/// An HTTP/1 and HTTP/2 upstream: `/echo` answers with the request body; `*?ms=N` waits N
/// ms; `/upload` answers 413 at once without reading the body; anything else answers with
/// its path. Every request's path is recorded.
async fn hyper_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        seen.lock().unwrap().push(path.clone());
                        if let Some(ms) = req
                            .uri()
                            .query()
                            .and_then(|q| q.strip_prefix("ms="))
                            .and_then(|v| v.parse().ok())
                        {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        let res = match path.as_str() {
                            "/echo" => Response::new(req.into_body().boxed_unsync()),
                            "/upload" => Response::builder()
                                .status(StatusCode::PAYLOAD_TOO_LARGE)
                                .body(
                                    http_body_util::Full::new(Bytes::from_static(b"too large"))
                                        .map_err(|e| match e {})
                                        .boxed_unsync(),
                                )
                                .unwrap(),
                            _ => Response::new(
                                http_body_util::Full::new(Bytes::from(path))
                                    .map_err(|e| match e {})
                                    .boxed_unsync(),
                            ),
                        };
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A raw upstream answering every request with `answer` and then closing the connection.
async fn scripted_upstream(answer: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while find(&buf, b"\r\n\r\n").is_none() {
                    if !fill(&mut s, &mut buf).await {
                        return;
                    }
                }
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A raw HTTP/1.1 upstream that answers `/upload` with `413` and `Connection: close` as soon
/// as it has the head, then either (`drain`) reads and discards the rest until the proxy
/// closes (a lingering close, as nginx does), or stops reading and closes 300 ms later; other
/// paths get `200` with the path as body, keep-alive. Every request line is recorded.
async fn early_413_upstream(drain: bool) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = find(&buf, b"\r\n\r\n") {
                            break i;
                        }
                        if !fill(&mut s, &mut buf).await {
                            return;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    seen.lock().unwrap().push(line.clone());
                    let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                    if path == "/upload" {
                        let _ = s
                            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
                            .await;
                        if !drain {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            return;
                        }
                        let mut sink = vec![0u8; 64 * 1024];
                        while let Ok(Ok(n)) = timeout(WAIT, s.read(&mut sink)).await {
                            if n == 0 {
                                break;
                            }
                        }
                        return;
                    }
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < len {
                        if !fill(&mut s, &mut buf).await {
                            return;
                        }
                    }
                    buf.drain(..len);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                        path.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

// ---- pipelining -----------------------------------------------------------------------------

#[tokio::test]
async fn ten_pipelined_requests_are_answered_in_order() {
    let (up, seen) = hyper_upstream().await;
    let proxy = proxy(config(up)).await;
    // The first requests are the slowest upstream, so answering in completion order (or
    // mixing bodies up) would show.
    let mut all = String::new();
    for i in 0..10 {
        all.push_str(&format!(
            "GET /p{i}?ms={} HTTP/1.1\r\nHost: app\r\n\r\n",
            (9 - i) * 10
        ));
    }
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    s.write_all(all.as_bytes()).await.expect("one write");
    let mut buf = Vec::new();
    for i in 0..10 {
        let res = read_response(&mut s, &mut buf)
            .await
            .unwrap_or_else(|| panic!("closed before response {i}"));
        assert_eq!(res.status, 200, "response {i}");
        assert_eq!(
            String::from_utf8_lossy(&res.body),
            format!("/p{i}"),
            "response {i} answers request {i}"
        );
    }
    let paths: Vec<String> = seen.lock().unwrap().clone();
    let want: Vec<String> = (0..10).map(|i| format!("/p{i}")).collect();
    assert_eq!(
        paths, want,
        "each request reached the upstream once, in order"
    );
}

// ---- HTTP/1.0 -------------------------------------------------------------------------------

#[tokio::test]
async fn http10_keep_alive_is_honoured() {
    let (up, _) = hyper_upstream().await;
    let proxy = proxy(config(up)).await;
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    let mut buf = Vec::new();
    for path in ["/first", "/second"] {
        s.write_all(format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes())
            .await
            .expect("the connection stays open for the second request");
        let res = read_response(&mut s, &mut buf)
            .await
            .unwrap_or_else(|| panic!("{path}: closed without an answer"));
        assert_eq!(res.status, 200, "{path}");
        assert_eq!(res.body, path.as_bytes(), "{path}");
        assert_eq!(
            res.framing, "length",
            "{path}: a keep-alive 1.0 body has a length"
        );
        assert!(
            res.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")),
            "{path}: response says keep-alive: {res:?}"
        );
    }
}

#[tokio::test]
async fn http10_post_with_content_length_arrives_intact() {
    let (up, _) = hyper_upstream().await;
    let proxy = proxy(config(up)).await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut req = format!(
        "POST /echo HTTP/1.0\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    s.write_all(&req).await.expect("write");
    let res = read_response(&mut s, &mut Vec::new())
        .await
        .expect("a response");
    assert_eq!(res.status, 200);
    assert!(
        res.header("transfer-encoding").is_none(),
        "no chunked encoding to an HTTP/1.0 client"
    );
    assert!(
        res.body == body,
        "the upload came back whole ({} bytes)",
        res.body.len()
    );
}

#[tokio::test]
async fn an_upstream_chunked_body_reaches_an_http10_client_unchunked() {
    let up = scripted_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let proxy = proxy(config(up)).await;
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let res = read_response(&mut s, &mut buf).await.expect("a response");
    assert_eq!(res.status, 200);
    assert!(
        res.version == "HTTP/1.0" || res.version == "HTTP/1.1",
        "{res:?}"
    );
    assert!(
        res.header("transfer-encoding").is_none(),
        "HTTP/1.0 has no chunked encoding: {res:?}"
    );
    assert_ne!(res.framing, "chunked");
    assert_eq!(String::from_utf8_lossy(&res.body), "hello world");
    if res.framing == "length" {
        // Without keep-alive the proxy closes after the response either way.
        assert!(!fill(&mut s, &mut buf).await, "closed after the response");
    }
}

/// 64 KiB of a recognisable pattern.
fn pattern() -> Vec<u8> {
    (0..64 * 1024u32)
        .map(|i| b"0123456789abcdef"[(i % 16) as usize])
        .collect()
}

#[tokio::test]
async fn a_close_delimited_upstream_body_reaches_http10_and_http11_clients_whole() {
    // An HTTP/1.0-style upstream: no length, the body ends when the connection closes.
    let answer: &'static [u8] = {
        let mut a = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        a.extend_from_slice(&pattern());
        a.leak()
    };
    let up = scripted_upstream(answer).await;
    let proxy = proxy(config(up)).await;
    for (request, version) in [
        (&b"GET / HTTP/1.0\r\n\r\n"[..], "HTTP/1.0"),
        (&b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"[..], "HTTP/1.1"),
    ] {
        let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
        s.write_all(request).await.expect("write");
        let res = read_response(&mut s, &mut Vec::new())
            .await
            .expect("a response");
        assert_eq!(res.status, 200, "{version}");
        assert!(
            res.body == pattern(),
            "{version}: the whole body ({} of {} bytes)",
            res.body.len(),
            pattern().len()
        );
        // The proxy answers in its own version (RFC 9110 §2.5), not the upstream's.
        assert_eq!(res.version, version, "{res:?}");
        if version == "HTTP/1.1" {
            // So the 1.1 client gets a framed body whose end it can tell from a cut, and
            // keeps its connection.
            assert_eq!(res.framing, "chunked", "{version}: {res:?}");
        } else {
            assert_ne!(res.framing, "chunked", "{version}: {res:?}");
        }
    }
}

// ---- early upstream responses ---------------------------------------------------------------

/// A body of `len` bytes that reads as a stream of requests, so a proxy that lost the
/// message boundary would send them upstream (or answer them).
fn smuggling_body(len: usize) -> Vec<u8> {
    let unit = b"GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n";
    unit.iter().copied().cycle().take(len).collect()
}

#[tokio::test]
async fn an_early_413_reaches_an_http11_client_and_the_connection_never_desyncs() {
    early_413_over_http11(true).await;
}

#[tokio::test]
async fn an_early_413_from_an_upstream_that_stops_reading_reaches_an_http11_client() {
    // The upload can never finish (the upstream reads none of 8 MiB), so the 413 must come
    // through while the client is still sending, and the abandoned body must not be read
    // as requests afterwards.
    early_413_over_http11(false).await;
}

async fn early_413_over_http11(upstream_drains: bool) {
    const LEN: usize = 8 * 1024 * 1024;
    let (up, seen) = early_413_upstream(upstream_drains).await;
    let proxy = proxy(config(up)).await;
    let s = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(
            format!("POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: {LEN}\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        for chunk in smuggling_body(LEN).chunks(64 * 1024) {
            wr.write_all(chunk).await?;
        }
        Ok::<_, std::io::Error>(wr)
    });
    let mut buf = Vec::new();
    let first = timeout(WAIT, read_response(&mut rd, &mut buf))
        .await
        .expect("the 413 arrives while the client is still uploading")
        .expect("the upstream's answer, not a bare close");
    assert_eq!(first.status, 413, "{first:?}");
    assert_eq!(first.body, b"too large");

    // Then: either the connection is closed, or it is still in step and the next request
    // gets its own answer.
    let wrote_all = timeout(WAIT, writer)
        .await
        .expect("writer ends")
        .expect("join");
    let next = match wrote_all {
        Ok(mut wr) => {
            let sent = wr
                .write_all(b"GET /second HTTP/1.1\r\nHost: app\r\n\r\n")
                .await;
            match sent {
                Ok(()) => read_response(&mut rd, &mut buf).await,
                Err(_) => None,
            }
        }
        Err(_) => None,
    };
    match next {
        None => {} // closed: fine
        Some(res) => {
            assert_eq!(res.status, 200, "the next request's own answer: {res:?}");
            assert_eq!(res.body, b"/second");
        }
    }
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|l| !l.contains("/smuggled")),
        "body bytes were taken for requests: {seen:?}"
    );
}

#[tokio::test]
async fn an_early_413_reaches_an_http2_client_and_the_connection_stays_usable() {
    const LEN: usize = 8 * 1024 * 1024;
    let (up, seen) = hyper_upstream().await;
    let proxy = proxy(config(up)).await;
    let addr = proxy.outbound;
    let mut tx = h2(addr).await;
    let (feed, body) = ChannelBody::new();
    let mut req = request(
        Method::POST,
        addr,
        "/upload",
        Version::HTTP_2,
        body.boxed_unsync(),
    );
    req.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(LEN));
    // The client keeps uploading until the stream is refused or reset; it must not matter.
    let feeder = tokio::spawn(async move {
        for chunk in smuggling_body(LEN).chunks(64 * 1024) {
            if feed
                .send(Frame::data(Bytes::copy_from_slice(chunk)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let started = Instant::now();
    let res = timeout(WAIT, tx.send_request(req))
        .await
        .expect("answered while uploading")
        .expect("the upstream's answer");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body_bytes(res.into_body()).await, "too large");
    let second = timeout(WAIT, tx.send_request(get(addr, "/second", Version::HTTP_2)))
        .await
        .expect("second answered")
        .expect("the connection is still usable");
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(body_bytes(second.into_body()).await, "/second");
    feeder.abort();
    assert!(started.elapsed() < WAIT);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, ["/upload", "/second"]);
}
