//! Opening transport connections to endpoints.
//!
//! The connect stack is a `tower::Service<Endpoint>` that yields an I/O stream. It takes the
//! whole [`Endpoint`] target, not just its address, so the layers that wrap it can use what
//! discovery knows: mTLS checks the identity the endpoint must present and offers its
//! protocol in ALPN. This module provides the plain TCP one, [`TcpConnect`]: bounded by a
//! connect timeout, with `TCP_NODELAY` set (HTTP messages are written whole, so Nagle only
//! adds latency). The HTTP clients in [`crate::client`] and opaque TCP forwarding accept any
//! such service.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::BoxError;
use crate::target::Endpoint;

/// Connecting to an endpoint failed (refused, unreachable, reset).
#[derive(Debug, thiserror::Error)]
#[error("connect to {addr} failed: {source}")]
pub struct ConnectError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

impl ConnectError {
    /// The endpoint that could not be reached.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Connecting to an endpoint did not finish within the connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("connect to {addr} timed out after {timeout:?}")]
pub struct ConnectTimeout {
    addr: SocketAddr,
    timeout: Duration,
}

impl ConnectTimeout {
    /// The endpoint that did not answer.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The bound on establishing one transport connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectTimeoutDuration(pub Duration);

impl Default for ConnectTimeoutDuration {
    /// Default: 1s.
    fn default() -> Self {
        Self(Duration::from_secs(1))
    }
}

/// Opens plain TCP connections, with a timeout and `TCP_NODELAY`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnect {
    timeout: ConnectTimeoutDuration,
}

impl TcpConnect {
    /// A connector bounded by `timeout`.
    pub fn new(timeout: ConnectTimeoutDuration) -> Self {
        Self { timeout }
    }

    /// Connects to `addr`.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] when the connection fails, [`ConnectTimeout`] when it takes too long.
    pub async fn connect(self, addr: SocketAddr) -> Result<TcpStream, BoxError> {
        let timeout = self.timeout.0;
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => Err(ConnectTimeout { addr, timeout }.into()),
            Ok(Err(source)) => Err(ConnectError { addr, source }.into()),
            Ok(Ok(stream)) => {
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%addr, %error, "could not set TCP_NODELAY");
                }
                Ok(stream)
            }
        }
    }
}

impl tower_service::Service<Endpoint> for TcpConnect {
    type Response = TcpStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TcpStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        Box::pin(self.connect(endpoint.addr()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let err = TcpConnect::default()
            .connect(addr)
            .await
            .expect_err("refused");
        let err = err.downcast_ref::<ConnectError>().expect("ConnectError");
        assert_eq!(err.addr(), addr);
    }

    #[tokio::test]
    async fn connects_with_nodelay() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let s = TcpConnect::default()
            .connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        assert!(s.nodelay().expect("nodelay"));
    }
}
