//! Mesh TLS between two workloads, in process on 127.0.0.1:0: a real rustls handshake with
//! certificates from the mesh CA, and each way it must fail.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_tls::Identity;
use mesh_tls::ca::Ca;
use mesh_tls::creds::{
    Credentials, Expected, client_config, peer_identity, server_config, server_name,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn id(s: &str) -> Identity {
    s.parse().expect("identity")
}

struct Dirs(PathBuf);

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Issues `ids` from `ca` into directories under a fresh temp dir and loads them.
fn creds(ca: &Ca, ids: &[&str], lifetime: Duration) -> (Dirs, Vec<Credentials>) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let base = std::env::temp_dir().join(format!(
        "mesh-mtls-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let out = ids
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let dir = base.join(i.to_string());
            ca.issue(&id(s), lifetime)
                .expect("issue")
                .write(&dir)
                .expect("write");
            Credentials::load(&dir, &provider()).expect("load")
        })
        .collect();
    (Dirs(base), out)
}

/// A server that completes mesh TLS, reports the client's identity and ALPN, and echoes.
async fn server(
    creds: &Credentials,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<(Option<Identity>, Option<Vec<u8>>), String>>,
) {
    let cfg = server_config(
        creds,
        &provider(),
        vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(s).await {
                    Ok(mut tls) => {
                        let (_, conn) = tls.get_ref();
                        let peer = conn
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(peer_identity);
                        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                        let _ = tx.send(Ok((peer, alpn)));
                        let mut buf = [0u8; 5];
                        if tls.read_exact(&mut buf).await.is_ok() {
                            let _ = tls.write_all(&buf).await;
                            let _ = tls.flush().await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn connect(
    addr: std::net::SocketAddr,
    client: &Credentials,
    expected: Expected,
    sni: &str,
) -> Result<(), String> {
    let cfg =
        client_config(client, &provider(), expected, vec![b"h2".to_vec()]).expect("client config");
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_owned()).expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    assert_eq!(&buf, b"hello");
    Ok(())
}

#[tokio::test]
async fn mesh_tls_verifies_both_identities_and_carries_alpn() {
    let ca = Ca::new("td.example", Duration::from_secs(3600)).expect("ca");
    let (_dirs, c) = creds(
        &ca,
        &[
            "spiffe://td.example/ns/a/sa/client",
            "spiffe://td.example/ns/b/sa/server",
        ],
        Duration::from_secs(3600),
    );
    let (addr, mut seen) = server(&c[1]).await;
    let server_id = c[1].identity().clone();
    assert_eq!(
        server_name(&server_id),
        "server.b.serviceaccount.identity.td.example"
    );
    connect(
        addr,
        &c[0],
        Expected::Identity(server_id.clone()),
        &server_name(&server_id),
    )
    .await
    .expect("handshake");
    let (peer, alpn) = seen.recv().await.expect("seen").expect("accepted");
    assert_eq!(
        peer,
        Some(c[0].identity().clone()),
        "the server sees the client's identity"
    );
    assert_eq!(
        alpn.as_deref(),
        Some(&b"h2"[..]),
        "ALPN carries the application protocol"
    );
    // With no expected identity, any identity of the trust domain is accepted.
    connect(
        addr,
        &c[0],
        Expected::TrustDomain("td.example".into()),
        "x.identity.td.example",
    )
    .await
    .expect("trust-domain handshake");
}

#[tokio::test]
async fn a_wrong_identity_or_a_foreign_ca_fails_the_handshake_with_a_named_reason() {
    let ca = Ca::new("td.example", Duration::from_secs(3600)).expect("ca");
    let (_d, c) = creds(
        &ca,
        &[
            "spiffe://td.example/ns/a/sa/client",
            "spiffe://td.example/ns/b/sa/server",
        ],
        Duration::from_secs(3600),
    );
    let (addr, _seen) = server(&c[1]).await;
    let err = connect(
        addr,
        &c[0],
        Expected::Identity(id("spiffe://td.example/ns/b/sa/other")),
        "other.b.serviceaccount.identity.td.example",
    )
    .await
    .expect_err("mismatch");
    assert!(
        err.contains("IdentityMismatch")
            && err.contains("spiffe://td.example/ns/b/sa/other")
            && err.contains("spiffe://td.example/ns/b/sa/server"),
        "{err}"
    );
    let err = connect(
        addr,
        &c[0],
        Expected::TrustDomain("other.example".into()),
        "x",
    )
    .await
    .expect_err("other trust domain");
    assert!(err.contains("any identity of other.example"), "{err}");
    // A server whose certificate comes from another CA (same trust domain name).
    let rogue = Ca::new("td.example", Duration::from_secs(3600)).expect("rogue ca");
    let (_d2, r) = creds(
        &rogue,
        &["spiffe://td.example/ns/b/sa/server"],
        Duration::from_secs(3600),
    );
    let (rogue_addr, _s) = server(&r[0]).await;
    let err = connect(
        rogue_addr,
        &c[0],
        Expected::Identity(c[1].identity().clone()),
        "server.b.serviceaccount.identity.td.example",
    )
    .await
    .expect_err("foreign CA");
    assert!(
        err.to_lowercase().contains("unknown issuer")
            || err.to_lowercase().contains("invalid peer certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn the_server_requires_a_client_certificate_from_the_mesh_ca() {
    let ca = Ca::new("td.example", Duration::from_secs(3600)).expect("ca");
    let (_d, c) = creds(
        &ca,
        &["spiffe://td.example/ns/b/sa/server"],
        Duration::from_secs(3600),
    );
    let (addr, mut seen) = server(&c[0]).await;
    // A client from another CA: the server refuses it.
    let rogue = Ca::new("td.example", Duration::from_secs(3600)).expect("rogue");
    let (_d2, r) = creds(
        &rogue,
        &["spiffe://td.example/ns/a/sa/client"],
        Duration::from_secs(3600),
    );
    let _ = connect(
        addr,
        &r[0],
        Expected::Identity(c[0].identity().clone()),
        "server.b.serviceaccount.identity.td.example",
    )
    .await;
    let refused = seen.recv().await.expect("seen");
    assert!(refused.is_err(), "{refused:?}");
    // A client with no certificate at all.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        let bundle = ca.bundle_pem().to_owned();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            r.add(c.expect("pem")).expect("add");
        }
        r
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("server.b.serviceaccount.identity.td.example").expect("name");
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        // TLS 1.3: the client learns of the refusal on its first read.
        let _ = tls.write_all(b"hello").await;
        let mut buf = [0u8; 5];
        assert!(tls.read_exact(&mut buf).await.is_err());
    }
    let refused = seen.recv().await.expect("seen");
    assert!(refused.is_err(), "no client certificate: {refused:?}");
}

#[tokio::test]
async fn tls_1_2_is_refused_between_mesh_peers() {
    let ca = Ca::new("td.example", Duration::from_secs(3600)).expect("ca");
    let (_d, c) = creds(
        &ca,
        &["spiffe://td.example/ns/b/sa/server"],
        Duration::from_secs(3600),
    );
    let (addr, mut seen) = server(&c[0]).await;
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("server.b.serviceaccount.identity.td.example").expect("name");
    assert!(connector.connect(name, tcp).await.is_err());
    let refused = seen.recv().await.expect("seen").expect_err("refused");
    assert!(
        refused.contains("Tls12NotOffered") || refused.contains("incompatible"),
        "{refused}"
    );
}

#[tokio::test]
async fn unusable_credentials_are_refused_naming_the_file() {
    let ca = Ca::new("td.example", Duration::from_secs(3600)).expect("ca");
    let base = std::env::temp_dir().join(format!("mesh-creds-bad-{}", std::process::id()));
    let _cleanup = Dirs(base.clone());
    let good = base.join("good");
    ca.issue(
        &id("spiffe://td.example/ns/a/sa/x"),
        Duration::from_secs(3600),
    )
    .expect("issue")
    .write(&good)
    .expect("write");
    // A key from another issue: does not match cert.pem.
    let other = base.join("other");
    ca.issue(
        &id("spiffe://td.example/ns/a/sa/y"),
        Duration::from_secs(3600),
    )
    .expect("issue")
    .write(&other)
    .expect("write");
    std::fs::copy(other.join("key.pem"), good.join("key.pem")).expect("swap");
    let err = Credentials::load(&good, &provider()).expect_err("mismatched key");
    assert!(
        err.to_string().contains("key.pem") && err.to_string().contains("does not match"),
        "{err}"
    );
    // A bundle from another CA: the certificate does not chain to it.
    let rogue = Ca::new("td.example", Duration::from_secs(3600)).expect("rogue");
    ca.issue(
        &id("spiffe://td.example/ns/a/sa/x"),
        Duration::from_secs(3600),
    )
    .expect("issue")
    .write(&good)
    .expect("write");
    std::fs::write(good.join("ca.pem"), rogue.bundle_pem()).expect("write bundle");
    let err = Credentials::load(&good, &provider()).expect_err("foreign bundle");
    assert!(
        err.to_string().contains("cert.pem") && err.to_string().contains("does not chain"),
        "{err}"
    );
    // Not PEM at all.
    std::fs::write(good.join("cert.pem"), "garbage").expect("write");
    let err = Credentials::load(&good, &provider()).expect_err("garbage");
    assert!(err.to_string().contains("cert.pem"), "{err}");
}
