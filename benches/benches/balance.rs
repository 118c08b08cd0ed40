//! Micro benchmark: the balancer's cost per request as the endpoint count grows.
//!
//! `pick` drives the P2C + Peak-EWMA balance stage alone (readiness, two random picks, the
//! load comparison, the call); `request` goes through the whole per-destination balancer
//! (the bounded queue's hop to its worker, fail-fast, accrual). Endpoints answer at once,
//! so what is measured is the balancer. Run with `cargo bench -p mesh-benches --bench balance`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::BoxError;
use mesh_core::balance::{BalanceConfig, Balancer};
use mesh_core::body::{ProxyBody, RequestBody};
use mesh_core::resolve::Resolution;
use mesh_core::target::Endpoint;
use tower::ServiceExt;
use tower::balance::p2c::Balance;
use tower::discover::{Change, ServiceList};
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::util::BoxService;
use tower_service::Service;

fn main() {
    divan::main();
}

type Svc = BoxService<Request<RequestBody>, Response<ProxyBody>, BoxError>;

fn endpoint() -> Svc {
    BoxService::new(tower::service_fn(|_req: Request<RequestBody>| async {
        Ok::<_, BoxError>(Response::new(ProxyBody::empty()))
    }))
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}

const COUNTS: [usize; 4] = [2, 10, 100, 1000];

#[divan::bench(args = COUNTS)]
fn pick(bencher: divan::Bencher, n: usize) {
    let rt = runtime();
    let list: Vec<(usize, Svc)> = (0..n).map(|i| (i, endpoint())).collect();
    let discover = ServiceList::new(list.into_iter().map(|(_, s)| s));
    let discover = PeakEwmaDiscover::new(
        discover,
        std::time::Duration::from_millis(30),
        std::time::Duration::from_secs(10),
        CompleteOnResponse::default(),
    );
    let mut balance: Balance<_, Request<RequestBody>> = Balance::new(discover);
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    // Take in every endpoint first.
    let _ = rt.block_on(async { std::future::poll_fn(|cx| balance.poll_ready(cx)).await });
    bencher.bench_local(|| {
        rt.block_on(async {
            if let Poll::Ready(Ok(())) = balance.poll_ready(&mut cx) {
                let _ = balance.call(Request::new(RequestBody::empty())).await;
            }
        })
    });
    let _: Option<Change<usize, Infallible>> = None;
}

#[divan::bench(args = COUNTS)]
fn request(bencher: divan::Bencher, n: usize) {
    let rt = runtime();
    let balancer = rt.block_on(async {
        let endpoints = (0..n).map(|i| {
            let port = u16::try_from(1000 + i).unwrap_or(u16::MAX);
            Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
        });
        let (_tx, rx) = tokio::sync::watch::channel(Resolution::endpoints(endpoints));
        // The sender is dropped: the set is final, as a static namer's.
        Balancer::new(
            "bench".into(),
            rx,
            |_: &Endpoint| endpoint(),
            &BalanceConfig::default(),
        )
    });
    // Warm up: the worker takes in every endpoint.
    rt.block_on(async {
        for _ in 0..10 {
            let _ = balancer
                .clone()
                .oneshot(Request::new(RequestBody::empty()))
                .await;
        }
    });
    bencher
        .bench_local(|| rt.block_on(balancer.clone().oneshot(Request::new(RequestBody::empty()))));
}
