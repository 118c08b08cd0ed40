//! One DNS refresh of one name: the queries, and what their answers mean for discovery.
//!
//! This is the only module that speaks hickory; everything it returns is ours
//! ([`Answer`]), so hickory's types stay out of the namer's API and its error taxonomy is
//! read in exactly one place ([`classify`]):
//!
//! - records → the endpoints, with the smallest TTL among the answers;
//! - NXDOMAIN → the name does not exist (retried after the negative TTL);
//! - no records of the type asked for (NODATA) → the name exists with zero endpoints;
//! - anything else (timeout, SERVFAIL, REFUSED, a network error) → a failure: the caller
//!   keeps the last good set.
//!
//! A and AAAA are queried separately rather than through hickory's `lookup_ip`, which
//! returns whichever family answered when the other one failed: a SERVFAIL on AAAA would
//! then silently drop every IPv6 endpoint. Here a failure of either is a failure of the
//! refresh.
//!
//! hickory's response cache is disabled (size 0, and each query's entry cleared before
//! asking): the namer schedules refreshes from TTLs itself, with its own floor and ceiling,
//! and a record changed on the server must show up at the next refresh, not when some cache
//! entry expires.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use mesh_core::target::Endpoint;
use tokio::task::JoinSet;

use super::{DnsConfig, DnsNamerError};
use crate::namer::NamerName;

/// The most distinct SRV targets resolved for one name; more are ignored (and logged).
const MAX_SRV_TARGETS: usize = 64;

/// What one refresh found.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The name exists: its endpoints (possibly none) and the smallest TTL seen, if any.
    Found {
        endpoints: Vec<Endpoint>,
        ttl: Option<Duration>,
    },
    /// NXDOMAIN: the name does not exist; the negative TTL, if the server sent one.
    NoSuchName { ttl: Option<Duration> },
    /// The refresh failed; why, in words.
    Failed(String),
}

/// What one query found, before A and AAAA are combined.
enum Records {
    Found {
        records: Vec<Record>,
        ttl: Option<Duration>,
    },
    NoData {
        ttl: Option<Duration>,
    },
    NoSuchName {
        ttl: Option<Duration>,
    },
    Failed(String),
}

/// Builds the resolver `config` asks for: one nameserver over UDP and TCP, with no search
/// domains and no hosts file, or the system's configuration (`/etc/resolv.conf`).
pub(crate) fn resolver(
    namer: &NamerName,
    config: &DnsConfig,
) -> Result<TokioResolver, DnsNamerError> {
    let mut builder = match config.nameserver {
        Some(addr) => {
            let mut server = NameServerConfig::new(
                addr.ip(),
                true,
                vec![ConnectionConfig::udp(), ConnectionConfig::tcp()],
            );
            for connection in &mut server.connections {
                connection.port = addr.port();
            }
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                TokioRuntimeProvider::default(),
            );
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        }
        None => TokioResolver::builder_tokio().map_err(|e| DnsNamerError::SystemConfig {
            namer: namer.clone(),
            reason: e.to_string(),
        })?,
    };
    let options = builder.options_mut();
    options.timeout = config.timeout;
    // One retry: a lost UDP datagram should not cost a whole refresh interval.
    options.attempts = 1;
    options.cache_size = 0;
    options.positive_max_ttl = Some(config.max_ttl);
    options.negative_max_ttl = Some(config.max_ttl);
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(|e| DnsNamerError::Resolver {
        namer: namer.clone(),
        reason: e.to_string(),
    })
}

/// Resolves `host`'s A and AAAA records to endpoints on `port`, each of `weight`.
pub(crate) async fn host(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
    weight: NonZeroU32,
) -> Answer {
    let (v4, v6) = tokio::join!(
        query(resolver, host, RecordType::A),
        query(resolver, host, RecordType::AAAA)
    );
    let mut endpoints = Vec::new();
    let mut ttl = None;
    let mut no_such_name = false;
    let mut no_such_name_ttl = None;
    for records in [v4, v6] {
        match records {
            Records::Failed(why) => return Answer::Failed(why),
            Records::NoSuchName { ttl } => {
                no_such_name = true;
                no_such_name_ttl = min(no_such_name_ttl, ttl);
            }
            Records::NoData { ttl: t } => ttl = min(ttl, t),
            Records::Found { records, ttl: t } => {
                ttl = min(ttl, t);
                endpoints.extend(records.iter().filter_map(|r| {
                    let ip = match &r.data {
                        RData::A(a) => IpAddr::V4(a.0),
                        RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                        _ => return None,
                    };
                    Some(Endpoint::new(SocketAddr::new(ip, port)).with_weight(weight))
                }));
            }
        }
    }
    // NXDOMAIN is about the name, not a type: if either query says so, with no address
    // from the other, the name is gone.
    if no_such_name && endpoints.is_empty() {
        return Answer::NoSuchName {
            ttl: no_such_name_ttl,
        };
    }
    Answer::Found { endpoints, ttl }
}

/// Resolves `name`'s SRV records, then their targets' addresses. Only the records of the
/// lowest priority with at least one address are used (RFC 2782: lower priorities are
/// tried first; a balancer spreading load over all of them would ignore that order). Ports
/// and weights come from the records; a weight of 0 counts as 1.
pub(crate) async fn srv(resolver: &TokioResolver, name: &str) -> Answer {
    let (records, srv_ttl) = match query(resolver, name, RecordType::SRV).await {
        Records::Failed(why) => return Answer::Failed(why),
        Records::NoSuchName { ttl } => return Answer::NoSuchName { ttl },
        Records::NoData { ttl } => {
            return Answer::Found {
                endpoints: Vec::new(),
                ttl,
            };
        }
        Records::Found { records, ttl } => (records, ttl),
    };
    // (priority, weight, port, target); a target of "." means "no service here".
    let srvs: Vec<(u16, u16, u16, String)> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) if !srv.target.is_root() => {
                Some((srv.priority, srv.weight, srv.port, srv.target.to_ascii()))
            }
            _ => None,
        })
        .collect();
    let mut targets: BTreeSet<&str> = srvs.iter().map(|s| s.3.as_str()).collect();
    if targets.len() > MAX_SRV_TARGETS {
        tracing::warn!(
            name,
            targets = targets.len(),
            "more SRV targets than {MAX_SRV_TARGETS}; ignoring the rest",
        );
        targets = targets.into_iter().take(MAX_SRV_TARGETS).collect();
    }
    let mut lookups = JoinSet::new();
    for target in targets {
        let resolver = resolver.clone();
        let target = target.to_owned();
        lookups.spawn(async move {
            let answer = host(&resolver, &target, 0, NonZeroU32::MIN).await;
            (target, answer)
        });
    }
    let mut ttl = srv_ttl;
    let mut addresses = Vec::new();
    // Bounded: one result per spawned lookup, each bounded by the resolver's timeout.
    while let Some(joined) = lookups.join_next().await {
        let Ok((target, answer)) = joined else {
            return Answer::Failed("an SRV target lookup panicked".to_owned());
        };
        match answer {
            Answer::Failed(why) => return Answer::Failed(format!("SRV target {target}: {why}")),
            Answer::NoSuchName { ttl: t } => {
                tracing::debug!(name, target, "SRV target does not exist");
                ttl = min(ttl, t);
            }
            Answer::Found { endpoints, ttl: t } => {
                ttl = min(ttl, t);
                addresses.push((target, endpoints));
            }
        }
    }
    let resolved = |s: &&(u16, u16, u16, String)| {
        addresses
            .iter()
            .any(|(target, endpoints)| *target == s.3 && !endpoints.is_empty())
    };
    let Some(priority) = srvs.iter().filter(resolved).map(|s| s.0).min() else {
        return Answer::Found {
            endpoints: Vec::new(),
            ttl,
        };
    };
    let mut endpoints = Vec::new();
    for (_, weight, port, target) in srvs.iter().filter(|s| s.0 == priority) {
        let weight = NonZeroU32::new(u32::from(*weight)).unwrap_or(NonZeroU32::MIN);
        for (_, found) in addresses.iter().filter(|(t, _)| t == target) {
            endpoints.extend(
                found.iter().map(|e| {
                    Endpoint::new(SocketAddr::new(e.addr().ip(), *port)).with_weight(weight)
                }),
            );
        }
    }
    Answer::Found { endpoints, ttl }
}

/// Asks for `name`'s records of `kind`, bypassing hickory's cache.
async fn query(resolver: &TokioResolver, name: &str, kind: RecordType) -> Records {
    resolver.clear_lookup_cache(name, kind);
    match resolver.lookup(name, kind).await {
        Ok(lookup) => {
            let records: Vec<Record> = lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == kind)
                .cloned()
                .collect();
            let ttl = lookup
                .answers()
                .iter()
                .map(|r| Duration::from_secs(r.ttl.into()))
                .min();
            if records.is_empty() {
                // Only CNAMEs: the chain ends in a name without this type.
                Records::NoData { ttl }
            } else {
                Records::Found { records, ttl }
            }
        }
        Err(e) => classify(e),
    }
}

/// Reads hickory's error: a negative answer is data, anything else a failure.
fn classify(error: NetError) -> Records {
    if let NetError::Dns(DnsError::NoRecordsFound(no_records)) = &error {
        let ttl = no_records
            .negative_ttl
            .map(|secs| Duration::from_secs(secs.into()));
        return match no_records.response_code {
            ResponseCode::NXDomain => Records::NoSuchName { ttl },
            ResponseCode::NoError => Records::NoData { ttl },
            _ => Records::Failed(error.to_string()),
        };
    }
    Records::Failed(error.to_string())
}

/// The smaller of two optional TTLs (a missing one does not count).
fn min(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
