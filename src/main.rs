//! The `rocketchat-shim` command: run the proxy, `check` a config, run the `demo`, or
//! `audit verify`/`audit report` the audit trail.
#![forbid(unsafe_code)]
// No `unwrap`/`expect` outside tests: a malformed request gets an error answer, never a panic
// (clippy runs with -D warnings in CI, so a new one fails the build).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod online_check;

// A bench build counts its allocations (see the `countalloc` crate and bench/README.md).
#[cfg(feature = "count-allocations")]
#[global_allocator]
static ALLOCATOR: countalloc::Counting = countalloc::Counting;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rocketchat_shim::config::Config;
use rocketchat_shim::server;

#[derive(Parser)]
#[command(
    name = "rocketchat-shim",
    version,
    about = "A hardening, caching, rate-limiting sidecar proxy for Rocket.Chat's direct-message history endpoint"
)]
struct Cli {
    /// The config file (default: config.toml in the working directory).
    #[arg(long, global = true, env = "ROCKETCHAT_SHIM_CONFIG")]
    config: Option<PathBuf>,
    /// Workers (default: the CPUs the process may run on). On Linux each worker is a thread
    /// with its own current-thread runtime and its own SO_REUSEPORT listener; elsewhere, the
    /// worker threads of one multi-thread runtime (1: a current-thread runtime).
    #[arg(long, global = true)]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and validate the config only; print `ok` or the errors.
    Check {
        /// Then ask the upstream's /api/info (and the endpoint's setting with the service
        /// account) and say whether the config fits it; exit 1 when it cannot be reached.
        #[arg(long)]
        online: bool,
    },
    /// Start a stand-in Rocket.Chat with seeded data and the shim in front of it, and print
    /// curl commands to try (builds with the default `demo` feature only).
    #[cfg(feature = "demo")]
    Demo,
    /// Check or read the audit trail (who read whose direct messages).
    #[command(subcommand)]
    Audit(rocketchat_shim::audit::cli::AuditCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("config.toml"));
    match cli.command {
        Some(Command::Check { online }) => match Config::load(&path) {
            Ok(config) => {
                // The files the config names (the TLS pair) must load too, as at start.
                if let Err(e) = rocketchat_shim::connection::front::check_files(&config) {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
                println!("ok");
                if online {
                    return online_check::main(&config);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Audit(command)) => rocketchat_shim::audit::cli::run(command),
        #[cfg(feature = "demo")]
        Some(Command::Demo) => {
            init_tracing("warn,access=off");
            runtime(cli.workers)
                .and_then(|rt| {
                    rt.block_on(rocketchat_shim::demo::run()).map_err(|e| {
                        eprintln!("demo: {e}");
                        ExitCode::from(1)
                    })
                })
                .map(|()| ExitCode::SUCCESS)
                .unwrap_or_else(|c| c)
        }
        None => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            init_tracing("info");
            let workers = cli
                .workers
                .filter(|&n| n > 0)
                .unwrap_or_else(default_workers);
            // Per-worker listeners: the main runtime is worker 0's (current-thread), the
            // others start their own (`server::start_workers`).
            let shape = if server::PER_WORKER_LISTENERS {
                Some(1)
            } else {
                Some(workers)
            };
            match runtime(shape) {
                Ok(rt) => rt.block_on(run(config, path, workers)),
                Err(c) => c,
            }
        }
    }
}

fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    // One worker: a current-thread runtime, so a request's tasks (the client connection, the
    // upstream connection, the pool) hand off without cross-thread wake-ups (about 10 % more
    // pass-through requests/s in bench/run.sh than a one-worker multi-thread runtime).
    let mut b = if workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all();
    if let Some(n) = workers.filter(|&n| n > 1) {
        b.worker_threads(n);
    }
    b.build().map_err(|e| {
        eprintln!("cannot start the runtime: {e}");
        ExitCode::from(1)
    })
}

/// One worker per CPU the process may run on (its affinity mask, cgroup quota), as nginx's
/// `worker_processes auto`.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// JSON lines on stdout, filtered by `RUST_LOG` (default `default`).
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .init();
}

async fn run(config: Config, path: PathBuf, workers: usize) -> ExitCode {
    let started = if server::PER_WORKER_LISTENERS {
        server::start_workers(config, workers).await
    } else {
        server::start(config).await
    };
    let running = match started {
        Ok(r) => r,
        Err(e @ server::StartError::Setup(_)) => {
            tracing::error!(error = %e, "bad configuration");
            eprintln!("{e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            eprintln!("cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = server::reload_from(&running.app, &path);
            }
        }
    }
    tracing::info!("shutdown requested");
    running.shutdown();
    running.wait().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
