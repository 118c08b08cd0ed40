//! Transparency: what a client sends is what the upstream sees, and what the upstream
//! answers is what the client gets, through both listeners and in both HTTP versions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug)]
enum Side {
    Outbound,
    Inbound,
}

fn addr(p: &TestProxy, side: Side) -> SocketAddr {
    match side {
        Side::Outbound => p.outbound,
        Side::Inbound => p.inbound,
    }
}

const SIDES: [Side; 2] = [Side::Outbound, Side::Inbound];

/// Asserts that two header maps hold the same fields with the same values in the same
/// order, except the names in `differ` (which may be added, removed or changed between
/// them: hop-by-hop fields and what hyper sets for framing and dates).
fn assert_same_headers(want: &HeaderMap, got: &HeaderMap, differ: &[&str], context: &str) {
    let names: std::collections::BTreeSet<&str> = want
        .keys()
        .chain(got.keys())
        .map(|k| k.as_str())
        .filter(|k| !differ.contains(k))
        .collect();
    for name in names {
        let w: Vec<_> = want.get_all(name).iter().collect();
        let g: Vec<_> = got.get_all(name).iter().collect();
        assert_eq!(
            w, g,
            "{context}: header {name:?} (sent {want:?}, arrived {got:?})"
        );
    }
}
/// Request fields the next hop may see differently from what the client's code set:
/// `content-length` is framing, which hyper writes for each hop (HTTP/2 clients add
/// `content-length: 0` to an empty POST). Every other field arrives exactly as sent.
const REQUEST_MAY_DIFFER: &[&str] = &["content-length"];

const VERSIONS: [Version; 2] = [Version::HTTP_11, Version::HTTP_2];

async fn send(
    addr: SocketAddr,
    version: Version,
    req: http::Request<TestBody>,
) -> http::Response<hyper::body::Incoming> {
    if version == Version::HTTP_2 {
        let mut c = h2(addr).await;
        c.send_request(req).await.expect("h2 response")
    } else {
        let mut c = h1(addr).await;
        c.send_request(req).await.expect("h1 response")
    }
}

#[tokio::test]
async fn methods_queries_and_headers_arrive_unchanged() {
    let (app, proxy) = app_and_proxy().await;
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::HEAD,
    ];
    let mut n = 0;
    for side in SIDES {
        for version in VERSIONS {
            for method in &methods {
                let path = format!("/status/200?q=a%20b&x={n}&empty=&flag");
                let mut req = request(method.clone(), addr(&proxy, side), &path, version, empty());
                let h = req.headers_mut();
                h.insert("x-custom", HeaderValue::from_static("Value With  Spaces"));
                h.append("x-multi", HeaderValue::from_static("one"));
                h.append("x-multi", HeaderValue::from_static("two"));
                h.insert("authorization", HeaderValue::from_static("Bearer abc"));
                h.insert("accept", HeaderValue::from_static("text/plain, */*;q=0.1"));
                h.insert("cookie", HeaderValue::from_static("a=1; b=2"));
                h.insert("x-empty", HeaderValue::from_static(""));
                h.insert("x-utf8", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
                let sent = req.headers().clone();
                let res = send(addr(&proxy, side), version, req).await;
                assert_eq!(
                    res.status(),
                    StatusCode::OK,
                    "{side:?} {version:?} {method}"
                );
                let seen = app.seen().pop().expect("app saw the request");
                assert_eq!(&seen.method, method);
                assert_eq!(
                    seen.version, version,
                    "the proxy keeps the client's HTTP version"
                );
                assert_eq!(
                    seen.uri.path_and_query().map(|p| p.as_str()),
                    Some(path.as_str())
                );
                assert_eq!(seen.headers["x-custom"], "Value With  Spaces");
                let multi: Vec<_> = seen.headers.get_all("x-multi").iter().collect();
                assert_eq!(multi, ["one", "two"]);
                assert_eq!(seen.headers["authorization"], "Bearer abc");
                assert_same_headers(
                    &sent,
                    &seen.headers,
                    REQUEST_MAY_DIFFER,
                    &format!("{side:?} {version:?} {method}"),
                );
                n += 1;
            }
        }
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed() {
    let (app, proxy) = app_and_proxy().await;
    let mut req = get(proxy.outbound, "/", Version::HTTP_11);
    let h = req.headers_mut();
    h.insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
    h.insert("x-hop", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
    h.insert("x-end-to-end", HeaderValue::from_static("kept"));
    let mut want = req.headers().clone();
    let res = send(proxy.outbound, Version::HTTP_11, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let seen = app.seen().pop().expect("seen");
    for gone in ["connection", "x-hop", "keep-alive", "proxy-connection"] {
        assert!(!seen.headers.contains_key(gone), "{gone} crossed the proxy");
        want.remove(gone);
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    assert_same_headers(&want, &seen.headers, REQUEST_MAY_DIFFER, "hop-by-hop");
}

#[tokio::test]
async fn bodies_up_to_16_mib_round_trip() {
    let (_app, proxy) = app_and_proxy().await;
    let sizes = [0usize, 1, 1000, 64 * 1024 + 7, 16 * 1024 * 1024];
    for side in SIDES {
        for version in VERSIONS {
            for &size in &sizes {
                let data: Bytes = (0..size)
                    .map(|i| (i % 251) as u8)
                    .collect::<Vec<u8>>()
                    .into();
                // Content-Length framing.
                let req = request(
                    Method::POST,
                    addr(&proxy, side),
                    "/echo",
                    version,
                    full(data.clone()),
                );
                let res = send(addr(&proxy, side), version, req).await;
                assert_eq!(res.status(), StatusCode::OK);
                let got = body_bytes(res.into_body()).await;
                assert_eq!(
                    got.len(),
                    size,
                    "{side:?} {version:?} content-length {size}"
                );
                assert!(got == data, "{side:?} {version:?} body differs");
                // Chunked (unknown length), sent in pieces.
                let (tx, body) = ChannelBody::new();
                let req = request(
                    Method::POST,
                    addr(&proxy, side),
                    "/echo",
                    version,
                    body.boxed_unsync(),
                );
                let feed = data.clone();
                tokio::spawn(async move {
                    for chunk in feed.chunks(256 * 1024) {
                        if tx
                            .send(Frame::data(Bytes::copy_from_slice(chunk)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                let res = send(addr(&proxy, side), version, req).await;
                let got = body_bytes(res.into_body()).await;
                assert_eq!(got.len(), size, "{side:?} {version:?} chunked {size}");
                assert!(got == data);
            }
        }
    }
}

#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    let (_app, proxy) = app_and_proxy().await;
    for version in VERSIONS {
        let (tx, body) = ChannelBody::new();
        let req = request(
            Method::POST,
            proxy.outbound,
            "/echo",
            version,
            body.boxed_unsync(),
        );
        tx.send(Frame::data(Bytes::from_static(b"first")))
            .await
            .expect("send");
        let res = tokio::time::timeout(Duration::from_secs(5), send(proxy.outbound, version, req))
            .await
            .expect("the response head arrives while the request body is still open");
        let mut body = res.into_body();
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first chunk is echoed before the request ends")
            .expect("frame")
            .expect("ok");
        assert_eq!(frame.into_data().expect("data"), "first");
        tx.send(Frame::data(Bytes::from_static(b"second")))
            .await
            .expect("send");
        drop(tx);
        let rest = body_bytes(body).await;
        assert_eq!(rest, "second", "{version:?}");
    }
}

#[tokio::test]
async fn trailers_pass_through() {
    let (_app, proxy) = app_and_proxy().await;
    for side in SIDES {
        for version in VERSIONS {
            let (tx, body) = ChannelBody::new();
            let mut req = request(
                Method::POST,
                addr(&proxy, side),
                "/echo",
                version,
                body.boxed_unsync(),
            );
            // HTTP/1.1 only sends trailers to a client that says it accepts them.
            req.headers_mut()
                .insert("te", HeaderValue::from_static("trailers"));
            req.headers_mut()
                .insert("trailer", HeaderValue::from_static("x-checksum"));
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(Bytes::from_static(b"payload"))).await;
                let _ = tx.send(Frame::trailers(trailers)).await;
            });
            let res = send(addr(&proxy, side), version, req).await;
            let collected = res.into_body().collect().await.expect("body");
            let got_trailers = collected.trailers().cloned();
            assert_eq!(collected.to_bytes(), "payload");
            let got_trailers =
                got_trailers.unwrap_or_else(|| panic!("{side:?} {version:?}: trailers lost"));
            assert_eq!(got_trailers["x-checksum"], "abc123");
        }
    }
}

#[tokio::test]
async fn headers_near_the_limit_pass() {
    let (app, proxy) = app_and_proxy().await;
    for version in VERSIONS {
        let mut req = get(proxy.outbound, "/", version);
        let value =
            HeaderValue::from_str(&"v".repeat(if version == Version::HTTP_2 { 120 } else { 600 }))
                .expect("value");
        // HTTP/1: 90 headers, ~55 KiB; HTTP/2: 90 headers under the 16 KiB header list limit.
        for i in 0..90 {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).expect("name"),
                value.clone(),
            );
        }
        let res = send(proxy.outbound, version, req).await;
        assert_eq!(res.status(), StatusCode::OK, "{version:?}");
        let seen = app.seen().pop().expect("seen");
        assert_eq!(seen.headers["x-h89"], value);
    }
}

#[tokio::test]
async fn keep_alive_reuses_upstream_connections() {
    let (app, proxy) = app_and_proxy().await;
    let mut c = h1(proxy.outbound).await;
    for _ in 0..20 {
        c.ready().await.expect("ready");
        let res = c
            .send_request(get(proxy.outbound, "/", Version::HTTP_11))
            .await
            .expect("response");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body_bytes(res.into_body()).await, "hello from mesh\n");
    }
    let mut c2 = h2(proxy.outbound).await;
    for _ in 0..20 {
        let res = c2
            .send_request(get(proxy.outbound, "/", Version::HTTP_2))
            .await
            .expect("response");
        assert_eq!(res.status(), StatusCode::OK);
        let _ = body_bytes(res.into_body()).await;
    }
    assert_eq!(
        app.connections(),
        2,
        "20 HTTP/1 requests share one upstream connection, 20 HTTP/2 streams another"
    );
}

/// Sends `POST path` with `Expect: 100-continue`, the body only when told to continue or
/// answered; returns everything the client received.
async fn expect_continue_exchange(target: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(target)
        .await
        .expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    let mut got = String::from_utf8_lossy(&buf[..n]).to_string();
    s.write_all(b"hello").await.expect("write body");
    while !got.ends_with("hello") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("response")
            .expect("read");
        assert!(n > 0, "closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    got
}

#[tokio::test]
async fn expect_100_continue() {
    // An upstream that reads the body before answering asks for it with `100 Continue`;
    // that request reaches the client, which then sends its body.
    let (app, proxy) = app_and_proxy().await;
    let direct = expect_continue_exchange(app.addr(), "/collect").await;
    assert!(direct.starts_with("HTTP/1.1 100 Continue"), "{direct}");
    let got = expect_continue_exchange(proxy.outbound, "/collect").await;
    assert!(got.starts_with("HTTP/1.1 100 Continue"), "{got}");
    assert!(got.contains("HTTP/1.1 200 OK"), "{got}");
    assert_eq!(
        app.seen().pop().expect("seen").headers["expect"],
        "100-continue"
    );
}

#[tokio::test]
async fn expect_100_continue_to_an_upstream_that_answers_first_and_streams() {
    // `/echo` answers 200 at once and echoes the body as it arrives: directly, the client
    // gets the 200 and no 100; through the proxy too, and its body is still echoed.
    let (app, proxy) = app_and_proxy().await;
    let direct = expect_continue_exchange(app.addr(), "/echo").await;
    assert!(direct.starts_with("HTTP/1.1 200 OK"), "{direct}");
    let got = expect_continue_exchange(proxy.outbound, "/echo").await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(!got.contains("100 Continue"), "{got}");
}

/// An upstream that answers every request head with `answer` without reading any body,
/// and says (once) when it has read a head.
async fn answering_upstream(
    answer: &'static [u8],
) -> (SocketAddr, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(head).await;
                let _ = s.write_all(answer).await;
                // Keep the connection open (as a server that ignores the body would) until
                // the proxy closes it.
                let _ = s.read_to_end(&mut Vec::new()).await;
            });
        }
    });
    (addr, rx)
}

/// Sends a head with `Expect: 100-continue` (and no body) to a proxy in front of an
/// upstream that refuses with 417 without reading the body; returns every response the
/// client got up to and including the final one.
async fn expect_continue_refused() -> Vec<RawResponse> {
    let (up, mut heads) = answering_upstream(
        b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 9\r\nx-why: no\r\n\r\nno thanks",
    )
    .await;
    let proxy = proxy(config(up)).await;
    let mut s = tokio::net::TcpStream::connect(proxy.outbound)
        .await
        .expect("connect");
    // The client sends the head only and waits for a decision.
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write");
    let head = tokio::time::timeout(Duration::from_secs(5), heads.recv())
        .await
        .expect("the head reached the upstream")
        .expect("head");
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(
        head.contains("\r\nexpect: 100-continue\r\n"),
        "the expectation is forwarded, so the upstream can decide: {head}"
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (responses, _) = parse_responses(&got);
        if responses.iter().any(|r| r.status >= 200) {
            return responses;
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("a final response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn expect_100_continue_the_upstreams_refusal_reaches_the_client_without_the_body() {
    let responses = expect_continue_refused().await;
    let last = responses.last().expect("a final response");
    assert_eq!(last.status, 417, "{responses:?}");
    assert_eq!(last.body, "no thanks");
    assert_eq!(last.header("x-why"), Some("no"));
}

#[tokio::test]
async fn expect_100_continue_no_interim_response_the_upstream_did_not_send() {
    let responses = expect_continue_refused().await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [417],
        "a 100 Continue the upstream never sent tells the client to send a body the upstream refused"
    );
}

#[tokio::test]
async fn response_headers_arrive_unchanged_minus_hop_by_hop() {
    const ANSWER: &[u8] = b"HTTP/1.1 203 Non-Authoritative Information\r\n\
Content-Type: application/json; charset=utf-8\r\n\
Set-Cookie: a=1; Path=/\r\n\
Set-Cookie: b=2; HttpOnly\r\n\
X-Multi: one\r\n\
X-Multi: two\r\n\
X-Empty:\r\n\
Cache-Control: no-cache\r\n\
Date: Tue, 01 Jan 2030 00:00:00 GMT\r\n\
Server: upstream/1.0\r\n\
ETag: \"v1\"\r\n\
Keep-Alive: timeout=5\r\n\
Connection: close, x-hop\r\n\
X-Hop: gone\r\n\
Content-Length: 2\r\n\r\nok";
    let upstream = parse_response(ANSWER).expect("the scripted answer parses");
    // What the client must see: the upstream's fields minus the hop-by-hop ones (RFC 9110
    // §7.6.1: `Connection`, the fields it names, `Keep-Alive`).
    let mut want = upstream.headers.clone();
    for hop in ["connection", "keep-alive", "x-hop"] {
        want.remove(hop);
    }
    let (up, _heads) = answering_upstream(ANSWER).await;
    let proxy = proxy(config(up)).await;
    for side in SIDES {
        let (text, _) = raw(
            addr(&proxy, side),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        let got = parse_response(text.as_bytes()).expect("a complete response");
        assert_eq!(got.status, 203, "{side:?}: {text}");
        assert_eq!(got.body, "ok");
        for hop in ["keep-alive", "x-hop"] {
            assert!(
                !got.headers.contains_key(hop),
                "{side:?}: {hop} crossed: {text}"
            );
        }
        // `connection: close` is the proxy's own answer to the client's `close`.
        assert_same_headers(&want, &got.headers, &["connection"], &format!("{side:?}"));
    }
}

#[tokio::test]
async fn upstream_error_statuses_pass_through_untouched() {
    let (_app, proxy) = app_and_proxy().await;
    for code in [404u16, 500, 503] {
        let res = send(
            proxy.outbound,
            Version::HTTP_11,
            get(proxy.outbound, &format!("/status/{code}"), Version::HTTP_11),
        )
        .await;
        assert_eq!(res.status().as_u16(), code);
        assert!(
            !res.headers().contains_key("l5d-proxy-error"),
            "the app's own {code} is not a proxy error"
        );
    }
}

#[tokio::test]
async fn inbound_never_passes_on_a_client_supplied_identity() {
    let (app, proxy) = app_and_proxy().await;
    for (side, kept) in [(Side::Inbound, false), (Side::Outbound, true)] {
        for version in VERSIONS {
            let mut req = get(addr(&proxy, side), "/", version);
            req.headers_mut().insert(
                "l5d-client-id",
                HeaderValue::from_static("spiffe://evil/ns/x/sa/admin"),
            );
            let res = send(addr(&proxy, side), version, req).await;
            assert_eq!(res.status(), StatusCode::OK);
            let seen = app.seen().pop().expect("seen");
            assert_eq!(
                seen.headers.contains_key("l5d-client-id"),
                kept,
                "{side:?} {version:?}"
            );
        }
    }
}
