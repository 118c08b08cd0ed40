//! gRPC through the proxy with a tonic client and the hello.Greeter server: unary and
//! server-streaming calls, error statuses, and the proxy's own failures as gRPC statuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use mesh_test::grpc::GreeterClient;
use tonic::Code;

#[tokio::test]
async fn unary_and_streaming_through_both_listeners() {
    let (app, proxy) = app_and_proxy().await;
    for addr in [proxy.outbound, proxy.inbound] {
        let mut client = GreeterClient::connect(addr).await.expect("connect");
        let reply = client.say_hello("mesh").await.expect("unary");
        assert_eq!(reply.message, "hello, mesh");
        let replies = client.say_hello_stream("mesh", 50).await.expect("stream");
        assert_eq!(replies.len(), 50);
        assert_eq!(replies[49].message, "hello 49, mesh");
    }
    let seen = app.seen();
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_2));
    assert!(
        seen.iter().all(|s| s.headers["te"] == "trailers"),
        "gRPC's te: trailers must arrive"
    );
}

#[tokio::test]
async fn error_statuses_arrive_intact() {
    let (_app, proxy) = app_and_proxy().await;
    let mut client = GreeterClient::connect(proxy.outbound)
        .await
        .expect("connect");
    let err = client.say_hello("").await.expect_err("invalid argument");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "name must not be empty");
    let err = client
        .say_hello("fail:no such greeter")
        .await
        .expect_err("not found");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such greeter");
    let err = client
        .say_hello_stream("fail:gone", 3)
        .await
        .expect_err("stream error");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "gone");
}

#[tokio::test]
async fn proxy_failures_become_grpc_unavailable() {
    let dead = closed_port();
    let proxy = proxy(config(dead)).await;
    let mut client = GreeterClient::connect(proxy.outbound)
        .await
        .expect("connect to the proxy");
    let err = client
        .say_hello("mesh")
        .await
        .expect_err("upstream is down");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains(&dead.to_string()),
        "{}",
        err.message()
    );
    assert!(err.metadata().get("l5d-proxy-error").is_some());
}
