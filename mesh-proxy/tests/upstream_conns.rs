//! The life of upstream connections: pooled HTTP/1 connections the upstream closed while
//! idle, clients that leave mid-exchange, and HTTP/2 upstreams that go away or limit their
//! streams. These are the paths a production proxy lives on between requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// The live task count once the proxy's own long-lived tasks (accept loops, admin,
/// housekeeping) have started: what every finished exchange must return to.
async fn baseline_tasks() -> usize {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    alive_tasks()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Reads one request head (up to and including the blank line) from `s`; `None` on EOF.
async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

/// Counters a raw upstream keeps.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    requests: AtomicUsize,
    closed: AtomicUsize,
}

/// An HTTP/1.1 upstream that answers `answered` requests per connection with a keep-alive
/// response naming the connection, then closes that connection without a word: no
/// `Connection: close`, just a FIN. With `answered = 1` every pooled connection the proxy
/// keeps is stale by the time it is reused.
async fn closing_upstream(answered: usize) -> (SocketAddr, Arc<Counts>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let id = c.accepted.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                for _ in 0..answered {
                    if read_head(&mut s).await.is_none() {
                        break;
                    }
                    c.requests.fetch_add(1, Ordering::SeqCst);
                    let body = format!("conn {id}");
                    let res = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(res.as_bytes()).await.is_err() {
                        break;
                    }
                }
                // Anything sent after the last answer is read (and counted) but never
                // answered: the connection closes under it.
                if answered > 0
                    && let Ok(Some(_)) =
                        tokio::time::timeout(Duration::from_millis(1), read_head(&mut s)).await
                {
                    c.requests.fetch_add(1, Ordering::SeqCst);
                }
                drop(s);
                c.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_while_idle_is_replaced_without_an_error() {
    let (up, counts) = closing_upstream(1).await;
    let proxy = proxy(config(up)).await;
    let mut client = h1(proxy.outbound).await;
    let mut failures = Vec::new();
    for i in 0..100 {
        client.ready().await.expect("client ready");
        let res = client
            .send_request(get(proxy.outbound, "/", Version::HTTP_11))
            .await
            .expect("response");
        let status = res.status();
        let body = body_bytes(res.into_body()).await;
        if status != StatusCode::OK {
            failures.push((i, status, body));
        }
        // The upstream has closed the connection it answered on before the next request
        // starts: the proxy's pooled connection to it is stale.
        let closed = i + 1;
        eventually(
            Duration::from_secs(5),
            "upstream closed its connection",
            || counts.closed.load(Ordering::SeqCst) >= closed,
        )
        .await;
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(counts.requests.load(Ordering::SeqCst), 100, "none replayed");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 100);
}

#[tokio::test]
async fn a_request_written_to_a_connection_that_then_closes_is_not_replayed() {
    // Each upstream connection answers one request, then reads the next one and closes
    // without answering: the proxy wrote that request, so it must fail it, not send it
    // again (it may not be idempotent).
    let (up, counts) = closing_upstream(1).await;
    let proxy = proxy(config(up)).await;
    let mut client = h1(proxy.outbound).await;
    client.ready().await.expect("ready");
    let res = client
        .send_request(get(proxy.outbound, "/", Version::HTTP_11))
        .await
        .expect("first");
    assert_eq!(res.status(), StatusCode::OK);
    body_bytes(res.into_body()).await;
    // Send the second request while the upstream is still reading (before it closes).
    client.ready().await.expect("ready");
    let res = client
        .send_request(request(
            http::Method::POST,
            proxy.outbound,
            "/",
            Version::HTTP_11,
            full("not idempotent"),
        ))
        .await
        .expect("second");
    let status = res.status();
    let requests = counts.requests.load(Ordering::SeqCst);
    // Either the request reached the upstream, which closed without answering (then 502,
    // sent once), or the proxy saw the close before writing it (then it went out on a new
    // connection and was answered).
    match status {
        StatusCode::BAD_GATEWAY => {
            assert!(
                res.headers().contains_key("l5d-proxy-error"),
                "{:?}",
                res.headers()
            );
            assert_eq!(requests, 2, "the written request was not sent again");
        }
        StatusCode::OK => assert_eq!(requests, 2),
        other => panic!("unexpected status {other}"),
    }
}

/// An upstream that answers with a chunked response it streams until the connection
/// breaks; reports when its write fails (the proxy closed the connection).
async fn endless_upstream() -> (SocketAddr, Arc<Counts>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.accepted.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                c.requests.fetch_add(1, Ordering::SeqCst);
                let mut out: Vec<u8> =
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                loop {
                    out.extend_from_slice(b"400\r\n");
                    out.extend_from_slice(&[b'x'; 0x400]);
                    out.extend_from_slice(b"\r\n");
                    if s.write_all(&out).await.is_err() {
                        break;
                    }
                    out.clear();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                c.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts)
}

#[tokio::test]
async fn http1_client_gone_mid_response_closes_the_upstream_connection() {
    let (up, counts) = endless_upstream().await;
    let proxy = proxy(config(up)).await;
    let baseline = baseline_tasks().await;
    for round in 1..=2 {
        let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
        s.write_all(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 16 * 1024];
        let mut got = 0;
        while got < 8 * 1024 {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "response streamed");
            got += n;
        }
        drop(s);
        eventually(
            Duration::from_secs(5),
            "upstream connection closed by the proxy",
            || counts.closed.load(Ordering::SeqCst) == round,
        )
        .await;
        // Never returned to the pool: each round needed its own upstream connection.
        assert_eq!(counts.accepted.load(Ordering::SeqCst), round);
    }
    eventually(Duration::from_secs(5), "tasks back to baseline", || {
        alive_tasks() == baseline
    })
    .await;
}

#[tokio::test]
async fn http1_client_gone_mid_upload_closes_the_upstream_connection() {
    // The upstream reads the head, then the body until the connection ends.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = l.local_addr().expect("addr");
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let mut total = 0usize;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
                let _ = tx.send(total);
            });
        }
    });
    let proxy = proxy(config(up)).await;
    let baseline = baseline_tasks().await;
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n")
        .await
        .expect("head");
    s.write_all(&vec![b'y'; 64 * 1024]).await.expect("part");
    drop(s);
    let seen = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("upstream saw its connection end")
        .expect("count");
    assert!(
        seen <= 64 * 1024,
        "upstream got {seen} bytes, no more than sent"
    );
    eventually(Duration::from_secs(5), "tasks back to baseline", || {
        alive_tasks() == baseline
    })
    .await;
}

/// What an HTTP/2 upstream heard about a stream after answering its head.
#[derive(Debug, PartialEq)]
enum StreamEnd {
    Reset(h2::Reason),
    RequestBodyReset(h2::Reason),
}

/// An HTTP/2 upstream (the `h2` crate, so stream resets are visible) that answers each
/// request's head, then streams data until the stream is reset, reporting the reason.
/// Requests with `x-hold` are not answered: it waits for their reset instead.
async fn h2_streaming_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<StreamEnd>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(s).await.expect("h2 handshake");
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if req.headers().contains_key("x-hold") {
                            let mut body = req.into_body();
                            let end = match std::future::poll_fn(|cx| body.poll_data(cx)).await {
                                Some(Err(e)) => StreamEnd::RequestBodyReset(
                                    e.reason().unwrap_or(h2::Reason::NO_ERROR),
                                ),
                                _ => std::future::poll_fn(|cx| respond.poll_reset(cx))
                                    .await
                                    .map(StreamEnd::Reset)
                                    .unwrap_or(StreamEnd::Reset(h2::Reason::NO_ERROR)),
                            };
                            let _ = tx.send(end);
                            return;
                        }
                        let mut send = respond
                            .send_response(Response::new(()), false)
                            .expect("send head");
                        loop {
                            send.reserve_capacity(1024);
                            match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                                Some(Ok(_)) => {}
                                _ => break,
                            }
                            if send
                                .send_data(Bytes::from(vec![b'z'; 1024]), false)
                                .is_err()
                            {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        let reason = std::future::poll_fn(|cx| send.poll_reset(cx))
                            .await
                            .unwrap_or(h2::Reason::NO_ERROR);
                        let _ = tx.send(StreamEnd::Reset(reason));
                    });
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn http2_client_gone_mid_response_cancels_the_upstream_stream() {
    let (up, mut ends) = h2_streaming_upstream().await;
    let proxy = proxy(config(up)).await;
    let mut client = h2(proxy.outbound).await;
    // A first stream opens the shared upstream connection; the baseline includes it.
    let res = client
        .send_request(get(proxy.outbound, "/", Version::HTTP_2))
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    http_body_util::BodyExt::frame(&mut body)
        .await
        .expect("a frame")
        .expect("data");
    drop(body);
    let end = tokio::time::timeout(Duration::from_secs(5), ends.recv())
        .await
        .expect("upstream stream ended")
        .expect("end");
    assert_eq!(end, StreamEnd::Reset(h2::Reason::CANCEL));
    let baseline = baseline_tasks().await;
    for _ in 0..3 {
        let res = client
            .send_request(get(proxy.outbound, "/", Version::HTTP_2))
            .await
            .expect("response");
        let mut body = res.into_body();
        http_body_util::BodyExt::frame(&mut body)
            .await
            .expect("a frame")
            .expect("data");
        drop(body);
        let end = tokio::time::timeout(Duration::from_secs(5), ends.recv())
            .await
            .expect("upstream stream ended")
            .expect("end");
        assert_eq!(end, StreamEnd::Reset(h2::Reason::CANCEL));
    }
    eventually(Duration::from_secs(5), "tasks back to baseline", || {
        alive_tasks() == baseline
    })
    .await;
}

#[tokio::test]
async fn http2_client_gone_mid_request_cancels_the_upstream_stream() {
    let (up, mut ends) = h2_streaming_upstream().await;
    let proxy = proxy(config(up)).await;
    let mut client = h2(proxy.outbound).await;
    let baseline = baseline_tasks().await;
    let (body_tx, body) = ChannelBody::new();
    let mut req = request(
        http::Method::POST,
        proxy.outbound,
        "/upload",
        Version::HTTP_2,
        http_body_util::BodyExt::boxed_unsync(body),
    );
    req.headers_mut()
        .insert("x-hold", http::HeaderValue::from_static("1"));
    let pending = client.send_request(req);
    body_tx
        .send(http_body::Frame::data(Bytes::from_static(
            b"part of a body",
        )))
        .await
        .expect("send part");
    // The client gives up before any response: its stream is reset, and so must be the
    // upstream's.
    let waited = tokio::time::timeout(Duration::from_millis(50), pending).await;
    assert!(waited.is_err(), "no response to a held request");
    drop(body_tx);
    let end = tokio::time::timeout(Duration::from_secs(5), ends.recv())
        .await
        .expect("upstream stream ended")
        .expect("end");
    assert!(
        matches!(
            end,
            StreamEnd::Reset(h2::Reason::CANCEL) | StreamEnd::RequestBodyReset(h2::Reason::CANCEL)
        ),
        "{end:?}"
    );
    drop(client);
    eventually(Duration::from_secs(5), "tasks back to baseline", || {
        alive_tasks() <= baseline
    })
    .await;
}

/// Commands for a controllable HTTP/2 upstream connection.
enum Ctl {
    /// Send GOAWAY (graceful: last-stream-id covers streams already open), then a PING, and
    /// report when the PING is acknowledged — by then the proxy has read the GOAWAY.
    GoAway(oneshot::Sender<()>),
}

/// An HTTP/2 upstream whose connections can be told to go away. Requests wait for `release`
/// before they are answered (with the number of the connection they came on); `streams`
/// counts requests received, `max_open` the most open at once.
struct H2Upstream {
    addr: SocketAddr,
    conns: Arc<std::sync::Mutex<Vec<mpsc::UnboundedSender<Ctl>>>>,
    release: tokio::sync::watch::Sender<bool>,
    streams: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    max_open: Arc<AtomicUsize>,
}

impl H2Upstream {
    async fn start(max_concurrent_streams: Option<u32>, refuse_first: bool) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let conns: Arc<std::sync::Mutex<Vec<mpsc::UnboundedSender<Ctl>>>> = Arc::default();
        let (release, release_rx) = tokio::sync::watch::channel(false);
        let streams = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let max_open = Arc::new(AtomicUsize::new(0));
        let (c, st, op, mx) = (
            conns.clone(),
            streams.clone(),
            open.clone(),
            max_open.clone(),
        );
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (ctl_tx, mut ctl) = mpsc::unbounded_channel();
                let conn_id = {
                    let mut c = c.lock().unwrap();
                    c.push(ctl_tx);
                    c.len()
                };
                let (st, op, mx, release_rx) =
                    (st.clone(), op.clone(), mx.clone(), release_rx.clone());
                tokio::spawn(async move {
                    let mut b = h2::server::Builder::new();
                    if let Some(n) = max_concurrent_streams {
                        b.max_concurrent_streams(n);
                    }
                    let mut conn = b.handshake(s).await.expect("h2 handshake");
                    loop {
                        tokio::select! {
                            next = conn.accept() => {
                                let Some(Ok((_req, mut respond))) = next else { break };
                                let n = st.fetch_add(1, Ordering::SeqCst);
                                if refuse_first && n == 0 {
                                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                                    continue;
                                }
                                let now = op.fetch_add(1, Ordering::SeqCst) + 1;
                                mx.fetch_max(now, Ordering::SeqCst);
                                let mut release_rx = release_rx.clone();
                                let op = op.clone();
                                tokio::spawn(async move {
                                    let _ = release_rx.wait_for(|r| *r).await;
                                    op.fetch_sub(1, Ordering::SeqCst);
                                    let mut send = respond
                                        .send_response(Response::new(()), false)
                                        .expect("head");
                                    let _ = send.send_data(Bytes::from(format!("conn {conn_id}")), true);
                                });
                            }
                            Some(cmd) = ctl.recv() => match cmd {
                                Ctl::GoAway(done) => {
                                    conn.graceful_shutdown();
                                    let mut ping = conn.ping_pong().expect("ping_pong");
                                    tokio::spawn(async move {
                                        let _ = ping.ping(h2::Ping::opaque()).await;
                                        let _ = done.send(());
                                    });
                                }
                            },
                        }
                    }
                });
            }
        });
        Self {
            addr,
            conns,
            release,
            streams,
            open,
            max_open,
        }
    }

    async fn go_away(&self, conn: usize) {
        let (tx, rx) = oneshot::channel();
        let ctl = self.conns.lock().unwrap()[conn].clone();
        ctl.send(Ctl::GoAway(tx)).expect("connection alive");
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("PING after GOAWAY acknowledged")
            .expect("pinged");
    }

    fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }
}

async fn text_of(res: Response<hyper::body::Incoming>) -> (StatusCode, String) {
    let status = res.status();
    let body = body_bytes(res.into_body()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn upstream_http2_goaway_mid_flight_lets_open_streams_finish_and_moves_new_ones() {
    let up = H2Upstream::start(None, false).await;
    let proxy = proxy(config(up.addr)).await;
    let client = h2(proxy.outbound).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = client.clone();
        let req = get(proxy.outbound, "/", Version::HTTP_2);
        held.push(tokio::spawn(async move { c.send_request(req).await }));
    }
    eventually(
        Duration::from_secs(5),
        "three streams open upstream",
        || up.open.load(Ordering::SeqCst) == 3,
    )
    .await;
    // The upstream goes away while three streams are in flight on its connection.
    up.go_away(0).await;
    // A new request after the GOAWAY goes out on a new connection ...
    let mut c = client.clone();
    let fresh = tokio::spawn(async move {
        c.send_request(get(proxy.outbound, "/", Version::HTTP_2))
            .await
    });
    eventually(
        Duration::from_secs(5),
        "a second upstream connection",
        || up.connections() == 2 && up.open.load(Ordering::SeqCst) == 4,
    )
    .await;
    // ... and the streams below the last-stream-id complete.
    up.release.send(true).expect("release");
    for h in held {
        let (status, body) = text_of(h.await.expect("join").expect("response")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "conn 1"));
    }
    let (status, body) = text_of(fresh.await.expect("join").expect("response")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "conn 2"));
    assert_eq!(up.streams.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn the_upstreams_own_stream_limit_queues_streams_instead_of_failing_them() {
    let up = H2Upstream::start(Some(4), false).await;
    let proxy = proxy(config(up.addr)).await;
    let client = h2(proxy.outbound).await;
    let mut all = Vec::new();
    for _ in 0..20 {
        let mut c = client.clone();
        let req = get(proxy.outbound, "/", Version::HTTP_2);
        all.push(tokio::spawn(async move { c.send_request(req).await }));
    }
    eventually(
        Duration::from_secs(5),
        "the upstream's limit reached",
        || up.open.load(Ordering::SeqCst) == 4,
    )
    .await;
    up.release.send(true).expect("release");
    for h in all {
        let (status, _) = text_of(h.await.expect("join").expect("response")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(up.streams.load(Ordering::SeqCst), 20);
    assert_eq!(
        up.max_open.load(Ordering::SeqCst),
        4,
        "never above the limit"
    );
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn a_stream_the_upstream_refuses_is_answered_clearly() {
    let up = H2Upstream::start(None, true).await;
    up.release.send(true).expect("release");
    let proxy = proxy(config(up.addr)).await;
    let mut client = h2(proxy.outbound).await;
    let res = client
        .send_request(get(proxy.outbound, "/", Version::HTTP_2))
        .await
        .expect("response");
    let error = res
        .headers()
        .get("l5d-proxy-error")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let (status, body) = text_of(res).await;
    // REFUSED_STREAM guarantees the upstream did not process the request, so re-sending it
    // is safe; if it is not re-sent, the client must hear why.
    match status {
        StatusCode::OK => {
            assert_eq!(body, "conn 1");
            assert_eq!(up.streams.load(Ordering::SeqCst), 2, "sent again once");
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            let error = error.expect("l5d-proxy-error");
            assert!(error.to_lowercase().contains("refused"), "{error}");
        }
        other => panic!("unexpected {other}: {body}"),
    }
    // The connection stays usable.
    let (status, _) = text_of(
        client
            .send_request(get(proxy.outbound, "/", Version::HTTP_2))
            .await
            .expect("response"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
