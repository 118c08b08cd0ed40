//! Keeping the workload identity current: certificate rotation and expiry.
//!
//! The credentials live in a [`CredentialStore`] that the outbound connector and the inbound
//! acceptor read at each handshake. This task re-reads the identity directory every second
//! (polling, not inotify: Kubernetes updates a mounted secret by swapping a symlinked
//! directory, which file watches miss, and three small files cost nothing to compare) and
//! on SIGHUP, puts a valid new set in force, and keeps the old one — with a log line naming
//! the file and what is wrong — when the new set is invalid. It also exports the
//! certificate's expiry and warns once when less than a fifth of its lifetime remains.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::hangup::Hangup;
use mesh_core::metrics::IDENTITY_CERT_EXPIRY;
use mesh_tls::creds::Credentials;
use mesh_tls::store::{CredentialStore, Reload};

/// How often the identity directory is compared with the credentials in force.
const POLL: Duration = Duration::from_secs(1);

/// Runs until the proxy stops: reloads on change and on SIGHUP, reports expiry.
pub(crate) async fn watch(store: Arc<CredentialStore>) {
    let mut hangup = Hangup::new("identity files are", POLL);
    let mut expiry = Expiry::new(&store.current());
    let mut last_error = String::new();
    loop {
        let forced = hangup.next().await;
        match store.reload(forced) {
            Ok(Reload::Unchanged) => {
                if forced {
                    tracing::info!("SIGHUP: identity files unchanged");
                }
            }
            Ok(Reload::Replaced { old, new }) => {
                tracing::info!(
                    identity = %new.identity(),
                    old_serial = old.serial(),
                    new_serial = new.serial(),
                    expires = %humantime::format_rfc3339_seconds(new.expires()),
                    "identity credentials rotated; new handshakes use them"
                );
                expiry = Expiry::new(&new);
                last_error.clear();
            }
            Err(error) => {
                // One line per distinct problem, not one per poll.
                let text = error.to_string();
                if forced || text != last_error {
                    tracing::warn!(%error, "new identity files rejected; the credentials in force stay");
                    last_error = text;
                }
            }
        }
        expiry.check(&store.current());
    }
}

/// The expiry gauge and the once-only warning for one certificate.
struct Expiry {
    warned: bool,
}

impl Expiry {
    fn new(creds: &Credentials) -> Self {
        let at = creds
            .expires()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(IDENTITY_CERT_EXPIRY, "identity" => creds.identity().to_string()).set(at);
        Self { warned: false }
    }

    /// Warns once when less than 20 % of the certificate's lifetime remains.
    fn check(&mut self, creds: &Credentials) {
        if self.warned {
            return;
        }
        let lifetime = creds
            .expires()
            .duration_since(creds.issued())
            .unwrap_or_default();
        let remaining = creds
            .expires()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if remaining < lifetime / 5 {
            self.warned = true;
            tracing::warn!(
                identity = %creds.identity(),
                serial = creds.serial(),
                expires = %humantime::format_rfc3339_seconds(creds.expires()),
                remaining = %humantime::format_duration(Duration::from_secs(remaining.as_secs())),
                "identity certificate has less than 20% of its lifetime left; re-issue it"
            );
        }
    }
}
