//! Request-path building blocks of the mesh data plane.
//!
//! `mesh-core` holds what every way of running mesh shares — sidecar, per-node router,
//! ingress, or a Rust service embedding the layers directly — and nothing that needs TLS,
//! DNS or gRPC:
//!
//! - [`cache`]: the bounded per-target cache every stage is built through;
//! - [`classify`]: success or failure of a response, gRPC trailers included;
//! - [`detect`]: classify a new connection (HTTP/1, HTTP/2, TLS, opaque) and replay its bytes;
//! - [`identity`]: workload identities (SPIFFE IDs);
//! - [`io`]: the replaying stream;
//! - [`connect`]: the TCP connect service that mTLS wraps;
//! - [`client`]: per-endpoint HTTP/1 pools and HTTP/2 connections;
//! - [`framing`]: spotting ambiguous HTTP/1 request framing in the raw head;
//! - [`headers`]: hop-by-hop header rules;
//! - [`errors`]: named request-path errors and the one function that turns them into responses;
//! - [`body`]: the response body type the proxy serves;
//! - [`log_limit`]: log lines a peer can trigger, at most once a second;
//! - [`metrics`]: metric names and pre-resolved handles;
//! - [`target`]: the typed targets stages are built for (logical, concrete, endpoint);
//! - [`timeout`]: the response-head deadline layer;
//! - [`upgrade`]: handing agreed upgrades and `CONNECT` tunnels to a tunnel.
//!
//! The crates layer up as `mesh-core ← mesh-tls, mesh-discovery ← mesh-proxy`.

pub mod body;
pub mod cache;
pub mod classify;
pub mod client;
pub mod connect;
pub mod detect;
pub mod errors;
pub mod framing;
pub mod headers;
pub mod identity;
pub mod io;
pub mod log_limit;
pub mod metrics;
pub mod target;
pub mod timeout;
pub mod upgrade;

/// The error type that crosses service boundaries on the request path.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
