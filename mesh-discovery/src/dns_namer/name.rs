//! Which DNS question a path asks: `<host>/<port>` for A/AAAA, `<srv name>` for SRV.
//!
//! Names are checked here, at bind time, so that a typo in a route (`/#/dns/hello/http`,
//! a port of 70000) is a [`BindError`] naming the path, not a name that silently never
//! resolves. The check is the hostname syntax DNS servers accept (letters, digits, `-`,
//! `_` for SRV labels, `.`; labels of 1 to 63 bytes; at most 253 bytes), so nothing that
//! reaches the resolver can fail to parse there. An IP literal needs no DNS at all and is
//! kept apart, so the namer can answer it at once.

use std::fmt;
use std::net::IpAddr;

use crate::namer::{BindError, NamerName, path_text};

use super::DnsKind;

/// The longest DNS name, in bytes, without a trailing dot (RFC 1035 §2.3.4).
const MAX_NAME_BYTES: usize = 253;

/// The longest DNS label, in bytes.
const MAX_LABEL_BYTES: usize = 63;

/// What a bound path asks DNS, and the key names are shared by: two binds of the same
/// question share one watch. Host names are compared lower-cased, as DNS does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Question {
    /// A and AAAA records of `host`, served on `port`.
    Host {
        /// The lower-cased host name.
        host: String,
        /// The port every address is served on.
        port: u16,
    },
    /// SRV records of `name`, their targets' A and AAAA records.
    Srv(String),
}

impl fmt::Display for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Question::Host { host, port } => write!(f, "{host} (port {port})"),
            Question::Srv(name) => write!(f, "{name} (SRV)"),
        }
    }
}

/// A bound path, split up.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    /// The question, or an IP literal with its port (needs no DNS).
    pub(crate) question: Result<Question, (IpAddr, u16)>,
    /// The segments consumed (for the bound id).
    pub(crate) consumed: &'a [&'a str],
    /// The segments left over.
    pub(crate) residual: &'a [&'a str],
}

/// Splits `path` (the segments after `/#/NAME`) for a namer of `kind`.
pub(crate) fn parse<'a>(
    namer: &NamerName,
    kind: DnsKind,
    path: &'a [&'a str],
) -> Result<Parsed<'a>, BindError> {
    let invalid = |reason| BindError::InvalidName {
        path: path_text(namer, path),
        reason,
    };
    let Some(first) = path.first() else {
        return Err(BindError::MissingName {
            namer: namer.clone(),
            path: path_text(namer, path),
        });
    };
    match kind {
        DnsKind::A => {
            let Some(port) = path.get(1) else {
                return Err(invalid("a dns name is <host>/<port>: the port is missing"));
            };
            let port =
                parse_port(port).ok_or_else(|| invalid("port must be a number from 1 to 65535"))?;
            let question = match ip_literal(first) {
                Some(ip) => Err((ip, port)),
                None => {
                    name_problem(first).map_or(Ok(()), |why| Err(invalid(why)))?;
                    Ok(Question::Host {
                        host: first.to_ascii_lowercase(),
                        port,
                    })
                }
            };
            Ok(Parsed {
                question,
                consumed: &path[..2],
                residual: &path[2..],
            })
        }
        DnsKind::Srv => {
            name_problem(first).map_or(Ok(()), |why| Err(invalid(why)))?;
            Ok(Parsed {
                question: Ok(Question::Srv(first.to_ascii_lowercase())),
                consumed: &path[..1],
                residual: &path[1..],
            })
        }
    }
}

/// A port from 1 to 65535, digits only (no sign, no spaces).
fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|port| *port != 0)
}

/// `text` as an IP address, also in brackets (`[::1]`).
fn ip_literal(text: &str) -> Option<IpAddr> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().ok()
}

/// Why `name` is not a DNS name to ask about, if it is not.
fn name_problem(name: &str) -> Option<&'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Some("empty host name");
    }
    if name.len() > MAX_NAME_BYTES {
        return Some("a DNS name is at most 253 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Some("a DNS name has only ASCII letters, digits, '-', '_' and '.'");
    }
    if name
        .split('.')
        .any(|label| label.is_empty() || label.len() > MAX_LABEL_BYTES)
    {
        return Some("each label of a DNS name is 1 to 63 bytes");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_plain_numbers_in_range() {
        assert_eq!(parse_port("80"), Some(80));
        assert_eq!(parse_port("65535"), Some(65535));
        for bad in [
            "", "0", "65536", "99999", "+80", " 80", "http", "080000", "-1",
        ] {
            assert_eq!(parse_port(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_follow_hostname_syntax() {
        for good in [
            "hello",
            "hello.example",
            "hello.example.",
            "_http._tcp.a-b.c",
        ] {
            assert_eq!(name_problem(good), None, "{good:?}");
        }
        let long_label = format!("{}.example", "a".repeat(64));
        let long_name = ["abc"; 64].join(".");
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "a b",
            "a/b",
            "hé",
            &long_label,
            &long_name,
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn ip_literals_need_no_dns() {
        let namer: NamerName = "dns".parse().expect("name");
        let path = ["[::1]", "80", "x"];
        let parsed = parse(&namer, DnsKind::A, &path).expect("binds");
        assert_eq!(parsed.question, Err(("::1".parse().expect("ip"), 80)));
        assert_eq!(parsed.residual, ["x"]);
    }
}
