//! Configuration reload: a new file put in force without dropping connections
//! (DESIGN.md §4 "Config").
//!
//! What a running proxy can change in place is what its routers read per request: each
//! router's identifier, dtab, trusted sources and no-route status. Those are swapped
//! atomically (`Router::reload`); a request already routed finishes where it was sent, the
//! next one — on the same keep-alive connection — routes by the new table. A new file that
//! does not load is refused whole with its error (file, line, key, value) and the old
//! configuration stays; a file that changes what only a restart can change (listeners,
//! limits, namers, identity) is applied for its routers and the rest is named in a warning,
//! so `/config.json` never shows settings that are not in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{Config, ConfigError, EffectiveConfig};
use crate::router::Router;

/// How often the file is checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// Puts new configurations in force in a running proxy.
#[derive(Clone, Debug)]
pub struct Reloader {
    config: EffectiveConfig,
    routers: Vec<Arc<Router>>,
    /// One reload at a time: two racing would interleave their routers' stores and the
    /// configuration's, leaving a mix of both in force.
    lock: Arc<std::sync::Mutex<()>>,
}

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// The routers whose settings changed.
    pub routers: Vec<String>,
    /// Sections that changed but need a restart to take effect (not applied).
    pub needs_restart: Vec<&'static str>,
}

impl Reloader {
    pub(crate) fn new(config: EffectiveConfig, routers: Vec<Arc<Router>>) -> Self {
        Self {
            config,
            routers,
            lock: Arc::default(),
        }
    }

    /// Applies `new` (already loaded and validated) to the running proxy; sections that
    /// differ from the configuration in force and need a restart are reported, not applied.
    pub fn reload(&self, new: &Config) -> Reloaded {
        self.apply(new, &self.config.current())
    }

    /// Applies `new`'s routers; `before` is what the sections needing a restart are compared
    /// with.
    fn apply(&self, new: &Config, before: &Config) -> Reloaded {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.config.current();
        let mut applied = (*current).clone();
        let mut changed = Vec::new();
        for router in &self.routers {
            match new.routers.get(router.name()) {
                Some(rc) => {
                    applied.routers.insert(router.name().to_owned(), rc.clone());
                    if router.reload(rc) {
                        tracing::info!(router = router.name(), dtab = %rc.dtab.0, "router reloaded");
                        changed.push(router.name().to_owned());
                    }
                }
                None => tracing::warn!(
                    router = router.name(),
                    "the reloaded configuration has no [routers.{}]; the running router keeps its settings",
                    router.name()
                ),
            }
        }
        let needs_restart = restart_only_changes(before, new);
        if !needs_restart.is_empty() {
            tracing::warn!(sections = ?needs_restart, "configuration changes that need a restart were not applied");
        }
        // Only the routers that run take a new section: /config.json shows what is in force.
        self.config.replace(applied);
        Reloaded {
            routers: changed,
            needs_restart,
        }
    }

    /// Loads `path` and applies it; a file that does not load changes nothing.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] naming the file, line, key and value of the problem.
    pub fn reload_file(&self, path: &std::path::Path) -> Result<Reloaded, ConfigError> {
        let new = Config::from_file(path)?;
        Ok(self.reload(&new))
    }
}

/// The sections of `new` that differ from `current` and are fixed once the proxy runs.
fn restart_only_changes(current: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name, same: bool| {
        if !same {
            out.push(name);
        }
    };
    check("admin", current.admin == new.admin);
    check("outbound", current.outbound == new.outbound);
    check("inbound", current.inbound == new.inbound);
    check("limits", current.limits == new.limits);
    check("client", current.client == new.client);
    check("shutdown", current.shutdown == new.shutdown);
    check("identity", current.identity == new.identity);
    check("namers", current.namers == new.namers);
    check("balancer", current.balancer == new.balancer);
    out
}

/// Watches `path`: reloads when its contents change (checked every second) and on SIGHUP.
pub(crate) async fn watch(path: PathBuf, reloader: Reloader) {
    let mut hangup = crate::hangup::Hangup::new("the configuration file is", POLL);
    let mut seen = fingerprint(&path);
    // Changes needing a restart are judged against the file as it was, not against the
    // configuration in force (which command-line flags may have changed).
    let mut before = Config::from_file(&path).ok();
    loop {
        let forced = hangup.next().await;
        let now = fingerprint(&path);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match Config::from_file(&path) {
            Ok(new) => {
                let baseline = before
                    .take()
                    .unwrap_or_else(|| (*reloader.config.current()).clone());
                let done = reloader.apply(&new, &baseline);
                tracing::info!(file = %path.display(), routers = ?done.routers, "configuration reloaded");
                before = Some(new);
            }
            Err(error) => {
                tracing::warn!(%error, "configuration not reloaded; the one in force stays");
            }
        }
    }
}

/// What tells a changed file: its modification time, length and contents' hash.
fn fingerprint(path: &std::path::Path) -> Option<(SystemTime, u64, u64)> {
    use std::hash::{Hash, Hasher};
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some((meta.modified().ok()?, meta.len(), h.finish()))
}
