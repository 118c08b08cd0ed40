//! A bounded cache of per-target services.
//!
//! Each stage of a stack is built once per target — per logical name, per concrete
//! destination, per endpoint (DESIGN.md §3) — and shared by every connection and request to
//! that target: an endpoint's connection pool, a destination's metric handles. A proxy that
//! follows original destinations meets an open-ended set of targets, so the cache is bounded
//! in count and forgets targets nobody has asked for within an idle timeout.
//!
//! Eviction is by idle time, not by whether a service is still referenced: a service is a
//! cheap handle, and a connection that still holds an evicted one keeps using it; the next
//! lookup simply builds a fresh one.
//!
//! Building never happens under the cache's lock. A new key gets an empty slot under the
//! lock; the slot is filled outside it, and concurrent lookups of the same new key wait on
//! that one slot, so a burst of first requests to a target builds it once.
//!
//! ```
//! use std::num::NonZeroUsize;
//! use std::time::Duration;
//! use mesh_core::cache::Cache;
//!
//! let cache: Cache<&'static str, String> =
//!     Cache::new(NonZeroUsize::new(100).unwrap(), Duration::from_secs(60));
//! let svc = cache.get_or_build(&"world", |name| format!("stack for {name}"));
//! assert_eq!(svc, "stack for world");
//! assert_eq!(cache.len(), 1);
//! ```

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

/// A bounded map from targets to the services built for them.
pub struct Cache<K, S> {
    inner: Arc<Inner<K, S>>,
}

struct Inner<K, S> {
    slots: Mutex<HashMap<K, Arc<Slot<S>>>>,
    max: usize,
    idle: Duration,
    epoch: Instant,
}

struct Slot<S> {
    service: OnceLock<S>,
    /// Milliseconds since the cache's epoch at the last lookup.
    used_ms: AtomicU64,
}

impl<K, S> Clone for Cache<K, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, S> std::fmt::Debug for Cache<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("max", &self.inner.max)
            .field("idle", &self.inner.idle)
            .finish_non_exhaustive()
    }
}

impl<K, S> Cache<K, S>
where
    K: Hash + Eq + Clone,
    S: Clone,
{
    /// A cache of at most `max` targets, each forgotten after `idle` without a lookup.
    pub fn new(max: NonZeroUsize, idle: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                slots: Mutex::new(HashMap::new()),
                max: max.get(),
                idle,
                epoch: Instant::now(),
            }),
        }
    }

    /// The service for `key`, built with `build` if the cache does not hold one.
    ///
    /// When the cache is full of targets that are all still in use, the service is built
    /// for this caller alone and not kept; [`Cache::evict_idle`] makes room again.
    pub fn get_or_build(&self, key: &K, build: impl FnOnce(&K) -> S) -> S {
        let now = self.now_ms();
        let slot = {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.get(key) {
                Some(slot) => slot.clone(),
                None if slots.len() < self.inner.max => {
                    let slot = Arc::new(Slot {
                        service: OnceLock::new(),
                        used_ms: AtomicU64::new(now),
                    });
                    slots.insert(key.clone(), slot.clone());
                    slot
                }
                None => {
                    drop(slots);
                    tracing::debug!(max = self.inner.max, "target cache full; not caching");
                    return build(key);
                }
            }
        };
        slot.used_ms.store(now, Ordering::Relaxed);
        slot.service.get_or_init(|| build(key)).clone()
    }

    /// The cached service for `key`, if any, without building one.
    pub fn get(&self, key: &K) -> Option<S> {
        let slot = {
            let slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.get(key)?.clone()
        };
        slot.used_ms.store(self.now_ms(), Ordering::Relaxed);
        slot.service.get().cloned()
    }

    /// Forgets targets not looked up within the idle timeout; returns how many remain.
    ///
    /// `keep` can hold on to an idle target that still has state worth keeping (an endpoint
    /// with idle pooled connections, say); it sees each idle target's service.
    pub fn evict_idle(&self, mut keep: impl FnMut(&S) -> bool) -> usize {
        let now = self.now_ms();
        let idle = u64::try_from(self.inner.idle.as_millis()).unwrap_or(u64::MAX);
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, slot| {
            let used = slot.used_ms.load(Ordering::Relaxed);
            if now.saturating_sub(used) <= idle {
                return true;
            }
            // A slot whose build has not finished is in use right now.
            slot.service.get().is_none_or(&mut keep)
        });
        slots.len()
    }

    /// Forgets every target whose key fails `keep`, idle or not (e.g. routes bound under a
    /// configuration that was replaced); returns how many remain. Callers holding a removed
    /// service keep using it.
    pub fn retain(&self, mut keep: impl FnMut(&K) -> bool) -> usize {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|k, _| keep(k));
        slots.len()
    }

    /// Forgets the target for `key`, if cached.
    pub fn remove(&self, key: &K) {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(key);
    }

    /// How many targets the cache holds.
    pub fn len(&self) -> usize {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether the cache holds no target.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every cached service (for housekeeping such as closing expired pooled connections).
    pub fn services(&self) -> Vec<S> {
        let slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .values()
            .filter_map(|s| s.service.get().cloned())
            .collect()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn cache(max: usize, idle_secs: u64) -> Cache<u32, Arc<u32>> {
        Cache::new(
            NonZeroUsize::new(max).expect("nonzero"),
            Duration::from_secs(idle_secs),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn builds_once_and_reuses() {
        let c = cache(10, 60);
        let builds = AtomicUsize::new(0);
        let build = |k: &u32| {
            builds.fetch_add(1, Ordering::SeqCst);
            Arc::new(*k)
        };
        let a = c.get_or_build(&1, build);
        let b = c.get_or_build(&1, build);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert_eq!(c.get(&1).as_deref(), Some(&1));
        assert_eq!(c.get(&2), None);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_in_count() {
        let c = cache(2, 60);
        let a = c.get_or_build(&1, |k| Arc::new(*k));
        c.get_or_build(&2, |k| Arc::new(*k));
        let third = c.get_or_build(&3, |k| Arc::new(*k));
        assert_eq!(*third, 3, "served, but not kept");
        assert_eq!(c.len(), 2);
        assert!(c.get(&3).is_none());
        assert!(Arc::ptr_eq(&a, &c.get_or_build(&1, |_| Arc::new(0))));
    }

    #[tokio::test(start_paused = true)]
    async fn evicts_idle_entries_and_rebuilds_on_demand() {
        let c = cache(10, 60);
        let first = c.get_or_build(&1, |k| Arc::new(*k));
        c.get_or_build(&2, |k| Arc::new(*k));
        tokio::time::advance(Duration::from_secs(40)).await;
        // Target 2 is used again; target 1 is not, though `first` still holds its service.
        c.get_or_build(&2, |_| Arc::new(0));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(c.evict_idle(|_| false), 1);
        assert!(c.get(&1).is_none(), "idle target forgotten");
        let rebuilt = c.get_or_build(&1, |k| Arc::new(*k));
        assert!(!Arc::ptr_eq(&first, &rebuilt), "built anew");
    }

    #[tokio::test(start_paused = true)]
    async fn keep_holds_idle_entries_with_state() {
        let c = cache(10, 1);
        c.get_or_build(&1, |k| Arc::new(*k));
        c.get_or_build(&2, |k| Arc::new(*k));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(c.evict_idle(|s| **s == 2), 1);
        assert!(c.get(&2).is_some());
    }

    #[test]
    fn concurrent_gets_of_a_new_key_build_it_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let _enter = rt.enter();
        let c = cache(10, 60);
        let builds = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, builds, barrier) = (c.clone(), builds.clone(), barrier.clone());
                let handle = rt.handle().clone();
                std::thread::spawn(move || {
                    let _enter = handle.enter();
                    barrier.wait();
                    c.get_or_build(&7, |k| {
                        builds.fetch_add(1, Ordering::SeqCst);
                        // A slow build, so the other threads arrive while it runs.
                        std::thread::sleep(Duration::from_millis(20));
                        Arc::new(*k)
                    })
                })
            })
            .collect();
        let built: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert!(built.iter().all(|s| Arc::ptr_eq(s, &built[0])));
    }
}
