//! A request body that can be sent again, for retries.
//!
//! A retry must send the same bytes as the first attempt, but a request body is a stream
//! read once. [`ReplayBody`] owns the one incoming body across attempts and keeps what it
//! has read in a bounded buffer while it streams: the first attempt is never delayed by
//! buffering, and a retry ([`ReplayBody::try_clone`]) first replays the buffer, then goes on
//! reading the incoming body where the previous attempt stopped. A body larger than the
//! buffer cannot be replayed: once more than `cap` bytes have been read, `try_clone` says no
//! and the request is not retried (DESIGN.md §5: 64 KiB by default). Built
//! [`with_memory`](ReplayBody::with_memory), the buffer also draws on a process-wide
//! [`ReplayMemory`]: when that is spent, the body gives up its buffer the same way.
//!
//! The incoming body is read by one attempt at a time; an attempt that finds it being read,
//! or still waiting for the client, is woken when it moves. A body that failed under one
//! attempt fails every later one (never a clean, shortened end).
//!
//! ```
//! # async fn run() -> Result<(), mesh_core::BoxError> {
//! use bytes::Bytes;
//! use http_body_util::BodyExt;
//! use mesh_core::body::{ReplayBody, RequestBody};
//!
//! let body = RequestBody::from_body(http_body_util::Full::new(Bytes::from_static(b"hello")));
//! let first = ReplayBody::new(body, 64 * 1024);
//! let retry = first.try_clone().expect("nothing read yet: replayable");
//! assert_eq!(first.collect().await?.to_bytes(), "hello");
//! assert_eq!(retry.collect().await?.to_bytes(), "hello");
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::{ReplayMemory, RequestBody, RequestBodyError};
use crate::BoxError;

/// A request body shared by the attempts of one request; see the module docs.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// How many buffered chunks this attempt has replayed.
    replayed: usize,
    /// How many bytes this attempt has produced.
    seen: usize,
    trailers_sent: bool,
    size_hint: SizeHint,
}

#[derive(Debug)]
struct Shared {
    /// The incoming body, while no attempt holds it and it has not ended.
    body: Option<RequestBody>,
    /// Everything read so far, in order (until `overflowed`).
    buf: Vec<Bytes>,
    /// Bytes read from the incoming body so far.
    read: usize,
    cap: usize,
    /// The process-wide allowance `buf` draws on, if any.
    memory: Option<ReplayMemory>,
    /// Bytes of `memory` that `buf` holds.
    reserved: usize,
    /// More than `cap` bytes were read, or `memory` ran out: no further attempt can be made.
    overflowed: bool,
    trailers: Option<HeaderMap>,
    /// The incoming body has ended.
    ended: bool,
    /// The incoming body failed: no attempt can complete it.
    failed: bool,
    /// Attempts waiting for the incoming body to move (it wakes only its last poller).
    waiting: Vec<Waker>,
}

impl Shared {
    /// Keeps `data` for replay, unless that goes past the cap or the process's allowance:
    /// then the buffer is given up (and its allowance returned) for good.
    fn keep(&mut self, data: &Bytes) {
        if self.overflowed {
            return;
        }
        let fits = self.read <= self.cap
            && self
                .memory
                .as_ref()
                .is_none_or(|m| m.try_reserve(data.len()));
        if fits {
            self.reserved += data.len();
            self.buf.push(data.clone());
        } else {
            self.overflowed = true;
            self.buf = Vec::new();
            self.release();
        }
    }

    fn release(&mut self) {
        if let Some(m) = &self.memory {
            m.release(std::mem::take(&mut self.reserved));
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.release();
    }
}

impl ReplayBody {
    /// Wraps `body`, keeping up to `cap` bytes of it for replay.
    pub fn new(body: RequestBody, cap: usize) -> Self {
        Self::build(body, cap, None)
    }

    /// Wraps `body`, keeping up to `cap` bytes of it for replay while `memory` has room for
    /// them; the bytes kept are returned to `memory` when the body is dropped.
    pub fn with_memory(body: RequestBody, cap: usize, memory: ReplayMemory) -> Self {
        Self::build(body, cap, Some(memory))
    }

    fn build(body: RequestBody, cap: usize, memory: Option<ReplayMemory>) -> Self {
        let size_hint = body.size_hint();
        let ended = body.is_end_stream();
        Self {
            shared: Arc::new(Mutex::new(Shared {
                body: Some(body),
                buf: Vec::new(),
                read: 0,
                cap,
                memory,
                reserved: 0,
                overflowed: false,
                trailers: None,
                ended,
                failed: false,
                waiting: Vec::new(),
            })),
            replayed: 0,
            seen: 0,
            trailers_sent: false,
            size_hint,
        }
    }

    /// A body for another attempt, starting from the first byte; `None` once more than the
    /// buffer's cap has been read (the request can no longer be replayed).
    pub fn try_clone(&self) -> Option<Self> {
        let shared = lock(&self.shared);
        if shared.overflowed {
            return None;
        }
        Some(Self {
            shared: self.shared.clone(),
            replayed: 0,
            seen: 0,
            trailers_sent: false,
            size_hint: self.size_hint,
        })
    }

    /// Whether another attempt is still possible.
    pub fn is_replayable(&self) -> bool {
        !lock(&self.shared).overflowed
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// An attempt needs bytes that were read past the replay buffer's cap: they are gone, and
/// the request cannot be sent again. Not the client's fault (a retry policy checks
/// [`ReplayBody::is_replayable`] before retrying); answered like an unavailable upstream.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the replay buffer; it cannot be sent again")]
pub struct NotReplayable;

/// The client's body failed under an earlier attempt.
#[derive(Debug, thiserror::Error)]
#[error("the request body failed during an earlier attempt")]
struct EarlierFailure;

/// Adds `waker` to `waiting` unless an equivalent one is there.
fn register(waiting: &mut Vec<Waker>, waker: &Waker) {
    if !waiting.iter().any(|w| w.will_wake(waker)) {
        waiting.push(waker.clone());
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut shared = lock(&this.shared);
        // First what earlier attempts read.
        if let Some(chunk) = shared.buf.get(this.replayed).cloned() {
            this.replayed += 1;
            this.seen += chunk.len();
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.seen < shared.read {
            // Bytes this attempt has not sent were read past the buffer's cap: gone.
            return Poll::Ready(Some(Err(NotReplayable.into())));
        }
        if shared.failed {
            // The client's body broke under an earlier attempt: never end this one cleanly.
            return Poll::Ready(Some(Err(RequestBodyError::new(EarlierFailure).into())));
        }
        if shared.ended {
            if !this.trailers_sent
                && let Some(t) = shared.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        }
        // Then the incoming body, where the last attempt stopped.
        let Some(mut body) = shared.body.take() else {
            register(&mut shared.waiting, cx.waker());
            return Poll::Pending;
        };
        // The lock is not held while the incoming body is polled.
        drop(shared);
        let polled = Pin::new(&mut body).poll_frame(cx);
        let mut shared = lock(&this.shared);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    shared.read = shared.read.saturating_add(data.len());
                    shared.keep(data);
                    this.seen = shared.read;
                    this.replayed = shared.buf.len();
                } else if let Some(t) = frame.trailers_ref() {
                    shared.trailers = Some(t.clone());
                    shared.ended = true;
                    this.trailers_sent = true;
                }
                if body.is_end_stream() {
                    shared.ended = true;
                }
            }
            Poll::Ready(None) => shared.ended = true,
            Poll::Ready(Some(Err(_))) => shared.failed = true,
            // The incoming body wakes only this attempt: keep the others' wakers too.
            Poll::Pending => register(&mut shared.waiting, cx.waker()),
        }
        shared.body = Some(body);
        if polled.is_ready() {
            // Whatever moved, every other attempt can look again.
            for w in shared.waiting.drain(..) {
                w.wake();
            }
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        shared.ended
            && self.replayed >= shared.buf.len()
            && self.seen >= shared.read
            && (self.trailers_sent || shared.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunks(parts: &[&'static str]) -> RequestBody {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        RequestBody::from_body(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn a_retry_after_a_partial_read_is_byte_identical() {
        let mut first = ReplayBody::new(chunks(&["ab", "cd", "ef"]), 1024);
        let frame = first.frame().await.expect("frame").expect("ok");
        assert_eq!(frame.into_data().expect("data"), "ab");
        // The first attempt fails after one chunk; the retry sends everything.
        let retry = first.try_clone().expect("replayable");
        drop(first);
        assert_eq!(retry.collect().await.expect("body").to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_not_replayed() {
        let first = ReplayBody::new(chunks(&["0123456789", "0123456789"]), 15);
        assert!(first.is_replayable());
        assert_eq!(
            sent(&first).await.len(),
            20,
            "the attempt itself is not limited"
        );
        assert!(!first.is_replayable());
        assert!(first.try_clone().is_none());
    }

    #[tokio::test]
    async fn bodies_share_the_process_allowance_and_return_it() {
        let memory = ReplayMemory::new(25);
        let two = chunks(&["0123456789", "0123456789"]);
        let first = ReplayBody::with_memory(two, 1024, memory.clone());
        let second = ReplayBody::with_memory(chunks(&["abcdefghij"]), 1024, memory.clone());
        assert_eq!(sent(&first).await.len(), 20);
        assert!(first.is_replayable(), "20 of 25 bytes: kept");
        assert_eq!(memory.used(), 20);
        // Only 5 bytes are left: the second body is sent whole but cannot be replayed.
        assert_eq!(
            sent(&second).await,
            "abcdefghij",
            "the attempt is not limited"
        );
        assert!(!second.is_replayable());
        assert_eq!(
            memory.used(),
            20,
            "a body that gave up its buffer holds nothing"
        );
        drop(first);
        assert_eq!(memory.used(), 0, "a dropped body returns what it held");
        let third = ReplayBody::with_memory(chunks(&["abcdefghij"]), 1024, memory.clone());
        assert_eq!(sent(&third).await, "abcdefghij");
        assert!(
            third.is_replayable(),
            "room again once the first was dropped"
        );
    }

    /// What one more attempt of `body` sends.
    async fn sent(body: &ReplayBody) -> Bytes {
        let attempt = body.try_clone().expect("replayable");
        attempt.collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"msg"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body = RequestBody::from_body(http_body_util::StreamBody::new(
            futures_util::stream::iter(frames),
        ));
        let first = ReplayBody::new(body, 1024);
        let retry = first.try_clone().expect("clone");
        let got = first.collect().await.expect("first");
        assert_eq!(got.trailers(), Some(&trailers));
        let got = retry.collect().await.expect("retry");
        assert_eq!(got.trailers(), Some(&trailers));
        assert_eq!(got.to_bytes(), "msg");
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_attempt_that_missed_bytes_past_the_cap_fails_rather_than_skip_them() {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            ["0123456789", "abcdefghij", "tail"]
                .iter()
                .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
                .collect();
        let body = RequestBody::from_body(http_body_util::StreamBody::new(
            futures_util::stream::iter(frames),
        ));
        let mut first = ReplayBody::new(body, 15);
        // A retry made while the body was still replayable...
        let retry = first.try_clone().expect("clone");
        first.frame().await.expect("frame").expect("ok");
        first.frame().await.expect("frame").expect("ok");
        drop(first);
        // ...finds that 20 bytes were read and only 15 could be kept.
        let err = retry.collect().await.expect_err("not replayable");
        assert!(err.to_string().contains("replay"), "{err}");
    }
}

#[cfg(test)]
mod failure_tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_that_failed_fails_every_later_attempt() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err("client reset".into()),
        ];
        let body = RequestBody::from_body(http_body_util::StreamBody::new(
            futures_util::stream::iter(frames),
        ));
        let first = ReplayBody::new(body, 1024);
        let retry = first.try_clone().expect("clone");
        first.collect().await.expect_err("the client's body broke");
        // Not a clean, shortened "part".
        let err = retry.collect().await.expect_err("still broken");
        assert!(err.to_string().contains("earlier attempt"), "{err}");
    }

    #[test]
    fn a_body_past_the_cap_is_the_destinations_failure_not_the_clients() {
        let c = crate::errors::classify(&NotReplayable);
        assert_eq!(c.status, http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(!c.close);
    }
}
