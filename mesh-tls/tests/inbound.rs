//! The inbound side: a ClientHello read by mesh-core's detection — even fragmented over many
//! TLS records — names this workload's mesh server name, so the connection is terminated and
//! the peer's identity is known; other TLS passes through.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use mesh_core::detect::{ClientHello, DetectConfig, Outcome, Protocol, detect};
use mesh_test::tls::Fragmenting;
use mesh_tls::accept::{InboundKind, MeshAcceptor};
use mesh_tls::ca::Ca;
use mesh_tls::creds::{Credentials, Expected, client_config, server_name};
use mesh_tls::store::CredentialStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[tokio::test]
async fn a_fragmented_mesh_client_hello_is_terminated_and_names_the_peer() {
    let ca = Ca::new("td.example", Duration::from_secs(3600)).expect("ca");
    let base = std::env::temp_dir().join(format!("mesh-inbound-{}", std::process::id()));
    for (name, id) in [
        ("a", "spiffe://td.example/ns/a/sa/client"),
        ("b", "spiffe://td.example/ns/b/sa/server"),
    ] {
        ca.issue(&id.parse().expect("id"), Duration::from_secs(3600))
            .expect("issue")
            .write(&base.join(name))
            .expect("write");
    }
    let a = Credentials::load(&base.join("a"), &provider()).expect("a");
    let b = Credentials::load(&base.join("b"), &provider()).expect("b");
    let _ = std::fs::remove_dir_all(&base);
    let acceptor = MeshAcceptor::new(Arc::new(CredentialStore::fixed(b.clone(), provider())))
        .expect("acceptor");
    assert_eq!(
        &*acceptor.server_name(),
        "server.b.serviceaccount.identity.td.example"
    );

    for size in [16, 100, 4096] {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = acceptor.clone();
        let server = tokio::spawn(async move {
            let (outcome, io) = detect(DetectConfig::default(), server_io)
                .await
                .expect("detect");
            let Outcome::Detected(Protocol::Tls(hello)) = outcome else {
                panic!("fragments of {size}: detected {outcome:?}");
            };
            assert_eq!(
                acceptor.classify(Some(&hello)),
                InboundKind::Mesh,
                "fragments of {size}: {hello:?}"
            );
            let (mut tls, peer) = acceptor.accept(io).await.expect("accept");
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.expect("read");
            tls.write_all(&buf).await.expect("echo");
            tls.flush().await.expect("flush");
            peer
        });
        let cfg = client_config(
            &a,
            &provider(),
            Expected::Identity(b.identity().clone()),
            vec![b"h2".to_vec()],
        )
        .expect("client");
        let connector = tokio_rustls::TlsConnector::from(cfg);
        let io = Fragmenting::new(client_io, size);
        let name = ServerName::try_from(server_name(b.identity())).expect("name");
        let mut tls = connector.connect(name, io).await.expect("connect");
        let records = tls.get_ref().0.records();
        if size == 16 {
            assert!(
                records > 10,
                "the hello really went out in many records: {records}"
            );
        }
        tls.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        let peer = server.await.expect("server");
        assert_eq!(&peer, a.identity(), "fragments of {size}");
    }
}

#[test]
fn other_tls_passes_through_and_no_tls_is_plaintext() {
    let ca = Ca::new("td.example", Duration::from_secs(3600)).expect("ca");
    let dir = std::env::temp_dir().join(format!("mesh-inbound-kind-{}", std::process::id()));
    ca.issue(
        &"spiffe://td.example/ns/b/sa/server".parse().expect("id"),
        Duration::from_secs(3600),
    )
    .expect("issue")
    .write(&dir)
    .expect("write");
    let b = Credentials::load(&dir, &provider()).expect("b");
    let _ = std::fs::remove_dir_all(&dir);
    let acceptor = MeshAcceptor::new(Arc::new(CredentialStore::fixed(b.clone(), provider())))
        .expect("acceptor");
    let other = ClientHello {
        server_name: Some("www.example.com".into()),
        alpn: vec![],
    };
    assert_eq!(acceptor.classify(Some(&other)), InboundKind::PassThrough);
    assert_eq!(
        acceptor.classify(Some(&ClientHello::default())),
        InboundKind::PassThrough
    );
    assert_eq!(acceptor.classify(None), InboundKind::Plaintext);
    // The trust domain's mesh names are mesh TLS: any workload of it, or another workload
    // (whose client then fails the handshake naming both identities).
    let sni = |name: &str| ClientHello {
        server_name: Some(name.into()),
        alpn: vec![],
    };
    for mesh in [
        "identity.td.example",
        "server.b.serviceaccount.identity.td.example",
        "x.c.serviceaccount.identity.td.example",
    ] {
        assert_eq!(
            acceptor.classify(Some(&sni(mesh))),
            InboundKind::Mesh,
            "{mesh}"
        );
    }
    for other in [
        "identity.other.example",
        "evilidentity.td.example",
        "x.identity.td.example.com",
    ] {
        assert_eq!(
            acceptor.classify(Some(&sni(other))),
            InboundKind::PassThrough,
            "{other}"
        );
    }
}
