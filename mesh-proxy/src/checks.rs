//! Checks a request must pass before it is forwarded at all: unambiguous framing and one
//! authority.
//!
//! Both are answered `400` and close the connection ([`BadRequest`]): after an ambiguous
//! head the proxy cannot know where the next request starts, and routing reads the
//! authority, so a request whose authority is missing or contradictory is refused rather than
//! guessed at.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Version};
use mesh_core::BoxError;
use mesh_core::errors::BadRequest;
use tower_service::Service;

use crate::refuse::RefuseOr;

use crate::conn::ConnState;

/// Refuses ambiguously framed requests (seen by the connection's head scanner) and requests
/// without exactly one authority.
#[derive(Clone, Debug)]
pub(crate) struct RequestChecks<S> {
    inner: S,
    conn: Arc<ConnState>,
}

impl<S> RequestChecks<S> {
    pub(crate) fn layer(
        conn: Arc<ConnState>,
    ) -> impl tower_layer::Layer<S, Service = Self> + Clone {
        tower_layer::layer_fn(move |inner| RequestChecks {
            inner,
            conn: conn.clone(),
        })
    }
}

impl<S, B> Service<Request<B>> for RequestChecks<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RefuseOr<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Read at once: the scanner's verdict belongs to the head just parsed.
        let refused = if self.conn.take_ambiguous() {
            Some(BadRequest::new(
                "ambiguous request framing (content-length with transfer-encoding, repeated content-length, or bare LF)",
            ))
        } else {
            check_host(&req).err()
        };
        match refused {
            Some(bad) => RefuseOr::refuse(bad),
            None => RefuseOr::call(self.inner.call(req)),
        }
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, and an absolute-form target
/// wins over it.
fn check_host<B>(req: &Request<B>) -> Result<(), BadRequest> {
    if req.version() == Version::HTTP_2 {
        return Ok(());
    }
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest::new("more than one Host header"));
    }
    match (host, req.uri().authority()) {
        (None, _) if req.version() == Version::HTTP_11 => {
            Err(BadRequest::new("HTTP/1.1 request without a Host header"))
        }
        (Some(h), Some(a))
            if req.method() != Method::CONNECT
                && !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) =>
        {
            Err(BadRequest::new(
                "Host header differs from the request target's authority",
            ))
        }
        _ => Ok(()),
    }
}
