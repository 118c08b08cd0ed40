//! Mesh TLS: workload identities, the certificate authority ([`ca`]), a workload's
//! credentials and the rustls configurations mesh peers speak ([`creds`]), the mTLS
//! connect layer ([`connect`]) and inbound termination ([`accept`]); the sidecar's use of
//! them and certificate rotation come next.
//!
//! The identity type itself lives in [`mesh_core::identity`] so that discovery and policy can
//! name peers without a TLS dependency; it is re-exported here.

pub mod accept;
pub mod ca;
pub mod connect;
pub mod creds;

pub use mesh_core::identity::{Identity, InvalidIdentity};
