//! HTTP over mesh TLS through mesh-core's endpoint client: the connect stack wrapped by
//! `TlsConnect`, HTTP/1.1 and HTTP/2 each negotiated by ALPN, and a wrong peer identity
//! answered as a named 502.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_core::body::RequestBody;
use mesh_core::client::{ClientConfig, HttpEndpoint};
use mesh_core::connect::TcpConnect;
use mesh_core::errors::classify;
use mesh_core::target::Endpoint;
use mesh_tls::ca::Ca;
use mesh_tls::connect::TlsConnect;
use mesh_tls::creds::{Credentials, peer_identity, server_config};
use mesh_tls::store::CredentialStore;
use rustls::crypto::CryptoProvider;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// An HTTP server behind mesh TLS that answers with the protocol it was asked in, the ALPN
/// the handshake chose, and the client identity it verified.
async fn tls_app(creds: &Credentials) -> std::net::SocketAddr {
    let cfg = server_config(
        creds,
        &provider(),
        vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    )
    .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let alpn = conn
                    .alpn_protocol()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .unwrap_or_default();
                let peer = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(peer_identity)
                    .map(|i| i.to_string())
                    .unwrap_or_default();
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let text = format!("{:?} alpn={alpn} peer={peer}", req.version());
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(text),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http1_and_http2_cross_the_mtls_hop_in_their_own_version() {
    let ca = Ca::new("td.example", Duration::from_secs(3600)).expect("ca");
    let base = std::env::temp_dir().join(format!("mesh-mtls-http-{}", std::process::id()));
    for (name, id) in [
        ("client", "spiffe://td.example/ns/a/sa/client"),
        ("server", "spiffe://td.example/ns/b/sa/server"),
    ] {
        ca.issue(&id.parse().expect("id"), Duration::from_secs(3600))
            .expect("issue")
            .write(&base.join(name))
            .expect("write");
    }
    let client = Arc::new(Credentials::load(&base.join("client"), &provider()).expect("client"));
    let server = Credentials::load(&base.join("server"), &provider()).expect("server");
    let _ = std::fs::remove_dir_all(&base);
    let addr = tls_app(&server).await;
    let store = CredentialStore::fixed((*client).clone(), provider());
    let connect = TlsConnect::new(TcpConnect::default(), Arc::new(store));
    let endpoint = HttpEndpoint::new(
        Endpoint::new(addr).with_identity(server.identity().clone()),
        connect.clone(),
        ClientConfig::default(),
    );
    for version in [http::Version::HTTP_11, http::Version::HTTP_2] {
        let req = http::Request::builder()
            .version(version)
            .uri(format!("http://{addr}/"))
            .header("host", addr.to_string())
            .body(RequestBody::empty())
            .expect("request");
        let res = endpoint.send(req).await.expect("response");
        let body = res.into_body().collect().await.expect("body").to_bytes();
        let want_alpn = if version == http::Version::HTTP_2 {
            "h2"
        } else {
            "http/1.1"
        };
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("{version:?} alpn={want_alpn} peer=spiffe://td.example/ns/a/sa/client")
        );
    }

    // The endpoint is expected to be someone else: the request fails as a 502 naming both.
    let wrong = HttpEndpoint::new(
        Endpoint::new(addr).with_identity(
            "spiffe://td.example/ns/b/sa/impostor-check"
                .parse()
                .expect("id"),
        ),
        connect,
        ClientConfig::default(),
    );
    let req = http::Request::builder()
        .uri("/")
        .header("host", addr.to_string())
        .body(RequestBody::empty())
        .expect("request");
    let err = wrong.send(req).await.expect_err("mismatch");
    let c = classify(err.as_ref());
    assert_eq!(c.status, http::StatusCode::BAD_GATEWAY);
    assert!(
        c.message
            .contains("expected spiffe://td.example/ns/b/sa/impostor-check")
            && c.message
                .contains("presented spiffe://td.example/ns/b/sa/server"),
        "{}",
        c.message
    );
}
