//! SIGHUP, for the watchers that reload files (identity, configuration): each waits for its
//! poll tick or the signal, whichever comes first, so an operator can force a reload now.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// One watcher's poll ticker and subscription to SIGHUP (every subscriber sees every
/// signal).
pub(crate) struct Hangup(Option<Signal>, tokio::time::Interval);

impl Hangup {
    /// Polls every `every` and subscribes to SIGHUP; when the signal cannot be watched, says
    /// so, naming what is still polled.
    pub(crate) fn new(polled: &'static str, every: std::time::Duration) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        match signal(SignalKind::hangup()) {
            Ok(s) => Self(Some(s), tick),
            Err(error) => {
                tracing::warn!(%error, "cannot watch for SIGHUP; {polled} still polled");
                Self(None, tick)
            }
        }
    }

    /// Waits for the next poll tick (false) or SIGHUP (true: the operator forces a reload).
    pub(crate) async fn next(&mut self) -> bool {
        let Self(signal, tick) = self;
        tokio::select! {
            _ = tick.tick() => false,
            () = recv(signal) => true,
        }
    }
}

/// Completes at the next SIGHUP; never, when it cannot be watched.
async fn recv(signal: &mut Option<Signal>) {
    match signal {
        Some(s) => {
            if s.recv().await.is_none() {
                *signal = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
