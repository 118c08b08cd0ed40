//! The endpoint line: one endpoint written as text, shared by static config and endpoint files.
//!
//! Operators write endpoints by hand — in a `[namers.NAME]` section's `services` or one per
//! line in the files a file namer watches — so the syntax is small and every mistake is an
//! error naming the offending token, never a silently skipped line:
//!
//! ```text
//! ADDR [weight=N] [id=SPIFFE_ID] [key=value ...]   # comment
//! ```
//!
//! - `ADDR` is `ip:port` or `[ipv6]:port` (no host names: resolving them is a DNS namer's job);
//! - `weight` is the endpoint's relative weight, 1 to [`MAX_WEIGHT`] (default 1): carried
//!   and shown (`/endpoints.json`); the P2C balancer does not use it yet;
//! - `id` is the SPIFFE ID the endpoint must present over mTLS;
//! - any other `key=value` is a free-form label (`zone=b`, `node=n1`);
//! - a key appears at most once; `#` starts a comment, whole-line or trailing; blank lines
//!   are ignored.
//!
//! A file is bounded: lines of at most [`MAX_LINE_BYTES`] and at most [`MAX_ENDPOINTS`]
//! endpoints, so a runaway generator produces an error rather than an unbounded set.
//!
//! ```
//! use mesh_discovery::endpoint::{parse_file, parse_line};
//!
//! let e = parse_line("10.0.0.1:8080 weight=3 zone=b # canary")?.expect("an endpoint");
//! assert_eq!(e.weight().get(), 3);
//! assert_eq!(e.labels().get("zone"), Some("b"));
//!
//! let set = parse_file("# hello\n10.0.0.1:8080\n[::1]:8081 id=spiffe://td/ns/a/sa/b\n")?;
//! assert_eq!(set.len(), 2);
//!
//! let err = parse_file("10.0.0.1:8080\n10.0.0.2:http\n").unwrap_err();
//! assert_eq!(err.line(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;

use mesh_core::identity::Identity;
use mesh_core::target::{Endpoint, Labels};

/// The longest line accepted, in bytes.
pub const MAX_LINE_BYTES: usize = 4096;

/// The most endpoints one file (or one static service) may list.
pub const MAX_ENDPOINTS: usize = 10_000;

/// The largest weight an endpoint may have.
pub const MAX_WEIGHT: u32 = 10_000;

/// Tokens quoted in errors are clipped to this many characters, so that an error message
/// (and the log line it ends up in) stays short whatever the input.
const QUOTE_CHARS: usize = 64;

/// Why one endpoint line is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// The line is longer than [`MAX_LINE_BYTES`].
    #[error("line is {len} bytes, more than the limit of {MAX_LINE_BYTES}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The first token is not a socket address.
    #[error("invalid address {token:?}: expected ip:port or [ipv6]:port")]
    BadAddress {
        /// The token (clipped).
        token: String,
    },
    /// The address is one no endpoint can have (port 0, or an unspecified IP).
    #[error("invalid address {token:?}: {reason}")]
    UnusableAddress {
        /// The token.
        token: String,
        /// Why it cannot be connected to.
        reason: &'static str,
    },
    /// A token after the address is not `key=value`.
    #[error("expected key=value, got {token:?}")]
    NotKeyValue {
        /// The token (clipped).
        token: String,
    },
    /// A key has characters other than ASCII letters, digits, `-`, `_`, `.` and `/`.
    #[error("invalid key {key:?}: use ASCII letters, digits, '-', '_', '.' or '/'")]
    BadKey {
        /// The key (clipped).
        key: String,
    },
    /// A key appears twice on the line.
    #[error("duplicate key {key:?}")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// `weight=` is not a whole number from 1 to [`MAX_WEIGHT`].
    #[error("invalid weight {value:?}: expected a whole number from 1 to {MAX_WEIGHT}")]
    BadWeight {
        /// The value (clipped).
        value: String,
    },
    /// `id=` is not a SPIFFE ID.
    #[error("invalid id {value:?}: {reason}")]
    BadIdentity {
        /// The value (clipped).
        value: String,
        /// Why, from the SPIFFE ID parser.
        reason: String,
    },
}

/// Why a list of endpoint lines (a file, or a static service's entries) is invalid, at which
/// line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct FileError {
    line: usize,
    reason: FileErrorReason,
}

impl FileError {
    /// The offending line, counted from 1.
    pub fn line(&self) -> usize {
        self.line
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &FileErrorReason {
        &self.reason
    }
}

/// What is wrong at a [`FileError`]'s line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileErrorReason {
    /// The line itself is invalid.
    #[error(transparent)]
    Line(#[from] LineError),
    /// The address was already listed on an earlier line.
    #[error("duplicate address {addr} (first on line {first})")]
    DuplicateAddress {
        /// The address.
        addr: SocketAddr,
        /// The line it first appeared on.
        first: usize,
    },
    /// This line's endpoint is one more than [`MAX_ENDPOINTS`].
    #[error("more than {MAX_ENDPOINTS} endpoints")]
    TooManyEndpoints,
}

/// Parses one endpoint line: `Ok(None)` for a blank or comment-only line.
///
/// # Errors
///
/// A [`LineError`] naming the offending token.
pub fn parse_line(line: &str) -> Result<Option<Endpoint>, LineError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(LineError::TooLong { len: line.len() });
    }
    let content = line.split_once('#').map_or(line, |(before, _)| before);
    let mut tokens = content.split_ascii_whitespace();
    let Some(addr_token) = tokens.next() else {
        return Ok(None);
    };
    let mut endpoint = Endpoint::new(parse_addr(addr_token)?);

    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for token in tokens {
        let Some((key, value)) = token.split_once('=') else {
            return Err(LineError::NotKeyValue { token: clip(token) });
        };
        if key.is_empty() || value.is_empty() {
            return Err(LineError::NotKeyValue { token: clip(token) });
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        {
            return Err(LineError::BadKey { key: clip(key) });
        }
        if seen.insert(key, value).is_some() {
            return Err(LineError::DuplicateKey { key: clip(key) });
        }
    }

    if let Some(value) = seen.remove("weight") {
        endpoint = endpoint.with_weight(parse_weight(value)?);
    }
    if let Some(value) = seen.remove("id") {
        let id: Identity = value.parse().map_err(|e| LineError::BadIdentity {
            value: clip(value),
            reason: format!("{e}"),
        })?;
        endpoint = endpoint.with_identity(id);
    }
    if !seen.is_empty() {
        endpoint = endpoint.with_labels(Labels::new(seen));
    }
    Ok(Some(endpoint))
}

/// Parses a file of endpoint lines (blank lines and comments allowed).
///
/// # Errors
///
/// A [`FileError`] naming the first invalid line: an invalid endpoint, an address listed
/// twice, or more than [`MAX_ENDPOINTS`] endpoints.
pub fn parse_file(text: &str) -> Result<Vec<Endpoint>, FileError> {
    parse_lines(text.lines())
}

/// Parses endpoint lines given one by one (a static service's entries), numbered from 1 in
/// errors; the same rules as [`parse_file`].
///
/// # Errors
///
/// As [`parse_file`].
pub fn parse_lines<'a>(
    lines: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Endpoint>, FileError> {
    let mut endpoints = Vec::new();
    let mut first_seen: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for (index, text) in lines.into_iter().enumerate() {
        let line = index + 1;
        let err = |reason: FileErrorReason| FileError { line, reason };
        let Some(endpoint) = parse_line(text).map_err(|e| err(e.into()))? else {
            continue;
        };
        if let Some(&first) = first_seen.get(&endpoint.addr()) {
            return Err(err(FileErrorReason::DuplicateAddress {
                addr: endpoint.addr(),
                first,
            }));
        }
        if endpoints.len() == MAX_ENDPOINTS {
            return Err(err(FileErrorReason::TooManyEndpoints));
        }
        first_seen.insert(endpoint.addr(), line);
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}

fn parse_addr(token: &str) -> Result<SocketAddr, LineError> {
    let addr: SocketAddr = token
        .parse()
        .map_err(|_| LineError::BadAddress { token: clip(token) })?;
    let unusable = |reason| LineError::UnusableAddress {
        token: clip(token),
        reason,
    };
    if addr.port() == 0 {
        return Err(unusable("port 0"));
    }
    if addr.ip().is_unspecified() {
        return Err(unusable("an unspecified IP address is not an endpoint"));
    }
    Ok(addr)
}

fn parse_weight(value: &str) -> Result<NonZeroU32, LineError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|w| *w <= MAX_WEIGHT)
        .and_then(NonZeroU32::new)
        .ok_or_else(|| LineError::BadWeight { value: clip(value) })
}

/// `text`, cut to [`QUOTE_CHARS`] characters (with `…` when cut).
pub(crate) fn clip(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn good_lines() {
        let plain = Endpoint::new(addr("127.0.0.1:8081"));
        let cases: Vec<(&str, Option<Endpoint>)> = vec![
            ("", None),
            ("   \t ", None),
            ("# a comment", None),
            ("   # indented comment", None),
            ("127.0.0.1:8081", Some(plain.clone())),
            ("  127.0.0.1:8081  # trailing comment", Some(plain.clone())),
            ("127.0.0.1:8081#no space", Some(plain.clone())),
            ("[::1]:9000", Some(Endpoint::new(addr("[::1]:9000")))),
            (
                "127.0.0.1:8081 weight=2",
                Some(plain.clone().with_weight(NonZeroU32::new(2).expect("2"))),
            ),
            (
                "127.0.0.1:8081 weight=10000",
                Some(
                    plain
                        .clone()
                        .with_weight(NonZeroU32::new(10_000).expect("max")),
                ),
            ),
            (
                "127.0.0.1:8081 id=spiffe://td/ns/a/sa/b",
                Some(
                    plain
                        .clone()
                        .with_identity("spiffe://td/ns/a/sa/b".parse().expect("id")),
                ),
            ),
            (
                "127.0.0.1:8081 zone=b node=n1 weight=3 id=spiffe://td/ns/a/sa/b",
                Some(
                    plain
                        .clone()
                        .with_weight(NonZeroU32::new(3).expect("3"))
                        .with_identity("spiffe://td/ns/a/sa/b".parse().expect("id"))
                        .with_labels(Labels::new([("node", "n1"), ("zone", "b")])),
                ),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse_line(line), Ok(want), "line {line:?}");
        }
    }

    #[test]
    fn bad_lines_name_the_offending_token() {
        let long = format!("127.0.0.1:8081 {}", "k=v ".repeat(1100));
        let cases: Vec<(&str, &str)> = vec![
            (
                "localhost:8081",
                "invalid address \"localhost:8081\": expected ip:port or [ipv6]:port",
            ),
            ("127.0.0.1", "invalid address \"127.0.0.1\""),
            ("::1:80", "invalid address \"::1:80\""),
            ("10.0.0.1:http", "invalid address \"10.0.0.1:http\""),
            ("weight=2 127.0.0.1:80", "invalid address \"weight=2\""),
            ("127.0.0.1:0", "invalid address \"127.0.0.1:0\": port 0"),
            ("0.0.0.0:80", "unspecified IP address"),
            ("127.0.0.1:80 weight", "expected key=value, got \"weight\""),
            ("127.0.0.1:80 =x", "expected key=value, got \"=x\""),
            ("127.0.0.1:80 zone=", "expected key=value, got \"zone=\""),
            (
                "127.0.0.1:80 weight=0",
                "invalid weight \"0\": expected a whole number from 1 to 10000",
            ),
            ("127.0.0.1:80 weight=10001", "invalid weight \"10001\""),
            ("127.0.0.1:80 weight=-1", "invalid weight \"-1\""),
            ("127.0.0.1:80 weight=2x", "invalid weight \"2x\""),
            ("127.0.0.1:80 weight=1 weight=2", "duplicate key \"weight\""),
            ("127.0.0.1:80 zone=a zone=b", "duplicate key \"zone\""),
            ("127.0.0.1:80 id=bob", "invalid id \"bob\""),
            ("127.0.0.1:80 zo\u{e9}ne=a", "invalid key \"zo\u{e9}ne\""),
            (&long, "line is 4415 bytes, more than the limit of 4096"),
        ];
        for (line, want) in cases {
            let err = parse_line(line).expect_err(line).to_string();
            assert!(
                err.contains(want),
                "line {line:?}: got {err:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn long_tokens_are_clipped_in_errors() {
        let token = "x".repeat(1000);
        let err = parse_line(&token).expect_err("bad address").to_string();
        assert!(err.len() < 200, "error is {} bytes", err.len());
        assert!(err.contains('…'));
    }

    #[test]
    fn file_errors_name_the_line() {
        let text = "# endpoints\n127.0.0.1:8081\n\n127.0.0.1:8082 weight=zero\n";
        let err = parse_file(text).expect_err("bad weight");
        assert_eq!(err.line(), 4);
        assert_eq!(
            err.to_string(),
            "line 4: invalid weight \"zero\": expected a whole number from 1 to 10000"
        );

        let err = parse_file("127.0.0.1:8081\n127.0.0.1:8082\n127.0.0.1:8081 weight=2\n")
            .expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            "line 3: duplicate address 127.0.0.1:8081 (first on line 1)"
        );
    }

    #[test]
    fn files_keep_order_and_handle_crlf() {
        let set = parse_file("127.0.0.2:1\r\n# c\r\n127.0.0.1:1 zone=a\r\n").expect("valid");
        assert_eq!(
            set,
            vec![
                Endpoint::new(addr("127.0.0.2:1")),
                Endpoint::new(addr("127.0.0.1:1")).with_labels(Labels::new([("zone", "a")])),
            ]
        );
        assert_eq!(parse_file(""), Ok(vec![]));
    }

    #[test]
    fn files_are_bounded_in_endpoints() {
        let lines: Vec<String> = (0..=MAX_ENDPOINTS)
            .map(|i| {
                let i = u32::try_from(i).expect("small");
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
                format!("{ip}:80")
            })
            .collect();
        let ok = parse_lines(lines[..MAX_ENDPOINTS].iter().map(String::as_str));
        assert_eq!(ok.map(|v| v.len()), Ok(MAX_ENDPOINTS));
        let err = parse_lines(lines.iter().map(String::as_str)).expect_err("one too many");
        assert_eq!(err.line(), MAX_ENDPOINTS + 1);
        assert_eq!(err.reason(), &FileErrorReason::TooManyEndpoints);
    }
}
