//! Inbound authorization through the sidecar (issue 14): each policy × plaintext, the right
//! identity and a wrong one × HTTP and TCP; path rules that bytes which are not HTTP cannot
//! dodge.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod mesh_tls_support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use mesh_proxy::config::{Config, PolicyConfig};
use mesh_test::app::App;
use mesh_tls::creds::{Expected, client_config};
use mesh_tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Who connects, in the authorization table.
#[derive(Clone, Copy, Debug)]
enum Who {
    Plaintext,
    MeshA,
    MeshC,
}

async fn http_status(b: SocketAddr, ids: &Ids, who: Who, path: &str) -> u16 {
    let answer = match who {
        Who::Plaintext => get_over(TcpStream::connect(b).await.expect("connect"), path).await,
        Who::MeshA | Who::MeshC => {
            let name = if matches!(who, Who::MeshA) { "a" } else { "c" };
            let tls = tls_to(b, mesh_client(&ids.creds(name)))
                .await
                .expect("handshake");
            get_over(tls, path).await
        }
    };
    answer.expect("an answer").0
}

async fn tcp_allowed(b: SocketAddr, ids: &Ids, who: Who) -> bool {
    let mut io: Box<dyn AsyncStream> = match who {
        Who::Plaintext => Box::new(TcpStream::connect(b).await.expect("connect")),
        Who::MeshA | Who::MeshC => {
            let name = if matches!(who, Who::MeshA) { "a" } else { "c" };
            let cfg = client_config(
                &ids.creds(name),
                &provider(),
                Expected::Identity(B.parse().expect("id")),
                Vec::new(),
            )
            .expect("config");
            Box::new(tls_to(b, cfg).await.expect("handshake"))
        }
    };
    io.write_all(OPAQUE).await.expect("write");
    io.flush().await.expect("flush");
    let mut buf = vec![0u8; OPAQUE.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && buf == OPAQUE
}

trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

#[tokio::test]
async fn the_authorization_table() {
    let ids = Ids::new("authz");
    let app = App::spawn().await;
    let (echo, conns) = echo_server().await;
    let who = [Who::Plaintext, Who::MeshA, Who::MeshC];
    // policy → allowed for [plaintext, A, C]
    let table: [(&str, [bool; 3]); 4] = [
        ("deny", [false, false, false]),
        ("all-unauthenticated", [true, true, true]),
        ("all-authenticated", [false, true, true]),
        ("spiffe://td.example/ns/a/*", [false, true, false]),
    ];
    for (policy, want) in table {
        let set = |cfg: &mut Config| {
            cfg.inbound.policy = PolicyConfig(policy.parse().expect("policy"));
        };
        let http = sidecar_b(app.addr(), &ids.dir("b"), set).await;
        let tcp = sidecar_b(echo, &ids.dir("b"), set).await;
        for (w, allowed) in who.iter().zip(want) {
            let status = http_status(http.inbound, &ids, *w, "/").await;
            assert_eq!(
                status,
                if allowed { 200 } else { 403 },
                "{policy} HTTP {w:?}"
            );
            let before = conns.load(Ordering::SeqCst);
            let got = tcp_allowed(tcp.inbound, &ids, *w).await;
            assert_eq!(got, allowed, "{policy} TCP {w:?}");
            if !allowed {
                assert_eq!(
                    conns.load(Ordering::SeqCst),
                    before,
                    "{policy} TCP {w:?}: denied, yet the app was reached"
                );
            }
        }
        let metrics = scrape(http.admin).await;
        let rule = format!("rule=\"default={policy}\"");
        let denied = want.iter().filter(|a| !**a).count();
        if denied > 0 {
            let n = sample(
                &metrics,
                "mesh_authz_decisions_total",
                &[&rule, "decision=\"deny\""],
            )
            .expect("deny decisions counted");
            assert!(n >= denied as f64, "{policy}: {n}");
        }
    }

    // Per path: /admin only for ns c; the rest for any mesh identity.
    let b = sidecar_b(app.addr(), &ids.dir("b"), |cfg| {
        cfg.inbound.policy = PolicyConfig("all-authenticated".parse().expect("p"));
        cfg.inbound.paths.insert(
            "/admin".into(),
            PolicyConfig("spiffe://td.example/ns/c/*".parse().expect("p")),
        );
    })
    .await;
    assert_eq!(http_status(b.inbound, &ids, Who::MeshA, "/x").await, 404);
    assert_eq!(
        http_status(b.inbound, &ids, Who::MeshA, "/admin/x").await,
        403
    );
    assert_eq!(
        http_status(b.inbound, &ids, Who::MeshC, "/admin/x").await,
        404
    );
    assert_eq!(
        http_status(b.inbound, &ids, Who::Plaintext, "/x").await,
        403
    );
}

#[tokio::test]
async fn bytes_that_are_not_http_cannot_dodge_path_rules() {
    let ids = Ids::new("unparsed");
    let app = App::spawn().await;
    let b = sidecar_b(app.addr(), &ids.dir("b"), |cfg| {
        cfg.limits.detect_timeout = Duration::from_millis(200);
        cfg.inbound
            .paths
            .insert("/admin".into(), PolicyConfig("deny".parse().expect("p")));
    })
    .await;
    // Silent past the detect timeout (so the connection is not detected as HTTP), then a
    // request for a denied path with a forged identity: closed, nothing reaches the app.
    let mut s = TcpStream::connect(b.inbound).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _ = s
        .write_all(b"GET /admin HTTP/1.1\r\nhost: b\r\nl5d-client-id: spiffe://td.example/ns/ops/sa/x\r\n\r\n")
        .await;
    let (text, _) = read_until_close(&mut s, Duration::from_secs(3)).await;
    assert!(text.is_empty(), "answered: {text:?}");
    assert!(app.seen().is_empty(), "the bytes reached the app");
    // HTTP on the same port is still held to the rules, and served where allowed.
    assert_eq!(
        http_status(b.inbound, &ids, Who::Plaintext, "/admin/x").await,
        403
    );
    assert_eq!(
        http_status(b.inbound, &ids, Who::Plaintext, "/x").await,
        404
    );
}
