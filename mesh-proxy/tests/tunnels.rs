//! Connections that stop being HTTP: WebSocket upgrades, CONNECT tunnels, opaque TCP and
//! server-speaks-first protocols.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let (_app, proxy) = app_and_proxy().await;
    for addr in [proxy.outbound, proxy.inbound] {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut ws, res) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
            .await
            .expect("handshake");
        assert_eq!(res.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        for i in 0..10 {
            ws.send(Message::text(format!("ping {i}")))
                .await
                .expect("send");
            let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("echo in time")
                .expect("msg")
                .expect("ok");
            assert_eq!(msg, Message::text(format!("ping {i}")));
        }
        ws.send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .expect("send");
        let msg = ws.next().await.expect("msg").expect("ok");
        assert_eq!(msg, Message::binary(vec![0u8, 1, 2, 255]));
        ws.close(None).await.expect("close");
    }
}

#[tokio::test]
async fn upgrade_refused_by_upstream_stays_http() {
    let (app, proxy) = app_and_proxy().await;
    // The app answers 200 (not 101) on `/`; bytes after the request must be parsed as the
    // next HTTP request, not tunnelled.
    let req = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /status/204 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let (text, closed) = raw(proxy.outbound, req, Duration::from_secs(5)).await;
    assert!(closed, "{text}");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("HTTP/1.1 204 No Content"),
        "the second request was answered as HTTP: {text}"
    );
    let paths: Vec<String> = app.seen().iter().map(|s| s.uri.path().to_owned()).collect();
    assert_eq!(paths, ["/", "/status/204"]);
}

#[tokio::test]
async fn connect_tunnel() {
    let (_app, proxy) = app_and_proxy().await;
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    s.write_all(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answer")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The app's tunnel echoes.
    let payload = b"\x00\x01 raw bytes through the tunnel";
    s.write_all(payload).await.expect("write");
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("echo")
        .expect("read");
    assert_eq!(&got, payload);
}

/// A TCP server that reads until the client half-closes, then answers with everything it
/// read, reversed, and closes.
async fn half_close_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                if s.read_to_end(&mut all).await.is_ok() {
                    all.reverse();
                    let _ = s.write_all(&all).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn opaque_tcp_with_half_close() {
    let server = half_close_server().await;
    let proxy = proxy(config(server)).await;
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    // Binary, client-speaks-first: detected as opaque at once.
    s.write_all(b"\x00\x00\x00\x08\x04\xd2\x16\x2fmore")
        .await
        .expect("write");
    s.shutdown().await.expect("half-close");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("answer")
        .expect("read");
    assert_eq!(got, b"erom\x2f\x16\xd2\x04\x08\x00\x00\x00");
}

/// A server that greets first, like SMTP or MySQL.
async fn greeting_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 mail.example ESMTP ready\r\n").await;
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(&buf[..n]).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn server_speaks_first_on_an_opaque_port_gets_its_greeting_at_once() {
    let server = greeting_server().await;
    let mut cfg = config(server);
    // Detection would hold a silent client for this long; an opaque port must not wait.
    cfg.limits.detect_timeout = Duration::from_secs(30);
    cfg.outbound.opaque_ports = vec![server.port()];
    let proxy = proxy(cfg).await;
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("greeting without waiting for detection")
        .expect("read");
    assert_eq!(&buf[..n], b"220 mail.example ESMTP ready\r\n");
    s.write_all(b"EHLO me\r\n").await.expect("write");
    let n = s.read(&mut buf).await.expect("read");
    assert_eq!(&buf[..n], b"EHLO me\r\n");
}

#[tokio::test]
async fn server_speaks_first_elsewhere_falls_back_to_opaque_after_the_detect_timeout() {
    let server = greeting_server().await;
    let mut cfg = config(server);
    cfg.limits.detect_timeout = Duration::from_millis(300);
    let proxy = proxy(cfg).await;
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("greeting")
        .expect("read");
    assert_eq!(&buf[..n], b"220 mail.example ESMTP ready\r\n");
}

#[tokio::test]
async fn tls_client_hello_is_passed_through_untouched() {
    // An upstream that records the first bytes it receives.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut buf = vec![0u8; 5];
        s.read_exact(&mut buf).await.expect("read");
        let _ = tx.send(buf);
    });
    let proxy = proxy(config(upstream)).await;
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    // The start of a TLS record carrying a ClientHello (incomplete: the proxy must not wait
    // for more than the detect timeout, and must forward what it read).
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x30, 0x01])
        .await
        .expect("write");
    let got = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("forwarded")
        .expect("bytes");
    assert_eq!(got, [0x16, 0x03, 0x01, 0x00, 0x30]);
}

#[tokio::test]
async fn loops_to_the_proxy_itself_are_refused() {
    // A configured target equal to the proxy's own listener is a config error; the runtime
    // check covers original destinations, so point a second listener at the first.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port_holder = l.local_addr().expect("addr");
    drop(l);
    let mut cfg = config(port_holder);
    cfg.outbound.listen = Some(port_holder);
    cfg.outbound.target = Some("127.0.0.1:9".parse().expect("addr"));
    cfg.inbound.target = Some(port_holder);
    let proxy = proxy(cfg).await;
    let (text, closed) = raw(
        proxy.inbound,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed, "a looping connection is closed");
    assert!(text.is_empty(), "and never answered: {text}");
}

#[tokio::test]
async fn an_open_tunnel_holds_its_slot_under_the_connection_cap() {
    let app = mesh_test::app::App::spawn().await;
    let mut cfg = config(app.addr());
    cfg.limits.max_connections = std::num::NonZeroUsize::new(1);
    let proxy = proxy(cfg).await;
    let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/ws", proxy.outbound), stream)
            .await
            .expect("handshake");
    ws.send(Message::text("hold")).await.expect("send");
    let _ = ws.next().await.expect("echo").expect("ok");
    // The tunnel outlives its HTTP connection and still counts against the cap.
    let (text, closed) = raw(
        proxy.outbound,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        closed && text.is_empty(),
        "over the cap while the tunnel is open: {text}"
    );
    ws.close(None).await.expect("close");
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (text, _) = raw(
        proxy.outbound,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "the slot is free again: {text}"
    );
}

#[tokio::test]
async fn drain_waits_for_tunnels_then_closes_them_after_the_grace() {
    let app = mesh_test::app::App::spawn().await;
    let mut cfg = config(app.addr());
    cfg.shutdown.grace = Duration::from_millis(500);
    let proxy = proxy(cfg).await;
    let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/ws", proxy.outbound), stream)
            .await
            .expect("handshake");
    ws.send(Message::text("x")).await.expect("send");
    let _ = ws.next().await.expect("echo").expect("ok");
    proxy.shutdown.trigger();
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), proxy.task)
        .await
        .expect("run ends")
        .expect("join");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the drain waited for the tunnel"
    );
    let next = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .expect("tunnel closed");
    assert!(
        !matches!(next, Some(Ok(Message::Text(_)))),
        "the tunnel is gone: {next:?}"
    );
}

#[tokio::test]
async fn h2c_upgrade_requests_are_not_tunnelled() {
    let (app, proxy) = app_and_proxy().await;
    let req = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    let (text, _) = raw(proxy.outbound, req, Duration::from_secs(2)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = app.seen().pop().expect("seen");
    assert!(
        !seen.headers.contains_key("upgrade"),
        "the upgrade was stripped: {:?}",
        seen.headers
    );
    assert!(!seen.headers.contains_key("http2-settings"));
}
