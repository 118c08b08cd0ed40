//! The request body type the request path carries.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::BoxError;

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

    /// Body bytes arrived (called for each data frame before the end): the upload is
    /// progressing, so a response timeout that waits for its end must not fire yet.
    fn progressed(&self) {}
}

/// The client's request body failed: malformed framing (a bad chunk size), a connection cut
/// mid-body, or an embedding program's body error. The classifier answers it `400`: the
/// request, not the upstream, is at fault.
#[derive(Debug, thiserror::Error)]
#[error("request body: {0}")]
pub struct RequestBodyError(#[source] BoxError);

impl RequestBodyError {
    /// Wraps the error of a request body.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self(source.into())
    }
}

/// Calls [`BodyEnd::body_ended`] once, when dropped.
struct EndGuard {
    hook: Arc<dyn BodyEnd>,
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
    #[project = KindProj]
    enum Kind {
        // A client's body as hyper's server received it: the proxy's own path, unboxed.
        Incoming { #[pin] body: Incoming },
        // Any other body (an embedding program's).
        Boxed { #[pin] body: UnsyncBoxBody<Bytes, BoxError> },
    }
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Incoming { .. } => f.write_str("Incoming"),
            Kind::Boxed { .. } => f.write_str("Boxed"),
        }
    }
}

pin_project! {
    /// A request body on its way upstream, plus an optional hook told when it ends.
    #[derive(Debug)]
    pub struct RequestBody {
        #[pin]
        kind: Kind,
        on_end: Option<EndGuard>,
        // Holds the body back until the upstream asks for it (`Expect: 100-continue`);
        // boxed, as it is rare and every request moves this struct several times.
        hold: Option<Box<Hold>>,
    }
}

const HOLDING: u8 = 0;
const RELEASED: u8 = 1;
const REFUSED: u8 = 2;

/// Decides when a held request body may go: released (send it) or refused (the upstream
/// answered without it; fail the body so that connection closes rather than desynchronise).
#[derive(Debug, Default)]
pub(crate) struct HoldSignal {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl HoldSignal {
    /// Lets the body go, unless it was already refused.
    pub(crate) fn release(&self) {
        self.settle(RELEASED);
    }

    /// The body will never be sent, unless it was already released.
    pub(crate) fn refuse(&self) {
        self.settle(REFUSED);
    }

    fn settle(&self, to: u8) {
        if self
            .state
            .compare_exchange(HOLDING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }
}

/// A held body's side of the signal, with the longest it waits before going anyway.
#[derive(Debug)]
struct Hold {
    signal: Arc<HoldSignal>,
    wait: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Hold {
    /// Ready(true) to send, Ready(false) if refused.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        self.signal.waker.register(cx.waker());
        match self.signal.state.load(Ordering::Acquire) {
            RELEASED => return Poll::Ready(true),
            REFUSED => return Poll::Ready(false),
            _ => {}
        }
        // Only held requests pay for a timer.
        let wait = self.wait;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // The upstream said nothing in time: send, as a client would (RFC 9110 §10.1.1).
                self.signal.release();
                Poll::Ready(self.signal.state.load(Ordering::Acquire) == RELEASED)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The upstream answered before asking for the request body, which is therefore not sent.
#[derive(Debug, thiserror::Error)]
#[error("the upstream answered before asking for the request body (Expect: 100-continue)")]
pub(crate) struct NotContinued;

impl RequestBody {
    /// Wraps a client's request body as hyper's server received it; `on_end` hears when it
    /// ends. A body that is already complete (no body at all) reports nothing and keeps no
    /// hook.
    pub fn new(inner: Incoming, on_end: Option<Arc<dyn BodyEnd>>) -> Self {
        Self::with_hook(Kind::Incoming { body: inner }, on_end)
    }

    /// Wraps any body, e.g. an embedding program's.
    pub fn from_body<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self::with_hook(
            Kind::Boxed {
                body: body.map_err(Into::into).boxed_unsync(),
            },
            None,
        )
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::from_body(http_body_util::Empty::<Bytes>::new())
    }

    fn with_hook(kind: Kind, on_end: Option<Arc<dyn BodyEnd>>) -> Self {
        let mut this = Self {
            kind,
            on_end: None,
            hold: None,
        };
        // Wrapped first: a hook given for a body that has already ended still hears so.
        let done = this.is_end_stream();
        this.on_end = on_end
            .map(|hook| EndGuard {
                hook,
                complete: done,
            })
            .filter(|_| !done);
        this
    }
}

impl RequestBody {
    /// Holds the body back until the returned signal releases it, or `wait` passes.
    pub(crate) fn hold(&mut self, wait: Duration) -> Arc<HoldSignal> {
        let signal = Arc::new(HoldSignal::default());
        self.hold = Some(Box::new(Hold {
            signal: signal.clone(),
            wait,
            timer: None,
        }));
        signal
    }
}

impl Default for RequestBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let mut this = self.project();
        if let Some(hold) = this.hold.as_mut() {
            let go = std::task::ready!(hold.poll(cx));
            *this.hold = None;
            if !go {
                // Dropping the guard reports the body abandoned: the rest of it may still
                // be on the client's connection.
                return Poll::Ready(Some(Err(RequestBodyError::new(NotContinued))));
            }
        }
        let polled = match this.kind.as_mut().project() {
            KindProj::Incoming { body } => body
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(RequestBodyError::new))),
            KindProj::Boxed { body } => body
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(RequestBodyError))),
        };
        let complete = match &polled {
            Poll::Ready(None) => Some(true),
            Poll::Ready(Some(Err(_))) => Some(false),
            Poll::Ready(Some(Ok(_))) => {
                let end = this.kind.is_end_stream();
                if !end && let Some(guard) = this.on_end.as_ref() {
                    guard.hook.progressed();
                }
                end.then_some(true)
            }
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
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Incoming { body } => body.size_hint(),
            Kind::Boxed { body } => body.size_hint(),
        }
    }
}

impl Kind {
    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Incoming { body } => body.is_end_stream(),
            Kind::Boxed { body } => body.is_end_stream(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    struct Ended(AtomicU8);

    impl BodyEnd for Ended {
        fn body_ended(&self, complete: bool) {
            self.0.store(if complete { 1 } else { 2 }, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn any_body_can_be_sent_and_its_errors_are_the_clients() {
        let body = RequestBody::from_body(http_body_util::Full::new(Bytes::from_static(b"hi")));
        assert_eq!(body.size_hint().exact(), Some(2));
        let bytes = body.collect().await.expect("body").to_bytes();
        assert_eq!(bytes, "hi");

        let failing = http_body_util::StreamBody::new(futures_util::stream::iter([Err::<
            Frame<Bytes>,
            BoxError,
        >(
            "client hung up".into(),
        )]));
        let err = RequestBody::from_body(failing)
            .collect()
            .await
            .expect_err("fails");
        assert!(err.to_string().contains("client hung up"), "{err}");
    }

    #[tokio::test]
    async fn the_hook_hears_a_complete_or_abandoned_body() {
        let hook = Arc::new(Ended(AtomicU8::new(0)));
        let mut body = RequestBody::from_body(http_body_util::Full::new(Bytes::from_static(b"x")));
        body.on_end = Some(EndGuard {
            hook: hook.clone(),
            complete: false,
        });
        body.collect().await.expect("body");
        assert_eq!(hook.0.load(Ordering::SeqCst), 1, "complete");

        let hook = Arc::new(Ended(AtomicU8::new(0)));
        let mut body = RequestBody::from_body(http_body_util::Full::new(Bytes::from_static(b"x")));
        body.on_end = Some(EndGuard {
            hook: hook.clone(),
            complete: false,
        });
        drop(body);
        assert_eq!(hook.0.load(Ordering::SeqCst), 2, "abandoned");
    }
}
