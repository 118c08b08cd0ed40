//! Power of two choices over the ready endpoints, by load — tower's `p2c::Balance`, with one
//! addition the retry layer needs: a request carrying [`Tried`] avoids the endpoints its
//! earlier attempts went to, while another endpoint is ready.
//!
//! Tower's balancer picks its endpoint in `poll_ready`, before it sees the request, so it
//! cannot steer one request. Here `poll_ready` makes the same pick (and guarantees a ready
//! endpoint); `call` keeps it unless the request has already tried that endpoint, and then
//! picks again by load among the ready endpoints it has not tried. Every endpoint in the ready
//! set has answered `poll_ready` and not been called since, so calling any of them is within
//! the `Service` contract.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::TryFutureExt;
use futures_util::future::MapErr;
use http::Request;
use tower::discover::{Change, Discover};
use tower::load::Load;
use tower::ready_cache::ReadyCache;
use tower_service::Service;

use crate::BoxError;
use crate::body::RequestBody;

/// The endpoints the attempts of one request have gone to, shared by those attempts (the
/// retry layer puts one in the request's extensions; each attempt's pick adds to it).
#[derive(Clone, Debug, Default)]
pub struct Tried(Arc<Mutex<Vec<SocketAddr>>>);

impl Tried {
    fn contains(&self, addr: &SocketAddr) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(addr)
    }

    fn push(&self, addr: SocketAddr) {
        let mut tried = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by the attempts of one request; a few entries at most.
        if !tried.contains(&addr) && tried.len() < 64 {
            tried.push(addr);
        }
    }

    /// The endpoints tried so far.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// P2C over a discovered set of endpoints keyed by address; see the module docs.
pub struct P2c<D: Discover> {
    discover: D,
    services: ReadyCache<SocketAddr, D::Service, Request<RequestBody>>,
    ready_index: Option<usize>,
}

impl<D: Discover> std::fmt::Debug for P2c<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2c")
            .field("ready", &self.services.ready_len())
            .field("pending", &self.services.pending_len())
            .finish_non_exhaustive()
    }
}

impl<D> P2c<D>
where
    D: Discover<Key = SocketAddr>,
    D::Service: Service<Request<RequestBody>>,
    <D::Service as Service<Request<RequestBody>>>::Error: Into<BoxError>,
{
    /// A balancer over `discover`'s endpoints.
    pub fn new(discover: D) -> Self {
        Self {
            discover,
            services: ReadyCache::default(),
            ready_index: None,
        }
    }
}

impl<D> P2c<D>
where
    D: Discover<Key = SocketAddr> + Unpin,
    D::Error: Into<BoxError>,
    D::Service: Service<Request<RequestBody>> + Load,
    <D::Service as Load>::Metric: PartialOrd,
    <D::Service as Service<Request<RequestBody>>>::Error: Into<BoxError>,
{
    fn update_from_discover(&mut self, cx: &mut Context<'_>) -> Result<(), BoxError> {
        loop {
            match Pin::new(&mut self.discover).poll_discover(cx) {
                Poll::Pending | Poll::Ready(None) => return Ok(()),
                Poll::Ready(Some(Err(e))) => return Err(e.into()),
                Poll::Ready(Some(Ok(Change::Remove(key)))) => {
                    self.services.evict(&key);
                }
                Poll::Ready(Some(Ok(Change::Insert(key, svc)))) => {
                    self.services.push(key, svc);
                }
            }
        }
    }

    fn promote_pending(&mut self, cx: &mut Context<'_>) {
        loop {
            match self.services.poll_pending(cx) {
                Poll::Ready(Ok(())) | Poll::Pending => break,
                Poll::Ready(Err(error)) => {
                    tracing::debug!(%error, "dropping failed endpoint");
                }
            }
        }
    }

    /// Two distinct random ready indices among `candidates` (all ready endpoints when
    /// `None`), the less loaded of the two.
    fn pick(&self, candidates: Option<&[usize]>) -> Option<usize> {
        let len = candidates.map_or(self.services.ready_len(), <[usize]>::len);
        let at = |i: usize| candidates.map_or(i, |c| c[i]);
        match len {
            0 => None,
            1 => Some(at(0)),
            len => {
                let a = fastrand::usize(..len);
                let mut b = fastrand::usize(..len - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (at(a), at(b));
                let load = |i| self.services.get_ready_index(i).map(|(_, s)| s.load());
                Some(if load(a) <= load(b) { a } else { b })
            }
        }
    }
}

impl<D> Service<Request<RequestBody>> for P2c<D>
where
    D: Discover<Key = SocketAddr> + Unpin,
    D::Error: Into<BoxError>,
    D::Service: Service<Request<RequestBody>> + Load,
    <D::Service as Load>::Metric: PartialOrd,
    <D::Service as Service<Request<RequestBody>>>::Error: Into<BoxError>,
{
    type Response = <D::Service as Service<Request<RequestBody>>>::Response;
    type Error = BoxError;
    type Future = MapErr<
        <D::Service as Service<Request<RequestBody>>>::Future,
        fn(<D::Service as Service<Request<RequestBody>>>::Error) -> BoxError,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.update_from_discover(cx)?;
        self.promote_pending(cx);
        loop {
            if let Some(index) = self.ready_index.take() {
                match self.services.check_ready_index(cx, index) {
                    Ok(true) => {
                        self.ready_index = Some(index);
                        return Poll::Ready(Ok(()));
                    }
                    Ok(false) => {}
                    Err(error) => tracing::debug!(error = %error.1, "endpoint failed"),
                }
            }
            self.ready_index = self.pick(None);
            if self.ready_index.is_none() {
                return Poll::Pending;
            }
        }
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let mut index = self.ready_index.take().unwrap_or(0);
        if let Some(tried) = req.extensions().get::<Tried>() {
            let key = |i| self.services.get_ready_index(i).map(|(k, _)| *k);
            if key(index).is_some_and(|k| tried.contains(&k)) {
                let untried: Vec<usize> = (0..self.services.ready_len())
                    .filter(|&i| key(i).is_some_and(|k| !tried.contains(&k)))
                    .collect();
                if let Some(other) = self.pick(Some(&untried)) {
                    index = other;
                }
            }
            if let Some(k) = key(index) {
                tried.push(k);
            }
        }
        self.services
            .call_ready_index(index, req)
            .map_err(Into::into as fn(_) -> BoxError)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tower::ServiceExt;
    use tower::load::Constant;

    use super::*;

    type Endpoint =
        Constant<tower::util::BoxService<Request<RequestBody>, SocketAddr, BoxError>, u32>;

    /// A fixed set of endpoints, each answering with its own address, all equally loaded
    /// (a `Discover` through tower's blanket impl for streams of changes).
    struct Fixed(VecDeque<(SocketAddr, Endpoint)>);

    impl futures_util::Stream for Fixed {
        type Item = Result<Change<SocketAddr, Endpoint>, BoxError>;

        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            match self.0.pop_front() {
                Some((k, s)) => Poll::Ready(Some(Ok(Change::Insert(k, s)))),
                None => Poll::Pending,
            }
        }
    }

    fn endpoints(n: u16) -> Fixed {
        Fixed(
            (1..=n)
                .map(|p| {
                    let addr = SocketAddr::from(([127, 0, 0, 1], p));
                    let svc = tower::service_fn(move |_: Request<RequestBody>| async move {
                        Ok::<_, BoxError>(addr)
                    });
                    (addr, Constant::new(tower::util::BoxService::new(svc), 0))
                })
                .collect(),
        )
    }

    #[tokio::test]
    async fn a_retry_avoids_the_endpoints_its_request_tried() {
        let mut p2c = P2c::new(endpoints(3));
        for _ in 0..200 {
            let tried = Tried::default();
            let mut seen = Vec::new();
            for _ in 0..3 {
                let mut req = Request::new(RequestBody::empty());
                req.extensions_mut().insert(tried.clone());
                let addr = p2c
                    .ready()
                    .await
                    .expect("ready")
                    .call(req)
                    .await
                    .expect("answer");
                assert!(!seen.contains(&addr), "{addr} tried twice: {seen:?}");
                seen.push(addr);
            }
            assert_eq!(tried.endpoints(), seen);
            // A fourth attempt has nowhere new to go: any endpoint will do.
            let mut req = Request::new(RequestBody::empty());
            req.extensions_mut().insert(tried.clone());
            p2c.ready()
                .await
                .expect("ready")
                .call(req)
                .await
                .expect("answer");
        }
    }

    #[tokio::test]
    async fn requests_without_tried_spread_over_every_endpoint() {
        let mut p2c = P2c::new(endpoints(3));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let req = Request::new(RequestBody::empty());
            seen.insert(
                p2c.ready()
                    .await
                    .expect("ready")
                    .call(req)
                    .await
                    .expect("answer"),
            );
        }
        assert_eq!(seen.len(), 3);
    }
}
