//! Loading and validating a configuration file, with errors that point at the problem.
//!
//! Serde rejects what types can (syntax, unknown keys, a port out of range) with the exact
//! span; the checks here reject what types cannot (zero timeouts, a target that loops back
//! into the proxy), section by section and then across sections, and find the line of the
//! key in the text.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{ClientSettings, Config, Limits, ShutdownConfig};

/// A configuration file that could not be used.
///
/// Its message names the file, the line, the key and the offending value, e.g.
/// `sidecar.toml:7:10: key limits.idle_timeout = "soon": invalid duration`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(Box<Details>);

#[derive(Debug)]
struct Details {
    file: String,
    line: Option<usize>,
    column: Option<usize>,
    key: String,
    value: Option<String>,
    reason: String,
}

impl From<Details> for ConfigError {
    fn from(d: Details) -> Self {
        Self(Box::new(d))
    }
}

impl ConfigError {
    /// The dotted key the problem is at (`limits.idle_timeout`), empty for whole-file errors.
    pub fn key(&self) -> &str {
        &self.0.key
    }

    /// The 1-based line of the problem, when known.
    pub fn line(&self) -> Option<usize> {
        self.0.line
    }

    /// The offending value as written, when known.
    pub fn value(&self) -> Option<&str> {
        self.0.value.as_deref()
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.0.reason
    }
}

impl fmt::Display for Details {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": ")?;
        if !self.key.is_empty() {
            write!(f, "key {}", self.key)?;
            if let Some(v) = &self.value {
                write!(f, " = {v}")?;
            }
            write!(f, ": ")?;
        }
        write!(f, "{}", self.reason)
    }
}

/// Validates a configuration file without starting anything: what `meshctl check` runs.
///
/// The checks are exactly those [`Config::from_file`] applies when a proxy starts from this
/// file; nothing is bound or connected, so the file can be checked on any machine (a CI job,
/// an operator's laptop) before it is deployed. Addresses that are valid but taken on the
/// target machine are found only when the proxy binds them.
///
/// # Errors
///
/// [`ConfigError`] naming the file, line, key and value of the first problem, or why the
/// file could not be read.
pub fn check_file(path: &Path) -> Result<(), ConfigError> {
    Config::from_file(path).map(drop)
}

impl Config {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, line, key and value of the first problem, or the
    /// I/O error reading the file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Details {
            file: name.clone(),
            line: None,
            column: None,
            key: String::new(),
            value: None,
            reason: format!("cannot read file: {e}"),
        })?;
        Config::from_toml(&name, &text)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, line, key and value of the first problem.
    pub fn from_toml(file: &str, text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| toml_error(file, text, String::new(), &e))?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            toml_error(file, text, key, e.inner())
        })?;
        cfg.check().map_err(|(key, value, reason)| {
            let line = locate(text, key);
            // Echo the value as the file wrote it, when the file set it.
            let written = line
                .and_then(|n| text.lines().nth(n - 1))
                .and_then(|l| l.split_once('='))
                .map(|(_, v)| v.split(" #").next().unwrap_or(v).trim().to_owned())
                .filter(|v| !v.is_empty());
            ConfigError::from(Details {
                file: file.to_owned(),
                line,
                column: None,
                key: key.to_owned(),
                value: Some(written.unwrap_or(value)),
                reason,
            })
        })?;
        Ok(cfg)
    }

    /// Validates a configuration assembled in code or changed by command-line flags, with
    /// the same checks a file gets.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the key and value (the file is reported as `<config>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|(key, value, reason)| {
            Details {
                file: "<config>".to_owned(),
                line: None,
                column: None,
                key: key.to_owned(),
                value: Some(value),
                reason,
            }
            .into()
        })
    }

    /// Checks what types alone cannot: each section on its own, then the references between
    /// sections. A new section adds its own check here.
    fn check(&self) -> Result<(), Invalid> {
        self.limits.check()?;
        self.client.check()?;
        self.shutdown.check()?;
        self.inbound.check()?;
        self.check_listeners()?;
        self.check_identity()?;
        self.check_namers()?;
        super::routers::check_routers(self)
    }
    /// Namer names, and the namer a bound outbound target names.
    fn check_namers(&self) -> Result<(), Invalid> {
        for (name, namer) in &self.namers {
            let Ok(mounted) = name.parse::<mesh_discovery::namer::NamerName>() else {
                return Err((
                    "namers",
                    format!("\"{name}\""),
                    "a namer name is ASCII letters, digits, -, _ or . (at most 64 bytes)".into(),
                ));
            };
            if let super::NamerConfig::Dns(d) | super::NamerConfig::DnsSrv(d) = namer {
                let floor = std::time::Duration::from_millis(10);
                if d.min_ttl < floor || d.timeout < floor {
                    return Err((
                        "namers",
                        format!("\"{name}\""),
                        "min_ttl and timeout must be at least 10ms".into(),
                    ));
                }
                if d.max_ttl < d.min_ttl {
                    return Err((
                        "namers",
                        format!("\"{name}\""),
                        "max_ttl must not be below min_ttl".into(),
                    ));
                }
                for (what, v) in [
                    ("min_ttl", d.min_ttl),
                    ("max_ttl", d.max_ttl),
                    ("timeout", d.timeout),
                ] {
                    if v > MAX_DURATION {
                        return Err((
                            "namers",
                            format!("\"{name}\""),
                            format!("{what} must be at most 30 days"),
                        ));
                    }
                }
            }
            // Static endpoints are checked now, naming the service and the entry.
            if let super::NamerConfig::Static { services } = namer
                && let Err(e) = mesh_discovery::static_namer::StaticNamer::new(mounted, services)
            {
                return Err(("namers", format!("\"{name}\""), e.to_string()));
            }
        }
        if let Some(path) = self.outbound.target.as_ref().and_then(|t| t.path()) {
            let namer = path
                .strip_prefix("/#/")
                .and_then(|rest| rest.split('/').next())
                .unwrap_or_default();
            if !self.namers.contains_key(namer) {
                return Err((
                    "outbound.target",
                    format!("\"{path}\""),
                    format!("no [namers.{namer}] section"),
                ));
            }
        }
        let b = &self.balancer;
        for (key, d) in [
            ("balancer.default_rtt", b.default_rtt),
            ("balancer.decay", b.decay),
            ("balancer.min_backoff", b.min_backoff),
            ("balancer.max_backoff", b.max_backoff),
            ("balancer.fail_fast_timeout", b.fail_fast_timeout),
        ] {
            if d.is_zero() {
                return Err((key, "\"0s\"".into(), "must be greater than zero".into()));
            }
            at_most_max(key, d)?;
        }
        if b.max_backoff < b.min_backoff {
            return Err((
                "balancer.max_backoff",
                format!("\"{}\"", humantime::format_duration(b.max_backoff)),
                "must not be below balancer.min_backoff".into(),
            ));
        }
        if b.failures == 0 {
            return Err(("balancer.failures", "0".into(), "must be at least 1".into()));
        }
        if !(1..=100_000).contains(&b.queue) {
            return Err((
                "balancer.queue",
                b.queue.to_string(),
                "must be between 1 and 100000".into(),
            ));
        }
        Ok(())
    }

    /// Keys that only mean something with an identity.
    fn check_identity(&self) -> Result<(), Invalid> {
        if self.identity.is_none()
            && let Some(id) = &self.outbound.peer_id
        {
            return Err((
                "outbound.peer_id",
                format!("\"{}\"", id.0),
                "needs an [identity] section (mesh TLS) to be checked".into(),
            ));
        }
        if !self.outbound.mtls
            && let Some(id) = &self.outbound.peer_id
        {
            return Err((
                "outbound.peer_id",
                format!("\"{}\"", id.0),
                "is only checked over mesh TLS, and outbound.mtls = false".into(),
            ));
        }
        Ok(())
    }

    /// Listeners that would loop into each other or share an address.
    fn check_listeners(&self) -> Result<(), Invalid> {
        let own = [self.outbound.bind_addr(), self.inbound.bind_addr()];
        for (key, target) in [
            (
                "outbound.target",
                self.outbound
                    .target
                    .as_ref()
                    .and_then(|t| t.addr())
                    .filter(|_| self.outbound.enabled),
            ),
            (
                "inbound.target",
                self.inbound.target.filter(|_| self.inbound.enabled),
            ),
        ] {
            let Some(target) = target else { continue };
            if own.iter().flatten().any(|&l| same_socket(target, l)) {
                return Err((
                    key,
                    format!("\"{target}\""),
                    "points at one of the proxy's own listeners, which would loop".into(),
                ));
            }
        }
        // Port 0 asks the kernel for a free port: two such listeners never collide.
        if let [Some(outbound), Some(inbound)] = own
            && outbound == inbound
            && outbound.port() != 0
        {
            return Err((
                "inbound.listen",
                format!("\"{inbound}\""),
                "is the same address as outbound.listen".into(),
            ));
        }
        Ok(())
    }
}

/// A value types alone cannot rule out: its dotted key, the value as shown in the error
/// when the file does not set it, and the reason.
pub(super) type Invalid = (&'static str, String, String);

impl Limits {
    fn check(&self) -> Result<(), Invalid> {
        let nonzero: [(&'static str, Duration); 5] = [
            ("limits.header_read_timeout", self.header_read_timeout),
            ("limits.idle_timeout", self.idle_timeout),
            ("limits.connect_timeout", self.connect_timeout),
            ("limits.response_timeout", self.response_timeout),
            ("limits.detect_timeout", self.detect_timeout),
        ];
        for (key, d) in nonzero {
            if d.is_zero() {
                return Err((key, "\"0s\"".into(), "must be greater than zero".into()));
            }
            at_most_max(key, d)?;
        }
        if self.detect_timeout > Duration::from_secs(60) {
            return Err((
                "limits.detect_timeout",
                format!("\"{}\"", humantime::format_duration(self.detect_timeout)),
                "must be at most 60s (clients of server-speaks-first protocols wait this long)"
                    .into(),
            ));
        }
        const KIB: u64 = 1024;
        let sizes: [(&'static str, bytesize::ByteSize, u64, u64, &str); 3] = [
            (
                "limits.max_request_header_bytes",
                self.max_request_header_bytes,
                8 * KIB,
                KIB * KIB,
                "8 KiB and 1 MiB",
            ),
            (
                "limits.http2_max_header_list_bytes",
                self.http2_max_header_list_bytes,
                KIB,
                KIB * KIB,
                "1 KiB and 1 MiB",
            ),
            (
                "limits.replay_memory",
                self.replay_memory,
                64 * KIB,
                16 * KIB * KIB * KIB,
                "64 KiB and 16 GiB",
            ),
        ];
        for (key, size, min, max, range) in sizes {
            if !(min..=max).contains(&size.as_u64()) {
                return Err((
                    key,
                    size.as_u64().to_string(),
                    format!("must be between {range}"),
                ));
            }
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err((
                "limits.http2_max_concurrent_streams",
                "0".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl ClientSettings {
    fn check(&self) -> Result<(), Invalid> {
        at_most_max("client.idle_timeout", self.idle_timeout)?;
        if self.idle_timeout.is_zero() {
            return Err((
                "client.idle_timeout",
                "\"0s\"".into(),
                "must be greater than zero".into(),
            ));
        }
        Ok(())
    }
}

impl super::InboundConfig {
    fn check(&self) -> Result<(), Invalid> {
        let path_ok = |p: &String| p.starts_with('/');
        if let Some(p) = self.paths.keys().find(|p| !path_ok(p)) {
            return Err((
                "inbound.paths",
                format!("\"{p}\""),
                "a path prefix starts with /".into(),
            ));
        }
        for (port, cfg) in &self.ports {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err((
                    "inbound.ports",
                    format!("\"{port}\""),
                    "not a port number (1-65535)".into(),
                ));
            }
            if let Some(p) = cfg
                .paths
                .iter()
                .flatten()
                .map(|(p, _)| p)
                .find(|p| !path_ok(p))
            {
                return Err((
                    "inbound.ports",
                    format!("\"{p}\""),
                    "a path prefix starts with /".into(),
                ));
            }
        }
        Ok(())
    }
}

impl ShutdownConfig {
    fn check(&self) -> Result<(), Invalid> {
        at_most_max("shutdown.grace", self.grace)
    }
}

fn at_most_max(key: &'static str, d: Duration) -> Result<(), Invalid> {
    if d > MAX_DURATION {
        return Err((
            key,
            format!("\"{}\"", humantime::format_duration(d)),
            "must be at most 30 days".into(),
        ));
    }
    Ok(())
}

/// The longest duration any setting accepts; far beyond any sensible value, and far from
/// overflowing a clock.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Whether a connection to `target` would arrive at a listener bound to `listen`.
pub(crate) fn same_socket(target: SocketAddr, listen: SocketAddr) -> bool {
    target.port() == listen.port()
        && (target.ip() == listen.ip()
            || (listen.ip().is_unspecified()
                && (target.ip().is_loopback() || target.ip().is_unspecified())))
}

fn toml_error(file: &str, text: &str, key: String, e: &toml::de::Error) -> ConfigError {
    let (line, column, value) = match e.span() {
        Some(span) => {
            let (line, column) = position(text, span.start);
            // A span on a key (an unknown field) points at the key; the value is what the
            // line assigns to it.
            let rest = text
                .get(span.end..)
                .and_then(|r| r.lines().next())
                .and_then(|r| r.trim_start().strip_prefix('='))
                .map(|v| v.split(" #").next().unwrap_or(v));
            let value = rest
                .or_else(|| text.get(span.clone()))
                .map(|v| v.trim().chars().take(120).collect::<String>());
            (
                Some(line),
                Some(column),
                value.filter(|v| !v.is_empty() && !v.contains('\n')),
            )
        }
        None => (None, None, None),
    };
    Details {
        file: file.to_owned(),
        line,
        column,
        key,
        value,
        reason: e.message().to_owned(),
    }
    .into()
}

/// 1-based line and column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

/// The line where `section.key` is set, if the file sets it.
fn locate(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.rsplit_once('.')?;
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
        } else if current == section
            && let Some((k, _)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
