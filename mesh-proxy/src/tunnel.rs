//! The proxy's tunnels for agreed upgrades (WebSocket) and `CONNECT`.
//!
//! A tunnel outlives the HTTP exchange that opened it, so it carries what the connection
//! would have: the client connection's slot under the connection cap, the idle timeout, the
//! drain (it is tracked, and aborted after the grace) and the byte metrics.

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use mesh_core::upgrade::Tunnel;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{ConnState, ServerIo, Watch};
use crate::stack::LogicalTarget;

/// What every request of one client connection shares, besides its stack.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    /// Ends upgraded tunnels when the proxy gives up draining.
    pub(crate) abort: CancellationToken,
    /// Tracks upgraded tunnels, so a drain waits for them.
    pub(crate) tracker: TaskTracker,
    /// The connection's slot under the connection cap; a tunnel keeps it.
    pub(crate) permit: Arc<OwnedSemaphorePermit>,
    pub(crate) response_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

/// Opens tunnels for one client connection.
#[derive(Clone, Debug)]
pub(crate) struct ProxyTunnel {
    ctx: Arc<ConnCtx>,
    target: Arc<LogicalTarget>,
}

impl ProxyTunnel {
    pub(crate) fn new(ctx: Arc<ConnCtx>, target: Arc<LogicalTarget>) -> Self {
        Self { ctx, target }
    }
}

impl Tunnel for ProxyTunnel {
    fn open(&self, downstream: OnUpgrade, upstream: OnUpgrade) {
        let run = copy(
            downstream,
            upstream,
            self.target.clone(),
            self.ctx.permit.clone(),
            self.ctx.idle_timeout,
        );
        self.ctx
            .tracker
            .spawn(self.ctx.abort.clone().run_until_cancelled_owned(run));
    }
}

/// Copies bytes between an upgraded client connection and its upstream until both ends
/// finish, the tunnel idles out, or the proxy aborts after its drain.
async fn copy(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    target: Arc<LogicalTarget>,
    _permit: Arc<OwnedSemaphorePermit>,
    idle: Duration,
) {
    let dst = target.logical.text().clone();
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::info!(%dst, %error, "upgrade failed after the upstream agreed");
            return;
        }
    };
    let state = ConnState::new();
    let mut down = ServerIo::new(TokioIo::new(down), state.clone(), Watch::Bytes);
    let mut up = TokioIo::new(up);
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut down, &mut up) => match res {
            Ok((tx, rx)) => tracing::debug!(%dst, tx, rx, "tunnel closed"),
            Err(error) => tracing::debug!(%dst, %error, "tunnel failed"),
        },
        _ = state.expired(None, idle, None) => tracing::debug!(%dst, "idle tunnel closed"),
    }
    let (read, written) = state.bytes();
    target.tcp.transferred(read, written);
}
