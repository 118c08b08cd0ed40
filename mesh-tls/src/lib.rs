//! Mesh TLS: workload identities, the certificate authority ([`ca`]), a workload's
//! credentials and the rustls configurations mesh peers speak ([`creds`]), the mTLS
//! connect layer ([`connect`]), inbound termination ([`accept`]) and credentials that
//! rotate while the proxy runs ([`store`]).
//!
//! The identity type itself lives in [`mesh_core::identity`] so that discovery and policy can
//! name peers without a TLS dependency; it is re-exported here.

pub mod accept;
pub mod ca;
pub mod connect;
pub mod creds;
pub mod store;

pub use mesh_core::identity::{Identity, InvalidIdentity};
