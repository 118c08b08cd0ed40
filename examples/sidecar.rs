//! The mesh sidecar: an outbound listener, an inbound listener and an admin server, next to
//! one application.
//!
//! ```text
//! cargo run --release --example sidecar -- --outbound-target 127.0.0.1:8080
//! cargo run --release --example sidecar -- --config examples/config/sidecar.toml
//! cargo run --release --example sidecar -- --identity-dir id/ --outbound-target 10.0.0.7:4143 \
//!     --outbound-peer-id spiffe://td/ns/prod/sa/api
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use mesh_proxy::Proxy;
use mesh_proxy::config::{
    Config, IdentityConfig, InboundMode, OutboundTarget, PeerId, PolicyConfig,
};

/// Command-line flags; each overrides the matching key of the config file.
#[derive(Debug, Parser)]
#[command(name = "sidecar", version, about = "mesh sidecar proxy")]
struct Args {
    /// TOML configuration file (see examples/config/sidecar.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Admin server address (admin.listen).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Outbound listener address (outbound.listen).
    #[arg(long, value_name = "ADDR")]
    outbound_listen: Option<SocketAddr>,
    /// Where outbound traffic goes without an original destination: an address, or a bound
    /// path such as /#/fs/hello (outbound.target).
    #[arg(long, value_name = "ADDR|PATH")]
    outbound_target: Option<OutboundTarget>,
    /// Inbound listener address (inbound.listen).
    #[arg(long, value_name = "ADDR")]
    inbound_listen: Option<SocketAddr>,
    /// The local application, for inbound traffic (inbound.target).
    #[arg(long, value_name = "ADDR")]
    inbound_target: Option<SocketAddr>,
    /// The workload identity: a directory with cert.pem, key.pem and ca.pem, as
    /// `meshctl ca issue` writes them (identity.dir). Enables mesh TLS.
    #[arg(long, value_name = "DIR")]
    identity_dir: Option<PathBuf>,
    /// Whether inbound accepts anything but mesh TLS: `permissive` or `strict`
    /// (identity.inbound_mode).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    inbound_mode: Option<InboundMode>,
    /// The SPIFFE ID the outbound target must present over mesh TLS (outbound.peer_id).
    #[arg(long, value_name = "SPIFFE_ID", value_parser = parse_peer_id)]
    outbound_peer_id: Option<PeerId>,
    /// Who may use the inbound side: deny, all-unauthenticated, all-authenticated or
    /// comma-separated SPIFFE ID patterns (inbound.policy).
    #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
    inbound_policy: Option<PolicyConfig>,
    /// Initial log filter, e.g. `info` or `mesh_proxy=debug` (changeable via PUT /log-level).
    #[arg(long, env = "MESH_LOG", default_value = "info")]
    log: String,
}

fn main() {
    // One line naming what was wrong (file, line, key, value for config errors); no
    // backtrace, whatever RUST_BACKTRACE says.
    if let Err(error) = run() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&args.log)
        .context("invalid --log filter")?;
    let telemetry = mesh_examples::init(filter)?;

    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    apply_flags(&mut config, &args)?;

    config
        .validate()
        .context("invalid configuration (after applying flags)")?;

    // One core by default: a current-thread runtime is the fastest shape for a hyper proxy
    // on one core (no cross-thread wake-ups) and keeps idle memory small.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut proxy = Proxy::new(config)
            .with_crypto_provider(mesh_examples::crypto_provider())
            .with_prometheus(telemetry.prometheus)
            .with_log_level(telemetry.log);
        // Routers follow the file: a changed dtab is put in force without a restart.
        if let Some(path) = &args.config {
            proxy = proxy.with_config_file(path);
        }
        let shutdown = proxy.shutdown_handle();
        let bound = proxy.bind().await?;
        tokio::spawn(async move {
            if let Err(error) = mesh_proxy::signal().await {
                tracing::error!(%error, "cannot watch for signals");
                return;
            }
            shutdown.trigger();
        });
        bound.run().await;
        Ok(())
    })
}

fn parse_mode(s: &str) -> Result<InboundMode, String> {
    match s {
        "permissive" => Ok(InboundMode::Permissive),
        "strict" => Ok(InboundMode::Strict),
        other => Err(format!("{other:?}: expected permissive or strict")),
    }
}

fn parse_peer_id(s: &str) -> Result<PeerId, String> {
    s.parse().map(PeerId).map_err(|e| format!("{e}"))
}

fn parse_policy(s: &str) -> Result<PolicyConfig, String> {
    s.parse().map(PolicyConfig).map_err(|e| format!("{e}"))
}

fn apply_flags(config: &mut Config, args: &Args) -> anyhow::Result<()> {
    if let Some(dir) = &args.identity_dir {
        match &mut config.identity {
            Some(id) => id.dir = dir.clone(),
            None => config.identity = Some(IdentityConfig::new(dir.clone())),
        }
    }
    if let Some(mode) = args.inbound_mode {
        let id = config
            .identity
            .as_mut()
            .context("--inbound-mode needs an identity (--identity-dir or [identity] dir)")?;
        id.inbound_mode = mode;
    }
    if let Some(p) = &args.outbound_peer_id {
        config.outbound.peer_id = Some(p.clone());
    }
    if let Some(p) = &args.inbound_policy {
        config.inbound.policy = p.clone();
    }
    if let Some(a) = args.admin_listen {
        config.admin.listen = a;
    }
    if let Some(a) = args.outbound_listen {
        config.outbound.listen = Some(a);
    }
    if let Some(a) = &args.outbound_target {
        config.outbound.target = Some(a.clone());
    }
    if let Some(a) = args.inbound_listen {
        config.inbound.listen = Some(a);
    }
    if let Some(a) = args.inbound_target {
        config.inbound.target = Some(a);
    }
    Ok(())
}
