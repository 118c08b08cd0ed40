//! The bodies that cross the proxy.
//!
//! - [`RequestBody`]: a request body on its way upstream — a client's body as hyper's server
//!   received it, or any `http_body::Body<Data = Bytes>` an embedding program hands in (tonic,
//!   axum, hyper users) — plus the hook that tells the client connection when the upload
//!   ended. A failure of the body itself is the client's fault
//!   ([`RequestBodyError`], answered `400`), never the upstream's.
//! - [`ProxyBody`]: a response body — streamed from the upstream, or made by the proxy (an
//!   error response). Enums rather than boxed trait objects keep the common path free of an
//!   allocation per request.
//!
//! - [`ReplayBody`]: a request body that can be sent again (retries), replaying a bounded
//!   buffer of what it read while it streamed; [`ReplayMemory`] bounds what all such
//!   buffers of a process hold together.
//!
//! The pool's hook that returns an HTTP/1 connection when its response ends lives with the
//! pool ([`crate::client`]), which this module only wraps.

mod replay;
mod replay_memory;
mod request;
mod response;

pub use self::replay::{NotReplayable, ReplayBody};
pub use self::replay_memory::ReplayMemory;

pub(crate) use self::request::HoldSignal;
pub use self::request::{BodyEnd, RequestBody, RequestBodyError};
pub use self::response::ProxyBody;
