//! Opaque TCP forwarding: bytes in both directions, half-close preserved.
//!
//! When one side finishes sending, the other side's write half is shut down and the
//! opposite direction keeps flowing until it finishes too, so request/response protocols
//! that signal the end of a request with a half-close keep working.

use std::net::SocketAddr;

use mesh_core::connect::TcpConnect;
use tokio::io::{AsyncRead, AsyncWrite};

/// Copy buffer per direction. Small: most opaque connections are chatty, not bulk.
const BUF: usize = 8 * 1024;

/// Connects to `target` and copies bytes between it and `client` until both directions end.
pub(crate) async fn forward<I>(client: &mut I, target: SocketAddr, connect: TcpConnect)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = match connect.connect(target).await {
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
