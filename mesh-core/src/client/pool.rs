//! Idle HTTP/1 upstream connections kept for reuse.
//!
//! A connection goes back to its endpoint's idle list when the upstream response body has
//! ended cleanly (see [`crate::body::ProxyBody`]); a broken or abandoned body closes it
//! instead. The list is last-in first-out, so the warmest connection is reused first and
//! surplus ones age out; it is bounded in count and each entry in age.

use std::sync::{Mutex, Weak};
use std::time::Duration;

use crate::body::RequestBody;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

/// A bounded list of idle HTTP/1 connections to one endpoint.
#[derive(Debug)]
pub(crate) struct IdleList {
    conns: Mutex<Vec<Idle>>,
    max: usize,
    ttl: Duration,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

impl IdleList {
    pub(crate) fn new(max: usize, ttl: Duration) -> Self {
        Self {
            conns: Mutex::new(Vec::new()),
            max,
            ttl,
        }
    }

    /// Takes the most recently returned connection that is still open and not expired.
    ///
    /// A connection whose previous exchange is still finishing (its request body still
    /// streaming) is kept for later rather than waited on.
    pub(crate) fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let mut i = conns.len();
        while i > 0 {
            i -= 1;
            let idle = &conns[i];
            if idle.sender.is_closed() || now.saturating_duration_since(idle.since) > self.ttl {
                conns.swap_remove(i);
                continue;
            }
            if idle.sender.is_ready() {
                return Some(conns.swap_remove(i).sender);
            }
            // Still finishing its previous exchange (another client's request body is still
            // uploading): never make this request wait on it; it stays for later.
        }
        None
    }

    /// Returns a connection for reuse, unless the list is full or the connection closed.
    pub(crate) fn give_back(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() < self.max {
            conns.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Drops connections idle for longer than the TTL or already closed; returns how many
    /// remain.
    pub(crate) fn evict_expired(&self) -> usize {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| {
            !c.sender.is_closed() && now.saturating_duration_since(c.since) <= self.ttl
        });
        conns.len()
    }
}

/// Gives an HTTP/1 connection back to its idle list once its response has ended.
#[derive(Debug)]
pub(crate) struct Returner {
    sender: SendRequest<RequestBody>,
    list: Weak<IdleList>,
}

impl Returner {
    pub(crate) fn new(sender: SendRequest<RequestBody>, list: Weak<IdleList>) -> Self {
        Self { sender, list }
    }

    pub(crate) fn give_back(self) {
        if let Some(list) = self.list.upgrade() {
            list.give_back(self.sender);
        }
    }
}
