//! The memory all replay buffers of a process may hold together.
//!
//! One request's replay buffer is bounded by its policy's `replay_limit` (64 KiB by
//! default), but thousands of concurrent retryable uploads would still add up to gigabytes.
//! [`ReplayMemory`] is the shared allowance: a [`ReplayBody`](super::ReplayBody) built with
//! it reserves each chunk before keeping it, and a body that finds the allowance spent stops
//! keeping bytes. Such a request still goes through, once; it just cannot be retried, exactly
//! like a body over its own limit. Reservations are returned when the body is dropped or
//! gives up its buffer, so the allowance is never leaked.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A shared allowance of bytes for replay buffers; clones share it.
#[derive(Clone, Debug)]
pub struct ReplayMemory {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: usize,
    used: AtomicUsize,
}

impl ReplayMemory {
    /// An allowance of `total` bytes.
    pub fn new(total: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                total,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// The allowance in bytes.
    pub fn total(&self) -> usize {
        self.inner.total
    }

    /// Bytes held by replay buffers now.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes of the allowance; false (and nothing taken) when fewer are left.
    pub(crate) fn try_reserve(&self, n: usize) -> bool {
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= self.inner.total)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken by [`try_reserve`](Self::try_reserve).
    pub(crate) fn release(&self, n: usize) {
        if n > 0 {
            self.inner.used.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_total_and_come_back() {
        let m = ReplayMemory::new(100);
        assert!(m.try_reserve(60));
        assert!(!m.try_reserve(41), "over the total");
        assert_eq!(m.used(), 60, "a refused reservation takes nothing");
        assert!(m.try_reserve(40));
        assert!(!m.try_reserve(1));
        m.release(60);
        assert_eq!(m.used(), 40);
        assert!(m.clone().try_reserve(60), "clones share the allowance");
        assert_eq!(m.used(), 100);
    }
}
