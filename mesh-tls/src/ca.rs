//! The mesh certificate authority: a trust anchor per trust domain, optional intermediate
//! issuers, and workload certificates that carry a SPIFFE ID.
//!
//! Every certificate is ECDSA P-256. A CA certificate carries its trust domain as a URI SAN
//! (`spiffe://<trust-domain>`), so a CA loaded from disk knows which identities it may sign;
//! it has no name constraints (webpki refuses URI name constraints). A workload certificate
//! carries exactly one URI SAN, the workload's SPIFFE ID — and, for ordinary TLS clients such
//! as curl, the mesh server name derived from it ([`crate::creds::server_name`]) as a DNS
//! SAN — and may be used as a TLS client and server certificate. An ID outside the CA's trust
//! domain is refused.
//!
//! On disk (as `meshctl ca` writes them): a CA directory holds `ca.pem` (the CA's certificate,
//! then its issuers' up to the root) and `ca.key` (mode 0600); a workload directory holds
//! `cert.pem` (the workload certificate, then the intermediates), `key.pem` (mode 0600) and
//! `ca.pem` (the trust bundle: the root).
//!
//! ```
//! use std::time::Duration;
//! use mesh_tls::ca::{Ca, inspect};
//!
//! let root = Ca::new("cluster.local", Duration::from_secs(365 * 24 * 3600)).unwrap();
//! let id = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
//! let issued = root.issue(&id, Duration::from_secs(24 * 3600)).unwrap();
//! let info = &inspect(&issued.cert_pem).unwrap()[0];
//! assert_eq!(info.identity.as_deref(), Some("spiffe://cluster.local/ns/default/sa/web"));
//! assert!(root.issue(&"spiffe://other.td/ns/a/sa/b".parse().unwrap(), Duration::from_secs(60)).is_err());
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mesh_core::identity::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::OffsetDateTime;

/// Default lifetime of a workload certificate: 24 hours.
pub const DEFAULT_WORKLOAD_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Default lifetime of a trust anchor: one year.
pub const DEFAULT_ROOT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// How far back a new certificate's validity starts, for clocks that lag a little.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The trust domain is not a valid SPIFFE trust domain.
    #[error("invalid trust domain {0:?}: {1}")]
    InvalidTrustDomain(String, String),
    /// The identity belongs to another trust domain than the CA's.
    #[error("{id} is outside this CA's trust domain {trust_domain}")]
    OutsideTrustDomain {
        /// The identity asked for.
        id: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// A lifetime of zero, or too long to represent.
    #[error("invalid certificate lifetime {0:?}")]
    InvalidLifetime(Duration),
    /// Generating a key or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not what it should be (not PEM, not a CA certificate, a key that
    /// does not match, no trust domain).
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn generate(e: rcgen::Error) -> CaError {
    CaError::Generate(e.to_string())
}

/// A certificate authority that issues workload certificates for one trust domain.
pub struct Ca {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// This CA's certificate, then its issuers' up to the root (PEM).
    chain: Vec<String>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// A workload certificate and its key, as PEM.
#[derive(Clone)]
pub struct Issued {
    /// The workload certificate, then the intermediates up to (not including) the root.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
    /// The trust bundle: the root certificate.
    pub bundle_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a private key.
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new trust anchor (self-signed root) for `trust_domain`, valid for `lifetime`.
    ///
    /// # Errors
    ///
    /// [`CaError::InvalidTrustDomain`], [`CaError::InvalidLifetime`], [`CaError::Generate`].
    pub fn new(trust_domain: &str, lifetime: Duration) -> Result<Self, CaError> {
        let td = spiffe::TrustDomain::new(trust_domain)
            .map_err(|e| CaError::InvalidTrustDomain(trust_domain.to_owned(), e.to_string()))?;
        let trust_domain = td.to_string();
        let params = ca_params(&trust_domain, "root", lifetime)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let cert = params.self_signed(&key).map_err(generate)?;
        Ok(Self {
            trust_domain,
            issuer: Issuer::new(params, key),
            chain: vec![cert.pem()],
        })
    }

    /// An intermediate issuer signed by this CA, for the same trust domain.
    ///
    /// # Errors
    ///
    /// [`CaError::InvalidLifetime`], [`CaError::Generate`].
    pub fn intermediate(&self, lifetime: Duration) -> Result<Self, CaError> {
        let params = ca_params(&self.trust_domain, "intermediate", lifetime)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        let mut chain = vec![cert.pem()];
        chain.extend(self.chain.iter().cloned());
        Ok(Self {
            trust_domain: self.trust_domain.clone(),
            issuer: Issuer::new(params, key),
            chain,
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate (PEM): the trust bundle of everything this CA issues.
    pub fn bundle_pem(&self) -> &str {
        self.chain.last().map_or("", String::as_str)
    }

    /// Issues a workload certificate for `id`, valid for `lifetime`.
    ///
    /// # Errors
    ///
    /// [`CaError::OutsideTrustDomain`] when `id` belongs to another trust domain;
    /// [`CaError::InvalidLifetime`], [`CaError::Generate`].
    pub fn issue(&self, id: &Identity, lifetime: Duration) -> Result<Issued, CaError> {
        if id.trust_domain() != self.trust_domain {
            return Err(CaError::OutsideTrustDomain {
                id: id.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(&id.to_string())?];
        // The mesh server name as a DNS SAN too, so ordinary TLS clients (curl, openssl)
        // can verify a workload by the name mesh peers send in SNI; mesh peers themselves
        // check the SPIFFE ID.
        if let Ok(dns) = crate::creds::server_name(id).try_into() {
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, lifetime)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        // The leaf, then every issuer except the root (which the peer has in its bundle).
        let mut cert_pem = cert.pem();
        for intermediate in &self.chain[..self.chain.len().saturating_sub(1)] {
            cert_pem.push_str(intermediate);
        }
        Ok(Issued {
            cert_pem,
            key_pem: key.serialize_pem(),
            bundle_pem: self.bundle_pem().to_owned(),
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, creating it.
    ///
    /// # Errors
    ///
    /// [`CaError::Io`] naming the file.
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        create_dir(dir)?;
        write_file(&dir.join("ca.pem"), self.chain.concat().as_bytes(), false)?;
        write_file(
            &dir.join("ca.key"),
            self.issuer.key().serialize_pem().as_bytes(),
            true,
        )
    }

    /// Loads a CA written by [`Ca::write`].
    ///
    /// # Errors
    ///
    /// [`CaError::Io`] or [`CaError::Invalid`] naming the file and what is wrong.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let cert_text = read_file(&cert_path)?;
        let key_text = read_file(&key_path)?;
        let invalid = |path: &Path, reason: String| CaError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let chain: Vec<String> = pem_blocks(&cert_text, "CERTIFICATE");
        let own = chain
            .first()
            .ok_or_else(|| invalid(&cert_path, "no certificate".to_owned()))?;
        let key = KeyPair::from_pem(&key_text)
            .map_err(|e| invalid(&key_path, format!("not a private key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(own, key)
            .map_err(|e| invalid(&cert_path, format!("not a CA certificate: {e}")))?;
        let info = inspect(own).map_err(|e| invalid(&cert_path, e.to_string()))?;
        let first = info
            .first()
            .ok_or_else(|| invalid(&cert_path, "no certificate".to_owned()))?;
        if !first.is_ca {
            return Err(invalid(&cert_path, "not a CA certificate".to_owned()));
        }
        if first.public_key != issuer.key().public_key_raw() {
            return Err(invalid(
                &key_path,
                "the key does not match the certificate in ca.pem".to_owned(),
            ));
        }
        let trust_domain = first
            .identity
            .as_deref()
            .and_then(|uri| uri.strip_prefix("spiffe://"))
            .filter(|td| !td.is_empty() && !td.contains('/'))
            .ok_or_else(|| {
                invalid(
                    &cert_path,
                    "the CA certificate names no trust domain (URI SAN spiffe://<td>)".to_owned(),
                )
            })?
            .to_owned();
        Ok(Self {
            trust_domain,
            issuer,
            chain,
        })
    }
}

impl Issued {
    /// Writes `cert.pem`, `key.pem` (mode 0600) and `ca.pem` into `dir`, creating it.
    ///
    /// # Errors
    ///
    /// [`CaError::Io`] naming the file.
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        create_dir(dir)?;
        write_file(&dir.join("cert.pem"), self.cert_pem.as_bytes(), false)?;
        write_file(&dir.join("key.pem"), self.key_pem.as_bytes(), true)?;
        write_file(&dir.join("ca.pem"), self.bundle_pem.as_bytes(), false)
    }
}

/// What `meshctl ca inspect` shows of one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertInfo {
    /// The URI SAN: a workload's SPIFFE ID, or a CA's trust domain (`spiffe://<td>`).
    pub identity: Option<String>,
    /// The subject's distinguished name.
    pub subject: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// The serial number, hex.
    pub serial: String,
    /// Start of validity (RFC 3339).
    pub not_before: String,
    /// End of validity (RFC 3339).
    pub not_after: String,
    /// Start of validity, as a time.
    pub issued: SystemTime,
    /// End of validity, as a time.
    pub expires: SystemTime,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
    /// The raw subject public key.
    pub public_key: Vec<u8>,
    /// The whole SubjectPublicKeyInfo (DER).
    pub spki: Vec<u8>,
}

/// Describes every certificate in a PEM text, in order.
///
/// # Errors
///
/// [`CaError::Invalid`] (with an empty path) when a block is not a parsable certificate or
/// there is none.
pub fn inspect(pem: &str) -> Result<Vec<CertInfo>, CaError> {
    let invalid = |reason: String| CaError::Invalid {
        path: PathBuf::new(),
        reason,
    };
    let mut out = Vec::new();
    for block in pem_blocks(pem, "CERTIFICATE") {
        let parsed = ::pem::parse(&block).map_err(|e| invalid(format!("bad PEM: {e}")))?;
        out.push(inspect_der(parsed.contents())?);
    }
    if out.is_empty() {
        return Err(invalid("no certificate found".to_owned()));
    }
    Ok(out)
}

/// Describes one DER-encoded certificate.
///
/// # Errors
///
/// [`CaError::Invalid`] (with an empty path) when it is not a parsable certificate.
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CaError::Invalid {
        path: PathBuf::new(),
        reason: format!("not an X.509 certificate: {e}"),
    })?;
    let identity = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
        });
    let validity = cert.validity();
    let at =
        |unix: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    let expires = at(validity.not_after.timestamp());
    let issued = at(validity.not_before.timestamp());
    Ok(CertInfo {
        identity,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: rfc3339(validity.not_before.timestamp()),
        not_after: rfc3339(validity.not_after.timestamp()),
        issued,
        expires,
        is_ca: cert.is_ca(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        spki: cert.public_key().raw.to_vec(),
    })
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Every PEM block of `label` in `text`, each re-encoded on its own.
fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    ::pem::parse_many(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == label)
        .map(|p| {
            ::pem::encode_config(
                &p,
                ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
            )
        })
        .collect()
}

fn ca_params(
    trust_domain: &str,
    role: &str,
    lifetime: Duration,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mesh");
    dn.push(DnType::CommonName, format!("mesh {role} CA {trust_domain}"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = role != "root";
    set_validity(&mut params, lifetime)?;
    Ok(params)
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    uri.to_owned()
        .try_into()
        .map(SanType::URI)
        .map_err(|e: rcgen::Error| CaError::Generate(format!("URI SAN {uri:?}: {e}")))
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) -> Result<(), CaError> {
    let bad = || CaError::InvalidLifetime(lifetime);
    if lifetime.is_zero() {
        return Err(bad());
    }
    let now = OffsetDateTime::now_utc();
    let life = time::Duration::try_from(lifetime).map_err(|_| bad())?;
    let back = time::Duration::try_from(BACKDATE).map_err(|_| bad())?;
    params.not_before = now.checked_sub(back).ok_or_else(bad)?;
    params.not_after = now.checked_add(life).ok_or_else(bad)?;
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `data` to `path`; a secret is created with mode 0600 (never readable by others,
/// not even for a moment).
fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), CaError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = options.open(path).map_err(io)?;
    #[cfg(unix)]
    if secret {
        // An existing file keeps its mode on open: tighten it explicitly.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(data).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        s.parse().expect("identity")
    }

    #[test]
    fn issues_workload_certificates_with_the_spiffe_id() {
        let ca = Ca::new("td.example", DEFAULT_ROOT_LIFETIME).expect("ca");
        let issued = ca
            .issue(
                &id("spiffe://td.example/ns/a/sa/b"),
                DEFAULT_WORKLOAD_LIFETIME,
            )
            .expect("issue");
        let certs = inspect(&issued.cert_pem).expect("inspect");
        assert_eq!(certs.len(), 1, "a root CA adds no intermediate");
        let leaf = &certs[0];
        assert_eq!(
            leaf.identity.as_deref(),
            Some("spiffe://td.example/ns/a/sa/b")
        );
        assert!(!leaf.is_ca);
        assert!(
            leaf.issuer.contains("mesh root CA td.example"),
            "{}",
            leaf.issuer
        );
        let life = leaf
            .expires
            .duration_since(SystemTime::now())
            .expect("in the future");
        assert!(life > Duration::from_secs(23 * 3600) && life <= DEFAULT_WORKLOAD_LIFETIME);
        let root = &inspect(&issued.bundle_pem).expect("bundle")[0];
        assert!(root.is_ca);
        assert_eq!(root.identity.as_deref(), Some("spiffe://td.example"));
    }

    #[test]
    fn refuses_ids_of_another_trust_domain_and_bad_input() {
        let ca = Ca::new("td.example", DEFAULT_ROOT_LIFETIME).expect("ca");
        let err = ca
            .issue(
                &id("spiffe://other.example/ns/a/sa/b"),
                DEFAULT_WORKLOAD_LIFETIME,
            )
            .expect_err("outside");
        assert!(
            err.to_string()
                .contains("outside this CA's trust domain td.example"),
            "{err}"
        );
        assert!(matches!(
            Ca::new("Not A Domain!", DEFAULT_ROOT_LIFETIME),
            Err(CaError::InvalidTrustDomain(..))
        ));
        assert!(matches!(
            ca.issue(&id("spiffe://td.example/ns/a/sa/b"), Duration::ZERO),
            Err(CaError::InvalidLifetime(_))
        ));
    }

    #[test]
    fn an_intermediate_issues_with_its_chain_and_the_root_as_bundle() {
        let root = Ca::new("td.example", DEFAULT_ROOT_LIFETIME).expect("ca");
        let inter = root
            .intermediate(DEFAULT_ROOT_LIFETIME)
            .expect("intermediate");
        let issued = inter
            .issue(
                &id("spiffe://td.example/ns/a/sa/b"),
                DEFAULT_WORKLOAD_LIFETIME,
            )
            .expect("issue");
        let chain = inspect(&issued.cert_pem).expect("chain");
        assert_eq!(chain.len(), 2, "leaf + intermediate");
        assert!(chain[1].is_ca);
        assert!(
            chain[0].issuer.contains("intermediate"),
            "{}",
            chain[0].issuer
        );
        assert_eq!(issued.bundle_pem, root.bundle_pem());
    }

    #[test]
    fn written_and_loaded_back_with_a_private_key_file() {
        let dir = std::env::temp_dir().join(format!("mesh-ca-test-{}", std::process::id()));
        let root = Ca::new("td.example", DEFAULT_ROOT_LIFETIME).expect("ca");
        root.write(&dir).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("ca.key"))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = Ca::load(&dir).expect("load");
        assert_eq!(loaded.trust_domain(), "td.example");
        let issued = loaded
            .issue(
                &id("spiffe://td.example/ns/a/sa/b"),
                DEFAULT_WORKLOAD_LIFETIME,
            )
            .expect("issue");
        assert_eq!(issued.bundle_pem, root.bundle_pem());
        // A key that belongs to another CA is refused, naming the file.
        let other = Ca::new("td.example", DEFAULT_ROOT_LIFETIME).expect("other");
        let other_dir = dir.join("other");
        other.write(&other_dir).expect("write other");
        std::fs::copy(other_dir.join("ca.key"), dir.join("ca.key")).expect("swap key");
        let err = Ca::load(&dir).expect_err("mismatched key");
        assert!(err.to_string().contains("ca.key"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
