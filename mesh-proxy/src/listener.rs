//! Accepting client connections and deciding what each one is.
//!
//! Per connection, top to bottom: connection cap → target (original destination, else the
//! listener's configured target; never the proxy itself) → opaque port? → protocol detection
//! → HTTP/1 or HTTP/2 server, or opaque TCP forward. A watchdog enforces the header-read and
//! idle timeouts, and a drain signal turns into hyper's graceful shutdown (HTTP/2 GOAWAY,
//! HTTP/1 `Connection: close` on the in-flight response).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use mesh_core::detect::{DetectConfig, Protocol, detect};
use mesh_core::metrics::record_detect;
use mesh_core::target::{Endpoint, Logical};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Direction;
use crate::config::same_socket;
use crate::conn::{ConnState, Expired, ServerIo, Watch};
use crate::http::{ConnService, ServerSettings, StackResponse};
use crate::ratelog::LogLimit;
use crate::stack::{LogicalTarget, Targets};
use crate::tunnel::ConnCtx;
use crate::{inbound, outbound};
use mesh_core::framing::HeadScanner;

/// Everything a listener needs to handle its connections.
#[derive(Debug)]
pub(crate) struct ListenerCtx {
    pub(crate) direction: Direction,
    pub(crate) local: SocketAddr,
    pub(crate) target: Option<SocketAddr>,
    pub(crate) opaque_ports: Vec<u16>,
    pub(crate) own_addrs: Vec<SocketAddr>,
    pub(crate) detect: DetectConfig,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) server: ServerSettings,
    pub(crate) targets: Targets,
    pub(crate) conns: Arc<Semaphore>,
    /// The connection cap `conns` started with.
    pub(crate) cap: usize,
    /// Limits log lines about connections refused (cap, loops, no target).
    pub(crate) refusals: LogLimit,
}

/// Accepts connections until the drain signal, then drops the listener so new connections
/// are refused.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    mut drain: watch::Receiver<bool>,
    tracker: TaskTracker,
    abort: CancellationToken,
) {
    let dir = ctx.direction.as_str();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.wait_for(|d| *d) => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of descriptors or memory: back off rather than spin.
                tracing::warn!(direction = dir, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = ctx.conns.clone().try_acquire_owned() else {
            // Refused at once; a flood of connections must not become a flood of log lines.
            if let Some(suppressed) = ctx.refusals.allow() {
                tracing::warn!(direction = dir, %peer, cap = ctx.cap, suppressed, "connection cap reached; closing new connections");
            }
            drop(stream);
            continue;
        };
        let conn = Arc::new(ConnCtx {
            abort: abort.clone(),
            tracker: tracker.clone(),
            permit: Arc::new(permit),
            response_timeout: ctx.response_timeout,
            idle_timeout: ctx.idle_timeout,
        });
        let ctx = ctx.clone();
        let drain = drain.clone();
        tracker.spawn(async move {
            // After the grace period the proxy aborts what is left.
            tokio::select! {
                () = handle(stream, peer, &ctx, drain, &conn) => {}
                () = conn.abort.cancelled() => {}
            }
        });
    }
    tracing::debug!(direction = dir, "listener closed");
}

/// Where a connection goes, or why it goes nowhere.
fn resolve_target(stream: &TcpStream, ctx: &ListenerCtx) -> Result<SocketAddr, &'static str> {
    let sock = socket2::SockRef::from(stream);
    let orig = if ctx.local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    // Without a redirect the "original destination" is the socket's own local address
    // (the listener's port on whichever interface the client dialled): that is no redirect.
    let local = stream.local_addr().ok();
    let orig = orig
        .ok()
        .and_then(|a| a.as_socket())
        .filter(|a| *a != ctx.local && Some(*a) != local);
    let target = orig
        .or(ctx.target)
        .ok_or("no original destination and no target configured")?;
    if Some(target) == local || ctx.own_addrs.iter().any(|own| same_socket(target, *own)) {
        return Err("destination is the proxy's own listener; refusing to loop");
    }
    Ok(target)
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &ListenerCtx,
    drain: watch::Receiver<bool>,
    conn: &Arc<ConnCtx>,
) {
    let dir = ctx.direction.as_str();
    let _ = stream.set_nodelay(true);
    let addr = match resolve_target(&stream, ctx) {
        Ok(a) => a,
        Err(reason) => {
            if let Some(suppressed) = ctx.refusals.allow() {
                tracing::warn!(direction = dir, %peer, reason, suppressed, "connection refused");
            }
            return;
        }
    };
    let target = ctx.targets.logical(&Logical::from(addr));
    target.tcp.opened();
    let state = ConnState::new();
    if ctx.opaque_ports.contains(&addr.port()) {
        record_detect(dir, "opaque-port");
        let mut io = ServerIo::new(stream, state.clone(), Watch::Bytes);
        opaque(&mut io, addr, ctx, &state).await;
    } else {
        let accepted = Accepted {
            peer,
            addr,
            target: target.clone(),
            state: state.clone(),
        };
        serve_detected(stream, &accepted, ctx, drain, conn).await;
    }
    let (read, written) = state.bytes();
    target.tcp.closed(read, written);
}

/// An accepted connection whose destination is known.
struct Accepted {
    peer: SocketAddr,
    /// The destination address.
    addr: SocketAddr,
    target: Arc<LogicalTarget>,
    state: Arc<ConnState>,
}

async fn serve_detected(
    stream: TcpStream,
    accepted: &Accepted,
    ctx: &ListenerCtx,
    drain: watch::Receiver<bool>,
    conn: &Arc<ConnCtx>,
) {
    let Accepted {
        peer,
        addr,
        target,
        state,
    } = accepted;
    let (peer, addr) = (*peer, *addr);
    let dir = ctx.direction.as_str();
    let (outcome, io) = match detect(ctx.detect, stream).await {
        Ok(d) => d,
        Err(error) => {
            tracing::debug!(direction = dir, %peer, %error, "connection failed during detection");
            return;
        }
    };
    record_detect(dir, outcome.label());
    let h2 = match outcome.protocol() {
        Protocol::Http1 => false,
        Protocol::Http2 => true,
        Protocol::Tls(hello) => {
            tracing::debug!(direction = dir, %peer, sni = ?hello.server_name, "forwarding TLS as opaque");
            let mut io = ServerIo::new(io, state.clone(), Watch::Bytes);
            opaque(&mut io, addr, ctx, state).await;
            return;
        }
        Protocol::Opaque => {
            let mut io = ServerIo::new(io, state.clone(), Watch::Bytes);
            opaque(&mut io, addr, ctx, state).await;
            return;
        }
    };
    let targets = &ctx.targets;
    match ctx.direction {
        Direction::Outbound => {
            let stack = outbound::http_stack(targets, target, addr, state, conn);
            serve_http(io, h2, stack, ctx, state, drain).await;
        }
        Direction::Inbound => {
            let stack = inbound::http_stack(targets, target, addr, state, conn);
            serve_http(io, h2, stack, ctx, state, drain).await;
        }
    }
}

/// Serves HTTP/1 or HTTP/2 on a detected connection through its request stack.
async fn serve_http<I, S>(
    io: I,
    h2: bool,
    stack: S,
    ctx: &ListenerCtx,
    state: &Arc<ConnState>,
    drain: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    S: tower_service::Service<
            http::Request<mesh_core::body::RequestBody>,
            Response = StackResponse,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let svc = ConnService::new(stack, state.clone());
    if h2 {
        let io = ServerIo::new(io, state.clone(), Watch::Http2);
        let conn = ctx.server.h2().serve_connection(TokioIo::new(io), svc);
        // HTTP/2 multiplexes: each stream times its own response.
        let timeouts = Timeouts {
            header: None,
            idle: ctx.idle_timeout,
            response: None,
        };
        drive(conn, state, timeouts, drain, |c| c.graceful_shutdown()).await;
    } else {
        let io = ServerIo::new(io, state.clone(), Watch::Http1(HeadScanner::default()));
        let conn = ctx
            .server
            .h1()
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        let timeouts = Timeouts {
            header: Some(ctx.header_timeout),
            idle: ctx.idle_timeout,
            response: Some(ctx.response_timeout),
        };
        drive(conn, state, timeouts, drain, |c| c.graceful_shutdown()).await;
    }
}

async fn opaque<I>(io: &mut I, addr: SocketAddr, ctx: &ListenerCtx, state: &ConnState)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::select! {
        () = crate::tcp::forward(io, Endpoint::from(addr), ctx.targets.connect()) => {}
        _ = state.expired(None, ctx.idle_timeout, None) => {
            tracing::debug!(direction = ctx.direction.as_str(), %addr, "idle opaque connection closed");
        }
    }
}

/// Runs a hyper connection to completion under the watchdog and the drain signal.
/// The idle timeout while a connection is already closing: never, in practice.
const CLOSING_IDLE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What a connection's watchdog enforces.
struct Timeouts {
    header: Option<Duration>,
    idle: Duration,
    response: Option<Duration>,
}

async fn drive<C, E>(
    conn: C,
    state: &ConnState,
    timeouts: Timeouts,
    mut drain: watch::Receiver<bool>,
    graceful: impl Fn(std::pin::Pin<&mut C>),
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(error) = res {
                    tracing::debug!(%error, "client connection error");
                }
                return;
            }
            // The watchdog keeps running while the connection closes: in-flight requests still
            // get their response timeout. Idleness no longer matters then.
            why = state.expired(timeouts.header, if closing { CLOSING_IDLE } else { timeouts.idle }, timeouts.response) => match why {
                Expired::HeaderTimeout => {
                    tracing::info!("request head not received within the header read timeout; closing connection");
                    return;
                }
                Expired::Idle => {
                    tracing::debug!("idle connection closed");
                    closing = true;
                    graceful(conn.as_mut());
                }
            },
            _ = drain.wait_for(|d| *d), if !closing => {
                closing = true;
                graceful(conn.as_mut());
            }
        }
    }
}
