//! Binding, running and draining a proxy.
//!
//! [`Proxy::bind`] opens every listener first, so a port conflict fails start-up with the
//! address named and nothing half-running. [`BoundProxy::run`] serves until [`Shutdown`] is
//! triggered (a signal the binary forwards, or `POST /shutdown`), then drains: listeners
//! close, open connections finish their in-flight requests (HTTP/2 GOAWAY, HTTP/1
//! `Connection: close`), and after the grace period whatever remains is dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::body::ReplayMemory;
use mesh_core::client::ClientConfig;
use mesh_core::connect::{ConnectTimeoutDuration, TcpConnect};
use mesh_core::detect::DetectConfig;
use mesh_tls::accept::MeshAcceptor;
use mesh_tls::connect::TlsConnect;
use mesh_tls::creds::CredsError;
use mesh_tls::store::CredentialStore;
use metrics_exporter_prometheus::PrometheusHandle;
use rustls::crypto::CryptoProvider;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Direction;
use crate::admin::{self, AdminState, LogLevel};
use crate::authz::ListenerAuthz;
use crate::config::{Config, EffectiveConfig, InboundPolicies, NamerConfig, TrustedSource};
use crate::connect::Connect;
use crate::http::ServerSettings;
use crate::inbound::InboundTls;
use crate::listener::{self, ListenerCtx};
use crate::ratelog::LogLimit;
use crate::reload::Reloader;
use crate::router::Router;
use crate::stack::Targets;
use mesh_core::target::Name;
use mesh_discovery::dns_namer::{DnsConfig, DnsKind, DnsNamer};
use mesh_discovery::file_namer::FileNamer;

use crate::endpoints::Counted;
use mesh_discovery::namer::{Namer, NamerName, Namers};
use mesh_discovery::static_namer::StaticNamer;

/// A listener address could not be bound.
#[derive(Debug, thiserror::Error)]
// The I/O error is part of the message and not also a `source`, so an error chain printed
// whole (`{:#}`) names it once.
#[error("cannot listen on {addr} ({which}): {error}")]
pub struct BindError {
    which: &'static str,
    addr: SocketAddr,
    error: std::io::Error,
}

impl BindError {
    /// Which listener (`admin`, `outbound`, `inbound`).
    pub fn listener(&self) -> &'static str {
        self.which
    }

    /// The address that could not be bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A proxy could not start: a listener address, or its identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listener address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The `[identity]` credentials could not be loaded or used.
    #[error("identity: {0}")]
    Identity(#[from] CredsError),
    /// A `[namers.<name>]` section could not be built.
    #[error("namer {name}: {reason}")]
    Namer {
        /// The namer's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An `[identity]` is configured but the binary chose no crypto provider.
    #[error(
        "an [identity] needs a TLS crypto provider: the binary passes one with Proxy::with_crypto_provider"
    )]
    NoCryptoProvider,
}

/// Triggers and observes a graceful shutdown. Cloning shares the same signal.
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl Shutdown {
    /// Starts the graceful shutdown; later calls do nothing.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once shutdown has started.
    pub async fn triggered(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// A proxy ready to bind: configuration plus the process-wide pieces the binary owns.
pub struct Proxy {
    config: EffectiveConfig,
    prometheus: Option<PrometheusHandle>,
    log: Option<Arc<dyn LogLevel>>,
    provider: Option<Arc<CryptoProvider>>,
    config_file: Option<PathBuf>,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy with `config`, no metrics exposition and no log control.
    pub fn new(config: Config) -> Self {
        Self {
            config: EffectiveConfig::new(config),
            prometheus: None,
            log: None,
            provider: None,
            config_file: None,
            shutdown: Shutdown::default(),
        }
    }

    /// Reloads the configuration from `path` when the file changes (checked every second)
    /// and on SIGHUP, while the proxy runs: routers take a new dtab without dropping
    /// connections, and a file that does not load leaves the configuration in force.
    pub fn with_config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// The TLS crypto provider mesh TLS uses (required with an `[identity]`). The library
    /// never picks or installs one itself; the binary chooses, e.g.
    /// `rustls::crypto::aws_lc_rs::default_provider()`.
    pub fn with_crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Serves `/metrics` from this Prometheus recorder handle.
    pub fn with_prometheus(mut self, handle: PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// Lets `/log-level` read and change the log filter.
    pub fn with_log_level(mut self, log: impl LogLevel + 'static) -> Self {
        self.log = Some(Arc::new(log));
        self
    }

    /// The shutdown signal of this proxy, to wire to process signals.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The configuration this proxy will bind with.
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    /// Loads the identity and binds the admin server and the enabled listeners.
    ///
    /// # Errors
    ///
    /// [`StartError::Bind`] naming the listener and address that could not be bound;
    /// [`StartError::Identity`] naming the credential file that is unusable.
    pub async fn bind(self) -> Result<BoundProxy, StartError> {
        // One snapshot for everything built here; the holder itself goes to the admin server
        // and the bound proxy, where a reload will replace it.
        let cfg = self.config.current();
        let identity = match &cfg.identity {
            Some(id) => {
                let provider = self.provider.clone().ok_or(StartError::NoCryptoProvider)?;
                let store = Arc::new(CredentialStore::load(&id.dir, provider)?);
                let acceptor = MeshAcceptor::new(store.clone())?;
                tracing::info!(identity = %store.current().identity(), server_name = %acceptor.server_name(), mode = ?id.inbound_mode, "mesh identity loaded");
                Some((store, acceptor, id.inbound_mode))
            }
            None => None,
        };
        let admin = bind("admin", cfg.admin.listen).await?;
        let outbound = bind_listener("outbound", cfg.outbound.bind_addr()).await?;
        let inbound = bind_listener("inbound", cfg.inbound.bind_addr()).await?;
        let admin_addr = local_addr("admin", &admin, cfg.admin.listen)?;
        let outbound_addr = outbound
            .as_ref()
            .map(|(l, a)| local_addr("outbound", l, *a))
            .transpose()?;
        let inbound_addr = inbound
            .as_ref()
            .map(|(l, a)| local_addr("inbound", l, *a))
            .transpose()?;
        let own_addrs: Vec<SocketAddr> = [Some(admin_addr), outbound_addr, inbound_addr]
            .into_iter()
            .flatten()
            .collect();

        let (namers, file_namers) = build_namers(&cfg.namers)?;
        let namers = Arc::new(namers);
        // A target path the namer cannot bind at all (no port for a DNS name, an unsafe file
        // name) is refused now, not answered 503 on every request.
        if let Some(path) = cfg.outbound.target.as_ref().and_then(|t| t.path())
            && cfg.outbound.enabled
        {
            namers.bind_path(path).map_err(|e| StartError::Namer {
                name: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
        let balance = cfg.balancer.balance_config();
        let tcp = TcpConnect::new(ConnectTimeoutDuration(cfg.limits.connect_timeout));
        let outbound_connect = match &identity {
            Some((store, _, _)) if cfg.outbound.mtls => {
                // Opening an upstream connection includes its handshake: one bound each.
                Connect::Mesh(
                    TlsConnect::new(tcp, store.clone())
                        .with_handshake_timeout(cfg.limits.connect_timeout),
                )
            }
            _ => Connect::Plain(tcp),
        };
        let outbound_peer = cfg
            .outbound
            .target
            .as_ref()
            .and_then(|t| t.addr())
            .zip(cfg.outbound.peer_id.as_ref().map(|p| p.0.clone()));
        let client = ClientConfig {
            max_idle_per_endpoint: cfg.client.max_idle_per_endpoint,
            idle_timeout: cfg.client.idle_timeout,
            // A held `Expect: 100-continue` body makes no progress, so it must go before the
            // response timeout would take it for a stalled upload.
            continue_wait: Duration::from_secs(1).min(cfg.limits.response_timeout / 2),
            ..ClientConfig::default()
        };
        let server = ServerSettings::new(&cfg.limits);
        let detect = DetectConfig {
            timeout: cfg.limits.detect_timeout,
            ..DetectConfig::default()
        };
        let cap = cfg.limits.connection_cap();
        // One allowance for every router's retry buffers, kept across reloads.
        let replay_memory = ReplayMemory::new(
            usize::try_from(cfg.limits.replay_memory.as_u64()).unwrap_or(usize::MAX),
        );
        // One budget for both listeners: together they must stay below the fd limit.
        let conns = Arc::new(Semaphore::new(cap));
        let make_ctx = |direction: Direction,
                        target: Option<Name>,
                        opaque_ports: &[u16],
                        local: SocketAddr,
                        targets: Arc<Targets>,
                        router: Option<Arc<Router>>,
                        trusted: Vec<TrustedSource>,
                        tls: Option<InboundTls>,
                        authz: Option<ListenerAuthz>| {
            Arc::new(ListenerCtx {
                direction,
                local,
                target,
                opaque_ports: opaque_ports.to_vec(),
                own_addrs: own_addrs.clone(),
                detect,
                header_timeout: cfg.limits.header_read_timeout,
                idle_timeout: cfg.limits.idle_timeout,
                response_timeout: cfg.limits.response_timeout,
                server: server.clone(),
                targets,
                router,
                trusted,
                conns: conns.clone(),
                cap,
                refusals: LogLimit::new(),
                tls,
                authz,
            })
        };
        let mut listeners = Vec::new();
        if let (Some((l, _)), Some(addr)) = (outbound, outbound_addr) {
            let o = &cfg.outbound;
            let targets = Arc::new(Targets::new(
                Direction::Outbound,
                outbound_connect,
                client,
                outbound_peer,
                namers.clone(),
                balance,
            ));
            let router = o
                .router
                .as_ref()
                .and_then(|name| Some((name, cfg.routers.get(name)?)))
                .map(|(name, config)| {
                    Arc::new(Router::new(
                        name,
                        config,
                        namers.clone(),
                        inet_resolver(),
                        targets.clone(),
                        replay_memory.clone(),
                    ))
                });
            listeners.push((
                l,
                make_ctx(
                    Direction::Outbound,
                    o.target.as_ref().map(|t| t.0.clone()),
                    &o.opaque_ports,
                    addr,
                    targets,
                    router,
                    Vec::new(),
                    None,
                    None,
                ),
            ));
        }
        if let (Some((l, _)), Some(addr)) = (inbound, inbound_addr) {
            let i = &cfg.inbound;
            // The hop to the local application is plaintext.
            let targets = Arc::new(Targets::new(
                Direction::Inbound,
                Connect::Plain(tcp),
                client,
                None,
                Arc::new(Namers::new()),
                balance,
            ));
            let tls = identity
                .as_ref()
                .map(|(_, acceptor, mode)| InboundTls::new(acceptor.clone(), *mode));
            let authz = ListenerAuthz::new(&InboundPolicies::new(&i.policy, &i.paths, &i.ports));
            listeners.push((
                l,
                make_ctx(
                    Direction::Inbound,
                    i.target.map(Name::Addr),
                    &i.opaque_ports,
                    addr,
                    targets,
                    None,
                    i.trusted_sources.clone(),
                    tls,
                    Some(authz),
                ),
            ));
        }
        tracing::info!(admin = %admin_addr, outbound = ?outbound_addr, inbound = ?inbound_addr, max_connections = cap, "listening");
        let grace = cfg.shutdown.grace;
        let routers = listeners
            .iter()
            .filter_map(|(_, ctx)| ctx.router.clone())
            .collect();
        let reloader = Reloader::new(self.config.clone(), routers);
        let admin_listeners = listeners.iter().map(|(_, ctx)| ctx.clone()).collect();
        Ok(BoundProxy {
            admin: (admin, admin_addr),
            listeners,
            outbound_addr,
            inbound_addr,
            grace,
            config: self.config.clone(),
            identity: identity.map(|(store, _, _)| store),
            file_namers,
            reloader,
            config_file: self.config_file,
            admin_state: AdminState {
                listeners: admin_listeners,
                config: self.config,
                prometheus: self.prometheus,
                log: self.log,
                shutdown: self.shutdown.clone(),
                replay_memory,
            },
            shutdown: self.shutdown,
        })
    }
}

/// The resolver of host names in `/$/inet/<host>/<port>`: the system's DNS configuration.
/// `None` (logged) when there is none; a host name in `/$/inet` is then a binding error,
/// while literal addresses still bind.
fn inet_resolver() -> Option<Arc<DnsNamer>> {
    let name: NamerName = "inet".parse().ok()?;
    match DnsNamer::new(name, DnsConfig::new(DnsKind::A)) {
        Ok(namer) => Some(Arc::new(namer)),
        Err(error) => {
            tracing::warn!(%error, "no system DNS configuration: host names in /$/inet will not bind");
            None
        }
    }
}

/// The namers of `[namers.*]`, mounted under their names.
/// The file and DNS namers are also returned, for their update and error counters.
fn build_namers(
    config: &std::collections::BTreeMap<String, NamerConfig>,
) -> Result<(Namers, Vec<Counted>), StartError> {
    let mut namers = Namers::new();
    let mut files = Vec::new();
    for (name, cfg) in config {
        let fail = |reason: String| StartError::Namer {
            name: name.clone(),
            reason,
        };
        let mounted: NamerName = name.parse().map_err(|e| fail(format!("{e}")))?;
        let namer: Arc<dyn Namer> = match cfg {
            NamerConfig::Static { services } => {
                Arc::new(StaticNamer::new(mounted, services).map_err(|e| fail(e.to_string()))?)
            }
            NamerConfig::File { dir } => {
                let namer =
                    Arc::new(FileNamer::new(mounted, dir).map_err(|e| fail(e.to_string()))?);
                files.push(Counted::File(namer.clone()));
                namer
            }
            NamerConfig::Dns(dns) | NamerConfig::DnsSrv(dns) => {
                let kind = if matches!(cfg, NamerConfig::Dns(_)) {
                    DnsKind::A
                } else {
                    DnsKind::Srv
                };
                let namer = Arc::new(
                    DnsNamer::new(mounted, dns.dns_config(kind))
                        .map_err(|e| fail(e.to_string()))?,
                );
                files.push(Counted::Dns(namer.clone()));
                namer
            }
        };
        namers.insert(namer);
    }
    Ok((namers, files))
}

async fn bind(which: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| BindError { which, addr, error })
}

async fn bind_listener(
    which: &'static str,
    addr: Option<SocketAddr>,
) -> Result<Option<(TcpListener, SocketAddr)>, BindError> {
    match addr {
        Some(addr) => Ok(Some((bind(which, addr).await?, addr))),
        None => Ok(None),
    }
}

fn local_addr(
    which: &'static str,
    l: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, BindError> {
    l.local_addr()
        .map_err(|error| BindError { which, addr, error })
}

/// A proxy whose listeners are bound; [`BoundProxy::run`] serves them.
pub struct BoundProxy {
    admin: (TcpListener, SocketAddr),
    listeners: Vec<(TcpListener, Arc<ListenerCtx>)>,
    outbound_addr: Option<SocketAddr>,
    inbound_addr: Option<SocketAddr>,
    grace: Duration,
    config: EffectiveConfig,
    identity: Option<Arc<CredentialStore>>,
    /// File namers, whose counters housekeeping exports.
    file_namers: Vec<Counted>,
    reloader: Reloader,
    config_file: Option<PathBuf>,
    admin_state: AdminState,
    shutdown: Shutdown,
}

impl std::fmt::Debug for BoundProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundProxy")
            .field("admin", &self.admin.1)
            .field("outbound", &self.outbound_addr)
            .field("inbound", &self.inbound_addr)
            .finish_non_exhaustive()
    }
}

impl BoundProxy {
    /// The admin server's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.1
    }

    /// The outbound listener's address, if enabled.
    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.outbound_addr
    }

    /// The inbound listener's address, if enabled.
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound_addr
    }

    /// The identity in force, when an `[identity]` is configured.
    pub fn identity(&self) -> Option<Arc<mesh_tls::creds::Credentials>> {
        self.identity.as_ref().map(|s| s.current())
    }

    /// The shutdown signal.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The configuration in force: the one `/config.json` shows.
    ///
    /// It is read from the holder a configuration reload replaces, so a caller that keeps
    /// the `Arc` keeps a consistent snapshot, and a later call sees the newest configuration.
    /// (Listener addresses and per-listener settings are fixed at [`Proxy::bind`] today.)
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    /// Puts a new configuration in force in the running proxy (what a reload of the
    /// configuration file does).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves until shutdown is triggered, then drains for at most the grace period.
    pub async fn run(self) {
        let tracker = TaskTracker::new();
        let admin = tokio::spawn(admin::serve(self.admin.0, self.admin_state.clone()));
        let prometheus = self.admin_state.prometheus.clone();
        let mut ctxs = Vec::new();
        let mut accept_loops = Vec::new();
        let abort = CancellationToken::new();
        for (l, ctx) in self.listeners {
            ctxs.push(ctx.clone());
            accept_loops.push(tokio::spawn(listener::serve(
                l,
                ctx,
                self.shutdown.subscribe(),
                tracker.clone(),
                abort.clone(),
            )));
        }
        let rotation = self
            .identity
            .map(|store| tokio::spawn(crate::identity::watch(store)));
        let reload = self
            .config_file
            .map(|path| tokio::spawn(crate::reload::watch(path, self.reloader)));
        let file_namers = self.file_namers;
        let housekeeping = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for ctx in &ctxs {
                    ctx.targets.sweep();
                    if let Some(router) = &ctx.router {
                        router.sweep();
                    }
                }
                crate::endpoints::record(&ctxs);
                crate::endpoints::record_namers(&file_namers);
                if let Some(p) = &prometheus {
                    p.run_upkeep();
                }
            }
        });

        self.shutdown.triggered().await;
        tracing::info!(grace = ?self.grace, "shutting down: draining connections");
        for a in accept_loops {
            let _ = a.await;
        }
        tracker.close();
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = tracker.len(),
                "grace period over; closing remaining connections"
            );
            abort.cancel();
            tracker.wait().await;
        } else {
            tracing::info!("all connections drained");
        }
        housekeeping.abort();
        if let Some(r) = reload {
            r.abort();
        }
        if let Some(r) = rotation {
            r.abort();
        }
        admin.abort();
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C), for binaries to pass to [`Shutdown::trigger`].
///
/// # Errors
///
/// When the signal handlers cannot be installed.
pub async fn signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn proxy_and_admin_share_one_config_holder() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut cfg = Config::default();
        cfg.admin.listen = any;
        cfg.outbound.listen = Some(any);
        cfg.inbound.enabled = false;
        let proxy = Proxy::new(cfg.clone());
        assert_eq!(*proxy.config(), cfg);
        let bound = proxy.bind().await.expect("bind on loopback");
        assert_eq!(*bound.config(), cfg);

        // What a reload will do: one store into the holder, seen by the proxy's accessor
        // and by the admin server's /config.json alike.
        let mut next = cfg.clone();
        next.limits.response_timeout = Duration::from_secs(5);
        bound.config.replace(next.clone());
        assert_eq!(*bound.config(), next);
        assert_eq!(*bound.admin_state.config.current(), next);
    }
}
