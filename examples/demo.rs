//! A small mesh in one process: the hello application (HTTP/1.1, HTTP/2 and gRPC) behind two
//! sidecars that talk mTLS. The client's sidecar (outbound, port 4140) resolves `/#/demo/hello`
//! with a static namer (the hello sidecar's address and identity) and balances every request
//! over mesh TLS to the hello app's sidecar (inbound, port 4143, strict: mesh TLS only), which
//! verifies the client's workload identity and tells the app who called in `l5d-client-id`.
//! The identities are issued at start-up by a fresh CA into a temporary directory. It serves at
//! once, prints commands to try, and runs until Ctrl-C.
//!
//! ```text
//! cargo run --release --example demo
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use mesh_proxy::config::{Config, IdentityConfig, InboundMode, NamerConfig};
use mesh_proxy::{BoundProxy, Proxy};
use mesh_test::app::App;
use mesh_test::grpc::GreeterClient;
use mesh_tls::ca::Ca;

/// The demo's trust domain and workload identities.
const TRUST_DOMAIN: &str = "demo.mesh";
const CLIENT_ID: &str = "spiffe://demo.mesh/ns/demo/sa/client";
const HELLO_ID: &str = "spiffe://demo.mesh/ns/demo/sa/hello";

fn main() {
    // One line naming what was wrong (file, line, key, value for config errors); no
    // backtrace, whatever RUST_BACKTRACE says.
    if let Err(error) = run() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::INFO.into())
        .from_env_lossy();
    let telemetry = mesh_examples::init(filter)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let app = App::spawn().await;
        let dir = std::env::temp_dir().join(format!("mesh-demo-{}", std::process::id()));
        issue_identities(&dir)?;
        let telemetry_prometheus = telemetry.prometheus;

        // The hello app's sidecar: inbound only, mesh TLS only.
        let mut hello = demo_config("127.0.0.1:4192")?;
        hello.inbound.listen = Some("127.0.0.1:4143".parse()?);
        hello.inbound.target = Some(app.addr());
        hello.outbound.enabled = false;
        hello.identity = Some(IdentityConfig::new(dir.join("hello")));
        if let Some(id) = hello.identity.as_mut() {
            id.inbound_mode = InboundMode::Strict;
        }
        let hello = start(hello, telemetry_prometheus.clone(), None).await?;
        let inb = hello.inbound_addr().context("inbound listener disabled")?;

        // The client's sidecar: outbound to the hello sidecar, which must be HELLO_ID.
        let mut client = demo_config("127.0.0.1:4191")?;
        // Discovery names the hello sidecar and the identity it must present: a static namer,
        // so the demo's traffic also crosses a balancer (`/endpoints.json`).
        let services = [("hello".to_owned(), vec![format!("{inb} id={HELLO_ID}")])].into();
        client
            .namers
            .insert("demo".to_owned(), NamerConfig::Static { services });
        client.outbound.target = Some("/#/demo/hello".parse().map_err(anyhow::Error::msg)?);
        client.inbound.enabled = false;
        client.identity = Some(IdentityConfig::new(dir.join("client")));
        let client = start(client, telemetry_prometheus, Some(telemetry.log)).await?;
        let out = client
            .outbound_addr()
            .context("outbound listener disabled")?;
        let (admin_client, admin_hello) = (client.admin_addr(), hello.admin_addr());

        // Ctrl-C (or POST /shutdown on either admin port) stops both.
        let (stop_client, stop_hello) = (client.shutdown_handle(), hello.shutdown_handle());
        tokio::spawn(async move {
            tokio::select! {
                _ = mesh_proxy::signal() => {}
                () = stop_client.triggered() => {}
                () = stop_hello.triggered() => {}
            }
            stop_client.trigger();
            stop_hello.trigger();
        });
        let runs = [tokio::spawn(client.run()), tokio::spawn(hello.run())];

        let mut grpc = GreeterClient::connect(out).await?;
        let reply = grpc.say_hello("demo").await?;
        let app_addr = app.addr();
        let ids = dir.display();
        let mesh_name = "hello.demo.serviceaccount.identity.demo.mesh";
        println!(
            r#"
mesh demo is running: the hello app on {app_addr}, two sidecars in front of it talking mTLS.
  client sidecar: outbound {out} (identity {CLIENT_ID}), admin {admin_client}
  hello sidecar:  inbound {inb} (identity {HELLO_ID}, strict: mesh TLS only), admin {admin_hello}
  identities (from a CA made at start-up): {ids}
gRPC through both sidecars just answered: "{msg}"

Try:
  curl -s http://{out}/headers                           # the app saw l5d-client-id: {CLIENT_ID}
  curl -i --http2-prior-knowledge http://{out}/          # HTTP/2 stays HTTP/2 across the mTLS hop
  curl -i -X POST --data-binary 'echo me' http://{out}/echo
  curl -i http://{out}/status/503                        # the app's own 503 passes through
  curl -s --cert {ids}/client/cert.pem --key {ids}/client/key.pem --cacert {ids}/client/ca.pem \
      --resolve {mesh_name}:{port}:127.0.0.1 https://{mesh_name}:{port}/headers
                                                         # mTLS straight to the hello sidecar
  curl -sS http://{inb}/                                 # plaintext: refused (strict)
  printf '\x00\x00\x00\x00\x06\x0a\x04mesh' | curl -s --http2-prior-knowledge \
      -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- \
      http://{out}/hello.Greeter/SayHello | od -c        # raw gRPC call
  curl -s http://{admin_hello}/metrics | grep -E '^mesh_(request|authz|identity)'
                                                         # metrics with tls="true" and peer_id
  curl -s http://{admin_client}/endpoints.json           # the balancer over /#/demo/hello
  curl -s http://{admin_client}/config.json              # the effective config
  curl -s -X PUT -d debug http://{admin_client}/log-level   # change the log level
  curl -s -X POST http://{admin_client}/shutdown         # graceful shutdown (or Ctrl-C)
"#,
            msg = reply.message,
            port = inb.port(),
        );
        for run in runs {
            run.await?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        anyhow::Ok(())
    })
}

/// A CA and the two workload identities, written under `dir`.
fn issue_identities(dir: &Path) -> anyhow::Result<()> {
    let day = Duration::from_secs(24 * 3600);
    let ca = Ca::new(TRUST_DOMAIN, day).context("creating the demo CA")?;
    for (name, id) in [("client", CLIENT_ID), ("hello", HELLO_ID)] {
        ca.issue(&id.parse()?, day)?
            .write(&dir.join(name))
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    Ok(())
}

/// Defaults for one demo sidecar with its admin server at `admin`.
fn demo_config(admin: &str) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.admin.listen = admin.parse()?;
    config.shutdown.grace = Duration::from_secs(5);
    Ok(config)
}

/// Reads and changes the process's log filter.
type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Validates, binds and returns one sidecar.
async fn start(
    config: Config,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    log: Option<LogHandle>,
) -> anyhow::Result<BoundProxy> {
    config.validate()?;
    let mut proxy = Proxy::new(config)
        .with_crypto_provider(mesh_examples::crypto_provider())
        .with_prometheus(prometheus);
    if let Some(log) = log {
        proxy = proxy.with_log_level(log);
    }
    proxy
        .bind()
        .await
        .context("is another mesh already running on these ports?")
}
