//! Namers: what binds a path to a live set of endpoints (Linkerd 1's model).
//!
//! A namer is mounted under a prefix `/#/NAME` (its section `[namers.NAME]`) and binds the
//! rest of a path. As in Finagle, it consumes only the segments it needs and hands the rest
//! back as the bound name's *residual*: the file namer binds `/#/fs/hello/v2/x` to the file
//! `hello`, with residual `/v2/x` left for whoever routes further (dtab rewriting, a path
//! prefix). Binding is synchronous and cheap; what a name resolves to arrives through the
//! [`Bound::resolution`] watch, so a balancer always sees the newest whole set and a name
//! that does not exist is answered at once ([`Resolution::DoesNotExist`]), not by a timeout.
//!
//! Two kinds of failure are kept apart on purpose: a path the namer cannot bind at all (no
//! name after the prefix, a file name that could escape its directory) is a [`BindError`],
//! a configuration or routing mistake; a well-formed name with nothing behind it is a
//! resolution, because it may start to exist later (a file created, a record added).
//!
//! [`Namers`] holds the namers of a configuration by name and binds `/#/NAME/...` paths:
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//!
//! use mesh_core::resolve::Resolution;
//! use mesh_discovery::namer::{NamerName, Namers};
//! use mesh_discovery::static_namer::StaticNamer;
//!
//! let services = BTreeMap::from([("hello".to_owned(), vec!["127.0.0.1:8081".to_owned()])]);
//! let mut namers = Namers::new();
//! namers.insert(Arc::new(StaticNamer::new("st".parse::<NamerName>()?, &services)?));
//!
//! let bound = namers.bind_path("/#/st/hello/v2")?;
//! assert_eq!(bound.id, "/#/st/hello");
//! assert_eq!(bound.residual, ["v2"]);
//! assert!(matches!(&*bound.resolution.borrow(), Resolution::Endpoints(set) if set.len() == 1));
//!
//! assert!(namers.bind_path("/#/nope/hello").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use mesh_core::resolve::Resolution;
use tokio::sync::watch;

use crate::endpoint::clip;

/// The prefix every namer path starts with.
pub const PREFIX: &str = "/#/";

/// The longest path [`Namers::bind_path`] accepts, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// The longest namer name, in bytes.
const MAX_NAME_BYTES: usize = 64;

/// Binds the rest of a path, under the namer's prefix, to a live endpoint set.
pub trait Namer: Send + Sync + fmt::Debug {
    /// The name it is mounted under: `fs` for `/#/fs`.
    fn name(&self) -> &NamerName;

    /// Binds `path`, the segments after `/#/NAME`: consumes those that name something and
    /// returns the rest as the residual.
    ///
    /// # Errors
    ///
    /// A [`BindError`] when the path cannot name anything for this namer (no segment, an
    /// unsafe name) or the namer cannot take another name; a name that merely does not exist
    /// binds, to [`Resolution::DoesNotExist`].
    fn bind(&self, path: &[&str]) -> Result<Bound, BindError>;
}

/// A bound name: which name it is, what of the path is left, and its live resolution.
#[derive(Clone, Debug)]
pub struct Bound {
    /// The bound name as a path, e.g. `/#/fs/hello` (a label for metrics and errors).
    pub id: String,
    /// The segments the namer did not consume, e.g. `["v2", "x"]` for `/#/fs/hello/v2/x`.
    pub residual: Vec<String>,
    /// The name's endpoints, kept current by the namer. A closed channel (every sender
    /// dropped) means no further updates: the current value is final, as for a static
    /// namer's answer to an unknown service or after the namer itself was dropped.
    pub resolution: watch::Receiver<Resolution>,
}

/// The name a namer is mounted under: the `NAME` in `/#/NAME` and `[namers.NAME]`.
///
/// ASCII letters, digits, `-`, `_` and `.`, at most 64 bytes, and not `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamerName(Arc<str>);

/// The text is not a valid [`NamerName`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid namer name {name:?}: {reason}")]
pub struct InvalidNamerName {
    name: String,
    reason: &'static str,
}

impl NamerName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NamerName {
    type Err = InvalidNamerName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidNamerName {
            name: clip(s),
            reason,
        };
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        if s.len() > MAX_NAME_BYTES {
            return Err(invalid("longer than 64 bytes"));
        }
        if s == "." || s == ".." {
            return Err(invalid("not a name"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid("use ASCII letters, digits, '-', '_' or '.'"));
        }
        Ok(Self(s.into()))
    }
}

impl Borrow<str> for NamerName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NamerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A path could not be bound. Every variant names the path (clipped to a few dozen
/// characters).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The path does not start with `/#/` and a namer's name.
    #[error("cannot bind {path:?}: a namer path starts with /#/NAME")]
    NotANamerPath {
        /// The path.
        path: String,
    },
    /// The path is longer than [`MAX_PATH_BYTES`].
    #[error("cannot bind {path:?}: longer than {MAX_PATH_BYTES} bytes")]
    TooLong {
        /// The path.
        path: String,
    },
    /// The path has an empty segment (`//`, or a trailing `/`).
    #[error("cannot bind {path:?}: empty path segment")]
    EmptySegment {
        /// The path.
        path: String,
    },
    /// No namer is mounted under the path's `NAME`.
    #[error("cannot bind {path:?}: no namer named {namer:?}")]
    UnknownNamer {
        /// The name asked for.
        namer: String,
        /// The path.
        path: String,
    },
    /// Nothing follows the namer's prefix.
    #[error("cannot bind {path:?}: namer {namer} needs a name after /#/{namer}")]
    MissingName {
        /// The namer.
        namer: NamerName,
        /// The path.
        path: String,
    },
    /// The name cannot be bound safely by this namer (a file name that is hidden, relative
    /// or has a separator).
    #[error("cannot bind {path:?}: {reason}")]
    InvalidName {
        /// The path.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// The namer already watches as many names as it may.
    #[error("cannot bind {path:?}: namer {namer} already watches {limit} names")]
    TooManyNames {
        /// The namer.
        namer: NamerName,
        /// The path.
        path: String,
        /// Its limit.
        limit: usize,
    },
    /// The namer watches names from a task, and there is no tokio runtime to spawn it on.
    #[error("cannot bind {path:?}: namer {namer} must first be bound inside a tokio runtime")]
    NoRuntime {
        /// The namer.
        namer: NamerName,
        /// The path.
        path: String,
    },
}

/// `/#/NAME/seg/...` as text for ids and errors (clipped).
pub(crate) fn path_text(namer: &NamerName, segments: &[&str]) -> String {
    let mut path = format!("{PREFIX}{namer}");
    for segment in segments {
        path.push('/');
        path.push_str(segment);
        if path.len() > MAX_PATH_BYTES {
            break;
        }
    }
    clip(&path)
}

/// The namers of a configuration, by the name they are mounted under.
#[derive(Clone, Debug, Default)]
pub struct Namers {
    namers: BTreeMap<NamerName, Arc<dyn Namer>>,
}

impl Namers {
    /// No namers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mounts `namer` under its name; returns the namer it replaces, if any.
    pub fn insert(&mut self, namer: Arc<dyn Namer>) -> Option<Arc<dyn Namer>> {
        self.namers.insert(namer.name().clone(), namer)
    }

    /// The namer mounted under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Namer>> {
        self.namers.get(name)
    }

    /// The names namers are mounted under, in order.
    pub fn names(&self) -> impl Iterator<Item = &NamerName> {
        self.namers.keys()
    }

    /// Binds a path `/#/NAME/rest...` with the namer mounted under `NAME`.
    ///
    /// # Errors
    ///
    /// A [`BindError`]: the path does not start with `/#/NAME`, is longer than
    /// [`MAX_PATH_BYTES`], has an empty segment, names no mounted namer, or the namer cannot
    /// bind the rest.
    pub fn bind_path(&self, path: &str) -> Result<Bound, BindError> {
        if path.len() > MAX_PATH_BYTES {
            return Err(BindError::TooLong { path: clip(path) });
        }
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return Err(BindError::NotANamerPath { path: clip(path) });
        };
        let mut segments = rest.split('/');
        let name = segments.next().unwrap_or_default();
        if name.is_empty() {
            return Err(BindError::NotANamerPath { path: clip(path) });
        }
        let segments: Vec<&str> = segments.collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(BindError::EmptySegment { path: clip(path) });
        }
        let Some(namer) = self.namers.get(name) else {
            return Err(BindError::UnknownNamer {
                namer: clip(name),
                path: clip(path),
            });
        };
        namer.bind(&segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binds its first segment to an empty set.
    #[derive(Debug)]
    struct Fixed(NamerName);

    impl Namer for Fixed {
        fn name(&self) -> &NamerName {
            &self.0
        }

        fn bind(&self, path: &[&str]) -> Result<Bound, BindError> {
            let Some((first, rest)) = path.split_first() else {
                return Err(BindError::MissingName {
                    namer: self.0.clone(),
                    path: path_text(&self.0, path),
                });
            };
            Ok(Bound {
                id: path_text(&self.0, &[first]),
                residual: rest.iter().map(|s| (*s).to_owned()).collect(),
                resolution: watch::channel(Resolution::endpoints([])).1,
            })
        }
    }

    fn namers() -> Namers {
        let mut namers = Namers::new();
        namers.insert(Arc::new(Fixed("fs".parse().expect("name"))));
        namers
    }

    #[test]
    fn binds_under_the_named_namer_with_residual() {
        let bound = namers().bind_path("/#/fs/hello/v2/x").expect("binds");
        assert_eq!(bound.id, "/#/fs/hello");
        assert_eq!(bound.residual, ["v2", "x"]);
        let bound = namers().bind_path("/#/fs/hello").expect("binds");
        assert!(bound.residual.is_empty());
    }

    #[test]
    fn bad_paths_are_named_errors() {
        let cases = [
            (
                "/svc/hello",
                "cannot bind \"/svc/hello\": a namer path starts with /#/NAME",
            ),
            ("#/fs/hello", "a namer path starts with /#/NAME"),
            ("/#/", "a namer path starts with /#/NAME"),
            ("/#//hello", "a namer path starts with /#/NAME"),
            (
                "/#/fs//hello",
                "cannot bind \"/#/fs//hello\": empty path segment",
            ),
            ("/#/fs/hello/", "empty path segment"),
            (
                "/#/dns/hello",
                "cannot bind \"/#/dns/hello\": no namer named \"dns\"",
            ),
            (
                "/#/fs",
                "cannot bind \"/#/fs\": namer fs needs a name after /#/fs",
            ),
        ];
        for (path, want) in cases {
            let err = namers().bind_path(path).expect_err(path).to_string();
            assert!(err.contains(want), "{path:?}: got {err:?}, want {want:?}");
        }
        let long = format!("/#/fs/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(matches!(
            namers().bind_path(&long),
            Err(BindError::TooLong { .. })
        ));
    }

    #[test]
    fn namer_names_are_single_plain_segments() {
        for good in ["fs", "dns-srv", "a_b.c", "N1"] {
            assert_eq!(good.parse::<NamerName>().expect(good).as_str(), good);
        }
        for bad in ["", ".", "..", "a/b", "a b", "#", &"x".repeat(65)] {
            assert!(bad.parse::<NamerName>().is_err(), "{bad:?}");
        }
    }
}
