//! `meshctl`: the operator's command-line tool for mesh.
//!
//! ```text
//! cargo run --example meshctl -- check examples/config/sidecar.toml
//! cargo run --example meshctl -- ca init --trust-domain cluster.local --out ca/
//! cargo run --example meshctl -- ca issue --ca ca/ --id spiffe://cluster.local/ns/default/sa/web --out web/
//! cargo run --example meshctl -- ca inspect web/cert.pem
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
//! Each subcommand is one variant of [`Command`] with its own argument struct and one
//! function; the certificate authority (`ca`), dtab tools (`dtab`) and live statistics
//! (`stat`) join them that way.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
