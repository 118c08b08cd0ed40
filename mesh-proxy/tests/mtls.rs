//! Mesh TLS between sidecars (issue 14): sidecar A's outbound side → sidecar B's inbound side
//! → the app, for HTTP/1.1, HTTP/2, gRPC and opaque TCP; the handshakes B must refuse;
//! rotation while traffic flows. The authorization table is in `authz.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod mesh_tls_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::Version;
use mesh_proxy::config::IdentityConfig;
use mesh_test::app::App;
use mesh_test::grpc::GreeterClient;
use mesh_test::tls::Fragmenting;
use mesh_tls::ca::Ca;
use mesh_tls::creds::{Credentials, server_name};
use mesh_tls_support::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
