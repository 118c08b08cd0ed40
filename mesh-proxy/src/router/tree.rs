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
    /// branch that has endpoints; a union picks one of the leaves it reaches, at random by
    /// weight — each leaf weighted by its innermost union (DESIGN.md §4: nested weights do not
    /// multiply), among the leaves that have endpoints.
    pub(crate) fn pick(&self) -> Pick<'_> {
        if let RouteTree::Leaf(leaf) = self {
            // The common case, without collecting candidates.
            return match leaf.unavailable() {
                None => Pick::Leaf(leaf),
                Some(why) => Pick::Neg(vec![why]),
            };
        }
        match self.reach(1.0) {
            Reach::Leaves(leaves) => {
                let total: f64 = leaves.iter().map(|(w, _)| *w).sum();
                if total <= 0.0 {
                    let names = leaves
                        .iter()
                        .map(|(_, l)| format!("{} has weight 0", l.name.id));
                    return Pick::Neg(names.collect());
                }
                let mut at = fastrand::f64() * total;
                for (w, leaf) in &leaves {
                    if at < *w {
                        return Pick::Leaf(leaf);
                    }
                    at -= w;
                }
                leaves
                    .last()
                    .map_or(Pick::Neg(Vec::new()), |(_, l)| Pick::Leaf(l))
            }
            Reach::Neg(why) => Pick::Neg(why),
            Reach::Fail => Pick::Fail,
            Reach::Empty => Pick::Empty,
            Reach::Error(e) => Pick::Error(e),
        }
    }

    /// The leaves a request may go to now, each with the weight of its innermost union
    /// (`weight` outside any).
    fn reach(&self, weight: f64) -> Reach<'_> {
        match self {
            RouteTree::Leaf(leaf) => match leaf.unavailable() {
                None => Reach::Leaves(vec![(weight, leaf)]),
                Some(why) => Reach::Neg(vec![why]),
            },
            RouteTree::Alt(branches) => {
                let mut why = Vec::new();
                for b in branches {
                    match b.reach(weight) {
                        Reach::Neg(w) => why.extend(w),
                        r => return r,
                    }
                }
                Reach::Neg(why)
            }
            RouteTree::Union(branches) => {
                let mut leaves = Vec::new();
                let mut why = Vec::new();
                let mut other = None;
                for (w, b) in branches {
                    match b.reach(*w) {
                        Reach::Leaves(l) => leaves.extend(l),
                        Reach::Neg(w) => why.extend(w),
                        r => {
                            other.get_or_insert(r);
                        }
                    }
                }
                if leaves.is_empty() {
                    other.unwrap_or(Reach::Neg(why))
                } else {
                    Reach::Leaves(leaves)
                }
            }
            RouteTree::Neg => Reach::Neg(Vec::new()),
            RouteTree::Fail => Reach::Fail,
            RouteTree::Empty => Reach::Empty,
            RouteTree::Error(e) => Reach::Error(e),
        }
    }

    /// Whether binding failed somewhere in the tree (such a route is bound again soon: the
    /// namer may recover).
    pub(crate) fn has_error(&self) -> bool {
        match self {
            RouteTree::Error(_) => true,
            RouteTree::Alt(b) => b.iter().any(RouteTree::has_error),
            RouteTree::Union(b) => b.iter().any(|(_, t)| t.has_error()),
            RouteTree::Leaf(_) | RouteTree::Neg | RouteTree::Fail | RouteTree::Empty => false,
        }
    }
}

/// The leaves a subtree reaches now, or how it ends without any.
enum Reach<'a> {
    Leaves(Vec<(f64, &'a RouteLeaf)>),
    Neg(Vec<String>),
    Fail,
    Empty,
    Error(&'a BindError),
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
