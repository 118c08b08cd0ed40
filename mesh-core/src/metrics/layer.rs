//! The golden-metrics layer: request count, latency to the response head, and the response
//! count by status and classification, recorded when the response *ends*.
//!
//! Counting at the end rather than at the head is what makes gRPC honest: a call that fails
//! with `grpc-status: 14` in its trailers has a `200` head, and only the trailers say it
//! failed ([`crate::classify`]). A response body that breaks counts as a failure; one the
//! client abandons keeps the outcome its head (or nothing yet, for gRPC: a failure) gave it.
//!
//! In the proxy it sits above the one error classifier, so responses the proxy makes itself
//! (a `502` for a refused connection, a `504` for a timeout) are counted like any other.
//! Errors that reach it as errors, not responses, are not counted here: whoever turns them
//! into responses (or gives them to an embedding program) owns them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::HttpMetrics;
use crate::classify::{Classify, ResponseClass};

/// Records golden metrics for every request through the inner service.
#[derive(Clone, Debug)]
pub struct RecordHttp<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S> RecordHttp<S> {
    /// Records `inner`'s requests and responses into `metrics`.
    pub fn new(inner: S, metrics: Arc<HttpMetrics>) -> Self {
        Self { inner, metrics }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, RB> Service<Request<B>> for RecordHttp<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body,
{
    type Response = Response<RecordBody<RB>>;
    type Error = S::Error;
    type Future = future::ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.metrics.request();
        let classify = Classify::for_request(req.headers());
        future::ResponseFuture {
            inner: self.inner.call(req),
            record: Some(Pending {
                metrics: self.metrics.clone(),
                classify,
                start: Instant::now(),
            }),
        }
    }
}

/// Builds [`RecordHttp`] services that share one set of metric handles.
#[derive(Clone, Debug)]
pub struct RecordHttpLayer {
    metrics: Arc<HttpMetrics>,
}

impl RecordHttpLayer {
    /// A layer recording into `metrics` (resolved once per target).
    pub fn new(metrics: Arc<HttpMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RecordHttpLayer {
    type Service = RecordHttp<S>;

    fn layer(&self, inner: S) -> RecordHttp<S> {
        RecordHttp::new(inner, self.metrics.clone())
    }
}

#[derive(Debug)]
struct Pending {
    metrics: Arc<HttpMetrics>,
    classify: Classify,
    start: Instant,
}

/// The future [`RecordHttp`] returns.
pub mod future {
    use super::*;

    pin_project! {
        /// The inner response, with its body wrapped to record the outcome at its end.
        #[derive(Debug)]
        pub struct ResponseFuture<F> {
            #[pin]
            pub(super) inner: F,
            pub(super) record: Option<Pending>,
        }
    }

    impl<F, RB, E> Future for ResponseFuture<F>
    where
        F: Future<Output = Result<Response<RB>, E>>,
        RB: Body,
    {
        type Output = Result<Response<RecordBody<RB>>, E>;

        #[inline]
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let res = match this.inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(res) => res?,
            };
            let Some(p) = this.record.take() else {
                // Polled after completion: nothing left to record.
                return Poll::Ready(Ok(res.map(RecordBody::unrecorded)));
            };
            p.metrics.latency(p.start.elapsed());
            let status = res.status();
            let decided = p.classify.head(status, res.headers());
            let ended = res.body().is_end_stream();
            let mut outcome = Some(Outcome {
                metrics: p.metrics,
                classify: p.classify,
                status,
                decided,
            });
            if ended && let Some(o) = outcome.take() {
                o.finish(None);
            }
            Poll::Ready(Ok(res.map(|inner| RecordBody { inner, outcome })))
        }
    }
}

#[derive(Debug)]
struct Outcome {
    metrics: Arc<HttpMetrics>,
    classify: Classify,
    status: StatusCode,
    decided: Option<ResponseClass>,
}

impl Outcome {
    /// Records the response. `end` is the outcome learnt at the end of the body, if any.
    fn finish(self, end: Option<ResponseClass>) {
        let class = match (self.decided, end) {
            // A broken body fails even a response whose head looked fine.
            (_, Some(ResponseClass::Failure)) => ResponseClass::Failure,
            (Some(head), _) => head,
            (None, Some(end)) => end,
            (None, None) => self.classify.end(),
        };
        self.metrics.response(self.status, class);
    }
}

pin_project! {
    /// A response body that records its response's outcome when it ends, fails, or is
    /// dropped.
    #[derive(Debug)]
    pub struct RecordBody<B> {
        #[pin]
        inner: B,
        outcome: Option<Outcome>,
    }

    impl<B> PinnedDrop for RecordBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(o) = this.project().outcome.take() {
                o.finish(None);
            }
        }
    }
}

impl<B> RecordBody<B> {
    fn unrecorded(inner: B) -> Self {
        Self {
            inner,
            outcome: None,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: Body> Body for RecordBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let end = match &polled {
            Poll::Pending => return polled,
            Poll::Ready(None) => Some(None),
            Poll::Ready(Some(Err(_))) => Some(Some(ResponseClass::Failure)),
            Poll::Ready(Some(Ok(frame))) => match frame.trailers_ref() {
                Some(trailers) => this
                    .outcome
                    .as_ref()
                    .map(|o| Some(o.classify.trailers(Some(trailers)))),
                // hyper stops polling once `is_end_stream` is true, so the last data frame
                // may be the end.
                None => this.inner.is_end_stream().then_some(None),
            },
        };
        if let Some(end) = end
            && let Some(o) = this.outcome.take()
        {
            o.finish(end);
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use tower_layer::Layer;
    use tower_test::mock;

    type Frames = StreamBody<
        futures_util::stream::Iter<
            std::vec::IntoIter<Result<Frame<bytes::Bytes>, std::convert::Infallible>>,
        >,
    >;

    fn frames(frames: Vec<Frame<bytes::Bytes>>) -> Frames {
        StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }

    /// `(status_code, classification) -> count` for `mesh_response_total`.
    fn responses(snap: &Snapshotter) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for (key, _, _, value) in snap.snapshot().into_vec() {
            if key.key().name() != super::super::RESPONSE_TOTAL {
                continue;
            }
            let label = |n: &str| {
                key.key()
                    .labels()
                    .find(|l| l.key() == n)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            if let DebugValue::Counter(c) = value {
                out.push((label("status_code"), label("classification"), c));
            }
        }
        out.sort();
        out
    }

    /// A recorder for this test's thread (current-thread runtime: the layer runs here too;
    /// status counters are registered lazily, at the first response of each status).
    fn setup() -> (
        Snapshotter,
        Arc<HttpMetrics>,
        metrics::LocalRecorderGuard<'static>,
    ) {
        let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
        let snap = recorder.snapshotter();
        let guard = metrics::set_default_local_recorder(recorder);
        (snap, Arc::new(HttpMetrics::new("outbound", "world")), guard)
    }

    async fn ready<S: Service<R>, R>(svc: &mut S) {
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .map_err(|_| "not ready")
            .expect("ready");
    }

    #[tokio::test]
    async fn grpc_failure_in_trailers_counts_when_the_body_ends() {
        let (snap, metrics, _recorder) = setup();
        let (svc, mut handle) = mock::pair::<Request<()>, Response<Frames>>();
        let mut svc = RecordHttpLayer::new(metrics).layer(svc);
        handle.allow(1);
        ready(&mut svc).await;
        let req = Request::builder()
            .header("content-type", "application/grpc")
            .body(())
            .expect("request");
        let fut = svc.call(req);
        let (_, respond) = handle.next_request().await.expect("request");
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        respond.send_response(Response::new(frames(vec![
            Frame::data(bytes::Bytes::from_static(b"msg")),
            Frame::trailers(trailers),
        ])));
        let res = fut.await.expect("response");
        assert_eq!(res.status(), StatusCode::OK);
        assert!(responses(&snap).is_empty(), "not counted at the head");
        let collected = res.into_body().collect().await.expect("body");
        assert!(collected.trailers().is_some());
        assert_eq!(
            responses(&snap),
            vec![("200".to_owned(), "failure".to_owned(), 1)]
        );
    }

    #[tokio::test]
    async fn http_statuses_count_once_at_the_end_or_when_dropped() {
        let (snap, metrics, _recorder) = setup();
        let (svc, mut handle) = mock::pair::<Request<()>, Response<Full<bytes::Bytes>>>();
        let mut svc = RecordHttp::new(svc, metrics);
        handle.allow(2);
        ready(&mut svc).await;
        let fut = svc.call(Request::new(()));
        let (_, respond) = handle.next_request().await.expect("request");
        let mut res = Response::new(Full::new(bytes::Bytes::from_static(b"down")));
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        respond.send_response(res);
        let body = fut.await.expect("response").into_body();
        body.collect().await.expect("body");
        ready(&mut svc).await;
        let fut = svc.call(Request::new(()));
        let (_, respond) = handle.next_request().await.expect("request");
        respond.send_response(Response::new(Full::new(bytes::Bytes::from_static(b"ok"))));
        // The client goes away before reading the body: the head's outcome counts.
        drop(fut.await.expect("response"));
        assert_eq!(
            responses(&snap),
            vec![
                ("200".to_owned(), "success".to_owned(), 1),
                ("503".to_owned(), "failure".to_owned(), 1),
            ]
        );
    }
}
