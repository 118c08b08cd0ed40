//! The test harness itself: the panic check fails a test whose spawned task panicked, the
//! raw response parser frames bodies the way HTTP/1 does, and the closed-port helper gives a
//! port that refuses connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test]
#[should_panic(expected = "a task panicked while this TestProxy was alive")]
async fn a_panic_in_a_spawned_task_fails_the_test() {
    let (_app, proxy) = app_and_proxy().await;
    let task = tokio::spawn(async { panic!("deliberate panic in a spawned task") });
    // tokio swallows it: only the JoinHandle knows.
    assert!(task.await.expect_err("the task panicked").is_panic());
    // Dropping the proxy at the end of the test runs the check.
    drop(proxy);
}

#[tokio::test]
#[should_panic(expected = "the test's own failure")]
async fn a_test_failing_by_itself_is_reported_once_with_its_own_message() {
    let (_app, _proxy) = app_and_proxy().await;
    // The check sees this panic on the test's thread, but the thread is already unwinding:
    // it stays silent instead of panicking again (which would abort the binary).
    panic!("the test's own failure");
}

#[tokio::test]
async fn moving_the_task_out_keeps_the_check() {
    let (_app, proxy) = app_and_proxy().await;
    proxy.shutdown.trigger();
    tokio::time::timeout(std::time::Duration::from_secs(5), proxy.task)
        .await
        .expect("run ends")
        .expect("join");
    // The partially moved proxy still checks when it goes out of scope.
    assert!(proxy.panics.panics().is_empty());
}

#[test]
fn parser_frames_content_length_chunked_interim_and_close_delimited_bodies() {
    let data = b"HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: t\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil close";
    let (all, used) = parse_responses(data);
    assert_eq!(used, data.len());
    let statuses: Vec<u16> = all.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [100, 200, 200, 204, 200]);
    assert_eq!(all[1].body, "hello");
    let a: Vec<_> = all[1].headers.get_all("x-a").iter().collect();
    assert_eq!(a, ["1", "2"]);
    assert_eq!(all[2].body, "abcde");
    assert_eq!(all[2].trailers["x-t"], "t");
    assert_eq!(all[4].version, "HTTP/1.0");
    assert_eq!(all[4].body, "until close");
    // Incomplete bodies are not responses yet.
    let (none, used) = parse_responses(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort");
    assert!(none.is_empty());
    assert_eq!(used, 0);
    let (none, _) =
        parse_responses(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab");
    assert!(none.is_empty());
    assert_eq!(response_status("garbage"), None);
}

#[tokio::test]
async fn closed_port_refuses_connections() {
    let addr = closed_port();
    assert!(addr.ip().is_loopback());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn the_client_hello_is_a_complete_tls_hello_to_the_detector() {
    let hello = tls13_client_hello("web.example", &[b"h2", b"http/1.1"]);
    match mesh_core::detect::classify(&hello) {
        mesh_core::detect::Classification::Done(mesh_core::detect::Protocol::Tls(h)) => {
            assert_eq!(h.server_name.as_deref(), Some("web.example"));
            assert_eq!(h.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        }
        other => panic!("not a complete ClientHello: {other:?}"),
    }
    // One byte short is not yet a hello.
    assert_eq!(
        mesh_core::detect::classify(&hello[..hello.len() - 1]),
        mesh_core::detect::Classification::NeedMore
    );
}
