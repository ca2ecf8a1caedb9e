//! The `rocketchat-shim audit` commands (spec/config.md): `verify` (exit 0 intact, 1 broken,
//! 2 usage or I/O error) and `report` (0, or 2 on usage or I/O error). Clap's own usage
//! errors exit 2 as well.

use std::path::PathBuf;
use std::process::ExitCode;

use time::OffsetDateTime;

use super::chain::Linker;
use super::clock;
use super::report;
use super::verify::{self, Outcome};

/// `rocketchat-shim audit ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the audit chain over FILE... (a rotated set in time order); print
    /// `ok: N records, last seq S, last hash H`, or the first bad line.
    Verify {
        /// Environment variable holding the HMAC key the chain was written with.
        #[arg(long, value_name = "NAME")]
        key_env: Option<String>,
        /// The link the first file continues from (to verify a rotated file alone).
        #[arg(long, value_name = "HASH", value_parser = parse_link)]
        from: Option<String>,
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Who read which conversations: one row per (actor, room).
    Report {
        /// Keep the rows where this user (id or username) is the actor or a member.
        #[arg(long, value_name = "ID_OR_USERNAME")]
        user: Option<String>,
        /// Leave out records older than this RFC 3339 time.
        #[arg(long, value_name = "RFC3339", value_parser = parse_since)]
        since: Option<OffsetDateTime>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

fn parse_link(s: &str) -> Result<String, String> {
    let l = s.trim().to_ascii_lowercase();
    if super::chain::is_link(&l) {
        Ok(l)
    } else {
        Err("expected 64 hex digits (a `last hash` printed by verify)".into())
    }
}

fn parse_since(s: &str) -> Result<OffsetDateTime, String> {
    clock::parse_rfc3339(s)
        .ok_or_else(|| "expected an RFC 3339 time such as 2026-12-01T00:00:00Z".into())
}

/// Runs one `audit` command, printing its result; returns the exit status.
pub fn run(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify {
            key_env,
            from,
            files,
        } => {
            let linker = match Linker::from_env(key_env.as_deref().unwrap_or("")) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("audit verify: {e}");
                    return ExitCode::from(2);
                }
            };
            match verify::verify_files(&files, &linker, from.as_deref()) {
                Ok(Outcome::Intact {
                    records,
                    last_seq,
                    last_hash,
                    notes,
                }) => {
                    for n in notes {
                        println!("{n}");
                    }
                    println!("ok: {records} records, last seq {last_seq}, last hash {last_hash}");
                    ExitCode::SUCCESS
                }
                Ok(Outcome::Broken { at, notes }) => {
                    for n in notes {
                        println!("{n}");
                    }
                    println!("{at}");
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("audit verify: {e}");
                    ExitCode::from(2)
                }
            }
        }
        AuditCommand::Report {
            user,
            since,
            json,
            files,
        } => match report::build(&files, user.as_deref(), since) {
            Ok(rows) => {
                if json {
                    println!("{}", report::to_json(&rows));
                } else {
                    print!("{}", report::to_table(&rows));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("audit report: {e}");
                ExitCode::from(2)
            }
        },
    }
}
