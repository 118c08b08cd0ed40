//! The inbound side of mesh TLS: which connections to terminate, and terminating them.
//!
//! The inbound listener reads a connection's first bytes before anything else (mesh-core's
//! detection, which reassembles a ClientHello fragmented over several records). A ClientHello
//! naming a mesh server name of this workload's trust domain ([`crate::creds::server_name`]:
//! `….identity.<td>`, or `identity.<td>` for any workload of it) is mesh TLS: it is
//! terminated with a mandatory, verified client certificate, and the peer's identity travels
//! with the connection. Any other ClientHello is someone else's TLS and passes through
//! untouched; no TLS at all is plaintext, which only a permissive port accepts.

use std::sync::{Arc, Mutex};

use mesh_core::detect::ClientHello;
use mesh_core::identity::Identity;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::creds::{CredsError, peer_identity, server_config, server_name};
use crate::store::CredentialStore;

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

/// The server side built from one generation of the credentials.
#[derive(Clone)]
struct Built {
    generation: u64,
    acceptor: tokio_rustls::TlsAcceptor,
    server_name: Arc<str>,
    /// `identity.<td>`: the trust domain's mesh namespace.
    domain: Arc<str>,
}

/// Terminates mesh TLS for one workload identity.
///
/// A ClientHello is mesh TLS when its server name is in the trust domain's mesh namespace:
/// `identity.<td>` (a client that expects any identity of the trust domain) or a name ending
/// in `.identity.<td>` (a client that expects one workload). A client that expects another
/// workload than this one is still terminated: it then sees this workload's certificate and
/// fails the request naming both identities, rather than being passed through to the
/// application as if it were someone else's TLS.
///
/// Each handshake uses the credentials in force in the [`CredentialStore`]: after a
/// rotation, new connections are served with the new certificate and verified against the
/// new bundle; established ones keep their session.
#[derive(Clone)]
pub struct MeshAcceptor {
    store: Arc<CredentialStore>,
    built: Arc<Mutex<Built>>,
}

impl std::fmt::Debug for MeshAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshAcceptor")
            .field("server_name", &self.server_name())
            .finish_non_exhaustive()
    }
}

/// ALPN protocols a mesh server accepts: the application protocol of the connection.
fn server_alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

impl MeshAcceptor {
    /// An acceptor presenting the credentials in `store`, accepting `h2` and `http/1.1` in
    /// ALPN (or none: opaque TCP).
    ///
    /// # Errors
    ///
    /// [`CredsError::Config`] when rustls refuses the configuration.
    pub fn new(store: Arc<CredentialStore>) -> Result<Self, CredsError> {
        let built = build(&store)?;
        Ok(Self {
            store,
            built: Arc::new(Mutex::new(built)),
        })
    }

    /// The server side for the credentials in force, rebuilt after a rotation. When the new
    /// credentials cannot be built into a configuration, the last one stays in use.
    fn current(&self) -> Built {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.store.generation();
        if built.generation != generation {
            match build(&self.store) {
                Ok(b) => *built = b,
                Err(error) => {
                    // Keep serving with what worked; do not retry this generation.
                    built.generation = generation;
                    tracing::warn!(%error, "new credentials refused by TLS; serving with the previous ones");
                }
            }
        }
        built.clone()
    }

    /// The SNI name mesh peers use for this workload.
    pub fn server_name(&self) -> Arc<str> {
        self.current().server_name
    }

    /// What a connection is, from the ClientHello detection found (`None`: not TLS).
    pub fn classify(&self, hello: Option<&ClientHello>) -> InboundKind {
        let Some(hello) = hello else {
            return InboundKind::Plaintext;
        };
        let built = self.current();
        let domain = &*built.domain;
        match hello.server_name.as_deref() {
            Some(name)
                if name == domain
                    || name
                        .strip_suffix(domain)
                        .is_some_and(|head| head.ends_with('.')) =>
            {
                InboundKind::Mesh
            }
            _ => InboundKind::PassThrough,
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
            .current()
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

fn build(store: &CredentialStore) -> Result<Built, CredsError> {
    let generation = store.generation();
    let creds = store.current();
    let config = server_config(&creds, store.provider(), server_alpn())?;
    Ok(Built {
        generation,
        acceptor: tokio_rustls::TlsAcceptor::from(config),
        server_name: server_name(creds.identity()).into(),
        domain: format!("identity.{}", creds.trust_domain()).into(),
    })
}
