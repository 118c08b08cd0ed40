//! Idle HTTP/1 upstream connections kept for reuse.
//!
//! A connection goes back to its endpoint's idle list when the upstream response body has
//! ended cleanly ([`UpstreamBody`] carries the hook); a broken or abandoned body closes it
//! instead. The list is last-in first-out, so the warmest connection is reused first and
//! surplus ones age out; it is bounded in count and each entry in age.

use std::pin::Pin;
use std::sync::{Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::body::RequestBody;

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

pin_project! {
    /// An upstream response body; for HTTP/1, it gives its connection back to the pool when
    /// it ends cleanly, and lets it close when it breaks or is abandoned.
    #[derive(Debug)]
    pub struct UpstreamBody {
        #[pin]
        body: Incoming,
        on_eos: Option<Returner>,
    }
}

impl UpstreamBody {
    /// An upstream body with no connection to return.
    pub fn new(body: Incoming) -> Self {
        Self { body, on_eos: None }
    }

    pub(crate) fn returning(body: Incoming, returner: Returner) -> Self {
        if body.is_end_stream() {
            returner.give_back();
            Self::new(body)
        } else {
            Self {
                body,
                on_eos: Some(returner),
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) | Poll::Ready(None) => {
                // hyper stops polling once `is_end_stream` is true, so the last frame, not
                // only the final `None`, returns the connection.
                let ended = matches!(polled, Poll::Ready(None)) || this.body.is_end_stream();
                if ended && let Some(r) = this.on_eos.take() {
                    r.give_back();
                }
            }
            // A broken upstream body: never reuse that connection.
            Poll::Ready(Some(Err(_))) => drop(this.on_eos.take()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
