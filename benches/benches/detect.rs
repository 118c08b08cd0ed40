//! Micro benchmark: protocol detection on the first bytes of a connection.
//!
//! `classify` is the pure decision made after every read; `detect` adds the read into a
//! buffer and the replaying wrapper. Run with `cargo bench -p mesh-benches --bench detect`.

use mesh_core::detect::{DetectConfig, H2_PREFACE, classify, detect};
use tokio::io::AsyncWriteExt;

fn main() {
    divan::main();
}

const HTTP1: &[u8] = b"GET /api/v1/users?id=42 HTTP/1.1\r\nHost: users.default.svc\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n";
const BINARY: &[u8] = &[0, 0, 0, 8, 4, 210, 22, 47];

fn tls_hello() -> Vec<u8> {
    // A ClientHello with SNI and ALPN, as browsers and gRPC clients send.
    let sni = b"users.default.svc.cluster.local";
    let mut exts = Vec::new();
    let mut entry = vec![0u8];
    entry.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    entry.extend_from_slice(sni);
    exts.extend_from_slice(&0u16.to_be_bytes());
    exts.extend_from_slice(&((entry.len() + 2) as u16).to_be_bytes());
    exts.extend_from_slice(&(entry.len() as u16).to_be_bytes());
    exts.extend(entry);
    let alpn = b"\x02h2\x08http/1.1";
    exts.extend_from_slice(&16u16.to_be_bytes());
    exts.extend_from_slice(&((alpn.len() + 2) as u16).to_be_bytes());
    exts.extend_from_slice(&(alpn.len() as u16).to_be_bytes());
    exts.extend_from_slice(alpn);
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

#[divan::bench]
fn classify_http1() -> mesh_core::detect::Classification {
    classify(divan::black_box(HTTP1))
}

#[divan::bench]
fn classify_h2_preface() -> mesh_core::detect::Classification {
    classify(divan::black_box(H2_PREFACE))
}

#[divan::bench]
fn classify_tls_client_hello(b: divan::Bencher) {
    let hello = tls_hello();
    b.bench(|| classify(divan::black_box(&hello)));
}

#[divan::bench]
fn classify_binary() -> mesh_core::detect::Classification {
    classify(divan::black_box(BINARY))
}

#[divan::bench]
fn detect_http1_from_socket_buffer(b: divan::Bencher) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    b.bench(|| {
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(4096);
            let _ = client.write_all(HTTP1).await;
            detect(DetectConfig::default(), server)
                .await
                .map(|(outcome, _io)| outcome)
                .ok()
        })
    });
}
