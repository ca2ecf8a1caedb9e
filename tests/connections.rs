//! Connection-level bounds and protocol switches (issue 11, items 2 to 6): a `101` the client
//! did not ask for, connections that never send a head (HTTP/1.x and HTTP/2), the admin
//! listener's cap and head timeout, the descriptor limit and accept back-off, websocket
//! tunnels holding their `max_connections` slot, and the smuggling guard staying on until a
//! protocol switch really happened.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rocketchat_standin::Standin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use common::*;

const UNASKED_101: &str = r#"{"success":false,"error":"The upstream switched protocols in a way the request did not ask for [error-bad-gateway]","errorType":"error-bad-gateway"}"#;
const CL_TE: &str = r#"{"success":false,"error":"The request has both Content-Length and Transfer-Encoding [error-bad-request]","errorType":"error-bad-request"}"#;
/// RFC 6455's sample key (section 1.3).
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Reads one HTTP/1.1 response (head, then a `Content-Length` or chunked body) from `s`;
/// `None` when the peer closed or 10 s passed first.
async fn read_response(s: &mut TcpStream) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let lower = head.to_ascii_lowercase();
            let len = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match len {
                Some(n) => body.len() >= n,
                None if lower.contains("transfer-encoding: chunked") => body.ends_with("0\r\n\r\n"),
                None => true,
            };
            if done {
                return Some(text);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// Waits up to `within` for the peer to close `s` (EOF or reset), discarding what it sends.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// The value of an unlabelled metric on the admin listener.
async fn metric(p: &Pair, name: &str) -> i64 {
    let text = metrics_text(p.shim.admin_addr.expect("admin on")).await;
    metric_value(&text, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

// ---------------------------------------------------------------------------------------
// Item 2: a 101 that was not asked for.

/// A `101` opens a tunnel only when the request asked for that protocol and, for websockets,
/// the answer proves it read the key. Anything else is a 502 in Rocket.Chat's shape, the
/// connection is closed, and bytes the client sent after the request never reach the upstream.
#[tokio::test]
async fn a_101_that_was_not_asked_for_is_a_502_and_nothing_follows_it() {
    let p = start(|_| {}).await;
    let ask_ws = format!("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "websocket asked without a key, 101 without an accept",
            "Connection: Upgrade\r\nUpgrade: websocket\r\n".into(),
            "",
        ),
        ("key sent, 101 without an accept", ask_ws.clone(), ""),
        (
            "key sent, wrong accept",
            ask_ws.clone(),
            "&accept=AAAAAAAAAAAAAAAAAAAAAAAAAAA%3D",
        ),
        (
            "websocket asked, 101 names another protocol",
            ask_ws.clone(),
            "&upgrade=h2c&accept=good",
        ),
        ("no upgrade asked at all", String::new(), "&accept=good"),
        (
            "Upgrade without Connection: upgrade",
            "Upgrade: websocket\r\n".into(),
            "",
        ),
    ];
    for (what, headers, query) in cases {
        p.standin.clear_requests();
        // The follow-up request is pipelined right behind the upgrade request: the bytes a
        // tunnel would carry raw to the upstream.
        let bytes = format!(
            "GET /_standin/status/101?x=1{query} HTTP/1.1\r\nHost: x\r\n{headers}\r\nGET /api/v1/im.messages.others?roomId[$ne]=x HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let answer = raw(p.shim.addr, bytes.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 502 "), "{what}: {answer:?}");
        assert_eq!(raw_body(&answer), UNASKED_101, "{what}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{what}: {answer:?}");
        let seen: Vec<String> = p
            .standin
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect();
        assert_eq!(seen, vec!["/_standin/status/101".to_string()], "{what}");
    }

    // What was asked and proven still switches: a websocket with the right accept, and a
    // non-websocket protocol named on both sides.
    for (what, headers, query) in [
        ("websocket, right accept", ask_ws.clone(), "&accept=good"),
        (
            "foo asked, foo answered",
            "Connection: Upgrade\r\nUpgrade: foo\r\n".to_string(),
            "&upgrade=foo",
        ),
    ] {
        let mut s = TcpStream::connect(p.shim.addr).await.expect("connect");
        s.write_all(
            format!("GET /_standin/status/101?x=1{query} HTTP/1.1\r\nHost: x\r\n{headers}\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
        let head = read_response(&mut s).await.expect("an answer");
        assert!(head.starts_with("HTTP/1.1 101 "), "{what}: {head:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Item 3: connections that never send a head.

/// `max_connections = 5` held by connections that send nothing, only blank lines, or only
/// the HTTP/2 preface without SETTINGS: each is closed `header_read_timeout` after its start,
/// so a sixth client is served.
#[tokio::test]
async fn silent_connections_do_not_hold_the_slots() {
    let p = start(|c| {
        c.server.max_connections = 5;
        c.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let mut holders = Vec::new();
    for _ in 0..2 {
        holders.push((
            "silent",
            TcpStream::connect(p.shim.addr).await.expect("connect"),
        ));
    }
    let mut s = TcpStream::connect(p.shim.addr).await.expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    holders.push(("h2 preface only", s));
    // Blank lines keep coming, every 100 ms for up to 20 s, from two more.
    let mut blanks = Vec::new();
    for _ in 0..2 {
        let s = TcpStream::connect(p.shim.addr).await.expect("connect");
        let (mut r, mut w) = s.into_split();
        blanks.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            for _ in 0..200 {
                if w.write_all(b"\r\n").await.is_err() {
                    return true;
                }
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(100), r.read(&mut buf)).await
                {
                    return true;
                }
            }
            false
        }));
    }
    let started = Instant::now();
    let r = client()
        .get(format!("{}/_standin/echo", p.url()))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .expect("a sixth client is served");
    assert_eq!(r.status(), 200);
    eprintln!("sixth client served after {:?}", started.elapsed());
    for (what, mut s) in holders {
        assert!(
            closed_within(&mut s, Duration::from_secs(10)).await,
            "{what} not closed"
        );
    }
    for b in blanks {
        assert!(b.await.expect("task"), "blank-line connection not closed");
    }
}

/// A keep-alive connection that goes silent after its answer is closed `header_read_timeout`
/// after that answer.
#[tokio::test]
async fn keep_alive_connection_silent_after_an_answer_is_closed() {
    let p = start(|c| c.server.header_read_timeout = Duration::from_secs(1)).await;
    let mut s = TcpStream::connect(p.shim.addr).await.expect("connect");
    s.write_all(b"GET /_standin/echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_response(&mut s).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let after = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    eprintln!("closed {:?} after the answer", after.elapsed());
}

/// An HTTP/2 connection that opens no stream but keeps answering (and sending) PINGs is
/// closed after `idle_timeout`.
#[tokio::test]
async fn h2_connection_with_only_pings_is_closed_after_idle_timeout() {
    let p = start(|c| c.server.idle_timeout = Duration::from_secs(1)).await;
    let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
    let (mut send, mut conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let mut ping = conn.ping_pong().expect("ping_pong");
    let conn_task = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    // One real request first: streams work, and the idle time counts from its end.
    let req = http::Request::get(format!("http://{}/_standin/echo", p.shim.addr))
        .body(())
        .expect("request");
    let (resp, _) = send.send_request(req, true).expect("send");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        chunk.expect("body");
    }
    drop(body);
    let idle_from = Instant::now();
    let pinger = tokio::spawn(async move {
        for _ in 0..100 {
            if ping.ping(h2::Ping::opaque()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let closed_at = tokio::time::timeout(Duration::from_secs(15), conn_task)
        .await
        .expect("the idle h2 connection was not closed within 15 s")
        .expect("task");
    let idle = closed_at - idle_from;
    eprintln!("h2 connection closed after {idle:?} without a stream");
    assert!(
        idle >= Duration::from_millis(900),
        "closed too early: {idle:?}"
    );
    pinger.abort();
    drop(send);
}

// ---------------------------------------------------------------------------------------
// Item 5: tunnels hold their slot.

/// With `max_connections = 3`, three open websockets take every slot: a fourth does not open
/// until one of them closes. `/metrics` counts them as connections and as tunnels.
#[tokio::test]
async fn websocket_tunnels_hold_their_connection_slot() {
    let p = start(|c| c.server.max_connections = 3).await;
    let url = format!("ws://{}/websocket", p.shim.addr);
    let mut open = Vec::new();
    for i in 0..3 {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("websocket");
        ws.send(Message::text(format!("hello {i}")))
            .await
            .expect("send");
        let echo = ws.next().await.expect("echo").expect("echo");
        assert_eq!(echo, Message::text(format!("hello {i}")));
        open.push(ws);
    }
    assert_eq!(metric(&p, "rcshim_open_tunnels").await, 3);
    assert_eq!(metric(&p, "rcshim_open_connections").await, 3);
    let u = url.clone();
    let mut fourth =
        tokio::spawn(async move { tokio_tungstenite::connect_async(u.as_str()).await });
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut fourth)
            .await
            .is_err(),
        "a fourth websocket opened while three held every slot"
    );
    assert_eq!(p.standin.count_path("/websocket"), 3);
    let mut first = open.remove(0);
    first.close(None).await.expect("close");
    while let Some(Ok(_)) = first.next().await {}
    drop(first);
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(10), fourth)
        .await
        .expect("the fourth websocket opens once a slot is free")
        .expect("task")
        .expect("websocket");
    ws.send(Message::text("fourth")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("echo").expect("echo"),
        Message::text("fourth")
    );
}

/// Past `max_connections`, connections wait in the kernel's accept queue: a burst of 600
/// connects (clients reconnecting after a restart, a benchmark's 1,000) all complete their
/// handshake there at once. With the 128 of a default `TcpListener::bind`, the 130th and later
/// SYNs were dropped (`ListenOverflows`) and retried by the client a second later (measured: a
/// 1 s tail in a 1,000-connection run).
#[tokio::test]
async fn a_burst_of_connects_waits_in_the_accept_queue_not_in_syn_retries() {
    let p = start(|c| {
        c.server.max_connections = 1;
        c.server.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    // The one slot, held (accepted: its head clock runs for 30 s).
    let _holder = TcpStream::connect(p.shim.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let connects: Vec<_> = (0..600)
        .map(|_| {
            let addr = p.shim.addr;
            tokio::spawn(async move {
                // Under the client's first SYN retry (1 s on Linux).
                tokio::time::timeout(Duration::from_millis(900), TcpStream::connect(addr)).await
            })
        })
        .collect();
    let mut waiting = Vec::new();
    let mut refused = 0;
    for c in connects {
        match c.await.expect("task") {
            Ok(Ok(s)) => waiting.push(s),
            _ => refused += 1,
        }
    }
    assert_eq!(
        (waiting.len(), refused),
        (600, 0),
        "connects that completed / that waited for a SYN retry"
    );
}

// ---------------------------------------------------------------------------------------
// Item 6: the smuggling guard stays on until a real switch.

/// `Upgrade: foo` answered with a plain 200 switches nothing: a later request on the same
/// connection with both `Content-Length` and `Transfer-Encoding` is still a 400 that never
/// reaches the upstream.
#[tokio::test]
async fn smuggling_guard_stays_on_after_an_upgrade_that_did_not_happen() {
    let p = start(|_| {}).await;
    let mut s = TcpStream::connect(p.shim.addr).await.expect("connect");
    s.write_all(
        b"GET /_standin/echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n",
    )
    .await
    .expect("write");
    let first = read_response(&mut s).await.expect("first answer");
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    s.write_all(b"POST /_standin/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .expect("write");
    let second = read_response(&mut s).await.expect("second answer");
    assert!(second.starts_with("HTTP/1.1 400 "), "{second}");
    assert_eq!(raw_body(&second), CL_TE);
    let methods: Vec<String> = p
        .standin
        .requests()
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(methods, vec!["GET".to_string()]);
}

// ---------------------------------------------------------------------------------------
// Item 4: the admin listener, the descriptor limit, accept back-off (the binary, so that its
// descriptor limit can be set from outside).

/// Starts the binary under `sh -c "ulimit ...; exec ..."` and waits for its listening line.
/// The caller owns the child and stops it ([`stop`]).
#[allow(clippy::zombie_processes)]
fn spawn_limited(config: &std::path::Path, ulimit: &str) -> proc::Proc {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit {ulimit} && exec \"$0\" --config \"$1\" --workers 1"
        ))
        .arg(proc::BIN)
        .arg(config)
        .env("RUST_LOG", "info")
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
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("listening line");
        if line.contains("rocketchat-shim listening") {
            let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
            return proc::Proc {
                child,
                addr: v["addr"].as_str().expect("addr").to_owned(),
                admin: v["admin"].as_str().unwrap_or_default().to_owned(),
                lines: rx,
            };
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn stop(mut p: proc::Proc) {
    proc::signal(&p.child, "KILL");
    let _ = p.child.wait();
}

/// The soft `RLIMIT_NOFILE` is raised to the hard limit at start.
#[tokio::test]
async fn soft_descriptor_limit_is_raised_to_the_hard_limit() {
    let standin = Standin::start().await.expect("standin");
    let dir = proc::tempdir("conn-rlimit");
    let config = proc::write_config(&dir, &standin.url(), "");
    let p = spawn_limited(&config, "-Sn 256");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.child.id())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files")
        .to_owned();
    stop(p);
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums.len(), 2, "{line}");
    assert_ne!(nums[0], "256", "{line}");
    assert_eq!(nums[0], nums[1], "{line}");
}

/// 400 slow `/metrics` connections (a head started, never finished) against a process limited
/// to 256 descriptors: the admin listener holds at most its cap, the client port keeps
/// answering, and the process's descriptors stay bounded.
#[tokio::test]
async fn slow_admin_connections_cannot_starve_the_client_port() {
    const SLOW: usize = 400;
    let standin = Standin::start().await.expect("standin");
    let dir = proc::tempdir("conn-admin");
    let config = proc::write_config(
        &dir,
        &standin.url(),
        "", // header_read_timeout stays 10 s: the cap, not the timeout, is what is tried here
    );
    let p = spawn_limited(&config, "-n 256");
    let admin: SocketAddr = p.admin.parse().expect("admin addr");
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let Ok(mut s) = TcpStream::connect(admin).await else {
            break;
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
        slow.push(s);
    }
    // Give the shim the chance to accept what it will (it is a separate process: no signal
    // to wait on); then the client port must answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds = open_fds(p.child.id());
    let r = client()
        .get(format!("http://{}/_standin/echo", p.addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    let fds_after = open_fds(p.child.id());
    let lines = p.drain_lines();
    stop(p);
    drop(slow);
    let r = r.expect("the client port answers while the admin port is flooded");
    assert_eq!(r.status(), 200);
    eprintln!("descriptors with {SLOW} slow admin connections: {fds} (then {fds_after})");
    assert!(fds <= 64 + 32, "{fds} descriptors open");
    let warnings = lines.iter().filter(|l| l.contains("accept")).count();
    assert!(warnings <= 2, "{warnings} accept warnings");
}

/// The process runs out of descriptors on the client port (150 silent connections, limit
/// 100): accept backs off and says so once per burst, not once per failed accept, and serves
/// again once the silent connections are cut.
#[tokio::test]
async fn accept_out_of_descriptors_backs_off_and_logs_once_per_burst() {
    const SILENT: usize = 150;
    let standin = Standin::start().await.expect("standin");
    let dir = proc::tempdir("conn-emfile");
    let config = proc::write_config(&dir, &standin.url(), "");
    // header_read_timeout: 2 s.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("[server]\n", "[server]\nheader_read_timeout = \"2s\"\n"),
    )
    .expect("config");
    let p = spawn_limited(&config, "-n 100");
    let addr: SocketAddr = p.addr.parse().expect("addr");
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Every silent connection is cut by the head timeout, the ones that waited in the backlog
    // too (they are accepted as descriptors free up).
    let mut closed = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &mut silent {
        let left = deadline.saturating_duration_since(Instant::now());
        if closed_within(s, left).await {
            closed += 1;
        }
    }
    let r = client()
        .get(format!("http://{}/_standin/echo", p.addr))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let lines = p.drain_lines();
    stop(p);
    assert_eq!(closed, SILENT);
    assert_eq!(r.expect("served after the burst").status(), 200);
    let warnings: Vec<&String> = lines.iter().filter(|l| l.contains("accept")).collect();
    eprintln!("{} accept log lines: {warnings:?}", warnings.len());
    assert!(!warnings.is_empty(), "the burst was not reported");
    assert!(warnings.len() <= 6, "{} accept log lines", warnings.len());
}
