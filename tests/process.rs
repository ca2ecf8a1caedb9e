//! The binary as operators run it: `check`, exit codes, SIGTERM drain, streaming memory.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use rocketchat_standin::Standin;

use common::proc::*;

#[test]
fn check_says_ok_or_names_the_line() {
    let dir = tempdir("check");
    let good = write_config(&dir, "http://127.0.0.1:3000", "");
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&good)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[cache]\nttl = \"soon\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("{}:5:7:", bad.display())), "{err}");

    // The environment variable names the file too.
    let out = Command::new(BIN)
        .arg("check")
        .env("ROCKETCHAT_SHIM_CONFIG", &bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));

    // Running with a bad config exits 2; a missing file too.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("missing.toml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));

    // The root config.toml is valid.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(root)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn port_taken_exits_1() {
    let dir = tempdir("taken");
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"\"\n"),
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let standin = Standin::start().await.expect("standin");
    standin.set_delay("/api/info", Duration::from_millis(1500));
    let dir = tempdir("sigterm");
    let cfg = write_config(&dir, &standin.url(), "");
    let (mut child, addr, _rx) = spawn(&cfg);
    let url = format!("http://{addr}/api/info");
    let inflight = tokio::spawn(async move { client().get(url).send().await });
    // Wait until the request reached the upstream, then ask the shim to stop.
    for _ in 0..200 {
        if standin.count_path("/api/info") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&child, "TERM");
    let r = inflight
        .await
        .expect("join")
        .expect("the in-flight request completed");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.expect("json")["success"],
        true
    );
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
        .await
        .expect("join");
    assert_eq!(code, 0);
    // New connections are refused after the drain.
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways_in_flat_memory() {
    let standin = Standin::start().await.expect("standin");
    let dir = tempdir("stream");
    let cfg = write_config(&dir, &standin.url(), "");
    let (mut child, addr, _rx) = spawn(&cfg);
    let c = client();
    // Warm up, then take the baseline.
    let _ = c
        .get(format!("http://{addr}/api/info"))
        .send()
        .await
        .expect("warm");
    let base = vm_hwm_kib(child.id());

    const MB100: usize = 100 * 1024 * 1024;
    let chunk = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    let stream = futures_util::stream::iter(
        (0..MB100 / chunk.len()).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let r = c
        .post(format!("http://{addr}/_standin/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["bytes"], MB100 as u64);

    let mut r = c
        .get(format!("http://{addr}/_standin/bytes/{MB100}"))
        .send()
        .await
        .expect("download");
    let mut n = 0usize;
    while let Some(part) = r.chunk().await.expect("chunk") {
        n += part.len();
    }
    assert_eq!(n, MB100);
    let peak = vm_hwm_kib(child.id());
    signal(&child, "TERM");
    let _ =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10))).await;
    let growth_mib = (peak.saturating_sub(base)) / 1024;
    assert!(
        growth_mib < 32,
        "peak RSS grew by {growth_mib} MiB moving 2 x 100 MB"
    );
}
