//! Log lines a peer can trigger at will, at most once a second.
//!
//! A failing upstream or a flood of refused connections must not turn into a flood of log
//! lines (CPU, disk, and the one useful line drowned). The first event in each second is
//! logged with how many were suppressed since the last line; metrics still count them all.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::time::Instant;

/// Allows one log line per second and counts the rest.
#[derive(Debug)]
pub struct LogLimit {
    base: Instant,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimit {
    /// A limit that allows a line now.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when a line may be logged now, with the number of events not
    /// logged since the previous line; `None` when this one should be counted only.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now.saturating_add(1000), Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_line_a_second_with_a_count() {
        let limit = LogLimit::new();
        assert_eq!(limit.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.allow(), None);
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(limit.allow(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(limit.allow(), Some(6));
    }
}
