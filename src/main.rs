//! The `cuttle` binary: parses flags (each with a `CUTTLE_*` variable) and an optional TOML
//! file, validates once, starts logging and runs the proxy. Exit codes: 0 after a clean
//! shutdown, 2 for configuration errors (one line per problem), 1 when it cannot start.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cuttle::config::{Options, ValidConfig};

#[derive(Parser)]
#[command(
    name = "cuttle",
    version,
    about = "A caching HTTP/HTTPS forward proxy for build farms"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// TOML configuration file (keys are the flag names).
    #[arg(long, env = "CUTTLE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    opts: Options,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// Print the effective configuration with secrets masked; exit 2 on problems.
    CheckConfig(RunArgs),
}

fn load(args: RunArgs) -> Result<ValidConfig, Vec<String>> {
    let file = match &args.config {
        Some(p) => Options::from_file(p)?,
        None => Options::default(),
    };
    args.opts.or(file).validate()
}

#[allow(clippy::print_stderr, clippy::print_stdout)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    let (check_only, args) = match cli.command {
        None => (false, cli.run),
        Some(Command::Run(a)) => (false, a),
        Some(Command::CheckConfig(a)) => (true, a),
    };
    let config = match load(args) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("cuttle: config: {p}");
            }
            return ExitCode::from(2);
        }
    };
    if check_only {
        print!("{config}");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = cuttle::telemetry::init_tracing(&config.log_level) {
        eprintln!("cuttle: config: {e}");
        return ExitCode::from(2);
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cuttle: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: ValidConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(cuttle::app::run(config))?;
    Ok(())
}
