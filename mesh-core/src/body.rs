//! The response body the proxy hands back to its HTTP server.
//!
//! A response either streams from the upstream or was made by the proxy itself (an error
//! response). One enum, rather than a boxed trait object, keeps the per-request path free of
//! an allocation, and lets a pooled HTTP/1 connection go back to its pool exactly when the
//! upstream body ends cleanly.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::client::pool::Returner;

pin_project! {
    /// A response body: streamed from the upstream, or produced locally.
    #[derive(Debug)]
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
        // Returns the upstream HTTP/1 connection to its pool when the body ends cleanly.
        on_eos: Option<Returner>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind {
        Upstream { #[pin] body: Incoming },
        Local { data: Option<Bytes> },
    }
}

impl ProxyBody {
    /// A body streamed from an upstream response.
    pub fn upstream(body: Incoming) -> Self {
        Self {
            kind: Kind::Upstream { body },
            on_eos: None,
        }
    }

    /// A body made by the proxy.
    pub fn local(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let data = if data.is_empty() { None } else { Some(data) };
        Self {
            kind: Kind::Local { data },
            on_eos: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Local { data: None },
            on_eos: None,
        }
    }

    pub(crate) fn with_returner(mut self, returner: Returner) -> Self {
        if self.is_end_stream() {
            returner.give_back();
        } else {
            self.on_eos = Some(returner);
        }
        self
    }
}

fn body_ended(kind: &Pin<&mut Kind>) -> bool {
    match &**kind {
        Kind::Upstream { body } => body.is_end_stream(),
        Kind::Local { data } => data.is_none(),
    }
}

impl Default for ProxyBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        match this.kind.as_mut().project() {
            KindProj::Local { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Upstream { body } => {
                let polled = body.poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(_))) | Poll::Ready(None) => {
                        // hyper stops polling once `is_end_stream` is true, so the last
                        // frame, not only the final `None`, returns the connection.
                        let ended = matches!(polled, Poll::Ready(None)) || body_ended(&this.kind);
                        if ended && let Some(r) = this.on_eos.take() {
                            r.give_back();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // A broken upstream body: never reuse that connection.
                        this.on_eos.take();
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local { data } => data.is_none(),
            Kind::Upstream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Upstream { body } => body.size_hint(),
        }
    }
}

/// Told when a request body has been fully read or abandoned.
///
/// The proxy uses it to know when a connection's exchange is really over: a response can
/// end while the client is still uploading, and until the upload ends the next bytes on the
/// connection are body, not the next request's head.
pub trait BodyEnd: Send + Sync {
    /// The body ended. `complete` is true when it was read to its end, false when it was
    /// abandoned (an error, or dropped early): then the rest of it may still be on the
    /// connection. Called once.
    fn body_ended(&self, complete: bool);
}

/// Calls [`BodyEnd::body_ended`] once, when dropped.
struct EndGuard {
    hook: std::sync::Arc<dyn BodyEnd>,
    complete: bool,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.hook.body_ended(self.complete);
    }
}

impl std::fmt::Debug for EndGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndGuard")
    }
}

pin_project! {
    /// A request body on its way upstream: the client's body, plus an optional hook told when
    /// it ends.
    #[derive(Debug)]
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        on_end: Option<EndGuard>,
    }
}

impl RequestBody {
    /// Wraps a client's request body; `on_end` hears when it ends. A body that is already
    /// complete (no body at all) reports nothing and keeps no hook.
    pub fn new(inner: Incoming, on_end: Option<std::sync::Arc<dyn BodyEnd>>) -> Self {
        // Wrapped first: a hook given for a body that has already ended still hears so.
        let done = inner.is_end_stream();
        let on_end = on_end
            .map(|hook| EndGuard {
                hook,
                complete: done,
            })
            .filter(|_| !done);
        Self { inner, on_end }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let complete = match &polled {
            Poll::Ready(None) => Some(true),
            Poll::Ready(Some(Err(_))) => Some(false),
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream().then_some(true),
            Poll::Pending => None,
        };
        if let Some(complete) = complete
            && let Some(mut guard) = this.on_end.take()
        {
            guard.complete = complete;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
