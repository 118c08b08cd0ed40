//! Mesh TLS: workload identities, the certificate authority ([`ca`]), and (next) the rustls
//! configurations, TLS accept/connect and certificate rotation.
//!
//! The identity type itself lives in [`mesh_core::identity`] so that discovery and policy can
//! name peers without a TLS dependency; it is re-exported here.

pub mod ca;

pub use mesh_core::identity::{Identity, InvalidIdentity};
