//! Long and many streams through the proxy: responses that stream for longer than the
//! response timeout, transfers that last longer than the idle timeout, and hundreds of
//! concurrent HTTP/2 streams.
//!
//! The response timeout bounds the wait for a response *head*; the idle timeout closes a
//! connection with *nothing in flight*. Neither may cut an exchange whose bytes are still
//! flowing, and the tests below show that with real durations a few times longer than the
//! configured limits (a few hundred milliseconds), plus a control showing the limit does
//! fire when nothing flows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_test::grpc::{GreeterClient, HelloReply};
use tokio::net::TcpListener;
use tokio::time::{Instant, timeout};

/// Long enough for any local exchange on a busy machine, short enough to fail fast.
const WAIT: Duration = Duration::from_secs(10);

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

/// An HTTP/1 and HTTP/2 upstream on `127.0.0.1:0` answering every request with `handler`.
async fn upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A response whose body is `count` frames made by `frame(i)`, one every `every`, the head
/// sent at once. `trailers` end the body when given.
fn paced_response(
    count: usize,
    every: Duration,
    content_type: &'static str,
    frame: impl Fn(usize) -> Bytes + Send + 'static,
    trailers: Option<http::HeaderMap>,
) -> Response<TestBody> {
    let (tx, body) = ChannelBody::new();
    tokio::spawn(async move {
        for i in 0..count {
            tokio::time::sleep(every).await;
            if tx.send(Frame::data(frame(i))).await.is_err() {
                return;
            }
        }
        if let Some(t) = trailers {
            let _ = tx.send(Frame::trailers(t)).await;
        }
    });
    Response::builder()
        .header(http::header::CONTENT_TYPE, content_type)
        .body(body.boxed_unsync())
        .expect("response")
}

fn sse_event(i: usize) -> Bytes {
    Bytes::from(format!("id: {i}\ndata: event {i}\n\n"))
}

/// Reads a response body frame by frame; returns the data and when each frame arrived,
/// relative to `start`. Panics if the body ends with an error.
async fn read_frames(mut body: Incoming, start: Instant) -> (Vec<u8>, Vec<Duration>) {
    let mut data = Vec::new();
    let mut at = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the stream ends cleanly, not with an error");
        if let Ok(d) = frame.into_data() {
            at.push(start.elapsed());
            data.extend_from_slice(&d);
        }
    }
    (data, at)
}

#[tokio::test]
async fn sse_outlives_the_response_timeout_over_http1_and_http2() {
    const EVENTS: usize = 10;
    const EVERY: Duration = Duration::from_millis(100);
    let up = upstream(|_req| async {
        paced_response(EVENTS, EVERY, "text/event-stream", sse_event, None)
    })
    .await;
    let mut cfg = config(up);
    cfg.limits.response_timeout = Duration::from_millis(300);
    let proxy = proxy(cfg).await;

    let one = |version: Version| async move {
        let start = Instant::now();
        let res = if version == Version::HTTP_2 {
            h2(proxy.outbound)
                .await
                .send_request(get(proxy.outbound, "/events", version))
                .await
        } else {
            h1(proxy.outbound)
                .await
                .send_request(get(proxy.outbound, "/events", version))
                .await
        }
        .expect("response head");
        assert_eq!(res.status(), StatusCode::OK, "{version:?}");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        let (data, at) = read_frames(res.into_body(), start).await;
        (version, data, at, start.elapsed())
    };
    let (a, b) = timeout(
        WAIT,
        futures_util::future::join(one(Version::HTTP_11), one(Version::HTTP_2)),
    )
    .await
    .expect("both streams end");
    let want: Vec<u8> = (0..EVENTS).flat_map(|i| sse_event(i).to_vec()).collect();
    for (version, data, at, total) in [a, b] {
        assert_eq!(
            String::from_utf8_lossy(&data),
            String::from_utf8_lossy(&want),
            "{version:?}: every event, in order"
        );
        assert!(
            total >= EVERY * EVENTS as u32 - Duration::from_millis(50),
            "{version:?}: the stream lasted {total:?}, more than three response timeouts"
        );
        // Events are forwarded as they come, not buffered until the end.
        assert!(
            at[0] < Duration::from_millis(600),
            "{version:?}: first event after {:?}",
            at[0]
        );
    }
}

/// The gRPC length-prefixed frame of one message.
fn grpc_frame(msg: &impl prost::Message) -> Bytes {
    let payload = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&payload);
    Bytes::from(out)
}

#[tokio::test]
async fn grpc_server_stream_outlives_the_response_timeout() {
    const REPLIES: usize = 10;
    const EVERY: Duration = Duration::from_millis(100);
    // A Greeter whose `SayHelloStream` sends one reply every 100 ms, head at once.
    let up = upstream(|req| async move {
        assert_eq!(req.uri().path(), mesh_test::grpc::SAY_HELLO_STREAM);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        paced_response(
            REPLIES,
            EVERY,
            "application/grpc",
            |i| {
                grpc_frame(&HelloReply {
                    message: format!("tick {i}"),
                })
            },
            Some(trailers),
        )
    })
    .await;
    let mut cfg = config(up);
    cfg.limits.response_timeout = Duration::from_millis(300);
    let proxy = proxy(cfg).await;

    let start = Instant::now();
    let mut client = GreeterClient::connect(proxy.outbound)
        .await
        .expect("connect");
    let replies = timeout(WAIT, client.say_hello_stream("mesh", REPLIES as u32))
        .await
        .expect("the stream ends")
        .expect("status OK at the end of the stream");
    let messages: Vec<String> = replies.into_iter().map(|r| r.message).collect();
    let want: Vec<String> = (0..REPLIES).map(|i| format!("tick {i}")).collect();
    assert_eq!(messages, want);
    assert!(
        start.elapsed() >= EVERY * REPLIES as u32 - Duration::from_millis(50),
        "the stream lasted {:?}",
        start.elapsed()
    );
}

/// An upstream for transfers: `POST /upload` reads the whole body and answers with its
/// length; `GET /download` sends 20 chunks of 1 KiB, one every 50 ms.
async fn transfer_upstream() -> SocketAddr {
    upstream(|req| async move {
        match req.uri().path() {
            "/upload" => {
                // A broken upload (the proxy gave up on it) is answered, not a panic here.
                match req.into_body().collect().await {
                    Ok(body) => Response::new(full(body.to_bytes().len().to_string())),
                    Err(e) => Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .body(full(e.to_string()))
                        .expect("response"),
                }
            }
            "/upload-then-hang" => {
                let _ = req.into_body().collect().await;
                std::future::pending().await
            }
            "/download" => paced_response(
                20,
                Duration::from_millis(50),
                "application/octet-stream",
                |i| Bytes::from(vec![b'a' + (i % 26) as u8; 1024]),
                None,
            ),
            _ => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(empty())
                .expect("response"),
        }
    })
    .await
}

/// Uploads 20 chunks of 1 KiB, one every 50 ms (about 1 s), and returns the answer.
async fn slow_upload(addr: SocketAddr, version: Version) -> (StatusCode, Bytes) {
    let (tx, body) = ChannelBody::new();
    let req = request(Method::POST, addr, "/upload", version, body.boxed_unsync());
    let feed = async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(Frame::data(Bytes::from(vec![b'u'; 1024])))
                .await
                .expect("the proxy keeps reading the upload");
        }
    };
    let send = async {
        let res = if version == Version::HTTP_2 {
            h2(addr).await.send_request(req).await
        } else {
            h1(addr).await.send_request(req).await
        }
        .expect("response");
        let status = res.status();
        (status, body_bytes(res.into_body()).await)
    };
    let ((), answer) = futures_util::future::join(feed, send).await;
    answer
}

#[tokio::test]
async fn transfers_longer_than_the_idle_timeout_are_not_cut() {
    let up = transfer_upstream().await;
    let mut cfg = config(up);
    cfg.limits.idle_timeout = Duration::from_millis(300);
    let proxy = proxy(cfg).await;
    let addr = proxy.outbound;

    let download = |version: Version| async move {
        let start = Instant::now();
        let res = if version == Version::HTTP_2 {
            h2(addr)
                .await
                .send_request(get(addr, "/download", version))
                .await
        } else {
            h1(addr)
                .await
                .send_request(get(addr, "/download", version))
                .await
        }
        .expect("response");
        assert_eq!(res.status(), StatusCode::OK);
        let (data, _) = read_frames(res.into_body(), start).await;
        (data, start.elapsed())
    };
    let start = Instant::now();
    let (up1, up2, down1, down2) = timeout(WAIT, async {
        tokio::join!(
            slow_upload(addr, Version::HTTP_11),
            slow_upload(addr, Version::HTTP_2),
            download(Version::HTTP_11),
            download(Version::HTTP_2),
        )
    })
    .await
    .expect("all transfers end");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "the transfers lasted three idle timeouts"
    );
    for (version, (status, body)) in [("HTTP/1.1", up1), ("HTTP/2", up2)] {
        assert_eq!(status, StatusCode::OK, "{version} upload");
        assert_eq!(
            body, "20480",
            "{version}: the upstream read the whole upload"
        );
    }
    let want: Vec<u8> = (0..20)
        .flat_map(|i| vec![b'a' + (i % 26) as u8; 1024])
        .collect();
    for (version, (data, took)) in [("HTTP/1.1", down1), ("HTTP/2", down2)] {
        assert!(
            data == want,
            "{version}: the whole download ({} bytes)",
            data.len()
        );
        assert!(took >= Duration::from_millis(900), "{version}: {took:?}");
    }
}

#[tokio::test]
async fn truly_idle_connections_are_closed_after_the_idle_timeout() {
    // The control for the test above: the same limit does close a connection with nothing
    // in flight, over HTTP/1.1 and HTTP/2.
    let up = transfer_upstream().await;
    let mut cfg = config(up);
    cfg.limits.idle_timeout = Duration::from_millis(300);
    let proxy = proxy(cfg).await;
    let addr = proxy.outbound;

    let mut c1 = h1(addr).await;
    let mut c2 = h2(addr).await;
    let start = Instant::now();
    let r1 = c1
        .send_request(get(addr, "/nothing", Version::HTTP_11))
        .await
        .expect("h1 response");
    let r2 = c2
        .send_request(get(addr, "/nothing", Version::HTTP_2))
        .await
        .expect("h2 response");
    assert_eq!(r1.status(), StatusCode::NOT_FOUND);
    assert_eq!(r2.status(), StatusCode::NOT_FOUND);
    let _ = body_bytes(r1.into_body()).await;
    let _ = body_bytes(r2.into_body()).await;
    let deadline = Instant::now() + WAIT;
    while !(c1.is_closed() && c2.is_closed()) {
        assert!(Instant::now() < deadline, "idle connections left open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the idle timeout"
    );
}

#[tokio::test]
async fn a_slow_upload_is_not_cut_by_the_response_timeout() {
    // The response timeout is the upstream's time to answer; an upload that takes longer
    // than it (the upstream answering once the body is in, as most do) is not the
    // upstream being slow.
    let up = transfer_upstream().await;
    let mut cfg = config(up);
    cfg.limits.response_timeout = Duration::from_millis(300);
    let proxy = proxy(cfg).await;
    let (a, b) = timeout(
        WAIT,
        futures_util::future::join(
            slow_upload(proxy.outbound, Version::HTTP_11),
            slow_upload(proxy.outbound, Version::HTTP_2),
        ),
    )
    .await
    .expect("uploads end");
    for (version, (status, body)) in [("HTTP/1.1", a), ("HTTP/2", b)] {
        assert_eq!(status, StatusCode::OK, "{version}: {body:?}");
        assert_eq!(body, "20480", "{version}");
    }
}

#[tokio::test]
async fn the_response_timeout_starts_when_the_upload_ends() {
    // The other half of the test above: once the upstream has the whole request, it still
    // gets only the response timeout to answer.
    const TIMEOUT: Duration = Duration::from_millis(300);
    let up = transfer_upstream().await;
    let mut cfg = config(up);
    cfg.limits.response_timeout = TIMEOUT;
    let proxy = proxy(cfg).await;
    let addr = proxy.outbound;
    let one = |version: Version| async move {
        let (tx, body) = ChannelBody::new();
        let req = request(
            Method::POST,
            addr,
            "/upload-then-hang",
            version,
            body.boxed_unsync(),
        );
        let feed = async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tx.send(Frame::data(Bytes::from_static(b"chunk")))
                    .await
                    .expect("upload");
            }
            Instant::now()
        };
        let send = async {
            let res = if version == Version::HTTP_2 {
                h2(addr).await.send_request(req).await
            } else {
                h1(addr).await.send_request(req).await
            }
            .expect("response");
            (
                res.status(),
                res.headers().contains_key("l5d-proxy-error"),
                Instant::now(),
            )
        };
        let (body_done, (status, proxy_error, answered)) = tokio::join!(feed, send);
        (version, status, proxy_error, answered - body_done)
    };
    let (a, b) = timeout(
        WAIT,
        futures_util::future::join(one(Version::HTTP_11), one(Version::HTTP_2)),
    )
    .await
    .expect("both answered");
    for (version, status, proxy_error, after_body) in [a, b] {
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{version:?}");
        assert!(proxy_error, "{version:?}: the proxy's own 504");
        assert!(
            after_body >= TIMEOUT - Duration::from_millis(20)
                && after_body < TIMEOUT + Duration::from_secs(2),
            "{version:?}: 504 came {after_body:?} after the body ended"
        );
    }
}

#[tokio::test]
async fn a_stalled_upload_still_times_out() {
    // The response timeout waits for the end of the body, but not forever: an upload that
    // stops making progress (the client pauses, or the upstream stopped reading and does
    // not answer) gets a 504 one response timeout after its last chunk.
    const TIMEOUT: Duration = Duration::from_millis(300);
    let up = transfer_upstream().await;
    let mut cfg = config(up);
    cfg.limits.response_timeout = TIMEOUT;
    let proxy = proxy(cfg).await;
    let addr = proxy.outbound;
    let one = |version: Version| async move {
        let (tx, body) = ChannelBody::new();
        let req = request(
            Method::POST,
            addr,
            "/upload-then-hang",
            version,
            body.boxed_unsync(),
        );
        let send = async {
            let res = if version == Version::HTTP_2 {
                h2(addr).await.send_request(req).await
            } else {
                h1(addr).await.send_request(req).await
            }
            .expect("response");
            (res.status(), Instant::now())
        };
        let feed = async {
            // Progress for a while (longer than the timeout), then silence.
            for _ in 0..5 {
                tx.send(Frame::data(Bytes::from_static(b"chunk")))
                    .await
                    .expect("upload");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Instant::now()
        };
        let (stalled_at, (status, answered)) = tokio::join!(feed, send);
        drop(tx);
        (
            version,
            status,
            answered.saturating_duration_since(stalled_at),
        )
    };
    let (a, b) = timeout(
        WAIT,
        futures_util::future::join(one(Version::HTTP_11), one(Version::HTTP_2)),
    )
    .await
    .expect("both answered");
    for (version, status, after_stall) in [a, b] {
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{version:?}");
        assert!(
            after_stall < TIMEOUT + Duration::from_secs(2),
            "{version:?}: 504 came {after_stall:?} after the upload stalled"
        );
    }
}

#[tokio::test]
async fn five_hundred_streams_over_five_connections_all_complete() {
    const CONNS: usize = 5;
    const PER_CONN: usize = 100;
    let app = mesh_test::app::App::spawn().await;
    let proxy = proxy(config(app.addr())).await;
    let addr = proxy.outbound;
    let mut clients = Vec::new();
    for _ in 0..CONNS {
        clients.push(h2(addr).await);
    }
    let body_of = |c: usize, i: usize| {
        // Distinct and of varied length (up to ~6 KiB), so a mixed-up body shows.
        format!("conn {c} stream {i};").repeat(1 + (c * PER_CONN + i) % 300)
    };
    let calls = clients.iter().enumerate().flat_map(|(c, tx)| {
        (0..PER_CONN).map(move |i| {
            let mut tx = tx.clone();
            let sent = body_of(c, i);
            let req = request(
                Method::POST,
                addr,
                "/echo",
                Version::HTTP_2,
                full(sent.clone()),
            );
            async move {
                let res = tx.send_request(req).await.expect("stream answered");
                assert_eq!(res.status(), StatusCode::OK);
                let got = body_bytes(res.into_body()).await;
                assert!(got == sent.as_bytes(), "conn {c} stream {i}: wrong body");
            }
        })
    });
    let done = timeout(WAIT, futures_util::future::join_all(calls))
        .await
        .expect("500 streams within 10 s");
    assert_eq!(done.len(), CONNS * PER_CONN);
}
