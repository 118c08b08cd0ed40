//! The refresh loop of one watched DNS name.
//!
//! Each watched name has its own small task rather than one task scanning a table as the
//! file namer does: a DNS refresh is an independent network wait whose period comes from
//! that name's TTL, so a task per name turns "refresh after the TTL" into one `sleep`, and
//! "stop when nobody watches" into waiting on [`watch::Sender::closed`] — an unwatched name
//! stops at once, even mid-lookup, instead of at the next scan. Lookups across all names
//! share a semaphore, so a burst of binds cannot put thousands of queries in flight.

use std::sync::Weak;
use std::time::Duration;

use mesh_core::resolve::Resolution;
use tokio::sync::watch;

use super::Shared;
use super::lookup::Answer;
use super::name::Question;

/// Refreshes `question` until nobody watches it or the namer is dropped, then forgets it.
///
/// Bounded: each pass waits for one lookup (bounded by the namer's lookup budget) and one
/// sleep of at most the TTL ceiling, and the loop ends when every receiver is gone.
pub(super) async fn refresh(
    shared: Weak<Shared>,
    question: Question,
    generation: u64,
    tx: watch::Sender<Resolution>,
) {
    let mut failing = false;
    loop {
        let next = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let answer = tokio::select! {
                biased;
                () = tx.closed() => break,
                answer = shared.resolve(&question) => answer,
            };
            shared.publish(&question, &tx, answer, &mut failing)
        };
        tokio::select! {
            biased;
            () = tx.closed() => break,
            () = tokio::time::sleep(next) => {}
        }
    }
    if let Some(shared) = shared.upgrade() {
        shared.forget(&question, generation);
    }
}

impl Shared {
    /// Publishes what a refresh found and returns when to refresh next: after the answer's
    /// TTL clamped to the namer's floor and ceiling, or after the floor when it failed.
    pub(super) fn publish(
        &self,
        question: &Question,
        tx: &watch::Sender<Resolution>,
        answer: Answer,
        failing: &mut bool,
    ) -> Duration {
        let (resolution, ttl) = match answer {
            Answer::Failed(why) => {
                self.errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if *failing {
                    tracing::debug!(namer = %self.namer, name = %question, error = %why, "DNS refresh failed again");
                } else {
                    tracing::warn!(
                        namer = %self.namer,
                        name = %question,
                        error = %why,
                        "DNS refresh failed; keeping the last good set",
                    );
                }
                *failing = true;
                return self.config.min_ttl;
            }
            Answer::Found { endpoints, ttl } => (
                Resolution::endpoints(endpoints),
                ttl.unwrap_or(self.config.max_ttl),
            ),
            Answer::NoSuchName { ttl } => (
                Resolution::DoesNotExist(
                    format!("DNS name {question} does not exist (NXDOMAIN)").into(),
                ),
                ttl.unwrap_or(self.config.min_ttl),
            ),
        };
        if *failing {
            tracing::info!(namer = %self.namer, name = %question, "DNS refresh recovered");
            *failing = false;
        }
        let changed = tx.send_if_modified(|current| {
            if *current == resolution {
                return false;
            }
            *current = resolution;
            true
        });
        if changed {
            self.updates
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ttl.clamp(self.config.min_ttl, self.config.max_ttl)
    }
}
