//! The proxy on IPv6 loopback: `[::1]` listeners, `[::1]` targets, and the loop guard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::{StatusCode, Version};
use mesh_proxy::config::Config;
use mesh_test::app::App;
use tokio::net::TcpListener;

const V6_ANY_PORT: &str = "[::1]:0";

/// The test config with every listener on `[::1]:0`.
fn v6_config(target: SocketAddr) -> Config {
    let mut cfg = config(target);
    let any: SocketAddr = V6_ANY_PORT.parse().unwrap();
    cfg.admin.listen = any;
    cfg.outbound.listen = Some(any);
    cfg.inbound.listen = Some(any);
    cfg
}

/// The hello app on `[::1]:0`.
async fn v6_app() -> App {
    App::serve(TcpListener::bind(V6_ANY_PORT).await.expect("bind [::1]:0"))
}

#[tokio::test]
async fn http1_and_http2_through_ipv6_listeners_to_an_ipv6_target() {
    let app = v6_app().await;
    assert!(app.addr().is_ipv6());
    let proxy = proxy(v6_config(app.addr())).await;
    for listener in [proxy.outbound, proxy.inbound] {
        assert!(
            listener.ip().is_loopback() && listener.is_ipv6(),
            "{listener}"
        );
        let res = h1(listener)
            .await
            .send_request(get(listener, "/", Version::HTTP_11))
            .await
            .expect("HTTP/1.1 response");
        assert_eq!(res.status(), StatusCode::OK, "HTTP/1.1 via {listener}");
        assert_eq!(body_bytes(res.into_body()).await, "hello from mesh\n");

        let res = h2(listener)
            .await
            .send_request(get(listener, "/", Version::HTTP_2))
            .await
            .expect("HTTP/2 response");
        assert_eq!(res.status(), StatusCode::OK, "HTTP/2 via {listener}");
        assert_eq!(body_bytes(res.into_body()).await, "hello from mesh\n");
    }
    let versions: Vec<Version> = app.seen().iter().map(|s| s.version).collect();
    assert_eq!(
        versions,
        [
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_11,
            Version::HTTP_2
        ],
        "every request reached the IPv6 app, in its own version"
    );
    // The bracketed authority of an IPv6 address passes the Host check untouched.
    assert_eq!(app.seen()[0].headers["host"], proxy.outbound.to_string());
}

#[tokio::test]
async fn loops_to_the_proxy_itself_are_refused_on_ipv6() {
    // As `tunnels.rs` does on 127.0.0.1: the inbound listener's target is the outbound
    // listener's own `[::1]` address.
    let l = TcpListener::bind(V6_ANY_PORT).await.expect("bind");
    let port_holder = l.local_addr().expect("addr");
    drop(l);
    let mut cfg = v6_config(port_holder);
    cfg.outbound.listen = Some(port_holder);
    cfg.outbound.target = Some("[::1]:9".parse::<SocketAddr>().unwrap().into());
    cfg.inbound.target = Some(port_holder);
    let proxy = proxy(cfg).await;
    assert_eq!(proxy.outbound, port_holder);
    let (text, closed) = raw(
        proxy.inbound,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed, "a looping connection is closed");
    assert!(text.is_empty(), "and never answered: {text}");
}

#[tokio::test]
async fn a_listener_targeting_itself_is_refused_on_ipv6() {
    // The target is the very address the client dialled.
    let l = TcpListener::bind(V6_ANY_PORT).await.expect("bind");
    let port_holder = l.local_addr().expect("addr");
    drop(l);
    let app = v6_app().await;
    let mut cfg = v6_config(app.addr());
    cfg.inbound.listen = Some(port_holder);
    cfg.inbound.target = Some(port_holder);
    let proxy = proxy(cfg).await;
    let (text, closed) = raw(
        proxy.inbound,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed, "a looping connection is closed");
    assert!(text.is_empty(), "and never answered: {text}");
    // The other listener, aimed at the app, still serves.
    let res = h1(proxy.outbound)
        .await
        .send_request(get(proxy.outbound, "/", Version::HTTP_11))
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.seen().len(), 1, "only the real request reached the app");
}
