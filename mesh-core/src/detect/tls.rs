//! Just enough of a TLS ClientHello parser to tell TLS from other traffic and to record the
//! server name (SNI) and ALPN protocols the client asked for, without terminating TLS.
//!
//! A ClientHello may be fragmented over several TLS records (RFC 8446 §5.1 allows any
//! split, and some clients and middleboxes do it, on purpose or not); the fragments are
//! reassembled, so SNI and ALPN are read wherever they fall. Bounded: a hello may declare at
//! most [`MAX_HELLO`] bytes, which fit in two full records, and [`super::DetectConfig`]'s
//! byte cap bounds the records around it. A hello that declares more is reported as TLS with
//! no fields. The common case — the whole hello in its first record — is parsed in place,
//! without a copy.

/// TLS record content type for handshake messages.
pub(super) const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;
/// Length of a TLS record header.
pub(super) const RECORD_HEADER: usize = 5;
/// Largest TLS plaintext record payload (RFC 8446 §5.1).
pub(super) const MAX_RECORD: usize = 16 * 1024;
/// The largest ClientHello read (handshake header included): two full records' payload.
pub(super) const MAX_HELLO: usize = 2 * MAX_RECORD;
/// Length of a handshake message header (type and 24-bit length).
const HANDSHAKE_HEADER: usize = 4;

const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// What a TLS client asked for in its ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` (SNI) host name, if the client sent one.
    pub server_name: Option<String>,
    /// The ALPN protocol names offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

pub(super) enum Parse {
    Hello(ClientHello),
    Incomplete,
    NotTls,
}

/// A bounds-checked reader over a byte slice; every accessor fails instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

pub(super) fn parse_client_hello(buf: &[u8]) -> Parse {
    let mut rec = Reader(buf);
    let Some(header) = rec.take(RECORD_HEADER) else {
        // Too short to judge: the record header bytes seen so far must still be plausible.
        return match buf.get(1) {
            Some(&major) if major != 3 => Parse::NotTls,
            _ => Parse::Incomplete,
        };
    };
    let major = header[1];
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if major != 3 || len == 0 || len > MAX_RECORD {
        return Parse::NotTls;
    }
    // The handshake header tells whether this is a ClientHello before the record is whole.
    if let Some(&msg_type) = rec.0.first()
        && msg_type != HANDSHAKE_CLIENT_HELLO
    {
        return Parse::NotTls;
    }
    let first = &rec.0[..rec.0.len().min(len)];
    // The declared length of the hello, once its handshake header has arrived (it may
    // itself be split across records; then it is read from the reassembled bytes below).
    if first.len() >= HANDSHAKE_HEADER {
        let hello_len = Reader(&first[1..]).u24().unwrap_or(usize::MAX);
        if hello_len > MAX_HELLO - HANDSHAKE_HEADER {
            // TLS, but not a hello this reader will buffer: report it without fields.
            return Parse::Hello(ClientHello::default());
        }
        if first.len() >= HANDSHAKE_HEADER + hello_len {
            // The whole hello is in the first record: parse it in place.
            let body = &first[HANDSHAKE_HEADER..HANDSHAKE_HEADER + hello_len];
            return Parse::Hello(read_hello_body(body).unwrap_or_default());
        }
    }
    reassemble(buf)
}

/// Collects the handshake bytes of consecutive handshake records until the hello they carry
/// is complete.
fn reassemble(buf: &[u8]) -> Parse {
    let mut rest = Reader(buf);
    let mut hs: Vec<u8> = Vec::new();
    loop {
        let Some(header) = rest.take(RECORD_HEADER) else {
            return Parse::Incomplete;
        };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != CONTENT_TYPE_HANDSHAKE || header[1] != 3 || len == 0 || len > MAX_RECORD {
            // Something else interleaved before the hello ended: TLS, but malformed.
            return Parse::Hello(ClientHello::default());
        }
        let Some(payload) = rest.take(len) else {
            return Parse::Incomplete;
        };
        hs.extend_from_slice(payload);
        if hs.len() < HANDSHAKE_HEADER {
            continue;
        }
        let hello_len = Reader(&hs[1..]).u24().unwrap_or(usize::MAX);
        if hs[0] != HANDSHAKE_CLIENT_HELLO || hello_len > MAX_HELLO - HANDSHAKE_HEADER {
            return Parse::Hello(ClientHello::default());
        }
        if hs.len() >= HANDSHAKE_HEADER + hello_len {
            let body = &hs[HANDSHAKE_HEADER..HANDSHAKE_HEADER + hello_len];
            return Parse::Hello(read_hello_body(body).unwrap_or_default());
        }
    }
}

/// Reads SNI and ALPN from a ClientHello body; `None` when the body is truncated.
fn read_hello_body(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut hello = ClientHello::default();
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let data = exts.vec16()?;
        match ty {
            EXT_SERVER_NAME => hello.server_name = read_sni(data),
            EXT_ALPN => hello.alpn = read_alpn(data).unwrap_or_default(),
            _ => {}
        }
    }
    Some(hello)
}

fn read_sni(data: &[u8]) -> Option<String> {
    let mut list = Reader(Reader(data).vec16()?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 {
            return std::str::from_utf8(name).ok().map(str::to_owned);
        }
    }
    None
}

fn read_alpn(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut list = Reader(Reader(data).vec16()?);
    let mut out = Vec::new();
    while !list.0.is_empty() {
        out.push(list.vec8()?.to_vec());
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal TLS 1.2-style ClientHello record with optional SNI and ALPN.
    pub(crate) fn client_hello(sni: Option<&str>, alpn: &[&[u8]]) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut entry = vec![0u8];
            entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
            entry.extend_from_slice(name.as_bytes());
            let mut list = (entry.len() as u16).to_be_bytes().to_vec();
            list.extend(entry);
            exts.extend_from_slice(&EXT_SERVER_NAME.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend(list);
        }
        if !alpn.is_empty() {
            let mut protos = Vec::new();
            for p in alpn {
                protos.push(p.len() as u8);
                protos.extend_from_slice(p);
            }
            let mut list = (protos.len() as u16).to_be_bytes().to_vec();
            list.extend(protos);
            exts.extend_from_slice(&EXT_ALPN.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend(list);
        }
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![CONTENT_TYPE_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    fn hello(buf: &[u8]) -> Option<ClientHello> {
        match parse_client_hello(buf) {
            Parse::Hello(h) => Some(h),
            _ => None,
        }
    }

    #[test]
    fn reads_sni_and_alpn() {
        let rec = client_hello(Some("web.default.svc"), &[b"h2", b"http/1.1"]);
        let h = hello(&rec).expect("hello");
        assert_eq!(h.server_name.as_deref(), Some("web.default.svc"));
        assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn hello_without_extensions_of_interest() {
        let h = hello(&client_hello(None, &[])).expect("hello");
        assert_eq!(h, ClientHello::default());
    }

    #[test]
    fn every_truncation_is_incomplete_never_a_panic() {
        let rec = client_hello(Some("a.example"), &[b"h2"]);
        for n in 1..rec.len() {
            assert!(
                matches!(parse_client_hello(&rec[..n]), Parse::Incomplete),
                "at {n}"
            );
        }
    }

    #[test]
    fn the_first_record_of_a_fragmented_hello_waits_for_the_rest() {
        let mut rec = client_hello(Some("a.example"), &[]);
        // The first record carries only the start of the hello, as a fragmented hello does:
        // the rest (and its SNI) is in records still to come.
        rec.truncate(RECORD_HEADER + 50);
        rec[3..5].copy_from_slice(&50u16.to_be_bytes());
        assert!(matches!(parse_client_hello(&rec), Parse::Incomplete));
    }

    #[test]
    fn other_records_are_not_tls_hellos() {
        assert!(matches!(parse_client_hello(&[0x16, 9, 9]), Parse::NotTls));
        assert!(matches!(
            parse_client_hello(&[0x16, 3, 1, 0, 0]),
            Parse::NotTls
        ));
        assert!(matches!(
            parse_client_hello(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            Parse::NotTls
        ));
    }
}

#[cfg(test)]
mod fragmented {
    use super::tests::client_hello;
    use super::*;

    /// Re-frames a single-record hello into records of at most `size` payload bytes.
    fn fragment(record: &[u8], size: usize) -> Vec<u8> {
        let payload = &record[RECORD_HEADER..];
        let mut out = Vec::new();
        for chunk in payload.chunks(size) {
            out.extend_from_slice(&record[..3]);
            out.extend_from_slice(&u16::try_from(chunk.len()).expect("small").to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn a_hello_over_many_records_is_reassembled() {
        let whole = client_hello(
            Some("web.default.serviceaccount.identity.td"),
            &[b"h2", b"http/1.1"],
        );
        for size in [1, 3, 7, 40, 100] {
            let split = fragment(&whole, size);
            let Parse::Hello(hello) = parse_client_hello(&split) else {
                panic!("fragments of {size} bytes: not reassembled");
            };
            assert_eq!(
                hello.server_name.as_deref(),
                Some("web.default.serviceaccount.identity.td"),
                "fragments of {size} bytes"
            );
            assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
            // Every proper prefix asks for more; none is mistaken for something else.
            for cut in 1..split.len() {
                assert!(
                    matches!(parse_client_hello(&split[..cut]), Parse::Incomplete),
                    "fragments of {size}, cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn an_interleaved_record_or_an_oversized_hello_is_tls_without_fields() {
        let whole = client_hello(Some("a.example"), &[]);
        let mut split = fragment(&whole, 10);
        // An alert record (type 21) in the middle of the hello.
        split.splice(15..15, [21u8, 3, 3, 0, 2, 2, 40]);
        let Parse::Hello(hello) = parse_client_hello(&split) else {
            panic!("still TLS");
        };
        assert_eq!(hello, ClientHello::default());
        // A hello declaring more than two full records' worth.
        let big = [
            CONTENT_TYPE_HANDSHAKE,
            3,
            1,
            0,
            8,
            HANDSHAKE_CLIENT_HELLO,
            0x01,
            0,
            0,
            3,
            3,
            0,
            0,
        ];
        assert!(matches!(parse_client_hello(&big), Parse::Hello(h) if h == ClientHello::default()));
    }
}
