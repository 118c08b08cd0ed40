//! The one place where a failed request becomes a response.
//!
//! Every stage of the request path raises a small named error where the failure happens
//! ([`ConnectError`], [`ConnectTimeout`], [`UpstreamError`], [`BadRequest`], ...), boxed as a
//! [`BoxError`]. The proxy's HTTP server hands any such error to [`error_response`], which
//! classifies it once: HTTP status, the `l5d-proxy-error` header naming the cause, whether
//! the client connection must close, and for gRPC requests a `grpc-status` and
//! `grpc-message` in a trailers-only response instead of an HTTP error status (gRPC clients
//! read the status from there, not from the HTTP status).
//!
//! mesh-core's own errors are named here; crates built on it (mesh-tls, mesh-discovery,
//! mesh-proxy, an embedding program) wrap theirs in [`HttpError`] to say how they are
//! answered, and [`classify`] honours it. [`Respond`] is the layer that applies all this at
//! the top of a server stack.

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use crate::BoxError;

mod layer;

pub use self::layer::{Respond, RespondLayer, future};
use crate::body::{NotReplayable, ProxyBody, RequestBodyError};
use crate::client::{BadResponse, UpstreamError};
use crate::connect::{ConnectError, ConnectTimeout};

/// The response header that says why the proxy, not the upstream, failed a request.
pub const L5D_PROXY_ERROR: &str = "l5d-proxy-error";

/// The request is malformed or ambiguous in a way that must not be forwarded (HTTP/1
/// framing ambiguities). The client connection is closed after the response, because the
/// proxy cannot know where the next request would begin.
#[derive(Debug, thiserror::Error)]
#[error("bad request: {reason}")]
pub struct BadRequest {
    reason: &'static str,
}

impl BadRequest {
    /// A bad request for `reason`.
    pub fn new(reason: &'static str) -> Self {
        Self { reason }
    }

    /// Why the request was rejected.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// The upstream did not send a response head within the response timeout.
#[derive(Debug, thiserror::Error)]
#[error("no response from {dst} within {timeout:?}")]
pub struct ResponseTimeout {
    dst: std::sync::Arc<str>,
    timeout: std::time::Duration,
}

impl ResponseTimeout {
    /// A response timeout for a request to `dst` (an address or a name) after `timeout`.
    pub fn new(dst: impl std::fmt::Display, timeout: std::time::Duration) -> Self {
        Self {
            dst: dst.to_string().into(),
            timeout,
        }
    }

    /// The same error for a destination name already held as shared text (no allocation).
    pub fn for_dst(dst: std::sync::Arc<str>, timeout: std::time::Duration) -> Self {
        Self { dst, timeout }
    }

    /// The destination that did not answer.
    pub fn dst(&self) -> &str {
        &self.dst
    }

    /// The timeout that passed.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
    }
}

/// gRPC status codes (the full set of the gRPC specification).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrpcCode {
    /// `OK` (0).
    Ok,
    /// `CANCELLED` (1).
    Cancelled,
    /// `UNKNOWN` (2).
    Unknown,
    /// `INVALID_ARGUMENT` (3).
    InvalidArgument,
    /// `DEADLINE_EXCEEDED` (4).
    DeadlineExceeded,
    /// `NOT_FOUND` (5).
    NotFound,
    /// `ALREADY_EXISTS` (6).
    AlreadyExists,
    /// `PERMISSION_DENIED` (7).
    PermissionDenied,
    /// `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted,
    /// `FAILED_PRECONDITION` (9).
    FailedPrecondition,
    /// `ABORTED` (10).
    Aborted,
    /// `OUT_OF_RANGE` (11).
    OutOfRange,
    /// `UNIMPLEMENTED` (12).
    Unimplemented,
    /// `INTERNAL` (13).
    Internal,
    /// `UNAVAILABLE` (14).
    Unavailable,
    /// `DATA_LOSS` (15).
    DataLoss,
    /// `UNAUTHENTICATED` (16).
    Unauthenticated,
}

impl GrpcCode {
    /// The numeric code.
    pub fn as_u8(self) -> u8 {
        match self {
            GrpcCode::Ok => 0,
            GrpcCode::Cancelled => 1,
            GrpcCode::Unknown => 2,
            GrpcCode::InvalidArgument => 3,
            GrpcCode::DeadlineExceeded => 4,
            GrpcCode::NotFound => 5,
            GrpcCode::AlreadyExists => 6,
            GrpcCode::PermissionDenied => 7,
            GrpcCode::ResourceExhausted => 8,
            GrpcCode::FailedPrecondition => 9,
            GrpcCode::Aborted => 10,
            GrpcCode::OutOfRange => 11,
            GrpcCode::Unimplemented => 12,
            GrpcCode::Internal => 13,
            GrpcCode::Unavailable => 14,
            GrpcCode::DataLoss => 15,
            GrpcCode::Unauthenticated => 16,
        }
    }

    /// The code for a number; numbers outside the specification are `UNKNOWN`.
    pub fn from_u8(code: u8) -> Self {
        match code {
            0 => GrpcCode::Ok,
            1 => GrpcCode::Cancelled,
            2 => GrpcCode::Unknown,
            3 => GrpcCode::InvalidArgument,
            4 => GrpcCode::DeadlineExceeded,
            5 => GrpcCode::NotFound,
            6 => GrpcCode::AlreadyExists,
            7 => GrpcCode::PermissionDenied,
            8 => GrpcCode::ResourceExhausted,
            9 => GrpcCode::FailedPrecondition,
            10 => GrpcCode::Aborted,
            11 => GrpcCode::OutOfRange,
            12 => GrpcCode::Unimplemented,
            13 => GrpcCode::Internal,
            14 => GrpcCode::Unavailable,
            15 => GrpcCode::DataLoss,
            16 => GrpcCode::Unauthenticated,
            _ => GrpcCode::Unknown,
        }
    }
}

/// An error that carries its own answer.
///
/// mesh-core cannot name the error types of the crates built on it (mesh-tls,
/// mesh-discovery, mesh-proxy, an embedding program), so those wrap their errors in this
/// type to say how they are answered; [`classify`] honours it wherever it sits in the error's
/// source chain. The message sent in `l5d-proxy-error` is the error's own text.
///
/// ```
/// use http::StatusCode;
/// use mesh_core::errors::{classify, GrpcCode, HttpError};
///
/// #[derive(Debug)]
/// struct WrongPeer;
/// impl std::fmt::Display for WrongPeer {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("expected spiffe://td/ns/a/sa/b, presented spiffe://td/ns/x/sa/y")
///     }
/// }
/// impl std::error::Error for WrongPeer {}
///
/// let err = HttpError::new(StatusCode::BAD_GATEWAY, GrpcCode::Unavailable, WrongPeer);
/// let c = classify(&err);
/// assert_eq!(c.status, StatusCode::BAD_GATEWAY);
/// assert_eq!(c.grpc, GrpcCode::Unavailable);
/// assert!(c.message.contains("spiffe://td/ns/x/sa/y"));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct HttpError {
    status: StatusCode,
    grpc: GrpcCode,
    close: bool,
    source: BoxError,
}

impl HttpError {
    /// An error answered with `status` (or `grpc` for gRPC requests).
    pub fn new(status: StatusCode, grpc: GrpcCode, source: impl Into<BoxError>) -> Self {
        Self {
            status,
            grpc,
            close: false,
            source: source.into(),
        }
    }

    /// Also closes the client connection after the response (the request stream can no
    /// longer be trusted).
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The gRPC status it is answered with.
    pub fn grpc(&self) -> GrpcCode {
        self.grpc
    }
}

/// How an error is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Classified {
    /// HTTP status for non-gRPC requests.
    pub status: StatusCode,
    /// gRPC status for gRPC requests.
    pub grpc: GrpcCode,
    /// Whether the client connection must close after the response.
    pub close: bool,
    /// The human-readable cause, sent in `l5d-proxy-error` (and `grpc-message`).
    pub message: String,
    /// No named error type was found: answered as a 502, and the caller should log it
    /// (rate-limited) so that it gets a name.
    pub unclassified: bool,
}

/// Classifies an error from the request path.
pub fn classify(error: &(dyn std::error::Error + 'static)) -> Classified {
    let mut message = chain_message(error);
    let mut unclassified = false;
    let (status, grpc, close) = if let Some(e) = find::<HttpError>(error) {
        (e.status, e.grpc, e.close)
    } else if find::<BadRequest>(error).is_some() {
        (StatusCode::BAD_REQUEST, GrpcCode::Internal, true)
    } else if find::<NotReplayable>(error).is_some() {
        // A retry that cannot resend its body: the destination failed, not the client.
        (
            StatusCode::SERVICE_UNAVAILABLE,
            GrpcCode::Unavailable,
            false,
        )
    } else if find::<BadResponse>(error).is_some() {
        (StatusCode::BAD_GATEWAY, GrpcCode::Unavailable, false)
    } else if find::<ResponseTimeout>(error).is_some()
        || find::<crate::policy::PerTryTimeout>(error).is_some()
    {
        (
            StatusCode::GATEWAY_TIMEOUT,
            GrpcCode::DeadlineExceeded,
            false,
        )
    } else if find::<ConnectTimeout>(error).is_some() {
        (StatusCode::GATEWAY_TIMEOUT, GrpcCode::Unavailable, false)
    } else if find::<ConnectError>(error).is_some() {
        (StatusCode::BAD_GATEWAY, GrpcCode::Unavailable, false)
    } else if let Some(e) = find::<UpstreamError>(error) {
        if let Some(body_error) = downstream_body_error(e.hyper_error()) {
            // The client's own request body was malformed (bad chunk size) or cut off: the
            // client's fault, not the upstream's.
            message = format!("malformed request body: {}", chain_message(body_error));
            (StatusCode::BAD_REQUEST, GrpcCode::Internal, true)
        } else if e.is_refused_stream() {
            // RFC 9113 §8.7: the upstream did not process the request; it is safe to try
            // again, so say "unavailable", not "bad gateway".
            message = format!(
                "upstream {} refused the stream before processing it (REFUSED_STREAM)",
                e.addr()
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                GrpcCode::Unavailable,
                false,
            )
        } else if e.hyper_error().is_timeout() {
            (
                StatusCode::GATEWAY_TIMEOUT,
                GrpcCode::DeadlineExceeded,
                false,
            )
        } else {
            (StatusCode::BAD_GATEWAY, GrpcCode::Unavailable, false)
        }
    } else {
        // A failure with no named error type: answered, and flagged so the caller logs it
        // (rate-limited, never once per request) and it gets a name.
        unclassified = true;
        (StatusCode::BAD_GATEWAY, GrpcCode::Internal, false)
    };
    Classified {
        status,
        grpc,
        close,
        message,
        unclassified,
    }
}

/// Turns `error` into the response the client receives; `grpc` says whether the request was
/// a gRPC call (its `content-type` starts with `application/grpc`).
pub fn error_response(error: &BoxError, grpc: bool) -> Response<ProxyBody> {
    error_response_for(&classify(error.as_ref()), grpc)
}

/// The response for an error already classified.
pub fn error_response_for(c: &Classified, grpc: bool) -> Response<ProxyBody> {
    let header = header_value(&c.message);
    let mut res = if grpc {
        let mut res = Response::new(ProxyBody::empty());
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(u16::from(c.grpc.as_u8())));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&c.message)) {
            h.insert("grpc-message", v);
        }
        res
    } else {
        let body = Bytes::from(format!("{}\n", c.message));
        let mut res = Response::new(ProxyBody::local(body.clone()));
        *res.status_mut() = c.status;
        let h = res.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        res
    };
    res.headers_mut().insert(L5D_PROXY_ERROR, header);
    if c.close {
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

pub(crate) fn find<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cur = Some(error);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// hyper reports a failure of the request body it was sending as a "user body" error
/// whose source is the error of the body itself: the downstream's ([`RequestBodyError`]).
/// Returns what went wrong with that body.
pub(crate) fn downstream_body_error(
    e: &hyper::Error,
) -> Option<&(dyn std::error::Error + 'static)> {
    use std::error::Error as _;
    let body = e.source().filter(|_| e.is_user())?;
    let body = body.downcast_ref::<RequestBodyError>()?;
    Some(body.source().unwrap_or(body))
}

fn chain_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = error.to_string();
    let mut cur = error.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cur = e.source();
    }
    msg
}

/// A header-safe rendering of `message`: visible ASCII only, bounded in length.
fn header_value(message: &str) -> HeaderValue {
    let clean: String = message
        .chars()
        .take(256)
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("proxy error"))
}

/// gRPC's `grpc-message` encoding: percent-encode everything outside printable ASCII and `%`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes().take(512) {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_request_closes_with_400() {
        let e: BoxError = BadRequest::new("both content-length and transfer-encoding").into();
        let res = error_response(&e, false);
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()[CONNECTION], "close");
        let hdr = res.headers()[L5D_PROXY_ERROR].to_str().expect("ascii");
        assert!(hdr.contains("content-length"), "{hdr}");
    }

    #[tokio::test]
    async fn connect_failures_are_502_or_grpc_unavailable() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let e = crate::connect::TcpConnect::default()
            .connect(addr)
            .await
            .expect_err("refused");
        let res = error_response(&e, false);
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert!(
            res.headers()[L5D_PROXY_ERROR]
                .to_str()
                .expect("ascii")
                .contains(&addr.to_string())
        );
        let res = error_response(&e, true);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "14");
        assert!(res.headers().contains_key("grpc-message"));
    }

    #[test]
    fn unknown_errors_are_502_and_keep_the_connection() {
        let e: BoxError = "something odd".into();
        let c = classify(e.as_ref());
        assert_eq!(c.status, StatusCode::BAD_GATEWAY);
        assert!(!c.close);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("50% é"), "50%25 %C3%A9");
    }
}
