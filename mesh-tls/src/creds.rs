//! A workload's TLS credentials and the rustls configurations mesh peers speak.
//!
//! Between mesh peers: TLS 1.3 only; both sides present a workload certificate issued by the
//! mesh CA ([`crate::ca`]); each side verifies the other's chain against the trust bundle and
//! then its SPIFFE ID — the client against the identity it expects of that endpoint (or, when
//! none is known, membership of the trust domain), the server by reading the client's
//! identity for authorization and `l5d-client-id`.
//!
//! The peer is named by a SPIFFE ID in a URI SAN, not by a DNS name, so the client uses its
//! own certificate verifier ([`SpiffeVerifier`]): rustls's chain and signature checks, then
//! the identity check, instead of a host-name match. The server name sent in SNI is derived
//! from the expected identity ([`server_name`]), Linkerd's form, so the inbound side can tell
//! mesh TLS from other TLS by its ClientHello alone.
//!
//! Libraries never pick a crypto provider: every function takes the
//! [`rustls::crypto::CryptoProvider`] the binary chose.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use mesh_core::identity::Identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Why credentials could not be loaded or a configuration built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is unusable: not PEM, no certificate, a key that does not match,
    /// an expired certificate, no SPIFFE ID, a chain the bundle does not verify.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A workload's certificate chain, private key and trust bundle, checked together.
#[derive(Debug)]
pub struct Credentials {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    identity: Identity,
    serial: String,
    issued: SystemTime,
    expires: SystemTime,
}

/// The three files of a workload's credentials, as read from disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialFiles {
    /// `cert.pem`: the workload certificate, then any intermediates.
    pub cert: Vec<u8>,
    /// `key.pem`: its private key.
    pub key: Vec<u8>,
    /// `ca.pem`: the trust bundle.
    pub ca: Vec<u8>,
}

impl CredentialFiles {
    /// Reads `cert.pem`, `key.pem` and `ca.pem` from `dir`.
    ///
    /// # Errors
    ///
    /// [`CredsError::Io`] naming the file that cannot be read.
    pub fn read(dir: &Path) -> Result<Self, CredsError> {
        Ok(Self {
            cert: read(&dir.join(CERT_FILE))?,
            key: read(&dir.join(KEY_FILE))?,
            ca: read(&dir.join(CA_FILE))?,
        })
    }
}

/// The workload certificate (and intermediates) in an identity directory.
pub const CERT_FILE: &str = "cert.pem";
/// The private key in an identity directory.
pub const KEY_FILE: &str = "key.pem";
/// The trust bundle in an identity directory.
pub const CA_FILE: &str = "ca.pem";

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            identity: self.identity.clone(),
            serial: self.serial.clone(),
            issued: self.issued,
            expires: self.expires,
        }
    }
}

impl Credentials {
    /// Loads `cert.pem`, `key.pem` and `ca.pem` from `dir` (as `meshctl ca issue` writes them)
    /// and checks them: the certificate carries a SPIFFE ID, has not expired, chains to the
    /// bundle, and the key is its key.
    ///
    /// # Errors
    ///
    /// [`CredsError`] naming the file and what is wrong with it.
    pub fn load(dir: &Path, provider: &Arc<CryptoProvider>) -> Result<Self, CredsError> {
        Self::parse(dir, &CredentialFiles::read(dir)?, provider)
    }

    /// Checks credentials read from `dir` (which names the files in errors), as
    /// [`Credentials::load`] does.
    ///
    /// # Errors
    ///
    /// [`CredsError`] naming the file and what is wrong with it.
    pub fn parse(
        dir: &Path,
        files: &CredentialFiles,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, CredsError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let ca_path = dir.join(CA_FILE);
        let invalid = |path: &Path, reason: String| CredsError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(&cert_path, format!("not PEM certificates: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| invalid(&cert_path, "no certificate".to_owned()))?;
        let key = PrivateKeyDer::from_pem_slice(&files.key)
            .map_err(|e| invalid(&key_path, format!("not a PEM private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(&files.ca) {
            let root = root.map_err(|e| invalid(&ca_path, format!("not PEM certificates: {e}")))?;
            roots
                .add(root)
                .map_err(|e| invalid(&ca_path, format!("not a usable trust anchor: {e}")))?;
        }
        if roots.is_empty() {
            return Err(invalid(&ca_path, "no trust anchor".to_owned()));
        }
        let info = crate::ca::inspect_der(leaf).map_err(|e| invalid(&cert_path, e.to_string()))?;
        let identity: Identity = info
            .identity
            .as_deref()
            .ok_or_else(|| invalid(&cert_path, "no SPIFFE ID (URI SAN)".to_owned()))?
            .parse()
            .map_err(|e: mesh_core::identity::InvalidIdentity| {
                invalid(&cert_path, e.to_string())
            })?;
        if info.expires <= SystemTime::now() {
            return Err(invalid(
                &cert_path,
                format!("expired at {}", info.not_after),
            ));
        }
        let parsed = ParsedCertificate::try_from(leaf)
            .map_err(|e| invalid(&cert_path, format!("unusable certificate: {e}")))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| {
            invalid(
                &cert_path,
                format!("does not chain to {}: {e}", ca_path.display()),
            )
        })?;
        // The key must be the certificate's: a signing key that cannot be loaded, or whose
        // public half differs, fails here rather than in every handshake.
        let signing = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| invalid(&key_path, format!("unusable private key: {e}")))?;
        if let Some(public) = signing.public_key()
            && public.as_ref() != info.spki.as_slice()
        {
            return Err(invalid(
                &key_path,
                "the key does not match cert.pem".to_owned(),
            ));
        }
        Ok(Self {
            chain,
            key,
            roots: Arc::new(roots),
            identity,
            serial: info.serial,
            issued: info.issued,
            expires: info.expires,
        })
    }

    /// The workload's own identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The certificate's serial number, hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When the certificate's validity began.
    pub fn issued(&self) -> SystemTime {
        self.issued
    }

    /// When the certificate expires.
    pub fn expires(&self) -> SystemTime {
        self.expires
    }

    /// The trust domain the workload belongs to.
    pub fn trust_domain(&self) -> &str {
        self.identity.trust_domain()
    }
}

/// The SNI name mesh peers use for `id`: `<sa>.<ns>.serviceaccount.identity.<trust-domain>`
/// for a Kubernetes-style ID (`spiffe://<td>/ns/<ns>/sa/<sa>`), as Linkerd does; otherwise
/// the ID's path segments reversed, then `identity.<trust-domain>`.
pub fn server_name(id: &Identity) -> String {
    let segments: Vec<&str> = id.path().split('/').filter(|s| !s.is_empty()).collect();
    let td = id.trust_domain();
    match segments.as_slice() {
        ["ns", ns, "sa", sa] => format!("{sa}.{ns}.serviceaccount.identity.{td}"),
        other => {
            let mut parts: Vec<&str> = other.iter().rev().copied().collect();
            parts.push("identity");
            parts.push(td);
            parts.join(".")
        }
    }
}

/// What a client requires of the server's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expected {
    /// Exactly this identity.
    Identity(Identity),
    /// Any identity of this trust domain.
    TrustDomain(String),
}

/// The server presented an identity other than the one expected.
#[derive(Debug, thiserror::Error)]
#[error("peer identity mismatch: expected {expected}, presented {presented}")]
pub struct IdentityMismatch {
    /// What was expected (an identity, or `any identity of <td>`).
    pub expected: String,
    /// What the certificate carried.
    pub presented: String,
}

/// The client-side verifier: the chain against the mesh bundle, then the SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: Expected,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let presented = peer_identity(end_entity);
        let ok = match (&self.expected, &presented) {
            (Expected::Identity(want), Some(got)) => want == got,
            (Expected::TrustDomain(td), Some(got)) => got.trust_domain() == td,
            (_, None) => false,
        };
        if ok {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = IdentityMismatch {
            expected: match &self.expected {
                Expected::Identity(id) => id.to_string(),
                Expected::TrustDomain(td) => format!("any identity of {td}"),
            },
            presented: presented.map_or_else(|| "no SPIFFE ID".to_owned(), |p| p.to_string()),
        };
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(mismatch))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The SPIFFE ID in a peer's end-entity certificate, if it carries a valid one.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<Identity> {
    crate::ca::inspect_der(cert).ok()?.identity?.parse().ok()
}

/// The client side of mesh TLS: TLS 1.3, `creds` presented, the server checked against
/// `expected`, `alpn` offered (the application protocol: `h2` or `http/1.1`).
///
/// # Errors
///
/// [`CredsError::Config`] when rustls refuses the configuration.
pub fn client_config(
    creds: &Credentials,
    provider: &Arc<CryptoProvider>,
    expected: Expected,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, CredsError> {
    let verifier = Arc::new(SpiffeVerifier {
        roots: creds.roots.clone(),
        provider: provider.clone(),
        expected,
    });
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CredsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|e| CredsError::Config(e.to_string()))?;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// The server side of mesh TLS: TLS 1.3, `creds` presented, a client certificate required
/// and verified against the trust bundle; `alpn` accepted.
///
/// # Errors
///
/// [`CredsError::Config`] when rustls refuses the configuration.
pub fn server_config(
    creds: &Credentials,
    provider: &Arc<CryptoProvider>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, CredsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(creds.roots.clone(), provider.clone())
            .build()
            .map_err(|e| CredsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CredsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|e| CredsError::Config(e.to_string()))?;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, CredsError> {
    std::fs::read(path).map_err(|source| CredsError::Io {
        path: path.to_owned(),
        source,
    })
}
