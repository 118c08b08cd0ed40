//! Binding: rewriting a path through a dtab until every leaf is bound by a namer.
//!
//! [`delegate`] does the whole binding eagerly and records every step as an
//! [`Explanation`] (Linkerd 1's `DelegateTree`, what its `/delegator` page shows);
//! [`Explanation::result`] then reads Finagle's bind result off it. Doing it in that order
//! means the proxy and the operator's `meshctl dtab delegate` share one implementation, and
//! the proxy can fall back through an alternation at request time because every branch has
//! already been bound.
//!
//! A path is looked up in the dtab; a path no dentry matches goes to the namers: `/#/…` to
//! the [`Binder`]'s configured namers, `/$/inet/<host>/<port>` to the binder's address
//! resolution, `/$/fail…` and `/$/nil…` to fail and empty, any other `/$/<kind>` is an
//! error, and anything else is negative. Work is bounded twice: [`MAX_DEPTH`] rewrites of
//! one path (Finagle's `namerMaxDepth`), and [`MAX_BIND_STEPS`] nodes for the whole
//! explanation, since `/a=>/b & /b; /b=>/c & /c; …` doubles at every step.

use std::fmt;

use super::path::Path;
use super::table::{Dentry, Dtab};
use super::tree::{NameTree, Weighted};
use super::{MAX_BIND_STEPS, MAX_DEPTH};

/// Binds the paths a dtab leaves to a namer.
pub trait Binder {
    /// What a bound name is (e.g. a handle on an endpoint set).
    type Bound: Clone + fmt::Debug;

    /// A `/#/NAME/...` path the dtab did not rewrite: `Ok(None)` = no such namer (neg).
    ///
    /// # Errors
    ///
    /// The namer's own failure, as [`BindError::Namer`].
    fn bind_namer(&self, path: &Path) -> Result<Option<Self::Bound>, BindError>;

    /// `/$/inet/<host>/<port>[/residual]` (also `/$/inet/<port>` = localhost, `host` empty).
    ///
    /// # Errors
    ///
    /// The binder's own failure, as [`BindError::Namer`].
    fn bind_inet(&self, host: &str, port: u16, residual: &Path) -> Result<Self::Bound, BindError>;
}

/// Why a path could not be bound.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BindError {
    /// The path was rewritten [`MAX_DEPTH`] times without reaching a namer (usually a loop).
    #[error("max delegation depth {MAX_DEPTH} reached at {path}")]
    Depth {
        /// The path that would have been rewritten once too often.
        path: Path,
    },
    /// Binding would create more than [`MAX_BIND_STEPS`] nodes.
    #[error("binding {path} takes more than {MAX_BIND_STEPS} steps")]
    TooLarge {
        /// The path being bound when the budget ran out.
        path: Path,
    },
    /// `/$/<kind>` with a kind other than `inet`, `fixedinet`, `fail` and `nil`, or
    /// `/$/inet` without a numeric port.
    #[error("unknown built-in name {path} (expected /$/inet/<host>/<port>, /$/fail or /$/nil)")]
    UnknownBuiltin {
        /// The path.
        path: Path,
    },
    /// A [`Binder`]'s own failure.
    #[error("{path}: {message}")]
    Namer {
        /// The path the binder was asked about.
        path: Path,
        /// What went wrong.
        message: String,
    },
}

/// One step of a binding: the path at this step, the dentry that produced it, and how it
/// went on.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation<B> {
    /// The path bound at this step (for a combinator, the path whose rewrite it is).
    pub path: Path,
    /// The dentry whose rewrite produced this step, if one did.
    pub dentry: Option<Dentry>,
    /// How the step went on.
    pub node: Node<B>,
}

/// How a step of a binding went on.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<B> {
    /// Negative: no dentry and no namer knew the path (or the dentry said `~`).
    Neg,
    /// Failed (`!` or `/$/fail`): alternation stops here.
    Fail,
    /// Empty (`$` or `/$/nil`): exists, no addresses; alternation stops here.
    Empty,
    /// Binding failed.
    Error(BindError),
    /// A namer or `/$/inet` bound it.
    Bound(B),
    /// The path was rewritten by one dentry (recorded in the child's `dentry`).
    Delegate(Box<Explanation<B>>),
    /// Several dentries matched (later first), or an alternation in a dentry's tree.
    Alt(Vec<Explanation<B>>),
    /// A union in a dentry's tree, with each branch's weight.
    Union(Vec<(f64, Explanation<B>)>),
}

/// Binds `path` through `dtab` and `binder`, recording every step. Binds all branches of an
/// alternation eagerly (the proxy falls back at request time), bounded by
/// [`MAX_BIND_STEPS`] and [`MAX_DEPTH`].
pub fn delegate<B: Binder>(dtab: &Dtab, path: &Path, binder: &B) -> Explanation<B::Bound> {
    let mut run = Run {
        dtab,
        binder,
        steps: 0,
        exhausted: false,
        level: 0,
    };
    run.path(path.clone(), None, 0)
}

/// Finagle's bind of `path` through `dtab` and `binder`: `delegate(..).result()`.
///
/// # Errors
///
/// As [`Explanation::result`].
pub fn bind<B: Binder>(
    dtab: &Dtab,
    path: &Path,
    binder: &B,
) -> Result<NameTree<B::Bound>, BindError> {
    delegate(dtab, path, binder).result()
}

/// One binding in progress: the budget it has used.
struct Run<'a, B> {
    dtab: &'a Dtab,
    binder: &'a B,
    steps: usize,
    exhausted: bool,
    /// How deeply the explanation under construction nests right now.
    level: usize,
}

/// How deeply an explanation may nest (rewrites plus combinators inside dentries) before
/// binding fails with [`BindError::TooLarge`]. Finagle bounds only the rewrites; this keeps
/// everything that walks an explanation recursively within a 2 MiB stack even when every
/// one of the 100 rewrites goes through deeply nested parentheses. A legitimate chain of 99
/// rewrites nests 100 deep.
const MAX_LEVELS: usize = 4 * MAX_DEPTH;

impl<B: Binder> Run<'_, B> {
    /// Spends `n` steps; false once the budget is gone.
    fn charge(&mut self, n: usize) -> bool {
        self.steps = self.steps.saturating_add(n);
        if self.steps > MAX_BIND_STEPS {
            self.exhausted = true;
        }
        !self.exhausted
    }

    fn too_large(path: Path, dentry: Option<Dentry>) -> Explanation<B::Bound> {
        Explanation {
            node: Node::Error(BindError::TooLarge { path: path.clone() }),
            path,
            dentry,
        }
    }

    /// Binds a path reached after `depth` rewrites.
    fn path(&mut self, path: Path, dentry: Option<Dentry>, depth: usize) -> Explanation<B::Bound> {
        if self.level >= MAX_LEVELS {
            self.exhausted = true;
        }
        self.level += 1;
        let e = self.path_inner(path, dentry, depth);
        self.level -= 1;
        e
    }

    fn path_inner(
        &mut self,
        path: Path,
        dentry: Option<Dentry>,
        depth: usize,
    ) -> Explanation<B::Bound> {
        if !self.charge(1) {
            return Self::too_large(path, dentry);
        }
        // Finagle checks the depth of the tree a lookup returns: the 101st lookup's result
        // is past the limit whatever it is.
        if depth >= MAX_DEPTH {
            return Explanation {
                node: Node::Error(BindError::Depth { path: path.clone() }),
                path,
                dentry,
            };
        }
        let dtab = self.dtab;
        let mut matches = dtab.lookup_matches(&path);
        let node = match matches.len() {
            0 => self.builtin(&path),
            // Finagle's lookup returns the one match's tree itself: a dentry rewriting to `~`
            // is a negative lookup, which the namers are then asked about.
            1 if matches.first().is_some_and(|(_, t)| *t == NameTree::Neg) => self.builtin(&path),
            1 => {
                let (d, tree) = matches.remove(0);
                Node::Delegate(Box::new(self.rewritten(d, tree, &path, depth + 1)))
            }
            _ => {
                let mut alts = Vec::with_capacity(matches.len());
                for (d, tree) in matches {
                    alts.push(self.rewritten(d, tree, &path, depth + 1));
                    if self.exhausted {
                        break;
                    }
                }
                Node::Alt(alts)
            }
        };
        Explanation { path, dentry, node }
    }

    /// Binds the tree dentry `d` rewrote `origin` to.
    fn rewritten(
        &mut self,
        d: &Dentry,
        tree: NameTree<Path>,
        origin: &Path,
        depth: usize,
    ) -> Explanation<B::Bound> {
        // Every step records its dentry, so a wide dentry costs its size each time.
        if !self.charge(d.dst.node_count()) {
            return Self::too_large(origin.clone(), Some(d.clone()));
        }
        self.tree(tree, origin, Some(d.clone()), depth)
    }

    fn tree(
        &mut self,
        tree: NameTree<Path>,
        origin: &Path,
        dentry: Option<Dentry>,
        depth: usize,
    ) -> Explanation<B::Bound> {
        if let NameTree::Leaf(path) = tree {
            return self.path(path, dentry, depth);
        }
        if self.level >= MAX_LEVELS {
            self.exhausted = true;
        }
        if !self.charge(1) {
            return Self::too_large(origin.clone(), dentry);
        }
        self.level += 1;
        let node = self.combinator(tree, origin, depth);
        self.level -= 1;
        Explanation {
            path: origin.clone(),
            dentry,
            node,
        }
    }

    fn combinator(&mut self, tree: NameTree<Path>, origin: &Path, depth: usize) -> Node<B::Bound> {
        match tree {
            NameTree::Leaf(_) | NameTree::Neg => Node::Neg,
            NameTree::Fail => Node::Fail,
            NameTree::Empty => Node::Empty,
            NameTree::Alt(ts) => {
                let mut alts = Vec::with_capacity(ts.len());
                for t in ts {
                    alts.push(self.tree(t, origin, None, depth));
                    if self.exhausted {
                        break;
                    }
                }
                Node::Alt(alts)
            }
            NameTree::Union(ws) => {
                let mut branches = Vec::with_capacity(ws.len());
                for w in ws {
                    branches.push((w.weight, self.tree(w.tree, origin, None, depth)));
                    if self.exhausted {
                        break;
                    }
                }
                Node::Union(branches)
            }
        }
    }

    /// A path no dentry matched: the built-in and configured namers.
    fn builtin(&mut self, path: &Path) -> Node<B::Bound> {
        let into_node = |r: Result<Option<B::Bound>, BindError>| match r {
            Ok(Some(b)) => Node::Bound(b),
            Ok(None) => Node::Neg,
            Err(e) => Node::Error(e),
        };
        match (path.label(0), path.label(1)) {
            (Some(b"$"), Some(b"inet" | b"fixedinet")) => match inet(path) {
                Some((host, port, residual)) => {
                    into_node(self.binder.bind_inet(host, port, &residual).map(Some))
                }
                None => Node::Error(BindError::UnknownBuiltin { path: path.clone() }),
            },
            (Some(b"$"), Some(b"fail")) => Node::Fail,
            (Some(b"$"), Some(b"nil")) => Node::Empty,
            (Some(b"$"), Some(_)) => Node::Error(BindError::UnknownBuiltin { path: path.clone() }),
            (Some(b"#"), Some(_)) => into_node(self.binder.bind_namer(path)),
            _ => Node::Neg,
        }
    }
}

/// `/$/inet/<host>/<port>/residual…` or `/$/inet/<port>/residual…` (host empty), tried in
/// that order as Finagle does.
fn inet(path: &Path) -> Option<(&str, u16, Path)> {
    let port = |i: usize| path.label_str(i).and_then(|s| s.parse::<u16>().ok());
    if let (Some(host), Some(port)) = (path.label_str(2), port(3)) {
        return Some((host, port, path.drop(4)));
    }
    port(2).map(|port| ("", port, path.drop(3)))
}

impl<B: Clone> Explanation<B> {
    /// Finagle's bind result, read off the explanation: an alternation is its first
    /// non-negative branch (a failing or empty branch stops it; an error propagates only if
    /// reached); a union drops its negative, failing and erroring branches (an error only
    /// counts when every branch erred; a union of only negative or failing branches is
    /// negative), and a single surviving branch keeps its weight. The tree is simplified.
    ///
    /// # Errors
    ///
    /// [`BindError::TooLarge`] whenever the binding ran out of steps anywhere (a partial
    /// answer would silently drop branches); otherwise the error that decided the result.
    pub fn result(&self) -> Result<NameTree<B>, BindError> {
        if let Some(e) = self.find_too_large() {
            return Err(e.clone());
        }
        Ok(self.bound()?.simplified())
    }

    /// The [`BindError::TooLarge`] that cut this binding short, if any: a binding that ran
    /// out of steps is unusable as a whole, even where the cut branch sits in a union.
    pub fn find_too_large(&self) -> Option<&BindError> {
        match &self.node {
            Node::Error(e @ BindError::TooLarge { .. }) => Some(e),
            Node::Delegate(c) => c.find_too_large(),
            Node::Alt(cs) => cs.iter().find_map(Explanation::find_too_large),
            Node::Union(ws) => ws.iter().find_map(|(_, c)| c.find_too_large()),
            _ => None,
        }
    }

    fn bound(&self) -> Result<NameTree<B>, BindError> {
        match &self.node {
            Node::Neg => Ok(NameTree::Neg),
            Node::Fail => Ok(NameTree::Fail),
            Node::Empty => Ok(NameTree::Empty),
            Node::Error(e) => Err(e.clone()),
            Node::Bound(b) => Ok(NameTree::Leaf(b.clone())),
            Node::Delegate(c) => c.bound(),
            Node::Alt(cs) => {
                for c in cs {
                    match c.bound()? {
                        NameTree::Neg => continue,
                        t => return Ok(t),
                    }
                }
                Ok(NameTree::Neg)
            }
            Node::Union(ws) => {
                let mut kept = Vec::with_capacity(ws.len());
                let mut first_error = None;
                let mut any_ok = false;
                for (weight, c) in ws {
                    match c.bound() {
                        // Finagle binds a lone branch in place: its failure stays a failure.
                        Ok(NameTree::Fail) if ws.len() == 1 => return Ok(NameTree::Fail),
                        Ok(NameTree::Neg | NameTree::Fail) => any_ok = true,
                        Ok(tree) => {
                            any_ok = true;
                            kept.push(Weighted {
                                weight: *weight,
                                tree,
                            });
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                // Left unsimplified: `result` simplifies the whole tree once, so that a
                // union inside a union keeps the weight its leaves take.
                match first_error {
                    Some(e) if !any_ok => Err(e),
                    _ if kept.is_empty() => Ok(NameTree::Neg),
                    _ => Ok(NameTree::Union(kept)),
                }
            }
        }
    }
}
