//! A small mesh in one process that shows dtab routing: three services — hello, world-v1 and
//! world-v2, each an app behind its own sidecar (strict: mesh TLS only) — and a client
//! sidecar whose router names every request by its `Host` (`/svc/<host>`) and delegates the
//! name through a dtab to a file namer's names. `Host: world` goes to world-v1; an `l5d-dtab`
//! header overrides that for one request, or splits traffic by weight; `/delegator.json`
//! explains where a name goes and why. The client sidecar's configuration is a real file:
//! edit its dtab and the next request follows the new one, with no restart.
//!
//! The identities are issued at start-up by a fresh CA into a temporary directory. It serves
//! at once, prints commands to try, and runs until Ctrl-C.
//!
//! ```text
//! cargo run --release --example demo
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use mesh_proxy::config::{Config, IdentityConfig, InboundMode};
use mesh_proxy::{BoundProxy, Proxy};
use mesh_test::app::App;
use mesh_tls::ca::Ca;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The demo's trust domain.
const TRUST_DOMAIN: &str = "demo.mesh";

/// The services: name, inbound sidecar port, admin port.
const SERVICES: [(&str, u16, u16); 3] = [
    ("hello", 4143, 4192),
    ("world-v1", 4144, 4193),
    ("world-v2", 4145, 4194),
];

/// The client sidecar's dtab, as the file holds it.
const DTAB: &str = "/svc       => /#/fs;\n/svc/world => /svc/world-v1;";

fn main() {
    // One line naming what was wrong (file, line, key, value for config errors); no
    // backtrace, whatever RUST_BACKTRACE says.
    if let Err(error) = run() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn identity(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/demo/sa/{name}")
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
        let dir = std::env::temp_dir().join(format!("mesh-demo-{}", std::process::id()));
        issue_identities(&dir)?;
        let prometheus = telemetry.prometheus;

        // Each service: its app, and its sidecar (inbound only, mesh TLS only).
        let mut sidecars = Vec::new();
        let endpoints = dir.join("endpoints");
        std::fs::create_dir_all(&endpoints)?;
        for (name, port, admin) in SERVICES {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let app = App::serve_named(listener, name);
            let mut cfg = Config::default();
            cfg.admin.listen = SocketAddr::from(([127, 0, 0, 1], admin));
            cfg.shutdown.grace = Duration::from_secs(5);
            cfg.inbound.listen = Some(SocketAddr::from(([127, 0, 0, 1], port)));
            cfg.inbound.target = Some(app.addr());
            cfg.outbound.enabled = false;
            let mut id = IdentityConfig::new(dir.join(name));
            id.inbound_mode = InboundMode::Strict;
            cfg.identity = Some(id);
            sidecars.push(start(Proxy::new(checked(cfg)?), &prometheus).await?);
            // The file namer's entry: the sidecar's address and the identity it must show.
            std::fs::write(
                endpoints.join(name),
                format!("127.0.0.1:{port} id={}\n", identity(name)),
            )?;
        }

        // The client's sidecar, from a configuration file it keeps following.
        let file = dir.join("client.toml");
        std::fs::write(&file, client_config(&dir))?;
        let cfg = Config::from_file(&file)?;
        let proxy = Proxy::new(cfg)
            .with_config_file(&file)
            .with_log_level(telemetry.log);
        let client = start(proxy, &prometheus).await?;
        let out = client.outbound_addr().context("outbound listener disabled")?;
        let admin = client.admin_addr();

        // Ctrl-C (or POST /shutdown on any admin port) stops them all.
        let handles: Vec<_> = std::iter::once(&client)
            .chain(&sidecars)
            .map(BoundProxy::shutdown_handle)
            .collect();
        let any = std::sync::Arc::new(tokio::sync::Notify::new());
        for h in &handles {
            let (h, any) = (h.clone(), any.clone());
            tokio::spawn(async move {
                h.triggered().await;
                any.notify_one();
            });
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = mesh_proxy::signal() => {}
                () = any.notified() => {}
            }
            for h in &handles {
                h.trigger();
            }
        });
        let mut runs = vec![tokio::spawn(client.run())];
        runs.extend(sidecars.into_iter().map(|s| tokio::spawn(s.run())));

        let answer = get(out, "hello").await?;
        let ids = dir.display();
        let file = file.display();
        let mesh_name = "hello.demo.serviceaccount.identity.demo.mesh";
        println!(
            r#"
mesh demo is running: a client sidecar routing by dtab to three services over mTLS.
  client sidecar: outbound {out}, admin {admin}, config {file} (edit its dtab: applied live)
  services:       hello (sidecar 127.0.0.1:4143), world-v1 (:4144), world-v2 (:4145), each strict mTLS
  dtab:           /svc => /#/fs; /svc/world => /svc/world-v1   (file namer: {ids}/endpoints)
Through the mesh just now: Host: hello answered "{answer}"

Try:
  curl -s -H 'Host: hello' http://{out}/                 # hello from hello
  curl -s -H 'Host: world' http://{out}/                 # hello from world-v1 (the dtab's choice)
  curl -s -H 'Host: world' -H 'l5d-dtab: /svc/world => /svc/world-v2' http://{out}/
                                                         # hello from world-v2: a per-request override
  for i in $(seq 20); do curl -s -H 'Host: world' \
      -H 'l5d-dtab: /svc/world => 0.5 * /svc/world-v1 & 0.5 * /svc/world-v2' http://{out}/; done | sort | uniq -c
                                                         # a traffic split by weight
  curl -s -H 'Host: world' -H 'l5d-dtab: /svc/world => /#/fs/world-v3 | /svc/world-v2' http://{out}/
                                                         # an alternation falls back: no world-v3
  curl -si -H 'Host: nowhere' http://{out}/              # 404, l5d-proxy-error says why
  for i in $(seq 10); do curl -s -o /dev/null -w '%{{http_code}} %{{time_total}}s\n' \
      -H 'Host: world' -H 'x-chaos: on' http://{out}/; done   # injected faults: half 503, half delayed
  curl -si -H 'Host: world' http://{out}/status/503 | grep l5d-retry-count   # 503 after 2 retries
  curl -s -H 'Host: world' http://{out}/headers          # l5d-client-id: the client's mTLS identity
  curl -s --http2-prior-knowledge -H 'Host: hello' http://{out}/   # HTTP/2 routes the same way
  curl -s 'http://{admin}/delegator.json?path=/svc/world'          # why /svc/world goes where it goes
  curl -s http://{admin}/dtabs                           # the router's dtab in force
  cargo run --example meshctl -- dtab delegate --admin {admin} /svc/world
  curl -s --cert {ids}/client/cert.pem --key {ids}/client/key.pem --cacert {ids}/client/ca.pem \
      --resolve {mesh_name}:4143:127.0.0.1 https://{mesh_name}:4143/headers
                                                         # mTLS straight to the hello sidecar
  curl -s http://{admin}/metrics | grep '^mesh_request_total'      # requests by dst=/svc/<name>
  curl -s http://{admin}/endpoints.json                  # the balancers, one per bound name
  curl -s -X POST http://{admin}/shutdown                # graceful shutdown (or Ctrl-C)
"#,
        );
        for run in runs {
            run.await?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        anyhow::Ok(())
    })
}

/// The client sidecar's configuration file.
fn client_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"# The demo client's sidecar. Edit the dtab below: the next request follows it.
[admin]
listen = "127.0.0.1:4191"

[outbound]
listen = "127.0.0.1:4140"
router = "default"

[inbound]
enabled = false

[identity]
dir = "{d}/client"

[shutdown]
grace = "5s"

[namers.fs]
kind = "file"
dir = "{d}/endpoints"

[routers.default]
identifier = {{ kind = "host", prefix = "/svc" }}
dtab = """
{DTAB}
"""

# Resilience for /svc/world: a total timeout, retries within a budget, and chaos on demand.
[routers.default.service."/svc/world"]
timeout = "2s"
retries = {{ on = ["5xx", "connect-failure"], max_attempts = 3, report_count = true }}

[[routers.default.service."/svc/world".routes]]
match = {{ headers = {{ "x-chaos" = "on" }} }}
fault = {{ abort = {{ status = 503, percent = 50 }}, delay = {{ duration = "200ms", percent = 50 }} }}
"#
    )
}

/// A CA and every workload's identity, written under `dir`.
fn issue_identities(dir: &Path) -> anyhow::Result<()> {
    let day = Duration::from_secs(24 * 3600);
    let ca = Ca::new(TRUST_DOMAIN, day).context("creating the demo CA")?;
    let names = std::iter::once("client").chain(SERVICES.iter().map(|s| s.0));
    for name in names {
        ca.issue(&identity(name).parse()?, day)?
            .write(&dir.join(name))
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    Ok(())
}

/// Validated, or an error naming what is wrong.
fn checked(config: Config) -> anyhow::Result<Config> {
    config.validate()?;
    Ok(config)
}

/// Binds one sidecar.
async fn start(
    proxy: Proxy,
    prometheus: &metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<BoundProxy> {
    proxy
        .with_crypto_provider(mesh_examples::crypto_provider())
        .with_prometheus(prometheus.clone())
        .bind()
        .await
        .context("is another mesh already running on these ports?")
}

/// `GET /` with `Host: host` through `addr`: the body's first line.
async fn get(addr: SocketAddr, host: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .context("no answer through the mesh within 5 s")??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "through the mesh: {head}");
    Ok(body.lines().next().unwrap_or_default().to_owned())
}
