//! Turning a name's resolutions into the balancer's `Discover` stream.
//!
//! Each new [`Resolution`] is compared with the set in force ([`crate::resolve::diff`]);
//! the differences become `Change::Remove` and `Change::Insert` of endpoint services built
//! by the caller's constructor. The same adapter keeps the destination's [`Endpoints`]
//! table current: what exists, each endpoint's accrual handle, and whether the name exists
//! at all — what fail-fast, `/endpoints.json` and the `mesh_endpoints` gauge read.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tower::discover::Change;

use super::accrual::{AccrualHandle, Health};
use crate::resolve::{Resolution, Update, diff};
use crate::target::Endpoint;

/// One endpoint of a destination, as the balancer holds it.
#[derive(Clone, Debug)]
pub struct EndpointEntry {
    /// What discovery said of it.
    pub endpoint: Endpoint,
    /// Its failure accrual.
    pub accrual: AccrualHandle,
}

/// What a destination's resolution currently says, shared with fail-fast and the admin.
///
/// The balancer takes in discovery's changes when it is asked for readiness, that is when
/// requests flow; the resolution itself is read directly, so an operator's view is current
/// even with no traffic: an endpoint discovered but not yet taken in shows as pending.
#[derive(Debug, Default)]
pub struct Endpoints {
    inner: Mutex<Table>,
    resolution: Mutex<Option<watch::Receiver<Resolution>>>,
}

/// One endpoint as an operator sees it.
#[derive(Clone, Debug)]
pub struct EndpointView {
    /// What discovery said of it.
    pub endpoint: Endpoint,
    /// Its state.
    pub state: EndpointState,
    /// Consecutive failures.
    pub consecutive_failures: u32,
    /// Requests sent and not yet answered: its current load.
    pub in_flight: u32,
}

/// An endpoint's state as an operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointState {
    /// Discovered, not yet taken in by the balancer (no request since).
    Pending,
    /// In the balancer, with this health.
    Balanced(Health),
}

impl EndpointState {
    /// The `state` label: `pending`, `ready`, `ejected` or `probing`.
    pub fn label(self) -> &'static str {
        match self {
            EndpointState::Pending => "pending",
            EndpointState::Balanced(h) => h.label(),
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    /// `Some(why)` while the name does not exist.
    missing: Option<Arc<str>>,
    /// Whether a first answer has arrived.
    resolved: bool,
    endpoints: BTreeMap<SocketAddr, EndpointEntry>,
}

/// A summary of a destination's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Endpoints taking requests.
    pub ready: usize,
    /// Endpoints ejected by failure accrual.
    pub ejected: usize,
    /// Endpoints whose backoff ended, waiting for their probe.
    pub probing: usize,
    /// Endpoints discovered but not yet taken in by the balancer.
    pub pending: usize,
    /// Whether a first resolution has arrived.
    pub resolved: bool,
    /// Why the name does not exist, if it does not.
    pub missing: Option<Arc<str>>,
}

impl Endpoints {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The resolution in force, when known.
    fn resolution(&self) -> Option<Resolution> {
        let r = self.resolution.lock().unwrap_or_else(|p| p.into_inner());
        r.as_ref().map(|r| r.borrow().clone())
    }

    /// Every endpoint discovery names, with its state, consecutive failures and requests in
    /// flight (the balancer's view for those it has taken in).
    pub fn list(&self) -> Vec<EndpointView> {
        let t = self.lock();
        let balanced = |e: &EndpointEntry| {
            let (health, failures) = e.accrual.snapshot();
            EndpointView {
                endpoint: e.endpoint.clone(),
                state: EndpointState::Balanced(health),
                consecutive_failures: failures,
                in_flight: e.accrual.in_flight(),
            }
        };
        match self.resolution() {
            Some(Resolution::Endpoints(set)) => set
                .values()
                .map(|e| match t.endpoints.get(&e.addr()) {
                    Some(entry) if entry.endpoint == *e => balanced(entry),
                    _ => EndpointView {
                        endpoint: e.clone(),
                        state: EndpointState::Pending,
                        consecutive_failures: 0,
                        in_flight: 0,
                    },
                })
                .collect(),
            Some(Resolution::DoesNotExist(_)) => Vec::new(),
            Some(Resolution::Pending) | None => t.endpoints.values().map(balanced).collect(),
        }
    }

    /// Counts per state, and whether the name exists.
    pub fn summary(&self) -> Summary {
        let (resolved, missing) = {
            let t = self.lock();
            (t.resolved, t.missing.clone())
        };
        let mut s = Summary {
            resolved,
            missing,
            ..Summary::default()
        };
        match self.resolution() {
            Some(Resolution::DoesNotExist(why)) => {
                s.resolved = true;
                s.missing = Some(why);
            }
            Some(Resolution::Endpoints(_)) => s.resolved = true,
            Some(Resolution::Pending) | None => {}
        }
        for view in self.list() {
            match view.state {
                EndpointState::Pending => s.pending += 1,
                EndpointState::Balanced(Health::Ready) => s.ready += 1,
                EndpointState::Balanced(Health::Ejected) => s.ejected += 1,
                EndpointState::Balanced(Health::Probing) => s.probing += 1,
            }
        }
        s
    }
}

/// A `Discover` stream over a name's resolutions, building a service per endpoint.
pub struct ResolutionDiscover<S, M> {
    updates: WatchStream<Resolution>,
    make: M,
    current: BTreeMap<SocketAddr, Endpoint>,
    queued: VecDeque<Change<SocketAddr, S>>,
    table: Arc<Endpoints>,
}

impl<S, M> std::fmt::Debug for ResolutionDiscover<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolutionDiscover")
            .field("endpoints", &self.current.len())
            .finish_non_exhaustive()
    }
}

impl<S, M> ResolutionDiscover<S, M>
where
    M: FnMut(&Endpoint) -> (S, AccrualHandle),
{
    /// Follows `resolution`, building each new endpoint's service with `make`, and keeps
    /// `table` current.
    pub fn new(resolution: watch::Receiver<Resolution>, make: M, table: Arc<Endpoints>) -> Self {
        *table.resolution.lock().unwrap_or_else(|p| p.into_inner()) = Some(resolution.clone());
        Self {
            updates: WatchStream::new(resolution),
            make,
            current: BTreeMap::new(),
            queued: VecDeque::new(),
            table,
        }
    }

    fn apply(&mut self, resolution: Resolution) {
        let empty = BTreeMap::new();
        let (next, missing) = match &resolution {
            Resolution::Pending => return,
            Resolution::DoesNotExist(why) => (&empty, Some(why.clone())),
            Resolution::Endpoints(set) => (&**set, None),
        };
        let changes = diff(&self.current, next);
        let mut table = self.table.lock();
        table.resolved = true;
        table.missing = missing;
        for change in changes {
            match change {
                Update::Remove(addr) => {
                    table.endpoints.remove(&addr);
                    self.queued.push_back(Change::Remove(addr));
                }
                Update::Add(endpoint) => {
                    let (svc, accrual) = (self.make)(&endpoint);
                    table.endpoints.insert(
                        endpoint.addr(),
                        EndpointEntry {
                            endpoint: endpoint.clone(),
                            accrual,
                        },
                    );
                    self.queued.push_back(Change::Insert(endpoint.addr(), svc));
                }
            }
        }
        self.current = next.clone();
    }
}

impl<S, M> Stream for ResolutionDiscover<S, M>
where
    M: FnMut(&Endpoint) -> (S, AccrualHandle) + Unpin,
    S: Unpin,
{
    type Item = Result<Change<SocketAddr, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.queued.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match Pin::new(&mut self.updates).poll_next(cx) {
                Poll::Ready(Some(resolution)) => self.apply(resolution),
                // The resolver went away: the last set stays in force.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
