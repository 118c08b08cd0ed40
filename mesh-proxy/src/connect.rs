//! The connect stack a listener's endpoints use: plain TCP, or mesh TLS over it.
//!
//! One enum rather than a boxed service: the endpoint stack is built once per endpoint over
//! a cloneable connector, and the two shapes differ only in whether a handshake follows the
//! TCP connect. The stream type is [`Either`] of the two, so the HTTP clients and opaque
//! forwarding above stay generic over one I/O type.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use mesh_core::BoxError;
use mesh_core::connect::TcpConnect;
use mesh_core::target::Endpoint;
use mesh_tls::connect::TlsConnect;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use tower_service::Service;

/// A connection to an endpoint: plain TCP or mesh TLS.
pub(crate) type Conn = Either<TcpStream, TlsStream<TcpStream>>;

/// How a listener connects to its endpoints.
#[derive(Clone, Debug)]
pub(crate) enum Connect {
    /// Plain TCP (no identity, the inbound side's hop to the local app, or `mtls = false`).
    Plain(TcpConnect),
    /// Mesh TLS with the workload's identity, checking each endpoint's.
    Mesh(TlsConnect<TcpConnect>),
}

impl Service<Endpoint> for Connect {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Connect::Plain(c) => c.poll_ready(cx),
            Connect::Mesh(c) => c.poll_ready(cx),
        }
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        match self {
            Connect::Plain(c) => {
                let c = *c;
                Box::pin(async move { c.connect(endpoint.addr()).await.map(Either::Left) })
            }
            Connect::Mesh(c) => {
                let fut = c.call(endpoint);
                Box::pin(async move { fut.await.map(Either::Right) })
            }
        }
    }
}
