//! In-process test harness for mesh.
//!
//! - [`app`]: a small application that speaks HTTP/1.1, HTTP/2 and gRPC on one port — the
//!   "hello" service of the demo and the upstream of the end-to-end tests. It records every
//!   request it sees, so tests can compare what a client sent with what arrived.
//! - [`grpc`]: the `hello.Greeter` gRPC service (unary and server-streaming) and a client.
//! - [`tls`]: a client stream that fragments its ClientHello over many TLS records.
//!
//! Everything binds `127.0.0.1:0`.

pub mod app;
pub mod grpc;
pub mod tls;
