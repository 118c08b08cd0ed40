//! `meshctl`: the operator's command-line tool for mesh.
//!
//! ```text
//! cargo run --example meshctl -- check examples/config/sidecar.toml
//! cargo run --example meshctl -- --version
//! ```
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
        Command::Check(args) => check(&args.file),
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
