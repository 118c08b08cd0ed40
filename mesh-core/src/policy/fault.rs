//! Fault injection for chaos tests in staging: a share of a route's requests delayed, a share
//! answered with an error the upstream never saw (Envoy's `fault` filter; DESIGN.md §4).
//!
//! An injected abort is the proxy's own answer, made above the retry loop: it is counted in
//! its own metric and never retried by the same proxy.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, StatusCode};

use crate::errors::GrpcCode;

/// A route's faults.
#[derive(Clone, Debug, Default)]
pub struct Fault {
    /// Delay this share of requests.
    pub delay: Option<(Duration, Percent)>,
    /// Answer this share of requests with this status (gRPC calls: this code).
    pub abort: Option<(StatusCode, GrpcCode, Percent)>,
    /// Only requests carrying this header (and value, if given).
    pub only_with: Option<(HeaderName, Option<HeaderValue>)>,
}

/// A share of requests, 0–100.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percent(f64);

impl Percent {
    /// `p` percent; `None` outside 0–100.
    pub fn new(p: f64) -> Option<Self> {
        (0.0..=100.0).contains(&p).then_some(Self(p))
    }

    /// Whether this request is in the share (a fresh draw each time).
    pub fn draw(self) -> bool {
        fastrand::f64() * 100.0 < self.0
    }
}

/// What a fault does to one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Injected {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer this instead of forwarding.
    pub abort: Option<(StatusCode, GrpcCode)>,
}

impl Fault {
    /// Draws this request's faults.
    pub fn draw<B>(&self, req: &Request<B>) -> Injected {
        let applies = match &self.only_with {
            None => true,
            Some((name, None)) => req.headers().contains_key(name),
            Some((name, Some(value))) => req.headers().get(name) == Some(value),
        };
        if !applies {
            return Injected {
                delay: None,
                abort: None,
            };
        }
        Injected {
            delay: self.delay.and_then(|(d, p)| p.draw().then_some(d)),
            abort: self.abort.and_then(|(s, g, p)| p.draw().then_some((s, g))),
        }
    }
}

/// The error an injected abort answers with (status and gRPC code from the fault).
#[derive(Debug, thiserror::Error)]
#[error("fault injected: {0}")]
pub struct InjectedFault(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_drawn_per_request_and_header_scoped() {
        let f = Fault {
            delay: Some((Duration::from_millis(5), Percent::new(25.0).expect("share"))),
            abort: Some((
                StatusCode::SERVICE_UNAVAILABLE,
                GrpcCode::Unavailable,
                Percent::new(10.0).expect("share"),
            )),
            only_with: None,
        };
        let req = Request::new(());
        let (mut delayed, mut aborted) = (0, 0);
        for _ in 0..20_000 {
            let i = f.draw(&req);
            delayed += usize::from(i.delay.is_some());
            aborted += usize::from(i.abort.is_some());
        }
        assert!((4400..=5600).contains(&delayed), "{delayed}");
        assert!((1600..=2400).contains(&aborted), "{aborted}");
        let scoped = Fault {
            only_with: Some((HeaderName::from_static("x-chaos"), None)),
            ..f
        };
        for _ in 0..1000 {
            assert_eq!(scoped.draw(&req).abort, None);
        }
        assert!(Percent::new(101.0).is_none());
    }
}
