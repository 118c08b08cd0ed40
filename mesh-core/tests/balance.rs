//! The balancer on paused time: Peak-EWMA keeps traffic off a slow replica, failure accrual
//! ejects a failing one and restores it, fail-fast answers when nothing can serve, and a
//! name that does not exist is answered at once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use mesh_core::BoxError;
use mesh_core::balance::{AccrualConfig, BalanceConfig, Balancer, EndpointState, Health};
use mesh_core::body::{ProxyBody, RequestBody};
use mesh_core::errors::classify;
use mesh_core::resolve::Resolution;
use mesh_core::target::Endpoint;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceExt;
use tower::util::BoxService;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// How one fake endpoint behaves.
#[derive(Clone, Default)]
struct Behaviour {
    delay: Duration,
    failing: Arc<AtomicBool>,
    hang: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
}

type EndpointSvc = BoxService<Request<RequestBody>, Response<ProxyBody>, BoxError>;

fn endpoint_service(b: Behaviour) -> EndpointSvc {
    BoxService::new(tower::service_fn(move |_req: Request<RequestBody>| {
        let b = b.clone();
        async move {
            tokio::time::sleep(b.delay).await;
            if b.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            b.served.fetch_add(1, Ordering::SeqCst);
            let status = if b.failing.load(Ordering::SeqCst) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            let mut res = Response::new(ProxyBody::empty());
            *res.status_mut() = status;
            Ok::<_, BoxError>(res)
        }
    }))
}

struct Fixture {
    balancer: Balancer,
    resolution: watch::Sender<Resolution>,
    behaviours: Arc<BTreeMap<SocketAddr, Behaviour>>,
}

fn fixture(behaviours: Vec<(u16, Behaviour)>, config: BalanceConfig) -> Fixture {
    let behaviours: Arc<BTreeMap<SocketAddr, Behaviour>> =
        Arc::new(behaviours.into_iter().map(|(p, b)| (addr(p), b)).collect());
    let (tx, rx) = watch::channel(Resolution::Pending);
    let table = behaviours.clone();
    let balancer = Balancer::new(
        "/#/test/svc".into(),
        rx,
        move |e: &Endpoint| endpoint_service(table.get(&e.addr()).cloned().unwrap_or_default()),
        &config,
    );
    Fixture {
        balancer,
        resolution: tx,
        behaviours,
    }
}

impl Fixture {
    fn publish(&self, ports: &[u16]) {
        self.resolution.send_replace(Resolution::endpoints(
            ports.iter().map(|p| Endpoint::new(addr(*p))),
        ));
    }

    async fn send(&self) -> Result<Response<ProxyBody>, BoxError> {
        self.balancer
            .clone()
            .oneshot(Request::new(RequestBody::empty()))
            .await
    }

    fn served(&self, port: u16) -> usize {
        self.behaviours[&addr(port)].served.load(Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_keeps_traffic_off_a_slow_replica() {
    let fast = Behaviour {
        delay: Duration::from_millis(1),
        ..Behaviour::default()
    };
    let slow = Behaviour {
        delay: Duration::from_millis(200),
        ..Behaviour::default()
    };
    let f = Arc::new(fixture(
        vec![(1, fast), (2, slow)],
        BalanceConfig::default(),
    ));
    f.publish(&[1, 2]);
    // 32 concurrent clients, 2 000 requests in all.
    let mut clients = Vec::new();
    for _ in 0..32 {
        let f = f.clone();
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for _ in 0..(2000 / 32) {
                let started = Instant::now();
                let res = f.send().await.expect("response");
                assert_eq!(res.status(), 200);
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for c in clients {
        latencies.extend(c.await.expect("client"));
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let (fast_n, slow_n) = (f.served(1), f.served(2));
    let share = slow_n as f64 / (fast_n + slow_n) as f64;
    assert!(
        share < 0.05,
        "the slow replica got {slow_n} of {}",
        fast_n + slow_n
    );
    // The cold burst: a new endpoint takes one request until it has answered, so the slow
    // replica is found out by its first request rather than by half of the first 32.
    assert!(slow_n <= 5, "the slow replica got {slow_n} requests");
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_replica_is_ejected_then_restored() {
    let bad = Behaviour::default();
    bad.failing.store(true, Ordering::SeqCst);
    let config = BalanceConfig {
        accrual: AccrualConfig {
            failures: 5,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        },
        ..BalanceConfig::default()
    };
    let f = fixture(vec![(1, Behaviour::default()), (2, bad.clone())], config);
    f.publish(&[1, 2]);
    for _ in 0..200 {
        let _ = f.send().await;
    }
    // At most the 5 failures that ejected it (plus a probe after each backoff).
    let bad_served = f.served(2);
    assert!(
        bad_served <= 7,
        "the failing replica kept getting traffic: {bad_served}"
    );
    let list = f.balancer.endpoints().list();
    let shown = list
        .iter()
        .find(|v| v.endpoint.addr() == addr(2))
        .expect("listed");
    assert_ne!(shown.state, EndpointState::Balanced(Health::Ready));
    assert!(shown.consecutive_failures >= 5);
    assert_eq!(shown.in_flight, 0);

    // It recovers: after its backoff a probe succeeds and it takes traffic again.
    bad.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = f.served(2);
    for _ in 0..200 {
        let res = f.send().await.expect("response");
        assert_eq!(res.status(), 200);
    }
    assert!(
        f.served(2) > before + 20,
        "restored: {} → {}",
        before,
        f.served(2)
    );
    let summary = f.balancer.endpoints().summary();
    assert_eq!((summary.ready, summary.ejected), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn no_endpoints_fails_fast_then_recovers() {
    let f = fixture(vec![(1, Behaviour::default())], BalanceConfig::default());
    f.publish(&[]);
    let started = Instant::now();
    let err = f.send().await.expect_err("no endpoints");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_millis(3100),
        "failed after the fail-fast timeout: {waited:?}"
    );
    let c = classify(&*err);
    assert_eq!(c.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        c.message.contains("/#/test/svc") && c.message.contains("no endpoints"),
        "{}",
        c.message
    );
    // Failing fast now: the next request fails at once.
    let started = Instant::now();
    assert!(f.send().await.is_err());
    assert!(started.elapsed() < Duration::from_millis(10));
    // An endpoint appears: served at once.
    f.publish(&[1]);
    let res = f.send().await.expect("recovered");
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_name_that_does_not_exist_is_answered_at_once() {
    let f = fixture(vec![(1, Behaviour::default())], BalanceConfig::default());
    f.resolution
        .send_replace(Resolution::DoesNotExist("no file endpoints/svc".into()));
    let started = Instant::now();
    let err = f.send().await.expect_err("no such name");
    assert!(
        started.elapsed() < Duration::from_millis(10),
        "no fail-fast wait"
    );
    let c = classify(&*err);
    assert_eq!(c.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(c.message.contains("no file endpoints/svc"), "{}", c.message);
    f.publish(&[1]);
    assert_eq!(f.send().await.expect("exists now").status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_leaving_endpoint_gets_no_more_requests() {
    let f = fixture(
        vec![(1, Behaviour::default()), (2, Behaviour::default())],
        BalanceConfig::default(),
    );
    f.publish(&[1, 2]);
    for _ in 0..50 {
        f.send().await.expect("response");
    }
    f.publish(&[1]);
    // The removal reaches the balancer with the next readiness check.
    tokio::task::yield_now().await;
    let before = f.served(2);
    for _ in 0..50 {
        f.send().await.expect("response");
    }
    assert_eq!(f.served(2), before);
    assert_eq!(f.balancer.endpoints().list().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lone_cold_endpoint_takes_one_request_then_all() {
    let slowish = Behaviour {
        delay: Duration::from_millis(50),
        ..Behaviour::default()
    };
    let f = Arc::new(fixture(vec![(1, slowish)], BalanceConfig::default()));
    f.publish(&[1]);
    let started = Instant::now();
    let mut burst = Vec::new();
    for _ in 0..20 {
        let f = f.clone();
        burst.push(tokio::spawn(
            async move { f.send().await.map(|r| r.status()) },
        ));
    }
    for b in burst {
        assert_eq!(b.await.expect("task").expect("response"), StatusCode::OK);
    }
    // One answer's wait for the warm-up, then the rest concurrently: two answers' time.
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_probe_does_not_leave_the_endpoint_stuck() {
    let config = BalanceConfig {
        fail_fast: Duration::from_secs(600),
        ..BalanceConfig::default()
    };
    let f = fixture(vec![(1, Behaviour::default())], config);
    f.publish(&[1]);
    let b = f.behaviours[&addr(1)].clone();
    // Eject the only endpoint: 5 failures.
    b.failing.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let _ = f.send().await;
    }
    assert_eq!(f.balancer.endpoints().summary().ejected, 1);
    // After its backoff the probe goes out and hangs; its client gives up.
    b.failing.store(false, Ordering::SeqCst);
    b.hang.store(true, Ordering::SeqCst);
    let probe = tokio::time::timeout(Duration::from_secs(10), f.send()).await;
    assert!(probe.is_err(), "the probe hung and was abandoned");
    assert_eq!(
        b.served.load(Ordering::SeqCst),
        5,
        "the probe was still in the endpoint"
    );
    // The endpoint answers again: it must come back (next backoff, new probe), not stay
    // "probing" forever.
    b.hang.store(false, Ordering::SeqCst);
    let res = tokio::time::timeout(Duration::from_secs(120), f.send())
        .await
        .expect("served again within the next backoff")
        .expect("response");
    assert_eq!(res.status(), 200);
}
