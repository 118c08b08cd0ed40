//! The `[identity]` section and the inbound authorization keys.
//!
//! Policies and identities are parsed while the file is read (their types implement
//! `Deserialize` through the parsers in `mesh_core`), so a typo in a SPIFFE ID or a policy
//! name is reported with its file, line and value, like any other key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use mesh_core::authz::{IdentityPattern, Policy, PortPolicy};
use mesh_core::identity::Identity;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The `[identity]` section: the workload's mesh identity. Absent: plaintext everywhere.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct IdentityConfig {
    /// The directory holding `cert.pem`, `key.pem` and `ca.pem` (as `meshctl ca issue`
    /// writes them). Required. The files are watched: a changed, valid set is put in force
    /// within about a second (and on SIGHUP) without dropping connections.
    pub dir: PathBuf,
    /// What the inbound listener accepts besides mesh TLS. Default: `permissive`.
    #[serde(default)]
    pub inbound_mode: InboundMode,
}

impl IdentityConfig {
    /// An identity loaded from `dir`, inbound permissive.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            inbound_mode: InboundMode::default(),
        }
    }
}

/// What an inbound listener with an identity accepts besides mesh TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InboundMode {
    /// Plaintext and other TLS (passed through) are accepted too, as unauthenticated peers
    /// that the authorization policy then decides on.
    #[default]
    Permissive,
    /// Only mesh TLS: plaintext and other TLS are closed at once, before any byte reaches
    /// the application.
    Strict,
}

/// An authorization policy as written in the file: `"deny"`, `"all-unauthenticated"`,
/// `"all-authenticated"`, or identity patterns — a list `["spiffe://td/ns/prod/*", …]` or
/// the same comma-separated in one string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig(pub Policy);

impl Default for PolicyConfig {
    /// `all-unauthenticated`: anyone may connect, as without a policy.
    fn default() -> Self {
        Self(Policy::AllUnauthenticated)
    }
}

impl Serialize for PolicyConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PolicyConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PolicyConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"deny\", \"all-unauthenticated\", \"all-authenticated\" or a list of SPIFFE ID patterns",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PolicyConfig, E> {
                v.parse().map(PolicyConfig).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PolicyConfig, A::Error> {
                let mut patterns = Vec::new();
                while let Some(p) = seq.next_element::<String>()? {
                    // Bounded: a policy is read once, but a file could hold anything.
                    if patterns.len() >= MAX_PATTERNS {
                        return Err(de::Error::custom(format!(
                            "more than {MAX_PATTERNS} identity patterns"
                        )));
                    }
                    patterns.push(p.parse::<IdentityPattern>().map_err(de::Error::custom)?);
                }
                if patterns.is_empty() {
                    return Err(de::Error::custom(
                        "an empty identity list admits nobody; write \"deny\"",
                    ));
                }
                Ok(PolicyConfig(Policy::Identities(patterns)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The most identity patterns one policy may list.
const MAX_PATTERNS: usize = 1000;

/// One port's authorization: its policy, refined per HTTP path prefix.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortPolicyConfig {
    /// Who may connect. Default: the `[inbound]` section's `policy`.
    pub policy: Option<PolicyConfig>,
    /// HTTP path prefix → who may send requests under it; the longest prefix decides.
    /// Default: the `[inbound]` section's `paths`.
    pub paths: Option<BTreeMap<String, PolicyConfig>>,
}

/// A SPIFFE ID as written in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerId(pub Identity);

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(PeerId).map_err(de::Error::custom)
    }
}

/// The port policies of an inbound listener, resolved from its section.
#[derive(Clone, Debug)]
pub(crate) struct InboundPolicies {
    default: PortPolicy,
    ports: BTreeMap<u16, PortPolicy>,
}

impl InboundPolicies {
    /// Resolves `[inbound] policy`, `paths` and `ports.<port>` (port keys are checked by
    /// the section's validation).
    pub(crate) fn new(
        policy: &PolicyConfig,
        paths: &BTreeMap<String, PolicyConfig>,
        ports: &BTreeMap<String, PortPolicyConfig>,
    ) -> Self {
        let build = |policy: &PolicyConfig, paths: &BTreeMap<String, PolicyConfig>| {
            paths
                .iter()
                .fold(PortPolicy::new(policy.0.clone()), |p, (prefix, rule)| {
                    p.with_path(prefix, rule.0.clone())
                })
        };
        let ports = ports
            .iter()
            .filter_map(|(port, cfg)| {
                let port = port.parse::<u16>().ok()?;
                let policy = cfg.policy.as_ref().unwrap_or(policy);
                let paths = cfg.paths.as_ref().unwrap_or(paths);
                Some((port, build(policy, paths)))
            })
            .collect();
        Self {
            default: build(policy, paths),
            ports,
        }
    }

    /// The policy of ports without one of their own.
    pub(crate) fn default_policy(&self) -> &PortPolicy {
        &self.default
    }

    /// The ports with a policy of their own.
    pub(crate) fn ports(&self) -> impl Iterator<Item = (u16, &PortPolicy)> {
        self.ports.iter().map(|(port, p)| (*port, p))
    }
}
