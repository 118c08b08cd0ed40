//! Inbound authorization: who may talk to a port, and to which HTTP paths.
//!
//! A policy is decided from what the inbound side knows of a connection — the verified peer
//! identity from mTLS, or none for plaintext — and, for HTTP, the request path. The kinds are
//! Linkerd's: `deny`, `all-unauthenticated` (anyone, even plaintext), `all-authenticated`
//! (any verified mesh identity), and a list of identities, each exact or ending in `*` (a
//! prefix: `spiffe://td/ns/prod/*` is every workload of namespace `prod`). A port's policy
//! may be refined per HTTP path prefix; the longest matching prefix decides.
//!
//! Every decision names the rule that made it, for the decision metric and the log line; a
//! denial is answered through the one classifier ([`Denied`] → `403`, gRPC
//! `PERMISSION_DENIED`). This module is pure: no I/O, no TLS.
//!
//! ```
//! use mesh_core::authz::{PortPolicy, Policy};
//!
//! let policy = PortPolicy::new("all-authenticated".parse().unwrap())
//!     .with_path("/admin", "spiffe://td/ns/ops/*".parse().unwrap());
//! let ops = "spiffe://td/ns/ops/sa/tool".parse().unwrap();
//! let web = "spiffe://td/ns/web/sa/app".parse().unwrap();
//! assert!(policy.decide(Some(&web), Some("/api/x")).allowed);
//! assert!(!policy.decide(Some(&web), Some("/admin/users")).allowed);
//! assert!(policy.decide(Some(&ops), Some("/admin/users")).allowed);
//! assert!(!policy.decide(None, Some("/api/x")).allowed, "plaintext is not authenticated");
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use http::StatusCode;

use crate::errors::{GrpcCode, HttpError};
use crate::identity::Identity;

/// Who a policy lets in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Nobody.
    Deny,
    /// Anybody, with or without a verified identity.
    AllUnauthenticated,
    /// Any peer with a verified mesh identity.
    AllAuthenticated,
    /// Peers whose identity matches one of these.
    Identities(Vec<IdentityPattern>),
}

/// An identity, or an identity prefix ending in `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityPattern {
    text: String,
    prefix: bool,
}

/// A policy or pattern that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid authorization policy {input:?}: {reason}")]
pub struct InvalidPolicy {
    input: String,
    reason: &'static str,
}

impl FromStr for IdentityPattern {
    type Err = InvalidPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| InvalidPolicy {
            input: s.chars().take(256).collect(),
            reason,
        };
        let (head, prefix) = match s.strip_suffix('*') {
            Some(head) => (head, true),
            None => (s, false),
        };
        if head.contains('*') {
            return Err(bad("`*` may only end a pattern"));
        }
        if prefix {
            // What comes before the `*` must start a SPIFFE ID in some trust domain.
            let td_end = head
                .strip_prefix("spiffe://")
                .ok_or_else(|| bad("a pattern starts with spiffe://"))?;
            if td_end.is_empty() || td_end.starts_with('/') {
                return Err(bad("a pattern names its trust domain"));
            }
        } else {
            head.parse::<Identity>()
                .map_err(|_| bad("not a valid SPIFFE ID"))?;
        }
        Ok(Self {
            text: head.to_owned(),
            prefix,
        })
    }
}

impl IdentityPattern {
    /// Whether `id` matches.
    pub fn matches(&self, id: &Identity) -> bool {
        let id = id.to_string();
        if self.prefix {
            id.starts_with(&self.text)
        } else {
            id == self.text
        }
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

impl FromStr for Policy {
    type Err = InvalidPolicy;

    /// `deny`, `all-unauthenticated`, `all-authenticated`, or a comma-separated list of
    /// identity patterns.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "deny" => Ok(Policy::Deny),
            "all-unauthenticated" => Ok(Policy::AllUnauthenticated),
            "all-authenticated" => Ok(Policy::AllAuthenticated),
            "" => Err(InvalidPolicy {
                input: String::new(),
                reason: "empty",
            }),
            list => list
                .split(',')
                .map(|p| p.trim().parse())
                .collect::<Result<Vec<_>, _>>()
                .map(Policy::Identities),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Deny => f.write_str("deny"),
            Policy::AllUnauthenticated => f.write_str("all-unauthenticated"),
            Policy::AllAuthenticated => f.write_str("all-authenticated"),
            Policy::Identities(list) => {
                for (i, p) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    fmt::Display::fmt(p, f)?;
                }
                Ok(())
            }
        }
    }
}

impl Policy {
    fn allows(&self, peer: Option<&Identity>) -> bool {
        match (self, peer) {
            (Policy::Deny, _) => false,
            (Policy::AllUnauthenticated, _) => true,
            (Policy::AllAuthenticated, peer) => peer.is_some(),
            (Policy::Identities(list), Some(id)) => list.iter().any(|p| p.matches(id)),
            (Policy::Identities(_), None) => false,
        }
    }
}

/// A port's policy, optionally refined per HTTP path prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    default: (Arc<str>, Policy),
    /// Longest prefix first.
    paths: Vec<(String, Arc<str>, Policy)>,
}

/// What a policy decided, and which rule decided it (the metric label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the peer may proceed.
    pub allowed: bool,
    /// The rule: `default=<policy>` or `path=<prefix>:<policy>`.
    pub rule: Arc<str>,
}

impl PortPolicy {
    /// A port whose every connection and request is decided by `default`.
    pub fn new(default: Policy) -> Self {
        Self {
            default: (format!("default={default}").into(), default),
            paths: Vec::new(),
        }
    }

    /// Requests whose path starts with `prefix` are decided by `policy` instead (the
    /// longest matching prefix wins).
    pub fn with_path(mut self, prefix: &str, policy: Policy) -> Self {
        let rule: Arc<str> = format!("path={prefix}:{policy}").into();
        self.paths.push((normalize(prefix), rule, policy));
        self.paths
            .sort_by_key(|(prefix, _, _)| std::cmp::Reverse(prefix.len()));
        self
    }

    /// Every rule this policy can decide by (the default first), to resolve metric handles
    /// up front.
    pub fn rules(&self) -> impl Iterator<Item = &Arc<str>> {
        std::iter::once(&self.default.0).chain(self.paths.iter().map(|(_, rule, _)| rule))
    }

    /// Whether any path prefix refines the port's default.
    pub fn has_paths(&self) -> bool {
        !self.paths.is_empty()
    }

    /// Decides for a peer (`None`: no verified identity) and, for HTTP, a request path
    /// (`None`: a TCP connection, decided by the port's default).
    pub fn decide(&self, peer: Option<&Identity>, path: Option<&str>) -> Decision {
        // Matched on the path as the application will read it, so `//admin`, `/./admin` or
        // `/%61dmin` cannot slip past a rule on `/admin`; only when there are path rules.
        let path = path.filter(|_| !self.paths.is_empty()).map(normalize);
        let (rule, policy) = path
            .and_then(|p| {
                self.paths
                    .iter()
                    .find(|(prefix, _, _)| under(prefix, &p))
                    .map(|(_, rule, policy)| (rule, policy))
            })
            .unwrap_or((&self.default.0, &self.default.1));
        Decision {
            allowed: policy.allows(peer),
            rule: rule.clone(),
        }
    }
}

/// The path as an application will most likely resolve it: percent-encoded unreserved
/// characters decoded, repeated slashes merged, `.` and `..` segments resolved (never above
/// the root).
fn normalize(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(text) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(text, 16)
            && (b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            decoded.push(b);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    out.push('/');
    out.push_str(&segments.join("/"));
    if decoded.ends_with('/') && !segments.is_empty() {
        out.push('/');
    }
    out
}

/// Whether `path` is `prefix` or below it, at a segment boundary (`/admin` covers
/// `/admin/x`, not `/administrator`).
fn under(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A request the policy denied; answered `403` (gRPC `PERMISSION_DENIED`) naming the rule.
#[derive(Debug, thiserror::Error)]
#[error("unauthorized: {peer} is not allowed by {rule}")]
pub struct Denied {
    peer: String,
    rule: Arc<str>,
}

impl Denied {
    /// The denial of `peer` by `decision`, as the error the one classifier answers.
    pub fn error(peer: Option<&Identity>, decision: &Decision) -> HttpError {
        let denied = Denied {
            peer: peer.map_or_else(|| "an unauthenticated peer".to_owned(), ToString::to_string),
            rule: decision.rule.clone(),
        };
        HttpError::new(StatusCode::FORBIDDEN, GrpcCode::PermissionDenied, denied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        s.parse().expect("identity")
    }

    #[test]
    fn each_policy_for_each_kind_of_peer() {
        let prod = id("spiffe://td/ns/prod/sa/api");
        let dev = id("spiffe://td/ns/dev/sa/api");
        let table: [(&str, [bool; 3]); 5] = [
            // (policy, [unauthenticated, prod identity, dev identity])
            ("deny", [false, false, false]),
            ("all-unauthenticated", [true, true, true]),
            ("all-authenticated", [false, true, true]),
            ("spiffe://td/ns/prod/*", [false, true, false]),
            (
                "spiffe://td/ns/dev/sa/api, spiffe://other/ns/prod/*",
                [false, false, true],
            ),
        ];
        for (text, want) in table {
            let policy = PortPolicy::new(text.parse().expect(text));
            let got = [
                policy.decide(None, None).allowed,
                policy.decide(Some(&prod), None).allowed,
                policy.decide(Some(&dev), Some("/x")).allowed,
            ];
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn the_longest_path_prefix_decides_and_is_named() {
        let policy = PortPolicy::new(Policy::AllAuthenticated)
            .with_path("/admin", "spiffe://td/ns/ops/*".parse().expect("p"))
            .with_path("/admin/public", Policy::AllUnauthenticated);
        let web = id("spiffe://td/ns/web/sa/app");
        let d = policy.decide(Some(&web), Some("/admin/users"));
        assert!(!d.allowed);
        assert_eq!(&*d.rule, "path=/admin:spiffe://td/ns/ops/*");
        let d = policy.decide(None, Some("/admin/public/doc"));
        assert!(d.allowed);
        assert_eq!(&*d.rule, "path=/admin/public:all-unauthenticated");
        let d = policy.decide(None, None);
        assert_eq!((d.allowed, &*d.rule), (false, "default=all-authenticated"));
    }

    #[test]
    fn path_rules_cannot_be_dodged_by_spelling_the_path_differently() {
        let policy = PortPolicy::new(Policy::AllUnauthenticated).with_path("/admin", Policy::Deny);
        for denied in [
            "/admin",
            "/admin/",
            "/admin/users",
            "//admin",
            "/./admin",
            "/x/../admin",
            "/%61dmin/users",
            "/admin/./x",
        ] {
            assert!(!policy.decide(None, Some(denied)).allowed, "{denied}");
        }
        for allowed in ["/administrator", "/", "/x/admin", "/%2Fadmin"] {
            assert!(policy.decide(None, Some(allowed)).allowed, "{allowed}");
        }
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("spiffe://td/*/sa/x", "may only end"),
            ("http://td/ns/a/*", "starts with spiffe://"),
            ("spiffe://*", "names its trust domain"),
            ("not-a-policy", "not a valid SPIFFE ID"),
        ] {
            let err = bad.parse::<Policy>().expect_err(bad);
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_denial_is_a_403_or_permission_denied_naming_the_rule() {
        let policy = PortPolicy::new(Policy::Deny);
        let peer = id("spiffe://td/ns/a/sa/b");
        let d = policy.decide(Some(&peer), None);
        let c = crate::errors::classify(&Denied::error(Some(&peer), &d));
        assert_eq!(c.status, StatusCode::FORBIDDEN);
        assert_eq!(c.grpc, GrpcCode::PermissionDenied);
        assert!(
            c.message.contains("spiffe://td/ns/a/sa/b") && c.message.contains("default=deny"),
            "{}",
            c.message
        );
    }
}
