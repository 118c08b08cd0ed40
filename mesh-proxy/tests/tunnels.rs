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
    let (responses, used) = parse_responses(text.as_bytes());
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200, 204],
        "the second request was answered as HTTP: {text}"
    );
    assert_eq!(used, text.len(), "nothing but the two responses: {text}");
    assert!(
        !responses[0].headers.contains_key("upgrade"),
        "no upgrade was agreed: {text}"
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
async fn tls_client_hello_is_detected_and_passed_through_untouched() {
    let hello = tls13_client_hello("web.default.svc", &[b"h2", b"http/1.1"]);
    // What follows the hello on the wire: a ChangeCipherSpec and an encrypted-looking
    // application data record, which the proxy cannot read and must not touch.
    let mut after = vec![
        0x14, 0x03, 0x03, 0x00, 0x01, 0x01, 0x17, 0x03, 0x03, 0x00, 0x04,
    ];
    after.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let server_flight: &[u8] = b"\x16\x03\x03\x00\x04\x02\x00\x00\x00 pretend ServerHello";

    // An upstream that records exactly the bytes it receives and answers with its flight.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = l.local_addr().expect("addr");
    let (got_hello, rx_hello) = tokio::sync::oneshot::channel();
    let (got_after, rx_after) = tokio::sync::oneshot::channel();
    let (hello_len, after_len) = (hello.len(), after.len());
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut buf = vec![0u8; hello_len];
        s.read_exact(&mut buf).await.expect("read the hello");
        let _ = got_hello.send(buf);
        s.write_all(server_flight).await.expect("answer");
        let mut buf = vec![0u8; after_len];
        s.read_exact(&mut buf).await.expect("read the rest");
        let _ = got_after.send(buf);
    });

    // A detect timeout far beyond the test's wait: the bytes can only reach the upstream in
    // time if the proxy recognised a complete ClientHello (a partial one waits it out).
    let mut cfg = config(upstream);
    cfg.limits.detect_timeout = Duration::from_secs(60);
    let proxy = proxy_with_metrics(cfg).await;
    let tls_label = ["direction=\"outbound\"", "protocol=\"tls\""];
    let before = sample(&scrape(proxy.admin).await, "mesh_detect_total", &tls_label);

    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    s.write_all(&hello).await.expect("write hello");
    let got = tokio::time::timeout(Duration::from_secs(5), rx_hello)
        .await
        .expect("the hello reached the upstream before any detect timeout")
        .expect("bytes");
    assert_eq!(got, hello, "every byte of the hello arrives unchanged");

    let mut flight = vec![0u8; server_flight.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut flight))
        .await
        .expect("the server's flight in time")
        .expect("read");
    assert_eq!(flight, server_flight);
    s.write_all(&after).await.expect("write the rest");
    let got = tokio::time::timeout(Duration::from_secs(5), rx_after)
        .await
        .expect("the records after the hello arrive")
        .expect("bytes");
    assert_eq!(got, after);

    let after_count = sample(&scrape(proxy.admin).await, "mesh_detect_total", &tls_label);
    assert_eq!(
        after_count.unwrap_or(0.0) - before.unwrap_or(0.0),
        1.0,
        "the connection was counted as detected TLS"
    );
}

#[tokio::test]
async fn loops_to_the_proxy_itself_are_refused() {
    // A configured target equal to the proxy's own listener is a config error; the runtime
    // check covers original destinations, so point a second listener at the first.
    let port_holder = closed_port();
    let mut cfg = config(port_holder);
    cfg.outbound.listen = Some(port_holder);
    cfg.outbound.target = Some(closed_port().into());
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
    let (_app, proxy) =
        app_and_proxy_with(|cfg| cfg.limits.max_connections = std::num::NonZeroUsize::new(1)).await;
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
    // The slot frees once the proxy has seen the tunnel close: retry, for a bounded time,
    // until a new connection is served.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (text, _) = raw(
            proxy.outbound,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        if response_status(&text) == Some(200) {
            break;
        }
        assert!(
            text.is_empty(),
            "refused connections are closed unanswered: {text}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tunnel's slot was not freed within 5 s of its close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn drain_waits_for_tunnels_then_closes_them_after_the_grace() {
    let (_app, proxy) =
        app_and_proxy_with(|cfg| cfg.shutdown.grace = Duration::from_millis(500)).await;
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
    assert_eq!(response_status(&text), Some(200), "{text}");
    let seen = app.seen().pop().expect("seen");
    assert!(
        !seen.headers.contains_key("upgrade"),
        "the upgrade was stripped: {:?}",
        seen.headers
    );
    assert!(!seen.headers.contains_key("http2-settings"));
}
