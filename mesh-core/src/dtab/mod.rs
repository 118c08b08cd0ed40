//! Delegation tables (dtabs): Finagle's and Linkerd 1's way of naming services.
//!
//! A request is named by a [`Path`] (`/svc/web`); a [`Dtab`] of rewrite rules
//! (`/svc=>/#/fs; /svc/web=>/svc/web-v2`) turns it, step by step, into a [`NameTree`] of
//! names that namers can resolve (`/#/fs/web-v2`, `/$/inet/10.0.0.1/8080`). Trees say how
//! to combine them: `|` falls back to the next branch when one does not exist, `&` balances
//! over several, weighted (`0.9*/a & 0.1*/b`).
//!
//! mesh implements this **exactly as Finagle 19.5+ does** (grammar, lookup order, binding
//! and evaluation, corner cases included), so dtabs written for Linkerd 1 or namerd mean the
//! same thing here. Everything in this module is pure: no I/O, no clocks; binding asks a
//! [`Binder`] for what only the running proxy knows (its configured namers).
//!
//! - [`path`]: paths and dentry prefixes;
//! - [`tree`]: name trees, their simplification and evaluation;
//! - [`table`]: dentries, dtabs and the one-step [`Dtab::lookup`];
//! - the text form and its [grammar](self#grammar), bounded against hostile input;
//! - [`bind`](mod@bind): binding through namers, recorded as an [`Explanation`];
//! - [`explain`]: explanations for people and as JSON (`/delegator.json`).
//!
//! Every input a peer controls is bounded: text by [`MAX_INPUT_BYTES`] and
//! [`MAX_NESTING`], binding by [`MAX_DEPTH`] rewrites and [`MAX_BIND_STEPS`] nodes.
//!
//! # Grammar
//!
//! ```text
//! dtab     ::= [dentry (';' dentry)* [';']]
//! dentry   ::= prefix '=>' tree
//! prefix   ::= '/' | ('/' ('*' | label))+
//! tree     ::= tree1 ('|' tree1)*               alternation, lowest precedence
//! tree1    ::= weighted ('&' weighted)*         union
//! weighted ::= [number '*'] simple              number ::= [0-9.]+
//! simple   ::= '(' tree ')' | path | '!' | '~' | '$'
//! ```
//!
//! # Example
//!
//! ```
//! use mesh_core::dtab::{Dtab, NameTree, Path};
//!
//! let dtab = Dtab::read("/svc => /#/fs; /svc/web => 0.9*/svc/web-v1 & 0.1*/svc/web-v2")?;
//! // Later dentries are tried first; the earlier one is the fallback.
//! let step = dtab.lookup(&Path::read("/svc/web/api")?);
//! assert_eq!(
//!     step.to_string(),
//!     "0.90*/svc/web-v1/api & 0.10*/svc/web-v2/api | /#/fs/web/api"
//! );
//! let leaves = NameTree::read("/a & (~ | /b)")?.eval();
//! assert_eq!(leaves.map(|l| l.len()), Some(2));
//! # Ok::<(), mesh_core::dtab::ParseError>(())
//! ```

pub mod bind;
pub mod explain;
mod parse;
pub mod path;
pub mod table;
pub mod tree;

pub use bind::{BindError, Binder, Explanation, Node, bind, delegate};
pub use explain::render_json;
pub use path::{Elem, Path, Prefix};
pub use table::{Dentry, Dtab};
pub use tree::{NameTree, Weighted};

/// How many times one path may be rewritten before binding fails with
/// [`BindError::Depth`] (Finagle's `namerMaxDepth` default).
pub const MAX_DEPTH: usize = 100;

/// The longest text the parsers accept, in bytes.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// How deeply parentheses may nest in a tree.
pub const MAX_NESTING: usize = 64;

/// How many nodes one binding (or explanation) may create before failing with
/// [`BindError::TooLarge`]: unions can double at every rewrite.
pub const MAX_BIND_STEPS: usize = 10_000;

/// Text that is not a path, prefix, tree or dtab.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at offset {offset}: expected {expected}, found {found}")]
pub struct ParseError {
    /// Byte offset into the input of the first character that does not fit.
    pub offset: usize,
    /// What the grammar allows there, e.g. `'=>'` or `label char`.
    pub expected: String,
    /// What is there: a quoted character, or `end of input`.
    pub found: String,
}
