//! Paths and dentry prefixes: the names a dtab rewrites.
//!
//! A [`Path`] is a sequence of labels, each an arbitrary byte string, so a name taken from
//! a `Host` header or a URI segment never has to be rejected for its bytes: bytes outside
//! the *showable* set (`[0-9A-Za-z]` and `_:.#$%-`) are written `\xHH`. `#` and `$` are
//! ordinary label bytes, which is why `/#/fs` (a configured namer) and `/$/inet` (a built-in
//! one) are plain paths and not syntax.
//!
//! A [`Prefix`] is the left-hand side of a dentry: a path whose elements may also be `*`,
//! matching exactly one label of the looked-up path.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;

use super::ParseError;
use super::parse::Parser;

/// A name: a sequence of byte-string labels. `/` is the empty path.
///
/// Cheap to clone (the labels live behind one `Arc`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Path(Arc<[Bytes]>);

impl Path {
    /// The empty path, `/`.
    pub fn empty() -> Path {
        Path(Arc::from(Vec::new()))
    }

    /// A path of these labels, taken as raw bytes (nothing is escaped or split on `/`).
    ///
    /// An empty label is kept, but it has no text form that parses back.
    pub fn from_labels<I, L>(labels: I) -> Path
    where
        I: IntoIterator<Item = L>,
        L: AsRef<[u8]>,
    {
        Path(
            labels
                .into_iter()
                .map(|l| Bytes::copy_from_slice(l.as_ref()))
                .collect(),
        )
    }

    pub(crate) fn from_bytes_vec(labels: Vec<Bytes>) -> Path {
        Path(Arc::from(labels))
    }

    /// Parses a path such as `/svc/web` or `/a/b\x2fc` (surrounding whitespace and `#`
    /// comments allowed).
    ///
    /// # Errors
    ///
    /// A [`ParseError`] naming the byte offset of the first character that does not fit.
    pub fn read(s: &str) -> Result<Path, ParseError> {
        Parser::new(s)?.all(Parser::path)
    }

    /// The labels, in order.
    pub fn labels(&self) -> impl ExactSizeIterator<Item = &[u8]> + DoubleEndedIterator {
        self.0.iter().map(|l| l.as_ref())
    }

    /// How many labels the path has.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether this is the empty path `/`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `i`-th label.
    pub fn label(&self, i: usize) -> Option<&[u8]> {
        self.0.get(i).map(|l| l.as_ref())
    }

    /// The `i`-th label as text, when it is valid UTF-8.
    pub fn label_str(&self, i: usize) -> Option<&str> {
        self.label(i).and_then(|l| std::str::from_utf8(l).ok())
    }

    /// Whether the first labels of `self` are those of `prefix`.
    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The first `n` labels (all of them when `n >= len`).
    pub fn take(&self, n: usize) -> Path {
        if n >= self.len() {
            return self.clone();
        }
        Path(self.0[..n].iter().cloned().collect())
    }

    /// All but the first `n` labels (empty when `n >= len`).
    pub fn drop(&self, n: usize) -> Path {
        if n == 0 {
            return self.clone();
        }
        Path(self.0[n.min(self.len())..].iter().cloned().collect())
    }

    /// `self` followed by `other`.
    pub fn concat(&self, other: &Path) -> Path {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        Path(self.0.iter().chain(other.0.iter()).cloned().collect())
    }
}

/// Whether `b` is written as itself in a label (everything else is `\xHH`).
pub(crate) fn is_showable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'#' | b'$' | b'%' | b'-')
}

fn write_label(f: &mut fmt::Formatter<'_>, label: &[u8]) -> fmt::Result {
    for &b in label {
        if is_showable(b) {
            f.write_str(char::from(b).encode_utf8(&mut [0; 4]))?;
        } else {
            write!(f, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("/");
        }
        for label in self.labels() {
            f.write_str("/")?;
            write_label(f, label)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Path {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Path::read(s)
    }
}

/// One element of a dentry [`Prefix`].
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Elem {
    /// Matches exactly this label.
    Label(Bytes),
    /// `*`: matches any one label.
    Any,
}

impl Elem {
    /// Whether this element matches `label`.
    pub fn matches(&self, label: &[u8]) -> bool {
        match self {
            Elem::Label(l) => l.as_ref() == label,
            Elem::Any => true,
        }
    }
}

/// The left-hand side of a dentry: the labels a path must start with, `*` matching any one.
///
/// Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Prefix(Arc<[Elem]>);

impl Prefix {
    /// A prefix of these elements.
    pub fn new(elems: impl IntoIterator<Item = Elem>) -> Prefix {
        Prefix(elems.into_iter().collect())
    }

    /// Parses a prefix such as `/svc/*/web`.
    ///
    /// # Errors
    ///
    /// A [`ParseError`] naming the byte offset of the first character that does not fit.
    pub fn read(s: &str) -> Result<Prefix, ParseError> {
        Parser::new(s)?.all(Parser::prefix)
    }

    /// The elements, in order.
    pub fn elems(&self) -> &[Elem] {
        &self.0
    }

    /// How many elements (labels a matching path loses to the dentry) the prefix has.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether this is the empty prefix `/`, which matches every path.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `path` starts with this prefix, position by position.
    pub fn matches(&self, path: &Path) -> bool {
        self.len() <= path.len() && self.0.iter().zip(path.labels()).all(|(e, l)| e.matches(l))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("/");
        }
        for elem in self.0.iter() {
            f.write_str("/")?;
            match elem {
                Elem::Label(l) => write_label(f, l)?,
                Elem::Any => f.write_str("*")?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Prefix {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Prefix::read(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_bytes_that_are_not_showable() {
        let p = Path::from_labels([&b"a/b"[..], b"\xff", b"#$%-_:."]);
        assert_eq!(p.to_string(), "/a\\x2fb/\\xff/#$%-_:.");
        assert_eq!(Path::read(&p.to_string()), Ok(p));
    }

    #[test]
    fn take_drop_concat() {
        let p = Path::read("/a/b/c").expect("path");
        assert_eq!(p.take(1).to_string(), "/a");
        assert_eq!(p.drop(1).to_string(), "/b/c");
        assert_eq!(p.drop(9).to_string(), "/");
        assert_eq!(p.take(1).concat(&p.drop(1)), p);
        assert!(p.starts_with(&p.take(2)));
    }
}
