//! `Resilient` against `tower-test` mocks, on paused time: attempts, budgets and deadlines
//! are exact.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use tower::ServiceExt;
use tower::retry::budget::TpsBudget;
use tower_test::mock;

use super::*;
use crate::body::{ProxyBody, ReplayMemory, RequestBody};

fn retry(on: &[&str], max_attempts: u32, ratio: f32) -> Arc<RetryPolicy> {
    Arc::new(RetryPolicy {
        on: on.iter().map(|s| s.parse().expect("valid")).collect(),
        methods: Vec::new(),
        max_attempts,
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        replay_limit: 64 * 1024,
        replay_memory: None,
        budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, ratio)),
        report_count: false,
    })
}

fn policy(retry: Option<Arc<RetryPolicy>>) -> RequestPolicy {
    RequestPolicy {
        dst: "/svc/test".into(),
        retry,
        ..RequestPolicy::default()
    }
}

fn get() -> Request<RequestBody> {
    Request::get("/")
        .body(RequestBody::empty())
        .expect("request")
}

fn status(s: u16) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = StatusCode::from_u16(s).expect("status");
    r
}

type Mocked = mock::Mock<Request<RequestBody>, Response<ProxyBody>>;
type Handle = mock::Handle<Request<RequestBody>, Response<ProxyBody>>;

fn pair() -> (Mocked, Handle) {
    let (svc, mut handle) = mock::pair();
    handle.allow(u64::MAX);
    (svc, handle)
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_retried_after_a_backoff_and_the_success_returned() {
    let (svc, mut handle) = pair();
    let svc = Resilient::new(svc, Some(Arc::new(policy(Some(retry(&["5xx"], 3, 0.2))))));
    let call = tokio::spawn(svc.oneshot(get()));
    let (_, send) = handle.next_request().await.expect("first attempt");
    let t0 = tokio::time::Instant::now();
    send.send_response(status(503));
    let (_, send) = handle.next_request().await.expect("second attempt");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(5) && waited <= Duration::from_millis(10),
        "{waited:?}"
    );
    send.send_response(status(200));
    let res = call.await.expect("join").expect("response");
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn attempts_stop_at_the_limit_and_post_is_not_retried() {
    let (svc, mut handle) = pair();
    let p = Arc::new(policy(Some(retry(&["5xx"], 3, 1.0))));
    let call = tokio::spawn(Resilient::new(svc.clone(), Some(p.clone())).oneshot(get()));
    for _ in 0..3 {
        let (_, send) = handle.next_request().await.expect("attempt");
        send.send_response(status(502));
    }
    assert_eq!(call.await.expect("join").expect("response").status(), 502);

    let mut post = get();
    *post.method_mut() = Method::POST;
    let call = tokio::spawn(Resilient::new(svc, Some(p)).oneshot(post));
    let (_, send) = handle.next_request().await.expect("attempt");
    send.send_response(status(503));
    assert_eq!(answered_without_a_retry(call, &mut handle).await, 503);
}

/// The status `call` ends with, checking that no further attempt reached the service (a
/// retry would wait on a second attempt nobody answers).
async fn answered_without_a_retry(
    call: tokio::task::JoinHandle<Result<Response<ProxyBody>, BoxError>>,
    handle: &mut Handle,
) -> StatusCode {
    let res = tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .expect("answered without a retry");
    let status = res.expect("join").expect("response").status();
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(
        !matches!(handle.poll_request(), std::task::Poll::Ready(Some(_))),
        "no second attempt reached the service"
    );
    status
}

fn put(body: &'static str) -> Request<RequestBody> {
    let body = http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes()));
    Request::put("/")
        .body(RequestBody::from_body(body))
        .expect("request")
}

async fn body_of(req: Request<RequestBody>) -> bytes::Bytes {
    http_body_util::BodyExt::collect(req.into_body())
        .await
        .expect("body")
        .to_bytes()
}

#[tokio::test(start_paused = true)]
async fn a_body_that_finds_the_replay_memory_spent_is_sent_once() {
    let memory = ReplayMemory::new(16);
    let mut r = retry(&["5xx"], 3, 1.0);
    Arc::get_mut(&mut r).expect("unshared").replay_memory = Some(memory.clone());
    let p = Arc::new(policy(Some(r)));
    let (svc, mut handle) = pair();

    // Other requests' buffers hold 10 of the 16 bytes: this 10-byte body is sent, not kept.
    assert!(memory.try_reserve(10));
    let call =
        tokio::spawn(Resilient::new(svc.clone(), Some(p.clone())).oneshot(put("0123456789")));
    let (req, send) = handle.next_request().await.expect("attempt");
    assert_eq!(
        body_of(req).await,
        "0123456789",
        "the attempt itself is whole"
    );
    send.send_response(status(503));
    assert_eq!(answered_without_a_retry(call, &mut handle).await, 503);
    assert_eq!(memory.used(), 10, "the request held nothing once done");

    // With room again, the same request is retried with the same bytes, and gives them back.
    memory.release(10);
    let call = tokio::spawn(Resilient::new(svc, Some(p)).oneshot(put("0123456789")));
    let (req, send) = handle.next_request().await.expect("attempt");
    assert_eq!(body_of(req).await, "0123456789");
    assert_eq!(memory.used(), 10, "kept for a retry");
    send.send_response(status(503));
    let (req, send) = handle.next_request().await.expect("retry");
    assert_eq!(body_of(req).await, "0123456789", "replayed");
    send.send_response(status(200));
    assert_eq!(call.await.expect("join").expect("response").status(), 200);
    assert_eq!(memory.used(), 0, "returned when the request ended");
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_fires_at_its_deadline() {
    let (svc, mut handle) = pair();
    let mut p = policy(None);
    p.timeout = Some(Duration::from_millis(300));
    let t0 = tokio::time::Instant::now();
    let call = tokio::spawn(Resilient::new(svc, Some(Arc::new(p))).oneshot(get()));
    let _held = handle.next_request().await.expect("attempt");
    let err = call.await.expect("join").expect_err("timed out");
    assert_eq!(t0.elapsed(), Duration::from_millis(300));
    assert_eq!(
        crate::errors::classify(err.as_ref()).status,
        StatusCode::GATEWAY_TIMEOUT
    );
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_moves_on_to_another_attempt() {
    let (svc, mut handle) = pair();
    let mut p = policy(Some(retry(&["gateway-error"], 3, 1.0)));
    p.per_try_timeout = Some(Duration::from_millis(100));
    let call = tokio::spawn(Resilient::new(svc, Some(Arc::new(p))).oneshot(get()));
    let _first = handle
        .next_request()
        .await
        .expect("first attempt, never answered");
    let (_, send) = handle.next_request().await.expect("second attempt");
    send.send_response(status(200));
    assert_eq!(call.await.expect("join").expect("response").status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_dead_upstream_gets_retries_within_the_budget() {
    let (svc, mut handle) = pair();
    // ratio 0.2, 10 per second, ttl 10 s.
    let p = Arc::new(policy(Some(retry(&["5xx"], 3, 0.2))));
    let answer = tokio::spawn(async move {
        let mut attempts = 0usize;
        while let Some((_, send)) = handle.next_request().await {
            attempts += 1;
            send.send_response(status(503));
        }
        attempts
    });
    let requests = 1000;
    for _ in 0..requests {
        let res = Resilient::new(svc.clone(), Some(p.clone()))
            .oneshot(get())
            .await;
        assert_eq!(res.expect("response").status(), 503);
    }
    drop(svc);
    let retries = answer.await.expect("join") - requests;
    // At most ratio × requests + min_per_second × ttl (tower's TpsBudget).
    assert!(retries <= requests / 5 + 100, "{retries} retries");
    assert!(retries >= 100, "{retries} retries");
}

#[tokio::test(start_paused = true)]
async fn an_injected_abort_never_reaches_the_service() {
    let (svc, mut handle) = pair();
    let mut p = policy(Some(retry(&["5xx"], 3, 1.0)));
    p.fault = Some(Fault {
        abort: Some((
            StatusCode::SERVICE_UNAVAILABLE,
            crate::errors::GrpcCode::Unavailable,
            Percent::new(100.0).expect("share"),
        )),
        ..Fault::default()
    });
    let err = Resilient::new(svc, Some(Arc::new(p)))
        .oneshot(get())
        .await
        .expect_err("aborted");
    assert_eq!(
        crate::errors::classify(err.as_ref()).status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        !matches!(handle.poll_request(), std::task::Poll::Ready(Some(_))),
        "no request reached the service"
    );
}
