//! `--workers N` in nginx's shape (one current-thread runtime and one SO_REUSEPORT listener
//! per worker thread): connections spread over the workers, one drain on SIGTERM, a SIGHUP
//! reload reaches every worker, and one `server.max_connections` holds across them.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::process::Child;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::proc::*;
use common::*;
use rocketchat_standin::Standin;

/// Starts the binary with `--workers 2` and the accept debug line on; returns the child, the
/// client address, the admin address and the later stdout lines. The caller waits for it.
/// The binary with `--workers 2`, logging each accepted connection's worker.
fn spawn_two_workers(config: &std::path::Path) -> (Child, SocketAddr, String, Receiver<String>) {
    let p = spawn_proc_with(config, 2, "info,rocketchat_shim::server=debug");
    let addr = p.addr.parse().expect("addr");
    (p.child, addr, p.admin, p.lines)
}

/// A config file with `server_extra` in `[server]`.
fn config(dir: &std::path::Path, upstream: &str, server_extra: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"10s\"\n{server_extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\n"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

const GET_INFO: &[u8] = b"GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// How many "client connection accepted" lines name each worker.
fn accepted_per_worker(lines: &[String]) -> [usize; 2] {
    let mut per = [0usize; 2];
    for l in lines
        .iter()
        .filter(|l| l.contains("client connection accepted"))
    {
        let v: serde_json::Value = serde_json::from_str(l).expect("json log line");
        let w = v["worker"].as_u64().expect("worker field") as usize;
        per[w] += 1;
    }
    per
}

fn stop(mut child: Child) {
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_both_worker_threads() {
    let standin = Standin::start().await.expect("standin");
    let dir = tempdir("workers-spread");
    let cfg = config(&dir, &standin.url(), "");
    let (child, addr, _admin, rx) = spawn_two_workers(&cfg);
    // The second worker is a thread of its own.
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect();
    assert!(
        names.iter().any(|n| n.trim() == "rcshim-worker-1"),
        "{names:?}"
    );
    for _ in 0..40 {
        let answer = raw(addr, GET_INFO, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines: Vec<String> = rx.try_iter().collect();
    let per = accepted_per_worker(&lines);
    // 40 connections from 40 source ports: the kernel's hash puts some on each listener
    // (all on one: a chance of 2^-39).
    assert_eq!(per[0] + per[1], 40, "{per:?}");
    assert!(per[0] > 0 && per[1] > 0, "{per:?}");
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_worker_then_exits_0() {
    let standin = Standin::start().await.expect("standin");
    standin.set_delay("/api/info", Duration::from_millis(1500));
    let dir = tempdir("workers-sigterm");
    let cfg = config(&dir, &standin.url(), "");
    let (mut child, addr, _admin, rx) = spawn_two_workers(&cfg);
    // Requests in flight on several connections (so on both workers, see the check below).
    let inflight: Vec<_> = (0..8)
        .map(|_| tokio::spawn(raw(addr, GET_INFO, Duration::from_secs(8))))
        .collect();
    for _ in 0..300 {
        if standin.count_path("/api/info") >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(standin.count_path("/api/info"), 8);
    signal(&child, "TERM");
    for r in inflight {
        let answer = r.await.expect("join");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"success\":true"), "{answer}");
    }
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
        .await
        .expect("join");
    assert_eq!(code, 0);
    let lines: Vec<String> = rx.try_iter().collect();
    let per = accepted_per_worker(&lines);
    assert!(
        per[0] > 0 && per[1] > 0,
        "both workers had a request: {per:?}"
    );
    // One drain, one "stopped".
    assert_eq!(
        lines.iter().filter(|l| l.contains("\"drained\"")).count(),
        1
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_reaches_every_worker() {
    let old = Standin::start().await.expect("standin");
    let new = Standin::start().await.expect("standin");
    let dir = tempdir("workers-reload");
    let cfg = config(&dir, &old.url(), "");
    let (child, addr, _admin, rx) = spawn_two_workers(&cfg);
    config(&dir, &new.url(), "");
    signal(&child, "HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("reload line");
        if l.contains("configuration reloaded") {
            break;
        }
    }
    for _ in 0..20 {
        let answer = raw(addr, GET_INFO, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per = accepted_per_worker(&rx.try_iter().collect::<Vec<_>>());
    assert!(per[0] > 0 && per[1] > 0, "{per:?}");
    // Every request, whichever worker took it, went to the new upstream.
    assert_eq!(old.count_path("/api/info"), 0);
    assert_eq!(new.count_path("/api/info"), 20);
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_across_workers() {
    let standin = Standin::start().await.expect("standin");
    standin.set_delay("/api/info", Duration::from_millis(1500));
    let dir = tempdir("workers-maxconn");
    let cfg = config(&dir, &standin.url(), "max_connections = 2");
    let (child, addr, _admin, rx) = spawn_two_workers(&cfg);
    // Six connections at once: with a cap per worker, three or more would be served at once
    // unless the kernel put all six on one listener (a chance of 1 in 32).
    let all: Vec<_> = (0..6)
        .map(|_| tokio::spawn(raw(addr, GET_INFO, Duration::from_secs(10))))
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        standin.count_path("/api/info"),
        2,
        "only two connections are served at once"
    );
    // The others wait in the backlog and are served as slots free up.
    for r in all {
        let answer = r.await.expect("join");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(standin.count_path("/api/info"), 6);
    let per = accepted_per_worker(&rx.try_iter().collect::<Vec<_>>());
    assert_eq!(per[0] + per[1], 6, "{per:?}");
    stop(child);
}
