//! Endpoint discovery: namers that bind a path to a live set of endpoints.
//!
//! Discovery sits between routing and balancing (DESIGN.md §3): a router names a concrete
//! destination, a namer binds it to endpoints, and the balancer spreads requests over them.
//! This is Linkerd 1's namer model: a [`namer::Namer`] is mounted under a prefix `/#/NAME`,
//! binds the segments it needs and leaves the rest as a residual; what a bound name resolves
//! to arrives as a [`mesh_core::resolve::Resolution`] through a watch channel, which the
//! balancer in mesh-core consumes.
//!
//! - [`endpoint`]: the endpoint line syntax (`ADDR [weight=N] [id=SPIFFE_ID] [key=value ...]`)
//!   shared by static configuration and endpoint files;
//! - [`namer`]: the interface, bound names and errors, and [`namer::Namers`], the registry
//!   that binds `/#/NAME/...` paths;
//! - [`static_namer`]: services listed in the configuration (`kind = "static"`);
//! - [`file_namer`]: one watched file per name (`kind = "file"`);
//! - [`dns_namer`]: A/AAAA and SRV records, refreshed by TTL (`kind = "dns"`, `"dns-srv"`).
//!
//! Each namer is usable on its own by a library user; control-plane namers come next.

pub mod dns_namer;
pub mod endpoint;
pub mod file_namer;
pub mod namer;
pub mod static_namer;
