//! Dtab routing end to end (issue 16): a sidecar whose outbound router names each request by
//! its `Host` and delegates it through a dtab to a file namer's names — hello, world-v1,
//! world-v2 — each served by its own app.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use http::Version;
use mesh_proxy::config::Config;
use mesh_test::app::App;

fn tmp(name: &str) -> PathBuf {
    temp_dir(&format!("routing-{name}"))
}

fn write(dir: &Path, name: &str, text: &str) {
    write_atomic(dir, name, text);
}

/// Three services, each one app, named in a file namer's directory.
struct Mesh {
    dir: PathBuf,
    hello: App,
    v1: App,
    v2: App,
}

impl Mesh {
    async fn new(name: &str) -> Self {
        let dir = tmp(name);
        let (hello, v1, v2) = (App::spawn().await, App::spawn().await, App::spawn().await);
        write(&dir, "hello", &format!("{}\n", hello.addr()));
        write(&dir, "world-v1", &format!("{}\n", v1.addr()));
        write(&dir, "world-v2", &format!("{}\n", v2.addr()));
        Self { dir, hello, v1, v2 }
    }

    /// A sidecar config routing by `Host` with `dtab`, plus `extra` TOML for the router.
    fn config(&self, dtab: &str, extra: &str) -> Config {
        let text = routed_toml("default")
            + &format!(
                r#"[namers.fs]
kind = "file"
dir = {dir:?}
[routers.default]
identifier = {{ kind = "host", prefix = "/svc" }}
dtab = """
{dtab}
"""
{extra}
"#,
                dir = self.dir.display().to_string()
            );
        Config::from_toml("routing.toml", &text).expect("config")
    }

    /// Which app saw how many requests: (hello, v1, v2).
    fn counts(&self) -> (usize, usize, usize) {
        (
            self.hello.seen().len(),
            self.v1.seen().len(),
            self.v2.seen().len(),
        )
    }
}

const DTAB: &str = "/svc => /#/fs;\n/svc/world => /svc/world-v1;";

async fn send(
    c: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut b = http::Request::get("/headers").header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let res = c
        .send_request(b.body(empty()).unwrap())
        .await
        .expect("response");
    let status = res.status().as_u16();
    let err = proxy_error(&res);
    let _ = body_bytes(res.into_body()).await;
    (status, err)
}

#[tokio::test]
async fn host_routes_through_the_dtab_and_l5d_dtab_overrides_it() {
    let mesh = Mesh::new("host").await;
    let p = proxy(mesh.config(DTAB, "")).await;
    let mut c = h1(p.outbound).await;

    assert_eq!(send(&mut c, "hello", &[]).await.0, 200);
    assert_eq!(mesh.counts(), (1, 0, 0));
    assert_eq!(send(&mut c, "world:8080", &[]).await.0, 200);
    assert_eq!(mesh.counts(), (1, 1, 0));

    // A trusted (loopback) client overrides routing for one request.
    let over = [("l5d-dtab", "/svc/world => /svc/world-v2")];
    assert_eq!(send(&mut c, "world", &over).await.0, 200);
    assert_eq!(mesh.counts(), (1, 1, 1));
    // ... and the next hop sees the local dtab as l5d-ctx-dtab, not l5d-dtab.
    let seen = mesh.v2.seen().pop().expect("v2 saw it");
    assert_eq!(
        seen.headers
            .get("l5d-ctx-dtab")
            .and_then(|v| v.to_str().ok()),
        Some("/svc/world=>/svc/world-v2")
    );
    assert!(seen.headers.get("l5d-dtab").is_none());
    // An incoming l5d-ctx-dtab is honoured like l5d-dtab.
    let ctx = [("l5d-ctx-dtab", "/svc/world => /svc/world-v2")];
    assert_eq!(send(&mut c, "world", &ctx).await.0, 200);
    assert_eq!(mesh.counts(), (1, 1, 2));
    // Without the header, back to v1 on the same connection.
    assert_eq!(send(&mut c, "world", &[]).await.0, 200);
    assert_eq!(mesh.counts(), (1, 2, 2));

    // A bad override is named, not ignored.
    let (status, err) = send(&mut c, "world", &[("l5d-dtab", "/svc =>")]).await;
    assert_eq!(status, 400);
    assert!(err.contains("invalid l5d-dtab header"), "{err}");
    p.assert_no_panics();
}

#[tokio::test]
async fn untrusted_clients_cannot_override_routing() {
    let mesh = Mesh::new("untrusted").await;
    // Only mesh peers are trusted: the loopback test client is not.
    let p = proxy(mesh.config(DTAB, "trusted_sources = [\"mesh\"]")).await;
    let mut c = h1(p.outbound).await;
    let over = [
        ("l5d-dtab", "/svc/world => /svc/world-v2"),
        ("l5d-ctx-dtab", "/svc/world => /svc/world-v2"),
    ];
    assert_eq!(send(&mut c, "world", &over).await.0, 200);
    assert_eq!(mesh.counts(), (0, 1, 0));
    let seen = mesh.v1.seen().pop().expect("v1 saw it");
    assert!(seen.headers.get("l5d-dtab").is_none());
    assert!(seen.headers.get("l5d-ctx-dtab").is_none());
}

#[tokio::test]
async fn names_that_bind_to_nothing_are_answered_clearly() {
    let mesh = Mesh::new("noroute").await;
    let dtab = "/svc => /#/fs; /svc/bad => /$/nope/x; /svc/gone => !; /svc/none => $";
    let p = proxy_with_metrics(mesh.config(dtab, "")).await;
    let mut c = h1(p.outbound).await;

    // A file that does not exist: no route, 404, naming the path.
    let (status, err) = send(&mut c, "nosuch", &[]).await;
    assert_eq!(status, 404);
    assert!(err.contains("no route to /svc/nosuch"), "{err}");
    // A dtab nobody can bind at all (no dentry matches): 404.
    let (status, err) = send(&mut c, "bad", &[]).await;
    assert_eq!(status, 502, "{err}");
    assert!(err.contains("/$/nope"), "{err}");
    let (status, err) = send(&mut c, "gone", &[]).await;
    assert_eq!((status, err.contains("failure")), (404, true), "{err}");
    let (status, err) = send(&mut c, "none", &[]).await;
    assert_eq!((status, err.contains("empty")), (404, true), "{err}");
    // An IP literal names no service.
    let (status, err) = send(&mut c, "127.0.0.1:4140", &[]).await;
    assert_eq!(status, 400);
    assert!(err.contains("IP address"), "{err}");
    // The connection survived every one of them.
    assert_eq!(send(&mut c, "hello", &[]).await.0, 200);

    // dst is the logical name for names that bind, `unknown` for the others.
    let text = scrape(p.admin).await;
    assert!(
        sample(&text, "mesh_request_total", &["dst=\"/svc/hello\""]).is_some(),
        "{text}"
    );
    assert!(sample(&text, "mesh_request_total", &["dst=\"unknown\""]).is_some());
    assert!(sample(&text, "mesh_request_total", &["dst=\"/svc/nosuch\""]).is_none());
}

#[tokio::test]
async fn a_weighted_union_splits_traffic() {
    let mesh = Mesh::new("split").await;
    let dtab = "/svc => /#/fs; /svc/world => 0.9 * /svc/world-v1 & 0.1 * /svc/world-v2";
    let p = proxy(mesh.config(dtab, "")).await;
    let mut c = h1(p.outbound).await;
    for _ in 0..1000 {
        assert_eq!(send(&mut c, "world", &[]).await.0, 200);
    }
    let (_, v1, v2) = mesh.counts();
    assert_eq!(v1 + v2, 1000);
    assert!((860..=940).contains(&v1), "v1 got {v1} of 1000, v2 {v2}");
}

#[tokio::test]
async fn an_alternation_falls_back_when_its_first_name_is_empty() {
    let mesh = Mesh::new("fallback").await;
    let dtab = "/svc => /#/fs; /svc/world => /svc/world-v2 | /svc/world-v1";
    let p = proxy(mesh.config(dtab, "")).await;
    let mut c = h1(p.outbound).await;
    assert_eq!(send(&mut c, "world", &[]).await.0, 200);
    assert_eq!(mesh.counts(), (0, 0, 1));
    // world-v2 loses its endpoints: traffic falls back to world-v1 once the namer sees it.
    write(&mesh.dir, "world-v2", "");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let before = mesh.counts().1;
        assert_eq!(send(&mut c, "world", &[]).await.0, 200);
        if mesh.counts().1 > before {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never fell back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it comes back when the endpoints do.
    write(&mesh.dir, "world-v2", &format!("{}\n", mesh.v2.addr()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let before = mesh.counts().2;
        assert_eq!(send(&mut c, "world", &[]).await.0, 200);
        if mesh.counts().2 > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never returned to v2"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn http2_streams_route_by_their_own_authority() {
    let mesh = Mesh::new("h2").await;
    let p = proxy(mesh.config(DTAB, "")).await;
    let c = h2(p.outbound).await;
    let mut calls = Vec::new();
    for i in 0..20 {
        let host = if i % 2 == 0 { "hello" } else { "world" };
        let req = http::Request::get(format!("http://{host}/"))
            .version(Version::HTTP_2)
            .body(empty())
            .unwrap();
        let mut c = c.clone();
        calls.push(tokio::spawn(async move {
            c.send_request(req).await.expect("response").status()
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    assert_eq!(mesh.counts(), (10, 10, 0));
}

#[tokio::test]
async fn a_reloaded_dtab_changes_routing_on_an_open_connection() {
    let mesh = Mesh::new("reload").await;
    let file = |dtab: &str| {
        let cfg = mesh.config(dtab, "");
        // The same text the config was made from, so the file round-trips.
        toml::to_string(&cfg).expect("toml")
    };
    let path = mesh.dir.join("sidecar.toml");
    std::fs::write(&path, file(DTAB)).expect("write config");
    let cfg = Config::from_file(&path).expect("loads");
    let p = proxy_with(mesh_proxy::Proxy::new(cfg).with_config_file(&path)).await;
    let mut c = h1(p.outbound).await;
    assert_eq!(send(&mut c, "world", &[]).await.0, 200);
    assert_eq!(mesh.counts(), (0, 1, 0));
    let dtabs = admin_get(p.admin, "/dtabs").await;
    assert!(
        dtabs.contains("/svc=>/#/fs;/svc/world=>/svc/world-v1"),
        "{dtabs}"
    );

    // A new dtab in the file: the same keep-alive connection is routed by it.
    write(
        path.parent().unwrap(),
        "sidecar.toml",
        &file("/svc => /#/fs; /svc/world => /svc/world-v2"),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(send(&mut c, "world", &[]).await.0, 200);
        if mesh.counts().2 > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload never took effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dtabs = admin_get(p.admin, "/dtabs").await;
    assert!(dtabs.contains("/svc/world=>/svc/world-v2"), "{dtabs}");

    // An invalid dtab keeps the one in force.
    let broken = file(DTAB).replace("/svc/world=>/svc/world-v1", "/svc/world=>(");
    assert!(broken.contains("=>("), "{broken}");
    write(path.parent().unwrap(), "sidecar.toml", &broken);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = mesh.counts().2;
    assert_eq!(send(&mut c, "world", &[]).await.0, 200);
    assert_eq!(
        mesh.counts().2,
        before + 1,
        "still routed by the last valid dtab"
    );
    p.assert_no_panics();
}

#[tokio::test]
async fn the_delegator_explains_a_binding() {
    let mesh = Mesh::new("delegator").await;
    let p = proxy(mesh.config(DTAB, "")).await;
    let json = admin_get(p.admin, "/delegator.json?path=/svc/world").await;
    let v: serde_json::Value = serde_json::from_str(&json).expect(&json);
    assert_eq!(v["path"], "/svc/world");
    assert!(json.contains("/#/fs/world-v1"), "{json}");
    assert!(json.contains("\"endpoints\": 1"), "{json}");
    // An extra dtab from the query, as l5d-dtab would add.
    let json = admin_get(
        p.admin,
        "/delegator.json?path=/svc/world&dtab=%2Fsvc%2Fworld%3D%3E%2Fsvc%2Fworld-v2",
    )
    .await;
    assert!(json.contains("/#/fs/world-v2"), "{json}");
    // A name the namer says does not exist is shown as such.
    let json = admin_get(p.admin, "/delegator.json?path=/svc/nosuch").await;
    assert!(json.contains("\"state\": \"missing\""), "{json}");
    let bad = admin_get(p.admin, "/delegator.json?path=svc").await;
    assert!(bad.contains("invalid path"), "{bad}");
    let missing = admin_get(p.admin, "/delegator.json").await;
    assert!(missing.contains("missing parameter: path"), "{missing}");
}

async fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut c = h1(admin).await;
    let res = c
        .send_request(
            http::Request::get(path)
                .header("host", admin.to_string())
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("admin response");
    String::from_utf8(body_bytes(res.into_body()).await.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn nested_union_weights_do_not_multiply() {
    let mesh = Mesh::new("nested").await;
    // Each leaf takes the weight of its innermost union: v1 1, v2 3, hello 1 (20/60/20), not
    // the 12.5/37.5/50 a two-level pick would give.
    let dtab = "/svc => /#/fs; /svc/world => (1 * /svc/world-v1 & 3 * /svc/world-v2) & /svc/hello";
    let p = proxy(mesh.config(dtab, "")).await;
    let mut c = h1(p.outbound).await;
    for _ in 0..1000 {
        assert_eq!(send(&mut c, "world", &[]).await.0, 200);
    }
    let (hello, v1, v2) = mesh.counts();
    assert!((160..=240).contains(&v1), "v1 {v1}, v2 {v2}, hello {hello}");
    assert!((560..=640).contains(&v2), "v1 {v1}, v2 {v2}, hello {hello}");
    assert!(
        (160..=240).contains(&hello),
        "v1 {v1}, v2 {v2}, hello {hello}"
    );
}

#[tokio::test]
async fn inet_binds_literal_addresses_and_a_bare_port_is_localhost() {
    let mesh = Mesh::new("inet").await;
    let (v1, v2) = (mesh.v1.addr(), mesh.v2.addr());
    let dtab = format!(
        "/svc/one => /$/inet/{}/{}; /svc/two => /$/inet/{}; /svc/bad => /$/inet/127.0.0.1/http",
        v1.ip(),
        v1.port(),
        v2.port()
    );
    let p = proxy(mesh.config(&dtab, "")).await;
    let mut c = h1(p.outbound).await;
    assert_eq!(send(&mut c, "one", &[]).await.0, 200);
    assert_eq!(send(&mut c, "two", &[]).await.0, 200);
    assert_eq!(mesh.counts(), (0, 1, 1));
    // A non-numeric port is a binding error, not a negative name.
    let (status, err) = send(&mut c, "bad", &[]).await;
    assert_eq!(status, 502, "{err}");
}

#[tokio::test]
async fn inbound_passes_routing_context_only_from_trusted_peers() {
    let app = App::spawn().await;
    let ctx = ("l5d-ctx-dtab", "/svc/world=>/svc/world-v2");
    for (trusted, expect) in [("[\"loopback\"]", true), ("[\"mesh\"]", false)] {
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nenabled = false\n[inbound]\nlisten = \"127.0.0.1:0\"\ntarget = \"{}\"\ntrusted_sources = {trusted}\n",
            app.addr()
        );
        let cfg = Config::from_toml("inbound.toml", &text).expect("config");
        let panics = PanicCheck::new();
        let bound = mesh_proxy::Proxy::new(cfg).bind().await.expect("bind");
        let inbound = bound.inbound_addr().expect("inbound");
        let task = tokio::spawn(bound.run());
        let mut c = h1(inbound).await;
        assert_eq!(
            send(&mut c, "app", &[ctx, ("l5d-dtab", "/a=>/b")]).await.0,
            200
        );
        let seen = app.seen().pop().expect("app saw it");
        assert_eq!(
            seen.headers.get("l5d-ctx-dtab").is_some(),
            expect,
            "trusted_sources = {trusted}"
        );
        if !expect {
            assert!(seen.headers.get("l5d-dtab").is_none());
        }
        task.abort();
        panics.assert_no_panics();
    }
}
