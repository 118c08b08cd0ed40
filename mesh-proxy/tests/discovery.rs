//! The outbound side over bound names (issue 15): `outbound.target = "/#/NAMER/NAME"` sends
//! requests to a balancer over the endpoints a file or static namer names; edits are
//! followed, a failing endpoint is ejected, a name with no endpoints fails fast and a name
//! that does not exist is answered at once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use http::Version;
use mesh_proxy::config::{Config, NamerConfig};
use mesh_test::app::App;

fn tmp(name: &str) -> PathBuf {
    temp_dir(&format!("discovery-{name}"))
}

fn write(dir: &Path, name: &str, text: &str) {
    write_atomic(dir, name, text);
}

fn named(
    target: &str,
    namers: BTreeMap<String, NamerConfig>,
    tune: impl FnOnce(&mut Config),
) -> Config {
    let mut cfg = config(closed_port());
    cfg.outbound.target = Some(target.parse().expect("target"));
    cfg.namers = namers;
    tune(&mut cfg);
    cfg.validate().expect("valid config");
    cfg
}

fn file_namer(dir: &Path) -> BTreeMap<String, NamerConfig> {
    let text = format!(
        "[namers.fs]\nkind = \"file\"\ndir = {:?}\n",
        dir.display().to_string()
    );
    Config::from_toml("t.toml", &text)
        .expect("namer config")
        .namers
}

async fn status(proxy: SocketAddr) -> (u16, String) {
    let mut c = h1(proxy).await;
    let res = c
        .send_request(get(proxy, "/", Version::HTTP_11))
        .await
        .expect("response");
    (res.status().as_u16(), proxy_error(&res))
}

#[tokio::test]
async fn a_file_namer_spreads_requests_and_follows_edits() {
    let dir = tmp("file");
    let (a, b) = (App::spawn().await, App::spawn().await);
    write(
        &dir,
        "hello",
        &format!(
            "# two replicas\n{}\n{} weight=2 zone=b\n",
            a.addr(),
            b.addr()
        ),
    );
    let proxy = proxy_with_metrics(named("/#/fs/hello", file_namer(&dir), |_| {})).await;

    // Concurrent clients: P2C weighs each endpoint's latency by its requests in flight, so
    // both take a share. (A lone sequential client goes to whichever answers fastest.)
    let mut clients = Vec::new();
    for _ in 0..8 {
        let out = proxy.outbound;
        clients.push(tokio::spawn(async move {
            for _ in 0..15 {
                assert_eq!(status(out).await.0, 200);
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    let (na, nb) = (a.seen().len(), b.seen().len());
    assert!(na > 5 && nb > 5, "both replicas served: {na} / {nb}");

    // /endpoints.json shows the destination and both endpoints with their details.
    let mut c = h1(proxy.admin).await;
    let res = c
        .send_request(get(proxy.admin, "/endpoints.json", Version::HTTP_11))
        .await
        .expect("endpoints.json");
    assert_eq!(res.status(), 200);
    let json: serde_json::Value =
        serde_json::from_slice(&body_bytes(res.into_body()).await).expect("json");
    let dst = &json["destinations"][0];
    assert_eq!(dst["dst"], "/#/fs/hello");
    let eps = dst["endpoints"].as_array().expect("endpoints");
    assert_eq!(eps.len(), 2, "{json}");
    assert!(
        eps.iter()
            .any(|e| e["weight"] == 2 && e["labels"]["zone"] == "b" && e["state"] == "ready"),
        "{json}"
    );

    // An edit: only b. Applied within a second (polled: 20 requests in a row miss a).
    write(&dir, "hello", &format!("{}\n", b.addr()));
    let edited = std::time::Instant::now();
    loop {
        let before = a.seen().len();
        for _ in 0..20 {
            assert_eq!(status(proxy.outbound).await.0, 200);
        }
        if a.seen().len() == before {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(2),
            "the edit was not applied"
        );
    }

    // A bad edit is ignored: the last good set stays. (Nothing observable changes, so this
    // waits out two polls of the namer.)
    write(&dir, "hello", "not-an-address\n");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(status(proxy.outbound).await.0, 200);

    // The file removed: the name does not exist, answered at once.
    std::fs::remove_file(dir.join("hello")).expect("rm");
    eventually_503(proxy.outbound).await;
    let started = std::time::Instant::now();
    let (code, why) = status(proxy.outbound).await;
    assert_eq!(code, 503, "{why}");
    assert!(
        why.contains("/#/fs/hello") && why.contains("no such name"),
        "{why}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no fail-fast wait"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_dead_endpoint_is_ejected_and_an_empty_name_fails_fast() {
    let good = App::spawn().await;
    let services: BTreeMap<String, Vec<String>> = [
        (
            "mixed".to_owned(),
            vec![good.addr().to_string(), closed_port().to_string()],
        ),
        ("empty".to_owned(), vec![]),
    ]
    .into();
    let namers: BTreeMap<String, NamerConfig> =
        [("st".to_owned(), NamerConfig::Static { services })].into();
    let proxy = proxy(named("/#/st/mixed", namers.clone(), |_| {})).await;
    // The dead endpoint fails its first requests (connect refused), then is ejected.
    let mut failures = 0;
    for _ in 0..100 {
        if status(proxy.outbound).await.0 != 200 {
            failures += 1;
        }
    }
    assert!(
        failures <= 5,
        "at most the failures that eject it: {failures}"
    );
    for _ in 0..50 {
        assert_eq!(
            status(proxy.outbound).await.0,
            200,
            "all on the good endpoint once ejected"
        );
    }

    let empty = proxy_with(mesh_proxy::Proxy::new(named(
        "/#/st/empty",
        namers,
        |cfg| {
            cfg.balancer.fail_fast_timeout = Duration::from_millis(300);
        },
    )))
    .await;
    let started = std::time::Instant::now();
    let (code, why) = status(empty.outbound).await;
    let waited = started.elapsed();
    assert_eq!(code, 503);
    assert!(
        why.contains("/#/st/empty") && why.contains("no endpoints"),
        "{why}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn opaque_tcp_goes_to_an_endpoint_of_the_name() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let echo = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let services: BTreeMap<String, Vec<String>> =
        [("echo".to_owned(), vec![echo.to_string()])].into();
    let namers: BTreeMap<String, NamerConfig> =
        [("st".to_owned(), NamerConfig::Static { services })].into();
    let proxy = proxy(named("/#/st/echo", namers, |_| {})).await;
    let mut s = tokio::net::TcpStream::connect(proxy.outbound)
        .await
        .expect("connect");
    let bytes = b"\x00\x01opaque\x7f";
    s.write_all(bytes).await.expect("write");
    let mut back = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(&back, bytes);
}

#[test]
fn bad_namer_configs_are_refused_naming_what_is_wrong() {
    for (text, want) in [
        (
            "[outbound]\ntarget = \"/#/nope/x\"\n",
            "no [namers.nope] section",
        ),
        ("[outbound]\ntarget = \"/svc/x\"\n", "neither an address"),
        (
            "[namers.st]\nkind = \"static\"\nservices.hello = [\"127.0.0.1:1 weight=0\"]\n",
            "hello",
        ),
        (
            "[namers.x]\nkind = \"dns-over-carrier-pigeon\"\n",
            "unknown variant",
        ),
        ("[balancer]\nfailures = 0\n", "at least 1"),
        (
            "[namers.dns]\nkind = \"dns\"\nmin_ttl = \"10s\"\nmax_ttl = \"1s\"\n",
            "max_ttl must not be below min_ttl",
        ),
        (
            "[namers.dns]\nkind = \"dns-srv\"\nnameserver = \"nope\"\n",
            "invalid socket address syntax",
        ),
    ] {
        let err = Config::from_toml("t.toml", text).expect_err(text);
        assert!(err.to_string().contains(want), "{text}: {err}");
    }
}

/// Polls until the proxy answers 503 (within 2 s).
async fn eventually_503(proxy: SocketAddr) {
    let started = std::time::Instant::now();
    while status(proxy).await.0 != 503 {
        assert!(started.elapsed() < Duration::from_secs(2), "still served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
