//! Identifiers: what part of a request names it (Linkerd 1's identifiers).
//!
//! An identifier turns a request into a logical name under its prefix — `/svc/hello` from
//! `Host: hello` — which the router's dtab then rewrites. A request that carries no usable
//! name (no `Host` on HTTP/1.0, an IP literal where a service name is expected, fewer path
//! segments than configured) is answered 400 naming what was missing, never guessed at.

use http::Request;
use http::uri::{Authority, PathAndQuery, Uri};
use mesh_core::dtab::Path;

use crate::config::IdentifierConfig;

/// Why a request could not be named.
#[derive(Debug, thiserror::Error)]
#[error("cannot identify the request: {0}")]
pub(crate) struct Unidentified(String);

/// Names requests as one [`IdentifierConfig`] says.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Identifier(IdentifierConfig);

impl Identifier {
    pub(crate) fn new(config: IdentifierConfig) -> Self {
        Self(config)
    }

    /// The request's logical name. The path identifier with `consume` also removes the
    /// segments it used from the request's path.
    pub(crate) fn identify<B>(&self, req: &mut Request<B>) -> Result<Path, Unidentified> {
        match &self.0 {
            IdentifierConfig::Host { prefix, keep_port } => {
                let label = host(req, *keep_port)?;
                Ok(prefix.0.concat(&Path::from_labels([label])))
            }
            IdentifierConfig::Path {
                prefix,
                segments,
                consume,
            } => {
                let n = segments.get();
                let path = req.uri().path();
                let taken: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).take(n).collect();
                if taken.len() < n {
                    return Err(Unidentified(format!(
                        "the path {path:?} has fewer than {n} segments"
                    )));
                }
                let name = prefix.0.concat(&Path::from_labels(&taken));
                if *consume {
                    consume_segments(req, n)?;
                }
                Ok(name)
            }
            IdentifierConfig::MethodHost { prefix } => {
                let version = match req.version() {
                    http::Version::HTTP_10 | http::Version::HTTP_09 => "1.0",
                    http::Version::HTTP_2 => "2",
                    _ => "1.1",
                };
                let method = req.method().as_str().to_owned();
                let mut labels = vec![version.to_owned(), method];
                // As Linkerd 1: HTTP/1.0 names a service by method alone.
                if version != "1.0" {
                    labels.push(host(req, false)?);
                }
                Ok(prefix.0.concat(&Path::from_labels(&labels)))
            }
            IdentifierConfig::Static { path } => Ok(path.0.clone()),
            IdentifierConfig::Header { prefix, name } => {
                let value = req
                    .headers()
                    .get(&name.0)
                    .ok_or_else(|| Unidentified(format!("no {} header", name.0)))?;
                let text = value.to_str().map_err(|_| {
                    Unidentified(format!("the {} header is not visible ASCII", name.0))
                })?;
                let text = text.trim();
                if text.is_empty() {
                    return Err(Unidentified(format!("the {} header is empty", name.0)));
                }
                let rest = if text.starts_with('/') {
                    Path::read(text).map_err(|e| {
                        Unidentified(format!("the {} header is not a path: {e}", name.0))
                    })?
                } else {
                    Path::from_labels([text])
                };
                Ok(prefix.0.concat(&rest))
            }
        }
    }
}

/// The request's host, lowercased, with its port if `keep_port`: the URI's authority
/// (HTTP/2 `:authority`, absolute-form HTTP/1) or else the `Host` header.
fn host<B>(req: &Request<B>, keep_port: bool) -> Result<String, Unidentified> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => {
            let value = req.headers().get(http::header::HOST).ok_or_else(|| {
                Unidentified("no Host header (HTTP/1.0 without Host names no service)".into())
            })?;
            Authority::try_from(value.as_bytes())
                .map_err(|_| Unidentified(format!("the Host header {value:?} is not a host")))?
        }
    };
    let host = authority.host();
    if host.is_empty() {
        return Err(Unidentified("the Host header is empty".into()));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Err(Unidentified(format!(
            "the Host {host} is an IP address, not a service name"
        )));
    }
    let mut label = host.to_ascii_lowercase();
    if keep_port && let Some(port) = authority.port_u16() {
        label.push(':');
        label.push_str(&port.to_string());
    }
    Ok(label)
}

/// Removes the first `n` segments from the request's path, keeping its query.
fn consume_segments<B>(req: &mut Request<B>, n: usize) -> Result<(), Unidentified> {
    let uri = req.uri();
    let rest: Vec<&str> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .skip(n)
        .collect();
    let trailing = uri.path().ends_with('/') && !rest.is_empty();
    let mut path = format!("/{}", rest.join("/"));
    if trailing {
        path.push('/');
    }
    if let Some(q) = uri.query() {
        path.push('?');
        path.push_str(q);
    }
    let pq = PathAndQuery::try_from(path).map_err(|_| {
        Unidentified("the path left after its identified segments is invalid".into())
    })?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| {
        Unidentified("the path left after its identified segments is invalid".into())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HeaderNameText, PathText};
    use std::num::NonZeroUsize;

    fn svc() -> PathText {
        PathText(Path::from_labels(["svc"]))
    }

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).expect("request")
    }

    fn name(id: &IdentifierConfig, r: &mut Request<()>) -> Result<String, String> {
        Identifier::new(id.clone())
            .identify(r)
            .map(|p| p.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn host_names_the_service_without_its_port() {
        let id = IdentifierConfig::default();
        assert_eq!(
            name(&id, &mut req("/x", Some("Hello:8080"))),
            Ok("/svc/hello".into())
        );
        // HTTP/2 and absolute-form: the URI's authority.
        assert_eq!(
            name(&id, &mut req("http://world/x", None)),
            Ok("/svc/world".into())
        );
        let keep = IdentifierConfig::Host {
            prefix: svc(),
            keep_port: true,
        };
        assert_eq!(
            name(&keep, &mut req("/x", Some("hello:8080"))),
            Ok("/svc/hello:8080".into())
        );
    }

    #[test]
    fn host_refuses_what_names_no_service() {
        let id = IdentifierConfig::default();
        let missing = name(&id, &mut req("/x", None)).expect_err("no host");
        assert!(missing.contains("no Host header"), "{missing}");
        let ip = name(&id, &mut req("/x", Some("127.0.0.1:4140"))).expect_err("ip");
        assert!(ip.contains("IP address"), "{ip}");
        let ip6 = name(&id, &mut req("/x", Some("[::1]:80"))).expect_err("ip6");
        assert!(ip6.contains("IP address"), "{ip6}");
    }

    #[test]
    fn path_takes_segments_and_may_consume_them() {
        let id = IdentifierConfig::Path {
            prefix: svc(),
            segments: NonZeroUsize::new(2).expect("2"),
            consume: true,
        };
        let mut r = req("/api/users/7?x=1", Some("h"));
        assert_eq!(name(&id, &mut r), Ok("/svc/api/users".into()));
        assert_eq!(r.uri().path_and_query().map(|p| p.as_str()), Some("/7?x=1"));
        let mut short = req("/api", Some("h"));
        let e = name(&id, &mut short).expect_err("short");
        assert!(e.contains("fewer than 2 segments"), "{e}");
        let keep = IdentifierConfig::Path {
            prefix: svc(),
            segments: NonZeroUsize::MIN,
            consume: false,
        };
        let mut r = req("/api/users", Some("h"));
        assert_eq!(name(&keep, &mut r), Ok("/svc/api".into()));
        assert_eq!(r.uri().path(), "/api/users");
    }

    #[test]
    fn method_host_and_header() {
        let mh = IdentifierConfig::MethodHost { prefix: svc() };
        assert_eq!(
            name(&mh, &mut req("/", Some("hello"))),
            Ok("/svc/1.1/GET/hello".into())
        );
        let h = IdentifierConfig::Header {
            prefix: svc(),
            name: HeaderNameText(http::HeaderName::from_static("l5d-name")),
        };
        let mut r = req("/", Some("x"));
        r.headers_mut()
            .insert("l5d-name", http::HeaderValue::from_static("world"));
        assert_eq!(name(&h, &mut r), Ok("/svc/world".into()));
        r.headers_mut()
            .insert("l5d-name", http::HeaderValue::from_static("/a/b"));
        assert_eq!(name(&h, &mut r), Ok("/svc/a/b".into()));
        r.headers_mut().remove("l5d-name");
        assert!(
            name(&h, &mut r)
                .expect_err("missing")
                .contains("no l5d-name header")
        );
    }
}
