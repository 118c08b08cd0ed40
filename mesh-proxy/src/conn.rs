//! Per-connection bookkeeping: byte counts, the HTTP/1 header-read timer, the idle timer,
//! and what the framing scanner saw.
//!
//! hyper's own `header_read_timeout` re-arms a boxed timer for every request and also runs
//! while a keep-alive connection waits for its next request, closing idle connections after
//! the header timeout (the problem linkerd2-proxy hit). Instead the connection's I/O wrapper
//! notes when the first byte of a request head arrives, and one watchdog per connection
//! sleeps until the next deadline: the header deadline while a head is being read, the idle
//! deadline while nothing is in flight. A request costs a clock read and a few atomic
//! stores, and no timer.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use mesh_core::body::BodyEnd;

use mesh_core::framing::HeadScanner;

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// Shared state of one client connection.
#[derive(Debug)]
pub(crate) struct ConnState {
    base: Instant,
    phase: AtomicU8,
    head_started_ms: AtomicU64,
    idle_since_ms: AtomicU64,
    in_flight: AtomicUsize,
    ambiguous: AtomicBool,
    read: AtomicU64,
    written: AtomicU64,
    /// When the in-flight HTTP/1 request's response head is due (`NO_DEADLINE` if none).
    head_deadline_ms: AtomicU64,
    /// The response timeout of the in-flight HTTP/1 request, waiting for its body to end
    /// before it starts (`NO_DEADLINE` if none).
    head_timeout_pending_ms: AtomicU64,
    /// The in-flight request's body is still arriving.
    body_open: AtomicBool,
    /// When the in-flight request's body last made progress (its start, then each chunk).
    body_progress_ms: AtomicU64,
    head_timed_out: AtomicBool,
    head_waker: AtomicWaker,
    /// A request body was abandoned mid-way: later bytes are not scanned as heads, and the
    /// connection closes after its next response.
    desynced: AtomicBool,
}

const NO_DEADLINE: u64 = u64::MAX;

impl ConnState {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            phase: AtomicU8::new(IDLE),
            head_started_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            ambiguous: AtomicBool::new(false),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            head_deadline_ms: AtomicU64::new(NO_DEADLINE),
            head_timeout_pending_ms: AtomicU64::new(NO_DEADLINE),
            body_open: AtomicBool::new(false),
            body_progress_ms: AtomicU64::new(0),
            head_timed_out: AtomicBool::new(false),
            head_waker: AtomicWaker::new(),
            desynced: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request reached the service: its head is complete. The exchange lasts until the
    /// response is done (the returned guard drops) and, when the request has a body, until
    /// that body ends too (the returned hook is told): only then can the next bytes be a new
    /// request head.
    pub(crate) fn request_started(
        self: &Arc<Self>,
        body_open: bool,
    ) -> (RequestGuard, Option<Arc<dyn BodyEnd>>) {
        self.in_flight
            .fetch_add(if body_open { 2 } else { 1 }, Relaxed);
        if body_open {
            self.body_progress_ms.store(self.now_ms(), Relaxed);
            self.body_open.store(true, SeqCst);
        }
        self.phase.store(BUSY, Relaxed);
        let hook = body_open.then(|| self.clone() as Arc<dyn BodyEnd>);
        (RequestGuard(self.clone()), hook)
    }

    /// One part of an exchange (its response, or its request body) is over.
    fn finish_one(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.idle_since_ms.store(self.now_ms(), Relaxed);
            self.phase.store(IDLE, Relaxed);
        }
    }

    /// Whether the connection lost track of message boundaries (an abandoned request body);
    /// its next response must close it.
    pub(crate) fn is_desynced(&self) -> bool {
        self.desynced.load(Relaxed)
    }

    /// Whether the request head just parsed had ambiguous framing; clears the flag.
    pub(crate) fn take_ambiguous(&self) -> bool {
        self.ambiguous.swap(false, Relaxed)
    }

    /// Bytes read from and written to the client so far.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (self.read.load(Relaxed), self.written.load(Relaxed))
    }

    /// Waits until the connection has been idle past `idle` or an HTTP/1 request head has
    /// taken longer than `header` (when given), and says which.
    ///
    /// With `response`, it also enforces the HTTP/1 response timeout: a request whose
    /// response head is due (see [`ConnState::await_response_head`]) and late is failed
    /// through [`ConnState::poll_response_late`]. One request is in flight at a time on an
    /// HTTP/1 connection, so this costs no timer per request.
    pub(crate) async fn expired(
        &self,
        header: Option<Duration>,
        idle: Duration,
        response: Option<Duration>,
    ) -> Expired {
        let idle_ms = duration_ms(idle);
        let header_ms = header.map(duration_ms);
        // The longest the watchdog sleeps without looking: a head that starts while it sleeps
        // through an idle period is noticed within one header timeout, and a response
        // deadline (always at least one response timeout away when set) before it passes.
        let recheck = header_ms
            .unwrap_or(idle_ms)
            .min(idle_ms)
            .min(response.map_or(u64::MAX, duration_ms));
        loop {
            let now = self.now_ms();
            let due = self.head_deadline_ms.load(Relaxed);
            if due != NO_DEADLINE && now >= due {
                self.head_deadline_ms.store(NO_DEADLINE, Relaxed);
                self.head_timed_out.store(true, Relaxed);
                self.head_waker.wake();
            }
            // An upload the upstream stopped reading (and does not answer) makes no
            // progress: its response timeout counts from its last chunk, so it is bounded
            // too, though its end-of-body deadline is never armed.
            let pending = self.head_timeout_pending_ms.load(SeqCst);
            let stalled = if pending != NO_DEADLINE && self.body_open.load(SeqCst) {
                self.body_progress_ms.load(Relaxed).saturating_add(pending)
            } else {
                NO_DEADLINE
            };
            if now >= stalled {
                self.head_timeout_pending_ms.store(NO_DEADLINE, SeqCst);
                self.head_timed_out.store(true, Relaxed);
                self.head_waker.wake();
            }
            let due = self.head_deadline_ms.load(Relaxed).min(stalled);
            let phase = self.phase.load(Relaxed);
            let wake = match header_ms {
                Some(header_ms) if phase == HEAD => {
                    let deadline = self.head_started_ms.load(Relaxed).saturating_add(header_ms);
                    if now >= deadline {
                        return Expired::HeaderTimeout;
                    }
                    deadline.min(now.saturating_add(recheck))
                }
                _ if phase == IDLE && self.in_flight.load(Relaxed) == 0 => {
                    let deadline = self.idle_since_ms.load(Relaxed).saturating_add(idle_ms);
                    if now >= deadline {
                        return Expired::Idle;
                    }
                    deadline.min(now.saturating_add(recheck))
                }
                _ => now.saturating_add(recheck),
            };
            let wake = wake.min(due);
            tokio::time::sleep_until(self.base + Duration::from_millis(wake)).await;
        }
    }

    /// The in-flight request now waits for its response head, for at most `timeout` once
    /// its body has been read in full.
    ///
    /// The clock starts at the end of the request body, as Envoy's route timeout does: an
    /// upload that takes longer than the timeout (the upstream answering once it has the
    /// whole body, as most do) is a slow client, not a slow upstream.
    pub(crate) fn await_response_head(&self, timeout: Duration) {
        // A deadline an earlier request's late body end armed after its answer came is
        // stale: this request's own deadline replaces it.
        self.head_deadline_ms.store(NO_DEADLINE, Relaxed);
        self.head_timed_out.store(false, Relaxed);
        // SeqCst pairs this store with the load of `body_open`, against `body_ended`'s
        // store of `body_open` then swap of the pending timeout: one of the two arms it.
        self.head_timeout_pending_ms
            .store(duration_ms(timeout), SeqCst);
        if !self.body_open.load(SeqCst) {
            self.arm_response_deadline();
        }
    }

    /// Starts the pending response timeout, if any (once, whoever comes first).
    fn arm_response_deadline(&self) {
        let ms = self.head_timeout_pending_ms.swap(NO_DEADLINE, SeqCst);
        if ms != NO_DEADLINE {
            self.head_deadline_ms
                .store(self.now_ms().saturating_add(ms), Relaxed);
        }
    }

    /// The response head arrived (or the request failed otherwise).
    pub(crate) fn response_head_done(&self) {
        self.head_timeout_pending_ms.store(NO_DEADLINE, SeqCst);
        self.head_deadline_ms.store(NO_DEADLINE, Relaxed);
    }

    /// Ready once the watchdog found the awaited response head late.
    pub(crate) fn poll_response_late(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.head_timed_out.load(Relaxed) {
            return Poll::Ready(());
        }
        self.head_waker.register(cx.waker());
        if self.head_timed_out.load(Relaxed) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn on_read(&self, n: usize) {
        self.read.fetch_add(n as u64, Relaxed);
    }

    fn begin_head(&self) {
        self.head_started_ms.store(self.now_ms(), Relaxed);
        self.phase.store(HEAD, Relaxed);
    }

    /// For connections without HTTP requests (opaque TCP, HTTP/2): any byte is activity.
    fn touch(&self) {
        self.idle_since_ms.store(self.now_ms(), Relaxed);
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Why a connection's watchdog fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// A request head took longer than the header read timeout.
    HeaderTimeout,
    /// Nothing was in flight for the idle timeout.
    Idle,
}

/// Marks one request in flight; dropping it (when the response body is done or abandoned)
/// ends the request.
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.finish_one();
    }
}

impl BodyEnd for ConnState {
    fn progressed(&self) {
        self.body_progress_ms.store(self.now_ms(), Relaxed);
    }

    fn body_ended(&self, complete: bool) {
        self.body_open.store(false, SeqCst);
        self.arm_response_deadline();
        if !complete {
            // The rest of that body may still arrive; the proxy no longer knows where the
            // next request head starts.
            self.desynced.store(true, Relaxed);
        }
        self.finish_one();
    }
}

/// How a [`ServerIo`] watches its bytes.
#[derive(Debug)]
pub(crate) enum Watch {
    /// HTTP/1: time request heads and scan them for ambiguous framing.
    Http1(HeadScanner),
    /// HTTP/2: requests are tracked by [`RequestGuard`]s only.
    Http2,
    /// Opaque TCP: any byte in either direction is activity.
    Bytes,
}

pin_project! {
    /// A client connection's I/O, counting bytes and feeding [`ConnState`].
    #[derive(Debug)]
    pub(crate) struct ServerIo<I> {
        #[pin]
        io: I,
        state: Arc<ConnState>,
        watch: Watch,
    }
}

impl<I> ServerIo<I> {
    pub(crate) fn new(io: I, state: Arc<ConnState>, watch: Watch) -> Self {
        Self { io, state, watch }
    }
}

impl<I: AsyncRead> AsyncRead for ServerIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            this.state.on_read(new.len());
            match this.watch {
                Watch::Http1(_) if this.state.desynced.load(Relaxed) => {}
                Watch::Http1(scanner) => {
                    let phase = this.state.phase.load(Relaxed);
                    if phase == IDLE && this.state.in_flight.load(Relaxed) == 0 {
                        this.state.begin_head();
                        scanner.reset();
                        scanner.feed(new);
                    } else if phase == HEAD && !scanner.is_done() {
                        scanner.feed(new);
                    }
                    if scanner.is_done() && scanner.verdict().ambiguous.is_some() {
                        this.state.ambiguous.store(true, Relaxed);
                    }
                }
                Watch::Http2 => {}
                Watch::Bytes => this.state.touch(),
            }
        }
        res
    }
}

impl<I: AsyncWrite> AsyncWrite for ServerIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.state.written.fetch_add(n as u64, Relaxed);
            if matches!(this.watch, Watch::Bytes) {
                this.state.touch();
            }
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            this.state.written.fetch_add(n as u64, Relaxed);
            if matches!(this.watch, Watch::Bytes) {
                this.state.touch();
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn slow_head_expires_after_header_timeout() {
        let state = ConnState::new();
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = ServerIo::new(server, state.clone(), Watch::Http1(HeadScanner::default()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        client.write_all(b"GET / HT").await.expect("write");
        let mut buf = [0u8; 64];
        let _ = io.read(&mut buf).await.expect("read");
        let started = Instant::now();
        let why = state
            .expired(
                Some(Duration::from_secs(10)),
                Duration::from_secs(3600),
                None,
            )
            .await;
        assert_eq!(why, Expired::HeaderTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keepalive_is_not_a_header_timeout() {
        let state = ConnState::new();
        let (guard, hook) = state.request_started(false);
        assert!(hook.is_none());
        drop(guard);
        let started = Instant::now();
        let why = state
            .expired(Some(Duration::from_secs(10)), Duration::from_secs(60), None)
            .await;
        assert_eq!(why, Expired::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_are_never_idle() {
        let state = ConnState::new();
        let (guard, _) = state.request_started(false);
        let watchdog = state.expired(Some(Duration::from_secs(1)), Duration::from_secs(2), None);
        let r = tokio::time::timeout(Duration::from_secs(30), watchdog).await;
        assert!(r.is_err(), "watchdog fired while a request was in flight");
        drop(guard);
    }

    #[tokio::test(start_paused = true)]
    async fn opaque_bytes_count_as_activity() {
        let state = ConnState::new();
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = ServerIo::new(server, state.clone(), Watch::Bytes);
        tokio::time::sleep(Duration::from_secs(50)).await;
        client.write_all(b"x").await.expect("write");
        let mut buf = [0u8; 1];
        io.read_exact(&mut buf).await.expect("read");
        let started = Instant::now();
        assert_eq!(
            state.expired(None, Duration::from_secs(60), None).await,
            Expired::Idle
        );
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert_eq!(state.bytes().0, 1);
    }

    #[tokio::test]
    async fn ambiguous_heads_set_the_flag() {
        let state = ConnState::new();
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = ServerIo::new(server, state.clone(), Watch::Http1(HeadScanner::default()));
        client
            .write_all(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        let _ = io.read(&mut buf).await.expect("read");
        assert!(state.take_ambiguous());
        assert!(!state.take_ambiguous());
    }
}

#[cfg(test)]
mod body_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_exchange_lasts_until_the_request_body_ends() {
        let state = ConnState::new();
        let (guard, hook) = state.request_started(true);
        let hook = hook.expect("a body is open");
        // The response ends first (an early answer); the upload goes on.
        drop(guard);
        let idle = state.expired(Some(Duration::from_secs(1)), Duration::from_secs(2), None);
        assert!(
            tokio::time::timeout(Duration::from_secs(30), idle)
                .await
                .is_err(),
            "not idle while the request body is still arriving"
        );
        hook.body_ended(true);
        let started = Instant::now();
        assert_eq!(
            state
                .expired(Some(Duration::from_secs(1)), Duration::from_secs(2), None)
                .await,
            Expired::Idle
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}

#[cfg(test)]
mod response_deadline_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_fails_a_late_response_head_on_time() {
        let state = ConnState::new();
        let (_guard, _) = state.request_started(false);
        let watchdog = {
            let state = state.clone();
            tokio::spawn(async move {
                state
                    .expired(
                        Some(Duration::from_secs(10)),
                        Duration::from_secs(3600),
                        Some(Duration::from_secs(5)),
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        let started = Instant::now();
        state.await_response_head(Duration::from_secs(5));
        std::future::poll_fn(|cx| state.poll_response_late(cx)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // An answered request is never failed late.
        state.await_response_head(Duration::from_secs(5));
        state.response_head_done();
        let late = tokio::time::timeout(
            Duration::from_secs(20),
            std::future::poll_fn(|cx| state.poll_response_late(cx)),
        )
        .await;
        assert!(late.is_err());
        watchdog.abort();
    }
}
