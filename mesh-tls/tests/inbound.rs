//! The inbound side: a ClientHello read by mesh-core's detection — even fragmented over many
//! TLS records — names this workload's mesh server name, so the connection is terminated and
//! the peer's identity is known; other TLS passes through.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use mesh_core::detect::{ClientHello, DetectConfig, Outcome, Protocol, detect};
use mesh_tls::accept::{InboundKind, MeshAcceptor};
use mesh_tls::ca::Ca;
use mesh_tls::creds::{Credentials, Expected, client_config, server_name};
use mesh_tls::store::CredentialStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client stream that re-frames its first write (the ClientHello record) into TLS records
/// of at most `size` payload bytes, as a middlebox or a hostile client might.
struct Fragmenting<S> {
    inner: S,
    size: usize,
    first: bool,
    pending: Vec<u8>,
    off: usize,
    /// How many records the first write became.
    records: usize,
}

impl<S: AsyncWrite + Unpin> Fragmenting<S> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.off < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.off..]))?;
            self.off += n;
        }
        Poll::Ready(Ok(()))
    }
}

fn reframe(record: &[u8], size: usize) -> Vec<u8> {
    if record.len() < 5 || record[0] != 0x16 {
        return record.to_vec();
    }
    let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
    let (payload, rest) = record[5..].split_at(len.min(record.len() - 5));
    let mut out = Vec::new();
    for chunk in payload.chunks(size) {
        out.extend_from_slice(&record[..3]);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(rest);
    out
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Fragmenting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.drain(cx))?;
        if self.first {
            self.first = false;
            let size = self.size;
            self.pending = reframe(buf, size);
            self.records = buf
                .get(3..5)
                .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])).div_ceil(size))
                .filter(|_| buf[0] == 0x16)
                .unwrap_or(1);
            self.off = 0;
            // Accepted now; written out by this call or by the next write or flush.
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Fragmenting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
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
        let io = Fragmenting {
            inner: client_io,
            size,
            first: true,
            pending: Vec::new(),
            off: 0,
            records: 0,
        };
        let name = ServerName::try_from(server_name(b.identity())).expect("name");
        let mut tls = connector.connect(name, io).await.expect("connect");
        let records = tls.get_ref().0.records;
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
}
