//! Running the shim binary as a child process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_rocketchat-shim");

pub fn write_config(dir: &std::path::Path, upstream: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"10s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\n{extra}\n"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

pub fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rcshim-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

/// Starts the binary and waits for its "listening" log line; returns the child, the client
/// address and a reader thread's channel of later stdout lines.
pub fn spawn(config: &std::path::Path) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let p = spawn_proc(config);
    (p.child, p.addr, p.lines)
}

/// A running shim process.
pub struct Proc {
    pub child: Child,
    pub addr: String,
    /// The admin address ("" when off).
    pub admin: String,
    /// Every later stdout line.
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    /// Lines printed so far (without waiting).
    pub fn drain_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Waits up to `within` for a line containing `needle`.
    pub fn wait_line(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Some(l),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// Starts the binary and waits for its "listening" line. The caller owns the child and waits
/// for it (tests signal it and check its exit code).
pub fn spawn_proc(config: &std::path::Path) -> Proc {
    // One worker: the current-thread runtime the benchmarks use (the Python client tests
    // run the default).
    spawn_proc_with(config, 1, "info")
}

/// [`spawn_proc`] with `--workers workers` and `RUST_LOG=rust_log`.
#[allow(clippy::zombie_processes)]
pub fn spawn_proc_with(config: &std::path::Path, workers: usize, rust_log: &str) -> Proc {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("--workers")
        .arg(workers.to_string())
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn shim");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("listening line");
        if line.contains("rocketchat-shim listening") {
            let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
            let addr = v["addr"].as_str().expect("addr").to_owned();
            let admin = v["admin"].as_str().unwrap_or_default().to_owned();
            return Proc {
                child,
                addr,
                admin,
                lines: rx,
            };
        }
    }
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

pub fn wait_exit(child: &mut Child, within: Duration) -> i32 {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s.code().unwrap_or(-1);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shim did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
