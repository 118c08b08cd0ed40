//! Mesh TLS between sidecars (issue 14): sidecar A's outbound side → sidecar B's inbound side
//! → the app, for HTTP/1.1, HTTP/2, gRPC and opaque TCP; the handshakes B must refuse; the
//! authorization table; rotation while traffic flows.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Version;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use mesh_proxy::Proxy;
use mesh_proxy::config::{Config, IdentityConfig, InboundMode, PeerId, PolicyConfig};
use mesh_test::app::App;
use mesh_test::grpc::GreeterClient;
use mesh_test::tls::Fragmenting;
use mesh_tls::ca::Ca;
use mesh_tls::creds::{Credentials, Expected, client_config, server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TD: &str = "td.example";
const A: &str = "spiffe://td.example/ns/a/sa/client";
const B: &str = "spiffe://td.example/ns/b/sa/server";
const C: &str = "spiffe://td.example/ns/c/sa/other";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A fresh directory for one test's identities.
fn tmp(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mesh-mtls-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn issue(ca: &Ca, id: &str, dir: &Path, lifetime: Duration) {
    ca.issue(&id.parse().expect("id"), lifetime)
        .expect("issue")
        .write(dir)
        .expect("write");
}

/// The identities of one test: A, B and C issued by one CA.
struct Ids {
    base: PathBuf,
    ca: Ca,
}

impl Ids {
    fn new(name: &str) -> Self {
        let base = tmp(name);
        let ca = Ca::new(TD, Duration::from_secs(3600)).expect("ca");
        for (n, id) in [("a", A), ("b", B), ("c", C)] {
            issue(&ca, id, &base.join(n), Duration::from_secs(3600));
        }
        Self { base, ca }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }

    fn creds(&self, name: &str) -> Credentials {
        Credentials::load(&self.dir(name), &provider()).expect("credentials")
    }
}

impl Drop for Ids {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

async fn start(cfg: Config) -> TestProxy {
    proxy_with(
        Proxy::new(cfg)
            .with_crypto_provider(provider())
            .with_prometheus(prometheus()),
    )
    .await
}

/// Sidecar B: inbound to `app`, with identity `dir`.
async fn sidecar_b(app: SocketAddr, dir: &Path, tune: impl FnOnce(&mut Config)) -> TestProxy {
    let mut cfg = config(app);
    cfg.identity = Some(IdentityConfig::new(dir));
    tune(&mut cfg);
    start(cfg).await
}

/// Sidecar A: outbound to `b`, with identity `dir`, expecting `peer` there.
async fn sidecar_a(b: SocketAddr, dir: &Path, peer: Option<&str>) -> TestProxy {
    let mut cfg = config(b);
    cfg.identity = Some(IdentityConfig::new(dir));
    cfg.outbound.peer_id = peer.map(|p| PeerId(p.parse().expect("id")));
    start(cfg).await
}

fn strict(cfg: &mut Config) {
    if let Some(id) = cfg.identity.as_mut() {
        id.inbound_mode = InboundMode::Strict;
    }
}

async fn text(res: http::Response<hyper::body::Incoming>) -> String {
    String::from_utf8_lossy(&body_bytes(res.into_body()).await).into_owned()
}

#[tokio::test]
async fn http1_http2_and_grpc_cross_two_sidecars_over_mtls() {
    let ids = Ids::new("protocols");
    let app = App::spawn().await;
    // Strict: B serves nothing but mesh TLS, so every answer below crossed an mTLS hop.
    let b = sidecar_b(app.addr(), &ids.dir("b"), strict).await;
    let a = sidecar_a(b.inbound, &ids.dir("a"), Some(B)).await;

    // HTTP/1.1, with a forged l5d-client-id that must not survive.
    let mut c = h1(a.outbound).await;
    let mut req = get(a.outbound, "/headers", Version::HTTP_11);
    req.headers_mut().insert(
        "l5d-client-id",
        "spiffe://td.example/ns/evil/sa/x".parse().unwrap(),
    );
    let res = c.send_request(req).await.expect("h1 response");
    assert_eq!(res.status(), 200);
    let seen = text(res).await;
    assert!(seen.contains("version: HTTP/1.1"), "{seen}");
    assert!(seen.contains(&format!("l5d-client-id: {A}\n")), "{seen}");
    assert!(
        !seen.contains("evil"),
        "a forged identity reached the app: {seen}"
    );

    // HTTP/2 stays HTTP/2 across the hop.
    let mut c = h2(a.outbound).await;
    let res = c
        .send_request(get(a.outbound, "/headers", Version::HTTP_2))
        .await
        .expect("h2 response");
    assert_eq!(res.status(), 200);
    let seen = text(res).await;
    assert!(seen.contains("version: HTTP/2.0"), "{seen}");
    assert!(seen.contains(&format!("l5d-client-id: {A}\n")), "{seen}");

    // gRPC (tonic) through both sidecars.
    let mut grpc = GreeterClient::connect(a.outbound).await.expect("grpc");
    let reply = grpc.say_hello("mesh").await.expect("grpc call");
    assert!(reply.message.contains("mesh"), "{}", reply.message);

    // With no expected identity, any workload of the trust domain is accepted.
    let any = sidecar_a(b.inbound, &ids.dir("c"), None).await;
    let mut c = h1(any.outbound).await;
    let res = c
        .send_request(get(any.outbound, "/headers", Version::HTTP_11))
        .await
        .expect("response");
    assert_eq!(res.status(), 200);
    assert!(text(res).await.contains(&format!("l5d-client-id: {C}\n")));

    // B's metrics carry the peer.
    let metrics = scrape(b.admin).await;
    let peer = format!("peer_id=\"{A}\"");
    let dst = format!("dst=\"{}\"", app.addr());
    let n = sample(
        &metrics,
        "mesh_request_total",
        &["direction=\"inbound\"", &dst, "tls=\"true\"", &peer],
    )
    .expect("inbound requests labelled with tls and peer_id");
    assert_eq!(n, 3.0, "h1, h2 and gRPC requests");
    a.assert_no_panics();
    b.assert_no_panics();
}

/// A TCP server that echoes, counting the connections it accepted.
async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
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
const OPAQUE: &[u8] = b"\x00\x01\x02opaque-bytes\x7f";

async fn echo_through(addr: SocketAddr) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(OPAQUE).await.expect("write");
    let mut buf = vec![0u8; OPAQUE.len()];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

#[tokio::test]
async fn opaque_tcp_crosses_two_sidecars_over_mtls() {
    let ids = Ids::new("opaque");
    let (echo, conns) = echo_server().await;
    let b = sidecar_b(echo, &ids.dir("b"), strict).await;
    let a = sidecar_a(b.inbound, &ids.dir("a"), Some(B)).await;
    let got = echo_through(a.outbound).await;
    assert_eq!(
        got.as_deref(),
        Some(OPAQUE),
        "opaque bytes crossed the mTLS hop"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_wrong_or_foreign_server_identity_fails_with_502_and_nothing_reaches_the_app() {
    let ids = Ids::new("wrong-server");
    let app = App::spawn().await;
    let b = sidecar_b(app.addr(), &ids.dir("b"), strict).await;

    // A expects C at B's address.
    let a = sidecar_a(b.inbound, &ids.dir("a"), Some(C)).await;
    let mut c = h1(a.outbound).await;
    let res = c
        .send_request(get(a.outbound, "/", Version::HTTP_11))
        .await
        .expect("response");
    assert_eq!(res.status(), 502);
    let why = proxy_error(&res);
    assert!(
        why.contains(C) && why.contains(B),
        "names both identities: {why}"
    );

    // A server whose certificate comes from another CA (same trust domain name).
    let foreign = Ca::new(TD, Duration::from_secs(3600)).expect("ca");
    let fdir = ids.base.join("foreign-b");
    issue(&foreign, B, &fdir, Duration::from_secs(3600));
    let fb = sidecar_b(app.addr(), &fdir, strict).await;
    let a2 = sidecar_a(fb.inbound, &ids.dir("a"), Some(B)).await;
    let mut c = h1(a2.outbound).await;
    let res = c
        .send_request(get(a2.outbound, "/", Version::HTTP_11))
        .await
        .expect("response");
    assert_eq!(
        res.status(),
        502,
        "a server outside the trust bundle is refused"
    );

    assert!(app.seen().is_empty(), "nothing may reach the app");
}

/// A raw TLS client to B's inbound port with `config`, offering `alpn`.
async fn tls_to(
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
fn mesh_client(creds: &Credentials) -> Arc<rustls::ClientConfig> {
    client_config(
        creds,
        &provider(),
        Expected::Identity(B.parse().expect("id")),
        vec![b"http/1.1".to_vec()],
    )
    .expect("client config")
}

/// A plain TLS client trusting `ca_dir`'s bundle, with no client certificate.
fn no_cert_client(
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
async fn get_over<I>(io: I, path: &str) -> Option<(u16, String)>
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
async fn answered(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    match tls_to(addr, config).await {
        Ok(tls) => get_over(tls, "/").await.is_some(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn handshakes_the_inbound_side_refuses() {
    let ids = Ids::new("refused");
    let app = App::spawn().await;
    let b = sidecar_b(app.addr(), &ids.dir("b"), strict).await;

    // The control: A's certificate is accepted.
    assert!(answered(b.inbound, mesh_client(&ids.creds("a"))).await);
    let reached = app.seen().len();
    assert_eq!(reached, 1);

    // No client certificate on the mesh name.
    assert!(
        !answered(
            b.inbound,
            no_cert_client(&ids.dir("b"), &[&rustls::version::TLS13])
        )
        .await
    );

    // A client certificate from another CA (same trust domain name).
    let foreign = Ca::new(TD, Duration::from_secs(3600)).expect("ca");
    let fdir = ids.base.join("foreign-a");
    issue(&foreign, A, &fdir, Duration::from_secs(3600));
    // It must trust B's bundle to get as far as presenting its certificate.
    std::fs::copy(ids.dir("b").join("ca.pem"), fdir.join("ca.pem")).expect("bundle");
    let foreign_cert = Credentials::load(&fdir, &provider());
    // Its chain does not verify against B's bundle, so it cannot be loaded as mesh
    // credentials; present it through a plain rustls client instead.
    assert!(foreign_cert.is_err());
    let foreign_client = {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(fdir.join("cert.pem"))
                .expect("cert")
                .collect::<Result<_, _>>()
                .expect("certs");
        let key = PrivateKeyDer::from_pem_file(fdir.join("key.pem")).expect("key");
        let base = no_cert_client(&ids.dir("b"), &[&rustls::version::TLS13]);
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ids.dir("b").join("ca.pem")).expect("ca") {
            roots.add(c.expect("c")).expect("root");
        }
        drop(base);
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("v")
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .expect("client auth"),
        )
    };
    assert!(!answered(b.inbound, foreign_client).await);

    // TLS 1.2 offered to the mesh name.
    assert!(
        !answered(
            b.inbound,
            no_cert_client(&ids.dir("b"), &[&rustls::version::TLS12])
        )
        .await
    );

    // Plaintext to a strict port: closed, no answer.
    let (text, _) = raw(
        b.inbound,
        b"GET / HTTP/1.1\r\nhost: b\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(text.is_empty(), "strict port answered plaintext: {text:?}");

    // An expired client certificate: valid when loaded, expired when presented.
    let edir = ids.base.join("expiring-a");
    issue(&ids.ca, A, &edir, Duration::from_secs(1));
    let expiring = Credentials::load(&edir, &provider()).expect("still valid");
    let config = mesh_client(&expiring);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(
        !answered(b.inbound, config).await,
        "an expired certificate was accepted"
    );

    assert_eq!(app.seen().len(), reached, "nothing else reached the app");
    let failures = sample(
        &scrape(b.admin).await,
        "mesh_tls_handshake_errors_total",
        &["direction=\"inbound\""],
    )
    .expect("handshake errors counted");
    assert!(failures >= 4.0, "{failures}");
}

#[tokio::test]
async fn a_client_hello_fragmented_over_many_records_is_terminated() {
    let ids = Ids::new("fragmented");
    let app = App::spawn().await;
    let b = sidecar_b(app.addr(), &ids.dir("b"), strict).await;
    let tcp = TcpStream::connect(b.inbound).await.expect("connect");
    let io = Fragmenting::new(tcp, 16);
    let name = ServerName::try_from(server_name(&B.parse().expect("id"))).expect("name");
    let tls = tokio_rustls::TlsConnector::from(mesh_client(&ids.creds("a")))
        .connect(name, io)
        .await
        .expect("handshake through 16-byte records");
    assert!(
        tls.get_ref().0.records() > 10,
        "the hello went out in many records"
    );
    let (status, body) = get_over(tls, "/headers").await.expect("answer");
    assert_eq!(status, 200);
    assert!(body.contains(&format!("l5d-client-id: {A}")), "{body}");
}

#[tokio::test]
async fn permissive_serves_plaintext_and_passes_other_tls_through() {
    let ids = Ids::new("permissive");
    let (echo, conns) = echo_server().await;
    let app = App::spawn().await;
    let b = sidecar_b(app.addr(), &ids.dir("b"), |_| {}).await;
    // Plaintext is served, and no identity is vouched for.
    let mut c = h1(b.inbound).await;
    let mut req = get(b.inbound, "/headers", Version::HTTP_11);
    req.headers_mut()
        .insert("l5d-client-id", A.parse().unwrap());
    let res = c.send_request(req).await.expect("response");
    assert_eq!(res.status(), 200);
    let seen = text(res).await;
    assert!(!seen.contains("l5d-client-id"), "{seen}");

    // TLS for another name passes through untouched to the target (here an echo server:
    // the ClientHello comes back as it was sent).
    let pass = sidecar_b(echo, &ids.dir("b"), |_| {}).await;
    let mut s = TcpStream::connect(pass.inbound).await.expect("connect");
    let hello = {
        // A real ClientHello for www.example.com, captured from rustls.
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let cfg = no_cert_client(&ids.dir("b"), &[&rustls::version::TLS13]);
        let name = ServerName::try_from("www.example.com").expect("name");
        tokio::spawn(async move {
            let _ = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, client)
                .await;
        });
        let mut buf = vec![0u8; 5];
        server.read_exact(&mut buf).await.expect("record header");
        let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        let mut body = vec![0u8; len];
        server.read_exact(&mut body).await.expect("record");
        buf.extend_from_slice(&body);
        buf
    };
    s.write_all(&hello).await.expect("write");
    let mut back = vec![0u8; hello.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echoed in time")
        .expect("echo");
    assert_eq!(back, hello, "other TLS passed through byte for byte");
    assert_eq!(conns.load(Ordering::SeqCst), 1);

    // Strict refuses the same pass-through.
    let strict_b = sidecar_b(echo, &ids.dir("b"), strict).await;
    let mut s = TcpStream::connect(strict_b.inbound).await.expect("connect");
    s.write_all(&hello).await.expect("write");
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "strict closes other TLS: {n:?}"
    );
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "nothing reached the target"
    );
}

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
async fn certificates_rotate_under_load_without_a_failed_request() {
    let ids = Ids::new("rotation");
    let app = App::spawn().await;
    let b = sidecar_b(app.addr(), &ids.dir("b"), strict).await;
    let a = sidecar_a(b.inbound, &ids.dir("a"), Some(B)).await;
    let serial_of = |dir: &Path| {
        let pem = std::fs::read_to_string(dir.join("cert.pem")).expect("cert");
        mesh_tls::ca::inspect(&pem).expect("inspect")[0]
            .serial
            .clone()
    };
    let first = serial_of(&ids.dir("b"));

    let stop = Arc::new(tokio::sync::Notify::new());
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    let a_creds = Arc::new(ids.creds("a"));
    for i in 0..4 {
        let (stop, failures, done, creds) = (
            stop.clone(),
            failures.clone(),
            done.clone(),
            a_creds.clone(),
        );
        let (out, inb) = (a.outbound, b.inbound);
        workers.push(tokio::spawn(async move {
            let mut serials = Vec::new();
            let mut pooled = h1(out).await;
            for _ in 0..2000 {
                // Half the workers go through sidecar A (pooled mTLS to B), half open a new
                // mTLS connection to B per request (a new handshake each).
                let ok = if i % 2 == 0 {
                    match pooled.send_request(get(out, "/", Version::HTTP_11)).await {
                        Ok(res) => res.status() == 200,
                        Err(_) => false,
                    }
                } else {
                    match tls_to(inb, mesh_client(&creds)).await {
                        Ok(tls) => {
                            let serial = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| mesh_tls::ca::inspect_der(c).ok())
                                .map(|i| i.serial);
                            if serials.last() != serial.as_ref() {
                                serials.extend(serial);
                            }
                            get_over(tls, "/").await.is_some_and(|(s, _)| s == 200)
                        }
                        Err(_) => false,
                    }
                };
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    () = stop.notified() => break,
                    () = tokio::time::sleep(Duration::from_millis(2)) => {}
                }
            }
            serials
        }));
    }
    // Re-issue B's certificate twice while the load runs; each is in force within the poll
    // interval.
    let mut serials = vec![first.clone()];
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        issue(&ids.ca, B, &ids.dir("b"), Duration::from_secs(3600));
        serials.push(serial_of(&ids.dir("b")));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    stop.notify_waiters();
    let mut seen = Vec::new();
    for w in workers {
        seen.push(w.await.expect("worker"));
    }
    let total = done.load(Ordering::SeqCst);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "failed requests out of {total}"
    );
    assert!(total > 200, "the load ran: {total}");
    for s in seen.iter().filter(|s| !s.is_empty()) {
        assert_eq!(s, &serials, "new handshakes showed each new serial in turn");
    }
    // The expiry gauge follows the certificate in force.
    let metrics = scrape(b.admin).await;
    assert!(
        sample(
            &metrics,
            "mesh_identity_cert_expiry_timestamp_seconds",
            &[&format!("identity=\"{B}\"")]
        )
        .is_some(),
        "expiry exported"
    );
}

#[tokio::test]
async fn a_peer_that_never_answers_the_handshake_fails_with_504_in_time() {
    let ids = Ids::new("silent");
    // Accepts connections and holds them, never writing a byte.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let mut cfg = config(silent);
    cfg.identity = Some(IdentityConfig::new(ids.dir("a")));
    cfg.limits.connect_timeout = Duration::from_millis(300);
    let a = start(cfg).await;
    let mut c = h1(a.outbound).await;
    let started = std::time::Instant::now();
    let res = c
        .send_request(get(a.outbound, "/", Version::HTTP_11))
        .await
        .expect("response");
    let took = started.elapsed();
    assert_eq!(res.status(), 504);
    let why = proxy_error(&res);
    assert!(why.contains("handshake timed out"), "{why}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "bounded by the connect timeout: {took:?}"
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
