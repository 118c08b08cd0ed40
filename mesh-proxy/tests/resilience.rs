//! Resilience policies end to end (issue 17): a router whose service `/svc/world` has
//! timeouts, retries with a budget and body replay, and injected faults, in front of the
//! hello app's `/flaky`, `/first-fails`, `/hang`, `/grpc-status` and `/status/N` routes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use mesh_proxy::config::Config;
use mesh_test::app::App;

/// A sidecar routing `Host: world` to `upstreams`, with `service` as the TOML body of
/// `[….service."/svc/world"]`. One upstream is bound by address (`/$/inet`): no balancer,
/// whose failure accrual would eject a lone upstream that fails often; several are a file
/// namer's name, balanced.
async fn sidecar(upstreams: &[SocketAddr], service: &str) -> TestProxy {
    let dir = temp_dir("resilience");
    let lines: String = upstreams.iter().map(|a| format!("{a}\n")).collect();
    write_atomic(&dir, "world", &lines);
    let dtab = match upstreams {
        [one] => format!("/svc/world => /$/inet/{}/{}", one.ip(), one.port()),
        _ => "/svc => /#/fs".to_owned(),
    };
    let text = routed_toml("r")
        + &format!(
            r#"[namers.fs]
kind = "file"
dir = {dir:?}
[routers.r]
dtab = "{dtab}"
{section}
{service}
"#,
            dir = dir.display().to_string(),
            // No policy at all when none is given.
            section = if service.is_empty() {
                ""
            } else {
                "[routers.r.service.\"/svc/world\"]"
            }
        );
    let cfg = Config::from_toml("resilience.toml", &text).expect("config");
    proxy_with_metrics(cfg).await
}

async fn call(
    c: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (u16, Bytes, String) {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "world");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let res = c
        .send_request(b.body(full(body)).unwrap())
        .await
        .expect("response");
    let status = res.status().as_u16();
    let err = proxy_error(&res);
    (status, body_bytes(res.into_body()).await, err)
}

async fn get(c: &mut hyper::client::conn::http1::SendRequest<TestBody>, path: &str) -> u16 {
    call(c, "GET", path, &[], Bytes::new()).await.0
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    sample(text, name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn retries_hide_a_flaky_upstream() {
    let app = App::spawn().await;
    let p = sidecar(
        &[app.addr()],
        r#"retries = { on = ["5xx"], max_attempts = 5, budget = { ratio = 1.0 }, backoff = { min = "1ms", max = "5ms" } }"#,
    )
    .await;
    let mut c = h1(p.outbound).await;
    let mut ok = 0;
    for _ in 0..2000 {
        if get(&mut c, "/flaky?p=0.3").await == 200 {
            ok += 1;
        }
    }
    let upstream = app.seen().len();
    println!(
        "flaky 30 %: {ok}/2000 succeeded, {} retries",
        upstream - 2000
    );
    assert!(ok >= 1990, "{ok} of 2000 succeeded");
    let text = scrape(p.admin).await;
    let retries = metric(
        &text,
        "mesh_retry_total",
        &["dst=\"/svc/world\"", "reason=\"5xx\""],
    );
    // Other tests of this binary retry under the same name: at least this test's retries.
    assert!(
        retries as usize >= upstream - 2000,
        "every retry is counted: {retries}"
    );
}

#[tokio::test]
async fn a_retry_keeps_the_upstream_connection() {
    let app = App::spawn().await;
    let p = sidecar(&[app.addr()], r#"retries = { on = ["5xx"] }"#).await;
    let mut c = h1(p.outbound).await;
    for i in 0..20 {
        let key = format!("keep-{i}");
        let (status, ..) = call(
            &mut c,
            "GET",
            "/first-fails",
            &[("x-key", &key)],
            Bytes::new(),
        )
        .await;
        assert_eq!(status, 200, "retried");
    }
    // Each first attempt's 503 carries a short body: read to its end, its connection is
    // reused by the retry rather than closed (20 retries, not 20 new connections).
    assert!(
        app.connections() <= 2,
        "{} upstream connections",
        app.connections()
    );
}

#[tokio::test]
async fn a_dead_upstream_gets_no_more_retries_than_the_budget() {
    let app = App::spawn().await;
    let p = sidecar(
        &[app.addr()],
        r#"retries = { on = ["5xx"], max_attempts = 3, budget = { ratio = 0.2, min_per_second = 10, ttl = "10s" }, backoff = { min = "1ms", max = "2ms" } }"#,
    )
    .await;
    let mut c = h1(p.outbound).await;
    let n = 500;
    for _ in 0..n {
        assert_eq!(get(&mut c, "/status/503").await, 503);
    }
    let retries = app.seen().len() - n;
    println!("dead upstream: {n} requests, {retries} retries");
    // ratio × requests + min_per_second × ttl.
    assert!(retries <= n / 5 + 100, "{retries} retries");
    assert!(retries >= 50, "the budget allows retries: {retries}");
    let text = scrape(p.admin).await;
    assert!(
        metric(
            &text,
            "mesh_retry_budget_exhausted_total",
            &["dst=\"/svc/world\""]
        ) > 0.0
    );
}

#[tokio::test]
async fn only_safe_requests_are_retried_and_bodies_replay_exactly() {
    let app = App::spawn().await;
    let by_default = sidecar(&[app.addr()], r#"retries = { on = ["5xx"] }"#).await;
    let mut c = h1(by_default.outbound).await;
    let body = Bytes::from((0..60 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    // POST is not idempotent: its first failure reaches the client.
    let (status, ..) = call(
        &mut c,
        "POST",
        "/first-fails",
        &[("x-key", "post-1")],
        body.clone(),
    )
    .await;
    assert_eq!(status, 503);
    // PUT is: retried, and the second attempt carries the same 60 KiB.
    let (status, echoed, _) = call(
        &mut c,
        "PUT",
        "/first-fails",
        &[("x-key", "put-1")],
        body.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(echoed, body, "the replayed body is byte-identical");
    // A body above the replay limit (64 KiB) is not retried.
    let big = Bytes::from(vec![7u8; 100 * 1024]);
    let (status, ..) = call(&mut c, "PUT", "/first-fails", &[("x-key", "put-big")], big).await;
    assert_eq!(status, 503);
    // A 1 MiB body streams through a retrying service unchanged.
    let mib = Bytes::from(
        (0..1024 * 1024)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    let (status, echoed, _) = call(&mut c, "POST", "/collect", &[], mib.clone()).await;
    assert_eq!((status, echoed.len()), (200, mib.len()));
    assert_eq!(echoed, mib);

    let configured = sidecar(
        &[app.addr()],
        r#"retries = { on = ["5xx"], methods = ["POST"], report_count = true }"#,
    )
    .await;
    let mut c = h1(configured.outbound).await;
    let (status, echoed, _) = call(
        &mut c,
        "POST",
        "/first-fails",
        &[("x-key", "post-2")],
        body.clone(),
    )
    .await;
    assert_eq!(status, 200, "POST retried when configured");
    assert_eq!(echoed, body);
    // The count is reported only where configured.
    let mut b = http::Request::post("/first-fails")
        .header("host", "world")
        .header("x-key", "post-3");
    b = b.header("content-length", "2");
    let res = c
        .send_request(b.body(full("hi")).unwrap())
        .await
        .expect("response");
    assert_eq!(
        res.headers()
            .get("l5d-retry-count")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let mut plain = h1(by_default.outbound).await;
    let res = plain
        .send_request(
            http::Request::get("/")
                .header("host", "world")
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("response");
    assert!(res.headers().get("l5d-retry-count").is_none());
}

#[tokio::test]
async fn grpc_statuses_in_the_head_are_classified() {
    let app = App::spawn().await;
    let p = sidecar(&[app.addr()], r#"retries = { on = ["unavailable"], max_attempts = 3, backoff = { min = "1ms", max = "2ms" } }"#).await;
    let c = h2(p.outbound).await;
    for (code, attempts) in [(14, 3), (3, 1), (0, 1)] {
        let before = app.seen().len();
        let req = http::Request::post(format!("http://world/grpc-status?code={code}"))
            .version(http::Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(empty())
            .unwrap();
        let res = c.clone().send_request(req).await.expect("response");
        assert_eq!(res.headers().get("grpc-status").unwrap(), &code.to_string());
        assert_eq!(app.seen().len() - before, attempts, "grpc-status {code}");
    }
}

#[tokio::test]
async fn timeouts_fire_at_their_deadline() {
    let app = App::spawn().await;
    let p = sidecar(&[app.addr()], r#"timeout = "300ms""#).await;
    let mut c = h1(p.outbound).await;
    let t0 = Instant::now();
    let (status, _, err) = call(&mut c, "GET", "/hang", &[], Bytes::new()).await;
    let took = t0.elapsed();
    println!("hanging upstream, timeout 300ms: {status} after {took:?}");
    assert_eq!(status, 504, "{err}");
    assert!(err.contains("/svc/world"), "{err}");
    assert!(
        took >= Duration::from_millis(270) && took <= Duration::from_millis(450),
        "{took:?}"
    );

    // An incoming grpc-timeout lowers the deadline: DEADLINE_EXCEEDED after ~100 ms.
    let c2 = h2(p.outbound).await;
    let req = http::Request::post("http://world/hang")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "100m")
        .body(empty())
        .unwrap();
    let t0 = Instant::now();
    let res = c2.clone().send_request(req).await.expect("response");
    let took = t0.elapsed();
    assert_eq!(
        res.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("4")
    );
    assert!(
        took >= Duration::from_millis(90) && took <= Duration::from_millis(400),
        "{took:?}"
    );
    // The deadline covers a stream whose head arrived: it ends with DEADLINE_EXCEEDED.
    let req = http::Request::post("http://world/grpc-stall")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "150m")
        .body(empty())
        .unwrap();
    let t0 = Instant::now();
    let res = c2.clone().send_request(req).await.expect("response head");
    assert_eq!(res.status(), 200);
    let collected = tokio::time::timeout(
        Duration::from_secs(2),
        http_body_util::BodyExt::collect(res.into_body()),
    )
    .await
    .expect("the stream ends at its deadline")
    .expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("4")
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(140),
        "{:?}",
        t0.elapsed()
    );
    // Honoured for a name without any service policy too.
    let plain = sidecar(&[app.addr()], "").await;
    let c3 = h2(plain.outbound).await;
    let req = http::Request::post("http://world/hang")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "100m")
        .body(empty())
        .unwrap();
    let t0 = Instant::now();
    let res = c3.clone().send_request(req).await.expect("response");
    assert_eq!(
        res.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("4")
    );
    assert!(
        t0.elapsed() <= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn the_total_timeout_covers_the_body_and_the_response_timeout_the_head() {
    let app = App::spawn().await;
    let p = sidecar(
        &[app.addr()],
        "timeout = \"400ms\"\nresponse_timeout = \"200ms\"",
    )
    .await;
    // The head within the response timeout, then a body that stalls: it fails at the total
    // deadline instead of looking complete.
    let mut c = h1(p.outbound).await;
    let res = c
        .send_request(
            http::Request::get("/stall")
                .header("host", "world")
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("head");
    assert_eq!(res.status(), 200);
    let t0 = Instant::now();
    let body = tokio::time::timeout(
        Duration::from_secs(2),
        http_body_util::BodyExt::collect(res.into_body()),
    )
    .await
    .expect("the body ends at the deadline");
    assert!(body.is_err(), "a stalled body must not look complete");
    assert!(
        t0.elapsed() <= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    // No head within the response timeout: 504 at 200 ms, not at the total 400 ms.
    let mut c = h1(p.outbound).await;
    let t0 = Instant::now();
    let (status, _, err) = call(&mut c, "GET", "/hang", &[], Bytes::new()).await;
    let took = t0.elapsed();
    assert_eq!(status, 504, "{err}");
    assert!(
        took >= Duration::from_millis(180) && took <= Duration::from_millis(350),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_per_try_timeout_moves_on_to_a_healthy_endpoint() {
    // One endpoint accepts connections and never answers; the other is healthy.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let app = App::spawn().await;
    let p = sidecar(
        &[silent_addr, app.addr()],
        r#"per_try_timeout = "100ms"
timeout = "2s"
retries = { on = ["per-try-timeout"], max_attempts = 4, backoff = { min = "1ms", max = "2ms" } }"#,
    )
    .await;
    let mut c = h1(p.outbound).await;
    for _ in 0..20 {
        let t0 = Instant::now();
        assert_eq!(get(&mut c, "/").await, 200);
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}

#[tokio::test]
async fn faults_are_injected_in_their_share_and_never_retried() {
    let app = App::spawn().await;
    let p = sidecar(
        &[app.addr()],
        r#"retries = { on = ["5xx"], budget = { ratio = 1.0 } }
[[routers.r.service."/svc/world".routes]]
match = { path_prefix = "/api", method = "GET" }
fault = { abort = { status = 503, percent = 10 }, delay = { duration = "20ms", percent = 5 } }
[[routers.r.service."/svc/world".routes]]
match = { path_prefix = "/chaos" }
fault = { abort = { status = 500, percent = 100 }, header = "x-chaos: on" }"#,
    )
    .await;
    let mut c = h1(p.outbound).await;
    let (mut aborted, mut delayed) = (0, 0);
    for _ in 0..2000 {
        let t0 = Instant::now();
        let (status, _, err) = call(&mut c, "GET", "/api/x", &[], Bytes::new()).await;
        if status == 503 {
            assert!(err.contains("fault injected"), "{err}");
            aborted += 1;
        }
        if t0.elapsed() >= Duration::from_millis(20) {
            delayed += 1;
        }
    }
    println!("faults over 2000 requests: {aborted} aborted (10 %), {delayed} delayed (5 %)");
    assert!((140..=260).contains(&aborted), "{aborted} aborted");
    assert!((40..=160).contains(&delayed), "{delayed} delayed");
    // Injected aborts never reached the upstream nor were retried.
    assert_eq!(app.seen().len(), 2000 - aborted);
    // Header-scoped: only requests with the header.
    assert_eq!(
        call(&mut c, "GET", "/chaos", &[], Bytes::new()).await.0,
        404
    );
    assert_eq!(
        call(&mut c, "GET", "/chaos", &[("x-chaos", "on")], Bytes::new())
            .await
            .0,
        500
    );
    let text = scrape(p.admin).await;
    assert_eq!(
        metric(
            &text,
            "mesh_fault_injected_total",
            &["dst=\"/svc/world\"", "fault=\"abort\""]
        ) as usize,
        aborted + 1
    );
}

#[tokio::test]
async fn bad_policies_are_refused_at_load() {
    for (service, want) in [
        (r#"retries = { on = ["sometimes"] }"#, "retries.on"),
        (r#"retries = { max_attempts = 0 }"#, "max_attempts"),
        (r#"retries = { budget = { ttl = "0s" } }"#, "ttl"),
        (r#"retries = { budget = { ratio = 0.3 } }"#, "1/n"),
        (r#"retries = { methods = ["CONNECT"] }"#, "CONNECT"),
        ("timeout = \"0s\"", "greater than zero"),
        ("timeout = \"1s\"\nper_try_timeout = \"2s\"", "longer than"),
        ("timeout = \"1s\"\nresponse_timeout = \"2s\"", "longer than"),
        (
            "[[routers.r.service.\"/svc/world\".routes]]\nfault = { abort = { status = 200, percent = 10 } }",
            "status",
        ),
        (
            "[[routers.r.service.\"/svc/world\".routes]]\nfault = { delay = { duration = \"1s\", percent = 150 } }",
            "percent",
        ),
    ] {
        let text = format!("[routers.r]\n[routers.r.service.\"/svc/world\"]\n{service}\n");
        let err = Config::from_toml("bad.toml", &text)
            .expect_err(service)
            .to_string();
        assert!(err.contains(want), "{service}: {err}");
    }
}

#[tokio::test]
async fn a_tonic_client_sees_unavailable_retried_and_invalid_argument_not() {
    let app = App::spawn().await;
    let text = routed_toml("r")
        + &format!(
            r#"[routers.r]
identifier = {{ kind = "static", path = "/svc/greeter" }}
dtab = "/svc/greeter => /$/inet/{ip}/{port}"
[routers.r.service."/svc/greeter"]
retries = {{ on = ["unavailable"], max_attempts = 3, backoff = {{ min = "1ms", max = "2ms" }} }}
"#,
            ip = app.addr().ip(),
            port = app.addr().port()
        );
    let p = proxy_with_metrics(Config::from_toml("grpc.toml", &text).expect("config")).await;
    let mut client = mesh_test::grpc::GreeterClient::connect(p.outbound)
        .await
        .expect("connect");
    // UNAVAILABLE once, then OK: the retry hides it.
    let reply = client
        .say_hello("unavailable-once:tonic-1")
        .await
        .expect("retried");
    assert!(
        reply.message.contains("unavailable-once:tonic-1"),
        "{}",
        reply.message
    );
    // Always UNAVAILABLE: three attempts, then the status reaches the client.
    let before = app.seen().len();
    let err = client
        .say_hello("unavailable:down")
        .await
        .expect_err("unavailable");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(app.seen().len() - before, 3);
    // INVALID_ARGUMENT is the client's own error: one attempt.
    let before = app.seen().len();
    let err = client.say_hello("").await.expect_err("invalid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(app.seen().len() - before, 1);
    // Failures in trailers-only responses are classified as failures in the metrics.
    let text = scrape(p.admin).await;
    assert!(
        sample(
            &text,
            "mesh_response_total",
            &["dst=\"/svc/greeter\"", "classification=\"failure\""]
        )
        .is_some_and(|v| v >= 2.0),
        "{text}"
    );
}
