//! `Expect: 100-continue` decided by the upstream, not by the proxy.
//!
//! A client that sends `Expect: 100-continue` waits for `100 Continue` before it sends its
//! body, so that a server can refuse (`417`, `413`, `401`) without the body crossing the
//! network. hyper's server answers `100` as soon as the body is first read, and hyper's
//! client reads the body at once; a proxy built on both would tell every client to go ahead
//! before the upstream decided. So the request body is held back until the upstream sends
//! its own `100` (the client then gets the proxy's), the upstream's final answer comes
//! first (a refusal: the body is never read, and that upstream connection closes; a `2xx`
//! that streams while it reads, such as an echo: the body goes), or a second passes with no
//! word — then it goes anyway, as clients themselves do (RFC 9110 §10.1.1).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode, Version};

use crate::body::HoldSignal;
use crate::body::RequestBody;

/// Holds an HTTP/1 request body that expects `100-continue`; the returned signal is refused
/// when the final response arrives first.
pub(crate) fn hold_for_continue(
    req: &mut Request<RequestBody>,
    wait: Duration,
) -> Option<Arc<HoldSignal>> {
    use http_body::Body as _;
    let expects = req.version() == Version::HTTP_11
        && !req.body().is_end_stream()
        && req
            .headers()
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects {
        return None;
    }
    let signal = req.body_mut().hold(wait);
    let on_continue = signal.clone();
    hyper::ext::on_informational(req, move |res| {
        if res.status() == StatusCode::CONTINUE {
            on_continue.release();
        }
    });
    Some(signal)
}
