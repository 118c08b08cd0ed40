//! The response body the proxy hands back to its HTTP server.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::BoxError;
use crate::client::UpstreamBody;

pin_project! {
    /// A response body: streamed from the upstream, or produced locally.
    #[derive(Debug)]
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind {
        Upstream { #[pin] body: UpstreamBody },
        Local { data: Option<Bytes> },
        // A response under a deadline: at the deadline a gRPC stream ends with
        // DEADLINE_EXCEEDED trailers, any other body fails (the server resets the stream or
        // closes the connection, so the client never takes it for a complete answer).
        Deadline { body: Pin<Box<ProxyBody>>, deadline: Pin<Box<tokio::time::Sleep>>, expired: Option<crate::errors::ResponseTimeout>, grpc: bool, done: bool },
    }
}

impl ProxyBody {
    /// A body streamed from an upstream response.
    pub fn upstream(body: Incoming) -> Self {
        Self::from_upstream(UpstreamBody::new(body))
    }

    /// A body streamed from an upstream response through the endpoint client (which may
    /// return the connection to its pool when the body ends).
    pub fn from_upstream(body: UpstreamBody) -> Self {
        Self {
            kind: Kind::Upstream { body },
        }
    }

    /// A body made by the proxy.
    pub fn local(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let data = if data.is_empty() { None } else { Some(data) };
        Self {
            kind: Kind::Local { data },
        }
    }

    /// The body under a request's total deadline: if the upstream has not ended it by
    /// `deadline`, a gRPC body (`grpc`) ends with `grpc-status: 4` (DEADLINE_EXCEEDED)
    /// trailers and any other body fails with `expired` (a total timeout covers the whole
    /// exchange, streams included).
    ///
    /// `deadline` is the timer the caller already armed for the response head: the body
    /// takes it over rather than arming another.
    pub fn with_deadline(
        body: ProxyBody,
        deadline: Pin<Box<tokio::time::Sleep>>,
        grpc: bool,
        expired: crate::errors::ResponseTimeout,
    ) -> Self {
        Self {
            kind: Kind::Deadline {
                body: Box::pin(body),
                deadline,
                expired: Some(expired),
                grpc,
                done: false,
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Local { data: None },
        }
    }
}

impl Default for ProxyBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Local { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Upstream { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Deadline {
                body,
                deadline,
                expired,
                grpc,
                done,
            } => {
                if *done {
                    return Poll::Ready(None);
                }
                if let Poll::Ready(frame) = body.as_mut().poll_frame(cx) {
                    *done = frame.is_none();
                    return Poll::Ready(frame);
                }
                match deadline.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) if !*grpc => {
                        *done = true;
                        let e = expired
                            .take()
                            .map_or_else(|| "deadline".into(), BoxError::from);
                        Poll::Ready(Some(Err(e)))
                    }
                    Poll::Ready(()) => {
                        *done = true;
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("4"));
                        trailers.insert(
                            "grpc-message",
                            http::HeaderValue::from_static("deadline exceeded (mesh proxy)"),
                        );
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local { data } => data.is_none(),
            Kind::Upstream { body } => body.is_end_stream(),
            Kind::Deadline { body, done, .. } => *done || body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Upstream { body } => body.size_hint(),
            Kind::Deadline { body, .. } => body.size_hint(),
        }
    }
}
