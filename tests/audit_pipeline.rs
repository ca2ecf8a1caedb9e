//! The audit trail wired into the request pipeline (spec/shim.md 9.1, 9.3): the trail opened
//! once at start (an unusable path is exit 1) and closed after the drain; one exact record
//! per answer of the endpoint and of the guarded related endpoints, allowed and refused; the
//! digest recomputed here from the body the client received; durability before disclosure
//! (deny: the exact 503, `/readyz` 503, then recovery); 50 concurrent clients; SIGKILL.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::proc::{write_config, BIN};

/// A fresh directory under the target dir (the trail must be on a real filesystem for
/// `chattr`).
fn tempdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("audit-pipeline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

#[test]
fn an_unusable_trail_path_stops_the_start_with_exit_1_and_the_reason() {
    let dir = tempdir("unusable");
    let missing = dir.join("no-such-dir/audit.jsonl");
    let config = write_config(
        &dir,
        "http://127.0.0.1:3000",
        &format!(
            "[audit]\nenabled = true\npath = \"{}\"\n",
            missing.display()
        ),
    );
    let (code, err) = run_bounded(Command::new(BIN).arg("--config").arg(&config));
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!(
            "cannot open the audit trail {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}

/// Runs a command for at most 20 s (a shim that starts instead of failing is killed):
/// its exit code and stderr.
fn run_bounded(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = cmd
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (code, err)
}
