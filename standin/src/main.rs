//! `rocketchat-standin [--listen 127.0.0.1:3000] [--dm-history-disabled] [--rc-version V]`:
//! runs the stand-in Rocket.Chat server with the default seed until SIGTERM or Ctrl-C
//! (`--rc-version` sets what `/api/info` reports, e.g. `5.4.2` to play a server before 6).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use rocketchat_standin::{Seed, Standin};

const USAGE: &str =
    "usage: rocketchat-standin [--listen ADDR] [--dm-history-disabled] [--rc-version VERSION]";

/// The command line: listen address, initial setting, `/api/info` version.
struct Args {
    listen: SocketAddr,
    dm_history_enabled: bool,
    version: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 3000));
    let mut dm_history_enabled = true;
    let mut version = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let v = args.next().ok_or("--listen needs an address")?;
                listen = v
                    .parse()
                    .map_err(|e| format!("bad --listen address {v:?}: {e}"))?;
            }
            a if a.starts_with("--listen=") => {
                let v = &a["--listen=".len()..];
                listen = v
                    .parse()
                    .map_err(|e| format!("bad --listen address {v:?}: {e}"))?;
            }
            "--dm-history-disabled" => dm_history_enabled = false,
            "--rc-version" => {
                let v = args.next().ok_or("--rc-version needs a version")?;
                if v.trim().is_empty() {
                    return Err("--rc-version needs a version".into());
                }
                version = Some(v);
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Args {
        listen,
        dm_history_enabled,
        version,
    })
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal sent right after the
/// "listening" line is caught) and returns a future that resolves when one arrives.
#[cfg(unix)]
fn termination() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        match (term, int) {
            (Some(mut term), Some(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn termination() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let Args {
        listen,
        dm_history_enabled,
        version,
    } = match parse_args() {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let seed = Seed {
        dm_history_enabled,
        ..Seed::default()
    };
    let standin = match Standin::start_on(listen, seed).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rocketchat-standin: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(v) = version {
        standin.set_version(&v);
    }
    let signalled = termination();
    let mut out = std::io::stdout();
    let _ = writeln!(out, "rocketchat-standin listening on {}", standin.url());
    let _ = out.flush();
    signalled.await;
    standin.shutdown().await;
    ExitCode::SUCCESS
}
