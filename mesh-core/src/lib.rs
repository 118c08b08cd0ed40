//! Request-path building blocks of the mesh data plane.
//!
//! `mesh-core` holds what every way of running mesh shares — sidecar, per-node router,
//! ingress, or a Rust service embedding the layers directly — and nothing that needs TLS,
//! DNS or gRPC:
//!
//! - [`detect`]: classify a new connection (HTTP/1, HTTP/2, TLS, opaque) and replay its bytes;
//! - [`io`]: the replaying stream;
//! - [`connect`]: the TCP connect service that mTLS wraps;
//! - [`client`]: per-endpoint HTTP/1 pools and HTTP/2 connections;
//! - [`framing`]: spotting ambiguous HTTP/1 request framing in the raw head;
//! - [`headers`]: hop-by-hop header rules;
//! - [`errors`]: named request-path errors and the one function that turns them into responses;
//! - [`body`]: the response body type the proxy serves;
//! - [`metrics`]: metric names and pre-resolved handles.
//!
//! The crates layer up as `mesh-core ← mesh-tls, mesh-discovery ← mesh-proxy`.

pub mod body;
pub mod client;
pub mod connect;
pub mod detect;
pub mod errors;
pub mod framing;
pub mod headers;
pub mod io;
pub mod metrics;

/// The error type that crosses service boundaries on the request path.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
