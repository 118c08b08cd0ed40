//! After traffic, `/metrics` shows the right request and response counts, latency buckets,
//! connection counts and detection outcomes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::Version;
use mesh_proxy::Proxy;
use mesh_test::app::App;

/// The value of the first sample line that starts with `name{` and contains every label.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_responses_and_latency() {
    let recorder = mesh_proxy::telemetry::prometheus_recorder().expect("recorder");
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("only test in this binary installs a recorder");
    mesh_proxy::telemetry::describe_metrics();

    let app = App::spawn().await;
    let proxy = proxy_with(Proxy::new(config(app.addr())).with_prometheus(handle)).await;
    let mut c = h1(proxy.outbound).await;
    for path in ["/", "/", "/", "/status/404", "/status/503"] {
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
    // Let the closed connections be accounted.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let mut admin = h1(proxy.admin).await;
    let res = admin
        .send_request(get(proxy.admin, "/metrics", Version::HTTP_11))
        .await
        .expect("scrape");
    assert_eq!(res.status(), 200);
    let text = String::from_utf8(body_bytes(res.into_body()).await.to_vec()).expect("utf-8");
    let dst = format!("dst=\"{}\"", app.addr());
    let out = "direction=\"outbound\"";
    let inb = "direction=\"inbound\"";

    assert_eq!(
        sample(&text, "mesh_request_total", &[out, &dst]),
        Some(5.0),
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
        Some(3.0)
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
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "mesh_response_latency_seconds_bucket",
            &[out, &dst, "le=\"+Inf\""]
        ),
        Some(5.0)
    );
    assert!(
        sample(
            &text,
            "mesh_response_latency_seconds_bucket",
            &[out, &dst, "le=\"0.001\""]
        )
        .is_some()
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
    assert_eq!(
        sample(&text, "mesh_detect_total", &[out, "protocol=\"http/1\""]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "mesh_detect_total", &[inb, "protocol=\"http/2\""]),
        Some(1.0)
    );
    assert!(
        text.contains("# HELP mesh_request_total"),
        "help text for promtool"
    );
    assert!(text.contains("# TYPE mesh_response_latency_seconds histogram"));
}
