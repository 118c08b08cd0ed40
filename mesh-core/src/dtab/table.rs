//! Delegation tables: ordered rewrite rules from path prefixes to name trees.
//!
//! [`Dtab::lookup`] is one rewrite step, exactly as Finagle's `Dtab.lookup`: dentries are
//! tried from the **last** to the first, and a dentry matches by position (its prefix's
//! labels, `*` matching any one), not by how long its prefix is. Every matching dentry's tree
//! is rewritten by appending the part of the path its prefix did not consume (the
//! *residual*) to each leaf; several matches become an alternation, later dentry first, so a
//! later dentry overrides an earlier one but falls back to it when it is negative. That is
//! why appending dentries (a request's `l5d-dtab`) is how a route is overridden.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use super::ParseError;
use super::parse::Parser;
use super::path::{Path, Prefix};
use super::tree::NameTree;

/// One rule of a dtab: paths starting with `prefix` are rewritten to `dst`.
#[derive(Clone, PartialEq, Debug)]
pub struct Dentry {
    /// The paths this dentry applies to.
    pub prefix: Prefix,
    /// What they are rewritten to (before the residual is appended).
    pub dst: NameTree<Path>,
}

impl Dentry {
    /// Parses one dentry, `prefix=>tree`.
    ///
    /// # Errors
    ///
    /// A [`ParseError`] naming the byte offset of the first character that does not fit.
    pub fn read(s: &str) -> Result<Dentry, ParseError> {
        Parser::new(s)?.all(Parser::dentry)
    }

    /// `dst` with `path`'s residual appended to every leaf, or `None` when `path` does not
    /// start with `prefix`.
    pub fn rewrite(&self, path: &Path) -> Option<NameTree<Path>> {
        if !self.prefix.matches(path) {
            return None;
        }
        let residual = path.drop(self.prefix.len());
        Some(self.dst.map_ref(|leaf| leaf.concat(&residual)))
    }
}

impl fmt::Display for Dentry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=>{}", self.prefix, self.dst)
    }
}

impl FromStr for Dentry {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dentry::read(s)
    }
}

/// An ordered list of dentries; later ones take precedence.
///
/// Cheap to clone (one `Arc`), and `Eq + Hash` so it can key a cache of bindings. Equality
/// is structural (weights compared as numbers); a dtab built by hand with a NaN weight is
/// not equal to itself.
#[derive(Clone, Default)]
pub struct Dtab(Arc<[Dentry]>);

impl Dtab {
    /// A dtab of these dentries, in order.
    pub fn new(dentries: impl IntoIterator<Item = Dentry>) -> Dtab {
        Dtab(dentries.into_iter().collect())
    }

    /// The empty dtab: every lookup is negative.
    pub fn empty() -> Dtab {
        Dtab::default()
    }

    /// Parses `prefix=>tree;…` (whitespace, `#` comments, a trailing `;` and the empty text
    /// are allowed).
    ///
    /// # Errors
    ///
    /// A [`ParseError`] naming the byte offset of the first character that does not fit, or
    /// the input being longer than [`MAX_INPUT_BYTES`](super::MAX_INPUT_BYTES).
    pub fn read(s: &str) -> Result<Dtab, ParseError> {
        Parser::new(s)?.all(Parser::dtab)
    }

    /// The dentries, in order.
    pub fn dentries(&self) -> &[Dentry] {
        &self.0
    }

    /// How many dentries there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `self` followed by `later`, whose dentries take precedence.
    pub fn concat(&self, later: &Dtab) -> Dtab {
        if later.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return later.clone();
        }
        Dtab(self.0.iter().chain(later.0.iter()).cloned().collect())
    }

    /// One rewrite step: `Neg` when no dentry matches, the rewritten tree when one does, an
    /// alternation (later dentry first) when several do.
    pub fn lookup(&self, path: &Path) -> NameTree<Path> {
        let mut matches: Vec<NameTree<Path>> = self
            .lookup_matches(path)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        match matches.len() {
            0 => NameTree::Neg,
            1 => matches.remove(0),
            _ => NameTree::Alt(matches),
        }
    }

    /// Every dentry matching `path`, later first, with its tree rewritten for `path`.
    pub fn lookup_matches(&self, path: &Path) -> Vec<(&Dentry, NameTree<Path>)> {
        self.0
            .iter()
            .rev()
            .filter_map(|d| d.rewrite(path).map(|t| (d, t)))
            .collect()
    }
}

impl PartialEq for Dtab {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Dtab {}

impl Hash for Dtab {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.0.len());
        for d in self.0.iter() {
            d.prefix.hash(state);
            hash_tree(&d.dst, state);
        }
    }
}

fn hash_tree<H: Hasher>(tree: &NameTree<Path>, state: &mut H) {
    match tree {
        NameTree::Leaf(p) => {
            state.write_u8(0);
            p.hash(state);
        }
        NameTree::Alt(ts) => {
            state.write_u8(1);
            state.write_usize(ts.len());
            ts.iter().for_each(|t| hash_tree(t, state));
        }
        NameTree::Union(ws) => {
            state.write_u8(2);
            state.write_usize(ws.len());
            for w in ws {
                // Equal weights hash alike: 0.0 and -0.0 are equal.
                let bits = if w.weight == 0.0 {
                    0
                } else {
                    w.weight.to_bits()
                };
                state.write_u64(bits);
                hash_tree(&w.tree, state);
            }
        }
        NameTree::Neg => state.write_u8(3),
        NameTree::Fail => state.write_u8(4),
        NameTree::Empty => state.write_u8(5),
    }
}

/// The canonical text form, `prefix=>tree` joined by `;`.
impl fmt::Display for Dtab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Dtab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dtab({self})")
    }
}

impl FromStr for Dtab {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dtab::read(s)
    }
}
