//! Protocol detection: classify a new connection from its first bytes.
//!
//! A transparent proxy does not know what a client will speak. Before it can choose between
//! an HTTP server and a byte-level TCP forward it reads the first bytes of the connection and
//! classifies them as an HTTP/2 prior-knowledge preface, an HTTP/1 request line, a TLS
//! ClientHello (recording SNI and ALPN) or, failing all of those, opaque TCP.
//!
//! Detection is bounded in bytes ([`DetectConfig::max_bytes`]) and in time
//! ([`DetectConfig::timeout`]). A timeout is not an error: a client that has not spoken yet may
//! be waiting for a server-speaks-first greeting (SMTP, MySQL), so the connection falls back to
//! opaque forwarding. Ports known to carry such protocols skip detection entirely (the proxy's
//! `opaque_ports`), so their clients see no added delay at all.
//!
//! A client that has sent the start of an HTTP request line and then paused is *not* opaque:
//! forwarding it byte for byte would let it past every HTTP check (framing, header limits,
//! the header-read timeout) just by sending slowly. Such a connection is handled as HTTP/1.
//!
//! The bytes read are never lost: [`detect`] returns them inside a [`PrefixedIo`], which
//! replays them before reading from the socket again.
//!
//! This sits at the very start of both the inbound and the outbound connection paths,
//! before any HTTP server or TCP forwarder.
//!
//! ```
//! use mesh_core::detect::{classify, Classification, Protocol};
//!
//! let c = classify(b"GET /hello HTTP/1.1\r\nHost: example\r\n\r\n");
//! assert_eq!(c, Classification::Done(Protocol::Http1));
//! ```

mod tls;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::io::PrefixedIo;

pub use self::tls::ClientHello;

/// The HTTP/2 connection preface a prior-knowledge client sends first (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest HTTP/1 request line detection waits for before giving up on HTTP/1.
const MAX_REQUEST_LINE: usize = 8 * 1024;

/// What a connection turned out to speak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface.
    Http2,
    /// A TLS ClientHello; the proxy forwards it untouched.
    Tls(ClientHello),
    /// Anything else, including clients that sent nothing before the timeout.
    Opaque,
}

impl Protocol {
    /// The label value used for `mesh_detect_total{protocol}`.
    pub fn label(&self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1",
            Protocol::Http2 => "http/2",
            Protocol::Tls(_) => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

/// How detection ended, for metrics and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The first bytes identified the protocol.
    Detected(Protocol),
    /// Nothing conclusive arrived before the timeout. The connection is handled as HTTP/1
    /// when a partial request line was read, otherwise as opaque TCP.
    Timeout(Protocol),
    /// The client closed its side before sending anything conclusive; handled by the same
    /// rule as a timeout.
    Eof(Protocol),
}

impl Outcome {
    /// The protocol the connection is handled as.
    pub fn protocol(&self) -> Protocol {
        match self {
            Outcome::Detected(p) | Outcome::Timeout(p) | Outcome::Eof(p) => p.clone(),
        }
    }

    /// The label value used for `mesh_detect_total{protocol}`: the protocol, or
    /// `timeout` when detection gave up waiting.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Detected(p) | Outcome::Eof(p) => p.label(),
            Outcome::Timeout(_) => "timeout",
        }
    }
}

/// The protocol for bytes that [`classify`] could not decide yet: a plausible partial HTTP
/// request line (or HTTP/2 preface) is HTTP/1, so hyper's parser and the proxy's HTTP limits
/// judge it; nothing at all, or a partial TLS record, is opaque.
fn undecided(buf: &[u8]) -> Protocol {
    match buf.first() {
        None | Some(&tls::CONTENT_TYPE_HANDSHAKE) => Protocol::Opaque,
        Some(_) => Protocol::Http1,
    }
}

/// Result of classifying a buffer that may still be incomplete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classification {
    /// The bytes so far decide the protocol.
    Done(Protocol),
    /// The bytes so far are a prefix of something recognisable; read more.
    NeedMore,
}

/// Bounds on detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectConfig {
    /// How long to wait for conclusive bytes. Default: 1s.
    pub timeout: Duration,
    /// The most bytes read while detecting. Default: 32 KiB + 10 (a ClientHello of the
    /// largest size this reader accepts, in two full TLS records).
    pub max_bytes: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            max_bytes: tls::MAX_HELLO + 2 * tls::RECORD_HEADER,
        }
    }
}

/// Classifies the first bytes of a connection.
///
/// Pure, and allocation-free except to reassemble a ClientHello fragmented over several TLS
/// records; [`detect`] calls it after every read.
pub fn classify(buf: &[u8]) -> Classification {
    if buf.is_empty() {
        return Classification::NeedMore;
    }
    // The h2 preface also parses as an HTTP/1 request line, so it is checked first.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Classification::Done(Protocol::Http2)
        } else {
            Classification::NeedMore
        };
    }
    if buf[0] == tls::CONTENT_TYPE_HANDSHAKE {
        return match tls::parse_client_hello(buf) {
            tls::Parse::Hello(hello) => Classification::Done(Protocol::Tls(hello)),
            tls::Parse::Incomplete => Classification::NeedMore,
            tls::Parse::NotTls => Classification::Done(Protocol::Opaque),
        };
    }
    classify_http1(buf)
}

/// An HTTP/1 request line, judged by httparse once the line is complete.
fn classify_http1(buf: &[u8]) -> Classification {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        // Before the line ends, reject early anything that cannot be a request line, so a
        // binary client-speaks-first protocol is not held until the timeout. This must never
        // reject what httparse accepts once the line is complete: it takes bytes >= 0x80
        // (obs-text) in the request target, and a request line split before its end would
        // otherwise go out as opaque bytes, past every HTTP check (found by fuzz/detect).
        let method_end = buf.iter().position(|&b| b == b' ').unwrap_or(buf.len());
        let printable = buf.iter().enumerate().all(|(i, &b)| {
            b == b'\r' || (0x20..0x7f).contains(&b) || (i > method_end && b >= 0x80)
        });
        return match (printable, buf.len() > MAX_REQUEST_LINE) {
            (false, _) => Classification::Done(Protocol::Opaque),
            // A printable line this long is an over-long HTTP request line far more often
            // than anything else; hyper answers it (414/431) instead of it passing as bytes.
            (true, true) => Classification::Done(Protocol::Http1),
            (true, false) => Classification::NeedMore,
        };
    };
    let mut line = [0u8; 64];
    let line_len = end + 1;
    // httparse needs the terminating empty line to report the head complete. Only the
    // request line is judged, so a copy of it plus "\r\n" is parsed; long targets are
    // checked in place with a heap copy.
    let mut heap;
    let head: &[u8] = if line_len + 2 <= line.len() {
        line[..line_len].copy_from_slice(&buf[..line_len]);
        line[line_len..line_len + 2].copy_from_slice(b"\r\n");
        &line[..line_len + 2]
    } else {
        heap = Vec::with_capacity(line_len + 2);
        heap.extend_from_slice(&buf[..line_len]);
        heap.extend_from_slice(b"\r\n");
        &heap
    };
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) if req.version.is_some() => {
            Classification::Done(Protocol::Http1)
        }
        _ => Classification::Done(Protocol::Opaque),
    }
}

/// Reads from `io` until its protocol is known, the byte bound is reached, the client closes,
/// or the timeout passes, and returns the outcome with the connection whose read side replays
/// every byte consumed.
///
/// # Errors
///
/// Only I/O errors reading the socket; a timeout or an unrecognised protocol is an
/// [`Outcome`], not an error.
///
/// # Cancel safety
///
/// Not cancel safe: bytes read before cancellation are lost with the future.
pub async fn detect<I>(config: DetectConfig, mut io: I) -> std::io::Result<(Outcome, PrefixedIo<I>)>
where
    I: AsyncRead + Unpin,
{
    // Most first reads are a whole request head; start small and grow only for long
    // ClientHellos or request lines.
    let mut buf = BytesMut::with_capacity(1024);
    let now = tokio::time::Instant::now();
    let deadline = now
        .checked_add(config.timeout)
        .unwrap_or(now + Duration::from_secs(3600));
    let outcome = loop {
        if buf.len() >= config.max_bytes {
            break Outcome::Detected(undecided(&buf));
        }
        let room = config.max_bytes - buf.len();
        if buf.capacity() == buf.len() {
            buf.reserve(buf.capacity().min(room).max(1));
        }
        // The allocation may be larger than asked for (it grows by doubling); reading into
        // all of it would overshoot the bound, up to twice over. Read at most `room`.
        let read =
            tokio::time::timeout_at(deadline, io.read_buf(&mut (&mut buf).limit(room))).await;
        match read {
            Err(_elapsed) => break Outcome::Timeout(undecided(&buf)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => break Outcome::Eof(undecided(&buf)),
            Ok(Ok(_)) => {
                if let Classification::Done(p) = classify(&buf) {
                    break Outcome::Detected(p);
                }
            }
        }
    };
    Ok((outcome, PrefixedIo::new(buf.freeze(), io)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /a?b=c HTTP/1.0\r\nHost: x\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\n",
        ] {
            assert_eq!(
                classify(line),
                Classification::Done(Protocol::Http1),
                "{line:?}"
            );
        }
    }

    #[test]
    fn long_request_targets_are_http1() {
        let mut line = b"GET /".to_vec();
        line.extend(std::iter::repeat_n(b'a', 4000));
        line.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(classify(&line), Classification::Done(Protocol::Http1));
    }

    #[test]
    fn partial_request_lines_need_more() {
        assert_eq!(classify(b"GE"), Classification::NeedMore);
        assert_eq!(
            classify(b"GET /index.html HTTP/1."),
            Classification::NeedMore
        );
    }

    #[test]
    fn non_ascii_targets_are_http1_however_the_line_is_split() {
        // httparse accepts obs-text in the target; a prefix must not be judged opaque first.
        let line = "GET /caf\u{e9} HTTP/1.1\r\n".as_bytes();
        assert_eq!(classify(line), Classification::Done(Protocol::Http1));
        for cut in 1..line.len() - 1 {
            assert_eq!(
                classify(&line[..cut]),
                Classification::NeedMore,
                "cut at {cut}"
            );
        }
        // A high byte in the method still cannot be HTTP.
        assert_eq!(
            classify(b"G\xc3T / HT"),
            Classification::Done(Protocol::Opaque)
        );
    }

    #[test]
    fn h2_preface_wins_over_http1() {
        assert_eq!(classify(H2_PREFACE), Classification::Done(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), Classification::NeedMore);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(classify(&more), Classification::Done(Protocol::Http2));
    }

    #[test]
    fn binary_and_banner_protocols_are_opaque() {
        // A PostgreSQL startup message, a Redis inline command with a bad version, SSH.
        assert_eq!(
            classify(&[0, 0, 0, 8, 4, 210, 22, 47]),
            Classification::Done(Protocol::Opaque)
        );
        assert_eq!(
            classify(b"PING\r\n"),
            Classification::Done(Protocol::Opaque)
        );
        assert_eq!(
            classify(b"SSH-2.0-OpenSSH_9.2\r\n"),
            Classification::Done(Protocol::Opaque)
        );
        assert_eq!(
            classify(b"GET / HTTP/3.0\r\n"),
            Classification::Done(Protocol::Opaque)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_times_out_to_opaque() {
        let (client, server) = tokio::io::duplex(64);
        let cfg = DetectConfig::default();
        let start = tokio::time::Instant::now();
        let (outcome, io) = detect(cfg, server).await.expect("detect");
        assert_eq!(outcome, Outcome::Timeout(Protocol::Opaque));
        assert_eq!(outcome.label(), "timeout");
        assert_eq!(start.elapsed(), cfg.timeout);
        assert!(io.prefix().is_empty());
        drop(client);
    }

    #[tokio::test]
    async fn bytes_read_are_replayed() {
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let (outcome, mut io) = detect(DetectConfig::default(), server)
            .await
            .expect("detect");
        assert_eq!(outcome, Outcome::Detected(Protocol::Http1));
        client.write_all(b"tail").await.expect("write");
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: a\r\n\r\ntail");
    }

    #[tokio::test]
    async fn request_line_split_across_reads() {
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(detect(DetectConfig::default(), server));
        client.write_all(b"GET /sl").await.expect("write");
        tokio::task::yield_now().await;
        client.write_all(b"ow HTTP/1.1\r\n").await.expect("write");
        let (outcome, io) = task.await.expect("join").expect("detect");
        assert_eq!(outcome, Outcome::Detected(Protocol::Http1));
        assert_eq!(&io.prefix()[..], b"GET /slow HTTP/1.1\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_request_line_is_still_http() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"POST /echo HT").await.expect("write");
        let (outcome, io) = detect(DetectConfig::default(), server)
            .await
            .expect("detect");
        assert_eq!(outcome, Outcome::Timeout(Protocol::Http1));
        assert_eq!(&io.prefix()[..], b"POST /echo HT");
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_tls_record_stays_opaque() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&[0x16, 3, 1]).await.expect("write");
        let (outcome, _io) = detect(DetectConfig::default(), server)
            .await
            .expect("detect");
        assert_eq!(outcome, Outcome::Timeout(Protocol::Opaque));
        drop(client);
    }

    #[tokio::test]
    async fn early_eof_keeps_the_bytes() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GE").await.expect("write");
        drop(client);
        let (outcome, io) = detect(DetectConfig::default(), server)
            .await
            .expect("detect");
        assert_eq!(outcome, Outcome::Eof(Protocol::Http1));
        assert_eq!(&io.prefix()[..], b"GE");
    }

    #[tokio::test]
    async fn byte_bound_holds() {
        // `max_bytes` is "the most bytes read while detecting": the buffer may never hold
        // more, whatever its allocation grew to. Each input stays undecided until the bound
        // (a TLS record of the largest size; a printable line shorter than the longest
        // request line), and the client has sent far more than the bound.
        // Two full records carrying a hello that declares the largest accepted length, so
        // it completes exactly at the default bound (its body is junk: TLS without fields).
        let mut tls = vec![tls::CONTENT_TYPE_HANDSHAKE, 3, 1, 0x40, 0x00, 1];
        let hello_len = u32::try_from(tls::MAX_HELLO - 4).expect("fits");
        tls.extend_from_slice(&hello_len.to_be_bytes()[1..]);
        tls.resize(5 + tls::MAX_RECORD, b'a');
        tls.extend_from_slice(&[tls::CONTENT_TYPE_HANDSHAKE, 3, 1, 0x40, 0x00]);
        tls.resize(60_000, b'a');
        let line = vec![b'a'; 40_000];
        let default = DetectConfig::default().max_bytes;
        let cases = [
            (default, &tls, Protocol::Tls(ClientHello::default())),
            (4096, &line, Protocol::Http1),
            (1000, &line, Protocol::Http1),
            (1, &line, Protocol::Http1),
        ];
        for (max_bytes, input, protocol) in cases {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            client.write_all(input).await.expect("write");
            let cfg = DetectConfig {
                max_bytes,
                ..DetectConfig::default()
            };
            let (outcome, io) = detect(cfg, server).await.expect("detect");
            // A printable endless line is handed to the HTTP/1 server, which rejects it,
            // rather than forwarded as bytes.
            assert_eq!(
                outcome,
                Outcome::Detected(protocol),
                "max_bytes {max_bytes}"
            );
            assert_eq!(
                io.prefix().len(),
                max_bytes,
                "read exactly up to the bound, never past it"
            );
        }
    }

    #[test]
    fn over_long_request_lines_are_http1_not_opaque() {
        let mut line = b"GET /".to_vec();
        line.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(classify(&line), Classification::Done(Protocol::Http1));
    }
}
