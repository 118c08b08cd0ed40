//! The safety limits of DESIGN.md §5, each exercised at its boundary through the outbound
//! listener of an in-process proxy in front of the hello app.
//!
//! HTTP/1 cases use raw TCP so the test controls every byte the proxy reads; a status the
//! proxy produced itself is recognised by its `l5d-proxy-error` header, and `App::seen`
//! shows whether a rejected request reached the application.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use bytesize::ByteSize;
use http::{StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// The default limit on an HTTP/1 request line plus headers.
const HEAD_LIMIT: usize = 60 * 1024;

/// Long enough for any local exchange on a busy machine, short enough to fail fast.
const WAIT: Duration = Duration::from_secs(5);

// ---- helpers ----------------------------------------------------------------------------

/// A GET head of exactly `len` bytes (request line, headers and the blank line), padded
/// with one filler header. `Connection: close` makes the proxy close once it has answered.
fn head_of_len(len: usize) -> Vec<u8> {
    let start = b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\nX-Fill: ";
    let end = b"\r\n\r\n";
    let mut head = start.to_vec();
    head.extend(std::iter::repeat_n(b'a', len - start.len() - end.len()));
    head.extend_from_slice(end);
    assert_eq!(head.len(), len);
    head
}

/// A GET head with exactly `count` header fields, `Host` and `Connection` included.
fn head_with_headers(count: usize) -> Vec<u8> {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n");
    for i in 0..count - 2 {
        head.push_str(&format!("X-Header-{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The status of the first complete response in `text`.
fn status(text: &str) -> Option<u16> {
    common::response_status(text)
}

/// The value of header `name` in the first complete response in `text`.
fn header(text: &str, name: &str) -> Option<String> {
    common::parse_response(text.as_bytes())?
        .header(name)
        .map(str::to_owned)
}

/// Reads from `s` until the text read contains `needle`, the peer closes, or `wait` passes.
async fn read_until_contains(s: &mut TcpStream, needle: &str, wait: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + wait;
    while !String::from_utf8_lossy(&out).contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `GET /` on an open keep-alive connection and says whether the app's answer came
/// back.
async fn hello_on(s: &mut TcpStream) -> bool {
    if s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let response = read_until_contains(s, "hello from mesh\n", WAIT).await;
    status(&response) == Some(200) && response.contains("hello from mesh\n")
}

// ---- request head size and header count -------------------------------------------------

#[tokio::test]
async fn request_head_just_under_60_kib_passes_and_just_over_gets_431() {
    let (app, proxy) = common::app_and_proxy().await;

    let (under, _) = common::raw(proxy.outbound, &head_of_len(HEAD_LIMIT - 64), WAIT).await;
    assert_eq!(
        status(&under),
        Some(200),
        "{}-byte head: {under:.200}",
        HEAD_LIMIT - 64
    );
    assert!(under.contains("hello from mesh"), "{under:.300}");
    assert_eq!(app.seen().len(), 1);

    let (over, closed) = common::raw(proxy.outbound, &head_of_len(HEAD_LIMIT + 64), WAIT).await;
    assert_eq!(
        status(&over),
        Some(431),
        "{}-byte head: {over:.200}",
        HEAD_LIMIT + 64
    );
    assert!(closed, "connection left open after 431");
    assert_eq!(app.seen().len(), 1, "an oversized head reached the app");
}

#[tokio::test]
async fn configured_smaller_head_limit_is_honoured() {
    let (app, proxy) =
        common::app_and_proxy_with(|cfg| cfg.limits.max_request_header_bytes = ByteSize::kib(16))
            .await;
    let limit = 16 * 1024;

    let (under, _) = common::raw(proxy.outbound, &head_of_len(limit - 64), WAIT).await;
    assert_eq!(status(&under), Some(200), "{under:.200}");

    // Well within the default limit, but over the configured one.
    let (over, closed) = common::raw(proxy.outbound, &head_of_len(limit + 64), WAIT).await;
    assert_eq!(status(&over), Some(431), "{over:.200}");
    assert!(closed);
    assert_eq!(app.seen().len(), 1);
}

#[tokio::test]
async fn header_count_limit_counts_host_and_rejects_with_431() {
    let (app, proxy) = common::app_and_proxy().await;

    let (ok, _) = common::raw(proxy.outbound, &head_with_headers(95), WAIT).await;
    assert_eq!(status(&ok), Some(200), "95 headers: {ok:.200}");
    assert_eq!(app.seen().len(), 1);

    let (many, closed) = common::raw(proxy.outbound, &head_with_headers(150), WAIT).await;
    assert_eq!(status(&many), Some(431), "150 headers: {many:.200}");
    assert!(closed);
    assert_eq!(
        app.seen().len(),
        1,
        "a request with too many headers reached the app"
    );
}

#[tokio::test]
async fn header_count_limit_is_exactly_100() {
    let (app, proxy) = common::app_and_proxy().await;

    let (ok, _) = common::raw(proxy.outbound, &head_with_headers(100), WAIT).await;
    assert_eq!(status(&ok), Some(200), "100 headers: {ok:.200}");

    let (many, _) = common::raw(proxy.outbound, &head_with_headers(101), WAIT).await;
    assert_eq!(status(&many), Some(431), "101 headers: {many:.200}");
    assert_eq!(app.seen().len(), 1);
}

#[tokio::test]
async fn configured_header_count_limit_is_honoured() {
    let (app, proxy) = common::app_and_proxy_with(|cfg| {
        cfg.limits.max_request_headers = NonZeroUsize::new(20).unwrap()
    })
    .await;

    let (ok, _) = common::raw(proxy.outbound, &head_with_headers(20), WAIT).await;
    assert_eq!(status(&ok), Some(200), "20 headers: {ok:.200}");

    let (many, _) = common::raw(proxy.outbound, &head_with_headers(21), WAIT).await;
    assert_eq!(status(&many), Some(431), "21 headers: {many:.200}");
    assert_eq!(app.seen().len(), 1);
}

// ---- header read and idle timeouts -------------------------------------------------------

#[tokio::test]
async fn slow_header_sender_is_disconnected_after_the_header_read_timeout() {
    let (app, proxy) = common::app_and_proxy_with(|cfg| {
        cfg.limits.header_read_timeout = Duration::from_millis(500)
    })
    .await;

    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let start = Instant::now();
    let (text, closed) = common::read_until_close(&mut s, Duration::from_secs(3)).await;
    let elapsed = start.elapsed();

    assert!(closed, "an incomplete head was still open after 3 s");
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed after {elapsed:?}, before the header timeout"
    );
    assert!(status(&text) != Some(200), "{text}");
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn idle_keep_alive_connection_is_not_closed_by_the_header_timeout() {
    let (app, proxy) = common::app_and_proxy_with(|cfg| {
        cfg.limits.header_read_timeout = Duration::from_millis(500)
    })
    .await;

    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    assert!(hello_on(&mut s).await, "first request failed");

    // Four header timeouts of keep-alive idleness: no request head is being read.
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert!(
        hello_on(&mut s).await,
        "the keep-alive connection was closed while idle"
    );
    assert_eq!(app.seen().len(), 2);
}

#[tokio::test]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let (_app, proxy) =
        common::app_and_proxy_with(|cfg| cfg.limits.idle_timeout = Duration::from_secs(1)).await;

    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    assert!(hello_on(&mut s).await);
    let start = Instant::now();
    let (text, closed) = common::read_until_close(&mut s, Duration::from_secs(3)).await;
    let elapsed = start.elapsed();

    assert!(closed, "idle connection still open after 3 s");
    assert!(
        elapsed >= Duration::from_millis(800),
        "closed after {elapsed:?}, before the idle timeout"
    );
    assert!(
        text.is_empty(),
        "unexpected bytes on an idle connection: {text}"
    );
}

// ---- HTTP/1 framing -----------------------------------------------------------------------

/// A request the proxy must answer with 400 and a closed connection, without forwarding it.
async fn assert_rejected_unforwarded(request: &[u8], want_proxy_error: bool) {
    let (app, proxy) = common::app_and_proxy().await;
    let (response, closed) = common::raw(proxy.outbound, request, WAIT).await;
    let shown = String::from_utf8_lossy(request);
    assert_eq!(
        status(&response),
        Some(400),
        "request {shown:?} answered {response:?}"
    );
    assert!(closed, "connection left open after rejecting {shown:?}");
    if want_proxy_error {
        assert!(
            header(&response, "l5d-proxy-error").is_some(),
            "no l5d-proxy-error in {response:?}"
        );
    }
    let seen = app.seen();
    assert!(seen.is_empty(), "{shown:?} reached the app: {seen:?}");
}

#[tokio::test]
async fn content_length_then_transfer_encoding_is_rejected() {
    // Behind it, a smuggled request that a CL-honouring peer would see as a second request.
    assert_rejected_unforwarded(
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n",
        true,
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_then_content_length_is_rejected() {
    assert_rejected_unforwarded(
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n",
        true,
    )
    .await;
}

#[tokio::test]
async fn duplicate_identical_content_length_is_rejected() {
    assert_rejected_unforwarded(
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        true,
    )
    .await;
}

#[tokio::test]
async fn content_length_list_is_rejected() {
    // hyper refuses the list itself (400 without l5d-proxy-error).
    assert_rejected_unforwarded(
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5, 5\r\n\r\nhello",
        false,
    )
    .await;
}

#[tokio::test]
async fn conflicting_content_lengths_are_rejected() {
    // hyper refuses this head before the proxy's service sees it, so the 400 is hyper's
    // and carries no l5d-proxy-error.
    assert_rejected_unforwarded(
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        false,
    )
    .await;
}

#[tokio::test]
async fn nul_in_a_header_value_is_rejected() {
    assert_rejected_unforwarded(b"GET / HTTP/1.1\r\nHost: app\r\nX-Nul: a\0b\r\n\r\n", false).await;
}

#[tokio::test]
async fn bare_lf_in_the_head_is_rejected() {
    // DESIGN.md §5: a lone LF ending a header line is refused, not taken as a line end.
    assert_rejected_unforwarded(b"GET / HTTP/1.1\r\nHost: app\nX-Bare: lf\r\n\r\n", false).await;
}

#[tokio::test]
async fn invalid_chunk_size_is_never_forwarded_complete() {
    let (_app, proxy) = common::app_and_proxy().await;
    let (response, closed) = common::raw(
        proxy.outbound,
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        WAIT,
    )
    .await;
    match status(&response) {
        Some(400) => {
            assert!(
                header(&response, "l5d-proxy-error").is_some(),
                "no l5d-proxy-error in {response:?}"
            );
            assert!(closed, "connection left open after a bad chunk");
        }
        None => assert!(
            closed && response.is_empty(),
            "neither a response nor a close: {response:?}"
        ),
        Some(other) => panic!("a bad chunk size was answered {other}: {response:?}"),
    }
    assert!(
        !response.contains("hello"),
        "the body after a bad chunk size was echoed: {response:?}"
    );
}

// ---- HTTP/2 ---------------------------------------------------------------------------------

#[tokio::test]
async fn http2_concurrent_streams_are_capped() {
    let (app, proxy) =
        common::app_and_proxy_with(|cfg| cfg.limits.http2_max_concurrent_streams = 3).await;
    let mut tx = common::h2(proxy.outbound).await;
    // One exchange first, so the client has the proxy's SETTINGS before the burst.
    let res = tx
        .send_request(common::get(proxy.outbound, "/", Version::HTTP_2))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let calls = (0..12).map(|_| {
        let mut tx = tx.clone();
        let req = common::get(proxy.outbound, "/slow?ms=300", Version::HTTP_2);
        async move {
            let res = tx.send_request(req).await?;
            let status = res.status();
            let body = common::body_bytes(res.into_body()).await;
            Ok::<_, hyper::Error>((status, body))
        }
    });
    let results = timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("12 slow requests within 10 s");
    for r in results {
        let (status, body) = r.expect("stream failed");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"slow\n");
    }
    let max = app.max_in_flight();
    assert!(
        max <= 3,
        "{max} requests in flight at the app through a 3-stream connection"
    );
    assert!(
        max >= 2,
        "streams were serialised ({max} in flight), not run concurrently"
    );
}

#[tokio::test]
async fn http2_streams_over_the_limit_are_refused_by_the_proxy() {
    use common::frame;
    // hyper's client never opens more streams than the server allows, so the proxy's own
    // enforcement is only reached by a client that ignores the limit: raw frames.
    let (app, proxy) =
        common::app_and_proxy_with(|cfg| cfg.limits.http2_max_concurrent_streams = 3).await;
    let (mut s, settings) = common::raw_h2(proxy.outbound).await;
    assert!(
        settings.contains(&(frame::SETTINGS_MAX_CONCURRENT_STREAMS, 3)),
        "the limit is advertised: {settings:?}"
    );
    let authority = proxy.outbound.to_string();
    // Six streams at once; the app holds every request until released, so the first three
    // are certainly still open when the rest arrive.
    let burst: Vec<u8> = [1u32, 3, 5, 7, 9, 11]
        .iter()
        .flat_map(|&id| common::h2_get(id, &authority, "/hold"))
        .collect();
    s.write_all(&burst).await.unwrap();

    #[derive(Default, Debug)]
    struct StreamState {
        status_200: bool,
        body: Vec<u8>,
        ended: bool,
        reset: Option<u32>,
    }
    let mut streams: std::collections::BTreeMap<u32, StreamState> = Default::default();
    // Reads frames until `done` holds for the streams seen so far.
    async fn read_until(
        s: &mut TcpStream,
        streams: &mut std::collections::BTreeMap<u32, StreamState>,
        done: impl Fn(&std::collections::BTreeMap<u32, StreamState>) -> bool,
    ) {
        let deadline = Instant::now() + WAIT;
        while !done(streams) {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = common::read_h2_frame(s, left)
                .await
                .unwrap_or_else(|| panic!("connection closed or silent; so far {streams:?}"));
            let st = streams.entry(f.stream).or_default();
            match f.kind {
                frame::HEADERS => {
                    // hyper's encoder sends `:status 200` as static-table index 8.
                    st.status_200 |= f.payload.first() == Some(&0x88);
                    st.ended |= f.flags & frame::FLAG_END_STREAM != 0;
                }
                frame::DATA => {
                    st.body.extend_from_slice(&f.payload);
                    st.ended |= f.flags & frame::FLAG_END_STREAM != 0;
                }
                frame::RST_STREAM => {
                    st.reset = Some(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
                }
                frame::GOAWAY => panic!("the connection was closed (GOAWAY): {f:?}"),
                _ => {}
            }
        }
    }

    let refused = [7u32, 9, 11];
    read_until(&mut s, &mut streams, |st| {
        refused
            .iter()
            .all(|id| st.get(id).is_some_and(|x| x.reset.is_some()))
    })
    .await;
    for id in refused {
        let code = streams[&id].reset.unwrap();
        assert!(
            code == frame::REFUSED_STREAM || code == frame::PROTOCOL_ERROR,
            "stream {id} over the limit reset with {code:#x}, not REFUSED_STREAM or PROTOCOL_ERROR (RFC 9113 §5.1.2)"
        );
    }
    assert!(
        app.wait_seen(3, WAIT).await,
        "the three permitted streams reach the app"
    );
    for id in [1u32, 3, 5] {
        assert!(
            streams.get(&id).is_none_or(|x| x.reset.is_none()),
            "permitted stream {id} was reset: {streams:?}"
        );
    }

    app.release();
    read_until(&mut s, &mut streams, |st| {
        [1u32, 3, 5]
            .iter()
            .all(|id| st.get(id).is_some_and(|x| x.ended))
    })
    .await;
    for id in [1u32, 3, 5] {
        let st = &streams[&id];
        assert!(st.status_200, "stream {id}: {st:?}");
        assert_eq!(st.body, b"held\n", "stream {id}");
        assert_eq!(st.reset, None, "stream {id}");
    }
    let seen = app.seen();
    assert_eq!(
        seen.len(),
        3,
        "refused streams never reach the app: {seen:?}"
    );
    assert!(app.max_in_flight() <= 3);

    // The refusals were stream errors: the connection takes a new stream once slots free.
    s.write_all(&common::h2_get(13, &authority, "/hold"))
        .await
        .unwrap();
    read_until(&mut s, &mut streams, |st| {
        st.get(&13).is_some_and(|x| x.ended)
    })
    .await;
    assert!(streams[&13].status_200);
    assert_eq!(streams[&13].body, b"held\n");
    assert_eq!(app.seen().len(), 4);
}

/// An HTTP/2 GET for `/` with one filler header of `len` bytes.
fn h2_with_header(addr: SocketAddr, len: usize) -> http::Request<common::TestBody> {
    let mut req = common::get(addr, "/", Version::HTTP_2);
    req.headers_mut().insert(
        "x-fill",
        http::HeaderValue::from_str(&"a".repeat(len)).unwrap(),
    );
    req
}

#[tokio::test]
async fn http2_header_list_limit_is_honoured() {
    // The app's own HTTP/2 server takes 16 KiB, so only the proxy can refuse 9 KiB.
    let (app, proxy) =
        common::app_and_proxy_with(|cfg| cfg.limits.http2_max_header_list_bytes = ByteSize::kib(8))
            .await;
    let mut tx = common::h2(proxy.outbound).await;

    let res = tx
        .send_request(h2_with_header(proxy.outbound, 7 * 1024))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.seen().len(), 1);

    match tx
        .send_request(h2_with_header(proxy.outbound, 9 * 1024))
        .await
    {
        Ok(res) => assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(_refused) => {}
    }
    assert_eq!(
        app.seen().len(),
        1,
        "an oversized header list reached the app"
    );
    // The refusal is a stream error: the connection still serves requests.
    let res = tx
        .send_request(common::get(proxy.outbound, "/", Version::HTTP_2))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn http2_header_list_just_under_the_default_passes() {
    let (_app, proxy) = common::app_and_proxy().await;
    let mut tx = common::h2(proxy.outbound).await;
    let res = tx
        .send_request(h2_with_header(proxy.outbound, 15 * 1024))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

// ---- connection cap ------------------------------------------------------------------------

#[tokio::test]
async fn connection_cap_closes_extra_connections_and_frees_slots() {
    let (_app, proxy) =
        common::app_and_proxy_with(|cfg| cfg.limits.max_connections = NonZeroUsize::new(2)).await;

    let mut a = TcpStream::connect(proxy.outbound).await.unwrap();
    assert!(hello_on(&mut a).await);
    let mut b = TcpStream::connect(proxy.outbound).await.unwrap();
    assert!(hello_on(&mut b).await);

    // The third is accepted by the kernel and closed by the proxy, without an answer.
    let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
    let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let (text, closed) = common::read_until_close(&mut c, Duration::from_secs(2)).await;
    assert!(closed, "a connection over the cap stayed open");
    assert!(
        text.is_empty(),
        "a connection over the cap was answered: {text}"
    );

    assert!(hello_on(&mut a).await, "first connection broken by the cap");
    assert!(
        hello_on(&mut b).await,
        "second connection broken by the cap"
    );

    drop(a);
    // The slot frees once the proxy has seen the close; retry for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut d = TcpStream::connect(proxy.outbound).await.unwrap();
        if hello_on(&mut d).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection accepted after one of two closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hello_on(&mut b).await);
}

// ---- upstream connect failures ---------------------------------------------------------------

#[tokio::test]
async fn refused_upstream_is_502_with_the_address() {
    let target = common::closed_port();
    let proxy = common::proxy(common::config(target)).await;
    let mut tx = common::h1(proxy.outbound).await;
    let res = tx
        .send_request(common::get(proxy.outbound, "/", Version::HTTP_11))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let why = res
        .headers()
        .get("l5d-proxy-error")
        .expect("l5d-proxy-error")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        why.contains(&target.to_string()),
        "l5d-proxy-error {why:?} does not name {target}"
    );
}

#[tokio::test]
async fn refused_upstream_is_grpc_unavailable_for_grpc() {
    let target = common::closed_port();
    let proxy = common::proxy(common::config(target)).await;
    let mut tx = common::h2(proxy.outbound).await;
    let mut req = common::request(
        http::Method::POST,
        proxy.outbound,
        "/hello.Greeter/SayHello",
        Version::HTTP_2,
        common::empty(),
    );
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    let res = tx.send_request(req).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "gRPC errors travel in grpc-status, not the HTTP status"
    );
    assert_eq!(
        res.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"14"[..])
    );
    assert!(res.headers().contains_key("l5d-proxy-error"));
}

#[tokio::test]
async fn connect_timeout_is_504() {
    // A listener with backlog 0 that never accepts: once its accept queue holds a
    // connection, Linux drops further SYNs and connects hang until their timeout.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let target = sock.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = timeout(Duration::from_millis(100), TcpStream::connect(target)).await {
            queued.push(s);
        }
    }
    assert!(!queued.is_empty(), "no connection reached the accept queue");
    let probe = timeout(Duration::from_millis(300), TcpStream::connect(target)).await;
    assert!(
        probe.is_err(),
        "the kernel completed a connect to a full accept queue; no connect timeout can be produced here"
    );

    let mut cfg = common::config(target);
    cfg.limits.connect_timeout = Duration::from_millis(300);
    let proxy = common::proxy(cfg).await;
    let mut tx = common::h1(proxy.outbound).await;
    let start = Instant::now();
    let res = timeout(
        WAIT,
        tx.send_request(common::get(proxy.outbound, "/", Version::HTTP_11)),
    )
    .await
    .expect("answer within 5 s")
    .unwrap();
    let elapsed = start.elapsed();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    let why = res
        .headers()
        .get("l5d-proxy-error")
        .expect("l5d-proxy-error")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(why.contains("timed out"), "l5d-proxy-error {why:?}");
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(1500),
        "answered after {elapsed:?}, not after the 300 ms connect timeout"
    );
    drop(queued);
}

#[tokio::test]
async fn host_header_must_be_present_and_unambiguous() {
    let (app, proxy) = common::app_and_proxy().await;
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",
    ];
    for case in cases {
        let (text, closed) = common::raw(proxy.outbound, case, WAIT).await;
        assert_eq!(
            status(&text),
            Some(400),
            "{:?}: {text}",
            String::from_utf8_lossy(case)
        );
        assert!(closed, "connection closed after 400");
        assert!(
            text.to_ascii_lowercase()
                .contains("l5d-proxy-error: bad request"),
            "{text}"
        );
    }
    assert!(app.seen().is_empty(), "none of them reached the app");
    // HTTP/1.0 may omit Host, and a matching absolute-form target is fine.
    let (text, _) = common::raw(proxy.outbound, b"GET / HTTP/1.0\r\n\r\n", WAIT).await;
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    let (text, _) = common::raw(
        proxy.outbound,
        b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(status(&text), Some(200), "{text}");
}
