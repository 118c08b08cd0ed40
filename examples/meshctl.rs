//! `meshctl`: the operator's command-line tool for mesh.
//!
//! ```text
//! cargo run --example meshctl -- check examples/config/sidecar.toml
//! cargo run --example meshctl -- ca init --trust-domain cluster.local --out ca/
//! cargo run --example meshctl -- ca issue --ca ca/ --id spiffe://cluster.local/ns/default/sa/web --out web/
//! cargo run --example meshctl -- ca inspect web/cert.pem
//! cargo run --example meshctl -- dtab parse '/svc => /#/fs; /svc/web => /svc/web-v2'
//! cargo run --example meshctl -- dtab lookup --dtab '/svc => /#/fs' /svc/web
//! cargo run --example meshctl -- dtab eval '(~ | /a) & /b'
//! cargo run --example meshctl -- dtab bind --dtab '/svc => /$/inet/127.0.0.1/8080' /svc/web
//! cargo run --example meshctl -- dtab delegate --dtab '/svc => /#/fs' /svc/web
//! cargo run --example meshctl -- dtab delegate --admin 127.0.0.1:4191 /svc/web
//! cargo run --example meshctl -- --version
//! ```
//!
//! `meshctl ca init` creates a trust anchor (`DIR/ca.pem`, `DIR/ca.key` with mode 0600; with
//! `--intermediate`, an intermediate issuer signed by the CA in `--ca`); `meshctl ca issue`
//! writes a workload's `cert.pem`, `key.pem` and trust bundle `ca.pem`; `meshctl ca inspect`
//! prints each certificate's identity, issuer, serial and validity.
//!
//! `meshctl check FILE` validates a sidecar configuration exactly as the sidecar does at
//! start-up, without binding or connecting anything: it prints `FILE: ok` and exits 0, or
//! prints one line naming the file, line, key and value of the first problem and exits 1.
//!
//! `meshctl dtab` works with delegation tables (see `mesh_core::dtab`); its output is a
//! contract other tools parse:
//!
//! - `parse DTAB` prints the canonical form; a syntax error exits 2 naming the offset.
//! - `lookup --dtab DTAB PATH` prints one rewrite step as a canonical tree (`~`: no match).
//! - `eval TREE` prints the tree's leaves as a JSON array of paths, `null` when it is
//!   negative or fails.
//! - `bind --dtab DTAB PATH` binds with the built-in names only (`/$/inet` with a literal IP
//!   or a host name resolved now; `/#/…` is negative) and prints `{"result":"neg"}`,
//!   `{"result":"fail"}`, `{"result":"empty"}` or
//!   `{"result":"bound","addrs":[{"addr":"127.0.0.1:8080","weight":1.0}]}`; a binding error
//!   (a loop: "max delegation depth …") exits 1.
//! - `delegate --dtab DTAB PATH` prints how the binding went, step by step; with
//!   `--admin ADDR` it asks a running proxy's `/delegator.json` instead (its namers, its
//!   dtab, plus `--dtab` dentries if given) and prints the answer the same way.
//!
//! Each subcommand is one variant of [`Command`] with its own argument struct and one
//! function; the certificate authority (`ca`), dtab tools (`dtab`) and live statistics
//! (`stat`) join them that way.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_core::dtab::{self as dtabs, BindError, Binder, Dtab, NameTree, ParseError};
use mesh_tls::Identity;
use mesh_tls::ca::{Ca, CaError, inspect};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "mesh command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `meshctl` does.
#[derive(Debug, Subcommand)]
enum Command {
    /// Validates a configuration file without starting anything.
    Check(CheckArgs),
    /// The mesh certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Delegation tables: parse, look up, evaluate, bind and explain.
    #[command(subcommand)]
    Dtab(DtabCommand),
}

/// `meshctl dtab`.
#[derive(Debug, Subcommand)]
enum DtabCommand {
    /// Prints a dtab in canonical form (exit 2 on a syntax error).
    Parse {
        /// The dtab, e.g. `/svc => /#/fs; /svc/web => /svc/web-v2`.
        #[arg(value_name = "DTAB")]
        dtab: String,
    },
    /// Prints one rewrite step of PATH through the dtab (`~` when no dentry matches).
    Lookup {
        /// The dtab.
        #[arg(long, value_name = "DTAB")]
        dtab: String,
        /// The path, e.g. `/svc/web`.
        #[arg(value_name = "PATH")]
        path: String,
    },
    /// Prints a name tree's leaves as a JSON array (`null`: negative or failed).
    Eval {
        /// The tree, e.g. `(~ | /a) & /b`.
        #[arg(value_name = "TREE")]
        tree: String,
    },
    /// Binds PATH with the built-in names only and prints the addresses as JSON.
    Bind {
        /// The dtab.
        #[arg(long, value_name = "DTAB")]
        dtab: String,
        /// The path.
        #[arg(value_name = "PATH")]
        path: String,
    },
    /// Prints every step of binding PATH, locally or as a running proxy does it.
    Delegate(DelegateArgs),
}

/// `meshctl dtab delegate`.
#[derive(Debug, clap::Args)]
struct DelegateArgs {
    /// The dtab (with --admin: dentries appended to the proxy's own).
    #[arg(long, value_name = "DTAB", required_unless_present = "admin")]
    dtab: Option<String>,
    /// Ask the proxy whose admin server listens here (`host:port`).
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// The path.
    #[arg(value_name = "PATH")]
    path: String,
}

/// `meshctl ca`.
#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Creates a trust anchor (or, with --ca, an intermediate issuer) in a directory.
    Init(CaInitArgs),
    /// Issues a workload certificate for a SPIFFE ID.
    Issue(CaIssueArgs),
    /// Prints the identity, issuer, serial and validity of each certificate in a PEM file.
    Inspect(CaInspectArgs),
}

/// `meshctl ca init`.
#[derive(Debug, clap::Args)]
struct CaInitArgs {
    /// The trust domain, e.g. `cluster.local` (for an intermediate: the parent's).
    #[arg(long, value_name = "TD", required_unless_present = "ca")]
    trust_domain: Option<String>,
    /// Sign an intermediate issuer with the CA in this directory instead of a new root.
    #[arg(long, value_name = "DIR")]
    ca: Option<PathBuf>,
    /// Where to write `ca.pem` and `ca.key`.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How long the CA certificate is valid.
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = humantime::parse_duration)]
    lifetime: std::time::Duration,
}

/// `meshctl ca issue`.
#[derive(Debug, clap::Args)]
struct CaIssueArgs {
    /// The CA directory (`ca.pem`, `ca.key`).
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// The workload's SPIFFE ID, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    #[arg(long, value_name = "SPIFFE_ID")]
    id: String,
    /// Where to write `cert.pem`, `key.pem` and `ca.pem`.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How long the certificate is valid.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    lifetime: std::time::Duration,
}

/// `meshctl ca inspect`.
#[derive(Debug, clap::Args)]
struct CaInspectArgs {
    /// A PEM file with one or more certificates.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

/// `meshctl check`.
#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The sidecar configuration file (TOML).
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

fn main() -> ExitCode {
    // clap prints usage errors itself and exits 2; a failed command prints one line and
    // exits 1.
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Check(args) => check(&args.file).map_err(|e| e.to_string()),
        Command::Ca(CaCommand::Init(args)) => ca_init(args).map_err(|e| e.to_string()),
        Command::Ca(CaCommand::Issue(args)) => ca_issue(args),
        Command::Ca(CaCommand::Inspect(args)) => ca_inspect(&args.file).map_err(|e| e.to_string()),
        Command::Dtab(cmd) => {
            return match dtab(cmd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(DtabFailure::Syntax { input, error }) => {
                    eprintln!("error: {error}");
                    eprint!("{}", point_at(&input, error.offset));
                    ExitCode::from(2)
                }
                Err(DtabFailure::Other(message)) => {
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &Path) -> Result<(), mesh_proxy::config::ConfigError> {
    mesh_proxy::config::check_file(file)?;
    println!("{}: ok", file.display());
    Ok(())
}

fn ca_init(args: &CaInitArgs) -> Result<(), CaError> {
    let ca = match (&args.ca, &args.trust_domain) {
        (Some(parent), td) => {
            let parent = Ca::load(parent)?;
            if let Some(td) = td
                && td != parent.trust_domain()
            {
                return Err(CaError::InvalidTrustDomain(
                    td.clone(),
                    format!(
                        "an intermediate keeps its parent's trust domain {}",
                        parent.trust_domain()
                    ),
                ));
            }
            parent.intermediate(args.lifetime)?
        }
        (None, Some(td)) => Ca::new(td, args.lifetime)?,
        (None, None) => {
            return Err(CaError::InvalidTrustDomain(
                String::new(),
                "--trust-domain is required".to_owned(),
            ));
        }
    };
    ca.write(&args.out)?;
    println!(
        "{}: CA for trust domain {} (ca.pem, ca.key)",
        args.out.display(),
        ca.trust_domain()
    );
    Ok(())
}

fn ca_issue(args: &CaIssueArgs) -> Result<(), String> {
    let id: Identity = args
        .id
        .parse()
        .map_err(|e: mesh_tls::InvalidIdentity| e.to_string())?;
    let ca = Ca::load(&args.ca).map_err(|e| e.to_string())?;
    let issued = ca.issue(&id, args.lifetime).map_err(|e| e.to_string())?;
    issued.write(&args.out).map_err(|e| e.to_string())?;
    println!("{}: {id} (cert.pem, key.pem, ca.pem)", args.out.display());
    Ok(())
}

fn ca_inspect(file: &Path) -> Result<(), CaError> {
    let text = std::fs::read_to_string(file).map_err(|source| CaError::Io {
        path: file.to_owned(),
        source,
    })?;
    let certs = inspect(&text).map_err(|e| match e {
        CaError::Invalid { reason, .. } => CaError::Invalid {
            path: file.to_owned(),
            reason,
        },
        other => other,
    })?;
    for (i, c) in certs.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("identity:   {}", c.identity.as_deref().unwrap_or("(none)"));
        println!("subject:    {}", c.subject);
        println!("issuer:     {}", c.issuer);
        println!("serial:     {}", c.serial);
        println!("not before: {}", c.not_before);
        println!("not after:  {}", c.not_after);
        println!("ca:         {}", c.is_ca);
    }
    Ok(())
}

/// Why a `meshctl dtab` command failed: bad syntax (exit 2) or anything else (exit 1).
enum DtabFailure {
    Syntax { input: String, error: ParseError },
    Other(String),
}

fn syntax<T>(input: &str, r: Result<T, ParseError>) -> Result<T, DtabFailure> {
    r.map_err(|error| DtabFailure::Syntax {
        input: input.to_owned(),
        error,
    })
}

/// The line of `input` holding byte `offset`, with a caret under it.
fn point_at(input: &str, offset: usize) -> String {
    let offset = offset.min(input.len());
    let start = input[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = input[offset..]
        .find('\n')
        .map_or(input.len(), |i| offset + i);
    let column = input[start..offset].chars().count();
    format!("  {}\n  {}^\n", &input[start..end], " ".repeat(column))
}

fn dtab(cmd: &DtabCommand) -> Result<(), DtabFailure> {
    match cmd {
        DtabCommand::Parse { dtab } => {
            println!("{}", syntax(dtab, Dtab::read(dtab))?);
        }
        DtabCommand::Lookup { dtab, path } => {
            let d = syntax(dtab, Dtab::read(dtab))?;
            let p = syntax(path, dtabs::Path::read(path))?;
            println!("{}", d.lookup(&p));
        }
        DtabCommand::Eval { tree } => {
            let t = syntax(tree, NameTree::read(tree))?;
            let json = match t.eval() {
                None => serde_json::Value::Null,
                Some(leaves) => leaves.iter().map(|(p, _)| p.to_string()).collect(),
            };
            println!("{json}");
        }
        DtabCommand::Bind { dtab, path } => {
            let d = syntax(dtab, Dtab::read(dtab))?;
            let p = syntax(path, dtabs::Path::read(path))?;
            let tree = dtabs::bind(&d, &p, &BuiltinNamers)
                .map_err(|e| DtabFailure::Other(e.to_string()))?;
            match bind_json(&tree) {
                serde_json::Value::String(text) => println!("{text}"),
                other => println!("{other}"),
            }
        }
        DtabCommand::Delegate(args) => match &args.admin {
            None => {
                let text = args.dtab.as_deref().unwrap_or_default();
                let d = syntax(text, Dtab::read(text))?;
                let p = syntax(&args.path, dtabs::Path::read(&args.path))?;
                print!("{}", dtabs::delegate(&d, &p, &BuiltinNamers));
            }
            Some(admin) => {
                // Check the syntax here, so a typo is reported like a local one.
                syntax(&args.path, dtabs::Path::read(&args.path))?;
                if let Some(text) = &args.dtab {
                    syntax(text, Dtab::read(text))?;
                }
                let json = admin_delegate(admin, &args.path, args.dtab.as_deref())
                    .map_err(DtabFailure::Other)?;
                // The proxy answers {router, path, dtab, delegation}; the tree is the last.
                print!(
                    "{}",
                    dtabs::render_json(json.get("delegation").unwrap_or(&json))
                );
            }
        },
    }
    Ok(())
}

/// The addresses a `/$/inet` name resolved to.
#[derive(Debug, Clone, PartialEq)]
struct Addrs(Vec<std::net::SocketAddr>);

impl std::fmt::Display for Addrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(","))
    }
}

/// Only the built-in names: `/$/inet` resolved with the system resolver, no `/#/` namers.
struct BuiltinNamers;

impl Binder for BuiltinNamers {
    type Bound = Addrs;

    fn bind_namer(&self, _path: &dtabs::Path) -> Result<Option<Addrs>, BindError> {
        Ok(None)
    }

    fn bind_inet(&self, host: &str, port: u16, residual: &dtabs::Path) -> Result<Addrs, BindError> {
        use std::net::ToSocketAddrs;
        let host = if host.is_empty() { "127.0.0.1" } else { host };
        let failed = |message: String| BindError::Namer {
            path: dtabs::Path::from_labels(["$", "inet", host, &port.to_string()]).concat(residual),
            message,
        };
        let addrs: Vec<_> = (host, port)
            .to_socket_addrs()
            .map_err(|e| failed(format!("cannot resolve {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(failed(format!("{host} has no addresses")));
        }
        Ok(Addrs(addrs))
    }
}

fn bind_json(tree: &NameTree<Addrs>) -> serde_json::Value {
    use serde_json::json;
    match tree.eval() {
        None if matches!(tree, NameTree::Fail) => json!({ "result": "fail" }),
        None => json!({ "result": "neg" }),
        Some(leaves) if leaves.is_empty() => json!({ "result": "empty" }),
        Some(leaves) => {
            let addrs: Vec<_> = leaves
                .iter()
                .flat_map(|(addrs, weight)| {
                    addrs
                        .0
                        .iter()
                        .map(move |a| json!({ "addr": a.to_string(), "weight": weight }))
                })
                .collect();
            // Written by hand so that `result` comes first, as documented.
            let addrs = serde_json::Value::Array(addrs);
            serde_json::Value::String(format!(r#"{{"result":"bound","addrs":{addrs}}}"#))
        }
    }
}

/// Percent-encodes a query parameter value (everything but RFC 3986 unreserved bytes).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET http://ADMIN/delegator.json?path=…[&dtab=…]`, within 5 seconds.
fn admin_delegate(
    admin: &str,
    path: &str,
    dtab: Option<&str>,
) -> Result<serde_json::Value, String> {
    let mut target = format!("/delegator.json?path={}", percent_encode(path));
    if let Some(d) = dtab {
        target.push_str(&format!("&dtab={}", percent_encode(d)));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let body = runtime
        .block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), http_get(admin, &target)).await
        })
        .map_err(|_| format!("{admin}: no answer within 5s"))??;
    parse_deep_json(&body).map_err(|e| format!("{admin}{target}: not JSON: {e}"))
}

/// The deepest JSON nesting meshctl reads. An explanation nests a level or two per
/// delegation step (at most 100 steps), deeper than serde_json's default limit of 128.
const MAX_JSON_DEPTH: usize = 1024;

/// Parses JSON nested up to [`MAX_JSON_DEPTH`] levels: deeper input is refused by a scan
/// before the recursive parser sees it, so a hostile answer cannot exhaust the stack.
fn parse_deep_json(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_JSON_DEPTH {
        return Err(format!(
            "nested {deepest} levels deep (at most {MAX_JSON_DEPTH})"
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = serde::Deserialize::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// A minimal HTTP/1.1 GET: `Connection: close`, the body read to the end (at most 16 MiB),
/// chunked transfer coding undone.
async fn http_get(authority: &str, target: &str) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MAX: u64 = 16 * 1024 * 1024;
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{authority}: incomplete HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    if status != "200" {
        return Err(format!(
            "{authority}{target}: HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    Ok(body)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunked body")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err("truncated chunk".to_owned());
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn json_deeper_than_serde_default_is_read_up_to_the_limit() {
        assert!(serde_json::from_str::<serde_json::Value>(&nested(300)).is_err());
        assert!(parse_deep_json(nested(300).as_bytes()).is_ok());
        assert!(parse_deep_json(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        let e = parse_deep_json(nested(100_000).as_bytes()).expect_err("too deep");
        assert!(e.contains("100000 levels"), "{e}");
        // Brackets inside strings are text, not nesting.
        let text = format!(r#"{{"a": "{}\"{}"}}"#, "[".repeat(5000), "{".repeat(5000));
        assert!(parse_deep_json(text.as_bytes()).is_ok());
        assert!(parse_deep_json(b"{} trailing").is_err());
    }
}
