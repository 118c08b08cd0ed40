//! The DNS namers (`kind = "dns"` and `kind = "dns-srv"`): names kept current by DNS
//! queries, refreshed by their TTL.
//!
//! ```toml
//! [namers.dns]
//! kind = "dns"                  # A and AAAA: /#/dns/<host>/<port>
//! nameserver = "127.0.0.1:5353" # optional; default: the system's resolv.conf
//!
//! [namers.srv]
//! kind = "dns-srv"              # SRV: /#/srv/<srv name>, e.g. /#/srv/_http._tcp.hello.example
//! ```
//!
//! DNS is the discovery everything already has, so these namers are what a library user
//! reaches for when there is no control plane. As every namer, they consume the segments
//! they need (`<host>/<port>`, or one SRV name) and leave the rest as residual.
//!
//! What an answer means for the balancer (the private `lookup` module has the details):
//!
//! - **records** → [`Resolution::Endpoints`]: for `dns`, every A and AAAA address with the
//!   port from the path; for `dns-srv`, the SRV records' targets resolved to addresses, with
//!   the records' ports and weights (a weight of 0 counts as 1), lowest priority only;
//! - **NXDOMAIN** → [`Resolution::DoesNotExist`] at once, so requests fail fast rather than
//!   wait for endpoints that cannot come; the name is asked again after the negative TTL;
//! - **NODATA** (the name exists, without records of that type) → an empty endpoint set:
//!   the name is real and may get records, so the balancer waits its fail-fast timeout;
//! - **a failure** (timeout, SERVFAIL, REFUSED, network error) → nothing changes: the last
//!   good set stays in force (a resolver outage must not empty a healthy balancer), the name
//!   stays [`Resolution::Pending`] if it never resolved, and [`DnsNamer::errors`] counts it.
//!   The name is asked again after the TTL floor.
//!
//! Each name is refreshed after its answer's smallest TTL, clamped to
//! [`DnsConfig::min_ttl`] (so a TTL of 0 cannot make a busy loop) and
//! [`DnsConfig::max_ttl`] (so a record with a day-long TTL is still re-checked). hickory's
//! own cache is disabled so a changed record shows up at the next refresh.
//!
//! Binding is synchronous and never waits for the network: a new name starts
//! [`Resolution::Pending`] and a task (one per name, see the private `refresh` module for why) resolves it
//! right away and then on every refresh, so binding needs a tokio runtime
//! ([`BindError::NoRuntime`] otherwise). An IP literal (`/#/dns/10.0.0.1/80`,
//! `/#/dns/[::1]/80`) needs no DNS: it resolves to itself at once, also outside a runtime.
//! Binding the same name again shares its watch; a name nobody holds a receiver for any
//! more stops being refreshed and is forgotten, so at most [`DEFAULT_MAX_NAMES`]
//! (configurable) names are watched. Dropping the namer stops every refresh; receivers then
//! keep their last value.
//!
//! ```
//! use std::net::SocketAddr;
//!
//! use mesh_core::resolve::Resolution;
//! use mesh_discovery::dns_namer::{DnsConfig, DnsKind, DnsNamer};
//! use mesh_discovery::namer::Namer;
//!
//! let mut config = DnsConfig::new(DnsKind::A);
//! config.nameserver = Some("127.0.0.1:5353".parse()?);
//! let namer = DnsNamer::new("dns".parse()?, config)?;
//!
//! // An IP literal needs no DNS (and no runtime).
//! let bound = namer.bind(&["10.0.0.1", "8080", "v2"])?;
//! assert_eq!(bound.id, "/#/dns/10.0.0.1/8080");
//! assert_eq!(bound.residual, ["v2"]);
//! let addr: SocketAddr = "10.0.0.1:8080".parse()?;
//! assert!(matches!(&*bound.resolution.borrow(), Resolution::Endpoints(s) if s.contains_key(&addr)));
//!
//! // A port must be a port.
//! assert!(namer.bind(&["hello.example", "http"]).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod lookup;
mod name;
mod refresh;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use mesh_core::resolve::Resolution;
use mesh_core::target::Endpoint;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};
use tokio::task::AbortHandle;

use self::lookup::Answer;
use self::name::{Question, parse};
use crate::namer::{BindError, Bound, Namer, NamerName, path_text};

/// The TTL floor by default.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(5);

/// The TTL ceiling by default.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(300);

/// The timeout of one DNS query by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How many names one DNS namer watches at most by default.
pub const DEFAULT_MAX_NAMES: usize = 10_000;

/// How many refreshes of one namer may wait on DNS at once.
const MAX_CONCURRENT_LOOKUPS: usize = 64;

/// The shortest TTL floor and query timeout accepted.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Which records a DNS namer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DnsKind {
    /// A and AAAA records (`kind = "dns"`): paths `/#/NAME/<host>/<port>`.
    A,
    /// SRV records (`kind = "dns-srv"`): paths `/#/NAME/<srv name>`; ports and weights
    /// come from the records, their targets are resolved to addresses.
    Srv,
}

/// A DNS namer's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsConfig {
    /// Which records to ask for.
    pub kind: DnsKind,
    /// The one nameserver to ask, over UDP (and TCP for truncated answers), with no search
    /// domains and no hosts file. Default: `None`, the system's configuration
    /// (`/etc/resolv.conf`, with its search domains).
    pub nameserver: Option<SocketAddr>,
    /// The TTL floor: no name is refreshed more often, whatever its TTL; failures are
    /// retried after it. Default: 5 s ([`DEFAULT_MIN_TTL`]); at least 10 ms.
    pub min_ttl: Duration,
    /// The TTL ceiling: every name is refreshed at least this often. Default: 300 s
    /// ([`DEFAULT_MAX_TTL`]); at least `min_ttl`.
    pub max_ttl: Duration,
    /// How long one query waits for an answer (it is tried twice). Default: 2 s
    /// ([`DEFAULT_TIMEOUT`]); at least 10 ms.
    pub timeout: Duration,
}

impl DnsConfig {
    /// A configuration for `kind` with the defaults.
    pub fn new(kind: DnsKind) -> Self {
        Self {
            kind,
            nameserver: None,
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The longest one refresh may take: two tries of each query, and for SRV a second
    /// round for the targets, with some slack.
    fn refresh_budget(&self) -> Duration {
        self.timeout.saturating_mul(5)
    }
}

/// A DNS namer could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsNamerError {
    /// The configuration is inconsistent (a TTL floor above the ceiling, a zero timeout).
    #[error("dns namer {namer}: {reason}")]
    Config {
        /// The namer.
        namer: NamerName,
        /// Why.
        reason: &'static str,
    },
    /// No nameserver was configured and the system's configuration could not be read.
    #[error("dns namer {namer}: cannot read the system's DNS configuration: {reason}")]
    SystemConfig {
        /// The namer.
        namer: NamerName,
        /// Why.
        reason: String,
    },
    /// The resolver could not be built from the configuration.
    #[error("dns namer {namer}: cannot build the resolver: {reason}")]
    Resolver {
        /// The namer.
        namer: NamerName,
        /// Why.
        reason: String,
    },
}

/// A namer binding paths to the addresses DNS gives for them, kept current by TTL.
pub struct DnsNamer {
    shared: Arc<Shared>,
    max_names: usize,
}

/// What the namer and its refresh tasks share.
struct Shared {
    namer: NamerName,
    config: DnsConfig,
    resolver: TokioResolver,
    lookups: Semaphore,
    table: Mutex<Table>,
    updates: AtomicU64,
    errors: AtomicU64,
}

#[derive(Default)]
struct Table {
    names: BTreeMap<Question, Watched>,
    /// Tells a replaced entry's ending task from the current entry's.
    next_generation: u64,
}

/// One watched name.
struct Watched {
    tx: watch::Sender<Resolution>,
    generation: u64,
    task: AbortHandle,
}

impl DnsNamer {
    /// A namer mounted under `name` asking DNS as `config` says, watching at most
    /// [`DEFAULT_MAX_NAMES`] names. Can be called outside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`DnsNamerError::Config`] when `min_ttl` is above `max_ttl` or `min_ttl` or `timeout`
    /// is under 10 ms; [`DnsNamerError::SystemConfig`] when no nameserver is configured and
    /// the system's configuration cannot be read; [`DnsNamerError::Resolver`] when the
    /// resolver cannot be built.
    pub fn new(name: NamerName, config: DnsConfig) -> Result<Self, DnsNamerError> {
        let problem = if config.min_ttl < MIN_INTERVAL {
            Some("min_ttl must be at least 10ms")
        } else if config.timeout < MIN_INTERVAL {
            Some("timeout must be at least 10ms")
        } else if config.min_ttl > config.max_ttl {
            Some("min_ttl must not be above max_ttl")
        } else {
            None
        };
        if let Some(reason) = problem {
            return Err(DnsNamerError::Config {
                namer: name,
                reason,
            });
        }
        let resolver = lookup::resolver(&name, &config)?;
        Ok(Self {
            shared: Arc::new(Shared {
                namer: name,
                config,
                resolver,
                lookups: Semaphore::new(MAX_CONCURRENT_LOOKUPS),
                table: Mutex::default(),
                updates: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
            max_names: DEFAULT_MAX_NAMES,
        })
    }

    /// Watches at most `max` names instead; binding another is a
    /// [`BindError::TooManyNames`].
    pub fn with_max_names(mut self, max: usize) -> Self {
        self.max_names = max;
        self
    }

    /// Its configuration.
    pub fn config(&self) -> &DnsConfig {
        &self.shared.config
    }

    /// How many names it watches now (a name whose receivers were all dropped is forgotten
    /// as soon as its task notices, which is at once unless the runtime is busy).
    pub fn watched(&self) -> usize {
        lock(&self.shared.table).names.len()
    }

    /// How many times a name's resolution changed (first answers included).
    pub fn updates(&self) -> u64 {
        self.shared.updates.load(Ordering::Relaxed)
    }

    /// How many refreshes failed (timeouts, SERVFAIL, network errors); each kept the last
    /// good set.
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    /// A receiver of `question`'s watch, starting its refresh task if it is not watched.
    fn watch(
        &self,
        question: Question,
        runtime: &Handle,
        path: &str,
    ) -> Result<watch::Receiver<Resolution>, BindError> {
        let mut table = lock(&self.shared.table);
        if let Some(watched) = table.names.get(&question)
            && !watched.tx.is_closed()
        {
            return Ok(watched.tx.subscribe());
        }
        if table.names.len() >= self.max_names {
            table.names.retain(|_, w| !w.tx.is_closed());
        }
        if table.names.len() >= self.max_names {
            return Err(BindError::TooManyNames {
                namer: self.shared.namer.clone(),
                path: path.to_owned(),
                limit: self.max_names,
            });
        }
        let generation = table.next_generation;
        table.next_generation += 1;
        let tx = watch::Sender::new(Resolution::Pending);
        let rx = tx.subscribe();
        let task = runtime
            .spawn(refresh::refresh(
                Arc::downgrade(&self.shared),
                question.clone(),
                generation,
                tx.clone(),
            ))
            .abort_handle();
        // A replaced entry (nobody watched it) has a task that is ending on its own.
        table.names.insert(
            question,
            Watched {
                tx,
                generation,
                task,
            },
        );
        Ok(rx)
    }
}

impl Namer for DnsNamer {
    fn name(&self) -> &NamerName {
        &self.shared.namer
    }

    fn bind(&self, path: &[&str]) -> Result<Bound, BindError> {
        let namer = &self.shared.namer;
        let parsed = parse(namer, self.shared.config.kind, path)?;
        let id = path_text(namer, parsed.consumed);
        let residual = parsed.residual.iter().map(|s| (*s).to_owned()).collect();
        let resolution = match parsed.question {
            // Final at once: the sender is dropped, the value stays.
            Err((ip, port)) => {
                watch::channel(Resolution::endpoints([Endpoint::new(SocketAddr::new(
                    ip, port,
                ))]))
                .1
            }
            Ok(question) => {
                let Ok(runtime) = Handle::try_current() else {
                    return Err(BindError::NoRuntime {
                        namer: namer.clone(),
                        path: path_text(namer, path),
                    });
                };
                self.watch(question, &runtime, &path_text(namer, path))?
            }
        };
        Ok(Bound {
            id,
            residual,
            resolution,
        })
    }
}

impl fmt::Debug for DnsNamer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsNamer")
            .field("name", &self.shared.namer)
            .field("config", &self.shared.config)
            .field("watched", &self.watched())
            .finish()
    }
}

impl Drop for DnsNamer {
    fn drop(&mut self) {
        for watched in lock(&self.shared.table).names.values() {
            watched.task.abort();
        }
    }
}

impl Shared {
    /// One refresh of `question`, bounded by the configuration's refresh budget.
    async fn resolve(&self, question: &Question) -> Answer {
        // The semaphore is never closed; if it were, resolving unthrottled is still right.
        let _permit = self.lookups.acquire().await.ok();
        let lookup = async {
            match question {
                Question::Host { host, port } => {
                    lookup::host(&self.resolver, host, *port, NonZeroU32::MIN).await
                }
                Question::Srv(name) => lookup::srv(&self.resolver, name).await,
            }
        };
        let budget = self.config.refresh_budget();
        tokio::time::timeout(budget, lookup)
            .await
            .unwrap_or_else(|_| Answer::Failed(format!("no answer within {budget:?}")))
    }

    /// Forgets `question` if its entry is still the one of `generation`.
    fn forget(&self, question: &Question, generation: u64) {
        let mut table = lock(&self.table);
        if table
            .names
            .get(question)
            .is_some_and(|w| w.generation == generation)
        {
            table.names.remove(question);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
