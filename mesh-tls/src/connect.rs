//! The mTLS connect layer: wraps the plain connect stack so that every connection to an
//! endpoint is mesh TLS.
//!
//! It takes the [`Endpoint`] target like the TCP connector it wraps, and uses what the
//! target carries: the identity the endpoint must present (or, when discovery knows none,
//! any identity of the trust domain), and the protocol the connection will carry, offered in
//! ALPN (`h2` or `http/1.1`), so the application protocol survives the hop. A handshake that
//! fails never falls back to plaintext; it fails the request through the one classifier
//! (`502`, gRPC `UNAVAILABLE`) with an `l5d-proxy-error` naming the expected and the
//! presented identity when that is why.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_core::BoxError;
use mesh_core::errors::{GrpcCode, HttpError};
use mesh_core::target::{Endpoint, ProtocolHint};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tower_service::Service;

use crate::creds::{CredsError, Expected, IdentityMismatch, client_config, server_name};
use crate::store::CredentialStore;

/// The mTLS handshake with an endpoint failed.
#[derive(Debug, thiserror::Error)]
#[error("mTLS to {addr}: {reason}")]
pub struct HandshakeError {
    addr: std::net::SocketAddr,
    reason: String,
}

/// The default bound on a handshake: [`TlsConnect::with_handshake_timeout`] sets another.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most client configurations kept (expected identities × protocols).
const MAX_CONFIGS: usize = 1024;

/// Client configurations per (expected identity, ALPN protocols), for one generation of
/// the credentials.
#[derive(Default)]
struct Configs {
    generation: u64,
    by_peer: HashMap<(Expected, Vec<Vec<u8>>), Arc<ClientConfig>>,
}

/// Opens mesh TLS connections over the connections `C` opens.
///
/// Each new connection uses the credentials in force in its [`CredentialStore`]: after a
/// rotation, new handshakes present the new certificate and trust the new bundle.
pub struct TlsConnect<C> {
    inner: C,
    store: Arc<CredentialStore>,
    /// Bound on the handshake, after the inner connection is open.
    handshake_timeout: Duration,
    /// Client configurations per (expected identity, ALPN): built once each per generation.
    configs: Arc<Mutex<Configs>>,
}

impl<C: Clone> Clone for TlsConnect<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            store: self.store.clone(),
            handshake_timeout: self.handshake_timeout,
            configs: self.configs.clone(),
        }
    }
}

impl<C> std::fmt::Debug for TlsConnect<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnect")
            .field("identity", &self.store.current().identity().to_string())
            .finish_non_exhaustive()
    }
}

impl<C> TlsConnect<C> {
    /// Mesh TLS with the credentials in `store` over `inner`; handshakes bounded by
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub fn new(inner: C, store: Arc<CredentialStore>) -> Self {
        Self {
            inner,
            store,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            configs: Arc::default(),
        }
    }

    /// Bounds each handshake (after the inner connection opened) by `timeout`: a peer that
    /// accepts the connection and never answers fails the request with 504.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The credentials this connector presents.
    pub fn store(&self) -> &Arc<CredentialStore> {
        &self.store
    }

    fn config(
        &self,
        expected: &Expected,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<ClientConfig>, CredsError> {
        let key = (expected.clone(), alpn);
        let generation = self.store.generation();
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if configs.generation != generation {
            // Rotated: configurations built on the old credentials are not used again.
            configs.by_peer.clear();
            configs.generation = generation;
        }
        if let Some(c) = configs.by_peer.get(&key) {
            return Ok(c.clone());
        }
        let creds = self.store.current();
        let config = client_config(&creds, self.store.provider(), key.0.clone(), key.1.clone())?;
        // Bounded: discovery could name any number of identities; past the bound the cache
        // starts over (a config is cheap to rebuild, and live connections keep theirs).
        if configs.by_peer.len() >= MAX_CONFIGS {
            configs.by_peer.clear();
        }
        configs.by_peer.insert(key, config.clone());
        Ok(config)
    }
}

/// The ALPN protocols offered for a connection carrying `protocol`.
fn alpn(protocol: ProtocolHint) -> Vec<Vec<u8>> {
    match protocol {
        ProtocolHint::Http2 => vec![b"h2".to_vec()],
        ProtocolHint::Http1 => vec![b"http/1.1".to_vec()],
        ProtocolHint::Opaque | ProtocolHint::Unknown => Vec::new(),
    }
}

impl<C, I> Service<Endpoint> for TlsConnect<C>
where
    C: Service<Endpoint, Response = I, Error = BoxError> + Clone + Send + 'static,
    C::Future: Send,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Response = TlsStream<I>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream<I>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        let addr = endpoint.addr();
        let expected = match endpoint.identity() {
            Some(id) => Expected::Identity(id.clone()),
            None => Expected::TrustDomain(self.store.current().trust_domain().to_owned()),
        };
        let sni = match &expected {
            Expected::Identity(id) => server_name(id),
            Expected::TrustDomain(td) => format!("identity.{td}"),
        };
        let config = self.config(&expected, alpn(endpoint.protocol()));
        let connect = self.inner.call(endpoint);
        let timeout = self.handshake_timeout;
        Box::pin(async move {
            let config = config.map_err(|e| unavailable(addr, e.to_string()))?;
            let name = ServerName::try_from(sni.clone())
                .map_err(|e| unavailable(addr, format!("server name {sni:?}: {e}")))?;
            let io = connect.await?;
            let handshake = tokio_rustls::TlsConnector::from(config).connect(name, io);
            match tokio::time::timeout(timeout, handshake).await {
                Ok(done) => done.map_err(|e| unavailable(addr, describe(&e))),
                Err(_) => Err(HttpError::new(
                    http::StatusCode::GATEWAY_TIMEOUT,
                    GrpcCode::Unavailable,
                    HandshakeError {
                        addr,
                        reason: format!("handshake timed out after {timeout:?}"),
                    },
                )
                .into()),
            }
        })
    }
}

fn unavailable(addr: std::net::SocketAddr, reason: String) -> BoxError {
    HttpError::new(
        http::StatusCode::BAD_GATEWAY,
        GrpcCode::Unavailable,
        HandshakeError { addr, reason },
    )
    .into()
}

/// The handshake failure in words: an identity mismatch says both identities.
fn describe(e: &std::io::Error) -> String {
    let rustls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) = rustls
        && let Some(mismatch) = other.0.downcast_ref::<IdentityMismatch>()
    {
        return mismatch.to_string();
    }
    e.to_string()
}
