//! Upstreams that misbehave: the proxy answers with a reason, never splices responses and
//! never hangs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that answers every request on a connection with `answer`, then closes.
async fn scripted_upstream(answer: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn ambiguous_response_framing_is_a_502_not_a_split_response() {
    let up = scripted_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    let proxy = proxy(config(up)).await;
    let (text, _) = raw(
        proxy.outbound,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (responses, used) = parse_responses(text.as_bytes());
    assert_eq!(responses.len(), 1, "exactly one response: {text}");
    assert_eq!(used, text.len(), "and nothing after it: {text}");
    assert_eq!(responses[0].status, 502, "{text}");
    assert!(
        responses[0]
            .header("l5d-proxy-error")
            .is_some_and(|why| why.starts_with("upstream")),
        "{text}"
    );
}

#[tokio::test]
async fn upstream_closing_without_a_response_is_a_502() {
    let up = scripted_upstream(b"").await;
    let proxy = proxy(config(up)).await;
    let (text, _) = raw(
        proxy.outbound,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let res = parse_response(text.as_bytes()).expect("a complete response");
    assert_eq!(res.status, 502, "{text}");
    assert!(res.header("l5d-proxy-error").is_some(), "{text}");
}

#[tokio::test]
async fn upstream_garbage_is_a_502() {
    let up = scripted_upstream(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    let proxy = proxy(config(up)).await;
    let (text, _) = raw(
        proxy.outbound,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (responses, used) = parse_responses(text.as_bytes());
    assert_eq!(responses.len(), 1, "{text}");
    assert_eq!(used, text.len(), "the garbage is not passed on: {text}");
    assert_eq!(responses[0].status, 502, "{text}");
}

#[tokio::test]
async fn a_body_cut_short_is_a_visible_error_not_a_clean_end() {
    let up =
        scripted_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly twenty bytes...")
            .await;
    let proxy = proxy(config(up)).await;
    let mut c = h1(proxy.outbound).await;
    let res = c
        .send_request(get(proxy.outbound, "/", http::Version::HTTP_11))
        .await
        .expect("head");
    assert_eq!(res.status(), 200);
    let body = http_body_util::BodyExt::collect(res.into_body()).await;
    assert!(body.is_err(), "a truncated body must not look complete");
}

#[tokio::test]
async fn a_silent_upstream_gets_504_after_the_response_timeout() {
    let (_app, proxy) =
        app_and_proxy_with(|cfg| cfg.limits.response_timeout = Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    let mut c = h1(proxy.outbound).await;
    let res = c
        .send_request(get(proxy.outbound, "/slow?ms=5000", http::Version::HTTP_11))
        .await
        .expect("response");
    assert_eq!(res.status(), 504);
    let why = res.headers()["l5d-proxy-error"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(why.contains("no response"), "{why}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at the timeout, not when the app did"
    );
    // A fast request on the same proxy is unaffected.
    let mut c = h1(proxy.outbound).await;
    let res = c
        .send_request(get(proxy.outbound, "/slow?ms=10", http::Version::HTTP_11))
        .await
        .expect("response");
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_slow_grpc_upstream_is_deadline_exceeded() {
    let (_app, proxy) =
        app_and_proxy_with(|cfg| cfg.limits.response_timeout = Duration::from_millis(300)).await;
    let mut c = h2(proxy.outbound).await;
    let mut req = request(
        http::Method::POST,
        proxy.outbound,
        "/slow?ms=5000",
        http::Version::HTTP_2,
        empty(),
    );
    req.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    let res = c.send_request(req).await.expect("response");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "4");
}

#[tokio::test]
async fn the_response_timeout_still_holds_while_draining() {
    let (app, proxy) = app_and_proxy_with(|cfg| {
        cfg.limits.response_timeout = Duration::from_millis(500);
        cfg.shutdown.grace = Duration::from_secs(20);
    })
    .await;
    let mut c = h1(proxy.outbound).await;
    // The app holds the request and never answers it.
    let pending =
        tokio::spawn(c.send_request(get(proxy.outbound, "/hold", http::Version::HTTP_11)));
    // The drain starts with the request certainly in flight: the app has it.
    assert!(
        app.wait_seen(1, Duration::from_secs(5)).await,
        "the request reached the app"
    );
    proxy.shutdown.trigger();
    let started = tokio::time::Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("answered in time")
        .expect("join")
        .expect("response");
    assert_eq!(res.status(), 504);
    assert_eq!(
        res.headers()["connection"],
        "close",
        "draining: the connection closes after it"
    );
    tokio::time::timeout(Duration::from_secs(5), proxy.task)
        .await
        .expect("run ends long before the grace")
        .expect("join");
    assert!(started.elapsed() < Duration::from_secs(5));
}
