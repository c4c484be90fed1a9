//! The `cuttle` binary: parses flags (each with a `CUTTLE_*` variable) and an optional TOML
//! file, validates once, starts logging and runs the proxy; also the client commands that
//! talk to a running instance's admin port (`status`, `cache stats`, `cache purge`). Exit
//! codes: 0 after a clean shutdown, 2 for configuration errors (one line per problem), 1 when
//! it cannot start or reach the admin port.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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

#[derive(clap::Args, Clone)]
struct AdminArgs {
    /// Admin URL of the running instance.
    #[arg(
        long = "admin",
        env = "CUTTLE_ADMIN_URL",
        default_value = "http://127.0.0.1:9128"
    )]
    admin_url: String,
    /// Admin token, when the instance requires one.
    #[arg(long, env = "CUTTLE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// Print the effective configuration with secrets masked; exit 2 on problems.
    CheckConfig(RunArgs),
    /// Show a running instance's figures (the status page, in a terminal).
    Status(AdminArgs),
    /// Inspect or purge a running instance's cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Fetch every artifact that lockfiles pin through a running cuttle, checking digests.
    Warm(cuttle::warm::Args),
    /// The interception CA: create one, or print its certificate for clients.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA in DIR (ca.pem, and ca-key.pem with mode 0600); never overwrites.
    Init {
        /// Directory for ca.pem and ca-key.pem.
        #[arg(long)]
        dir: PathBuf,
        /// Hosts to be intercepted: when all are explicit names the CA is name-constrained
        /// to them.
        #[arg(long, value_delimiter = ',')]
        intercept: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Print the CA certificate (PEM) from a file, or from a running instance's admin port.
    Export {
        /// CA certificate file (as given to --ca-cert).
        #[arg(long, env = "CUTTLE_CA_CERT_FILE")]
        ca_cert: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Objects, bytes, hits and misses per tier.
    Stats(AdminArgs),
    /// Remove every stored variant of a URL.
    Purge {
        /// The absolute URL (http://host/path).
        url: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[allow(clippy::print_stderr, clippy::print_stdout)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    let (check_only, args) = match cli.command {
        None => (false, cli.run),
        Some(Command::Run(a)) => (false, a),
        Some(Command::CheckConfig(a)) => (true, a),
        Some(Command::Status(a)) => return client(a, ClientCall::Status),
        Some(Command::Ca { command }) => return ca(command),
        Some(Command::Warm(a)) => return cuttle::warm::main(a),
        Some(Command::Cache { command }) => {
            return match command {
                CacheCommand::Stats(a) => client(a, ClientCall::CacheStats),
                CacheCommand::Purge { url, admin } => client(admin, ClientCall::Purge(url)),
            };
        }
    };
    let secret_flags = secret_flags(std::env::args_os());
    let config = match cuttle::config::load(&args.opts, args.config.as_deref()) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("cuttle: config: {p}");
            }
            return ExitCode::from(2);
        }
    };
    if check_only {
        for (flag, instead) in &secret_flags {
            eprintln!("cuttle: warning: {}", secret_flag_warning(flag, instead));
        }
        print!("{config}");
        let (mem, disk) = config
            .cache
            .as_ref()
            .map_or((0, 0), |c| (c.mem_size, c.disk_size));
        let bound = cuttle::config::sizing::memory_bound(mem, disk, config.max_connections as u64);
        println!(
            "# memory bound (README \"Sizing memory\"): {} MiB",
            bound.div_ceil(1 << 20)
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = cuttle::telemetry::init_tracing(&config.log_level) {
        eprintln!("cuttle: config: {e}");
        return ExitCode::from(2);
    }
    for (flag, instead) in &secret_flags {
        tracing::warn!("{}", secret_flag_warning(flag, instead));
    }
    let reloader = {
        let (opts, file) = (args.opts.clone(), args.config.clone());
        cuttle::config::reload::Reloader::new(Arc::new(move || {
            cuttle::config::load(&opts, file.as_deref())
        }))
    };
    match serve(config, reloader) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cuttle: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Flags that carry a secret, and the forms that keep it out of the process's command line.
const SECRET_FLAGS: &[(&str, &str)] = &[
    (
        "--admin-token",
        "CUTTLE_ADMIN_TOKEN_FILE (a mounted Secret) or CUTTLE_ADMIN_TOKEN",
    ),
    (
        "--cache-peer",
        "CACHE_PEER_FILE (a mounted Secret) or CACHE_PEER",
    ),
];

/// The secret-carrying flags present on the command line (`--flag value` or `--flag=value`),
/// with the forms to use instead. The command line of every process is readable by every
/// user of the host (`/proc/<pid>/cmdline`, `ps`), the environment only by the process's
/// owner.
fn secret_flags(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<(&'static str, &'static str)> {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    SECRET_FLAGS
        .iter()
        .filter(|(flag, _)| {
            args.iter().any(|a| {
                let a = a.to_string_lossy();
                a == *flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('='))
            })
        })
        .copied()
        .collect()
}

fn secret_flag_warning(flag: &str, instead: &str) -> String {
    format!(
        "{flag} was given on the command line, where any process on this host can read it \
         (/proc/<pid>/cmdline, ps); use {instead} instead"
    )
}

#[allow(clippy::print_stderr, clippy::print_stdout)]
fn ca(command: CaCommand) -> ExitCode {
    match command {
        CaCommand::Init {
            dir,
            intercept,
            days,
        } => match cuttle::mitm::ca::Ca::init(&dir, &intercept, days) {
            Ok(_) => {
                println!(
                    "wrote {} and {} (mode 0600)",
                    dir.join("ca.pem").display(),
                    dir.join("ca-key.pem").display()
                );
                if cuttle::mitm::ca::name_constraints(&intercept).is_some() {
                    println!("name-constrained to: {}", intercept.join(", "));
                } else {
                    println!(
                        "not name-constrained (give --intercept with explicit host names to constrain it)"
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cuttle: ca init: {e}");
                ExitCode::FAILURE
            }
        },
        CaCommand::Export {
            ca_cert: Some(path),
            ..
        } => match std::fs::read_to_string(&path) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => {
                print!("{pem}");
                ExitCode::SUCCESS
            }
            Ok(_) => {
                eprintln!(
                    "cuttle: ca export: {} holds no PEM certificate",
                    path.display()
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("cuttle: ca export: cannot read {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        CaCommand::Export {
            ca_cert: None,
            admin,
        } => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cuttle: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let r = rt.block_on(cuttle::admin::client::call(
                &admin.admin_url,
                http::Method::GET,
                "/ca.pem",
                admin.admin_token.as_deref(),
            ));
            match r {
                Ok((s, body)) if s.is_success() => {
                    print!("{body}");
                    ExitCode::SUCCESS
                }
                Ok((s, body)) => {
                    eprintln!("cuttle: ca export: {s}: {}", body.trim());
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("cuttle: ca export: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(config: ValidConfig, reloader: cuttle::config::reload::Reloader) -> anyhow::Result<()> {
    runtime()?.block_on(cuttle::app::run(config, Some(reloader)))?;
    Ok(())
}

enum ClientCall {
    Status,
    CacheStats,
    Purge(String),
}

#[allow(clippy::print_stderr, clippy::print_stdout)]
fn client(admin: AdminArgs, call: ClientCall) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cuttle: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let token = admin.admin_token.as_deref();
    let result = rt.block_on(async {
        match &call {
            ClientCall::Status => {
                cuttle::admin::client::call(
                    &admin.admin_url,
                    http::Method::GET,
                    "/api/stats",
                    token,
                )
                .await
            }
            ClientCall::CacheStats => {
                cuttle::admin::client::call(
                    &admin.admin_url,
                    http::Method::GET,
                    "/api/cache",
                    token,
                )
                .await
            }
            ClientCall::Purge(url) => {
                let q =
                    percent_encoding::utf8_percent_encode(url, percent_encoding::NON_ALPHANUMERIC);
                cuttle::admin::client::call(
                    &admin.admin_url,
                    http::Method::POST,
                    &format!("/api/purge?url={q}"),
                    token,
                )
                .await
            }
        }
    });
    let (status, body) = match result {
        Ok(x) => x,
        Err(e) => {
            eprintln!("cuttle: {e}");
            return ExitCode::FAILURE;
        }
    };
    if status == http::StatusCode::UNAUTHORIZED {
        eprintln!(
            "cuttle: the admin port wants a token: pass --admin-token or set CUTTLE_ADMIN_TOKEN"
        );
        return ExitCode::FAILURE;
    }
    let json: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("cuttle: unexpected answer ({status}): {}", body.trim());
            return ExitCode::FAILURE;
        }
    };
    match call {
        ClientCall::Status => print!("{}", cuttle::admin::client::status_table(&json)),
        ClientCall::CacheStats => print!("{}", cuttle::admin::client::cache_table(&json)),
        ClientCall::Purge(url) => {
            if json["purged"].as_bool() == Some(true) {
                println!("purged {url}");
            } else {
                println!("not in cache: {url}");
                return ExitCode::from(3);
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn secret_flags_are_found() {
        let f = |v: &[&str]| -> Vec<&str> {
            secret_flags(v.iter().map(std::ffi::OsString::from))
                .into_iter()
                .map(|(flag, _)| flag)
                .collect()
        };
        assert_eq!(f(&["cuttle", "--admin-token", "x"]), ["--admin-token"]);
        assert_eq!(f(&["cuttle", "--cache-peer=u:p:h:1"]), ["--cache-peer"]);
        assert!(f(&["cuttle", "--cache-peer-file", "/s/peer"]).is_empty());
        assert!(f(&["cuttle", "--admin-token-file", "/s/t"]).is_empty());
        assert!(f(&["cuttle"]).is_empty());
    }
}

#[cfg(all(feature = "mimalloc", feature = "jemalloc"))]
compile_error!("choose one allocator: the features `mimalloc` and `jemalloc` exclude each other");

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
