//! Fidelity and resource bounds of issue 11, items 7 and 8 (spec/shim.md §1, §6, §7): header
//! order across hop-by-hop removal, the guarded endpoints' credential check and per-IP budget,
//! the metrics of the local rate-limit backend, the cache's bound at every moment, the
//! process-wide cap on upstream connections, the per-connection buffers, and the release of
//! the upstream side of a request answered 504 or abandoned by its client.
//!
//! Bounds are measured where the issue asks for it: file descriptors of a shim process
//! (`/proc/<pid>/fd`), its resident memory (`/proc/<pid>/status`), and connections counted at
//! an upstream the test owns.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODERN_401: &str = r#"{"success":false,"error":"You must be logged in to do this.","status":"error","message":"You must be logged in to do this."}"#;
const MODERN_403: &str = r#"{"success":false,"error":"User does not have the permissions required for this action [error-unauthorized]"}"#;

/// Reads one HTTP/1.1 head from `s` (up to the blank line), bounded to 64 KiB.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return None;
        }
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The header names of a head, lower-cased, in wire order.
fn names(head: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.trim().to_ascii_lowercase())
        .collect()
}

/// The names of `all` that are in `wanted`, in their order in `all`.
fn only(all: &[String], wanted: &[&str]) -> Vec<String> {
    all.iter()
        .filter(|n| wanted.contains(&n.as_str()))
        .cloned()
        .collect()
}

// ---- 7a: header order ------------------------------------------------------------------------

/// An upstream that records each request head verbatim and answers with a head whose headers
/// are interleaved with hop-by-hop ones.
async fn order_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let rec = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut s).await {
                    rec.lock().expect("lock").push(head);
                    let answer = "HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: keep-alive, X-Hop\r\nX-B: 2\r\nSet-Cookie: a=1\r\nX-Hop: h\r\nX-C: 3\r\nSet-Cookie: b=2\r\nKeep-Alive: timeout=5\r\nX-D: 4\r\nContent-Length: 2\r\n\r\nok";
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn header_order_survives_hop_by_hop_removal_both_ways() {
    let (up, heads) = order_upstream().await;
    let mut config = base_config(&format!("http://{up}"));
    config.admin.listen = None;
    let shim = rocketchat_shim::server::start(config)
        .await
        .expect("shim starts");
    let answer = raw(
        shim.addr,
        b"GET /api/info HTTP/1.1\r\nHost: chat.example\r\nX-A: 1\r\nConnection: keep-alive, X-Hop\r\nX-B: 2\r\nX-Hop: secret\r\nCookie: c=1\r\nX-C: 3\r\nTE: trailers\r\nCookie: d=2\r\nX-D: 4\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // Toward the upstream: every end-to-end header in the client's order, repeated values
    // kept, the hop-by-hop ones gone.
    let sent = heads.lock().expect("lock")[0].clone();
    let up_names = names(&sent);
    assert_eq!(
        only(
            &up_names,
            &[
                "host",
                "x-a",
                "x-b",
                "x-c",
                "x-d",
                "cookie",
                "x-hop",
                "te",
                "connection"
            ]
        ),
        ["host", "x-a", "x-b", "cookie", "cookie", "x-c", "x-d"],
        "{sent}"
    );
    assert!(sent.contains("cookie: c=1\r\ncookie: d=2\r\n"), "{sent}");
    // Toward the client: the same.
    let (head, body) = answer.split_once("\r\n\r\n").expect("head");
    assert_eq!(body, "ok");
    let back = names(head);
    assert_eq!(
        only(
            &back,
            &[
                "x-a",
                "x-b",
                "x-c",
                "x-d",
                "set-cookie",
                "x-hop",
                "keep-alive"
            ]
        ),
        ["x-a", "x-b", "set-cookie", "set-cookie", "x-c", "x-d"],
        "{head}"
    );
    assert!(
        head.contains("set-cookie: a=1\r\nset-cookie: b=2\r\n"),
        "{head}"
    );
}

// ---- 7c and 8d: the guarded related endpoints -----------------------------------------------

#[tokio::test]
async fn guarded_endpoints_check_the_credential_that_is_forwarded() {
    let p = start(|c| c.policy.guard_related_endpoints = true).await;
    p.standin.add_bearer_token("alice-oauth", "alice-id");
    let path = "/api/v1/im.counters?roomId=alice-idbob-id&userId=bob-id";
    // The admin's headers are named by Connection, so they would be stripped: the credential
    // that goes upstream is alice's bearer token, and that is the one to check.
    let r = client()
        .get(format!("{}{path}", p.url()))
        .header("X-User-Id", "admin-id")
        .header("X-Auth-Token", "admin-token")
        .header("Authorization", "Bearer alice-oauth")
        .header("Connection", "X-User-Id, X-Auth-Token")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.text().await.expect("text"), MODERN_403);
    // Only the token named by Connection: nothing complete is forwarded, so not logged in.
    let r = client()
        .get(format!("{}{path}", p.url()))
        .header("X-User-Id", "admin-id")
        .header("X-Auth-Token", "admin-token")
        .header("Connection", "X-Auth-Token")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.text().await.expect("text"), MODERN_401);
    assert_eq!(p.standin.count_path("/api/v1/im.counters"), 0);
    // The admin's own, unstripped, passes.
    let r = admin(client().get(format!("{}{path}", p.url())))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(p.standin.count_path("/api/v1/im.counters"), 1);
}

#[tokio::test]
async fn guarded_endpoints_spend_the_per_ip_budget_before_identity() {
    let p = start(|c| {
        c.policy.guard_related_endpoints = true;
        c.rate_limit.enabled = true;
        c.rate_limit.per_ip.requests = 5;
        c.rate_limit.per_ip.per = Duration::from_secs(3600);
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..200 {
        let r = client()
            .get(format!(
                "{}/api/v1/im.counters?roomId=alice-idbob-id&userId=bob-id",
                p.url()
            ))
            .header("X-User-Id", "admin-id")
            .header("X-Auth-Token", format!("made-up-{i}"))
            .send()
            .await
            .expect("send");
        let s = r.status().as_u16();
        let body = r.text().await.expect("text");
        if s == 429 {
            assert!(
                body.starts_with(r#"{"success":false,"error":"Error, too many requests. Please slow down. You must wait "#)
                    && body.ends_with(r#" seconds before trying this endpoint again. [error-too-many-requests]"}"#),
                "{body}"
            );
        } else {
            assert_eq!((s, body.as_str()), (401, MODERN_401));
        }
        statuses.push(s);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 195);
    assert_eq!(p.standin.count_path("/api/v1/me"), 5);
}

// ---- 7d: metrics of the local backend --------------------------------------------------------

#[tokio::test]
async fn local_backend_metrics_list_no_redis_histogram() {
    let p = start(|c| c.rate_limit.enabled = true).await;
    let text = metrics_text(p.shim.admin_addr.expect("admin on")).await;
    assert!(text.contains("rcshim_requests_total"), "{text}");
    assert!(
        !text.contains("rcshim_ratelimit_redis_duration_seconds"),
        "{text}"
    );
}

/// Runs `rocketchat-shim demo`, then every command it prints, in order, through `sh`: the 429
/// loop shows allowed answers turning into 429s (the commands before it do not spend its
/// budget).
#[test]
fn demo_429_loop_shows_allowed_answers_turning_into_429s() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(common::proc::BIN)
        .arg("demo")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut commands = Vec::new();
    for line in BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take(200)
    {
        if line.starts_with("Press Ctrl-C") {
            break;
        }
        if line.starts_with("curl ") || line.starts_with("for ") {
            commands.push(line);
        }
    }
    let mut loop_out = None;
    for c in &commands {
        let out = Command::new("sh")
            .arg("-c")
            .arg(c)
            .output()
            .expect("sh runs");
        if c.starts_with("for ") {
            loop_out = Some(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        loop_out.as_deref(),
        Some("200 200 200 200 200 429 429 429"),
        "{commands:#?}"
    );
}

// ---- 8a: the process-wide cap on upstream connections ----------------------------------------

const BUSY: &str = r#"{"success":false,"error":"The upstream is busy [error-service-unavailable]","errorType":"error-service-unavailable"}"#;

/// An upstream that counts its open connections (and the most at once) and holds every
/// request until `release` is sent, then answers `200 ok`.
struct HoldingUpstream {
    addr: std::net::SocketAddr,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl HoldingUpstream {
    async fn start() -> HoldingUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (release, rx) = tokio::sync::watch::channel(false);
        let (o, pk) = (open.clone(), peak.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let n = o.fetch_add(1, Ordering::SeqCst) + 1;
                pk.fetch_max(n, Ordering::SeqCst);
                let (o, mut rx) = (o.clone(), rx.clone());
                tokio::spawn(async move {
                    while read_head(&mut s).await.is_some() {
                        if rx.wait_for(|r| *r).await.is_err() {
                            break;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            break;
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        HoldingUpstream {
            addr,
            open,
            peak,
            release,
        }
    }
}

/// Polls `cond` every 20 ms for up to `within`; whether it became true.
async fn eventually(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_h2c_client_with_200_streams_opens_at_most_max_connections_upstream() {
    let up = HoldingUpstream::start().await;
    let mut config = base_config(&format!("http://{}", up.addr));
    config.admin.listen = None;
    config.upstream.max_connections = 20;
    config.upstream.connect_timeout = Duration::from_secs(1);
    let shim = rocketchat_shim::server::start(config)
        .await
        .expect("shim starts");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (h2, done) = (h2.clone(), done.clone());
        let url = format!("http://{}/slow/{i}", shim.addr);
        tasks.push(tokio::spawn(async move {
            let r = h2.get(url).send().await.expect("send");
            let s = r.status().as_u16();
            let b = r.text().await.expect("body");
            done.fetch_add(1, Ordering::SeqCst);
            (s, b)
        }));
    }
    // The 180 that found no free connection are answered 503 after connect_timeout; then the
    // upstream answers the 20 it holds.
    let refused = eventually(Duration::from_secs(20), || {
        done.load(Ordering::SeqCst) >= 180
    })
    .await;
    let _ = up.release.send(true);
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.expect("task"));
    }
    assert!(refused, "no request was refused");
    assert_eq!(up.peak.load(Ordering::SeqCst), 20);
    assert_eq!(
        got.iter().filter(|(s, b)| *s == 200 && b == "ok").count(),
        20
    );
    assert_eq!(
        got.iter().filter(|(s, b)| *s == 503 && b == BUSY).count(),
        180
    );
    assert_eq!(shim.app.metrics.upstream_errors("busy"), 180);
}

/// The cap covers the shim's own lookups too: with the only upstream connection taken by a
/// held pass-through request, the endpoint's `/me` lookup waits `connect_timeout`, then 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_covers_the_shims_own_lookups() {
    let up = HoldingUpstream::start().await;
    let mut config = base_config(&format!("http://{}", up.addr));
    config.admin.listen = None;
    config.upstream.max_connections = 1;
    config.upstream.connect_timeout = Duration::from_millis(500);
    let shim = rocketchat_shim::server::start(config)
        .await
        .expect("shim starts");
    let held = tokio::spawn({
        let url = format!("http://{}/slow", shim.addr);
        async move { client().get(url).send().await.map(|r| r.status().as_u16()) }
    });
    assert!(
        eventually(Duration::from_secs(10), || up.open.load(Ordering::SeqCst)
            == 1)
        .await
    );
    let r = admin(client().get(format!(
        "http://{}/api/v1/im.messages.others?roomId=alice-idbob-id",
        shim.addr
    )))
    .send()
    .await
    .expect("send");
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.text().await.expect("body"), BUSY);
    assert_eq!(up.peak.load(Ordering::SeqCst), 1);
    let _ = up.release.send(true);
    assert_eq!(held.await.expect("task").expect("answer"), 200);
}

/// A reload that points the shim at another upstream keeps one count: connections of the old
/// generation still hold their permits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_is_one_count_across_a_reload() {
    let a = HoldingUpstream::start().await;
    let b = HoldingUpstream::start().await;
    let mut config = base_config(&format!("http://{}", a.addr));
    config.admin.listen = None;
    config.upstream.max_connections = 1;
    config.upstream.connect_timeout = Duration::from_millis(500);
    let shim = rocketchat_shim::server::start(config.clone())
        .await
        .expect("shim starts");
    let held = tokio::spawn({
        let url = format!("http://{}/slow", shim.addr);
        async move { client().get(url).send().await.map(|r| r.status().as_u16()) }
    });
    assert!(
        eventually(Duration::from_secs(10), || a.open.load(Ordering::SeqCst)
            == 1)
        .await
    );
    config.upstream.url =
        rocketchat_shim::config::parse_upstream_url(&format!("http://{}", b.addr)).expect("url");
    shim.reload(config).expect("reload");
    let r = client()
        .get(format!("http://{}/other", shim.addr))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.text().await.expect("body"), BUSY);
    assert_eq!(b.peak.load(Ordering::SeqCst), 0);
    let _ = a.release.send(true);
    assert_eq!(held.await.expect("task").expect("answer"), 200);
}

// ---- 8c: release at once on 504 and when the client goes away --------------------------------

/// Upstream-side sockets of `port` by TCP state (`/proc/net/tcp{,6}`): (established,
/// close-wait). A socket in close-wait is one whose peer, the shim, has closed it; one the
/// shim reset is gone from the table.
fn upstream_sockets(port: u16) -> (usize, usize) {
    let mut est = 0;
    let mut close_wait = 0;
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 4 {
                continue;
            }
            let local_port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port != Some(port) {
                continue;
            }
            match cols[3] {
                "01" => est += 1,
                "08" => close_wait += 1,
                _ => {}
            }
        }
    }
    (est, close_wait)
}

/// An upstream that accepts and keeps every connection without reading a byte.
async fn deaf_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            h.lock().expect("lock").push(s);
        }
    });
    (addr, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_504_with_its_body_blocked_upstream_releases_both_sides_at_once() {
    let (up, held) = deaf_upstream().await;
    let mut config = base_config(&format!("http://{up}"));
    config.admin.listen = None;
    config.upstream.response_timeout = Duration::from_secs(1);
    let shim = rocketchat_shim::server::start(config)
        .await
        .expect("shim starts");
    let s = TcpStream::connect(shim.addr).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    // A 1 GiB upload, written until the upstream's buffers are full (the writer then blocks).
    let writer = tokio::spawn(async move {
        let head = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n";
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..16 * 1024 {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or(false);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
    assert!(closed, "the client connection stayed open after the 504");
    // The upstream connection is closed (reset) by the shim although the upstream never read.
    assert_eq!(held.lock().expect("lock").len(), 1);
    assert!(
        eventually(Duration::from_secs(10), || upstream_sockets(up.port()).0
            == 0)
        .await,
        "upstream sockets (established, close-wait): {:?}",
        upstream_sockets(up.port())
    );
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_releases_the_upstream_connection_at_once() {
    let up = HoldingUpstream::start().await;
    let mut config = base_config(&format!("http://{}", up.addr));
    config.admin.listen = None;
    let shim = rocketchat_shim::server::start(config)
        .await
        .expect("shim starts");
    let mut s = TcpStream::connect(shim.addr).await.expect("connect");
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(
        eventually(Duration::from_secs(10), || up.open.load(Ordering::SeqCst)
            == 1)
        .await
    );
    drop(s);
    // The upstream still holds the request, but the shim closed its side.
    assert!(
        eventually(Duration::from_secs(10), || upstream_sockets(up.addr.port())
            .0
            == 0)
        .await,
        "upstream sockets (established, close-wait): {:?}",
        upstream_sockets(up.addr.port())
    );
    let _ = up.release.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_its_upload_is_blocked_upstream_is_released_by_the_504_path() {
    let (up, held) = deaf_upstream().await;
    let mut config = base_config(&format!("http://{up}"));
    config.admin.listen = None;
    config.upstream.response_timeout = Duration::from_secs(1);
    let shim = rocketchat_shim::server::start(config)
        .await
        .expect("shim starts");
    let mut s = TcpStream::connect(shim.addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n")
        .await
        .expect("head");
    // Write until a write stalls: the upstream's buffers and the shim's are full.
    let chunk = vec![b'x'; 64 * 1024];
    let mut stalled = false;
    for _ in 0..16 * 1024 {
        match tokio::time::timeout(Duration::from_millis(500), s.write_all(&chunk)).await {
            Ok(Ok(())) => continue,
            _ => {
                stalled = true;
                break;
            }
        }
    }
    assert!(stalled, "1 GiB went through a deaf upstream");
    drop(s);
    assert_eq!(held.lock().expect("lock").len(), 1);
    // hyper reads nothing from a client whose body is blocked, so the close is seen when the
    // response timeout fires; then the upstream side goes at once.
    assert!(
        eventually(Duration::from_secs(10), || upstream_sockets(up.port()).0
            == 0)
        .await,
        "upstream sockets (established, close-wait): {:?}",
        upstream_sockets(up.port())
    );
}

// ---- 7b: the cache's bound at every moment, and what an entry really costs ----------------

/// An upstream for the endpoint: `/api/v1/me` says admin, every other request gets a
/// `"success":true` answer of `size` bytes.
async fn big_answer_upstream(size: usize) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let pad = "x".repeat(size);
    let big = Arc::new(format!(
        "{{\"messages\":[],\"pad\":\"{pad}\",\"offset\":0,\"count\":0,\"total\":0,\"success\":true}}"
    ));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let big = big.clone();
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut s).await {
                    let body = if head.starts_with("GET /api/v1/me ") {
                        r#"{"_id":"admin-id","username":"admin","roles":["user","admin"],"success":true}"#
                    } else {
                        big.as_str()
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_max_bytes_holds_right_after_a_burst_of_large_inserts() {
    let up = big_answer_upstream(512 * 1024).await;
    let mut config = base_config(&format!("http://{up}"));
    config.policy.roles = rocketchat_shim::config::RolesSource::List(vec!["admin".into()]);
    config.cache.max_bytes = 4 * 1024 * 1024;
    config.cache.ttl = Duration::from_secs(600);
    let shim = rocketchat_shim::server::start(config)
        .await
        .expect("shim starts");
    let c = client();
    let mut hits = 0;
    for pass in 0..2 {
        for i in 0..30 {
            let r = admin(c.get(format!(
                "http://{}/api/v1/im.messages.others?roomId=r&offset={i}",
                shim.addr
            )))
            .send()
            .await
            .expect("send");
            assert_eq!(r.status().as_u16(), 200);
            let status = r
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(r.bytes().await.expect("body").len() > 512 * 1024);
            if pass == 1 && status.contains("; hit") {
                hits += 1;
            }
        }
    }
    // 4 MiB holds at most seven answers of 0.5 MiB and their overhead.
    assert!(hits <= 7, "{hits} of 30 answers served from a 4 MiB cache");
}

/// Resident memory of a process, in bytes (`VmRSS` of `/proc/<pid>/status`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Sends `n` endpoint requests with distinct offsets from `first`, 32 at a time; all 200.
async fn fill(addr: &str, first: u64, n: u64) {
    let c = client();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(first));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (c, next, addr) = (c.clone(), next.clone(), addr.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= first + n {
                    return;
                }
                let r = admin(c.get(format!(
                    "http://{addr}/api/v1/im.messages.others?roomId=alice-idbob-id&count=1&offset={}",
                    1000 + i
                )))
                .send()
                .await
                .expect("send");
                assert_eq!(r.status().as_u16(), 200);
                let _ = r.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_memory_stays_within_max_bytes_for_small_answers() {
    const MAX: u64 = 16 * 1024 * 1024;
    let standin = rocketchat_standin::Standin::start()
        .await
        .expect("stand-in");
    let dir = common::proc::tempdir("cache-rss");
    let config = common::proc::write_config(
        &dir,
        &standin.url(),
        &format!(
            "[policy]\ndm_history_endpoint = \"enabled\"\nroles = [\"admin\"]\n[rate_limit]\nenabled = false\n[cache]\nttl = \"10m\"\nmax_bytes = {MAX}\n"
        ),
    );
    let mut p = common::proc::spawn_proc(&config);
    let pid = p.child.id();
    // Warm up: connections, identity, allocator arenas.
    fill(&p.addr, 0, 2_000).await;
    let before = rss(pid);
    // Far more small answers than fit: the cache fills up to max_bytes and then evicts.
    fill(&p.addr, 2_000, 40_000).await;
    let after = rss(pid);
    let metrics = metrics_text(&p.admin).await;
    let gauge = |name: &str| metric_value(&metrics, name).unwrap_or_default().to_owned();
    let (entries, bytes) = (gauge("rcshim_cache_entries"), gauge("rcshim_cache_bytes"));
    let _ = p.child.kill();
    let _ = p.child.wait();
    let growth = after.saturating_sub(before);
    eprintln!(
        "cache: {entries} entries, {bytes} bytes counted; RSS {before} -> {after} (+{growth})"
    );
    assert!(
        growth <= MAX + 4 * 1024 * 1024,
        "RSS grew by {growth} bytes with max_bytes = {MAX} ({entries} entries, {bytes} bytes counted)"
    );
}

// ---- 8b: memory per slow reader and per slow writer ----------------------------------------

/// An upstream that answers every request with a 1 GiB body, written as fast as it is taken.
async fn endless_upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1073741824\r\n\r\n";
                if s.write_all(head).await.is_err() {
                    return;
                }
                let chunk = vec![b'y'; 64 * 1024];
                for _ in 0..16 * 1024 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Samples the RSS of `pid` every 200 ms until it has not grown by more than 64 KiB over the
/// last five samples (the slow peers' buffers are full), at most 30 s; the last sample.
async fn settled_rss(pid: u32) -> u64 {
    let mut samples = vec![rss(pid)];
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        samples.push(rss(pid));
        let n = samples.len();
        if n >= 6 && samples[n - 1].saturating_sub(samples[n - 6]) <= 64 * 1024 {
            break;
        }
    }
    samples.last().copied().unwrap_or(0)
}

/// A shim process in front of `upstream` with `max_header_bytes`.
fn rss_shim(
    name: &str,
    upstream: std::net::SocketAddr,
    max_header_bytes: u64,
) -> common::proc::Proc {
    let dir = common::proc::tempdir(name);
    let config = common::proc::write_config(&dir, &format!("http://{upstream}"), "");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replacen(
        "[server]\n",
        &format!("[server]\nmax_header_bytes = {max_header_bytes}\n"),
        1,
    );
    std::fs::write(&config, text).expect("write");
    common::proc::spawn_proc(&config)
}

/// 100 clients that read the head and a little of a 1 GiB download, then stop reading.
async fn slow_readers(max_header_bytes: u64) -> u64 {
    let up = endless_upstream().await;
    let mut p = rss_shim(
        &format!("slow-readers-{max_header_bytes}"),
        up,
        max_header_bytes,
    );
    let pid = p.child.id();
    // One full download first: allocator arenas and pools are warm.
    {
        let mut s = TcpStream::connect(&p.addr).await.expect("connect");
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        while got < 32 * 1024 * 1024 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    }
    let before = settled_rss(pid).await;
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(&p.addr).await.expect("connect");
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 16 * 1024];
        let n = s.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 "));
        held.push(s);
    }
    let after = settled_rss(pid).await;
    let _ = p.child.kill();
    let _ = p.child.wait();
    drop(held);
    let per = after.saturating_sub(before) / 100;
    eprintln!(
        "slow readers, max_header_bytes = {max_header_bytes}: RSS {before} -> {after}, {per} bytes each"
    );
    per
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_at_most_256_kib() {
    for max_header_bytes in [65_536, 1024 * 1024] {
        let per = slow_readers(max_header_bytes).await;
        assert!(
            per <= 256 * 1024,
            "{per} bytes held per slow reader with max_header_bytes = {max_header_bytes}"
        );
    }
}

/// 100 clients that upload 1 GiB each toward an upstream that never reads.
async fn slow_writers(max_header_bytes: u64) -> u64 {
    let (up, _held) = deaf_upstream().await;
    let mut p = rss_shim(
        &format!("slow-writers-{max_header_bytes}"),
        up,
        max_header_bytes,
    );
    let pid = p.child.id();
    let before = settled_rss(pid).await;
    let mut writers = Vec::new();
    for _ in 0..100 {
        let addr = p.addr.clone();
        writers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.expect("connect");
            let head = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n";
            s.write_all(head.as_bytes()).await.expect("head");
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..16 * 1024 {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        }));
    }
    let after = settled_rss(pid).await;
    let _ = p.child.kill();
    let _ = p.child.wait();
    for w in writers {
        w.abort();
    }
    let per = after.saturating_sub(before) / 100;
    eprintln!(
        "slow writers, max_header_bytes = {max_header_bytes}: RSS {before} -> {after}, {per} bytes each"
    );
    per
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_holds_at_most_256_kib() {
    for max_header_bytes in [65_536, 1024 * 1024] {
        let per = slow_writers(max_header_bytes).await;
        assert!(
            per <= 256 * 1024,
            "{per} bytes held per slow writer with max_header_bytes = {max_header_bytes}"
        );
    }
}
