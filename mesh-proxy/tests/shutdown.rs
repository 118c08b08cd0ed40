//! Graceful shutdown (DESIGN.md §5 "drain"): in-flight requests finish, HTTP/1 responses say
//! `Connection: close`, HTTP/2 gets GOAWAY, new connections are refused, the run future ends
//! within the grace period, and the admin server reports the drain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode, Version};
use mesh_test::app::App;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// Waits until the app has seen `n` requests (they are then in flight: the app holds
/// `/hold` requests until released), failing after a generous bound.
async fn app_has_seen(app: &App, n: usize) {
    assert!(
        app.wait_seen(n, Duration::from_secs(10)).await,
        "the app saw {} of {n} requests within 10 s",
        app.seen().len()
    );
}

/// A new connection to `addr` is refused, or closed without any answer.
async fn assert_no_new_connections(addr: SocketAddr) {
    match timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
        Err(_) => panic!("connect to the draining listener {addr} hung"),
        Ok(Err(_refused)) => {}
        Ok(Ok(mut s)) => {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
            let (text, closed) = common::read_until_close(&mut s, Duration::from_secs(2)).await;
            assert!(closed, "a connection made after shutdown stayed open");
            assert!(
                text.is_empty(),
                "a connection made after shutdown was served: {text}"
            );
        }
    }
}

/// `GET path` on a fresh HTTP/1 connection to the admin server.
async fn admin_get(admin: SocketAddr, path: &str) -> StatusCode {
    let mut tx = common::h1(admin).await;
    let res = timeout(
        Duration::from_secs(2),
        tx.send_request(common::get(admin, path, Version::HTTP_11)),
    )
    .await
    .expect("admin answers within 2 s")
    .unwrap();
    res.status()
}

/// The outcome of one proxied request: status, `connection` header, body.
type Outcome = (StatusCode, Option<String>, bytes::Bytes);

#[tokio::test]
async fn in_flight_requests_finish_and_new_connections_are_refused() {
    // A grace far longer than the test's bounds: the drain must end when the last request
    // does, not when the grace runs out.
    let (app, proxy) =
        common::app_and_proxy_with(|cfg| cfg.shutdown.grace = Duration::from_secs(60)).await;
    let addr = proxy.outbound;

    let mut h1_calls = Vec::new();
    for _ in 0..10 {
        let mut tx = common::h1(addr).await;
        h1_calls.push(tokio::spawn(async move {
            let res = tx
                .send_request(common::get(addr, "/hold", Version::HTTP_11))
                .await?;
            let connection = res
                .headers()
                .get(http::header::CONNECTION)
                .map(|v| v.to_str().unwrap_or("?").to_owned());
            let status = res.status();
            let body = common::body_bytes(res.into_body()).await;
            Ok::<Outcome, hyper::Error>((status, connection, body))
        }));
    }
    let h2 = common::h2(addr).await;
    let mut h2_calls = Vec::new();
    for _ in 0..10 {
        let mut tx = h2.clone();
        h2_calls.push(tokio::spawn(async move {
            let res = tx
                .send_request(common::get(addr, "/hold", Version::HTTP_2))
                .await?;
            let status = res.status();
            let body = common::body_bytes(res.into_body()).await;
            Ok::<Outcome, hyper::Error>((status, None, body))
        }));
    }
    // Every request is at the app, held there until released: all 20 are certainly in
    // flight when the drain starts.
    app_has_seen(&app, 20).await;

    proxy.shutdown.trigger();
    assert_no_new_connections(addr).await;
    app.release();
    let released = Instant::now();

    for (i, call) in h1_calls.into_iter().enumerate() {
        let (status, connection, body) = timeout(Duration::from_secs(3), call)
            .await
            .expect("HTTP/1 request finished")
            .unwrap()
            .unwrap_or_else(|e| panic!("HTTP/1 request {i} failed during drain: {e}"));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"held\n");
        assert_eq!(
            connection.as_deref(),
            Some("close"),
            "HTTP/1 response {i} during drain"
        );
    }
    for (i, call) in h2_calls.into_iter().enumerate() {
        let (status, _, body) = timeout(Duration::from_secs(3), call)
            .await
            .expect("HTTP/2 request finished")
            .unwrap()
            .unwrap_or_else(|e| panic!("HTTP/2 stream {i} failed during drain: {e}"));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"held\n");
    }
    assert_eq!(
        app.seen().len(),
        20,
        "a request made after shutdown reached the app"
    );
    // The HTTP/2 connection got GOAWAY: it takes no new streams.
    let mut late = h2.clone();
    let refused = timeout(
        Duration::from_secs(2),
        late.send_request(common::get(addr, "/", Version::HTTP_2)),
    )
    .await
    .expect("a new stream after GOAWAY is answered or refused promptly");
    assert!(
        refused.is_err(),
        "a new HTTP/2 stream was served after shutdown"
    );
    assert_eq!(app.seen().len(), 20);

    timeout(Duration::from_secs(10), proxy.task)
        .await
        .expect("run ended once the drained requests finished, long before the 60 s grace")
        .unwrap();
    let drained = released.elapsed();
    assert!(
        drained < Duration::from_secs(10),
        "run ended {drained:?} after the last requests were released"
    );
}

#[tokio::test]
async fn run_ends_after_the_grace_period_with_a_request_still_in_flight() {
    let (app, proxy) =
        common::app_and_proxy_with(|cfg| cfg.shutdown.grace = Duration::from_millis(500)).await;
    let mut tx = common::h1(proxy.outbound).await;
    let call =
        tokio::spawn(tx.send_request(common::get(proxy.outbound, "/hold", Version::HTTP_11)));
    app_has_seen(&app, 1).await;

    proxy.shutdown.trigger();
    let triggered = Instant::now();
    timeout(Duration::from_secs(3), proxy.task)
        .await
        .expect("run ended within 3 s of the trigger")
        .unwrap();
    let ended = triggered.elapsed();
    assert!(
        ended >= Duration::from_millis(400),
        "run ended after {ended:?}, without waiting for the in-flight request"
    );
    call.abort();
}

#[tokio::test]
async fn connections_left_after_the_grace_period_are_closed() {
    let (app, proxy) =
        common::app_and_proxy_with(|cfg| cfg.shutdown.grace = Duration::from_millis(500)).await;
    let mut tx = common::h1(proxy.outbound).await;
    let call =
        tokio::spawn(tx.send_request(common::get(proxy.outbound, "/hold", Version::HTTP_11)));
    app_has_seen(&app, 1).await;

    proxy.shutdown.trigger();
    let triggered = Instant::now();
    timeout(Duration::from_secs(3), proxy.task)
        .await
        .expect("run ended within 3 s of the trigger")
        .unwrap();

    // "After the grace period whatever remains is dropped": the client sees its connection
    // end, rather than the proxy serving on until the app answers (it never does here).
    let outcome = timeout(Duration::from_secs(2), call).await;
    let at = triggered.elapsed();
    match outcome {
        Err(_) => panic!(
            "the in-flight request was still open {at:?} after the trigger, past the 500 ms grace"
        ),
        Ok(res) => {
            let res = res.unwrap();
            assert!(
                res.is_err(),
                "the request was served after the grace period: {:?}",
                res.map(|r| r.status())
            );
        }
    }
}

#[tokio::test]
async fn ready_turns_503_while_draining_and_admin_stays_up() {
    let (app, proxy) = common::app_and_proxy().await;
    assert_eq!(admin_get(proxy.admin, "/ready").await, StatusCode::OK);

    // A request in flight keeps the drain going.
    let mut tx = common::h1(proxy.outbound).await;
    let call =
        tokio::spawn(tx.send_request(common::get(proxy.outbound, "/hold", Version::HTTP_11)));
    app_has_seen(&app, 1).await;

    proxy.shutdown.trigger();
    assert_eq!(
        admin_get(proxy.admin, "/ready").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(admin_get(proxy.admin, "/live").await, StatusCode::OK);
    assert!(
        !call.is_finished(),
        "the request is still held: the drain is in progress"
    );

    app.release();
    let res = timeout(Duration::from_secs(3), call)
        .await
        .expect("drained request finished")
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    timeout(Duration::from_secs(3), proxy.task)
        .await
        .expect("run ended")
        .unwrap();
}

#[tokio::test]
async fn post_shutdown_from_loopback_starts_the_drain() {
    let (_app, proxy) = common::app_and_proxy().await;
    assert!(!proxy.shutdown.is_triggered());

    let mut tx = common::h1(proxy.admin).await;
    let res = tx
        .send_request(common::request(
            Method::POST,
            proxy.admin,
            "/shutdown",
            Version::HTTP_11,
            common::empty(),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(proxy.shutdown.is_triggered());

    timeout(Duration::from_secs(3), proxy.task)
        .await
        .expect("run ended after POST /shutdown")
        .unwrap();
    assert_no_new_connections(proxy.outbound).await;
}

#[tokio::test]
async fn get_shutdown_is_not_allowed() {
    let (_app, proxy) = common::app_and_proxy().await;
    let mut tx = common::h1(proxy.admin).await;
    let res = tx
        .send_request(common::get(proxy.admin, "/shutdown", Version::HTTP_11))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(!proxy.shutdown.is_triggered());
}
