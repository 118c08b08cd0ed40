//! Hop-by-hop rules as a layer: strips the request's connection-level headers on the way in
//! and the response's on the way out, keeping what an agreed upgrade needs; a response also
//! takes this hop's HTTP version (an HTTP/1.0 upstream's answer leaves as 1.1).
//!
//! It sits outside routing and inside the upgrade hand-off ([`crate::upgrade`]), so the
//! headers an upgrade needs reach the upstream and its `101` answer reaches the client.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode, Version};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{has_hop_by_hop, strip_hop_by_hop, wants_upgrade};

/// Removes hop-by-hop headers from requests and responses of the inner service.
#[derive(Clone, Debug)]
pub struct HopByHop<S> {
    inner: S,
}

impl<S> HopByHop<S> {
    /// Applies the hop-by-hop rules around `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
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

impl<S, B, RB> Service<Request<B>> for HopByHop<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = future::ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // An upgrade needs `Connection` and `Upgrade`: without any hop-by-hop field there is
        // neither, and nothing to strip.
        let upgrade = if has_hop_by_hop(req.headers()) {
            let upgrade = req.version() <= Version::HTTP_11 && wants_upgrade(req.headers());
            strip_hop_by_hop(req.headers_mut(), upgrade);
            upgrade
        } else {
            false
        };
        future::ResponseFuture {
            inner: self.inner.call(req),
            upgrade,
        }
    }
}

/// Builds [`HopByHop`] services.
#[derive(Clone, Copy, Debug, Default)]
pub struct HopByHopLayer(());

impl HopByHopLayer {
    /// The layer.
    pub fn new() -> Self {
        Self(())
    }
}

impl<S> tower_layer::Layer<S> for HopByHopLayer {
    type Service = HopByHop<S>;

    fn layer(&self, inner: S) -> HopByHop<S> {
        HopByHop::new(inner)
    }
}

/// The future [`HopByHop`] returns.
pub mod future {
    use super::*;

    pin_project! {
        /// The inner response with its hop-by-hop headers removed.
        #[derive(Debug)]
        pub struct ResponseFuture<F> {
            #[pin]
            pub(super) inner: F,
            pub(super) upgrade: bool,
        }
    }

    impl<F, RB, E> Future for ResponseFuture<F>
    where
        F: Future<Output = Result<Response<RB>, E>>,
    {
        type Output = Result<Response<RB>, E>;

        #[inline]
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let mut res = match this.inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(res) => res?,
            };
            // A `101` to an upgrade keeps `Connection: upgrade` and `Upgrade`; everything
            // else (a `2xx` to CONNECT included) loses its connection headers.
            let switched = *this.upgrade && res.status() == StatusCode::SWITCHING_PROTOCOLS;
            strip_hop_by_hop(res.headers_mut(), switched);
            if res.version() == Version::HTTP_10 {
                // RFC 9110 §2.5: an intermediary sends its own HTTP version. hyper writes a
                // response in the version it carries, so an HTTP/1.0 upstream's answer would
                // reach a 1.1 client as a 1.0 response (close-delimited, connection closed)
                // and a keep-alive 1.0 client without `Connection: keep-alive`. hyper itself
                // answers a 1.0 client in 1.0.
                *res.version_mut() = Version::HTTP_11;
            }
            Poll::Ready(Ok(res))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_layer::Layer;
    use tower_test::mock;

    #[tokio::test]
    async fn strips_both_directions_and_keeps_an_agreed_upgrade() {
        let (svc, mut handle) = mock::pair::<Request<()>, Response<()>>();
        let mut svc = HopByHopLayer::new().layer(svc);
        handle.allow(2);
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("ready");
        let req = Request::builder()
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-app", "kept")
            .body(())
            .expect("request");
        let fut = svc.call(req);
        let (seen, respond) = handle.next_request().await.expect("request");
        let names: Vec<_> = seen.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-app"]);
        respond.send_response(
            Response::builder()
                .header("connection", "close")
                .header("transfer-encoding", "chunked")
                .header("x-reply", "kept")
                .body(())
                .expect("response"),
        );
        let res = fut.await.expect("response");
        let names: Vec<_> = res.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-reply"]);

        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("ready");
        let req = Request::builder()
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .expect("request");
        let fut = svc.call(req);
        let (seen, respond) = handle.next_request().await.expect("request");
        assert_eq!(seen.headers()["upgrade"], "websocket");
        assert_eq!(seen.headers()["connection"], "upgrade");
        respond.send_response(
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(())
                .expect("response"),
        );
        let res = fut.await.expect("response");
        assert_eq!(res.headers()["upgrade"], "websocket");
    }
}
