//! Name trees: what a path is rewritten to, and what it finally binds to.
//!
//! A [`NameTree`] combines names with alternation (`|`, fall back to the next branch when one
//! is negative) and weighted union (`&`, balance over every branch that exists), plus three
//! constants: `~` negative (no such name, try elsewhere), `!` fail (stop, do not fall back)
//! and `$` empty (the name exists and has no addresses). The same shape carries unbound
//! paths (`NameTree<Path>`, in a dtab) and bound names (`NameTree<B>`, after
//! [`bind`](super::bind())).
//!
//! [`NameTree::simplified`] and [`NameTree::eval`] follow Finagle's `NameTree.simplify` and
//! `NameTree.eval` (19.5+): a failing or negative branch of a union is dropped, and a union
//! evaluates negative only when no branch is left. One deliberate difference, because mesh
//! keeps weights in the tree instead of stamping them on address metadata: a union that
//! simplifies to a single branch keeps that branch's weight (`Union([0.3 * t])` stays),
//! which is what a Finagle client observes for that branch's addresses.

use std::fmt;
use std::str::FromStr;

use super::ParseError;
use super::parse::Parser;
use super::path::Path;

/// A tree of names combined by alternation and weighted union.
#[derive(Clone, PartialEq, Debug)]
pub enum NameTree<T> {
    /// One name.
    Leaf(T),
    /// Alternation: the first branch that is not negative.
    Alt(Vec<NameTree<T>>),
    /// Weighted union: every branch that is not negative, balanced by weight.
    Union(Vec<Weighted<T>>),
    /// `~`: no such name (an alternation falls back to its next branch).
    Neg,
    /// `!`: the name fails (an alternation stops here).
    Fail,
    /// `$`: the name exists but has no addresses (an alternation stops here).
    Empty,
}

/// A branch of a [`NameTree::Union`] with its weight.
#[derive(Clone, PartialEq, Debug)]
pub struct Weighted<T> {
    /// Relative weight (1.0 when the text gives none).
    pub weight: f64,
    /// The branch.
    pub tree: NameTree<T>,
}

impl<T> Weighted<T> {
    /// The weight of a union branch written without one.
    pub const DEFAULT_WEIGHT: f64 = 1.0;

    /// `tree` with the default weight.
    pub fn new(tree: NameTree<T>) -> Self {
        Weighted {
            weight: Self::DEFAULT_WEIGHT,
            tree,
        }
    }
}

/// How evaluating a subtree ended.
enum Eval {
    Ok,
    Neg,
    Fail,
}

impl<T> NameTree<T> {
    /// The same tree with every leaf replaced by `f(leaf)`.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> NameTree<U> {
        self.map_inner(&mut f)
    }

    fn map_inner<U>(self, f: &mut impl FnMut(T) -> U) -> NameTree<U> {
        match self {
            NameTree::Leaf(t) => NameTree::Leaf(f(t)),
            NameTree::Alt(ts) => NameTree::Alt(ts.into_iter().map(|t| t.map_inner(f)).collect()),
            NameTree::Union(ws) => NameTree::Union(
                ws.into_iter()
                    .map(|w| Weighted {
                        weight: w.weight,
                        tree: w.tree.map_inner(f),
                    })
                    .collect(),
            ),
            NameTree::Neg => NameTree::Neg,
            NameTree::Fail => NameTree::Fail,
            NameTree::Empty => NameTree::Empty,
        }
    }

    /// Like [`map`](Self::map), leaving `self` as it is.
    pub fn map_ref<U>(&self, mut f: impl FnMut(&T) -> U) -> NameTree<U> {
        self.map_ref_inner(&mut f)
    }

    fn map_ref_inner<U>(&self, f: &mut impl FnMut(&T) -> U) -> NameTree<U> {
        match self {
            NameTree::Leaf(t) => NameTree::Leaf(f(t)),
            NameTree::Alt(ts) => NameTree::Alt(ts.iter().map(|t| t.map_ref_inner(f)).collect()),
            NameTree::Union(ws) => NameTree::Union(
                ws.iter()
                    .map(|w| Weighted {
                        weight: w.weight,
                        tree: w.tree.map_ref_inner(f),
                    })
                    .collect(),
            ),
            NameTree::Neg => NameTree::Neg,
            NameTree::Fail => NameTree::Fail,
            NameTree::Empty => NameTree::Empty,
        }
    }

    /// How many nodes (leaves, constants and combinators) the tree has.
    pub fn node_count(&self) -> usize {
        match self {
            NameTree::Alt(ts) => 1 + ts.iter().map(NameTree::node_count).sum::<usize>(),
            NameTree::Union(ws) => 1 + ws.iter().map(|w| w.tree.node_count()).sum::<usize>(),
            _ => 1,
        }
    }

    /// The leaves, left to right.
    pub fn leaves(&self) -> Vec<&T> {
        let mut out = Vec::new();
        self.collect_leaves(&mut out);
        out
    }

    fn collect_leaves<'a>(&'a self, out: &mut Vec<&'a T>) {
        match self {
            NameTree::Leaf(t) => out.push(t),
            NameTree::Alt(ts) => ts.iter().for_each(|t| t.collect_leaves(out)),
            NameTree::Union(ws) => ws.iter().for_each(|w| w.tree.collect_leaves(out)),
            _ => {}
        }
    }

    /// An evaluation-equivalent tree, as Finagle's `NameTree.simplify`: empty combinators
    /// are negative, one-branch alternations are their branch, negative branches are
    /// dropped, an alternation ends at its first failing branch, and failing branches of a
    /// union are dropped. A union left with one branch keeps it weighted when its weight is
    /// not 1 (or, inside another union, always: its leaves keep their innermost weight). The
    /// result is a fixed point: `t.simplified().simplified() == t.simplified()`.
    pub fn simplified(self) -> NameTree<T> {
        self.simplify_in(false)
    }

    /// `in_union`: whether a union encloses this subtree. There a one-branch union must stay
    /// even at weight 1, or its leaves would take the enclosing union's weight instead.
    fn simplify_in(self, in_union: bool) -> NameTree<T> {
        match self {
            NameTree::Alt(mut ts) => {
                if ts.len() <= 1 {
                    return ts.pop().map_or(NameTree::Neg, |t| t.simplify_in(in_union));
                }
                let mut kept = Vec::with_capacity(ts.len());
                for t in ts {
                    match t.simplify_in(in_union) {
                        NameTree::Neg => {}
                        NameTree::Fail => {
                            kept.push(NameTree::Fail);
                            break;
                        }
                        t => kept.push(t),
                    }
                }
                if kept.len() <= 1 {
                    kept.pop().unwrap_or(NameTree::Neg)
                } else {
                    NameTree::Alt(kept)
                }
            }
            NameTree::Union(ws) => {
                if ws.len() == 1 {
                    // Finagle passes a lone branch's result through as is (a failure stays a
                    // failure); its weight still reaches the leaves.
                    return ws.into_iter().next().map_or(NameTree::Neg, |w| {
                        one_branch(w.weight, w.tree.simplify_in(true), in_union)
                    });
                }
                let mut kept: Vec<Weighted<T>> = ws
                    .into_iter()
                    .filter_map(|w| match w.tree.simplify_in(true) {
                        NameTree::Neg | NameTree::Fail => None,
                        tree => Some(Weighted {
                            weight: w.weight,
                            tree,
                        }),
                    })
                    .collect();
                match kept.len() {
                    0 => NameTree::Neg,
                    1 => {
                        let w = kept.remove(0);
                        one_branch(w.weight, w.tree, in_union)
                    }
                    _ => NameTree::Union(kept),
                }
            }
            other => other,
        }
    }

    /// The addresses the tree evaluates to, each with its weight: `None` when the tree is
    /// negative or fails, `Some(vec![])` when it is empty.
    ///
    /// As Finagle's `NameTree.eval`: an alternation is its first non-negative branch (a
    /// failing one fails it); a union is every branch that neither fails nor is negative,
    /// negative when none is left. Weights do not multiply: a leaf takes the weight of the
    /// innermost union around it (1.0 outside any union). A leaf reached twice is listed once,
    /// where it first appears.
    pub fn eval(&self) -> Option<Vec<(T, f64)>>
    where
        T: Clone + PartialEq,
    {
        let mut out = Vec::new();
        match self.eval_into(Weighted::<T>::DEFAULT_WEIGHT, &mut out) {
            Eval::Ok => {
                let mut unique: Vec<(T, f64)> = Vec::with_capacity(out.len());
                for (t, w) in out {
                    if !unique.iter().any(|(u, _)| u == t) {
                        unique.push((t.clone(), w));
                    }
                }
                Some(unique)
            }
            Eval::Neg | Eval::Fail => None,
        }
    }

    fn eval_into<'a>(&'a self, weight: f64, out: &mut Vec<(&'a T, f64)>) -> Eval {
        match self {
            NameTree::Neg => Eval::Neg,
            NameTree::Fail => Eval::Fail,
            NameTree::Empty => Eval::Ok,
            NameTree::Leaf(t) => {
                out.push((t, weight));
                Eval::Ok
            }
            NameTree::Alt(ts) => {
                for t in ts {
                    let mark = out.len();
                    match t.eval_into(weight, out) {
                        Eval::Neg => out.truncate(mark),
                        done => return done,
                    }
                }
                Eval::Neg
            }
            NameTree::Union(ws) if ws.len() == 1 => ws
                .first()
                .map_or(Eval::Neg, |w| w.tree.eval_into(w.weight, out)),
            NameTree::Union(ws) => {
                let mut any = false;
                for w in ws {
                    let mark = out.len();
                    match w.tree.eval_into(w.weight, out) {
                        Eval::Ok => any = true,
                        Eval::Neg | Eval::Fail => out.truncate(mark),
                    }
                }
                if any { Eval::Ok } else { Eval::Neg }
            }
        }
    }
}

/// What a union left with one branch simplifies to: the branch itself when that changes no
/// weight (outside any union, at weight 1), else the one-branch union.
fn one_branch<T>(weight: f64, tree: NameTree<T>, in_union: bool) -> NameTree<T> {
    match tree {
        t @ (NameTree::Neg | NameTree::Fail) => t,
        t if weight == Weighted::<T>::DEFAULT_WEIGHT && !in_union => without_unit_unions(t),
        tree => NameTree::Union(vec![Weighted { weight, tree }]),
    }
}

/// A tree outside any union with its one-branch, weight-1 unions unwrapped: they weigh their
/// leaves 1, as no union does, so `simplified` reaches a fixed point in one pass.
fn without_unit_unions<T>(tree: NameTree<T>) -> NameTree<T> {
    match tree {
        NameTree::Union(mut ws)
            if ws.len() == 1 && ws[0].weight == Weighted::<T>::DEFAULT_WEIGHT =>
        {
            ws.pop()
                .map_or(NameTree::Neg, |w| without_unit_unions(w.tree))
        }
        NameTree::Alt(ts) => NameTree::Alt(ts.into_iter().map(without_unit_unions).collect()),
        t => t,
    }
}

impl NameTree<Path> {
    /// Parses a tree such as `/a & 0.5*/b | ~`.
    ///
    /// # Errors
    ///
    /// A [`ParseError`] naming the byte offset of the first character that does not fit.
    pub fn read(s: &str) -> Result<Self, ParseError> {
        Parser::new(s)?.all(Parser::tree)
    }
}

impl FromStr for NameTree<Path> {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NameTree::read(s)
    }
}

/// A weight as the text form writes it, or `None` when it shows as 1 (and is left out).
fn shown_weight(weight: f64) -> Option<String> {
    let text = format!("{weight:.2}");
    (text != "1.00").then_some(text)
}

/// A tree that prints as something else: an empty combinator (as `~`, which it is
/// equivalent to) or a single branch that shows no weight (as that branch).
fn print_as<T>(tree: &NameTree<T>) -> Option<&NameTree<T>> {
    match tree {
        NameTree::Alt(ts) if ts.len() == 1 => ts.first(),
        NameTree::Union(ws) if ws.len() == 1 && shown_weight(ws[0].weight).is_none() => {
            ws.first().map(|w| &w.tree)
        }
        _ => None,
    }
}

fn is_empty_combinator<T>(tree: &NameTree<T>) -> bool {
    match tree {
        NameTree::Alt(ts) => ts.is_empty(),
        NameTree::Union(ws) => ws.is_empty(),
        _ => false,
    }
}

/// Where a subtree is printed, which decides whether it needs parentheses.
#[derive(Clone, Copy, PartialEq)]
enum Position {
    /// The whole tree, or inside parentheses.
    Top,
    /// A branch of an alternation.
    AltBranch,
    /// A branch of a union.
    UnionBranch,
}

fn show<T: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    tree: &NameTree<T>,
    at: Position,
) -> fmt::Result {
    if let Some(inner) = print_as(tree) {
        return show(f, inner, at);
    }
    if is_empty_combinator(tree) {
        return f.write_str("~");
    }
    match tree {
        NameTree::Leaf(t) => write!(f, "{t}"),
        NameTree::Neg => f.write_str("~"),
        NameTree::Fail => f.write_str("!"),
        NameTree::Empty => f.write_str("$"),
        NameTree::Alt(ts) if at == Position::Top => {
            for (i, t) in ts.iter().enumerate() {
                if i > 0 {
                    f.write_str(" | ")?;
                }
                show(f, t, Position::AltBranch)?;
            }
            Ok(())
        }
        NameTree::Union(ws) if at != Position::UnionBranch => {
            for (i, w) in ws.iter().enumerate() {
                if i > 0 {
                    f.write_str(" & ")?;
                }
                if let Some(weight) = shown_weight(w.weight) {
                    write!(f, "{weight}*")?;
                }
                show(f, &w.tree, Position::UnionBranch)?;
            }
            Ok(())
        }
        // An alternation inside anything, or a union inside a union.
        _ => {
            f.write_str("(")?;
            show(f, tree, Position::Top)?;
            f.write_str(")")
        }
    }
}

/// The canonical text form: ` | ` and ` & ` between branches, a weight as `0.70*` only
/// when it does not show as 1, parentheses only where reading the text back needs them.
impl<T: fmt::Display> fmt::Display for NameTree<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        show(f, self, Position::Top)
    }
}
