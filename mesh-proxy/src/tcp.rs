//! Opaque TCP forwarding: bytes in both directions, half-close preserved.
//!
//! When one side finishes sending, the other side's write half is shut down and the
//! opposite direction keeps flowing until it finishes too, so request/response protocols
//! that signal the end of a request with a half-close keep working.

use mesh_core::BoxError;
use mesh_core::target::Endpoint;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

/// Copy buffer per direction. Small: most opaque connections are chatty, not bulk.
const BUF: usize = 8 * 1024;

/// Connects to `target` through the connect stack (the same one HTTP uses, so mTLS wraps
/// both) and copies bytes between it and `client` until both directions end.
pub(crate) async fn forward<I, C, U>(client: &mut I, target: Endpoint, connect: C)
where
    I: AsyncRead + AsyncWrite + Unpin,
    C: tower_service::Service<Endpoint, Response = U, Error = BoxError>,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = match connect.oneshot(target.clone()).await {
        Ok(s) => s,
        Err(error) => {
            tracing::info!(%target, %error, "opaque connection failed");
            return;
        }
    };
    match tokio::io::copy_bidirectional_with_sizes(client, &mut upstream, BUF, BUF).await {
        Ok((tx, rx)) => tracing::debug!(%target, tx, rx, "opaque connection closed"),
        Err(error) => tracing::debug!(%target, %error, "opaque connection ended with an error"),
    }
}
