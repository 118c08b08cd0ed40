//! Request-path building blocks of the mesh data plane.
//!
//! `mesh-core` holds what every way of running mesh shares — sidecar, per-node router,
//! ingress, or a Rust service embedding the layers directly — and nothing that needs TLS,
//! DNS or gRPC:
//!
//! - [`authz`]: inbound authorization policy (deny, all-(un)authenticated, identity
//!   patterns, per HTTP path);
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
//! - [`body`]: the request and response bodies, an embedding program's own included;
//! - [`log_limit`]: log lines a peer can trigger, at most once a second;
//! - [`metrics`]: metric names, pre-resolved handles and the recording layer;
//! - [`target`]: the typed targets stages are built for (logical, concrete, endpoint);
//! - [`timeout`]: the response-head deadline layer;
//! - [`upgrade`]: handing agreed upgrades and `CONNECT` tunnels to a tunnel.
//!
//! The crates layer up as `mesh-core ← mesh-tls, mesh-discovery ← mesh-proxy`.
//!
//! # Embedding: the request path without a sidecar
//!
//! Every stage is a plain tower `Layer`, so a Rust program can put mesh's client path in
//! front of its own calls — golden metrics, a response deadline, connection pooling — with
//! no proxy process and no extra hop. Outermost first:
//!
//! - [`RecordHttp`](metrics::RecordHttp) counts every request the program makes, times it
//!   as the program experiences it (time under the deadline included) and classifies the
//!   response when it *ends*, so a gRPC error in the trailers counts as a failure. It is
//!   outermost because it should see exactly what the caller sees. Errors (a timeout, a
//!   refused connection) reach the caller as errors and are not counted as responses; a
//!   [`RespondLayer`](errors::RespondLayer) right under it turns them into counted `502` /
//!   `504` responses instead, as the sidecar does.
//! - [`Timeout`](timeout::Timeout) bounds the wait for the response head, per destination.
//!   It wraps the endpoint so that connecting counts against the deadline; retries, when
//!   they come, go outside it so each attempt gets a deadline of its own.
//! - [`HopByHop`](headers::HopByHop) sits next to the wire: connection-level headers the
//!   program set stay on this hop, and gRPC's `TE: trailers` is kept.
//! - [`HttpEndpoint`](client::HttpEndpoint) is the client: pooled HTTP/1 connections and
//!   one shared HTTP/2 connection, each request sent in its own version, over a connect
//!   service that takes the [`Endpoint`](target::Endpoint) target (mTLS wraps
//!   [`TcpConnect`](connect::TcpConnect) without touching this code).
//!
//! Metric handles are resolved when [`HttpMetrics`](metrics::HttpMetrics) is built, so
//! install a recorder (e.g. `metrics-exporter-prometheus`) before building the stack.
//! `cargo run --example embedded` runs a complete program, tonic client included.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use http_body_util::BodyExt;
//! use mesh_core::body::RequestBody;
//! use mesh_core::client::{ClientConfig, HttpEndpoint};
//! use mesh_core::connect::TcpConnect;
//! use mesh_core::headers::HopByHopLayer;
//! use mesh_core::metrics::{HttpMetrics, RecordHttpLayer};
//! use mesh_core::target::Endpoint;
//! use mesh_core::timeout::TimeoutLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_core::BoxError> {
//! # let addr = hello_server().await?;
//! // `addr`: where the service we call listens.
//! let client = ServiceBuilder::new()
//!     .layer(RecordHttpLayer::new(Arc::new(HttpMetrics::new("outbound", "hello"))))
//!     .layer(TimeoutLayer::new("hello", Duration::from_secs(2)))
//!     .layer(HopByHopLayer::new())
//!     .service(HttpEndpoint::new(
//!         Endpoint::new(addr),
//!         TcpConnect::default(),
//!         ClientConfig::default(),
//!     ));
//!
//! let req = http::Request::get("/")
//!     .header(http::header::HOST, "hello")
//!     .body(RequestBody::empty())?;
//! // Cheap to clone: clones share the endpoint's connections.
//! let res = client.clone().oneshot(req).await?;
//! assert_eq!(res.status(), http::StatusCode::OK);
//! // The response is counted when its body ends.
//! let body = res.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "hello");
//! # Ok(())
//! # }
//! # async fn hello_server() -> std::io::Result<std::net::SocketAddr> {
//! #     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! #     let addr = listener.local_addr()?;
//! #     tokio::spawn(async move {
//! #         while let Ok((stream, _)) = listener.accept().await {
//! #             let svc = hyper::service::service_fn(|_req| async {
//! #                 Ok::<_, std::convert::Infallible>(http::Response::new(
//! #                     http_body_util::Full::new(bytes::Bytes::from_static(b"hello")),
//! #                 ))
//! #             });
//! #             let io = hyper_util::rt::TokioIo::new(stream);
//! #             tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, svc));
//! #         }
//! #     });
//! #     Ok(addr)
//! # }
//! ```

pub mod authz;
pub mod balance;
pub mod body;
pub mod cache;
pub mod classify;
pub mod client;
pub mod connect;
pub mod detect;
pub mod dtab;
pub mod errors;
pub mod framing;
pub mod headers;
pub mod identity;
pub mod io;
pub mod log_limit;
pub mod metrics;
pub mod policy;
pub mod resolve;
pub mod target;
pub mod timeout;
pub mod upgrade;

/// The error type that crosses service boundaries on the request path.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
