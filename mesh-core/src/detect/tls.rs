//! Just enough of a TLS ClientHello parser to tell TLS from other traffic and to record the
//! server name (SNI) and ALPN protocols the client asked for, without terminating TLS.
//!
//! Only the first TLS record is read. A ClientHello fragmented over several records is still
//! recognised as TLS; fields beyond the first record are then reported as absent.

/// TLS record content type for handshake messages.
pub(super) const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;
/// Length of a TLS record header.
pub(super) const RECORD_HEADER: usize = 5;
/// Largest TLS plaintext record payload (RFC 8446 §5.1).
pub(super) const MAX_RECORD: usize = 16 * 1024;

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
    let Some(payload) = rec.take(len) else {
        return Parse::Incomplete;
    };
    let mut hs = Reader(payload);
    // The message type was checked above; skip it and read the declared length, which may
    // exceed this record when the hello is fragmented.
    let _ = hs.u8();
    let Some(hello_len) = hs.u24() else {
        return Parse::Hello(ClientHello::default());
    };
    let body = &hs.0[..hs.0.len().min(hello_len)];
    Parse::Hello(read_hello_body(body).unwrap_or_default())
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
    fn fragmented_hello_is_tls_without_fields() {
        let mut rec = client_hello(Some("a.example"), &[]);
        // The first record carries only the start of the hello, as a fragmented hello does.
        rec.truncate(RECORD_HEADER + 50);
        rec[3..5].copy_from_slice(&50u16.to_be_bytes());
        assert_eq!(hello(&rec), Some(ClientHello::default()));
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
