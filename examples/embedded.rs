//! Embedding mesh: a program calls the hello app through mesh-core's layers — metrics, a
//! response deadline, hop-by-hop rules, the endpoint client — with no sidecar in between.
//!
//! ```text
//! cargo run --example embedded
//! ```
//!
//! It starts the hello app on `127.0.0.1:0`, then makes four calls through one client stack:
//! an HTTP/1.1 `GET /`, a gRPC `SayHello` over h2c (a tonic client over the same stack), a
//! gRPC call the app fails with `NOT_FOUND`, and a `GET /slow` that the deadline cuts. It
//! prints what each call got and the `mesh_` metrics the stack recorded, and exits non-zero
//! if any call does not behave so. `cargo test` runs the same program (see `tests` below).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use http::uri::PathAndQuery;
use http_body_util::BodyExt as _;
use mesh_core::body::RequestBody;
use mesh_core::client::{ClientConfig, HttpEndpoint};
use mesh_core::connect::TcpConnect;
use mesh_core::errors::ResponseTimeout;
use mesh_core::headers::{HopByHop, HopByHopLayer};
use mesh_core::metrics::{HttpMetrics, RecordHttp, RecordHttpLayer};
use mesh_core::target::Endpoint;
use mesh_core::timeout::{Timeout, TimeoutLayer};
use mesh_test::app::App;
use mesh_test::grpc::{HelloReply, HelloRequest, SAY_HELLO};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tonic_prost::ProstCodec;
use tower::{ServiceBuilder, ServiceExt as _};

/// The name the stack's metrics and errors use for the hello app.
const DST: &str = "hello";
/// How long a call may wait for its response head.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);

/// mesh-core's client stack for one endpoint, outermost first.
type Client = RecordHttp<Timeout<HopByHop<HttpEndpoint>>>;

/// Builds the client stack for the app at `addr`. The metric handles resolve here, so the
/// recorder must already be installed.
fn client(addr: SocketAddr) -> Client {
    let metrics = Arc::new(HttpMetrics::new("outbound", DST));
    ServiceBuilder::new()
        // Outermost: counts what the program sees, when each response ends (so a gRPC
        // status in the trailers decides success). Errors stay errors, not counted responses.
        .layer(RecordHttpLayer::new(metrics))
        // The deadline for the response head, connecting included.
        .layer(TimeoutLayer::new(DST, RESPONSE_TIMEOUT))
        // Next to the wire: connection-level headers stay on this hop; `TE: trailers` stays.
        .layer(HopByHopLayer::new())
        // Pooled HTTP/1 and one shared HTTP/2 connection, over plain TCP.
        .service(HttpEndpoint::new(
            Endpoint::new(addr),
            TcpConnect::default(),
            ClientConfig::default(),
        ))
}

/// What the program got.
#[derive(Debug)]
struct Report {
    /// The body of `GET /`.
    http: String,
    /// The `SayHello` reply.
    grpc: String,
    /// The status of the call the app fails.
    grpc_error: tonic::Status,
    /// The `GET /slow` error.
    timeout: String,
    /// What the app saw: each request's method, path and HTTP version.
    seen: Vec<String>,
    /// The connections the app accepted.
    connections: usize,
    /// The Prometheus exposition of the `mesh_` metrics, histogram buckets left out.
    metrics: String,
}

fn main() -> ExitCode {
    match run() {
        Ok(report) => {
            println!("GET / (HTTP/1.1)            -> 200 {:?}", report.http);
            println!("SayHello(\"embedded\") (h2c) -> {:?}", report.grpc);
            println!(
                "SayHello(\"fail:nobody\")     -> {:?} {:?}",
                report.grpc_error.code(),
                report.grpc_error.message()
            );
            println!("GET /slow?ms=5000           -> {}", report.timeout);
            println!(
                "\nthe app saw, over {} connections: {}",
                report.connections,
                report.seen.join(", ")
            );
            println!("\nmetrics recorded by the stack:\n{}", report.metrics);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the metrics recorder, starts the hello app and makes the four calls.
fn run() -> anyhow::Result<Report> {
    // The process-wide recorder is the program's to install (libraries never do), with
    // mesh's latency buckets so the histogram aggregates across processes.
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(mesh_core::metrics::RESPONSE_LATENCY_SECONDS.to_owned()),
            mesh_core::metrics::LATENCY_BUCKETS,
        )?
        .build_recorder();
    let prometheus = recorder.handle();
    metrics::set_global_recorder(recorder).context("cannot install the metrics recorder")?;
    mesh_core::metrics::describe();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(calls(prometheus))
}

async fn calls(prometheus: PrometheusHandle) -> anyhow::Result<Report> {
    let app = App::spawn().await;
    let client = client(app.addr());

    // HTTP/1.1: an ordinary request, origin-form, with its Host.
    let req = http::Request::get("/")
        .header(http::header::HOST, DST)
        .body(RequestBody::empty())?;
    let res = client.clone().oneshot(req).await.map_err(|e| anyhow!(e))?;
    if res.status() != http::StatusCode::OK {
        bail!("GET / answered {}", res.status());
    }
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .to_bytes();
    let http = String::from_utf8_lossy(&body).trim_end().to_owned();

    // gRPC over h2c: tonic's client over the same stack. Tonic sends its own body type;
    // `RequestBody::from_body` takes any `http_body::Body<Data = Bytes>`.
    let origin: http::Uri = format!("http://{}", app.addr()).parse()?;
    let mut grpc = tonic::client::Grpc::with_origin(
        client
            .clone()
            .map_request(|req: http::Request<tonic::body::Body>| req.map(RequestBody::from_body)),
        origin,
    );
    let reply = say_hello(&mut grpc, "embedded").await?;
    let grpc_error = match say_hello(&mut grpc, "fail:nobody").await {
        Ok(reply) => bail!("SayHello(\"fail:nobody\") succeeded: {:?}", reply.message),
        Err(status) if status.code() == tonic::Code::NotFound => status,
        Err(status) => bail!("SayHello(\"fail:nobody\") failed with {status}, not NOT_FOUND"),
    };

    // The deadline: the app answers after 5 s, the stack gives up after 300 ms.
    let req = http::Request::get("/slow?ms=5000")
        .header(http::header::HOST, DST)
        .body(RequestBody::empty())?;
    let timeout = match client.clone().oneshot(req).await {
        Ok(res) => bail!("GET /slow answered {} within the deadline", res.status()),
        Err(e) if e.is::<ResponseTimeout>() => e.to_string(),
        Err(e) => bail!("GET /slow failed, but not with the deadline: {e}"),
    };

    let seen = app
        .seen()
        .iter()
        .map(|s| format!("{} {} {:?}", s.method, s.uri.path(), s.version))
        .collect();
    let metrics = prometheus
        .render()
        .lines()
        .filter(|l| l.starts_with("mesh_") && !l.contains("_bucket{"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Report {
        http,
        grpc: reply.message,
        grpc_error,
        timeout,
        seen,
        connections: app.connections(),
        metrics,
    })
}

/// Calls `hello.Greeter/SayHello` with `name`; failures that are not the app's answer
/// (the connection, the deadline) come back as `UNAVAILABLE` / `DEADLINE_EXCEEDED`.
async fn say_hello<S>(
    grpc: &mut tonic::client::Grpc<S>,
    name: &str,
) -> Result<HelloReply, tonic::Status>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<mesh_core::BoxError>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<mesh_core::BoxError>,
{
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.into().to_string()))?;
    let req = tonic::Request::new(HelloRequest {
        name: name.to_owned(),
        count: 0,
    });
    let res = grpc
        .unary(
            req,
            PathAndQuery::from_static(SAY_HELLO),
            ProstCodec::<HelloRequest, HelloReply>::default(),
        )
        .await?;
    Ok(res.into_inner())
}

/// The same program, under `cargo test` (`test = true` in Cargo.toml): CI runs the embedded
/// path in-process, and the example cannot rot.
#[cfg(test)]
mod tests {
    /// The value of the sample of `name` whose labels include every one of `labels`.
    fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
        metrics.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            (rest.starts_with('{') && labels.iter().all(|l| rest.contains(l)))
                .then(|| value.parse().ok())?
        })
    }

    #[test]
    fn calls_the_app_through_the_layers() {
        let report = super::run().expect("every call behaves as the example expects");
        assert_eq!(report.http, "hello from mesh");
        assert_eq!(report.grpc, "hello, embedded");
        assert_eq!(report.grpc_error.message(), "nobody");
        assert!(
            report.timeout.contains("300ms"),
            "the deadline names its duration: {}",
            report.timeout
        );

        // gRPC went over HTTP/2 (h2c), plain requests over HTTP/1.1, straight to the app:
        // one pooled HTTP/1 connection (`/slow` reused it) and one HTTP/2 connection.
        assert_eq!(
            report.seen,
            [
                "GET / HTTP/1.1",
                "POST /hello.Greeter/SayHello HTTP/2.0",
                "POST /hello.Greeter/SayHello HTTP/2.0",
                "GET /slow HTTP/1.1",
            ]
        );
        assert_eq!(report.connections, 2);

        let m = &report.metrics;
        let dst = r#"dst="hello""#;
        // Four requests went through the metrics layer...
        assert_eq!(sample(m, "mesh_request_total", &[dst]), Some(4.0), "{m}");
        // ...three ended as responses: `GET /` and `SayHello` succeeded; the NOT_FOUND,
        // carried with a 200 head, is a failure. The timed-out call is an error, not a
        // response.
        let ok = [dst, r#"status_code="200""#, r#"classification="success""#];
        assert_eq!(sample(m, "mesh_response_total", &ok), Some(2.0), "{m}");
        let failed = [dst, r#"status_code="200""#, r#"classification="failure""#];
        assert_eq!(sample(m, "mesh_response_total", &failed), Some(1.0), "{m}");
        // Latency is recorded for each response head.
        assert_eq!(
            sample(m, "mesh_response_latency_seconds_count", &[dst]),
            Some(3.0),
            "{m}"
        );
    }
}
