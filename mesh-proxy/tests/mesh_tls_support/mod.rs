//! Shared by the mesh TLS tests (`mtls.rs`, `authz.rs`): a CA and three workload identities,
//! sidecars A (outbound, mTLS) and B (inbound, terminating), raw TLS clients and an echo
//! server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use mesh_proxy::Proxy;
use mesh_proxy::config::{Config, IdentityConfig, InboundMode, PeerId};
use mesh_tls::ca::Ca;
use mesh_tls::creds::{Credentials, Expected, client_config, server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) const TD: &str = "td.example";
pub(crate) const A: &str = "spiffe://td.example/ns/a/sa/client";
pub(crate) const B: &str = "spiffe://td.example/ns/b/sa/server";
pub(crate) const C: &str = "spiffe://td.example/ns/c/sa/other";

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A fresh directory for one test's identities.
pub(crate) fn tmp(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mesh-mtls-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub(crate) fn issue(ca: &Ca, id: &str, dir: &Path, lifetime: Duration) {
    ca.issue(&id.parse().expect("id"), lifetime)
        .expect("issue")
        .write(dir)
        .expect("write");
}

/// The identities of one test: A, B and C issued by one CA.
pub(crate) struct Ids {
    pub base: PathBuf,
    pub ca: Ca,
}

impl Ids {
    pub(crate) fn new(name: &str) -> Self {
        let base = tmp(name);
        let ca = Ca::new(TD, Duration::from_secs(3600)).expect("ca");
        for (n, id) in [("a", A), ("b", B), ("c", C)] {
            issue(&ca, id, &base.join(n), Duration::from_secs(3600));
        }
        Self { base, ca }
    }

    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }

    pub(crate) fn creds(&self, name: &str) -> Credentials {
        Credentials::load(&self.dir(name), &provider()).expect("credentials")
    }
}

impl Drop for Ids {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

pub(crate) async fn start(cfg: Config) -> TestProxy {
    proxy_with(
        Proxy::new(cfg)
            .with_crypto_provider(provider())
            .with_prometheus(prometheus()),
    )
    .await
}

/// Sidecar B: inbound to `app`, with identity `dir`.
pub(crate) async fn sidecar_b(
    app: SocketAddr,
    dir: &Path,
    tune: impl FnOnce(&mut Config),
) -> TestProxy {
    let mut cfg = config(app);
    cfg.identity = Some(IdentityConfig::new(dir));
    tune(&mut cfg);
    start(cfg).await
}

/// Sidecar A: outbound to `b`, with identity `dir`, expecting `peer` there.
pub(crate) async fn sidecar_a(b: SocketAddr, dir: &Path, peer: Option<&str>) -> TestProxy {
    let mut cfg = config(b);
    cfg.identity = Some(IdentityConfig::new(dir));
    cfg.outbound.peer_id = peer.map(|p| PeerId(p.parse().expect("id")));
    start(cfg).await
}

pub(crate) fn strict(cfg: &mut Config) {
    if let Some(id) = cfg.identity.as_mut() {
        id.inbound_mode = InboundMode::Strict;
    }
}

pub(crate) async fn text(res: http::Response<hyper::body::Incoming>) -> String {
    String::from_utf8_lossy(&body_bytes(res.into_body()).await).into_owned()
}

/// A TCP server that echoes, counting the connections it accepted.
pub(crate) async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, conns)
}

/// Bytes no HTTP detector mistakes for a request.
pub(crate) const OPAQUE: &[u8] = b"\x00\x01\x02opaque-bytes\x7f";

pub(crate) async fn echo_through(addr: SocketAddr) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(OPAQUE).await.expect("write");
    let mut buf = vec![0u8; OPAQUE.len()];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}
/// A raw TLS client to B's inbound port with `config`, offering `alpn`.
pub(crate) async fn tls_to(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name(&B.parse().expect("id"))).expect("name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// A mesh client config presenting `creds`, expecting B, offering HTTP/1.1.
pub(crate) fn mesh_client(creds: &Credentials) -> Arc<rustls::ClientConfig> {
    client_config(
        creds,
        &provider(),
        Expected::Identity(B.parse().expect("id")),
        vec![b"http/1.1".to_vec()],
    )
    .expect("client config")
}

/// A plain TLS client trusting `ca_dir`'s bundle, with no client certificate.
pub(crate) fn no_cert_client(
    ca_dir: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_dir.join("ca.pem")).expect("ca.pem") {
        roots.add(c.expect("cert")).expect("root");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Sends `GET path` over an established stream, HTTP/1.1; the status, or `None` when the
/// connection fails.
pub(crate) async fn get_over<I>(io: I, path: &str) -> Option<(u16, String)>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "b.example")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let res = send.send_request(req).await.ok()?;
    let status = res.status().as_u16();
    let body = String::from_utf8_lossy(&body_bytes(res.into_body()).await).into_owned();
    Some((status, body))
}

/// Whether a handshake (and a first request) with `config` gets through to an answer.
pub(crate) async fn answered(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    match tls_to(addr, config).await {
        Ok(tls) => get_over(tls, "/").await.is_some(),
        Err(_) => false,
    }
}
