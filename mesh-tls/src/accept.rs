//! The inbound side of mesh TLS: which connections to terminate, and terminating them.
//!
//! The inbound listener reads a connection's first bytes before anything else (mesh-core's
//! detection, which reassembles a ClientHello fragmented over several records). A ClientHello
//! naming this workload's mesh server name ([`crate::creds::server_name`]) is mesh TLS: it is
//! terminated with a mandatory, verified client certificate, and the peer's identity travels
//! with the connection. Any other ClientHello is someone else's TLS and passes through
//! untouched; no TLS at all is plaintext, which only a permissive port accepts.

use std::sync::Arc;

use mesh_core::detect::ClientHello;
use mesh_core::identity::Identity;
use rustls::crypto::CryptoProvider;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::creds::{Credentials, CredsError, peer_identity, server_config, server_name};

/// What an inbound connection is, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundKind {
    /// Mesh TLS for this workload: terminate it.
    Mesh,
    /// TLS for some other name: pass it through untouched.
    PassThrough,
    /// Not TLS.
    Plaintext,
}

/// Why a mesh TLS connection was not accepted.
#[derive(Debug, thiserror::Error)]
#[error("mesh TLS handshake failed: {0}")]
pub struct AcceptError(String);

/// Terminates mesh TLS for one workload identity.
#[derive(Clone)]
pub struct MeshAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    server_name: String,
}

impl std::fmt::Debug for MeshAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshAcceptor")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl MeshAcceptor {
    /// An acceptor presenting `creds`, accepting `h2` and `http/1.1` in ALPN.
    ///
    /// # Errors
    ///
    /// [`CredsError::Config`] when rustls refuses the configuration.
    pub fn new(creds: &Credentials, provider: &Arc<CryptoProvider>) -> Result<Self, CredsError> {
        let config = server_config(creds, provider, vec![b"h2".to_vec(), b"http/1.1".to_vec()])?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            server_name: server_name(creds.identity()),
        })
    }

    /// The SNI name mesh peers use for this workload.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// What a connection is, from the ClientHello detection found (`None`: not TLS).
    pub fn classify(&self, hello: Option<&ClientHello>) -> InboundKind {
        match hello {
            None => InboundKind::Plaintext,
            Some(h) if h.server_name.as_deref() == Some(self.server_name.as_str()) => {
                InboundKind::Mesh
            }
            Some(_) => InboundKind::PassThrough,
        }
    }

    /// Completes the handshake on `io` (whose first bytes, the ClientHello, are replayed by
    /// the caller) and returns the stream and the peer's verified identity.
    ///
    /// # Errors
    ///
    /// [`AcceptError`] when the handshake fails (no or untrusted client certificate, TLS
    /// below 1.3) or the client certificate carries no SPIFFE ID.
    pub async fn accept<I>(&self, io: I) -> Result<(TlsStream<I>, Identity), AcceptError>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = self
            .acceptor
            .accept(io)
            .await
            .map_err(|e| AcceptError(e.to_string()))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(peer_identity)
            .ok_or_else(|| AcceptError("the client certificate carries no SPIFFE ID".to_owned()))?;
        Ok((tls, peer))
    }
}
