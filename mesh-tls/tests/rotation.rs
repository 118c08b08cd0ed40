//! Rotation: a credential store takes valid new files, keeps the old credentials when the
//! new files are bad, and reports a rejected set once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_tls::ca::Ca;
use mesh_tls::store::{CredentialStore, Reload};
use rustls::crypto::CryptoProvider;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-rotation-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn issue(ca: &Ca, id: &str, dir: &Path) {
    ca.issue(&id.parse().expect("id"), Duration::from_secs(3600))
        .expect("issue")
        .write(dir)
        .expect("write");
}

#[test]
fn a_reissued_certificate_replaces_the_old_one_and_bad_files_do_not() {
    let ca = Ca::new("td.example", Duration::from_secs(3600)).expect("ca");
    let dir = tmp("replace");
    issue(&ca, "spiffe://td.example/ns/a/sa/web", &dir);
    let store = CredentialStore::load(&dir, provider()).expect("load");
    let first = store.current();
    assert!(matches!(store.reload(false), Ok(Reload::Unchanged)));
    assert_eq!(store.generation(), 0);

    // Re-issued: a new serial, in force at once.
    issue(&ca, "spiffe://td.example/ns/a/sa/web", &dir);
    match store.reload(false).expect("reload") {
        Reload::Replaced { old, new } => {
            assert_eq!(old.serial(), first.serial());
            assert_ne!(new.serial(), first.serial());
        }
        Reload::Unchanged => panic!("a re-issued certificate was not picked up"),
    }
    assert_eq!(store.generation(), 1);
    let second = store.current();

    // A key that does not match: refused naming key.pem, the second certificate stays.
    let other = tmp("replace-other");
    issue(&ca, "spiffe://td.example/ns/a/sa/web", &other);
    std::fs::copy(other.join("key.pem"), dir.join("key.pem")).expect("copy");
    let err = store.reload(false).expect_err("mismatched key accepted");
    assert!(err.to_string().contains("key.pem"), "{err}");
    assert_eq!(store.current().serial(), second.serial());
    // Reported once: the same bad files are not checked again unless forced.
    assert!(matches!(store.reload(false), Ok(Reload::Unchanged)));
    assert!(store.reload(true).is_err());

    // Unparsable certificate.
    std::fs::write(dir.join("cert.pem"), b"not a certificate").expect("write");
    let err = store.reload(false).expect_err("garbage accepted");
    assert!(err.to_string().contains("cert.pem"), "{err}");

    // Another trust domain.
    let foreign = Ca::new("other.example", Duration::from_secs(3600)).expect("ca");
    issue(&foreign, "spiffe://other.example/ns/a/sa/web", &dir);
    let err = store
        .reload(false)
        .expect_err("trust domain change accepted");
    assert!(err.to_string().contains("trust domain"), "{err}");
    assert_eq!(store.current().serial(), second.serial());
    assert_eq!(store.generation(), 1);

    // Valid again: accepted.
    issue(&ca, "spiffe://td.example/ns/a/sa/web", &dir);
    assert!(matches!(store.reload(false), Ok(Reload::Replaced { .. })));
    assert_eq!(store.generation(), 2);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn an_expired_certificate_is_refused() {
    let ca = Ca::new("td.example", Duration::from_secs(3600)).expect("ca");
    let dir = tmp("expired");
    issue(&ca, "spiffe://td.example/ns/a/sa/web", &dir);
    let store = CredentialStore::load(&dir, provider()).expect("load");
    ca.issue(
        &"spiffe://td.example/ns/a/sa/web".parse().expect("id"),
        Duration::from_secs(1),
    )
    .expect("issue")
    .write(&dir)
    .expect("write");
    std::thread::sleep(Duration::from_millis(2100));
    let err = store.reload(false).expect_err("expired accepted");
    assert!(err.to_string().contains("expired"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
