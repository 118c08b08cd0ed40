//! After traffic, `/metrics` shows the right request and response counts, latency buckets,
//! connection counts and detection outcomes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use http::Version;
use mesh_test::app::App;
use tokio::time::Instant;

#[tokio::test]
async fn metrics_count_requests_responses_and_latency() {
    let app = App::spawn().await;
    let proxy = proxy_with_metrics(config(app.addr())).await;
    // Detection counts have no per-test label: compare with before.
    let before = scrape(proxy.admin).await;
    let detect_out = ["direction=\"outbound\"", "protocol=\"http/1\""];
    let detect_in = ["direction=\"inbound\"", "protocol=\"http/2\""];
    let mut c = h1(proxy.outbound).await;
    // Five fast requests and one that takes at least 1.1 s: the latency histogram must put
    // them on either side of its 1 s bucket boundary.
    for path in ["/", "/", "/", "/status/404", "/status/503", "/slow?ms=1100"] {
        c.ready().await.expect("ready");
        let res = c
            .send_request(get(proxy.outbound, path, Version::HTTP_11))
            .await
            .expect("response");
        let _ = body_bytes(res.into_body()).await;
    }
    drop(c);
    let mut c = h2(proxy.inbound).await;
    let res = c
        .send_request(get(proxy.inbound, "/", Version::HTTP_2))
        .await
        .expect("response");
    let _ = body_bytes(res.into_body()).await;
    drop(c);
    let dst = format!("dst=\"{}\"", app.addr());
    let out = "direction=\"outbound\"";
    let inb = "direction=\"inbound\"";
    // The proxy accounts a close when it sees it: poll, for a bounded time, until both
    // client connections are counted closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = scrape(proxy.admin).await;
        let closed = |dir| sample(&text, "mesh_tcp_close_total", &[dir, &dst]);
        if closed(out) == Some(1.0) && closed(inb) == Some(1.0) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "closes not counted within 5 s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    assert_eq!(
        sample(&text, "mesh_request_total", &[out, &dst]),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "mesh_request_total", &[inb, &dst]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "mesh_response_total",
            &[
                out,
                &dst,
                "status_code=\"200\"",
                "classification=\"success\""
            ]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            "mesh_response_total",
            &[
                out,
                &dst,
                "status_code=\"404\"",
                "classification=\"success\""
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "mesh_response_total",
            &[
                out,
                &dst,
                "status_code=\"503\"",
                "classification=\"failure\""
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "mesh_response_latency_seconds_count", &[out, &dst]),
        Some(6.0),
        "{text}"
    );
    let bucket = |le: &str| {
        let le = format!("le=\"{le}\"");
        sample(
            &text,
            "mesh_response_latency_seconds_bucket",
            &[out, &dst, le.as_str()],
        )
    };
    // Below the boundary: the five fast requests (well under a second each), never the
    // slow one, which took at least 1.1 s.
    assert_eq!(bucket("1"), Some(5.0), "{text}");
    assert_eq!(bucket("0.5"), Some(5.0), "{text}");
    // Above it: all six.
    assert_eq!(bucket("5"), Some(6.0), "{text}");
    assert_eq!(bucket("+Inf"), Some(6.0), "{text}");
    // Cumulative buckets never decrease.
    let all: Vec<f64> = mesh_core::metrics::LATENCY_BUCKETS
        .iter()
        .map(|le| bucket(&le.to_string()).expect("every configured bucket is exported"))
        .collect();
    assert!(all.windows(2).all(|w| w[0] <= w[1]), "{all:?}");
    let sum = sample(&text, "mesh_response_latency_seconds_sum", &[out, &dst]).expect("sum");
    assert!(
        (1.1..30.0).contains(&sum),
        "the latency sum includes the 1.1 s request: {sum}"
    );
    assert_eq!(
        sample(&text, "mesh_tcp_open_total", &[out, &dst]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "mesh_tcp_close_total", &[out, &dst]),
        Some(1.0)
    );
    assert!(sample(&text, "mesh_tcp_read_bytes_total", &[out, &dst]).is_some_and(|b| b > 100.0));
    assert!(sample(&text, "mesh_tcp_write_bytes_total", &[out, &dst]).is_some_and(|b| b > 100.0));
    let grew = |labels: &[&str]| {
        sample(&text, "mesh_detect_total", labels).unwrap_or(0.0)
            - sample(&before, "mesh_detect_total", labels).unwrap_or(0.0)
    };
    assert_eq!(grew(&detect_out), 1.0, "{text}");
    assert_eq!(grew(&detect_in), 1.0, "{text}");
    assert!(
        text.contains("# HELP mesh_request_total"),
        "help text for promtool"
    );
    assert!(text.contains("# TYPE mesh_response_latency_seconds histogram"));
}

#[tokio::test]
async fn a_grpc_failure_in_the_trailers_counts_as_a_failure() {
    // Responses are counted when they end: a gRPC stream whose 200 head is followed by
    // messages and then `grpc-status: 14` in its trailers is a failure, not a success.
    let app = App::spawn().await;
    let proxy = proxy_with_metrics(config(app.addr())).await;
    let mut client = mesh_test::grpc::GreeterClient::connect(proxy.outbound)
        .await
        .expect("connect");
    let ok = client.say_hello_stream("fine", 2).await.expect("stream");
    assert_eq!(ok.len(), 2);
    let err = client
        .say_hello_stream("break:now", 2)
        .await
        .expect_err("the stream breaks");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    let dst = format!("dst=\"{}\"", app.addr());
    let labels = |class: &'static str| {
        [
            "direction=\"outbound\"".to_owned(),
            dst.clone(),
            "status_code=\"200\"".to_owned(),
            format!("classification=\"{class}\""),
        ]
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(proxy.admin).await;
        let count = |class| {
            let l = labels(class);
            let l: Vec<&str> = l.iter().map(String::as_str).collect();
            sample(&text, "mesh_response_total", &l)
        };
        if count("failure") == Some(1.0) {
            assert_eq!(count("success"), Some(1.0), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no failure counted: {text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
