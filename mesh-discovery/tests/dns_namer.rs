//! The DNS namers against a real DNS server: a tiny in-process authoritative responder on
//! 127.0.0.1 (UDP) whose records each test changes while the namer watches.
//!
//! Records carry a TTL of 1 s and the namer's floor is 1 s, so "a change shows up within
//! TTL + 1 s" is checked with a 2 s deadline.

#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record};
use mesh_core::resolve::Resolution;
use mesh_discovery::dns_namer::{DnsConfig, DnsKind, DnsNamer, DnsNamerError};
use mesh_discovery::namer::{BindError, Bound, Namer};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

/// Every record's TTL by default, and the negative TTL (SOA minimum).
const TTL: u32 = 1;

/// TTL + 1 s: how long a change may take to show up.
const CHANGE_DEADLINE: Duration = Duration::from_secs(2);

/// What the test server answers: records by lower-case name without the trailing dot. A
/// name present with no records exists (NODATA); an absent one is NXDOMAIN.
struct Zone {
    names: BTreeMap<String, Vec<RData>>,
    servfail: bool,
    /// The TTL of answers.
    ttl: u32,
}

/// The test DNS server.
struct Dns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Dns {
    async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = socket.local_addr().expect("addr");
        let zone = Arc::new(Mutex::new(Zone {
            names: BTreeMap::new(),
            servfail: false,
            ttl: TTL,
        }));
        let queries = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(socket, zone.clone(), queries.clone()));
        Self {
            addr,
            zone,
            queries,
            task,
        }
    }

    fn set(&self, name: &str, records: Vec<RData>) {
        self.zone
            .lock()
            .expect("zone")
            .names
            .insert(name.to_owned(), records);
    }

    fn remove(&self, name: &str) {
        self.zone.lock().expect("zone").names.remove(name);
    }

    fn servfail(&self, on: bool) {
        self.zone.lock().expect("zone").servfail = on;
    }

    fn ttl(&self, ttl: u32) {
        self.zone.lock().expect("zone").ttl = ttl;
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// Stops answering: the socket is closed.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Answers queries until aborted.
async fn serve(socket: UdpSocket, zone: Arc<Mutex<Zone>>, queries: Arc<AtomicUsize>) {
    let mut buf = vec![0; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        queries.fetch_add(1, Ordering::SeqCst);
        let response = answer(&zone.lock().expect("zone"), &request);
        let bytes = response.to_vec().expect("encode response");
        let _ = socket.send_to(&bytes, peer).await;
    }
}

fn answer(zone: &Zone, request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    response.add_query(query.clone());
    if zone.servfail {
        response.metadata.response_code = ResponseCode::ServFail;
        return response;
    }
    let key = query
        .name
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let soa = || {
        let origin = Name::from_ascii("example.").expect("name");
        Record::from_rdata(
            origin.clone(),
            TTL,
            RData::SOA(SOA::new(origin.clone(), origin, 1, 60, 60, 60, TTL)),
        )
    };
    match zone.names.get(&key) {
        None => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(soa());
        }
        Some(records) => {
            let matching: Vec<&RData> = records
                .iter()
                .filter(|r| r.record_type() == query.query_type)
                .collect();
            if matching.is_empty() {
                response.add_authority(soa());
            }
            for rdata in matching {
                response.add_answer(Record::from_rdata(
                    query.name.clone(),
                    zone.ttl,
                    rdata.clone(),
                ));
            }
        }
    }
    response
}

fn a(ip: [u8; 4]) -> RData {
    RData::A(A(Ipv4Addr::from(ip)))
}

fn aaaa(ip: Ipv6Addr) -> RData {
    RData::AAAA(AAAA(ip))
}

fn srv(priority: u16, weight: u16, port: u16, target: &str) -> RData {
    RData::SRV(SRV::new(
        priority,
        weight,
        port,
        Name::from_ascii(target).expect("target"),
    ))
}

fn config(kind: DnsKind, dns: &Dns) -> DnsConfig {
    let mut config = DnsConfig::new(kind);
    config.nameserver = Some(dns.addr);
    config.min_ttl = Duration::from_secs(1);
    config.max_ttl = Duration::from_secs(10);
    config.timeout = Duration::from_millis(200);
    config
}

fn namer(kind: DnsKind, dns: &Dns) -> DnsNamer {
    DnsNamer::new("dns".parse().expect("name"), config(kind, dns)).expect("namer")
}

/// The endpoints as (address, weight), sorted; `None` unless the name resolved to a set.
fn endpoints(resolution: &Resolution) -> Option<Vec<(String, u32)>> {
    resolution.endpoint_set().map(|set| {
        set.values()
            .map(|e| (e.addr().to_string(), e.weight().get()))
            .collect()
    })
}

fn pairs(list: &[(&str, u32)]) -> Option<Vec<(String, u32)>> {
    let mut list: Vec<(String, u32)> = list.iter().map(|(a, w)| ((*a).to_owned(), *w)).collect();
    list.sort();
    Some(list)
}

/// Waits, at most `within`, for the resolution to satisfy `want`; fails with the last value.
async fn wait_for(
    rx: &mut watch::Receiver<Resolution>,
    within: Duration,
    what: &str,
    want: impl FnMut(&Resolution) -> bool,
) {
    if timeout(within, rx.wait_for(want)).await.is_err() {
        panic!("{what}: not within {within:?}; last {:?}", *rx.borrow());
    }
}

/// Waits, at most `within`, for the endpoints to be `want`.
async fn wait_endpoints(
    rx: &mut watch::Receiver<Resolution>,
    within: Duration,
    want: Option<Vec<(String, u32)>>,
) {
    let what = format!("endpoints {want:?}");
    wait_for(rx, within, &what, |r| {
        let mut got = endpoints(r);
        if let Some(got) = got.as_mut() {
            got.sort();
        }
        got == want
    })
    .await;
}

/// Polls `cond` every 10 ms for at most `within`.
async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn bind(namer: &DnsNamer, path: &[&str]) -> Bound {
    namer.bind(path).expect("binds")
}

#[tokio::test]
async fn a_and_aaaa_records_resolve_with_the_port_and_follow_changes() {
    let dns = Dns::start().await;
    dns.set(
        "hello.example",
        vec![
            a([127, 0, 0, 1]),
            a([127, 0, 0, 2]),
            aaaa(Ipv6Addr::LOCALHOST),
        ],
    );
    let namer = namer(DnsKind::A, &dns);
    let mut bound = bind(&namer, &["hello.example", "8080", "v2", "x"]);
    assert_eq!(bound.id, "/#/dns/hello.example/8080");
    assert_eq!(bound.residual, ["v2", "x"]);

    wait_endpoints(
        &mut bound.resolution,
        Duration::from_secs(1),
        pairs(&[
            ("127.0.0.1:8080", 1),
            ("127.0.0.2:8080", 1),
            ("[::1]:8080", 1),
        ]),
    )
    .await;

    // Added.
    dns.set(
        "hello.example",
        vec![a([127, 0, 0, 1]), a([127, 0, 0, 2]), a([127, 0, 0, 3])],
    );
    wait_endpoints(
        &mut bound.resolution,
        CHANGE_DEADLINE,
        pairs(&[
            ("127.0.0.1:8080", 1),
            ("127.0.0.2:8080", 1),
            ("127.0.0.3:8080", 1),
        ]),
    )
    .await;
    // Removed.
    dns.set("hello.example", vec![a([127, 0, 0, 3])]);
    wait_endpoints(
        &mut bound.resolution,
        CHANGE_DEADLINE,
        pairs(&[("127.0.0.3:8080", 1)]),
    )
    .await;
    // Changed.
    dns.set("hello.example", vec![a([127, 0, 0, 9])]);
    wait_endpoints(
        &mut bound.resolution,
        CHANGE_DEADLINE,
        pairs(&[("127.0.0.9:8080", 1)]),
    )
    .await;
    // The name exists with no addresses (NODATA): an empty set, not "does not exist".
    dns.set("hello.example", vec![]);
    wait_endpoints(&mut bound.resolution, CHANGE_DEADLINE, Some(vec![])).await;

    // Five distinct sets were published (the first answer included).
    assert_eq!(namer.updates(), 5);
    assert_eq!(namer.errors(), 0);
}

#[tokio::test]
async fn ttls_are_clamped_to_the_floor_and_the_ceiling() {
    let dns = Dns::start().await;
    dns.set("hello.example", vec![a([127, 0, 0, 1])]);
    let mut cfg = config(DnsKind::A, &dns);
    cfg.max_ttl = Duration::from_secs(1);
    let namer = DnsNamer::new("dns".parse().expect("name"), cfg).expect("namer");

    // A day-long TTL is re-checked after the 1 s ceiling (no cache hides the change).
    dns.ttl(86_400);
    let mut bound = bind(&namer, &["hello.example", "80"]);
    wait_endpoints(
        &mut bound.resolution,
        Duration::from_secs(1),
        pairs(&[("127.0.0.1:80", 1)]),
    )
    .await;
    dns.set("hello.example", vec![a([127, 0, 0, 2])]);
    wait_endpoints(
        &mut bound.resolution,
        CHANGE_DEADLINE,
        pairs(&[("127.0.0.2:80", 1)]),
    )
    .await;

    // A TTL of 0 is refreshed no more than once per 1 s floor (A and AAAA: two queries
    // each), not in a loop.
    dns.ttl(0);
    let start = dns.queries();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let asked = dns.queries() - start;
    assert!(asked <= 8, "{asked} queries in 2.5 s with a 1 s floor");
}

#[tokio::test]
async fn nxdomain_is_answered_at_once_and_a_created_name_comes_to_life() {
    let dns = Dns::start().await;
    let namer = namer(DnsKind::A, &dns);
    let mut bound = bind(&namer, &["nope.example", "80"]);
    wait_for(
        &mut bound.resolution,
        Duration::from_millis(500),
        "does not exist",
        |r| matches!(r, Resolution::DoesNotExist(why) if why.contains("nope.example") && why.contains("NXDOMAIN")),
    )
    .await;
    assert_eq!(namer.errors(), 0, "NXDOMAIN is an answer, not an error");

    // Created: shows up within the negative TTL + 1 s.
    dns.set("nope.example", vec![a([127, 0, 0, 5])]);
    wait_endpoints(
        &mut bound.resolution,
        CHANGE_DEADLINE,
        pairs(&[("127.0.0.5:80", 1)]),
    )
    .await;
    // Deleted again.
    dns.remove("nope.example");
    wait_for(&mut bound.resolution, CHANGE_DEADLINE, "gone again", |r| {
        matches!(r, Resolution::DoesNotExist(_))
    })
    .await;
}

#[tokio::test]
async fn srv_records_give_ports_and_weights_of_the_lowest_priority() {
    let dns = Dns::start().await;
    dns.set(
        "_http._tcp.hello.example",
        vec![
            srv(10, 0, 8080, "a.hello.example."),
            srv(10, 5, 8081, "b.hello.example."),
            srv(20, 1, 9090, "c.hello.example."),
        ],
    );
    dns.set(
        "a.hello.example",
        vec![a([127, 0, 0, 1]), a([127, 0, 0, 2])],
    );
    dns.set("b.hello.example", vec![aaaa(Ipv6Addr::LOCALHOST)]);
    dns.set("c.hello.example", vec![a([127, 0, 0, 4])]);
    let namer = namer(DnsKind::Srv, &dns);
    let mut bound = bind(&namer, &["_http._tcp.hello.example", "rest"]);
    assert_eq!(bound.id, "/#/dns/_http._tcp.hello.example");
    assert_eq!(bound.residual, ["rest"]);

    // Weight 0 counts as 1; priority 20 is a fallback, not used while priority 10 resolves.
    wait_endpoints(
        &mut bound.resolution,
        Duration::from_secs(1),
        pairs(&[
            ("127.0.0.1:8080", 1),
            ("127.0.0.2:8080", 1),
            ("[::1]:8081", 5),
        ]),
    )
    .await;

    // Changed: a record's port and weight.
    dns.set(
        "_http._tcp.hello.example",
        vec![
            srv(10, 0, 8080, "a.hello.example."),
            srv(10, 7, 8082, "b.hello.example."),
            srv(20, 1, 9090, "c.hello.example."),
        ],
    );
    wait_endpoints(
        &mut bound.resolution,
        CHANGE_DEADLINE,
        pairs(&[
            ("127.0.0.1:8080", 1),
            ("127.0.0.2:8080", 1),
            ("[::1]:8082", 7),
        ]),
    )
    .await;

    // A target's address changed.
    dns.set("a.hello.example", vec![a([127, 0, 0, 3])]);
    wait_endpoints(
        &mut bound.resolution,
        CHANGE_DEADLINE,
        pairs(&[("127.0.0.3:8080", 1), ("[::1]:8082", 7)]),
    )
    .await;

    // Priority 10 removed: the fallback takes over.
    dns.set(
        "_http._tcp.hello.example",
        vec![srv(20, 1, 9090, "c.hello.example.")],
    );
    wait_endpoints(
        &mut bound.resolution,
        CHANGE_DEADLINE,
        pairs(&[("127.0.0.4:9090", 1)]),
    )
    .await;

    // Added.
    dns.set(
        "_http._tcp.hello.example",
        vec![
            srv(20, 1, 9090, "c.hello.example."),
            srv(20, 3, 9091, "a.hello.example."),
        ],
    );
    wait_endpoints(
        &mut bound.resolution,
        CHANGE_DEADLINE,
        pairs(&[("127.0.0.4:9090", 1), ("127.0.0.3:9091", 3)]),
    )
    .await;

    // No SRV name: does not exist.
    dns.remove("_http._tcp.hello.example");
    wait_for(&mut bound.resolution, CHANGE_DEADLINE, "gone", |r| {
        matches!(r, Resolution::DoesNotExist(_))
    })
    .await;
    assert_eq!(namer.errors(), 0);
}

#[tokio::test]
async fn servfail_and_a_dead_nameserver_keep_the_last_set_and_count_errors() {
    let dns = Dns::start().await;
    dns.set("hello.example", vec![a([127, 0, 0, 1])]);
    let namer = namer(DnsKind::A, &dns);
    let mut bound = bind(&namer, &["hello.example", "80"]);
    let want = pairs(&[("127.0.0.1:80", 1)]);
    wait_endpoints(&mut bound.resolution, Duration::from_secs(1), want.clone()).await;
    let updates = namer.updates();

    // SERVFAIL: counted, the set stays.
    dns.servfail(true);
    eventually(CHANGE_DEADLINE, "a SERVFAIL counted", || {
        namer.errors() >= 1
    })
    .await;
    assert_eq!(endpoints(&bound.resolution.borrow()), want);

    // Recovers, and follows changes again.
    dns.servfail(false);
    dns.set("hello.example", vec![a([127, 0, 0, 2])]);
    wait_endpoints(
        &mut bound.resolution,
        CHANGE_DEADLINE,
        pairs(&[("127.0.0.2:80", 1)]),
    )
    .await;
    let want = pairs(&[("127.0.0.2:80", 1)]);

    // A never-answered name, bound before the server dies, stays pending.
    let errors = namer.errors();
    let mut pending = bind(&namer, &["other.example", "80"]);
    dns.set("other.example", vec![a([127, 0, 0, 7])]);
    dns.stop().await;
    // Refreshes fail (each within the 5 × 200 ms refresh budget) and are counted; the
    // set published before stays.
    eventually(
        Duration::from_secs(5),
        "two failed refreshes counted",
        || namer.errors() >= errors + 2,
    )
    .await;
    assert_eq!(endpoints(&bound.resolution.borrow()), want);
    assert!(bound.resolution.has_changed().is_ok(), "still watched");
    assert_eq!(namer.updates(), updates + 1);
    // other.example may have been answered before the stop; if not, it is still pending
    // rather than "does not exist".
    assert!(
        !matches!(
            *pending.resolution.borrow_and_update(),
            Resolution::DoesNotExist(_)
        ),
        "a failure is not NXDOMAIN"
    );
}

#[tokio::test]
async fn a_name_that_never_resolved_stays_pending_while_the_server_is_dead() {
    let dns = Dns::start().await;
    let cfg = config(DnsKind::A, &dns);
    dns.stop().await;
    let namer = DnsNamer::new("dns".parse().expect("name"), cfg).expect("namer");
    let bound = bind(&namer, &["hello.example", "80"]);
    eventually(Duration::from_secs(3), "a failure counted", || {
        namer.errors() >= 1
    })
    .await;
    assert_eq!(*bound.resolution.borrow(), Resolution::Pending);
    assert_eq!(namer.updates(), 0);
}

#[tokio::test]
async fn unwatched_names_stop_being_refreshed_and_are_dropped() {
    let dns = Dns::start().await;
    dns.set("hello.example", vec![a([127, 0, 0, 1])]);
    let namer = namer(DnsKind::A, &dns);
    let mut first = bind(&namer, &["hello.example", "80"]);
    // The same name (any case) shares one watch; another port is another name.
    let second = bind(&namer, &["HELLO.example", "80", "x"]);
    let other_port = bind(&namer, &["hello.example", "81"]);
    assert_eq!(namer.watched(), 2);
    wait_endpoints(
        &mut first.resolution,
        Duration::from_secs(1),
        pairs(&[("127.0.0.1:80", 1)]),
    )
    .await;
    assert!(second.resolution.same_channel(&first.resolution));

    drop(other_port);
    drop(first);
    // Still watched through `second`.
    eventually(
        Duration::from_secs(1),
        "the unwatched port forgotten",
        || namer.watched() == 1,
    )
    .await;
    drop(second);
    eventually(Duration::from_secs(1), "every name forgotten", || {
        namer.watched() == 0
    })
    .await;

    // No more queries for them: two TTL floors pass without one.
    let queries = dns.queries();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(dns.queries(), queries, "a dropped name is still refreshed");
}

#[tokio::test]
async fn the_number_of_watched_names_is_bounded() {
    let dns = Dns::start().await;
    let namer = namer(DnsKind::A, &dns).with_max_names(2);
    let a = bind(&namer, &["a.example", "80"]);
    let _b = bind(&namer, &["b.example", "80"]);
    let err = namer.bind(&["c.example", "80"]).expect_err("full");
    assert!(
        matches!(err, BindError::TooManyNames { limit: 2, .. }),
        "{err}"
    );
    // A name already watched still binds.
    let _a2 = bind(&namer, &["a.example", "80"]);
    drop(a);
    drop(_a2);
    // Room again once a name is unwatched.
    let _c = bind(&namer, &["c.example", "80"]);
}

#[tokio::test]
async fn bad_paths_are_bind_errors() {
    let dns = Dns::start().await;
    let a_namer = namer(DnsKind::A, &dns);
    let cases: &[(&[&str], &str)] = &[
        (
            &["hello.example", "http"],
            "port must be a number from 1 to 65535",
        ),
        (&["hello.example", "65536"], "port must be a number"),
        (&["hello.example", "0"], "port must be a number"),
        (&["hello.example", "-1"], "port must be a number"),
        (&["hello.example"], "the port is missing"),
        (&["", "80"], "empty host name"),
        (&["a..b", "80"], "1 to 63 bytes"),
        (&["héllo", "80"], "only ASCII letters"),
        (&[], "needs a name after /#/dns"),
    ];
    for (path, want) in cases {
        let err = a_namer.bind(path).expect_err("must not bind").to_string();
        assert!(err.contains(want), "{path:?}: got {err:?}, want {want:?}");
        assert!(err.contains("/#/dns"), "{err:?} names the path");
    }
    let srv_namer = namer(DnsKind::Srv, &dns);
    assert!(matches!(
        srv_namer.bind(&["_http._tcp.a b"]),
        Err(BindError::InvalidName { .. })
    ));
    assert!(matches!(
        srv_namer.bind(&[]),
        Err(BindError::MissingName { .. })
    ));
}

#[tokio::test]
async fn ip_literals_resolve_to_themselves_without_dns() {
    let dns = Dns::start().await;
    let namer = namer(DnsKind::A, &dns);
    for (path, want) in [
        (["10.1.2.3", "8080"], "10.1.2.3:8080"),
        (["::1", "80"], "[::1]:80"),
        (["[::1]", "80"], "[::1]:80"),
    ] {
        let bound = bind(&namer, &path);
        assert_eq!(
            endpoints(&bound.resolution.borrow()),
            pairs(&[(want, 1)]),
            "{path:?}"
        );
    }
    assert_eq!(dns.queries(), 0);
    assert_eq!(namer.watched(), 0);
}

#[test]
fn names_need_a_runtime_but_the_namer_does_not() {
    let mut config = DnsConfig::new(DnsKind::A);
    config.nameserver = Some("127.0.0.1:53".parse().expect("addr"));
    let namer = DnsNamer::new("dns".parse().expect("name"), config).expect("built outside");
    assert!(matches!(
        namer.bind(&["hello.example", "80"]),
        Err(BindError::NoRuntime { .. })
    ));
    // A literal needs no task.
    assert!(namer.bind(&["127.0.0.1", "80"]).is_ok());
}

#[test]
fn inconsistent_configs_are_rejected() {
    let base = {
        let mut config = DnsConfig::new(DnsKind::Srv);
        config.nameserver = Some("127.0.0.1:53".parse().expect("addr"));
        config
    };
    let mut floor_above_ceiling = base.clone();
    floor_above_ceiling.min_ttl = Duration::from_secs(10);
    floor_above_ceiling.max_ttl = Duration::from_secs(5);
    let mut zero_timeout = base.clone();
    zero_timeout.timeout = Duration::ZERO;
    let mut zero_floor = base;
    zero_floor.min_ttl = Duration::ZERO;
    for config in [floor_above_ceiling, zero_timeout, zero_floor] {
        let err = DnsNamer::new("dns".parse().expect("name"), config).expect_err("invalid");
        assert!(matches!(err, DnsNamerError::Config { .. }), "{err}");
    }
}
