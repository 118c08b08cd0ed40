//! End-to-end load benchmark: the hello app direct versus through the proxy, in one
//! process, over loopback. HTTP/1.1 keep-alive and HTTP/2, fixed request counts.
//!
//! ```text
//! cargo bench -p mesh-benches --bench e2e            # defaults: 20000 requests, 16 connections
//! MESH_BENCH_REQUESTS=50000 MESH_BENCH_CONNS=64 cargo bench -p mesh-benches --bench e2e
//! ```
//!
//! The app and the proxy each run on their own single-threaded runtime and thread, like the
//! sidecar binary; the load generator runs on a third. This measures the proxy's added
//! latency and throughput relative to a direct connection on the same machine; for
//! comparisons with nginx and HAProxy use `../shared/bench/run.sh` against the sidecar binary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::Proxy;
use mesh_proxy::config::Config;
use mesh_test::app::App;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spawn_runtime<F, T>(f: F) -> T
where
    F: FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        rt.block_on(async move {
            let v = f().await;
            let _ = tx.send(v);
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap_or_else(|e| panic!("runtime thread: {e}"))
}

struct Report {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(addr: SocketAddr, h2: bool, conns: usize, total: usize) -> Report {
    let per_conn = total / conns;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let io = TokioIo::new(
                tokio::net::TcpStream::connect(addr)
                    .await
                    .unwrap_or_else(|e| panic!("connect: {e}")),
            );
            let mut lat = Vec::with_capacity(per_conn);
            if h2 {
                let (mut tx, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                tokio::spawn(conn);
                for _ in 0..per_conn {
                    let t = Instant::now();
                    let req = http::Request::get(format!("http://{addr}/"))
                        .body(Empty::<Bytes>::new())
                        .unwrap_or_else(|e| panic!("{e}"));
                    let res = tx.send_request(req).await.unwrap_or_else(|e| panic!("{e}"));
                    let _ = res.into_body().collect().await;
                    lat.push(t.elapsed());
                }
            } else {
                let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                tokio::spawn(conn);
                for _ in 0..per_conn {
                    let t = Instant::now();
                    let _ = tx.ready().await;
                    let req = http::Request::get("/")
                        .header("host", "bench")
                        .body(Empty::<Bytes>::new())
                        .unwrap_or_else(|e| panic!("{e}"));
                    let res = tx.send_request(req).await.unwrap_or_else(|e| panic!("{e}"));
                    let _ = res.into_body().collect().await;
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = start.elapsed();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Report {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn main() {
    let total = env("MESH_BENCH_REQUESTS", 20_000);
    let conns = env("MESH_BENCH_CONNS", 16).max(1);
    let app = spawn_runtime(|| Box::pin(async { App::spawn().await.addr() }));
    let proxy = spawn_runtime(move || {
        Box::pin(async move {
            let mut cfg = Config::default();
            let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
            cfg.admin.listen = any;
            cfg.outbound.listen = Some(any);
            cfg.inbound.enabled = false;
            cfg.outbound.target = Some(app.into());
            let bound = Proxy::new(cfg)
                .bind()
                .await
                .unwrap_or_else(|e| panic!("bind: {e}"));
            let addr = bound.outbound_addr().unwrap_or(any);
            tokio::spawn(bound.run());
            addr
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    println!("{total} requests over {conns} connections, GET / (16-byte body)");
    println!(
        "{:<10} {:<8} {:>12} {:>10} {:>10} {:>14}",
        "scenario", "target", "req/s", "p50 µs", "p99 µs", "ratio/direct"
    );
    for (name, h2) in [("http/1.1", false), ("h2c", true)] {
        // Warm up pools and caches.
        rt.block_on(load(proxy, h2, conns, conns * 50));
        let direct = rt.block_on(load(app, h2, conns, total));
        let through = rt.block_on(load(proxy, h2, conns, total));
        for (target, r) in [("direct", &direct), ("mesh", &through)] {
            println!(
                "{:<10} {:<8} {:>12.0} {:>10} {:>10} {:>14.2}",
                name,
                target,
                r.rps,
                r.p50.as_micros(),
                r.p99.as_micros(),
                r.rps / direct.rps
            );
        }
    }
}
