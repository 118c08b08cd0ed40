//! Per-request dtab overrides: `l5d-dtab` and `l5d-ctx-dtab` (Linkerd 1's HTTP protocol).
//!
//! A client may append dentries to the router's dtab for one request with `l5d-dtab`; the
//! proxy forwards the request's whole local dtab to the next hop as `l5d-ctx-dtab`, and an
//! incoming `l5d-ctx-dtab` counts like `l5d-dtab`, so an override follows a request through
//! every service it reaches. The headers change where traffic goes, so they are honoured
//! only from trusted sources; from anyone else both are removed before the request goes on.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use mesh_core::dtab::Dtab;

/// The per-request dtab header a client sends.
pub(crate) static L5D_DTAB: HeaderName = HeaderName::from_static("l5d-dtab");
/// The local dtab as it travels from hop to hop.
pub(crate) static L5D_CTX_DTAB: HeaderName = HeaderName::from_static("l5d-ctx-dtab");

/// A dtab header that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid {header} header: {reason}")]
pub(crate) struct BadDtabHeader {
    header: &'static str,
    reason: String,
}

/// Takes the request's local dtab from its headers: from a trusted source `l5d-ctx-dtab`
/// then `l5d-dtab` (later dentries win), with `l5d-dtab` removed and `l5d-ctx-dtab` set to
/// the whole local dtab for the next hop; from any other source, an empty dtab and both
/// headers removed.
pub(crate) fn take_local_dtab(
    headers: &mut HeaderMap,
    trusted: bool,
) -> Result<Dtab, BadDtabHeader> {
    if !trusted {
        strip(headers);
        return Ok(Dtab::empty());
    }
    let ctx = read(headers, &L5D_CTX_DTAB, "l5d-ctx-dtab")?;
    let own = read(headers, &L5D_DTAB, "l5d-dtab")?;
    headers.remove(&L5D_DTAB);
    let local = match (ctx, own) {
        (None, None) => return Ok(Dtab::empty()),
        (Some(d), None) | (None, Some(d)) => d,
        (Some(ctx), Some(own)) => ctx.concat(&own),
    };
    match HeaderValue::try_from(local.to_string()) {
        Ok(v) if !local.is_empty() => {
            headers.insert(L5D_CTX_DTAB.clone(), v);
        }
        _ => {
            headers.remove(&L5D_CTX_DTAB);
        }
    }
    Ok(local)
}

/// Removes both dtab headers (a request from a source that may not set them).
pub(crate) fn strip(headers: &mut HeaderMap) {
    headers.remove(&L5D_DTAB);
    headers.remove(&L5D_CTX_DTAB);
}

/// Every value of `name`, as one dtab (several header lines are concatenated in order).
fn read(
    headers: &HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<Option<Dtab>, BadDtabHeader> {
    let mut all: Option<Dtab> = None;
    for value in headers.get_all(name) {
        let bad = |reason: String| BadDtabHeader {
            header: label,
            reason,
        };
        let text = value
            .to_str()
            .map_err(|_| bad("not visible ASCII".into()))?;
        let dtab = Dtab::read(text).map_err(|e| bad(e.to_string()))?;
        all = Some(match all {
            Some(before) => before.concat(&dtab),
            None => dtab,
        });
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append((*k).clone(), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn trusted_headers_extend_the_dtab_and_travel_as_context() {
        let mut h = headers(&[
            (&L5D_CTX_DTAB, "/a=>/b"),
            (&L5D_DTAB, "/svc/world => /svc/world-v2"),
        ]);
        let local = take_local_dtab(&mut h, true).expect("parses");
        assert_eq!(local.to_string(), "/a=>/b;/svc/world=>/svc/world-v2");
        assert!(h.get(&L5D_DTAB).is_none());
        assert_eq!(
            h.get(&L5D_CTX_DTAB).and_then(|v| v.to_str().ok()),
            Some("/a=>/b;/svc/world=>/svc/world-v2")
        );
    }

    #[test]
    fn untrusted_headers_are_removed_and_ignored() {
        let mut h = headers(&[(&L5D_CTX_DTAB, "/a=>/b"), (&L5D_DTAB, "/c=>/d")]);
        let local = take_local_dtab(&mut h, false).expect("no parse needed");
        assert!(local.is_empty());
        assert!(h.is_empty());
    }

    #[test]
    fn a_bad_header_is_named() {
        let mut h = headers(&[(&L5D_DTAB, "/svc => ")]);
        let e = take_local_dtab(&mut h, true).expect_err("bad dtab");
        assert!(
            e.to_string().starts_with("invalid l5d-dtab header: "),
            "{e}"
        );
        let mut none = HeaderMap::new();
        assert!(take_local_dtab(&mut none, true).expect("empty").is_empty());
        assert!(none.is_empty());
    }
}
