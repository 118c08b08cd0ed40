//! Whether a response is a success or a failure, decided once and shared.
//!
//! Metrics label responses with it (`classification`), and failure accrual and retries
//! (later stages) decide on it, so all three agree on what "failed" means.
//!
//! HTTP statuses are known from the head, but gRPC reports its outcome in `grpc-status`,
//! which arrives either in the head (a trailers-only response) or in the trailers after a
//! stream of messages. A gRPC response is therefore classified in two steps: [`Classify::head`]
//! may leave the outcome open, and [`Classify::trailers`] or [`Classify::end`] closes it. A
//! response whose body breaks is a failure whatever its head said.
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use mesh_core::classify::{Classify, ResponseClass};
//!
//! // A gRPC call: the 200 head says nothing yet; the trailers say UNAVAILABLE.
//! let c = Classify::for_grpc(true);
//! assert_eq!(c.head(StatusCode::OK, &HeaderMap::new()), None);
//! let mut trailers = HeaderMap::new();
//! trailers.insert("grpc-status", "14".parse().unwrap());
//! assert_eq!(c.trailers(Some(&trailers)), ResponseClass::Failure);
//! ```

use http::{HeaderMap, HeaderName, StatusCode};

/// The outcome of one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseClass {
    /// Anything but a server error (a 4xx is the client's outcome, not a failure of the
    /// destination); for gRPC, `grpc-status: 0`.
    Success,
    /// A 5xx status, a gRPC status other than OK, a gRPC response without any status, or a
    /// response whose body failed.
    Failure,
}

impl ResponseClass {
    /// The `classification` metric label.
    pub fn label(self) -> &'static str {
        match self {
            ResponseClass::Success => "success",
            ResponseClass::Failure => "failure",
        }
    }
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Classifies the response to one request; knows whether that request was a gRPC call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classify {
    grpc: bool,
}

impl Classify {
    /// A classifier for a request with these headers: gRPC when its `content-type` starts
    /// with `application/grpc`.
    pub fn for_request(headers: &HeaderMap) -> Self {
        Self::for_grpc(is_grpc(headers))
    }

    /// A classifier for a gRPC (`true`) or plain HTTP request.
    pub fn for_grpc(grpc: bool) -> Self {
        Self { grpc }
    }

    /// Whether the request was a gRPC call.
    pub fn is_grpc(self) -> bool {
        self.grpc
    }

    /// The outcome as far as the response head tells it; `None` when it is up to the
    /// trailers (a gRPC response with no `grpc-status` in its head).
    pub fn head(self, status: StatusCode, headers: &HeaderMap) -> Option<ResponseClass> {
        if status.is_server_error() {
            return Some(ResponseClass::Failure);
        }
        if !self.grpc {
            return Some(ResponseClass::Success);
        }
        match headers.get(&GRPC_STATUS) {
            Some(code) => Some(grpc_class(code.as_bytes())),
            // Not a gRPC answer at all (an error page from something in between).
            None if !status.is_success() => Some(ResponseClass::Failure),
            None => None,
        }
    }

    /// The outcome once the trailers (or their absence at the end of the body) are known,
    /// for a response whose head left it open.
    pub fn trailers(self, trailers: Option<&HeaderMap>) -> ResponseClass {
        match trailers.and_then(|t| t.get(&GRPC_STATUS)) {
            Some(code) => grpc_class(code.as_bytes()),
            // gRPC requires a status; a stream that ends without one failed.
            None if self.grpc => ResponseClass::Failure,
            None => ResponseClass::Success,
        }
    }

    /// The outcome of a response that ended without trailers.
    pub fn end(self) -> ResponseClass {
        self.trailers(None)
    }
}

/// Whether request headers mark a gRPC call.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn grpc_class(code: &[u8]) -> ResponseClass {
    if code == b"0" {
        ResponseClass::Success
    } else {
        ResponseClass::Failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn http_statuses() {
        let c = Classify::for_grpc(false);
        let none = HeaderMap::new();
        assert_eq!(c.head(StatusCode::OK, &none), Some(ResponseClass::Success));
        assert_eq!(
            c.head(StatusCode::NOT_FOUND, &none),
            Some(ResponseClass::Success)
        );
        assert_eq!(
            c.head(StatusCode::SERVICE_UNAVAILABLE, &none),
            Some(ResponseClass::Failure)
        );
        // A plain HTTP response's grpc-status header means nothing.
        assert_eq!(
            c.head(StatusCode::OK, &headers(&[("grpc-status", "14")])),
            Some(ResponseClass::Success)
        );
    }

    #[test]
    fn grpc_trailers_only() {
        let c = Classify::for_request(&headers(&[("content-type", "application/grpc+proto")]));
        assert!(c.is_grpc());
        assert_eq!(
            c.head(StatusCode::OK, &headers(&[("grpc-status", "0")])),
            Some(ResponseClass::Success)
        );
        assert_eq!(
            c.head(StatusCode::OK, &headers(&[("grpc-status", "5")])),
            Some(ResponseClass::Failure)
        );
    }

    #[test]
    fn grpc_status_in_trailers() {
        let c = Classify::for_grpc(true);
        assert_eq!(c.head(StatusCode::OK, &HeaderMap::new()), None);
        assert_eq!(
            c.trailers(Some(&headers(&[("grpc-status", "0")]))),
            ResponseClass::Success
        );
        assert_eq!(
            c.trailers(Some(&headers(&[("grpc-status", "13")]))),
            ResponseClass::Failure
        );
        assert_eq!(c.trailers(Some(&HeaderMap::new())), ResponseClass::Failure);
        assert_eq!(c.end(), ResponseClass::Failure);
        assert_eq!(Classify::for_grpc(false).end(), ResponseClass::Success);
    }

    #[test]
    fn grpc_without_status_and_a_non_200_is_a_failure() {
        let c = Classify::for_grpc(true);
        assert_eq!(
            c.head(StatusCode::NOT_FOUND, &HeaderMap::new()),
            Some(ResponseClass::Failure)
        );
    }
}
