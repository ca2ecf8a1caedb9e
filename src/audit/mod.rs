//! The audit trail of who read whose direct messages (spec/shim.md 9.1).
//!
//! A leaf module: the endpoint pipeline builds an [`Event`] for each answer and awaits
//! [`AuditTrail::append`] before the first byte of an allowed answer goes out; nothing here
//! knows about HTTP, the router or the cache. The pieces, one concern per file:
//!
//! - [`record`]: the record's fields, in the order of 9.1, and its line;
//! - [`answer`]: what a record says about an answer body (message count and id digest, error id);
//! - [`chain`]: the `prev` link (SHA-256, or HMAC-SHA256 with a key);
//! - [`clock`]: the timestamps of records and rotated file names;
//! - `tail` and `rotate`: continuing an existing file at start-up, and rotation;
//! - [`writer`]: the dedicated writer thread, its bounded queue and group commit;
//! - [`stats`]: counters and the fsync latency histogram, rendered for `/metrics`;
//! - [`verify`], [`report`] and [`cli`]: `rocketchat-shim audit verify` and `audit report`.

pub mod answer;
pub mod chain;
pub mod cli;
pub mod clock;
pub mod record;
pub mod report;
mod rotate;
pub mod stats;
mod tail;
pub mod verify;
pub mod writer;

pub use answer::{error_code, messages_digest, MessagesDigest};
pub use chain::{Linker, GENESIS};
pub use record::{Alias, CacheStatus, Decision, Endpoint, Event, Person, Record, Room};
pub use stats::{AuditStats, StatsSnapshot};
pub use writer::{AuditError, AuditTrail, Receipt};

/// The 503 body the endpoint sends instead of the messages when `on_failure = "deny"` and the
/// record cannot be written (spec/shim.md 9.1).
pub const UNAVAILABLE_BODY: &str = "{\"success\":false,\"error\":\"The audit trail cannot be written [error-audit-unavailable]\",\"errorType\":\"error-audit-unavailable\"}";

#[cfg(test)]
mod config_tests {
    //! `[audit]` parsing and validation (kept here so config.rs carries only the struct).
    use std::path::Path;

    use crate::config::{AuditFsync, AuditOnFailure, Config};

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_every_key() {
        let d = parse("").expect("defaults").audit;
        assert!(!d.enabled);
        assert_eq!(d.path, Path::new("rocketchat-shim-audit.jsonl"));
        assert_eq!(
            (d.fsync, d.on_failure),
            (AuditFsync::Always, AuditOnFailure::Deny)
        );
        assert_eq!(d.max_file_bytes, 256 << 20);
        assert_eq!((d.instance.as_str(), d.hmac_key_env.as_str()), ("", ""));
        let c = parse(
            "[audit]\nenabled = true\npath = \"/var/lib/shim/a.jsonl\"\ninstance = \"eu-1\"\nfsync = \"never\"\non_failure = \"allow\"\nmax_file_bytes = \"1MiB\"\nhmac_key_env = \"AUDIT_KEY\"\n",
        )
        .expect("valid")
        .audit;
        assert!(c.enabled);
        assert_eq!(
            (c.fsync, c.on_failure, c.max_file_bytes),
            (AuditFsync::Never, AuditOnFailure::Allow, 1 << 20)
        );
        assert_eq!(
            (c.instance.as_str(), c.hmac_key_env.as_str()),
            ("eu-1", "AUDIT_KEY")
        );
    }

    #[test]
    fn the_shipped_config_turns_it_on() {
        let c = parse(include_str!("../../config.toml")).expect("root config.toml");
        assert!(c.audit.enabled);
        let full = parse(include_str!("../../fuzz/corpus/config/full.toml")).expect("full.toml");
        assert_eq!(full.audit, c.audit);
    }

    #[test]
    fn bad_values_name_their_line_or_key() {
        let e = parse("[audit]\nenabled = true\nfsync = \"sometimes\"\n").expect_err("bad fsync");
        assert!(e.starts_with("test.toml:3:"), "{e}");
        let e = parse("[audit]\non_failure = \"local\"\n").expect_err("bad on_failure");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        let e = parse("[audit]\nmax_file_bytes = \"12 bananas\"\n").expect_err("bad size");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        let e = parse("[audit]\nrotate = true\n").expect_err("unknown key");
        assert!(e.starts_with("test.toml:2:") && e.contains("rotate"), "{e}");
        assert_eq!(
            parse("[audit]\nmax_file_bytes = 100\n").expect_err("too small"),
            "test.toml: audit.max_file_bytes: must be at least 4KiB"
        );
        assert_eq!(
            parse("[audit]\npath = \"\"\n").expect_err("no path"),
            "test.toml: audit.path: must name a file"
        );
        assert_eq!(
            parse("[audit]\nhmac_key_env = \"A KEY\"\n").expect_err("bad name"),
            "test.toml: audit.hmac_key_env: \"A KEY\" is not an environment variable name"
        );
    }
}
