//! Accepting client connections and deciding what each one is.
//!
//! Per connection, top to bottom: connection cap → target (original destination, else the
//! listener's configured target; never the proxy itself) → opaque port? → protocol detection
//! → HTTP/1 or HTTP/2 server, or opaque TCP forward. An inbound listener with an identity
//! reads the ClientHello first: mesh TLS is terminated (the peer's identity then travels with
//! the connection) and detection runs again on what it carries; other TLS passes through;
//! plaintext is served only in permissive mode. Opaque forwarding on the inbound side is
//! subject to the port's authorization policy; HTTP requests are, each, in the stack. A watchdog enforces the header-read and
//! idle timeouts, and a drain signal turns into hyper's graceful shutdown (HTTP/2 GOAWAY,
//! HTTP/1 `Connection: close` on the in-flight response).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use mesh_core::detect::{DetectConfig, Outcome, Protocol, detect};
use mesh_core::metrics::record_detect;
use mesh_core::target::{Logical, Name};
use mesh_tls::accept::InboundKind;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::Direction;
use crate::authz::ListenerAuthz;
use crate::config::TrustedSource;
use crate::config::{InboundMode, same_socket};
use crate::conn::{ConnState, Expired, ServerIo, Watch};
use crate::http::{ConnService, ServerSettings, StackResponse};
use crate::inbound::InboundTls;
use crate::ratelog::LogLimit;
use crate::router::{Router, RouterStack};
use crate::stack::{LogicalTarget, Peer, Targets};
use crate::tunnel::ConnCtx;
use crate::{inbound, outbound};
use mesh_core::framing::HeadScanner;

/// Everything a listener needs to handle its connections.
#[derive(Debug)]
pub(crate) struct ListenerCtx {
    pub(crate) direction: Direction,
    pub(crate) local: SocketAddr,
    /// Where connections without an original destination go: an address, or (outbound) a
    /// bound name whose endpoints the balancer spreads requests over.
    pub(crate) target: Option<Name>,
    pub(crate) opaque_ports: Vec<u16>,
    pub(crate) own_addrs: Vec<SocketAddr>,
    pub(crate) detect: DetectConfig,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) server: ServerSettings,
    pub(crate) targets: Arc<Targets>,
    /// Outbound with `router = "…"`: names and routes each HTTP request by the dtab.
    pub(crate) router: Option<Arc<Router>>,
    /// Who may pass routing context (`l5d-ctx-dtab`) through this listener; from anyone
    /// else it is removed (inbound; outbound, the router decides).
    pub(crate) trusted: Vec<TrustedSource>,
    pub(crate) conns: Arc<Semaphore>,
    /// The connection cap `conns` started with.
    pub(crate) cap: usize,
    /// Limits log lines about connections refused (cap, loops, no target).
    pub(crate) refusals: LogLimit,
    /// Inbound with an identity: mesh TLS termination.
    pub(crate) tls: Option<InboundTls>,
    /// Inbound: the authorization policy per destination port.
    pub(crate) authz: Option<ListenerAuthz>,
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
fn resolve_target(stream: &TcpStream, ctx: &ListenerCtx) -> Result<Name, &'static str> {
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
        .map(Name::Addr)
        .or_else(|| ctx.target.clone())
        .or_else(|| ctx.router.as_ref().map(|r| Name::Path(r.placeholder())))
        .ok_or("no original destination and no target configured")?;
    if let Name::Addr(addr) = target
        && (Some(addr) == local || ctx.own_addrs.iter().any(|own| same_socket(addr, *own)))
    {
        return Err("destination is the proxy's own listener; refusing to loop");
    }
    Ok(target)
}

async fn handle(
    stream: TcpStream,
    client: SocketAddr,
    ctx: &ListenerCtx,
    drain: watch::Receiver<bool>,
    conn: &Arc<ConnCtx>,
) {
    let dir = ctx.direction.as_str();
    let _ = stream.set_nodelay(true);
    let dst = match resolve_target(&stream, ctx) {
        Ok(a) => a,
        Err(reason) => {
            if let Some(suppressed) = ctx.refusals.allow() {
                tracing::warn!(direction = dir, peer = %client, reason, suppressed, "connection refused");
            }
            return;
        }
    };
    // Each kind of connection in its own allocation, sized for it: a task holding every
    // branch inline would cost every connection the largest one.
    match &ctx.tls {
        None => Box::pin(serve_plain(stream, client, dst, ctx, drain, conn)).await,
        Some(tls) => {
            Box::pin(serve_inbound_tls(
                stream, tls, client, dst, ctx, drain, conn,
            ))
            .await
        }
    }
}

/// A connection without mesh TLS termination: outbound, or inbound without an identity.
async fn serve_plain(
    stream: TcpStream,
    client: SocketAddr,
    dst: Name,
    ctx: &ListenerCtx,
    drain: watch::Receiver<bool>,
    conn: &Arc<ConnCtx>,
) {
    let peer = match ctx.direction {
        Direction::Outbound => Peer::Local,
        Direction::Inbound => Peer::Unauthenticated,
    };
    let opaque_port = is_opaque_port(ctx, &dst);
    let accepted = Accepted::open(ctx, client, dst, peer);
    if opaque_port {
        record_detect(ctx.direction.as_str(), "opaque-port");
        Box::pin(opaque(stream, &accepted, ctx)).await;
    } else {
        match detect(ctx.detect, stream).await {
            Ok((outcome, io)) => serve_detected(outcome, io, &accepted, ctx, drain, conn).await,
            Err(error) => {
                tracing::debug!(direction = ctx.direction.as_str(), peer = %client, %error, "connection failed during detection");
            }
        }
    }
    accepted.closed();
}

/// An inbound connection to a workload with an identity: the ClientHello decides first —
/// even on an opaque port, where mesh peers speak TLS too.
async fn serve_inbound_tls(
    stream: TcpStream,
    tls: &InboundTls,
    client: SocketAddr,
    dst: Name,
    ctx: &ListenerCtx,
    drain: watch::Receiver<bool>,
    conn: &Arc<ConnCtx>,
) {
    let dir = ctx.direction.as_str();
    let opaque_port = is_opaque_port(ctx, &dst);
    let (outcome, io) = match detect(ctx.detect, stream).await {
        Ok(d) => d,
        Err(error) => {
            tracing::debug!(direction = dir, peer = %client, %error, "connection failed during detection");
            return;
        }
    };
    let hello = match outcome.protocol() {
        Protocol::Tls(hello) => Some(hello),
        _ => None,
    };
    let kind = tls.acceptor.classify(hello.as_ref());
    if kind != InboundKind::Mesh && tls.mode == InboundMode::Strict {
        record_detect(dir, outcome.label());
        tls.refuse(client, kind);
        return;
    }
    match kind {
        InboundKind::Mesh => {
            record_detect(dir, "mesh-tls");
            let accept = Box::pin(tls.acceptor.accept(io));
            let handshake = tokio::time::timeout(ctx.header_timeout, accept).await;
            // The TLS stream (rustls' connection state, ~1.2 KB) lives on the heap once, not
            // inline in every future that holds it on its way to the HTTP server.
            let (io, id) = match handshake {
                Ok(Ok((io, id))) => (Box::new(io), id),
                Ok(Err(error)) => return tls.handshake_failed(client, &error),
                Err(_) => return tls.handshake_failed(client, &"the handshake timed out"),
            };
            let span = tracing::info_span!("mesh", peer = %client, peer_id = %id);
            let accepted = Accepted::open(ctx, client, dst, Peer::Mesh(id));
            async {
                tracing::debug!("mesh TLS connection accepted");
                // ALPN names the application protocol (the client's proxy chose it from the
                // request); only a connection without one needs detection.
                let alpn = match io.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Some(Protocol::Http2),
                    Some(b"http/1.1") => Some(Protocol::Http1),
                    _ => None,
                };
                if opaque_port {
                    Box::pin(opaque(io, &accepted, ctx)).await;
                } else if let Some(protocol) = alpn {
                    serve_detected(Outcome::Detected(protocol), io, &accepted, ctx, drain, conn)
                        .await;
                } else {
                    match detect(ctx.detect, io).await {
                        Ok((outcome, io)) => {
                            serve_detected(outcome, io, &accepted, ctx, drain, conn).await;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "mesh connection failed during detection");
                        }
                    }
                }
            }
            .instrument(span)
            .await;
            accepted.closed();
        }
        InboundKind::PassThrough => {
            record_detect(dir, outcome.label());
            tracing::debug!(peer = %client, sni = ?hello.and_then(|h| h.server_name), "passing TLS for another name through");
            let accepted = Accepted::open(ctx, client, dst, Peer::Unauthenticated);
            if admits_unparsed(ctx, &accepted) {
                Box::pin(opaque(io, &accepted, ctx)).await;
            }
            accepted.closed();
        }
        InboundKind::Plaintext => {
            let accepted = Accepted::open(ctx, client, dst, Peer::Unauthenticated);
            if opaque_port {
                record_detect(dir, "opaque-port");
                Box::pin(opaque(io, &accepted, ctx)).await;
            } else {
                serve_detected(outcome, io, &accepted, ctx, drain, conn).await;
            }
            accepted.closed();
        }
    }
}

/// Whether a connection whose bytes turned out not to be HTTP (on a port not declared
/// opaque) may be forwarded as such: inbound, not when the port has HTTP path rules.
fn admits_unparsed(ctx: &ListenerCtx, accepted: &Accepted) -> bool {
    ctx.authz.as_ref().is_none_or(|authz| {
        authz
            .port(port_of(&accepted.dst))
            .admits_unparsed(accepted.target.peer.identity())
    })
}

/// Whether connections to `dst` skip detection (its port is an opaque port). A bound name
/// has no port of its own: its connections are detected.
fn is_opaque_port(ctx: &ListenerCtx, dst: &Name) -> bool {
    match dst {
        Name::Addr(a) => ctx.opaque_ports.contains(&a.port()),
        Name::Path(_) => false,
    }
}

/// The destination port a policy is chosen by (0, no port of its own, for a bound name).
fn port_of(dst: &Name) -> u16 {
    match dst {
        Name::Addr(a) => a.port(),
        Name::Path(_) => 0,
    }
}

/// An accepted connection whose destination and client are known.
struct Accepted {
    client: SocketAddr,
    /// The destination: an address, or a bound name.
    dst: Name,
    target: Arc<LogicalTarget>,
    state: Arc<ConnState>,
}

impl Accepted {
    /// The connection to `dst` from `client`, who is `peer`: counted open.
    fn open(ctx: &ListenerCtx, client: SocketAddr, dst: Name, peer: Peer) -> Self {
        let target = ctx.targets.logical(&Logical::new(dst.clone()), &peer);
        target.tcp.opened();
        Self {
            client,
            dst,
            target,
            state: ConnState::new(),
        }
    }

    /// Counts the connection closed, with its bytes.
    fn closed(&self) {
        let (read, written) = self.state.bytes();
        self.target.tcp.closed(read, written);
    }
}

/// Serves a connection whose protocol detection has finished.
async fn serve_detected<I>(
    outcome: Outcome,
    io: I,
    accepted: &Accepted,
    ctx: &ListenerCtx,
    drain: watch::Receiver<bool>,
    conn: &Arc<ConnCtx>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let dir = ctx.direction.as_str();
    record_detect(dir, outcome.label());
    let h2 = match outcome.protocol() {
        Protocol::Http1 => false,
        Protocol::Http2 => true,
        Protocol::Tls(hello) => {
            if admits_unparsed(ctx, accepted) {
                tracing::debug!(direction = dir, peer = %accepted.client, sni = ?hello.server_name, "forwarding TLS as opaque");
                Box::pin(opaque(io, accepted, ctx)).await;
            }
            return;
        }
        Protocol::Opaque => {
            if admits_unparsed(ctx, accepted) {
                Box::pin(opaque(io, accepted, ctx)).await;
            }
            return;
        }
    };
    let Accepted {
        dst, target, state, ..
    } = accepted;
    let targets = &ctx.targets;
    match (ctx.direction, &ctx.authz) {
        (Direction::Inbound, Some(authz)) => {
            let authz = authz.port(port_of(dst)).clone();
            let mesh_peer = target.peer.identity().is_some();
            let trusted = ctx
                .trusted
                .iter()
                .any(|t| t.admits(accepted.client.ip(), mesh_peer));
            let stack = inbound::http_stack(targets, target, dst, state, conn, authz, trusted);
            serve_http(io, h2, stack, ctx, state, drain).await;
        }
        _ => match &ctx.router {
            Some(router) => {
                let stack = RouterStack::new(
                    router.clone(),
                    accepted.client,
                    accepted.target.peer.identity().is_some(),
                    state.clone(),
                    conn.clone(),
                );
                serve_http(io, h2, stack, ctx, state, drain).await;
            }
            None => {
                let stack = outbound::http_stack(targets, target, dst, state, conn);
                serve_http(io, h2, stack, ctx, state, drain).await;
            }
        },
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
        Box::pin(drive(conn, state, timeouts, drain, |c| {
            c.graceful_shutdown()
        }))
        .await;
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
        Box::pin(drive(conn, state, timeouts, drain, |c| {
            c.graceful_shutdown()
        }))
        .await;
    }
}

/// Forwards a connection as opaque TCP, once the inbound policy admits its peer.
async fn opaque<I>(io: I, accepted: &Accepted, ctx: &ListenerCtx)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let dst = &accepted.dst;
    if let Some(authz) = &ctx.authz {
        let port = authz.port(port_of(dst));
        let peer = accepted.target.peer.identity();
        let decision = port.decide(peer, None);
        if !decision.allowed {
            // Closed before a byte reaches the application.
            port.log_denied(peer, &decision, "tcp connection");
            return;
        }
    }
    if let (Some(router), Name::Path(p)) = (&ctx.router, dst)
        && *p == router.placeholder()
    {
        tracing::info!(direction = ctx.direction.as_str(), peer = %accepted.client, router = router.name(), "connection closed: not HTTP, and a router listener without a target has nowhere to forward other bytes");
        return;
    }
    let endpoint = match ctx.targets.opaque_endpoint(dst).await {
        Ok(e) => e,
        Err(reason) => {
            tracing::info!(direction = ctx.direction.as_str(), %dst, %reason, "opaque connection closed: no endpoint");
            return;
        }
    };
    let mut io = ServerIo::new(io, accepted.state.clone(), Watch::Bytes);
    tokio::select! {
        () = crate::tcp::forward(&mut io, endpoint, ctx.targets.connect()) => {}
        _ = accepted.state.expired(None, ctx.idle_timeout, None) => {
            tracing::debug!(direction = ctx.direction.as_str(), %dst, "idle opaque connection closed");
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
