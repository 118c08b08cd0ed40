//! Configuration settings observed through their effect, not read back: the upstream pool
//! settings seen as upstream connection counts, a disabled listener seen as a closed port,
//! and the header-name case a client and an upstream see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_proxy::Proxy;
use mesh_proxy::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Long enough for any local exchange on a busy machine, short enough to fail fast.
const WAIT: Duration = Duration::from_secs(5);

// ---- [client] pool settings -----------------------------------------------------------------

/// An HTTP/1 upstream that counts its connections. `GET /hold?gen=N` answers once the gate
/// reaches N; anything else answers at once.
#[derive(Clone)]
struct Counting {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    gate: Arc<watch::Sender<u64>>,
}

impl Counting {
    async fn spawn() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up = Counting {
            addr: l.local_addr().expect("addr"),
            accepted: Arc::default(),
            open: Arc::default(),
            in_flight: Arc::default(),
            gate: Arc::new(watch::Sender::new(0)),
        };
        let u = up.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                u.accepted.fetch_add(1, Ordering::SeqCst);
                u.open.fetch_add(1, Ordering::SeqCst);
                let u = u.clone();
                tokio::spawn(async move {
                    let u2 = u.clone();
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let u = u2.clone();
                        async move {
                            let gen_wanted = req
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("gen="))
                                .and_then(|v| v.parse::<u64>().ok());
                            if let Some(n) = gen_wanted {
                                u.in_flight.fetch_add(1, Ordering::SeqCst);
                                let mut rx = u.gate.subscribe();
                                let _ = rx.wait_for(|g| *g >= n).await;
                                u.in_flight.fetch_sub(1, Ordering::SeqCst);
                            }
                            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                    u.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        up
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Sends `/hold?gen=N` on each client connection at once, so each needs its own
    /// upstream connection, then releases them together.
    async fn concurrent_round(
        &self,
        clients: &mut [hyper::client::conn::http1::SendRequest<TestBody>],
        proxy: SocketAddr,
        generation: u64,
    ) {
        let path = format!("/hold?gen={generation}");
        let n = clients.len();
        let calls = clients.iter_mut().map(|c| {
            let req = get(proxy, &path, Version::HTTP_11);
            async move {
                c.ready().await.expect("client ready");
                let res = c.send_request(req).await.expect("response");
                assert_eq!(res.status(), StatusCode::OK);
                assert_eq!(body_bytes(res.into_body()).await, "ok");
            }
        });
        let release = async {
            eventually(WAIT, "all held at the upstream", || {
                self.in_flight.load(Ordering::SeqCst) == n
            })
            .await;
            self.gate.send_replace(generation);
        };
        let (_, ()) = tokio::time::timeout(
            WAIT,
            futures_util::future::join(futures_util::future::join_all(calls), release),
        )
        .await
        .expect("round done");
    }
}

async fn h1_clients(
    addr: SocketAddr,
    n: usize,
) -> Vec<hyper::client::conn::http1::SendRequest<TestBody>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(h1(addr).await);
    }
    out
}

#[tokio::test]
async fn max_idle_per_endpoint_bounds_the_kept_upstream_connections() {
    for (max_idle, kept) in [(1, 1), (256, 3)] {
        let up = Counting::spawn().await;
        let mut cfg = config(up.addr);
        cfg.client.max_idle_per_endpoint = max_idle;
        let proxy = proxy(cfg).await;
        let mut clients = h1_clients(proxy.outbound, 3).await;

        up.concurrent_round(&mut clients, proxy.outbound, 1).await;
        assert_eq!(
            up.accepted(),
            3,
            "three requests at once, three connections"
        );
        // Surplus connections are closed, the rest kept open for reuse.
        eventually(
            WAIT,
            &format!("{kept} kept with max_idle {max_idle}"),
            || up.open() == kept,
        )
        .await;

        // Three at once again: the kept connections are reused, the rest opened anew.
        up.concurrent_round(&mut clients, proxy.outbound, 2).await;
        assert_eq!(
            up.accepted(),
            3 + (3 - kept),
            "max_idle_per_endpoint = {max_idle}: {kept} reused"
        );
    }
}

#[tokio::test]
async fn pooled_upstream_connections_expire_after_the_client_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(200);
    let up = Counting::spawn().await;
    let mut cfg = config(up.addr);
    cfg.client.idle_timeout = IDLE;
    let proxy = proxy(cfg).await;
    let mut c = h1(proxy.outbound).await;
    let mut hello = async || {
        c.ready().await.expect("ready");
        let res = c
            .send_request(get(proxy.outbound, "/", Version::HTTP_11))
            .await
            .expect("response");
        assert_eq!(res.status(), StatusCode::OK);
        let _ = body_bytes(res.into_body()).await;
    };
    hello().await;
    hello().await;
    assert_eq!(up.accepted(), 1, "reused while fresh");
    // Not synchronisation: the behaviour under test is what the passing of this time does.
    tokio::time::sleep(IDLE * 2).await;
    hello().await;
    assert_eq!(up.accepted(), 2, "an expired idle connection is not reused");
    eventually(WAIT, "the expired connection closed", || up.open() == 1).await;
}

// ---- enabled = false ------------------------------------------------------------------------

#[tokio::test]
async fn a_disabled_listener_is_not_bound() {
    let app = mesh_test::app::App::spawn().await;
    for disabled in ["inbound", "outbound"] {
        // A free port for the disabled listener, so "nothing listens there" is checkable.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr");
        drop(l);
        let mut cfg: Config = config(app.addr());
        // Inbound and outbound are different section types, so each branch sets its own.
        if disabled == "inbound" {
            cfg.inbound.enabled = false;
            cfg.inbound.listen = Some(port);
            cfg.outbound.enabled = true;
        } else {
            cfg.outbound.enabled = false;
            cfg.outbound.listen = Some(port);
            cfg.inbound.enabled = true;
        }
        let bound = Proxy::new(cfg).bind().await.expect("bind");
        let (off_addr, on_addr) = if disabled == "inbound" {
            (bound.inbound_addr(), bound.outbound_addr())
        } else {
            (bound.outbound_addr(), bound.inbound_addr())
        };
        assert_eq!(off_addr, None, "{disabled} reports no address");
        let on_addr = on_addr.expect("the other listener is bound");
        let shutdown = bound.shutdown_handle();
        let task = tokio::spawn(bound.run());
        let err = TcpStream::connect(port)
            .await
            .expect_err("nothing listens on the disabled listener's address");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{disabled}"
        );
        let res = h1(on_addr)
            .await
            .send_request(get(on_addr, "/", Version::HTTP_11))
            .await
            .expect("the enabled listener serves");
        assert_eq!(res.status(), StatusCode::OK);
        shutdown.trigger();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("proxy stops")
            .expect("no panic");
    }
}

// ---- header-name case -----------------------------------------------------------------------

/// A raw upstream that answers one request with `answer` and hands back the request head
/// it read.
async fn head_recording_upstream(
    answer: &'static [u8],
) -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed mid-head");
            head.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
        s.write_all(answer).await.expect("write");
        let mut rest = [0u8; 64];
        let _ = s.read(&mut rest).await;
    });
    (addr, rx)
}

#[tokio::test]
async fn header_names_are_lower_cased_both_ways() {
    // Decision: header names leave the proxy in lower case (hyper's normal form; HTTP/2
    // requires it; Linkerd 2 and Envoy do the same). Field names are case-insensitive
    // (RFC 9110 §5.1), so only a broken peer can notice.
    let (up, head) =
        head_recording_upstream(b"HTTP/1.1 200 OK\r\nX-Reply: w\r\nContent-Length: 2\r\n\r\nok")
            .await;
    let proxy = proxy(config(up)).await;
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nX-Custom-Header: v\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"ok") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed before the whole response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let head = tokio::time::timeout(WAIT, head)
        .await
        .expect("upstream saw the request")
        .expect("head");
    assert!(
        head.contains("\r\nx-custom-header: v\r\n") && !head.contains("X-Custom-Header"),
        "the upstream sees the name lower-cased: {head:?}"
    );
    assert!(head.contains("\r\nhost: app\r\n"), "Host too: {head:?}");
    let response = String::from_utf8_lossy(&got);
    assert!(
        response.contains("\r\nx-reply: w\r\n") && !response.contains("X-Reply"),
        "the client sees the name lower-cased: {response:?}"
    );
}
