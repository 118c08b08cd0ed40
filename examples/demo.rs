//! A small mesh in one process: the hello application (HTTP/1.1, HTTP/2 and gRPC) with a
//! sidecar in front of it. It serves at once, prints commands to try, and runs until Ctrl-C.
//!
//! ```text
//! cargo run --release --example demo
//! ```

use anyhow::Context as _;
use mesh_proxy::Proxy;
use mesh_proxy::config::Config;
use mesh_test::app::App;
use mesh_test::grpc::GreeterClient;

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
        let mut config = Config::default();
        config.outbound.target = Some(app.addr());
        config.inbound.target = Some(app.addr());
        // The demo's inbound side stays on loopback.
        config.inbound.listen = Some("127.0.0.1:4143".parse()?);
        config.shutdown.grace = std::time::Duration::from_secs(5);
        config.validate()?;

        let proxy = Proxy::new(config)
            .with_prometheus(telemetry.prometheus)
            .with_log_level(telemetry.log);
        let shutdown = proxy.shutdown_handle();
        let bound = proxy
            .bind()
            .await
            .context("is another mesh already running on these ports?")?;
        let out = bound
            .outbound_addr()
            .context("outbound listener disabled")?;
        let inb = bound.inbound_addr().context("inbound listener disabled")?;
        let admin = bound.admin_addr();
        tokio::spawn(async move {
            if mesh_proxy::signal().await.is_ok() {
                shutdown.trigger();
            }
        });
        let run = tokio::spawn(bound.run());

        let mut client = GreeterClient::connect(out).await?;
        let reply = client.say_hello("demo").await?;
        let app_addr = app.addr();
        println!(
            r#"
mesh demo is running: the hello app on {app_addr}, its sidecar in front of it.
  outbound {out}   inbound {inb}   admin {admin}
gRPC through the sidecar just answered: "{msg}"

Try:
  curl -i http://{out}/                                  # HTTP/1.1 through the outbound side
  curl -i --http2-prior-knowledge http://{inb}/          # HTTP/2 through the inbound side
  curl -i -X POST --data-binary 'echo me' http://{out}/echo
  curl -i http://{out}/status/503                        # the app's own 503 passes through
  printf '\x00\x00\x00\x00\x06\x0a\x04mesh' | curl -s --http2-prior-knowledge \
      -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- \
      http://{out}/hello.Greeter/SayHello | od -c        # raw gRPC call
  curl -s http://{admin}/metrics | grep ^mesh_           # golden metrics
  curl -s http://{admin}/config.json                     # the effective config
  curl -s -X PUT -d debug http://{admin}/log-level       # change the log level
  curl -s -X POST http://{admin}/shutdown                # graceful shutdown (or Ctrl-C)
"#,
            msg = reply.message
        );
        run.await?;
        anyhow::Ok(())
    })
}
