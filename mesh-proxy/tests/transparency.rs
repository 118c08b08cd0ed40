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
    let res = send(proxy.outbound, Version::HTTP_11, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let seen = app.seen().pop().expect("seen");
    for gone in ["connection", "x-hop", "keep-alive", "proxy-connection"] {
        assert!(!seen.headers.contains_key(gone), "{gone} crossed the proxy");
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
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

#[tokio::test]
async fn expect_100_continue() {
    let (app, proxy) = app_and_proxy().await;
    let mut s = tokio::net::TcpStream::connect(proxy.outbound)
        .await
        .expect("connect");
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("100 in time")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    s.write_all(b"hello").await.expect("write body");
    let mut got = head;
    while !got.ends_with("hello") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("response")
            .expect("read");
        assert!(n > 0, "closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("HTTP/1.1 200 OK"), "{got}");
    assert_eq!(
        app.seen().pop().expect("seen").headers["expect"],
        "100-continue"
    );
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
