//! Hop-by-hop header handling (RFC 9110 §7.6.1).
//!
//! Headers that describe one connection, not the message, must not cross the proxy: the
//! `Connection` header, every header it names, and the well-known hop-by-hop fields. hyper
//! re-frames every forwarded message itself (its framing is the smuggling defence), so
//! `Transfer-Encoding` is dropped too and hyper chooses the framing for the next hop.
//!
//! Two exceptions keep end-to-end features working: an upgrade request (WebSocket) keeps
//! `Connection: upgrade` and `Upgrade` so the upstream can answer `101`, and `TE: trailers`
//! is kept because gRPC over HTTP/2 requires it.
//!
//! [`HopByHop`] applies these rules to every request and response through a service.
//!
//! Header names are lower-case on the wire from the proxy in both directions: hyper parses
//! names case-insensitively and writes them lower-case, as HTTP/2 requires anyway (RFC 9113
//! §8.2.1), and as Linkerd 2 and Envoy do. Header values and their order are kept.

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};

mod layer;

pub use self::layer::{HopByHop, HopByHopLayer, future};

const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";

/// Whether these request headers ask for an HTTP/1.1 protocol upgrade the proxy will tunnel.
///
/// `Upgrade: h2c` is never tunnelled: behind a `101` the client would speak HTTP/2 through
/// an opaque tunnel that no HTTP check sees (h2c smuggling). Such a request is forwarded as
/// a plain request with its upgrade headers removed; h2c clients use prior knowledge.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.get(UPGRADE).is_some_and(|u| {
        u.to_str()
            .is_ok_and(|s| !s.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")))
    }) && headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    })
}

/// Whether any hop-by-hop field is present. The common case has none: one pass over the
/// names (cheap comparisons for standard headers) instead of a hashed lookup per field.
pub fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| {
        k == CONNECTION
            || k == TE
            || k == TRANSFER_ENCODING
            || k == UPGRADE
            || k == KEEP_ALIVE
            || k == PROXY_CONNECTION
    })
}

/// Removes hop-by-hop headers in place. With `upgrade`, the headers that carry the upgrade
/// request or its `101` answer are kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if !has_hop_by_hop(headers) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if upgrade && name == UPGRADE {
                continue;
            }
            headers.remove(&name);
        }
        if upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(CONNECTION);
        }
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    if !upgrade {
        headers.remove(UPGRADE);
    }
    if let Some(te) = headers.get(TE) {
        let trailers = te.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(TE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn strips_connection_and_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip, trailers"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-app"], "kept");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrade_keeps_its_headers() {
        let mut h = map(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn h2c_upgrades_are_not_tunnelled() {
        let mut h = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
        ]);
        assert!(!wants_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn upgrade_header_without_connection_is_not_an_upgrade() {
        let mut h = map(&[("upgrade", "websocket")]);
        assert!(!wants_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }
}
