//! Credentials that change while the proxy runs: certificate rotation.
//!
//! Workload certificates are short-lived (24 h by default), so a proxy must pick up a
//! re-issued certificate, key or trust bundle without a restart and without dropping a
//! connection. A [`CredentialStore`] holds the credentials in force behind an [`ArcSwap`]:
//! the connect and accept sides read it at each new handshake (established connections keep
//! the session they negotiated), and [`CredentialStore::reload`] replaces it in one atomic
//! store once the new files have passed every check [`Credentials::parse`] makes, plus one
//! more: the trust domain may not change under a running proxy.
//!
//! A reload that finds the files unchanged (byte for byte) since the last attempt does
//! nothing, so a caller may poll cheaply; a rejected set of files is remembered too, so it
//! is reported once, not at every poll, and retried when any of the files changes again
//! (a writer that replaces `cert.pem` and then `key.pem` is briefly inconsistent; the second
//! write makes the set valid).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;

use crate::creds::{CERT_FILE, CredentialFiles, Credentials, CredsError};

/// The credentials in force, replaceable while the proxy runs.
pub struct CredentialStore {
    dir: Option<PathBuf>,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Credentials>,
    generation: AtomicU64,
    /// The files of the last reload attempt, accepted or not.
    seen: Mutex<Option<CredentialFiles>>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("dir", &self.dir)
            .field("identity", &self.current.load().identity().to_string())
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// The files are the ones already loaded (or already rejected).
    Unchanged,
    /// New credentials are in force.
    Replaced {
        /// The credentials they replaced.
        old: Arc<Credentials>,
        /// The credentials now in force.
        new: Arc<Credentials>,
    },
}

impl CredentialStore {
    /// Loads the credentials in `dir` (`cert.pem`, `key.pem`, `ca.pem`).
    ///
    /// # Errors
    ///
    /// [`CredsError`] naming the file and what is wrong with it.
    pub fn load(dir: &Path, provider: Arc<CryptoProvider>) -> Result<Self, CredsError> {
        let files = CredentialFiles::read(dir)?;
        let creds = Credentials::parse(dir, &files, &provider)?;
        Ok(Self {
            dir: Some(dir.to_owned()),
            provider,
            current: ArcSwap::from_pointee(creds),
            generation: AtomicU64::new(0),
            seen: Mutex::new(Some(files)),
        })
    }

    /// A store of credentials that never change (no directory to reload from).
    pub fn fixed(creds: Credentials, provider: Arc<CryptoProvider>) -> Self {
        Self {
            dir: None,
            provider,
            current: ArcSwap::from_pointee(creds),
            generation: AtomicU64::new(0),
            seen: Mutex::new(None),
        }
    }

    /// The credentials in force.
    pub fn current(&self) -> Arc<Credentials> {
        self.current.load_full()
    }

    /// Increases by one at every replacement; caches built from the credentials compare it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The crypto provider every configuration is built on.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The directory the credentials come from, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Reads the directory again and puts valid new credentials in force. With `force`, files
    /// already rejected are checked (and reported) again.
    ///
    /// # Errors
    ///
    /// [`CredsError`] naming the file and what is wrong with it; the credentials in force
    /// stay.
    pub fn reload(&self, force: bool) -> Result<Reload, CredsError> {
        let Some(dir) = &self.dir else {
            return Ok(Reload::Unchanged);
        };
        let files = CredentialFiles::read(dir)?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.as_ref() == Some(&files) && !force {
                return Ok(Reload::Unchanged);
            }
            *seen = Some(files.clone());
        }
        let old = self.current();
        let new = Credentials::parse(dir, &files, &self.provider)?;
        if new.trust_domain() != old.trust_domain() {
            return Err(CredsError::Invalid {
                path: dir.join(CERT_FILE),
                reason: format!(
                    "trust domain {:?} differs from the running {:?}",
                    new.trust_domain(),
                    old.trust_domain()
                ),
            });
        }
        let new = Arc::new(new);
        self.current.store(new.clone());
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(Reload::Replaced { old, new })
    }
}
