//! Mesh TLS: workload identities, and (with the mTLS wave) the CA, rustls configurations,
//! TLS accept/connect and certificate rotation.
//!
//! The identity type itself lives in [`mesh_core::identity`] so that discovery and policy can
//! name peers without a TLS dependency; it is re-exported here.

pub use mesh_core::identity::{Identity, InvalidIdentity};
