//! The hand-off of an upgraded connection (WebSocket) or a `CONNECT` tunnel.
//!
//! An HTTP/1.1 request asking to upgrade, or a `CONNECT`, is forwarded like any other request;
//! only once the upstream agrees — `101 Switching Protocols` to an upgrade, a `2xx` to
//! `CONNECT` — do both connections stop speaking HTTP and become a byte tunnel. [`Upgrades`]
//! takes hold of the client side's pending upgrade before the request goes on, and when the
//! upstream agrees, gives both sides to a [`Tunnel`] that copies the bytes. A refusal is an
//! ordinary response and no tunnel ever opens (never tunnel before the upstream's `101`:
//! DESIGN.md §5).
//!
//! It sits outside the hop-by-hop rules ([`crate::headers::HopByHop`]), so it sees the
//! request as the client sent it. What copying the bytes involves — connection limits, idle
//! timeouts, draining, byte metrics — is the [`Tunnel`]'s business: the proxy's differs from
//! an embedding program's.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::headers::{has_hop_by_hop, wants_upgrade};

/// Runs a tunnel between an upgraded client connection and its upstream.
pub trait Tunnel: Send + Sync {
    /// Both sides agreed to leave HTTP: copy bytes between `downstream` (the client) and
    /// `upstream` until both finish. Called at most once per request; must not block (spawn).
    fn open(&self, downstream: OnUpgrade, upstream: OnUpgrade);
}

/// Hands agreed upgrades and `CONNECT` tunnels of the inner service to a [`Tunnel`].
#[derive(Clone, Debug)]
pub struct Upgrades<S, T> {
    inner: S,
    tunnel: T,
}

impl<S, T> Upgrades<S, T> {
    /// Tunnels `inner`'s agreed upgrades with `tunnel`.
    pub fn new(inner: S, tunnel: T) -> Self {
        Self { inner, tunnel }
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

impl<S, T, B, RB> Service<Request<B>> for Upgrades<S, T>
where
    S: Service<Request<B>, Response = Response<RB>>,
    T: Tunnel + Clone,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = future::ResponseFuture<S::Future, T>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let connect = req.method() == Method::CONNECT;
        let upgrade = !connect
            && req.version() <= Version::HTTP_11
            && has_hop_by_hop(req.headers())
            && wants_upgrade(req.headers());
        let pending = if upgrade || connect {
            // Only requests that may upgrade pay for the tunnel handle.
            Some(Pending {
                downstream: hyper::upgrade::on(&mut req),
                tunnel: self.tunnel.clone(),
                upgrade,
            })
        } else {
            None
        };
        future::ResponseFuture {
            inner: self.inner.call(req),
            pending,
        }
    }
}

/// Builds [`Upgrades`] services.
#[derive(Clone, Debug)]
pub struct UpgradesLayer<T> {
    tunnel: T,
}

impl<T> UpgradesLayer<T> {
    /// Tunnels with `tunnel`.
    pub fn new(tunnel: T) -> Self {
        Self { tunnel }
    }
}

impl<S, T: Clone> tower_layer::Layer<S> for UpgradesLayer<T> {
    type Service = Upgrades<S, T>;

    fn layer(&self, inner: S) -> Upgrades<S, T> {
        Upgrades::new(inner, self.tunnel.clone())
    }
}

#[derive(Debug)]
struct Pending<T> {
    downstream: OnUpgrade,
    tunnel: T,
    upgrade: bool,
}

/// The future [`Upgrades`] returns.
pub mod future {
    use super::*;

    pin_project! {
        /// The inner response; an agreed upgrade opens its tunnel as the response leaves.
        #[derive(Debug)]
        pub struct ResponseFuture<F, T> {
            #[pin]
            pub(super) inner: F,
            pub(super) pending: Option<Pending<T>>,
        }
    }

    impl<F, T, RB, E> Future for ResponseFuture<F, T>
    where
        F: Future<Output = Result<Response<RB>, E>>,
        T: Tunnel,
    {
        type Output = Result<Response<RB>, E>;

        #[inline]
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let mut res = match this.inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(res) => res?,
            };
            if let Some(p) = this.pending.take() {
                let agreed = if p.upgrade {
                    res.status() == StatusCode::SWITCHING_PROTOCOLS
                } else {
                    res.status().is_success()
                };
                if agreed {
                    let upstream = hyper::upgrade::on(&mut res);
                    p.tunnel.open(p.downstream, upstream);
                }
            }
            Poll::Ready(Ok(res))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_layer::Layer;
    use tower_test::mock;

    #[derive(Clone, Default)]
    struct Count(Arc<AtomicUsize>);

    impl Tunnel for Count {
        fn open(&self, _: OnUpgrade, _: OnUpgrade) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn exchange(
        svc: &mut Upgrades<mock::Mock<Request<()>, Response<()>>, Count>,
        handle: &mut mock::Handle<Request<()>, Response<()>>,
        req: Request<()>,
        status: StatusCode,
    ) {
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("ready");
        let fut = svc.call(req);
        let (_, respond) = handle.next_request().await.expect("request");
        let mut res = Response::new(());
        *res.status_mut() = status;
        respond.send_response(res);
        assert_eq!(fut.await.expect("response").status(), status);
    }

    #[tokio::test]
    async fn opens_a_tunnel_only_when_the_upstream_agrees() {
        let (svc, mut handle) = mock::pair::<Request<()>, Response<()>>();
        let count = Count::default();
        let mut svc = UpgradesLayer::new(count.clone()).layer(svc);
        handle.allow(5);
        let ws = || {
            Request::builder()
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(())
                .expect("request")
        };
        let connect = || {
            Request::builder()
                .method(Method::CONNECT)
                .uri("example.com:443")
                .body(())
                .expect("request")
        };
        exchange(&mut svc, &mut handle, ws(), StatusCode::FORBIDDEN).await;
        exchange(&mut svc, &mut handle, connect(), StatusCode::BAD_GATEWAY).await;
        exchange(
            &mut svc,
            &mut handle,
            Request::new(()),
            StatusCode::SWITCHING_PROTOCOLS,
        )
        .await;
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "refused or never asked");
        exchange(&mut svc, &mut handle, ws(), StatusCode::SWITCHING_PROTOCOLS).await;
        exchange(&mut svc, &mut handle, connect(), StatusCode::OK).await;
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }
}
