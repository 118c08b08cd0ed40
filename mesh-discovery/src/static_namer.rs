//! The static namer (`kind = "static"`): services whose endpoints are written in the
//! configuration itself.
//!
//! ```toml
//! [namers.st]
//! kind = "static"
//! services.hello = ["127.0.0.1:8081", "127.0.0.1:8082 weight=2 id=spiffe://td/ns/a/sa/b"]
//! ```
//!
//! `/#/st/hello/...` binds the service `hello`, the rest of the path is residual. Every entry
//! is parsed when the namer is built (the syntax of [`crate::endpoint`]), so a typo fails the
//! configuration, naming service and entry, instead of the first request. The sets never
//! change, so binding only hands out another receiver of a channel built up front; an unknown
//! service is answered at once with [`Resolution::DoesNotExist`] on a closed channel (the
//! answer is final, and nothing is kept per unknown name a client may make up).

use std::collections::BTreeMap;

use mesh_core::resolve::Resolution;
use tokio::sync::watch;

use crate::endpoint::{FileErrorReason, clip, parse_lines};
use crate::namer::{BindError, Bound, Namer, NamerName, path_text};

/// A namer over a fixed map of services to endpoints.
#[derive(Debug)]
pub struct StaticNamer {
    name: NamerName,
    services: BTreeMap<String, watch::Sender<Resolution>>,
}

/// A static namer's configuration is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StaticNamerError {
    /// A service name is not a single plain path segment.
    #[error("static namer {namer}: invalid service name {service:?}: {reason}")]
    ServiceName {
        /// The namer.
        namer: NamerName,
        /// The service name (clipped).
        service: String,
        /// Why.
        reason: &'static str,
    },
    /// One of a service's endpoints is invalid.
    #[error("static namer {namer}: service {service:?}, endpoint {entry:?}: {reason}")]
    Endpoint {
        /// The namer.
        namer: NamerName,
        /// The service.
        service: String,
        /// The entry as written (clipped).
        entry: String,
        /// Which entry, counted from 1.
        index: usize,
        /// What is wrong with it.
        reason: FileErrorReason,
    },
}

impl StaticNamer {
    /// A namer mounted under `name` serving `services`: service name → endpoint lines.
    /// A service with no entries exists, with no endpoints.
    ///
    /// # Errors
    ///
    /// A [`StaticNamerError`] naming the first invalid service name or endpoint entry.
    pub fn new(
        name: NamerName,
        services: &BTreeMap<String, Vec<String>>,
    ) -> Result<Self, StaticNamerError> {
        let mut built = BTreeMap::new();
        for (service, entries) in services {
            if let Some(reason) = service_name_problem(service) {
                return Err(StaticNamerError::ServiceName {
                    namer: name,
                    service: clip(service),
                    reason,
                });
            }
            let endpoints = parse_lines(entries.iter().map(String::as_str)).map_err(|e| {
                let entry = entries.get(e.line() - 1).map_or("", String::as_str);
                StaticNamerError::Endpoint {
                    namer: name.clone(),
                    service: service.clone(),
                    entry: clip(entry),
                    index: e.line(),
                    reason: e.reason().clone(),
                }
            })?;
            let (tx, _) = watch::channel(Resolution::endpoints(endpoints));
            built.insert(service.clone(), tx);
        }
        Ok(Self {
            name,
            services: built,
        })
    }

    /// The services it serves, in order.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }
}

fn service_name_problem(service: &str) -> Option<&'static str> {
    if service.is_empty() {
        Some("empty")
    } else if service.contains('/') {
        Some("a service name is one path segment, without '/'")
    } else if service.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("whitespace or control characters")
    } else {
        None
    }
}

impl Namer for StaticNamer {
    fn name(&self) -> &NamerName {
        &self.name
    }

    fn bind(&self, path: &[&str]) -> Result<Bound, BindError> {
        let Some((service, residual)) = path.split_first() else {
            return Err(BindError::MissingName {
                namer: self.name.clone(),
                path: path_text(&self.name, path),
            });
        };
        let resolution = match self.services.get(*service) {
            Some(tx) => tx.subscribe(),
            None => {
                let why = format!(
                    "no service {:?} in static namer {}",
                    clip(service),
                    self.name
                );
                watch::channel(Resolution::DoesNotExist(why.into())).1
            }
        };
        Ok(Bound {
            id: path_text(&self.name, &[service]),
            residual: residual.iter().map(|s| (*s).to_owned()).collect(),
            resolution,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use mesh_core::target::Endpoint;

    use super::*;

    fn config(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(s, lines)| {
                (
                    (*s).to_owned(),
                    lines.iter().map(|l| (*l).to_owned()).collect(),
                )
            })
            .collect()
    }

    fn namer(pairs: &[(&str, &[&str])]) -> Result<StaticNamer, StaticNamerError> {
        StaticNamer::new("st".parse().expect("name"), &config(pairs))
    }

    #[test]
    fn binds_a_known_service_with_residual() {
        let namer = namer(&[(
            "hello",
            &[
                "127.0.0.1:8081",
                "127.0.0.1:8082 weight=2 id=spiffe://td/ns/a/sa/b",
            ],
        )])
        .expect("valid");
        let bound = namer.bind(&["hello", "v2", "x"]).expect("binds");
        assert_eq!(bound.id, "/#/st/hello");
        assert_eq!(bound.residual, ["v2", "x"]);
        let want = Resolution::endpoints([
            Endpoint::new("127.0.0.1:8081".parse().expect("addr")),
            Endpoint::new("127.0.0.1:8082".parse().expect("addr"))
                .with_weight(NonZeroU32::new(2).expect("2"))
                .with_identity("spiffe://td/ns/a/sa/b".parse().expect("id")),
        ]);
        assert_eq!(*bound.resolution.borrow(), want);
    }

    #[test]
    fn an_unknown_service_does_not_exist_at_once() {
        let namer = namer(&[("hello", &["127.0.0.1:8081"])]).expect("valid");
        let bound = namer.bind(&["world", "v1"]).expect("binds");
        assert_eq!(bound.id, "/#/st/world");
        assert_eq!(bound.residual, ["v1"]);
        assert_eq!(
            *bound.resolution.borrow(),
            Resolution::DoesNotExist("no service \"world\" in static namer st".into())
        );
        assert!(matches!(
            namer.bind(&[]),
            Err(BindError::MissingName { path, .. }) if path == "/#/st"
        ));
    }

    #[test]
    fn invalid_config_names_service_and_entry() {
        let err = namer(&[("hello", &["127.0.0.1:8081", "127.0.0.1:8082 weight=0"])])
            .expect_err("weight 0");
        assert_eq!(
            err.to_string(),
            "static namer st: service \"hello\", endpoint \"127.0.0.1:8082 weight=0\": \
             invalid weight \"0\": expected a whole number from 1 to 10000"
        );
        assert!(matches!(err, StaticNamerError::Endpoint { index: 2, .. }));

        let err = namer(&[("hello", &["127.0.0.1:8081", "127.0.0.1:8081"])]).expect_err("dup");
        assert!(
            err.to_string()
                .contains("duplicate address 127.0.0.1:8081 (first on line 1)"),
            "{err}"
        );

        let err = namer(&[("a/b", &["127.0.0.1:8081"])]).expect_err("slash");
        assert!(
            err.to_string().contains("invalid service name \"a/b\""),
            "{err}"
        );
    }

    #[test]
    fn a_service_without_entries_exists_with_no_endpoints() {
        let namer = namer(&[("empty", &[])]).expect("valid");
        let bound = namer.bind(&["empty"]).expect("binds");
        assert_eq!(*bound.resolution.borrow(), Resolution::endpoints([]));
        assert_eq!(namer.services().collect::<Vec<_>>(), ["empty"]);
    }
}
