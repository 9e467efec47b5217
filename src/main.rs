//! The `edge` binary: parse the command line, set up logging, call the
//! library, map errors to exit codes (0 ok, 1 user error, 2 usage error).

use clap::Parser;
use edge::cli::{Cli, Command};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Run { config, no_watch } => {
            // One core (a CPU affinity or cgroup of one): everything on one
            // thread. More: the main runtime for the control plane and QUIC,
            // one single-threaded worker per core for TCP connections.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let (runtime, workers) = if cores == 1 {
                (tokio::runtime::Builder::new_current_thread().enable_all().build(), 0)
            } else {
                (tokio::runtime::Builder::new_multi_thread().enable_all().build(), cores)
            };
            let runtime = match runtime {
                Ok(r) => r,
                Err(e) => return fail(&format!("cannot start the runtime: {e}")),
            };
            let registry = Arc::new(edge::plugins::registry());
            let opts = edge::server::RunOptions { config, watch: !no_watch, workers };
            match runtime.block_on(edge::server::run(opts, registry)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(edge::server::RunError::Config(diags)) => {
                    eprint!("{}", edge::config::render(&diags));
                    ExitCode::from(1)
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Validate { config } => {
            match edge::compile::load_with(&config, &edge::plugins::registry(), edge::compile::CompileMode::Check) {
                Ok(_) => {
                    println!("valid");
                    ExitCode::SUCCESS
                }
                Err(diags) => {
                    eprint!("{}", edge::config::render(&diags));
                    ExitCode::from(1)
                }
            }
        }
        Command::Fmt { config, check } => fmt(&config, check),
        Command::Ca { command } => match edge::ca_cli::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e.to_string()),
        },
        Command::Agent(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return fail(&format!("cannot start the runtime: {e}")),
            };
            match runtime.block_on(edge::agent::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Reload { config } => match edge::admin::request_reload(&config) {
            Ok(generation) => {
                println!("reloaded: generation {generation}");
                ExitCode::SUCCESS
            }
            Err(edge::admin::ReloadError::Refused(diags)) => {
                eprintln!("{diags}");
                eprintln!("edge: the reload was refused; the server keeps its previous config");
                ExitCode::from(1)
            }
            Err(e) => fail(&e.to_string()),
        },
    }
}

fn fmt(path: &Path, check: bool) -> ExitCode {
    let source = match edge::config::Source::read(path) {
        Ok(s) => s,
        Err(d) => return fail(&d.to_string()),
    };
    let formatted = match edge::config::format(&source) {
        Ok(f) => f,
        Err(diags) => {
            eprint!("{}", edge::config::render(&diags));
            return ExitCode::from(1);
        }
    };
    if formatted == source.text {
        return ExitCode::SUCCESS;
    }
    if check {
        eprintln!("{} is not in canonical form; run `edge fmt --config {}`", path.display(), path.display());
        return ExitCode::from(1);
    }
    match edge::util::write_atomic(path, formatted.as_bytes(), None) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("cannot write {}: {}", path.display(), edge::util::io_reason(&e))),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("edge: {msg}");
    ExitCode::from(1)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("EDGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
