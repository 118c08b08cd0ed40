//! What the balancers know of their endpoints, for operators: `/endpoints.json` and the
//! `mesh_endpoints{direction,dst,state}` gauge.
//!
//! Both read the per-destination tables the balancers keep (`mesh_core::balance::Endpoints`);
//! nothing here is on the request path. The gauge is refreshed by the proxy's housekeeping
//! tick (every few seconds), which is also when destinations nobody uses are forgotten.

use std::sync::Arc;

use mesh_core::balance::Health;
use mesh_discovery::namer::Namer;
use serde_json::{Value, json};

use crate::listener::ListenerCtx;

use mesh_core::metrics::{ENDPOINTS, RESOLVER_ERRORS_TOTAL, RESOLVER_UPDATES_TOTAL};
use mesh_discovery::dns_namer::DnsNamer;
use mesh_discovery::file_namer::FileNamer;

/// Every balanced destination of every listener, with its endpoints: state, weight,
/// identity, labels, requests in flight (its current load) and consecutive failures (what
/// Envoy's `/clusters` shows).
pub(crate) fn json(listeners: &[Arc<ListenerCtx>]) -> Value {
    let mut destinations = Vec::new();
    for ctx in listeners {
        for balancer in ctx.targets.balancers() {
            let table = balancer.endpoints();
            let summary = table.summary();
            let endpoints: Vec<Value> = table
                .list()
                .into_iter()
                .map(|v| {
                    let e = &v.endpoint;
                    json!({
                        "addr": e.addr().to_string(),
                        "state": v.state.label(),
                        "in_flight": v.in_flight,
                        "weight": e.weight().get(),
                        "identity": e.identity().map(ToString::to_string),
                        "labels": e.labels().iter().collect::<std::collections::BTreeMap<_, _>>(),
                        "consecutive_failures": v.consecutive_failures,
                    })
                })
                .collect();
            destinations.push(json!({
                "direction": ctx.direction.as_str(),
                "dst": &**balancer.dst(),
                "exists": summary.missing.is_none(),
                "why_not": summary.missing.as_deref(),
                "resolved": summary.resolved,
                "endpoints": endpoints,
            }));
        }
    }
    json!({ "destinations": destinations })
}

/// Sets the `mesh_endpoints` gauge from every balancer's table.
pub(crate) fn record(listeners: &[Arc<ListenerCtx>]) {
    for ctx in listeners {
        let dir = ctx.direction.as_str();
        for balancer in ctx.targets.balancers() {
            let s = balancer.endpoints().summary();
            let dst = balancer.dst().to_string();
            for (state, n) in [
                (Health::Ready.label(), s.ready),
                (Health::Ejected.label(), s.ejected),
                (Health::Probing.label(), s.probing),
                ("pending", s.pending),
            ] {
                metrics::gauge!(ENDPOINTS, "direction" => dir, "dst" => dst.clone(), "state" => state)
                    .set(n as f64);
            }
        }
    }
}

/// A namer that counts its updates and errors.
#[derive(Clone, Debug)]
pub(crate) enum Counted {
    File(Arc<FileNamer>),
    Dns(Arc<DnsNamer>),
}

/// Exports each namer's update and error counts.
pub(crate) fn record_namers(namers: &[Counted]) {
    for n in namers {
        let (name, updates, errors) = match n {
            Counted::File(n) => (n.name().to_string(), n.updates(), n.errors()),
            Counted::Dns(n) => (n.name().to_string(), n.updates(), n.errors()),
        };
        metrics::counter!(RESOLVER_UPDATES_TOTAL, "namer" => name.clone()).absolute(updates);
        metrics::counter!(RESOLVER_ERRORS_TOTAL, "namer" => name).absolute(errors);
    }
}
