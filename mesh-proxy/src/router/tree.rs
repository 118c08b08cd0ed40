//! A bound route: the name tree a logical name delegated to, with each leaf's concrete stack,
//! and the per-request choice of one leaf.
//!
//! Binding follows Finagle (DESIGN.md §4), but the proxy keeps *every* branch of an
//! alternation bound, not only the first non-negative one: a branch whose name loses all its
//! endpoints (a file emptied, a record removed) is then skipped at request time, and taken
//! again when its endpoints return, without binding anew. A weighted union picks one branch
//! per request at random by weight, among the branches that have endpoints; each branch is
//! its own concrete destination with its own balancer, so a slow branch never queues the
//! others' requests.

use std::sync::Arc;

use mesh_core::dtab::{BindError, Explanation, Node};
use mesh_core::resolve::Resolution;

use super::binder::{BoundName, BoundTarget};
use crate::stack::ConcreteStack;

/// A bound name tree whose leaves are concrete stacks.
#[derive(Clone, Debug)]
pub(crate) enum RouteTree {
    Leaf(Arc<RouteLeaf>),
    Alt(Vec<RouteTree>),
    Union(Vec<(f64, RouteTree)>),
    Neg,
    Fail,
    Empty,
    Error(Arc<BindError>),
}

/// One bound name and the stack its requests go through.
#[derive(Debug)]
pub(crate) struct RouteLeaf {
    pub(crate) name: BoundName,
    pub(crate) concrete: ConcreteStack,
}

/// What a request gets from a route.
pub(crate) enum Pick<'a> {
    /// This leaf.
    Leaf(&'a RouteLeaf),
    /// Nothing binds (with, for each bound name skipped, why: "/#/fs/x has no endpoints").
    Neg(Vec<String>),
    /// An explicit failure (`!`, `/$/fail`).
    Fail,
    /// An explicit empty set (`$`, `/$/nil`).
    Empty,
    /// Binding failed.
    Error(&'a BindError),
}

impl RouteTree {
    /// The tree of a delegation, with each bound name's stack from `concrete`.
    pub(crate) fn from_explanation(
        e: &Explanation<BoundName>,
        concrete: &mut impl FnMut(&BoundName) -> ConcreteStack,
    ) -> RouteTree {
        match &e.node {
            Node::Neg => RouteTree::Neg,
            Node::Fail => RouteTree::Fail,
            Node::Empty => RouteTree::Empty,
            Node::Error(error) => RouteTree::Error(Arc::new(error.clone())),
            Node::Bound(name) => RouteTree::Leaf(Arc::new(RouteLeaf {
                name: name.clone(),
                concrete: concrete(name),
            })),
            Node::Delegate(next) => RouteTree::from_explanation(next, concrete),
            Node::Alt(branches) => {
                let mut kept = Vec::new();
                for b in branches {
                    match RouteTree::from_explanation(b, concrete) {
                        RouteTree::Neg => {}
                        // A failure or an error ends the alternation where it is reached.
                        t @ (RouteTree::Fail | RouteTree::Error(_)) => {
                            kept.push(t);
                            break;
                        }
                        t => kept.push(t),
                    }
                }
                match kept.len() {
                    0 => RouteTree::Neg,
                    1 => kept.pop().unwrap_or(RouteTree::Neg),
                    _ => RouteTree::Alt(kept),
                }
            }
            Node::Union(branches) => {
                let mut kept = Vec::new();
                let mut first_error = None;
                let mut any_ok = false;
                for (w, b) in branches {
                    match RouteTree::from_explanation(b, concrete) {
                        RouteTree::Error(e) => {
                            first_error.get_or_insert(e);
                        }
                        RouteTree::Neg | RouteTree::Fail => any_ok = true,
                        t => {
                            any_ok = true;
                            kept.push((*w, t));
                        }
                    }
                }
                match (kept.is_empty(), any_ok, first_error) {
                    // Only errors: the first one (Finagle's union of failed bindings).
                    (true, false, Some(e)) => RouteTree::Error(e),
                    (true, _, _) => RouteTree::Neg,
                    _ => RouteTree::Union(kept),
                }
            }
        }
    }

    /// Chooses where one request goes, as things are now: an alternation takes its first
    /// branch that has endpoints; a union picks among its branches that have endpoints, by
    /// weight.
    pub(crate) fn pick(&self) -> Pick<'_> {
        match self {
            RouteTree::Leaf(leaf) => match leaf.unavailable() {
                None => Pick::Leaf(leaf),
                Some(why) => Pick::Neg(vec![why]),
            },
            RouteTree::Alt(branches) => {
                let mut empty = Vec::new();
                for b in branches {
                    match b.pick() {
                        Pick::Neg(names) => empty.extend(names),
                        p => return p,
                    }
                }
                Pick::Neg(empty)
            }
            RouteTree::Union(branches) => {
                let mut picks = Vec::with_capacity(branches.len());
                let mut empty = Vec::new();
                let mut total = 0.0;
                let mut other = None;
                for (w, b) in branches {
                    match b.pick() {
                        Pick::Leaf(l) if *w > 0.0 => {
                            total += w;
                            picks.push((*w, l));
                        }
                        Pick::Leaf(l) => empty.push(format!("{} has weight 0", l.name.id)),
                        Pick::Neg(names) => empty.extend(names),
                        p => {
                            other.get_or_insert(p);
                        }
                    }
                }
                if picks.is_empty() {
                    return other.unwrap_or(Pick::Neg(empty));
                }
                let mut at = fastrand::f64() * total;
                for (w, leaf) in &picks {
                    if at < *w {
                        return Pick::Leaf(leaf);
                    }
                    at -= w;
                }
                picks
                    .last()
                    .map_or(Pick::Neg(empty), |(_, l)| Pick::Leaf(l))
            }
            RouteTree::Neg => Pick::Neg(Vec::new()),
            RouteTree::Fail => Pick::Fail,
            RouteTree::Empty => Pick::Empty,
            RouteTree::Error(e) => Pick::Error(e),
        }
    }
}

impl RouteLeaf {
    /// Why requests cannot go here now, if they cannot. A literal address always takes
    /// them; a resolved name while it has endpoints or is still waiting for its first answer
    /// (its balancer then waits, up to its fail-fast timeout).
    fn unavailable(&self) -> Option<String> {
        let BoundTarget::Resolved(rx) = &self.name.target else {
            return None;
        };
        match &*rx.borrow() {
            Resolution::Pending => None,
            Resolution::Endpoints(set) if !set.is_empty() => None,
            Resolution::Endpoints(_) => Some(format!("{} has no endpoints", self.name.id)),
            Resolution::DoesNotExist(why) => {
                Some(format!("{} does not exist ({why})", self.name.id))
            }
        }
    }
}

impl RouteTree {
    /// Looks up each leaf's concrete stack in the listener's cache, so a stack a live route
    /// uses is not forgotten there.
    pub(crate) fn touch(&self, targets: &crate::stack::Targets) {
        match self {
            RouteTree::Leaf(leaf) => targets.touch(&leaf.name),
            RouteTree::Alt(b) => b.iter().for_each(|t| t.touch(targets)),
            RouteTree::Union(b) => b.iter().for_each(|(_, t)| t.touch(targets)),
            RouteTree::Neg | RouteTree::Fail | RouteTree::Empty | RouteTree::Error(_) => {}
        }
    }
}
